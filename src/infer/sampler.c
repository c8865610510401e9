/* sampler.c - the token sampler of infer.h: penalties, temperature, top-k, top-p, min-p and a
 * seeded draw over one row of logits, without allocating per token. The order of operations and
 * its reasons are documented in infer.h.
 *
 * Only the tokens that can survive the filters are sorted. The weights w = exp((l - max) / T)
 * lie in (0, 1]; a histogram of their binary exponents (bucket b holds 2^-b <= w < 2^(1-b))
 * tells, before any sorting, the smallest set of top buckets that surely holds what top-k,
 * top-p or min-p will keep; those tokens are collected and sorted, the rest never are. */
#include <float.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "tessera/infer.h"

#define N_BUCKETS 64 /* the last one also holds weights below 2^-62 */

typedef struct {
    float w;
    int32_t id;
} candidate;

struct ts_sampler {
    int32_t n_vocab;
    ts_sampling_params p;
    ts_rng rng;
    float *work;          /* [V] the penalised logits, then the weights */
    candidate *cand;      /* [V] the tokens that may survive the filters */
    int32_t *gen_count;   /* [V] times each id was generated in this request */
    uint8_t *in_prompt;   /* [V] 1 where the id occurs in the prompt */
    int32_t *seen;        /* [V] the ids with in_prompt or gen_count set, each once */
    int32_t n_seen;
};

ts_sampling_params ts_sampling_defaults(void) {
    return (ts_sampling_params){.temperature = 1.0f, .top_p = 1.0f, .repetition_penalty = 1.0f};
}

const char *ts_sampling_params_check(const ts_sampling_params *p, const char **param) {
    const char *name = NULL, *msg = NULL;
    if (!(p->temperature >= 0 && p->temperature <= FLT_MAX))
        name = "temperature", msg = "temperature must be a finite number >= 0";
    else if (p->top_k < 0)
        name = "top_k", msg = "top_k must be >= 0 (0: off)";
    else if (!(p->top_p > 0 && p->top_p <= 1))
        name = "top_p", msg = "top_p must be in (0, 1]";
    else if (!(p->min_p >= 0 && p->min_p <= 1))
        name = "min_p", msg = "min_p must be in [0, 1]";
    else if (!(p->repetition_penalty > 0 && p->repetition_penalty <= FLT_MAX))
        name = "repetition_penalty", msg = "repetition_penalty must be a finite number > 0";
    else if (!(p->frequency_penalty >= -2 && p->frequency_penalty <= 2))
        name = "frequency_penalty", msg = "frequency_penalty must be in [-2, 2]";
    else if (!(p->presence_penalty >= -2 && p->presence_penalty <= 2))
        name = "presence_penalty", msg = "presence_penalty must be in [-2, 2]";
    else if (p->n_logit_bias < 0 || p->n_logit_bias > TS_SAMPLING_MAX_LOGIT_BIAS)
        name = "logit_bias", msg = "logit_bias may hold at most 300 tokens";
    for (int32_t i = 0; !msg && i < p->n_logit_bias; i++)
        if (p->logit_bias[i].id < 0 || !(p->logit_bias[i].bias >= -100 && p->logit_bias[i].bias <= 100))
            name = "logit_bias", msg = "logit_bias maps token ids (>= 0) to biases in [-100, 100]";
    if (param) *param = name;
    return msg;
}

ts_status ts_sampler_new(int32_t n_vocab, ts_sampler **out) {
    if (!out || n_vocab < 1) return TS_ERR_INVALID_ARG;
    *out = NULL;
    ts_sampler *s = calloc(1, sizeof *s);
    if (!s) return TS_ERR_OOM;
    size_t v = (size_t)n_vocab;
    s->n_vocab = n_vocab;
    s->work = malloc(v * sizeof *s->work);
    s->cand = malloc(v * sizeof *s->cand);
    s->gen_count = calloc(v, sizeof *s->gen_count);
    s->in_prompt = calloc(v, sizeof *s->in_prompt);
    s->seen = malloc(v * sizeof *s->seen);
    if (!s->work || !s->cand || !s->gen_count || !s->in_prompt || !s->seen) {
        ts_sampler_free(s);
        return TS_ERR_OOM;
    }
    s->p = ts_sampling_defaults();
    ts_rng_seed(&s->rng, 0);
    *out = s;
    return TS_OK;
}

void ts_sampler_free(ts_sampler *s) {
    if (!s) return;
    free(s->work);
    free(s->cand);
    free(s->gen_count);
    free(s->in_prompt);
    free(s->seen);
    free(s);
}

static void note_seen(ts_sampler *s, int32_t id) {
    if (!s->in_prompt[id] && !s->gen_count[id]) s->seen[s->n_seen++] = id;
}

ts_status ts_sampler_start(ts_sampler *s, const ts_sampling_params *p, const int32_t *prompt, size_t n_prompt) {
    if (!s || !p || (n_prompt && !prompt)) return TS_ERR_INVALID_ARG;
    if (ts_sampling_params_check(p, NULL)) return TS_ERR_RANGE;
    for (size_t i = 0; i < n_prompt; i++)
        if (prompt[i] < 0 || prompt[i] >= s->n_vocab) return TS_ERR_RANGE;
    for (int32_t i = 0; i < p->n_logit_bias; i++)
        if (p->logit_bias[i].id >= s->n_vocab) return TS_ERR_RANGE;
    for (int32_t i = 0; i < s->n_seen; i++) s->in_prompt[s->seen[i]] = 0, s->gen_count[s->seen[i]] = 0;
    s->n_seen = 0;
    for (size_t i = 0; i < n_prompt; i++) {
        note_seen(s, prompt[i]);
        s->in_prompt[prompt[i]] = 1;
    }
    s->p = *p;
    ts_rng_seed(&s->rng, p->seed);
    return TS_OK;
}

ts_status ts_sampler_accept(ts_sampler *s, int32_t token) {
    if (!s) return TS_ERR_INVALID_ARG;
    if (token < 0 || token >= s->n_vocab) return TS_ERR_RANGE;
    note_seen(s, token);
    s->gen_count[token]++;
    return TS_OK;
}

void ts_sampler_penalize(const ts_sampler *s, float *logits) {
    const ts_sampling_params *p = &s->p;
    for (int32_t i = 0; i < p->n_logit_bias; i++) logits[p->logit_bias[i].id] += p->logit_bias[i].bias;
    for (int32_t i = 0; i < s->n_seen; i++) {
        int32_t id = s->seen[i], count = s->gen_count[id];
        float l = logits[id];
        if (p->repetition_penalty != 1.0f) l = l > 0 ? l / p->repetition_penalty : l * p->repetition_penalty;
        if (count > 0) l -= p->frequency_penalty * (float)count + p->presence_penalty;
        logits[id] = l;
    }
}

/* Bucket of a weight in (0, 1]: b such that 2^-b <= w < 2^(1-b), read off the float's exponent
 * field (this runs once per vocabulary entry); the last bucket takes the rest. */
static int bucket_of(float w) {
    uint32_t bits;
    memcpy(&bits, &w, sizeof bits);
    int b = 127 - (int)(bits >> 23);
    return b < N_BUCKETS - 1 ? b : N_BUCKETS - 1;
}

/* Whether a goes before b: larger weight first, then lower id. */
static bool goes_before(candidate a, candidate b) { return a.w > b.w || (a.w == b.w && a.id < b.id); }

static void sift_down(candidate *c, int32_t root, int32_t n) {
    for (int32_t child; (child = 2 * root + 1) < n; root = child) {
        if (child + 1 < n && goes_before(c[child], c[child + 1])) child++;
        if (!goes_before(c[root], c[child])) return;
        candidate t = c[root];
        c[root] = c[child];
        c[child] = t;
    }
}

/* Heapsort into goes_before order: in place and O(n log n) - glibc's qsort may allocate. */
static void sort_candidates(candidate *c, int32_t n) {
    for (int32_t i = n / 2; i-- > 0;) sift_down(c, i, n);
    for (int32_t end = n - 1; end > 0; end--) {
        candidate t = c[0];
        c[0] = c[end];
        c[end] = t;
        sift_down(c, 0, end);
    }
}

/* The last bucket that the survivors of top-k / top-p / min-p can reach. With top-k the
 * candidates must hold the whole top k, since top-p renormalises over them. */
static int last_needed_bucket(const ts_sampling_params *p, const int32_t *count, const double *mass, double total) {
    int64_t k = 0;
    double m = 0;
    for (int b = 0; b < N_BUCKETS - 1; b++) {
        k += count[b];
        m += mass[b];
        if (p->top_k > 0) {
            if (k >= p->top_k) return b;
        } else if ((p->top_p < 1 && m >= (double)p->top_p * total * (1 + 1e-12)) || /* slack: sums differ by order */
                   (p->min_p > 0 && b >= bucket_of(p->min_p))) {
            return b;
        }
    }
    return N_BUCKETS - 1;
}

/* Steps 3-6 of infer.h on the penalised logits in s->work, whose maximum is lmax: the survivors
 * are s->cand[0..return), most likely first, their weights summing to *kept. */
static int32_t survivors(ts_sampler *s, float lmax, double *kept_out) {
    const ts_sampling_params *p = &s->p;
    float *w = s->work, inv_t = 1.0f / p->temperature;
    int32_t count[N_BUCKETS] = {0};
    double mass[N_BUCKETS] = {0}, total = 0;
    for (int32_t v = 0; v < s->n_vocab; v++) {
        w[v] = expf((w[v] - lmax) * inv_t); /* -inf and NaN-free: 0 for -inf */
        if (w[v] > 0) {
            int b = bucket_of(w[v]);
            count[b]++;
            mass[b] += w[v];
        }
    }
    for (int b = 0; b < N_BUCKETS; b++) total += mass[b];
    int last = last_needed_bucket(p, count, mass, total);
    float floor_w = last < N_BUCKETS - 1 ? ldexpf(1.0f, -last) : 0; /* bucket <= last: w >= 2^-last */
    int32_t n = 0;
    for (int32_t v = 0; v < s->n_vocab; v++)
        if (w[v] >= floor_w && w[v] > 0) s->cand[n++] = (candidate){w[v], v};
    sort_candidates(s->cand, n);

    if (p->top_k > 0 && p->top_k < n) n = p->top_k;
    if (p->top_p < 1) {
        double z = 0, cum = 0;
        if (p->top_k > 0)
            for (int32_t i = 0; i < n; i++) z += s->cand[i].w;
        else
            z = total;
        for (int32_t i = 0; i < n; i++) {
            cum += s->cand[i].w;
            if (cum >= (double)p->top_p * z) {
                n = i + 1;
                break;
            }
        }
    }
    if (p->min_p > 0) {
        float min_w = p->min_p * s->cand[0].w;
        int32_t keep = 1;
        while (keep < n && s->cand[keep].w >= min_w) keep++;
        n = keep;
    }
    double kept = 0;
    for (int32_t i = 0; i < n; i++) kept += s->cand[i].w;
    *kept_out = kept;
    return n;
}

/* Step 7: a draw among the survivors. */
static void draw(ts_sampler *s, float lmax, int32_t *token, float *prob) {
    double kept, cum = 0;
    int32_t n = survivors(s, lmax, &kept);
    double u = ts_rng_uniform(&s->rng) * kept;
    int32_t pick = n - 1; /* rounding can leave u just above the last partial sum */
    for (int32_t i = 0; i < n; i++) {
        cum += s->cand[i].w;
        if (u < cum) {
            pick = i;
            break;
        }
    }
    *token = s->cand[pick].id;
    *prob = (float)(s->cand[pick].w / kept);
}

/* Step 1 into s->work (NaN -> -inf): the argmax (*best) and the maximum (*lmax), TS_ERR_RANGE
 * when no logit is finite or one is +inf; and whether the parameters make it greedy. */
static ts_status penalised(ts_sampler *s, const float *logits, int32_t *best, float *lmax, bool *greedy) {
    float *l = s->work;
    memcpy(l, logits, (size_t)s->n_vocab * sizeof *l);
    ts_sampler_penalize(s, l);
    *best = -1;
    *lmax = -INFINITY;
    for (int32_t v = 0; v < s->n_vocab; v++) {
        if (l[v] > *lmax) *lmax = l[v], *best = v;
        else if (l[v] != l[v]) l[v] = -INFINITY; /* NaN */
    }
    if (*best < 0 || isinf(*lmax)) return TS_ERR_RANGE;
    *greedy = s->p.temperature == 0 || s->p.top_k == 1 || isinf(1.0f / s->p.temperature); /* a subnormal T too */
    return TS_OK;
}

ts_status ts_sampler_sample(ts_sampler *s, const float *logits, int32_t *token, float *prob) {
    if (!s || !logits || !token) return TS_ERR_INVALID_ARG;
    int32_t best;
    float lmax, chosen_prob = 1.0f;
    bool greedy;
    ts_status st = penalised(s, logits, &best, &lmax, &greedy);
    if (st != TS_OK) return st;
    if (greedy) *token = best;
    else draw(s, lmax, token, &chosen_prob);
    if (prob) *prob = chosen_prob;
    return ts_sampler_accept(s, *token);
}

ts_status ts_sampler_probs(ts_sampler *s, const float *logits, float *probs) {
    if (!s || !logits || !probs) return TS_ERR_INVALID_ARG;
    int32_t best;
    float lmax;
    bool greedy;
    ts_status st = penalised(s, logits, &best, &lmax, &greedy);
    if (st != TS_OK) return st;
    memset(probs, 0, (size_t)s->n_vocab * sizeof *probs);
    if (greedy) {
        probs[best] = 1.0f;
        return TS_OK;
    }
    double kept;
    int32_t n = survivors(s, lmax, &kept);
    for (int32_t i = 0; i < n; i++) probs[s->cand[i].id] = (float)(s->cand[i].w / kept);
    return TS_OK;
}

/* A draw from weights w[n_vocab] (>= 0) with the request's stream - none when a single id has
 * weight (greedy stays deterministic); the last id with weight on a rounding overshoot, -1 when
 * every weight is 0. */
static int32_t draw_weights(ts_sampler *s, const float *w) {
    double total = 0, cum = 0;
    int32_t last = -1, n = 0;
    for (int32_t v = 0; v < s->n_vocab; v++)
        if (w[v] > 0) total += w[v], last = v, n++;
    if (n <= 1) return last;
    double u = ts_rng_uniform(&s->rng) * total;
    for (int32_t v = 0; v < s->n_vocab; v++) {
        if (!(w[v] > 0)) continue;
        cum += w[v];
        if (u < cum) return v;
    }
    return last;
}

ts_status ts_sampler_draw(ts_sampler *s, const float *probs, int32_t *token) {
    if (!s || !probs || !token) return TS_ERR_INVALID_ARG;
    *token = draw_weights(s, probs);
    return *token < 0 ? TS_ERR_RANGE : TS_OK;
}

ts_status ts_sampler_verify(ts_sampler *s, const float *p, const float *q, int32_t draft, int32_t *token,
                            bool *accepted) {
    if (!s || !p || !q || !token || !accepted) return TS_ERR_INVALID_ARG;
    if (draft < 0 || draft >= s->n_vocab) return TS_ERR_RANGE;
    float pd = p[draft], qd = q[draft];
    /* certain acceptance or rejection draws nothing, so greedy decoding never touches the stream */
    *accepted = pd >= qd || (pd > 0 && ts_rng_uniform(&s->rng) * qd < pd);
    if (*accepted) {
        *token = draft;
        return ts_sampler_accept(s, draft);
    }
    for (int32_t v = 0; v < s->n_vocab; v++) s->work[v] = p[v] > q[v] ? p[v] - q[v] : 0.0f;
    *token = draw_weights(s, s->work);
    if (*token < 0) *token = draw_weights(s, p); /* p = q up to rounding: the residual vanished */
    return *token < 0 ? TS_ERR_RANGE : ts_sampler_accept(s, *token);
}
