/* tokenizer_load.c - reads a Hugging Face tokenizer.json into a ts_tokenizer, reproducing the
 * reference's own loading rules where they decide ids:
 *   - the model vocabulary maps token strings to ids; merges are "a b" strings or [a, b]
 *     pairs whose parts and concatenation must all be in the vocabulary (a later duplicate
 *     pair replaces an earlier one, as the reference's hash map does);
 *   - added tokens do NOT keep the ids the file writes: the reference re-adds them in file
 *     order, giving each the model's id for the same string if there is one, else the next id
 *     after the model vocabulary / the previous added token (AddedVocabulary::add_tokens).
 *     For consistent files (all the ones it writes) that is the id written;
 *   - id -> token prefers an added token over the model vocabulary.
 * Every part the encoder cannot honour exactly is refused with TS_ERR_UNSUPPORTED naming it,
 * rather than being approximated silently. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "io/tokenizer_internal.h"

enum { MAX_TOKEN_ID = 1 << 26 }; /* 67 M ids: far above any real vocabulary, bounds allocations */

typedef struct {
    const char *name;
    ts_io_error *err;
} loader;

#if defined(__GNUC__)
__attribute__((format(printf, 3, 4)))
#endif
static ts_status
fail(const loader *ld, ts_status status, const char *fmt, ...) {
    char msg[TS_IO_ERROR_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return ts_io_set_error(ld->err, status, "%s: %s", ld->name, msg);
}

static ts_status oom(const loader *ld) { return fail(ld, TS_ERR_OOM, "out of memory"); }

/* ---------------------------------------------------------------- small JSON helpers */

static bool get_bool(json_t *obj, const char *key, bool fallback) {
    json_t *v = json_object_get(obj, key);
    return json_is_boolean(v) ? json_is_true(v) : fallback;
}

static const char *type_of(json_t *obj) {
    const char *t = json_string_value(json_object_get(obj, "type"));
    return t ? t : "";
}

static char *dump_compact(json_t *part) {
    return json_dumps(part ? part : json_null(), JSON_COMPACT | JSON_ENCODE_ANY);
}

static int32_t vocab_id(const ts_tokenizer *tok, const char *s, size_t len) {
    const int64_t *v = tk_strmap_find(&tok->vocab, s, len);
    return v ? (int32_t)*v : -1;
}

/* ---------------------------------------------------------------- the model */

static ts_status parse_vocab(const loader *ld, ts_tokenizer *tok, json_t *vocab, int32_t *max_id) {
    if (!json_is_object(vocab)) return fail(ld, TS_ERR_FORMAT, "model.vocab is not an object");
    const char *key;
    json_t *value;
    *max_id = -1;
    json_object_foreach(vocab, key, value) {
        json_int_t id = json_integer_value(value);
        if (!json_is_integer(value) || id < 0 || id >= MAX_TOKEN_ID)
            return fail(ld, TS_ERR_FORMAT, "model.vocab: token '%s' has id %s, not an integer in [0, %d)", key,
                        json_is_integer(value) ? "out of range" : "that is not a number", MAX_TOKEN_ID);
        if (!tk_strmap_upsert(&tok->vocab, key, strlen(key), id, NULL)) return oom(ld);
        if (id > *max_id) *max_id = (int32_t)id;
    }
    tok->vocab_count = tok->vocab.count;
    return TS_OK;
}

/* Splits one merges entry into its two tokens. */
static bool merge_parts(json_t *m, const char **a, size_t *a_len, const char **b, size_t *b_len) {
    if (json_is_string(m)) { /* "a b": exactly one space */
        const char *s = json_string_value(m);
        const char *sp = strchr(s, ' ');
        if (!sp || strchr(sp + 1, ' ')) return false;
        *a = s, *a_len = (size_t)(sp - s);
        *b = sp + 1, *b_len = strlen(sp + 1);
        return true;
    }
    if (json_is_array(m) && json_array_size(m) == 2 && json_is_string(json_array_get(m, 0)) &&
        json_is_string(json_array_get(m, 1))) {
        *a = json_string_value(json_array_get(m, 0)), *a_len = json_string_length(json_array_get(m, 0));
        *b = json_string_value(json_array_get(m, 1)), *b_len = json_string_length(json_array_get(m, 1));
        return true;
    }
    return false;
}

static ts_status parse_merges(const loader *ld, ts_tokenizer *tok, json_t *merges) {
    if (merges && !json_is_array(merges)) return fail(ld, TS_ERR_FORMAT, "model.merges is not an array");
    size_t n = json_array_size(merges);
    tok->merge_list = malloc((n ? n : 1) * 2 * sizeof *tok->merge_list);
    if (!tok->merge_list) return oom(ld);
    tk_buf joined = {0};
    ts_status st = TS_OK;
    for (size_t rank = 0; rank < n && st == TS_OK; rank++) {
        const char *a, *b;
        size_t a_len, b_len;
        if (!merge_parts(json_array_get(merges, rank), &a, &a_len, &b, &b_len)) {
            st = fail(ld, TS_ERR_FORMAT, "model.merges[%zu] is neither \"a b\" nor [\"a\", \"b\"]", rank);
            break;
        }
        int32_t left = vocab_id(tok, a, a_len), right = vocab_id(tok, b, b_len);
        joined.len = 0;
        if (!tk_buf_append(&joined, a, a_len) || !tk_buf_append(&joined, b, b_len)) {
            st = oom(ld);
            break;
        }
        int32_t merged = vocab_id(tok, (const char *)joined.data, joined.len);
        if (left < 0 || right < 0 || merged < 0) {
            st = fail(ld, TS_ERR_FORMAT, "model.merges[%zu] ('%.*s' + '%.*s'): '%.*s' is not in the vocabulary", rank,
                      (int)a_len, a, (int)b_len, b,
                      left < 0    ? (int)a_len
                      : right < 0 ? (int)b_len
                                  : (int)joined.len,
                      left < 0    ? a
                      : right < 0 ? b
                                  : (const char *)joined.data);
            break;
        }
        uint64_t *slot = tk_u64map_upsert(&tok->merges, tk_pair_key((uint32_t)left, (uint32_t)right), 0);
        if (!slot) {
            st = oom(ld);
            break;
        }
        *slot = (uint64_t)rank << 32 | (uint32_t)merged;
        tok->merge_list[2 * rank] = (uint32_t)left;
        tok->merge_list[2 * rank + 1] = (uint32_t)right;
        tok->n_merges = rank + 1;
    }
    tk_buf_free(&joined);
    return st;
}

static ts_status parse_model(const loader *ld, ts_tokenizer *tok, json_t *model, int32_t *max_id) {
    if (!json_is_object(model)) return fail(ld, TS_ERR_FORMAT, "\"model\" is missing or not an object");
    const char *type = type_of(model);
    if (*type && strcmp(type, "BPE") != 0)
        return fail(ld, TS_ERR_UNSUPPORTED, "model type '%s' (only BPE is supported)", type);
    json_t *dropout = json_object_get(model, "dropout");
    if (dropout && !json_is_null(dropout) && json_number_value(dropout) > 0)
        return fail(ld, TS_ERR_UNSUPPORTED, "model.dropout %g (BPE dropout is random; not supported)",
                    json_number_value(dropout));
    static const char *const affixes[] = {"continuing_subword_prefix", "end_of_word_suffix"};
    for (int i = 0; i < 2; i++) {
        json_t *v = json_object_get(model, affixes[i]);
        if (v && !json_is_null(v) && !(json_is_string(v) && json_string_length(v) == 0))
            return fail(ld, TS_ERR_UNSUPPORTED, "model.%s (not used by byte-level BPE; not supported)", affixes[i]);
    }
    if (get_bool(model, "byte_fallback", false))
        return fail(ld, TS_ERR_UNSUPPORTED, "model.byte_fallback (not used by byte-level BPE; not supported)");
    tok->fuse_unk = get_bool(model, "fuse_unk", false);
    tok->ignore_merges = get_bool(model, "ignore_merges", false);
    ts_status st = parse_vocab(ld, tok, json_object_get(model, "vocab"), max_id);
    if (st != TS_OK) return st;
    st = parse_merges(ld, tok, json_object_get(model, "merges"));
    if (st != TS_OK) return st;
    json_t *unk = json_object_get(model, "unk_token");
    if (json_is_string(unk)) {
        tok->unk_id = vocab_id(tok, json_string_value(unk), json_string_length(unk));
        if (tok->unk_id < 0)
            return fail(ld, TS_ERR_FORMAT, "model.unk_token '%s' is not in the vocabulary", json_string_value(unk));
    }
    return TS_OK;
}

/* ---------------------------------------------------------------- added tokens */

static ts_status add_token(const loader *ld, ts_tokenizer *tok, json_t *t, size_t i, int32_t *max_added) {
    json_t *content = json_object_get(t, "content");
    if (!json_is_object(t) || !json_is_string(content))
        return fail(ld, TS_ERR_FORMAT, "added_tokens[%zu] has no string \"content\"", i);
    const char *s = json_string_value(content);
    size_t len = json_string_length(content);
    if (len == 0) return TS_OK; /* the reference ignores empty tokens */
    tk_added a = {
        .special = get_bool(t, "special", false),
        .lstrip = get_bool(t, "lstrip", false),
        .rstrip = get_bool(t, "rstrip", false),
        .single_word = get_bool(t, "single_word", false),
        .normalized = get_bool(t, "normalized", true),
    };
    const int64_t *known = tk_strmap_find(&tok->added_ids, s, len);
    if (known) { /* the same content again: its flags replace the earlier ones */
        for (size_t k = 0; k < tok->n_added; k++) {
            tk_added *old = &tok->added[k];
            if (old->id != (int32_t)*known) continue;
            a.id = old->id, a.off = old->off, a.len = old->len;
            a.special = a.special || old->special;
            *old = a;
        }
        return TS_OK;
    }
    /* The reference's id rule (AddedVocabulary::add_tokens). */
    int32_t vocab_count = (int32_t)tok->vocab_count;
    int32_t id = vocab_id(tok, s, len);
    if (id < 0)
        id = *max_added < 0                                    ? vocab_count
             : (*max_added >= vocab_count || vocab_count == 0) ? *max_added + 1
                                                               : vocab_count;
    if (id >= MAX_TOKEN_ID) return fail(ld, TS_ERR_FORMAT, "added_tokens[%zu]: id %d is too large", i, (int)id);
    tk_added *grown = realloc(tok->added, (tok->n_added + 1) * sizeof *grown);
    if (!grown) return oom(ld);
    tok->added = grown;
    a.id = id;
    a.off = (uint32_t)tok->strings.len;
    a.len = (uint32_t)len;
    if (!tk_buf_append(&tok->strings, s, len) || !tk_strmap_upsert(&tok->added_ids, s, len, id, NULL)) return oom(ld);
    tok->added[tok->n_added++] = a;
    if (id > *max_added) *max_added = id;
    return TS_OK;
}

static ts_status parse_added(const loader *ld, ts_tokenizer *tok, json_t *list, int32_t *max_added) {
    *max_added = -1;
    if (!list || json_is_null(list)) return TS_OK;
    if (!json_is_array(list)) return fail(ld, TS_ERR_FORMAT, "\"added_tokens\" is not an array");
    for (size_t i = 0; i < json_array_size(list); i++) {
        ts_status st = add_token(ld, tok, json_array_get(list, i), i, max_added);
        if (st != TS_OK) return st;
    }
    return TS_OK;
}

static ts_status build_tries(const loader *ld, ts_tokenizer *tok) {
    bool need_word_re = false;
    for (size_t i = 0; i < tok->n_added; i++) {
        const tk_added *a = &tok->added[i];
        tk_trie *trie = a->normalized ? &tok->trie_norm : &tok->trie_raw;
        if (!tk_trie_insert(trie, tok->strings.data + a->off, a->len, (int32_t)i)) return oom(ld);
        need_word_re = need_word_re || a->single_word;
    }
    if (need_word_re) { /* Rust regex's \w, which single_word is defined by */
        static const char word[] = "[\\p{Alphabetic}\\p{M}\\p{Nd}\\p{Pc}\\x{200C}\\x{200D}]";
        return tk_regex_compile(word, sizeof word - 1, false, ld->name, &tok->word_re, ld->err);
    }
    return TS_OK;
}

/* ---------------------------------------------------------------- the id table */

/* The bytes the ByteLevel decoder gives for one token: each character mapped back to its
 * byte, or, when any character is outside the byte-level alphabet (added tokens such as
 * "<｜User｜>"), the token's own UTF-8 bytes - the reference's rule. */
static bool append_decoded(tk_buf *pool, const uint8_t *s, size_t n) {
    size_t start = pool->len;
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        bool valid;
        i += tk_utf8_next(s + i, n - i, &cp, &valid);
        int b = valid ? tk_char_byte(cp) : -1;
        if (b < 0) {
            pool->len = start;
            return tk_buf_append(pool, s, n);
        }
        uint8_t byte = (uint8_t)b;
        if (!tk_buf_append(pool, &byte, 1)) return false;
    }
    return true;
}

static ts_status build_id_table(const loader *ld, ts_tokenizer *tok, int32_t max_id) {
    int32_t n = max_id + 1;
    tok->n_ids = n;
    size_t count = n > 0 ? (size_t)n : 1;
    tok->tok_off = calloc(count, sizeof *tok->tok_off);
    tok->tok_len = calloc(count, sizeof *tok->tok_len);
    tok->dec_off = calloc(count, sizeof *tok->dec_off);
    tok->dec_len = calloc(count, sizeof *tok->dec_len);
    tok->id_flags = calloc(count, 1);
    if (!tok->tok_off || !tok->tok_len || !tok->dec_off || !tok->dec_len || !tok->id_flags) return oom(ld);
    for (size_t i = 0; i < tok->vocab.cap; i++) {
        const tk_strmap_slot *s = &tok->vocab.slots[i];
        if (s->len == UINT32_MAX) continue;
        int32_t id = (int32_t)s->value;
        if (tok->id_flags[id])
            return fail(ld, TS_ERR_FORMAT, "model.vocab: two tokens have id %d (one is '%.*s')", (int)id, (int)s->len,
                        (const char *)tk_strmap_key(&tok->vocab, s));
        tok->tok_off[id] = (uint32_t)tok->strings.len;
        tok->tok_len[id] = s->len;
        tok->id_flags[id] = TK_ID_PRESENT;
        if (!tk_buf_append(&tok->strings, tk_strmap_key(&tok->vocab, s), s->len)) return oom(ld);
    }
    for (size_t i = 0; i < tok->n_added; i++) { /* added tokens win for id -> token */
        const tk_added *a = &tok->added[i];
        tok->tok_off[a->id] = a->off;
        tok->tok_len[a->id] = a->len;
        tok->id_flags[a->id] = TK_ID_PRESENT | TK_ID_ADDED | (a->special ? TK_ID_SPECIAL : 0);
    }
    for (int32_t id = 0; id < n; id++) {
        if (!tok->id_flags[id]) continue;
        size_t off = tok->strings.len;
        /* the token string may move when the pool grows: copy it out first */
        uint8_t small[256];
        uint8_t *copy = tok->tok_len[id] <= sizeof small ? small : malloc(tok->tok_len[id]);
        if (!copy) return oom(ld);
        memcpy(copy, tok->strings.data + tok->tok_off[id], tok->tok_len[id]);
        bool ok = append_decoded(&tok->strings, copy, tok->tok_len[id]);
        if (copy != small) free(copy);
        if (!ok || tok->strings.len >= UINT32_MAX) return oom(ld);
        tok->dec_off[id] = (uint32_t)off;
        tok->dec_len[id] = (uint32_t)(tok->strings.len - off);
    }
    return TS_OK;
}

/* byte -> id of its one-character token; and, for ignore_merges, byte-level tokens by bytes. */
static ts_status build_byte_maps(const loader *ld, ts_tokenizer *tok) {
    for (int b = 0; b < 256; b++) {
        uint8_t utf8[4];
        size_t n = tk_utf8_put(tk_byte_char((uint8_t)b), utf8);
        tok->byte_id[b] = vocab_id(tok, (const char *)utf8, n);
    }
    if (!tok->ignore_merges) return TS_OK;
    tk_buf bytes = {0};
    for (size_t i = 0; i < tok->vocab.cap; i++) {
        const tk_strmap_slot *s = &tok->vocab.slots[i];
        if (s->len == UINT32_MAX) continue;
        bytes.len = 0;
        const uint8_t *key = tk_strmap_key(&tok->vocab, s);
        bool byte_level = true;
        for (size_t k = 0; k < s->len && byte_level;) {
            uint32_t cp;
            bool valid;
            k += tk_utf8_next(key + k, s->len - k, &cp, &valid);
            int b = valid ? tk_char_byte(cp) : -1;
            uint8_t byte = (uint8_t)b;
            byte_level = b >= 0 && tk_buf_append(&bytes, &byte, 1);
        }
        if (byte_level && !tk_strmap_upsert(&tok->vocab_bytes, bytes.data, bytes.len, s->value, NULL)) {
            tk_buf_free(&bytes);
            return oom(ld);
        }
    }
    tk_buf_free(&bytes);
    return TS_OK;
}

/* ---------------------------------------------------------------- normalizer, pre-tokenizer */

static ts_status check_normalizer(const loader *ld, json_t *n) {
    if (!n || json_is_null(n)) return TS_OK;
    if (json_is_object(n) && strcmp(type_of(n), "Sequence") == 0) {
        json_t *list = json_object_get(n, "normalizers");
        for (size_t i = 0; i < json_array_size(list); i++) {
            ts_status st = check_normalizer(ld, json_array_get(list, i));
            if (st != TS_OK) return st;
        }
        return TS_OK;
    }
    return fail(ld, TS_ERR_UNSUPPORTED, "normalizer '%s' (only none, or an empty Sequence, is supported)",
                json_is_object(n) ? type_of(n) : "?");
}

static bool parse_behavior(const char *s, tk_split_behavior *out) {
    static const struct {
        const char *name;
        tk_split_behavior behavior;
    } names[] = {{"Removed", TK_SPLIT_REMOVED},
                 {"Isolated", TK_SPLIT_ISOLATED},
                 {"MergedWithPrevious", TK_SPLIT_MERGED_WITH_PREVIOUS},
                 {"MergedWithNext", TK_SPLIT_MERGED_WITH_NEXT},
                 {"Contiguous", TK_SPLIT_CONTIGUOUS}};
    for (size_t i = 0; s && i < sizeof names / sizeof names[0]; i++)
        if (strcmp(s, names[i].name) == 0) {
            *out = names[i].behavior;
            return true;
        }
    return false;
}

static ts_status add_split(const loader *ld, ts_tokenizer *tok, json_t *p) {
    json_t *pattern = json_object_get(p, "pattern");
    json_t *regex = json_object_get(pattern, "Regex"), *literal = json_object_get(pattern, "String");
    json_t *text = json_is_string(regex) ? regex : literal;
    if (!json_is_string(text)) return fail(ld, TS_ERR_FORMAT, "Split pre-tokenizer without a Regex or String pattern");
    tk_split sp = {.literal = !json_is_string(regex), .invert = get_bool(p, "invert", false)};
    const char *behavior = json_string_value(json_object_get(p, "behavior"));
    if (!parse_behavior(behavior, &sp.behavior))
        return fail(ld, TS_ERR_UNSUPPORTED, "Split behavior '%s'", behavior ? behavior : "(missing)");
    size_t len = json_string_length(text);
    sp.pattern = malloc(len + 1);
    if (!sp.pattern) return oom(ld);
    memcpy(sp.pattern, json_string_value(text), len + 1);
    char what[300];
    snprintf(what, sizeof what, "%s: Split pre-tokenizer", ld->name);
    ts_status st = tk_regex_compile(sp.pattern, len, sp.literal, what, &sp.re, ld->err);
    if (st != TS_OK) {
        free(sp.pattern);
        return st;
    }
    tk_split *grown = realloc(tok->splits, (tok->n_splits + 1) * sizeof *grown);
    if (!grown) {
        pcre2_code_free(sp.re);
        free(sp.pattern);
        return oom(ld);
    }
    tok->splits = grown;
    tok->splits[tok->n_splits++] = sp;
    return TS_OK;
}

static ts_status parse_pre_tokenizer(const loader *ld, ts_tokenizer *tok, json_t *p, bool *have_byte_level) {
    if (!json_is_object(p))
        return fail(ld, TS_ERR_UNSUPPORTED,
                    "no pre_tokenizer (only byte-level BPE, with a ByteLevel pre-tokenizer, is supported)");
    const char *type = type_of(p);
    if (strcmp(type, "Sequence") == 0) {
        json_t *list = json_object_get(p, "pretokenizers");
        for (size_t i = 0; i < json_array_size(list); i++) {
            ts_status st = parse_pre_tokenizer(ld, tok, json_array_get(list, i), have_byte_level);
            if (st != TS_OK) return st;
        }
        return TS_OK;
    }
    if (*have_byte_level)
        return fail(ld, TS_ERR_UNSUPPORTED, "pre-tokenizer '%s' after ByteLevel (ByteLevel must come last)", type);
    if (strcmp(type, "Split") == 0) return add_split(ld, tok, p);
    if (strcmp(type, "ByteLevel") == 0) {
        *have_byte_level = true;
        tok->bl_add_prefix_space = get_bool(p, "add_prefix_space", true);
        tok->bl_use_regex = get_bool(p, "use_regex", true);
        tok->bl_trim_offsets = get_bool(p, "trim_offsets", true);
        if (tok->bl_use_regex) {
            char what[300];
            snprintf(what, sizeof what, "%s: ByteLevel pre-tokenizer", ld->name);
            return tk_regex_compile(tk_gpt2_pattern, strlen(tk_gpt2_pattern), false, what, &tok->bl_re, ld->err);
        }
        return TS_OK;
    }
    return fail(ld, TS_ERR_UNSUPPORTED, "pre-tokenizer '%s' (supported: Split, ByteLevel, Sequence)", type);
}

/* ---------------------------------------------------------------- post-processor, decoder */

typedef struct {
    int32_t *ids;
    size_t n;
} id_list;

static bool id_list_push(id_list *l, int32_t id) {
    int32_t *p = realloc(l->ids, (l->n + 1) * sizeof *p);
    if (!p) return false;
    l->ids = p;
    l->ids[l->n++] = id;
    return true;
}

/* The ids a TemplateProcessing special token stands for. */
static ts_status template_special(const loader *ld, json_t *specials, const char *name, id_list *into) {
    json_t *ids = json_object_get(json_object_get(specials, name), "ids");
    if (!json_is_array(ids)) return fail(ld, TS_ERR_FORMAT, "post_processor: special token '%s' has no ids", name);
    for (size_t i = 0; i < json_array_size(ids); i++) {
        json_int_t id = json_integer_value(json_array_get(ids, i));
        if (id < 0 || id >= MAX_TOKEN_ID) return fail(ld, TS_ERR_FORMAT, "post_processor: bad id for '%s'", name);
        if (!id_list_push(into, (int32_t)id)) return oom(ld);
    }
    return TS_OK;
}

/* Fills pre / post with what one processor puts around a single sequence. */
static ts_status parse_processor(const loader *ld, json_t *p, id_list *pre, id_list *post) {
    const char *type = type_of(p);
    if (strcmp(type, "ByteLevel") == 0) return TS_OK; /* adjusts offsets only */
    if (strcmp(type, "TemplateProcessing") == 0) {
        json_t *single = json_object_get(p, "single"), *specials = json_object_get(p, "special_tokens");
        bool after = false;
        for (size_t i = 0; i < json_array_size(single); i++) {
            json_t *item = json_array_get(single, i);
            json_t *special = json_object_get(item, "SpecialToken");
            if (json_object_get(item, "Sequence")) {
                after = true;
                continue;
            }
            const char *name = json_string_value(json_object_get(special, "id"));
            if (!name)
                return fail(ld, TS_ERR_FORMAT, "post_processor: single[%zu] is neither SpecialToken nor Sequence", i);
            ts_status st = template_special(ld, specials, name, after ? post : pre);
            if (st != TS_OK) return st;
        }
        return TS_OK;
    }
    if (strcmp(type, "RobertaProcessing") == 0 || strcmp(type, "BertProcessing") == 0) {
        json_t *cls = json_array_get(json_object_get(p, "cls"), 1), *sep = json_array_get(json_object_get(p, "sep"), 1);
        if (!json_is_integer(cls) || !json_is_integer(sep))
            return fail(ld, TS_ERR_FORMAT, "post_processor %s: cls / sep must be [token, id]", type);
        if (!id_list_push(pre, (int32_t)json_integer_value(cls)) ||
            !id_list_push(post, (int32_t)json_integer_value(sep)))
            return oom(ld);
        return TS_OK;
    }
    if (strcmp(type, "Sequence") == 0) { /* each wraps the result of the previous one */
        json_t *list = json_object_get(p, "processors");
        for (size_t i = 0; i < json_array_size(list); i++) {
            id_list inner_pre = {0}, inner_post = {0};
            ts_status st = parse_processor(ld, json_array_get(list, i), &inner_pre, &inner_post);
            for (size_t k = 0; st == TS_OK && k < pre->n; k++)
                if (!id_list_push(&inner_pre, pre->ids[k])) st = oom(ld);
            for (size_t k = 0; st == TS_OK && k < inner_post.n; k++)
                if (!id_list_push(post, inner_post.ids[k])) st = oom(ld);
            free(pre->ids);
            *pre = inner_pre;
            free(inner_post.ids);
            if (st != TS_OK) return st;
        }
        return TS_OK;
    }
    return fail(ld, TS_ERR_UNSUPPORTED, "post_processor '%s'", type);
}

static ts_status parse_post_processor(const loader *ld, ts_tokenizer *tok, json_t *p) {
    if (!p || json_is_null(p)) return TS_OK;
    id_list pre = {0}, post = {0};
    ts_status st = parse_processor(ld, p, &pre, &post);
    tok->tmpl_prefix = pre.ids, tok->n_tmpl_prefix = pre.n;
    tok->tmpl_suffix = post.ids, tok->n_tmpl_suffix = post.n;
    return st;
}

static ts_status check_decoder(const loader *ld, json_t *d) {
    const char *type = json_is_object(d) ? type_of(d) : "none";
    if (strcmp(type, "ByteLevel") == 0) return TS_OK;
    if (strcmp(type, "Sequence") == 0) {
        json_t *list = json_object_get(d, "decoders");
        for (size_t i = 0; i < json_array_size(list); i++) {
            ts_status st = check_decoder(ld, json_array_get(list, i));
            if (st != TS_OK) return st;
        }
        return json_array_size(list) ? TS_OK : fail(ld, TS_ERR_UNSUPPORTED, "decoder: empty Sequence");
    }
    return fail(ld, TS_ERR_UNSUPPORTED, "decoder '%s' (only ByteLevel is supported)", type);
}

/* ---------------------------------------------------------------- putting it together */

static ts_status build_parts(const loader *ld, ts_tokenizer *tok, json_t *root) {
    int32_t max_vocab_id = -1, max_added_id = -1;
    ts_status st = parse_model(ld, tok, json_object_get(root, "model"), &max_vocab_id);
    if (st == TS_OK) st = parse_added(ld, tok, json_object_get(root, "added_tokens"), &max_added_id);
    if (st == TS_OK) st = build_id_table(ld, tok, max_vocab_id > max_added_id ? max_vocab_id : max_added_id);
    if (st == TS_OK) st = build_byte_maps(ld, tok);
    if (st == TS_OK) st = build_tries(ld, tok);
    if (st == TS_OK) st = check_normalizer(ld, json_object_get(root, "normalizer"));
    bool have_byte_level = false;
    if (st == TS_OK) st = parse_pre_tokenizer(ld, tok, json_object_get(root, "pre_tokenizer"), &have_byte_level);
    if (st == TS_OK && !have_byte_level)
        st = fail(ld, TS_ERR_UNSUPPORTED, "no ByteLevel pre-tokenizer (only byte-level BPE is supported)");
    if (st == TS_OK) st = parse_post_processor(ld, tok, json_object_get(root, "post_processor"));
    if (st == TS_OK) st = check_decoder(ld, json_object_get(root, "decoder"));
    if (st != TS_OK) return st;
    tok->normalizer_json = dump_compact(json_object_get(root, "normalizer"));
    tok->pre_tokenizer_json = dump_compact(json_object_get(root, "pre_tokenizer"));
    tok->post_processor_json = dump_compact(json_object_get(root, "post_processor"));
    tok->decoder_json = dump_compact(json_object_get(root, "decoder"));
    tok->mctx = tk_match_context_new();
    tok->cache = tk_cache_new();
    if (!tok->normalizer_json || !tok->pre_tokenizer_json || !tok->post_processor_json || !tok->decoder_json ||
        !tok->mctx || !tok->cache)
        return oom(ld);
    tk_guess_bos_eos(tok);
    return TS_OK;
}

ts_status tk_build(json_t *root, const char *name, ts_tokenizer **out, ts_io_error *err) {
    loader ld = {name, err};
    *out = NULL;
    if (!json_is_object(root)) return fail(&ld, TS_ERR_FORMAT, "not a JSON object");
    ts_tokenizer *tok = calloc(1, sizeof *tok);
    if (!tok) return oom(&ld);
    tok->name = strdup(name);
    tok->unk_id = tok->bos_id = tok->eos_id = -1;
    ts_status st = tok->name ? build_parts(&ld, tok, root) : oom(&ld);
    if (st != TS_OK) {
        ts_tokenizer_free(tok);
        return st;
    }
    *out = tok;
    return TS_OK;
}

/* ---------------------------------------------------------------- files */

static ts_status parse_file(const char *path, json_t **root, ts_io_error *err) {
    FILE *f = fopen(path, "rb");
    if (!f) return ts_io_set_error(err, TS_ERR_IO, "%s: cannot open", path);
    json_error_t jerr;
    *root = json_loadf(f, JSON_ALLOW_NUL, &jerr);
    fclose(f);
    if (!*root)
        return ts_io_set_error(err, TS_ERR_FORMAT, "%s: line %d column %d: %s", path, jerr.line, jerr.column,
                               jerr.text);
    return TS_OK;
}

/* tokenizer_config.json names BOS / EOS as a string or as {"content": ...}. */
static int32_t config_token_id(const ts_tokenizer *tok, json_t *config, const char *key) {
    json_t *v = json_object_get(config, key);
    if (json_is_object(v)) v = json_object_get(v, "content");
    if (!json_is_string(v)) return -1;
    return ts_tokenizer_token_to_id(tok, json_string_value(v), json_string_length(v));
}

static void apply_config(ts_tokenizer *tok, const char *dir) {
    size_t room = strlen(dir) + 32;
    char *path = malloc(room);
    if (!path) return;
    snprintf(path, room, "%s/tokenizer_config.json", dir);
    json_t *config = NULL;
    if (parse_file(path, &config, NULL) == TS_OK) { /* optional: a broken one is ignored */
        int32_t bos = config_token_id(tok, config, "bos_token"), eos = config_token_id(tok, config, "eos_token");
        if (bos >= 0) tok->bos_id = bos;
        if (eos >= 0) tok->eos_id = eos;
        json_decref(config);
    }
    free(path);
}

ts_status ts_tokenizer_load(const char *path, ts_tokenizer **out, ts_io_error *err) {
    if (!path || !out) return ts_io_set_error(err, TS_ERR_INVALID_ARG, "tokenizer load: path and out are required");
    *out = NULL;
    struct stat sb;
    bool is_dir = stat(path, &sb) == 0 && S_ISDIR(sb.st_mode);
    size_t room = strlen(path) + 32;
    char *file = malloc(room);
    if (!file) return ts_io_set_error(err, TS_ERR_OOM, "%s: out of memory", path);
    snprintf(file, room, is_dir ? "%s/tokenizer.json" : "%s", path);
    json_t *root = NULL;
    ts_status st = parse_file(file, &root, err);
    if (st == TS_OK) st = tk_build(root, file, out, err);
    json_decref(root);
    free(file);
    if (st == TS_OK && is_dir) apply_config(*out, path);
    return st;
}

ts_status ts_tokenizer_load_json(const char *json, size_t len, const char *name, ts_tokenizer **out, ts_io_error *err) {
    if (!json || !out) return ts_io_set_error(err, TS_ERR_INVALID_ARG, "tokenizer load: json and out are required");
    *out = NULL;
    if (!name) name = "(memory)";
    json_error_t jerr;
    json_t *root = json_loadb(json, len, JSON_ALLOW_NUL, &jerr);
    if (!root)
        return ts_io_set_error(err, TS_ERR_FORMAT, "%s: line %d column %d: %s", name, jerr.line, jerr.column,
                               jerr.text);
    ts_status st = tk_build(root, name, out, err);
    json_decref(root);
    return st;
}
