/* test_sampler.c - the token sampler (infer.h). Greedy is the argmax and top-k = 1 is greedy;
 * over many seeded draws the frequencies of temperature / top-k / top-p / min-p sampling match
 * the truncated, renormalised distribution (hand-derived for small cases, and a plain double-
 * precision full-sort reference for random ones) by a chi-square test, which is also shown to
 * reject the untruncated distribution; the reported probability is the chosen token's under
 * that distribution; penalties give hand-computed logits; the same seed gives the same tokens
 * and different seeds differ; a vocabulary-sized row (129 280) agrees with the reference and its
 * cost per token is printed. Speculative sampling (probs, draw, verify): verified drafts follow
 * the target distribution, accepted at the rate sum min(p, q). logit_bias bans and forces
 * tokens (greedy and sampled) and is range-checked; ts_logprobs matches a log-softmax and a
 * full sort computed here in double, ties and NaN included. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "tessera/infer.h"

/* Chi-square quantiles at 1 - 1e-4 for 1..10 degrees of freedom: a correct sampler fails one
 * comparison with probability 1e-4 (and the seeds are fixed, so the outcome is reproducible). */
static const double chi2_crit[11] = {0, 15.14, 18.42, 21.11, 23.51, 25.74, 27.86, 29.88, 31.83, 33.72, 35.56};

static ts_sampler *new_sampler(int32_t V, ts_sampling_params p) {
    ts_sampler *s = NULL;
    CHECK(ts_sampler_new(V, &s) == TS_OK, "new");
    if (s) CHECK(ts_sampler_start(s, &p, NULL, 0) == TS_OK, "start");
    return s;
}

/* ---------------------------------------------------------------- reference distribution */

typedef struct {
    double w;
    int32_t id;
} ref_item;

static int ref_cmp(const void *pa, const void *pb) {
    const ref_item *a = pa, *b = pb;
    if (a->w != b->w) return a->w > b->w ? -1 : 1;
    return a->id - b->id;
}

/* infer.h's steps 2-6 done the obvious way: weights in double, sort everything, cut. */
static void ref_dist(const float *l, int32_t V, const ts_sampling_params *p, double *prob) {
    memset(prob, 0, (size_t)V * sizeof *prob);
    ref_item *it = malloc((size_t)V * sizeof *it);
    double mx = -INFINITY;
    for (int32_t v = 0; v < V; v++) mx = fmax(mx, l[v]);
    for (int32_t v = 0; v < V; v++) it[v] = (ref_item){exp((l[v] - mx) / p->temperature), v};
    qsort(it, (size_t)V, sizeof *it, ref_cmp);
    int32_t n = V;
    if (p->top_k > 0 && p->top_k < n) n = p->top_k;
    double z = 0;
    for (int32_t i = 0; i < n; i++) z += it[i].w;
    double cum = 0;
    for (int32_t i = 0; i < n && p->top_p < 1; i++) {
        cum += it[i].w / z;
        if (cum >= p->top_p) n = i + 1;
    }
    int32_t keep = 1;
    while (keep < n && it[keep].w >= p->min_p * it[0].w) keep++;
    n = keep;
    z = 0;
    for (int32_t i = 0; i < n; i++) z += it[i].w;
    for (int32_t i = 0; i < n; i++) prob[it[i].id] = it[i].w / z;
    free(it);
}

/* ---------------------------------------------------------------- chi-square */

/* Draws n tokens; counts them; checks each reported probability against expect. */
static void draw_counts(ts_sampler *s, const float *logits, int32_t V, int n, const double *expect, long *counts) {
    memset(counts, 0, (size_t)V * sizeof *counts);
    double worst = 0;
    for (int i = 0; i < n; i++) {
        int32_t t = -1;
        float pr = 0;
        if (ts_sampler_sample(s, logits, &t, &pr) != TS_OK || t < 0 || t >= V) {
            CHECK(0, "sample failed");
            return;
        }
        counts[t]++;
        worst = fmax(worst, fabs(pr - expect[t]));
    }
    CHECK(worst < 1e-5, "reported probability off by %g", worst);
}

/* Pearson's statistic of counts against expect over expect's support; tokens outside the
 * support must never be drawn (then the statistic is infinite). *df = support - 1. */
static double chi_square(const long *counts, const double *expect, int32_t V, long n, int *df) {
    double x2 = 0;
    int support = 0;
    for (int32_t v = 0; v < V; v++) {
        if (expect[v] > 0) {
            double e = expect[v] * (double)n;
            x2 += (counts[v] - e) * (counts[v] - e) / e;
            support++;
        } else if (counts[v]) {
            x2 = INFINITY;
        }
    }
    *df = support - 1;
    return x2;
}

static void check_frequencies(const char *what, const float *logits, int32_t V, ts_sampling_params p, const double *expect,
                              const double *wrong) {
    enum { N = 200000 };
    ts_sampler *s = new_sampler(V, p);
    long *counts = malloc((size_t)V * sizeof *counts);
    if (!s || !counts) return;
    draw_counts(s, logits, V, N, expect, counts);
    int df;
    double x2 = chi_square(counts, expect, V, N, &df);
    CHECK(df >= 1 && df <= 10 && x2 < chi2_crit[df], "%s: chi-square %.2f with %d dof (critical %.2f)", what, x2, df,
          df >= 1 && df <= 10 ? chi2_crit[df] : 0.0);
    if (wrong) { /* the test has power: the same draws reject a nearby wrong answer */
        int dfw;
        double xw = chi_square(counts, wrong, V, N, &dfw);
        CHECK(xw > chi2_crit[dfw < 1 ? 1 : dfw > 10 ? 10 : dfw], "%s: wrong distribution not rejected (%.2f)", what, xw);
    }
    printf("  %-34s chi-square %6.2f, %d dof\n", what, x2, df);
    free(counts);
    ts_sampler_free(s);
}

/* Small cases whose answer is worked out by hand: logits log(0.5, 0.25, 0.15, 0.1). */
static void test_hand_distributions(void) {
    float l[4];
    double base[4] = {0.5, 0.25, 0.15, 0.1};
    for (int i = 0; i < 4; i++) l[i] = logf((float)base[i]);
    ts_sampling_params p = ts_sampling_defaults();
    p.seed = 1;
    check_frequencies("T=1", l, 4, p, base, (double[]){0.4, 0.3, 0.2, 0.1});

    p.top_p = 0.7f; /* 0.5 < 0.7 <= 0.75: the two most likely */
    check_frequencies("top_p=0.7", l, 4, p, (double[]){2.0 / 3, 1.0 / 3, 0, 0}, base);

    p.top_p = 1;
    p.min_p = 0.25f; /* keep p >= 0.125 */
    check_frequencies("min_p=0.25", l, 4, p, (double[]){0.5 / 0.9, 0.25 / 0.9, 0.15 / 0.9, 0}, base);

    p.min_p = 0;
    p.temperature = 0.5f; /* p^2 renormalised: .25 .0625 .0225 .01 over .345 */
    check_frequencies("T=0.5", l, 4, p, (double[]){0.25 / 0.345, 0.0625 / 0.345, 0.0225 / 0.345, 0.01 / 0.345}, base);

    /* Temperature comes before top-p: at T=2 the weights are sqrt(p) = .707 .5 .387 .316
     * (sum 1.911); the two largest hold .632 < .65, so three survive. Cutting at T=1 first (as
     * llama.cpp orders it) would keep two. */
    p.temperature = 2.0f, p.top_p = 0.65f;
    double r2[4], z3 = 0;
    for (int i = 0; i < 4; i++) r2[i] = sqrt(base[i]);
    for (int i = 0; i < 3; i++) z3 += r2[i];
    check_frequencies("T=2 top_p=0.65", l, 4, p, (double[]){r2[0] / z3, r2[1] / z3, r2[2] / z3, 0},
                      (double[]){r2[0] / (r2[0] + r2[1]), r2[1] / (r2[0] + r2[1]), 0, 0});

    p.temperature = 1;
    p.top_k = 3;
    p.top_p = 0.6f; /* top 3 renormalised: .5/.9 = .556 < .6 -> two, as .75/.9 >= .6 */
    check_frequencies("top_k=3 top_p=0.6", l, 4, p, (double[]){2.0 / 3, 1.0 / 3, 0, 0}, (double[]){1, 0, 0, 0});
}

/* Random logits with combined filters, against ref_dist. */
static void test_reference_distributions(void) {
    enum { V = 10 };
    float l[V];
    ts_rng r;
    ts_rng_seed(&r, 42);
    for (int v = 0; v < V; v++) l[v] = (float)(1.5 * ts_rng_normal(&r));
    ts_sampling_params cases[] = {
        {.temperature = 0.7f, .top_k = 0, .top_p = 1, .min_p = 0, .repetition_penalty = 1, .seed = 3},
        {.temperature = 1.3f, .top_k = 6, .top_p = 0.9f, .min_p = 0, .repetition_penalty = 1, .seed = 4},
        {.temperature = 0.9f, .top_k = 0, .top_p = 0.8f, .min_p = 0.05f, .repetition_penalty = 1, .seed = 5},
        {.temperature = 2.0f, .top_k = 8, .top_p = 1, .min_p = 0.2f, .repetition_penalty = 1, .seed = 6},
    };
    const char *names[] = {"random T=0.7", "random T=1.3 k=6 p=0.9", "random T=0.9 p=0.8 min_p=0.05",
                           "random T=2 k=8 min_p=0.2"};
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        double expect[V], plain[V];
        ref_dist(l, V, &cases[c], expect);
        ts_sampling_params untruncated = cases[c];
        untruncated.temperature = 1, untruncated.top_k = 0, untruncated.top_p = 1, untruncated.min_p = 0;
        ref_dist(l, V, &untruncated, plain);
        check_frequencies(names[c], l, V, cases[c], expect, plain);
    }
}

/* ---------------------------------------------------------------- speculative sampling */

/* ts_sampler_probs is the reference distribution; drafts from q (another row's distribution
 * under the same parameters) verified against p come out distributed as p (chi-square, and
 * the same draws reject q), accepted at the rate sum min(p, q); greedy rows accept iff the
 * argmaxes agree, else give the target's argmax. */
static void test_speculative(void) {
    enum { V = 10, N = 200000 };
    float l[V], l2[V], p[V], q[V];
    ts_rng r;
    ts_rng_seed(&r, 7);
    for (int v = 0; v < V; v++) l[v] = (float)(1.5 * ts_rng_normal(&r)), l2[v] = (float)(1.5 * ts_rng_normal(&r));
    ts_sampling_params cases[] = {
        {.temperature = 1.0f, .top_k = 0, .top_p = 1, .min_p = 0, .repetition_penalty = 1, .seed = 8},
        {.temperature = 1.3f, .top_k = 6, .top_p = 0.9f, .min_p = 0.02f, .repetition_penalty = 1, .seed = 9},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        double expect[V], wrong[V], probs_diff = 0, overlap = 0;
        ref_dist(l, V, &cases[c], expect);
        ref_dist(l2, V, &cases[c], wrong);
        ts_sampler *s = new_sampler(V, cases[c]);
        long counts[V] = {0}, accepted = 0;
        if (!s) return;
        CHECK(ts_sampler_probs(s, l, p) == TS_OK && ts_sampler_probs(s, l2, q) == TS_OK, "probs");
        for (int v = 0; v < V; v++) probs_diff = fmax(probs_diff, fabs(p[v] - expect[v])), overlap += fmin(p[v], q[v]);
        CHECK(probs_diff < 1e-6, "case %zu: ts_sampler_probs off the reference by %g", c, probs_diff);
        for (int i = 0; i < N; i++) {
            int32_t d = -1, t = -1;
            bool acc = false;
            if (ts_sampler_draw(s, q, &d) != TS_OK || ts_sampler_verify(s, p, q, d, &t, &acc) != TS_OK || t < 0) {
                CHECK(0, "draw / verify failed");
                break;
            }
            counts[t]++;
            accepted += acc;
        }
        int df, dfw;
        double x2 = chi_square(counts, expect, V, N, &df), xw = chi_square(counts, wrong, V, N, &dfw);
        CHECK(df >= 1 && df <= 10 && x2 < chi2_crit[df], "case %zu: verified tokens vs p: chi-square %.2f, %d dof", c,
              x2, df);
        CHECK(xw > 10 * chi2_crit[10], "case %zu: the draws do not reject q (%.2f)", c, xw);
        CHECK(fabs((double)accepted / N - overlap) < 0.01, "case %zu: acceptance %.4f, expected %.4f", c,
              (double)accepted / N, overlap);
        printf("  speculative case %zu: chi-square %.2f (%d dof), vs q %.0f; acceptance %.4f (sum min(p, q) %.4f)\n",
               c, x2, df, xw, (double)accepted / N, overlap);
        ts_sampler_free(s);
    }
    /* greedy: one-hot rows, certain outcomes */
    ts_sampling_params g = cases[0];
    g.temperature = 0;
    ts_sampler *s = new_sampler(V, g);
    if (!s) return;
    int32_t d, t, best = 0, best2 = 0;
    bool acc;
    for (int v = 1; v < V; v++) best = l[v] > l[best] ? v : best, best2 = l2[v] > l2[best2] ? v : best2;
    CHECK(ts_sampler_probs(s, l, p) == TS_OK && p[best] == 1.0f, "greedy probs");
    CHECK(ts_sampler_probs(s, l2, q) == TS_OK && ts_sampler_draw(s, q, &d) == TS_OK && d == best2, "greedy draft");
    CHECK(ts_sampler_verify(s, p, q, d, &t, &acc) == TS_OK && t == best && acc == (best == best2), "greedy verify");
    CHECK(ts_sampler_verify(s, p, p, best, &t, &acc) == TS_OK && t == best && acc, "greedy accept");
    ts_sampler_free(s);
}

/* ---------------------------------------------------------------- greedy */

static void test_greedy(void) {
    enum { V = 1000 };
    float l[V];
    ts_rng r;
    ts_rng_seed(&r, 7);
    ts_sampling_params greedy = ts_sampling_defaults(), top1 = ts_sampling_defaults();
    greedy.temperature = 0;
    top1.top_k = 1;
    top1.temperature = 1.5f;
    ts_sampler *g = new_sampler(V, greedy), *k1 = new_sampler(V, top1);
    if (!g || !k1) return;
    int bad_g = 0, bad_k = 0;
    for (int trial = 0; trial < 50; trial++) {
        int32_t argmax = 0;
        for (int v = 0; v < V; v++) {
            l[v] = (float)ts_rng_normal(&r);
            if (l[v] > l[argmax]) argmax = v;
        }
        ts_sampler_start(g, &greedy, NULL, 0); /* no history: penalties are off anyway */
        int32_t tg = -1, tk = -1;
        float pg = 0, pk = 0;
        ts_sampler_sample(g, l, &tg, &pg);
        ts_sampler_sample(k1, l, &tk, &pk);
        bad_g += tg != argmax || pg != 1.0f;
        bad_k += tk != argmax || pk != 1.0f;
    }
    CHECK(bad_g == 0, "greedy missed the argmax %d times", bad_g);
    CHECK(bad_k == 0, "top_k=1 missed the argmax %d times", bad_k);

    ts_sampler_free(g);
    ts_sampler_free(k1);

    ts_sampler *small = new_sampler(4, greedy);
    if (!small) return;
    float tie[4] = {1, 3, 3, -2}, nan_row[4] = {NAN, 0.5f, -1, NAN};
    int32_t t = -1;
    ts_sampler_sample(small, tie, &t, NULL);
    CHECK(t == 1, "tie goes to the lower id, got %d", t);
    ts_sampler_sample(small, nan_row, &t, NULL);
    CHECK(t == 1, "NaN counts as -inf, got %d", t);
    float dead[4] = {-INFINITY, NAN, -INFINITY, NAN}, hot[4] = {0, INFINITY, 1, 2};
    CHECK(ts_sampler_sample(small, dead, &t, NULL) == TS_ERR_RANGE, "no finite logit is an error");
    CHECK(ts_sampler_sample(small, hot, &t, NULL) == TS_ERR_RANGE, "+inf logit is an error");
    ts_sampler_start(small, &top1, NULL, 0);
    CHECK(ts_sampler_sample(small, nan_row, &t, NULL) == TS_OK && t == 1, "NaN row sampled at T=1.5, top_k=1: %d", t);
    ts_sampler_free(small);
}

/* ---------------------------------------------------------------- penalties */

static void test_penalties(void) {
    enum { V = 6 };
    const float l0[V] = {2, -1, 0.5f, 3, -2, 1};
    ts_sampling_params p = ts_sampling_defaults();
    p.repetition_penalty = 1.5f, p.frequency_penalty = 0.5f, p.presence_penalty = 0.25f;
    ts_sampler *s = new_sampler(V, p);
    if (!s) return;
    const int32_t prompt[] = {0, 1, 0};
    CHECK(ts_sampler_start(s, &p, prompt, 3) == TS_OK, "start");
    ts_sampler_accept(s, 3);
    ts_sampler_accept(s, 3);
    ts_sampler_accept(s, 4);
    float l[V];
    memcpy(l, l0, sizeof l);
    ts_sampler_penalize(s, l);
    /* 0: prompt, positive: 2 / 1.5.  1: prompt, negative: -1 * 1.5.  2, 5: untouched.
     * 3: generated twice: 3 / 1.5 - 0.5 * 2 - 0.25.  4: generated once: -2 * 1.5 - 0.5 - 0.25. */
    const float want[V] = {2.0f / 1.5f, -1.5f, 0.5f, 2.0f - 1.0f - 0.25f, -3.0f - 0.5f - 0.25f, 1};
    for (int v = 0; v < V; v++) CHECK(fabsf(l[v] - want[v]) < 1e-6f, "penalised logit %d: %g, want %g", v, l[v], want[v]);

    /* sample() applies the same penalties and records what it picks. Repetition penalty 2,
     * greedy, no prompt: 3 (logit 3); then 3 counts 1.5 and 0 wins with 2; then 0 counts 1 and
     * 3 wins again. */
    ts_sampling_params g = ts_sampling_defaults();
    g.temperature = 0, g.repetition_penalty = 2.0f;
    ts_sampler_start(s, &g, NULL, 0);
    int32_t t = -1;
    ts_sampler_sample(s, l0, &t, NULL);
    CHECK(t == 3, "first greedy pick %d", t);
    ts_sampler_sample(s, l0, &t, NULL);
    CHECK(t == 0, "repetition penalty moves greedy to 0, got %d", t);
    ts_sampler_sample(s, l0, &t, NULL);
    CHECK(t == 3, "third pick %d", t);

    /* A new request forgets the previous one's history. */
    ts_sampler_start(s, &p, NULL, 0);
    memcpy(l, l0, sizeof l);
    ts_sampler_penalize(s, l);
    CHECK(memcmp(l, l0, sizeof l) == 0, "history survived ts_sampler_start");
    CHECK(ts_sampler_accept(s, V) == TS_ERR_RANGE && ts_sampler_accept(s, -1) == TS_ERR_RANGE, "accept range");
    const int32_t bad_prompt[] = {0, 7};
    CHECK(ts_sampler_start(s, &p, bad_prompt, 2) == TS_ERR_RANGE, "prompt id out of range");
    ts_sampler_free(s);
}

/* ---------------------------------------------------------------- seeds */

static void generate(ts_sampler *s, uint64_t seed, int32_t *out, int n) {
    enum { V = 64 };
    ts_sampling_params p = ts_sampling_defaults();
    p.seed = seed, p.temperature = 0.8f, p.top_p = 0.95f, p.frequency_penalty = 0.3f;
    ts_sampler_start(s, &p, NULL, 0);
    ts_rng r;
    ts_rng_seed(&r, 99); /* the same logits stream every time */
    float l[V];
    for (int i = 0; i < n; i++) {
        for (int v = 0; v < V; v++) l[v] = (float)ts_rng_normal(&r);
        ts_sampler_sample(s, l, &out[i], NULL);
    }
}

static void test_seeds(void) {
    enum { N = 64 };
    ts_sampler *a = new_sampler(64, ts_sampling_defaults()), *b = new_sampler(64, ts_sampling_defaults());
    if (!a || !b) return;
    int32_t x[N], y[N], z[N];
    generate(a, 1234, x, N);
    generate(b, 1234, y, N);
    generate(a, 1235, z, N);
    CHECK(memcmp(x, y, sizeof x) == 0, "same seed, different tokens");
    int differ = 0;
    for (int i = 0; i < N; i++) differ += x[i] != z[i];
    CHECK(differ > N / 4, "different seeds agree on %d of %d tokens", N - differ, N);
    generate(b, 1234, z, N); /* reuse after another request */
    CHECK(memcmp(x, z, sizeof x) == 0, "reseeding a used sampler changed the tokens");
    ts_sampler_free(a);
    ts_sampler_free(b);
}

/* ---------------------------------------------------------------- parameters */

static void test_params(void) {
    struct {
        ts_sampling_params p;
        const char *param;
    } bad[] = {
        {{.temperature = -1, .top_p = 1, .repetition_penalty = 1}, "temperature"},
        {{.temperature = NAN, .top_p = 1, .repetition_penalty = 1}, "temperature"},
        {{.temperature = 1, .top_k = -2, .top_p = 1, .repetition_penalty = 1}, "top_k"},
        {{.temperature = 1, .top_p = 0, .repetition_penalty = 1}, "top_p"},
        {{.temperature = 1, .top_p = 1.5f, .repetition_penalty = 1}, "top_p"},
        {{.temperature = 1, .top_p = 1, .min_p = 2, .repetition_penalty = 1}, "min_p"},
        {{.temperature = 1, .top_p = 1, .repetition_penalty = 0}, "repetition_penalty"},
        {{.temperature = 1, .top_p = 1, .repetition_penalty = 1, .frequency_penalty = 3}, "frequency_penalty"},
        {{.temperature = 1, .top_p = 1, .repetition_penalty = 1, .presence_penalty = -2.5f}, "presence_penalty"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        const char *param = NULL, *msg = ts_sampling_params_check(&bad[i].p, &param);
        CHECK(msg && param && strcmp(param, bad[i].param) == 0, "case %zu: %s / %s", i, msg ? msg : "(accepted)",
              param ? param : "-");
    }
    ts_sampling_params ok = ts_sampling_defaults();
    CHECK(ts_sampling_params_check(&ok, NULL) == NULL, "defaults rejected");
    ts_sampler *s = NULL;
    CHECK(ts_sampler_new(0, &s) == TS_ERR_INVALID_ARG, "empty vocabulary accepted");
    CHECK(ts_sampler_new(8, &s) == TS_OK, "new");
    CHECK(ts_sampler_start(s, &bad[0].p, NULL, 0) == TS_ERR_RANGE, "start took bad parameters");
    ts_sampler_free(s);
}

/* ---------------------------------------------------------------- a real vocabulary */

/* A DeepSeek-sized row: the pruned sort must give the reference's probabilities, including on a
 * flat row where nothing can be pruned; the cost per token is printed. */
static void test_large_vocab(void) {
    enum { V = 129280, DRAWS = 40 };
    float *l = malloc(V * sizeof *l);
    double *ref = malloc(V * sizeof *ref);
    ts_sampler *s = NULL;
    if (!l || !ref || ts_sampler_new(V, &s) != TS_OK) {
        CHECK(0, "setup");
        goto done;
    }
    ts_rng r;
    ts_rng_seed(&r, 5);
    for (int v = 0; v < V; v++) l[v] = (float)(3.0 * ts_rng_normal(&r));
    ts_sampling_params cases[3] = {ts_sampling_defaults(), ts_sampling_defaults(), ts_sampling_defaults()};
    cases[0].temperature = 0.8f, cases[0].top_p = 0.95f;
    cases[1].temperature = 0.8f, cases[1].top_k = 40;
    cases[2].min_p = 0.05f;
    const char *names[3] = {"T=0.8 top_p=0.95", "T=0.8 top_k=40", "T=1 min_p=0.05"};
    for (int c = 0; c < 3; c++) {
        ref_dist(l, V, &cases[c], ref);
        ts_sampler_start(s, &cases[c], NULL, 0);
        double worst = 0, t0 = ts_time_seconds();
        int outside = 0;
        for (int i = 0; i < DRAWS; i++) {
            int32_t t = -1;
            float pr = 0;
            ts_sampler_sample(s, l, &t, &pr);
            if (t < 0 || ref[t] == 0) outside++;
            else worst = fmax(worst, fabs(pr - ref[t]) / ref[t]);
        }
        double us = (ts_time_seconds() - t0) / DRAWS * 1e6;
        CHECK(outside == 0 && worst < 1e-4, "%s: %d draws outside the reference support, worst relative error %g", names[c],
              outside, worst);
        printf("  V=%d %-20s %7.0f us/token\n", V, names[c], us);
    }
    for (int v = 0; v < 1000; v++) l[v] = 0.25f; /* flat row: the nucleus is ids 0..499 (ties: lower id first) */
    ts_sampling_params flat = ts_sampling_defaults();
    flat.top_p = 0.5f;
    ts_sampler *f = NULL;
    if (ts_sampler_new(1000, &f) == TS_OK) {
        ts_sampler_start(f, &flat, NULL, 0);
        int bad = 0;
        for (int i = 0; i < 1000; i++) {
            int32_t t = -1;
            float pr = 0;
            ts_sampler_sample(f, l, &t, &pr);
            bad += t < 0 || t >= 500 || fabsf(pr - 1.0f / 500) > 1e-7f;
        }
        CHECK(bad == 0, "flat row, top_p=0.5: %d draws wrong", bad);
        ts_sampler_free(f);
    }
done:
    ts_sampler_free(s);
    free(l);
    free(ref);
}

static void test_logit_bias(void) {
    enum { V = 8 };
    const float row[V] = {0.5f, 1.0f, 3.0f, 2.9f, -1.0f, 0.0f, 2.0f, 1.5f};
    float copy[V];
    memcpy(copy, row, sizeof copy);
    ts_sampling_params p = ts_sampling_defaults();
    p.temperature = 0;
    p.n_logit_bias = 1;
    p.logit_bias[0] = (ts_logit_bias){2, -100};
    ts_sampler *s = new_sampler(V, p);
    int32_t tok = -1;
    CHECK(s && ts_sampler_sample(s, copy, &tok, NULL) == TS_OK && tok == 3, "-100 bans greedy's argmax: %d", tok);
    CHECK(!memcmp(copy, row, sizeof copy), "the caller's row is unchanged");
    p.logit_bias[0] = (ts_logit_bias){4, 5}; /* -1 + 5 = 4 > 3 */
    CHECK(s && ts_sampler_start(s, &p, NULL, 0) == TS_OK && ts_sampler_sample(s, row, &tok, NULL) == TS_OK && tok == 4,
          "+5 lifts token 4 above the rest: %d", tok);
    /* sampled at temperature 1: a +100 token is drawn every time, a -100 one never */
    p.temperature = 1;
    p.n_logit_bias = 2;
    p.logit_bias[0] = (ts_logit_bias){7, 100};
    p.logit_bias[1] = (ts_logit_bias){2, -100};
    bool always = s && ts_sampler_start(s, &p, NULL, 0) == TS_OK;
    for (int i = 0; always && i < 200; i++) always = ts_sampler_sample(s, row, &tok, NULL) == TS_OK && tok == 7;
    CHECK(always, "+100 forces token 7 at temperature 1");
    p.n_logit_bias = 1;
    p.logit_bias[0] = (ts_logit_bias){2, -100};
    bool never = s && ts_sampler_start(s, &p, NULL, 0) == TS_OK;
    for (int i = 0; never && i < 2000; i++) never = ts_sampler_sample(s, row, &tok, NULL) == TS_OK && tok != 2;
    CHECK(never, "-100 keeps the likeliest token (p = 0.35 unbiased) out of 2000 draws");

    const char *param = NULL;
    p.logit_bias[0] = (ts_logit_bias){2, 100.5f};
    CHECK(ts_sampling_params_check(&p, &param) && param && !strcmp(param, "logit_bias") &&
              ts_sampler_start(s, &p, NULL, 0) == TS_ERR_RANGE,
          "a bias above 100 is refused");
    p.logit_bias[0] = (ts_logit_bias){-1, 1};
    CHECK(ts_sampling_params_check(&p, NULL) != NULL, "a negative id is refused");
    p.logit_bias[0] = (ts_logit_bias){V, 1};
    CHECK(ts_sampling_params_check(&p, NULL) == NULL && ts_sampler_start(s, &p, NULL, 0) == TS_ERR_RANGE,
          "an id outside the vocabulary: TS_ERR_RANGE at start");
    p.n_logit_bias = TS_SAMPLING_MAX_LOGIT_BIAS + 1;
    CHECK(ts_sampling_params_check(&p, NULL) != NULL, "more than 300 entries are refused");
    ts_sampler_free(s);
}

/* ts_logprobs against log-softmax and a full sort in double. */
static void test_logprobs(void) {
    enum { V = 1000 };
    static float row[V];
    ts_rng rng;
    ts_rng_seed(&rng, 7);
    for (int i = 0; i < V; i++) row[i] = (float)(8 * ts_rng_uniform(&rng) - 4);
    row[10] = row[20] = row[30] = 5.0f; /* a three-way tie for first: ids 10, 20, 30 in that order */
    row[40] = NAN;                      /* counts as -inf */
    row[50] = -INFINITY;
    double m = 5.0, sum = 0;
    for (int i = 0; i < V; i++)
        if (i != 40) sum += exp((double)row[i] - m);
    double lse = m + log(sum);
    int order[V];
    for (int i = 0; i < V; i++) order[i] = i;
    for (int i = 0; i < V; i++) /* selection sort, ranks as documented: larger, then lower id; NaN last */
        for (int j = i + 1; j < V; j++) {
            float a = row[order[i]] == row[order[i]] ? row[order[i]] : -INFINITY;
            float b = row[order[j]] == row[order[j]] ? row[order[j]] : -INFINITY;
            if (b > a || (b == a && order[j] < order[i])) {
                int t = order[i];
                order[i] = order[j];
                order[j] = t;
            }
        }
    ts_token_logprobs lp;
    for (int token = 0; token < V; token += 37) {
        CHECK(ts_logprobs(row, V, token, 20, &lp) == TS_OK, "logprobs of %d", token);
        double want = token == 40 ? -INFINITY : (double)row[token] - lse;
        CHECK(lp.logprob == (float)want || fabs(lp.logprob - want) < 1e-6, "token %d: %g vs %g", token, lp.logprob, want);
        CHECK(lp.n_top == 20, "20 alternatives: %d", lp.n_top);
        for (int k = 0; k < lp.n_top; k++)
            CHECK(lp.top_ids[k] == order[k] && fabs(lp.top_logprobs[k] - ((double)row[order[k]] - lse)) < 1e-6,
                  "alternative %d: id %d (want %d), %g", k, lp.top_ids[k], order[k], lp.top_logprobs[k]);
    }
    CHECK(lp.top_ids[0] == 10 && lp.top_ids[1] == 20 && lp.top_ids[2] == 30, "a tie ranks the lower id first");
    CHECK(ts_logprobs(row, V, 50, 0, &lp) == TS_OK && isinf(lp.logprob) && lp.n_top == 0, "-inf logit, no alternatives");
    CHECK(ts_logprobs(row, 3, 0, 20, &lp) == TS_OK && lp.n_top == 3, "no more alternatives than the vocabulary");
    CHECK(ts_logprobs(row, V, V, 1, &lp) == TS_ERR_INVALID_ARG && ts_logprobs(row, V, 0, 21, &lp) == TS_ERR_INVALID_ARG,
          "token and n_top are checked");
    row[0] = INFINITY;
    CHECK(ts_logprobs(row, V, 0, 1, &lp) == TS_ERR_RANGE, "+inf: TS_ERR_RANGE");
    const float none[2] = {NAN, -INFINITY};
    CHECK(ts_logprobs(none, 2, 0, 1, &lp) == TS_ERR_RANGE, "no finite logit: TS_ERR_RANGE");
}

int main(void) {
    test_params();
    test_logit_bias();
    test_logprobs();
    test_greedy();
    test_penalties();
    test_seeds();
    test_hand_distributions();
    test_reference_distributions();
    test_large_vocab();
    test_speculative();
    return check_summary("test_sampler");
}
