/* test_optim.c - the trainer's optimizer building blocks (train.h): AdamW reproduces a
 * trajectory recorded from PyTorch's torch.optim.AdamW (tests/fixtures/optim/adamw.json, made
 * by tools/make_optim_fixture.py) and the AdamW formula evaluated here in double; Muon's hybrid
 * Newton-Schulz output has singular values ~1 (computed independently with a Jacobi eigen-solver
 * in double) for square, tall and wide matrices and its update has RMS 0.18; Muon solves a small
 * least-squares problem; learning-rate and MTP schedules hit their closed-form values; global-
 * norm clipping and gradient accumulation; the MoE bias rule and balance loss (value and
 * finite-difference gradient); checkpointed state resumes bit for bit; 1 and 2 threads agree
 * bit for bit. */
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "tessera/train.h"

static char fixture_dir[1024];

/* The fixtures sit beside this source file; __FILE__ is absolute in CMake builds. */
static void find_fixtures(void) {
    const char *slash = strrchr(__FILE__, '/');
    int len = slash ? (int)(slash - __FILE__) : 1;
    snprintf(fixture_dir, sizeof fixture_dir, "%.*s/fixtures/optim", len, slash ? __FILE__ : ".");
}

/* Distance in representable floats (0 = same bits, 1 = neighbours). */
static int64_t ulp_distance(float a, float b) {
    int32_t ia, ib;
    memcpy(&ia, &a, 4);
    memcpy(&ib, &b, 4);
    int64_t oa = ia < 0 ? (int64_t)INT32_MIN - ia : ia, ob = ib < 0 ? (int64_t)INT32_MIN - ib : ib;
    return oa > ob ? oa - ob : ob - oa;
}

static void fill_normal(float *x, int64_t n, double scale, uint64_t seed) {
    ts_rng r;
    ts_rng_seed(&r, seed);
    for (int64_t i = 0; i < n; i++) x[i] = (float)(scale * ts_rng_normal(&r));
}

/* ================================================================ AdamW vs PyTorch */

#define FIX_MAX_PARAMS 4
#define FIX_MAX_STEPS 8

typedef struct {
    int n_groups, n_params, n_steps;
    ts_adamw_group groups[FIX_MAX_PARAMS];
    ts_adamw_param params[FIX_MAX_PARAMS];
    char names[FIX_MAX_PARAMS][16];
    float *init[FIX_MAX_PARAMS];
    double lr[FIX_MAX_STEPS];
    float *grads[FIX_MAX_STEPS][FIX_MAX_PARAMS];  /* torch.optim.AdamW's run */
    float *expect[FIX_MAX_STEPS][FIX_MAX_PARAMS];
    float *ieee_grads[FIX_MAX_STEPS][FIX_MAX_PARAMS]; /* the same ops with an IEEE sqrt */
    float *ieee_expect[FIX_MAX_STEPS][FIX_MAX_PARAMS];
    float *exp_avg[FIX_MAX_PARAMS], *exp_avg_sq[FIX_MAX_PARAMS];
    double final_step;
} adamw_fixture;

static float *json_floats(json_t *arr, int64_t want) {
    if (!json_is_array(arr) || (int64_t)json_array_size(arr) != want) return NULL;
    float *v = malloc(sizeof(float) * (size_t)want);
    for (int64_t i = 0; i < want; i++) v[i] = (float)json_number_value(json_array_get(arr, (size_t)i));
    return v;
}

static double jnum(json_t *obj, const char *key) { return json_number_value(json_object_get(obj, key)); }

static bool load_adamw_fixture(adamw_fixture *f) {
    char path[1200];
    snprintf(path, sizeof path, "%s/adamw.json", fixture_dir);
    json_error_t jerr;
    json_t *root = json_load_file(path, 0, &jerr);
    CHECK(root != NULL, "cannot read %s: %s", path, jerr.text);
    if (!root) return false;
    memset(f, 0, sizeof *f);
    json_t *groups = json_object_get(root, "groups"), *params = json_object_get(root, "params");
    json_t *steps = json_object_get(root, "steps"), *final = json_object_get(root, "final_state");
    f->n_groups = (int)json_array_size(groups);
    f->n_params = (int)json_array_size(params);
    f->n_steps = (int)json_array_size(steps);
    bool ok = f->n_groups > 0 && f->n_groups <= FIX_MAX_PARAMS && f->n_params > 0 &&
              f->n_params <= FIX_MAX_PARAMS && f->n_steps > 0 && f->n_steps <= FIX_MAX_STEPS && final;
    for (int g = 0; ok && g < f->n_groups; g++) {
        json_t *jg = json_array_get(groups, (size_t)g);
        f->groups[g] = (ts_adamw_group){jnum(jg, "lr_scale"), jnum(jg, "beta1"), jnum(jg, "beta2"),
                                        jnum(jg, "eps"), jnum(jg, "weight_decay")};
    }
    for (int i = 0; ok && i < f->n_params; i++) {
        json_t *jp = json_array_get(params, (size_t)i), *shape = json_object_get(jp, "shape");
        int64_t numel = 1;
        for (size_t d = 0; d < json_array_size(shape); d++) numel *= json_integer_value(json_array_get(shape, d));
        snprintf(f->names[i], sizeof f->names[i], "%s", json_string_value(json_object_get(jp, "name")));
        f->params[i] = (ts_adamw_param){f->names[i], numel, (int)json_integer_value(json_object_get(jp, "group"))};
        f->init[i] = json_floats(json_object_get(jp, "init"), numel);
        f->exp_avg[i] = json_floats(json_array_get(json_object_get(final, "exp_avg"), (size_t)i), numel);
        f->exp_avg_sq[i] = json_floats(json_array_get(json_object_get(final, "exp_avg_sq"), (size_t)i), numel);
        ok = f->init[i] && f->exp_avg[i] && f->exp_avg_sq[i];
    }
    for (int s = 0; ok && s < f->n_steps; s++) {
        json_t *js = json_array_get(steps, (size_t)s);
        f->lr[s] = jnum(js, "lr");
        for (int i = 0; ok && i < f->n_params; i++) {
            int64_t n = f->params[i].numel;
            f->grads[s][i] = json_floats(json_array_get(json_object_get(js, "grads"), (size_t)i), n);
            f->expect[s][i] = json_floats(json_array_get(json_object_get(js, "params"), (size_t)i), n);
            f->ieee_grads[s][i] = json_floats(json_array_get(json_object_get(js, "ieee_sqrt_grads"), (size_t)i), n);
            f->ieee_expect[s][i] = json_floats(json_array_get(json_object_get(js, "ieee_sqrt_params"), (size_t)i), n);
            ok = f->grads[s][i] && f->expect[s][i] && f->ieee_grads[s][i] && f->ieee_expect[s][i];
        }
    }
    f->final_step = jnum(final, "step");
    CHECK(ok, "malformed fixture %s", path);
    json_decref(root);
    return ok;
}

static void free_adamw_fixture(adamw_fixture *f) {
    for (int i = 0; i < FIX_MAX_PARAMS; i++) {
        free(f->init[i]);
        free(f->exp_avg[i]);
        free(f->exp_avg_sq[i]);
        for (int s = 0; s < FIX_MAX_STEPS; s++) {
            free(f->grads[s][i]);
            free(f->expect[s][i]);
            free(f->ieee_grads[s][i]);
            free(f->ieee_expect[s][i]);
        }
    }
}

/* The AdamW formula in double from the same gradients (no f32 rounding anywhere): an
 * independent check that the fixture and the C code compute what AdamW means. */
typedef struct {
    double *p, *m, *v;
} adamw_double_state;

static void adamw_double_step(const ts_adamw_group *g, double lr, int t, const float *grad, int64_t n,
                              adamw_double_state *s) {
    double glr = lr * g->lr_scale;
    for (int64_t i = 0; i < n; i++) {
        s->p[i] *= 1 - glr * g->weight_decay;
        s->m[i] = g->beta1 * s->m[i] + (1 - g->beta1) * grad[i];
        s->v[i] = g->beta2 * s->v[i] + (1 - g->beta2) * (double)grad[i] * grad[i];
        double mhat = s->m[i] / (1 - pow(g->beta1, t)), vhat = s->v[i] / (1 - pow(g->beta2, t));
        s->p[i] -= glr * mhat / (sqrt(vhat) + g->eps);
    }
}

/* Runs the fixture's steps from its initial parameters, feeding grads[step][param]; returns the
 * optimizer (for its state) and leaves the parameters in p. */
static ts_adamw *replay(const adamw_fixture *f, float *const *grads_by_step[FIX_MAX_STEPS], float **p,
                        adamw_double_state *ref) {
    ts_adamw *opt = NULL;
    CHECK(ts_adamw_new(f->groups, f->n_groups, f->params, f->n_params, &opt) == TS_OK, "adamw_new");
    if (!opt) return NULL;
    for (int i = 0; i < f->n_params; i++) memcpy(p[i], f->init[i], sizeof(float) * (size_t)f->params[i].numel);
    for (int s = 0; s < f->n_steps; s++) {
        CHECK(ts_adamw_step(opt, p, (const float *const *)grads_by_step[s], f->lr[s], NULL) == TS_OK, "step %d", s);
        for (int i = 0; ref && i < f->n_params; i++)
            adamw_double_step(&f->groups[f->params[i].group], f->lr[s], s + 1, grads_by_step[s][i],
                              f->params[i].numel, &ref[i]);
    }
    return opt;
}

/* After every step (replayed one step at a time), the largest ulp distance to want[step]. */
static int64_t trajectory_max_ulp(const adamw_fixture *f, float *const *grads_by_step[FIX_MAX_STEPS],
                                  float *const *want_by_step[FIX_MAX_STEPS], int64_t *exact, int64_t *compared) {
    float *p[FIX_MAX_PARAMS];
    for (int i = 0; i < f->n_params; i++) p[i] = malloc(sizeof(float) * (size_t)f->params[i].numel);
    ts_adamw *opt = NULL;
    CHECK(ts_adamw_new(f->groups, f->n_groups, f->params, f->n_params, &opt) == TS_OK, "adamw_new");
    for (int i = 0; i < f->n_params; i++) memcpy(p[i], f->init[i], sizeof(float) * (size_t)f->params[i].numel);
    int64_t max_ulp = 0;
    *exact = *compared = 0;
    for (int s = 0; opt && s < f->n_steps; s++) {
        ts_adamw_step(opt, p, (const float *const *)grads_by_step[s], f->lr[s], NULL);
        for (int i = 0; i < f->n_params; i++)
            for (int64_t j = 0; j < f->params[i].numel; j++) {
                int64_t d = ulp_distance(p[i][j], want_by_step[s][i][j]);
                max_ulp = d > max_ulp ? d : max_ulp;
                *exact += d == 0;
                (*compared)++;
            }
    }
    ts_adamw_free(opt);
    for (int i = 0; i < f->n_params; i++) free(p[i]);
    return max_ulp;
}

static void test_adamw_matches_pytorch(void) {
    adamw_fixture f;
    if (!load_adamw_fixture(&f)) {
        free_adamw_fixture(&f);
        return;
    }
    float *const *grads[FIX_MAX_STEPS], *const *expect[FIX_MAX_STEPS];
    float *const *ieee_grads[FIX_MAX_STEPS], *const *ieee_expect[FIX_MAX_STEPS];
    for (int s = 0; s < f.n_steps; s++) {
        grads[s] = f.grads[s];
        expect[s] = f.expect[s];
        ieee_grads[s] = f.ieee_grads[s];
        ieee_expect[s] = f.ieee_expect[s];
    }

    /* Every op but sqrt is PyTorch's, bit for bit (see tools/make_optim_fixture.py). */
    int64_t exact, compared;
    int64_t ieee_ulp = trajectory_max_ulp(&f, ieee_grads, ieee_expect, &exact, &compared);
    CHECK(ieee_ulp == 0, "PyTorch's AdamW ops with an IEEE sqrt: off by up to %lld ulp", (long long)ieee_ulp);
    printf("adamw vs PyTorch ops with IEEE sqrt: %lld of %lld parameter values bit-identical over %d steps\n",
           (long long)exact, (long long)compared, f.n_steps);

    /* torch.optim.AdamW itself: its MKL sqrt is off by an ulp at times, which moves a
     * parameter by at most an ulp per step (more ulps only near zero, where they are tiny);
     * bound the difference by 2 ulp of the value plus 1e-6 of the learning rate. */
    int64_t torch_ulp = trajectory_max_ulp(&f, grads, expect, &exact, &compared);

    float *p[FIX_MAX_PARAMS];
    adamw_double_state ref[FIX_MAX_PARAMS];
    for (int i = 0; i < f.n_params; i++) {
        int64_t n = f.params[i].numel;
        p[i] = malloc(sizeof(float) * (size_t)n);
        ref[i].p = malloc(sizeof(double) * (size_t)n);
        ref[i].m = calloc((size_t)n, sizeof(double));
        ref[i].v = calloc((size_t)n, sizeof(double));
        for (int64_t j = 0; j < n; j++) ref[i].p[j] = f.init[i][j];
    }
    ts_adamw *opt = replay(&f, grads, p, ref);
    if (!opt) return;
    double max_excess = 0, max_rel_double = 0, lr_max = 0;
    for (int s = 0; s < f.n_steps; s++) lr_max = fmax(lr_max, f.lr[s]);
    for (int i = 0; i < f.n_params; i++)
        for (int64_t j = 0; j < f.params[i].numel; j++) {
            double want = f.expect[f.n_steps - 1][i][j];
            double allowed = 2 * (nextafterf((float)fabs(want), INFINITY) - fabs(want)) + 1e-6 * lr_max;
            max_excess = fmax(max_excess, fabs(p[i][j] - want) / allowed);
            max_rel_double = fmax(max_rel_double, fabs(p[i][j] - ref[i].p[j]) / fmax(fabs(ref[i].p[j]), 1e-3));
        }
    CHECK(max_excess <= 1, "parameters stray from torch.optim.AdamW by %.2f x the allowed difference", max_excess);
    printf("adamw vs torch.optim.AdamW: %lld of %lld parameter values bit-identical, max %lld ulp "
           "(%.2f of the allowed difference after the last step)\n",
           (long long)exact, (long long)compared, (long long)torch_ulp, max_excess);
    CHECK(max_rel_double < 1e-5, "f32 AdamW strays from the double formula: rel %.3g", max_rel_double);

    /* The moments depend on the gradients only: identical to PyTorch's, as is the step. */
    int64_t moment_ulp = 0, moments_checked = 0;
    for (int k = 0; k < ts_adamw_state_count(opt); k++) {
        ts_optim_state st;
        CHECK(ts_adamw_state_at(opt, k, &st) == TS_OK, "state_at %d", k);
        if (strcmp(st.name, "step") == 0) {
            CHECK(st.numel == 1 && st.data[0] == (float)f.final_step, "step %g", st.data[0]);
            continue;
        }
        for (int i = 0; i < f.n_params; i++) {
            char want_m[64], want_v[64];
            snprintf(want_m, sizeof want_m, "%s.exp_avg", f.names[i]);
            snprintf(want_v, sizeof want_v, "%s.exp_avg_sq", f.names[i]);
            const float *ref_state = strcmp(st.name, want_m) == 0 ? f.exp_avg[i]
                                     : strcmp(st.name, want_v) == 0 ? f.exp_avg_sq[i] : NULL;
            if (!ref_state) continue;
            moments_checked++;
            for (int64_t j = 0; j < st.numel; j++) {
                int64_t d = ulp_distance(st.data[j], ref_state[j]);
                if (d > moment_ulp) moment_ulp = d;
            }
        }
    }
    CHECK(moments_checked == 2 * f.n_params, "found %lld moment buffers by name", (long long)moments_checked);
    CHECK(moment_ulp == 0, "moments differ from PyTorch's by up to %lld ulp", (long long)moment_ulp);
    CHECK(ts_adamw_step_count(opt) == f.n_steps, "step count %lld", (long long)ts_adamw_step_count(opt));

    for (int i = 0; i < f.n_params; i++) {
        free(p[i]);
        free(ref[i].p);
        free(ref[i].m);
        free(ref[i].v);
    }
    ts_adamw_free(opt);
    free_adamw_fixture(&f);
}

static void test_adamw_rejects_bad_arguments(void) {
    ts_adamw_group g = ts_adamw_group_default(0.1);
    ts_adamw_param ok = {"x", 4, 0}, bad_group = {"x", 4, 1}, empty = {"x", 0, 0};
    ts_adamw *opt = NULL;
    CHECK(ts_adamw_new(&g, 1, &bad_group, 1, &opt) == TS_ERR_INVALID_ARG && !opt, "group index");
    CHECK(ts_adamw_new(&g, 1, &empty, 1, &opt) == TS_ERR_INVALID_ARG, "numel 0");
    ts_adamw_group bad_beta = g;
    bad_beta.beta2 = 1.0;
    CHECK(ts_adamw_new(&bad_beta, 1, &ok, 1, &opt) == TS_ERR_INVALID_ARG, "beta2 = 1");
    char long_name[TS_OPTIM_STATE_NAME_MAX];
    memset(long_name, 'a', sizeof long_name - 1);
    long_name[sizeof long_name - 1] = 0;
    ts_adamw_param too_long = {long_name, 4, 0};
    CHECK(ts_adamw_new(&g, 1, &too_long, 1, &opt) == TS_ERR_INVALID_ARG, "name too long for state names");
    CHECK(ts_adamw_new(&g, 1, &ok, 1, &opt) == TS_OK && opt, "valid");
    float x[4] = {0}, *px = x;
    const float *pg = NULL;
    CHECK(ts_adamw_step(opt, &px, &pg, 1e-3, NULL) == TS_ERR_INVALID_ARG, "NULL gradient");
    ts_optim_state st;
    CHECK(ts_adamw_state_at(opt, 3, &st) == TS_ERR_INVALID_ARG, "state index past the end");
    ts_adamw_free(opt);
}

/* ================================================================ Newton-Schulz spectrum */

/* Eigenvalues of the symmetric n x n matrix a (destroyed) by cyclic Jacobi rotations. */
static void jacobi_eigenvalues(double *a, int n, double *eig) {
    for (int sweep = 0; sweep < 100; sweep++) {
        double off = 0, diag = 0;
        for (int i = 0; i < n; i++)
            for (int j = 0; j < n; j++) {
                double sq = a[i * n + j] * a[i * n + j];
                if (i == j) diag += sq;
                else off += sq;
            }
        if (off <= 1e-30 * diag) break;
        for (int p = 0; p < n; p++)
            for (int q = p + 1; q < n; q++) {
                double apq = a[p * n + q];
                if (fabs(apq) < 1e-300) continue;
                double theta = (a[q * n + q] - a[p * n + p]) / (2 * apq);
                double t = (theta >= 0 ? 1.0 : -1.0) / (fabs(theta) + sqrt(theta * theta + 1));
                double c = 1 / sqrt(t * t + 1), s = t * c;
                for (int k = 0; k < n; k++) { /* columns p, q */
                    double akp = a[k * n + p], akq = a[k * n + q];
                    a[k * n + p] = c * akp - s * akq;
                    a[k * n + q] = s * akp + c * akq;
                }
                for (int k = 0; k < n; k++) { /* rows p, q */
                    double apk = a[p * n + k], aqk = a[q * n + k];
                    a[p * n + k] = c * apk - s * aqk;
                    a[q * n + k] = s * apk + c * aqk;
                }
            }
    }
    for (int i = 0; i < n; i++) eig[i] = a[i * n + i];
}

/* Smallest and largest singular value of x [rows x cols], via the smaller Gram matrix. */
static void singular_value_range(const float *x, int64_t rows, int64_t cols, double *lo, double *hi) {
    int s = (int)(rows < cols ? rows : cols);
    double *gram = calloc((size_t)s * s, sizeof(double)), *eig = malloc(sizeof(double) * (size_t)s);
    for (int i = 0; i < s; i++)
        for (int j = 0; j < s; j++) {
            double sum = 0;
            if (rows <= cols)
                for (int64_t k = 0; k < cols; k++) sum += (double)x[i * cols + k] * x[j * cols + k];
            else
                for (int64_t k = 0; k < rows; k++) sum += (double)x[k * cols + i] * x[k * cols + j];
            gram[i * s + j] = sum;
        }
    jacobi_eigenvalues(gram, s, eig);
    *lo = INFINITY;
    *hi = 0;
    for (int i = 0; i < s; i++) {
        double sv = sqrt(fmax(eig[i], 0));
        *lo = fmin(*lo, sv);
        *hi = fmax(*hi, sv);
    }
    free(gram);
    free(eig);
}

static void test_newton_schulz_spectrum(void) {
    /* Square, tall (transposed internally), wide, and the shape of an mHC projection. */
    static const int64_t shapes[][2] = {{64, 64}, {96, 40}, {40, 96}, {24, 256}, {128, 128}};
    for (size_t c = 0; c < sizeof shapes / sizeof shapes[0]; c++) {
        int64_t rows = shapes[c][0], cols = shapes[c][1], n = rows * cols;
        float *g = malloc(sizeof(float) * (size_t)n), *x = malloc(sizeof(float) * (size_t)n);
        float *work = malloc(sizeof(float) * (size_t)ts_muon_ns_workspace_floats(rows, cols));
        fill_normal(g, n, 0.01, 100 + c);
        double lo, hi;

        /* After the 8 fast iterations alone the spectrum sits in a band around 1 (spec §7.4). */
        memcpy(x, g, sizeof(float) * (size_t)n);
        ts_muon_newton_schulz(x, rows, cols, 1e-7, TS_MUON_NS_STEPS_FAST, 0, work, NULL);
        singular_value_range(x, rows, cols, &lo, &hi);
        CHECK(lo >= 0.6 && hi <= 1.2, "%lldx%lld after 8 fast iterations: sv in [%.4f, %.4f]", (long long)rows,
              (long long)cols, lo, hi);
        double lo8 = lo, hi8 = hi;

        /* The 2 stabilizing iterations pin them to 1. */
        memcpy(x, g, sizeof(float) * (size_t)n);
        ts_muon_newton_schulz(x, rows, cols, 1e-7, TS_MUON_NS_STEPS_FAST, TS_MUON_NS_STEPS_STABLE, work, NULL);
        singular_value_range(x, rows, cols, &lo, &hi);
        CHECK(lo >= 0.98 && hi <= 1.02, "%lldx%lld after 8 + 2 iterations: sv in [%.5f, %.5f]", (long long)rows,
              (long long)cols, lo, hi);
        printf("newton-schulz %3lldx%-3lld singular values: after 8 [%.4f, %.4f], after 8+2 [%.5f, %.5f]\n",
               (long long)rows, (long long)cols, lo8, hi8, lo, hi);
        free(g);
        free(x);
        free(work);
    }
}

/* HybridNS written the plain way in double precision: the oracle for the f32, blocked, threaded
 * GEMM version in muon.c (which may use FMA, so only closeness can be asked of it). */
static void naive_matmul(const double *a, const double *b, double *c, int64_t m, int64_t n, int64_t k) {
    for (int64_t i = 0; i < m; i++)
        for (int64_t j = 0; j < n; j++) {
            double acc = 0;
            for (int64_t t = 0; t < k; t++) acc += a[i * k + t] * b[t * n + j];
            c[i * n + j] = acc;
        }
}

static void naive_transpose(const double *src, int64_t rows, int64_t cols, double *dst) {
    for (int64_t i = 0; i < rows; i++)
        for (int64_t j = 0; j < cols; j++) dst[j * rows + i] = src[i * cols + j];
}

static void naive_newton_schulz(const float *in, double *out, int64_t rows, int64_t cols, double eps) {
    int64_t n = rows * cols;
    bool tall = rows > cols;
    int64_t s = tall ? cols : rows, l = tall ? rows : cols;
    double sum = 0;
    for (int64_t i = 0; i < n; i++) sum += (double)in[i] * in[i];
    double *x = malloc(sizeof(double) * (size_t)n), *X = malloc(sizeof(double) * (size_t)n);
    double *XT = malloc(sizeof(double) * (size_t)n), *Y = malloc(sizeof(double) * (size_t)n);
    double *A = malloc(sizeof(double) * (size_t)(s * s)), *A2 = malloc(sizeof(double) * (size_t)(s * s));
    for (int64_t i = 0; i < n; i++) x[i] = in[i] / (sqrt(sum) + eps);
    if (tall) naive_transpose(x, rows, cols, X);
    else memcpy(X, x, sizeof(double) * (size_t)n);
    for (int it = 0; it < 10; it++) {
        const double *coef = it < 8 ? ts_muon_ns_fast : ts_muon_ns_stable;
        naive_transpose(X, s, l, XT);
        naive_matmul(X, XT, A, s, s, l);
        naive_matmul(A, A, A2, s, s, s);
        for (int64_t i = 0; i < s * s; i++) A2[i] = coef[1] * A[i] + coef[2] * A2[i];
        naive_matmul(A2, X, Y, s, l, s);
        for (int64_t i = 0; i < n; i++) X[i] = coef[0] * X[i] + Y[i];
    }
    if (tall) naive_transpose(X, cols, rows, out);
    else memcpy(out, X, sizeof(double) * (size_t)n);
    free(x);
    free(X);
    free(XT);
    free(Y);
    free(A);
    free(A2);
}

static void test_newton_schulz_matches_naive(void) {
    /* edge tiles (13 x 37), both orientations, several k blocks and column panels of the GEMM
     * (l = 300, 600), a Gram matrix on the GEMM's small-M path (s = 4), Gram products split in
     * row blocks with a partial last one (s = 100) */
    static const int64_t shapes[][2] = {{13, 37}, {37, 13}, {64, 64}, {37, 300}, {300, 37}, {20, 600}, {4, 256}, {100, 130}, {130, 100}};
    ts_threadpool *two = NULL;
    ts_threadpool_new(2, &two);
    for (size_t c = 0; c < sizeof shapes / sizeof shapes[0]; c++) {
        int64_t rows = shapes[c][0], cols = shapes[c][1], n = rows * cols;
        float *x = malloc(sizeof(float) * (size_t)n);
        double *want = malloc(sizeof(double) * (size_t)n);
        float *work = malloc(sizeof(float) * (size_t)ts_muon_ns_workspace_floats(rows, cols));
        fill_normal(x, n, 1.0, 300 + c);
        naive_newton_schulz(x, want, rows, cols, 1e-7);
        ts_muon_newton_schulz(x, rows, cols, 1e-7, 8, 2, work, two);
        double max_err = 0, max_abs = 0;
        for (int64_t i = 0; i < n; i++) {
            max_err = fmax(max_err, fabs(x[i] - want[i]));
            max_abs = fmax(max_abs, fabs(want[i]));
        }
        printf("newton-schulz %3lldx%-3lld vs double-precision loops: max abs error %.2e (max |x| %.3f)\n",
               (long long)rows, (long long)cols, max_err, max_abs);
        CHECK(max_err < 1e-5, "%lldx%lld: Newton-Schulz differs from the double-precision loops by %.3g",
              (long long)rows, (long long)cols, max_err);
        free(x);
        free(want);
        free(work);
    }
    ts_threadpool_free(two);
}

/* ================================================================ Muon update */

static double rms(const float *x, int64_t n) {
    double s = 0;
    for (int64_t i = 0; i < n; i++) s += (double)x[i] * x[i];
    return sqrt(s / (double)n);
}

/* With lr 1, no weight decay and W = 0, one step leaves W = -O: its RMS must be 0.18 for each
 * matrix (an expert stack's matrices each on their own). */
static void test_muon_update_rms(void) {
    static const int64_t shapes[][3] = {{1, 64, 64}, {1, 96, 40}, {1, 40, 96}, {3, 32, 48}};
    for (size_t c = 0; c < sizeof shapes / sizeof shapes[0]; c++) {
        int64_t ne = shapes[c][0], rows = shapes[c][1], cols = shapes[c][2], n = ne * rows * cols;
        ts_muon_group g = ts_muon_group_default();
        g.weight_decay = 0;
        ts_muon_param prm = {"w", ne, rows, cols, 0};
        ts_muon *opt = NULL;
        CHECK(ts_muon_new(&g, 1, &prm, 1, &opt) == TS_OK, "muon_new");
        float *w = calloc((size_t)n, sizeof(float)), *grad = malloc(sizeof(float) * (size_t)n);
        fill_normal(grad, n, 1.0, 7 + c);
        /* make the experts' gradients very different in scale: each is normalized alone */
        for (int64_t e = 0; e < ne; e++)
            for (int64_t i = 0; i < rows * cols; i++) grad[e * rows * cols + i] *= (float)pow(10.0, (double)e);
        const float *cg = grad;
        CHECK(ts_muon_step(opt, &w, &cg, 1.0, NULL) == TS_OK, "muon_step");
        for (int64_t e = 0; e < ne; e++) {
            double r = rms(w + e * rows * cols, rows * cols);
            CHECK(fabs(r - 0.18) < 1e-3, "%lldx%lldx%lld expert %lld: update RMS %.6f", (long long)ne,
                  (long long)rows, (long long)cols, (long long)e, r);
        }
        free(w);
        free(grad);
        ts_muon_free(opt);
    }
}

/* Decoupled weight decay and Nesterov momentum, checked on their own: with a zero gradient the
 * update is exactly W * (1 - lr*wd); the momentum buffer holds mu*M + G. */
static void test_muon_decay_and_momentum(void) {
    ts_muon_group g = ts_muon_group_default();
    ts_muon_param prm = {"w", 1, 4, 6, 0};
    ts_muon *opt = NULL;
    CHECK(ts_muon_new(&g, 1, &prm, 1, &opt) == TS_OK, "muon_new");
    float w[24], zero[24] = {0}, grad[24];
    fill_normal(w, 24, 1.0, 3);
    fill_normal(grad, 24, 1.0, 4);
    float w0[24];
    memcpy(w0, w, sizeof w);
    float *pw = w;
    const float *pz = zero, *pg = grad;
    CHECK(ts_muon_step(opt, &pw, &pz, 0.5, NULL) == TS_OK, "zero-gradient step");
    bool decayed = true;
    for (int i = 0; i < 24; i++) decayed &= w[i] == w0[i] * (float)(1.0 - 0.5 * 0.1);
    CHECK(decayed, "zero gradient: W * (1 - lr*wd) exactly");
    ts_optim_state st;
    CHECK(ts_muon_state_at(opt, 0, &st) == TS_OK && strcmp(st.name, "w.momentum") == 0 && st.numel == 24,
          "state name %s", st.name);
    CHECK(ts_muon_step(opt, &pw, &pg, 0.5, NULL) == TS_OK, "step");
    CHECK(ts_muon_step(opt, &pw, &pg, 0.5, NULL) == TS_OK, "step");
    bool momentum_ok = true;
    for (int i = 0; i < 24; i++) momentum_ok &= st.data[i] == (0.0f * 0.95f + grad[i]) * 0.95f + grad[i];
    CHECK(momentum_ok, "momentum = mu*M + G");
    ts_muon_free(opt);

    ts_muon_param flat = {"v", 0, 4, 6, 0};
    CHECK(ts_muon_new(&g, 1, &flat, 1, &opt) == TS_ERR_INVALID_ARG, "0 matrices refused");
}

/* min ||W X - Y||^2 / N over W [r x k]: Muon drives the loss down by orders of magnitude. */
static double lsq_loss_grad(const float *w, const float *x, const float *y, int r, int k, int n, float *grad) {
    double loss = 0;
    if (grad) memset(grad, 0, sizeof(float) * (size_t)r * k);
    for (int i = 0; i < r; i++)
        for (int j = 0; j < n; j++) {
            double pred = 0;
            for (int t = 0; t < k; t++) pred += (double)w[i * k + t] * x[t * n + j];
            double err = pred - y[i * n + j];
            loss += err * err / n;
            if (grad)
                for (int t = 0; t < k; t++) grad[i * k + t] += (float)(2 * err * x[t * n + j] / n);
        }
    return loss;
}

static void test_muon_least_squares(void) {
    enum { R = 16, K = 32, N = 128, STEPS = 150 };
    static float x[K * N], y[R * N], w_true[R * K], w[R * K], grad[R * K];
    fill_normal(x, K * N, 1.0, 11);
    fill_normal(w_true, R * K, 0.5, 12);
    for (int i = 0; i < R; i++)
        for (int j = 0; j < N; j++) {
            double s = 0;
            for (int t = 0; t < K; t++) s += (double)w_true[i * K + t] * x[t * N + j];
            y[i * N + j] = (float)s;
        }
    memset(w, 0, sizeof w);
    ts_muon_group g = ts_muon_group_default();
    g.weight_decay = 0;
    ts_muon_param prm = {"w", 1, R, K, 0};
    ts_muon *opt = NULL;
    CHECK(ts_muon_new(&g, 1, &prm, 1, &opt) == TS_OK, "muon_new");
    double first = lsq_loss_grad(w, x, y, R, K, N, NULL), last = first;
    ts_lr_schedule sched = {.kind = TS_LR_COSINE, .peak_lr = 0.2, .warmup_steps = 5, .total_steps = STEPS,
                            .final_lr = 0.0};
    float *pw = w;
    const float *pg = grad;
    for (int s = 0; s < STEPS; s++) {
        last = lsq_loss_grad(w, x, y, R, K, N, grad);
        ts_muon_step(opt, &pw, &pg, ts_lr_at(&sched, s), NULL);
    }
    last = lsq_loss_grad(w, x, y, R, K, N, NULL);
    CHECK(last < 1e-3 * first, "least squares: loss %.4g -> %.4g", first, last);
    printf("muon least squares %dx%d: loss %.4g -> %.4g in %d steps\n", R, K, first, last, STEPS);
    ts_muon_free(opt);
}

/* ================================================================ schedules */

static bool near(double a, double b) { return fabs(a - b) <= 1e-12 * fmax(1.0, fabs(b)); }

static void test_schedules(void) {
    ts_lr_schedule s = ts_lr_schedule_tiny(1000); /* WSD, warm-up 100, decay the last 200, cosine */
    char err[128];
    CHECK(ts_lr_schedule_validate(&s, err, sizeof err) == TS_OK, "tiny: %s", err);
    CHECK(near(ts_lr_at(&s, 0), 1e-5), "first warm-up step %g", ts_lr_at(&s, 0));
    CHECK(near(ts_lr_at(&s, 49), 5e-4), "mid warm-up %g", ts_lr_at(&s, 49));
    CHECK(near(ts_lr_at(&s, 99), 1e-3), "last warm-up step at peak %g", ts_lr_at(&s, 99));
    CHECK(near(ts_lr_at(&s, 100), 1e-3) && near(ts_lr_at(&s, 799), 1e-3), "stable phase");
    CHECK(ts_lr_decay_start(&s) == 800, "decay start %lld", (long long)ts_lr_decay_start(&s));
    CHECK(near(ts_lr_at(&s, 800), 1e-3), "decay starts at peak %g", ts_lr_at(&s, 800));
    CHECK(near(ts_lr_at(&s, 850), 1e-4 + 9e-4 * 0.5 * (1 + cos(M_PI / 4))), "cosine quarter %g", ts_lr_at(&s, 850));
    CHECK(near(ts_lr_at(&s, 900), 5.5e-4), "cosine half %g", ts_lr_at(&s, 900));
    CHECK(near(ts_lr_at(&s, 999), 1e-4 + 9e-4 * 0.5 * (1 + cos(M_PI * 199 / 200))), "last step %g",
          ts_lr_at(&s, 999));
    CHECK(near(ts_lr_at(&s, 1000), 1e-4) && near(ts_lr_at(&s, 100000), 1e-4), "floor after the end");
    CHECK(ts_mtp_loss_weight(&s, 0) == 0.3 && ts_mtp_loss_weight(&s, 799) == 0.3, "MTP 0.3 before decay");
    CHECK(ts_mtp_loss_weight(&s, 800) == 0.1 && ts_mtp_loss_weight(&s, 5000) == 0.1, "MTP 0.1 during decay");

    ts_lr_schedule lin = s;
    lin.decay_shape = TS_LR_DECAY_LINEAR;
    CHECK(near(ts_lr_at(&lin, 850), 1e-3 - 9e-4 * 0.25), "linear quarter %g", ts_lr_at(&lin, 850));
    CHECK(near(ts_lr_at(&lin, 1000), 1e-4), "linear end");

    ts_lr_schedule cosine = {.kind = TS_LR_COSINE, .peak_lr = 2.0, .warmup_steps = 10, .total_steps = 110,
                             .final_lr = 0.2};
    CHECK(ts_lr_schedule_validate(&cosine, err, sizeof err) == TS_OK, "cosine: %s", err);
    CHECK(near(ts_lr_at(&cosine, 9), 2.0) && near(ts_lr_at(&cosine, 10), 2.0), "cosine peak");
    CHECK(near(ts_lr_at(&cosine, 60), 1.1), "cosine midpoint %g", ts_lr_at(&cosine, 60));
    CHECK(near(ts_lr_at(&cosine, 110), 0.2), "cosine end");
    CHECK(ts_mtp_loss_weight(&cosine, 9) == 0.3 && ts_mtp_loss_weight(&cosine, 10) == 0.1, "cosine MTP switch");

    ts_lr_schedule constant = {.kind = TS_LR_CONSTANT, .peak_lr = 3e-4};
    CHECK(ts_lr_schedule_validate(&constant, err, sizeof err) == TS_OK, "constant: %s", err);
    CHECK(ts_lr_at(&constant, 0) == 3e-4 && ts_lr_at(&constant, 1000000000) == 3e-4, "constant");
    CHECK(ts_mtp_loss_weight(&constant, 1000000000) == 0.3, "constant never decays");

    ts_lr_schedule bad = cosine;
    bad.total_steps = 10;
    CHECK(ts_lr_schedule_validate(&bad, err, sizeof err) == TS_ERR_INVALID_ARG && strstr(err, "total_steps"),
          "total <= warm-up: %s", err);
    bad = s;
    bad.decay_fraction = 0.95; /* decay would start inside the warm-up */
    CHECK(ts_lr_schedule_validate(&bad, err, sizeof err) == TS_ERR_INVALID_ARG, "decay overlapping warm-up");
    bad = s;
    bad.peak_lr = NAN;
    CHECK(ts_lr_schedule_validate(&bad, err, sizeof err) == TS_ERR_INVALID_ARG, "NaN peak");
}

/* ================================================================ gradients */

static void test_grad_clip_and_accumulate(void) {
    float a[3] = {3, 0, 4}, b[2] = {12, 0};
    float *grads[2] = {a, b};
    int64_t numels[2] = {3, 2};
    CHECK(ts_grad_global_norm(grads, numels, 2) == 13.0, "norm of (3,0,4,12,0) = 13");
    double pre = ts_grad_clip_global_norm(grads, numels, 2, 100.0);
    CHECK(pre == 13.0 && a[0] == 3 && b[0] == 12, "below the limit nothing changes");
    pre = ts_grad_clip_global_norm(grads, numels, 2, 1.0);
    double post = ts_grad_global_norm(grads, numels, 2);
    CHECK(pre == 13.0, "returns the pre-clip norm %g", pre);
    CHECK(fabs(post - 1.0) < 1e-7, "clipped to the target norm: %.9g", post);
    CHECK(a[0] == 3 * (float)(1.0 / 13.0), "scaled by f32(max/norm)");

    enum { N = 10000 };
    static float big[N];
    fill_normal(big, N, 3.0, 5);
    float *gb = big;
    int64_t nb = N;
    double norm = ts_grad_global_norm(&gb, &nb, 1);
    ts_grad_clip_global_norm(&gb, &nb, 1, 0.5);
    CHECK(fabs(ts_grad_global_norm(&gb, &nb, 1) - 0.5) < 0.5 * 1e-6, "large clip exact: %.9g (from %g)",
          ts_grad_global_norm(&gb, &nb, 1), norm);

    float inf_g[2] = {INFINITY, 1};
    float *gi = inf_g;
    int64_t ni = 2;
    CHECK(isinf(ts_grad_clip_global_norm(&gi, &ni, 1, 1.0)) && inf_g[1] == 1, "non-finite norm: untouched");

    float acc[3], m0[3] = {1, 2, 3}, m1[3] = {3, 2, 1}, m2[3] = {2, 5, -1};
    CHECK(ts_grad_accumulate(acc, m0, 3, 0, 3) == TS_OK, "micro 0");
    CHECK(ts_grad_accumulate(acc, m1, 3, 1, 3) == TS_OK, "micro 1");
    CHECK(ts_grad_accumulate(acc, m2, 3, 2, 3) == TS_OK, "micro 2");
    CHECK(acc[0] == 2 && acc[1] == 3 && acc[2] == 1, "mean (%g %g %g)", acc[0], acc[1], acc[2]);
    CHECK(ts_grad_accumulate(acc, m0, 3, 3, 3) == TS_ERR_INVALID_ARG, "micro index past n");
}

/* ================================================================ MoE balancing */

static void test_moe_bias_update(void) {
    float bias[5] = {0, 0.5f, -0.25f, 0, 0};
    int64_t load[5] = {10, 2, 6, 6, 6}; /* mean 6 */
    CHECK(ts_moe_bias_update(bias, load, 5, TS_MOE_BIAS_GAMMA) == TS_OK, "update");
    CHECK(bias[0] == 0 - 1e-3f, "over-loaded expert pushed down: %g", bias[0]);
    CHECK(bias[1] == 0.5f + 1e-3f, "under-loaded expert pulled up: %g", bias[1]);
    CHECK(bias[2] == -0.25f && bias[3] == 0 && bias[4] == 0, "at the mean: unchanged");
    int64_t uneven[3] = {1, 1, 2}; /* mean 4/3 is not a float-exact number */
    float b3[3] = {0, 0, 0};
    ts_moe_bias_update(b3, uneven, 3, 0.01);
    CHECK(b3[0] == 0.01f && b3[1] == 0.01f && b3[2] == -0.01f, "non-integral mean");
    int64_t negative[2] = {-1, 3};
    CHECK(ts_moe_bias_update(b3, negative, 2, 0.01) == TS_ERR_INVALID_ARG, "negative load");
}

static void test_moe_balance_loss(void) {
    enum { T = 6, E = 4, K = 2 };
    float s[T * E];
    ts_rng r;
    ts_rng_seed(&r, 9);
    for (int i = 0; i < T * E; i++) s[i] = (float)(0.1 + ts_rng_uniform(&r));
    int32_t topk[T * K];
    for (int t = 0; t < T; t++) { /* the two largest affinities */
        int b0 = 0;
        for (int e = 1; e < E; e++) b0 = s[t * E + e] > s[t * E + b0] ? e : b0;
        int b1 = b0 == 0 ? 1 : 0;
        for (int e = 0; e < E; e++) b1 = e != b0 && s[t * E + e] > s[t * E + b1] ? e : b1;
        topk[t * K] = b0;
        topk[t * K + 1] = b1;
    }
    /* Closed form straight from the definition. */
    double f[E] = {0}, P[E] = {0}, want = 0;
    for (int i = 0; i < T * K; i++) f[topk[i]] += (double)E / (K * T);
    for (int t = 0; t < T; t++) {
        double row = 0;
        for (int e = 0; e < E; e++) row += s[t * E + e];
        for (int e = 0; e < E; e++) P[e] += s[t * E + e] / row / T;
    }
    for (int e = 0; e < E; e++) want += 0.5 * f[e] * P[e];
    double loss;
    float grad[T * E];
    CHECK(ts_moe_seq_balance_loss(s, topk, T, E, K, 0.5, &loss, grad) == TS_OK, "balance loss");
    CHECK(fabs(loss - want) < 1e-12, "value %.15g vs %.15g", loss, want);

    /* Perfect balance: f_e = 1 and P_e = 1/E give L = alpha. */
    float uniform[2 * 4] = {1, 1, 1, 1, 1, 1, 1, 1};
    int32_t spread[2 * 2] = {0, 1, 2, 3};
    double balanced;
    ts_moe_seq_balance_loss(uniform, spread, 2, 4, 2, 1e-4, &balanced, NULL);
    CHECK(fabs(balanced - 1e-4) < 1e-18, "balanced loss = alpha: %g", balanced);

    /* Gradient against central differences (the selection fixed, as the counts are constants). */
    double max_err = 0;
    for (int i = 0; i < T * E; i++) {
        float keep = s[i];
        double h = 1e-3, lp, lm;
        s[i] = keep + (float)h;
        double hp = (double)s[i] - keep;
        ts_moe_seq_balance_loss(s, topk, T, E, K, 0.5, &lp, NULL);
        s[i] = keep - (float)h;
        double hm = keep - (double)s[i];
        ts_moe_seq_balance_loss(s, topk, T, E, K, 0.5, &lm, NULL);
        s[i] = keep;
        double fd = (lp - lm) / (hp + hm);
        max_err = fmax(max_err, fabs(fd - grad[i]));
    }
    CHECK(max_err < 1e-5, "gradient vs finite differences: max abs error %.3g", max_err);
    int32_t bad[T * K];
    memcpy(bad, topk, sizeof bad);
    bad[3] = E;
    CHECK(ts_moe_seq_balance_loss(s, bad, T, E, K, 0.5, &loss, NULL) == TS_ERR_RANGE, "expert id out of range");
}

/* ================================================================ resume and threads */

/* A toy model: two Muon matrices (one an expert stack) and two AdamW vectors, trained on a
 * gradient that depends on the parameters and the step, so any state difference shows. */
enum { TOY_MUON = 2, TOY_ADAMW = 2, TOY_PARAMS = TOY_MUON + TOY_ADAMW };

typedef struct {
    int64_t numel[TOY_PARAMS];
    float *p[TOY_PARAMS], *g[TOY_PARAMS], *target[TOY_PARAMS];
    ts_muon *muon;
    ts_adamw *adamw;
} toy;

static const ts_muon_param toy_muon_params[TOY_MUON] = {{"layers.0.attn.wq_a.weight", 1, 200, 72, 0},
                                                         {"layers.0.ffn.experts", 3, 24, 40, 0}};

static void toy_init(toy *t, int64_t adamw_numel) {
    memset(t, 0, sizeof *t);
    for (int i = 0; i < TOY_MUON; i++)
        t->numel[i] = toy_muon_params[i].n_matrices * toy_muon_params[i].rows * toy_muon_params[i].cols;
    t->numel[2] = adamw_numel;
    t->numel[3] = 37;
    ts_adamw_param ap[TOY_ADAMW] = {{"embed.weight", t->numel[2], 0}, {"norm.weight", t->numel[3], 1}};
    ts_adamw_group ag[2] = {ts_adamw_group_default(0.1), ts_adamw_group_default(0.0)};
    ts_muon_group mg = ts_muon_group_default();
    CHECK(ts_muon_new(&mg, 1, toy_muon_params, TOY_MUON, &t->muon) == TS_OK, "toy muon");
    CHECK(ts_adamw_new(ag, 2, ap, TOY_ADAMW, &t->adamw) == TS_OK, "toy adamw");
    for (int i = 0; i < TOY_PARAMS; i++) {
        t->p[i] = malloc(sizeof(float) * (size_t)t->numel[i]);
        t->g[i] = malloc(sizeof(float) * (size_t)t->numel[i]);
        t->target[i] = malloc(sizeof(float) * (size_t)t->numel[i]);
        fill_normal(t->p[i], t->numel[i], 0.02, 50 + i);
        fill_normal(t->target[i], t->numel[i], 0.05, 60 + i);
    }
}

static void toy_free(toy *t) {
    for (int i = 0; i < TOY_PARAMS; i++) {
        free(t->p[i]);
        free(t->g[i]);
        free(t->target[i]);
    }
    ts_muon_free(t->muon);
    ts_adamw_free(t->adamw);
}

static void toy_step(toy *t, int step, ts_threadpool *pool) {
    ts_rng r;
    ts_rng_seed(&r, 1000 + (uint64_t)step);
    for (int i = 0; i < TOY_PARAMS; i++)
        for (int64_t j = 0; j < t->numel[i]; j++)
            t->g[i][j] = (t->p[i][j] - t->target[i][j]) + (float)(0.01 * ts_rng_normal(&r));
    ts_grad_clip_global_norm(t->g, t->numel, TOY_PARAMS, 5.0);
    double lr = ts_lr_at(&(ts_lr_schedule){.kind = TS_LR_COSINE, .peak_lr = 0.01, .warmup_steps = 2,
                                           .total_steps = 12, .final_lr = 0.001},
                         step);
    CHECK(ts_muon_step(t->muon, t->p, (const float *const *)t->g, lr, pool) == TS_OK, "muon step");
    CHECK(ts_adamw_step(t->adamw, t->p + TOY_MUON, (const float *const *)t->g + TOY_MUON, lr, pool) == TS_OK,
          "adamw step");
}

static bool toy_same_params(const toy *a, const toy *b) {
    for (int i = 0; i < TOY_PARAMS; i++)
        if (memcmp(a->p[i], b->p[i], sizeof(float) * (size_t)a->numel[i]) != 0) return false;
    return true;
}

/* A checkpoint in memory: every state buffer by name. */
typedef struct {
    int n;
    ts_optim_state entries[16];
    float *copies[16];
} saved_state;

static void save_states(saved_state *s, toy *t) {
    s->n = 0;
    for (int i = 0; i < ts_muon_state_count(t->muon); i++) ts_muon_state_at(t->muon, i, &s->entries[s->n++]);
    for (int i = 0; i < ts_adamw_state_count(t->adamw); i++) ts_adamw_state_at(t->adamw, i, &s->entries[s->n++]);
    for (int i = 0; i < s->n; i++) {
        s->copies[i] = malloc(sizeof(float) * (size_t)s->entries[i].numel);
        memcpy(s->copies[i], s->entries[i].data, sizeof(float) * (size_t)s->entries[i].numel);
    }
}

static int restore_into(const saved_state *s, ts_optim_state st) {
    for (int i = 0; i < s->n; i++)
        if (strcmp(s->entries[i].name, st.name) == 0 && s->entries[i].numel == st.numel) {
            memcpy(st.data, s->copies[i], sizeof(float) * (size_t)st.numel);
            return 1;
        }
    return 0;
}

static void test_resume_bitwise(void) {
    enum { N = 4 };
    toy straight, first, resumed;
    toy_init(&straight, 500);
    for (int s = 0; s < 2 * N; s++) toy_step(&straight, s, NULL);

    toy_init(&first, 500);
    for (int s = 0; s < N; s++) toy_step(&first, s, NULL);
    saved_state saved;
    save_states(&saved, &first);
    CHECK(saved.n == TOY_MUON + 1 + 2 * TOY_ADAMW, "state buffers: %d", saved.n);

    toy_init(&resumed, 500); /* fresh optimizers: zero state, step 0 */
    for (int i = 0; i < TOY_PARAMS; i++) memcpy(resumed.p[i], first.p[i], sizeof(float) * (size_t)first.numel[i]);
    int restored = 0;
    ts_optim_state st;
    for (int i = 0; i < ts_muon_state_count(resumed.muon); i++)
        if (ts_muon_state_at(resumed.muon, i, &st) == TS_OK) restored += restore_into(&saved, st);
    for (int i = 0; i < ts_adamw_state_count(resumed.adamw); i++)
        if (ts_adamw_state_at(resumed.adamw, i, &st) == TS_OK) restored += restore_into(&saved, st);
    CHECK(restored == saved.n, "restored %d of %d buffers", restored, saved.n);
    CHECK(ts_adamw_step_count(resumed.adamw) == N, "step count restored: %lld",
          (long long)ts_adamw_step_count(resumed.adamw));
    for (int s = N; s < 2 * N; s++) toy_step(&resumed, s, NULL);
    CHECK(toy_same_params(&straight, &resumed), "2N steps == N steps + save + restore + N steps, bit for bit");

    /* Without the state the continuation differs: the check above has teeth. */
    toy cold;
    toy_init(&cold, 500);
    for (int i = 0; i < TOY_PARAMS; i++) memcpy(cold.p[i], first.p[i], sizeof(float) * (size_t)first.numel[i]);
    for (int s = N; s < 2 * N; s++) toy_step(&cold, s, NULL);
    CHECK(!toy_same_params(&straight, &cold), "dropping the optimizer state must change the result");

    for (int i = 0; i < saved.n; i++) free(saved.copies[i]);
    toy_free(&straight);
    toy_free(&first);
    toy_free(&resumed);
    toy_free(&cold);
}

static void test_threads_identical(void) {
    ts_threadpool *one = NULL, *two = NULL, *three = NULL;
    CHECK(ts_threadpool_new(1, &one) == TS_OK && ts_threadpool_new(2, &two) == TS_OK &&
              ts_threadpool_new(3, &three) == TS_OK, "pools");
    /* Muon with 2 or 3 threads splits the 200 x 72 matrix inside its products and deals the
     * experts out whole; with 1 thread everything runs in order. */
    toy a, b, c;
    toy_init(&a, 70000); /* > 2 chunks of AdamW elements, so 2 threads really split it */
    toy_init(&b, 70000);
    toy_init(&c, 70000);
    CHECK(ts_muon_plan(c.muon, 3) == TS_OK && ts_muon_plan(c.muon, 0) == TS_ERR_INVALID_ARG, "muon plan");
    for (int s = 0; s < 3; s++) {
        toy_step(&a, s, one);
        toy_step(&b, s, two);
        toy_step(&c, s, s == 1 ? two : three); /* a pool of another size re-plans */
    }
    CHECK(toy_same_params(&a, &b), "1 and 2 threads give identical parameters");
    CHECK(toy_same_params(&a, &c), "1 and 2-or-3 threads give identical parameters");
    toy_free(&a);
    toy_free(&b);
    toy_free(&c);

    /* A Newton-Schulz run large enough that every product is split over the threads; its
     * speed is reported (not checked) to keep an eye on the matrix product. */
    enum { S = 384, L = 512 };
    float *x1 = malloc(sizeof(float) * S * L), *x2 = malloc(sizeof(float) * S * L);
    float *work = malloc(sizeof(float) * (size_t)ts_muon_ns_workspace_floats(S, L));
    fill_normal(x1, S * L, 1.0, 77);
    memcpy(x2, x1, sizeof(float) * S * L);
    double t0 = ts_time_seconds();
    ts_muon_newton_schulz(x1, S, L, 1e-7, 8, 2, work, one);
    double t1 = ts_time_seconds();
    ts_muon_newton_schulz(x2, S, L, 1e-7, 8, 2, work, two);
    double t2 = ts_time_seconds();
    CHECK(memcmp(x1, x2, sizeof(float) * S * L) == 0, "Newton-Schulz: 1 and 2 threads identical");
    double flops = 10.0 * (2.0 * S * S * L * 2 + 2.0 * S * S * S);
    printf("newton-schulz %dx%d (10 iterations): 1 thread %.3f s (%.1f GFLOP/s), 2 threads %.3f s (%.1f GFLOP/s)\n",
           S, L, t1 - t0, flops / (t1 - t0) * 1e-9, t2 - t1, flops / (t2 - t1) * 1e-9);
    free(x1);
    free(x2);
    free(work);
    ts_threadpool_free(one);
    ts_threadpool_free(two);
    ts_threadpool_free(three);
}

int main(void) {
    find_fixtures();
    test_adamw_matches_pytorch();
    test_adamw_rejects_bad_arguments();
    test_newton_schulz_spectrum();
    test_newton_schulz_matches_naive();
    test_muon_update_rms();
    test_muon_decay_and_momentum();
    test_muon_least_squares();
    test_schedules();
    test_grad_clip_and_accumulate();
    test_moe_bias_update();
    test_moe_balance_loss();
    test_resume_bitwise();
    test_threads_identical();
    return check_summary("test_optim");
}
