/* gemm.h - the CPU backend's fast GEMM with f32 accumulation (internal API).
 *
 * ts_gemm_f32 computes C = alpha * op(A) * op(B) + beta * C on row-major matrices in the
 * BLIS/GotoBLAS style: op(B) is packed in KC x NC panels, op(A) in MC x KC blocks, and a
 * register-tiled micro-kernel of the active instruction-set tier does the arithmetic. Small M
 * (decode, M <= TS_GEMM_SMALL_M) takes a separate streaming path without packing. ts_gemm is the
 * same with A and B stored in a narrower float type (bf16, f16, fp8 weights and activations):
 * they are converted exactly to f32 while being packed, so the micro-kernels, the accumulation
 * and the result are those of ts_gemm_f32 on the converted values. The CPU backend's matmul
 * kernel and the benchmarks call these; nothing outside src/backends/cpu and bench/ should.
 *
 * The bottom half of this header is the contract between gemm.c (blocking, packing, threading,
 * tier dispatch) and the per-tier kernel files gemm_kernels_{generic,avx2,avx512,neon}.c. */
#ifndef TS_CPU_GEMM_H
#define TS_CPU_GEMM_H

#include <stdbool.h>
#include <stdint.h>

#include "tessera/core.h"

/* ---------------------------------------------------------------- public (internal) API */

/* Row-major C[M x N] = alpha * op(A)[M x K] * op(B)[K x N] + beta * C, where op(X) = X^T when
 * trans_x. lda/ldb/ldc are row strides in elements of the matrices as stored (A is K x M when
 * trans_a). beta == 0 never reads C (it may hold NaN); alpha == 0 or K == 0 never reads A or B.
 * C must not overlap A or B. pool may be NULL (runs on the caller's thread). Results are
 * bit-identical for any thread count with a fixed tier: every C element is computed by the
 * same sequence of operations whichever thread owns it. Thread-safe: concurrent calls each
 * take their own workspace (but a thread pool itself runs one job at a time, so concurrent
 * callers should not share one). */
void ts_gemm_f32(ts_threadpool *pool, bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K,
                 float alpha, const float *A, int64_t lda, const float *B, int64_t ldb, float beta,
                 float *C, int64_t ldc);

/* Whether ts_gemm reads operands of type t: f32, bf16, f16, f8_e4m3, f8_e5m2. */
bool ts_gemm_dtype_supported(ts_dtype t);

/* ts_gemm_f32 with A of type a_type and B of type b_type (each ts_gemm_dtype_supported; lda and
 * ldb in elements). Narrow operands are converted exactly (core/dtype.c's conversions) as they
 * are packed; C, alpha, beta and all arithmetic stay f32. The result equals ts_gemm_f32's on the
 * converted matrices bit for bit whenever both take the same path: always for M >
 * TS_GEMM_SMALL_M (TS_GEMM_SMALL_M_NT with trans_b); for small M the narrow call converts op(A)
 * (making it k-contiguous) and strips of op(B) (except the B the tier's narrow kernels read as
 * stored: bf16, f16 and fp8 on x86-64, bf16 B^T elsewhere) into a per-thread scratch of about
 * 1 MiB, and takes the blocked path when they do not fit (K beyond ~7600 for B [K,N], ~245000
 * for B [N,K]), so its path can differ from the f32 call's there (both stay within the f32
 * accumulation bound). Same threading, determinism and thread-safety contract. */
void ts_gemm(ts_threadpool *pool, bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
             const void *A, ts_dtype a_type, int64_t lda, const void *B, ts_dtype b_type, int64_t ldb, float beta,
             float *C, int64_t ldc);

/* Instruction-set tiers, lowest first. The best one the CPU supports is picked at run time
 * (one binary runs everywhere); TESSERA_CPU_TIER=generic|avx2|avx512|neon in the environment, read
 * once at first use, forces a lower one. Asking for an unsupported tier warns once on stderr and
 * falls back to the best supported one. */
typedef enum {
    TS_GEMM_TIER_GENERIC = 0, /* portable C */
    TS_GEMM_TIER_AVX2,        /* x86-64 AVX2 + FMA + F16C */
    TS_GEMM_TIER_AVX512,      /* x86-64 AVX-512F */
    TS_GEMM_TIER_NEON,        /* aarch64 Advanced SIMD (baseline there, so the best on every aarch64 CPU) */
    TS_GEMM_TIER_COUNT
} ts_gemm_tier;

const char *ts_gemm_tier_name(void);            /* name of the active tier, e.g. "avx2" */
const char *ts_gemm_tier_to_name(ts_gemm_tier t);
ts_gemm_tier ts_gemm_tier_active(void);
ts_gemm_tier ts_gemm_tier_best(void);           /* best tier this CPU (and build) supports */
/* The tiers this CPU and build support, lowest first, into out; returns how many (>= 1). */
int ts_gemm_tiers_here(ts_gemm_tier out[TS_GEMM_TIER_COUNT]);
/* Switches the active tier for all later calls (tests, benchmarks). Returns false and leaves the
 * tier unchanged when t is not supported here. Not meant to race with running GEMMs. */
bool ts_gemm_tier_set(ts_gemm_tier t);

/* Multiply-adds each thread must get before a GEMM uses another thread (<= 0 restores the
 * default). For tests, which set 1 so that even tiny shapes run on every thread. */
void ts_gemm_set_parallel_threshold(int64_t fmas);

/* Blocking of the active tier (for tests that probe block boundaries and for reports). */
typedef struct {
    int mr, nr;     /* micro-tile: rows of op(A) x columns of op(B) per micro-kernel call */
    int mc, kc, nc; /* cache blocks: A block MC x KC (L2), B panel KC x NC (L3) */
    int small_m;    /* M at or below which the unpacked streaming path is taken */
    int small_m_nt; /* the same for B stored [N, K] (trans_b) */
} ts_gemm_blocking;
ts_gemm_blocking ts_gemm_get_blocking(void);

/* ---------------------------------------------------------------- kernel contract */

/* Upper bounds of every tier's blocking; the workspace is sized by them once, so switching
 * tiers never reallocates. */
#define TS_GEMM_MAX_MR 16
#define TS_GEMM_MAX_NR 32
#define TS_GEMM_MAX_MC 384
#define TS_GEMM_MAX_KC 384
#define TS_GEMM_MAX_NC 4096
#define TS_GEMM_SMALL_M 8
/* With B stored [N, K] (the y = x W^T of every linear layer) the small-M kernels read B where it
 * lies (dot products re-reading each B row from L1 per 4 rows of A; the AVX2 one past 8 rows packs
 * the small A instead and broadcasts B); up to this M that beats packing B (which costs as much as
 * the multiply when M is this small: a 16-row decode batch, 3x on a 16 x 24 x 1024). A few times
 * more rows, or few columns at any M, run them in groups of this many (gemm.c: GROUPED_M, NARROW_N). */
#define TS_GEMM_SMALL_M_NT 16

/* Micro-kernel: multiplies a packed A micro-panel (kc x MR, element (i, k) at a[k*MR + i]) by a
 * packed B micro-panel (kc x NR, element (k, j) at b[k*NR + j]) and updates the full MR x NR tile
 * c[i*ldc + j] = alpha * ab + beta * c, reading c only when beta != 0. B micro-panels are
 * 64-byte aligned; A micro-panels and c only 4-byte. Edge tiles are handled by the caller through a scratch tile, so
 * the same arithmetic runs on every element. */
typedef void (*ts_gemm_ukernel_fn)(int64_t kc, const float *a, const float *b, float *c, int64_t ldc,
                                   float alpha, float beta);

/* Packs rows [0, rows) of a w-wide panel, w being MR (for A) or NR (for B):
 * dst[k*w + i] = src[i*rs + k*cs] for k < kc; rows < i < w are zero-filled. Either stride may be
 * 1. A tier may supply a faster version for its own w; NULL means the portable one. */
typedef void (*ts_gemm_pack_fn)(float *dst, const float *src, int64_t rs, int64_t cs, int rows, int w,
                                int64_t kc);

/* The same for a narrow source (type != TS_F32, ts_gemm_dtype_supported; src points at element
 * (0, 0), strides in elements): dst[k*w + i] = f32 value of src[i*rs + k*cs], converted exactly. */
typedef void (*ts_gemm_pack_cvt_fn)(float *dst, const void *src, ts_dtype type, int64_t rs, int64_t cs, int rows,
                                    int w, int64_t kc);

/* Small-M streaming path, columns [n0, n1) of C. No packing of op(B): it is read straight from
 * memory; op(A) through strides (a kernel may copy the few rows of op(A) into its own layout). "nn" is for op(B) row-major (b[k*ldb + j], B not transposed) and
 * vectorizes across j; "nt" is for op(B)^T row-major (b[j*ldb + k], B transposed) and walks rows
 * of op(A) and B along k, so it requires a_cs == 1. Per-element arithmetic must not depend on n0/n1
 * (thread partition) so results stay bit-identical across thread counts. */
typedef struct {
    int64_t m, k;
    float alpha, beta;
    const float *a;
    int64_t a_rs, a_cs; /* op(A)(i, k) = a[i*a_rs + k*a_cs] */
    const float *b;
    const void *b_narrow; /* the narrow kernels only: B as stored, in b_type (b unused) */
    ts_dtype b_type;
    int64_t ldb;
    float *c;
    int64_t ldc;
} ts_gemm_small_args;
typedef void (*ts_gemm_small_fn)(const ts_gemm_small_args *p, int64_t n0, int64_t n1);

typedef struct {
    const char *name;
    ts_gemm_tier tier;
    int mr, nr, mc, kc, nc; /* mc multiple of mr, nc multiple of nr, all <= TS_GEMM_MAX_* */
    ts_gemm_ukernel_fn ukernel;
    ts_gemm_pack_fn pack_a; /* may be NULL */
    ts_gemm_pack_fn pack_b; /* may be NULL */
    ts_gemm_small_fn small_nn;
    ts_gemm_small_fn small_nt;
    ts_gemm_pack_cvt_fn pack_cvt; /* may be NULL (the portable converting packer) */
    /* small_nn / small_nt on a narrow B (b_narrow, b_type), widening B as it loads: a decode
     * GEMV on bf16, f16 or fp8 weights reads 2-4x fewer bytes than f32 and writes no f32 copy.
     * Same per-element arithmetic as small_nn / small_nt on the widened values (so the same
     * bits). Bit (1u << dtype) of narrow_nn_types / narrow_nt_types: the dtypes each reads (a
     * NULL kernel, none); other narrow B goes through f32 strips (gemm.c). */
    ts_gemm_small_fn small_nn_narrow, small_nt_narrow;
    unsigned narrow_nn_types, narrow_nt_types;
} ts_gemm_kernels;

/* Defined by the kernel files; the x86 ones exist only in x86-64 builds. */
extern const ts_gemm_kernels ts_gemm_kernels_generic;
#if defined(__x86_64__)
extern const ts_gemm_kernels ts_gemm_kernels_avx2;
extern const ts_gemm_kernels ts_gemm_kernels_avx512;
/* AVX2 pieces shared by the AVX-512 tier (callable only where AVX2 + FMA run). The packer
 * vectorizes full panels of width 6, 12, 16 and 32 and defers everything else to the portable one. */
void ts_gemm_small_nn_avx2(const ts_gemm_small_args *p, int64_t n0, int64_t n1);
void ts_gemm_small_nt_avx2(const ts_gemm_small_args *p, int64_t n0, int64_t n1);
/* The narrow B types the AVX2 small-M kernels widen as they load (F16C for f16 and fp8). */
#define TS_GEMM_AVX2_NARROW_TYPES (1u << TS_BF16 | 1u << TS_F16 | 1u << TS_F8_E4M3 | 1u << TS_F8_E5M2)
void ts_gemm_small_nn_narrow_avx2(const ts_gemm_small_args *p, int64_t n0, int64_t n1);
void ts_gemm_small_nt_narrow_avx2(const ts_gemm_small_args *p, int64_t n0, int64_t n1);
void ts_gemm_pack_avx2(float *dst, const float *src, int64_t rs, int64_t cs, int rows, int w, int64_t kc);
/* Converting packer of the AVX2 and AVX-512 tiers (needs F16C too, which the AVX2 tier requires). */
void ts_gemm_pack_cvt_avx2(float *dst, const void *src, ts_dtype type, int64_t rs, int64_t cs, int rows, int w,
                           int64_t kc);
#endif

#if defined(__aarch64__)
extern const ts_gemm_kernels ts_gemm_kernels_neon;
/* The NEON tier's packer: vectorizes full k-contiguous panels of a width divisible by 4. */
void ts_gemm_pack_neon(float *dst, const float *src, int64_t rs, int64_t cs, int rows, int w, int64_t kc);
#endif

/* The portable packer (gemm.c); tier packers fall back to it for layouts they do not special-case. */
void ts_gemm_pack_generic(float *dst, const float *src, int64_t rs, int64_t cs, int rows, int w, int64_t kc);
void ts_gemm_pack_cvt_generic(float *dst, const void *src, ts_dtype type, int64_t rs, int64_t cs, int rows, int w,
                              int64_t kc);

#endif
