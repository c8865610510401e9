/* ref_common.h - helpers shared by the reference CPU kernels (ref_elementwise.c, ref_nn.c):
 * element addressing, dtype predicates, the thread split, error reporting and the checks a
 * kernel starts with. The reference kernels read every element through ts_load_f64 and write
 * through ts_store_f64, so one kernel serves every dtype and every stride pattern; they are the
 * oracle, not the fast path.
 *
 * The ref_* helpers are static inline here; the ts_ref_* ones live in ref_common.c (every
 * symbol of the library carries the ts_ prefix). */
#ifndef TS_REF_COMMON_H
#define TS_REF_COMMON_H

#include <math.h>

#include "graph/graph_internal.h"

/* Elements (for row kernels: elements read or written per chunk) below which one thread does
 * all the work. */
#define REF_MIN_CHUNK 4096

/* ---------------------------------------------------------------- dtypes */

static inline int ref_dtype_bits(ts_dtype t) { return ts_dtype_get_info(t)->bits; }
static inline bool ref_dtype_is_float(ts_dtype t) { return ts_dtype_get_info(t)->is_float; }
static inline bool ref_dtype_is_int(ts_dtype t) { return ts_dtype_get_info(t)->is_int; }

/* ---------------------------------------------------------------- topk's order */

/* Whether (va at index ia) ranks before (vb at ib): larger first, NaN above every number,
 * equal values (and NaN vs NaN) to the lower index. A strict total order: one element per rank
 * (the reference topk and the fast one rank by it). */
static inline bool ref_topk_before(double va, int64_t ia, double vb, int64_t ib) {
    bool na = isnan(va), nb = isnan(vb);
    if (na != nb) return na;
    if (!na && va != vb) return va > vb;
    return ia < ib;
}

/* ---------------------------------------------------------------- element addressing */

/* Storage offset (elements, relative to t->data) of flat row-major index i over dims
 * [first_dim, ndim) of t; first_dim > 0 addresses the inner part of a row. */
static inline int64_t ref_inner_offset(const ts_tensor *t, int first_dim, int64_t i) {
    int64_t off = 0;
    for (int d = t->ndim - 1; d >= first_dim; d--) {
        int64_t s = t->shape[d];
        off += (i % s) * t->stride[d];
        i /= s;
    }
    return off;
}

/* Storage offset (elements, relative to t->data) of the element with flat row-major index i. */
static inline int64_t ref_offset(const ts_tensor *t, int64_t i) { return ref_inner_offset(t, 0, i); }

/* Offset in src of the element that broadcasts to flat index i of a tensor shaped `out`. */
static inline int64_t ref_bcast_offset(const ts_tensor *src, const ts_tensor *out, int64_t i) {
    int64_t off = 0;
    for (int d = out->ndim - 1; d >= 0; d--) {
        int64_t s = out->shape[d], c = i % s;
        i /= s;
        int sd = d - (out->ndim - src->ndim);
        if (sd >= 0 && src->shape[sd] != 1) off += c * src->stride[sd];
    }
    return off;
}

/* Row-major coordinates of flat index i in a tensor shaped (ndim, shape). */
static inline void ref_unravel(int ndim, const int64_t *shape, int64_t i, int64_t c[TS_MAX_DIMS]) {
    for (int d = ndim - 1; d >= 0; d--) {
        c[d] = i % shape[d];
        i /= shape[d];
    }
}

/* Storage offset of the element at coordinates c (one per dimension of t). */
static inline int64_t ref_coord_offset(const ts_tensor *t, const int64_t c[TS_MAX_DIMS]) {
    int64_t off = 0;
    for (int d = 0; d < t->ndim; d++) off += c[d] * t->stride[d];
    return off;
}

static inline double ref_get(const ts_tensor *t, int64_t off) { return ts_load_f64(t->data, t->dtype, off); }
static inline void ref_set(ts_tensor *t, int64_t off, double v) { ts_store_f64(t->data, t->dtype, off, v); }

/* Moves one element from src to dst. Identical byte-sized dtypes copy the bytes, so the move is
 * exact for every value (i64 beyond 2^53, NaN payloads); other pairs convert through double. */
void ts_ref_move_element(ts_tensor *dst, int64_t dst_off, const ts_tensor *src, int64_t src_off);

/* ---------------------------------------------------------------- shapes */

/* True when t broadcasts to the shape of `to` (NumPy rules: aligned right, size-1 dims stretched,
 * missing leading dims). */
static inline bool ref_broadcasts_to(const ts_tensor *t, const ts_tensor *to) {
    if (t->ndim > to->ndim) return false;
    for (int d = 0; d < t->ndim; d++) {
        int64_t want = to->shape[d + to->ndim - t->ndim];
        if (t->shape[d] != want && t->shape[d] != 1) return false;
    }
    return true;
}

/* ---------------------------------------------------------------- thread split */

/* Items (rows, ids, columns, ...) per thread chunk so that a chunk touches at least
 * REF_MIN_CHUNK elements when each item touches work_per_item of them. */
static inline int64_t ref_items_min_chunk(int64_t work_per_item) {
    int64_t items = REF_MIN_CHUNK / (work_per_item > 0 ? work_per_item : 1);
    return items > 0 ? items : 1;
}

/* Runs fn over [0, n) on the backend's pool. A nibble-packed dst runs on one thread: two of
 * its elements share a byte, and concurrent read-modify-writes of that byte would race. */
static inline void ref_run_parallel(const ts_cpu_ctx *ctx, const ts_tensor *dst, int64_t n, int64_t min_chunk,
                                    ts_range_fn fn, void *job) {
    if (ref_dtype_bits(dst->dtype) < 8) min_chunk = n;
    ts_parallel_for(ctx->pool, n, min_chunk, fn, job);
}

/* ---------------------------------------------------------------- errors and checks */

/* Records "<op> (reference kernel): <t>: <why>" on the graph and returns s. */
ts_status ts_ref_fail(const ts_cpu_ctx *ctx, ts_status s, const ts_tensor *t, const char *why);

/* dst and every present source must have host storage (the executor guarantees it; tests that
 * call kernels directly may not). TS_ERR_STATE otherwise. */
ts_status ts_ref_need_host_data(const ts_cpu_ctx *ctx, const ts_tensor *dst);

/* For ops defined only on real numbers: t (an input of dst, or dst itself) must be absent
 * (NULL, an optional input) or have a float dtype. TS_ERR_DTYPE, recorded against dst,
 * otherwise. */
static inline ts_status ref_need_float(const ts_cpu_ctx *ctx, const ts_tensor *dst, const ts_tensor *t) {
    if (!t || ref_dtype_is_float(t->dtype)) return TS_OK;
    return ts_ref_fail(ctx, TS_ERR_DTYPE, dst, "needs float input and output dtypes");
}

#endif
