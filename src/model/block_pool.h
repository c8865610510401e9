/* block_pool.h - the bookkeeping of a paged cache shared by a decoder's slots (decode_dense.c's
 * KV cache, decode.c's compressed entries): blocks of block_positions positions of a sequence,
 * one block table per slot (its i-th block_positions positions live in block table[i]),
 * reference counts, and a stack of free blocks. Blocks come off the free list as a sequence
 * grows and go back on release; a fork shares the source's blocks, and a shared block a slot is
 * about to write into (the partly filled last one) is first copied by the caller's copy hook
 * (copy on write). The caller owns the cache arrays: the pool only says which block is where. */
#ifndef TS_MODEL_BLOCK_POOL_H
#define TS_MODEL_BLOCK_POOL_H
#include "tessera/model.h"

typedef struct {
    int64_t block_positions, n_blocks, per_slot; /* table entries per slot: blocks of max_len */
    int32_t *table;     /* [slots, per_slot] */
    int64_t *held;      /* [slots]: table entries in use, ceil(len / block_positions) between calls */
    int32_t *refs;      /* [n_blocks]: slots holding each block */
    int32_t *free_list; /* [n_blocks]: a stack of the n_free unheld blocks, the lowest on top */
    int64_t n_free;
} ts_block_pool;

/* Copies the first `positions` positions of block `from` into block `to` (every cache array). */
typedef void (*ts_block_copy_fn)(void *ctx, int32_t from, int32_t to, int64_t positions);

/* Every block free. false: out of memory (ts_block_pool_free cleans up either way). */
bool ts_block_pool_init(ts_block_pool *p, int slots, int64_t block_positions, int64_t n_blocks, int64_t max_len);
void ts_block_pool_free(ts_block_pool *p);
int64_t ts_block_pool_blocks_for(const ts_block_pool *p, int64_t positions);
/* The block holding position pos of the slot (held); inline: host loops ask it per entry. */
static inline int32_t ts_block_pool_block(const ts_block_pool *p, int slot, int64_t pos) {
    return p->table[slot * p->per_slot + pos / p->block_positions];
}
/* Blocks that growing the slot from len to len + n positions takes from the free list (a shared
 * block written by several slots of one step is counted for each: at most one too many). */
int64_t ts_block_pool_needed(const ts_block_pool *p, int slot, int64_t len, int64_t n);
/* Makes room for n positions after the slot's len (ts_block_pool_needed of them must be free):
 * a private copy of a shared last block, then new blocks. */
void ts_block_pool_reserve(ts_block_pool *p, int slot, int64_t len, int64_t n, ts_block_copy_fn copy, void *ctx);
/* Gives back the slot's blocks past its first len positions. */
void ts_block_pool_release_to(ts_block_pool *p, int slot, int64_t len);
/* Slot dst drops its blocks and shares src's blocks of the first len positions. */
void ts_block_pool_share(ts_block_pool *p, int dst, int src, int64_t len);
/* The pool's blocks (the memory fields left 0 for the caller; rewind -1, any prefix: the pool
 * itself keeps every block a slot holds). */
void ts_block_pool_info(const ts_block_pool *p, ts_model_decoder_pool *out);
#endif
