/* http_client.c - the small HTTP/1.1 client of serve_internal.h: one request per connection,
 * the response de-chunked as it arrives and its Server-Sent Events handed to a callback the
 * moment each is complete, stamped with its arrival time. `tessera bench serve` drives a
 * server with it; it speaks exactly what server.c writes (chunked SSE, "\n\n" between events). */
#include <errno.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "serve/serve_internal.h"

/* The response as it is read: raw bytes, and how far the headers, the body framing and the
 * events have been taken. */
typedef struct {
    sbuf raw;
    size_t pos;        /* next raw byte to decode (after the headers) */
    bool headers_done, chunked, in_chunk_data, need_crlf;
    long long content_length; /* -1: until the connection closes */
    size_t chunk_left;
    size_t event_pos;  /* next body byte to scan for an event's end */
    sbuf event;        /* one event's data (reused) */
} reader;

static int connect_to(const char *host, int port, double timeout_s, char *err, size_t err_size) {
    char service[16];
    snprintf(service, sizeof service, "%d", port);
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *res = NULL;
    int rc = getaddrinfo(host, service, &hints, &res);
    if (rc != 0) {
        ts_error_printf(err, err_size, "%s: %s", host, gai_strerror(rc));
        return -1;
    }
    int fd = -1;
    for (struct addrinfo *a = res; a && fd < 0; a = a->ai_next) {
        fd = socket(a->ai_family, a->ai_socktype, a->ai_protocol);
        if (fd < 0) continue;
        struct timeval tv = {.tv_sec = (time_t)timeout_s, .tv_usec = (suseconds_t)((timeout_s - (double)(time_t)timeout_s) * 1e6)};
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
        if (connect(fd, a->ai_addr, a->ai_addrlen) != 0) {
            close(fd);
            fd = -1;
        }
    }
    if (fd < 0) ts_error_printf(err, err_size, "cannot connect to %s:%d: %s", host, port, strerror(errno));
    freeaddrinfo(res);
    return fd;
}

static bool send_all(int fd, const char *p, size_t n) {
    while (n > 0) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w <= 0) return false;
        p += w;
        n -= (size_t)w;
    }
    return true;
}

/* A header's value (case-insensitive name) in the header block [start, end), or NULL. */
static const char *header_value(const char *start, const char *end, const char *name) {
    size_t len = strlen(name);
    for (const char *p = start; p && p < end; p = strstr(p, "\r\n") ? strstr(p, "\r\n") + 2 : NULL)
        if ((size_t)(end - p) > len && !strncasecmp(p, name, len) && p[len] == ':') return p + len + 1;
    return NULL;
}

static bool parse_headers(reader *rd, http_response *out) {
    char *end = strstr(rd->raw.data, "\r\n\r\n");
    if (!end) return true; /* not all here yet */
    rd->headers_done = true;
    rd->pos = (size_t)(end - rd->raw.data) + 4;
    if (sscanf(rd->raw.data, "HTTP/1.%*d %d", &out->status) != 1) out->status = 0;
    const char *te = header_value(rd->raw.data, end, "Transfer-Encoding");
    const char *cl = header_value(rd->raw.data, end, "Content-Length");
    const char *ct = header_value(rd->raw.data, end, "Content-Type");
    rd->chunked = te && strstr(te, "chunked") && strstr(te, "chunked") < strstr(te, "\r\n");
    rd->content_length = cl ? atoll(cl) : -1;
    out->event_stream = ct && strstr(ct, "text/event-stream") && strstr(ct, "text/event-stream") < strstr(ct, "\r\n");
    if (!rd->chunked && rd->content_length == 0) out->complete = true;
    return sbuf_append(&out->body, "", 0);
}

/* Moves what has arrived of a chunked body into out->body; sets complete at the last chunk. */
static bool dechunk(reader *rd, http_response *out) {
    while (!out->complete && rd->pos < rd->raw.n) {
        const char *p = rd->raw.data + rd->pos;
        size_t avail = rd->raw.n - rd->pos;
        if (rd->need_crlf) { /* the CRLF after a chunk's data */
            if (avail < 2) return true;
            rd->pos += 2;
            rd->need_crlf = false;
        } else if (rd->in_chunk_data) {
            size_t take = avail < rd->chunk_left ? avail : rd->chunk_left;
            if (!sbuf_append(&out->body, p, take)) return false;
            rd->pos += take;
            rd->chunk_left -= take;
            if (rd->chunk_left == 0) rd->in_chunk_data = false, rd->need_crlf = true;
        } else { /* a size line */
            const char *eol = memchr(p, '\n', avail);
            if (!eol) return true;
            rd->chunk_left = strtoul(p, NULL, 16);
            rd->pos += (size_t)(eol - p) + 1;
            if (rd->chunk_left == 0) out->complete = true; /* trailers, if any, are not read */
            else rd->in_chunk_data = true;
        }
    }
    return true;
}

/* Hands every event completed in the body so far to on_event. */
static bool emit_events(reader *rd, http_response *out, http_event_fn on_event, void *user) {
    double t = ts_time_seconds();
    for (;;) {
        char *start = out->body.data + rd->event_pos, *end = strstr(start, "\n\n");
        if (!end) return true;
        rd->event.n = 0;
        bool ok = sbuf_append(&rd->event, "", 0);
        for (char *line = start; ok && line < end;) {
            char *eol = memchr(line, '\n', (size_t)(end - line));
            if (!eol) eol = end;
            if (!strncmp(line, "data:", 5)) {
                const char *v = line + 5 + (line[5] == ' ');
                if (rd->event.n) ok = sbuf_append(&rd->event, "\n", 1);
                ok = ok && sbuf_append(&rd->event, v, (size_t)(eol - v));
            }
            line = eol + 1;
        }
        if (!ok) return false;
        if (start[0] != ':') on_event(user, rd->event.data, rd->event.n, t);
        rd->event_pos = (size_t)(end - out->body.data) + 2;
    }
}

/* Decodes what has arrived; false when out of memory. */
static bool take_bytes(reader *rd, http_response *out, http_event_fn on_event, void *user) {
    if (!rd->headers_done && !parse_headers(rd, out)) return false;
    if (!rd->headers_done) return true;
    if (rd->chunked) {
        if (!dechunk(rd, out)) return false;
    } else {
        if (!sbuf_append(&out->body, rd->raw.data + rd->pos, rd->raw.n - rd->pos)) return false;
        rd->pos = rd->raw.n;
        if (rd->content_length >= 0 && (long long)out->body.n >= rd->content_length) out->complete = true;
    }
    return !out->event_stream || !on_event || emit_events(rd, out, on_event, user);
}

bool http_request(const char *host, int port, const char *method, const char *path, const char *extra_headers,
                  const char *body, size_t body_len, double timeout_s, http_event_fn on_event, void *user,
                  http_response *out, char *err, size_t err_size) {
    *out = (http_response){0};
    int fd = connect_to(host, port, timeout_s, err, err_size);
    if (fd < 0) return false;
    reader rd = {.content_length = -1};
    bool ok = sbuf_printf(&rd.raw,
                          "%s %s HTTP/1.1\r\nHost: %s:%d\r\nConnection: close\r\n%sContent-Type: application/json\r\n"
                          "Content-Length: %zu\r\n\r\n",
                          method, path, host, port, extra_headers ? extra_headers : "", body ? body_len : 0);
    ok = ok && send_all(fd, rd.raw.data, rd.raw.n) && (!body || send_all(fd, body, body_len));
    if (!ok) ts_error_printf(err, err_size, "sending the request failed: %s", strerror(errno));
    rd.raw.n = 0;
    char chunk[16384];
    while (ok && !out->complete) {
        ssize_t got = recv(fd, chunk, sizeof chunk, 0);
        if (got <= 0) {
            if (got < 0) ts_error_printf(err, err_size, "receiving failed: %s", strerror(errno));
            else if (rd.headers_done && !rd.chunked && rd.content_length < 0) out->complete = true; /* ends at close */
            else ts_error_printf(err, err_size, "the connection closed before the response was complete");
            ok = out->complete;
            break;
        }
        ok = sbuf_append(&rd.raw, chunk, (size_t)got) && take_bytes(&rd, out, on_event, user);
        if (!ok) ts_error_printf(err, err_size, "out of memory");
    }
    close(fd);
    sbuf_free(&rd.raw);
    sbuf_free(&rd.event);
    return ok;
}

void http_response_free(http_response *r) {
    sbuf_free(&r->body);
    *r = (http_response){0};
}
