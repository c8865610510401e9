/* model_graph.c - the whole model on one graph: DeepSeek-V4 (spec §2.1-§2.12) and the dense
 * baseline, for a fixed batch shape [B, T], with the next-token loss, the MTP loss and, for
 * training, the backward pass (autodiff over the recorded ops).
 *
 * V4 reads top to bottom like spec §2.1: embed -> copy into hc_mult streams -> for each layer
 * two mHC-wrapped sub-layers (attention §2.5-§2.9, MoE §2.10) -> hc_head -> final norm -> head.
 * The MTP block (§2.12) continues from the final streams. The pieces are the builders of
 * mhc.c, compressor.c and moe.c; this file wires them and owns the constant tables (RoPE
 * angles per layer type, causal block masks, HCA index lists), which it fills at alloc.
 * Parameter leaves are bound to the arrays of ts_model_weights (routed experts as one stacked
 * [E, rows, cols] leaf per layer and kind). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/model_internal.h"
#include "model/moe.h"

/* ---------------------------------------------------------------- leaves */

/* The leaf of weight `name` (prefix + suffix), created on first use and bound to the weights.
 * Routed experts return the stacked [E, rows, cols] leaf of expert 0's block. */
void ts_mb_checkpoint(ts_model_builder *b, ts_tensor *x) {
    if (b->mg && b->mg->opts.recompute && b->mg->opts.backward) ts_set_checkpoint(x);
}

ts_tensor *ts_mb_param(ts_model_builder *b, const char *prefix, const char *suffix) {
    char name[TS_MODEL_TENSOR_NAME_MAX + 32];
    snprintf(name, sizeof name, "%s%s", prefix, suffix);
    int i = ts_model_weights_find(b->w, name);
    if (i < 0) {
        ts_graph_set_error(b->g, TS_ERR_INTERNAL, "model graph: no weight '%s'", name);
        return NULL;
    }
    int base = ts_model_weights_stack_base(b->w, i);
    int key = base >= 0 ? base : i;
    if (b->mg->params[key]) return b->mg->params[i] = b->mg->params[key];
    const ts_model_tensor *t = ts_model_weights_info(b->w, key);
    int64_t shape[3];
    int nd = 0;
    if (base >= 0) shape[nd++] = b->c->n_routed_experts;
    for (int d = 0; d < t->ndim; d++) shape[nd++] = t->shape[d];
    ts_tensor *leaf = ts_new_tensor(b->g, ts_model_weights_mem_dtype(b->w, key), nd, shape, base >= 0 ? "experts" : name);
    if (!leaf) return NULL;
    if (base >= 0) ts_set_name(leaf, "%s(stacked)", t->name);
    if (ts_tensor_bind_host(leaf, ts_model_weights_data(b->w, key)) != TS_OK) {
        ts_graph_set_error(b->g, TS_ERR_INTERNAL, "model graph: cannot bind '%s'", name);
        return NULL;
    }
    if (b->mg->opts.backward && t->is_param && t->optim != TS_OPTIM_NONE) ts_set_param(leaf);
    b->mg->params[key] = leaf;
    if (base >= 0) /* every expert's tensor of this block (walk order: 3 tensors per expert) */
        for (int64_t e = 1; e < b->c->n_routed_experts; e++) b->mg->params[key + 3 * e] = leaf;
    return b->mg->params[i] = leaf;
}

ts_tensor *ts_mb_embed(ts_model_builder *b, ts_tensor *ids) {
    ts_tensor *e = ts_get_rows(b->g, ts_mb_param(b, "", "embed.weight"), ids);
    return e && e->dtype != b->dt ? ts_cast(b->g, e, b->dt) : e;
}

static ts_tensor *constant(ts_model_builder *b, ts_mb_const_kind kind, int nd, const int64_t *shape, ts_dtype dt, double base,
                           bool yarn, int64_t step, const char *name) {
    for (int i = 0; i < b->consts->n; i++) { /* one table per distinct content */
        ts_mb_const *k = &b->consts->v[i];
        if (k->kind == kind && k->base == base && k->yarn == yarn && k->step == step && k->t->ndim == nd &&
            memcmp(k->t->shape, shape, (size_t)nd * sizeof *shape) == 0)
            return k->t;
    }
    if (b->consts->n == b->consts->cap) {
        int cap = b->consts->cap ? 2 * b->consts->cap : 16;
        ts_mb_const *v = realloc(b->consts->v, (size_t)cap * sizeof *v);
        if (!v) {
            ts_graph_set_error(b->g, TS_ERR_OOM, "model graph: out of memory");
            return NULL;
        }
        b->consts->v = v;
        b->consts->cap = cap;
    }
    ts_tensor *t = ts_new_tensor(b->g, dt, nd, shape, name);
    if (!t) return NULL;
    b->consts->v[b->consts->n++] = (ts_mb_const){t, kind, base, yarn, step};
    return t;
}

/* Rotary dims per head: V4 rotates the last qk_rope_head_dim, the dense baseline the whole head. */
static int64_t rope_dims(const ts_v4_config *c) { return c->kind == TS_MODEL_DENSE ? c->head_dim : c->qk_rope_head_dim; }

/* RoPE angles [n_pos, r/2] for positions p·step. */
ts_tensor *ts_mb_angles(ts_model_builder *b, bool compressed_layer, int64_t n_pos, int64_t step) {
    int64_t shape[2] = {n_pos, rope_dims(b->c) / 2};
    double base = compressed_layer ? b->c->compress_rope_theta : b->c->rope_theta;
    return constant(b, TS_MB_CONST_ANGLES, 2, shape, b->dt, base, compressed_layer && b->c->rope_scaling.enabled, step,
                    "rope_angles");
}

/* ---------------------------------------------------------------- V4 attention (§2.5-§2.9) */

ts_tensor *ts_mb_linear(ts_model_builder *b, ts_tensor *x, const char *prefix, const char *name) {
    return ts_matmul(b->g, x, ts_mb_param(b, prefix, name), false, true);
}

ts_v4_compressor_w ts_mb_compressor_weights(ts_model_builder *b, const char *prefix, const char *where) {
    char p[TS_MODEL_TENSOR_NAME_MAX];
    snprintf(p, sizeof p, "%s%scompressor.", prefix, where);
    return (ts_v4_compressor_w){ts_mb_param(b, p, "wkv.weight"), ts_mb_param(b, p, "wgate.weight"), ts_mb_param(b, p, "ape"),
                                ts_mb_param(b, p, "norm.weight")};
}

/* Compressed entries and their per-query index lists for layer slot `layer` (ratio m > 0, at
 * least one completed block). x [B, T, d], cq [B*T, q_lora]. */
/* Lightning-indexer KL loss of one CSA layer (spec §5.1: V3.2's objective on V4's compressed
 * entries). Target p[t] = the main attention's distribution over the usable compressed entries,
 * per head renormalised over those entries, averaged over heads (the spec sums the heads' full
 * softmax; renormalising first keeps the target independent of the window keys, which the
 * fused attention kernel does not expose); with `selected` (sparse stage) both distributions
 * are restricted to the indexer's picks. Loss = mean over queries with a usable entry of
 * KL(p[t] || softmax(I[t])). The target is detached; the caller detaches the indexer's inputs,
 * so this loss trains the indexer only. q [B, T, H, c] (after norm + RoPE), entries [B, nb, c],
 * scores I [B, T, nb] with -inf on unusable blocks, mask [B, T, nb] (0 / -inf), selected [B, T, k]
 * (-1 = no pick) or NULL. */
static ts_tensor *indexer_kl(ts_model_builder *b, ts_tensor *q, ts_tensor *entries, ts_tensor *scores, ts_tensor *mask,
                             ts_tensor *selected) {
    ts_graph *g = b->g;
    int64_t B = b->B, T = b->T, H = b->c->num_attention_heads, c = b->c->head_dim, nb = entries->shape[1];
    const float big = 1e9f; /* finite stand-in for -inf: 0 · (-1e9) = 0 where p = 0, never NaN */
    int64_t s4[4] = {B, T, H, nb}, sq[3] = {B, T * H, c}, sm[4] = {B, T, 1, nb};
    ts_tensor *maskf = ts_clamp(g, mask, -big, 0.0f);
    ts_tensor *usable = ts_clamp(g, ts_sum(g, ts_exp(g, maskf), -1, true), 0.0f, 1.0f); /* [B, T, 1] */
    if (selected) { /* 0 on picked blocks, -big elsewhere: scatter into a column per block plus one for -1 */
        int64_t sp[3] = {B, T, nb + 1};
        ts_tensor *one = ts_fill(g, TS_F32, 1, (int64_t[]){1}, 1.0f);
        ts_tensor *pos = ts_cast(g, ts_add(g, ts_cast(g, selected, TS_F32), one), TS_I32);
        ts_tensor *hits = ts_scatter_add(g, ts_fill(g, b->dt, 3, sp, 0.0f), 2, pos,
                                         ts_fill(g, b->dt, 3, selected->shape, 1.0f));
        ts_tensor *picked = ts_clamp(g, ts_slice(g, hits, 2, 1, nb), 0.0f, 1.0f);
        maskf = ts_add(g, maskf, ts_scale(g, ts_sub(g, picked, ts_fill(g, b->dt, 1, (int64_t[]){1}, 1.0f)), big));
    }
    ts_tensor *S = ts_matmul(g, ts_reshape(g, ts_detach(g, q), 3, sq), ts_detach(g, entries), false, true);
    S = ts_add(g, ts_scale(g, ts_reshape(g, S, 4, s4), (float)(1.0 / sqrt((double)c))), ts_reshape(g, maskf, 4, sm));
    ts_tensor *p = ts_detach(g, ts_scale(g, ts_sum(g, ts_softmax(g, S, -1, NULL), 2, false), 1.0f / (float)H));
    ts_tensor *I = ts_add(g, ts_clamp(g, scores, -big, INFINITY), selected ? ts_clamp(g, maskf, -big, 0.0f) : maskf);
    ts_tensor *m = ts_detach(g, ts_max(g, I, -1, true));
    ts_tensor *lse = ts_add(g, m, ts_log(g, ts_sum(g, ts_exp(g, ts_sub(g, I, m)), -1, true)));
    ts_tensor *tiny = ts_fill(g, b->dt, 1, (int64_t[]){1}, 1e-30f);
    ts_tensor *neg_entropy = ts_sum(g, ts_mul(g, p, ts_log(g, ts_add(g, p, tiny))), -1, true);
    ts_tensor *kl = ts_add(g, ts_sub(g, lse, ts_sum(g, ts_mul(g, p, I), -1, true)), neg_entropy); /* [B, T, 1] */
    ts_tensor *total = ts_sum(g, ts_reshape(g, ts_mul(g, kl, usable), 1, (int64_t[]){B * T}), 0, true);
    ts_tensor *count = ts_sum(g, ts_reshape(g, usable, 1, (int64_t[]){B * T}), 0, true);
    return ts_div(g, total, ts_clamp(g, count, 1.0f, INFINITY));
}

/* Compressed entries and their per-query index lists for layer slot `layer` (ratio m > 0, at
 * least one completed block). x [B, T, d], cq [B*T, q_lora], q [B, T, H, c]. */
static void compressed_entries(ts_model_builder *b, int layer, const char *prefix, ts_tensor *x, ts_tensor *cq,
                               ts_tensor *q, int64_t m, ts_tensor **extra, ts_tensor **extra_idx) {
    const ts_v4_config *c = b->c;
    ts_graph *g = b->g;
    const ts_model_graph_options *o = &b->mg->opts;
    int64_t nb = b->T / m, hd = c->head_dim;
    int r = (int)c->qk_rope_head_dim;
    ts_tensor *ang_k = ts_mb_angles(b, true, nb, m);
    ts_v4_compressor_w cw = ts_mb_compressor_weights(b, prefix, "attn.");
    ts_tensor *entries = m == TS_V4_RATIO_CSA ? ts_v4_csa_compress(g, x, &cw, m, ang_k, r, b->eps)
                                              : ts_v4_hca_compress(g, x, &cw, m, ang_k, r, b->eps);
    int64_t es[4] = {b->B, nb, 1, hd};
    *extra = ts_reshape(g, entries, 4, es);
    int64_t is[3] = {b->B, b->T, nb};
    bool indexer = m == TS_V4_RATIO_CSA && (!o->dense_csa || o->indexer_loss);
    if (m != TS_V4_RATIO_CSA || o->dense_csa) /* every usable block */
        *extra_idx = constant(b, TS_MB_CONST_BLOCK_IDX, 3, is, TS_I32, 0, false, m, "block_idx");
    if (!indexer) return;
    int64_t cs[3] = {b->B, b->T, c->q_lora_rank};
    ts_tensor *mask = constant(b, TS_MB_CONST_BLOCK_MASK, 3, is, b->dt, 0, false, m, "block_mask");
    ts_v4_compressor_w iw = ts_mb_compressor_weights(b, prefix, "attn.indexer.");
    char ip[TS_MODEL_TENSOR_NAME_MAX];
    snprintf(ip, sizeof ip, "%sattn.indexer.", prefix);
    /* trained by its own loss only: its inputs are detached from the model (spec §5.1) */
    ts_tensor *xi = o->indexer_loss ? ts_detach(g, x) : x, *cqi = o->indexer_loss ? ts_detach(g, cq) : cq;
    ts_tensor *scores = NULL;
    ts_tensor *picks = ts_v4_indexer(g, xi, ts_reshape(g, cqi, 3, cs), ts_mb_param(b, ip, "wq_b.weight"),
                                     ts_mb_param(b, ip, "weights_proj.weight"), &iw, c->index_n_heads,
                                     c->index_head_dim, m, ts_mb_angles(b, true, b->T, 1), ang_k, r, b->eps, mask,
                                     c->index_topk, &scores, NULL);
    b->mg->index_idx[layer] = ts_set_output(picks);
    if (!o->dense_csa) *extra_idx = picks;
    if (o->indexer_loss && picks) {
        ts_tensor *l = indexer_kl(b, q, entries, scores, mask, o->dense_csa ? NULL : picks);
        b->mg->indexer_loss = b->mg->indexer_loss ? ts_add(g, b->mg->indexer_loss, l) : l;
    }
}

/* Grouped low-rank output projection (§2.5 step 8): o [B, T, H, c] -> [B, T, d]. */
static ts_tensor *grouped_output(ts_model_builder *b, const char *prefix, ts_tensor *o) {
    const ts_v4_config *c = b->c;
    ts_graph *g = b->g;
    int64_t BT = b->B * b->T, grp = c->o_groups, per = c->num_attention_heads * c->head_dim / grp;
    int64_t os[3] = {BT, grp, per}, ws[3] = {grp, c->o_lora_rank, per};
    int perm[3] = {1, 0, 2};
    ts_tensor *og = ts_permute(g, ts_reshape(g, o, 3, os), perm);                      /* [g, BT, per] */
    ts_tensor *wa = ts_reshape(g, ts_mb_param(b, prefix, "attn.wo_a.weight"), 3, ws);        /* [g, dg, per] */
    ts_tensor *r = ts_permute(g, ts_matmul(g, og, wa, false, true), perm);             /* [BT, g, dg] */
    ts_tensor *v = ts_mb_linear(b, ts_reshape_2d(g, r, BT, grp * c->o_lora_rank), prefix, "attn.wo_b.weight");
    int64_t vs[3] = {b->B, b->T, c->hidden_size};
    return ts_reshape(g, v, 3, vs);
}

static ts_tensor *v4_attention(ts_model_builder *b, int layer, const char *prefix, ts_tensor *x) {
    const ts_v4_config *c = b->c;
    ts_graph *g = b->g;
    int64_t B = b->B, T = b->T, H = c->num_attention_heads, hd = c->head_dim, m = c->compress_ratios[layer];
    int r = (int)c->qk_rope_head_dim;
    int64_t as[3] = {T, 1, r / 2};
    /* one table for every row, or (decoding) each row's own position */
    ts_tensor *ang3 = b->dec ? ts_decode_token_angles(b, m > 0) : ts_reshape(g, ts_mb_angles(b, m > 0, T, 1), 3, as);
    ts_tensor *xf = ts_reshape_2d(g, x, B * T, c->hidden_size);

    ts_tensor *cq = ts_rms_norm(g, ts_mb_linear(b, xf, prefix, "attn.wq_a.weight"), ts_mb_param(b, prefix, "attn.q_norm.weight"),
                                b->eps);
    int64_t qs[4] = {B, T, H, hd}, ks[4] = {B, T, 1, hd};
    ts_tensor *q = ts_reshape(g, ts_mb_linear(b, cq, prefix, "attn.wq_b.weight"), 4, qs);
    q = ts_rope(g, ts_rms_norm(g, q, NULL, b->eps), ang3, r, false);
    ts_tensor *kv = ts_rms_norm(g, ts_mb_linear(b, xf, prefix, "attn.wkv.weight"), ts_mb_param(b, prefix, "attn.kv_norm.weight"),
                                b->eps);
    kv = ts_rope(g, ts_reshape(g, kv, 4, ks), ang3, r, false);

    ts_attention_params p = {.scale = (float)(1.0 / sqrt((double)hd)),
                             .causal = true,
                             .window = (int32_t)c->sliding_window,
                             .sink = ts_mb_param(b, prefix, "attn.attn_sink"),
                             .key_start = b->mg->doc_start};
    if (b->dec) ts_decode_cache_entries(b, layer, prefix, x, cq, &kv, &p);
    else if (m > 0 && T >= m) { /* compressors and indexer in f32 under mixed precision (spec §4.5) */
        ts_dtype autocast = ts_graph_set_autocast(g, TS_F32);
        compressed_entries(b, layer, prefix, x, cq, q, m, &p.extra, &p.extra_idx);
        ts_graph_set_autocast(g, autocast);
    }
    ts_tensor *o = ts_attention(g, q, kv, kv, &p);
    o = ts_rope(g, o, ang3, r, true); /* de-rotation by -t (§2.5 step 7) */
    return grouped_output(b, prefix, o);
}

/* ---------------------------------------------------------------- MoE (§2.10) */

/* Sequence-wise balance loss (spec §5.1) of one layer, averaged over the B sequences:
 * alpha/B · Σ_b Σ_e f_be·P_be, f_be = E/(K·T)·#{t : e chosen} (a constant: the selection has no
 * gradient), P_be = mean_t s_bte / Σ_e' s_bte'. The host version is ts_moe_seq_balance_loss. */
static ts_tensor *balance_loss(ts_model_builder *b, const ts_moe_nodes *nodes, int64_t K) {
    ts_graph *g = b->g;
    int64_t E = b->c->n_routed_experts, BT = b->B * b->T;
    int64_t bte[3] = {b->B, b->T, E}, bt_e[2] = {BT, E}, bt_k[2] = {BT, K};
    ts_tensor *s = nodes->scores;
    ts_tensor *P = ts_mean(g, ts_reshape(g, ts_div(g, s, ts_sum(g, s, 1, true)), 3, bte), 1, false); /* [B, E] */
    ts_tensor *counts = ts_scatter_add(g, ts_fill(g, b->dt, 2, bt_e, 0.0f), 1, nodes->indices,
                                       ts_fill(g, b->dt, 2, bt_k, 1.0f));
    ts_tensor *f = ts_scale(g, ts_sum(g, ts_reshape(g, counts, 3, bte), 1, false),
                            (float)((double)E / ((double)K * (double)b->T))); /* [B, E] */
    ts_tensor *per_seq = ts_sum(g, ts_mul(g, f, P), 1, false);                 /* [B] */
    return ts_scale(g, ts_sum(g, per_seq, 0, false), (float)(b->mg->opts.balance_alpha / (double)b->B));
}

static ts_tensor *v4_moe(ts_model_builder *b, int layer, const char *prefix, ts_tensor *x, bool is_mtp) {
    const ts_v4_config *c = b->c;
    ts_graph *g = b->g;
    ts_moe_params mp = ts_moe_params_from_config(c, layer);
    if (is_mtp) mp.hash_routing = false;
    ts_moe_weights mw = {.w_gate = ts_mb_param(b, prefix, "ffn.gate.weight")};
    if (mp.hash_routing) mw.tid2eid = ts_mb_param(b, prefix, "ffn.gate.tid2eid");
    else mw.bias = ts_mb_param(b, prefix, "ffn.gate.bias");
    mw.w1 = ts_mb_param(b, prefix, "ffn.experts.0.w1.weight");
    mw.w2 = ts_mb_param(b, prefix, "ffn.experts.0.w2.weight");
    mw.w3 = ts_mb_param(b, prefix, "ffn.experts.0.w3.weight");
    if (c->n_shared_experts > 0) {
        mw.shared_w1 = ts_mb_param(b, prefix, "ffn.shared_experts.w1.weight");
        mw.shared_w2 = ts_mb_param(b, prefix, "ffn.shared_experts.w2.weight");
        mw.shared_w3 = ts_mb_param(b, prefix, "ffn.shared_experts.w3.weight");
    }
    ts_moe_nodes nodes;
    ts_tensor *xf = ts_reshape_2d(g, x, b->B * b->T, c->hidden_size);
    ts_tensor *v = ts_moe_forward(g, xf, &mw, &mp, b->ids_flat, &nodes);
    if (!v) return NULL;
    b->mg->route_idx[layer] = ts_set_output(nodes.indices);
    if (b->mg->opts.balance_alpha > 0 && !mp.hash_routing) {
        ts_tensor *l = balance_loss(b, &nodes, mp.top_k);
        b->mg->route_scores[layer] = ts_set_output(nodes.scores);
        b->mg->balance_loss = b->mg->balance_loss ? ts_add(g, b->mg->balance_loss, l) : l;
    }
    int64_t vs[3] = {b->B, b->T, c->hidden_size};
    return ts_reshape(g, v, 3, vs);
}

/* ---------------------------------------------------------------- blocks (§2.11) */

/* One mHC-wrapped sub-layer ("attn" / "ffn") around f(norm(u)). With hc_mult = 1 mHC is off and
 * the sub-layer is a plain pre-norm residual (spec §7.3). X [B, T, n, d]. */
static ts_tensor *sublayer(ts_model_builder *b, int layer, const char *prefix, const char *which, ts_tensor *X, bool is_mtp) {
    const ts_v4_config *c = b->c;
    ts_graph *g = b->g;
    int64_t n = c->hc_mult;
    char name[64];
    ts_tensor *u, *post = NULL, *comb = NULL;
    if (n > 1) { /* the coefficients in f32 under mixed precision (spec §4.5) */
        char fn[32], base[32], scale[32];
        snprintf(fn, sizeof fn, "hc_%s_fn", which);
        snprintf(base, sizeof base, "hc_%s_base", which);
        snprintf(scale, sizeof scale, "hc_%s_scale", which);
        ts_dtype autocast = ts_graph_set_autocast(g, TS_F32);
        u = ts_mhc_pre(g, X, ts_mb_param(b, prefix, fn), ts_mb_param(b, prefix, base), ts_mb_param(b, prefix, scale), n, b->eps,
                       (float)c->hc_eps, (int)c->hc_sinkhorn_iters, NULL, &post, &comb, NULL);
        ts_graph_set_autocast(g, autocast);
    } else {
        int64_t us[3] = {b->B, b->T, c->hidden_size};
        u = ts_reshape(g, X, 3, us);
    }
    snprintf(name, sizeof name, "%s_norm.weight", which);
    ts_tensor *x = ts_rms_norm(g, u, ts_mb_param(b, prefix, name), b->eps);
    ts_tensor *v = strcmp(which, "attn") == 0 ? v4_attention(b, layer, prefix, x) : v4_moe(b, layer, prefix, x, is_mtp);
    if (n > 1) return ts_mhc_post(g, X, v, post, comb);
    return ts_add(g, X, ts_reshape(g, v, 4, X->shape));
}

static ts_tensor *block(ts_model_builder *b, int layer, const char *prefix, ts_tensor *X, bool is_mtp) {
    X = sublayer(b, layer, prefix, "attn", X, is_mtp);
    return sublayer(b, layer, prefix, "ffn", X, is_mtp);
}

/* hc_head (or the single stream) -> norm -> head: X [B, T', n, d] -> logits [B, T', V]. All in
 * f32 under mixed precision (spec §4.5: mHC coefficients, logits). */
static ts_tensor *head(ts_model_builder *b, const char *prefix, ts_tensor *X) {
    const ts_v4_config *c = b->c;
    ts_graph *g = b->g;
    ts_dtype autocast = ts_graph_set_autocast(g, TS_F32);
    ts_tensor *y;
    if (c->hc_mult > 1) {
        y = ts_mhc_head(g, X, ts_mb_param(b, prefix, "hc_head_fn"), ts_mb_param(b, prefix, "hc_head_base"),
                        ts_mb_param(b, prefix, "hc_head_scale"), b->eps, (float)c->hc_eps, NULL);
    } else {
        int64_t ys[3] = {b->B, X->shape[1], c->hidden_size};
        y = ts_reshape(g, X, 3, ys);
    }
    y = ts_rms_norm(g, y, ts_mb_param(b, prefix, "norm.weight"), b->eps);
    ts_tensor *w = ts_mb_param(b, "", c->tie_word_embeddings ? "embed.weight" : "head.weight");
    ts_tensor *logits = ts_matmul(g, y, w, false, true);
    ts_graph_set_autocast(g, autocast);
    return logits;
}

/* The rows that get logits: every token, or (decoding) each row's last R. X [B, T, n, d]. */
static ts_tensor *logit_rows(ts_model_builder *b, ts_tensor *X) {
    int64_t R = b->dec ? ts_decode_logit_rows(b) : b->T;
    return R < b->T ? ts_slice(b->g, X, 1, b->T - R, R) : X;
}

/* MTP block j (§2.12): streams X of the main model + the embedding of next_ids, the token at t+1. */
static ts_tensor *mtp(ts_model_builder *b, int j, ts_tensor *X, ts_tensor *next_ids) {
    const ts_v4_config *c = b->c;
    ts_graph *g = b->g;
    char prefix[32];
    snprintf(prefix, sizeof prefix, "mtp.%d.", j);
    ts_tensor *e = ts_mb_embed(b, next_ids);
    e = ts_mb_linear(b, ts_rms_norm(g, e, ts_mb_param(b, prefix, "enorm.weight"), b->eps), prefix, "e_proj.weight");
    ts_tensor *h = ts_mb_linear(b, ts_rms_norm(g, X, ts_mb_param(b, prefix, "hnorm.weight"), b->eps), prefix, "h_proj.weight");
    int64_t es[4] = {b->B, b->T, 1, c->hidden_size};
    ts_tensor *Xm = ts_add(g, h, ts_reshape(g, e, 4, es));
    Xm = block(b, (int)c->num_hidden_layers + j, prefix, Xm, true);
    return head(b, prefix, logit_rows(b, Xm));
}

static void build_v4(ts_model_builder *b) {
    const ts_v4_config *c = b->c;
    ts_graph *g = b->g;
    ts_model_graph *mg = b->mg;
    int64_t n = c->hc_mult, d = c->hidden_size;
    ts_tensor *X;
    if (b->dec && ts_decode_mtp_input(b, &X)) { /* a decoder's MTP pass: the block alone */
        mg->logits = mtp(b, 0, X, mg->ids);
        return;
    }
    ts_tensor *e = ts_mb_embed(b, mg->ids); /* [B, T, d] */
    int64_t e4[4] = {b->B, b->T, 1, d}, xs[4] = {b->B, b->T, n, d};
    X = ts_cont(g, ts_expand(g, ts_reshape(g, e, 4, e4), 4, xs)); /* every stream = e (§2.1) */
    for (int layer = 0; layer < c->num_hidden_layers; layer++) {
        char prefix[32];
        snprintf(prefix, sizeof prefix, "layers.%d.", layer);
        ts_mb_checkpoint(b, X);
        X = block(b, layer, prefix, X, false);
    }
    ts_mb_checkpoint(b, X);
    if (b->dec) ts_decode_keep_streams(b, X);
    mg->logits = head(b, "", logit_rows(b, X));
    if (mg->opts.mtp) mg->mtp_logits = mtp(b, 0, X, mg->mtp_ids);
}

/* ---------------------------------------------------------------- losses and the whole graph */

ts_tensor *ts_mb_input_ids(ts_model_builder *b, const char *name) {
    return ts_set_name(ts_new_tensor_2d(b->g, TS_I32, b->B, b->T, name), "%s", name);
}

static void build_losses(ts_model_builder *b) {
    ts_model_graph *mg = b->mg;
    ts_graph *g = b->g;
    mg->targets = ts_mb_input_ids(b, "targets");
    mg->lm_loss = mg->loss = ts_set_output(ts_cross_entropy(g, mg->logits, mg->targets));
    if (mg->opts.mtp) {
        mg->mtp_targets = ts_mb_input_ids(b, "mtp_targets");
        mg->mtp_weight = ts_new_tensor_1d(g, b->dt, 1, "mtp_weight");
        mg->mtp_loss = ts_set_output(ts_cross_entropy(g, mg->mtp_logits, mg->mtp_targets));
        mg->loss = ts_add(g, mg->loss, ts_mul(g, mg->mtp_loss, mg->mtp_weight));
    }
    if (mg->balance_loss) mg->loss = ts_add(g, mg->loss, ts_set_output(mg->balance_loss));
    if (mg->indexer_loss) mg->loss = ts_add(g, mg->loss, ts_set_output(mg->indexer_loss));
    ts_set_output(mg->loss);
}

static ts_status check_options(const ts_model_weights *w, const ts_model_graph_options *o, char *err, size_t err_size) {
    const ts_v4_config *c = ts_model_weights_config(w);
    if (o->batch < 1 || o->seq < 1) {
        ts_error_printf(err, err_size, "model graph: batch %lld and seq %lld must be >= 1", (long long)o->batch,
                (long long)o->seq);
        return TS_ERR_INVALID_ARG;
    }
    if (o->backward && !o->loss) {
        ts_error_printf(err, err_size, "model graph: backward needs the loss");
        return TS_ERR_INVALID_ARG;
    }
    if (o->compute_dtype != TS_F32 && (o->compute_dtype != TS_BF16 || ts_model_weights_dtype(w) != TS_F32)) {
        ts_error_printf(err, err_size, "model graph: compute dtype %s with %s weights (bf16 compute needs f32 weights)",
                        ts_dtype_name(o->compute_dtype), ts_dtype_name(ts_model_weights_dtype(w)));
        return TS_ERR_INVALID_ARG;
    }
    if (o->mtp && (c->kind != TS_MODEL_DEEPSEEK_V4 || c->num_nextn_predict_layers < 1)) {
        ts_error_printf(err, err_size, "model graph: MTP asked for, but the config has no MTP block");
        return TS_ERR_INVALID_ARG;
    }
    return TS_OK;
}

void ts_model_graph_free(ts_model_graph *mg) {
    if (!mg) return;
    ts_mb_const_list *cl = mg->internal;
    if (cl) free(cl->v);
    free(cl);
    free(mg->params);
    free(mg->route_idx);
    free(mg->route_scores);
    free(mg->index_idx);
    ts_graph_free(mg->graph);
    free(mg);
}

ts_status ts_model_graph_build(const ts_model_weights *w, const ts_model_graph_options *opts,
                               ts_model_graph **out, char *err, size_t err_size) {
    return ts_model_graph_build_with(w, opts, NULL, out, err, err_size);
}

ts_status ts_model_graph_build_with(const ts_model_weights *w, const ts_model_graph_options *opts, ts_decode_build *dec,
                                    ts_model_graph **out, char *err, size_t err_size) {
    if (!w || !opts || !out) return TS_ERR_INVALID_ARG;
    *out = NULL;
    const ts_v4_config *c = ts_model_weights_config(w);
    ts_status s = check_options(w, opts, err, err_size);
    if (s != TS_OK) return s;
    ts_model_graph *mg = calloc(1, sizeof *mg);
    int slots = (int)(ts_v4_n_layer_slots(c) > 0 ? ts_v4_n_layer_slots(c) : 1);
    if (mg) {
        mg->opts = *opts;
        mg->weights = w;
        mg->graph = ts_graph_new();
        mg->internal = calloc(1, sizeof(ts_mb_const_list));
        mg->params = calloc((size_t)ts_model_weights_count(w), sizeof *mg->params);
        mg->route_idx = calloc((size_t)slots, sizeof *mg->route_idx);
        mg->route_scores = calloc((size_t)slots, sizeof *mg->route_scores);
        mg->index_idx = calloc((size_t)slots, sizeof *mg->index_idx);
    }
    if (!mg || !mg->graph || !mg->internal || !mg->params || !mg->route_idx || !mg->route_scores || !mg->index_idx) {
        ts_model_graph_free(mg);
        ts_error_printf(err, err_size, "model graph: out of memory");
        return TS_ERR_OOM;
    }
    ts_model_builder b = {mg->graph, w, c, mg, mg->internal, ts_model_weights_dtype(w), opts->batch, opts->seq,
                 (float)c->rms_norm_eps, NULL, dec};
    ts_graph_set_autocast(b.g, opts->compute_dtype);
    mg->ids = ts_mb_input_ids(&b, "ids");
    if (!dec && opts->seq > 1) mg->doc_start = ts_mb_input_ids(&b, "doc_start");
    b.ids_flat = ts_reshape(b.g, mg->ids, 1, (int64_t[]){b.B * b.T});
    if (opts->mtp) mg->mtp_ids = ts_mb_input_ids(&b, "mtp_ids");
    if (c->kind == TS_MODEL_DENSE) mg->logits = ts_dense_build(&b);
    else build_v4(&b);
    if (opts->loss) build_losses(&b);
    if (!opts->loss || opts->keep_logits) {
        ts_set_output(mg->logits);
        if (mg->mtp_logits) ts_set_output(mg->mtp_logits);
    }
    s = ts_graph_status(b.g);
    if (s == TS_OK && opts->backward) s = ts_graph_backward(b.g, mg->loss);
    if (s != TS_OK) {
        ts_error_printf(err, err_size, "model graph: %s", ts_graph_error(b.g));
        ts_model_graph_free(mg);
        return s;
    }
    *out = mg;
    return TS_OK;
}

/* One [1, 1] forward pass (with the MTP block) under autocast holds every linear layer; the
 * weights it casts are those whose leaf, or a view of it, is the source of a cast to dt. */
ts_status ts_model_autocast_weights(const ts_model_weights *w, ts_dtype dt, bool *cast, char *err, size_t err_size) {
    const ts_v4_config *c = ts_model_weights_config(w);
    ts_model_graph_options o = {.batch = 1, .seq = 1, .compute_dtype = dt,
                                .mtp = c->kind == TS_MODEL_DEEPSEEK_V4 && c->num_nextn_predict_layers > 0};
    ts_model_graph *mg = NULL;
    ts_status s = ts_model_graph_build(w, &o, &mg, err, err_size);
    if (s != TS_OK) return s;
    for (int n = 0; n < ts_graph_n_nodes(mg->graph); n++) {
        const ts_tensor *t = ts_graph_node(mg->graph, n);
        if (t->op != TS_OP_COPY || t->dtype != dt) continue;
        const ts_tensor *src = t->src[0]->view_src ? t->src[0]->view_src : t->src[0];
        for (int i = 0; i < ts_model_weights_count(w); i++) cast[i] |= mg->params[i] == src;
    }
    ts_model_graph_free(mg);
    return TS_OK;
}

/* ---------------------------------------------------------------- alloc: fill the constants */

/* The index lists [B, T, nb] (i or -1) or additive masks (0 or -inf) of block table k. */
static ts_status fill_blocks(const ts_mb_const *k, const int32_t *doc_start) {
    ts_tensor *t = k->t;
    int64_t B = t->shape[0], T = t->shape[1], nb = t->shape[2], n = B * T * nb;
    bool idx = k->kind == TS_MB_CONST_BLOCK_IDX;
    void *v = malloc((size_t)n * (idx ? sizeof(int32_t) : sizeof(double)));
    if (!v) return TS_ERR_OOM;
    for (int64_t r = 0; r < B; r++)
        for (int64_t q = 0; q < T; q++) {
            int64_t ds = doc_start ? doc_start[r * T + q] : 0, at = (r * T + q) * nb;
            for (int64_t i = 0; i < nb; i++) {
                bool ok = ts_v4_block_usable(q, i, k->step, ds);
                if (idx) ((int32_t *)v)[at + i] = ok ? (int32_t)i : -1;
                else ((double *)v)[at + i] = ok ? 0.0 : -INFINITY;
            }
        }
    ts_status s;
    if (idx) s = ts_tensor_write(t, v, (size_t)n * sizeof(int32_t));
    else if (t->dtype == TS_F64) s = ts_tensor_write(t, v, (size_t)n * sizeof(double));
    else {
        float *f = malloc((size_t)n * sizeof *f);
        s = f ? TS_OK : TS_ERR_OOM;
        for (int64_t i = 0; f && i < n; i++) f[i] = (float)((double *)v)[i];
        if (f) s = ts_tensor_write_f32(t, f, n);
        free(f);
    }
    free(v);
    return s;
}

static ts_status fill_constant(const ts_v4_config *c, const ts_mb_const *k) {
    if (k->kind == TS_MB_CONST_ANGLES)
        return ts_v4_rope_angles_write(k->t, k->base, (int)rope_dims(c), k->yarn ? &c->rope_scaling : NULL, k->step);
    return fill_blocks(k, NULL);
}

ts_status ts_model_graph_set_doc_start(ts_model_graph *mg, const int32_t *doc_start) {
    const ts_mb_const_list *cl = mg->internal;
    if (mg->doc_start) { /* the window keys' lower bound (NULL: 0, no bound) */
        size_t n = (size_t)ts_nelements(mg->doc_start);
        ts_status s;
        if (doc_start) s = ts_tensor_write(mg->doc_start, doc_start, n * sizeof(int32_t));
        else {
            int32_t *z = calloc(n, sizeof *z);
            s = z ? ts_tensor_write(mg->doc_start, z, n * sizeof *z) : TS_ERR_OOM;
            free(z);
        }
        if (s != TS_OK) return s;
    }
    for (int i = 0; i < cl->n; i++) {
        if (cl->v[i].kind == TS_MB_CONST_ANGLES) continue;
        ts_status s = fill_blocks(&cl->v[i], doc_start);
        if (s != TS_OK) return s;
    }
    return TS_OK;
}

ts_status ts_model_graph_alloc(ts_model_graph *mg, ts_backend *be, ts_plan_stats *stats, char *err,
                               size_t err_size) {
    return ts_model_graph_alloc_with(mg, be, NULL, stats, err, err_size);
}

ts_status ts_model_graph_alloc_with(ts_model_graph *mg, ts_backend *be, const ts_plan_options *opts,
                                    ts_plan_stats *stats, char *err, size_t err_size) {
    ts_status s = ts_graph_alloc(mg->graph, be, opts, stats);
    if (s != TS_OK) {
        ts_error_printf(err, err_size, "model graph: planning memory failed: %s", ts_graph_error(mg->graph));
        return s;
    }
    ts_mb_const_list *cl = mg->internal;
    const ts_v4_config *c = ts_model_weights_config(mg->weights);
    for (int i = 0; s == TS_OK && i < cl->n; i++) s = fill_constant(c, &cl->v[i]);
    if (s == TS_OK) s = ts_model_graph_set_doc_start(mg, NULL);
    if (s == TS_OK && mg->mtp_weight) {
        float w = 0.3f;
        s = ts_tensor_write_f32(mg->mtp_weight, &w, 1);
    }
    if (s != TS_OK) ts_error_printf(err, err_size, "model graph: filling constant tables failed: %s", ts_status_name(s));
    return s;
}

ts_tensor *ts_model_graph_grad(const ts_model_graph *mg, int i) {
    if (i < 0 || i >= ts_model_weights_count(mg->weights) || !mg->params[i]) return NULL;
    return ts_grad(mg->params[i]);
}

void *ts_model_graph_grad_data(const ts_model_graph *mg, int i) {
    ts_tensor *gr = ts_model_graph_grad(mg, i);
    if (!gr || !gr->data) return NULL;
    int base = ts_model_weights_stack_base(mg->weights, i);
    if (base < 0) return gr->data;
    const ts_model_tensor *t = ts_model_weights_info(mg->weights, i);
    return (char *)gr->data + ts_dtype_bytes(gr->dtype, (int64_t)t->expert * ts_model_tensor_numel(t));
}
