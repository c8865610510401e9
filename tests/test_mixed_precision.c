/* test_mixed_precision.c - mixed precision (graph autocast, ts_graph_set_autocast; model graphs'
 * compute_dtype = TS_BF16), alone and with activation recomputation (model graphs' recompute).
 *
 *  - op level: an autocast matmul and matmul_id against an independent f64 computation on
 *    operands rounded to bf16 by hand (ts_f32_to_bf16): forward, and the gradients, which must
 *    use the bf16 operands and the unrounded f32 output gradient; on the reference and the
 *    optimized CPU backends; a tensor read by two matmuls is cast once.
 *  - model level: a tiny V4 (with MTP) and a dense model, bf16 against f32 on the same weights:
 *    every gradient within bf16 tolerance of the f32 one but not equal to it (casting happened),
 *    the f32 graph holds no bf16 node; and the planner's peak drops at the tiny recipe's shape.
 *  - bf16 with recomputation: the same loss and gradients as bf16 without (learned routing, MTP,
 *    balance and indexer losses; dense), a lower planned peak; the four peaks (f32 / bf16, with
 *    and without recomputation) at the tiny recipe's 8 x 256 tokens. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "tessera/backend.h"
#include "tessera/graph.h"
#include "tessera/model.h"

static double bf16_round(float x) { return ts_bf16_to_f32(ts_f32_to_bf16(x)); }

static void fill(float *v, int64_t n, uint32_t seed) {
    for (int64_t i = 0; i < n; i++) {
        seed = seed * 1664525u + 1013904223u;
        v[i] = ((float)(seed >> 8) / 16777216.0f - 0.5f) * 2.0f;
    }
}

/* max |got - want| / max |want| */
static double rel_err(const float *got, const double *want, int64_t n) {
    double d = 0, m = 0;
    for (int64_t i = 0; i < n; i++) {
        d = fmax(d, fabs(got[i] - want[i]));
        m = fmax(m, fabs(want[i]));
    }
    return d / (m > 0 ? m : 1);
}

static int count_casts_of(const ts_graph *g, const ts_tensor *x) {
    int n = 0;
    for (int i = 0; i < ts_graph_n_nodes(g); i++) {
        const ts_tensor *t = ts_graph_node(g, i);
        n += t->op == TS_OP_COPY && t->src[0] == x && t->dtype == TS_BF16;
    }
    return n;
}

/* y = a · bᵀ (a [M, K], b [N, K]) used twice (y1 = a·bᵀ, y2 = a·bᵀ again through a second
 * call), loss = sum(y1 * r) + sum(y2 * r). Expected: y = bf16(a)·bf16(b)ᵀ in f64; dA = 2 r ·
 * bf16(b); dB = 2 rᵀ · bf16(a). */
static void test_matmul(bool optimized) {
    enum { M = 7, N = 33, K = 41 };
    float a[M * K], b[N * K], r[M * N];
    fill(a, M * K, 1);
    fill(b, N * K, 2);
    fill(r, M * N, 3);
    ts_graph *g = ts_graph_new();
    CHECK(ts_graph_set_autocast(g, TS_BF16) == TS_F32, "autocast was off");
    ts_tensor *A = ts_set_param(ts_new_tensor_2d(g, TS_F32, M, K, "a"));
    ts_tensor *B = ts_set_param(ts_new_tensor_2d(g, TS_F32, N, K, "b"));
    ts_tensor *R = ts_new_tensor_2d(g, TS_F32, M, N, "r");
    ts_tensor *y1 = ts_set_output(ts_matmul(g, A, B, false, true));
    ts_tensor *y2 = ts_matmul(g, A, B, false, true);
    ts_tensor *loss = ts_sum(g, ts_reshape(g, ts_add(g, ts_mul(g, y1, R), ts_mul(g, y2, R)), 1, (int64_t[]){M * N}), 0, true);
    CHECK_OK(ts_graph_backward(g, loss), g);
    CHECK(y1 && y1->dtype == TS_F32 && y1->src[0]->dtype == TS_BF16 && y1->src[1]->dtype == TS_BF16 && y1->ip[2] == 1,
          "autocast matmul: bf16 operands, f32 result");
    CHECK(count_casts_of(g, A) == 1 && count_casts_of(g, B) == 1, "each operand cast once (%d, %d)", count_casts_of(g, A),
          count_casts_of(g, B));
    CHECK(ts_grad(A) && ts_grad(A)->dtype == TS_F32 && ts_grad(B)->dtype == TS_F32, "f32 gradients");
    ts_backend *be;
    if (optimized) ts_backend_cpu_new(2, &be);
    else ts_backend_cpu_ref_new(2, &be);
    CHECK_OK(ts_graph_alloc(g, be, NULL, NULL), g);
    ts_tensor_write_f32(A, a, M * K);
    ts_tensor_write_f32(B, b, N * K);
    ts_tensor_write_f32(R, r, M * N);
    CHECK_OK(ts_graph_compute(g), g);
    double want_y[M * N], want_da[M * K], want_db[N * K];
    for (int i = 0; i < M; i++)
        for (int n = 0; n < N; n++) {
            double s = 0;
            for (int k = 0; k < K; k++) s += bf16_round(a[i * K + k]) * bf16_round(b[n * K + k]);
            want_y[i * N + n] = s;
        }
    for (int i = 0; i < M; i++)
        for (int k = 0; k < K; k++) {
            double s = 0;
            for (int n = 0; n < N; n++) s += 2.0 * r[i * N + n] * bf16_round(b[n * K + k]);
            want_da[i * K + k] = s;
        }
    for (int n = 0; n < N; n++)
        for (int k = 0; k < K; k++) {
            double s = 0;
            for (int i = 0; i < M; i++) s += 2.0 * r[i * N + n] * bf16_round(a[i * K + k]);
            want_db[n * K + k] = s;
        }
    float got_y[M * N], got_da[M * K], got_db[N * K];
    ts_tensor_read_f32(y1, got_y, M * N);
    ts_tensor_read_f32(ts_grad(A), got_da, M * K);
    ts_tensor_read_f32(ts_grad(B), got_db, N * K);
    const char *kind = optimized ? "cpu" : "ref";
    double ey = rel_err(got_y, want_y, M * N), ea = rel_err(got_da, want_da, M * K), eb = rel_err(got_db, want_db, N * K);
    CHECK(ey < 1e-6 && ea < 1e-6 && eb < 1e-6, "%s: y %.3g dA %.3g dB %.3g vs the f64 product of bf16 operands", kind, ey,
          ea, eb);
    /* the f32 product differs by bf16 rounding: the test can tell the two apart */
    double f32_y[M * N];
    for (int i = 0; i < M; i++)
        for (int n = 0; n < N; n++) {
            double s = 0;
            for (int k = 0; k < K; k++) s += (double)a[i * K + k] * b[n * K + k];
            f32_y[i * N + n] = s;
        }
    double e32 = rel_err(got_y, f32_y, M * N);
    CHECK(e32 > 1e-4 && e32 < 2e-2, "%s: autocast vs unrounded product differ by %.3g (bf16 rounding)", kind, e32);
    printf("  matmul (%s): rel err vs bf16-operand f64 y %.2g dA %.2g dB %.2g; vs f32 operands %.2g\n", kind, ey, ea, eb,
           e32);
    ts_graph_free(g);
    ts_backend_free(be);
}

/* out[t, k] = bf16(w[ids[t, k]]) · bf16(x[t]); loss = sum(out * r). dx[t] = sum_k bf16(w_e)ᵀ r[t, k];
 * dw[e] = sum over pairs routed to e of r[t, k] (x) bf16(x[t]). */
static void test_matmul_id(bool optimized) {
    enum { E = 4, N = 24, K = 20, T = 9, KK = 2 };
    float w[E * N * K], x[T * K], r[T * KK * N];
    int32_t ids[T * KK];
    fill(w, E * N * K, 4);
    fill(x, T * K, 5);
    fill(r, T * KK * N, 6);
    for (int i = 0; i < T * KK; i++) ids[i] = (i * 3 + i / KK) % E;
    ts_graph *g = ts_graph_new();
    ts_graph_set_autocast(g, TS_BF16);
    ts_tensor *W = ts_set_param(ts_new_tensor_3d(g, TS_F32, E, N, K, "w"));
    ts_tensor *X = ts_set_param(ts_new_tensor_2d(g, TS_F32, T, K, "x"));
    ts_tensor *I = ts_new_tensor_2d(g, TS_I32, T, KK, "ids");
    ts_tensor *R = ts_new_tensor_3d(g, TS_F32, T, KK, N, "r");
    ts_tensor *y = ts_matmul_id(g, W, X, I);
    ts_tensor *loss = ts_sum(g, ts_reshape(g, ts_mul(g, y, R), 1, (int64_t[]){T * KK * N}), 0, true);
    CHECK_OK(ts_graph_backward(g, loss), g);
    CHECK(y && y->dtype == TS_F32 && y->src[0]->dtype == TS_BF16 && y->src[1]->dtype == TS_BF16, "matmul_id autocast");
    ts_set_output(y);
    ts_backend *be;
    if (optimized) ts_backend_cpu_new(2, &be);
    else ts_backend_cpu_ref_new(2, &be);
    CHECK_OK(ts_graph_alloc(g, be, NULL, NULL), g);
    ts_tensor_write_f32(W, w, E * N * K);
    ts_tensor_write_f32(X, x, T * K);
    ts_tensor_write_f32(R, r, T * KK * N);
    ts_tensor_write(I, ids, sizeof ids);
    CHECK_OK(ts_graph_compute(g), g);
    static double want_y[T * KK * N], want_dx[T * K], want_dw[E * N * K];
    memset(want_dx, 0, sizeof want_dx);
    memset(want_dw, 0, sizeof want_dw);
    for (int p = 0; p < T * KK; p++) {
        int t = p / KK, e = ids[p];
        for (int n = 0; n < N; n++) {
            double s = 0;
            for (int k = 0; k < K; k++) {
                double wv = bf16_round(w[(e * N + n) * K + k]), xv = bf16_round(x[t * K + k]);
                s += wv * xv;
                want_dx[t * K + k] += wv * r[p * N + n];
                want_dw[(e * N + n) * K + k] += r[p * N + n] * xv;
            }
            want_y[p * N + n] = s;
        }
    }
    static float got_y[T * KK * N], got_dx[T * K], got_dw[E * N * K];
    ts_tensor_read_f32(y, got_y, T * KK * N);
    ts_tensor_read_f32(ts_grad(X), got_dx, T * K);
    ts_tensor_read_f32(ts_grad(W), got_dw, E * N * K);
    double ey = rel_err(got_y, want_y, T * KK * N), ex = rel_err(got_dx, want_dx, T * K),
           ew = rel_err(got_dw, want_dw, E * N * K);
    const char *kind = optimized ? "cpu" : "ref";
    CHECK(ey < 1e-6 && ex < 1e-6 && ew < 1e-6, "%s matmul_id: y %.3g dx %.3g dw %.3g", kind, ey, ex, ew);
    printf("  matmul_id (%s): rel err y %.2g dx %.2g dw %.2g\n", kind, ey, ex, ew);
    ts_graph_free(g);
    ts_backend_free(be);
}

static void test_bad_dtype(void) {
    ts_graph *g = ts_graph_new();
    ts_graph_set_autocast(g, TS_BF16);
    CHECK(ts_graph_set_autocast(g, TS_I32) == TS_BF16 && ts_graph_set_autocast(g, TS_F32) == TS_BF16,
          "a refused dtype changes nothing");
    CHECK(ts_graph_status(g) == TS_ERR_DTYPE && strstr(ts_graph_error(g), "autocast"), "i32 refused: %s",
          ts_graph_error(g));
    ts_graph_free(g);
}

/* ---------------------------------------------------------------- model level */

typedef struct {
    float *grads; /* every gradient, concatenated */
    int64_t n;
    float loss;
    int bf16_nodes;
    size_t peak; /* the planner's */
} model_run;

/* The training graph's options for w: batch x seq, loss, backward, MTP when the model has it,
 * and the trainer's balance and indexer losses (outputs and detached inputs in the graph). */
static ts_model_graph_options train_options(const ts_model_weights *w, int64_t batch, int64_t seq) {
    const ts_v4_config *c = ts_model_weights_config(w);
    bool v4 = c->kind == TS_MODEL_DEEPSEEK_V4;
    return (ts_model_graph_options){.batch = batch, .seq = seq, .loss = true, .backward = true,
                                    .mtp = v4 && c->num_nextn_predict_layers > 0, .balance_alpha = v4 ? 1e-4 : 0,
                                    .indexer_loss = v4};
}

/* Plans the graph of o; with compute, also runs one batch and reads the loss and every gradient. */
static model_run run_model(ts_model_weights *w, ts_model_graph_options o, bool compute) {
    model_run out = {0};
    const ts_v4_config *c = ts_model_weights_config(w);
    int64_t n = o.batch * o.seq;
    int32_t *ids = malloc((size_t)(4 * n) * sizeof *ids), *tg = ids + n, *mids = ids + 2 * n, *mtg = ids + 3 * n;
    for (int64_t i = 0; i < n; i++) {
        ids[i] = (int32_t)((i * 7 + 3) % c->vocab_size);
        tg[i] = (int32_t)((i * 5 + 1) % c->vocab_size);
        mids[i] = tg[i];
        mtg[i] = (int32_t)((i * 11 + 2) % c->vocab_size);
    }
    char err[512] = "";
    ts_model_graph *mg = NULL;
    ts_backend *be;
    ts_backend_cpu_new(2, &be);
    ts_plan_stats ps = {0};
    ts_status s = ts_model_graph_build(w, &o, &mg, err, sizeof err);
    if (s == TS_OK) s = ts_model_graph_alloc(mg, be, &ps, err, sizeof err);
    CHECK(s == TS_OK, "model graph (%s%s): %s", ts_dtype_name(o.compute_dtype), o.recompute ? ", recompute" : "", err);
    out.peak = ps.arena_bytes;
    if (s == TS_OK && compute) {
        size_t bytes = (size_t)n * sizeof *ids;
        ts_tensor_write(mg->ids, ids, bytes);
        ts_tensor_write(mg->targets, tg, bytes);
        if (o.mtp) {
            ts_tensor_write(mg->mtp_ids, mids, bytes);
            ts_tensor_write(mg->mtp_targets, mtg, bytes);
        }
        CHECK_OK(ts_graph_compute(mg->graph), mg->graph);
        ts_tensor_read_f32(mg->loss, &out.loss, 1);
        for (int i = 0; i < ts_graph_n_nodes(mg->graph); i++)
            out.bf16_nodes += ts_graph_node(mg->graph, i)->dtype == TS_BF16;
        int nw = ts_model_weights_count(w);
        for (int i = 0; i < nw; i++)
            if (ts_model_graph_grad(mg, i)) out.n += ts_nelements(ts_model_graph_grad(mg, i));
        out.grads = malloc((size_t)out.n * sizeof *out.grads);
        for (int i = 0, at = 0; i < nw; i++) {
            ts_tensor *gr = ts_model_graph_grad(mg, i);
            if (!gr) continue;
            ts_tensor_read_f32(gr, out.grads + at, ts_nelements(gr));
            at += (int)ts_nelements(gr);
        }
    }
    free(ids);
    ts_model_graph_free(mg);
    ts_backend_free(be);
    return out;
}

/* ||a - b|| / ||a|| over two runs' gradients; -1 when they cannot be compared. */
static double grad_rel_err(const model_run *a, const model_run *b) {
    if (!a->grads || !b->grads || a->n != b->n || a->n == 0) return -1;
    double d2 = 0, n2 = 0;
    for (int64_t i = 0; i < a->n; i++) {
        d2 += (double)(b->grads[i] - a->grads[i]) * (b->grads[i] - a->grads[i]);
        n2 += (double)a->grads[i] * a->grads[i];
    }
    return sqrt(d2 / n2);
}

/* bf16 against f32 on one batch of 2 x 32 tokens: every gradient within bf16 noise, not equal. */
static void compare_bf16(const char *name, ts_model_weights *w) {
    ts_model_graph_options o = train_options(w, 2, 32);
    model_run f = run_model(w, o, true);
    o.compute_dtype = TS_BF16;
    model_run h = run_model(w, o, true);
    double rel = grad_rel_err(&f, &h), dl = fabs(h.loss - f.loss) / fabs(f.loss);
    CHECK(rel < 3e-2 && rel > 1e-5, "%s: bf16 vs f32 gradients differ by %.3g (want bf16 noise: (1e-5, 3e-2))", name, rel);
    CHECK(dl < 1e-2 && h.loss != f.loss, "%s: losses %.6f vs %.6f", name, h.loss, f.loss);
    CHECK(f.bf16_nodes == 0 && h.bf16_nodes > 0, "%s: bf16 nodes f32 %d, bf16 %d", name, f.bf16_nodes, h.bf16_nodes);
    printf("  %s: loss f32 %.6f bf16 %.6f; gradient rel err %.3g over %lld values\n", name, f.loss, h.loss, rel,
           (long long)f.n);
    free(f.grads);
    free(h.grads);
}

/* Recomputation against none with the given compute dtype (test_recompute covers f32): the same
 * loss and gradients (the recomputed layers rerun the same kernels, bf16 casts included), and a
 * lower planned peak. */
static void compare_recompute(const char *name, ts_model_weights *w, ts_dtype compute) {
    ts_model_graph_options o = train_options(w, 2, 32);
    o.compute_dtype = compute;
    model_run k = run_model(w, o, true);
    o.recompute = true;
    model_run r = run_model(w, o, true);
    double rel = grad_rel_err(&k, &r);
    CHECK(rel >= 0 && rel <= 1e-6 && r.loss == k.loss, "%s %s: recomputed gradients differ by %.3g, loss %.9g vs %.9g",
          name, ts_dtype_name(compute), rel, r.loss, k.loss);
    CHECK(r.peak < k.peak, "%s %s: planner peak with recompute %zu, without %zu", name, ts_dtype_name(compute), r.peak,
          k.peak);
    printf("  %s %s, recompute: gradient rel err %.2g; planner peak %.1f -> %.1f MiB (2 x 32 tokens)\n", name,
           ts_dtype_name(compute), rel, k.peak / 1048576.0, r.peak / 1048576.0);
    free(k.grads);
    free(r.grads);
}

/* A preset's f32 weights. hash_all: every MoE layer routes by token id - learned top-k routing
 * flips a token's experts on rounding-sized changes of its scores (f32 noise of that size would
 * too), which is a discontinuity, not an error of bf16 compute: 3.7 % gradient difference on
 * tiny with learned routing, 0.7 % without. */
static ts_model_weights *tiny(const char *preset, bool hash_all) {
    ts_v4_config c;
    ts_v4_preset(preset, &c);
    if (hash_all) c.num_hash_layers = c.num_hidden_layers;
    char err[512] = "";
    ts_model_weights *w = NULL;
    CHECK(ts_model_weights_new(&c, TS_F32, &w, err, sizeof err) == TS_OK, "weights: %s", err);
    if (w) ts_model_weights_init(w, 7, err, sizeof err);
    return w;
}

/* Planned peaks at the spec's tiny recipe shape (8 x 256 tokens). bf16 keeps half-size copies
 * of the matmul operands for backward instead of f32 ones, but also a bf16 copy of every weight:
 * its peak drops once activations outweigh the weights (here), and may rise for a handful of
 * tokens. Recomputation keeps the layer outputs and one layer's activations. */
static void test_peaks(const char *name, ts_model_weights *w) {
    size_t peak[4];
    for (int i = 0; i < 4; i++) {
        ts_model_graph_options o = train_options(w, 8, 256);
        o.compute_dtype = i & 1 ? TS_BF16 : TS_F32;
        o.recompute = i >= 2;
        peak[i] = run_model(w, o, false).peak;
    }
    CHECK(peak[1] < peak[0] && peak[2] < peak[0] && peak[3] < peak[1], "%s: peaks %zu %zu %zu %zu", name, peak[0],
          peak[1], peak[2], peak[3]);
    printf("  %s, 8 x 256 tokens: planner peak f32 %.1f MiB, bf16 %.1f MiB; with recompute f32 %.1f MiB, bf16 %.1f MiB\n",
           name, peak[0] / 1048576.0, peak[1] / 1048576.0, peak[2] / 1048576.0, peak[3] / 1048576.0);
}

int main(void) {
    test_matmul(false);
    test_matmul(true);
    test_matmul_id(false);
    test_matmul_id(true);
    test_bad_dtype();
    ts_model_weights *v4 = tiny("tiny", true), *v4_learned = tiny("tiny", false), *dense = tiny("dense-tiny", false);
    if (v4) compare_bf16("tiny V4 + MTP", v4);
    if (dense) compare_bf16("dense-tiny", dense);
    if (v4_learned) compare_recompute("tiny V4 + MTP", v4_learned, TS_BF16);
    if (dense) compare_recompute("dense-tiny", dense, TS_BF16);
    if (v4_learned) test_peaks("tiny V4", v4_learned);
    if (dense) test_peaks("dense-tiny", dense);
    ts_model_weights_free(v4);
    ts_model_weights_free(v4_learned);
    ts_model_weights_free(dense);
    return check_summary("test_mixed_precision");
}
