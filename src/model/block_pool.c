/* block_pool.c - the shared block pool of the decoders' paged caches (block_pool.h). */
#include <stdlib.h>

#include "model/block_pool.h"

bool ts_block_pool_init(ts_block_pool *p, int slots, int64_t block_positions, int64_t n_blocks, int64_t max_len) {
    *p = (ts_block_pool){.block_positions = block_positions, .n_blocks = n_blocks};
    p->per_slot = ts_block_pool_blocks_for(p, max_len);
    p->table = calloc((size_t)(slots * p->per_slot), sizeof *p->table);
    p->held = calloc((size_t)slots, sizeof *p->held);
    p->refs = calloc((size_t)n_blocks, sizeof *p->refs);
    p->free_list = calloc((size_t)n_blocks, sizeof *p->free_list);
    if (!p->table || !p->held || !p->refs || !p->free_list) return false;
    for (p->n_free = 0; p->n_free < n_blocks; p->n_free++) p->free_list[p->n_free] = (int32_t)(n_blocks - 1 - p->n_free);
    return true;
}

void ts_block_pool_free(ts_block_pool *p) {
    free(p->table);
    free(p->held);
    free(p->refs);
    free(p->free_list);
}

int64_t ts_block_pool_blocks_for(const ts_block_pool *p, int64_t positions) {
    return (positions + p->block_positions - 1) / p->block_positions;
}

static int32_t *table_of(const ts_block_pool *p, int slot) { return p->table + slot * p->per_slot; }

static int32_t take_block(ts_block_pool *p) {
    int32_t b = p->free_list[--p->n_free];
    p->refs[b] = 1;
    return b;
}

static void drop_block(ts_block_pool *p, int32_t b) {
    if (--p->refs[b] == 0) p->free_list[p->n_free++] = b;
}

void ts_block_pool_release_to(ts_block_pool *p, int slot, int64_t len) {
    int32_t *t = table_of(p, slot);
    while (p->held[slot] > ts_block_pool_blocks_for(p, len)) drop_block(p, t[--p->held[slot]]);
}

/* Whether appending to the slot at len writes into a block another slot holds too. */
static bool writes_shared(const ts_block_pool *p, int slot, int64_t len) {
    return len % p->block_positions && p->refs[table_of(p, slot)[len / p->block_positions]] > 1;
}

int64_t ts_block_pool_needed(const ts_block_pool *p, int slot, int64_t len, int64_t n) {
    return ts_block_pool_blocks_for(p, len + n) - p->held[slot] + writes_shared(p, slot, len);
}

void ts_block_pool_reserve(ts_block_pool *p, int slot, int64_t len, int64_t n, ts_block_copy_fn copy, void *ctx) {
    int32_t *t = table_of(p, slot);
    int64_t last = len / p->block_positions;
    if (writes_shared(p, slot, len)) {
        int32_t old = t[last], b = take_block(p);
        copy(ctx, old, b, len % p->block_positions);
        drop_block(p, old);
        t[last] = b;
    }
    while (p->held[slot] < ts_block_pool_blocks_for(p, len + n)) t[p->held[slot]++] = take_block(p);
}

void ts_block_pool_share(ts_block_pool *p, int dst, int src, int64_t len) {
    ts_block_pool_release_to(p, dst, 0);
    int32_t *to = table_of(p, dst);
    const int32_t *from = table_of(p, src);
    for (int64_t i = 0; i < ts_block_pool_blocks_for(p, len); i++) p->refs[to[i] = from[i]]++;
    p->held[dst] = ts_block_pool_blocks_for(p, len);
}

void ts_block_pool_info(const ts_block_pool *p, ts_model_decoder_pool *out) {
    *out = (ts_model_decoder_pool){.block_positions = p->block_positions, .blocks = p->n_blocks,
                                   .free_blocks = p->n_free, .shared = true, .rewind = -1};
}
