/* config.c - ts_v4_config <-> Hugging Face config.json, and the validation every config goes
 * through (parsed, preset or built by hand).
 *
 * One table (CONFIG_KEYS) lists every scalar hyper-parameter once: its HF key, its spelling in
 * DeepSeek's own inference config (spec §1.1), its JSON type, where it lives in the struct, which
 * model kinds use it, for which kinds it is required, and the default the spec gives when it may
 * be absent. Parsing, writing and equality all walk that table; only the keys with structure
 * (model_type, compress_ratios, rope_scaling, quantization, dtypes, scoring_func, pad id) have
 * code of their own.
 *
 * Defaults and why (spec §1.1): first_k_dense_replace is absent or null in V4 (every layer MoE);
 * kv_lora_rank is null; num_key_value_heads, topk_method, norm_topk_prob and the token ids have no
 * inference-config key ("-" in the spec), so their release values fill in; rms_norm_eps, hc_eps
 * and num_nextn_predict_layers are omitted by the official inference config.json, whose ModelArgs
 * defaults (1e-6, 1e-6, 1) equal the release values; max_position_embeddings is a run-time choice
 * there (max_seq_len), 0 = not stated. Every other V4 key is required: the ModelArgs debug
 * defaults (compress_rope_theta 40000, ...) must never leak in silently. */
#include "tessera/model.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* ---------------------------------------------------------------- the key table */

typedef enum { KEY_INT, KEY_REAL, KEY_BOOL } key_type;

enum { FOR_V4 = 1u << TS_MODEL_DEEPSEEK_V4, FOR_DENSE = 1u << TS_MODEL_DENSE, FOR_BOTH = FOR_V4 | FOR_DENSE };

typedef struct {
    const char *hf;        /* HF config.json key; also the name used in messages */
    const char *inference; /* official inference config key, NULL where it has none */
    key_type type;
    size_t offset;         /* into ts_v4_config */
    unsigned used_by;      /* FOR_* */
    unsigned required_by;  /* FOR_*: absent is an error for these kinds */
    double def;            /* value when absent (and not required) */
    bool null_when_zero;   /* written as JSON null when 0 (kv_lora_rank, first_k_dense_replace) */
} config_key;

#define AT(field) offsetof(ts_v4_config, field)

static const config_key CONFIG_KEYS[] = {
    {"vocab_size", "vocab_size", KEY_INT, AT(vocab_size), FOR_BOTH, FOR_BOTH, 0, false},
    {"hidden_size", "dim", KEY_INT, AT(hidden_size), FOR_BOTH, FOR_BOTH, 0, false},
    {"num_hidden_layers", "n_layers", KEY_INT, AT(num_hidden_layers), FOR_BOTH, FOR_BOTH, 0, false},
    {"num_attention_heads", "n_heads", KEY_INT, AT(num_attention_heads), FOR_BOTH, FOR_BOTH, 0, false},
    {"head_dim", "head_dim", KEY_INT, AT(head_dim), FOR_V4, FOR_V4, 0, false},
    {"rms_norm_eps", "norm_eps", KEY_REAL, AT(rms_norm_eps), FOR_BOTH, FOR_DENSE, 1e-6, false},
    {"rope_theta", "rope_theta", KEY_REAL, AT(rope_theta), FOR_BOTH, FOR_BOTH, 0, false},
    {"max_position_embeddings", "max_seq_len", KEY_INT, AT(max_position_embeddings), FOR_BOTH, FOR_DENSE, 0, false},
    {"bos_token_id", NULL, KEY_INT, AT(bos_token_id), FOR_BOTH, 0, 0, false},
    {"eos_token_id", NULL, KEY_INT, AT(eos_token_id), FOR_BOTH, 0, 1, false},
    {"tie_word_embeddings", NULL, KEY_BOOL, AT(tie_word_embeddings), FOR_BOTH, FOR_DENSE, 0, false},
    {"intermediate_size", NULL, KEY_INT, AT(intermediate_size), FOR_DENSE, FOR_DENSE, 0, false},
    {"num_key_value_heads", NULL, KEY_INT, AT(num_key_value_heads), FOR_V4, 0, 1, false},
    {"qk_rope_head_dim", "rope_head_dim", KEY_INT, AT(qk_rope_head_dim), FOR_V4, FOR_V4, 0, false},
    {"q_lora_rank", "q_lora_rank", KEY_INT, AT(q_lora_rank), FOR_V4, FOR_V4, 0, false},
    {"kv_lora_rank", NULL, KEY_INT, AT(kv_lora_rank), FOR_V4, 0, 0, true},
    {"o_groups", "o_groups", KEY_INT, AT(o_groups), FOR_V4, FOR_V4, 0, false},
    {"o_lora_rank", "o_lora_rank", KEY_INT, AT(o_lora_rank), FOR_V4, FOR_V4, 0, false},
    {"n_routed_experts", "n_routed_experts", KEY_INT, AT(n_routed_experts), FOR_V4, FOR_V4, 0, false},
    {"n_shared_experts", "n_shared_experts", KEY_INT, AT(n_shared_experts), FOR_V4, FOR_V4, 0, false},
    {"num_experts_per_tok", "n_activated_experts", KEY_INT, AT(num_experts_per_tok), FOR_V4, FOR_V4, 0, false},
    {"moe_intermediate_size", "moe_inter_dim", KEY_INT, AT(moe_intermediate_size), FOR_V4, FOR_V4, 0, false},
    {"first_k_dense_replace", NULL, KEY_INT, AT(first_k_dense_replace), FOR_V4, 0, 0, true},
    {"norm_topk_prob", NULL, KEY_BOOL, AT(norm_topk_prob), FOR_V4, 0, 1, false},
    {"routed_scaling_factor", "route_scale", KEY_REAL, AT(routed_scaling_factor), FOR_V4, FOR_V4, 0, false},
    {"num_hash_layers", "n_hash_layers", KEY_INT, AT(num_hash_layers), FOR_V4, FOR_V4, 0, false},
    {"swiglu_limit", "swiglu_limit", KEY_REAL, AT(swiglu_limit), FOR_V4, FOR_V4, 0, false},
    {"sliding_window", "window_size", KEY_INT, AT(sliding_window), FOR_V4, FOR_V4, 0, false},
    {"index_n_heads", "index_n_heads", KEY_INT, AT(index_n_heads), FOR_V4, FOR_V4, 0, false},
    {"index_head_dim", "index_head_dim", KEY_INT, AT(index_head_dim), FOR_V4, FOR_V4, 0, false},
    {"index_topk", "index_topk", KEY_INT, AT(index_topk), FOR_V4, FOR_V4, 0, false},
    {"hc_mult", "hc_mult", KEY_INT, AT(hc_mult), FOR_V4, FOR_V4, 0, false},
    {"hc_sinkhorn_iters", "hc_sinkhorn_iters", KEY_INT, AT(hc_sinkhorn_iters), FOR_V4, FOR_V4, 0, false},
    {"hc_eps", "hc_eps", KEY_REAL, AT(hc_eps), FOR_V4, 0, 1e-6, false},
    {"num_nextn_predict_layers", "n_mtp_layers", KEY_INT, AT(num_nextn_predict_layers), FOR_V4, 0, 1, false},
    {"compress_rope_theta", "compress_rope_theta", KEY_REAL, AT(compress_rope_theta), FOR_V4, FOR_V4, 0, false},
};
#define N_CONFIG_KEYS ((int)(sizeof CONFIG_KEYS / sizeof CONFIG_KEYS[0]))

static int64_t *key_int(ts_v4_config *cfg, const config_key *k) { return (int64_t *)((char *)cfg + k->offset); }
static double *key_real(ts_v4_config *cfg, const config_key *k) { return (double *)((char *)cfg + k->offset); }
static bool *key_bool(ts_v4_config *cfg, const config_key *k) { return (bool *)((char *)cfg + k->offset); }
static const int64_t *key_int_c(const ts_v4_config *cfg, const config_key *k) {
    return (const int64_t *)((const char *)cfg + k->offset);
}
static const double *key_real_c(const ts_v4_config *cfg, const config_key *k) {
    return (const double *)((const char *)cfg + k->offset);
}
static const bool *key_bool_c(const ts_v4_config *cfg, const config_key *k) {
    return (const bool *)((const char *)cfg + k->offset);
}

static unsigned kind_bit(ts_model_kind kind) { return 1u << kind; }

/* ---------------------------------------------------------------- names */

const char *ts_model_kind_name(ts_model_kind kind) {
    return kind == TS_MODEL_DENSE ? "tessera_dense" : "deepseek_v4";
}

static const char *const SCORE_FUNC_NAMES[] = {"sqrtsoftplus", "sigmoid", "softmax"};

const char *ts_score_func_name(ts_score_func f) {
    return (unsigned)f < 3 ? SCORE_FUNC_NAMES[f] : "?";
}

typedef struct {
    ts_dtype dtype;
    const char *name;
} dtype_name;

/* torch_dtype values (HF), and expert_dtype values (DeepSeek's short names). */
static const dtype_name TORCH_DTYPES[] = {{TS_F32, "float32"}, {TS_BF16, "bfloat16"}, {TS_F16, "float16"}};
static const dtype_name EXPERT_DTYPES[] = {
    {TS_F4_E2M1, "fp4"}, {TS_F8_E4M3, "fp8"}, {TS_BF16, "bf16"}, {TS_F16, "fp16"}, {TS_F32, "fp32"}};

static bool dtype_lookup(const dtype_name *table, int n, const char *name, ts_dtype *out) {
    for (int i = 0; i < n; i++)
        if (strcmp(table[i].name, name) == 0) {
            *out = table[i].dtype;
            return true;
        }
    return false;
}

static const char *dtype_to_name(const dtype_name *table, int n, ts_dtype t) {
    for (int i = 0; i < n; i++)
        if (table[i].dtype == t) return table[i].name;
    return NULL;
}

#define N_TORCH_DTYPES ((int)(sizeof TORCH_DTYPES / sizeof TORCH_DTYPES[0]))
#define N_EXPERT_DTYPES ((int)(sizeof EXPERT_DTYPES / sizeof EXPERT_DTYPES[0]))

/* ---------------------------------------------------------------- errors */

/* Where messages go: an optional source name (the file) prefixes every message. */
typedef struct {
    const char *source;
    char *buf;
    size_t size;
} err_sink;

static ts_status fail(err_sink *e, ts_status s, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static ts_status fail(err_sink *e, ts_status s, const char *fmt, ...) {
    if (!e->buf || e->size == 0) return s;
    size_t used = 0;
    if (e->source) {
        int n = snprintf(e->buf, e->size, "%s: ", e->source);
        used = n < 0 ? 0 : (size_t)n < e->size ? (size_t)n : e->size - 1;
    }
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->buf + used, e->size - used, fmt, ap);
    va_end(ap);
    return s;
}

static const char *json_type_name(const json_t *v) {
    switch (json_typeof(v)) {
    case JSON_OBJECT: return "an object";
    case JSON_ARRAY: return "an array";
    case JSON_STRING: return "a string";
    case JSON_INTEGER: return "an integer";
    case JSON_REAL: return "a real number";
    case JSON_TRUE:
    case JSON_FALSE: return "a boolean";
    case JSON_NULL: return "null";
    }
    return "?";
}

/* ---------------------------------------------------------------- validation */

static bool is_hca_ratio(int64_t r) { return r >= 8 && r <= 65536 && (r & (r - 1)) == 0; }

static bool ratio_is_valid(int64_t r) { return r == TS_V4_RATIO_WINDOW || r == TS_V4_RATIO_CSA || is_hca_ratio(r); }

int64_t ts_v4_n_layer_slots(const ts_v4_config *cfg) {
    return cfg->kind == TS_MODEL_DEEPSEEK_V4 ? cfg->num_hidden_layers + cfg->num_nextn_predict_layers : 0;
}

/* Integer keys with a lower bound, checked for the kinds that use them. */
typedef struct {
    const char *key;
    size_t offset;
    unsigned used_by;
    int64_t min;
} int_bound;

static const int_bound INT_BOUNDS[] = {
    {"vocab_size", AT(vocab_size), FOR_BOTH, 1},
    {"hidden_size", AT(hidden_size), FOR_BOTH, 1},
    {"num_hidden_layers", AT(num_hidden_layers), FOR_BOTH, 1},
    {"num_attention_heads", AT(num_attention_heads), FOR_BOTH, 1},
    {"head_dim", AT(head_dim), FOR_BOTH, 1},
    {"max_position_embeddings", AT(max_position_embeddings), FOR_BOTH, 0},
    {"intermediate_size", AT(intermediate_size), FOR_DENSE, 1},
    {"qk_rope_head_dim", AT(qk_rope_head_dim), FOR_V4, 0},
    {"q_lora_rank", AT(q_lora_rank), FOR_V4, 1},
    {"o_groups", AT(o_groups), FOR_V4, 1},
    {"o_lora_rank", AT(o_lora_rank), FOR_V4, 1},
    {"n_routed_experts", AT(n_routed_experts), FOR_V4, 1},
    {"n_shared_experts", AT(n_shared_experts), FOR_V4, 0},
    {"num_experts_per_tok", AT(num_experts_per_tok), FOR_V4, 1},
    {"moe_intermediate_size", AT(moe_intermediate_size), FOR_V4, 1},
    {"num_hash_layers", AT(num_hash_layers), FOR_V4, 0},
    {"sliding_window", AT(sliding_window), FOR_V4, 1},
    {"index_n_heads", AT(index_n_heads), FOR_V4, 1},
    {"index_head_dim", AT(index_head_dim), FOR_V4, 1},
    {"index_topk", AT(index_topk), FOR_V4, 1},
    {"hc_mult", AT(hc_mult), FOR_V4, 1},
    {"hc_sinkhorn_iters", AT(hc_sinkhorn_iters), FOR_V4, 1},
    {"num_nextn_predict_layers", AT(num_nextn_predict_layers), FOR_V4, 0},
};

/* Real keys that must be > 0 (or >= 0 where allow_zero). */
typedef struct {
    const char *key;
    size_t offset;
    unsigned used_by;
    bool allow_zero;
} real_bound;

static const real_bound REAL_BOUNDS[] = {
    {"rms_norm_eps", AT(rms_norm_eps), FOR_BOTH, false},
    {"rope_theta", AT(rope_theta), FOR_BOTH, false},
    {"compress_rope_theta", AT(compress_rope_theta), FOR_V4, false},
    {"hc_eps", AT(hc_eps), FOR_V4, false},
    {"routed_scaling_factor", AT(routed_scaling_factor), FOR_V4, false},
    {"swiglu_limit", AT(swiglu_limit), FOR_V4, true}, /* 0 = no clamp (spec §7.3) */
};

static ts_status check_bounds(const ts_v4_config *cfg, err_sink *e) {
    unsigned bit = kind_bit(cfg->kind);
    for (size_t i = 0; i < sizeof INT_BOUNDS / sizeof INT_BOUNDS[0]; i++) {
        const int_bound *b = &INT_BOUNDS[i];
        int64_t v = *(const int64_t *)((const char *)cfg + b->offset);
        if ((b->used_by & bit) && v < b->min)
            return fail(e, TS_ERR_RANGE, "%s: must be %s, got %lld", b->key,
                        b->min == 1 ? "positive" : "non-negative", (long long)v);
    }
    for (size_t i = 0; i < sizeof REAL_BOUNDS / sizeof REAL_BOUNDS[0]; i++) {
        const real_bound *b = &REAL_BOUNDS[i];
        double v = *(const double *)((const char *)cfg + b->offset);
        bool ok = b->allow_zero ? v >= 0 : v > 0;
        if ((b->used_by & bit) && !(ok && isfinite(v)))
            return fail(e, TS_ERR_RANGE, "%s: must be %s and finite, got %g", b->key,
                        b->allow_zero ? "non-negative" : "positive", v);
    }
    return TS_OK;
}

static ts_status check_tokens_and_dtypes(const ts_v4_config *cfg, err_sink *e) {
    if (cfg->bos_token_id < 0 || cfg->bos_token_id >= cfg->vocab_size)
        return fail(e, TS_ERR_RANGE, "bos_token_id: %lld is outside the vocabulary [0, %lld)",
                    (long long)cfg->bos_token_id, (long long)cfg->vocab_size);
    if (cfg->eos_token_id < 0 || cfg->eos_token_id >= cfg->vocab_size)
        return fail(e, TS_ERR_RANGE, "eos_token_id: %lld is outside the vocabulary [0, %lld)",
                    (long long)cfg->eos_token_id, (long long)cfg->vocab_size);
    if (cfg->pad_token_id < -1 || cfg->pad_token_id >= cfg->vocab_size)
        return fail(e, TS_ERR_RANGE, "pad_token_id: %lld is outside the vocabulary [0, %lld) (-1 = none)",
                    (long long)cfg->pad_token_id, (long long)cfg->vocab_size);
    if (!dtype_to_name(TORCH_DTYPES, N_TORCH_DTYPES, cfg->torch_dtype))
        return fail(e, TS_ERR_RANGE, "torch_dtype: %s is not a checkpoint weight dtype (float32, bfloat16, float16)",
                    ts_dtype_name(cfg->torch_dtype));
    return TS_OK;
}

static ts_status check_dense(const ts_v4_config *cfg, err_sink *e) {
    if (cfg->head_dim % 2 != 0)
        return fail(e, TS_ERR_RANGE, "head_dim: %lld must be even (RoPE rotates pairs)", (long long)cfg->head_dim);
    return TS_OK;
}

static ts_status check_v4_features(const ts_v4_config *cfg, err_sink *e) {
    if (cfg->num_key_value_heads != 1)
        return fail(e, TS_ERR_UNSUPPORTED, "num_key_value_heads: DeepSeek-V4 has one shared K=V head, got %lld",
                    (long long)cfg->num_key_value_heads);
    if (cfg->kv_lora_rank != 0)
        return fail(e, TS_ERR_UNSUPPORTED, "kv_lora_rank: must be null in DeepSeek-V4 (no KV low rank), got %lld",
                    (long long)cfg->kv_lora_rank);
    if (cfg->first_k_dense_replace != 0)
        return fail(e, TS_ERR_UNSUPPORTED,
                    "first_k_dense_replace: DeepSeek-V4 has no dense FFN layers (absent or 0), got %lld",
                    (long long)cfg->first_k_dense_replace);
    if ((unsigned)cfg->scoring_func > TS_SCORE_SOFTMAX)
        return fail(e, TS_ERR_RANGE, "scoring_func: invalid value %d", (int)cfg->scoring_func);
    return TS_OK;
}

static ts_status check_v4_shapes(const ts_v4_config *cfg, err_sink *e) {
    if (cfg->num_experts_per_tok > cfg->n_routed_experts)
        return fail(e, TS_ERR_RANGE, "num_experts_per_tok: %lld exceeds n_routed_experts %lld",
                    (long long)cfg->num_experts_per_tok, (long long)cfg->n_routed_experts);
    if (cfg->qk_rope_head_dim % 2 != 0)
        return fail(e, TS_ERR_RANGE, "qk_rope_head_dim: %lld must be even (RoPE rotates pairs)",
                    (long long)cfg->qk_rope_head_dim);
    if (cfg->head_dim < cfg->qk_rope_head_dim)
        return fail(e, TS_ERR_RANGE, "head_dim: %lld is smaller than qk_rope_head_dim %lld",
                    (long long)cfg->head_dim, (long long)cfg->qk_rope_head_dim);
    if (cfg->index_head_dim < cfg->qk_rope_head_dim)
        return fail(e, TS_ERR_RANGE, "index_head_dim: %lld is smaller than qk_rope_head_dim %lld (the indexer ropes its last dims)",
                    (long long)cfg->index_head_dim, (long long)cfg->qk_rope_head_dim);
    if (cfg->num_attention_heads % cfg->o_groups != 0)
        return fail(e, TS_ERR_RANGE, "o_groups: num_attention_heads %lld is not divisible by o_groups %lld",
                    (long long)cfg->num_attention_heads, (long long)cfg->o_groups);
    if (cfg->num_hash_layers > cfg->num_hidden_layers)
        return fail(e, TS_ERR_RANGE, "num_hash_layers: %lld exceeds num_hidden_layers %lld",
                    (long long)cfg->num_hash_layers, (long long)cfg->num_hidden_layers);
    return TS_OK;
}

static ts_status check_v4_schedule(const ts_v4_config *cfg, err_sink *e) {
    int64_t slots = ts_v4_n_layer_slots(cfg);
    if (slots > TS_V4_MAX_COMPRESS_RATIOS)
        return fail(e, TS_ERR_RANGE, "compress_ratios: num_hidden_layers + num_nextn_predict_layers = %lld exceeds %d",
                    (long long)slots, TS_V4_MAX_COMPRESS_RATIOS);
    for (int64_t i = 0; i < slots; i++)
        if (!ratio_is_valid(cfg->compress_ratios[i]))
            return fail(e, TS_ERR_RANGE,
                        "compress_ratios[%lld]: %d is not a compress ratio (0 window only, 4 CSA, or a power of "
                        "two >= 8 for HCA; the published models use 0, 4, 128)",
                        (long long)i, (int)cfg->compress_ratios[i]);
    return TS_OK;
}

static ts_status check_v4_rope_and_quant(const ts_v4_config *cfg, err_sink *e) {
    const ts_v4_rope_scaling *y = &cfg->rope_scaling;
    if (y->enabled) {
        if (!(y->factor >= 1 && isfinite(y->factor)))
            return fail(e, TS_ERR_RANGE, "rope_scaling.factor: must be >= 1, got %g", y->factor);
        if (y->original_max_position_embeddings < 1)
            return fail(e, TS_ERR_RANGE, "rope_scaling.original_max_position_embeddings: must be positive, got %lld",
                        (long long)y->original_max_position_embeddings);
        if (!(y->beta_fast > 0 && y->beta_slow > 0 && isfinite(y->beta_fast) && isfinite(y->beta_slow)))
            return fail(e, TS_ERR_RANGE, "rope_scaling.beta_fast/beta_slow: must be positive, got %g / %g",
                        y->beta_fast, y->beta_slow);
    }
    if (cfg->quantization.fp8 && (cfg->quantization.weight_block_size[0] < 1 || cfg->quantization.weight_block_size[1] < 1))
        return fail(e, TS_ERR_RANGE, "quantization_config.weight_block_size: must be two positive integers");
    if (!dtype_to_name(EXPERT_DTYPES, N_EXPERT_DTYPES, cfg->expert_dtype))
        return fail(e, TS_ERR_RANGE, "expert_dtype: %s is not an expert weight dtype", ts_dtype_name(cfg->expert_dtype));
    return TS_OK;
}

static ts_status validate_into(const ts_v4_config *cfg, err_sink *e) {
    if (cfg->kind != TS_MODEL_DEEPSEEK_V4 && cfg->kind != TS_MODEL_DENSE)
        return fail(e, TS_ERR_UNSUPPORTED, "model_type: unknown model kind %d", (int)cfg->kind);
    ts_status s = check_bounds(cfg, e);
    if (s == TS_OK) s = check_tokens_and_dtypes(cfg, e);
    if (s != TS_OK) return s;
    if (cfg->kind == TS_MODEL_DENSE) return check_dense(cfg, e);
    if ((s = check_v4_features(cfg, e)) != TS_OK) return s;
    if ((s = check_v4_shapes(cfg, e)) != TS_OK) return s;
    if ((s = check_v4_schedule(cfg, e)) != TS_OK) return s;
    return check_v4_rope_and_quant(cfg, e);
}

ts_status ts_v4_config_validate(const ts_v4_config *cfg, char *err, size_t err_size) {
    err_sink e = {NULL, err, err_size};
    if (!cfg) return fail(&e, TS_ERR_INVALID_ARG, "config: NULL");
    return validate_into(cfg, &e);
}

/* ---------------------------------------------------------------- parsing */

/* What parsing needs besides the config: the JSON root and where errors go. */
typedef struct {
    json_t *root;
    err_sink *err;
} parse_ctx;

/* The value of a key: the HF spelling if present, else the inference spelling. JSON null
 * counts as absent. *spelling gets the key found (for messages). */
static json_t *lookup(const parse_ctx *p, const char *hf, const char *inference, const char **spelling) {
    json_t *v = json_object_get(p->root, hf);
    *spelling = hf;
    if ((!v || json_is_null(v)) && inference) {
        json_t *alt = json_object_get(p->root, inference);
        if (alt && !json_is_null(alt)) {
            *spelling = inference;
            return alt;
        }
    }
    return v && !json_is_null(v) ? v : NULL;
}

static ts_status missing(const parse_ctx *p, const char *hf, const char *inference) {
    if (inference && strcmp(hf, inference) != 0)
        return fail(p->err, TS_ERR_FORMAT, "missing required key \"%s\" (inference spelling \"%s\")", hf, inference);
    return fail(p->err, TS_ERR_FORMAT, "missing required key \"%s\"", hf);
}

static ts_status wrong_type(const parse_ctx *p, const char *key, const char *expected, const json_t *v) {
    return fail(p->err, TS_ERR_FORMAT, "%s: expected %s, got %s", key, expected, json_type_name(v));
}

static ts_status get_int(const parse_ctx *p, const char *key, const json_t *v, int64_t *out) {
    if (!json_is_integer(v)) return wrong_type(p, key, "an integer", v);
    *out = (int64_t)json_integer_value(v);
    return TS_OK;
}

static ts_status get_real(const parse_ctx *p, const char *key, const json_t *v, double *out) {
    if (!json_is_number(v)) return wrong_type(p, key, "a number", v);
    *out = json_number_value(v);
    return TS_OK;
}

static ts_status get_bool(const parse_ctx *p, const char *key, const json_t *v, bool *out) {
    if (!json_is_boolean(v)) return wrong_type(p, key, "true or false", v);
    *out = json_is_true(v);
    return TS_OK;
}

static ts_status get_string(const parse_ctx *p, const char *key, const json_t *v, const char **out) {
    if (!json_is_string(v)) return wrong_type(p, key, "a string", v);
    *out = json_string_value(v);
    return TS_OK;
}

static ts_status read_table_key(const parse_ctx *p, const config_key *k, ts_v4_config *cfg) {
    unsigned bit = kind_bit(cfg->kind);
    if (!(k->used_by & bit)) return TS_OK;
    const char *spelling;
    json_t *v = lookup(p, k->hf, cfg->kind == TS_MODEL_DEEPSEEK_V4 ? k->inference : NULL, &spelling);
    if (!v) {
        if (k->required_by & bit) return missing(p, k->hf, k->inference);
        switch (k->type) {
        case KEY_INT: *key_int(cfg, k) = (int64_t)k->def; break;
        case KEY_REAL: *key_real(cfg, k) = k->def; break;
        case KEY_BOOL: *key_bool(cfg, k) = k->def != 0; break;
        }
        return TS_OK;
    }
    switch (k->type) {
    case KEY_INT: return get_int(p, spelling, v, key_int(cfg, k));
    case KEY_REAL: return get_real(p, spelling, v, key_real(cfg, k));
    case KEY_BOOL: return get_bool(p, spelling, v, key_bool(cfg, k));
    }
    return TS_ERR_INTERNAL;
}

static ts_status read_kind(const parse_ctx *p, ts_v4_config *cfg) {
    json_t *v = json_object_get(p->root, "model_type");
    if (!v) {
        if (json_object_get(p->root, "dim")) { /* DeepSeek's inference config.json has no model_type */
            cfg->kind = TS_MODEL_DEEPSEEK_V4;
            return TS_OK;
        }
        return fail(p->err, TS_ERR_FORMAT, "missing required key \"model_type\"");
    }
    const char *name = NULL;
    ts_status s = get_string(p, "model_type", v, &name);
    if (s != TS_OK) return s;
    if (strcmp(name, "deepseek_v4") == 0) cfg->kind = TS_MODEL_DEEPSEEK_V4;
    else if (strcmp(name, "tessera_dense") == 0) cfg->kind = TS_MODEL_DENSE;
    else
        return fail(p->err, TS_ERR_UNSUPPORTED, "model_type: unknown model type \"%s\" (expected deepseek_v4 or tessera_dense)",
                    name);
    return TS_OK;
}

/* pad_token_id: absent = eos_token_id (spec: PAD = EOS = 1); null = no pad token (-1). */
static ts_status read_pad(const parse_ctx *p, ts_v4_config *cfg) {
    json_t *v = json_object_get(p->root, "pad_token_id");
    if (!v) {
        cfg->pad_token_id = cfg->eos_token_id;
        return TS_OK;
    }
    if (json_is_null(v)) {
        cfg->pad_token_id = -1;
        return TS_OK;
    }
    return get_int(p, "pad_token_id", v, &cfg->pad_token_id);
}

/* torch_dtype (or transformers >= 4.56's "dtype" when it holds a torch dtype name). The
 * inference config's "dtype" ("fp8"/"bf16") is about quantization and is read elsewhere. */
static ts_status read_torch_dtype(const parse_ctx *p, ts_v4_config *cfg) {
    cfg->torch_dtype = cfg->kind == TS_MODEL_DEEPSEEK_V4 ? TS_BF16 : TS_F32; /* published V4 / our CPU engine */
    const char *key = "torch_dtype";
    json_t *v = json_object_get(p->root, key);
    if (!v || json_is_null(v)) {
        json_t *alt = json_object_get(p->root, "dtype");
        ts_dtype unused;
        if (!alt || !json_is_string(alt) || !dtype_lookup(TORCH_DTYPES, N_TORCH_DTYPES, json_string_value(alt), &unused))
            return TS_OK;
        key = "dtype";
        v = alt;
    }
    const char *name = NULL;
    ts_status s = get_string(p, key, v, &name);
    if (s != TS_OK) return s;
    if (!dtype_lookup(TORCH_DTYPES, N_TORCH_DTYPES, name, &cfg->torch_dtype))
        return fail(p->err, TS_ERR_UNSUPPORTED, "%s: unknown dtype \"%s\" (float32, bfloat16, float16)", key, name);
    return TS_OK;
}

/* Optional keys whose only legal value is fixed: checked so a config meaning something else is
 * refused rather than misread. */
static ts_status check_fixed_string(const parse_ctx *p, json_t *obj, const char *key, const char *label,
                                    const char *expected) {
    json_t *v = json_object_get(obj, key);
    if (!v || json_is_null(v)) return TS_OK;
    const char *s = NULL;
    ts_status st = get_string(p, label, v, &s);
    if (st != TS_OK) return st;
    if (strcmp(s, expected) != 0)
        return fail(p->err, TS_ERR_UNSUPPORTED, "%s: \"%s\" is not supported (expected \"%s\")", label, s, expected);
    return TS_OK;
}

static ts_status read_dense_extras(const parse_ctx *p, ts_v4_config *cfg) {
    json_t *v = json_object_get(p->root, "head_dim");
    ts_status s;
    if (v && !json_is_null(v)) {
        if ((s = get_int(p, "head_dim", v, &cfg->head_dim)) != TS_OK) return s;
    } else {
        if (cfg->num_attention_heads < 1 || cfg->hidden_size % cfg->num_attention_heads != 0)
            return fail(p->err, TS_ERR_RANGE,
                        "num_attention_heads: hidden_size %lld is not divisible by num_attention_heads %lld (or give head_dim)",
                        (long long)cfg->hidden_size, (long long)cfg->num_attention_heads);
        cfg->head_dim = cfg->hidden_size / cfg->num_attention_heads;
    }
    v = json_object_get(p->root, "num_key_value_heads");
    if (v && !json_is_null(v)) {
        int64_t kv = 0;
        if ((s = get_int(p, "num_key_value_heads", v, &kv)) != TS_OK) return s;
        if (kv != cfg->num_attention_heads)
            return fail(p->err, TS_ERR_UNSUPPORTED,
                        "num_key_value_heads: the dense baseline is multi-head attention (must equal num_attention_heads %lld), got %lld",
                        (long long)cfg->num_attention_heads, (long long)kv);
    }
    return check_fixed_string(p, p->root, "hidden_act", "hidden_act", "silu");
}

static ts_status read_scoring_func(const parse_ctx *p, ts_v4_config *cfg) {
    const char *spelling, *name = NULL;
    json_t *v = lookup(p, "scoring_func", "score_func", &spelling);
    if (!v) return missing(p, "scoring_func", "score_func");
    ts_status s = get_string(p, spelling, v, &name);
    if (s != TS_OK) return s;
    for (int i = 0; i < 3; i++)
        if (strcmp(name, SCORE_FUNC_NAMES[i]) == 0) {
            cfg->scoring_func = (ts_score_func)i;
            return TS_OK;
        }
    return fail(p->err, TS_ERR_UNSUPPORTED, "%s: unknown scoring function \"%s\" (sqrtsoftplus, sigmoid, softmax)", spelling,
                name);
}

/* compress_ratios: an array of L + n_mtp integers (spec §1.2). */
static ts_status read_compress_ratios(const parse_ctx *p, ts_v4_config *cfg) {
    const char *spelling;
    json_t *v = lookup(p, "compress_ratios", "compress_ratios", &spelling);
    if (!v) return missing(p, "compress_ratios", NULL);
    if (!json_is_array(v)) return wrong_type(p, "compress_ratios", "an array of integers", v);
    size_t n = json_array_size(v);
    if (n > TS_V4_MAX_COMPRESS_RATIOS)
        return fail(p->err, TS_ERR_RANGE, "compress_ratios: %zu entries exceed the limit of %d", n, TS_V4_MAX_COMPRESS_RATIOS);
    for (size_t i = 0; i < n; i++) {
        json_t *item = json_array_get(v, i);
        if (!json_is_integer(item))
            return fail(p->err, TS_ERR_FORMAT, "compress_ratios[%zu]: expected an integer, got %s", i, json_type_name(item));
        json_int_t r = json_integer_value(item);
        if (r < 0 || r > 65536)
            return fail(p->err, TS_ERR_RANGE, "compress_ratios[%zu]: %lld is not a compress ratio (0, 4 or a power of two >= 8)",
                        i, (long long)r);
        cfg->compress_ratios[i] = (int32_t)r;
    }
    int64_t L = cfg->num_hidden_layers, mtp = cfg->num_nextn_predict_layers;
    if (L >= 1 && mtp >= 0 && L + mtp <= TS_V4_MAX_COMPRESS_RATIOS && (int64_t)n != L + mtp)
        return fail(p->err, TS_ERR_RANGE,
                    "compress_ratios: has %zu entries, expected num_hidden_layers + num_nextn_predict_layers = %lld + %lld = %lld",
                    n, (long long)L, (long long)mtp, (long long)(L + mtp));
    return TS_OK;
}

/* HF rope_scaling {type|rope_type: yarn, factor, original_max_position_embeddings, beta_fast,
 * beta_slow}; beta_* default to transformers' YaRN defaults 32 / 1. */
static ts_status read_rope_scaling_hf(const parse_ctx *p, json_t *obj, ts_v4_rope_scaling *y) {
    if (!json_is_object(obj)) return wrong_type(p, "rope_scaling", "an object or null", obj);
    json_t *type = json_object_get(obj, "type");
    const char *type_key = "rope_scaling.type";
    if (!type) {
        type = json_object_get(obj, "rope_type");
        type_key = "rope_scaling.rope_type";
    }
    if (!type) return fail(p->err, TS_ERR_FORMAT, "rope_scaling: missing required key \"type\"");
    const char *name = NULL;
    ts_status s = get_string(p, type_key, type, &name);
    if (s != TS_OK) return s;
    if (strcmp(name, "yarn") != 0)
        return fail(p->err, TS_ERR_UNSUPPORTED, "%s: \"%s\" is not supported (DeepSeek-V4 uses yarn)", type_key, name);
    json_t *v = json_object_get(obj, "factor");
    if (!v) return fail(p->err, TS_ERR_FORMAT, "rope_scaling: missing required key \"factor\"");
    if ((s = get_real(p, "rope_scaling.factor", v, &y->factor)) != TS_OK) return s;
    v = json_object_get(obj, "original_max_position_embeddings");
    if (!v) return fail(p->err, TS_ERR_FORMAT, "rope_scaling: missing required key \"original_max_position_embeddings\"");
    if ((s = get_int(p, "rope_scaling.original_max_position_embeddings", v, &y->original_max_position_embeddings)) != TS_OK)
        return s;
    y->beta_fast = 32;
    y->beta_slow = 1;
    if ((v = json_object_get(obj, "beta_fast")) && (s = get_real(p, "rope_scaling.beta_fast", v, &y->beta_fast)) != TS_OK)
        return s;
    if ((v = json_object_get(obj, "beta_slow")) && (s = get_real(p, "rope_scaling.beta_slow", v, &y->beta_slow)) != TS_OK)
        return s;
    y->enabled = true;
    return TS_OK;
}

/* Inference spelling: rope_factor, original_seq_len (0 = YaRN off), beta_fast, beta_slow. */
static ts_status read_rope_scaling_inference(const parse_ctx *p, ts_v4_rope_scaling *y) {
    json_t *orig = json_object_get(p->root, "original_seq_len");
    ts_status s;
    if (!orig || json_is_null(orig)) return TS_OK;
    if ((s = get_int(p, "original_seq_len", orig, &y->original_max_position_embeddings)) != TS_OK) return s;
    if (y->original_max_position_embeddings == 0) return TS_OK;
    json_t *v = json_object_get(p->root, "rope_factor");
    if (!v) return missing(p, "rope_factor", NULL);
    if ((s = get_real(p, "rope_factor", v, &y->factor)) != TS_OK) return s;
    y->beta_fast = 32;
    y->beta_slow = 1;
    if ((v = json_object_get(p->root, "beta_fast")) && (s = get_real(p, "beta_fast", v, &y->beta_fast)) != TS_OK) return s;
    if ((v = json_object_get(p->root, "beta_slow")) && (s = get_real(p, "beta_slow", v, &y->beta_slow)) != TS_OK) return s;
    y->enabled = true;
    return TS_OK;
}

static ts_status read_rope_scaling(const parse_ctx *p, ts_v4_config *cfg) {
    memset(&cfg->rope_scaling, 0, sizeof cfg->rope_scaling);
    json_t *v = json_object_get(p->root, "rope_scaling");
    if (v) return json_is_null(v) ? TS_OK : read_rope_scaling_hf(p, v, &cfg->rope_scaling); /* HF key wins */
    return read_rope_scaling_inference(p, &cfg->rope_scaling);
}

static ts_status read_quantization_hf(const parse_ctx *p, json_t *q, ts_v4_quantization *out) {
    if (!json_is_object(q)) return wrong_type(p, "quantization_config", "an object or null", q);
    json_t *method = json_object_get(q, "quant_method");
    if (!method) return fail(p->err, TS_ERR_FORMAT, "quantization_config: missing required key \"quant_method\"");
    ts_status s = check_fixed_string(p, q, "quant_method", "quantization_config.quant_method", "fp8");
    if (s == TS_OK) s = check_fixed_string(p, q, "fmt", "quantization_config.fmt", "e4m3");
    if (s == TS_OK) s = check_fixed_string(p, q, "scale_fmt", "quantization_config.scale_fmt", "ue8m0");
    if (s == TS_OK) s = check_fixed_string(p, q, "activation_scheme", "quantization_config.activation_scheme", "dynamic");
    if (s != TS_OK) return s;
    json_t *block = json_object_get(q, "weight_block_size");
    if (!block) return fail(p->err, TS_ERR_FORMAT, "quantization_config: missing required key \"weight_block_size\"");
    if (!json_is_array(block) || json_array_size(block) != 2 || !json_is_integer(json_array_get(block, 0)) ||
        !json_is_integer(json_array_get(block, 1)))
        return fail(p->err, TS_ERR_FORMAT, "quantization_config.weight_block_size: expected an array of two integers");
    out->weight_block_size[0] = (int64_t)json_integer_value(json_array_get(block, 0));
    out->weight_block_size[1] = (int64_t)json_integer_value(json_array_get(block, 1));
    out->fp8 = true;
    return TS_OK;
}

/* Inference spelling: dtype "fp8" (128x128 blocks, the inference code's block_size) or "bf16";
 * scale_fmt must be ue8m0 when given. */
static ts_status read_quantization_inference(const parse_ctx *p, ts_v4_quantization *out) {
    json_t *v = json_object_get(p->root, "dtype");
    if (!v || json_is_null(v)) return TS_OK;
    const char *name = NULL;
    ts_status s = get_string(p, "dtype", v, &name);
    if (s != TS_OK) return s;
    ts_dtype torch;
    if (dtype_lookup(TORCH_DTYPES, N_TORCH_DTYPES, name, &torch)) return TS_OK; /* transformers' torch dtype */
    if (strcmp(name, "bf16") == 0) return TS_OK;
    if (strcmp(name, "fp8") != 0)
        return fail(p->err, TS_ERR_UNSUPPORTED, "dtype: \"%s\" is not supported (fp8, bf16)", name);
    if ((s = check_fixed_string(p, p->root, "scale_fmt", "scale_fmt", "ue8m0")) != TS_OK) return s;
    out->fp8 = true;
    out->weight_block_size[0] = out->weight_block_size[1] = 128;
    return TS_OK;
}

static ts_status read_quantization(const parse_ctx *p, ts_v4_config *cfg) {
    memset(&cfg->quantization, 0, sizeof cfg->quantization);
    json_t *q = json_object_get(p->root, "quantization_config");
    ts_status s = q ? (json_is_null(q) ? TS_OK : read_quantization_hf(p, q, &cfg->quantization))
                    : read_quantization_inference(p, &cfg->quantization);
    if (s != TS_OK) return s;
    /* expert_dtype: absent = stored like the other linears */
    cfg->expert_dtype = cfg->quantization.fp8 ? TS_F8_E4M3 : cfg->torch_dtype;
    json_t *v = json_object_get(p->root, "expert_dtype");
    if (!v || json_is_null(v)) return TS_OK;
    const char *name = NULL;
    if ((s = get_string(p, "expert_dtype", v, &name)) != TS_OK) return s;
    if (!dtype_lookup(EXPERT_DTYPES, N_EXPERT_DTYPES, name, &cfg->expert_dtype))
        return fail(p->err, TS_ERR_UNSUPPORTED, "expert_dtype: unknown dtype \"%s\" (fp4, fp8, bf16, fp16, fp32)", name);
    return TS_OK;
}

static ts_status read_v4_extras(const parse_ctx *p, ts_v4_config *cfg) {
    ts_status s = read_scoring_func(p, cfg);
    if (s == TS_OK) s = check_fixed_string(p, p->root, "topk_method", "topk_method", "noaux_tc");
    if (s == TS_OK) s = check_fixed_string(p, p->root, "hidden_act", "hidden_act", "silu");
    if (s == TS_OK) s = read_compress_ratios(p, cfg);
    if (s == TS_OK) s = read_rope_scaling(p, cfg);
    if (s == TS_OK) s = read_quantization(p, cfg);
    if (s != TS_OK) return s;
    /* qk_nope_head_dim appears in some configs; it must agree with head_dim - qk_rope_head_dim */
    json_t *v = json_object_get(p->root, "qk_nope_head_dim");
    int64_t nope = 0;
    if (v && !json_is_null(v)) {
        if ((s = get_int(p, "qk_nope_head_dim", v, &nope)) != TS_OK) return s;
        if (nope != cfg->head_dim - cfg->qk_rope_head_dim)
            return fail(p->err, TS_ERR_RANGE, "qk_nope_head_dim: %lld != head_dim %lld - qk_rope_head_dim %lld",
                        (long long)nope, (long long)cfg->head_dim, (long long)cfg->qk_rope_head_dim);
    }
    return TS_OK;
}

static ts_status parse_root(const parse_ctx *p, ts_v4_config *cfg) {
    memset(cfg, 0, sizeof *cfg);
    if (!json_is_object(p->root)) return fail(p->err, TS_ERR_FORMAT, "top level is %s, expected a JSON object", json_type_name(p->root));
    ts_status s = read_kind(p, cfg);
    for (int i = 0; s == TS_OK && i < N_CONFIG_KEYS; i++) s = read_table_key(p, &CONFIG_KEYS[i], cfg);
    if (s == TS_OK) s = read_pad(p, cfg);
    if (s == TS_OK) s = read_torch_dtype(p, cfg);
    if (s == TS_OK) s = cfg->kind == TS_MODEL_DENSE ? read_dense_extras(p, cfg) : read_v4_extras(p, cfg);
    if (s == TS_OK) s = validate_into(cfg, p->err);
    return s;
}

ts_status ts_v4_config_parse(const char *json_text, const char *source, ts_v4_config *cfg, char *err, size_t err_size) {
    err_sink e = {source, err, err_size};
    if (!json_text || !cfg) return fail(&e, TS_ERR_INVALID_ARG, "config: NULL argument");
    json_error_t jerr;
    json_t *root = json_loads(json_text, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        return fail(&e, TS_ERR_FORMAT, "not valid JSON at line %d, column %d: %s", jerr.line, jerr.column, jerr.text);
    parse_ctx p = {root, &e};
    ts_status s = parse_root(&p, cfg);
    json_decref(root);
    return s;
}

/* Reads a whole file into a NUL-terminated malloc'd buffer. */
static ts_status read_file(const char *path, char **out, err_sink *e) {
    FILE *f = fopen(path, "rb");
    if (!f) return fail(e, TS_ERR_IO, "cannot open: %s", strerror(errno));
    size_t cap = 1 << 14, len = 0;
    char *buf = malloc(cap);
    while (buf) {
        len += fread(buf + len, 1, cap - len - 1, f);
        if (len < cap - 1) break;
        char *bigger = realloc(buf, cap * 2);
        if (!bigger) {
            free(buf);
            buf = NULL;
            break;
        }
        buf = bigger;
        cap *= 2;
    }
    bool read_error = ferror(f) != 0;
    fclose(f);
    if (!buf) return fail(e, TS_ERR_OOM, "out of memory reading the file");
    if (read_error) {
        free(buf);
        return fail(e, TS_ERR_IO, "read error");
    }
    buf[len] = '\0';
    *out = buf;
    return TS_OK;
}

ts_status ts_v4_config_load(const char *path, ts_v4_config *cfg, char *err, size_t err_size) {
    err_sink e = {path, err, err_size};
    if (!path || !cfg) return fail(&e, TS_ERR_INVALID_ARG, "config: NULL argument");
    char dir_config[4096];
    struct stat st;
    if (stat(path, &st) == 0 && S_ISDIR(st.st_mode)) { /* a checkpoint directory */
        snprintf(dir_config, sizeof dir_config, "%s/config.json", path);
        path = dir_config;
        e.source = path;
    }
    char *text = NULL;
    ts_status s = read_file(path, &text, &e);
    if (s != TS_OK) return s;
    s = ts_v4_config_parse(text, path, cfg, err, err_size);
    free(text);
    return s;
}

/* ---------------------------------------------------------------- writing */

/* Reals are written with the fewest significant digits (15..17) that read back exactly; one
 * precision serves the whole document, so the writer remembers the largest it needed. */
typedef struct {
    json_t *root;
    int real_digits;
} json_writer;

static int digits_to_round_trip(double v) {
    char buf[40];
    for (int digits = 15; digits < 17; digits++) {
        snprintf(buf, sizeof buf, "%.*g", digits, v);
        if (strtod(buf, NULL) == v) return digits;
    }
    return 17;
}

static void put(json_writer *w, const char *key, json_t *value) { json_object_set_new(w->root, key, value); }

static json_t *real_value(json_writer *w, double v) {
    int d = digits_to_round_trip(v);
    if (d > w->real_digits) w->real_digits = d;
    return json_real(v);
}

static void write_table_key(json_writer *w, const config_key *k, const ts_v4_config *cfg) {
    if (!(k->used_by & kind_bit(cfg->kind))) return;
    switch (k->type) {
    case KEY_INT: {
        int64_t v = *key_int_c(cfg, k);
        put(w, k->hf, v == 0 && k->null_when_zero ? json_null() : json_integer((json_int_t)v));
        break;
    }
    case KEY_REAL: put(w, k->hf, real_value(w, *key_real_c(cfg, k))); break;
    case KEY_BOOL: put(w, k->hf, json_boolean(*key_bool_c(cfg, k))); break;
    }
}

/* transformers' DeepseekV4 port reads the schedule from layer_types + compress_rates and
 * builds it from compress_ratios only for the ratios {0, 4, 128} (docs/v4-reference-notes.md
 * item 20), so both are written too - when every HCA layer shares one ratio, the only schedule
 * the port can express. */
static void write_port_layer_types(json_writer *w, const ts_v4_config *cfg) {
    int32_t hca = 0;
    for (int64_t i = 0; i < cfg->num_hidden_layers; i++) {
        int32_t r = cfg->compress_ratios[i];
        if (r == TS_V4_RATIO_WINDOW || r == TS_V4_RATIO_CSA) continue;
        if (hca && r != hca) return;
        hca = r;
    }
    json_t *types = json_array();
    for (int64_t i = 0; i < cfg->num_hidden_layers; i++) {
        int32_t r = cfg->compress_ratios[i];
        json_array_append_new(types, json_string(r == TS_V4_RATIO_WINDOW ? "sliding_attention"
                                                 : r == TS_V4_RATIO_CSA  ? "compressed_sparse_attention"
                                                                         : "heavily_compressed_attention"));
    }
    put(w, "layer_types", types);
    put(w, "compress_rates", json_pack("{s:i,s:i}", "compressed_sparse_attention", TS_V4_RATIO_CSA,
                                       "heavily_compressed_attention", hca ? hca : TS_V4_RATIO_HCA));
}

static void write_v4_extras(json_writer *w, const ts_v4_config *cfg) {
    put(w, "scoring_func", json_string(ts_score_func_name(cfg->scoring_func)));
    put(w, "topk_method", json_string("noaux_tc"));
    json_t *ratios = json_array();
    for (int64_t i = 0; i < ts_v4_n_layer_slots(cfg); i++) json_array_append_new(ratios, json_integer(cfg->compress_ratios[i]));
    put(w, "compress_ratios", ratios);
    write_port_layer_types(w, cfg);
    const ts_v4_rope_scaling *y = &cfg->rope_scaling;
    if (y->enabled) {
        json_t *obj = json_object();
        json_object_set_new(obj, "type", json_string("yarn"));
        json_object_set_new(obj, "factor", real_value(w, y->factor));
        json_object_set_new(obj, "original_max_position_embeddings", json_integer((json_int_t)y->original_max_position_embeddings));
        json_object_set_new(obj, "beta_fast", real_value(w, y->beta_fast));
        json_object_set_new(obj, "beta_slow", real_value(w, y->beta_slow));
        put(w, "rope_scaling", obj);
    } else {
        put(w, "rope_scaling", json_null());
    }
    ts_dtype implied_expert_dtype = cfg->torch_dtype;
    if (cfg->quantization.fp8) {
        json_t *q = json_object();
        json_object_set_new(q, "quant_method", json_string("fp8"));
        json_object_set_new(q, "fmt", json_string("e4m3"));
        json_object_set_new(q, "scale_fmt", json_string("ue8m0"));
        json_object_set_new(q, "activation_scheme", json_string("dynamic"));
        json_object_set_new(q, "weight_block_size",
                            json_pack("[II]", (json_int_t)cfg->quantization.weight_block_size[0],
                                      (json_int_t)cfg->quantization.weight_block_size[1]));
        put(w, "quantization_config", q);
        implied_expert_dtype = TS_F8_E4M3;
    }
    if (cfg->expert_dtype != implied_expert_dtype)
        put(w, "expert_dtype", json_string(dtype_to_name(EXPERT_DTYPES, N_EXPERT_DTYPES, cfg->expert_dtype)));
}

static void write_dense_extras(json_writer *w, const ts_v4_config *cfg) {
    put(w, "head_dim", json_integer((json_int_t)cfg->head_dim));
    put(w, "num_key_value_heads", json_integer((json_int_t)cfg->num_attention_heads)); /* llama readers expect it */
}

ts_status ts_v4_config_to_json(const ts_v4_config *cfg, char **out_json, char *err, size_t err_size) {
    err_sink e = {NULL, err, err_size};
    if (!cfg || !out_json) return fail(&e, TS_ERR_INVALID_ARG, "config: NULL argument");
    ts_status s = validate_into(cfg, &e);
    if (s != TS_OK) return s;
    json_writer w = {json_object(), 1};
    bool v4 = cfg->kind == TS_MODEL_DEEPSEEK_V4;
    put(&w, "architectures", json_pack("[s]", v4 ? "DeepseekV4ForCausalLM" : "TesseraDenseForCausalLM"));
    put(&w, "model_type", json_string(ts_model_kind_name(cfg->kind)));
    put(&w, "hidden_act", json_string("silu"));
    for (int i = 0; i < N_CONFIG_KEYS; i++) write_table_key(&w, &CONFIG_KEYS[i], cfg);
    put(&w, "pad_token_id", cfg->pad_token_id < 0 ? json_null() : json_integer((json_int_t)cfg->pad_token_id));
    put(&w, "torch_dtype", json_string(dtype_to_name(TORCH_DTYPES, N_TORCH_DTYPES, cfg->torch_dtype)));
    if (v4) write_v4_extras(&w, cfg);
    else write_dense_extras(&w, cfg);
    *out_json = json_dumps(w.root, JSON_INDENT(2) | JSON_SORT_KEYS | JSON_REAL_PRECISION(w.real_digits));
    json_decref(w.root);
    return *out_json ? TS_OK : fail(&e, TS_ERR_OOM, "out of memory writing the config");
}

ts_status ts_v4_config_save(const ts_v4_config *cfg, const char *path, char *err, size_t err_size) {
    err_sink e = {path, err, err_size};
    char *text = NULL;
    ts_status s = ts_v4_config_to_json(cfg, &text, err, err_size);
    if (s != TS_OK) return s;
    FILE *f = fopen(path, "wb");
    if (!f) {
        free(text);
        return fail(&e, TS_ERR_IO, "cannot create: %s", strerror(errno));
    }
    bool ok = fputs(text, f) >= 0 && fputc('\n', f) != EOF;
    ok = (fclose(f) == 0) && ok;
    free(text);
    return ok ? TS_OK : fail(&e, TS_ERR_IO, "write error: %s", strerror(errno));
}

/* ---------------------------------------------------------------- equality */

static bool table_fields_equal(const ts_v4_config *a, const ts_v4_config *b) {
    unsigned bit = kind_bit(a->kind);
    for (int i = 0; i < N_CONFIG_KEYS; i++) {
        const config_key *k = &CONFIG_KEYS[i];
        if (!(k->used_by & bit)) continue;
        bool same = k->type == KEY_INT    ? *key_int_c(a, k) == *key_int_c(b, k)
                    : k->type == KEY_REAL ? *key_real_c(a, k) == *key_real_c(b, k)
                                          : *key_bool_c(a, k) == *key_bool_c(b, k);
        if (!same) return false;
    }
    return true;
}

static bool v4_extras_equal(const ts_v4_config *a, const ts_v4_config *b) {
    for (int64_t i = 0; i < ts_v4_n_layer_slots(a); i++)
        if (a->compress_ratios[i] != b->compress_ratios[i]) return false;
    const ts_v4_rope_scaling *ya = &a->rope_scaling, *yb = &b->rope_scaling;
    if (ya->enabled != yb->enabled) return false;
    if (ya->enabled && (ya->factor != yb->factor || ya->original_max_position_embeddings != yb->original_max_position_embeddings ||
                        ya->beta_fast != yb->beta_fast || ya->beta_slow != yb->beta_slow))
        return false;
    const ts_v4_quantization *qa = &a->quantization, *qb = &b->quantization;
    if (qa->fp8 != qb->fp8) return false;
    if (qa->fp8 && (qa->weight_block_size[0] != qb->weight_block_size[0] || qa->weight_block_size[1] != qb->weight_block_size[1]))
        return false;
    return a->scoring_func == b->scoring_func && a->expert_dtype == b->expert_dtype;
}

bool ts_v4_config_equal(const ts_v4_config *a, const ts_v4_config *b) {
    if (!a || !b) return a == b;
    if (a->kind != b->kind || !table_fields_equal(a, b)) return false;
    if (a->pad_token_id != b->pad_token_id || a->torch_dtype != b->torch_dtype) return false;
    if (a->kind == TS_MODEL_DENSE) return a->head_dim == b->head_dim;
    return v4_extras_equal(a, b);
}
