/* moe.c - graph builders for one DeepSeekMoE sub-layer (spec §2.10): the sqrt-softplus router
 * with bias-only-for-selection or hash routing, the clamped-SwiGLU routed experts - sparse (only
 * each token's K selected experts run, through ts_matmul_id) or, as the reference the tests
 * compare against, dense over an expert axis (see moe.h) - the gate-weighted combine and the
 * shared expert; plus the host-side per-expert load count that aux-loss-free balancing (§5.2)
 * feeds to ts_moe_bias_update (src/train/moe_balance.c).
 * Only nodes are recorded here; the backward pass comes from the graph's autodiff. */
#include "model/moe.h"

#include <math.h>
#include <stdlib.h>

ts_moe_params ts_moe_params_from_config(const ts_v4_config *cfg, int64_t layer) {
    ts_moe_params p = {
        .top_k = cfg->num_experts_per_tok,
        .route_scale = (float)cfg->routed_scaling_factor,
        .swiglu_limit = (float)cfg->swiglu_limit,
        .hash_routing = layer >= 0 && layer < cfg->num_hash_layers,
    };
    return p;
}

static bool dim_is(const ts_tensor *t, int ndim) { return t && t->ndim == ndim; }

ts_status ts_moe_router(ts_graph *g, ts_tensor *x, ts_tensor *w_gate, ts_tensor *bias, ts_tensor *tid2eid,
                        ts_tensor *token_ids, int64_t top_k, float route_scale, ts_tensor **scores,
                        ts_tensor **indices, ts_tensor **gates) {
    if (scores) *scores = NULL;
    if (indices) *indices = NULL;
    if (gates) *gates = NULL;
    if (!g) return TS_ERR_INVALID_ARG;
    if (!x || !w_gate) return ts_graph_status(g) != TS_OK ? ts_graph_status(g)
                                                          : ts_graph_set_error(g, TS_ERR_INVALID_ARG, "moe router: NULL input");
    if (!dim_is(x, 2) || !dim_is(w_gate, 2) || w_gate->shape[1] != x->shape[1])
        return ts_graph_set_error(g, TS_ERR_SHAPE, "moe router: need x [T, d] and w_gate [E, d]");
    int64_t T = x->shape[0], E = w_gate->shape[0];
    if (top_k < 1 || top_k > E) return ts_graph_set_error(g, TS_ERR_RANGE, "moe router: top_k %lld not in 1..%lld",
                                                          (long long)top_k, (long long)E);

    /* affinities s = sqrt(softplus(x·w_gateᵀ)) [T, E], routing in f32 under mixed precision (spec §4.5) */
    ts_dtype autocast = ts_graph_set_autocast(g, TS_F32);
    ts_tensor *s = ts_sqrt(g, ts_softplus(g, ts_matmul(g, x, w_gate, false, true)));
    ts_graph_set_autocast(g, autocast);
    ts_set_name(s, "moe.scores");

    ts_tensor *idx = NULL;
    if (tid2eid) { /* hash routing: fixed expert ids per vocabulary id */
        if (!token_ids || !dim_is(tid2eid, 2) || tid2eid->shape[1] != top_k || !dim_is(token_ids, 1) ||
            token_ids->shape[0] != T)
            return ts_graph_set_error(g, TS_ERR_SHAPE, "moe router: hash routing needs tid2eid [V, %lld] and "
                                      "token_ids [%lld]", (long long)top_k, (long long)T);
        idx = ts_get_rows(g, tid2eid, token_ids); /* [T, K] */
    } else { /* learned routing: select on s + bias, weight with s */
        ts_tensor *sel = s;
        if (bias) {
            if (!dim_is(bias, 1) || bias->shape[0] != E)
                return ts_graph_set_error(g, TS_ERR_SHAPE, "moe router: bias must be [%lld]", (long long)E);
            sel = ts_add(g, s, bias);
        }
        ts_status st = ts_topk(g, sel, (int)top_k, NULL, &idx);
        if (st != TS_OK) return st;
    }
    ts_set_name(idx, "moe.indices");

    /* g_k = route_scale · s_{e_k} / Σ_k' s_{e_k'} (the bias never enters) */
    ts_tensor *sk = ts_gather(g, s, 1, idx);
    ts_tensor *gk = ts_scale(g, ts_div(g, sk, ts_sum(g, sk, 1, true)), route_scale);
    ts_set_name(gk, "moe.gates");

    if (scores) *scores = s;
    if (indices) *indices = idx;
    if (gates) *gates = gk;
    return ts_graph_status(g);
}

ts_tensor *ts_moe_swiglu(ts_graph *g, ts_tensor *x, ts_tensor *w1, ts_tensor *w3, ts_tensor *w2, float limit) {
    if (!g || !x || !w1 || !w3 || !w2) return NULL;
    ts_tensor *a = ts_matmul(g, x, w1, false, true); /* [.., T, I] */
    ts_tensor *b = ts_matmul(g, x, w3, false, true);
    return ts_matmul(g, ts_swiglu(g, a, b, limit), w2, false, true); /* [.., T, d] */
}

ts_tensor *ts_moe_swiglu_routed(ts_graph *g, ts_tensor *x, ts_tensor *w1, ts_tensor *w3, ts_tensor *w2,
                                ts_tensor *indices, float limit) {
    if (!g || !x || !w1 || !w3 || !w2 || !indices) return NULL;
    ts_tensor *a = ts_matmul_id(g, w1, x, indices); /* [T, K, I] */
    ts_tensor *b = ts_matmul_id(g, w3, x, indices);
    return ts_matmul_id(g, w2, ts_swiglu(g, a, b, limit), indices); /* [T, K, d] */
}

/* v[t] = Σ_k gates[t, k] · slot_out[t, k] ([T, d]) for slot_out [T, K, d]. */
static ts_tensor *combine_slots(ts_graph *g, ts_tensor *slot_out, ts_tensor *gates) {
    if (!slot_out || !gates) return NULL;
    int64_t g3[3] = {gates->shape[0], gates->shape[1], 1};
    return ts_sum(g, ts_mul(g, slot_out, ts_reshape(g, gates, 3, g3)), 1, false);
}

ts_tensor *ts_moe_combine(ts_graph *g, ts_tensor *expert_out, ts_tensor *indices, ts_tensor *gates,
                          ts_tensor **gate_matrix) {
    if (gate_matrix) *gate_matrix = NULL;
    if (!g || !expert_out || !indices || !gates) return NULL;
    if (!dim_is(expert_out, 3) || !dim_is(gates, 2) || gates->shape[0] != expert_out->shape[1]) {
        ts_graph_set_error(g, TS_ERR_SHAPE, "moe combine: need expert_out [E, T, d] and gates [T, K]");
        return NULL;
    }
    int64_t E = expert_out->shape[0], T = expert_out->shape[1];
    ts_tensor *zeros = ts_fill(g, gates->dtype, 2, (int64_t[]){T, E}, 0.0f);
    ts_tensor *G = ts_scatter_add(g, zeros, 1, indices, gates); /* [T, E] */
    ts_set_name(G, "moe.gate_matrix");
    ts_tensor *Ge = ts_reshape(g, ts_transpose(g, G, 0, 1), 3, (int64_t[]){E, T, 1});
    ts_tensor *v = ts_sum(g, ts_mul(g, Ge, expert_out), 0, false); /* [T, d] */
    if (gate_matrix) *gate_matrix = G;
    return v;
}

ts_tensor *ts_moe_forward(ts_graph *g, ts_tensor *x, const ts_moe_weights *w, const ts_moe_params *p,
                          ts_tensor *token_ids, ts_moe_nodes *nodes) {
    if (nodes) *nodes = (ts_moe_nodes){0};
    if (!g) return NULL;
    if (!w || !p) {
        ts_graph_set_error(g, TS_ERR_INVALID_ARG, "moe: NULL weights or params");
        return NULL;
    }
    if (!x || !w->w_gate || !w->w1 || !w->w2 || !w->w3) {
        if (ts_graph_status(g) == TS_OK) ts_graph_set_error(g, TS_ERR_INVALID_ARG, "moe: NULL input or weight");
        return NULL;
    }
    if (p->hash_routing && !w->tid2eid) {
        ts_graph_set_error(g, TS_ERR_INVALID_ARG, "moe: hash routing needs tid2eid");
        return NULL;
    }
    bool has_shared = w->shared_w1 || w->shared_w2 || w->shared_w3;
    if (has_shared && !(w->shared_w1 && w->shared_w2 && w->shared_w3)) {
        ts_graph_set_error(g, TS_ERR_INVALID_ARG, "moe: shared expert weights must be all set or all NULL");
        return NULL;
    }
    int64_t E = w->w_gate->shape[0];
    if (!dim_is(w->w1, 3) || !dim_is(w->w3, 3) || !dim_is(w->w2, 3) || w->w1->shape[0] != E ||
        w->w3->shape[0] != E || w->w2->shape[0] != E) {
        ts_graph_set_error(g, TS_ERR_SHAPE, "moe: routed expert weights must be [E=%lld, ., .]", (long long)E);
        return NULL;
    }

    ts_tensor *s, *idx, *gk;
    if (ts_moe_router(g, x, w->w_gate, p->hash_routing ? NULL : w->bias, p->hash_routing ? w->tid2eid : NULL,
                      token_ids, p->top_k, p->route_scale, &s, &idx, &gk) != TS_OK)
        return NULL;

    ts_tensor *eo, *v, *G = NULL;
    if (p->dense) { /* reference: all E experts on all T tokens, unselected ones weighted by exact zeros */
        eo = ts_moe_swiglu(g, x, w->w1, w->w3, w->w2, p->swiglu_limit); /* [E, T, d] */
        v = ts_moe_combine(g, eo, idx, gk, &G);
    } else { /* sparse: each token's K selected experts only */
        eo = ts_moe_swiglu_routed(g, x, w->w1, w->w3, w->w2, idx, p->swiglu_limit); /* [T, K, d] */
        v = combine_slots(g, eo, gk);
    }
    ts_set_name(eo, "moe.expert_out");
    ts_tensor *sh = NULL;
    if (has_shared) {
        sh = ts_moe_swiglu(g, x, w->shared_w1, w->shared_w3, w->shared_w2, p->swiglu_limit); /* unweighted */
        ts_set_name(sh, "moe.shared_out");
        v = ts_add(g, v, sh);
    }
    ts_set_name(v, "moe.out");
    if (!v || ts_graph_status(g) != TS_OK) return NULL;
    if (nodes) *nodes = (ts_moe_nodes){.out = v, .scores = s, .indices = idx, .gates = gk, .gate_matrix = G,
                                       .expert_out = eo, .shared_out = sh};
    return v;
}

/* ---------------------------------------------------------------- host helpers */

ts_status ts_moe_count_load(const int32_t *ids, int64_t n, int64_t n_experts, int64_t *counts) {
    if ((!ids && n > 0) || !counts || n_experts < 1 || n < 0) return TS_ERR_INVALID_ARG;
    for (int64_t e = 0; e < n_experts; e++) counts[e] = 0;
    for (int64_t i = 0; i < n; i++) {
        if (ids[i] < 0 || ids[i] >= n_experts) return TS_ERR_RANGE;
        counts[ids[i]]++;
    }
    return TS_OK;
}

ts_status ts_moe_expert_load(const ts_tensor *indices, int64_t n_experts, int64_t *counts) {
    if (!indices || !counts || n_experts < 1) return TS_ERR_INVALID_ARG;
    if (indices->dtype != TS_I32 && indices->dtype != TS_I64) return TS_ERR_DTYPE;
    int64_t n = ts_nelements(indices);
    size_t bytes = ts_nbytes(indices);
    void *buf = malloc(bytes ? bytes : 1);
    if (!buf) return TS_ERR_OOM;
    ts_status st = ts_tensor_read(indices, buf, bytes);
    if (st == TS_OK) {
        for (int64_t e = 0; e < n_experts; e++) counts[e] = 0;
        for (int64_t i = 0; i < n && st == TS_OK; i++) {
            int64_t id = indices->dtype == TS_I32 ? ((const int32_t *)buf)[i] : ((const int64_t *)buf)[i];
            if (id < 0 || id >= n_experts) st = TS_ERR_RANGE;
            else counts[id]++;
        }
    }
    free(buf);
    return st;
}
