/* graph.c - the graph container: node storage, error recording, leaf tensors, flags and
 * tensor queries. Op constructors live in ops.c, autodiff in autodiff.c, planning and
 * execution in plan.c. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "graph_internal.h"

ts_graph *ts_graph_new(void) {
    return calloc(1, sizeof(ts_graph));
}

void ts_plan_release(ts_graph *g); /* plan.c */

void ts_graph_free(ts_graph *g) {
    if (!g) return;
    ts_plan_release(g);
    for (int i = 0; i < g->n_nodes; i++) free(g->nodes[i]);
    free(g->nodes);
    free(g->cast_of);
    free(g);
}

ts_status ts_graph_status(const ts_graph *g) { return g ? g->status : TS_ERR_INVALID_ARG; }
const char *ts_graph_error(const ts_graph *g) { return g ? g->error : "no graph"; }
int ts_graph_n_nodes(const ts_graph *g) { return g->n_nodes; }
ts_tensor *ts_graph_node(const ts_graph *g, int i) {
    return (i >= 0 && i < g->n_nodes) ? g->nodes[i] : NULL;
}

ts_dtype ts_graph_set_autocast(ts_graph *g, ts_dtype dtype) {
    if (!g) return TS_F32;
    ts_dtype old = g->autocast;
    if (dtype == TS_F32 || dtype == TS_BF16 || dtype == TS_F16) g->autocast = dtype;
    else
        ts_graph_set_error(g, TS_ERR_DTYPE, "autocast: %s is not f32 (off), bf16 or f16",
                           (unsigned)dtype < TS_DTYPE_COUNT ? ts_dtype_name(dtype) : "an unknown dtype");
    return old;
}

ts_status ts_graph_set_error(ts_graph *g, ts_status s, const char *fmt, ...) {
    if (g && g->status == TS_OK && s != TS_OK) {
        g->status = s;
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(g->error, sizeof g->error, fmt, ap);
        va_end(ap);
    }
    return s;
}

void ts_set_contiguous_strides(ts_tensor *t) {
    int64_t s = 1;
    for (int d = t->ndim - 1; d >= 0; d--) {
        t->stride[d] = s;
        s *= t->shape[d];
    }
}

static ts_tensor *append(ts_graph *g, ts_tensor *t) {
    if (g->n_nodes == g->cap_nodes) {
        int cap = g->cap_nodes ? 2 * g->cap_nodes : 256;
        ts_tensor **n = realloc(g->nodes, (size_t)cap * sizeof *n);
        if (n) g->nodes = n;
        ts_tensor **c = n ? realloc(g->cast_of, (size_t)cap * sizeof *c) : NULL;
        if (!c) {
            free(t);
            ts_graph_set_error(g, TS_ERR_OOM, "graph: out of memory growing to %d nodes", cap);
            return NULL;
        }
        memset(c + g->cap_nodes, 0, (size_t)(cap - g->cap_nodes) * sizeof *c);
        g->cast_of = c;
        g->cap_nodes = cap;
    }
    t->id = g->n_nodes;
    g->nodes[g->n_nodes++] = t;
    return t;
}

static bool op_differentiable(ts_op op) {
    return op != TS_OP_TOPK && op != TS_OP_FILL && op != TS_OP_NONE;
}

ts_tensor *ts_graph_add_node(ts_graph *g, ts_op op, ts_dtype dtype, int ndim, const int64_t *shape,
                             ts_tensor *const *src, int n_src) {
    if (g->plan) {
        ts_graph_set_error(g, TS_ERR_STATE, "%s: graph already allocated; build before ts_graph_alloc",
                           ts_op_name(op));
        return NULL;
    }
    ts_tensor *t = calloc(1, sizeof *t);
    if (!t) {
        ts_graph_set_error(g, TS_ERR_OOM, "%s: out of memory", ts_op_name(op));
        return NULL;
    }
    t->dtype = dtype;
    t->ndim = ndim;
    for (int d = 0; d < ndim; d++) t->shape[d] = shape[d];
    ts_set_contiguous_strides(t);
    t->op = op;
    t->n_src = n_src;
    bool rg = false;
    for (int i = 0; i < n_src; i++) {
        t->src[i] = src[i];
        if (src[i] && (src[i]->flags & TS_FLAG_REQUIRES_GRAD) && ts_dtype_get_info(src[i]->dtype)->is_float)
            rg = true;
    }
    if (rg && op_differentiable(op) && ts_dtype_get_info(dtype)->is_float) t->flags |= TS_FLAG_REQUIRES_GRAD;
    return append(g, t);
}

/* ---------------------------------------------------------------- leaves */

ts_tensor *ts_new_tensor(ts_graph *g, ts_dtype type, int ndim, const int64_t *shape, const char *name) {
    if (!g) return NULL;
    if ((unsigned)type >= TS_DTYPE_COUNT) {
        ts_graph_set_error(g, TS_ERR_DTYPE, "new_tensor '%s': unknown dtype %d", name ? name : "", (int)type);
        return NULL;
    }
    if (ndim < 0 || ndim > TS_MAX_DIMS || (ndim > 0 && !shape)) {
        ts_graph_set_error(g, TS_ERR_SHAPE, "new_tensor '%s': ndim %d outside 0..%d", name ? name : "",
                           ndim, TS_MAX_DIMS);
        return NULL;
    }
    for (int d = 0; d < ndim; d++) {
        if (shape[d] < 1) {
            ts_graph_set_error(g, TS_ERR_SHAPE, "new_tensor '%s': dimension %d is %lld (must be >= 1)",
                               name ? name : "", d, (long long)shape[d]);
            return NULL;
        }
    }
    ts_tensor *t = ts_graph_add_node(g, TS_OP_NONE, type, ndim, shape, NULL, 0);
    if (t && name) ts_set_name(t, "%s", name);
    return t;
}

ts_tensor *ts_new_tensor_1d(ts_graph *g, ts_dtype t, int64_t n0, const char *name) {
    int64_t s[1] = {n0};
    return ts_new_tensor(g, t, 1, s, name);
}
ts_tensor *ts_new_tensor_2d(ts_graph *g, ts_dtype t, int64_t n0, int64_t n1, const char *name) {
    int64_t s[2] = {n0, n1};
    return ts_new_tensor(g, t, 2, s, name);
}
ts_tensor *ts_new_tensor_3d(ts_graph *g, ts_dtype t, int64_t n0, int64_t n1, int64_t n2, const char *name) {
    int64_t s[3] = {n0, n1, n2};
    return ts_new_tensor(g, t, 3, s, name);
}
ts_tensor *ts_new_tensor_4d(ts_graph *g, ts_dtype t, int64_t n0, int64_t n1, int64_t n2, int64_t n3,
                            const char *name) {
    int64_t s[4] = {n0, n1, n2, n3};
    return ts_new_tensor(g, t, 4, s, name);
}

ts_tensor *ts_set_param(ts_tensor *t) {
    if (t && t->op == TS_OP_NONE && ts_dtype_get_info(t->dtype)->is_float)
        t->flags |= TS_FLAG_PARAM | TS_FLAG_REQUIRES_GRAD;
    return t;
}

ts_tensor *ts_set_output(ts_tensor *t) {
    if (t) {
        t->flags |= TS_FLAG_OUTPUT;
        if (t->view_src) t->view_src->flags |= TS_FLAG_OUTPUT;
    }
    return t;
}

ts_tensor *ts_set_checkpoint(ts_tensor *t) {
    if (t) t->flags |= TS_FLAG_CHECKPOINT;
    return t;
}

ts_tensor *ts_graph_clone_node(ts_graph *g, const ts_tensor *n, ts_tensor *const *src) {
    ts_tensor *t = ts_graph_add_node(g, n->op, n->dtype, n->ndim, n->shape, src, n->n_src);
    if (!t) return NULL;
    memcpy(t->stride, n->stride, sizeof t->stride);
    t->offset = n->offset;
    memcpy(t->ip, n->ip, sizeof t->ip);
    memcpy(t->fp, n->fp, sizeof t->fp);
    t->flags = n->flags & TS_FLAG_REQUIRES_GRAD;
    if (n->view_src) t->view_src = src[0]->view_src ? src[0]->view_src : src[0];
    snprintf(t->name, sizeof t->name, "%s", n->name);
    return t;
}

ts_tensor *ts_set_name(ts_tensor *t, const char *fmt, ...) {
    if (!t) return NULL;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(t->name, sizeof t->name, fmt, ap);
    va_end(ap);
    return t;
}

/* ---------------------------------------------------------------- queries */

int64_t ts_nelements(const ts_tensor *t) {
    int64_t n = 1;
    for (int d = 0; d < t->ndim; d++) n *= t->shape[d];
    return n;
}

size_t ts_nbytes(const ts_tensor *t) { return ts_dtype_bytes(t->dtype, ts_nelements(t)); }

bool ts_is_contiguous(const ts_tensor *t) {
    int64_t s = 1;
    for (int d = t->ndim - 1; d >= 0; d--) {
        if (t->shape[d] != 1 && t->stride[d] != s) return false;
        s *= t->shape[d];
    }
    return true;
}

bool ts_same_shape(const ts_tensor *a, const ts_tensor *b) {
    if (a->ndim != b->ndim) return false;
    for (int d = 0; d < a->ndim; d++)
        if (a->shape[d] != b->shape[d]) return false;
    return true;
}

bool ts_is_view(const ts_tensor *t) { return t->view_src != NULL; }

const char *ts_tensor_describe(const ts_tensor *t, char *buf, size_t size) {
    if (!t) {
        snprintf(buf, size, "(null)");
        return buf;
    }
    int n = snprintf(buf, size, "%s%s%s%s[", t->name[0] ? "'" : "", t->name, t->name[0] ? "' " : "",
                 ts_dtype_name(t->dtype));
    for (int d = 0; d < t->ndim && n > 0 && (size_t)n < size; d++)
        n += snprintf(buf + n, size - (size_t)n, d ? ",%lld" : "%lld", (long long)t->shape[d]);
    if (n > 0 && (size_t)n < size) snprintf(buf + n, size - (size_t)n, "]");
    return buf;
}
