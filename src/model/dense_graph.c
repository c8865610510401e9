/* dense_graph.c - the dense baseline (model.h, TS_MODEL_DENSE) on the graph: the model every
 * framework comparison runs, built from the same ops and kernels as DeepSeek-V4.
 *
 *   x = embed[ids]
 *   per layer:  x += wo · Attn(RoPE(wq·n), RoPE(wk·n), wv·n),  n = RMSNorm(x) · attn_norm
 *               x += w2 · (silu(w1·n) ⊙ w3·n),                  n = RMSNorm(x) · ffn_norm
 *   logits = (RMSNorm(x) · norm) · headᵀ   (embedᵀ when tie_word_embeddings)
 *
 * Attention is causal multi-head (ts_attention with Hk = H), scale 1/sqrt(head_dim), no sink,
 * no window. RoPE (base rope_theta) rotates the whole head in interleaved pairs (2k, 2k+1) - the
 * original Llama layout; Hugging Face's Llama rotates split halves instead, so its q/k weights
 * are a row permutation of ours (tools/make_dense_fixture.py converts between the two).
 * model_graph.c owns the leaves, the inputs, the loss and the backward; this file only records
 * the forward ops through the builder helpers of model_internal.h.
 *
 * Decoding (b->dec non-NULL, decode_dense.c): the same block, with three hooks - each row's
 * own RoPE positions instead of 0..T-1, an attention that also sees the row's cached prefix, and
 * logits of the few tokens that need them only. */
#include <math.h>
#include <stdio.h>

#include "model/model_internal.h"

/* Causal self-attention of layer `layer`: n [B*T, d] -> [B*T, d]. ang broadcastable to
 * [B, T, H, head_dim/2]. */
static ts_tensor *attention(ts_model_builder *b, int layer, const char *prefix, ts_tensor *n, ts_tensor *ang) {
    const ts_v4_config *c = b->c;
    ts_graph *g = b->g;
    int64_t H = c->num_attention_heads, hd = c->head_dim;
    int64_t hs[4] = {b->B, b->T, H, hd};
    ts_tensor *q = ts_rope(g, ts_reshape(g, ts_mb_linear(b, n, prefix, "attn.wq.weight"), 4, hs), ang, (int)hd, false);
    ts_tensor *k = ts_rope(g, ts_reshape(g, ts_mb_linear(b, n, prefix, "attn.wk.weight"), 4, hs), ang, (int)hd, false);
    ts_tensor *v = ts_reshape(g, ts_mb_linear(b, n, prefix, "attn.wv.weight"), 4, hs);
    ts_attention_params p = {.scale = (float)(1.0 / sqrt((double)hd)), .causal = true, .key_start = b->mg->doc_start};
    /* [B, T, H, hd] */
    ts_tensor *o = b->dec ? ts_dense_decode_attention(b, layer, q, k, v, &p) : ts_attention(g, q, k, v, &p);
    return ts_mb_linear(b, ts_reshape_2d(g, o, b->B * b->T, H * hd), prefix, "attn.wo.weight");
}

/* SwiGLU: n [B*T, d] -> w2 · (silu(w1 · n) ⊙ (w3 · n)). */
static ts_tensor *swiglu(ts_model_builder *b, const char *prefix, ts_tensor *n) {
    ts_graph *g = b->g;
    ts_tensor *h = ts_swiglu(g, ts_mb_linear(b, n, prefix, "ffn.w1.weight"), ts_mb_linear(b, n, prefix, "ffn.w3.weight"), 0);
    return ts_mb_linear(b, h, prefix, "ffn.w2.weight");
}

ts_tensor *ts_dense_build(ts_model_builder *b) {
    const ts_v4_config *c = b->c;
    ts_graph *g = b->g;
    int64_t as[3] = {b->T, 1, c->head_dim / 2};
    /* positions 0..T-1 broadcast over batch and heads, or (decoding) each row's own */
    ts_tensor *ang = b->dec ? ts_dense_decode_angles(b) : ts_reshape(g, ts_mb_angles(b, false, b->T, 1), 3, as);
    ts_tensor *x = ts_mb_embed(b, b->ids_flat); /* [B*T, d] */
    for (int layer = 0; layer < c->num_hidden_layers; layer++) {
        char prefix[32];
        snprintf(prefix, sizeof prefix, "layers.%d.", layer);
        ts_mb_checkpoint(b, x);
        ts_tensor *n = ts_rms_norm(g, x, ts_mb_param(b, prefix, "attn_norm.weight"), b->eps);
        x = ts_add(g, x, attention(b, layer, prefix, n, ang));
        x = ts_add(g, x, swiglu(b, prefix, ts_rms_norm(g, x, ts_mb_param(b, prefix, "ffn_norm.weight"), b->eps)));
    }
    ts_mb_checkpoint(b, x);
    int64_t R = b->dec ? ts_dense_decode_logit_rows(b, &x) : b->T; /* logits of R tokens per row */
    ts_tensor *y = ts_rms_norm(g, x, ts_mb_param(b, "", "norm.weight"), b->eps);
    ts_tensor *w = ts_mb_param(b, "", c->tie_word_embeddings ? "embed.weight" : "head.weight");
    int64_t ls[3] = {b->B, R, c->vocab_size};
    return ts_reshape(g, ts_matmul(g, y, w, false, true), 3, ls);
}
