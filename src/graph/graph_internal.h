/* graph_internal.h - what the graph layer's files (builder, ops, autodiff, planner, executor)
 * share with each other and with backends, but not with users. */
#ifndef TS_GRAPH_INTERNAL_H
#define TS_GRAPH_INTERNAL_H

#include "tessera/backend.h"
#include "tessera/graph.h"

struct ts_plan_state; /* owned by plan.c */

struct ts_graph {
    ts_tensor **nodes;       /* every tensor, in creation (= topological) order */
    int n_nodes, cap_nodes;
    ts_status status;        /* first error recorded */
    char error[1024];
    bool has_backward;
    ts_dtype autocast;       /* TS_F32: off; else the dtype matmul operands are cast to (ts_graph_set_autocast) */
    ts_tensor **cast_of;     /* per node id (cap_nodes entries): its autocast copy, made on first use */
    struct ts_plan_state *plan; /* NULL until ts_graph_alloc */
};

/* Creates a contiguous node with the given sources (copied into src[]) and appends it. Sets
 * REQUIRES_GRAD when a float source requires it and the op is differentiable. */
ts_tensor *ts_graph_add_node(ts_graph *g, ts_op op, ts_dtype dtype, int ndim, const int64_t *shape,
                             ts_tensor *const *src, int n_src);
void ts_set_contiguous_strides(ts_tensor *t);
/* A new node computing what n computes, from the sources src[0..n->n_src) (n's own or their
 * recomputed copies): same op, shape, strides / view offset and parameters. */
ts_tensor *ts_graph_clone_node(ts_graph *g, const ts_tensor *n, ts_tensor *const *src);

/* True for ops whose node shares its first source's storage. */
bool ts_op_is_view(ts_op op);
/* True when the op's kernel may write its output over source `i` (same shape, contiguous,
 * elementwise dependence only). */
bool ts_op_inplace_ok(ts_op op, int i);

/* Backward rule of one node (autodiff.c): given dy = d loss / d node, builds nodes for
 * d loss / d src[i] into dsrc[i] for every source that REQUIRES_GRAD (others left NULL).
 * The returned gradients have exactly the shape of their source. */
ts_status ts_op_backward(ts_graph *g, ts_tensor *node, ts_tensor *dy, ts_tensor *dsrc[TS_MAX_SRC]);

/* Host address of element 0 of t (views included) or NULL when not host-visible / not allocated. */
static inline void *ts_tensor_host(const ts_tensor *t) { return t->data; }

#endif
