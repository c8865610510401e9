/* ref_common.h - element addressing shared by the reference CPU kernels. The reference kernels
 * read every element through ts_load_f64 and write through ts_store_f64, so one kernel serves
 * every dtype and every stride pattern; they are the oracle, not the fast path. */
#ifndef TS_REF_COMMON_H
#define TS_REF_COMMON_H

#include "graph/graph_internal.h"

/* Storage offset (elements, relative to t->data) of the element with flat row-major index i. */
static inline int64_t ref_offset(const ts_tensor *t, int64_t i) {
    int64_t off = 0;
    for (int d = t->ndim - 1; d >= 0; d--) {
        int64_t s = t->shape[d];
        off += (i % s) * t->stride[d];
        i /= s;
    }
    return off;
}

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

static inline double ref_get(const ts_tensor *t, int64_t off) { return ts_load_f64(t->data, t->dtype, off); }
static inline void ref_set(ts_tensor *t, int64_t off, double v) { ts_store_f64(t->data, t->dtype, off, v); }

#endif
