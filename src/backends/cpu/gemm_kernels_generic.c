/* gemm_kernels_generic.c - portable C kernels for ts_gemm_f32 (see gemm.h for the contract).
 *
 * The fallback tier on every CPU, and the only one on builds for neither x86-64 nor aarch64.
 * The micro-kernel uses GCC/Clang vector types (4 floats, one SSE or NEON register), which map
 * to whatever the baseline ISA offers without any target flags: the 4 x 8 tile is 8 vector
 * accumulators, leaving room for the two B vectors and a broadcast in the 16 registers of
 * baseline x86-64. Separate multiply and add (no FMA in baseline x86-64; ISO C mode keeps the
 * compiler from contracting them), so the results are the same on every machine. */
#include <string.h>

#include "backends/cpu/gemm.h"

#define GEN_MR 4
#define GEN_NR 8

typedef float v4f __attribute__((vector_size(16)));

static inline v4f load4(const float *p) { /* unaligned load, no aliasing assumptions */
    v4f v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline void store4(float *p, v4f v) { memcpy(p, &v, sizeof v); }

static void generic_ukernel(int64_t kc, const float *restrict a, const float *restrict b, float *restrict c,
                            int64_t ldc, float alpha, float beta) {
    v4f acc[GEN_MR][2] = {{{0}}};
    for (int64_t k = 0; k < kc; k++, a += GEN_MR, b += GEN_NR) {
        v4f b0 = load4(b), b1 = load4(b + 4);
        for (int i = 0; i < GEN_MR; i++) {
            v4f ai = {a[i], a[i], a[i], a[i]};
            acc[i][0] += ai * b0;
            acc[i][1] += ai * b1;
        }
    }
    v4f va = {alpha, alpha, alpha, alpha}, vb = {beta, beta, beta, beta};
    for (int i = 0; i < GEN_MR; i++)
        for (int h = 0; h < 2; h++) {
            float *ci = c + i * ldc + 4 * h;
            v4f r = va * acc[i][h];
            store4(ci, beta == 0.0f ? r : r + vb * load4(ci));
        }
}

/* Final update of one C element; shared by both small-M shapes so they agree. */
static inline float small_update(float acc, float alpha, float beta, const float *c) {
    return beta == 0.0f ? alpha * acc : alpha * acc + beta * *c;
}

#define SMALL_STRIP 16 /* columns accumulated together per row of op(A) */

/* op(B) row-major: for each strip of columns, accumulate every row of op(A) while streaming the
 * strip of B down k once. Each element is one sequential sum over k, whatever the strip. */
static void generic_small_nn(const ts_gemm_small_args *p, int64_t n0, int64_t n1) {
    for (int64_t j0 = n0; j0 < n1; j0 += SMALL_STRIP) {
        int w = n1 - j0 < SMALL_STRIP ? (int)(n1 - j0) : SMALL_STRIP;
        for (int64_t i = 0; i < p->m; i++) {
            float acc[SMALL_STRIP] = {0};
            const float *ai = p->a + i * p->a_rs;
            for (int64_t k = 0; k < p->k; k++) {
                float av = ai[k * p->a_cs];
                const float *bk = p->b + k * p->ldb + j0;
                for (int j = 0; j < w; j++) acc[j] += av * bk[j];
            }
            float *ci = p->c + i * p->ldc + j0;
            for (int j = 0; j < w; j++) ci[j] = small_update(acc[j], p->alpha, p->beta, &ci[j]);
        }
    }
}

/* Element i of a B row: f32, or bf16 (b16) widened exactly (the upper half of an f32). */
static inline float b_elem(const void *y, int64_t i, const int b16) {
    if (!b16) return ((const float *)y)[i];
    uint32_t bits = (uint32_t)((const uint16_t *)y)[i] << 16;
    float v;
    memcpy(&v, &bits, sizeof v);
    return v;
}

/* op(B)^T row-major: dot products along k with 8 interleaved partial sums (vectorizable, and
 * independent of which columns this call got, or of B's storage: bf16 is widened first). */
static inline __attribute__((always_inline)) float dot_k(const float *x, const void *y, int64_t k, const int b16) {
    float part[8] = {0};
    int64_t kk = 0;
    for (; kk + 8 <= k; kk += 8)
        for (int l = 0; l < 8; l++) part[l] += x[kk + l] * b_elem(y, kk + l, b16);
    for (int l = 0; kk + l < k; l++) part[l] += x[kk + l] * b_elem(y, kk + l, b16);
    return ((part[0] + part[4]) + (part[2] + part[6])) + ((part[1] + part[5]) + (part[3] + part[7]));
}

static inline __attribute__((always_inline)) void small_nt(const ts_gemm_small_args *p, int64_t n0, int64_t n1,
                                                           const int b16) {
    for (int64_t j = n0; j < n1; j++) {
        const void *bj = b16 ? (const void *)((const uint16_t *)p->b_narrow + j * p->ldb) : (const void *)(p->b + j * p->ldb);
        for (int64_t i = 0; i < p->m; i++) {
            float *c = p->c + i * p->ldc + j;
            *c = small_update(dot_k(p->a + i * p->a_rs, bj, p->k, b16), p->alpha, p->beta, c);
        }
    }
}

static void generic_small_nt(const ts_gemm_small_args *p, int64_t n0, int64_t n1) { small_nt(p, n0, n1, 0); }

static void generic_small_nt_bf16(const ts_gemm_small_args *p, int64_t n0, int64_t n1) { small_nt(p, n0, n1, 1); }

const ts_gemm_kernels ts_gemm_kernels_generic = {
    .name = "generic",
    .tier = TS_GEMM_TIER_GENERIC,
    .mr = GEN_MR,
    .nr = GEN_NR,
    .mc = 128,  /* A block 128 x 256 x 4 B = 128 KiB: fits any L2 */
    .kc = 256,  /* B micro-panel 256 x 8 x 4 B = 8 KiB: stays in L1 */
    .nc = 2048, /* B panel 2 MiB: L3 */
    .ukernel = generic_ukernel,
    .pack_a = NULL,
    .pack_b = NULL,
    .small_nn = generic_small_nn,
    .small_nt = generic_small_nt,
    .small_nt_narrow = generic_small_nt_bf16,
    .narrow_nt_types = 1u << TS_BF16,
};
