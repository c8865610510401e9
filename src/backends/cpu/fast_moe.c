/* fast_moe.c - the "cpu" backend's mixture-of-experts matmul (matmul_id) and its weight gradient
 * (matmul_id_grad_w) on the packed GEMM (gemm.h), the way ggml's mul_mat_id works: the (token,
 * slot) pairs are grouped by expert with a counting sort of ids (stable, so each expert's pairs
 * keep their order), their rows are gathered into one contiguous block per expert, every expert
 * that has pairs runs one GEMM (the small-M streaming path when it has few, as in decoding), and
 * the results are scattered back to their pairs (matmul_id) or are that expert's [N, K] gradient
 * (grad_w; zeros for experts without pairs). Only the selected experts cost anything: E / Kk
 * times less work than running every expert on every token.
 *
 * Fast path: the output f32, the row operands (x, or a and b) f32, bf16 or f16 (gathered as f32),
 * w any dtype the GEMM reads
 * (f32, bf16, f16, fp8; converted exactly while packing), every operand with unit stride along
 * its last dim (rows may be strided: slices and per-slot views are read where they lie), ids i32
 * or i64 and contiguous. Other layouts and dtypes, malformed nodes and ids outside [0, E) go to
 * the reference kernel (ref_nn.c), which computes them or reports the error. Inputs are read
 * only before the output is written (gather, GEMM into scratch, scatter), so an output sharing
 * storage with an input is harmless. With at least as many used experts as threads the experts
 * are spread over the pool by cost, single-threaded GEMMs, the expert at each end of a thread's
 * share split by columns; with fewer they run one after another, each GEMM on the whole pool.
 * Gathers and scatters are split over the pool by rows. GEMM results are bit-identical for any
 * thread count and column split, so either way this kernel is deterministic. The sort arrays
 * and gathered rows live in one scratch kept between calls (grown on demand; a second
 * concurrent caller gets a temporary one), so a graph allocates here only on its first run. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "backends/cpu/fast_kernels.h"
#include "backends/cpu/gemm.h"
#include "backends/cpu/ref_kernels.h"

/* Floats per thread chunk of a gather or scatter, below which one thread moves all the rows. */
#define MIN_CHUNK_FLOATS 8192

/* Rows of a per-pair operand: pair p = t * Kk + k reads element t * st + k * sk of data (sk = 0
 * for a [T, L] operand, whose row t serves every slot of token t); len elements of dtype with
 * unit stride (f32, or bf16 / f16 - autocast's operands - widened exactly while gathered). */
typedef struct {
    const char *data;
    ts_dtype dtype;
    int64_t st, sk, len;
} pair_rows;

typedef struct {
    const ts_tensor *ids;
    int64_t n_pairs, Kk, E;
    int64_t N, K;       /* matmul_id: rows of K in, rows of N out; grad_w: dst [E, N, K] */
    pair_rows in, in2;  /* matmul_id: in = x; grad_w: in = a (rows of N), in2 = b (rows of K) */
    const char *w;      /* matmul_id: w[e] at w + bytes(e * w_se), row stride w_ld elements */
    ts_dtype w_type;
    int64_t w_se, w_ld;
    bool trans_w;
    float *out;
} moe_plan;

/* ---------------------------------------------------------------- planning */

static bool is_f32_with_data(const ts_tensor *t) { return t && t->dtype == TS_F32 && t->data; }

static bool is_row_dtype(ts_dtype t) { return t == TS_F32 || t == TS_BF16 || t == TS_F16; }

/* t as rows of len elements for ids [T, Kk] (the reference's shape rule); false when the layout
 * or dtype is not addressable here. */
static bool plan_rows(const ts_tensor *t, const ts_tensor *ids, int64_t len, pair_rows *r) {
    if (!t || !t->data || !is_row_dtype(t->dtype) || (t->ndim != 2 && t->ndim != 3) || t->shape[0] != ids->shape[0] ||
        (t->ndim == 3 && t->shape[1] != ids->shape[1]) || t->shape[t->ndim - 1] != len)
        return false;
    if (t->stride[t->ndim - 1] != 1 && len > 1) return false;
    *r = (pair_rows){.data = t->data, .dtype = t->dtype, .st = t->stride[0], .sk = t->ndim == 3 ? t->stride[1] : 0,
                     .len = len};
    return r->st >= 0 && r->sk >= 0;
}

/* What both ops share: a contiguous f32 dst [., ., .] and contiguous i32 / i64 ids [T, Kk]. */
static bool plan_common(const ts_tensor *dst, ts_op op, moe_plan *p) {
    if (dst->op != op || dst->n_src != 3 || !is_f32_with_data(dst) || dst->ndim != 3 || !ts_is_contiguous(dst))
        return false;
    const ts_tensor *ids = dst->src[2];
    if (!ids || !ids->data || (ids->dtype != TS_I32 && ids->dtype != TS_I64) || ids->ndim != 2 ||
        !ts_is_contiguous(ids))
        return false;
    *p = (moe_plan){.ids = ids, .n_pairs = ts_nelements(ids), .Kk = ids->shape[1], .out = dst->data};
    return true;
}

static bool plan_matmul_id(const ts_tensor *dst, moe_plan *p) {
    if (!plan_common(dst, TS_OP_MATMUL_ID, p)) return false;
    const ts_tensor *w = dst->src[0];
    if (!w || !w->data || w->ndim != 3 || !ts_gemm_dtype_supported(w->dtype)) return false;
    p->trans_w = dst->ip[0] != 0;
    p->E = w->shape[0];
    p->N = w->shape[p->trans_w ? 2 : 1];
    p->K = w->shape[p->trans_w ? 1 : 2];
    /* w[e] is row-major [rows, cols] with unit column stride; the GEMM reads it as op(B) */
    if (w->stride[2] != 1 || w->stride[1] < w->shape[2] || w->stride[0] < 0) return false;
    p->w = w->data;
    p->w_type = w->dtype;
    p->w_se = w->stride[0];
    p->w_ld = w->stride[1];
    if (dst->shape[0] != p->ids->shape[0] || dst->shape[1] != p->Kk || dst->shape[2] != p->N) return false;
    return plan_rows(dst->src[1], p->ids, p->K, &p->in);
}

static bool plan_grad_w(const ts_tensor *dst, moe_plan *p) {
    if (!plan_common(dst, TS_OP_MATMUL_ID_GRAD_W, p) || dst->ip[0] < 1 || dst->shape[0] != dst->ip[0]) return false;
    p->E = dst->shape[0];
    p->N = dst->shape[1];
    p->K = dst->shape[2];
    return plan_rows(dst->src[0], p->ids, p->N, &p->in) && plan_rows(dst->src[1], p->ids, p->K, &p->in2);
}

/* ---------------------------------------------------------------- scratch */

static ts_cpu_scratch scratch = TS_CPU_SCRATCH_INIT;

/* The pieces of one run's scratch: the sort (order, start) and two row blocks. */
typedef struct {
    int64_t *order; /* n_pairs: pair indices grouped by expert */
    int64_t *start; /* E + 1: expert e's pairs are order[start[e] .. start[e + 1]) */
    float *rows_in; /* n_pairs rows of p->in.len (matmul_id: x; grad_w: a) */
    float *rows_2;  /* n_pairs rows (matmul_id: results of N; grad_w: b of K) */
} moe_work;

static size_t work_bytes(const moe_plan *p) {
    return (size_t)(p->n_pairs + p->E + 1) * sizeof(int64_t) + (size_t)(p->n_pairs * (p->N + p->K)) * sizeof(float);
}

static moe_work work_at(const moe_plan *p, void *base) {
    moe_work w = {.order = base};
    w.start = w.order + p->n_pairs;
    w.rows_in = (float *)(w.start + p->E + 1);
    w.rows_2 = w.rows_in + p->n_pairs * p->in.len;
    return w;
}

/* ---------------------------------------------------------------- sort, gather, scatter */

static int64_t id_at(const ts_tensor *ids, int64_t i) {
    return ids->dtype == TS_I32 ? ((const int32_t *)ids->data)[i] : ((const int64_t *)ids->data)[i];
}

/* Counting sort of the pairs by expert, stable. False when an id lies outside [0, E). */
static bool sort_pairs(const moe_plan *p, const moe_work *w) {
    int64_t *start = w->start;
    memset(start, 0, (size_t)(p->E + 1) * sizeof *start);
    for (int64_t i = 0; i < p->n_pairs; i++) {
        int64_t e = id_at(p->ids, i);
        if (e < 0 || e >= p->E) return false;
        start[e + 1]++;
    }
    for (int64_t e = 0; e < p->E; e++) start[e + 1] += start[e];
    /* place each pair at its expert's cursor (start[e], advanced), then shift the cursors back */
    for (int64_t i = 0; i < p->n_pairs; i++) w->order[start[id_at(p->ids, i)]++] = i;
    for (int64_t e = p->E; e > 0; e--) start[e] = start[e - 1];
    start[0] = 0;
    return true;
}

static const void *row_of(const pair_rows *r, int64_t pair, int64_t Kk) {
    return r->data + ts_dtype_bytes(r->dtype, (pair / Kk) * r->st + (pair % Kk) * r->sk);
}

typedef struct {
    const moe_plan *p;
    const moe_work *w;
    const pair_rows *src; /* gather: the operand read */
    float *block;         /* gather: destination rows; scatter: source rows */
    int64_t len;
} move_job;

static void gather_range(void *arg, int64_t begin, int64_t end, int tid) {
    const move_job *j = arg;
    for (int64_t i = begin; i < end; i++) /* f32 is copied; narrow rows convert exactly (cannot fail) */
        ts_convert(j->block + i * j->len, TS_F32, row_of(j->src, j->w->order[i], j->p->Kk), j->src->dtype, j->len);
}

static void scatter_range(void *arg, int64_t begin, int64_t end, int tid) {
    const move_job *j = arg;
    for (int64_t i = begin; i < end; i++)
        memcpy(j->p->out + j->w->order[i] * j->len, j->block + i * j->len, (size_t)j->len * sizeof(float));
}

static void move_rows(const ts_cpu_ctx *ctx, move_job *j, ts_range_fn fn) {
    int64_t min_rows = MIN_CHUNK_FLOATS / j->len > 0 ? MIN_CHUNK_FLOATS / j->len : 1;
    ts_parallel_for(ctx->pool, j->p->n_pairs, min_rows, fn, j);
}

/* ---------------------------------------------------------------- per-expert GEMMs */

/* The work of expert e on columns [c0, c1) of its result, its GEMM on pool (NULL: the calling
 * thread). A GEMM's bits do not depend on which columns a call computes (gemm.h). */
typedef void (*expert_fn)(ts_threadpool *pool, const moe_plan *p, const moe_work *w, int64_t e, int64_t c0,
                          int64_t c1);

/* matmul_id: expert e's gathered x rows times w[e] (transposed unless trans_w) into its result
 * rows; the result's columns are the rows of the stored [N, K] w[e] (trans_w: its columns). */
static void matmul_id_expert(ts_threadpool *pool, const moe_plan *p, const moe_work *w, int64_t e, int64_t c0,
                             int64_t c1) {
    int64_t s = w->start[e], n = w->start[e + 1] - s;
    if (n == 0) return;
    const void *we = p->w + ts_dtype_bytes(p->w_type, e * p->w_se + (p->trans_w ? c0 : c0 * p->w_ld));
    ts_gemm(pool, false, !p->trans_w, n, c1 - c0, p->K, 1.0f, w->rows_in + s * p->K, TS_F32, p->K, we, p->w_type,
            p->w_ld, 0.0f, w->rows_2 + s * p->N + c0, p->N);
}

/* grad_w: dst[e] = A_e^T B_e over expert e's gathered rows (A_e [n, N], B_e [n, K]), or zeros;
 * its columns are the K of B. */
static void grad_w_expert(ts_threadpool *pool, const moe_plan *p, const moe_work *w, int64_t e, int64_t c0,
                          int64_t c1) {
    int64_t s = w->start[e], n = w->start[e + 1] - s;
    float *de = p->out + e * p->N * p->K;
    if (n == 0) {
        for (int64_t r = 0; r < p->N; r++) memset(de + r * p->K + c0, 0, (size_t)(c1 - c0) * sizeof(float));
        return;
    }
    ts_gemm(pool, true, false, p->N, c1 - c0, n, 1.0f, w->rows_in + s * p->N, TS_F32, p->N, w->rows_2 + s * p->K + c0,
            TS_F32, p->K, 0.0f, de + c0, p->K);
}

typedef struct {
    const moe_plan *p;
    const moe_work *w;
    expert_fn fn;
    int64_t cols; /* of each expert's result */
    int64_t n_slices;
} experts_job;

/* An expert's share of the work when the experts are spread over threads: its rows, plus the
 * cost of streaming its weight matrix, which with few rows (decoding: a 16-row batch gives each
 * of 8 experts about 4) is most of it - balanced by rows alone, one thread got 6 experts of a
 * skewed routing and the other 2. About 8 rows' worth (the small-M kernels run DRAM-bound up
 * to about that many). */
#define EXPERT_READ_ROWS 8

static int64_t expert_cost(const moe_work *w, int64_t e) {
    int64_t rows = w->start[e + 1] - w->start[e];
    return rows > 0 ? rows + EXPERT_READ_ROWS : 0;
}

/* Column of an expert's result where cost point x of its [at, at + cost) falls: a multiple of
 * 16 inside (whole vectors for the kernels), its ends exactly. Neighbouring slices compute the
 * same boundary from the same x. */
static int64_t slice_col(int64_t x, int64_t at, int64_t cost, int64_t cols) {
    if (x <= at) return 0;
    if (x >= at + cost) return cols;
    return (x - at) * cols / cost / 16 * 16;
}

/* Slice i runs, on its own thread, the i-th share of the total cost (expert_cost) with the
 * experts laid end to end: whole experts, and at each end of its share part of one, split by
 * columns (two threads then each stream half of that expert's weights instead of one thread
 * all of it and the other waiting). An expert without rows (grad_w zeroes it) goes with the
 * slice its start lies in. */
static void experts_range(void *arg, int64_t begin, int64_t end, int tid) {
    const experts_job *j = arg;
    const moe_plan *p = j->p;
    int64_t total = 0;
    for (int64_t e = 0; e < p->E; e++) total += expert_cost(j->w, e);
    for (int64_t i = begin; i < end; i++) {
        int64_t lo = i * total / j->n_slices, hi = i + 1 == j->n_slices ? total + 1 : (i + 1) * total / j->n_slices;
        for (int64_t e = 0, at = 0; e < p->E; at += expert_cost(j->w, e), e++) {
            int64_t cost = expert_cost(j->w, e);
            if (cost == 0) {
                if (at >= lo && at < hi) j->fn(NULL, p, j->w, e, 0, j->cols);
                continue;
            }
            int64_t c0 = slice_col(lo, at, cost, j->cols), c1 = slice_col(hi, at, cost, j->cols);
            if (c1 > c0) j->fn(NULL, p, j->w, e, c0, c1);
        }
    }
}

/* Every expert once. With at least as many used experts as threads, the experts are spread
 * over the pool and each GEMM runs on one thread (no synchronisation inside the small GEMMs
 * of a layer with many experts); otherwise they run one after another, each GEMM on the whole
 * pool. Both give the same bits (GEMM results do not depend on its thread count or columns). */
static void run_experts(const ts_cpu_ctx *ctx, const moe_plan *p, const moe_work *w, expert_fn fn, int64_t cols) {
    int64_t used = 0, threads = ts_threadpool_size(ctx->pool);
    for (int64_t e = 0; e < p->E; e++) used += w->start[e + 1] > w->start[e];
    if (threads > 1 && used >= threads) {
        experts_job j = {.p = p, .w = w, .fn = fn, .cols = cols, .n_slices = threads};
        ts_parallel_for(ctx->pool, threads, 1, experts_range, &j);
        return;
    }
    for (int64_t e = 0; e < p->E; e++) fn(ctx->pool, p, w, e, 0, cols);
}

/* ---------------------------------------------------------------- run */

static void run_matmul_id(const ts_cpu_ctx *ctx, const moe_plan *p, const moe_work *w) {
    move_job in = {.p = p, .w = w, .src = &p->in, .block = w->rows_in, .len = p->K};
    move_rows(ctx, &in, gather_range);
    run_experts(ctx, p, w, matmul_id_expert, p->N);
    move_job out = {.p = p, .w = w, .block = w->rows_2, .len = p->N};
    move_rows(ctx, &out, scatter_range);
}

static void run_grad_w(const ts_cpu_ctx *ctx, const moe_plan *p, const moe_work *w) {
    move_job a = {.p = p, .w = w, .src = &p->in, .block = w->rows_in, .len = p->N};
    move_job b = {.p = p, .w = w, .src = &p->in2, .block = w->rows_2, .len = p->K};
    move_rows(ctx, &a, gather_range);
    move_rows(ctx, &b, gather_range);
    run_experts(ctx, p, w, grad_w_expert, p->K);
}

typedef void (*moe_run_fn)(const ts_cpu_ctx *ctx, const moe_plan *p, const moe_work *w);

/* Sorts, then runs; an id out of range (or no memory for the scratch) hands dst to the
 * reference kernel, which reports it. */
static ts_status run(const ts_cpu_ctx *ctx, ts_tensor *dst, const moe_plan *p, moe_run_fn fn, ts_cpu_kernel ref) {
    bool temporary;
    void *base = ts_cpu_scratch_acquire(&scratch, work_bytes(p), &temporary);
    if (!base) return ref(ctx, dst);
    moe_work w = work_at(p, base);
    bool sorted = sort_pairs(p, &w);
    if (sorted) fn(ctx, p, &w);
    ts_cpu_scratch_release(&scratch, base, temporary);
    return sorted ? TS_OK : ref(ctx, dst);
}

TS_FAST_KERNEL(matmul_id) {
    moe_plan p;
    return plan_matmul_id(dst, &p) ? run(ctx, dst, &p, run_matmul_id, ts_ref_matmul_id) : ts_ref_matmul_id(ctx, dst);
}

TS_FAST_KERNEL(matmul_id_grad_w) {
    moe_plan p;
    return plan_grad_w(dst, &p) ? run(ctx, dst, &p, run_grad_w, ts_ref_matmul_id_grad_w)
                                : ts_ref_matmul_id_grad_w(ctx, dst);
}

bool ts_fast_moe_applies(const ts_tensor *dst) {
    moe_plan p;
    if (!dst) return false;
    return dst->op == TS_OP_MATMUL_ID ? plan_matmul_id(dst, &p) : plan_grad_w(dst, &p);
}
