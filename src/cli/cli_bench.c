/* cli_bench.c - `tessera bench <name>`: runs one of the sub-benchmarks in the table below
 * (each in its own cli_bench_<name>.c; adding one is a row here and a declaration in
 * cli_bench.h), and the timing helpers they share. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli/cli.h"
#include "cli/cli_bench.h"
#include "tessera/core.h"

static const struct {
    const char *name;
    const char *summary;
    int (*run)(int argc, char **argv);
} benches[] = {
    {"gemm", "GEMM/GEMV GFLOP/s per shape and dtype vs the FMA peak, read bandwidth and OpenBLAS", cli_bench_gemm_main},
    {"attention", "fused attention forward and backward: GFLOP/s, memory per sequence length, vs the reference kernel", cli_bench_attention_main},
    {"serve", "an OpenAI-compatible server under 1..64 concurrent streams: TTFT, inter-token latency, tokens/s", cli_bench_serve_main},
};

#define N_BENCHES ((int)(sizeof benches / sizeof benches[0]))

static void print_usage(FILE *out) {
    fprintf(out, "usage: tessera bench <name> [options]\n\nBenchmarks (they time things and pass no verdict):\n");
    for (int i = 0; i < N_BENCHES; i++) fprintf(out, "  %-10s %s\n", benches[i].name, benches[i].summary);
    fprintf(out, "\n'tessera bench <name> --help' describes a benchmark's options.\n");
}

int cli_bench_main(int argc, char **argv) {
    if (argc < 2) {
        print_usage(stderr);
        return CLI_EXIT_USAGE;
    }
    if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
        print_usage(stdout);
        return CLI_EXIT_OK;
    }
    for (int i = 0; i < N_BENCHES; i++)
        if (strcmp(argv[1], benches[i].name) == 0) return benches[i].run(argc - 1, argv + 1);
    return cli_usage_error("bench", "unknown benchmark '%s'", argv[1]);
}

/* ---------------------------------------------------------------- timing helpers */

double cli_bench_best_seconds(cli_bench_fn fn, void *ctx, int reps) {
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

static int cmp_double(const void *x, const void *y) {
    double a = *(const double *)x, b = *(const double *)y;
    return (a > b) - (a < b);
}

double cli_bench_median(double *t, int n) {
    qsort(t, (size_t)n, sizeof t[0], cmp_double);
    return n % 2 ? t[n / 2] : 0.5 * (t[n / 2 - 1] + t[n / 2]);
}

double cli_bench_percentile(double *t, int n, double q) {
    qsort(t, (size_t)n, sizeof t[0], cmp_double);
    int rank = (int)ceil(q * n); /* 1-based */
    return t[rank < 1 ? 0 : rank > n ? n - 1 : rank - 1];
}

void cli_bench_sleep(double s) {
    struct timespec ts = {.tv_sec = (time_t)s, .tv_nsec = (long)((s - (double)(time_t)s) * 1e9)};
    nanosleep(&ts, NULL);
}
