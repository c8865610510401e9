/* test_planner.c - the memory planner and executor (src/graph/plan.c) on the reference CPU
 * backend. The naive plan (every intermediate in its own region) is the oracle: a planned
 * graph must give bit-identical results, while using far less memory. Also checked here:
 * that no two live intermediates ever share bytes (except a real in-place), guard bytes
 * catching a kernel that writes out of bounds, clean errors for misuse, in-place on an
 * elementwise chain, tensor I/O through views and through a non-host-visible backend, graphs
 * sharing one arena. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "tessera/backend.h"

#define N_THREADS 2

/* ---------------------------------------------------------------- helpers */

/* Writes every leaf of g: floats ~ N(0, scale), integers uniform in [0, int_hi). The same
 * seed gives the same data in two graphs built by the same function. */
static void write_leaves(ts_graph *g, uint64_t seed, float scale, int64_t int_hi) {
    ts_rng rng;
    ts_rng_seed(&rng, seed);
    for (int i = 0; i < ts_graph_n_nodes(g); i++) {
        ts_tensor *t = ts_graph_node(g, i);
        if (t->op != TS_OP_NONE) continue;
        int64_t n = ts_nelements(t);
        if (t->dtype == TS_I32) {
            int32_t *v = malloc((size_t)n * sizeof *v);
            for (int64_t k = 0; k < n; k++) v[k] = (int32_t)(ts_rng_next(&rng) % (uint64_t)int_hi);
            CHECK_OK(ts_tensor_write(t, v, (size_t)n * sizeof *v), g);
            free(v);
        } else {
            float *v = malloc((size_t)n * sizeof *v);
            for (int64_t k = 0; k < n; k++) v[k] = (float)(ts_rng_normal(&rng) * scale);
            CHECK_OK(ts_tensor_write_f32(t, v, n), g);
            free(v);
        }
    }
}

/* The raw bytes of t (caller frees). */
static void *read_bytes(const ts_tensor *t) {
    size_t n = ts_nbytes(t);
    void *p = malloc(n);
    ts_status s = ts_tensor_read(t, p, n);
    CHECK(s == TS_OK, "reading %s: %s", t->name, ts_status_name(s));
    return p;
}

static bool same_bytes(const ts_tensor *a, const ts_tensor *b) {
    if (ts_nbytes(a) != ts_nbytes(b)) return false;
    void *pa = read_bytes(a), *pb = read_bytes(b);
    bool same = memcmp(pa, pb, ts_nbytes(a)) == 0;
    free(pa);
    free(pb);
    return same;
}

static ts_tensor *root_of(ts_tensor *t) { return t->view_src ? t->view_src : t; }
static bool is_intermediate(const ts_tensor *t) { return t->op != TS_OP_NONE && !t->view_src; }

/* The planner's core promise, checked from the outside: two intermediates alive at the same
 * time never share a byte, unless the later one is an in-place overwrite of the earlier one at
 * the node where the earlier one dies. Liveness is recomputed here from the graph. Also checks
 * that every intermediate is aligned to 64 bytes. Returns the number of violations. */
static int check_no_live_overlap(ts_graph *g) {
    int n = ts_graph_n_nodes(g), bad = 0;
    int *last = malloc((size_t)n * sizeof *last);
    for (int i = 0; i < n; i++) last[i] = i;
    for (int i = 0; i < n; i++) {
        ts_tensor *t = ts_graph_node(g, i);
        for (int k = 0; k < t->n_src; k++) {
            if (!t->src[k]) continue;
            int r = root_of(t->src[k])->id;
            if (last[r] < i) last[r] = i;
        }
        if (t->flags & TS_FLAG_OUTPUT) last[root_of(t)->id] = n;
    }
    for (int i = 0; i < n; i++) {
        ts_tensor *a = ts_graph_node(g, i);
        if (!is_intermediate(a)) continue;
        if (a->buffer_offset % 64) {
            bad++;
            fprintf(stderr, "  %s (node %d) at unaligned offset %zu\n", a->name, i, a->buffer_offset);
        }
        for (int j = i + 1; j < n && j <= last[i]; j++) {
            ts_tensor *b = ts_graph_node(g, j);
            if (!is_intermediate(b) || b->buffer != a->buffer) continue;
            size_t a0 = a->buffer_offset, a1 = a0 + ts_nbytes(a), b0 = b->buffer_offset, b1 = b0 + ts_nbytes(b);
            if (a1 <= b0 || b1 <= a0) continue;
            bool reads_a = false;
            for (int k = 0; k < b->n_src; k++) reads_a |= b->src[k] == a;
            bool inplace = last[i] == j && reads_a && a0 == b0 && ts_nbytes(a) == ts_nbytes(b);
            if (!inplace) {
                bad++;
                fprintf(stderr, "  node %d (%s, live to %d) overlaps node %d (%s)\n", i, ts_op_name(a->op), last[i], j,
                        ts_op_name(b->op));
            }
        }
    }
    free(last);
    return bad;
}

/* A graph with its outputs, built by one of the functions below. */
typedef struct {
    ts_graph *g;
    ts_tensor *out[8];
    int n_out;
    ts_plan_stats stats;
} built;

typedef void (*build_fn)(built *b);

static ts_status build_and_alloc(built *b, build_fn fn, ts_backend *be, ts_plan_options opts) {
    memset(b, 0, sizeof *b);
    b->g = ts_graph_new();
    fn(b);
    CHECK(ts_graph_status(b->g) == TS_OK, "building: %s", ts_graph_error(b->g));
    ts_status s = ts_graph_alloc(b->g, be, &opts, &b->stats);
    CHECK(s == TS_OK, "alloc: %s %s", ts_status_name(s), ts_graph_error(b->g));
    return s;
}

/* ---------------------------------------------------------------- (a) a mixed graph */

/* Diamond, broadcasts along rows and columns, views of intermediates (transpose, slice of a
 * slice, reshape), an intermediate read last through a view of a view, an add that reads its
 * own input through a broadcast view (must not run in place), in-place-capable chains and
 * several outputs, one of them a view. */
static void build_mixed(built *b) {
    ts_graph *g = b->g;
    ts_tensor *x = ts_new_tensor_2d(g, TS_F32, 8, 16, "x");
    ts_tensor *w = ts_new_tensor_2d(g, TS_F32, 16, 16, "w");
    ts_tensor *bias = ts_new_tensor_1d(g, TS_F32, 16, "bias");
    ts_tensor *col = ts_new_tensor_2d(g, TS_F32, 8, 1, "col");

    /* read only much later, and only through a view of a view */
    ts_tensor *early = ts_set_name(ts_exp(g, ts_scale(g, x, 0.1f)), "early");
    ts_tensor *early_view = ts_slice(g, ts_transpose(g, early, 0, 1), 0, 4, 8); /* [8,8] */

    ts_tensor *h = ts_set_name(ts_add(g, ts_matmul(g, x, w, false, false), bias), "h");
    ts_tensor *left = ts_relu(g, h), *right = ts_sigmoid(g, h);        /* the diamond */
    ts_tensor *m = ts_set_name(ts_mul(g, left, right), "m");
    ts_tensor *mc = ts_set_name(ts_mul(g, m, col), "mc");              /* column broadcast */

    ts_tensor *p = ts_matmul(g, ts_transpose(g, mc, 0, 1), x, false, false); /* [16,16] via a view */
    ts_tensor *window = ts_slice(g, ts_slice(g, p, 0, 2, 8), 1, 3, 8);       /* view of a view [8,8] */
    ts_tensor *e = ts_set_name(ts_exp(g, ts_scale(g, window, 0.25f)), "e");
    ts_tensor *rows = ts_sum(g, ts_reshape_2d(g, e, 4, 16), 1, true);        /* [4,1] */

    ts_tensor *chain = ts_clamp(g, ts_scale(g, mc, 2.0f), -3.0f, 3.0f);
    chain = ts_add(g, ts_sigmoid(g, ts_exp(g, chain)), bias);
    chain = ts_set_name(ts_sub(g, chain, ts_silu(g, h)), "chain");

    ts_tensor *fresh = ts_set_name(ts_scale(g, chain, 3.0f), "fresh");
    ts_tensor *spread = ts_set_name(ts_add(g, fresh, ts_slice(g, fresh, 0, 0, 1)), "spread");

    b->out[b->n_out++] = ts_set_output(ts_set_name(p, "p"));
    b->out[b->n_out++] = ts_set_output(ts_set_name(rows, "rows"));
    b->out[b->n_out++] = ts_set_output(ts_set_name(ts_transpose(g, spread, 0, 1), "spread_t"));
    b->out[b->n_out++] = ts_set_output(ts_set_name(ts_mul(g, e, e), "e2"));
    b->out[b->n_out++] = ts_set_output(ts_set_name(ts_sub(g, e, early_view), "late"));
}

static void test_mixed_planned_vs_naive(ts_backend *be) {
    built plan, naive;
    if (build_and_alloc(&plan, build_mixed, be, (ts_plan_options){0}) != TS_OK) return;
    if (build_and_alloc(&naive, build_mixed, be, (ts_plan_options){.naive = true}) != TS_OK) return;
    write_leaves(plan.g, 7, 0.5f, 1);
    write_leaves(naive.g, 7, 0.5f, 1);
    CHECK_OK(ts_graph_compute(plan.g), plan.g);
    CHECK_OK(ts_graph_compute(plan.g), plan.g); /* a second run changes nothing */
    CHECK_OK(ts_graph_compute(naive.g), naive.g);
    for (int i = 0; i < plan.n_out; i++)
        CHECK(same_bytes(plan.out[i], naive.out[i]), "mixed graph: output %s differs planned vs naive",
              plan.out[i]->name);

    printf("planner: mixed graph: %d intermediates, %d in place, arena %zu bytes, sum %zu bytes\n",
           plan.stats.n_intermediates, plan.stats.n_inplace, plan.stats.arena_bytes, plan.stats.naive_bytes);
    CHECK(check_no_live_overlap(plan.g) == 0, "mixed graph: live intermediates overlap");
    CHECK(plan.stats.arena_bytes < plan.stats.naive_bytes, "mixed: arena %zu not below sum %zu",
          plan.stats.arena_bytes, plan.stats.naive_bytes);
    CHECK(plan.stats.n_inplace > 0, "mixed: no in-place at all");
    CHECK(naive.stats.arena_bytes == naive.stats.naive_bytes && naive.stats.n_inplace == 0,
          "naive plan reuses memory: arena %zu, sum %zu, in-place %d", naive.stats.arena_bytes,
          naive.stats.naive_bytes, naive.stats.n_inplace);
    CHECK(plan.stats.n_intermediates == naive.stats.n_intermediates && plan.stats.leaf_bytes == naive.stats.leaf_bytes,
          "mixed: intermediates %d/%d, leaf bytes %zu/%zu", plan.stats.n_intermediates, naive.stats.n_intermediates,
          plan.stats.leaf_bytes, naive.stats.leaf_bytes);

    /* spread = fresh + fresh[0:1,:] broadcast: writing over fresh would corrupt row 0 before
     * the other rows read it, so the planner must not have done it in place. */
    ts_tensor *spread = plan.out[2]->view_src, *fresh = spread->src[0];
    CHECK(spread->data != fresh->data, "spread was computed in place over an input it reads through a view");
    /* Leaves are never overwritten in place and views point into their root. */
    ts_tensor *x = ts_graph_node(plan.g, 0);
    CHECK(x->buffer != NULL && x->data != NULL && x->buffer_offset % 64 == 0, "leaf x has no aligned storage");
    CHECK((char *)plan.out[2]->data == (char *)spread->data, "a transpose view does not point at its root");
    ts_graph_free(plan.g);
    ts_graph_free(naive.g);
}

/* ---------------------------------------------------------------- (b) deep MLP training */

enum { MLP_LAYERS = 8, MLP_WIDTH = 64, MLP_BATCH = 32 };

static void build_mlp(built *b) {
    ts_graph *g = b->g;
    ts_tensor *h = ts_new_tensor_2d(g, TS_F32, MLP_BATCH, MLP_WIDTH, "x");
    ts_tensor *targets = ts_new_tensor_1d(g, TS_I32, MLP_BATCH, "targets");
    for (int l = 0; l < MLP_LAYERS; l++) {
        ts_tensor *w = ts_set_name(ts_set_param(ts_new_tensor_2d(g, TS_F32, MLP_WIDTH, MLP_WIDTH, NULL)), "w%d", l);
        ts_tensor *bias = ts_set_name(ts_set_param(ts_new_tensor_1d(g, TS_F32, MLP_WIDTH, NULL)), "b%d", l);
        h = ts_add(g, ts_matmul(g, h, w, false, false), bias);
        if (l + 1 < MLP_LAYERS) h = ts_relu(g, h);
    }
    ts_tensor *loss = ts_set_output(ts_set_name(ts_cross_entropy(g, h, targets), "loss"));
    b->out[b->n_out++] = loss;
    ts_status s = ts_graph_backward(g, loss);
    CHECK(s == TS_OK, "backward: %s %s", ts_status_name(s), ts_graph_error(g));
}

/* Loss and the gradient of every parameter agree bit for bit. */
static void check_mlp_same(const built *a, const built *b, const char *what) {
    CHECK(same_bytes(a->out[0], b->out[0]), "%s: loss differs", what);
    int n = ts_graph_n_nodes(a->g), grads = 0;
    for (int i = 0; i < n; i++) {
        ts_tensor *pa = ts_graph_node(a->g, i), *pb = ts_graph_node(b->g, i);
        if (!(pa->flags & TS_FLAG_PARAM)) continue;
        ts_tensor *ga = ts_grad(pa), *gb = ts_grad(pb);
        CHECK(ga && gb, "%s: parameter %s has no gradient", what, pa->name);
        if (!ga || !gb) continue;
        CHECK(same_bytes(ga, gb), "%s: gradient of %s differs", what, pa->name);
        grads++;
    }
    CHECK(grads == 2 * MLP_LAYERS, "%s: %d gradients compared", what, grads);
}

static void test_mlp_training_graph(ts_backend *be) {
    built plan, naive;
    if (build_and_alloc(&plan, build_mlp, be, (ts_plan_options){0}) != TS_OK) return;
    if (build_and_alloc(&naive, build_mlp, be, (ts_plan_options){.naive = true}) != TS_OK) return;
    double ratio = (double)plan.stats.arena_bytes / (double)plan.stats.naive_bytes;
    printf("planner: deep MLP training graph: planned peak %zu bytes, sum of intermediates %zu bytes (ratio %.3f)\n",
           plan.stats.arena_bytes, plan.stats.naive_bytes, ratio);
    printf("planner:   %d nodes, %d intermediates, %d in place, %zu leaf bytes\n", ts_graph_n_nodes(plan.g),
           plan.stats.n_intermediates, plan.stats.n_inplace, plan.stats.leaf_bytes);
    CHECK(ratio < 0.5, "planned peak %zu is not well below the sum %zu", plan.stats.arena_bytes, plan.stats.naive_bytes);
    CHECK(check_no_live_overlap(plan.g) == 0, "MLP graph: live intermediates overlap");

    write_leaves(plan.g, 11, 0.2f, MLP_WIDTH);
    write_leaves(naive.g, 11, 0.2f, MLP_WIDTH);
    CHECK_OK(ts_graph_compute(plan.g), plan.g);
    CHECK_OK(ts_graph_compute(naive.g), naive.g);
    float loss = 0;
    CHECK_OK(ts_tensor_read_f32(plan.out[0], &loss, 1), plan.g);
    CHECK(isfinite(loss) && loss > 0, "MLP loss %g", (double)loss);
    check_mlp_same(&plan, &naive, "MLP planned vs naive");

    /* Again with guards: the planner keeps reusing memory (only between same-size tensors, so
     * every guard stays a guard), results are unchanged and no kernel wrote out of bounds. */
    built guarded;
    if (build_and_alloc(&guarded, build_mlp, be, (ts_plan_options){.guard_bytes = 64}) == TS_OK) {
        write_leaves(guarded.g, 11, 0.2f, MLP_WIDTH);
        CHECK_OK(ts_graph_compute(guarded.g), guarded.g);
        CHECK_OK(ts_graph_check_guards(guarded.g), guarded.g);
        check_mlp_same(&guarded, &naive, "MLP guarded vs naive");
        CHECK(check_no_live_overlap(guarded.g) == 0, "guarded MLP graph: live intermediates overlap");
        CHECK(guarded.stats.arena_bytes < guarded.stats.naive_bytes, "guarded plan reuses nothing: %zu vs %zu",
              guarded.stats.arena_bytes, guarded.stats.naive_bytes);
        ts_graph_free(guarded.g);
    }
    ts_graph_free(plan.g);
    ts_graph_free(naive.g);
}

/* ---------------------------------------------------------------- (c) guards */

/* Test doubles: the reference kernel, then one element written just past the end (exp) or
 * just before the start (sqrt) of the output. */
static ts_status exp_writes_past_end(const ts_cpu_ctx *ctx, ts_tensor *dst) {
    ts_status s = ts_cpu_reference_kernels[TS_OP_EXP](ctx, dst);
    ((float *)dst->data)[ts_nelements(dst)] = 1234.5f;
    return s;
}

static ts_status sqrt_writes_before_start(const ts_cpu_ctx *ctx, ts_tensor *dst) {
    ts_status s = ts_cpu_reference_kernels[TS_OP_SQRT](ctx, dst);
    ((float *)dst->data)[-1] = -1.0f;
    return s;
}

static void build_one_exp(built *b) {
    ts_tensor *x = ts_new_tensor_2d(b->g, TS_F32, 5, 7, "x");
    ts_tensor *y = ts_set_name(ts_exp(b->g, ts_scale(b->g, x, 0.5f)), "victim_exp");
    b->out[b->n_out++] = ts_set_output(ts_relu(b->g, y));
}

static void build_one_sqrt(built *b) {
    ts_tensor *x = ts_new_tensor_2d(b->g, TS_F32, 3, 5, "x");
    ts_tensor *y = ts_set_name(ts_sqrt(b->g, ts_exp(b->g, x)), "victim_sqrt");
    b->out[b->n_out++] = ts_set_output(ts_scale(b->g, y, 2.0f));
}

static void expect_guard_hit(ts_backend *bad, build_fn fn, const char *victim, const char *side) {
    built b;
    if (build_and_alloc(&b, fn, bad, (ts_plan_options){.guard_bytes = 64}) != TS_OK) return;
    write_leaves(b.g, 3, 1.0f, 1);
    CHECK_OK(ts_graph_compute(b.g), b.g);
    ts_status s = ts_graph_check_guards(b.g);
    const char *msg = ts_graph_error(b.g);
    CHECK(s == TS_ERR_INTERNAL, "out-of-bounds write not caught: %s", ts_status_name(s));
    CHECK(strstr(msg, victim) != NULL, "guard message does not name %s: %s", victim, msg);
    CHECK(strstr(msg, side) != NULL, "guard message does not say '%s': %s", side, msg);
    printf("planner: caught: %s\n", msg);
    ts_graph_free(b.g);
}

static void test_guards(ts_backend *be) {
    built b, naive;
    if (build_and_alloc(&b, build_mixed, be, (ts_plan_options){.guard_bytes = 64}) == TS_OK &&
        build_and_alloc(&naive, build_mixed, be, (ts_plan_options){.naive = true}) == TS_OK) {
        write_leaves(b.g, 5, 0.5f, 1);
        write_leaves(naive.g, 5, 0.5f, 1);
        CHECK_OK(ts_graph_compute(b.g), b.g);
        CHECK_OK(ts_graph_compute(naive.g), naive.g);
        CHECK_OK(ts_graph_check_guards(b.g), b.g);
        for (int i = 0; i < b.n_out; i++)
            CHECK(same_bytes(b.out[i], naive.out[i]), "guarded output %s differs", b.out[i]->name);
        CHECK(check_no_live_overlap(b.g) == 0, "guarded mixed graph: live intermediates overlap");
        CHECK_OK(ts_graph_check_guards(naive.g), naive.g); /* no guards asked for: nothing to report */
        ts_graph_free(b.g);
        ts_graph_free(naive.g);
    }

    ts_cpu_kernel kernels[TS_OP_COUNT] = {0};
    kernels[TS_OP_EXP] = exp_writes_past_end;
    kernels[TS_OP_SQRT] = sqrt_writes_before_start;
    ts_backend *bad = NULL;
    CHECK_OK(ts_backend_cpu_new_with_kernels("cpu-broken", N_THREADS, kernels, &bad), NULL);
    if (!bad) return;
    expect_guard_hit(bad, build_one_exp, "victim_exp", "after");
    expect_guard_hit(bad, build_one_sqrt, "victim_sqrt", "before");
    ts_backend_free(bad);
}

/* ---------------------------------------------------------------- (d) errors */

/* A backend whose buffers cannot be allocated, for the OOM path. */
static ts_status refuse_buffer(ts_backend *be, size_t size, ts_buffer **out) {
    *out = NULL;
    return TS_ERR_OOM;
}

static void test_errors(ts_backend *be) {
    /* compute before alloc */
    ts_graph *g = ts_graph_new();
    ts_tensor *a = ts_new_tensor_1d(g, TS_F32, 4, "a");
    ts_tensor *r = ts_set_output(ts_exp(g, a));
    CHECK(ts_graph_compute(g) == TS_ERR_STATE, "compute before alloc");
    CHECK(strstr(ts_graph_error(g), "not allocated") != NULL, "message: %s", ts_graph_error(g));
    CHECK(ts_graph_check_guards(g) == TS_ERR_STATE, "check_guards before alloc");
    float v[4] = {0, 1, 2, 3};
    CHECK(ts_tensor_write_f32(a, v, 4) == TS_ERR_STATE, "write before alloc");
    CHECK(ts_tensor_read_f32(r, v, 4) == TS_ERR_STATE, "read before alloc");
    ts_graph_free(g);

    /* alloc twice; building after alloc; I/O size checks */
    g = ts_graph_new();
    a = ts_new_tensor_1d(g, TS_F32, 4, "a");
    r = ts_set_output(ts_exp(g, a));
    CHECK_OK(ts_graph_alloc(g, be, NULL, NULL), g);
    CHECK(ts_graph_alloc(g, be, NULL, NULL) == TS_ERR_STATE, "second alloc accepted");
    CHECK(strstr(ts_graph_error(g), "already allocated") != NULL, "message: %s", ts_graph_error(g));
    CHECK(ts_add(g, a, r) == NULL, "a node was added after alloc");
    CHECK(ts_tensor_write(a, v, 3 * sizeof(float)) == TS_ERR_INVALID_ARG, "short write accepted");
    CHECK(ts_tensor_read_f32(r, v, 5) == TS_ERR_INVALID_ARG, "long read accepted");
    CHECK_OK(ts_tensor_write_f32(a, v, 4), g);
    CHECK_OK(ts_graph_compute(g), g); /* the recorded misuse does not stop a valid graph */
    float out[4];
    CHECK_OK(ts_tensor_read_f32(r, out, 4), g);
    CHECK(out[2] == (float)exp(2.0), "exp(2) = %g", (double)out[2]);
    ts_graph_free(g);

    /* building after alloc, on a graph with no other error: the message says why */
    g = ts_graph_new();
    a = ts_new_tensor_1d(g, TS_F32, 4, "a");
    CHECK_OK(ts_graph_alloc(g, be, NULL, NULL), g);
    CHECK(ts_relu(g, a) == NULL, "relu added after alloc");
    CHECK(ts_graph_status(g) == TS_ERR_STATE && strstr(ts_graph_error(g), "allocated") != NULL,
          "after-alloc build: %s %s", ts_status_name(ts_graph_status(g)), ts_graph_error(g));
    ts_graph_free(g);

    /* a construction error: alloc refuses, keeping the first message */
    g = ts_graph_new();
    ts_tensor *m = ts_new_tensor_2d(g, TS_F32, 2, 3, "m");
    ts_tensor *k = ts_new_tensor_2d(g, TS_F32, 4, 5, "k");
    CHECK(ts_matmul(g, m, k, false, false) == NULL, "bad matmul built");
    CHECK(ts_graph_alloc(g, be, NULL, NULL) == TS_ERR_STATE, "alloc of a broken graph");
    CHECK(strstr(ts_graph_error(g), "matmul") && strstr(ts_graph_error(g), "refused"), "message: %s",
          ts_graph_error(g));
    CHECK(ts_graph_compute(g) == TS_ERR_STATE, "compute of a broken graph");
    ts_graph_free(g);

    /* the backend cannot allocate: TS_ERR_OOM with the byte count, nothing half-done */
    ts_backend_iface iface = *be->iface;
    iface.buffer_alloc = refuse_buffer;
    ts_backend no_memory = {&iface, be->impl};
    g = ts_graph_new();
    a = ts_new_tensor_2d(g, TS_F32, 16, 16, "a");
    ts_set_output(ts_exp(g, a));
    CHECK(ts_graph_alloc(g, &no_memory, NULL, NULL) == TS_ERR_OOM, "alloc without memory");
    CHECK(strstr(ts_graph_error(g), "1024 bytes") != NULL, "OOM message: %s", ts_graph_error(g));
    CHECK(ts_graph_compute(g) == TS_ERR_STATE, "compute after a failed alloc");
    CHECK(a->buffer == NULL && a->data == NULL, "failed alloc left storage behind");
    ts_graph_free(g);

    /* NULLs and leaves bound twice */
    CHECK(ts_graph_alloc(NULL, be, NULL, NULL) == TS_ERR_INVALID_ARG, "NULL graph");
    CHECK(ts_graph_compute(NULL) == TS_ERR_INVALID_ARG, "NULL graph compute");
    ts_graph_free(NULL);
    g = ts_graph_new();
    a = ts_new_tensor_1d(g, TS_F32, 4, "a");
    CHECK(ts_graph_alloc(g, NULL, NULL, NULL) == TS_ERR_INVALID_ARG, "NULL backend");
    ts_graph_free(g);
    g = ts_graph_new();
    a = ts_new_tensor_1d(g, TS_F32, 4, "a");
    float host[4];
    CHECK_OK(ts_tensor_bind_host(a, host), NULL);
    CHECK(ts_tensor_bind_host(a, host) == TS_ERR_STATE, "leaf bound twice");
    CHECK(ts_tensor_bind_host(ts_exp(g, a), host) == TS_ERR_INVALID_ARG, "non-leaf bound");
    ts_graph_free(g);
}

/* ---------------------------------------------------------------- (e) in-place */

static void build_chain(built *b) {
    ts_graph *g = b->g;
    ts_tensor *x = ts_new_tensor_2d(g, TS_F32, 16, 32, "x");
    ts_tensor *y = ts_new_tensor_2d(g, TS_F32, 16, 32, "y");
    ts_tensor *c = ts_set_name(ts_scale(g, x, 0.5f), "c0"); /* over a leaf: never in place */
    c = ts_set_name(ts_exp(g, c), "c1");
    c = ts_set_name(ts_sigmoid(g, c), "c2");
    c = ts_set_name(ts_mul(g, c, y), "c3");
    c = ts_set_name(ts_add(g, c, c), "c4");
    c = ts_set_name(ts_silu(g, c), "c5");
    b->out[b->n_out++] = ts_set_output(c);
}

/* The chain's value computed here in double, as an independent check of the numbers. */
static double chain_expected(double x, double y) {
    double c = 1.0 / (1.0 + exp(-exp(0.5 * x)));
    c = 2.0 * (c * y);
    return c / (1.0 + exp(-c));
}

static void test_inplace(ts_backend *be) {
    built on, off;
    if (build_and_alloc(&on, build_chain, be, (ts_plan_options){0}) != TS_OK) return;
    if (build_and_alloc(&off, build_chain, be, (ts_plan_options){.no_inplace = true}) != TS_OK) return;
    printf("planner: elementwise chain: in-place %d of %d intermediates, arena %zu bytes (%zu without in-place)\n",
           on.stats.n_inplace, on.stats.n_intermediates, on.stats.arena_bytes, off.stats.arena_bytes);
    CHECK(on.stats.n_inplace == 5, "in-place count %d (expected exp, sigmoid, mul, add, silu)", on.stats.n_inplace);
    CHECK(off.stats.n_inplace == 0, "no_inplace still did %d", off.stats.n_inplace);
    CHECK(on.stats.arena_bytes < off.stats.arena_bytes, "in-place did not lower the peak: %zu vs %zu",
          on.stats.arena_bytes, off.stats.arena_bytes);
    CHECK(check_no_live_overlap(on.g) == 0, "chain: live intermediates overlap");

    ts_tensor *x = ts_graph_node(on.g, 0), *c0 = ts_graph_node(on.g, 2), *c5 = on.out[0];
    CHECK(c0->data != x->data, "scale ran in place over leaf x");
    CHECK(c5->data == c0->data, "the chain did not stay in c0's region");

    write_leaves(on.g, 21, 1.0f, 1);
    write_leaves(off.g, 21, 1.0f, 1);
    for (int run = 0; run < 2; run++) { /* recomputing over overwritten intermediates is fine */
        CHECK_OK(ts_graph_compute(on.g), on.g);
        CHECK_OK(ts_graph_compute(off.g), off.g);
        CHECK(same_bytes(on.out[0], off.out[0]), "run %d: in-place result differs from no_inplace", run);
    }
    float xs[16 * 32], ys[16 * 32], got[16 * 32];
    CHECK_OK(ts_tensor_read_f32(x, xs, 16 * 32), on.g);
    CHECK_OK(ts_tensor_read_f32(ts_graph_node(on.g, 1), ys, 16 * 32), on.g);
    CHECK_OK(ts_tensor_read_f32(c5, got, 16 * 32), on.g);
    int wrong = 0;
    for (int i = 0; i < 16 * 32; i++) {
        double want = chain_expected(xs[i], ys[i]);
        if (fabs(got[i] - want) > 1e-5 * (1.0 + fabs(want))) wrong++;
    }
    CHECK(wrong == 0, "%d chain values differ from the double-precision formula", wrong);
    ts_graph_free(on.g);
    ts_graph_free(off.g);
}

/* ---------------------------------------------------------------- tensor I/O */

/* Writing and reading through a transposed view of a leaf, a host-bound leaf and converted
 * (bf16) elements. */
static void test_tensor_io(ts_backend *be) {
    ts_graph *g = ts_graph_new();
    ts_tensor *a = ts_new_tensor_2d(g, TS_F32, 3, 4, "a");
    ts_tensor *at = ts_transpose(g, a, 0, 1);
    ts_tensor *h = ts_new_tensor_1d(g, TS_BF16, 6, "h");
    ts_tensor *bound = ts_new_tensor_1d(g, TS_F32, 5, "bound");
    float host[5] = {1, 2, 3, 4, 5};
    CHECK_OK(ts_tensor_bind_host(bound, host), g);
    ts_tensor *sum = ts_set_output(ts_add(g, bound, bound));
    CHECK_OK(ts_graph_alloc(g, be, NULL, NULL), g);
    CHECK(bound->data == host, "bound leaf moved");

    float t_in[12], a_out[12];
    for (int i = 0; i < 12; i++) t_in[i] = (float)i; /* at[i][j] = a[j][i] */
    CHECK_OK(ts_tensor_write_f32(at, t_in, 12), g);
    CHECK_OK(ts_tensor_read_f32(a, a_out, 12), g);
    int bad = 0;
    for (int r = 0; r < 3; r++)
        for (int c = 0; c < 4; c++) bad += a_out[r * 4 + c] != t_in[c * 3 + r];
    CHECK(bad == 0, "writing through a transposed view misplaced %d elements", bad);
    float t_out[12];
    CHECK_OK(ts_tensor_read_f32(at, t_out, 12), g);
    CHECK(memcmp(t_out, t_in, sizeof t_in) == 0, "reading a transposed view");

    float hv[6] = {1.0f, -2.5f, 0.15625f, 65536.0f, 0.0f, -0.0f}, hb[6];
    CHECK_OK(ts_tensor_write_f32(h, hv, 6), g);
    CHECK_OK(ts_tensor_read_f32(h, hb, 6), g);
    CHECK(memcmp(hv, hb, sizeof hv) == 0, "bf16 round trip of representable values");

    CHECK_OK(ts_graph_compute(g), g);
    float s[5];
    CHECK_OK(ts_tensor_read_f32(sum, s, 5), g);
    CHECK(s[0] == 2 && s[4] == 10, "host-bound leaf used: %g %g", (double)s[0], (double)s[4]);

    /* a second graph sharing a's storage (how weights are shared between train and eval) */
    ts_graph *g2 = ts_graph_new();
    ts_tensor *shared = ts_new_tensor_2d(g2, TS_F32, 3, 4, "shared");
    ts_tensor *too_big = ts_new_tensor_2d(g2, TS_F32, 3, 5, "too_big");
    CHECK(ts_tensor_bind(too_big, a->buffer, a->buffer->size - 4) == TS_ERR_RANGE, "bind past the buffer end");
    CHECK(ts_tensor_bind(shared, a->buffer, a->buffer_offset + 2) == TS_ERR_INVALID_ARG, "misaligned bind");
    CHECK_OK(ts_tensor_bind(shared, a->buffer, a->buffer_offset), g2);
    ts_tensor *twice = ts_set_output(ts_scale(g2, shared, 2.0f));
    CHECK_OK(ts_graph_alloc(g2, be, NULL, NULL), g2);
    CHECK(shared->data == a->data, "bound leaf moved");
    CHECK_OK(ts_graph_compute(g2), g2);
    float tw[12];
    CHECK_OK(ts_tensor_read_f32(twice, tw, 12), g2);
    CHECK(tw[5] == 2 * a_out[5], "shared storage: %g vs 2 * %g", (double)tw[5], (double)a_out[5]);
    ts_graph_free(g2);
    ts_graph_free(g);
}

/* ---------------------------------------------------------------- a backend without host access */

/* The CPU backend with buffers the planner cannot address directly (host == NULL), the way a
 * device backend looks: tensor I/O and guard checks must go through buffer_write/read. */
static ts_backend *g_cpu_for_device;

static void device_get_info(ts_backend *be, ts_backend_info *info) {
    g_cpu_for_device->iface->get_info(g_cpu_for_device, info);
    info->host_visible = false;
}

static ts_status device_alloc(ts_backend *be, size_t size, ts_buffer **out) {
    ts_buffer *b = calloc(1, sizeof *b);
    b->impl = calloc(1, size ? size : 1);
    b->backend = be;
    b->size = size;
    *out = b;
    return TS_OK;
}

static void device_free(ts_buffer *b) {
    free(b->impl);
    free(b);
}

static ts_status device_write(ts_buffer *b, size_t off, const void *src, size_t size) {
    if (off > b->size || size > b->size - off) return TS_ERR_RANGE;
    memcpy((char *)b->impl + off, src, size);
    return TS_OK;
}

static ts_status device_read(const ts_buffer *b, size_t off, void *dst, size_t size) {
    if (off > b->size || size > b->size - off) return TS_ERR_RANGE;
    memcpy(dst, (const char *)b->impl + off, size);
    return TS_OK;
}

static void test_device_buffers(ts_backend *cpu) {
    g_cpu_for_device = cpu;
    ts_backend_iface iface = *cpu->iface;
    iface.get_info = device_get_info;
    iface.buffer_alloc = device_alloc;
    iface.buffer_free = device_free;
    iface.buffer_write = device_write;
    iface.buffer_read = device_read;
    ts_backend dev = {&iface, cpu->impl};

    ts_graph *g = ts_graph_new();
    ts_tensor *a = ts_new_tensor_2d(g, TS_F32, 2, 3, "dev_a");
    ts_tensor *b = ts_new_tensor_1d(g, TS_F32, 7, "dev_b");
    ts_tensor *at = ts_transpose(g, a, 0, 1);
    float host[3];
    ts_tensor *hb = ts_new_tensor_1d(g, TS_F32, 3, "host_leaf");
    CHECK_OK(ts_tensor_bind_host(hb, host), g);
    CHECK(ts_graph_alloc(g, &dev, NULL, NULL) == TS_ERR_UNSUPPORTED, "host-bound leaf on a device backend");
    ts_graph_free(g);

    g = ts_graph_new();
    a = ts_new_tensor_2d(g, TS_F32, 2, 3, "dev_a");
    b = ts_new_tensor_1d(g, TS_F32, 7, "dev_b");
    at = ts_transpose(g, a, 0, 1);
    ts_plan_stats st;
    CHECK_OK(ts_graph_alloc(g, &dev, &(ts_plan_options){.guard_bytes = 32}, &st), g);
    CHECK(a->buffer && !a->data && !at->data, "device tensors must have a buffer and no host address");
    float v[6] = {1, 2, 3, 4, 5, 6}, w[6] = {0};
    CHECK_OK(ts_tensor_write(a, v, sizeof v), g);
    CHECK_OK(ts_tensor_read(a, w, sizeof w), g);
    CHECK(memcmp(v, w, sizeof v) == 0, "device round trip");
    CHECK(ts_tensor_read(at, w, sizeof w) == TS_ERR_UNSUPPORTED, "strided read of a device view");
    CHECK_OK(ts_graph_check_guards(g), g);
    /* damage the byte just after dev_b's elements, as an out-of-bounds kernel would */
    unsigned char junk = 0;
    CHECK_OK(b->buffer->backend->iface->buffer_write(b->buffer, b->buffer_offset + ts_nbytes(b), &junk, 1), g);
    CHECK(ts_graph_check_guards(g) == TS_ERR_INTERNAL, "damaged device guard not seen");
    CHECK(strstr(ts_graph_error(g), "dev_b") && strstr(ts_graph_error(g), "after"), "message: %s", ts_graph_error(g));
    ts_graph_free(g);
}

/* ---------------------------------------------------------------- (c) a shared arena */

/* Two graphs in one shared arena: it grows to the larger one's peak (moving the smaller one,
 * allocated first), each computes exactly what it computes in an arena of its own, also after
 * the other overwrote the shared bytes; misuse is refused. */
static void test_shared_arena(ts_backend *be) {
    ts_shared_arena *arena = NULL;
    CHECK_OK(ts_shared_arena_new(be, &arena), NULL);
    if (!arena) return;
    built small, big, small_own, big_own;
    ts_plan_options shared = {.shared_arena = arena};
    if (build_and_alloc(&small, build_mixed, be, shared) != TS_OK) return;
    size_t after_small = ts_shared_arena_bytes(arena);
    if (build_and_alloc(&big, build_mlp, be, shared) != TS_OK) return;
    if (build_and_alloc(&small_own, build_mixed, be, (ts_plan_options){0}) != TS_OK) return;
    if (build_and_alloc(&big_own, build_mlp, be, (ts_plan_options){0}) != TS_OK) return;
    CHECK(after_small == small.stats.arena_bytes && big.stats.arena_bytes > after_small &&
              ts_shared_arena_bytes(arena) == big.stats.arena_bytes,
          "shared arena %zu then %zu bytes for graphs of %zu and %zu", after_small, ts_shared_arena_bytes(arena),
          small.stats.arena_bytes, big.stats.arena_bytes);
    write_leaves(small.g, 7, 0.5f, 1);
    write_leaves(small_own.g, 7, 0.5f, 1);
    write_leaves(big.g, 11, 0.2f, MLP_WIDTH);
    write_leaves(big_own.g, 11, 0.2f, MLP_WIDTH);
    CHECK_OK(ts_graph_compute(small_own.g), small_own.g);
    CHECK_OK(ts_graph_compute(big_own.g), big_own.g);
    for (int round = 0; round < 2; round++) { /* the small graph after the big one wrote the arena, and again */
        CHECK_OK(ts_graph_compute(small.g), small.g);
        for (int i = 0; i < small.n_out; i++)
            CHECK(same_bytes(small.out[i], small_own.out[i]), "shared arena: output %s differs", small.out[i]->name);
        CHECK_OK(ts_graph_compute(big.g), big.g);
        check_mlp_same(&big, &big_own, "MLP in a shared arena");
    }
    printf("planner: shared arena: %zu bytes for two graphs of %zu and %zu\n", ts_shared_arena_bytes(arena),
           small.stats.arena_bytes, big.stats.arena_bytes);

    ts_backend *other = NULL;
    CHECK_OK(ts_backend_cpu_ref_new(1, &other), NULL);
    for (int misuse = 0; misuse < 2 && other; misuse++) { /* guards; another backend */
        ts_graph *g = ts_graph_new();
        ts_set_output(ts_exp(g, ts_new_tensor_1d(g, TS_F32, 8, "x")));
        ts_plan_options o = {.shared_arena = arena, .guard_bytes = misuse == 0 ? 16 : 0};
        CHECK(ts_graph_alloc(g, misuse == 0 ? be : other, &o, NULL) == TS_ERR_INVALID_ARG,
              "a shared arena took a graph %s", misuse == 0 ? "with guards" : "of another backend");
        ts_graph_free(g);
    }
    ts_backend_free(other);
    ts_graph_free(small.g);
    ts_graph_free(big.g);
    ts_graph_free(small_own.g);
    ts_graph_free(big_own.g);
    ts_shared_arena_free(arena);
}

int main(void) {
    ts_backend *be = NULL;
    ts_status s = ts_backend_cpu_ref_new(N_THREADS, &be);
    CHECK(s == TS_OK && be, "cpu-ref backend: %s", ts_status_name(s));
    if (!be) return check_summary("planner");
    test_errors(be);
    test_tensor_io(be);
    test_device_buffers(be);
    test_inplace(be);
    test_mixed_planned_vs_naive(be);
    test_guards(be);
    test_mlp_training_graph(be);
    test_shared_arena(be);
    ts_backend_free(be);
    return check_summary("planner");
}
