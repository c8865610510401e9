/* infer.h - inference building blocks that do not depend on a model: the token sampler (a
 * logits processor plus the draw). The serving engine keeps one sampler per running request
 * and calls it once per generated token; the HTTP layer (serve.h) only fills in
 * ts_sampling_params from a request.
 *
 * Order of operations in ts_sampler_sample (the order of Hugging Face's logits processors and
 * vLLM, which is what OpenAI-style clients expect):
 *   0. logit bias (OpenAI's logit_bias), on a copy of the logits (the caller's row is never
 *      changed): l[id] += bias for each listed id (-100 bans a token in practice, +100 forces it);
 *   1. penalties, on the same copy:
 *        repetition (HF / llama.cpp): for every id seen in the prompt or the output so far,
 *          l > 0 ? l / r : l * r;
 *        then frequency and presence (OpenAI), over the generated ids only:
 *          l -= frequency * count + presence * (count > 0);
 *   2. temperature == 0: greedy - the argmax of the penalised logits (lowest id on a tie);
 *      nothing below applies and the chosen token's probability is reported as 1;
 *   3. temperature: w = exp((l - max l) / T);
 *   4. top-k: keep the k largest (ties broken by lower id);
 *   5. top-p: keep the shortest prefix (most likely first) of what is left whose probability,
 *      renormalised over what is left, reaches p (at least one token);
 *   6. min-p: keep the tokens whose probability is at least min_p times the largest;
 *   7. draw from what is left, renormalised, with the request's own ts_rng stream.
 * The probability reported with the token is its probability under that final distribution
 * (what speculative decoding's acceptance test needs).
 *
 * Cost per token: one pass over the row for the penalties' copy and max, one for the weights
 * (exp) and a histogram of their binary exponents, which bounds the candidates that can survive
 * 4-6 so that only those are sorted; the penalties touch only the ids seen so far. Nothing is
 * allocated after ts_sampler_new: the sampler owns scratch sized for the vocabulary.
 * A sampler serves one request at a time and is not thread-safe; keep one per sequence. */
#ifndef TESSERA_INFER_H
#define TESSERA_INFER_H

#include <stddef.h>
#include <stdint.h>

#include "tessera/core.h"

#ifdef __cplusplus
extern "C" {
#endif

#define TS_SAMPLING_MAX_LOGIT_BIAS 300 /* OpenAI's limit on logit_bias entries */

typedef struct {
    int32_t id;   /* a token id: [0, n_vocab) (ts_sampler_start checks) */
    float bias;   /* added to its logit: [-100, 100] (OpenAI's range) */
} ts_logit_bias;

typedef struct {
    float temperature;        /* >= 0; 0: greedy */
    int32_t top_k;            /* >= 0; 0: off */
    float top_p;              /* (0, 1]; 1: off */
    float min_p;              /* [0, 1]; 0: off */
    float repetition_penalty; /* > 0; 1: off */
    float frequency_penalty;  /* [-2, 2] (OpenAI's range); 0: off */
    float presence_penalty;   /* [-2, 2]; 0: off */
    uint64_t seed;            /* seeds the request's ts_rng: same seed and logits, same tokens */
    int32_t n_logit_bias;     /* [0, TS_SAMPLING_MAX_LOGIT_BIAS] entries of logit_bias in use */
    ts_logit_bias logit_bias[TS_SAMPLING_MAX_LOGIT_BIAS];
} ts_sampling_params;

/* temperature 1, every filter and penalty off, seed 0. */
ts_sampling_params ts_sampling_defaults(void);

/* NULL when every field is in range; else a one-line message naming the field, and *param (when
 * not NULL) is set to its OpenAI request name ("temperature", "top_p"...). */
const char *ts_sampling_params_check(const ts_sampling_params *p, const char **param);

typedef struct ts_sampler ts_sampler;

/* A sampler for rows of n_vocab logits. Errors: TS_ERR_INVALID_ARG, TS_ERR_OOM. It starts
 * with the defaults and no history; call ts_sampler_start for each request. */
ts_status ts_sampler_new(int32_t n_vocab, ts_sampler **out);
void ts_sampler_free(ts_sampler *s);

/* Begins a request: takes its parameters (TS_ERR_RANGE when ts_sampling_params_check rejects
 * them), seeds the stream from p->seed, forgets the previous request's tokens and records the
 * prompt's (for the repetition penalty). Ids outside [0, n_vocab) are TS_ERR_RANGE. Costs
 * O(prompt + ids seen by the previous request), not O(vocabulary). */
ts_status ts_sampler_start(ts_sampler *s, const ts_sampling_params *p, const int32_t *prompt, size_t n_prompt);

/* Chooses the next token from logits[n_vocab] as described above, records it as generated
 * (for the penalties), and returns it with its probability (prob may be NULL). NaN logits
 * count as -inf. TS_ERR_RANGE when no logit is finite or one is +inf. */
ts_status ts_sampler_sample(ts_sampler *s, const float *logits, int32_t *token, float *prob);

/* Records a token chosen elsewhere (a draft token the model accepted, a forced token) as
 * generated. TS_ERR_RANGE for an id outside the vocabulary. */
ts_status ts_sampler_accept(ts_sampler *s, int32_t token);

/* Applies steps 0 and 1 (the logit bias, then the penalties for the history so far) to
 * logits[n_vocab] in place: what ts_sampler_sample does to its copy. */
void ts_sampler_penalize(const ts_sampler *s, float *logits);

/* Speculative sampling (Leviathan et al. 2023, Chen et al. 2023) over the same processing:
 * ts_sampler_probs writes into probs[n_vocab] the distribution ts_sampler_sample would draw from
 * now (steps 1-6; greedy: all the mass on the argmax), drawing and recording nothing; errors
 * as ts_sampler_sample. Draft a token with ts_sampler_draw from the draft model's q (a draw
 * with the request's stream from any weights >= 0 summing > 0, not recorded; TS_ERR_RANGE if
 * all are 0), then ts_sampler_verify against the target's p: it accepts the draft with
 * probability min(1, p[d]/q[d]), else draws from normalize(max(0, p - q)), records the token it
 * returns and says which happened - the token is then distributed exactly as p. A distribution
 * on a single token is drawn without the stream: greedy p and q accept iff both argmaxes agree
 * and speculative greedy decoding consumes no randomness. */
ts_status ts_sampler_probs(ts_sampler *s, const float *logits, float *probs);
ts_status ts_sampler_draw(ts_sampler *s, const float *probs, int32_t *token);
ts_status ts_sampler_verify(ts_sampler *s, const float *p, const float *q, int32_t draft, int32_t *token,
                            bool *accepted);

/* ---------------------------------------------------------------- log-probabilities
 *
 * What OpenAI's `logprobs` report for a generated token: its log-probability under the model's
 * own distribution - log_softmax of the raw logits, before bias, penalties, temperature and
 * filters (vLLM's default "raw" logprobs) - and the n_top most likely tokens with theirs. */
#define TS_MAX_TOP_LOGPROBS 20 /* OpenAI's limit */

typedef struct {
    float logprob;    /* log p(token), <= 0 */
    int32_t n_top;    /* [0, TS_MAX_TOP_LOGPROBS] */
    int32_t top_ids[TS_MAX_TOP_LOGPROBS];     /* most likely first, the lower id first on a tie */
    float top_logprobs[TS_MAX_TOP_LOGPROBS];
} ts_token_logprobs;

/* Fills *out for token (in [0, n_vocab)) after logits[n_vocab], with min(n_top, n_vocab)
 * alternatives. NaN logits count as -inf. Sums in double; O(n_vocab * n_top) at worst, one
 * pass when the row is not adversarial. TS_ERR_INVALID_ARG for bad arguments or n_top outside
 * [0, TS_MAX_TOP_LOGPROBS]; TS_ERR_RANGE when no logit is finite or one is +inf. */
ts_status ts_logprobs(const float *logits, int32_t n_vocab, int32_t token, int32_t n_top, ts_token_logprobs *out);

#ifdef __cplusplus
}
#endif
#endif
