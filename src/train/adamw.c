/* adamw.c - AdamW (train.h), bit-for-bit the arithmetic of torch.optim.AdamW on CPU, so that a
 * trajectory recorded from PyTorch (tests/fixtures/optim/adamw.json) is reproduced to the ulp.
 * The DeepSeek-V4 trainer uses it for the tensors spec §5.3 assigns to AdamW (embedding, heads,
 * norms, mHC base/scale, sink, ape); Muon (muon.c) takes every other matrix.
 *
 * How PyTorch computes a step, and therefore how this file does:
 *  - hyper-parameters are Python floats (double); every per-step scalar (1 - lr*wd, lr / bias
 *    correction, sqrt of the second bias correction) is computed in double and rounded to f32
 *    once, when the tensor op receives it;
 *  - the elementwise ops are f32: p *= decay; m = lerp(m, g, 1 - beta1) and
 *    v = addcmul(v * beta2, g, g, 1 - beta2), each one fused multiply-add in PyTorch's CPU
 *    kernels (vector and tail code alike - checked against torch 2.15 bit for bit);
 *    d = sqrt(v) / bc2_sqrt + eps; p = p + (step_size * m) / d (addcdiv: no fusion);
 *  - the step counter is an f32 holding an integer, incremented before the bias corrections.
 * The ops are elementwise, so fusing PyTorch's separate passes into one loop changes nothing,
 * and any split of the elements over threads gives identical bits. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tessera/cpu.h"
#include "tessera/train.h"
#include "train/optim_common.h"

/* Elements below which a parameter is updated on the calling thread only. */
#define ADAMW_MIN_CHUNK 16384
/* Longest state-buffer suffix (".exp_avg_sq") plus its terminator. */
#define ADAMW_SUFFIX_MAX 12

typedef struct {
    char *name;
    int64_t numel;
    int group;
    float *exp_avg;    /* first moment m */
    float *exp_avg_sq; /* second moment v */
} adamw_param;

struct ts_adamw {
    int n_groups, n_params;
    ts_adamw_group *groups;
    adamw_param *params;
    float step; /* the integral step count, kept as f32 exactly as PyTorch's state["step"] */
    float *moments; /* one allocation holding every exp_avg and exp_avg_sq */
};

/* The f32 scalars of one group for one step. */
typedef struct {
    bool decays;      /* PyTorch skips the weight-decay multiply when weight_decay == 0 */
    float decay;      /* 1 - lr * wd */
    float lerp_w;     /* 1 - beta1 */
    float beta2;
    float one_minus_beta2;
    float bc2_sqrt;   /* sqrt(1 - beta2^step) */
    float eps;
    float step_size;  /* -lr / (1 - beta1^step) */
} adamw_scalars;

ts_adamw_group ts_adamw_group_default(double weight_decay) {
    ts_adamw_group g = {.lr_scale = 1.0, .beta1 = 0.9, .beta2 = 0.95, .eps = 1e-8,
                        .weight_decay = weight_decay};
    return g;
}

/* ---------------------------------------------------------------- creation */

static bool group_is_valid(const ts_adamw_group *g) {
    return isfinite(g->lr_scale) && g->lr_scale >= 0 && g->beta1 >= 0 && g->beta1 < 1 &&
           g->beta2 >= 0 && g->beta2 < 1 && isfinite(g->eps) && g->eps >= 0 &&
           isfinite(g->weight_decay) && g->weight_decay >= 0;
}

/* State-buffer names are "<name>.<suffix>"; they must fit ts_optim_state.name. */
static bool name_fits(const char *name) {
    return !name || strlen(name) + ADAMW_SUFFIX_MAX <= TS_OPTIM_STATE_NAME_MAX;
}

ts_status ts_adamw_new(const ts_adamw_group *groups, int n_groups, const ts_adamw_param *params,
                       int n_params, ts_adamw **out) {
    if (!out) return TS_ERR_INVALID_ARG;
    *out = NULL;
    if (!groups || n_groups <= 0 || (!params && n_params > 0) || n_params < 0) return TS_ERR_INVALID_ARG;
    for (int g = 0; g < n_groups; g++)
        if (!group_is_valid(&groups[g])) return TS_ERR_INVALID_ARG;
    int64_t total = 0;
    for (int i = 0; i < n_params; i++) {
        if (params[i].numel <= 0 || params[i].group < 0 || params[i].group >= n_groups ||
            !name_fits(params[i].name))
            return TS_ERR_INVALID_ARG;
        total += params[i].numel;
    }

    ts_adamw *opt = calloc(1, sizeof *opt);
    if (!opt) return TS_ERR_OOM;
    opt->n_groups = n_groups;
    opt->n_params = n_params;
    opt->groups = malloc(sizeof *opt->groups * (size_t)n_groups);
    opt->params = calloc((size_t)(n_params ? n_params : 1), sizeof *opt->params);
    opt->moments = calloc((size_t)(2 * total + 1), sizeof(float));
    if (!opt->groups || !opt->params || !opt->moments) {
        ts_adamw_free(opt);
        return TS_ERR_OOM;
    }
    memcpy(opt->groups, groups, sizeof *groups * (size_t)n_groups);
    float *next = opt->moments;
    for (int i = 0; i < n_params; i++) {
        adamw_param *p = &opt->params[i];
        p->name = optim_param_name_copy(params[i].name, i);
        if (!p->name) {
            ts_adamw_free(opt);
            return TS_ERR_OOM;
        }
        p->numel = params[i].numel;
        p->group = params[i].group;
        p->exp_avg = next;
        p->exp_avg_sq = next + p->numel;
        next += 2 * p->numel;
    }
    *out = opt;
    return TS_OK;
}

void ts_adamw_free(ts_adamw *opt) {
    if (!opt) return;
    if (opt->params)
        for (int i = 0; i < opt->n_params; i++) free(opt->params[i].name);
    free(opt->params);
    free(opt->groups);
    free(opt->moments);
    free(opt);
}

/* ---------------------------------------------------------------- the step */

/* Scalars as torch/optim/adam.py forms them from Python floats (beta ** step is C pow, as
 * CPython's float power is; bias_correction2 ** 0.5 likewise). */
static adamw_scalars group_scalars(const ts_adamw_group *g, double lr, float step) {
    double glr = lr * g->lr_scale;
    double t = (double)step;
    double bias_correction1 = 1.0 - pow(g->beta1, t);
    double bias_correction2 = 1.0 - pow(g->beta2, t);
    adamw_scalars s;
    s.decays = g->weight_decay != 0;
    s.decay = (float)(1.0 - glr * g->weight_decay);
    s.lerp_w = (float)(1.0 - g->beta1);
    s.beta2 = (float)g->beta2;
    s.one_minus_beta2 = (float)(1.0 - g->beta2);
    s.bc2_sqrt = (float)pow(bias_correction2, 0.5);
    s.eps = (float)g->eps;
    s.step_size = (float)((glr / bias_correction1) * -1.0);
    return s;
}

/* torch.lerp's vectorized CPU kernel: one fused multiply-add, anchored at the nearer end. */
static inline float lerp_f32(float start, float end, float w) {
    return fabsf(w) < 0.5f ? fmaf(w, end - start, start) : fmaf(w - 1.0f, end - start, end);
}

typedef struct {
    float *param;
    const float *grad;
    float *exp_avg, *exp_avg_sq;
    adamw_scalars s;
} adamw_job;

/* Elements [begin, end) one by one (the portable path, and the AVX2 path's tail). */
static void adamw_update_scalar(const adamw_job *job, int64_t begin, int64_t end) {
    const adamw_scalars s = job->s;
    float *p = job->param, *m = job->exp_avg, *v = job->exp_avg_sq;
    const float *g = job->grad;
    for (int64_t i = begin; i < end; i++) {
        float pi = p[i];
        if (s.decays) pi = pi * s.decay;
        float gi = g[i];
        float mi = lerp_f32(m[i], gi, s.lerp_w);
        float vi = v[i] * s.beta2;
        vi = fmaf(s.one_minus_beta2 * gi, gi, vi); /* addcmul: one FMA, as PyTorch's kernel */
        float denom = sqrtf(vi) / s.bc2_sqrt + s.eps;
        p[i] = pi + s.step_size * mi / denom;
        m[i] = mi;
        v[i] = vi;
    }
}

#if defined(__x86_64__)
#include <immintrin.h>

/* The same operations eight lanes at a time. Every one is a correctly rounded IEEE operation
 * (fmaf included), so the bits equal adamw_update_scalar's; without this the baseline build
 * calls libm's fmaf per element and cannot vectorize sqrtf (errno). */
__attribute__((target("avx2,fma"))) static int64_t adamw_update_avx2(const adamw_job *job, int64_t begin, int64_t end) {
    const adamw_scalars s = job->s;
    float *p = job->param, *m = job->exp_avg, *v = job->exp_avg_sq;
    const float *g = job->grad;
    const __m256 decay = _mm256_set1_ps(s.decay), w = _mm256_set1_ps(s.lerp_w), w1 = _mm256_set1_ps(s.lerp_w - 1.0f);
    const __m256 beta2 = _mm256_set1_ps(s.beta2), c2 = _mm256_set1_ps(s.one_minus_beta2);
    const __m256 bc2 = _mm256_set1_ps(s.bc2_sqrt), eps = _mm256_set1_ps(s.eps), step = _mm256_set1_ps(s.step_size);
    bool near_start = fabsf(s.lerp_w) < 0.5f;
    int64_t i = begin;
    for (; i + 8 <= end; i += 8) {
        __m256 pi = _mm256_loadu_ps(p + i), gi = _mm256_loadu_ps(g + i), mi = _mm256_loadu_ps(m + i);
        if (s.decays) pi = _mm256_mul_ps(pi, decay);
        __m256 diff = _mm256_sub_ps(gi, mi);
        mi = near_start ? _mm256_fmadd_ps(w, diff, mi) : _mm256_fmadd_ps(w1, diff, gi);
        __m256 vi = _mm256_fmadd_ps(_mm256_mul_ps(c2, gi), gi, _mm256_mul_ps(_mm256_loadu_ps(v + i), beta2));
        __m256 denom = _mm256_add_ps(_mm256_div_ps(_mm256_sqrt_ps(vi), bc2), eps);
        _mm256_storeu_ps(p + i, _mm256_add_ps(pi, _mm256_div_ps(_mm256_mul_ps(step, mi), denom)));
        _mm256_storeu_ps(m + i, mi);
        _mm256_storeu_ps(v + i, vi);
    }
    return i;
}
#endif

static void adamw_update_range(void *ctx, int64_t begin, int64_t end, int thread_id) {
    const adamw_job *job = ctx;
#if defined(__x86_64__)
    const ts_cpu_features *f = ts_cpu_features_get();
    if (f->avx2 && f->fma) begin = adamw_update_avx2(job, begin, end);
#endif
    adamw_update_scalar(job, begin, end);
}

ts_status ts_adamw_step(ts_adamw *opt, float *const *params, const float *const *grads, double lr,
                        ts_threadpool *pool) {
    if (!opt || (opt->n_params > 0 && (!params || !grads)) || !isfinite(lr)) return TS_ERR_INVALID_ARG;
    for (int i = 0; i < opt->n_params; i++)
        if (!params[i] || !grads[i]) return TS_ERR_INVALID_ARG;
    opt->step += 1.0f;
    for (int i = 0; i < opt->n_params; i++) {
        adamw_param *p = &opt->params[i];
        adamw_job job = {params[i], grads[i], p->exp_avg, p->exp_avg_sq,
                         group_scalars(&opt->groups[p->group], lr, opt->step)};
        ts_parallel_for(pool, p->numel, ADAMW_MIN_CHUNK, adamw_update_range, &job);
    }
    return TS_OK;
}

int64_t ts_adamw_step_count(const ts_adamw *opt) { return opt ? (int64_t)opt->step : 0; }

/* ---------------------------------------------------------------- state */

int ts_adamw_state_count(const ts_adamw *opt) { return opt ? 1 + 2 * opt->n_params : 0; }

ts_status ts_adamw_state_at(ts_adamw *opt, int i, ts_optim_state *out) {
    if (!opt || !out || i < 0 || i >= ts_adamw_state_count(opt)) return TS_ERR_INVALID_ARG;
    if (i == 0) {
        snprintf(out->name, sizeof out->name, "step");
        out->data = &opt->step;
        out->numel = 1;
        return TS_OK;
    }
    adamw_param *p = &opt->params[(i - 1) / 2];
    bool second = (i - 1) % 2 == 1;
    snprintf(out->name, sizeof out->name, "%s.%s", p->name, second ? "exp_avg_sq" : "exp_avg");
    out->data = second ? p->exp_avg_sq : p->exp_avg;
    out->numel = p->numel;
    return TS_OK;
}
