/* fast_rows.c - the "cpu" backend's f32 row kernels of the backward pass, of position
 * encoding and of selection: rms_norm_back and softmax_back along the last axis, rope (forward
 * and inverse), and topk (exact: a selection by the reference's total order). Each row is
 * computed with the reference's formula, in double, in the same order (ref_nn.c; but the sums of
 * squares and of products in four interleaved partial sums), and rounded once, straight from
 * contiguous f32 storage; other dtypes, strided inputs and other axes go to the reference
 * kernel, which also reports malformed nodes. Rows are split over threads in static chunks, one thread per
 * row: bit-identical for any thread count. Nothing is allocated. */
#include <math.h>
#include <string.h>

#include "backends/cpu/fast_kernels.h"
#include "backends/cpu/ref_common.h"
#include "backends/cpu/ref_kernels.h"

/* A contiguous f32 tensor on the host shaped exactly like dst. */
static bool is_dense_like(const ts_tensor *t, const ts_tensor *dst) {
    return t && t->dtype == TS_F32 && t->data && ts_is_contiguous(t) && ts_same_shape(t, dst);
}

typedef struct {
    float *out;
    const float *a, *b;    /* rms_norm_back: x, dy; softmax_back: y, dy; rope: x, angles */
    const float *w;        /* rms_norm_back: weight or NULL; rope: unused */
    int64_t w_stride;
    int64_t len;           /* elements per row (the last axis) */
    double eps;            /* rms_norm_back */
    int64_t n_rot;         /* rope: rotated trailing dims */
    double sign;           /* rope: +1, or -1 for the inverse */
    int outer_ndim;        /* rope: dims of x before the last */
    int64_t outer_shape[TS_MAX_DIMS], angle_stride[TS_MAX_DIMS]; /* rope: angles' stride per outer dim (0: broadcast) */
} row_job;

static void run_rows(const ts_cpu_ctx *ctx, const ts_tensor *dst, ts_range_fn fn, row_job *j) {
    ts_parallel_for(ctx->pool, ts_nelements(dst) / j->len, ref_items_min_chunk(j->len), fn, j);
}

/* ---------------------------------------------------------------- rms_norm_back */

/* With r = 1 / sqrt(mean(x^2) + eps) and g = dy * w: dx = r * g - x * r^3 * mean(x * g). */
static void rms_norm_back_range(void *arg, int64_t begin, int64_t end, int tid) {
    const row_job *j = arg;
    int64_t n = j->len;
    for (int64_t r = begin; r < end; r++) {
        const float *x = j->a + r * n, *dy = j->b + r * n;
        float *dx = j->out + r * n;
        double ss = ts_fast_sum_squares(x, n), xg = ts_fast_dot_double(x, dy, j->w, j->w_stride, n);
        double inv = 1.0 / sqrt(ss / (double)n + j->eps), coef = inv * inv * inv * xg / (double)n;
        if (j->w)
            for (int64_t k = 0; k < n; k++) dx[k] = (float)(inv * ((double)dy[k] * j->w[k * j->w_stride]) - x[k] * coef);
        else
            for (int64_t k = 0; k < n; k++) dx[k] = (float)(inv * dy[k] - x[k] * coef);
    }
}

/* x, dy contiguous f32 like dst; the optional weight 1-D f32 of the row's length, any stride >= 0. */
static bool plan_rms_norm_back(const ts_tensor *dst, row_job *j) {
    if (dst->op != TS_OP_RMS_NORM_BACK || dst->n_src < 2 || dst->n_src > 3 || dst->ndim < 1) return false;
    if (!is_dense_like(dst, dst) || !is_dense_like(dst->src[0], dst) || !is_dense_like(dst->src[1], dst)) return false;
    *j = (row_job){.out = dst->data, .a = dst->src[0]->data, .b = dst->src[1]->data, .len = dst->shape[dst->ndim - 1],
                   .eps = dst->fp[0]};
    const ts_tensor *w = dst->n_src == 3 ? dst->src[2] : NULL;
    if (w) {
        if (w->dtype != TS_F32 || !w->data || w->ndim != 1 || w->shape[0] != j->len || w->stride[0] < 0) return false;
        j->w = w->data;
        j->w_stride = w->stride[0];
    }
    return true;
}

TS_FAST_KERNEL(rms_norm_back) {
    row_job j;
    if (!plan_rms_norm_back(dst, &j)) return ts_ref_rms_norm_back(ctx, dst);
    run_rows(ctx, dst, rms_norm_back_range, &j);
    return TS_OK;
}

/* ---------------------------------------------------------------- softmax_back */

/* dx = y * (dy - sum(dy * y)) along each row. */
static void softmax_back_range(void *arg, int64_t begin, int64_t end, int tid) {
    const row_job *j = arg;
    int64_t n = j->len;
    for (int64_t r = begin; r < end; r++) {
        const float *y = j->a + r * n, *dy = j->b + r * n;
        float *dx = j->out + r * n;
        double dot = ts_fast_dot_double(dy, y, NULL, 0, n);
        for (int64_t k = 0; k < n; k++) dx[k] = (float)(y[k] * (dy[k] - dot));
    }
}

/* Along the last axis of contiguous f32 y and dy. */
static bool plan_softmax_back(const ts_tensor *dst, row_job *j) {
    if (dst->op != TS_OP_SOFTMAX_BACK || dst->n_src != 2 || dst->ndim < 1 || dst->ip[0] != dst->ndim - 1) return false;
    if (!is_dense_like(dst, dst) || !is_dense_like(dst->src[0], dst) || !is_dense_like(dst->src[1], dst)) return false;
    *j = (row_job){.out = dst->data, .a = dst->src[0]->data, .b = dst->src[1]->data, .len = dst->shape[dst->ndim - 1]};
    return true;
}

TS_FAST_KERNEL(softmax_back) {
    row_job j;
    if (!plan_softmax_back(dst, &j)) return ts_ref_softmax_back(ctx, dst);
    run_rows(ctx, dst, softmax_back_range, &j);
    return TS_OK;
}

/* ---------------------------------------------------------------- rope */

#define ROPE_CACHED_PAIRS 256 /* cos / sin of up to this many angles are kept across rows */

/* Pair p of the trailing n_rot dims, (re, im) = (x[first + 2p], x[first + 2p + 1]), times
 * e^{+-i theta_p}; the first D - n_rot dims are copied. Consecutive rows usually share their
 * angles (the heads of one token), so a row's cos / sin are kept for the next one: the same
 * values, computed once per token instead of once per head. */
static void rope_range(void *arg, int64_t begin, int64_t end, int tid) {
    const row_job *j = arg;
    int64_t n = j->len, first = n - j->n_rot, pairs = j->n_rot / 2, c[TS_MAX_DIMS];
    double cs[ROPE_CACHED_PAIRS], sn[ROPE_CACHED_PAIRS];
    const float *cached = NULL;
    bool cache = pairs <= ROPE_CACHED_PAIRS;
    for (int64_t r = begin; r < end; r++) {
        const float *x = j->a + r * n;
        float *y = j->out + r * n;
        ref_unravel(j->outer_ndim, j->outer_shape, r, c);
        const float *ang = j->b;
        for (int d = 0; d < j->outer_ndim; d++) ang += c[d] * j->angle_stride[d];
        memcpy(y, x, (size_t)first * sizeof *y);
        if (cache && ang != cached) {
            for (int64_t p = 0; p < pairs; p++) {
                double theta = j->sign * ang[p];
                cs[p] = cos(theta);
                sn[p] = sin(theta);
            }
            cached = ang;
        }
        for (int64_t p = 0; p < pairs; p++) {
            int64_t i = first + 2 * p;
            double re = x[i], im = x[i + 1], theta = j->sign * ang[p];
            double cp = cache ? cs[p] : cos(theta), sp = cache ? sn[p] : sin(theta);
            y[i] = (float)(re * cp - im * sp);
            y[i + 1] = (float)(re * sp + im * cp);
        }
    }
}

/* x contiguous f32 like dst; angles f32, contiguous along their last axis (n_rot / 2 values),
 * broadcasting over x's other dims with any strides. */
static bool plan_rope(const ts_tensor *dst, row_job *j) {
    if (dst->op != TS_OP_ROPE || dst->n_src != 2 || dst->ndim < 1) return false;
    if (!is_dense_like(dst, dst) || !is_dense_like(dst->src[0], dst)) return false;
    const ts_tensor *ang = dst->src[1];
    int64_t D = dst->shape[dst->ndim - 1], n_rot = dst->ip[0];
    if (!ang || ang->dtype != TS_F32 || !ang->data || ang->ndim < 1 || ang->ndim > dst->ndim) return false;
    if (n_rot < 2 || n_rot % 2 || n_rot > D || ang->shape[ang->ndim - 1] != n_rot / 2) return false;
    if (n_rot > 2 && ang->stride[ang->ndim - 1] != 1) return false;
    *j = (row_job){.out = dst->data, .a = dst->src[0]->data, .b = ang->data, .len = D, .n_rot = n_rot,
                   .sign = dst->ip[1] ? -1.0 : 1.0, .outer_ndim = dst->ndim - 1};
    int lead = dst->ndim - ang->ndim;
    for (int d = 0; d < dst->ndim - 1; d++) {
        j->outer_shape[d] = dst->shape[d];
        int ad = d - lead;
        if (ad < 0 || ang->shape[ad] == 1) {
            j->angle_stride[d] = 0;
        } else if (ang->shape[ad] == dst->shape[d]) {
            j->angle_stride[d] = ang->stride[ad];
        } else {
            return false; /* does not broadcast: the reference reports it */
        }
    }
    return true;
}

TS_FAST_KERNEL(rope) {
    row_job j;
    if (!plan_rope(dst, &j)) return ts_ref_rope(ctx, dst);
    run_rows(ctx, dst, rope_range, &j);
    return TS_OK;
}

/* ---------------------------------------------------------------- topk */

#define TOPK_MAX 1024 /* larger k: the reference */

/* The k best of each row of a contiguous f32 x, in rank order (ref_topk_before), by insertion
 * into a sorted list: O(n) per row when few elements beat the k-th best, where the reference
 * rescans the row once per rank. The order is total, so the result is the reference's. */
typedef struct {
    const float *x;
    void *out;
    bool out64;
    int64_t n, k;
} topk_job;

static void topk_range(void *arg, int64_t begin, int64_t end, int tid) {
    const topk_job *j = arg;
    int64_t best[TOPK_MAX];
    for (int64_t r = begin; r < end; r++) {
        const float *x = j->x + r * j->n;
        int64_t have = 0;
        for (int64_t i = 0; i < j->n; i++) {
            if (have == j->k && !ref_topk_before(x[i], i, x[best[have - 1]], best[have - 1])) continue;
            int64_t at = have < j->k ? have++ : have - 1; /* the slot it may take, then sift up */
            while (at > 0 && ref_topk_before(x[i], i, x[best[at - 1]], best[at - 1])) {
                best[at] = best[at - 1];
                at--;
            }
            best[at] = i;
        }
        for (int64_t q = 0; q < j->k; q++) {
            if (j->out64) ((int64_t *)j->out)[r * j->k + q] = best[q];
            else ((int32_t *)j->out)[r * j->k + q] = (int32_t)best[q];
        }
    }
}

/* x contiguous f32, the output contiguous i32/i64 shaped like x with k <= TOPK_MAX last. */
static bool plan_topk(const ts_tensor *dst, topk_job *j) {
    if (dst->op != TS_OP_TOPK || dst->n_src != 1 || dst->ndim < 1 || !dst->data || !ts_is_contiguous(dst)) return false;
    const ts_tensor *x = dst->src[0];
    if (!x || x->dtype != TS_F32 || !x->data || !ts_is_contiguous(x) || x->ndim != dst->ndim) return false;
    if (dst->dtype != TS_I32 && dst->dtype != TS_I64) return false;
    int a = x->ndim - 1;
    int64_t k = dst->ip[0];
    if (k < 1 || k > TOPK_MAX || k > x->shape[a] || dst->shape[a] != k) return false;
    for (int d = 0; d < a; d++)
        if (dst->shape[d] != x->shape[d]) return false;
    *j = (topk_job){.x = x->data, .out = dst->data, .out64 = dst->dtype == TS_I64, .n = x->shape[a], .k = k};
    return true;
}

TS_FAST_KERNEL(topk) {
    topk_job j;
    if (!plan_topk(dst, &j)) return ts_ref_topk(ctx, dst);
    ts_parallel_for(ctx->pool, ts_nelements(dst) / j.k, ref_items_min_chunk(j.n * 4), topk_range, &j);
    return TS_OK;
}

/* ---------------------------------------------------------------- for tests */

bool ts_fast_rows_applies(const ts_tensor *dst) {
    row_job j;
    if (!dst) return false;
    switch (dst->op) {
    case TS_OP_RMS_NORM_BACK: return plan_rms_norm_back(dst, &j);
    case TS_OP_SOFTMAX_BACK: return plan_softmax_back(dst, &j);
    case TS_OP_ROPE: return plan_rope(dst, &j);
    case TS_OP_TOPK: {
        topk_job t;
        return plan_topk(dst, &t);
    }
    default: return false;
    }
}
