/* job.c - one generation request between an HTTP thread and the engine's worker thread.
 *
 * The engine side only appends token ids and finally sets engine_done, under the job's mutex,
 * and never blocks: the sink callbacks are what serve.h promises the engine. Everything else -
 * bytes from tokens, stop strings, the client hanging up, the deadline, shutdown - is worked
 * out on the HTTP thread, which waits on the job's condition variable in short slices so that
 * it notices those events even while the engine is silent. Tokens are never reordered or
 * changed once appended, so the HTTP side reads tokens[n_read, n_tokens) without the lock. */
#define _GNU_SOURCE /* POLLRDHUP: the peer closed its end */
#include <inttypes.h>
#include <math.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "serve/serve_internal.h"

#define WAIT_SLICE_S 0.05 /* how often a waiting HTTP thread looks at the client and the clock */
#define MULTI_WAIT_NS 2000000 /* jobs_wait's poll interval */

static void job_unref(job *j) {
    pthread_mutex_lock(&j->mu);
    int left = --j->refs;
    pthread_mutex_unlock(&j->mu);
    if (left) return;
    ts_server *srv = j->srv;
    for (size_t i = 0; i < j->n_stops; i++) free(j->stops[i]);
    free(j->tokens);
    free(j->lps);
    free(j->offsets);
    free(j->prompt_ids);
    free(j->prompt_offsets);
    free(j->prompt_lps);
    sbuf_free(&j->prompt_text);
    sbuf_free(&j->text);
    ts_token_bytes_free(&j->piece);
    pthread_mutex_destroy(&j->mu);
    pthread_cond_destroy(&j->cv);
    free(j);
    server_job_freed(srv);
}

static void sink_token(void *user, int32_t id, const ts_token_logprobs *lp) {
    job *j = user;
    pthread_mutex_lock(&j->mu);
    if (j->n_tokens < j->max_tokens) { /* an engine over its limit is ignored */
        if (j->lps) j->lps[j->n_tokens] = lp ? *lp : (ts_token_logprobs){.logprob = NAN};
        j->tokens[j->n_tokens++] = id;
    }
    pthread_cond_signal(&j->cv);
    pthread_mutex_unlock(&j->mu);
}

static void sink_prompt_token(void *user, int64_t pos, const ts_token_logprobs *lp) {
    job *j = user;
    pthread_mutex_lock(&j->mu);
    if (j->prompt_lps && pos > 0 && pos < j->n_prompt) j->prompt_lps[pos] = *lp;
    pthread_mutex_unlock(&j->mu);
}

static void sink_done(void *user, ts_gen_end end) {
    job *j = user;
    pthread_mutex_lock(&j->mu);
    j->engine_done = true;
    j->end = end;
    pthread_cond_signal(&j->cv);
    pthread_mutex_unlock(&j->mu);
    job_unref(j);
}

job *job_new(ts_server *srv, const gen_params *p, int index, int32_t max_tokens, int32_t n_prompt, int conn_fd) {
    job *j = calloc(1, sizeof *j);
    if (!j) return NULL;
    j->tokens = malloc((size_t)max_tokens * sizeof *j->tokens);
    bool ok = j->tokens != NULL;
    if (p->logprobs) {
        j->lps = malloc((size_t)max_tokens * sizeof *j->lps);
        j->offsets = malloc((size_t)max_tokens * sizeof *j->offsets);
        ok = ok && j->lps && j->offsets;
    }
    for (size_t i = 0; ok && i < p->n_stops; i++) {
        ok = (j->stops[i] = strdup(p->stops[i])) != NULL;
        j->n_stops = i + 1;
        size_t len = strlen(p->stops[i]);
        if (len > j->longest_stop) j->longest_stop = len;
    }
    if (!ok || pthread_mutex_init(&j->mu, NULL) != 0) {
        for (size_t i = 0; i < j->n_stops; i++) free(j->stops[i]);
        free(j->tokens);
        free(j->lps);
        free(j->offsets);
        free(j);
        return NULL;
    }
    pthread_cond_init(&j->cv, NULL);
    j->srv = srv;
    j->chat = p->chat;
    j->stream = p->stream;
    j->include_usage = p->include_usage;
    j->echo = p->echo;
    j->index = index;
    j->top_logprobs = p->top_logprobs;
    j->max_tokens = max_tokens;
    j->n_prompt = n_prompt;
    j->conn_fd = conn_fd;
    j->created = (int64_t)time(NULL);
    j->refs = 2;
    j->state = JOB_RUNNING;
    if (srv->opt.request_timeout_s > 0) j->deadline = ts_time_seconds() + srv->opt.request_timeout_s;
    pthread_mutex_lock(&srv->mu);
    j->id = srv->next_id++;
    uint64_t r = ts_rng_next(&srv->id_rng);
    srv->live_jobs++;
    pthread_mutex_unlock(&srv->mu);
    snprintf(j->id_str, sizeof j->id_str, "%s-%016" PRIx64 "%" PRIu64, p->chat ? "chatcmpl" : "cmpl", r, j->id);
    return j;
}

/* With echo: the prompt's ids, bytes and token offsets (and room for its logprobs). */
static bool keep_prompt(job *j, const int32_t *prompt, api_error *e) {
    size_t n = (size_t)j->n_prompt;
    j->prompt_ids = malloc(n * sizeof *j->prompt_ids);
    j->prompt_offsets = malloc(n * sizeof *j->prompt_offsets);
    if (j->lps) j->prompt_lps = malloc(n * sizeof *j->prompt_lps);
    if (!j->prompt_ids || !j->prompt_offsets || (j->lps && !j->prompt_lps)) {
        api_error_set(e, 500, "server_error", NULL, NULL, "out of memory");
        return false;
    }
    memcpy(j->prompt_ids, prompt, n * sizeof *prompt);
    const ts_engine *en = &j->srv->engine;
    for (size_t i = 0; i < n; i++) {
        if (j->prompt_lps) j->prompt_lps[i] = (ts_token_logprobs){.logprob = NAN};
        j->prompt_offsets[i] = j->prompt_text.n;
        ts_token_bytes_clear(&j->piece);
        if (en->detokenize(en->self, prompt[i], &j->piece) != TS_OK || !sbuf_append(&j->prompt_text, j->piece.data, j->piece.n)) {
            api_error_set(e, 500, "server_error", NULL, NULL, "could not detokenize the prompt to echo it");
            return false;
        }
    }
    return true;
}

bool job_submit(job *j, const int32_t *prompt, const gen_params *p, api_error *e) {
    if (j->echo && !keep_prompt(j, prompt, e)) {
        j->cancel_sent = true; /* nothing to cancel */
        job_unref(j);          /* the engine's reference: done will never come */
        return false;
    }
    ts_gen_request req = {.id = j->id,
                          .prompt = prompt,
                          .n_prompt = (size_t)j->n_prompt,
                          .max_tokens = j->max_tokens,
                          .sampling = p->sampling,
                          .n_stop_ids = p->n_stop_ids,
                          .logprobs = j->lps != NULL,
                          .top_logprobs = j->top_logprobs,
                          .prompt_logprobs = j->prompt_lps != NULL,
                          .sink = {.user = j, .token = sink_token, .done = sink_done, .prompt_token = sink_prompt_token}};
    memcpy(req.stop_ids, p->stop_ids, sizeof req.stop_ids);
    const ts_engine *en = &j->srv->engine;
    ts_status st = en->submit(en->self, &req);
    if (st == TS_OK) {
        metrics_add_tokens(&j->srv->metrics, j->index == 0 ? j->n_prompt : 0, 0); /* a prompt counts once */
        return true;
    }
    if (st == TS_ERR_STATE)
        api_error_set(e, 503, "server_error", NULL, "overloaded", "the engine is full; retry later");
    else if (st == TS_ERR_UNSUPPORTED)
        api_error_set(e, 400, "invalid_request_error", "echo", NULL,
                      "this server's engine cannot report the prompt's logprobs (echo with logprobs; e.g. under --speculative)");
    else if (st == TS_ERR_RANGE)
        api_error_set(e, 400, "invalid_request_error", NULL, "context_length_exceeded",
                      "the request does not fit the model (prompt of %d tokens + max_tokens %d, or an unknown token id)",
                      (int)j->n_prompt, (int)j->max_tokens);
    else
        api_error_set(e, 500, "server_error", NULL, NULL, "the engine refused the request: %s", ts_status_name(st));
    j->cancel_sent = true; /* nothing to cancel */
    job_unref(j);          /* the engine's reference: done will never come */
    return false;
}

static void send_cancel(job *j) {
    if (j->cancel_sent) return;
    j->cancel_sent = true;
    j->srv->engine.cancel(j->srv->engine.self, j->id);
}

void job_fail(job *j, int status, const char *code, const char *message) {
    if (j->state != JOB_RUNNING) return;
    api_error_set(&j->error, status, status >= 500 ? "server_error" : "invalid_request_error", NULL, code, "%s", message);
    j->state = JOB_FAILED;
    send_cancel(j);
}

/* Whether the client has closed its end (a hang-up shows before any write fails). */
static bool client_gone(int fd) {
    if (fd < 0) return false;
    struct pollfd p = {.fd = fd, .events = POLLRDHUP};
    return poll(&p, 1, 0) > 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR));
}

struct timespec realtime_in(double s) {
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    long long ns = t.tv_nsec + (long long)(s * 1e9);
    t.tv_sec += (time_t)(ns / 1000000000);
    t.tv_nsec = (long)(ns % 1000000000);
    return t;
}

/* Fails the job when its client hung up, its time is up or the server is shutting down. */
static void check_interruptions(job *j) {
    if (client_gone(j->conn_fd))
        job_fail(j, 499, "client_closed_request", "the client closed the connection");
    else if (j->deadline > 0 && ts_time_seconds() >= j->deadline)
        job_fail(j, 504, "timeout", "the request ran past the server's time limit and was cancelled");
    else if (server_cancelling(j->srv))
        job_fail(j, 503, "shutting_down", "the server is shutting down");
}

void job_wait(job *j, double max_wait_s) {
    double until = ts_time_seconds() + max_wait_s;
    while (j->state == JOB_RUNNING) {
        pthread_mutex_lock(&j->mu);
        bool ready = j->n_tokens > j->n_read || j->engine_done;
        if (!ready) {
            double left = until - ts_time_seconds();
            struct timespec t = realtime_in(left < WAIT_SLICE_S ? (left > 0 ? left : 0) : WAIT_SLICE_S);
            pthread_cond_timedwait(&j->cv, &j->mu, &t);
            ready = j->n_tokens > j->n_read || j->engine_done;
        }
        pthread_mutex_unlock(&j->mu);
        check_interruptions(j);
        if (ready || ts_time_seconds() >= until) return;
    }
}

/* Several choices: each job has its own condition variable, so this polls them in short
 * sleeps (a few milliseconds of extra latency, for n > 1 only). */
void jobs_wait(job *const *jobs, int n, double max_wait_s) {
    if (n == 1) {
        job_wait(jobs[0], max_wait_s);
        return;
    }
    double until = ts_time_seconds() + max_wait_s;
    for (;;) {
        bool news = false, running = false;
        for (int i = 0; i < n; i++) {
            job *j = jobs[i];
            if (j->state != JOB_RUNNING) continue;
            running = true;
            pthread_mutex_lock(&j->mu);
            news |= j->n_tokens > j->n_read || j->engine_done;
            pthread_mutex_unlock(&j->mu);
            check_interruptions(j);
            news |= j->state != JOB_RUNNING;
        }
        if (news || !running || ts_time_seconds() >= until) return;
        nanosleep(&(struct timespec){0, MULTI_WAIT_NS}, NULL);
    }
}

/* After text grew from `before` bytes: cut it at the earliest stop string that now occurs. */
static void check_stops(job *j, size_t before) {
    if (!j->n_stops) return;
    size_t from = before + 1 > j->longest_stop ? before + 1 - j->longest_stop : 0, cut = SIZE_MAX;
    for (size_t i = 0; i < j->n_stops; i++) {
        size_t len = strlen(j->stops[i]);
        for (size_t at = from; at + len <= j->text.n && at < cut; at++)
            if (memcmp(j->text.data + at, j->stops[i], len) == 0) {
                cut = at;
                break;
            }
    }
    if (cut == SIZE_MAX) return;
    while (j->offsets && j->n_kept > 0 && j->offsets[j->n_kept - 1] >= cut) j->n_kept--; /* wholly cut off */
    j->text.n = cut;
    j->text.data[cut] = 0;
    j->finish_reason = "stop";
    j->state = JOB_FINISHED;
    send_cancel(j);
}

void job_advance(job *j) {
    if (j->state != JOB_RUNNING) return;
    pthread_mutex_lock(&j->mu);
    int32_t avail = j->n_tokens;
    bool done = j->engine_done;
    ts_gen_end end = j->end;
    pthread_mutex_unlock(&j->mu);
    const ts_engine *en = &j->srv->engine;
    int32_t first = j->n_read;
    while (j->n_read < avail && j->state == JOB_RUNNING) {
        ts_token_bytes_clear(&j->piece);
        if (en->detokenize(en->self, j->tokens[j->n_read], &j->piece) != TS_OK) {
            job_fail(j, 500, NULL, "the engine could not detokenize a generated token");
            break;
        }
        size_t before = j->text.n;
        if (j->offsets) j->offsets[j->n_read] = before;
        j->n_kept = ++j->n_read;
        if (!sbuf_append(&j->text, j->piece.data, j->piece.n)) {
            job_fail(j, 500, NULL, "out of memory");
            break;
        }
        check_stops(j, before);
    }
    metrics_add_tokens(&j->srv->metrics, 0, j->n_read - first);
    if (j->state != JOB_RUNNING || !done || j->n_read < avail) return;
    if (end == TS_GEN_STOP_TOKEN || end == TS_GEN_LENGTH) {
        j->finish_reason = end == TS_GEN_STOP_TOKEN ? "stop" : "length";
        j->state = JOB_FINISHED;
    } else {
        job_fail(j, end == TS_GEN_CANCELLED ? 503 : 500, NULL,
                 end == TS_GEN_CANCELLED ? "the engine cancelled the request" : "the engine failed while generating");
    }
}

size_t job_sendable(const job *j) {
    size_t n = j->text.n;
    if (j->state == JOB_FINISHED) return n;
    size_t hold = 0; /* the longest tail that could still grow into a stop string */
    for (size_t i = 0; i < j->n_stops; i++) {
        size_t len = strlen(j->stops[i]);
        for (size_t k = len - 1 < n ? len - 1 : n; k > hold; k--)
            if (memcmp(j->text.data + n - k, j->stops[i], k) == 0) {
                hold = k;
                break;
            }
    }
    n = utf8_complete_prefix(j->text.data, n - hold);
    return n > j->n_sent ? n : j->n_sent;
}

void job_release_http(job *j) {
    pthread_mutex_lock(&j->mu);
    bool engine_busy = !j->engine_done;
    pthread_mutex_unlock(&j->mu);
    if (engine_busy) send_cancel(j);
    job_unref(j);
}
