/* decode_dense.c - incremental decoding of the dense baseline (dense_graph.c), the dense
 * implementation of decoder_impl.h: a paged KV cache per layer, one forward pass per step (one
 * new token for each of n slots) or per prefill chunk (up to CHUNK tokens of one slot).
 *
 * Cache: per layer one host array [H, N, 2·hd], N = the pool's positions, in blocks of BLOCK
 * positions shared by all slots (block_pool.h: block tables, reference counts, a free list);
 * entry (h, e) holds head h's key of a position after RoPE, then its value. Blocks come off the
 * free list as a sequence grows and go back on reset / truncate; a fork shares the source's
 * blocks (a K/V row depends only on the tokens up to its position), and a shared block a slot is
 * about to write into (the partly filled last one) is first copied (copy on write). Step and
 * extend count the blocks they will take before touching anything: too few free and they
 * return TS_ERR_OOM with every slot as it was.
 * Head-major, so that one head's pass over a block reads one contiguous run (BLOCK entries of
 * 2·hd): the weights streaming through the CPU caches every step evict the KV cache, and
 * position-major entries (512 of every 2 KiB) defeat the hardware prefetcher.
 * ts_attention takes extra entries that serve as key and value at once (V4's shared K = V), so a
 * pass hands it the whole cache as extras - a permuted, stride-0 expanded view of one leaf bound
 * to the array, nothing copied - with the query widened to q | 0: then q'·e = q·k, and the second
 * half of the weighted sum is Σ p·v, the output. Each row lists its slot's cached positions in its
 * own index list [B, 1, E] (-1 past the prefix), so any set of slots in any order shares one
 * forward pass. The pass's new tokens are the attention's ordinary keys [k | v], causal among
 * themselves; after compute the host files them into the cache at the entry of (slot, position).
 * The price: over the prefix the attention does twice the arithmetic of separate K and V (half of
 * each dot product and weighted sum works on the other half).
 *
 * Graphs, one per shape (rows B, new tokens T, index slots E, logit rows R), all built up
 * front: steps use T = 1 and the smallest B in 1, 2, 4, .., slots that holds the active rows
 * (idle slots cost nothing; a bucket's spare rows attend to themselves only); extend runs chunks
 * of up to CHUNK tokens on B = 1 and the smallest T in 1, 2, 4, .., CHUNK that holds the chunk,
 * its m tokens last: the T - m padding tokens in front are hidden from them by the attention's
 * key_start (= T - m), and the graph's logits are those of the last R = 1 or T tokens (a prompt
 * needs one row, the head being a quarter of a small model's work; a draft to verify, all); E
 * is the smallest of 64, 256, 1024, .., max_len that holds the longest prefix (the kernel visits
 * every index slot). The graphs share the weights, the caches and the host inputs (one pass
 * runs at a time).
 * Decoding either way gives the full forward pass's logits (tests/test_decode_dense.c). */
#include <stdlib.h>
#include <string.h>

#include "model/block_pool.h"
#include "model/decoder_impl.h"
#include "model/model_internal.h"

#define CHUNK 64     /* prefill tokens per pass */
#define BLOCK TS_MODEL_DECODER_BLOCK
#define E_FIRST 64   /* the smallest index list; each next one is 4x longer */

/* One graph shape and the tensors the host reads and writes around its compute. */
typedef struct {
    ts_model_graph *mg;
    int64_t B, T, E, R;
    ts_tensor *zeros;  /* [B, T, H, hd]: the query's second half */
    ts_tensor *idx;    /* [B, 1, E] i32 leaf: each row's cache entries */
    ts_tensor **kv;    /* [layers]: the new tokens' [k | v] [B, T, H, 2·hd] */
} pass;

typedef struct {
    const ts_v4_config *c;
    ts_dtype dt;
    size_t esz;
    int slots;
    int64_t max_len, L, H, hd;
    void **cache;      /* [L] arrays [H, N, 2·hd] */
    size_t cache_bytes;
    int64_t N;         /* pool positions */
    ts_block_pool pool;
    void *angles;      /* [B, T, hd/2] of the running pass */
    int32_t *idx;      /* [B, E] of the running pass */
    int32_t *key_start; /* [T] of the running extend pass: its padding */
    int32_t *ids;      /* [B, T] of the running pass */
    double *omega;     /* [hd/2] RoPE frequencies */
    int64_t *len;      /* [slots] tokens so far */
    pass *passes;
    int n_passes;
    pass *building;    /* the pass whose graph the hooks are recording */
} dense_decoder;

/* ---------------------------------------------------------------- graph hooks */

/* The builder carries the decoder as its opaque dec pointer (model_internal.h). */
static dense_decoder *decoder_of(const ts_model_builder *b) { return (dense_decoder *)(void *)b->dec; }

/* A leaf bound to host memory the decoder owns. */
static ts_tensor *host_leaf(ts_model_builder *b, void *host, ts_dtype dt, int nd, const int64_t *shape,
                            const char *name) {
    ts_tensor *t = ts_new_tensor(b->g, dt, nd, shape, name);
    if (t && ts_tensor_bind_host(t, host) != TS_OK) {
        ts_graph_set_error(b->g, TS_ERR_INTERNAL, "dense decoder: cannot bind %s", name);
        return NULL;
    }
    return t;
}

ts_tensor *ts_dense_decode_angles(ts_model_builder *b) {
    dense_decoder *d = decoder_of(b);
    int64_t s[4] = {b->B, b->T, 1, d->hd / 2};
    return host_leaf(b, d->angles, b->dt, 4, s, "decode_angles");
}

ts_tensor *ts_dense_decode_attention(ts_model_builder *b, int layer, ts_tensor *q, ts_tensor *k, ts_tensor *v,
                                     const ts_attention_params *params) {
    dense_decoder *d = decoder_of(b);
    pass *p = d->building;
    ts_graph *g = b->g;
    int64_t N = d->N, w = 2 * d->hd;
    if (!p->idx) { /* shared by every layer */
        int64_t is[3] = {p->B, 1, p->E}, qs[4] = {p->B, p->T, d->H, d->hd};
        p->idx = host_leaf(b, d->idx, TS_I32, 3, is, "decode_idx");
        p->zeros = ts_fill(g, b->dt, 4, qs, 0.0f);
    }
    int64_t cs[4] = {1, d->H, N, w}, es[4] = {p->B, N, d->H, w}, xs[3] = {p->B, p->T, p->E};
    const int entries_first[4] = {0, 2, 1, 3}; /* the head-major array as [1, N, H, 2·hd] */
    ts_tensor *cache = ts_permute(g, host_leaf(b, d->cache[layer], b->dt, 4, cs, "kv_cache"), entries_first);
    ts_tensor *kv_parts[2] = {k, v}, *q_parts[2] = {q, p->zeros};
    ts_tensor *kv = p->kv[layer] = ts_set_output(ts_concat(g, kv_parts, 2, 3));
    ts_attention_params ap = *params;
    if (p->T > 1) ap.key_start = host_leaf(b, d->key_start, TS_I32, 2, (int64_t[]){1, p->T}, "decode_key_start");
    ap.extra = ts_expand(g, cache, 4, es);
    ap.extra_idx = ts_expand(g, p->idx, 3, xs);
    ts_tensor *o = ts_attention(g, ts_concat(g, q_parts, 2, 3), kv, kv, &ap);
    return ts_slice(g, o, 3, d->hd, d->hd);
}

int64_t ts_dense_decode_logit_rows(const ts_model_builder *b) { return decoder_of(b)->building->R; }

/* ---------------------------------------------------------------- passes */

static void free_pass(pass *p) {
    ts_model_graph_free(p->mg);
    free(p->kv);
}

static ts_status build_pass(dense_decoder *d, const ts_model_weights *w, ts_backend *be, int64_t B, int64_t T,
                            int64_t E, int64_t R, char *err, size_t err_size) {
    pass *p = &d->passes[d->n_passes++];
    *p = (pass){.B = B, .T = T, .E = E, .R = R, .kv = calloc((size_t)d->L, sizeof *p->kv)};
    if (!p->kv) {
        ts_error_printf(err, err_size, "dense decoder: out of memory");
        return TS_ERR_OOM;
    }
    ts_model_graph_options o = {.batch = B, .seq = T};
    d->building = p;
    ts_status s = ts_model_graph_build_with(w, &o, (ts_decode_build *)(void *)d, &p->mg, err, err_size);
    d->building = NULL;
    return s == TS_OK ? ts_model_graph_alloc(p->mg, be, NULL, err, err_size) : s;
}

/* The next bucket after n: doubling (rows, tokens) or 4x (index slots), capped at cap. */
static int64_t next_bucket(int64_t n, int64_t factor, int64_t cap) { return n * factor < cap ? n * factor : cap; }

static int64_t count_buckets(int64_t first, int64_t factor, int64_t cap) {
    int64_t n = 1;
    for (int64_t x = first < cap ? first : cap; x < cap; x = next_bucket(x, factor, cap)) n++;
    return n;
}

/* Steps: every row bucket with T = 1; extend: every token bucket past 1 with B = 1, logits of
 * the last token or of all; each with every index bucket. */
static ts_status build_passes(dense_decoder *d, const ts_model_weights *w, ts_backend *be, char *err,
                              size_t err_size) {
    int64_t chunk = d->max_len < CHUNK ? d->max_len : CHUNK, e0 = E_FIRST < d->max_len ? E_FIRST : d->max_len;
    int64_t n_rows = count_buckets(1, 2, d->slots), n_tokens = count_buckets(1, 2, chunk) - 1;
    int64_t n = count_buckets(e0, 4, d->max_len) * (n_rows + 2 * n_tokens);
    d->passes = calloc((size_t)n, sizeof *d->passes);
    if (!d->passes) {
        ts_error_printf(err, err_size, "dense decoder: out of memory");
        return TS_ERR_OOM;
    }
    ts_status s = TS_OK;
    for (int64_t E = e0; s == TS_OK; E = next_bucket(E, 4, d->max_len)) {
        for (int64_t B = 1; s == TS_OK; B = next_bucket(B, 2, d->slots)) {
            s = build_pass(d, w, be, B, 1, E, 1, err, err_size);
            if (B == d->slots) break;
        }
        for (int64_t T = 1; s == TS_OK && T < chunk;) {
            T = next_bucket(T, 2, chunk);
            s = build_pass(d, w, be, 1, T, E, 1, err, err_size);
            if (s == TS_OK) s = build_pass(d, w, be, 1, T, E, T, err, err_size);
        }
        if (E == d->max_len) break;
    }
    return s;
}

/* The smallest pass with at least B rows, T tokens, E index slots and R logit rows (one always
 * exists, and the buckets are a full cross product, so the smallest B·T·E·R is also the
 * smallest of each). */
static pass *find_pass(dense_decoder *d, int64_t B, int64_t T, int64_t E, int64_t R) {
    pass *best = NULL;
    for (int i = 0; i < d->n_passes; i++) {
        pass *p = &d->passes[i];
        if (p->B < B || p->T < T || p->E < E || p->R < R) continue;
        if (!best || p->B * p->T * p->E * p->R < best->B * best->T * best->E * best->R) best = p;
    }
    return best;
}

/* ---------------------------------------------------------------- the block pool */

static int64_t blocks_for(int64_t len) { return (len + BLOCK - 1) / BLOCK; }

/* Where position pos of a slot lives among the cache's N entries. */
static int32_t entry_of(const dense_decoder *d, int slot, int64_t pos) {
    return ts_block_pool_block(&d->pool, slot, pos) * BLOCK + (int32_t)(pos % BLOCK);
}

/* Copy on write: the first n positions of block `from`, every layer and head. */
static void copy_block(void *ctx, int32_t from, int32_t to, int64_t n) {
    const dense_decoder *d = ctx;
    size_t head = (size_t)(2 * d->hd) * d->esz;
    for (int64_t l = 0; l < d->L; l++)
        for (int64_t h = 0; h < d->H; h++)
            memcpy((char *)d->cache[l] + (size_t)(h * d->N + to * BLOCK) * head,
                   (const char *)d->cache[l] + (size_t)(h * d->N + from * BLOCK) * head, (size_t)n * head);
}

static void reserve(dense_decoder *d, int slot, int64_t n) {
    ts_block_pool_reserve(&d->pool, slot, d->len[slot], n, copy_block, d);
}

static void release_to(dense_decoder *d, int slot, int64_t len) { ts_block_pool_release_to(&d->pool, slot, len); }

static int64_t blocks_needed(const dense_decoder *d, int slot, int64_t n) {
    return ts_block_pool_needed(&d->pool, slot, d->len[slot], n);
}

/* ---------------------------------------------------------------- host side */

static void put(const dense_decoder *d, void *base, int64_t i, double v) {
    if (d->dt == TS_F64) ((double *)base)[i] = v;
    else ((float *)base)[i] = (float)v;
}

/* Row r of pass p: slot `slot` (-1: a spare row) holding `prefix` tokens, its last m of the T
 * new tokens real, at positions prefix, prefix + 1, ... (the padding before them at 0). */
static void prepare_row(dense_decoder *d, const pass *p, int64_t r, int slot, int64_t prefix, int64_t m) {
    int64_t half = d->hd / 2, pad = p->T - m;
    for (int64_t t = 0; t < p->T; t++) {
        double pos = t < pad ? 0.0 : (double)(prefix + t - pad);
        for (int64_t k = 0; k < half; k++) put(d, d->angles, (r * p->T + t) * half + k, pos * d->omega[k]);
        if (p->T > 1) d->key_start[t] = (int32_t)pad;
    }
    int32_t *idx = d->idx + r * p->E;
    for (int64_t e = 0; e < p->E; e++) idx[e] = slot >= 0 && e < prefix ? entry_of(d, slot, e) : -1;
}

/* After compute: the last m new tokens of row r into the cache of `slot` from position `at`,
 * head by head. */
static void commit_row(dense_decoder *d, const pass *p, int64_t r, int slot, int64_t at, int64_t m) {
    size_t head = (size_t)(2 * d->hd) * d->esz;
    for (int64_t t = 0; t < m; t++) {
        int64_t e = entry_of(d, slot, at + t);
        for (int64_t l = 0; l < d->L; l++)
            for (int64_t h = 0; h < d->H; h++)
                memcpy((char *)d->cache[l] + (size_t)(h * d->N + e) * head,
                       (const char *)p->kv[l]->data + (size_t)((r * p->T + p->T - m + t) * d->H + h) * head, head);
    }
}

/* The logits after the i-th of the last R new tokens of row r, as f32. */
static void read_logits(const dense_decoder *d, const pass *p, int64_t r, int64_t i, float *out) {
    int64_t V = d->c->vocab_size, at = (r * p->R + i) * V;
    const void *src = p->mg->logits->data;
    if (d->dt == TS_F32) memcpy(out, (const float *)src + at, (size_t)V * sizeof *out);
    else
        for (int64_t v = 0; v < V; v++) out[v] = (float)((const double *)src)[at + v];
}

static ts_status run(dense_decoder *d, const pass *p) {
    ts_status s = ts_tensor_write(p->mg->ids, d->ids, (size_t)(p->B * p->T) * sizeof(int32_t));
    return s == TS_OK ? ts_graph_compute(p->mg->graph) : s;
}

static ts_status dense_step(void *impl, int n, const int *slots, const int32_t *ids, float *logits) {
    dense_decoder *d = impl;
    int64_t longest = 0, need = 0;
    for (int i = 0; i < n; i++) {
        longest = d->len[slots[i]] > longest ? d->len[slots[i]] : longest;
        need += blocks_needed(d, slots[i], 1);
    }
    if (need > d->pool.n_free) return TS_ERR_OOM;
    for (int i = 0; i < n; i++) reserve(d, slots[i], 1);
    const pass *p = find_pass(d, n, 1, longest, 1);
    for (int64_t r = 0; r < p->B; r++) {
        d->ids[r] = r < n ? ids[r] : 0;
        prepare_row(d, p, r, r < n ? slots[r] : -1, r < n ? d->len[slots[r]] : 0, 1);
    }
    ts_status s = run(d, p);
    for (int i = 0; s != TS_OK && i < n; i++) release_to(d, slots[i], d->len[slots[i]]);
    if (s != TS_OK) return s;
    for (int i = 0; i < n; i++) {
        commit_row(d, p, i, slots[i], d->len[slots[i]], 1);
        d->len[slots[i]]++;
        read_logits(d, p, i, 0, logits + i * d->c->vocab_size);
    }
    return TS_OK;
}

/* Chunk by chunk; a chunk's pass keeps the logits of its last `want` tokens (those among the
 * last logit_rows of all n), in a pass of R = 1 when one is enough. */
static ts_status dense_extend(void *impl, int slot, const int32_t *ids, int64_t n, float *logits,
                              int64_t logit_rows) {
    dense_decoder *d = impl;
    int64_t first_kept = n - logit_rows, start = d->len[slot];
    if (blocks_needed(d, slot, n) > d->pool.n_free) return TS_ERR_OOM;
    reserve(d, slot, n);
    for (int64_t done = 0; done < n;) {
        int64_t m = n - done < CHUNK ? n - done : CHUNK, end = done + m;
        int64_t want = end - (first_kept > done ? first_kept : done); /* <= 0: none */
        const pass *p = find_pass(d, 1, m, d->len[slot], want > 1 ? m : 1);
        for (int64_t t = 0; t < p->T; t++) d->ids[t] = t < p->T - m ? 0 : ids[done + t - (p->T - m)];
        prepare_row(d, p, 0, slot, d->len[slot], m);
        ts_status s = run(d, p);
        if (s != TS_OK) {
            d->len[slot] = start; /* all or nothing: the chunks before are forgotten */
            release_to(d, slot, start);
            return s;
        }
        commit_row(d, p, 0, slot, d->len[slot], m);
        d->len[slot] += m;
        for (int64_t i = 0; i < want; i++) /* token end - want + i is logit row p->R - want + i */
            read_logits(d, p, 0, p->R - want + i, logits + (end - want + i - first_kept) * d->c->vocab_size);
        done = end;
    }
    return TS_OK;
}

static void dense_reset(void *impl, int slot) {
    dense_decoder *d = impl;
    d->len[slot] = 0;
    release_to(d, slot, 0);
}

static int64_t dense_length(const void *impl, int slot) { return ((const dense_decoder *)impl)->len[slot]; }

/* A KV cache just forgets: the index lists never reach past the length. */
static ts_status dense_truncate(void *impl, int slot, int64_t len) {
    dense_decoder *d = impl;
    d->len[slot] = len;
    release_to(d, slot, len);
    return TS_OK;
}

static ts_status dense_fork(void *impl, int dst, int src, int64_t len) {
    dense_decoder *d = impl;
    ts_block_pool_share(&d->pool, dst, src, len);
    d->len[dst] = len;
    return TS_OK;
}

static void dense_pool(const void *impl, ts_model_decoder_pool *out) {
    const dense_decoder *d = impl;
    ts_block_pool_info(&d->pool, out);
    out->block_bytes = (size_t)d->L * d->cache_bytes / (size_t)d->pool.n_blocks;
}

static size_t dense_state_bytes(const void *impl) {
    const dense_decoder *d = impl;
    return (size_t)d->L * d->cache_bytes;
}

static void dense_free(void *impl) {
    dense_decoder *d = impl;
    if (!d) return;
    for (int i = 0; i < d->n_passes; i++) free_pass(&d->passes[i]);
    free(d->passes);
    for (int64_t l = 0; d->cache && l < d->L; l++) free(d->cache[l]);
    free(d->cache);
    free(d->angles);
    free(d->idx);
    free(d->ids);
    free(d->key_start);
    free(d->omega);
    free(d->len);
    ts_block_pool_free(&d->pool);
    free(d);
}

static const ts_decoder_ops dense_ops = {
    .free = dense_free,
    .reset = dense_reset,
    .length = dense_length,
    .step = dense_step,
    .extend = dense_extend,
    .truncate = dense_truncate,
    .state_bytes = dense_state_bytes,
    .fork = dense_fork,
    .pool = dense_pool,
};

/* The caches, the block pool (every block free) and the host inputs, sized
 * for the largest pass. */
static ts_status alloc_host(dense_decoder *d) {
    int64_t rows = d->slots > CHUNK ? d->slots : CHUNK; /* B·T of the largest pass */
    d->cache_bytes = (size_t)(d->N * d->H * 2 * d->hd) * d->esz;
    d->cache = calloc((size_t)d->L, sizeof *d->cache);
    d->angles = calloc((size_t)(rows * d->hd / 2), d->esz);
    d->idx = calloc((size_t)(d->slots * d->max_len), sizeof *d->idx);
    d->ids = calloc((size_t)rows, sizeof *d->ids);
    d->key_start = calloc(CHUNK, sizeof *d->key_start);
    d->omega = calloc((size_t)(d->hd / 2), sizeof *d->omega);
    d->len = calloc((size_t)d->slots, sizeof *d->len);
    if (!ts_block_pool_init(&d->pool, d->slots, BLOCK, blocks_for(d->N), d->max_len) || !d->cache || !d->angles ||
        !d->idx || !d->ids || !d->key_start || !d->omega || !d->len)
        return TS_ERR_OOM;
    for (int64_t l = 0; l < d->L; l++)
        if (!(d->cache[l] = calloc(1, d->cache_bytes))) return TS_ERR_OOM;
    return TS_OK;
}

ts_status ts_dense_decoder_new(const ts_model_weights *w, ts_backend *be, int slots, int64_t max_len,
                               int64_t pool_positions, const ts_decoder_ops **ops, void **out, char *err,
                               size_t err_size) {
    *out = NULL;
    *ops = &dense_ops;
    const ts_v4_config *c = ts_model_weights_config(w);
    if (pool_positions == 0) /* every slot can reach max_len at once */
        pool_positions = blocks_for(max_len) > INT32_MAX / BLOCK / slots ? INT32_MAX : slots * blocks_for(max_len) * BLOCK;
    if (pool_positions > INT32_MAX - BLOCK || max_len > INT32_MAX - BLOCK) {
        ts_error_printf(err, err_size, "dense decoder: a pool of %lld positions (sequences of %lld) exceeds the i32 cache index",
                        (long long)pool_positions, (long long)max_len);
        return TS_ERR_INVALID_ARG;
    }
    dense_decoder *d = calloc(1, sizeof *d);
    if (!d) return TS_ERR_OOM;
    *d = (dense_decoder){.c = c, .dt = ts_model_weights_dtype(w), .slots = slots, .max_len = max_len,
                         .L = c->num_hidden_layers, .H = c->num_attention_heads, .hd = c->head_dim,
                         .N = blocks_for(pool_positions) * BLOCK};
    d->esz = ts_dtype_bytes(d->dt, 1);
    ts_status s = alloc_host(d);
    if (s != TS_OK) {
        ts_error_printf(err, err_size, "dense decoder: out of memory for a pool of %lld positions (%d slots of %lld)",
                        (long long)d->N, slots, (long long)max_len);
    } else if (!ts_v4_rope_freqs(c->rope_theta, (int)d->hd, NULL, d->omega, NULL, NULL)) {
        ts_error_printf(err, err_size, "dense decoder: no RoPE for head_dim %lld, rope_theta %g", (long long)d->hd,
                        c->rope_theta);
        s = TS_ERR_INVALID_ARG;
    } else {
        s = build_passes(d, w, be, err, err_size);
    }
    if (s != TS_OK) {
        dense_free(d);
        return s;
    }
    *out = d;
    return TS_OK;
}
