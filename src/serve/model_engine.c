/* model_engine.c - the inference engine behind `tessera serve`: implements serve.h's ts_engine
 * table over the incremental V4 decoder (model.h) with continuous batching.
 *
 * One worker thread owns the decoder. Each iteration it admits queued requests into free slots
 * (a slot = one sequence's KV caches), then runs one decoder step for every running sequence
 * together: a sequence still prefilling feeds its next prompt token, a generating one its last
 * sampled token - so prefills and decodes of different requests share every forward pass, and
 * requests join and leave between steps. After the step each sequence past its prompt samples
 * (one ts_sampler per slot, infer.h) and reports the token to its sink; it ends at the stop
 * token, at max_tokens, at the context limit, or when cancelled. Memory is fixed at start:
 * slots x max_len positions of cache; a request that cannot be admitted waits in a bounded
 * queue, and a full queue is refused (HTTP 503). */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tessera/data.h"
#include "tessera/serve.h"

typedef struct {
    uint64_t id;
    int32_t *prompt;
    size_t n_prompt;
    int32_t max_tokens;
    ts_sampling_params sampling;
    ts_gen_sink sink;
    bool cancelled;
} pending;

typedef struct {
    bool busy;
    pending req;
    size_t pos;        /* tokens fed so far */
    int32_t last;      /* the last sampled token */
    int32_t generated;
    ts_sampler *sampler;
} slot_state;

struct ts_model_engine {
    const ts_model_weights *w;
    ts_tokenizer *tok; /* NULL: byte-level vocabulary */
    int32_t vocab, eos;
    ts_model_decoder *dec;
    int n_slots;
    int64_t max_len;
    slot_state *slots;
    pending *queue;
    int queue_cap, queue_len;
    pthread_mutex_t mu;
    pthread_cond_t wake;
    pthread_t worker;
    bool stop, started;
    /* worker scratch */
    int *step_slots;
    int32_t *step_ids;
    float *logits;
};

/* ---------------------------------------------------------------- the worker */

static void finish(ts_model_engine *e, int s, ts_gen_end end) {
    slot_state *sl = &e->slots[s];
    ts_gen_sink sink = sl->req.sink;
    free(sl->req.prompt);
    sl->busy = false;
    sink.done(sink.user, end);
}

/* Moves queued requests into free slots (under the lock); cancelled ones end here. */
static void admit(ts_model_engine *e) {
    for (int s = 0; s < e->n_slots && e->queue_len > 0; s++) {
        if (e->slots[s].busy) continue;
        pending p = e->queue[0];
        memmove(e->queue, e->queue + 1, (size_t)(e->queue_len - 1) * sizeof *e->queue);
        e->queue_len--;
        if (p.cancelled) {
            free(p.prompt);
            p.sink.done(p.sink.user, TS_GEN_CANCELLED);
            s--;
            continue;
        }
        slot_state *sl = &e->slots[s];
        sl->busy = true;
        sl->req = p;
        sl->pos = 0;
        sl->generated = 0;
        ts_model_decoder_reset(e->dec, s);
        if (ts_sampler_start(sl->sampler, &p.sampling, p.prompt, p.n_prompt) != TS_OK) finish(e, s, TS_GEN_ERROR);
    }
}

/* After a step: sequence s (row i of the logits) samples once its prompt is in. */
static void advance(ts_model_engine *e, int s, int i) {
    slot_state *sl = &e->slots[s];
    if (++sl->pos < sl->req.n_prompt) return; /* still prefilling */
    int32_t tok;
    if (ts_sampler_sample(sl->sampler, e->logits + (size_t)i * (size_t)e->vocab, &tok, NULL) != TS_OK) {
        finish(e, s, TS_GEN_ERROR);
        return;
    }
    if (tok == e->eos) {
        finish(e, s, TS_GEN_STOP_TOKEN);
        return;
    }
    sl->req.sink.token(sl->req.sink.user, tok);
    sl->last = tok;
    if (++sl->generated >= sl->req.max_tokens || ts_model_decoder_length(e->dec, s) >= e->max_len)
        finish(e, s, TS_GEN_LENGTH);
}

static void *worker_main(void *arg) {
    ts_model_engine *e = arg;
    pthread_mutex_lock(&e->mu);
    for (;;) {
        for (int s = 0; s < e->n_slots; s++)
            if (e->slots[s].busy && (e->slots[s].req.cancelled || e->stop)) finish(e, s, TS_GEN_CANCELLED);
        if (e->stop) break;
        admit(e);
        int n = 0;
        for (int s = 0; s < e->n_slots; s++) {
            slot_state *sl = &e->slots[s];
            if (!sl->busy) continue;
            e->step_slots[n] = s;
            e->step_ids[n++] = sl->pos < sl->req.n_prompt ? sl->req.prompt[sl->pos] : sl->last;
        }
        if (n == 0) {
            pthread_cond_wait(&e->wake, &e->mu);
            continue;
        }
        pthread_mutex_unlock(&e->mu); /* submit / cancel / stats stay responsive during the step */
        ts_status st = ts_model_decoder_step(e->dec, n, e->step_slots, e->step_ids, e->logits);
        pthread_mutex_lock(&e->mu);
        for (int i = 0; i < n; i++) {
            int s = e->step_slots[i];
            if (!e->slots[s].busy) continue;
            if (st != TS_OK) finish(e, s, TS_GEN_ERROR);
            else advance(e, s, i);
        }
    }
    for (int i = 0; i < e->queue_len; i++) {
        free(e->queue[i].prompt);
        e->queue[i].sink.done(e->queue[i].sink.user, TS_GEN_CANCELLED);
    }
    e->queue_len = 0;
    pthread_mutex_unlock(&e->mu);
    return NULL;
}

/* ---------------------------------------------------------------- the ts_engine table */

static ts_status eng_tokenize(void *self, const char *text, size_t len, bool add_bos, ts_token_ids *out) {
    ts_model_engine *e = self;
    if (e->tok) {
        ts_io_error ioe;
        unsigned flags = TS_TOKENIZE_PARSE_SPECIAL | (add_bos && ts_tokenizer_bos_id(e->tok) >= 0 ? TS_TOKENIZE_ADD_BOS : 0);
        return ts_tokenizer_encode(e->tok, text, len, flags, out, &ioe);
    }
    size_t need = out->n + len + 1;
    if (need > out->cap) {
        int32_t *ids = realloc(out->ids, need * sizeof *ids);
        if (!ids) return TS_ERR_OOM;
        out->ids = ids;
        out->cap = need;
    }
    if (add_bos) out->ids[out->n++] = TS_BYTE_BOS;
    for (size_t i = 0; i < len; i++) out->ids[out->n++] = (uint8_t)text[i] + TS_BYTE_OFFSET;
    return TS_OK;
}

static ts_status eng_detokenize(void *self, int32_t id, ts_token_bytes *out) {
    ts_model_engine *e = self;
    if (e->tok) {
        ts_io_error ioe;
        return ts_tokenizer_decode(e->tok, &id, 1, TS_TOKENIZE_SKIP_SPECIAL, out, &ioe);
    }
    if (id < TS_BYTE_OFFSET || id >= TS_BYTE_OFFSET + 256) return TS_OK; /* specials: no text */
    if (out->n + 1 > out->cap) {
        size_t cap = out->cap ? 2 * out->cap : 16;
        uint8_t *d = realloc(out->data, cap);
        if (!d) return TS_ERR_OOM;
        out->data = d;
        out->cap = cap;
    }
    out->data[out->n++] = (uint8_t)(id - TS_BYTE_OFFSET);
    return TS_OK;
}

static ts_status eng_submit(void *self, const ts_gen_request *req) {
    ts_model_engine *e = self;
    if (req->n_prompt < 1 || req->max_tokens < 1 || (int64_t)req->n_prompt + req->max_tokens > e->max_len)
        return TS_ERR_RANGE;
    for (size_t i = 0; i < req->n_prompt; i++)
        if (req->prompt[i] < 0 || req->prompt[i] >= e->vocab) return TS_ERR_RANGE;
    if (ts_sampling_params_check(&req->sampling, NULL)) return TS_ERR_RANGE;
    pending p = {req->id, malloc(req->n_prompt * sizeof(int32_t)), req->n_prompt, req->max_tokens, req->sampling,
                 req->sink, false};
    if (!p.prompt) return TS_ERR_OOM;
    memcpy(p.prompt, req->prompt, req->n_prompt * sizeof(int32_t));
    pthread_mutex_lock(&e->mu);
    ts_status s = TS_OK;
    if (e->stop || e->queue_len >= e->queue_cap) s = TS_ERR_STATE;
    else e->queue[e->queue_len++] = p;
    pthread_cond_signal(&e->wake);
    pthread_mutex_unlock(&e->mu);
    if (s != TS_OK) free(p.prompt);
    return s;
}

static void eng_cancel(void *self, uint64_t id) {
    ts_model_engine *e = self;
    pthread_mutex_lock(&e->mu);
    for (int i = 0; i < e->queue_len; i++)
        if (e->queue[i].id == id) e->queue[i].cancelled = true;
    for (int s = 0; s < e->n_slots; s++)
        if (e->slots[s].busy && e->slots[s].req.id == id) e->slots[s].req.cancelled = true;
    pthread_cond_signal(&e->wake);
    pthread_mutex_unlock(&e->mu);
}

static void eng_stats(void *self, ts_engine_stats *out) {
    ts_model_engine *e = self;
    pthread_mutex_lock(&e->mu);
    int64_t used = 0, running = 0;
    for (int s = 0; s < e->n_slots; s++)
        if (e->slots[s].busy) {
            running++;
            used += ts_model_decoder_length(e->dec, s);
        }
    out->kv_cache_usage = (double)used / ((double)e->n_slots * (double)e->max_len);
    out->queued = e->queue_len;
    out->running = running;
    pthread_mutex_unlock(&e->mu);
}

void ts_model_engine_table(ts_model_engine *e, ts_engine *out) {
    *out = (ts_engine){e, eng_tokenize, eng_detokenize, eng_submit, eng_cancel, eng_stats};
}

/* ---------------------------------------------------------------- life cycle */

ts_status ts_model_engine_new(const ts_model_weights *w, ts_tokenizer *tok, ts_backend *be, int slots,
                              int64_t max_len, int max_queue, ts_model_engine **out, char *err, size_t err_size) {
    if (!w || !be || !out || slots < 1 || max_len < 2 || max_queue < 1) return TS_ERR_INVALID_ARG;
    *out = NULL;
    const ts_v4_config *c = ts_model_weights_config(w);
    if (!tok && c->vocab_size < TS_BYTE_OFFSET + 256) {
        ts_error_printf(err, err_size, "engine: no tokenizer, and the model's vocabulary (%lld) is not byte-level",
                (long long)c->vocab_size);
        return TS_ERR_INVALID_ARG;
    }
    ts_model_engine *e = calloc(1, sizeof *e);
    if (!e) return TS_ERR_OOM;
    e->w = w;
    e->tok = tok;
    e->vocab = (int32_t)c->vocab_size;
    e->eos = tok ? ts_tokenizer_eos_id(tok) : TS_BYTE_EOS;
    e->n_slots = slots;
    e->max_len = max_len;
    e->queue_cap = max_queue;
    e->slots = calloc((size_t)slots, sizeof *e->slots);
    e->queue = calloc((size_t)max_queue, sizeof *e->queue);
    e->step_slots = calloc((size_t)slots, sizeof *e->step_slots);
    e->step_ids = calloc((size_t)slots, sizeof *e->step_ids);
    e->logits = calloc((size_t)slots * (size_t)e->vocab, sizeof *e->logits);
    ts_status s = e->slots && e->queue && e->step_slots && e->step_ids && e->logits ? TS_OK : TS_ERR_OOM;
    for (int i = 0; s == TS_OK && i < slots; i++) s = ts_sampler_new(e->vocab, &e->slots[i].sampler);
    if (s != TS_OK) ts_error_printf(err, err_size, "engine: out of memory");
    if (s == TS_OK) s = ts_model_decoder_new(w, be, slots, max_len, &e->dec, err, err_size);
    if (s == TS_OK) {
        pthread_mutex_init(&e->mu, NULL);
        pthread_cond_init(&e->wake, NULL);
        e->started = pthread_create(&e->worker, NULL, worker_main, e) == 0;
        if (!e->started) {
            ts_error_printf(err, err_size, "engine: cannot start the worker thread");
            s = TS_ERR_INTERNAL;
        }
    }
    if (s != TS_OK) {
        ts_model_engine_free(e);
        return s;
    }
    *out = e;
    return TS_OK;
}

void ts_model_engine_free(ts_model_engine *e) {
    if (!e) return;
    if (e->started) {
        pthread_mutex_lock(&e->mu);
        e->stop = true;
        pthread_cond_signal(&e->wake);
        pthread_mutex_unlock(&e->mu);
        pthread_join(e->worker, NULL);
        pthread_mutex_destroy(&e->mu);
        pthread_cond_destroy(&e->wake);
    }
    for (int i = 0; e->slots && i < e->n_slots; i++) ts_sampler_free(e->slots[i].sampler);
    ts_model_decoder_free(e->dec);
    free(e->slots);
    free(e->queue);
    free(e->step_slots);
    free(e->step_ids);
    free(e->logits);
    free(e);
}
