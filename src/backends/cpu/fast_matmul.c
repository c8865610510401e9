/* fast_matmul.c - the "cpu" backend's matmul: batched matmul on the packed SIMD GEMM (gemm.h),
 * everything else on the reference kernel (ref_nn.c).
 *
 * Operands may be f32, bf16, f16 or fp8 (e4m3, e5m2), in any mix ts_matmul accepts: the GEMM
 * converts narrow ones exactly while packing and accumulates in f32. The output dtype is the
 * op's (f32 for mixed inputs, else the inputs' type); a narrow output is computed in f32 rows
 * (a scratch kept between calls) and rounded once with ts_convert.
 *
 * The fast path takes operands and output whose last two dims form a matrix with unit stride
 * along one of them: contiguous, row- or column-sliced, or a transposed view. Trans flags and
 * leading dimensions come from the strides, so views are multiplied where they lie, never
 * copied. Batch dims follow the reference's broadcasting (size-1 or stride-0 dims reuse one
 * matrix); batches run one after another, each GEMM using the backend's whole thread pool, or
 * (f32, as many batches as threads or more) are spread over the pool, a GEMM per thread; except
 * that batches sharing one B matrix whose A rows follow each other at a uniform stride (a linear
 * layer over [rows, tokens, features], as in a batched decode step) are one GEMM of all their
 * rows: B is then read once for all of them rather than once per batch. f32 products with
 * K <= 8 and B not transposed (mHC's per-token mixes) skip the GEMM: each output row is its
 * K scaled rows of B added up (the tiny-K path below). Any other layout (no unit stride in the matrix, a stride-0 matrix dim, negative strides), dtype,
 * an output overlapping an input, or a malformed node goes to ts_ref_matmul, which computes it
 * or reports the error. Nothing is allocated after a node's first run (the GEMM keeps its
 * packing workspace between calls, this file its f32 output scratch). GEMM results are bit-identical for any thread count (gemm.h), so this kernel
 * is deterministic too. */
#include <pthread.h>
#include <stdlib.h>

#include "backends/cpu/fast_kernels.h"
#include "backends/cpu/fast_vmath.h"
#include "backends/cpu/gemm.h"
#include "backends/cpu/ref_common.h"
#include "backends/cpu/ref_kernels.h"

/* One operand as the GEMM reads it: row-major storage with leading dimension ld, transposed
 * (trans) or not, starting at a per-batch offset from data. */
typedef struct {
    const ts_tensor *t;
    bool trans;
    int64_t ld;
} gemm_operand;

typedef struct {
    gemm_operand a, b;
    int64_t M, N, K;
    int64_t n_batch; /* output matrices: product of dst's batch dims */
} gemm_plan;

/* Row-major addressing of a rows x cols matrix whose element (i, j) sits at i*rs + j*cs: true
 * when cs is the unit stride (or irrelevant) and rows do not overlap. *ld gets the row stride;
 * a single row gets ld = cols, a value the GEMM accepts and never steps by. */
static bool row_major_ld(int64_t rows, int64_t cols, int64_t rs, int64_t cs, int64_t *ld) {
    if (cols > 1 && cs != 1) return false;
    if (rows <= 1) {
        *ld = cols > 1 ? cols : 1;
        return true;
    }
    if (rs < (cols > 1 ? cols : 1)) return false;
    *ld = rs;
    return true;
}

/* How GEMM reads the matrix held in the last two dims of t, which the op uses transposed when
 * op_trans. Stored row-major: pass op_trans through. Stored column-major (a transposed view):
 * it is the row-major transpose, so flip the flag. False when neither stride is unit. */
static bool operand_layout(const ts_tensor *t, bool op_trans, gemm_operand *out) {
    int r = t->ndim - 2;
    int64_t rows = t->shape[r], cols = t->shape[r + 1], rs = t->stride[r], cs = t->stride[r + 1];
    out->t = t;
    if (row_major_ld(rows, cols, rs, cs, &out->ld)) {
        out->trans = op_trans;
        return true;
    }
    if (row_major_ld(cols, rows, cs, rs, &out->ld)) {
        out->trans = !op_trans;
        return true;
    }
    return false;
}

static bool strides_nonnegative(const ts_tensor *t) {
    for (int d = 0; d < t->ndim; d++)
        if (t->stride[d] < 0) return false;
    return true;
}

/* Bytes from t->data to just past the last element t can address. */
static int64_t span_bytes(const ts_tensor *t) {
    int64_t last = 0;
    for (int d = 0; d < t->ndim; d++) {
        if (t->shape[d] == 0) return 0;
        last += (t->shape[d] - 1) * t->stride[d];
    }
    return (int64_t)ts_dtype_bytes(t->dtype, last + 1);
}

/* GEMM requires C not to overlap A or B; a planner never does that to matmul, but a caller
 * binding storage by hand could. */
static bool overlaps(const ts_tensor *x, const ts_tensor *y) {
    const char *x0 = x->data, *y0 = y->data;
    return x0 < y0 + span_bytes(y) && y0 < x0 + span_bytes(x);
}

/* Batch dims of t (rank >= 2) broadcast to the nb batch dims of c. */
static bool batch_broadcasts(const ts_tensor *t, const ts_tensor *c, int nb) {
    int tb = t->ndim - 2;
    if (tb > nb) return false;
    for (int d = 0; d < tb; d++)
        if (t->shape[d] != 1 && t->shape[d] != c->shape[d + nb - tb]) return false;
    return true;
}

static bool on_gemm(const ts_tensor *t) { return t && ts_gemm_dtype_supported(t->dtype) && t->data; }

/* Element step between the matrices of t (rank >= 2) for consecutive output batches (row-major
 * over the nb batch dims of c), into *step; false when the batches do not lie at one uniform
 * step. Broadcast and stride-0 dims step 0, so a matrix shared by every batch has step 0. */
static bool uniform_batch_step(const ts_tensor *t, const ts_tensor *c, int64_t *step) {
    int nb = c->ndim - 2, lead = nb - (t->ndim - 2);
    int64_t batches = 1; /* output batches per step of dim d: the product of the inner dims */
    *step = 0;
    for (int d = nb - 1; d >= 0; d--) {
        if (c->shape[d] == 1) continue;
        int td = d - lead;
        int64_t s = td >= 0 && t->shape[td] != 1 ? t->stride[td] : 0;
        if (batches == 1) *step = s;
        else if (s != *step * batches) return false;
        batches *= c->shape[d];
    }
    return true;
}

/* Folds the batches into the rows of one GEMM when they share B and op(A)'s rows of all batches
 * lie at one stride (dst is contiguous, so its rows do too): one pass over B instead of one per
 * batch, and a row count the GEMM tiles better. */
static void fold_batches(const ts_tensor *dst, gemm_plan *p) {
    int64_t a_step, b_step;
    if (p->n_batch <= 1 || p->a.trans || !uniform_batch_step(p->b.t, dst, &b_step) || b_step != 0 ||
        !uniform_batch_step(p->a.t, dst, &a_step))
        return;
    if (p->M == 1 ? a_step < p->K : a_step != p->M * p->a.ld) return;
    if (p->M == 1) p->a.ld = a_step;
    p->M *= p->n_batch;
    p->n_batch = 1;
}

/* Fills *p when dst can run on the GEMM; false sends it to the reference kernel. The shape
 * checks mirror ts_ref_matmul's so that a malformed node is never multiplied here. */
static bool plan_gemm(const ts_tensor *dst, gemm_plan *p) {
    if (dst->op != TS_OP_MATMUL || dst->n_src < 2) return false;
    const ts_tensor *a = dst->src[0], *b = dst->src[1];
    if (!on_gemm(dst) || !on_gemm(a) || !on_gemm(b)) return false;
    if (a->ndim < 2 || b->ndim < 2 || dst->ndim < 2 || !ts_is_contiguous(dst)) return false;
    if (!strides_nonnegative(a) || !strides_nonnegative(b)) return false;
    bool ta = dst->ip[0] != 0, tb = dst->ip[1] != 0;
    int ra = a->ndim - 2, rb = b->ndim - 2, nb = dst->ndim - 2;
    p->M = a->shape[ra + (ta ? 1 : 0)];
    p->K = a->shape[ra + (ta ? 0 : 1)];
    p->N = b->shape[rb + (tb ? 0 : 1)];
    if (b->shape[rb + (tb ? 1 : 0)] != p->K || dst->shape[nb] != p->M || dst->shape[nb + 1] != p->N) return false;
    if (!batch_broadcasts(a, dst, nb) || !batch_broadcasts(b, dst, nb)) return false;
    if (!operand_layout(a, ta, &p->a) || !operand_layout(b, tb, &p->b)) return false;
    if (overlaps(dst, a) || overlaps(dst, b)) return false;
    p->n_batch = 1;
    for (int d = 0; d < nb; d++) p->n_batch *= dst->shape[d];
    fold_batches(dst, p);
    return true;
}

/* Element offset of the matrix of t (rank >= 2) that output batch `batch` (row-major over the
 * nb batch dims of c) reads; broadcast dims (size 1) stay at 0, stride-0 dims add nothing. */
static int64_t batch_offset(const ts_tensor *t, const ts_tensor *c, int64_t batch) {
    int nb = c->ndim - 2, lead = nb - (t->ndim - 2);
    int64_t off = 0;
    for (int d = nb - 1; d >= 0; d--) {
        int64_t coord = batch % c->shape[d];
        batch /= c->shape[d];
        int td = d - lead;
        if (td >= 0 && t->shape[td] != 1) off += coord * t->stride[td];
    }
    return off;
}

/* ---------------------------------------------------------------- narrow outputs */

/* A narrow output is computed OUT_CHUNK_FLOATS (or one row) of f32 at a time in a scratch kept
 * between calls, so a graph's matmuls allocate only on their first run. A second concurrent
 * caller (another graph on another thread) gets a temporary buffer. */
#define OUT_CHUNK_FLOATS ((int64_t)1 << 20)

static ts_cpu_scratch out_scratch = TS_CPU_SCRATCH_INIT;

/* ---------------------------------------------------------------- run */

/* Address of element `off` of t's storage. */
static const void *elem_ptr(const ts_tensor *t, int64_t off) {
    return (const char *)t->data + ts_dtype_bytes(t->dtype, off);
}

/* Rows [i0, i0 + rows) of output batch `batch` into c (ldc = N). */
static void gemm_rows(const ts_cpu_ctx *ctx, const gemm_plan *p, const ts_tensor *dst, int64_t batch, int64_t i0,
                      int64_t rows, float *c) {
    const gemm_operand *a = &p->a, *b = &p->b;
    int64_t a_row = i0 * (a->trans ? 1 : a->ld); /* op(A) row i0 */
    ts_gemm(ctx->pool, a->trans, b->trans, rows, p->N, p->K, 1.0f,
            elem_ptr(a->t, batch_offset(a->t, dst, batch) + a_row), a->t->dtype, a->ld,
            elem_ptr(b->t, batch_offset(b->t, dst, batch)), b->t->dtype, b->ld, 0.0f, c, p->N);
}

typedef struct {
    const ts_cpu_ctx *ctx;
    const gemm_plan *p;
    const ts_tensor *dst;
} batches_job;

/* Output batches [begin, end), each a GEMM on this thread (a parallel-for inside a job runs
 * serially). */
static void batches_range(void *arg, int64_t begin, int64_t end, int tid) {
    const batches_job *j = arg;
    for (int64_t batch = begin; batch < end; batch++)
        gemm_rows(j->ctx, j->p, j->dst, batch, 0, j->p->M, (float *)j->dst->data + batch * j->p->M * j->p->N);
}

/* Multiply-adds a thread should get before batches are spread (a GEMM call costs about as
 * much as BATCH_CALL_FMAS of them on top of its own), and the overhead of a call. */
#define BATCH_MIN_FMAS ((int64_t)1 << 16)
#define BATCH_CALL_FMAS ((int64_t)1 << 13)

/* f32 batches: spread over the pool, a single-threaded GEMM each, when they divide evenly among
 * the threads or are many - a decode step's per-sequence products ([16, 4, 256] <- [16, 4, 4]
 * [16, 4, 256] for mHC, the indexer's scores) are each far too small for a GEMM to split, so
 * one after another they kept every other thread idle; otherwise one after another, each GEMM
 * on the whole pool. Either way each batch's bits are the same (GEMM results do not depend on
 * the thread count). */
/* ---------------------------------------------------------------- tiny inner dimension */

/* Products with K <= TINY_K and B not transposed - mHC's stream mixing, per token: [T, 1, 4] x
 * [T, 4, D], [T, 4, 4] x [T, 4, D], [T, 4, 1] x [T, 1, D] - are K rows of B scaled and added
 * into each output row (axpys), the rows of all batches split over the pool: a GEMM call per
 * matrix cost several times the arithmetic. Each element is one FMA chain over k in order
 * from zero (the GEMM micro-kernels' arithmetic), whatever the batch count or the split. */
#define TINY_K 8
#define TINY_MIN_FMAS ((int64_t)1 << 15) /* per thread chunk */

typedef struct {
    const gemm_plan *p;
    const ts_tensor *dst;
    const ts_vmath *vm;
} tiny_job;

static bool tiny_k_applies(const gemm_plan *p) {
    return p->K <= TINY_K && !p->b.trans && p->a.t->dtype == TS_F32 && p->b.t->dtype == TS_F32;
}

/* Output rows [begin, end) of all batches (row r: batch r / M, row r % M). */
static void tiny_k_range(void *arg, int64_t begin, int64_t end, int tid) {
    const tiny_job *j = arg;
    const gemm_plan *p = j->p;
    const float *a = NULL, *b_rows[TINY_K];
    float a_row[TINY_K];
    for (int64_t r = begin, batch = -1; r < end; r++) {
        int64_t i = r % p->M;
        if (r / p->M != batch) {
            batch = r / p->M;
            a = (const float *)p->a.t->data + batch_offset(p->a.t, j->dst, batch);
            const float *b = (const float *)p->b.t->data + batch_offset(p->b.t, j->dst, batch);
            for (int64_t k = 0; k < p->K; k++) b_rows[k] = b + k * p->b.ld;
        }
        for (int64_t k = 0; k < p->K; k++) a_row[k] = p->a.trans ? a[k * p->a.ld + i] : a[i * p->a.ld + k];
        float *c = (float *)j->dst->data + r * p->N;
        for (int64_t n = 0; n < p->N; n++) c[n] = 0.0f;
        j->vm->axpys(c, a_row, b_rows, p->K, p->N);
    }
}

static void run_tiny_k(const ts_cpu_ctx *ctx, const gemm_plan *p, ts_tensor *dst) {
    tiny_job j = {.p = p, .dst = dst, .vm = ts_vmath_active()};
    int64_t per_row = p->K * p->N;
    ts_parallel_for(ctx->pool, p->n_batch * p->M, (TINY_MIN_FMAS + per_row - 1) / per_row, tiny_k_range, &j);
}

static void run_f32_batches(const ts_cpu_ctx *ctx, const gemm_plan *p, ts_tensor *dst) {
    if (tiny_k_applies(p)) {
        run_tiny_k(ctx, p, dst);
        return;
    }
    int64_t threads = ts_threadpool_size(ctx->pool);
    batches_job j = {.ctx = ctx, .p = p, .dst = dst};
    if (threads > 1 && p->n_batch >= threads && (p->n_batch % threads == 0 || p->n_batch >= 8 * threads)) {
        int64_t per_batch = p->M * p->N * p->K + BATCH_CALL_FMAS;
        ts_parallel_for(ctx->pool, p->n_batch, (BATCH_MIN_FMAS + per_batch - 1) / per_batch, batches_range, &j);
        return;
    }
    for (int64_t batch = 0; batch < p->n_batch; batch++)
        gemm_rows(ctx, p, dst, batch, 0, p->M, (float *)dst->data + batch * p->M * p->N);
}

static ts_status run_gemm(const ts_cpu_ctx *ctx, const gemm_plan *p, ts_tensor *dst) {
    if (dst->dtype == TS_F32) {
        run_f32_batches(ctx, p, dst);
        return TS_OK;
    }
    int64_t chunk_rows = OUT_CHUNK_FLOATS / p->N > 0 ? OUT_CHUNK_FLOATS / p->N : 1;
    if (chunk_rows > p->M) chunk_rows = p->M;
    bool temporary;
    float *scratch = ts_cpu_scratch_acquire(&out_scratch, (size_t)(chunk_rows * p->N) * sizeof(float), &temporary);
    if (!scratch) return ts_ref_fail(ctx, TS_ERR_OOM, dst, "out of memory for the f32 rows of a narrow output");
    ts_status s = TS_OK;
    for (int64_t batch = 0; batch < p->n_batch && s == TS_OK; batch++)
        for (int64_t i0 = 0; i0 < p->M && s == TS_OK; i0 += chunk_rows) {
            int64_t rows = p->M - i0 < chunk_rows ? p->M - i0 : chunk_rows;
            gemm_rows(ctx, p, dst, batch, i0, rows, scratch);
            s = ts_convert((char *)dst->data + ts_dtype_bytes(dst->dtype, (batch * p->M + i0) * p->N), dst->dtype,
                           scratch, TS_F32, rows * p->N);
        }
    ts_cpu_scratch_release(&out_scratch, scratch, temporary);
    return s == TS_OK ? TS_OK : ts_ref_fail(ctx, s, dst, "converting the f32 result to the output dtype");
}

bool ts_fast_matmul_uses_gemm(const ts_tensor *dst) {
    gemm_plan p;
    return dst && plan_gemm(dst, &p);
}

TS_FAST_KERNEL(matmul) {
    gemm_plan p;
    if (!plan_gemm(dst, &p)) return ts_ref_matmul(ctx, dst);
    return run_gemm(ctx, &p, dst);
}
