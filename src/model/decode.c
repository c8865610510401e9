/* decode.c - incremental decoding of DeepSeek-V4 (spec §2.13), the V4 implementation of
 * decoder_impl.h: sequences in `slots` slots advance by one token per step (any subset of the
 * slots together), by chunks of tokens (prompts, drafts), or any mix (a batch), against per-sequence
 * caches instead of the whole prefix, and can be rewound by a few tokens (truncate) or copied
 * into another slot with the same bound (fork).
 *
 * State (spec §2.13's split): a fixed "state cache" per slot - per layer host arrays of one row
 * per sequence (in the weights' dtype), indexed by POSITION so that nothing has to be undone to
 * rewind:
 *   ring   [Rc, c]       the last Rc = R + V4_REWIND keys (K = V, after norm and RoPE; R =
 *                        window - 1 are visible to a query) at position % Rc;
 *   proj   [P + 2, k] x 2  the compressor's projections C and Z (without ape) of the last P
 *                        positions at position % P, P a multiple of m covering the current block,
 *                        (CSA) the previous one whose series b it overlaps, and V4_REWIND more;
 *                        then two constant rows: zero, and "void" (Z = -inf: what precedes
 *                        block 0, weight exactly 0);
 * on CSA layers the indexer's own projections [P + 2, 2·index_head_dim] x 2, and the MTP
 * block's kept streams and tokens - and a paged cache of the completed compressed entries
 * (NB = max_len / m per sequence) and, on CSA layers, the indexer's compressed keys: a pool of
 * blocks shared by all slots (block_pool.h: a block table per slot, reference counts, a free
 * list), a block covering the least common multiple of the main layers' ratios (spec: lcm(4,
 * 128) = 128 positions) and holding every layer's entries of that span, so one table serves all
 * layers. A slot holds the blocks of its len positions (ceil(len / block)): taken as it grows
 * (a batch counts them before touching anything, TS_ERR_OOM with every slot unchanged
 * when too few are free), given back on reset / truncate; a fork shares the source's blocks
 * (an entry depends only on the tokens up to its block's end), and a shared block a slot is
 * about to write into (the partly filled last one) is first copied. The MTP block's entries stay
 * private per slot (pool_shape says why). k = c for HCA, 2c for CSA (series b | a). A block's
 * entry is pooled inside the pass that completes it: each of its slots is gathered from the
 * ring (positions before the pass, or a constant row) plus a row gathered from the pass's own
 * projections (or zeros); entries are filed into the cache after compute. A one-token pass
 * (a step) in which no row completes a layer's block skips that layer's pooling nodes and
 * writes zeros in place of the masked entry (skippable_pooling). Rewinding to len only
 * needs len >= (furthest length reached since the last reset) - V4_REWIND: the ring and the
 * projection rings still hold those positions, and stale entries past len are invisible until
 * recomputed. A fork has the same bound on src (dst gets a copy of src's state rows).
 *
 * Passes: a graph per shape [b rows, T tokens] - the V4 graph of model_graph.c with two hooks
 * (model_internal.h): each row's RoPE angles, and the attention's extra entries. Per layer the
 * rings of all rows and the entries (pool, or private) are one array, keys [B·Rc + NE, c], bound
 * as one leaf that every row sees through a stride-0 expansion (nothing copied), with per-query
 * GLOBAL index lists built by the host: the visible ring positions of the row, then the usable
 * compressed entries found through its slot's block table (HCA: all completed; CSA: the
 * indexer's top-k over the row's cached keys - gathered from the pool by the host's list - and
 * the pass's new ones, each pick mapped to its global entry by a host-built table). The pass's
 * own tokens are the attention's ordinary keys (causal, window). A one-token pass leaves the
 * keys as the extras uncopied and puts the entry its token may complete in front of the token's
 * key instead, hidden by key_start unless the token completes the block (HCA) or the indexer
 * picks it (CSA). A longer pass, which must append its entries to the extras (a copy), gathers
 * each row's own view instead - ring, then its NB entries (host-listed), then the pass's - and
 * indexes it locally, so a chunk copies the row's cache, not the whole pool. A batch (any mix
 * of sequences: single tokens, prompt chunks, drafts) breaks each sequence into chunks of 64,
 * 56, .., 8, 4, 2, 1 tokens (the last one padded up to the next such length when that is at most a
 * quarter padding: chunk_for) and runs one pass per chunk length, largest first, every sequence with a
 * chunk of that length in it (up to V4_PASS_TOKENS tokens a pass): the single tokens of the
 * generating sequences and the prompts' last ones meet in the final T = 1 pass. A pass uses the
 * smallest b in 1, 2, 4, .., slots that holds its sequences, and its head computes the logits
 * of each row's last token only unless some row asks for more (group_pass). Graphs are built on first use
 * and bound to the same state arrays: a graph of b rows sees the first b rows of the per-slot
 * arrays, so a pass first swaps the state rows of its slots into rows [0, b) (slot <-> row
 * maps; nothing moves while the set of active slots stays put; the pool never moves). An idle
 * row inside b is masked, its outputs ignored. Everything else - mHC, MoE, hash routing, the head - is the ordinary per-token graph.
 * Decoding a sequence in steps, chunks or both gives the full forward's logits
 * (tests/test_decode.c).
 *
 * MTP (models with an MTP block; ts_model_decoder_mtp, the speculative draft): the block is one
 * more attention layer with the same machinery - layer index L, its own state (ratio
 * compress_ratios[L]) and its own one-row passes, model_graph.c's mtp() under the same hooks,
 * over the main model's final streams as a host input. Main passes output those streams; they
 * and the tokens of the last V4_KEEP positions are kept per slot (rings by position). The block
 * runs over a position only once the token after it is final and then never has to be undone:
 * it lags the sequence (mlen <= len), catching up on a draft call, and truncate takes mlen down
 * to len - 1 at most (the token after position len - 1 is open again; never more than
 * V4_REWIND - 1 behind its furthest reach). Logits equal the
 * training graph's mtp_logits (tests/test_speculative.c). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/block_pool.h"
#include "model/decoder_impl.h"
#include "model/model_internal.h"

#define V4_REWIND 16    /* tokens truncate can always take back behind the furthest length */
#define V4_CHUNK 64     /* tokens per row of a pass at most */
#define V4_CHUNK_STEP 8 /* chunk lengths past it are its multiples (chunk_fill) */
#define V4_PASS_TOKENS 128 /* rows x tokens of a pass of chunks at most (single tokens: any rows) */
#define V4_MAX_GRAPHS 160 /* one-token shapes (<= 32 row counts) + chunk shapes (<= 36 pairs of rows
                           * and length x 3 logit row counts) + MTP shapes (11) */
#define V4_KEEP (TS_MODEL_MTP_MAX_LAG + V4_REWIND) /* positions whose final streams and ids are kept */

typedef struct {
    void *data;       /* [B rows, row_elems] */
    size_t row_bytes;
} state_array;

typedef struct {
    int64_t m;        /* compression ratio; 0: window only (also when no block fits in max_len) */
    bool csa;
    int64_t R, Rc;    /* visible ring keys (window - 1) and ring capacity (0 without a window) */
    int64_t NB, P;    /* compressed entries of a sequence; projection ring positions */
    int64_t per_block;       /* entries per pool block (block_positions / m); 0: private entries */
    int64_t NE;              /* entries in the arrays: pool blocks x per_block, or B x NB */
    void *keys;              /* [B·Rc + NE, c]: the rows' rings, then the entries */
    void *proj_c, *proj_z;   /* [B, P + 2, k] */
    void *iproj_c, *iproj_z; /* CSA: [B, P + 2, 2·ihd] */
    void *ikeys;             /* CSA: [NE, ihd] */
} dec_layer;

/* One layer of a pass graph: its host-written inputs and the outputs read after compute. */
typedef struct {
    int64_t nb;             /* blocks the pass may complete: ceil(T / m) */
    int64_t E;              /* host-built index slots per query */
    bool lead;              /* T = 1: the new entry leads the keys instead of joining the extras */
    bool local;             /* the extras are the rows' own views, [ring | NB entries | the pass's]
                             * (a pass that appends its entries), else the keys array itself */
    int32_t *view_rows;     /* local: [b, Rc + NB]: each row's ring and entries among the keys */
    int32_t *key_start;     /* lead, HCA: [b, 1]: 0 when the token completes its block, else 1 */
    int32_t *idx;           /* [b, T, E]: visible ring positions (+ HCA entries) */
    int32_t *ring_rows;     /* [b, nb·S]: the blocks' slots (S = m, CSA 2m) in the ring ... */
    int32_t *pass_rows;     /* [b, nb·S]: ... plus the pass's token that fills a slot (1 + r·T + t;
                             * 0: a zero row) */
    void *block_angles;     /* [b, nb, r/2]: RoPE of each block's start */
    void *imask;            /* CSA: [b, T, NB + nb] (0 / -inf) */
    int32_t *ikey_rows;     /* CSA: [b, NB]: each row's cached indexer keys among ikeys */
    float *pick_extra;      /* CSA: [1 + b·(NB + nb)]: -1, then the extra entry of each row's pick */
    float *pick_row;        /* CSA: [b]: where row r's picks start in pick_extra */
    ts_tensor *kv;          /* the tokens' keys [b, T, 1, c] */
    ts_tensor *out_c, *out_z, *entry;    /* projections [b, T, k], entries [b, nb, c] */
    ts_tensor *iout_c, *iout_z, *ientry; /* the indexer's */
    int pool_nodes[2][2];   /* T = 1: the nodes [first, last) that pool entry and ientry (see
                             * skippable_pooling); [0, 0) when they must always run */
} pass_layer;

typedef struct v4_decoder v4_decoder;

/* A pass graph (the builder's opaque dec while it is recorded). */
struct ts_decode_build {
    v4_decoder *dec;
    int64_t b, T, R;        /* rows, tokens per row, logit rows per row (the last R tokens) */
    bool mtp;               /* the MTP block over kept streams (layer L) instead of the main layers */
    int64_t l0, l1;         /* the layers it runs: [0, L) or [L, L + 1) */
    ts_model_graph *mg;
    pass_layer *layers;     /* [n_layers], those in [l0, l1) used */
    ts_tensor *streams;     /* main passes of a model with MTP: the final streams [b, T, n, d] */
    void *mtp_x;            /* MTP passes: the main model's streams at the pass's positions [1, T, n, d] */
    void *angles[2];        /* [b, T, 1, r/2]: rope_theta, compressed layers' base + YaRN */
    ts_tensor *angle_leaf[2];
};
typedef struct ts_decode_build pass;

struct v4_decoder {
    const ts_v4_config *c;
    const ts_model_weights *w;
    ts_backend *be;
    ts_dtype dt;
    size_t esz;
    int64_t B, max_len, half;
    int64_t n_layers;       /* L, + 1 with an MTP block (its state is layer L's) */
    int64_t nd;             /* hc_mult x hidden_size: one position's streams */
    dec_layer *layers;
    ts_block_pool pool;     /* the main layers' entries, blocks of the lcm of their ratios */
    void **owned;           /* every state allocation */
    int n_owned;
    state_array *arrays;    /* every per-row part of them, for row swaps */
    int n_arrays;
    size_t state_bytes;
    void *swap_tmp;         /* one row of the widest array */
    int64_t *len, *reach;   /* [slot]: tokens now, the furthest length since the last reset */
    int64_t *mlen;          /* [slot]: positions the MTP block has covered (<= len) */
    void *streams;          /* with MTP: [B, V4_KEEP, nd] the final streams of position q at q % V4_KEEP */
    int32_t *tokens;        /* with MTP: [B, V4_KEEP] the token fed at position q, likewise */
    int *row_of, *slot_of;  /* slot <-> state row */
    bool *stepping;         /* [slot]: in the pass being run */
    int *group, *group_slots; /* [B] scratch of a batch: a pass's sequences and their slots */
    int64_t *done, *logit_at; /* [B] scratch of a batch, per sequence: tokens in, its first logit row */
    int64_t *filled;        /* [B] scratch of a batch: real tokens of each row of a pass */
    int32_t *ids;           /* [max(B, V4_PASS_TOKENS)] */
    int64_t n_runs;         /* passes computed */
    double *omega[2];       /* RoPE frequencies: main, compressed */
    pass *passes[V4_MAX_GRAPHS];
    int n_passes;
    ts_shared_arena *arena; /* the passes' intermediates: one pass computes at a time */
};

/* ---------------------------------------------------------------- graph hooks */

static ts_tensor *bound(ts_model_builder *b, void *host, ts_dtype dt, int nd, const int64_t *shape, const char *name) {
    ts_tensor *t = ts_new_tensor(b->g, dt, nd, shape, name);
    if (t && ts_tensor_bind_host(t, host) != TS_OK) {
        ts_graph_set_error(b->g, TS_ERR_INTERNAL, "decoder: cannot bind %s", name);
        return NULL;
    }
    return t;
}

/* A new zeroed host array of the pass, bound to a new leaf (*leaf; NULL on error). */
static void *input(ts_model_builder *b, ts_dtype dt, int nd, const int64_t *shape, const char *name, ts_tensor **leaf) {
    int64_t n = 1;
    for (int i = 0; i < nd; i++) n *= shape[i];
    void *host = calloc((size_t)(n > 0 ? n : 1), ts_dtype_bytes(dt, 1));
    *leaf = host ? bound(b, host, dt, nd, shape, name) : NULL;
    if (!host) ts_graph_set_error(b->g, TS_ERR_OOM, "decoder: out of memory for %s", name);
    return host;
}

int64_t ts_decode_logit_rows(const ts_model_builder *b) { return b->dec->R; }

ts_tensor *ts_decode_token_angles(ts_model_builder *b, bool compressed_layer) {
    pass *p = b->dec;
    int k = compressed_layer;
    if (!p->angle_leaf[k]) {
        int64_t s[4] = {b->B, b->T, 1, p->dec->half};
        p->angles[k] = input(b, b->dt, 4, s, k ? "decode_angles_compressed" : "decode_angles", &p->angle_leaf[k]);
    }
    return p->angle_leaf[k];
}

bool ts_decode_mtp_input(ts_model_builder *b, ts_tensor **X) {
    pass *p = b->dec;
    if (!p->mtp) return false;
    int64_t s[4] = {b->B, b->T, b->c->hc_mult, b->c->hidden_size};
    p->mtp_x = input(b, b->dt, 4, s, "decode_mtp_streams", X);
    return true;
}

void ts_decode_keep_streams(ts_model_builder *b, ts_tensor *X) {
    pass *p = b->dec;
    if (p->dec->streams) p->streams = ts_set_output(X);
}

/* Where each block slot comes from: a ring row + a row of the pass's projections (or zeros). */
typedef struct {
    ts_tensor *ring_rows, *pass_rows;
} slot_gather;

/* CSA block slots [B, nb, 2m, 2c] -> [B, nb, 2m, c]: the previous block's series b (channels
 * [0, c) of slots [0, m)), then this block's series a (channels [c, 2c) of slots [m, 2m)). */
static ts_tensor *csa_series(ts_graph *g, ts_tensor *X, int64_t m, int64_t c) {
    ts_tensor *parts[2] = {ts_slice(g, ts_slice(g, X, 2, 0, m), 3, 0, c),
                           ts_slice(g, ts_slice(g, X, 2, m, m), 3, c, c)};
    return ts_concat(g, parts, 2, 2);
}

/* The rows of the pass's projections p [B, T, k] each block slot takes (ids into a zero row,
 * then p's rows): one gather instead of B matmuls by a 0/1 selection, with the same values. */
static ts_tensor *pass_rows(ts_graph *g, ts_tensor *ids, ts_tensor *p) {
    int64_t k = p->shape[2], zs[2] = {1, k};
    ts_tensor *rows[2] = {ts_fill(g, p->dtype, 2, zs, 0.0f), ts_reshape_2d(g, p, p->shape[0] * p->shape[1], k)};
    return ts_get_rows(g, ts_concat(g, rows, 2, 0), ids);
}

/* The entries [b, nb, c] of the blocks the pass may complete; CSA blocks read slots [0, m) (the
 * previous block) for series b and [m, 2m) for series a. The pass's projections (without ape,
 * as the ring keeps them) go to *out_c / *out_z. */
static ts_tensor *pass_entries(ts_model_builder *b, const dec_layer *L, const pass_layer *G, const slot_gather *sg,
                               ts_tensor *angles, const ts_v4_compressor_w *w, ts_tensor *x, int64_t c, void *ring_c,
                               void *ring_z, ts_tensor **out_c, ts_tensor **out_z, int pool_nodes[2]) {
    ts_graph *g = b->g;
    int64_t B = b->B, m = L->m, k = L->csa ? 2 * c : c, S = L->csa ? 2 * m : m;
    int64_t rs[2] = {B * (L->P + 2), k}, s4[4] = {B, G->nb, S, k};
    *out_c = ts_set_output(ts_matmul(g, x, w->wkv, false, true));
    *out_z = ts_set_output(ts_matmul(g, x, w->wgate, false, true));
    pool_nodes[0] = ts_graph_n_nodes(g); /* the projections go to the rings every pass; the pooling ... */
    ts_tensor *rc = bound(b, ring_c, b->dt, 2, rs, "decode_proj_c");
    ts_tensor *rz = bound(b, ring_z, b->dt, 2, rs, "decode_proj_z");
    ts_tensor *C = ts_add(g, ts_get_rows(g, rc, sg->ring_rows), pass_rows(g, sg->pass_rows, *out_c));
    ts_tensor *Z = ts_add(g, ts_get_rows(g, rz, sg->ring_rows), pass_rows(g, sg->pass_rows, *out_z));
    C = ts_reshape(g, C, 4, s4);
    Z = ts_reshape(g, Z, 4, s4);
    ts_tensor *ape = w->ape;
    if (L->csa) {
        ts_tensor *aa[2] = {ts_slice(g, ape, 1, 0, c), ts_slice(g, ape, 1, c, c)};
        C = csa_series(g, C, m, c);
        Z = csa_series(g, Z, m, c);
        ape = ts_concat(g, aa, 2, 0);
    }
    ts_tensor *entries =
        ts_v4_compress_pool(g, C, ts_add(g, Z, ape), w->norm, angles, (int)b->c->qk_rope_head_dim, b->eps);
    pool_nodes[1] = ts_graph_n_nodes(g); /* ... only when a block completes */
    return entries;
}

/* CSA: the indexer's picks among the row's cached keys (gathered from the pool by its block
 * table) and the pass's new ones, as extra entries: pick i of row r -> pick_extra[1 + r·(NB + nb)
 * + i] (host-built: the cache's entry i, or for i >= NB the pass's entry i - NB); -1 stays -1.
 * G->lead: the new entry (i = NB) maps to -1 and *key_start [B, 1] = 0 when it was picked, else 1
 * (picks never exceed NB there, so i - (NB - 1) is 1 for it and <= 0 otherwise). The map goes
 * through f32, exact below 2^24 entries (checked at creation). */
static ts_tensor *indexer_picks(ts_model_builder *b, int layer, const char *prefix, const dec_layer *L, pass_layer *G,
                                const slot_gather *sg, ts_tensor *bang, ts_tensor *x, ts_tensor *cq,
                                ts_tensor **key_start) {
    const ts_v4_config *c = b->c;
    ts_graph *g = b->g;
    int64_t B = b->B, T = b->T, ihd = c->index_head_dim, row = L->NB + G->nb;
    int64_t ks[2] = {L->NE, ihd}, rs[2] = {B, L->NB}, ms[3] = {B, T, row}, c3[3] = {B, T, c->q_lora_rank};
    int64_t ts[2] = {1 + B * row, 1}, os[3] = {B, 1, 1};
    ts_v4_compressor_w iw = ts_mb_compressor_weights(b, prefix, "attn.indexer.");
    G->ientry = ts_set_output(
        pass_entries(b, L, G, sg, bang, &iw, x, ihd, L->iproj_c, L->iproj_z, &G->iout_c, &G->iout_z, G->pool_nodes[1]));
    ts_tensor *rows, *mask, *table, *offset;
    G->ikey_rows = input(b, TS_I32, 2, rs, "decode_index_key_rows", &rows);
    ts_tensor *kk[2] = {ts_get_rows(g, bound(b, L->ikeys, b->dt, 2, ks, "decode_index_keys"), rows), G->ientry};
    G->imask = input(b, b->dt, 3, ms, "decode_index_mask", &mask);
    G->pick_extra = input(b, TS_F32, 2, ts, "decode_pick_extra", &table);
    G->pick_row = input(b, TS_F32, 3, os, "decode_pick_row", &offset);
    for (int64_t r = 0; G->pick_row && r < B; r++) G->pick_row[r] = (float)(1 + r * row);
    if (G->pick_extra) G->pick_extra[0] = -1.0f;
    char ip[TS_MODEL_TENSOR_NAME_MAX];
    snprintf(ip, sizeof ip, "%sattn.indexer.", prefix);
    ts_tensor *picks = ts_v4_indexer_select(g, x, ts_reshape(g, cq, 3, c3), ts_mb_param(b, ip, "wq_b.weight"),
                                            ts_mb_param(b, ip, "weights_proj.weight"), ts_concat(g, kk, 2, 1),
                                            c->index_n_heads, ihd, ts_decode_token_angles(b, true),
                                            (int)c->qk_rope_head_dim, mask, c->index_topk, NULL);
    b->mg->index_idx[layer] = ts_set_output(picks);
    ts_tensor *one = ts_fill(g, TS_F32, 1, (int64_t[]){1}, 1.0f), *fp = ts_cast(g, picks, TS_F32);
    if (G->lead) {
        ts_tensor *below = ts_fill(g, TS_F32, 1, (int64_t[]){1}, (float)(1 - L->NB));
        ts_tensor *hit = ts_clamp(g, ts_add(g, fp, below), 0.0f, 1.0f);
        *key_start = ts_cast(g, ts_sub(g, one, ts_sum(g, hit, -1, false)), TS_I32);
    }
    /* valid · (pick + 1 + r·(NB + nb)): 0 (the -1 entry) for no pick */
    ts_tensor *valid = ts_clamp(g, ts_add(g, fp, one), 0.0f, 1.0f);
    ts_tensor *at = ts_cast(g, ts_mul(g, valid, ts_add(g, fp, offset)), TS_I32);
    return ts_cast(g, ts_reshape(g, ts_get_rows(g, table, at), 3, picks ? picks->shape : ms), TS_I32);
}

/* The attention's extras: the layer's keys array - every row's ring, then the entries - as one
 * leaf seen by every row (stride-0 expansion, nothing copied), indexed by the host's global
 * index lists. A pass that appends its entries (a chunk) must copy anyway, and copies only each
 * row's own view - its ring and its entries gathered by the host's list - not the whole pool. */
void ts_decode_cache_entries(ts_model_builder *b, int layer, const char *prefix, ts_tensor *x, ts_tensor *cq,
                             ts_tensor **kv, ts_attention_params *ap) {
    pass *p = b->dec;
    const dec_layer *L = &p->dec->layers[layer];
    pass_layer *G = &p->layers[layer];
    ts_graph *g = b->g;
    int64_t B = b->B, T = b->T, hd = b->c->head_dim, N = p->dec->B * L->Rc + L->NE;
    ts_tensor **extra = &ap->extra, **extra_idx = &ap->extra_idx;
    G->kv = ts_set_output(*kv);
    G->nb = L->m > 0 ? (T + L->m - 1) / L->m : 0;
    G->lead = L->m > 0 && T == 1 && b->c->sliding_window >= 2; /* the window must reach the lead key */
    G->E = L->R + (L->m > 0 && !L->csa ? L->NB + (G->lead ? 0 : G->nb) : 0);
    G->local = L->m > 0 && !G->lead;
    int64_t ls[4] = {1, N, 1, hd}, cs[4] = {B, N, 1, hd}, is[3] = {B, T, G->E};
    int64_t vs[2] = {B, L->Rc + L->NB}, v4[4] = {B, L->Rc + L->NB, 1, hd};
    ts_tensor *cache = N > 0 ? bound(b, L->keys, b->dt, 4, ls, "decode_keys") : NULL, *view;
    if (G->local) {
        G->view_rows = input(b, TS_I32, 2, vs, "decode_view_rows", &view);
        cache = ts_reshape(g, ts_get_rows(g, ts_reshape_2d(g, cache, N, hd), view), 4, v4);
    } else if (cache) {
        cache = ts_expand(g, cache, 4, cs);
    }
    ts_tensor *idx = NULL;
    if (G->E > 0) G->idx = input(b, TS_I32, 3, is, "decode_idx", &idx);
    *extra = cache;
    *extra_idx = idx;
    if (L->m == 0) return;

    int64_t n_slots = G->nb * (L->csa ? 2 : 1) * L->m;
    int64_t gs[2] = {B, n_slots}, as[3] = {B, G->nb, p->dec->half};
    slot_gather sg;
    ts_tensor *bang;
    G->ring_rows = input(b, TS_I32, 2, gs, "decode_ring_rows", &sg.ring_rows);
    G->pass_rows = input(b, TS_I32, 2, gs, "decode_pass_rows", &sg.pass_rows);
    G->block_angles = input(b, b->dt, 3, as, "decode_block_angles", &bang);
    ts_v4_compressor_w w = ts_mb_compressor_weights(b, prefix, "attn.");
    G->entry = ts_set_output(
        pass_entries(b, L, G, &sg, bang, &w, x, hd, L->proj_c, L->proj_z, &G->out_c, &G->out_z, G->pool_nodes[0]));
    int64_t e4[4] = {B, G->nb, 1, hd}, ks[2] = {B, 1};
    ts_tensor *ex[2] = {cache, ts_reshape(g, G->entry, 4, e4)};
    if (G->lead) { /* [entry, token]: the token at position 1, the entry visible from key_start 0 */
        ts_tensor *keys[2] = {ex[1], *kv};
        *kv = ts_concat(g, keys, 2, 1);
        if (!L->csa) G->key_start = input(b, TS_I32, 2, ks, "decode_key_start", &ap->key_start);
    } else {
        *extra = ts_concat(g, ex, 2, 1); /* [B, Rc + NB + nb, 1, c]: the pass's entries last */
    }
    if (!L->csa) return;
    ts_tensor *mapped = indexer_picks(b, layer, prefix, L, G, &sg, bang, x, cq, &ap->key_start);
    ts_tensor *parts[2] = {idx, mapped};
    *extra_idx = idx ? ts_concat(g, parts, 2, 2) : mapped;
}

/* ---------------------------------------------------------------- passes */

static void free_pass(pass *p, int64_t n_layers) {
    if (!p) return;
    for (int64_t l = 0; p->layers && l < n_layers; l++) {
        pass_layer *G = &p->layers[l];
        free(G->idx);
        free(G->key_start);
        free(G->ring_rows);
        free(G->pass_rows);
        free(G->block_angles);
        free(G->imask);
        free(G->ikey_rows);
        free(G->view_rows);
        free(G->pick_extra);
        free(G->pick_row);
    }
    free(p->layers);
    free(p->angles[0]);
    free(p->angles[1]);
    free(p->mtp_x);
    ts_model_graph_free(p->mg);
    free(p);
}

/* A one-token pass completes a block of a compressed layer only at every m-th position, and
 * the entry it pools otherwise is masked (the HCA lead key behind key_start, the CSA indexer's
 * candidate at -inf): pooling it - gathering the block's projections, the softmax over its
 * slots - was about a tenth of a 16-row step of the tiny model. So a step skips the nodes that
 * pool an entry no row completes and writes zeros for it instead (finite, and masked like the
 * entry it stands for). That holds only if nothing else reads those nodes: checked here once
 * per graph, node by node; a range that fails is never skipped. */
static bool pooling_isolated(const ts_graph *g, const int range[2], const ts_tensor *entry) {
    if (range[1] <= range[0] || entry->id != range[1] - 1 || !ts_is_contiguous(entry) || !entry->data) return false;
    for (int i = 0; i < ts_graph_n_nodes(g); i++) {
        const ts_tensor *n = ts_graph_node(g, i);
        bool inside = i >= range[0] && i < range[1];
        if (inside && n != entry && (n->flags & TS_FLAG_OUTPUT)) return false;
        if (inside) continue;
        const ts_tensor *v = n->view_src;
        if (v && v != entry && v->id >= range[0] && v->id < range[1]) return false;
        for (int k = 0; k < n->n_src; k++) {
            const ts_tensor *src = n->src[k];
            if (src && src != entry && src->id >= range[0] && src->id < range[1]) return false;
        }
    }
    return true;
}

static void skippable_pooling(pass *p) {
    const ts_graph *g = p->mg->graph;
    int prev = 0; /* ranges must come in graph order */
    for (int64_t l = p->l0; l < p->l1; l++) {
        pass_layer *G = &p->layers[l];
        const ts_tensor *entries[2] = {G->entry, G->ientry};
        for (int k = 0; k < 2; k++) {
            int *r = G->pool_nodes[k];
            if (p->T != 1 || !entries[k] || r[0] < prev || !pooling_isolated(g, r, entries[k])) r[0] = r[1] = 0;
            if (r[1] > r[0]) prev = r[1];
        }
    }
}

static ts_status build_pass(v4_decoder *dec, int64_t b, int64_t T, int64_t R, bool mtp, pass **out, char *err,
                            size_t err_size) {
    pass *p = calloc(1, sizeof *p);
    if (p) p->layers = calloc((size_t)dec->n_layers, sizeof *p->layers);
    if (!p || !p->layers || dec->n_passes == V4_MAX_GRAPHS) {
        free_pass(p, dec->n_layers);
        ts_error_printf(err, err_size, "decoder: out of memory for a pass graph");
        return TS_ERR_OOM;
    }
    p->dec = dec;
    p->b = b;
    p->T = T;
    p->R = R;
    p->mtp = mtp;
    p->l0 = mtp ? dec->c->num_hidden_layers : 0;
    p->l1 = mtp ? dec->n_layers : dec->c->num_hidden_layers;
    ts_model_graph_options o = {.batch = b, .seq = T};
    ts_status s = ts_model_graph_build_with(dec->w, &o, p, &p->mg, err, err_size);
    ts_plan_options po = {.shared_arena = dec->arena};
    if (s == TS_OK) s = ts_model_graph_alloc_with(p->mg, dec->be, &po, NULL, err, err_size);
    if (s != TS_OK) {
        free_pass(p, dec->n_layers);
        return s;
    }
    skippable_pooling(p);
    dec->passes[dec->n_passes++] = p;
    *out = p;
    return TS_OK;
}

/* The graph of b rows x T tokens with R logit rows (of the MTP block when mtp), built on first use. */
static ts_status get_pass(v4_decoder *dec, int64_t b, int64_t T, int64_t R, bool mtp, pass **out) {
    for (int i = 0; i < dec->n_passes; i++) {
        const pass *p = dec->passes[i];
        if (p->b == b && p->T == T && p->R == R && p->mtp == mtp) {
            *out = dec->passes[i];
            return TS_OK;
        }
    }
    char err[256];
    return build_pass(dec, b, T, R, mtp, out, err, sizeof err);
}

/* ---------------------------------------------------------------- state rows */

/* A zeroed state allocation of `bytes`, freed with the decoder. */
static void *owned_alloc(v4_decoder *dec, size_t bytes) {
    void *p = calloc(1, bytes > 0 ? bytes : 1);
    if (p) {
        dec->owned[dec->n_owned++] = p;
        dec->state_bytes += bytes;
    }
    return p;
}

/* Rows [B, row] at `at` move with their slots. */
static void *state_rows(v4_decoder *dec, void *at, size_t row) {
    if (at) dec->arrays[dec->n_arrays++] = (state_array){at, row};
    return at;
}

static void *state_alloc_bytes(v4_decoder *dec, size_t row) {
    return state_rows(dec, owned_alloc(dec, (size_t)dec->B * row), row);
}

static void *state_alloc(v4_decoder *dec, int64_t row_elems) {
    return state_alloc_bytes(dec, (size_t)row_elems * dec->esz);
}

static void swap_rows(v4_decoder *dec, int r1, int r2) {
    for (int i = 0; i < dec->n_arrays; i++) {
        const state_array *a = &dec->arrays[i];
        char *x = (char *)a->data + (size_t)r1 * a->row_bytes, *y = (char *)a->data + (size_t)r2 * a->row_bytes;
        memcpy(dec->swap_tmp, x, a->row_bytes);
        memcpy(x, y, a->row_bytes);
        memcpy(y, dec->swap_tmp, a->row_bytes);
    }
    int s1 = dec->slot_of[r1], s2 = dec->slot_of[r2];
    dec->slot_of[r1] = s2;
    dec->slot_of[r2] = s1;
    dec->row_of[s1] = r2;
    dec->row_of[s2] = r1;
}

/* Moves the state of the n slots marked in dec->stepping into rows [0, b), swapping with rows
 * of slots that sit this pass out. */
static void place_rows(v4_decoder *dec, int n, const int *slots, int64_t b) {
    int free_row = 0;
    for (int i = 0; i < n; i++) {
        int s = slots[i];
        if (dec->row_of[s] < b) continue;
        while (dec->stepping[dec->slot_of[free_row]]) free_row++;
        swap_rows(dec, dec->row_of[s], free_row);
    }
}

/* ---------------------------------------------------------------- host inputs and commits */

static void put(const v4_decoder *dec, void *base, int64_t i, double v) {
    if (dec->dt == TS_F64) ((double *)base)[i] = v;
    else ((float *)base)[i] = (float)v;
}

static void copy_elems(const v4_decoder *dec, void *dst, int64_t dst_i, const void *src, int64_t src_i, int64_t n) {
    memcpy((char *)dst + (size_t)dst_i * dec->esz, (const char *)src + (size_t)src_i * dec->esz, (size_t)n * dec->esz);
}

/* Where slot `at` (position q) comes from in a pass of T tokens from position p, for row r:
 * its ring row (a constant row when the pass fills it), and the pass's token if any. */
static void slot_source(const dec_layer *L, const pass_layer *G, int64_t r, int64_t T, int64_t p, int64_t q,
                        int64_t at) {
    int64_t ring = L->P; /* the zero row, nothing from the pass */
    bool in_pass = false;
    if (q < 0) ring = L->P + 1;
    else if (q < p) ring = q % L->P;
    else in_pass = q < p + T;
    G->ring_rows[at] = (int32_t)(r * (L->P + 2) + ring);
    G->pass_rows[at] = in_pass ? (int32_t)(1 + r * T + q - p) : 0;
}

/* Where entry i of row r lives among the layer's NE entries: in the pool block holding its
 * first position (held since the slot reached it), or in the row's private run. */
static int64_t entry_at(const v4_decoder *dec, const dec_layer *L, int64_t r, int64_t i) {
    if (L->per_block == 0) return r * L->NB + i;
    return (int64_t)ts_block_pool_block(&dec->pool, dec->slot_of[r], i * L->m) * L->per_block + i % L->per_block;
}

/* Where row r finds its `done` cached entries: its view of the keys (local passes: ring, then
 * entries), and on CSA layers its cached indexer keys and where the indexer's picks go. Entries
 * not cached yet are masked and read any valid row. */
static void entry_lists(const v4_decoder *dec, const dec_layer *L, const pass_layer *G, int64_t r, int64_t done) {
    int64_t ring = dec->B * L->Rc, row = L->NB + G->nb;
    int32_t *view = G->local ? G->view_rows + r * (L->Rc + L->NB) : NULL;
    int32_t *keys = L->csa ? G->ikey_rows + r * L->NB : NULL;
    float *picks = L->csa ? G->pick_extra + 1 + r * row : NULL;
    for (int64_t j = 0; view && j < L->Rc; j++) view[j] = (int32_t)(r * L->Rc + j);
    for (int64_t i = 0; i < done; i++) {
        int64_t cached = entry_at(dec, L, r, i);
        if (view) view[L->Rc + i] = (int32_t)(ring + cached);
        if (keys) keys[i] = (int32_t)cached;
        if (picks) picks[i] = (float)(G->local ? L->Rc + i : ring + cached);
    }
    for (int64_t i = done; i < L->NB; i++) {
        if (view) view[L->Rc + i] = (int32_t)ring;
        if (keys) keys[i] = 0;
        if (picks) picks[i] = -1.0f;
    }
    for (int64_t i = L->NB; picks && i < row; i++) picks[i] = G->lead ? -1.0f : (float)(L->Rc + i); /* the pass's */
}

/* Compressed-layer inputs of row r: which slots make up each block the pass may complete, the
 * blocks' RoPE, where its entries are (entry_lists), and which entries each query may use (HCA:
 * in its index list; CSA: the indexer's mask). p < 0: an idle row (every entry masked). */
static void prepare_blocks(const v4_decoder *dec, const dec_layer *L, const pass_layer *G, int64_t r, int64_t T,
                           int64_t p) {
    int64_t m = L->m, S = L->csa ? 2 * m : m, done = p > 0 ? p / m : 0, row = L->NB + G->nb;
    for (int64_t k = 0; k < G->nb; k++) {
        int64_t first = (done + k) * m - (L->csa ? m : 0);
        for (int64_t s = 0; s < S; s++) /* an idle row reads zero rows only */
            slot_source(L, G, r, T, p, p < 0 ? INT64_MAX : first + s, (r * G->nb + k) * S + s);
        for (int64_t j = 0; j < dec->half; j++)
            put(dec, G->block_angles, (r * G->nb + k) * dec->half + j, (double)((done + k) * m) * dec->omega[1][j]);
    }
    entry_lists(dec, L, G, r, done);
    for (int64_t t = 0; t < T; t++) {
        int64_t pos = p + t, qr = r * T + t;
        for (int64_t i = 0; i < row; i++) {
            /* cached entries completed before the pass, then the pass's own once complete */
            bool ok = p >= 0 && (i < L->NB ? i < done : (done + i - L->NB + 1) * m - 1 <= pos);
            if (L->csa) put(dec, G->imask, qr * row + i, ok ? 0.0 : -INFINITY);
            else if (i < L->NB || !G->lead)
                G->idx[qr * G->E + L->R + i] =
                    !ok ? -1 : (int32_t)(G->local ? L->Rc + i : dec->B * L->Rc + entry_at(dec, L, r, i));
            else G->key_start[r] = ok ? 0 : 1;
        }
    }
}

/* The host inputs of row r for T tokens from position p (p < 0: an idle row). */
static void prepare_row(const v4_decoder *dec, const pass *ps, int64_t r, int64_t p) {
    int64_t T = ps->T;
    for (int k = 0; k < 2; k++)
        for (int64_t t = 0; ps->angles[k] && t < T; t++)
            for (int64_t j = 0; j < dec->half; j++)
                put(dec, ps->angles[k], (r * T + t) * dec->half + j, p < 0 ? 0.0 : (double)(p + t) * dec->omega[k][j]);
    for (int64_t l = ps->l0; l < ps->l1; l++) {
        const dec_layer *L = &dec->layers[l];
        const pass_layer *G = &ps->layers[l];
        for (int64_t t = 0; t < T && L->R > 0; t++) { /* the ring positions a query sees before the pass */
            int32_t *idx = G->idx + (r * T + t) * G->E;
            int64_t q = p + t - L->R < 0 ? 0 : p + t - L->R, e = 0;
            for (; p >= 0 && q < p; q++) idx[e++] = (int32_t)((G->local ? 0 : r * L->Rc) + q % L->Rc);
            while (e < L->R) idx[e++] = -1;
        }
        if (L->m > 0) prepare_blocks(dec, L, G, r, T, p);
    }
}

/* Files the pass's projections of one compressor for the first n of its T tokens into the ring
 * and each block they completed into `entries` (rows of c elements, entry i at entries_at +
 * entry_at(i)). */
static void commit_comp(const v4_decoder *dec, const dec_layer *L, int64_t r, int64_t T, int64_t n, int64_t p,
                        int64_t c, void *ring_c, void *ring_z, const ts_tensor *out_c, const ts_tensor *out_z,
                        const ts_tensor *entry, int64_t nb, void *entries, int64_t entries_at) {
    int64_t k = L->csa ? 2 * c : c;
    for (int64_t t = 0; t < n; t++) {
        int64_t pos = p + t, at = (r * (L->P + 2) + pos % L->P) * k;
        copy_elems(dec, ring_c, at, out_c->data, (r * T + t) * k, k);
        copy_elems(dec, ring_z, at, out_z->data, (r * T + t) * k, k);
        int64_t blk = pos / L->m;
        if ((pos + 1) % L->m == 0 && blk < L->NB)
            copy_elems(dec, entries, (entries_at + entry_at(dec, L, r, blk)) * c, entry->data,
                       (r * nb + blk - p / L->m) * c, c);
    }
}

/* Files row r's pass results for its first n tokens (at positions p..p+n; the rest of the T
 * are padding, see chunk_for): each layer's keys, projections and completed entries, and
 * (main passes with MTP) the final streams and the tokens. */
static void commit_row(const v4_decoder *dec, const pass *ps, int64_t r, int64_t n, int64_t p) {
    int64_t T = ps->T, hd = dec->c->head_dim, ihd = dec->c->index_head_dim;
    for (int64_t t = 0; t < n && ps->streams; t++) {
        int64_t at = r * V4_KEEP + (p + t) % V4_KEEP;
        copy_elems(dec, dec->streams, at * dec->nd, ps->streams->data, (r * T + t) * dec->nd, dec->nd);
        dec->tokens[at] = dec->ids[r * T + t];
    }
    for (int64_t l = ps->l0; l < ps->l1; l++) {
        const dec_layer *L = &dec->layers[l];
        const pass_layer *G = &ps->layers[l];
        for (int64_t t = 0; t < n && L->Rc > 0; t++)
            copy_elems(dec, L->keys, (r * L->Rc + (p + t) % L->Rc) * hd, G->kv->data, (r * T + t) * hd, hd);
        if (L->m == 0) continue;
        commit_comp(dec, L, r, T, n, p, hd, L->proj_c, L->proj_z, G->out_c, G->out_z, G->entry, G->nb, L->keys,
                    dec->B * L->Rc);
        if (L->csa)
            commit_comp(dec, L, r, T, n, p, ihd, L->iproj_c, L->iproj_z, G->iout_c, G->iout_z, G->ientry, G->nb,
                        L->ikeys, 0);
    }
}

/* The logits after token t (one of the last R) of row r of the last compute, as f32. */
static void read_logits(const v4_decoder *dec, const pass *ps, int64_t r, int64_t t, float *out) {
    int64_t V = dec->c->vocab_size, at = (r * ps->R + t - (ps->T - ps->R)) * V;
    const void *src = ps->mg->logits->data;
    for (int64_t v = 0; v < V; v++)
        out[v] = dec->dt == TS_F64 ? (float)((const double *)src)[at + v] : ((const float *)src)[at + v];
}

/* Whether a stepping row of a one-token pass completes a block of layer L (lens: positions). */
static bool completes_block(const v4_decoder *dec, const pass *ps, const dec_layer *L, const int64_t *lens) {
    for (int64_t r = 0; r < ps->b; r++) {
        int slot = dec->slot_of[r];
        if (dec->stepping[slot] && (lens[slot] + 1) % L->m == 0) return true;
    }
    return false;
}

/* The pass's graph, but for the pooling of entries no row completes (skippable_pooling). */
static ts_status compute_pass(const v4_decoder *dec, const pass *ps, const int64_t *lens) {
    ts_graph *g = ps->mg->graph;
    int done = 0;
    ts_status s = TS_OK;
    for (int64_t l = ps->l0; l < ps->l1 && s == TS_OK; l++) {
        const pass_layer *G = &ps->layers[l];
        if (G->pool_nodes[0][1] == 0 && G->pool_nodes[1][1] == 0) continue;
        if (completes_block(dec, ps, &dec->layers[l], lens)) continue;
        ts_tensor *entries[2] = {G->entry, G->ientry};
        for (int k = 0; k < 2 && s == TS_OK; k++) {
            const int *r = G->pool_nodes[k];
            if (r[1] == 0) continue;
            s = ts_graph_compute_range(g, done, r[0]);
            memset(entries[k]->data, 0, ts_nbytes(entries[k]));
            done = r[1];
        }
    }
    return s == TS_OK ? ts_graph_compute_range(g, done, ts_graph_n_nodes(g)) : s;
}

/* Runs pass ps on the ids staged in dec->ids and files every row whose slot is stepping (an MTP
 * pass advances what the MTP block covered, a main pass the sequence) by filled[r] tokens (NULL:
 * all T). */
static ts_status run_pass(v4_decoder *dec, pass *ps, const int64_t *filled) {
    int64_t *len = ps->mtp ? dec->mlen : dec->len;
    ts_status s = ts_tensor_write(ps->mg->ids, dec->ids, (size_t)(ps->b * ps->T) * sizeof(int32_t));
    if (s == TS_OK) s = compute_pass(dec, ps, len);
    if (s != TS_OK) return s;
    dec->n_runs++;
    for (int64_t r = 0; r < ps->b; r++) {
        int slot = dec->slot_of[r];
        if (!dec->stepping[slot]) continue;
        int64_t n = filled ? filled[r] : ps->T;
        commit_row(dec, ps, r, n, len[slot]);
        len[slot] += n;
        if (dec->len[slot] > dec->reach[slot]) dec->reach[slot] = dec->len[slot];
    }
    return TS_OK;
}

/* ---------------------------------------------------------------- the ops table */

static void v4_free(void *impl) {
    v4_decoder *dec = impl;
    if (!dec) return;
    for (int i = 0; i < dec->n_passes; i++) free_pass(dec->passes[i], dec->n_layers);
    ts_shared_arena_free(dec->arena);
    for (int i = 0; i < dec->n_owned; i++) free(dec->owned[i]);
    free(dec->owned);
    free(dec->arrays);
    ts_block_pool_free(&dec->pool);
    free(dec->layers);
    free(dec->swap_tmp);
    free(dec->len);
    free(dec->reach);
    free(dec->mlen);
    free(dec->row_of);
    free(dec->slot_of);
    free(dec->stepping);
    free(dec->group);
    free(dec->group_slots);
    free(dec->done);
    free(dec->logit_at);
    free(dec->filled);
    free(dec->ids);
    free(dec->omega[0]);
    free(dec->omega[1]);
    free(dec);
}

/* Positions are all the state has: an empty slot ignores whatever its rows still hold. */
static void v4_reset(void *impl, int slot) {
    v4_decoder *dec = impl;
    dec->len[slot] = dec->reach[slot] = dec->mlen[slot] = 0;
    ts_block_pool_release_to(&dec->pool, slot, 0);
}

/* Copy on write: the entries of block `from` that start within its first `positions`, every
 * pooled layer (those not yet complete too: they are recomputed before anyone sees them). */
static void copy_block(void *ctx, int32_t from, int32_t to, int64_t positions) {
    const v4_decoder *dec = ctx;
    for (int64_t l = 0; l < dec->n_layers; l++) {
        const dec_layer *L = &dec->layers[l];
        if (L->per_block == 0) continue;
        int64_t hd = dec->c->head_dim, ihd = dec->c->index_head_dim, n = (positions + L->m - 1) / L->m;
        int64_t dst = to * L->per_block, src = from * L->per_block, ring = dec->B * L->Rc;
        copy_elems(dec, L->keys, (ring + dst) * hd, L->keys, (ring + src) * hd, n * hd);
        if (L->csa) copy_elems(dec, L->ikeys, dst * ihd, L->ikeys, src * ihd, n * ihd);
    }
}

static int64_t blocks_needed(const v4_decoder *dec, int slot, int64_t n) {
    return ts_block_pool_needed(&dec->pool, slot, dec->len[slot], n);
}

static void reserve(v4_decoder *dec, int slot, int64_t n) {
    ts_block_pool_reserve(&dec->pool, slot, dec->len[slot], n, copy_block, dec);
}

static int64_t v4_length(const void *impl, int slot) {
    const v4_decoder *dec = impl;
    return dec->len[slot];
}

/* The smallest pass row count (1, 2, 4, .., B) holding n rows. */
static int64_t rows_for(const v4_decoder *dec, int n) {
    int64_t b = 1;
    while (b < n) b *= 2;
    return b < dec->B ? b : dec->B;
}

/* The longest chunk length a sequence with `left` tokens fills. Chunk lengths are 1, 2, 4, 8,
 * then the multiples of V4_CHUNK_STEP up to V4_CHUNK: finer than powers of two, so that a
 * 37- or 48-token prompt is one pass (40, 48) rather than three or two (32 + 4 + 1, 32 + 16),
 * yet few enough shapes for the graphs built on first use. */
static int64_t chunk_fill(int64_t left) {
    if (left >= V4_CHUNK) return V4_CHUNK;
    if (left >= V4_CHUNK_STEP) return left / V4_CHUNK_STEP * V4_CHUNK_STEP;
    int64_t T = V4_CHUNK_STEP;
    while (T > left) T /= 2;
    return T;
}

/* Tokens of a sequence's next pass when `left` remain: chunk_fill, or the next chunk length
 * when that takes at most a quarter of padding - tokens after the sequence's, computed and
 * dropped (causal: no real token sees them; commit_row files the real ones only). A pass costs
 * about as much as a dozen tokens of a chunk (its weights stream from memory), so 27 tokens
 * run as 32 in one pass instead of 24 + 2 + 1 in three. */
static int64_t chunk_for(int64_t left) {
    int64_t T = chunk_fill(left);
    if (T == left || T == V4_CHUNK) return T;
    int64_t up = T < V4_CHUNK_STEP ? 2 * T : T + V4_CHUNK_STEP;
    return up - left <= up / 4 ? up : T;
}

/* The real tokens of sequence q's next pass of T from done. */
static int64_t filled_of(const ts_model_decoder_seq *q, int64_t done, int64_t T) {
    return q->n - done < T ? q->n - done : T;
}

/* The next pass of a batch whose sequence i has done[i] of its tokens in: the largest chunk
 * (chunk_for of what is left) any sequence still has, for the first sequences with that chunk
 * - at most V4_PASS_TOKENS tokens, or every single token - listed in dec->group; 0 when all are
 * in. Largest first: every sequence's chunks shrink towards single tokens, so a batch costs a
 * pass per distinct chunk length, and the last one takes the generating sequences' tokens and
 * the prompts' final tokens together. */
static int64_t next_group(v4_decoder *dec, int n, const ts_model_decoder_seq *seqs, const int64_t *done, int *k) {
    int64_t T = 0;
    for (int i = 0; i < n; i++)
        if (done[i] < seqs[i].n && chunk_for(seqs[i].n - done[i]) > T) T = chunk_for(seqs[i].n - done[i]);
    int64_t cap = 1; /* a power of two: rows_for rounds up, and rows past the sequences are computed too */
    while (T > 1 && 2 * cap * T <= V4_PASS_TOKENS) cap *= 2;
    if (T <= 1 || cap > dec->B) cap = dec->B;
    *k = 0;
    for (int i = 0; T > 0 && i < n && *k < cap; i++)
        if (done[i] < seqs[i].n && chunk_for(seqs[i].n - done[i]) == T) dec->group[(*k)++] = i;
    return T;
}

/* The first of sequence q's chunk of T tokens from done whose logits are wanted (T: none). */
static int64_t first_wanted(const ts_model_decoder_seq *q, int64_t done, int64_t T) {
    int64_t first = q->n - q->logit_rows - done;
    return q->logit_rows == 0 || first >= filled_of(q, done, T) ? T : first < 0 ? 0 : first;
}

/* The pass graph of the group: b rows for its k sequences, and logits of the last R tokens of
 * each row: 1 when every sequence wants its chunk's last token at most, T / 4 + 1 when that
 * reaches back to the last real token of a padded chunk (at most T / 4 padding: chunk_for),
 * else all T. The head costs a vocabulary x hidden product per row - with a large vocabulary
 * most of a short pass - so a 27-token prompt padded to 32 runs it on 9 rows, not 32. */
static ts_status group_pass(v4_decoder *dec, const ts_model_decoder_seq *seqs, int k, int64_t T, const int64_t *done,
                            pass **ps) {
    int64_t need = 1;
    for (int j = 0; j < k; j++) {
        int i = dec->group[j];
        int64_t back = T - first_wanted(&seqs[i], done[i], T);
        if (back > need) need = back;
    }
    int64_t R = need <= 1 ? 1 : need <= T / 4 + 1 ? T / 4 + 1 : T;
    return get_pass(dec, rows_for(dec, k), T, R, false, ps);
}

/* One pass of the batch: the group's next T tokens each, in rows [0, b) (place_rows), their
 * wanted logits to rows at[i] + (token - first wanted token) of logits. */
static ts_status run_group(v4_decoder *dec, const ts_model_decoder_seq *seqs, int k, int64_t T, int64_t *done,
                           const int64_t *at, float *logits) {
    pass *ps;
    ts_status s = group_pass(dec, seqs, k, T, done, &ps);
    if (s != TS_OK) return s;
    for (int j = 0; j < k; j++) {
        dec->group_slots[j] = seqs[dec->group[j]].slot;
        dec->stepping[dec->group_slots[j]] = true;
    }
    place_rows(dec, k, dec->group_slots, ps->b);
    memset(dec->ids, 0, (size_t)(ps->b * T) * sizeof *dec->ids);
    for (int j = 0; j < k; j++) {
        int i = dec->group[j];
        const ts_model_decoder_seq *q = &seqs[i];
        int64_t r = dec->row_of[q->slot];
        dec->filled[r] = filled_of(q, done[i], T);
        memcpy(dec->ids + r * T, q->ids + done[i], (size_t)dec->filled[r] * sizeof *dec->ids);
    }
    for (int64_t r = 0; r < ps->b; r++) {
        int slot = dec->slot_of[r];
        prepare_row(dec, ps, r, dec->stepping[slot] ? dec->len[slot] : -1);
    }
    s = run_pass(dec, ps, dec->filled);
    for (int j = 0; j < k; j++) {
        int i = dec->group[j];
        const ts_model_decoder_seq *q = &seqs[i];
        int64_t n = filled_of(q, done[i], T);
        for (int64_t t = first_wanted(q, done[i], T); s == TS_OK && t < n; t++)
            read_logits(dec, ps, dec->row_of[q->slot], t,
                        logits + (at[i] + done[i] + t - (q->n - q->logit_rows)) * dec->c->vocab_size);
        if (s == TS_OK) done[i] += n;
        dec->stepping[q->slot] = false;
    }
    return s;
}

/* A batch (decoder_impl.h) in passes of equal chunks (next_group). Every pass graph it needs is
 * built, and the blocks of all its tokens counted and taken, before anything moves: a graph
 * that cannot be built or too few blocks (TS_ERR_OOM) and nothing has. A pass that fails
 * leaves each sequence with the passes before it (its length says how many). */
static ts_status v4_batch(void *impl, int n, const ts_model_decoder_seq *seqs, float *logits) {
    v4_decoder *dec = impl;
    int64_t *done = dec->done, *at = dec->logit_at, need = 0;
    ts_status s = TS_OK;
    int k;
    memset(done, 0, (size_t)n * sizeof *done);
    for (int64_t T; s == TS_OK && (T = next_group(dec, n, seqs, done, &k)) > 0;) {
        pass *ps;
        s = group_pass(dec, seqs, k, T, done, &ps);
        for (int j = 0; j < k; j++) done[dec->group[j]] += filled_of(&seqs[dec->group[j]], done[dec->group[j]], T);
    }
    if (s != TS_OK) return s;
    for (int i = 0; i < n; i++) need += blocks_needed(dec, seqs[i].slot, seqs[i].n);
    if (need > dec->pool.n_free) return TS_ERR_OOM;
    for (int i = 0; i < n; i++) {
        reserve(dec, seqs[i].slot, seqs[i].n);
        at[i] = i > 0 ? at[i - 1] + seqs[i - 1].logit_rows : 0;
        done[i] = 0;
    }
    for (int64_t T; s == TS_OK && (T = next_group(dec, n, seqs, done, &k)) > 0;)
        s = run_group(dec, seqs, k, T, done, at, logits);
    for (int i = 0; s != TS_OK && i < n; i++) ts_block_pool_release_to(&dec->pool, seqs[i].slot, dec->len[seqs[i].slot]);
    return s;
}

static int64_t v4_passes(const void *impl) {
    const v4_decoder *dec = impl;
    return dec->n_runs;
}

/* Rewinding keeps every array as it is (see the file comment); only how far back the rings
 * still hold the positions bounds it. The MTP block's entry at len - 1 read the token after it,
 * which the sequence no longer holds: it is recomputed on the next draft, so with a block the
 * rings must reach one position further back. */
static bool can_rewind(const v4_decoder *dec, int slot, int64_t len) {
    return len >= dec->reach[slot] - V4_REWIND + (dec->streams != NULL);
}

static ts_status v4_truncate(void *impl, int slot, int64_t len) {
    v4_decoder *dec = impl;
    if (!can_rewind(dec, slot, len)) return TS_ERR_UNSUPPORTED;
    dec->len[slot] = len;
    if (dec->mlen[slot] >= len) dec->mlen[slot] = len - 1;
    ts_block_pool_release_to(&dec->pool, slot, len);
    return TS_OK;
}

/* dst shares src's pool blocks of the first len positions and gets a copy of its state rows,
 * then rewinds as truncate does, within the same bound: the rings hold only the last positions. */
static ts_status v4_fork(void *impl, int dst, int src, int64_t len) {
    v4_decoder *dec = impl;
    if (!can_rewind(dec, src, len)) return TS_ERR_UNSUPPORTED;
    ts_block_pool_share(&dec->pool, dst, src, len);
    for (int i = 0; i < dec->n_arrays; i++) {
        const state_array *a = &dec->arrays[i];
        memcpy((char *)a->data + (size_t)dec->row_of[dst] * a->row_bytes,
               (const char *)a->data + (size_t)dec->row_of[src] * a->row_bytes, a->row_bytes);
    }
    dec->len[dst] = dec->len[src];
    dec->reach[dst] = dec->reach[src];
    dec->mlen[dst] = dec->mlen[src];
    return v4_truncate(dec, dst, len);
}

/* The MTP block over positions mlen..len-1 in one-row passes (chunks as a batch), position q
 * with its kept streams and the token after it: the kept one, or next_id for the last. mlen = len
 * (a second draft at the same position) first takes the last position back. */
static ts_status v4_mtp(void *impl, int slot, int32_t next_id, float *logits) {
    v4_decoder *dec = impl;
    int64_t len = dec->len[slot], nd = dec->nd;
    if (!dec->streams) return TS_ERR_UNSUPPORTED;
    if (dec->mlen[slot] == len) dec->mlen[slot] = len - 1;
    int64_t from = dec->mlen[slot];
    if (len - from > TS_MODEL_MTP_MAX_LAG || from < dec->reach[slot] - V4_KEEP) return TS_ERR_RANGE;
    ts_status s = TS_OK;
    pass *ps = NULL;
    dec->stepping[slot] = true;
    place_rows(dec, 1, &slot, 1);
    for (int64_t q = from, T; s == TS_OK && q < len; q += T) {
        T = chunk_fill(len - q);
        s = get_pass(dec, 1, T, 1, true, &ps);
        for (int64_t t = 0; s == TS_OK && t < T; t++) { /* row 0: place_rows put the slot there */
            copy_elems(dec, ps->mtp_x, t * nd, dec->streams, ((q + t) % V4_KEEP) * nd, nd);
            dec->ids[t] = q + t + 1 < len ? dec->tokens[(q + t + 1) % V4_KEEP] : next_id;
        }
        if (s != TS_OK) break;
        prepare_row(dec, ps, 0, q);
        s = run_pass(dec, ps, NULL);
    }
    if (s == TS_OK) read_logits(dec, ps, 0, ps->T - 1, logits);
    dec->stepping[slot] = false;
    return s;
}

static size_t v4_state_bytes(const void *impl) {
    const v4_decoder *dec = impl;
    return dec->state_bytes;
}

/* A block holds per_block entries of every pooled layer (and on CSA layers their indexer keys);
 * the rest of the state is the slots' own. */
static void v4_pool(const void *impl, ts_model_decoder_pool *out) {
    const v4_decoder *dec = impl;
    ts_block_pool_info(&dec->pool, out);
    for (int64_t l = 0; l < dec->n_layers; l++) {
        const dec_layer *L = &dec->layers[l];
        out->block_bytes += (size_t)(L->per_block * (dec->c->head_dim + (L->csa ? dec->c->index_head_dim : 0))) * dec->esz;
    }
    out->slot_bytes = (dec->state_bytes - out->block_bytes * (size_t)out->blocks) / (size_t)dec->B;
    out->rewind = V4_REWIND - (dec->streams != NULL); /* can_rewind's bound */
}

static int64_t v4_mtp_lag(const void *impl, int slot) {
    const v4_decoder *dec = impl;
    return dec->c->num_nextn_predict_layers > 0 ? dec->len[slot] - dec->mlen[slot] : 0;
}

static const ts_decoder_ops v4_ops = {
    .free = v4_free,
    .reset = v4_reset,
    .length = v4_length,
    .batch = v4_batch,
    .passes = v4_passes,
    .truncate = v4_truncate,
    .mtp = v4_mtp,
    .state_bytes = v4_state_bytes,
    .fork = v4_fork,
    .pool = v4_pool,
    .mtp_lag = v4_mtp_lag,
};

/* ---------------------------------------------------------------- construction */

/* Shapes of layer l's state (file comment). */
static void layer_shape(v4_decoder *dec, int64_t l) {
    const ts_v4_config *c = dec->c;
    dec_layer *L = &dec->layers[l];
    int64_t m = c->compress_ratios[l];
    L->m = m > 0 && dec->max_len / m > 0 ? m : 0;
    L->csa = L->m == TS_V4_RATIO_CSA;
    L->R = c->sliding_window - 1;
    L->Rc = L->R > 0 ? L->R + V4_REWIND : 0;
    L->NB = L->m > 0 ? dec->max_len / L->m : 0;
    L->P = L->m > 0 ? ((L->csa ? 2 * L->m : L->m) + V4_REWIND + L->m - 1) / L->m * L->m : 0;
}

static int64_t gcd(int64_t a, int64_t b) { return b ? gcd(b, a % b) : a; }

/* Pool blocks cover the least common multiple of the main layers' ratios (spec §2.13: lcm(4, 128)
 * = 128 positions, 32 CSA entries + 1 HCA entry): every layer's entries then fill whole blocks,
 * and a block is all one sequence's. No compressed layer: the pool holds nothing, its blocks only
 * count positions. The MTP block keeps private entries (per_block 0): it writes entries behind
 * the sequence (up to TS_MODEL_MTP_MAX_LAG positions, after a draft's own token), which a copy on
 * write before every draft would have to guard. */
static void pool_shape(v4_decoder *dec, int64_t pool_positions) {
    int64_t bp = 1;
    for (int64_t l = 0; l < dec->c->num_hidden_layers; l++) {
        int64_t m = dec->layers[l].m;
        if (m > 0) bp = bp / gcd(bp, m) * m;
    }
    bp = dec->pool.block_positions = bp > 1 ? bp : TS_MODEL_DECODER_BLOCK;
    int64_t per_slot = ts_block_pool_blocks_for(&dec->pool, dec->max_len); /* no overflow: max_len is a length */
    dec->pool.n_blocks = pool_positions > 0 ? pool_positions / bp + (pool_positions % bp != 0) : dec->B * per_slot;
    for (int64_t l = 0; l < dec->n_layers; l++) {
        dec_layer *L = &dec->layers[l];
        L->per_block = l < dec->c->num_hidden_layers && L->m > 0 ? dec->pool.block_positions / L->m : 0;
        L->NE = L->per_block > 0 ? dec->pool.n_blocks * L->per_block : dec->B * L->NB;
    }
}

/* Whether every extras index (B·Rc + NE, a view's Rc + NB + a pass's entries) fits the i32
 * index lists, and on CSA layers the f32 pick map exactly. */
static bool indices_fit(const v4_decoder *dec) {
    if (dec->pool.n_blocks >= INT32_MAX) return false;
    for (int64_t l = 0; l < dec->n_layers; l++) {
        const dec_layer *L = &dec->layers[l];
        int64_t limit = L->csa ? (int64_t)1 << 24 : INT32_MAX;
        if (dec->B * L->Rc + L->NE + V4_CHUNK >= limit) return false;
    }
    return true;
}

/* A Z ring [B, P + 2, k]: its void rows (P + 1) -inf, everything else 0. */
static void *ring_z_alloc(v4_decoder *dec, int64_t P, int64_t k) {
    void *z = state_alloc(dec, (P + 2) * k);
    for (int64_t r = 0; z && r < dec->B; r++)
        for (int64_t i = 0; i < k; i++) put(dec, z, (r * (P + 2) + P + 1) * k + i, -INFINITY);
    return z;
}

/* Layer l's arrays: keys (the rings move with their rows, private entries too), projection
 * rings, and the indexer's. */
static bool init_layer(v4_decoder *dec, int64_t l) {
    dec_layer *L = &dec->layers[l];
    int64_t hd = dec->c->head_dim, ihd = dec->c->index_head_dim, ring = dec->B * L->Rc;
    if (ring + L->NE > 0) {
        if (!(L->keys = owned_alloc(dec, (size_t)((ring + L->NE) * hd) * dec->esz))) return false;
        state_rows(dec, L->keys, (size_t)(L->Rc * hd) * dec->esz);
        if (L->per_block == 0) state_rows(dec, (char *)L->keys + (size_t)(ring * hd) * dec->esz, (size_t)(L->NB * hd) * dec->esz);
    }
    if (L->m == 0) return true;
    int64_t k = L->csa ? 2 * hd : hd;
    if (!(L->proj_c = state_alloc(dec, (L->P + 2) * k)) || !(L->proj_z = ring_z_alloc(dec, L->P, k))) return false;
    if (!L->csa) return true;
    L->ikeys = L->per_block > 0 ? owned_alloc(dec, (size_t)(L->NE * ihd) * dec->esz) : state_alloc(dec, L->NB * ihd);
    return (L->iproj_c = state_alloc(dec, (L->P + 2) * 2 * ihd)) && (L->iproj_z = ring_z_alloc(dec, L->P, 2 * ihd)) &&
           L->ikeys;
}

/* Per layer <= 7 state allocations and row runs (init_layer); MTP: 2 more. */
#define V4_MAX_ARRAYS(n_layers) ((size_t)(n_layers) * 7 + 2)

static bool alloc_host(v4_decoder *dec) {
    const ts_v4_config *c = dec->c;
    size_t B = (size_t)dec->B;
    dec->owned = calloc(V4_MAX_ARRAYS(dec->n_layers), sizeof *dec->owned);
    dec->arrays = calloc(V4_MAX_ARRAYS(dec->n_layers), sizeof *dec->arrays);
    dec->len = calloc(B, sizeof *dec->len);
    dec->reach = calloc(B, sizeof *dec->reach);
    dec->mlen = calloc(B, sizeof *dec->mlen);
    dec->row_of = calloc(B, sizeof *dec->row_of);
    dec->slot_of = calloc(B, sizeof *dec->slot_of);
    dec->stepping = calloc(B, sizeof *dec->stepping);
    dec->group = calloc(B, sizeof *dec->group);
    dec->group_slots = calloc(B, sizeof *dec->group_slots);
    dec->done = calloc(B, sizeof *dec->done);
    dec->logit_at = calloc(B, sizeof *dec->logit_at);
    dec->filled = calloc(B, sizeof *dec->filled);
    dec->ids = calloc(B > V4_PASS_TOKENS ? B : V4_PASS_TOKENS, sizeof *dec->ids);
    dec->omega[0] = calloc((size_t)dec->half, sizeof(double));
    dec->omega[1] = calloc((size_t)dec->half, sizeof(double));
    if (!dec->owned || !dec->arrays || !dec->len || !dec->reach || !dec->mlen || !dec->row_of || !dec->slot_of ||
        !dec->stepping || !dec->group || !dec->group_slots || !dec->done || !dec->logit_at || !dec->filled || !dec->ids || !dec->omega[0] || !dec->omega[1] ||
        !ts_block_pool_init(&dec->pool, (int)dec->B, dec->pool.block_positions, dec->pool.n_blocks, dec->max_len))
        return false;
    for (int64_t l = 0; l < dec->n_layers; l++)
        if (!init_layer(dec, l)) return false;
    if (dec->n_layers > c->num_hidden_layers &&
        (!(dec->streams = state_alloc(dec, V4_KEEP * dec->nd)) ||
         !(dec->tokens = state_alloc_bytes(dec, V4_KEEP * sizeof(int32_t)))))
        return false;
    size_t widest = 1;
    for (int i = 0; i < dec->n_arrays; i++)
        if (dec->arrays[i].row_bytes > widest) widest = dec->arrays[i].row_bytes;
    if (!(dec->swap_tmp = malloc(widest))) return false;
    for (int i = 0; i < dec->B; i++) dec->row_of[i] = dec->slot_of[i] = i;
    return true;
}

ts_status ts_v4_decoder_new(const ts_model_weights *w, ts_backend *be, int slots, int64_t max_len,
                            int64_t pool_positions, const ts_decoder_ops **ops, void **out, char *err,
                            size_t err_size) {
    *out = NULL;
    *ops = &v4_ops;
    const ts_v4_config *c = ts_model_weights_config(w);
    v4_decoder *dec = calloc(1, sizeof *dec);
    if (!dec) return TS_ERR_OOM;
    dec->c = c;
    dec->w = w;
    dec->be = be;
    dec->dt = ts_model_weights_dtype(w);
    dec->esz = ts_dtype_bytes(dec->dt, 1);
    dec->B = slots;
    dec->max_len = max_len;
    dec->half = c->qk_rope_head_dim / 2;
    dec->n_layers = c->num_hidden_layers + (c->num_nextn_predict_layers > 0);
    dec->nd = c->hc_mult * c->hidden_size;
    if (!(dec->layers = calloc((size_t)dec->n_layers, sizeof *dec->layers))) {
        free(dec);
        return TS_ERR_OOM;
    }
    for (int64_t l = 0; l < dec->n_layers; l++) layer_shape(dec, l);
    pool_shape(dec, pool_positions);
    if (!indices_fit(dec)) {
        ts_error_printf(err, err_size, "decoder: a pool of %lld blocks (%d slots of %lld) exceeds the cache index",
                        (long long)dec->pool.n_blocks, slots, (long long)max_len);
        v4_free(dec);
        return TS_ERR_INVALID_ARG;
    }
    if (!alloc_host(dec) || ts_shared_arena_new(be, &dec->arena) != TS_OK) {
        v4_free(dec);
        ts_error_printf(err, err_size, "decoder: out of memory for the caches");
        return TS_ERR_OOM;
    }
    ts_v4_rope_freqs(c->rope_theta, 2 * (int)dec->half, NULL, dec->omega[0], NULL, NULL);
    ts_v4_rope_freqs(c->compress_rope_theta, 2 * (int)dec->half, &c->rope_scaling, dec->omega[1], NULL, NULL);
    pass *first; /* the one-token graph checks the config now; the others come on first use */
    ts_status s = build_pass(dec, 1, 1, 1, false, &first, err, err_size);
    if (s != TS_OK) {
        v4_free(dec);
        return s;
    }
    *out = dec;
    return TS_OK;
}
