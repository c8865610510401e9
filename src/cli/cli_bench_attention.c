/* cli_bench_attention.c - `tessera bench attention`: throughput and memory of fused attention on the CPU backends: the
 * flash-style f32 kernel of the "cpu" backend (src/backends/cpu/fast_attention.c) against the
 * reference kernel ("cpu-ref", ref_attention.c, double precision) on the same graph.
 *
 * Each configuration builds a graph of one ATTENTION node (forward) or an ATTENTION node and an
 * ATTENTION_BACK node fed by a dout leaf and the forward's output (forward + backward, as
 * autodiff builds them), so only the attention kernels are timed. Reported per configuration:
 * median seconds over --reps runs after a warm-up, and GFLOP/s counting visible entries only:
 * an entry is a (query row, visible key) pair, and
 *   forward  FLOPs = 2 (D + Dv) x entries      (q.k and p v, a multiply-add counted as 2)
 *   backward FLOPs = 2.5 x forward             (the FlashAttention convention: 5 GEMMs vs 2;
 *                                               the kernel's recomputation is not counted)
 * so masked-out keys (causal, window) count nothing. On a shared machine wall time depends on
 * the other processes, so the process CPU time of the same runs is reported too (median, per
 * thread: CPU seconds / threads) with the GFLOP/s it implies ("cpu"). The reference kernel's
 * median over --ref-reps (default 1) runs is printed beside it when its forward work is at most
 * --ref-gflop (default 1.2 GFLOP), with the speed-up (the ratio of CPU times, which other
 * processes disturb less than wall time). Memory: the planner's arena (all intermediates of the
 * graph: the output and, with backward, the flat gradient buffer) and the process peak RSS after
 * the configuration ran; both grow linearly with T (no T x S buffer anywhere).
 *
 *   tessera bench attention [--threads N] [--reps N] [--ref-reps N] [--ref-gflop X] [--max-gflop X]
 *                           [--quick] [--json]
 *
 * --quick runs T = 1024 only; configurations of more than --max-gflop (default 150) counted
 * GFLOP are skipped (the V4-like H = 64 causal runs at T = 4096). --json prints one object per
 * line. TESSERA_CPU_TIER selects a lower instruction-set tier (generic C, for instance), as for
 * the library. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "cli/cli.h"
#include "cli/cli_bench.h"
#include "tessera/backend.h"
#include "tessera/graph.h"

typedef struct {
    int threads, reps, ref_reps;
    float ref_gflop, max_gflop; /* floats: CLI_OPT_FLOAT targets */
    bool quick, json;
} bench_opts;

typedef enum { MASK_CAUSAL, MASK_WINDOW, MASK_FULL } mask_kind;

typedef struct {
    int64_t H, Hk, D, T;
    bool shared_kv; /* V4's single K=V head: one tensor as k and v (Hk = 1, Dv = D) */
    mask_kind mask;
    int32_t window; /* MASK_WINDOW: causal with this window */
    bool backward;
} bench_config;

static const char *mask_name(mask_kind m) {
    return m == MASK_CAUSAL ? "causal" : m == MASK_WINDOW ? "window" : "full";
}

/* (query, visible key) pairs of one head (B = 1, T = S). */
static double visible_entries(const bench_config *c) {
    double n = 0;
    for (int64_t t = 0; t < c->T; t++) {
        int64_t keys = c->mask == MASK_FULL ? c->T : t + 1;
        if (c->mask == MASK_WINDOW && keys > c->window) keys = c->window;
        n += (double)keys;
    }
    return n * (double)c->H;
}

static double config_gflop(const bench_config *c) {
    double fwd = 2.0 * (double)(2 * c->D) * visible_entries(c) / 1e9;
    return c->backward ? 3.5 * fwd : fwd;
}

/* ---------------------------------------------------------------- one graph */

typedef struct {
    ts_graph *g;
    ts_tensor *leaves[4]; /* q, k, v (NULL when shared), dout (NULL forward) */
    size_t arena_bytes;
} bench_graph;

static ts_status fill_random(ts_tensor *t, ts_rng *r) {
    if (!t) return TS_OK;
    int64_t n = ts_nelements(t);
    float *x = malloc((size_t)n * sizeof *x);
    if (!x) return TS_ERR_OOM;
    for (int64_t i = 0; i < n; i++) x[i] = (float)(2 * ts_rng_uniform(r) - 1);
    ts_status s = ts_tensor_write(t, x, (size_t)n * sizeof *x);
    free(x);
    return s;
}

static ts_status build(const bench_config *c, ts_backend *be, bench_graph *bg) {
    memset(bg, 0, sizeof *bg);
    ts_graph *g = bg->g = ts_graph_new();
    if (!g) return TS_ERR_OOM;
    ts_tensor *q = ts_new_tensor_4d(g, TS_F32, 1, c->T, c->H, c->D, "q");
    ts_tensor *k = ts_new_tensor_4d(g, TS_F32, 1, c->T, c->Hk, c->D, c->shared_kv ? "kv" : "k");
    ts_tensor *v = c->shared_kv ? k : ts_new_tensor_4d(g, TS_F32, 1, c->T, c->Hk, c->D, "v");
    int32_t ip[5] = {c->mask != MASK_FULL, c->mask == MASK_WINDOW ? c->window : 0, 0, 0, 0};
    float fp[1] = {0.125f};
    ts_tensor *src[5] = {q, k, v, NULL, NULL};
    ts_tensor *out = ts_op_node(g, TS_OP_ATTENTION, src, 3, ip, 5, fp, 1);
    bg->leaves[0] = q, bg->leaves[1] = k, bg->leaves[2] = c->shared_kv ? NULL : v;
    if (c->backward) {
        src[3] = bg->leaves[3] = ts_new_tensor_4d(g, TS_F32, 1, c->T, c->H, c->D, "dout");
        src[4] = out;
        ts_set_output(ts_op_node(g, TS_OP_ATTENTION_BACK, src, 5, ip, 5, fp, 1));
    }
    ts_set_output(out);
    ts_plan_stats st = {0};
    ts_status s = ts_graph_status(g);
    if (s == TS_OK) s = ts_graph_alloc(g, be, NULL, &st);
    bg->arena_bytes = st.arena_bytes;
    ts_rng r;
    ts_rng_seed(&r, 42);
    for (int i = 0; i < 4 && s == TS_OK; i++) s = fill_random(bg->leaves[i], &r);
    return s;
}

static double cpu_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

typedef struct {
    double wall, cpu; /* medians; cpu: process CPU seconds (all threads) */
} run_time;

/* Median wall and CPU seconds of `reps` computes (after one warm-up when warm_up); wall < 0 on
 * error. */
static run_time median_times(bench_graph *bg, int reps, bool warm_up) {
    run_time m = {-1, -1};
    if (warm_up && ts_graph_compute(bg->g) != TS_OK) return m;
    double *w = malloc((size_t)reps * sizeof *w), *c = malloc((size_t)reps * sizeof *c);
    int done = 0;
    for (; w && c && done < reps; done++) {
        double w0 = ts_time_seconds(), c0 = cpu_seconds();
        if (ts_graph_compute(bg->g) != TS_OK) break;
        w[done] = ts_time_seconds() - w0;
        c[done] = cpu_seconds() - c0;
    }
    if (done == reps) m = (run_time){cli_bench_median(w, reps), cli_bench_median(c, reps)};
    free(w);
    free(c);
    return m;
}

static long peak_rss_kb(void) {
    struct rusage u;
    getrusage(RUSAGE_SELF, &u);
    return u.ru_maxrss;
}

/* Times c on `be`; *arena gets the planned arena. wall < 0 on error (printed). */
static run_time time_config(const bench_config *c, ts_backend *be, int reps, bool warm_up, size_t *arena) {
    bench_graph bg;
    run_time t = {-1, -1};
    if (build(c, be, &bg) == TS_OK) t = median_times(&bg, reps, warm_up);
    if (t.wall < 0) fprintf(stderr, "tessera bench attention: %s\n", ts_graph_error(bg.g));
    *arena = bg.arena_bytes;
    ts_graph_free(bg.g);
    return t;
}

/* ---------------------------------------------------------------- report */

static void run_config(const bench_config *c, ts_backend *fast, ts_backend *ref, const bench_opts *o) {
    size_t arena = 0, ref_arena = 0;
    double gflop = config_gflop(c);
    run_time t = time_config(c, fast, o->reps, true, &arena);
    if (t.wall < 0) return;
    double fwd_gflop = c->backward ? gflop / 3.5 : gflop, sec = t.wall, cpu = t.cpu / o->threads;
    run_time rt = {-1, -1};
    if (fwd_gflop <= o->ref_gflop) rt = time_config(c, ref, o->ref_reps, false, &ref_arena);
    double ref_sec = rt.wall, speedup = rt.cpu / t.cpu; /* CPU time: robust to other processes */
    long rss = peak_rss_kb();
    char mask[32];
    if (c->mask == MASK_WINDOW) snprintf(mask, sizeof mask, "window%d", c->window);
    else snprintf(mask, sizeof mask, "%s", mask_name(c->mask));
    const char *pass = c->backward ? "fwd+bwd" : "fwd";
    if (o->json) {
        printf("{\"bench\":\"attention\",\"pass\":\"%s\",\"B\":1,\"T\":%lld,\"H\":%lld,\"Hk\":%lld,\"D\":%lld,"
               "\"Dv\":%lld,\"shared_kv\":%s,\"mask\":\"%s\",\"threads\":%d,\"visible_entries\":%.0f,\"gflop\":%.4f,"
               "\"seconds\":%.6f,\"gflops\":%.3f,\"cpu_seconds_per_thread\":%.6f,\"cpu_gflops\":%.3f",
               pass, (long long)c->T, (long long)c->H, (long long)c->Hk, (long long)c->D, (long long)c->D,
               c->shared_kv ? "true" : "false", mask, o->threads, visible_entries(c), gflop, sec, gflop / sec, cpu,
               gflop / cpu);
        if (ref_sec > 0)
            printf(",\"ref_seconds\":%.6f,\"ref_gflops\":%.4f,\"ref_cpu_gflops\":%.4f,\"speedup\":%.2f", ref_sec,
                   gflop / ref_sec, gflop * o->threads / rt.cpu, speedup);
        printf(",\"arena_bytes\":%zu,\"maxrss_kb\":%ld}\n", arena, rss);
    } else {
        printf("%-7s H=%-3lld Hk=%-2lld D=%-3lld T=%-5lld %-9s %8.2f ms %6.2f GFLOP/s (cpu %6.2f)", pass,
               (long long)c->H, (long long)c->Hk, (long long)c->D, (long long)c->T, mask, 1e3 * sec, gflop / sec,
               gflop / cpu);
        if (ref_sec > 0)
            printf("  ref %9.1f ms %6.3f GFLOP/s (cpu %6.3f) x%-6.1f", 1e3 * ref_sec, gflop / ref_sec,
                   gflop * o->threads / rt.cpu, speedup);
        else printf("  %-50s", "ref skipped (too slow)");
        printf("  arena %7.2f MiB  maxrss %7.1f MiB\n", (double)arena / (1 << 20), (double)rss / 1024);
    }
    fflush(stdout);
}

int cli_bench_attention_main(int argc, char **argv) {
    bench_opts o = {.threads = 2, .reps = 5, .ref_reps = 1, .ref_gflop = 1.2f, .max_gflop = 150};
    const cli_option options[] = {
        {"--threads", CLI_OPT_INT, &o.threads, "N", "threads of both backends", 1, 1024},
        {"--reps", CLI_OPT_INT, &o.reps, "N", "timed runs per configuration (the median is reported)", 1, 1000},
        {"--ref-reps", CLI_OPT_INT, &o.ref_reps, "N", "timed runs of the reference kernel", 1, 1000},
        {"--ref-gflop", CLI_OPT_FLOAT, &o.ref_gflop, "X", "run the reference kernel up to this much forward work", 0, 1e6},
        {"--max-gflop", CLI_OPT_FLOAT, &o.max_gflop, "X", "skip configurations of more counted work", 0, 1e9},
        {"--quick", CLI_OPT_FLAG, &o.quick, NULL, "T = 1024 only", 0, 0},
        {"--json", CLI_OPT_FLAG, &o.json, NULL, "one JSON object per line instead of a table", 0, 0},
    };
    const cli_spec spec = {"bench attention",
                           "Time the CPU backend's fused attention, forward and forward + backward, against the reference.",
                           "Shapes: H=8 (8 KV heads, D=64), V4-like H=64 sharing one K=V head (D=128), D=512 windowed;\n"
                           "T = 1024, 2048, 4096; causal, window 128 and full masks. GFLOP/s count visible entries only\n"
                           "(backward = 2.5 x forward); the planned arena and peak RSS show memory linear in T.\n"
                           "TESSERA_CPU_TIER=generic|avx2|avx512 forces a lower kernel tier.",
                           options, (int)(sizeof options / sizeof *options)};
    int rc = cli_parse(&spec, argc, argv);
    if (rc != CLI_CONTINUE) return rc;
    ts_backend *fast = NULL, *ref = NULL;
    if (ts_backend_cpu_new(o.threads, &fast) != TS_OK || ts_backend_cpu_ref_new(o.threads, &ref) != TS_OK) {
        ts_backend_free(fast);
        return cli_failure("bench attention", "cannot create the CPU backends");
    }
    if (!o.json)
        printf("attention on %d threads, B=1, f32 (reference: double inside), median of %d\n", o.threads, o.reps);
    /* heads, kv heads, D, shared K=V; every one at each T, mask and pass. The V4-like shared
     * head runs with D = 128 (V4: 512) to stay runnable; D = 512 runs windowed only. */
    static const struct {
        int64_t H, Hk, D;
        bool shared;
        bool window_only;
    } shapes[] = {{8, 8, 64, false, false}, {64, 1, 128, true, false}, {8, 8, 512, false, true}};
    static const int64_t lengths[] = {1024, 2048, 4096};
    static const mask_kind masks[] = {MASK_CAUSAL, MASK_WINDOW, MASK_FULL};
    for (int back = 0; back <= 1; back++)
        for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
            for (size_t m = 0; m < sizeof masks / sizeof masks[0]; m++)
                for (size_t l = 0; l < (o.quick ? 1 : sizeof lengths / sizeof lengths[0]); l++) {
                    if (shapes[s].window_only && masks[m] != MASK_WINDOW) continue;
                    if (shapes[s].H > 8 && masks[m] == MASK_FULL) continue; /* causal shows the same */
                    bench_config c = {.H = shapes[s].H, .Hk = shapes[s].Hk, .D = shapes[s].D, .T = lengths[l],
                                      .shared_kv = shapes[s].shared, .mask = masks[m], .window = 128,
                                      .backward = back != 0};
                    if (config_gflop(&c) <= o.max_gflop) run_config(&c, fast, ref, &o);
                }
    ts_backend_free(fast);
    ts_backend_free(ref);
    return 0;
}
