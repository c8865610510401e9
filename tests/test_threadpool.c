/* test_threadpool.c - the thread pool (src/core/threadpool.c): ts_parallel_for hands out every
 * index of [0, n) exactly once, in one contiguous chunk per thread and the same chunks on every
 * call (the determinism the kernels rely on); a parallel-for from inside a job runs serially on
 * its thread; jobs issued while the workers sleep (the caller then claims the chunks they have
 * not started) still run every chunk once, as its own tid, and every index once. */
#define _POSIX_C_SOURCE 200809L /* nanosleep */
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>
#include <time.h>

#include "check.h"
#include "tessera/core.h"
#include "tessera/graph.h"

#define MAX_N 1000
#define MAX_THREADS 4

typedef struct {
    _Atomic int hits[MAX_N];
    int64_t begin[MAX_THREADS], end[MAX_THREADS];
    _Atomic int calls;
    ts_threadpool *pool; /* set: each chunk also runs a nested parallel-for over its range */
    _Atomic int nested_bad;
} cover_job;

static void count_nested(void *arg, int64_t b, int64_t e, int tid) {
    cover_job *j = arg;
    if (tid != 0) atomic_fetch_add(&j->nested_bad, 1);
    for (int64_t i = b; i < e; i++) atomic_fetch_add(&j->hits[i], 1);
}

static void cover(void *arg, int64_t b, int64_t e, int tid) {
    cover_job *j = arg;
    j->begin[tid] = b;
    j->end[tid] = e;
    atomic_fetch_add(&j->calls, 1);
    if (j->pool) {
        /* the nested loop must run here, whole, as thread 0, before this chunk returns */
        ts_parallel_for(j->pool, e - b, 1, count_nested, j);
        return;
    }
    for (int64_t i = b; i < e; i++) atomic_fetch_add(&j->hits[i], 1);
}

static void test_partition(ts_threadpool *pool) {
    int threads = ts_threadpool_size(pool);
    const int64_t sizes[] = {1, 7, 33, 1000};
    const int64_t min_chunks[] = {1, 5, 400};
    for (size_t s = 0; s < sizeof sizes / sizeof *sizes; s++)
        for (size_t m = 0; m < sizeof min_chunks / sizeof *min_chunks; m++) {
            int64_t n = sizes[s];
            static cover_job first, again;
            memset(&first, 0, sizeof first);
            memset(&again, 0, sizeof again);
            ts_parallel_for(pool, n, min_chunks[m], cover, &first);
            ts_parallel_for(pool, n, min_chunks[m], cover, &again);
            int bad = 0;
            for (int64_t i = 0; i < n; i++) bad += first.hits[i] != 1;
            CHECK(bad == 0, "%d threads, n %lld, min_chunk %lld: %d indices not hit exactly once", threads,
                  (long long)n, (long long)min_chunks[m], bad);
            int64_t want_calls = (n + min_chunks[m] - 1) / min_chunks[m];
            if (want_calls > threads) want_calls = threads;
            CHECK(first.calls >= 1 && first.calls <= want_calls, "n %lld min_chunk %lld: %d chunks on %d threads",
                  (long long)n, (long long)min_chunks[m], first.calls, threads);
            int64_t covered = 0;
            for (int t = 0; t < first.calls; t++) covered += first.end[t] - first.begin[t];
            CHECK(covered == n, "the %d chunks cover %lld of %lld indices", first.calls, (long long)covered,
                  (long long)n);
            CHECK(memcmp(first.begin, again.begin, sizeof first.begin) == 0 &&
                      memcmp(first.end, again.end, sizeof first.end) == 0 && first.calls == again.calls,
                  "n %lld: a second call cut [0, n) differently", (long long)n);
        }
    ts_parallel_for(pool, 0, 1, cover, NULL); /* nothing to do: fn must not run (NULL job) */
}

static void test_nested(ts_threadpool *pool) {
    static cover_job j;
    memset(&j, 0, sizeof j);
    j.pool = pool;
    ts_parallel_for(pool, MAX_N, 1, cover, &j);
    int bad = 0;
    /* each chunk's nested loop counted its own range's length into hits[0 .. len) */
    int64_t expect[MAX_N] = {0};
    for (int t = 0; t < j.calls; t++)
        for (int64_t i = 0; i < j.end[t] - j.begin[t]; i++) expect[i]++;
    for (int i = 0; i < MAX_N; i++) bad += j.hits[i] != expect[i];
    CHECK(bad == 0 && j.nested_bad == 0, "nested parallel-for: %d counts wrong, %d chunks not on thread 0", bad,
          (int)j.nested_bad);
}

/* Chunk tid's range and runner, for the claims test. */
typedef struct {
    _Atomic int hits[MAX_N];
    int64_t begin[MAX_THREADS], end[MAX_THREADS];
    _Atomic int runs[MAX_THREADS];
    pthread_t caller;
    _Atomic int by_caller; /* chunks other than 0 the caller ran */
} claim_job;

static void claim_chunk(void *arg, int64_t b, int64_t e, int tid) {
    claim_job *j = arg;
    j->begin[tid] = b;
    j->end[tid] = e;
    atomic_fetch_add(&j->runs[tid], 1);
    if (tid != 0 && pthread_equal(pthread_self(), j->caller)) atomic_fetch_add(&j->by_caller, 1);
    for (int64_t i = b; i < e; i++) atomic_fetch_add(&j->hits[i], 1);
}

static void test_claims(ts_threadpool *pool) {
    int threads = ts_threadpool_size(pool), bad = 0, stolen = 0;
    static claim_job j;
    for (int it = 0; it < 100; it++) {
        nanosleep(&(struct timespec){0, 200000}, NULL); /* past the workers' spin: they sleep */
        memset(&j, 0, sizeof j);
        j.caller = pthread_self();
        int64_t n = 97 + it;
        ts_parallel_for(pool, n, 1, claim_chunk, &j);
        for (int64_t i = 0; i < n; i++) bad += j.hits[i] != 1;
        int64_t chunk = (n + threads - 1) / threads;
        for (int t = 0; t < threads; t++)
            bad += j.runs[t] != 1 || j.begin[t] != t * chunk || j.end[t] != (t + 1 < threads ? (t + 1) * chunk : n);
        stolen += j.by_caller;
    }
    CHECK(bad == 0, "%d threads, jobs on sleeping workers: %d indices or chunks not run exactly once, as cut", threads,
          bad);
    printf("  %d threads: 100 jobs on sleeping workers, %d of their chunks run by the caller\n", threads, stolen);
}

int main(void) {
    for (int threads = 1; threads <= 3; threads++) {
        ts_threadpool *pool = NULL;
        CHECK_OK(ts_threadpool_new(threads, &pool), NULL);
        if (!pool) continue;
        test_partition(pool);
        test_nested(pool);
        test_claims(pool);
        ts_threadpool_free(pool);
    }
    return check_summary("test_threadpool");
}
