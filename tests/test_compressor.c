/* test_compressor.c - tests of the KV compressor / indexer graph builders and their host helpers
 * (src/model/compressor.c, spec §2.4, §2.7-2.9) on the reference CPU backend in f64:
 *   1. YaRN frequency tables: lo/hi and ω' for the published config (base 160000, r 64, factor
 *      16, L_orig 65536, β 32/1 -> lo 15, hi 25), the tiny fixture's (γ = 1/3, 2/3; also against
 *      the HF port's own f64 tables in tests/fixtures/v4/expected.safetensors) and the lo == hi
 *      (+0.001) rule; no-YaRN tables; the angle tables at block-start positions;
 *   2. forward values of the HCA and CSA compressors and of the indexer (keys, scores, top-k
 *      indices with -1 for invisible slots) against plain-loop double implementations of the spec
 *      text written here (T = 13, so the last block is incomplete; T = 12; f32 too), and the
 *      selection used as ts_attention's extra_idx;
 *   3. causality / receptive fields by perturbation: HCA entry i depends exactly on tokens
 *      m'i .. m'i+m'-1, CSA entry i on 4i-4 .. 4i+3, trailing tokens on nothing;
 *   4. central finite-difference gradient checks of both compressors w.r.t. x, wkv, wgate, ape
 *      and the norm weight (the framework of test_mhc.c);
 *   5. the host helpers (block mask, HCA extra_idx) and argument errors. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "model/model_internal.h"
#include "tessera/backend.h"
#include "tessera/graph.h"
#include "tessera/io.h"

#define NT 13   /* tokens (last block incomplete) */
#define ND 6    /* hidden size */
#define NC 8    /* compressed width (also the indexer head_dim) */
#define NR 4    /* rope dims */
#define MH 4    /* HCA ratio m' */
#define MC 4    /* CSA ratio m */
#define NBH (NT / MH)
#define NBC (NT / MC)
#define NH 3    /* indexer heads */
#define NQ 5    /* q_lora */
#define TOPK 2

#define NORM_EPS_F 1e-6f
static const double NORM_EPS = (double)NORM_EPS_F;
static const double BASE = 160000.0;
static const ts_v4_rope_scaling YARN = {true, 16.0, 65536, 32.0, 1.0};

static ts_backend *be;

/* ---------------------------------------------------------------- helpers */

static void fill_uniform(ts_rng *r, double *v, int64_t n, double lo, double hi) {
    for (int64_t i = 0; i < n; i++) v[i] = lo + (hi - lo) * ts_rng_uniform(r);
}
static bool write_d(ts_tensor *t, const double *v) {
    return ts_tensor_write(t, v, (size_t)ts_nelements(t) * sizeof(double)) == TS_OK;
}
static bool read_d(const ts_tensor *t, double *v) {
    return t && ts_tensor_read(t, v, (size_t)ts_nelements(t) * sizeof(double)) == TS_OK;
}
/* f64 leaves take the doubles, other float dtypes the values rounded through f32 */
static bool write_any(ts_tensor *t, const double *v) {
    if (t->dtype == TS_F64) return write_d(t, v);
    int64_t n = ts_nelements(t);
    float *f = malloc((size_t)n * sizeof(float));
    for (int64_t i = 0; i < n; i++) f[i] = (float)v[i];
    bool ok = ts_tensor_write_f32(t, f, n) == TS_OK;
    free(f);
    return ok;
}
static bool read_any(const ts_tensor *t, double *v) {
    if (!t) return false;
    if (t->dtype == TS_F64) return read_d(t, v);
    int64_t n = ts_nelements(t);
    float *f = malloc((size_t)n * sizeof(float));
    bool ok = ts_tensor_read_f32(t, f, n) == TS_OK;
    for (int64_t i = 0; ok && i < n; i++) v[i] = f[i];
    free(f);
    return ok;
}

static double max_abs_diff(const double *a, const double *b, int64_t n) {
    double m = 0;
    for (int64_t i = 0; i < n; i++) {
        double e = fabs(a[i] - b[i]);
        if (!(e <= m)) m = isnan(e) ? INFINITY : e;
    }
    return m;
}

/* ---------------------------------------------------------------- reference (spec text, loops) */

/* §2.4 literally: ω_k = base^(-2k/r); YaRN corr/lo/hi/γ over the pair index k. */
static void ref_omega(double base, int r, const ts_v4_rope_scaling *y, double *om, double *lo_o, double *hi_o) {
    double lo = 0, hi = 0;
    if (y) {
        double cf = r * log(y->original_max_position_embeddings / (2 * M_PI * y->beta_fast)) / (2 * log(base));
        double cs = r * log(y->original_max_position_embeddings / (2 * M_PI * y->beta_slow)) / (2 * log(base));
        lo = floor(cf) > 0 ? floor(cf) : 0;
        hi = ceil(cs) < r - 1 ? ceil(cs) : r - 1;
        if (lo == hi) hi += 0.001;
    }
    for (int k = 0; k < r / 2; k++) {
        double w = pow(base, -2.0 * k / r);
        if (y) {
            double gam = (k - lo) / (hi - lo);
            gam = gam < 0 ? 0 : gam > 1 ? 1 : gam;
            w = (w / y->factor) * gam + w * (1 - gam);
        }
        om[k] = w;
    }
    if (lo_o) *lo_o = lo;
    if (hi_o) *hi_o = hi;
}

/* weighted RMSNorm of v[n], then RoPE of the last r dims (pairs 2k, 2k+1) at position pos. */
static void ref_norm_rope(double *v, int n, const double *w, int r, double pos, const double *om) {
    double ms = 0;
    for (int j = 0; j < n; j++) ms += v[j] * v[j];
    double rms = sqrt(ms / n + NORM_EPS);
    for (int j = 0; j < n; j++) v[j] = w[j] * v[j] / rms;
    for (int k = 0; k < r / 2; k++) {
        double *p = v + n - r + 2 * k, a = p[0], b = p[1], th = pos * om[k];
        p[0] = a * cos(th) - b * sin(th);
        p[1] = a * sin(th) + b * cos(th);
    }
}

/* y[j][o] = Σ_i x[j][i]·W[o][i] */
static double lin(const double *x, const double *W, int din, int o) {
    double s = 0;
    for (int i = 0; i < din; i++) s += x[i] * W[o * din + i];
    return s;
}

/* HCA: x [T][d], wkv/wgate [c][d], ape [m][c], norm [c] -> out [T/m][c]. */
static void ref_hca(const double *x, int T, int d, int c, int m, const double *wkv, const double *wgate,
                    const double *ape, const double *nw, int r, const double *om, double *out) {
    for (int i = 0; i < T / m; i++) {
        double *e = out + i * c;
        for (int ch = 0; ch < c; ch++) {
            double sc[64], mx = -INFINITY, den = 0, acc = 0;
            for (int j = 0; j < m; j++) {
                sc[j] = lin(x + (i * m + j) * d, wgate, d, ch) + ape[j * c + ch];
                if (sc[j] > mx) mx = sc[j];
            }
            for (int j = 0; j < m; j++) den += exp(sc[j] - mx);
            for (int j = 0; j < m; j++) acc += exp(sc[j] - mx) / den * lin(x + (i * m + j) * d, wkv, d, ch);
            e[ch] = acc;
        }
        ref_norm_rope(e, c, nw, r, (double)i * m, om);
    }
}

/* CSA: wkv/wgate [2c][d], ape [m][2c]: channels [0,c) = b (next block), [c,2c) = a (own block). */
static void ref_csa(const double *x, int T, int d, int c, int m, const double *wkv, const double *wgate,
                    const double *ape, const double *nw, int r, const double *om, double *out) {
    for (int i = 0; i < T / m; i++) {
        double *e = out + i * c;
        for (int ch = 0; ch < c; ch++) {
            double sc[64], val[64], mx = -INFINITY, den = 0, acc = 0;
            int n = 0;
            if (i > 0)
                for (int j = 0; j < m; j++) { /* block i-1, series b */
                    const double *xt = x + ((i - 1) * m + j) * d;
                    sc[n] = lin(xt, wgate, d, ch) + ape[j * 2 * c + ch];
                    val[n++] = lin(xt, wkv, d, ch);
                }
            for (int j = 0; j < m; j++) { /* block i, series a */
                const double *xt = x + (i * m + j) * d;
                sc[n] = lin(xt, wgate, d, c + ch) + ape[j * 2 * c + c + ch];
                val[n++] = lin(xt, wkv, d, c + ch);
            }
            for (int j = 0; j < n; j++) mx = sc[j] > mx ? sc[j] : mx;
            for (int j = 0; j < n; j++) den += exp(sc[j] - mx);
            for (int j = 0; j < n; j++) acc += exp(sc[j] - mx) / den * val[j];
            e[ch] = acc;
        }
        ref_norm_rope(e, c, nw, r, (double)i * m, om);
    }
}

/* ---------------------------------------------------------------- 1: YaRN tables */

static void test_yarn(void) {
    double om[32], ro[32], lo, hi;
    CHECK(ts_v4_rope_freqs(160000, 64, &YARN, om, &lo, &hi), "freqs failed");
    CHECK(lo == 15 && hi == 25, "published config: lo %g hi %g (want 15, 25)", lo, hi);
    double worst = 0;
    for (int k = 0; k < 32; k++) {
        double w = pow(160000, -2.0 * k / 64), want = k <= 15 ? w : k >= 25 ? w / 16 : w / 16 * (k - 15) / 10.0 + w * (1 - (k - 15) / 10.0);
        worst = fmax(worst, fabs(om[k] - want) / want);
    }
    CHECK(worst <= 1e-15, "published YaRN table off by %.2e relative", worst);
    ref_omega(160000, 64, &YARN, ro, NULL, NULL);
    CHECK(max_abs_diff(om, ro, 32) <= 1e-18, "published table differs from the reference");
    printf("  YaRN base 160000 r 64 s 16 L 65536 b 32/1: lo %g hi %g, table rel err %.1e\n", lo, hi, worst);

    /* tiny fixture (reference notes §3.1): factor 4, L 256, r 16: pair 0 kept, γ = 1/3, 2/3, >= 3 / 4 */
    ts_v4_rope_scaling tiny = {true, 4.0, 256, 32.0, 1.0};
    CHECK(ts_v4_rope_freqs(160000, 16, &tiny, om, &lo, &hi), "tiny freqs");
    CHECK(lo == 0 && hi == 3, "tiny: lo %g hi %g (want 0, 3)", lo, hi);
    worst = 0;
    for (int k = 0; k < 8; k++) {
        double w = pow(160000, -2.0 * k / 16), g = k >= 3 ? 1 : k / 3.0;
        worst = fmax(worst, fabs(om[k] - (w / 4 * g + w * (1 - g))) / w);
    }
    CHECK(worst <= 1e-15, "tiny table off by %.2e", worst);

    /* lo == hi (both clamp to 0 when L_orig / 2π < 1): hi = 0.001, pair 0 kept, the rest / s */
    ts_v4_rope_scaling eq = {true, 8.0, 4, 32.0, 1.0};
    CHECK(ts_v4_rope_freqs(10000, 8, &eq, om, &lo, &hi), "eq freqs");
    CHECK(lo == 0 && fabs(hi - 0.001) < 1e-15, "lo == hi rule: lo %g hi %g", lo, hi);
    CHECK(om[0] == 1.0 && fabs(om[1] - pow(10000, -0.25) / 8) < 1e-18 && fabs(om[3] - pow(10000, -0.75) / 8) < 1e-18,
          "lo == hi table wrong: %g %g", om[0], om[1]);

    /* no YaRN: plain base^(-2k/r) (window-only layers, base 10000) */
    ts_v4_rope_scaling off = YARN;
    off.enabled = false;
    CHECK(ts_v4_rope_freqs(10000, 64, &off, om, &lo, &hi) && lo == 0 && hi == 0, "no-yarn freqs");
    worst = 0;
    for (int k = 0; k < 32; k++) worst = fmax(worst, fabs(om[k] - pow(10000, -2.0 * k / 64)));
    CHECK(worst == 0, "no-yarn table differs by %g", worst);
    CHECK(ts_v4_rope_freqs(10000, 64, NULL, ro, NULL, NULL) && max_abs_diff(om, ro, 32) == 0, "NULL yarn");
    CHECK(!ts_v4_rope_freqs(10000, 5, NULL, om, NULL, NULL), "odd n_rot accepted");

    /* angles at block starts: angles[p][k] = p·step·ω'_k */
    double ang[5 * 32];
    CHECK(ts_v4_rope_angles(160000, 64, &YARN, 5, 128, ang), "angles");
    ts_v4_rope_freqs(160000, 64, &YARN, om, NULL, NULL);
    worst = 0;
    for (int p = 0; p < 5; p++)
        for (int k = 0; k < 32; k++) worst = fmax(worst, fabs(ang[p * 32 + k] - p * 128.0 * om[k]));
    CHECK(worst == 0, "angle table off by %g", worst);
}

/* The frequency tables the HF port computed for the tiny fixture (reference notes §3.2:
 * rope.inv_freq.main = base 10000, no YaRN; .compress = base 160000 + YaRN factor 4, L_orig 256,
 * β 32/1; r = 16), read from tests/fixtures/v4/expected.safetensors beside this file. */
static void test_fixture_freqs(void) {
    char path[1024];
    const char *slash = strrchr(__FILE__, '/');
    snprintf(path, sizeof path, "%.*s/fixtures/v4/expected.safetensors", slash ? (int)(slash - __FILE__) : 1,
             slash ? __FILE__ : ".");
    ts_st_file *f = NULL;
    CHECK(ts_st_file_open(path, &f, NULL) == TS_OK, "cannot open %s", path);
    if (!f) return;
    ts_v4_rope_scaling tiny = {true, 4.0, 256, 32.0, 1.0};
    const char *names[2] = {"rope.inv_freq.main", "rope.inv_freq.compress"};
    for (int i = 0; i < 2; i++) {
        const ts_st_tensor *t = ts_st_file_find(f, names[i]);
        CHECK(t && t->dtype == TS_ST_F64 && t->numel == 8, "%s missing or not F64 [8]", names[i]);
        if (!(t && t->dtype == TS_ST_F64 && t->numel == 8)) continue;
        double want[8], om[8];
        memcpy(want, t->data, sizeof want);
        ts_v4_rope_freqs(i ? 160000 : 10000, 16, i ? &tiny : NULL, om, NULL, NULL);
        double worst = 0;
        for (int k = 0; k < 8; k++) worst = fmax(worst, fabs(om[k] - want[k]) / want[k]);
        printf("  fixture %-22s max rel err %.1e\n", names[i], worst);
        CHECK(worst <= 1e-14, "%s differs by %.2e relative", names[i], worst);
    }
    ts_st_file_close(f);
}

/* ---------------------------------------------------------------- 2, 3: forward values, causality */

typedef struct {
    double x[NT * ND], hkv[NC * ND], hgate[NC * ND], hape[MH * NC], hnorm[NC];
    double ckv[2 * NC * ND], cgate[2 * NC * ND], cape[MC * 2 * NC], cnorm[NC];
    double ikv[2 * NC * ND], igate[2 * NC * ND], iape[MC * 2 * NC], inorm[NC];
    double cq[NT * NQ], wqb[NH * NC * NQ], wproj[NH * ND];
} fwd_data;

/* Indexer reference: keys K [NBC][NC], scores [NT][NBC] (-inf masked), selection (sorted). */
static void ref_indexer(const fwd_data *D, int T, const double *om, double *K, double *S, int32_t *sel) {
    ref_csa(D->x, T, ND, NC, MC, D->ikv, D->igate, D->iape, D->inorm, NR, om, K);
    for (int t = 0; t < T; t++) {
        double q[NH][NC], w[NH];
        for (int h = 0; h < NH; h++) {
            for (int j = 0; j < NC; j++) q[h][j] = lin(D->cq + t * NQ, D->wqb, NQ, h * NC + j);
            for (int k = 0; k < NR / 2; k++) { /* RoPE at t on the last NR dims */
                double *p = q[h] + NC - NR + 2 * k, a = p[0], b = p[1], th = t * om[k];
                p[0] = a * cos(th) - b * sin(th);
                p[1] = a * sin(th) + b * cos(th);
            }
            /* head_dim^-1/2 · n_heads^-1/2 enters the graph as a float op parameter (like every
             * constant), so the reference uses that float value widened to double */
            w[h] = lin(D->x + t * ND, D->wproj, ND, h) * (double)(float)(1.0 / sqrt((double)NC * NH));
        }
        int vis = (t + 1) / MC < NBC ? (t + 1) / MC : NBC;
        for (int i = 0; i < NBC; i++) {
            double s = 0;
            for (int h = 0; h < NH; h++) {
                double dot = 0;
                for (int j = 0; j < NC; j++) dot += q[h][j] * K[i * NC + j];
                s += w[h] * (dot > 0 ? dot : 0);
            }
            S[t * NBC + i] = i < vis ? s : -INFINITY;
        }
        int k = TOPK < NBC ? TOPK : NBC;
        bool used[NBC] = {0};
        for (int e = 0; e < k; e++) { /* descending selection among visible blocks */
            int best = -1;
            for (int i = 0; i < vis; i++)
                if (!used[i] && (best < 0 || S[t * NBC + i] > S[t * NBC + best])) best = i;
            sel[t * k + e] = best;
            if (best >= 0) used[best] = true;
        }
    }
}

/* T = 13 (trailing incomplete block, sliced off) or 12 (exact); dt = f64 (tolerance 1e-12) or f32
 * (the same graph in single precision against the double reference, 2e-5). */
static void test_forward(int T, ts_dtype dt) {
    const bool f64 = dt == TS_F64;
    const double tol = f64 ? 1e-12 : 2e-5;
    ts_rng r;
    ts_rng_seed(&r, 2024);
    static fwd_data D;
    fill_uniform(&r, D.x, NT * ND, -1, 1);
    double s = 1 / sqrt((double)ND);
    fill_uniform(&r, D.hkv, NC * ND, -s, s);
    fill_uniform(&r, D.hgate, NC * ND, -2 * s, 2 * s);
    fill_uniform(&r, D.hape, MH * NC, -0.5, 0.5);
    fill_uniform(&r, D.hnorm, NC, 0.7, 1.3);
    fill_uniform(&r, D.ckv, 2 * NC * ND, -s, s);
    fill_uniform(&r, D.cgate, 2 * NC * ND, -2 * s, 2 * s);
    fill_uniform(&r, D.cape, MC * 2 * NC, -0.5, 0.5);
    fill_uniform(&r, D.cnorm, NC, 0.7, 1.3);
    fill_uniform(&r, D.ikv, 2 * NC * ND, -s, s);
    fill_uniform(&r, D.igate, 2 * NC * ND, -2 * s, 2 * s);
    fill_uniform(&r, D.iape, MC * 2 * NC, -0.5, 0.5);
    fill_uniform(&r, D.inorm, NC, 0.7, 1.3);
    fill_uniform(&r, D.cq, NT * NQ, -1, 1);
    fill_uniform(&r, D.wqb, NH * NC * NQ, -0.5, 0.5);
    fill_uniform(&r, D.wproj, NH * ND, -0.5, 0.5);

    ts_graph *g = ts_graph_new();
    ts_tensor *x = ts_new_tensor_2d(g, dt, T, ND, "x");
    ts_v4_compressor_w hw = {ts_new_tensor_2d(g, dt, NC, ND, "hca.wkv"),
                             ts_new_tensor_2d(g, dt, NC, ND, "hca.wgate"),
                             ts_new_tensor_2d(g, dt, MH, NC, "hca.ape"), ts_new_tensor_1d(g, dt, NC, "hca.norm")};
    ts_v4_compressor_w cw = {ts_new_tensor_2d(g, dt, 2 * NC, ND, "csa.wkv"),
                             ts_new_tensor_2d(g, dt, 2 * NC, ND, "csa.wgate"),
                             ts_new_tensor_2d(g, dt, MC, 2 * NC, "csa.ape"),
                             ts_new_tensor_1d(g, dt, NC, "csa.norm")};
    ts_v4_compressor_w iw = {ts_new_tensor_2d(g, dt, 2 * NC, ND, "idx.wkv"),
                             ts_new_tensor_2d(g, dt, 2 * NC, ND, "idx.wgate"),
                             ts_new_tensor_2d(g, dt, MC, 2 * NC, "idx.ape"),
                             ts_new_tensor_1d(g, dt, NC, "idx.norm")};
    ts_tensor *ang_h = ts_new_tensor_2d(g, dt, NBH, NR / 2, "angles.hca");
    ts_tensor *ang_c = ts_new_tensor_2d(g, dt, NBC, NR / 2, "angles.csa");
    ts_tensor *ang_q = ts_new_tensor_2d(g, dt, T, NR / 2, "angles.q");
    ts_tensor *cq = ts_new_tensor_2d(g, dt, T, NQ, "cq");
    ts_tensor *wqb = ts_new_tensor_2d(g, dt, NH * NC, NQ, "wq_b");
    ts_tensor *wproj = ts_new_tensor_2d(g, dt, NH, ND, "weights_proj");
    ts_tensor *mask = ts_new_tensor_2d(g, dt, T, NBC, "mask");
    ts_tensor *hca = ts_set_output(ts_v4_hca_compress(g, x, &hw, MH, ang_h, NR, NORM_EPS_F));
    ts_tensor *csa = ts_set_output(ts_v4_csa_compress(g, x, &cw, MC, ang_c, NR, NORM_EPS_F));
    ts_tensor *scores = NULL, *keys = NULL;
    ts_tensor *idx = ts_set_output(ts_v4_indexer(g, x, cq, wqb, wproj, &iw, NH, NC, MC, ang_q, ang_c, NR,
                                                 NORM_EPS_F, mask, TOPK, &scores, &keys));
    ts_set_output(scores);
    ts_set_output(keys);
    /* the selection feeds ts_attention as extra_idx (CSA entries as extras): compared below with
     * the same attention reading the reference selection from a host-written i32 leaf */
    ts_tensor *qkv = ts_new_tensor_4d(g, dt, 1, T, 1, NC, "qkv");
    ts_tensor *ref_idx = ts_new_tensor_3d(g, TS_I32, 1, T, TOPK, "ref_idx");
    ts_attention_params ap = {.scale = 0.35f, .causal = true, .window = 3,
                              .extra = ts_reshape(g, csa, 4, (int64_t[]){1, NBC, 1, NC}),
                              .extra_idx = ts_reshape(g, idx, 3, (int64_t[]){1, T, TOPK})};
    ts_tensor *att = ts_set_output(ts_attention(g, qkv, qkv, qkv, &ap));
    ap.extra_idx = ref_idx;
    ts_tensor *att_ref = ts_set_output(ts_attention(g, qkv, qkv, qkv, &ap));
    CHECK(hca && csa && idx && att && att_ref, "build failed: %s", ts_graph_error(g));
    if (!(hca && csa && idx && att && att_ref)) {
        ts_graph_free(g);
        return;
    }
    CHECK(hca->shape[0] == NBH && hca->shape[1] == NC && csa->shape[0] == NBC && idx->dtype == TS_I32 &&
              idx->shape[0] == T && idx->shape[1] == TOPK,
          "output shapes");
    CHECK_OK(ts_graph_alloc(g, be, NULL, NULL), g);
    bool ok = write_any(x, D.x) && write_any(hw.wkv, D.hkv) && write_any(hw.wgate, D.hgate) && write_any(hw.ape, D.hape) &&
              write_any(hw.norm, D.hnorm) && write_any(cw.wkv, D.ckv) && write_any(cw.wgate, D.cgate) &&
              write_any(cw.ape, D.cape) && write_any(cw.norm, D.cnorm) && write_any(iw.wkv, D.ikv) &&
              write_any(iw.wgate, D.igate) && write_any(iw.ape, D.iape) && write_any(iw.norm, D.inorm) &&
              write_any(cq, D.cq) && write_any(wqb, D.wqb) && write_any(wproj, D.wproj);
    ok = ok && ts_v4_rope_angles_write(ang_h, BASE, NR, &YARN, MH) == TS_OK &&
         ts_v4_rope_angles_write(ang_c, BASE, NR, &YARN, MC) == TS_OK &&
         ts_v4_rope_angles_write(ang_q, BASE, NR, &YARN, 1) == TS_OK && ts_v4_block_mask_write(mask, MC) == TS_OK;
    static double qv[NT * NC];
    fill_uniform(&r, qv, T * NC, -1, 1);
    ok = ok && write_any(qkv, qv);
    double om[NR / 2];
    ref_omega(BASE, NR, &YARN, om, NULL, NULL);
    static double rh[NBH * NC], rc[NBC * NC], rk[NBC * NC], rs[NT * NBC], gh[NBH * NC], gc[NBC * NC],
        gk[NBC * NC], gs[NT * NBC], ga[NT * NC], gar[NT * NC];
    int32_t rsel[NT * TOPK], gsel[NT * TOPK];
    ref_indexer(&D, T, om, rk, rs, rsel);
    ok = ok && ts_tensor_write(ref_idx, rsel, (size_t)T * TOPK * sizeof(int32_t)) == TS_OK;
    CHECK(ok, "writing leaves failed");
    CHECK_OK(ts_graph_compute(g), g);

    ref_hca(D.x, T, ND, NC, MH, D.hkv, D.hgate, D.hape, D.hnorm, NR, om, rh);
    ref_csa(D.x, T, ND, NC, MC, D.ckv, D.cgate, D.cape, D.cnorm, NR, om, rc);
    CHECK(read_any(hca, gh) && read_any(csa, gc) && read_any(keys, gk) && read_any(scores, gs) &&
              ts_tensor_read(idx, gsel, (size_t)T * TOPK * sizeof(int32_t)) == TS_OK,
          "read outputs");
    double eh = max_abs_diff(gh, rh, NBH * NC), ec = max_abs_diff(gc, rc, NBC * NC),
           ek = max_abs_diff(gk, rk, NBC * NC);
    double es = 0;
    int n_inf_bad = 0;
    for (int i = 0; i < T * NBC; i++) {
        if (isinf(rs[i])) n_inf_bad += !(isinf(gs[i]) && gs[i] < 0);
        else es = fmax(es, isnan(gs[i]) ? INFINITY : fabs(gs[i] - rs[i]));
    }
    int n_sel_bad = 0;
    for (int i = 0; i < T * TOPK; i++) n_sel_bad += gsel[i] != rsel[i];
    printf("  %s forward vs reference (T %d, d %d, c %d, r %d): HCA m' %d max err %.1e, CSA m %d %.1e, indexer "
           "keys %.1e scores %.1e, top-%d mismatches %d\n",
           f64 ? "f64" : "f32", T, ND, NC, NR, MH, eh, MC, ec, ek, es, TOPK, n_sel_bad);
    CHECK(eh <= tol, "HCA forward err %.3e", eh);
    CHECK(ec <= tol, "CSA forward err %.3e", ec);
    CHECK(ek <= tol, "indexer keys err %.3e", ek);
    CHECK(es <= tol && n_inf_bad == 0, "indexer scores err %.3e, %d masked entries not -inf", es, n_inf_bad);
    CHECK(n_sel_bad == 0, "%d top-k slots differ", n_sel_bad);
    CHECK(read_any(att, ga) && read_any(att_ref, gar) && max_abs_diff(ga, gar, T * NC) == 0,
          "attention with the indexer's extra_idx differs from the reference selection's");
    /* the first rows see fewer than TOPK blocks: -1 slots must be present */
    CHECK(gsel[0] == -1 && gsel[1] == -1 && gsel[3 * TOPK] == 0 && gsel[3 * TOPK + 1] == -1 &&
              gsel[7 * TOPK + 1] != -1,
          "expected -1 pattern: row0 %d %d row3 %d %d row7 %d", gsel[0], gsel[1], gsel[6], gsel[7], gsel[15]);

    /* 3: receptive fields by perturbation of one token at a time (f64 only) */
    if (!f64) {
        ts_graph_free(g);
        return;
    }
    int bad_h = 0, bad_c = 0, bad_k = 0;
    static double ph[NBH * NC], pc[NBC * NC], pk[NBC * NC], xp[NT * ND];
    for (int sidx = 0; sidx < T; sidx++) {
        memcpy(xp, D.x, (size_t)T * ND * sizeof(double));
        for (int j = 0; j < ND; j++) xp[sidx * ND + j] += 0.3 + 0.1 * j;
        if (!write_any(x, xp) || ts_graph_compute(g) != TS_OK || !read_any(hca, ph) || !read_any(csa, pc) ||
            !read_any(keys, pk)) {
            CHECK(false, "perturbed compute failed");
            break;
        }
        for (int i = 0; i < NBH; i++) {
            bool dep = sidx >= MH * i && sidx <= MH * i + MH - 1;
            bool changed = max_abs_diff(ph + i * NC, gh + i * NC, NC) > 0;
            bad_h += dep != changed;
        }
        for (int i = 0; i < NBC; i++) {
            bool dep = sidx >= MC * i - MC && sidx <= MC * i + MC - 1;
            bad_c += dep != (max_abs_diff(pc + i * NC, gc + i * NC, NC) > 0);
            bad_k += dep != (max_abs_diff(pk + i * NC, gk + i * NC, NC) > 0);
        }
    }
    printf("  receptive fields by perturbation: HCA %d, CSA %d, indexer keys %d wrong (token, entry) pairs\n",
           bad_h, bad_c, bad_k);
    CHECK(bad_h == 0 && bad_c == 0 && bad_k == 0, "receptive fields wrong: %d %d %d", bad_h, bad_c, bad_k);
    ts_graph_free(g);
}

/* ---------------------------------------------------------------- 4: gradient checks (as test_mhc.c) */

#ifndef STEP
#define STEP 1e-6
#endif
#define TOL 1e-6
#define FLOOR 1e-3
#define MAX_LEAVES 8

typedef struct {
    ts_graph *g;
    ts_rng rng;
    int n_leaves;
    ts_tensor *leaf[MAX_LEAVES];
    double *val[MAX_LEAVES];
    ts_tensor *out;
    double *w;
} gcase;

static ts_tensor *gc_leaf(gcase *c, const char *name, bool param, double lo, double hi, int ndim,
                          const int64_t *shape) {
    if (c->n_leaves == MAX_LEAVES) return NULL;
    ts_tensor *t = ts_new_tensor(c->g, TS_F64, ndim, shape, name);
    if (!t) return NULL;
    if (param) ts_set_param(t);
    c->leaf[c->n_leaves] = t;
    c->val[c->n_leaves] = malloc((size_t)ts_nelements(t) * sizeof(double));
    fill_uniform(&c->rng, c->val[c->n_leaves], ts_nelements(t), lo, hi);
    c->n_leaves++;
    return t;
}
#define DIMS(...) (int)(sizeof((int64_t[]){__VA_ARGS__}) / sizeof(int64_t)), (int64_t[]){__VA_ARGS__}
#define PARAM(name, lo, hi, ...) gc_leaf(c, name, true, lo, hi, DIMS(__VA_ARGS__))
#define CONST(name, lo, hi, ...) gc_leaf(c, name, false, lo, hi, DIMS(__VA_ARGS__))

static bool gc_compute(gcase *c) {
    for (int i = 0; i < c->n_leaves; i++)
        if (!write_d(c->leaf[i], c->val[i])) return false;
    return ts_graph_compute(c->g) == TS_OK;
}

static void run_gradcheck(const char *name, bool csa, uint64_t seed) {
    gcase cs = {.g = ts_graph_new()}, *c = &cs;
    ts_rng_seed(&c->rng, seed);
    ts_graph *g = c->g;
    int k = csa ? 2 * NC : NC, m = csa ? MC : MH, nb = NT / m;
    ts_tensor *x = PARAM("x", -1, 1, NT, ND);
    ts_v4_compressor_w w = {PARAM("wkv", -0.5, 0.5, k, ND), PARAM("wgate", -0.8, 0.8, k, ND),
                            PARAM("ape", -0.5, 0.5, m, k), PARAM("norm", 0.7, 1.3, NC)};
    ts_tensor *ang = CONST("angles", -3, 3, nb, NR / 2);
    c->out = csa ? ts_v4_csa_compress(g, x, &w, m, ang, NR, NORM_EPS_F)
                 : ts_v4_hca_compress(g, x, &w, m, ang, NR, NORM_EPS_F);
    ts_tensor *loss = NULL;
    if (c->out) {
        ts_set_output(c->out);
        ts_tensor *W = gc_leaf(c, "W", false, -1, 1, c->out->ndim, c->out->shape);
        c->w = c->val[c->n_leaves - 1];
        int64_t n = ts_nelements(c->out);
        loss = ts_sum(g, ts_reshape(g, ts_mul(g, c->out, W), 1, &n), 0, true);
    }
    double worst = 0;
    int n_bad = 0, n_checked = 0, failed_before = check_failed_;
    CHECK(loss != NULL, "%s: build failed: %s", name, ts_graph_error(g));
    if (!loss) goto done;
    CHECK_OK(ts_graph_backward(g, loss), g);
    CHECK_OK(ts_graph_alloc(g, be, NULL, NULL), g);
    if (ts_graph_status(g) != TS_OK) goto done;
    CHECK(gc_compute(c), "%s: compute: %s", name, ts_graph_error(g));
    int64_t no = ts_nelements(c->out);
    double *op = malloc((size_t)no * sizeof(double)), *om = malloc((size_t)no * sizeof(double));
    double *analytic[MAX_LEAVES] = {0}; /* all read before any perturbed compute overwrites them */
    for (int i = 0; i < c->n_leaves; i++) {
        if (!(c->leaf[i]->flags & TS_FLAG_PARAM)) continue;
        CHECK(ts_grad(c->leaf[i]) != NULL, "%s: no gradient for %s", name, c->leaf[i]->name);
        if (!ts_grad(c->leaf[i])) continue;
        analytic[i] = malloc((size_t)ts_nelements(c->leaf[i]) * sizeof(double));
        CHECK(read_d(ts_grad(c->leaf[i]), analytic[i]), "read gradient");
    }
    for (int i = 0; i < c->n_leaves; i++) {
        double *an = analytic[i];
        if (!an) continue;
        int64_t ne = ts_nelements(c->leaf[i]);
        for (int64_t j = 0; j < ne; j++) {
            double v = c->val[i][j];
            c->val[i][j] = v + STEP;
            bool ok = gc_compute(c) && read_d(c->out, op);
            c->val[i][j] = v - STEP;
            ok = ok && gc_compute(c) && read_d(c->out, om);
            c->val[i][j] = v;
            CHECK(ok, "%s: perturbed compute failed", name);
            if (!ok) break;
            double num = 0;
            for (int64_t q = 0; q < no; q++) num += c->w[q] * (op[q] - om[q]);
            num /= 2 * STEP;
            double err = fabs(an[j] - num) / fmax(fmax(fabs(an[j]), fabs(num)), FLOOR);
            if (!(err <= TOL)) {
                if (n_bad++ < 4)
                    fprintf(stderr, "    %s: d/d%s[%lld] analytic %.12g numeric %.12g (rel err %.2e)\n", name,
                            c->leaf[i]->name, (long long)j, an[j], num, err);
                err = isnan(err) ? INFINITY : err;
            }
            worst = fmax(worst, err);
            n_checked++;
        }
        free(an);
    }
    CHECK(n_bad == 0, "%s: %d gradient elements differ from finite differences", name, n_bad);
    free(op);
    free(om);
done:
    printf("  gradcheck %-28s %4d elements  max rel err %.1e  %s\n", name, n_checked, worst,
           check_failed_ == failed_before ? "ok" : "FAIL");
    for (int i = 0; i < c->n_leaves; i++) free(c->val[i]);
    ts_graph_free(g);
}

/* ---------------------------------------------------------------- 5: helpers and errors */

static void test_helpers(void) {
    int32_t idx[NT * NBH];
    ts_v4_hca_extra_idx(NT, MH, NBH, idx);
    int bad = 0;
    for (int t = 0; t < NT; t++)
        for (int i = 0; i < NBH; i++) bad += idx[t * NBH + i] != ((i + 1) * MH - 1 <= t ? i : -1);
    CHECK(bad == 0 && idx[3 * NBH] == 0 && idx[2 * NBH] == -1 && idx[12 * NBH + 2] == 2, "hca extra_idx: %d bad", bad);
    double mk[NT * NBC];
    ts_v4_block_mask(NT, MC, NBC, mk);
    bad = 0;
    for (int t = 0; t < NT; t++)
        for (int i = 0; i < NBC; i++) bad += (mk[t * NBC + i] == 0) != (i < (t + 1) / MC);
    CHECK(bad == 0, "block mask: %d bad", bad);
    CHECK(ts_v4_visible_blocks(3, 4, 3) == 1 && ts_v4_visible_blocks(2, 4, 3) == 0 &&
              ts_v4_visible_blocks(100, 4, 3) == 3,
          "visible_blocks");

    ts_graph *g = ts_graph_new();
    ts_tensor *x = ts_new_tensor_2d(g, TS_F64, 3, ND, "x"); /* T < m: no completed block */
    ts_v4_compressor_w w = {ts_new_tensor_2d(g, TS_F64, NC, ND, "wkv"), ts_new_tensor_2d(g, TS_F64, NC, ND, "wgate"),
                            ts_new_tensor_2d(g, TS_F64, MH, NC, "ape"), ts_new_tensor_1d(g, TS_F64, NC, "norm")};
    ts_tensor *ang = ts_new_tensor_2d(g, TS_F64, 1, NR / 2, "ang");
    CHECK(ts_v4_hca_compress(g, x, &w, MH, ang, NR, NORM_EPS_F) == NULL && ts_graph_status(g) == TS_ERR_SHAPE,
          "T < m accepted");
    ts_graph_free(g);

    g = ts_graph_new();
    x = ts_new_tensor_2d(g, TS_F64, NT, ND, "x");
    w = (ts_v4_compressor_w){ts_new_tensor_2d(g, TS_F64, NC, ND, "wkv"), ts_new_tensor_2d(g, TS_F64, NC, ND, "wgate"),
                             ts_new_tensor_2d(g, TS_F64, MC, NC, "ape"), ts_new_tensor_1d(g, TS_F64, NC, "norm")};
    ang = ts_new_tensor_2d(g, TS_F64, NBC, NR / 2, "ang");
    CHECK(ts_v4_csa_compress(g, x, &w, MC, ang, NR, NORM_EPS_F) == NULL && ts_graph_status(g) == TS_ERR_SHAPE,
          "CSA with c-wide (not 2c) weights accepted");
    ts_graph_free(g);

    g = ts_graph_new();
    x = ts_new_tensor_2d(g, TS_F64, NT, ND, "x");
    w = (ts_v4_compressor_w){ts_new_tensor_2d(g, TS_F32, NC, ND, "wkv"), ts_new_tensor_2d(g, TS_F64, NC, ND, "wgate"),
                             ts_new_tensor_2d(g, TS_F64, MH, NC, "ape"), ts_new_tensor_1d(g, TS_F64, NC, "norm")};
    ang = ts_new_tensor_2d(g, TS_F64, NBH, NR / 2, "ang");
    CHECK(ts_v4_hca_compress(g, x, &w, MH, ang, NR, NORM_EPS_F) == NULL && ts_graph_status(g) == TS_ERR_DTYPE,
          "mixed dtypes accepted");
    CHECK(ts_v4_hca_compress(g, NULL, &w, MH, ang, NR, NORM_EPS_F) == NULL, "NULL x gives NULL");
    ts_graph_free(g);
}

int main(void) {
    ts_status s = ts_backend_cpu_ref_new(2, &be);
    CHECK(s == TS_OK, "reference CPU backend: %s", ts_status_name(s));
    if (!be) return check_summary("compressor");
    printf("KV compressor / indexer (f64, reference CPU backend):\n");
    test_yarn();
    test_fixture_freqs();
    test_helpers();
    test_forward(NT, TS_F64);
    test_forward(12, TS_F64);
    test_forward(NT, TS_F32);
    printf("gradient checks (central differences, h = %g, tol %g relative, floor %g):\n", STEP, TOL, FLOOR);
    run_gradcheck("HCA (x, wkv, wgate, ape, norm)", false, 31);
    run_gradcheck("CSA (x, wkv, wgate, ape, norm)", true, 32);
    ts_backend_free(be);
    return check_summary("compressor");
}
