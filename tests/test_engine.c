/* test_engine.c - the model engine behind `tessera serve` (src/serve/model_engine.c):
 * continuous batching over the incremental V4 decoder, chunked prefill, prefix cache, sizing.
 * The oracle for every greedy output is ts_model_complete (the full forward graph, recomputed
 * per token) on the request's prompt alone, on a backend of its own (the engine's worker
 * computes on the engine's backend at any moment, and a backend runs one graph at a time).
 * 1. Chunked prefill: five greedy requests, prompts of 5 to 19 tokens in chunks of 3, through 3
 *    slots; two join while the first ones are generating, others wait in the queue: each gets
 *    exactly the oracle's tokens; prefilled + reused tokens = the prompts' tokens.
 * 2. Sampling: the same seed gives the same tokens twice; another seed gives other tokens.
 * 3. Cancel ends a request with TS_GEN_CANCELLED; a full queue is refused (TS_ERR_STATE), a
 *    request that cannot fit the context is TS_ERR_RANGE; freeing the engine ends queued work.
 * 4. Prefix reuse, as a chat resends its conversation: turn 2 = turn 1 + its reply + more reuses
 *    exactly the cached tokens; a prompt inside the cache reuses all but its last token when the
 *    decoder can rewind that far (probed), else nothing; a diverging prompt still answers right.
 *    Outputs equal the oracle's, and an engine without the cache (one chunk per prompt) gives the
 *    same tokens with no reuse counted.
 * 5. Sizing from a memory budget: ts_model_engine_fit's slots x one slot's bytes fits the budget
 *    and one more does not; the engine's reported pool memory is slots x one slot's; too small a
 *    budget is TS_ERR_RANGE; prefix checkpoints add their slots' fixed state, to the engine's
 *    memory and to the sizing. V4's pool (blocks of lcm(4, 32) = 32 positions of compressed
 *    entries, the slots' fixed state besides): eight requests through 8 slots over 3 blocks give
 *    the tokens of the full pool, greedy and sampled, with preemptions (as for dense in 7).
 * 6. Speculative decoding: greedy outputs of an engine with MTP speculation equal those of one
 *    without - a request alone (speculative rounds), three together (batched steps, the MTP block
 *    caught up as they pass half its lag limit, then rounds as they finish), long prompts in
 *    chunks, and a second turn reusing a prefix (a rewind under the block) - and drafts are made
 *    and counted; the same with the speculative engine on a pool of 6 V4 blocks (preemptions).
 * 7. The dense model's shared block pool (dense-tiny, its own oracle):
 *    - three requests sharing a 34-token prefix, the later two submitted while the first is
 *      still generating: they fork its blocks (reused tokens counted, the first provably still
 *      running) and answer like their completions alone;
 *    - eight requests through 8 slots over a pool of 4 blocks (64 positions, a sixth of slots x
 *      max_len): all answer like their completions alone and like an engine with the full pool,
 *      greedy and with seeded sampling (the preempted keep their sampler state), distinct or
 *      after a shared system prompt (forks, copies on write), and the pool ran out mid-decode
 *      (preemptions counted);
 *    - a budget sizes the pool, not the slots; a request too long for the pool is TS_ERR_RANGE;
 *    - a 40-token prompt arriving while a request generates shares its forward passes (the
 *      engine's pass counter = the generating request's tokens: one ts_model_decoder_batch per
 *      iteration) and answers like its completion alone.
 * 8. V4 prefix checkpoints (prompts sharing 70 tokens, then 21 of their own, so no cache can
 *    rewind to the shared part): the second request checkpoints at 64, the later ones reuse 64
 *    each (none without checkpoints), greedy, seeded and speculative outputs as without a prefix
 *    cache; a checkpoint taken at admission (a request starting at the boundary); on a pool of 5
 *    blocks the checkpoint survives the running requests' eviction of idle caches, is evicted
 *    for a prompt that needs the whole pool, and every output stays the same. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "small_v4.h"
#include "tessera/data.h"
#include "tessera/serve.h"

enum { MAX_LEN = 48, MAX_OUT = 64 };
enum { V4_BLOCK = 32, V4_SEQ = (MAX_LEN + V4_BLOCK - 1) / V4_BLOCK * V4_BLOCK }; /* small_model's pool: lcm(4, 32) */

typedef struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int32_t tokens[MAX_OUT];
    int n, total; /* kept (at most MAX_OUT), reported */
    bool done;
    ts_gen_end end;
} collector;

static void on_token(void *user, int32_t id, const ts_token_logprobs *lp) {
    collector *c = user;
    (void)lp;
    pthread_mutex_lock(&c->mu);
    if (c->n < MAX_OUT) c->tokens[c->n++] = id;
    c->total++;
    pthread_cond_signal(&c->cv);
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

/* Waits until c has n tokens or is done. */
static void wait_tokens(collector *c, int n) {
    pthread_mutex_lock(&c->mu);
    while (!c->done && c->n < n) pthread_cond_wait(&c->cv, &c->mu);
    pthread_mutex_unlock(&c->mu);
}

static void wait_done(collector *c) { wait_tokens(c, MAX_OUT + 1); }

/* Whether v occurs among a[0..n). */
static bool memchr_i32(const int32_t *a, int n, int32_t v) {
    for (int i = 0; i < n; i++)
        if (a[i] == v) return true;
    return false;
}

static ts_gen_request request(uint64_t id, const int32_t *prompt, size_t n, int32_t max_tokens, collector *c) {
    ts_gen_request r = {.id = id, .prompt = prompt, .n_prompt = n, .max_tokens = max_tokens,
                        .sampling = ts_sampling_defaults(), .sink = {c, on_token, on_done}};
    r.sampling.temperature = 0;
    return r;
}

static ts_model_weights *small_model(void) {
    ts_v4_config c;
    small_v4_config(&c, (const int32_t[4]){0, 4, 32, 0});
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

/* An engine of `slots` slots of max_len positions over a pool of `pool` (0: the full one), with
 * options.checkpoints = checkpoints. */
static ts_model_engine *engine_with(const ts_model_weights *w, ts_backend *be, int slots, int64_t max_len, int64_t pool,
                                    int max_queue, int chunk, bool prefix_cache, int checkpoints) {
    ts_model_engine_options o = ts_model_engine_defaults();
    o.checkpoints = checkpoints;
    o.slots = slots;
    o.max_len = max_len;
    o.pool_positions = pool;
    o.max_queue = max_queue;
    o.prefill_chunk = chunk;
    o.prefix_cache = prefix_cache;
    char err[256] = "";
    ts_model_engine *e = NULL;
    CHECK(ts_model_engine_new(w, NULL, be, &o, &e, err, sizeof err) == TS_OK, "engine: %s", err);
    return e;
}

static ts_model_engine *engine_new(const ts_model_weights *w, ts_backend *be, int slots, int max_queue, int chunk,
                                   bool prefix_cache) {
    return engine_with(w, be, slots, MAX_LEN, 0, max_queue, chunk, prefix_cache, -1);
}

static size_t tokenize(const ts_engine *eng, const char *text, bool bos, int32_t *out) {
    ts_token_ids ids = {0};
    CHECK(eng->tokenize(eng->self, text, strlen(text), bos, &ids) == TS_OK, "tokenize");
    memcpy(out, ids.ids, ids.n * sizeof(int32_t));
    size_t n = ids.n;
    free(ids.ids);
    return n;
}

/* Whether a greedy request got exactly what completing its prompt alone gives. */
static bool matches_oracle(ts_model_completer *cp, const int32_t *prompt, size_t n, int32_t max_new, const collector *c) {
    int32_t out[MAX_OUT], *outs[1] = {out};
    int64_t pl = (int64_t)n, out_len = 0;
    if (ts_model_complete(cp, 1, &prompt, &pl, max_new, TS_BYTE_EOS, TS_BYTE_PAD, outs, &out_len) != TS_OK) return false;
    bool same = c->n == out_len && memcmp(c->tokens, out, (size_t)c->n * sizeof(int32_t)) == 0;
    return same && c->end == (c->n == max_new ? TS_GEN_LENGTH : TS_GEN_STOP_TOKEN);
}

static ts_engine_stats stats(const ts_engine *eng) {
    ts_engine_stats s;
    eng->stats(eng->self, &s);
    return s;
}

/* 1. */
static void test_chunked_prefill(const ts_model_weights *w, ts_backend *be, ts_model_completer *cp) {
    ts_model_engine *e = engine_new(w, be, 3, 8, 3, true);
    if (!e) return;
    ts_engine eng;
    ts_model_engine_table(e, &eng);
    enum { N = 5, NEW = 12 };
    const char *texts[N] = {"k1:red k2:blue k1?=", "7+2=", "copy hello=", "rev abcdefgh=", "sort dcba="};
    int32_t prompts[N][MAX_LEN];
    size_t lens[N], total = 0;
    collector col[N];
    for (int i = 0; i < N; i++) {
        lens[i] = tokenize(&eng, texts[i], true, prompts[i]);
        total += lens[i];
        collector_init(&col[i]);
    }
    for (int i = 0; i < N; i++) {
        if (i == 3) wait_tokens(&col[0], 2); /* the rest join while the first ones generate */
        ts_gen_request r = request((uint64_t)i + 1, prompts[i], lens[i], NEW, &col[i]);
        CHECK(eng.submit(eng.self, &r) == TS_OK, "submit %d", i);
    }
    int same = 0;
    for (int i = 0; i < N; i++) {
        wait_done(&col[i]);
        bool ok = matches_oracle(cp, prompts[i], lens[i], NEW, &col[i]);
        CHECK(ok, "request %d (%zu prompt tokens): %d tokens, end %d, differ from its greedy completion alone", i,
              lens[i], col[i].n, (int)col[i].end);
        same += ok;
    }
    ts_engine_stats s = stats(&eng);
    CHECK(s.prefill_tokens + s.prefix_reused_tokens == (int64_t)total, "prefilled %lld + reused %lld != %zu prompt tokens",
          (long long)s.prefill_tokens, (long long)s.prefix_reused_tokens, total);
    /* the idle slots' caches keep their pool blocks (for prefix reuse) */
    CHECK(s.running == 0 && s.kv_positions_running == 0 && s.kv_positions_cached > 0 && s.kv_blocks_free < s.kv_blocks &&
              s.kv_cache_usage == (double)(s.kv_blocks - s.kv_blocks_free) / (double)s.kv_blocks &&
              s.kv_positions_capacity == 3 * V4_SEQ,
          "idle engine: running %lld, %lld positions running, %lld cached of %lld, %lld of %lld blocks free",
          (long long)s.running, (long long)s.kv_positions_running, (long long)s.kv_positions_cached,
          (long long)s.kv_positions_capacity, (long long)s.kv_blocks_free, (long long)s.kv_blocks);
    printf("  chunked prefill (chunks of 3, prompts of 5..19 tokens, 3 slots, 2 joining mid-way): %d of %d requests "
           "identical to greedy completion alone\n", same, N);
    ts_model_engine_free(e);
}

/* 2. and 3. */
static void test_sampling_cancel_limits(const ts_model_weights *w, ts_backend *be) {
    ts_model_engine *e = engine_new(w, be, 3, 8, 4, true);
    if (!e) return;
    ts_engine eng;
    ts_model_engine_table(e, &eng);
    int32_t p0[MAX_LEN], p1[MAX_LEN];
    size_t n0 = tokenize(&eng, "rev abc=", true, p0), n1 = tokenize(&eng, "k1:red k2:blue k1?=", true, p1);
    enum { NEW = 12 };
    collector a, b, c2;
    collector_init(&a);
    collector_init(&b);
    collector_init(&c2);
    ts_gen_request ra = request(10, p0, n0, NEW, &a), rb = request(11, p0, n0, NEW, &b), rc = request(12, p0, n0, NEW, &c2);
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

    /* A stop id ends the same seeded generation just before that token's first appearance. */
    int first_new = 1;
    while (first_new < a.n && memchr_i32(a.tokens, first_new, a.tokens[first_new])) first_new++;
    collector st;
    collector_init(&st);
    ts_gen_request rs = request(13, p0, n0, NEW, &st);
    rs.sampling = ra.sampling;
    rs.stop_ids[0] = 999999; /* never produced */
    rs.stop_ids[1] = a.tokens[first_new < a.n ? first_new : 0];
    rs.n_stop_ids = 2;
    CHECK(first_new < a.n && eng.submit(eng.self, &rs) == TS_OK, "stop-id request (token %d of %d)", first_new, a.n);
    wait_done(&st);
    CHECK(st.end == TS_GEN_STOP_TOKEN && st.n == first_new && memcmp(st.tokens, a.tokens, (size_t)st.n * sizeof(int32_t)) == 0,
          "stop id %d: end %d after %d tokens, expected a stop after %d", rs.stop_ids[1], (int)st.end, st.n, first_new);
    rs.n_stop_ids = TS_GEN_MAX_STOP_IDS + 1;
    CHECK(eng.submit(eng.self, &rs) == TS_ERR_RANGE, "too many stop ids are refused");

    collector k;
    collector_init(&k);
    ts_gen_request rk = request(20, p1, n1, 28, &k);
    CHECK(eng.submit(eng.self, &rk) == TS_OK, "submit");
    eng.cancel(eng.self, 20);
    wait_done(&k);
    CHECK(k.end == TS_GEN_CANCELLED && k.n < 28, "cancel: end %d after %d tokens", (int)k.end, k.n);
    collector big;
    collector_init(&big);
    ts_gen_request rr = request(21, p0, n0, MAX_LEN, &big);
    CHECK(eng.submit(eng.self, &rr) == TS_ERR_RANGE, "prompt + max_tokens beyond the context is refused");
    int32_t bad[2] = {0, 999};
    ts_gen_request rbad = request(22, bad, 2, 4, &big);
    CHECK(eng.submit(eng.self, &rbad) == TS_ERR_RANGE, "an id outside the vocabulary is refused");
    ts_model_engine_free(e);

    ts_model_engine *one = engine_new(w, be, 1, 1, 4, true);
    if (!one) return;
    ts_model_engine_table(one, &eng);
    collector many[6];
    int refused = 0, accepted = 0;
    for (int i = 0; i < 6; i++) {
        collector_init(&many[i]);
        ts_gen_request r = request(30 + (uint64_t)i, p1, n1, 20, &many[i]);
        ts_status s = eng.submit(eng.self, &r);
        refused += s == TS_ERR_STATE;
        accepted += s == TS_OK;
    }
    CHECK(refused >= 1 && accepted >= 1, "one slot + a queue of one: %d accepted, %d refused", accepted, refused);
    ts_model_engine_free(one); /* ends what is still running or queued */
    int ended = 0;
    for (int i = 0; i < 6; i++) ended += many[i].done;
    CHECK(ended == accepted, "%d of %d accepted requests ended when the engine was freed", ended, accepted);
}

/* Whether the model's decoder can take back the last 3 of 12 tokens (prefix reuse inside a cache). */
static bool can_rewind(const ts_model_weights *w, ts_backend *oracle_be) {
    ts_model_decoder *d = NULL;
    char err[256];
    if (ts_model_decoder_new(w, oracle_be, 1, MAX_LEN, &d, err, sizeof err) != TS_OK) return false;
    int32_t ids[12];
    float *logits = malloc(TS_BYTE_VOCAB_SIZE * sizeof(float) * 2);
    for (int i = 0; i < 12; i++) ids[i] = TS_BYTE_OFFSET + 'a' + i;
    bool ok = logits && ts_model_decoder_extend(d, 0, ids, 12, logits, 1) == TS_OK &&
              ts_model_decoder_truncate(d, 0, 9) == TS_OK;
    free(logits);
    ts_model_decoder_free(d);
    return ok;
}

typedef struct {
    int32_t prompt[MAX_LEN];
    size_t n;
    collector out;
} turn;

static void run_turn(const ts_engine *eng, turn *t, uint64_t id, int32_t max_new) {
    collector_init(&t->out);
    ts_gen_request r = request(id, t->prompt, t->n, max_new, &t->out);
    CHECK(eng->submit(eng->self, &r) == TS_OK, "submit turn %llu", (unsigned long long)id);
    wait_done(&t->out);
}

/* 4. */
static void test_prefix_reuse(const ts_model_weights *w, ts_backend *be, ts_backend *oracle_be, ts_model_completer *cp) {
    ts_model_engine *e = engine_new(w, be, 2, 4, 4, true), *plain = engine_new(w, be, 2, 4, 64, false);
    if (!e || !plain) goto out;
    ts_engine eng, ref;
    ts_model_engine_table(e, &eng);
    ts_model_engine_table(plain, &ref);
    enum { NEW = 6 };
    turn t[4], r[4];
    /* A; B = A + its reply + more; D = the first tokens of B's cache (a rewind); C diverges in A */
    t[0].n = tokenize(&eng, "k1:red k2:blue k1?=", true, t[0].prompt);
    run_turn(&eng, &t[0], 1, NEW);
    int64_t cached = (int64_t)t[0].n + t[0].out.n - (t[0].out.end == TS_GEN_LENGTH); /* the last token is not fed */
    memcpy(t[1].prompt, t[0].prompt, t[0].n * sizeof(int32_t));
    memcpy(t[1].prompt + t[0].n, t[0].out.tokens, (size_t)t[0].out.n * sizeof(int32_t));
    t[1].n = t[0].n + (size_t)t[0].out.n;
    t[1].n += tokenize(&eng, " k2?=", false, t[1].prompt + t[1].n);
    run_turn(&eng, &t[1], 2, NEW);
    ts_engine_stats s = stats(&eng);
    CHECK(s.prefix_cache_hits == 1 && s.prefix_reused_tokens == cached,
          "turn 2 re-sends turn 1: %lld hits, %lld tokens reused, expected 1 and %lld", (long long)s.prefix_cache_hits,
          (long long)s.prefix_reused_tokens, (long long)cached);
    t[2].n = t[1].n + 3;
    memcpy(t[2].prompt, t[1].prompt, t[1].n * sizeof(int32_t));
    memcpy(t[2].prompt + t[1].n, t[1].out.tokens, 3 * sizeof(int32_t));
    CHECK(t[1].out.n >= 5, "turn 2 gave %d tokens: too few for the rewind case", t[1].out.n);
    run_turn(&eng, &t[2], 3, NEW);
    bool rewinds = can_rewind(w, oracle_be);
    ts_engine_stats s2 = stats(&eng);
    int64_t want = rewinds ? (int64_t)t[2].n - 1 : 0;
    CHECK(s2.prefix_reused_tokens - s.prefix_reused_tokens == want,
          "a prompt inside the cache (decoder %s rewind): %lld tokens reused, expected %lld", rewinds ? "can" : "cannot",
          (long long)(s2.prefix_reused_tokens - s.prefix_reused_tokens), (long long)want);
    memcpy(t[3].prompt, t[0].prompt, t[0].n * sizeof(int32_t));
    t[3].n = t[0].n;
    t[3].prompt[t[3].n - 2] = TS_BYTE_OFFSET + 'x';
    run_turn(&eng, &t[3], 4, NEW);
    int64_t prompt_total = 0;
    for (int i = 0; i < 4; i++) {
        prompt_total += (int64_t)t[i].n;
        CHECK(matches_oracle(cp, t[i].prompt, t[i].n, NEW, &t[i].out), "turn %d with the prefix cache: %d tokens, end %d, "
              "differ from its greedy completion alone", i, t[i].out.n, (int)t[i].out.end);
        r[i] = t[i];
        run_turn(&ref, &r[i], 10 + (uint64_t)i, NEW);
        CHECK(r[i].out.n == t[i].out.n && !memcmp(r[i].out.tokens, t[i].out.tokens, (size_t)t[i].out.n * sizeof(int32_t)),
              "turn %d: different tokens without the prefix cache", i);
    }
    s = stats(&eng);
    CHECK(s.prefill_tokens + s.prefix_reused_tokens == prompt_total, "prefilled %lld + reused %lld != %lld prompt tokens",
          (long long)s.prefill_tokens, (long long)s.prefix_reused_tokens, (long long)prompt_total);
    ts_engine_stats sr = stats(&ref);
    CHECK(sr.prefix_cache_hits == 0 && sr.prefix_reused_tokens == 0 && sr.prefill_tokens == prompt_total,
          "without the prefix cache: %lld hits, %lld reused, %lld prefilled", (long long)sr.prefix_cache_hits,
          (long long)sr.prefix_reused_tokens, (long long)sr.prefill_tokens);
    printf("  prefix cache (decoder %s rewind): 4 turns, %lld of %lld prompt tokens reused, outputs as without it\n",
           rewinds ? "can" : "cannot", (long long)s.prefix_reused_tokens, (long long)prompt_total);
out:
    ts_model_engine_free(e);
    ts_model_engine_free(plain);
}

/* 5. The prefix checkpoints' fixed state (V4: a slot's each, the pool as without them) is in the
 * engine's memory and in the budget's sizing: the default, max(2, 3 / 2), adds two slots' fixed
 * state to 3 slots, 3 checkpoints three; fitted with them, `budget` (3.5 slots without) holds
 * fewer slots, an engine of the fitted shape stays within it, and one more slot with its
 * checkpoints and the fewest blocks would not. */
static void test_checkpoint_budget(const ts_model_weights *w, ts_backend *be, size_t budget) {
    ts_model_decoder *d = NULL;
    char err[256] = "";
    CHECK(ts_model_decoder_new(w, be, 1, MAX_LEN, &d, err, sizeof err) == TS_OK, "decoder: %s", err);
    if (!d) return;
    ts_model_decoder_pool pool;
    ts_model_decoder_pool_info(d, &pool);
    ts_model_decoder_free(d);
    int64_t bytes[3] = {0};
    const int wanted[3] = {0, -1, 3};
    for (int i = 0; i < 3; i++) {
        ts_model_engine *e = engine_with(w, be, 3, MAX_LEN, 0, 4, 4, true, wanted[i]);
        ts_engine eng;
        if (!e) return;
        ts_model_engine_table(e, &eng);
        bytes[i] = stats(&eng).kv_bytes;
        ts_model_engine_free(e);
    }
    CHECK(pool.rewind >= 0 && bytes[1] - bytes[0] == 2 * (int64_t)pool.slot_bytes &&
              bytes[2] - bytes[0] == 3 * (int64_t)pool.slot_bytes,
          "3 slots: %lld bytes, %lld with the default checkpoints, %lld with 3; a slot's fixed state %zu (rewind %lld)",
          (long long)bytes[0], (long long)bytes[1], (long long)bytes[2], pool.slot_bytes, (long long)pool.rewind);
    int slots = 0;
    int64_t positions = 0;
    ts_status st = ts_model_engine_fit(w, be, budget, MAX_LEN, 64, -1, &slots, &positions, NULL, err, sizeof err);
    ts_model_engine *e = st == TS_OK ? engine_with(w, be, slots, MAX_LEN, positions, 4, 4, true, -1) : NULL;
    if (!e) return;
    ts_engine eng;
    ts_model_engine_table(e, &eng);
    int n = slots + 1, blocks = n > pool.blocks ? n : (int)pool.blocks; /* a block per slot, a sequence's at least */
    int64_t fitted = stats(&eng).kv_bytes, more = (n + (n / 2 > 2 ? n / 2 : 2)) * (int64_t)pool.slot_bytes + blocks * (int64_t)pool.block_bytes;
    CHECK(slots >= 1 && slots < 3 && fitted <= (int64_t)budget && more > (int64_t)budget,
          "a budget of %zu with checkpoints: %d slots, %lld bytes; one more slot %lld", budget, slots, (long long)fitted,
          (long long)more);
    printf("  checkpoints: a slot's fixed state each (%.1f KiB); budget %.1f KiB: %d slots with their checkpoints\n",
           pool.slot_bytes / 1024.0, budget / 1024.0, slots);
    ts_model_engine_free(e);
}

/* 5. */
static void test_budget(const ts_model_weights *w, ts_backend *be) {
    char err[256] = "";
    int slots = 0;
    int64_t pool = -1;
    size_t one = 0;
    ts_status st = ts_model_engine_fit(w, be, 1 << 30, MAX_LEN, 7, -1, &slots, &pool, &one, err, sizeof err);
    CHECK(st == TS_OK && slots == 7 && one > 0 && pool == 7 * V4_SEQ, "a large budget: %d slots (max 7), %zu bytes each, pool %lld: %s",
          slots, one, (long long)pool, err);
    if (one == 0) return;
    size_t budget = 3 * one + one / 2;
    st = ts_model_engine_fit(w, be, budget, MAX_LEN, 64, 0, &slots, &pool, NULL, err, sizeof err);
    CHECK(st == TS_OK && slots == 3, "3.5 slots' worth: %d slots", slots);
    ts_model_engine *e = engine_with(w, be, slots, MAX_LEN, 0, 4, 4, true, 0);
    if (e) {
        ts_engine eng;
        ts_model_engine_table(e, &eng);
        ts_engine_stats s = stats(&eng);
        CHECK(s.kv_bytes == (int64_t)(3 * one) && (size_t)s.kv_bytes <= budget && (size_t)s.kv_bytes + one > budget,
              "3 slots hold %lld bytes; one slot %zu, budget %zu", (long long)s.kv_bytes, one, budget);
        printf("  budget %.1f KiB: 3 slots of %d positions, %.1f KiB each\n", budget / 1024.0, MAX_LEN, one / 1024.0);
        ts_model_engine_free(e);
    }
    test_checkpoint_budget(w, be, budget);
    err[0] = '\0';
    st = ts_model_engine_fit(w, be, one - 1, MAX_LEN, 64, 0, &slots, &pool, NULL, err, sizeof err);
    CHECK(st == TS_ERR_RANGE && strstr(err, "needs"), "a budget below one slot: %s (%s)", ts_status_name(st), err);
}

/* ---------------------------------------------------------------- 7. the dense model's pool */

static ts_model_weights *dense_model(void) {
    ts_v4_config c;
    ts_v4_preset("dense-tiny", &c);
    char err[256];
    ts_model_weights *w = NULL;
    if (ts_model_weights_new(&c, TS_F32, &w, err, sizeof err) != TS_OK) return NULL;
    ts_model_weights_init(w, 7, err, sizeof err);
    for (int i = 0; i < ts_model_weights_count(w); i++) { /* sharper than the init's 0.02 */
        const ts_model_tensor *t = ts_model_weights_info(w, i);
        if (t->ndim != 2) continue;
        float *d = ts_model_weights_data(w, i);
        for (int64_t j = 0; j < ts_model_tensor_numel(t); j++) d[j] *= 6;
    }
    return w;
}

static ts_model_engine *pooled_engine(const ts_model_weights *w, ts_backend *be, int slots, int64_t pool, int64_t max_len) {
    return engine_with(w, be, slots, max_len, pool, 16, 4, true, -1);
}

static bool collector_done(collector *c) {
    pthread_mutex_lock(&c->mu);
    bool done = c->done;
    pthread_mutex_unlock(&c->mu);
    return done;
}

/* The first request runs long (a context of 128: up to 90 tokens, while the others need about
 * 15 iterations) and is cancelled once the others are done. */
static void test_shared_prefix(const ts_model_weights *w, ts_backend *be, ts_model_completer *cp) {
    ts_model_engine *e = pooled_engine(w, be, 4, 0, 128);
    if (!e) return;
    ts_engine eng;
    ts_model_engine_table(e, &eng);
    enum { N = 3, NEW = 6 };
    const char *questions[N] = {"k1?=", "rev ab=", "7+2="};
    int32_t prompts[N][MAX_LEN];
    size_t lens[N];
    collector col[N];
    size_t prefix = tokenize(&eng, "sys: you answer in short. k1:red ", true, prompts[0]);
    CHECK(prefix == 34, "the system prefix is %zu tokens", prefix);
    for (int i = 0; i < N; i++) {
        memcpy(prompts[i], prompts[0], prefix * sizeof(int32_t));
        lens[i] = prefix + tokenize(&eng, questions[i], false, prompts[i] + prefix);
        collector_init(&col[i]);
        ts_gen_request r = request((uint64_t)i + 1, prompts[i], lens[i], i == 0 ? (int32_t)(128 - lens[0]) : NEW, &col[i]);
        CHECK(eng.submit(eng.self, &r) == TS_OK, "submit %d", i);
        if (i == 0) wait_tokens(&col[0], 1); /* the others arrive while it generates */
    }
    wait_done(&col[1]);
    wait_done(&col[2]);
    bool first_running = !collector_done(&col[0]);
    for (int i = 1; i < N; i++) {
        CHECK(matches_oracle(cp, prompts[i], lens[i], NEW, &col[i]),
              "shared prefix, request %d: %d tokens, end %d, differ from its greedy completion alone", i, col[i].n,
              (int)col[i].end);
    }
    eng.cancel(eng.self, 1);
    wait_done(&col[0]);
    ts_engine_stats s = stats(&eng);
    CHECK(first_running && s.prefix_cache_hits == 2 && s.prefix_reused_tokens >= 2 * (int64_t)prefix,
          "requests sharing a %zu-token prefix with a running one: %lld hits, %lld tokens reused (first running: %d)",
          prefix, (long long)s.prefix_cache_hits, (long long)s.prefix_reused_tokens, first_running);
    printf("  shared prefix: 2 requests joined a running one, %lld prompt tokens reused from its blocks\n",
           (long long)s.prefix_reused_tokens);
    ts_model_engine_free(e);
}

/* A 40-token prompt arrives while a request generates: its prefill, 5 chunks of 8, rides in
 * passes of the other's decoding, so the forward passes equal the generating request's tokens
 * (its prompt's pass gave the first, each later pass one more), and the prompt answers as it
 * does alone. One pass more is allowed: the cancel may land on a computed token (on a loaded
 * machine it did); prefills of their own would add five. The generating request cannot stop
 * before it is cancelled (its EOS is banned): greedy, it reached the EOS after 31 tokens, and a
 * test thread descheduled for those few milliseconds then found it finished. */
static void test_shared_passes(const ts_model_weights *w, ts_backend *be, ts_model_completer *cp) {
    ts_model_engine *e = engine_with(w, be, 2, 128, 0, 4, 8, false, -1);
    if (!e) return;
    ts_engine eng;
    ts_model_engine_table(e, &eng);
    int32_t first[MAX_LEN], second[MAX_LEN];
    size_t n1 = tokenize(&eng, "go:", true, first), n2 = tokenize(&eng, "a prompt of forty tokens, give or take.", true, second);
    CHECK(n2 == 40, "the prompt is %zu tokens", n2);
    collector a, b;
    collector_init(&a);
    collector_init(&b);
    ts_gen_request ra = request(1, first, n1, (int32_t)(128 - n1), &a), rb = request(2, second, n2, 1, &b);
    ra.sampling.logit_bias[ra.sampling.n_logit_bias++] = (ts_logit_bias){.id = TS_BYTE_EOS, .bias = -100.0f};
    CHECK(eng.submit(eng.self, &ra) == TS_OK, "submit the generating request");
    wait_tokens(&a, 2);
    CHECK(eng.submit(eng.self, &rb) == TS_OK, "submit the prompt");
    wait_done(&b);
    bool running = !collector_done(&a);
    eng.cancel(eng.self, 1);
    wait_done(&a);
    ts_engine_stats s = stats(&eng);
    CHECK(running && a.end == TS_GEN_CANCELLED && s.forward_passes >= a.total && s.forward_passes <= a.total + 1,
          "a prefill during decoding: %lld forward passes for %d tokens of the generating request (running: %d): the "
          "prompt did not share a pass", (long long)s.forward_passes, a.total, running);
    CHECK(matches_oracle(cp, second, n2, 1, &b), "the prompt prefilled beside a decode differs from its completion alone");
    printf("  a 40-token prefill during decoding: %lld forward passes for %d generated tokens\n",
           (long long)s.forward_passes, a.total);
    ts_model_engine_free(e);
}

/* Eight requests at once (`system` then a text of their own), up to `new` tokens each into
 * col: greedy, checked against the oracle, or sampled with a seed each (cp NULL). */
static void run_eight(const ts_engine *eng, ts_model_completer *cp, collector col[8], const char *what,
                      const char *system, int32_t new) {
    const char *texts[8] = {"k1:red k2:blue", "copy hello wor", "rev abcdefghij", "sort dcbaxyzwv",
                            "12+34+56+78=..", "k2:green k3:ok", "the quick brow", "lorem ipsum do"};
    int32_t prompts[8][MAX_LEN];
    size_t lens[8];
    for (int i = 0; i < 8; i++) {
        lens[i] = tokenize(eng, system, true, prompts[i]);
        lens[i] += tokenize(eng, texts[i], false, prompts[i] + lens[i]);
        collector_init(&col[i]);
        ts_gen_request r = request(100 + (uint64_t)i, prompts[i], lens[i], new, &col[i]);
        if (!cp) {
            r.sampling.temperature = 0.8f;
            r.sampling.seed = 7 + (uint64_t)i;
        }
        CHECK(eng->submit(eng->self, &r) == TS_OK, "%s: submit %d", what, i);
    }
    for (int i = 0; i < 8; i++) {
        wait_done(&col[i]);
        CHECK(!cp || matches_oracle(cp, prompts[i], lens[i], new, &col[i]), "%s, request %d: %d tokens, end %d, differ from "
              "its greedy completion alone", what, i, col[i].n, (int)col[i].end);
    }
}

/* A pool of `pool` positions in blocks of `block` (a few sequences' worth) against the full one. */
static void test_small_pool(const ts_model_weights *w, ts_backend *be, ts_model_completer *cp, int64_t pool, int64_t block) {
    ts_model_engine *small = pooled_engine(w, be, 8, pool, MAX_LEN), *big = pooled_engine(w, be, 8, 0, MAX_LEN);
    if (!small || !big) goto out;
    ts_engine eng, ref;
    ts_model_engine_table(small, &eng);
    ts_model_engine_table(big, &ref);
    collector got[8], want[8];
    for (int run = 0; run < 4; run++) { /* greedy, sampled; distinct prompts, a shared system prompt */
        ts_model_completer *oracle = run % 2 ? NULL : cp;
        const char *system = run < 2 ? "" : "sys: be short. ";
        int32_t new = run < 2 ? 20 : 12;
        run_eight(&eng, oracle, got, "a small pool", system, new);
        run_eight(&ref, oracle, want, "the full pool", system, new);
        for (int i = 0; i < 8; i++)
            CHECK(got[i].n == want[i].n && !memcmp(got[i].tokens, want[i].tokens, (size_t)got[i].n * sizeof(int32_t)),
                  "request %d (%s%s): a small pool (with preemption) and the full pool give different tokens", i,
                  oracle ? "greedy" : "sampled", run < 2 ? "" : ", shared system prompt");
    }
    ts_engine_stats s = stats(&eng), r = stats(&ref);
    int64_t full = 8 * ((MAX_LEN + block - 1) / block);
    CHECK(s.kv_positions_capacity == pool && s.kv_blocks == pool / block && r.kv_blocks == full &&
              r.kv_positions_capacity == full * block && s.kv_bytes < r.kv_bytes && s.preemptions > 0 && r.preemptions == 0,
          "pools of %lld and %lld positions (%lld and %lld bytes): %lld and %lld preemptions",
          (long long)s.kv_positions_capacity, (long long)r.kv_positions_capacity, (long long)s.kv_bytes,
          (long long)r.kv_bytes, (long long)s.preemptions, (long long)r.preemptions);
    printf("  %s: 8 requests x (greedy, seeded sampling) x (distinct, a shared system prompt), 8 slots over a pool "
           "of %lld positions (of %lld), %lld of %lld KiB: %lld preemptions, the full pool's tokens\n",
           block == TS_MODEL_DECODER_BLOCK ? "dense" : "V4", (long long)pool, (long long)(full * block),
           (long long)s.kv_bytes / 1024, (long long)r.kv_bytes / 1024, (long long)s.preemptions);
out:
    ts_model_engine_free(small);
    ts_model_engine_free(big);
}

static void test_pool_budget(const ts_model_weights *w, ts_backend *be) {
    char err[256] = "";
    int slots = 0;
    int64_t pool = 0;
    size_t one = 0;
    ts_status st = ts_model_engine_fit(w, be, 1 << 30, MAX_LEN, 16, -1, &slots, &pool, &one, err, sizeof err);
    CHECK(st == TS_OK && slots == 16 && one > 0, "a large budget: %d slots, %zu bytes per sequence: %s", slots, one, err);
    if (one == 0) return;
    size_t block = one / 3; /* 48 positions = 3 blocks */
    st = ts_model_engine_fit(w, be, 10 * block + block / 2, MAX_LEN, 16, -1, &slots, &pool, NULL, err, sizeof err);
    CHECK(st == TS_OK && pool == 10 * TS_MODEL_DECODER_BLOCK && slots == 10,
          "10.5 blocks' worth: a pool of %lld positions, %d slots", (long long)pool, slots);
    st = ts_model_engine_fit(w, be, one - 1, MAX_LEN, 16, -1, &slots, &pool, NULL, err, sizeof err);
    CHECK(st == TS_ERR_RANGE, "a budget below one sequence: %s", ts_status_name(st));
    ts_model_engine *e = pooled_engine(w, be, 2, 2 * TS_MODEL_DECODER_BLOCK, MAX_LEN);
    if (!e) return;
    ts_engine eng;
    ts_model_engine_table(e, &eng);
    collector fits, too_big;
    collector_init(&fits);
    collector_init(&too_big);
    int32_t ids[MAX_LEN];
    for (int i = 0; i < MAX_LEN; i++) ids[i] = TS_BYTE_OFFSET + 'a' + i % 26;
    ts_gen_request ok = request(1, ids, 24, 8, &fits), big = request(2, ids, 30, 8, &too_big);
    CHECK(eng.submit(eng.self, &big) == TS_ERR_RANGE, "38 positions (max_len %d) in a pool of 32 are refused", MAX_LEN);
    CHECK(eng.submit(eng.self, &ok) == TS_OK, "32 positions in a pool of 32");
    wait_done(&fits);
    CHECK(fits.end == TS_GEN_LENGTH || fits.end == TS_GEN_STOP_TOKEN, "a request filling the pool: end %d", (int)fits.end);
    ts_model_engine_free(e);
}

static void test_dense_pool(void) {
    ts_model_weights *w = dense_model();
    CHECK(w != NULL, "dense model");
    if (!w) return;
    ts_backend *be, *oracle_be;
    ts_backend_cpu_new(2, &be);
    ts_backend_cpu_new(1, &oracle_be);
    char err[256] = "";
    ts_model_completer *cp = NULL;
    CHECK(ts_model_completer_new(w, oracle_be, 1, MAX_LEN, &cp, err, sizeof err) == TS_OK, "completer: %s", err);
    if (cp) {
        test_shared_prefix(w, be, cp);
        test_shared_passes(w, be, cp);
        test_small_pool(w, be, cp, 4 * TS_MODEL_DECODER_BLOCK, TS_MODEL_DECODER_BLOCK);
        test_pool_budget(w, be);
    }
    ts_model_completer_free(cp);
    ts_backend_free(be);
    ts_backend_free(oracle_be);
    ts_model_weights_free(w);
}

/* 6. Prompts of `len` byte tokens cycling through `alphabet`, so each request continues its own. */
static size_t long_prompt(const ts_engine *eng, const char *alphabet, size_t len, int32_t *out) {
    char text[256];
    size_t n = strlen(alphabet);
    for (size_t i = 0; i + 1 < len && i < sizeof text - 1; i++) text[i] = alphabet[i % n];
    text[len - 1 < sizeof text - 1 ? len - 1 : sizeof text - 1] = '\0';
    return tokenize(eng, text, true, out);
}

/* spec_pool: the speculative engine's pool (0: the full one). */
static void test_speculative(const ts_model_weights *w, ts_backend *be, int64_t spec_pool) {
    enum { LEN = 192, N = 4, NEW = 60 };
    ts_model_engine_options o = ts_model_engine_defaults();
    o.slots = 3;
    o.max_len = LEN;
    o.prefill_chunk = 24;
    ts_model_engine *plain = NULL, *spec = NULL;
    char err[256] = "";
    CHECK(ts_model_engine_new(w, NULL, be, &o, &plain, err, sizeof err) == TS_OK, "plain engine: %s", err);
    o.speculative = true;
    o.pool_positions = spec_pool;
    CHECK(ts_model_engine_new(w, NULL, be, &o, &spec, err, sizeof err) == TS_OK, "speculative engine: %s", err);
    if (!plain || !spec) goto out;
    ts_engine eng[2];
    ts_model_engine_table(plain, &eng[0]);
    ts_model_engine_table(spec, &eng[1]);
    /* 0 alone; 1..3 together (long prompts: several chunks); 3 again, its reply and more (a
     * prefix turn) */
    static int32_t prompts[N + 1][LEN];
    size_t lens[N + 1];
    lens[0] = long_prompt(&eng[0], "rev abc=", 9, prompts[0]);
    lens[1] = long_prompt(&eng[0], "k1:red k2:blue ", 70, prompts[1]);
    lens[2] = long_prompt(&eng[0], "copy hello world ", 50, prompts[2]);
    lens[3] = long_prompt(&eng[0], "sort zyxwvu ", 30, prompts[3]);
    collector col[2][N + 1];
    for (int k = 0; k < 2; k++) {
        collector_init(&col[k][0]);
        ts_gen_request r = request(1, prompts[0], lens[0], NEW, &col[k][0]);
        CHECK(eng[k].submit(eng[k].self, &r) == TS_OK, "submit alone");
        wait_done(&col[k][0]);
        for (int i = 1; i < N; i++) {
            collector_init(&col[k][i]);
            r = request((uint64_t)i + 1, prompts[i], lens[i], NEW, &col[k][i]);
            CHECK(eng[k].submit(eng[k].self, &r) == TS_OK, "submit %d", i);
        }
        for (int i = 1; i < N; i++) wait_done(&col[k][i]);
        if (k == 0) { /* the next turn: request 3's prompt, its reply, more text */
            memcpy(prompts[N], prompts[3], lens[3] * sizeof(int32_t));
            memcpy(prompts[N] + lens[3], col[0][3].tokens, (size_t)col[0][3].n * sizeof(int32_t));
            lens[N] = lens[3] + (size_t)col[0][3].n;
            lens[N] += tokenize(&eng[0], " again=", false, prompts[N] + lens[N]);
        }
        collector_init(&col[k][N]);
        r = request(N + 1, prompts[N], lens[N], 24, &col[k][N]);
        CHECK(eng[k].submit(eng[k].self, &r) == TS_OK, "submit the next turn");
        wait_done(&col[k][N]);
    }
    int same = 0, generated = 0;
    for (int i = 0; i <= N; i++) {
        bool ok = col[0][i].n == col[1][i].n && col[0][i].end == col[1][i].end &&
                  memcmp(col[0][i].tokens, col[1][i].tokens, (size_t)col[0][i].n * sizeof(int32_t)) == 0;
        CHECK(ok, "request %d: %d tokens (end %d) with speculation, %d (end %d) without, or different ones", i,
              col[1][i].n, (int)col[1][i].end, col[0][i].n, (int)col[0][i].end);
        same += ok;
        generated += col[0][i].n;
    }
    ts_engine_stats s0 = stats(&eng[0]), s1 = stats(&eng[1]);
    CHECK(s1.spec_drafted > 0 && s1.spec_accepted <= s1.spec_drafted && s0.spec_drafted == 0,
          "drafts: %lld made, %lld accepted; the plain engine %lld", (long long)s1.spec_drafted,
          (long long)s1.spec_accepted, (long long)s0.spec_drafted);
    CHECK(s1.prefix_cache_hits > 0, "the next turn reused no prefix");
    CHECK(spec_pool == 0 || s1.preemptions > 0, "a pool of %lld positions: no preemption", (long long)spec_pool);
    printf("  speculative%s: %d of %d requests (%d tokens) as without it; %lld drafts, %lld accepted, %lld preempted\n",
           spec_pool ? " on a small pool" : "", same, N + 1, generated, (long long)s1.spec_drafted,
           (long long)s1.spec_accepted, (long long)s1.preemptions);
out:
    ts_model_engine_free(plain);
    ts_model_engine_free(spec);
}

/* ---------------------------------------------------------------- 8. V4 prefix checkpoints */

enum { CK_LEN = 160, CK_NEW = 16, CK_PREFIX = 70, CK_N = 8 };

/* Shared-prefix request i: CK_PREFIX tokens (BOS + 69 bytes: two blocks of 32 and 6 more) alike,
 * then 21 bytes of its own whose first differs from every other's - so a cache holding one
 * prompt is always more than the V4 rewind bound (16) past the shared part. Request 4 is a long
 * prompt of its own (140 tokens: with its output the whole pool of test_checkpoint_eviction). */
static size_t shared_prompt(const ts_engine *eng, int i, int32_t *out) {
    static const char *own[CK_N] = {"k1:red k2:blue k1?=..", "copy hello world=....", "rev abcdefghij=......",
                                    "sort dcbaxyzwv=......", "", "12+34+56+78=.........",
                                    "the quick brown fox=.", "lorem ipsum dolor=..."};
    if (i == 4) return long_prompt(eng, "zyxwvu tsrq ", 140, out);
    size_t n = long_prompt(eng, "sys: be terse. ", CK_PREFIX, out);
    return n + tokenize(eng, own[i], false, out + n);
}

/* Requests from..to of the prompts into col: one after another, or all at once (together);
 * greedy, or sampled with seed 11 + i. */
static void run_set(const ts_engine *eng, int32_t prompts[][CK_LEN], const size_t *lens, int from, int to, bool sampled,
                    bool together, collector *col) {
    for (int i = from; i < to; i++) {
        collector_init(&col[i]);
        ts_gen_request r = request(200 + (uint64_t)i, prompts[i], lens[i], CK_NEW, &col[i]);
        if (sampled) {
            r.sampling.temperature = 0.8f;
            r.sampling.seed = 11 + (uint64_t)i;
        }
        CHECK(eng->submit(eng->self, &r) == TS_OK, "submit shared-prefix request %d", i);
        if (!together) wait_done(&col[i]);
    }
    for (int i = from; i < to; i++) wait_done(&col[i]);
}

static bool same_output(const collector *a, const collector *b) {
    return a->n == b->n && a->end == b->end && !memcmp(a->tokens, b->tokens, (size_t)a->n * sizeof(int32_t));
}

/* Requests 0..3 one after another on engines with checkpoints, without (options.checkpoints 0)
 * and without a prefix cache: the first reuses nothing; the second finds the first's cache too
 * far past the shared 70 tokens to rewind, so it checkpoints at 64; the third and fourth fork
 * the checkpoint (64 tokens reused each, counted exactly); without checkpoints nothing is ever
 * reused. Outputs equal the engine's without a prefix cache, greedy and then with seeds (the
 * checkpoint serving all four); greedy, also with speculative decoding and checkpoints (the
 * MTP block's state goes with the checkpoint). */
static void test_checkpoint_reuse(const ts_model_weights *w, ts_backend *be) {
    ts_model_engine *e[4] = {engine_with(w, be, 2, CK_LEN, 0, 8, 16, true, -1), engine_with(w, be, 2, CK_LEN, 0, 8, 16, true, 0),
                             engine_with(w, be, 2, CK_LEN, 0, 8, 16, false, -1), NULL};
    ts_model_engine_options o = ts_model_engine_defaults();
    o.slots = 2;
    o.max_len = CK_LEN;
    o.prefill_chunk = 16;
    o.speculative = true;
    char err[256] = "";
    CHECK(ts_model_engine_new(w, NULL, be, &o, &e[3], err, sizeof err) == TS_OK, "speculative engine: %s", err);
    if (!e[0] || !e[1] || !e[2] || !e[3]) goto out;
    ts_engine eng[4];
    for (int k = 0; k < 4; k++) ts_model_engine_table(e[k], &eng[k]);
    int32_t prompts[4][CK_LEN];
    size_t lens[4];
    int64_t total = 0;
    for (int i = 0; i < 4; i++) {
        lens[i] = shared_prompt(&eng[0], i, prompts[i]);
        total += (int64_t)lens[i];
        CHECK(lens[i] == CK_PREFIX + 21, "shared-prefix prompt %d: %zu tokens", i, lens[i]);
    }
    collector col[4][4];
    for (int sampled = 0; sampled < 2; sampled++) {
        ts_engine_stats before = stats(&eng[0]);
        for (int k = 0; k < 4 - sampled; k++) run_set(&eng[k], prompts, lens, 0, 4, sampled, false, col[k]);
        for (int i = 0; i < 4; i++)
            CHECK(same_output(&col[0][i], &col[2][i]) && same_output(&col[1][i], &col[2][i]) &&
                      (sampled || same_output(&col[3][i], &col[2][i])),
                  "%s shared-prefix request %d: with checkpoints (%d tokens), without (%d), without a prefix cache (%d), "
                  "speculative (%d) differ", sampled ? "sampled" : "greedy", i, col[0][i].n, col[1][i].n, col[2][i].n,
                  col[3][i].n);
        if (!sampled) {
            ts_engine_stats sp = stats(&eng[3]);
            CHECK(sp.prefix_reused_tokens == 2 * 64 && sp.prefix_checkpoints == 1,
                  "speculative: %lld tokens reused, %lld checkpoints", (long long)sp.prefix_reused_tokens,
                  (long long)sp.prefix_checkpoints);
        }
        ts_engine_stats s = stats(&eng[0]);
        int64_t reused = s.prefix_reused_tokens - before.prefix_reused_tokens;
        if (!sampled)
            CHECK(s.prefix_cache_hits == 2 && reused == 2 * 64 && s.prefix_checkpoints == 1 &&
                      s.prefill_tokens + reused == total,
                  "4 prompts sharing 70 tokens: %lld hits, %lld reused, %lld prefilled of %lld, %lld checkpoints",
                  (long long)s.prefix_cache_hits, (long long)reused, (long long)s.prefill_tokens, (long long)total,
                  (long long)s.prefix_checkpoints);
        else
            CHECK(s.prefix_cache_hits - before.prefix_cache_hits == 4 && reused >= 4 * 64,
                  "the checkpoint again: %lld hits, %lld reused", (long long)(s.prefix_cache_hits - before.prefix_cache_hits),
                  (long long)reused);
    }
    ts_engine_stats off = stats(&eng[1]);
    CHECK(off.prefix_reused_tokens == 0 && off.prefix_checkpoints == 0,
          "V4 without checkpoints: %lld tokens reused, %lld checkpoints", (long long)off.prefix_reused_tokens,
          (long long)off.prefix_checkpoints);
    printf("  V4 checkpoints: 4 prompts sharing 70 tokens, one after another: the 3rd and 4th reuse 64 (none without "
           "checkpoints); greedy and seeded outputs as without a prefix cache\n");
out:
    for (int k = 0; k < 4; k++) ts_model_engine_free(e[k]);
}

/* A checkpoint taken at admission: request 0 is the 64 shared tokens and one more, answered with
 * a single token, so its cache (65 tokens) rewinds to 64 for request 1, which starts there and
 * keeps that state before it moves on; request 2 then finds only the checkpoint at 64 (64 tokens
 * reused by each of 1 and 2). Outputs equal the engine's without a prefix cache. */
static void test_checkpoint_at_admission(const ts_model_weights *w, ts_backend *be) {
    ts_model_engine *ck = engine_with(w, be, 2, CK_LEN, 0, 8, 16, true, -1),
                    *plain = engine_with(w, be, 2, CK_LEN, 0, 8, 16, false, -1);
    if (!ck || !plain) goto out;
    ts_engine eng, ref;
    ts_model_engine_table(ck, &eng);
    ts_model_engine_table(plain, &ref);
    const char *own[3] = {"k", "copy hello world=....", "rev abcdefghij=......"};
    int32_t prompts[3][CK_LEN];
    size_t lens[3];
    for (int i = 0; i < 3; i++) {
        lens[i] = long_prompt(&eng, "sys: be terse. ", 64, prompts[i]);
        lens[i] += tokenize(&eng, own[i], false, prompts[i] + lens[i]);
    }
    collector got[3], want[3];
    for (int i = 0; i < 3; i++) {
        collector_init(&got[i]);
        collector_init(&want[i]);
        ts_gen_request r = request(300 + (uint64_t)i, prompts[i], lens[i], i == 0 ? 1 : CK_NEW, &got[i]);
        CHECK(eng.submit(eng.self, &r) == TS_OK, "submit %d", i);
        wait_done(&got[i]);
        r.sink.user = &want[i];
        CHECK(ref.submit(ref.self, &r) == TS_OK, "submit %d without a prefix cache", i);
        wait_done(&want[i]);
        CHECK(same_output(&got[i], &want[i]), "request %d: %d tokens with checkpoints, %d without a prefix cache, or others",
              i, got[i].n, want[i].n);
    }
    ts_engine_stats s = stats(&eng);
    CHECK(lens[0] == 65 && s.prefix_cache_hits == 2 && s.prefix_reused_tokens == 2 * 64 && s.prefix_checkpoints == 1,
          "a checkpoint at admission: %lld hits, %lld tokens reused, %lld checkpoints", (long long)s.prefix_cache_hits,
          (long long)s.prefix_reused_tokens, (long long)s.prefix_checkpoints);
out:
    ts_model_engine_free(ck);
    ts_model_engine_free(plain);
}

/* A pool of 5 blocks (160 positions, 2 slots): requests 0..3 one after another (the 3rd and 4th
 * fork the checkpoint; the running ones evict the idle caches, not the more recently used
 * checkpoint), then request 4, whose prompt needs the whole pool (the checkpoint is evicted),
 * then 5..7 at once, sampled, sharing the prefix (forks of a running prefill, preemptions).
 * Every output equals that of the full pool without a prefix cache. */
static void test_checkpoint_eviction(const ts_model_weights *w, ts_backend *be) {
    ts_model_engine *small = engine_with(w, be, 2, CK_LEN, 5 * V4_BLOCK, 8, 16, true, -1),
                    *plain = engine_with(w, be, 2, CK_LEN, 0, 8, 16, false, -1);
    if (!small || !plain) goto out;
    ts_engine eng, ref;
    ts_model_engine_table(small, &eng);
    ts_model_engine_table(plain, &ref);
    int32_t prompts[CK_N][CK_LEN];
    size_t lens[CK_N];
    for (int i = 0; i < CK_N; i++) lens[i] = shared_prompt(&eng, i, prompts[i]);
    collector got[CK_N], want[CK_N];
    run_set(&eng, prompts, lens, 0, 4, false, false, got);
    ts_engine_stats s1 = stats(&eng);
    run_set(&eng, prompts, lens, 4, 5, false, false, got);
    ts_engine_stats s2 = stats(&eng);
    run_set(&eng, prompts, lens, 5, CK_N, true, true, got);
    run_set(&ref, prompts, lens, 0, 5, false, false, want);
    run_set(&ref, prompts, lens, 5, CK_N, true, true, want);
    for (int i = 0; i < CK_N; i++)
        CHECK(same_output(&got[i], &want[i]), "request %d on a pool of 5 blocks with checkpoints: %d tokens (end %d), "
              "without a prefix cache %d (end %d), or others", i, got[i].n, (int)got[i].end, want[i].n, (int)want[i].end);
    CHECK(s1.prefix_reused_tokens == 2 * 64 && s1.prefix_checkpoints == 1 && s2.prefix_checkpoints == 0,
          "a pool of 5 blocks: %lld tokens reused by requests 0..3, %lld checkpoints; after the long prompt %lld",
          (long long)s1.prefix_reused_tokens, (long long)s1.prefix_checkpoints, (long long)s2.prefix_checkpoints);
    ts_engine_stats s = stats(&eng);
    printf("  V4 checkpoints on a pool of 5 blocks: reused while they fit, evicted for a long prompt, %lld preemptions; "
           "outputs as without a prefix cache\n", (long long)s.preemptions);
out:
    ts_model_engine_free(small);
    ts_model_engine_free(plain);
}

int main(void) {
    test_dense_pool();
    ts_model_weights *w = small_model();
    CHECK(w != NULL, "model");
    if (!w) return check_summary("engine");
    ts_backend *be, *oracle_be;
    ts_backend_cpu_new(2, &be);
    ts_backend_cpu_new(1, &oracle_be);
    char err[256] = "";
    ts_model_completer *cp = NULL;
    CHECK(ts_model_completer_new(w, oracle_be, 1, MAX_LEN, &cp, err, sizeof err) == TS_OK, "completer: %s", err);
    if (cp) {
        test_chunked_prefill(w, be, cp);
        test_sampling_cancel_limits(w, be);
        test_prefix_reuse(w, be, oracle_be, cp);
        test_budget(w, be);
        test_small_pool(w, be, cp, 3 * V4_BLOCK, V4_BLOCK);
        test_speculative(w, be, 0);
        test_speculative(w, be, 6 * V4_BLOCK);
        test_checkpoint_reuse(w, be);
        test_checkpoint_at_admission(w, be);
        test_checkpoint_eviction(w, be);
    }
    ts_model_completer_free(cp);
    ts_backend_free(be);
    ts_backend_free(oracle_be);
    ts_model_weights_free(w);
    return check_summary("engine");
}
