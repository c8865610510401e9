/* test_model_config.c - the model configuration layer (model.h): presets, config.json parsing and
 * validation, writing, the tensor inventory and the accounting built on it.
 *
 * Reference numbers come from the spec (../shared/spec/deepseek-v4.md): §1.1's Flash and Pro
 * parameter counts, §1.4's tensor shapes and Flash dtype histogram, §7.1's tiny config and its
 * counts. Fixtures live in tests/fixtures/configs: valid HF and inference-format configs written
 * from §1.1 / §7.1, and invalid_*.json files that each break one rule. */
#include "check.h"
#include "files.h"
#include "tessera/model.h"

/* The CLI's sources are not part of the library; the model report is compiled in here. */
#include "cli/cli_model_info.c"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static const char *fixture(const char *name) { return test_fixture_path("configs", name); }

static ts_model_param_counts counts_of(const ts_v4_config *cfg) {
    ts_model_param_counts p;
    ts_status s = ts_model_count_params(cfg, &p);
    CHECK(s == TS_OK, "count_params -> %s", ts_status_name(s));
    return p;
}

static ts_v4_config preset(const char *name) {
    ts_v4_config cfg;
    ts_status s = ts_v4_preset(name, &cfg);
    CHECK(s == TS_OK, "preset %s -> %s", name, ts_status_name(s));
    return cfg;
}

/* ---------------------------------------------------------------- presets */

static void test_presets_validate(void) {
    char err[256];
    int n = 0;
    for (const char *name; (name = ts_v4_preset_name(n)) != NULL; n++) {
        ts_v4_config cfg = preset(name);
        ts_status s = ts_v4_config_validate(&cfg, err, sizeof err);
        CHECK(s == TS_OK, "preset %s does not validate: %s", name, err);
    }
    CHECK(n == 6, "expected 6 presets, got %d", n);
    ts_v4_config cfg;
    CHECK(ts_v4_preset("huge", &cfg) == TS_ERR_INVALID_ARG, "unknown preset accepted");
}

/* spec §7.1, variant A, field by field */
static void test_tiny_matches_spec(void) {
    ts_v4_config c = preset("tiny");
    static const int32_t ratios[7] = {0, 4, 32, 4, 32, 4, 0};
    CHECK(c.kind == TS_MODEL_DEEPSEEK_V4, "kind");
    CHECK(c.vocab_size == 264, "vocab_size %lld", (long long)c.vocab_size);
    CHECK(c.hidden_size == 256, "dim");
    CHECK(c.num_hidden_layers == 6, "n_layers");
    CHECK(memcmp(c.compress_ratios, ratios, sizeof ratios) == 0, "compress_ratios");
    CHECK(ts_v4_n_layer_slots(&c) == 7, "slots");
    CHECK(c.num_attention_heads == 4 && c.head_dim == 64 && c.qk_rope_head_dim == 16, "heads / head_dim / rope");
    CHECK(c.q_lora_rank == 128, "q_lora_rank");
    CHECK(c.o_groups == 2 && c.o_lora_rank == 64, "o_groups / o_lora_rank");
    CHECK(c.sliding_window == 32, "window_size");
    CHECK(c.index_n_heads == 4 && c.index_head_dim == 32 && c.index_topk == 16, "indexer");
    CHECK(c.n_routed_experts == 8 && c.num_experts_per_tok == 2 && c.n_shared_experts == 1, "experts");
    CHECK(c.moe_intermediate_size == 128, "moe_inter_dim (variant A)");
    CHECK(c.num_hash_layers == 1, "n_hash_layers");
    CHECK(c.scoring_func == TS_SCORE_SQRTSOFTPLUS && c.routed_scaling_factor == 1.5 && c.swiglu_limit == 10.0, "router");
    CHECK(c.hc_mult == 4 && c.hc_sinkhorn_iters == 20 && c.hc_eps == 1e-6, "mHC");
    CHECK(c.num_nextn_predict_layers == 1, "n_mtp_layers");
    CHECK(c.rms_norm_eps == 1e-6, "norm_eps");
    CHECK(c.rope_theta == 10000 && c.compress_rope_theta == 160000, "rope thetas");
    CHECK(!c.rope_scaling.enabled, "YaRN off for training at T = 256");
    CHECK(c.max_position_embeddings == 256, "max_seq_len");
    CHECK(c.bos_token_id == 0 && c.eos_token_id == 1 && c.pad_token_id == 2, "byte-level ids 0 BOS, 1 EOS, 2 PAD");
    CHECK(c.num_key_value_heads == 1 && c.kv_lora_rank == 0 && c.first_k_dense_replace == 0, "V4 invariants");

    /* §7.1: 6.97 M main + 1.20 M MTP = 8.17 M stored, ~4.0 M active incl. MTP */
    ts_model_param_counts p = counts_of(&c);
    CHECK(fabs(p.total_without_mtp / 1e6 - 6.97) < 0.005, "tiny main %lld", (long long)p.total_without_mtp);
    CHECK(fabs((p.total - p.total_without_mtp) / 1e6 - 1.20) < 0.005, "tiny MTP %lld", (long long)(p.total - p.total_without_mtp));
    CHECK(fabs(p.total / 1e6 - 8.17) < 0.005, "tiny total %lld", (long long)p.total);
    CHECK(fabs(p.active / 1e6 - 4.0) < 0.05, "tiny active %lld", (long long)p.active);
    CHECK(p.total == 8169392 && p.active == 4040624, "tiny exact %lld / %lld", (long long)p.total, (long long)p.active);

    /* §7.1 variant B (inter 256): 12.27 M + 2.09 M = 14.36 M, ~6.1 M active */
    c.moe_intermediate_size = 256;
    p = counts_of(&c);
    CHECK(fabs(p.total_without_mtp / 1e6 - 12.27) < 0.005 && fabs(p.total / 1e6 - 14.36) < 0.005, "variant B %lld",
          (long long)p.total);
    CHECK(fabs(p.active / 1e6 - 6.1) < 0.05, "variant B active %lld", (long long)p.active);
}

static void test_flash_and_pro_counts(void) {
    ts_v4_config flash = preset("flash");
    static const int32_t flash_head[6] = {0, 0, 4, 128, 4, 128};
    CHECK(ts_v4_n_layer_slots(&flash) == 44, "flash slots");
    CHECK(memcmp(flash.compress_ratios, flash_head, sizeof flash_head) == 0, "flash ratios start");
    CHECK(flash.compress_ratios[42] == 4 && flash.compress_ratios[43] == 0, "flash ends CSA, MTP window-only");

    ts_model_param_counts p = counts_of(&flash);
    CHECK(p.total == 290942289362LL, "flash total %lld", (long long)p.total);
    CHECK(p.active == 14118225362LL, "flash active %lld", (long long)p.active);
    CHECK(fabs(p.total_without_mtp / 1e9 - 284.33) < 0.005, "flash total w/o MTP %lld", (long long)p.total_without_mtp);
    CHECK(fabs(p.active_without_mtp / 1e9 - 13.80) < 0.005, "flash active w/o MTP %lld", (long long)p.active_without_mtp);
    CHECK(p.embedding == 129280LL * 4096, "embedding");

    ts_v4_config pro = preset("pro");
    CHECK(ts_v4_n_layer_slots(&pro) == 62 && pro.compress_ratios[0] == 128 && pro.compress_ratios[1] == 128 &&
              pro.compress_ratios[2] == 4 && pro.compress_ratios[60] == 4 && pro.compress_ratios[61] == 0,
          "pro ratios");
    p = counts_of(&pro);
    CHECK(fabs(p.total_without_mtp / 1e9 - 1573.0) < 0.05, "pro total %lld", (long long)p.total_without_mtp);
    CHECK(fabs((p.total - p.total_without_mtp) / 1e9 - 25.8) < 0.05, "pro MTP %lld", (long long)(p.total - p.total_without_mtp));
    CHECK(fabs(p.active_without_mtp / 1e9 - 49.8) < 0.05, "pro active %lld", (long long)p.active_without_mtp);
}

static void test_small_and_dense_counts(void) {
    ts_v4_config zero;
    memset(&zero, 0, sizeof zero);
    ts_model_param_counts p;
    CHECK(ts_model_count_params(&zero, &p) == TS_ERR_INVALID_ARG, "an invalid config must be refused");
    ts_v4_config small = preset("small");
    p = counts_of(&small);
    CHECK(p.total == 103581600 && p.total_without_mtp == 95402957, "small %lld / %lld", (long long)p.total,
          (long long)p.total_without_mtp);
    CHECK(p.active == 32016288 && p.active_without_mtp == 29342669, "small active %lld", (long long)p.active);

    ts_v4_config ds = preset("dense-small");
    p = counts_of(&ds);
    /* 4096 x 256 tied embedding + 4 x (4 x 256^2 + 3 x 256 x 704 + 2 x 256) + 256 */
    CHECK(p.total == 4096 * 256 + 4 * (4 * 256 * 256 + 3 * 256 * 704 + 2 * 256) + 256, "dense-small %lld", (long long)p.total);
    CHECK(fabs(p.total / 1e6 - 4.3) < 0.05, "dense-small ~4.3 M");
    CHECK(p.active == p.total && p.total_without_mtp == p.total, "dense: all active, no MTP");
    ts_v4_config dt = preset("dense-tiny");
    CHECK(counts_of(&dt).total == 837760, "dense-tiny");
}

/* ---------------------------------------------------------------- tensor inventory */

typedef struct {
    int64_t by_dtype[TS_DTYPE_COUNT];
    int64_t n, scales;
    const char *want_name;
    ts_model_tensor found;
    bool was_found;
} inventory;

static ts_status tally(const ts_model_tensor *t, void *user) {
    inventory *inv = user;
    inv->n++;
    inv->by_dtype[t->dtype]++;
    if (t->scale_block[0]) inv->scales++;
    if (inv->want_name && strcmp(t->name, inv->want_name) == 0) {
        inv->found = *t;
        inv->was_found = true;
    }
    return TS_OK;
}

static ts_model_tensor find_tensor(const ts_v4_config *cfg, const char *name) {
    inventory inv;
    memset(&inv, 0, sizeof inv);
    inv.want_name = name;
    ts_model_walk_tensors(cfg, tally, &inv);
    CHECK(inv.was_found, "tensor %s not in the inventory", name);
    return inv.found;
}

static void check_shape(const ts_v4_config *cfg, const char *name, int64_t rows, int64_t cols, ts_dtype dtype) {
    ts_model_tensor t = find_tensor(cfg, name);
    CHECK(t.shape[0] == rows && t.shape[1] == cols && t.ndim == (cols ? 2 : 1), "%s: [%lld, %lld], expected [%lld, %lld]", name,
          (long long)t.shape[0], (long long)t.shape[1], (long long)rows, (long long)cols);
    CHECK(t.dtype == dtype, "%s: dtype %s, expected %s", name, ts_dtype_name(t.dtype), ts_dtype_name(dtype));
}

/* spec §1.4: the audit's Flash histogram (BF16 433, F32 417, F8_E4M3 375, F8_E8M0 34 167, I64 3,
 * I8 33 792 - our FP4 experts) and 69 187 tensors including the scales */
static void test_flash_inventory(void) {
    ts_v4_config flash = preset("flash");
    inventory inv;
    memset(&inv, 0, sizeof inv);
    CHECK(ts_model_walk_tensors(&flash, tally, &inv) == TS_OK, "walk");
    CHECK(inv.by_dtype[TS_BF16] == 433, "BF16 %lld", (long long)inv.by_dtype[TS_BF16]);
    CHECK(inv.by_dtype[TS_F32] == 417, "F32 %lld", (long long)inv.by_dtype[TS_F32]);
    CHECK(inv.by_dtype[TS_F8_E4M3] == 375, "F8 %lld", (long long)inv.by_dtype[TS_F8_E4M3]);
    CHECK(inv.by_dtype[TS_I64] == 3, "I64 %lld", (long long)inv.by_dtype[TS_I64]);
    CHECK(inv.by_dtype[TS_F4_E2M1] == 33792, "FP4 %lld", (long long)inv.by_dtype[TS_F4_E2M1]);
    CHECK(inv.scales == 34167, "scales %lld", (long long)inv.scales);
    CHECK(inv.n + inv.scales == 69187, "tensors %lld", (long long)(inv.n + inv.scales));

    check_shape(&flash, "embed.weight", 129280, 4096, TS_BF16);
    check_shape(&flash, "hc_head_fn", 4, 16384, TS_F32);
    check_shape(&flash, "layers.0.hc_attn_fn", 24, 16384, TS_F32);
    check_shape(&flash, "layers.0.hc_ffn_scale", 3, 0, TS_F32);
    check_shape(&flash, "layers.0.attn.wq_b.weight", 32768, 1024, TS_F8_E4M3);
    check_shape(&flash, "layers.0.attn.wo_a.weight", 8192, 4096, TS_F8_E4M3);
    check_shape(&flash, "layers.0.attn.wo_b.weight", 4096, 8192, TS_F8_E4M3);
    check_shape(&flash, "layers.2.attn.compressor.wkv.weight", 1024, 4096, TS_BF16);
    check_shape(&flash, "layers.2.attn.compressor.ape", 4, 1024, TS_F32);
    check_shape(&flash, "layers.3.attn.compressor.ape", 128, 512, TS_F32);
    check_shape(&flash, "layers.2.attn.indexer.wq_b.weight", 8192, 1024, TS_F8_E4M3);
    check_shape(&flash, "layers.2.attn.indexer.compressor.wgate.weight", 256, 4096, TS_BF16);
    check_shape(&flash, "layers.2.ffn.gate.tid2eid", 129280, 6, TS_I64);
    check_shape(&flash, "layers.3.ffn.gate.bias", 256, 0, TS_F32);
    check_shape(&flash, "layers.5.ffn.experts.255.w2.weight", 4096, 2048, TS_F4_E2M1);
    check_shape(&flash, "mtp.0.h_proj.weight", 4096, 4096, TS_F8_E4M3);
    check_shape(&flash, "mtp.0.ffn.gate.bias", 256, 0, TS_F32);
    ts_model_tensor w1 = find_tensor(&flash, "layers.0.ffn.experts.0.w1.weight");
    CHECK(w1.scale_block[0] == 1 && w1.scale_block[1] == 32 && w1.expert == 0 && w1.optim == TS_OPTIM_MUON, "expert w1");
    ts_model_tensor wq = find_tensor(&flash, "layers.0.attn.wq_a.weight");
    CHECK(wq.scale_block[0] == 128 && wq.scale_block[1] == 128 && wq.expert == -1, "wq_a scale");

    /* §7.1's tiny names */
    ts_v4_config tiny = preset("tiny");
    check_shape(&tiny, "layers.1.attn.compressor.ape", 4, 128, TS_F32);
    check_shape(&tiny, "layers.2.attn.compressor.ape", 32, 64, TS_F32);
    check_shape(&tiny, "layers.0.ffn.gate.tid2eid", 264, 2, TS_I64);
    check_shape(&tiny, "layers.0.hc_attn_fn", 24, 1024, TS_F32);
    ts_model_tensor tid = find_tensor(&tiny, "layers.0.ffn.gate.tid2eid");
    CHECK(!tid.is_param && tid.optim == TS_OPTIM_NONE, "tid2eid is a table, not a parameter");
}

/* ---------------------------------------------------------------- FLOPs, KV cache, memory */

static void test_flops(void) {
    /* dense-small at 256: 2 x (4 x (4 x 256^2 + 3 x 256 x 704) + 4096 x 256) + 4 layers x 4 x 4 heads x 64 x 256 */
    ts_v4_config ds = preset("dense-small");
    ts_model_flops f;
    CHECK(ts_model_flops_per_token(&ds, 256, &f) == TS_OK, "flops");
    int64_t matmul = 4 * (4 * 256 * 256 + 3 * 256 * 704) + 4096 * 256;
    CHECK(f.forward == 2 * matmul + 4 * 4 * 4 * 64 * 256, "dense forward %lld", (long long)f.forward);
    CHECK(f.training == 3 * f.forward && f.forward_with_mtp == f.forward, "dense training");

    /* flash at 1M: attention per layer type as the header states */
    ts_v4_config flash = preset("flash");
    int64_t C = 1048576;
    CHECK(ts_model_flops_per_token(&flash, C, &f) == TS_OK, "flops");
    int64_t per_entry = 4 * 64 * 512;
    int64_t window_only = per_entry * 128;
    int64_t csa = per_entry * (128 + 512) + 2 * 64 * 128 * (C / 4);
    int64_t hca = per_entry * (128 + C / 128);
    CHECK(f.attention == 2 * window_only + 21 * csa + 20 * hca, "flash attention %lld", (long long)f.attention);
    ts_model_param_counts p = counts_of(&flash);
    CHECK(f.forward == 2 * p.matmul_active_without_mtp + f.attention, "flash forward");
    /* active GEMM weights = active params - embedding lookup (+ h_proj's extra stream uses) */
    CHECK(p.matmul_active_without_mtp < p.active_without_mtp, "matmul < active");
    CHECK(f.forward_with_mtp > f.forward && f.training == 3 * f.forward_with_mtp, "mtp / training");

    /* short context: fewer entries than the window and no completed HCA block */
    CHECK(ts_model_flops_per_token(&flash, 100, &f) == TS_OK, "flops short");
    CHECK(f.attention == 43 * per_entry * 100 + 21 * (per_entry * 25 + 2 * 64 * 128 * 25), "flash at 100 %lld",
          (long long)f.attention);
    CHECK(ts_model_flops_per_token(&flash, 0, &f) == TS_ERR_INVALID_ARG, "context 0 refused");
}

static void test_kv_cache(void) {
    ts_v4_config flash = preset("flash");
    int64_t C = 1048576, entry = 448 + 7 + 128, index_entry = 64 + 4;
    ts_model_kv_cache kv;
    CHECK(ts_model_kv_cache_bytes(&flash, C, &kv) == TS_OK, "kv");
    CHECK(kv.window_bytes == 43 * 128 * entry, "window %lld", (long long)kv.window_bytes);
    CHECK(kv.compressed_bytes == (21 * (C / 4) + 20 * (C / 128)) * entry, "compressed");
    CHECK(kv.indexer_bytes == 21 * (C / 4) * index_entry, "indexer");
    int64_t csa_state = 2 * 8 * 1024 * 4 + 2 * 8 * 256 * 4, hca_state = 2 * 128 * 512 * 4;
    CHECK(kv.state_bytes == 21 * csa_state + 20 * hca_state, "state %lld", (long long)kv.state_bytes);
    CHECK(kv.total_bytes == kv.window_bytes + kv.compressed_bytes + kv.indexer_bytes + kv.state_bytes, "total");
    CHECK(fabs(kv.bytes_per_token - (double)kv.total_bytes / C) < 1e-9, "per token");

    ts_v4_config ds = preset("dense-small");
    CHECK(ts_model_kv_cache_bytes(&ds, 256, &kv) == TS_OK && kv.bytes_per_token == 4 * 2 * 256 * 2, "dense KV bf16 K+V");
}

static void test_training_memory(void) {
    ts_v4_config tiny = preset("tiny");
    ts_model_train_memory m;
    CHECK(ts_model_train_memory_estimate(&tiny, 8, 256, &m) == TS_OK, "memory");
    ts_model_param_counts p = counts_of(&tiny);
    CHECK(m.weight_bytes == 4 * p.total + 8 * 264 * 2, "weights %lld", (long long)m.weight_bytes);
    CHECK(m.grad_bytes < 4 * p.total && m.grad_bytes > 4 * p.total - 4 * 1000, "grads skip router biases");
    CHECK(m.optimizer_bytes > m.grad_bytes && m.optimizer_bytes < 2 * m.grad_bytes, "Muon 1x + AdamW 2x states");
    CHECK(m.activation_bytes > 0 && m.total_bytes == m.weight_bytes + m.grad_bytes + m.optimizer_bytes + m.activation_bytes,
          "total");
    ts_model_train_memory m2;
    ts_model_train_memory_estimate(&tiny, 16, 256, &m2);
    CHECK(m2.activation_bytes == 2 * m.activation_bytes && m2.weight_bytes == m.weight_bytes, "activations scale with batch");
}

/* ---------------------------------------------------------------- parsing */

static ts_v4_config load_ok(const char *name) {
    ts_v4_config cfg;
    char err[512] = "";
    ts_status s = ts_v4_config_load(fixture(name), &cfg, err, sizeof err);
    CHECK(s == TS_OK, "%s -> %s: %s", name, ts_status_name(s), err);
    return cfg;
}

static void test_parse_valid(void) {
    ts_v4_config flash = preset("flash"), cfg = load_ok("flash_hf.json");
    CHECK(ts_v4_config_equal(&cfg, &flash), "flash_hf.json differs from the flash preset");
    ts_model_param_counts a = counts_of(&cfg), b = counts_of(&flash);
    CHECK(memcmp(&a, &b, sizeof a) == 0, "flash_hf.json accounting differs");

    cfg = load_ok("flash_inference.json");
    a = counts_of(&cfg);
    CHECK(memcmp(&a, &b, sizeof a) == 0, "inference-format accounting differs");
    CHECK(cfg.max_position_embeddings == 0, "max_seq_len absent = not stated");
    cfg.max_position_embeddings = flash.max_position_embeddings;
    CHECK(ts_v4_config_equal(&cfg, &flash), "inference-format config differs from the preset beyond max_seq_len");

    ts_v4_config tiny = preset("tiny");
    cfg = load_ok("tiny_hf.json");
    CHECK(ts_v4_config_equal(&cfg, &tiny), "tiny_hf.json differs from the tiny preset");
    cfg = load_ok("tiny_both_spellings.json");
    CHECK(cfg.hidden_size == 256, "HF hidden_size must win over dim (got %lld)", (long long)cfg.hidden_size);
    CHECK(ts_v4_config_equal(&cfg, &tiny), "inference spellings n_heads / window_size must fill in");

    ts_v4_config ds = preset("dense-small");
    cfg = load_ok("dense_small.json");
    CHECK(ts_v4_config_equal(&cfg, &ds), "dense_small.json differs from the dense-small preset");
    CHECK(cfg.head_dim == 64 && cfg.pad_token_id == 1, "dense derived head_dim / pad = eos");
}

typedef struct {
    const char *file;
    ts_status status;
    const char *key; /* the message must name it */
} invalid_case;

static const invalid_case INVALID[] = {
    {"invalid_missing_hidden_size.json", TS_ERR_FORMAT, "hidden_size"},
    {"invalid_missing_model_type.json", TS_ERR_FORMAT, "model_type"},
    {"invalid_heads_is_string.json", TS_ERR_FORMAT, "num_attention_heads"},
    {"invalid_inference_dim_is_string.json", TS_ERR_FORMAT, "dim"},
    {"invalid_ratios_wrong_length.json", TS_ERR_RANGE, "compress_ratios"},
    {"invalid_ratio_not_allowed.json", TS_ERR_RANGE, "compress_ratios[4]"},
    {"invalid_ratios_not_array.json", TS_ERR_FORMAT, "compress_ratios"},
    {"invalid_topk_exceeds_experts.json", TS_ERR_RANGE, "num_experts_per_tok"},
    {"invalid_head_dim_below_rope.json", TS_ERR_RANGE, "head_dim"},
    {"invalid_rope_dim_odd.json", TS_ERR_RANGE, "qk_rope_head_dim"},
    {"invalid_heads_not_divisible_by_groups.json", TS_ERR_RANGE, "o_groups"},
    {"invalid_hidden_size_zero.json", TS_ERR_RANGE, "hidden_size"},
    {"invalid_hc_mult_zero.json", TS_ERR_RANGE, "hc_mult"},
    {"invalid_index_topk_zero.json", TS_ERR_RANGE, "index_topk"},
    {"invalid_hash_layers_exceed_layers.json", TS_ERR_RANGE, "num_hash_layers"},
    {"invalid_unknown_model_type.json", TS_ERR_UNSUPPORTED, "model_type"},
    {"invalid_kv_lora_rank_set.json", TS_ERR_UNSUPPORTED, "kv_lora_rank"},
    {"invalid_rope_scaling_not_object.json", TS_ERR_FORMAT, "rope_scaling"},
    {"invalid_dense_missing_intermediate_size.json", TS_ERR_FORMAT, "intermediate_size"},
    {"invalid_dense_hidden_not_divisible.json", TS_ERR_RANGE, "num_attention_heads"},
    {"invalid_not_json.json", TS_ERR_FORMAT, "line 4"},
    {"invalid_top_level_array.json", TS_ERR_FORMAT, "object"},
    {"no_such_file.json", TS_ERR_IO, "no_such_file.json"},
};

static void test_parse_invalid(void) {
    for (size_t i = 0; i < sizeof INVALID / sizeof INVALID[0]; i++) {
        const invalid_case *c = &INVALID[i];
        ts_v4_config cfg;
        char err[512] = "";
        ts_status s = ts_v4_config_load(fixture(c->file), &cfg, err, sizeof err);
        CHECK(s == c->status, "%s: %s, expected %s (%s)", c->file, ts_status_name(s), ts_status_name(c->status), err);
        CHECK(strstr(err, c->key) != NULL, "%s: message does not name %s: %s", c->file, c->key, err);
        CHECK(strchr(err, '\n') == NULL, "%s: message is not one line", c->file);
    }
    /* validation on hand-built configs names the field too */
    ts_v4_config cfg = preset("flash");
    char err[256];
    cfg.num_experts_per_tok = 300;
    CHECK(ts_v4_config_validate(&cfg, err, sizeof err) == TS_ERR_RANGE && strstr(err, "num_experts_per_tok"), "%s", err);
    cfg = preset("flash");
    cfg.compress_ratios[7] = 64 + 1;
    CHECK(ts_v4_config_validate(&cfg, err, sizeof err) == TS_ERR_RANGE && strstr(err, "compress_ratios[7]"), "%s", err);
    CHECK(ts_v4_config_parse("{\"model_type\": 4}", NULL, &cfg, err, sizeof err) == TS_ERR_FORMAT && strstr(err, "model_type"),
          "%s", err);
}

/* ---------------------------------------------------------------- writing */

static void test_round_trip(void) {
    char err[512] = "";
    for (int i = 0; ts_v4_preset_name(i); i++) {
        ts_v4_config cfg = preset(ts_v4_preset_name(i)), back;
        char *json = NULL;
        ts_status s = ts_v4_config_to_json(&cfg, &json, err, sizeof err);
        CHECK(s == TS_OK && json, "to_json %s: %s", ts_v4_preset_name(i), err);
        if (!json) continue;
        s = ts_v4_config_parse(json, "written", &back, err, sizeof err);
        CHECK(s == TS_OK, "parse back %s: %s", ts_v4_preset_name(i), err);
        CHECK(ts_v4_config_equal(&cfg, &back), "round trip changed %s", ts_v4_preset_name(i));
        char *again = NULL;
        ts_v4_config_to_json(&back, &again, err, sizeof err);
        CHECK(again && strcmp(json, again) == 0, "writing is not stable for %s", ts_v4_preset_name(i));
        free(again);
        free(json);
    }
    /* an awkward double survives; save + load through a file */
    ts_v4_config cfg = preset("tiny"), back;
    cfg.routed_scaling_factor = 0.1 + 0.2;
    cfg.rms_norm_eps = 1e-6;
    const char *path = "test_model_config_roundtrip.json";
    CHECK(ts_v4_config_save(&cfg, path, err, sizeof err) == TS_OK, "save: %s", err);
    CHECK(ts_v4_config_load(path, &back, err, sizeof err) == TS_OK, "load: %s", err);
    CHECK(ts_v4_config_equal(&cfg, &back) && back.routed_scaling_factor == 0.1 + 0.2, "file round trip");
    remove(path);
    /* the writer refuses an invalid config */
    cfg.hc_mult = 0;
    char *json = NULL;
    CHECK(ts_v4_config_to_json(&cfg, &json, err, sizeof err) == TS_ERR_RANGE && !json, "invalid config written");
}

/* ---------------------------------------------------------------- the CLI report */

static char *capture_report(const char *model, int64_t context, int *rc, char *err_line, size_t err_size) {
    FILE *out = tmpfile(), *err = tmpfile();
    *rc = ts_cli_print_model_info(model, context, 0, 0, out, err);
    static char text[16384];
    rewind(out);
    size_t n = fread(text, 1, sizeof text - 1, out);
    text[n] = '\0';
    rewind(err);
    n = fread(err_line, 1, err_size - 1, err);
    err_line[n] = '\0';
    fclose(out);
    fclose(err);
    return text;
}

static void test_cli_report(void) {
    int rc;
    char err[512];
    char *text = capture_report("flash", 65536, &rc, err, sizeof err);
    CHECK(rc == 0, "rc %d: %s", rc, err);
    CHECK(strstr(text, "\nparameters_total: 290942289362\n") != NULL, "total line:\n%s", text);
    CHECK(strstr(text, "\nparameters_active: 14118225362\n") != NULL, "active line");
    CHECK(strstr(text, "\nparameters_total_without_mtp: 284332240471\n") != NULL, "total w/o MTP line");
    CHECK(strstr(text, "\ncontext: 65536\n") && strstr(text, "\nflops_per_token_training: ") &&
              strstr(text, "\nkv_cache_bytes_per_token: ") && strstr(text, "\ntraining_memory_bytes: "),
          "cost lines");
    text = capture_report(fixture("dense_small.json"), 0, &rc, err, sizeof err);
    CHECK(rc == 0 && strstr(text, "\nparameters_total: 4262144\n") && strstr(text, "\ncontext: 256\n"), "dense file: %s", err);
    text = capture_report("nonsense", 0, &rc, err, sizeof err);
    CHECK(rc == 2 && strstr(err, "nonsense") && strchr(err, '\n') == err + strlen(err) - 1, "bad model: rc %d, %s", rc, err);
    text = capture_report(fixture("invalid_rope_dim_odd.json"), 0, &rc, err, sizeof err);
    CHECK(rc == 2 && strstr(err, "qk_rope_head_dim"), "invalid file: rc %d, %s", rc, err);
}

int main(void) {
    test_presets_validate();
    test_tiny_matches_spec();
    test_flash_and_pro_counts();
    test_small_and_dense_counts();
    test_flash_inventory();
    test_flops();
    test_kv_cache();
    test_training_memory();
    test_parse_valid();
    test_parse_invalid();
    test_round_trip();
    test_cli_report();
    return check_summary("test_model_config");
}
