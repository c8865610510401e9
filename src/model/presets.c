/* presets.c - named model configurations, so that `--model tiny` works without a config.json.
 *
 *   tiny        spec §7.1 "dsv4-tiny", variant A (expert width 128): every V4 mechanism at a
 *               size a 2-core CPU trains. 6.97 M + 1.20 M MTP = 8.17 M parameters, 4.04 M active.
 *   small       ~100 M, every V4 feature on (mHC, CSA + HCA + window, indexer top-k, hash layers,
 *               shared + routed experts, grouped output, MTP), same byte-level vocabulary as tiny:
 *               d 512, 12 layers (2 window-only, then CSA/HCA alternating, HCA ratio 128), 8 heads
 *               x 128 (rope 32), q_lora 256, 4 output groups x 128, 16 experts top-2 + 1 shared of
 *               width 256, 2 hash layers, indexer 8 x 64 top-128, window 128, context 2048.
 *               95.40 M + 8.18 M MTP = 103.58 M parameters; 29.34 M active (32.02 M with MTP).
 *               Routed experts are 79 % of the main model (Flash: 97 %), leaving more room for
 *               attention to matter at this size. (A 32k BPE vocabulary would add 2 x 32768 x 512
 *               = 33.6 M in embed + head.)
 *   flash, pro  the published shapes (spec §1.1, §1.2), FP8 weights + FP4 experts, YaRN x16.
 *   dense-tiny  dense baseline at tiny scale: d 128, 4 layers, 4 heads, SwiGLU 352, byte vocab,
 *               tied embeddings, context 256: 837 760 parameters.
 *   dense-small the PyTorch comparison shape "4.3 M-parameter GPT (d=256, 4 layers, 4 heads,
 *               vocab 4096, seq 256)": tied embeddings (GPT convention) and a SwiGLU width of
 *               704 (~8d/3, rounded to a multiple of 64) so the FFN has the GPT's 8d^2 weights:
 *               4 096x256 embed + 4 x (4 x 256^2 attention + 3 x 256 x 704 FFN + 2 x 256 norms)
 *               + 256 = 4 262 144 parameters (the GPT with learned positions has 4 259 840 + biases).
 *               Untied embeddings would need the FFN cut to 384 for the same total. */
#include "tessera/model.h"

#include <stdio.h>
#include <string.h>

/* Settings every V4 preset shares with the published models (spec §1.1). */
static void v4_common(ts_v4_config *c) {
    memset(c, 0, sizeof *c);
    c->kind = TS_MODEL_DEEPSEEK_V4;
    c->num_key_value_heads = 1;
    c->n_shared_experts = 1;
    c->scoring_func = TS_SCORE_SQRTSOFTPLUS;
    c->norm_topk_prob = true;
    c->swiglu_limit = 10.0;
    c->rms_norm_eps = 1e-6;
    c->hc_mult = 4;
    c->hc_sinkhorn_iters = 20;
    c->hc_eps = 1e-6;
    c->num_nextn_predict_layers = 1;
    c->rope_theta = 10000;
    c->compress_rope_theta = 160000;
    c->bos_token_id = 0;
    c->eos_token_id = 1;
    c->pad_token_id = 1;
    c->tie_word_embeddings = false;
}

/* The schedule of spec §1.2: the first n_lead layers get lead_ratio, the rest alternate CSA (4)
 * and HCA (hca_ratio) starting with CSA; MTP blocks are window-only. */
static void alternate_csa_hca(ts_v4_config *c, int n_lead, int lead_ratio, int hca_ratio) {
    int64_t L = c->num_hidden_layers;
    for (int64_t i = 0; i < L; i++)
        c->compress_ratios[i] = i < n_lead ? lead_ratio : ((i - n_lead) % 2 == 0 ? TS_V4_RATIO_CSA : hca_ratio);
    for (int64_t j = 0; j < c->num_nextn_predict_layers; j++) c->compress_ratios[L + j] = TS_V4_RATIO_WINDOW;
}

/* Byte-level vocabulary of spec §7.1: 0 BOS, 1 EOS, 2 PAD, 3..258 bytes, the rest reserved. */
static void byte_vocab(ts_v4_config *c) {
    c->vocab_size = 264;
    c->bos_token_id = 0;
    c->eos_token_id = 1;
    c->pad_token_id = 2;
}

/* Checkpoints of the published models: BF16 + FP8 128x128 blocks, FP4 routed experts, YaRN. */
static void published_numerics(ts_v4_config *c) {
    c->torch_dtype = TS_BF16;
    c->quantization.fp8 = true;
    c->quantization.weight_block_size[0] = c->quantization.weight_block_size[1] = 128;
    c->expert_dtype = TS_F4_E2M1;
    c->rope_scaling = (ts_v4_rope_scaling){true, 16, 65536, 32, 1};
    c->max_position_embeddings = 1048576;
}

static void cpu_numerics(ts_v4_config *c) { /* spec §4.6: FP32 everywhere, no YaRN */
    c->torch_dtype = TS_F32;
    c->expert_dtype = TS_F32;
}

static void preset_tiny(ts_v4_config *c) {
    v4_common(c);
    byte_vocab(c);
    cpu_numerics(c);
    c->hidden_size = 256;
    c->num_hidden_layers = 6;
    c->num_attention_heads = 4;
    c->head_dim = 64;
    c->qk_rope_head_dim = 16;
    c->q_lora_rank = 128;
    c->o_groups = 2;
    c->o_lora_rank = 64;
    c->sliding_window = 32;
    c->index_n_heads = 4;
    c->index_head_dim = 32;
    c->index_topk = 16;
    c->n_routed_experts = 8;
    c->num_experts_per_tok = 2;
    c->moe_intermediate_size = 128;
    c->num_hash_layers = 1;
    c->routed_scaling_factor = 1.5;
    c->max_position_embeddings = 256;
    alternate_csa_hca(c, 1, TS_V4_RATIO_WINDOW, 32); /* [0, 4, 32, 4, 32, 4, 0] */
}

static void preset_small(ts_v4_config *c) {
    v4_common(c);
    byte_vocab(c);
    cpu_numerics(c);
    c->hidden_size = 512;
    c->num_hidden_layers = 12;
    c->num_attention_heads = 8;
    c->head_dim = 128;
    c->qk_rope_head_dim = 32;
    c->q_lora_rank = 256;
    c->o_groups = 4;
    c->o_lora_rank = 128;
    c->sliding_window = 128;
    c->index_n_heads = 8;
    c->index_head_dim = 64;
    c->index_topk = 128;
    c->n_routed_experts = 16;
    c->num_experts_per_tok = 2;
    c->moe_intermediate_size = 256;
    c->num_hash_layers = 2;
    c->routed_scaling_factor = 1.5;
    c->max_position_embeddings = 2048;
    alternate_csa_hca(c, 2, TS_V4_RATIO_WINDOW, TS_V4_RATIO_HCA);
}

static void preset_flash(ts_v4_config *c) {
    v4_common(c);
    published_numerics(c);
    c->vocab_size = 129280;
    c->hidden_size = 4096;
    c->num_hidden_layers = 43;
    c->num_attention_heads = 64;
    c->head_dim = 512;
    c->qk_rope_head_dim = 64;
    c->q_lora_rank = 1024;
    c->o_groups = 8;
    c->o_lora_rank = 1024;
    c->n_routed_experts = 256;
    c->num_experts_per_tok = 6;
    c->moe_intermediate_size = 2048;
    c->routed_scaling_factor = 1.5;
    c->num_hash_layers = 3;
    c->sliding_window = 128;
    c->index_n_heads = 64;
    c->index_head_dim = 128;
    c->index_topk = 512;
    alternate_csa_hca(c, 2, TS_V4_RATIO_WINDOW, TS_V4_RATIO_HCA); /* [0, 0, 4, 128, ..., 4, 0] */
}

static void preset_pro(ts_v4_config *c) {
    preset_flash(c);
    c->hidden_size = 7168;
    c->num_hidden_layers = 61;
    c->num_attention_heads = 128;
    c->q_lora_rank = 1536;
    c->o_groups = 16;
    c->n_routed_experts = 384;
    c->moe_intermediate_size = 3072;
    c->routed_scaling_factor = 2.5;
    c->index_topk = 1024;
    alternate_csa_hca(c, 2, TS_V4_RATIO_HCA, TS_V4_RATIO_HCA); /* [128, 128, 4, 128, ..., 4, 0] */
}

static void dense_common(ts_v4_config *c) {
    memset(c, 0, sizeof *c);
    c->kind = TS_MODEL_DENSE;
    c->rms_norm_eps = 1e-6;
    c->rope_theta = 10000;
    c->torch_dtype = TS_F32;
    c->expert_dtype = TS_F32;
    c->tie_word_embeddings = true;
    c->max_position_embeddings = 256;
    c->bos_token_id = 0;
    c->eos_token_id = 1;
    c->pad_token_id = 1;
}

static void preset_dense_tiny(ts_v4_config *c) {
    dense_common(c);
    byte_vocab(c);
    c->hidden_size = 128;
    c->num_hidden_layers = 4;
    c->num_attention_heads = 4;
    c->head_dim = 32;
    c->intermediate_size = 352;
}

static void preset_dense_small(ts_v4_config *c) {
    dense_common(c);
    c->vocab_size = 4096;
    c->hidden_size = 256;
    c->num_hidden_layers = 4;
    c->num_attention_heads = 4;
    c->head_dim = 64;
    c->intermediate_size = 704;
}

typedef struct {
    const char *name;
    void (*build)(ts_v4_config *c);
} preset;

static const preset PRESETS[] = {
    {"tiny", preset_tiny},   {"small", preset_small},           {"flash", preset_flash},
    {"pro", preset_pro},     {"dense-tiny", preset_dense_tiny}, {"dense-small", preset_dense_small},
};
#define N_PRESETS ((int)(sizeof PRESETS / sizeof PRESETS[0]))

const char *ts_v4_preset_name(int i) { return i >= 0 && i < N_PRESETS ? PRESETS[i].name : NULL; }

ts_status ts_v4_preset(const char *name, ts_v4_config *cfg) {
    if (!name || !cfg) return TS_ERR_INVALID_ARG;
    for (int i = 0; i < N_PRESETS; i++)
        if (strcmp(PRESETS[i].name, name) == 0) {
            PRESETS[i].build(cfg);
            return TS_OK;
        }
    return TS_ERR_INVALID_ARG;
}

ts_status ts_v4_config_resolve(const char *name_or_path, ts_v4_config *cfg, char *err, size_t err_size) {
    if (!name_or_path || !cfg) {
        if (err && err_size) snprintf(err, err_size, "model: NULL argument");
        return TS_ERR_INVALID_ARG;
    }
    if (ts_v4_preset(name_or_path, cfg) == TS_OK) return TS_OK;
    bool looks_like_path = strchr(name_or_path, '/') || strchr(name_or_path, '.');
    ts_status s = ts_v4_config_load(name_or_path, cfg, err, err_size);
    if (s == TS_ERR_IO && !looks_like_path && err && err_size) {
        char names[160] = "";
        for (int i = 0; i < N_PRESETS; i++) {
            strncat(names, i ? ", " : "", sizeof names - strlen(names) - 1);
            strncat(names, PRESETS[i].name, sizeof names - strlen(names) - 1);
        }
        snprintf(err, err_size, "%s: not a preset (%s) and not a readable config.json", name_or_path, names);
    }
    return s;
}
