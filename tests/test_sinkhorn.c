/* test_sinkhorn.c - the fused Sinkhorn op (ts_sinkhorn, TS_OP_SINKHORN / _BACK).
 *
 *   1. The constructor: shapes, dtypes and parameters it refuses, with a one-line message, and
 *      the first error winning over later ones.
 *   2. Forward, reference backend, f64: equal (to a few ulps) to the composite of softmax, add,
 *      sum and div that mHC built before the op existed - the definition it replaces - and to a
 *      plain loop written here from the spec (section 2.3.1 step 6).
 *   3. Backward, reference backend, f64: the gradient through the fused op equals the gradient
 *      autodiff derives for that composite (an independent chain of simple backward rules).
 *   4. The "cpu" backend's f32 kernel against the reference, forward and backward, on mHC's
 *      shape, that it takes its fast path, and bit-identical results on 1, 2 and 3 threads.
 *      Its forward and backward (on AVX2 CPUs vector forms of the normalisation steps for
 *      n = 4) give the reference's bits: both round the same double arithmetic once. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "backends/cpu/fast_kernels.h"
#include "check.h"
#include "tessera/backend.h"

#define ITERS 20
#define EPS 1e-6f
#define TOKENS 39 /* odd, and 4k + 3: the f32 forward interleaves 4, then 2, then 1 matrix */
#define N 4

/* ---------------------------------------------------------------- 1. constructor */

static bool has(const char *s, const char *part) { return strstr(s, part) != NULL; }

static void test_constructor(void) {
    ts_graph *g = ts_graph_new();
    ts_tensor *x = ts_new_tensor_3d(g, TS_F32, 2, 4, 4, "x");
    ts_tensor *y = ts_sinkhorn(g, x, ITERS, EPS);
    CHECK(y && y->op == TS_OP_SINKHORN && ts_same_shape(x, y) && y->dtype == TS_F32 && y->ip[0] == ITERS &&
              y->fp[0] == EPS,
          "sinkhorn of f32[2,4,4]: %s", ts_graph_error(g));
    CHECK(!strcmp(ts_op_name(TS_OP_SINKHORN), "sinkhorn") && !strcmp(ts_op_name(TS_OP_SINKHORN_BACK), "sinkhorn_back"),
          "op names");
    ts_graph_free(g);

    struct {
        const char *what, *message;
        ts_status status;
        ts_dtype dtype;
        int ndim;
        int64_t shape[3];
        int iters;
        float eps;
    } bad[] = {
        {"not square", "[..., n, n]", TS_ERR_SHAPE, TS_F32, 3, {2, 4, 5}, ITERS, EPS},
        {"rank 1", "[..., n, n]", TS_ERR_SHAPE, TS_F32, 1, {4}, ITERS, EPS},
        {"n = 17", "n must be <= 16", TS_ERR_SHAPE, TS_F32, 2, {17, 17}, ITERS, EPS},
        {"integer", "float", TS_ERR_DTYPE, TS_I32, 2, {4, 4}, ITERS, EPS},
        {"iters 0", "iters 0 outside 1..100", TS_ERR_INVALID_ARG, TS_F32, 2, {4, 4}, 0, EPS},
        {"iters 101", "iters 101 outside", TS_ERR_INVALID_ARG, TS_F32, 2, {4, 4}, 101, EPS},
        {"eps < 0", "eps", TS_ERR_INVALID_ARG, TS_F32, 2, {4, 4}, ITERS, -1e-6f},
        {"eps NaN", "eps", TS_ERR_INVALID_ARG, TS_F32, 2, {4, 4}, ITERS, NAN},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        g = ts_graph_new();
        x = ts_new_tensor(g, bad[i].dtype, bad[i].ndim, bad[i].shape, "x");
        y = ts_sinkhorn(g, x, bad[i].iters, bad[i].eps);
        char first[1024];
        snprintf(first, sizeof first, "%s", ts_graph_error(g));
        CHECK(!y && ts_graph_status(g) == bad[i].status && has(first, "sinkhorn") && has(first, bad[i].message) &&
                  has(first, "'x'") && !strchr(first, '\n'),
              "%s: status %s, message '%s'", bad[i].what, ts_status_name(ts_graph_status(g)), first);
        /* the first error wins over a later one; a NULL input adds none */
        ts_sinkhorn(g, ts_new_tensor_2d(g, TS_F32, 3, 5, "later"), ITERS, EPS);
        ts_sinkhorn(g, NULL, ITERS, EPS);
        CHECK(!strcmp(ts_graph_error(g), first) && ts_graph_status(g) == bad[i].status,
              "%s: a later error replaced the first: %s", bad[i].what, ts_graph_error(g));
        ts_graph_free(g);
    }

    g = ts_graph_new(); /* the backward helper: dy must match x, two sources */
    x = ts_new_tensor_3d(g, TS_F32, 2, 4, 4, "x");
    ts_tensor *dy = ts_new_tensor_3d(g, TS_F32, 2, 3, 3, "dy");
    int32_t ip = ITERS;
    float fp = EPS;
    CHECK(!ts_op_node(g, TS_OP_SINKHORN_BACK, (ts_tensor *[]){x, dy}, 2, &ip, 1, &fp, 1) &&
              ts_graph_status(g) == TS_ERR_SHAPE && has(ts_graph_error(g), "dy must have the shape of x"),
          "sinkhorn_back with a mismatched dy: %s", ts_graph_error(g));
    ts_graph_free(g);
    g = ts_graph_new();
    x = ts_new_tensor_3d(g, TS_F32, 2, 4, 4, "x");
    CHECK(!ts_op_node(g, TS_OP_SINKHORN_BACK, &x, 1, &ip, 1, &fp, 1) && ts_graph_status(g) == TS_ERR_INVALID_ARG &&
              has(ts_graph_error(g), "expected 2"),
          "sinkhorn_back without dy: %s", ts_graph_error(g));
    ts_graph_free(g);
}

/* ---------------------------------------------------------------- helpers */

/* What mHC built before the fused op (spec 2.3.1 step 6 as graph ops). */
static ts_tensor *composite(ts_graph *g, ts_tensor *m0, int iters, float eps) {
    int64_t one = 1;
    ts_tensor *e = ts_fill(g, m0->dtype, 1, &one, eps);
    ts_tensor *k = ts_add(g, ts_softmax(g, m0, -1, NULL), e);
    for (int it = 0; it < iters; it++) {
        if (it > 0) k = ts_div(g, k, ts_add(g, ts_sum(g, k, -1, true), e));
        k = ts_div(g, k, ts_add(g, ts_sum(g, k, -2, true), e));
    }
    return k;
}

/* The spec's loop on one matrix, written independently of the kernels. */
static void spec_loop(const double *m0, double *k, int n, int iters, double eps) {
    for (int i = 0; i < n; i++) {
        double mx = -INFINITY, s = 0;
        for (int j = 0; j < n; j++) mx = fmax(mx, m0[i * n + j]);
        for (int j = 0; j < n; j++) s += exp(m0[i * n + j] - mx);
        for (int j = 0; j < n; j++) k[i * n + j] = exp(m0[i * n + j] - mx) / s + eps;
    }
    for (int it = 0; it < iters; it++)
        for (int pass = it > 0 ? 0 : 1; pass < 2; pass++) /* pass 0: rows, pass 1: columns */
            for (int a = 0; a < n; a++) {
                double s = eps;
                for (int b = 0; b < n; b++) s += pass ? k[b * n + a] : k[a * n + b];
                for (int b = 0; b < n; b++) {
                    if (pass) k[b * n + a] /= s;
                    else k[a * n + b] /= s;
                }
            }
}

static void random_values(double *v, int64_t n, uint64_t seed, double scale) {
    ts_rng r;
    ts_rng_seed(&r, seed);
    for (int64_t i = 0; i < n; i++) v[i] = scale * ts_rng_normal(&r);
}

static double max_abs_diff(const double *a, const double *b, int64_t n) {
    double m = 0;
    for (int64_t i = 0; i < n; i++) m = fmax(m, fabs(a[i] - b[i]));
    return m;
}

/* ---------------------------------------------------------------- 2, 3: f64 reference */

/* loss = sum(out * w) for the fused op (fused) or the composite; returns its outputs and the
 * gradient of x in out / dx (TOKENS x N x N each). */
static void run_f64(bool fused, const double *x0, const double *w0, double *out, double *dx) {
    ts_graph *g = ts_graph_new();
    ts_tensor *x = ts_set_param(ts_new_tensor_3d(g, TS_F64, TOKENS, N, N, "x"));
    ts_tensor *w = ts_new_tensor_3d(g, TS_F64, TOKENS, N, N, "w");
    ts_tensor *y = ts_set_output(fused ? ts_sinkhorn(g, x, ITERS, EPS) : composite(g, x, ITERS, EPS));
    int64_t n = TOKENS * N * N;
    ts_tensor *loss = ts_sum(g, ts_reshape(g, ts_mul(g, y, w), 1, &n), 0, true);
    ts_backend *be = NULL;
    CHECK_OK(ts_graph_backward(g, loss), g);
    CHECK_OK(ts_backend_cpu_ref_new(2, &be), g);
    CHECK_OK(ts_graph_alloc(g, be, NULL, NULL), g);
    CHECK_OK(ts_tensor_write(x, x0, (size_t)n * sizeof *x0), g);
    CHECK_OK(ts_tensor_write(w, w0, (size_t)n * sizeof *w0), g);
    CHECK_OK(ts_graph_compute(g), g);
    CHECK_OK(ts_tensor_read(y, out, (size_t)n * sizeof *out), g);
    CHECK_OK(ts_tensor_read(ts_grad(x), dx, (size_t)n * sizeof *dx), g);
    ts_graph_free(g);
    ts_backend_free(be);
}

static void test_reference_f64(void) {
    enum { n = TOKENS * N * N };
    static double x[n], w[n], fused[n], comp[n], loop[n], dfused[n], dcomp[n];
    random_values(x, n, 11, 2.0);
    random_values(w, n, 12, 1.0);
    run_f64(true, x, w, fused, dfused);
    run_f64(false, x, w, comp, dcomp);
    for (int t = 0; t < TOKENS; t++) spec_loop(x + t * N * N, loop + t * N * N, N, ITERS, EPS);
    double d_comp = max_abs_diff(fused, comp, n), d_loop = max_abs_diff(fused, loop, n);
    double g_scale = 0;
    for (int i = 0; i < n; i++) g_scale = fmax(g_scale, fabs(dcomp[i]));
    double d_grad = max_abs_diff(dfused, dcomp, n) / g_scale;
    printf("f64 reference, %d tokens of %dx%d, %d iterations: |fused - composite| %.1e, |fused - spec loop| %.1e, "
           "gradient vs composite's %.1e (relative to its max)\n",
           TOKENS, N, N, ITERS, d_comp, d_loop, d_grad);
    CHECK(d_comp <= 1e-15, "fused forward differs from the composite by %g", d_comp);
    CHECK(d_loop <= 1e-14, "fused forward differs from the spec loop by %g", d_loop);
    CHECK(d_grad <= 1e-12, "fused gradient differs from the composite's by %g", d_grad);
    double col_err = 0; /* the projection's defining property: columns sum to 1 (up to eps) */
    for (int t = 0; t < TOKENS; t++)
        for (int j = 0; j < N; j++) {
            double s = 0;
            for (int i = 0; i < N; i++) s += fused[t * N * N + i * N + j];
            col_err = fmax(col_err, fabs(s - 1));
        }
    CHECK(col_err <= 1e-5, "column sums off by %g", col_err);
}

/* ---------------------------------------------------------------- 4. the f32 kernel */

typedef struct {
    float out[TOKENS * N * N], dx[TOKENS * N * N];
    bool fast_fwd, fast_back;
} f32_run;

static void run_f32(ts_status (*make)(int, ts_backend **), int threads, const double *x0, const double *w0, f32_run *r) {
    enum { n = TOKENS * N * N };
    float xf[n], wf[n];
    for (int i = 0; i < n; i++) {
        xf[i] = (float)x0[i];
        wf[i] = (float)w0[i];
    }
    ts_graph *g = ts_graph_new();
    ts_tensor *x = ts_set_param(ts_new_tensor_3d(g, TS_F32, TOKENS, N, N, "x"));
    ts_tensor *w = ts_new_tensor_3d(g, TS_F32, TOKENS, N, N, "w");
    ts_tensor *y = ts_set_output(ts_sinkhorn(g, x, ITERS, EPS));
    int64_t len = n;
    ts_tensor *loss = ts_sum(g, ts_reshape(g, ts_mul(g, y, w), 1, &len), 0, true);
    ts_backend *be = NULL;
    CHECK_OK(ts_graph_backward(g, loss), g);
    CHECK_OK(make(threads, &be), g);
    CHECK_OK(ts_graph_alloc(g, be, NULL, NULL), g);
    CHECK_OK(ts_tensor_write_f32(x, xf, n), g);
    CHECK_OK(ts_tensor_write_f32(w, wf, n), g);
    CHECK_OK(ts_graph_compute(g), g);
    CHECK_OK(ts_tensor_read_f32(y, r->out, n), g);
    CHECK_OK(ts_tensor_read_f32(ts_grad(x), r->dx, n), g);
    r->fast_fwd = ts_fast_sinkhorn_applies(y);
    r->fast_back = false;
    for (int i = 0; i < ts_graph_n_nodes(g); i++) {
        ts_tensor *t = ts_graph_node(g, i);
        if (t->op == TS_OP_SINKHORN_BACK) r->fast_back = ts_fast_sinkhorn_applies(t);
    }
    ts_graph_free(g);
    ts_backend_free(be);
}

static double nmse(const float *x, const float *ref, int n) {
    double err = 0, energy = 0;
    for (int i = 0; i < n; i++) {
        err += ((double)x[i] - ref[i]) * ((double)x[i] - ref[i]);
        energy += (double)ref[i] * ref[i];
    }
    return err / (energy > 0 ? energy : 1);
}

static void test_fast_kernel(void) {
    enum { n = TOKENS * N * N };
    static double x[n], w[n];
    static f32_run ref, fast[3];
    random_values(x, n, 21, 2.0);
    random_values(w, n, 22, 1.0);
    run_f32(ts_backend_cpu_ref_new, 2, x, w, &ref);
    for (int t = 0; t < 3; t++) run_f32(ts_backend_cpu_new, t + 1, x, w, &fast[t]);
    double e_fwd = nmse(fast[1].out, ref.out, n), e_back = nmse(fast[1].dx, ref.dx, n);
    printf("f32 'cpu' kernel vs reference: nmse forward %.1e, backward %.1e\n", e_fwd, e_back);
    CHECK(fast[1].fast_fwd && fast[1].fast_back, "the f32 kernel did not take its fast path (fwd %d, back %d)",
          fast[1].fast_fwd, fast[1].fast_back);
    CHECK(e_fwd <= 1e-10 && e_back <= 1e-10, "f32 kernel off the reference: nmse %g / %g", e_fwd, e_back);
    CHECK(!memcmp(fast[1].out, ref.out, sizeof ref.out), "f32 forward gives other bits than the reference");
    CHECK(!memcmp(fast[1].dx, ref.dx, sizeof ref.dx), "f32 backward gives other bits than the reference");
    for (int t = 0; t < 3; t += 2)
        CHECK(!memcmp(fast[t].out, fast[1].out, sizeof fast[1].out) && !memcmp(fast[t].dx, fast[1].dx, sizeof fast[1].dx),
              "%d threads give other bits than 2", t + 1);
}

int main(void) {
    test_constructor();
    test_reference_f64();
    test_fast_kernel();
    return check_summary("sinkhorn");
}
