/* moe_balance.c - the two MoE load-balancing mechanisms of DeepSeek-V4 training (train.h,
 * spec §5.1-§5.2): the aux-loss-free router-bias update applied after every step, and the
 * "slight" sequence-wise balance loss (value and gradient with respect to the router
 * affinities) that the model adds to its loss. Both are standalone numeric functions on host
 * arrays; sums run in double. */
#include <math.h>

#include "tessera/train.h"

ts_status ts_moe_bias_update(float *bias, const int64_t *load, int n_experts, double gamma) {
    if (!bias || !load || n_experts <= 0 || !isfinite(gamma)) return TS_ERR_INVALID_ARG;
    int64_t total = 0;
    for (int e = 0; e < n_experts; e++) {
        if (load[e] < 0) return TS_ERR_INVALID_ARG;
        total += load[e];
    }
    float step = (float)gamma;
    for (int e = 0; e < n_experts; e++) {
        /* sign(mean - load_e) compared in integers: mean = total / E is rarely exact. */
        int64_t scaled = load[e] * (int64_t)n_experts;
        if (scaled < total) bias[e] = bias[e] + step;      /* under-loaded: more attractive */
        else if (scaled > total) bias[e] = bias[e] - step; /* over-loaded: less attractive */
    }
    return TS_OK;
}

/* f_e = E / (K T) * (tokens that selected e); false when an id is out of range. */
static bool selection_fractions(const int32_t *topk, int64_t T, int n_experts, int k, double *f) {
    for (int e = 0; e < n_experts; e++) f[e] = 0;
    for (int64_t i = 0; i < T * k; i++) {
        if (topk[i] < 0 || topk[i] >= n_experts) return false;
        f[topk[i]] += 1;
    }
    double norm = (double)n_experts / ((double)k * (double)T);
    for (int e = 0; e < n_experts; e++) f[e] *= norm;
    return true;
}

/* Largest expert count handled with the fractions on the stack. */
#define BALANCE_MAX_EXPERTS 4096

ts_status ts_moe_seq_balance_loss(const float *scores, const int32_t *topk, int64_t T, int n_experts,
                                  int k, double alpha, double *loss, float *grad_scores) {
    if (!scores || !topk || !loss || T <= 0 || n_experts <= 0 || k <= 0 || k > n_experts)
        return TS_ERR_INVALID_ARG;
    if (n_experts > BALANCE_MAX_EXPERTS) return TS_ERR_UNSUPPORTED;
    double f[BALANCE_MAX_EXPERTS];
    if (!selection_fractions(topk, T, n_experts, k, f)) return TS_ERR_RANGE;

    /* L = alpha * sum_e f_e * (1/T) sum_t s_et / S_t = (alpha / T) * sum_t (sum_e f_e s_et) / S_t */
    double total = 0;
    for (int64_t t = 0; t < T; t++) {
        const float *s = scores + t * n_experts;
        double row_sum = 0, weighted = 0;
        for (int e = 0; e < n_experts; e++) {
            row_sum += s[e];
            weighted += f[e] * s[e];
        }
        if (!(row_sum > 0)) return TS_ERR_RANGE;
        total += weighted / row_sum;
        if (grad_scores) {
            /* d(s_et / S_t)/d s_jt = (delta_ej - s_et / S_t) / S_t, so
             * dL/ds_jt = alpha / (T S_t) * (f_j - sum_e f_e s_et / S_t). */
            double mean_f = weighted / row_sum, coef = alpha / ((double)T * row_sum);
            for (int e = 0; e < n_experts; e++) grad_scores[t * n_experts + e] = (float)(coef * (f[e] - mean_f));
        }
    }
    *loss = alpha * total / (double)T;
    return TS_OK;
}
