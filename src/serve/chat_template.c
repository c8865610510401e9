/* chat_template.c - chat templates (serve.h): conversation -> prompt text. A model directory's
 * tokenizer_config.json carries a Jinja `chat_template`; rather than embed a Jinja engine we
 * recognise the family a template belongs to by the markers it writes and render that family
 * with a built-in renderer below. DeepSeek-V3's format is the default and the fallback. The
 * special tokens are written as text; the tokenizer (parsing special tokens) turns them into
 * their ids. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "serve/serve_internal.h"

#define DS_BOS "<\xEF\xBD\x9C" "begin\xE2\x96\x81of\xE2\x96\x81sentence\xEF\xBD\x9C>"
#define DS_EOS "<\xEF\xBD\x9C" "end\xE2\x96\x81of\xE2\x96\x81sentence\xEF\xBD\x9C>"
#define DS_USER "<\xEF\xBD\x9CUser\xEF\xBD\x9C>"
#define DS_ASSISTANT "<\xEF\xBD\x9C" "Assistant\xEF\xBD\x9C>"

/* Per family, in ts_chat_family's order (which is also the detection priority: Llama 2 before
 * Mistral): its name, the markers that identify its template (all of a set must occur; a
 * second set is an alternative), and its usual BOS / EOS. */
typedef struct {
    ts_chat_family family;
    const char *name;
    const char *markers[2][2];
    const char *bos, *eos;
} family_info;

static const family_info families[] = {
    {TS_CHAT_DEEPSEEK, "deepseek", {{DS_USER, NULL}, {DS_ASSISTANT, NULL}}, DS_BOS, DS_EOS},
    {TS_CHAT_CHATML, "chatml", {{"<|im_start|>", NULL}, {NULL, NULL}}, "", "<|im_end|>"},
    {TS_CHAT_LLAMA3, "llama3", {{"<|start_header_id|>", NULL}, {NULL, NULL}}, "<|begin_of_text|>", "<|eot_id|>"},
    {TS_CHAT_GEMMA, "gemma", {{"<start_of_turn>", NULL}, {NULL, NULL}}, "<bos>", "<eos>"},
    {TS_CHAT_LLAMA2, "llama2", {{"[INST]", "<<SYS>>"}, {NULL, NULL}}, "<s>", "</s>"},
    {TS_CHAT_MISTRAL, "mistral", {{"[INST]", NULL}, {NULL, NULL}}, "<s>", "</s>"},
    {TS_CHAT_PHI3, "phi3", {{"<|assistant|>", "<|end|>"}, {NULL, NULL}}, "", "<|endoftext|>"},
};

#define N_FAMILIES ((int)(sizeof families / sizeof families[0]))

/* The row of family f (a value outside the enum gets DeepSeek's). */
static const family_info *family_of(ts_chat_family f) {
    return &families[(int)f >= 0 && (int)f < N_FAMILIES ? (int)f : TS_CHAT_DEEPSEEK];
}

const char *ts_chat_family_name(ts_chat_family f) { return family_of(f)->name; }

static bool has_markers(const char *tpl, const char *const set[2]) {
    if (!set[0]) return false;
    return strstr(tpl, set[0]) && (!set[1] || strstr(tpl, set[1]));
}

static const family_info *detect(const char *tpl) {
    for (int i = 0; i < N_FAMILIES; i++)
        if (has_markers(tpl, families[i].markers[0]) || has_markers(tpl, families[i].markers[1])) return &families[i];
    return NULL;
}

/* ---------------------------------------------------------------- rendering */

static bool is_role(const ts_chat_message *m, const char *role) { return strcmp(m->role, role) == 0; }

static bool put(sbuf *b, const char *s) { return sbuf_append(b, s, strlen(s)); }

/* s without leading and trailing whitespace (Jinja's `trim`). */
static bool put_trimmed(sbuf *b, const char *s) {
    size_t n = strlen(s);
    while (n && strchr(" \t\r\n", s[n - 1])) n--;
    size_t i = 0;
    while (i < n && strchr(" \t\r\n", s[i])) i++;
    return sbuf_append(b, s + i, n - i);
}

/* The system messages joined by "\n\n" (families that have no system turn fold them into the
 * first user message or a preamble); false only when out of memory. */
static bool join_system(const ts_chat_message *msgs, size_t n, sbuf *out) {
    bool ok = true, first = true;
    for (size_t i = 0; ok && i < n; i++) {
        if (!is_role(&msgs[i], "system")) continue;
        if (!first) ok = put(out, "\n\n");
        ok = ok && put(out, msgs[i].content);
        first = false;
    }
    if (ok && !out->data) ok = sbuf_append(out, "", 0);
    return ok;
}

static bool render_deepseek(const ts_chat_template *t, const ts_chat_message *msgs, size_t n, sbuf *out) {
    bool ok = put(out, t->bos) && join_system(msgs, n, out);
    for (size_t i = 0; ok && i < n; i++) {
        if (is_role(&msgs[i], "user")) ok = sbuf_printf(out, DS_USER "%s", msgs[i].content);
        else if (is_role(&msgs[i], "assistant")) ok = sbuf_printf(out, DS_ASSISTANT "%s%s", msgs[i].content, t->eos);
    }
    return ok && put(out, DS_ASSISTANT);
}

static bool render_chatml(const ts_chat_template *t, const ts_chat_message *msgs, size_t n, sbuf *out) {
    bool ok = put(out, t->bos);
    for (size_t i = 0; ok && i < n; i++)
        ok = sbuf_printf(out, "<|im_start|>%s\n%s<|im_end|>\n", msgs[i].role, msgs[i].content);
    return ok && put(out, "<|im_start|>assistant\n");
}

static bool render_llama3(const ts_chat_template *t, const ts_chat_message *msgs, size_t n, sbuf *out) {
    bool ok = put(out, t->bos);
    for (size_t i = 0; ok && i < n; i++)
        ok = sbuf_printf(out, "<|start_header_id|>%s<|end_header_id|>\n\n", msgs[i].role) &&
             put_trimmed(out, msgs[i].content) && put(out, "<|eot_id|>");
    return ok && put(out, "<|start_header_id|>assistant<|end_header_id|>\n\n");
}

static bool render_phi3(const ts_chat_template *t, const ts_chat_message *msgs, size_t n, sbuf *out) {
    bool ok = put(out, t->bos);
    for (size_t i = 0; ok && i < n; i++) ok = sbuf_printf(out, "<|%s|>\n%s<|end|>\n", msgs[i].role, msgs[i].content);
    return ok && put(out, "<|assistant|>\n");
}

/* Gemma, Llama 2 and Mistral have no system turn: the system text opens the first user turn. */
static bool render_gemma(const ts_chat_template *t, const ts_chat_message *msgs, size_t n, const char *sys, sbuf *out) {
    bool ok = put(out, t->bos), first_user = true;
    for (size_t i = 0; ok && i < n; i++) {
        bool user = is_role(&msgs[i], "user");
        if (!user && !is_role(&msgs[i], "assistant")) continue;
        ok = sbuf_printf(out, "<start_of_turn>%s\n", user ? "user" : "model");
        if (ok && user && first_user && *sys) ok = sbuf_printf(out, "%s\n\n", sys);
        first_user = first_user && !user;
        ok = ok && put_trimmed(out, msgs[i].content) && put(out, "<end_of_turn>\n");
    }
    return ok && put(out, "<start_of_turn>model\n");
}

static bool render_llama2(const ts_chat_template *t, const ts_chat_message *msgs, size_t n, const char *sys, sbuf *out) {
    bool ok = true, first_user = true;
    for (size_t i = 0; ok && i < n; i++) {
        if (is_role(&msgs[i], "user")) {
            ok = sbuf_printf(out, "%s[INST] ", t->bos);
            if (ok && first_user && *sys) ok = sbuf_printf(out, "<<SYS>>\n%s\n<</SYS>>\n\n", sys);
            first_user = false;
            ok = ok && put_trimmed(out, msgs[i].content) && put(out, " [/INST]");
        } else if (is_role(&msgs[i], "assistant")) {
            ok = put(out, " ") && put_trimmed(out, msgs[i].content) && sbuf_printf(out, " %s", t->eos);
        }
    }
    return ok;
}

static bool render_mistral(const ts_chat_template *t, const ts_chat_message *msgs, size_t n, const char *sys, sbuf *out) {
    bool ok = put(out, t->bos), first_user = true;
    for (size_t i = 0; ok && i < n; i++) {
        if (is_role(&msgs[i], "user")) {
            ok = put(out, "[INST] ");
            if (ok && first_user && *sys) ok = sbuf_printf(out, "%s\n\n", sys);
            first_user = false;
            ok = ok && sbuf_printf(out, "%s [/INST]", msgs[i].content);
        } else if (is_role(&msgs[i], "assistant")) {
            ok = sbuf_printf(out, "%s%s", msgs[i].content, t->eos);
        }
    }
    return ok;
}

char *ts_chat_template_render(void *tmpl, const ts_chat_message *msgs, size_t n) {
    const ts_chat_template *t = tmpl;
    sbuf out = {0}, sys = {0};
    bool ok;
    switch (t->family) {
    case TS_CHAT_CHATML: ok = render_chatml(t, msgs, n, &out); break;
    case TS_CHAT_LLAMA3: ok = render_llama3(t, msgs, n, &out); break;
    case TS_CHAT_PHI3: ok = render_phi3(t, msgs, n, &out); break;
    case TS_CHAT_GEMMA: ok = join_system(msgs, n, &sys) && render_gemma(t, msgs, n, sys.data, &out); break;
    case TS_CHAT_LLAMA2: ok = join_system(msgs, n, &sys) && render_llama2(t, msgs, n, sys.data, &out); break;
    case TS_CHAT_MISTRAL: ok = join_system(msgs, n, &sys) && render_mistral(t, msgs, n, sys.data, &out); break;
    default: ok = render_deepseek(t, msgs, n, &out); break;
    }
    ok = ok && sbuf_append(&out, "", 0); /* an empty conversation still gives "" rather than NULL */
    sbuf_free(&sys);
    if (!ok) sbuf_free(&out);
    return out.data;
}

char *ts_chat_template_deepseek(void *user, const ts_chat_message *msgs, size_t n) {
    ts_chat_template t = ts_chat_template_default();
    return ts_chat_template_render(&t, msgs, n);
}

const char *ts_chat_template_end_of_turn(const ts_chat_template *t) {
    switch (t->family) {
    case TS_CHAT_CHATML: return "<|im_end|>";
    case TS_CHAT_LLAMA3: return "<|eot_id|>";
    case TS_CHAT_GEMMA: return "<end_of_turn>";
    case TS_CHAT_PHI3: return "<|end|>";
    default: return t->eos;
    }
}

/* ---------------------------------------------------------------- reading tokenizer_config.json */

static ts_chat_template with_family(const family_info *f) {
    ts_chat_template t = {.family = f->family};
    snprintf(t.bos, sizeof t.bos, "%s", f->bos);
    snprintf(t.eos, sizeof t.eos, "%s", f->eos);
    return t;
}

ts_chat_template ts_chat_template_default(void) {
    ts_chat_template t = with_family(family_of(TS_CHAT_DEEPSEEK));
    snprintf(t.note, sizeof t.note, "chat template: none given, using the default (DeepSeek format)");
    return t;
}

/* The template text: a string, or the "default" entry of [{"name", "template"}, ...]. */
static const char *config_template(json_t *config) {
    json_t *v = json_object_get(config, "chat_template");
    if (json_is_string(v)) return json_string_value(v);
    size_t i;
    json_t *entry;
    json_array_foreach(v, i, entry) {
        json_t *name = json_object_get(entry, "name"), *tpl = json_object_get(entry, "template");
        if (json_is_string(name) && !strcmp(json_string_value(name), "default") && json_is_string(tpl))
            return json_string_value(tpl);
    }
    return NULL;
}

/* bos_token / eos_token as a string or {"content": ...}; absent or null keeps dst. */
static bool config_token(json_t *config, const char *key, char *dst, const char *name, char *err, size_t err_size) {
    json_t *v = json_object_get(config, key);
    if (json_is_object(v)) v = json_object_get(v, "content");
    if (!json_is_string(v)) return true;
    if (json_string_length(v) >= TS_CHAT_TOKEN_MAX) {
        ts_error_printf(err, err_size, "%s: %s is longer than %d bytes", name, key, TS_CHAT_TOKEN_MAX - 1);
        return false;
    }
    snprintf(dst, TS_CHAT_TOKEN_MAX, "%s", json_string_value(v));
    return true;
}

static ts_status from_json(json_t *config, const char *name, ts_chat_template *out, char *err, size_t err_size) {
    const char *tpl = config_template(config);
    const family_info *f = tpl ? detect(tpl) : NULL;
    *out = f ? with_family(f) : ts_chat_template_default();
    if (!f)
        snprintf(out->note, sizeof out->note, "chat template: %.160s %s; using the default (DeepSeek format)", name,
                 tpl ? "has a chat_template of no known family" : "has no chat_template");
    if (!config_token(config, "bos_token", out->bos, name, err, err_size) ||
        !config_token(config, "eos_token", out->eos, name, err, err_size))
        return TS_ERR_FORMAT;
    return TS_OK;
}

ts_status ts_chat_template_from_config(const char *json, size_t len, const char *name, ts_chat_template *out,
                                       char *err, size_t err_size) {
    if (!json || !out) return TS_ERR_INVALID_ARG;
    if (!name) name = "tokenizer_config.json";
    json_error_t jerr;
    json_t *config = json_loadb(json, len, 0, &jerr);
    if (!json_is_object(config)) {
        ts_error_printf(err, err_size, "%s: not a JSON object (line %d: %s)", name, jerr.line, config ? "" : jerr.text);
        json_decref(config);
        return TS_ERR_FORMAT;
    }
    ts_status s = from_json(config, name, out, err, err_size);
    json_decref(config);
    return s;
}

ts_status ts_chat_template_load(const char *dir, ts_chat_template *out, char *err, size_t err_size) {
    if (!dir || !out) return TS_ERR_INVALID_ARG;
    char path[4096];
    snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
    FILE *f = fopen(path, "rb");
    if (!f) {
        *out = ts_chat_template_default();
        snprintf(out->note, sizeof out->note, "chat template: no %.180s; using the default (DeepSeek format)", path);
        return TS_OK;
    }
    sbuf text = {0};
    char chunk[8192];
    size_t got;
    bool ok = true;
    while (ok && (got = fread(chunk, 1, sizeof chunk, f)) > 0) ok = sbuf_append(&text, chunk, got);
    ok = ok && !ferror(f);
    fclose(f);
    ts_status s = TS_ERR_IO;
    if (!ok) ts_error_printf(err, err_size, "%s: cannot read it", path);
    else s = ts_chat_template_from_config(text.data ? text.data : "", text.n, path, out, err, err_size);
    sbuf_free(&text);
    return s;
}
