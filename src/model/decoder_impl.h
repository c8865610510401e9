/* decoder_impl.h - what a model family implements to be decoded incrementally. decoder.c owns
 * the public ts_model_decoder (model.h): it checks every argument, then calls one of these
 * tables - decode.c for DeepSeek-V4 (window ring, compressed caches, compressor state) and
 * decode_dense.c for the dense baseline (a plain KV cache). Slots and lengths reaching an
 * implementation are valid: 0 <= slot < slots, distinct slots in a batch, no sequence pushed
 * past max_len, truncation only to len <= length, fork between distinct slots with
 * len <= length(src). */
#ifndef TS_MODEL_DECODER_IMPL_H
#define TS_MODEL_DECODER_IMPL_H

#include "tessera/model.h"

typedef struct {
    void (*free)(void *impl);
    void (*reset)(void *impl, int slot);
    int64_t (*length)(const void *impl, int slot);
    /* Any mix of sequences of distinct slots (prompt chunks, single decode tokens, drafts) in as
     * few passes as the implementation can (model.h, ts_model_decoder_batch; every n >= 1,
     * 0 <= logit_rows <= n, no sequence past max_len): all or nothing but for a pass failing
     * after the up-front checks (blocks, graphs). A step and an extend are batches too. */
    ts_status (*batch)(void *impl, int n, const ts_model_decoder_seq *seqs, float *logits);
    /* Forward passes computed so far. */
    int64_t (*passes)(const void *impl);
    /* Forget the tokens after the first len. NULL, or TS_ERR_UNSUPPORTED with the slot
     * unchanged: the state cannot rewind that far. */
    ts_status (*truncate)(void *impl, int slot, int64_t len);
    /* The MTP block's draft logits [V] after next_id (model.h, ts_model_decoder_mtp; the slot
     * holds >= 1 token). NULL: the model has none. */
    ts_status (*mtp)(void *impl, int slot, int32_t next_id, float *logits);
    /* Positions the MTP block has not covered yet. NULL: the model has none. */
    int64_t (*mtp_lag)(const void *impl, int slot);
    /* Host memory of all slots' caches. */
    size_t (*state_bytes)(const void *impl);
    /* Slot dst drops its sequence and holds src's first len tokens. NULL, or
     * TS_ERR_UNSUPPORTED with dst unchanged: the model cannot. */
    ts_status (*fork)(void *impl, int dst, int src, int64_t len);
    /* The shared block pool (model.h). NULL: each slot owns max_len positions. */
    void (*pool)(const void *impl, ts_model_decoder_pool *out);
} ts_decoder_ops;

/* pool_positions: the shared pool's size (0: every slot can reach max_len at once, in the
 * family's own blocks). */
typedef ts_status (*ts_decoder_new_fn)(const ts_model_weights *w, ts_backend *be, int slots, int64_t max_len,
                                       int64_t pool_positions, const ts_decoder_ops **ops, void **impl, char *err,
                                       size_t err_size);

/* decode.c: DeepSeek-V4 configs. */
ts_status ts_v4_decoder_new(const ts_model_weights *w, ts_backend *be, int slots, int64_t max_len,
                            int64_t pool_positions, const ts_decoder_ops **ops, void **impl, char *err,
                            size_t err_size);

/* decode_dense.c: dense baseline configs. */
ts_status ts_dense_decoder_new(const ts_model_weights *w, ts_backend *be, int slots, int64_t max_len,
                               int64_t pool_positions, const ts_decoder_ops **ops, void **impl, char *err,
                               size_t err_size);

#endif
