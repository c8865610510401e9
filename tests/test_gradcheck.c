/* test_gradcheck.c - checks every backward rule of autodiff.c against central finite
 * differences, in f64, on the reference CPU backend.
 *
 * Each case builds a small graph: f64 PARAM leaves, the op under test (sometimes fed through or
 * followed by views), and loss = sum(out * W) with W fixed random weights (cross-entropy cases
 * use the op itself as the loss). ts_graph_backward appends the gradients; after one compute
 * they are read and compared, element by element, with
 *     numeric = sum_i W_i (out_i(x + h) - out_i(x - h)) / 2h,
 * each output difference taken before weighting, so that outputs the perturbation does not
 * touch cancel exactly and only real rounding noise remains.
 *
 * Every differentiable op is covered (RESHAPE..MATMUL_ID in the op enum, except FILL,
 * which has no inputs, and TOPK, whose values are a GATHER that carries the gradient). The
 * errors of ts_graph_backward (non-scalar loss, no parameter, called twice, ...) and the
 * bookkeeping of gradients (names, flags, shared nodes) are checked at the end. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "tessera/backend.h"
#include "tessera/graph.h"

/* Tolerance. The step is h = 1e-6. Central differences have a truncation error of about
 * h^2 |f'''| / 6 ~ 2e-13 for the O(1) inputs used here. Rounding: each output is computed in
 * double with a handful of operations, so an output carries an error of a few eps |y|
 * (eps = 2.2e-16, |y| ~ 1), i.e. ~1e-15; divided by 2h that is ~5e-10 in the numeric
 * derivative. Against max(|analytic|, |numeric|, 1e-3) that is at most ~5e-7 for the smallest
 * gradients and ~1e-9 for typical O(1) ones, so 1e-6 fails a wrong rule (whose errors are
 * O(1) relative) and not rounding noise. The floor 1e-3 keeps gradients that are exactly 0
 * (e.g. outside a relu) from turning noise into huge relative errors. Measured: single ops
 * stay below 3e-8, the composites below 7e-8, and those errors grow as 1/h when h shrinks
 * (rounding, not the rules). */
#define STEP 1e-6
#define TOL 1e-6
#define FLOOR 1e-3

/* The f64 -> f32 -> f64 cast is piecewise constant at f32 resolution: a step of 1e-6 is only
 * ~8 f32 spacings wide near 1, and rounding x +- h to f32 moves the difference by up to one
 * spacing (1.2e-7), a 6% error. The cast is linear, so a larger step costs no truncation
 * error: with h = 1e-3 the rounding contributes <= 1.2e-7 / 2e-3 = 6e-5 relative; 1e-3
 * leaves room and still catches a wrong or missing gradient. */
#define CAST_STEP 1e-3
#define CAST_TOL 1e-3

#define MAX_LEAVES 10
#define MAX_REPORTED 3 /* mismatching elements printed per case */

/* How a leaf's values are drawn: some ops need positive inputs, or inputs away from their
 * kinks, so that x +- h stays on one smooth piece. */
typedef enum {
    INIT_UNIFORM,      /* [-1, 1] */
    INIT_POSITIVE,     /* [0.5, 2]: log, sqrt, denominators */
    INIT_AWAY_FROM_0,  /* |x| in [0.2, 1]: relu */
    INIT_DISTINCT,     /* a shuffled grid 0.1 apart: max / topk pick the same element under +-h */
    INIT_CLAMP_SAFE,   /* [-1, 1] but at least 0.05 from +-0.5, the clamp bounds used below */
} init_kind;

#define CLAMP_LO -0.5f
#define CLAMP_HI 0.5f

typedef struct {
    ts_tensor *t;
    double *values;    /* row-major; integer leaves hold their ids */
    double *analytic;  /* params: ts_grad read after the unperturbed compute */
    bool param;
} gc_leaf;

typedef struct {
    ts_graph *g;
    ts_rng rng;
    gc_leaf leaves[MAX_LEAVES];
    int n_leaves;
} gc_case;

typedef ts_tensor *(*gc_build)(gc_case *c);

typedef struct {
    const char *name;
    gc_build build;
    bool out_is_loss;  /* the op's output is the loss itself (cross-entropy) */
    double step, tol;  /* 0: STEP, TOL */
} gc_spec;

/* ---------------------------------------------------------------- leaves */

/* Shape arguments: DIMS(2, 3, 4) expands to "3, (int64_t[]){2, 3, 4}". */
#define DIMS(...) (int)(sizeof((int64_t[]){__VA_ARGS__}) / sizeof(int64_t)), (int64_t[]){__VA_ARGS__}

static double uniform(gc_case *c, double lo, double hi) { return lo + (hi - lo) * ts_rng_uniform(&c->rng); }

static void draw(gc_case *c, init_kind kind, double *v, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        switch (kind) {
        case INIT_UNIFORM: v[i] = uniform(c, -1, 1); break;
        case INIT_POSITIVE: v[i] = uniform(c, 0.5, 2); break;
        case INIT_AWAY_FROM_0: v[i] = (ts_rng_uniform(&c->rng) < 0.5 ? -1 : 1) * uniform(c, 0.2, 1); break;
        case INIT_DISTINCT: v[i] = 0.1 * (double)i - 0.05 * (double)n + uniform(c, 0, 0.01); break;
        case INIT_CLAMP_SAFE:
            do v[i] = uniform(c, -1, 1);
            while (fabs(fabs(v[i]) - CLAMP_HI) < 0.05);
            break;
        }
    }
    if (kind == INIT_DISTINCT) /* Fisher-Yates, so the maxima sit at varied positions */
        for (int64_t i = n - 1; i > 0; i--) {
            int64_t j = (int64_t)(ts_rng_next(&c->rng) % (uint64_t)(i + 1));
            double t = v[i];
            v[i] = v[j];
            v[j] = t;
        }
}

static ts_tensor *leaf(gc_case *c, const char *name, ts_dtype type, int ndim, const int64_t *shape, bool param) {
    if (c->n_leaves == MAX_LEAVES) {
        CHECK(false, "test bug: more than %d leaves", MAX_LEAVES);
        return NULL;
    }
    ts_tensor *t = ts_new_tensor(c->g, type, ndim, shape, name);
    if (!t) return NULL;
    if (param) ts_set_param(t);
    gc_leaf *l = &c->leaves[c->n_leaves++];
    l->t = t;
    l->param = param;
    l->values = calloc((size_t)ts_nelements(t), sizeof(double));
    return t;
}

static ts_tensor *param(gc_case *c, const char *name, init_kind kind, int ndim, const int64_t *shape) {
    ts_tensor *t = leaf(c, name, TS_F64, ndim, shape, true);
    if (t) draw(c, kind, c->leaves[c->n_leaves - 1].values, ts_nelements(t));
    return t;
}

/* An f64 input that is not differentiated (weights of the loss, rope angles, MLP inputs). */
static ts_tensor *constant(gc_case *c, const char *name, init_kind kind, int ndim, const int64_t *shape) {
    ts_tensor *t = leaf(c, name, TS_F64, ndim, shape, false);
    if (t) draw(c, kind, c->leaves[c->n_leaves - 1].values, ts_nelements(t));
    return t;
}

static ts_tensor *index_leaf(gc_case *c, const char *name, ts_dtype type, const int64_t *ids, int ndim,
                             const int64_t *shape) {
    ts_tensor *t = leaf(c, name, type, ndim, shape, false);
    if (t)
        for (int64_t i = 0; i < ts_nelements(t); i++) c->leaves[c->n_leaves - 1].values[i] = (double)ids[i];
    return t;
}

#define P(name, kind, ...) param(c, name, kind, DIMS(__VA_ARGS__))
#define K(name, kind, ...) constant(c, name, kind, DIMS(__VA_ARGS__))
#define IDS(name, type, ids, ...) index_leaf(c, name, type, ids, DIMS(__VA_ARGS__))

/* ---------------------------------------------------------------- running */

static ts_status write_leaf(const gc_leaf *l) {
    int64_t n = ts_nelements(l->t);
    if (l->t->dtype == TS_F64) return ts_tensor_write(l->t, l->values, (size_t)n * sizeof(double));
    void *buf = malloc(ts_nbytes(l->t));
    if (!buf) return TS_ERR_OOM;
    for (int64_t i = 0; i < n; i++) {
        if (l->t->dtype == TS_I32) ((int32_t *)buf)[i] = (int32_t)l->values[i];
        else ((int64_t *)buf)[i] = (int64_t)l->values[i];
    }
    ts_status s = ts_tensor_write(l->t, buf, ts_nbytes(l->t));
    free(buf);
    return s;
}

static ts_status read_f64(const ts_tensor *t, double *dst) {
    if (t->dtype != TS_F64) return TS_ERR_DTYPE;
    return ts_tensor_read(t, dst, (size_t)ts_nelements(t) * sizeof(double));
}

/* loss = sum(out * W) as a [1] tensor. */
static ts_tensor *weighted_sum(ts_graph *g, ts_tensor *out, ts_tensor *w) {
    int64_t n = ts_nelements(out);
    ts_tensor *flat = ts_reshape(g, ts_mul(g, out, w), 1, &n);
    return ts_sum(g, flat, 0, true);
}

/* Compares one parameter's gradient (read before any perturbation: every later compute runs
 * with some element moved by h) with finite differences; returns its largest relative error. */
static double check_param(gc_case *c, const gc_spec *s, gc_leaf *p, ts_tensor *out, const double *w,
                          double *out_plus, double *out_minus, int *n_bad) {
    double h = s->step > 0 ? s->step : STEP, tol = s->tol > 0 ? s->tol : TOL, worst = 0;
    int64_t n = ts_nelements(p->t), n_out = ts_nelements(out);
    const double *analytic = p->analytic;
    ts_status st = TS_OK;
    for (int64_t j = 0; j < n && st == TS_OK; j++) {
        double v = p->values[j];
        p->values[j] = v + h;
        if ((st = write_leaf(p)) || (st = ts_graph_compute(c->g)) || (st = read_f64(out, out_plus))) break;
        p->values[j] = v - h;
        if ((st = write_leaf(p)) || (st = ts_graph_compute(c->g)) || (st = read_f64(out, out_minus))) break;
        p->values[j] = v;
        double numeric = 0;
        for (int64_t i = 0; i < n_out; i++) numeric += (w ? w[i] : 1.0) * (out_plus[i] - out_minus[i]);
        numeric /= 2 * h;
        double scale = fmax(fmax(fabs(analytic[j]), fabs(numeric)), FLOOR);
        double err = fabs(analytic[j] - numeric) / scale;
        if (!(err <= tol)) { /* NaN fails too */
            if ((*n_bad)++ < MAX_REPORTED)
                fprintf(stderr, "    %s: d/d%s[%lld] analytic %.12g numeric %.12g (rel err %.2e)\n", s->name,
                        p->t->name, (long long)j, analytic[j], numeric, err);
            err = isnan(err) ? INFINITY : err;
        }
        if (err > worst) worst = err;
    }
    CHECK_OK(st, c->g);
    if (st == TS_OK) st = write_leaf(p); /* restore the unperturbed values */
    return st == TS_OK ? worst : INFINITY;
}

/* Gradient bookkeeping every case should satisfy. */
static void check_grad_node(const gc_spec *s, const ts_tensor *p) {
    const ts_tensor *d = ts_grad(p);
    char expect[TS_MAX_NAME + 8];
    snprintf(expect, sizeof expect, "grad:%s", p->name);
    CHECK(d != NULL, "%s: parameter %s got no gradient", s->name, p->name);
    if (!d) return;
    CHECK(ts_same_shape(d, p) && d->dtype == p->dtype, "%s: gradient of %s has the wrong shape or dtype", s->name,
          p->name);
    CHECK(strcmp(d->name, expect) == 0, "%s: gradient named '%s', expected '%s'", s->name, d->name, expect);
    CHECK((d->flags & TS_FLAG_GRAD) && (d->flags & TS_FLAG_OUTPUT), "%s: gradient of %s flags 0x%x", s->name,
          p->name, (unsigned)d->flags);
}

static uint64_t name_seed(const char *name) {
    uint64_t hsh = 1469598103934665603ull; /* FNV-1a */
    for (; *name; name++) hsh = (hsh ^ (unsigned char)*name) * 1099511628211ull;
    return hsh;
}

static void run_case(ts_backend *be, const gc_spec *s) {
    gc_case c = {.g = ts_graph_new()};
    ts_rng_seed(&c.rng, name_seed(s->name));
    ts_graph *g = c.g;
    double *w = NULL, *out_plus = NULL, *out_minus = NULL, worst = 0;
    int n_bad = 0, n_params = 0, failures_before = check_failed_;
    int64_t n_checked = 0;

    ts_tensor *out = s->build(&c), *loss = out;
    if (out && !s->out_is_loss) {
        ts_tensor *weights = constant(&c, "W", INIT_UNIFORM, out->ndim, out->shape);
        loss = weighted_sum(g, out, weights);
        w = c.leaves[c.n_leaves - 1].values;
    }
    ts_set_output(out);
    ts_set_output(loss);
    CHECK(loss != NULL, "%s: build failed: %s", s->name, ts_graph_error(g));
    if (!loss) goto done;
    CHECK(out->dtype == TS_F64, "%s: test bug: output must be f64", s->name);
    CHECK_OK(ts_graph_backward(g, loss), g);
    CHECK_OK(ts_graph_alloc(g, be, NULL, NULL), g);
    if (ts_graph_status(g) != TS_OK) goto done;
    for (int i = 0; i < c.n_leaves; i++) CHECK_OK(write_leaf(&c.leaves[i]), g);
    CHECK_OK(ts_graph_compute(g), g);
    if (ts_graph_status(g) != TS_OK) goto done;

    for (int i = 0; i < c.n_leaves; i++) {
        gc_leaf *l = &c.leaves[i];
        if (!l->param) continue;
        check_grad_node(s, l->t);
        if (!ts_grad(l->t)) continue;
        l->analytic = calloc((size_t)ts_nelements(l->t), sizeof(double));
        CHECK_OK(read_f64(ts_grad(l->t), l->analytic), g);
    }
    if (ts_graph_status(g) != TS_OK) goto done;

    out_plus = calloc((size_t)ts_nelements(out), sizeof(double));
    out_minus = calloc((size_t)ts_nelements(out), sizeof(double));
    for (int i = 0; i < c.n_leaves; i++) {
        gc_leaf *l = &c.leaves[i];
        if (!l->analytic) continue;
        n_params++;
        n_checked += ts_nelements(l->t);
        double e = check_param(&c, s, l, out, w, out_plus, out_minus, &n_bad);
        if (e > worst) worst = e;
    }
    CHECK(n_bad == 0, "%s: %d gradient elements differ from finite differences", s->name, n_bad);
    CHECK(n_params > 0, "%s: test bug: no parameter", s->name);
done:
    printf("  %-40s %d params %4lld elements  max rel err %.1e  %s\n", s->name, n_params, (long long)n_checked,
           worst, check_failed_ == failures_before ? "ok" : "FAIL");
    for (int i = 0; i < c.n_leaves; i++) {
        free(c.leaves[i].values);
        free(c.leaves[i].analytic);
    }
    free(out_plus);
    free(out_minus);
    ts_graph_free(g);
}

/* ---------------------------------------------------------------- cases: views */

static ts_tensor *case_reshape(gc_case *c) {
    return ts_reshape(c->g, P("x", INIT_UNIFORM, 2, 3, 4), DIMS(4, 6));
}
static ts_tensor *case_permute(gc_case *c) {
    return ts_permute(c->g, P("x", INIT_UNIFORM, 2, 3, 4), (int[]){2, 0, 1});
}
static ts_tensor *case_slice_middle(gc_case *c) { /* zeros on both sides of the slice */
    return ts_slice(c->g, P("x", INIT_UNIFORM, 2, 5, 3), 1, 1, 2);
}
static ts_tensor *case_slice_end(gc_case *c) { /* zeros before only */
    return ts_slice(c->g, P("x", INIT_UNIFORM, 2, 3, 3), 2, 2, 1);
}
static ts_tensor *case_expand(gc_case *c) { /* new leading dim and a stretched size-1 dim */
    return ts_expand(c->g, P("x", INIT_UNIFORM, 3, 1), DIMS(2, 3, 4));
}

/* ops applied to views */
static ts_tensor *case_exp_of_transpose(gc_case *c) {
    return ts_exp(c->g, ts_transpose(c->g, P("x", INIT_UNIFORM, 3, 4), 0, 1));
}
static ts_tensor *case_mul_transposed(gc_case *c) {
    ts_tensor *a = P("a", INIT_UNIFORM, 4, 3), *b = P("b", INIT_UNIFORM, 3, 4);
    return ts_mul(c->g, ts_transpose(c->g, a, 0, 1), b);
}
static ts_tensor *case_sigmoid_of_slice(gc_case *c) {
    return ts_sigmoid(c->g, ts_slice(c->g, P("x", INIT_UNIFORM, 4, 5), 0, 1, 2));
}
static ts_tensor *case_matmul_of_permute(gc_case *c) {
    ts_tensor *a = P("a", INIT_UNIFORM, 3, 2, 4), *b = P("b", INIT_UNIFORM, 3, 2);
    return ts_matmul(c->g, ts_permute(c->g, a, (int[]){1, 2, 0}) /* [2,4,3] */, b, false, false);
}
static ts_tensor *case_mul_of_expand(gc_case *c) {
    ts_tensor *x = P("x", INIT_UNIFORM, 3, 1), *y = P("y", INIT_UNIFORM, 3, 4);
    return ts_mul(c->g, ts_expand(c->g, x, DIMS(3, 4)), y);
}

/* ---------------------------------------------------------------- cases: movement */

static ts_tensor *case_cont(gc_case *c) { /* COPY to the same dtype, from a strided view */
    return ts_cont(c->g, ts_transpose(c->g, P("x", INIT_UNIFORM, 3, 4), 0, 1));
}
static ts_tensor *case_cast(gc_case *c) {
    return ts_cast(c->g, ts_cast(c->g, P("x", INIT_UNIFORM, 3, 4), TS_F32), TS_F64);
}
static ts_tensor *case_concat3(gc_case *c) {
    ts_tensor *xs[3];
    xs[0] = P("a", INIT_UNIFORM, 2, 1, 3);
    xs[1] = P("b", INIT_UNIFORM, 2, 2, 3);
    xs[2] = P("c", INIT_UNIFORM, 2, 3, 3);
    return ts_concat(c->g, xs, 3, 1);
}

/* ---------------------------------------------------------------- cases: elementwise */

static ts_tensor *case_add_bcast(gc_case *c) {
    ts_tensor *a = P("a", INIT_UNIFORM, 2, 3, 4), *b = P("b", INIT_UNIFORM, 3, 1);
    return ts_add(c->g, a, b);
}
static ts_tensor *case_sub_bcast(gc_case *c) {
    ts_tensor *a = P("a", INIT_UNIFORM, 2, 3, 4), *b = P("b", INIT_UNIFORM, 4);
    return ts_sub(c->g, a, b);
}
static ts_tensor *case_mul_bcast(gc_case *c) {
    ts_tensor *a = P("a", INIT_UNIFORM, 4), *b = P("b", INIT_UNIFORM, 2, 1, 4);
    return ts_mul(c->g, a, b);
}
static ts_tensor *case_div_bcast_den(gc_case *c) {
    ts_tensor *a = P("a", INIT_UNIFORM, 2, 3, 4), *b = P("b", INIT_POSITIVE, 3, 1);
    return ts_div(c->g, a, b);
}
static ts_tensor *case_div_bcast_num(gc_case *c) {
    ts_tensor *a = P("a", INIT_UNIFORM, 4), *b = P("b", INIT_POSITIVE, 2, 3, 4);
    return ts_div(c->g, a, b);
}

static ts_tensor *case_scale(gc_case *c) { return ts_scale(c->g, P("x", INIT_UNIFORM, 2, 3, 4), -1.5f); }
static ts_tensor *case_exp(gc_case *c) { return ts_exp(c->g, P("x", INIT_UNIFORM, 2, 3, 4)); }
static ts_tensor *case_log(gc_case *c) { return ts_log(c->g, P("x", INIT_POSITIVE, 2, 3, 4)); }
static ts_tensor *case_sqrt(gc_case *c) { return ts_sqrt(c->g, P("x", INIT_POSITIVE, 2, 3, 4)); }
static ts_tensor *case_sigmoid(gc_case *c) { return ts_sigmoid(c->g, P("x", INIT_UNIFORM, 2, 3, 4)); }
static ts_tensor *case_softplus(gc_case *c) { return ts_softplus(c->g, P("x", INIT_UNIFORM, 2, 3, 4)); }
static ts_tensor *case_silu(gc_case *c) { return ts_silu(c->g, P("x", INIT_UNIFORM, 2, 3, 4)); }
static ts_tensor *case_relu(gc_case *c) { return ts_relu(c->g, P("x", INIT_AWAY_FROM_0, 2, 3, 4)); }
static ts_tensor *case_clamp(gc_case *c) {
    return ts_clamp(c->g, P("x", INIT_CLAMP_SAFE, 2, 3, 4), CLAMP_LO, CLAMP_HI);
}
static ts_tensor *case_swiglu(gc_case *c) {
    return ts_swiglu(c->g, P("a", INIT_CLAMP_SAFE, 2, 3, 4), P("b", INIT_CLAMP_SAFE, 2, 3, 4), CLAMP_HI);
}
static ts_tensor *case_swiglu_unclamped(gc_case *c) {
    return ts_swiglu(c->g, P("a", INIT_UNIFORM, 2, 3, 4), P("b", INIT_UNIFORM, 2, 3, 4), 0);
}

/* ---------------------------------------------------------------- cases: reductions */

#define REDUCE_CASE(fn, kind, axis) \
    static ts_tensor *case_##fn##_axis##axis(gc_case *c) { return ts_##fn(c->g, P("x", kind, 2, 3, 4), axis, true); }
REDUCE_CASE(sum, INIT_UNIFORM, 0)
REDUCE_CASE(sum, INIT_UNIFORM, 1)
REDUCE_CASE(sum, INIT_UNIFORM, 2)
REDUCE_CASE(mean, INIT_UNIFORM, 0)
REDUCE_CASE(mean, INIT_UNIFORM, 1)
REDUCE_CASE(mean, INIT_UNIFORM, 2)
REDUCE_CASE(max, INIT_DISTINCT, 0)
REDUCE_CASE(max, INIT_DISTINCT, 1)
REDUCE_CASE(max, INIT_DISTINCT, 2)

static ts_tensor *case_mean_dropdim(gc_case *c) { /* keepdim = false adds a reshape */
    return ts_mean(c->g, P("x", INIT_UNIFORM, 2, 3, 4), -2, false);
}
static ts_tensor *case_sum_to(gc_case *c) {
    return ts_sum_to(c->g, P("x", INIT_UNIFORM, 2, 3, 4), DIMS(3, 1));
}

/* ---------------------------------------------------------------- cases: matmul */

enum { M_ = 3, K_ = 4, N_ = 2 };

static ts_tensor *matmul_case(gc_case *c, bool ta, bool tb) {
    ts_tensor *a = ta ? P("a", INIT_UNIFORM, K_, M_) : P("a", INIT_UNIFORM, M_, K_);
    ts_tensor *b = tb ? P("b", INIT_UNIFORM, N_, K_) : P("b", INIT_UNIFORM, K_, N_);
    return ts_matmul(c->g, a, b, ta, tb);
}
static ts_tensor *case_matmul_nn(gc_case *c) { return matmul_case(c, false, false); }
static ts_tensor *case_matmul_tn(gc_case *c) { return matmul_case(c, true, false); }
static ts_tensor *case_matmul_nt(gc_case *c) { return matmul_case(c, false, true); }
static ts_tensor *case_matmul_tt(gc_case *c) { return matmul_case(c, true, true); }
static ts_tensor *case_matmul_bcast_batch(gc_case *c) { /* [2,1,M,K] x [3,K,N] -> [2,3,M,N] */
    ts_tensor *a = P("a", INIT_UNIFORM, 2, 1, M_, K_), *b = P("b", INIT_UNIFORM, 3, K_, N_);
    return ts_matmul(c->g, a, b, false, false);
}
static ts_tensor *case_matmul_bcast_batch_t(gc_case *c) { /* rank-2 A^T against batched B^T */
    ts_tensor *a = P("a", INIT_UNIFORM, K_, M_), *b = P("b", INIT_UNIFORM, 2, N_, K_);
    return ts_matmul(c->g, a, b, true, true);
}

/* ---------------------------------------------------------------- cases: transformer ops */

static ts_tensor *case_softmax_last(gc_case *c) {
    return ts_softmax(c->g, P("x", INIT_UNIFORM, 2, 3, 4), -1, NULL);
}
static ts_tensor *case_softmax_last_mask(gc_case *c) { /* the mask varies along the softmax axis */
    ts_tensor *x = P("x", INIT_UNIFORM, 2, 3, 4), *mask = P("mask", INIT_UNIFORM, 1, 4);
    return ts_softmax(c->g, x, -1, mask);
}
static ts_tensor *case_softmax_first(gc_case *c) {
    return ts_softmax(c->g, P("x", INIT_UNIFORM, 3, 4), 0, NULL);
}
static ts_tensor *case_softmax_first_mask(gc_case *c) {
    ts_tensor *x = P("x", INIT_UNIFORM, 3, 4), *mask = P("mask", INIT_UNIFORM, 3, 1);
    return ts_softmax(c->g, x, 0, mask);
}

static ts_tensor *case_rms_norm_weighted(gc_case *c) {
    ts_tensor *x = P("x", INIT_UNIFORM, 2, 3, 8), *w = P("w", INIT_UNIFORM, 8);
    return ts_rms_norm(c->g, x, w, 1e-5f);
}
static ts_tensor *case_rms_norm_plain(gc_case *c) {
    return ts_rms_norm(c->g, P("x", INIT_UNIFORM, 2, 3, 8), NULL, 1e-5f);
}

/* n_rot = 4 of D = 8; angles [3, 2] broadcast over the leading dim of x [2, 3, 8] */
static ts_tensor *case_rope(gc_case *c) {
    ts_tensor *x = P("x", INIT_UNIFORM, 2, 3, 8), *angles = K("angles", INIT_UNIFORM, 3, 2);
    return ts_rope(c->g, x, angles, 4, false);
}
static ts_tensor *case_rope_inverse(gc_case *c) {
    ts_tensor *x = P("x", INIT_UNIFORM, 2, 3, 8), *angles = K("angles", INIT_UNIFORM, 3, 2);
    return ts_rope(c->g, x, angles, 4, true);
}

static ts_tensor *case_get_rows(gc_case *c) { /* repeated ids: their rows' gradients add up */
    static const int64_t ids[] = {1, 3, 1, 0, 3, 1};
    ts_tensor *table = P("table", INIT_UNIFORM, 5, 3), *id = IDS("ids", TS_I32, ids, 2, 3);
    return ts_get_rows(c->g, table, id);
}
static ts_tensor *case_get_rows_3d(gc_case *c) {
    static const int64_t ids[] = {2, 2, 0};
    ts_tensor *table = P("table", INIT_UNIFORM, 4, 2, 3), *id = IDS("ids", TS_I64, ids, 3);
    return ts_get_rows(c->g, table, id);
}

static ts_tensor *case_gather_mid(gc_case *c) { /* axis 1 of [2,4,3], repeated indices */
    static const int64_t idx[] = {0, 3, 1, 3, 3, 2, 1, 0, 0, /**/ 2, 2, 2, 0, 1, 3, 3, 0, 1};
    ts_tensor *x = P("x", INIT_UNIFORM, 2, 4, 3), *index = IDS("idx", TS_I64, idx, 2, 3, 3);
    return ts_gather(c->g, x, 1, index);
}
static ts_tensor *case_scatter_add_mid(gc_case *c) {
    static const int64_t idx[] = {1, 0, 3, 1, 2, 3, /**/ 0, 0, 2, 3, 0, 1};
    ts_tensor *base = P("base", INIT_UNIFORM, 2, 4, 3);
    ts_tensor *values = P("values", INIT_UNIFORM, 2, 2, 3);
    ts_tensor *index = IDS("idx", TS_I32, idx, 2, 2, 3);
    return ts_scatter_add(c->g, base, 1, index, values);
}

static ts_tensor *case_cross_entropy(gc_case *c) { /* one target ignored */
    static const int64_t targets[] = {4, 0, -1, 2, 2, 1};
    ts_tensor *logits = P("logits", INIT_UNIFORM, 2, 3, 5), *t = IDS("targets", TS_I32, targets, 2, 3);
    return ts_cross_entropy(c->g, logits, t);
}
static ts_tensor *case_cross_entropy_2d(gc_case *c) {
    static const int64_t targets[] = {3, 0, 4, 4};
    ts_tensor *logits = P("logits", INIT_UNIFORM, 4, 5), *t = IDS("targets", TS_I64, targets, 4);
    return ts_cross_entropy(c->g, logits, t);
}

static ts_tensor *case_topk_values(gc_case *c) {
    ts_tensor *values = NULL;
    ts_topk(c->g, P("x", INIT_DISTINCT, 3, 6), 3, &values, NULL);
    return values;
}

/* ---------------------------------------------------------------- cases: fused attention */

/* B = 2, T = S = 4, H = Hk = 2, D = 3, Dv = 4 */
static ts_tensor *case_attention_causal(gc_case *c) {
    ts_tensor *q = P("q", INIT_UNIFORM, 2, 4, 2, 3), *k = P("k", INIT_UNIFORM, 2, 4, 2, 3);
    ts_tensor *v = P("v", INIT_UNIFORM, 2, 4, 2, 4);
    ts_attention_params p = {.scale = 0.6f, .causal = true};
    return ts_attention(c->g, q, k, v, &p);
}

/* T = S = 6, each query sees itself and one key back */
static ts_tensor *case_attention_window(gc_case *c) {
    ts_tensor *q = P("q", INIT_UNIFORM, 1, 6, 2, 3), *k = P("k", INIT_UNIFORM, 1, 6, 2, 3);
    ts_tensor *v = P("v", INIT_UNIFORM, 1, 6, 2, 3);
    ts_attention_params p = {.scale = 0.8f, .causal = true, .window = 2};
    return ts_attention(c->g, q, k, v, &p);
}

/* a sink per head, summed over the batch */
static ts_tensor *case_attention_sink(gc_case *c) {
    ts_tensor *q = P("q", INIT_UNIFORM, 2, 4, 3, 3), *k = P("k", INIT_UNIFORM, 2, 4, 3, 3);
    ts_tensor *v = P("v", INIT_UNIFORM, 2, 4, 3, 2), *sink = P("sink", INIT_UNIFORM, 3);
    ts_attention_params p = {.scale = 0.7f, .causal = true, .sink = sink};
    return ts_attention(c->g, q, k, v, &p);
}

/* non-causal: the window bounds keys from below only */
static ts_tensor *case_attention_noncausal_window(gc_case *c) {
    ts_tensor *q = P("q", INIT_UNIFORM, 1, 5, 2, 3), *k = P("k", INIT_UNIFORM, 1, 5, 2, 3);
    ts_tensor *v = P("v", INIT_UNIFORM, 1, 5, 2, 3), *sink = P("sink", INIT_UNIFORM, 2);
    ts_attention_params p = {.scale = 0.7f, .window = 3, .sink = sink};
    return ts_attention(c->g, q, k, v, &p);
}

/* V4's shared K=V head: one tensor passed as k and v, Hk = 1; its two gradients add up */
static ts_tensor *case_attention_shared_kv(gc_case *c) {
    ts_tensor *q = P("q", INIT_UNIFORM, 1, 5, 4, 4), *kv = P("kv", INIT_UNIFORM, 1, 5, 1, 4);
    ts_tensor *sink = P("sink", INIT_UNIFORM, 4);
    ts_attention_params p = {.scale = 0.5f, .causal = true, .sink = sink};
    return ts_attention(c->g, q, kv, kv, &p);
}

/* shared K=V, window 2, sink and compressed-style extra entries: -1 slots, a query without
 * extras, an entry listed twice for one query (t = 2) */
static ts_tensor *case_attention_extras(gc_case *c) {
    static const int64_t idx[] = {-1, -1, -1, 0, -1, -1, 0, -1, 0, 1, 0, -1, 1, 0, 2, 2, 1, 0};
    ts_tensor *q = P("q", INIT_UNIFORM, 1, 6, 2, 4), *kv = P("kv", INIT_UNIFORM, 1, 6, 1, 4);
    ts_tensor *sink = P("sink", INIT_UNIFORM, 2), *extra = P("extra", INIT_UNIFORM, 1, 3, 1, 4);
    ts_tensor *extra_idx = IDS("extra_idx", TS_I32, idx, 1, 6, 3);
    ts_attention_params p = {.scale = 0.5f, .causal = true, .window = 2, .sink = sink, .extra = extra,
                             .extra_idx = extra_idx};
    return ts_attention(c->g, q, kv, kv, &p);
}

/* extras as key | value rows (D = 3, Dv = 2: 5 wide) with grouped heads (H = 4 over Hk = 2), a
 * window, a sink and a document mask: -1 slots, a query without extras, an entry listed twice
 * (t = 2, batch 0), the key part and the value part getting their gradients apart */
static ts_tensor *case_attention_split_extras(gc_case *c) {
    static const int64_t idx[] = {-1, -1, 0, -1, 1, 1, 2, 0, -1, 3, 0, 2, 1, -1, 3, -1, 2, 2, 0, 1};
    static const int64_t starts[] = {0, 0, 0, 1, 1, 0, 0, 2, 2, 2};
    ts_tensor *q = P("q", INIT_UNIFORM, 2, 5, 4, 3), *k = P("k", INIT_UNIFORM, 2, 5, 2, 3);
    ts_tensor *v = P("v", INIT_UNIFORM, 2, 5, 2, 2), *sink = P("sink", INIT_UNIFORM, 4);
    ts_tensor *extra = P("extra", INIT_UNIFORM, 2, 4, 2, 5);
    ts_attention_params p = {.scale = 0.6f, .causal = true, .window = 3, .sink = sink, .extra = extra,
                             .extra_idx = IDS("extra_idx", TS_I64, idx, 2, 5, 2),
                             .key_start = IDS("key_start", TS_I32, starts, 2, 5)};
    return ts_attention(c->g, q, k, v, &p);
}

/* grouped heads (H = 4 over Hk = 2) decoding 3 queries against 6 cached keys */
static ts_tensor *case_attention_gqa_decode(gc_case *c) {
    ts_tensor *q = P("q", INIT_UNIFORM, 2, 3, 4, 3), *k = P("k", INIT_UNIFORM, 2, 6, 2, 3);
    ts_tensor *v = P("v", INIT_UNIFORM, 2, 6, 2, 5);
    ts_attention_params p = {.scale = 0.6f, .causal = true};
    return ts_attention(c->g, q, k, v, &p);
}

/* a document mask (key_start = the data loader's doc_start): two packed documents in batch 0
 * (positions 0-2 and 3-5), three in batch 1 (0, 1-3, 4-5); with a sink */
static ts_tensor *case_attention_key_start(gc_case *c) {
    static const int64_t starts[] = {0, 0, 0, 3, 3, 3, 0, 1, 1, 1, 4, 4};
    ts_tensor *q = P("q", INIT_UNIFORM, 2, 6, 2, 3), *k = P("k", INIT_UNIFORM, 2, 6, 1, 3);
    ts_tensor *v = P("v", INIT_UNIFORM, 2, 6, 1, 4), *sink = P("sink", INIT_UNIFORM, 2);
    ts_attention_params p = {.scale = 0.7f, .causal = true, .sink = sink,
                             .key_start = IDS("key_start", TS_I32, starts, 2, 6)};
    return ts_attention(c->g, q, k, v, &p);
}

/* mHC's shape (n = 4, 20 iterations, eps 1e-6), and a larger eps with few iterations fed a
 * transposed view (so rows and columns of the logits trade places) */
static ts_tensor *case_sinkhorn(gc_case *c) { return ts_sinkhorn(c->g, P("x", INIT_UNIFORM, 3, 4, 4), 20, 1e-6f); }
static ts_tensor *case_sinkhorn_transposed(gc_case *c) {
    return ts_sinkhorn(c->g, ts_transpose(c->g, P("x", INIT_UNIFORM, 2, 5, 5), 1, 2), 3, 0.05f);
}

/* ---------------------------------------------------------------- cases: mixture-of-experts matmul */

/* 4 tokens x 2 slots over 3 experts, x one row per token: token 1 names expert 2 twice (its
 * two products add up in dx), expert 1 serves one pair only */
static ts_tensor *case_matmul_id_token_rows(gc_case *c) {
    static const int64_t ids[] = {0, 2, 2, 2, 1, 0, 0, 2};
    ts_tensor *w = P("w", INIT_UNIFORM, 3, 5, 4), *x = P("x", INIT_UNIFORM, 4, 4);
    return ts_matmul_id(c->g, w, x, IDS("ids", TS_I32, ids, 4, 2));
}
/* a row per slot, i64 ids, expert 2 of 4 unused (its gradient must be exactly the zero the
 * finite differences see) */
static ts_tensor *case_matmul_id_slot_rows(gc_case *c) {
    static const int64_t ids[] = {3, 0, 0, 1, 3, 3};
    ts_tensor *w = P("w", INIT_UNIFORM, 4, 3, 5), *x = P("x", INIT_UNIFORM, 2, 3, 5);
    return ts_matmul_id(c->g, w, x, IDS("ids", TS_I64, ids, 2, 3));
}
/* the transposed form (ip[0] = 1: w [E, K, N]) that dx is built from, reached through ts_op_node */
static ts_tensor *case_matmul_id_transposed(gc_case *c) {
    static const int64_t ids[] = {1, 0, 1, 1, 0, 1};
    ts_tensor *src[3] = {P("w", INIT_UNIFORM, 2, 4, 3), P("x", INIT_UNIFORM, 3, 2, 4), NULL};
    src[2] = IDS("ids", TS_I32, ids, 3, 2);
    int32_t trans = 1;
    return ts_op_node(c->g, TS_OP_MATMUL_ID, src, 3, &trans, 1, NULL, 0);
}
/* routed experts as the MoE layer runs them: sum_k gate[t, k] * W2_e silu(W1_e x_t) */
static ts_tensor *case_matmul_id_experts(gc_case *c) {
    static const int64_t ids[] = {0, 1, 2, 0, 1, 1};
    ts_graph *g = c->g;
    ts_tensor *x = P("x", INIT_UNIFORM, 3, 4), *id = IDS("ids", TS_I32, ids, 3, 2);
    ts_tensor *h = ts_silu(g, ts_matmul_id(g, P("w1", INIT_UNIFORM, 3, 5, 4), x, id)); /* [3, 2, 5] */
    ts_tensor *y = ts_matmul_id(g, P("w2", INIT_UNIFORM, 3, 4, 5), h, id);              /* [3, 2, 4] */
    return ts_sum(g, ts_mul(g, y, P("gates", INIT_UNIFORM, 3, 2, 1)), 1, false);          /* [3, 4] */
}

/* ---------------------------------------------------------------- cases: composites */

static ts_tensor *case_used_twice(gc_case *c) { /* x * x + x: three uses accumulate */
    ts_tensor *x = P("x", INIT_UNIFORM, 2, 3);
    return ts_add(c->g, ts_mul(c->g, x, x), x);
}

/* logits = silu(x W1 + b1) W2 + b2, loss = cross_entropy(logits, targets) */
static ts_tensor *case_mlp(gc_case *c) {
    static const int64_t targets[] = {2, 0, 1, 2};
    ts_graph *g = c->g;
    ts_tensor *x = K("x", INIT_UNIFORM, 4, 5);
    ts_tensor *w1 = P("w1", INIT_UNIFORM, 5, 6), *b1 = P("b1", INIT_UNIFORM, 6);
    ts_tensor *w2 = P("w2", INIT_UNIFORM, 6, 3), *b2 = P("b2", INIT_UNIFORM, 3);
    ts_tensor *t = IDS("targets", TS_I32, targets, 4);
    ts_tensor *h = ts_silu(g, ts_add(g, ts_matmul(g, x, w1, false, false), b1));
    ts_tensor *logits = ts_add(g, ts_matmul(g, h, w2, false, false), b2);
    return ts_cross_entropy(g, logits, t);
}

/* one attention head: softmax(rms_norm(q) k^T / sqrt(d) + causal mask) v */
static ts_tensor *case_attention(gc_case *c) {
    ts_graph *g = c->g;
    ts_tensor *q = P("q", INIT_UNIFORM, 2, 4, 8), *k = P("k", INIT_UNIFORM, 2, 4, 8);
    ts_tensor *v = P("v", INIT_UNIFORM, 2, 4, 8);
    ts_tensor *mask = K("mask", INIT_UNIFORM, 4, 4);
    gc_leaf *m = &c->leaves[c->n_leaves - 1];
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < 4; j++) m->values[i * 4 + j] = j <= i ? 0.0 : -1e9;
    ts_tensor *scores = ts_scale(g, ts_matmul(g, ts_rms_norm(g, q, NULL, 1e-6f), k, false, true), 1.0f / sqrtf(8.0f));
    return ts_matmul(g, ts_softmax(g, scores, -1, mask), v, false, false);
}

#define CASE(label, fn) {.name = label, .build = fn}
#define LOSS_CASE(label, fn) {.name = label, .build = fn, .out_is_loss = true}

static const gc_spec cases[] = {
    CASE("reshape [2,3,4] -> [4,6]", case_reshape),
    CASE("permute [2,3,4] by (2,0,1)", case_permute),
    CASE("slice axis 1 [1,3) of [2,5,3]", case_slice_middle),
    CASE("slice axis 2 [2,3) of [2,3,3]", case_slice_end),
    CASE("expand [3,1] -> [2,3,4]", case_expand),
    CASE("exp(transpose x)", case_exp_of_transpose),
    CASE("transpose(a) * b", case_mul_transposed),
    CASE("sigmoid(slice x)", case_sigmoid_of_slice),
    CASE("matmul(permute a, b)", case_matmul_of_permute),
    CASE("expand(x) * y", case_mul_of_expand),
    CASE("cont(transpose x) (copy)", case_cont),
    {.name = "cast f64 -> f32 -> f64", .build = case_cast, .step = CAST_STEP, .tol = CAST_TOL},
    CASE("concat of 3 on axis 1", case_concat3),
    CASE("add [2,3,4] + [3,1]", case_add_bcast),
    CASE("sub [2,3,4] - [4]", case_sub_bcast),
    CASE("mul [4] * [2,1,4]", case_mul_bcast),
    CASE("div [2,3,4] / [3,1]", case_div_bcast_den),
    CASE("div [4] / [2,3,4]", case_div_bcast_num),
    CASE("scale by -1.5", case_scale),
    CASE("exp", case_exp),
    CASE("log", case_log),
    CASE("sqrt", case_sqrt),
    CASE("sigmoid", case_sigmoid),
    CASE("softplus", case_softplus),
    CASE("silu", case_silu),
    CASE("relu", case_relu),
    CASE("clamp [-0.5, 0.5]", case_clamp),
    CASE("swiglu, limit 0.5", case_swiglu),
    CASE("swiglu, unclamped", case_swiglu_unclamped),
    CASE("sum axis 0", case_sum_axis0),
    CASE("sum axis 1", case_sum_axis1),
    CASE("sum axis 2", case_sum_axis2),
    CASE("mean axis 0", case_mean_axis0),
    CASE("mean axis 1", case_mean_axis1),
    CASE("mean axis 2", case_mean_axis2),
    CASE("max axis 0", case_max_axis0),
    CASE("max axis 1", case_max_axis1),
    CASE("max axis 2", case_max_axis2),
    CASE("mean axis -2 without keepdim", case_mean_dropdim),
    CASE("sum_to [2,3,4] -> [3,1]", case_sum_to),
    CASE("matmul a b", case_matmul_nn),
    CASE("matmul a^T b", case_matmul_tn),
    CASE("matmul a b^T", case_matmul_nt),
    CASE("matmul a^T b^T", case_matmul_tt),
    CASE("matmul [2,1,M,K] x [3,K,N]", case_matmul_bcast_batch),
    CASE("matmul [K,M]^T x [2,N,K]^T", case_matmul_bcast_batch_t),
    CASE("softmax axis -1", case_softmax_last),
    CASE("softmax axis -1 + mask [1,4]", case_softmax_last_mask),
    CASE("softmax axis 0", case_softmax_first),
    CASE("softmax axis 0 + mask [3,1]", case_softmax_first_mask),
    CASE("rms_norm weighted", case_rms_norm_weighted),
    CASE("rms_norm unweighted", case_rms_norm_plain),
    CASE("rope n_rot 4 of 8", case_rope),
    CASE("rope n_rot 4 of 8 inverse", case_rope_inverse),
    CASE("get_rows repeated ids (i32)", case_get_rows),
    CASE("get_rows 3-d table (i64)", case_get_rows_3d),
    CASE("gather axis 1", case_gather_mid),
    CASE("scatter_add axis 1", case_scatter_add_mid),
    LOSS_CASE("cross_entropy with ignored target", case_cross_entropy),
    LOSS_CASE("cross_entropy 2-d (i64 targets)", case_cross_entropy_2d),
    CASE("topk values (k=3 of 6)", case_topk_values),
    CASE("attention causal", case_attention_causal),
    CASE("attention causal window 2", case_attention_window),
    CASE("attention causal + sink", case_attention_sink),
    CASE("attention non-causal window 3 + sink", case_attention_noncausal_window),
    CASE("attention shared K=V (Hk=1) + sink", case_attention_shared_kv),
    CASE("attention shared K=V + extras, -1 slots", case_attention_extras),
    CASE("attention key|value extras + GQA + docs", case_attention_split_extras),
    CASE("attention GQA H=4 Hk=2 decode T<S", case_attention_gqa_decode),
    CASE("attention doc mask (key_start) + sink", case_attention_key_start),
    CASE("sinkhorn [3,4,4] 20 iterations", case_sinkhorn),
    CASE("sinkhorn of transpose, 3 iterations, eps 0.05", case_sinkhorn_transposed),
    CASE("matmul_id x [T,K], repeated ids (i32)", case_matmul_id_token_rows),
    CASE("matmul_id x [T,Kk,K], unused expert (i64)", case_matmul_id_slot_rows),
    CASE("matmul_id w transposed (ip[0] = 1)", case_matmul_id_transposed),
    CASE("matmul_id routed experts + gates", case_matmul_id_experts),
    CASE("x*x + x (accumulation)", case_used_twice),
    LOSS_CASE("2-layer MLP + cross_entropy", case_mlp),
    CASE("attention head with causal mask", case_attention),
};

/* ---------------------------------------------------------------- errors and bookkeeping */

static bool has(const char *haystack, const char *needle) { return strstr(haystack, needle) != NULL; }

static void test_errors(void) {
    ts_graph *g = ts_graph_new();
    ts_tensor *x = ts_set_param(ts_new_tensor_1d(g, TS_F64, 3, "x"));
    CHECK(ts_graph_backward(g, x) == TS_ERR_SHAPE, "non-scalar loss: %s", ts_graph_error(g));
    CHECK(has(ts_graph_error(g), "not a scalar") && has(ts_graph_error(g), "'x' f64[3]"), "message: %s",
          ts_graph_error(g));
    ts_graph_free(g);

    g = ts_graph_new();
    ts_tensor *k = ts_new_tensor_1d(g, TS_F64, 3, "k"); /* not a parameter */
    ts_tensor *l = ts_set_name(ts_sum(g, k, 0, true), "l");
    CHECK(ts_graph_backward(g, l) == TS_ERR_INVALID_ARG, "loss without parameters: %s", ts_graph_error(g));
    CHECK(has(ts_graph_error(g), "does not depend on any parameter"), "message: %s", ts_graph_error(g));
    ts_graph_free(g);

    g = ts_graph_new();
    x = ts_set_param(ts_new_tensor_1d(g, TS_F64, 3, "x"));
    l = ts_sum(g, x, 0, true);
    CHECK_OK(ts_graph_backward(g, l), g);
    CHECK(ts_graph_backward(g, l) == TS_ERR_STATE, "second backward: %s", ts_graph_error(g));
    CHECK(has(ts_graph_error(g), "once"), "message: %s", ts_graph_error(g));
    ts_graph_free(g);

    g = ts_graph_new();
    CHECK(ts_graph_backward(g, NULL) == TS_ERR_INVALID_ARG, "NULL loss: %s", ts_graph_error(g));
    CHECK(ts_graph_backward(NULL, NULL) == TS_ERR_INVALID_ARG, "NULL graph");
    ts_graph_free(g);

    /* an earlier construction error is returned, not overwritten */
    g = ts_graph_new();
    x = ts_set_param(ts_new_tensor_1d(g, TS_F64, 3, "x"));
    ts_add(g, x, ts_new_tensor_1d(g, TS_F64, 4, "y"));
    CHECK(ts_graph_backward(g, ts_sum(g, x, 0, true)) == TS_ERR_SHAPE, "earlier error kept: %s", ts_graph_error(g));
    CHECK(has(ts_graph_error(g), "add"), "message: %s", ts_graph_error(g));
    ts_graph_free(g);

    /* rope angles that depend on a parameter: refused rather than silently dropped */
    g = ts_graph_new();
    x = ts_set_param(ts_new_tensor_2d(g, TS_F64, 3, 4, "x"));
    ts_tensor *angles = ts_set_param(ts_new_tensor_2d(g, TS_F64, 3, 2, "angles"));
    l = ts_sum(g, ts_reshape(g, ts_rope(g, x, angles, 4, false), 1, (int64_t[]){12}), 0, true);
    CHECK(ts_graph_backward(g, l) == TS_ERR_UNSUPPORTED, "rope angles: %s", ts_graph_error(g));
    CHECK(has(ts_graph_error(g), "angles"), "message: %s", ts_graph_error(g));
    ts_graph_free(g);

    /* second derivatives: a backward helper op on a parameter */
    g = ts_graph_new();
    x = ts_set_param(ts_new_tensor_1d(g, TS_F64, 3, "x"));
    ts_tensor *dy = ts_new_tensor_1d(g, TS_F64, 3, "dy");
    ts_tensor *relu_back = ts_op_node(g, TS_OP_RELU_BACK, (ts_tensor *[]){x, dy}, 2, NULL, 0, NULL, 0);
    CHECK(ts_graph_backward(g, ts_sum(g, relu_back, 0, true)) == TS_ERR_UNSUPPORTED, "relu_back: %s",
          ts_graph_error(g));
    CHECK(has(ts_graph_error(g), "relu_back"), "message: %s", ts_graph_error(g));
    ts_graph_free(g);
}

static void test_bookkeeping(void) {
    ts_graph *g = ts_graph_new();
    ts_tensor *a = ts_set_param(ts_new_tensor_1d(g, TS_F64, 3, "a"));
    ts_tensor *b = ts_set_param(ts_new_tensor_1d(g, TS_F64, 3, "b"));
    ts_tensor *unused = ts_set_param(ts_new_tensor_1d(g, TS_F64, 3, "unused"));
    ts_tensor *k = ts_new_tensor_1d(g, TS_F64, 3, "k");
    ts_tensor *s = ts_add(g, a, b);
    ts_tensor *l = ts_sum(g, ts_mul(g, s, k), 0, true);
    int n_forward = ts_graph_n_nodes(g);
    CHECK_OK(ts_graph_backward(g, l), g);
    CHECK(ts_grad(unused) == NULL, "a parameter that does not reach the loss has no gradient");
    CHECK(ts_grad(k) == NULL, "a constant has no gradient");
    CHECK(ts_grad(s) != NULL, "intermediates keep their gradient");
    CHECK(ts_grad(a) && ts_grad(b) && ts_grad(a) != ts_grad(b), "a + b: each parameter gets its own node");
    CHECK(ts_grad(a) && strcmp(ts_grad(a)->name, "grad:a") == 0, "name %s", ts_grad(a) ? ts_grad(a)->name : "-");
    CHECK(ts_grad(b) && strcmp(ts_grad(b)->name, "grad:b") == 0, "name %s", ts_grad(b) ? ts_grad(b)->name : "-");
    CHECK(ts_grad(NULL) == NULL, "ts_grad(NULL)");
    bool forward_clean = true, backward_marked = true;
    for (int i = 0; i < ts_graph_n_nodes(g); i++) {
        uint32_t f = ts_graph_node(g, i)->flags;
        if (i < n_forward && (f & TS_FLAG_GRAD)) forward_clean = false;
        if (i >= n_forward && !(f & TS_FLAG_GRAD)) backward_marked = false;
    }
    CHECK(forward_clean && backward_marked, "only nodes built by backward are flagged GRAD");
    ts_graph_free(g);

    /* mixed-dtype matmul (f32 x f64 -> f64): each gradient comes back in its source's dtype */
    g = ts_graph_new();
    ts_tensor *a32 = ts_set_param(ts_new_tensor_2d(g, TS_F32, 2, 3, "a32"));
    ts_tensor *b64 = ts_set_param(ts_new_tensor_2d(g, TS_F64, 3, 2, "b64"));
    l = ts_sum(g, ts_reshape(g, ts_matmul(g, a32, b64, false, false), 1, (int64_t[]){4}), 0, true);
    CHECK_OK(ts_graph_backward(g, l), g);
    CHECK(ts_grad(a32) && ts_grad(a32)->dtype == TS_F32, "f32 operand of a mixed matmul gets an f32 gradient");
    CHECK(ts_grad(b64) && ts_grad(b64)->dtype == TS_F64, "f64 operand of a mixed matmul gets an f64 gradient");
    ts_graph_free(g);

    /* a parameter used as the loss itself: the gradient is the seed, 1 */
    g = ts_graph_new();
    ts_tensor *p = ts_set_param(ts_new_tensor_1d(g, TS_F64, 1, "p"));
    CHECK_OK(ts_graph_backward(g, p), g);
    CHECK(ts_grad(p) && ts_grad(p)->op == TS_OP_FILL && ts_grad(p)->fp[0] == 1.0f, "d p / d p = 1");
    ts_graph_free(g);
}

int main(void) {
    test_errors();
    test_bookkeeping();

    ts_backend *be = NULL;
    ts_status s = ts_backend_cpu_ref_new(2, &be);
    CHECK(s == TS_OK, "reference CPU backend: %s", ts_status_name(s));
    if (be) {
        printf("gradient checks (central differences, h = %g, f64, reference CPU backend):\n", STEP);
        for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) run_case(be, &cases[i]);
        ts_backend_free(be);
    }
    return check_summary("gradcheck");
}
