/* tokenizer_internal.h - what the tokenizer's source files share and nothing outside them sees:
 * the ts_tokenizer struct, the small containers it is built from (byte buffers, hash maps),
 * the GPT-2 byte-level alphabet, and the entry points of each stage:
 *   tokenizer_util.c    containers, hashing, UTF-8 and the byte-level alphabet
 *   tokenizer_regex.c   Oniguruma -> PCRE2 translation, regex splitting (Split behaviours)
 *   tokenizer_unicode.c Unicode 15-16 additions to the general categories (generated)
 *   tokenizer_added.c   added / special tokens: the trie and the reference's matching rules
 *   tokenizer_bpe.c     BPE merges of one pre-token, and the bounded word cache
 *   tokenizer_load.c    tokenizer.json -> ts_tokenizer
 *   tokenizer_save.c    ts_tokenizer -> tokenizer.json
 *   tokenizer_train.c   the BPE trainer
 *   tokenizer.c         the public API: encode, decode, lookups */
#ifndef TS_IO_TOKENIZER_INTERNAL_H
#define TS_IO_TOKENIZER_INTERNAL_H

#define PCRE2_CODE_UNIT_WIDTH 8
#include <jansson.h>
#include <pcre2.h>
#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "tessera/tokenizer.h"

/* ---------------------------------------------------------------- containers (tokenizer_util.c) */

/* A growable byte buffer; also the string pool that token strings live in (addressed by
 * 32-bit offsets, so pools stay below 4 GiB). */
typedef struct {
    uint8_t *data;
    size_t len, cap;
} tk_buf;

bool tk_buf_reserve(tk_buf *b, size_t extra);
bool tk_buf_append(tk_buf *b, const void *p, size_t n);
void tk_buf_free(tk_buf *b);

/* A growable array of (start, end) byte ranges: the pieces a split produces. */
typedef struct {
    size_t start, end;
} tk_span;

typedef struct {
    tk_span *v;
    size_t n, cap;
} tk_spans;

bool tk_spans_push(tk_spans *s, size_t start, size_t end);
void tk_spans_free(tk_spans *s);

/* Ranges that cover a piece, each flagged as a regex match or the text between matches. */
typedef struct {
    size_t start, end;
    bool is_match;
} tk_mark;

typedef struct {
    tk_mark *v;
    size_t n, cap;
} tk_marks;

bool tk_marks_push(tk_marks *m, size_t start, size_t end, bool is_match);
void tk_marks_free(tk_marks *m);

bool tk_ids_push(ts_token_ids *out, int32_t id);
bool tk_ids_append(ts_token_ids *out, const int32_t *ids, size_t n);

uint64_t tk_hash_bytes(const void *p, size_t n);
uint64_t tk_hash_u64(uint64_t x);

/* Byte string -> int64 value; keys are copied into the map's own pool. */
typedef struct {
    uint64_t hash;
    uint32_t off, len; /* len == UINT32_MAX: empty slot */
    int64_t value;
} tk_strmap_slot;

typedef struct {
    tk_strmap_slot *slots;
    size_t cap, count;
    tk_buf keys;
} tk_strmap;

const int64_t *tk_strmap_find(const tk_strmap *m, const void *key, size_t len);
/* The value slot of key, inserted with `init` when absent (*inserted says which); NULL on OOM. */
int64_t *tk_strmap_upsert(tk_strmap *m, const void *key, size_t len, int64_t init, bool *inserted);
const uint8_t *tk_strmap_key(const tk_strmap *m, const tk_strmap_slot *slot);
void tk_strmap_free(tk_strmap *m);

/* uint64 key -> uint64 value (key UINT64_MAX is reserved for empty slots). */
typedef struct {
    uint64_t *keys, *vals;
    size_t cap, count;
} tk_u64map;

uint64_t *tk_u64map_find(const tk_u64map *m, uint64_t key);
uint64_t *tk_u64map_upsert(tk_u64map *m, uint64_t key, uint64_t init); /* NULL on OOM */
void tk_u64map_free(tk_u64map *m);

static inline uint64_t tk_pair_key(uint32_t left, uint32_t right) { return (uint64_t)left << 32 | right; }

/* ---------------------------------------------------------------- UTF-8 and the byte-level alphabet */

/* Length of the UTF-8 character starting at p[0] (n bytes available): 1 for an invalid or
 * truncated sequence, so that walking text always advances. *cp receives the code point
 * (the byte itself for an invalid one) and *valid whether it was well-formed. */
size_t tk_utf8_next(const uint8_t *p, size_t n, uint32_t *cp, bool *valid);
size_t tk_utf8_put(uint32_t cp, uint8_t out[4]);
/* Start of the last character of p[0, n) (n > 0), stepping back over continuation bytes. */
size_t tk_utf8_last_start(const uint8_t *p, size_t n);

/* GPT-2's bytes_to_unicode: byte b is written as code point tk_byte_char(b). */
uint32_t tk_byte_char(uint8_t b);
/* The byte a byte-level code point stands for, or -1 when cp is not in the alphabet. */
int tk_char_byte(uint32_t cp);
/* Unicode White_Space (what Rust's char::is_whitespace and Oniguruma's \s accept). */
bool tk_is_white_space(uint32_t cp);

/* ---------------------------------------------------------------- regexes (tokenizer_regex.c) */

typedef enum {
    TK_SPLIT_REMOVED = 0,
    TK_SPLIT_ISOLATED,
    TK_SPLIT_MERGED_WITH_PREVIOUS,
    TK_SPLIT_MERGED_WITH_NEXT,
    TK_SPLIT_CONTIGUOUS,
} tk_split_behavior;

/* Translates an Oniguruma pattern (the reference's regex flavour) to PCRE2 syntax and
 * compiles it (or, literal, compiles `source` as a plain string). TS_ERR_UNSUPPORTED when the
 * pattern cannot be translated or compiled, with the reason in err. */
ts_status tk_regex_compile(const char *source, size_t len, bool literal, const char *what, pcre2_code **out,
                           ts_io_error *err);
/* Code points the reference's regex engine (Unicode 16) puts in general category `category`
 * ('L', 'M', 'N', 'P' or 'S') that PCRE2 10.42 (Unicode 14) does not: a fragment for a
 * character class, "" for other categories (tokenizer_unicode.c, generated). */
const char *tk_unicode_extra_ranges(char category);
/* The pattern text tk_regex_compile would hand PCRE2 (malloc'd), for tests and messages. */
char *tk_regex_translate(const char *source, size_t len, char *why, size_t why_len);
pcre2_match_context *tk_match_context_new(void);

/* What one encode call needs for matching; not shared between threads. */
typedef struct {
    pcre2_match_data *md;
    pcre2_match_context *mctx;
} tk_matcher;

/* The reference's find_matches: covers text[0, n) with (start, end) ranges, matches flagged,
 * then applies the Split behaviour (and invert); appends the resulting non-empty pieces (as
 * offsets into text) to out. */
ts_status tk_regex_split(const pcre2_code *re, tk_matcher *m, const uint8_t *text, size_t n, tk_split_behavior behavior,
                         bool invert, tk_marks *scratch, tk_spans *out, ts_io_error *err);
/* Does re match at exactly offset `at` of text[0, n)? (anchored; used for \w tests) */
bool tk_regex_matches_at(const pcre2_code *re, tk_matcher *m, const uint8_t *text, size_t n, size_t at);

/* ---------------------------------------------------------------- added tokens (tokenizer_added.c) */

typedef struct {
    int32_t id;
    uint32_t off, len; /* content, in tok->strings */
    bool special, lstrip, rstrip, single_word, normalized;
} tk_added;

typedef struct {
    int32_t child, sibling; /* first child, next sibling; -1 = none */
    int32_t added;          /* index in tok->added of the token ending here; -1 = none */
    uint8_t byte;
} tk_trie_node;

typedef struct {
    tk_trie_node *nodes; /* nodes[0] is the root */
    size_t n, cap;
    int32_t root_child[256];
} tk_trie;

bool tk_trie_insert(tk_trie *t, const uint8_t *s, size_t n, int32_t added);
void tk_trie_free(tk_trie *t);

/* A piece of the input after added-token extraction: an added token's id, or -1 for text. */
typedef struct {
    int32_t id;
    size_t start, end;
} tk_segment;

typedef struct {
    tk_segment *v;
    size_t n, cap;
} tk_segments;

void tk_segments_free(tk_segments *s);

/* ---------------------------------------------------------------- the tokenizer */

enum {
    TK_ID_PRESENT = 1, /* the id has a token */
    TK_ID_ADDED = 2,   /* ... which is an added token */
    TK_ID_SPECIAL = 4, /* ... marked special */
};

typedef struct {
    pcre2_code *re;
    char *pattern; /* as the file wrote it (saved back unchanged) */
    bool literal;  /* {"String": ...} rather than {"Regex": ...} */
    tk_split_behavior behavior;
    bool invert;
} tk_split;

typedef struct tk_cache tk_cache;

struct ts_tokenizer {
    char *name; /* file name or "(memory)", for messages */

    /* Every id below n_ids: its token string as the file has it, and the bytes it decodes to. */
    int32_t n_ids;
    uint32_t *tok_off, *tok_len;
    uint32_t *dec_off, *dec_len;
    uint8_t *id_flags;
    tk_buf strings;

    /* The BPE model. */
    tk_strmap vocab;       /* model vocabulary: token string -> id */
    size_t vocab_count;    /* entries in it (the reference's model vocab size) */
    tk_strmap vocab_bytes; /* byte-level tokens by their bytes -> id (for ignore_merges) */
    int32_t byte_id[256];  /* the model id of each single byte; -1 when the vocab lacks it */
    tk_u64map merges;      /* pair (left, right) -> rank << 32 | merged id */
    uint32_t *merge_list;  /* left, right per rank, as the file lists them (for save) */
    size_t n_merges;
    int32_t unk_id; /* -1: none (unknown bytes are dropped, as in the reference) */
    bool fuse_unk, ignore_merges;

    /* Added tokens, in the reference's order (specials first, then the others). */
    tk_added *added;
    size_t n_added;
    tk_strmap added_ids; /* content -> id */
    tk_trie trie_raw;    /* normalized: false, matched on the raw text */
    tk_trie trie_norm;   /* normalized: true, matched on the pieces between those */
    pcre2_code *word_re; /* one word character (for single_word), when needed */

    /* Pre-tokenizer: splits in order, then ByteLevel. */
    tk_split *splits;
    size_t n_splits;
    bool bl_add_prefix_space, bl_use_regex, bl_trim_offsets;
    pcre2_code *bl_re; /* GPT-2's pattern when bl_use_regex */
    pcre2_match_context *mctx;

    /* Post-processor template for one sequence: ids before and after it. */
    int32_t *tmpl_prefix, *tmpl_suffix;
    size_t n_tmpl_prefix, n_tmpl_suffix;

    /* The file's normalizer / pre_tokenizer / post_processor / decoder parts, as compact
     * JSON, so that save writes them back unchanged. */
    char *normalizer_json, *pre_tokenizer_json, *post_processor_json, *decoder_json;

    int32_t bos_id, eos_id;
    tk_cache *cache;
};

/* Builds a tokenizer from a parsed tokenizer.json (tokenizer_load.c). */
ts_status tk_build(json_t *root, const char *name, ts_tokenizer **out, ts_io_error *err);
/* Looks up BOS / EOS by their usual names (after the template). */
void tk_guess_bos_eos(ts_tokenizer *tok);

/* Splits text at added tokens (tokenizer_added.c): the raw trie over the whole text, then the
 * normalized trie over the pieces in between, as the reference does. */
ts_status tk_split_added(const ts_tokenizer *tok, tk_matcher *m, const uint8_t *text, size_t n, bool parse_special,
                         tk_segments *raw, tk_segments *out, ts_io_error *err);

/* Runs the pre-tokenizer (Splits, then ByteLevel) over text without extracting added tokens
 * and calls fn for each word instead of BPE: what the trainer counts (tokenizer.c). */
typedef ts_status (*tk_word_fn)(void *ctx, const uint8_t *word, size_t n);
ts_status tk_pretokenize(const ts_tokenizer *tok, const uint8_t *text, size_t len, tk_word_fn fn, void *ctx,
                         ts_io_error *err);

/* BPE (tokenizer_bpe.c). */
typedef struct {
    int32_t *id, *prev, *next;
    uint32_t *len;
    size_t cap;
    struct tk_bpe_merge {
        uint32_t rank, pos;
        int32_t new_id;
    } * heap;
    size_t heap_n, heap_cap;
} tk_bpe_scratch;

ts_status tk_bpe_word(const ts_tokenizer *tok, tk_bpe_scratch *s, const uint8_t *word, size_t n, ts_token_ids *out);
void tk_bpe_scratch_free(tk_bpe_scratch *s);
tk_cache *tk_cache_new(void);
void tk_cache_free(tk_cache *c);

/* The GPT-2 pre-tokenizer pattern ByteLevel uses when use_regex is set. */
extern const char tk_gpt2_pattern[];

#endif
