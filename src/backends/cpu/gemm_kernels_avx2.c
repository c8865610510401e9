/* gemm_kernels_avx2.c - AVX2 + FMA kernels for ts_gemm_f32 (see gemm.h for the contract).
 *
 * Only this file's functions are compiled for AVX2/FMA (per-function target attributes), so the
 * rest of the library stays baseline x86-64 and gemm.c calls in here only after run-time
 * detection. The AVX-512 tier borrows the small-M path from here (it is bandwidth-bound, wider
 * vectors buy nothing). Compiles to nothing off x86-64. */
#if defined(__x86_64__)

#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "backends/cpu/gemm.h"

/* F16C too: the small-M kernels widen f16 and fp8 B as they load it (load_cvt). */
#define AVX2 __attribute__((target("avx2,fma,f16c")))
#define AVX2_INLINE static inline __attribute__((always_inline, target("avx2,fma,f16c")))

/* ---------------------------------------------------------------- micro-kernel 6 x 16 */

/* 6 rows x 16 columns = 12 ymm accumulators; per k: 2 B loads, 6 broadcasts, 12 FMAs. Twelve
 * independent FMA chains cover the 4-cycle latency of two FMA pipes (8 needed), and the 16 ymm
 * registers hold 12 accumulators + 2 B vectors + 1 broadcast. */
#define MR 6
#define NR 16

/* Cache blocking (see the kernel table at the end for the reasoning); overridable with -D for
 * tuning runs. */
#ifndef TS_GEMM_AVX2_MC
#define TS_GEMM_AVX2_MC 144
#endif
#ifndef TS_GEMM_AVX2_KC
#define TS_GEMM_AVX2_KC 256
#endif
#ifndef TS_GEMM_AVX2_NC
#define TS_GEMM_AVX2_NC 4080
#endif

AVX2_INLINE void store_row(float *c, __m256 lo, __m256 hi, __m256 alpha, __m256 beta, int beta_zero) {
    lo = _mm256_mul_ps(alpha, lo);
    hi = _mm256_mul_ps(alpha, hi);
    if (!beta_zero) {
        lo = _mm256_fmadd_ps(beta, _mm256_loadu_ps(c), lo);
        hi = _mm256_fmadd_ps(beta, _mm256_loadu_ps(c + 8), hi);
    }
    _mm256_storeu_ps(c, lo);
    _mm256_storeu_ps(c + 8, hi);
}

#define FMA_ROW(r)                                          \
    do {                                                    \
        __m256 av = _mm256_broadcast_ss(a + (r));           \
        c##r##0 = _mm256_fmadd_ps(av, b0, c##r##0);         \
        c##r##1 = _mm256_fmadd_ps(av, b1, c##r##1);         \
    } while (0)

AVX2 static void avx2_ukernel_6x16(int64_t kc, const float *a, const float *b, float *c, int64_t ldc,
                                   float alpha, float beta) {
    __m256 c00 = _mm256_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00;
    __m256 c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00;
    for (int r = 0; r < MR; r++) _mm_prefetch((const char *)(c + r * ldc), _MM_HINT_T0);
    for (int r = 0; r < MR; r++) _mm_prefetch((const char *)(c + r * ldc + NR - 1), _MM_HINT_T0);
#pragma GCC unroll 4
    for (int64_t k = 0; k < kc; k++) {
        __m256 b0 = _mm256_load_ps(b), b1 = _mm256_load_ps(b + 8);
        FMA_ROW(0);
        FMA_ROW(1);
        FMA_ROW(2);
        FMA_ROW(3);
        FMA_ROW(4);
        FMA_ROW(5);
        a += MR;
        b += NR;
    }
    __m256 va = _mm256_set1_ps(alpha), vb = _mm256_set1_ps(beta);
    int bz = beta == 0.0f;
    store_row(c + 0 * ldc, c00, c01, va, vb, bz);
    store_row(c + 1 * ldc, c10, c11, va, vb, bz);
    store_row(c + 2 * ldc, c20, c21, va, vb, bz);
    store_row(c + 3 * ldc, c30, c31, va, vb, bz);
    store_row(c + 4 * ldc, c40, c41, va, vb, bz);
    store_row(c + 5 * ldc, c50, c51, va, vb, bz);
}

/* ---------------------------------------------------------------- packing */

/* In-register 8 x 8 transpose: on return r[k] holds element k of each of the 8 input rows. */
AVX2_INLINE void transpose8(__m256 r[8]) {
    __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
    __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
    __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
    __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
    __m256 s0 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(1, 0, 1, 0));
    __m256 s1 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(3, 2, 3, 2));
    __m256 s2 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(1, 0, 1, 0));
    __m256 s3 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(3, 2, 3, 2));
    __m256 s4 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(1, 0, 1, 0));
    __m256 s5 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(3, 2, 3, 2));
    __m256 s6 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(1, 0, 1, 0));
    __m256 s7 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(3, 2, 3, 2));
    r[0] = _mm256_permute2f128_ps(s0, s4, 0x20);
    r[1] = _mm256_permute2f128_ps(s1, s5, 0x20);
    r[2] = _mm256_permute2f128_ps(s2, s6, 0x20);
    r[3] = _mm256_permute2f128_ps(s3, s7, 0x20);
    r[4] = _mm256_permute2f128_ps(s0, s4, 0x31);
    r[5] = _mm256_permute2f128_ps(s1, s5, 0x31);
    r[6] = _mm256_permute2f128_ps(s2, s6, 0x31);
    r[7] = _mm256_permute2f128_ps(s3, s7, 0x31);
}

/* Loads 8 consecutive k of `n` rows (rs apart) and transposes them: r[k] = column k. */
AVX2_INLINE void load_transposed(__m256 r[8], const float *src, int64_t rs, int n) {
    for (int i = 0; i < 8; i++) r[i] = i < n ? _mm256_loadu_ps(src + i * rs) : _mm256_setzero_ps();
    transpose8(r);
}

/* Stores lanes [0, n) of v, n in {4, 6, 8}. */
AVX2_INLINE void store_lanes(float *dst, __m256 v, const int n) {
    if (n == 8) {
        _mm256_storeu_ps(dst, v);
        return;
    }
    _mm_storeu_ps(dst, _mm256_castps256_ps128(v));
    if (n == 6) _mm_storel_pi((__m64 *)(dst + 4), _mm256_extractf128_ps(v, 1));
}

/* Loads n floats, n in {4, 6, 8}, without touching memory past them; other lanes undefined. */
AVX2_INLINE __m256 load_lanes(const float *src, const int n) {
    if (n == 8) return _mm256_loadu_ps(src);
    __m128 lo = _mm_loadu_ps(src);
    __m128 hi = n == 6 ? _mm_loadl_pi(_mm_setzero_ps(), (const __m64 *)(src + 4)) : _mm_setzero_ps();
    return _mm256_insertf128_ps(_mm256_castps128_ps256(lo), hi, 1);
}

/* Full w-wide panel (rows == w), w a constant made of 8-row groups plus one group of 4 or 6.
 * Panel rows contiguous along k (cs == 1; row-major A, transposed B) need a transpose: 8 k of
 * each group through registers at a time. Panel rows adjacent (rs == 1; row-major B,
 * transposed A) are a w-float copy per k. */
AVX2_INLINE int64_t pack_full_panel(float *dst, const float *src, int64_t rs, int64_t cs, const int w, int64_t kc) {
    int64_t k = 0;
    if (cs == 1) {
        for (; k + 8 <= kc; k += 8)
            for (int g = 0; g < w; g += 8) {
                const int n = w - g < 8 ? w - g : 8;
                __m256 r[8];
                load_transposed(r, src + g * rs + k, rs, n);
                for (int q = 0; q < 8; q++) store_lanes(dst + (k + q) * w + g, r[q], n);
            }
    } else if (rs == 1) {
        for (; k < kc; k++)
            for (int g = 0; g < w; g += 8) {
                const int n = w - g < 8 ? w - g : 8;
                store_lanes(dst + k * w + g, load_lanes(src + k * cs + g, n), n);
            }
    }
    return k;
}

/* The packer of the AVX2 and AVX-512 tiers (contract in gemm.h): full panels of the widths
 * those tiers use take the vector paths, edge panels and leftover k the portable one. */
AVX2 void ts_gemm_pack_avx2(float *dst, const float *src, int64_t rs, int64_t cs, int rows, int w, int64_t kc) {
    int64_t k = 0;
    if (rows == w) {
        switch (w) {
        case 6: k = pack_full_panel(dst, src, rs, cs, 6, kc); break;
        case 12: k = pack_full_panel(dst, src, rs, cs, 12, kc); break;
        case 16: k = pack_full_panel(dst, src, rs, cs, 16, kc); break;
        case 32: k = pack_full_panel(dst, src, rs, cs, 32, kc); break;
        default: break;
        }
    }
    if (k < kc) ts_gemm_pack_generic(dst + k * w, src + k * cs, rs, cs, rows, w, kc - k);
}

/* ---------------------------------------------------------------- converting packer */

#define AVX2_CVT_INLINE static inline __attribute__((always_inline, target("avx2,fma,f16c")))

/* n (4, 6 or 8) consecutive elements of a narrow type as f32 lanes [0, n), the other lanes 0;
 * reads no memory past them. All exact: bf16 is the upper half of an f32; f16 is F16C's
 * widening; e5m2 is the upper byte of an f16; e4m3 (bias 7) placed in an f16's exponent and
 * mantissa fields (bias 15) is its value times 2^-8, so the widened f16 is scaled by 2^8, and
 * its NaN code (S.1111.111, no infinities) is mapped to NaN. */
AVX2_CVT_INLINE __m256 load_cvt(const void *src, const ts_dtype type, const int n) {
    const int bytes = type == TS_BF16 || type == TS_F16 ? 2 : 1;
    __m128i raw;
    if (n == 8 && bytes == 2) raw = _mm_loadu_si128((const __m128i *)src);
    else if (n == 8) raw = _mm_loadl_epi64((const __m128i *)src);
    else {
        _Alignas(16) unsigned char buf[16] = {0};
        memcpy(buf, src, (size_t)(n * bytes));
        raw = _mm_load_si128((const __m128i *)buf);
    }
    switch (type) {
    case TS_BF16: return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(raw), 16));
    case TS_F16: return _mm256_cvtph_ps(raw);
    case TS_F8_E5M2: return _mm256_cvtph_ps(_mm_slli_epi16(_mm_cvtepu8_epi16(raw), 8));
    default: { /* e4m3: the byte in the upper half of a 16-bit lane, shifted right arithmetically
                * by one: the sign stays in bit 15 (its copy in bit 14 is cleared), exponent and
                * mantissa land in the f16's fields. Only the NaN code widens to +-480 (448 is
                * e4m3's largest finite value): the cheapest test for it (a fast-path GEMV on fp8
                * weights is bound by these operations, not by memory). */
        __m128i y = _mm_unpacklo_epi8(_mm_setzero_si128(), raw);
        __m128i h = _mm_and_si128(_mm_srai_epi16(y, 1), _mm_set1_epi16((short)0xBFFF));
        __m256 v = _mm256_mul_ps(_mm256_cvtph_ps(h), _mm256_set1_ps(256.0f));
        __m256 nan = _mm256_cmp_ps(_mm256_andnot_ps(_mm256_set1_ps(-0.0f), v), _mm256_set1_ps(480.0f), _CMP_EQ_OQ);
        return _mm256_blendv_ps(v, _mm256_set1_ps(NAN), nan);
    }
    }
}

/* pack_full_panel for a narrow source: the same two layouts, converting as it loads. */
AVX2_CVT_INLINE int64_t pack_cvt_full_panel(float *dst, const void *src, const ts_dtype type, int64_t rs, int64_t cs,
                                            const int w, int64_t kc) {
    const size_t bytes = type == TS_BF16 || type == TS_F16 ? 2 : 1;
    const char *s = src;
    int64_t k = 0;
    if (cs == 1) {
        for (; k + 8 <= kc; k += 8)
            for (int g = 0; g < w; g += 8) {
                const int n = w - g < 8 ? w - g : 8;
                __m256 r[8];
                for (int i = 0; i < 8; i++)
                    r[i] = i < n ? load_cvt(s + ((g + i) * rs + k) * bytes, type, 8) : _mm256_setzero_ps();
                transpose8(r);
                for (int q = 0; q < 8; q++) store_lanes(dst + (k + q) * w + g, r[q], n);
            }
    } else if (rs == 1) {
        for (; k < kc; k++)
            for (int g = 0; g < w; g += 8) {
                const int n = w - g < 8 ? w - g : 8;
                store_lanes(dst + k * w + g, load_cvt(s + (k * cs + g) * bytes, type, n), n);
            }
    }
    return k;
}

AVX2_CVT_INLINE int64_t pack_cvt_width(float *dst, const void *src, const ts_dtype type, int64_t rs, int64_t cs, int w,
                                       int64_t kc) {
    switch (w) {
    case 6: return pack_cvt_full_panel(dst, src, type, rs, cs, 6, kc);
    case 12: return pack_cvt_full_panel(dst, src, type, rs, cs, 12, kc);
    case 16: return pack_cvt_full_panel(dst, src, type, rs, cs, 16, kc);
    case 32: return pack_cvt_full_panel(dst, src, type, rs, cs, 32, kc);
    default: return 0;
    }
}

/* The converting packer of the AVX2 and AVX-512 tiers (contract in gemm.h): full panels of
 * their widths take the vector paths, edge panels and leftover k the portable one. */
__attribute__((target("avx2,fma,f16c"))) void ts_gemm_pack_cvt_avx2(float *dst, const void *src, ts_dtype type,
                                                                     int64_t rs, int64_t cs, int rows, int w,
                                                                     int64_t kc) {
    int64_t k = 0;
    if (rows == w) {
        switch (type) {
        case TS_BF16: k = pack_cvt_width(dst, src, TS_BF16, rs, cs, w, kc); break;
        case TS_F16: k = pack_cvt_width(dst, src, TS_F16, rs, cs, w, kc); break;
        case TS_F8_E4M3: k = pack_cvt_width(dst, src, TS_F8_E4M3, rs, cs, w, kc); break;
        case TS_F8_E5M2: k = pack_cvt_width(dst, src, TS_F8_E5M2, rs, cs, w, kc); break;
        default: break;
        }
    }
    if (k < kc) {
        size_t bytes = (size_t)ts_dtype_get_info(type)->bits / 8;
        ts_gemm_pack_cvt_generic(dst + k * w, (const char *)src + (size_t)(k * cs) * bytes, type, rs, cs, rows, w,
                                 kc - k);
    }
}

/* ---------------------------------------------------------------- small-M path */

AVX2_INLINE __m256i tail_mask(int64_t n) { /* lanes [0, n) set, 0 < n < 8 */
    return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

/* B's element type in the small-M kernels: TS_F32, or a narrow one (bt, a compile-time
 * constant in every instantiation) widened exactly as it is loaded. */
AVX2_INLINE int b_bytes(const int bt) { return bt == TS_F32 ? 4 : bt == TS_BF16 || bt == TS_F16 ? 2 : 1; }

/* B's storage: the f32 array, or the narrow one. */
AVX2_INLINE const void *b_base(const ts_gemm_small_args *p, const int bt) {
    return bt == TS_F32 ? (const void *)p->b : p->b_narrow;
}

/* The element at (in elements from b). */
AVX2_INLINE const char *b_addr(const void *b, int64_t at, const int bt) { return (const char *)b + at * b_bytes(bt); }

/* 8 elements of B from b_addr(at). bf16 widens exactly (it is the upper half of an f32): the 16
 * bytes are loaded into both 128-bit lanes and one byte shuffle puts element j into the high half
 * of lane j, zeros below: a single ALU operation per 8 elements (zero-extend then shift is two,
 * and the GEMV from cache is bound by them beside its FMAs). f16 and fp8: load_cvt. */
AVX2_INLINE __m256 load_b(const void *b, int64_t at, const int bt) {
    if (bt == TS_F32) return _mm256_loadu_ps((const float *)b_addr(b, at, bt));
    if (bt != TS_BF16) return load_cvt(b_addr(b, at, bt), (ts_dtype)bt, 8);
    const __m256i widen = _mm256_setr_epi8(-128, -128, 0, 1, -128, -128, 2, 3, -128, -128, 4, 5, -128, -128, 6, 7,
                                           -128, -128, 8, 9, -128, -128, 10, 11, -128, -128, 12, 13, -128, -128, 14, 15);
    __m256i h = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)b_addr(b, at, bt)));
    return _mm256_castsi256_ps(_mm256_shuffle_epi8(h, widen));
}

/* The last n < 8 elements, zeros after them (reads nothing past them). */
AVX2_INLINE __m256 load_b_tail(const void *b, int64_t at, int64_t n, __m256i mask, const int bt) {
    if (bt == TS_F32) return _mm256_maskload_ps((const float *)b_addr(b, at, bt), mask);
    _Alignas(16) unsigned char buf[32] = {0};
    memcpy(buf, b_addr(b, at, bt), (size_t)(n * b_bytes(bt)));
    return load_b(buf, 0, bt);
}

AVX2_INLINE __m256 final_value(__m256 acc, __m256 c_old, __m256 alpha, __m256 beta, int beta_zero) {
    acc = _mm256_mul_ps(alpha, acc);
    return beta_zero ? acc : _mm256_fmadd_ps(beta, c_old, acc);
}

/* op(B) row-major (the GEMV y = x B): B is streamed row by row, NN_KU rows at a time, across a
 * chunk of columns whose M rows of partial sums live in a 32 KiB stack buffer (L1), so DRAM
 * and the prefetchers see long sequential runs (whole rows of this thread's column range for
 * M = 1) instead of a column walk with a row-sized stride. Each element is still one FMA chain
 * over k in order (partial sums round-trip through memory exactly), so the column grouping,
 * chunking and thread split never change a bit. */
#define NN_PART_FLOATS 8192 /* partial-sum buffer: M x chunk */
#define NN_KU 4

/* Chunk width for m rows: as wide as the buffer allows, a multiple of 96 (= 8*NV for every NV
 * used below, so strips tile it exactly). */
static inline int64_t nn_chunk(int m) { return (int64_t)(NN_PART_FLOATS / m) / 96 * 96; }


/* Rows k0..k0+ku of B against M x (8*NV) partial sums at chunk offset jb (column j of C). */
AVX2_INLINE void nn_step(const ts_gemm_small_args *p, float *part, int64_t j, int64_t jb, int64_t k0, int64_t ku,
                         const int m, const int nv, int64_t n_valid, const int bt) {
    const int64_t chunk = nn_chunk(m);
    const int masked = n_valid < 8 * nv;
    const __m256i mask = masked ? tail_mask(n_valid) : _mm256_set1_epi32(-1);
    __m256 acc[TS_GEMM_SMALL_M][4];
    for (int i = 0; i < m; i++)
        for (int v = 0; v < nv; v++)
            acc[i][v] = k0 == 0 ? _mm256_setzero_ps() : _mm256_load_ps(part + i * chunk + jb + 8 * v);
    const char *bk = b_addr(b_base(p, bt), k0 * p->ldb + j, bt);
    const float *ak = p->a + k0 * p->a_cs;
#pragma GCC unroll 4
    for (int64_t kk = 0; kk < ku; kk++, bk = b_addr(bk, p->ldb, bt), ak += p->a_cs) {
        __m256 bv[4];
        for (int v = 0; v < nv; v++) /* masked: the first n_valid columns, zeros after */
            bv[v] = masked ? load_b_tail(bk, 0, n_valid, mask, bt) : load_b(bk, 8 * v, bt);
        for (int i = 0; i < m; i++) {
            __m256 av = _mm256_broadcast_ss(ak + i * p->a_rs);
            for (int v = 0; v < nv; v++) acc[i][v] = _mm256_fmadd_ps(av, bv[v], acc[i][v]);
        }
    }
    for (int i = 0; i < m; i++)
        for (int v = 0; v < nv; v++) _mm256_store_ps(part + i * chunk + jb + 8 * v, acc[i][v]);
}

/* C(:, j0..j0+w) = alpha * partial sums + beta * C. */
AVX2_INLINE void nn_finish(const ts_gemm_small_args *p, const float *part, int64_t j0, int64_t w, const int m) {
    __m256 va = _mm256_set1_ps(p->alpha), vb = _mm256_set1_ps(p->beta);
    int bz = p->beta == 0.0f;
    const int64_t chunk = nn_chunk(m);
    for (int i = 0; i < m; i++)
        for (int64_t jb = 0; jb < w; jb += 8) {
            float *c = p->c + i * p->ldc + j0 + jb;
            __m256 acc = _mm256_load_ps(part + i * chunk + jb);
            if (w - jb < 8) {
                __m256i mask = tail_mask(w - jb);
                __m256 old = bz ? _mm256_setzero_ps() : _mm256_maskload_ps(c, mask);
                _mm256_maskstore_ps(c, mask, final_value(acc, old, va, vb, bz));
            } else {
                __m256 old = bz ? _mm256_setzero_ps() : _mm256_loadu_ps(c);
                _mm256_storeu_ps(c, final_value(acc, old, va, vb, bz));
            }
        }
}

AVX2_INLINE void nn_rows(const ts_gemm_small_args *p, int64_t n0, int64_t n1, const int m, const int nv, const int bt) {
    _Alignas(32) float part[NN_PART_FLOATS];
    const int64_t chunk = nn_chunk(m);
    for (int64_t j0 = n0; j0 < n1; j0 += chunk) {
        int64_t w = n1 - j0 < chunk ? n1 - j0 : chunk;
        for (int64_t k0 = 0; k0 < p->k; k0 += NN_KU) {
            int64_t ku = p->k - k0 < NN_KU ? p->k - k0 : NN_KU, jb = 0;
            for (; jb + 8 * nv <= w; jb += 8 * nv) nn_step(p, part, j0 + jb, jb, k0, ku, m, nv, 8 * nv, bt);
            for (; jb + 8 <= w; jb += 8) nn_step(p, part, j0 + jb, jb, k0, ku, m, 1, 8, bt);
            if (jb < w) nn_step(p, part, j0 + jb, jb, k0, ku, m, 1, w - jb, bt);
        }
        nn_finish(p, part, j0, w, m);
    }
}

AVX2_INLINE void nn_by_m(const ts_gemm_small_args *p, int64_t n0, int64_t n1, const int bt) {
    switch (p->m) { /* M x NV partial sums in registers, at most 12 */
    case 1: nn_rows(p, n0, n1, 1, 4, bt); break;
    case 2: nn_rows(p, n0, n1, 2, 4, bt); break;
    case 3: nn_rows(p, n0, n1, 3, 3, bt); break;
    case 4: nn_rows(p, n0, n1, 4, 2, bt); break;
    case 5: nn_rows(p, n0, n1, 5, 2, bt); break;
    case 6: nn_rows(p, n0, n1, 6, 2, bt); break;
    case 7: nn_rows(p, n0, n1, 7, 1, bt); break;
    default: nn_rows(p, n0, n1, 8, 1, bt); break;
    }
}

AVX2 void ts_gemm_small_nn_avx2(const ts_gemm_small_args *p, int64_t n0, int64_t n1) { nn_by_m(p, n0, n1, TS_F32); }

/* A small-M kernel (nn_by_m, nt_by_m) for each narrow type of B (p->b_narrow, p->b_type): the
 * same blocking and arithmetic as on f32, B widened as it loads; gemm.c hands over only
 * TS_GEMM_AVX2_NARROW_TYPES. Each instance is a function of its own: inlined together into one
 * dispatcher, GCC stopped keeping their accumulators in registers (16 x 1024 x 1024 on bf16
 * B^T ran at 30 instead of 61-70 GFLOP/s). */
#define NARROW_INSTANCE(by_m, suffix, type)                                                                 \
    __attribute__((noinline)) AVX2 static void by_m##_##suffix(const ts_gemm_small_args *p, int64_t n0,    \
                                                               int64_t n1) {                               \
        by_m(p, n0, n1, type);                                                                              \
    }
#define SMALL_NARROW(by_m, name)                                                                            \
    NARROW_INSTANCE(by_m, bf16, TS_BF16)                                                                    \
    NARROW_INSTANCE(by_m, f16, TS_F16)                                                                      \
    NARROW_INSTANCE(by_m, e4m3, TS_F8_E4M3)                                                                 \
    NARROW_INSTANCE(by_m, e5m2, TS_F8_E5M2)                                                                 \
    AVX2 void name(const ts_gemm_small_args *p, int64_t n0, int64_t n1) {                                    \
        switch (p->b_type) {                                                                                \
        case TS_BF16: by_m##_bf16(p, n0, n1); break;                                                        \
        case TS_F16: by_m##_f16(p, n0, n1); break;                                                          \
        case TS_F8_E4M3: by_m##_e4m3(p, n0, n1); break;                                                     \
        case TS_F8_E5M2: by_m##_e5m2(p, n0, n1); break;                                                     \
        default: break;                                                                                     \
        }                                                                                                   \
    }

SMALL_NARROW(nn_by_m, ts_gemm_small_nn_narrow_avx2)

/* Horizontal sum in a fixed order (part of the bit-reproducibility contract). */
/* The sums of eight vectors' lanes at once, v[k]'s in lane k, each added in the same order:
 * halves (lane i + lane i+4), then those lanes 0+2 and 1+3, then the two. One horizontal sum
 * at a time cost about as much as the FMAs of a 4-row block over K = 256. */
AVX2_INLINE __m256 hsum8(const __m256 *v) {
    __m256 half[4], pair[2];
    for (int i = 0; i < 4; i++) /* [v[2i] lo + hi | v[2i+1] lo + hi] */
        half[i] = _mm256_add_ps(_mm256_permute2f128_ps(v[2 * i], v[2 * i + 1], 0x20),
                                _mm256_permute2f128_ps(v[2 * i], v[2 * i + 1], 0x31));
    for (int i = 0; i < 2; i++) /* 128-bit lane L: [x 0+2, x 1+3, y 0+2, y 1+3] of v[4i + L], v[4i + 2 + L] */
        pair[i] = _mm256_add_ps(_mm256_shuffle_ps(half[2 * i], half[2 * i + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                                _mm256_shuffle_ps(half[2 * i], half[2 * i + 1], _MM_SHUFFLE(3, 2, 3, 2)));
    __m256 all = _mm256_add_ps(_mm256_shuffle_ps(pair[0], pair[1], _MM_SHUFFLE(2, 0, 2, 0)),
                               _mm256_shuffle_ps(pair[0], pair[1], _MM_SHUFFLE(3, 1, 3, 1))); /* v 0 2 4 6 1 3 5 7 */
    return _mm256_permutevar8x32_ps(all, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

/* The dot-product kernel streams B (when decoding, a weight matrix from DRAM: the weights do
 * not stay in cache from one token to the next), so each k step also prefetches the line
 * NT_PREFETCH_BYTES further on (the rows of B usually follow each other). A prefetch never
 * faults, so running past the end of B is harmless. */
#define NT_PREFETCH_BYTES 16384

/* op(B)^T row-major (the GEMV y = W x with W stored N x K): MB rows of op(A) (k-contiguous)
 * dotted with R rows of B (f32, or narrow widened as loaded), each dot product in NACC
 * 8-lane partial sums. With NACC = 2 the even 8-blocks of k go to the first, odd ones and a
 * masked tail to the second; with NACC = 1 all go to one. NACC depends only on M, and every
 * MB/R grouping runs the same per-element arithmetic, so the column split never changes a bit
 * (nor does narrow storage: its products are those of f32 B holding the same values).
 * MB*R*NACC <= 8 chains keep both FMA pipes busy. */
AVX2_INLINE void nt_block(const ts_gemm_small_args *p, int64_t i0, int64_t j, const int mb, const int r,
                          const int nacc, const int bt) {
    __m256 acc[4][4][2];
    for (int i = 0; i < mb; i++)
        for (int q = 0; q < r; q++) acc[i][q][0] = acc[i][q][1] = _mm256_setzero_ps();
    const float *a = p->a + i0 * p->a_rs;
    const void *b = b_addr(b_base(p, bt), j * p->ldb, bt);
    int64_t K = p->k, k = 0;
    for (; k + 8 * nacc <= K; k += 8 * nacc) {
        if (bt != TS_F32 || r > 1) /* B's r rows as one run (a weight matrix): its bytes NT_PREFETCH_BYTES on,
                           * as read (r streams prefetched separately halve the DRAM rate) */
            for (int o = 0; o < b_bytes(bt) * r * 8 * nacc; o += 64)
                _mm_prefetch(b_addr(b, r * k, bt) + NT_PREFETCH_BYTES + o, _MM_HINT_T0);
        for (int q = 0; q < r; q++) {
            if (bt == TS_F32 && r == 1) _mm_prefetch(b_addr(b, q * p->ldb + k, bt) + NT_PREFETCH_BYTES, _MM_HINT_T0);
            for (int h = 0; h < nacc; h++) {
                __m256 bv = load_b(b, q * p->ldb + k + 8 * h, bt);
                for (int i = 0; i < mb; i++)
                    acc[i][q][h] = _mm256_fmadd_ps(_mm256_loadu_ps(a + i * p->a_rs + k + 8 * h), bv, acc[i][q][h]);
            }
        }
    }
    if (nacc == 2 && k + 8 <= K) {
        for (int q = 0; q < r; q++)
            for (int i = 0; i < mb; i++)
                acc[i][q][0] = _mm256_fmadd_ps(_mm256_loadu_ps(a + i * p->a_rs + k), load_b(b, q * p->ldb + k, bt),
                                               acc[i][q][0]);
        k += 8;
    }
    if (k < K) {
        __m256i mask = tail_mask(K - k);
        for (int q = 0; q < r; q++)
            for (int i = 0; i < mb; i++)
                acc[i][q][nacc - 1] = _mm256_fmadd_ps(_mm256_maskload_ps(a + i * p->a_rs + k, mask),
                                                      load_b_tail(b, q * p->ldb + k, K - k, mask, bt),
                                                      acc[i][q][nacc - 1]);
    }
    __m256 sums[16] = {0}; /* the last group of eight padded with zeros */
    _Alignas(32) float dot[16];
    for (int i = 0; i < mb; i++)
        for (int q = 0; q < r; q++)
            sums[i * r + q] = nacc == 2 ? _mm256_add_ps(acc[i][q][0], acc[i][q][1]) : acc[i][q][0];
    for (int g = 0; g < mb * r; g += 8) _mm256_store_ps(dot + g, hsum8(sums + g));
    for (int i = 0; i < mb; i++)
        for (int q = 0; q < r; q++) {
            float *c = p->c + (i0 + i) * p->ldc + j + q, s = p->alpha * dot[i * r + q];
            *c = p->beta == 0.0f ? s : _mm_cvtss_f32(_mm_fmadd_ss(_mm_set_ss(p->beta), _mm_set_ss(*c), _mm_set_ss(s)));
        }
}

/* All rows of op(A), four at a time, against B rows j..j+r. */
AVX2_INLINE void nt_b_rows(const ts_gemm_small_args *p, int64_t j, const int r, const int nacc, const int bt) {
    for (int64_t i0 = 0; i0 < p->m; i0 += 4) {
        switch (p->m - i0 < 4 ? p->m - i0 : 4) {
        case 1: nt_block(p, i0, j, 1, r, nacc, bt); break;
        case 2: nt_block(p, i0, j, 2, r, nacc, bt); break;
        case 3: nt_block(p, i0, j, 3, r, nacc, bt); break;
        default: nt_block(p, i0, j, 4, r, nacc, bt); break;
        }
    }
}

AVX2_INLINE void nt_cols(const ts_gemm_small_args *p, int64_t n0, int64_t n1, const int r, const int nacc,
                         const int bt) {
    int64_t j = n0;
    for (; j + r <= n1; j += r) nt_b_rows(p, j, r, nacc, bt);
    for (; j < n1; j++) nt_b_rows(p, j, 1, nacc, bt);
}

/* op(B)^T row-major with 6 <= M <= 16 (a decode batch, a MoE expert's rows): op(A) is small, so
 * it is packed k-major into w lanes on the stack (w = 16 past 8 rows, else 8; rows past M zero),
 * and each element of OT_R_OF(w) rows of B at once is broadcast against it: per k, w / 8 loads
 * of A, 6 (w = 16) or 12 (w = 8) broadcasts and 12 FMAs into 12 accumulators. B is read once,
 * in its natural order, with no horizontal sums; the dot-product form above re-reads each B row
 * once per 4 rows of A and pays a horizontal sum per element, which made it 1.15-1.5x slower
 * for 16 rows (16 x 128 x 256, 16 x 256 x 128, 16 x 24 x 1024, from L3; about even at 9 and 10
 * rows). With 8 lanes every FMA needs its own broadcast, and the form ran at about 63% of the
 * FMA peak: for 6-8 rows of f32 B 1.0-1.13x faster than the dot products (8 x 128 x 256 from
 * cache 9.2 -> 8.5 us, 8 x 256 x 128 10.8 -> 9.5; from DRAM 1.0-1.09x), for bf16 B 0.78-0.99x
 * from cache and 0.81-0.87x from DRAM (it widens B first; the dot products read half the
 * bytes), and slower at 5 rows (1 thread, shared 2-core Zen VM, medians). Each C element is one
 * FMA chain over k in order (partial sums of k slices round-trip through memory exactly),
 * whatever M, the slicing or the column split. */
#define OT_W 16   /* most lanes of packed A (W below: 8 or 16, a compile-time argument) */
#define OT_ACC 12 /* accumulators per tile: OT_R_OF(W) B rows x W / 8 vectors */
#define OT_R_OF(w) (OT_ACC * 8 / (w))
#define OT_R OT_R_OF(8) /* most B rows per tile */
#define OT_KC 512 /* k per packed A slice: 512 x 16 floats = 32 KiB */
#define OT_WC 128 /* k per widened chunk of narrow B */
#define OT_WS (OT_WC + 16) /* floats per widened row: the pad keeps a tile's rows in different L1 sets */
#define OT_NC 96  /* columns per partial-sum block when K takes several slices (each OT_R_OF divides it) */

/* Rows [0, m) of op(A), depth [k0, k0 + kc), into pa[k * w + i]: 8 x 8 register transposes,
 * the leftover k one by one. */
AVX2_INLINE void ot_pack_a(const ts_gemm_small_args *p, float *pa, int64_t k0, int64_t kc, const int w) {
    const float *a = p->a + k0;
    int64_t k = 0;
    for (; k + 8 <= kc; k += 8)
        for (int g = 0; g < w; g += 8) {
            __m256 r[8];
            load_transposed(r, a + g * p->a_rs + k, p->a_rs, p->m - g < 8 ? (int)(p->m - g) : 8);
            for (int q = 0; q < 8; q++) _mm256_store_ps(pa + (k + q) * w + g, r[q]);
        }
    for (; k < kc; k++)
        for (int i = 0; i < w; i++) pa[k * w + i] = i < p->m ? a[i * p->a_rs + k] : 0.0f;
}

/* kc elements of a narrow row into dst, 8 per load_b. */
AVX2_INLINE void widen_row(float *dst, const char *row, int64_t kc, const int bt) {
    int64_t k = 0;
    for (; k + 8 <= kc; k += 8) _mm256_storeu_ps(dst + k, load_b(row, k, bt));
    if (k < kc) _mm256_maskstore_ps(dst + k, tail_mask(kc - k), load_b_tail(row, k, kc - k, tail_mask(kc - k), bt));
}

/* Rows j..j+r of narrow B, depth [k0, k0 + kc), widened into wide[q * OT_WS + k], 8 elements per
 * load_b (bf16: one byte shuffle). Broadcasting bf16 elements one by one costs a scalar load, a
 * shift and a broadcast each - it made 16 x 256 x 256 run at 57% of the f32 speed - while this
 * pass costs a few operations per 8 elements, read again 16 times from L1. bf16 (the inference
 * weights) is widened inline; the other narrow types by this one function, which looks at the
 * type per row, so that the tiles below exist once for all of them (an instance per type made
 * this file take minutes to compile under the sanitizers, and the call costs bf16 10-15%). */
__attribute__((noinline)) AVX2 static void ot_widen_any(const ts_gemm_small_args *p, float *wide, int64_t j,
                                                        int64_t k0, int64_t kc, int r) {
    for (int q = 0; q < r; q++) {
        const int64_t at = (j + q) * p->ldb + k0;
        float *dst = wide + q * OT_WS;
        switch (p->b_type) {
        case TS_BF16: widen_row(dst, b_addr(p->b_narrow, at, TS_BF16), kc, TS_BF16); break;
        case TS_F16: widen_row(dst, b_addr(p->b_narrow, at, TS_F16), kc, TS_F16); break;
        case TS_F8_E4M3: widen_row(dst, b_addr(p->b_narrow, at, TS_F8_E4M3), kc, TS_F8_E4M3); break;
        default: widen_row(dst, b_addr(p->b_narrow, at, TS_F8_E5M2), kc, TS_F8_E5M2); break;
        }
    }
}

/* ot_tile's bt for a narrow type looked up at run time (ot_widen_any). */
#define OT_ANY_NARROW (-1)

/* Adds k in [0, kc) of packed A (pa[k * w + i]) times rows 0..r of B (element k of row q at
 * b[q * ldb + k]) to the tile's accumulators, prefetching the next tile's rows (next) along. */
AVX2_INLINE void ot_span(const ts_gemm_small_args *p, const float *pa, __m256 *acc, const float *b, int64_t ldb,
                         const char *next, int64_t bytes, int64_t k0, int64_t kc, const int r, const int w) {
    const int v = w / 8;
    for (int64_t kb = k0; kb < kc; kb += 16) {
        for (int64_t o = kb * r * bytes; o < (kb + 16) * r * bytes; o += 64) _mm_prefetch(next + o, _MM_HINT_T0);
        int64_t k1 = kc - kb < 16 ? kc : kb + 16;
        for (int64_t k = kb; k < k1; k++) {
            __m256 a[OT_W / 8];
            for (int g = 0; g < v; g++) a[g] = _mm256_load_ps(pa + k * w + 8 * g);
#pragma GCC unroll 12
            for (int q = 0; q < r; q++) {
                __m256 bv = _mm256_broadcast_ss(b + q * ldb + k);
                for (int g = 0; g < v; g++) acc[v * q + g] = _mm256_fmadd_ps(a[g], bv, acc[v * q + g]);
            }
        }
    }
}

/* C columns j..j+r (partial sums at part + jb * w) over the packed slice [k0, k0 + kc):
 * starts from zero on the first slice, writes C on the last, else keeps the sums in part. The
 * next tile's rows of B are prefetched along as one run (the rows usually follow each other;
 * 12 rows prefetched as 12 streams made 8 x 256 x 128 from DRAM 1.35x slower). Narrow B is
 * widened first, OT_WC of k at a time (12 whole rows next to packed A overflowed L1), so all
 * run the same f32 arithmetic: the same bits. */
AVX2_INLINE void ot_tile(const ts_gemm_small_args *p, const float *pa, float *part, int64_t j, int64_t jb,
                         int64_t k0, int64_t kc, const int r, const int w, const int bt) {
    /* Column q's rows 8g..8g+7 in acc[v * q + g]; every index is a constant once the loops are
     * unrolled, which keeps the accumulators in registers. */
    const int v = w / 8;
    __m256 acc[OT_ACC];
#pragma GCC unroll 12
    for (int q = 0; q < v * r; q++) acc[q] = k0 == 0 ? _mm256_setzero_ps() : _mm256_load_ps(part + jb * w + 8 * q);
    const int narrow = bt != TS_F32;
    const int64_t bytes = bt == OT_ANY_NARROW ? b_bytes(p->b_type) : b_bytes(bt);
    const char *next = (const char *)(narrow ? p->b_narrow : (const void *)p->b) + ((j + r) * p->ldb + k0) * bytes;
    if (!narrow) {
        ot_span(p, pa, acc, p->b + j * p->ldb + k0, p->ldb, next, bytes, 0, kc, r, w);
    } else {
        _Alignas(32) float wide[OT_R * OT_WS];
        for (int64_t c0 = 0; c0 < kc; c0 += OT_WC) {
            const int64_t c1 = kc - c0 < OT_WC ? kc : c0 + OT_WC;
            if (bt == TS_BF16)
                for (int q = 0; q < r; q++)
                    widen_row(wide + q * OT_WS, b_addr(p->b_narrow, (j + q) * p->ldb + k0 + c0, bt), c1 - c0, bt);
            else ot_widen_any(p, wide, j, k0 + c0, c1 - c0, r);
            ot_span(p, pa + c0 * w, acc, wide, OT_WS, next + c0 * r * bytes, bytes, 0, c1 - c0, r, w);
        }
    }
    const int last = k0 + kc == p->k;
    _Alignas(32) float tile[OT_ACC * 8]; /* column q, row i at q * w + i */
    float *sums = last ? tile : part + jb * w;
#pragma GCC unroll 12
    for (int q = 0; q < v * r; q++) _mm256_store_ps(sums + 8 * q, acc[q]);
    if (!last) return;
    for (int q = 0; q < r; q++)
        for (int64_t i = 0; i < p->m; i++) {
            float *c = p->c + i * p->ldc + j + q, s = p->alpha * tile[q * w + i];
            *c = p->beta == 0.0f ? s : _mm_cvtss_f32(_mm_fmadd_ss(_mm_set_ss(p->beta), _mm_set_ss(*c), _mm_set_ss(s)));
        }
}

/* Columns [j0, j1) of C over the packed slice [k0, k0 + kc), partial sums of column j at
 * part + (j - j0) * w: whole tiles, then (w = 8) tiles of 6, then one narrower. The grouping
 * of columns never changes a bit, so the leftovers share the 16-lane form's tile widths. */
AVX2_INLINE void ot_columns(const ts_gemm_small_args *p, const float *pa, float *part, int64_t j0, int64_t j1,
                            int64_t k0, int64_t kc, const int w, const int bt) {
    int64_t j = j0;
    for (; j + OT_R_OF(w) <= j1; j += OT_R_OF(w)) ot_tile(p, pa, part, j, j - j0, k0, kc, OT_R_OF(w), w, bt);
    if (w == 8 && j + 8 <= j1) { /* 8 accumulators: still both FMA pipes busy */
        ot_tile(p, pa, part, j, j - j0, k0, kc, 8, w, bt);
        j += 8;
    }
    for (; j + 6 <= j1; j += 6) ot_tile(p, pa, part, j, j - j0, k0, kc, 6, w, bt);
    switch (j1 - j) {
    case 1: ot_tile(p, pa, part, j, j - j0, k0, kc, 1, w, bt); break;
    case 2: ot_tile(p, pa, part, j, j - j0, k0, kc, 2, w, bt); break;
    case 3: ot_tile(p, pa, part, j, j - j0, k0, kc, 3, w, bt); break;
    case 4: ot_tile(p, pa, part, j, j - j0, k0, kc, 4, w, bt); break;
    case 5: ot_tile(p, pa, part, j, j - j0, k0, kc, 5, w, bt); break;
    default: break;
    }
}

/* Rows of op(A) packed into w lanes: w = 16 for 8 < M <= 16, w = 8 for M <= 8. */
AVX2_INLINE void ot_rows(const ts_gemm_small_args *p, int64_t n0, int64_t n1, const int w, const int bt) {
    _Alignas(32) float pa[OT_KC * OT_W], part[OT_NC * OT_W];
    if (p->k <= OT_KC) { /* one slice: pack A once, no partial sums */
        ot_pack_a(p, pa, 0, p->k, w);
        ot_columns(p, pa, part, n0, n1, 0, p->k, w, bt);
        return;
    }
    for (int64_t j0 = n0; j0 < n1; j0 += OT_NC) {
        int64_t j1 = n1 - j0 < OT_NC ? n1 : j0 + OT_NC;
        for (int64_t k0 = 0; k0 < p->k; k0 += OT_KC) {
            int64_t kc = p->k - k0 < OT_KC ? p->k - k0 : OT_KC;
            ot_pack_a(p, pa, k0, kc, w);
            ot_columns(p, pa, part, j0, j1, k0, kc, w, bt);
        }
    }
}

__attribute__((noinline)) AVX2 static void ot_rows_narrow(const ts_gemm_small_args *p, int64_t n0, int64_t n1) {
    if (p->m <= 8) ot_rows(p, n0, n1, 8, OT_ANY_NARROW);
    else ot_rows(p, n0, n1, 16, OT_ANY_NARROW);
}

/* Each form in a function of its own per type of B: with both widths inlined next to the dot
 * products, GCC spilled the dot products' pointers (4 x 128 x 256 f32: 5.0 -> 6.9 us). */
AVX2_INLINE void ot_rows8(const ts_gemm_small_args *p, int64_t n0, int64_t n1, const int bt) { ot_rows(p, n0, n1, 8, bt); }
AVX2_INLINE void ot_rows16(const ts_gemm_small_args *p, int64_t n0, int64_t n1, const int bt) {
    ot_rows(p, n0, n1, 16, bt);
}
NARROW_INSTANCE(ot_rows8, f32, TS_F32)
NARROW_INSTANCE(ot_rows8, bf16, TS_BF16)
NARROW_INSTANCE(ot_rows16, f32, TS_F32)
NARROW_INSTANCE(ot_rows16, bf16, TS_BF16)

/* Whether M <= 8 rows take the 8-lane packed-A form rather than the dot products (see nt_by_m):
 * from 6 rows on, unless B's rows lie a multiple of 2 KiB apart (f32), where a tile's 12 rows
 * share a few L1 sets and evict each other (6 x 24 x 1024 ran 2x slower). It looks at M and
 * ldb only, so f32 and narrow B with the same values take the same path. */
AVX2_INLINE int ot8_wins(const ts_gemm_small_args *p) { return p->m >= 6 && p->ldb % 512 != 0; }

AVX2_INLINE void nt_by_m(const ts_gemm_small_args *p, int64_t n0, int64_t n1, const int bt) {
    /* (B rows at once, partial sums per element): at most 8 accumulators. M = 1 takes 4 rows
     * of B: a row's two FMA chains are latency-bound when B is cached (1 x 704 x 256 bf16 from
     * cache: 24 us with one row, 14 us with four), and prefetching the 4 rows as one run
     * (nt_block) streams DRAM faster than one row with its own prefetch did (1 x 4096 x 4096 f32:
     * 8.4-9.1 -> 10.3-10.4 GFLOP/s on 1 thread, 73 -> 84% of the read bandwidth; 13.5-14.0 ->
     * 15.2-16.2 on 2; quiet 2-core Zen VM) - prefetching 4 streams separately had halved it.
     * M = 3..8 (a decode batch's experts) takes 4 rows of A against 2 rows of B with one partial
     * sum each: 6 loads per 8 FMAs, where 1 row of B with 2 partial sums needed 10 (load-bound).
     * Streaming from DRAM (1 thread, quiet 2-core Zen 3 VM, medians): 4 x 128 x 256 9.2-11.3 ->
     * 7.2-7.4 us, 8 x 128 x 256 12.6 -> 10.0, 4 x 256 x 128 9.6 -> 7.6; 3 B rows spilled. Two
     * rows of A keep two B rows for enough independent sums. Past 8 rows of A, and from 6 rows
     * (ot8_wins), the packed-A form. */
    switch (p->m) {
    case 1: nt_cols(p, n0, n1, 4, 2, bt); break;
    case 2: nt_cols(p, n0, n1, 2, 2, bt); break;
    default:
        if (p->m <= 8 && !ot8_wins(p)) nt_cols(p, n0, n1, 2, 1, bt); /* 4 rows of A at a time */
        else if (bt != TS_F32 && bt != TS_BF16) ot_rows_narrow(p, n0, n1);
        else if (p->m <= 8 && bt == TS_F32) ot_rows8_f32(p, n0, n1);
        else if (p->m <= 8) ot_rows8_bf16(p, n0, n1);
        else if (bt == TS_F32) ot_rows16_f32(p, n0, n1);
        else ot_rows16_bf16(p, n0, n1);
        break;
    }
}

AVX2 void ts_gemm_small_nt_avx2(const ts_gemm_small_args *p, int64_t n0, int64_t n1) { nt_by_m(p, n0, n1, TS_F32); }

SMALL_NARROW(nt_by_m, ts_gemm_small_nt_narrow_avx2)

const ts_gemm_kernels ts_gemm_kernels_avx2 = {
    .name = "avx2",
    .tier = TS_GEMM_TIER_AVX2,
    .mr = MR,
    .nr = NR,
    /* The blocking BLIS uses for its Zen 2/3 sgemm, re-checked here on Zen 3 (KC 192..384,
     * MC 96..288 were within measurement noise of it, so the reasoned values stay): */
    .mc = TS_GEMM_AVX2_MC, /* A block 144 x 256 x 4 B = 144 KiB: well inside a 512 KiB - 1 MiB L2 */
    .kc = TS_GEMM_AVX2_KC, /* B micro-panel 256 x 16 x 4 B = 16 KiB: half of a 32 KiB L1, the other
                            * half for the streaming A micro-panel (6 KiB) and C */
    .nc = TS_GEMM_AVX2_NC, /* B panel 256 x 4080 x 4 B ~ 4 MiB: shared L3 */
    .ukernel = avx2_ukernel_6x16,
    .pack_a = ts_gemm_pack_avx2,
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
