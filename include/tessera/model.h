/* model.h - the model layer: DeepSeek-V4 (spec ../shared/spec/deepseek-v4.md) and the dense
 * baseline we compare against other frameworks.
 *
 * This part holds the configuration: one struct with every hyper-parameter of spec §1.1,
 * parsed from and written to Hugging Face config.json (config.c), named presets from the tiny
 * CPU model to the published Flash and Pro shapes (presets.c), and the accounting derived from
 * the tensor inventory of spec §1.4 - parameter counts, FLOPs per token, KV-cache bytes and a
 * training-memory estimate (accounting.c). The tensor inventory is one walk
 * (ts_model_walk_tensors) that the checkpoint loader and the graph builder reuse, so names and
 * shapes live in exactly one place. The second part holds the weights in memory (weights.c: load,
 * save, init) and the graph builder (model_graph.c: forward, loss, backward).
 *
 * Errors: functions that can fail return ts_status and, where they take (err, err_size), write
 * one line naming the offending key into err. Nothing here exits or aborts. Status codes:
 *   TS_ERR_IO           the file could not be opened or read
 *   TS_ERR_FORMAT       not JSON (message has jansson's line/column), top level not an object,
 *                       a required key missing, or a key of the wrong JSON type
 *   TS_ERR_RANGE        a value out of range or inconsistent with another key
 *                       (compress_ratios length, top-k > experts, heads vs o_groups, ...)
 *   TS_ERR_UNSUPPORTED  unknown model_type, or a feature outside V4 (kv_lora_rank non-null,
 *                       first_k_dense_replace > 0, num_key_value_heads != 1, ...)
 *   TS_ERR_INVALID_ARG  NULL pointers, unknown preset names */
#ifndef TESSERA_MODEL_H
#define TESSERA_MODEL_H

#include "tessera/core.h"
#include "tessera/graph.h"
#include "tessera/infer.h"
#include "tessera/io.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---------------------------------------------------------------- configuration */

/* Which architecture a config describes.
 *  TS_MODEL_DEEPSEEK_V4: model_type "deepseek_v4" (spec §1-§2).
 *  TS_MODEL_DENSE: model_type "tessera_dense" - our dense baseline: a pre-norm decoder with
 *    multi-head causal attention (RoPE on the whole head, no biases), a SwiGLU FFN of width
 *    intermediate_size, RMSNorm and a plain residual. Its config.json uses the Hugging Face
 *    llama keys (hidden_size, num_hidden_layers, num_attention_heads, intermediate_size,
 *    vocab_size, rms_norm_eps, rope_theta, max_position_embeddings, tie_word_embeddings; optional
 *    head_dim = hidden_size / num_attention_heads, token ids, torch_dtype), so a llama config
 *    with model_type changed loads as-is. The V4-only fields of ts_v4_config are zero. */
typedef enum { TS_MODEL_DEEPSEEK_V4 = 0, TS_MODEL_DENSE = 1 } ts_model_kind;

/* Router affinity (HF scoring_func / inference score_func). V4 uses sqrt(softplus). */
typedef enum { TS_SCORE_SQRTSOFTPLUS = 0, TS_SCORE_SIGMOID, TS_SCORE_SOFTMAX } ts_score_func;

/* compress_ratios holds num_hidden_layers + num_nextn_predict_layers entries. */
#define TS_V4_MAX_COMPRESS_RATIOS 512
/* Compress-ratio meanings (spec §1.2). 4 is the overlapping CSA compressor with an indexer;
 * any other positive ratio is a non-overlapping HCA compressor (128 in the published models; the
 * tiny model uses 32), which is why validation accepts powers of two >= 8 for HCA. */
enum { TS_V4_RATIO_WINDOW = 0, TS_V4_RATIO_CSA = 4, TS_V4_RATIO_HCA = 128 };

/* YaRN on the compressed layers (HF rope_scaling {type yarn, ...}; inference rope_factor,
 * original_seq_len, beta_fast, beta_slow; original_seq_len 0 = off). */
typedef struct {
    bool enabled;
    double factor;                            /* 16 */
    int64_t original_max_position_embeddings; /* 65536 */
    double beta_fast, beta_slow;              /* 32, 1 */
} ts_v4_rope_scaling;

/* HF quantization_config (+ the top-level expert_dtype). Absent = a full-precision checkpoint. */
typedef struct {
    bool fp8;                    /* quant_method "fp8", fmt "e4m3", scale_fmt "ue8m0", dynamic activations */
    int64_t weight_block_size[2]; /* [128, 128] */
} ts_v4_quantization;

typedef struct {
    ts_model_kind kind;

    /* shared by both kinds */
    int64_t vocab_size;              /* 129280 */
    int64_t hidden_size;             /* d: 4096 Flash, 7168 Pro (inference key: dim) */
    int64_t num_hidden_layers;       /* L: 43 / 61 (n_layers); MTP layers not included */
    int64_t num_attention_heads;     /* H: 64 / 128 (n_heads) */
    int64_t head_dim;                /* c = 512 (dense: hidden_size / heads unless given) */
    double rms_norm_eps;             /* 1e-6 (norm_eps) */
    double rope_theta;               /* 10000: window-only layers (dense: every layer) */
    int64_t max_position_embeddings; /* 1048576 (max_seq_len); 0 = not stated by the config */
    int64_t bos_token_id, eos_token_id, pad_token_id; /* 0, 1, 1 (pad -1 = none) */
    bool tie_word_embeddings;        /* false: head.weight is its own tensor */
    ts_dtype torch_dtype;            /* dtype of the unquantized weights in a checkpoint */

    /* dense baseline only */
    int64_t intermediate_size;       /* SwiGLU width */

    /* DeepSeek-V4 only (HF keys; inference spellings in config.c's key table) */
    int64_t num_key_value_heads;     /* 1: a single shared K=V head */
    int64_t qk_rope_head_dim;        /* r = 64 rotary dims at the end of each head (rope_head_dim) */
    int64_t q_lora_rank;             /* 1024 / 1536 */
    int64_t kv_lora_rank;            /* 0: JSON null, V4 has no KV low rank */
    int64_t o_groups;                /* g = 8 / 16 */
    int64_t o_lora_rank;             /* d_g = 1024 */
    int64_t n_routed_experts;        /* E = 256 / 384 */
    int64_t n_shared_experts;        /* 1 */
    int64_t num_experts_per_tok;     /* K = 6 (n_activated_experts) */
    int64_t moe_intermediate_size;   /* I = 2048 / 3072 (moe_inter_dim) */
    int64_t first_k_dense_replace;   /* 0: absent/null, every layer is MoE */
    ts_score_func scoring_func;      /* sqrtsoftplus (score_func) */
    bool norm_topk_prob;             /* true; topk_method is always "noaux_tc" */
    double routed_scaling_factor;    /* 1.5 / 2.5 (route_scale) */
    int64_t num_hash_layers;         /* 3: layers [0, n) route by tid2eid (n_hash_layers) */
    double swiglu_limit;             /* 10 */
    int64_t sliding_window;          /* n_win = 128 (window_size) */
    int32_t compress_ratios[TS_V4_MAX_COMPRESS_RATIOS]; /* L + n_mtp entries; the rest 0 */
    int64_t index_n_heads;           /* 64 */
    int64_t index_head_dim;          /* 128 */
    int64_t index_topk;              /* 512 / 1024 */
    int64_t hc_mult;                 /* 4 residual streams (1 = mHC off, spec §7.3) */
    int64_t hc_sinkhorn_iters;       /* 20 */
    double hc_eps;                   /* 1e-6 */
    int64_t num_nextn_predict_layers; /* MTP depth 1 (n_mtp_layers) */
    double compress_rope_theta;      /* 160000: CSA/HCA layers */
    ts_v4_rope_scaling rope_scaling;
    ts_v4_quantization quantization;
    ts_dtype expert_dtype;           /* routed experts in a checkpoint: TS_F4_E2M1 ("fp4"),
                                      * TS_F8_E4M3 ("fp8") or torch_dtype when no expert_dtype key */
} ts_v4_config;

const char *ts_model_kind_name(ts_model_kind kind); /* "deepseek_v4", "tessera_dense" */
const char *ts_score_func_name(ts_score_func f);     /* "sqrtsoftplus", ... */

/* Parses config.json text (HF or official-inference spelling). Precedence: when both spellings
 * of a key are present the HF key wins and the inference key is not read. A file without
 * model_type is accepted as an inference-format V4 config when it has `dim`. Keys the spec
 * allows to be absent take the spec's value (see config.c's key table: first_k_dense_replace 0,
 * kv_lora_rank null, num_key_value_heads 1, topk_method noaux_tc, norm_topk_prob true,
 * rms_norm_eps/hc_eps 1e-6, num_nextn_predict_layers 1, token ids 0/1/eos, untied, no YaRN, no
 * quantization); every other key is required. The result is validated. `source` names the
 * text in messages (a path, or NULL). */
ts_status ts_v4_config_parse(const char *json_text, const char *source, ts_v4_config *cfg,
                             char *err, size_t err_size);
/* Reads and parses a config.json file; a directory means DIR/config.json. */
ts_status ts_v4_config_load(const char *path, ts_v4_config *cfg, char *err, size_t err_size);
/* Checks every constraint (the same checks the parser applies after reading). */
ts_status ts_v4_config_validate(const ts_v4_config *cfg, char *err, size_t err_size);
/* Writes HF-spelled JSON with keys sorted (as transformers does), two-space indent, reals with
 * the fewest digits that read back to the same double. *out_json is malloc'd; free() it. */
ts_status ts_v4_config_to_json(const ts_v4_config *cfg, char **out_json, char *err, size_t err_size);
ts_status ts_v4_config_save(const ts_v4_config *cfg, const char *path, char *err, size_t err_size);
/* Field-by-field equality (the fields the kind uses, plus kind). */
bool ts_v4_config_equal(const ts_v4_config *a, const ts_v4_config *b);

/* Number of entries of compress_ratios that are used: L + MTP layers (0 for dense). */
int64_t ts_v4_n_layer_slots(const ts_v4_config *cfg);

/* ---------------------------------------------------------------- presets */

/* Names: "tiny" (spec §7.1 variant A), "small" (~100 M, every V4 feature on), "flash", "pro"
 * (published shapes), "dense-tiny", "dense-small" (the 4.3 M GPT comparison shape).
 * Returns TS_ERR_INVALID_ARG for an unknown name. The result always validates. */
ts_status ts_v4_preset(const char *name, ts_v4_config *cfg);
/* The i-th preset name, NULL past the end. */
const char *ts_v4_preset_name(int i);
/* A preset name, else a config.json path or checkpoint directory. */
ts_status ts_v4_config_resolve(const char *name_or_path, ts_v4_config *cfg, char *err, size_t err_size);

/* ---------------------------------------------------------------- tensor inventory */

/* Who updates a tensor in training (spec §5.3; [proposal] choices noted in accounting.c). */
typedef enum {
    TS_OPTIM_NONE = 0, /* not trained by gradient: router bias (balancing rule), tid2eid */
    TS_OPTIM_ADAMW,    /* embedding, head, norms, mHC base/scale, attn_sink, compressor ape */
    TS_OPTIM_MUON      /* every other matrix */
} ts_optim_group;

#define TS_MODEL_TENSOR_NAME_MAX 80

/* One tensor of a model as named in a Hugging Face checkpoint (spec §1.4, no "model." prefix).
 * Shapes are logical: a packed FP4 weight [out, in/2] of I8 bytes is listed as [out, in]
 * with dtype TS_F4_E2M1. Block scales are not listed as tensors: scale_block says that the
 * checkpoint has a sibling NAME-without-".weight" + ".scale" E8M0 tensor of shape
 * [ceil(out/b0), ceil(in/b1)]. */
typedef struct {
    char name[TS_MODEL_TENSOR_NAME_MAX];
    int ndim;
    int64_t shape[2];
    ts_dtype dtype;            /* as stored in a checkpoint of this config */
    int64_t scale_block[2];    /* {128,128} FP8, {1,32} FP4, {0,0} no scale tensor */
    int layer;                 /* -1 top level, 0..L-1 main layers, L+j MTP block j */
    int expert;                /* routed expert index, -1 otherwise */
    bool is_param;             /* counts as a parameter (everything but tid2eid) */
    ts_optim_group optim;
    int matmul_uses;           /* vector-matrix products per token in a forward pass (0: none) */
} ts_model_tensor;

int64_t ts_model_tensor_numel(const ts_model_tensor *t);

/* Calls visit for every tensor of the model, in checkpoint order: embed, main layers, MTP
 * blocks, final norm, head, hc_head. A visit returning non-TS_OK stops the walk and is
 * returned. The config must validate (else TS_ERR_INVALID_ARG). */
typedef ts_status (*ts_model_tensor_visit)(const ts_model_tensor *t, void *user);
ts_status ts_model_walk_tensors(const ts_v4_config *cfg, ts_model_tensor_visit visit, void *user);

/* ---------------------------------------------------------------- accounting */

/* Parameters (spec §1.1 notes). Scale tensors are not parameters; packed FP4 weights count
 * their logical elements; tid2eid (an integer table) is not a parameter; the router bias is.
 * Active per token: every non-routed-expert parameter plus num_experts_per_tok of the
 * n_routed_experts experts of each MoE layer. The whole embedding and head count as active
 * (the convention behind the published 13 B / 49 B), although a token reads one embedding
 * row. The MTP block shares embed/head, so "without MTP" removes only the mtp.* tensors. */
typedef struct {
    int64_t total, active;                         /* including MTP */
    int64_t total_without_mtp, active_without_mtp;
    int64_t embedding;                             /* embed.weight */
    int64_t routed_experts;                        /* all routed experts, MTP included */
    int64_t n_tensors;                             /* tensors walked (scales excluded) */
    int64_t matmul_active, matmul_active_without_mtp; /* active GEMM weights x uses per token */
} ts_model_param_counts;
ts_status ts_model_count_params(const ts_v4_config *cfg, ts_model_param_counts *out);

/* FLOPs per token for a token that sees `context` positions (itself included), i.e. the last
 * token of a context-long sequence:
 *   forward = 2 x (active GEMM weights x uses, LM head included and used again by each MTP block)
 *           + sum over attention layers of 4 x H x c x entries
 *           + per CSA layer 2 x index_n_heads x index_head_dim x floor(context / 4)  (indexer)
 *   entries = min(sliding_window, context) + (CSA: min(index_topk, floor(context/4)),
 *             HCA: floor(context/ratio), window-only: 0);  dense: entries = context.
 *   training = 3 x forward including MTP (backward ~ 2 x forward).
 * Elementwise work (norms, mHC mixing, Sinkhorn, softmax, compressor pooling) is left out. */
typedef struct {
    int64_t context;
    int64_t forward;               /* main model only: what inference costs */
    int64_t forward_with_mtp;
    int64_t attention;             /* the attention + indexer part of forward (main model) */
    int64_t training;              /* 3 x forward_with_mtp */
} ts_model_flops;
ts_status ts_model_flops_per_token(const ts_v4_config *cfg, int64_t context, ts_model_flops *out);
/* The training FLOPs of a token averaged over the positions 1..seq of a trained sequence (the
 * basis of a training run's MFU: tokens/s x this / the machine's peak). */
ts_status ts_model_training_flops_per_token(const ts_v4_config *cfg, int64_t seq, double *out);

/* KV cache of one sequence of `context` tokens over the main layers (MTP excluded), at the
 * spec §4.4 precision: each main-KV entry (window or compressed) is its c - r non-rope dims in
 * FP8 E4M3 + one E8M0 scale per 64 of them + the r rope dims in BF16 (583 bytes for c = 512);
 * each indexer key is FP4 E2M1 + one E8M0 scale per 32 (68 bytes for 128 dims). Window ring:
 * min(window, context) entries per layer. Compressed: floor(context/ratio) entries. State: the
 * FP32 compressor state of the incomplete block ([coff*m, coff*c] kv + score, coff = 2 for CSA,
 * 1 for HCA; the indexer's compressor likewise) - fixed per sequence. Dense: K and V in BF16 for
 * every position (the RPT's BF16 baseline). */
typedef struct {
    int64_t context;
    int64_t window_bytes, compressed_bytes, indexer_bytes, state_bytes, total_bytes;
    double bytes_per_token;        /* total_bytes / context */
} ts_model_kv_cache;
ts_status ts_model_kv_cache_bytes(const ts_v4_config *cfg, int64_t context, ts_model_kv_cache *out);

/* Training memory for one step of batch x seq tokens, FP32 everywhere (spec §4.6):
 * weights 4 B/param (+ tid2eid as int64), gradients 4 B per trained param, optimizer states
 * 4 B (Muon momentum) or 8 B (AdamW m and v) per param as §5.3 assigns, and an activation
 * estimate: what backward keeps per token without recomputation (layer inputs and mHC streams,
 * Sinkhorn steps, q/kv before and after norm, attention probabilities materialized for the
 * entries of the last token, per-token compressor/indexer projections, router logits, the
 * K + shared expert hidden states, FP32 logits and their gradient for every head). An upper
 * estimate; the memory planner reports the real peak. */
typedef struct {
    int64_t batch, seq;
    int64_t weight_bytes, grad_bytes, optimizer_bytes, activation_bytes, total_bytes;
} ts_model_train_memory;
ts_status ts_model_train_memory_estimate(const ts_v4_config *cfg, int64_t batch, int64_t seq,
                                         ts_model_train_memory *out);

/* ---------------------------------------------------------------- initial checkpoint (init.c) */

/* The config an init checkpoint of cfg is written with: cfg with torch_dtype = expert_dtype =
 * storage (TS_F32 or TS_BF16, else TS_ERR_UNSUPPORTED) and FP8 quantization off. */
ts_status ts_model_init_config(const ts_v4_config *cfg, ts_dtype storage, ts_v4_config *out, char *err,
                               size_t err_size);
/* Writes a freshly initialised checkpoint of cfg into dir (created if missing): every tensor of
 * ts_model_walk_tensors under its Hugging Face name, values a pure function of (seed, tensor
 * name) - the scheme is documented at the top of src/model/init.c (matrices N(0, 0.02^2),
 * residual output projections N(0, 0.02^2/(2L)), norms 1, mHC per spec §2.3.5, sink/ape/router
 * bias 0, tid2eid a splitmix64 hash with K distinct experts per row) - as DIR/model.safetensors
 * (sharded with model.safetensors.index.json above 4 GiB of data), then DIR/config.json (the
 * config of ts_model_init_config). Each file is written atomically. A non-empty dir is refused
 * with TS_ERR_STATE unless force; an unusable dir is TS_ERR_IO. err gets one line. No
 * tokenizer files are written. */
ts_status ts_model_init_write(const ts_v4_config *cfg, uint64_t seed, ts_dtype storage, const char *dir, bool force,
                              char *err, size_t err_size);
/* Same with an explicit shard size in bytes of tensor data (0 = the 4 GiB default). */
ts_status ts_model_init_write_sharded(const ts_v4_config *cfg, uint64_t seed, ts_dtype storage, const char *dir,
                                      bool force, uint64_t max_shard_bytes, char *err, size_t err_size);

/* ---------------------------------------------------------------- weights in memory (weights.c)
 *
 * Every tensor of ts_model_walk_tensors held in host memory, in walk order, in one compute dtype
 * (TS_F32 for training and inference, TS_F64 for reference tests); the hash-routing tables
 * (tid2eid) are TS_I32. The graphs of ts_model_graph_build bind their parameter leaves to these
 * arrays, so a model loaded once serves every graph (training, evaluation, decoding). */
typedef struct ts_model_weights ts_model_weights;

/* Zero-filled weights for cfg (which must validate). dt: TS_F32 or TS_F64. */
ts_status ts_model_weights_new(const ts_v4_config *cfg, ts_dtype dt, ts_model_weights **out, char *err,
                               size_t err_size);
void ts_model_weights_free(ts_model_weights *w);
const ts_v4_config *ts_model_weights_config(const ts_model_weights *w);
ts_dtype ts_model_weights_dtype(const ts_model_weights *w);
int ts_model_weights_count(const ts_model_weights *w);
const ts_model_tensor *ts_model_weights_info(const ts_model_weights *w, int i);
void *ts_model_weights_data(const ts_model_weights *w, int i);
/* The dtype of tensor i in memory: the compute dtype, TS_I32 for tid2eid, or the narrow dtype
 * of ts_model_weights_narrow_matmuls. */
ts_dtype ts_model_weights_mem_dtype(const ts_model_weights *w, int i);
/* Index of the tensor with this official name (spec §1.4, no "model." prefix), or -1. */
int ts_model_weights_find(const ts_model_weights *w, const char *name);
/* Fills every tensor with init.c's scheme for `seed` (the values ts_model_init_write stores). */
ts_status ts_model_weights_init(ts_model_weights *w, uint64_t seed, char *err, size_t err_size);

/* Loads a checkpoint (a directory with config.json and model.safetensors or a sharded index):
 * reads and validates the config, then every tensor, converted exactly on load to dt (FP8 with
 * block scales and packed MXFP4 experts included). Names accepted for each tensor: the official
 * one (spec §1.4), the same under "model.", and the hybrid names transformers' save_pretrained
 * writes (model.embed_tokens.weight, model.hc_head.hc_fn/base/scale, attn.norm.weight for
 * attn.kv_norm.weight; docs/v4-reference-notes.md §4). A missing tensor, a wrong shape or dtype,
 * or a truncated file is an error naming the tensor; nothing is returned then. Tensors of the
 * checkpoint the model does not use (e.g. mtp.* when num_nextn_predict_layers is 0) are ignored. */
ts_status ts_model_load(const char *dir, ts_dtype dt, ts_model_weights **out, char *err, size_t err_size);
/* Inference on narrow matmul weights: converts in place (rounding to nearest even, once) every
 * weight that mixed precision multiplies in dt (ts_model_graph_options.compute_dtype below:
 * every linear of the dense model, the LM head and so the tied embedding included; V4's
 * attention projections, experts and MTP projections - not what spec §4.5 keeps in FP32). The
 * graphs built afterwards (without compute_dtype) bind those tensors in dt and multiply them
 * with f32 activations into f32 (the GEMM widens them as it reads, accumulating in f32);
 * embedding rows of a narrow table are widened; norms, activations, caches and logits stay f32.
 * Halves the bytes a decode step streams. dt: TS_BF16 (TS_F32: nothing to do); the weights
 * must be f32. For inference: the trainer and optimizers need all-f32 weights. */
ts_status ts_model_weights_narrow_matmuls(ts_model_weights *w, ts_dtype dt, char *err, size_t err_size);
/* The matmul weights dtype named by an inference command's --dtype: "f32" or "bf16" (false for
 * any other name, *out unchanged). */
bool ts_model_matmul_dtype_from_name(const char *name, ts_dtype *out);
/* What the inference commands load: ts_model_load in f32, then ts_model_weights_narrow_matmuls
 * to matmul_dtype (TS_F32: none). Nothing is returned on failure. */
ts_status ts_model_load_for_inference(const char *dir, ts_dtype matmul_dtype, ts_model_weights **out, char *err,
                                      size_t err_size);
/* Saves config.json + model.safetensors under the official names (what ts_model_load and
 * transformers' DeepseekV4ForCausalLM.from_pretrained read), float tensors in `storage` (TS_F32 or
 * TS_BF16; the config's torch_dtype says which), tid2eid as I64, each file atomically. A
 * non-empty dir is refused (TS_ERR_STATE) unless force. */
ts_status ts_model_save(const ts_model_weights *w, const char *dir, ts_dtype storage, bool force, char *err,
                        size_t err_size);

/* The weights as a safetensors tensor list under their official names, pointing at the
 * weights' memory (tid2eid converted to I64 in buffers the list owns): what a training
 * checkpoint stores. Valid until the weights change or ts_model_st_list_free. */
typedef struct {
    ts_st_write_tensor *tensors;
    size_t n;
    void **owned;
    size_t n_owned;
} ts_model_st_list;
ts_status ts_model_weights_st_list(const ts_model_weights *w, ts_model_st_list *out);
void ts_model_st_list_free(ts_model_st_list *l);

/* ---------------------------------------------------------------- the model as a graph (model_graph.c)
 *
 * ts_model_graph_build records the whole forward pass of a V4 (spec §2) or dense model for a
 * fixed batch shape [B, T] on a new graph, with the loss and, for training, the backward pass;
 * parameter leaves are bound to the weights' arrays. Life: build -> alloc (plans memory, fills
 * the constant tables: RoPE angles, causal block masks, HCA index lists) -> per batch: set the
 * inputs, compute, read logits / loss / gradients. */
typedef struct {
    int64_t batch, seq;        /* B, T */
    bool loss;                 /* targets input + mean cross-entropy over targets >= 0 */
    bool backward;             /* gradients of every trained parameter (needs loss) */
    bool mtp;                  /* MTP block(s) (V4 with num_nextn_predict_layers > 0): logits and,
                                * with loss, the MTP cross-entropy times the mtp_weight input */
    double balance_alpha;      /* > 0: add the sequence-wise balance loss of every learned-routing
                                * MoE layer (spec §5.1) times alpha to the loss */
    bool dense_csa;            /* CSA layers attend to every completed block (no indexer) */
    bool indexer_loss;         /* add the lightning indexer's KL loss (spec §5.1) on detached inputs:
                                * against the dense attention with dense_csa (warm-up stage), else
                                * restricted to its own picks (sparse stage) */
    bool keep_logits;          /* logits stay readable after compute (always true without loss) */
    bool recompute;            /* with backward: activation recomputation, a checkpoint
                                * (ts_set_checkpoint) at every layer's input and the last output */
    ts_dtype compute_dtype;    /* TS_F32 (0, the default): as the weights; TS_BF16: mixed precision
                                * (graph autocast, graph.h) - weight matmuls multiply bf16 copies of
                                * their f32 operands into f32: every linear of the dense model (LM
                                * head included); V4's attention projections, experts and MTP
                                * projections, but not what spec §4.5 computes in FP32 (mHC
                                * coefficients, compressors and indexer, router, LM head). Norms,
                                * softmax, attention, losses and gradients stay f32, weights stay
                                * f32 masters. Needs f32 weights. */
} ts_model_graph_options;

/* One built graph. Inputs are i32 leaves the caller writes before each compute. */
typedef struct {
    ts_graph *graph;
    const ts_model_weights *weights;
    ts_model_graph_options opts;
    ts_tensor *ids;            /* [B, T] token ids */
    ts_tensor *targets;        /* [B, T] next-token targets, < 0 ignored (with loss) */
    ts_tensor *mtp_ids;        /* [B, T] the token at t+1 fed to the MTP block (with mtp) */
    ts_tensor *mtp_targets;    /* [B, T] the token at t+2, < 0 ignored (with mtp and loss) */
    ts_tensor *doc_start;      /* [B, T] document starts (ts_model_graph_set_doc_start), T > 1 only */
    ts_tensor *mtp_weight;     /* [1] input in the weights' dtype: the MTP loss weight (spec §5.1:
                                * 0.3, 0.1 once the LR decays); 0.3 after alloc */
    ts_tensor *logits;         /* [B, T, V] */
    ts_tensor *mtp_logits;     /* [B, T, V] or NULL */
    ts_tensor *loss;           /* [1]: lm_loss + mtp_weight * mtp_loss + balance_loss + indexer_loss */
    ts_tensor *lm_loss, *mtp_loss;
    ts_tensor *balance_loss;   /* [1] alpha x sum over layers of the mean over sequences, or NULL */
    ts_tensor *indexer_loss;   /* [1] sum over CSA layers of the mean KL, or NULL */
    ts_tensor **params;        /* [ts_model_weights_count]: the leaf of each weight (NULL if unused) */
    ts_tensor **route_idx;     /* [layer slots]: the experts chosen per token [B*T, K] (i32/i64), MoE layers */
    ts_tensor **route_scores;  /* [layer slots]: router affinities s [B*T, E] (kept with balance_alpha) */
    ts_tensor **index_idx;     /* [layer slots]: the CSA indexer's picks [B, T, k] or NULL */
    void *internal;            /* constant tables to fill at alloc */
} ts_model_graph;

ts_status ts_model_graph_build(const ts_model_weights *w, const ts_model_graph_options *opts,
                               ts_model_graph **out, char *err, size_t err_size);
ts_status ts_model_graph_alloc(ts_model_graph *mg, ts_backend *be, ts_plan_stats *stats, char *err,
                               size_t err_size);
void ts_model_graph_free(ts_model_graph *mg);
/* Document masking (the data loader's packing): doc_start [B*T] (data.h's ts_batch.doc_start)
 * restricts every query to the window keys of its own document (the attention's key_start) and
 * to CSA / HCA blocks that lie wholly in it (a document loses the blocks straddling its start);
 * NULL restores plain causality (the state after alloc). Kept until the next call. */
ts_status ts_model_graph_set_doc_start(ts_model_graph *mg, const int32_t *doc_start);
/* Gradient node of weight i (NULL when it has none: buffers, unused, no backward). For a routed
 * expert it is the stacked [E, rows, cols] gradient of the layer's experts of that kind. */
ts_tensor *ts_model_graph_grad(const ts_model_graph *mg, int i);
/* Host address of weight i's own gradient after compute (inside the stacked one for experts),
 * in the weights' dtype; NULL as above or when the backend's memory is not host-visible. */
void *ts_model_graph_grad_data(const ts_model_graph *mg, int i);

/* ---------------------------------------------------------------- greedy completion (complete.c)
 *
 * Greedy continuation of up to `batch` prompts at once (the synthetic tasks' answers, run-log
 * samples) on the incremental decoder below, one slot per prompt: the rows prefill and generate
 * in shared steps. */
typedef struct ts_model_completer ts_model_completer;

ts_status ts_model_completer_new(const ts_model_weights *w, ts_backend *be, int64_t batch, int64_t max_len,
                                 ts_model_completer **out, char *err, size_t err_size);
void ts_model_completer_free(ts_model_completer *c);
int64_t ts_model_completer_batch(const ts_model_completer *c);
int64_t ts_model_completer_max_len(const ts_model_completer *c);
/* Continues prompts[0..n) (n <= batch; 1 <= prompt_lens[r] < max_len) by up to max_new tokens
 * each, stopping a row at stop_id (not written) or at max_len; outs[r] (room for max_new ids)
 * receives the new tokens and out_lens[r] their number. pad_id is unused (nothing is padded). */
ts_status ts_model_complete(ts_model_completer *c, int n, const int32_t *const *prompts, const int64_t *prompt_lens,
                            int64_t max_new, int32_t stop_id, int32_t pad_id, int32_t **outs, int64_t *out_lens);

/* ---------------------------------------------------------------- incremental decoding (decode.c)
 *
 * DeepSeek-V4 token by token against per-sequence caches (spec §2.13): a window ring of keys,
 * the completed CSA/HCA entries, the compressors' pending blocks and the indexer's keys. Up to
 * `slots` sequences step together (one pass over just the stepping slots); each has its own position.
 * Decoding a sequence gives the logits of the full forward pass at every position. Both keep
 * their caches in a pool of blocks shared by all slots: a slot takes blocks as it grows, gives
 * them back on reset / truncate, and shares them with the slots forked from it. Dense
 * (decode_dense.c): the KV cache, blocks of TS_MODEL_DECODER_BLOCK positions. V4 (spec §2.13):
 * the completed compressed entries and indexer keys, blocks of the least common multiple of the
 * compression ratios (128 positions for ratios 4 and 128); besides, each slot owns a fixed
 * "state cache" (window ring, the compressors' pending projections, the MTP block's state).
 *
 * Statuses: TS_ERR_INVALID_ARG for NULLs, slots out of range, repeated slots, empty calls;
 * TS_ERR_RANGE past max_len; TS_ERR_OOM at creation (memory) and, with a shared pool, from
 * step / extend / batch when the pool has too few free blocks for the new tokens: then nothing was
 * appended anywhere (every slot's state as before the call), and resetting, truncating or
 * finishing sequences makes room. */
typedef struct ts_model_decoder ts_model_decoder;

#define TS_MODEL_DECODER_BLOCK 16 /* positions per block of the dense pool */

/* max_len: positions per sequence. TS_ERR_UNSUPPORTED for a model kind without an
 * implementation (src/model/decoder_impl.h). The shared pool lets every slot reach max_len. */
ts_status ts_model_decoder_new(const ts_model_weights *w, ts_backend *be, int slots, int64_t max_len,
                               ts_model_decoder **out, char *err, size_t err_size);
/* The same with a shared pool of pool_positions positions (rounded up to whole blocks; 0:
 * every slot can reach max_len at once), however many slots: the slots then only fill it
 * together as far as it goes. TS_ERR_INVALID_ARG: pool_positions < 0, or more positions than an
 * i32 index reaches. */
ts_status ts_model_decoder_new_pooled(const ts_model_weights *w, ts_backend *be, int slots, int64_t max_len,
                                      int64_t pool_positions, ts_model_decoder **out, char *err, size_t err_size);
void ts_model_decoder_free(ts_model_decoder *d);
int ts_model_decoder_slots(const ts_model_decoder *d);
int64_t ts_model_decoder_max_len(const ts_model_decoder *d);
/* Empties a slot (a new sequence starts at position 0). */
void ts_model_decoder_reset(ts_model_decoder *d, int slot);
int64_t ts_model_decoder_length(const ts_model_decoder *d, int slot);
/* Appends ids[i] to the sequence in slots[i] (n distinct slots) and writes the logits of the
 * next token after it into logits[i * V .. (i+1) * V). TS_ERR_RANGE when a slot is full;
 * TS_ERR_OOM when the shared pool is (nothing appended). */
ts_status ts_model_decoder_step(ts_model_decoder *d, int n, const int *slots, const int32_t *ids, float *logits);
/* Appends ids[0..n) to the sequence in one slot - a prompt chunk (prefill) or a draft to verify -
 * in as few forward passes as the model's implementation allows, and writes the logits after
 * each of the last logit_rows (1..n) tokens into logits[r * V .. (r+1) * V). TS_ERR_RANGE when
 * the slot would pass max_len, TS_ERR_OOM when the shared pool has no room for the n tokens
 * (nothing appended either way). */
ts_status ts_model_decoder_extend(ts_model_decoder *d, int slot, const int32_t *ids, int64_t n, float *logits,
                                  int64_t logit_rows);
/* One sequence of a batch: n >= 1 tokens ids[0..n) to append to slot `slot`, and the number of
 * its last tokens (0..n) whose logits are wanted. */
typedef struct {
    int slot;
    const int32_t *ids;
    int64_t n;
    int64_t logit_rows;
} ts_model_decoder_seq;
/* Appends seqs[i].ids to each of n_seqs distinct slots - any mix of prompt chunks, single decode
 * tokens and drafts - in as few forward passes as the implementation allows (dense: one for up
 * to a token per slot plus 64, more tokens in several; V4: one per distinct chunk length, the
 * sequences' chunks of 64, 32, .., 1 tokens (padded up to the next power of two when that costs
 * at most a quarter) that share a length going together, the single tokens all in one), and
 * writes the logits after the last logit_rows tokens of each sequence,
 * sequence after sequence, into logits (rows of V; NULL when no sequence wants any). Step and
 * extend are this call with one token per slot or one sequence. TS_ERR_INVALID_ARG: repeated
 * or out-of-range slots, n < 1, logit_rows outside 0..n; TS_ERR_RANGE when a slot would pass
 * max_len, TS_ERR_OOM when the shared pool has no room (nothing appended anywhere either way). */
ts_status ts_model_decoder_batch(ts_model_decoder *d, int n_seqs, const ts_model_decoder_seq *seqs, float *logits);
/* Forward passes the decoder has computed. */
int64_t ts_model_decoder_passes(const ts_model_decoder *d);
/* Shortens a slot's sequence to its first len tokens (rejecting a speculative draft, reusing a
 * cached prefix). len = 0 always works (a reset); otherwise TS_ERR_UNSUPPORTED, slot unchanged,
 * when the model's state cannot rewind that far. */
ts_status ts_model_decoder_truncate(ts_model_decoder *d, int slot, int64_t len);
/* Slot dst drops its sequence and holds src's first len tokens instead, as if they had been
 * fed to it (prefix reuse across sequences; src keeps its own). Dense: dst shares src's blocks
 * (a K/V row depends only on the tokens up to it, so sharing is exact; a partly filled shared
 * block is copied when either slot first writes into it), no memory is taken. V4: the same for
 * the pool's compressed entries, and dst gets a copy of src's fixed state rewound to len, within
 * the bound truncate has on src (about 16 tokens behind the furthest length it reached: the
 * rings hold only the last positions): else TS_ERR_UNSUPPORTED, dst unchanged. len = 0
 * resets dst. TS_ERR_INVALID_ARG: slots out of range or equal; TS_ERR_RANGE: len > length(src). */
ts_status ts_model_decoder_fork(ts_model_decoder *d, int dst, int src, int64_t len);
/* Host memory held by all slots' caches, in bytes. */
size_t ts_model_decoder_state_bytes(const ts_model_decoder *d);

/* The cache memory as blocks. Shared pool (dense, V4): blocks of block_positions positions, free
 * ones held by no slot, block_bytes each, plus slot_bytes of fixed state per slot (V4's state
 * cache; dense: 0). Per-slot memory (a family without a pool): one block of max_len positions
 * per slot, free while its slot holds no token. state_bytes = slots x slot_bytes + blocks x
 * block_bytes. rewind: how many tokens truncate and fork can always take back behind the
 * furthest length a slot reached since its reset (V4: about 16), -1 when any prefix can be
 * reached (dense): a caller that wants older prefixes of a bounded model keeps copies of the
 * sequence (fork at its current length) while it is there. */
typedef struct {
    int64_t block_positions, blocks, free_blocks;
    size_t block_bytes, slot_bytes;
    bool shared;    /* blocks move between slots (a shared pool) */
    int64_t rewind; /* -1: unbounded */
} ts_model_decoder_pool;

void ts_model_decoder_pool_info(const ts_model_decoder *d, ts_model_decoder_pool *out);

/* The MTP block as a one-token draft (spec §2.12; speculative decoding). A slot's sequence
 * y_0..y_{len-1} is followed by next_id, the token chosen after it but not yet appended. The
 * MTP block at position q reads the main model's final streams there and y_{q+1}; this runs it
 * over every position it has not covered yet (lagging the sequence: it only sees tokens that
 * are final) - the last, len-1, with next_id - and writes its logits there, the draft's
 * distribution for the token after next_id, into logits[V]. Calling it again before appending
 * recomputes the last position. The block's cache follows truncate. The sequence may run at
 * most TS_MODEL_MTP_MAX_LAG tokens ahead of the block (TS_ERR_RANGE otherwise): feed a long
 * prompt in pieces with a call between them (ts_speculator_prefill does). TS_ERR_UNSUPPORTED:
 * no MTP block (dense models, num_nextn_predict_layers 0); TS_ERR_INVALID_ARG: an empty slot. */
#define TS_MODEL_MTP_MAX_LAG 64
ts_status ts_model_decoder_mtp(ts_model_decoder *d, int slot, int32_t next_id, float *logits);
/* Positions of the slot's sequence the MTP block has not covered yet (length - covered; 0
 * without an MTP block or for a bad slot): a caller keeps it below TS_MODEL_MTP_MAX_LAG. */
int64_t ts_model_decoder_mtp_lag(const ts_model_decoder *d, int slot);

/* ---------------------------------------------------------------- speculative decoding (speculative.c)
 *
 * One slot of a decoder at a time, the MTP block drafting one token that the main model checks
 * in the same pass as the token before it. A round starts after the token `next` was chosen
 * (sampled, recorded by the sampler) but not yet appended: the MTP block drafts d from its
 * distribution q (processed by the request's sampler like the target's), the main model takes
 * [next, d] in one extend with two rows of logits, and ts_sampler_verify accepts d against
 * the target's p after next - then the row after d gives one more token, two in all - or draws
 * the replacement from the residual and the slot drops d. The tokens keep the distribution of
 * plain sampling; greedy, they are plain greedy decoding's. Buffers are allocated once. */
typedef struct ts_speculator ts_speculator;

/* For decoder d of model w; TS_ERR_UNSUPPORTED (with a message) when w has no MTP block. */
ts_status ts_speculator_new(const ts_model_weights *w, ts_model_decoder *d, ts_speculator **out, char *err,
                            size_t err_size);
void ts_speculator_free(ts_speculator *sp);
/* Appends a prompt ids[0..n) to a slot in pieces the MTP block keeps up with and writes the
 * logits after its last token into logits[V]. */
ts_status ts_speculator_prefill(ts_speculator *sp, int slot, const int32_t *ids, int64_t n, float *logits);
/* One round after `next` (see above): out[0..*n_out) receives the tokens that follow next (1 or
 * 2, each recorded by the sampler); all but the last are appended, the last is the next
 * round's `next`. Near max_len (room for one token) a round is a plain step, and so is one
 * whose draft is not confident enough (ts_speculator_set_min_prob). */
ts_status ts_speculator_step(ts_speculator *sp, int slot, ts_sampler *smp, int32_t next, int32_t out[2], int *n_out);
/* Drafts only when the MTP block's most likely token has probability >= min_prob under its
 * plain softmax (0, the default: always): a round without a draft is a plain step, which costs
 * less than a two-token verification that will likely fail. The choice depends on the draft
 * alone, so the tokens keep their distribution. */
void ts_speculator_set_min_prob(ts_speculator *sp, float min_prob);
/* Drafts made and accepted so far. */
void ts_speculator_stats(const ts_speculator *sp, int64_t *drafted, int64_t *accepted);

#ifdef __cplusplus
}
#endif
#endif
