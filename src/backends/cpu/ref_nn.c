/* ref_nn.c - reference CPU kernels for the transformer ops: matmul, softmax, rms_norm, rope, the
 * indexing ops (get_rows, topk, gather, scatter_add), cross-entropy, the mixture-of-experts
 * matmul_id, and the backward helpers softmax_back, rms_norm_back, get_rows_back,
 * cross_entropy_back and matmul_id_grad_w. Like ref_elementwise.c they
 * are entries of ts_cpu_reference_kernels (ref_kernels.c) and therefore the oracle every
 * optimized kernel and every other backend is checked against: plain loops, every element read
 * through ref_get and written through ref_set (ref_common.h), arithmetic in double, any input
 * strides (permuted, sliced, stride-0 expanded views). dst is always contiguous.
 *
 * Most kernels work on "rows": the elements of a tensor along one axis with the other
 * coordinates fixed (the last axis for rms_norm, rope, topk and the losses; ip[0] for softmax).
 * Work is split with ts_parallel_for over output rows (matmul: over (batch, row) pairs;
 * get_rows_back: over columns of the table), so each output element is computed by exactly one
 * thread, and every sum runs in a fixed order (ascending index). Results are therefore
 * bit-identical for any thread count.
 *
 * Conventions (documented here because other backends must match them):
 *  - matmul accumulates a[m,k] * b[k,n] in double for k ascending and rounds once; so does
 *    matmul_id per (token, slot) pair; matmul_id_grad_w sums each expert's pairs in ascending
 *    flat pair order (zeros for an expert without pairs).
 *  - softmax subtracts the row max. A row whose inputs (x + mask) are all -inf has no
 *    probability distribution; it yields all zeros (NaN-free, so fully masked attention rows
 *    contribute nothing). A NaN anywhere in a row, or a +inf input, makes the row NaN.
 *  - rms_norm: y = x * r (* w), r = 1 / sqrt(mean(x^2) + eps); an all-zero row with eps = 0
 *    gives 0 * inf = NaN, like PyTorch.
 *  - rope: pair k of the trailing n_rot dims is (x[D-n_rot+2k], x[D-n_rot+2k+1]) = (re, im),
 *    multiplied by e^{i*theta} (e^{-i*theta} when ip[1] is set); the first D - n_rot dims are
 *    copied unchanged.
 *  - topk orders by value descending with NaN above every number (torch.topk), ties (equal
 *    values, +0 == -0, NaN vs NaN) going to the lower index. Selection is O(n*k) per row.
 *  - get_rows and gather move elements without rounding when the dtypes match (byte copy), so
 *    they are exact for every value (integer tables included).
 *  - scatter_add and get_rows_back add into a double accumulator in increasing flat order of
 *    the index tensor and round once per output element, so low-precision outputs do not
 *    accumulate rounding error. scatter_add may run in place (dst sharing base's storage).
 *  - Indices (i32 or i64, read through ts_load_f64) outside their valid range are a
 *    TS_ERR_RANGE error whose message names the op, the index value, its flat position and
 *    the index tensor. All indices are checked before anything is written, so a failing
 *    kernel leaves dst untouched and never reads or writes out of bounds.
 *  - cross_entropy: mean over targets >= 0 of logsumexp(row) - row[target]; negative targets
 *    are ignored; when every target is ignored the loss is 0 (and its gradient is 0).
 *    Per-row losses are summed in row order, independent of the thread split.
 *  - Nibble-packed outputs are written by one thread (two elements share a byte). */
#include <math.h>
#include <stdlib.h>

#include "ref_common.h"
#include "ref_kernels.h"

/* ---------------------------------------------------------------- shared helpers */

static bool is_index_dtype(ts_dtype t) { return t == TS_I32 || t == TS_I64; }

/* Storage offset in t of the element that broadcasts (NumPy: aligned right, size-1 dims
 * stretched, missing leading dims) to coordinates c of a tensor of rank ndim. */
static int64_t bcast_coord_offset(const ts_tensor *t, int ndim, const int64_t c[TS_MAX_DIMS]) {
    int lead = ndim - t->ndim;
    int64_t off = 0;
    for (int d = 0; d < t->ndim; d++)
        if (t->shape[d] != 1) off += c[d + lead] * t->stride[d];
    return off;
}

/* Coordinates of the first element of row r, for rows along `axis` of a tensor shaped like t:
 * c[axis] = 0 and the other coordinates enumerate t's other dims in row-major order. */
static void row_coords(const ts_tensor *t, int axis, int64_t r, int64_t c[TS_MAX_DIMS]) {
    for (int d = t->ndim - 1; d >= 0; d--) {
        if (d == axis) {
            c[d] = 0;
            continue;
        }
        c[d] = r % t->shape[d];
        r /= t->shape[d];
    }
}

/* Number of rows along `axis` of t (elements / length of the axis). */
static int64_t row_count(const ts_tensor *t, int axis) { return ts_nelements(t) / t->shape[axis]; }

/* A strided run of elements of one tensor: element k lives at storage offset off + k * step.
 * t == NULL stands for an absent optional input (a mask or weight) and reads as `absent`. */
typedef struct {
    ts_tensor *t;
    int64_t off, step;
} ref_row;

/* The row of t along `axis` starting at coordinates c (c[axis] = 0). */
static ref_row row_of(ts_tensor *t, int axis, const int64_t c[TS_MAX_DIMS]) {
    ref_row r = {t, ref_coord_offset(t, c), t->stride[axis]};
    return r;
}

/* The row of t (which broadcasts to a tensor of rank ndim) that lines up with the row along
 * `axis` at coordinates c of that tensor; step 0 where t is stretched along the axis. */
static ref_row bcast_row_of(ts_tensor *t, int ndim, int axis, const int64_t c[TS_MAX_DIMS]) {
    ref_row r = {t, 0, 0};
    if (!t) return r;
    r.off = bcast_coord_offset(t, ndim, c);
    int d = axis - (ndim - t->ndim);
    if (d >= 0 && t->shape[d] != 1) r.step = t->stride[d];
    return r;
}

static double row_get(ref_row r, int64_t k) { return ref_get(r.t, r.off + k * r.step); }
static double row_get_or(ref_row r, int64_t k, double absent) { return r.t ? row_get(r, k) : absent; }
static void row_set(ref_row r, int64_t k, double v) { ref_set(r.t, r.off + k * r.step, v); }

/* The preamble of every kernel: `n_required` sources present, host storage everywhere, and a
 * contiguous dst (its flat index is then its storage offset). */
static ts_status kernel_ready(const ts_cpu_ctx *ctx, const ts_tensor *dst, int n_required) {
    if (dst->n_src < n_required) return ts_ref_fail(ctx, TS_ERR_INTERNAL, dst, "missing inputs");
    for (int i = 0; i < n_required; i++)
        if (!dst->src[i]) return ts_ref_fail(ctx, TS_ERR_INTERNAL, dst, "missing inputs");
    ts_status s = ts_ref_need_host_data(ctx, dst);
    if (s != TS_OK) return s;
    if (!ts_is_contiguous(dst)) return ts_ref_fail(ctx, TS_ERR_INTERNAL, dst, "output is not contiguous");
    return TS_OK;
}

/* Source i, or NULL when the op has fewer sources (optional mask / weight). */
static ts_tensor *optional_src(const ts_tensor *dst, int i) { return i < dst->n_src ? dst->src[i] : NULL; }

static ts_status need_index(const ts_cpu_ctx *ctx, const ts_tensor *dst, const ts_tensor *idx) {
    return is_index_dtype(idx->dtype) ? TS_OK : ts_ref_fail(ctx, TS_ERR_DTYPE, dst, "indices must be i32 or i64");
}

/* Checks every element of idx against [0, limit); negative_ok lets values < 0 through (ignored
 * targets). On the first bad value, records "<op>: <what> V at position P outside [0, L)
 * (<idx>)" (P = flat row-major position in idx) and returns TS_ERR_RANGE. Called before any
 * output is written. */
static ts_status check_indices(const ts_cpu_ctx *ctx, const ts_tensor *dst, const ts_tensor *idx, int64_t limit,
                               bool negative_ok, const char *what) {
    int64_t n = ts_nelements(idx);
    for (int64_t i = 0; i < n; i++) {
        double v = ref_get(idx, ref_offset(idx, i));
        if (v < (double)limit && (v >= 0 || negative_ok)) continue;
        char d[160];
        return ts_graph_set_error(ctx->graph, TS_ERR_RANGE, "%s: %s %.0f at position %lld outside [0, %lld) (%s)",
                                  ts_op_name(dst->op), what, v, (long long)i, (long long)limit,
                                  ts_tensor_describe(idx, d, sizeof d));
    }
    return TS_OK;
}

/* Largest element and sum of exp(v - max) of the row x (+ mask when present), in index order:
 * the pieces of a stable softmax / logsumexp. A NaN max propagates (the sum is then NaN too);
 * an all -inf row gives max = -inf and sum = 0. */
static void row_exp_stats(ref_row x, ref_row mask, int64_t n, double *max, double *sum) {
    double m = -INFINITY;
    for (int64_t k = 0; k < n; k++) {
        double v = row_get(x, k) + row_get_or(mask, k, 0.0);
        if (v > m || isnan(v)) m = v;
        if (isnan(m)) break;
    }
    double s = 0;
    if (m != -INFINITY)
        for (int64_t k = 0; k < n; k++) s += exp(row_get(x, k) + row_get_or(mask, k, 0.0) - m);
    *max = m;
    *sum = s;
}

/* One job for the row kernels; each kernel uses the fields it documents. */
typedef struct {
    ts_tensor *dst;
    ts_tensor *src[TS_MAX_SRC]; /* NULL where absent */
    int axis;                   /* rows run along this axis */
    int64_t len;                /* elements per row along the axis */
    int64_t k;                  /* topk: outputs per row; rope: n_rot */
    bool flag;                  /* rope: inverse */
    double p0;                  /* rms_norm(_back): eps; cross_entropy_back: dloss / n_valid */
    double *scratch;            /* per-thread accumulators, scratch_len doubles per thread */
    int64_t scratch_len;
    double *row_values;         /* cross_entropy: one loss per row */
} row_job;

static row_job row_job_for(ts_tensor *dst, int axis, int64_t len) {
    row_job j = {.dst = dst, .axis = axis, .len = len};
    for (int i = 0; i < dst->n_src && i < TS_MAX_SRC; i++) j.src[i] = dst->src[i];
    return j;
}

/* The split of the kernels that write dst row by row (rows along job->axis, job->len elements
 * each): one row per item, enough rows per chunk to touch REF_MIN_CHUNK elements. */
static ts_status run_rows(const ts_cpu_ctx *ctx, row_job *job, ts_range_fn fn) {
    ref_run_parallel(ctx, job->dst, row_count(job->dst, job->axis), ref_items_min_chunk(job->len), fn, job);
    return TS_OK;
}

/* Per-thread accumulators of `len` doubles each; NULL (after recording an error) when out of memory. */
static double *alloc_scratch(const ts_cpu_ctx *ctx, const ts_tensor *dst, int64_t len) {
    size_t n = (size_t)ts_threadpool_size(ctx->pool) * (size_t)(len > 0 ? len : 1);
    double *p = malloc(n * sizeof *p);
    if (!p) ts_ref_fail(ctx, TS_ERR_OOM, dst, "out of memory for accumulators");
    return p;
}

/* ---------------------------------------------------------------- matmul */

typedef struct {
    ts_tensor *a, *b, *c;
    int64_t M, N, K;
    int64_t a_sm, a_sk; /* strides of a along m and k (after the optional transpose) */
    int64_t b_sk, b_sn; /* strides of b along k and n */
} matmul_job;

/* Offset of the matrix of t (rank >= 2) used by the output batch at coordinates bc (nb dims). */
static int64_t batch_offset(const ts_tensor *t, int nb, const int64_t bc[TS_MAX_DIMS]) {
    int tb = t->ndim - 2;
    int64_t off = 0;
    for (int d = 0; d < tb; d++)
        if (t->shape[d] != 1) off += bc[d + nb - tb] * t->stride[d];
    return off;
}

/* One (batch, row) pair per item: c[batch, m, :] = sum_k a[m, k] * b[k, :], k ascending. */
static void matmul_range(void *arg, int64_t begin, int64_t end, int tid) {
    const matmul_job *j = arg;
    int nb = j->c->ndim - 2;
    int64_t bc[TS_MAX_DIMS];
    for (int64_t p = begin; p < end; p++) {
        int64_t batch = p / j->M, m = p % j->M;
        ref_unravel(nb, j->c->shape, batch, bc);
        int64_t a_row = batch_offset(j->a, nb, bc) + m * j->a_sm, b_mat = batch_offset(j->b, nb, bc);
        for (int64_t n = 0; n < j->N; n++) {
            int64_t b_col = b_mat + n * j->b_sn;
            double acc = 0;
            for (int64_t k = 0; k < j->K; k++) acc += ref_get(j->a, a_row + k * j->a_sk) * ref_get(j->b, b_col + k * j->b_sk);
            ref_set(j->c, p * j->N + n, acc);
        }
    }
}

/* Whether the batch dims of t broadcast to the nb batch dims of c. */
static bool batch_broadcasts(const ts_tensor *t, const ts_tensor *c, int nb) {
    int tb = t->ndim - 2;
    if (tb > nb) return false;
    for (int d = 0; d < tb; d++)
        if (t->shape[d] != 1 && t->shape[d] != c->shape[d + nb - tb]) return false;
    return true;
}

TS_REF_KERNEL(matmul) {
    ts_status s = kernel_ready(ctx, dst, 2);
    if (s != TS_OK) return s;
    ts_tensor *a = dst->src[0], *b = dst->src[1];
    if ((s = ref_need_float(ctx, dst, a)) || (s = ref_need_float(ctx, dst, b)) || (s = ref_need_float(ctx, dst, dst)))
        return s;
    if (a->ndim < 2 || b->ndim < 2 || dst->ndim < 2) return ts_ref_fail(ctx, TS_ERR_SHAPE, dst, "operands need rank >= 2");
    bool ta = dst->ip[0] != 0, tb = dst->ip[1] != 0;
    int ra = a->ndim - 2, rb = b->ndim - 2; /* a: [.., ra, ra+1], b likewise */
    matmul_job job = {.a = a, .b = b, .c = dst};
    job.M = a->shape[ra + (ta ? 1 : 0)];
    job.K = a->shape[ra + (ta ? 0 : 1)];
    job.N = b->shape[rb + (tb ? 0 : 1)];
    job.a_sm = a->stride[ra + (ta ? 1 : 0)];
    job.a_sk = a->stride[ra + (ta ? 0 : 1)];
    job.b_sk = b->stride[rb + (tb ? 1 : 0)];
    job.b_sn = b->stride[rb + (tb ? 0 : 1)];
    int nb = dst->ndim - 2;
    if (b->shape[rb + (tb ? 1 : 0)] != job.K || dst->shape[nb] != job.M || dst->shape[nb + 1] != job.N ||
        !batch_broadcasts(a, dst, nb) || !batch_broadcasts(b, dst, nb))
        return ts_ref_fail(ctx, TS_ERR_SHAPE, dst, "operand shapes do not match the output");
    ref_run_parallel(ctx, dst, ts_nelements(dst) / job.N, ref_items_min_chunk(job.N * job.K), matmul_range, &job);
    return TS_OK;
}

/* ---------------------------------------------------------------- softmax */

/* src0 x, src1 optional mask (broadcast to x), rows along j->axis. */
static void softmax_range(void *arg, int64_t begin, int64_t end, int tid) {
    row_job *j = arg;
    int64_t c[TS_MAX_DIMS];
    for (int64_t r = begin; r < end; r++) {
        row_coords(j->dst, j->axis, r, c);
        ref_row x = row_of(j->src[0], j->axis, c), y = row_of(j->dst, j->axis, c);
        ref_row mask = bcast_row_of(j->src[1], j->dst->ndim, j->axis, c);
        double m, sum;
        row_exp_stats(x, mask, j->len, &m, &sum);
        for (int64_t k = 0; k < j->len; k++) {
            /* a fully masked row (m = -inf) has no distribution: zeros, not 0/0 */
            double p = m == -INFINITY ? 0.0 : exp(row_get(x, k) + row_get_or(mask, k, 0.0) - m) / sum;
            row_set(y, k, p);
        }
    }
}

TS_REF_KERNEL(softmax) {
    ts_status s = kernel_ready(ctx, dst, 1);
    if (s != TS_OK) return s;
    ts_tensor *x = dst->src[0], *mask = optional_src(dst, 1);
    if ((s = ref_need_float(ctx, dst, x)) || (s = ref_need_float(ctx, dst, mask)) ||
        (s = ref_need_float(ctx, dst, dst)))
        return s;
    int a = dst->ip[0];
    if (a < 0 || a >= dst->ndim || !ts_same_shape(x, dst) || (mask && !ref_broadcasts_to(mask, dst)))
        return ts_ref_fail(ctx, TS_ERR_SHAPE, dst, "bad axis, input or mask shape");
    row_job job = row_job_for(dst, a, dst->shape[a]); /* src[1]: the mask, NULL when absent */
    return run_rows(ctx, &job, softmax_range);
}

/* ---------------------------------------------------------------- rms_norm */

/* 1 / sqrt(mean(x^2) + eps) of one row. */
static double rms_inverse(ref_row x, int64_t n, double eps) {
    double ss = 0;
    for (int64_t k = 0; k < n; k++) {
        double v = row_get(x, k);
        ss += v * v;
    }
    return 1.0 / sqrt(ss / (double)n + eps);
}

/* The optional weight w [D] of rms_norm(_back) as a row along the last axis (NULL: absent, read
 * through row_get_or(.., 1.0)). */
static ref_row weight_row(ts_tensor *w) {
    ref_row r = {w, 0, w ? w->stride[0] : 0};
    return r;
}

/* src0 x, src1 optional weight [D]; rows along the last axis. */
static void rms_norm_range(void *arg, int64_t begin, int64_t end, int tid) {
    row_job *j = arg;
    int64_t c[TS_MAX_DIMS];
    ref_row wr = weight_row(j->src[1]);
    for (int64_t r = begin; r < end; r++) {
        row_coords(j->dst, j->axis, r, c);
        ref_row x = row_of(j->src[0], j->axis, c), y = row_of(j->dst, j->axis, c);
        double inv = rms_inverse(x, j->len, j->p0);
        for (int64_t k = 0; k < j->len; k++) row_set(y, k, row_get(x, k) * inv * row_get_or(wr, k, 1.0));
    }
}

/* A weight, when present, must be 1-D with the length of the last axis. */
static bool weight_fits(const ts_tensor *w, const ts_tensor *x) {
    return !w || (w->ndim == 1 && w->shape[0] == x->shape[x->ndim - 1]);
}

/* The preamble shared by rms_norm (sources x, optional weight) and rms_norm_back (x, dy,
 * optional weight): the n_data sources before the weight must be present, float and shaped
 * like dst; the weight (src[n_data]), when present, float and weight_fits. On success *job
 * covers the rows along the last axis, with p0 = eps. */
static ts_status rms_norm_ready(const ts_cpu_ctx *ctx, ts_tensor *dst, int n_data, const char *shape_error,
                                row_job *job) {
    ts_status s = kernel_ready(ctx, dst, n_data);
    if (s != TS_OK) return s;
    ts_tensor *x = dst->src[0], *w = optional_src(dst, n_data);
    for (int i = 0; i < n_data; i++)
        if ((s = ref_need_float(ctx, dst, dst->src[i]))) return s;
    if ((s = ref_need_float(ctx, dst, w)) || (s = ref_need_float(ctx, dst, dst))) return s;
    bool ok = dst->ndim >= 1;
    for (int i = 0; ok && i < n_data; i++) ok = ts_same_shape(dst->src[i], dst);
    if (!ok || !weight_fits(w, x)) return ts_ref_fail(ctx, TS_ERR_SHAPE, dst, shape_error);
    int a = dst->ndim - 1;
    *job = row_job_for(dst, a, dst->shape[a]); /* src[n_data]: the weight, NULL when absent */
    job->p0 = dst->fp[0];
    return TS_OK;
}

TS_REF_KERNEL(rms_norm) {
    row_job job;
    ts_status s = rms_norm_ready(ctx, dst, 1, "input or weight shape does not match the output", &job);
    return s != TS_OK ? s : run_rows(ctx, &job, rms_norm_range);
}

/* ---------------------------------------------------------------- rope */

/* src0 x [..., D], src1 angles broadcast to x.shape[:-1] + [n_rot/2]; rows along the last axis.
 * Pair k of the trailing n_rot dims is the complex number (re, im) times e^{+-i theta_k}. */
static void rope_range(void *arg, int64_t begin, int64_t end, int tid) {
    row_job *j = arg;
    int64_t c[TS_MAX_DIMS], n_rot = j->k, first = j->len - n_rot;
    double sign = j->flag ? -1.0 : 1.0;
    for (int64_t r = begin; r < end; r++) {
        row_coords(j->dst, j->axis, r, c);
        ref_row x = row_of(j->src[0], j->axis, c), y = row_of(j->dst, j->axis, c);
        ref_row ang = bcast_row_of(j->src[1], j->dst->ndim, j->axis, c);
        for (int64_t k = 0; k < first; k++) row_set(y, k, row_get(x, k));
        for (int64_t p = 0; p < n_rot / 2; p++) {
            int64_t i = first + 2 * p;
            double re = row_get(x, i), im = row_get(x, i + 1), theta = sign * row_get(ang, p);
            double cs = cos(theta), sn = sin(theta);
            row_set(y, i, re * cs - im * sn);
            row_set(y, i + 1, re * sn + im * cs);
        }
    }
}

/* angles must broadcast to x.shape[:-1] + [n_rot / 2]. */
static bool angles_fit(const ts_tensor *ang, const ts_tensor *x, int64_t n_rot) {
    if (ang->ndim > x->ndim) return false;
    for (int d = 0; d < ang->ndim; d++) {
        int xd = d + x->ndim - ang->ndim;
        int64_t want = xd == x->ndim - 1 ? n_rot / 2 : x->shape[xd];
        if (ang->shape[d] != want && ang->shape[d] != 1) return false;
    }
    return true;
}

TS_REF_KERNEL(rope) {
    ts_status s = kernel_ready(ctx, dst, 2);
    if (s != TS_OK) return s;
    ts_tensor *x = dst->src[0], *ang = dst->src[1];
    if ((s = ref_need_float(ctx, dst, x)) || (s = ref_need_float(ctx, dst, ang)) || (s = ref_need_float(ctx, dst, dst)))
        return s;
    int64_t n_rot = dst->ip[0];
    if (dst->ndim < 1 || !ts_same_shape(x, dst)) return ts_ref_fail(ctx, TS_ERR_SHAPE, dst, "input shape differs from the output");
    int a = dst->ndim - 1;
    if (n_rot < 2 || n_rot % 2 || n_rot > dst->shape[a] || !angles_fit(ang, x, n_rot))
        return ts_ref_fail(ctx, TS_ERR_SHAPE, dst, "bad n_rot or angles shape");
    row_job job = row_job_for(dst, a, dst->shape[a]);
    job.k = n_rot;
    job.flag = dst->ip[1] != 0;
    return run_rows(ctx, &job, rope_range);
}

/* ---------------------------------------------------------------- get_rows */

/* src0 table [V, ...], src1 ids; one id (one output row of j->len elements) per item. */
static void get_rows_range(void *arg, int64_t begin, int64_t end, int tid) {
    row_job *j = arg;
    const ts_tensor *table = j->src[0], *ids = j->src[1];
    for (int64_t i = begin; i < end; i++) {
        int64_t id = (int64_t)ref_get(ids, ref_offset(ids, i)); /* checked to be in [0, V) */
        int64_t row = id * table->stride[0];
        for (int64_t e = 0; e < j->len; e++) ts_ref_move_element(j->dst, i * j->len + e, table, row + ref_inner_offset(table, 1, e));
    }
}

TS_REF_KERNEL(get_rows) {
    ts_status s = kernel_ready(ctx, dst, 2);
    if (s != TS_OK) return s;
    ts_tensor *table = dst->src[0], *ids = dst->src[1];
    if ((s = need_index(ctx, dst, ids))) return s;
    if (table->ndim < 1 || dst->dtype != table->dtype || ref_dtype_bits(table->dtype) < 8)
        return ts_ref_fail(ctx, TS_ERR_DTYPE, dst, "table must be byte-sized with the output's dtype");
    int64_t len = ts_nelements(table) / table->shape[0];
    if (ts_nelements(dst) != ts_nelements(ids) * len) return ts_ref_fail(ctx, TS_ERR_SHAPE, dst, "output is not ids.shape + row shape");
    if ((s = check_indices(ctx, dst, ids, table->shape[0], false, "id"))) return s;
    row_job job = row_job_for(dst, 0, len);
    ref_run_parallel(ctx, dst, ts_nelements(ids), ref_items_min_chunk(len), get_rows_range, &job);
    return TS_OK;
}

/* ---------------------------------------------------------------- topk */

/* Selection by rank: output r is the best element ranking after output r - 1. */
static void topk_row(ref_row x, int64_t n, int64_t k, ts_tensor *dst, int64_t out_off) {
    double prev_v = 0;
    int64_t prev_i = -1;
    for (int64_t r = 0; r < k; r++) {
        double best_v = 0;
        int64_t best_i = -1;
        for (int64_t i = 0; i < n; i++) {
            double v = row_get(x, i);
            if (prev_i >= 0 && !ref_topk_before(prev_v, prev_i, v, i)) continue; /* already output */
            if (best_i < 0 || ref_topk_before(v, i, best_v, best_i)) {
                best_v = v;
                best_i = i;
            }
        }
        ref_set(dst, out_off + r, (double)best_i);
        prev_v = best_v;
        prev_i = best_i;
    }
}

/* src0 x; rows along the last axis, j->k indices per row. */
static void topk_range(void *arg, int64_t begin, int64_t end, int tid) {
    row_job *j = arg;
    int64_t c[TS_MAX_DIMS];
    for (int64_t r = begin; r < end; r++) {
        row_coords(j->src[0], j->axis, r, c);
        topk_row(row_of(j->src[0], j->axis, c), j->len, j->k, j->dst, r * j->k);
    }
}

TS_REF_KERNEL(topk) {
    ts_status s = kernel_ready(ctx, dst, 1);
    if (s != TS_OK) return s;
    ts_tensor *x = dst->src[0];
    if ((s = ref_need_float(ctx, dst, x))) return s;
    if (!is_index_dtype(dst->dtype)) return ts_ref_fail(ctx, TS_ERR_DTYPE, dst, "output must be i32 or i64");
    int a = x->ndim - 1;
    int64_t k = dst->ip[0];
    bool ok = x->ndim >= 1 && dst->ndim == x->ndim && k >= 1 && k <= x->shape[a] && dst->shape[a] == k;
    for (int d = 0; ok && d < a; d++) ok = dst->shape[d] == x->shape[d];
    if (!ok) return ts_ref_fail(ctx, TS_ERR_SHAPE, dst, "output must be x's shape with k on the last axis");
    row_job job = row_job_for(dst, a, x->shape[a]);
    job.k = k;
    ref_run_parallel(ctx, dst, row_count(x, a), ref_items_min_chunk(job.len * k), topk_range, &job);
    return TS_OK;
}

/* ---------------------------------------------------------------- gather */

/* src0 x, src1 idx; one output element per item, dst shaped like idx. */
static void gather_range(void *arg, int64_t begin, int64_t end, int tid) {
    row_job *j = arg;
    const ts_tensor *x = j->src[0], *idx = j->src[1];
    int64_t c[TS_MAX_DIMS];
    for (int64_t i = begin; i < end; i++) {
        ref_unravel(idx->ndim, idx->shape, i, c);
        c[j->axis] = (int64_t)ref_get(idx, ref_coord_offset(idx, c)); /* checked to be in range */
        ts_ref_move_element(j->dst, i, x, ref_coord_offset(x, c));
    }
}

/* idx must have x's rank, no dim larger than x's off the axis (torch.gather / scatter_add). */
static bool index_fits(const ts_tensor *x, const ts_tensor *idx, int axis) {
    if (idx->ndim != x->ndim || axis < 0 || axis >= x->ndim) return false;
    for (int d = 0; d < x->ndim; d++)
        if (d != axis && idx->shape[d] > x->shape[d]) return false;
    return true;
}

TS_REF_KERNEL(gather) {
    ts_status s = kernel_ready(ctx, dst, 2);
    if (s != TS_OK) return s;
    ts_tensor *x = dst->src[0], *idx = dst->src[1];
    int a = dst->ip[0];
    if ((s = need_index(ctx, dst, idx))) return s;
    if (dst->dtype != x->dtype || ref_dtype_bits(x->dtype) < 8) return ts_ref_fail(ctx, TS_ERR_DTYPE, dst, "x must be byte-sized with the output's dtype");
    if (!index_fits(x, idx, a) || !ts_same_shape(dst, idx)) return ts_ref_fail(ctx, TS_ERR_SHAPE, dst, "bad axis or index shape");
    if ((s = check_indices(ctx, dst, idx, x->shape[a], false, "index"))) return s;
    row_job job = row_job_for(dst, a, 0);
    ref_run_parallel(ctx, dst, ts_nelements(dst), REF_MIN_CHUNK, gather_range, &job);
    return TS_OK;
}

/* ---------------------------------------------------------------- scatter_add */

/* src0 base, src1 idx, src2 values. One line of the output along the axis per item: the line
 * of base is loaded into a double accumulator, the matching line of idx (if idx reaches these
 * coordinates) adds its values in increasing position, and the line is stored once. Lines
 * never collide, so this is the sequential increasing-flat-order result for any thread split;
 * a line is read completely before it is written, so dst may be base itself (in place). */
static void scatter_add_range(void *arg, int64_t begin, int64_t end, int tid) {
    row_job *j = arg;
    ts_tensor *base = j->src[0], *idx = j->src[1], *val = j->src[2];
    double *acc = j->scratch + (int64_t)tid * j->scratch_len;
    int a = j->axis, nd = base->ndim;
    int64_t c[TS_MAX_DIMS];
    for (int64_t r = begin; r < end; r++) {
        row_coords(base, a, r, c);
        ref_row in = row_of(base, a, c), out = row_of(j->dst, a, c);
        for (int64_t k = 0; k < j->len; k++) acc[k] = row_get(in, k);
        bool reached = true;
        for (int d = 0; d < nd; d++) reached = reached && (d == a || c[d] < idx->shape[d]);
        if (reached) {
            ref_row ir = row_of(idx, a, c), vr = row_of(val, a, c);
            for (int64_t q = 0; q < idx->shape[a]; q++) acc[(int64_t)row_get(ir, q)] += row_get(vr, q);
        }
        for (int64_t k = 0; k < j->len; k++) row_set(out, k, acc[k]);
    }
}

TS_REF_KERNEL(scatter_add) {
    ts_status s = kernel_ready(ctx, dst, 3);
    if (s != TS_OK) return s;
    ts_tensor *base = dst->src[0], *idx = dst->src[1], *val = dst->src[2];
    int a = dst->ip[0];
    if ((s = need_index(ctx, dst, idx)) || (s = ref_need_float(ctx, dst, base)) ||
        (s = ref_need_float(ctx, dst, val)) || (s = ref_need_float(ctx, dst, dst)))
        return s;
    if (!ts_same_shape(base, dst) || !index_fits(base, idx, a) || !ts_same_shape(idx, val))
        return ts_ref_fail(ctx, TS_ERR_SHAPE, dst, "bad axis, index or values shape");
    /* In place the lines of base and dst must coincide, or one thread's stores could land on
     * input another thread has yet to read. */
    if (base->data == dst->data && !ts_is_contiguous(base))
        return ts_ref_fail(ctx, TS_ERR_INTERNAL, dst, "in place over a non-contiguous base");
    if ((s = check_indices(ctx, dst, idx, base->shape[a], false, "index"))) return s;
    row_job job = row_job_for(dst, a, base->shape[a]);
    job.scratch_len = job.len;
    if (!(job.scratch = alloc_scratch(ctx, dst, job.len))) return TS_ERR_OOM;
    ref_run_parallel(ctx, dst, row_count(base, a), ref_items_min_chunk(job.len + idx->shape[a]), scatter_add_range, &job);
    free(job.scratch);
    return TS_OK;
}

/* ---------------------------------------------------------------- cross_entropy */

/* Checks targets (< V; negative = ignored) and counts the valid ones. */
static ts_status check_targets(const ts_cpu_ctx *ctx, const ts_tensor *dst, const ts_tensor *logits,
                               const ts_tensor *targets, int64_t *n_valid) {
    int64_t V = logits->shape[logits->ndim - 1];
    ts_status s = check_indices(ctx, dst, targets, V, true, "target");
    if (s != TS_OK) return s;
    int64_t n = ts_nelements(targets), valid = 0;
    for (int64_t i = 0; i < n; i++) valid += ref_get(targets, ref_offset(targets, i)) >= 0;
    *n_valid = valid;
    return TS_OK;
}

/* logits and targets must agree: targets = logits.shape[:-1]. */
static bool targets_fit(const ts_tensor *logits, const ts_tensor *targets) {
    bool ok = logits->ndim >= 1 && targets->ndim == logits->ndim - 1;
    for (int d = 0; ok && d < targets->ndim; d++) ok = targets->shape[d] == logits->shape[d];
    return ok;
}

/* src0 logits, src1 targets; row_values[r] = logsumexp(row r) - row r[target] (0 if ignored). */
static void cross_entropy_range(void *arg, int64_t begin, int64_t end, int tid) {
    row_job *j = arg;
    ts_tensor *logits = j->src[0], *targets = j->src[1];
    ref_row none = {NULL, 0, 0};
    int64_t c[TS_MAX_DIMS];
    for (int64_t r = begin; r < end; r++) {
        row_coords(logits, j->axis, r, c);
        double t = ref_get(targets, ref_coord_offset(targets, c)); /* targets has logits' leading dims */
        if (t < 0) {
            j->row_values[r] = 0;
            continue;
        }
        ref_row x = row_of(logits, j->axis, c);
        double m, sum;
        row_exp_stats(x, none, j->len, &m, &sum);
        j->row_values[r] = m + log(sum) - row_get(x, (int64_t)t);
    }
}

TS_REF_KERNEL(cross_entropy) {
    ts_status s = kernel_ready(ctx, dst, 2);
    if (s != TS_OK) return s;
    ts_tensor *logits = dst->src[0], *targets = dst->src[1];
    if ((s = ref_need_float(ctx, dst, logits)) || (s = need_index(ctx, dst, targets)) ||
        (s = ref_need_float(ctx, dst, dst)))
        return s;
    if (!targets_fit(logits, targets) || ts_nelements(dst) != 1)
        return ts_ref_fail(ctx, TS_ERR_SHAPE, dst, "targets must be logits.shape[:-1], output one element");
    int64_t n_valid;
    if ((s = check_targets(ctx, dst, logits, targets, &n_valid))) return s;
    int a = logits->ndim - 1;
    int64_t rows = row_count(logits, a);
    row_job job = row_job_for(dst, a, logits->shape[a]);
    if (!(job.row_values = malloc((size_t)rows * sizeof(double)))) return ts_ref_fail(ctx, TS_ERR_OOM, dst, "out of memory");
    ref_run_parallel(ctx, dst, rows, ref_items_min_chunk(job.len), cross_entropy_range, &job);
    double total = 0; /* summed in row order, whatever the thread split was */
    for (int64_t r = 0; r < rows; r++) total += job.row_values[r];
    free(job.row_values);
    ref_set(dst, 0, n_valid ? total / (double)n_valid : 0.0);
    return TS_OK;
}

/* ---------------------------------------------------------------- softmax_back */

/* src0 y, src1 dy; rows along j->axis: dx = y * (dy - sum(dy * y)). */
static void softmax_back_range(void *arg, int64_t begin, int64_t end, int tid) {
    row_job *j = arg;
    int64_t c[TS_MAX_DIMS];
    for (int64_t r = begin; r < end; r++) {
        row_coords(j->dst, j->axis, r, c);
        ref_row y = row_of(j->src[0], j->axis, c), dy = row_of(j->src[1], j->axis, c), dx = row_of(j->dst, j->axis, c);
        double dot = 0;
        for (int64_t k = 0; k < j->len; k++) dot += row_get(dy, k) * row_get(y, k);
        for (int64_t k = 0; k < j->len; k++) row_set(dx, k, row_get(y, k) * (row_get(dy, k) - dot));
    }
}

TS_REF_KERNEL(softmax_back) {
    ts_status s = kernel_ready(ctx, dst, 2);
    if (s != TS_OK) return s;
    ts_tensor *y = dst->src[0], *dy = dst->src[1];
    if ((s = ref_need_float(ctx, dst, y)) || (s = ref_need_float(ctx, dst, dy)) || (s = ref_need_float(ctx, dst, dst)))
        return s;
    int a = dst->ip[0];
    if (a < 0 || a >= dst->ndim || !ts_same_shape(y, dst) || !ts_same_shape(dy, dst))
        return ts_ref_fail(ctx, TS_ERR_SHAPE, dst, "bad axis, or y / dy shape differs from the output");
    row_job job = row_job_for(dst, a, dst->shape[a]);
    return run_rows(ctx, &job, softmax_back_range);
}

/* ---------------------------------------------------------------- rms_norm_back */

/* src0 x, src1 dy, src2 optional weight; rows along the last axis. With r = rms_inverse and
 * g = dy * w: dx = r * g - x * r^3 * mean(x * g). */
static void rms_norm_back_range(void *arg, int64_t begin, int64_t end, int tid) {
    row_job *j = arg;
    ref_row wr = weight_row(j->src[2]);
    int64_t c[TS_MAX_DIMS];
    for (int64_t r = begin; r < end; r++) {
        row_coords(j->dst, j->axis, r, c);
        ref_row x = row_of(j->src[0], j->axis, c), dy = row_of(j->src[1], j->axis, c), dx = row_of(j->dst, j->axis, c);
        double inv = rms_inverse(x, j->len, j->p0), xg = 0;
        for (int64_t k = 0; k < j->len; k++) xg += row_get(x, k) * row_get(dy, k) * row_get_or(wr, k, 1.0);
        double coef = inv * inv * inv * xg / (double)j->len;
        for (int64_t k = 0; k < j->len; k++) {
            double g = row_get(dy, k) * row_get_or(wr, k, 1.0);
            row_set(dx, k, inv * g - row_get(x, k) * coef);
        }
    }
}

TS_REF_KERNEL(rms_norm_back) {
    row_job job;
    ts_status s = rms_norm_ready(ctx, dst, 2, "x, dy or weight shape does not match the output", &job);
    return s != TS_OK ? s : run_rows(ctx, &job, rms_norm_back_range);
}

/* ---------------------------------------------------------------- get_rows_back */

/* src0 ids, src1 dy (ids.shape + row shape); dst [V, row]. One column e of the table per item:
 * a double accumulator per table row gets dy[i, e] added at ids[i] for i ascending, then the
 * column is stored once. Columns never collide, so any thread split gives the same result. */
static void get_rows_back_range(void *arg, int64_t begin, int64_t end, int tid) {
    row_job *j = arg;
    ts_tensor *ids = j->src[0], *dy = j->src[1];
    int64_t V = j->dst->shape[0], n_ids = ts_nelements(ids), row_len = j->len;
    double *acc = j->scratch + (int64_t)tid * j->scratch_len;
    for (int64_t e = begin; e < end; e++) {
        for (int64_t v = 0; v < V; v++) acc[v] = 0;
        for (int64_t i = 0; i < n_ids; i++) {
            int64_t id = (int64_t)ref_get(ids, ref_offset(ids, i)); /* checked to be in [0, V) */
            acc[id] += ref_get(dy, ref_offset(dy, i * row_len + e));
        }
        for (int64_t v = 0; v < V; v++) ref_set(j->dst, v * row_len + e, acc[v]);
    }
}

TS_REF_KERNEL(get_rows_back) {
    ts_status s = kernel_ready(ctx, dst, 2);
    if (s != TS_OK) return s;
    ts_tensor *ids = dst->src[0], *dy = dst->src[1];
    if ((s = need_index(ctx, dst, ids)) || (s = ref_need_float(ctx, dst, dy)) || (s = ref_need_float(ctx, dst, dst)))
        return s;
    if (dst->ndim < 1) return ts_ref_fail(ctx, TS_ERR_SHAPE, dst, "output needs rank >= 1");
    int64_t V = dst->shape[0], row_len = ts_nelements(dst) / V;
    if (ts_nelements(dy) != ts_nelements(ids) * row_len) return ts_ref_fail(ctx, TS_ERR_SHAPE, dst, "dy is not ids.shape + row shape");
    if ((s = check_indices(ctx, dst, ids, V, false, "id"))) return s;
    row_job job = row_job_for(dst, 0, row_len);
    job.scratch_len = V;
    if (!(job.scratch = alloc_scratch(ctx, dst, V))) return TS_ERR_OOM;
    ref_run_parallel(ctx, dst, row_len, ref_items_min_chunk(V + ts_nelements(ids)), get_rows_back_range, &job);
    free(job.scratch);
    return TS_OK;
}

/* ---------------------------------------------------------------- cross_entropy_back */

/* src0 logits, src1 targets; j->p0 = dloss / n_valid. Valid rows: p0 * (softmax - onehot);
 * ignored rows: 0. */
static void cross_entropy_back_range(void *arg, int64_t begin, int64_t end, int tid) {
    row_job *j = arg;
    ts_tensor *logits = j->src[0], *targets = j->src[1];
    ref_row none = {NULL, 0, 0};
    int64_t c[TS_MAX_DIMS];
    for (int64_t r = begin; r < end; r++) {
        row_coords(logits, j->axis, r, c);
        ref_row x = row_of(logits, j->axis, c), dx = row_of(j->dst, j->axis, c);
        double t = ref_get(targets, ref_coord_offset(targets, c));
        if (t < 0) {
            for (int64_t k = 0; k < j->len; k++) row_set(dx, k, 0.0);
            continue;
        }
        double m, sum;
        row_exp_stats(x, none, j->len, &m, &sum);
        for (int64_t k = 0; k < j->len; k++) {
            double p = exp(row_get(x, k) - m) / sum;
            row_set(dx, k, j->p0 * (p - (k == (int64_t)t ? 1.0 : 0.0)));
        }
    }
}

TS_REF_KERNEL(cross_entropy_back) {
    ts_status s = kernel_ready(ctx, dst, 3);
    if (s != TS_OK) return s;
    ts_tensor *logits = dst->src[0], *targets = dst->src[1], *dloss = dst->src[2];
    if ((s = ref_need_float(ctx, dst, logits)) || (s = need_index(ctx, dst, targets)) ||
        (s = ref_need_float(ctx, dst, dloss)) || (s = ref_need_float(ctx, dst, dst)))
        return s;
    if (!targets_fit(logits, targets) || !ts_same_shape(logits, dst) || ts_nelements(dloss) != 1)
        return ts_ref_fail(ctx, TS_ERR_SHAPE, dst, "targets must be logits.shape[:-1], dloss one element");
    int64_t n_valid;
    if ((s = check_targets(ctx, dst, logits, targets, &n_valid))) return s;
    int a = logits->ndim - 1;
    row_job job = row_job_for(dst, a, logits->shape[a]);
    job.p0 = n_valid ? ref_get(dloss, 0) / (double)n_valid : 0.0;
    return run_rows(ctx, &job, cross_entropy_back_range); /* dst has logits' shape */
}

/* ---------------------------------------------------------------- matmul_id, matmul_id_grad_w */

/* Both ops read per-pair rows: pair p = t * Kk + k of ids [T, Kk] takes row t of a [T, L]
 * operand (shared by the token's slots) or row (t, k) of a [T, Kk, L] one. */
static bool pair_operand_fits(const ts_tensor *t, const ts_tensor *ids, int64_t len) {
    return (t->ndim == 2 || (t->ndim == 3 && t->shape[1] == ids->shape[1])) && t->shape[0] == ids->shape[0] &&
           t->shape[t->ndim - 1] == len;
}

static int64_t pair_row_offset(const ts_tensor *t, int64_t pair, int64_t Kk) {
    int64_t off = (pair / Kk) * t->stride[0];
    return t->ndim == 3 ? off + (pair % Kk) * t->stride[1] : off;
}

typedef struct {
    ts_tensor *dst, *w, *ids;
    ts_tensor *a, *b;        /* matmul_id: a = x; grad_w: the two row operands */
    int64_t Kk, N, K;        /* matmul_id: rows of K in, rows of N out; grad_w: dst [E, N, K] */
    int64_t w_sn, w_sk;      /* matmul_id: strides of w[e] along n and k (after the optional transpose) */
    double *scratch;         /* grad_w: K doubles per thread */
} matmul_id_job;

static int64_t expert_of(const matmul_id_job *j, int64_t pair) {
    return (int64_t)ref_get(j->ids, ref_offset(j->ids, pair)); /* checked to be in [0, E) */
}

/* One pair per item: dst[pair, n] = sum_k w[e, n, k] * x_row[k], k ascending, rounded once. */
static void matmul_id_range(void *arg, int64_t begin, int64_t end, int tid) {
    const matmul_id_job *j = arg;
    int64_t x_sk = j->a->stride[j->a->ndim - 1];
    for (int64_t p = begin; p < end; p++) {
        int64_t w_mat = expert_of(j, p) * j->w->stride[0], x_row = pair_row_offset(j->a, p, j->Kk);
        for (int64_t n = 0; n < j->N; n++) {
            int64_t w_row = w_mat + n * j->w_sn;
            double acc = 0;
            for (int64_t k = 0; k < j->K; k++)
                acc += ref_get(j->w, w_row + k * j->w_sk) * ref_get(j->a, x_row + k * x_sk);
            ref_set(j->dst, p * j->N + n, acc);
        }
    }
}

TS_REF_KERNEL(matmul_id) {
    ts_status s = kernel_ready(ctx, dst, 3);
    if (s != TS_OK) return s;
    ts_tensor *w = dst->src[0], *x = dst->src[1], *ids = dst->src[2];
    if ((s = ref_need_float(ctx, dst, w)) || (s = ref_need_float(ctx, dst, x)) || (s = ref_need_float(ctx, dst, dst)) ||
        (s = need_index(ctx, dst, ids)))
        return s;
    if (w->ndim != 3 || ids->ndim != 2 || dst->ndim != 3) return ts_ref_fail(ctx, TS_ERR_SHAPE, dst, "need w [E, N, K] and ids [T, Kk]");
    bool tw = dst->ip[0] != 0;
    matmul_id_job job = {.dst = dst, .w = w, .ids = ids, .a = x, .Kk = ids->shape[1], .N = w->shape[tw ? 2 : 1],
                         .K = w->shape[tw ? 1 : 2], .w_sn = w->stride[tw ? 2 : 1], .w_sk = w->stride[tw ? 1 : 2]};
    if (!pair_operand_fits(x, ids, job.K) || dst->shape[0] != ids->shape[0] || dst->shape[1] != job.Kk ||
        dst->shape[2] != job.N)
        return ts_ref_fail(ctx, TS_ERR_SHAPE, dst, "operand shapes do not match the output");
    if ((s = check_indices(ctx, dst, ids, w->shape[0], false, "expert id"))) return s;
    ref_run_parallel(ctx, dst, ts_nelements(ids), ref_items_min_chunk(job.N * job.K), matmul_id_range, &job);
    return TS_OK;
}

/* One row (e, n) of dst per item: dst[e, n, :] = sum over the pairs p routed to e, ascending, of
 * a_row(p)[n] * b_row(p)[:], accumulated in double and rounded once (zeros when none is). */
static void matmul_id_grad_w_range(void *arg, int64_t begin, int64_t end, int tid) {
    const matmul_id_job *j = arg;
    double *acc = j->scratch + (int64_t)tid * j->K;
    int64_t n_pairs = ts_nelements(j->ids), a_sn = j->a->stride[j->a->ndim - 1], b_sk = j->b->stride[j->b->ndim - 1];
    for (int64_t r = begin; r < end; r++) {
        int64_t e = r / j->N, n = r % j->N;
        for (int64_t k = 0; k < j->K; k++) acc[k] = 0;
        for (int64_t p = 0; p < n_pairs; p++) {
            if (expert_of(j, p) != e) continue;
            double av = ref_get(j->a, pair_row_offset(j->a, p, j->Kk) + n * a_sn);
            int64_t b_row = pair_row_offset(j->b, p, j->Kk);
            for (int64_t k = 0; k < j->K; k++) acc[k] += av * ref_get(j->b, b_row + k * b_sk);
        }
        for (int64_t k = 0; k < j->K; k++) ref_set(j->dst, r * j->K + k, acc[k]);
    }
}

TS_REF_KERNEL(matmul_id_grad_w) {
    ts_status s = kernel_ready(ctx, dst, 3);
    if (s != TS_OK) return s;
    ts_tensor *a = dst->src[0], *b = dst->src[1], *ids = dst->src[2];
    if ((s = ref_need_float(ctx, dst, a)) || (s = ref_need_float(ctx, dst, b)) || (s = ref_need_float(ctx, dst, dst)) ||
        (s = need_index(ctx, dst, ids)))
        return s;
    if (ids->ndim != 2 || dst->ndim != 3 || dst->shape[0] != dst->ip[0] || dst->ip[0] < 1)
        return ts_ref_fail(ctx, TS_ERR_SHAPE, dst, "need ids [T, Kk] and an output [E, N, K] with E = ip[0]");
    matmul_id_job job = {.dst = dst, .ids = ids, .a = a, .b = b, .Kk = ids->shape[1], .N = dst->shape[1], .K = dst->shape[2]};
    if (!pair_operand_fits(a, ids, job.N) || !pair_operand_fits(b, ids, job.K))
        return ts_ref_fail(ctx, TS_ERR_SHAPE, dst, "operand shapes do not match the output");
    if ((s = check_indices(ctx, dst, ids, dst->shape[0], false, "expert id"))) return s;
    if (!(job.scratch = alloc_scratch(ctx, dst, job.K))) return TS_ERR_OOM;
    ref_run_parallel(ctx, dst, dst->shape[0] * job.N, ref_items_min_chunk(ts_nelements(ids) * (job.K + 1)),
                     matmul_id_grad_w_range, &job);
    free(job.scratch);
    return TS_OK;
}
