/* fast_reduce.c - the "cpu" backend's f32 reductions and copies: sum_to (the sums autodiff
 * emits to undo a broadcast: over leading, trailing or middle dims), sum / mean / max over one
 * axis, and copy (a strided view made contiguous, with the casts f32 <-> f16 / bf16 / f64 in
 * loops of their own and between other byte-sized dtypes as the reference moves elements).
 *
 * Every reduction is planned as one shape: x contiguous, seen as [s0, k0, s1, k1, s2] (adjacent
 * dims of one kind merged, size-1 dims dropped), out[k0, k1] = reduce over s0, s1, s2 of
 * x[s0, k0, s1, k1, s2]. That covers every sum_to whose summed and kept dims alternate at most
 * four times (all of them for rank <= 4 but S K S K S) and every single-axis reduction. A work
 * item is one k0 and a tile of k1 columns accumulated in double on the stack, over the summed
 * dims in row-major order - the reference's order, so sums round once to the same float - and
 * the tiles are split over threads in static chunks: bit-identical for any thread count (and
 * with the AVX2 build of the loops, TS_RANGE_FNS: the same operations). Anything else (other
 * dtypes, strided x) goes to the reference kernel, which also reports malformed nodes. Nothing
 * is allocated. */
#include <math.h>
#include <string.h>

#include "backends/cpu/fast_kernels.h"
#include "backends/cpu/fast_vmath.h"
#include "backends/cpu/ref_common.h"
#include "backends/cpu/ref_kernels.h"

#define TILE 256               /* k1 columns per work item (a 2 KiB double accumulator) */
#define MIN_CHUNK_ELEMS 32768  /* input elements per thread chunk below which one thread works */

static bool is_f32_on_host(const ts_tensor *t) { return t && t->dtype == TS_F32 && t->data; }

/* ---------------------------------------------------------------- reductions */

typedef struct {
    float *out;
    const float *x;
    ts_op op;                       /* SUM (also sum_to), MEAN or MAX */
    int64_t s0, k0, s1, k1, s2;     /* x as [s0, k0, s1, k1, s2] */
    int64_t tiles;                  /* ceil(k1 / TILE) */
} reduce_job;

/* Accumulates one [s2] run per column c of the tile into acc, in order. */
TS_ALWAYS_INLINE void accumulate(double *acc, const float *row, int64_t c0, int64_t width, int64_t s2, ts_op op) {
    if (op == TS_OP_MAX) {
        for (int64_t c = 0; c < width; c++)
            for (int64_t q = 0; q < s2; q++) {
                double v = row[(c0 + c) * s2 + q];
                if (v > acc[c] || isnan(v)) acc[c] = v;
            }
    } else if (s2 == 1) {
        for (int64_t c = 0; c < width; c++) acc[c] += row[c0 + c];
    } else {
        for (int64_t c = 0; c < width; c++)
            for (int64_t q = 0; q < s2; q++) acc[c] += row[(c0 + c) * s2 + q];
    }
}

TS_ALWAYS_INLINE void reduce_items(const reduce_job *j, int64_t begin, int64_t end) {
    double acc[TILE];
    int64_t row_len = j->k1 * j->s2, terms = j->s0 * j->s1 * j->s2;
    for (int64_t item = begin; item < end; item++) {
        int64_t a = item / j->tiles, c0 = (item % j->tiles) * TILE;
        int64_t width = j->k1 - c0 < TILE ? j->k1 - c0 : TILE;
        for (int64_t c = 0; c < width; c++) acc[c] = j->op == TS_OP_MAX ? -INFINITY : 0.0;
        for (int64_t p = 0; p < j->s0; p++)
            for (int64_t q = 0; q < j->s1; q++) {
                const float *row = j->x + ((p * j->k0 + a) * j->s1 + q) * row_len;
                accumulate(acc, row, c0, width, j->s2, j->op);
            }
        float *out = j->out + a * j->k1 + c0;
        for (int64_t c = 0; c < width; c++) out[c] = (float)(j->op == TS_OP_MEAN ? acc[c] / (double)terms : acc[c]);
    }
}

TS_RANGE_FNS(reduce_range, reduce_items)

/* Fits the dims of x (summed[d] says which are reduced) into [s0, k0, s1, k1, s2], aligned on
 * the right; false when they alternate too often. */
static bool fit_groups(const ts_tensor *x, const bool *summed, reduce_job *j) {
    int64_t size[TS_MAX_DIMS];
    bool kind[TS_MAX_DIMS];
    int m = 0;
    for (int d = 0; d < x->ndim; d++) {
        if (x->shape[d] == 1) continue;
        if (m > 0 && kind[m - 1] == summed[d]) {
            size[m - 1] *= x->shape[d];
        } else {
            size[m] = x->shape[d];
            kind[m++] = summed[d];
        }
    }
    int64_t *slot[5] = {&j->s0, &j->k0, &j->s1, &j->k1, &j->s2};
    for (int s = 0; s < 5; s++) *slot[s] = 1;
    int s = (m > 0 && !kind[m - 1]) ? 3 : 4; /* the last group lands on k1 (kept) or s2 (summed) */
    for (int g = m - 1; g >= 0; g--, s--) {
        if (s < 0) return false;
        *slot[s] = size[g];
    }
    j->tiles = (j->k1 + TILE - 1) / TILE;
    return true;
}

/* Common preconditions: f32 x (contiguous) and dst on the host. */
static bool reduce_operands_ok(const ts_tensor *dst) {
    return dst->n_src == 1 && is_f32_on_host(dst) && ts_is_contiguous(dst) && is_f32_on_host(dst->src[0]) &&
           ts_is_contiguous(dst->src[0]);
}

/* sum_to: x's dim d is summed when dst (aligned right) lacks it or has 1 where x has more. */
static bool plan_sum_to(const ts_tensor *dst, reduce_job *j) {
    if (dst->op != TS_OP_SUM_TO || !reduce_operands_ok(dst)) return false;
    const ts_tensor *x = dst->src[0];
    int lead = x->ndim - dst->ndim;
    if (lead < 0) return false;
    bool summed[TS_MAX_DIMS];
    for (int d = 0; d < x->ndim; d++) {
        int64_t want = d < lead ? 1 : dst->shape[d - lead];
        if (want != x->shape[d] && want != 1) return false; /* not a broadcast: the reference reports it */
        summed[d] = want != x->shape[d] || d < lead;
    }
    *j = (reduce_job){.out = dst->data, .x = x->data, .op = TS_OP_SUM};
    return fit_groups(x, summed, j);
}

/* sum / mean / max over axis ip[0], dst being x with that axis of size 1. */
static bool plan_reduce(const ts_tensor *dst, reduce_job *j) {
    bool reduction = dst->op == TS_OP_SUM || dst->op == TS_OP_MEAN || dst->op == TS_OP_MAX;
    if (!reduction || !reduce_operands_ok(dst)) return false;
    const ts_tensor *x = dst->src[0];
    int a = dst->ip[0];
    if (a < 0 || a >= x->ndim || dst->ndim != x->ndim) return false;
    bool summed[TS_MAX_DIMS];
    for (int d = 0; d < x->ndim; d++) {
        if (dst->shape[d] != (d == a ? 1 : x->shape[d])) return false;
        summed[d] = d == a;
    }
    *j = (reduce_job){.out = dst->data, .x = x->data, .op = dst->op};
    return fit_groups(x, summed, j);
}

static ts_status run_reduce(const ts_cpu_ctx *ctx, const reduce_job *j) {
    int64_t per_item = j->s0 * j->s1 * j->s2 * (j->k1 < TILE ? j->k1 : TILE);
    int64_t min_items = MIN_CHUNK_ELEMS / (per_item > 0 ? per_item : 1);
    ts_parallel_for(ctx->pool, j->k0 * j->tiles, min_items > 0 ? min_items : 1, TS_PICK_RANGE(reduce_range),
                    (void *)j);
    return TS_OK;
}

TS_FAST_KERNEL(sum_to) {
    reduce_job j;
    return plan_sum_to(dst, &j) ? run_reduce(ctx, &j) : ts_ref_sum_to(ctx, dst);
}

TS_FAST_KERNEL(reduce) {
    reduce_job j;
    return plan_reduce(dst, &j) ? run_reduce(ctx, &j) : ts_ref_reduce(ctx, dst);
}

/* ---------------------------------------------------------------- copy */

/* The source as up to 4 dims (size-1 dims dropped, dims that are contiguous with each other
 * merged), the last one walked by the inner loop with its stride. */
typedef struct {
    void *out;
    const void *src;
    ts_dtype from, to;
    int ndim;
    int64_t shape[TS_MAX_DIMS], stride[TS_MAX_DIMS];
    int64_t rows, len; /* len = shape[ndim - 1]; rows = elements / len */
} copy_job;

/* The pairs with loops of their own; other byte-sized pairs move as the reference moves them. */
static bool convertible(ts_dtype from, ts_dtype to) {
    bool narrow_or_wide = to == TS_F16 || to == TS_BF16 || to == TS_F64;
    return (from == TS_F32 && (to == TS_F32 || narrow_or_wide)) || (to == TS_F32 && (from == TS_F16 || from == TS_BF16 || from == TS_F64));
}

static bool byte_sized(ts_dtype t) { return ts_dtype_get_info(t)->bits % 8 == 0; }

/* n elements, src `step` apart, converted into contiguous out. */
static void convert_run(void *out, ts_dtype to, const void *src, ts_dtype from, int64_t step, int64_t n) {
    if (!convertible(from, to)) { /* as ts_ref_move_element (e.g. a decode step's ids to f32 and back) */
        size_t size = (size_t)ts_dtype_get_info(to)->bits / 8;
        if (from == to && step == 1)
            memcpy(out, src, (size_t)n * size);
        else if (from == to)
            for (int64_t k = 0; k < n; k++) memcpy((char *)out + k * size, (const char *)src + k * step * size, size);
        else
            for (int64_t k = 0; k < n; k++) ts_store_f64(out, to, k, ts_load_f64(src, from, k * step));
        return;
    }
    if (from == TS_F32) {
        const float *s = src;
        switch (to) {
        case TS_F32:
            if (step == 1) memcpy(out, s, (size_t)n * sizeof *s);
            else for (int64_t k = 0; k < n; k++) ((float *)out)[k] = s[k * step];
            break;
        case TS_F64: for (int64_t k = 0; k < n; k++) ((double *)out)[k] = s[k * step]; break;
        case TS_F16: for (int64_t k = 0; k < n; k++) ((uint16_t *)out)[k] = ts_f32_to_f16(s[k * step]); break;
        case TS_BF16: for (int64_t k = 0; k < n; k++) ((uint16_t *)out)[k] = ts_f32_to_bf16(s[k * step]); break;
        default: break; /* unreachable: convertible() */
        }
        return;
    }
    float *o = out;
    switch (from) {
    case TS_F64: for (int64_t k = 0; k < n; k++) o[k] = (float)((const double *)src)[k * step]; break;
    case TS_F16: for (int64_t k = 0; k < n; k++) o[k] = ts_f16_to_f32(((const uint16_t *)src)[k * step]); break;
    case TS_BF16: for (int64_t k = 0; k < n; k++) o[k] = ts_bf16_to_f32(((const uint16_t *)src)[k * step]); break;
    default: break; /* unreachable: convertible() */
    }
}

static void copy_range(void *arg, int64_t begin, int64_t end, int tid) {
    const copy_job *j = arg;
    size_t out_size = (size_t)ts_dtype_get_info(j->to)->bits / 8, in_size = (size_t)ts_dtype_get_info(j->from)->bits / 8;
    int64_t c[TS_MAX_DIMS];
    for (int64_t r = begin; r < end; r++) {
        ref_unravel(j->ndim - 1, j->shape, r, c);
        int64_t off = 0;
        for (int d = 0; d < j->ndim - 1; d++) off += c[d] * j->stride[d];
        convert_run((char *)j->out + (size_t)(r * j->len) * out_size, j->to, (const char *)j->src + (size_t)off * in_size,
                    j->from, j->stride[j->ndim - 1], j->len);
    }
}

static bool plan_copy(const ts_tensor *dst, copy_job *j) {
    if (dst->op != TS_OP_COPY || dst->n_src != 1 || !dst->data || !ts_is_contiguous(dst)) return false;
    const ts_tensor *x = dst->src[0];
    if (!x || !x->data || !byte_sized(x->dtype) || !byte_sized(dst->dtype) || ts_nelements(x) != ts_nelements(dst))
        return false;
    *j = (copy_job){.out = dst->data, .src = x->data, .from = x->dtype, .to = dst->dtype};
    for (int d = 0; d < x->ndim; d++) {
        if (x->shape[d] == 1) continue;
        if (x->stride[d] < 0) return false;
        int m = j->ndim;
        if (m > 0 && j->stride[m - 1] == x->stride[d] * x->shape[d]) { /* merges with the dim before */
            j->shape[m - 1] *= x->shape[d];
            j->stride[m - 1] = x->stride[d];
        } else {
            j->shape[m] = x->shape[d];
            j->stride[m] = x->stride[d];
            j->ndim++;
        }
    }
    if (j->ndim == 0) { /* a single element */
        j->shape[0] = 1;
        j->stride[0] = 1;
        j->ndim = 1;
    }
    j->len = j->shape[j->ndim - 1];
    j->rows = ts_nelements(dst) / j->len;
    return true;
}

TS_FAST_KERNEL(copy) {
    copy_job j;
    if (!plan_copy(dst, &j)) return ts_ref_copy(ctx, dst);
    int64_t min_rows = MIN_CHUNK_ELEMS / j.len;
    ts_parallel_for(ctx->pool, j.rows, min_rows > 0 ? min_rows : 1, copy_range, &j);
    return TS_OK;
}

/* ---------------------------------------------------------------- for tests */

bool ts_fast_reduce_applies(const ts_tensor *dst) {
    reduce_job r;
    copy_job c;
    if (!dst) return false;
    switch (dst->op) {
    case TS_OP_SUM_TO: return plan_sum_to(dst, &r);
    case TS_OP_SUM: case TS_OP_MEAN: case TS_OP_MAX: return plan_reduce(dst, &r);
    case TS_OP_COPY: return plan_copy(dst, &c);
    default: return false;
    }
}
