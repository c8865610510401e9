/* decoder.c - the public incremental decoder (model.h): argument checks and bookkeeping shared
 * by every model family, over the family's implementation (decoder_impl.h). */
#include <stdlib.h>
#include <string.h>

#include "model/decoder_impl.h"

struct ts_model_decoder {
    const ts_decoder_ops *ops;
    void *impl;
    int slots;
    int64_t max_len, vocab;
};

ts_status ts_model_decoder_new(const ts_model_weights *w, ts_backend *be, int slots, int64_t max_len,
                               ts_model_decoder **out, char *err, size_t err_size) {
    return ts_model_decoder_new_pooled(w, be, slots, max_len, 0, out, err, err_size);
}

ts_status ts_model_decoder_new_pooled(const ts_model_weights *w, ts_backend *be, int slots, int64_t max_len,
                                      int64_t pool_positions, ts_model_decoder **out, char *err, size_t err_size) {
    if (!w || !be || !out || slots < 1 || max_len < 1 || pool_positions < 0) return TS_ERR_INVALID_ARG;
    *out = NULL;
    const ts_v4_config *c = ts_model_weights_config(w);
    ts_decoder_new_fn make = NULL;
    if (c->kind == TS_MODEL_DEEPSEEK_V4) make = ts_v4_decoder_new;
    if (c->kind == TS_MODEL_DENSE) make = ts_dense_decoder_new;
    if (!make) {
        ts_error_printf(err, err_size, "decoder: no incremental decoding for this model kind");
        return TS_ERR_UNSUPPORTED;
    }
    ts_model_decoder *d = calloc(1, sizeof *d);
    if (!d) return TS_ERR_OOM;
    d->slots = slots;
    d->max_len = max_len;
    d->vocab = c->vocab_size;
    ts_status s = make(w, be, slots, max_len, pool_positions, &d->ops, &d->impl, err, err_size);
    if (s != TS_OK) {
        free(d);
        return s;
    }
    *out = d;
    return TS_OK;
}

void ts_model_decoder_free(ts_model_decoder *d) {
    if (!d) return;
    if (d->impl) d->ops->free(d->impl);
    free(d);
}

int ts_model_decoder_slots(const ts_model_decoder *d) { return d->slots; }
int64_t ts_model_decoder_max_len(const ts_model_decoder *d) { return d->max_len; }
size_t ts_model_decoder_state_bytes(const ts_model_decoder *d) { return d->ops->state_bytes(d->impl); }

void ts_model_decoder_reset(ts_model_decoder *d, int slot) {
    if (slot >= 0 && slot < d->slots) d->ops->reset(d->impl, slot);
}

int64_t ts_model_decoder_length(const ts_model_decoder *d, int slot) {
    return slot >= 0 && slot < d->slots ? d->ops->length(d->impl, slot) : -1;
}

ts_status ts_model_decoder_step(ts_model_decoder *d, int n, const int *slots, const int32_t *ids, float *logits) {
    if (n < 1 || n > d->slots || !slots || !ids || !logits) return TS_ERR_INVALID_ARG;
    bool seen[d->slots];
    memset(seen, 0, sizeof seen);
    for (int i = 0; i < n; i++) {
        int s = slots[i];
        if (s < 0 || s >= d->slots || seen[s]) return TS_ERR_INVALID_ARG;
        seen[s] = true;
    }
    for (int i = 0; i < n; i++)
        if (d->ops->length(d->impl, slots[i]) >= d->max_len) return TS_ERR_RANGE;
    return d->ops->step(d->impl, n, slots, ids, logits);
}

ts_status ts_model_decoder_extend(ts_model_decoder *d, int slot, const int32_t *ids, int64_t n, float *logits,
                                  int64_t logit_rows) {
    if (slot < 0 || slot >= d->slots || !ids || n < 1 || !logits || logit_rows < 1 || logit_rows > n)
        return TS_ERR_INVALID_ARG;
    if (d->ops->length(d->impl, slot) + n > d->max_len) return TS_ERR_RANGE;
    if (d->ops->extend) return d->ops->extend(d->impl, slot, ids, n, logits, logit_rows);
    for (int64_t i = 0; i < n; i++) {
        int64_t row = i - (n - logit_rows); /* only the last logit_rows are kept */
        float *dst = logits + (row > 0 ? row : 0) * d->vocab;
        ts_status s = d->ops->step(d->impl, 1, &slot, &ids[i], dst);
        if (s != TS_OK) return s;
    }
    return TS_OK;
}

ts_status ts_model_decoder_truncate(ts_model_decoder *d, int slot, int64_t len) {
    if (slot < 0 || slot >= d->slots || len < 0) return TS_ERR_INVALID_ARG;
    int64_t have = d->ops->length(d->impl, slot);
    if (len > have) return TS_ERR_RANGE;
    if (len == have) return TS_OK;
    if (len == 0) {
        d->ops->reset(d->impl, slot);
        return TS_OK;
    }
    return d->ops->truncate ? d->ops->truncate(d->impl, slot, len) : TS_ERR_UNSUPPORTED;
}

ts_status ts_model_decoder_mtp(ts_model_decoder *d, int slot, int32_t next_id, float *logits) {
    if (slot < 0 || slot >= d->slots || next_id < 0 || next_id >= d->vocab || !logits ||
        d->ops->length(d->impl, slot) < 1)
        return TS_ERR_INVALID_ARG;
    return d->ops->mtp ? d->ops->mtp(d->impl, slot, next_id, logits) : TS_ERR_UNSUPPORTED;
}

ts_status ts_model_decoder_fork(ts_model_decoder *d, int dst, int src, int64_t len) {
    if (dst < 0 || dst >= d->slots || src < 0 || src >= d->slots || dst == src || len < 0) return TS_ERR_INVALID_ARG;
    if (len > d->ops->length(d->impl, src)) return TS_ERR_RANGE;
    if (len == 0) {
        d->ops->reset(d->impl, dst);
        return TS_OK;
    }
    return d->ops->fork ? d->ops->fork(d->impl, dst, src, len) : TS_ERR_UNSUPPORTED;
}

void ts_model_decoder_pool_info(const ts_model_decoder *d, ts_model_decoder_pool *out) {
    if (d->ops->pool) {
        d->ops->pool(d->impl, out);
        return;
    }
    *out = (ts_model_decoder_pool){.block_positions = d->max_len, .blocks = d->slots,
                                   .block_bytes = d->ops->state_bytes(d->impl) / (size_t)d->slots};
    for (int s = 0; s < d->slots; s++) out->free_blocks += d->ops->length(d->impl, s) == 0;
}
