/* model_engine.c - the inference engine behind `tessera serve`: implements serve.h's ts_engine
 * table over the incremental decoder (model.h) with continuous batching, chunked prefill and
 * slot-level prefix caching.
 *
 * One worker thread owns the decoder. Each iteration it admits queued requests into idle slots
 * (a slot = one sequence's caches), then does two things with the lock released: one prompt
 * chunk of one prefilling request (round-robin, so several long prompts share the iterations)
 * goes through ts_model_decoder_extend, and every generating sequence advances by one token in
 * one batched ts_model_decoder_step. A generating stream therefore waits at most one chunk per
 * token however long the prompts that arrive are, and a prompt costs n / chunk iterations
 * instead of n. When a prompt's last chunk is in, or after each step, the sequence samples (one
 * ts_sampler per slot, infer.h) and reports the token to its sink; it ends at the stop token,
 * at max_tokens, at the context limit, or when cancelled.
 *
 * Prefix cache: a slot records the ids its decoder cache holds, and keeps them when its request
 * ends. A new request goes to the idle slot whose ids share the longest prefix with its prompt,
 * the slot is rewound to that prefix (ts_model_decoder_truncate; a model that cannot rewind that
 * far makes the slot start empty instead) and only the rest of the prompt is prefilled. At
 * least the prompt's last token is always fed, for the logits of the first output. Ties, and
 * requests that reuse nothing, take the least recently used idle slot, so fresh caches live
 * longest. Memory is fixed at start: slots x max_len positions; a request that finds no idle
 * slot waits in a bounded queue, and a full queue is refused (HTTP 503).
 *
 * Speculative decoding (options.speculative): an iteration with no prompt chunk and a single
 * generating sequence runs one ts_speculator round for it, which may yield two tokens. The
 * MTP block lags the sequences it does not draft for; each slot records how far the block has
 * covered it (mtp_covered), and a slot about to step more than TS_MODEL_MTP_MAX_LAG / 2 tokens
 * ahead of it first brings it up to date with ts_model_decoder_mtp, so a round can start on any
 * slot at any time. */
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
    int32_t stop_ids[TS_GEN_MAX_STOP_IDS];
    int n_stop_ids;
    ts_gen_sink sink;
    bool cancelled;
} pending;

typedef enum { SLOT_IDLE, SLOT_PREFILL, SLOT_DECODE } slot_phase;

typedef struct {
    slot_phase phase;
    pending req;       /* unless idle */
    int32_t *tokens;   /* [max_len]: the ids in the slot's decoder cache, kept while idle */
    int64_t n_tokens;  /* == ts_model_decoder_length of the slot, kept here for the lock's sake */
    int32_t last;      /* the last sampled token: the next step's input */
    int32_t generated;
    uint64_t used_at;  /* when its last request ended (engine clock) */
    int64_t mtp_covered; /* speculative: positions the MTP block has run over */
    ts_sampler *sampler;
} slot_state;

struct ts_model_engine {
    ts_tokenizer *tok; /* NULL: byte-level vocabulary */
    int32_t vocab, eos;
    ts_model_decoder *dec;
    ts_model_engine_options opt;
    size_t kv_bytes;
    slot_state *slots;
    pending *queue;
    int queue_len;
    int prefill_rr;    /* the slot that prefilled last */
    uint64_t clock;
    int64_t prefix_hits, reused_tokens, prefill_tokens;
    ts_speculator *spec;   /* NULL unless options.speculative */
    pthread_mutex_t mu;
    pthread_cond_t wake;
    pthread_t worker;
    bool stop, started;
    /* worker scratch */
    int *step_slots;
    int32_t *step_ids;
    float *logits;         /* [slots, vocab]: the step's */
    float *prefill_logits; /* [vocab]: after a prompt chunk; speculative: the MTP catch-ups' */
    int64_t *reuse;        /* [slots]: placement candidates */
};

/* ---------------------------------------------------------------- admission and prefix reuse */

static void finish(ts_model_engine *e, int s, ts_gen_end end) {
    slot_state *sl = &e->slots[s];
    ts_gen_sink sink = sl->req.sink;
    free(sl->req.prompt);
    sl->phase = SLOT_IDLE;
    sl->used_at = ++e->clock;
    sink.done(sink.user, end);
}

/* A failed decoder call may leave the slot's cache half-written: it is emptied, not reused. */
static void fail(ts_model_engine *e, int s) {
    ts_model_decoder_reset(e->dec, s);
    e->slots[s].n_tokens = e->slots[s].mtp_covered = 0;
    finish(e, s, TS_GEN_ERROR);
}

static int64_t common_prefix(const int32_t *a, int64_t na, const int32_t *b, int64_t nb) {
    int64_t n = na < nb ? na : nb, i = 0;
    while (i < n && a[i] == b[i]) i++;
    return i;
}

/* Picks the idle slot for prompt p and rewinds it to the prefix it reuses (its n_tokens then);
 * -1 when every slot is busy. A slot whose rewind the model refuses is still a candidate, empty. */
static int place(ts_model_engine *e, const pending *p) {
    for (int s = 0; s < e->opt.slots; s++) {
        const slot_state *sl = &e->slots[s];
        e->reuse[s] = -1;
        if (sl->phase != SLOT_IDLE) continue;
        int64_t common = e->opt.prefix_cache ? common_prefix(sl->tokens, sl->n_tokens, p->prompt, (int64_t)p->n_prompt) : 0;
        e->reuse[s] = common < (int64_t)p->n_prompt ? common : (int64_t)p->n_prompt - 1;
    }
    for (;;) {
        int best = -1;
        for (int s = 0; s < e->opt.slots; s++)
            if (e->reuse[s] >= 0 && (best < 0 || e->reuse[s] > e->reuse[best] ||
                                     (e->reuse[s] == e->reuse[best] && e->slots[s].used_at < e->slots[best].used_at)))
                best = s;
        if (best < 0) return -1;
        if (ts_model_decoder_truncate(e->dec, best, e->reuse[best]) == TS_OK) { /* length 0 always works */
            slot_state *sl = &e->slots[best];
            sl->n_tokens = e->reuse[best];
            /* the block's entry at the last position read the token after it, which may change */
            if (sl->mtp_covered >= sl->n_tokens) sl->mtp_covered = sl->n_tokens > 0 ? sl->n_tokens - 1 : 0;
            return best;
        }
        e->reuse[best] = 0;
    }
}

static void start(ts_model_engine *e, int s, pending p) {
    slot_state *sl = &e->slots[s];
    sl->phase = SLOT_PREFILL;
    sl->req = p;
    sl->generated = 0;
    if (sl->n_tokens > 0) {
        e->prefix_hits++;
        e->reused_tokens += sl->n_tokens;
    }
    if (ts_sampler_start(sl->sampler, &p.sampling, p.prompt, p.n_prompt) != TS_OK) finish(e, s, TS_GEN_ERROR);
}

/* Moves queued requests, oldest first, into idle slots (under the lock); cancelled ones end here. */
static void admit(ts_model_engine *e) {
    while (e->queue_len > 0) {
        pending p = e->queue[0];
        int s = p.cancelled ? -1 : place(e, &p);
        if (!p.cancelled && s < 0) return;
        memmove(e->queue, e->queue + 1, (size_t)(e->queue_len - 1) * sizeof *e->queue);
        e->queue_len--;
        if (p.cancelled) {
            free(p.prompt);
            p.sink.done(p.sink.user, TS_GEN_CANCELLED);
        } else {
            start(e, s, p);
        }
    }
}

/* ---------------------------------------------------------------- the worker */

/* What one iteration computes: a prompt chunk of slot `prefill` (-1: none) and one step of the
 * n slots in step_slots - or, `speculate`, a speculative round of the one slot there. */
typedef struct {
    int prefill;
    int64_t chunk;
    int n;
    bool speculate;
} plan;

static plan make_plan(ts_model_engine *e) {
    plan p = {-1, 0, 0, false};
    for (int k = 1; k <= e->opt.slots && p.prefill < 0; k++) {
        int s = (e->prefill_rr + k) % e->opt.slots;
        if (e->slots[s].phase == SLOT_PREFILL) p.prefill = s;
    }
    if (p.prefill >= 0) {
        const slot_state *sl = &e->slots[p.prefill];
        int64_t left = (int64_t)sl->req.n_prompt - sl->n_tokens;
        p.chunk = left < e->opt.prefill_chunk ? left : e->opt.prefill_chunk;
        e->prefill_rr = p.prefill;
    }
    for (int s = 0; s < e->opt.slots; s++) {
        if (e->slots[s].phase != SLOT_DECODE) continue;
        e->step_slots[p.n] = s;
        e->step_ids[p.n++] = e->slots[s].last;
    }
    /* a round drafts (and runs the MTP block) whenever there is room for two more tokens */
    p.speculate = e->spec && p.prefill < 0 && p.n == 1 && e->slots[e->step_slots[0]].n_tokens + 2 <= e->opt.max_len;
    return p;
}

/* Sequence s reports its next token tok (sampled and recorded by its sampler), or ends; true
 * while it goes on. */
static bool deliver(ts_model_engine *e, int s, int32_t tok) {
    slot_state *sl = &e->slots[s];
    bool stop = tok == e->eos;
    for (int i = 0; i < sl->req.n_stop_ids; i++) stop |= tok == sl->req.stop_ids[i];
    if (stop) {
        finish(e, s, TS_GEN_STOP_TOKEN);
        return false;
    }
    sl->req.sink.token(sl->req.sink.user, tok);
    sl->last = tok;
    sl->phase = SLOT_DECODE;
    if (++sl->generated < sl->req.max_tokens && sl->n_tokens < e->opt.max_len) return true;
    finish(e, s, TS_GEN_LENGTH);
    return false;
}

/* Sequence s samples from its logits row and reports the token, or ends. */
static void emit(ts_model_engine *e, int s, const float *logits) {
    int32_t tok;
    if (ts_sampler_sample(e->slots[s].sampler, logits, &tok, NULL) != TS_OK) finish(e, s, TS_GEN_ERROR);
    else deliver(e, s, tok);
}

static void after_prefill(ts_model_engine *e, const plan *p, ts_status st) {
    slot_state *sl = &e->slots[p->prefill];
    if (st != TS_OK) {
        fail(e, p->prefill);
        return;
    }
    memcpy(sl->tokens + sl->n_tokens, sl->req.prompt + sl->n_tokens, (size_t)p->chunk * sizeof(int32_t));
    sl->n_tokens += p->chunk;
    e->prefill_tokens += p->chunk;
    if (sl->n_tokens == (int64_t)sl->req.n_prompt) emit(e, p->prefill, e->prefill_logits);
}

/* A speculative round of the plan's slot yielded out[0..n_out): `last` and all but the last
 * of them are in its cache now (the decoder's length says which). */
static void after_round(ts_model_engine *e, const plan *p, ts_status st, const int32_t *out, int n_out) {
    int s = e->step_slots[0];
    slot_state *sl = &e->slots[s];
    if (st != TS_OK) {
        fail(e, s);
        return;
    }
    sl->mtp_covered = sl->n_tokens;
    sl->tokens[sl->n_tokens++] = sl->last;
    if (n_out == 2) sl->tokens[sl->n_tokens++] = out[0];
    for (int i = 0; i < n_out && deliver(e, s, out[i]); i++) {}
}

static void after_step(ts_model_engine *e, const plan *p, ts_status st) {
    for (int i = 0; i < p->n; i++) {
        int s = e->step_slots[i];
        if (st != TS_OK) {
            fail(e, s);
            continue;
        }
        slot_state *sl = &e->slots[s];
        sl->tokens[sl->n_tokens++] = e->step_ids[i];
        emit(e, s, e->logits + (size_t)i * (size_t)e->vocab);
    }
}

/* The plan's prompt chunk; with speculation in pieces the MTP block keeps up with. */
static ts_status run_prefill(ts_model_engine *e, const plan *p) {
    slot_state *sl = &e->slots[p->prefill];
    const int32_t *ids = sl->req.prompt + sl->n_tokens;
    if (!e->spec) return ts_model_decoder_extend(e->dec, p->prefill, ids, p->chunk, e->prefill_logits, 1);
    int64_t len = sl->n_tokens + p->chunk, last_piece = (p->chunk - 1) % TS_MODEL_MTP_MAX_LAG + 1;
    ts_status s = ts_speculator_prefill(e->spec, p->prefill, ids, p->chunk, e->prefill_logits);
    if (s == TS_OK) sl->mtp_covered = len - last_piece; /* before the last piece */
    return s;
}

/* Speculation: brings the MTP block up to date on the stepping slots that are more than half
 * its lag limit ahead of it (the step adds one more). */
static ts_status catch_up_mtp(ts_model_engine *e, const plan *p) {
    for (int i = 0; e->spec && i < p->n; i++) {
        slot_state *sl = &e->slots[e->step_slots[i]];
        if (sl->n_tokens - sl->mtp_covered < TS_MODEL_MTP_MAX_LAG / 2) continue;
        ts_status s = ts_model_decoder_mtp(e->dec, e->step_slots[i], sl->last, e->prefill_logits);
        if (s != TS_OK) return s;
        sl->mtp_covered = sl->n_tokens;
    }
    return TS_OK;
}

static void *worker_main(void *arg) {
    ts_model_engine *e = arg;
    pthread_mutex_lock(&e->mu);
    for (;;) {
        for (int s = 0; s < e->opt.slots; s++)
            if (e->slots[s].phase != SLOT_IDLE && (e->slots[s].req.cancelled || e->stop)) finish(e, s, TS_GEN_CANCELLED);
        if (e->stop) break;
        admit(e);
        plan p = make_plan(e);
        if (p.prefill < 0 && p.n == 0) {
            pthread_cond_wait(&e->wake, &e->mu);
            continue;
        }
        /* submit / cancel / stats stay responsive during the compute; only this thread changes
         * slots, so what the plan names stays valid */
        pthread_mutex_unlock(&e->mu);
        ts_status sp = TS_OK, sd = TS_OK;
        int32_t out[2];
        int n_out = 0;
        if (p.prefill >= 0) sp = run_prefill(e, &p);
        if (p.speculate) {
            const slot_state *sl = &e->slots[e->step_slots[0]];
            sd = ts_speculator_step(e->spec, e->step_slots[0], sl->sampler, sl->last, out, &n_out);
        } else if (p.n > 0) {
            sd = catch_up_mtp(e, &p);
            if (sd == TS_OK) sd = ts_model_decoder_step(e->dec, p.n, e->step_slots, e->step_ids, e->logits);
        }
        pthread_mutex_lock(&e->mu);
        if (p.prefill >= 0) after_prefill(e, &p, sp);
        if (p.speculate) after_round(e, &p, sd, out, n_out);
        else after_step(e, &p, sd);
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
    if (req->n_prompt < 1 || req->max_tokens < 1 || (int64_t)req->n_prompt + req->max_tokens > e->opt.max_len)
        return TS_ERR_RANGE;
    for (size_t i = 0; i < req->n_prompt; i++)
        if (req->prompt[i] < 0 || req->prompt[i] >= e->vocab) return TS_ERR_RANGE;
    if (ts_sampling_params_check(&req->sampling, NULL) || req->n_stop_ids < 0 || req->n_stop_ids > TS_GEN_MAX_STOP_IDS)
        return TS_ERR_RANGE;
    pending p = {.id = req->id,
                 .prompt = malloc(req->n_prompt * sizeof(int32_t)),
                 .n_prompt = req->n_prompt,
                 .max_tokens = req->max_tokens,
                 .sampling = req->sampling,
                 .n_stop_ids = req->n_stop_ids,
                 .sink = req->sink};
    if (!p.prompt) return TS_ERR_OOM;
    memcpy(p.stop_ids, req->stop_ids, sizeof p.stop_ids);
    memcpy(p.prompt, req->prompt, req->n_prompt * sizeof(int32_t));
    pthread_mutex_lock(&e->mu);
    ts_status s = TS_OK;
    if (e->stop || e->queue_len >= e->opt.max_queue) s = TS_ERR_STATE;
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
    for (int s = 0; s < e->opt.slots; s++)
        if (e->slots[s].phase != SLOT_IDLE && e->slots[s].req.id == id) e->slots[s].req.cancelled = true;
    pthread_cond_signal(&e->wake);
    pthread_mutex_unlock(&e->mu);
}

static void eng_stats(void *self, ts_engine_stats *out) {
    ts_model_engine *e = self;
    *out = (ts_engine_stats){0};
    pthread_mutex_lock(&e->mu);
    for (int s = 0; s < e->opt.slots; s++) {
        const slot_state *sl = &e->slots[s];
        if (sl->phase == SLOT_IDLE) {
            out->kv_positions_cached += sl->n_tokens;
        } else {
            out->running++;
            out->kv_positions_running += sl->n_tokens;
        }
    }
    out->kv_positions_capacity = (int64_t)e->opt.slots * e->opt.max_len;
    out->kv_cache_usage = (double)out->kv_positions_running / (double)out->kv_positions_capacity;
    out->kv_bytes = (int64_t)e->kv_bytes;
    out->queued = e->queue_len;
    out->prefix_cache_hits = e->prefix_hits;
    out->prefix_reused_tokens = e->reused_tokens;
    out->prefill_tokens = e->prefill_tokens;
    if (e->spec) ts_speculator_stats(e->spec, &out->spec_drafted, &out->spec_accepted);
    pthread_mutex_unlock(&e->mu);
}

void ts_model_engine_table(ts_model_engine *e, ts_engine *out) {
    *out = (ts_engine){e, eng_tokenize, eng_detokenize, eng_submit, eng_cancel, eng_stats};
}

/* ---------------------------------------------------------------- sizing and life cycle */

ts_model_engine_options ts_model_engine_defaults(void) {
    return (ts_model_engine_options){.slots = 4, .max_len = 1024, .max_queue = 64, .prefill_chunk = 64, .prefix_cache = true};
}

ts_status ts_model_engine_fit(const ts_model_weights *w, ts_backend *be, size_t kv_bytes, int64_t max_len, int max_slots,
                              int *slots, size_t *slot_bytes, char *err, size_t err_size) {
    if (!w || !be || !slots || max_len < 2 || max_slots < 1) return TS_ERR_INVALID_ARG;
    ts_model_decoder *d = NULL;
    ts_status s = ts_model_decoder_new(w, be, 1, max_len, &d, err, err_size);
    if (s != TS_OK) return s;
    size_t one = ts_model_decoder_state_bytes(d);
    ts_model_decoder_free(d);
    if (slot_bytes) *slot_bytes = one;
    size_t fit = one ? kv_bytes / one : (size_t)max_slots;
    if (fit < 1) {
        ts_error_printf(err, err_size, "a KV-cache budget of %.2f MiB holds no sequence of %lld positions (one needs %.2f MiB)",
                        (double)kv_bytes / (1 << 20), (long long)max_len, (double)one / (1 << 20));
        return TS_ERR_RANGE;
    }
    *slots = fit < (size_t)max_slots ? (int)fit : max_slots;
    return TS_OK;
}

static ts_status check_options(const ts_model_engine_options *o, char *err, size_t err_size) {
    if (o->slots >= 1 && o->max_len >= 2 && o->max_queue >= 1 && o->prefill_chunk >= 1) return TS_OK;
    ts_error_printf(err, err_size, "engine: need slots >= 1, max_len >= 2, max_queue >= 1, prefill_chunk >= 1 "
                    "(got %d, %lld, %d, %d)", o->slots, (long long)o->max_len, o->max_queue, o->prefill_chunk);
    return TS_ERR_INVALID_ARG;
}

static ts_status alloc_scratch(ts_model_engine *e) {
    size_t S = (size_t)e->opt.slots;
    e->slots = calloc(S, sizeof *e->slots);
    e->queue = calloc((size_t)e->opt.max_queue, sizeof *e->queue);
    e->step_slots = calloc(S, sizeof *e->step_slots);
    e->step_ids = calloc(S, sizeof *e->step_ids);
    e->logits = calloc(S * (size_t)e->vocab, sizeof *e->logits);
    e->prefill_logits = calloc((size_t)e->vocab, sizeof *e->prefill_logits);
    e->reuse = calloc(S, sizeof *e->reuse);
    if (!e->slots || !e->queue || !e->step_slots || !e->step_ids || !e->logits || !e->prefill_logits || !e->reuse)
        return TS_ERR_OOM;
    for (size_t i = 0; i < S; i++) {
        e->slots[i].tokens = malloc((size_t)e->opt.max_len * sizeof(int32_t));
        if (!e->slots[i].tokens || ts_sampler_new(e->vocab, &e->slots[i].sampler) != TS_OK) return TS_ERR_OOM;
    }
    return TS_OK;
}

ts_status ts_model_engine_new(const ts_model_weights *w, ts_tokenizer *tok, ts_backend *be,
                              const ts_model_engine_options *opt, ts_model_engine **out, char *err, size_t err_size) {
    if (!w || !be || !opt || !out) return TS_ERR_INVALID_ARG;
    *out = NULL;
    ts_status s = check_options(opt, err, err_size);
    if (s != TS_OK) return s;
    const ts_v4_config *c = ts_model_weights_config(w);
    if (!tok && c->vocab_size < TS_BYTE_OFFSET + 256) {
        ts_error_printf(err, err_size, "engine: no tokenizer, and the model's vocabulary (%lld) is not byte-level",
                        (long long)c->vocab_size);
        return TS_ERR_INVALID_ARG;
    }
    ts_model_engine *e = calloc(1, sizeof *e);
    if (!e) return TS_ERR_OOM;
    e->tok = tok;
    e->vocab = (int32_t)c->vocab_size;
    e->eos = tok ? ts_tokenizer_eos_id(tok) : TS_BYTE_EOS;
    e->opt = *opt;
    e->prefill_rr = opt->slots - 1; /* slot 0 is the first to prefill */
    s = alloc_scratch(e);
    if (s != TS_OK) ts_error_printf(err, err_size, "engine: out of memory");
    if (s == TS_OK) s = ts_model_decoder_new(w, be, opt->slots, opt->max_len, &e->dec, err, err_size);
    if (s == TS_OK && opt->speculative) s = ts_speculator_new(w, e->dec, &e->spec, err, err_size);
    if (s == TS_OK) {
        e->kv_bytes = ts_model_decoder_state_bytes(e->dec);
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
    for (int i = 0; e->slots && i < e->opt.slots; i++) {
        ts_sampler_free(e->slots[i].sampler);
        free(e->slots[i].tokens);
    }
    ts_speculator_free(e->spec);
    ts_model_decoder_free(e->dec);
    free(e->slots);
    free(e->queue);
    free(e->step_slots);
    free(e->step_ids);
    free(e->logits);
    free(e->prefill_logits);
    free(e->reuse);
    free(e);
}
