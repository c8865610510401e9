/* fast_sinkhorn.c - the "cpu" backend's f32 Sinkhorn projection and its backward (mHC, spec
 * section 2.3.1 step 6): contiguous f32 matrices are read straight from storage into registers-
 * sized stack arrays and handed to the reference's per-matrix arithmetic (ts_sinkhorn_matrix*,
 * ref_sinkhorn.c, in double: one formula for both backends, and the f32 result is that double
 * result rounded once). What this adds over the reference kernel is direct addressing instead
 * of a per-element dtype switch and offset computation; other dtypes and strided views go to
 * the reference kernel. mHC's n = 4 forward (every decode step runs one per token, stream and
 * sub-layer) runs the normalisation steps on AVX2 with a 4 x 4 matrix in four registers, four
 * matrices at a time (one's steps run while the others wait on their divisions): the same
 * additions in the same order and the same divisions, so bit-identical to the reference;
 * so does its backward (every training step runs one per token and sub-layer), whose steps
 * walk back over the same two layouts: rows in registers for a column step, columns for a row
 * step, each dot product summed in the reference's order with separate multiplies and adds.
 * One matrix per work item, static chunks: bit-identical for any thread count. Nothing is
 * allocated. */
#include <math.h>
#include <string.h>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "backends/cpu/fast_kernels.h"
#include "backends/cpu/fast_vmath.h"
#include "backends/cpu/ref_common.h"
#include "backends/cpu/ref_kernels.h"

/* Matrices per thread chunk below which one thread does all the work. */
#define MIN_MATRICES 64

typedef struct {
    float *out;
    const float *x, *dy; /* dy: backward only */
    int n, iters;
    double eps;
    bool avx2; /* n = 4 by steps4_avx2 / back4_avx2 */
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
 * k_ij / den_j; returns den. On the transposed matrix it is the row step. */
AVX2_INLINE __m256d normalise_columns(__m256d r[4], __m256d eps) {
    __m256d s = _mm256_add_pd(_mm256_setzero_pd(), r[0]);
    for (int i = 1; i < 4; i++) s = _mm256_add_pd(s, r[i]);
    s = _mm256_add_pd(s, eps);
    for (int i = 0; i < 4; i++) r[i] = _mm256_div_pd(r[i], s);
    return s;
}

/* sum_i a[i] * b[i] lane by lane, in the reference's order: (((0 + a0 b0) + a1 b1) + ...). */
AVX2_INLINE __m256d dot4(const __m256d a[4], const __m256d b[4]) {
    __m256d s = _mm256_add_pd(_mm256_setzero_pd(), _mm256_mul_pd(a[0], b[0]));
    for (int i = 1; i < 4; i++) s = _mm256_add_pd(s, _mm256_mul_pd(a[i], b[i]));
    return s;
}

/* ts_sinkhorn_matrix_back for n = 4: x (the logits) in, g (dy in, dx out). */
AVX2 static void back4_avx2(const double *x, double *g, int iters, double eps) {
    double k[16], p[16];
    memcpy(k, x, sizeof k);
    ts_sinkhorn_matrix_start(k, 4, eps, p);
    __m256d r[4], d[2 * TS_SINKHORN_MAX_ITERS - 1], e = _mm256_set1_pd(eps), gr[4], pr[4];
    for (int i = 0; i < 4; i++) r[i] = _mm256_loadu_pd(k + 4 * i);
    int steps = 2 * iters - 1;
    d[0] = normalise_columns(r, e);
    for (int s = 1; s < steps; s++) { /* odd: rows (transposed layout), even: columns */
        transpose4(r);
        d[s] = normalise_columns(r, e);
    }
    /* the last step is a column one: r holds rows, like g */
    for (int i = 0; i < 4; i++) gr[i] = _mm256_loadu_pd(g + 4 * i);
    for (int s = steps - 1; s >= 0; s--) {
        if (s < steps - 1) { /* the layout of step s */
            transpose4(r);
            transpose4(gr);
        }
        __m256d dot = dot4(gr, r);
        for (int i = 0; i < 4; i++) {
            gr[i] = _mm256_div_pd(_mm256_sub_pd(gr[i], dot), d[s]);
            r[i] = _mm256_mul_pd(r[i], d[s]);
        }
    }
    /* softmax along rows: columns in registers, so each lane is a row */
    for (int i = 0; i < 4; i++) pr[i] = _mm256_loadu_pd(p + 4 * i);
    transpose4(pr);
    transpose4(gr);
    __m256d dot = dot4(gr, pr);
    for (int j = 0; j < 4; j++) gr[j] = _mm256_mul_pd(pr[j], _mm256_sub_pd(gr[j], dot));
    transpose4(gr);
    for (int i = 0; i < 4; i++) _mm256_storeu_pd(g + 4 * i, gr[i]);
}

/* The most matrices steps4_avx2 interleaves. */
#define STEPS4_WAYS 4

/* The 2·iters - 1 normalisation steps of `count` (1, 2 or STEPS4_WAYS) 4 x 4 matrices at k,
 * k + 16, ...: columns, then (row, column) pairs. Each step waits on the one before (dependent
 * adds, then divisions), so the other matrices' steps run in those waits (16 matrices of 20
 * iterations, 1 thread: 10.9 us one at a time, 7.1 two, 5.7 four, though four spill registers). */
AVX2_INLINE void steps4(double *k, int count, int iters, double eps) {
    __m256d r[STEPS4_WAYS][4], e = _mm256_set1_pd(eps);
    for (int m = 0; m < count; m++) {
        for (int i = 0; i < 4; i++) r[m][i] = _mm256_loadu_pd(k + 16 * m + 4 * i);
        normalise_columns(r[m], e);
    }
    for (int s = 1; s < iters; s++)
        for (int m = 0; m < count; m++) {
            transpose4(r[m]);
            normalise_columns(r[m], e);
            transpose4(r[m]);
            normalise_columns(r[m], e);
        }
    for (int m = 0; m < count; m++)
        for (int i = 0; i < 4; i++) _mm256_storeu_pd(k + 16 * m + 4 * i, r[m][i]);
}

AVX2 static void steps4_avx2(double *k, int count, int iters, double eps) {
    if (count == STEPS4_WAYS)
        steps4(k, STEPS4_WAYS, iters, eps);
    else if (count == 2)
        steps4(k, 2, iters, eps);
    else
        steps4(k, 1, iters, eps);
}

#else
#define STEPS4_WAYS 1
#endif

/* The forward of `count` matrices at k, k + n·n, ... (n x n; more than one only where
 * steps4_avx2 runs). */
static void forward(double *k, int count, int n, int iters, double eps, bool avx2) {
#if defined(__x86_64__)
    if (avx2 && n == 4) {
        for (int m = 0; m < count; m++) ts_sinkhorn_matrix_start(k + 16 * m, n, eps, NULL);
        steps4_avx2(k, count, iters, eps);
        return;
    }
#endif
    (void)avx2;
    for (int m = 0; m < count; m++) ts_sinkhorn_matrix(k + m * n * n, n, iters, eps);
}

/* The backward of one matrix: k the logits, g dy in and dx out. */
static void back(const double *k, double *g, int n, int iters, double eps, bool avx2) {
#if defined(__x86_64__)
    if (avx2 && n == 4) {
        back4_avx2(k, g, iters, eps);
        return;
    }
#endif
    (void)avx2;
    ts_sinkhorn_matrix_back(k, g, n, iters, eps);
}

/* The forward takes STEPS4_WAYS matrices (or two) at a time where steps4_avx2 interleaves them;
 * every matrix gets the same operations either way. */
static void sinkhorn_range(void *arg, int64_t begin, int64_t end, int tid) {
    const sinkhorn_job *j = arg;
    int nn = j->n * j->n;
    double k[STEPS4_WAYS * TS_SINKHORN_MAX_N * TS_SINKHORN_MAX_N], g[TS_SINKHORN_MAX_N * TS_SINKHORN_MAX_N];
    for (int64_t m = begin; m < end;) {
        int count = 1;
        if (!j->dy && j->avx2 && j->n == 4) count = end - m >= STEPS4_WAYS ? STEPS4_WAYS : end - m >= 2 ? 2 : 1;
        const float *x = j->x + m * nn;
        float *out = j->out + m * nn;
        for (int e = 0; e < count * nn; e++) k[e] = x[e];
        if (j->dy) {
            const float *dy = j->dy + m * nn;
            for (int e = 0; e < nn; e++) g[e] = dy[e];
            back(k, g, j->n, j->iters, j->eps, j->avx2);
            for (int e = 0; e < nn; e++) out[e] = (float)g[e];
        } else {
            forward(k, count, j->n, j->iters, j->eps, j->avx2);
            for (int e = 0; e < count * nn; e++) out[e] = (float)k[e];
        }
        m += count;
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
    j->avx2 = ts_vmath_avx2_active();
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
