/* gemm_kernels_neon.c - AArch64 Advanced SIMD (NEON) kernels for ts_gemm_f32 (see gemm.h for the
 * contract): an 8 x 12 micro-kernel, a packer for row-major panels, and the small-M path.
 *
 * ASIMD is part of the AArch64 base architecture, so this file needs no target attributes and
 * gemm.c offers the tier on every aarch64 CPU (Kunpeng, Graviton, Ampere, Apple). Everything
 * uses fused multiply-adds; each C element is always one FMA chain over k in order, whatever
 * tile, strip or thread it falls in, so results are bit-identical for any thread count.
 * Compiles to nothing off aarch64. */
#if defined(__aarch64__)

#include <arm_neon.h>
#include <math.h>

#include "backends/cpu/gemm.h"

/* ---------------------------------------------------------------- micro-kernel 8 x 12 */

/* 8 rows x 12 columns = 24 q-register accumulators; per k: 2 A loads (8 rows), 3 B loads,
 * 24 FMAs taking the A value from a vector lane (vfmaq_laneq_f32, no broadcasts). 24 + 2 + 3 = 29
 * of the 32 vector registers; 24 independent chains cover the 4-cycle FMA latency of two or
 * four FMA pipes. The B micro-panel is 12 floats per k, so it is only 16-byte aligned here;
 * NEON loads do not need more. */
#define MR 8
#define NR 12

/* Cache blocking, for 64 KiB L1d / 512 KiB - 1 MiB L2 cores (Kunpeng 920, Neoverse N1/V1);
 * overridable with -D for tuning runs. */
#ifndef TS_GEMM_NEON_MC
#define TS_GEMM_NEON_MC 240
#endif
#ifndef TS_GEMM_NEON_KC
#define TS_GEMM_NEON_KC 256
#endif
#ifndef TS_GEMM_NEON_NC
#define TS_GEMM_NEON_NC 4080
#endif

static inline float32x4_t final_value(float32x4_t acc, float alpha, float beta, const float *c) {
    float32x4_t r = vmulq_n_f32(acc, alpha);
    return beta == 0.0f ? r : vfmaq_n_f32(r, vld1q_f32(c), beta);
}

/* The scalar twin of final_value, for the small-M path's leftover columns: the same roundings. */
static inline float final_scalar(float acc, float alpha, float beta, const float *c) {
    float r = alpha * acc;
    return beta == 0.0f ? r : fmaf(*c, beta, r);
}

static inline void store_row(float *c, float32x4_t v0, float32x4_t v1, float32x4_t v2, float alpha, float beta) {
    float32x4_t r0 = final_value(v0, alpha, beta, c);
    float32x4_t r1 = final_value(v1, alpha, beta, c + 4);
    float32x4_t r2 = final_value(v2, alpha, beta, c + 8);
    vst1q_f32(c, r0);
    vst1q_f32(c + 4, r1);
    vst1q_f32(c + 8, r2);
}

/* Row r of the tile += (lane l of A vector av) * the three B vectors. */
#define FMA_ROW(r, av, l)                              \
    do {                                               \
        c##r##0 = vfmaq_laneq_f32(c##r##0, b0, av, l); \
        c##r##1 = vfmaq_laneq_f32(c##r##1, b1, av, l); \
        c##r##2 = vfmaq_laneq_f32(c##r##2, b2, av, l); \
    } while (0)

#define STORE_ROW(r) store_row(c + (r) * ldc, c##r##0, c##r##1, c##r##2, alpha, beta)

static void neon_ukernel_8x12(int64_t kc, const float *a, const float *b, float *c, int64_t ldc, float alpha,
                              float beta) {
    float32x4_t c00 = vdupq_n_f32(0.0f), c01 = c00, c02 = c00, c10 = c00, c11 = c00, c12 = c00;
    float32x4_t c20 = c00, c21 = c00, c22 = c00, c30 = c00, c31 = c00, c32 = c00;
    float32x4_t c40 = c00, c41 = c00, c42 = c00, c50 = c00, c51 = c00, c52 = c00;
    float32x4_t c60 = c00, c61 = c00, c62 = c00, c70 = c00, c71 = c00, c72 = c00;
    for (int r = 0; r < MR; r++) __builtin_prefetch(c + r * ldc, 1);
#pragma GCC unroll 4
    for (int64_t k = 0; k < kc; k++) {
        float32x4_t a0 = vld1q_f32(a), a1 = vld1q_f32(a + 4);
        float32x4_t b0 = vld1q_f32(b), b1 = vld1q_f32(b + 4), b2 = vld1q_f32(b + 8);
        FMA_ROW(0, a0, 0);
        FMA_ROW(1, a0, 1);
        FMA_ROW(2, a0, 2);
        FMA_ROW(3, a0, 3);
        FMA_ROW(4, a1, 0);
        FMA_ROW(5, a1, 1);
        FMA_ROW(6, a1, 2);
        FMA_ROW(7, a1, 3);
        a += MR;
        b += NR;
    }
    STORE_ROW(0);
    STORE_ROW(1);
    STORE_ROW(2);
    STORE_ROW(3);
    STORE_ROW(4);
    STORE_ROW(5);
    STORE_ROW(6);
    STORE_ROW(7);
}

/* ---------------------------------------------------------------- packing */

/* 4 x 4 transpose: on return r[q] holds element q of each of the 4 input vectors. */
static inline void transpose4(float32x4_t r[4]) {
    float32x4_t t0 = vtrn1q_f32(r[0], r[1]), t1 = vtrn2q_f32(r[0], r[1]);
    float32x4_t t2 = vtrn1q_f32(r[2], r[3]), t3 = vtrn2q_f32(r[2], r[3]);
    r[0] = vreinterpretq_f32_f64(vtrn1q_f64(vreinterpretq_f64_f32(t0), vreinterpretq_f64_f32(t2)));
    r[1] = vreinterpretq_f32_f64(vtrn1q_f64(vreinterpretq_f64_f32(t1), vreinterpretq_f64_f32(t3)));
    r[2] = vreinterpretq_f32_f64(vtrn2q_f64(vreinterpretq_f64_f32(t0), vreinterpretq_f64_f32(t2)));
    r[3] = vreinterpretq_f32_f64(vtrn2q_f64(vreinterpretq_f64_f32(t1), vreinterpretq_f64_f32(t3)));
}

/* Full panel of w rows (w a multiple of 4) contiguous along k (cs == 1: row-major A, transposed
 * B): 4 rows x 4 k through registers at a time. Returns how many k it packed. */
static int64_t pack_rows_along_k(float *dst, const float *src, int64_t rs, int w, int64_t kc) {
    int64_t k = 0;
    for (; k + 4 <= kc; k += 4)
        for (int g = 0; g < w; g += 4) {
            float32x4_t r[4];
            for (int i = 0; i < 4; i++) r[i] = vld1q_f32(src + (g + i) * rs + k);
            transpose4(r);
            for (int q = 0; q < 4; q++) vst1q_f32(dst + (k + q) * w + g, r[q]);
        }
    return k;
}

/* The NEON tier's packer (contract in gemm.h): full panels of a width that is a multiple of 4
 * with rows along k take the transposing vector path; everything else (edge panels, leftover k,
 * adjacent rows, which are plain copies the compiler vectorizes) the portable one. */
void ts_gemm_pack_neon(float *dst, const float *src, int64_t rs, int64_t cs, int rows, int w, int64_t kc) {
    int64_t k = 0;
    if (rows == w && w % 4 == 0 && cs == 1 && rs != 1) k = pack_rows_along_k(dst, src, rs, w, kc);
    if (k < kc) ts_gemm_pack_generic(dst + k * w, src + k * cs, rs, cs, rows, w, kc - k);
}

/* ---------------------------------------------------------------- small-M path */

#define NN_MAX_NV 4 /* vectors of columns per strip */

/* op(B) row-major: columns [j, j + 4*nv) of all m rows of C, B streamed down k once. */
static inline __attribute__((always_inline)) void nn_strip(const ts_gemm_small_args *p, int64_t j, const int m,
                                                           const int nv) {
    float32x4_t acc[TS_GEMM_SMALL_M][NN_MAX_NV];
    for (int i = 0; i < m; i++)
        for (int v = 0; v < nv; v++) acc[i][v] = vdupq_n_f32(0.0f);
    const float *bk = p->b + j, *ak = p->a;
    for (int64_t k = 0; k < p->k; k++, bk += p->ldb, ak += p->a_cs) {
        float32x4_t bv[NN_MAX_NV];
        for (int v = 0; v < nv; v++) bv[v] = vld1q_f32(bk + 4 * v);
        for (int i = 0; i < m; i++) {
            float av = ak[i * p->a_rs];
            for (int v = 0; v < nv; v++) acc[i][v] = vfmaq_n_f32(acc[i][v], bv[v], av);
        }
    }
    for (int i = 0; i < m; i++)
        for (int v = 0; v < nv; v++) {
            float *c = p->c + i * p->ldc + j + 4 * v;
            vst1q_f32(c, final_value(acc[i][v], p->alpha, p->beta, c));
        }
}

/* Leftover column j (fewer than 4 remain): the same FMA chain in scalar form. */
static void nn_column(const ts_gemm_small_args *p, int64_t j) {
    for (int64_t i = 0; i < p->m; i++) {
        const float *ai = p->a + i * p->a_rs;
        float acc = 0.0f;
        for (int64_t k = 0; k < p->k; k++) acc = fmaf(p->b[k * p->ldb + j], ai[k * p->a_cs], acc);
        float *c = p->c + i * p->ldc + j;
        *c = final_scalar(acc, p->alpha, p->beta, c);
    }
}

static inline __attribute__((always_inline)) void nn_cols(const ts_gemm_small_args *p, int64_t n0, int64_t n1,
                                                          const int m, const int nv) {
    int64_t j = n0;
    for (; j + 4 * nv <= n1; j += 4 * nv) nn_strip(p, j, m, nv);
    for (; j + 4 <= n1; j += 4) nn_strip(p, j, m, 1);
    for (; j < n1; j++) nn_column(p, j);
}

static void neon_small_nn(const ts_gemm_small_args *p, int64_t n0, int64_t n1) {
    switch (p->m) { /* m x nv accumulators, at most 16, plus nv B vectors */
    case 1: nn_cols(p, n0, n1, 1, 4); break;
    case 2: nn_cols(p, n0, n1, 2, 4); break;
    case 3: nn_cols(p, n0, n1, 3, 4); break;
    case 4: nn_cols(p, n0, n1, 4, 4); break;
    case 5: nn_cols(p, n0, n1, 5, 2); break;
    case 6: nn_cols(p, n0, n1, 6, 2); break;
    case 7: nn_cols(p, n0, n1, 7, 2); break;
    default: nn_cols(p, n0, n1, 8, 2); break;
    }
}

/* 4 elements of a B row from element at: f32, or bf16 (b16) widened exactly (a shift into the
 * upper half of an f32). */
static inline __attribute__((always_inline)) float32x4_t load_b(const void *b, int64_t at, const int b16) {
    if (!b16) return vld1q_f32((const float *)b + at);
    return vreinterpretq_f32_u32(vshll_n_u16(vld1_u16((const uint16_t *)b + at), 16));
}

static inline __attribute__((always_inline)) float b_scalar(const void *b, int64_t at, const int b16) {
    if (!b16) return ((const float *)b)[at];
    return vgetq_lane_f32(vreinterpretq_f32_u32(vshll_n_u16(vld1_dup_u16((const uint16_t *)b + at), 16)), 0);
}

/* op(B)^T row-major: mb rows of op(A) (k-contiguous) dotted with r rows of B (f32, or bf16
 * widened as loaded when b16). Each dot product keeps 8 partial sums in two vectors (k blocks
 * of 8; a leftover block of 4 goes to the first), which are added and reduced in a fixed order,
 * then the last k % 4 products are added by scalar FMAs. None of this depends on mb, r or B's
 * storage, so neither the column split nor bf16 weights change a bit. */
static inline __attribute__((always_inline)) void nt_block(const ts_gemm_small_args *p, int64_t i0, int64_t j,
                                                           const int mb, const int r, const int b16) {
    float32x4_t acc[4][4][2];
    for (int i = 0; i < mb; i++)
        for (int q = 0; q < r; q++) acc[i][q][0] = acc[i][q][1] = vdupq_n_f32(0.0f);
    const float *a = p->a + i0 * p->a_rs;
    const void *b = b16 ? (const void *)((const uint16_t *)p->b_narrow + j * p->ldb) : (const void *)(p->b + j * p->ldb);
    int64_t K = p->k, k = 0;
    for (; k + 8 <= K; k += 8)
        for (int q = 0; q < r; q++) {
            float32x4_t b0 = load_b(b, q * p->ldb + k, b16), b1 = load_b(b, q * p->ldb + k + 4, b16);
            for (int i = 0; i < mb; i++) {
                acc[i][q][0] = vfmaq_f32(acc[i][q][0], vld1q_f32(a + i * p->a_rs + k), b0);
                acc[i][q][1] = vfmaq_f32(acc[i][q][1], vld1q_f32(a + i * p->a_rs + k + 4), b1);
            }
        }
    if (k + 4 <= K) {
        for (int q = 0; q < r; q++)
            for (int i = 0; i < mb; i++)
                acc[i][q][0] = vfmaq_f32(acc[i][q][0], vld1q_f32(a + i * p->a_rs + k), load_b(b, q * p->ldb + k, b16));
        k += 4;
    }
    for (int i = 0; i < mb; i++)
        for (int q = 0; q < r; q++) {
            const float *ai = a + i * p->a_rs;
            float s = vaddvq_f32(vaddq_f32(acc[i][q][0], acc[i][q][1]));
            for (int64_t kk = k; kk < K; kk++) s = fmaf(ai[kk], b_scalar(b, q * p->ldb + kk, b16), s);
            float *c = p->c + (i0 + i) * p->ldc + j + q;
            *c = final_scalar(s, p->alpha, p->beta, c);
        }
}

/* All rows of op(A), four at a time, against B rows j..j+r. */
static inline __attribute__((always_inline)) void nt_b_rows(const ts_gemm_small_args *p, int64_t j, const int r,
                                                            const int b16) {
    for (int64_t i0 = 0; i0 < p->m; i0 += 4) {
        switch (p->m - i0 < 4 ? p->m - i0 : 4) {
        case 1: nt_block(p, i0, j, 1, r, b16); break;
        case 2: nt_block(p, i0, j, 2, r, b16); break;
        case 3: nt_block(p, i0, j, 3, r, b16); break;
        default: nt_block(p, i0, j, 4, r, b16); break;
        }
    }
}

static inline __attribute__((always_inline)) void nt_cols(const ts_gemm_small_args *p, int64_t n0, int64_t n1,
                                                          const int r, const int b16) {
    int64_t j = n0;
    for (; j + r <= n1; j += r) nt_b_rows(p, j, r, b16);
    for (; j < n1; j++) nt_b_rows(p, j, 1, b16);
}

static inline __attribute__((always_inline)) void nt_by_m(const ts_gemm_small_args *p, int64_t n0, int64_t n1,
                                                          const int b16) {
    /* B rows at once: at most 16 accumulators (4 A rows x 2 B rows x 2, or 1-2 A rows x 4 x 2). */
    if (p->m <= 2) nt_cols(p, n0, n1, 4, b16);
    else nt_cols(p, n0, n1, 2, b16);
}

static void neon_small_nt(const ts_gemm_small_args *p, int64_t n0, int64_t n1) { nt_by_m(p, n0, n1, 0); }

static void neon_small_nt_bf16(const ts_gemm_small_args *p, int64_t n0, int64_t n1) { nt_by_m(p, n0, n1, 1); }

const ts_gemm_kernels ts_gemm_kernels_neon = {
    .name = "neon",
    .tier = TS_GEMM_TIER_NEON,
    .mr = MR,
    .nr = NR,
    .mc = TS_GEMM_NEON_MC, /* A block 240 x 256 x 4 B = 240 KiB: half of a 512 KiB L2 */
    .kc = TS_GEMM_NEON_KC, /* B micro-panel 256 x 12 x 4 B = 12 KiB and A micro-panel 8 KiB in L1 */
    .nc = TS_GEMM_NEON_NC, /* B panel 256 x 4080 x 4 B ~ 4 MiB: shared L3 */
    .ukernel = neon_ukernel_8x12,
    .pack_a = ts_gemm_pack_neon,
    .pack_b = ts_gemm_pack_neon,
    .small_nn = neon_small_nn,
    .small_nt = neon_small_nt,
    .small_nt_narrow = neon_small_nt_bf16,
    .narrow_nt_types = 1u << TS_BF16,
};

#endif /* __aarch64__ */
