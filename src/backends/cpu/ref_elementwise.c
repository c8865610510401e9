/* ref_elementwise.c - reference CPU kernels for creation and movement (fill, copy, concat),
 * elementwise binary and unary ops, reductions over one axis, sum_to, and the backward helpers
 * of the elementwise ops and of max. They are entries of ts_cpu_reference_kernels
 * (ref_kernels.c) and therefore the oracle every optimized kernel and every other backend is
 * checked against: plain loops, every element read through ref_get and written through ref_set
 * (ref_common.h), arithmetic in double, any input strides (permuted, sliced, stride-0 expanded
 * views). dst is always contiguous, so its flat index is its offset.
 *
 * Work is split over output elements (over output rows for reductions) with ts_parallel_for;
 * each output element is computed by exactly one thread in a fixed order, so results do not
 * depend on the thread count. Ops that may run in place (dst sharing storage with src0 or
 * src1, see ts_op_inplace_ok) read an element's inputs before writing that same element and
 * touch no other element.
 *
 * Conventions (documented here because other backends must match them):
 *  - log(0) = -inf, log(x<0) = NaN, sqrt(x<0) = NaN (IEEE, as C's libm gives them).
 *  - sigmoid uses exp(-|x|) and softplus(x) = max(x,0) + log1p(exp(-|x|)): no overflow for
 *    any finite x. silu(x) = x * sigmoid(x), so silu(-inf) = -inf * 0 = NaN.
 *  - relu and clamp pass NaN through; max propagates NaN (like torch.amax).
 *  - clamp_back passes the gradient where min <= x <= max (PyTorch's convention: at exactly
 *    a bound the gradient flows), 0 elsewhere and 0 for NaN x.
 *  - relu_back passes the gradient where x > 0 (0 at x == 0 and for NaN).
 *  - swiglu = silu(a') b' with a' = min(a, limit), b' = clamp(b, -limit, limit) (limit > 0);
 *    swiglu_back's clamps pass the gradient as clamp_back does.
 *  - max_back gives the whole gradient of a row to the first element equal to the row's max
 *    (a NaN max matches the first NaN); the other elements of the row get 0.
 *  - copy/concat between identical byte-sized dtypes move the element's bytes, so they are
 *    exact for every value (i64 beyond 2^53, NaN payloads); other pairs convert via double.
 *  - binary ops on integer dtypes compute in double (exact below 2^53); integer division
 *    truncates toward zero like C, and an integer division by zero is a TS_ERR_RANGE error.
 *  - nibble-packed outputs (f4_e2m1) are written by one thread, because two elements share
 *    a byte. */
#include <math.h>

#include "ref_common.h"
#include "ref_kernels.h"

/* ---------------------------------------------------------------- shared helpers */

/* Everything a worker needs; each kernel uses the fields it documents. */
typedef struct {
    ts_tensor *dst;
    const ts_tensor *src[TS_MAX_SRC];
    int n_src;
    ts_op op;
    int axis;
    double p0, p1; /* fp[0], fp[1] */
} ref_job;

static ref_job job_for(ts_tensor *dst) {
    ref_job j = {.dst = dst, .n_src = dst->n_src, .op = dst->op, .axis = dst->ip[0],
                 .p0 = dst->fp[0], .p1 = dst->fp[1]};
    for (int i = 0; i < dst->n_src && i < TS_MAX_SRC; i++) j.src[i] = dst->src[i];
    return j;
}

/* The split of the per-element kernels: fn over every element of dst, REF_MIN_CHUNK at least
 * per thread. */
static ts_status run_per_element(const ts_cpu_ctx *ctx, ts_tensor *dst, ts_range_fn fn) {
    ref_job job = job_for(dst);
    ref_run_parallel(ctx, dst, ts_nelements(dst), REF_MIN_CHUNK, fn, &job);
    return TS_OK;
}

/* Host storage everywhere, and dst and every source float: the preamble of a float kernel. */
static ts_status float_kernel_ready(const ts_cpu_ctx *ctx, const ts_tensor *dst) {
    ts_status s = ts_ref_need_host_data(ctx, dst);
    if (s == TS_OK) s = ref_need_float(ctx, dst, dst);
    for (int i = 0; s == TS_OK && i < dst->n_src; i++) s = ref_need_float(ctx, dst, dst->src[i]);
    return s;
}

/* ---------------------------------------------------------------- fill */

static void fill_range(void *arg, int64_t begin, int64_t end, int tid) {
    ref_job *j = arg;
    for (int64_t i = begin; i < end; i++) ref_set(j->dst, i, j->p0);
}

TS_REF_KERNEL(fill) {
    ts_status s = ts_ref_need_host_data(ctx, dst);
    if (s != TS_OK) return s;
    return run_per_element(ctx, dst, fill_range);
}

/* ---------------------------------------------------------------- copy (and cast) */

static void copy_range(void *arg, int64_t begin, int64_t end, int tid) {
    ref_job *j = arg;
    for (int64_t i = begin; i < end; i++) ts_ref_move_element(j->dst, i, j->src[0], ref_offset(j->src[0], i));
}

TS_REF_KERNEL(copy) {
    ts_status s = ts_ref_need_host_data(ctx, dst);
    if (s != TS_OK) return s;
    if (dst->n_src < 1 || ts_nelements(dst->src[0]) != ts_nelements(dst))
        return ts_ref_fail(ctx, TS_ERR_SHAPE, dst, "source and output sizes differ");
    return run_per_element(ctx, dst, copy_range);
}

/* ---------------------------------------------------------------- concat */

/* Each output element finds its source by walking the sources' extents along the axis. */
static void concat_range(void *arg, int64_t begin, int64_t end, int tid) {
    ref_job *j = arg;
    int a = j->axis;
    int64_t c[TS_MAX_DIMS];
    for (int64_t i = begin; i < end; i++) {
        ref_unravel(j->dst->ndim, j->dst->shape, i, c);
        int k = 0;
        while (k < j->n_src - 1 && c[a] >= j->src[k]->shape[a]) c[a] -= j->src[k++]->shape[a];
        ts_ref_move_element(j->dst, i, j->src[k], ref_coord_offset(j->src[k], c));
    }
}

TS_REF_KERNEL(concat) {
    ts_status s = ts_ref_need_host_data(ctx, dst);
    if (s != TS_OK) return s;
    int a = dst->ip[0], n = dst->ip[1];
    if (n < 1 || n > TS_MAX_SRC || n != dst->n_src || a < 0 || a >= dst->ndim)
        return ts_ref_fail(ctx, TS_ERR_INTERNAL, dst, "bad axis or source count");
    int64_t total = 0;
    for (int i = 0; i < n; i++) total += dst->src[i]->shape[a];
    if (total != dst->shape[a]) return ts_ref_fail(ctx, TS_ERR_SHAPE, dst, "sources do not add up to the output");
    return run_per_element(ctx, dst, concat_range);
}

/* ---------------------------------------------------------------- binary */

static double apply_binary(ts_op op, double a, double b, bool is_int) {
    switch (op) {
    case TS_OP_ADD: return a + b;
    case TS_OP_SUB: return a - b;
    case TS_OP_MUL: return a * b;
    case TS_OP_DIV: return is_int ? trunc(a / b) : a / b;
    default: return NAN; /* unreachable: the kernel checks op first */
    }
}

static void binary_range(void *arg, int64_t begin, int64_t end, int tid) {
    ref_job *j = arg;
    const ts_tensor *a = j->src[0], *b = j->src[1];
    bool is_int = ref_dtype_is_int(j->dst->dtype);
    for (int64_t i = begin; i < end; i++) {
        double va = ref_get(a, ref_bcast_offset(a, j->dst, i));
        double vb = ref_get(b, ref_bcast_offset(b, j->dst, i));
        ref_set(j->dst, i, apply_binary(j->op, va, vb, is_int));
    }
}

/* Integer division by zero has no value to store; report it before writing anything. */
static bool has_zero(const ts_tensor *t) {
    int64_t n = ts_nelements(t);
    for (int64_t i = 0; i < n; i++)
        if (ref_get(t, ref_offset(t, i)) == 0) return true;
    return false;
}

TS_REF_KERNEL(binary) {
    ts_status s = ts_ref_need_host_data(ctx, dst);
    if (s != TS_OK) return s;
    if (dst->op != TS_OP_ADD && dst->op != TS_OP_SUB && dst->op != TS_OP_MUL && dst->op != TS_OP_DIV)
        return ts_ref_fail(ctx, TS_ERR_INTERNAL, dst, "not a binary op");
    if (dst->n_src != 2) return ts_ref_fail(ctx, TS_ERR_INTERNAL, dst, "binary op needs two sources");
    if (dst->op == TS_OP_DIV && ref_dtype_is_int(dst->dtype) && has_zero(dst->src[1]))
        return ts_ref_fail(ctx, TS_ERR_RANGE, dst, "integer division by zero");
    return run_per_element(ctx, dst, binary_range);
}

/* ---------------------------------------------------------------- unary */

/* 1 / (1 + e^-x) through e^-|x|, which never overflows; NaN stays NaN. */
static double sigmoid(double x) {
    double z = exp(-fabs(x));
    return x >= 0 ? 1.0 / (1.0 + z) : z / (1.0 + z);
}

/* log(1 + e^x) = max(x, 0) + log1p(e^-|x|); written without fmax so NaN stays NaN. */
static double softplus(double x) {
    return (x > 0 ? x : 0.0) + log1p(exp(-fabs(x)));
}

static double apply_unary(ts_op op, double x, double p0, double p1) {
    switch (op) {
    case TS_OP_SCALE: return x * p0;
    case TS_OP_EXP: return exp(x);
    case TS_OP_LOG: return log(x);
    case TS_OP_SQRT: return sqrt(x);
    case TS_OP_SIGMOID: return sigmoid(x);
    case TS_OP_SOFTPLUS: return softplus(x);
    case TS_OP_SILU: return x * sigmoid(x);
    case TS_OP_RELU: return (x > 0 || isnan(x)) ? x : 0.0;
    case TS_OP_CLAMP: return x < p0 ? p0 : x > p1 ? p1 : x; /* NaN fails both tests: passes */
    default: return NAN; /* unreachable: the kernel checks op first */
    }
}

static bool is_unary_op(ts_op op) {
    switch (op) {
    case TS_OP_SCALE: case TS_OP_EXP: case TS_OP_LOG: case TS_OP_SQRT: case TS_OP_SIGMOID:
    case TS_OP_SOFTPLUS: case TS_OP_SILU: case TS_OP_RELU: case TS_OP_CLAMP:
        return true;
    default:
        return false;
    }
}

static void unary_range(void *arg, int64_t begin, int64_t end, int tid) {
    ref_job *j = arg;
    const ts_tensor *x = j->src[0];
    for (int64_t i = begin; i < end; i++)
        ref_set(j->dst, i, apply_unary(j->op, ref_get(x, ref_offset(x, i)), j->p0, j->p1));
}

TS_REF_KERNEL(unary) {
    ts_status s = float_kernel_ready(ctx, dst);
    if (s != TS_OK) return s;
    if (!is_unary_op(dst->op) || dst->n_src != 1) return ts_ref_fail(ctx, TS_ERR_INTERNAL, dst, "not a unary op");
    if (!ts_same_shape(dst, dst->src[0])) return ts_ref_fail(ctx, TS_ERR_SHAPE, dst, "input shape differs");
    return run_per_element(ctx, dst, unary_range);
}

/* ---------------------------------------------------------------- reductions */

/* Reduces the n elements of x starting at storage offset `off`, `step` apart, in order. */
static double reduce_row(ts_op op, const ts_tensor *x, int64_t off, int64_t step, int64_t n) {
    if (op == TS_OP_MAX) {
        double m = ref_get(x, off);
        for (int64_t k = 1; k < n && !isnan(m); k++) {
            double v = ref_get(x, off + k * step);
            if (v > m || isnan(v)) m = v;
        }
        return m;
    }
    double sum = 0;
    for (int64_t k = 0; k < n; k++) sum += ref_get(x, off + k * step);
    return op == TS_OP_MEAN ? sum / (double)n : sum;
}

/* One output element per row: its coordinates (axis at 0) locate the row's start in x. */
static void reduce_range(void *arg, int64_t begin, int64_t end, int tid) {
    ref_job *j = arg;
    const ts_tensor *x = j->src[0];
    int64_t c[TS_MAX_DIMS];
    for (int64_t o = begin; o < end; o++) {
        ref_unravel(j->dst->ndim, j->dst->shape, o, c);
        double r = reduce_row(j->op, x, ref_coord_offset(x, c), x->stride[j->axis], x->shape[j->axis]);
        ref_set(j->dst, o, r);
    }
}

/* The output must be x's shape with the reduced axis set to 1. */
static bool is_reduced_shape(const ts_tensor *x, const ts_tensor *y, int axis) {
    if (axis < 0 || axis >= x->ndim || y->ndim != x->ndim) return false;
    for (int d = 0; d < x->ndim; d++)
        if (y->shape[d] != (d == axis ? 1 : x->shape[d])) return false;
    return true;
}

TS_REF_KERNEL(reduce) {
    ts_status s = float_kernel_ready(ctx, dst);
    if (s != TS_OK) return s;
    if (dst->op != TS_OP_SUM && dst->op != TS_OP_MEAN && dst->op != TS_OP_MAX)
        return ts_ref_fail(ctx, TS_ERR_INTERNAL, dst, "not a reduction");
    const ts_tensor *x = dst->src[0];
    if (!is_reduced_shape(x, dst, dst->ip[0])) return ts_ref_fail(ctx, TS_ERR_SHAPE, dst, "output is not the input reduced on ip[0]");
    ref_job job = job_for(dst);
    ref_run_parallel(ctx, dst, ts_nelements(dst), ref_items_min_chunk(x->shape[dst->ip[0]]), reduce_range, &job);
    return TS_OK;
}

/* ---------------------------------------------------------------- sum_to */

/* x's dimension d is summed over when dst (aligned right) lacks it or has 1 there. */
static bool summed_dim(const ts_tensor *dst, const ts_tensor *x, int d) {
    int dd = d - (x->ndim - dst->ndim);
    return dd < 0 || dst->shape[dd] != x->shape[d];
}

/* For each output element, walks the summed dimensions of x in row-major order. */
static void sum_to_range(void *arg, int64_t begin, int64_t end, int tid) {
    ref_job *j = arg;
    const ts_tensor *x = j->src[0];
    int lead = x->ndim - j->dst->ndim;
    int64_t terms = ts_nelements(x) / ts_nelements(j->dst);
    int64_t co[TS_MAX_DIMS], cx[TS_MAX_DIMS];
    for (int64_t o = begin; o < end; o++) {
        ref_unravel(j->dst->ndim, j->dst->shape, o, co);
        double sum = 0;
        for (int64_t t = 0; t < terms; t++) {
            int64_t rest = t;
            for (int d = x->ndim - 1; d >= 0; d--) {
                if (summed_dim(j->dst, x, d)) {
                    cx[d] = rest % x->shape[d];
                    rest /= x->shape[d];
                } else {
                    cx[d] = co[d - lead];
                }
            }
            sum += ref_get(x, ref_coord_offset(x, cx));
        }
        ref_set(j->dst, o, sum);
    }
}

TS_REF_KERNEL(sum_to) {
    ts_status s = float_kernel_ready(ctx, dst);
    if (s != TS_OK) return s;
    const ts_tensor *x = dst->src[0];
    if (!ref_broadcasts_to(dst, x))
        return ts_ref_fail(ctx, TS_ERR_SHAPE, dst, "output does not broadcast to the input");
    ref_job job = job_for(dst);
    int64_t terms = ts_nelements(x) / ts_nelements(dst);
    ref_run_parallel(ctx, dst, ts_nelements(dst), ref_items_min_chunk(terms), sum_to_range, &job);
    return TS_OK;
}

/* ---------------------------------------------------------------- unary backward */

static double apply_unary_back(ts_op op, double in, double dy, double lo, double hi) {
    switch (op) {
    case TS_OP_SIGMOID_BACK: /* in = y = sigmoid(x) */
        return dy * in * (1.0 - in);
    case TS_OP_SILU_BACK: { /* in = x; d/dx x*s(x) = s + x*s*(1-s) */
        double s = sigmoid(in);
        return dy * s * (1.0 + in * (1.0 - s));
    }
    case TS_OP_RELU_BACK: return in > 0 ? dy : 0.0;
    case TS_OP_CLAMP_BACK: return (in >= lo && in <= hi) ? dy : 0.0; /* PyTorch: bounds included */
    default: return NAN; /* unreachable: the kernel checks op first */
    }
}

static void unary_back_range(void *arg, int64_t begin, int64_t end, int tid) {
    ref_job *j = arg;
    const ts_tensor *in = j->src[0], *dy = j->src[1];
    for (int64_t i = begin; i < end; i++) {
        double v = ref_get(in, ref_offset(in, i)), g = ref_get(dy, ref_offset(dy, i));
        ref_set(j->dst, i, apply_unary_back(j->op, v, g, j->p0, j->p1));
    }
}

TS_REF_KERNEL(unary_back) {
    ts_status s = float_kernel_ready(ctx, dst);
    if (s != TS_OK) return s;
    if (dst->op != TS_OP_SIGMOID_BACK && dst->op != TS_OP_SILU_BACK && dst->op != TS_OP_RELU_BACK &&
        dst->op != TS_OP_CLAMP_BACK)
        return ts_ref_fail(ctx, TS_ERR_INTERNAL, dst, "not a unary backward op");
    if (dst->n_src != 2 || !ts_same_shape(dst, dst->src[0]) || !ts_same_shape(dst, dst->src[1]))
        return ts_ref_fail(ctx, TS_ERR_SHAPE, dst, "inputs must have the output's shape");
    return run_per_element(ctx, dst, unary_back_range);
}

/* ---------------------------------------------------------------- swiglu and its backward */

/* The clamped inputs of SWIGLU (limit > 0): gate capped above, up clamped on both sides; NaN
 * passes through. Whether each clamp lets the gradient through (bounds included, not NaN). */
typedef struct {
    double a, b;
    bool a_passes, b_passes;
} swiglu_in;

static swiglu_in swiglu_inputs(double a, double b, double limit) {
    if (limit <= 0) return (swiglu_in){a, b, true, true};
    return (swiglu_in){a > limit ? limit : a, b < -limit ? -limit : b > limit ? limit : b, a <= limit,
                       b >= -limit && b <= limit};
}

static void swiglu_range(void *arg, int64_t begin, int64_t end, int tid) {
    ref_job *j = arg;
    const ts_tensor *a = j->src[0], *b = j->src[1];
    for (int64_t i = begin; i < end; i++) {
        swiglu_in in = swiglu_inputs(ref_get(a, ref_offset(a, i)), ref_get(b, ref_offset(b, i)), j->p0);
        ref_set(j->dst, i, in.a * sigmoid(in.a) * in.b);
    }
}

/* dst [2, n]: da = dy b' silu'(a') (where a passes), db = dy silu(a') (where b passes). */
static void swiglu_back_range(void *arg, int64_t begin, int64_t end, int tid) {
    ref_job *j = arg;
    const ts_tensor *a = j->src[0], *b = j->src[1], *dy = j->src[2];
    int64_t n = ts_nelements(a);
    for (int64_t i = begin; i < end; i++) {
        swiglu_in in = swiglu_inputs(ref_get(a, ref_offset(a, i)), ref_get(b, ref_offset(b, i)), j->p0);
        double g = ref_get(dy, ref_offset(dy, i)), s = sigmoid(in.a);
        ref_set(j->dst, i, in.a_passes ? g * in.b * s * (1.0 + in.a * (1.0 - s)) : 0.0);
        ref_set(j->dst, n + i, in.b_passes ? g * in.a * s : 0.0);
    }
}

TS_REF_KERNEL(swiglu) {
    ts_status s = float_kernel_ready(ctx, dst);
    if (s != TS_OK) return s;
    bool back = dst->op == TS_OP_SWIGLU_BACK;
    if ((dst->op != TS_OP_SWIGLU && !back) || dst->n_src != (back ? 3 : 2))
        return ts_ref_fail(ctx, TS_ERR_INTERNAL, dst, "not a swiglu op");
    const ts_tensor *a = dst->src[0];
    bool ok = back ? dst->ndim == a->ndim + 1 && dst->shape[0] == 2 : ts_same_shape(dst, a);
    for (int d = 0; back && ok && d < a->ndim; d++) ok = dst->shape[d + 1] == a->shape[d];
    for (int i = 1; ok && i < dst->n_src; i++) ok = ts_same_shape(a, dst->src[i]);
    if (!ok) return ts_ref_fail(ctx, TS_ERR_SHAPE, dst, "sources and output must share one shape ([2, shape] for the gradients)");
    ref_job job = job_for(dst);
    ref_run_parallel(ctx, dst, ts_nelements(a), REF_MIN_CHUNK, back ? swiglu_back_range : swiglu_range, &job);
    return TS_OK;
}

/* ---------------------------------------------------------------- max backward */

/* One row per element of y: the first x equal to y (or the first NaN when y is NaN) receives
 * dy, every other element of the row 0. */
static void max_back_range(void *arg, int64_t begin, int64_t end, int tid) {
    ref_job *j = arg;
    const ts_tensor *x = j->src[0], *y = j->src[1], *dy = j->src[2];
    ts_tensor *dx = j->dst;
    int a = j->axis;
    int64_t n = x->shape[a], c[TS_MAX_DIMS];
    for (int64_t r = begin; r < end; r++) {
        ref_unravel(y->ndim, y->shape, r, c);
        int64_t x_off = ref_coord_offset(x, c), dx_off = ref_coord_offset(dx, c);
        double m = ref_get(y, ref_coord_offset(y, c)), g = ref_get(dy, ref_coord_offset(dy, c));
        int64_t winner = -1;
        for (int64_t k = 0; k < n && winner < 0; k++) {
            double v = ref_get(x, x_off + k * x->stride[a]);
            if (v == m || (isnan(v) && isnan(m))) winner = k;
        }
        for (int64_t k = 0; k < n; k++) ref_set(dx, dx_off + k * dx->stride[a], k == winner ? g : 0.0);
    }
}

TS_REF_KERNEL(max_back) {
    ts_status s = float_kernel_ready(ctx, dst);
    if (s != TS_OK) return s;
    if (dst->n_src != 3) return ts_ref_fail(ctx, TS_ERR_INTERNAL, dst, "max_back needs x, y and dy");
    const ts_tensor *x = dst->src[0];
    int a = dst->ip[0];
    if (!ts_same_shape(dst, x) || !is_reduced_shape(x, dst->src[1], a) || !is_reduced_shape(x, dst->src[2], a))
        return ts_ref_fail(ctx, TS_ERR_SHAPE, dst, "y and dy must be x reduced on ip[0]");
    ref_job job = job_for(dst);
    ref_run_parallel(ctx, dst, ts_nelements(dst->src[1]), ref_items_min_chunk(x->shape[a]), max_back_range, &job);
    return TS_OK;
}
