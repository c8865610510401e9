/* tokenizer.c - the tokenizer's public API (tokenizer.h): encode, decode, vocabulary lookups,
 * BOS/EOS, free. Loading is in tokenizer_load.c, saving in tokenizer_save.c, training in
 * tokenizer_train.c.
 *
 * Encoding runs the reference's pipeline on bytes:
 *   1. added tokens are cut out of the text (tokenizer_added.c); each becomes its id;
 *   2. the text between them goes through the Split pre-tokenizers in order, each splitting
 *      every piece the previous one produced (tokenizer_regex.c);
 *   3. ByteLevel: an optional leading space, the optional GPT-2 split, then each piece is a
 *      word for BPE (tokenizer_bpe.c), whose bytes map through the byte-level alphabet;
 *   4. the post-processor's template (and/or an explicit BOS / EOS) goes around the result.
 * Nothing here is shared between calls except the word cache, so calls from several threads
 * may run at once. */
#include <stdlib.h>
#include <string.h>

#include "io/tokenizer_internal.h"

/* ---------------------------------------------------------------- outputs */

void ts_token_ids_clear(ts_token_ids *t) {
    if (t) t->n = 0;
}

void ts_token_ids_free(ts_token_ids *t) {
    if (!t) return;
    free(t->ids);
    memset(t, 0, sizeof *t);
}

void ts_token_bytes_clear(ts_token_bytes *b) {
    if (!b) return;
    b->n = 0;
    if (b->data) b->data[0] = 0;
}

void ts_token_bytes_free(ts_token_bytes *b) {
    if (!b) return;
    free(b->data);
    memset(b, 0, sizeof *b);
}

static bool bytes_append(ts_token_bytes *b, const void *p, size_t n) {
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + n + 1) cap *= 2;
        uint8_t *d = realloc(b->data, cap);
        if (!d) return false;
        b->data = d;
        b->cap = cap;
    }
    if (n) memcpy(b->data + b->n, p, n);
    b->n += n;
    b->data[b->n] = 0;
    return true;
}

/* ---------------------------------------------------------------- free */

void ts_tokenizer_free(ts_tokenizer *tok) {
    if (!tok) return;
    free(tok->name);
    free(tok->tok_off);
    free(tok->tok_len);
    free(tok->dec_off);
    free(tok->dec_len);
    free(tok->id_flags);
    tk_buf_free(&tok->strings);
    tk_strmap_free(&tok->vocab);
    tk_strmap_free(&tok->vocab_bytes);
    tk_u64map_free(&tok->merges);
    free(tok->merge_list);
    free(tok->added);
    tk_strmap_free(&tok->added_ids);
    tk_trie_free(&tok->trie_raw);
    tk_trie_free(&tok->trie_norm);
    pcre2_code_free(tok->word_re);
    for (size_t i = 0; i < tok->n_splits; i++) {
        pcre2_code_free(tok->splits[i].re);
        free(tok->splits[i].pattern);
    }
    free(tok->splits);
    pcre2_code_free(tok->bl_re);
    pcre2_match_context_free(tok->mctx);
    free(tok->tmpl_prefix);
    free(tok->tmpl_suffix);
    free(tok->normalizer_json);
    free(tok->pre_tokenizer_json);
    free(tok->post_processor_json);
    free(tok->decoder_json);
    tk_cache_free(tok->cache);
    free(tok);
}

/* ---------------------------------------------------------------- encode */

/* Scratch for one encode call. */
typedef struct {
    const ts_tokenizer *tok;
    tk_matcher m;
    tk_spans *levels; /* the pieces at each Split depth */
    tk_spans byte_level_pieces;
    tk_marks marks;
    tk_buf prefixed; /* a piece with ByteLevel's leading space */
    tk_bpe_scratch bpe;
    tk_segments raw, segments;
    ts_token_ids *out;
    tk_word_fn word_fn; /* when set, words go here instead of to BPE (the trainer's counting) */
    void *word_ctx;
    ts_io_error *err;
} encoder;

static ts_status oom(encoder *e) { return ts_io_set_error(e->err, TS_ERR_OOM, "tokenizer encode: out of memory"); }

static ts_status bpe(encoder *e, const uint8_t *word, size_t n) {
    if (e->word_fn) return e->word_fn(e->word_ctx, word, n);
    ts_status st = tk_bpe_word(e->tok, &e->bpe, word, n, e->out);
    return st == TS_OK ? TS_OK : oom(e);
}

/* Step 3: the ByteLevel pre-tokenizer on one piece, then BPE. */
static ts_status encode_byte_level(encoder *e, const uint8_t *p, size_t n) {
    const ts_tokenizer *tok = e->tok;
    if (n == 0) return TS_OK;
    if (tok->bl_add_prefix_space && p[0] != ' ') {
        e->prefixed.len = 0;
        if (!tk_buf_append(&e->prefixed, " ", 1) || !tk_buf_append(&e->prefixed, p, n)) return oom(e);
        p = e->prefixed.data;
        n++;
    }
    if (!tok->bl_re) return bpe(e, p, n);
    e->byte_level_pieces.n = 0;
    ts_status st =
        tk_regex_split(tok->bl_re, &e->m, p, n, TK_SPLIT_ISOLATED, false, &e->marks, &e->byte_level_pieces, e->err);
    for (size_t i = 0; st == TS_OK && i < e->byte_level_pieces.n; i++) {
        tk_span s = e->byte_level_pieces.v[i];
        st = bpe(e, p + s.start, s.end - s.start);
    }
    return st;
}

/* Step 2: Split number `depth` on one piece, each result going on to the next step. */
static ts_status encode_piece(encoder *e, size_t depth, const uint8_t *p, size_t n) {
    if (depth == e->tok->n_splits) return encode_byte_level(e, p, n);
    const tk_split *sp = &e->tok->splits[depth];
    tk_spans *pieces = &e->levels[depth];
    pieces->n = 0;
    ts_status st = tk_regex_split(sp->re, &e->m, p, n, sp->behavior, sp->invert, &e->marks, pieces, e->err);
    for (size_t i = 0; st == TS_OK && i < pieces->n; i++) {
        tk_span s = pieces->v[i];
        st = encode_piece(e, depth + 1, p + s.start, s.end - s.start);
    }
    return st;
}

static ts_status encode_text(encoder *e, const uint8_t *text, size_t len, bool parse_special) {
    ts_status st = tk_split_added(e->tok, &e->m, text, len, parse_special, &e->raw, &e->segments, e->err);
    for (size_t i = 0; st == TS_OK && i < e->segments.n; i++) {
        tk_segment s = e->segments.v[i];
        if (s.id >= 0)
            st = tk_ids_push(e->out, s.id) ? TS_OK : oom(e);
        else
            st = encode_piece(e, 0, text + s.start, s.end - s.start);
    }
    return st;
}

static void encoder_free(encoder *e) {
    pcre2_match_data_free(e->m.md);
    if (e->levels)
        for (size_t i = 0; i < e->tok->n_splits; i++) tk_spans_free(&e->levels[i]);
    free(e->levels);
    tk_spans_free(&e->byte_level_pieces);
    tk_marks_free(&e->marks);
    tk_buf_free(&e->prefixed);
    tk_bpe_scratch_free(&e->bpe);
    tk_segments_free(&e->raw);
    tk_segments_free(&e->segments);
}

static ts_status push_special(encoder *e, int32_t id, const char *what) {
    if (id < 0)
        return ts_io_set_error(e->err, TS_ERR_STATE, "%s: tokenizer encode: %s asked for but the tokenizer has none",
                               e->tok->name, what);
    return tk_ids_push(e->out, id) ? TS_OK : oom(e);
}

ts_status ts_tokenizer_encode(const ts_tokenizer *tok, const void *text, size_t len, unsigned flags, ts_token_ids *out,
                              ts_io_error *err) {
    if (!tok || !out || (!text && len))
        return ts_io_set_error(err, TS_ERR_INVALID_ARG, "tokenizer encode: tok, out and text are required");
    encoder e = {.tok = tok, .out = out, .err = err};
    e.m.md = pcre2_match_data_create(1, NULL);
    e.m.mctx = tok->mctx;
    e.levels = calloc(tok->n_splits + 1, sizeof *e.levels);
    size_t first = out->n;
    ts_status st = e.m.md && e.levels ? TS_OK : oom(&e);
    if (st == TS_OK && (flags & TS_TOKENIZE_ADD_BOS)) st = push_special(&e, tok->bos_id, "BOS");
    if (st == TS_OK && (flags & TS_TOKENIZE_ADD_SPECIAL))
        st = tk_ids_append(out, tok->tmpl_prefix, tok->n_tmpl_prefix) ? TS_OK : oom(&e);
    if (st == TS_OK && len) st = encode_text(&e, text, len, (flags & TS_TOKENIZE_PARSE_SPECIAL) != 0);
    if (st == TS_OK && (flags & TS_TOKENIZE_ADD_SPECIAL))
        st = tk_ids_append(out, tok->tmpl_suffix, tok->n_tmpl_suffix) ? TS_OK : oom(&e);
    if (st == TS_OK && (flags & TS_TOKENIZE_ADD_EOS)) st = push_special(&e, tok->eos_id, "EOS");
    encoder_free(&e);
    if (st != TS_OK) out->n = first; /* all or nothing */
    return st;
}

ts_status tk_pretokenize(const ts_tokenizer *tok, const uint8_t *text, size_t len, tk_word_fn fn, void *ctx,
                         ts_io_error *err) {
    encoder e = {.tok = tok, .word_fn = fn, .word_ctx = ctx, .err = err};
    e.m.md = pcre2_match_data_create(1, NULL);
    e.m.mctx = tok->mctx;
    e.levels = calloc(tok->n_splits + 1, sizeof *e.levels);
    ts_status st = e.m.md && e.levels ? TS_OK : oom(&e);
    if (st == TS_OK && len) st = encode_piece(&e, 0, text, len);
    encoder_free(&e);
    return st;
}

/* ---------------------------------------------------------------- decode */

static bool has_id(const ts_tokenizer *tok, int32_t id) { return id >= 0 && id < tok->n_ids && tok->id_flags[id]; }

ts_status ts_tokenizer_decode(const ts_tokenizer *tok, const int32_t *ids, size_t n, unsigned flags,
                              ts_token_bytes *out, ts_io_error *err) {
    if (!tok || !out || (!ids && n))
        return ts_io_set_error(err, TS_ERR_INVALID_ARG, "tokenizer decode: tok, out and ids are required");
    size_t first = out->n;
    bool skip_special = (flags & TS_TOKENIZE_SKIP_SPECIAL) != 0;
    for (size_t i = 0; i < n; i++) {
        int32_t id = ids[i];
        if (!has_id(tok, id)) {
            out->n = first;
            return ts_io_set_error(err, TS_ERR_RANGE,
                                   "%s: tokenizer decode: ids[%zu] = %d is not in the vocabulary (size %d)", tok->name,
                                   i, (int)id, (int)tok->n_ids);
        }
        if (skip_special && (tok->id_flags[id] & TK_ID_SPECIAL)) continue;
        if (!bytes_append(out, tok->strings.data + tok->dec_off[id], tok->dec_len[id])) {
            out->n = first;
            return ts_io_set_error(err, TS_ERR_OOM, "tokenizer decode: out of memory");
        }
    }
    if (!out->data && !bytes_append(out, "", 0))
        return ts_io_set_error(err, TS_ERR_OOM, "tokenizer decode: out of memory");
    return TS_OK;
}

/* ---------------------------------------------------------------- vocabulary */

int32_t ts_tokenizer_vocab_size(const ts_tokenizer *tok) { return tok ? tok->n_ids : 0; }

const char *ts_tokenizer_id_to_token(const ts_tokenizer *tok, int32_t id, size_t *len) {
    if (!tok || !has_id(tok, id)) return NULL;
    if (len) *len = tok->tok_len[id];
    return (const char *)tok->strings.data + tok->tok_off[id];
}

int32_t ts_tokenizer_token_to_id(const ts_tokenizer *tok, const char *token, size_t len) {
    if (!tok || (!token && len)) return -1;
    const int64_t *id = tk_strmap_find(&tok->added_ids, token, len);
    if (!id) id = tk_strmap_find(&tok->vocab, token, len);
    return id ? (int32_t)*id : -1;
}

const uint8_t *ts_tokenizer_id_to_bytes(const ts_tokenizer *tok, int32_t id, size_t *len) {
    if (!tok || !has_id(tok, id)) return NULL;
    if (len) *len = tok->dec_len[id];
    return tok->strings.data + tok->dec_off[id];
}

bool ts_tokenizer_is_special(const ts_tokenizer *tok, int32_t id) {
    return tok && has_id(tok, id) && (tok->id_flags[id] & TK_ID_SPECIAL);
}

int32_t ts_tokenizer_bos_id(const ts_tokenizer *tok) { return tok ? tok->bos_id : -1; }
int32_t ts_tokenizer_eos_id(const ts_tokenizer *tok) { return tok ? tok->eos_id : -1; }

ts_status ts_tokenizer_set_bos_eos(ts_tokenizer *tok, int32_t bos_id, int32_t eos_id, ts_io_error *err) {
    if (!tok) return ts_io_set_error(err, TS_ERR_INVALID_ARG, "tokenizer set_bos_eos: tok is required");
    if ((bos_id != -1 && !has_id(tok, bos_id)) || (eos_id != -1 && !has_id(tok, eos_id)))
        return ts_io_set_error(err, TS_ERR_RANGE, "%s: BOS %d / EOS %d: not ids of this vocabulary (size %d)",
                               tok->name, (int)bos_id, (int)eos_id, (int)tok->n_ids);
    tok->bos_id = bos_id;
    tok->eos_id = eos_id;
    return TS_OK;
}

void tk_guess_bos_eos(ts_tokenizer *tok) {
    static const char *const bos_names[] = {"<｜begin▁of▁sentence｜>", "<s>", "<|begin_of_text|>", "<|startoftext|>",
                                            "<bos>"};
    static const char *const eos_names[] = {"<｜end▁of▁sentence｜>", "</s>", "<|end_of_text|>", "<|endoftext|>",
                                            "<eos>"};
    if (tok->n_tmpl_prefix) tok->bos_id = tok->tmpl_prefix[0];
    if (tok->n_tmpl_suffix) tok->eos_id = tok->tmpl_suffix[tok->n_tmpl_suffix - 1];
    for (size_t i = 0; tok->bos_id < 0 && i < sizeof bos_names / sizeof bos_names[0]; i++)
        tok->bos_id = ts_tokenizer_token_to_id(tok, bos_names[i], strlen(bos_names[i]));
    for (size_t i = 0; tok->eos_id < 0 && i < sizeof eos_names / sizeof eos_names[0]; i++)
        tok->eos_id = ts_tokenizer_token_to_id(tok, eos_names[i], strlen(eos_names[i]));
}
