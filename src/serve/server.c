/* server.c - the HTTP server of serve.h on libmicrohttpd: daemon lifecycle, routing, auth and
 * limits, and the two ways a generation is answered.
 *
 * libmicrohttpd runs one thread per connection, so a handler may block: a non-streaming
 * request waits for its jobs (one per choice, OpenAI's n) to finish in the handler; a streaming
 * one returns a response whose content callback blocks until a job has more to send (SSE
 * events, with a keep-alive comment after KEEPALIVE_S of silence). Either way the thread waits
 * in short slices (job.c) so a client hang-up, the deadline or shutdown cancel the engine's
 * work promptly. A choice that fails fails the request: the others are cancelled.
 *
 * Concurrency: at most options.max_concurrent generations are in flight; one more is answered
 * 429 at once. The connection limit is set above that so the 429 can be delivered. */
#include <microhttpd.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "serve/serve_internal.h"

#define KEEPALIVE_S 5.0
#define STREAM_BLOCK 16384
#define ANSWER_GRACE_S 1.0 /* at shutdown, time for cancelled requests' answers to go out */

ts_server_options ts_server_defaults(void) {
    return (ts_server_options){.host = "127.0.0.1",
                               .max_body_bytes = 1u << 20,
                               .max_prompt_tokens = 4096,
                               .max_output_tokens = 1024,
                               .max_concurrent = 64,
                               .request_timeout_s = 600};
}

/* ---------------------------------------------------------------- bookkeeping */

void server_job_freed(ts_server *srv) {
    pthread_mutex_lock(&srv->mu);
    srv->live_jobs--;
    pthread_cond_broadcast(&srv->cv);
    pthread_mutex_unlock(&srv->mu);
}

bool server_cancelling(ts_server *srv) {
    pthread_mutex_lock(&srv->mu);
    bool c = srv->cancel_all;
    pthread_mutex_unlock(&srv->mu);
    return c;
}

static bool server_stopping(ts_server *srv) {
    pthread_mutex_lock(&srv->mu);
    bool s = srv->stopping;
    pthread_mutex_unlock(&srv->mu);
    return s;
}

/* Ends the HTTP side of a generation (either way of answering). */
/* The jobs answering one request, one per choice. */
typedef struct {
    job *jobs[MAX_CHOICES];
    int n;
} job_group;

/* Releases the HTTP side of a request's jobs (cancelling what still runs) and its in-flight
 * place. */
/* Ends a generation on the HTTP side; with *unsent non-NULL its answer is made but still going
 * out (set until answer_sent). A generation leaves the in-flight count when its answer is made,
 * not when the connection is done with it: a client at the concurrency limit sends its next
 * request as soon as it reads the last byte, and ending it only after that had refused some of
 * those with 429. Shutdown waits for the unsent answers as for the ones in flight. */
static void generation_done_as(ts_server *srv, job_group *g, bool *unsent) {
    for (int i = 0; i < g->n; i++) job_release_http(g->jobs[i]);
    g->n = 0;
    pthread_mutex_lock(&srv->mu);
    srv->in_flight--;
    if (unsent) srv->unsent++, *unsent = true;
    pthread_cond_broadcast(&srv->cv);
    pthread_mutex_unlock(&srv->mu);
}

static void generation_done(ts_server *srv, job_group *g) { generation_done_as(srv, g, NULL); }

static void answer_sent(ts_server *srv, bool *unsent) {
    if (!*unsent) return;
    *unsent = false;
    pthread_mutex_lock(&srv->mu);
    srv->unsent--;
    pthread_cond_broadcast(&srv->cv);
    pthread_mutex_unlock(&srv->mu);
}

/* ---------------------------------------------------------------- plain responses */

/* Queues body (malloc'd, taken over; NULL is answered 500) with the given status. */
static enum MHD_Result respond(ts_server *srv, struct MHD_Connection *c, int status, const char *content_type,
                               char *body, const char *allow) {
    static char oom[] = "{\"error\":{\"message\":\"out of memory\",\"type\":\"server_error\",\"param\":null,\"code\":null}}";
    struct MHD_Response *r = body ? MHD_create_response_from_buffer(strlen(body), body, MHD_RESPMEM_MUST_FREE)
                                  : MHD_create_response_from_buffer(strlen(oom), oom, MHD_RESPMEM_PERSISTENT);
    if (!r) {
        free(body);
        return MHD_NO;
    }
    if (!body) status = 500, content_type = "application/json";
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, content_type);
    if (allow) MHD_add_response_header(r, MHD_HTTP_HEADER_ALLOW, allow);
    enum MHD_Result ret = MHD_queue_response(c, (unsigned)status, r);
    MHD_destroy_response(r);
    metrics_count_status(&srv->metrics, status);
    return ret;
}

static enum MHD_Result respond_json(ts_server *srv, struct MHD_Connection *c, int status, json_t *root) {
    char *s = root ? json_dumps(root, JSON_COMPACT) : NULL;
    json_decref(root);
    return respond(srv, c, status, "application/json", s, NULL);
}

static enum MHD_Result respond_error(ts_server *srv, struct MHD_Connection *c, const api_error *e, const char *allow) {
    return respond(srv, c, e->status, "application/json", api_error_json(e), allow);
}

static enum MHD_Result respond_simple_error(ts_server *srv, struct MHD_Connection *c, int status, const char *type,
                                            const char *code, const char *message, const char *allow) {
    api_error e;
    api_error_set(&e, status, type, NULL, code, "%s", message);
    return respond_error(srv, c, &e, allow);
}

/* ---------------------------------------------------------------- streaming */

/* What a connection's current request has gathered (libmicrohttpd's per-request pointer). */
typedef struct {
    sbuf body;
    bool too_large;
    job_group blocking; /* a non-streaming generation being answered (n = 0: none) */
    bool unsent;        /* its answer is made and going out */
} conn_state;

typedef enum { PHASE_ROLE, PHASE_BODY, PHASE_DONE } stream_phase;

typedef struct {
    ts_server *srv;
    job_group g;
    bool finished[MAX_CHOICES]; /* the choice's last chunk went out */
    bool echoed[MAX_CHOICES];   /* echo: the choice's prompt chunk went out */
    int n_finished;
    sbuf out;
    size_t out_pos;
    stream_phase phase;
    bool unsent; /* the last events are made and going out */
} stream;

/* A choice's new text, and its last chunk once it is finished. */
static bool stream_choice(stream *s, int i) {
    job *j = s->g.jobs[i];
    size_t n = job_sendable(j);
    if (n > j->n_sent) {
        if (!sse_append_chunk(&s->out, j, s->srv->model_name, j->n_sent, n, false, false)) return false;
        j->n_sent = n;
    }
    if (j->state != JOB_FINISHED) return true;
    s->finished[i] = true;
    s->n_finished++;
    return sse_append_chunk(&s->out, j, s->srv->model_name, j->n_sent, j->n_sent, false, true);
}

/* Fills s->out with the next events (possibly none). False: abort the connection. */
static bool stream_produce(stream *s) {
    const char *model = s->srv->model_name;
    if (s->phase == PHASE_ROLE) {
        s->phase = PHASE_BODY;
        bool ok = true;
        for (int i = 0; ok && i < s->g.n; i++) ok = sse_append_chunk(&s->out, s->g.jobs[i], model, 0, 0, true, false);
        return ok;
    }
    double t0 = ts_time_seconds();
    jobs_wait(s->g.jobs, s->g.n, KEEPALIVE_S);
    for (int i = 0; i < s->g.n; i++) {
        job *j = s->g.jobs[i];
        if (s->finished[i]) continue;
        job_advance(j);
        if (j->state == JOB_FAILED) {
            if (j->error.status == 499) return false; /* nobody is listening */
            s->phase = PHASE_DONE;
            return sse_append_error(&s->out, &j->error) && sbuf_printf(&s->out, "data: [DONE]\n\n");
        }
        if (j->echo && !s->echoed[i]) { /* once the prompt's logprobs are in: they precede any token */
            if (j->n_read == 0 && j->state == JOB_RUNNING) continue;
            if (!sse_append_echo(&s->out, j, model)) return false;
            s->echoed[i] = true;
        }
        if (!stream_choice(s, i)) return false;
    }
    if (s->n_finished == s->g.n) {
        s->phase = PHASE_DONE;
        return (!s->g.jobs[0]->include_usage || sse_append_usage(&s->out, s->g.jobs, s->g.n, model)) &&
               sbuf_printf(&s->out, "data: [DONE]\n\n");
    }
    if (s->out.n == 0 && ts_time_seconds() - t0 >= KEEPALIVE_S) return sbuf_printf(&s->out, ": keep-alive\n\n");
    return true;
}

static ssize_t stream_read(void *cls, uint64_t pos, char *buf, size_t max) {
    stream *s = cls;
    while (s->out_pos == s->out.n) {
        if (s->phase == PHASE_DONE) return MHD_CONTENT_READER_END_OF_STREAM;
        s->out.n = s->out_pos = 0;
        if (!stream_produce(s)) return MHD_CONTENT_READER_END_WITH_ERROR;
        if (s->phase == PHASE_DONE) generation_done_as(s->srv, &s->g, &s->unsent); /* [DONE] is made */
    }
    size_t n = s->out.n - s->out_pos < max ? s->out.n - s->out_pos : max;
    memcpy(buf, s->out.data + s->out_pos, n);
    s->out_pos += n;
    return (ssize_t)n;
}

static void stream_free(void *cls) {
    stream *s = cls;
    if (s->g.n) generation_done(s->srv, &s->g); /* the stream ended early */
    answer_sent(s->srv, &s->unsent);
    sbuf_free(&s->out);
    free(s);
}

static enum MHD_Result answer_stream(ts_server *srv, struct MHD_Connection *c, job_group *g) {
    stream *s = calloc(1, sizeof *s);
    struct MHD_Response *r = s ? MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, STREAM_BLOCK, stream_read, s, stream_free)
                               : NULL;
    if (!r) {
        free(s);
        generation_done(srv, g);
        return respond(srv, c, 500, "application/json", NULL, NULL);
    }
    *s = (stream){.srv = srv, .g = *g, .phase = g->jobs[0]->chat ? PHASE_ROLE : PHASE_BODY};
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "text/event-stream");
    MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
    enum MHD_Result ret = MHD_queue_response(c, MHD_HTTP_OK, r);
    MHD_destroy_response(r); /* stream_free runs when the connection is done with it */
    metrics_count_status(&srv->metrics, 200);
    return ret;
}

/* The jobs stay in flight until their answer is made (on_completed ends them when the
 * connection goes first), not until it has been sent (generation_done_as). */
static enum MHD_Result answer_blocking(ts_server *srv, struct MHD_Connection *c, conn_state *cs, const job_group *g) {
    cs->blocking = *g;
    for (;;) {
        bool running = false;
        for (int i = 0; i < g->n; i++) {
            job_advance(g->jobs[i]);
            if (g->jobs[i]->state == JOB_FAILED) {
                api_error e = g->jobs[i]->error;
                generation_done_as(srv, &cs->blocking, &cs->unsent);
                return respond_error(srv, c, &e, NULL);
            }
            running |= g->jobs[i]->state == JOB_RUNNING;
        }
        if (!running) break;
        jobs_wait(g->jobs, g->n, 1.0);
    }
    char *body = response_json(g->jobs, g->n, srv->model_name);
    generation_done_as(srv, &cs->blocking, &cs->unsent);
    return respond(srv, c, 200, "application/json", body, NULL);
}

/* ---------------------------------------------------------------- generation endpoints */

/* Turns the parsed request into prompt ids: the template's / prompt's text, or given ids. */
static bool prompt_ids(ts_server *srv, const gen_params *p, ts_token_ids *ids, api_error *e) {
    if (p->prompt_text) {
        ts_status st = srv->engine.tokenize(srv->engine.self, p->prompt_text, strlen(p->prompt_text), !p->chat, ids);
        if (st != TS_OK) {
            api_error_set(e, 500, "server_error", NULL, NULL, "tokenization failed: %s", ts_status_name(st));
            return false;
        }
    } else {
        ids->ids = malloc(p->n_prompt_ids * sizeof *ids->ids);
        if (!ids->ids) {
            api_error_set(e, 500, "server_error", NULL, NULL, "out of memory");
            return false;
        }
        memcpy(ids->ids, p->prompt_ids, p->n_prompt_ids * sizeof *ids->ids);
        ids->n = ids->cap = p->n_prompt_ids;
    }
    const char *param = p->chat ? "messages" : "prompt";
    if (ids->n == 0) {
        api_error_set(e, 400, "invalid_request_error", param, NULL, "the prompt is empty");
        return false;
    }
    if (ids->n > (size_t)srv->opt.max_prompt_tokens) {
        api_error_set(e, 400, "invalid_request_error", param, "context_length_exceeded",
                      "the prompt has %zu tokens; this server accepts at most %d", ids->n, (int)srv->opt.max_prompt_tokens);
        return false;
    }
    return true;
}

/* Claims an in-flight slot, or says why not (429 / 503). */
static bool admit(ts_server *srv, api_error *e) {
    pthread_mutex_lock(&srv->mu);
    bool ok = !srv->stopping && srv->in_flight < srv->opt.max_concurrent;
    if (srv->stopping)
        api_error_set(e, 503, "server_error", NULL, "shutting_down", "the server is shutting down");
    else if (!ok)
        api_error_set(e, 429, "rate_limit_error", NULL, "rate_limit_exceeded",
                      "too many requests in flight (limit %d); retry later", srv->opt.max_concurrent);
    else
        srv->in_flight++;
    pthread_mutex_unlock(&srv->mu);
    return ok;
}

static int connection_fd(struct MHD_Connection *c) {
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
    return ci ? ci->connect_fd : -1;
}

static enum MHD_Result handle_generate(ts_server *srv, struct MHD_Connection *c, conn_state *cs, bool chat) {
    api_error e = {0};
    json_error_t je;
    json_t *body = json_loadb(cs->body.data ? cs->body.data : "", cs->body.n, 0, &je);
    if (!body) {
        api_error_set(&e, 400, "invalid_request_error", NULL, NULL, "the body is not valid JSON: %s (line %d, column %d)",
                      je.text, je.line, je.column);
        return respond_error(srv, c, &e, NULL);
    }
    gen_params p;
    ts_token_ids ids = {0};
    job_group g = {0};
    bool ok = gen_params_parse(body, chat, &srv->opt, &p, &e) && prompt_ids(srv, &p, &ids, &e) && admit(srv, &e);
    if (ok) {
        int32_t max_tokens = p.max_tokens > 0 ? p.max_tokens : srv->opt.max_output_tokens;
        uint64_t seed = p.sampling.seed;
        if (chat && srv->end_of_turn >= 0) p.stop_ids[p.n_stop_ids++] = srv->end_of_turn;
        for (int i = 0; ok && i < p.n_choices; i++) {
            /* a fresh stream per choice; a given seed makes the request reproducible (choice i: seed + i) */
            pthread_mutex_lock(&srv->mu);
            p.sampling.seed = p.has_seed ? seed + (uint64_t)i : ts_rng_next(&srv->id_rng);
            pthread_mutex_unlock(&srv->mu);
            job *j = job_new(srv, &p, i, max_tokens, (int32_t)ids.n, connection_fd(c));
            if (!j) api_error_set(&e, 500, "server_error", NULL, NULL, "out of memory");
            else if (i) memcpy(j->id_str, g.jobs[0]->id_str, sizeof j->id_str); /* one id per response */
            ok = j && job_submit(j, ids.ids, &p, &e);
            if (j) g.jobs[g.n++] = j; /* released below on failure */
        }
        if (!ok) generation_done(srv, &g);
    }
    ts_token_ids_free(&ids);
    gen_params_free(&p);
    json_decref(body);
    if (!ok) return respond_error(srv, c, &e, NULL);
    return g.jobs[0]->stream ? answer_stream(srv, c, &g) : answer_blocking(srv, c, cs, &g);
}

/* ---------------------------------------------------------------- other endpoints */

static enum MHD_Result handle_completions(ts_server *srv, struct MHD_Connection *c, conn_state *cs) {
    return handle_generate(srv, c, cs, false);
}

static enum MHD_Result handle_chat(ts_server *srv, struct MHD_Connection *c, conn_state *cs) {
    return handle_generate(srv, c, cs, true);
}

static enum MHD_Result handle_models(ts_server *srv, struct MHD_Connection *c, conn_state *cs) {
    return respond_json(srv, c, 200,
                        json_pack("{s:s,s:[{s:s,s:s,s:I,s:s}]}", "object", "list", "data", "id", srv->model_name, "object",
                                  "model", "created", (json_int_t)srv->started, "owned_by", "tessera"));
}

static enum MHD_Result handle_health(ts_server *srv, struct MHD_Connection *c, conn_state *cs) {
    if (server_stopping(srv))
        return respond_simple_error(srv, c, 503, "server_error", "shutting_down", "the server is shutting down", NULL);
    return respond_json(srv, c, 200, json_pack("{s:s}", "status", "ok"));
}

static enum MHD_Result handle_metrics(ts_server *srv, struct MHD_Connection *c, conn_state *cs) {
    ts_engine_stats es = {0};
    srv->engine.stats(srv->engine.self, &es);
    pthread_mutex_lock(&srv->mu);
    int in_flight = srv->in_flight;
    pthread_mutex_unlock(&srv->mu);
    /* counted before rendering, so a scrape sees itself */
    metrics_count_status(&srv->metrics, 200);
    char *text = metrics_render(&srv->metrics, &es, in_flight);
    struct MHD_Response *r = text ? MHD_create_response_from_buffer(strlen(text), text, MHD_RESPMEM_MUST_FREE) : NULL;
    if (!r) {
        free(text);
        return MHD_NO;
    }
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8");
    enum MHD_Result ret = MHD_queue_response(c, MHD_HTTP_OK, r);
    MHD_destroy_response(r);
    return ret;
}

static enum MHD_Result handle_page(ts_server *srv, struct MHD_Connection *c, conn_state *cs) {
    return respond(srv, c, 200, "text/html; charset=utf-8", strdup(ts_chat_page_html), NULL);
}

typedef struct {
    const char *path, *method;
    bool needs_key;
    enum MHD_Result (*handle)(ts_server *, struct MHD_Connection *, conn_state *);
} route;

static const route routes[] = {
    {"/", "GET", false, handle_page},
    {"/health", "GET", false, handle_health},
    {"/metrics", "GET", false, handle_metrics},
    {"/v1/models", "GET", true, handle_models},
    {"/v1/completions", "POST", true, handle_completions},
    {"/v1/chat/completions", "POST", true, handle_chat},
};

/* Compares without stopping at the first difference, so timing does not reveal the key. */
static bool key_matches(const char *given, const char *key) {
    size_t lg = strlen(given), lk = strlen(key);
    unsigned diff = lg != lk;
    for (size_t i = 0; i < lk; i++) diff |= (unsigned char)key[i] ^ (unsigned char)(i < lg ? given[i] : 0);
    return diff == 0;
}

static bool authorized(ts_server *srv, struct MHD_Connection *c) {
    if (!srv->api_key) return true;
    const char *h = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
    return h && strncasecmp(h, "Bearer ", 7) == 0 && key_matches(h + 7, srv->api_key);
}

static enum MHD_Result dispatch(ts_server *srv, struct MHD_Connection *c, const char *url, const char *method,
                                conn_state *cs) {
    const route *r = NULL;
    for (size_t i = 0; i < sizeof routes / sizeof routes[0] && !r; i++)
        if (strcmp(url, routes[i].path) == 0) r = &routes[i];
    if (!r) return respond_simple_error(srv, c, 404, "invalid_request_error", "not_found", "no such route", NULL);
    bool head_of_get = !strcmp(r->method, "GET") && !strcmp(method, "HEAD");
    if (strcmp(method, r->method) != 0 && !head_of_get) {
        char msg[96];
        snprintf(msg, sizeof msg, "%s takes %s requests", r->path, r->method);
        return respond_simple_error(srv, c, 405, "invalid_request_error", "method_not_allowed", msg,
                                    !strcmp(r->method, "GET") ? "GET, HEAD" : r->method);
    }
    if (r->needs_key && !authorized(srv, c))
        return respond_simple_error(srv, c, 401, "invalid_request_error", "invalid_api_key",
                                    "missing or incorrect API key (send Authorization: Bearer <key>)", NULL);
    if (cs->too_large) {
        char msg[96];
        snprintf(msg, sizeof msg, "the request body is larger than %zu bytes", srv->opt.max_body_bytes);
        return respond_simple_error(srv, c, 413, "invalid_request_error", "request_too_large", msg, NULL);
    }
    return r->handle(srv, c, cs);
}

/* libmicrohttpd's access handler: called once with the headers, then with body pieces, then
 * once more with none, when the request is answered. The body is kept up to the limit; beyond
 * it the rest is read and dropped (answering early would close the socket under the client). */
static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                                  const char *version, const char *upload_data, size_t *upload_data_size, void **con_cls) {
    ts_server *srv = cls;
    conn_state *cs = *con_cls;
    if (!cs) {
        if (!(cs = calloc(1, sizeof *cs))) return MHD_NO;
        *con_cls = cs;
        return MHD_YES;
    }
    if (*upload_data_size) {
        if (!cs->too_large && cs->body.n + *upload_data_size > srv->opt.max_body_bytes) {
            cs->too_large = true;
            sbuf_free(&cs->body);
        }
        if (!cs->too_large && !sbuf_append(&cs->body, upload_data, *upload_data_size)) return MHD_NO;
        *upload_data_size = 0;
        return MHD_YES;
    }
    if (server_stopping(srv) && strcmp(url, "/health") != 0)
        return respond_simple_error(srv, c, 503, "server_error", "shutting_down", "the server is shutting down", NULL);
    return dispatch(srv, c, url, method, cs);
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls, enum MHD_RequestTerminationCode toe) {
    conn_state *cs = *con_cls;
    if (!cs) return;
    if (cs->blocking.n) generation_done(cls, &cs->blocking);
    answer_sent(cls, &cs->unsent);
    sbuf_free(&cs->body);
    free(cs);
    *con_cls = NULL;
}

/* ---------------------------------------------------------------- lifecycle */

static void server_free(ts_server *srv) {
    free(srv->model_name);
    free(srv->api_key);
    metrics_destroy(&srv->metrics);
    pthread_mutex_destroy(&srv->mu);
    pthread_cond_destroy(&srv->cv);
    free(srv);
}

static ts_status check_options(const ts_server_options *opt, const ts_engine *en, ts_io_error *err) {
    if (!opt || !en || !en->tokenize || !en->detokenize || !en->submit || !en->cancel || !en->stats)
        return ts_io_set_error(err, TS_ERR_INVALID_ARG, "serve: options and all five engine functions are required");
    if (!opt->model_name || !*opt->model_name) return ts_io_set_error(err, TS_ERR_INVALID_ARG, "serve: a model name is required");
    if (opt->port < 0 || opt->port > 65535)
        return ts_io_set_error(err, TS_ERR_INVALID_ARG, "serve: port %d is not in 0..65535", opt->port);
    if (opt->max_body_bytes < 1 || opt->max_prompt_tokens < 1 || opt->max_output_tokens < 1 || opt->max_concurrent < 1 ||
        !(opt->request_timeout_s >= 0))
        return ts_io_set_error(err, TS_ERR_INVALID_ARG,
                               "serve: body, prompt, output and concurrency limits must be positive, the timeout >= 0");
    return TS_OK;
}

/* The id of text when the engine's tokenizer makes it one token (a special token), else -1. */
static int32_t single_token(const ts_engine *engine, const char *text) {
    if (!text || !*text) return -1;
    ts_token_ids ids = {0};
    ts_status st = engine->tokenize(engine->self, text, strlen(text), false, &ids);
    int32_t id = st == TS_OK && ids.n == 1 ? ids.ids[0] : -1;
    ts_token_ids_free(&ids);
    return id;
}

ts_status ts_server_start(const ts_server_options *opt, const ts_engine *engine, ts_server **out, ts_io_error *err) {
    if (!out) return ts_io_set_error(err, TS_ERR_INVALID_ARG, "serve: no place for the server");
    *out = NULL;
    ts_status st = check_options(opt, engine, err);
    if (st != TS_OK) return st;
    const char *host = opt->host && *opt->host ? opt->host : "127.0.0.1";
    char port[8];
    snprintf(port, sizeof port, "%d", opt->port);
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE}, *ai = NULL;
    int gai = getaddrinfo(host, port, &hints, &ai);
    if (gai != 0) return ts_io_set_error(err, TS_ERR_INVALID_ARG, "serve: cannot resolve host '%s': %s", host, gai_strerror(gai));

    ts_server *srv = calloc(1, sizeof *srv);
    if (!srv) {
        freeaddrinfo(ai);
        return ts_io_set_error(err, TS_ERR_OOM, "serve: out of memory");
    }
    srv->opt = *opt;
    srv->engine = *engine;
    srv->end_of_turn = single_token(engine, opt->chat_end_of_turn);
    srv->model_name = strdup(opt->model_name);
    srv->api_key = opt->api_key && *opt->api_key ? strdup(opt->api_key) : NULL;
    srv->started = (int64_t)time(NULL);
    srv->next_id = 1;
    ts_rng_seed(&srv->id_rng, (uint64_t)time(NULL) ^ ((uint64_t)(ts_time_seconds() * 1e9) << 20) ^ (uint64_t)getpid());
    metrics_init(&srv->metrics);
    pthread_mutex_init(&srv->mu, NULL);
    pthread_cond_init(&srv->cv, NULL);
    if (!srv->model_name || (opt->api_key && *opt->api_key && !srv->api_key)) {
        freeaddrinfo(ai);
        server_free(srv);
        return ts_io_set_error(err, TS_ERR_OOM, "serve: out of memory");
    }
    unsigned flags = MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ITC | MHD_USE_AUTO;
    if (ai->ai_family == AF_INET6) flags |= MHD_USE_IPv6;
    unsigned timeout = opt->request_timeout_s > 0 ? (unsigned)opt->request_timeout_s + 30 : 0;
    srv->daemon = MHD_start_daemon(flags, 0, NULL, NULL, on_request, srv, MHD_OPTION_SOCK_ADDR, ai->ai_addr,
                                   MHD_OPTION_CONNECTION_LIMIT, (unsigned)(2 * opt->max_concurrent + 16),
                                   MHD_OPTION_CONNECTION_TIMEOUT, timeout, MHD_OPTION_NOTIFY_COMPLETED, on_completed, srv,
                                   MHD_OPTION_END);
    freeaddrinfo(ai);
    const union MHD_DaemonInfo *info = srv->daemon ? MHD_get_daemon_info(srv->daemon, MHD_DAEMON_INFO_BIND_PORT) : NULL;
    if (!info) {
        if (srv->daemon) MHD_stop_daemon(srv->daemon);
        server_free(srv);
        return ts_io_set_error(err, TS_ERR_IO, "serve: cannot listen on %s port %d (in use, or not an address of this host?)",
                               host, opt->port);
    }
    srv->port = info->port;
    *out = srv;
    return TS_OK;
}

int ts_server_port(const ts_server *srv) { return srv ? srv->port : 0; }

void ts_server_shutdown(ts_server *srv, double grace_s) {
    if (!srv) return;
    pthread_mutex_lock(&srv->mu);
    srv->stopping = true;
    pthread_mutex_unlock(&srv->mu);
    MHD_socket listen_fd = MHD_quiesce_daemon(srv->daemon);
    if (listen_fd != MHD_INVALID_SOCKET) close(listen_fd);

    double end = ts_time_seconds() + (grace_s > 0 ? grace_s : 0);
    pthread_mutex_lock(&srv->mu);
    while (srv->in_flight + srv->unsent > 0 && ts_time_seconds() < end) {
        struct timespec t = realtime_in(0.05);
        pthread_cond_timedwait(&srv->cv, &srv->mu, &t);
    }
    srv->cancel_all = true; /* waiting HTTP threads fail their jobs, cancel the engine's work and answer */
    end = ts_time_seconds() + ANSWER_GRACE_S;
    while (srv->in_flight + srv->unsent > 0 && ts_time_seconds() < end) {
        struct timespec t = realtime_in(0.05);
        pthread_cond_timedwait(&srv->cv, &srv->mu, &t);
    }
    pthread_mutex_unlock(&srv->mu);

    MHD_stop_daemon(srv->daemon); /* closes connections and joins their threads */
    pthread_mutex_lock(&srv->mu);
    while (srv->live_jobs > 0) pthread_cond_wait(&srv->cv, &srv->mu); /* the engine confirms each cancel */
    pthread_mutex_unlock(&srv->mu);
    server_free(srv);
}
