/* decode.c - incremental decoding of DeepSeek-V4 (spec §2.13), the V4 implementation of
 * decoder_impl.h: one token per sequence per step, for up to `slots` sequences at once, against
 * per-sequence caches instead of the whole prefix.
 *
 * Per layer and slot the host keeps (in the weights' dtype, bound to graph leaves):
 *   cache   [R + NB, c]  a ring of the last R = window - 1 keys (K = V, after norm and RoPE), then
 *                        the completed compressed entries (NB = max_len / m; m = 0: none);
 *   pending [m, k]       the compressor's projections C and gate scores Z (+ ape) of the tokens
 *                        of the current block (k = c for HCA, 2c for CSA: series b | a);
 *   prev    [m, c]       CSA: the previous block's series b (block 0: C = 0, Z = -inf);
 * and for CSA layers the same for the indexer (its own compressor, head_dim wide) plus its
 * compressed keys [NB, index_head_dim].
 * The step graph is the V4 graph of model_graph.c with T = 1 and two hooks (declared in
 * model_internal.h): RoPE angles per row, and the attention's extra entries = [cache | the entry
 * this token would complete], with a per-row index list: the valid ring slots, then the usable
 * compressed entries (HCA: all completed; CSA: the indexer's top-k over the cached keys plus the
 * key this token would complete). After compute the host files the token's key into the ring
 * and its projections into the pending block, and when (pos + 1) % m == 0 the new entry (rotated
 * at the block start) into the cache. Everything else - mHC, MoE, hash routing, the head - is
 * the ordinary per-token graph. Decoding a sequence step by step gives the full forward's
 * logits (tests/test_decode.c). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/decoder_impl.h"
#include "model/model_internal.h"

/* One host array bound to a graph leaf. */
typedef struct {
    void *data;
    ts_tensor *leaf;
} bound;

typedef struct {
    bound pend_c, pend_z, prev_c, prev_z; /* [B, m, k] x2, CSA [B, m, c] x2 */
    ts_tensor *out_c, *out_z, *entry;      /* the token's C, Z + ape [B, 1, k]; would-be entry [B, c] */
} comp_state;

typedef struct {
    int64_t m, R, NB, c;
    bool csa;
    bound cache;          /* [B, R + NB, 1, c] */
    bound idx;            /* [B, 1, R (+ NB + 1 for HCA)] i32: the host-built part of the index list */
    bound onehot;         /* [B, m, 1]: the token's slot in its block */
    bound block_angles;   /* [B, r/2]: RoPE of the block's start */
    ts_tensor *kv;        /* the token's key [B, 1, 1, c] */
    comp_state comp, icomp;
    bound ikeys;          /* CSA: [B, NB, index_head_dim] */
    bound imask;          /* CSA: [B, 1, NB + 1] (0 / -inf) */
} dec_layer;

struct ts_decode_build {
    const ts_v4_config *c;
    ts_dtype dt;
    size_t esz;
    int64_t B, max_len;
    dec_layer *layers;
    bound ang_main, ang_comp; /* [B, 1, 1, r/2] */
    size_t state_bytes;       /* host memory of every cache above */
};

typedef struct v4_decoder {
    ts_decode_build d;
    const ts_model_weights *w;
    ts_model_graph *mg;
    int64_t *len;         /* [B] tokens so far */
    int32_t *ids;         /* [B] */
    double *omega_main, *omega_comp;
} v4_decoder;

/* ---------------------------------------------------------------- graph hooks */

/* A leaf of the given shape bound to a new zeroed host array. */
static ts_tensor *bound_leaf(ts_model_builder *b, bound *bd, ts_dtype dt, int nd, const int64_t *shape,
                             const char *name) {
    int64_t n = 1;
    for (int i = 0; i < nd; i++) n *= shape[i];
    bd->data = calloc((size_t)(n > 0 ? n : 1), ts_dtype_bytes(dt, 1));
    b->dec->state_bytes += (size_t)n * ts_dtype_bytes(dt, 1);
    bd->leaf = ts_new_tensor(b->g, dt, nd, shape, name);
    if (!bd->data || !bd->leaf || ts_tensor_bind_host(bd->leaf, bd->data) != TS_OK) {
        ts_graph_set_error(b->g, TS_ERR_OOM, "decoder: out of memory for %s", name);
        return NULL;
    }
    return bd->leaf;
}

ts_tensor *ts_decode_token_angles(ts_model_builder *b, bool compressed_layer) {
    ts_decode_build *d = b->dec;
    bound *a = compressed_layer ? &d->ang_comp : &d->ang_main;
    if (!a->leaf) {
        int64_t s[4] = {b->B, 1, 1, b->c->qk_rope_head_dim / 2};
        bound_leaf(b, a, b->dt, 4, s, compressed_layer ? "decode_angles_compressed" : "decode_angles");
    }
    return a->leaf;
}

/* The would-be compressed entry of a block, from the pending projections and the token's own:
 * C_t = x·wkvᵀ, Z_t = x·wgateᵀ + ape[slot]; the block = pending with the token at its slot;
 * CSA pools [prev series b ; block series a]. Returns the entry [B, c]. */
static ts_tensor *would_be_entry(ts_model_builder *b, dec_layer *L, comp_state *cs, const ts_v4_compressor_w *w,
                                 ts_tensor *x, int64_t c, const char *name) {
    ts_graph *g = b->g;
    int64_t m = L->m, k = L->csa ? 2 * c : c;
    int64_t ps[3] = {b->B, m, k}, pv[3] = {b->B, m, c};
    ts_tensor *pc = bound_leaf(b, &cs->pend_c, b->dt, 3, ps, name);
    ts_tensor *pz = bound_leaf(b, &cs->pend_z, b->dt, 3, ps, name);
    ts_tensor *oh = L->onehot.leaf;
    ts_tensor *ape_j = ts_sum(g, ts_mul(g, w->ape, oh), 1, true); /* [B, 1, k] */
    cs->out_c = ts_set_output(ts_matmul(g, x, w->wkv, false, true));
    cs->out_z = ts_set_output(ts_add(g, ts_matmul(g, x, w->wgate, false, true), ape_j));
    ts_tensor *one = ts_fill(g, b->dt, 1, (int64_t[]){1}, 1.0f), *keep = ts_sub(g, one, oh);
    ts_tensor *C = ts_add(g, ts_mul(g, pc, keep), ts_mul(g, cs->out_c, oh));
    ts_tensor *Z = ts_add(g, ts_mul(g, pz, keep), ts_mul(g, cs->out_z, oh));
    if (L->csa) {
        ts_tensor *qc = bound_leaf(b, &cs->prev_c, b->dt, 3, pv, name), *qz = bound_leaf(b, &cs->prev_z, b->dt, 3, pv, name);
        ts_tensor *cc[2] = {qc, ts_slice(g, C, 2, c, c)}, *zz[2] = {qz, ts_slice(g, Z, 2, c, c)};
        C = ts_concat(g, cc, 2, 1);
        Z = ts_concat(g, zz, 2, 1);
    }
    cs->entry = ts_set_output(ts_v4_compress_pool(g, C, Z, w->norm, L->block_angles.leaf, (int)b->c->qk_rope_head_dim,
                                                  b->eps));
    return cs->entry;
}

void ts_decode_cache_entries(ts_model_builder *b, int layer, const char *prefix, ts_tensor *x, ts_tensor *cq,
                             ts_tensor *kv, ts_tensor **extra, ts_tensor **extra_idx) {
    ts_decode_build *d = b->dec;
    dec_layer *L = &d->layers[layer];
    const ts_v4_config *c = b->c;
    ts_graph *g = b->g;
    int64_t B = b->B, hd = c->head_dim;
    L->kv = ts_set_output(kv);
    int64_t cs[4] = {B, L->R + L->NB, 1, hd};
    ts_tensor *cache = L->R + L->NB > 0 ? bound_leaf(b, &L->cache, b->dt, 4, cs, "decode_cache") : NULL;
    int64_t n_host = L->R + (L->m > 0 && !L->csa ? L->NB + 1 : 0);
    int64_t is[3] = {B, 1, n_host};
    ts_tensor *idx = n_host > 0 ? bound_leaf(b, &L->idx, TS_I32, 3, is, "decode_idx") : NULL;
    *extra = cache;
    *extra_idx = idx;
    if (L->m == 0) return;

    int64_t os[3] = {B, L->m, 1}, as[2] = {B, c->qk_rope_head_dim / 2};
    bound_leaf(b, &L->onehot, b->dt, 3, os, "decode_onehot");
    bound_leaf(b, &L->block_angles, b->dt, 2, as, "decode_block_angles");
    ts_v4_compressor_w w = ts_mb_compressor_weights(b, prefix, "attn.");
    ts_tensor *entry = would_be_entry(b, L, &L->comp, &w, x, hd, "decode_pending");
    int64_t e4[4] = {B, 1, 1, hd};
    ts_tensor *ex[2] = {cache, ts_reshape(g, entry, 4, e4)};
    *extra = ts_concat(g, ex, 2, 1); /* [B, R + NB + 1, 1, c]: the new entry last */
    if (!L->csa) return;

    /* CSA: the indexer picks among the cached keys and the one this token would complete */
    int64_t ihd = c->index_head_dim, ks[3] = {B, L->NB, ihd}, ms[3] = {B, 1, L->NB + 1};
    ts_v4_compressor_w iw = ts_mb_compressor_weights(b, prefix, "attn.indexer.");
    ts_tensor *ikey = would_be_entry(b, L, &L->icomp, &iw, x, ihd, "decode_index_pending");
    ts_tensor *kk[2] = {bound_leaf(b, &L->ikeys, b->dt, 3, ks, "decode_index_keys"),
                        ts_reshape(g, ikey, 3, (int64_t[]){B, 1, ihd})};
    ts_tensor *mask = bound_leaf(b, &L->imask, b->dt, 3, ms, "decode_index_mask");
    char ip[TS_MODEL_TENSOR_NAME_MAX];
    snprintf(ip, sizeof ip, "%sattn.indexer.", prefix);
    int64_t c3[3] = {B, 1, c->q_lora_rank};
    ts_tensor *picks = ts_v4_indexer_select(g, x, ts_reshape(g, cq, 3, c3), ts_mb_param(b, ip, "wq_b.weight"),
                                            ts_mb_param(b, ip, "weights_proj.weight"), ts_concat(g, kk, 2, 1),
                                            c->index_n_heads, ihd, ts_decode_token_angles(b, true),
                                            (int)c->qk_rope_head_dim, mask, c->index_topk, NULL);
    b->mg->index_idx[layer] = ts_set_output(picks);
    /* pick i -> extra entry R + i (the new key, i = NB, is the new entry); -1 stays -1 */
    ts_tensor *one = ts_fill(g, TS_F32, 1, (int64_t[]){1}, 1.0f), *fp = ts_cast(g, picks, TS_F32);
    ts_tensor *valid = ts_clamp(g, ts_add(g, fp, one), 0.0f, 1.0f);
    ts_tensor *mapped = ts_cast(g, ts_add(g, fp, ts_scale(g, valid, (float)L->R)), TS_I32);
    ts_tensor *parts[2] = {idx, mapped};
    *extra_idx = idx ? ts_concat(g, parts, 2, 2) : mapped;
}

/* ---------------------------------------------------------------- host side */

static void free_bound(bound *b) { free(b->data); }

static void free_comp(comp_state *c) {
    free_bound(&c->pend_c);
    free_bound(&c->pend_z);
    free_bound(&c->prev_c);
    free_bound(&c->prev_z);
}

static void v4_free(void *impl) {
    v4_decoder *dec = impl;
    if (!dec) return;
    ts_decode_build *d = &dec->d;
    for (int64_t l = 0; d->layers && l < d->c->num_hidden_layers; l++) {
        dec_layer *L = &d->layers[l];
        free_bound(&L->cache);
        free_bound(&L->idx);
        free_bound(&L->onehot);
        free_bound(&L->block_angles);
        free_bound(&L->ikeys);
        free_bound(&L->imask);
        free_comp(&L->comp);
        free_comp(&L->icomp);
    }
    free(d->layers);
    free_bound(&d->ang_main);
    free_bound(&d->ang_comp);
    ts_model_graph_free(dec->mg);
    free(dec->len);
    free(dec->ids);
    free(dec->omega_main);
    free(dec->omega_comp);
    free(dec);
}

/* Element access in the weights' dtype. */
static void put(const ts_decode_build *d, void *base, int64_t i, double v) {
    if (d->dt == TS_F64) ((double *)base)[i] = v;
    else ((float *)base)[i] = (float)v;
}

static void copy_rows(const ts_decode_build *d, void *dst, int64_t dst_i, const void *src, int64_t src_i, int64_t n) {
    memcpy((char *)dst + (size_t)dst_i * d->esz, (const char *)src + (size_t)src_i * d->esz, (size_t)n * d->esz);
}

/* An empty compressor state: nothing pending, block 0's "previous" series weightless. */
static void reset_comp(const ts_decode_build *d, const dec_layer *L, const comp_state *cs, int64_t c, int slot) {
    int64_t k = L->csa ? 2 * c : c;
    for (int64_t i = 0; i < L->m * k; i++) {
        put(d, cs->pend_c.data, slot * L->m * k + i, 0);
        put(d, cs->pend_z.data, slot * L->m * k + i, 0);
    }
    if (!L->csa) return;
    for (int64_t i = 0; i < L->m * c; i++) {
        put(d, cs->prev_c.data, slot * L->m * c + i, 0);
        put(d, cs->prev_z.data, slot * L->m * c + i, -INFINITY);
    }
}

static void v4_reset(void *impl, int slot) {
    v4_decoder *dec = impl;
    ts_decode_build *d = &dec->d;
    if (slot < 0 || slot >= d->B) return;
    dec->len[slot] = 0;
    for (int64_t l = 0; l < d->c->num_hidden_layers; l++) {
        dec_layer *L = &d->layers[l];
        if (L->m == 0) continue;
        reset_comp(d, L, &L->comp, L->c, slot);
        if (L->csa) reset_comp(d, L, &L->icomp, d->c->index_head_dim, slot);
    }
}

static int64_t v4_length(const void *impl, int slot) {
    const v4_decoder *dec = impl;
    return dec->len[slot];
}

static void write_angles(const ts_decode_build *d, const bound *a, const double *omega, int slot, int64_t pos) {
    int half = (int)d->c->qk_rope_head_dim / 2;
    for (int k = 0; k < half; k++) put(d, a->data, slot * half + k, (double)pos * omega[k]);
}

/* The host inputs of row `slot` at position p (see the file comment). */
static void prepare_row(v4_decoder *dec, int slot, int64_t p) {
    ts_decode_build *d = &dec->d;
    if (d->ang_main.data) write_angles(d, &d->ang_main, dec->omega_main, slot, p);
    if (d->ang_comp.data) write_angles(d, &d->ang_comp, dec->omega_comp, slot, p);
    for (int64_t l = 0; l < d->c->num_hidden_layers; l++) {
        dec_layer *L = &d->layers[l];
        int64_t n_host = L->R + (L->m > 0 && !L->csa ? L->NB + 1 : 0);
        int32_t *idx = L->idx.data ? (int32_t *)L->idx.data + slot * n_host : NULL;
        for (int64_t q = 0; q < L->R; q++) idx[q] = -1;
        for (int64_t q = p - L->R < 0 ? 0 : p - L->R; q < p; q++) idx[q % L->R] = (int32_t)(q % L->R);
        if (L->m == 0) continue;
        int64_t done = p / L->m; /* blocks completed before this token */
        bool completes = (p + 1) % L->m == 0;
        if (!L->csa)
            for (int64_t i = 0; i <= L->NB; i++)
                idx[L->R + i] = i < done || (i == L->NB && completes) ? (int32_t)(L->R + i) : -1;
        else
            for (int64_t i = 0; i <= L->NB; i++)
                put(d, L->imask.data, slot * (L->NB + 1) + i, i < done || (i == L->NB && completes) ? 0.0 : -INFINITY);
        for (int64_t j = 0; j < L->m; j++) put(d, L->onehot.data, slot * L->m + j, j == p % L->m ? 1.0 : 0.0);
        int half = (int)d->c->qk_rope_head_dim / 2;
        for (int k = 0; k < half; k++)
            put(d, L->block_angles.data, slot * half + k, (double)(done * L->m) * dec->omega_comp[k]);
    }
}

/* A row that takes no part in this step: every entry masked, its outputs ignored. */
static void idle_row(v4_decoder *dec, int slot) {
    ts_decode_build *d = &dec->d;
    for (int64_t l = 0; l < d->c->num_hidden_layers; l++) {
        dec_layer *L = &d->layers[l];
        int64_t n_host = L->R + (L->m > 0 && !L->csa ? L->NB + 1 : 0);
        for (int64_t q = 0; q < n_host; q++) ((int32_t *)L->idx.data)[slot * n_host + q] = -1;
        if (L->csa)
            for (int64_t i = 0; i <= L->NB; i++) put(d, L->imask.data, slot * (L->NB + 1) + i, -INFINITY);
    }
}

/* Files the token's projections into its block; when the block completes, its entry into the
 * cache and (CSA) its series b into prev. */
static void commit_comp(const ts_decode_build *d, const dec_layer *L, const comp_state *cs, int64_t c, void *entries,
                        int64_t entries_row, int64_t entries_at, int slot, int64_t p) {
    int64_t m = L->m, k = L->csa ? 2 * c : c, j = p % m;
    copy_rows(d, cs->pend_c.data, (slot * m + j) * k, cs->out_c->data, slot * k, k);
    copy_rows(d, cs->pend_z.data, (slot * m + j) * k, cs->out_z->data, slot * k, k);
    if ((p + 1) % m != 0) return;
    copy_rows(d, entries, slot * entries_row + entries_at, cs->entry->data, slot * c, c);
    if (!L->csa) return;
    for (int64_t s = 0; s < m; s++) { /* the b series of this block feeds the next one */
        copy_rows(d, cs->prev_c.data, (slot * m + s) * c, cs->pend_c.data, (slot * m + s) * k, c);
        copy_rows(d, cs->prev_z.data, (slot * m + s) * c, cs->pend_z.data, (slot * m + s) * k, c);
    }
}

static void commit_row(v4_decoder *dec, int slot, int64_t p) {
    ts_decode_build *d = &dec->d;
    for (int64_t l = 0; l < d->c->num_hidden_layers; l++) {
        dec_layer *L = &d->layers[l];
        int64_t row = (L->R + L->NB) * L->c;
        if (L->R > 0) copy_rows(d, L->cache.data, slot * row + (p % L->R) * L->c, L->kv->data, slot * L->c, L->c);
        if (L->m == 0) continue;
        int64_t blk = p / L->m;
        if (blk < L->NB) commit_comp(d, L, &L->comp, L->c, L->cache.data, row, (L->R + blk) * L->c, slot, p);
        if (L->csa && blk < L->NB) {
            int64_t ihd = d->c->index_head_dim;
            commit_comp(d, L, &L->icomp, ihd, L->ikeys.data, L->NB * ihd, blk * ihd, slot, p);
        }
    }
}

static ts_status v4_step(void *impl, int n, const int *slots, const int32_t *ids, float *logits) {
    v4_decoder *dec = impl;
    ts_decode_build *d = &dec->d;
    if (n < 1 || n > d->B || !slots || !ids || !logits) return TS_ERR_INVALID_ARG;
    bool active[d->B];
    memset(active, 0, sizeof active);
    for (int i = 0; i < n; i++) {
        int s = slots[i];
        if (s < 0 || s >= d->B || active[s]) return TS_ERR_INVALID_ARG;
        if (dec->len[s] >= d->max_len) return TS_ERR_RANGE;
        active[s] = true;
        dec->ids[s] = ids[i];
    }
    for (int s = 0; s < d->B; s++) {
        if (active[s]) prepare_row(dec, s, dec->len[s]);
        else {
            idle_row(dec, s);
            dec->ids[s] = 0;
        }
    }
    ts_status st = ts_tensor_write(dec->mg->ids, dec->ids, (size_t)d->B * sizeof(int32_t));
    if (st == TS_OK) st = ts_graph_compute(dec->mg->graph);
    if (st != TS_OK) return st;
    int64_t V = d->c->vocab_size;
    for (int i = 0; i < n; i++) {
        int s = slots[i];
        commit_row(dec, s, dec->len[s]);
        dec->len[s]++;
        for (int64_t v = 0; v < V; v++)
            logits[i * V + v] = d->dt == TS_F64 ? (float)((const double *)dec->mg->logits->data)[s * V + v]
                                                : ((const float *)dec->mg->logits->data)[s * V + v];
    }
    return TS_OK;
}

static size_t v4_state_bytes(const void *impl) {
    const v4_decoder *dec = impl;
    return dec->d.state_bytes;
}

static const ts_decoder_ops v4_ops = {
    .free = v4_free,
    .reset = v4_reset,
    .length = v4_length,
    .step = v4_step,
    .state_bytes = v4_state_bytes,
};

ts_status ts_v4_decoder_new(const ts_model_weights *w, ts_backend *be, int slots, int64_t max_len,
                            const ts_decoder_ops **ops, void **out, char *err, size_t err_size) {
    *out = NULL;
    *ops = &v4_ops;
    const ts_v4_config *c = ts_model_weights_config(w);
    v4_decoder *dec = calloc(1, sizeof *dec);
    if (!dec) return TS_ERR_OOM;
    ts_decode_build *d = &dec->d;
    d->c = c;
    d->dt = ts_model_weights_dtype(w);
    d->esz = ts_dtype_bytes(d->dt, 1);
    d->B = slots;
    d->max_len = max_len;
    dec->w = w;
    int half = (int)c->qk_rope_head_dim / 2;
    d->layers = calloc((size_t)c->num_hidden_layers, sizeof *d->layers);
    dec->len = calloc((size_t)slots, sizeof *dec->len);
    dec->ids = calloc((size_t)slots, sizeof *dec->ids);
    dec->omega_main = calloc((size_t)half, sizeof(double));
    dec->omega_comp = calloc((size_t)half, sizeof(double));
    if (!d->layers || !dec->len || !dec->ids || !dec->omega_main || !dec->omega_comp) {
        v4_free(dec);
        return TS_ERR_OOM;
    }
    ts_v4_rope_freqs(c->rope_theta, 2 * half, NULL, dec->omega_main, NULL, NULL);
    ts_v4_rope_freqs(c->compress_rope_theta, 2 * half, &c->rope_scaling, dec->omega_comp, NULL, NULL);
    for (int64_t l = 0; l < c->num_hidden_layers; l++) {
        dec_layer *L = &d->layers[l];
        L->m = c->compress_ratios[l];
        L->csa = L->m == TS_V4_RATIO_CSA;
        L->R = c->sliding_window - 1;
        L->NB = L->m > 0 ? max_len / L->m : 0;
        L->c = c->head_dim;
    }
    ts_model_graph_options o = {.batch = slots, .seq = 1};
    ts_status s = ts_model_graph_build_with(w, &o, d, &dec->mg, err, err_size);
    if (s == TS_OK) s = ts_model_graph_alloc(dec->mg, be, NULL, err, err_size);
    if (s != TS_OK) {
        v4_free(dec);
        return s;
    }
    for (int i = 0; i < slots; i++) v4_reset(dec, i);
    *out = dec;
    return TS_OK;
}
