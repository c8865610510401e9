/* test_gemm_lowp.c - the GEMM with narrow operands (ts_gemm in src/backends/cpu/gemm.h: bf16,
 * f16, fp8 e4m3 and e5m2, converted while packing, f32 accumulation), on every tier here, and
 * the cpu backend's matmul that uses it for graph matmuls with such inputs.
 *
 * Each case stores op(A) (f32 or the narrow type) and op(B) (narrow) with padded leading
 * dimensions whose padding holds NaN codes (a read of padding poisons the result), transposed
 * or not, and checks:
 *  - against a double-precision triple loop over the exactly converted values (ts_load_f64),
 *    within f32 accumulation's bound (K + 2) 2^-23 (|alpha| sum |a b| + |beta| |c|) (see
 *    test_gemm.c for the derivation), with C's padding left untouched;
 *  - bit for bit against ts_gemm_f32 on f32 copies of the converted matrices where both take
 *    the same path (gemm.h: conversion is exact and changes nothing else);
 *  - bit for bit across 1 and 2 threads.
 * Narrow B with small M is read by a fused kernel where the tier has one (no conversion pass:
 * bf16, f16 and fp8 B or B^T on x86-64, bf16 B^T elsewhere), which must still equal ts_gemm_f32
 * on the converted B bit for bit, with A f32 or narrow.
 * Data: fp8 takes every finite code at random (subnormals included); bf16/f16 take random values
 * over 2^-12..2^3 (f16 subnormals included). Shapes: 1, 7, 33 in every combination, 1000 in
 * one dimension at a time, GEMVs (M = 1, 8) on the strip-converting small-M path, and K large
 * enough that the small-M path's scratch cannot hold a strip or A (the blocked path takes over).
 * Graph matmuls (f32 x bf16, bf16 x bf16 -> bf16 in several f32 row chunks, e4m3 x f32) are
 * compared with the reference backend. The AVX2 converting packer is compared with the portable
 * one on every code of every narrow type (NaN and infinities included). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "backends/cpu/fast_kernels.h"
#include "backends/cpu/gemm.h"
#include "check.h"
#include "tessera/backend.h"
#include "tessera/conformance.h"

#define C_SENTINEL 777.25f

static const ts_dtype narrow_types[] = {TS_BF16, TS_F16, TS_F8_E4M3, TS_F8_E5M2};
#define N_NARROW ((int)(sizeof narrow_types / sizeof narrow_types[0]))

typedef struct {
    ts_dtype a_type, b_type;
    bool ta, tb;
    int64_t m, n, k;
    int variant; /* alpha, beta and padding */
} lp_case;

typedef struct {
    float alpha, beta;
    int64_t pad;
} variant_params;

static variant_params params_of(int variant) {
    switch (variant % 3) {
    case 0: return (variant_params){1.0f, 0.0f, 0};
    case 1: return (variant_params){-0.7f, 1.0f, 3};
    default: return (variant_params){0.5f, 1.3f, 17};
    }
}

/* A stored matrix: `rows` x `ld` elements of `type`, the first `cols` of each row set. */
typedef struct {
    ts_dtype type;
    int64_t rows, cols, ld;
    void *data;
    float *f32; /* the same converted to f32 (padding: NaN) */
} stored;

static bool fp8_finite(ts_dtype t, uint8_t code) {
    if (t == TS_F8_E4M3) return (code & 0x7F) != 0x7F;
    return (code & 0x7C) != 0x7C; /* e5m2: exponent all ones is Inf/NaN */
}

static double random_value(ts_rng *rng, ts_dtype t) {
    if (t == TS_F32) return 2.0 * ts_rng_uniform(rng) - 1.0;
    if (t == TS_F8_E4M3 || t == TS_F8_E5M2) {
        uint8_t code;
        do code = (uint8_t)ts_rng_next(rng);
        while (!fp8_finite(t, code));
        uint8_t byte = code;
        return ts_load_f64(&byte, t, 0);
    }
    double scale = ldexp(1.0, (int)(ts_rng_next(rng) % 16) - 12 - (t == TS_F16 && ts_rng_next(rng) % 8 == 0 ? 12 : 0));
    return (2.0 * ts_rng_uniform(rng) - 1.0) * scale; /* rounded to t when stored */
}

static stored make_stored(ts_dtype type, int64_t rows, int64_t cols, int64_t pad, ts_rng *rng) {
    stored s = {.type = type, .rows = rows, .cols = cols, .ld = cols + pad};
    int64_t n = rows * s.ld;
    s.data = malloc(ts_dtype_bytes(type, n > 0 ? n : 1));
    s.f32 = malloc((size_t)(n > 0 ? n : 1) * sizeof(float));
    for (int64_t i = 0; i < rows; i++)
        for (int64_t j = 0; j < s.ld; j++) {
            int64_t e = i * s.ld + j;
            ts_store_f64(s.data, type, e, j < cols ? random_value(rng, type) : NAN);
            s.f32[e] = (float)ts_load_f64(s.data, type, e);
        }
    return s;
}

static void free_stored(stored *s) {
    free(s->data);
    free(s->f32);
}

static float *run(ts_threadpool *pool, const lp_case *t, const stored *a, const stored *b, const float *c0,
                  int64_t ldc, bool f32_copies) {
    variant_params v = params_of(t->variant);
    size_t bytes = (size_t)(t->m * ldc) * sizeof(float);
    float *c = malloc(bytes);
    memcpy(c, c0, bytes);
    if (f32_copies)
        ts_gemm_f32(pool, t->ta, t->tb, t->m, t->n, t->k, v.alpha, a->f32, a->ld, b->f32, b->ld, v.beta, c, ldc);
    else
        ts_gemm(pool, t->ta, t->tb, t->m, t->n, t->k, v.alpha, a->data, a->type, a->ld, b->data, b->type, b->ld, v.beta,
                c, ldc);
    return c;
}

#define N_POOLS 2 /* 1 and 2 threads (test_gemm covers more for the shared driver) */
static ts_threadpool *pools[N_POOLS];

static void describe(const lp_case *t, char *buf, size_t size) {
    variant_params v = params_of(t->variant);
    snprintf(buf, size, "[%s] A %s%s x B %s%s M=%lld N=%lld K=%lld alpha=%g beta=%g pad=%lld", ts_gemm_tier_name(),
             ts_dtype_name(t->a_type), t->ta ? "^T" : "", ts_dtype_name(t->b_type), t->tb ? "^T" : "", (long long)t->m,
             (long long)t->n, (long long)t->k, v.alpha, v.beta, (long long)v.pad);
}

static void check_case(const lp_case *t, uint64_t seed) {
    variant_params v = params_of(t->variant);
    ts_rng rng;
    ts_rng_seed(&rng, seed);
    stored a = make_stored(t->a_type, t->ta ? t->k : t->m, t->ta ? t->m : t->k, v.pad, &rng);
    stored b = make_stored(t->b_type, t->tb ? t->n : t->k, t->tb ? t->k : t->n, v.pad, &rng);
    int64_t ldc = t->n + v.pad;
    float *c0 = malloc((size_t)(t->m * ldc) * sizeof(float));
    for (int64_t i = 0; i < t->m; i++)
        for (int64_t j = 0; j < ldc; j++)
            c0[i * ldc + j] = j >= t->n ? C_SENTINEL : v.beta == 0.0f ? NAN : (float)(2.0 * ts_rng_uniform(&rng) - 1.0);

    char what[200];
    describe(t, what, sizeof what);
    float *got = run(pools[0], t, &a, &b, c0, ldc, false);
    int64_t bad = 0, bi = 0, bj = 0;
    double want_bad = 0;
    for (int64_t i = 0; i < t->m; i++)
        for (int64_t j = 0; j < ldc; j++) {
            float g = got[i * ldc + j];
            if (j >= t->n) {
                if (g != C_SENTINEL && bad++ == 0) bi = i, bj = j, want_bad = C_SENTINEL;
                continue;
            }
            double s = 0, abs_s = 0;
            for (int64_t k = 0; k < t->k; k++) {
                double x = t->ta ? a.f32[k * a.ld + i] : a.f32[i * a.ld + k];
                double y = t->tb ? b.f32[j * b.ld + k] : b.f32[k * b.ld + j];
                s += x * y;
                abs_s += fabs(x * y);
            }
            double c = v.beta == 0.0f ? 0.0 : c0[i * ldc + j];
            double want = v.alpha * s + v.beta * c;
            double bound = (double)(t->k + 2) * 0x1p-23 * (fabs(v.alpha) * abs_s + fabs(v.beta) * fabs(c));
            if (!(fabs(g - want) <= bound) && bad++ == 0) bi = i, bj = j, want_bad = want;
        }
    CHECK(bad == 0, "%s: %lld bad elements, first (%lld,%lld) got %.9g want %.9g", what, (long long)bad,
          (long long)bi, (long long)bj, got[bi * ldc + bj], want_bad);

    size_t bytes = (size_t)(t->m * ldc) * sizeof(float);
    ts_gemm_blocking bl = ts_gemm_get_blocking();
    if (t->m > bl.small_m || (!t->ta && t->k <= 4096)) { /* ts_gemm_f32 takes the same path (gemm.h) */
        float *f32 = run(pools[0], t, &a, &b, c0, ldc, true);
        CHECK(memcmp(got, f32, bytes) == 0, "%s: differs from ts_gemm_f32 on the converted values", what);
        free(f32);
    }
    for (int p = 1; p < N_POOLS; p++) {
        float *cp = run(pools[p], t, &a, &b, c0, ldc, false);
        CHECK(memcmp(got, cp, bytes) == 0, "%s: %d threads differ from 1", what, p + 1);
        free(cp);
    }
    free(got);
    free(c0);
    free_stored(&a);
    free_stored(&b);
}

/* Every narrow B type in all four transpose combinations, with A f32 and with A of B's type. */
static uint64_t next_seed = 1;

static void check_shape(int64_t m, int64_t n, int64_t k) {
    for (int ti = 0; ti < N_NARROW; ti++)
        for (int a_narrow = 0; a_narrow < 2; a_narrow++)
            for (int tr = 0; tr < 4; tr++) {
                lp_case t = {.a_type = a_narrow ? narrow_types[ti] : TS_F32, .b_type = narrow_types[ti],
                             .ta = tr & 1, .tb = tr & 2, .m = m, .n = n, .k = k, .variant = (int)(next_seed % 3)};
                check_case(&t, next_seed++);
            }
}

/* Large shapes (generating their data dominates the test's time): one case per narrow type,
 * type i with transpose combination i and A narrow for odd i, or always when narrow_a. */
static void check_large(int64_t m, int64_t n, int64_t k, bool narrow_a) {
    for (int ti = 0; ti < N_NARROW; ti++) {
        lp_case t = {.a_type = narrow_a || ti % 2 ? narrow_types[ti] : TS_F32, .b_type = narrow_types[ti],
                     .ta = ti & 1, .tb = ti & 2, .m = m, .n = n, .k = k, .variant = ti % 3};
        check_case(&t, next_seed++);
    }
}

static void test_shapes_for_tier(void) {
    static const int64_t odd[] = {1, 7, 33};
    for (int i = 0; i < 3; i++)
        for (int j = 0; j < 3; j++)
            for (int l = 0; l < 3; l++) check_shape(odd[i], odd[j], odd[l]);
    check_large(1000, 33, 7, false);
    check_large(7, 1000, 33, false);
    check_large(33, 7, 1000, false);
    check_large(1, 1000, 1000, false); /* GEMV: strips of narrow B converted per thread */
    check_large(8, 100, 1000, true);
    check_large(1, 40, 8000, false); /* no 32-column strip of B [K,N] fits the small-M scratch: blocked path */
    check_large(8, 5, 31000, true);  /* narrow A too large to convert whole: blocked path */
    /* A x narrow B, B^T or not: the decode GEMVs on narrow weights (the tiers' small_nt_narrow /
     * small_nn_narrow, reading B as stored where the tier has them), A f32 or of B's type: every
     * row grouping of the small-M paths, K with whole 16-blocks, a leftover 8-block, a masked
     * rest; 37 columns leave a masked rest of B [K,N] rows */
    static const int64_t gemv_m[] = {1, 2, 3, 5, 16}, gemv_k[] = {256, 264, 1003};
    for (int ti = 0; ti < N_NARROW; ti++)
        for (int i = 0; i < 5; i++)
            for (int l = 0; l < 3; l++) {
                ts_dtype bt = narrow_types[ti];
                lp_case g = {.a_type = (i + l) % 2 ? bt : TS_F32, .b_type = bt, .tb = (i + l + ti) % 4 != 0,
                             .m = gemv_m[i], .n = 37, .k = gemv_k[l], .variant = (int)(next_seed % 3)};
                check_case(&g, next_seed++);
            }
    /* not even one row of B [N,K] fits: blocked path */
    lp_case t = {.a_type = TS_F32, .b_type = TS_BF16, .tb = true, .m = 1, .n = 3, .k = 250000};
    check_case(&t, next_seed++);
}

#if defined(__x86_64__)
/* The AVX2 converting packer (also the AVX-512 tier's) against the portable one on every code of
 * each narrow type, in both of its vector layouts; NaN must stay NaN (payloads may differ). */
static void test_avx2_converter(void) {
    for (int ti = 0; ti < N_NARROW; ti++) {
        ts_dtype t = narrow_types[ti];
        int64_t codes = ts_dtype_get_info(t)->bits == 8 ? 256 : 65536;
        void *src = malloc(ts_dtype_bytes(t, codes));
        float *want = malloc((size_t)codes * sizeof(float)), *got = malloc((size_t)codes * sizeof(float));
        for (int64_t c = 0; c < codes; c++) {
            if (codes == 256) ((uint8_t *)src)[c] = (uint8_t)c;
            else ((uint16_t *)src)[c] = (uint16_t)c;
        }
        for (int layout = 0; layout < 2; layout++) { /* 32-wide panel, rows adjacent / along k */
            int64_t rs = layout ? codes / 32 : 1, cs = layout ? 1 : 32;
            ts_gemm_pack_cvt_generic(want, src, t, rs, cs, 32, 32, codes / 32);
            ts_gemm_pack_cvt_avx2(got, src, t, rs, cs, 32, 32, codes / 32);
            int64_t bad = 0;
            for (int64_t i = 0; i < codes; i++)
                bad += !(isnan(want[i]) ? isnan(got[i]) : memcmp(&want[i], &got[i], sizeof(float)) == 0);
            CHECK(bad == 0, "avx2 converter %s layout %d: %lld of %lld values differ", ts_dtype_name(t), layout,
                  (long long)bad, (long long)codes);
        }
        free(src);
        free(want);
        free(got);
    }
}
#endif

/* ---------------------------------------------------------------- graph matmuls */

typedef struct {
    ts_dtype a_type, b_type;
    int64_t m, n, k;
    bool tb;
} graph_case;

/* Runs a = random [m,k], b = random ([n,k] when tb else [k,n]), out = matmul(a, b) on a
 * backend; returns the output as f32 (NULL on failure) and whether the GEMM took it. */
static float *run_graph(ts_status (*make)(int, ts_backend **), const graph_case *gc, bool *on_gemm) {
    ts_backend *be = NULL;
    ts_graph *g = ts_graph_new();
    float *out = NULL;
    if (make(2, &be) != TS_OK || !g) goto done;
    ts_tensor *a = ts_new_tensor_2d(g, gc->a_type, gc->m, gc->k, "a");
    ts_tensor *b = gc->tb ? ts_new_tensor_2d(g, gc->b_type, gc->n, gc->k, "w") : ts_new_tensor_2d(g, gc->b_type, gc->k, gc->n, "b");
    ts_tensor *c = ts_matmul(g, a, b, false, gc->tb);
    if (!c || ts_graph_status(g) != TS_OK) goto done;
    ts_set_output(c);
    if (ts_graph_alloc(g, be, NULL, NULL) != TS_OK) goto done;
    ts_tensor *leaves[2] = {a, b};
    for (int l = 0; l < 2; l++) {
        int64_t n = ts_nelements(leaves[l]);
        float *v = malloc((size_t)n * sizeof(float));
        ts_rng rng;
        ts_rng_seed(&rng, 77 + (uint64_t)l);
        for (int64_t i = 0; i < n; i++) v[i] = (float)random_value(&rng, leaves[l]->dtype);
        ts_status s = ts_tensor_write_f32(leaves[l], v, n);
        free(v);
        if (s != TS_OK) goto done;
    }
    if (ts_graph_compute(g) != TS_OK) goto done;
    *on_gemm = ts_fast_matmul_uses_gemm(c);
    out = malloc((size_t)ts_nelements(c) * sizeof(float));
    if (ts_tensor_read_f32(c, out, ts_nelements(c)) != TS_OK) {
        free(out);
        out = NULL;
    }
done:
    ts_graph_free(g);
    ts_backend_free(be);
    return out;
}

static void test_graph_matmuls(void) {
    static const graph_case cases[] = {
        {TS_F32, TS_BF16, 33, 1000, 64, true},   /* f32 activations x bf16 weights [N,K] */
        {TS_F32, TS_F16, 1, 1000, 33, false},    /* decode row x f16 [K,N] */
        {TS_BF16, TS_BF16, 300, 4000, 8, false}, /* bf16 output: f32 rows in two chunks, rounded once */
        {TS_F8_E4M3, TS_F32, 7, 33, 1000, true},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const graph_case *gc = &cases[i];
        char what[128];
        snprintf(what, sizeof what, "matmul %s [%lld,%lld] x %s%s", ts_dtype_name(gc->a_type), (long long)gc->m,
                 (long long)gc->k, ts_dtype_name(gc->b_type), gc->tb ? "^T" : "");
        bool ref_gemm = false, fast_gemm = false;
        float *ref = run_graph(ts_backend_cpu_ref_new, gc, &ref_gemm);
        float *fast = run_graph(ts_backend_cpu_new, gc, &fast_gemm);
        CHECK(ref && fast, "%s: graph failed", what);
        if (ref && fast) {
            CHECK(fast_gemm, "%s: the cpu backend did not use the GEMM", what);
            ts_dtype out = gc->a_type == gc->b_type ? gc->a_type : TS_F32;
            double err = 0, energy = 0;
            for (int64_t e = 0; e < gc->m * gc->n; e++) {
                err += ((double)fast[e] - ref[e]) * ((double)fast[e] - ref[e]);
                energy += (double)ref[e] * ref[e];
            }
            double nmse = err / energy;
            CHECK(nmse <= ts_conformance_tolerance(out), "%s: nmse %.3g > %.3g", what, nmse,
                  ts_conformance_tolerance(out));
        }
        free(ref);
        free(fast);
    }
}

int main(void) {
    for (int p = 0; p < N_POOLS; p++) CHECK(ts_threadpool_new(p + 1, &pools[p]) == TS_OK, "threadpool");
    ts_gemm_set_parallel_threshold(1); /* every shape on every thread */
    ts_gemm_tier tiers[TS_GEMM_TIER_COUNT];
    int n_tiers = ts_gemm_tiers_here(tiers);
    for (int i = 0; i < n_tiers; i++) {
        CHECK(ts_gemm_tier_set(tiers[i]), "cannot select tier %s", ts_gemm_tier_to_name(tiers[i]));
        int before = check_failed_;
        test_shapes_for_tier();
        printf("gemm_lowp: tier %-8s %s\n", ts_gemm_tier_name(), check_failed_ == before ? "ok" : "FAILED");
    }
    ts_gemm_tier_set(tiers[n_tiers - 1]);
#if defined(__x86_64__)
    if (tiers[n_tiers - 1] >= TS_GEMM_TIER_AVX2) test_avx2_converter();
#endif
    ts_gemm_set_parallel_threshold(0);
    test_graph_matmuls();
    for (int p = 0; p < N_POOLS; p++) ts_threadpool_free(pools[p]);
    return check_summary("gemm_lowp");
}
