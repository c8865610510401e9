/* tokenizer_save.c - writes a ts_tokenizer back as tokenizer.json in the reference's own layout
 * (the same keys in the same order, vocab by id, merges as [a, b] pairs by rank, added tokens
 * by id, two-space indentation), so that this loader and the Python `tokenizers` library both
 * read it, and a trained vocabulary looks like one the reference trained. The normalizer,
 * pre-tokenizer, post-processor and decoder parts are written back as they were loaded. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "io/tokenizer_internal.h"

static json_t *string_n(const void *s, size_t n) { return json_stringn_nocheck((const char *)s, n); }

/* Attaches value to obj under key, taking ownership; false when anything is NULL or fails. */
static bool put(json_t *obj, const char *key, json_t *value) {
    return value && json_object_set_new(obj, key, value) == 0;
}

static json_t *added_tokens_json(const ts_tokenizer *tok) {
    json_t *list = json_array();
    size_t *order = malloc((tok->n_added ? tok->n_added : 1) * sizeof *order);
    if (!list || !order) goto fail;
    for (size_t i = 0; i < tok->n_added; i++) order[i] = i;
    for (size_t i = 1; i < tok->n_added; i++) /* insertion sort by id: lists are short */
        for (size_t k = i; k > 0 && tok->added[order[k]].id < tok->added[order[k - 1]].id; k--) {
            size_t t = order[k];
            order[k] = order[k - 1];
            order[k - 1] = t;
        }
    for (size_t i = 0; i < tok->n_added; i++) {
        const tk_added *a = &tok->added[order[i]];
        json_t *t = json_object();
        bool ok = t && put(t, "id", json_integer(a->id)) &&
                  put(t, "content", string_n(tok->strings.data + a->off, a->len)) &&
                  put(t, "single_word", json_boolean(a->single_word)) && put(t, "lstrip", json_boolean(a->lstrip)) &&
                  put(t, "rstrip", json_boolean(a->rstrip)) && put(t, "normalized", json_boolean(a->normalized)) &&
                  put(t, "special", json_boolean(a->special));
        if (!ok || json_array_append_new(list, t) != 0) goto fail;
    }
    free(order);
    return list;
fail:
    free(order);
    json_decref(list);
    return NULL;
}

static int compare_slots_by_id(const void *a, const void *b) {
    int64_t x = (*(const tk_strmap_slot *const *)a)->value, y = (*(const tk_strmap_slot *const *)b)->value;
    return (x > y) - (x < y);
}

static json_t *vocab_json(const ts_tokenizer *tok) {
    const tk_strmap_slot **slots = malloc((tok->vocab.count ? tok->vocab.count : 1) * sizeof *slots);
    json_t *vocab = json_object();
    if (!slots || !vocab) goto fail;
    size_t n = 0;
    for (size_t i = 0; i < tok->vocab.cap; i++)
        if (tok->vocab.slots[i].len != UINT32_MAX) slots[n++] = &tok->vocab.slots[i];
    qsort(slots, n, sizeof *slots, compare_slots_by_id);
    for (size_t i = 0; i < n; i++) {
        json_t *key = string_n(tk_strmap_key(&tok->vocab, slots[i]), slots[i]->len);
        bool ok = key && json_object_set_new(vocab, json_string_value(key), json_integer(slots[i]->value)) == 0;
        json_decref(key);
        if (!ok) goto fail;
    }
    free(slots);
    return vocab;
fail:
    free(slots);
    json_decref(vocab);
    return NULL;
}

/* Merges by rank, each part spelled as the model vocabulary spells its id. */
static json_t *merges_json(const ts_tokenizer *tok) {
    size_t n = tok->n_ids > 0 ? (size_t)tok->n_ids : 1;
    const char **keys = calloc(n, sizeof *keys);
    uint32_t *lens = calloc(n, sizeof *lens);
    json_t *merges = json_array();
    if (!keys || !lens || !merges) goto fail;
    for (size_t i = 0; i < tok->vocab.cap; i++) {
        const tk_strmap_slot *s = &tok->vocab.slots[i];
        if (s->len == UINT32_MAX) continue;
        keys[s->value] = (const char *)tk_strmap_key(&tok->vocab, s);
        lens[s->value] = s->len;
    }
    for (size_t r = 0; r < tok->n_merges; r++) {
        uint32_t left = tok->merge_list[2 * r], right = tok->merge_list[2 * r + 1];
        json_t *pair = json_array();
        bool ok = pair && json_array_append_new(pair, string_n(keys[left], lens[left])) == 0 &&
                  json_array_append_new(pair, string_n(keys[right], lens[right])) == 0;
        if (!ok || json_array_append_new(merges, pair) != 0) goto fail;
    }
    free(keys);
    free(lens);
    return merges;
fail:
    free(keys);
    free(lens);
    json_decref(merges);
    return NULL;
}

static json_t *model_json(const ts_tokenizer *tok) {
    json_t *m = json_object();
    size_t unk_len = 0;
    const char *unk = tok->unk_id >= 0 ? ts_tokenizer_id_to_token(tok, tok->unk_id, &unk_len) : NULL;
    bool ok = m && put(m, "type", json_string("BPE")) && put(m, "dropout", json_null()) &&
              put(m, "unk_token", unk ? string_n(unk, unk_len) : json_null()) &&
              put(m, "continuing_subword_prefix", json_null()) && put(m, "end_of_word_suffix", json_null()) &&
              put(m, "fuse_unk", json_boolean(tok->fuse_unk)) && put(m, "byte_fallback", json_false()) &&
              put(m, "ignore_merges", json_boolean(tok->ignore_merges)) && put(m, "vocab", vocab_json(tok)) &&
              put(m, "merges", merges_json(tok));
    if (ok) return m;
    json_decref(m);
    return NULL;
}

static json_t *part(const char *compact) { return json_loads(compact, JSON_DECODE_ANY, NULL); }

static json_t *tokenizer_json(const ts_tokenizer *tok) {
    json_t *root = json_object();
    bool ok = root && put(root, "version", json_string("1.0")) && put(root, "truncation", json_null()) &&
              put(root, "padding", json_null()) && put(root, "added_tokens", added_tokens_json(tok)) &&
              put(root, "normalizer", part(tok->normalizer_json)) &&
              put(root, "pre_tokenizer", part(tok->pre_tokenizer_json)) &&
              put(root, "post_processor", part(tok->post_processor_json)) &&
              put(root, "decoder", part(tok->decoder_json)) && put(root, "model", model_json(tok));
    if (ok) return root;
    json_decref(root);
    return NULL;
}

ts_status ts_tokenizer_to_json(const ts_tokenizer *tok, char **json, size_t *len, ts_io_error *err) {
    if (!tok || !json) return ts_io_set_error(err, TS_ERR_INVALID_ARG, "tokenizer to_json: tok and json are required");
    json_t *root = tokenizer_json(tok);
    *json = root ? json_dumps(root, JSON_INDENT(2)) : NULL;
    json_decref(root);
    if (!*json) return ts_io_set_error(err, TS_ERR_OOM, "%s: tokenizer to_json: out of memory", tok->name);
    if (len) *len = strlen(*json);
    return TS_OK;
}

static json_t *token_or_null(const ts_tokenizer *tok, int32_t id) {
    size_t len;
    const char *s = id >= 0 ? ts_tokenizer_id_to_token(tok, id, &len) : NULL;
    return s ? string_n(s, len) : json_null();
}

/* tokenizer_config.json: what transformers (and our loader) read BOS / EOS from. */
static ts_status save_config(const ts_tokenizer *tok, const char *path, ts_io_error *err) {
    json_t *c = json_object();
    bool ok = c && put(c, "add_bos_token", json_false()) && put(c, "add_eos_token", json_false()) &&
              put(c, "bos_token", token_or_null(tok, tok->bos_id)) &&
              put(c, "eos_token", token_or_null(tok, tok->eos_id)) &&
              put(c, "clean_up_tokenization_spaces", json_false()) &&
              put(c, "tokenizer_class", json_string("PreTrainedTokenizerFast"));
    char *text = ok ? json_dumps(c, JSON_INDENT(2)) : NULL;
    json_decref(c);
    if (!text) return ts_io_set_error(err, TS_ERR_OOM, "%s: out of memory", path);
    ts_status st = ts_atomic_write_file(path, text, strlen(text), err);
    free(text);
    return st;
}

ts_status ts_tokenizer_save(const ts_tokenizer *tok, const char *path, ts_io_error *err) {
    if (!tok || !path) return ts_io_set_error(err, TS_ERR_INVALID_ARG, "tokenizer save: tok and path are required");
    struct stat sb;
    bool is_dir = stat(path, &sb) == 0 && S_ISDIR(sb.st_mode);
    size_t room = strlen(path) + 32;
    char *file = malloc(room);
    char *json = NULL;
    size_t len = 0;
    if (!file) return ts_io_set_error(err, TS_ERR_OOM, "%s: out of memory", path);
    snprintf(file, room, is_dir ? "%s/tokenizer.json" : "%s", path);
    ts_status st = ts_tokenizer_to_json(tok, &json, &len, err);
    if (st == TS_OK) st = ts_atomic_write_file(file, json, len, err);
    if (st == TS_OK && is_dir) {
        snprintf(file, room, "%s/tokenizer_config.json", path);
        st = save_config(tok, file, err);
    }
    free(json);
    free(file);
    return st;
}
