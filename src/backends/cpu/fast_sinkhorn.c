/* fast_sinkhorn.c - the "cpu" backend's f32 Sinkhorn projection and its backward (mHC, spec
 * section 2.3.1 step 6): contiguous f32 matrices are read straight from storage into registers-
 * sized stack arrays and handed to the reference's per-matrix arithmetic (ts_sinkhorn_matrix*,
 * ref_sinkhorn.c, in double: one formula for both backends, and the f32 result is that double
 * result rounded once). What this adds over the reference kernel is direct addressing instead
 * of a per-element dtype switch and offset computation; other dtypes and strided views go to
 * the reference kernel. mHC's n = 4 forward (every decode step runs one per token, stream and
 * sub-layer) runs the normalisation steps on AVX2 with a 4 x 4 matrix in four registers: the
 * same additions in the same order and the same divisions, so bit-identical to the reference.
 * One matrix per work item, static chunks: bit-identical for any thread count. Nothing is
 * allocated. */
#include <math.h>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "backends/cpu/fast_kernels.h"
#include "backends/cpu/gemm.h"
#include "backends/cpu/ref_common.h"
#include "backends/cpu/ref_kernels.h"

/* Matrices per thread chunk below which one thread does all the work. */
#define MIN_MATRICES 64

typedef struct {
    float *out;
    const float *x, *dy; /* dy: backward only */
    int n, iters;
    double eps;
    bool avx2; /* forward of n = 4 by steps4_avx2 */
} sinkhorn_job;

#if defined(__x86_64__)

#define AVX2 __attribute__((target("avx2")))
#define AVX2_INLINE static inline __attribute__((always_inline, target("avx2")))

/* Rows r[0..3] become columns. */
AVX2_INLINE void transpose4(__m256d r[4]) {
    __m256d t0 = _mm256_unpacklo_pd(r[0], r[1]), t1 = _mm256_unpackhi_pd(r[0], r[1]);
    __m256d t2 = _mm256_unpacklo_pd(r[2], r[3]), t3 = _mm256_unpackhi_pd(r[2], r[3]);
    r[0] = _mm256_permute2f128_pd(t0, t2, 0x20);
    r[1] = _mm256_permute2f128_pd(t1, t3, 0x20);
    r[2] = _mm256_permute2f128_pd(t0, t2, 0x31);
    r[3] = _mm256_permute2f128_pd(t1, t3, 0x31);
}

/* The reference's column step on rows r: den_j = (((0 + k0j) + k1j) + k2j) + k3j + eps, then
 * k_ij / den_j. On the transposed matrix it is the row step. */
AVX2_INLINE void normalise_columns(__m256d r[4], __m256d eps) {
    __m256d s = _mm256_add_pd(_mm256_setzero_pd(), r[0]);
    for (int i = 1; i < 4; i++) s = _mm256_add_pd(s, r[i]);
    s = _mm256_add_pd(s, eps);
    for (int i = 0; i < 4; i++) r[i] = _mm256_div_pd(r[i], s);
}

/* The 2·iters - 1 normalisation steps of a 4 x 4 matrix: columns, then (row, column) pairs. */
AVX2 static void steps4_avx2(double *k, int iters, double eps) {
    __m256d r[4], e = _mm256_set1_pd(eps);
    for (int i = 0; i < 4; i++) r[i] = _mm256_loadu_pd(k + 4 * i);
    normalise_columns(r, e);
    for (int s = 1; s < iters; s++) {
        transpose4(r);
        normalise_columns(r, e);
        transpose4(r);
        normalise_columns(r, e);
    }
    for (int i = 0; i < 4; i++) _mm256_storeu_pd(k + 4 * i, r[i]);
}

/* Whether this CPU runs steps4_avx2 (the GEMM's tier decides, as for attention). */
static bool has_avx2(void) {
    ts_gemm_tier t = ts_gemm_tier_active();
    return t == TS_GEMM_TIER_AVX2 || t == TS_GEMM_TIER_AVX512;
}

#endif

/* The forward of one matrix in k (n x n). */
static void forward(double *k, int n, int iters, double eps, bool avx2) {
#if defined(__x86_64__)
    if (avx2 && n == 4) {
        ts_sinkhorn_matrix_start(k, n, eps, NULL);
        steps4_avx2(k, iters, eps);
        return;
    }
#endif
    (void)avx2;
    ts_sinkhorn_matrix(k, n, iters, eps);
}

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
            forward(k, j->n, j->iters, j->eps, j->avx2);
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
#if defined(__x86_64__)
    j->avx2 = has_avx2();
#endif
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
