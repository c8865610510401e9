/* decode_dense.c - incremental decoding of the dense baseline (dense_graph.c), the dense
 * implementation of decoder_impl.h: a paged KV cache per layer, and one packed forward pass for
 * any mix of sequences - prompt chunks, single decode tokens, drafts - of distinct slots
 * (vLLM's ragged batch). Step and extend are that pass with one token per slot or one slot's
 * tokens (decoder.c).
 *
 * Cache: per layer one host array [H, N, 2·hd], N = the pool's positions, in blocks of BLOCK
 * positions shared by all slots (block_pool.h: block tables, reference counts, a free list);
 * entry (h, e) holds head h's key of a position after RoPE, then its value. Blocks come off the
 * free list as a sequence grows and go back on reset / truncate; a fork shares the source's
 * blocks (a K/V row depends only on the tokens up to its position), and a shared block a slot is
 * about to write into (the partly filled last one) is first copied (copy on write). A call
 * counts the blocks it will take before touching anything: too few free and it returns
 * TS_ERR_OOM with every slot as it was.
 * Head-major, so that one head's pass over a block reads one contiguous run (BLOCK entries of
 * 2·hd): the weights streaming through the CPU caches every step evict the KV cache, and
 * position-major entries (512 of every 2 KiB) defeat the hardware prefetcher.
 *
 * The pass: all sequences' new tokens packed into one row (B = 1) of T tokens, sequence after
 * sequence. Each token has its own RoPE angle (its position in its sequence) and its own index
 * list [1, T, E] of its slot's cached positions (-1 past the prefix): ts_attention takes extra
 * entries stored as key | value rows, so the pass hands it the whole cache as extras - a
 * permuted view of one leaf bound to the array, nothing copied. The new tokens are the
 * attention's ordinary keys and values, causal, and each token's key_start is the start of its
 * sequence's segment: it sees the earlier new tokens of its own sequence only. Their [k | v]
 * rows (one concat, an output of the graph) are what the host files into the cache at the entry
 * of (slot, position) after compute.
 * Only the tokens that need logits go through the final norm and the head (a quarter of a small
 * model's work): the pass gathers their R hidden rows (ts_get_rows with an index leaf), unless
 * R = T, where it keeps every row (single-stream decoding then runs no gather).
 *
 * Graphs, one per shape (tokens T, index slots E, logit rows R): the steps' shapes (T = R up to
 * the slots) up front, the rest on first use (the cross product is large and most of it never
 * runs): T in 1, 2, 4, 8, 16, then multiples of 16 up to T_MAX, a token for each
 * slot plus a prompt budget of BUDGET rounded up to 16 (a call with more tokens is split into
 * passes of T_MAX, a sequence that does not fit continuing in the next - its earlier tokens are
 * then cached); R in 1, 2, 4, .. up to T; E is the smallest of 64, 256, 1024, .., max_len that holds the longest prefix
 * (the kernel visits every index slot). Padding tokens past the packed ones attend to themselves
 * only and are never filed. The graphs share the weights, the caches and the host inputs (one
 * pass runs at a time).
 * Decoding either way gives the full forward pass's logits (tests/test_decode_dense.c). */
#include <stdlib.h>
#include <string.h>

#include "model/block_pool.h"
#include "model/decoder_impl.h"
#include "model/model_internal.h"

#define BUDGET 64    /* prompt tokens a pass holds besides one token per slot */
#define T_STEP 16    /* token buckets past this many are its multiples */
#define BLOCK TS_MODEL_DECODER_BLOCK
#define E_FIRST 64   /* the smallest index list; each next one is 4x longer */

/* One graph shape and the tensors the host reads and writes around its compute (mg NULL: not
 * built yet). */
typedef struct {
    ts_model_graph *mg;
    int64_t T, E, R;
    ts_tensor *idx;    /* [1, T, E] i32 leaf: each token's cache entries */
    ts_tensor **kv;    /* [layers]: the new tokens' [k | v] [1, T, H, 2·hd] */
} pass;

/* A run of one sequence's new tokens in a pass. */
typedef struct {
    int seq;          /* its index among the call's sequences */
    int64_t from, m;  /* its tokens from .. from + m - 1 */
    int64_t at;       /* where they start in the packed row */
} segment;

typedef struct {
    const ts_v4_config *c;
    const ts_model_weights *w;
    ts_backend *be;
    ts_dtype dt;
    size_t esz;
    int slots;
    int64_t max_len, L, H, hd;
    void **cache;      /* [L] arrays [H, N, 2·hd] */
    size_t cache_bytes;
    int64_t N;         /* pool positions */
    ts_block_pool pool;
    int64_t T_max, n_T, n_E, n_R; /* token, index and logit-row buckets */
    void *angles;      /* [T, hd/2] of the running pass */
    int32_t *idx;      /* [T, E] of the running pass */
    int32_t *key_start; /* [T] of the running pass: each token's segment start */
    int32_t *ids;      /* [T] of the running pass */
    int32_t *rows;     /* [R] of the running pass: the tokens whose logits are kept */
    double *omega;     /* [hd/2] RoPE frequencies */
    int64_t *len;      /* [slots] tokens so far */
    int64_t *start;    /* [slots] of the running call: each sequence's length before it */
    segment *segs;     /* [slots] of the running pass */
    pass *passes;      /* [n_T, n_E, n_R] */
    ts_shared_arena *arena; /* the passes' intermediates: one pass computes at a time */
    int64_t n_run;     /* passes computed */
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
    if (!p->idx) /* shared by every layer */
        p->idx = host_leaf(b, d->idx, TS_I32, 3, (int64_t[]){1, p->T, p->E}, "decode_idx");
    int64_t cs[4] = {1, d->H, d->N, 2 * d->hd};
    const int entries_first[4] = {0, 2, 1, 3}; /* the head-major array as [1, N, H, 2·hd] */
    ts_tensor *kv_parts[2] = {k, v};
    p->kv[layer] = ts_set_output(ts_concat(g, kv_parts, 2, 3));
    ts_attention_params ap = *params;
    if (p->T > 1) ap.key_start = host_leaf(b, d->key_start, TS_I32, 2, (int64_t[]){1, p->T}, "decode_key_start");
    ap.extra = ts_permute(g, host_leaf(b, d->cache[layer], b->dt, 4, cs, "kv_cache"), entries_first);
    ap.extra_idx = p->idx;
    return ts_attention(g, q, k, v, &ap);
}

int64_t ts_dense_decode_logit_rows(ts_model_builder *b, ts_tensor **x) {
    dense_decoder *d = decoder_of(b);
    const pass *p = d->building;
    if (p->R < p->T) *x = ts_get_rows(b->g, *x, host_leaf(b, d->rows, TS_I32, 1, &p->R, "decode_rows"));
    return p->R;
}

/* ---------------------------------------------------------------- passes */

/* The next bucket after n: doubling (tokens, rows) or 4x (index slots), capped at cap. */
static int64_t next_bucket(int64_t n, int64_t factor, int64_t cap) { return n * factor < cap ? n * factor : cap; }

/* The bucket of first, first·factor, .. (capped at cap) that holds n (<= cap): its index, and
 * its size in *size. */
static int64_t bucket_of(int64_t n, int64_t first, int64_t factor, int64_t cap, int64_t *size) {
    int64_t i = 0, x = first < cap ? first : cap;
    for (; x < n; i++) x = next_bucket(x, factor, cap);
    *size = x;
    return i;
}

static int64_t e_first(const dense_decoder *d) { return E_FIRST < d->max_len ? E_FIRST : d->max_len; }

/* The token bucket that holds n (<= T_max): 1, 2, 4, .., T_STEP, then multiples of T_STEP (a
 * pass of a few decode tokens plus a prompt budget pads to the next T_STEP, not to twice). */
static int64_t t_bucket(const dense_decoder *d, int64_t n, int64_t *size) {
    if (n <= T_STEP) return bucket_of(n, 1, 2, T_STEP, size);
    int64_t k = (n + T_STEP - 1) / T_STEP;
    *size = k * T_STEP < d->T_max ? k * T_STEP : d->T_max;
    return bucket_of(T_STEP, 1, 2, T_STEP, &(int64_t){0}) + k - 1;
}

static void free_pass(pass *p) {
    ts_model_graph_free(p->mg);
    free(p->kv);
}

static ts_status build_pass(dense_decoder *d, pass *p, int64_t T, int64_t E, int64_t R, char *err, size_t err_size) {
    *p = (pass){.T = T, .E = E, .R = R, .kv = calloc((size_t)d->L, sizeof *p->kv)};
    if (!p->kv) {
        ts_error_printf(err, err_size, "dense decoder: out of memory");
        return TS_ERR_OOM;
    }
    ts_model_graph_options o = {.batch = 1, .seq = T};
    d->building = p;
    ts_status s = ts_model_graph_build_with(d->w, &o, (ts_decode_build *)(void *)d, &p->mg, err, err_size);
    d->building = NULL;
    ts_plan_options po = {.shared_arena = d->arena};
    if (s == TS_OK) s = ts_model_graph_alloc_with(p->mg, d->be, &po, NULL, err, err_size);
    if (s != TS_OK) {
        free_pass(p);
        *p = (pass){0};
    }
    return s;
}

/* The pass of the smallest shape with at least T tokens, E index slots and R logit rows, built
 * now if it never ran; NULL (*s and err say why) when it cannot be built. */
static pass *pass_for(dense_decoder *d, int64_t T, int64_t E, int64_t R, ts_status *s, char *err, size_t err_size) {
    int64_t t, e, r;
    int64_t ti = t_bucket(d, T, &t), ei = bucket_of(E, e_first(d), 4, d->max_len, &e);
    int64_t ri = bucket_of(R, 1, 2, t, &r);
    pass *p = &d->passes[(ti * d->n_E + ei) * d->n_R + ri];
    *s = p->mg ? TS_OK : build_pass(d, p, t, e, r, err, err_size);
    return *s == TS_OK ? p : NULL;
}

/* The steps' shapes up front - T = R = each token bucket up to a token per slot, with every E -
 * so that decoding never stalls on a build as a prefix grows into the next E; the rest (prompt
 * chunks, mixes) are built on first use. */
static ts_status build_steps(dense_decoder *d, char *err, size_t err_size) {
    ts_status s = TS_OK;
    for (int64_t E = e_first(d); s == TS_OK; E = next_bucket(E, 4, d->max_len)) {
        for (int64_t T = 1, t = 0; s == TS_OK && t < d->slots; T = t + 1) {
            t_bucket(d, T, &t);
            pass_for(d, t, E, t, &s, err, err_size);
        }
        if (E == d->max_len) break;
    }
    return s;
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

/* Blocks that appending n tokens to the slot takes from the free list (a shared block written
 * by several slots of one call is counted for each: at most one too many). */
static int64_t blocks_needed(const dense_decoder *d, int slot, int64_t n) {
    return ts_block_pool_needed(&d->pool, slot, d->len[slot], n);
}

/* ---------------------------------------------------------------- host side */

static void put(const dense_decoder *d, void *base, int64_t i, double v) {
    if (d->dt == TS_F64) ((double *)base)[i] = v;
    else ((float *)base)[i] = (float)v;
}

/* Packs the next pass from token *from of sequence *next on: whole sequences while they fit in
 * T_MAX tokens, then the head of the one that does not; moves (*next, *from) past them. Returns
 * the segments (d->segs) and sets *T to the tokens packed, *E to the longest prefix and *R to
 * the tokens whose logits are kept. */
static int pack(dense_decoder *d, int n, const ts_model_decoder_seq *seqs, int *next, int64_t *from, int64_t *T,
                int64_t *E, int64_t *R) {
    int64_t cap = d->T_max;
    int k = 0;
    *T = *E = *R = 0;
    while (*next < n && *T < cap) {
        const ts_model_decoder_seq *q = &seqs[*next];
        int64_t m = q->n - *from < cap - *T ? q->n - *from : cap - *T, first_kept = q->n - q->logit_rows;
        d->segs[k++] = (segment){.seq = *next, .from = *from, .m = m, .at = *T};
        *T += m;
        *E = d->len[q->slot] > *E ? d->len[q->slot] : *E;
        *R += *from + m > first_kept ? *from + m - (*from > first_kept ? *from : first_kept) : 0;
        *from += m;
        if (*from == q->n) (*next)++, *from = 0;
    }
    return k;
}

/* Token j of pass p at position pos of its sequence, in the segment starting at `at`. */
static void place_token(dense_decoder *d, const pass *p, int64_t j, int32_t id, int64_t pos, int64_t at) {
    int64_t half = d->hd / 2;
    d->ids[j] = id;
    for (int64_t k = 0; k < half; k++) put(d, d->angles, j * half + k, (double)pos * d->omega[k]);
    if (p->T > 1) d->key_start[j] = (int32_t)at;
}

/* The host inputs of pass p over the segments: ids, angles, segment starts, index lists (one per
 * token, the same for a segment's tokens), the logit rows; padding tokens after the `used`
 * packed ones at position 0, alone, with no cache entries. */
static void prepare(dense_decoder *d, const pass *p, const ts_model_decoder_seq *seqs, int n_segs, int64_t used) {
    int64_t r = 0;
    for (int i = 0; i < n_segs; i++) {
        const segment *sg = &d->segs[i];
        const ts_model_decoder_seq *q = &seqs[sg->seq];
        int64_t prefix = d->len[q->slot];
        int32_t *idx = d->idx + sg->at * p->E;
        for (int64_t e = 0; e < p->E; e++) idx[e] = e < prefix ? entry_of(d, q->slot, e) : -1;
        for (int64_t t = 0; t < sg->m; t++) {
            int64_t j = sg->at + t;
            if (t > 0) memcpy(d->idx + j * p->E, idx, (size_t)p->E * sizeof *idx);
            place_token(d, p, j, q->ids[sg->from + t], prefix + t, sg->at);
            if (sg->from + t >= q->n - q->logit_rows) d->rows[r++] = (int32_t)j;
        }
    }
    for (int64_t j = used; j < p->T; j++) {
        place_token(d, p, j, 0, 0, j);
        for (int64_t e = 0; e < p->E; e++) d->idx[j * p->E + e] = -1;
    }
    while (r < p->R) d->rows[r++] = 0;
}

/* After compute: segment sg's new tokens into the cache of its slot, head by head. */
static void commit(dense_decoder *d, const pass *p, const segment *sg, int slot) {
    size_t head = (size_t)(2 * d->hd) * d->esz;
    for (int64_t t = 0; t < sg->m; t++) {
        int64_t e = entry_of(d, slot, d->len[slot] + t);
        for (int64_t l = 0; l < d->L; l++)
            for (int64_t h = 0; h < d->H; h++)
                memcpy((char *)d->cache[l] + (size_t)(h * d->N + e) * head,
                       (const char *)p->kv[l]->data + (size_t)((sg->at + t) * d->H + h) * head, head);
    }
}

/* The logits of the i-th kept token of pass p, as f32 (a pass of R = T keeps every token's:
 * its row is the token's). */
static void read_logits(const dense_decoder *d, const pass *p, int64_t i, float *out) {
    int64_t V = d->c->vocab_size, at = (p->R == p->T ? d->rows[i] : i) * V;
    const void *src = p->mg->logits->data;
    if (d->dt == TS_F32) memcpy(out, (const float *)src + at, (size_t)V * sizeof *out);
    else
        for (int64_t v = 0; v < V; v++) out[v] = (float)((const double *)src)[at + v];
}

static ts_status run(dense_decoder *d, const pass *p) {
    d->n_run++;
    ts_status s = ts_tensor_write(p->mg->ids, d->ids, (size_t)p->T * sizeof(int32_t));
    return s == TS_OK ? ts_graph_compute(p->mg->graph) : s;
}

/* One pass over the call's next tokens (from sequence *next, token *from on); the logits of its
 * kept tokens at *out_row on. */
static ts_status run_next(dense_decoder *d, int n, const ts_model_decoder_seq *seqs, int *next, int64_t *from,
                          float *logits, int64_t *out_row) {
    int64_t T, E, R;
    int n_segs = pack(d, n, seqs, next, from, &T, &E, &R);
    ts_status s;
    char err[256];
    const pass *p = pass_for(d, T, E, R > 0 ? R : 1, &s, err, sizeof err);
    if (!p) return s;
    prepare(d, p, seqs, n_segs, T);
    s = run(d, p);
    if (s != TS_OK) return s;
    for (int i = 0; i < n_segs; i++) {
        int slot = seqs[d->segs[i].seq].slot;
        commit(d, p, &d->segs[i], slot);
        d->len[slot] += d->segs[i].m;
    }
    for (int64_t i = 0; i < R; i++) read_logits(d, p, i, logits + (*out_row + i) * d->c->vocab_size);
    *out_row += R;
    return TS_OK;
}

/* All sequences' tokens in as few passes of at most T_MAX tokens as hold them; all or nothing
 * (a failed pass forgets the passes before it). */
static ts_status dense_batch(void *impl, int n, const ts_model_decoder_seq *seqs, float *logits) {
    dense_decoder *d = impl;
    int64_t need = 0, out_row = 0, from = 0;
    for (int i = 0; i < n; i++) need += blocks_needed(d, seqs[i].slot, seqs[i].n);
    if (need > d->pool.n_free) return TS_ERR_OOM;
    for (int i = 0; i < n; i++) {
        d->start[i] = d->len[seqs[i].slot];
        reserve(d, seqs[i].slot, seqs[i].n);
    }
    ts_status s = TS_OK;
    for (int next = 0; s == TS_OK && next < n;) s = run_next(d, n, seqs, &next, &from, logits, &out_row);
    for (int i = 0; s != TS_OK && i < n; i++) {
        d->len[seqs[i].slot] = d->start[i];
        release_to(d, seqs[i].slot, d->start[i]);
    }
    return s;
}

static int64_t dense_passes(const void *impl) { return ((const dense_decoder *)impl)->n_run; }

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
    for (int64_t i = 0; d->passes && i < d->n_T * d->n_E * d->n_R; i++) free_pass(&d->passes[i]);
    free(d->passes);
    ts_shared_arena_free(d->arena);
    for (int64_t l = 0; d->cache && l < d->L; l++) free(d->cache[l]);
    free(d->cache);
    free(d->angles);
    free(d->idx);
    free(d->ids);
    free(d->key_start);
    free(d->rows);
    free(d->start);
    free(d->segs);
    free(d->omega);
    free(d->len);
    ts_block_pool_free(&d->pool);
    free(d);
}

static const ts_decoder_ops dense_ops = {
    .free = dense_free,
    .reset = dense_reset,
    .length = dense_length,
    .batch = dense_batch,
    .passes = dense_passes,
    .truncate = dense_truncate,
    .state_bytes = dense_state_bytes,
    .fork = dense_fork,
    .pool = dense_pool,
};

/* The caches, the block pool (every block free), the host inputs sized for the largest pass,
 * and the (unbuilt) passes. */
static ts_status alloc_host(dense_decoder *d) {
    int64_t T = d->T_max;
    d->cache_bytes = (size_t)(d->N * d->H * 2 * d->hd) * d->esz;
    d->cache = calloc((size_t)d->L, sizeof *d->cache);
    d->angles = calloc((size_t)(T * d->hd / 2), d->esz);
    d->idx = calloc((size_t)(T * d->max_len), sizeof *d->idx);
    d->ids = calloc((size_t)T, sizeof *d->ids);
    d->key_start = calloc((size_t)T, sizeof *d->key_start);
    d->rows = calloc((size_t)T, sizeof *d->rows);
    d->start = calloc((size_t)d->slots, sizeof *d->start);
    d->segs = calloc((size_t)d->slots, sizeof *d->segs);
    d->passes = calloc((size_t)(d->n_T * d->n_E * d->n_R), sizeof *d->passes);
    d->omega = calloc((size_t)(d->hd / 2), sizeof *d->omega);
    d->len = calloc((size_t)d->slots, sizeof *d->len);
    if (!ts_block_pool_init(&d->pool, d->slots, BLOCK, blocks_for(d->N), d->max_len) || !d->cache || !d->angles ||
        !d->idx || !d->ids || !d->key_start || !d->rows || !d->start || !d->segs || !d->passes || !d->omega || !d->len ||
        ts_shared_arena_new(d->be, &d->arena) != TS_OK)
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
    *d = (dense_decoder){.c = c, .w = w, .be = be, .dt = ts_model_weights_dtype(w), .slots = slots, .max_len = max_len,
                         .L = c->num_hidden_layers, .H = c->num_attention_heads, .hd = c->head_dim,
                         .N = blocks_for(pool_positions) * BLOCK};
    d->esz = ts_dtype_bytes(d->dt, 1);
    d->T_max = (slots + BUDGET + T_STEP - 1) / T_STEP * T_STEP;
    d->n_T = t_bucket(d, d->T_max, &(int64_t){0}) + 1;
    d->n_R = bucket_of(d->T_max, 1, 2, d->T_max, &(int64_t){0}) + 1;
    d->n_E = bucket_of(max_len, e_first(d), 4, max_len, &(int64_t){0}) + 1;
    ts_status s = alloc_host(d);
    if (s != TS_OK) {
        ts_error_printf(err, err_size, "dense decoder: out of memory for a pool of %lld positions (%d slots of %lld)",
                        (long long)d->N, slots, (long long)max_len);
    } else if (!ts_v4_rope_freqs(c->rope_theta, (int)d->hd, NULL, d->omega, NULL, NULL)) {
        ts_error_printf(err, err_size, "dense decoder: no RoPE for head_dim %lld, rope_theta %g", (long long)d->hd,
                        c->rope_theta);
        s = TS_ERR_INVALID_ARG;
    } else {
        s = build_steps(d, err, err_size);
    }
    if (s != TS_OK) {
        dense_free(d);
        return s;
    }
    *out = d;
    return TS_OK;
}
