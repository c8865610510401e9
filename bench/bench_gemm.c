/* bench_gemm.c - throughput of the CPU backend's GEMM (src/backends/cpu/gemm.c), optionally
 * side by side with OpenBLAS (a benchmark-only peer, linked when bench/CMakeLists.txt finds it).
 *
 * Reports, for a fixed set of shapes: median GFLOP/s of ts_gemm_f32 over at least --reps runs
 * (default 7) after warm-up, the peer's median, and the ratio; the machine's register-only FMA
 * peak per tier (best of 7) and our fraction of it; for GEMV, the bandwidth reached (bytes of
 * B per second) against a streaming read of 256 MiB (best of 5). Small-M runs rotate through
 * enough copies of B (256 MiB in all) that B always comes from DRAM, as in a decode step.
 *
 *   tessera_bench_gemm [--threads N] [--reps N] [--json] [--quick] [--shape M,N,K[,LAYOUT]]
 *
 * --quick runs the three large required shapes and the GEMVs only; --shape runs one shape
 * (LAYOUT nn|nt|tn|tt says whether A and B are stored transposed) and skips the machine figures.
 * --json prints one object per line: {"op","dtype","m","n","k","threads","gflops","peer",
 * "peer_gflops", ...}. TS_CPU_TIER selects a lower tier, as for the library. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "backends/cpu/gemm.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#ifdef TS_BENCH_OPENBLAS
#include <cblas.h>
void openblas_set_num_threads(int num_threads); /* in OpenBLAS's cblas.h, not in netlib's */
#endif

typedef struct {
    int threads, reps;
    bool json, quick;
    bool custom; /* --shape given: run only that */
    bool ta, tb;
    int64_t m, n, k;
    ts_threadpool *pool;
} bench_opts;

/* ---------------------------------------------------------------- timing */

static int cmp_double(const void *x, const void *y) {
    double a = *(const double *)x, b = *(const double *)y;
    return (a > b) - (a < b);
}

typedef void (*bench_fn)(void *ctx);

/* Fastest seconds per call over `reps` timed runs, after a warm-up call: for machine limits
 * (FMA peak, read bandwidth), where anything slower is interference from other processes. */
static double best_seconds(bench_fn fn, void *ctx, int reps) {
    double best = 1e30;
    fn(ctx);
    for (int r = 0; r < reps; r++) {
        double t0 = ts_time_seconds();
        fn(ctx);
        double t = ts_time_seconds() - t0;
        if (t < best) best = t;
    }
    return best;
}

/* ---------------------------------------------------------------- FMA peak */

#define PEAK_ITERS 5000000

/* Twelve independent chains of a*x + y: more than latency (4) x pipes (2) needs, so the loop
 * runs at the FMA pipes' throughput; returns a value so nothing is optimised away. */
#if defined(__x86_64__)
__attribute__((target("avx512f"))) static float peak_avx512(void) {
    __m512 x = _mm512_set1_ps(0.999999f), y = _mm512_set1_ps(1e-7f), acc[12];
    for (int i = 0; i < 12; i++) acc[i] = _mm512_set1_ps((float)i);
    for (int64_t it = 0; it < PEAK_ITERS; it++)
        for (int i = 0; i < 12; i++) acc[i] = _mm512_fmadd_ps(acc[i], x, y);
    for (int i = 1; i < 12; i++) acc[0] = _mm512_add_ps(acc[0], acc[i]);
    return _mm512_reduce_add_ps(acc[0]);
}

__attribute__((target("avx2,fma"))) static float peak_avx2(void) {
    __m256 x = _mm256_set1_ps(0.999999f), y = _mm256_set1_ps(1e-7f), acc[12];
    for (int i = 0; i < 12; i++) acc[i] = _mm256_set1_ps((float)i);
    for (int64_t it = 0; it < PEAK_ITERS; it++)
        for (int i = 0; i < 12; i++) acc[i] = _mm256_fmadd_ps(acc[i], x, y);
    for (int i = 1; i < 12; i++) acc[0] = _mm256_add_ps(acc[0], acc[i]);
    float out[8];
    _mm256_storeu_ps(out, acc[0]);
    return out[0] + out[7];
}
#endif

/* Baseline: separate multiply and add (no FMA in baseline x86-64), 4-wide SSE or NEON. */
static float peak_generic(void) {
    float acc[12][4];
    for (int i = 0; i < 12; i++)
        for (int l = 0; l < 4; l++) acc[i][l] = (float)i;
    for (int64_t it = 0; it < PEAK_ITERS; it++)
        for (int i = 0; i < 12; i++)
            for (int l = 0; l < 4; l++) acc[i][l] = acc[i][l] * 0.999999f + 1e-7f;
    float s = 0;
    for (int i = 0; i < 12; i++) s += acc[i][0] + acc[i][3];
    return s;
}

static const int peak_lanes[TS_GEMM_TIER_COUNT] = {4, 8, 16};

typedef struct {
    ts_gemm_tier tier;
    ts_threadpool *pool;
    int threads;
    volatile float sink;
} peak_job;

static void peak_thread(void *ctx, int64_t b, int64_t e, int tid) {
    (void)tid;
    peak_job *job = ctx;
    for (int64_t i = b; i < e; i++) {
        switch (job->tier) {
#if defined(__x86_64__)
        case TS_GEMM_TIER_AVX512: job->sink = peak_avx512(); break;
        case TS_GEMM_TIER_AVX2: job->sink = peak_avx2(); break;
#endif
        default: job->sink = peak_generic(); break;
        }
    }
}

static void peak_all(void *ctx) {
    peak_job *job = ctx;
    ts_parallel_for(job->pool, job->threads, 1, peak_thread, job);
}

/* GFLOP/s of the register-only loop on every thread of the pool at once (best of 7 runs). */
static double fma_peak_gflops(const bench_opts *o, ts_gemm_tier tier) {
    peak_job job = {.tier = tier, .pool = o->pool, .threads = o->threads};
    double t = best_seconds(peak_all, &job, 7);
    return 2.0 * 12 * peak_lanes[tier] * (double)PEAK_ITERS * o->threads / t * 1e-9;
}

/* ---------------------------------------------------------------- memory bandwidth */

typedef struct {
    const float *x;
    ts_threadpool *pool;
    int64_t n_blocks; /* of 16 floats */
    volatile float sink[64];
} read_job;

static void read_range(void *ctx, int64_t b, int64_t e, int tid) {
    read_job *job = ctx;
    float s[16] = {0};
    for (int64_t i = b * 16; i < e * 16; i += 16)
        for (int l = 0; l < 16; l++) s[l] += job->x[i + l];
    job->sink[tid % 64] = s[0] + s[15];
}

static void read_all(void *ctx) {
    read_job *job = ctx;
    ts_parallel_for(job->pool, job->n_blocks, 1024, read_range, job);
}

/* Streaming-read bandwidth (GB/s, best of 5) over a buffer far larger than the caches, on all
 * threads. */
static double read_bandwidth_gbs(const bench_opts *o) {
    int64_t n = (int64_t)64 << 20; /* 256 MiB */
    float *x = aligned_alloc(64, (size_t)n * sizeof(float));
    for (int64_t i = 0; i < n; i++) x[i] = 1.0f;
    read_job job = {.x = x, .pool = o->pool, .n_blocks = n / 16};
    double t = best_seconds(read_all, &job, 5);
    free(x);
    return (double)n * sizeof(float) / t * 1e-9;
}

/* ---------------------------------------------------------------- GEMM cases */

typedef struct {
    const bench_opts *o;
    bool ta, tb;
    int64_t m, n, k;
    float *a, *c;
    /* Bandwidth-bound shapes rotate through copies of B whose total exceeds the last-level
     * cache, as a decode step does through its layers' weights; otherwise every run after the
     * first would find part of B still in L3 and report more than memory can deliver. */
    float *b_copies[16];
    int n_copies, next;
} gemm_ctx;

/* B for this run (rotating through the copies). */
static const float *next_b(gemm_ctx *g) {
    const float *b = g->b_copies[g->next];
    g->next = (g->next + 1) % g->n_copies;
    return b;
}

static void run_ours(void *ctx) {
    gemm_ctx *g = ctx;
    int64_t lda = g->ta ? g->m : g->k, ldb = g->tb ? g->k : g->n;
    ts_gemm_f32(g->o->pool, g->ta, g->tb, g->m, g->n, g->k, 1.0f, g->a, lda, next_b(g), ldb, 0.0f, g->c, g->n);
}

#ifdef TS_BENCH_OPENBLAS
static void run_openblas(void *ctx) {
    gemm_ctx *g = ctx;
    int lda = (int)(g->ta ? g->m : g->k), ldb = (int)(g->tb ? g->k : g->n);
    const float *b = next_b(g);
    if (g->m == 1) { /* GEMV: y = op(B)^T x, the call OpenBLAS users make for this */
        if (g->tb) /* B is N x K: y = B x */
            cblas_sgemv(CblasRowMajor, CblasNoTrans, (int)g->n, (int)g->k, 1.0f, b, ldb, g->a, 1, 0.0f, g->c, 1);
        else /* B is K x N: y = B^T x */
            cblas_sgemv(CblasRowMajor, CblasTrans, (int)g->k, (int)g->n, 1.0f, b, ldb, g->a, 1, 0.0f, g->c, 1);
        return;
    }
    cblas_sgemm(CblasRowMajor, g->ta ? CblasTrans : CblasNoTrans, g->tb ? CblasTrans : CblasNoTrans, (int)g->m,
                (int)g->n, (int)g->k, 1.0f, g->a, lda, b, ldb, 0.0f, g->c, (int)g->n);
}
#endif

static float *random_matrix(int64_t n) {
    float *x = aligned_alloc(64, ((size_t)n * sizeof(float) + 63) / 64 * 64);
    ts_rng rng;
    ts_rng_seed(&rng, (uint64_t)n);
    for (int64_t i = 0; i < n; i++) x[i] = (float)(ts_rng_uniform(&rng) - 0.5);
    return x;
}

typedef struct {
    double ours, peer;           /* median GFLOP/s; peer < 0: none */
    double ours_best, peer_best; /* fastest run, for tuning on a noisy machine */
} gemm_result;

/* OpenBLAS's idle workers keep spinning for a while after each call (OPENBLAS_THREAD_TIMEOUT,
 * about 0.1 s by default), which on a small machine steals the cores from whatever runs next;
 * ours sleep. So the two are timed in alternating blocks of runs, with a pause after each peer
 * block, rather than run by run: still both see the same drift of a shared host, but neither
 * runs while the other's threads spin. */
static void pause_seconds(double s) {
    struct timespec ts = {.tv_sec = (time_t)s, .tv_nsec = (long)((s - (double)(time_t)s) * 1e9)};
    nanosleep(&ts, NULL);
}

static double median_of(double *t, int n) {
    qsort(t, (size_t)n, sizeof t[0], cmp_double);
    return n % 2 ? t[n / 2] : 0.5 * (t[n / 2 - 1] + t[n / 2]);
}

/* Median (and best) GFLOP/s of ours and of the peer over at least o->reps runs each, after
 * warm-up runs. */
static gemm_result bench_case(const bench_opts *o, bool ta, bool tb, int64_t m, int64_t n, int64_t k) {
    gemm_ctx g = {.o = o, .ta = ta, .tb = tb, .m = m, .n = n, .k = k};
    g.a = random_matrix(m * k);
    /* Rotate B copies when B is read once per call (small M) and a few copies exceed 256 MiB. */
    double b_bytes = (double)k * (double)n * sizeof(float);
    g.n_copies = m <= TS_GEMM_SMALL_M ? (int)(256.0 * (1 << 20) / b_bytes + 0.999) : 1;
    if (g.n_copies < 1) g.n_copies = 1;
    if (g.n_copies > 16) g.n_copies = 16;
    for (int i = 0; i < g.n_copies; i++) g.b_copies[i] = random_matrix(k * n);
    g.c = random_matrix(m * n);
    bench_fn fns[2] = {run_ours, NULL};
#ifdef TS_BENCH_OPENBLAS
    fns[1] = run_openblas;
#endif
    enum { BLOCKS = 2, MAX_RUNS = 64 };
    int per_block = (o->reps + BLOCKS - 1) / BLOCKS;
    if (per_block > MAX_RUNS / BLOCKS) per_block = MAX_RUNS / BLOCKS;
    double t[2][MAX_RUNS];
    for (int blk = 0; blk < BLOCKS; blk++)
        for (int f = 0; f < 2; f++) {
            if (!fns[f]) continue;
            fns[f](&g); /* warm-up: workspaces, page faults, caches, threads awake */
            for (int r = 0; r < per_block; r++) {
                double t0 = ts_time_seconds();
                fns[f](&g);
                t[f][blk * per_block + r] = ts_time_seconds() - t0;
            }
            if (f == 1) pause_seconds(0.3);
        }
    double flops = 2.0 * (double)m * (double)n * (double)k;
    int runs = BLOCKS * per_block;
    gemm_result res = {.peer = -1.0};
    for (int f = 0; f < 2; f++) {
        if (!fns[f]) continue;
        double med = median_of(t[f], runs); /* sorts: t[f][0] is then the fastest */
        *(f ? &res.peer : &res.ours) = flops / med * 1e-9;
        *(f ? &res.peer_best : &res.ours_best) = flops / t[f][0] * 1e-9;
    }
    free(g.a);
    for (int i = 0; i < g.n_copies; i++) free(g.b_copies[i]);
    free(g.c);
    return res;
}

static const char *peer_name(void) {
#ifdef TS_BENCH_OPENBLAS
    return "openblas";
#else
    return "none";
#endif
}

static void print_json(const bench_opts *o, const char *op, const char *layout, int64_t m, int64_t n, int64_t k,
                       gemm_result r, const char *extra) {
    char peer[64] = "null", peer_gf[64] = "null";
    if (r.peer >= 0) {
        snprintf(peer, sizeof peer, "\"%s\"", peer_name());
        snprintf(peer_gf, sizeof peer_gf, "%.2f", r.peer);
    }
    printf("{\"op\":\"%s\",\"layout\":\"%s\",\"dtype\":\"f32\",\"m\":%lld,\"n\":%lld,\"k\":%lld,\"threads\":%d,"
           "\"tier\":\"%s\",\"gflops\":%.2f,\"peer\":%s,\"peer_gflops\":%s%s}\n",
           op, layout, (long long)m, (long long)n, (long long)k, o->threads, ts_gemm_tier_name(), r.ours, peer,
           peer_gf, extra ? extra : "");
}

static void print_row(const char *label, gemm_result r, double peak, const char *note) {
    char peer[32] = "-", ratio[32] = "-";
    if (r.peer >= 0) {
        snprintf(peer, sizeof peer, "%.1f", r.peer);
        snprintf(ratio, sizeof ratio, "%.2fx", r.ours / r.peer);
    }
    printf("%-34s %10.1f %10s %8s %7.0f%%  %s\n", label, r.ours, peer, ratio, 100.0 * r.ours / peak, note ? note : "");
}

/* ---------------------------------------------------------------- main */

static void usage(const char *argv0) {
    fprintf(stderr, "usage: %s [--threads N] [--reps N] [--json] [--quick] [--shape M,N,K[,nn|nt|tn|tt]]\n", argv0);
    exit(2);
}

/* --shape M,N,K[,LAYOUT] with LAYOUT nn|nt|tn|tt (op(A), op(B) transposed or not). */
static void parse_shape(const char *arg, bench_opts *o, const char *argv0) {
    long long m, n, k;
    char layout[3] = "nn";
    int got = sscanf(arg, "%lld,%lld,%lld,%2[nt]", &m, &n, &k, layout);
    if (got < 3 || m < 1 || n < 1 || k < 1) usage(argv0);
    o->custom = true;
    o->m = m, o->n = n, o->k = k;
    o->ta = layout[0] == 't';
    o->tb = layout[1] == 't';
}

static void parse_args(int argc, char **argv, bench_opts *o) {
    *o = (bench_opts){.threads = 2, .reps = 7};
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--json") == 0) o->json = true;
        else if (strcmp(argv[i], "--quick") == 0) o->quick = true;
        else if (strcmp(argv[i], "--threads") == 0 && i + 1 < argc) o->threads = atoi(argv[++i]);
        else if (strcmp(argv[i], "--reps") == 0 && i + 1 < argc) o->reps = atoi(argv[++i]);
        else if (strcmp(argv[i], "--shape") == 0 && i + 1 < argc) parse_shape(argv[++i], o, argv[0]);
        else usage(argv[0]);
    }
    if (o->threads < 1 || o->reps < 5) usage(argv[0]); /* median of at least 5 */
}

typedef struct {
    const char *label, *layout;
    bool ta, tb;
    int64_t m, n, k;
} shape;

static const shape gemm_shapes[] = {
    {"gemm NN M=4096 N=2048 K=512", "nn", false, false, 4096, 2048, 512},
    {"gemm NN M=4096 N=512 K=2048", "nn", false, false, 4096, 512, 2048},
    {"gemm NN 1024^3", "nn", false, false, 1024, 1024, 1024},
    {"gemm NT 1024^3 (B = weight N x K)", "nt", false, true, 1024, 1024, 1024},
    {"gemm TN 1024^3", "tn", true, false, 1024, 1024, 1024},
    {"gemm NN M=64 N=4096 K=4096", "nn", false, false, 64, 4096, 4096},
};

static const shape gemv_shapes[] = {
    {"gemv M=1 N=K=4096 (B = K x N)", "nn", false, false, 1, 4096, 4096},
    {"gemv M=1 N=K=4096 (B = N x K)", "nt", false, true, 1, 4096, 4096},
    {"gemm M=8 N=K=4096 (B = N x K)", "nt", false, true, 8, 4096, 4096},
};

int main(int argc, char **argv) {
    bench_opts o;
    parse_args(argc, argv, &o);
    if (ts_threadpool_new(o.threads, &o.pool) != TS_OK) return 1;
#ifdef TS_BENCH_OPENBLAS
    openblas_set_num_threads(o.threads);
#endif
    ts_gemm_tier tier = ts_gemm_tier_active();
    ts_gemm_blocking bl = ts_gemm_get_blocking();

    if (o.custom) {
        gemm_result r = bench_case(&o, o.ta, o.tb, o.m, o.n, o.k);
        const char *layout = o.ta ? (o.tb ? "tt" : "tn") : (o.tb ? "nt" : "nn");
        if (o.json) print_json(&o, "gemm", layout, o.m, o.n, o.k, r, NULL);
        else printf("%s M=%lld N=%lld K=%lld %s, %d threads: median ours %.1f peer %.1f GFLOP/s (%.2fx); "
                    "best ours %.1f peer %.1f (%.2fx)\n", ts_gemm_tier_name(), (long long)o.m, (long long)o.n,
                    (long long)o.k, layout, o.threads, r.ours, r.peer, r.ours / r.peer, r.ours_best, r.peer_best,
                    r.ours_best / r.peer_best);
        ts_threadpool_free(o.pool);
        return 0;
    }

    /* Machine figures first: FMA peak per tier, streaming-read bandwidth. */
    double peak[TS_GEMM_TIER_COUNT] = {0};
    for (int t = 0; t <= (int)ts_gemm_tier_best(); t++) {
        peak[t] = fma_peak_gflops(&o, (ts_gemm_tier)t);
        if (o.json)
            printf("{\"op\":\"fma_peak\",\"dtype\":\"f32\",\"tier\":\"%s\",\"threads\":%d,\"gflops\":%.2f}\n",
                   ts_gemm_tier_to_name((ts_gemm_tier)t), o.threads, peak[t]);
    }
    double bw = read_bandwidth_gbs(&o);
    if (o.json) {
        printf("{\"op\":\"read_bandwidth\",\"threads\":%d,\"gbs\":%.2f}\n", o.threads, bw);
    } else {
        printf("tier %s (best here %s), %d threads, median of >= %d runs (2 blocks, each after a warm-up run)\n", ts_gemm_tier_name(),
               ts_gemm_tier_to_name(ts_gemm_tier_best()), o.threads, o.reps);
        printf("blocking MRxNR %dx%d, MC %d, KC %d, NC %d; small-M path for M <= %d\n", bl.mr, bl.nr, bl.mc, bl.kc,
               bl.nc, bl.small_m);
        for (int t = 0; t <= (int)ts_gemm_tier_best(); t++)
            printf("register-only FMA peak, %-7s: %7.1f GFLOP/s\n", ts_gemm_tier_to_name((ts_gemm_tier)t), peak[t]);
        printf("streaming read bandwidth:        %7.1f GB/s\n\n", bw);
        printf("%-34s %10s %10s %8s %8s\n", "shape", "ours GF/s", "peer GF/s", "ratio", "of peak");
    }

    size_t n_gemm = sizeof gemm_shapes / sizeof gemm_shapes[0];
    for (size_t i = 0; i < n_gemm; i++) {
        const shape *s = &gemm_shapes[i];
        if (o.quick && i >= 3) break;
        gemm_result r = bench_case(&o, s->ta, s->tb, s->m, s->n, s->k);
        if (o.json) print_json(&o, "gemm", s->layout, s->m, s->n, s->k, r, NULL);
        else print_row(s->label, r, peak[tier], NULL);
    }
    for (size_t i = 0; i < sizeof gemv_shapes / sizeof gemv_shapes[0]; i++) {
        const shape *s = &gemv_shapes[i];
        gemm_result r = bench_case(&o, s->ta, s->tb, s->m, s->n, s->k);
        /* Bandwidth-bound: bytes of B (read once) per second, against the streaming baseline. */
        double bytes = (double)s->n * (double)s->k * sizeof(float);
        double gbs = r.ours * 1e9 / (2.0 * (double)s->m * s->n * s->k) * bytes * 1e-9;
        char note[96];
        snprintf(note, sizeof note, "%.1f GB/s = %.0f%% of read bw", gbs, 100.0 * gbs / bw);
        if (o.json) {
            char extra[64];
            snprintf(extra, sizeof extra, ",\"gbs\":%.2f", gbs);
            print_json(&o, s->m == 1 ? "gemv" : "gemm", s->layout, s->m, s->n, s->k, r, extra);
        } else {
            print_row(s->label, r, peak[tier], note);
        }
    }
    ts_threadpool_free(o.pool);
    return 0;
}
