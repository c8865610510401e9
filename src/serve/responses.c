/* responses.c - the JSON bodies the OpenAI API returns for a finished job, and the SSE events
 * of a streaming one ("data: {...}\n\n"; the stream ends with "data: [DONE]\n\n", written by
 * server.c). Shapes follow OpenAI: "text_completion" / "chat.completion" objects with one
 * choice and usage; chunks are "text_completion" / "chat.completion.chunk", the first chat
 * chunk carries the role, the last one finish_reason, and with stream_options.include_usage a
 * final chunk with empty choices carries usage. */
#include <stdlib.h>
#include <string.h>

#include "serve/serve_internal.h"

static json_t *usage_json(const job *j) {
    return json_pack("{s:i,s:i,s:i}", "prompt_tokens", (int)j->n_prompt, "completion_tokens", (int)j->n_read,
                     "total_tokens", (int)(j->n_prompt + j->n_read));
}

/* The fields every object and chunk starts with. */
static json_t *envelope(const job *j, const char *object, const char *model) {
    return json_pack("{s:s,s:s,s:I,s:s}", "id", j->id_str, "object", object, "created", (json_int_t)j->created, "model",
                     model);
}

static char *dump_and_free(json_t *root) {
    char *s = root ? json_dumps(root, JSON_COMPACT) : NULL;
    json_decref(root);
    return s;
}

char *response_json(const job *j, const char *model) {
    json_t *text = json_utf8_string(j->text.data ? j->text.data : "", j->text.n), *choice;
    if (j->chat)
        choice = json_pack("{s:i,s:{s:s,s:o},s:n,s:s}", "index", 0, "message", "role", "assistant", "content", text,
                           "logprobs", "finish_reason", j->finish_reason);
    else
        choice = json_pack("{s:i,s:o,s:n,s:s}", "index", 0, "text", text, "logprobs", "finish_reason", j->finish_reason);
    json_t *root = envelope(j, j->chat ? "chat.completion" : "text_completion", model);
    if (!root || !choice || json_object_set_new(root, "choices", json_pack("[o]", choice)) ||
        json_object_set_new(root, "usage", usage_json(j))) {
        json_decref(root);
        return NULL;
    }
    return dump_and_free(root);
}

static bool append_event(sbuf *out, json_t *root) {
    char *s = dump_and_free(root);
    bool ok = s && sbuf_printf(out, "data: %s\n\n", s);
    free(s);
    return ok;
}

bool sse_append_chunk(sbuf *out, const job *j, const char *model, size_t from, size_t to, bool role_only, bool finish) {
    json_t *text = json_utf8_string(j->text.data ? j->text.data + from : "", to - from), *choice;
    json_t *reason = finish ? json_string(j->finish_reason) : json_null();
    if (j->chat) {
        json_t *delta = role_only ? json_pack("{s:s,s:s}", "role", "assistant", "content", "")
                        : to > from ? json_pack("{s:O}", "content", text)
                                    : json_object();
        choice = json_pack("{s:i,s:o,s:n,s:o}", "index", 0, "delta", delta, "logprobs", "finish_reason", reason);
        json_decref(text);
    } else {
        choice = json_pack("{s:i,s:o,s:n,s:o}", "index", 0, "text", text, "logprobs", "finish_reason", reason);
    }
    json_t *root = envelope(j, j->chat ? "chat.completion.chunk" : "text_completion", model);
    if (!root || !choice || json_object_set_new(root, "choices", json_pack("[o]", choice))) {
        json_decref(root);
        return false;
    }
    return append_event(out, root);
}

bool sse_append_usage(sbuf *out, const job *j, const char *model) {
    json_t *root = envelope(j, j->chat ? "chat.completion.chunk" : "text_completion", model);
    if (!root || json_object_set_new(root, "choices", json_array()) || json_object_set_new(root, "usage", usage_json(j))) {
        json_decref(root);
        return false;
    }
    return append_event(out, root);
}

bool sse_append_error(sbuf *out, const api_error *e) {
    char *s = api_error_json(e);
    bool ok = s && sbuf_printf(out, "data: %s\n\n", s);
    free(s);
    return ok;
}
