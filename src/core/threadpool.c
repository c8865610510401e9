/* threadpool.c - fixed worker threads and a statically partitioned parallel-for.
 *
 * The caller's thread works as thread 0; workers 1..n-1 wait between jobs, first spinning for
 * about SPIN_NS, then asleep on a condition variable; the caller waits for them the same way.
 * A graph runs one short op after another (a decode step: dozens of sub-millisecond kernels),
 * and waking a sleeping thread costs tens of microseconds on a VM, more than many of those
 * kernels take; a bounded spin keeps a busy pool's workers awake between ops without burning a
 * core when it goes quiet. [0, n) is cut into one contiguous chunk per thread, identical for
 * identical (n, threads), so every reduction a kernel does per chunk happens in the same order
 * every run. Chunk k is meant for thread k, but whoever claims it first runs it (as tid k):
 * the caller, done with its own chunk and kept waiting past LATE_NS, claims the chunks whose
 * workers have not started - asleep, or descheduled on a machine with more runnable threads
 * than cores (a server's HTTP threads, other processes) - and any thread kept waiting that
 * long yields its core now and then. Waiting for descheduled workers had made a 2-thread
 * decode step 3-8 times slower beside one busy process. A kernel whose chunks wait on each
 * other (a GEMM team's barriers) is unaffected: a chunk that waits on another finishes only
 * once that one has been claimed. A parallel-for issued from inside a job runs serially on
 * the calling thread. */
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <time.h>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "tessera/core.h"

typedef struct {
    _Alignas(64) atomic_bool v; /* a line each: the threads claiming other chunks do not share it */
} claim_flag;

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
    claim_flag *taken;           /* [n_threads]: chunk k of the current job has a runner */
    _Atomic uint64_t generation; /* bumped per job so workers know a new one arrived */
    _Atomic int pending;         /* chunks of the current job not finished */
    atomic_bool stop;
};

#define SPIN_NS 50000 /* how long a waiting thread polls before it sleeps */
#define LATE_NS 5000 /* how long it polls before it also yields (the caller: first claims what is left) */

static int64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

static void cpu_relax(void) {
#if defined(__x86_64__)
    _mm_pause();
#elif defined(__aarch64__)
    __asm__ volatile("yield");
#endif
}

/* Polls until done(p, arg) holds or SPIN_NS pass; whether it held. Past LATE_NS it calls
 * late(p) once (when given) and from then on also yields the core now and then: what it waits
 * for may be a thread queued behind it on this core (more runnable threads than cores). */
static bool spin_until(ts_threadpool *p, bool (*done)(const ts_threadpool *, uint64_t), uint64_t arg,
                       void (*late)(ts_threadpool *)) {
    int64_t t0 = now_ns();
    bool is_late = false;
    for (int i = 1;; i++) {
        if (done(p, arg)) return true;
        if (i % 64 == 0) {
            int64_t waited = now_ns() - t0;
            if (waited > SPIN_NS) return false;
            if (waited > LATE_NS) {
                if (late && !is_late) late(p);
                is_late = true;
                sched_yield();
            }
        }
        cpu_relax();
    }
}

static bool new_job_or_stop(const ts_threadpool *p, uint64_t seen) {
    return atomic_load_explicit(&p->generation, memory_order_acquire) != seen || atomic_load(&p->stop);
}

static bool all_done(const ts_threadpool *p, uint64_t unused) {
    (void)unused;
    return atomic_load_explicit(&p->pending, memory_order_acquire) == 0;
}

static _Thread_local bool in_job;

/* Runs chunk k unless someone else has claimed it (or the job has none: its flag stays set);
 * whether this thread ran it. Only a claim reads the job's fields - a worker may look at a
 * job that has already ended - and it reads them after they were written (the caller clears
 * the flags after them). */
static bool run_chunk(ts_threadpool *p, int k) {
    if (atomic_exchange_explicit(&p->taken[k].v, true, memory_order_acq_rel)) return false;
    int64_t b = (int64_t)k * p->chunk, e = b + p->chunk;
    if (e > p->n) e = p->n;
    if (b < e) p->fn(p->ctx, b, e, k);
    return true;
}

/* The caller, kept waiting: runs the chunks no worker has claimed yet (see the file comment). */
static void run_unclaimed(ts_threadpool *p) {
    int ran = 0;
    in_job = true;
    for (int k = 1; k < p->n_chunks; k++) ran += run_chunk(p, k);
    in_job = false;
    if (ran) atomic_fetch_sub_explicit(&p->pending, ran, memory_order_acq_rel);
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
    for (;;) {
        if (!spin_until(p, new_job_or_stop, seen, NULL)) {
            pthread_mutex_lock(&p->mu); /* the dispatcher bumps generation under it: no lost wake-up */
            while (!new_job_or_stop(p, seen)) pthread_cond_wait(&p->wake, &p->mu);
            pthread_mutex_unlock(&p->mu);
        }
        if (atomic_load(&p->stop)) break;
        seen = atomic_load_explicit(&p->generation, memory_order_acquire);
        if (run_chunk(p, tid) && atomic_fetch_sub_explicit(&p->pending, 1, memory_order_acq_rel) == 1) {
            pthread_mutex_lock(&p->mu);
            pthread_cond_signal(&p->done);
            pthread_mutex_unlock(&p->mu);
        }
    }
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
    p->taken = aligned_alloc(_Alignof(claim_flag), (size_t)n_threads * sizeof *p->taken);
    if (!p->threads || !p->taken) {
        ts_threadpool_free(p);
        return TS_ERR_OOM;
    }
    for (int k = 0; k < n_threads; k++) atomic_init(&p->taken[k].v, true); /* no job yet */
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
    atomic_store(&p->stop, true);
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->mu);
    for (int i = 1; i < p->n_threads; i++)
        if (p->threads) pthread_join(p->threads[i], NULL);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->wake);
    pthread_cond_destroy(&p->done);
    free(p->threads);
    free(p->taken);
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
    atomic_store_explicit(&p->pending, threads, memory_order_relaxed);
    for (int k = 0; k < p->n_threads; k++) atomic_store_explicit(&p->taken[k].v, k >= threads, memory_order_release);
    atomic_fetch_add_explicit(&p->generation, 1, memory_order_release);
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->mu);

    in_job = true;
    run_chunk(p, 0);
    in_job = false;
    atomic_fetch_sub_explicit(&p->pending, 1, memory_order_acq_rel);

    if (!spin_until(p, all_done, 0, run_unclaimed)) {
        pthread_mutex_lock(&p->mu); /* the last worker signals under it: no lost wake-up */
        while (!all_done(p, 0)) pthread_cond_wait(&p->done, &p->mu);
        pthread_mutex_unlock(&p->mu);
    }
}
