/* test_gemm.c - checks the CPU backend's packed GEMM (src/backends/cpu/gemm.c) against a naive
 * double-precision triple loop, on every instruction-set tier this machine supports.
 *
 * Per tier: all four transpose combinations; alpha/beta variants (beta = 0 over a NaN-filled C);
 * odd shapes and shapes one off the tier's MR/NR/MC/KC/NC blocks and the small-M threshold;
 * sub-matrix views (leading dimensions wider than the matrix, padding filled with NaN for inputs
 * and a sentinel for C, which must survive); 1, 2, 3 and 8 threads must agree bit for bit.
 *
 * Two kinds of data:
 *  - small integers with power-of-two alpha/beta: every partial sum is exactly representable
 *    in float, so any summation order must reproduce the reference exactly; this catches
 *    indexing and packing bugs that a tolerance could hide;
 *  - uniform random values in [-1, 1): checks rounding behaviour against the bound
 *        |C - C_ref| <= (K + 2) * 2^-23 * (|alpha| sum_k |a_ik b_kj| + |beta| |c_ij|).
 *    Why: a float sum of K products in any order (blocked, FMA-fused, split into partial sums)
 *    has error at most gamma_K * sum |a_k b_k|, gamma_K = K u / (1 - K u), u = 2^-24 (Higham,
 *    Accuracy and Stability of Numerical Algorithms, sec. 3.1); the alpha scaling and the beta
 *    update add at most two roundings (gamma_{K+2}). The factor 2 (2^-23 rather than 2^-24)
 *    absorbs the 1 / (1 - K u) term and the reference's own rounding to float. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backends/cpu/gemm.h"
#include "check.h"

#define C_SENTINEL 777.25f

typedef struct {
    bool trans_a, trans_b;
    int64_t m, n, k;
    float alpha, beta;
    int64_t pad;       /* extra elements per row of every stored matrix */
    bool integer_data; /* exact-arithmetic data */
} gemm_case;

typedef struct {
    float *a, *b, *c0; /* stored operands; c0 is the initial C */
    int64_t lda, ldb, ldc, a_rows, b_rows;
    double *ref, *bound; /* m x n reference value and error bound */
} case_data;

static float random_value(ts_rng *rng, bool integer_data) {
    if (integer_data) return (float)((int)(ts_rng_next(rng) % 7) - 3); /* -3..3 */
    return (float)(2.0 * ts_rng_uniform(rng) - 1.0);
}

/* rows x cols logical matrix in a rows x ld buffer; padding gets `pad_value`. */
static float *make_matrix(int64_t rows, int64_t cols, int64_t ld, float pad_value, ts_rng *rng,
                          bool integer_data) {
    float *x = malloc((size_t)(rows * ld) * sizeof(float));
    for (int64_t i = 0; i < rows; i++)
        for (int64_t j = 0; j < ld; j++) x[i * ld + j] = j < cols ? random_value(rng, integer_data) : pad_value;
    return x;
}

static double op_a(const gemm_case *t, const case_data *d, int64_t i, int64_t k) {
    return t->trans_a ? d->a[k * d->lda + i] : d->a[i * d->lda + k];
}

static double op_b(const gemm_case *t, const case_data *d, int64_t k, int64_t j) {
    return t->trans_b ? d->b[j * d->ldb + k] : d->b[k * d->ldb + j];
}

static void make_case(const gemm_case *t, uint64_t seed, case_data *d) {
    ts_rng rng;
    ts_rng_seed(&rng, seed);
    int64_t a_cols = t->trans_a ? t->m : t->k, b_cols = t->trans_b ? t->k : t->n;
    d->a_rows = t->trans_a ? t->k : t->m;
    d->b_rows = t->trans_b ? t->n : t->k;
    d->lda = a_cols + t->pad;
    d->ldb = b_cols + t->pad;
    d->ldc = t->n + t->pad;
    d->a = make_matrix(d->a_rows, a_cols, d->lda, NAN, &rng, t->integer_data);
    d->b = make_matrix(d->b_rows, b_cols, d->ldb, NAN, &rng, t->integer_data);
    d->c0 = make_matrix(t->m, t->n, d->ldc, C_SENTINEL, &rng, t->integer_data);
    if (t->beta == 0.0f) /* must never be read */
        for (int64_t i = 0; i < t->m; i++)
            for (int64_t j = 0; j < t->n; j++) d->c0[i * d->ldc + j] = NAN;
    d->ref = malloc((size_t)(t->m * t->n) * sizeof(double));
    d->bound = malloc((size_t)(t->m * t->n) * sizeof(double));
    for (int64_t i = 0; i < t->m; i++)
        for (int64_t j = 0; j < t->n; j++) {
            double s = 0.0, abs_s = 0.0;
            for (int64_t k = 0; k < t->k; k++) {
                double p = op_a(t, d, i, k) * op_b(t, d, k, j);
                s += p;
                abs_s += fabs(p);
            }
            double c = t->beta == 0.0f ? 0.0 : d->c0[i * d->ldc + j];
            d->ref[i * t->n + j] = t->alpha * s + t->beta * c;
            double scale = fabs(t->alpha) * abs_s + fabs(t->beta) * fabs(c);
            d->bound[i * t->n + j] = t->integer_data ? 0.0 : (double)(t->k + 2) * 0x1p-23 * scale;
        }
}

static void free_case(case_data *d) {
    free(d->a);
    free(d->b);
    free(d->c0);
    free(d->ref);
    free(d->bound);
}

static void describe(const gemm_case *t, char *buf, size_t size) {
    snprintf(buf, size, "[%s] %s%s M=%lld N=%lld K=%lld alpha=%g beta=%g pad=%lld %s", ts_gemm_tier_name(),
             t->trans_a ? "T" : "N", t->trans_b ? "T" : "N", (long long)t->m, (long long)t->n,
             (long long)t->k, t->alpha, t->beta, (long long)t->pad, t->integer_data ? "int" : "rand");
}

static float *run_gemm(ts_threadpool *pool, const gemm_case *t, const case_data *d) {
    size_t c_size = (size_t)(t->m * d->ldc) * sizeof(float);
    float *c = malloc(c_size);
    memcpy(c, d->c0, c_size);
    ts_gemm_f32(pool, t->trans_a, t->trans_b, t->m, t->n, t->k, t->alpha, d->a, d->lda, d->b, d->ldb,
                t->beta, c, d->ldc);
    return c;
}

/* Checks values against the reference and that C's padding is untouched. */
static void check_result(const gemm_case *t, const case_data *d, const float *c) {
    int64_t bad = 0, first_i = -1, first_j = -1;
    for (int64_t i = 0; i < t->m; i++)
        for (int64_t j = 0; j < d->ldc; j++) {
            float got = c[i * d->ldc + j];
            bool ok = j < t->n ? fabs(got - d->ref[i * t->n + j]) <= d->bound[i * t->n + j] : got == C_SENTINEL;
            if (!ok && bad++ == 0) first_i = i, first_j = j;
        }
    char what[160];
    describe(t, what, sizeof what);
    if (bad) {
        bool in_c = first_j < t->n;
        CHECK(bad == 0, "%s: %lld bad elements, first (%lld,%lld) got %.9g want %.9g (bound %.3g)", what,
              (long long)bad, (long long)first_i, (long long)first_j, c[first_i * d->ldc + first_j],
              in_c ? d->ref[first_i * t->n + first_j] : C_SENTINEL, in_c ? d->bound[first_i * t->n + first_j] : 0.0);
    } else {
        CHECK(true, "ok");
    }
}

/* 1, 2, 3 and 8 threads: 8 exercises the column split with several row blocks. */
#define N_POOLS 4
static const int pool_threads[N_POOLS] = {1, 2, 3, 8};
static ts_threadpool *pools[N_POOLS];

static void run_case(const gemm_case *t, uint64_t seed) {
    case_data d;
    make_case(t, seed, &d);
    float *c1 = run_gemm(pools[0], t, &d);
    check_result(t, &d, c1);
    size_t c_size = (size_t)(t->m * d.ldc) * sizeof(float);
    for (int p = 1; p < N_POOLS; p++) {
        float *cp = run_gemm(pools[p], t, &d);
        char what[160];
        describe(t, what, sizeof what);
        CHECK(memcmp(c1, cp, c_size) == 0, "%s: %d threads differ from 1 thread", what, pool_threads[p]);
        free(cp);
    }
    free(c1);
    free_case(&d);
}

/* Every transpose combination x three alpha/beta/view variants x both kinds of data. */
static void run_shape(int64_t m, int64_t n, int64_t k) {
    static uint64_t seed = 1;
    for (int tr = 0; tr < 4; tr++)
        for (int variant = 0; variant < 3; variant++)
            for (int integer = 0; integer < 2; integer++) {
                gemm_case t = {.trans_a = tr & 1, .trans_b = tr & 2, .m = m, .n = n, .k = k, .integer_data = integer};
                switch (variant) {
                case 0: t.alpha = 1.0f, t.beta = 0.0f, t.pad = 0; break;
                case 1: t.alpha = integer ? -2.0f : -0.7f, t.beta = 1.0f, t.pad = 3; break;
                default: t.alpha = 0.5f, t.beta = integer ? -0.5f : 1.3f, t.pad = 17; break;
                }
                run_case(&t, seed++);
            }
}

/* Odd shapes, each dimension large in turn, and the small-M path's column chunking. */
static void test_odd_shapes(void) {
    static const int64_t odd[] = {1, 7, 33};
    for (int i = 0; i < 3; i++)
        for (int j = 0; j < 3; j++)
            for (int l = 0; l < 3; l++) run_shape(odd[i], odd[j], odd[l]);
    run_shape(1000, 33, 7);
    run_shape(7, 1000, 33);
    run_shape(33, 7, 1000);
    run_shape(1, 1000, 1000); /* GEMV */
    run_shape(1000, 1, 33);
    run_shape(1, 9000, 3); /* small-M column chunks (partial-sum buffer) */
    run_shape(3, 3000, 5);
    run_shape(8, 2000, 9);
    run_shape(9, 203, 1031); /* B^T past 8 rows: several packed k slices and column blocks */
    run_shape(16, 100, 517);
    run_shape(40, 32, 129); /* few columns of B^T at any M: row groups of the small-M kernels, */
    run_shape(40, 33, 129); /* and one column past that bound (blocked) */
}

/* Shapes one off the active tier's blocks (most of this program's run time). */
static void test_blocking_shapes(void) {
    ts_gemm_blocking bl = ts_gemm_get_blocking();
    int64_t m_blocked = 2 * bl.mr + 1 > bl.small_m + 1 ? 2 * bl.mr + 1 : bl.small_m + 1;
    for (int64_t dk = -1; dk <= 1; dk++) run_shape(3 * bl.mr + 1, 2 * bl.nr + 3, bl.kc + dk);
    run_shape(m_blocked, bl.nr + 1, 2 * bl.kc + 1);
    for (int64_t dm = -1; dm <= 1; dm++) run_shape(bl.mc + dm, bl.nr - 1, 33);
    for (int64_t dn = -1; dn <= 1; dn += 2) run_shape(m_blocked, bl.nc + dn, 17);
    for (int64_t m = bl.small_m - 1; m <= bl.small_m + 1; m++) run_shape(m, 100, bl.kc + 1);
    for (int64_t m = bl.small_m_nt - 1; m <= bl.small_m_nt + 1; m++) run_shape(m, 37, 45); /* trans_b's bound */
    for (int64_t m = 2; m <= 6; m++) run_shape(m, 37, 45);
    run_shape(bl.mc + bl.mr + 1, 2 * bl.nr + 5, bl.kc + 9); /* several ic and pc blocks, rows split */
    run_shape(bl.mc + 1, 20 * bl.nr + 3, 33);               /* columns split over several row blocks */
}

/* alpha == 0 and K == 0 must give beta * C without reading A or B. */
static void test_degenerate(void) {
    float a[4] = {NAN, NAN, NAN, NAN}, b[4] = {NAN, NAN, NAN, NAN};
    float c[4] = {1, 2, 3, 4};
    ts_gemm_f32(pools[1], false, false, 2, 2, 2, 0.0f, a, 2, b, 2, 2.0f, c, 2);
    CHECK(c[0] == 2 && c[1] == 4 && c[2] == 6 && c[3] == 8, "alpha=0: c = %g %g %g %g", c[0], c[1], c[2], c[3]);
    float d[4] = {NAN, NAN, NAN, NAN};
    ts_gemm_f32(pools[1], true, true, 2, 2, 0, 1.0f, a, 2, b, 2, 0.0f, d, 2);
    CHECK(d[0] == 0 && d[1] == 0 && d[2] == 0 && d[3] == 0, "K=0, beta=0: c = %g %g %g %g", d[0], d[1], d[2], d[3]);
    ts_gemm_f32(pools[1], false, false, 0, 5, 5, 1.0f, a, 2, b, 2, 0.0f, d, 2); /* M = 0: no-op */
    CHECK(d[0] == 0, "M=0 touched C");
}

/* A tier's packer against the portable one, bit for bit, for each of the 4 panel widths it
 * vectorizes (at most 32): full, one-short and one-row panels, both layouts, several depths. */
static void check_packer(const char *name, ts_gemm_pack_fn packer, const int widths[4]) {
    static const int64_t depths[] = {1, 7, 8, 17, 64};
    ts_rng rng;
    ts_rng_seed(&rng, 99);
    int64_t ld = 80; /* >= 64 k and >= 32 rows */
    float *src = make_matrix(ld, ld, ld, NAN, &rng, false);
    float *want = malloc(32 * 64 * sizeof(float)), *got = malloc(32 * 64 * sizeof(float));
    for (int wi = 0; wi < 4; wi++)
        for (int di = 0; di < 5; di++)
            for (int rows_case = 0; rows_case < 3; rows_case++)
                for (int layout = 0; layout < 2; layout++) {
                    int w = widths[wi], rows = rows_case == 0 ? w : rows_case == 1 ? w - 1 : 1;
                    int64_t kc = depths[di], rs = layout ? 1 : ld, cs = layout ? ld : 1;
                    for (int64_t i = 0; i < w * kc; i++) want[i] = got[i] = NAN;
                    ts_gemm_pack_generic(want, src, rs, cs, rows, w, kc);
                    packer(got, src, rs, cs, rows, w, kc);
                    CHECK(memcmp(want, got, (size_t)(w * kc) * sizeof(float)) == 0,
                          "%s packer w=%d rows=%d kc=%lld rs=%lld cs=%lld differs from the portable one", name, w,
                          rows, (long long)kc, (long long)rs, (long long)cs);
                }
    free(src);
    free(want);
    free(got);
}

#if defined(__x86_64__)
/* The AVX2 packer serves the AVX-512 tier too (widths 12 and 32), which may not run here, so
 * every width it vectorizes is checked directly. */
static void test_avx2_packer(void) { check_packer("avx2", ts_gemm_pack_avx2, (const int[4]){6, 12, 16, 32}); }
#endif

/* TESSERA_CPU_TIER is read once per process, so it is checked in a child: this program re-run
 * with --print-tier. Every tier name: a supported one is taken silently, an unsupported one
 * (and an unknown name) warns on stderr and leaves the best tier. */
static void run_with_tier(const char *self, const char *request, char tier[64], bool *warned) {
    char cmd[1024], line[512];
    const char *emulator = getenv("TS_TEST_EMULATOR"); /* cross builds run this program under qemu */
    snprintf(cmd, sizeof cmd, "TESSERA_CPU_TIER=%s %s '%s' --print-tier 2>&1", request, emulator ? emulator : "", self);
    tier[0] = '\0';
    *warned = false;
    FILE *f = popen(cmd, "r");
    CHECK(f != NULL, "popen %s", cmd);
    if (!f) return;
    while (fgets(line, sizeof line, f)) {
        line[strcspn(line, "\n")] = 0;
        if (strstr(line, "warning") && strstr(line, "TESSERA_CPU_TIER")) *warned = true;
        else snprintf(tier, 64, "%.63s", line);
    }
    pclose(f);
}

static void test_env_tier(const char *self) {
    ts_gemm_tier here[TS_GEMM_TIER_COUNT];
    int n_here = ts_gemm_tiers_here(here);
    const char *best = ts_gemm_tier_to_name(ts_gemm_tier_best());
    for (int t = 0; t <= TS_GEMM_TIER_COUNT; t++) { /* the last round asks for an unknown name */
        const char *request = t < TS_GEMM_TIER_COUNT ? ts_gemm_tier_to_name((ts_gemm_tier)t) : "bogus";
        bool supported = false;
        for (int i = 0; i < n_here; i++) supported = supported || (int)here[i] == t;
        char tier[64];
        bool warned;
        run_with_tier(self, request, tier, &warned);
        const char *expect = supported ? request : best;
        CHECK(strcmp(tier, expect) == 0, "TESSERA_CPU_TIER=%s gave tier '%s', want '%s'", request, tier, expect);
        CHECK(warned == !supported, "TESSERA_CPU_TIER=%s: warning %s", request, warned ? "printed" : "missing");
    }
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "--print-tier") == 0) {
        printf("%s\n", ts_gemm_tier_name());
        return 0;
    }
    for (int p = 0; p < N_POOLS; p++)
        CHECK(ts_threadpool_new(pool_threads[p], &pools[p]) == TS_OK, "threadpool %d", pool_threads[p]);

    ts_gemm_set_parallel_threshold(1); /* every shape on every thread of the pool */
    /* TS_TEST_QUICK=1 (scripts/test.sh sets it for the aarch64 tests, which run under qemu): the
     * tiers below the best skip the blocking shapes, about 40% of the run; the best runs all. */
    bool quick = getenv("TS_TEST_QUICK") && strcmp(getenv("TS_TEST_QUICK"), "1") == 0;
    ts_gemm_tier best = ts_gemm_tier_best(), here[TS_GEMM_TIER_COUNT];
    int n_here = ts_gemm_tiers_here(here);
    printf("gemm: best tier here: %s%s\n", ts_gemm_tier_to_name(best),
           quick ? " (quick: lower tiers skip the blocking shapes)" : "");
    CHECK(here[n_here - 1] == best, "the best tier is not the last one listed");
#if defined(__aarch64__)
    CHECK(best == TS_GEMM_TIER_NEON, "aarch64 picked tier %s, want neon", ts_gemm_tier_to_name(best));
#endif
    for (int i = 0; i < n_here; i++) {
        ts_gemm_tier t = here[i];
        CHECK(ts_gemm_tier_set(t), "cannot select tier %s", ts_gemm_tier_to_name(t));
        CHECK(strcmp(ts_gemm_tier_name(), ts_gemm_tier_to_name(t)) == 0, "tier name %s", ts_gemm_tier_name());
        int before = check_failed_;
        test_odd_shapes();
        if (!quick || t == best) test_blocking_shapes();
        test_degenerate();
        printf("gemm: tier %-8s %s\n", ts_gemm_tier_name(), check_failed_ == before ? "ok" : "FAILED");
    }
    for (int t = 0; t < TS_GEMM_TIER_COUNT; t++) {
        bool listed = false;
        for (int i = 0; i < n_here; i++) listed = listed || (int)here[i] == t;
        if (!listed) CHECK(!ts_gemm_tier_set((ts_gemm_tier)t), "unsupported tier %s accepted", ts_gemm_tier_to_name((ts_gemm_tier)t));
    }
    CHECK(ts_gemm_tier_active() == best, "failed set changed the tier");
#if defined(__x86_64__)
    if (best >= TS_GEMM_TIER_AVX2) test_avx2_packer();
#elif defined(__aarch64__)
    check_packer("neon", ts_gemm_pack_neon, (const int[4]){4, 8, 12, 16});
#endif
    test_env_tier(argv[0]);

    for (int p = 0; p < N_POOLS; p++) ts_threadpool_free(pools[p]);
    return check_summary("gemm");
}
