/* responses.c - the JSON bodies the OpenAI API returns for a finished request (its jobs, one
 * per choice), and the SSE events of a streaming one ("data: {...}\n\n"; the stream ends with
 * "data: [DONE]\n\n", written by server.c). Shapes follow OpenAI: "text_completion" /
 * "chat.completion" objects with the choices (each with its index) and usage, in which the
 * prompt counts once; chunks are "text_completion" / "chat.completion.chunk" of one choice each,
 * a choice's first chat chunk carries the role, its last one finish_reason, and with
 * stream_options.include_usage a final chunk with empty choices carries usage.
 *
 * Log-probabilities, when asked, take each kind's shape: completions the legacy
 * {"tokens", "token_logprobs", "top_logprobs": [{text: logprob}], "text_offset"} (each
 * position's top_logprobs also holds the chosen token, as vLLM's do; when two tokens' texts
 * collide - bytes of broken UTF-8 all read U+FFFD - the chosen one, then the likelier, keeps
 * the key), chat
 * {"content": [{"token", "logprob", "bytes", "top_logprobs": [{"token", "logprob", "bytes"}]}]}.
 * A token's text is its bytes with invalid UTF-8 replaced (chat's "bytes" are exact); a
 * logprob of -inf is written -9999.0, OpenAI's stand-in. A streamed chunk carries the tokens
 * whose bytes start in the text it sends. With echo (completions) the prompt leads the text
 * and, with logprobs, its tokens lead the arrays, the first with null entries (nothing precedes
 * it), the text offsets counting the prompt's bytes; streamed, the prompt is a chunk of its own
 * before the choice's first generated text. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "serve/serve_internal.h"

/* The prompt counts once however many choices continue it. */
static json_t *usage_json(job *const *jobs, int n) {
    int completion = 0;
    for (int i = 0; i < n; i++) completion += jobs[i]->n_read;
    return json_pack("{s:i,s:i,s:i}", "prompt_tokens", (int)jobs[0]->n_prompt, "completion_tokens", completion,
                     "total_tokens", (int)jobs[0]->n_prompt + completion);
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

static json_t *logprob_value(float lp) {
    if (lp != lp) return json_null(); /* the engine reported none */
    return json_real(isinf(lp) ? -9999.0 : (double)lp);
}

/* One token's bytes into b (detokenized again: the job keeps ids, not bytes). */
static bool bytes_of(const job *j, int32_t id, ts_token_bytes *b) {
    ts_token_bytes_clear(b);
    return j->srv->engine.detokenize(j->srv->engine.self, id, b) == TS_OK;
}

/* One token's text as a JSON string (its bytes left in b). */
static json_t *token_text(const job *j, int32_t id, ts_token_bytes *b) {
    return bytes_of(j, id, b) ? json_utf8_string((const char *)b->data, b->n) : NULL;
}

/* Chat's {"token", "logprob", "bytes"} of one token. */
static json_t *chat_entry(const job *j, int32_t id, float lp, ts_token_bytes *b) {
    json_t *text = token_text(j, id, b), *bytes = text ? json_array() : NULL;
    for (size_t i = 0; bytes && i < b->n; i++) json_array_append_new(bytes, json_integer(b->data[i]));
    return json_pack("{s:o,s:o,s:o}", "token", text, "logprob", logprob_value(lp), "bytes", bytes);
}

static json_t *chat_logprobs(const job *j, int32_t from, int32_t to, ts_token_bytes *b) {
    json_t *content = json_array();
    for (int32_t i = from; content && i < to; i++) {
        const ts_token_logprobs *lp = &j->lps[i];
        json_t *entry = chat_entry(j, j->tokens[i], lp->logprob, b), *top = entry ? json_array() : NULL;
        bool ok = top && !json_object_set_new(entry, "top_logprobs", top); /* entry owns top either way */
        for (int32_t k = 0; ok && k < lp->n_top; k++)
            ok = !json_array_append_new(top, chat_entry(j, lp->top_ids[k], lp->top_logprobs[k], b));
        if (!ok || json_array_append_new(content, entry)) {
            if (!ok) json_decref(entry);
            json_decref(content);
            return NULL;
        }
    }
    return json_pack("{s:o}", "content", content);
}

/* Appends one token to the legacy shape's four arrays: its text, its logprob and top_logprobs
 * (null both for the prompt's first token, lp NULL), its offset in the text. */
static bool append_completion_token(const job *j, json_t *root, int32_t id, const ts_token_logprobs *lp, size_t offset,
                                    ts_token_bytes *b) {
    json_t *text = token_text(j, id, b), *top = lp ? json_object() : json_null();
    bool ok = text && top && (!lp || !json_object_set_new(top, json_string_value(text), logprob_value(lp->logprob)));
    for (int32_t k = 0; ok && lp && k < lp->n_top; k++) { /* texts can collide (bytes of broken UTF-8): the first stays */
        json_t *alt = token_text(j, lp->top_ids[k], b);
        ok = alt && (json_object_get(top, json_string_value(alt)) ||
                     !json_object_set_new(top, json_string_value(alt), logprob_value(lp->top_logprobs[k])));
        json_decref(alt);
    }
    if (!ok) {
        json_decref(text);
        json_decref(top);
        return false;
    }
    return !json_array_append_new(json_object_get(root, "tokens"), text) &&
           !json_array_append_new(json_object_get(root, "token_logprobs"), lp ? logprob_value(lp->logprob) : json_null()) &&
           !json_array_append_new(json_object_get(root, "top_logprobs"), top) &&
           !json_array_append_new(json_object_get(root, "text_offset"), json_integer((json_int_t)offset));
}

/* Tokens [from, to), led by the prompt's when with_prompt (echo); with echo the offsets count
 * the prompt's bytes. */
static json_t *completion_logprobs(const job *j, int32_t from, int32_t to, bool with_prompt, ts_token_bytes *b) {
    json_t *root = json_pack("{s:[],s:[],s:[],s:[]}", "tokens", "token_logprobs", "top_logprobs", "text_offset");
    bool ok = root != NULL;
    for (int32_t i = 0; ok && with_prompt && i < j->n_prompt; i++)
        ok = append_completion_token(j, root, j->prompt_ids[i], i ? &j->prompt_lps[i] : NULL, j->prompt_offsets[i], b);
    size_t lead = j->echo ? j->prompt_text.n : 0;
    for (int32_t i = from; ok && i < to; i++)
        ok = append_completion_token(j, root, j->tokens[i], &j->lps[i], lead + j->offsets[i], b);
    if (!ok) {
        json_decref(root);
        return NULL;
    }
    return root;
}

/* Tokens [from, to)'s logprobs in the job's kind's shape (with_prompt: the echoed prompt's
 * first); JSON null without them, NULL on failure. */
static json_t *logprobs_json(const job *j, int32_t from, int32_t to, bool with_prompt) {
    if (!j->lps || (from >= to && !with_prompt)) return json_null();
    ts_token_bytes b = {0};
    json_t *v = j->chat ? chat_logprobs(j, from, to, &b) : completion_logprobs(j, from, to, with_prompt, &b);
    ts_token_bytes_free(&b);
    return v;
}

static json_t *choice_json(const job *j) {
    json_t *text;
    if (j->echo) { /* the prompt, then the completion */
        sbuf both = {0};
        bool ok = sbuf_append(&both, j->prompt_text.data ? j->prompt_text.data : "", j->prompt_text.n) &&
                  sbuf_append(&both, j->text.data ? j->text.data : "", j->text.n);
        text = ok ? json_utf8_string(both.data ? both.data : "", both.n) : NULL;
        sbuf_free(&both);
    } else {
        text = json_utf8_string(j->text.data ? j->text.data : "", j->text.n);
    }
    if (j->chat)
        return json_pack("{s:i,s:{s:s,s:o},s:o,s:s}", "index", j->index, "message", "role", "assistant", "content", text,
                         "logprobs", logprobs_json(j, 0, j->n_kept, false), "finish_reason", j->finish_reason);
    return json_pack("{s:i,s:o,s:o,s:s}", "index", j->index, "text", text, "logprobs",
                     logprobs_json(j, 0, j->n_kept, j->echo), "finish_reason", j->finish_reason);
}

char *response_json(job *const *jobs, int n, const char *model) {
    json_t *root = envelope(jobs[0], jobs[0]->chat ? "chat.completion" : "text_completion", model), *choices = json_array();
    bool ok = root && choices && !json_object_set_new(root, "choices", choices);
    for (int i = 0; ok && i < n; i++) ok = !json_array_append_new(choices, choice_json(jobs[i]));
    if (!ok || json_object_set_new(root, "usage", usage_json(jobs, n))) {
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

bool sse_append_chunk(sbuf *out, job *j, const char *model, size_t from, size_t to, bool role_only, bool finish) {
    json_t *text = json_utf8_string(j->text.data ? j->text.data + from : "", to - from), *choice;
    json_t *reason = finish ? json_string(j->finish_reason) : json_null();
    int32_t first = j->n_lp_sent, last = first;
    if (j->lps && !role_only)
        while (last < j->n_kept && (finish || j->offsets[last] < to)) last++;
    json_t *lps = logprobs_json(j, first, last, false);
    j->n_lp_sent = last;
    if (j->chat) {
        json_t *delta = role_only ? json_pack("{s:s,s:s}", "role", "assistant", "content", "")
                        : to > from ? json_pack("{s:O}", "content", text)
                                    : json_object();
        choice = json_pack("{s:i,s:o,s:o,s:o}", "index", j->index, "delta", delta, "logprobs", lps, "finish_reason", reason);
        json_decref(text);
    } else {
        choice = json_pack("{s:i,s:o,s:o,s:o}", "index", j->index, "text", text, "logprobs", lps, "finish_reason", reason);
    }
    json_t *root = envelope(j, j->chat ? "chat.completion.chunk" : "text_completion", model);
    if (!root || !choice || json_object_set_new(root, "choices", json_pack("[o]", choice))) {
        json_decref(root);
        return false;
    }
    return append_event(out, root);
}

bool sse_append_echo(sbuf *out, const job *j, const char *model) {
    json_t *choice = json_pack("{s:i,s:o,s:o,s:n}", "index", j->index, "text",
                               json_utf8_string(j->prompt_text.data ? j->prompt_text.data : "", j->prompt_text.n),
                               "logprobs", logprobs_json(j, 0, 0, true), "finish_reason");
    json_t *root = envelope(j, "text_completion", model);
    if (!root || !choice || json_object_set_new(root, "choices", json_pack("[o]", choice))) {
        json_decref(root);
        return false;
    }
    return append_event(out, root);
}

bool sse_append_usage(sbuf *out, job *const *jobs, int n, const char *model) {
    json_t *root = envelope(jobs[0], jobs[0]->chat ? "chat.completion.chunk" : "text_completion", model);
    if (!root || json_object_set_new(root, "choices", json_array()) ||
        json_object_set_new(root, "usage", usage_json(jobs, n))) {
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
