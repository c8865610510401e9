/* serve_internal.h - what the files of src/serve share: a growable text buffer, UTF-8 helpers,
 * the parsed form of an OpenAI request, the generation job that sits between an HTTP thread
 * and the engine's worker thread, the metrics, and the server object itself. */
#ifndef TS_SERVE_INTERNAL_H
#define TS_SERVE_INTERNAL_H

#include <jansson.h>
#include <pthread.h>
#include <stdarg.h>
#include <time.h>

#include "tessera/serve.h"

/* ---------------------------------------------------------------- text (text.c) */

typedef struct {
    char *data; /* NUL-terminated when not NULL */
    size_t n, cap;
} sbuf;

bool sbuf_append(sbuf *b, const void *p, size_t n);
bool sbuf_printf(sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void sbuf_free(sbuf *b);

/* The longest prefix of s[0, n) that does not end inside a UTF-8 sequence still missing bytes. */
size_t utf8_complete_prefix(const char *s, size_t n);
/* s[0, n) with every invalid UTF-8 sequence replaced by U+FFFD, as a jansson string (NULL: OOM). */
json_t *json_utf8_string(const char *s, size_t n);

/* ---------------------------------------------------------------- errors and requests (request.c) */

/* An HTTP error to answer with, in OpenAI's shape. */
typedef struct {
    int status;
    const char *type;  /* "invalid_request_error", "server_error"... */
    const char *param; /* the request field at fault, or NULL */
    const char *code;  /* a machine-readable code, or NULL */
    char message[256];
} api_error;

void api_error_set(api_error *e, int status, const char *type, const char *param, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 6, 7)));
/* {"error": {...}} as a NUL-terminated JSON string (malloc'd; NULL: OOM). */
char *api_error_json(const api_error *e);

#define MAX_STOPS 4
#define MAX_CHOICES 16 /* OpenAI's n: completions per request, each a sequence of the engine */

/* A /v1/completions or /v1/chat/completions request, validated. */
typedef struct {
    bool chat, stream, include_usage;
    bool echo;                /* completions: the prompt leads the text (and its logprobs, when asked) */
    int n_choices;            /* OpenAI's n, 1..MAX_CHOICES */
    int32_t max_tokens;       /* -1: not given */
    bool has_seed;
    ts_sampling_params sampling;
    const char *stops[MAX_STOPS]; /* point into the request's JSON */
    size_t n_stops;
    int32_t stop_ids[TS_GEN_MAX_STOP_IDS]; /* stop_token_ids (vLLM's extension), then the chat's
                                              end of turn (added by the server) */
    int n_stop_ids;
    bool logprobs;            /* ts_gen_request's */
    int32_t top_logprobs;
    char *prompt_text;        /* the prompt, or the chat template's output (malloc'd)... */
    int32_t *prompt_ids;      /* ...or the prompt as token ids (completions only; malloc'd) */
    size_t n_prompt_ids;
} gen_params;

/* Parses and validates body as a request of the given kind; on failure fills e (400/404). */
bool gen_params_parse(json_t *body, bool chat, const ts_server_options *opt, gen_params *out, api_error *e);
void gen_params_free(gen_params *p);

/* ---------------------------------------------------------------- jobs (job.c) */

typedef enum { JOB_RUNNING, JOB_FINISHED, JOB_FAILED } job_state;

typedef struct ts_server ts_server;

/* One generation. The engine thread appends tokens and sets engine_done (under mu); the HTTP
 * thread turns tokens into text, checks stop strings and decides how the job ends. Two
 * references (HTTP side, engine side) keep it alive; the last release frees it. */
typedef struct {
    ts_server *srv;
    uint64_t id;
    char id_str[48];  /* the response's id: the first choice's for all of a request */
    int index;        /* the choice it answers (OpenAI's n) */
    int64_t created;
    bool chat, stream, include_usage;
    int32_t max_tokens, n_prompt;
    char *stops[MAX_STOPS];
    size_t n_stops, longest_stop;
    double deadline;  /* ts_time_seconds; 0: none */
    int conn_fd;      /* the client's socket, polled for a hang-up while waiting */

    pthread_mutex_t mu;
    pthread_cond_t cv;
    int32_t *tokens;  /* [max_tokens] */
    int32_t top_logprobs;   /* alternatives per token, with logprobs */
    ts_token_logprobs *lps; /* [max_tokens] when logprobs were asked for: each token's, beside tokens */
    bool echo;
    int32_t *prompt_ids;    /* [n_prompt] with echo */
    sbuf prompt_text;       /* with echo: the prompt's bytes, token after token */
    size_t *prompt_offsets; /* [n_prompt] with echo: where each prompt token's bytes start */
    ts_token_logprobs *prompt_lps; /* [n_prompt] with echo and logprobs (position 0: none, NaN) */
    int32_t n_tokens; /* appended by the engine thread */
    bool engine_done;
    ts_gen_end end;
    int refs;

    /* HTTP side only */
    int32_t n_read;   /* tokens turned into text */
    sbuf text;        /* their bytes, cut at a stop string */
    size_t *offsets;  /* [max_tokens] with logprobs: where each token's bytes start in text */
    int32_t n_kept;   /* tokens whose bytes start before the end of text (a stop string cuts) */
    int32_t n_lp_sent; /* streaming: tokens whose logprobs went out in a chunk */
    ts_token_bytes piece; /* one token's bytes (reused) */
    size_t n_sent;    /* bytes already streamed */
    bool cancel_sent;
    job_state state;
    const char *finish_reason; /* "stop" / "length" once finished */
    api_error error;           /* once failed */
} job;

/* Creates a job for p's choice `index` (prompt already tokenized: n_prompt ids) with both
 * references held. */
job *job_new(ts_server *srv, const gen_params *p, int index, int32_t max_tokens, int32_t n_prompt, int conn_fd);
/* Submits to the engine; on failure fills e (the engine's reference is dropped then). */
bool job_submit(job *j, const int32_t *prompt, const gen_params *p, api_error *e);
/* Waits until there are tokens to read, the engine is done, or up to max_wait_s passed;
 * notices a client hang-up, the deadline and a server shutdown (failing the job). */
void job_wait(job *j, double max_wait_s);
/* The same for the running jobs among n (the choices of one request): returns when any of
 * them has news. */
void jobs_wait(job *const *jobs, int n, double max_wait_s);
/* Reads the tokens that arrived into text, checks stops; may move the job out of RUNNING. */
void job_advance(job *j);
/* Bytes of text that can be sent now (not a possible stop-string start, not a partial character). */
size_t job_sendable(const job *j);
/* Releases the HTTP side: cancels the engine's work if it still runs. */
void job_release_http(job *j);
void job_fail(job *j, int status, const char *code, const char *message);

/* ---------------------------------------------------------------- responses (responses.c) */

/* The whole non-streaming response body for the n choices of a request (malloc'd JSON string). */
char *response_json(job *const *jobs, int n, const char *model);
/* Appends an SSE event carrying text[from, to) (role_only: the first chat chunk; finish: the
 * final chunk with finish_reason) and, with logprobs, those of the tokens not sent yet whose
 * bytes start before `to` (all the kept ones with finish). */
bool sse_append_chunk(sbuf *out, job *j, const char *model, size_t from, size_t to, bool role_only, bool finish);
bool sse_append_usage(sbuf *out, job *const *jobs, int n, const char *model);
/* Appends the chunk of an echoed prompt (its text and, with logprobs, its tokens'). */
bool sse_append_echo(sbuf *out, const job *j, const char *model);
bool sse_append_error(sbuf *out, const api_error *e);

/* ---------------------------------------------------------------- metrics (metrics.c) */

#define METRIC_WINDOW 10 /* seconds of history for the throughput gauges */

typedef struct {
    pthread_mutex_t mu;
    int64_t by_status[600];
    int64_t prompt_tokens, generation_tokens;
    int64_t window_second[METRIC_WINDOW];
    int64_t window_prompt[METRIC_WINDOW], window_generation[METRIC_WINDOW];
} metrics;

void metrics_init(metrics *m);
void metrics_destroy(metrics *m);
void metrics_count_status(metrics *m, int status);
void metrics_add_tokens(metrics *m, int64_t prompt, int64_t generated);
/* The Prometheus exposition text (malloc'd). */
char *metrics_render(metrics *m, const ts_engine_stats *es, int in_flight);

/* ---------------------------------------------------------------- server (server.c) */

struct ts_server {
    ts_server_options opt;
    char *model_name, *api_key; /* copies of the options' */
    int64_t started;            /* Unix time, for /v1/models */
    ts_engine engine;
    struct MHD_Daemon *daemon;
    int port;
    metrics metrics;

    pthread_mutex_t mu;
    pthread_cond_t cv;
    int in_flight;     /* generation requests being answered (HTTP side) */
    int unsent;        /* answers made, out of flight, whose last bytes are still going out */
    int live_jobs;     /* jobs not yet freed (either side) */
    uint64_t next_id;
    bool stopping;     /* no new generations */
    bool cancel_all;   /* the grace period is over */
    ts_rng id_rng;
    int32_t end_of_turn; /* the id of opt.chat_end_of_turn, -1: none */
};

/* The CLOCK_REALTIME time s seconds from now, for pthread_cond_timedwait (job.c). */
struct timespec realtime_in(double s);

/* Called by job.c when a job is freed. */
void server_job_freed(ts_server *srv);
bool server_cancelling(ts_server *srv);

extern const char ts_chat_page_html[];

/* ---------------------------------------------------------------- HTTP client (http_client.c)
 *
 * A small blocking HTTP/1.1 client for talking to a server like this one: one request per
 * connection (Connection: close), chunked or Content-Length bodies, and Server-Sent Events
 * handed over one by one as they arrive, with their arrival time (what `tessera bench serve`
 * times). Not a general client: no TLS, no redirects, no keep-alive. */

typedef struct {
    int status;        /* 0 when no status line arrived */
    bool complete;     /* the body ended where its framing said (last chunk / Content-Length) */
    bool event_stream; /* Content-Type: text/event-stream */
    sbuf body;         /* the body, de-chunked */
} http_response;

/* Called per SSE event with its data (the text after "data: ", lines joined by "\n"; comments
 * skipped), NUL-terminated, and ts_time_seconds() at its arrival. */
typedef void (*http_event_fn)(void *user, const char *data, size_t n, double t);

/* Sends `method path` with body (may be NULL) and extra_headers ("Name: v\r\n"..., may be NULL)
 * to host:port and reads the answer into out (http_response_free it). Returns false, with a
 * message in err, when it cannot connect or send, or the connection fails or stays silent for
 * timeout_s before the response is complete; out holds what arrived. */
bool http_request(const char *host, int port, const char *method, const char *path, const char *extra_headers,
                  const char *body, size_t body_len, double timeout_s, http_event_fn on_event, void *user,
                  http_response *out, char *err, size_t err_size);
void http_response_free(http_response *r);

#endif
