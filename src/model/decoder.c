/* decoder.c - the public incremental decoder (model.h): argument checks and bookkeeping shared
 * by every model family, over the family's implementation (decoder_impl.h). Step, extend and
 * batch meet in the one call every family gives, its batch: a step is a batch of single
 * tokens, an extend a batch of one sequence. */
#include <stdlib.h>
#include <string.h>

#include "model/decoder_impl.h"

struct ts_model_decoder {
    const ts_decoder_ops *ops;
    void *impl;
    int slots;
    int64_t max_len, vocab;
    ts_model_decoder_seq *seqs; /* [slots]: a step as a batch */
    bool *seen;             /* [slots]: argument checks */
};

static void free_scratch(ts_model_decoder *d) {
    free(d->seqs);
    free(d->seen);
}

static ts_status alloc_scratch(ts_model_decoder *d) {
    d->seqs = calloc((size_t)d->slots, sizeof *d->seqs);
    d->seen = calloc((size_t)d->slots, sizeof *d->seen);
    return d->seqs && d->seen ? TS_OK : TS_ERR_OOM;
}

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
    if (s == TS_OK && (s = alloc_scratch(d)) != TS_OK) ts_error_printf(err, err_size, "decoder: out of memory");
    if (s != TS_OK) {
        ts_model_decoder_free(d);
        return s;
    }
    *out = d;
    return TS_OK;
}

void ts_model_decoder_free(ts_model_decoder *d) {
    if (!d) return;
    if (d->impl) d->ops->free(d->impl);
    free_scratch(d);
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

/* Whether the n sequences' slots are distinct and in range. */
static bool distinct_slots(ts_model_decoder *d, int n, const ts_model_decoder_seq *seqs) {
    memset(d->seen, 0, (size_t)d->slots * sizeof *d->seen);
    for (int i = 0; i < n; i++) {
        int s = seqs[i].slot;
        if (s < 0 || s >= d->slots || d->seen[s]) return false;
        d->seen[s] = true;
    }
    return true;
}

ts_status ts_model_decoder_batch(ts_model_decoder *d, int n_seqs, const ts_model_decoder_seq *seqs, float *logits) {
    if (n_seqs < 1 || n_seqs > d->slots || !seqs || !distinct_slots(d, n_seqs, seqs)) return TS_ERR_INVALID_ARG;
    int64_t rows = 0;
    for (int i = 0; i < n_seqs; i++) {
        const ts_model_decoder_seq *q = &seqs[i];
        if (!q->ids || q->n < 1 || q->logit_rows < 0 || q->logit_rows > q->n) return TS_ERR_INVALID_ARG;
        rows += q->logit_rows;
    }
    if (rows > 0 && !logits) return TS_ERR_INVALID_ARG;
    for (int i = 0; i < n_seqs; i++)
        if (seqs[i].n > d->max_len - d->ops->length(d->impl, seqs[i].slot)) return TS_ERR_RANGE;
    return d->ops->batch(d->impl, n_seqs, seqs, logits);
}

ts_status ts_model_decoder_step(ts_model_decoder *d, int n, const int *slots, const int32_t *ids, float *logits) {
    if (n < 1 || n > d->slots || !slots || !ids || !logits) return TS_ERR_INVALID_ARG;
    for (int i = 0; i < n; i++) d->seqs[i] = (ts_model_decoder_seq){slots[i], &ids[i], 1, 1};
    return ts_model_decoder_batch(d, n, d->seqs, logits);
}

ts_status ts_model_decoder_extend(ts_model_decoder *d, int slot, const int32_t *ids, int64_t n, float *logits,
                                  int64_t logit_rows) {
    if (!ids || n < 1 || !logits || logit_rows < 1 || logit_rows > n) return TS_ERR_INVALID_ARG;
    ts_model_decoder_seq q = {slot, ids, n, logit_rows};
    return ts_model_decoder_batch(d, 1, &q, logits);
}

int64_t ts_model_decoder_passes(const ts_model_decoder *d) {
    return d->ops->passes(d->impl);
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

int64_t ts_model_decoder_mtp_lag(const ts_model_decoder *d, int slot) {
    if (slot < 0 || slot >= d->slots || !d->ops->mtp_lag) return 0;
    return d->ops->mtp_lag(d->impl, slot);
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
