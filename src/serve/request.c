/* request.c - reading an OpenAI completions / chat completions request body into gen_params,
 * checking every field it uses (type and range) so that a bad request gets a 400 naming the
 * field, and the OpenAI error shape. Fields this server cannot honour (best_of other than n,
 * echo in a chat, suffix, tools) are refused rather than silently ignored; other unknown fields
 * are ignored, as OpenAI's own API does. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "serve/serve_internal.h"

void api_error_set(api_error *e, int status, const char *type, const char *param, const char *code, const char *fmt, ...) {
    e->status = status;
    e->type = type;
    e->param = param;
    e->code = code;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->message, sizeof e->message, fmt, ap);
    va_end(ap);
}

char *api_error_json(const api_error *e) {
    json_t *msg = json_utf8_string(e->message, strlen(e->message));
    json_t *root = json_pack("{s:{s:o?,s:s,s:s?,s:s?}}", "error", "message", msg, "type", e->type, "param", e->param,
                             "code", e->code);
    char *s = root ? json_dumps(root, JSON_COMPACT) : NULL;
    json_decref(root);
    return s;
}

static bool bad(api_error *e, const char *param, const char *fmt, const char *what) {
    api_error_set(e, 400, "invalid_request_error", param, NULL, fmt, what);
    return false;
}

/* A number field into *out when present and not null; false (and e) on a wrong type. */
static bool get_number(json_t *body, const char *key, float *out, api_error *e) {
    json_t *v = json_object_get(body, key);
    if (!v || json_is_null(v)) return true;
    if (!json_is_number(v)) return bad(e, key, "'%s' must be a number", key);
    *out = (float)json_number_value(v);
    return true;
}

static bool get_int(json_t *body, const char *key, json_int_t *out, bool *present, api_error *e) {
    json_t *v = json_object_get(body, key);
    if (present) *present = v && !json_is_null(v);
    if (!v || json_is_null(v)) return true;
    if (!json_is_integer(v)) return bad(e, key, "'%s' must be an integer", key);
    *out = json_integer_value(v);
    return true;
}

static bool get_bool(json_t *body, const char *key, bool *out, api_error *e) {
    json_t *v = json_object_get(body, key);
    if (!v || json_is_null(v)) return true;
    if (!json_is_boolean(v)) return bad(e, key, "'%s' must be true or false", key);
    *out = json_is_true(v);
    return true;
}

/* OpenAI's "logit_bias": {"<token id>": bias, ...}; the range of each bias is checked with
 * the other sampling parameters, the ids against the vocabulary by the engine. */
static bool parse_logit_bias(json_t *body, ts_sampling_params *s, api_error *e) {
    json_t *v = json_object_get(body, "logit_bias"), *bias;
    if (!v || json_is_null(v)) return true;
    if (!json_is_object(v) || json_object_size(v) > TS_SAMPLING_MAX_LOGIT_BIAS)
        return bad(e, "logit_bias", "'%s' must be an object of up to 300 \"token id\": bias entries", "logit_bias");
    const char *key;
    json_object_foreach(v, key, bias) {
        char *end;
        long long id = strtoll(key, &end, 10);
        if (!*key || *end || id < 0 || id > INT32_MAX || !json_is_number(bias))
            return bad(e, "logit_bias", "'%s' maps token ids (decimal strings) to numbers", "logit_bias");
        s->logit_bias[s->n_logit_bias++] = (ts_logit_bias){(int32_t)id, (float)json_number_value(bias)};
    }
    return true;
}

static bool parse_sampling(json_t *body, gen_params *p, api_error *e) {
    ts_sampling_params *s = &p->sampling;
    *s = ts_sampling_defaults();
    json_int_t top_k = 0, seed = 0;
    if (!get_number(body, "temperature", &s->temperature, e) || !get_number(body, "top_p", &s->top_p, e) ||
        !get_number(body, "min_p", &s->min_p, e) || !get_number(body, "repetition_penalty", &s->repetition_penalty, e) ||
        !get_number(body, "frequency_penalty", &s->frequency_penalty, e) ||
        !get_number(body, "presence_penalty", &s->presence_penalty, e) || !get_int(body, "top_k", &top_k, NULL, e) ||
        !get_int(body, "seed", &seed, &p->has_seed, e))
        return false;
    if (top_k < -1 || top_k > INT32_MAX) return bad(e, "top_k", "'%s' must be -1 or 0 (off), or a positive count", "top_k");
    s->top_k = top_k < 0 ? 0 : (int32_t)top_k; /* -1 means off, as in vLLM */
    s->seed = (uint64_t)seed;
    if (!parse_logit_bias(body, s, e)) return false;
    const char *param = NULL, *msg = ts_sampling_params_check(s, &param);
    if (msg) return bad(e, param, "%s", msg);
    return true;
}

static bool parse_stop(json_t *body, gen_params *p, api_error *e) {
    json_t *v = json_object_get(body, "stop");
    if (!v || json_is_null(v)) return true;
    if (json_is_string(v)) {
        if (json_string_length(v) == 0) return bad(e, "stop", "'%s' strings must not be empty", "stop");
        p->stops[p->n_stops++] = json_string_value(v);
        return true;
    }
    if (!json_is_array(v) || json_array_size(v) > MAX_STOPS)
        return bad(e, "stop", "'%s' must be a string or an array of up to 4 strings", "stop");
    size_t i;
    json_t *s;
    json_array_foreach(v, i, s) {
        if (!json_is_string(s) || json_string_length(s) == 0)
            return bad(e, "stop", "'%s' must hold non-empty strings", "stop");
        p->stops[p->n_stops++] = json_string_value(s);
    }
    return true;
}

/* "n" choices (1..MAX_CHOICES); "best_of" only as n itself (nothing is ranked). */
static bool parse_choices(json_t *body, gen_params *p, api_error *e) {
    json_int_t n = 1, best_of = 0;
    bool has_best_of = false;
    if (!get_int(body, "n", &n, NULL, e) || !get_int(body, "best_of", &best_of, &has_best_of, e)) return false;
    if (n < 1 || n > MAX_CHOICES) return bad(e, "n", "'%s' must be between 1 and 16", "n");
    if (has_best_of && best_of != n) return bad(e, "best_of", "'%s' must equal n (choices are not ranked)", "best_of");
    p->n_choices = (int)n;
    return true;
}

/* Refuses the OpenAI features this server does not implement. */
static bool refuse_unsupported(json_t *body, api_error *e) {
    static const char *const unsupported[] = {"suffix", "tools", "functions"};
    for (size_t i = 0; i < sizeof unsupported / sizeof unsupported[0]; i++) {
        json_t *v = json_object_get(body, unsupported[i]);
        bool empty = !v || json_is_null(v) || json_is_false(v) || (json_is_array(v) && json_array_size(v) == 0) ||
                     (json_is_object(v) && json_object_size(v) == 0);
        if (!empty) return bad(e, unsupported[i], "'%s' is not supported by this server", unsupported[i]);
    }
    return true;
}

/* Completions: "logprobs": the number of alternatives (0..20), null for none. Chat: "logprobs":
 * true to report them, "top_logprobs" (0..20, only with it) alternatives per token. */
static bool parse_logprobs(json_t *body, bool chat, gen_params *p, api_error *e) {
    json_int_t n = 0;
    bool want = false, has_top = false;
    if (chat ? !get_bool(body, "logprobs", &want, e) || !get_int(body, "top_logprobs", &n, &has_top, e)
             : !get_int(body, "logprobs", &n, &want, e))
        return false;
    const char *name = chat ? "top_logprobs" : "logprobs";
    if (has_top && !want) return bad(e, "top_logprobs", "'%s' needs \"logprobs\": true", "top_logprobs");
    if (n < 0 || n > TS_MAX_TOP_LOGPROBS) return bad(e, name, "'%s' must be between 0 and 20", name);
    p->logprobs = want;
    p->top_logprobs = (int32_t)n;
    return true;
}

/* vLLM's "stop_token_ids": ids that end the generation like the EOS. One place stays free
 * for the chat's end of turn. */
static bool parse_stop_ids(json_t *body, gen_params *p, api_error *e) {
    json_t *v = json_object_get(body, "stop_token_ids");
    if (!v || json_is_null(v)) return true;
    if (!json_is_array(v) || json_array_size(v) > TS_GEN_MAX_STOP_IDS - 1)
        return bad(e, "stop_token_ids", "'%s' must be an array of up to 7 token ids", "stop_token_ids");
    size_t i;
    json_t *id;
    json_array_foreach(v, i, id) {
        if (!json_is_integer(id) || json_integer_value(id) < 0 || json_integer_value(id) > INT32_MAX)
            return bad(e, "stop_token_ids", "'%s' must hold non-negative integers", "stop_token_ids");
        p->stop_ids[p->n_stop_ids++] = (int32_t)json_integer_value(id);
    }
    return true;
}

/* A completions prompt: a string, an array of one string, or an array of token ids. */
static bool parse_prompt(json_t *body, gen_params *p, api_error *e) {
    json_t *v = json_object_get(body, "prompt");
    if (json_is_array(v) && json_array_size(v) == 1 && json_is_string(json_array_get(v, 0))) v = json_array_get(v, 0);
    if (json_is_string(v)) {
        p->prompt_text = strdup(json_string_value(v));
        if (!p->prompt_text) api_error_set(e, 500, "server_error", NULL, NULL, "out of memory");
        return p->prompt_text != NULL;
    }
    if (!json_is_array(v) || json_array_size(v) == 0)
        return bad(e, "prompt", "'%s' must be a string or a non-empty array of token ids", "prompt");
    p->n_prompt_ids = json_array_size(v);
    p->prompt_ids = malloc(p->n_prompt_ids * sizeof *p->prompt_ids);
    if (!p->prompt_ids) {
        api_error_set(e, 500, "server_error", NULL, NULL, "out of memory");
        return false;
    }
    size_t i;
    json_t *id;
    json_array_foreach(v, i, id) {
        if (!json_is_integer(id) || json_integer_value(id) < 0 || json_integer_value(id) > INT32_MAX)
            return bad(e, "prompt", "'%s' must be one string or one array of token ids (batches are not supported)",
                       "prompt");
        p->prompt_ids[i] = (int32_t)json_integer_value(id);
    }
    return true;
}

/* A message's content: a string, or an array of {"type": "text", "text": ...} parts (joined). */
static bool message_text(json_t *content, bool may_be_null, sbuf *out, api_error *e) {
    if (json_is_string(content)) return sbuf_append(out, json_string_value(content), json_string_length(content));
    if (may_be_null && (!content || json_is_null(content))) return sbuf_append(out, "", 0);
    if (!json_is_array(content)) return bad(e, "messages", "a message's '%s' must be a string or an array of text parts", "content");
    size_t i;
    json_t *part;
    json_array_foreach(content, i, part) {
        json_t *text = json_object_get(part, "text");
        if (!json_is_string(json_object_get(part, "type")) || strcmp(json_string_value(json_object_get(part, "type")), "text") ||
            !json_is_string(text))
            return bad(e, "messages", "only text content parts are supported (%s)", "type \"text\" with a string \"text\"");
        if (!sbuf_append(out, json_string_value(text), json_string_length(text))) return false;
    }
    return true;
}

static bool parse_messages(json_t *body, const ts_server_options *opt, gen_params *p, api_error *e) {
    json_t *msgs = json_object_get(body, "messages");
    if (!json_is_array(msgs) || json_array_size(msgs) == 0)
        return bad(e, "messages", "'%s' must be a non-empty array of messages", "messages");
    size_t n = json_array_size(msgs);
    ts_chat_message *cm = calloc(n, sizeof *cm);
    sbuf *texts = calloc(n, sizeof *texts);
    bool ok = cm && texts;
    if (!ok) api_error_set(e, 500, "server_error", NULL, NULL, "out of memory");
    for (size_t i = 0; ok && i < n; i++) {
        json_t *m = json_array_get(msgs, i), *role = json_object_get(m, "role");
        const char *r = json_is_string(role) ? json_string_value(role) : "";
        if (!strcmp(r, "developer")) r = "system";
        if (strcmp(r, "system") && strcmp(r, "user") && strcmp(r, "assistant")) {
            ok = bad(e, "messages", "each message needs a 'role' of system, user or assistant (%s)",
                     json_is_string(role) ? "got another" : "missing");
            break;
        }
        e->status = 0;
        ok = message_text(json_object_get(m, "content"), !strcmp(r, "assistant"), &texts[i], e);
        if (!ok && e->status == 0) api_error_set(e, 500, "server_error", NULL, NULL, "out of memory");
        cm[i] = (ts_chat_message){r, texts[i].data ? texts[i].data : ""};
    }
    if (ok) {
        ts_chat_template_fn tpl = opt->chat_template ? opt->chat_template : ts_chat_template_deepseek;
        p->prompt_text = tpl(opt->chat_template_user, cm, n);
        if (!p->prompt_text) ok = false, api_error_set(e, 500, "server_error", NULL, NULL, "chat template failed");
    }
    for (size_t i = 0; texts && i < n; i++) sbuf_free(&texts[i]);
    free(texts);
    free(cm);
    return ok;
}

bool gen_params_parse(json_t *body, bool chat, const ts_server_options *opt, gen_params *p, api_error *e) {
    *p = (gen_params){.chat = chat, .max_tokens = -1};
    if (!json_is_object(body)) return bad(e, NULL, "the request body must be a JSON object%s", "");
    json_t *model = json_object_get(body, "model");
    if (model && !json_is_null(model) && !json_is_string(model)) return bad(e, "model", "'%s' must be a string", "model");
    if (json_is_string(model) && strcmp(json_string_value(model), opt->model_name) != 0) {
        api_error_set(e, 404, "invalid_request_error", "model", "model_not_found", "The model '%.100s' does not exist",
                      json_string_value(model));
        return false;
    }
    json_int_t max_tokens = 0;
    bool has_max = false, has_mct = false;
    if (!refuse_unsupported(body, e) || !parse_choices(body, p, e) || !get_bool(body, "stream", &p->stream, e) ||
        !parse_sampling(body, p, e) ||
        !parse_stop(body, p, e) || !parse_stop_ids(body, p, e) || !parse_logprobs(body, chat, p, e) ||
        !get_int(body, "max_tokens", &max_tokens, &has_max, e) ||
        (chat && !has_max && !get_int(body, "max_completion_tokens", &max_tokens, &has_mct, e)))
        return false;
    const char *mt_name = has_mct ? "max_completion_tokens" : "max_tokens";
    if (has_max || has_mct) {
        if (max_tokens < 1) return bad(e, mt_name, "'%s' must be at least 1", mt_name);
        if (max_tokens > opt->max_output_tokens) {
            api_error_set(e, 400, "invalid_request_error", mt_name, NULL, "'%s' is %lld; this server allows at most %d",
                          mt_name, (long long)max_tokens, (int)opt->max_output_tokens);
            return false;
        }
        p->max_tokens = (int32_t)max_tokens;
    }
    if (!get_bool(body, "echo", &p->echo, e)) return false;
    if (p->echo && chat) return bad(e, "echo", "'%s' is supported for completions", "echo");
    json_t *so = json_object_get(body, "stream_options");
    if (so && !json_is_null(so)) {
        if (!json_is_object(so)) return bad(e, "stream_options", "'%s' must be an object", "stream_options");
        if (!get_bool(so, "include_usage", &p->include_usage, e)) return false;
    }
    return chat ? parse_messages(body, opt, p, e) : parse_prompt(body, p, e);
}

void gen_params_free(gen_params *p) {
    free(p->prompt_text);
    free(p->prompt_ids);
    *p = (gen_params){0};
}
