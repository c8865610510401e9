/* autodiff.c - reverse-mode automatic differentiation: ts_graph_backward appends the gradient
 * graph of a scalar loss to the forward graph, and ts_op_backward holds the backward rule of
 * every differentiable op.
 *
 * Gradients are ordinary graph nodes built with the public op constructors (ts_mul, ts_sum_to,
 * ...) and the backward helper ops (TS_OP_*_BACK via ts_op_node), so the memory planner and
 * the executor treat them like any other node, and every backend that runs the forward ops and
 * the helpers also runs backward. Nodes are stored in topological order, so walking them from
 * the loss down to node 0 visits every node after all of its consumers: when a node is
 * reached, its gradient (t->grad, summed over all uses) is complete.
 *
 * Only nodes flagged REQUIRES_GRAD (a PARAM is upstream; set by ts_graph_add_node) receive
 * gradients; every node created here is flagged GRAD. Second derivatives are out of scope:
 * the backward helper ops have no backward rule of their own. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "graph_internal.h"

#define DESC(t, buf) ts_tensor_describe((t), (buf), sizeof(buf))

static bool needs_grad(const ts_tensor *t) { return t && (t->flags & TS_FLAG_REQUIRES_GRAD); }

/* The dtype of t's gradient: t's own, except for a cast to a narrower float (autocast's bf16
 * copies of f32 weights and activations), whose gradient keeps its source's precision, so that
 * it reaches an f32 weight unrounded. */
static ts_dtype grad_dtype(const ts_tensor *t) {
    if (t->op != TS_OP_COPY) return t->dtype;
    const ts_dtype_info *to = ts_dtype_get_info(t->dtype), *from = ts_dtype_get_info(t->src[0]->dtype);
    return to->is_float && from->is_float && to->bits < from->bits ? t->src[0]->dtype : t->dtype;
}

/* ---------------------------------------------------------------- shape helpers */

/* Undoes a broadcast: sums x down to the shape of `like` (x itself when shapes agree). */
static ts_tensor *sum_to_like(ts_graph *g, ts_tensor *x, const ts_tensor *like) {
    return ts_sum_to(g, x, like->ndim, like->shape);
}

/* Broadcasts x up to the shape of `like` and materializes it when the broadcast really
 * stretches a dimension: a stride-0 gradient would otherwise reach every consumer (and, for a
 * parameter, the optimizer) as a view. */
static ts_tensor *expand_like(ts_graph *g, ts_tensor *x, const ts_tensor *like) {
    ts_tensor *e = ts_expand(g, x, like->ndim, like->shape);
    if (e && !ts_is_contiguous(e)) e = ts_cont(g, e);
    return e;
}

static ts_tensor *back_op(ts_graph *g, ts_op op, ts_tensor *s0, ts_tensor *s1, ts_tensor *s2,
                          const int32_t *ip, int n_ip, const float *fp, int n_fp) {
    ts_tensor *src[3] = {s0, s1, s2};
    return ts_op_node(g, op, src, s2 ? 3 : 2, ip, n_ip, fp, n_fp);
}

/* ---------------------------------------------------------------- views and movement */

static void back_reshape(ts_graph *g, ts_tensor *node, ts_tensor *dy, ts_tensor **dsrc) {
    ts_tensor *x = node->src[0];
    dsrc[0] = ts_reshape(g, dy, x->ndim, x->shape); /* copies first if dy is not contiguous */
}

static void back_permute(ts_graph *g, ts_tensor *node, ts_tensor *dy, ts_tensor **dsrc) {
    /* out dim d is src dim perm[d], so src dim perm[d] comes back from dy dim d */
    int inverse[TS_MAX_DIMS] = {0};
    for (int d = 0; d < node->ndim; d++) inverse[node->ip[d]] = d;
    dsrc[0] = ts_permute(g, dy, inverse);
}

/* The slice's gradient is dy placed back at its position, zeros elsewhere on the axis. */
static void back_slice(ts_graph *g, ts_tensor *node, ts_tensor *dy, ts_tensor **dsrc) {
    ts_tensor *x = node->src[0];
    int axis = node->ip[0];
    int64_t before = node->ip[1], after = x->shape[axis] - node->ip[1] - node->ip[2];
    int64_t shape[TS_MAX_DIMS];
    memcpy(shape, dy->shape, sizeof shape);
    ts_tensor *parts[3];
    int n = 0;
    if (before > 0) {
        shape[axis] = before;
        parts[n++] = ts_fill(g, dy->dtype, dy->ndim, shape, 0.0f);
    }
    parts[n++] = dy;
    if (after > 0) {
        shape[axis] = after;
        parts[n++] = ts_fill(g, dy->dtype, dy->ndim, shape, 0.0f);
    }
    dsrc[0] = ts_concat(g, parts, n, axis); /* n == 1 gives dy itself */
}

static void back_expand(ts_graph *g, ts_tensor *node, ts_tensor *dy, ts_tensor **dsrc) {
    dsrc[0] = sum_to_like(g, dy, node->src[0]);
}

static void back_copy(ts_graph *g, ts_tensor *node, ts_tensor *dy, ts_tensor **dsrc) {
    ts_tensor *x = node->src[0];
    /* a same-dtype copy (ts_cont) is the identity on values; a cast's derivative is 1 (a narrowing
     * cast's dy already has x's dtype, see grad_dtype) */
    dsrc[0] = dy->dtype == x->dtype ? dy : ts_cast(g, dy, x->dtype);
}

static void back_concat(ts_graph *g, ts_tensor *node, ts_tensor *dy, ts_tensor **dsrc) {
    int axis = node->ip[0];
    int64_t start = 0;
    for (int i = 0; i < node->n_src; i++) {
        int64_t len = node->src[i]->shape[axis];
        if (needs_grad(node->src[i])) dsrc[i] = ts_slice(g, dy, axis, start, len);
        start += len;
    }
}

/* ---------------------------------------------------------------- elementwise */

static void back_binary(ts_graph *g, ts_tensor *node, ts_tensor *dy, ts_tensor **dsrc) {
    ts_tensor *a = node->src[0], *b = node->src[1];
    bool ga = needs_grad(a), gb = needs_grad(b);
    switch (node->op) {
    case TS_OP_ADD:
        if (ga) dsrc[0] = sum_to_like(g, dy, a);
        if (gb) dsrc[1] = sum_to_like(g, dy, b);
        break;
    case TS_OP_SUB:
        if (ga) dsrc[0] = sum_to_like(g, dy, a);
        if (gb) dsrc[1] = ts_scale(g, sum_to_like(g, dy, b), -1.0f); /* negate after reducing */
        break;
    case TS_OP_MUL:
        if (ga) dsrc[0] = sum_to_like(g, ts_mul(g, dy, b), a);
        if (gb) dsrc[1] = sum_to_like(g, ts_mul(g, dy, a), b);
        break;
    case TS_OP_DIV:
        /* out = a / b: da = dy / b, db = -dy * a / b^2 = -dy * out / b (reuses the output) */
        if (ga) dsrc[0] = sum_to_like(g, ts_div(g, dy, b), a);
        if (gb) dsrc[1] = ts_scale(g, sum_to_like(g, ts_div(g, ts_mul(g, dy, node), b), b), -1.0f);
        break;
    default:
        break;
    }
}

static void back_unary(ts_graph *g, ts_tensor *node, ts_tensor *dy, ts_tensor **dsrc) {
    ts_tensor *x = node->src[0];
    switch (node->op) {
    case TS_OP_SCALE: dsrc[0] = ts_scale(g, dy, node->fp[0]); break;
    case TS_OP_EXP: dsrc[0] = ts_mul(g, dy, node); break;                      /* exp' = exp */
    case TS_OP_LOG: dsrc[0] = ts_div(g, dy, x); break;                         /* 1/x */
    case TS_OP_SQRT: dsrc[0] = ts_scale(g, ts_div(g, dy, node), 0.5f); break;  /* 1/(2 sqrt x) */
    case TS_OP_SOFTPLUS: dsrc[0] = ts_mul(g, dy, ts_sigmoid(g, x)); break;    /* softplus' = sigmoid */
    case TS_OP_SIGMOID: dsrc[0] = back_op(g, TS_OP_SIGMOID_BACK, node, dy, NULL, NULL, 0, NULL, 0); break;
    case TS_OP_SILU: dsrc[0] = back_op(g, TS_OP_SILU_BACK, x, dy, NULL, NULL, 0, NULL, 0); break;
    case TS_OP_RELU: dsrc[0] = back_op(g, TS_OP_RELU_BACK, x, dy, NULL, NULL, 0, NULL, 0); break;
    case TS_OP_CLAMP: dsrc[0] = back_op(g, TS_OP_CLAMP_BACK, x, dy, NULL, NULL, 0, node->fp, 2); break;
    default: break;
    }
}

/* ---------------------------------------------------------------- reductions */

static void back_reduce(ts_graph *g, ts_tensor *node, ts_tensor *dy, ts_tensor **dsrc) {
    ts_tensor *x = node->src[0];
    int32_t axis = node->ip[0];
    switch (node->op) {
    case TS_OP_SUM:
    case TS_OP_SUM_TO: /* every source element contributed once to its output element */
        dsrc[0] = expand_like(g, dy, x);
        break;
    case TS_OP_MEAN: {
        /* divide the small reduced gradient before broadcasting it; by n itself (exact in the
         * fill's float up to 2^24), because a float 1/n would cost f64 gradients ~1e-8 */
        int64_t one = 1;
        ts_tensor *n = ts_fill(g, dy->dtype, 1, &one, (float)x->shape[axis]);
        dsrc[0] = expand_like(g, ts_div(g, dy, n), x);
        break;
    }
    case TS_OP_MAX:
        dsrc[0] = back_op(g, TS_OP_MAX_BACK, x, node, dy, &axis, 1, NULL, 0);
        break;
    default:
        break;
    }
}

/* ---------------------------------------------------------------- transformer ops */

/* C = op(A) op(B), op = transpose when the flag is set. Each gradient is written as one
 * matmul with transpose flags, so no transposed copy is made. The result has C's batch dims,
 * which may be more (or larger) than the source's broadcast ones: sum_to folds them back. */
static void back_matmul(ts_graph *g, ts_tensor *node, ts_tensor *dy, ts_tensor **dsrc) {
    ts_tensor *a = node->src[0], *b = node->src[1];
    bool ta = node->ip[0] != 0, tb = node->ip[1] != 0;
    if (needs_grad(a)) {
        ts_tensor *da = ta ? ts_matmul(g, b, dy, tb, true)    /* A^T = op(B) dy^T */
                           : ts_matmul(g, dy, b, false, !tb); /* A = dy op(B)^T */
        dsrc[0] = sum_to_like(g, da, a);
    }
    if (needs_grad(b)) {
        ts_tensor *db = tb ? ts_matmul(g, dy, a, true, ta)    /* B^T = dy^T op(A) */
                           : ts_matmul(g, a, dy, !ta, false); /* B = op(A)^T dy */
        dsrc[1] = sum_to_like(g, db, b);
    }
}

/* y = softmax(x + mask): the mask receives x's gradient, summed over its broadcast dims. */
static void back_softmax(ts_graph *g, ts_tensor *node, ts_tensor *dy, ts_tensor **dsrc) {
    ts_tensor *x = node->src[0], *mask = node->n_src > 1 ? node->src[1] : NULL;
    int32_t axis = node->ip[0];
    ts_tensor *dx = back_op(g, TS_OP_SOFTMAX_BACK, node, dy, NULL, &axis, 1, NULL, 0);
    if (needs_grad(x)) dsrc[0] = dx;
    if (needs_grad(mask)) dsrc[1] = sum_to_like(g, dx, mask);
}

/* y = w * x * r with r = 1/sqrt(mean(x^2) + eps): dx by the helper op; dw = sum of dy * x * r
 * over every dim but the last, x * r being the unweighted norm recomputed here. */
static void back_rms_norm(ts_graph *g, ts_tensor *node, ts_tensor *dy, ts_tensor **dsrc) {
    ts_tensor *x = node->src[0], *w = node->n_src > 1 ? node->src[1] : NULL;
    float eps = node->fp[0];
    if (needs_grad(x)) dsrc[0] = back_op(g, TS_OP_RMS_NORM_BACK, x, dy, w, NULL, 0, &eps, 1);
    if (needs_grad(w)) dsrc[1] = sum_to_like(g, ts_mul(g, dy, ts_rms_norm(g, x, NULL, eps)), w);
}

/* A rotation's inverse is its transpose: rotate dy by the opposite angle. */
static void back_rope(ts_graph *g, ts_tensor *node, ts_tensor *dy, ts_tensor **dsrc) {
    ts_tensor *x = node->src[0], *angles = node->src[1];
    if (needs_grad(angles)) {
        /* angles come from positions in every model we build; silently dropping a gradient
         * here would leave the parameters behind them with a wrong (partial) gradient */
        char da[160];
        ts_graph_set_error(g, TS_ERR_UNSUPPORTED,
                           "backward: rope angles %s depend on a parameter; gradients with respect to "
                           "rope angles are not implemented",
                           DESC(angles, da));
        return;
    }
    if (needs_grad(x)) dsrc[0] = ts_rope(g, dy, angles, node->ip[0], node->ip[1] == 0);
}

static void back_get_rows(ts_graph *g, ts_tensor *node, ts_tensor *dy, ts_tensor **dsrc) {
    ts_tensor *table = node->src[0], *ids = node->src[1];
    int32_t rows = (int32_t)table->shape[0];
    dsrc[0] = back_op(g, TS_OP_GET_ROWS_BACK, ids, dy, NULL, &rows, 1, NULL, 0);
}

/* gather and scatter_add are each other's adjoints along the same axis and index. */
static void back_gather(ts_graph *g, ts_tensor *node, ts_tensor *dy, ts_tensor **dsrc) {
    ts_tensor *x = node->src[0], *idx = node->src[1];
    dsrc[0] = ts_scatter_add(g, ts_zeros_like(g, x), node->ip[0], idx, dy);
}

static void back_scatter_add(ts_graph *g, ts_tensor *node, ts_tensor *dy, ts_tensor **dsrc) {
    ts_tensor *base = node->src[0], *idx = node->src[1], *values = node->src[2];
    if (needs_grad(base)) dsrc[0] = dy;
    if (needs_grad(values)) dsrc[2] = ts_gather(g, dy, node->ip[0], idx);
}

static void back_cross_entropy(ts_graph *g, ts_tensor *node, ts_tensor *dy, ts_tensor **dsrc) {
    dsrc[0] = back_op(g, TS_OP_CROSS_ENTROPY_BACK, node->src[0], node->src[1], dy, NULL, 0, NULL, 0);
}

/* One ATTENTION_BACK node computes every gradient of an attention node at once (each row's
 * softmax is recomputed there, nothing T x S is stored; the node itself, the forward's output,
 * is its last source, so D = <dout, out> needs no recomputed values); its flat output holds
 * dq | dk | dv | dsink | dextra, each row-major in its source's shape. Each source that needs a gradient
 * gets a slice of that buffer reshaped to its shape: views, no copy. When k and v are the
 * same tensor (V4's shared K=V head), the two slices are summed by the caller like any two
 * uses of one tensor. extra_idx and key_start (integers) get nothing. */
static void back_attention(ts_graph *g, ts_tensor *node, ts_tensor *dy, ts_tensor **dsrc) {
    ts_tensor *src[TS_MAX_SRC];
    int n = node->n_src;
    for (int i = 0; i < n; i++) src[i] = node->src[i];
    src[n] = dy;
    src[n + 1] = node;
    ts_tensor *flat = ts_op_node(g, TS_OP_ATTENTION_BACK, src, n + 2, node->ip, 5, node->fp, 1);
    if (!flat) return;
    int64_t offset = 0;
    for (int i = 0; i < n; i++) {
        ts_tensor *x = node->src[i];
        if (!ts_dtype_get_info(x->dtype)->is_float) continue; /* extra_idx: no part in the buffer */
        int64_t len = ts_nelements(x);
        if (needs_grad(x)) dsrc[i] = ts_reshape(g, ts_slice(g, flat, 0, offset, len), x->ndim, x->shape);
        offset += len;
    }
}

/* One SINKHORN_BACK node recomputes the iterations of each matrix and runs them backwards. */
static void back_sinkhorn(ts_graph *g, ts_tensor *node, ts_tensor *dy, ts_tensor **dsrc) {
    dsrc[0] = back_op(g, TS_OP_SINKHORN_BACK, node->src[0], dy, NULL, node->ip, 1, node->fp, 1);
}

/* out[t, k] = W_e x_row with W_e = w[ids[t, k]] (transposed when ip[0]). dx_row = W_e^T dy[t, k]
 * is the same op with the flag flipped, summed over the slots when x holds one row per token;
 * dw[e] sums dy (x) x (x (x) dy when transposed) over the pairs routed to e, experts without a
 * pair getting zeros: one MATMUL_ID_GRAD_W node. ids get nothing. */
/* One SWIGLU_BACK node computes both gradients; its [2, shape] output holds da, then db. */
static void back_swiglu(ts_graph *g, ts_tensor *node, ts_tensor *dy, ts_tensor **dsrc) {
    ts_tensor *a = node->src[0];
    ts_tensor *both = back_op(g, TS_OP_SWIGLU_BACK, a, node->src[1], dy, NULL, 0, node->fp, 1);
    for (int i = 0; i < 2 && both; i++)
        if (needs_grad(node->src[i])) dsrc[i] = ts_reshape(g, ts_slice(g, both, 0, i, 1), a->ndim, a->shape);
}

static void back_matmul_id(ts_graph *g, ts_tensor *node, ts_tensor *dy, ts_tensor **dsrc) {
    ts_tensor *w = node->src[0], *x = node->src[1], *ids = node->src[2];
    bool trans = node->ip[0] != 0;
    if (needs_grad(x)) {
        int32_t flipped = !trans;
        ts_tensor *src[3] = {w, dy, ids};
        ts_tensor *dx = ts_op_node(g, TS_OP_MATMUL_ID, src, 3, &flipped, 1, NULL, 0);
        dsrc[1] = x->ndim == 2 ? ts_sum(g, dx, 1, false) : dx;
    }
    if (needs_grad(w)) {
        int32_t n_experts = (int32_t)w->shape[0];
        dsrc[0] = back_op(g, TS_OP_MATMUL_ID_GRAD_W, trans ? x : dy, trans ? dy : x, ids, &n_experts, 1, NULL, 0);
    }
}

/* ---------------------------------------------------------------- dispatch */

/* Makes a rule's result exactly what the source needs: its gradient dtype (mixed-dtype matmul
 * and softmax masks produce the wider type) and its shape (a mismatch is a bug in a rule). */
static ts_tensor *fit_to_source(ts_graph *g, ts_tensor *node, int i, ts_tensor *d) {
    ts_tensor *x = node->src[i];
    if (d->dtype != grad_dtype(x)) d = ts_cast(g, d, grad_dtype(x));
    if (d && !ts_same_shape(d, x)) {
        char dn[160], dx[160], dd[160];
        ts_graph_set_error(g, TS_ERR_INTERNAL,
                           "backward: %s rule gave source %d of %s a gradient %s, expected the shape of %s",
                           ts_op_name(node->op), i, DESC(node, dn), DESC(d, dd), DESC(x, dx));
        return NULL;
    }
    return d;
}

ts_status ts_op_backward(ts_graph *g, ts_tensor *node, ts_tensor *dy, ts_tensor *dsrc[TS_MAX_SRC]) {
    for (int i = 0; i < TS_MAX_SRC; i++) dsrc[i] = NULL;
    if (!g) return TS_ERR_INVALID_ARG;
    if (!node || !dy) return ts_graph_set_error(g, TS_ERR_INVALID_ARG, "backward: NULL node or gradient");
    if (g->status != TS_OK) return g->status;
    if (!ts_same_shape(node, dy) || dy->dtype != grad_dtype(node)) {
        char dn[160], dd[160];
        return ts_graph_set_error(g, TS_ERR_INTERNAL, "backward: gradient %s does not match %s",
                                  DESC(dy, dd), DESC(node, dn));
    }

    switch (node->op) {
    case TS_OP_NONE: case TS_OP_FILL: case TS_OP_TOPK: /* leaves, constants, integer indices */
        return TS_OK;
    case TS_OP_RESHAPE: back_reshape(g, node, dy, dsrc); break;
    case TS_OP_PERMUTE: back_permute(g, node, dy, dsrc); break;
    case TS_OP_SLICE: back_slice(g, node, dy, dsrc); break;
    case TS_OP_EXPAND: back_expand(g, node, dy, dsrc); break;
    case TS_OP_COPY: back_copy(g, node, dy, dsrc); break;
    case TS_OP_CONCAT: back_concat(g, node, dy, dsrc); break;
    case TS_OP_ADD: case TS_OP_SUB: case TS_OP_MUL: case TS_OP_DIV:
        back_binary(g, node, dy, dsrc);
        break;
    case TS_OP_SCALE: case TS_OP_EXP: case TS_OP_LOG: case TS_OP_SQRT: case TS_OP_SIGMOID:
    case TS_OP_SOFTPLUS: case TS_OP_SILU: case TS_OP_RELU: case TS_OP_CLAMP:
        back_unary(g, node, dy, dsrc);
        break;
    case TS_OP_SUM: case TS_OP_MEAN: case TS_OP_MAX: case TS_OP_SUM_TO:
        back_reduce(g, node, dy, dsrc);
        break;
    case TS_OP_MATMUL: back_matmul(g, node, dy, dsrc); break;
    case TS_OP_SOFTMAX: back_softmax(g, node, dy, dsrc); break;
    case TS_OP_RMS_NORM: back_rms_norm(g, node, dy, dsrc); break;
    case TS_OP_ROPE: back_rope(g, node, dy, dsrc); break;
    case TS_OP_GET_ROWS: back_get_rows(g, node, dy, dsrc); break;
    case TS_OP_GATHER: back_gather(g, node, dy, dsrc); break;
    case TS_OP_SCATTER_ADD: back_scatter_add(g, node, dy, dsrc); break;
    case TS_OP_CROSS_ENTROPY: back_cross_entropy(g, node, dy, dsrc); break;
    case TS_OP_ATTENTION: back_attention(g, node, dy, dsrc); break;
    case TS_OP_SINKHORN: back_sinkhorn(g, node, dy, dsrc); break;
    case TS_OP_MATMUL_ID: back_matmul_id(g, node, dy, dsrc); break;
    case TS_OP_SWIGLU: back_swiglu(g, node, dy, dsrc); break;
    default: {
        char dn[160];
        if (node->op >= TS_OP_FIRST_BACKWARD_ && node->op < TS_OP_COUNT)
            return ts_graph_set_error(g, TS_ERR_UNSUPPORTED,
                                      "backward: %s depends on a parameter, but backward helper op %s has no "
                                      "gradient (second derivatives are not supported)",
                                      DESC(node, dn), ts_op_name(node->op));
        return ts_graph_set_error(g, TS_ERR_INTERNAL, "backward: no rule for op %s (%s)", ts_op_name(node->op),
                                  DESC(node, dn));
    }
    }

    for (int i = 0; i < node->n_src && g->status == TS_OK; i++) {
        if (!dsrc[i]) continue;
        dsrc[i] = needs_grad(node->src[i]) ? fit_to_source(g, node, i, dsrc[i]) : NULL;
    }
    if (g->status != TS_OK) {
        for (int i = 0; i < TS_MAX_SRC; i++) dsrc[i] = NULL;
        return g->status;
    }
    return TS_OK;
}

/* ---------------------------------------------------------------- the backward pass */

static ts_status check_loss(ts_graph *g, const ts_tensor *loss) {
    char dl[160];
    if (!loss) return ts_graph_set_error(g, TS_ERR_INVALID_ARG, "backward: loss is NULL");
    if (loss->id < 0 || loss->id >= g->n_nodes || g->nodes[loss->id] != loss)
        return ts_graph_set_error(g, TS_ERR_INVALID_ARG, "backward: loss %s is not a node of this graph",
                                  DESC(loss, dl));
    if (g->has_backward)
        return ts_graph_set_error(g, TS_ERR_STATE, "backward: already called on this graph (loss %s); it can "
                                  "be called once", DESC(loss, dl));
    if (g->plan)
        return ts_graph_set_error(g, TS_ERR_STATE, "backward: graph already allocated; call "
                                  "ts_graph_backward before ts_graph_alloc (loss %s)", DESC(loss, dl));
    if (ts_nelements(loss) != 1)
        return ts_graph_set_error(g, TS_ERR_SHAPE, "backward: loss %s is not a scalar (it must have one element)",
                                  DESC(loss, dl));
    if (!needs_grad(loss))
        return ts_graph_set_error(g, TS_ERR_INVALID_ARG, "backward: loss %s does not depend on any parameter "
                                  "(mark trainable leaves with ts_set_param)", DESC(loss, dl));
    return TS_OK;
}

static void accumulate(ts_graph *g, ts_tensor *x, ts_tensor *d) {
    x->grad = x->grad ? ts_add(g, x->grad, d) : d; /* a tensor used several times sums its uses */
}

/* ---------------------------------------------------------------- recomputation
 *
 * The forward nodes between two checkpoints form a stretch. A stretch's nodes take part in the
 * backward pass only through copies made during it: the rule of node n runs on its copy, whose
 * sources are copies too (up to the stretch's lower checkpoint), and the gradients still go to
 * n's own sources. Copies are made on demand, sources first, so only what the gradients read is
 * recomputed, and they land just before the gradient nodes that use them. */
typedef struct {
    int n_forward;
    int *stretch;        /* [forward nodes]: the stretch of each node, -1 outside any */
    ts_tensor **copy;    /* [forward nodes]: its recomputed copy, NULL until made */
} recompute;

static bool recompute_init(ts_graph *g, int n_forward, recompute *rc) {
    *rc = (recompute){.n_forward = n_forward};
    int last = -1, k = -1;
    for (int i = 0; i < n_forward; i++)
        if (g->nodes[i]->flags & TS_FLAG_CHECKPOINT) last = i;
    if (last < 0) return true;
    rc->stretch = malloc((size_t)n_forward * sizeof *rc->stretch);
    rc->copy = calloc((size_t)n_forward, sizeof *rc->copy);
    if (!rc->stretch || !rc->copy) return false;
    for (int i = 0; i < n_forward; i++) {
        rc->stretch[i] = k >= 0 && i <= last && g->nodes[i]->op != TS_OP_NONE ? k : -1;
        if (g->nodes[i]->flags & TS_FLAG_CHECKPOINT) k++;
    }
    return true;
}

static void recompute_free(recompute *rc) {
    free(rc->stretch);
    free(rc->copy);
}

/* The node the backward pass reads for forward node t: t itself outside the stretches, else
 * its copy (made now, with its sources', when first needed). */
static ts_tensor *recomputed(ts_graph *g, recompute *rc, ts_tensor *t) {
    if (!rc->stretch || !t || t->id >= rc->n_forward || rc->stretch[t->id] < 0) return t;
    if (rc->copy[t->id]) return rc->copy[t->id];
    ts_tensor *src[TS_MAX_SRC] = {0};
    for (int i = 0; i < t->n_src; i++) src[i] = rc->stretch[t->id] == (t->src[i] ? rc->stretch[t->src[i]->id] : -1)
                                                    ? recomputed(g, rc, t->src[i]) : t->src[i];
    return rc->copy[t->id] = ts_graph_clone_node(g, t, src);
}

/* Passes node's complete gradient on to its sources (through its copy inside a stretch). */
static void propagate(ts_graph *g, recompute *rc, ts_tensor *node) {
    if (!node->grad || !needs_grad(node) || node->op == TS_OP_NONE) return;
    ts_tensor *dsrc[TS_MAX_SRC], *rule_node = recomputed(g, rc, node);
    if (!rule_node || ts_op_backward(g, rule_node, node->grad, dsrc) != TS_OK) return;
    for (int i = 0; i < node->n_src; i++)
        if (dsrc[i]) accumulate(g, node->src[i], dsrc[i]);
}

/* Parameter gradients are what callers (optimizers, tests) read after compute: give each its
 * own contiguous node - two parameters may otherwise share one gradient node (a + b), or get
 * a strided view (a transposed weight) - then name it and keep it until the end of compute. */
static void publish_param_grads(ts_graph *g, int last_id) {
    for (int i = 0; i <= last_id && g->status == TS_OK; i++) {
        ts_tensor *p = g->nodes[i];
        if (!(p->flags & TS_FLAG_PARAM) || !p->grad) continue;
        ts_tensor *d = p->grad;
        if (!ts_is_contiguous(d) || (d->flags & TS_FLAG_OUTPUT)) d = ts_cont(g, d);
        if (!d) return;
        if (p->name[0]) ts_set_name(d, "grad:%s", p->name);
        else ts_set_name(d, "grad:#%d", p->id);
        p->grad = ts_set_output(d);
    }
}

ts_status ts_graph_backward(ts_graph *g, ts_tensor *loss) {
    if (!g) return TS_ERR_INVALID_ARG;
    if (g->status != TS_OK) return g->status;
    if (check_loss(g, loss) != TS_OK) return g->status;
    g->has_backward = true;

    int first_grad_node = g->n_nodes;
    recompute rc;
    if (!recompute_init(g, first_grad_node, &rc)) {
        recompute_free(&rc);
        return ts_graph_set_error(g, TS_ERR_OOM, "backward: out of memory");
    }
    ts_dtype autocast = g->autocast; /* backward matmuls read the saved operands as they are */
    g->autocast = TS_F32;
    loss->grad = ts_fill(g, grad_dtype(loss), loss->ndim, loss->shape, 1.0f); /* d loss / d loss */
    for (int i = loss->id; i >= 0 && g->status == TS_OK; i--) propagate(g, &rc, g->nodes[i]);
    recompute_free(&rc);
    publish_param_grads(g, loss->id);
    g->autocast = autocast;

    for (int i = first_grad_node; i < g->n_nodes; i++) g->nodes[i]->flags |= TS_FLAG_GRAD;
    return g->status;
}

ts_tensor *ts_grad(const ts_tensor *t) { return t ? t->grad : NULL; }
