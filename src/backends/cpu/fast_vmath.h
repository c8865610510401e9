/* fast_vmath.h - vector math on f32 arrays shared by the fast kernels: the flash attention's
 * online softmax (fast_attention.c), softmax, silu / sigmoid / exp (fast_elementwise.c) and the
 * cross-entropy loss (fast_loss.c). One implementation per instruction-set tier: portable C
 * (libm's expf) and AVX2 + FMA (a Cephes-style exp, about 1 ulp), picked by the GEMM's active
 * tier, so forcing a lower GEMM tier switches these too. Every element goes through the same
 * arithmetic wherever it sits in an array (the AVX2 tails use masked lanes), so results never
 * depend on how a caller splits its work between threads. */
#ifndef TS_FAST_VMATH_H
#define TS_FAST_VMATH_H

#include <stdbool.h>
#include <stdint.h>

typedef struct {
    float (*max)(const float *x, int64_t n);                    /* n >= 1; a NaN wins */
    void (*exp)(float *d, const float *x, int64_t n);           /* d = e^x (d may be x); AVX2 flushes
                                                                   results below FLT_MIN to 0 */
    float (*exp_sum)(float *x, int64_t n, float shift);         /* x = e^(x - shift); returns the sum */
    void (*exp_each)(float *x, const float *shift, int64_t n);  /* x[i] = e^(x[i] - shift[i]) */
    float (*dot)(const float *a, const float *b, int64_t n);
    void (*axpy)(float *y, float a, const float *x, int64_t n); /* y += a x */
    /* out[e] = dot(a, x[e], n) for e < count, several rows at once (one dot is a single chain of
     * dependent FMAs); each the bits of dot */
    void (*dots)(const float *a, const float *const *x, int64_t count, int64_t n, float *out);
    /* y += a[0] x[0] + a[1] x[1] + ... + a[count-1] x[count-1], in that order: the bits of repeated
     * axpy, y kept in registers across the rows */
    void (*axpys)(float *y, const float *a, const float *const *x, int64_t count, int64_t n);
} ts_vmath;

/* The table of the active tier. */
const ts_vmath *ts_vmath_active(void);

/* Whether the active tier is AVX2 + FMA (the GEMM's tier decides; AVX-512 CPUs have both): the
 * fast kernels with AVX2 code of their own pick it by this too. */
bool ts_vmath_avx2_active(void);

/* The tables' functions, for kernels that build their own per-tier tables around them. */
#define TS_VMATH_TIER(tier)                                                \
    float ts_vmax_##tier(const float *x, int64_t n);                       \
    void ts_vexp_##tier(float *d, const float *x, int64_t n);              \
    float ts_vexp_sum_##tier(float *x, int64_t n, float shift);            \
    void ts_vexp_each_##tier(float *x, const float *shift, int64_t n);     \
    float ts_vdot_##tier(const float *a, const float *b, int64_t n);       \
    void ts_vaxpy_##tier(float *y, float a, const float *x, int64_t n);                                 \
    void ts_vdots_##tier(const float *a, const float *const *x, int64_t count, int64_t n, float *out);   \
    void ts_vaxpys_##tier(float *y, const float *a, const float *const *x, int64_t count, int64_t n);
TS_VMATH_TIER(generic)
#if defined(__x86_64__)
#include <immintrin.h>

/* Lanes [0, count) on (count clamped to 0..8): the mask of a ragged tail. */
static inline __attribute__((always_inline, target("avx2"))) __m256i ts_avx2_lanes(int64_t count) {
    static const int32_t ones_then_zeros[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};
    int64_t c = count < 0 ? 0 : count > 8 ? 8 : count;
    return _mm256_loadu_si256((const __m256i *)(ones_then_zeros + 8 - c));
}

TS_VMATH_TIER(avx2)
#endif

#endif
