/* ref_sinkhorn.c - reference CPU kernels of TS_OP_SINKHORN and TS_OP_SINKHORN_BACK (contract:
 * ts_sinkhorn in graph.h), and the per-matrix arithmetic both they and the "cpu" backend's f32
 * kernel (fast_sinkhorn.c) run: each n x n matrix is read into a double array, projected (or
 * differentiated) there, and written back. One matrix per work item, every sum in index order,
 * so results do not depend on the thread count. Nothing is allocated: n <= TS_SINKHORN_MAX_N and
 * iters <= TS_SINKHORN_MAX_ITERS bound the stack arrays.
 *
 * The forward repeats mHC's composite exactly (softmax over j, + eps, then normalisation steps
 * K / (sum + eps): columns, then (row, column) iters - 1 times), each operation in the same
 * order, so in f64 it equals the graph of ts_softmax / ts_add / ts_sum / ts_div it replaces.
 *
 * Backward recomputes the forward of its matrix, keeping the softmax P and each step's
 * denominators d (n per step), then walks the steps from the last. A step y = K / d (d = sums
 * of K along the step's axis + eps) has dK = (dy - sum_axis(dy * y)) / d, and its input is
 * recovered as K = y * d instead of being stored. Last, dx = P * (dP - sum_j dP * P) (softmax). */
#include <math.h>
#include <string.h>

#include "ref_common.h"
#include "ref_kernels.h"

#define MAX_N TS_SINKHORN_MAX_N
#define MAX_STEPS (2 * TS_SINKHORN_MAX_ITERS - 1)

/* Step s normalises rows when odd, columns when even: columns first, then (row, column) pairs. */
static bool step_is_row(int s) { return s % 2 == 1; }

/* Softmax along each row of k; a row without a finite maximum follows the softmax kernel: all
 * -inf gives zeros, a NaN or +inf makes the row NaN. */
static void softmax_rows(double *k, int n) {
    for (int i = 0; i < n; i++) {
        double *r = k + i * n, m = -INFINITY, sum = 0;
        for (int j = 0; j < n; j++)
            if (r[j] > m || isnan(r[j])) m = r[j];
        for (int j = 0; j < n; j++) {
            r[j] = m == -INFINITY ? 0.0 : exp(r[j] - m);
            sum += r[j];
        }
        if (m != -INFINITY)
            for (int j = 0; j < n; j++) r[j] /= sum;
    }
}

/* One normalisation step on k; den receives its n denominators. */
static void normalise(double *k, int n, bool rows, double eps, double *den) {
    for (int a = 0; a < n; a++) {
        double s = 0;
        for (int b = 0; b < n; b++) s += rows ? k[a * n + b] : k[b * n + a];
        den[a] = s + eps;
    }
    for (int i = 0; i < n; i++)
        for (int j = 0; j < n; j++) k[i * n + j] /= den[rows ? i : j];
}

void ts_sinkhorn_matrix_start(double *k, int n, double eps, double *p) {
    softmax_rows(k, n);
    if (p) memcpy(p, k, (size_t)(n * n) * sizeof *p);
    for (int e = 0; e < n * n; e++) k[e] += eps;
}

/* k (n x n, the logits) becomes the projection; p and den (either may be NULL) receive the
 * softmax and every step's denominators. */
static void forward(double *k, int n, int iters, double eps, double *p, double (*den)[MAX_N]) {
    double scratch[MAX_N];
    ts_sinkhorn_matrix_start(k, n, eps, p);
    for (int s = 0; s < 2 * iters - 1; s++) normalise(k, n, step_is_row(s), eps, den ? den[s] : scratch);
}

void ts_sinkhorn_matrix(double *k, int n, int iters, double eps) { forward(k, n, iters, eps, NULL, NULL); }

void ts_sinkhorn_matrix_back(const double *x, double *g, int n, int iters, double eps) {
    double k[MAX_N * MAX_N], p[MAX_N * MAX_N], den[MAX_STEPS][MAX_N];
    memcpy(k, x, (size_t)(n * n) * sizeof *k);
    forward(k, n, iters, eps, p, den);
    for (int s = 2 * iters - 2; s >= 0; s--) {
        bool rows = step_is_row(s);
        for (int a = 0; a < n; a++) { /* a: the row (row step) or column (column step) */
            int stride = rows ? 1 : n, first = rows ? a * n : a;
            double dot = 0;
            for (int b = 0; b < n; b++) dot += g[first + b * stride] * k[first + b * stride];
            for (int b = 0; b < n; b++) {
                int e = first + b * stride;
                g[e] = (g[e] - dot) / den[s][a];
                k[e] *= den[s][a];
            }
        }
    }
    for (int i = 0; i < n; i++) {
        double dot = 0;
        for (int j = 0; j < n; j++) dot += g[i * n + j] * p[i * n + j];
        for (int j = 0; j < n; j++) g[i * n + j] = p[i * n + j] * (g[i * n + j] - dot);
    }
}

/* ---------------------------------------------------------------- kernels */

typedef struct {
    ts_tensor *dst;
    const ts_tensor *x, *dy; /* dy: backward only */
    int n, iters;
    double eps;
} sinkhorn_job;

/* Matrices [begin, end): matrix m holds flat elements m * n * n .. (m + 1) * n * n - 1. */
static void sinkhorn_range(void *arg, int64_t begin, int64_t end, int tid) {
    const sinkhorn_job *j = arg;
    int nn = j->n * j->n;
    double k[MAX_N * MAX_N], g[MAX_N * MAX_N];
    for (int64_t m = begin; m < end; m++) {
        int64_t first = m * nn;
        for (int e = 0; e < nn; e++) k[e] = ref_get(j->x, ref_offset(j->x, first + e));
        if (j->dy) {
            for (int e = 0; e < nn; e++) g[e] = ref_get(j->dy, ref_offset(j->dy, first + e));
            ts_sinkhorn_matrix_back(k, g, j->n, j->iters, j->eps);
        } else {
            ts_sinkhorn_matrix(k, j->n, j->iters, j->eps);
        }
        const double *out = j->dy ? g : k;
        for (int e = 0; e < nn; e++) ref_set(j->dst, first + e, out[e]);
    }
}

/* The node's checks (the constructor's, repeated for nodes built by hand): float tensors on the
 * host, x [..., n, n] with n <= MAX_N, dst (and dy) shaped like x, parameters in range. */
static ts_status sinkhorn_ready(const ts_cpu_ctx *ctx, const ts_tensor *dst, int n_src) {
    if (dst->n_src != n_src) return ts_ref_fail(ctx, TS_ERR_INTERNAL, dst, "wrong number of inputs");
    ts_status s = ts_ref_need_host_data(ctx, dst);
    for (int i = 0; s == TS_OK && i < n_src; i++) s = ref_need_float(ctx, dst, dst->src[i]);
    if (s == TS_OK) s = ref_need_float(ctx, dst, dst);
    if (s != TS_OK) return s;
    const ts_tensor *x = dst->src[0];
    if (x->ndim < 2 || x->shape[x->ndim - 1] != x->shape[x->ndim - 2] || x->shape[x->ndim - 1] > MAX_N ||
        !ts_same_shape(x, dst) || (n_src == 2 && !ts_same_shape(x, dst->src[1])))
        return ts_ref_fail(ctx, TS_ERR_SHAPE, dst, "x must be [..., n, n] with n <= 16, shaped like dy and the output");
    if (dst->ip[0] < 1 || dst->ip[0] > TS_SINKHORN_MAX_ITERS || !(dst->fp[0] >= 0) || !isfinite(dst->fp[0]))
        return ts_ref_fail(ctx, TS_ERR_INVALID_ARG, dst, "iters or eps out of range");
    return TS_OK;
}

static ts_status run_sinkhorn(const ts_cpu_ctx *ctx, ts_tensor *dst, bool back) {
    ts_status s = sinkhorn_ready(ctx, dst, back ? 2 : 1);
    if (s != TS_OK) return s;
    const ts_tensor *x = dst->src[0];
    int n = (int)x->shape[x->ndim - 1];
    sinkhorn_job job = {.dst = dst, .x = x, .dy = back ? dst->src[1] : NULL, .n = n, .iters = dst->ip[0],
                        .eps = dst->fp[0]};
    ref_run_parallel(ctx, dst, ts_nelements(dst) / (n * n), ref_items_min_chunk((int64_t)n * n * job.iters),
                     sinkhorn_range, &job);
    return TS_OK;
}

TS_REF_KERNEL(sinkhorn) { return run_sinkhorn(ctx, dst, false); }
TS_REF_KERNEL(sinkhorn_back) { return run_sinkhorn(ctx, dst, true); }
