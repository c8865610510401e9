/* test_fast_kernels.c - the "cpu" backend's fast kernels (src/backends/cpu/fast_*.c) against the
 * reference backend "cpu-ref", through whole graphs: the same graph, the same inputs, both
 * backends; the outputs must agree within the conformance suite's f32 tolerance (nmse 1e-10).
 *
 * Matmul: odd shapes (1, 7, 33, 1000), all four trans-flag combinations with each operand
 * stored directly or as a transposed view, broadcast and stride-0 batches, sliced operands
 * (leading dimension wider than the matrix, still on the GEMM), and layouts the GEMM cannot
 * address (no unit stride in the matrix, a stride-0 matrix dim, f64), which must fall back to
 * the reference kernel: ts_fast_matmul_uses_gemm says which path a node takes. Elementwise:
 * every fast path (bias-row and scalar broadcasts, column slices, unary ops, relu/silu
 * backward, softmax with a repeating mask or over a middle axis, there with -inf entries that
 * must give exact zeros, rms_norm with a weight) and views that must fall back. Concat (of
 * slices and transposed views), get_rows and gather: the memcpy paths; topk (ties). Results must be
 * bit-identical for 1, 2 and 3 threads. The vector math's many-row dots and axpys (the attention's
 * cache rows) must give the bits of one dot / axpy per row, on every length class and row count. Finally a 512 x 512 x 512 matmul (128^3 with
 * TS_TEST_QUICK=1) is timed on both backends (printed, not asserted: timing depends on the
 * machine). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "backends/cpu/fast_kernels.h"
#include "backends/cpu/fast_vmath.h"
#include "backends/cpu/gemm.h"
#include "check.h"
#include "tessera/backend.h"

#define F32_TOLERANCE 1e-10 /* ts_conformance_tolerance(TS_F32) */

typedef ts_status (*backend_factory)(int n_threads, ts_backend **out);
/* Records a graph and returns the node whose value is compared (marked output by the caller). */
typedef ts_tensor *(*build_fn)(ts_graph *g, const void *arg);

typedef struct {
    float *out;
    int64_t n;
    bool fast;      /* the fast kernel took its own path (not the reference fallback) */
    double seconds; /* of the timed compute */
} run_result;

/* Every leaf gets normal random values from a seed fixed by its position, so both backends see
 * the same inputs. */
static ts_status fill_leaves(ts_graph *g) {
    for (int i = 0; i < ts_graph_n_nodes(g); i++) {
        ts_tensor *t = ts_graph_node(g, i);
        if (t->op != TS_OP_NONE || ts_is_view(t)) continue;
        int64_t n = ts_nelements(t);
        float *v = malloc((size_t)(n > 0 ? n : 1) * sizeof *v);
        if (!v) return TS_ERR_OOM;
        ts_rng rng;
        ts_rng_seed(&rng, 1000 + (uint64_t)i);
        for (int64_t k = 0; k < n; k++) v[k] = (float)ts_rng_normal(&rng);
        ts_status s = ts_tensor_write_f32(t, v, n);
        free(v);
        if (s != TS_OK) return s;
    }
    return TS_OK;
}

static bool takes_fast_path(const ts_tensor *node) {
    switch (node->op) {
    case TS_OP_MATMUL: return ts_fast_matmul_uses_gemm(node);
    case TS_OP_CONCAT: case TS_OP_GET_ROWS: case TS_OP_GATHER: return ts_fast_move_applies(node);
    case TS_OP_TOPK: return ts_fast_rows_applies(node);
    default: return ts_fast_elementwise_applies(node);
    }
}

/* Builds the graph on a new backend, computes it `reps` times (the last one timed) and reads the
 * output. False (after a CHECK failure) when anything fails. */
static bool run_graph(backend_factory make, int threads, build_fn build, const void *arg, int reps, run_result *r) {
    memset(r, 0, sizeof *r);
    ts_backend *be = NULL;
    ts_graph *g = ts_graph_new();
    ts_status s = make(threads, &be);
    ts_tensor *node = s == TS_OK && g ? build(g, arg) : NULL;
    if (node) ts_set_output(node);
    if (s == TS_OK && g) s = ts_graph_status(g);
    if (s == TS_OK) s = ts_graph_alloc(g, be, NULL, NULL);
    if (s == TS_OK) s = fill_leaves(g);
    for (int i = 0; i < reps && s == TS_OK; i++) {
        r->seconds = ts_time_seconds();
        s = ts_graph_compute(g);
        r->seconds = ts_time_seconds() - r->seconds;
    }
    if (s == TS_OK) {
        r->n = ts_nelements(node);
        r->fast = takes_fast_path(node);
        r->out = malloc((size_t)(r->n > 0 ? r->n : 1) * sizeof *r->out);
        s = r->out ? ts_tensor_read_f32(node, r->out, r->n) : TS_ERR_OOM;
    }
    CHECK(s == TS_OK, "running a graph: %s %s", ts_status_name(s), g ? ts_graph_error(g) : "");
    ts_graph_free(g);
    ts_backend_free(be);
    return s == TS_OK;
}

/* sum (x - ref)^2 / sum ref^2, the conformance suite's measure. */
static double nmse(const float *x, const float *ref, int64_t n) {
    double err = 0, energy = 0;
    for (int64_t i = 0; i < n; i++) {
        double d = (double)x[i] - ref[i];
        err += d * d;
        energy += (double)ref[i] * ref[i];
    }
    return energy > 0 ? err / energy : err;
}

/* Runs the graph on both backends: outputs within tolerance, and the fast path taken exactly
 * when expected. */
static void compare_backends(const char *what, build_fn build, const void *arg, bool expect_fast) {
    run_result ref = {0}, fast = {0};
    if (run_graph(ts_backend_cpu_ref_new, 2, build, arg, 1, &ref) && run_graph(ts_backend_cpu_new, 2, build, arg, 1, &fast)) {
        CHECK(fast.n == ref.n, "%s: %lld vs %lld elements", what, (long long)fast.n, (long long)ref.n);
        double e = fast.n == ref.n ? nmse(fast.out, ref.out, ref.n) : INFINITY;
        CHECK(e <= F32_TOLERANCE, "%s: nmse %.3g", what, e);
        CHECK(fast.fast == expect_fast, "%s: fast path %s, expected %s", what, fast.fast ? "taken" : "not taken",
              expect_fast ? "taken" : "not taken");
    }
    free(ref.out);
    free(fast.out);
}

/* A leaf holding `shape` (f32), or its transpose stored contiguously and viewed back as `shape`
 * (a transposed view: unit stride along dim 0 of the matrix). */
static ts_tensor *matrix_leaf(ts_graph *g, int64_t rows, int64_t cols, bool as_transposed_view) {
    if (!as_transposed_view) return ts_new_tensor_2d(g, TS_F32, rows, cols, "m");
    return ts_transpose(g, ts_new_tensor_2d(g, TS_F32, cols, rows, "mT"), 0, 1);
}

/* ---------------------------------------------------------------- matmul: shapes and transposes */

typedef struct {
    int64_t m, n, k;
    bool ta, tb;         /* the op's trans flags */
    bool view_a, view_b; /* operand given as a transposed view */
} mm_spec;

static ts_tensor *build_matmul_2d(ts_graph *g, const void *arg) {
    const mm_spec *p = arg;
    ts_tensor *a = p->ta ? matrix_leaf(g, p->k, p->m, p->view_a) : matrix_leaf(g, p->m, p->k, p->view_a);
    ts_tensor *b = p->tb ? matrix_leaf(g, p->n, p->k, p->view_b) : matrix_leaf(g, p->k, p->n, p->view_b);
    return ts_matmul(g, a, b, p->ta, p->tb);
}

static void test_matmul_odd_shapes(void) {
    static const int64_t sizes[] = {1, 7, 33};
    char what[96];
    for (int i = 0; i < 3; i++)
        for (int j = 0; j < 3; j++)
            for (int l = 0; l < 3; l++) {
                mm_spec p = {.m = sizes[i], .n = sizes[j], .k = sizes[l]};
                snprintf(what, sizeof what, "matmul %lldx%lldx%lld", (long long)p.m, (long long)p.n, (long long)p.k);
                compare_backends(what, build_matmul_2d, &p, true);
            }
    static const mm_spec large[] = {{.m = 1000, .n = 7, .k = 33}, {.m = 7, .n = 1000, .k = 33},
                                    {.m = 33, .n = 7, .k = 1000}, {.m = 1, .n = 1000, .k = 1000},
                                    {.m = 1000, .n = 33, .k = 1, .tb = true}};
    for (size_t i = 0; i < sizeof large / sizeof large[0]; i++) {
        snprintf(what, sizeof what, "matmul %lldx%lldx%lld", (long long)large[i].m, (long long)large[i].n,
                 (long long)large[i].k);
        compare_backends(what, build_matmul_2d, &large[i], true);
    }
}

/* Both trans flags x each operand stored directly or as a transposed view: 16 layouts, all on
 * the GEMM. */
static void test_matmul_transposes(void) {
    char what[96];
    for (int mask = 0; mask < 16; mask++) {
        mm_spec p = {.m = 37, .n = 29, .k = 65, .ta = mask & 1, .tb = mask & 2, .view_a = mask & 4, .view_b = mask & 8};
        snprintf(what, sizeof what, "matmul trans_a=%d trans_b=%d view_a=%d view_b=%d", p.ta, p.tb, p.view_a, p.view_b);
        compare_backends(what, build_matmul_2d, &p, true);
    }
}

/* ---------------------------------------------------------------- matmul: batches */

/* a [3,1,7,33] x b [2,33,5] -> [3,2,7,5]: both operands broadcast a batch dim. */
static ts_tensor *build_broadcast_batches(ts_graph *g, const void *arg) {
    ts_tensor *a = ts_new_tensor_4d(g, TS_F32, 3, 1, 7, 33, "a");
    ts_tensor *b = ts_new_tensor_3d(g, TS_F32, 2, 33, 5, "b");
    return ts_matmul(g, a, b, false, false);
}

/* a [4,9,17] x b [17,6]: b shared by every batch (fewer dims). */
static ts_tensor *build_shared_rhs(ts_graph *g, const void *arg) {
    ts_tensor *a = ts_new_tensor_3d(g, TS_F32, 4, 9, 17, "a");
    ts_tensor *b = ts_new_tensor_2d(g, TS_F32, 17, 6, "b");
    return ts_matmul(g, a, b, false, false);
}

/* b [1,17,6] expanded to [4,17,6]: a stride-0 batch dim. */
static ts_tensor *build_expanded_batch(ts_graph *g, const void *arg) {
    ts_tensor *a = ts_new_tensor_3d(g, TS_F32, 4, 9, 17, "a");
    ts_tensor *b = ts_new_tensor_3d(g, TS_F32, 1, 17, 6, "b");
    const int64_t shape[3] = {4, 17, 6};
    return ts_matmul(g, a, ts_expand(g, b, 3, shape), false, false);
}

/* a stored [9,4,17] permuted to [4,9,17]: batch stride 17, rows 68 apart, unit columns, as in
 * attention's [T,H,D] -> [H,T,D]; b transposed through the op flag. */
static ts_tensor *build_permuted_batch(ts_graph *g, const void *arg) {
    ts_tensor *a = ts_new_tensor_3d(g, TS_F32, 9, 4, 17, "a");
    ts_tensor *b = ts_new_tensor_3d(g, TS_F32, 4, 6, 17, "b");
    const int perm[3] = {1, 0, 2};
    return ts_matmul(g, ts_permute(g, a, perm), b, false, true);
}

static void test_matmul_batches(void) {
    compare_backends("matmul broadcast batches [3,1,7,33]x[2,33,5]", build_broadcast_batches, NULL, true);
    compare_backends("matmul shared rhs [4,9,17]x[17,6]", build_shared_rhs, NULL, true);
    compare_backends("matmul expanded batch", build_expanded_batch, NULL, true);
    compare_backends("matmul permuted batch", build_permuted_batch, NULL, true);
}

/* ---------------------------------------------------------------- matmul: slices and fallbacks */

/* Columns 5..5+33 of a [7,50] leaf and rows 3..3+33 of a [40,12] leaf: the leading dimension is
 * wider than the matrix, which the GEMM addresses directly. */
static ts_tensor *build_sliced(ts_graph *g, const void *arg) {
    ts_tensor *a = ts_slice(g, ts_new_tensor_2d(g, TS_F32, 7, 50, "a"), 1, 5, 33);
    ts_tensor *b = ts_slice(g, ts_new_tensor_2d(g, TS_F32, 40, 12, "b"), 0, 3, 33);
    return ts_matmul(g, a, b, false, false);
}

/* A slice of a transposed view: unit stride along the rows, leading dimension 50. */
static ts_tensor *build_sliced_transposed(ts_graph *g, const void *arg) {
    ts_tensor *at = ts_transpose(g, ts_new_tensor_2d(g, TS_F32, 50, 7, "aT"), 0, 1); /* [7,50] */
    ts_tensor *a = ts_slice(g, at, 1, 10, 33);
    return ts_matmul(g, a, ts_new_tensor_2d(g, TS_F32, 33, 9, "b"), false, false);
}

/* a stored [7,33,3] permuted to [3,7,33]: strides (1, 99, 3), no unit stride inside the matrix. */
static ts_tensor *build_no_unit_stride(ts_graph *g, const void *arg) {
    ts_tensor *a = ts_new_tensor_3d(g, TS_F32, 7, 33, 3, "a");
    const int perm[3] = {2, 0, 1};
    return ts_matmul(g, ts_permute(g, a, perm), ts_new_tensor_2d(g, TS_F32, 33, 5, "b"), false, false);
}

/* One row expanded to 7 (row stride 0): rows overlap, which the GEMM does not accept. */
static ts_tensor *build_stride0_rows(ts_graph *g, const void *arg) {
    ts_tensor *row = ts_new_tensor_2d(g, TS_F32, 1, 33, "row");
    const int64_t shape[2] = {7, 33};
    return ts_matmul(g, ts_expand(g, row, 2, shape), ts_new_tensor_2d(g, TS_F32, 33, 5, "b"), false, false);
}

/* Column slice of a column slice, then sliced along a batch dim: still unit stride, on the GEMM. */
static ts_tensor *build_batch_slice(ts_graph *g, const void *arg) {
    ts_tensor *a = ts_slice(g, ts_new_tensor_3d(g, TS_F32, 5, 7, 40, "a"), 0, 1, 3);
    a = ts_slice(g, a, 2, 2, 33);
    return ts_matmul(g, a, ts_new_tensor_3d(g, TS_F32, 3, 33, 4, "b"), false, false);
}

/* f32 activations times f16 weights (f32 output): the GEMM converts the weights while packing. */
static ts_tensor *build_f16_weights(ts_graph *g, const void *arg) {
    ts_tensor *a = ts_new_tensor_2d(g, TS_F32, 7, 33, "a");
    return ts_matmul(g, a, ts_new_tensor_2d(g, TS_F16, 5, 33, "w"), false, true);
}

static ts_tensor *build_f64(ts_graph *g, const void *arg) {
    ts_tensor *a = ts_new_tensor_2d(g, TS_F64, 7, 33, "a");
    return ts_matmul(g, a, ts_new_tensor_2d(g, TS_F64, 33, 5, "b"), false, false);
}

static void test_matmul_slices_and_fallbacks(void) {
    compare_backends("matmul sliced operands", build_sliced, NULL, true);
    compare_backends("matmul sliced transposed view", build_sliced_transposed, NULL, true);
    compare_backends("matmul batch-and-column sliced", build_batch_slice, NULL, true);
    compare_backends("matmul no unit stride (falls back)", build_no_unit_stride, NULL, false);
    compare_backends("matmul stride-0 rows (falls back)", build_stride0_rows, NULL, false);
    compare_backends("matmul f32 x f16 weights", build_f16_weights, NULL, true);
    compare_backends("matmul f64 (falls back)", build_f64, NULL, false);
}

/* ---------------------------------------------------------------- elementwise and rows */

typedef struct {
    ts_op op;
    int64_t rows, cols;
    int kind;     /* binary: see binary_operand; unary and rows: 3 = over a transposed view (falls back) */
    float p0, p1; /* scale factor, clamp bounds */
} ew_spec;

/* Operand kinds of the binary cases: same shape, a [cols] row or a [1] scalar on the right, the
 * same on the left, a transposed view on the left (falls back), or a column slice of a wider
 * matrix on the left (unit-stride rows, read row by row) and a scalar on the right (as mHC
 * scales its coefficients). */
enum {
    BIN_SAME, BIN_ROW_RIGHT, BIN_SCALAR_RIGHT, BIN_ROW_LEFT, BIN_SCALAR_LEFT, BIN_VIEW_LEFT, BIN_SLICE_LEFT, BIN_KINDS
};

static ts_tensor *binary_operand(ts_graph *g, const ew_spec *p, bool left) {
    bool row = p->kind == (left ? BIN_ROW_LEFT : BIN_ROW_RIGHT);
    bool scalar = p->kind == (left ? BIN_SCALAR_LEFT : BIN_SCALAR_RIGHT) || (!left && p->kind == BIN_SLICE_LEFT);
    if (row) return ts_new_tensor_1d(g, TS_F32, p->cols, "row");
    if (scalar) return ts_new_tensor_1d(g, TS_F32, 1, "scalar");
    if (left && p->kind == BIN_SLICE_LEFT)
        return ts_slice(g, ts_new_tensor_2d(g, TS_F32, p->rows, p->cols + 9, "wide"), 1, 4, p->cols);
    return matrix_leaf(g, p->rows, p->cols, left && p->kind == BIN_VIEW_LEFT);
}

static ts_tensor *build_binary(ts_graph *g, const void *arg) {
    const ew_spec *p = arg;
    ts_tensor *src[2] = {binary_operand(g, p, true), binary_operand(g, p, false)};
    if (p->op == TS_OP_DIV) { /* a divisor near 3, far from zero */
        ts_tensor *b = src[1];
        src[1] = ts_add(g, ts_scale(g, b, 0.01f), ts_fill(g, TS_F32, b->ndim, b->shape, 3.0f));
    }
    return ts_op_node(g, p->op, src, 2, NULL, 0, NULL, 0);
}

static ts_tensor *build_unary(ts_graph *g, const void *arg) {
    const ew_spec *p = arg;
    ts_tensor *x = matrix_leaf(g, p->rows, p->cols, p->kind == 3);
    float fp[2] = {p->p0, p->p1};
    if (p->op == TS_OP_RELU_BACK || p->op == TS_OP_SILU_BACK) {
        ts_tensor *src[2] = {x, ts_new_tensor_2d(g, TS_F32, p->rows, p->cols, "dy")};
        return ts_op_node(g, p->op, src, 2, NULL, 0, NULL, 0);
    }
    return ts_op_node(g, p->op, &x, 1, NULL, 0, fp, 2);
}

/* softmax over the last axis of [2, rows, cols] with a [rows, cols] mask (kind 1), no mask
 * (kind 0), over the middle axis (kind 2; V4's compressor pools that way), over a transposed
 * view (kind 3, falls back), or over the middle axis of [2, rows, cols + 5] whose last three
 * rows and last five columns are -inf (kind 4: masked entries, and columns that must become 0). */
static ts_tensor *build_softmax(ts_graph *g, const void *arg) {
    const ew_spec *p = arg;
    if (p->kind == 3) return ts_softmax(g, matrix_leaf(g, p->rows, p->cols, true), 1, NULL);
    if (p->kind == 4) {
        int64_t low[3] = {2, 3, p->cols}, right[3] = {2, p->rows, 5};
        ts_tensor *rows[2] = {ts_new_tensor_3d(g, TS_F32, 2, p->rows - 3, p->cols, "x"),
                              ts_fill(g, TS_F32, 3, low, -INFINITY)};
        ts_tensor *cols[2] = {ts_concat(g, rows, 2, 1), ts_fill(g, TS_F32, 3, right, -INFINITY)};
        return ts_softmax(g, ts_concat(g, cols, 2, 2), 1, NULL);
    }
    ts_tensor *x = ts_new_tensor_3d(g, TS_F32, 2, p->rows, p->cols, "x");
    ts_tensor *mask = p->kind == 1 ? ts_new_tensor_2d(g, TS_F32, p->rows, p->cols, "mask") : NULL;
    return ts_softmax(g, x, p->kind == 2 ? 1 : 2, mask);
}

/* rms_norm of [rows, cols] with a weight (kind 1), without (kind 0), or of a transposed view
 * (kind 3, falls back). */
static ts_tensor *build_rms_norm(ts_graph *g, const void *arg) {
    const ew_spec *p = arg;
    ts_tensor *x = matrix_leaf(g, p->rows, p->cols, p->kind == 3);
    ts_tensor *w = p->kind == 1 ? ts_new_tensor_1d(g, TS_F32, p->cols, "w") : NULL;
    return ts_rms_norm(g, x, w, 1e-5f);
}

/* The -inf entries of build_softmax's kind 4 come out exactly 0 (e^-inf; all -inf columns),
 * which the nmse comparison cannot tell from tiny values. */
static void check_masked_zeros(const ew_spec *p) {
    run_result r;
    if (!run_graph(ts_backend_cpu_new, 1, build_softmax, p, 1, &r)) return;
    int64_t cols = p->cols + 5, bad = 0;
    for (int64_t i = 0; i < r.n; i++) {
        int64_t row = i / cols % p->rows, col = i % cols;
        if ((row >= p->rows - 3 || col >= p->cols) && r.out[i] != 0.0f) bad++;
    }
    CHECK(r.n == 2 * p->rows * cols && bad == 0, "masked softmax: %lld -inf entries not 0", (long long)bad);
    free(r.out);
}

static void test_elementwise(void) {
    static const ts_op binary_ops[] = {TS_OP_ADD, TS_OP_SUB, TS_OP_MUL, TS_OP_DIV};
    char what[96];
    for (int i = 0; i < 4; i++)
        for (int kind = 0; kind < BIN_KINDS; kind++) {
            ew_spec p = {.op = binary_ops[i], .rows = 37, .cols = 1001, .kind = kind};
            snprintf(what, sizeof what, "%s operand kind %d", ts_op_name(p.op), kind);
            compare_backends(what, build_binary, &p, kind != BIN_VIEW_LEFT);
        }
    static const ew_spec unary[] = {
        {.op = TS_OP_SCALE, .p0 = -0.37f}, {.op = TS_OP_RELU}, {.op = TS_OP_SILU},
        {.op = TS_OP_CLAMP, .p0 = -0.5f, .p1 = 0.25f}, {.op = TS_OP_RELU_BACK}, {.op = TS_OP_SILU_BACK},
    };
    for (size_t i = 0; i < sizeof unary / sizeof unary[0]; i++)
        for (int view = 0; view < 2; view++) {
            ew_spec p = unary[i];
            p.rows = 33;
            p.cols = 1000;
            p.kind = view ? 3 : 0;
            snprintf(what, sizeof what, "%s%s", ts_op_name(p.op), view ? " transposed (falls back)" : "");
            compare_backends(what, build_unary, &p, !view);
        }
    static const int row_kinds[] = {0, 1, 3};
    for (int i = 0; i < 3; i++) {
        ew_spec p = {.rows = 7, .cols = 1000, .kind = row_kinds[i]};
        snprintf(what, sizeof what, "softmax kind %d", p.kind);
        compare_backends(what, build_softmax, &p, p.kind != 3);
        snprintf(what, sizeof what, "rms_norm kind %d", p.kind);
        compare_backends(what, build_rms_norm, &p, p.kind != 3);
    }
    ew_spec middle = {.rows = 33, .cols = 64, .kind = 2};
    compare_backends("softmax over the middle axis", build_softmax, &middle, true);
    ew_spec masked = {.rows = 33, .cols = 64, .kind = 4};
    compare_backends("softmax over the middle axis with -inf entries and columns", build_softmax, &masked, true);
    check_masked_zeros(&masked);
}

/* ---------------------------------------------------------------- concat, get_rows */

/* concat along axis 1 of [2, 5, 8]'s two column halves (slices: half rows per block) around a
 * contiguous [2, 3, 4]. */
static ts_tensor *build_concat_slices(ts_graph *g, const void *arg) {
    ts_tensor *x = ts_new_tensor_3d(g, TS_F32, 2, 5, 8, "x");
    ts_tensor *parts[3] = {ts_slice(g, x, 2, 4, 4), ts_new_tensor_3d(g, TS_F32, 2, 3, 4, "y"), ts_slice(g, x, 2, 0, 4)};
    return ts_concat(g, parts, 3, 1);
}

/* concat along axis 0 of a transposed view (element-sized blocks) and a contiguous matrix. */
static ts_tensor *build_concat_transposed(ts_graph *g, const void *arg) {
    ts_tensor *parts[2] = {matrix_leaf(g, 7, 33, true), ts_new_tensor_2d(g, TS_F32, 3, 33, "y")};
    return ts_concat(g, parts, 2, 0);
}

/* Rows of a [33, 3, 5] table (or of a transposed [33, 15] view, which falls back) picked by the
 * top-5 indices of each row of a [4, 33] matrix: ids that are valid by construction. */
static ts_tensor *build_get_rows(ts_graph *g, const void *arg) {
    bool transposed = *(const bool *)arg;
    ts_tensor *values = NULL, *ids = NULL;
    if (ts_topk(g, ts_new_tensor_2d(g, TS_F32, 4, 33, "x"), 5, &values, &ids) != TS_OK) return NULL;
    return ts_get_rows(g, transposed ? matrix_leaf(g, 33, 15, true) : ts_new_tensor_3d(g, TS_F32, 33, 3, 5, "t"), ids);
}

/* The top 16 of each row of [x | x] (x [5, 300]): every value twice, so ties must go to the
 * lower index as in the reference; *arg: from a transposed view (falls back). */
static ts_tensor *build_topk(ts_graph *g, const void *arg) {
    bool transposed = *(const bool *)arg;
    ts_tensor *x = matrix_leaf(g, 5, 300, transposed), *parts[2] = {x, x}, *values = NULL, *ids = NULL;
    ts_tensor *row = transposed ? x : ts_concat(g, parts, 2, 1);
    return ts_topk(g, row, 16, &values, &ids) == TS_OK ? ids : NULL;
}

/* The scores of each row's top 5 of [2, 3, 33] gathered back from x (ids valid by construction),
 * along the last axis (*arg false) or, from x's transpose, along the first (falls back). */
static ts_tensor *build_gather(ts_graph *g, const void *arg) {
    bool first_axis = *(const bool *)arg;
    ts_tensor *x = ts_new_tensor_3d(g, TS_F32, 2, 3, 33, "x"), *values = NULL, *ids = NULL;
    if (ts_topk(g, x, 5, &values, &ids) != TS_OK) return NULL;
    if (!first_axis) return ts_gather(g, x, 2, ids);
    return ts_gather(g, ts_cont(g, ts_permute(g, x, (int[]){2, 1, 0})), 0, ts_cont(g, ts_permute(g, ids, (int[]){2, 1, 0})));
}

static void test_moves(void) {
    compare_backends("concat of row halves", build_concat_slices, NULL, true);
    compare_backends("concat of a transposed view", build_concat_transposed, NULL, true);
    static const bool transposed[2] = {false, true};
    compare_backends("get_rows", build_get_rows, &transposed[0], true);
    compare_backends("get_rows of a transposed table (falls back)", build_get_rows, &transposed[1], false);
    compare_backends("gather along the last axis", build_gather, &transposed[0], true);
    compare_backends("gather along the first axis (falls back)", build_gather, &transposed[1], false);
    compare_backends("topk with ties", build_topk, &transposed[0], true);
    compare_backends("topk of a transposed view (falls back)", build_topk, &transposed[1], false);
}

/* ---------------------------------------------------------------- determinism */

/* The fast backend on 1, 2 and 3 threads gives the same bits (the GEMM's parallel threshold
 * lowered so that even these shapes split across threads). */
static void check_same_bits(const char *what, build_fn build, const void *arg) {
    run_result one, other;
    if (!run_graph(ts_backend_cpu_new, 1, build, arg, 1, &one)) return;
    for (int threads = 2; threads <= 3; threads++) {
        if (!run_graph(ts_backend_cpu_new, threads, build, arg, 1, &other)) break;
        CHECK(other.n == one.n && memcmp(other.out, one.out, (size_t)one.n * sizeof(float)) == 0,
              "%s: %d threads differ from 1", what, threads);
        free(other.out);
    }
    free(one.out);
}

static void test_determinism(void) {
    ts_gemm_set_parallel_threshold(1);
    mm_spec mm = {.m = 200, .n = 150, .k = 300, .tb = true};
    check_same_bits("matmul 200x150x300", build_matmul_2d, &mm);
    mm_spec small_m = {.m = 3, .n = 500, .k = 70};
    check_same_bits("matmul 3x500x70", build_matmul_2d, &small_m);
    check_same_bits("matmul broadcast batches", build_broadcast_batches, NULL);
    ts_gemm_set_parallel_threshold(0);
    ew_spec bias = {.op = TS_OP_ADD, .rows = 100, .cols = 999, .kind = BIN_ROW_RIGHT};
    check_same_bits("add bias row", build_binary, &bias);
    ew_spec silu = {.op = TS_OP_SILU, .rows = 100, .cols = 999};
    check_same_bits("silu", build_unary, &silu);
    ew_spec sm = {.rows = 100, .cols = 999, .kind = 1};
    check_same_bits("softmax", build_softmax, &sm);
    check_same_bits("rms_norm", build_rms_norm, &sm);
}

/* ---------------------------------------------------------------- timing */

/* 512^3, or 128^3 with TS_TEST_QUICK=1 (scripts/test.sh sets it under qemu, where the reference
 * backend alone would take most of a minute). */
static void time_large_matmul(void) {
    int64_t size = getenv("TS_TEST_QUICK") && strcmp(getenv("TS_TEST_QUICK"), "1") == 0 ? 128 : 512;
    mm_spec p = {.m = size, .n = size, .k = size};
    run_result ref = {0}, fast = {0};
    if (!run_graph(ts_backend_cpu_ref_new, 0, build_matmul_2d, &p, 1, &ref)) return;
    if (run_graph(ts_backend_cpu_new, 0, build_matmul_2d, &p, 3, &fast)) {
        double flops = 2.0 * (double)(size * size * size);
        printf("matmul %lldx%lldx%lld f32, all cores: cpu-ref %.1f ms (%.2f GFLOP/s), "
               "cpu %.2f ms (%.1f GFLOP/s, GEMM tier %s): %.0fx faster\n",
               (long long)size, (long long)size, (long long)size, 1e3 * ref.seconds, flops / ref.seconds * 1e-9,
               1e3 * fast.seconds, flops / fast.seconds * 1e-9, ts_gemm_tier_name(), ref.seconds / fast.seconds);
        CHECK(nmse(fast.out, ref.out, ref.n) <= F32_TOLERANCE, "%lld^3: nmse %.3g", (long long)size,
              nmse(fast.out, ref.out, ref.n));
        free(fast.out);
    }
    free(ref.out);
}

/* ---------------------------------------------------------------- registry */

static void test_registry(void) {
    const ts_backend_entry *e = ts_backend_registry_find("cpu");
    CHECK(e && e->create == ts_backend_cpu_new, "backend 'cpu' is not registered");
    CHECK(ts_backend_registry_count() >= 2 && strcmp(ts_backend_registry_get(0)->name, "cpu-ref") == 0,
          "the reference backend must stay first");
    ts_backend *be = NULL;
    CHECK(ts_backend_cpu_new(2, &be) == TS_OK && be, "creating cpu");
    if (!be) return;
    ts_backend_info info;
    ts_backend_get_info(be, &info);
    CHECK(strcmp(info.name, "cpu") == 0 && info.n_threads == 2 && info.host_visible, "info: %s, %d threads", info.name,
          info.n_threads);
    ts_backend_free(be);
}

/* dots and axpys of the active tier against its dot and axpy: whole 64-float blocks, single
 * vectors and a masked tail; row counts around the 4-row groups. */
static void test_vmath_many_rows(void) {
    const ts_vmath *vm = ts_vmath_active();
    enum { ROWS = 9, LEN = 141 };
    static const int64_t lens[] = {1, 7, 8, 64, 128, 77, LEN};
    float a[LEN], x[ROWS][LEN], w[ROWS], got[ROWS], y_want[LEN], y_got[LEN];
    const float *rows[ROWS];
    srand(7);
    for (int64_t i = 0; i < LEN; i++) a[i] = (float)rand() / RAND_MAX - 0.5f;
    for (int r = 0; r < ROWS; r++) {
        rows[r] = x[r];
        w[r] = (float)rand() / RAND_MAX;
        for (int64_t i = 0; i < LEN; i++) x[r][i] = (float)rand() / RAND_MAX - 0.5f;
    }
    for (size_t l = 0; l < sizeof lens / sizeof lens[0]; l++)
        for (int count = 0; count <= ROWS; count++) {
            int64_t n = lens[l];
            vm->dots(a, rows, count, n, got);
            for (int r = 0; r < count; r++)
                CHECK(memcmp(&got[r], &(float){vm->dot(a, x[r], n)}, sizeof(float)) == 0, "dots n %lld row %d of %d",
                      (long long)n, r, count);
            for (int64_t i = 0; i < LEN; i++) y_want[i] = y_got[i] = a[i];
            for (int r = 0; r < count; r++) vm->axpy(y_want, w[r], x[r], n);
            vm->axpys(y_got, w, rows, count, n);
            CHECK(memcmp(y_want, y_got, sizeof y_want) == 0, "axpys n %lld, %d rows", (long long)n, count);
        }
}

int main(void) {
    test_registry();
    test_vmath_many_rows();
    test_matmul_odd_shapes();
    test_matmul_transposes();
    test_matmul_batches();
    test_matmul_slices_and_fallbacks();
    test_elementwise();
    test_moves();
    test_determinism();
    time_large_matmul();
    return check_summary("test_fast_kernels");
}
