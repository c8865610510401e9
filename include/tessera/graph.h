/* graph.h - tensors, compute graphs, automatic differentiation and the memory planner.
 *
 * Op constructors (ts_add, ts_matmul, ...) only record nodes; nothing runs until
 * ts_graph_compute. Shapes and dtypes are checked at construction. A constructor that fails
 * returns NULL and records the first error in the graph (ts_graph_status / ts_graph_error);
 * every constructor given a NULL input returns NULL without overwriting that first error, so
 * a whole model can be built and checked once at the end.
 *
 * Shapes are listed outermost first (row-major), like NumPy. Strides are in elements.
 * Broadcasting follows NumPy: shapes are aligned on the right; a dimension of 1 stretches.
 *
 * Life of a graph: build (leaves + ops) -> optional ts_graph_backward -> ts_graph_alloc (plans
 * memory on a backend; reports the planned peak) -> write leaves -> ts_graph_compute (as many
 * times as wanted; allocates nothing) -> read outputs -> ts_graph_free. */
#ifndef TESSERA_GRAPH_H
#define TESSERA_GRAPH_H

#include "tessera/core.h"

#ifdef __cplusplus
extern "C" {
#endif

#define TS_MAX_DIMS 4
#define TS_MAX_SRC 9 /* attention_back reads up to 9: q, k, v, sink, extra, extra_idx, key_start, dout, out */
#define TS_MAX_NAME 64

typedef struct ts_graph ts_graph;
typedef struct ts_tensor ts_tensor;
typedef struct ts_backend ts_backend;
typedef struct ts_buffer ts_buffer;

/* Every node kind. The comment gives the sources and the integer / float parameters
 * (ip[] / fp[]). Ops after TS_OP_FIRST_BACKWARD_ and the views are also valid user ops. */
typedef enum {
    TS_OP_NONE = 0,     /* leaf: parameter, input or constant; data set by the user */

    /* views: share storage with src0; no kernel runs */
    TS_OP_RESHAPE,      /* src0 contiguous; new shape */
    TS_OP_PERMUTE,      /* ip[0..ndim-1] = perm: out dim d is src dim perm[d] */
    TS_OP_SLICE,        /* ip[0] = axis, ip[1] = start, ip[2] = length */
    TS_OP_EXPAND,       /* broadcast size-1 dims to shape (stride 0) */

    /* creation and movement */
    TS_OP_FILL,         /* fp[0] = value */
    TS_OP_COPY,         /* src0 -> contiguous, converted to the node's dtype (copy / cast) */
    TS_OP_CONCAT,       /* src0..src{n-1} (n = ip[1] <= TS_MAX_SRC) along ip[0] = axis */

    /* elementwise binary with broadcasting */
    TS_OP_ADD, TS_OP_SUB, TS_OP_MUL, TS_OP_DIV,

    /* elementwise unary */
    TS_OP_SCALE,        /* fp[0] = factor */
    TS_OP_EXP, TS_OP_LOG, TS_OP_SQRT, TS_OP_SIGMOID, TS_OP_SOFTPLUS, TS_OP_SILU, TS_OP_RELU,
    TS_OP_CLAMP,        /* fp[0] = min, fp[1] = max (either may be +-INFINITY) */

    /* reductions over one axis, keeping it with size 1 (ip[0] = axis) */
    TS_OP_SUM, TS_OP_MEAN, TS_OP_MAX,
    TS_OP_SUM_TO,       /* sum src0 down to the node's shape (undo a broadcast) */

    /* transformer ops */
    TS_OP_MATMUL,       /* src0 a [..,M,K] (or [..,K,M] if ip[0]), src1 b [..,K,N] (or [..,N,K] if ip[1]);
                           batch dims broadcast; ip[2] = 1: f32 result from narrower operands
                           (autocast) */
    TS_OP_SOFTMAX,      /* ip[0] = axis; src1 = optional additive mask, broadcast to src0 */
    TS_OP_RMS_NORM,     /* over the last axis; src1 = optional weight [D]; fp[0] = eps */
    TS_OP_ROPE,         /* src0 x [..., D], src1 angles broadcastable to x.shape[:-1] + [n_rot/2];
                           rotates the trailing ip[0] = n_rot dims in interleaved pairs
                           (2k, 2k+1) by angle (ip[1] = 1: by -angle) */
    TS_OP_GET_ROWS,     /* src0 table [V, ...], src1 ids (i32/i64) any shape -> ids.shape + table.shape[1:] */
    TS_OP_TOPK,         /* indices (i32) of the ip[0] = k largest along the last axis, descending;
                           ties go to the lower index */
    TS_OP_GATHER,       /* src0 x, src1 idx (same rank, i32/i64), ip[0] = axis: out = idx.shape,
                           out[..i..] = x[..idx[..i..]..] along axis (torch.gather) */
    TS_OP_SCATTER_ADD,  /* src0 base, src1 idx, src2 values (shape of idx), ip[0] = axis:
                           out = base; out[..idx[..i..]..] += values[..i..] */
    TS_OP_CROSS_ENTROPY,/* src0 logits [..., V], src1 targets (i32/i64) [...]: mean over targets
                           >= 0 of -log softmax(logits)[target]; targets < 0 are ignored.
                           Output shape [1]. */
    TS_OP_ATTENTION,    /* fused softmax attention (see ts_attention): src q [B,T,H,D], k [B,S,Hk,D],
                           v [B,S,Hk,Dv], then sink [H] if ip[2], then extra [B,N,Hk,D or D+Dv] and
                           extra_idx [B,T,E] if ip[3], then key_start [B,T] if ip[4] (only the
                           present ones, in this order); ip[0] = causal, ip[1] = window (0: none),
                           fp[0] = scale -> [B,T,H,Dv] */
    TS_OP_SINKHORN,     /* src0 logits [..., n, n] (n <= TS_SINKHORN_MAX_N), ip[0] = iters,
                           fp[0] = eps -> doubly stochastic [..., n, n] (see ts_sinkhorn) */
    TS_OP_MATMUL_ID,    /* src0 w [E, N, K], src1 x [T, K] or [T, Kk, K], src2 ids [T, Kk] (i32/i64)
                           -> [T, Kk, N]: out[t, k] = w[ids[t, k]] . x[t] (or x[t, k]); ip[0] = 1
                           uses each w[e] transposed (w [E, K, N]); ip[1] = 1: f32 result from
                           narrower operands (autocast). See ts_matmul_id */
    TS_OP_SWIGLU,       /* src0 gate a, src1 up b (same shape), fp[0] = limit -> silu(min(a, limit)) *
                           clamp(b, -limit, limit); limit <= 0: silu(a) * b (see ts_swiglu) */

    /* backward helpers (also plain ops; the conformance suite covers them) */
    TS_OP_FIRST_BACKWARD_,
    TS_OP_SIGMOID_BACK = TS_OP_FIRST_BACKWARD_, /* src0 y = sigmoid(x), src1 dy -> dx */
    TS_OP_SILU_BACK,    /* src0 x, src1 dy -> dx */
    TS_OP_RELU_BACK,    /* src0 x, src1 dy -> dx (0 where x <= 0) */
    TS_OP_CLAMP_BACK,   /* src0 x, src1 dy, fp[0]/fp[1] as in CLAMP -> dx (0 outside (min, max)) */
    TS_OP_MAX_BACK,     /* src0 x, src1 y = max, src2 dy (shape of y), ip[0] = axis -> dx; the
                           gradient goes to the first maximal element */
    TS_OP_SOFTMAX_BACK, /* src0 y, src1 dy, ip[0] = axis -> dx */
    TS_OP_RMS_NORM_BACK,/* src0 x, src1 dy, src2 optional weight, fp[0] = eps -> dx */
    TS_OP_GET_ROWS_BACK,/* src0 ids, src1 dy; node shape = table shape -> scatter-added rows */
    TS_OP_CROSS_ENTROPY_BACK, /* src0 logits, src1 targets, src2 dloss [1] -> dlogits */
    TS_OP_ATTENTION_BACK, /* the sources of ATTENTION (same ip/fp) followed by dout [B,T,H,Dv] and
                           out [B,T,H,Dv] (the forward's output: D = <dout, out>, see ts_attention) ->
                           one flat f64 (q f64) or f32 (otherwise) buffer holding, in this order and
                           each row-major in its source's shape, dq | dk | dv | dsink (if a sink)
                           | dextra (if extras); every part is always present, so offsets depend
                           on the shapes only; the integer extra_idx and key_start get none) */
    TS_OP_SINKHORN_BACK, /* src0 logits, src1 dy, ip[0]/fp[0] as in SINKHORN -> dlogits (recomputes
                           the iterations) */
    TS_OP_MATMUL_ID_GRAD_W, /* src0 a [T, Kk, N] or [T, N], src1 b [T, Kk, K] or [T, K], src2 ids
                           [T, Kk], ip[0] = E -> [E, N, K]: out[e] = sum over the (t, k) with
                           ids[t, k] = e of a[t, k] (x) b[t, k] (outer product; a 2-D operand's
                           row t serves every k); experts no id names get zeros */
    TS_OP_SWIGLU_BACK,  /* src0 a, src1 b, src2 dy, fp[0] as in SWIGLU -> [2, shape]: da, then db
                           (the clamps pass gradient where their input lies within the bounds,
                           bounds included) */

    TS_OP_COUNT
} ts_op;

enum {
    TS_FLAG_PARAM = 1u << 0,         /* trainable: ts_graph_backward computes its gradient */
    TS_FLAG_INPUT = 1u << 1,         /* leaf written by the user before each compute */
    TS_FLAG_OUTPUT = 1u << 2,        /* must survive until the end of compute (not reused) */
    TS_FLAG_REQUIRES_GRAD = 1u << 3, /* set by the graph: a PARAM is upstream */
    TS_FLAG_GRAD = 1u << 4,          /* node created by ts_graph_backward */
    TS_FLAG_CHECKPOINT = 1u << 5,    /* activation recomputation boundary (ts_set_checkpoint) */
};

/* A tensor is also a graph node. Fields are read-only for users; use the functions below. */
struct ts_tensor {
    ts_dtype dtype;
    int ndim;                        /* 0..TS_MAX_DIMS; 0 is a scalar */
    int64_t shape[TS_MAX_DIMS];
    int64_t stride[TS_MAX_DIMS];     /* in elements */
    int64_t offset;                  /* in elements, into the storage of view_src (views) */
    char name[TS_MAX_NAME];

    ts_op op;
    int n_src;
    ts_tensor *src[TS_MAX_SRC];
    int32_t ip[8];
    float fp[4];
    uint32_t flags;
    int id;                          /* position in the graph (topological order) */

    ts_tensor *view_src;             /* views: the non-view tensor that owns the storage */
    ts_tensor *grad;                 /* after ts_graph_backward: d loss / d this (or NULL) */

    /* storage, set by ts_graph_alloc or ts_tensor_bind */
    ts_buffer *buffer;
    size_t buffer_offset;            /* bytes */
    void *data;                      /* host address when the buffer is host-visible, else NULL */
};

/* ---------------------------------------------------------------- graph */

ts_graph *ts_graph_new(void);        /* NULL only when out of memory */
void ts_graph_free(ts_graph *g);
ts_status ts_graph_status(const ts_graph *g);
const char *ts_graph_error(const ts_graph *g);  /* "" when no error */
int ts_graph_n_nodes(const ts_graph *g);
ts_tensor *ts_graph_node(const ts_graph *g, int i);
/* Autocast (mixed precision, PyTorch's autocast for weight matmuls): with dtype TS_BF16 (or
 * TS_F16), every later ts_matmul and ts_matmul_id that multiplies a weight (one operand is a
 * leaf or a view of one), both operands f32 (or already `dtype`), multiplies them cast to
 * `dtype` and gives an f32 result (the GEMM accumulates in f32; the node carries the "f32
 * result" flag, see TS_OP_MATMUL). Products of two computed tensors (attention-like mixing) and
 * every other op keep their dtypes; a caller pauses autocast (TS_F32, then the old setting)
 * around the weight matmuls it wants in f32. A tensor is
 * cast once whatever the number of matmuls reading it (a tied weight, an activation feeding
 * several projections); that narrow copy is what backward keeps. f64 operands are left alone.
 * ts_graph_backward builds its matmuls without autocast: they read the saved narrow operands
 * and the f32 output gradient, and gradients reach the f32 sources in f32 (a cast to a narrower
 * float passes its gradient on in the source's dtype). TS_F32 turns autocast off (the default).
 * Returns the previous setting (pause: old = set(g, TS_F32); ...; set(g, old)). Another dtype
 * records TS_ERR_DTYPE in the graph and changes nothing. */
ts_dtype ts_graph_set_autocast(ts_graph *g, ts_dtype dtype);
/* Records an error (first one wins) and returns s; for layers above building on the graph. */
ts_status ts_graph_set_error(ts_graph *g, ts_status s, const char *fmt, ...);

/* ---------------------------------------------------------------- tensors */

ts_tensor *ts_new_tensor(ts_graph *g, ts_dtype t, int ndim, const int64_t *shape, const char *name);
ts_tensor *ts_new_tensor_1d(ts_graph *g, ts_dtype t, int64_t n0, const char *name);
ts_tensor *ts_new_tensor_2d(ts_graph *g, ts_dtype t, int64_t n0, int64_t n1, const char *name);
ts_tensor *ts_new_tensor_3d(ts_graph *g, ts_dtype t, int64_t n0, int64_t n1, int64_t n2, const char *name);
ts_tensor *ts_new_tensor_4d(ts_graph *g, ts_dtype t, int64_t n0, int64_t n1, int64_t n2, int64_t n3,
                            const char *name);
/* Marks a leaf trainable (its gradient is computed by ts_graph_backward). */
ts_tensor *ts_set_param(ts_tensor *t);
/* Marks a node as kept until the end of compute (so it can be read afterwards). */
ts_tensor *ts_set_output(ts_tensor *t);
/* Activation recomputation (gradient checkpointing): with checkpoints c1 < c2 < .. marked on
 * forward nodes, ts_graph_backward gives the nodes after c_k up to c_{k+1} no part in the
 * backward pass; it recomputes the ones the gradients need from c_k (and the nodes before it)
 * just before the backward of that stretch, so the forward's copies die at once and the plan's
 * peak holds the checkpoints plus one stretch. Costs about one more forward; the gradients are
 * the same bits. Mark before ts_graph_backward; nodes after the last checkpoint are kept. */
ts_tensor *ts_set_checkpoint(ts_tensor *t);
ts_tensor *ts_set_name(ts_tensor *t, const char *fmt, ...);

int64_t ts_nelements(const ts_tensor *t);
size_t ts_nbytes(const ts_tensor *t);              /* of the elements, as if contiguous */
bool ts_is_contiguous(const ts_tensor *t);
bool ts_same_shape(const ts_tensor *a, const ts_tensor *b);
bool ts_is_view(const ts_tensor *t);
/* "name f32[2,3,4]" into buf; returns buf. */
const char *ts_tensor_describe(const ts_tensor *t, char *buf, size_t size);

/* Attach a leaf to storage owned elsewhere (model weights shared by several graphs). The
 * planner then leaves it alone. `host` variant: CPU-only, memory must outlive the graph. */
ts_status ts_tensor_bind(ts_tensor *leaf, ts_buffer *buf, size_t offset);
ts_status ts_tensor_bind_host(ts_tensor *leaf, void *host);

/* Copy contiguous element bytes in/out of an allocated tensor (any backend). `bytes` must equal
 * ts_nbytes(t); non-contiguous tensors are gathered/scattered element by element. */
ts_status ts_tensor_write(ts_tensor *t, const void *src, size_t bytes);
ts_status ts_tensor_read(const ts_tensor *t, void *dst, size_t bytes);
/* Convenience: all elements as/from f32 (converted). n must equal ts_nelements(t). */
ts_status ts_tensor_write_f32(ts_tensor *t, const float *src, int64_t n);
ts_status ts_tensor_read_f32(const ts_tensor *t, float *dst, int64_t n);

/* ---------------------------------------------------------------- views (no copy) */

ts_tensor *ts_reshape(ts_graph *g, ts_tensor *x, int ndim, const int64_t *shape); /* copies if x is not contiguous; one dim may be -1 */
ts_tensor *ts_reshape_2d(ts_graph *g, ts_tensor *x, int64_t n0, int64_t n1);
ts_tensor *ts_permute(ts_graph *g, ts_tensor *x, const int *perm);
ts_tensor *ts_transpose(ts_graph *g, ts_tensor *x, int axis0, int axis1);
ts_tensor *ts_slice(ts_graph *g, ts_tensor *x, int axis, int64_t start, int64_t length);
ts_tensor *ts_expand(ts_graph *g, ts_tensor *x, int ndim, const int64_t *shape);

/* ---------------------------------------------------------------- ops
 * Negative axes count from the end. Float ops accept every float dtype; binary ops require
 * equal dtypes (use ts_cast). */

ts_tensor *ts_fill(ts_graph *g, ts_dtype t, int ndim, const int64_t *shape, float value);
ts_tensor *ts_zeros_like(ts_graph *g, const ts_tensor *x);
ts_tensor *ts_cast(ts_graph *g, ts_tensor *x, ts_dtype t);
ts_tensor *ts_cont(ts_graph *g, ts_tensor *x);  /* contiguous copy */
/* Contiguous copy through which no gradient flows (stop-gradient: targets, detached inputs). */
ts_tensor *ts_detach(ts_graph *g, ts_tensor *x);
ts_tensor *ts_concat(ts_graph *g, ts_tensor *const *xs, int n, int axis);

ts_tensor *ts_add(ts_graph *g, ts_tensor *a, ts_tensor *b);
ts_tensor *ts_sub(ts_graph *g, ts_tensor *a, ts_tensor *b);
ts_tensor *ts_mul(ts_graph *g, ts_tensor *a, ts_tensor *b);
ts_tensor *ts_div(ts_graph *g, ts_tensor *a, ts_tensor *b);

ts_tensor *ts_scale(ts_graph *g, ts_tensor *x, float s);
ts_tensor *ts_exp(ts_graph *g, ts_tensor *x);
ts_tensor *ts_log(ts_graph *g, ts_tensor *x);
ts_tensor *ts_sqrt(ts_graph *g, ts_tensor *x);
ts_tensor *ts_sigmoid(ts_graph *g, ts_tensor *x);
ts_tensor *ts_softplus(ts_graph *g, ts_tensor *x);
ts_tensor *ts_silu(ts_graph *g, ts_tensor *x);
ts_tensor *ts_relu(ts_graph *g, ts_tensor *x);
ts_tensor *ts_clamp(ts_graph *g, ts_tensor *x, float min, float max);

ts_tensor *ts_sum(ts_graph *g, ts_tensor *x, int axis, bool keepdim);
ts_tensor *ts_mean(ts_graph *g, ts_tensor *x, int axis, bool keepdim);
ts_tensor *ts_max(ts_graph *g, ts_tensor *x, int axis, bool keepdim);
ts_tensor *ts_sum_to(ts_graph *g, ts_tensor *x, int ndim, const int64_t *shape);

ts_tensor *ts_matmul(ts_graph *g, ts_tensor *a, ts_tensor *b, bool trans_a, bool trans_b);
ts_tensor *ts_softmax(ts_graph *g, ts_tensor *x, int axis, ts_tensor *mask /* NULL */);
ts_tensor *ts_rms_norm(ts_graph *g, ts_tensor *x, ts_tensor *weight /* NULL */, float eps);
ts_tensor *ts_rope(ts_graph *g, ts_tensor *x, ts_tensor *angles, int n_rot, bool inverse);
ts_tensor *ts_get_rows(ts_graph *g, ts_tensor *table, ts_tensor *ids);
/* values and/or indices of the k largest along the last axis (either out pointer may be NULL) */
ts_status ts_topk(ts_graph *g, ts_tensor *x, int k, ts_tensor **values, ts_tensor **indices);
ts_tensor *ts_gather(ts_graph *g, ts_tensor *x, int axis, ts_tensor *idx);
ts_tensor *ts_scatter_add(ts_graph *g, ts_tensor *base, int axis, ts_tensor *idx, ts_tensor *values);
ts_tensor *ts_cross_entropy(ts_graph *g, ts_tensor *logits, ts_tensor *targets);

/* Fused attention with a per-head sink, grouped (or shared) key/value heads, a sliding window
 * and per-query extra entries - one op for V4's SWA, CSA and HCA layers and for plain causal
 * multi-head attention (DeepSeek-V4 spec sections 2.5-2.9).
 *
 *   q [B, T, H, D]; k [B, S, Hk, D]; v [B, S, Hk, Dv]; H % Hk == 0. Query head h reads key/value
 *   head h / (H / Hk) (grouped / multi-query attention). V4's shared K=V head passes the same
 *   tensor as k and v with Hk = 1; gradients of the two roles add up through autodiff.
 *   Query t sits at absolute position pos(t) = S - T + t (T == S in training; T < S when
 *   decoding against a cache); key j at position j.
 *   Key j is visible to query t when (causal: j <= pos(t)) and (window > 0: j > pos(t) - window,
 *   i.e. the window pos-window+1 .. pos includes the query itself, spec 2.6) and (key_start
 *   given: j >= key_start[b, t]). Without causal a window bounds keys from below only. With
 *   causal and T > S, queries at negative positions see no key.
 *   key_start (optional) [B, T] (i32 or i64): a per-query lower bound on the visible keys - the
 *   document mask of packed training rows, i.e. the data loader's doc_start (tessera/data.h:
 *   t attends to s iff doc_start[t] <= s <= t, which is causal + key_start). Any value is
 *   allowed (<= 0: no bound; beyond pos(t): no visible key). It bounds keys only, never extras
 *   (the caller builds extra_idx and leaves out what a document must not see).
 *   sink (optional) [H]: a logit z_h joining every softmax of head h with value zero (it only
 *   absorbs probability mass, spec 2.5 step 6). Any float dtype (V4 keeps it in f32).
 *   extra (optional) [B, N, Hk, X] with extra_idx [B, T, E] (i32 or i64): extra entries, each a
 *   key and a value. X = D: one vector serves as both (V4's compressed entries; requires
 *   Dv == D). X = D + Dv: the first D elements are the key, the last Dv the value (a KV cache
 *   stored as key | value rows; unambiguous, since D + Dv != D). Query t of batch b also
 *   attends to extra[b, extra_idx[b, t, e], h / (H / Hk)] for every slot e whose index is not
 *   -1 (-1 = unused slot; other values must lie in [0, N)). They join the same softmax as the
 *   visible keys: one softmax over the union (spec 2.5 / 2.9); an entry listed twice, or also
 *   present among the window keys, counts twice, as intended. The op applies no mask to extras:
 *   the caller builds extra_idx to be causal (HCA: every completed block; CSA: the top-k
 *   selected completed blocks).
 *   out[b, t, h] = sum_j p_j v_j + sum_e p_e value(extra_e), p = softmax over {scale * q.k_j for
 *   visible j} U {scale * q.key(extra_e)} U {z_h}. A row with no visible entry and no sink has no
 *   distribution: its output (and every gradient through it) is zero, never NaN.
 *   Output [B, T, H, Dv] in q's dtype; k, v and extra must have q's dtype.
 *
 * The reference kernel computes in double, one query row at a time (memory linear in T and S,
 * never T x S); the optimized "cpu" backend runs f32 through a flash-style tiled kernel
 * (src/backends/cpu/fast_attention.c), also linear in T. Backward is one TS_OP_ATTENTION_BACK
 * node that recomputes each row's softmax; with p the probabilities, dp_j = <dout, v_j>,
 * D = sum_j p_j dp_j = <dout, out> (taken from the forward's output, a source of the backward
 * node, so no kernel has to recompute the weighted values):
 *   dl_j = p_j (dp_j - D); dq = scale sum_j dl_j k_j; dk_j += scale dl_j q; dv_j += p_j dout;
 *   dsink_h = -sum p_sink D; an extra entry receives its key share in its key part and its value
 *   share in its value part (both in the same elements when X = D). */
typedef struct {
    float scale;             /* multiplies q.k (usually 1 / sqrt(D)) */
    bool causal;
    int32_t window;          /* 0: unlimited; else keys pos-window+1 .. pos */
    ts_tensor *sink;         /* NULL or [H] */
    ts_tensor *extra;        /* NULL or [B, N, Hk, D] (key = value) or [B, N, Hk, D + Dv] (key | value) */
    ts_tensor *extra_idx;    /* with extra: [B, T, E] i32/i64, -1 = unused slot */
    ts_tensor *key_start;    /* NULL or [B, T] i32/i64: keys j < key_start[b, t] are hidden */
} ts_attention_params;

ts_tensor *ts_attention(ts_graph *g, ts_tensor *q, ts_tensor *k, ts_tensor *v, const ts_attention_params *p);

/* The Sinkhorn projection of mHC's residual mix (DeepSeek-V4 spec section 2.3.1 step 6) on
 * each n x n matrix of x [..., n, n] (axis -2 = i, axis -1 = j), n <= TS_SINKHORN_MAX_N:
 *   K = softmax over j of x, plus eps; then K_ij /= (sum_i K_ij + eps) (columns); then iters - 1
 *   times: K_ij /= (sum_j K_ij + eps) (rows), then the column step again.
 * iters in 1..TS_SINKHORN_MAX_ITERS, eps >= 0 and finite. One fused node instead of ~6 * iters
 * small ones; its backward (TS_OP_SINKHORN_BACK) recomputes the iterations per matrix. */
#define TS_SINKHORN_MAX_N 16
#define TS_SINKHORN_MAX_ITERS 100
ts_tensor *ts_sinkhorn(ts_graph *g, ts_tensor *x, int iters, float eps);

/* Sparse mixture-of-experts matmul (ggml's mul_mat_id): each (token, slot) pair is multiplied by
 * the expert matrix its id names, and only those products are computed.
 *   w [E, N, K]: E expert matrices; x [T, K] (one row per token, shared by its Kk slots) or
 *   [T, Kk, K] (one row per slot); ids [T, Kk] (i32 or i64, each in [0, E); repeats allowed).
 *   out [T, Kk, N], out[t, k, :] = w[ids[t, k]] . x_row(t, k), i.e. sum_j w[e, n, j] x_row[j].
 * Output dtype as ts_matmul's (mixed float inputs give f32, or f64 when either is f64). An id
 * outside [0, E) is a TS_ERR_RANGE error at compute time. Backward: dx by the same op with each
 * w[e] transposed (ip[0] = 1 through ts_op_node; summed over Kk for a 2-D x), dw by
 * TS_OP_MATMUL_ID_GRAD_W (rows grouped by expert; zeros for experts no id names); ids get none.
 * The optimized CPU kernel sorts the pairs by expert and runs one GEMM per expert that is used. */
ts_tensor *ts_matmul_id(ts_graph *g, ts_tensor *w, ts_tensor *x, ts_tensor *ids);

/* The gated unit of a SwiGLU feed-forward layer in one pass: silu(min(gate, limit)) *
 * clamp(up, -limit, limit), DeepSeek-V4's clamped form (spec §2.9, swiglu_limit); limit <= 0
 * leaves both unclamped (Llama's silu(gate) * up). gate and up: same shape and float dtype.
 * Backward: one TS_OP_SWIGLU_BACK node gives both gradients (the composite of clamps, silu and a
 * product would store and reread four intermediates). */
ts_tensor *ts_swiglu(ts_graph *g, ts_tensor *gate, ts_tensor *up, float limit);

/* Generic constructor used by autodiff, tests and the conformance harness: checks and infers
 * the output exactly as the named constructor would. */
ts_tensor *ts_op_node(ts_graph *g, ts_op op, ts_tensor *const *src, int n_src,
                      const int32_t *ip, int n_ip, const float *fp, int n_fp);
const char *ts_op_name(ts_op op);

/* ---------------------------------------------------------------- autodiff */

/* Appends the backward graph of scalar `loss` (one element). Afterwards ts_grad(p) holds
 * d loss / d p for every PARAM p that influences loss (NULL otherwise); gradients of params
 * are marked OUTPUT. Can be called once per graph. */
ts_status ts_graph_backward(ts_graph *g, ts_tensor *loss);
ts_tensor *ts_grad(const ts_tensor *t);

/* ---------------------------------------------------------------- memory plan + execution */

/* An arena several graphs share for their intermediates when they never compute at the same
 * time - a decoder's pass graphs, one per batch shape, of which one runs at a time: it holds the
 * largest graph's intermediates rather than the sum of all. A graph allocated into it that
 * needs more grows it, moving the graphs already there (their intermediates change address;
 * leaves do not). An intermediate's value lasts only until another graph of the arena
 * computes. Free the arena after its graphs. */
typedef struct ts_shared_arena ts_shared_arena;
ts_status ts_shared_arena_new(ts_backend *be, ts_shared_arena **out);
void ts_shared_arena_free(ts_shared_arena *a);
size_t ts_shared_arena_bytes(const ts_shared_arena *a); /* its size now */

typedef struct {
    bool naive;            /* every tensor in its own region, no reuse (testing baseline) */
    bool no_inplace;       /* disable in-place reuse of a dying input */
    size_t guard_bytes;    /* pattern-filled bytes around every region, checked by ts_graph_check_guards */
    bool plan_only;        /* fill the stats, allocate nothing: the graph stays unallocated */
    ts_shared_arena *shared_arena; /* intermediates in this arena (same backend, no guards), not one of their own */
} ts_plan_options;

typedef struct {
    size_t arena_bytes;         /* planned peak of intermediates (the arena size) */
    size_t naive_bytes;         /* sum of all intermediates' sizes */
    size_t leaf_bytes;          /* leaves the planner allocated (params, inputs, not bound) */
    int n_intermediates;
    int n_inplace;              /* intermediates that reuse their input's region */
} ts_plan_stats;

/* Plans and allocates all storage on backend `be` (which must outlive the graph's compute
 * calls). opts and stats may be NULL. Nothing is allocated during compute afterwards. */
ts_status ts_graph_alloc(ts_graph *g, ts_backend *be, const ts_plan_options *opts, ts_plan_stats *stats);
ts_status ts_graph_compute(ts_graph *g);
/* Computes only nodes [first, last) (topological order, ts_graph_node), for a caller that skips
 * a part of the graph whose results nothing computed afterwards depends on (a decoder's
 * pooling of a block no sequence completes this step); a full compute is [0, n_nodes). */
ts_status ts_graph_compute_range(ts_graph *g, int first, int last);
/* After compute with guard_bytes > 0: TS_OK, or an error naming the tensor whose guard changed. */
ts_status ts_graph_check_guards(ts_graph *g);

#ifdef __cplusplus
}
#endif
#endif
