/* test_attention.c - checks the fused attention op (ts_attention, TS_OP_ATTENTION and its
 * backward TS_OP_ATTENTION_BACK) on the reference CPU backend and on the flash-style f32 kernel
 * of the optimized "cpu" backend (every instruction-set tier this machine has) against a naive
 * implementation written here: materialized T x (S + E) score matrices, explicit masks, a
 * softmax with the sink as one more column, weighted sums, and the backward through the
 * materialized probabilities.
 *
 * Covered: causal / non-causal, sliding windows, sinks, grouped heads, V4's shared K=V head
 * (one tensor as k and v), extra entries with -1 slots and duplicates (HCA- and CSA-like index
 * patterns), both as one vector serving as key and value and as key | value rows (D + Dv wide,
 * a KV cache's layout), document masks (key_start: packed documents, arbitrary bounds), decoding (T < S),
 * queries at negative positions (T > S, fully masked rows give zeros), lengths spanning several
 * kernel tiles, f64 and f32 inputs, forward and every gradient. Then properties: key_start over
 * packed documents equals running each document as its own sequence, causality (a future key
 * does not change earlier outputs), bit-identical results for 1, 2 and 3 threads (both
 * backends), memory linear in T (planner arena and process peak RSS at T = S = 2048: no T x S
 * buffer anywhere), that the fast kernel really runs on f32 (and not on f64 or transposed
 * views), and the constructor's error messages. Finite-difference checks of the gradients live
 * in test_gradcheck.c; the conformance suite runs the op on every backend. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "backends/cpu/fast_kernels.h"
#include "backends/cpu/gemm.h"
#include "check.h"
#include "tessera/backend.h"
#include "tessera/graph.h"

/* ---------------------------------------------------------------- configurations */

typedef enum {
    EXTRAS_NONE,
    EXTRAS_HCA, /* every completed block of BLOCK positions, then -1 slots */
    EXTRAS_CSA, /* random entries, about 1 slot in 4 unused (-1), duplicates allowed */
} extras_kind;

#define BLOCK 4

typedef enum {
    DOCS_NONE,
    DOCS_PACKED, /* key_start: packed documents of random lengths (the data loader's doc_start) */
    DOCS_BOUNDS, /* key_start: arbitrary values in [-2, S + 2), some rows left without keys */
} docs_kind;

typedef struct {
    const char *name;
    int64_t B, T, S, H, Hk, D, Dv;
    bool causal;
    int32_t window;
    bool sink;
    bool shared_kv;  /* one tensor as k and v (then Dv == D) */
    extras_kind extras;
    int64_t N, E;    /* extra rows and index slots per query */
    bool split_extra; /* extra rows are key | value (D + Dv wide), not one vector for both (D) */
    float scale;
    docs_kind docs;
} attn_config;

/* The inputs of one configuration as f64 host arrays, row-major. */
typedef struct {
    double *q, *k, *v, *sink, *extra, *w; /* w: loss weights, shaped like the output */
    int64_t *idx;
    int64_t *key_start;                   /* [B, T] or NULL */
} attn_data;

/* Gradients (or the forward output) as host arrays; NULL where the input is absent. */
typedef struct {
    double *out, *dq, *dk, *dv, *dsink, *dextra;
} attn_result;

static int64_t n_q(const attn_config *c) { return c->B * c->T * c->H * c->D; }
static int64_t n_k(const attn_config *c) { return c->B * c->S * c->Hk * c->D; }
static int64_t n_v(const attn_config *c) { return c->B * c->S * c->Hk * c->Dv; }
static int64_t n_out(const attn_config *c) { return c->B * c->T * c->H * c->Dv; }
static int64_t extra_width(const attn_config *c) { return c->split_extra ? c->D + c->Dv : c->D; }
static int64_t n_extra(const attn_config *c) { return c->B * c->N * c->Hk * extra_width(c); }
static int64_t n_idx(const attn_config *c) { return c->B * c->T * c->E; }

/* ---------------------------------------------------------------- data */

static double *uniform_array(ts_rng *r, int64_t n, double lo, double hi, bool as_f32) {
    double *a = malloc((size_t)(n > 0 ? n : 1) * sizeof *a);
    for (int64_t i = 0; i < n; i++) {
        a[i] = lo + (hi - lo) * ts_rng_uniform(r);
        if (as_f32) a[i] = (double)(float)a[i]; /* the naive side sees exactly what an f32 leaf holds */
    }
    return a;
}

static void fill_indices(const attn_config *c, ts_rng *r, int64_t *idx) {
    for (int64_t b = 0; b < c->B; b++)
        for (int64_t t = 0; t < c->T; t++) {
            int64_t *slots = idx + (b * c->T + t) * c->E, pos = c->S - c->T + t;
            for (int64_t e = 0; e < c->E; e++) {
                if (c->extras == EXTRAS_HCA) { /* block n is complete once position BLOCK*n + BLOCK-1 <= pos */
                    int64_t completed = pos >= 0 ? (pos + 1) / BLOCK : 0;
                    slots[e] = e < completed && e < c->N ? e : -1;
                } else {
                    slots[e] = ts_rng_uniform(r) < 0.25 ? -1 : (int64_t)(ts_rng_next(r) % (uint64_t)c->N);
                }
            }
        }
}

/* Query t's key lower bound: its document's first position (DOCS_PACKED; a document starts at
 * each position with probability 1/4) or an arbitrary value (DOCS_BOUNDS). */
static void fill_key_start(const attn_config *c, ts_rng *r, int64_t *ks) {
    for (int64_t b = 0; b < c->B; b++) {
        int64_t start = 0;
        for (int64_t t = 0; t < c->T; t++) {
            int64_t pos = c->S - c->T + t;
            if (pos > 0 && ts_rng_uniform(r) < 0.25) start = pos;
            ks[b * c->T + t] = c->docs == DOCS_PACKED ? start : (int64_t)(ts_rng_next(r) % (uint64_t)(c->S + 4)) - 2;
        }
    }
}

static attn_data make_data(const attn_config *c, uint64_t seed, bool as_f32) {
    ts_rng r;
    ts_rng_seed(&r, seed);
    attn_data x = {0};
    x.q = uniform_array(&r, n_q(c), -1, 1, as_f32);
    x.k = uniform_array(&r, n_k(c), -1, 1, as_f32);
    x.v = c->shared_kv ? x.k : uniform_array(&r, n_v(c), -1, 1, as_f32);
    if (c->sink) x.sink = uniform_array(&r, c->H, -1, 1, as_f32);
    if (c->extras != EXTRAS_NONE) {
        x.extra = uniform_array(&r, n_extra(c), -1, 1, as_f32);
        x.idx = malloc((size_t)(n_idx(c) > 0 ? n_idx(c) : 1) * sizeof *x.idx);
        fill_indices(c, &r, x.idx);
    }
    if (c->docs != DOCS_NONE) {
        x.key_start = malloc((size_t)(c->B * c->T > 0 ? c->B * c->T : 1) * sizeof *x.key_start);
        fill_key_start(c, &r, x.key_start);
    }
    x.w = uniform_array(&r, n_out(c), -1, 1, as_f32);
    return x;
}

static void free_data(const attn_config *c, attn_data *x) {
    free(x->q);
    free(x->k);
    if (!c->shared_kv) free(x->v);
    free(x->sink);
    free(x->extra);
    free(x->idx);
    free(x->key_start);
    free(x->w);
}

static void free_result(attn_result *r) {
    free(r->out);
    free(r->dq);
    free(r->dk);
    free(r->dv);
    free(r->dsink);
    free(r->dextra);
    memset(r, 0, sizeof *r);
}

/* ---------------------------------------------------------------- the naive implementation */

/* Entry i of query row t: i < S is key i, S <= i < S + E is extra slot i - S. Row pointers to
 * its key and value (NULL when the entry is masked or the slot unused). */
static bool naive_entry(const attn_config *c, const attn_data *x, int64_t b, int64_t t, int64_t g, int64_t i,
                        const double **key, const double **val) {
    int64_t pos = c->S - c->T + t;
    if (i < c->S) {
        bool visible = (!c->causal || i <= pos) && (c->window == 0 || i > pos - c->window) &&
                       (!x->key_start || i >= x->key_start[b * c->T + t]);
        *key = x->k + ((b * c->S + i) * c->Hk + g) * c->D;
        *val = x->v + ((b * c->S + i) * c->Hk + g) * c->Dv;
        return visible;
    }
    int64_t n = x->idx[(b * c->T + t) * c->E + (i - c->S)];
    if (n < 0) return false;
    *key = x->extra + ((b * c->N + n) * c->Hk + g) * extra_width(c);
    *val = *key + (c->split_extra ? c->D : 0);
    return true;
}

static double dot(const double *a, const double *b, int64_t n) {
    double s = 0;
    for (int64_t i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}

/* The probability matrix of head h of batch b: P[t][i] over the S + E entries (0 where
 * masked) and the sink's share psink[t]. */
static void naive_probabilities(const attn_config *c, const attn_data *x, int64_t b, int64_t h, double *P,
                                double *psink) {
    int64_t n_ent = c->S + c->E, g = h / (c->H / c->Hk);
    for (int64_t t = 0; t < c->T; t++) {
        double *row = P + t * n_ent, z = c->sink ? x->sink[h] : -INFINITY, m = z;
        const double *q = x->q + ((b * c->T + t) * c->H + h) * c->D, *key, *val;
        for (int64_t i = 0; i < n_ent; i++) {
            row[i] = naive_entry(c, x, b, t, g, i, &key, &val) ? c->scale * dot(q, key, c->D) : -INFINITY;
            if (row[i] > m) m = row[i];
        }
        if (m == -INFINITY) { /* nothing to attend to: no distribution, zeros */
            for (int64_t i = 0; i < n_ent; i++) row[i] = 0;
            psink[t] = 0;
            continue;
        }
        double denom = exp(z - m);
        for (int64_t i = 0; i < n_ent; i++) denom += row[i] == -INFINITY ? 0 : exp(row[i] - m);
        for (int64_t i = 0; i < n_ent; i++) row[i] = row[i] == -INFINITY ? 0 : exp(row[i] - m) / denom;
        psink[t] = exp(z - m) / denom;
    }
}

/* Forward and (with x->w as dout) every gradient. The shared-K=V case sums the key and value
 * gradients into dk. */
static attn_result naive_attention(const attn_config *c, const attn_data *x) {
    int64_t n_ent = c->S + c->E;
    attn_result r = {0};
    r.out = calloc((size_t)n_out(c), sizeof(double));
    r.dq = calloc((size_t)n_q(c), sizeof(double));
    r.dk = calloc((size_t)n_k(c), sizeof(double));
    r.dv = calloc((size_t)n_v(c), sizeof(double));
    if (c->sink) r.dsink = calloc((size_t)c->H, sizeof(double));
    if (x->extra) r.dextra = calloc((size_t)n_extra(c), sizeof(double));
    double *P = malloc((size_t)(c->T * n_ent) * sizeof *P), *psink = malloc((size_t)c->T * sizeof *psink);
    for (int64_t b = 0; b < c->B; b++)
        for (int64_t h = 0; h < c->H; h++) {
            int64_t g = h / (c->H / c->Hk);
            naive_probabilities(c, x, b, h, P, psink);
            for (int64_t t = 0; t < c->T; t++) {
                int64_t row = (b * c->T + t) * c->H + h;
                const double *q = x->q + row * c->D, *dout = x->w + row * c->Dv, *key, *val;
                double *out = r.out + row * c->Dv, *dq = r.dq + row * c->D, delta = 0;
                for (int64_t i = 0; i < n_ent; i++)
                    if (naive_entry(c, x, b, t, g, i, &key, &val)) {
                        for (int64_t d = 0; d < c->Dv; d++) out[d] += P[t * n_ent + i] * val[d];
                        delta += P[t * n_ent + i] * dot(dout, val, c->Dv);
                    }
                for (int64_t i = 0; i < n_ent; i++) {
                    if (!naive_entry(c, x, b, t, g, i, &key, &val)) continue;
                    double p = P[t * n_ent + i], ds = p * (dot(dout, val, c->Dv) - delta) * c->scale;
                    bool is_key = i < c->S;
                    int64_t n = is_key ? 0 : x->idx[(b * c->T + t) * c->E + (i - c->S)];
                    double *dkey = is_key ? r.dk + ((b * c->S + i) * c->Hk + g) * c->D
                                          : r.dextra + ((b * c->N + n) * c->Hk + g) * extra_width(c);
                    double *dval = is_key ? (c->shared_kv ? dkey : r.dv + ((b * c->S + i) * c->Hk + g) * c->Dv)
                                          : dkey + (c->split_extra ? c->D : 0);
                    for (int64_t d = 0; d < c->D; d++) {
                        dq[d] += ds * key[d];
                        dkey[d] += ds * q[d];
                    }
                    for (int64_t d = 0; d < c->Dv; d++) dval[d] += p * dout[d];
                }
                if (c->sink) r.dsink[h] -= psink[t] * delta;
            }
        }
    free(P);
    free(psink);
    return r;
}

/* ---------------------------------------------------------------- the op through a graph */

typedef struct {
    ts_graph *g;
    ts_tensor *q, *k, *v, *sink, *extra, *idx, *key_start, *w, *out;
} attn_graph;

static ts_tensor *leaf4(ts_graph *g, ts_dtype t, int64_t a, int64_t b, int64_t c, int64_t d, const char *name,
                        bool param) {
    ts_tensor *x = ts_new_tensor_4d(g, t, a, b, c, d, name);
    return param ? ts_set_param(x) : x;
}

/* Builds out = attention(...) and, with backward, loss = sum(out * w) and its gradients; every
 * float input is a parameter then. */
static attn_graph build_graph(const attn_config *c, ts_dtype dt, bool backward) {
    attn_graph ag = {.g = ts_graph_new()};
    ts_graph *g = ag.g;
    ag.q = leaf4(g, dt, c->B, c->T, c->H, c->D, "q", backward);
    ag.k = leaf4(g, dt, c->B, c->S, c->Hk, c->D, c->shared_kv ? "kv" : "k", backward);
    ag.v = c->shared_kv ? ag.k : leaf4(g, dt, c->B, c->S, c->Hk, c->Dv, "v", backward);
    ts_attention_params p = {.scale = c->scale, .causal = c->causal, .window = c->window};
    if (c->sink) {
        ag.sink = ts_new_tensor_1d(g, dt, c->H, "sink");
        if (backward) ts_set_param(ag.sink);
        p.sink = ag.sink;
    }
    if (c->extras != EXTRAS_NONE) {
        ag.extra = leaf4(g, dt, c->B, c->N, c->Hk, extra_width(c), "extra", backward);
        ag.idx = ts_new_tensor_3d(g, TS_I32, c->B, c->T, c->E, "extra_idx");
        p.extra = ag.extra;
        p.extra_idx = ag.idx;
    }
    if (c->docs != DOCS_NONE) p.key_start = ag.key_start = ts_new_tensor_2d(g, TS_I32, c->B, c->T, "key_start");
    ag.out = ts_set_output(ts_attention(g, ag.q, ag.k, ag.v, &p));
    if (backward && ag.out) {
        ag.w = leaf4(g, dt, c->B, c->T, c->H, c->Dv, "w", false);
        int64_t n = n_out(c);
        ts_tensor *loss = ts_sum(g, ts_reshape(g, ts_mul(g, ag.out, ag.w), 1, &n), 0, true);
        ts_graph_backward(g, loss);
    }
    return ag;
}

static ts_status write_doubles(ts_tensor *t, const double *v) {
    if (!t) return TS_OK;
    int64_t n = ts_nelements(t);
    void *buf = malloc(ts_nbytes(t));
    for (int64_t i = 0; i < n; i++) ts_store_f64(buf, t->dtype, i, v[i]);
    ts_status s = ts_tensor_write(t, buf, ts_nbytes(t));
    free(buf);
    return s;
}

static ts_status write_indices(ts_tensor *t, const int64_t *idx) {
    if (!t) return TS_OK;
    int64_t n = ts_nelements(t);
    int32_t *buf = malloc((size_t)n * sizeof *buf);
    for (int64_t i = 0; i < n; i++) buf[i] = (int32_t)idx[i];
    ts_status s = ts_tensor_write(t, buf, (size_t)n * sizeof *buf);
    free(buf);
    return s;
}

/* t's values as a new f64 array (NULL when t is NULL or unreadable). */
static double *read_doubles(const ts_tensor *t) {
    if (!t) return NULL;
    int64_t n = ts_nelements(t);
    void *buf = malloc(ts_nbytes(t));
    double *v = malloc((size_t)n * sizeof *v);
    if (ts_tensor_read(t, buf, ts_nbytes(t)) != TS_OK) {
        free(buf);
        free(v);
        return NULL;
    }
    for (int64_t i = 0; i < n; i++) v[i] = ts_load_f64(buf, t->dtype, i);
    free(buf);
    return v;
}

static ts_status write_inputs(attn_graph *ag, const attn_data *x) {
    ts_status s = TS_OK;
    if (!s) s = write_doubles(ag->q, x->q);
    if (!s) s = write_doubles(ag->k, x->k);
    if (!s && ag->v != ag->k) s = write_doubles(ag->v, x->v);
    if (!s) s = write_doubles(ag->sink, x->sink);
    if (!s) s = write_doubles(ag->extra, x->extra);
    if (!s) s = write_indices(ag->idx, x->idx);
    if (!s) s = write_indices(ag->key_start, x->key_start);
    if (!s) s = write_doubles(ag->w, x->w);
    return s;
}

/* Runs the op (and its gradients when backward) on `be`; the result holds what was computed. */
static attn_result run_op(const attn_config *c, const attn_data *x, ts_dtype dt, bool backward, ts_backend *be) {
    attn_result r = {0};
    attn_graph ag = build_graph(c, dt, backward);
    CHECK_OK(ts_graph_status(ag.g), ag.g);
    if (ts_graph_status(ag.g) == TS_OK) {
        CHECK_OK(ts_graph_alloc(ag.g, be, NULL, NULL), ag.g);
        CHECK_OK(write_inputs(&ag, x), ag.g);
        CHECK_OK(ts_graph_compute(ag.g), ag.g);
    }
    if (ts_graph_status(ag.g) == TS_OK) {
        r.out = read_doubles(ag.out);
        if (backward) {
            r.dq = read_doubles(ts_grad(ag.q));
            r.dk = read_doubles(ts_grad(ag.k));
            r.dv = ag.v != ag.k ? read_doubles(ts_grad(ag.v)) : NULL;
            r.dsink = read_doubles(ts_grad(ag.sink));
            r.dextra = read_doubles(ts_grad(ag.extra));
        }
    }
    ts_graph_free(ag.g);
    return r;
}

/* ---------------------------------------------------------------- comparing */

/* max |a - b| / max |b|: normwise, so tiny elements do not turn rounding into large errors. */
static double normwise_error(const double *a, const double *b, int64_t n) {
    double err = 0, scale = 0;
    for (int64_t i = 0; i < n; i++) {
        double e = fabs(a[i] - b[i]);
        if (!(e <= err)) err = e; /* NaN wins */
        if (fabs(b[i]) > scale) scale = fabs(b[i]);
    }
    return scale > 0 ? err / scale : err;
}

static double compare(const char *config, const char *what, const double *got, const double *want, int64_t n,
                      double tol) {
    CHECK(got != NULL, "%s: %s missing", config, what);
    if (!got || !want) return INFINITY;
    double e = normwise_error(got, want, n);
    CHECK(e <= tol, "%s: %s differs from the naive implementation: normwise error %.2e > %.0e", config, what, e,
          tol);
    return e;
}

/* tol: normwise, for f32 or f64 as dt says */
static void test_against_naive(const attn_config *c, ts_dtype dt, ts_backend *be, double tol) {
    bool f32 = dt == TS_F32;
    attn_data x = make_data(c, 0xA77E ^ (uint64_t)c->T * 131 ^ (uint64_t)c->S, f32);
    attn_result want = naive_attention(c, &x), got = run_op(c, &x, dt, true, be);
    double worst = 0;
    worst = fmax(worst, compare(c->name, "output", got.out, want.out, n_out(c), tol));
    worst = fmax(worst, compare(c->name, "dq", got.dq, want.dq, n_q(c), tol));
    worst = fmax(worst, compare(c->name, c->shared_kv ? "dkv" : "dk", got.dk, want.dk, n_k(c), tol));
    if (!c->shared_kv) worst = fmax(worst, compare(c->name, "dv", got.dv, want.dv, n_v(c), tol));
    if (c->sink) worst = fmax(worst, compare(c->name, "dsink", got.dsink, want.dsink, c->H, tol));
    if (x.extra) worst = fmax(worst, compare(c->name, "dextra", got.dextra, want.dextra, n_extra(c), tol));
    printf("  %-44s %s  max normwise error %.1e\n", c->name, ts_dtype_name(dt), worst);
    free_result(&want);
    free_result(&got);
    free_data(c, &x);
}

static const attn_config configs[] = {
    {.name = "causal B=2 T=S=9 H=2 D=5 Dv=3", .B = 2, .T = 9, .S = 9, .H = 2, .Hk = 2, .D = 5, .Dv = 3,
     .causal = true, .scale = 0.45f},
    {.name = "non-causal cross T=5 S=7", .B = 1, .T = 5, .S = 7, .H = 3, .Hk = 3, .D = 4, .Dv = 6, .scale = 0.5f},
    {.name = "causal window 4 T=S=17", .B = 1, .T = 17, .S = 17, .H = 2, .Hk = 1, .D = 8, .Dv = 8, .causal = true,
     .window = 4, .scale = 0.35f},
    {.name = "non-causal window 3 + sink", .B = 2, .T = 6, .S = 6, .H = 2, .Hk = 2, .D = 3, .Dv = 3, .window = 3,
     .sink = true, .scale = 0.6f},
    {.name = "sink + GQA H=6 Hk=3", .B = 2, .T = 7, .S = 7, .H = 6, .Hk = 3, .D = 4, .Dv = 5, .causal = true,
     .sink = true, .scale = 0.5f},
    {.name = "V4 SWA+HCA: shared K=V, window 5, sink", .B = 2, .T = 16, .S = 16, .H = 4, .Hk = 1, .D = 8, .Dv = 8,
     .causal = true, .window = 5, .sink = true, .shared_kv = true, .extras = EXTRAS_HCA, .N = 4, .E = 4,
     .scale = 0.35f},
    {.name = "V4 SWA+CSA: shared K=V, -1 slots, dups", .B = 1, .T = 12, .S = 12, .H = 4, .Hk = 1, .D = 6, .Dv = 6,
     .causal = true, .window = 4, .sink = true, .shared_kv = true, .extras = EXTRAS_CSA, .N = 5, .E = 3,
     .scale = 0.4f},
    {.name = "decode T=3 S=20 window 8 + extras", .B = 2, .T = 3, .S = 20, .H = 4, .Hk = 2, .D = 4, .Dv = 4,
     .causal = true, .window = 8, .extras = EXTRAS_HCA, .N = 5, .E = 5, .scale = 0.5f},
    {.name = "T=6 > S=3: masked rows, extras only", .B = 1, .T = 6, .S = 3, .H = 2, .Hk = 2, .D = 4, .Dv = 4,
     .causal = true, .extras = EXTRAS_CSA, .N = 3, .E = 2, .scale = 0.5f},
    {.name = "doc mask: packed docs, sink, GQA", .B = 2, .T = 24, .S = 24, .H = 4, .Hk = 2, .D = 8, .Dv = 8,
     .causal = true, .sink = true, .scale = 0.4f, .docs = DOCS_PACKED},
    {.name = "doc mask + window 6 + shared K=V + HCA", .B = 1, .T = 20, .S = 20, .H = 4, .Hk = 1, .D = 8, .Dv = 8,
     .causal = true, .window = 6, .sink = true, .shared_kv = true, .extras = EXTRAS_HCA, .N = 5, .E = 5,
     .scale = 0.35f, .docs = DOCS_PACKED},
    {.name = "key bounds, non-causal, empty rows", .B = 1, .T = 7, .S = 9, .H = 2, .Hk = 2, .D = 4, .Dv = 3,
     .scale = 0.5f, .docs = DOCS_BOUNDS},
    {.name = "key bounds, decode T=4 S=12 + sink", .B = 2, .T = 4, .S = 12, .H = 2, .Hk = 1, .D = 4, .Dv = 4,
     .causal = true, .sink = true, .scale = 0.5f, .docs = DOCS_BOUNDS},
    {.name = "tiles: causal T=S=150 D=24 Dv=16 + sink", .B = 1, .T = 150, .S = 150, .H = 2, .Hk = 2, .D = 24,
     .Dv = 16, .causal = true, .sink = true, .scale = 0.2f},
    {.name = "tiles: window 40 + docs + K=V + CSA", .B = 2, .T = 130, .S = 130, .H = 4, .Hk = 1, .D = 16, .Dv = 16,
     .causal = true, .window = 40, .sink = true, .shared_kv = true, .extras = EXTRAS_CSA, .N = 9, .E = 3,
     .scale = 0.25f, .docs = DOCS_PACKED},
    {.name = "tiles: full T=70 S=90 + decode shift", .B = 1, .T = 70, .S = 90, .H = 3, .Hk = 3, .D = 9, .Dv = 5,
     .scale = 0.3f},
    {.name = "key|value extras: GQA, window 4, sink, HCA", .B = 2, .T = 10, .S = 10, .H = 4, .Hk = 2, .D = 5,
     .Dv = 3, .causal = true, .window = 4, .sink = true, .extras = EXTRAS_HCA, .N = 3, .E = 3, .split_extra = true,
     .scale = 0.45f},
    {.name = "key|value extras: decode T=3, docs, CSA", .B = 1, .T = 3, .S = 3, .H = 4, .Hk = 4, .D = 16, .Dv = 16,
     .causal = true, .extras = EXTRAS_CSA, .N = 40, .E = 40, .split_extra = true, .scale = 0.25f,
     .docs = DOCS_PACKED},
    {.name = "key|value extras: T=6 > S=3, Dv > D", .B = 1, .T = 6, .S = 3, .H = 2, .Hk = 1, .D = 3, .Dv = 7,
     .causal = true, .extras = EXTRAS_CSA, .N = 4, .E = 3, .split_extra = true, .scale = 0.5f},
    {.name = "tiles: key|value extras, window 20, docs", .B = 1, .T = 70, .S = 70, .H = 4, .Hk = 2, .D = 12,
     .Dv = 20, .causal = true, .window = 20, .sink = true, .extras = EXTRAS_CSA, .N = 9, .E = 5,
     .split_extra = true, .scale = 0.3f, .docs = DOCS_PACKED},
};

/* ---------------------------------------------------------------- properties */

static bool all_zero(const double *a, int64_t n) {
    for (int64_t i = 0; i < n; i++)
        if (a[i] != 0) return false;
    return true;
}

static bool all_finite(const double *a, int64_t n) {
    for (int64_t i = 0; i < n; i++)
        if (!isfinite(a[i])) return false;
    return true;
}

/* Queries at negative positions (T > S, causal) see no key: without extras and sink their rows
 * have no distribution and give exact zeros, in the output and in dq, never NaN. With a sink the
 * sink takes all the mass and the output is zero too. */
static void test_fully_masked_rows(ts_backend *be, ts_dtype dt) {
    for (int with_sink = 0; with_sink <= 1; with_sink++) {
        attn_config c = {.name = "masked", .B = 1, .T = 5, .S = 2, .H = 2, .Hk = 1, .D = 3, .Dv = 3,
                         .causal = true, .sink = with_sink, .scale = 0.5f};
        attn_data x = make_data(&c, 77 + (uint64_t)with_sink, dt == TS_F32);
        attn_result r = run_op(&c, &x, dt, true, be);
        int64_t masked = c.T - c.S, row = c.H * c.Dv; /* queries 0..2 sit at positions -3..-1 */
        CHECK(r.out && all_zero(r.out, masked * row), "sink=%d: fully masked rows are not zero", with_sink);
        CHECK(r.out && !all_zero(r.out + masked * row, (c.T - masked) * row), "sink=%d: visible rows are zero",
              with_sink);
        CHECK(r.dq && all_zero(r.dq, masked * c.H * c.D), "sink=%d: dq of masked rows is not zero", with_sink);
        CHECK(r.out && r.dq && r.dk && all_finite(r.out, n_out(&c)) && all_finite(r.dq, n_q(&c)) &&
                  all_finite(r.dk, n_k(&c)),
              "sink=%d: NaN or Inf", with_sink);
        if (with_sink) CHECK(r.dsink && all_finite(r.dsink, c.H), "dsink not finite");
        free_result(&r);
        free_data(&c, &x);
    }
}

/* Changing the last key and value (position S-1) changes only the last query's output (the
 * only one that sees it), and leaves every earlier row bit for bit. */
static void test_causality(ts_backend *be) {
    attn_config c = {.name = "causality", .B = 2, .T = 12, .S = 12, .H = 2, .Hk = 1, .D = 4, .Dv = 4,
                     .causal = true, .sink = true, .scale = 0.5f};
    attn_data x = make_data(&c, 99, false);
    attn_result before = run_op(&c, &x, TS_F64, false, be);
    for (int64_t b = 0; b < c.B; b++)
        for (int64_t d = 0; d < c.D; d++) {
            x.k[((b * c.S + c.S - 1) * c.Hk) * c.D + d] += 0.5;
            x.v[((b * c.S + c.S - 1) * c.Hk) * c.Dv + d] -= 0.75;
        }
    attn_result after = run_op(&c, &x, TS_F64, false, be);
    int64_t row = c.H * c.Dv;
    for (int64_t b = 0; b < c.B && before.out && after.out; b++) {
        const double *o0 = before.out + b * c.T * row, *o1 = after.out + b * c.T * row;
        CHECK(memcmp(o0, o1, (size_t)((c.T - 1) * row) * sizeof(double)) == 0,
              "batch %lld: a future key changed an earlier output", (long long)b);
        CHECK(memcmp(o0 + (c.T - 1) * row, o1 + (c.T - 1) * row, (size_t)row * sizeof(double)) != 0,
              "batch %lld: the last query ignores the last key", (long long)b);
    }
    free_result(&before);
    free_result(&after);
    free_data(&c, &x);
}

static bool same_array(const double *a, const double *b, int64_t n) {
    if (!a || !b) return a == b;
    return memcmp(a, b, (size_t)n * sizeof(double)) == 0;
}

/* Forward splits rows, backward splits (batch, kv head) pairs with dsink summed afterwards:
 * results must not depend on the thread count at all. */
static void test_thread_count_invariance(void) {
    attn_config c = {.name = "threads", .B = 3, .T = 21, .S = 21, .H = 4, .Hk = 2, .D = 5, .Dv = 5,
                     .causal = true, .window = 6, .sink = true, .extras = EXTRAS_CSA, .N = 5, .E = 3,
                     .scale = 0.45f};
    attn_data x = make_data(&c, 1234, false);
    attn_result base = {0};
    for (int threads = 1; threads <= 3; threads++) {
        ts_backend *be = NULL;
        CHECK(ts_backend_cpu_ref_new(threads, &be) == TS_OK, "backend with %d threads", threads);
        if (!be) continue;
        attn_result r = run_op(&c, &x, TS_F64, true, be);
        if (threads == 1) {
            base = r;
        } else {
            bool same = same_array(r.out, base.out, n_out(&c)) && same_array(r.dq, base.dq, n_q(&c)) &&
                        same_array(r.dk, base.dk, n_k(&c)) && same_array(r.dv, base.dv, n_v(&c)) &&
                        same_array(r.dsink, base.dsink, c.H) && same_array(r.dextra, base.dextra, n_extra(&c));
            CHECK(same, "%d threads give results different from 1 thread", threads);
            free_result(&r);
        }
        ts_backend_free(be);
    }
    free_result(&base);
    free_data(&c, &x);
}

static long peak_rss_kb(void) {
    struct rusage u;
    getrusage(RUSAGE_SELF, &u);
    return u.ru_maxrss; /* kilobytes on Linux */
}

/* The planned arena of forward + backward at T = S = t (H = 1, D = 16). */
static size_t planned_arena(ts_backend *be, ts_dtype dt, int64_t t) {
    attn_config c = {.B = 1, .T = t, .S = t, .H = 1, .Hk = 1, .D = 16, .Dv = 16, .causal = true, .scale = 0.25f};
    attn_graph ag = build_graph(&c, dt, true);
    ts_plan_stats st = {0};
    CHECK_OK(ts_graph_alloc(ag.g, be, NULL, &st), ag.g);
    ts_graph_free(ag.g);
    return st.arena_bytes;
}

/* Memory stays linear in T: the planned arena doubles (not quadruples) with T, and computing
 * forward + backward at T = S = 2048 raises the process peak by about the arena, far below one
 * T x S matrix (16 MiB in f32, 32 MiB in f64). Runs first (the f32 one before the f64 one), so
 * that earlier tests do not hide the peak. */
static void test_memory_is_linear(ts_backend *be, ts_dtype dt) {
    const int64_t T = 2048, D = 16;
    size_t half = planned_arena(be, dt, T / 2), full = planned_arena(be, dt, T);
    double ratio = (double)full / (double)half;
    size_t txs = ts_dtype_bytes(dt, T * T);
    CHECK(ratio < 2.2, "arena grows %.2fx when T doubles (%zu -> %zu bytes): not linear", ratio, half, full);
    CHECK(full < txs / 8, "arena %zu bytes at T = S = %lld is not far below a T x S matrix (%zu)", full, (long long)T,
          txs);

    attn_config c = {.name = "memory", .B = 1, .T = T, .S = T, .H = 1, .Hk = 1, .D = D, .Dv = D, .causal = true,
                     .scale = 0.25f};
    attn_data x = make_data(&c, 5, dt == TS_F32);
    attn_graph ag = build_graph(&c, dt, true);
    CHECK_OK(ts_graph_alloc(ag.g, be, NULL, NULL), ag.g);
    CHECK_OK(write_inputs(&ag, &x), ag.g);
    long before = peak_rss_kb();
    double t0 = ts_time_seconds();
    CHECK_OK(ts_graph_compute(ag.g), ag.g);
    double seconds = ts_time_seconds() - t0;
    long grown_kb = peak_rss_kb() - before, limit_kb = (long)(full / 1024) + 8 * 1024;
    CHECK(grown_kb < limit_kb, "computing T = S = %lld raised the peak RSS by %ld KiB (limit %ld KiB: arena + 8 MiB)",
          (long long)T, grown_kb, limit_kb);
    printf("  memory %s: arena %zu KiB at T = S = %lld (%.2fx of T/2), peak RSS +%ld KiB during compute "
           "(a T x S matrix: %zu KiB); forward + backward %.2f s\n",
           ts_dtype_name(dt), full / 1024, (long long)T, ratio, grown_kb, txs / 1024, seconds);
    ts_graph_free(ag.g);
    free_data(&c, &x);
}

/* A document mask is the same as running each document as its own sequence: key_start set to
 * the segment starts of a packed row must give, on each segment's rows, the output and the q, k,
 * v gradients of that segment computed alone (T = S = its length, no key_start), and dsink must
 * be the sum of the segments' dsinks. Segments of 13, 1, 17 and 9 positions; causal, window 7,
 * sink, GQA. */
static void test_segments_are_sequences(ts_backend *be, ts_dtype dt, double tol, const char *label) {
    static const int64_t bounds[] = {0, 13, 14, 31, 40};
    const int n_seg = 4;
    attn_config whole = {.name = "segments", .B = 1, .T = 40, .S = 40, .H = 4, .Hk = 2, .D = 8, .Dv = 6,
                         .causal = true, .window = 7, .sink = true, .scale = 0.4f, .docs = DOCS_PACKED};
    attn_data x = make_data(&whole, 4242, dt == TS_F32);
    for (int sg = 0; sg < n_seg; sg++)
        for (int64_t t = bounds[sg]; t < bounds[sg + 1]; t++) x.key_start[t] = bounds[sg];
    attn_result all = run_op(&whole, &x, dt, true, be);
    double *dsink_sum = calloc((size_t)whole.H, sizeof(double)), worst = 0;
    for (int sg = 0; sg < n_seg && all.out; sg++) {
        int64_t a = bounds[sg], len = bounds[sg + 1] - a;
        attn_config c = whole;
        c.T = c.S = len;
        c.docs = DOCS_NONE;
        attn_data part = {.q = x.q + a * c.H * c.D, .k = x.k + a * c.Hk * c.D, .v = x.v + a * c.Hk * c.Dv,
                          .sink = x.sink, .w = x.w + a * c.H * c.Dv};
        attn_result r = run_op(&c, &part, dt, true, be);
        char what[64];
        snprintf(what, sizeof what, "%s segment [%lld, %lld)", label, (long long)a, (long long)(a + len));
        worst = fmax(worst, compare(what, "output", r.out, all.out + a * c.H * c.Dv, n_out(&c), tol));
        worst = fmax(worst, compare(what, "dq", r.dq, all.dq + a * c.H * c.D, n_q(&c), tol));
        worst = fmax(worst, compare(what, "dk", r.dk, all.dk + a * c.Hk * c.D, n_k(&c), tol));
        worst = fmax(worst, compare(what, "dv", r.dv, all.dv + a * c.Hk * c.Dv, n_v(&c), tol));
        for (int64_t h = 0; h < c.H && r.dsink; h++) dsink_sum[h] += r.dsink[h];
        free_result(&r);
    }
    worst = fmax(worst, compare(label, "dsink (sum over segments)", dsink_sum, all.dsink, whole.H, tol));
    printf("  key_start = separate sequences, %-12s %s  max normwise error %.1e\n", label, ts_dtype_name(dt), worst);
    free(dsink_sum);
    free_result(&all);
    free_data(&whole, &x);
}

/* ---------------------------------------------------------------- constructor errors */

static bool has(const char *haystack, const char *needle) { return strstr(haystack, needle) != NULL; }

typedef enum { NO_EXTRAS, EXTRA_WITHOUT_IDX, EXTRAS_WITH_IDX, EXTRAS_ONE_WIDER } extras_given;

/* Builds attention on fresh f32 leaves shaped as given (plus a sink, extras [B, 3, Hk, D] - one
 * wider with EXTRAS_ONE_WIDER - and extra_idx [B, T, 2] of idx_type when asked) and expects
 * status `want` with a message containing every needle (NULL-terminated). */
static void expect_error(const char *what, const int64_t *qs, const int64_t *ks, const int64_t *vs, int32_t window,
                         const int64_t *sink_shape, extras_given extras, ts_dtype idx_type, ts_status want,
                         const char *const *needles) {
    ts_graph *g = ts_graph_new();
    ts_tensor *q = ts_new_tensor(g, TS_F32, 4, qs, "q"), *k = ts_new_tensor(g, TS_F32, 4, ks, "k");
    ts_tensor *v = ts_new_tensor(g, TS_F32, 4, vs, "v");
    ts_attention_params p = {.scale = 0.5f, .causal = true, .window = window};
    if (sink_shape) p.sink = ts_new_tensor(g, TS_F32, 1, sink_shape, "sink");
    if (extras != NO_EXTRAS)
        p.extra = ts_new_tensor_4d(g, TS_F32, ks[0], 3, ks[2], ks[3] + (extras == EXTRAS_ONE_WIDER), "extra");
    if (extras == EXTRAS_WITH_IDX || extras == EXTRAS_ONE_WIDER)
        p.extra_idx = ts_new_tensor_3d(g, idx_type, qs[0], qs[1], 2, "extra_idx");
    ts_tensor *out = ts_attention(g, q, k, v, &p);
    CHECK(out == NULL && ts_graph_status(g) == want, "%s: got %s (%s)", what, ts_status_name(ts_graph_status(g)),
          ts_graph_error(g));
    for (const char *const *n = needles; *n; n++)
        CHECK(has(ts_graph_error(g), *n), "%s: message lacks '%s': %s", what, *n, ts_graph_error(g));
    ts_graph_free(g);
}

#define SHAPE4(a, b, c, d) ((const int64_t[]){a, b, c, d})
#define NEEDLES(...) ((const char *const[]){__VA_ARGS__, NULL})

static void test_constructor_errors(ts_backend *be) {
    expect_error("k's D", SHAPE4(1, 4, 2, 8), SHAPE4(1, 4, 2, 7), SHAPE4(1, 4, 2, 8), 0, NULL, NO_EXTRAS, TS_I32,
                 TS_ERR_SHAPE, NEEDLES("attention", "'q' f32[1,4,2,8]", "'k' f32[1,4,2,7]", "[B, S, Hk, D]"));
    expect_error("v's S", SHAPE4(1, 4, 2, 8), SHAPE4(1, 4, 2, 8), SHAPE4(1, 5, 2, 8), 0, NULL, NO_EXTRAS, TS_I32,
                 TS_ERR_SHAPE, NEEDLES("'v' f32[1,5,2,8]", "Dv"));
    expect_error("H % Hk", SHAPE4(1, 4, 3, 8), SHAPE4(1, 4, 2, 8), SHAPE4(1, 4, 2, 8), 0, NULL, NO_EXTRAS, TS_I32,
                 TS_ERR_SHAPE, NEEDLES("multiple", "'q' f32[1,4,3,8]", "'k' f32[1,4,2,8]"));
    expect_error("sink shape", SHAPE4(1, 4, 2, 8), SHAPE4(1, 4, 1, 8), SHAPE4(1, 4, 1, 8), 0, (int64_t[]){1},
                 NO_EXTRAS, TS_I32, TS_ERR_SHAPE, NEEDLES("sink", "'sink' f32[1]"));
    expect_error("extra without extra_idx", SHAPE4(1, 4, 2, 8), SHAPE4(1, 4, 1, 8), SHAPE4(1, 4, 1, 8), 0, NULL,
                 EXTRA_WITHOUT_IDX, TS_I32, TS_ERR_INVALID_ARG, NEEDLES("extra_idx", "together"));
    expect_error("extras need Dv == D", SHAPE4(1, 4, 2, 8), SHAPE4(1, 4, 1, 8), SHAPE4(1, 4, 1, 6), 0, NULL,
                 EXTRAS_WITH_IDX, TS_I32, TS_ERR_SHAPE, NEEDLES("Dv", "'v' f32[1,4,1,6]"));
    expect_error("extra neither D nor D + Dv wide", SHAPE4(1, 4, 2, 8), SHAPE4(1, 4, 1, 8), SHAPE4(1, 4, 1, 6), 0,
                 NULL, EXTRAS_ONE_WIDER, TS_I32, TS_ERR_SHAPE, NEEDLES("D + Dv", "'extra' f32[1,3,1,9]"));
    expect_error("float extra_idx", SHAPE4(1, 4, 2, 8), SHAPE4(1, 4, 1, 8), SHAPE4(1, 4, 1, 8), 0, NULL,
                 EXTRAS_WITH_IDX, TS_F32, TS_ERR_DTYPE, NEEDLES("i32 or i64", "'extra_idx' f32[1,4,2]"));
    expect_error("negative window", SHAPE4(1, 4, 2, 8), SHAPE4(1, 4, 2, 8), SHAPE4(1, 4, 2, 8), -1, NULL, NO_EXTRAS,
                 TS_I32, TS_ERR_INVALID_ARG, NEEDLES("window"));

    /* ts_op_node checks the compact source list against ip[2] / ip[3] */
    ts_graph *g = ts_graph_new();
    ts_tensor *q = ts_new_tensor_4d(g, TS_F32, 1, 4, 2, 8, "q"), *k = ts_new_tensor_4d(g, TS_F32, 1, 4, 2, 8, "k");
    int32_t ip[4] = {1, 0, 1, 0}; /* says: a sink follows */
    float fp[1] = {0.5f};
    ts_tensor *out = ts_op_node(g, TS_OP_ATTENTION, (ts_tensor *[]){q, k, k}, 3, ip, 4, fp, 1);
    CHECK(out == NULL && ts_graph_status(g) == TS_ERR_INVALID_ARG && has(ts_graph_error(g), "expected 4"),
          "op_node source count: %s", ts_graph_error(g));
    ts_graph_free(g);

    /* an extra_idx value outside -1..N-1 is refused at compute, naming value and position */
    g = ts_graph_new();
    q = ts_new_tensor_4d(g, TS_F64, 1, 2, 1, 2, "q");
    k = ts_new_tensor_4d(g, TS_F64, 1, 2, 1, 2, "k");
    ts_tensor *extra = ts_new_tensor_4d(g, TS_F64, 1, 3, 1, 2, "extra");
    ts_tensor *idx = ts_new_tensor_3d(g, TS_I32, 1, 2, 2, "extra_idx");
    ts_attention_params p = {.scale = 1, .extra = extra, .extra_idx = idx};
    out = ts_set_output(ts_attention(g, q, k, k, &p));
    CHECK_OK(ts_graph_alloc(g, be, NULL, NULL), g);
    double zeros[6] = {0};
    int32_t bad[4] = {0, -1, 3, 1};
    ts_tensor_write(q, zeros, 4 * sizeof(double));
    ts_tensor_write(k, zeros, 4 * sizeof(double));
    ts_tensor_write(extra, zeros, 6 * sizeof(double));
    ts_tensor_write(idx, bad, sizeof bad);
    CHECK(ts_graph_compute(g) == TS_ERR_RANGE && has(ts_graph_error(g), "extra_idx value 3 at [0, 1, 0]"),
          "index out of range: %s", ts_graph_error(g));
    ts_graph_free(g);

    /* the backward buffer: f32 for low-precision inputs, dq | dk | dv | dsink | dextra long */
    g = ts_graph_new();
    q = ts_new_tensor_4d(g, TS_F16, 2, 3, 4, 8, "q");
    k = ts_new_tensor_4d(g, TS_F16, 2, 5, 2, 8, "k");
    ts_tensor *v = ts_new_tensor_4d(g, TS_F16, 2, 5, 2, 8, "v"), *sink = ts_new_tensor_1d(g, TS_F32, 4, "sink");
    extra = ts_new_tensor_4d(g, TS_F16, 2, 3, 2, 8, "extra");
    idx = ts_new_tensor_3d(g, TS_I64, 2, 3, 2, "extra_idx");
    ts_tensor *dout = ts_new_tensor_4d(g, TS_F16, 2, 3, 4, 8, "dout");
    ts_tensor *o = ts_new_tensor_4d(g, TS_F16, 2, 3, 4, 8, "out");
    int32_t bip[4] = {1, 0, 1, 1};
    ts_tensor *back = ts_op_node(g, TS_OP_ATTENTION_BACK, (ts_tensor *[]){q, k, v, sink, extra, idx, dout, o}, 8, bip,
                                 4, fp, 1);
    CHECK(back && back->dtype == TS_F32 && back->ndim == 1 && back->shape[0] == 192 + 160 + 160 + 4 + 96,
          "attention_back buffer: %s", back ? "wrong dtype or length" : ts_graph_error(g));
    ts_tensor *short_out = ts_new_tensor_4d(g, TS_F16, 2, 2, 4, 8, "short_out");
    back = ts_op_node(g, TS_OP_ATTENTION_BACK, (ts_tensor *[]){q, k, v, sink, extra, idx, dout, short_out}, 8, bip, 4,
                      fp, 1);
    CHECK(!back && ts_graph_status(g) == TS_ERR_SHAPE && has(ts_graph_error(g), "dout and out must be [B, T, H, Dv]") &&
              has(ts_graph_error(g), "'short_out' f16[2,2,4,8]"),
          "attention_back with an out of the wrong shape: %s", ts_graph_error(g));
    ts_graph_free(g);
}

/* ---------------------------------------------------------------- the optimized "cpu" backend */

static const attn_config *config_named(const char *name) {
    for (size_t i = 0; i < sizeof configs / sizeof configs[0]; i++)
        if (!strcmp(configs[i].name, name)) return &configs[i];
    return NULL;
}

/* The flash-style kernel must really run on f32 graphs (else every comparison with it would
 * compare the reference with itself), and hand f64 and transposed views to the reference. It
 * also checks extra_idx values, so the inputs are written first. */
static void check_fast_path_on(ts_backend *fast, const attn_config *c) {
    for (int f64 = 0; f64 <= 1 && c; f64++) {
        attn_data x = make_data(c, 11, !f64);
        attn_graph ag = build_graph(c, f64 ? TS_F64 : TS_F32, true);
        CHECK_OK(ts_graph_alloc(ag.g, fast, NULL, NULL), ag.g);
        CHECK_OK(write_inputs(&ag, &x), ag.g);
        free_data(c, &x);
        int seen = 0;
        for (int i = 0; i < ts_graph_n_nodes(ag.g); i++) {
            ts_tensor *n = ts_graph_node(ag.g, i);
            if (n->op != TS_OP_ATTENTION && n->op != TS_OP_ATTENTION_BACK) continue;
            seen++;
            CHECK(ts_fast_attention_applies(n) == !f64, "%s: %s %s: fast path %s", c->name, ts_op_name(n->op),
                  f64 ? "f64" : "f32", f64 ? "taken" : "not taken");
        }
        CHECK(seen == 2, "expected attention and attention_back nodes, saw %d", seen);
        ts_graph_free(ag.g);
    }
}

static void test_fast_path_taken(ts_backend *fast) {
    check_fast_path_on(fast, config_named("tiles: window 40 + docs + K=V + CSA"));
    check_fast_path_on(fast, config_named("tiles: key|value extras, window 20, docs"));
    ts_graph *g = ts_graph_new(); /* q as a transposed view: no unit stride on its last axis */
    ts_tensor *qt = ts_new_tensor_4d(g, TS_F32, 1, 4, 8, 2, "q^T"), *k = ts_new_tensor_4d(g, TS_F32, 1, 4, 2, 8, "k");
    ts_attention_params p = {.scale = 0.5f, .causal = true};
    ts_tensor *out = ts_set_output(ts_attention(g, ts_transpose(g, qt, -1, -2), k, k, &p));
    CHECK_OK(ts_graph_alloc(g, fast, NULL, NULL), g);
    CHECK(out && !ts_fast_attention_applies(out), "a transposed q takes the fast path");
    ts_graph_free(g);
}

/* Every instruction-set tier of the flash-style kernel (AVX2 + FMA and plain C here) against
 * the naive implementation; f32 accumulation, so a looser bound than the reference's (seen:
 * below 1e-6). */
static void test_fast_against_naive(ts_backend *fast) {
    ts_gemm_tier tiers[TS_GEMM_TIER_COUNT], saved = ts_gemm_tier_active();
    int n = ts_gemm_tiers_here(tiers);
    for (int i = 0; i < n; i++) {
        CHECK(ts_gemm_tier_set(tiers[i]), "cannot select tier %s", ts_gemm_tier_to_name(tiers[i]));
        printf("flash-style kernel of the cpu backend, tier %s, vs the naive implementation:\n",
               ts_gemm_tier_to_name(tiers[i]));
        for (size_t c = 0; c < sizeof configs / sizeof configs[0]; c++)
            test_against_naive(&configs[c], TS_F32, fast, 1e-5);
        test_segments_are_sequences(fast, TS_F32, 1e-5, "cpu f32");
    }
    ts_gemm_tier_set(saved);
}

/* Items are handed to threads dynamically, but each output element is summed in a fixed order
 * (dk and dv by one owner, dq by the key tiles taking turns in order): 1, 2 and 3 threads must
 * agree bit for bit. */
static void fast_thread_count_invariance_on(const attn_config *c) {
    attn_data x = make_data(c, 4321, true);
    attn_result base = {0};
    for (int threads = 1; threads <= 3 && c; threads++) {
        ts_backend *be = NULL;
        CHECK(ts_backend_cpu_new(threads, &be) == TS_OK, "cpu backend with %d threads", threads);
        if (!be) continue;
        attn_result r = run_op(c, &x, TS_F32, true, be);
        if (threads == 1) {
            base = r;
        } else {
            bool same = same_array(r.out, base.out, n_out(c)) && same_array(r.dq, base.dq, n_q(c)) &&
                        same_array(r.dk, base.dk, n_k(c)) && same_array(r.dv, base.dv, n_v(c)) &&
                        same_array(r.dsink, base.dsink, c->H) &&
                        same_array(r.dextra, base.dextra, n_extra(c));
            CHECK(same, "cpu backend: %d threads give results different from 1 thread", threads);
            free_result(&r);
        }
        ts_backend_free(be);
    }
    free_result(&base);
    free_data(c, &x);
}

static void test_fast_thread_count_invariance(void) {
    fast_thread_count_invariance_on(config_named("tiles: causal T=S=150 D=24 Dv=16 + sink"));
    fast_thread_count_invariance_on(config_named("tiles: window 40 + docs + K=V + CSA"));
    fast_thread_count_invariance_on(config_named("tiles: key|value extras, window 20, docs"));
}

/* key_start's constructor checks: integer dtype and shape [B, T], each named. */
static void test_key_start_errors(void) {
    static const struct {
        const char *what;
        ts_dtype type;
        int ndim;
        int64_t shape[2];
        ts_status want;
        const char *needle;
    } cases[] = {
        {"float key_start", TS_F32, 2, {1, 4}, TS_ERR_DTYPE, "'key_start' f32[1,4]"},
        {"key_start of another T", TS_I32, 2, {1, 5}, TS_ERR_SHAPE, "key_start must be [B, T]"},
        {"1-D key_start", TS_I64, 1, {4}, TS_ERR_SHAPE, "'key_start' i64[4]"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        ts_graph *g = ts_graph_new();
        ts_tensor *q = ts_new_tensor_4d(g, TS_F32, 1, 4, 2, 8, "q"), *k = ts_new_tensor_4d(g, TS_F32, 1, 4, 1, 8, "k");
        ts_tensor *ks = ts_new_tensor(g, cases[i].type, cases[i].ndim, cases[i].shape, "key_start");
        ts_attention_params p = {.scale = 0.5f, .causal = true, .key_start = ks};
        ts_tensor *out = ts_attention(g, q, k, k, &p);
        CHECK(out == NULL && ts_graph_status(g) == cases[i].want && has(ts_graph_error(g), cases[i].needle),
              "%s: got %s (%s)", cases[i].what, ts_status_name(ts_graph_status(g)), ts_graph_error(g));
        ts_graph_free(g);
    }
}

int main(void) {
    ts_backend *be = NULL, *fast = NULL;
    CHECK(ts_backend_cpu_ref_new(2, &be) == TS_OK, "reference CPU backend");
    CHECK(ts_backend_cpu_new(2, &fast) == TS_OK, "optimized CPU backend");
    if (!be || !fast) return check_summary("test_attention");
    test_memory_is_linear(fast, TS_F32);
    test_memory_is_linear(be, TS_F64);
    printf("reference kernel vs a naive implementation (forward and all gradients):\n");
    for (size_t i = 0; i < sizeof configs / sizeof configs[0]; i++) {
        test_against_naive(&configs[i], TS_F64, be, 1e-12);
        test_against_naive(&configs[i], TS_F32, be, 2e-6); /* one rounding of each result (double inside) */
    }
    test_segments_are_sequences(be, TS_F64, 1e-12, "cpu-ref f64");
    test_fully_masked_rows(be, TS_F64);
    test_causality(be);
    test_thread_count_invariance();
    test_constructor_errors(be);
    test_key_start_errors();

    test_fast_path_taken(fast);
    test_fast_against_naive(fast);
    test_fully_masked_rows(fast, TS_F32);
    test_fast_thread_count_invariance();
    ts_backend_free(fast);
    ts_backend_free(be);
    return check_summary("test_attention");
}
