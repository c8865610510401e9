/* fast_move.c - the "cpu" backend's concat and get_rows on contiguous storage: whole runs of
 * bytes moved with memcpy instead of the reference's element-by-element walk (which unravels
 * every output index; decoding calls these ops on small tensors every step, where that walk
 * cost as much as the matmuls). The reference moves the bytes of equal dtypes too, so the
 * results are identical. Concat sources may be any view with non-negative strides, moved in
 * blocks as long as their compact trailing dims allow (a slice of half of every row moves half
 * rows). A strided table, dtypes that differ from the output's, sub-byte dtypes, ids out of range and malformed nodes go to the reference
 * kernel, which computes them or reports the error. Nothing is allocated. */
#include <string.h>

#include "backends/cpu/fast_kernels.h"
#include "backends/cpu/ref_common.h"
#include "backends/cpu/ref_kernels.h"

#define MIN_CHUNK_BYTES 65536 /* bytes per thread chunk below which one thread works */

/* Bytes of one element of t, 0 for sub-byte dtypes. */
static size_t byte_size(const ts_tensor *t) {
    int bits = ts_dtype_get_info(t->dtype)->bits;
    return bits % 8 ? 0 : (size_t)bits / 8;
}

/* Host storage of dst's byte-sized dtype. */
static bool movable(const ts_tensor *t, const ts_tensor *dst) {
    return t && t->data && t->dtype == dst->dtype && byte_size(t);
}

/* ---------------------------------------------------------------- concat */

/* One source of a concat: its elements as blocks of `block` elements contiguous in both the
 * source and dst (the source's compact trailing dims, never reaching before the axis), the
 * blocks enumerated over its dims [0, lead) and moved one memcpy each. */
typedef struct {
    char *out;          /* dst at the source's first element (its offset along the axis) */
    const ts_tensor *src, *dst;
    int lead;
    int64_t block;
    size_t bytes;       /* of one element */
} concat_part;

static bool plan_part(const ts_tensor *dst, int k, int64_t at, concat_part *p) {
    const ts_tensor *s = dst->src[k];
    int a = dst->ip[0];
    if (!movable(s, dst) || s->ndim != dst->ndim) return false;
    for (int d = 0; d < s->ndim; d++)
        if (s->stride[d] < 0 || (d != a && s->shape[d] != dst->shape[d])) return false;
    *p = (concat_part){.src = s, .dst = dst, .lead = s->ndim, .block = 1, .bytes = byte_size(dst)};
    while (p->lead > a && (s->shape[p->lead - 1] == 1 || s->stride[p->lead - 1] == p->block))
        p->block *= s->shape[--p->lead];
    p->out = (char *)dst->data + (size_t)(at * dst->stride[a]) * p->bytes;
    return true;
}

static bool plan_concat(const ts_tensor *dst, concat_part parts[TS_MAX_SRC]) {
    int a = dst->ip[0], n = dst->ip[1];
    if (dst->op != TS_OP_CONCAT || n < 1 || n > TS_MAX_SRC || n != dst->n_src || a < 0 || a >= dst->ndim) return false;
    if (!movable(dst, dst) || !ts_is_contiguous(dst)) return false;
    int64_t at = 0;
    for (int k = 0; k < n; k++) {
        if (!plan_part(dst, k, at, &parts[k])) return false;
        at += dst->src[k]->shape[a];
    }
    return at == dst->shape[a];
}

static void concat_range(void *arg, int64_t begin, int64_t end, int tid) {
    const concat_part *p = arg;
    for (int64_t i = begin; i < end; i++) {
        int64_t r = i, from = 0, to = 0;
        for (int d = p->lead - 1; d >= 0; d--) {
            int64_t c = r % p->src->shape[d];
            r /= p->src->shape[d];
            from += c * p->src->stride[d];
            to += c * p->dst->stride[d];
        }
        memcpy(p->out + (size_t)to * p->bytes, (const char *)p->src->data + (size_t)from * p->bytes,
               (size_t)p->block * p->bytes);
    }
}

TS_FAST_KERNEL(concat) {
    concat_part parts[TS_MAX_SRC];
    if (!plan_concat(dst, parts)) return ts_ref_concat(ctx, dst);
    for (int k = 0; k < dst->n_src; k++) {
        if (!parts[k].block) continue; /* an empty source */
        int64_t min_blocks = MIN_CHUNK_BYTES / (int64_t)((size_t)parts[k].block * parts[k].bytes);
        ts_parallel_for(ctx->pool, ts_nelements(dst->src[k]) / parts[k].block, min_blocks > 0 ? min_blocks : 1,
                        concat_range, &parts[k]);
    }
    return TS_OK;
}

/* ---------------------------------------------------------------- get_rows */

typedef struct {
    char *out;
    const char *table;
    const void *ids;
    bool ids64;
    size_t row; /* bytes of one table row */
} rows_job;

static int64_t id_at(const rows_job *j, int64_t i) {
    return j->ids64 ? ((const int64_t *)j->ids)[i] : ((const int32_t *)j->ids)[i];
}

/* Contiguous table and i32/i64 ids, every id in range (else the reference reports it). */
static bool plan_get_rows(const ts_tensor *dst, rows_job *j) {
    if (dst->op != TS_OP_GET_ROWS || dst->n_src != 2) return false;
    const ts_tensor *table = dst->src[0], *ids = dst->src[1];
    if (!movable(dst, dst) || !ts_is_contiguous(dst)) return false;
    if (!movable(table, dst) || !ts_is_contiguous(table) || table->ndim < 1 || !ids || !ids->data || !ts_is_contiguous(ids)) return false;
    if (ids->dtype != TS_I32 && ids->dtype != TS_I64) return false;
    int64_t V = table->shape[0], len = V ? ts_nelements(table) / V : 0;
    if (ts_nelements(dst) != ts_nelements(ids) * len) return false;
    *j = (rows_job){.out = dst->data, .table = table->data, .ids = ids->data, .ids64 = ids->dtype == TS_I64,
                    .row = (size_t)len * byte_size(dst)};
    for (int64_t i = 0, n = ts_nelements(ids); i < n; i++)
        if (id_at(j, i) < 0 || id_at(j, i) >= V) return false;
    return true;
}

static void get_rows_range(void *arg, int64_t begin, int64_t end, int tid) {
    const rows_job *j = arg;
    for (int64_t i = begin; i < end; i++) memcpy(j->out + (size_t)i * j->row, j->table + (size_t)id_at(j, i) * j->row, j->row);
}

TS_FAST_KERNEL(get_rows) {
    rows_job j;
    if (!plan_get_rows(dst, &j)) return ts_ref_get_rows(ctx, dst);
    int64_t min_rows = MIN_CHUNK_BYTES / (int64_t)(j.row ? j.row : 1);
    ts_parallel_for(ctx->pool, ts_nelements(dst->src[1]), min_rows > 0 ? min_rows : 1, get_rows_range, &j);
    return TS_OK;
}

/* ---------------------------------------------------------------- for tests */

bool ts_fast_move_applies(const ts_tensor *dst) {
    concat_part c[TS_MAX_SRC];
    rows_job r;
    if (!dst) return false;
    return dst->op == TS_OP_CONCAT ? plan_concat(dst, c) : plan_get_rows(dst, &r);
}
