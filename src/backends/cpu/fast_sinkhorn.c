/* fast_sinkhorn.c - the "cpu" backend's f32 Sinkhorn projection and its backward (mHC, spec
 * section 2.3.1 step 6): contiguous f32 matrices are read straight from storage into registers-
 * sized stack arrays and handed to the reference's per-matrix arithmetic (ts_sinkhorn_matrix*,
 * ref_sinkhorn.c, in double: one formula for both backends, and the f32 result is that double
 * result rounded once). What this adds over the reference kernel is direct addressing instead
 * of a per-element dtype switch and offset computation; other dtypes and strided views go to
 * the reference kernel. One matrix per work item, static chunks: bit-identical for any thread
 * count. Nothing is allocated. */
#include <math.h>

#include "backends/cpu/fast_kernels.h"
#include "backends/cpu/ref_common.h"
#include "backends/cpu/ref_kernels.h"

/* Matrices per thread chunk below which one thread does all the work. */
#define MIN_MATRICES 64

typedef struct {
    float *out;
    const float *x, *dy; /* dy: backward only */
    int n, iters;
    double eps;
} sinkhorn_job;

static void sinkhorn_range(void *arg, int64_t begin, int64_t end, int tid) {
    const sinkhorn_job *j = arg;
    int nn = j->n * j->n;
    double k[TS_SINKHORN_MAX_N * TS_SINKHORN_MAX_N], g[TS_SINKHORN_MAX_N * TS_SINKHORN_MAX_N];
    for (int64_t m = begin; m < end; m++) {
        const float *x = j->x + m * nn;
        float *out = j->out + m * nn;
        for (int e = 0; e < nn; e++) k[e] = x[e];
        if (j->dy) {
            const float *dy = j->dy + m * nn;
            for (int e = 0; e < nn; e++) g[e] = dy[e];
            ts_sinkhorn_matrix_back(k, g, j->n, j->iters, j->eps);
            for (int e = 0; e < nn; e++) out[e] = (float)g[e];
        } else {
            ts_sinkhorn_matrix(k, j->n, j->iters, j->eps);
            for (int e = 0; e < nn; e++) out[e] = (float)k[e];
        }
    }
}

static bool is_dense_f32(const ts_tensor *t, const ts_tensor *like) {
    return t && t->dtype == TS_F32 && t->data && ts_is_contiguous(t) && ts_same_shape(t, like);
}

/* The f32 path: dst, x (and dy) contiguous f32 of one shape, a valid node (the reference kernel
 * reports the invalid ones). */
static bool plan_sinkhorn(const ts_tensor *dst, sinkhorn_job *j) {
    bool back = dst->op == TS_OP_SINKHORN_BACK;
    if ((dst->op != TS_OP_SINKHORN && !back) || dst->n_src != (back ? 2 : 1) || dst->ndim < 2) return false;
    int64_t n = dst->shape[dst->ndim - 1];
    if (n != dst->shape[dst->ndim - 2] || n > TS_SINKHORN_MAX_N || dst->ip[0] < 1 ||
        dst->ip[0] > TS_SINKHORN_MAX_ITERS || !(dst->fp[0] >= 0) || !isfinite(dst->fp[0]))
        return false;
    if (!is_dense_f32(dst, dst) || !is_dense_f32(dst->src[0], dst) || (back && !is_dense_f32(dst->src[1], dst)))
        return false;
    *j = (sinkhorn_job){.out = dst->data, .x = dst->src[0]->data, .dy = back ? dst->src[1]->data : NULL,
                        .n = (int)n, .iters = dst->ip[0], .eps = dst->fp[0]};
    return true;
}

static ts_status run(const ts_cpu_ctx *ctx, ts_tensor *dst, const sinkhorn_job *j) {
    ts_parallel_for(ctx->pool, ts_nelements(dst) / (j->n * j->n), MIN_MATRICES, sinkhorn_range, (void *)j);
    return TS_OK;
}

TS_FAST_KERNEL(sinkhorn) {
    sinkhorn_job j;
    return plan_sinkhorn(dst, &j) ? run(ctx, dst, &j) : ts_ref_sinkhorn(ctx, dst);
}

TS_FAST_KERNEL(sinkhorn_back) {
    sinkhorn_job j;
    return plan_sinkhorn(dst, &j) ? run(ctx, dst, &j) : ts_ref_sinkhorn_back(ctx, dst);
}

bool ts_fast_sinkhorn_applies(const ts_tensor *dst) {
    sinkhorn_job j;
    return dst && plan_sinkhorn(dst, &j);
}
