/* cli_bench_serve.c - `tessera bench serve`: load on an OpenAI-compatible server, the way users
 * see it. Against a running server (--url) or one it starts itself (--model DIR: `tessera serve
 * --port 0` as a child process, stopped with SIGTERM at the end), for each concurrency in
 * --streams it runs that many client threads, each sending streaming /v1/completions requests
 * one after another until --requests have been made, and reports per concurrency:
 *   time to first token (request sent -> first text event), median and p99;
 *   inter-token latency (the gaps between text events), median and p99;
 *   aggregate generated tokens/s (the usage chunks' completion_tokens over the wall time);
 *   request errors (no connection, a status other than 200, an error event, no [DONE]).
 * Prompts are --prompt-tokens token ids, alike but for the one at position --shared-prefix
 * (default 0), which differs per request: by default no two share a cached prefix; with N > 0
 * they share N tokens, as requests after one system prompt do (with --streams 1, the prefix
 * cache's effect on time to first token). Generation is greedy and may stop early at the
 * end-of-sequence token. The HTTP client is serve's (http_client.c). */
#include <jansson.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cli/cli.h"
#include "cli/cli_bench.h"
#include "serve/serve_internal.h"

#define CMD "bench serve"
#define MAX_LEVELS 16

typedef struct {
    char host[256];
    int port;
    char auth[512]; /* the Authorization header line, or "" */
    int requests, max_tokens, prompt_tokens, shared_prefix;
    double timeout_s;
} bench_target;

/* One concurrency level: the shared request counter and every measurement, sized up front. */
typedef struct {
    const bench_target *tg;
    int streams, n_requests;
    pthread_mutex_t mu;
    int next;          /* next request index to send */
    double *ttft;      /* [n_requests] seconds, of the requests that succeeded */
    int n_ttft;
    double *gaps;      /* [n_requests * max_tokens] inter-event gaps */
    int n_gaps;
    int64_t generated; /* completion tokens, from the usage chunks */
    int errors;
    char first_error[300];
} level;

/* What one streaming request has seen (the event callback's state). */
typedef struct {
    double first, last; /* arrival of the first and the latest text event; first 0: none yet */
    bool done, failed;
    int64_t completion_tokens;
    double *gaps;        /* [max_gaps] */
    int n_gaps, max_gaps;
} request_state;

/* ---------------------------------------------------------------- one request */

static void on_event(void *user, const char *data, size_t n, double t) {
    request_state *rs = user;
    if (!strcmp(data, "[DONE]")) {
        rs->done = true;
        return;
    }
    json_t *ev = json_loadb(data, n, JSON_ALLOW_NUL, NULL); /* a model may generate a NUL byte */
    json_t *text = json_object_get(json_array_get(json_object_get(ev, "choices"), 0), "text");
    json_t *usage = json_object_get(ev, "usage");
    if (!ev || json_object_get(ev, "error")) rs->failed = true;
    if (json_is_object(usage)) rs->completion_tokens = json_integer_value(json_object_get(usage, "completion_tokens"));
    if (json_is_string(text) && json_string_length(text) > 0) {
        if (rs->first == 0) rs->first = t;
        else if (rs->n_gaps < rs->max_gaps) rs->gaps[rs->n_gaps++] = t - rs->last;
        rs->last = t;
    }
    json_decref(ev);
}

/* The request body: prompt_tokens ids, the one at shared_prefix depending on the request's index. */
static bool request_body(const bench_target *tg, int index, sbuf *body) {
    body->n = 0;
    bool ok = sbuf_append(body, "{\"prompt\": [", 12);
    for (int i = 0; ok && i < tg->prompt_tokens; i++)
        ok = sbuf_printf(body, "%s%d", i ? ", " : "", 10 + (i == tg->shared_prefix ? index : i * 37) % 200);
    return ok && sbuf_printf(body, "], \"max_tokens\": %d, \"temperature\": 0, \"stream\": true, "
                                   "\"stream_options\": {\"include_usage\": true}}", tg->max_tokens);
}

/* Sends request `index` and adds what it measured to the level. */
static void run_request(level *lv, int index, sbuf *body, double *gaps) {
    const bench_target *tg = lv->tg;
    request_state rs = {.gaps = gaps, .max_gaps = tg->max_tokens};
    http_response resp = {0};
    char err[256] = "out of memory";
    bool ok = request_body(tg, index, body);
    double sent = ts_time_seconds();
    ok = ok && http_request(tg->host, tg->port, "POST", "/v1/completions", tg->auth, body->data, body->n, tg->timeout_s,
                            on_event, &rs, &resp, err, sizeof err);
    if (ok && !(resp.status == 200 && resp.event_stream && rs.done && !rs.failed)) {
        const char *why = resp.body.data ? resp.body.data : "";
        if (strstr(why, "\"error\"")) why = strstr(why, "\"error\""); /* the error event, not the text before it */
        snprintf(err, sizeof err, "HTTP %d%s: %.200s", resp.status, rs.failed ? ", an error event" : "", why);
        ok = false;
    }
    http_response_free(&resp);
    pthread_mutex_lock(&lv->mu);
    if (!ok && lv->errors++ == 0) snprintf(lv->first_error, sizeof lv->first_error, "%s", err);
    if (ok && rs.first > 0) lv->ttft[lv->n_ttft++] = rs.first - sent;
    if (ok) {
        memcpy(lv->gaps + lv->n_gaps, rs.gaps, (size_t)rs.n_gaps * sizeof *rs.gaps);
        lv->n_gaps += rs.n_gaps;
        lv->generated += rs.completion_tokens;
    }
    pthread_mutex_unlock(&lv->mu);
}

/* A client thread: its level and its scratch for one request's gaps. */
typedef struct {
    level *lv;
    double *gaps; /* [max_tokens] */
} client;

static void *client_main(void *arg) {
    client *c = arg;
    sbuf body = {0};
    for (;;) {
        pthread_mutex_lock(&c->lv->mu);
        int index = c->lv->next < c->lv->n_requests ? c->lv->next++ : -1;
        pthread_mutex_unlock(&c->lv->mu);
        if (index < 0) break;
        run_request(c->lv, index, &body, c->gaps);
    }
    sbuf_free(&body);
    return NULL;
}

/* ---------------------------------------------------------------- one concurrency level */

typedef struct {
    int streams, requests, errors;
    int64_t generated;
    double seconds, ttft_med, ttft_p99, itl_med, itl_p99;
} level_result;

static int run_level(const bench_target *tg, int streams, level_result *out) {
    level lv = {.tg = tg, .streams = streams, .n_requests = tg->requests > streams ? tg->requests : streams};
    lv.ttft = malloc((size_t)lv.n_requests * sizeof *lv.ttft);
    lv.gaps = malloc((size_t)lv.n_requests * (size_t)tg->max_tokens * sizeof *lv.gaps);
    pthread_t *threads = malloc((size_t)streams * sizeof *threads);
    client *clients = malloc((size_t)streams * sizeof *clients);
    double *client_gaps = malloc((size_t)streams * (size_t)tg->max_tokens * sizeof *client_gaps);
    if (!lv.ttft || !lv.gaps || !threads || !clients || !client_gaps) {
        free(lv.ttft), free(lv.gaps), free(threads), free(clients), free(client_gaps);
        return cli_failure(CMD, "out of memory");
    }
    pthread_mutex_init(&lv.mu, NULL);
    double t0 = ts_time_seconds();
    int started = 0;
    for (; started < streams; started++) {
        clients[started] = (client){&lv, client_gaps + (size_t)started * (size_t)tg->max_tokens};
        if (pthread_create(&threads[started], NULL, client_main, &clients[started]) != 0) break;
    }
    for (int i = 0; i < started; i++) pthread_join(threads[i], NULL);
    double seconds = ts_time_seconds() - t0;
    *out = (level_result){streams, lv.n_requests, lv.errors, lv.generated, seconds, 0, 0, 0, 0};
    if (lv.n_ttft) {
        out->ttft_p99 = cli_bench_percentile(lv.ttft, lv.n_ttft, 0.99);
        out->ttft_med = cli_bench_median(lv.ttft, lv.n_ttft);
    }
    if (lv.n_gaps) {
        out->itl_p99 = cli_bench_percentile(lv.gaps, lv.n_gaps, 0.99);
        out->itl_med = cli_bench_median(lv.gaps, lv.n_gaps);
    }
    if (lv.errors) fprintf(stderr, "tessera bench serve: %d streams: %d errors, the first: %s\n", streams, lv.errors,
                           lv.first_error);
    pthread_mutex_destroy(&lv.mu);
    free(lv.ttft);
    free(lv.gaps);
    free(threads);
    free(clients);
    free(client_gaps);
    return started == streams ? CLI_CONTINUE : cli_failure(CMD, "could start only %d of %d client threads", started, streams);
}

static void print_result(const level_result *r, bool as_json) {
    double tps = r->seconds > 0 ? (double)r->generated / r->seconds : 0;
    if (as_json)
        printf("{\"bench\": \"serve\", \"streams\": %d, \"requests\": %d, \"errors\": %d, \"generated_tokens\": %lld, "
               "\"seconds\": %.3f, \"tokens_per_s\": %.2f, \"ttft_ms_median\": %.2f, \"ttft_ms_p99\": %.2f, "
               "\"itl_ms_median\": %.2f, \"itl_ms_p99\": %.2f}\n",
               r->streams, r->requests, r->errors, (long long)r->generated, r->seconds, tps, 1e3 * r->ttft_med,
               1e3 * r->ttft_p99, 1e3 * r->itl_med, 1e3 * r->itl_p99);
    else
        printf("%7d %8d %6d %10.1f %10.1f %10.2f %10.2f %10.1f\n", r->streams, r->requests, r->errors, 1e3 * r->ttft_med,
               1e3 * r->ttft_p99, 1e3 * r->itl_med, 1e3 * r->itl_p99, tps);
    fflush(stdout);
}

/* ---------------------------------------------------------------- the server */

static int parse_url(const char *url, bench_target *tg) {
    const char *p = strncmp(url, "http://", 7) == 0 ? url + 7 : NULL;
    const char *colon = p ? strrchr(p, ':') : NULL;
    char *end = NULL;
    long port = colon ? strtol(colon + 1, &end, 10) : 0;
    if (!p || !colon || (size_t)(colon - p) >= sizeof tg->host || colon == p || port < 1 || port > 65535 ||
        (*end && strcmp(end, "/") != 0))
        return cli_usage_error(CMD, "--url: '%s' is not http://HOST:PORT", url);
    snprintf(tg->host, sizeof tg->host, "%.*s", (int)(colon - p), p);
    tg->port = (int)port;
    return CLI_CONTINUE;
}

/* Starts `tessera serve --model DIR --port 0 ...` (this very binary) and waits for its
 * "listening on http://H:P" line. */
static int start_server(const char *model, int slots, int threads, const bench_target *tg, pid_t *pid, char *url,
                        size_t url_size) {
    int fds[2];
    if (pipe(fds) != 0) return cli_failure(CMD, "pipe failed");
    char slots_s[16], threads_s[16], context_s[16], output_s[16];
    snprintf(slots_s, sizeof slots_s, "%d", slots);
    snprintf(threads_s, sizeof threads_s, "%d", threads);
    snprintf(context_s, sizeof context_s, "%d", tg->prompt_tokens + tg->max_tokens);
    snprintf(output_s, sizeof output_s, "%d", tg->max_tokens);
    char *argv[] = {"tessera", "serve", "--model", (char *)model, "--port", "0", "--threads", threads_s,
                    "--context", context_s, "--max-output-tokens", output_s, "--max-concurrent", "4096",
                    "--max-queue", "4096", slots > 0 ? "--slots" : NULL, slots_s, NULL};
    fflush(stdout);
    *pid = fork();
    if (*pid == 0) {
        dup2(fds[1], STDOUT_FILENO);
        close(fds[0]);
        close(fds[1]);
        execv("/proc/self/exe", argv);
        _exit(127);
    }
    close(fds[1]);
    FILE *out = fdopen(fds[0], "r");
    char line[512];
    int rc = CLI_EXIT_FAILURE;
    while (out && *pid > 0 && fgets(line, sizeof line, out)) {
        char *at = strstr(line, "listening on ");
        if (!at) continue;
        at[strcspn(at, "\r\n")] = 0;
        snprintf(url, url_size, "%s", at + strlen("listening on "));
        rc = CLI_CONTINUE;
        break;
    }
    if (out) fclose(out); /* the server writes nothing more to stdout */
    else close(fds[0]);
    return rc == CLI_CONTINUE ? rc : cli_failure(CMD, "the server did not start (see its messages above)");
}

static void stop_server(pid_t pid) {
    if (pid <= 0) return;
    kill(pid, SIGTERM);
    int status;
    waitpid(pid, &status, 0);
}

/* ---------------------------------------------------------------- the command */

static int parse_streams(const char *list, int *streams, int *n) {
    *n = 0;
    for (const char *p = list; *p;) {
        char *end;
        long v = strtol(p, &end, 10);
        if (end == p || v < 1 || v > 4096 || *n == MAX_LEVELS || (*end && *end != ','))
            return cli_usage_error(CMD, "--streams: '%s' is not a list of 1..4096 (at most %d)", list, MAX_LEVELS);
        streams[(*n)++] = (int)v;
        p = *end ? end + 1 : end;
    }
    return *n ? CLI_CONTINUE : cli_usage_error(CMD, "--streams is empty");
}

int cli_bench_serve_main(int argc, char **argv) {
    const char *url = NULL, *model = NULL, *streams_list = "1,4,16,64", *api_key = NULL;
    int requests = 0, max_tokens = 32, prompt_tokens = 32, shared_prefix = 0, slots = 0, threads = 0;
    float timeout = 300;
    bool as_json = false;
    const cli_option options[] = {
        {"--url", CLI_OPT_STRING, &url, "URL", "a running server, http://HOST:PORT", 0, 0},
        {"--model", CLI_OPT_STRING, &model, "DIR", "or start `tessera serve --model DIR --port 0` for the run", 0, 0},
        {"--streams", CLI_OPT_STRING, &streams_list, "N,N,...", "concurrent streaming clients, one level each", 0, 0},
        {"--requests", CLI_OPT_INT, &requests, "N", "requests per level (0: 2 per stream; at least 1 per stream)", 0, 1 << 20},
        {"--max-tokens", CLI_OPT_INT, &max_tokens, "N", "max_tokens of each request", 1, 1 << 16},
        {"--prompt-tokens", CLI_OPT_INT, &prompt_tokens, "N", "prompt length in tokens", 1, 1 << 16},
        {"--shared-prefix", CLI_OPT_INT, &shared_prefix, "N", "leading prompt tokens every request shares (< --prompt-tokens)", 0, 1 << 16},
        {"--api-key", CLI_OPT_STRING, &api_key, "K", "sent as 'Authorization: Bearer K'", 0, 0},
        {"--slots", CLI_OPT_INT, &slots, "N", "with --model: the server's --slots (0: its default)", 0, 1024},
        {"--threads", CLI_OPT_INT, &threads, "N", "with --model: the server's compute threads (0: every core)", 0, 1024},
        {"--timeout", CLI_OPT_FLOAT, &timeout, "S", "a request silent this long counts as an error", 1, 1e6},
        {"--json", CLI_OPT_FLAG, &as_json, NULL, "one JSON object per level instead of the table", 0, 0},
    };
    const cli_spec spec = {CMD, "Load an OpenAI-compatible server with concurrent streaming completions.",
                           "Per concurrency: time to first token and inter-token latency (median, p99, ms), aggregate\n"
                           "generated tokens/s and request errors. Greedy; a request may stop before --max-tokens.",
                           options, (int)(sizeof options / sizeof *options)};
    int rc = cli_parse(&spec, argc, argv);
    if (rc != CLI_CONTINUE) return rc;
    if (!url == !model) return cli_usage_error(CMD, "give exactly one of --url and --model");
    if (shared_prefix >= prompt_tokens) return cli_usage_error(CMD, "--shared-prefix must be below --prompt-tokens");
    int streams[MAX_LEVELS], n_levels;
    bench_target tg = {.max_tokens = max_tokens, .prompt_tokens = prompt_tokens, .shared_prefix = shared_prefix,
                       .timeout_s = timeout};
    if (api_key) snprintf(tg.auth, sizeof tg.auth, "Authorization: Bearer %.400s\r\n", api_key);
    if ((rc = parse_streams(streams_list, streams, &n_levels)) != CLI_CONTINUE) return rc;
    pid_t server = 0;
    char started_url[300];
    signal(SIGPIPE, SIG_IGN);
    if (model && (rc = start_server(model, slots, threads, &tg, &server, started_url, sizeof started_url)) != CLI_CONTINUE) {
        stop_server(server);
        return rc;
    }
    rc = parse_url(model ? started_url : url, &tg);
    if (rc == CLI_CONTINUE && !as_json)
        printf("server %s:%d, prompts of %d tokens (the first %d shared), max_tokens %d\n%7s %8s %6s %10s %10s %10s %10s %10s\n", tg.host,
               tg.port, prompt_tokens, shared_prefix, max_tokens, "streams", "requests", "errors", "ttft_med", "ttft_p99", "itl_med",
               "itl_p99", "tokens/s");
    for (int i = 0; rc == CLI_CONTINUE && i < n_levels; i++) {
        level_result r = {0};
        tg.requests = requests > 0 ? requests : 2 * streams[i];
        rc = run_level(&tg, streams[i], &r);
        if (rc == CLI_CONTINUE) print_result(&r, as_json);
        if (rc == CLI_CONTINUE && r.errors == r.requests) rc = cli_failure(CMD, "every request failed");
    }
    if (rc == CLI_CONTINUE && !as_json) printf("(latencies in ms)\n");
    stop_server(server);
    return rc == CLI_CONTINUE ? CLI_EXIT_OK : rc;
}
