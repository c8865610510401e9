/* test_engine.c - the model engine behind `tessera serve` (src/serve/model_engine.c):
 * continuous batching over the incremental V4 decoder.
 * 1. Five greedy requests with different prompt lengths through 3 slots (two wait in the queue
 *    and join as others leave; prefills and decodes share steps): each gets exactly the tokens
 *    that greedy completion of its prompt alone gives.
 * 2. Sampling: the same seed gives the same tokens twice; another seed gives other tokens.
 * 3. Cancel ends a request with TS_GEN_CANCELLED; a full queue is refused (TS_ERR_STATE), a
 *    request that cannot fit the context is TS_ERR_RANGE; freeing the engine ends queued work. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "tessera/data.h"
#include "tessera/serve.h"

typedef struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int32_t tokens[64];
    int n;
    bool done;
    ts_gen_end end;
} collector;

static void on_token(void *user, int32_t id) {
    collector *c = user;
    pthread_mutex_lock(&c->mu);
    if (c->n < 64) c->tokens[c->n++] = id;
    pthread_mutex_unlock(&c->mu);
}

static void on_done(void *user, ts_gen_end end) {
    collector *c = user;
    pthread_mutex_lock(&c->mu);
    c->done = true;
    c->end = end;
    pthread_cond_signal(&c->cv);
    pthread_mutex_unlock(&c->mu);
}

static void collector_init(collector *c) {
    memset(c, 0, sizeof *c);
    pthread_mutex_init(&c->mu, NULL);
    pthread_cond_init(&c->cv, NULL);
}

static void wait_done(collector *c) {
    pthread_mutex_lock(&c->mu);
    while (!c->done) pthread_cond_wait(&c->cv, &c->mu);
    pthread_mutex_unlock(&c->mu);
}

static ts_gen_request request(uint64_t id, const int32_t *prompt, size_t n, int32_t max_tokens, collector *c) {
    ts_gen_request r = {id, prompt, n, max_tokens, ts_sampling_defaults(), {c, on_token, on_done}};
    r.sampling.temperature = 0;
    return r;
}

static ts_model_weights *small_model(void) {
    ts_v4_config c;
    ts_v4_preset("tiny", &c);
    c.hidden_size = 64;
    c.moe_intermediate_size = 32;
    c.q_lora_rank = 32;
    c.num_hidden_layers = 3;
    int32_t ratios[4] = {0, 4, 32, 0};
    memset(c.compress_ratios, 0, sizeof c.compress_ratios);
    memcpy(c.compress_ratios, ratios, sizeof ratios);
    c.sliding_window = 8;
    char err[256];
    ts_model_weights *w = NULL;
    if (ts_model_weights_new(&c, TS_F32, &w, err, sizeof err) != TS_OK) return NULL;
    ts_model_weights_init(w, 5, err, sizeof err);
    for (int i = 0; i < ts_model_weights_count(w); i++) { /* sharper than the init's 0.02 */
        const ts_model_tensor *t = ts_model_weights_info(w, i);
        if (ts_model_weights_mem_dtype(w, i) != TS_F32 || t->ndim != 2) continue;
        float *d = ts_model_weights_data(w, i);
        for (int64_t j = 0; j < ts_model_tensor_numel(t); j++) d[j] *= 10;
    }
    return w;
}

int main(void) {
    ts_model_weights *w = small_model();
    CHECK(w != NULL, "model");
    if (!w) return check_summary("engine");
    ts_backend *be;
    ts_backend_cpu_new(2, &be);
    char err[256] = "";
    ts_model_engine *e = NULL;
    CHECK(ts_model_engine_new(w, NULL, be, 3, 48, 8, &e, err, sizeof err) == TS_OK, "engine: %s", err);
    ts_engine eng;
    ts_model_engine_table(e, &eng);

    /* 1. five greedy requests through three slots vs completion of each prompt alone */
    enum { N = 5, NEW = 12 };
    const char *texts[N] = {"rev abc=", "7+2=", "copy hello=", "k1:red k2:blue k1?=", "sort dcba="};
    int32_t prompts[N][40];
    size_t lens[N];
    collector col[N];
    for (int i = 0; i < N; i++) {
        ts_token_ids ids = {0};
        CHECK(eng.tokenize(eng.self, texts[i], strlen(texts[i]), true, &ids) == TS_OK, "tokenize");
        memcpy(prompts[i], ids.ids, ids.n * sizeof(int32_t));
        lens[i] = ids.n;
        free(ids.ids);
        collector_init(&col[i]);
        ts_gen_request r = request((uint64_t)i + 1, prompts[i], lens[i], NEW, &col[i]);
        CHECK(eng.submit(eng.self, &r) == TS_OK, "submit %d", i);
    }
    for (int i = 0; i < N; i++) wait_done(&col[i]);
    ts_model_completer *cp = NULL;
    ts_model_completer_new(w, be, N, 48, &cp, err, sizeof err);
    const int32_t *pp[N];
    int64_t pl[N], out_lens[N];
    int32_t outs_buf[N][NEW], *outs[N];
    for (int i = 0; i < N; i++) {
        pp[i] = prompts[i];
        pl[i] = (int64_t)lens[i];
        outs[i] = outs_buf[i];
    }
    CHECK(ts_model_complete(cp, N, pp, pl, NEW, TS_BYTE_EOS, TS_BYTE_PAD, outs, out_lens) == TS_OK, "complete");
    int same = 0;
    for (int i = 0; i < N; i++) {
        bool ok = col[i].n == out_lens[i] && memcmp(col[i].tokens, outs[i], (size_t)col[i].n * sizeof(int32_t)) == 0;
        ok = ok && col[i].end == (col[i].n == NEW ? TS_GEN_LENGTH : TS_GEN_STOP_TOKEN);
        CHECK(ok, "request %d: %d tokens (end %d) vs %lld alone", i, col[i].n, (int)col[i].end, (long long)out_lens[i]);
        same += ok;
    }
    printf("  %d requests through 3 slots: %d identical to greedy completion of each prompt alone\n", N, same);
    ts_model_completer_free(cp);

    /* 2. seeded sampling */
    collector a, b, c2;
    collector_init(&a);
    collector_init(&b);
    collector_init(&c2);
    ts_gen_request ra = request(10, prompts[0], lens[0], NEW, &a), rb = request(11, prompts[0], lens[0], NEW, &b),
                   rc = request(12, prompts[0], lens[0], NEW, &c2);
    ra.sampling.temperature = rb.sampling.temperature = rc.sampling.temperature = 1.5f;
    ra.sampling.seed = rb.sampling.seed = 42;
    rc.sampling.seed = 43;
    eng.submit(eng.self, &ra);
    eng.submit(eng.self, &rb);
    eng.submit(eng.self, &rc);
    wait_done(&a);
    wait_done(&b);
    wait_done(&c2);
    CHECK(a.n == b.n && memcmp(a.tokens, b.tokens, (size_t)a.n * sizeof(int32_t)) == 0, "same seed, different tokens");
    CHECK(a.n != c2.n || memcmp(a.tokens, c2.tokens, (size_t)a.n * sizeof(int32_t)) != 0, "another seed, same tokens");

    /* 3. cancel, limits */
    collector k;
    collector_init(&k);
    ts_gen_request rk = request(20, prompts[2], lens[2], 30, &k);
    CHECK(eng.submit(eng.self, &rk) == TS_OK, "submit");
    eng.cancel(eng.self, 20);
    wait_done(&k);
    CHECK(k.end == TS_GEN_CANCELLED && k.n < 30, "cancel: end %d after %d tokens", (int)k.end, k.n);
    collector big;
    collector_init(&big);
    ts_gen_request rr = request(21, prompts[0], lens[0], 48, &big);
    CHECK(eng.submit(eng.self, &rr) == TS_ERR_RANGE, "prompt + max_tokens beyond the context is refused");
    int32_t bad[2] = {0, 999};
    ts_gen_request rbad = request(22, bad, 2, 4, &big);
    CHECK(eng.submit(eng.self, &rbad) == TS_ERR_RANGE, "an id outside the vocabulary is refused");
    ts_model_engine_free(e);

    ts_model_engine *one = NULL;
    CHECK(ts_model_engine_new(w, NULL, be, 1, 48, 1, &one, err, sizeof err) == TS_OK, "engine: %s", err);
    ts_model_engine_table(one, &eng);
    collector many[6];
    int refused = 0, accepted = 0;
    for (int i = 0; i < 6; i++) {
        collector_init(&many[i]);
        ts_gen_request r = request(30 + (uint64_t)i, prompts[3], lens[3], 20, &many[i]);
        ts_status s = eng.submit(eng.self, &r);
        refused += s == TS_ERR_STATE;
        accepted += s == TS_OK;
    }
    CHECK(refused >= 1 && accepted >= 1, "one slot + a queue of one: %d accepted, %d refused", accepted, refused);
    ts_model_engine_free(one); /* ends what is still running or queued */
    int ended = 0;
    for (int i = 0; i < 6; i++) ended += many[i].done;
    CHECK(ended == accepted, "%d of %d accepted requests ended when the engine was freed", ended, accepted);
    ts_backend_free(be);
    ts_model_weights_free(w);
    return check_summary("engine");
}
