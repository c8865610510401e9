/* logprobs.c - the log-probabilities OpenAI's `logprobs` report (infer.h, ts_logprobs): a
 * generated token's log_softmax under the raw logits, and the most likely alternatives. The
 * serving engine calls it once per generated token of a request that asks, so it allocates
 * nothing and reads the row twice: the maximum, then the sum of exponentials (in double) while
 * the best n_top are kept by insertion into a short sorted list. */
#include <math.h>

#include "tessera/infer.h"

/* Whether logit a of id ia ranks before logit b of id ib: larger first, lower id on a tie. */
static int ranks_before(float a, int32_t ia, float b, int32_t ib) { return a > b || (a == b && ia < ib); }

/* A logit with NaN read as -inf. */
static float logit_at(const float *logits, int32_t v) {
    float l = logits[v];
    return l == l ? l : -INFINITY;
}

/* Inserts (l, v) into the sorted list of the best *n (at most cap) seen so far. */
static void keep_top(float l, int32_t v, int32_t cap, int32_t *n, float *top_l, int32_t *top_id) {
    if (*n == cap && !ranks_before(l, v, top_l[cap - 1], top_id[cap - 1])) return;
    int32_t i = *n < cap ? (*n)++ : cap - 1;
    for (; i > 0 && ranks_before(l, v, top_l[i - 1], top_id[i - 1]); i--) {
        top_l[i] = top_l[i - 1];
        top_id[i] = top_id[i - 1];
    }
    top_l[i] = l;
    top_id[i] = v;
}

ts_status ts_logprobs(const float *logits, int32_t n_vocab, int32_t token, int32_t n_top, ts_token_logprobs *out) {
    if (!logits || !out || n_vocab < 1 || token < 0 || token >= n_vocab || n_top < 0 || n_top > TS_MAX_TOP_LOGPROBS)
        return TS_ERR_INVALID_ARG;
    float lmax = -INFINITY;
    for (int32_t v = 0; v < n_vocab; v++) {
        float l = logit_at(logits, v);
        if (l > lmax) lmax = l;
    }
    if (isinf(lmax)) return TS_ERR_RANGE; /* none finite, or +inf */
    int32_t cap = n_top < n_vocab ? n_top : n_vocab, n = 0;
    float top_l[TS_MAX_TOP_LOGPROBS];
    double sum = 0;
    for (int32_t v = 0; v < n_vocab; v++) {
        float l = logit_at(logits, v);
        sum += exp((double)l - lmax);
        if (cap) keep_top(l, v, cap, &n, top_l, out->top_ids);
    }
    double lse = lmax + log(sum);
    out->logprob = (float)((double)logit_at(logits, token) - lse);
    out->n_top = n;
    for (int32_t i = 0; i < n; i++) out->top_logprobs[i] = (float)((double)top_l[i] - lse);
    return TS_OK;
}
