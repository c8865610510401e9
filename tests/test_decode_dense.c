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
 *    equals argmax over full passes of the growing text. */
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
        for (int64_t i = 0; i < LENS[k]; i++) o->ids[k][i] = (int32_t)(3 + (i * (31 + 6 * k) + 7 * k) % 250);
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
 * case: passes with padding in front and one logit row). */
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

int main(void) {
    test_model(TS_F32, 1e-4);
    test_model(TS_F64, 1e-6);
    test_truncate_range();
    test_completer();
    return check_summary("test_decode_dense");
}
