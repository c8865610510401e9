/* accounting.c - the tensor inventory of a model (spec §1.4) and everything derived from it:
 * parameter counts, FLOPs per token, KV-cache bytes and a training-memory estimate.
 *
 * ts_model_walk_tensors is the single list of tensor names and shapes. The checkpoint loader
 * and the graph builder walk it too, so a shape fixed here is fixed everywhere. Counting is a
 * visitor over that walk; nothing below re-lists tensors.
 *
 * Optimizer assignment (spec §5.3): AdamW for embed, head, norms, mHC base/scale; Muon for the
 * other matrices. [proposal, spec §5.3] AdamW for attn_sink and compressor ape, Muon for the
 * router gate.weight and the compressor/indexer matrices; the router bias (balancing rule) and
 * tid2eid are not gradient-trained. */
#include "tessera/model.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

/* ---------------------------------------------------------------- the walk */

/* How a tensor is stored in a checkpoint of the config (spec §1.4, §4.5). */
typedef enum {
    STORE_PLAIN,  /* BF16 in the published checkpoints (torch_dtype): norms, embed, head, gate, compressor */
    STORE_F32,    /* always FP32: mHC parameters, attn_sink, router bias, compressor ape */
    STORE_LINEAR, /* FP8 E4M3 with 128x128 block scales when quantized, else torch_dtype */
    STORE_EXPERT, /* routed experts: expert_dtype (FP4 with 1x32 scales in the published models) */
    STORE_TABLE   /* int64 lookup table (tid2eid): not a parameter */
} storage;

typedef struct {
    const ts_v4_config *cfg;
    ts_model_tensor_visit visit;
    void *user;
    char prefix[24]; /* "layers.12." / "mtp.0." / "" */
    int layer;       /* current layer id, -1 at top level */
    int expert;      /* current routed expert, -1 outside */
} walker;

static void set_dtype(const ts_v4_config *cfg, storage st, ts_model_tensor *t) {
    t->scale_block[0] = t->scale_block[1] = 0;
    switch (st) {
    case STORE_PLAIN: t->dtype = cfg->torch_dtype; return;
    case STORE_F32: t->dtype = TS_F32; return;
    case STORE_TABLE: t->dtype = TS_I64; return;
    case STORE_LINEAR:
        t->dtype = cfg->quantization.fp8 ? TS_F8_E4M3 : cfg->torch_dtype;
        break;
    case STORE_EXPERT: t->dtype = cfg->expert_dtype; break;
    }
    if (t->dtype == TS_F8_E4M3) {
        t->scale_block[0] = cfg->quantization.fp8 ? cfg->quantization.weight_block_size[0] : 128;
        t->scale_block[1] = cfg->quantization.fp8 ? cfg->quantization.weight_block_size[1] : 128;
    } else if (t->dtype == TS_F4_E2M1) {
        t->scale_block[0] = 1; /* MXFP4: one E8M0 scale per 32 inputs (spec §4.2) */
        t->scale_block[1] = 32;
    }
}

/* Emits one tensor: name = prefix + printf(fmt, ...); cols = 0 for a vector. */
static ts_status emit(walker *w, int64_t rows, int64_t cols, storage st, ts_optim_group optim, int matmul_uses,
                      const char *fmt, ...) __attribute__((format(printf, 7, 8)));
static ts_status emit(walker *w, int64_t rows, int64_t cols, storage st, ts_optim_group optim, int matmul_uses,
                      const char *fmt, ...) {
    ts_model_tensor t;
    memset(&t, 0, sizeof t);
    size_t n = strlen(w->prefix);
    memcpy(t.name, w->prefix, n + 1);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(t.name + n, sizeof t.name - n, fmt, ap);
    va_end(ap);
    t.ndim = cols ? 2 : 1;
    t.shape[0] = rows;
    t.shape[1] = cols;
    set_dtype(w->cfg, st, &t);
    t.layer = w->layer;
    t.expert = w->expert;
    t.is_param = st != STORE_TABLE;
    t.optim = optim;
    t.matmul_uses = matmul_uses;
    return w->visit(&t, w->user);
}

#define EMIT(...)                                     \
    do {                                              \
        ts_status emit_status_ = emit(w, __VA_ARGS__); \
        if (emit_status_ != TS_OK) return emit_status_; \
    } while (0)

/* mHC parameters of one sub-layer ("attn" / "ffn"): fn [(2+n)n, n d], base [(2+n)n], scale [3].
 * hc_mult = 1 switches mHC off (spec §7.3): no parameters. */
static ts_status walk_hc_sublayer(walker *w, const char *sub) {
    const ts_v4_config *c = w->cfg;
    if (c->hc_mult <= 1) return TS_OK;
    int64_t mix = (2 + c->hc_mult) * c->hc_mult;
    EMIT(mix, c->hc_mult * c->hidden_size, STORE_F32, TS_OPTIM_MUON, 1, "hc_%s_fn", sub);
    EMIT(mix, 0, STORE_F32, TS_OPTIM_ADAMW, 0, "hc_%s_base", sub);
    EMIT(3, 0, STORE_F32, TS_OPTIM_ADAMW, 0, "hc_%s_scale", sub);
    return TS_OK;
}

/* Final collapse of the streams (top level and each MTP block): fn [n, n d], base [n], scale [1]. */
static ts_status walk_hc_head(walker *w) {
    const ts_v4_config *c = w->cfg;
    if (c->hc_mult <= 1) return TS_OK;
    EMIT(c->hc_mult, c->hc_mult * c->hidden_size, STORE_F32, TS_OPTIM_MUON, 1, "hc_head_fn");
    EMIT(c->hc_mult, 0, STORE_F32, TS_OPTIM_ADAMW, 0, "hc_head_base");
    EMIT(1, 0, STORE_F32, TS_OPTIM_ADAMW, 0, "hc_head_scale");
    return TS_OK;
}

/* KV compressor (spec §2.7): width = coff x out_dim, coff = 2 for the overlapping CSA scheme. */
static ts_status walk_compressor(walker *w, const char *where, int64_t ratio, int64_t out_dim) {
    const ts_v4_config *c = w->cfg;
    int64_t width = (ratio == TS_V4_RATIO_CSA ? 2 : 1) * out_dim;
    EMIT(width, c->hidden_size, STORE_PLAIN, TS_OPTIM_MUON, 1, "%scompressor.wkv.weight", where);
    EMIT(width, c->hidden_size, STORE_PLAIN, TS_OPTIM_MUON, 1, "%scompressor.wgate.weight", where);
    EMIT(ratio, width, STORE_F32, TS_OPTIM_ADAMW, 0, "%scompressor.ape", where);
    EMIT(out_dim, 0, STORE_PLAIN, TS_OPTIM_ADAMW, 0, "%scompressor.norm.weight", where);
    return TS_OK;
}

/* Attention sub-layer (spec §2.5-§2.8). */
static ts_status walk_attention(walker *w, int64_t ratio) {
    const ts_v4_config *c = w->cfg;
    int64_t d = c->hidden_size, hc = c->num_attention_heads * c->head_dim, go = c->o_groups * c->o_lora_rank;
    EMIT(c->num_attention_heads, 0, STORE_F32, TS_OPTIM_ADAMW, 0, "attn.attn_sink");
    EMIT(c->q_lora_rank, d, STORE_LINEAR, TS_OPTIM_MUON, 1, "attn.wq_a.weight");
    EMIT(c->q_lora_rank, 0, STORE_PLAIN, TS_OPTIM_ADAMW, 0, "attn.q_norm.weight");
    EMIT(hc, c->q_lora_rank, STORE_LINEAR, TS_OPTIM_MUON, 1, "attn.wq_b.weight");
    EMIT(c->head_dim, d, STORE_LINEAR, TS_OPTIM_MUON, 1, "attn.wkv.weight");
    EMIT(c->head_dim, 0, STORE_PLAIN, TS_OPTIM_ADAMW, 0, "attn.kv_norm.weight");
    EMIT(go, hc / c->o_groups, STORE_LINEAR, TS_OPTIM_MUON, 1, "attn.wo_a.weight"); /* viewed as [g, d_g, H c / g] */
    EMIT(d, go, STORE_LINEAR, TS_OPTIM_MUON, 1, "attn.wo_b.weight");
    if (ratio > 0) {
        ts_status s = walk_compressor(w, "attn.", ratio, c->head_dim);
        if (s != TS_OK) return s;
    }
    if (ratio == TS_V4_RATIO_CSA) { /* lightning indexer */
        EMIT(c->index_n_heads * c->index_head_dim, c->q_lora_rank, STORE_LINEAR, TS_OPTIM_MUON, 1, "attn.indexer.wq_b.weight");
        EMIT(c->index_n_heads, d, STORE_PLAIN, TS_OPTIM_MUON, 1, "attn.indexer.weights_proj.weight");
        return walk_compressor(w, "attn.indexer.", ratio, c->index_head_dim);
    }
    return TS_OK;
}

/* MoE sub-layer (spec §2.10): router, routed experts, shared expert(s). */
static ts_status walk_moe(walker *w, bool hash_routed) {
    const ts_v4_config *c = w->cfg;
    int64_t d = c->hidden_size, inter = c->moe_intermediate_size, E = c->n_routed_experts;
    EMIT(E, d, STORE_PLAIN, TS_OPTIM_MUON, 1, "ffn.gate.weight");
    if (hash_routed) EMIT(c->vocab_size, c->num_experts_per_tok, STORE_TABLE, TS_OPTIM_NONE, 0, "ffn.gate.tid2eid");
    else EMIT(E, 0, STORE_F32, TS_OPTIM_NONE, 0, "ffn.gate.bias");
    for (int64_t e = 0; e < E; e++) {
        w->expert = (int)e;
        EMIT(inter, d, STORE_EXPERT, TS_OPTIM_MUON, 1, "ffn.experts.%lld.w1.weight", (long long)e);
        EMIT(d, inter, STORE_EXPERT, TS_OPTIM_MUON, 1, "ffn.experts.%lld.w2.weight", (long long)e);
        EMIT(inter, d, STORE_EXPERT, TS_OPTIM_MUON, 1, "ffn.experts.%lld.w3.weight", (long long)e);
    }
    w->expert = -1;
    if (c->n_shared_experts > 0) {
        int64_t shared = c->n_shared_experts * inter;
        EMIT(shared, d, STORE_LINEAR, TS_OPTIM_MUON, 1, "ffn.shared_experts.w1.weight");
        EMIT(d, shared, STORE_LINEAR, TS_OPTIM_MUON, 1, "ffn.shared_experts.w2.weight");
        EMIT(shared, d, STORE_LINEAR, TS_OPTIM_MUON, 1, "ffn.shared_experts.w3.weight");
    }
    return TS_OK;
}

/* One block (main layer or MTP block): norms, mHC, attention, MoE. */
static ts_status walk_block(walker *w, int layer_id, bool is_mtp) {
    const ts_v4_config *c = w->cfg;
    EMIT(c->hidden_size, 0, STORE_PLAIN, TS_OPTIM_ADAMW, 0, "attn_norm.weight");
    EMIT(c->hidden_size, 0, STORE_PLAIN, TS_OPTIM_ADAMW, 0, "ffn_norm.weight");
    ts_status s = walk_hc_sublayer(w, "attn");
    if (s == TS_OK) s = walk_hc_sublayer(w, "ffn");
    if (s == TS_OK) s = walk_attention(w, c->compress_ratios[layer_id]);
    if (s == TS_OK) s = walk_moe(w, !is_mtp && layer_id < c->num_hash_layers); /* MTP: learned routing */
    return s;
}

/* MTP block j (spec §2.12): e/h projections, its norms and hc_head, then a full block. It shares
 * embed.weight and head.weight with the main model. */
static ts_status walk_mtp(walker *w, int j) {
    const ts_v4_config *c = w->cfg;
    int64_t d = c->hidden_size;
    EMIT(d, d, STORE_LINEAR, TS_OPTIM_MUON, 1, "e_proj.weight");
    EMIT(d, d, STORE_LINEAR, TS_OPTIM_MUON, (int)c->hc_mult, "h_proj.weight"); /* applied to every stream */
    EMIT(d, 0, STORE_PLAIN, TS_OPTIM_ADAMW, 0, "enorm.weight");
    EMIT(d, 0, STORE_PLAIN, TS_OPTIM_ADAMW, 0, "hnorm.weight");
    EMIT(d, 0, STORE_PLAIN, TS_OPTIM_ADAMW, 0, "norm.weight");
    ts_status s = walk_hc_head(w);
    return s == TS_OK ? walk_block(w, (int)c->num_hidden_layers + j, true) : s;
}

static void enter(walker *w, const char *kind, int index, int layer) {
    if (kind) snprintf(w->prefix, sizeof w->prefix, "%s.%d.", kind, index);
    else w->prefix[0] = '\0';
    w->layer = layer;
    w->expert = -1;
}

static ts_status walk_v4(walker *w) {
    const ts_v4_config *c = w->cfg;
    int64_t L = c->num_hidden_layers;
    enter(w, NULL, 0, -1);
    EMIT(c->vocab_size, c->hidden_size, STORE_PLAIN, TS_OPTIM_ADAMW, c->tie_word_embeddings ? 1 : 0, "embed.weight");
    for (int i = 0; i < L; i++) {
        enter(w, "layers", i, i);
        ts_status s = walk_block(w, i, false);
        if (s != TS_OK) return s;
    }
    for (int j = 0; j < c->num_nextn_predict_layers; j++) {
        enter(w, "mtp", j, (int)L + j);
        ts_status s = walk_mtp(w, j);
        if (s != TS_OK) return s;
    }
    enter(w, NULL, 0, -1);
    EMIT(c->hidden_size, 0, STORE_PLAIN, TS_OPTIM_ADAMW, 0, "norm.weight");
    if (!c->tie_word_embeddings) EMIT(c->vocab_size, c->hidden_size, STORE_PLAIN, TS_OPTIM_ADAMW, 1, "head.weight");
    return walk_hc_head(w);
}

/* Dense baseline: pre-norm decoder; names follow the V4 scheme (attn.wq/wk/wv/wo, ffn.w1/w2/w3)
 * so both models share loaders and kernels. */
static ts_status walk_dense(walker *w) {
    const ts_v4_config *c = w->cfg;
    int64_t d = c->hidden_size, hc = c->num_attention_heads * c->head_dim, f = c->intermediate_size;
    enter(w, NULL, 0, -1);
    EMIT(c->vocab_size, d, STORE_PLAIN, TS_OPTIM_ADAMW, c->tie_word_embeddings ? 1 : 0, "embed.weight");
    for (int i = 0; i < c->num_hidden_layers; i++) {
        enter(w, "layers", i, i);
        EMIT(d, 0, STORE_PLAIN, TS_OPTIM_ADAMW, 0, "attn_norm.weight");
        EMIT(hc, d, STORE_PLAIN, TS_OPTIM_MUON, 1, "attn.wq.weight");
        EMIT(hc, d, STORE_PLAIN, TS_OPTIM_MUON, 1, "attn.wk.weight");
        EMIT(hc, d, STORE_PLAIN, TS_OPTIM_MUON, 1, "attn.wv.weight");
        EMIT(d, hc, STORE_PLAIN, TS_OPTIM_MUON, 1, "attn.wo.weight");
        EMIT(d, 0, STORE_PLAIN, TS_OPTIM_ADAMW, 0, "ffn_norm.weight");
        EMIT(f, d, STORE_PLAIN, TS_OPTIM_MUON, 1, "ffn.w1.weight");
        EMIT(d, f, STORE_PLAIN, TS_OPTIM_MUON, 1, "ffn.w2.weight");
        EMIT(f, d, STORE_PLAIN, TS_OPTIM_MUON, 1, "ffn.w3.weight");
    }
    enter(w, NULL, 0, -1);
    EMIT(d, 0, STORE_PLAIN, TS_OPTIM_ADAMW, 0, "norm.weight");
    if (!c->tie_word_embeddings) EMIT(c->vocab_size, d, STORE_PLAIN, TS_OPTIM_ADAMW, 1, "head.weight");
    return TS_OK;
}

ts_status ts_model_walk_tensors(const ts_v4_config *cfg, ts_model_tensor_visit visit, void *user) {
    if (!cfg || !visit || ts_v4_config_validate(cfg, NULL, 0) != TS_OK) return TS_ERR_INVALID_ARG;
    walker w = {cfg, visit, user, "", -1, -1};
    return cfg->kind == TS_MODEL_DENSE ? walk_dense(&w) : walk_v4(&w);
}

int64_t ts_model_tensor_numel(const ts_model_tensor *t) {
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++) n *= t->shape[i];
    return n;
}

/* ---------------------------------------------------------------- parameters */

/* Sums over the walk; routed experts are summed apart and scaled by K / E at the end (every
 * expert of a model has the same size, so the division is exact). */
typedef struct {
    int64_t n_main_layers;
    int64_t total[2], dense[2], routed[2];   /* [0] main model, [1] MTP blocks */
    int64_t matmul_dense[2], matmul_routed[2];
    int64_t embedding, n_tensors;
} param_sums;

static ts_status sum_params(const ts_model_tensor *t, void *user) {
    param_sums *p = user;
    p->n_tensors++;
    if (!t->is_param) return TS_OK;
    int part = t->layer >= p->n_main_layers ? 1 : 0;
    int64_t n = ts_model_tensor_numel(t);
    p->total[part] += n;
    if (t->expert >= 0) {
        p->routed[part] += n;
        p->matmul_routed[part] += n * t->matmul_uses;
    } else {
        p->dense[part] += n;
        p->matmul_dense[part] += n * t->matmul_uses;
    }
    if (strcmp(t->name, "embed.weight") == 0) p->embedding = n;
    return TS_OK;
}

ts_status ts_model_count_params(const ts_v4_config *cfg, ts_model_param_counts *out) {
    if (!out) return TS_ERR_INVALID_ARG;
    param_sums p;
    memset(&p, 0, sizeof p);
    p.n_main_layers = cfg ? cfg->num_hidden_layers : 0;
    ts_status s = ts_model_walk_tensors(cfg, sum_params, &p);
    if (s != TS_OK) return s;
    int64_t K = cfg->num_experts_per_tok, E = cfg->n_routed_experts > 0 ? cfg->n_routed_experts : 1;
    int64_t active[2], matmul[2];
    for (int part = 0; part < 2; part++) {
        active[part] = p.dense[part] + p.routed[part] / E * K;
        matmul[part] = p.matmul_dense[part] + p.matmul_routed[part] / E * K;
    }
    memset(out, 0, sizeof *out);
    out->total_without_mtp = p.total[0];
    out->total = p.total[0] + p.total[1];
    out->active_without_mtp = active[0];
    out->active = active[0] + active[1];
    out->embedding = p.embedding;
    out->routed_experts = p.routed[0] + p.routed[1];
    out->n_tensors = p.n_tensors;
    out->matmul_active_without_mtp = matmul[0];
    /* each MTP block runs the shared LM head again */
    int64_t n_mtp = cfg->kind == TS_MODEL_DEEPSEEK_V4 ? cfg->num_nextn_predict_layers : 0;
    out->matmul_active = matmul[0] + matmul[1] + n_mtp * cfg->vocab_size * cfg->hidden_size;
    return TS_OK;
}

/* ---------------------------------------------------------------- FLOPs */

static int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

/* Compressed entries a token at position context-1 attends in a layer of this ratio. */
static int64_t compressed_entries(const ts_v4_config *c, int64_t ratio, int64_t context) {
    if (ratio == TS_V4_RATIO_CSA) return min64(c->index_topk, context / TS_V4_RATIO_CSA);
    return ratio > 0 ? context / ratio : 0;
}

/* Score (q.k) and value (p.v) multiply-adds over the entries, plus the indexer's scoring. */
static int64_t v4_attention_flops(const ts_v4_config *c, int64_t ratio, int64_t context) {
    int64_t entries = min64(c->sliding_window, context) + compressed_entries(c, ratio, context);
    int64_t flops = 4 * c->num_attention_heads * c->head_dim * entries;
    if (ratio == TS_V4_RATIO_CSA) flops += 2 * c->index_n_heads * c->index_head_dim * (context / TS_V4_RATIO_CSA);
    return flops;
}

ts_status ts_model_flops_per_token(const ts_v4_config *cfg, int64_t context, ts_model_flops *out) {
    if (!out || context < 1) return TS_ERR_INVALID_ARG;
    ts_model_param_counts counts;
    ts_status s = ts_model_count_params(cfg, &counts);
    if (s != TS_OK) return s;
    int64_t attn_main = 0, attn_mtp = 0;
    if (cfg->kind == TS_MODEL_DENSE) {
        attn_main = cfg->num_hidden_layers * 4 * cfg->num_attention_heads * cfg->head_dim * context;
    } else {
        for (int64_t i = 0; i < ts_v4_n_layer_slots(cfg); i++) {
            int64_t f = v4_attention_flops(cfg, cfg->compress_ratios[i], context);
            if (i < cfg->num_hidden_layers) attn_main += f;
            else attn_mtp += f;
        }
    }
    memset(out, 0, sizeof *out);
    out->context = context;
    out->attention = attn_main;
    out->forward = 2 * counts.matmul_active_without_mtp + attn_main;
    out->forward_with_mtp = 2 * counts.matmul_active + attn_main + attn_mtp;
    out->training = 3 * out->forward_with_mtp;
    return TS_OK;
}

ts_status ts_model_training_flops_per_token(const ts_v4_config *cfg, int64_t seq, double *out) {
    if (!out || seq < 1) return TS_ERR_INVALID_ARG;
    double sum = 0;
    for (int64_t pos = 1; pos <= seq; pos++) {
        ts_model_flops f;
        ts_status s = ts_model_flops_per_token(cfg, pos, &f);
        if (s != TS_OK) return s;
        sum += (double)f.training;
    }
    *out = sum / (double)seq;
    return TS_OK;
}

/* ---------------------------------------------------------------- KV cache */

static int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

/* One main-KV entry (spec §4.4): non-rope dims FP8 + an E8M0 scale per 64, rope dims BF16. */
static int64_t kv_entry_bytes(const ts_v4_config *c) {
    int64_t nope = c->head_dim - c->qk_rope_head_dim;
    return nope + ceil_div(nope, 64) + 2 * c->qk_rope_head_dim;
}

/* One indexer key (spec §4.3): FP4 E2M1 (two per byte) + an E8M0 scale per 32. */
static int64_t indexer_entry_bytes(const ts_v4_config *c) {
    return ceil_div(c->index_head_dim, 2) + ceil_div(c->index_head_dim, 32);
}

/* FP32 kv + score state of a compressor's incomplete block: 2 x [coff m, coff width]. */
static int64_t compressor_state_bytes(int64_t ratio, int64_t width) {
    int64_t coff = ratio == TS_V4_RATIO_CSA ? 2 : 1;
    return 2 * (coff * ratio) * (coff * width) * 4;
}

ts_status ts_model_kv_cache_bytes(const ts_v4_config *cfg, int64_t context, ts_model_kv_cache *out) {
    if (!cfg || !out || context < 1) return TS_ERR_INVALID_ARG;
    ts_status s = ts_v4_config_validate(cfg, NULL, 0);
    if (s != TS_OK) return TS_ERR_INVALID_ARG;
    memset(out, 0, sizeof *out);
    out->context = context;
    if (cfg->kind == TS_MODEL_DENSE) {
        out->window_bytes = cfg->num_hidden_layers * 2 * cfg->num_attention_heads * cfg->head_dim * 2 * context;
    } else {
        int64_t entry = kv_entry_bytes(cfg), index_entry = indexer_entry_bytes(cfg);
        for (int64_t i = 0; i < cfg->num_hidden_layers; i++) {
            int64_t ratio = cfg->compress_ratios[i];
            out->window_bytes += min64(cfg->sliding_window, context) * entry;
            if (ratio == 0) continue;
            out->compressed_bytes += context / ratio * entry;
            out->state_bytes += compressor_state_bytes(ratio, cfg->head_dim);
            if (ratio == TS_V4_RATIO_CSA) {
                out->indexer_bytes += context / ratio * index_entry;
                out->state_bytes += compressor_state_bytes(ratio, cfg->index_head_dim);
            }
        }
    }
    out->total_bytes = out->window_bytes + out->compressed_bytes + out->indexer_bytes + out->state_bytes;
    out->bytes_per_token = (double)out->total_bytes / (double)context;
    return TS_OK;
}

/* ---------------------------------------------------------------- training memory */

typedef struct {
    int64_t weight_bytes, grad_bytes, optimizer_bytes;
} state_sums;

static ts_status sum_training_state(const ts_model_tensor *t, void *user) {
    state_sums *m = user;
    int64_t n = ts_model_tensor_numel(t);
    m->weight_bytes += n * (t->is_param ? 4 : 8); /* FP32 parameters, int64 tables */
    if (t->optim != TS_OPTIM_NONE) m->grad_bytes += n * 4;
    if (t->optim == TS_OPTIM_MUON) m->optimizer_bytes += n * 4;      /* momentum */
    else if (t->optim == TS_OPTIM_ADAMW) m->optimizer_bytes += n * 8; /* m and v */
    return TS_OK;
}

/* Floats one mHC-wrapped sub-layer keeps per token: the n input streams, the raw coefficients,
 * the Sinkhorn steps (2 per iteration, n x n each), the collapsed input and its norm. */
static int64_t mhc_sublayer_floats(const ts_v4_config *c) {
    int64_t n = c->hc_mult, d = c->hidden_size;
    if (n <= 1) return 2 * d;
    return n * d + (2 + n) * n + 2 * c->hc_sinkhorn_iters * n * n + 2 * d;
}

static int64_t v4_layer_floats(const ts_v4_config *c, int64_t ratio, int64_t seq) {
    int64_t d = c->hidden_size, heads_c = c->num_attention_heads * c->head_dim;
    int64_t entries = min64(c->sliding_window, seq) + compressed_entries(c, ratio, seq);
    int64_t f = 2 * mhc_sublayer_floats(c);
    f += 2 * c->q_lora_rank + 2 * heads_c + 2 * c->head_dim;                 /* q latent, q, kv: before/after norm */
    f += c->num_attention_heads * entries + heads_c;                          /* probabilities, output */
    f += c->o_groups * c->o_lora_rank + d;                                    /* grouped projection, sub-layer out */
    if (ratio > 0) f += 2 * (ratio == TS_V4_RATIO_CSA ? 2 : 1) * c->head_dim; /* compressor kv + gate */
    if (ratio == TS_V4_RATIO_CSA)
        f += c->index_n_heads * (c->index_head_dim + 1) + 2 * 2 * c->index_head_dim;
    f += 2 * c->n_routed_experts;                                             /* router logits, affinities */
    f += c->num_experts_per_tok * (d + 3 * c->moe_intermediate_size);         /* routed experts: in, a, b, h */
    if (c->n_shared_experts > 0) f += d + 3 * c->n_shared_experts * c->moe_intermediate_size;
    return f + d;                                                             /* MoE output */
}

static int64_t v4_token_floats(const ts_v4_config *c, int64_t seq) {
    int64_t d = c->hidden_size, n = c->hc_mult, heads = 1 + c->num_nextn_predict_layers;
    int64_t f = n * d + heads * (2 * d + 2 * c->vocab_size); /* streams; per head: collapse, norm, logits + grad */
    for (int64_t i = 0; i < ts_v4_n_layer_slots(c); i++) f += v4_layer_floats(c, c->compress_ratios[i], seq);
    f += c->num_nextn_predict_layers * (d + 2 * n * d);      /* MTP: normed embedding, normed and projected streams */
    return f;
}

static int64_t dense_token_floats(const ts_v4_config *c, int64_t seq) {
    int64_t d = c->hidden_size, heads_c = c->num_attention_heads * c->head_dim;
    int64_t layer = 2 * d + 5 * heads_c + c->num_attention_heads * seq + heads_c + d /* attention */
                    + d + 3 * c->intermediate_size + d;                              /* FFN */
    return d + c->num_hidden_layers * layer + d + 2 * c->vocab_size;
}

ts_status ts_model_train_memory_estimate(const ts_v4_config *cfg, int64_t batch, int64_t seq, ts_model_train_memory *out) {
    if (!out || batch < 1 || seq < 1) return TS_ERR_INVALID_ARG;
    state_sums m = {0, 0, 0};
    ts_status s = ts_model_walk_tensors(cfg, sum_training_state, &m);
    if (s != TS_OK) return s;
    int64_t per_token = cfg->kind == TS_MODEL_DENSE ? dense_token_floats(cfg, seq) : v4_token_floats(cfg, seq);
    memset(out, 0, sizeof *out);
    out->batch = batch;
    out->seq = seq;
    out->weight_bytes = m.weight_bytes;
    out->grad_bytes = m.grad_bytes;
    out->optimizer_bytes = m.optimizer_bytes;
    out->activation_bytes = batch * seq * per_token * 4;
    out->total_bytes = out->weight_bytes + out->grad_bytes + out->optimizer_bytes + out->activation_bytes;
    return TS_OK;
}
