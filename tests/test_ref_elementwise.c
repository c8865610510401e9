/* test_ref_elementwise.c - checks the reference kernels of ref_elementwise.c (fill, copy/cast,
 * concat, binary, unary, reductions, sum_to, unary backward, max backward) against values
 * computed here by hand or with plain loops written independently of the kernels.
 *
 * No planner is involved: bind_all gives every non-view node its own buffer and points views
 * into their root's buffer, and run_all calls ts_cpu_reference_kernels[op] node by node. The
 * whole suite runs once with a 1-thread and once with a 2-thread pool, and a large graph is
 * checked to come out bit-identical under both. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "tessera/backend.h"

#define TOL_F64 1e-13
#define TOL_F32 2.5e-7  /* a few f32 ulps (relative) */
#define TOL_BF16 4e-3   /* half a bf16 ulp is at most 2^-8 relative */

static ts_threadpool *g_pool;
static int g_threads;

/* ---------------------------------------------------------------- storage and running */

/* Every buffer handed out by bind_all, freed by release_all at the end of each test. */
static void **g_bufs;
static int g_n_bufs, g_cap_bufs;

static void *track(void *p) {
    if (g_n_bufs == g_cap_bufs) {
        g_cap_bufs = g_cap_bufs ? 2 * g_cap_bufs : 64;
        g_bufs = realloc(g_bufs, (size_t)g_cap_bufs * sizeof *g_bufs);
        if (!g_bufs) abort();
    }
    if (!p) abort();
    g_bufs[g_n_bufs++] = p;
    return p;
}

static void release_all(void) {
    for (int i = 0; i < g_n_bufs; i++) free(g_bufs[i]);
    g_n_bufs = 0;
}

/* What a planner without reuse would do: non-views get their own zeroed buffer, views the
 * address of their first element inside their root's buffer (byte-sized dtypes only). */
static void bind_all(ts_graph *g) {
    for (int i = 0; i < ts_graph_n_nodes(g); i++) {
        ts_tensor *t = ts_graph_node(g, i);
        if (t->view_src)
            t->data = (char *)t->view_src->data + t->offset * (int64_t)ts_dtype_bytes(t->dtype, 1);
        else
            t->data = track(calloc(1, ts_nbytes(t) + 16));
    }
}

static ts_status run_node(ts_graph *g, ts_tensor *t) {
    ts_cpu_kernel k = ts_cpu_reference_kernels[t->op];
    if (!k) return TS_ERR_UNSUPPORTED;
    ts_cpu_ctx ctx = {.graph = g, .pool = g_pool};
    return k(&ctx, t);
}

/* Runs every op node in graph order; leaves and views have no kernel. */
static ts_status run_all(ts_graph *g) {
    for (int i = 0; i < ts_graph_n_nodes(g); i++) {
        ts_tensor *t = ts_graph_node(g, i);
        if (t->op == TS_OP_NONE || ts_is_view(t)) continue;
        ts_status s = run_node(g, t);
        if (s != TS_OK) return s;
    }
    return TS_OK;
}

static void finish(ts_graph *g) {
    ts_graph_free(g);
    release_all();
}

/* Element i of a contiguous tensor (leaves, op outputs, reshape views of them). */
static double get(const ts_tensor *t, int64_t i) { return ts_load_f64(t->data, t->dtype, i); }
static void set(ts_tensor *t, int64_t i, double v) { ts_store_f64(t->data, t->dtype, i, v); }
static void set_list(ts_tensor *t, const double *v, int64_t n) {
    for (int64_t i = 0; i < n; i++) set(t, i, v[i]);
}

/* ---------------------------------------------------------------- comparisons */

static bool near(double got, double want, double rtol, double atol) {
    if (isnan(want)) return isnan(got);
    if (isinf(want)) return got == want;
    return fabs(got - want) <= rtol * fabs(want) + atol;
}

/* One CHECK per tensor: all n contiguous elements of t against want, naming the first miss. */
static void expect_tol(const ts_tensor *t, const double *want, int64_t n, double rtol, double atol, const char *what) {
    CHECK(t && ts_nelements(t) == n, "%s: output has %lld elements, want %lld", what,
          t ? (long long)ts_nelements(t) : -1LL, (long long)n);
    if (!t || ts_nelements(t) != n) return;
    int64_t bad = -1;
    for (int64_t i = 0; i < n && bad < 0; i++)
        if (!near(get(t, i), want[i], rtol, atol)) bad = i;
    CHECK(bad < 0, "%s (%d threads): element %lld is %.17g, want %.17g", what, g_threads, (long long)bad,
          bad >= 0 ? get(t, bad) : 0.0, bad >= 0 ? want[bad] : 0.0);
}

static void expect(const ts_tensor *t, const double *want, int64_t n, double rtol, const char *what) {
    expect_tol(t, want, n, rtol, 0.0, what);
}

static void expect_shape(const ts_tensor *t, int ndim, const int64_t *shape, const char *what) {
    bool ok = t && t->ndim == ndim;
    for (int d = 0; ok && d < ndim; d++) ok = t->shape[d] == shape[d];
    CHECK(ok, "%s: wrong output shape", what);
}

/* ---------------------------------------------------------------- fill */

static void test_fill(void) {
    ts_graph *g = ts_graph_new();
    int64_t s23[2] = {2, 3}, s5[1] = {5}, big[1] = {10001};
    ts_tensor *f = ts_fill(g, TS_F32, 2, s23, 1.5f);
    ts_tensor *h = ts_fill(g, TS_BF16, 1, s5, 0.1f);
    ts_tensor *n = ts_fill(g, TS_I32, 1, s5, -7.0f);
    ts_tensor *p = ts_fill(g, TS_F4_E2M1, 1, big, 3.0f); /* packed: two elements per byte */
    ts_tensor *s = ts_fill(g, TS_F64, 0, NULL, -2.25f);  /* scalar */
    CHECK_OK(ts_graph_status(g), g);
    bind_all(g);
    CHECK_OK(run_all(g), g);

    double w[6] = {1.5, 1.5, 1.5, 1.5, 1.5, 1.5};
    expect(f, w, 6, 0, "fill f32");
    /* 0.1 = 1.6 * 2^-4; bf16 keeps 7 fraction bits: round(1.6 * 128) / 128 = 205/128 */
    double wb[5];
    for (int i = 0; i < 5; i++) wb[i] = 205.0 / 128.0 / 16.0;
    expect(h, wb, 5, 0, "fill bf16 (rounded 0.1)");
    bool ints_ok = true;
    for (int i = 0; i < 5; i++) ints_ok = ints_ok && ((const int32_t *)n->data)[i] == -7;
    CHECK(ints_ok, "fill i32: not all -7");
    int64_t bad = -1;
    for (int64_t i = 0; i < big[0] && bad < 0; i++)
        if (get(p, i) != 3.0) bad = i;
    CHECK(bad < 0, "fill f4_e2m1 (%d threads): element %lld is %g", g_threads, (long long)bad, bad >= 0 ? get(p, bad) : 0.0);
    CHECK(get(s, 0) == -2.25, "fill scalar: %g", get(s, 0));
    finish(g);
}

/* ---------------------------------------------------------------- copy / cast */

static void test_copy_views(void) {
    ts_graph *g = ts_graph_new();
    ts_tensor *x = ts_new_tensor_3d(g, TS_F32, 2, 3, 4, "x");
    int perm[3] = {2, 0, 1};
    ts_tensor *xp = ts_permute(g, x, perm);               /* [4,2,3]: xp[a,b,c] = x[b,c,a] */
    ts_tensor *c_perm = ts_cont(g, xp);
    ts_tensor *c_slice = ts_cont(g, ts_slice(g, x, 1, 1, 2)); /* [2,2,4]: x[i, j+1, k] */
    ts_tensor *y = ts_new_tensor_2d(g, TS_F64, 3, 1, "y");
    int64_t s234[3] = {2, 3, 4};
    ts_tensor *c_expand = ts_cont(g, ts_expand(g, y, 3, s234)); /* stride-0 input */
    ts_tensor *c_perm_slice = ts_cont(g, ts_slice(g, xp, 0, 1, 2)); /* [2,2,3]: x[b, c, a+1] */
    CHECK_OK(ts_graph_status(g), g);
    bind_all(g);
    for (int i = 0; i < 24; i++) set(x, i, 100 * (i / 12) + 10 * (i / 4 % 3) + i % 4 + 0.5);
    for (int j = 0; j < 3; j++) set(y, j, j - 1.25);
    CHECK_OK(run_all(g), g);

    double w[24];
    for (int a = 0; a < 4; a++)
        for (int b = 0; b < 2; b++)
            for (int c = 0; c < 3; c++) w[(a * 2 + b) * 3 + c] = 100 * b + 10 * c + a + 0.5;
    expect(c_perm, w, 24, 0, "copy of permuted view");
    for (int i = 0; i < 2; i++)
        for (int j = 0; j < 2; j++)
            for (int k = 0; k < 4; k++) w[(i * 2 + j) * 4 + k] = 100 * i + 10 * (j + 1) + k + 0.5;
    expect(c_slice, w, 16, 0, "copy of sliced view");
    for (int i = 0; i < 24; i++) w[i] = (i / 4 % 3) - 1.25;
    expect(c_expand, w, 24, 0, "copy of expanded view");
    for (int a = 0; a < 2; a++)
        for (int b = 0; b < 2; b++)
            for (int c = 0; c < 3; c++) w[(a * 2 + b) * 3 + c] = 100 * b + 10 * c + (a + 1) + 0.5;
    expect(c_perm_slice, w, 12, 0, "copy of sliced permuted view");
    finish(g);
}

static void test_cast(void) {
    ts_graph *g = ts_graph_new();
    ts_tensor *a = ts_new_tensor_1d(g, TS_F32, 7, "a");
    ts_tensor *b = ts_cast(g, a, TS_BF16);
    ts_tensor *c = ts_cast(g, b, TS_F32);
    ts_tensor *d = ts_cast(g, b, TS_F64);
    ts_tensor *ai = ts_cast(g, a, TS_I32);
    /* same-dtype copy of i64 values double cannot hold: must be exact */
    ts_tensor *z = ts_new_tensor_2d(g, TS_I64, 2, 3, "z");
    ts_tensor *zt = ts_cont(g, ts_transpose(g, z, 0, 1));
    CHECK_OK(ts_graph_status(g), g);
    bind_all(g);
    const double in[7] = {1 + 0x1p-10, 3.14159, -2.5, 1 + 3 * 0x1p-9, 1 + 0x1p-8, 1 + 3 * 0x1p-8, -2.7};
    set_list(a, in, 7);
    const int64_t big = (int64_t)1 << 60;
    for (int i = 0; i < 6; i++) ((int64_t *)z->data)[i] = big + 3 * i + 1;
    CHECK_OK(run_all(g), g);

    /* bf16 has 7 fraction bits: spacing 2^-7 in [1,2), 2^-6 in [2,4); ties go to even */
    const double want[7] = {
        1.0,           /* 1 + 2^-10: a quarter ulp, rounds down */
        3.140625,      /* 3.14159 = 1.5708 * 2: round(1.5708 * 128) = 201 -> 201/64 */
        -2.5,          /* exact */
        1 + 0x1p-7,    /* 1 + 0.75 ulp rounds up */
        1.0,           /* exactly half an ulp: tie to even (down) */
        1 + 0x1p-6,    /* 1.5 ulps: tie to even (up) */
        -2.703125,     /* -2.7 = -1.35 * 2: round(1.35 * 128) = 173 -> 173/64 */
    };
    expect(c, want, 7, 0, "f32 -> bf16 -> f32");
    expect(d, want, 7, 0, "f32 -> bf16 -> f64");
    CHECK(get(c, 1) != (float)3.14159, "bf16 rounding not visible");
    const int32_t want_i[7] = {1, 3, -2, 1, 1, 1, -2}; /* truncation toward zero */
    bool ints_ok = true;
    for (int i = 0; i < 7; i++) ints_ok = ints_ok && ((const int32_t *)ai->data)[i] == want_i[i];
    CHECK(ints_ok, "f32 -> i32 cast does not truncate toward zero");
    bool exact = true;
    for (int r = 0; r < 3; r++)
        for (int col = 0; col < 2; col++)
            exact = exact && ((const int64_t *)zt->data)[r * 2 + col] == big + 3 * (col * 3 + r) + 1;
    CHECK(exact, "i64 copy of a transposed view is not exact");
    finish(g);
}

/* ---------------------------------------------------------------- concat */

static void test_concat(void) {
    ts_graph *g = ts_graph_new();
    ts_tensor *a = ts_new_tensor_3d(g, TS_F32, 2, 1, 3, "a");
    ts_tensor *b = ts_new_tensor_3d(g, TS_F32, 2, 2, 3, "b");
    ts_tensor *ab[2] = {a, b};
    ts_tensor *cat2 = ts_concat(g, ab, 2, 1); /* [2,3,3] */

    ts_tensor *p = ts_new_tensor_3d(g, TS_F64, 2, 1, 2, "p");
    ts_tensor *q_root = ts_new_tensor_3d(g, TS_F64, 2, 2, 3, "q_root");
    int perm[3] = {0, 2, 1};
    ts_tensor *q = ts_permute(g, q_root, perm); /* [2,3,2]: q[i,j,k] = q_root[i,k,j] */
    ts_tensor *r = ts_new_tensor_3d(g, TS_F64, 2, 2, 2, "r");
    ts_tensor *pqr[3] = {p, q, r};
    ts_tensor *cat3 = ts_concat(g, pqr, 3, -2); /* [2,6,2] */

    ts_tensor *s_root = ts_new_tensor_2d(g, TS_BF16, 4, 2, "s_root");
    ts_tensor *t = ts_new_tensor_2d(g, TS_BF16, 1, 2, "t");
    ts_tensor *st[2] = {ts_slice(g, s_root, 0, 1, 2), t};
    ts_tensor *cat_bf16 = ts_concat(g, st, 2, 0); /* [3,2] */
    CHECK_OK(ts_graph_status(g), g);
    bind_all(g);
    for (int i = 0; i < 6; i++) set(a, i, 100 + i);
    for (int i = 0; i < 12; i++) set(b, i, 200 + i);
    for (int i = 0; i < 4; i++) set(p, i, 1 + i);
    for (int i = 0; i < 12; i++) set(q_root, i, 10 + i);
    for (int i = 0; i < 8; i++) set(r, i, 50 + i);
    for (int i = 0; i < 8; i++) set(s_root, i, i + 1);
    set(t, 0, -1);
    set(t, 1, -2);
    CHECK_OK(run_all(g), g);

    int64_t s233[3] = {2, 3, 3}, s262[3] = {2, 6, 2};
    expect_shape(cat2, 3, s233, "concat of 2");
    double w[24];
    for (int i = 0; i < 2; i++)
        for (int j = 0; j < 3; j++)
            for (int k = 0; k < 3; k++)
                w[(i * 3 + j) * 3 + k] = j < 1 ? 100 + (i * 1 + j) * 3 + k : 200 + (i * 2 + j - 1) * 3 + k;
    expect(cat2, w, 18, 0, "concat of 2 on axis 1");

    expect_shape(cat3, 3, s262, "concat of 3");
    for (int i = 0; i < 2; i++)
        for (int j = 0; j < 6; j++)
            for (int k = 0; k < 2; k++) {
                double v;
                if (j < 1) v = 1 + (i * 1 + j) * 2 + k;
                else if (j < 4) v = 10 + (i * 2 + k) * 3 + (j - 1); /* q_root[i, k, j-1] */
                else v = 50 + (i * 2 + j - 4) * 2 + k;
                w[(i * 6 + j) * 2 + k] = v;
            }
    expect(cat3, w, 24, 0, "concat of 3 (one permuted) on axis -2");

    const double wb[6] = {3, 4, 5, 6, -1, -2};
    expect(cat_bf16, wb, 6, 0, "concat bf16 of a slice on axis 0");
    finish(g);
}

/* ---------------------------------------------------------------- binary */

static void test_binary(void) {
    ts_graph *g = ts_graph_new();
    ts_tensor *a1 = ts_new_tensor_3d(g, TS_F32, 2, 3, 4, "a1");
    ts_tensor *b1 = ts_new_tensor_2d(g, TS_F32, 3, 1, "b1");
    ts_tensor *add = ts_add(g, a1, b1); /* [2,3,4] + [3,1] */

    ts_tensor *a2 = ts_new_tensor_1d(g, TS_F64, 4, "a2");
    ts_tensor *b2 = ts_new_tensor_3d(g, TS_F64, 2, 1, 4, "b2");
    ts_tensor *mul = ts_mul(g, a2, b2); /* [4] * [2,1,4] */

    ts_tensor *a3 = ts_new_tensor_2d(g, TS_F32, 3, 2, "a3");
    ts_tensor *b3 = ts_new_tensor_2d(g, TS_F32, 2, 3, "b3");
    ts_tensor *sub = ts_sub(g, a3, ts_transpose(g, b3, 0, 1));

    ts_tensor *a4 = ts_new_tensor_2d(g, TS_F64, 2, 3, "a4");
    ts_tensor *b4 = ts_new_tensor_2d(g, TS_F64, 2, 1, "b4");
    ts_tensor *div = ts_div(g, a4, b4);

    ts_tensor *a5 = ts_new_tensor_1d(g, TS_BF16, 5, "a5");
    ts_tensor *b5 = ts_new_tensor(g, TS_BF16, 0, NULL, "b5"); /* scalar */
    ts_tensor *add_bf16 = ts_add(g, a5, b5);

    ts_tensor *a6 = ts_new_tensor_2d(g, TS_F32, 3, 1, "a6");
    ts_tensor *b6 = ts_new_tensor_2d(g, TS_F32, 3, 4, "b6");
    int64_t s34[2] = {3, 4};
    ts_tensor *add_exp = ts_add(g, ts_expand(g, a6, 2, s34), b6);

    ts_tensor *a7 = ts_new_tensor_2d(g, TS_F32, 2, 1, "a7");
    ts_tensor *b7 = ts_new_tensor_1d(g, TS_F32, 3, "b7");
    ts_tensor *div_both = ts_div(g, a7, b7); /* both sides stretch: [2,3] */

    ts_tensor *a8 = ts_new_tensor_1d(g, TS_I32, 4, "a8");
    ts_tensor *b8 = ts_new_tensor_1d(g, TS_I32, 1, "b8");
    ts_tensor *div_int = ts_div(g, a8, b8);
    CHECK_OK(ts_graph_status(g), g);
    bind_all(g);
    for (int i = 0; i < 24; i++) set(a1, i, i * 0.25);
    for (int j = 0; j < 3; j++) set(b1, j, 10 * (j + 1));
    for (int k = 0; k < 4; k++) set(a2, k, k + 1);
    for (int i = 0; i < 8; i++) set(b2, i, i + 0.5);
    for (int i = 0; i < 6; i++) set(a3, i, i);
    for (int i = 0; i < 6; i++) set(b3, i, 10 * i);
    const double v4[6] = {1, -1, 0, 6, -6, 3}, w4[2] = {0, 2};
    set_list(a4, v4, 6);
    set_list(b4, w4, 2);
    const double v5[5] = {1, 2, 3, 4.5, 256};
    set_list(a5, v5, 5);
    set(b5, 0, 0.25);
    for (int i = 0; i < 3; i++) set(a6, i, i + 1);
    for (int i = 0; i < 12; i++) set(b6, i, i);
    set(a7, 0, 1);
    set(a7, 1, -3);
    for (int j = 0; j < 3; j++) set(b7, j, j + 1);
    const double v8[4] = {7, -7, 9, -9};
    set_list(a8, v8, 4);
    set(b8, 0, 2);
    CHECK_OK(run_all(g), g);

    double w[24];
    for (int i = 0; i < 2; i++)
        for (int j = 0; j < 3; j++)
            for (int k = 0; k < 4; k++) w[(i * 3 + j) * 4 + k] = ((i * 3 + j) * 4 + k) * 0.25 + 10 * (j + 1);
    expect(add, w, 24, TOL_F32, "add [2,3,4] + [3,1]");
    int64_t s214[3] = {2, 1, 4};
    expect_shape(mul, 3, s214, "mul [4] * [2,1,4]");
    for (int i = 0; i < 2; i++)
        for (int k = 0; k < 4; k++) w[i * 4 + k] = (k + 1) * (i * 4 + k + 0.5);
    expect(mul, w, 8, 0, "mul [4] * [2,1,4]");
    for (int r = 0; r < 3; r++)
        for (int c = 0; c < 2; c++) w[r * 2 + c] = (r * 2 + c) - 10 * (c * 3 + r);
    expect(sub, w, 6, 0, "sub with a transposed operand");
    const double wd[6] = {INFINITY, -INFINITY, NAN, 3, -3, 1.5};
    expect(div, wd, 6, 0, "div [2,3] / [2,1] with zeros");
    const double w5[5] = {1.25, 2.25, 3.25, 4.75, 256}; /* 256.25 is not a bf16: spacing 2 there */
    expect(add_bf16, w5, 5, 0, "add bf16 + scalar");
    for (int r = 0; r < 3; r++)
        for (int c = 0; c < 4; c++) w[r * 4 + c] = (r + 1) + (r * 4 + c);
    expect(add_exp, w, 12, 0, "add with an expanded operand");
    for (int i = 0; i < 2; i++)
        for (int j = 0; j < 3; j++) w[i * 3 + j] = (float)((i ? -3.0 : 1.0) / (j + 1));
    expect(div_both, w, 6, TOL_F32, "div [2,1] / [3]");
    const int32_t wi[4] = {3, -3, 4, -4};
    bool ok = true;
    for (int i = 0; i < 4; i++) ok = ok && ((const int32_t *)div_int->data)[i] == wi[i];
    CHECK(ok, "i32 division does not truncate toward zero");
    finish(g);
}

/* ---------------------------------------------------------------- unary */

static double sigmoid_naive(double x) { return 1.0 / (1.0 + exp(-x)); }
static double softplus_naive(double x) { return x > 30 ? x + exp(-x) : log1p(exp(x)); }

/* Runs op (parameters p0, p1) over x[0..n) stored as dtype dt and compares with want. */
static void check_unary(ts_op op, float p0, float p1, ts_dtype dt, const double *x, const double *want, int n,
                        const char *what) {
    ts_graph *g = ts_graph_new();
    ts_tensor *in = ts_new_tensor_1d(g, dt, n, "x");
    float fp[2] = {p0, p1};
    ts_tensor *out = ts_op_node(g, op, &in, 1, NULL, 0, fp, 2);
    CHECK_OK(ts_graph_status(g), g);
    if (out) {
        bind_all(g);
        set_list(in, x, n);
        CHECK_OK(run_all(g), g);
        char label[96];
        snprintf(label, sizeof label, "%s %s", what, ts_dtype_name(dt));
        expect(out, want, n, dt == TS_F64 ? TOL_F64 : dt == TS_F32 ? TOL_F32 : TOL_BF16, label);
    }
    finish(g);
}

static void test_unary(void) {
    enum { N = 11 };
    const double x[N] = {-1000, -20, -2, -0.5, 0, 0.5, 2, 20, 1000, NAN, -INFINITY};
    double w[N];
    const ts_dtype dts[3] = {TS_F64, TS_F32, TS_BF16};
    for (int t = 0; t < 3; t++) {
        ts_dtype dt = dts[t];
        for (int i = 0; i < N; i++) w[i] = x[i] * 2.5;
        check_unary(TS_OP_SCALE, 2.5f, 0, dt, x, w, N, "scale 2.5");
        for (int i = 0; i < N; i++) w[i] = exp(x[i]);
        check_unary(TS_OP_EXP, 0, 0, dt, x, w, N, "exp");
        for (int i = 0; i < N; i++) w[i] = sigmoid_naive(x[i]);
        check_unary(TS_OP_SIGMOID, 0, 0, dt, x, w, N, "sigmoid");
        for (int i = 0; i < N; i++) w[i] = softplus_naive(x[i]);
        w[10] = 0; /* softplus(-inf) = 0 */
        check_unary(TS_OP_SOFTPLUS, 0, 0, dt, x, w, N, "softplus");
        for (int i = 0; i < N; i++) w[i] = x[i] / (1.0 + exp(-x[i]));
        w[10] = NAN; /* -inf * sigmoid(-inf) = -inf * 0 */
        check_unary(TS_OP_SILU, 0, 0, dt, x, w, N, "silu");
        for (int i = 0; i < N; i++) w[i] = isnan(x[i]) ? NAN : x[i] > 0 ? x[i] : 0;
        check_unary(TS_OP_RELU, 0, 0, dt, x, w, N, "relu");
        for (int i = 0; i < N; i++) w[i] = isnan(x[i]) ? NAN : x[i] < -1 ? -1 : x[i] > 1 ? 1 : x[i];
        check_unary(TS_OP_CLAMP, -1, 1, dt, x, w, N, "clamp [-1,1]");
        for (int i = 0; i < N; i++) w[i] = isnan(x[i]) ? NAN : x[i] > 0.5 ? 0.5 : x[i];
        check_unary(TS_OP_CLAMP, -INFINITY, 0.5f, dt, x, w, N, "clamp [-inf,0.5]");
        for (int i = 0; i < N; i++) w[i] = isnan(x[i]) ? NAN : x[i] < 0 ? 0 : x[i];
        check_unary(TS_OP_CLAMP, 0, INFINITY, dt, x, w, N, "clamp [0,inf]");

        const double lx[6] = {0, -1, 1, 0.5, 4, INFINITY};
        const double lw[6] = {-INFINITY, NAN, 0, -0.69314718055994530942, 1.3862943611198906188, INFINITY};
        check_unary(TS_OP_LOG, 0, 0, dt, lx, lw, 6, "log");
        const double sw[6] = {0, NAN, 1, 0.70710678118654752440, 2, INFINITY};
        check_unary(TS_OP_SQRT, 0, 0, dt, lx, sw, 6, "sqrt");
    }
    /* the stable forms must not produce NaN at large |x| (checked above); spot values by hand */
    const double hx[3] = {0, 0, 0};
    const double hw_sig[3] = {0.5, 0.5, 0.5}, hw_sp[3] = {0.69314718055994530942, 0.69314718055994530942, 0.69314718055994530942};
    check_unary(TS_OP_SIGMOID, 0, 0, TS_F64, hx, hw_sig, 3, "sigmoid(0)");
    check_unary(TS_OP_SOFTPLUS, 0, 0, TS_F64, hx, hw_sp, 3, "softplus(0)");

    /* a permuted input */
    ts_graph *g = ts_graph_new();
    ts_tensor *xr = ts_new_tensor_2d(g, TS_F32, 2, 3, "x");
    ts_tensor *s = ts_sigmoid(g, ts_transpose(g, xr, 0, 1)); /* [3,2] */
    CHECK_OK(ts_graph_status(g), g);
    bind_all(g);
    for (int i = 0; i < 6; i++) set(xr, i, i - 2.5);
    CHECK_OK(run_all(g), g);
    double ws[6];
    for (int r = 0; r < 3; r++)
        for (int c = 0; c < 2; c++) ws[r * 2 + c] = sigmoid_naive((c * 3 + r) - 2.5);
    expect(s, ws, 6, TOL_F32, "sigmoid of a transposed view");
    finish(g);
}

/* ---------------------------------------------------------------- reductions */

static double reduce_input(int i) { return ((i * 7) % 11) - 5 + 0.125 * i; }

/* Expected SUM/MEAN/MAX of the [2,3,4] tensor reduce_input over axis a, accumulated by
 * scattering every input element into its output slot (a mean is the sum divided once). */
static void reduce_expected(ts_op op, int a, double *out) {
    const int shape[3] = {2, 3, 4};
    int os[3] = {2, 3, 4};
    os[a] = 1;
    int n_out = os[0] * os[1] * os[2];
    for (int o = 0; o < n_out; o++) out[o] = op == TS_OP_MAX ? -INFINITY : 0;
    for (int i = 0; i < 2; i++)
        for (int j = 0; j < 3; j++)
            for (int k = 0; k < 4; k++) {
                int c[3] = {i, j, k};
                c[a] = 0;
                int o = (c[0] * os[1] + c[1]) * os[2] + c[2];
                double v = reduce_input((i * 3 + j) * 4 + k);
                if (op == TS_OP_MAX) out[o] = v > out[o] ? v : out[o];
                else out[o] += v;
            }
    if (op == TS_OP_MEAN)
        for (int o = 0; o < n_out; o++) out[o] /= shape[a];
}

static void test_reduce(void) {
    const ts_op ops[3] = {TS_OP_SUM, TS_OP_MEAN, TS_OP_MAX};
    const ts_dtype dts[2] = {TS_F64, TS_F32};
    for (int t = 0; t < 2; t++)
        for (int o = 0; o < 3; o++)
            for (int axis = -1; axis < 3; axis++)
                for (int keep = 0; keep < 2; keep++) {
                    ts_graph *g = ts_graph_new();
                    ts_tensor *x = ts_new_tensor_3d(g, dts[t], 2, 3, 4, "x");
                    ts_tensor *r = ops[o] == TS_OP_SUM    ? ts_sum(g, x, axis, keep)
                                   : ops[o] == TS_OP_MEAN ? ts_mean(g, x, axis, keep)
                                                          : ts_max(g, x, axis, keep);
                    CHECK_OK(ts_graph_status(g), g);
                    if (!r) {
                        finish(g);
                        continue;
                    }
                    bind_all(g);
                    for (int i = 0; i < 24; i++) set(x, i, reduce_input(i));
                    CHECK_OK(run_all(g), g);
                    int a = axis < 0 ? 2 : axis;
                    int64_t shape[3] = {2, 3, 4}, kept[3];
                    shape[a] = 1;
                    int nd = 0;
                    for (int d = 0; d < 3; d++)
                        if (keep || d != a) kept[nd++] = shape[d];
                    char what[96];
                    snprintf(what, sizeof what, "%s %s axis %d keepdim %d", ts_op_name(ops[o]), ts_dtype_name(dts[t]),
                             axis, keep);
                    expect_shape(r, nd, kept, what);
                    double w[12];
                    reduce_expected(ops[o], a, w);
                    expect(r, w, 24 / (a == 0 ? 2 : a == 1 ? 3 : 4), dts[t] == TS_F64 ? TOL_F64 : TOL_F32, what);
                    finish(g);
                }

    ts_graph *g = ts_graph_new();
    ts_tensor *xn = ts_new_tensor_2d(g, TS_F32, 2, 3, "xn");
    ts_tensor *mx_row = ts_max(g, xn, 1, true);
    ts_tensor *xm = ts_new_tensor_2d(g, TS_F64, 2, 2, "xm");
    ts_tensor *mx_m1 = ts_max(g, xm, 1, false), *mx_m0 = ts_max(g, xm, 0, false);
    ts_tensor *xr = ts_new_tensor_2d(g, TS_F64, 3, 4, "xr");
    ts_tensor *sum_t = ts_sum(g, ts_transpose(g, xr, 0, 1), 0, true); /* [1,3]: row sums of xr */
    ts_tensor *xb = ts_new_tensor_2d(g, TS_BF16, 2, 4, "xb");
    ts_tensor *mean_b = ts_mean(g, xb, 1, false);
    ts_tensor *ye = ts_new_tensor_2d(g, TS_F32, 1, 4, "ye");
    int64_t s54[2] = {5, 4};
    ts_tensor *sum_e = ts_sum(g, ts_expand(g, ye, 2, s54), 0, false);
    CHECK_OK(ts_graph_status(g), g);
    bind_all(g);
    const double vn[6] = {1, NAN, 3, -INFINITY, -INFINITY, -INFINITY};
    set_list(xn, vn, 6);
    const double vm[4] = {NAN, 1, 2, 1};
    set_list(xm, vm, 4);
    for (int i = 0; i < 12; i++) set(xr, i, i * i);
    const double vb[8] = {1, 2, 3, 4, 0.5, 0.5, 0.5, 0.75};
    set_list(xb, vb, 8);
    for (int i = 0; i < 4; i++) set(ye, i, i - 1.5);
    CHECK_OK(run_all(g), g);
    const double wn[2] = {NAN, -INFINITY}, wm1[2] = {NAN, 2}, wm0[2] = {NAN, 1};
    expect(mx_row, wn, 2, 0, "max propagates NaN; all -inf row");
    expect(mx_m1, wm1, 2, 0, "max NaN first in row");
    expect(mx_m0, wm0, 2, 0, "max NaN first in column");
    const double wt[3] = {0 + 1 + 4 + 9, 16 + 25 + 36 + 49, 64 + 81 + 100 + 121};
    expect(sum_t, wt, 3, 0, "sum of a transposed view");
    const double wb[2] = {2.5, 0.5625};
    expect(mean_b, wb, 2, 0, "mean bf16");
    const double we[4] = {-7.5, -2.5, 2.5, 7.5};
    expect(sum_e, we, 4, 0, "sum over an expanded (stride 0) axis");
    finish(g);
}

/* ---------------------------------------------------------------- sum_to */

/* Expected sum of x[2,3,4] (values 0.5 i - 3) down to a right-aligned target shape. */
static void sum_to_expected(int nd, const int64_t *tshape, double *out, int64_t n_out) {
    for (int64_t o = 0; o < n_out; o++) out[o] = 0;
    for (int i = 0; i < 24; i++) {
        int c[3] = {i / 12, i / 4 % 3, i % 4};
        int64_t o = 0;
        for (int dd = 0; dd < nd; dd++) {
            int d = dd + 3 - nd;
            o = o * tshape[dd] + (tshape[dd] == 1 ? 0 : c[d]);
        }
        out[o] += 0.5 * i - 3;
    }
}

static void test_sum_to(void) {
    static const struct { int nd; int64_t shape[3]; } targets[] = {
        {2, {3, 1}}, {1, {4}}, {3, {2, 1, 1}}, {0, {0}}, {3, {1, 3, 4}}, {3, {2, 3, 1}}, {2, {1, 1}}, {1, {1}},
    };
    const ts_dtype dts[2] = {TS_F64, TS_F32};
    for (int t = 0; t < 2; t++)
        for (size_t k = 0; k < sizeof targets / sizeof targets[0]; k++) {
            ts_graph *g = ts_graph_new();
            ts_tensor *x = ts_new_tensor_3d(g, dts[t], 2, 3, 4, "x");
            ts_tensor *r = ts_sum_to(g, x, targets[k].nd, targets[k].shape);
            CHECK_OK(ts_graph_status(g), g);
            if (!r) {
                finish(g);
                continue;
            }
            char what[64];
            snprintf(what, sizeof what, "sum_to %s case %zu", ts_dtype_name(dts[t]), k);
            expect_shape(r, targets[k].nd, targets[k].shape, what);
            bind_all(g);
            for (int i = 0; i < 24; i++) set(x, i, 0.5 * i - 3);
            CHECK_OK(run_all(g), g);
            double w[24];
            int64_t n = ts_nelements(r);
            sum_to_expected(targets[k].nd, targets[k].shape, w, n);
            expect(r, w, n, 0, what);
            finish(g);
        }

    ts_graph *g = ts_graph_new();
    ts_tensor *y = ts_new_tensor_2d(g, TS_F32, 3, 1, "y");
    int64_t s234[3] = {2, 3, 4}, s34[2] = {3, 4};
    ts_tensor *r = ts_sum_to(g, ts_expand(g, y, 3, s234), 2, s34);
    CHECK_OK(ts_graph_status(g), g);
    bind_all(g);
    for (int j = 0; j < 3; j++) set(y, j, j + 0.25);
    CHECK_OK(run_all(g), g);
    double w[12];
    for (int j = 0; j < 3; j++)
        for (int k = 0; k < 4; k++) w[j * 4 + k] = 2 * (j + 0.25);
    expect(r, w, 12, 0, "sum_to of an expanded view");
    finish(g);
}

/* ---------------------------------------------------------------- unary backward */

/* Builds op(x, dy) with fp = {lo, hi} in dtypes (xt, dyt), runs it and compares. */
static void check_unary_back(ts_op op, float lo, float hi, ts_dtype xt, ts_dtype dyt, const double *x,
                             const double *dy, const double *want, int n, double rtol, double atol, const char *what) {
    ts_graph *g = ts_graph_new();
    ts_tensor *src[2] = {ts_new_tensor_1d(g, xt, n, "x"), ts_new_tensor_1d(g, dyt, n, "dy")};
    float fp[2] = {lo, hi};
    ts_tensor *out = ts_op_node(g, op, src, 2, NULL, 0, fp, 2);
    CHECK_OK(ts_graph_status(g), g);
    if (out) {
        CHECK(out->dtype == dyt, "%s: output dtype is not dy's", what);
        bind_all(g);
        set_list(src[0], x, n);
        set_list(src[1], dy, n);
        CHECK_OK(run_all(g), g);
        expect_tol(out, want, n, rtol, atol, what);
    }
    finish(g);
}

static double silu_f(double x) { return x / (1 + exp(-x)); }

/* swiglu and swiglu_back against the formula written out: gate capped at the limit, up clamped
 * to +-limit (bounds pass the gradient), and unclamped with limit 0. */
static void test_swiglu(void) {
    enum { N = 5 };
    const double a[N] = {-2, 0.3, 1.0, 0.75, -0.6}, b[N] = {0.5, -1.2, 2.0, 0.4, -0.75}, dy[N] = {1, -2, 0.5, 3, 1.5};
    for (int clamped = 0; clamped < 2; clamped++) {
        double L = clamped ? 0.75 : 0, want[N], want_back[2 * N];
        for (int i = 0; i < N; i++) {
            double ac = clamped && a[i] > L ? L : a[i], bc = clamped ? fmin(fmax(b[i], -L), L) : b[i];
            double s = 1 / (1 + exp(-ac));
            bool a_passes = !clamped || a[i] <= L, b_passes = !clamped || fabs(b[i]) <= L;
            want[i] = silu_f(ac) * bc;
            want_back[i] = a_passes ? dy[i] * bc * (s + ac * s * (1 - s)) : 0;
            want_back[N + i] = b_passes ? dy[i] * silu_f(ac) : 0;
        }
        ts_graph *g = ts_graph_new();
        ts_tensor *src[3] = {ts_new_tensor_1d(g, TS_F64, N, "a"), ts_new_tensor_1d(g, TS_F64, N, "b"),
                             ts_new_tensor_1d(g, TS_F64, N, "dy")};
        float fp[1] = {(float)L};
        ts_tensor *out = ts_swiglu(g, src[0], src[1], (float)L), *back = ts_op_node(g, TS_OP_SWIGLU_BACK, src, 3, NULL, 0, fp, 1);
        CHECK_OK(ts_graph_status(g), g);
        if (out && back) {
            bind_all(g);
            set_list(src[0], a, N);
            set_list(src[1], b, N);
            set_list(src[2], dy, N);
            CHECK_OK(run_all(g), g);
            expect(out, want, N, TOL_F64, clamped ? "swiglu limit 0.75" : "swiglu unclamped");
            expect(back, want_back, 2 * N, TOL_F64, clamped ? "swiglu_back limit 0.75" : "swiglu_back unclamped");
        }
        finish(g);
    }
}

static void test_unary_back(void) {
    const double y[3] = {0.1, 0.5, 0.9}, dy3[3] = {1, 2, -3}, w_sig[3] = {0.09, 0.5, -0.27};
    check_unary_back(TS_OP_SIGMOID_BACK, 0, 0, TS_F64, TS_F64, y, dy3, w_sig, 3, TOL_F64, 0, "sigmoid_back f64");
    check_unary_back(TS_OP_SIGMOID_BACK, 0, 0, TS_F64, TS_BF16, y, dy3, w_sig, 3, TOL_BF16, 0, "sigmoid_back bf16 dy");

    /* silu'(x) by central differences, independent of the kernel's closed form */
    const double xs[5] = {-3, -0.5, 0, 0.5, 3}, dy5[5] = {1, 1, 2, 1, -1};
    double w_silu[5];
    const double h = 1e-5;
    for (int i = 0; i < 5; i++) w_silu[i] = dy5[i] * (silu_f(xs[i] + h) - silu_f(xs[i] - h)) / (2 * h);
    check_unary_back(TS_OP_SILU_BACK, 0, 0, TS_F64, TS_F64, xs, dy5, w_silu, 5, 1e-8, 1e-9, "silu_back f64");
    check_unary_back(TS_OP_SILU_BACK, 0, 0, TS_F32, TS_F32, xs, dy5, w_silu, 5, 1e-6, 1e-7, "silu_back f32");
    const double w_silu0[1] = {1.0}; /* silu'(0) = 1/2, dy = 2 */
    check_unary_back(TS_OP_SILU_BACK, 0, 0, TS_F64, TS_F64, &xs[2], &dy5[2], w_silu0, 1, 0, 0, "silu_back(0)");

    const double xr[4] = {-1, 0, 2, NAN}, dyr[4] = {5, 5, 5, 5}, w_relu[4] = {0, 0, 5, 0};
    check_unary_back(TS_OP_RELU_BACK, 0, 0, TS_F32, TS_F32, xr, dyr, w_relu, 4, 0, 0, "relu_back");

    /* PyTorch's convention: the gradient passes where min <= x <= max, bounds included */
    const double xc[6] = {-2, -1, 0, 1, 2, NAN}, dyc[6] = {3, 3, 3, 3, 3, 3}, w_c[6] = {0, 3, 3, 3, 0, 0};
    check_unary_back(TS_OP_CLAMP_BACK, -1, 1, TS_F32, TS_F32, xc, dyc, w_c, 6, 0, 0, "clamp_back [-1,1]");
    const double xl[5] = {-INFINITY, -1e30, 0.5, 0.6, INFINITY}, w_l[5] = {3, 3, 3, 0, 0};
    check_unary_back(TS_OP_CLAMP_BACK, -INFINITY, 0.5f, TS_F64, TS_F64, xl, dyc, w_l, 5, 0, 0, "clamp_back [-inf,0.5]");
    const double xh[4] = {-0.1, 0, INFINITY, NAN}, w_h[4] = {0, 3, 3, 0};
    check_unary_back(TS_OP_CLAMP_BACK, 0, INFINITY, TS_F64, TS_F64, xh, dyc, w_h, 4, 0, 0, "clamp_back [0,inf]");
}

/* ---------------------------------------------------------------- max backward */

static ts_tensor *max_back(ts_graph *g, ts_tensor *x, ts_tensor *y, ts_tensor *dy, int axis) {
    ts_tensor *src[3] = {x, y, dy};
    int32_t ip[1] = {axis};
    return ts_op_node(g, TS_OP_MAX_BACK, src, 3, ip, 1, NULL, 0);
}

static void test_max_back(void) {
    ts_graph *g = ts_graph_new();
    ts_tensor *x1 = ts_new_tensor_2d(g, TS_F64, 2, 4, "x1");
    ts_tensor *y1 = ts_max(g, x1, 1, true);
    ts_tensor *dy1 = ts_new_tensor_2d(g, TS_F64, 2, 1, "dy1");
    ts_tensor *dx1 = max_back(g, x1, y1, dy1, 1);

    ts_tensor *x2 = ts_new_tensor_2d(g, TS_F32, 3, 2, "x2");
    ts_tensor *y2 = ts_max(g, x2, 0, true);
    ts_tensor *dy2 = ts_new_tensor_2d(g, TS_F32, 1, 2, "dy2");
    ts_tensor *dx2 = max_back(g, x2, y2, dy2, 0);

    ts_tensor *x3 = ts_new_tensor_2d(g, TS_F64, 1, 4, "x3");
    ts_tensor *y3 = ts_max(g, x3, 1, true);
    ts_tensor *dy3 = ts_new_tensor_2d(g, TS_F64, 1, 1, "dy3");
    ts_tensor *dx3 = max_back(g, x3, y3, dy3, -1);

    /* transposed x, dy expanded with stride 0 */
    ts_tensor *x4_root = ts_new_tensor_2d(g, TS_F64, 4, 2, "x4_root");
    ts_tensor *x4 = ts_transpose(g, x4_root, 0, 1);
    ts_tensor *y4 = ts_max(g, x4, 1, true);
    ts_tensor *dy4 = ts_new_tensor_2d(g, TS_F64, 1, 1, "dy4");
    int64_t s21[2] = {2, 1};
    ts_tensor *dx4 = max_back(g, x4, y4, ts_expand(g, dy4, 2, s21), 1);
    CHECK_OK(ts_graph_status(g), g);
    bind_all(g);
    const double v1[8] = {1, 3, 3, 2, 5, -1, 5, 5}, d1[2] = {10, 20};
    set_list(x1, v1, 8);
    set_list(dy1, d1, 2);
    const double v2[6] = {2, 0, 2, 4, 1, 4}, d2[2] = {1, -1};
    set_list(x2, v2, 6);
    set_list(dy2, d2, 2);
    const double v3[4] = {1, NAN, 3, NAN};
    set_list(x3, v3, 4);
    set(dy3, 0, 7);
    const double v4[8] = {1, 5, 3, -1, 3, 5, 2, 5}; /* columns are v1's rows */
    set_list(x4_root, v4, 8);
    set(dy4, 0, 4);
    CHECK_OK(run_all(g), g);

    const double wy1[2] = {3, 5}, w1[8] = {0, 10, 0, 0, 20, 0, 0, 0};
    expect(y1, wy1, 2, 0, "max for max_back");
    expect(dx1, w1, 8, 0, "max_back ties on axis 1: first index wins");
    const double w2[6] = {1, 0, 0, -1, 0, 0};
    expect(dx2, w2, 6, TOL_F32, "max_back ties on axis 0");
    const double w3[4] = {0, 7, 0, 0};
    expect(dx3, w3, 4, 0, "max_back NaN max goes to the first NaN");
    const double w4[8] = {0, 4, 0, 0, 4, 0, 0, 0};
    expect(dx4, w4, 8, 0, "max_back of a transposed x with expanded dy");
    finish(g);
}

/* ---------------------------------------------------------------- in place */

static void test_inplace(void) {
    ts_graph *g = ts_graph_new();
    ts_tensor *a = ts_new_tensor_3d(g, TS_F32, 2, 3, 4, "a");
    ts_tensor *b = ts_new_tensor_1d(g, TS_F32, 4, "b");
    ts_tensor *add = ts_add(g, a, b); /* written over a */
    ts_tensor *m0 = ts_new_tensor_2d(g, TS_F64, 3, 5, "m0");
    ts_tensor *m1 = ts_new_tensor_2d(g, TS_F64, 3, 5, "m1");
    ts_tensor *mul = ts_mul(g, m0, m1); /* written over m1 */
    enum { BIG = 15000 }; /* several thread chunks */
    ts_tensor *u = ts_new_tensor_2d(g, TS_F32, 3, BIG / 3, "u");
    ts_tensor *sc = ts_scale(g, u, -2.0f); /* written over u */
    ts_tensor *sg = ts_sigmoid(g, sc);      /* written over u again */
    ts_tensor *cx = ts_new_tensor_1d(g, TS_F64, BIG, "cx");
    ts_tensor *cdy = ts_new_tensor_1d(g, TS_F64, BIG, "cdy");
    ts_tensor *cb_src[2] = {cx, cdy};
    float lim[2] = {-1, 1};
    ts_tensor *cb = ts_op_node(g, TS_OP_CLAMP_BACK, cb_src, 2, NULL, 0, lim, 2); /* over dy */
    ts_tensor *sx = ts_new_tensor_1d(g, TS_F64, 7, "sx");
    ts_tensor *sdy = ts_new_tensor_1d(g, TS_F64, 7, "sdy");
    ts_tensor *sb_src[2] = {sx, sdy};
    ts_tensor *sb = ts_op_node(g, TS_OP_SILU_BACK, sb_src, 2, NULL, 0, NULL, 0); /* over x */
    CHECK_OK(ts_graph_status(g), g);
    bind_all(g);
    add->data = a->data;
    mul->data = m1->data;
    sc->data = u->data;
    sg->data = u->data;
    cb->data = cdy->data;
    sb->data = sx->data;
    for (int i = 0; i < 24; i++) set(a, i, i * 0.5);
    for (int k = 0; k < 4; k++) set(b, k, k + 1);
    for (int i = 0; i < 15; i++) set(m0, i, i - 7);
    for (int i = 0; i < 15; i++) set(m1, i, 0.5 * i);
    for (int i = 0; i < BIG; i++) set(u, i, (i % 100) * 0.01);
    for (int i = 0; i < BIG; i++) set(cx, i, (i % 41) * 0.1 - 2);
    for (int i = 0; i < BIG; i++) set(cdy, i, i % 7 + 1);
    for (int i = 0; i < 7; i++) set(sx, i, i - 3);
    for (int i = 0; i < 7; i++) set(sdy, i, 1);
    CHECK_OK(run_all(g), g);

    double w[24];
    for (int i = 0; i < 24; i++) w[i] = i * 0.5 + (i % 4 + 1);
    expect(add, w, 24, 0, "add in place over src0");
    double wm[15];
    for (int i = 0; i < 15; i++) wm[i] = (i - 7) * 0.5 * i;
    expect(mul, wm, 15, 0, "mul in place over src1");
    double *wb = malloc(BIG * sizeof *wb);
    for (int i = 0; i < BIG; i++) wb[i] = sigmoid_naive(-2.0 * (double)(float)((i % 100) * 0.01));
    expect(sg, wb, BIG, TOL_F32, "scale then sigmoid in place");
    for (int i = 0; i < BIG; i++) {
        double xv = (i % 41) * 0.1 - 2;
        wb[i] = (xv >= -1 && xv <= 1) ? i % 7 + 1 : 0;
    }
    expect(cb, wb, BIG, 0, "clamp_back in place over dy");
    for (int i = 0; i < 7; i++) {
        double xv = i - 3, s = sigmoid_naive(xv);
        wb[i] = s + xv * s * (1 - s);
    }
    expect(sb, wb, 7, TOL_F64, "silu_back in place over x");
    free(wb);
    finish(g);
}

/* ---------------------------------------------------------------- errors */

static void test_errors(void) {
    ts_graph *g = ts_graph_new();
    ts_tensor *a = ts_new_tensor_1d(g, TS_I32, 2, "a");
    ts_tensor *b = ts_new_tensor_1d(g, TS_I32, 2, "b");
    ts_tensor *q = ts_div(g, a, b);
    bind_all(g);
    set(a, 0, 1);
    set(a, 1, 2);
    set(b, 0, 1);
    CHECK(run_node(g, q) == TS_ERR_RANGE, "integer division by zero not reported");
    CHECK(ts_graph_status(g) == TS_ERR_RANGE && strstr(ts_graph_error(g), "div"), "message: '%s'", ts_graph_error(g));
    finish(g);

    g = ts_graph_new();
    ts_tensor *x = ts_new_tensor_1d(g, TS_F32, 2, "x");
    ts_tensor *e = ts_exp(g, x);
    bind_all(g);
    e->dtype = TS_I32; /* not buildable through the constructors; the kernel must still refuse it */
    CHECK(run_node(g, e) == TS_ERR_DTYPE, "exp into i32 not refused");
    CHECK(ts_graph_status(g) == TS_ERR_DTYPE && strstr(ts_graph_error(g), "exp"), "message: '%s'", ts_graph_error(g));
    finish(g);

    g = ts_graph_new();
    x = ts_new_tensor_1d(g, TS_F32, 2, "x");
    ts_tensor *r = ts_relu(g, x);
    bind_all(g);
    x->data = NULL;
    CHECK(run_node(g, r) == TS_ERR_STATE, "missing input storage not reported");
    finish(g);
}

/* ---------------------------------------------------------------- thread-count independence */

/* A graph of every kernel on inputs large enough to be split across threads. */
static ts_graph *build_big(void) {
    ts_graph *g = ts_graph_new();
    ts_tensor *x = ts_new_tensor_3d(g, TS_F32, 3, 50, 70, "x");
    ts_tensor *b = ts_new_tensor_2d(g, TS_F32, 50, 1, "b");
    ts_tensor *x64 = ts_cast(g, x, TS_F64);
    int perm[3] = {2, 0, 1};
    ts_tensor *xp = ts_permute(g, x, perm);
    ts_add(g, x, b);
    ts_div(g, x, b);
    ts_silu(g, xp);
    ts_softplus(g, x64);
    ts_cast(g, xp, TS_BF16);
    ts_sum(g, x, 1, true);
    ts_mean(g, xp, 2, true);
    ts_sum(g, x64, 0, true);
    ts_tensor *y = ts_max(g, x, 1, true);
    ts_tensor *dy = ts_new_tensor_3d(g, TS_F32, 3, 1, 70, "dy");
    max_back(g, x, y, dy, 1);
    int64_t s70[1] = {70}, s31[2] = {3, 1}, s150[2] = {1, 50};
    ts_sum_to(g, x, 1, s70);
    ts_sum_to(g, xp, 2, s31); /* xp is [70,3,50] */
    ts_sum_to(g, xp, 2, s150);
    ts_tensor *parts[3] = {x, ts_slice(g, x, 1, 5, 20), ts_cont(g, ts_slice(g, x, 1, 0, 7))};
    ts_concat(g, parts, 3, 1);
    ts_tensor *src[2] = {x, x};
    float lim[2] = {-0.5f, 0.5f};
    ts_op_node(g, TS_OP_CLAMP_BACK, src, 2, NULL, 0, lim, 2);
    int64_t s1[1] = {20000}; /* even: an odd count leaves an unused padding nibble */
    ts_fill(g, TS_F4_E2M1, 1, s1, -1.5f);
    return g;
}

static void fill_big_inputs(ts_graph *g) {
    ts_rng rng;
    ts_rng_seed(&rng, 1234);
    for (int i = 0; i < ts_graph_n_nodes(g); i++) {
        ts_tensor *t = ts_graph_node(g, i);
        if (t->op != TS_OP_NONE) continue;
        for (int64_t k = 0; k < ts_nelements(t); k++) set(t, k, ts_rng_normal(&rng));
    }
}

static void test_threads_identical(ts_threadpool *one, ts_threadpool *two) {
    ts_graph *g = build_big();
    CHECK_OK(ts_graph_status(g), g);
    if (ts_graph_status(g) != TS_OK) {
        ts_graph_free(g);
        return;
    }
    bind_all(g);
    fill_big_inputs(g);
    int n = ts_graph_n_nodes(g);
    void **first = calloc((size_t)n, sizeof *first);
    g_pool = one;
    CHECK_OK(run_all(g), g);
    for (int i = 0; i < n; i++) {
        ts_tensor *t = ts_graph_node(g, i);
        if (t->op == TS_OP_NONE || ts_is_view(t)) continue;
        first[i] = malloc(ts_nbytes(t));
        memcpy(first[i], t->data, ts_nbytes(t));
        memset(t->data, 0xA5, ts_nbytes(t)); /* so a kernel that skips elements shows */
    }
    g_pool = two;
    CHECK_OK(run_all(g), g);
    for (int i = 0; i < n; i++) {
        ts_tensor *t = ts_graph_node(g, i);
        if (!first[i]) continue;
        CHECK(memcmp(first[i], t->data, ts_nbytes(t)) == 0, "%s node %d differs between 1 and 2 threads",
              ts_op_name(t->op), i);
        free(first[i]);
    }
    free(first);
    finish(g);
}

/* ---------------------------------------------------------------- main */

static void run_suite(void) {
    test_fill();
    test_copy_views();
    test_cast();
    test_concat();
    test_binary();
    test_unary();
    test_reduce();
    test_sum_to();
    test_unary_back();
    test_swiglu();
    test_max_back();
    test_inplace();
    test_errors();
}

int main(void) {
    ts_threadpool *pools[2] = {NULL, NULL};
    CHECK_OK(ts_threadpool_new(1, &pools[0]), NULL);
    CHECK_OK(ts_threadpool_new(2, &pools[1]), NULL);
    if (!pools[0] || !pools[1]) return check_summary("ref_elementwise");
    for (int p = 0; p < 2; p++) {
        g_pool = pools[p];
        g_threads = ts_threadpool_size(g_pool);
        run_suite();
    }
    test_threads_identical(pools[0], pools[1]);
    ts_threadpool_free(pools[0]);
    ts_threadpool_free(pools[1]);
    free(g_bufs);
    return check_summary("ref_elementwise");
}
