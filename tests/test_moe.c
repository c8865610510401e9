/* test_moe.c - the DeepSeekMoE sub-layer builders of src/model/moe.c (spec §2.10, §3 items
 * 11-12, §5.2) and the sparse expert matmul they run on (ts_matmul_id), in f64 on the reference
 * CPU backend unless said otherwise.
 *
 * 1. Forward: the graph's scores, indices, gates and output against an independent C
 *    implementation written from the spec (double loops: per token top-K of s + b, gates
 *    normalised over the selected s and scaled, per-expert clamped SwiGLU, shared expert), for
 *    learned routing (with and without a selection-changing bias, and with a constant bias that
 *    must change nothing) and hash routing, in both formulations (sparse dispatch, the default,
 *    and the dense reference). Tolerance 1e-12 absolute. Also once in f32 (1e-5).
 * 2. Gradients: central finite differences (h = 1e-6, relative tolerance 1e-6 against
 *    max(|analytic|, |numeric|, 1e-3), as in test_gradcheck.c) w.r.t. x, w_gate, w1, w2, w3 and
 *    the shared weights, learned and hash routing, sparse; inputs are redrawn until every
 *    selection has a margin and every pre-activation sits away from the clamp bounds, with some
 *    beyond them. bias and tid2eid get no gradient.
 * 3. Sparse against dense: output and every gradient agree to 1e-12 (relative to the largest
 *    element) in f64, learned and hash routing; with an expert no token selects, its stacked
 *    w1 / w2 / w3 gradient is exactly zero in both. The optimized "cpu" backend's f32 sparse
 *    graph (whose matmul_id nodes must take the grouped-GEMM path) agrees with the f64 dense
 *    reference to 1e-5.
 * 4. Clamp: rows of w1 / w3 whose pre-activations lie beyond the limit get exactly zero gradient.
 * 5. Host helpers (expert load), config mapping, builder errors and ts_matmul_id's errors (shapes
 *    and dtypes at construction, an expert id out of range at compute on both backends); bf16
 *    expert weights with f32 activations on the optimized backend against the reference. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "backends/cpu/fast_kernels.h"
#include "check.h"
#include "model/moe.h"
#include "tessera/backend.h"
#include "tessera/graph.h"
#include "tessera/model.h"

#define T_ 5
#define D_ 6
#define E_ 4
#define K_ 2
#define I_ 3
#define IS_ 3
#define V_ 7
#define LIMIT 1.25
#define ROUTE_SCALE 1.5

#define FWD_TOL 1e-12
#define STEP 1e-6
#define TOL 1e-6
#define FLOOR 1e-3
#define MARGIN 1e-3 /* selection and clamp margins required of gradient-check inputs */

static ts_backend *be;               /* what build() allocates on: the reference backend, except in
                                        test_fast_f32 */
static ts_dtype leaf_dtype = TS_F64; /* float leaves of build(); f64 except in the f32 tests */
static bool dense_moe;               /* build() the dense reference formulation instead of sparse */

/* ---------------------------------------------------------------- data */

typedef struct {
    double x[T_ * D_], wg[E_ * D_], bias[E_];
    double w1[E_ * I_ * D_], w3[E_ * I_ * D_], w2[E_ * D_ * I_];
    double sw1[IS_ * D_], sw3[IS_ * D_], sw2[D_ * IS_];
    int32_t tid2eid[V_ * K_], tok[T_];
} moe_data;

static double unif(ts_rng *r, double lo, double hi) { return lo + (hi - lo) * ts_rng_uniform(r); }
static void fill_u(ts_rng *r, double *v, int n, double lo, double hi) {
    for (int i = 0; i < n; i++) v[i] = unif(r, lo, hi);
}

static void draw_data(ts_rng *r, moe_data *m) {
    fill_u(r, m->x, T_ * D_, -1, 1);
    fill_u(r, m->wg, E_ * D_, -1, 1);
    fill_u(r, m->bias, E_, -0.05, 0.05);
    fill_u(r, m->w1, E_ * I_ * D_, -1, 1);
    fill_u(r, m->w3, E_ * I_ * D_, -1, 1);
    fill_u(r, m->w2, E_ * D_ * I_, -1, 1);
    fill_u(r, m->sw1, IS_ * D_, -1, 1);
    fill_u(r, m->sw3, IS_ * D_, -1, 1);
    fill_u(r, m->sw2, D_ * IS_, -1, 1);
    for (int v = 0; v < V_; v++) { /* K distinct experts per vocabulary id */
        int a = (int)(ts_rng_next(r) % E_), b = (int)(ts_rng_next(r) % (E_ - 1));
        if (b >= a) b++;
        m->tid2eid[v * K_] = a;
        m->tid2eid[v * K_ + 1] = b;
    }
    for (int t = 0; t < T_; t++) m->tok[t] = (int32_t)(ts_rng_next(r) % V_);
}

/* ---------------------------------------------------------------- reference (spec §2.10) */

typedef struct {
    double s[T_ * E_], gates[T_ * K_], v[T_ * D_];
    int idx[T_ * K_];
    double sel_margin;   /* min over tokens of (K-th - (K+1)-th) of s + b (learned routing) */
    double clamp_margin; /* min distance of a pre-activation to a clamp bound */
    int n_a_above, n_b_outside;
} moe_ref;

static double silu(double a) { return a / (1 + exp(-a)); }

static void note_clamp(moe_ref *r, double a, double b) {
    r->clamp_margin = fmin(r->clamp_margin, fmin(fabs(a - LIMIT), fmin(fabs(b - LIMIT), fabs(b + LIMIT))));
    r->n_a_above += a > LIMIT;
    r->n_b_outside += fabs(b) > LIMIT;
}

/* out[d] = Σ_i w2[d, i] · silu(min(x·w1[i], L)) · clamp(x·w3[i], -L, L) */
static void ref_expert(moe_ref *r, const double *x, const double *w1, const double *w3, const double *w2, int n_i,
                       double *out) {
    double h[IS_ > I_ ? IS_ : I_];
    for (int i = 0; i < n_i; i++) {
        double a = 0, b = 0;
        for (int k = 0; k < D_; k++) {
            a += x[k] * w1[i * D_ + k];
            b += x[k] * w3[i * D_ + k];
        }
        note_clamp(r, a, b);
        double ac = a < LIMIT ? a : LIMIT, bc = b < -LIMIT ? -LIMIT : b > LIMIT ? LIMIT : b;
        h[i] = silu(ac) * bc;
    }
    for (int k = 0; k < D_; k++) {
        double o = 0;
        for (int i = 0; i < n_i; i++) o += h[i] * w2[k * n_i + i];
        out[k] = o;
    }
}

static void reference(const moe_data *m, bool hash, const double *bias, moe_ref *r) {
    memset(r, 0, sizeof *r);
    r->sel_margin = INFINITY;
    r->clamp_margin = INFINITY;
    for (int t = 0; t < T_; t++) {
        const double *x = m->x + t * D_;
        double sel[E_];
        for (int e = 0; e < E_; e++) {
            double z = 0;
            for (int k = 0; k < D_; k++) z += x[k] * m->wg[e * D_ + k];
            r->s[t * E_ + e] = sqrt(log1p(exp(z)));
            sel[e] = r->s[t * E_ + e] + (bias ? bias[e] : 0);
        }
        int *idx = r->idx + t * K_;
        if (hash) {
            for (int k = 0; k < K_; k++) idx[k] = m->tid2eid[m->tok[t] * K_ + k];
        } else { /* selection sort, descending, ties to the lower index */
            bool taken[E_] = {false};
            for (int k = 0; k < K_; k++) {
                int best = -1;
                for (int e = 0; e < E_; e++)
                    if (!taken[e] && (best < 0 || sel[e] > sel[best])) best = e;
                taken[best] = true;
                idx[k] = best;
            }
            double next = -INFINITY;
            for (int e = 0; e < E_; e++)
                if (!taken[e] && sel[e] > next) next = sel[e];
            r->sel_margin = fmin(r->sel_margin, sel[idx[K_ - 1]] - next);
        }
        double sum = 0;
        for (int k = 0; k < K_; k++) sum += r->s[t * E_ + idx[k]];
        for (int k = 0; k < K_; k++) r->gates[t * K_ + k] = ROUTE_SCALE * r->s[t * E_ + idx[k]] / sum;

        double *v = r->v + t * D_, out[D_];
        for (int k = 0; k < D_; k++) v[k] = 0;
        for (int k = 0; k < K_; k++) {
            int e = idx[k];
            ref_expert(r, x, m->w1 + e * I_ * D_, m->w3 + e * I_ * D_, m->w2 + e * D_ * I_, I_, out);
            for (int j = 0; j < D_; j++) v[j] += r->gates[t * K_ + k] * out[j];
        }
        ref_expert(r, x, m->sw1, m->sw3, m->sw2, IS_, out);
        for (int j = 0; j < D_; j++) v[j] += out[j];
    }
    /* clamp statistics over every expert (the graph evaluates all of them densely) */
    moe_ref tmp = {.clamp_margin = INFINITY};
    double out[D_];
    for (int t = 0; t < T_; t++)
        for (int e = 0; e < E_; e++)
            ref_expert(&tmp, m->x + t * D_, m->w1 + e * I_ * D_, m->w3 + e * I_ * D_, m->w2 + e * D_ * I_, I_, out);
    r->clamp_margin = fmin(r->clamp_margin, tmp.clamp_margin);
}

/* ---------------------------------------------------------------- graph */

enum { L_X, L_WG, L_W1, L_W2, L_W3, L_SW1, L_SW2, L_SW3, L_BIAS, L_TID, L_TOK, L_COUNT };
static const char *leaf_names[L_COUNT] = {"x", "w_gate", "w1", "w2", "w3", "shared_w1", "shared_w2", "shared_w3",
                                          "bias", "tid2eid", "token_ids"};

typedef struct {
    ts_graph *g;
    ts_tensor *leaf[L_COUNT];
    ts_tensor *loss;
    ts_moe_nodes n;
    double lw[T_ * D_]; /* loss weights: loss = Σ v ⊙ lw */
} moe_graph;

static double *leaf_data(moe_data *m, int i) {
    switch (i) {
    case L_X: return m->x;
    case L_WG: return m->wg;
    case L_W1: return m->w1;
    case L_W2: return m->w2;
    case L_W3: return m->w3;
    case L_SW1: return m->sw1;
    case L_SW2: return m->sw2;
    case L_SW3: return m->sw3;
    case L_BIAS: return m->bias;
    default: return NULL;
    }
}

/* Builds the sub-layer; params: mark the float leaves (except bias) trainable and add
 * loss = Σ v ⊙ lw with backward. */
static bool build(moe_graph *mg, bool hash, bool with_bias, bool params, ts_rng *rng) {
    memset(mg, 0, sizeof *mg);
    ts_graph *g = mg->g = ts_graph_new();
    mg->leaf[L_X] = ts_new_tensor_2d(g, leaf_dtype, T_, D_, "x");
    mg->leaf[L_WG] = ts_new_tensor_2d(g, leaf_dtype, E_, D_, "w_gate");
    mg->leaf[L_W1] = ts_new_tensor_3d(g, leaf_dtype, E_, I_, D_, "w1");
    mg->leaf[L_W2] = ts_new_tensor_3d(g, leaf_dtype, E_, D_, I_, "w2");
    mg->leaf[L_W3] = ts_new_tensor_3d(g, leaf_dtype, E_, I_, D_, "w3");
    mg->leaf[L_SW1] = ts_new_tensor_2d(g, leaf_dtype, IS_, D_, "shared_w1");
    mg->leaf[L_SW2] = ts_new_tensor_2d(g, leaf_dtype, D_, IS_, "shared_w2");
    mg->leaf[L_SW3] = ts_new_tensor_2d(g, leaf_dtype, IS_, D_, "shared_w3");
    mg->leaf[L_BIAS] = ts_new_tensor_1d(g, leaf_dtype, E_, "bias");
    mg->leaf[L_TID] = ts_new_tensor_2d(g, TS_I32, V_, K_, "tid2eid");
    mg->leaf[L_TOK] = ts_new_tensor_1d(g, TS_I32, T_, "token_ids");
    if (params)
        for (int i = L_X; i <= L_SW3; i++) ts_set_param(mg->leaf[i]);
    ts_moe_weights w = {.w_gate = mg->leaf[L_WG], .bias = with_bias ? mg->leaf[L_BIAS] : NULL,
                        .tid2eid = mg->leaf[L_TID], .w1 = mg->leaf[L_W1], .w2 = mg->leaf[L_W2],
                        .w3 = mg->leaf[L_W3], .shared_w1 = mg->leaf[L_SW1], .shared_w2 = mg->leaf[L_SW2],
                        .shared_w3 = mg->leaf[L_SW3]};
    ts_moe_params p = {.top_k = K_, .route_scale = (float)ROUTE_SCALE, .swiglu_limit = (float)LIMIT,
                       .hash_routing = hash, .dense = dense_moe};
    ts_tensor *v = ts_moe_forward(g, mg->leaf[L_X], &w, &p, mg->leaf[L_TOK], &mg->n);
    CHECK(v != NULL, "build failed: %s", ts_graph_error(g));
    if (!v) return false;
    ts_set_output(v);
    ts_set_output(mg->n.scores);
    ts_set_output(mg->n.indices);
    ts_set_output(mg->n.gates);
    ts_set_output(mg->n.gate_matrix);
    if (params) {
        ts_tensor *lw = ts_new_tensor_2d(g, leaf_dtype, T_, D_, "loss_w");
        fill_u(rng, mg->lw, T_ * D_, -1, 1);
        int64_t n = T_ * D_;
        mg->loss = ts_sum(g, ts_reshape(g, ts_mul(g, v, lw), 1, &n), 0, true);
        ts_set_output(mg->loss);
        CHECK_OK(ts_graph_backward(g, mg->loss), g);
        CHECK_OK(ts_graph_alloc(g, be, NULL, NULL), g);
        if (ts_graph_status(g) != TS_OK) return false;
        float lw32[T_ * D_];
        for (int i = 0; i < T_ * D_; i++) lw32[i] = (float)mg->lw[i];
        CHECK_OK(lw->dtype == TS_F64 ? ts_tensor_write(lw, mg->lw, sizeof mg->lw) : ts_tensor_write_f32(lw, lw32, T_ * D_), g);
    } else {
        CHECK_OK(ts_graph_alloc(g, be, NULL, NULL), g);
    }
    return ts_graph_status(g) == TS_OK;
}

static ts_status write_leaves(moe_graph *mg, moe_data *m) {
    ts_status s = TS_OK;
    for (int i = L_X; i <= L_BIAS && s == TS_OK; i++) {
        ts_tensor *t = mg->leaf[i];
        if (t->dtype == TS_F64) {
            s = ts_tensor_write(t, leaf_data(m, i), ts_nbytes(t));
        } else {
            float buf[E_ * I_ * D_];
            for (int64_t j = 0; j < ts_nelements(t); j++) buf[j] = (float)leaf_data(m, i)[j];
            s = ts_tensor_write_f32(t, buf, ts_nelements(t));
        }
    }
    if (s == TS_OK) s = ts_tensor_write(mg->leaf[L_TID], m->tid2eid, sizeof m->tid2eid);
    if (s == TS_OK) s = ts_tensor_write(mg->leaf[L_TOK], m->tok, sizeof m->tok);
    return s;
}

static double max_abs_diff(const double *a, const double *b, int n) {
    double worst = 0;
    for (int i = 0; i < n; i++) worst = fmax(worst, fabs(a[i] - b[i]));
    return isnan(worst) ? INFINITY : worst;
}

typedef struct {
    double s[T_ * E_], gates[T_ * K_], v[T_ * D_], G[T_ * E_];
    int32_t idx[T_ * K_];
    bool has_G; /* the dense reference exposes its gate matrix */
} moe_out;

static bool run_forward(moe_data *m, bool hash, const double *bias, moe_out *o) {
    moe_graph mg;
    bool ok = build(&mg, hash, bias != NULL, false, NULL);
    if (ok) {
        if (bias) memcpy(m->bias, bias, sizeof m->bias);
        CHECK_OK(write_leaves(&mg, m), mg.g);
        CHECK_OK(ts_graph_compute(mg.g), mg.g);
        ok = ts_graph_status(mg.g) == TS_OK;
        CHECK(mg.n.indices->dtype == TS_I32, "indices dtype %s", ts_dtype_name(mg.n.indices->dtype));
        if (ok) {
            CHECK_OK(ts_tensor_read(mg.n.out, o->v, sizeof o->v), mg.g);
            CHECK_OK(ts_tensor_read(mg.n.scores, o->s, sizeof o->s), mg.g);
            CHECK_OK(ts_tensor_read(mg.n.gates, o->gates, sizeof o->gates), mg.g);
            o->has_G = mg.n.gate_matrix != NULL;
            CHECK(o->has_G == dense_moe, "gate matrix %s in the %s formulation", o->has_G ? "present" : "missing",
                  dense_moe ? "dense" : "sparse");
            if (o->has_G) CHECK_OK(ts_tensor_read(mg.n.gate_matrix, o->G, sizeof o->G), mg.g);
            CHECK_OK(ts_tensor_read(mg.n.indices, o->idx, sizeof o->idx), mg.g);
            int64_t load[E_], want[E_] = {0};
            CHECK_OK(ts_moe_expert_load(mg.n.indices, E_, load), NULL);
            for (int i = 0; i < T_ * K_; i++) want[o->idx[i]]++;
            CHECK(memcmp(load, want, sizeof load) == 0, "expert load differs from a count of the indices");
        }
    }
    ts_graph_free(mg.g);
    return ok;
}

/* Compares a graph run with the reference; returns the largest error (output, gates, scores). */
static double compare(const char *name, const moe_out *o, const moe_ref *r) {
    bool same_idx = true;
    for (int i = 0; i < T_ * K_; i++) same_idx &= o->idx[i] == r->idx[i];
    CHECK(same_idx, "%s: graph selection differs from the reference", name);
    double ev = max_abs_diff(o->v, r->v, T_ * D_), eg = max_abs_diff(o->gates, r->gates, T_ * K_);
    double es = max_abs_diff(o->s, r->s, T_ * E_);
    /* the dense gate matrix holds each gate at its expert and zeros elsewhere */
    double G[T_ * E_] = {0};
    for (int t = 0; t < T_; t++)
        for (int k = 0; k < K_; k++) G[t * E_ + r->idx[t * K_ + k]] += r->gates[t * K_ + k];
    double eG = o->has_G ? max_abs_diff(o->G, G, T_ * E_) : 0;
    double worst = fmax(fmax(ev, eg), fmax(es, eG));
    CHECK(worst <= FWD_TOL, "%s: max abs err out %.2e gates %.2e scores %.2e gate matrix %.2e", name, ev, eg, es, eG);
    printf("  forward %-6s %-28s out %.1e gates %.1e scores %.1e G %.1e  %s\n", dense_moe ? "dense" : "sparse", name,
           ev, eg, es, eG, worst <= FWD_TOL && same_idx ? "ok" : "FAIL");
    return worst;
}

static bool same_sets(const int32_t *a, const int32_t *b) {
    for (int t = 0; t < T_; t++) {
        int32_t a0 = a[t * K_], a1 = a[t * K_ + 1], b0 = b[t * K_], b1 = b[t * K_ + 1];
        if (!((a0 == b0 && a1 == b1) || (a0 == b1 && a1 == b0))) return false;
    }
    return true;
}

static void test_forward(void) {
    ts_rng rng;
    ts_rng_seed(&rng, 12345);
    moe_data m;
    draw_data(&rng, &m);
    moe_ref r0, rb, rh;
    moe_out o0, ob, oc, oh;

    /* no bias */
    reference(&m, false, NULL, &r0);
    if (run_forward(&m, false, NULL, &o0)) compare("learned, no bias", &o0, &r0);

    /* a bias that changes the selection: lift the expert picked least often */
    int count[E_] = {0};
    for (int i = 0; i < T_ * K_; i++) count[r0.idx[i]]++;
    int rare = 0;
    for (int e = 1; e < E_; e++)
        if (count[e] < count[rare]) rare = e;
    double bias[E_];
    for (int e = 0; e < E_; e++) bias[e] = e == rare ? 0.6 : m.bias[e];
    reference(&m, false, bias, &rb);
    bool changed = !same_sets(r0.idx, rb.idx);
    CHECK(changed, "test bug: the bias does not change the reference selection");
    if (run_forward(&m, false, bias, &ob)) {
        compare("learned, selection bias", &ob, &rb);
        CHECK(!same_sets(o0.idx, ob.idx), "the bias did not change the graph's selection");
        /* gates are route_scale · s / Σ s over the selected set, with no bias anywhere */
        double worst = 0;
        for (int t = 0; t < T_; t++) {
            double sum = 0;
            for (int k = 0; k < K_; k++) sum += ob.s[t * E_ + ob.idx[t * K_ + k]];
            for (int k = 0; k < K_; k++)
                worst = fmax(worst, fabs(ob.gates[t * K_ + k] - ROUTE_SCALE * ob.s[t * E_ + ob.idx[t * K_ + k]] / sum));
        }
        CHECK(worst <= FWD_TOL, "biased gates are not normalised unbiased scores (err %.2e)", worst);
        /* and every token's gates sum to route_scale */
        for (int t = 0; t < T_; t++)
            CHECK(fabs(ob.gates[t * K_] + ob.gates[t * K_ + 1] - ROUTE_SCALE) <= 1e-14, "gates of token %d", t);
    }

    /* a constant bias shifts s + b uniformly: same selection, bit-identical gates and output */
    double cbias[E_];
    for (int e = 0; e < E_; e++) cbias[e] = 0.75;
    if (run_forward(&m, false, cbias, &oc)) {
        CHECK(memcmp(oc.idx, o0.idx, sizeof oc.idx) == 0, "constant bias changed the selection");
        CHECK(memcmp(oc.gates, o0.gates, sizeof oc.gates) == 0, "constant bias changed the gates");
        CHECK(memcmp(oc.v, o0.v, sizeof oc.v) == 0, "constant bias changed the output");
    }

    /* hash routing: indices from tid2eid, bias ignored */
    reference(&m, true, NULL, &rh);
    if (run_forward(&m, true, bias, &oh)) compare("hash", &oh, &rh);
    printf("  reference: %d a > limit, %d |b| > limit over the selected experts\n", rb.n_a_above, rb.n_b_outside);
}

/* The same sub-layer built in f32 (the dtype the spec keeps the router in): same selection as
 * the f64 reference, output within f32 rounding. */
static void test_forward_f32(void) {
    ts_rng rng;
    ts_rng_seed(&rng, 4242);
    moe_data m;
    moe_ref r;
    do { /* a selection margin far above f32 rounding */
        draw_data(&rng, &m);
        reference(&m, false, m.bias, &r);
    } while (r.sel_margin < 1e-3);
    leaf_dtype = TS_F32;
    moe_graph mg;
    if (build(&mg, false, true, false, NULL)) {
        CHECK_OK(write_leaves(&mg, &m), mg.g);
        CHECK_OK(ts_graph_compute(mg.g), mg.g);
        float v[T_ * D_];
        int32_t idx[T_ * K_];
        CHECK_OK(ts_tensor_read_f32(mg.n.out, v, T_ * D_), mg.g);
        CHECK_OK(ts_tensor_read(mg.n.indices, idx, sizeof idx), mg.g);
        double worst = 0;
        for (int i = 0; i < T_ * D_; i++) worst = fmax(worst, fabs((double)v[i] - r.v[i]));
        bool same = true;
        for (int i = 0; i < T_ * K_; i++) same &= idx[i] == r.idx[i];
        CHECK(same, "f32: selection differs from the f64 reference");
        CHECK(mg.n.out->dtype == TS_F32 && worst <= 1e-5, "f32: max abs err %.2e", worst);
        printf("  forward f32 learned+bias            out %.1e (vs f64 reference)  %s\n", worst,
               same && worst <= 1e-5 ? "ok" : "FAIL");
    }
    ts_graph_free(mg.g);
    leaf_dtype = TS_F64;
}

/* ---------------------------------------------------------------- gradients */

static void gradcheck(const char *name, bool hash, uint64_t seed) {
    ts_rng rng;
    ts_rng_seed(&rng, seed);
    moe_data m;
    moe_ref r;
    int tries = 0;
    do { /* inputs away from selection ties and clamp kinks, with clamped activations present */
        draw_data(&rng, &m);
        reference(&m, hash, m.bias, &r);
        tries++;
    } while (tries < 10000 &&
             (r.clamp_margin < MARGIN || (!hash && r.sel_margin < MARGIN) || r.n_a_above < 2 || r.n_b_outside < 2));
    CHECK(tries < 10000, "%s: test bug: no suitable inputs found", name);

    moe_graph mg;
    if (!build(&mg, hash, true, true, &rng)) {
        ts_graph_free(mg.g);
        return;
    }
    ts_graph *g = mg.g;
    CHECK_OK(write_leaves(&mg, &m), g);
    CHECK_OK(ts_graph_compute(g), g);
    CHECK(ts_grad(mg.leaf[L_BIAS]) == NULL, "%s: bias got a gradient", name);
    CHECK(ts_grad(mg.leaf[L_TID]) == NULL && ts_grad(mg.leaf[L_TOK]) == NULL, "%s: ids got a gradient", name);

    /* every analytic gradient is read before any perturbation (each later compute runs with
     * some element moved by h) */
    static double analytic_all[L_SW3 + 1][E_ * I_ * D_];
    for (int li = L_X; li <= L_SW3; li++) {
        ts_tensor *dp = ts_grad(mg.leaf[li]);
        CHECK(dp != NULL, "%s: %s has no gradient", name, leaf_names[li]);
        if (dp) CHECK_OK(ts_tensor_read(dp, analytic_all[li], ts_nbytes(dp)), g);
    }
    double worst_all = 0;
    int n_checked = 0;
    for (int li = L_X; li <= L_SW3; li++) {
        ts_tensor *p = mg.leaf[li];
        if (!ts_grad(p)) continue;
        int n = (int)ts_nelements(p);
        double *analytic = analytic_all[li], *val = leaf_data(&m, li), worst = 0;
        int n_bad = 0;
        for (int j = 0; j < n; j++) {
            double v0 = val[j], op[T_ * D_], om[T_ * D_];
            val[j] = v0 + STEP;
            ts_tensor_write(p, val, (size_t)n * sizeof(double));
            ts_graph_compute(g);
            ts_tensor_read(mg.n.out, op, sizeof op);
            val[j] = v0 - STEP;
            ts_tensor_write(p, val, (size_t)n * sizeof(double));
            ts_graph_compute(g);
            ts_tensor_read(mg.n.out, om, sizeof om);
            val[j] = v0;
            double numeric = 0;
            for (int i = 0; i < T_ * D_; i++) numeric += mg.lw[i] * (op[i] - om[i]);
            numeric /= 2 * STEP;
            double err = fabs(analytic[j] - numeric) / fmax(fmax(fabs(analytic[j]), fabs(numeric)), FLOOR);
            if (!(err <= TOL)) {
                if (n_bad++ < 3)
                    fprintf(stderr, "    %s: d/d%s[%d] analytic %.12g numeric %.12g (rel %.2e)\n", name,
                            leaf_names[li], j, analytic[j], numeric, err);
                err = isnan(err) ? INFINITY : err;
            }
            worst = fmax(worst, err);
        }
        CHECK_OK(ts_tensor_write(p, val, (size_t)n * sizeof(double)), g);
        CHECK(n_bad == 0, "%s: %d elements of d/d%s differ from finite differences", name, n_bad, leaf_names[li]);
        CHECK_OK(ts_graph_status(g), g);
        worst_all = fmax(worst_all, worst);
        n_checked += n;
    }
    char sel[32] = "n/a";
    if (!hash) snprintf(sel, sizeof sel, "%.1e", r.sel_margin);
    printf("  gradcheck %-12s %d elements (x, w_gate, w1, w2, w3, shared)  max rel err %.1e  "
           "(margins: select %s clamp %.1e; %d a > L, %d |b| > L)\n",
           name, n_checked, worst_all, sel, r.clamp_margin, r.n_a_above, r.n_b_outside);
    ts_graph_free(g);
}

/* ---------------------------------------------------------------- sparse against dense */

#define SPARSE_TOL_F64 1e-12 /* largest difference over the largest element, per tensor */
#define SPARSE_TOL_F32 1e-5

typedef struct {
    double v[T_ * D_];
    double grad[L_SW3 + 1][E_ * I_ * D_]; /* x, w_gate, w1, w2, w3, shared_w1, shared_w2, shared_w3 */
} moe_result;

static void read_doubles(const ts_tensor *t, double *dst) {
    int64_t n = ts_nelements(t);
    if (t->dtype == TS_F64) {
        CHECK_OK(ts_tensor_read(t, dst, (size_t)n * sizeof(double)), NULL);
        return;
    }
    float buf[E_ * I_ * D_];
    CHECK_OK(ts_tensor_read_f32(t, buf, n), NULL);
    for (int64_t i = 0; i < n; i++) dst[i] = buf[i];
}

/* The fast kernel really ran: every matmul_id / matmul_id_grad_w node of g takes its GEMM path. */
static int count_fast_moe_nodes(ts_graph *g, const char *name) {
    int n = 0;
    for (int i = 0; i < ts_graph_n_nodes(g); i++) {
        const ts_tensor *t = ts_graph_node(g, i);
        if (t->op != TS_OP_MATMUL_ID && t->op != TS_OP_MATMUL_ID_GRAD_W) continue;
        CHECK(ts_fast_moe_applies(t), "%s: %s node %d falls back to the reference kernel", name, ts_op_name(t->op), i);
        n++;
    }
    return n;
}

/* Output and every float leaf's gradient with the current backend, leaf dtype and formulation;
 * the loss weights come from one fixed seed, so runs are comparable. */
static bool run_grads(const char *name, moe_data *m, bool hash, moe_result *res) {
    ts_rng lw_rng;
    ts_rng_seed(&lw_rng, 99);
    moe_graph mg;
    bool ok = build(&mg, hash, true, true, &lw_rng);
    if (ok) {
        CHECK_OK(write_leaves(&mg, m), mg.g);
        CHECK_OK(ts_graph_compute(mg.g), mg.g);
        ok = ts_graph_status(mg.g) == TS_OK;
    }
    if (ok && leaf_dtype == TS_F32) CHECK(count_fast_moe_nodes(mg.g, name) == 3 + 6, "%s: expected 3 matmul_id "
                                          "forward and 6 backward nodes", name);
    for (int li = L_X; ok && li <= L_SW3; li++) {
        ts_tensor *d = ts_grad(mg.leaf[li]);
        CHECK(d != NULL, "%s: %s has no gradient", name, leaf_names[li]);
        if (d) read_doubles(d, res->grad[li]);
        ok = d != NULL;
    }
    if (ok) read_doubles(mg.n.out, res->v);
    ts_graph_free(mg.g);
    return ok;
}

/* max |a - b| / max |b| */
static double rel_diff(const double *a, const double *b, int64_t n) {
    double scale = 0;
    for (int64_t i = 0; i < n; i++) scale = fmax(scale, fabs(b[i]));
    return max_abs_diff(a, b, (int)n) / fmax(scale, 1e-300);
}

static int64_t leaf_size(int li) {
    switch (li) {
    case L_X: return T_ * D_;
    case L_WG: return E_ * D_;
    case L_W1: case L_W2: case L_W3: return E_ * I_ * D_;
    default: return IS_ * D_;
    }
}

/* Compares two runs; returns the worst relative difference over the output and the gradients. */
static double compare_results(const char *name, const moe_result *got, const moe_result *want, double tol) {
    double worst = rel_diff(got->v, want->v, T_ * D_);
    CHECK(worst <= tol, "%s: output differs by %.2e", name, worst);
    for (int li = L_X; li <= L_SW3; li++) {
        double e = rel_diff(got->grad[li], want->grad[li], leaf_size(li));
        CHECK(e <= tol, "%s: d/d%s differs by %.2e (relative to its largest element)", name, leaf_names[li], e);
        worst = fmax(worst, e);
    }
    return worst;
}

static bool expert_grad_zero(const moe_result *r, int e) {
    for (int li = L_W1; li <= L_W3; li++)
        for (int j = 0; j < I_ * D_; j++)
            if (r->grad[li][e * I_ * D_ + j] != 0.0) return false;
    return true;
}

/* f64, reference backend: the sparse sub-layer reproduces the dense one, forward and backward.
 * Both compute every expert product with the same k-ascending double sums, and the dense one's
 * extra terms are exact zeros, so with K = 2 (a sum of two terms is the same in either order)
 * they typically agree bit for bit; the tolerance allows for other summation orders. */
static void test_sparse_vs_dense(const char *name, bool hash, bool leave_expert_unused, uint64_t seed) {
    ts_rng rng;
    ts_rng_seed(&rng, seed);
    moe_data m;
    draw_data(&rng, &m);
    if (leave_expert_unused) /* hash routing over experts 0..E-2 only (each row's two ids stay distinct) */
        for (int i = 0; i < V_ * K_; i++)
            if (m.tid2eid[i] == E_ - 1) m.tid2eid[i] = (m.tid2eid[i ^ 1] + 1) % (E_ - 1);
    static moe_result sparse, dense;
    dense_moe = false;
    bool ok = run_grads(name, &m, hash, &sparse);
    dense_moe = true;
    ok = run_grads(name, &m, hash, &dense) && ok;
    dense_moe = false;
    if (!ok) return;
    double worst = compare_results(name, &sparse, &dense, SPARSE_TOL_F64);
    if (leave_expert_unused) {
        CHECK(expert_grad_zero(&sparse, E_ - 1) && expert_grad_zero(&dense, E_ - 1),
              "%s: the unused expert's w1 / w2 / w3 gradients are not exactly zero", name);
        CHECK(!expert_grad_zero(&sparse, 0), "%s: a used expert has a zero gradient", name);
    }
    printf("  sparse vs dense f64 %-22s out + 8 gradients: max rel diff %.1e%s  %s\n", name, worst,
           leave_expert_unused ? ", unused expert's gradient exactly 0" : "", worst <= SPARSE_TOL_F64 ? "ok" : "FAIL");
}

/* f32 on the optimized backend (grouped-GEMM matmul_id) against the f64 dense reference. */
static void test_fast_f32(void) {
    ts_rng rng;
    ts_rng_seed(&rng, 4343);
    moe_data m;
    moe_ref r;
    do { /* selections and clamp decisions far from f32 rounding */
        draw_data(&rng, &m);
        reference(&m, false, m.bias, &r);
    } while (r.sel_margin < 1e-3 || r.clamp_margin < 1e-3);
    static moe_result fast, want;
    dense_moe = true;
    bool ok = run_grads("dense f64", &m, false, &want);
    dense_moe = false;
    ts_backend *ref_be = be, *fast_be = NULL;
    CHECK_OK(ts_backend_cpu_new(2, &fast_be), NULL);
    if (!fast_be || !ok) return;
    be = fast_be;
    leaf_dtype = TS_F32;
    ok = run_grads("fast f32", &m, false, &fast);
    leaf_dtype = TS_F64;
    be = ref_be;
    ts_backend_free(fast_be);
    if (!ok) return;
    double worst = compare_results("fast f32 sparse vs f64 dense", &fast, &want, SPARSE_TOL_F32);
    printf("  sparse f32 on cpu (grouped GEMM) vs dense f64: out + 8 gradients max rel diff %.1e  %s\n", worst,
           worst <= SPARSE_TOL_F32 ? "ok" : "FAIL");
}

/* ---------------------------------------------------------------- clamp */

/* Shared-expert-shaped SwiGLU on 2 tokens with positive inputs: w1 row 0 drives a above the
 * limit, w3 row 1 below -limit and w3 row 2 above +limit for both tokens; those rows get exactly
 * zero gradient, the others do not. */
static void test_clamp(void) {
    ts_graph *g = ts_graph_new();
    ts_tensor *x = ts_set_param(ts_new_tensor_2d(g, TS_F64, 2, 3, "x"));
    ts_tensor *w1 = ts_set_param(ts_new_tensor_2d(g, TS_F64, 3, 3, "w1"));
    ts_tensor *w3 = ts_set_param(ts_new_tensor_2d(g, TS_F64, 3, 3, "w3"));
    ts_tensor *w2 = ts_set_param(ts_new_tensor_2d(g, TS_F64, 2, 3, "w2"));
    ts_tensor *y = ts_moe_swiglu(g, x, w1, w3, w2, 10.0f);
    int64_t n = 4;
    ts_tensor *loss = ts_sum(g, ts_reshape(g, ts_mul(g, y, y), 1, &n), 0, true);
    CHECK_OK(ts_graph_backward(g, loss), g);
    CHECK_OK(ts_graph_alloc(g, be, NULL, NULL), g);
    if (ts_graph_status(g) == TS_OK) {
        double xv[6] = {1, 2, 1.5, 2, 1, 1.5};
        double w1v[9] = {4, 4, 4, 0.3, -0.2, 0.1, -0.1, 0.2, 0.3};     /* a_0 = 18 / 19.. > 10 */
        double w3v[9] = {0.2, 0.1, -0.3, -4, -4, -4, 4, 4, 4};         /* b_1 < -10, b_2 > 10 */
        double w2v[6] = {0.5, -0.4, 0.3, 0.2, 0.6, -0.7};
        CHECK_OK(ts_tensor_write(x, xv, sizeof xv), g);
        CHECK_OK(ts_tensor_write(w1, w1v, sizeof w1v), g);
        CHECK_OK(ts_tensor_write(w3, w3v, sizeof w3v), g);
        CHECK_OK(ts_tensor_write(w2, w2v, sizeof w2v), g);
        CHECK_OK(ts_graph_compute(g), g);
        double d1[9], d3[9];
        CHECK_OK(ts_tensor_read(ts_grad(w1), d1, sizeof d1), g);
        CHECK_OK(ts_tensor_read(ts_grad(w3), d3, sizeof d3), g);
        for (int k = 0; k < 3; k++) {
            CHECK(d1[k] == 0.0, "d w1[0][%d] = %g, expected 0 (a above the limit)", k, d1[k]);
            CHECK(d3[3 + k] == 0.0, "d w3[1][%d] = %g, expected 0 (b below -limit)", k, d3[3 + k]);
            CHECK(d3[6 + k] == 0.0, "d w3[2][%d] = %g, expected 0 (b above +limit)", k, d3[6 + k]);
            CHECK(d1[3 + k] != 0.0 && d1[6 + k] != 0.0, "w1 rows inside the limit lost their gradient");
            CHECK(d3[k] != 0.0, "w3 row inside the limit lost its gradient");
        }
        printf("  clamp: zero gradient beyond the limit for w1 row 0, w3 rows 1-2  ok\n");
    }
    ts_graph_free(g);
}

/* ---------------------------------------------------------------- matmul_id errors */

/* ts_matmul_id on f32 w, x and ids of the given shapes and ids dtype: the graph's status, and
 * NULL returned exactly when it is an error. */
static ts_status matmul_id_build(int w_nd, const int64_t *w_shape, int x_nd, const int64_t *x_shape, ts_dtype id_type,
                                 int id_nd, const int64_t *id_shape) {
    ts_graph *g = ts_graph_new();
    ts_tensor *w = ts_new_tensor(g, TS_F32, w_nd, w_shape, "w"), *x = ts_new_tensor(g, TS_F32, x_nd, x_shape, "x");
    ts_tensor *y = ts_matmul_id(g, w, x, ts_new_tensor(g, id_type, id_nd, id_shape, "ids"));
    ts_status s = ts_graph_status(g);
    CHECK((y == NULL) == (s != TS_OK), "matmul_id: result %s with status %s", y ? "set" : "NULL", ts_status_name(s));
    CHECK(!y || (y->ndim == 3 && y->shape[0] == id_shape[0] && y->shape[1] == id_shape[1] && y->shape[2] == w_shape[1]),
          "matmul_id: output is not [T, Kk, N]");
    ts_graph_free(g);
    return s;
}

/* Computes w [3, 4, 5] x [2, 5] with ids {0, 3, 1, 2} (3 is no expert) on bk: TS_ERR_RANGE naming the id. */
static void check_id_out_of_range(ts_backend *bk, const char *be_name) {
    ts_graph *g = ts_graph_new();
    ts_tensor *w = ts_new_tensor_3d(g, TS_F32, 3, 4, 5, "w"), *x = ts_new_tensor_2d(g, TS_F32, 2, 5, "x");
    ts_tensor *ids = ts_new_tensor_2d(g, TS_I64, 2, 2, "ids");
    ts_tensor *y = ts_set_output(ts_matmul_id(g, w, x, ids));
    CHECK_OK(ts_graph_alloc(g, bk, NULL, NULL), g);
    if (y && ts_graph_status(g) == TS_OK) {
        float zeros[60] = {0};
        int64_t id[4] = {0, 3, 1, 2};
        CHECK_OK(ts_tensor_write_f32(w, zeros, 60), g);
        CHECK_OK(ts_tensor_write_f32(x, zeros, 10), g);
        CHECK_OK(ts_tensor_write(ids, id, sizeof id), g);
        ts_status s = ts_graph_compute(g);
        CHECK(s == TS_ERR_RANGE && strstr(ts_graph_error(g), "expert id 3"), "%s: id out of range gave %s: %s", be_name,
              ts_status_name(s), ts_graph_error(g));
    }
    ts_graph_free(g);
}

/* bf16 expert weights with f32 activations (the GEMM converts the weights while packing): the
 * optimized backend's grouped path against the reference kernel, same bf16 values. */
#define MIX_T 6
#define MIX_E 3
#define MIX_N 8
#define MIX_K 16
static bool matmul_id_mixed_on(ts_backend *bk, float *out) {
    ts_graph *g = ts_graph_new();
    ts_tensor *w = ts_new_tensor_3d(g, TS_BF16, MIX_E, MIX_N, MIX_K, "w");
    ts_tensor *x = ts_new_tensor_2d(g, TS_F32, MIX_T, MIX_K, "x"), *ids = ts_new_tensor_2d(g, TS_I32, MIX_T, 2, "ids");
    ts_tensor *y = ts_set_output(ts_matmul_id(g, w, x, ids));
    CHECK(y && y->dtype == TS_F32, "bf16 w x f32 x: %s", ts_graph_error(g));
    CHECK_OK(ts_graph_alloc(g, bk, NULL, NULL), g);
    bool ok = ts_graph_status(g) == TS_OK;
    if (ok) {
        CHECK(bk == be || ts_fast_moe_applies(y), "bf16 weights fall back to the reference kernel");
        ts_rng rng;
        ts_rng_seed(&rng, 31);
        float wv[MIX_E * MIX_N * MIX_K], xv[MIX_T * MIX_K];
        for (int i = 0; i < MIX_E * MIX_N * MIX_K; i++) wv[i] = (float)unif(&rng, -1, 1);
        for (int i = 0; i < MIX_T * MIX_K; i++) xv[i] = (float)unif(&rng, -1, 1);
        int32_t id[MIX_T * 2] = {0, 2, 2, 2, 1, 0, 0, 0, 2, 1, 1, 2};
        CHECK_OK(ts_tensor_write_f32(w, wv, MIX_E * MIX_N * MIX_K), g);
        CHECK_OK(ts_tensor_write_f32(x, xv, MIX_T * MIX_K), g);
        CHECK_OK(ts_tensor_write(ids, id, sizeof id), g);
        CHECK_OK(ts_graph_compute(g), g);
        CHECK_OK(ts_tensor_read_f32(y, out, MIX_T * 2 * MIX_N), g);
        ok = ts_graph_status(g) == TS_OK;
    }
    ts_graph_free(g);
    return ok;
}

static void test_matmul_id_mixed_dtypes(void) {
    float want[MIX_T * 2 * MIX_N], got[MIX_T * 2 * MIX_N];
    ts_backend *fast = NULL;
    CHECK_OK(ts_backend_cpu_new(2, &fast), NULL);
    if (!fast || !matmul_id_mixed_on(be, want) || !matmul_id_mixed_on(fast, got)) {
        ts_backend_free(fast);
        return;
    }
    ts_backend_free(fast);
    double worst = 0, scale = 0;
    for (int i = 0; i < MIX_T * 2 * MIX_N; i++) {
        worst = fmax(worst, fabs((double)got[i] - want[i]));
        scale = fmax(scale, fabs((double)want[i]));
    }
    CHECK(worst <= 1e-6 * scale, "bf16 weights: fast vs reference max abs diff %.2e (scale %.2e)", worst, scale);
    printf("  matmul_id bf16 weights, f32 x: cpu vs cpu-ref max rel diff %.1e  %s\n", worst / scale,
           worst <= 1e-6 * scale ? "ok" : "FAIL");
}

/* matmul_id and its weight gradient on the fast backend give the same bits on 1, 2 and 3
 * threads: spread over threads, the experts at the ends of a thread's share are split by
 * columns (a 16-token decode step's 8 experts over 2 threads), which must not change a bit.
 * Routing skewed towards expert 0, expert 5 unused; 40 columns (two slice boundaries at most)
 * and 33 of depth. */
#define SPLIT_T 16
#define SPLIT_E 8
#define SPLIT_N 40
#define SPLIT_K 33
static bool matmul_id_split_on(int threads, float *y_out, float *dw_out) {
    ts_backend *bk = NULL;
    if (ts_backend_cpu_new(threads, &bk) != TS_OK) return false;
    ts_graph *g = ts_graph_new();
    ts_tensor *w = ts_set_param(ts_new_tensor_3d(g, TS_F32, SPLIT_E, SPLIT_N, SPLIT_K, "w"));
    ts_tensor *x = ts_new_tensor_2d(g, TS_F32, SPLIT_T, SPLIT_K, "x"), *ids = ts_new_tensor_2d(g, TS_I32, SPLIT_T, 2, "ids");
    ts_tensor *y = ts_set_output(ts_matmul_id(g, w, x, ids));
    ts_tensor *loss = ts_set_output(ts_sum(g, ts_reshape(g, ts_mul(g, y, y), 1, (int64_t[]){SPLIT_T * 2 * SPLIT_N}), 0, false));
    CHECK_OK(ts_graph_backward(g, loss), g);
    CHECK_OK(ts_graph_alloc(g, bk, NULL, NULL), g);
    bool ok = ts_graph_status(g) == TS_OK;
    if (ok) {
        ts_rng rng;
        ts_rng_seed(&rng, 57);
        static float wv[SPLIT_E * SPLIT_N * SPLIT_K], xv[SPLIT_T * SPLIT_K];
        for (int i = 0; i < SPLIT_E * SPLIT_N * SPLIT_K; i++) wv[i] = (float)unif(&rng, -1, 1);
        for (int i = 0; i < SPLIT_T * SPLIT_K; i++) xv[i] = (float)unif(&rng, -1, 1);
        int32_t id[SPLIT_T * 2];
        for (int t = 0; t < SPLIT_T; t++) {
            id[2 * t] = t % 3 == 0 ? 0 : (int32_t)(ts_rng_next(&rng) % SPLIT_E);
            if (id[2 * t] == 5) id[2 * t] = 6;
            id[2 * t + 1] = (id[2 * t] + 1 + t % 2) % SPLIT_E == 5 ? 7 : (id[2 * t] + 1 + t % 2) % SPLIT_E;
        }
        CHECK_OK(ts_tensor_write_f32(w, wv, SPLIT_E * SPLIT_N * SPLIT_K), g);
        CHECK_OK(ts_tensor_write_f32(x, xv, SPLIT_T * SPLIT_K), g);
        CHECK_OK(ts_tensor_write(ids, id, sizeof id), g);
        CHECK_OK(ts_graph_compute(g), g);
        CHECK(ts_fast_moe_applies(y), "matmul_id left the grouped-GEMM path");
        CHECK_OK(ts_tensor_read_f32(y, y_out, SPLIT_T * 2 * SPLIT_N), g);
        CHECK_OK(ts_tensor_read_f32(ts_grad(w), dw_out, SPLIT_E * SPLIT_N * SPLIT_K), g);
        ok = ts_graph_status(g) == TS_OK;
    }
    ts_graph_free(g);
    ts_backend_free(bk);
    return ok;
}

static void test_matmul_id_thread_split(void) {
    static float y[3][SPLIT_T * 2 * SPLIT_N], dw[3][SPLIT_E * SPLIT_N * SPLIT_K];
    bool ok = true;
    for (int i = 0; i < 3; i++) ok = ok && matmul_id_split_on(i + 1, y[i], dw[i]);
    CHECK(ok, "matmul_id on 1-3 threads did not run");
    if (!ok) return;
    bool same = true;
    for (int i = 1; i < 3; i++) same = same && !memcmp(y[0], y[i], sizeof y[0]) && !memcmp(dw[0], dw[i], sizeof dw[0]);
    CHECK(same, "matmul_id / its weight gradient differ between 1, 2 and 3 threads");
    double unused = 0;
    for (int i = 0; i < SPLIT_N * SPLIT_K; i++) unused = fmax(unused, fabs(dw[1][5 * SPLIT_N * SPLIT_K + i]));
    CHECK(unused == 0, "the unused expert's gradient is not zero (%g)", unused);
    printf("  matmul_id split over 1, 2, 3 threads: same bits  %s\n", same && unused == 0 ? "ok" : "FAIL");
}

static void test_matmul_id_errors(void) {
    int failures_before = check_failed_;
    const int64_t w[3] = {3, 4, 5}, w2d[2] = {4, 5}, x[2] = {2, 5}, x_wide[2] = {2, 6}, x_rows[2] = {3, 5};
    const int64_t x_slots[3] = {2, 3, 5}, ids[2] = {2, 2}, ids3[3] = {2, 2, 1};
    CHECK_OK(matmul_id_build(3, w, 2, x, TS_I32, 2, ids), NULL);
    CHECK_OK(matmul_id_build(3, w, 3, (const int64_t[]){2, 2, 5}, TS_I64, 2, ids), NULL);
    CHECK(matmul_id_build(3, w, 2, x_wide, TS_I32, 2, ids) == TS_ERR_SHAPE, "x rows of the wrong length accepted");
    CHECK(matmul_id_build(3, w, 2, x_rows, TS_I32, 2, ids) == TS_ERR_SHAPE, "x with another T accepted");
    CHECK(matmul_id_build(3, w, 3, x_slots, TS_I32, 2, ids) == TS_ERR_SHAPE, "x with another Kk accepted");
    CHECK(matmul_id_build(2, w2d, 2, x, TS_I32, 2, ids) == TS_ERR_SHAPE, "2-D w accepted");
    CHECK(matmul_id_build(3, w, 2, x, TS_F32, 2, ids) == TS_ERR_DTYPE, "float ids accepted");
    CHECK(matmul_id_build(3, w, 2, x, TS_I32, 3, ids3) == TS_ERR_SHAPE, "3-D ids accepted");

    ts_graph *g = ts_graph_new();
    ts_tensor *src[3] = {ts_new_tensor_3d(g, TS_F32, 3, 4, 5, "a"), ts_new_tensor_2d(g, TS_F32, 2, 5, "b"),
                         ts_new_tensor_2d(g, TS_I32, 2, 2, "ids")};
    CHECK(!ts_op_node(g, TS_OP_MATMUL_ID, src, 2, NULL, 0, NULL, 0) && ts_graph_status(g) == TS_ERR_INVALID_ARG,
          "matmul_id with two sources accepted");
    ts_graph_free(g);
    g = ts_graph_new();
    ts_tensor *gw[3] = {ts_new_tensor_3d(g, TS_F32, 2, 2, 4, "a"), ts_new_tensor_2d(g, TS_F32, 2, 5, "b"),
                        ts_new_tensor_2d(g, TS_I32, 2, 2, "ids")};
    int32_t no_experts = 0;
    CHECK(!ts_op_node(g, TS_OP_MATMUL_ID_GRAD_W, gw, 3, &no_experts, 1, NULL, 0) &&
              ts_graph_status(g) == TS_ERR_INVALID_ARG, "matmul_id_grad_w with 0 experts accepted");
    ts_graph_free(g);

    ts_backend *fast = NULL;
    CHECK_OK(ts_backend_cpu_new(2, &fast), NULL);
    check_id_out_of_range(be, "cpu-ref");
    if (fast) check_id_out_of_range(fast, "cpu");
    ts_backend_free(fast);
    printf("  matmul_id: shape / dtype errors at construction, id out of range at compute  %s\n",
           check_failed_ == failures_before ? "ok" : "FAIL");
}

/* ---------------------------------------------------------------- helpers, config, errors */

static void test_helpers(void) {
    int32_t ids[8] = {0, 2, 2, 3, 1, 2, 0, 2};
    int64_t load[4];
    CHECK_OK(ts_moe_count_load(ids, 8, 4, load), NULL);
    CHECK(load[0] == 2 && load[1] == 1 && load[2] == 4 && load[3] == 1, "count_load");
    ids[3] = 4;
    CHECK(ts_moe_count_load(ids, 8, 4, load) == TS_ERR_RANGE, "out-of-range id accepted");

    ts_v4_config cfg;
    CHECK_OK(ts_v4_preset("tiny", &cfg), NULL);
    ts_moe_params p0 = ts_moe_params_from_config(&cfg, 0), pl = ts_moe_params_from_config(&cfg, cfg.num_hash_layers);
    CHECK(p0.hash_routing && !pl.hash_routing, "hash layers from num_hash_layers = %lld",
          (long long)cfg.num_hash_layers);
    CHECK(p0.top_k == cfg.num_experts_per_tok && p0.route_scale == (float)cfg.routed_scaling_factor &&
              p0.swiglu_limit == (float)cfg.swiglu_limit, "params copied from the config");

    /* builder errors: recorded in the graph, NULL returned */
    ts_graph *g = ts_graph_new();
    ts_tensor *x = ts_new_tensor_2d(g, TS_F64, T_, D_, "x");
    ts_tensor *wg = ts_new_tensor_2d(g, TS_F64, E_, D_ + 1, "w_gate");
    ts_tensor *idx = NULL;
    CHECK(ts_moe_router(g, x, wg, NULL, NULL, NULL, K_, 1.5f, NULL, &idx, NULL) == TS_ERR_SHAPE && !idx,
          "mismatched w_gate accepted");
    ts_graph_free(g);
    g = ts_graph_new();
    x = ts_new_tensor_2d(g, TS_F64, T_, D_, "x");
    wg = ts_new_tensor_2d(g, TS_F64, E_, D_, "w_gate");
    CHECK(ts_moe_router(g, x, wg, NULL, NULL, NULL, E_ + 1, 1.5f, NULL, NULL, NULL) == TS_ERR_RANGE,
          "top_k > E accepted");
    ts_graph_free(g);
    g = ts_graph_new();
    x = ts_new_tensor_2d(g, TS_F64, T_, D_, "x");
    ts_moe_weights w = {.w_gate = ts_new_tensor_2d(g, TS_F64, E_, D_, "w_gate"),
                        .w1 = ts_new_tensor_3d(g, TS_F64, E_, I_, D_, "w1"),
                        .w2 = ts_new_tensor_3d(g, TS_F64, E_, D_, I_, "w2"),
                        .w3 = ts_new_tensor_3d(g, TS_F64, E_, I_, D_, "w3")};
    ts_moe_params p = {.top_k = K_, .route_scale = 1.5f, .swiglu_limit = 10, .hash_routing = true};
    CHECK(ts_moe_forward(g, x, &w, &p, NULL, NULL) == NULL && ts_graph_status(g) != TS_OK,
          "hash routing without tid2eid accepted");
    ts_graph_free(g);
}

int main(void) {
    if (ts_backend_cpu_ref_new(1, &be) != TS_OK) {
        fprintf(stderr, "no CPU backend\n");
        return 1;
    }
    test_forward();
    dense_moe = true;
    test_forward();
    dense_moe = false;
    test_forward_f32();
    gradcheck("learned", false, 777);
    gradcheck("hash", true, 778);
    test_sparse_vs_dense("learned", false, false, 901);
    test_sparse_vs_dense("hash, expert unused", true, true, 902);
    test_fast_f32();
    test_matmul_id_errors();
    test_matmul_id_mixed_dtypes();
    test_matmul_id_thread_split();
    test_clamp();
    test_helpers();
    ts_backend_free(be);
    return check_summary("test_moe");
}
