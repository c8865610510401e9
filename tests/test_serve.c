/* test_serve.c - the OpenAI-compatible HTTP server (serve.h) end to end over loopback, against a
 * fake engine that follows serve.h's contract: bytes are tokens (id = byte value), and each
 * request generates its prompt reversed, one token per step for every running request
 * (continuous batching in miniature), then ends with a stop token - or, when the prompt holds
 * a '~', cycles forever until max_tokens or a cancel. Asked for logprobs, it reports the k-th
 * token's as -0.25 (k + 1), with up to two alternatives: the token itself, then 'A' at one less,
 * and (echo) the prompt's k-th token's as -0.125 k. The client is a small HTTP/1.1 one written
 * here (chunked transfer decoding included).
 *
 * Covered: non-streaming and SSE completions and chat (framing, [DONE], usage, finish_reason,
 * stop strings held back while streaming, invalid UTF-8), logprobs in both shapes (whole,
 * streamed, cut by a stop string; echo with the prompt's, whole and streamed), n choices (whole and streamed, seeds seed + i, the prompt
 * counted once), sampling fields and logit_bias reaching the engine,
 * /v1/models, /health, /metrics (exact token counters, gauges), every error status (400 401 404
 * 405 413 429 503 504) in OpenAI's shape, a client hanging up mid-stream (engine cancelled,
 * next request served), concurrent clients, and shutdown with requests in flight (graceful and
 * cancelling). */
#include <arpa/inet.h>
#include <jansson.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "check.h"
#include "tessera/serve.h"

/* ================================================================ fake engine */

#define FAKE_VOCAB 256 /* ids 0..255 are bytes; the stop token is never delivered */

typedef struct fake_req {
    uint64_t id;
    int32_t *prompt;
    size_t n_prompt;
    int32_t max_tokens, produced;
    bool forever, cancelled;
    int32_t stop_ids[TS_GEN_MAX_STOP_IDS];
    int n_stop_ids;
    bool logprobs, prompt_logprobs;
    int32_t top_logprobs;
    ts_gen_sink sink;
    struct fake_req *next;
} fake_req;

typedef struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    pthread_t thread;
    bool quit;
    double step_s;   /* seconds per decoding step */
    int capacity;    /* running requests before submit says "full" */
    fake_req *active;
    int n_active;
    /* what the test looks at */
    int submitted, cancels, finished;
    ts_sampling_params last_sampling;
    int32_t last_max_tokens;
    bool last_add_bos;
} fake_engine;

static void fake_step(fake_engine *f) {
    for (fake_req **pp = &f->active; *pp;) {
        fake_req *r = *pp;
        ts_gen_end end = TS_GEN_STOP_TOKEN;
        bool finished = true;
        if (r->cancelled)
            end = TS_GEN_CANCELLED;
        else if (r->produced == r->max_tokens)
            end = TS_GEN_LENGTH;
        else if (r->forever || (size_t)r->produced < r->n_prompt)
            finished = false;
        int32_t next = r->prompt[r->n_prompt - 1 - (size_t)r->produced % r->n_prompt];
        for (int i = 0; i < r->n_stop_ids; i++) finished |= next == r->stop_ids[i];
        if (r->produced == 0 && r->prompt_logprobs) /* position k of the prompt: -0.125 k */
            for (size_t k = 1; k < r->n_prompt; k++)
                r->sink.prompt_token(r->sink.user, (int64_t)k, &(ts_token_logprobs){.logprob = -0.125f * (float)k});
        if (!finished) {
            ts_token_logprobs lp = {.logprob = -0.25f * (float)(r->produced + 1),
                                    .n_top = r->top_logprobs < 2 ? r->top_logprobs : 2,
                                    .top_ids = {next, 'A'}};
            lp.top_logprobs[0] = lp.logprob;
            lp.top_logprobs[1] = lp.logprob - 1;
            r->sink.token(r->sink.user, next, r->logprobs ? &lp : NULL);
            r->produced++;
            pp = &r->next;
            continue;
        }
        r->sink.done(r->sink.user, end);
        *pp = r->next;
        f->n_active--;
        f->finished++;
        free(r->prompt);
        free(r);
    }
}

static void *fake_worker(void *arg) {
    fake_engine *f = arg;
    pthread_mutex_lock(&f->mu);
    while (!f->quit) {
        if (!f->active) {
            pthread_cond_wait(&f->cv, &f->mu);
            continue;
        }
        fake_step(f);
        pthread_mutex_unlock(&f->mu);
        nanosleep(&(struct timespec){0, (long)(f->step_s * 1e9)}, NULL);
        pthread_mutex_lock(&f->mu);
    }
    pthread_mutex_unlock(&f->mu);
    return NULL;
}

static ts_status fake_tokenize(void *self, const char *text, size_t len, bool add_bos, ts_token_ids *out) {
    fake_engine *f = self;
    pthread_mutex_lock(&f->mu);
    f->last_add_bos = add_bos;
    pthread_mutex_unlock(&f->mu);
    int32_t *ids = realloc(out->ids, (out->n + len + 1) * sizeof *ids);
    if (!ids) return TS_ERR_OOM;
    out->ids = ids;
    for (size_t i = 0; i < len; i++) ids[out->n++] = (unsigned char)text[i];
    out->cap = out->n + 1;
    return TS_OK;
}

static ts_status fake_detokenize(void *self, int32_t id, ts_token_bytes *out) {
    if (id < 0 || id >= FAKE_VOCAB) return TS_ERR_RANGE;
    uint8_t *d = realloc(out->data, out->n + 2);
    if (!d) return TS_ERR_OOM;
    out->data = d;
    d[out->n++] = (uint8_t)id;
    d[out->n] = 0;
    out->cap = out->n + 2;
    return TS_OK;
}

static ts_status fake_submit(void *self, const ts_gen_request *req) {
    fake_engine *f = self;
    for (size_t i = 0; i < req->n_prompt; i++)
        if (req->prompt[i] < 0 || req->prompt[i] >= FAKE_VOCAB) return TS_ERR_RANGE;
    for (int32_t i = 0; i < req->sampling.n_logit_bias; i++)
        if (req->sampling.logit_bias[i].id >= FAKE_VOCAB) return TS_ERR_RANGE;
    fake_req *r = calloc(1, sizeof *r);
    if (!r || !(r->prompt = malloc(req->n_prompt * sizeof *r->prompt))) {
        free(r);
        return TS_ERR_OOM;
    }
    memcpy(r->prompt, req->prompt, req->n_prompt * sizeof *r->prompt);
    r->n_prompt = req->n_prompt;
    r->id = req->id;
    r->max_tokens = req->max_tokens;
    r->n_stop_ids = req->n_stop_ids;
    r->logprobs = req->logprobs;
    r->prompt_logprobs = req->prompt_logprobs;
    r->top_logprobs = req->top_logprobs;
    memcpy(r->stop_ids, req->stop_ids, sizeof r->stop_ids);
    r->sink = req->sink;
    for (size_t i = 0; i < req->n_prompt; i++) r->forever |= req->prompt[i] == '~';
    pthread_mutex_lock(&f->mu);
    if (f->n_active >= f->capacity) {
        pthread_mutex_unlock(&f->mu);
        free(r->prompt);
        free(r);
        return TS_ERR_STATE;
    }
    r->next = f->active;
    f->active = r;
    f->n_active++;
    f->submitted++;
    f->last_sampling = req->sampling;
    f->last_max_tokens = req->max_tokens;
    pthread_cond_signal(&f->cv);
    pthread_mutex_unlock(&f->mu);
    return TS_OK;
}

static void fake_cancel(void *self, uint64_t id) {
    fake_engine *f = self;
    pthread_mutex_lock(&f->mu);
    for (fake_req *r = f->active; r; r = r->next)
        if (r->id == id && !r->cancelled) r->cancelled = true, f->cancels++;
    pthread_mutex_unlock(&f->mu);
}

static void fake_stats(void *self, ts_engine_stats *out) {
    fake_engine *f = self;
    pthread_mutex_lock(&f->mu);
    *out = (ts_engine_stats){.kv_cache_usage = (double)f->n_active / f->capacity, .queued = 0, .running = f->n_active};
    pthread_mutex_unlock(&f->mu);
}

static void fake_init(fake_engine *f, double step_s, int capacity) {
    *f = (fake_engine){.step_s = step_s, .capacity = capacity};
    pthread_mutex_init(&f->mu, NULL);
    pthread_cond_init(&f->cv, NULL);
    pthread_create(&f->thread, NULL, fake_worker, f);
}

static void fake_destroy(fake_engine *f) {
    pthread_mutex_lock(&f->mu);
    f->quit = true;
    pthread_cond_signal(&f->cv);
    pthread_mutex_unlock(&f->mu);
    pthread_join(f->thread, NULL);
    CHECK(f->active == NULL, "the fake engine still runs requests at the end");
    pthread_mutex_destroy(&f->mu);
    pthread_cond_destroy(&f->cv);
}

static ts_engine fake_table(fake_engine *f) {
    return (ts_engine){.self = f,
                       .tokenize = fake_tokenize,
                       .detokenize = fake_detokenize,
                       .submit = fake_submit,
                       .cancel = fake_cancel,
                       .stats = fake_stats};
}

static int fake_get(fake_engine *f, const int *field) {
    pthread_mutex_lock(&f->mu);
    int v = *field;
    pthread_mutex_unlock(&f->mu);
    return v;
}

/* Waits up to 3 s for the engine to have no running request. */
static bool fake_wait_idle(fake_engine *f) {
    for (int i = 0; i < 300; i++) {
        if (fake_get(f, &f->n_active) == 0) return true;
        nanosleep(&(struct timespec){0, 10000000}, NULL);
    }
    return false;
}

/* The test's chat template: the last user message, so the fake's answer is that text reversed. */
static char *last_user_message(void *user, const ts_chat_message *msgs, size_t n) {
    int *calls = user;
    (*calls)++;
    for (size_t i = n; i-- > 0;)
        if (!strcmp(msgs[i].role, "user")) return strdup(msgs[i].content);
    return strdup("");
}

/* ================================================================ HTTP client */

typedef struct {
    char *data;
    size_t n;
} buf;

static void buf_add(buf *b, const void *p, size_t n) {
    b->data = realloc(b->data, b->n + n + 1);
    memcpy(b->data + b->n, p, n);
    b->n += n;
    b->data[b->n] = 0;
}

typedef struct {
    int status;
    char headers[4096];
    buf body;
} http_resp;

static void resp_free(http_resp *r) {
    free(r->body.data);
    *r = (http_resp){0};
}

static int connect_to(int port) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    struct timeval tv = {.tv_sec = 5};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

/* Sends one request (Connection: close) and returns the socket to read the answer from. */
static int send_request(int port, const char *method, const char *path, const char *headers, const char *body,
                        size_t body_len) {
    int fd = connect_to(port);
    if (fd < 0) return -1;
    buf req = {0};
    char head[1024];
    int n = snprintf(head, sizeof head,
                     "%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n%sContent-Type: application/json\r\n"
                     "Content-Length: %zu\r\n\r\n",
                     method, path, headers ? headers : "", body ? body_len : 0);
    buf_add(&req, head, (size_t)n);
    if (body) buf_add(&req, body, body_len);
    for (size_t off = 0; off < req.n;) {
        ssize_t w = send(fd, req.data + off, req.n - off, MSG_NOSIGNAL);
        if (w <= 0) break;
        off += (size_t)w;
    }
    free(req.data);
    return fd;
}

static void dechunk(buf *b) {
    buf out = {0};
    size_t i = 0;
    while (i < b->n) {
        char *end;
        size_t len = strtoul(b->data + i, &end, 16);
        char *line_end = strstr(b->data + i, "\r\n");
        if (!line_end || len == 0) break;
        i = (size_t)(line_end - b->data) + 2;
        if (i + len > b->n) len = b->n - i;
        buf_add(&out, b->data + i, len);
        i += len + 2;
    }
    free(b->data);
    *b = out.data ? out : (buf){calloc(1, 1), 0};
}

static void read_rest(int fd, buf *raw) {
    char chunk[4096];
    ssize_t got;
    while ((got = recv(fd, chunk, sizeof chunk, 0)) > 0) buf_add(raw, chunk, (size_t)got);
    close(fd);
}

/* Parses a whole raw response (takes raw's memory). */
static void parse_response(buf raw, http_resp *r) {
    *r = (http_resp){0};
    char *split = raw.data ? strstr(raw.data, "\r\n\r\n") : NULL;
    if (!split || sscanf(raw.data, "HTTP/1.%*d %d", &r->status) != 1) {
        free(raw.data);
        r->body.data = calloc(1, 1);
        return;
    }
    size_t hl = (size_t)(split - raw.data);
    snprintf(r->headers, sizeof r->headers, "%.*s", (int)(hl < sizeof r->headers - 1 ? hl : sizeof r->headers - 1), raw.data);
    buf_add(&r->body, split + 4, raw.n - hl - 4);
    if (!r->body.data) r->body.data = calloc(1, 1);
    for (char *p = r->headers; *p; p++) *p = (char)(*p >= 'A' && *p <= 'Z' ? *p + 32 : *p); /* case-insensitive lookups */
    if (strstr(r->headers, "transfer-encoding: chunked")) dechunk(&r->body);
    free(raw.data);
}

static void read_response(int fd, http_resp *r) {
    buf raw = {0};
    read_rest(fd, &raw);
    parse_response(raw, r);
}

static http_resp request(int port, const char *method, const char *path, const char *headers, const char *body) {
    http_resp r = {0};
    int fd = send_request(port, method, path, headers, body, body ? strlen(body) : 0);
    if (fd < 0) {
        r.body.data = calloc(1, 1);
        return r;
    }
    read_response(fd, &r);
    return r;
}

#define KEY "Authorization: Bearer sekret\r\n"

static http_resp post(int port, const char *path, const char *body) { return request(port, "POST", path, KEY, body); }

/* Reads from a streaming socket until `needle` has been seen `times` times (or 5 s pass). */
static bool read_until(int fd, buf *seen, const char *needle, int times) {
    char chunk[4096];
    for (;;) {
        int count = 0;
        for (const char *p = seen->data; p && (p = strstr(p, needle)); p++) count++;
        if (count >= times) return true;
        ssize_t got = recv(fd, chunk, sizeof chunk, 0);
        if (got <= 0) return false;
        buf_add(seen, chunk, (size_t)got);
    }
}

/* ================================================================ response checks */

/* The error body's shape: {"error": {"message": str, "type": str, "param": str|null, "code": str|null}}. */
static bool error_shaped(const http_resp *r, const char *want_param, const char *want_code) {
    json_t *root = json_loads(r->body.data, 0, NULL), *e = json_object_get(root, "error");
    json_t *param = json_object_get(e, "param"), *code = json_object_get(e, "code");
    bool ok = json_is_string(json_object_get(e, "message")) && json_is_string(json_object_get(e, "type")) && param &&
              code && (json_is_string(param) || json_is_null(param)) && (json_is_string(code) || json_is_null(code));
    if (ok && want_param) ok = json_is_string(param) && !strcmp(json_string_value(param), want_param);
    if (ok && want_code) ok = json_is_string(code) && !strcmp(json_string_value(code), want_code);
    json_decref(root);
    return ok;
}

static void expect_error(int port, const char *method, const char *path, const char *headers, const char *body,
                         int status, const char *param, const char *code, const char *what) {
    http_resp r = request(port, method, path, headers, body);
    CHECK(r.status == status && error_shaped(&r, param, code), "%s: status %d (want %d), body %s", what, r.status, status,
          r.body.data);
    resp_free(&r);
}

/* Parses a non-streaming completion: text (or message content), finish_reason and usage. */
typedef struct {
    char text[512], finish[16], object[32];
    int prompt_tokens, completion_tokens, total_tokens;
} completion;

static bool parse_completion(const http_resp *r, bool chat, completion *c) {
    *c = (completion){0};
    json_t *root = json_loads(r->body.data, 0, NULL), *ch = json_array_get(json_object_get(root, "choices"), 0);
    json_t *text = chat ? json_object_get(json_object_get(ch, "message"), "content") : json_object_get(ch, "text");
    json_t *u = json_object_get(root, "usage");
    bool ok = r->status == 200 && json_is_string(text) && json_is_string(json_object_get(ch, "finish_reason")) &&
              json_is_string(json_object_get(root, "object")) && json_is_string(json_object_get(root, "id"));
    if (ok) {
        snprintf(c->text, sizeof c->text, "%s", json_string_value(text));
        snprintf(c->finish, sizeof c->finish, "%s", json_string_value(json_object_get(ch, "finish_reason")));
        snprintf(c->object, sizeof c->object, "%s", json_string_value(json_object_get(root, "object")));
        c->prompt_tokens = (int)json_integer_value(json_object_get(u, "prompt_tokens"));
        c->completion_tokens = (int)json_integer_value(json_object_get(u, "completion_tokens"));
        c->total_tokens = (int)json_integer_value(json_object_get(u, "total_tokens"));
    }
    json_decref(root);
    return ok;
}

/* Checks SSE framing (every event "data: ...\n\n", comments allowed, last "data: [DONE]") and
 * collects the streamed text, the finish_reason and the usage chunk. */
typedef struct {
    bool framed, done_last, role_first, error_event;
    char text[512], finish[16];
    int events, completion_tokens, total_tokens;
} sse_result;

static sse_result parse_sse(const char *body, bool chat) {
    sse_result s = {.framed = true};
    const char *p = body;
    bool first = true;
    while (*p) {
        const char *end = strstr(p, "\n\n");
        if (!end) {
            s.framed = false;
            break;
        }
        if (p[0] == ':') { /* a comment (keep-alive) */
            p = end + 2;
            continue;
        }
        if (strncmp(p, "data: ", 6) != 0) s.framed = false;
        char *ev = strndup(p + 6, (size_t)(end - p - 6));
        s.events++;
        s.done_last = !strcmp(ev, "[DONE]");
        if (!s.done_last) {
            json_t *root = json_loads(ev, 0, NULL), *ch = json_array_get(json_object_get(root, "choices"), 0);
            if (!root) s.framed = false;
            if (json_object_get(root, "error")) s.error_event = true;
            json_t *delta = json_object_get(ch, "delta");
            if (first && chat) s.role_first = json_is_string(json_object_get(delta, "role"));
            json_t *t = chat ? json_object_get(delta, "content") : json_object_get(ch, "text");
            if (json_is_string(t)) strncat(s.text, json_string_value(t), sizeof s.text - strlen(s.text) - 1);
            json_t *fr = json_object_get(ch, "finish_reason");
            if (json_is_string(fr)) snprintf(s.finish, sizeof s.finish, "%s", json_string_value(fr));
            json_t *u = json_object_get(root, "usage");
            if (u) {
                s.completion_tokens = (int)json_integer_value(json_object_get(u, "completion_tokens"));
                s.total_tokens = (int)json_integer_value(json_object_get(u, "total_tokens"));
            }
            json_decref(root);
        }
        free(ev);
        first = false;
        p = end + 2;
    }
    return s;
}

/* A value from the Prometheus text ("name value" or "name{labels} value"); -1 when absent. */
static double metric(int port, const char *series) {
    http_resp r = request(port, "GET", "/metrics", NULL, NULL);
    double v = -1;
    size_t len = strlen(series);
    for (const char *p = r.body.data; p && *p; p = strchr(p, '\n') ? strchr(p, '\n') + 1 : NULL)
        if (!strncmp(p, series, len) && p[len] == ' ') v = atof(p + len + 1);
    resp_free(&r);
    return v;
}

/* ================================================================ tests */

static void test_default_template(void) {
    ts_chat_message m[] = {{"system", "Be brief."}, {"user", "Hi"}, {"assistant", "Hello!"}, {"system", "Rule 2."},
                           {"user", "2+2?"}};
    char *s = ts_chat_template_deepseek(NULL, m, 5);
    const char *want = "<\xEF\xBD\x9C" "begin\xE2\x96\x81of\xE2\x96\x81sentence\xEF\xBD\x9C>Be brief.\n\nRule 2."
                       "<\xEF\xBD\x9CUser\xEF\xBD\x9C>Hi<\xEF\xBD\x9C" "Assistant\xEF\xBD\x9C>Hello!"
                       "<\xEF\xBD\x9C" "end\xE2\x96\x81of\xE2\x96\x81sentence\xEF\xBD\x9C>"
                       "<\xEF\xBD\x9CUser\xEF\xBD\x9C>2+2?<\xEF\xBD\x9C" "Assistant\xEF\xBD\x9C>";
    CHECK(s && !strcmp(s, want), "DeepSeek template: %s", s ? s : "(null)");
    free(s);
}

static void test_basic_endpoints(int port) {
    http_resp r = request(port, "GET", "/health", NULL, NULL);
    CHECK(r.status == 200 && strstr(r.body.data, "\"ok\""), "health: %d %s", r.status, r.body.data);
    resp_free(&r);

    expect_error(port, "GET", "/v1/models", NULL, NULL, 401, NULL, "invalid_api_key", "models without a key");
    expect_error(port, "GET", "/v1/models", "Authorization: Bearer wrong\r\n", NULL, 401, NULL, "invalid_api_key",
                 "wrong key");
    r = request(port, "GET", "/v1/models", KEY, NULL);
    json_t *root = json_loads(r.body.data, 0, NULL), *m = json_array_get(json_object_get(root, "data"), 0);
    CHECK(r.status == 200 && json_is_string(json_object_get(m, "id")) &&
              !strcmp(json_string_value(json_object_get(m, "id")), "tiny-test") &&
              !strcmp(json_string_value(json_object_get(root, "object")), "list"),
          "models: %d %s", r.status, r.body.data);
    json_decref(root);
    resp_free(&r);

    r = request(port, "GET", "/", NULL, NULL);
    CHECK(r.status == 200 && strstr(r.headers, "text/html") && strstr(r.body.data, "/chat/completions") &&
              !strstr(r.body.data, "src=\"http") && !strstr(r.body.data, "href=\"http"),
          "chat page: %d", r.status);
    resp_free(&r);
}

static void test_completions(int port, fake_engine *f) {
    completion c;
    http_resp r = post(port, "/v1/completions", "{\"model\":\"tiny-test\",\"prompt\":\"hello\",\"max_tokens\":16}");
    CHECK(parse_completion(&r, false, &c) && !strcmp(c.text, "olleh") && !strcmp(c.finish, "stop") &&
              !strcmp(c.object, "text_completion") && c.prompt_tokens == 5 && c.completion_tokens == 5 && c.total_tokens == 10,
          "completion: %d %s", r.status, r.body.data);
    CHECK(f->last_add_bos && f->last_max_tokens == 16, "completions tokenize with BOS, max_tokens reaches the engine");
    resp_free(&r);

    r = post(port, "/v1/completions", "{\"prompt\":\"hello\",\"max_tokens\":3}"); /* model may be left out */
    CHECK(parse_completion(&r, false, &c) && !strcmp(c.text, "oll") && !strcmp(c.finish, "length") &&
              c.completion_tokens == 3,
          "max_tokens: %s", r.body.data);
    resp_free(&r);

    int cancels = fake_get(f, &f->cancels);
    r = post(port, "/v1/completions", "{\"prompt\":\"abcXYdef~\",\"max_tokens\":40,\"stop\":[\"zz\",\"YX\"]}");
    CHECK(parse_completion(&r, false, &c) && !strcmp(c.text, "~fed") && !strcmp(c.finish, "stop") && c.completion_tokens == 6,
          "stop string: %s", r.body.data);
    CHECK(fake_wait_idle(f) && fake_get(f, &f->cancels) == cancels + 1, "a matched stop string cancels the engine");
    resp_free(&r);

    r = post(port, "/v1/completions", "{\"prompt\":[104,105],\"max_tokens\":4}");
    CHECK(parse_completion(&r, false, &c) && !strcmp(c.text, "ih") && c.prompt_tokens == 2, "token-id prompt: %s",
          r.body.data);
    resp_free(&r);

    r = post(port, "/v1/completions",
             "{\"prompt\":\"abc\",\"temperature\":0.5,\"top_p\":0.9,\"top_k\":7,\"min_p\":0.1,\"frequency_penalty\":0.5,"
             "\"presence_penalty\":0.25,\"repetition_penalty\":1.1,\"seed\":42}");
    ts_sampling_params s = f->last_sampling;
    CHECK(r.status == 200 && s.temperature == 0.5f && s.top_p == 0.9f && s.top_k == 7 && s.min_p == 0.1f &&
              s.frequency_penalty == 0.5f && s.presence_penalty == 0.25f && s.repetition_penalty == 1.1f && s.seed == 42 &&
              f->last_max_tokens == 64,
          "sampling fields reach the engine (max_tokens defaults to the server's limit)");
    resp_free(&r);

    /* The reversed bytes of "é!" end in 0xA9 0xC3: not UTF-8, so each becomes U+FFFD. */
    r = post(port, "/v1/completions", "{\"prompt\":\"\xC3\xA9!\"}");
    CHECK(parse_completion(&r, false, &c) && !strcmp(c.text, "!\xEF\xBF\xBD\xEF\xBF\xBD"), "invalid UTF-8 output: %s",
          r.body.data);
    resp_free(&r);
}

static void test_chat(int port, fake_engine *f, int *template_calls) {
    completion c;
    int calls = *template_calls;
    http_resp r = post(port, "/v1/chat/completions",
                       "{\"model\":\"tiny-test\",\"messages\":[{\"role\":\"system\",\"content\":\"sys\"},"
                       "{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"pi\"},{\"type\":\"text\",\"text\":\"ng\"}]}]}");
    json_t *root = json_loads(r.body.data, 0, NULL);
    json_t *msg = json_object_get(json_array_get(json_object_get(root, "choices"), 0), "message");
    CHECK(parse_completion(&r, true, &c) && !strcmp(c.text, "gnip") && !strcmp(c.object, "chat.completion") &&
              !strcmp(json_string_value(json_object_get(msg, "role")), "assistant") && c.prompt_tokens == 4 &&
              !f->last_add_bos && *template_calls == calls + 1,
          "chat: %s", r.body.data);
    json_decref(root);
    resp_free(&r);

    /* A chat reply ends at the template's end-of-turn token; a completion does not. */
    r = post(port, "/v1/chat/completions", "{\"messages\":[{\"role\":\"user\",\"content\":\"ab|cd\"}]}");
    CHECK(parse_completion(&r, true, &c) && !strcmp(c.text, "dc") && !strcmp(c.finish, "stop"), "chat end of turn: %s",
          r.body.data);
    resp_free(&r);
    r = post(port, "/v1/completions", "{\"prompt\":\"ab|cd\"}");
    CHECK(parse_completion(&r, false, &c) && !strcmp(c.text, "dc|ba"), "completion past '|': %s", r.body.data);
    resp_free(&r);
    r = post(port, "/v1/completions", "{\"prompt\":\"abc\",\"stop_token_ids\":[120,97]}");
    CHECK(parse_completion(&r, false, &c) && !strcmp(c.text, "cb") && !strcmp(c.finish, "stop"), "stop_token_ids: %s",
          r.body.data);
    resp_free(&r);
}

static void test_streaming(int port) {
    http_resp r = post(port, "/v1/completions",
                       "{\"prompt\":\"stream me\",\"stream\":true,\"stream_options\":{\"include_usage\":true}}");
    sse_result s = parse_sse(r.body.data, false);
    CHECK(r.status == 200 && strstr(r.headers, "content-type: text/event-stream") && s.framed && s.done_last &&
              !strcmp(s.text, "em maerts") && !strcmp(s.finish, "stop") && s.completion_tokens == 9 && s.total_tokens == 18 &&
              s.events >= 4,
          "completion stream (%d events, text '%s'): %s", s.events, s.text, r.body.data);
    resp_free(&r);

    /* "dlrow olleh" with stop "w o": "dlro" streams; "w" must never be sent ahead of the match. */
    r = post(port, "/v1/chat/completions",
             "{\"messages\":[{\"role\":\"user\",\"content\":\"hello world\"}],\"stream\":true,\"stop\":\"w o\"}");
    s = parse_sse(r.body.data, true);
    CHECK(r.status == 200 && s.framed && s.done_last && s.role_first && !strcmp(s.text, "dlro") && !strcmp(s.finish, "stop") &&
              !strstr(r.body.data, "\"w") && strstr(r.body.data, "chat.completion.chunk"),
          "chat stream with stop (text '%s'): %s", s.text, r.body.data);
    resp_free(&r);

    r = post(port, "/v1/completions", "{\"prompt\":\"\xC3\xA9!\",\"stream\":true}");
    s = parse_sse(r.body.data, false);
    CHECK(s.framed && s.done_last && !strcmp(s.text, "!\xEF\xBF\xBD\xEF\xBF\xBD"), "stream of invalid UTF-8: %s", r.body.data);
    resp_free(&r);
}

/* choices[0].logprobs of a response body (a new reference; NULL when absent or null). */
static json_t *choice_logprobs(const char *body) {
    json_t *root = json_loads(body, 0, NULL);
    json_t *lp = json_object_get(json_array_get(json_object_get(root, "choices"), 0), "logprobs");
    if (lp && !json_is_null(lp)) json_incref(lp);
    else lp = NULL;
    json_decref(root);
    return lp;
}

/* Whether a completions logprobs object lists exactly the tokens of `text` (one byte each) with
 * the fake's values: logprob -0.25 (k + 1), top_logprobs {token, "A"} when two were asked. */
static bool completion_logprobs_match(const json_t *lp, const char *text, int n_top) {
    json_t *tokens = json_object_get(lp, "tokens"), *lps = json_object_get(lp, "token_logprobs");
    json_t *tops = json_object_get(lp, "top_logprobs"), *offs = json_object_get(lp, "text_offset");
    size_t n = strlen(text);
    if (json_array_size(tokens) != n || json_array_size(lps) != n || json_array_size(tops) != n || json_array_size(offs) != n)
        return false;
    for (size_t k = 0; k < n; k++) {
        json_t *top = json_array_get(tops, k);
        char tok[2] = {text[k], 0};
        double want = -0.25 * (double)(k + 1);
        if (strcmp(json_string_value(json_array_get(tokens, k)), tok) ||
            json_real_value(json_array_get(lps, k)) != want || json_integer_value(json_array_get(offs, k)) != (json_int_t)k ||
            json_real_value(json_object_get(top, tok)) != want ||
            json_object_size(top) != (size_t)(n_top >= 2 && text[k] != 'A' ? 2 : 1) ||
            (n_top >= 2 && json_real_value(json_object_get(top, "A")) != (text[k] == 'A' ? want : want - 1)))
            return false;
    }
    return true;
}

static void test_logprobs(int port, fake_engine *f) {
    const char *C = "/v1/completions", *CH = "/v1/chat/completions";
    http_resp r = post(port, C, "{\"prompt\":\"abc\",\"logprobs\":2}");
    json_t *lp = choice_logprobs(r.body.data);
    CHECK(r.status == 200 && lp && completion_logprobs_match(lp, "cba", 2), "completion logprobs: %s", r.body.data);
    json_decref(lp);
    resp_free(&r);

    /* 'A' is also the fake's second alternative: the chosen token keeps its own value */
    r = post(port, C, "{\"prompt\":\"bAc\",\"logprobs\":2}");
    lp = choice_logprobs(r.body.data);
    CHECK(r.status == 200 && lp && completion_logprobs_match(lp, "cAb", 2), "colliding alternative: %s", r.body.data);
    json_decref(lp);
    resp_free(&r);

    r = post(port, C, "{\"prompt\":\"abc\"}");
    lp = choice_logprobs(r.body.data);
    CHECK(r.status == 200 && !lp && strstr(r.body.data, "\"logprobs\":null"), "no logprobs unless asked: %s", r.body.data);
    resp_free(&r);

    /* "~fedYXcba" cut at "YX": the tokens Y and X went through the engine but not into the text */
    r = post(port, C, "{\"prompt\":\"abcXYdef~\",\"max_tokens\":40,\"stop\":\"YX\",\"logprobs\":0}");
    lp = choice_logprobs(r.body.data);
    CHECK(r.status == 200 && lp && completion_logprobs_match(lp, "~fed", 0), "logprobs cut by a stop string: %s",
          r.body.data);
    json_decref(lp);
    resp_free(&r);
    CHECK(fake_wait_idle(f), "the stopped request ends");

    r = post(port, CH, "{\"messages\":[{\"role\":\"user\",\"content\":\"xy\"}],\"logprobs\":true,\"top_logprobs\":1}");
    lp = choice_logprobs(r.body.data);
    json_t *content = json_object_get(lp, "content"), *first = json_array_get(content, 0);
    json_t *top = json_object_get(first, "top_logprobs");
    CHECK(r.status == 200 && json_array_size(content) == 2 && !strcmp(json_string_value(json_object_get(first, "token")), "y") &&
              json_real_value(json_object_get(first, "logprob")) == -0.25 &&
              json_integer_value(json_array_get(json_object_get(first, "bytes"), 0)) == 'y' && json_array_size(top) == 1 &&
              !strcmp(json_string_value(json_object_get(json_array_get(top, 0), "token")), "y") &&
              json_real_value(json_object_get(json_array_get(content, 1), "logprob")) == -0.5,
          "chat logprobs: %s", r.body.data);
    json_decref(lp);
    resp_free(&r);

    /* Streamed: each chunk carries the tokens whose text it sends; together, all of them. */
    r = post(port, C, "{\"prompt\":\"stream me\",\"stream\":true,\"logprobs\":2}");
    json_t *all = json_object(), *tokens = json_array(), *lps = json_array(), *tops = json_array(), *offs = json_array();
    json_object_set_new(all, "tokens", tokens), json_object_set_new(all, "token_logprobs", lps);
    json_object_set_new(all, "top_logprobs", tops), json_object_set_new(all, "text_offset", offs);
    int with_logprobs = 0;
    bool aligned = true;
    for (const char *p = strstr(r.body.data ? r.body.data : "", "data: {"); p; p = strstr(p + 1, "data: {")) {
        const char *end = strstr(p, "\n\n");
        char *ev = strndup(p + 6, end ? (size_t)(end - p - 6) : strlen(p + 6));
        json_t *root = json_loads(ev, 0, NULL), *ch = json_array_get(json_object_get(root, "choices"), 0);
        json_t *l = json_object_get(ch, "logprobs");
        if (json_is_object(l)) {
            with_logprobs++;
            json_array_extend(tokens, json_object_get(l, "tokens"));
            json_array_extend(lps, json_object_get(l, "token_logprobs"));
            json_array_extend(tops, json_object_get(l, "top_logprobs"));
            json_array_extend(offs, json_object_get(l, "text_offset"));
            aligned &= json_array_size(json_object_get(l, "tokens")) == strlen(json_string_value(json_object_get(ch, "text")));
        }
        json_decref(root);
        free(ev);
    }
    CHECK(r.status == 200 && with_logprobs >= 3 && aligned && completion_logprobs_match(all, "em maerts", 2),
          "streamed logprobs (%d chunks with them): %s", with_logprobs, r.body.data);
    json_decref(all);
    resp_free(&r);

    /* echo: the prompt leads the text and the logprobs (the first token's null) */
    r = post(port, C, "{\"prompt\":\"xyz\",\"echo\":true,\"logprobs\":1,\"max_tokens\":2}");
    lp = choice_logprobs(r.body.data);
    json_t *eroot = json_loads(r.body.data ? r.body.data : "", 0, NULL);
    const char *etext = json_string_value(json_object_get(json_array_get(json_object_get(eroot, "choices"), 0), "text"));
    json_t *etok = json_object_get(lp, "tokens"), *elp = json_object_get(lp, "token_logprobs");
    json_t *etop = json_object_get(lp, "top_logprobs"), *eoff = json_object_get(lp, "text_offset");
    bool shape = json_array_size(etok) == 5 && json_array_size(elp) == 5 && json_array_size(etop) == 5 && json_array_size(eoff) == 5;
    for (size_t k = 0; shape && k < 5; k++) {
        static const char *want_tok[] = {"x", "y", "z", "z", "y"};
        static const double want_lp[] = {0, -0.125, -0.25, -0.25, -0.5};
        shape = !strcmp(json_string_value(json_array_get(etok, k)), want_tok[k]) &&
                json_integer_value(json_array_get(eoff, k)) == (json_int_t)k &&
                (k == 0 ? json_is_null(json_array_get(elp, 0)) && json_is_null(json_array_get(etop, 0))
                        : json_real_value(json_array_get(elp, k)) == want_lp[k]);
    }
    CHECK(r.status == 200 && etext && !strcmp(etext, "xyzzy") && shape, "echo with logprobs: %s", r.body.data);
    json_decref(eroot);
    json_decref(lp);
    resp_free(&r);
    /* streamed: the prompt's chunk (text and logprobs) first, then the generated text */
    r = post(port, C, "{\"prompt\":\"xyz\",\"echo\":true,\"logprobs\":1,\"max_tokens\":2,\"stream\":true}");
    char stext[32] = "";
    json_t *all_tok = json_array(), *all_off = json_array();
    bool first_is_prompt = false;
    int chunk = 0;
    for (const char *p = strstr(r.body.data ? r.body.data : "", "data: {"); p; p = strstr(p + 1, "data: {"), chunk++) {
        const char *end = strstr(p, "\n\n");
        char *ev = strndup(p + 6, end ? (size_t)(end - p - 6) : strlen(p + 6));
        json_t *ev_root = json_loads(ev, 0, NULL), *ch = json_array_get(json_object_get(ev_root, "choices"), 0);
        const char *t = json_string_value(json_object_get(ch, "text"));
        json_t *l = json_object_get(ch, "logprobs");
        if (chunk == 0)
            first_is_prompt = t && !strcmp(t, "xyz") && json_array_size(json_object_get(l, "tokens")) == 3 &&
                              json_is_null(json_array_get(json_object_get(l, "token_logprobs"), 0));
        if (t) strncat(stext, t, sizeof stext - strlen(stext) - 1);
        if (json_is_object(l)) {
            json_array_extend(all_tok, json_object_get(l, "tokens"));
            json_array_extend(all_off, json_object_get(l, "text_offset"));
        }
        json_decref(ev_root);
        free(ev);
    }
    CHECK(r.status == 200 && first_is_prompt && !strcmp(stext, "xyzzy") && json_array_size(all_tok) == 5 &&
              json_integer_value(json_array_get(all_off, 4)) == 4,
          "streamed echo (text '%s'): %s", stext, r.body.data);
    json_decref(all_tok);
    json_decref(all_off);
    resp_free(&r);

    r = post(port, C, "{\"prompt\":\"xyz\",\"echo\":true,\"max_tokens\":1}");
    CHECK(r.status == 200 && strstr(r.body.data, "\"text\":\"xyzz\"") && strstr(r.body.data, "\"logprobs\":null"),
          "echo without logprobs: %s", r.body.data);
    resp_free(&r);

    r = post(port, C, "{\"prompt\":\"abc\",\"logit_bias\":{\"65\":-100,\"7\":2.5}}");
    ts_sampling_params s = f->last_sampling;
    bool both = s.n_logit_bias == 2;
    for (int i = 0; both && i < 2; i++)
        both = (s.logit_bias[i].id == 65 && s.logit_bias[i].bias == -100) || (s.logit_bias[i].id == 7 && s.logit_bias[i].bias == 2.5f);
    CHECK(r.status == 200 && both, "logit_bias reaches the engine: %d entries", s.n_logit_bias);
    resp_free(&r);

    expect_error(port, "POST", C, KEY, "{\"prompt\":\"x\",\"logprobs\":21}", 400, "logprobs", NULL, "logprobs over 20");
    expect_error(port, "POST", CH, KEY, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"echo\":true}", 400,
                 "echo", NULL, "echo in a chat");
    expect_error(port, "POST", C, KEY, "{\"prompt\":\"x\",\"echo\":1}", 400, "echo", NULL, "echo type");
    expect_error(port, "POST", C, KEY, "{\"prompt\":\"x\",\"logprobs\":true}", 400, "logprobs", NULL, "logprobs type");
    expect_error(port, "POST", CH, KEY, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"logprobs\":2}", 400,
                 "logprobs", NULL, "chat logprobs type");
    expect_error(port, "POST", CH, KEY, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"top_logprobs\":2}", 400,
                 "top_logprobs", NULL, "top_logprobs without logprobs");
    expect_error(port, "POST", C, KEY, "{\"prompt\":\"x\",\"logit_bias\":{\"a\":1}}", 400, "logit_bias", NULL,
                 "logit_bias key");
    expect_error(port, "POST", C, KEY, "{\"prompt\":\"x\",\"logit_bias\":{\"1\":101}}", 400, "logit_bias", NULL,
                 "logit_bias range");
    expect_error(port, "POST", C, KEY, "{\"prompt\":\"x\",\"logit_bias\":[1]}", 400, "logit_bias", NULL, "logit_bias type");
    expect_error(port, "POST", C, KEY, "{\"prompt\":\"x\",\"logit_bias\":{\"300\":1}}", 400, NULL,
                 "context_length_exceeded", "logit_bias id outside the vocabulary");
}

/* n choices: the fake answers each alike; indexes, usage and the seeds tell them apart. */
static void test_choices(int port, fake_engine *f) {
    int submitted = fake_get(f, &f->submitted);
    http_resp r = post(port, "/v1/completions", "{\"prompt\":\"abc\",\"n\":3,\"seed\":10,\"best_of\":3}");
    json_t *root = json_loads(r.body.data ? r.body.data : "", 0, NULL), *choices = json_object_get(root, "choices");
    json_t *u = json_object_get(root, "usage");
    bool each = json_array_size(choices) == 3;
    for (size_t i = 0; each && i < 3; i++) {
        json_t *ch = json_array_get(choices, i);
        each = json_integer_value(json_object_get(ch, "index")) == (json_int_t)i &&
               !strcmp(json_string_value(json_object_get(ch, "text")), "cba") &&
               !strcmp(json_string_value(json_object_get(ch, "finish_reason")), "stop");
    }
    CHECK(r.status == 200 && each && json_integer_value(json_object_get(u, "prompt_tokens")) == 3 &&
              json_integer_value(json_object_get(u, "completion_tokens")) == 9 &&
              json_integer_value(json_object_get(u, "total_tokens")) == 12 && fake_get(f, &f->submitted) == submitted + 3 &&
              f->last_sampling.seed == 12,
          "n = 3: %s", r.body.data);
    json_decref(root);
    resp_free(&r);

    r = post(port, "/v1/chat/completions",
             "{\"messages\":[{\"role\":\"user\",\"content\":\"hey\"}],\"n\":2,\"stream\":true,"
             "\"stream_options\":{\"include_usage\":true}}");
    char text[2][16] = {"", ""};
    int roles[2] = {0, 0}, finishes[2] = {0, 0}, usage_chunks = 0;
    bool ids_agree = true;
    char first_id[64] = "";
    for (const char *p = strstr(r.body.data ? r.body.data : "", "data: {"); p; p = strstr(p + 1, "data: {")) {
        const char *end = strstr(p, "\n\n");
        char *ev = strndup(p + 6, end ? (size_t)(end - p - 6) : strlen(p + 6));
        json_t *ev_root = json_loads(ev, 0, NULL), *ch = json_array_get(json_object_get(ev_root, "choices"), 0);
        const char *id = json_string_value(json_object_get(ev_root, "id"));
        if (!first_id[0] && id) snprintf(first_id, sizeof first_id, "%s", id);
        ids_agree &= id && !strcmp(id, first_id);
        usage_chunks += json_object_get(ev_root, "usage") != NULL;
        json_int_t k = json_integer_value(json_object_get(ch, "index"));
        json_t *delta = json_object_get(ch, "delta");
        if (ch && k >= 0 && k < 2) {
            roles[k] += json_object_get(delta, "role") != NULL;
            finishes[k] += json_is_string(json_object_get(ch, "finish_reason"));
            if (json_is_string(json_object_get(delta, "content")))
                strncat(text[k], json_string_value(json_object_get(delta, "content")), sizeof text[k] - strlen(text[k]) - 1);
        }
        json_decref(ev_root);
        free(ev);
    }
    CHECK(r.status == 200 && !strcmp(text[0], "yeh") && !strcmp(text[1], "yeh") && roles[0] == 1 && roles[1] == 1 &&
              finishes[0] == 1 && finishes[1] == 1 && usage_chunks == 1 && ids_agree &&
              strstr(r.body.data, "\"completion_tokens\":6") && strstr(r.body.data, "data: [DONE]\n\n"),
          "streamed n = 2 (texts '%s' '%s'): %s", text[0], text[1], r.body.data);
    resp_free(&r);
}

static void test_errors(int port, fake_engine *f) {
    const char *C = "/v1/completions", *CH = "/v1/chat/completions";
    expect_error(port, "POST", C, KEY, "{\"prompt\": \"x\",", 400, NULL, NULL, "bad JSON");
    expect_error(port, "POST", C, KEY, "[1,2]", 400, NULL, NULL, "not an object");
    expect_error(port, "POST", C, KEY, "{\"prompt\":\"x\",\"max_tokens\":\"ten\"}", 400, "max_tokens", NULL, "max_tokens type");
    expect_error(port, "POST", C, KEY, "{\"prompt\":\"x\",\"temperature\":\"hot\"}", 400, "temperature", NULL, "temperature type");
    expect_error(port, "POST", C, KEY, "{\"prompt\":\"x\",\"stream\":1}", 400, "stream", NULL, "stream type");
    expect_error(port, "POST", C, KEY, "{\"prompt\":\"x\",\"top_p\":2}", 400, "top_p", NULL, "top_p range");
    expect_error(port, "POST", C, KEY, "{\"prompt\":\"x\",\"stop\":[1]}", 400, "stop", NULL, "stop type");
    expect_error(port, "POST", C, KEY, "{\"prompt\":\"x\",\"stop_token_ids\":\"a\"}", 400, "stop_token_ids", NULL,
                 "stop_token_ids type");
    expect_error(port, "POST", C, KEY, "{\"prompt\":\"x\",\"stop_token_ids\":[-1]}", 400, "stop_token_ids", NULL,
                 "negative stop id");
    expect_error(port, "POST", C, KEY, "{\"prompt\":\"x\",\"stop_token_ids\":[1,2,3,4,5,6,7,8]}", 400, "stop_token_ids",
                 NULL, "too many stop ids");
    expect_error(port, "POST", C, KEY, "{\"prompt\":\"x\",\"n\":17}", 400, "n", NULL, "n > 16");
    expect_error(port, "POST", C, KEY, "{\"prompt\":\"x\",\"n\":0}", 400, "n", NULL, "n = 0");
    expect_error(port, "POST", C, KEY, "{\"prompt\":\"x\",\"n\":2,\"best_of\":3}", 400, "best_of", NULL, "best_of > n");
    expect_error(port, "POST", C, KEY, "{\"prompt\":7}", 400, "prompt", NULL, "prompt type");
    expect_error(port, "POST", C, KEY, "{\"prompt\":\"\"}", 400, "prompt", NULL, "empty prompt");
    expect_error(port, "POST", C, KEY, "{\"prompt\":[300]}", 400, NULL, "context_length_exceeded", "id outside the vocabulary");
    expect_error(port, "POST", C, KEY, "{\"model\":\"gpt-9\",\"prompt\":\"x\"}", 404, "model", "model_not_found", "unknown model");
    expect_error(port, "POST", CH, KEY, "{\"model\":\"tiny-test\"}", 400, "messages", NULL, "missing messages");
    expect_error(port, "POST", CH, KEY, "{\"messages\":[{\"role\":\"wizard\",\"content\":\"x\"}]}", 400, "messages", NULL,
                 "bad role");
    char big_prompt[128];
    snprintf(big_prompt, sizeof big_prompt, "{\"prompt\":\"%065d\"}", 0);
    expect_error(port, "POST", C, KEY, big_prompt, 400, "prompt", "context_length_exceeded", "prompt over 64 tokens");
    expect_error(port, "POST", C, KEY, "{\"prompt\":\"x\",\"max_tokens\":65}", 400, "max_tokens", NULL, "max_tokens over 64");
    expect_error(port, "POST", C, KEY, "{\"prompt\":\"x\",\"max_tokens\":0}", 400, "max_tokens", NULL, "max_tokens 0");
    expect_error(port, "POST", C, NULL, "{\"prompt\":\"x\"}", 401, NULL, "invalid_api_key", "completions without a key");

    char *huge = malloc(10000);
    memset(huge, ' ', 9999);
    huge[9999] = 0;
    huge[0] = '{', huge[9998] = '}';
    expect_error(port, "POST", C, KEY, huge, 413, NULL, "request_too_large", "oversized body");
    free(huge);

    expect_error(port, "GET", "/v2/nothing", KEY, NULL, 404, NULL, "not_found", "unknown route");
    http_resp r = request(port, "GET", C, KEY, NULL);
    CHECK(r.status == 405 && error_shaped(&r, NULL, "method_not_allowed") && strstr(r.headers, "allow: post"),
          "GET on completions: %d %s", r.status, r.headers);
    resp_free(&r);
    expect_error(port, "POST", "/health", NULL, "{}", 405, NULL, "method_not_allowed", "POST on health");

    /* The engine full: 503. */
    pthread_mutex_lock(&f->mu);
    int capacity = f->capacity;
    f->capacity = 0;
    pthread_mutex_unlock(&f->mu);
    expect_error(port, "POST", C, KEY, "{\"prompt\":\"x\"}", 503, NULL, "overloaded", "engine full");
    pthread_mutex_lock(&f->mu);
    f->capacity = capacity;
    pthread_mutex_unlock(&f->mu);

    r = request(port, "GET", "/health", NULL, NULL);
    CHECK(r.status == 200, "still serving after the errors");
    resp_free(&r);
}

static void test_client_hangup(int port, fake_engine *f) {
    int cancels = fake_get(f, &f->cancels), finished = fake_get(f, &f->finished);
    const char *body = "{\"prompt\":\"forever~\",\"stream\":true,\"max_tokens\":64}";
    int fd = send_request(port, "POST", "/v1/completions", KEY, body, strlen(body));
    buf seen = {0};
    CHECK(read_until(fd, &seen, "data: ", 3), "stream started");
    close(fd); /* mid-stream */
    free(seen.data);
    CHECK(fake_wait_idle(f) && fake_get(f, &f->cancels) == cancels + 1 && fake_get(f, &f->finished) == finished + 1,
          "a client hanging up cancels its request (cancels %d -> %d)", cancels, fake_get(f, &f->cancels));
    completion c;
    http_resp r = post(port, "/v1/completions", "{\"prompt\":\"next\"}");
    CHECK(parse_completion(&r, false, &c) && !strcmp(c.text, "txen"), "served after a hang-up: %s", r.body.data);
    resp_free(&r);
}

typedef struct {
    int port, thread;
    int ok, bad;
} client_job;

static void *client_thread(void *arg) {
    client_job *cj = arg;
    for (int i = 0; i < 5; i++) {
        char prompt[32], want[32], body[160];
        int n = snprintf(prompt, sizeof prompt, "t%d-r%d", cj->thread, i);
        for (int k = 0; k < n; k++) want[k] = prompt[n - 1 - k];
        want[n] = 0;
        bool stream = (i + cj->thread) % 2;
        snprintf(body, sizeof body, "{\"prompt\":\"%s\",\"stream\":%s}", prompt, stream ? "true" : "false");
        http_resp r = post(cj->port, "/v1/completions", body);
        completion c;
        bool ok = stream ? !strcmp(parse_sse(r.body.data, false).text, want)
                         : parse_completion(&r, false, &c) && !strcmp(c.text, want);
        ok ? cj->ok++ : cj->bad++;
        resp_free(&r);
    }
    return NULL;
}

static void test_concurrent(int port) {
    enum { THREADS = 8 };
    pthread_t t[THREADS];
    client_job cj[THREADS];
    for (int i = 0; i < THREADS; i++) {
        cj[i] = (client_job){.port = port, .thread = i};
        pthread_create(&t[i], NULL, client_thread, &cj[i]);
    }
    int ok = 0, bad = 0;
    for (int i = 0; i < THREADS; i++) {
        pthread_join(t[i], NULL);
        ok += cj[i].ok, bad += cj[i].bad;
    }
    CHECK(ok == THREADS * 5 && bad == 0, "concurrent clients: %d right, %d wrong", ok, bad);
}

static void test_metrics(int port) {
    double gen0 = metric(port, "tessera_generation_tokens_total"), prompt0 = metric(port, "tessera_prompt_tokens_total");
    http_resp r = post(port, "/v1/completions", "{\"prompt\":\"metric\"}");
    resp_free(&r);
    double gen1 = metric(port, "tessera_generation_tokens_total"), prompt1 = metric(port, "tessera_prompt_tokens_total");
    CHECK(gen1 - gen0 == 6 && prompt1 - prompt0 == 6, "token counters: generated +%g, prompt +%g (want 6, 6)", gen1 - gen0,
          prompt1 - prompt0);
    const char *series[] = {"tessera_requests_total{status=\"200\"}", "tessera_requests_total{status=\"400\"}",
                            "tessera_requests_total{status=\"401\"}", "tessera_requests_total{status=\"404\"}",
                            "tessera_requests_total{status=\"405\"}", "tessera_requests_total{status=\"413\"}",
                            "tessera_requests_total{status=\"503\"}"};
    for (size_t i = 0; i < sizeof series / sizeof series[0]; i++)
        CHECK(metric(port, series[i]) >= 1, "%s missing", series[i]);
    CHECK(metric(port, "tessera_requests_total{status=\"401\"}") == 3, "401 count %g, want 3",
          metric(port, "tessera_requests_total{status=\"401\"}"));
    CHECK(metric(port, "tessera_generation_tokens_per_second") > 0 && metric(port, "tessera_prompt_tokens_per_second") > 0,
          "throughput gauges");
    for (int i = 0; i < 100 && metric(port, "tessera_requests_in_flight") != 0; i++) /* the last answer's bookkeeping */
        nanosleep(&(struct timespec){0, 10000000}, NULL);
    CHECK(metric(port, "tessera_requests_in_flight") == 0 && metric(port, "tessera_kv_cache_usage_ratio") == 0 &&
              metric(port, "tessera_queue_length") == 0,
          "idle gauges");
}

/* A second server: two requests at once, a 0.6 s time limit, a slow engine (20 ms a token). */
static void test_limits(void) {
    fake_engine f;
    fake_init(&f, 0.02, 8);
    ts_engine en = fake_table(&f);
    ts_server_options o = ts_server_defaults();
    o.port = 0, o.model_name = "limits", o.max_concurrent = 2, o.request_timeout_s = 0.6, o.max_output_tokens = 64;
    ts_server *srv = NULL;
    ts_io_error err = {0};
    CHECK(ts_server_start(&o, &en, &srv, &err) == TS_OK, "start: %s", err.message);
    if (!srv) return;
    int port = ts_server_port(srv);

    const char *body = "{\"prompt\":\"slow~\",\"stream\":true,\"max_tokens\":64}"; /* 1.3 s: past the limit */
    int fds[2];
    buf seen[2] = {{0}, {0}};
    for (int i = 0; i < 2; i++) {
        fds[i] = send_request(port, "POST", "/v1/completions", NULL, body, strlen(body));
        read_until(fds[i], &seen[i], "data: ", 1);
    }
    expect_error(port, "POST", "/v1/completions", NULL, "{\"prompt\":\"x\"}", 429, NULL, "rate_limit_exceeded", "third request");
    CHECK(metric(port, "tessera_requests_in_flight") == 2 && metric(port, "tessera_kv_cache_usage_ratio") == 0.25 &&
              metric(port, "tessera_running_sequences") == 2,
          "gauges with two streams: in flight %g, kv %g", metric(port, "tessera_requests_in_flight"),
          metric(port, "tessera_kv_cache_usage_ratio"));
    for (int i = 0; i < 2; i++) { /* both run into the time limit: an error event, then [DONE] */
        http_resp r = {0};
        read_rest(fds[i], &seen[i]);
        parse_response(seen[i], &r);
        sse_result s = parse_sse(r.body.data, false);
        CHECK(s.framed && s.error_event && s.done_last && strstr(r.body.data, "\"timeout\""), "stream %d: %s", i, r.body.data);
        resp_free(&r);
    }
    expect_error(port, "POST", "/v1/completions", NULL, "{\"prompt\":\"slow~\",\"max_tokens\":64}", 504, NULL, "timeout",
                 "time limit");
    http_resp r = request(port, "POST", "/v1/completions", NULL, "{\"prompt\":\"slow~\",\"max_tokens\":5,\"stream\":true}");
    sse_result s = parse_sse(r.body.data, false);
    CHECK(s.framed && s.done_last && !strcmp(s.text, "~wols") && !strcmp(s.finish, "length"), "stream to its length: %s",
          r.body.data);
    resp_free(&r);
    CHECK(fake_wait_idle(&f) && fake_get(&f, &f.cancels) == 3, "timed-out requests were cancelled (%d)",
          fake_get(&f, &f.cancels));
    ts_server_shutdown(srv, 1.0);
    fake_destroy(&f);
}

/* Clients at the concurrency limit, each sending its requests back to back (streaming and
 * not): the next goes out as soon as the previous answer's end has been read, that connection
 * still open. The server must have counted the previous request out of flight by then; it did
 * so only once the connection was done with it, and refused some of these with 429 - the
 * race is lost more often the busier the machine, so several clients run at once. */
enum { B2B_CLIENTS = 8, B2B_ROUNDS = 16 };

typedef struct {
    int port, answered, refused;
} b2b_client;

static void *b2b_thread(void *arg) {
    b2b_client *c = arg;
    int prev = -1;
    for (int i = 0; i < B2B_ROUNDS; i++) {
        bool stream = i % 2 == 0;
        const char *body = stream ? "{\"prompt\":\"ab\",\"max_tokens\":2,\"stream\":true}"
                                  : "{\"prompt\":\"ab\",\"max_tokens\":2}";
        int fd = send_request(c->port, "POST", "/v1/completions", NULL, body, strlen(body));
        buf seen = {0};
        bool ended = fd >= 0 && read_until(fd, &seen, stream ? "data: [DONE]" : "\"usage\"", 1);
        c->answered += ended && !strncmp(seen.data, "HTTP/1.1 200", 12);
        c->refused += seen.data && strstr(seen.data, " 429 ") != NULL;
        free(seen.data);
        if (prev >= 0) close(prev);
        prev = fd;
    }
    if (prev >= 0) close(prev);
    return NULL;
}

static void test_back_to_back(void) {
    fake_engine f;
    fake_init(&f, 0.001, B2B_CLIENTS);
    ts_engine en = fake_table(&f);
    ts_server_options o = ts_server_defaults();
    o.port = 0, o.model_name = "at-the-limit", o.max_concurrent = B2B_CLIENTS;
    ts_server *srv = NULL;
    CHECK(ts_server_start(&o, &en, &srv, NULL) == TS_OK, "start");
    if (!srv) return;
    pthread_t t[B2B_CLIENTS];
    b2b_client c[B2B_CLIENTS];
    for (int i = 0; i < B2B_CLIENTS; i++) {
        c[i] = (b2b_client){.port = ts_server_port(srv)};
        pthread_create(&t[i], NULL, b2b_thread, &c[i]);
    }
    int answered = 0, refused = 0;
    for (int i = 0; i < B2B_CLIENTS; i++) {
        pthread_join(t[i], NULL);
        answered += c[i].answered, refused += c[i].refused;
    }
    CHECK(answered == B2B_CLIENTS * B2B_ROUNDS && refused == 0, "back to back at the limit: %d of %d answered, %d refused",
          answered, B2B_CLIENTS * B2B_ROUNDS, refused);
    ts_server_shutdown(srv, 1.0);
    fake_destroy(&f);
}

typedef struct {
    int port;
    const char *body;
    http_resp r;
} fetch;

static void *fetch_thread(void *arg) {
    fetch *fe = arg;
    fe->r = request(fe->port, "POST", "/v1/completions", NULL, fe->body);
    return NULL;
}

/* Shutdown: a short request finishes inside the grace period; a long one is cancelled. */
static void test_shutdown(void) {
    fake_engine f;
    fake_init(&f, 0.02, 8);
    ts_engine en = fake_table(&f);
    ts_server_options o = ts_server_defaults();
    o.port = 0, o.model_name = "stop-me";
    ts_server *srv = NULL;
    CHECK(ts_server_start(&o, &en, &srv, NULL) == TS_OK, "start");
    if (!srv) return;
    int port = ts_server_port(srv);
    fetch quick = {.port = port, .body = "{\"prompt\":\"short\",\"stream\":true}"},
          slow = {.port = port, .body = "{\"prompt\":\"long~\",\"max_tokens\":1000}"};
    pthread_t tq, ts;
    pthread_create(&tq, NULL, fetch_thread, &quick);
    pthread_create(&ts, NULL, fetch_thread, &slow);
    for (int i = 0; i < 200 && fake_get(&f, &f.submitted) < 2; i++) nanosleep(&(struct timespec){0, 5000000}, NULL);
    double t0 = ts_time_seconds();
    ts_server_shutdown(srv, 0.5);
    double took = ts_time_seconds() - t0;
    pthread_join(tq, NULL);
    pthread_join(ts, NULL);
    sse_result s = parse_sse(quick.r.body.data, false);
    CHECK(s.done_last && !strcmp(s.text, "trohs") && !strcmp(s.finish, "stop"), "short request finished in the grace period: %s",
          quick.r.body.data);
    CHECK(slow.r.status == 503 && error_shaped(&slow.r, NULL, "shutting_down"), "long request cancelled: %d %s", slow.r.status,
          slow.r.body.data);
    CHECK(took >= 0.45 && took < 2.0, "shutdown took %.2f s (grace 0.5)", took);
    CHECK(fake_get(&f, &f.n_active) == 0 && fake_get(&f, &f.cancels) == 1, "engine idle after shutdown");
    CHECK(connect_to(port) < 0, "still accepting connections after shutdown");
    resp_free(&quick.r);
    resp_free(&slow.r);
    fake_destroy(&f);
}

static void test_bad_options(void) {
    fake_engine f = {0};
    ts_engine en = fake_table(&f);
    ts_server_options o = ts_server_defaults();
    ts_server *srv = NULL;
    ts_io_error err = {0};
    CHECK(ts_server_start(&o, &en, &srv, &err) == TS_ERR_INVALID_ARG && strstr(err.message, "model"), "no model name: %s",
          err.message);
    o.model_name = "m", o.port = 70000;
    CHECK(ts_server_start(&o, &en, &srv, &err) == TS_ERR_INVALID_ARG && !srv, "bad port: %s", err.message);
    o.port = 0, o.max_concurrent = 0;
    CHECK(ts_server_start(&o, &en, &srv, &err) == TS_ERR_INVALID_ARG && !srv, "no concurrency: %s", err.message);
}

int main(void) {
    /* SIGPIPE is left at its default: the server must survive writing to a client that left
     * (libmicrohttpd sends with MSG_NOSIGNAL), and the client here does the same. */
    double t0 = ts_time_seconds();
    test_default_template();
    test_bad_options();

    fake_engine f;
    fake_init(&f, 0.002, 100);
    ts_engine en = fake_table(&f);
    int template_calls = 0;
    ts_server_options o = ts_server_defaults();
    o.port = 0, o.model_name = "tiny-test", o.api_key = "sekret", o.max_body_bytes = 4096, o.max_prompt_tokens = 64,
    o.max_output_tokens = 64, o.max_concurrent = 16, o.request_timeout_s = 5;
    o.chat_template = last_user_message, o.chat_template_user = &template_calls;
    o.chat_end_of_turn = "|"; /* one token of the fake vocabulary */
    ts_server *srv = NULL;
    ts_io_error err = {0};
    CHECK(ts_server_start(&o, &en, &srv, &err) == TS_OK && ts_server_port(srv) > 0, "start: %s", err.message);
    if (srv) {
        int port = ts_server_port(srv);
        ts_server_options taken = o;
        taken.port = port;
        ts_server *second = NULL;
        CHECK(ts_server_start(&taken, &en, &second, &err) == TS_ERR_IO && !second, "port in use: %s", err.message);
        test_basic_endpoints(port);
        test_completions(port, &f);
        test_chat(port, &f, &template_calls);
        test_streaming(port);
        test_logprobs(port, &f);
        test_choices(port, &f);
        test_errors(port, &f);
        test_client_hangup(port, &f);
        test_concurrent(port);
        test_metrics(port);
        ts_server_shutdown(srv, 1.0);
    }
    fake_destroy(&f);
    test_limits();
    test_back_to_back();
    test_shutdown();
    printf("test_serve: %.2f s\n", ts_time_seconds() - t0);
    return check_summary("test_serve");
}
