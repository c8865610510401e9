/* fast_attention.c - the "cpu" backend's f32 attention and attention backward (contract:
 * ts_attention in graph.h; the oracle is ref_attention.c): flash-style tiles of BQ queries x BK
 * keys with an online softmax, so no T x S matrix ever exists and memory is linear in T.
 *
 * Forward, per (batch, query head, query tile): Q (pre-scaled) times the tile's columns of K^T
 * (transposed once per call) gives the scores (tiles of fewer than FEW_ROWS queries - decoding -
 * take dot products instead; up to BQ rows with extras, a decoder's packed row, go in one-row
 * tiles); each row keeps its running max m and denominator l, rescales its
 * output row when m grows, and adds P V. The row's extras (per-row gathers; an extra row is one
 * vector serving as key and value, or key | value) join the same softmax after the keys; the
 * sink starts the row at m = z, l = 1. A row without a distribution outputs zeros.
 *
 * Backward (FlashAttention-2 style, probabilities recomputed from the row's logsumexp):
 *   A. per query tile: the forward's scores and softmax statistics again (not its values), for
 *      lse = m + log l per row, and delta = <dout, out> from the forward's output (a source of
 *      the backward node);
 *   B. per (batch, kv head, key tile): every (query tile, key tile) block of the group's query
 *      heads whose keys reach the tile, S and dP computed once: dv += P^T dout and dk += dS^T q
 *      summed in the item; dq += dS K added to the output rows, the key tiles of a query tile
 *      in ascending order: each query tile has a turn (the key tile that may add next), which
 *      an item waits for and passes on. Items are handed out in order, so the one waited for is
 *      running, and all walk their blocks in the same order (last query tile first, heads
 *      innermost), so it is about one block ahead;
 *   C. per query tile: dq's share of the extras, whose p and dl (per row and slot) are kept for
 *      step D;
 *   D. per (batch, kv head, column block): dextra from the p and dl of step C (extras are
 *      scattered by index, so an owner per column block keeps the sums race-free); C and D run
 *      chunk by chunk of query rows, so only one chunk's p and dl are kept;
 *   and dsink = -sum p_sink delta, summed serially in (b, t) order.
 * Each output element is owned by one work item, or (dq) summed by items in a fixed order, so
 * results are bit-identical for any thread count with a given tier (items are handed out
 * dynamically, which is free then).
 * The backward computes QK^T twice and dout V^T once: per (query tile, key tile) block 1 tile
 * GEMM in step A (QK^T) and 5 in step B (QK^T, dout V^T, dv, dk, dq), 6 against the 5 of a
 * FlashAttention-2 backward that has the forward's lse saved too.
 *
 * Inner loops are small row-major GEMMs (C += A B on tiles), exp over score rows, dots and
 * axpys; an AVX2 + FMA version of each is picked at run time from the GEMM's instruction-set
 * tier (gemm.h: TESSERA_CPU_TIER applies here too), with a plain C fallback. Scores, softmax
 * sums and accumulators are f32 (the conformance suite holds it to f32 nmse 1e-10).
 *
 * The fast path takes f32 q, k, v, extra, dout, out, sink and output, with a unit stride on the
 * last axis of q, k, v, extra, dout and out (other strides are read where they lie: sliced
 * views run here) and i32/i64 extra_idx and key_start of any strides. Anything else - f64 and
 * the narrow types, transposed views, an extra_idx value out of range, a malformed node - goes
 * to the reference kernel, which computes it or reports the error. Workspace: per thread a few
 * tiles (O(BQ * BK + (BQ + BK) * (D + Dv) + E) floats); K^T (backward: and V^T), the size of k
 * (and v); for backward 2 floats per query row, an int per query tile (its dq turn) and 2
 * floats per (row, extra slot) of one chunk (at most 8 MiB unless one query tile needs more).
 * It is kept between calls, so a graph allocates only on its first run. */
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "backends/cpu/fast_kernels.h"
#include "backends/cpu/fast_vmath.h"
#include "backends/cpu/ref_common.h"
#include "backends/cpu/ref_kernels.h"

#define BQ 32      /* query rows per tile */
#define BK 64      /* keys per tile */
#define DCOLS 16   /* dextra columns per work item of step D */
#define FEW_ROWS 4 /* query tiles of fewer rows (decoding) score keys by dot products: packing a
                      transposed key tile would cost as much as using it */
#define ALIGN_FLOATS 16
#define EXTRA_SLOTS_MAX ((int64_t)1 << 20) /* (row, extra slot) pairs whose p and dl steps B and
                                               D keep at once: bounds that workspace to 8 MiB */

/* ---------------------------------------------------------------- the problem */

/* Strides (elements) of a 4-D input by role: batch, position (or row), head; the last is 1. */
typedef struct {
    const float *p;
    int64_t sb, sr, sh;
} rows4;

typedef struct {
    const void *p;
    ts_dtype type;
    int64_t s[3];
} int_input;

typedef struct {
    rows4 q, k, v, extra, dout, out; /* out: the forward's output (backward) */
    const float *sink;
    int64_t sink_stride;
    int_input idx, key_start;
    bool has_sink, has_extra, has_key_start;
    int64_t B, T, S, H, Hk, D, Dv, N, E, group;
    int64_t X, xv; /* extra's row width (D: key = value; D + Dv: key | value) and its value's start */
    float scale;
    bool causal;
    int64_t window;
} fa_problem;

static const float *row_of(const rows4 *r, int64_t b, int64_t i, int64_t h) {
    return r->p + b * r->sb + i * r->sr + h * r->sh;
}

static int64_t int_at(const int_input *x, int64_t i0, int64_t i1, int64_t i2) {
    int64_t off = i0 * x->s[0] + i1 * x->s[1] + i2 * x->s[2];
    return x->type == TS_I32 ? ((const int32_t *)x->p)[off] : ((const int64_t *)x->p)[off];
}

static bool is_f32_rows(const ts_tensor *t) {
    if (!t || t->dtype != TS_F32 || !t->data || t->ndim != 4) return false;
    for (int d = 0; d < 4; d++)
        if (t->stride[d] < 0) return false;
    return t->stride[3] == 1 || t->shape[3] == 1;
}

static rows4 rows_of(const ts_tensor *t) {
    return (rows4){t->data, t->stride[0], t->stride[1], t->stride[2]};
}

static bool is_int_input(const ts_tensor *t, int ndim) {
    return t && t->data && t->ndim == ndim && (t->dtype == TS_I32 || t->dtype == TS_I64);
}

static int_input int_input_of(const ts_tensor *t) {
    int_input x = {t->data, t->dtype, {0, 0, 0}};
    for (int d = 0; d < t->ndim; d++) x.s[d] = t->stride[d];
    return x;
}

/* t is f32 rows shaped like the forward's output, [B, T, H, Dv]. */
static bool output_shaped(const fa_problem *p, const ts_tensor *t) {
    return is_f32_rows(t) && t->shape[0] == p->B && t->shape[1] == p->T && t->shape[2] == p->H &&
           t->shape[3] == p->Dv;
}

/* Reads dst's sources when they fit the fast path (see the file comment); false otherwise. */
static bool read_fast_problem(const ts_tensor *dst, bool back, fa_problem *p) {
    memset(p, 0, sizeof *p);
    p->has_sink = dst->ip[2] != 0;
    p->has_extra = dst->ip[3] != 0;
    p->has_key_start = dst->ip[4] != 0;
    int want = 3 + p->has_sink + 2 * p->has_extra + p->has_key_start + 2 * back, i = 3;
    if (dst->n_src != want || dst->dtype != TS_F32 || !dst->data || !ts_is_contiguous(dst)) return false;
    for (int s = 0; s < want; s++)
        if (!dst->src[s]) return false;
    const ts_tensor *q = dst->src[0], *k = dst->src[1], *v = dst->src[2], *sink = NULL, *extra = NULL, *idx = NULL,
                    *ks = NULL, *dout = NULL, *out = NULL;
    if (p->has_sink) sink = dst->src[i++];
    if (p->has_extra) {
        extra = dst->src[i++];
        idx = dst->src[i++];
    }
    if (p->has_key_start) ks = dst->src[i++];
    if (back) {
        dout = dst->src[i];
        out = dst->src[i + 1];
    }
    if (!is_f32_rows(q) || !is_f32_rows(k) || !is_f32_rows(v)) return false;
    p->B = q->shape[0], p->T = q->shape[1], p->H = q->shape[2], p->D = q->shape[3];
    p->S = k->shape[1], p->Hk = k->shape[2], p->Dv = v->shape[3];
    if (p->Hk < 1 || p->H % p->Hk || k->shape[0] != p->B || k->shape[3] != p->D || v->shape[0] != p->B ||
        v->shape[1] != p->S || v->shape[2] != p->Hk)
        return false;
    p->group = p->H / p->Hk;
    p->q = rows_of(q), p->k = rows_of(k), p->v = rows_of(v);
    if (sink) {
        if (sink->dtype != TS_F32 || !sink->data || sink->ndim != 1 || sink->shape[0] != p->H) return false;
        p->sink = sink->data;
        p->sink_stride = sink->stride[0];
    }
    if (extra) {
        p->X = extra->shape[3];
        p->xv = p->X == p->D + p->Dv ? p->D : 0;
        if (!is_f32_rows(extra) || !is_int_input(idx, 3) || extra->shape[0] != p->B || extra->shape[2] != p->Hk ||
            (p->X != p->D + p->Dv && (p->X != p->D || p->Dv != p->D)) || idx->shape[0] != p->B ||
            idx->shape[1] != p->T)
            return false;
        p->extra = rows_of(extra);
        p->idx = int_input_of(idx);
        p->N = extra->shape[1];
        p->E = idx->shape[2];
    }
    if (ks) {
        if (!is_int_input(ks, 2) || ks->shape[0] != p->B || ks->shape[1] != p->T) return false;
        p->key_start = int_input_of(ks);
    }
    if (back) {
        if (!output_shaped(p, dout) || !output_shaped(p, out)) return false;
        p->dout = rows_of(dout);
        p->out = rows_of(out);
    }
    p->scale = dst->fp[0];
    p->causal = dst->ip[0] != 0;
    p->window = dst->ip[1];
    return p->window >= 0;
}

/* Every extra_idx value is -1 or a row of extra (else the reference reports the bad one). */
static bool extra_indices_ok(const fa_problem *p) {
    for (int64_t b = 0; b < p->B; b++)
        for (int64_t t = 0; t < p->T; t++)
            for (int64_t e = 0; e < p->E; e++) {
                int64_t n = int_at(&p->idx, b, t, e);
                if (n < -1 || n >= p->N) return false;
            }
    return true;
}

/* The output size the op's shape inference gives (a mismatch: let the reference complain). */
static bool output_fits(const fa_problem *p, const ts_tensor *dst, bool back) {
    if (!back)
        return dst->ndim == 4 && dst->shape[0] == p->B && dst->shape[1] == p->T && dst->shape[2] == p->H &&
               dst->shape[3] == p->Dv;
    int64_t total = p->B * (p->T * p->H * p->D + p->S * p->Hk * (p->D + p->Dv) + p->N * p->Hk * p->X) +
                    (p->has_sink ? p->H : 0);
    return dst->ndim == 1 && dst->shape[0] == total;
}

/* Visible keys [lo, hi) of query t, exactly as ref_attention.c's make_row. */
static void key_range(const fa_problem *p, int64_t b, int64_t t, int64_t *lo, int64_t *hi) {
    int64_t pos = p->S - p->T + t, l = 0, h = p->S;
    if (p->causal && pos + 1 < h) h = pos + 1 > 0 ? pos + 1 : 0;
    if (p->window > 0 && pos - p->window + 1 > l) l = pos - p->window + 1;
    if (p->has_key_start) {
        int64_t ks = int_at(&p->key_start, b, t, 0);
        if (ks > l) l = ks;
    }
    if (l > h) l = h;
    *lo = l;
    *hi = h;
}

static float sink_of(const fa_problem *p, int64_t h) {
    return p->has_sink ? p->sink[h * p->sink_stride] : -INFINITY;
}

/* ---------------------------------------------------------------- inner kernels */

/* The inner loops, one table per instruction-set tier. */
typedef struct {
    /* C[m x n] (+)= A[m x k] B[k x n], row-major with leading dimensions lda, ldb, ldc */
    void (*gemm)(int64_t m, int64_t n, int64_t k, const float *a, int64_t lda, const float *b, int64_t ldb, float *c,
                 int64_t ldc, bool accumulate);
    float (*max)(const float *x, int64_t n);                      /* n >= 1 */
    float (*exp_sum)(float *x, int64_t n, float shift);          /* x = exp(x - shift); returns the sum */
    float (*dot)(const float *a, const float *b, int64_t n);
    void (*axpy)(float *y, float a, const float *x, int64_t n);   /* y += a x */
    /* out[e] = dot(a, x[e], n) and y += a[0] x[0] + a[1] x[1] + ... (in that order), for e < count:
     * each element through the arithmetic of dot and of repeated axpy (the same bits), several
     * rows at once (a decoder's cache rows: one dot is a single dependent FMA chain) */
    void (*dots)(const float *a, const float *const *x, int64_t count, int64_t n, float *out);
    void (*axpys)(float *y, const float *a, const float *const *x, int64_t count, int64_t n);
    /* out[c * ldo + r] = scale * x[r * ld + c] for r < n_rows, c < n_cols: a tile transposed */
    void (*pack_transposed)(const float *x, int64_t ld, int64_t n_rows, int64_t n_cols, float scale, float *out,
                            int64_t ldo);
} fa_kernels;

static void gemm_generic(int64_t m, int64_t n, int64_t k, const float *a, int64_t lda, const float *b, int64_t ldb,
                         float *c, int64_t ldc, bool accumulate) {
    for (int64_t i = 0; i < m; i++) {
        float *ci = c + i * ldc;
        if (!accumulate) memset(ci, 0, (size_t)n * sizeof *ci);
        for (int64_t l = 0; l < k; l++) {
            float ail = a[i * lda + l];
            const float *bl = b + l * ldb;
            for (int64_t j = 0; j < n; j++) ci[j] += ail * bl[j];
        }
    }
}

static void pack_transposed_generic(const float *x, int64_t ld, int64_t n_rows, int64_t n_cols, float scale,
                                    float *out, int64_t ldo) {
    for (int64_t r = 0; r < n_rows; r++)
        for (int64_t c = 0; c < n_cols; c++) out[c * ldo + r] = scale * x[r * ld + c];
}

static const fa_kernels generic_kernels = {gemm_generic,     ts_vmax_generic,   ts_vexp_sum_generic,
                                           ts_vdot_generic,  ts_vaxpy_generic,  ts_vdots_generic,
                                           ts_vaxpys_generic, pack_transposed_generic};

#if defined(__x86_64__)

#define AVX2 __attribute__((target("avx2,fma")))
#define AVX2_INLINE static inline __attribute__((always_inline, target("avx2,fma")))

AVX2_INLINE __m256 load_part(const float *p, __m256i mask, bool full) {
    return full ? _mm256_loadu_ps(p) : _mm256_maskload_ps(p, mask);
}

AVX2_INLINE void store_part(float *p, __m256 v, __m256i mask, bool full) {
    if (full) _mm256_storeu_ps(p, v);
    else _mm256_maskstore_ps(p, mask, v);
}

/* ROWS (at most 6) rows x 16 columns of C (+)= A B: per k, 2 loads of B, ROWS broadcasts of A
 * and 2 * ROWS FMAs into register accumulators (12 of the 16 registers at 6 rows: enough
 * independent FMAs in flight to hide their latency). Columns past n are masked (full: all 16
 * valid). */
AVX2_INLINE void gemm_block(int rows, int64_t k, const float *a, int64_t lda, const float *b, int64_t ldb, float *c,
                            int64_t ldc, __m256i m0, __m256i m1, bool full, bool accumulate) {
    __m256 acc[6][2];
    for (int r = 0; r < rows; r++) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
    for (int64_t l = 0; l < k; l++) {
        __m256 b0 = load_part(b + l * ldb, m0, full), b1 = load_part(b + l * ldb + 8, m1, full);
        for (int r = 0; r < rows; r++) {
            __m256 ar = _mm256_broadcast_ss(a + r * lda + l);
            acc[r][0] = _mm256_fmadd_ps(ar, b0, acc[r][0]);
            acc[r][1] = _mm256_fmadd_ps(ar, b1, acc[r][1]);
        }
    }
    for (int r = 0; r < rows; r++) {
        float *cr = c + r * ldc;
        if (accumulate) {
            acc[r][0] = _mm256_add_ps(acc[r][0], load_part(cr, m0, full));
            acc[r][1] = _mm256_add_ps(acc[r][1], load_part(cr + 8, m1, full));
        }
        store_part(cr, acc[r][0], m0, full);
        store_part(cr + 8, acc[r][1], m1, full);
    }
}

/* Blocks of 6 rows, then 4, 2 and 1 for the rest (a tile's 32 or 64 rows leave 2 or 4). Each
 * element sums over k in the same order whatever its block: the blocking changes no bits. */
AVX2_INLINE void gemm_rows(int64_t m, int64_t k, const float *a, int64_t lda, const float *b, int64_t ldb, float *c,
                           int64_t ldc, __m256i m0, __m256i m1, bool full, bool accumulate) {
    int64_t i = 0;
    for (; i + 6 <= m; i += 6) gemm_block(6, k, a + i * lda, lda, b, ldb, c + i * ldc, ldc, m0, m1, full, accumulate);
    if (i + 4 <= m) {
        gemm_block(4, k, a + i * lda, lda, b, ldb, c + i * ldc, ldc, m0, m1, full, accumulate);
        i += 4;
    }
    if (i + 2 <= m) {
        gemm_block(2, k, a + i * lda, lda, b, ldb, c + i * ldc, ldc, m0, m1, full, accumulate);
        i += 2;
    }
    if (i < m) gemm_block(1, k, a + i * lda, lda, b, ldb, c + i * ldc, ldc, m0, m1, full, accumulate);
}

AVX2 static void gemm_columns(int64_t m, int64_t k, const float *a, int64_t lda, const float *b, int64_t ldb, float *c,
                              int64_t ldc, __m256i m0, __m256i m1, bool full, bool accumulate) {
    if (full) gemm_rows(m, k, a, lda, b, ldb, c, ldc, m0, m1, true, accumulate);
    else gemm_rows(m, k, a, lda, b, ldb, c, ldc, m0, m1, false, accumulate);
}

AVX2 static void gemm_avx2(int64_t m, int64_t n, int64_t k, const float *a, int64_t lda, const float *b, int64_t ldb,
                           float *c, int64_t ldc, bool accumulate) {
    for (int64_t j = 0; j < n; j += 16) {
        int64_t w = n - j < 16 ? n - j : 16;
        gemm_columns(m, k, a, lda, b + j, ldb, c + j, ldc, ts_avx2_lanes(w), ts_avx2_lanes(w - 8), w == 16, accumulate);
    }
}

/* r[i] = column i of the 8 x 8 block whose rows are r[0..7]. */
AVX2_INLINE void transpose8(__m256 r[8]) {
    __m256 t[8], s[8];
    for (int i = 0; i < 4; i++) {
        t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    for (int i = 0; i < 2; i++) {
        s[4 * i + 0] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], _MM_SHUFFLE(1, 0, 1, 0));
        s[4 * i + 1] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], _MM_SHUFFLE(3, 2, 3, 2));
        s[4 * i + 2] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], _MM_SHUFFLE(1, 0, 1, 0));
        s[4 * i + 3] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], _MM_SHUFFLE(3, 2, 3, 2));
    }
    for (int i = 0; i < 4; i++) {
        r[i] = _mm256_permute2f128_ps(s[i], s[i + 4], 0x20);
        r[i + 4] = _mm256_permute2f128_ps(s[i], s[i + 4], 0x31);
    }
}

/* 8 x 8 blocks through registers; the ragged edges element by element. */
AVX2 static void pack_transposed_avx2(const float *x, int64_t ld, int64_t n_rows, int64_t n_cols, float scale,
                                      float *out, int64_t ldo) {
    __m256 sv = _mm256_set1_ps(scale), r[8];
    int64_t r8 = n_rows / 8 * 8, c8 = n_cols / 8 * 8;
    for (int64_t r0 = 0; r0 < r8; r0 += 8)
        for (int64_t c0 = 0; c0 < c8; c0 += 8) {
            for (int i = 0; i < 8; i++) r[i] = _mm256_mul_ps(sv, _mm256_loadu_ps(x + (r0 + i) * ld + c0));
            transpose8(r);
            for (int i = 0; i < 8; i++) _mm256_storeu_ps(out + (c0 + i) * ldo + r0, r[i]);
        }
    for (int64_t rr = 0; rr < n_rows; rr++)
        for (int64_t c = rr < r8 ? c8 : 0; c < n_cols; c++) out[c * ldo + rr] = scale * x[rr * ld + c];
}

static const fa_kernels avx2_kernels = {gemm_avx2,     ts_vmax_avx2,   ts_vexp_sum_avx2, ts_vdot_avx2,
                                        ts_vaxpy_avx2, ts_vdots_avx2,  ts_vaxpys_avx2,   pack_transposed_avx2};

#endif

/* The GEMM's tier decides (AVX-512 CPUs all have AVX2 + FMA). */
static const fa_kernels *active_kernels(void) {
#if defined(__x86_64__)
    if (ts_vmath_avx2_active()) return &avx2_kernels;
#endif
    return &generic_kernels;
}

/* ---------------------------------------------------------------- workspace */

/* One thread's tiles (floats unless said otherwise). */
typedef struct {
    float *qs;       /* BQ x D: scale * q */
    float *tile;     /* max(D, Dv) x BK (or BQ): a transposed key, value, query or dout tile */
    float *s;        /* BQ x BK (or BK x BQ): scores, then probabilities */
    float *dp;       /* BQ x BK (or BK x BQ): dP, then dS */
    float *acc;      /* BQ x max(D, Dv): output rows; backward step B: dk (BK x D) */
    float *acc2;     /* BK x Dv: dv (step B) */
    float *tile_t;   /* BK x BQ: P or dS transposed (step B) */
    float *m, *l;    /* BQ: running row max and denominator */
    float *extra_s;  /* E: one row's extra scores */
    const float **extra_x; /* E: their rows of extra (keys; values while they are summed) */
    int64_t listed;  /* how many of extra_x hold the current row's */
} fa_scratch;

static int64_t round_up(int64_t n) { return (n + ALIGN_FLOATS - 1) / ALIGN_FLOATS * ALIGN_FLOATS; }

static int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

static int64_t scratch_floats(const fa_problem *p) {
    int64_t w = max64(p->D, p->Dv);
    return round_up(BQ * p->D) + round_up(w * max64(BK, BQ)) + 2 * round_up(BQ * BK) + round_up(max64(BQ, BK) * w) +
           round_up(BK * p->Dv) + round_up(BK * BQ) + 2 * round_up(BQ) + 3 * round_up(p->E); /* extra_s, extra_x */
}

static fa_scratch scratch_at(const fa_problem *p, float *base) {
    int64_t w = max64(p->D, p->Dv);
    fa_scratch s;
    float *c = base;
    s.qs = c, c += round_up(BQ * p->D);
    s.tile = c, c += round_up(w * max64(BK, BQ));
    s.s = c, c += round_up(BQ * BK);
    s.dp = c, c += round_up(BQ * BK);
    s.acc = c, c += round_up(max64(BQ, BK) * w);
    s.acc2 = c, c += round_up(BK * p->Dv);
    s.tile_t = c, c += round_up(BK * BQ);
    s.m = c, c += round_up(BQ);
    s.l = c, c += round_up(BQ);
    s.extra_s = c, c += round_up(p->E);
    s.extra_x = (const float **)(void *)c; /* 64-byte aligned: every part is a multiple of 16 floats */
    return s;
}

/* A workspace kept between calls (grown when a larger problem comes), so a graph's attention
 * nodes allocate only on their first run. A second concurrent caller (another graph on another
 * thread) gets a temporary one. */
static pthread_mutex_t workspace_mu = PTHREAD_MUTEX_INITIALIZER;
static float *workspace;
static int64_t workspace_floats;
static bool workspace_busy;

static float *workspace_acquire(int64_t n, bool *temporary) {
    size_t bytes = (size_t)round_up(n > 0 ? n : 1) * sizeof(float);
    pthread_mutex_lock(&workspace_mu);
    *temporary = workspace_busy;
    if (!workspace_busy && workspace_floats < n) {
        free(workspace);
        workspace = aligned_alloc(64, bytes);
        workspace_floats = workspace ? n : 0;
    }
    float *w = *temporary ? NULL : workspace;
    if (w) workspace_busy = true;
    pthread_mutex_unlock(&workspace_mu);
    return *temporary ? aligned_alloc(64, bytes) : w;
}

static void workspace_release(float *w, bool temporary) {
    if (temporary) {
        free(w);
        return;
    }
    pthread_mutex_lock(&workspace_mu);
    workspace_busy = false;
    pthread_mutex_unlock(&workspace_mu);
}

/* ---------------------------------------------------------------- tiles */

/* Query rows t0 .. t0+nq-1 of head h in batch b, with each row's visible keys [lo, hi) and the
 * union of those ranges [klo, khi) (empty: klo == khi). */
typedef struct {
    int64_t b, h, kv, t0, nq;
    int64_t lo[BQ], hi[BQ];
    int64_t klo, khi;
} q_tile;

static void make_q_tile(const fa_problem *p, int64_t b, int64_t h, int64_t t0, int64_t rows, q_tile *qt) {
    qt->b = b, qt->h = h, qt->kv = h / p->group, qt->t0 = t0;
    qt->nq = p->T - t0 < rows ? p->T - t0 : rows;
    qt->klo = p->S, qt->khi = 0;
    for (int64_t i = 0; i < qt->nq; i++) {
        key_range(p, b, t0 + i, &qt->lo[i], &qt->hi[i]);
        if (qt->lo[i] < qt->hi[i]) {
            if (qt->lo[i] < qt->klo) qt->klo = qt->lo[i];
            if (qt->hi[i] > qt->khi) qt->khi = qt->hi[i];
        }
    }
    if (qt->klo > qt->khi) qt->klo = qt->khi;
}

static void load_scaled_queries(const fa_problem *p, const q_tile *qt, float *qs) {
    for (int64_t i = 0; i < qt->nq; i++) {
        const float *x = row_of(&p->q, qt->b, qt->t0 + i, qt->h);
        for (int64_t d = 0; d < p->D; d++) qs[i * p->D + d] = p->scale * x[d];
    }
}

/* The part [a, e) of key tile [j0, j0 + nk) that row i sees (a >= e: none). */
static void visible_part(const q_tile *qt, int64_t i, int64_t j0, int64_t nk, int64_t *a, int64_t *e) {
    *a = (qt->lo[i] > j0 ? qt->lo[i] : j0) - j0;
    *e = (qt->hi[i] < j0 + nk ? qt->hi[i] : j0 + nk) - j0;
}

static void zero_outside(float *row, int64_t n, int64_t a, int64_t e) {
    if (a >= e) {
        memset(row, 0, (size_t)n * sizeof *row);
        return;
    }
    memset(row, 0, (size_t)a * sizeof *row);
    memset(row + e, 0, (size_t)(n - e) * sizeof *row);
}

/* Online-softmax step of row i: new scores with max `top` arrive; rescales l and the output row
 * and returns the row's new max. */
static float raise_max(fa_scratch *sc, int64_t i, float top, int64_t width) {
    float m = sc->m[i], m_new = top > m || isnan(top) ? top : m;
    float alpha = m == -INFINITY ? 0.0f : expf(m - m_new);
    if (alpha != 1.0f) {
        sc->l[i] *= alpha;
        float *o = sc->acc + i * width;
        for (int64_t d = 0; d < width; d++) o[d] *= alpha;
    }
    sc->m[i] = m_new;
    return m_new;
}

/* Listed extras usually lie in order in a cache in memory (a decoder's, per head), which the
 * weights streaming through the CPU caches between layers have evicted: scoring one also
 * prefetches what lies EXTRA_AHEAD_BYTES beyond it (dense-small decoding: attention time
 * -15%, measured against the matmuls of the same runs). A prefetch never faults. */
#define EXTRA_AHEAD_BYTES 8192

/* The extras of row i (online step): the listed ones' rows and scores compacted, so that one
 * vector exp serves them all and the dot products (over the keys) and the weighted sum (over
 * the values, xv further on in the same rows) each run over many rows at once, EXTRA_BATCH rows
 * at a time (scored right after their prefetches ahead were issued). `listed`: sc->extra_x
 * already holds the row's extras - another query head of the same kv head and position has
 * listed them (they depend on the batch, position and kv head only). */
#define EXTRA_BATCH 16
static void attend_extras(const fa_problem *p, const fa_kernels *kn, fa_scratch *sc, const q_tile *qt, int64_t i,
                          int64_t width, bool listed) {
    const float *q = sc->qs + i * p->D;
    int64_t t = qt->t0 + i, scored = 0;
    if (!listed) sc->listed = 0;
    for (int64_t e = 0; e < (listed ? 0 : p->E); e++) {
        int64_t n = int_at(&p->idx, qt->b, t, e);
        if (n >= 0) {
            const float *x = sc->extra_x[sc->listed++] = row_of(&p->extra, qt->b, n, qt->kv);
            for (int64_t d = 0; d < p->X; d += 16) __builtin_prefetch((const char *)(x + d) + EXTRA_AHEAD_BYTES);
        }
        if (sc->listed - scored == EXTRA_BATCH || (e + 1 == p->E && sc->listed > scored)) {
            kn->dots(q, sc->extra_x + scored, sc->listed - scored, p->D, sc->extra_s + scored);
            scored = sc->listed;
        }
    }
    for (; scored < sc->listed; scored += EXTRA_BATCH) /* listed before: the same batches */
        kn->dots(q, sc->extra_x + scored, sc->listed - scored < EXTRA_BATCH ? sc->listed - scored : EXTRA_BATCH, p->D,
                 sc->extra_s + scored);
    float top = -INFINITY;
    for (int64_t e = 0; e < sc->listed; e++)
        if (sc->extra_s[e] > top || isnan(sc->extra_s[e])) top = sc->extra_s[e];
    if (top == -INFINITY) return;
    float m = raise_max(sc, i, top, width);
    sc->l[i] += kn->exp_sum(sc->extra_s, sc->listed, m);
    if (!width) return;
    for (int64_t e = 0; e < sc->listed; e += EXTRA_BATCH) { /* a batch's rows stay in L1 across the output's parts */
        int64_t n = sc->listed - e < EXTRA_BATCH ? sc->listed - e : EXTRA_BATCH;
        for (int64_t k = 0; k < n; k++) sc->extra_x[e + k] += p->xv; /* keys -> values, and back after */
        kn->axpys(sc->acc + i * p->Dv, sc->extra_s + e, sc->extra_x + e, n, p->Dv);
        for (int64_t k = 0; k < n; k++) sc->extra_x[e + k] -= p->xv;
    }
}

/* Keys (or values) transposed once per call for every (batch, kv head): width rows of
 * packed_ld(p) floats each, so that a tile of any nk keys from j0 on is the columns j0 ..
 * j0+nk-1. Query tiles then never transpose a key tile of their own. The row length is padded
 * off a power of two: rows 2^k floats apart would all fall into the same cache sets. */
static int64_t packed_ld(const fa_problem *p) { return round_up(p->S) + ALIGN_FLOATS; }

static float *packed_columns(const fa_problem *p, float *packed, int64_t width, int64_t b, int64_t kv, int64_t j0) {
    return packed + (b * p->Hk + kv) * width * packed_ld(p) + j0;
}

/* s[i][j] = <scale q_i, key j0 + j> for nk keys: a GEMM on the packed K^T (kt), or dot products
 * for tiles of fewer than FEW_ROWS queries (then kt may be NULL). */
static void score_keys(const fa_problem *p, const fa_kernels *kn, fa_scratch *sc, const q_tile *qt, float *kt,
                       int64_t j0, int64_t nk) {
    if (qt->nq < FEW_ROWS) {
        const float *keys = row_of(&p->k, qt->b, j0, qt->kv);
        for (int64_t i = 0; i < qt->nq; i++)
            for (int64_t j = 0; j < nk; j++) sc->s[i * BK + j] = kn->dot(sc->qs + i * p->D, keys + j * p->k.sr, p->D);
        return;
    }
    kn->gemm(qt->nq, nk, p->D, sc->qs, p->D, packed_columns(p, kt, p->D, qt->b, qt->kv, j0), packed_ld(p), sc->s, BK,
             false);
}

/* The forward of one query tile: on return acc holds the output rows (zeros for a row without a
 * distribution), m and l each row's max and denominator (m = -inf: no distribution). width 0
 * computes m and l alone (the backward's statistics: no P V); else it is Dv. extras_listed: a
 * one-row tile whose extras sc->extra_x holds (attend_extras). */
static void attend_tile(const fa_problem *p, const fa_kernels *kn, fa_scratch *sc, const q_tile *qt, float *kt,
                        int64_t width, bool extras_listed) {
    load_scaled_queries(p, qt, sc->qs);
    float z = sink_of(p, qt->h);
    for (int64_t i = 0; i < qt->nq; i++) {
        sc->m[i] = z;
        sc->l[i] = p->has_sink ? 1.0f : 0.0f;
    }
    memset(sc->acc, 0, (size_t)(qt->nq * width) * sizeof(float));
    const float *vals = row_of(&p->v, qt->b, 0, qt->kv);
    for (int64_t j0 = qt->klo; j0 < qt->khi; j0 += BK) {
        int64_t nk = qt->khi - j0 < BK ? qt->khi - j0 : BK;
        score_keys(p, kn, sc, qt, kt, j0, nk);
        for (int64_t i = 0; i < qt->nq; i++) {
            float *row = sc->s + i * BK;
            int64_t a, e;
            visible_part(qt, i, j0, nk, &a, &e);
            if (a < e) {
                float m = raise_max(sc, i, kn->max(row + a, e - a), width);
                sc->l[i] += kn->exp_sum(row + a, e - a, m);
            }
            zero_outside(row, nk, a, e);
        }
        if (width) kn->gemm(qt->nq, width, nk, sc->s, BK, vals + j0 * p->v.sr, p->v.sr, sc->acc, width, true);
    }
    for (int64_t i = 0; i < qt->nq; i++) {
        if (p->E) attend_extras(p, kn, sc, qt, i, width, extras_listed);
        float *o = sc->acc + i * width, inv = sc->m[i] == -INFINITY ? 0.0f : 1.0f / sc->l[i];
        for (int64_t d = 0; d < width; d++) o[d] *= inv;
    }
}

/* ---------------------------------------------------------------- parallel driver */

/* Work items 0..n-1 handed out one at a time to the pool's threads; each item's result does
 * not depend on which thread runs it. */
typedef struct fa_job fa_job;
typedef void (*item_fn)(fa_job *job, fa_scratch *sc, int64_t item);

struct fa_job {
    const fa_problem *p;
    const fa_kernels *kn;
    float *workspace;
    int64_t per_thread;
    atomic_llong next;
    int64_t n_items;
    item_fn run;
    float *out;             /* forward: the output; backward: the flat gradient buffer */
    float *kt, *vt;         /* K^T and (backward) V^T, see packed_columns; kt NULL when T < FEW_ROWS */
    float *lse, *delta;     /* backward: [B, H, T] */
    float *extra_p, *extra_dl; /* backward with extras: [B, chunk rows, H, E] */
    atomic_int *dq_turn;       /* backward: per (batch, head, query tile), see dq_turn_of */
    int64_t t_begin, t_end;    /* backward steps B and D: the chunk of query rows (BQ-aligned) */
};

/* One lane per thread (begin / end count lanes, not items). */
static void run_items(void *arg, int64_t begin, int64_t end, int tid) {
    fa_job *job = arg;
    fa_scratch sc = scratch_at(job->p, job->workspace + (int64_t)tid * job->per_thread);
    for (;;) {
        int64_t item = atomic_fetch_add(&job->next, 1);
        if (item >= job->n_items) break;
        job->run(job, &sc, item);
    }
}

static void run_parallel(const ts_cpu_ctx *ctx, fa_job *job, int64_t n_items, item_fn fn) {
    atomic_store(&job->next, 0);
    job->n_items = n_items;
    job->run = fn;
    int threads = ts_threadpool_size(ctx->pool);
    ts_parallel_for(ctx->pool, n_items < threads ? n_items : threads, 1, run_items, job);
}

static int64_t n_q_tiles(const fa_problem *p) { return (p->T + BQ - 1) / BQ; }

/* Query rows per tile of the forward: BQ, but one for a few rows with extras - a decoder's
 * packed steps, whose rows spend their time on their own extras, which a tile does not share:
 * one-row tiles (scored by dot products, no K^T) give the threads as many items as a batch of
 * separate rows would. */
static int64_t forward_rows(const fa_problem *p) { return p->E > 0 && p->T <= BQ ? 1 : BQ; }

static int64_t n_k_tiles(const fa_problem *p) { return (p->S + BK - 1) / BK; }

/* Packs K^T (and V^T when job->vt) for one key tile of one (batch, kv head). */
static void pack_item(fa_job *job, fa_scratch *sc, int64_t item) {
    const fa_problem *p = job->p;
    int64_t pair = item / n_k_tiles(p), j0 = (item % n_k_tiles(p)) * BK, b = pair / p->Hk, kv = pair % p->Hk;
    int64_t nk = p->S - j0 < BK ? p->S - j0 : BK;
    job->kn->pack_transposed(row_of(&p->k, b, j0, kv), p->k.sr, nk, p->D, 1.0f,
                             packed_columns(p, job->kt, p->D, b, kv, j0), packed_ld(p));
    if (job->vt)
        job->kn->pack_transposed(row_of(&p->v, b, j0, kv), p->v.sr, nk, p->Dv, 1.0f,
                                 packed_columns(p, job->vt, p->Dv, b, kv, j0), packed_ld(p));
}

/* Item -> (b, h, query tile) among the tiles of rows [t_begin, t_end) (t_begin a multiple of
 * BQ), the last tiles (which see the most keys when causal) first. */
static void q_tile_of_item(const fa_problem *p, int64_t item, int64_t t_begin, int64_t t_end, int64_t rows,
                           q_tile *qt) {
    int64_t tiles = (t_end - t_begin + rows - 1) / rows, tile = tiles - 1 - item % tiles, bh = item / tiles;
    make_q_tile(p, bh / p->H, bh % p->H, t_begin + tile * rows, rows, qt);
    if (t_end - qt->t0 < qt->nq) qt->nq = t_end - qt->t0;
}

/* ---------------------------------------------------------------- forward */

static void store_rows(fa_job *job, const fa_scratch *sc, const q_tile *qt) {
    const fa_problem *p = job->p;
    for (int64_t i = 0; i < qt->nq; i++)
        memcpy(job->out + ((qt->b * p->T + qt->t0 + i) * p->H + qt->h) * p->Dv, sc->acc + i * p->Dv,
               (size_t)p->Dv * sizeof(float));
}

static void forward_item(fa_job *job, fa_scratch *sc, int64_t item) {
    q_tile qt;
    q_tile_of_item(job->p, item, 0, job->p->T, forward_rows(job->p), &qt);
    attend_tile(job->p, job->kn, sc, &qt, job->kt, job->p->Dv, false);
    store_rows(job, sc, &qt);
}

/* One-row tiles (forward_rows): an item per (batch, kv head, position), its query heads one
 * after another, the extras listed once for them all (a V4 decode step: 4 query heads on its
 * K = V head, 47 extras per position, so the item overhead and index lookups were most of it). */
static void forward_group_item(fa_job *job, fa_scratch *sc, int64_t item) {
    const fa_problem *p = job->p;
    int64_t t = p->T - 1 - item % p->T, bk = item / p->T, b = bk / p->Hk, kv = bk % p->Hk; /* last first */
    for (int64_t g = 0; g < p->group; g++) {
        q_tile qt;
        make_q_tile(p, b, kv * p->group + g, t, 1, &qt);
        attend_tile(p, job->kn, sc, &qt, job->kt, p->Dv, g > 0);
        store_rows(job, sc, &qt);
    }
}

bool ts_fast_attention_applies(const ts_tensor *dst) {
    fa_problem p;
    bool back = dst->op == TS_OP_ATTENTION_BACK;
    if ((dst->op != TS_OP_ATTENTION && !back) || !read_fast_problem(dst, back, &p)) return false;
    return output_fits(&p, dst, back) && (!p.has_extra || extra_indices_ok(&p));
}

TS_FAST_KERNEL(attention) {
    fa_problem p;
    if (!ts_fast_attention_applies(dst)) return ts_ref_attention(ctx, dst);
    read_fast_problem(dst, false, &p);
    fa_job job = {.p = &p, .kn = active_kernels(), .per_thread = round_up(scratch_floats(&p)), .out = dst->data};
    int64_t tiles_floats = job.per_thread * ts_threadpool_size(ctx->pool);
    int64_t rows = forward_rows(&p); /* tiles of fewer than FEW_ROWS queries need no K^T */
    int64_t kt_floats = p.T >= FEW_ROWS && rows >= FEW_ROWS ? p.B * p.Hk * p.D * packed_ld(&p) : 0;
    bool temporary;
    job.workspace = workspace_acquire(tiles_floats + kt_floats, &temporary);
    if (!job.workspace) return ts_ref_fail(ctx, TS_ERR_OOM, dst, "out of memory for attention tiles");
    if (kt_floats) {
        job.kt = job.workspace + tiles_floats;
        run_parallel(ctx, &job, p.B * p.Hk * n_k_tiles(&p), pack_item);
    }
    if (rows == 1) run_parallel(ctx, &job, p.B * p.Hk * p.T, forward_group_item);
    else run_parallel(ctx, &job, p.B * p.H * ((p.T + rows - 1) / rows), forward_item);
    workspace_release(job.workspace, temporary);
    return TS_OK;
}

/* ---------------------------------------------------------------- backward */

/* Element offsets of the parts of the flat gradient buffer: dq | dk | dv | dsink | dextra. */
typedef struct {
    int64_t dq, dk, dv, dsink, dextra;
} grad_layout;

static grad_layout grad_layout_of(const fa_problem *p) {
    grad_layout g;
    g.dq = 0;
    g.dk = g.dq + p->B * p->T * p->H * p->D;
    g.dv = g.dk + p->B * p->S * p->Hk * p->D;
    g.dsink = g.dv + p->B * p->S * p->Hk * p->Dv;
    g.dextra = g.dsink + (p->has_sink ? p->H : 0);
    return g;
}

/* Index of query row (b, h, t) in lse / delta: a tile's rows are adjacent. */
static int64_t stat_index(const fa_problem *p, int64_t b, int64_t h, int64_t t) { return (b * p->H + h) * p->T + t; }

/* Where query tile (b, h, t0) keeps its dq turn: the key tile whose item may add to its dq
 * rows next (see the file comment). */
static atomic_int *dq_turn_of(const fa_job *job, int64_t b, int64_t h, int64_t t0) {
    return job->dq_turn + (b * job->p->H + h) * n_q_tiles(job->p) + t0 / BQ;
}

static float *dq_rows(const fa_job *job, int64_t b, int64_t t, int64_t h) {
    const fa_problem *p = job->p;
    return job->out + grad_layout_of(p).dq + ((b * p->T + t) * p->H + h) * p->D;
}

/* Step A: lse = m + log l (the forward's statistics without its values) and delta =
 * <dout, out> of every row of the tile; hands the tile's dq turn to the first key tile it sees
 * (a tile that sees no key gets zeros here: no item of step B writes it). */
static void stats_item(fa_job *job, fa_scratch *sc, int64_t item) {
    const fa_problem *p = job->p;
    q_tile qt;
    q_tile_of_item(p, item, 0, p->T, BQ, &qt);
    attend_tile(p, job->kn, sc, &qt, job->kt, 0, false);
    for (int64_t i = 0; i < qt.nq; i++) {
        int64_t r = stat_index(p, qt.b, qt.h, qt.t0 + i);
        bool none = sc->m[i] == -INFINITY;
        const float *dout = row_of(&p->dout, qt.b, qt.t0 + i, qt.h), *out = row_of(&p->out, qt.b, qt.t0 + i, qt.h);
        job->lse[r] = none ? -INFINITY : sc->m[i] + logf(sc->l[i]);
        job->delta[r] = none ? 0.0f : job->kn->dot(dout, out, p->Dv);
        if (qt.klo == qt.khi) memset(dq_rows(job, qt.b, qt.t0 + i, qt.h), 0, (size_t)p->D * sizeof(float));
    }
    atomic_store_explicit(dq_turn_of(job, qt.b, qt.h, qt.t0), (int)(qt.klo / BK), memory_order_relaxed);
}

/* A row without a distribution has zero gradients: it sees no key here. */
static void drop_empty_rows(const fa_job *job, q_tile *qt) {
    for (int64_t i = 0; i < qt->nq; i++)
        if (job->lse[stat_index(job->p, qt->b, qt->h, qt->t0 + i)] == -INFINITY) qt->lo[i] = qt->hi[i] = 0;
}

/* Spins that wait for a dq turn before each one yields the CPU: the item it waits for is running
 * (items are handed out in order) and is about one tile GEMM from done, unless its thread was
 * preempted - then spinning would only delay it. */
#define TURN_SPINS 4096

/* Waits until key tile `tile` may add to the dq rows guarded by `turn`. */
static void wait_turn(atomic_int *turn, int64_t tile) {
    for (int spins = 0; atomic_load_explicit(turn, memory_order_acquire) != tile;)
        if (++spins >= TURN_SPINS) {
            sched_yield();
            spins = 0;
        }
}

/* Step B for one (query tile, key tile) block: S and dP once, then dv += P^T dout and
 * dk += dS^T q (scale q: dk needs no scaling later) into the item's accumulators (acc: dk,
 * acc2: dv), and dq += dS K into the output when the tile's turn comes (the first key tile
 * overwrites, the last scales by `scale`). */
static void backward_block(fa_job *job, fa_scratch *sc, q_tile *qt, int64_t j0, int64_t nk) {
    const fa_problem *p = job->p;
    const fa_kernels *kn = job->kn;
    int64_t nq = qt->nq, r0 = stat_index(p, qt->b, qt->h, qt->t0), tile = j0 / BK;
    const float *lse = job->lse + r0, *delta = job->delta + r0, *dout = row_of(&p->dout, qt->b, qt->t0, qt->h);
    drop_empty_rows(job, qt);
    load_scaled_queries(p, qt, sc->qs);
    score_keys(p, kn, sc, qt, job->kt, j0, nk);
    kn->gemm(nq, nk, p->Dv, dout, p->dout.sr, packed_columns(p, job->vt, p->Dv, qt->b, qt->kv, j0), packed_ld(p),
             sc->dp, BK, false);
    for (int64_t i = 0; i < nq; i++) {
        float *ps = sc->s + i * BK, *dp = sc->dp + i * BK;
        int64_t a, e;
        visible_part(qt, i, j0, nk, &a, &e);
        if (a < e) kn->exp_sum(ps + a, e - a, lse[i]);
        zero_outside(ps, nk, a, e);
        for (int64_t j = 0; j < nk; j++) dp[j] = ps[j] * (dp[j] - delta[i]); /* dS = P (dP - delta) */
    }
    kn->pack_transposed(sc->s, BK, nq, nk, 1.0f, sc->tile_t, BQ);
    kn->gemm(nk, p->Dv, nq, sc->tile_t, BQ, dout, p->dout.sr, sc->acc2, p->Dv, true); /* dv += P^T dout */
    kn->pack_transposed(sc->dp, BK, nq, nk, 1.0f, sc->tile_t, BQ);
    kn->gemm(nk, p->D, nq, sc->tile_t, BQ, sc->qs, p->D, sc->acc, p->D, true); /* dk += dS^T (scale q) */
    atomic_int *turn = dq_turn_of(job, qt->b, qt->h, qt->t0);
    float *dq = dq_rows(job, qt->b, qt->t0, qt->h);
    int64_t ld = p->H * p->D;
    wait_turn(turn, tile);
    kn->gemm(nq, p->D, nk, sc->dp, BK, row_of(&p->k, qt->b, j0, qt->kv), p->k.sr, dq, ld, tile != qt->klo / BK);
    if (tile == (qt->khi - 1) / BK)
        for (int64_t i = 0; i < nq; i++)
            for (int64_t d = 0; d < p->D; d++) dq[i * ld + d] *= p->scale;
    atomic_store_explicit(turn, (int)tile + 1, memory_order_release);
}

/* Queries that may see a key in [j0, j0 + nk) by causality and window (key_start is per row). */
static void query_span(const fa_problem *p, int64_t j0, int64_t nk, int64_t *t_begin, int64_t *t_end) {
    int64_t shift = p->S - p->T, b = 0, e = p->T; /* pos = t + shift */
    if (p->causal && j0 - shift > b) b = j0 - shift;
    if (p->window > 0 && j0 + nk - 1 + p->window - shift < e) e = j0 + nk - 1 + p->window - shift;
    *t_begin = b;
    *t_end = e > b ? e : b;
}

/* Step B: one key tile of one (batch, kv head) against every query tile whose keys reach it,
 * last query tile first and the group's heads innermost - the order of every item, so an item
 * waiting for its predecessor's turn on a tile finds it about one block ahead. */
static void backward_item(fa_job *job, fa_scratch *sc, int64_t item) {
    const fa_problem *p = job->p;
    int64_t tiles = n_k_tiles(p), pair = item / tiles, j0 = (item % tiles) * BK;
    int64_t b = pair / p->Hk, kv = pair % p->Hk, nk = p->S - j0 < BK ? p->S - j0 : BK, t_begin, t_end;
    memset(sc->acc, 0, (size_t)(nk * p->D) * sizeof(float));
    memset(sc->acc2, 0, (size_t)(nk * p->Dv) * sizeof(float));
    query_span(p, j0, nk, &t_begin, &t_end);
    for (int64_t t0 = t_end > t_begin ? (t_end - 1) / BQ * BQ : -1; t0 >= 0 && t0 + BQ > t_begin; t0 -= BQ)
        for (int64_t h = kv * p->group; h < (kv + 1) * p->group; h++) {
            q_tile qt;
            make_q_tile(p, b, h, t0, BQ, &qt);
            if (qt.klo < qt.khi && qt.klo < j0 + nk && qt.khi > j0) backward_block(job, sc, &qt, j0, nk);
        }
    grad_layout g = grad_layout_of(p);
    for (int64_t j = 0; j < nk; j++) {
        memcpy(job->out + g.dk + ((b * p->S + j0 + j) * p->Hk + kv) * p->D, sc->acc + j * p->D,
               (size_t)p->D * sizeof(float));
        memcpy(job->out + g.dv + ((b * p->S + j0 + j) * p->Hk + kv) * p->Dv, sc->acc2 + j * p->Dv,
               (size_t)p->Dv * sizeof(float));
    }
}

/* Where the p and dl of the extra slots of row (b, t, h) of the current chunk start. */
static int64_t slot_base(const fa_job *job, int64_t b, int64_t t, int64_t h) {
    const fa_problem *p = job->p;
    return ((b * (job->t_end - job->t_begin) + t - job->t_begin) * p->H + h) * p->E;
}

/* Step C: dq's share of the extras of one query tile's rows (added to step B's dq); keeps each
 * slot's p and dl for step D. */
static void extras_dq_item(fa_job *job, fa_scratch *sc, int64_t item) {
    const fa_problem *p = job->p;
    q_tile qt;
    q_tile_of_item(p, item, job->t_begin, job->t_end, BQ, &qt);
    load_scaled_queries(p, &qt, sc->qs);
    for (int64_t i = 0; i < qt.nq; i++) {
        int64_t t = qt.t0 + i, base = slot_base(job, qt.b, t, qt.h), r = stat_index(p, qt.b, qt.h, t);
        const float *q = sc->qs + i * p->D, *dout = row_of(&p->dout, qt.b, t, qt.h);
        float lse = job->lse[r], *dq = dq_rows(job, qt.b, t, qt.h);
        for (int64_t e = 0; e < p->E; e++) {
            int64_t n = int_at(&p->idx, qt.b, t, e);
            float prob = 0, dl = 0;
            if (n >= 0 && lse != -INFINITY) {
                const float *x = row_of(&p->extra, qt.b, n, qt.kv);
                prob = expf(job->kn->dot(q, x, p->D) - lse);
                dl = prob * (job->kn->dot(dout, x + p->xv, p->Dv) - job->delta[r]);
                job->kn->axpy(dq, p->scale * dl, x, p->D);
            }
            job->extra_p[base + e] = prob;
            job->extra_dl[base + e] = dl;
        }
    }
}

/* Step D: columns [c0, c0 + DCOLS) of dextra of one (batch, kv head): every slot of every row of
 * the chunk in its query heads adds scale dl q to the key's columns (key share) and p dout to
 * the value's (value share; the same columns when X = D), in (h, t, e) order (chunks in
 * ascending order: a fixed order in all). */
static void dextra_item(fa_job *job, fa_scratch *sc, int64_t item) {
    const fa_problem *p = job->p;
    int64_t blocks = (p->X + DCOLS - 1) / DCOLS, pair = item / blocks, c0 = (item % blocks) * DCOLS;
    int64_t b = pair / p->Hk, kv = pair % p->Hk, c1 = p->X - c0 < DCOLS ? p->X : c0 + DCOLS;
    int64_t key_end = c1 < p->D ? c1 : p->D, value_begin = c0 > p->xv ? c0 : p->xv;
    float *dx = job->out + grad_layout_of(p).dextra;
    for (int64_t h = kv * p->group; h < (kv + 1) * p->group; h++)
        for (int64_t t = job->t_begin; t < job->t_end; t++) {
            const float *q = row_of(&p->q, b, t, h), *dout = row_of(&p->dout, b, t, h);
            int64_t base = slot_base(job, b, t, h);
            for (int64_t e = 0; e < p->E; e++) {
                int64_t n = int_at(&p->idx, b, t, e);
                if (n < 0) continue;
                float *row = dx + ((b * p->N + n) * p->Hk + kv) * p->X;
                float key_share = p->scale * job->extra_dl[base + e], value_share = job->extra_p[base + e];
                for (int64_t d = c0; d < key_end; d++) row[d] += key_share * q[d];
                for (int64_t d = value_begin; d < c1; d++) row[d] += value_share * dout[d - p->xv];
            }
        }
}

/* dsink_h = -sum over (b, t) of p_sink delta, in that order. */
static void store_dsink(const fa_job *job) {
    const fa_problem *p = job->p;
    float *out = job->out + grad_layout_of(p).dsink;
    for (int64_t h = 0; h < p->H; h++) {
        double sum = 0;
        for (int64_t b = 0; b < p->B; b++)
            for (int64_t t = 0; t < p->T; t++) {
                int64_t r = stat_index(p, b, h, t);
                if (job->lse[r] != -INFINITY) sum -= exp((double)sink_of(p, h) - job->lse[r]) * job->delta[r];
            }
        out[h] = (float)sum;
    }
}

/* Query rows per chunk of steps C and D: whole query tiles, as many as keep the chunk's extra
 * slots within EXTRA_SLOTS_MAX (at least one tile); all of T without extras. */
static int64_t chunk_rows(const fa_problem *p) {
    int64_t per_tile = p->B * BQ * p->H * p->E, tiles = per_tile > 0 ? EXTRA_SLOTS_MAX / per_tile : n_q_tiles(p);
    if (tiles < 1) tiles = 1;
    return tiles >= n_q_tiles(p) ? p->T : tiles * BQ;
}

/* Steps C and D chunk by chunk of query rows, so that the p and dl of the extra slots of one
 * chunk only are kept; dextra (zeroed first) sums the chunks in order. */
static void extras_backward(const ts_cpu_ctx *ctx, fa_job *job) {
    const fa_problem *p = job->p;
    memset(job->out + grad_layout_of(p).dextra, 0, (size_t)(p->B * p->N * p->Hk * p->X) * sizeof(float));
    int64_t rows = chunk_rows(p);
    for (job->t_begin = 0; job->t_begin < p->T; job->t_begin += rows) {
        job->t_end = p->T - job->t_begin < rows ? p->T : job->t_begin + rows;
        run_parallel(ctx, job, p->B * p->H * ((job->t_end - job->t_begin + BQ - 1) / BQ), extras_dq_item);
        run_parallel(ctx, job, p->B * p->Hk * ((p->X + DCOLS - 1) / DCOLS), dextra_item);
    }
}

TS_FAST_KERNEL(attention_back) {
    fa_problem p;
    if (!ts_fast_attention_applies(dst)) return ts_ref_attention_back(ctx, dst);
    read_fast_problem(dst, true, &p);
    int threads = ts_threadpool_size(ctx->pool);
    int64_t rows = p.B * p.T * p.H, slots = p.B * chunk_rows(&p) * p.H * p.E, turns = p.B * p.H * n_q_tiles(&p);
    fa_job job = {.p = &p, .kn = active_kernels(), .per_thread = round_up(scratch_floats(&p)), .out = dst->data};
    int64_t tiles_floats = job.per_thread * threads, kt_floats = p.B * p.Hk * p.D * packed_ld(&p);
    int64_t vt_floats = p.B * p.Hk * p.Dv * packed_ld(&p);
    bool temporary;
    job.workspace = workspace_acquire(
        tiles_floats + kt_floats + vt_floats + 2 * round_up(rows) + 2 * round_up(slots) + round_up(turns), &temporary);
    if (!job.workspace) return ts_ref_fail(ctx, TS_ERR_OOM, dst, "out of memory for attention tiles");
    job.kt = job.workspace + tiles_floats;
    job.vt = job.kt + kt_floats;
    job.lse = job.vt + vt_floats;
    job.delta = job.lse + round_up(rows);
    job.extra_p = job.delta + round_up(rows);
    job.extra_dl = job.extra_p + round_up(slots);
    job.dq_turn = (atomic_int *)(void *)(job.extra_dl + round_up(slots)); /* one float's room each */
    run_parallel(ctx, &job, p.B * p.Hk * n_k_tiles(&p), pack_item);
    run_parallel(ctx, &job, p.B * p.H * n_q_tiles(&p), stats_item);
    run_parallel(ctx, &job, p.B * p.Hk * n_k_tiles(&p), backward_item);
    if (p.has_extra) extras_backward(ctx, &job);
    if (p.has_sink) store_dsink(&job);
    workspace_release(job.workspace, temporary);
    return TS_OK;
}
