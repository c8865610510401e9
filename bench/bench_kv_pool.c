/* bench_kv_pool.c - KV-cache memory per concurrent request of the model engine (serve.h) on a
 * checkpoint, the mix a chat server meets: --streams requests at once, --prompt-token prompts
 * whose first --shared tokens are the same (a system prompt), up to --new greedy tokens each (the
 * end-of-sequence token may stop one early), in an engine of --streams slots of --max-len positions. Three runs:
 *   reserved    what a slot costs when each reserves max_len: the pool / slots;
 *   paged       the full pool, prefix cache off: each request holds its own blocks;
 *   shared      the full pool, prefix cache on: the system prompt's blocks are shared;
 *   small pool  (--pool P) the shared run in a pool of P positions: requests wait or are
 *               preempted when it is full.
 * For each: the peak of the pool's blocks in use while the requests run (engine stats, polled
 * every 0.2 ms) / streams = memory per concurrent request, preemptions, and generated tokens/s
 * (wall; noisy on a shared machine).
 *
 *   tessera_bench_kv_pool --model DIR [--threads N] [--streams N] [--prompt N] [--shared N]
 *                         [--new N] [--max-len N] [--pool P]
 *
 * DIR: a dense checkpoint (`tessera init --model dense-small --out DIR`); V4 keeps its memory
 * per slot, so its runs all equal `reserved`. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "tessera/backend.h"
#include "tessera/serve.h"

typedef struct {
    const char *model;
    int threads, streams, prompt, shared, new_tokens, pool;
    int64_t max_len;
} bench_opts;

typedef struct {
    pthread_mutex_t mu;
    int done;
    int64_t tokens;
} done_count;

static void on_token(void *user, int32_t id, const ts_token_logprobs *lp) {
    done_count *c = user;
    (void)id, (void)lp;
    pthread_mutex_lock(&c->mu);
    c->tokens++;
    pthread_mutex_unlock(&c->mu);
}

static void on_done(void *user, ts_gen_end end) {
    done_count *c = user;
    (void)end;
    pthread_mutex_lock(&c->mu);
    c->done++;
    pthread_mutex_unlock(&c->mu);
}

static int finished(done_count *c) {
    pthread_mutex_lock(&c->mu);
    int n = c->done;
    pthread_mutex_unlock(&c->mu);
    return n;
}

/* Token i of request r's prompt: the shared part alike, the rest its own. */
static int32_t token(const bench_opts *o, int r, int i) {
    return (int32_t)(3 + (i < o->shared ? i * 37 : i * 11 + r * 53 + 7) % 250);
}

typedef struct {
    int64_t peak_blocks, blocks, kv_bytes, preemptions, generated_tokens, reused;
    double seconds;
} run_result;

static ts_status run(const bench_opts *o, const ts_model_weights *w, ts_backend *be, bool prefix_cache, int64_t pool,
                     run_result *out, char *err, size_t err_size) {
    ts_model_engine_options eo = ts_model_engine_defaults();
    eo.slots = o->streams;
    eo.max_len = o->max_len;
    eo.max_queue = o->streams;
    eo.prefix_cache = prefix_cache;
    eo.pool_positions = pool;
    ts_model_engine *e = NULL;
    ts_status s = ts_model_engine_new(w, NULL, be, &eo, &e, err, err_size);
    if (s != TS_OK) return s;
    ts_engine eng;
    ts_model_engine_table(e, &eng);
    done_count dc = {.done = 0};
    pthread_mutex_init(&dc.mu, NULL);
    int32_t *prompts = malloc((size_t)(o->streams * o->prompt) * sizeof *prompts);
    for (int r = 0; r < o->streams; r++)
        for (int i = 0; i < o->prompt; i++) prompts[r * o->prompt + i] = token(o, r, i);
    ts_engine_stats st;
    *out = (run_result){0};
    double t0 = ts_time_seconds();
    for (int r = 0; s == TS_OK && r < o->streams; r++) {
        ts_gen_request req = {.id = (uint64_t)r + 1, .prompt = prompts + r * o->prompt, .n_prompt = (size_t)o->prompt,
                              .max_tokens = o->new_tokens, .sampling = ts_sampling_defaults(),
                              .sink = {&dc, on_token, on_done}};
        req.sampling.temperature = 0;
        s = eng.submit(eng.self, &req);
    }
    while (s == TS_OK && finished(&dc) < o->streams) {
        eng.stats(eng.self, &st);
        if (st.kv_blocks - st.kv_blocks_free > out->peak_blocks) out->peak_blocks = st.kv_blocks - st.kv_blocks_free;
        nanosleep(&(struct timespec){0, 200000}, NULL);
    }
    out->seconds = ts_time_seconds() - t0;
    eng.stats(eng.self, &st);
    out->blocks = st.kv_blocks;
    out->kv_bytes = st.kv_bytes;
    out->preemptions = st.preemptions;
    out->reused = st.prefix_reused_tokens;
    out->generated_tokens = dc.tokens;
    ts_model_engine_free(e);
    pthread_mutex_destroy(&dc.mu);
    free(prompts);
    return s;
}

static void print_run(const char *name, const bench_opts *o, const run_result *r) {
    double block_mib = (double)r->kv_bytes / (double)r->blocks / (1 << 20);
    printf("  %-10s pool %4lld blocks, peak in use %4lld: %7.3f MiB per request; %3lld preempted, %5lld prompt "
           "tokens reused, %7.1f tok/s\n",
           name, (long long)r->blocks, (long long)r->peak_blocks, block_mib * (double)r->peak_blocks / o->streams,
           (long long)r->preemptions, (long long)r->reused, (double)r->generated_tokens / r->seconds);
}

static int parse(int argc, char **argv, bench_opts *o) {
    *o = (bench_opts){NULL, 1, 16, 64, 48, 64, 0, 256};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int *field = !v ? NULL
                     : !strcmp(a, "--threads") ? &o->threads
                     : !strcmp(a, "--streams") ? &o->streams
                     : !strcmp(a, "--prompt")  ? &o->prompt
                     : !strcmp(a, "--shared")  ? &o->shared
                     : !strcmp(a, "--new")     ? &o->new_tokens
                     : !strcmp(a, "--pool")    ? &o->pool
                                               : NULL;
        if (field) *field = atoi(argv[++i]);
        else if (v && !strcmp(a, "--model")) o->model = argv[++i];
        else if (v && !strcmp(a, "--max-len")) o->max_len = atoll(argv[++i]);
        else {
            fprintf(stderr, "bench_kv_pool: unknown or incomplete option '%s'\n", a);
            return 2;
        }
    }
    if (!o->model || o->threads < 1 || o->streams < 1 || o->prompt < 1 || o->shared < 0 || o->shared > o->prompt ||
        o->new_tokens < 1 || o->pool < 0 || o->prompt + o->new_tokens > o->max_len) {
        fprintf(stderr, "usage: tessera_bench_kv_pool --model DIR [--threads N] [--streams N] [--prompt N] [--shared N] "
                        "[--new N] [--max-len N] [--pool P] (shared <= prompt, prompt + new <= max-len)\n");
        return 2;
    }
    return 0;
}

int main(int argc, char **argv) {
    bench_opts o;
    int rc = parse(argc, argv, &o);
    if (rc) return rc;
    char err[512] = "";
    ts_model_weights *w = NULL;
    ts_backend *be = NULL;
    ts_status s = ts_model_load(o.model, TS_F32, &w, err, sizeof err);
    if (s == TS_OK) s = ts_backend_cpu_new(o.threads, &be);
    run_result paged, shared, small;
    if (s == TS_OK) s = run(&o, w, be, false, 0, &paged, err, sizeof err);
    if (s == TS_OK) s = run(&o, w, be, true, 0, &shared, err, sizeof err);
    if (s == TS_OK && o.pool > 0) s = run(&o, w, be, true, o.pool, &small, err, sizeof err);
    if (s != TS_OK) {
        fprintf(stderr, "bench_kv_pool: %s %s\n", ts_status_name(s), err);
        return 1;
    }
    printf("%d streams, prompts of %d tokens (the first %d shared), %d new tokens, max_len %lld, threads %d\n",
           o.streams, o.prompt, o.shared, o.new_tokens, (long long)o.max_len, o.threads);
    printf("  %-10s %.3f MiB per request (max_len positions whatever it uses)\n", "reserved",
           (double)paged.kv_bytes / o.streams / (1 << 20));
    print_run("paged", &o, &paged);
    print_run("shared", &o, &shared);
    if (o.pool > 0) print_run("small pool", &o, &small);
    ts_backend_free(be);
    ts_model_weights_free(w);
    return 0;
}
