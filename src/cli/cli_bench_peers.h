/* cli_bench_peers.h - the libraries `tessera bench gemm` times beside our GEMM: OpenBLAS and
 * oneDNN, each loaded with dlopen at run time so that neither the engine nor the binary links
 * them (both are optional Debian packages: libopenblas0, libdnnl2 / libdnnl-dev). */
#ifndef TS_CLI_BENCH_PEERS_H
#define TS_CLI_BENCH_PEERS_H

#include <stdbool.h>
#include <stdint.h>

#include "tessera/core.h"

/* One GEMM case: C[M, N] (f32) = A[M, K] op(B), A and B stored in dtype, B [K, N] or [N, K]. */
typedef struct {
    int64_t m, n, k;
    bool b_nk;
    ts_dtype dtype;
    const void *a;
    float *c;
} bench_gemm_case;

typedef struct bench_peer bench_peer;

/* NULL when the library cannot be loaded; *why says so. threads: the peer's thread count (oneDNN
 * reads it from OMP_NUM_THREADS when it loads, so this sets that variable). */
bench_peer *bench_peer_openblas(int threads, const char **why);
bench_peer *bench_peer_onednn(int threads, const char **why);
void bench_peer_free(bench_peer *p);

/* "openblas", "onednn": the name in tables and JSON. */
const char *bench_peer_name(const bench_peer *p);
/* The library call that serves dtype, or NULL when the peer cannot run it. */
const char *bench_peer_routine(const bench_peer *p, ts_dtype dtype);
/* Readies the peer for one case (oneDNN builds its primitive here, outside the timing); false
 * when it cannot run this case. */
bool bench_peer_prepare(bench_peer *p, const bench_gemm_case *c);
/* One timed call with B at b (a copy of the case's B). */
void bench_peer_run(bench_peer *p, const bench_gemm_case *c, const void *b);
/* Releases what prepare made. */
void bench_peer_release(bench_peer *p);

#endif
