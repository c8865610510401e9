/* moe.h - graph builders for one DeepSeekMoE sub-layer (spec §2.10, backward §3 items 11-12,
 * bias update §5.2). Internal to src/model: the V4 block builder calls ts_moe_forward on the
 * normalised FFN input; tests call the pieces directly.
 *
 * Everything here only records graph nodes (nothing runs until ts_graph_compute), except the two
 * host helpers at the end, which count the per-expert load from the routing indices read back
 * after a compute; that load feeds ts_moe_bias_update (tessera/train.h, src/train/moe_balance.c).
 *
 * Layout (row-major, outermost first):
 *   x         [T, d]      T tokens (batch and sequence flattened), d = hidden size
 *   w_gate    [E, d]      router; z = x·w_gateᵀ [T, E]
 *   bias      [E]         balancing bias (learned-routing layers only); NOT a parameter: it takes
 *                         part in the top-K selection only, never in the gate values
 *   tid2eid   [V, K]      i32/i64 expert ids per vocabulary id (hash-routing layers only)
 *   token_ids [T]         i32/i64 (hash-routing layers only)
 *   w1, w3    [E, I, d]   routed experts, gate and up projections (I = moe_intermediate_size)
 *   w2        [E, d, I]   routed experts, down projection
 *   shared_w1, shared_w3 [Is, d], shared_w2 [d, Is]   the shared expert (optional)
 *   scores s  [T, E]      s = sqrt(softplus(z))
 *   indices   [T, K]      i32 from topk (learned) or tid2eid's dtype (hash); descending by s + b
 *                         for learned routing, ties to the lower expert id
 *   gates     [T, K]      g_k = route_scale · s_{e_k} / Σ_k' s_{e_k'}
 *   expert_out  [T, K, d] expert e_k applied to token t, per slot (sparse, the default);
 *               [E, T, d] every routed expert applied to every token (dense reference)
 *   gate_matrix [T, E]    dense reference only: G[t, e] = Σ_k [e_k = e] g_k (scatter of the gates)
 *   out v     [T, d]      Σ_k g_k ⊙ expert_out[:, k] (dense: Σ_e G[:, e] ⊙ expert_out[e]) + Shared(x)
 * All float tensors must share one dtype (the spec keeps the router in FP32; an f64 graph is
 * used for the reference tests).
 *
 * SPARSE DISPATCH (the default): the routed experts run through ts_matmul_id (tessera/graph.h),
 * so each token pays for its K selected experts only: w1 / w3 map x [T, d] to [T, K, I], the
 * clamped SwiGLU acts per slot, w2 maps back to [T, K, d], and the gates weight the slots. The
 * optimized CPU kernel groups the (token, slot) pairs by expert and runs one GEMM per used
 * expert; backward (autodiff of matmul_id) gives dx through the transposed experts and the
 * stacked [E, rows, cols] weight gradients with exact zeros for experts no token chose - the
 * layout the trainer reads through ts_model_graph_grad.
 *
 * DENSE REFERENCE FORMULATION (ts_moe_params.dense): the routed experts are evaluated for every
 * token with one batched matmul over the expert axis, and the unselected experts are multiplied
 * by a gate of exactly 0. Numerically this is the same sum (zero gates contribute exact zeros,
 * and their backward contributes exact zeros), at E/K times the FLOPs and E·T·max(I, d)
 * activation memory. It is the oracle tests/test_moe.c checks the sparse path against (forward
 * and every gradient, f64).
 *
 * Gradients: x, w_gate, w1, w2, w3 and the shared weights receive gradients through autodiff
 * (the selection itself is piecewise constant: topk indices are not differentiated, the gate
 * values are a gather from s). bias, tid2eid and token_ids get none. */
#ifndef TS_MODEL_MOE_H
#define TS_MODEL_MOE_H

#include "tessera/graph.h"
#include "tessera/model.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Hyper-parameters of one MoE sub-layer. */
typedef struct {
    int64_t top_k;       /* K: experts per token (learned) / columns of tid2eid (hash) */
    float route_scale;   /* routed_scaling_factor: 1.5 Flash, 2.5 Pro */
    float swiglu_limit;  /* 10: a <- min(a, limit), b <- clamp(b, -limit, limit); <= 0 disables */
    bool hash_routing;   /* layer id < num_hash_layers: indices = tid2eid[token_ids] */
    bool dense;          /* evaluate every routed expert on every token (the reference
                            formulation above); false (sparse dispatch) everywhere but tests */
} ts_moe_params;

/* The parameters for layer `layer` of cfg (hash routing for layer < num_hash_layers; sparse). */
ts_moe_params ts_moe_params_from_config(const ts_v4_config *cfg, int64_t layer);

/* The leaves of one MoE sub-layer (see the layout above). bias is used (and may be NULL: no
 * bias) for learned routing; tid2eid for hash routing. The shared-expert weights are all
 * NULL (no shared expert) or all set. */
typedef struct {
    ts_tensor *w_gate;
    ts_tensor *bias;
    ts_tensor *tid2eid;
    ts_tensor *w1, *w2, *w3;
    ts_tensor *shared_w1, *shared_w2, *shared_w3;
} ts_moe_weights;

/* The nodes of one built sub-layer; intermediates are exposed for tests and for the balancing
 * statistics (read `indices` after compute; mark it with ts_set_output first). */
typedef struct {
    ts_tensor *out;          /* v [T, d] */
    ts_tensor *scores;       /* s [T, E] */
    ts_tensor *indices;      /* [T, K] */
    ts_tensor *gates;        /* [T, K] */
    ts_tensor *gate_matrix;  /* [T, E] (dense reference) or NULL (sparse) */
    ts_tensor *expert_out;   /* [T, K, d] (sparse) or [E, T, d] (dense reference) */
    ts_tensor *shared_out;   /* [T, d] or NULL */
} ts_moe_nodes;

/* Router (spec §2.10 steps 1-3). Learned routing (tid2eid NULL): indices = topk(s + bias, K),
 * bias may be NULL. Hash routing (tid2eid set): indices = tid2eid[token_ids]; bias is ignored.
 * Any output pointer may be NULL. Returns the graph status (errors also recorded in g). */
ts_status ts_moe_router(ts_graph *g, ts_tensor *x, ts_tensor *w_gate, ts_tensor *bias, ts_tensor *tid2eid,
                        ts_tensor *token_ids, int64_t top_k, float route_scale, ts_tensor **scores,
                        ts_tensor **indices, ts_tensor **gates);

/* Clamped SwiGLU (spec §2.10 step 4): a = x·w1ᵀ, b = x·w3ᵀ, a <- min(a, limit),
 * b <- clamp(b, -limit, limit), h = silu(a) ⊙ b, out = h·w2ᵀ. With w1, w3 [I, d], w2 [d, I]
 * (shared expert) the result is [T, d]; with w1, w3 [E, I, d], w2 [E, d, I] every expert runs on
 * every token: [E, T, d]. limit <= 0 disables the clamp. */
ts_tensor *ts_moe_swiglu(ts_graph *g, ts_tensor *x, ts_tensor *w1, ts_tensor *w3, ts_tensor *w2, float limit);

/* The routed experts named by indices [T, K] on x [T, d], sparse: w1, w3 [E, I, d], w2 [E, d, I];
 * only the selected experts run (ts_matmul_id). Returns the per-slot outputs [T, K, d]
 * (ungated); limit as in ts_moe_swiglu. */
ts_tensor *ts_moe_swiglu_routed(ts_graph *g, ts_tensor *x, ts_tensor *w1, ts_tensor *w3, ts_tensor *w2,
                                ts_tensor *indices, float limit);

/* Dense combine: G = scatter_add(zeros [T, E], axis 1, indices, gates) and
 * v = Σ_e G[:, e] ⊙ expert_out[e] ([T, d]). *gate_matrix (may be NULL) receives G. */
ts_tensor *ts_moe_combine(ts_graph *g, ts_tensor *expert_out, ts_tensor *indices, ts_tensor *gates,
                          ts_tensor **gate_matrix);

/* The whole sub-layer: v = Σ_k g_k Expert_{e_k}(x) + Shared(x). token_ids is needed for hash
 * routing only. nodes may be NULL. Returns v, or NULL on error (message in g). */
ts_tensor *ts_moe_forward(ts_graph *g, ts_tensor *x, const ts_moe_weights *w, const ts_moe_params *p,
                          ts_tensor *token_ids, ts_moe_nodes *nodes);

/* ---------------------------------------------------------------- host helpers (§5.2)
 * The bias update itself is ts_moe_bias_update in tessera/train.h. */

/* Per-expert load: counts[e] = number of (token, slot) pairs routed to e, from the indices of
 * a computed graph (i32 or i64, any shape). counts has n_experts entries and is overwritten.
 * TS_ERR_RANGE when an index lies outside [0, n_experts). */
ts_status ts_moe_expert_load(const ts_tensor *indices, int64_t n_experts, int64_t *counts);
/* The same on a host array of n i32 ids. */
ts_status ts_moe_count_load(const int32_t *ids, int64_t n, int64_t n_experts, int64_t *counts);

#ifdef __cplusplus
}
#endif
#endif
