/* test_decode_dense.c - incremental decoding of the dense baseline (src/model/decode_dense.c)
 * against the full forward pass of each sequence (the oracle: one graph over the whole text).
 * 1. dense-tiny, f32, optimized backend (weights scaled up so attention is far from uniform):
 *    three sequences of different lengths in three of four slots, starting at different steps,
 *    decoded by steps (row buckets 1..4, index lists past the first bucket of 64); the same
 *    texts fed through extend in uneven chunks (1, 5, 64, 70 tokens: one and several passes,
 *    logits of every token, of the last 3, of the last one) - every position's logits match
 *    within 1e-4 of the logit scale.
 * 2. The same in f64 on the reference backend, within 1e-6 (the f32 hand-out).
 * 3. truncate then re-feed gives bit-identical logits to a fresh run; TS_ERR_RANGE at max_len
 *    (step and extend, nothing appended); state_bytes; the completer's greedy continuation
 *    equals argmax over full passes of the growing text.
 * 4. The block pool (the sequences share prefixes: 2 = 0's first 50 tokens, 1 = 0's first 30):
 *    a pool of 4 blocks - exhaustion returns TS_ERR_OOM from step and extend with every length
 *    as it was and the caches intact (the next logits still match), a fork takes no block, the
 *    first write into its shared partial block needs one (copy on write), truncating gives
 *    blocks back; then 400 random operations on 4 slots over a pool of 8 blocks (less than
 *    the texts need together) - steps of random slot subsets, extends of random chunks,
 *    batches (ts_model_decoder_batch: random slot subsets in random order mixing single tokens
 *    and chunks, 0..n logit rows each), truncates, resets, forks to random lengths that
 *    continue as any sequence sharing that prefix (fork then diverge) - every logit row
 *    matches the full pass of its slot's sequence, exhaustion leaves the lengths unchanged
 *    (and the caches: later rows still match), a batch of at most a token per slot + 64 runs
 *    in one pass, and emptying every slot frees every block (no reference leaks). The same
 *    with room for everything and whole texts per batch: batches split over several passes,
 *    a sequence continuing in the next. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "model_fixture.h"
#include "tessera/backend.h"
#include "tessera/model.h"

enum { N_SEQ = 3, MAX_LEN = 140 };
static const int64_t LENS[N_SEQ] = {100, 37, 71}, STARTS[N_SEQ] = {0, 3, 20};
static const int64_t SHARED[N_SEQ] = {0, 30, 50}; /* sequence k > 0 starts with 0's first SHARED[k] */

static ts_model_weights *tiny_weights(ts_dtype dt) {
    ts_v4_config c;
    ts_v4_preset("dense-tiny", &c);
    char err[256] = "";
    ts_model_weights *w = NULL;
    ts_status s = ts_model_weights_new(&c, dt, &w, err, sizeof err);
    if (s == TS_OK) s = ts_model_weights_init(w, 5, err, sizeof err);
    CHECK(s == TS_OK, "weights: %s", err);
    if (s != TS_OK) return NULL;
    for (int i = 0; i < ts_model_weights_count(w); i++) { /* sharper attention than the 0.02 init */
        const ts_model_tensor *t = ts_model_weights_info(w, i);
        if (t->ndim != 2) continue;
        for (int64_t j = 0; j < ts_model_tensor_numel(t); j++) {
            if (dt == TS_F64) ((double *)ts_model_weights_data(w, i))[j] *= 6;
            else ((float *)ts_model_weights_data(w, i))[j] *= 6;
        }
    }
    return w;
}

typedef struct {
    int32_t ids[N_SEQ][MAX_LEN];
    double *full[N_SEQ];
    double scale; /* the largest |logit| of the full passes */
    int64_t V;
} oracle;

static void oracle_init(oracle *o, ts_model_weights *w, ts_backend *be) {
    o->V = ts_model_weights_config(w)->vocab_size;
    o->scale = 0;
    for (int k = 0; k < N_SEQ; k++) {
        for (int64_t i = 0; i < LENS[k]; i++)
            o->ids[k][i] = i < SHARED[k] ? o->ids[0][i] : (int32_t)(3 + (i * (31 + 6 * k) + 7 * k) % 250);
        o->full[k] = full_logits(w, be, o->ids[k], LENS[k]);
        for (int64_t i = 0; o->full[k] && i < LENS[k] * o->V; i++) o->scale = fmax(o->scale, fabs(o->full[k][i]));
    }
}

static void oracle_free(oracle *o) {
    for (int k = 0; k < N_SEQ; k++) free(o->full[k]);
}

/* Worst |got - full| over n rows of logits of sequence k from position p0. */
static double diff_rows(const oracle *o, int k, int64_t p0, const float *got, int64_t n) {
    double worst = 0;
    for (int64_t r = 0; r < n; r++)
        for (int64_t v = 0; v < o->V; v++)
            worst = fmax(worst, fabs(got[r * o->V + v] - o->full[k][(p0 + r) * o->V + v]));
    return worst;
}

static ts_model_decoder *new_decoder(ts_model_weights *w, ts_backend *be, int slots, int64_t max_len) {
    char err[256] = "";
    ts_model_decoder *d = NULL;
    ts_status s = ts_model_decoder_new(w, be, slots, max_len, &d, err, sizeof err);
    CHECK(s == TS_OK, "decoder: %s", err);
    return d;
}

/* The sequences step by step in slots 0, 2, 3 of four (slot 1 stays idle). */
static double by_steps(const oracle *o, ts_model_weights *w, ts_backend *be) {
    static const int SLOT[N_SEQ] = {0, 2, 3};
    ts_model_decoder *d = new_decoder(w, be, 4, MAX_LEN);
    if (!d) return INFINITY;
    float *logits = malloc((size_t)(N_SEQ * o->V) * sizeof *logits);
    double worst = 0;
    for (int64_t step = 0; step < MAX_LEN; step++) {
        int slots[N_SEQ], seq[N_SEQ], n = 0;
        int32_t ids[N_SEQ];
        for (int k = N_SEQ - 1; k >= 0; k--) { /* rows out of slot order */
            int64_t p = step - STARTS[k];
            if (p < 0 || p >= LENS[k]) continue;
            seq[n] = k;
            slots[n] = SLOT[k];
            ids[n++] = o->ids[k][p];
        }
        if (n == 0) continue;
        CHECK_OK(ts_model_decoder_step(d, n, slots, ids, logits), NULL);
        for (int i = 0; i < n; i++)
            worst = fmax(worst, diff_rows(o, seq[i], step - STARTS[seq[i]], logits + i * o->V, 1));
    }
    free(logits);
    ts_model_decoder_free(d);
    return worst;
}

/* Each sequence through extend in chunks of 1, 5, 64, then the rest, all rows' logits; then
 * in one call keeping the last 3 rows, and in one call keeping the last row (the prompt's
 * case: padded passes that gather one logit row). */
static double by_chunks(const oracle *o, ts_model_weights *w, ts_backend *be) {
    static const int64_t CHUNKS[] = {1, 5, 64, MAX_LEN};
    ts_model_decoder *d = new_decoder(w, be, 2, MAX_LEN);
    if (!d) return INFINITY;
    float *logits = malloc((size_t)(MAX_LEN * o->V) * sizeof *logits);
    double worst = 0;
    for (int k = 0; k < N_SEQ; k++) {
        int slot = k % 2;
        ts_model_decoder_reset(d, slot);
        for (int64_t at = 0, c = 0; at < LENS[k]; c++) {
            int64_t n = CHUNKS[c] < LENS[k] - at ? CHUNKS[c] : LENS[k] - at;
            CHECK_OK(ts_model_decoder_extend(d, slot, o->ids[k] + at, n, logits, n), NULL);
            worst = fmax(worst, diff_rows(o, k, at, logits, n));
            at += n;
        }
        CHECK(ts_model_decoder_length(d, slot) == LENS[k], "extend: length %lld",
              (long long)ts_model_decoder_length(d, slot));
        ts_model_decoder_reset(d, slot);
        CHECK_OK(ts_model_decoder_extend(d, slot, o->ids[k], LENS[k], logits, 3), NULL);
        worst = fmax(worst, diff_rows(o, k, LENS[k] - 3, logits, 3));
        ts_model_decoder_reset(d, slot);
        CHECK_OK(ts_model_decoder_extend(d, slot, o->ids[k], LENS[k], logits, 1), NULL);
        worst = fmax(worst, diff_rows(o, k, LENS[k] - 1, logits, 1));
    }
    free(logits);
    ts_model_decoder_free(d);
    return worst;
}

static void test_model(ts_dtype dt, double tol) {
    ts_model_weights *w = tiny_weights(dt);
    if (!w) return;
    ts_backend *be = NULL;
    if (dt == TS_F64) ts_backend_cpu_ref_new(2, &be);
    else ts_backend_cpu_new(2, &be);
    oracle o;
    oracle_init(&o, w, be);
    double steps = by_steps(&o, w, be) / o.scale, chunks = by_chunks(&o, w, be) / o.scale;
    const char *name = dt == TS_F64 ? "f64" : "f32";
    CHECK(steps <= tol, "%s steps: logits differ from the full pass by %.3e (relative)", name, steps);
    CHECK(chunks <= tol, "%s extend: logits differ from the full pass by %.3e (relative)", name, chunks);
    printf("  %s: |logits - full pass| / %.1f: steps %.2e, extend chunks %.2e\n", name, o.scale, steps, chunks);
    oracle_free(&o);
    ts_backend_free(be);
    ts_model_weights_free(w);
}

/* Decodes ids[0..n) into a fresh decoder's slot 0 (prefix by extend, the rest by steps). */
static void fresh_run(ts_model_decoder *d, const int32_t *ids, int64_t n, int64_t prefix, float *logits, int64_t V) {
    int slot = 0;
    ts_model_decoder_reset(d, 0);
    CHECK_OK(ts_model_decoder_extend(d, 0, ids, prefix, logits, 1), NULL);
    for (int64_t i = prefix; i < n; i++)
        CHECK_OK(ts_model_decoder_step(d, 1, &slot, &ids[i], logits + (i - prefix) * V), NULL);
}

static void test_truncate_range(void) {
    ts_model_weights *w = tiny_weights(TS_F32);
    if (!w) return;
    const ts_v4_config *c = ts_model_weights_config(w);
    int64_t V = c->vocab_size;
    ts_backend *be = NULL;
    ts_backend_cpu_new(2, &be);
    enum { L = 48 };
    int32_t a[L], b[L];
    for (int i = 0; i < L; i++) {
        a[i] = 3 + (i * 13) % 200;
        b[i] = i < 20 ? a[i] : 3 + (i * 7 + 1) % 200;
    }
    ts_model_decoder *d = new_decoder(w, be, 1, L), *fresh = new_decoder(w, be, 1, L);
    float *got = malloc((size_t)(L * V) * sizeof *got), *want = malloc((size_t)(L * V) * sizeof *want);
    if (!d || !fresh || !got || !want) return;
    int slot = 0;
    fresh_run(d, a, L, 30, got, V); /* a's 48 tokens, then back to b's shared first 20 */
    CHECK_OK(ts_model_decoder_truncate(d, 0, 20), NULL);
    CHECK(ts_model_decoder_length(d, 0) == 20, "truncate: length %lld", (long long)ts_model_decoder_length(d, 0));
    for (int i = 20; i < L; i++) CHECK_OK(ts_model_decoder_step(d, 1, &slot, &b[i], got + (i - 20) * V), NULL);
    fresh_run(fresh, b, L, 20, want, V);
    CHECK(memcmp(got, want, (size_t)((L - 20) * V) * sizeof *got) == 0, "truncate + re-feed differs from a fresh run");

    /* full: a step and an extend past max_len are refused, nothing appended */
    CHECK(ts_model_decoder_step(d, 1, &slot, &a[0], got) == TS_ERR_RANGE, "step at max_len");
    CHECK_OK(ts_model_decoder_truncate(d, 0, L - 2), NULL);
    CHECK(ts_model_decoder_extend(d, 0, a, 3, got, 1) == TS_ERR_RANGE && ts_model_decoder_length(d, 0) == L - 2,
          "extend past max_len");
    CHECK_OK(ts_model_decoder_extend(d, 0, a, 2, got, 2), NULL);
    size_t want_bytes = (size_t)(c->num_hidden_layers * L * c->num_attention_heads * 2 * c->head_dim) * sizeof(float);
    size_t bytes = ts_model_decoder_state_bytes(d);
    CHECK(bytes == want_bytes, "state bytes %zu, expected %zu", bytes, want_bytes);
    free(got);
    free(want);
    ts_model_decoder_free(d);
    ts_model_decoder_free(fresh);
    ts_backend_free(be);
    ts_model_weights_free(w);
}

/* The completer (the decoder underneath) continues greedily like argmax over full passes. */
static void test_completer(void) {
    ts_model_weights *w = tiny_weights(TS_F32);
    if (!w) return;
    ts_backend *be = NULL;
    ts_backend_cpu_new(2, &be);
    enum { NEW = 6, MAX = 40 };
    int32_t p0[] = {3, 50, 60, 70, 80}, p1[] = {9, 8, 7, 6, 5, 4, 100, 120, 140, 160, 180};
    const int32_t *prompts[2] = {p0, p1};
    int64_t lens[2] = {5, 11}, out_lens[2];
    int32_t out0[NEW], out1[NEW], *outs[2] = {out0, out1};
    char err[256] = "";
    ts_model_completer *c = NULL;
    CHECK(ts_model_completer_new(w, be, 2, MAX, &c, err, sizeof err) == TS_OK, "completer: %s", err);
    if (c) CHECK_OK(ts_model_complete(c, 2, prompts, lens, NEW, -1, 2, outs, out_lens), NULL);
    for (int r = 0; c && r < 2; r++) {
        int32_t seq[MAX];
        memcpy(seq, prompts[r], (size_t)lens[r] * sizeof(int32_t));
        int64_t n = lens[r];
        int same = out_lens[r] == NEW;
        for (int k = 0; k < NEW && same; k++) {
            int best = full_argmax(w, be, seq, n);
            same = outs[r][k] == best;
            seq[n++] = best;
        }
        CHECK(same, "row %d: the completer's greedy continuation differs from the full passes'", r);
    }
    ts_model_completer_free(c);
    ts_backend_free(be);
    ts_model_weights_free(w);
}

/* ---------------------------------------------------------------- the block pool */

static ts_model_decoder *new_pooled(ts_model_weights *w, ts_backend *be, int slots, int64_t pool) {
    char err[256] = "";
    ts_model_decoder *d = NULL;
    ts_status s = ts_model_decoder_new_pooled(w, be, slots, MAX_LEN, pool, &d, err, sizeof err);
    CHECK(s == TS_OK, "pooled decoder: %s", err);
    return d;
}

static int64_t free_blocks(const ts_model_decoder *d) {
    ts_model_decoder_pool p;
    ts_model_decoder_pool_info(d, &p);
    return p.free_blocks;
}

/* Appends ids[at..at+n) of sequence k to a slot (one token: a step), checking every row. */
static ts_status feed(const oracle *o, ts_model_decoder *d, int slot, int k, int64_t at, int64_t n, float *logits,
                      double *worst) {
    ts_status s = n == 1 ? ts_model_decoder_step(d, 1, &slot, &o->ids[k][at], logits)
                         : ts_model_decoder_extend(d, slot, o->ids[k] + at, n, logits, n);
    if (s == TS_OK) *worst = fmax(*worst, diff_rows(o, k, at, logits, n));
    return s;
}

static void test_pool_exhaustion(const oracle *o, ts_model_weights *w, ts_backend *be) {
    ts_model_decoder *d = new_pooled(w, be, 2, 64);
    float *logits = malloc((size_t)(MAX_LEN * o->V) * sizeof *logits);
    if (!d || !logits) return;
    ts_model_decoder_pool p;
    ts_model_decoder_pool_info(d, &p);
    CHECK(p.shared && p.block_positions == TS_MODEL_DECODER_BLOCK && p.blocks == 4 && p.free_blocks == 4,
          "a pool of 64 positions: %lld blocks of %lld, %lld free", (long long)p.blocks, (long long)p.block_positions,
          (long long)p.free_blocks);
    double worst = 0;
    int both[2] = {0, 1};
    int32_t two[2] = {o->ids[0][60], o->ids[1][0]};
    CHECK_OK(feed(o, d, 0, 0, 0, 60, logits, &worst), NULL);
    CHECK(free_blocks(d) == 0, "60 positions hold 4 blocks: %lld free", (long long)free_blocks(d));
    CHECK(feed(o, d, 1, 1, 0, 1, logits, &worst) == TS_ERR_OOM, "a step with no free block");
    CHECK(feed(o, d, 0, 0, 60, 5, logits, &worst) == TS_ERR_OOM, "an extend past the last block");
    CHECK(ts_model_decoder_step(d, 2, both, two, logits) == TS_ERR_OOM, "a step of both slots");
    CHECK(ts_model_decoder_length(d, 0) == 60 && ts_model_decoder_length(d, 1) == 0, "lengths after exhaustion: %lld %lld",
          (long long)ts_model_decoder_length(d, 0), (long long)ts_model_decoder_length(d, 1));
    CHECK_OK(feed(o, d, 0, 0, 60, 4, logits, &worst), NULL); /* inside the last block */
    CHECK_OK(ts_model_decoder_fork(d, 1, 0, 30), NULL);      /* sequence 1 shares 0's first 30 */
    CHECK(free_blocks(d) == 0 && ts_model_decoder_length(d, 1) == 30, "a fork takes no block");
    CHECK(feed(o, d, 1, 1, 30, 1, logits, &worst) == TS_ERR_OOM, "writing into a shared block needs a copy");
    CHECK_OK(ts_model_decoder_truncate(d, 0, 16), NULL); /* gives back 2 blocks; the second stays slot 1's */
    CHECK(free_blocks(d) == 2, "after truncating to one block: %lld free", (long long)free_blocks(d));
    for (int64_t i = 30; i < LENS[1]; i++) CHECK_OK(feed(o, d, 1, 1, i, 1, logits, &worst), NULL);
    for (int64_t i = 16; i < 32; i++) CHECK_OK(feed(o, d, 0, 0, i, 1, logits, &worst), NULL);
    CHECK(ts_model_decoder_fork(d, 1, 1, 3) == TS_ERR_INVALID_ARG && ts_model_decoder_fork(d, 1, 0, 33) == TS_ERR_RANGE,
          "fork: same slot, past the source's length");
    worst /= o->scale;
    CHECK(worst <= 1e-4, "pool exhaustion: logits differ from the full pass by %.3e (relative)", worst);
    ts_model_decoder_reset(d, 0);
    ts_model_decoder_reset(d, 1);
    CHECK(free_blocks(d) == 4, "every block back: %lld free", (long long)free_blocks(d));
    free(logits);
    ts_model_decoder_free(d);
}

static uint32_t next_rand(uint32_t *r) {
    *r = *r * 1664525u + 1013904223u;
    return *r >> 8;
}

typedef struct {
    int k;       /* the sequence it holds a prefix of */
    int64_t len; /* as far as the test knows */
} slot_seq;

typedef struct {
    const oracle *o;
    ts_model_decoder *d;
    slot_seq st[4];
    uint32_t rng;
    int64_t max_chunk; /* tokens per sequence of a batch */
    float *logits;
    double worst;
    int oom, forks, diverged, batches, multi_pass;
} random_run;

static bool lengths_as_known(const random_run *r) {
    bool same = true;
    for (int s = 0; s < 4; s++) same &= ts_model_decoder_length(r->d, s) == r->st[s].len;
    return same;
}

/* Exhaustion: checks nothing moved, then empties a random slot. */
static void on_oom(random_run *r) {
    CHECK(lengths_as_known(r), "TS_ERR_OOM changed a length");
    r->oom++;
    int s = (int)(next_rand(&r->rng) % 4);
    ts_model_decoder_reset(r->d, s);
    r->st[s].len = 0;
}

static void random_step(random_run *r) {
    int slots[4], n = 0;
    int32_t ids[4];
    uint32_t pick = next_rand(&r->rng);
    for (int s = 0; s < 4; s++)
        if (r->st[s].len < LENS[r->st[s].k] && (pick >> s & 1)) {
            slots[n] = s;
            ids[n++] = r->o->ids[r->st[s].k][r->st[s].len];
        }
    if (n == 0) return;
    ts_status st = ts_model_decoder_step(r->d, n, slots, ids, r->logits);
    if (st == TS_ERR_OOM) return on_oom(r);
    CHECK_OK(st, NULL);
    for (int i = 0; st == TS_OK && i < n; i++) {
        slot_seq *q = &r->st[slots[i]];
        r->worst = fmax(r->worst, diff_rows(r->o, q->k, q->len++, r->logits + i * r->o->V, 1));
    }
}

static void random_extend(random_run *r, int s) {
    slot_seq *q = &r->st[s];
    int64_t room = LENS[q->k] - q->len, m = room < 20 ? room : 20;
    if (m < 1) return;
    m = 1 + (int64_t)(next_rand(&r->rng) % (uint32_t)m);
    int64_t rows = 1 + (int64_t)(next_rand(&r->rng) % (uint32_t)m);
    ts_status st = ts_model_decoder_extend(r->d, s, r->o->ids[q->k] + q->len, m, r->logits, rows);
    if (st == TS_ERR_OOM) return on_oom(r);
    CHECK_OK(st, NULL);
    if (st == TS_OK) r->worst = fmax(r->worst, diff_rows(r->o, q->k, q->len + m - rows, r->logits, rows));
    q->len += m;
}

/* A batch of a random subset of the slots in a random order, each with a single token, a chunk
 * of 1..max_chunk or max_chunk tokens (as far as its text goes), keeping the logits of its last 0..n tokens; checks the rows, and that
 * a slot each plus a prompt budget of 64 run in one pass. */
static void random_batch(random_run *r) {
    ts_model_decoder_seq seqs[4];
    int n = 0;
    int64_t tokens = 0;
    uint32_t pick = next_rand(&r->rng), first = next_rand(&r->rng) % 4;
    for (uint32_t j = 0; j < 4; j++) {
        int s = (int)((first + j) % 4);
        slot_seq *q = &r->st[s];
        int64_t room = LENS[q->k] - q->len, most = room < r->max_chunk ? room : r->max_chunk;
        if (room < 1 || !(pick >> s & 1)) continue;
        uint32_t kind = next_rand(&r->rng) % 3;
        int64_t m = kind == 0 ? 1 : kind == 1 ? 1 + (int64_t)(next_rand(&r->rng) % (uint32_t)most) : most;
        int64_t rows = (int64_t)(next_rand(&r->rng) % (uint32_t)(m + 1));
        seqs[n++] = (ts_model_decoder_seq){s, r->o->ids[q->k] + q->len, m, rows};
        tokens += m;
    }
    if (n == 0) return;
    int64_t before = ts_model_decoder_passes(r->d);
    ts_status st = ts_model_decoder_batch(r->d, n, seqs, r->logits);
    if (st == TS_ERR_OOM) return on_oom(r);
    CHECK_OK(st, NULL);
    if (st != TS_OK) return;
    int64_t passes = ts_model_decoder_passes(r->d) - before;
    CHECK(passes >= 1 && (tokens > 4 + 64 || passes == 1), "a batch of %lld tokens took %lld passes", (long long)tokens,
          (long long)passes);
    r->batches++;
    r->multi_pass += passes > 1;
    const float *row = r->logits;
    for (int i = 0; i < n; i++) {
        slot_seq *q = &r->st[seqs[i].slot];
        r->worst = fmax(r->worst, diff_rows(r->o, q->k, q->len + seqs[i].n - seqs[i].logit_rows, row, seqs[i].logit_rows));
        row += seqs[i].logit_rows * r->o->V;
        q->len += seqs[i].n;
    }
}

/* dst gets src's first len tokens and goes on as any sequence sharing them. */
static void random_fork(random_run *r, int dst, int src) {
    if (dst == src || r->st[src].len == 0) return;
    int k = (int)(next_rand(&r->rng) % N_SEQ), ks = r->st[src].k;
    int64_t common = 0;
    while (common < r->st[src].len && common < LENS[k] && r->o->ids[k][common] == r->o->ids[ks][common]) common++;
    int64_t len = (int64_t)(next_rand(&r->rng) % (uint32_t)(common + 1));
    CHECK_OK(ts_model_decoder_fork(r->d, dst, src, len), NULL);
    r->st[dst] = (slot_seq){k, len};
    r->forks++;
    r->diverged += k != ks && len > 0;
}

/* 400 random operations on 4 slots over a pool of `pool` positions (0: room for all) with
 * batches of up to max_chunk tokens per sequence. */
static void test_pool_random(const oracle *o, ts_model_weights *w, ts_backend *be, int64_t pool, int64_t max_chunk) {
    random_run r = {.o = o, .d = new_pooled(w, be, 4, pool), .rng = 12345, .max_chunk = max_chunk};
    r.logits = malloc((size_t)(4 * MAX_LEN * o->V) * sizeof *r.logits);
    if (!r.d || !r.logits) return;
    ts_model_decoder_pool p;
    ts_model_decoder_pool_info(r.d, &p);
    for (int s = 0; s < 4; s++) r.st[s] = (slot_seq){s % N_SEQ, 0};
    for (int it = 0; it < 400; it++) {
        uint32_t op = next_rand(&r.rng) % 20;
        int a = (int)(next_rand(&r.rng) % 4), b = (int)(next_rand(&r.rng) % 4);
        if (op < 6) {
            random_step(&r);
        } else if (op < 9) {
            random_extend(&r, a);
        } else if (op < 14) {
            random_batch(&r);
        } else if (op == 14) {
            r.st[a].len = (int64_t)(next_rand(&r.rng) % (uint32_t)(r.st[a].len + 1));
            CHECK_OK(ts_model_decoder_truncate(r.d, a, r.st[a].len), NULL);
        } else if (op == 15 || r.st[a].len == LENS[r.st[a].k]) {
            ts_model_decoder_reset(r.d, a);
            r.st[a] = (slot_seq){(int)(next_rand(&r.rng) % N_SEQ), 0};
        } else {
            random_fork(&r, a, b);
        }
        CHECK(lengths_as_known(&r), "operation %d (%u): lengths differ", it, op);
    }
    for (int s = 0; s < 4; s++) ts_model_decoder_reset(r.d, s);
    CHECK(free_blocks(r.d) == p.blocks, "every slot empty: %lld of %lld blocks free", (long long)free_blocks(r.d),
          (long long)p.blocks);
    r.worst /= o->scale;
    CHECK(r.worst <= 1e-4, "random paged decoding: logits differ from the full pass by %.3e (relative)", r.worst);
    CHECK(r.diverged > 0 && r.batches > 20, "the random run met %d diverging forks, %d batches", r.diverged, r.batches);
    if (pool > 0) CHECK(r.oom > 0, "a pool of %lld positions never ran out", (long long)pool);
    else CHECK(r.oom == 0 && r.multi_pass > 0, "room for all: %d exhaustions, %d batches of several passes", r.oom,
               r.multi_pass);
    printf("  paged, 400 random operations on 4 slots / %lld blocks: %d exhaustions, %d forks (%d diverging), "
           "%d batches (%d of several passes), |logits - full pass| / scale %.2e\n", (long long)p.blocks, r.oom, r.forks,
           r.diverged, r.batches, r.multi_pass, r.worst);
    free(r.logits);
    ts_model_decoder_free(r.d);
}

static void test_pool(void) {
    ts_model_weights *w = tiny_weights(TS_F32);
    if (!w) return;
    ts_backend *be = NULL;
    ts_backend_cpu_new(2, &be);
    oracle o;
    oracle_init(&o, w, be);
    test_pool_exhaustion(&o, w, be);
    test_pool_random(&o, w, be, 128, 64);   /* 8 blocks, less than the texts need together */
    test_pool_random(&o, w, be, 0, MAX_LEN); /* batches past the largest pass */
    oracle_free(&o);
    ts_backend_free(be);
    ts_model_weights_free(w);
}

int main(void) {
    test_pool();
    test_model(TS_F32, 1e-4);
    test_model(TS_F64, 1e-6);
    test_truncate_range();
    test_completer();
    return check_summary("test_decode_dense");
}
