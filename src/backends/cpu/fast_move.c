/* fast_move.c - the "cpu" backend's concat, get_rows and gather on contiguous storage: whole
 * runs of bytes moved with memcpy instead of the reference's element-by-element walk (which
 * unravels every output index; decoding calls these ops on small tensors every step, where that
 * walk cost as much as the matmuls). The reference moves the bytes of equal dtypes too, so the
 * results are identical. Concat sources may be any view with non-negative strides, moved in
 * blocks as long as their compact trailing dims allow (a slice of half of every row moves half
 * rows). Gather runs along the last axis only, each row of idx picking elements of the same
 * row of x. A strided table or x, dtypes that differ from the output's, sub-byte dtypes, ids
 * out of range and malformed nodes go to the reference kernel, which computes them or reports
 * the error. Nothing is allocated. */
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

/* get_rows and gather: item i moves `row` bytes from table row (i / group) * group_stride + id(i).
 * get_rows: one group, rows of the table's trailing size; gather along the last axis: a group
 * per row of idx, whose ids pick elements (rows of one element) of the same row of x. */
typedef struct {
    char *out;
    const char *table;
    const void *ids;
    bool ids64;
    size_t row;                  /* bytes of one table row */
    int64_t group, group_stride; /* ids per group; table rows from one group to the next */
} rows_job;

static int64_t id_at(const rows_job *j, int64_t i) {
    return j->ids64 ? ((const int64_t *)j->ids)[i] : ((const int32_t *)j->ids)[i];
}

/* Contiguous i32/i64 ids, every one in [0, limit) (else the reference reports it). */
static bool ids_ok(const ts_tensor *ids, rows_job *j, int64_t limit) {
    if (!ids || !ids->data || !ts_is_contiguous(ids) || (ids->dtype != TS_I32 && ids->dtype != TS_I64)) return false;
    j->ids = ids->data;
    j->ids64 = ids->dtype == TS_I64;
    for (int64_t i = 0, n = ts_nelements(ids); i < n; i++)
        if (id_at(j, i) < 0 || id_at(j, i) >= limit) return false;
    return true;
}

/* Contiguous table, ids in range. */
static bool plan_get_rows(const ts_tensor *dst, rows_job *j) {
    if (dst->op != TS_OP_GET_ROWS || dst->n_src != 2) return false;
    const ts_tensor *table = dst->src[0], *ids = dst->src[1];
    if (!movable(dst, dst) || !ts_is_contiguous(dst)) return false;
    if (!movable(table, dst) || !ts_is_contiguous(table) || table->ndim < 1 || !ids) return false;
    int64_t V = table->shape[0], len = V ? ts_nelements(table) / V : 0, n = ts_nelements(ids);
    if (ts_nelements(dst) != n * len) return false;
    *j = (rows_job){.out = dst->data, .table = table->data, .row = (size_t)len * byte_size(dst),
                    .group = n > 0 ? n : 1};
    return ids_ok(ids, j, V);
}

/* Gather along the last axis of a contiguous x, idx (dst's shape) matching x's other dims (a
 * decode step's top-k scores); the reference moves the same bytes. */
static bool plan_gather(const ts_tensor *dst, rows_job *j) {
    if (dst->op != TS_OP_GATHER || dst->n_src != 2 || dst->ndim < 1 || dst->ip[0] != dst->ndim - 1) return false;
    const ts_tensor *x = dst->src[0], *idx = dst->src[1];
    if (!movable(dst, dst) || !ts_is_contiguous(dst) || !movable(x, dst) || !ts_is_contiguous(x)) return false;
    if (!idx || x->ndim != dst->ndim || !ts_same_shape(idx, dst)) return false;
    int last = dst->ndim - 1;
    for (int d = 0; d < last; d++)
        if (x->shape[d] != dst->shape[d]) return false;
    *j = (rows_job){.out = dst->data, .table = x->data, .row = byte_size(dst),
                    .group = dst->shape[last] > 0 ? dst->shape[last] : 1, .group_stride = x->shape[last]};
    return ids_ok(idx, j, x->shape[last]);
}

/* memcpy with the common element sizes constant, so that single elements move inline. */
static inline void move_bytes(char *to, const char *from, size_t n) {
    switch (n) {
    case 4: memcpy(to, from, 4); break;
    case 2: memcpy(to, from, 2); break;
    case 8: memcpy(to, from, 8); break;
    default: memcpy(to, from, n); break;
    }
}

static void rows_range(void *arg, int64_t begin, int64_t end, int tid) {
    const rows_job *j = arg;
    for (int64_t i = begin; i < end;) { /* a group at a time: one division each */
        int64_t g = i / j->group, stop = (g + 1) * j->group < end ? (g + 1) * j->group : end;
        const char *table = j->table + (size_t)(g * j->group_stride) * j->row;
        for (; i < stop; i++)
            move_bytes(j->out + (size_t)i * j->row, table + (size_t)id_at(j, i) * j->row, j->row);
    }
}

static void run_rows(const ts_cpu_ctx *ctx, const ts_tensor *dst, const rows_job *j) {
    int64_t min_rows = MIN_CHUNK_BYTES / (int64_t)(j->row ? j->row : 1);
    ts_parallel_for(ctx->pool, ts_nelements(dst->src[1]), min_rows > 0 ? min_rows : 1, rows_range, (void *)j);
}

TS_FAST_KERNEL(get_rows) {
    rows_job j;
    if (!plan_get_rows(dst, &j)) return ts_ref_get_rows(ctx, dst);
    run_rows(ctx, dst, &j);
    return TS_OK;
}

TS_FAST_KERNEL(gather) {
    rows_job j;
    if (!plan_gather(dst, &j)) return ts_ref_gather(ctx, dst);
    run_rows(ctx, dst, &j);
    return TS_OK;
}

/* ---------------------------------------------------------------- for tests */

bool ts_fast_move_applies(const ts_tensor *dst) {
    concat_part c[TS_MAX_SRC];
    rows_job r;
    if (!dst) return false;
    if (dst->op == TS_OP_CONCAT) return plan_concat(dst, c);
    return dst->op == TS_OP_GATHER ? plan_gather(dst, &r) : plan_get_rows(dst, &r);
}
