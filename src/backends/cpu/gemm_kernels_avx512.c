/* gemm_kernels_avx512.c - AVX-512F kernels for ts_gemm_f32 (see gemm.h for the contract).
 *
 * Only the micro-kernel is AVX-512 here: 12 rows x 32 columns (two zmm per row). Packing (f32
 * and converting) and the bandwidth-bound small-M path are borrowed from the AVX2 tier. Functions carry their own target
 * attribute so the library stays baseline x86-64; gemm.c selects this tier only after
 * run-time detection. Compiles to nothing off x86-64. */
#if defined(__x86_64__)

#include <immintrin.h>

#include "backends/cpu/gemm.h"

#define AVX512 __attribute__((target("avx512f")))
#define AVX512_INLINE static inline __attribute__((always_inline, target("avx512f")))

/* 12 x 32 = 24 zmm accumulators; per k: 2 B loads, 12 broadcasts, 24 FMAs (FMA:load ratio
 * 24:14, so two FMA pipes and two load ports both fit). 24 + 2 B + 1 broadcast = 27 of the 32
 * zmm registers. */
#define MR 12
#define NR 32

AVX512_INLINE void store_row(float *c, __m512 lo, __m512 hi, __m512 alpha, __m512 beta, int beta_zero) {
    lo = _mm512_mul_ps(alpha, lo);
    hi = _mm512_mul_ps(alpha, hi);
    if (!beta_zero) {
        lo = _mm512_fmadd_ps(beta, _mm512_loadu_ps(c), lo);
        hi = _mm512_fmadd_ps(beta, _mm512_loadu_ps(c + 16), hi);
    }
    _mm512_storeu_ps(c, lo);
    _mm512_storeu_ps(c + 16, hi);
}

#define FMA_ROW(r)                                              \
    do {                                                        \
        __m512 av = _mm512_set1_ps(a[r]);                       \
        c##r##_0 = _mm512_fmadd_ps(av, b0, c##r##_0);           \
        c##r##_1 = _mm512_fmadd_ps(av, b1, c##r##_1);           \
    } while (0)

#define STORE_ROW(r) store_row(c + (r) * ldc, c##r##_0, c##r##_1, va, vb, bz)

AVX512 static void avx512_ukernel_12x32(int64_t kc, const float *a, const float *b, float *c, int64_t ldc,
                                        float alpha, float beta) {
    __m512 c0_0 = _mm512_setzero_ps(), c0_1 = c0_0, c1_0 = c0_0, c1_1 = c0_0, c2_0 = c0_0, c2_1 = c0_0;
    __m512 c3_0 = c0_0, c3_1 = c0_0, c4_0 = c0_0, c4_1 = c0_0, c5_0 = c0_0, c5_1 = c0_0;
    __m512 c6_0 = c0_0, c6_1 = c0_0, c7_0 = c0_0, c7_1 = c0_0, c8_0 = c0_0, c8_1 = c0_0;
    __m512 c9_0 = c0_0, c9_1 = c0_0, c10_0 = c0_0, c10_1 = c0_0, c11_0 = c0_0, c11_1 = c0_0;
    for (int r = 0; r < MR; r++) {
        _mm_prefetch((const char *)(c + r * ldc), _MM_HINT_T0);
        _mm_prefetch((const char *)(c + r * ldc + NR - 1), _MM_HINT_T0);
    }
#pragma GCC unroll 2
    for (int64_t k = 0; k < kc; k++) {
        __m512 b0 = _mm512_load_ps(b), b1 = _mm512_load_ps(b + 16);
        FMA_ROW(0);
        FMA_ROW(1);
        FMA_ROW(2);
        FMA_ROW(3);
        FMA_ROW(4);
        FMA_ROW(5);
        FMA_ROW(6);
        FMA_ROW(7);
        FMA_ROW(8);
        FMA_ROW(9);
        FMA_ROW(10);
        FMA_ROW(11);
        a += MR;
        b += NR;
    }
    __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta);
    int bz = beta == 0.0f;
    STORE_ROW(0);
    STORE_ROW(1);
    STORE_ROW(2);
    STORE_ROW(3);
    STORE_ROW(4);
    STORE_ROW(5);
    STORE_ROW(6);
    STORE_ROW(7);
    STORE_ROW(8);
    STORE_ROW(9);
    STORE_ROW(10);
    STORE_ROW(11);
}

const ts_gemm_kernels ts_gemm_kernels_avx512 = {
    .name = "avx512",
    .tier = TS_GEMM_TIER_AVX512,
    .mr = MR,
    .nr = NR,
    .mc = 240,  /* A block 240 x 256 x 4 B = 240 KiB: inside a 1-2 MiB L2 */
    .kc = 256,  /* B micro-panel 256 x 32 x 4 B = 32 KiB: the L1 of current AVX-512 cores is 32-48 KiB */
    .nc = 4096, /* B panel 4 MiB: shared L3 */
    .ukernel = avx512_ukernel_12x32,
    .pack_a = ts_gemm_pack_avx2, /* vector paths for widths 12 and 32 */
    .pack_b = ts_gemm_pack_avx2,
    .small_nn = ts_gemm_small_nn_avx2,
    .small_nt = ts_gemm_small_nt_avx2,
    .pack_cvt = ts_gemm_pack_cvt_avx2,
    .small_nn_narrow = ts_gemm_small_nn_narrow_avx2,
    .small_nt_narrow = ts_gemm_small_nt_narrow_avx2,
    .narrow_nn_types = TS_GEMM_AVX2_NARROW_TYPES,
    .narrow_nt_types = TS_GEMM_AVX2_NARROW_TYPES,
};

#endif /* __x86_64__ */
