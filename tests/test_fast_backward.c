/* test_fast_backward.c - the "cpu" backend's fast kernels for what a training step's backward
 * pass runs besides matmul and attention (fast_reduce.c, fast_rows.c and the newer paths of
 * fast_elementwise.c): sum_to over leading, trailing, middle and alternating dims, sum / mean /
 * max over an axis, strided copies and f32 <-> f16 / bf16 / f64 / i32 casts, per-row broadcasts of
 * the binary ops, exp / log / sqrt / sigmoid / softplus, sigmoid_back and clamp_back, swiglu and
 * its backward, cross-entropy and its backward, rms_norm_back, softmax_back and rope.
 *
 * Each case builds one node, checks that the fast kernel takes its own path for it (or, for
 * the layouts it leaves alone, that it falls back), compares the result with the reference
 * backend "cpu-ref" within the conformance suite's f32 tolerance (nmse 1e-10), and checks that
 * 1, 2 and 3 threads give identical bits. Sizes are large enough (> 2^16 elements) for the
 * kernels to split work across threads, and odd enough to leave ragged tiles. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "backends/cpu/fast_kernels.h"
#include "check.h"
#include "tessera/backend.h"

#define F32_TOLERANCE 1e-10 /* ts_conformance_tolerance(TS_F32) */

#define TGT_CLASSES 1001 /* logits' last dimension in the cross-entropy cases */

typedef ts_tensor *(*build_fn)(ts_graph *g);

typedef struct {
    const char *name;
    build_fn build;
    bool fast;           /* expected: the fast kernel's own path */
} fb_case;

typedef struct {
    double *out;
    int64_t n;
    bool fast;
} fb_result;

static bool takes_fast_path(const ts_tensor *t) {
    switch (t->op) {
    case TS_OP_SUM_TO: case TS_OP_SUM: case TS_OP_MEAN: case TS_OP_MAX: case TS_OP_COPY:
        return ts_fast_reduce_applies(t);
    case TS_OP_RMS_NORM_BACK: case TS_OP_SOFTMAX_BACK: case TS_OP_ROPE:
        return ts_fast_rows_applies(t);
    case TS_OP_CROSS_ENTROPY: case TS_OP_CROSS_ENTROPY_BACK:
        return ts_fast_loss_applies(t);
    default:
        return ts_fast_elementwise_applies(t);
    }
}

/* Every float leaf gets values from a seed fixed by its position: positive ones for log and
 * sqrt (leaves named "pos"), probabilities for sigmoid_back ("prob"), the rest N(0, 1). */
static ts_status fill_leaves(ts_graph *g) {
    for (int i = 0; i < ts_graph_n_nodes(g); i++) {
        ts_tensor *t = ts_graph_node(g, i);
        if (t->op != TS_OP_NONE || ts_is_view(t)) continue;
        int64_t n = ts_nelements(t);
        float *v = malloc((size_t)n * sizeof *v);
        if (!v) return TS_ERR_OOM;
        ts_rng rng;
        ts_rng_seed(&rng, 500 + (uint64_t)i);
        for (int64_t k = 0; k < n; k++) {
            double z = ts_rng_normal(&rng);
            v[k] = (float)(!strcmp(t->name, "pos") ? 0.25 + fabs(z) : !strcmp(t->name, "prob") ? 1 / (1 + exp(-z)) : z);
            if (!strcmp(t->name, "tgt")) v[k] = k % 11 == 0 ? -1.0f : (float)((k * 37) % TGT_CLASSES); /* some ignored */
        }
        ts_status s = ts_tensor_write_f32(t, v, n);
        free(v);
        if (s != TS_OK) return s;
    }
    return TS_OK;
}

static bool run(const fb_case *c, ts_status (*make)(int, ts_backend **), int threads, fb_result *r) {
    ts_graph *g = ts_graph_new();
    ts_tensor *y = c->build(g);
    ts_backend *be = NULL;
    bool ok = y != NULL;
    CHECK(ok, "%s: build: %s", c->name, ts_graph_error(g));
    if (ok) {
        ts_set_output(y);
        ok = make(threads, &be) == TS_OK && ts_graph_alloc(g, be, NULL, NULL) == TS_OK && fill_leaves(g) == TS_OK &&
             ts_graph_compute(g) == TS_OK;
        CHECK(ok, "%s: %s", c->name, ts_graph_error(g));
    }
    if (ok) {
        r->n = ts_nelements(y);
        r->fast = takes_fast_path(y);
        r->out = malloc((size_t)r->n * sizeof *r->out);
        size_t bytes = ts_nbytes(y);
        unsigned char *raw = malloc(bytes);
        ok = r->out && raw && ts_tensor_read(y, raw, bytes) == TS_OK;
        for (int64_t k = 0; ok && k < r->n; k++) r->out[k] = ts_load_f64(raw, y->dtype, k);
        free(raw);
    }
    ts_graph_free(g);
    if (be) ts_backend_free(be);
    return ok;
}

static void check_case(const fb_case *c) {
    fb_result ref = {0}, fast[3] = {{0}};
    bool ok = run(c, ts_backend_cpu_ref_new, 2, &ref);
    for (int t = 0; t < 3; t++) ok = run(c, ts_backend_cpu_new, t + 1, &fast[t]) && ok;
    if (ok) {
        double err = 0, energy = 0;
        for (int64_t k = 0; k < ref.n; k++) {
            err += (fast[1].out[k] - ref.out[k]) * (fast[1].out[k] - ref.out[k]);
            energy += ref.out[k] * ref.out[k];
        }
        double nmse = err / (energy > 0 ? energy : 1);
        bool same_bits = !memcmp(fast[0].out, fast[1].out, (size_t)ref.n * sizeof(double)) &&
                         !memcmp(fast[2].out, fast[1].out, (size_t)ref.n * sizeof(double));
        printf("  %-44s %-9s nmse %.1e%s\n", c->name, fast[1].fast ? "fast" : "fallback", nmse,
               same_bits ? "" : "  THREAD-DEPENDENT");
        CHECK(fast[1].fast == c->fast, "%s: fast path %d, expected %d", c->name, fast[1].fast, c->fast);
        CHECK(nmse <= F32_TOLERANCE, "%s: nmse %g against the reference", c->name, nmse);
        CHECK(same_bits, "%s: results depend on the thread count", c->name);
    }
    free(ref.out);
    for (int t = 0; t < 3; t++) free(fast[t].out);
}

/* ---------------------------------------------------------------- cases */

#define LEAF(name, ...) ts_new_tensor(g, TS_F32, (int)(sizeof((int64_t[]){__VA_ARGS__}) / sizeof(int64_t)), \
                                      (int64_t[]){__VA_ARGS__}, name)
#define TO(...) (int)(sizeof((int64_t[]){__VA_ARGS__}) / sizeof(int64_t)), (int64_t[]){__VA_ARGS__}

/* sum_to: leading dims (a bias gradient), trailing (a per-row scale's), middle, alternating,
 * everything, and a transposed x (falls back) */
static ts_tensor *sum_to_leading(ts_graph *g) { return ts_sum_to(g, LEAF("x", 9, 37, 301), TO(301)); }
static ts_tensor *sum_to_trailing(ts_graph *g) { return ts_sum_to(g, LEAF("x", 9, 37, 301), TO(9, 37, 1)); }
static ts_tensor *sum_to_middle(ts_graph *g) { return ts_sum_to(g, LEAF("x", 5, 61, 4, 67), TO(5, 61, 1, 67)); }
static ts_tensor *sum_to_alternating(ts_graph *g) { return ts_sum_to(g, LEAF("x", 7, 5, 61, 67), TO(5, 1, 67)); }
static ts_tensor *sum_to_all(ts_graph *g) { return ts_sum_to(g, LEAF("x", 333, 301), TO(1)); }
static ts_tensor *sum_to_transposed(ts_graph *g) {
    return ts_sum_to(g, ts_transpose(g, LEAF("x", 301, 333), 0, 1), TO(301));
}

static ts_tensor *sum_last(ts_graph *g) { return ts_sum(g, LEAF("x", 333, 301), 1, true); }
static ts_tensor *mean_middle(ts_graph *g) { return ts_mean(g, LEAF("x", 7, 61, 301), 1, true); }
static ts_tensor *max_first(ts_graph *g) { return ts_max(g, LEAF("x", 61, 7, 301), 0, true); }
static ts_tensor *max_last(ts_graph *g) { return ts_max(g, LEAF("x", 333, 301), -1, true); }

/* copies: a transposed and an expanded view to contiguous, and casts both ways */
static ts_tensor *copy_transposed(ts_graph *g) { return ts_cont(g, ts_transpose(g, LEAF("x", 7, 301, 61), 0, 2)); }
static ts_tensor *copy_expanded(ts_graph *g) {
    return ts_cont(g, ts_expand(g, LEAF("x", 1, 301, 61), 3, (int64_t[]){7, 301, 61}));
}
static ts_tensor *cast_to_bf16(ts_graph *g) { return ts_cast(g, ts_transpose(g, LEAF("x", 301, 333), 0, 1), TS_BF16); }
static ts_tensor *cast_to_f16(ts_graph *g) { return ts_cast(g, LEAF("x", 333, 301), TS_F16); }
static ts_tensor *cast_from_bf16(ts_graph *g) { return ts_cast(g, ts_cast(g, LEAF("x", 333, 301), TS_BF16), TS_F32); }
static ts_tensor *cast_from_f64(ts_graph *g) {
    return ts_cast(g, ts_transpose(g, ts_cast(g, LEAF("x", 333, 301), TS_F64), 0, 1), TS_F32);
}

/* casts between f32 and i32 (a decode step's top-k ids go to f32 and back) and an i32 copy, of
 * transposed views: the reference's conversion through double, element by element */
static ts_tensor *ids_i32(ts_graph *g) { return ts_cast(g, ts_scale(g, LEAF("x", 333, 301), 1000.0f), TS_I32); }
static ts_tensor *cast_to_i32(ts_graph *g) {
    return ts_cast(g, ts_transpose(g, ts_scale(g, LEAF("x", 301, 333), 1000.0f), 0, 1), TS_I32);
}
static ts_tensor *cast_from_i32(ts_graph *g) { return ts_cast(g, ts_transpose(g, ids_i32(g), 0, 1), TS_F32); }
static ts_tensor *copy_i32(ts_graph *g) { return ts_cont(g, ts_transpose(g, ids_i32(g), 0, 1)); }

/* binary ops with an operand held along the trailing dims, or two broadcast operands */
static ts_tensor *mul_row_scale(ts_graph *g) { return ts_mul(g, LEAF("x", 7, 333, 301), LEAF("s", 7, 333, 1)); }
static ts_tensor *div_row_scale(ts_graph *g) {
    return ts_div(g, LEAF("x", 7, 333, 301), ts_add(g, ts_sigmoid(g, LEAF("s", 333, 1)), LEAF("one", 1)));
}
static ts_tensor *add_outer(ts_graph *g) { return ts_add(g, LEAF("a", 333, 1), LEAF("b", 1, 301)); }

static ts_tensor *exp_op(ts_graph *g) { return ts_exp(g, LEAF("x", 333, 301)); }
static ts_tensor *log_op(ts_graph *g) { return ts_log(g, LEAF("pos", 333, 301)); }
static ts_tensor *sqrt_op(ts_graph *g) { return ts_sqrt(g, LEAF("pos", 333, 301)); }
static ts_tensor *sigmoid_op(ts_graph *g) { return ts_sigmoid(g, LEAF("x", 333, 301)); }
static ts_tensor *softplus_op(ts_graph *g) { return ts_softplus(g, ts_scale(g, LEAF("x", 333, 301), 30.0f)); }

static ts_tensor *back_node(ts_graph *g, ts_op op, ts_tensor *a, ts_tensor *b, ts_tensor *c, int32_t ip, float f0,
                            float f1) {
    ts_tensor *src[3] = {a, b, c};
    float fp[2] = {f0, f1};
    return ts_op_node(g, op, src, c ? 3 : 2, &ip, 1, fp, 2);
}
static ts_tensor *sigmoid_back(ts_graph *g) {
    return back_node(g, TS_OP_SIGMOID_BACK, LEAF("prob", 333, 301), LEAF("dy", 333, 301), NULL, 0, 0, 0);
}
static ts_tensor *clamp_back(ts_graph *g) {
    return back_node(g, TS_OP_CLAMP_BACK, LEAF("x", 333, 301), LEAF("dy", 333, 301), NULL, 0, -0.5f, 0.75f);
}
static ts_tensor *rms_norm_back_w(ts_graph *g) {
    return back_node(g, TS_OP_RMS_NORM_BACK, LEAF("x", 301, 333), LEAF("dy", 301, 333), LEAF("w", 333), 0, 1e-6f, 0);
}
static ts_tensor *rms_norm_back_plain(ts_graph *g) {
    return back_node(g, TS_OP_RMS_NORM_BACK, LEAF("x", 7, 301, 64), LEAF("dy", 7, 301, 64), NULL, 0, 1e-6f, 0);
}
static ts_tensor *rms_norm_back_transposed(ts_graph *g) {
    return back_node(g, TS_OP_RMS_NORM_BACK, ts_transpose(g, LEAF("x", 333, 301), 0, 1), LEAF("dy", 301, 333), NULL,
                     0, 1e-6f, 0);
}
static ts_tensor *softmax_back_last(ts_graph *g) {
    return back_node(g, TS_OP_SOFTMAX_BACK, LEAF("prob", 301, 333), LEAF("dy", 301, 333), NULL, 1, 0, 0);
}
static ts_tensor *softmax_back_first(ts_graph *g) {
    return back_node(g, TS_OP_SOFTMAX_BACK, LEAF("prob", 301, 333), LEAF("dy", 301, 333), NULL, 0, 0, 0);
}

/* swiglu (V4's clamped form) and its backward; cross-entropy over a vocabulary of 1001 (ragged
 * vector tail, two exp blocks) and its backward, from a transposed view (falls back) */
static ts_tensor *swiglu_op(ts_graph *g) { return ts_swiglu(g, LEAF("a", 333, 301), LEAF("b", 333, 301), 0.75f); }
static ts_tensor *swiglu_back_op(ts_graph *g) {
    ts_tensor *src[3] = {LEAF("a", 333, 301), LEAF("b", 333, 301), LEAF("dy", 333, 301)};
    return ts_op_node(g, TS_OP_SWIGLU_BACK, src, 3, NULL, 0, (const float[]){0.75f}, 1);
}
static ts_tensor *targets(ts_graph *g, int64_t rows) { return ts_new_tensor(g, TS_I32, 1, (int64_t[]){rows}, "tgt"); }
static ts_tensor *cross_entropy_op(ts_graph *g) { return ts_cross_entropy(g, LEAF("x", 257, TGT_CLASSES), targets(g, 257)); }
static ts_tensor *cross_entropy_back_op(ts_graph *g) {
    ts_tensor *src[3] = {LEAF("x", 257, TGT_CLASSES), targets(g, 257), LEAF("dy", 1)};
    return ts_op_node(g, TS_OP_CROSS_ENTROPY_BACK, src, 3, NULL, 0, NULL, 0);
}
static ts_tensor *cross_entropy_transposed(ts_graph *g) {
    return ts_cross_entropy(g, ts_transpose(g, LEAF("x", TGT_CLASSES, 257), 0, 1), targets(g, 257));
}

/* rope as the model uses it: [B, T, H, D] with angles [T, 1, n_rot/2], forward and inverse */
static ts_tensor *rope_model(ts_graph *g) { return ts_rope(g, LEAF("x", 3, 257, 4, 72), LEAF("a", 257, 1, 8), 16, false); }
static ts_tensor *rope_inverse(ts_graph *g) { return ts_rope(g, LEAF("x", 3, 257, 4, 72), LEAF("a", 257, 4, 36), 72, true); }
static ts_tensor *rope_strided_angles(ts_graph *g) { /* angles as a transposed view: their last axis is strided */
    return ts_rope(g, LEAF("x", 4, 257, 16), ts_transpose(g, LEAF("a", 8, 257), 0, 1), 16, false);
}

static const fb_case cases[] = {
    {"sum_to [9,37,301] -> [301]", sum_to_leading, true},
    {"sum_to [9,37,301] -> [9,37,1]", sum_to_trailing, true},
    {"sum_to [5,61,4,67] -> [5,61,1,67]", sum_to_middle, true},
    {"sum_to [7,5,61,67] -> [5,1,67]", sum_to_alternating, true},
    {"sum_to [333,301] -> [1]", sum_to_all, true},
    {"sum_to transposed view (falls back)", sum_to_transposed, false},
    {"sum axis 1 of [333,301]", sum_last, true},
    {"mean axis 1 of [7,61,301]", mean_middle, true},
    {"max axis 0 of [61,7,301]", max_first, true},
    {"max axis -1 of [333,301]", max_last, true},
    {"copy of a permuted [7,301,61]", copy_transposed, true},
    {"copy of an expanded [1,301,61]", copy_expanded, true},
    {"cast transposed f32 -> bf16", cast_to_bf16, true},
    {"cast f32 -> f16", cast_to_f16, true},
    {"cast bf16 -> f32", cast_from_bf16, true},
    {"cast transposed f64 -> f32", cast_from_f64, true},
    {"cast transposed f32 -> i32", cast_to_i32, true},
    {"cast transposed i32 -> f32", cast_from_i32, true},
    {"copy of a transposed i32", copy_i32, true},
    {"mul [7,333,301] * [7,333,1]", mul_row_scale, true},
    {"div [7,333,301] / [333,1]", div_row_scale, true},
    {"add [333,1] + [1,301]", add_outer, true},
    {"exp", exp_op, true},
    {"log", log_op, true},
    {"sqrt", sqrt_op, true},
    {"sigmoid", sigmoid_op, true},
    {"softplus (|x| up to ~100)", softplus_op, true},
    {"sigmoid_back", sigmoid_back, true},
    {"clamp_back [-0.5, 0.75]", clamp_back, true},
    {"rms_norm_back with weight", rms_norm_back_w, true},
    {"rms_norm_back without weight", rms_norm_back_plain, true},
    {"rms_norm_back transposed x (falls back)", rms_norm_back_transposed, false},
    {"softmax_back last axis", softmax_back_last, true},
    {"softmax_back axis 0 (falls back)", softmax_back_first, false},
    {"swiglu, limit 0.75", swiglu_op, true},
    {"swiglu_back, limit 0.75", swiglu_back_op, true},
    {"cross_entropy [257,1001]", cross_entropy_op, true},
    {"cross_entropy_back [257,1001]", cross_entropy_back_op, true},
    {"cross_entropy transposed logits (falls back)", cross_entropy_transposed, false},
    {"rope [3,257,4,72] angles [257,1,8]", rope_model, true},
    {"rope inverse, all 72 dims", rope_inverse, true},
    {"rope strided angles (falls back)", rope_strided_angles, false},
};

int main(void) {
    printf("fast kernels vs cpu-ref (f32, nmse tolerance %.0e, 1/2/3 threads):\n", F32_TOLERANCE);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) check_case(&cases[i]);
    return check_summary("fast_backward");
}
