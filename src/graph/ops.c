/* ops.c - op constructors: check shapes and dtypes, infer the output, record the node.
 * Nothing is computed here. Every check failure names the op, the tensors and their shapes. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "graph_internal.h"

static const char *const op_names[TS_OP_COUNT] = {
    [TS_OP_NONE] = "leaf",
    [TS_OP_RESHAPE] = "reshape",
    [TS_OP_PERMUTE] = "permute",
    [TS_OP_SLICE] = "slice",
    [TS_OP_EXPAND] = "expand",
    [TS_OP_FILL] = "fill",
    [TS_OP_COPY] = "copy",
    [TS_OP_CONCAT] = "concat",
    [TS_OP_ADD] = "add",
    [TS_OP_SUB] = "sub",
    [TS_OP_MUL] = "mul",
    [TS_OP_DIV] = "div",
    [TS_OP_SCALE] = "scale",
    [TS_OP_EXP] = "exp",
    [TS_OP_LOG] = "log",
    [TS_OP_SQRT] = "sqrt",
    [TS_OP_SIGMOID] = "sigmoid",
    [TS_OP_SOFTPLUS] = "softplus",
    [TS_OP_SILU] = "silu",
    [TS_OP_RELU] = "relu",
    [TS_OP_CLAMP] = "clamp",
    [TS_OP_SUM] = "sum",
    [TS_OP_MEAN] = "mean",
    [TS_OP_MAX] = "max",
    [TS_OP_SUM_TO] = "sum_to",
    [TS_OP_MATMUL] = "matmul",
    [TS_OP_SOFTMAX] = "softmax",
    [TS_OP_RMS_NORM] = "rms_norm",
    [TS_OP_ROPE] = "rope",
    [TS_OP_GET_ROWS] = "get_rows",
    [TS_OP_TOPK] = "topk",
    [TS_OP_GATHER] = "gather",
    [TS_OP_SCATTER_ADD] = "scatter_add",
    [TS_OP_CROSS_ENTROPY] = "cross_entropy",
    [TS_OP_ATTENTION] = "attention",
    [TS_OP_SINKHORN] = "sinkhorn",
    [TS_OP_MATMUL_ID] = "matmul_id",
    [TS_OP_SWIGLU] = "swiglu",
    [TS_OP_SIGMOID_BACK] = "sigmoid_back",
    [TS_OP_SILU_BACK] = "silu_back",
    [TS_OP_RELU_BACK] = "relu_back",
    [TS_OP_CLAMP_BACK] = "clamp_back",
    [TS_OP_MAX_BACK] = "max_back",
    [TS_OP_SOFTMAX_BACK] = "softmax_back",
    [TS_OP_RMS_NORM_BACK] = "rms_norm_back",
    [TS_OP_GET_ROWS_BACK] = "get_rows_back",
    [TS_OP_CROSS_ENTROPY_BACK] = "cross_entropy_back",
    [TS_OP_ATTENTION_BACK] = "attention_back",
    [TS_OP_SINKHORN_BACK] = "sinkhorn_back",
    [TS_OP_MATMUL_ID_GRAD_W] = "matmul_id_grad_w",
    [TS_OP_SWIGLU_BACK] = "swiglu_back",
};

const char *ts_op_name(ts_op op) {
    return ((unsigned)op < TS_OP_COUNT && op_names[op]) ? op_names[op] : "unknown-op";
}

bool ts_op_is_view(ts_op op) {
    return op == TS_OP_RESHAPE || op == TS_OP_PERMUTE || op == TS_OP_SLICE || op == TS_OP_EXPAND;
}

bool ts_op_inplace_ok(ts_op op, int i) {
    switch (op) {
    case TS_OP_ADD: case TS_OP_SUB: case TS_OP_MUL: case TS_OP_DIV: case TS_OP_SWIGLU:
    case TS_OP_SIGMOID_BACK: case TS_OP_SILU_BACK: case TS_OP_RELU_BACK: case TS_OP_CLAMP_BACK:
        return i <= 1;
    case TS_OP_SCALE: case TS_OP_EXP: case TS_OP_LOG: case TS_OP_SQRT: case TS_OP_SIGMOID:
    case TS_OP_SOFTPLUS: case TS_OP_SILU: case TS_OP_RELU: case TS_OP_CLAMP:
    case TS_OP_SCATTER_ADD:
        return i == 0;
    default:
        return false;
    }
}

/* ---------------------------------------------------------------- helpers */

#define DESC(t, buf) ts_tensor_describe((t), (buf), sizeof(buf))

static bool any_null(ts_tensor *const *xs, int n) {
    for (int i = 0; i < n; i++)
        if (!xs[i]) return true;
    return false;
}

static bool is_float(ts_dtype t) { return ts_dtype_get_info(t)->is_float; }
static bool is_packed(ts_dtype t) { return ts_dtype_get_info(t)->bits < 8; }

static ts_tensor *fail(ts_graph *g, ts_status s, const char *op, const char *what, const ts_tensor *a,
                       const ts_tensor *b) {
    char da[160], db[160];
    DESC(a, da);
    if (b) {
        DESC(b, db);
        ts_graph_set_error(g, s, "%s: %s (%s, %s)", op, what, da, db);
    } else {
        ts_graph_set_error(g, s, "%s: %s (%s)", op, what, da);
    }
    return NULL;
}

static bool need_float(ts_graph *g, const char *op, const ts_tensor *x) {
    if (is_float(x->dtype)) return true;
    fail(g, TS_ERR_DTYPE, op, "needs a float tensor", x, NULL);
    return false;
}

static bool need_int(ts_graph *g, const char *op, const ts_tensor *x) {
    if (x->dtype == TS_I32 || x->dtype == TS_I64) return true;
    fail(g, TS_ERR_DTYPE, op, "indices must be i32 or i64", x, NULL);
    return false;
}

static int norm_axis(ts_graph *g, const char *op, const ts_tensor *x, int axis) {
    int a = axis < 0 ? axis + x->ndim : axis;
    if (a < 0 || a >= x->ndim) {
        char m[64];
        snprintf(m, sizeof m, "axis %d out of range", axis);
        fail(g, TS_ERR_SHAPE, op, m, x, NULL);
        return -1;
    }
    return a;
}

/* NumPy broadcast of two shapes; false when they do not broadcast. */
static bool broadcast_shapes(const ts_tensor *a, const ts_tensor *b, int *ndim, int64_t *shape) {
    int n = a->ndim > b->ndim ? a->ndim : b->ndim;
    for (int i = 0; i < n; i++) {
        int da = a->ndim - n + i, db = b->ndim - n + i;
        int64_t sa = da >= 0 ? a->shape[da] : 1, sb = db >= 0 ? b->shape[db] : 1;
        if (sa != sb && sa != 1 && sb != 1) return false;
        shape[i] = sa == 1 ? sb : sa;
    }
    *ndim = n;
    return true;
}

/* Whether x can be broadcast to (ndim, shape). */
static bool broadcasts_to(const ts_tensor *x, int ndim, const int64_t *shape) {
    if (x->ndim > ndim) return false;
    for (int i = 0; i < x->ndim; i++) {
        int64_t s = x->shape[i], t = shape[ndim - x->ndim + i];
        if (s != t && s != 1) return false;
    }
    return true;
}

static ts_tensor *root_of(ts_tensor *x) { return x->view_src ? x->view_src : x; }

/* A view node of x with the given geometry. */
static ts_tensor *make_view(ts_graph *g, ts_op op, ts_tensor *x, int ndim, const int64_t *shape,
                            const int64_t *stride, int64_t offset) {
    if (is_packed(x->dtype) && op != TS_OP_RESHAPE)
        return fail(g, TS_ERR_DTYPE, ts_op_name(op), "packed dtypes allow only reshape views", x, NULL);
    ts_tensor *v = ts_graph_add_node(g, op, x->dtype, ndim, shape, &x, 1);
    if (!v) return NULL;
    for (int d = 0; d < ndim; d++) v->stride[d] = stride[d];
    v->offset = offset;
    v->view_src = root_of(x);
    v->flags |= x->flags & TS_FLAG_REQUIRES_GRAD;
    return v;
}

/* ---------------------------------------------------------------- views */

ts_tensor *ts_reshape(ts_graph *g, ts_tensor *x, int ndim, const int64_t *shape) {
    if (!x) return NULL;
    if (ndim < 0 || ndim > TS_MAX_DIMS) return fail(g, TS_ERR_SHAPE, "reshape", "bad ndim", x, NULL);
    int64_t s[TS_MAX_DIMS], known = 1;
    int infer = -1;
    for (int d = 0; d < ndim; d++) {
        s[d] = shape[d];
        if (s[d] == -1 && infer < 0) infer = d;
        else if (s[d] < 1) return fail(g, TS_ERR_SHAPE, "reshape", "bad target dimension", x, NULL);
        else known *= s[d];
    }
    int64_t n = ts_nelements(x);
    if (infer >= 0) {
        if (known == 0 || n % known) return fail(g, TS_ERR_SHAPE, "reshape", "cannot infer -1 dimension", x, NULL);
        s[infer] = n / known;
        known *= s[infer];
    }
    if (known != n) {
        char m[96];
        snprintf(m, sizeof m, "target has %lld elements, source %lld", (long long)known, (long long)n);
        return fail(g, TS_ERR_SHAPE, "reshape", m, x, NULL);
    }
    if (!ts_is_contiguous(x)) {
        x = ts_cont(g, x);
        if (!x) return NULL;
    }
    ts_tensor tmp = {.ndim = ndim};
    for (int d = 0; d < ndim; d++) tmp.shape[d] = s[d];
    ts_set_contiguous_strides(&tmp);
    ts_tensor *v = make_view(g, TS_OP_RESHAPE, x, ndim, s, tmp.stride, x->offset);
    if (v) {
        v->ip[0] = ndim;
        for (int d = 0; d < ndim; d++) v->ip[1 + d] = (int32_t)s[d];
    }
    return v;
}

ts_tensor *ts_reshape_2d(ts_graph *g, ts_tensor *x, int64_t n0, int64_t n1) {
    int64_t s[2] = {n0, n1};
    return ts_reshape(g, x, 2, s);
}

ts_tensor *ts_permute(ts_graph *g, ts_tensor *x, const int *perm) {
    if (!x) return NULL;
    bool seen[TS_MAX_DIMS] = {0};
    int64_t s[TS_MAX_DIMS], st[TS_MAX_DIMS];
    for (int d = 0; d < x->ndim; d++) {
        int p = perm[d];
        if (p < 0 || p >= x->ndim || seen[p]) return fail(g, TS_ERR_SHAPE, "permute", "not a permutation", x, NULL);
        seen[p] = true;
        s[d] = x->shape[p];
        st[d] = x->stride[p];
    }
    ts_tensor *v = make_view(g, TS_OP_PERMUTE, x, x->ndim, s, st, x->offset);
    if (v)
        for (int d = 0; d < x->ndim; d++) v->ip[d] = perm[d];
    return v;
}

ts_tensor *ts_transpose(ts_graph *g, ts_tensor *x, int axis0, int axis1) {
    if (!x) return NULL;
    int a = norm_axis(g, "transpose", x, axis0), b = norm_axis(g, "transpose", x, axis1);
    if (a < 0 || b < 0) return NULL;
    int perm[TS_MAX_DIMS];
    for (int d = 0; d < x->ndim; d++) perm[d] = d;
    perm[a] = b;
    perm[b] = a;
    return ts_permute(g, x, perm);
}

ts_tensor *ts_slice(ts_graph *g, ts_tensor *x, int axis, int64_t start, int64_t length) {
    if (!x) return NULL;
    int a = norm_axis(g, "slice", x, axis);
    if (a < 0) return NULL;
    if (start < 0 || length < 1 || start + length > x->shape[a]) {
        char m[96];
        snprintf(m, sizeof m, "range [%lld, %lld) outside axis %d", (long long)start,
                 (long long)(start + length), a);
        return fail(g, TS_ERR_SHAPE, "slice", m, x, NULL);
    }
    int64_t s[TS_MAX_DIMS];
    memcpy(s, x->shape, sizeof s);
    s[a] = length;
    ts_tensor *v = make_view(g, TS_OP_SLICE, x, x->ndim, s, x->stride, x->offset + start * x->stride[a]);
    if (v) {
        v->ip[0] = a;
        v->ip[1] = (int32_t)start;
        v->ip[2] = (int32_t)length;
    }
    return v;
}

ts_tensor *ts_expand(ts_graph *g, ts_tensor *x, int ndim, const int64_t *shape) {
    if (!x) return NULL;
    if (ndim > TS_MAX_DIMS || !broadcasts_to(x, ndim, shape))
        return fail(g, TS_ERR_SHAPE, "expand", "source does not broadcast to the target shape", x, NULL);
    int64_t st[TS_MAX_DIMS] = {0}; /* zero-init: silences a false -Wmaybe-uninitialized at -O2 */
    for (int d = 0; d < ndim; d++) {
        int xd = d - (ndim - x->ndim);
        st[d] = (xd >= 0 && x->shape[xd] == shape[d]) ? x->stride[xd] : 0;
    }
    ts_tensor *v = make_view(g, TS_OP_EXPAND, x, ndim, shape, st, x->offset);
    if (v) {
        v->ip[0] = ndim;
        for (int d = 0; d < ndim; d++) v->ip[1 + d] = (int32_t)shape[d];
    }
    return v;
}

/* ---------------------------------------------------------------- creation, movement */

ts_tensor *ts_fill(ts_graph *g, ts_dtype t, int ndim, const int64_t *shape, float value) {
    if (!g) return NULL;
    if ((unsigned)t >= TS_DTYPE_COUNT || ndim < 0 || ndim > TS_MAX_DIMS) {
        ts_graph_set_error(g, TS_ERR_INVALID_ARG, "fill: bad dtype or ndim");
        return NULL;
    }
    for (int d = 0; d < ndim; d++)
        if (shape[d] < 1) {
            ts_graph_set_error(g, TS_ERR_SHAPE, "fill: dimension %d is %lld", d, (long long)shape[d]);
            return NULL;
        }
    ts_tensor *n = ts_graph_add_node(g, TS_OP_FILL, t, ndim, shape, NULL, 0);
    if (n) {
        n->fp[0] = value;
        n->ip[0] = (int32_t)t;
        n->ip[1] = ndim;
        for (int d = 0; d < ndim; d++) n->ip[2 + d] = (int32_t)shape[d];
    }
    return n;
}

ts_tensor *ts_zeros_like(ts_graph *g, const ts_tensor *x) {
    return x ? ts_fill(g, x->dtype, x->ndim, x->shape, 0.0f) : NULL;
}

ts_tensor *ts_cast(ts_graph *g, ts_tensor *x, ts_dtype t) {
    if (!x) return NULL;
    if ((unsigned)t >= TS_DTYPE_COUNT) return fail(g, TS_ERR_DTYPE, "cast", "unknown target dtype", x, NULL);
    if (is_packed(t) || (is_packed(x->dtype) && !ts_is_contiguous(x)))
        return fail(g, TS_ERR_DTYPE, "cast", "packed dtypes are converted by the loader, not by cast", x, NULL);
    ts_tensor *n = ts_graph_add_node(g, TS_OP_COPY, t, x->ndim, x->shape, &x, 1);
    if (n) n->ip[0] = (int32_t)t;
    return n;
}

ts_tensor *ts_cont(ts_graph *g, ts_tensor *x) { return x ? ts_cast(g, x, x->dtype) : NULL; }

/* A copy that autodiff treats as a constant: nothing downstream of it requires a gradient
 * through it, so backward never reaches x from here. */
ts_tensor *ts_detach(ts_graph *g, ts_tensor *x) {
    ts_tensor *c = ts_cont(g, x);
    if (c) c->flags &= ~(uint32_t)TS_FLAG_REQUIRES_GRAD;
    return c;
}

ts_tensor *ts_concat(ts_graph *g, ts_tensor *const *xs, int n, int axis) {
    if (n < 1 || !xs || any_null(xs, n)) {
        if (n < 1) ts_graph_set_error(g, TS_ERR_INVALID_ARG, "concat: needs at least one tensor");
        return NULL;
    }
    if (n == 1) return xs[0];
    if (n > TS_MAX_SRC) {
        ts_tensor *head = ts_concat(g, xs, TS_MAX_SRC, axis);
        ts_tensor *rest[TS_MAX_SRC];
        int m = 0;
        rest[m++] = head;
        int i = TS_MAX_SRC;
        while (i < n) {
            for (m = 1; m < TS_MAX_SRC && i < n; m++) rest[m] = xs[i++];
            rest[0] = ts_concat(g, rest, m, axis);
        }
        return rest[0];
    }
    ts_tensor *x0 = xs[0];
    int a = norm_axis(g, "concat", x0, axis);
    if (a < 0) return NULL;
    int64_t s[TS_MAX_DIMS];
    memcpy(s, x0->shape, sizeof s);
    for (int i = 1; i < n; i++) {
        ts_tensor *x = xs[i];
        if (x->dtype != x0->dtype) return fail(g, TS_ERR_DTYPE, "concat", "dtypes differ", x0, x);
        if (x->ndim != x0->ndim) return fail(g, TS_ERR_SHAPE, "concat", "ranks differ", x0, x);
        for (int d = 0; d < x0->ndim; d++)
            if (d != a && x->shape[d] != x0->shape[d])
                return fail(g, TS_ERR_SHAPE, "concat", "shapes differ off the concat axis", x0, x);
        s[a] += x->shape[a];
    }
    if (is_packed(x0->dtype)) return fail(g, TS_ERR_DTYPE, "concat", "packed dtype", x0, NULL);
    ts_tensor *r = ts_graph_add_node(g, TS_OP_CONCAT, x0->dtype, x0->ndim, s, xs, n);
    if (r) {
        r->ip[0] = a;
        r->ip[1] = n;
    }
    return r;
}

/* ---------------------------------------------------------------- elementwise */

static ts_tensor *binary(ts_graph *g, ts_op op, ts_tensor *a, ts_tensor *b) {
    if (!a || !b) return NULL;
    const char *name = ts_op_name(op);
    if (a->dtype != b->dtype) return fail(g, TS_ERR_DTYPE, name, "dtypes differ (use ts_cast)", a, b);
    if (is_packed(a->dtype)) return fail(g, TS_ERR_DTYPE, name, "packed dtype", a, NULL);
    int nd;
    int64_t s[TS_MAX_DIMS];
    if (!broadcast_shapes(a, b, &nd, s)) return fail(g, TS_ERR_SHAPE, name, "shapes do not broadcast", a, b);
    ts_tensor *src[2] = {a, b};
    return ts_graph_add_node(g, op, a->dtype, nd, s, src, 2);
}

ts_tensor *ts_add(ts_graph *g, ts_tensor *a, ts_tensor *b) { return binary(g, TS_OP_ADD, a, b); }
ts_tensor *ts_sub(ts_graph *g, ts_tensor *a, ts_tensor *b) { return binary(g, TS_OP_SUB, a, b); }
ts_tensor *ts_mul(ts_graph *g, ts_tensor *a, ts_tensor *b) { return binary(g, TS_OP_MUL, a, b); }
ts_tensor *ts_div(ts_graph *g, ts_tensor *a, ts_tensor *b) { return binary(g, TS_OP_DIV, a, b); }

static ts_tensor *unary(ts_graph *g, ts_op op, ts_tensor *x, float p0, float p1) {
    if (!x) return NULL;
    if (!need_float(g, ts_op_name(op), x)) return NULL;
    ts_tensor *n = ts_graph_add_node(g, op, x->dtype, x->ndim, x->shape, &x, 1);
    if (n) {
        n->fp[0] = p0;
        n->fp[1] = p1;
    }
    return n;
}

ts_tensor *ts_scale(ts_graph *g, ts_tensor *x, float s) { return unary(g, TS_OP_SCALE, x, s, 0); }
ts_tensor *ts_exp(ts_graph *g, ts_tensor *x) { return unary(g, TS_OP_EXP, x, 0, 0); }
ts_tensor *ts_log(ts_graph *g, ts_tensor *x) { return unary(g, TS_OP_LOG, x, 0, 0); }
ts_tensor *ts_sqrt(ts_graph *g, ts_tensor *x) { return unary(g, TS_OP_SQRT, x, 0, 0); }
ts_tensor *ts_sigmoid(ts_graph *g, ts_tensor *x) { return unary(g, TS_OP_SIGMOID, x, 0, 0); }
ts_tensor *ts_softplus(ts_graph *g, ts_tensor *x) { return unary(g, TS_OP_SOFTPLUS, x, 0, 0); }
ts_tensor *ts_silu(ts_graph *g, ts_tensor *x) { return unary(g, TS_OP_SILU, x, 0, 0); }
ts_tensor *ts_relu(ts_graph *g, ts_tensor *x) { return unary(g, TS_OP_RELU, x, 0, 0); }
/* SWIGLU (src a, b) and SWIGLU_BACK (a, b, dy -> [2, shape]): equal shapes and dtypes. */
static ts_tensor *swiglu_node(ts_graph *g, ts_op op, ts_tensor *const *src, int n_src, float limit) {
    const char *name = ts_op_name(op);
    int want = op == TS_OP_SWIGLU ? 2 : 3;
    if (n_src != want || any_null(src, n_src)) {
        ts_graph_set_error(g, TS_ERR_INVALID_ARG, "%s: needs %d sources", name, want);
        return NULL;
    }
    for (int i = 0; i < n_src; i++) {
        if (!need_float(g, name, src[i])) return NULL;
        if (!ts_same_shape(src[i], src[0]) || src[i]->dtype != src[0]->dtype)
            return fail(g, TS_ERR_SHAPE, name, "sources differ in shape or dtype", src[0], src[i]);
    }
    if (!isfinite(limit)) return fail(g, TS_ERR_INVALID_ARG, name, "limit must be finite", src[0], NULL);
    int64_t shape[TS_MAX_DIMS] = {2};
    int nd = src[0]->ndim;
    if (op == TS_OP_SWIGLU_BACK) {
        if (nd + 1 > TS_MAX_DIMS) return fail(g, TS_ERR_SHAPE, name, "too many dimensions", src[0], NULL);
        memcpy(shape + 1, src[0]->shape, (size_t)nd * sizeof *shape);
        nd++;
    } else {
        memcpy(shape, src[0]->shape, (size_t)nd * sizeof *shape);
    }
    ts_tensor *r = ts_graph_add_node(g, op, src[0]->dtype, nd, shape, src, n_src);
    if (r) r->fp[0] = limit;
    return r;
}

ts_tensor *ts_swiglu(ts_graph *g, ts_tensor *gate, ts_tensor *up, float limit) {
    ts_tensor *src[2] = {gate, up};
    return any_null(src, 2) ? NULL : swiglu_node(g, TS_OP_SWIGLU, src, 2, limit);
}

ts_tensor *ts_clamp(ts_graph *g, ts_tensor *x, float min, float max) {
    if (x && !(min <= max)) return fail(g, TS_ERR_INVALID_ARG, "clamp", "min > max or NaN bound", x, NULL);
    return unary(g, TS_OP_CLAMP, x, min, max);
}

/* ---------------------------------------------------------------- reductions */

static ts_tensor *drop_axis(ts_graph *g, ts_tensor *r, int a) {
    int64_t s[TS_MAX_DIMS];
    int nd = 0;
    for (int d = 0; d < r->ndim; d++)
        if (d != a) s[nd++] = r->shape[d];
    return ts_reshape(g, r, nd, s);
}

static ts_tensor *reduce(ts_graph *g, ts_op op, ts_tensor *x, int axis, bool keepdim) {
    if (!x) return NULL;
    const char *name = ts_op_name(op);
    if (!need_float(g, name, x)) return NULL;
    int a = norm_axis(g, name, x, axis);
    if (a < 0) return NULL;
    int64_t s[TS_MAX_DIMS];
    memcpy(s, x->shape, sizeof s);
    s[a] = 1;
    ts_tensor *r = ts_graph_add_node(g, op, x->dtype, x->ndim, s, &x, 1);
    if (!r) return NULL;
    r->ip[0] = a;
    return keepdim ? r : drop_axis(g, r, a);
}

ts_tensor *ts_sum(ts_graph *g, ts_tensor *x, int axis, bool keepdim) { return reduce(g, TS_OP_SUM, x, axis, keepdim); }
ts_tensor *ts_mean(ts_graph *g, ts_tensor *x, int axis, bool keepdim) { return reduce(g, TS_OP_MEAN, x, axis, keepdim); }
ts_tensor *ts_max(ts_graph *g, ts_tensor *x, int axis, bool keepdim) { return reduce(g, TS_OP_MAX, x, axis, keepdim); }

ts_tensor *ts_sum_to(ts_graph *g, ts_tensor *x, int ndim, const int64_t *shape) {
    if (!x) return NULL;
    if (!need_float(g, "sum_to", x)) return NULL;
    if (ndim < 0 || ndim > x->ndim) return fail(g, TS_ERR_SHAPE, "sum_to", "target rank above source rank", x, NULL);
    ts_tensor tmp = {.ndim = ndim};
    for (int d = 0; d < ndim; d++) tmp.shape[d] = shape[d];
    if (!broadcasts_to(&tmp, x->ndim, x->shape))
        return fail(g, TS_ERR_SHAPE, "sum_to", "target shape does not broadcast to the source", x, NULL);
    if (ndim == x->ndim && ts_same_shape(&tmp, x)) return x;
    ts_tensor *r = ts_graph_add_node(g, TS_OP_SUM_TO, x->dtype, ndim, shape, &x, 1);
    if (r) {
        r->ip[0] = ndim;
        for (int d = 0; d < ndim; d++) r->ip[1 + d] = (int32_t)shape[d];
    }
    return r;
}

/* ---------------------------------------------------------------- transformer ops */

/* The result dtype of a product of a and b: f64 when either is; else f32 when `wide` (autocast's
 * f32 result from narrow operands) or they differ; else theirs. */
static ts_dtype product_dtype(ts_dtype a, ts_dtype b, bool wide) {
    if (a == TS_F64 || b == TS_F64) return TS_F64;
    return a == b && !wide ? a : TS_F32;
}

/* A weight: a leaf (bound weights, parameters) or a view of one. */
static bool is_weight(const ts_tensor *t) { return (t->view_src ? t->view_src : t)->op == TS_OP_NONE; }

/* Whether the graph's autocast applies to a product of a and b: it is on, one of them is a
 * weight, and both are f32 or already of the autocast dtype. */
static bool autocasts(const ts_graph *g, const ts_tensor *a, const ts_tensor *b) {
    ts_dtype n = g->autocast;
    return n != TS_F32 && (is_weight(a) || is_weight(b)) && (a->dtype == TS_F32 || a->dtype == n) &&
           (b->dtype == TS_F32 || b->dtype == n);
}

/* x in the autocast dtype: the one cast of x the graph keeps (made on first use). */
static ts_tensor *autocast_operand(ts_graph *g, ts_tensor *x) {
    if (x->dtype == g->autocast) return x;
    if (!g->cast_of[x->id]) {
        ts_tensor *c = ts_cast(g, x, g->autocast); /* may grow cast_of: index it afterwards */
        if (!c) return NULL;
        g->cast_of[x->id] = c;
    }
    return g->cast_of[x->id];
}

static ts_tensor *matmul_node(ts_graph *g, ts_tensor *a, ts_tensor *b, bool trans_a, bool trans_b, bool wide) {
    if (!a || !b) return NULL;
    if (!need_float(g, "matmul", a) || !need_float(g, "matmul", b)) return NULL;
    if (is_packed(a->dtype) || is_packed(b->dtype)) return fail(g, TS_ERR_DTYPE, "matmul", "packed dtype", a, b);
    if (a->ndim < 2 || b->ndim < 2) return fail(g, TS_ERR_SHAPE, "matmul", "operands need rank >= 2", a, b);
    int64_t M = a->shape[a->ndim - (trans_a ? 1 : 2)], Ka = a->shape[a->ndim - (trans_a ? 2 : 1)];
    int64_t Kb = b->shape[b->ndim - (trans_b ? 1 : 2)], N = b->shape[b->ndim - (trans_b ? 2 : 1)];
    if (Ka != Kb) return fail(g, TS_ERR_SHAPE, "matmul", "inner dimensions differ", a, b);
    ts_tensor ba = {.ndim = a->ndim - 2}, bb = {.ndim = b->ndim - 2};
    memcpy(ba.shape, a->shape, sizeof(int64_t) * (size_t)ba.ndim);
    memcpy(bb.shape, b->shape, sizeof(int64_t) * (size_t)bb.ndim);
    int nd;
    int64_t s[TS_MAX_DIMS];
    if (!broadcast_shapes(&ba, &bb, &nd, s)) return fail(g, TS_ERR_SHAPE, "matmul", "batch dimensions do not broadcast", a, b);
    s[nd] = M;
    s[nd + 1] = N;
    ts_tensor *src[2] = {a, b};
    ts_tensor *r = ts_graph_add_node(g, TS_OP_MATMUL, product_dtype(a->dtype, b->dtype, wide), nd + 2, s, src, 2);
    if (r) {
        r->ip[0] = trans_a;
        r->ip[1] = trans_b;
        r->ip[2] = wide;
    }
    return r;
}

ts_tensor *ts_matmul(ts_graph *g, ts_tensor *a, ts_tensor *b, bool trans_a, bool trans_b) {
    if (!a || !b) return NULL;
    if (autocasts(g, a, b)) return matmul_node(g, autocast_operand(g, a), autocast_operand(g, b), trans_a, trans_b, true);
    return matmul_node(g, a, b, trans_a, trans_b, false);
}

ts_tensor *ts_softmax(ts_graph *g, ts_tensor *x, int axis, ts_tensor *mask) {
    if (!x) return NULL;
    if (!need_float(g, "softmax", x)) return NULL;
    int a = norm_axis(g, "softmax", x, axis);
    if (a < 0) return NULL;
    ts_tensor *src[2] = {x, mask};
    if (mask) {
        if (!need_float(g, "softmax", mask)) return NULL;
        if (!broadcasts_to(mask, x->ndim, x->shape)) return fail(g, TS_ERR_SHAPE, "softmax", "mask does not broadcast to the input", x, mask);
    }
    ts_tensor *r = ts_graph_add_node(g, TS_OP_SOFTMAX, x->dtype, x->ndim, x->shape, src, mask ? 2 : 1);
    if (r) r->ip[0] = a;
    return r;
}

ts_tensor *ts_rms_norm(ts_graph *g, ts_tensor *x, ts_tensor *weight, float eps) {
    if (!x) return NULL;
    if (!need_float(g, "rms_norm", x)) return NULL;
    if (x->ndim < 1) return fail(g, TS_ERR_SHAPE, "rms_norm", "needs rank >= 1", x, NULL);
    if (!(eps >= 0)) return fail(g, TS_ERR_INVALID_ARG, "rms_norm", "eps must be >= 0", x, NULL);
    ts_tensor *src[2] = {x, weight};
    if (weight) {
        if (!need_float(g, "rms_norm", weight)) return NULL;
        if (weight->ndim != 1 || weight->shape[0] != x->shape[x->ndim - 1])
            return fail(g, TS_ERR_SHAPE, "rms_norm", "weight must be 1-D with the last dimension of x", x, weight);
    }
    ts_tensor *r = ts_graph_add_node(g, TS_OP_RMS_NORM, x->dtype, x->ndim, x->shape, src, weight ? 2 : 1);
    if (r) r->fp[0] = eps;
    return r;
}

ts_tensor *ts_rope(ts_graph *g, ts_tensor *x, ts_tensor *angles, int n_rot, bool inverse) {
    if (!x || !angles) return NULL;
    if (!need_float(g, "rope", x) || !need_float(g, "rope", angles)) return NULL;
    if (x->ndim < 1) return fail(g, TS_ERR_SHAPE, "rope", "needs rank >= 1", x, NULL);
    int64_t D = x->shape[x->ndim - 1];
    if (n_rot < 2 || n_rot % 2 || n_rot > D) return fail(g, TS_ERR_SHAPE, "rope", "n_rot must be even, >= 2 and <= last dim", x, NULL);
    int64_t s[TS_MAX_DIMS];
    memcpy(s, x->shape, sizeof s);
    s[x->ndim - 1] = n_rot / 2;
    if (!broadcasts_to(angles, x->ndim, s))
        return fail(g, TS_ERR_SHAPE, "rope", "angles must broadcast to x.shape[:-1] + [n_rot/2]", x, angles);
    ts_tensor *src[2] = {x, angles};
    ts_tensor *r = ts_graph_add_node(g, TS_OP_ROPE, x->dtype, x->ndim, x->shape, src, 2);
    if (r) {
        r->ip[0] = n_rot;
        r->ip[1] = inverse;
    }
    return r;
}

ts_tensor *ts_get_rows(ts_graph *g, ts_tensor *table, ts_tensor *ids) {
    if (!table || !ids) return NULL;
    if (!need_int(g, "get_rows", ids)) return NULL;
    if (is_packed(table->dtype)) return fail(g, TS_ERR_DTYPE, "get_rows", "packed dtype", table, NULL);
    if (table->ndim < 1 || ids->ndim + table->ndim - 1 > TS_MAX_DIMS)
        return fail(g, TS_ERR_SHAPE, "get_rows", "result would exceed 4 dimensions", table, ids);
    int64_t s[TS_MAX_DIMS];
    int nd = 0;
    for (int d = 0; d < ids->ndim; d++) s[nd++] = ids->shape[d];
    for (int d = 1; d < table->ndim; d++) s[nd++] = table->shape[d];
    ts_tensor *src[2] = {table, ids};
    return ts_graph_add_node(g, TS_OP_GET_ROWS, table->dtype, nd, s, src, 2);
}

ts_status ts_topk(ts_graph *g, ts_tensor *x, int k, ts_tensor **values, ts_tensor **indices) {
    if (values) *values = NULL;
    if (indices) *indices = NULL;
    if (!x) return g ? (g->status ? g->status : TS_ERR_INVALID_ARG) : TS_ERR_INVALID_ARG;
    if (!need_float(g, "topk", x)) return g->status;
    if (x->ndim < 1 || k < 1 || k > x->shape[x->ndim - 1]) {
        fail(g, TS_ERR_SHAPE, "topk", "k must be in 1..last dimension", x, NULL);
        return g->status;
    }
    int64_t s[TS_MAX_DIMS];
    memcpy(s, x->shape, sizeof s);
    s[x->ndim - 1] = k;
    ts_tensor *idx = ts_graph_add_node(g, TS_OP_TOPK, TS_I32, x->ndim, s, &x, 1);
    if (!idx) return g->status;
    idx->ip[0] = k;
    if (indices) *indices = idx;
    if (values) {
        *values = ts_gather(g, x, -1, idx);
        if (!*values) return g->status;
    }
    return TS_OK;
}

static bool index_shape_ok(const ts_tensor *x, const ts_tensor *idx, int axis) {
    if (idx->ndim != x->ndim) return false;
    for (int d = 0; d < x->ndim; d++)
        if (d != axis && idx->shape[d] > x->shape[d]) return false;
    return true;
}

ts_tensor *ts_gather(ts_graph *g, ts_tensor *x, int axis, ts_tensor *idx) {
    if (!x || !idx) return NULL;
    if (!need_int(g, "gather", idx)) return NULL;
    if (is_packed(x->dtype)) return fail(g, TS_ERR_DTYPE, "gather", "packed dtype", x, NULL);
    int a = norm_axis(g, "gather", x, axis);
    if (a < 0) return NULL;
    if (!index_shape_ok(x, idx, a))
        return fail(g, TS_ERR_SHAPE, "gather", "index must have x's rank and no larger dims off the axis", x, idx);
    ts_tensor *src[2] = {x, idx};
    ts_tensor *r = ts_graph_add_node(g, TS_OP_GATHER, x->dtype, idx->ndim, idx->shape, src, 2);
    if (r) r->ip[0] = a;
    return r;
}

ts_tensor *ts_scatter_add(ts_graph *g, ts_tensor *base, int axis, ts_tensor *idx, ts_tensor *values) {
    if (!base || !idx || !values) return NULL;
    if (!need_int(g, "scatter_add", idx)) return NULL;
    if (!need_float(g, "scatter_add", base)) return NULL;
    if (values->dtype != base->dtype) return fail(g, TS_ERR_DTYPE, "scatter_add", "values dtype differs from base", base, values);
    int a = norm_axis(g, "scatter_add", base, axis);
    if (a < 0) return NULL;
    if (!index_shape_ok(base, idx, a))
        return fail(g, TS_ERR_SHAPE, "scatter_add", "index must have base's rank and no larger dims off the axis", base, idx);
    if (!ts_same_shape(idx, values)) return fail(g, TS_ERR_SHAPE, "scatter_add", "values must have the index's shape", idx, values);
    ts_tensor *src[3] = {base, idx, values};
    ts_tensor *r = ts_graph_add_node(g, TS_OP_SCATTER_ADD, base->dtype, base->ndim, base->shape, src, 3);
    if (r) r->ip[0] = a;
    return r;
}

static bool cross_entropy_ok(ts_graph *g, const char *name, ts_tensor *logits, ts_tensor *targets) {
    if (!need_float(g, name, logits) || !need_int(g, name, targets)) return false;
    bool ok = logits->ndim >= 2 && targets->ndim == logits->ndim - 1;
    for (int d = 0; ok && d < targets->ndim; d++) ok = targets->shape[d] == logits->shape[d];
    if (!ok) fail(g, TS_ERR_SHAPE, name, "targets must have the shape of logits without its last axis", logits, targets);
    return ok;
}

ts_tensor *ts_cross_entropy(ts_graph *g, ts_tensor *logits, ts_tensor *targets) {
    if (!logits || !targets) return NULL;
    if (!cross_entropy_ok(g, "cross_entropy", logits, targets)) return NULL;
    int64_t one = 1;
    ts_tensor *src[2] = {logits, targets};
    return ts_graph_add_node(g, TS_OP_CROSS_ENTROPY, logits->dtype, 1, &one, src, 2);
}

/* ---------------------------------------------------------------- attention */

/* The tensors of one attention node; sink, extra/extra_idx and key_start may be NULL (absent). */
typedef struct {
    ts_tensor *q, *k, *v, *sink, *extra, *extra_idx, *key_start;
} attention_inputs;

static bool dims_are(const ts_tensor *t, int ndim) { return t->ndim == ndim; }

/* fail() for the checks below, which answer yes / no. */
static bool refuse(ts_graph *g, ts_status s, const char *op, const char *what, const ts_tensor *a, const ts_tensor *b) {
    fail(g, s, op, what, a, b);
    return false;
}

static bool attention_qkv_ok(ts_graph *g, const char *name, const attention_inputs *in) {
    ts_tensor *q = in->q, *k = in->k, *v = in->v;
    if (!need_float(g, name, q)) return false;
    if (is_packed(q->dtype)) return refuse(g, TS_ERR_DTYPE, name, "packed dtype", q, NULL);
    if (k->dtype != q->dtype) return refuse(g, TS_ERR_DTYPE, name, "k must have q's dtype", q, k);
    if (v->dtype != q->dtype) return refuse(g, TS_ERR_DTYPE, name, "v must have q's dtype", q, v);
    if (!dims_are(q, 4)) return refuse(g, TS_ERR_SHAPE, name, "q must be [B, T, H, D]", q, NULL);
    if (!dims_are(k, 4) || k->shape[0] != q->shape[0] || k->shape[3] != q->shape[3])
        return refuse(g, TS_ERR_SHAPE, name, "k must be [B, S, Hk, D] with q's B and D", q, k);
    if (!dims_are(v, 4) || v->shape[0] != k->shape[0] || v->shape[1] != k->shape[1] || v->shape[2] != k->shape[2])
        return refuse(g, TS_ERR_SHAPE, name, "v must be [B, S, Hk, Dv] with k's B, S and Hk", k, v);
    if (q->shape[2] % k->shape[2])
        return refuse(g, TS_ERR_SHAPE, name, "q's heads H must be a multiple of k's heads Hk", q, k);
    return true;
}

static bool attention_sink_ok(ts_graph *g, const char *name, const attention_inputs *in) {
    ts_tensor *q = in->q, *sink = in->sink;
    if (!sink) return true;
    if (!need_float(g, name, sink)) return false;
    if (is_packed(sink->dtype)) return refuse(g, TS_ERR_DTYPE, name, "packed dtype", sink, NULL);
    if (!dims_are(sink, 1) || sink->shape[0] != q->shape[2])
        return refuse(g, TS_ERR_SHAPE, name, "sink must be [H], one logit per query head", q, sink);
    return true;
}

static bool attention_extra_ok(ts_graph *g, const char *name, const attention_inputs *in) {
    ts_tensor *q = in->q, *k = in->k, *v = in->v, *extra = in->extra, *idx = in->extra_idx;
    if (!extra && !idx) return true;
    if (!extra || !idx) {
        ts_graph_set_error(g, TS_ERR_INVALID_ARG, "%s: extra and extra_idx must be given together", name);
        return false;
    }
    if (extra->dtype != q->dtype) return refuse(g, TS_ERR_DTYPE, name, "extra must have q's dtype", q, extra);
    int64_t D = k->shape[3], Dv = v->shape[3];
    if (!dims_are(extra, 4) || extra->shape[0] != k->shape[0] || extra->shape[2] != k->shape[2] ||
        (extra->shape[3] != D && extra->shape[3] != D + Dv))
        return refuse(g, TS_ERR_SHAPE, name,
                      "extra must be [B, N, Hk, D] (key and value in one) or [B, N, Hk, D + Dv] (key | value) with "
                      "k's B, Hk and D",
                      k, extra);
    if (extra->shape[3] != D + Dv && Dv != D)
        return refuse(g, TS_ERR_SHAPE, name,
                      "extra entries of width D are values too, so v's Dv must equal D (or give key | value, D + Dv)",
                      v, extra);
    if (!need_int(g, name, idx)) return false;
    if (!dims_are(idx, 3) || idx->shape[0] != q->shape[0] || idx->shape[1] != q->shape[1])
        return refuse(g, TS_ERR_SHAPE, name, "extra_idx must be [B, T, E] with q's B and T", q, idx);
    return true;
}

static bool attention_key_start_ok(ts_graph *g, const char *name, const attention_inputs *in) {
    ts_tensor *q = in->q, *ks = in->key_start;
    if (!ks) return true;
    if (!need_int(g, name, ks)) return false;
    if (!dims_are(ks, 2) || ks->shape[0] != q->shape[0] || ks->shape[1] != q->shape[1])
        return refuse(g, TS_ERR_SHAPE, name, "key_start must be [B, T] with q's B and T", q, ks);
    return true;
}

static bool attention_params_ok(ts_graph *g, const char *name, const ts_tensor *q, int32_t window, float scale) {
    if (window < 0) return refuse(g, TS_ERR_INVALID_ARG, name, "window must be >= 0 (0: unlimited)", q, NULL);
    if (!isfinite(scale)) return refuse(g, TS_ERR_INVALID_ARG, name, "scale must be finite", q, NULL);
    return true;
}

/* Records an attention node (op ATTENTION, or ATTENTION_BACK with dout and the forward's out)
 * after every check. Sources are q, k, v, then the optional ones that are present (ip[2] / ip[3]
 * / ip[4] say which), then dout and out. */
static ts_tensor *attention_node(ts_graph *g, ts_op op, const attention_inputs *in, ts_tensor *dout, ts_tensor *out,
                                 bool causal, int32_t window, float scale) {
    const char *name = ts_op_name(op);
    if (!attention_qkv_ok(g, name, in) || !attention_sink_ok(g, name, in) || !attention_extra_ok(g, name, in) ||
        !attention_key_start_ok(g, name, in) || !attention_params_ok(g, name, in->q, window, scale))
        return NULL;
    ts_tensor *q = in->q, *v = in->v;
    int64_t out_shape[4] = {q->shape[0], q->shape[1], q->shape[2], v->shape[3]};
    ts_tensor *src[TS_MAX_SRC] = {q, in->k, v};
    int n = 3;
    if (in->sink) src[n++] = in->sink;
    if (in->extra) {
        src[n++] = in->extra;
        src[n++] = in->extra_idx;
    }
    if (in->key_start) src[n++] = in->key_start;
    ts_tensor *r;
    if (op == TS_OP_ATTENTION) {
        r = ts_graph_add_node(g, op, q->dtype, 4, out_shape, src, n);
    } else {
        if (!need_float(g, name, dout) || !need_float(g, name, out)) return NULL;
        bool fits = dims_are(dout, 4) && dims_are(out, 4);
        for (int d = 0; fits && d < 4; d++) fits = dout->shape[d] == out_shape[d] && out->shape[d] == out_shape[d];
        if (!fits)
            return fail(g, TS_ERR_SHAPE, name, "dout and out must be [B, T, H, Dv], the attention output's shape", dout,
                        out);
        src[n++] = dout;
        src[n++] = out;
        int64_t total = ts_nelements(q) + ts_nelements(in->k) + ts_nelements(v); /* dq | dk | dv */
        if (in->sink) total += ts_nelements(in->sink);                             /* | dsink */
        if (in->extra) total += ts_nelements(in->extra);                           /* | dextra */
        r = ts_graph_add_node(g, op, q->dtype == TS_F64 ? TS_F64 : TS_F32, 1, &total, src, n);
    }
    if (r) {
        r->ip[0] = causal;
        r->ip[1] = window;
        r->ip[2] = in->sink != NULL;
        r->ip[3] = in->extra != NULL;
        r->ip[4] = in->key_start != NULL;
        r->fp[0] = scale;
    }
    return r;
}

ts_tensor *ts_attention(ts_graph *g, ts_tensor *q, ts_tensor *k, ts_tensor *v, const ts_attention_params *p) {
    if (!q || !k || !v) return NULL;
    if (!p) return fail(g, TS_ERR_INVALID_ARG, "attention", "params is NULL", q, NULL);
    attention_inputs in = {q, k, v, p->sink, p->extra, p->extra_idx, p->key_start};
    return attention_node(g, TS_OP_ATTENTION, &in, NULL, NULL, p->causal, p->window, p->scale);
}

/* ts_op_node's path: unpacks the compact source list as ip[2] (sink), ip[3] (extras) and ip[4]
 * (key_start) say; parameters past n_ip count as 0 (callers from before key_start pass 4). */
static ts_tensor *attention_from_sources(ts_graph *g, ts_op op, ts_tensor *const *src, int n_src,
                                         const int32_t *given_ip, int n_ip, const float *fp) {
    int32_t ip[5] = {0};
    memcpy(ip, given_ip, (size_t)(n_ip < 0 ? 0 : n_ip < 5 ? n_ip : 5) * sizeof ip[0]);
    bool has_sink = ip[2] != 0, has_extra = ip[3] != 0, has_key_start = ip[4] != 0, back = op == TS_OP_ATTENTION_BACK;
    int want = 3 + has_sink + 2 * has_extra + has_key_start + 2 * back;
    if (n_src != want) {
        ts_graph_set_error(g, TS_ERR_INVALID_ARG, "%s: %d sources given, expected %d (q, k, v%s%s%s%s)",
                           ts_op_name(op), n_src, want, has_sink ? ", sink" : "", has_extra ? ", extra, extra_idx" : "",
                           has_key_start ? ", key_start" : "", back ? ", dout, out" : "");
        return NULL;
    }
    attention_inputs in = {src[0], src[1], src[2], NULL, NULL, NULL, NULL};
    int i = 3;
    if (has_sink) in.sink = src[i++];
    if (has_extra) {
        in.extra = src[i++];
        in.extra_idx = src[i++];
    }
    if (has_key_start) in.key_start = src[i++];
    return attention_node(g, op, &in, back ? src[i] : NULL, back ? src[i + 1] : NULL, ip[0] != 0, ip[1], fp[0]);
}

/* ---------------------------------------------------------------- sinkhorn */

/* SINKHORN (dy NULL) or SINKHORN_BACK after its checks: x [..., n, n] float, n small enough for
 * the kernels' per-matrix registers, iters and eps in range, dy (backward) shaped like x. */
static ts_tensor *sinkhorn_node(ts_graph *g, ts_op op, ts_tensor *x, ts_tensor *dy, int iters, float eps) {
    const char *name = ts_op_name(op);
    if (!need_float(g, name, x) || (dy && !need_float(g, name, dy))) return NULL;
    if (is_packed(x->dtype)) return fail(g, TS_ERR_DTYPE, name, "packed dtype", x, NULL);
    if (x->ndim < 2 || x->shape[x->ndim - 1] != x->shape[x->ndim - 2])
        return fail(g, TS_ERR_SHAPE, name, "x must be [..., n, n]", x, NULL);
    if (x->shape[x->ndim - 1] > TS_SINKHORN_MAX_N) {
        char m[64];
        snprintf(m, sizeof m, "n must be <= %d", TS_SINKHORN_MAX_N);
        return fail(g, TS_ERR_SHAPE, name, m, x, NULL);
    }
    if (iters < 1 || iters > TS_SINKHORN_MAX_ITERS) {
        char m[64];
        snprintf(m, sizeof m, "iters %d outside 1..%d", iters, TS_SINKHORN_MAX_ITERS);
        return fail(g, TS_ERR_INVALID_ARG, name, m, x, NULL);
    }
    if (!(eps >= 0) || !isfinite(eps)) return fail(g, TS_ERR_INVALID_ARG, name, "eps must be finite and >= 0", x, NULL);
    if (dy && !ts_same_shape(x, dy)) return fail(g, TS_ERR_SHAPE, name, "dy must have the shape of x", x, dy);
    ts_tensor *src[2] = {x, dy};
    ts_tensor *r = ts_graph_add_node(g, op, dy ? dy->dtype : x->dtype, x->ndim, x->shape, src, dy ? 2 : 1);
    if (r) {
        r->ip[0] = iters;
        r->fp[0] = eps;
    }
    return r;
}

ts_tensor *ts_sinkhorn(ts_graph *g, ts_tensor *x, int iters, float eps) {
    return x ? sinkhorn_node(g, TS_OP_SINKHORN, x, NULL, iters, eps) : NULL;
}

/* ---------------------------------------------------------------- matmul_id */

/* ids of matmul_id / matmul_id_grad_w: i32 or i64, [T, Kk]. */
static bool pair_ids_ok(ts_graph *g, const char *name, const ts_tensor *ids) {
    if (!need_int(g, name, ids)) return false;
    return ids->ndim == 2 || refuse(g, TS_ERR_SHAPE, name, "ids must be [T, Kk]", ids, NULL);
}

/* The row length L of a per-pair operand: t is [T, L] (one row per token, shared by its slots)
 * or [T, Kk, L] (one row per slot) for ids [T, Kk]; -1 (error recorded) otherwise. */
static int64_t pair_row_len(ts_graph *g, const char *name, const ts_tensor *t, const ts_tensor *ids) {
    if (!need_float(g, name, t)) return -1;
    if (is_packed(t->dtype)) {
        refuse(g, TS_ERR_DTYPE, name, "packed dtype", t, NULL);
        return -1;
    }
    bool ok = (t->ndim == 2 || t->ndim == 3) && t->shape[0] == ids->shape[0] &&
              (t->ndim == 2 || t->shape[1] == ids->shape[1]);
    if (!ok) {
        refuse(g, TS_ERR_SHAPE, name, "operand must be [T, L] or [T, Kk, L] with the T, Kk of ids [T, Kk]", t, ids);
        return -1;
    }
    return t->shape[t->ndim - 1];
}

/* MATMUL_ID after its checks: w [E, N, K] (trans_w: [E, K, N]), x rows of K, ids [T, Kk]. */
static ts_tensor *matmul_id_node(ts_graph *g, ts_tensor *w, ts_tensor *x, ts_tensor *ids, bool trans_w, bool wide) {
    const char *name = "matmul_id";
    if (!pair_ids_ok(g, name, ids) || !need_float(g, name, w)) return NULL;
    if (is_packed(w->dtype)) return fail(g, TS_ERR_DTYPE, name, "packed dtype", w, NULL);
    if (w->ndim != 3) return fail(g, TS_ERR_SHAPE, name, "w must be [E, N, K]", w, NULL);
    int64_t len = pair_row_len(g, name, x, ids);
    if (len < 0) return NULL;
    int64_t k_in = w->shape[trans_w ? 1 : 2], n_out = w->shape[trans_w ? 2 : 1];
    if (len != k_in)
        return fail(g, TS_ERR_SHAPE, name, trans_w ? "x's rows must have the length of w's dim 1 (w transposed)"
                                                   : "x's rows must have the length of w's last dim", w, x);
    int64_t shape[3] = {ids->shape[0], ids->shape[1], n_out};
    ts_tensor *src[3] = {w, x, ids};
    ts_tensor *r = ts_graph_add_node(g, TS_OP_MATMUL_ID, product_dtype(w->dtype, x->dtype, wide), 3, shape, src, 3);
    if (r) {
        r->ip[0] = trans_w;
        r->ip[1] = wide;
    }
    return r;
}

ts_tensor *ts_matmul_id(ts_graph *g, ts_tensor *w, ts_tensor *x, ts_tensor *ids) {
    if (!w || !x || !ids) return NULL;
    if (autocasts(g, w, x)) return matmul_id_node(g, autocast_operand(g, w), autocast_operand(g, x), ids, false, true);
    return matmul_id_node(g, w, x, ids, false, false);
}

/* MATMUL_ID_GRAD_W after its checks: a rows of N, b rows of K, ids [T, Kk], E >= 1 experts. */
static ts_tensor *matmul_id_grad_w_node(ts_graph *g, ts_tensor *a, ts_tensor *b, ts_tensor *ids, int32_t n_experts) {
    const char *name = "matmul_id_grad_w";
    if (!pair_ids_ok(g, name, ids)) return NULL;
    int64_t N = pair_row_len(g, name, a, ids), K = N < 0 ? -1 : pair_row_len(g, name, b, ids);
    if (N < 0 || K < 0) return NULL;
    if (n_experts < 1) return fail(g, TS_ERR_INVALID_ARG, name, "the expert count ip[0] must be >= 1", ids, NULL);
    int64_t shape[3] = {n_experts, N, K};
    ts_tensor *src[3] = {a, b, ids};
    ts_tensor *r = ts_graph_add_node(g, TS_OP_MATMUL_ID_GRAD_W, product_dtype(a->dtype, b->dtype, false), 3, shape, src, 3);
    if (r) r->ip[0] = n_experts;
    return r;
}

/* ts_op_node's path for both: exactly three sources. */
static ts_tensor *matmul_id_from_sources(ts_graph *g, ts_op op, ts_tensor *const *src, int n_src, const int32_t *ip) {
    if (n_src != 3) {
        ts_graph_set_error(g, TS_ERR_INVALID_ARG, "%s: %d sources given, expected 3 (%s, ids)", ts_op_name(op), n_src,
                           op == TS_OP_MATMUL_ID ? "w, x" : "a, b");
        return NULL;
    }
    return op == TS_OP_MATMUL_ID ? matmul_id_node(g, src[0], src[1], src[2], ip[0] != 0, ip[1] != 0)
                                 : matmul_id_grad_w_node(g, src[0], src[1], src[2], ip[0]);
}

/* ---------------------------------------------------------------- backward helpers */

static ts_tensor *same_shape_back(ts_graph *g, ts_op op, ts_tensor *x, ts_tensor *dy, const float *fp) {
    if (!x || !dy) return NULL;
    const char *name = ts_op_name(op);
    if (!need_float(g, name, x) || !need_float(g, name, dy)) return NULL;
    if (!ts_same_shape(x, dy)) return fail(g, TS_ERR_SHAPE, name, "shapes differ", x, dy);
    ts_tensor *src[2] = {x, dy};
    ts_tensor *r = ts_graph_add_node(g, op, dy->dtype, x->ndim, x->shape, src, 2);
    if (r && fp) {
        r->fp[0] = fp[0];
        r->fp[1] = fp[1];
    }
    return r;
}

static bool reduced_shape(const ts_tensor *x, const ts_tensor *y, int a) {
    if (y->ndim != x->ndim) return false;
    for (int d = 0; d < x->ndim; d++)
        if (y->shape[d] != (d == a ? 1 : x->shape[d])) return false;
    return true;
}

/* The generic constructor: unpacks parameters and calls the checked constructor. */
ts_tensor *ts_op_node(ts_graph *g, ts_op op, ts_tensor *const *src, int n_src, const int32_t *ip, int n_ip,
                      const float *fp, int n_fp) {
    if (!g) return NULL;
    /* callers pass as many parameters as they mean; the rest read as 0 */
    int32_t ipad[8] = {0};
    float fpad[4] = {0};
    if (ip) memcpy(ipad, ip, (size_t)(n_ip < 0 ? 0 : n_ip > 8 ? 8 : n_ip) * sizeof *ipad);
    if (fp) memcpy(fpad, fp, (size_t)(n_fp < 0 ? 0 : n_fp > 4 ? 4 : n_fp) * sizeof *fpad);
    ip = ipad;
    fp = fpad;
    ts_tensor *s0 = n_src > 0 ? src[0] : NULL, *s1 = n_src > 1 ? src[1] : NULL, *s2 = n_src > 2 ? src[2] : NULL;
    if (any_null(src, n_src > 2 && op == TS_OP_RMS_NORM_BACK ? 2 : n_src)) return NULL;
    int64_t shp[TS_MAX_DIMS];
    switch (op) {
    case TS_OP_RESHAPE: case TS_OP_EXPAND:
        for (int d = 0; d < ip[0] && d < TS_MAX_DIMS; d++) shp[d] = ip[1 + d];
        return op == TS_OP_RESHAPE ? ts_reshape(g, s0, ip[0], shp) : ts_expand(g, s0, ip[0], shp);
    case TS_OP_PERMUTE: {
        int perm[TS_MAX_DIMS];
        for (int d = 0; d < TS_MAX_DIMS; d++) perm[d] = ip[d];
        return ts_permute(g, s0, perm);
    }
    case TS_OP_SLICE: return ts_slice(g, s0, ip[0], ip[1], ip[2]);
    case TS_OP_FILL:
        for (int d = 0; d < ip[1] && d < TS_MAX_DIMS; d++) shp[d] = ip[2 + d];
        return ts_fill(g, (ts_dtype)ip[0], ip[1], shp, fp[0]);
    case TS_OP_COPY: return ts_cast(g, s0, (ts_dtype)ip[0]);
    case TS_OP_CONCAT: return ts_concat(g, src, n_src, ip[0]);
    case TS_OP_ADD: return ts_add(g, s0, s1);
    case TS_OP_SUB: return ts_sub(g, s0, s1);
    case TS_OP_MUL: return ts_mul(g, s0, s1);
    case TS_OP_DIV: return ts_div(g, s0, s1);
    case TS_OP_SCALE: return ts_scale(g, s0, fp[0]);
    case TS_OP_EXP: return ts_exp(g, s0);
    case TS_OP_LOG: return ts_log(g, s0);
    case TS_OP_SQRT: return ts_sqrt(g, s0);
    case TS_OP_SIGMOID: return ts_sigmoid(g, s0);
    case TS_OP_SOFTPLUS: return ts_softplus(g, s0);
    case TS_OP_SILU: return ts_silu(g, s0);
    case TS_OP_RELU: return ts_relu(g, s0);
    case TS_OP_CLAMP: return ts_clamp(g, s0, fp[0], fp[1]);
    case TS_OP_SUM: return ts_sum(g, s0, ip[0], true);
    case TS_OP_MEAN: return ts_mean(g, s0, ip[0], true);
    case TS_OP_MAX: return ts_max(g, s0, ip[0], true);
    case TS_OP_SUM_TO:
        for (int d = 0; d < ip[0] && d < TS_MAX_DIMS; d++) shp[d] = ip[1 + d];
        return ts_sum_to(g, s0, ip[0], shp);
    case TS_OP_MATMUL: return matmul_node(g, s0, s1, ip[0], ip[1], ip[2] != 0);
    case TS_OP_SOFTMAX: return ts_softmax(g, s0, ip[0], s1);
    case TS_OP_RMS_NORM: return ts_rms_norm(g, s0, s1, fp[0]);
    case TS_OP_ROPE: return ts_rope(g, s0, s1, ip[0], ip[1]);
    case TS_OP_GET_ROWS: return ts_get_rows(g, s0, s1);
    case TS_OP_TOPK: {
        ts_tensor *idx = NULL;
        ts_topk(g, s0, ip[0], NULL, &idx);
        return idx;
    }
    case TS_OP_GATHER: return ts_gather(g, s0, ip[0], s1);
    case TS_OP_SCATTER_ADD: return ts_scatter_add(g, s0, ip[0], s1, s2);
    case TS_OP_CROSS_ENTROPY: return ts_cross_entropy(g, s0, s1);
    case TS_OP_ATTENTION: case TS_OP_ATTENTION_BACK:
        return attention_from_sources(g, op, src, n_src, ip, n_ip, fp);
    case TS_OP_SINKHORN: return ts_sinkhorn(g, s0, ip[0], fp[0]);
    case TS_OP_SINKHORN_BACK:
        if (n_src != 2) {
            ts_graph_set_error(g, TS_ERR_INVALID_ARG, "sinkhorn_back: %d sources given, expected 2 (x, dy)", n_src);
            return NULL;
        }
        return sinkhorn_node(g, op, s0, s1, ip[0], fp[0]);
    case TS_OP_MATMUL_ID: case TS_OP_MATMUL_ID_GRAD_W:
        return matmul_id_from_sources(g, op, src, n_src, ip);
    case TS_OP_SWIGLU: case TS_OP_SWIGLU_BACK:
        return swiglu_node(g, op, src, n_src, fp[0]);

    case TS_OP_SIGMOID_BACK: case TS_OP_SILU_BACK: case TS_OP_RELU_BACK: case TS_OP_CLAMP_BACK:
        return same_shape_back(g, op, s0, s1, fp);
    case TS_OP_MAX_BACK: case TS_OP_SOFTMAX_BACK: {
        ts_tensor *x = s0, *y = op == TS_OP_MAX_BACK ? s1 : s0, *dy = op == TS_OP_MAX_BACK ? s2 : s1;
        if (!x || !y || !dy) return NULL;
        int a = norm_axis(g, ts_op_name(op), x, ip[0]);
        if (a < 0) return NULL;
        if (op == TS_OP_MAX_BACK ? !(reduced_shape(x, y, a) && reduced_shape(x, dy, a)) : !ts_same_shape(y, dy))
            return fail(g, TS_ERR_SHAPE, ts_op_name(op), "gradient shape does not match", x, dy);
        ts_tensor *r = ts_graph_add_node(g, op, dy->dtype, x->ndim, x->shape, src, n_src);
        if (r) r->ip[0] = a;
        return r;
    }
    case TS_OP_RMS_NORM_BACK: {
        if (!s0 || !s1) return NULL;
        if (!ts_same_shape(s0, s1)) return fail(g, TS_ERR_SHAPE, "rms_norm_back", "shapes differ", s0, s1);
        if (s2 && (s2->ndim != 1 || s2->shape[0] != s0->shape[s0->ndim - 1]))
            return fail(g, TS_ERR_SHAPE, "rms_norm_back", "weight must match the last dimension", s0, s2);
        ts_tensor *in[3] = {s0, s1, s2};
        ts_tensor *r = ts_graph_add_node(g, op, s1->dtype, s0->ndim, s0->shape, in, s2 ? 3 : 2);
        if (r) r->fp[0] = fp[0];
        return r;
    }
    case TS_OP_GET_ROWS_BACK: {
        /* src0 ids, src1 dy; ip[0] = number of table rows */
        if (!need_int(g, "get_rows_back", s0)) return NULL;
        int nd = 1 + s1->ndim - s0->ndim;
        bool ok = ip[0] >= 1 && nd >= 1 && nd <= TS_MAX_DIMS;
        for (int d = 0; ok && d < s0->ndim; d++) ok = s1->shape[d] == s0->shape[d];
        if (!ok) return fail(g, TS_ERR_SHAPE, "get_rows_back", "dy must be ids.shape + row shape", s0, s1);
        shp[0] = ip[0];
        for (int d = 1; d < nd; d++) shp[d] = s1->shape[s0->ndim + d - 1];
        ts_tensor *r = ts_graph_add_node(g, op, s1->dtype, nd, shp, src, 2);
        if (r) r->ip[0] = ip[0];
        return r;
    }
    case TS_OP_CROSS_ENTROPY_BACK: {
        if (!cross_entropy_ok(g, "cross_entropy_back", s0, s1)) return NULL;
        if (ts_nelements(s2) != 1) return fail(g, TS_ERR_SHAPE, "cross_entropy_back", "dloss must have one element", s2, NULL);
        return ts_graph_add_node(g, op, s0->dtype, s0->ndim, s0->shape, src, 3);
    }
    default:
        ts_graph_set_error(g, TS_ERR_INVALID_ARG, "op_node: %s cannot be built generically", ts_op_name(op));
        return NULL;
    }
}
