/* cli_bench.h - what the sub-benchmarks of `tessera bench` share: their entry points (one file
 * each, cli_bench_<name>.c, listed in cli_bench.c's table) and the timing helpers they all use.
 * Benchmarks time things and pass no verdict; they print a human table or, with --json, one
 * JSON object per line. */
#ifndef TS_CLI_BENCH_H
#define TS_CLI_BENCH_H

#include <stdint.h>

#include "tessera/core.h"

/* Sub-benchmarks: argv[0] is the sub-benchmark's name; the return value is the exit code. */
int cli_bench_gemm_main(int argc, char **argv);
int cli_bench_serve_main(int argc, char **argv);
int cli_bench_attention_main(int argc, char **argv);

/* Something to time: one call of fn(ctx). */
typedef void (*cli_bench_fn)(void *ctx);

/* Fastest seconds per call over `reps` runs after one warm-up call: for machine limits (FMA
 * peak, read bandwidth), where anything slower is interference from other processes. */
double cli_bench_best_seconds(cli_bench_fn fn, void *ctx, int reps);

/* Median of n values (sorts them in place: t[0] is then the smallest). */
double cli_bench_median(double *t, int n);
/* The q-quantile (0 < q <= 1) of n values by nearest rank: the smallest value with at least
 * q * n values at or below it (sorts them in place). */
double cli_bench_percentile(double *t, int n, double q);

void cli_bench_sleep(double seconds);

/* GFLOP/s of the active GEMM tier's register-only FMA loop on `threads` threads of pool at once
 * (best of 5; a few milliseconds): the machine's peak, for utilization figures. */
double cli_bench_fma_peak_gflops(ts_threadpool *pool, int threads);

#endif
