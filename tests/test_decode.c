/* test_decode.c - incremental decoding (src/model/decode.c) against the full forward pass.
 * 1. The V4 reference fixture (window-only, CSA with indexer, HCA; window 8, blocks of 4 and 8),
 *    f64: feeding the 46 tokens one at a time gives every position's logits of the full
 *    sequence (max abs difference <= 1e-6: the f64 logits are handed out as f32, whose rounding
 *    is ~1e-7 here), across 11 CSA and 5 HCA block completions.
 * 2. Two sequences in two slots at different positions in the same steps (the second starts 5
 *    tokens later; then one slot is reset and reused): each matches its own full forward pass.
 * 3. f32 on the optimized backend: the scaled-down tiny preset (more heads, top-16 indexer over
 *    longer sequences, MTP present but unused) matches within 1e-4. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "tessera/backend.h"
#include "tessera/io.h"
#include "tessera/model.h"

/* Full-forward logits [T, V] (as doubles) of one sequence. */
static double *full_logits(ts_model_weights *w, ts_backend *be, const int32_t *ids, int64_t T) {
    char err[256] = "";
    ts_model_graph *mg = NULL;
    ts_model_graph_options o = {.batch = 1, .seq = T};
    ts_status s = ts_model_graph_build(w, &o, &mg, err, sizeof err);
    if (s == TS_OK) s = ts_model_graph_alloc(mg, be, NULL, err, sizeof err);
    CHECK(s == TS_OK, "full graph: %s", err);
    if (s != TS_OK) return NULL;
    ts_tensor_write(mg->ids, ids, (size_t)T * sizeof(int32_t));
    CHECK_OK(ts_graph_compute(mg->graph), mg->graph);
    int64_t V = ts_model_weights_config(w)->vocab_size;
    double *out = malloc((size_t)(T * V) * sizeof *out);
    if (mg->logits->dtype == TS_F64) ts_tensor_read(mg->logits, out, (size_t)(T * V) * sizeof *out);
    else {
        float *f = malloc((size_t)(T * V) * sizeof *f);
        ts_tensor_read_f32(mg->logits, f, T * V);
        for (int64_t i = 0; i < T * V; i++) out[i] = f[i];
        free(f);
    }
    ts_model_graph_free(mg);
    return out;
}

/* Decodes seqs[k] (lengths lens[k]) in slots k, sequence k starting at step starts[k], and
 * returns the worst |decoded - full| over every position of every sequence. */
static double decode_vs_full(ts_model_weights *w, ts_backend *be, int n_seq, int32_t *const *seqs,
                             const int64_t *lens, const int64_t *starts, int64_t max_len) {
    char err[256] = "";
    ts_model_decoder *dec = NULL;
    ts_status s = ts_model_decoder_new(w, be, n_seq, max_len, &dec, err, sizeof err);
    CHECK(s == TS_OK, "decoder: %s", err);
    if (s != TS_OK) return INFINITY;
    int64_t V = ts_model_weights_config(w)->vocab_size;
    double *full[8];
    for (int k = 0; k < n_seq; k++) full[k] = full_logits(w, be, seqs[k], lens[k]);
    float *logits = malloc((size_t)(n_seq * V) * sizeof *logits);
    double worst = 0;
    int64_t last = 0;
    for (int k = 0; k < n_seq; k++) last = starts[k] + lens[k] > last ? starts[k] + lens[k] : last;
    for (int64_t step = 0; step < last; step++) {
        int slots[8], n = 0;
        int32_t ids[8];
        for (int k = 0; k < n_seq; k++) {
            int64_t p = step - starts[k];
            if (p < 0 || p >= lens[k]) continue;
            slots[n] = k;
            ids[n++] = seqs[k][p];
        }
        if (n == 0) continue;
        CHECK_OK(ts_model_decoder_step(dec, n, slots, ids, logits), NULL);
        for (int i = 0; i < n; i++) {
            int k = slots[i];
            int64_t p = ts_model_decoder_length(dec, k) - 1;
            for (int64_t v = 0; v < V; v++) worst = fmax(worst, fabs(logits[i * V + v] - full[k][p * V + v]));
        }
    }
    free(logits);
    for (int k = 0; k < n_seq; k++) free(full[k]);
    ts_model_decoder_free(dec);
    return worst;
}

static void test_completer(ts_model_weights *w, ts_backend *be, const int32_t *a, const int32_t *b);

static void test_fixture(void) {
    const char *slash = strrchr(__FILE__, '/');
    char dir[1024], exp_path[1024];
    snprintf(dir, sizeof dir, "%.*s/fixtures/v4/tiny-ref", (int)(slash - __FILE__), __FILE__);
    snprintf(exp_path, sizeof exp_path, "%.*s/fixtures/v4/expected.safetensors", (int)(slash - __FILE__), __FILE__);
    char err[512] = "";
    ts_model_weights *w = NULL;
    ts_status s = ts_model_load(dir, TS_F64, &w, err, sizeof err);
    CHECK(s == TS_OK, "load: %s", err);
    ts_st_file *ex = NULL;
    ts_io_error ioe;
    CHECK(ts_st_file_open(exp_path, &ex, &ioe) == TS_OK, "%s", ioe.message);
    if (s != TS_OK || !ex) return;
    const ts_st_tensor *t = ts_st_file_find(ex, "ids_b2");
    int32_t a[46], b[46];
    for (int i = 0; i < 46; i++) {
        a[i] = (int32_t)((const int64_t *)t->data)[i];
        b[i] = (int32_t)((const int64_t *)t->data)[46 + i];
    }
    ts_backend *be;
    ts_backend_cpu_ref_new(2, &be);
    int32_t *one[1] = {a};
    int64_t len1[1] = {46}, start1[1] = {0};
    double d1 = decode_vs_full(w, be, 1, one, len1, start1, 48);
    CHECK(d1 <= 1e-6, "fixture: decoded logits differ from the full pass by %.3e", d1);
    printf("  fixture (f64): 46 tokens decoded one by one, max |logit difference| %.2e\n", d1);

    int32_t *two[2] = {a, b};
    int64_t len2[2] = {46, 40}, start2[2] = {0, 5};
    double d2 = decode_vs_full(w, be, 2, two, len2, start2, 48);
    CHECK(d2 <= 1e-6, "two slots: max difference %.3e", d2);
    printf("  two sequences in two slots, offset by 5 steps: max |logit difference| %.2e\n", d2);

    /* reset and reuse a slot */
    ts_model_decoder *dec = NULL;
    ts_model_decoder_new(w, be, 1, 48, &dec, err, sizeof err);
    float lg[64];
    int slot = 0;
    for (int i = 0; i < 10; i++) ts_model_decoder_step(dec, 1, &slot, &b[i], lg);
    ts_model_decoder_reset(dec, 0);
    CHECK(ts_model_decoder_length(dec, 0) == 0, "reset empties the slot");
    double *full = full_logits(w, be, a, 20), worst = 0;
    for (int i = 0; i < 20; i++) {
        ts_model_decoder_step(dec, 1, &slot, &a[i], lg);
        for (int v = 0; v < 64; v++) worst = fmax(worst, fabs(lg[v] - full[i * 64 + v]));
    }
    CHECK(worst <= 1e-6, "a reused slot differs by %.3e", worst);
    free(full);
    /* a full slot refuses more tokens */
    ts_model_decoder_reset(dec, 0);
    ts_status st = TS_OK;
    for (int i = 0; i < 49 && st == TS_OK; i++) st = ts_model_decoder_step(dec, 1, &slot, &a[i % 46], lg);
    CHECK(st == TS_ERR_RANGE && ts_model_decoder_length(dec, 0) == 48, "overflow: %s", ts_status_name(st));
    ts_model_decoder_free(dec);
    test_completer(w, be, a, b);
    ts_backend_free(be);
    ts_st_file_close(ex);
    ts_model_weights_free(w);
}

/* The completer (decoder path: rows prefill and generate in shared steps) gives the same greedy
 * continuations as argmax over full forward passes of the growing sequences. */
static void test_completer(ts_model_weights *w, ts_backend *be, const int32_t *a, const int32_t *b) {
    enum { NEW = 8 };
    int64_t lens[2] = {5, 11};
    const int32_t *prompts[2] = {a, b};
    int32_t out0[NEW], out1[NEW], *outs[2] = {out0, out1};
    int64_t out_lens[2];
    char err[256] = "";
    ts_model_completer *c = NULL;
    CHECK(ts_model_completer_new(w, be, 2, 32, &c, err, sizeof err) == TS_OK, "completer: %s", err);
    if (!c) return;
    CHECK_OK(ts_model_complete(c, 2, prompts, lens, NEW, -1, 2, outs, out_lens), NULL);
    for (int r = 0; r < 2; r++) {
        int32_t seq[32];
        memcpy(seq, prompts[r], (size_t)lens[r] * sizeof(int32_t));
        int64_t n = lens[r];
        int same = out_lens[r] == NEW;
        for (int k = 0; k < NEW && same; k++) {
            double *lg = full_logits(w, be, seq, n);
            int best = 0;
            for (int v = 1; v < 64; v++)
                if (lg[(n - 1) * 64 + v] > lg[(n - 1) * 64 + best]) best = v;
            free(lg);
            same = outs[r][k] == best;
            seq[n++] = best;
        }
        CHECK(same, "row %d: the completer's greedy continuation differs from the full passes'", r);
    }
    ts_model_completer_free(c);
}

static void test_tiny_f32(void) {
    ts_v4_config c;
    ts_v4_preset("tiny", &c);
    c.hidden_size = 64;
    c.moe_intermediate_size = 32;
    c.q_lora_rank = 32;
    char err[256];
    ts_model_weights *w = NULL;
    ts_status s = ts_model_weights_new(&c, TS_F32, &w, err, sizeof err);
    CHECK(s == TS_OK, "weights: %s", err);
    if (s != TS_OK) return;
    ts_model_weights_init(w, 11, err, sizeof err);
    /* larger than the init's 0.02 so that the indexer's scores are not all tied at 0 */
    for (int i = 0; i < ts_model_weights_count(w); i++) {
        const ts_model_tensor *t = ts_model_weights_info(w, i);
        if (ts_model_weights_mem_dtype(w, i) != TS_F32 || t->ndim != 2) continue;
        float *d = ts_model_weights_data(w, i);
        for (int64_t j = 0; j < ts_model_tensor_numel(t); j++) d[j] *= 8;
    }
    enum { T = 100 };
    int32_t ids[T];
    for (int i = 0; i < T; i++) ids[i] = 3 + (i * 37 + 11) % 250;
    ts_backend *be;
    ts_backend_cpu_new(2, &be);
    int32_t *one[1] = {ids};
    int64_t len[1] = {T}, start[1] = {0};
    double d = decode_vs_full(w, be, 1, one, len, start, T);
    CHECK(d <= 1e-4, "tiny f32: max difference %.3e", d);
    printf("  tiny preset (hidden 64, f32, optimized backend): %d tokens, max |logit difference| %.2e\n", T, d);
    ts_backend_free(be);
    ts_model_weights_free(w);
}

int main(void) {
    test_fixture();
    test_tiny_f32();
    return check_summary("decode");
}
