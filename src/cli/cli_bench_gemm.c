/* cli_bench_gemm.c - `tessera bench gemm`: throughput of the CPU backend's GEMM (ts_gemm in
 * src/backends/cpu/gemm.h) per shape and operand dtype, against this machine's limits measured in
 * the same run, and side by side with OpenBLAS.
 *
 * For each shape and dtype (A and B stored in that dtype, C f32): median GFLOP/s over --repeats
 * timed runs (after a warm-up), the fraction of the register-only FMA peak of the active tier
 * (a short loop of independent FMA chains on every thread); for small M (GEMV, decode) also the
 * bytes of B per second against a streaming read of a 1 GiB buffer (--read-mib) on the same
 * threads, and B rotates through enough copies (256 MiB) that it comes from DRAM, as in a
 * decode step.
 *
 * The peers are OpenBLAS and oneDNN (cli_bench_peers.h), each loaded at run time when present,
 * on the same operands; each is timed in its own blocks, never interleaved run by run with
 * ours. TESSERA_CPU_TIER selects a lower kernel tier, as for the library. */
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "backends/cpu/gemm.h"
#include "cli/cli.h"
#include "cli/cli_bench.h"
#include "cli/cli_bench_peers.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

/* ---------------------------------------------------------------- options */

typedef struct {
    int64_t m, n, k;
    bool b_nk; /* B stored [N, K] (a weight as PyTorch stores it): op(B) = B^T */
} shape;

#define MAX_SHAPES 32
#define MAX_DTYPES 8

typedef struct {
    shape shapes[MAX_SHAPES];
    int n_shapes;
    ts_dtype dtypes[MAX_DTYPES];
    int n_dtypes;
    int threads, reps;
    int64_t read_mib; /* working set of the read-bandwidth measurement */
    bool json;
    ts_threadpool *pool;
} bench_opts;

/* "MxNxK[:nt]" items separated by commas. */
static bool parse_shapes(const char *list, bench_opts *o) {
    o->n_shapes = 0;
    for (const char *p = list; *p;) {
        long long m, n, k;
        int used = 0;
        if (o->n_shapes == MAX_SHAPES || sscanf(p, "%lldx%lldx%lld%n", &m, &n, &k, &used) != 3 || m < 1 || n < 1 ||
            k < 1)
            return false;
        p += used;
        shape *s = &o->shapes[o->n_shapes++];
        *s = (shape){.m = m, .n = n, .k = k};
        if (strncmp(p, ":nt", 3) == 0) s->b_nk = true, p += 3;
        else if (strncmp(p, ":nn", 3) == 0) p += 3;
        if (*p == ',') p++;
        else if (*p) return false;
    }
    return o->n_shapes > 0;
}

static bool parse_dtypes(const char *list, bench_opts *o) {
    char buf[256];
    snprintf(buf, sizeof buf, "%s", list);
    o->n_dtypes = 0;
    for (char *save = NULL, *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        ts_dtype t;
        if (!strcmp(tok, "e4m3")) t = TS_F8_E4M3;
        else if (!strcmp(tok, "e5m2")) t = TS_F8_E5M2;
        else if (ts_dtype_from_name(tok, &t) != TS_OK || !ts_gemm_dtype_supported(t)) return false;
        if (o->n_dtypes == MAX_DTYPES) return false;
        o->dtypes[o->n_dtypes++] = t;
    }
    return o->n_dtypes > 0;
}

/* ---------------------------------------------------------------- machine limits */

#define PEAK_ITERS 2000000

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

/* Baseline: separate multiply and add (what the generic tier runs), 4 lanes wide. */
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

#define PEAK_MAX_THREADS 1024 /* the thread pool's own limit */
#define PEAK_REPS 5

typedef struct {
    ts_gemm_tier tier;
    ts_threadpool *pool;
    int threads;
    volatile float sink;
    double best[PEAK_MAX_THREADS]; /* each thread's fastest loop, seconds */
} peak_job;

/* Each thread times its own loop: on a shared or virtual machine the threads do not always run
 * at the same moment (a whole-pool wall time then counted one core's throughput twice and
 * reported half the peak in some runs), and the peak is a property of the cores, not of how a
 * hypervisor scheduled them during these few milliseconds. */
static void peak_thread(void *ctx, int64_t b, int64_t e, int tid) {
    peak_job *job = ctx;
    for (int64_t i = b; i < e; i++) {
        double t0 = ts_time_seconds();
        switch (job->tier) {
#if defined(__x86_64__)
        case TS_GEMM_TIER_AVX512: job->sink = peak_avx512(); break;
        case TS_GEMM_TIER_AVX2: job->sink = peak_avx2(); break;
#endif
        default: job->sink = peak_generic(); break;
        }
        double t = ts_time_seconds() - t0;
        if (t < job->best[i]) job->best[i] = t;
    }
}

static int tier_lanes(ts_gemm_tier t) { return t == TS_GEMM_TIER_AVX512 ? 16 : t == TS_GEMM_TIER_AVX2 ? 8 : 4; }

/* The sum over threads of each one's best FMA throughput (one thread per pool chunk). */
double cli_bench_fma_peak_gflops(ts_threadpool *pool, int threads) {
    static peak_job job; /* large; one measurement at a time */
    if (threads < 1) threads = 1;
    if (threads > PEAK_MAX_THREADS) threads = PEAK_MAX_THREADS;
    job.tier = ts_gemm_tier_active();
    job.pool = pool;
    job.threads = threads;
    for (int i = 0; i < threads; i++) job.best[i] = 1e30;
    for (int r = 0; r <= PEAK_REPS; r++) ts_parallel_for(pool, threads, 1, peak_thread, &job);
    double flops = 2.0 * 12 * tier_lanes(job.tier) * (double)PEAK_ITERS, gflops = 0;
    for (int i = 0; i < threads; i++) gflops += flops / job.best[i] * 1e-9;
    return gflops;
}

typedef struct {
    const float *x;
    ts_threadpool *pool;
    int64_t n_blocks; /* of READ_BLOCK floats */
    volatile float sink[64];
} read_job;

#define READ_BLOCK 64 /* floats per step: 4 cache lines */

/* Sums its blocks into 16 independent lanes x 4 chains, so the loop is bound by loads, not by
 * add latency (the compiler vectorizes it with the baseline ISA). */
static void read_range(void *ctx, int64_t b, int64_t e, int tid) {
    read_job *job = ctx;
    float s[READ_BLOCK] = {0};
    for (const float *p = job->x + b * READ_BLOCK, *end = job->x + e * READ_BLOCK; p < end; p += READ_BLOCK)
        for (int l = 0; l < READ_BLOCK; l++) s[l] += p[l];
    job->sink[tid % 64] = s[0] + s[READ_BLOCK - 1];
}

static void read_all(void *ctx) {
    read_job *job = ctx;
    ts_parallel_for(job->pool, job->n_blocks, 1024, read_range, job);
}

/* Streaming-read bandwidth (GB/s, best of 3) over o->read_mib MiB on all threads; < 0 when the
 * buffer cannot be had. */
static double read_bandwidth_gbs(const bench_opts *o) {
    int64_t n = o->read_mib << 18; /* floats */
    float *x = aligned_alloc(64, (size_t)n * sizeof(float));
    if (!x) return -1;
    memset(x, 0, (size_t)n * sizeof(float)); /* fault every page in */
    read_job job = {.x = x, .pool = o->pool, .n_blocks = n / READ_BLOCK};
    double t = cli_bench_best_seconds(read_all, &job, 3);
    free(x);
    return (double)n * sizeof(float) / t * 1e-9;
}

/* ---------------------------------------------------------------- one case */

#define MAX_PEERS 2

typedef struct {
    const bench_opts *o;
    bench_peer *peer; /* the one being timed */
    shape s;
    ts_dtype dtype;
    void *a;
    float *c;
    /* Bandwidth-bound shapes rotate through copies of B whose total exceeds the last-level
     * cache, as a decode step does through its layers' weights. */
    void *b_copies[16];
    int n_copies, next;
} gemm_ctx;

static const void *next_b(gemm_ctx *g) {
    const void *b = g->b_copies[g->next];
    g->next = (g->next + 1) % g->n_copies;
    return b;
}

static void run_ours(void *ctx) {
    gemm_ctx *g = ctx;
    ts_gemm(g->o->pool, false, g->s.b_nk, g->s.m, g->s.n, g->s.k, 1.0f, g->a, g->dtype, g->s.k, next_b(g), g->dtype,
            g->s.b_nk ? g->s.k : g->s.n, 0.0f, g->c, g->s.n);
}

static void run_peer(void *ctx) {
    gemm_ctx *g = ctx;
    bench_gemm_case c = {g->s.m, g->s.n, g->s.k, g->s.b_nk, g->dtype, g->a, g->c};
    bench_peer_run(g->peer, &c, next_b(g));
}

/* n random values in [-1, 1) stored as t. */
static void *random_matrix(int64_t n, ts_dtype t, uint64_t seed) {
    float *f = malloc((size_t)n * sizeof(float));
    void *x = aligned_alloc(64, (ts_dtype_bytes(t, n) + 63) / 64 * 64);
    if (!f || !x) {
        free(f);
        free(x);
        return NULL;
    }
    ts_rng rng;
    ts_rng_seed(&rng, seed);
    for (int64_t i = 0; i < n; i++) f[i] = (float)(2.0 * ts_rng_uniform(&rng) - 1.0);
    ts_convert(x, t, f, TS_F32, n);
    free(f);
    return x;
}

typedef struct {
    double ours, peer[MAX_PEERS]; /* median GFLOP/s; peer < 0: that peer cannot run the case */
} gemm_result;

static bool small_m(const shape *s) { return s->m <= TS_GEMM_SMALL_M; }

/* Median GFLOP/s of ours and of each peer over o->reps runs each, timed in alternating blocks
 * (ours, peer 1, peer 2, ours, ...) with a pause after each peer block: OpenBLAS's and OpenMP's
 * idle threads spin for a while after a call, and must not steal the next one's cores. */
static bool bench_case(const bench_opts *o, bench_peer *const *peers, int n_peers, const shape *s, ts_dtype dtype,
                       gemm_result *res) {
    gemm_ctx g = {.o = o, .s = *s, .dtype = dtype};
    double b_bytes = (double)ts_dtype_bytes(dtype, s->k * s->n);
    g.n_copies = small_m(s) ? (int)(256.0 * (1 << 20) / b_bytes + 0.999) : 1;
    g.n_copies = g.n_copies < 1 ? 1 : g.n_copies > 16 ? 16 : g.n_copies;
    g.a = random_matrix(s->m * s->k, dtype, 1);
    g.c = random_matrix(s->m * s->n, TS_F32, 2);
    bool ok = g.a && g.c;
    for (int i = 0; i < g.n_copies; i++) ok = (g.b_copies[i] = random_matrix(s->k * s->n, dtype, 3 + (uint64_t)i)) && ok;
    if (ok) {
        enum { BLOCKS = 2, MAX_RUNS = 64 };
        int per_block = (o->reps + BLOCKS - 1) / BLOCKS;
        double t[1 + MAX_PEERS][MAX_RUNS];
        bench_gemm_case c = {s->m, s->n, s->k, s->b_nk, dtype, g.a, g.c};
        bool runs[1 + MAX_PEERS] = {true};
        for (int p = 0; p < n_peers; p++) runs[1 + p] = bench_peer_prepare(peers[p], &c);
        for (int blk = 0; blk < BLOCKS; blk++)
            for (int f = 0; f <= n_peers; f++) {
                if (!runs[f]) continue;
                g.peer = f ? peers[f - 1] : NULL;
                cli_bench_fn fn = f ? run_peer : run_ours;
                fn(&g); /* warm-up: workspaces, page faults, caches, threads awake */
                for (int r = 0; r < per_block; r++) {
                    double t0 = ts_time_seconds();
                    fn(&g);
                    t[f][blk * per_block + r] = ts_time_seconds() - t0;
                }
                if (f) cli_bench_sleep(0.3);
            }
        double flops = 2.0 * (double)s->m * (double)s->n * (double)s->k;
        res->ours = flops / cli_bench_median(t[0], BLOCKS * per_block) * 1e-9;
        for (int p = 0; p < n_peers; p++) {
            res->peer[p] = runs[1 + p] ? flops / cli_bench_median(t[1 + p], BLOCKS * per_block) * 1e-9 : -1.0;
            bench_peer_release(peers[p]);
        }
    }
    free(g.a);
    free(g.c);
    for (int i = 0; i < g.n_copies; i++) free(g.b_copies[i]);
    return ok;
}

/* ---------------------------------------------------------------- output */

static const char *dtype_label(ts_dtype t) {
    return t == TS_F8_E4M3 ? "e4m3" : t == TS_F8_E5M2 ? "e5m2" : ts_dtype_name(t);
}

typedef struct {
    double peak_gflops, read_gbs; /* read_gbs < 0: not measured */
} machine;

/* Bytes of B per second (what bounds a small-M GEMM). */
static double b_gbs(const shape *s, ts_dtype t, double gflops) {
    double flops = 2.0 * (double)s->m * (double)s->n * (double)s->k;
    return (double)ts_dtype_bytes(t, s->k * s->n) * gflops / flops;
}

/* One object per peer (each self-contained: our figure, the peer's and the ratio), or one with
 * peer "none" when no peer runs the case. */
static void print_json(const bench_opts *o, const machine *mc, bench_peer *const *peers, int n_peers, const shape *s,
                       ts_dtype t, const gemm_result *r) {
    int printed = 0;
    for (int p = -1; p < n_peers; p++) {
        if (p < 0 ? false : r->peer[p] < 0) continue;
        if (p < 0) { /* the "none" line, only when no peer will print */
            bool any = false;
            for (int q = 0; q < n_peers; q++) any = any || r->peer[q] >= 0;
            if (any) continue;
        }
        json_t *j = json_pack("{s:s, s:s, s:I, s:I, s:I, s:s, s:i, s:s, s:f, s:f, s:f}", "op",
                              s->m == 1 ? "gemv" : "gemm", "dtype", dtype_label(t), "m", (json_int_t)s->m, "n",
                              (json_int_t)s->n, "k", (json_int_t)s->k, "b_layout", s->b_nk ? "nk" : "kn", "threads",
                              o->threads, "tier", ts_gemm_tier_name(), "gflops", r->ours, "fma_peak_gflops",
                              mc->peak_gflops, "peak_fraction", r->ours / mc->peak_gflops);
        json_object_set_new(j, "peer", json_string(p < 0 ? "none" : bench_peer_name(peers[p])));
        json_object_set_new(j, "peer_routine", p < 0 ? json_null() : json_string(bench_peer_routine(peers[p], t)));
        json_object_set_new(j, "peer_gflops", p < 0 ? json_null() : json_real(r->peer[p]));
        json_object_set_new(j, "ratio", p < 0 ? json_null() : json_real(r->ours / r->peer[p]));
        if (small_m(s) && mc->read_gbs > 0) {
            double gbs = b_gbs(s, t, r->ours);
            json_object_set_new(j, "gbs", json_real(gbs));
            json_object_set_new(j, "read_gbs", json_real(mc->read_gbs));
            json_object_set_new(j, "bandwidth_fraction", json_real(gbs / mc->read_gbs));
        }
        char *line = json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(6));
        if (line) printf("%s\n", line);
        free(line);
        json_decref(j);
        printed++;
    }
    fflush(stdout);
}

static void print_row(const machine *mc, int n_peers, const shape *s, ts_dtype t, const gemm_result *r) {
    char label[64], note[64] = "";
    snprintf(label, sizeof label, "%lldx%lldx%lld B[%s]", (long long)s->m, (long long)s->n, (long long)s->k,
             s->b_nk ? "N,K" : "K,N");
    printf("%-26s %-6s %9.1f", label, dtype_label(t), r->ours);
    for (int p = 0; p < n_peers; p++) {
        char peer[32] = "-", ratio[32] = "-";
        if (r->peer[p] >= 0) {
            snprintf(peer, sizeof peer, "%.1f", r->peer[p]);
            snprintf(ratio, sizeof ratio, "%.2fx", r->ours / r->peer[p]);
        }
        printf(" %9s %7s", peer, ratio);
    }
    if (small_m(s) && mc->read_gbs > 0) {
        double gbs = b_gbs(s, t, r->ours);
        snprintf(note, sizeof note, "%.1f GB/s = %.0f%% of read bw", gbs, 100.0 * gbs / mc->read_gbs);
    }
    printf(" %7.0f%%  %s\n", 100.0 * r->ours / mc->peak_gflops, note);
    fflush(stdout);
}

/* ---------------------------------------------------------------- main */

static bool any_small_m(const bench_opts *o) {
    for (int i = 0; i < o->n_shapes; i++)
        if (small_m(&o->shapes[i])) return true;
    return false;
}

int cli_bench_gemm_main(int argc, char **argv) {
    const char *shapes = "4096x2048x512,4096x512x2048,1024x1024x1024,1x4096x4096:nn,1x4096x4096:nt,8x4096x4096:nt";
    const char *dtypes = "f32,bf16,f16,e4m3";
    int threads = ts_cpu_count();
    uint64_t reps = 5, read_mib = 1024;
    bool json = false;
    const cli_option options[] = {
        {"--shapes", CLI_OPT_STRING, &shapes, "LIST",
         "comma-separated MxNxK[:nn|:nt]: C[M,N] = A[M,K] B, B stored [K,N] (nn) or [N,K] (nt)", 0, 0},
        {"--dtypes", CLI_OPT_STRING, &dtypes, "LIST", "storage dtype of A and B (C is f32): f32, bf16, f16, e4m3, e5m2",
         0, 0},
        {"--threads", CLI_OPT_INT, &threads, "N", "threads (of ours, the peer's and the machine measurements)", 1, 1024},
        {"--repeats", CLI_OPT_U64, &reps, "N", "timed runs per case and implementation (median reported)", 1, 64},
        {"--read-mib", CLI_OPT_U64, &read_mib, "N", "working set of the streaming-read measurement, in MiB", 1, 1 << 20},
        {"--json", CLI_OPT_FLAG, &json, NULL, "one JSON object per line instead of a table", 0, 0},
    };
    const cli_spec spec = {
        .command = "bench gemm",
        .summary = "Time the CPU backend's GEMM per shape and dtype: GFLOP/s, fraction of this machine's FMA peak\n"
                   "(measured in the same run), for small M the fraction of its streaming-read bandwidth,\n"
                   "and OpenBLAS and oneDNN on the same shapes when their libraries can be loaded.",
        .details = "TESSERA_CPU_TIER=generic|avx2|avx512 forces a lower kernel tier.",
        .options = options,
        .n_options = (int)(sizeof options / sizeof options[0]),
    };
    int rc = cli_parse(&spec, argc, argv);
    if (rc != CLI_CONTINUE) return rc;
    bench_opts o = {.threads = threads, .reps = (int)reps, .read_mib = (int64_t)read_mib, .json = json};
    if (!parse_shapes(shapes, &o)) return cli_usage_error("bench gemm", "bad --shapes '%s' (want MxNxK[:nn|:nt],...)", shapes);
    if (!parse_dtypes(dtypes, &o)) return cli_usage_error("bench gemm", "bad --dtypes '%s' (f32, bf16, f16, e4m3, e5m2)", dtypes);
    if (ts_threadpool_new(o.threads, &o.pool) != TS_OK) {
        fprintf(stderr, "tessera bench gemm: cannot start %d threads\n", o.threads);
        return CLI_EXIT_FAILURE;
    }
    bench_peer *peers[MAX_PEERS];
    int n_peers = 0;
    const char *why_ob = NULL, *why_dn = NULL;
    if ((peers[n_peers] = bench_peer_openblas(o.threads, &why_ob))) n_peers++;
    if ((peers[n_peers] = bench_peer_onednn(o.threads, &why_dn))) n_peers++;

    machine mc = {.peak_gflops = cli_bench_fma_peak_gflops(o.pool, o.threads), .read_gbs = any_small_m(&o) ? read_bandwidth_gbs(&o) : -1};
    ts_gemm_blocking bl = ts_gemm_get_blocking();
    if (o.json) {
        printf("{\"op\":\"machine\",\"tier\":\"%s\",\"threads\":%d,\"fma_peak_gflops\":%.2f,\"read_gbs\":%.2f,"
               "\"peers\":[",
               ts_gemm_tier_name(), o.threads, mc.peak_gflops, mc.read_gbs);
        for (int p = 0; p < n_peers; p++) printf("%s\"%s\"", p ? "," : "", bench_peer_name(peers[p]));
        printf("]}\n");
    } else {
        printf("tier %s (best here %s), %d threads, median of %d runs per case\n", ts_gemm_tier_name(),
               ts_gemm_tier_to_name(ts_gemm_tier_best()), o.threads, 2 * ((o.reps + 1) / 2));
        printf("peers: OpenBLAS %s, oneDNN %s\n", why_ob ? why_ob : "(libopenblas.so.0)",
               why_dn ? why_dn : "(libdnnl.so.2)");
        printf("blocking MRxNR %dx%d, MC %d, KC %d, NC %d; small-M path for M <= %d\n", bl.mr, bl.nr, bl.mc, bl.kc, bl.nc,
               bl.small_m);
        printf("register-only FMA peak: %.1f GFLOP/s\n", mc.peak_gflops);
        if (mc.read_gbs > 0) printf("streaming read, %lld MiB: %.1f GB/s\n", (long long)o.read_mib, mc.read_gbs);
        printf("\n%-26s %-6s %9s", "MxNxK", "dtype", "GFLOP/s");
        for (int p = 0; p < n_peers; p++) printf(" %9s %7s", bench_peer_name(peers[p]), "ratio");
        printf(" %8s\n", "of peak");
    }
    int status = CLI_EXIT_OK;
    for (int i = 0; i < o.n_shapes; i++)
        for (int d = 0; d < o.n_dtypes; d++) {
            gemm_result r = {0};
            if (!bench_case(&o, peers, n_peers, &o.shapes[i], o.dtypes[d], &r)) {
                fprintf(stderr, "tessera bench gemm: out of memory for %lldx%lldx%lld\n", (long long)o.shapes[i].m,
                        (long long)o.shapes[i].n, (long long)o.shapes[i].k);
                status = CLI_EXIT_FAILURE;
                continue;
            }
            if (o.json) print_json(&o, &mc, peers, n_peers, &o.shapes[i], o.dtypes[d], &r);
            else print_row(&mc, n_peers, &o.shapes[i], o.dtypes[d], &r);
        }
    for (int p = 0; p < n_peers; p++) bench_peer_free(peers[p]);
    ts_threadpool_free(o.pool);
    return status;
}
