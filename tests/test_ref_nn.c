/* test_ref_nn.c - checks the reference kernels of ref_nn.c (matmul, softmax, rms_norm, rope,
 * get_rows, topk, gather, scatter_add, cross_entropy and their backward helpers) against
 * expectations that do not come from those kernels: naive loops written here, hand-computed
 * cases, analytic identities (softmax rows sum to 1, rms_norm output has RMS 1, rope then
 * inverse rope is the identity, gather and scatter_add are adjoint) and central finite
 * differences of the forward kernels for every *_back kernel. Error paths (ids out of range)
 * must return TS_ERR_RANGE with a message and leave the output untouched.
 *
 * The kernels are called directly through ts_cpu_reference_kernels (no planner or executor):
 * every tensor's data points at a buffer of this test, views at their root's buffer plus
 * offset. The whole suite runs with 1 and with 2 threads, and a last test checks that larger
 * problems give bit-identical outputs for both thread counts. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "backends/cpu/ref_common.h"
#include "check.h"
#include "tessera/backend.h"

static ts_threadpool *g_pool; /* the pool the current pass of the suite runs on */

/* ---------------------------------------------------------------- storage and access */

/* Every buffer bind() allocated, freed by done(). */
static void *g_bufs[1024];
static int g_n_bufs;

static size_t elem_size(ts_dtype t) { return (size_t)ts_dtype_get_info(t)->bits / 8; }

/* Gives every node without storage a zeroed buffer; views point into their root's. */
static void bind(ts_graph *g) {
    for (int i = 0; i < ts_graph_n_nodes(g); i++) {
        ts_tensor *t = ts_graph_node(g, i);
        if (t->data) continue;
        if (t->view_src) {
            t->data = (char *)t->view_src->data + t->offset * (int64_t)elem_size(t->dtype);
        } else if (g_n_bufs < (int)(sizeof g_bufs / sizeof g_bufs[0])) {
            t->data = calloc(1, ts_nbytes(t) + 8);
            g_bufs[g_n_bufs++] = t->data;
        }
    }
}

static void done(ts_graph *g) {
    for (int i = 0; i < g_n_bufs; i++) free(g_bufs[i]);
    g_n_bufs = 0;
    ts_graph_free(g);
}

/* Element with flat row-major index i (any strides). */
static double get(const ts_tensor *t, int64_t i) { return ts_load_f64(t->data, t->dtype, ref_offset(t, i)); }
static void set(ts_tensor *t, int64_t i, double v) { ts_store_f64(t->data, t->dtype, ref_offset(t, i), v); }

static void set_values(ts_tensor *t, const double *v) {
    for (int64_t i = 0; i < ts_nelements(t); i++) set(t, i, v[i]);
}

static void fill_const(ts_tensor *t, double v) {
    for (int64_t i = 0; i < ts_nelements(t); i++) set(t, i, v);
}

static void fill_random(ts_tensor *t, ts_rng *r, double scale) {
    for (int64_t i = 0; i < ts_nelements(t); i++) set(t, i, scale * (2 * ts_rng_uniform(r) - 1));
}

static void fill_random_ids(ts_tensor *t, ts_rng *r, int64_t limit) {
    for (int64_t i = 0; i < ts_nelements(t); i++) set(t, i, (double)(ts_rng_next(r) % (uint64_t)limit));
}

static ts_status run(ts_graph *g, ts_tensor *node) {
    ts_cpu_ctx ctx = {.graph = g, .pool = g_pool};
    return ts_cpu_reference_kernels[node->op](&ctx, node);
}

static bool close_to(double got, double want, double tol) {
    return fabs(got - want) <= tol * (1 + fabs(want));
}

/* ---------------------------------------------------------------- matmul */

/* a(m, k) and b(k, n) of a 2-D operand stored plain or transposed. */
static double at_mk(const ts_tensor *a, bool trans, int64_t m, int64_t k) {
    int64_t cols = a->shape[1];
    return trans ? get(a, k * cols + m) : get(a, m * cols + k);
}

static void test_matmul_2d(ts_dtype dt, double tol) {
    const int64_t M = 3, K = 4, N = 5;
    for (int combo = 0; combo < 4; combo++) {
        bool ta = combo & 1, tb = combo & 2;
        ts_graph *g = ts_graph_new();
        ts_tensor *a = ts_new_tensor_2d(g, dt, ta ? K : M, ta ? M : K, "a");
        ts_tensor *b = ts_new_tensor_2d(g, dt, tb ? N : K, tb ? K : N, "b");
        ts_tensor *c = ts_matmul(g, a, b, ta, tb);
        CHECK(c && c->shape[0] == M && c->shape[1] == N, "matmul shape (ta=%d tb=%d)", ta, tb);
        if (!c) {
            done(g);
            continue;
        }
        bind(g);
        ts_rng r;
        ts_rng_seed(&r, 10 + combo);
        fill_random(a, &r, 2);
        fill_random(b, &r, 2);
        CHECK_OK(run(g, c), g);
        int bad = 0;
        for (int64_t m = 0; m < M; m++)
            for (int64_t n = 0; n < N; n++) {
                double want = 0;
                for (int64_t k = 0; k < K; k++) want += at_mk(a, ta, m, k) * at_mk(b, !tb, n, k);
                bad += !close_to(get(c, m * N + n), want, tol);
            }
        CHECK(bad == 0, "%s matmul ta=%d tb=%d: %d wrong", ts_dtype_name(dt), ta, tb, bad);
        done(g);
    }
}

/* [2,1,M,K] x [3,K,N] -> [2,3,M,N]; and [M,K] x [2,K,N] -> [2,M,N]. */
static void test_matmul_batched(void) {
    const int64_t M = 3, K = 4, N = 2;
    ts_graph *g = ts_graph_new();
    ts_tensor *a = ts_new_tensor_4d(g, TS_F64, 2, 1, M, K, "a");
    ts_tensor *b = ts_new_tensor_3d(g, TS_F64, 3, K, N, "b");
    ts_tensor *a2 = ts_new_tensor_2d(g, TS_F64, M, K, "a2");
    ts_tensor *b2 = ts_new_tensor_3d(g, TS_F64, 2, K, N, "b2");
    ts_tensor *c = ts_matmul(g, a, b, false, false), *c2 = ts_matmul(g, a2, b2, false, false);
    CHECK(c && c->ndim == 4 && c->shape[0] == 2 && c->shape[1] == 3 && c->shape[2] == M && c->shape[3] == N,
          "batched shape");
    CHECK(c2 && c2->ndim == 3 && c2->shape[0] == 2, "broadcast a shape");
    if (c && c2) {
        bind(g);
        ts_rng r;
        ts_rng_seed(&r, 3);
        fill_random(a, &r, 1);
        fill_random(b, &r, 1);
        fill_random(a2, &r, 1);
        fill_random(b2, &r, 1);
        CHECK_OK(run(g, c), g);
        CHECK_OK(run(g, c2), g);
        int bad = 0;
        for (int64_t i = 0; i < 2; i++)
            for (int64_t j = 0; j < 3; j++)
                for (int64_t m = 0; m < M; m++)
                    for (int64_t n = 0; n < N; n++) {
                        double want = 0;
                        for (int64_t k = 0; k < K; k++) want += get(a, (i * M + m) * K + k) * get(b, (j * K + k) * N + n);
                        bad += !close_to(get(c, ((i * 3 + j) * M + m) * N + n), want, 1e-14);
                    }
        for (int64_t j = 0; j < 2; j++)
            for (int64_t m = 0; m < M; m++)
                for (int64_t n = 0; n < N; n++) {
                    double want = 0;
                    for (int64_t k = 0; k < K; k++) want += get(a2, m * K + k) * get(b2, (j * K + k) * N + n);
                    bad += !close_to(get(c2, (j * M + m) * N + n), want, 1e-14);
                }
        CHECK(bad == 0, "batched matmul: %d wrong", bad);
    }
    done(g);
}

/* A transposed view as a plain operand, and bf16 operands with a bf16 result. */
static void test_matmul_strided_and_bf16(void) {
    const int64_t M = 4, K = 6, N = 3;
    ts_graph *g = ts_graph_new();
    ts_tensor *at = ts_new_tensor_2d(g, TS_F32, K, M, "at");
    ts_tensor *a = ts_transpose(g, at, 0, 1); /* [M, K], strides (1, M) */
    ts_tensor *b = ts_new_tensor_2d(g, TS_F32, K, N, "b");
    ts_tensor *c = ts_matmul(g, a, b, false, false);
    ts_tensor *ah = ts_new_tensor_2d(g, TS_BF16, M, K, "ah"), *bh = ts_new_tensor_2d(g, TS_BF16, K, N, "bh");
    ts_tensor *ch = ts_matmul(g, ah, bh, false, false);
    CHECK(c && ch && ch->dtype == TS_BF16, "strided / bf16 matmul built: %s", ts_graph_error(g));
    if (c && ch) {
        bind(g);
        ts_rng r;
        ts_rng_seed(&r, 4);
        fill_random(at, &r, 1);
        fill_random(b, &r, 1);
        fill_random(ah, &r, 1);
        fill_random(bh, &r, 1);
        CHECK_OK(run(g, c), g);
        CHECK_OK(run(g, ch), g);
        int bad = 0, bad_h = 0;
        for (int64_t m = 0; m < M; m++)
            for (int64_t n = 0; n < N; n++) {
                double want = 0, want_h = 0;
                for (int64_t k = 0; k < K; k++) {
                    want += get(at, k * M + m) * get(b, k * N + n);
                    want_h += get(ah, m * K + k) * get(bh, k * N + n);
                }
                bad += !close_to(get(c, m * N + n), want, 1e-6);
                bad_h += fabs(get(ch, m * N + n) - want_h) > 1e-2 * (1 + fabs(want_h));
            }
        CHECK(bad == 0, "strided matmul: %d wrong", bad);
        CHECK(bad_h == 0, "bf16 matmul: %d wrong", bad_h);
    }
    done(g);
}

/* ---------------------------------------------------------------- softmax */

static void test_softmax_hand(void) {
    ts_graph *g = ts_graph_new();
    ts_tensor *x = ts_new_tensor_2d(g, TS_F64, 2, 2, "x");
    ts_tensor *y = ts_softmax(g, x, -1, NULL);
    bind(g);
    set_values(x, (double[]){0, log(2.0), 1000, 1001});
    CHECK_OK(run(g, y), g);
    double e = exp(1.0);
    CHECK(close_to(get(y, 0), 1.0 / 3, 1e-15) && close_to(get(y, 1), 2.0 / 3, 1e-15), "softmax [0, ln2]: %g %g",
          get(y, 0), get(y, 1));
    CHECK(close_to(get(y, 2), 1 / (1 + e), 1e-15) && close_to(get(y, 3), e / (1 + e), 1e-15),
          "softmax of large inputs: %g %g", get(y, 2), get(y, 3));
    done(g);
}

/* Random rows: the formula, rows summing to 1; a mask of -inf zeroes entries; a fully masked
 * row is all zeros; axis 0 over a transposed view. */
static void test_softmax_props(void) {
    const int64_t R = 3, C = 5;
    ts_graph *g = ts_graph_new();
    ts_tensor *x = ts_new_tensor_2d(g, TS_F64, R, C, "x");
    ts_tensor *mask_row = ts_new_tensor_1d(g, TS_F64, C, "mask_row");
    ts_tensor *mask_full = ts_new_tensor_2d(g, TS_F64, R, C, "mask_full");
    ts_tensor *xt = ts_new_tensor_2d(g, TS_F32, C, R, "xt");
    ts_tensor *y = ts_softmax(g, x, 1, NULL);
    ts_tensor *ym = ts_softmax(g, x, 1, mask_row);
    ts_tensor *yf = ts_softmax(g, x, 1, mask_full);
    ts_tensor *yt = ts_softmax(g, ts_transpose(g, xt, 0, 1), 0, NULL); /* [R, C], normalized over R */
    CHECK(y && ym && yf && yt, "softmax built: %s", ts_graph_error(g));
    if (!(y && ym && yf && yt)) {
        done(g);
        return;
    }
    bind(g);
    ts_rng r;
    ts_rng_seed(&r, 5);
    fill_random(x, &r, 3);
    fill_random(xt, &r, 3);
    set_values(mask_row, (double[]){0, -INFINITY, 0, -INFINITY, 0});
    fill_const(mask_full, 0);
    for (int64_t c = 0; c < C; c++) set(mask_full, 1 * C + c, -INFINITY);
    set(mask_full, 0, -INFINITY);
    CHECK_OK(run(g, y), g);
    CHECK_OK(run(g, ym), g);
    CHECK_OK(run(g, yf), g);
    CHECK_OK(run(g, yt), g);
    int bad = 0;
    for (int64_t i = 0; i < R; i++) {
        double m = -INFINITY, s = 0, sum_y = 0, sum_ym = 0, s_m = 0;
        for (int64_t c = 0; c < C; c++) m = fmax(m, get(x, i * C + c));
        for (int64_t c = 0; c < C; c++) {
            s += exp(get(x, i * C + c) - m);
            if (c % 2 == 0) s_m += exp(get(x, i * C + c) - m);
        }
        for (int64_t c = 0; c < C; c++) {
            double p = get(y, i * C + c), pm = get(ym, i * C + c);
            bad += !close_to(p, exp(get(x, i * C + c) - m) / s, 1e-14) || !(p > 0);
            bad += c % 2 ? pm != 0.0 : !close_to(pm, exp(get(x, i * C + c) - m) / s_m, 1e-14);
            sum_y += p;
            sum_ym += pm;
        }
        bad += !close_to(sum_y, 1, 1e-14) + !close_to(sum_ym, 1, 1e-14);
    }
    CHECK(bad == 0, "softmax values / sums / row mask: %d wrong", bad);
    int bad_f = 0;
    for (int64_t c = 0; c < C; c++) bad_f += get(yf, 1 * C + c) != 0.0; /* fully masked row */
    bad_f += get(yf, 0) != 0.0;
    double s0 = 0;
    for (int64_t c = 1; c < C; c++) s0 += get(yf, c);
    bad_f += !close_to(s0, 1, 1e-14);
    for (int64_t i = 0; i < R * C; i++) bad_f += isnan(get(yf, i));
    CHECK(bad_f == 0, "fully masked row must be zeros (and NaN-free): %d wrong", bad_f);
    int bad_t = 0;
    for (int64_t c = 0; c < C; c++) {
        double s = 0;
        for (int64_t i = 0; i < R; i++) s += get(yt, i * C + c);
        bad_t += !close_to(s, 1, 1e-6);
    }
    CHECK(bad_t == 0, "softmax along axis 0 of a transposed view: %d columns do not sum to 1", bad_t);
    done(g);
}

/* ---------------------------------------------------------------- rms_norm */

static void test_rms_norm(void) {
    const int64_t R = 4, D = 8;
    ts_graph *g = ts_graph_new();
    ts_tensor *h = ts_new_tensor_2d(g, TS_F64, 2, 2, "h");
    ts_tensor *x = ts_new_tensor_2d(g, TS_F64, R, D, "x");
    ts_tensor *w = ts_new_tensor_1d(g, TS_F64, D, "w");
    ts_tensor *x0 = ts_new_tensor_2d(g, TS_F64, R, D + 3, "x0");
    ts_tensor *xb = ts_new_tensor_2d(g, TS_BF16, 2, 16, "xb");
    ts_tensor *yh = ts_rms_norm(g, h, NULL, 0.0f), *yh1 = ts_rms_norm(g, h, NULL, 1.0f);
    ts_tensor *y = ts_rms_norm(g, x, NULL, 0.0f), *yw = ts_rms_norm(g, x, w, 0.0f);
    ts_tensor *ys = ts_rms_norm(g, ts_slice(g, x0, 1, 2, D), NULL, 0.0f);
    ts_tensor *yb = ts_rms_norm(g, xb, NULL, 1e-6f);
    CHECK(yh && yh1 && y && yw && ys && yb, "rms_norm built: %s", ts_graph_error(g));
    if (!(yh && yh1 && y && yw && ys && yb)) {
        done(g);
        return;
    }
    bind(g);
    ts_rng r;
    ts_rng_seed(&r, 6);
    set_values(h, (double[]){3, 4, 1, 1});
    fill_random(x, &r, 5);
    fill_random(w, &r, 2);
    fill_random(x0, &r, 0.1);
    fill_random(xb, &r, 3);
    ts_tensor *all[] = {yh, yh1, y, yw, ys, yb};
    for (int i = 0; i < 6; i++) CHECK_OK(run(g, all[i]), g);
    CHECK(close_to(get(yh, 0), 3 / sqrt(12.5), 1e-15) && close_to(get(yh, 1), 4 / sqrt(12.5), 1e-15),
          "rms_norm [3,4]: %g %g", get(yh, 0), get(yh, 1));
    CHECK(close_to(get(yh1, 2), 1 / sqrt(2.0), 1e-15), "rms_norm [1,1] eps 1: %g", get(yh1, 2));
    int bad = 0;
    for (int64_t i = 0; i < R; i++) {
        double ms = 0, ms_s = 0;
        for (int64_t k = 0; k < D; k++) {
            ms += get(y, i * D + k) * get(y, i * D + k) / D;
            ms_s += get(ys, i * D + k) * get(ys, i * D + k) / D;
            bad += !close_to(get(yw, i * D + k), get(y, i * D + k) * get(w, k), 1e-14);
        }
        bad += !close_to(ms, 1, 1e-14) + !close_to(ms_s, 1, 1e-12);
    }
    CHECK(bad == 0, "rms_norm RMS 1 / weight / sliced input: %d wrong", bad);
    int bad_b = 0;
    for (int64_t i = 0; i < 2; i++) {
        double ms = 0;
        for (int64_t k = 0; k < 16; k++) ms += get(xb, i * 16 + k) * get(xb, i * 16 + k) / 16;
        for (int64_t k = 0; k < 16; k++)
            bad_b += !close_to(get(yb, i * 16 + k), get(xb, i * 16 + k) / sqrt(ms + 1e-6), 1e-2);
    }
    CHECK(bad_b == 0, "bf16 rms_norm: %d wrong", bad_b);
    done(g);
}

/* ---------------------------------------------------------------- rope */

/* y against the definition, for angles read through `angle(row, pair)`. */
static int rope_mismatches(const ts_tensor *x, const ts_tensor *y, int64_t n_rot, double sign,
                           double (*angle)(const ts_tensor *, int64_t, int64_t), const ts_tensor *ang) {
    int64_t D = x->shape[x->ndim - 1], rows = ts_nelements(x) / D, first = D - n_rot;
    int bad = 0;
    for (int64_t r = 0; r < rows; r++) {
        for (int64_t k = 0; k < first; k++) bad += get(y, r * D + k) != get(x, r * D + k);
        for (int64_t p = 0; p < n_rot / 2; p++) {
            int64_t i = r * D + first + 2 * p;
            double re = get(x, i), im = get(x, i + 1), t = sign * angle(ang, r, p);
            bad += !close_to(get(y, i), re * cos(t) - im * sin(t), 1e-14);
            bad += !close_to(get(y, i + 1), re * sin(t) + im * cos(t), 1e-14);
        }
    }
    return bad;
}

/* x is [2, 3, D]: row r has middle index r % 3. */
static double angle_3x3(const ts_tensor *a, int64_t r, int64_t p) { return get(a, (r % 3) * 3 + p); }
static double angle_3(const ts_tensor *a, int64_t r, int64_t p) { return get(a, p); }
static double angle_3x1(const ts_tensor *a, int64_t r, int64_t p) { return get(a, r % 3); }

static void test_rope(void) {
    const int64_t D = 10, NR = 6;
    ts_graph *g = ts_graph_new();
    ts_tensor *x = ts_new_tensor_3d(g, TS_F64, 2, 3, D, "x");
    ts_tensor *ang = ts_new_tensor_2d(g, TS_F64, 3, NR / 2, "ang");
    ts_tensor *neg = ts_new_tensor_2d(g, TS_F64, 3, NR / 2, "neg");
    ts_tensor *zero = ts_new_tensor_2d(g, TS_F64, 3, NR / 2, "zero");
    ts_tensor *quarter = ts_new_tensor_1d(g, TS_F64, 1, "quarter");
    ts_tensor *a1 = ts_new_tensor_1d(g, TS_F64, NR / 2, "a1");
    ts_tensor *a31 = ts_new_tensor_2d(g, TS_F64, 3, 1, "a31");
    ts_tensor *y = ts_rope(g, x, ang, NR, false);
    ts_tensor *back = ts_rope(g, y, ang, NR, true);
    ts_tensor *yneg = ts_rope(g, x, neg, NR, false), *yinv = ts_rope(g, x, ang, NR, true);
    ts_tensor *y0 = ts_rope(g, x, zero, NR, false);
    ts_tensor *yq = ts_rope(g, x, quarter, (int)D, false); /* every dim, angle pi/2 */
    ts_tensor *y1 = ts_rope(g, x, a1, NR, false), *y31 = ts_rope(g, x, a31, NR, false);
    ts_tensor *all[] = {y, back, yneg, yinv, y0, yq, y1, y31};
    bool built = true;
    for (int i = 0; i < 8; i++) built = built && all[i];
    CHECK(built, "rope built: %s", ts_graph_error(g));
    if (!built) {
        done(g);
        return;
    }
    bind(g);
    ts_rng r;
    ts_rng_seed(&r, 7);
    fill_random(x, &r, 2);
    fill_random(ang, &r, 4);
    for (int64_t i = 0; i < ts_nelements(ang); i++) set(neg, i, -get(ang, i));
    fill_const(zero, 0);
    fill_const(quarter, M_PI / 2);
    fill_random(a1, &r, 4);
    fill_random(a31, &r, 4);
    for (int i = 0; i < 8; i++) CHECK_OK(run(g, all[i]), g);
    int64_t n = ts_nelements(x);
    int bad_back = 0, bad_inv = 0, bad_zero = 0, bad_q = 0;
    for (int64_t i = 0; i < n; i++) {
        bad_back += !close_to(get(back, i), get(x, i), 1e-14);
        bad_inv += get(yneg, i) != get(yinv, i);
        bad_zero += get(y0, i) != get(x, i);
    }
    for (int64_t i = 0; i < n; i += 2) /* (a, b) -> (-b, a) */
        bad_q += !close_to(get(yq, i), -get(x, i + 1), 1e-15) + !close_to(get(yq, i + 1), get(x, i), 1e-15);
    CHECK(bad_back == 0, "rope then inverse rope is not the identity: %d wrong", bad_back);
    CHECK(bad_inv == 0, "inverse rope differs from rope by -angle: %d wrong", bad_inv);
    CHECK(bad_zero == 0, "rope by 0 is not the identity: %d wrong", bad_zero);
    CHECK(bad_q == 0, "rope by pi/2 does not map (a,b) to (-b,a): %d wrong", bad_q);
    CHECK(rope_mismatches(x, y, NR, 1, angle_3x3, ang) == 0, "rope against its definition (untouched leading dims included)");
    CHECK(rope_mismatches(x, yinv, NR, -1, angle_3x3, ang) == 0, "inverse rope against its definition");
    CHECK(rope_mismatches(x, y1, NR, 1, angle_3, a1) == 0, "rope with rank-1 angles");
    CHECK(rope_mismatches(x, y31, NR, 1, angle_3x1, a31) == 0, "rope with angles stretched over pairs");
    done(g);
}

/* ---------------------------------------------------------------- get_rows */

static void test_get_rows(void) {
    ts_graph *g = ts_graph_new();
    ts_tensor *table = ts_new_tensor_2d(g, TS_F32, 5, 3, "table");
    ts_tensor *t3 = ts_new_tensor_3d(g, TS_BF16, 5, 2, 2, "t3");
    ts_tensor *ids32 = ts_new_tensor_2d(g, TS_I32, 2, 2, "ids32");
    ts_tensor *ids64 = ts_new_tensor_1d(g, TS_I64, 3, "ids64");
    ts_tensor *y = ts_get_rows(g, table, ids32), *y3 = ts_get_rows(g, t3, ids64);
    CHECK(y && y->ndim == 3 && y->shape[0] == 2 && y->shape[1] == 2 && y->shape[2] == 3, "get_rows shape");
    CHECK(y3 && y3->ndim == 3 && y3->shape[0] == 3 && y3->shape[2] == 2, "get_rows 3-D table shape");
    if (y && y3) {
        bind(g);
        for (int64_t i = 0; i < 15; i++) set(table, i, (double)(10 * (i / 3) + i % 3));
        for (int64_t i = 0; i < 20; i++) set(t3, i, (double)(10 * (i / 4) + i % 4));
        set_values(ids32, (double[]){4, 0, 2, 4});
        set_values(ids64, (double[]){1, 1, 3});
        CHECK_OK(run(g, y), g);
        CHECK_OK(run(g, y3), g);
        const int ids_a[] = {4, 0, 2, 4}, ids_b[] = {1, 1, 3};
        int bad = 0;
        for (int i = 0; i < 4; i++)
            for (int e = 0; e < 3; e++) bad += get(y, i * 3 + e) != 10.0 * ids_a[i] + e;
        for (int i = 0; i < 3; i++)
            for (int e = 0; e < 4; e++) bad += get(y3, i * 4 + e) != 10.0 * ids_b[i] + e;
        CHECK(bad == 0, "get_rows values: %d wrong", bad);
    }
    done(g);

    /* An id past the end and a negative id: TS_ERR_RANGE, a message, dst untouched. */
    const double bad_ids[2][3] = {{0, 5, 1}, {2, 0, -1}};
    const ts_dtype id_types[2] = {TS_I32, TS_I64};
    for (int c = 0; c < 2; c++) {
        g = ts_graph_new();
        ts_tensor *tab = ts_new_tensor_2d(g, TS_F32, 5, 3, "table");
        ts_tensor *ids = ts_new_tensor_1d(g, id_types[c], 3, "tok_ids");
        ts_tensor *out = ts_get_rows(g, tab, ids);
        bind(g);
        set_values(ids, bad_ids[c]);
        fill_const(out, 7);
        ts_status s = run(g, out);
        const char *msg = ts_graph_error(g);
        CHECK(s == TS_ERR_RANGE && ts_graph_status(g) == TS_ERR_RANGE, "bad id must be TS_ERR_RANGE, got %s",
              ts_status_name(s));
        const char *want_id = c == 0 ? "5" : "-1", *want_pos = c == 0 ? "position 1" : "position 2";
        CHECK(strstr(msg, "get_rows") && strstr(msg, want_id) && strstr(msg, want_pos) && strstr(msg, "tok_ids") &&
                  strstr(msg, "[0, 5)"),
              "message should name op, id, position, range and ids tensor: '%s'", msg);
        int touched = 0;
        for (int64_t i = 0; i < ts_nelements(out); i++) touched += get(out, i) != 7;
        CHECK(touched == 0, "get_rows wrote %d outputs before failing", touched);
        done(g);
    }
}

/* ---------------------------------------------------------------- topk */

static void test_topk(void) {
    ts_graph *g = ts_graph_new();
    ts_tensor *x = ts_new_tensor_2d(g, TS_F32, 2, 6, "x");
    ts_tensor *big = ts_new_tensor_2d(g, TS_F64, 3, 50, "big");
    ts_tensor *i3 = NULL, *i6 = NULL, *ib = NULL, *v3 = NULL;
    CHECK_OK(ts_topk(g, x, 3, &v3, &i3), g);
    CHECK_OK(ts_topk(g, x, 6, NULL, &i6), g);
    CHECK_OK(ts_topk(g, big, 10, NULL, &ib), g);
    if (!(i3 && i6 && ib)) {
        done(g);
        return;
    }
    bind(g);
    set_values(x, (double[]){1, 3, 3, 2, NAN, 0, 5, 5, 5, 1, 1, 0});
    ts_rng r;
    ts_rng_seed(&r, 8);
    fill_random(big, &r, 1);
    CHECK_OK(run(g, i3), g);
    CHECK_OK(run(g, i6), g);
    CHECK_OK(run(g, ib), g);
    const int want3[] = {4, 1, 2, 0, 1, 2}, want6[] = {4, 1, 2, 3, 0, 5, 0, 1, 2, 3, 4, 5};
    int bad = 0;
    for (int i = 0; i < 6; i++) bad += get(i3, i) != want3[i];
    for (int i = 0; i < 12; i++) bad += get(i6, i) != want6[i];
    CHECK(bad == 0, "topk order (NaN first, ties to the lower index): %d wrong", bad);
    int bad_rank = 0;
    for (int64_t row = 0; row < 3; row++)
        for (int64_t k = 0; k < 10; k++) {
            double v = get(big, row * 50 + (int64_t)get(ib, row * 10 + k));
            int larger = 0;
            for (int64_t e = 0; e < 50; e++) larger += get(big, row * 50 + e) > v;
            bad_rank += larger != k;
        }
    CHECK(bad_rank == 0, "topk of random rows: %d outputs not at their rank", bad_rank);
    if (v3) { /* topk's values come from a gather node */
        CHECK_OK(run(g, v3), g);
        CHECK(isnan(get(v3, 0)) && get(v3, 1) == 3 && get(v3, 5) == 5, "topk values via gather");
    }
    done(g);
}

/* ---------------------------------------------------------------- gather / scatter_add */

static void test_gather_scatter_hand(void) {
    ts_graph *g = ts_graph_new();
    ts_tensor *x = ts_new_tensor_2d(g, TS_F32, 2, 3, "x");
    ts_tensor *i1 = ts_new_tensor_2d(g, TS_I64, 2, 2, "i1"), *i0 = ts_new_tensor_2d(g, TS_I32, 1, 3, "i0");
    ts_tensor *g1 = ts_gather(g, x, 1, i1), *g0 = ts_gather(g, x, 0, i0);
    ts_tensor *base = ts_new_tensor_1d(g, TS_F64, 3, "base"), *si = ts_new_tensor_1d(g, TS_I32, 3, "si");
    ts_tensor *sv = ts_new_tensor_1d(g, TS_F64, 3, "sv");
    ts_tensor *sa = ts_scatter_add(g, base, 0, si, sv);
    /* in place: the output shares base2's storage */
    ts_tensor *base2 = ts_new_tensor_1d(g, TS_F64, 3, "base2");
    ts_tensor *sa2 = ts_scatter_add(g, base2, 0, si, sv);
    CHECK(g1 && g0 && sa && sa2, "gather / scatter_add built: %s", ts_graph_error(g));
    if (!(g1 && g0 && sa && sa2)) {
        done(g);
        return;
    }
    bind(g);
    sa2->data = base2->data;
    set_values(x, (double[]){1, 2, 3, 4, 5, 6});
    set_values(i1, (double[]){2, 0, 1, 1});
    set_values(i0, (double[]){1, 0, 1});
    set_values(base, (double[]){1, 1, 1});
    set_values(base2, (double[]){1, 1, 1});
    set_values(si, (double[]){0, 0, 2});
    set_values(sv, (double[]){1, 2, 3});
    ts_tensor *all[] = {g1, g0, sa, sa2};
    for (int i = 0; i < 4; i++) CHECK_OK(run(g, all[i]), g);
    CHECK(get(g1, 0) == 3 && get(g1, 1) == 1 && get(g1, 2) == 5 && get(g1, 3) == 5, "gather axis 1");
    CHECK(get(g0, 0) == 4 && get(g0, 1) == 2 && get(g0, 2) == 6, "gather axis 0");
    CHECK(get(sa, 0) == 4 && get(sa, 1) == 1 && get(sa, 2) == 4, "scatter_add with duplicate indices");
    CHECK(get(base, 0) == 1 && get(base, 2) == 1, "scatter_add must not write its base");
    CHECK(get(base2, 0) == 4 && get(base2, 1) == 1 && get(base2, 2) == 4, "scatter_add in place");
    done(g);
}

/* <gather(x, idx), v> == <x, scatter_add(0, idx, v)>, along both axes, idx smaller than x off
 * the axis and longer than x along it. */
static void test_gather_scatter_adjoint(void) {
    for (int axis = 0; axis < 2; axis++) {
        ts_graph *g = ts_graph_new();
        ts_tensor *x = ts_new_tensor_2d(g, TS_F64, 3, 4, "x");
        int64_t ir = axis == 0 ? 5 : 2, ic = axis == 0 ? 3 : 6;
        ts_tensor *idx = ts_new_tensor_2d(g, axis ? TS_I32 : TS_I64, ir, ic, "idx");
        ts_tensor *v = ts_new_tensor_2d(g, TS_F64, ir, ic, "v");
        ts_tensor *zero = ts_new_tensor_2d(g, TS_F64, 3, 4, "zero");
        ts_tensor *gx = ts_gather(g, x, axis, idx), *sv = ts_scatter_add(g, zero, axis, idx, v);
        CHECK(gx && sv, "adjoint pair built: %s", ts_graph_error(g));
        if (gx && sv) {
            bind(g);
            ts_rng r;
            ts_rng_seed(&r, 20 + axis);
            fill_random(x, &r, 1);
            fill_random(v, &r, 1);
            fill_random_ids(idx, &r, x->shape[axis]);
            CHECK_OK(run(g, gx), g);
            CHECK_OK(run(g, sv), g);
            double lhs = 0, rhs = 0;
            for (int64_t i = 0; i < ts_nelements(v); i++) lhs += get(gx, i) * get(v, i);
            for (int64_t i = 0; i < ts_nelements(x); i++) rhs += get(x, i) * get(sv, i);
            CHECK(close_to(lhs, rhs, 1e-13), "gather / scatter_add not adjoint on axis %d: %.17g vs %.17g", axis, lhs, rhs);
        }
        done(g);
    }
}

static void test_gather_scatter_errors(void) {
    ts_graph *g = ts_graph_new();
    ts_tensor *x = ts_new_tensor_2d(g, TS_F32, 2, 3, "x");
    ts_tensor *idx = ts_new_tensor_2d(g, TS_I32, 2, 2, "gidx");
    ts_tensor *gx = ts_gather(g, x, 1, idx);
    bind(g);
    set_values(idx, (double[]){0, 1, 3, 0});
    CHECK(run(g, gx) == TS_ERR_RANGE, "gather with index 3 on an axis of 3");
    const char *msg = ts_graph_error(g);
    CHECK(strstr(msg, "gather") && strstr(msg, "3") && strstr(msg, "position 2") && strstr(msg, "gidx"),
          "gather message: '%s'", msg);
    done(g);

    g = ts_graph_new();
    ts_tensor *base = ts_new_tensor_1d(g, TS_F32, 4, "base");
    ts_tensor *si = ts_new_tensor_1d(g, TS_I64, 2, "sidx"), *sv = ts_new_tensor_1d(g, TS_F32, 2, "sv");
    ts_tensor *sa = ts_scatter_add(g, base, 0, si, sv);
    bind(g);
    sa->data = base->data; /* in place: a failure must leave base intact */
    set_values(base, (double[]){1, 2, 3, 4});
    set_values(si, (double[]){1, -1});
    set_values(sv, (double[]){10, 10});
    CHECK(run(g, sa) == TS_ERR_RANGE, "scatter_add with index -1");
    msg = ts_graph_error(g);
    CHECK(strstr(msg, "scatter_add") && strstr(msg, "-1") && strstr(msg, "sidx"), "scatter_add message: '%s'", msg);
    CHECK(get(base, 0) == 1 && get(base, 1) == 2 && get(base, 3) == 4, "failed scatter_add wrote its output");
    done(g);
}

/* ---------------------------------------------------------------- cross_entropy */

static void test_cross_entropy(void) {
    ts_graph *g = ts_graph_new();
    ts_tensor *flat = ts_new_tensor_2d(g, TS_F32, 4, 5, "flat");
    ts_tensor *t1 = ts_new_tensor_1d(g, TS_I32, 4, "t1");
    ts_tensor *logits = ts_new_tensor_3d(g, TS_F64, 2, 2, 4, "logits");
    ts_tensor *t2 = ts_new_tensor_2d(g, TS_I64, 2, 2, "t2");
    ts_tensor *t3 = ts_new_tensor_2d(g, TS_I64, 2, 2, "t3");
    ts_tensor *l1 = ts_cross_entropy(g, flat, t1), *l2 = ts_cross_entropy(g, logits, t2);
    ts_tensor *l3 = ts_cross_entropy(g, logits, t3);
    CHECK(l1 && l2 && l3 && l1->ndim == 1 && l1->shape[0] == 1, "cross_entropy built: %s", ts_graph_error(g));
    if (l1 && l2 && l3) {
        bind(g);
        fill_const(flat, 0.7);
        set_values(t1, (double[]){1, -1, 4, 0});
        ts_rng r;
        ts_rng_seed(&r, 9);
        fill_random(logits, &r, 3);
        set_values(t2, (double[]){2, 0, -5, 3});
        fill_const(t3, -1);
        CHECK_OK(run(g, l1), g);
        CHECK_OK(run(g, l2), g);
        CHECK_OK(run(g, l3), g);
        CHECK(close_to(get(l1, 0), log(5.0), 1e-7), "uniform logits: %.9g, want log 5", get(l1, 0));
        double want = 0;
        const int tg[] = {2, 0, -5, 3};
        int n_valid = 0;
        for (int row = 0; row < 4; row++) {
            if (tg[row] < 0) continue;
            double s = 0;
            for (int k = 0; k < 4; k++) s += exp(get(logits, row * 4 + k));
            want += log(s) - get(logits, row * 4 + tg[row]);
            n_valid++;
        }
        want /= n_valid;
        CHECK(close_to(get(l2, 0), want, 1e-14), "cross_entropy %.17g, want %.17g", get(l2, 0), want);
        CHECK(get(l3, 0) == 0.0, "all targets ignored: loss %g, want 0", get(l3, 0));
    }
    done(g);

    g = ts_graph_new();
    ts_tensor *lg = ts_new_tensor_2d(g, TS_F32, 2, 5, "lg");
    ts_tensor *tg = ts_new_tensor_1d(g, TS_I32, 2, "targets");
    ts_tensor *loss = ts_cross_entropy(g, lg, tg);
    bind(g);
    set_values(tg, (double[]){5, 0});
    CHECK(run(g, loss) == TS_ERR_RANGE, "target == V must be TS_ERR_RANGE");
    const char *msg = ts_graph_error(g);
    CHECK(strstr(msg, "cross_entropy") && strstr(msg, "target 5") && strstr(msg, "targets"), "message: '%s'", msg);
    done(g);
}

/* ---------------------------------------------------------------- backward vs finite differences */

/* Sum of c[i] * out[i]: the scalar whose gradient with respect to out is c. */
static double weighted_sum(const ts_tensor *out, const ts_tensor *c) {
    double s = 0;
    for (int64_t i = 0; i < ts_nelements(out); i++) s += get(out, i) * (c ? get(c, i) : 1.0);
    return s;
}

/* Central differences of L = scale * weighted_sum(fwd, c) with respect to every element of
 * `in`, compared with the analytic gradient `grad` (already computed). */
static int fd_mismatches(ts_graph *g, ts_tensor *in, ts_tensor *fwd, const ts_tensor *c, double scale,
                         const ts_tensor *grad) {
    const double h = 1e-6;
    int bad = 0;
    for (int64_t i = 0; i < ts_nelements(in); i++) {
        double x0 = get(in, i);
        set(in, i, x0 + h);
        run(g, fwd);
        double lp = scale * weighted_sum(fwd, c);
        set(in, i, x0 - h);
        run(g, fwd);
        double lm = scale * weighted_sum(fwd, c);
        set(in, i, x0);
        double fd = (lp - lm) / (2 * h);
        if (fabs(fd - get(grad, i)) > 1e-7 * (1 + fabs(fd))) {
            bad++;
            fprintf(stderr, "  %s element %lld: analytic %.12g, finite difference %.12g\n", ts_op_name(grad->op),
                    (long long)i, get(grad, i), fd);
        }
    }
    run(g, fwd);
    return bad;
}

static void test_softmax_back_fd(void) {
    ts_graph *g = ts_graph_new();
    ts_tensor *x = ts_new_tensor_2d(g, TS_F64, 4, 3, "x"), *c = ts_new_tensor_2d(g, TS_F64, 4, 3, "c");
    ts_tensor *y0 = ts_softmax(g, x, 0, NULL), *y1 = ts_softmax(g, x, 1, NULL);
    ts_tensor *s0[2] = {y0, c}, *s1[2] = {y1, c};
    ts_tensor *d0 = ts_op_node(g, TS_OP_SOFTMAX_BACK, s0, 2, (int32_t[]){0}, 1, NULL, 0);
    ts_tensor *d1 = ts_op_node(g, TS_OP_SOFTMAX_BACK, s1, 2, (int32_t[]){1}, 1, NULL, 0);
    CHECK(d0 && d1, "softmax_back built: %s", ts_graph_error(g));
    if (d0 && d1) {
        bind(g);
        ts_rng r;
        ts_rng_seed(&r, 30);
        fill_random(x, &r, 2);
        fill_random(c, &r, 1);
        ts_tensor *all[] = {y0, y1, d0, d1};
        for (int i = 0; i < 4; i++) CHECK_OK(run(g, all[i]), g);
        CHECK(fd_mismatches(g, x, y0, c, 1, d0) == 0, "softmax_back axis 0 vs finite differences");
        CHECK(fd_mismatches(g, x, y1, c, 1, d1) == 0, "softmax_back axis 1 vs finite differences");
    }
    done(g);
}

static void test_rms_norm_back_fd(void) {
    const float eps = 1e-2f;
    ts_graph *g = ts_graph_new();
    ts_tensor *x = ts_new_tensor_2d(g, TS_F64, 3, 6, "x"), *w = ts_new_tensor_1d(g, TS_F64, 6, "w");
    ts_tensor *c = ts_new_tensor_2d(g, TS_F64, 3, 6, "c");
    ts_tensor *y = ts_rms_norm(g, x, NULL, eps), *yw = ts_rms_norm(g, x, w, eps);
    ts_tensor *s[3] = {x, c, w};
    ts_tensor *d = ts_op_node(g, TS_OP_RMS_NORM_BACK, s, 2, NULL, 0, &eps, 1);
    ts_tensor *dw = ts_op_node(g, TS_OP_RMS_NORM_BACK, s, 3, NULL, 0, &eps, 1);
    CHECK(d && dw, "rms_norm_back built: %s", ts_graph_error(g));
    if (d && dw) {
        bind(g);
        ts_rng r;
        ts_rng_seed(&r, 31);
        fill_random(x, &r, 1);
        fill_random(w, &r, 2);
        fill_random(c, &r, 1);
        ts_tensor *all[] = {y, yw, d, dw};
        for (int i = 0; i < 4; i++) CHECK_OK(run(g, all[i]), g);
        CHECK(fd_mismatches(g, x, y, c, 1, d) == 0, "rms_norm_back vs finite differences");
        CHECK(fd_mismatches(g, x, yw, c, 1, dw) == 0, "rms_norm_back with weight vs finite differences");
    }
    done(g);
}

static void test_get_rows_back_fd(void) {
    ts_graph *g = ts_graph_new();
    ts_tensor *table = ts_new_tensor_2d(g, TS_F64, 4, 3, "table");
    ts_tensor *ids = ts_new_tensor_1d(g, TS_I32, 5, "ids");
    ts_tensor *c = ts_new_tensor_2d(g, TS_F64, 5, 3, "c");
    ts_tensor *y = ts_get_rows(g, table, ids);
    ts_tensor *s[2] = {ids, c};
    ts_tensor *d = ts_op_node(g, TS_OP_GET_ROWS_BACK, s, 2, (int32_t[]){4}, 1, NULL, 0);
    CHECK(d && d->shape[0] == 4 && d->shape[1] == 3, "get_rows_back built: %s", ts_graph_error(g));
    if (d) {
        bind(g);
        ts_rng r;
        ts_rng_seed(&r, 32);
        fill_random(table, &r, 1);
        fill_random(c, &r, 1);
        set_values(ids, (double[]){1, 3, 1, 0, 1});
        CHECK_OK(run(g, y), g);
        CHECK_OK(run(g, d), g);
        CHECK(fd_mismatches(g, table, y, c, 1, d) == 0, "get_rows_back vs finite differences");
        CHECK(get(d, 2 * 3) == 0 && get(d, 2 * 3 + 2) == 0, "unused row must get a zero gradient");
        double want = get(c, 0) + get(c, 6) + get(c, 12); /* id 1 at positions 0, 2, 4 */
        CHECK(close_to(get(d, 3), want, 1e-15), "repeated id sums its rows");
        set(ids, 2, 4);
        CHECK(run(g, d) == TS_ERR_RANGE && strstr(ts_graph_error(g), "get_rows_back"), "get_rows_back bad id: '%s'",
              ts_graph_error(g));
    }
    done(g);
}

static void test_cross_entropy_back_fd(void) {
    ts_graph *g = ts_graph_new();
    ts_tensor *logits = ts_new_tensor_2d(g, TS_F64, 3, 5, "logits");
    ts_tensor *targets = ts_new_tensor_1d(g, TS_I64, 3, "targets");
    ts_tensor *dloss = ts_new_tensor_1d(g, TS_F64, 1, "dloss");
    ts_tensor *loss = ts_cross_entropy(g, logits, targets);
    ts_tensor *s[3] = {logits, targets, dloss};
    ts_tensor *d = ts_op_node(g, TS_OP_CROSS_ENTROPY_BACK, s, 3, NULL, 0, NULL, 0);
    CHECK(d, "cross_entropy_back built: %s", ts_graph_error(g));
    if (d) {
        bind(g);
        ts_rng r;
        ts_rng_seed(&r, 33);
        fill_random(logits, &r, 2);
        set_values(targets, (double[]){2, -1, 4});
        set(dloss, 0, 0.7);
        CHECK_OK(run(g, loss), g);
        CHECK_OK(run(g, d), g);
        CHECK(fd_mismatches(g, logits, loss, NULL, 0.7, d) == 0, "cross_entropy_back vs finite differences");
        int nonzero = 0;
        for (int k = 0; k < 5; k++) nonzero += get(d, 5 + k) != 0.0;
        CHECK(nonzero == 0, "ignored row must get an exactly zero gradient");
    }
    done(g);
}

/* ---------------------------------------------------------------- thread-count independence */

/* Problems large enough that 2 threads really split them; all outputs must match bit for bit. */
static void test_thread_determinism(void) {
    ts_graph *g = ts_graph_new();
    ts_tensor *a = ts_new_tensor_4d(g, TS_F32, 2, 1, 64, 48, "a"), *b = ts_new_tensor_3d(g, TS_F32, 3, 48, 40, "b");
    ts_tensor *x = ts_new_tensor_2d(g, TS_F32, 64, 128, "x"), *mask = ts_new_tensor_1d(g, TS_F32, 128, "mask");
    ts_tensor *w = ts_new_tensor_1d(g, TS_F32, 128, "w"), *ang = ts_new_tensor_2d(g, TS_F32, 64, 16, "ang");
    ts_tensor *c = ts_new_tensor_2d(g, TS_F32, 64, 128, "c");
    ts_tensor *table = ts_new_tensor_2d(g, TS_F32, 100, 64, "table"), *ids = ts_new_tensor_1d(g, TS_I32, 300, "ids");
    ts_tensor *gidx = ts_new_tensor_2d(g, TS_I64, 64, 128, "gidx");
    ts_tensor *sidx = ts_new_tensor_2d(g, TS_I32, 200, 128, "sidx"), *sval = ts_new_tensor_2d(g, TS_F32, 200, 128, "sval");
    ts_tensor *dy_rows = ts_new_tensor_2d(g, TS_F32, 300, 64, "dy_rows");
    ts_tensor *logits = ts_new_tensor_2d(g, TS_F32, 256, 64, "logits"), *tg = ts_new_tensor_1d(g, TS_I32, 256, "tg");
    ts_tensor *dloss = ts_new_tensor_1d(g, TS_F32, 1, "dloss");
    ts_tensor *sm = ts_softmax(g, x, 1, mask), *topi = NULL;
    ts_topk(g, x, 8, NULL, &topi);
    ts_tensor *s_sb[2] = {sm, c}, *s_rb[3] = {x, c, w}, *s_gb[2] = {ids, dy_rows}, *s_cb[3] = {logits, tg, dloss};
    float eps = 1e-5f;
    ts_tensor *outs[] = {
        ts_matmul(g, a, b, false, false),
        sm,
        ts_rms_norm(g, x, w, eps),
        ts_rope(g, x, ang, 32, false),
        ts_get_rows(g, table, ids),
        topi,
        ts_gather(g, x, 1, gidx),
        ts_scatter_add(g, x, 0, sidx, sval),
        ts_cross_entropy(g, logits, tg),
        ts_op_node(g, TS_OP_SOFTMAX_BACK, s_sb, 2, (int32_t[]){1}, 1, NULL, 0),
        ts_op_node(g, TS_OP_RMS_NORM_BACK, s_rb, 3, NULL, 0, &eps, 1),
        ts_op_node(g, TS_OP_GET_ROWS_BACK, s_gb, 2, (int32_t[]){100}, 1, NULL, 0),
        ts_op_node(g, TS_OP_CROSS_ENTROPY_BACK, s_cb, 3, NULL, 0, NULL, 0),
    };
    enum { N_OUT = sizeof outs / sizeof outs[0] };
    bool built = true;
    for (int i = 0; i < N_OUT; i++) built = built && outs[i];
    CHECK(built, "determinism graph built: %s", ts_graph_error(g));
    if (!built) {
        done(g);
        return;
    }
    bind(g);
    ts_rng r;
    ts_rng_seed(&r, 40);
    ts_tensor *floats[] = {a, b, x, w, c, table, sval, dy_rows, logits};
    for (size_t i = 0; i < sizeof floats / sizeof floats[0]; i++) fill_random(floats[i], &r, 3);
    fill_random(ang, &r, 10);
    for (int64_t i = 0; i < 128; i++) set(mask, i, i % 7 == 3 ? -INFINITY : 0.0);
    fill_random_ids(ids, &r, 100);
    fill_random_ids(gidx, &r, 128);
    fill_random_ids(sidx, &r, 64);
    fill_random_ids(tg, &r, 64);
    for (int64_t i = 0; i < 256; i += 5) set(tg, i, -1);
    set(dloss, 0, 1.5);

    void *first[N_OUT];
    ts_threadpool *pools[2] = {NULL, NULL};
    CHECK_OK(ts_threadpool_new(1, &pools[0]), NULL);
    CHECK_OK(ts_threadpool_new(2, &pools[1]), NULL);
    ts_threadpool *saved = g_pool;
    int differ = 0;
    for (int p = 0; p < 2 && pools[0] && pools[1]; p++) {
        g_pool = pools[p];
        for (int i = 0; i < N_OUT; i++) {
            CHECK_OK(run(g, outs[i]), g);
            size_t n = ts_nbytes(outs[i]);
            if (p == 0) {
                first[i] = malloc(n);
                memcpy(first[i], outs[i]->data, n);
            } else {
                if (memcmp(first[i], outs[i]->data, n) != 0) {
                    differ++;
                    fprintf(stderr, "  %s differs between 1 and 2 threads\n", ts_op_name(outs[i]->op));
                }
                free(first[i]);
            }
        }
    }
    CHECK(differ == 0, "%d outputs depend on the thread count", differ);
    g_pool = saved;
    ts_threadpool_free(pools[0]);
    ts_threadpool_free(pools[1]);
    done(g);
}

int main(void) {
    for (int threads = 1; threads <= 2; threads++) {
        if (ts_threadpool_new(threads, &g_pool) != TS_OK) {
            CHECK(false, "thread pool of %d", threads);
            continue;
        }
        test_matmul_2d(TS_F64, 1e-14);
        test_matmul_2d(TS_F32, 1e-6);
        test_matmul_batched();
        test_matmul_strided_and_bf16();
        test_softmax_hand();
        test_softmax_props();
        test_rms_norm();
        test_rope();
        test_get_rows();
        test_topk();
        test_gather_scatter_hand();
        test_gather_scatter_adjoint();
        test_gather_scatter_errors();
        test_cross_entropy();
        test_softmax_back_fd();
        test_rms_norm_back_fd();
        test_get_rows_back_fd();
        test_cross_entropy_back_fd();
        ts_threadpool_free(g_pool);
        g_pool = NULL;
    }
    test_thread_determinism();
    return check_summary("ref_nn");
}
