/* decoder.c - the public incremental decoder (model.h): argument checks and bookkeeping shared
 * by every model family, over the family's implementation (decoder_impl.h). Step, extend and
 * batch meet in the one call a family gives: a family with a batch (dense) runs steps and
 * extends through it; one without (V4) runs a batch as one step for its single tokens and an
 * extend per longer sequence - several passes, and not all or nothing should a later one fail
 * for another reason than the up-front checks. */
#include <stdlib.h>
#include <string.h>

#include "model/decoder_impl.h"

struct ts_model_decoder {
    const ts_decoder_ops *ops;
    void *impl;
    int slots;
    int64_t max_len, vocab;
    int64_t calls;          /* into the implementation (the pass count without ops->passes) */
    ts_model_decoder_seq *seqs; /* [slots]: a step as a batch */
    bool *seen;             /* [slots]: argument checks */
    /* without ops->batch: a batch's single tokens as a step */
    int *step_slots;        /* [slots] */
    int32_t *step_ids;      /* [slots] */
    float *step_logits;     /* [slots + 1, V]: the step's, then the logits nobody wants */
};

static void free_scratch(ts_model_decoder *d) {
    free(d->seqs);
    free(d->seen);
    free(d->step_slots);
    free(d->step_ids);
    free(d->step_logits);
}

static ts_status alloc_scratch(ts_model_decoder *d) {
    d->seqs = calloc((size_t)d->slots, sizeof *d->seqs);
    d->seen = calloc((size_t)d->slots, sizeof *d->seen);
    if (!d->seqs || !d->seen) return TS_ERR_OOM;
    if (d->ops->batch) return TS_OK;
    d->step_slots = calloc((size_t)d->slots, sizeof *d->step_slots);
    d->step_ids = calloc((size_t)d->slots, sizeof *d->step_ids);
    d->step_logits = calloc((size_t)((d->slots + 1) * d->vocab), sizeof *d->step_logits);
    return d->step_slots && d->step_ids && d->step_logits ? TS_OK : TS_ERR_OOM;
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

/* Whether the n slots are distinct and in range. */
static bool distinct_slots(ts_model_decoder *d, int n, const int *slots, const ts_model_decoder_seq *seqs) {
    memset(d->seen, 0, (size_t)d->slots * sizeof *d->seen);
    for (int i = 0; i < n; i++) {
        int s = slots ? slots[i] : seqs[i].slot;
        if (s < 0 || s >= d->slots || d->seen[s]) return false;
        d->seen[s] = true;
    }
    return true;
}

/* Without ops->batch: the single tokens in one step (their logits through step_logits), then
 * each longer sequence through extend (with at least one logit row: the last row of
 * step_logits takes it when none is wanted). The blocks of all of them are counted first: a
 * pool too short for the batch is TS_ERR_OOM before anything is appended, as it is for a
 * family's own batch (a later pass refused for want of blocks would leave the earlier ones in). */
static ts_status batch_by_steps(ts_model_decoder *d, int n, const ts_model_decoder_seq *seqs, float *logits) {
    if (d->ops->pool && d->ops->blocks_needed) {
        ts_model_decoder_pool pool;
        d->ops->pool(d->impl, &pool);
        int64_t need = 0;
        for (int i = 0; i < n; i++) need += d->ops->blocks_needed(d->impl, seqs[i].slot, seqs[i].n);
        if (need > pool.free_blocks) return TS_ERR_OOM;
    }
    int n_step = 0;
    for (int i = 0; i < n; i++) {
        if (seqs[i].n > 1) continue;
        d->step_slots[n_step] = seqs[i].slot;
        d->step_ids[n_step++] = seqs[i].ids[0];
    }
    ts_status s = TS_OK;
    if (n_step > 0) {
        d->calls++;
        s = d->ops->step(d->impl, n_step, d->step_slots, d->step_ids, d->step_logits);
    }
    int64_t row = 0, stepped = 0;
    for (int i = 0; s == TS_OK && i < n; i++) {
        const ts_model_decoder_seq *q = &seqs[i];
        float *out = q->logit_rows > 0 ? logits + row * d->vocab : d->step_logits + d->slots * d->vocab;
        if (q->n == 1 && q->logit_rows > 0)
            memcpy(out, d->step_logits + stepped * d->vocab, (size_t)d->vocab * sizeof *out);
        stepped += q->n == 1;
        if (q->n > 1) {
            d->calls++;
            s = d->ops->extend(d->impl, q->slot, q->ids, q->n, out, q->logit_rows > 0 ? q->logit_rows : 1);
        }
        row += q->logit_rows;
    }
    return s;
}

ts_status ts_model_decoder_batch(ts_model_decoder *d, int n_seqs, const ts_model_decoder_seq *seqs, float *logits) {
    if (n_seqs < 1 || n_seqs > d->slots || !seqs || !distinct_slots(d, n_seqs, NULL, seqs)) return TS_ERR_INVALID_ARG;
    int64_t rows = 0;
    for (int i = 0; i < n_seqs; i++) {
        const ts_model_decoder_seq *q = &seqs[i];
        if (!q->ids || q->n < 1 || q->logit_rows < 0 || q->logit_rows > q->n) return TS_ERR_INVALID_ARG;
        rows += q->logit_rows;
    }
    if (rows > 0 && !logits) return TS_ERR_INVALID_ARG;
    for (int i = 0; i < n_seqs; i++)
        if (seqs[i].n > d->max_len - d->ops->length(d->impl, seqs[i].slot)) return TS_ERR_RANGE;
    if (!d->ops->batch) return batch_by_steps(d, n_seqs, seqs, logits);
    d->calls++;
    return d->ops->batch(d->impl, n_seqs, seqs, logits);
}

ts_status ts_model_decoder_step(ts_model_decoder *d, int n, const int *slots, const int32_t *ids, float *logits) {
    if (n < 1 || n > d->slots || !slots || !ids || !logits || !distinct_slots(d, n, slots, NULL))
        return TS_ERR_INVALID_ARG;
    if (d->ops->batch) {
        for (int i = 0; i < n; i++) d->seqs[i] = (ts_model_decoder_seq){slots[i], &ids[i], 1, 1};
        return ts_model_decoder_batch(d, n, d->seqs, logits);
    }
    for (int i = 0; i < n; i++)
        if (d->ops->length(d->impl, slots[i]) >= d->max_len) return TS_ERR_RANGE;
    d->calls++;
    return d->ops->step(d->impl, n, slots, ids, logits);
}

ts_status ts_model_decoder_extend(ts_model_decoder *d, int slot, const int32_t *ids, int64_t n, float *logits,
                                  int64_t logit_rows) {
    if (slot < 0 || slot >= d->slots || !ids || n < 1 || !logits || logit_rows < 1 || logit_rows > n)
        return TS_ERR_INVALID_ARG;
    if (d->ops->batch) {
        ts_model_decoder_seq q = {slot, ids, n, logit_rows};
        return ts_model_decoder_batch(d, 1, &q, logits);
    }
    if (d->ops->length(d->impl, slot) + n > d->max_len) return TS_ERR_RANGE;
    d->calls++;
    return d->ops->extend(d->impl, slot, ids, n, logits, logit_rows);
}

int64_t ts_model_decoder_passes(const ts_model_decoder *d) {
    return d->ops->passes ? d->ops->passes(d->impl) : d->calls;
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
