/* speculative.c - speculative decoding of one decoder slot with the MTP block as a one-token
 * draft (model.h): the round of the design there - draft from the MTP block, verify with one
 * two-token extend, keep two tokens or drop the draft - over ts_model_decoder_mtp and the
 * sampler's speculative test (infer.h), which is what keeps plain sampling's distribution. */
#include <math.h>
#include <stdlib.h>

#include "tessera/model.h"

struct ts_speculator {
    ts_model_decoder *dec;
    int64_t V;
    float *draft;   /* [V] the MTP block's logits */
    float *main;    /* [2, V] the main model's after next and after the draft */
    float *p, *q;   /* [V] processed target and draft distributions */
    float min_prob; /* draft only when the block's top token has at least this probability */
    int64_t drafted, accepted;
};

ts_status ts_speculator_new(const ts_model_weights *w, ts_model_decoder *d, ts_speculator **out, char *err,
                            size_t err_size) {
    if (!w || !d || !out) return TS_ERR_INVALID_ARG;
    *out = NULL;
    const ts_v4_config *c = ts_model_weights_config(w);
    if (c->kind != TS_MODEL_DEEPSEEK_V4 || c->num_nextn_predict_layers < 1) {
        ts_error_printf(err, err_size,
                        "speculative decoding with MTP needs a DeepSeek-V4 model with an MTP block "
                        "(num_nextn_predict_layers >= 1)");
        return TS_ERR_UNSUPPORTED;
    }
    ts_speculator *sp = calloc(1, sizeof *sp);
    size_t V = (size_t)c->vocab_size;
    if (sp) {
        sp->draft = malloc(V * sizeof(float));
        sp->main = malloc(2 * V * sizeof(float));
        sp->p = malloc(V * sizeof(float));
        sp->q = malloc(V * sizeof(float));
    }
    if (!sp || !sp->draft || !sp->main || !sp->p || !sp->q) {
        ts_speculator_free(sp);
        ts_error_printf(err, err_size, "speculative decoding: out of memory");
        return TS_ERR_OOM;
    }
    sp->dec = d;
    sp->V = c->vocab_size;
    *out = sp;
    return TS_OK;
}

void ts_speculator_free(ts_speculator *sp) {
    if (!sp) return;
    free(sp->draft);
    free(sp->main);
    free(sp->p);
    free(sp->q);
    free(sp);
}

void ts_speculator_set_min_prob(ts_speculator *sp, float min_prob) { sp->min_prob = min_prob; }

/* The largest probability of softmax(logits[V]) - the block's confidence, before any sampling
 * parameter (a greedy q is one-hot). */
static float top_prob(const float *logits, int64_t V) {
    float mx = logits[0];
    for (int64_t v = 1; v < V; v++) mx = logits[v] > mx ? logits[v] : mx;
    double z = 0;
    for (int64_t v = 0; v < V; v++) z += exp((double)(logits[v] - mx));
    return (float)(1.0 / z);
}

/* Pieces of at most TS_MODEL_MTP_MAX_LAG tokens, the MTP block brought up to date before each. */
ts_status ts_speculator_prefill(ts_speculator *sp, int slot, const int32_t *ids, int64_t n, float *logits) {
    if (!sp || !ids || n < 1 || !logits) return TS_ERR_INVALID_ARG;
    ts_status s = TS_OK;
    for (int64_t at = 0, k; s == TS_OK && at < n; at += k) {
        k = n - at < TS_MODEL_MTP_MAX_LAG ? n - at : TS_MODEL_MTP_MAX_LAG;
        if (ts_model_decoder_length(sp->dec, slot) > 0) s = ts_model_decoder_mtp(sp->dec, slot, ids[at], sp->draft);
        if (s == TS_OK) s = ts_model_decoder_extend(sp->dec, slot, ids + at, k, logits, 1);
    }
    return s;
}

/* A round without a draft: next appended by a step, the token after it sampled. */
static ts_status plain_round(ts_speculator *sp, int slot, ts_sampler *smp, int32_t next, int32_t out[2], int *n_out) {
    ts_status s = ts_model_decoder_step(sp->dec, 1, &slot, &next, sp->main);
    if (s == TS_OK) s = ts_sampler_sample(smp, sp->main, &out[0], NULL);
    *n_out = s == TS_OK;
    return s;
}

/* A round with the block's logits in sp->draft, the slot holding len tokens before next. */
static ts_status draft_round(ts_speculator *sp, int slot, ts_sampler *smp, int32_t next, int64_t len, int32_t out[2],
                             int *n_out) {
    int32_t pair[2] = {next, 0};
    bool accepted = false;
    ts_status s = ts_sampler_probs(smp, sp->draft, sp->q);
    if (s == TS_OK) s = ts_sampler_draw(smp, sp->q, &pair[1]);
    if (s == TS_OK) s = ts_model_decoder_extend(sp->dec, slot, pair, 2, sp->main, 2);
    if (s == TS_OK) s = ts_sampler_probs(smp, sp->main, sp->p);
    if (s == TS_OK) s = ts_sampler_verify(smp, sp->p, sp->q, pair[1], &out[0], &accepted);
    if (s != TS_OK) return s;
    sp->drafted++;
    sp->accepted += accepted;
    if (!accepted) {
        *n_out = 1;
        return ts_model_decoder_truncate(sp->dec, slot, len + 1);
    }
    s = ts_sampler_sample(smp, sp->main + sp->V, &out[1], NULL);
    *n_out = s == TS_OK ? 2 : 1;
    return s;
}

ts_status ts_speculator_step(ts_speculator *sp, int slot, ts_sampler *smp, int32_t next, int32_t out[2], int *n_out) {
    if (!sp || !smp || !out || !n_out) return TS_ERR_INVALID_ARG;
    *n_out = 0;
    int64_t len = ts_model_decoder_length(sp->dec, slot);
    /* a draft needs a position to draft from, room for two tokens and, if asked, confidence */
    bool draft = len >= 1 && len + 2 <= ts_model_decoder_max_len(sp->dec);
    if (draft) {
        ts_status s = ts_model_decoder_mtp(sp->dec, slot, next, sp->draft);
        if (s != TS_OK) return s;
        draft = sp->min_prob <= 0 || top_prob(sp->draft, sp->V) >= sp->min_prob;
    }
    return draft ? draft_round(sp, slot, smp, next, len, out, n_out) : plain_round(sp, slot, smp, next, out, n_out);
}

void ts_speculator_stats(const ts_speculator *sp, int64_t *drafted, int64_t *accepted) {
    *drafted = sp->drafted;
    *accepted = sp->accepted;
}
