/* model_internal.h - internal declarations shared by the graph builders under src/model/ (not
 * part of the public API in include/tessera/). Each builder file owns one section below; add a
 * new section for a new file rather than editing another one. */
#ifndef TS_MODEL_INTERNAL_H
#define TS_MODEL_INTERNAL_H

#include "tessera/graph.h"
#include "tessera/model.h"
#include "tessera/io.h"

/* ================================================================ checkpoint files (init.c)
 * One writer for every model checkpoint: the tensors of ts_model_walk_tensors under their
 * official names, values supplied per tensor by `source` (init rules or in-memory weights). */

/* Writes the values of tensor t into data (room for t in dtype st: F32, F64, BF16, I64 or I32). */
typedef ts_status (*ts_model_tensor_source)(void *user, const ts_model_tensor *t, ts_st_dtype st, void *data,
                                            char *err, size_t err_size);
/* DIR/model.safetensors (or shards + index above max_shard_bytes; 0 = 4 GiB) and DIR/config.json
 * with the config of ts_model_init_config(cfg, storage); every file atomic. */
ts_status ts_model_write_checkpoint(const ts_v4_config *cfg, ts_dtype storage, const char *dir, bool force,
                                    uint64_t max_shard_bytes, ts_model_tensor_source source, void *user, char *err,
                                    size_t err_size);
/* The init scheme's values for one tensor (documented at the top of init.c). */
ts_status ts_model_init_tensor(const ts_v4_config *cfg, uint64_t seed, const ts_model_tensor *t, ts_st_dtype st,
                               void *data, char *err, size_t err_size);

/* ================================================================ weights (weights.c)
 * Routed experts are stacked per layer and kind: tensor i of expert e lives at
 * data(stack_base(i)) + e·numel, so one [E, rows, cols] leaf covers all of them. */
int ts_model_weights_stack_base(const ts_model_weights *w, int i); /* -1 when not a routed expert */
/* Sets cast[i] (cast: [ts_model_weights_count]) for every weight i that a graph under autocast
 * to dt multiplies in dt (model_graph.c: its leaf, or a view of it, feeds a cast to dt). */
ts_status ts_model_autocast_weights(const ts_model_weights *w, ts_dtype dt, bool *cast, char *err, size_t err_size);
/* The names official tensor `name` may have in a checkpoint, most likely first (model.h,
 * ts_model_load); returns how many were written. */
#define TS_MODEL_NAME_CANDIDATES 8
#define TS_MODEL_NAME_CANDIDATE_MAX (TS_MODEL_TENSOR_NAME_MAX + 16)
int ts_model_name_candidates(const char *name, char out[][TS_MODEL_NAME_CANDIDATE_MAX]);

/* ================================================================ graph building (model_graph.c)
 * The state shared by the model builders: model_graph.c builds V4 and owns the leaves;
 * dense_graph.c builds the dense baseline with the same helpers. */
typedef enum { TS_MB_CONST_ANGLES, TS_MB_CONST_BLOCK_MASK, TS_MB_CONST_BLOCK_IDX } ts_mb_const_kind;

/* A constant leaf and how ts_model_graph_alloc fills it. */
typedef struct {
    ts_tensor *t;
    ts_mb_const_kind kind;
    double base;   /* angles: RoPE base */
    bool yarn;     /* angles: the config's YaRN on top */
    int64_t step;  /* angles: position step; block masks / index lists: the ratio m */
} ts_mb_const;

typedef struct {
    ts_mb_const *v;
    int n, cap;
} ts_mb_const_list;

typedef struct ts_decode_build ts_decode_build; /* decode.c: the caches of an incremental decoder */

typedef struct {
    ts_graph *g;
    const ts_model_weights *w;
    const ts_v4_config *c;
    ts_model_graph *mg;
    ts_mb_const_list *consts;
    ts_dtype dt;
    int64_t B, T;
    float eps;
    ts_tensor *ids_flat; /* [B*T] */
    ts_decode_build *dec; /* non-NULL: a decoding pass of T new tokens per row over cached state */
} ts_model_builder;

/* ts_model_graph_build with a decoder's caches (dec non-NULL: [batch, seq] = [rows, new tokens]). */
ts_status ts_model_graph_build_with(const ts_model_weights *w, const ts_model_graph_options *opts, ts_decode_build *dec,
                                    ts_model_graph **out, char *err, size_t err_size);
/* ts_model_graph_alloc with planner options (a decoder's pass graphs share one arena). */
ts_status ts_model_graph_alloc_with(ts_model_graph *mg, ts_backend *be, const ts_plan_options *opts,
                                    ts_plan_stats *stats, char *err, size_t err_size);
/* decode.c's hooks into the V4 attention builder: the RoPE angles of each new token's position
 * ([B, T, 1, r/2]: rope_theta, or the compressed layers' base + YaRN), and what layer `layer`'s
 * attention sees besides the new tokens' own keys/values *kv [B, T, 1, c] (read back after
 * compute): p->extra, p->extra_idx - the window ring of earlier keys and the completed
 * compressed entries, with each query's index list (the indexer's picks on CSA layers) - and the
 * entries the pass's tokens complete, either among the extras or (one-token passes) in front of
 * the token's key in *kv, hidden by p->key_start unless used. */
ts_tensor *ts_decode_token_angles(ts_model_builder *b, bool compressed_layer);
/* How many of each row's last tokens get logits (1..T): the graph's logits are [B, R, V]. */
int64_t ts_decode_logit_rows(const ts_model_builder *b);
void ts_decode_cache_entries(ts_model_builder *b, int layer, const char *prefix, ts_tensor *x, ts_tensor *cq,
                             ts_tensor **kv, ts_attention_params *p);
/* Whether the pass is the MTP block's (block 0 alone, T positions per row: ids = the token after
 * each, logits of the last R rows); *X then receives its host-written input, the main model's
 * final streams at those positions [B, T, hc_mult, d]. */
bool ts_decode_mtp_input(ts_model_builder *b, ts_tensor **X);
/* A main pass's final streams X [B, T, hc_mult, d] (before hc_head), kept for the MTP block. */
void ts_decode_keep_streams(ts_model_builder *b, ts_tensor *X);

/* The leaf of weight prefix+suffix (official name), created on first use, bound to the weights,
 * a parameter when the graph has a backward pass and the tensor is trained. Routed experts give
 * the stacked [E, rows, cols] leaf. Missing name: error recorded, NULL. */
ts_tensor *ts_mb_param(ts_model_builder *b, const char *prefix, const char *suffix);
/* A layer boundary: a recomputation checkpoint when the options ask for recompute (training). */
void ts_mb_checkpoint(ts_model_builder *b, ts_tensor *x);
/* The embedding rows of ids (embed.weight), in the compute dtype also when the table is
 * narrow (tied to a head whose weights are, ts_model_weights_narrow_matmuls). */
ts_tensor *ts_mb_embed(ts_model_builder *b, ts_tensor *ids);
/* x · Wᵀ for weight prefix+name. */
ts_tensor *ts_mb_linear(ts_model_builder *b, ts_tensor *x, const char *prefix, const char *name);
/* RoPE angles [n_pos, r/2] at positions p·step, r = qk_rope_head_dim (V4) or head_dim (dense):
 * rope_theta, or for compressed layers compress_rope_theta with the config's YaRN. Dense models:
 * pass false. */
ts_tensor *ts_mb_angles(ts_model_builder *b, bool compressed_layer, int64_t n_pos, int64_t step);
/* An i32 input [B, T]. */
ts_tensor *ts_mb_input_ids(ts_model_builder *b, const char *name);
/* dense_graph.c: the dense baseline's logits [B, T, V] from b->mg->ids. */
ts_tensor *ts_dense_build(ts_model_builder *b);

/* ================================================================ dense decoding (decode_dense.c)
 * A dense decoding graph (T >= 1 new tokens per row over a KV cache): decode_dense.c passes its
 * own state as ts_model_graph_build_with's dec, which model_graph.c only forwards, and
 * dense_graph.c calls these hooks. Angles: each row's RoPE angles [B, T, 1, head_dim/2].
 * Attention: q, k, v [B, T, H, hd] of the new tokens (after RoPE) and the plain forward's
 * params -> [B, T, H, hd], each token attending to the cache entries the decoder lists for it
 * and causally to the new tokens of its own sequence; k and v are kept for the decoder to file
 * into the cache after compute.
 * Logit rows: the final hidden states x [B*T, d] -> [B*R, d], R in 1..T, those of the tokens whose
 * logits the pass keeps (the graph's logits are [B, R, V]); returns R. */
ts_tensor *ts_dense_decode_angles(ts_model_builder *b);
ts_tensor *ts_dense_decode_attention(ts_model_builder *b, int layer, ts_tensor *q, ts_tensor *k, ts_tensor *v,
                                     const ts_attention_params *p);
int64_t ts_dense_decode_logit_rows(ts_model_builder *b, ts_tensor **x);

/* ================================================================ mHC (mhc.c), spec §2.3
 *
 * Graph builders for Manifold-Constrained Hyper-Connections. They only record nodes (existing
 * graph ops throughout), so ts_graph_backward derives the whole backward of spec §3 items 2-6,
 * Sinkhorn included (every iteration is unrolled).
 *
 * Layout: the residual state X is [T, n, d] or [B, T, n, d] (any float dtype; every other input
 * has X's dtype): per token, n = hc_mult streams of width d, stream-major, so that flattening a
 * token gives the spec's x = vec(X_t) (stream 0's d values, then stream 1's, ...). Per-token
 * outputs keep X's leading dims ("..." below = [T] or [B, T]).
 *
 * Constants (eps_hc, norm_eps) enter the graph as float op parameters / f32-valued fills, so in
 * an f64 graph 1e-6 acts as (double)1e-6f; references should use the same value.
 *
 * Errors: like every graph constructor, a NULL input gives NULL without a new error; a bad shape,
 * dtype or count records the first error in the graph and gives NULL. */

/* hc_pre (spec §2.3.1): coefficients and the collapsed sub-layer input.
 *   fn    [(2+n)*n, n*d]   projection (rows: a (n) | p (n) | m (n*n, row-major))
 *   base  [(2+n)*n]        static biases b_a | b_p | b_m
 *   scale [3]              s_a, s_p, s_m
 * raw = (x·fnᵀ)/RMS(x), RMS(x) = sqrt(mean(x²) + norm_eps) over the n*d values of a token
 * (computed as rms_norm(x)·fnᵀ: the same value, one fused op with a fused backward);
 * pre = σ(s_a·a + b_a) + eps_hc; post = 2σ(s_p·p + b_p);
 * comb = Sinkhorn(s_m·m + b_m as [n, n], row i = source stream), sinkhorn_iters >= 1 total
 * iterations with the spec's step-6 ordering and +eps_hc placements;
 * u = Σ_i pre_i X[i].
 * Outputs (each pointer may be NULL): u [..., d], post [..., n], comb [..., n, n], pre [..., n].
 * Returns u (NULL on error; then every requested output is NULL too). */
ts_tensor *ts_mhc_pre(ts_graph *g, ts_tensor *X, ts_tensor *fn, ts_tensor *base, ts_tensor *scale,
                      int64_t n, float norm_eps, float eps_hc, int sinkhorn_iters,
                      ts_tensor **u, ts_tensor **post, ts_tensor **comb, ts_tensor **pre);

/* hc_post (spec §2.3.3): X'[j] = post_j·v + Σ_i comb_ij·X[i] (= combᵀ·X + post·v per token).
 * X [..., n, d], v [..., d], post [..., n], comb [..., n, n] -> X' [..., n, d]. */
ts_tensor *ts_mhc_post(ts_graph *g, ts_tensor *X, ts_tensor *v, ts_tensor *post, ts_tensor *comb);

/* hc_head (spec §2.3.4): w = σ(scale·(x·fnᵀ)/RMS(x) + base) + eps_hc; y = Σ_i w_i X[i].
 * X [..., n, d], fn [n, n*d], base [n], scale [1] -> y [..., d]. w_out (may be NULL): [..., n]. */
ts_tensor *ts_mhc_head(ts_graph *g, ts_tensor *X, ts_tensor *fn, ts_tensor *base, ts_tensor *scale,
                       float norm_eps, float eps_hc, ts_tensor **w_out);

/* ================================================================ KV compressor, indexer
 * (compressor.c), spec §2.4, §2.7-2.9, §3 items 9-10
 *
 * Graph builders for V4's compressed KV entries (HCA: non-overlapping blocks of m'; CSA: blocks of
 * m = 4 overlapping the previous block through the "b" series), the lightning indexer and the
 * host-side helpers that fill the constant leaves those graphs read (RoPE angle tables, the causal
 * block mask, the HCA visible-block index list). Builders only record nodes; autodiff gives the
 * backward of §3 item 9. x is one sequence [T, d] or a batch [B, T, d]; outputs then gain the same
 * leading B (written [(B,) ...] below).
 *
 * Only COMPLETED blocks produce entries: n_blocks = floor(T / m) >= 1 is required (a graph with
 * T < m has no compressed entry; the caller leaves the extras out), trailing tokens are ignored.
 * Entry i is [C^comp_i] after RMSNorm (weighted, eps) and RoPE of its last n_rot dims at position
 * i·m (block start), with the caller's angle table angles [n_blocks, n_rot/2] (fill it with
 * ts_v4_rope_angles(..., pos_step = m)). All tensors share x's dtype. Errors as everywhere: NULL
 * input -> NULL without a new error; bad shape / dtype -> first error recorded, NULL. */

/* Compressor weights (official names attn.compressor.{wkv, wgate, ape, norm}; the indexer's own
 * copy is attn.indexer.compressor.*). k = c (HCA) or 2c (CSA: channels [0, c) = series b, the
 * contribution to the NEXT block, [c, 2c) = series a, its own block; the HF port calls them the
 * other way round, Ca/Cb, reference notes item 16).
 *   wkv [k, d], wgate [k, d], ape [m, k], norm [c]. */
typedef struct {
    ts_tensor *wkv, *wgate, *ape, *norm;
} ts_v4_compressor_w;

/* RoPE frequencies ω'_k, k = 0..n_rot/2-1 (spec §2.4): ω_k = base^(-2k/n_rot); when yarn is
 * non-NULL and enabled, the YaRN warp with corr(ρ) = n_rot·ln(L_orig/(2πρ))/(2 ln base),
 * lo = max(0, floor(corr(β_fast))), hi = min(n_rot-1, ceil(corr(β_slow))) (+0.001 if equal),
 * γ_k = clamp((k - lo)/(hi - lo), 0, 1) over the PAIR index k (the V3 quirk, kept), ω'_k =
 * ω_k/s·γ_k + ω_k·(1-γ_k). lo_out / hi_out (may be NULL) receive lo and hi (0 without YaRN).
 * Returns false for n_rot not even >= 2 or base <= 1 (nothing written). */
bool ts_v4_rope_freqs(double base, int n_rot, const ts_v4_rope_scaling *yarn, double *omega, double *lo_out,
                      double *hi_out);

/* Angle table angles[p][k] = (p·pos_step)·ω'_k for p = 0..n_pos-1, k = 0..n_rot/2-1 (row-major
 * [n_pos, n_rot/2], double). pos_step = 1 for tokens, m for compressed entries of ratio m. */
bool ts_v4_rope_angles(double base, int n_rot, const ts_v4_rope_scaling *yarn, int64_t n_pos, int64_t pos_step,
                       double *angles);
/* The same written into an allocated float leaf of shape [n_pos, n_rot/2] (any float dtype; also
 * accepted: any shape with that many elements). */
ts_status ts_v4_rope_angles_write(ts_tensor *leaf, double base, int n_rot, const ts_v4_rope_scaling *yarn,
                                  int64_t pos_step);

/* Number of blocks of ratio m visible to query t: min(n_blocks, floor((t+1)/m)) (spec §2.9). */
int64_t ts_v4_visible_blocks(int64_t t, int64_t m, int64_t n_blocks);
/* Whether block i of ratio m may serve query t of a document starting at doc_start: it is
 * complete at t (spec §2.9) and everything it pooled lies in the document - tokens from i·m on
 * (HCA), from (i-1)·m on for the overlapping CSA blocks (m = 4, i >= 1). doc_start 0 is plain
 * causality; with document masking a document loses the blocks straddling its start. */
bool ts_v4_block_usable(int64_t t, int64_t i, int64_t m, int64_t doc_start);
/* Additive causal block mask [T, n_blocks] (row-major, double): 0 where block i is visible to
 * query t (i < floor((t+1)/m)), -inf elsewhere. The indexer reads it as a leaf of x's dtype. */
void ts_v4_block_mask(int64_t T, int64_t m, int64_t n_blocks, double *mask);
ts_status ts_v4_block_mask_write(ts_tensor *leaf, int64_t m); /* leaf [T, n_blocks], float dtype */
/* HCA extra_idx for ts_attention [T, n_blocks] (i32, row-major): idx[t][i] = i when block i is
 * complete at t ((i+1)·m - 1 <= t), else -1. */
void ts_v4_hca_extra_idx(int64_t T, int64_t m, int64_t n_blocks, int32_t *idx);

/* HCA (spec §2.7): C = x·wkvᵀ, Z = x·wgateᵀ on the first n_blocks·m tokens, viewed [n_blocks, m, c];
 * per block and channel S = softmax over the m slots of (Z + ape); entry = Σ_slots S ⊙ C;
 * RMSNorm(norm, eps); RoPE on the last n_rot dims by angles [n_blocks, n_rot/2].
 * x [(B,) T, d] -> [(B,) n_blocks, c], n_blocks = floor(T / m). */
ts_tensor *ts_v4_hca_compress(ts_graph *g, ts_tensor *x, const ts_v4_compressor_w *w, int64_t m,
                              ts_tensor *angles, int n_rot, float eps);

/* CSA (spec §2.7, m = 4 in V4; any m >= 1 accepted): per block i and channel, softmax over the 2m
 * slots [block i-1's m tokens with series b (C^b, Z^b + ape^b) ; block i's m tokens with series a
 * (C^a, Z^a + ape^a)]; block 0's previous half is a -inf score / zero value (weight exactly 0).
 * Then RMSNorm(norm [c]) and RoPE as HCA. x [(B,) T, d] -> [(B,) n_blocks, c]; receptive field of entry i:
 * tokens m(i-1) .. m(i+1)-1. */
ts_tensor *ts_v4_csa_compress(ts_graph *g, ts_tensor *x, const ts_v4_compressor_w *w, int64_t m,
                              ts_tensor *angles, int n_rot, float eps);

/* The pooling step shared by both compressors and the decoder: per channel softmax over the
 * slots (axis -2) of Z, weighted sum of C, RMSNorm(norm), RoPE of the last n_rot dims by angles
 * (broadcastable to the result's [..., n_rot/2]). C, Z [..., slots, c] -> [..., c]. */
ts_tensor *ts_v4_compress_pool(ts_graph *g, ts_tensor *C, ts_tensor *Z, ts_tensor *norm, ts_tensor *angles,
                               int n_rot, float eps);

/* The indexer's scoring and selection against given keys (ts_v4_indexer after its compressor;
 * the decoder calls it with cached keys): x [B, T, d], cq [B, T, q_lora], K [B, nb, head_dim],
 * angles_q broadcastable to [B, T, n_heads, n_rot/2], mask [T, nb] or [B, T, nb]. Returns the
 * picks [B, T, min(topk, nb)] (-1 = an invisible block); *scores (may be NULL) [B, T, nb]. */
ts_tensor *ts_v4_indexer_select(ts_graph *g, ts_tensor *x, ts_tensor *cq, ts_tensor *wq_b, ts_tensor *weights_proj,
                                ts_tensor *K, int64_t n_heads, int64_t head_dim, ts_tensor *angles_q, int n_rot,
                                ts_tensor *mask, int64_t topk, ts_tensor **scores);

/* Lightning indexer (spec §2.8) for one CSA layer.
 *   x [(B,) T, d]; cq [(B,) T, q_lora] (the attention's query latent c^Q); wq_b [n_heads·head_dim, q_lora];
 *   weights_proj [n_heads, d]; comp: the indexer's CSA compressor (output width head_dim);
 *   angles_q [T, n_rot/2] (positions t), angles_k [n_blocks, n_rot/2] (positions m·i);
 *   mask [T, n_blocks] from ts_v4_block_mask_write, or [B, T, n_blocks] (x batched), x's dtype;
 *   topk = index_topk. Shapes below are for one sequence; a batch adds the leading B everywhere.
 * K = CSA(x) [n_blocks, head_dim]; q = rope(cq·wq_bᵀ as [T, n_heads, head_dim]);
 * w = x·weights_projᵀ·(head_dim^-1/2·n_heads^-1/2);
 * scores[t, i] = Σ_h w[t,h]·ReLU(q[t,h]·K[i]) + mask[t, i]  (-inf for invisible blocks);
 * idx = topk(scores, k = min(topk, n_blocks)) as [T, k] i32, descending, with every slot that
 * picked an invisible block turned into -1 (in the graph: idx' = (idx+1)·exp(mask[t, idx]) - 1 in
 * f32, then cast to i32) - ready as ts_attention's extra_idx (after a reshape to [1, T, k]).
 * The indexer is non-differentiable (top-k; §3 item 10): gradients reach its weights only through
 * `scores` if a caller adds a loss on them. Outputs (may be NULL): *scores [T, n_blocks], *keys
 * [n_blocks, head_dim]. Returns idx (NULL on error). */
ts_tensor *ts_v4_indexer(ts_graph *g, ts_tensor *x, ts_tensor *cq, ts_tensor *wq_b, ts_tensor *weights_proj,
                         const ts_v4_compressor_w *comp, int64_t n_heads, int64_t head_dim, int64_t m,
                         ts_tensor *angles_q, ts_tensor *angles_k, int n_rot, float eps, ts_tensor *mask,
                         int64_t topk, ts_tensor **scores, ts_tensor **keys);

/* model_graph.c: the weights of the compressor at prefix + where + "compressor." (where: "attn."
 * or "attn.indexer."). */
ts_v4_compressor_w ts_mb_compressor_weights(ts_model_builder *b, const char *prefix, const char *where);

#endif
