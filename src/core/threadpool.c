/* threadpool.c - fixed worker threads and a statically scheduled parallel-for.
 *
 * The caller's thread works as thread 0; workers 1..n-1 sleep on a condition variable between
 * jobs. [0, n) is cut into one contiguous chunk per thread, identical for identical (n, threads),
 * so every reduction a kernel does per chunk happens in the same order every run. A
 * parallel-for issued from inside a job runs serially on the calling thread. */
#include <pthread.h>
#include <stdlib.h>

#include "tessera/core.h"

struct ts_threadpool {
    int n_threads;
    pthread_t *threads;
    pthread_mutex_t mu;
    pthread_cond_t wake, done;
    /* current job */
    ts_range_fn fn;
    void *ctx;
    int64_t n, chunk;
    int n_chunks;
    uint64_t generation;  /* bumped per job so workers know a new one arrived */
    int pending;          /* workers still running the current job */
    bool stop;
};

static _Thread_local bool in_job;

static void run_chunk(ts_threadpool *p, int tid) {
    if (tid >= p->n_chunks) return;
    int64_t b = (int64_t)tid * p->chunk, e = b + p->chunk;
    if (e > p->n) e = p->n;
    if (b < e) p->fn(p->ctx, b, e, tid);
}

typedef struct {
    ts_threadpool *pool;
    int tid;
} worker_arg;

static void *worker_main(void *arg) {
    worker_arg *wa = arg;
    ts_threadpool *p = wa->pool;
    int tid = wa->tid;
    free(wa);
    in_job = true;
    uint64_t seen = 0;
    pthread_mutex_lock(&p->mu);
    for (;;) {
        while (!p->stop && p->generation == seen) pthread_cond_wait(&p->wake, &p->mu);
        if (p->stop) break;
        seen = p->generation;
        pthread_mutex_unlock(&p->mu);
        run_chunk(p, tid);
        pthread_mutex_lock(&p->mu);
        if (--p->pending == 0) pthread_cond_signal(&p->done);
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

ts_status ts_threadpool_new(int n_threads, ts_threadpool **out) {
    if (!out) return TS_ERR_INVALID_ARG;
    *out = NULL;
    if (n_threads <= 0) n_threads = ts_cpu_count();
    if (n_threads > 1024) return TS_ERR_INVALID_ARG;
    ts_threadpool *p = calloc(1, sizeof *p);
    if (!p) return TS_ERR_OOM;
    p->n_threads = n_threads;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->wake, NULL);
    pthread_cond_init(&p->done, NULL);
    p->threads = calloc((size_t)n_threads, sizeof(pthread_t));
    if (!p->threads) {
        ts_threadpool_free(p);
        return TS_ERR_OOM;
    }
    for (int i = 1; i < n_threads; i++) {
        worker_arg *wa = malloc(sizeof *wa);
        if (!wa) {
            p->n_threads = i;
            ts_threadpool_free(p);
            return TS_ERR_OOM;
        }
        wa->pool = p;
        wa->tid = i;
        if (pthread_create(&p->threads[i], NULL, worker_main, wa) != 0) {
            free(wa);
            p->n_threads = i;
            ts_threadpool_free(p);
            return TS_ERR_OOM;
        }
    }
    *out = p;
    return TS_OK;
}

void ts_threadpool_free(ts_threadpool *p) {
    if (!p) return;
    pthread_mutex_lock(&p->mu);
    p->stop = true;
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->mu);
    for (int i = 1; i < p->n_threads; i++)
        if (p->threads) pthread_join(p->threads[i], NULL);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->wake);
    pthread_cond_destroy(&p->done);
    free(p->threads);
    free(p);
}

int ts_threadpool_size(const ts_threadpool *p) { return p ? p->n_threads : 1; }

void ts_parallel_for(ts_threadpool *p, int64_t n, int64_t min_chunk, ts_range_fn fn, void *ctx) {
    if (n <= 0) return;
    if (min_chunk < 1) min_chunk = 1;
    int threads = p ? p->n_threads : 1;
    int64_t max_useful = (n + min_chunk - 1) / min_chunk;
    if (max_useful < threads) threads = (int)max_useful;
    if (!p || threads <= 1 || in_job) {
        fn(ctx, 0, n, 0);
        return;
    }
    pthread_mutex_lock(&p->mu);
    p->fn = fn;
    p->ctx = ctx;
    p->n = n;
    p->chunk = (n + threads - 1) / threads;
    p->n_chunks = threads;
    p->pending = p->n_threads - 1;
    p->generation++;
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->mu);

    in_job = true;
    run_chunk(p, 0);
    in_job = false;

    pthread_mutex_lock(&p->mu);
    while (p->pending > 0) pthread_cond_wait(&p->done, &p->mu);
    pthread_mutex_unlock(&p->mu);
}
