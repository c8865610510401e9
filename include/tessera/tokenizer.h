/* tokenizer.h - byte-level BPE tokenizer of the io layer: loads a Hugging Face tokenizer.json
 * (DeepSeek-V3/V4's, GPT-2-style ones, and what ts_tokenizer_train writes) and encodes and
 * decodes exactly as the reference `tokenizers` library does; trains a new vocabulary from a
 * corpus and saves it in the same format. The train layer prepares token shards with it, serve
 * turns prompts into ids and sampled ids back into bytes.
 *
 * What a file may hold (anything else is TS_ERR_UNSUPPORTED at load, naming the part):
 *   model          BPE: vocab, merges ("a b" strings or [a, b] pairs), unk_token / fuse_unk,
 *                  ignore_merges; no dropout, no continuing_subword_prefix / end_of_word_suffix
 *   added_tokens   special or not, lstrip / rstrip / single_word / normalized, matched before
 *                  pre-tokenization (leftmost, longest first), as the reference does
 *   normalizer     none (null or an empty Sequence)
 *   pre_tokenizer  Split (Regex or String pattern; Isolated, Removed, MergedWithPrevious,
 *                  MergedWithNext, Contiguous; invert) any number of times, then ByteLevel
 *                  (use_regex = the GPT-2 pattern, add_prefix_space) last; a Sequence of these
 *   post_processor ByteLevel (nothing to add), TemplateProcessing, RobertaProcessing /
 *                  BertProcessing (the single-sequence template), or a Sequence of them
 *   decoder        ByteLevel (or a Sequence of ByteLevel)
 *   truncation, padding  ignored: encode never truncates or pads
 * Regexes are written for the reference's engine (Oniguruma, Unicode 16); they are translated
 * for PCRE2 (see src/io/tokenizer_regex.c for the rules and their limits).
 *
 * Bytes, not text: encode takes any byte string; invalid UTF-8 is never an error and never
 * loses a byte (it goes through the byte-level alphabet like everything else), so
 * decode(encode(x)) == x for every x - given a vocabulary holding all 256 byte tokens and no
 * add_prefix_space, as DeepSeek's and trained ones (DeepSeek style) have. Decode returns
 * bytes, invalid UTF-8 included.
 *
 * Errors follow the io layer's convention (io.h): a ts_status and a last `ts_io_error *err`.
 * A loaded tokenizer is read-only and may be used from several threads at once (the word
 * cache it keeps inside is locked). */
#ifndef TESSERA_TOKENIZER_H
#define TESSERA_TOKENIZER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "tessera/core.h"
#include "tessera/io.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct ts_tokenizer ts_tokenizer;

/* ---------------------------------------------------------------- growable outputs */

/* Encode appends to one of these, so a data-preparation loop can reuse it (clear, encode,
 * write) without allocating per document. Zero-initialise before first use. */
typedef struct {
    int32_t *ids;
    size_t n, cap;
} ts_token_ids;

void ts_token_ids_clear(ts_token_ids *t); /* n = 0, keeps the memory */
void ts_token_ids_free(ts_token_ids *t);  /* frees and zeroes */

/* Decode appends bytes here (not NUL-terminated; data[n] is kept 0 for convenience). */
typedef struct {
    uint8_t *data;
    size_t n, cap;
} ts_token_bytes;

void ts_token_bytes_clear(ts_token_bytes *b);
void ts_token_bytes_free(ts_token_bytes *b);

/* ---------------------------------------------------------------- loading */

/* path: a tokenizer.json file, or a directory holding tokenizer.json (and optionally
 * tokenizer_config.json, read only for bos_token / eos_token). Errors: TS_ERR_IO (cannot
 * read), TS_ERR_FORMAT (bad JSON or inconsistent contents: a merge of unknown tokens, a
 * duplicate id...), TS_ERR_UNSUPPORTED (a component this implementation does not have). */
ts_status ts_tokenizer_load(const char *path, ts_tokenizer **out, ts_io_error *err);
/* The same from a tokenizer.json already in memory; `name` is used in messages. */
ts_status ts_tokenizer_load_json(const char *json, size_t len, const char *name, ts_tokenizer **out, ts_io_error *err);
void ts_tokenizer_free(ts_tokenizer *tok);

/* ---------------------------------------------------------------- encoding and decoding */

enum {
    /* Recognise special added tokens (special: true) written in the text, as the reference
     * does by default. Without it they are encoded as plain text (the reference's
     * encode_special_tokens = True); non-special added tokens are always recognised. */
    TS_TOKENIZE_PARSE_SPECIAL = 1u << 0,
    /* Apply the file's post-processor template (the reference's add_special_tokens = True).
     * DeepSeek's file has none: its convention is that the caller adds BOS. */
    TS_TOKENIZE_ADD_SPECIAL = 1u << 1,
    /* Prepend the BOS id (TS_ERR_STATE when the tokenizer has none). Independent of the
     * template, so combining it with TS_TOKENIZE_ADD_SPECIAL on a file whose template adds
     * BOS gives two. */
    TS_TOKENIZE_ADD_BOS = 1u << 2,
    /* Append the EOS id (TS_ERR_STATE when the tokenizer has none). */
    TS_TOKENIZE_ADD_EOS = 1u << 3,
    /* Decode: leave out special tokens (the reference's skip_special_tokens). */
    TS_TOKENIZE_SKIP_SPECIAL = 1u << 4,
};
#define TS_TOKENIZE_DEFAULT TS_TOKENIZE_PARSE_SPECIAL

/* Appends the ids of text[0, len) to out. Any bytes are accepted (NUL and invalid UTF-8
 * included). Errors: TS_ERR_INVALID_ARG (NULL arguments), TS_ERR_OOM, TS_ERR_STATE (BOS/EOS
 * asked for but unknown), TS_ERR_INTERNAL (the regex engine failed: out of its limits). */
ts_status ts_tokenizer_encode(const ts_tokenizer *tok, const void *text, size_t len, unsigned flags, ts_token_ids *out,
                              ts_io_error *err);

/* Appends the bytes of ids[0, n) to out. TS_ERR_RANGE names the first id that is not in the
 * vocabulary. flags: TS_TOKENIZE_SKIP_SPECIAL or 0. */
ts_status ts_tokenizer_decode(const ts_tokenizer *tok, const int32_t *ids, size_t n, unsigned flags,
                              ts_token_bytes *out, ts_io_error *err);

/* ---------------------------------------------------------------- vocabulary */

/* Largest id + 1 over the model vocabulary and the added tokens: the rows an embedding needs
 * (129 280 for DeepSeek-V4). Ids below it without a token (holes) are possible in principle. */
int32_t ts_tokenizer_vocab_size(const ts_tokenizer *tok);
/* The token string of an id as the file writes it (byte-level form, e.g. "Ġthe"; added tokens
 * as written), with its length in *len (may be NULL); NULL for an unknown id. */
const char *ts_tokenizer_id_to_token(const ts_tokenizer *tok, int32_t id, size_t *len);
/* The id of a token string (byte-level form, or an added token's content); added tokens win
 * over the model vocabulary, as in the reference. -1 when absent. */
int32_t ts_tokenizer_token_to_id(const ts_tokenizer *tok, const char *token, size_t len);
/* The bytes decoding one id gives (what a streaming detokenizer appends); NULL if unknown. */
const uint8_t *ts_tokenizer_id_to_bytes(const ts_tokenizer *tok, int32_t id, size_t *len);
bool ts_tokenizer_is_special(const ts_tokenizer *tok, int32_t id);

/* BOS / EOS: from tokenizer_config.json when loading a directory, else from the template's
 * first / last special token, else the first of the usual names that exists
 * (<｜begin▁of▁sentence｜>, <s>, <|begin_of_text|>, <|startoftext|>, <bos>; for EOS
 * <｜end▁of▁sentence｜>, </s>, <|end_of_text|>, <|endoftext|>, <eos>). -1 when none. */
int32_t ts_tokenizer_bos_id(const ts_tokenizer *tok);
int32_t ts_tokenizer_eos_id(const ts_tokenizer *tok);
/* Overrides them (-1 = none); TS_ERR_RANGE for an id that has no token. */
ts_status ts_tokenizer_set_bos_eos(ts_tokenizer *tok, int32_t bos_id, int32_t eos_id, ts_io_error *err);

/* ---------------------------------------------------------------- training and saving */

typedef enum {
    /* DeepSeek-V3/V4's: digits in runs of 1-3, CJK runs, a GPT-4-like word/punctuation/space
     * split, then ByteLevel without prefix space. */
    TS_TOKENIZER_PRETOK_DEEPSEEK = 0,
    /* GPT-2's: ByteLevel with its own regex ('s|'t|... | ?\p{L}+| ?\p{N}+|...). */
    TS_TOKENIZER_PRETOK_GPT2 = 1,
} ts_tokenizer_pretok;

typedef struct {
    size_t vocab_size;                 /* total, counting the special tokens and the 256 byte tokens */
    const char *const *special_tokens; /* get ids 0, 1, ... in this order; may be NULL */
    size_t n_special_tokens;
    uint64_t min_frequency; /* a pair seen fewer times than this is never merged (0 = any) */
    ts_tokenizer_pretok pretokenizer;
    bool add_prefix_space; /* GPT-2 style only: " " before each piece not starting with one */
    const char *bos_token; /* optional, one of special_tokens: recorded as BOS (and written */
    const char *eos_token; /* to tokenizer_config.json by ts_tokenizer_save into a dir) */
} ts_tokenizer_train_opts;

/* Learns a byte-level BPE vocabulary from texts[i][0, lens[i]) (each text a document; the
 * pre-tokenizer never joins pieces across documents) exactly as the reference BpeTrainer does
 * (same pair counting, same choice of the most frequent pair, ties to the pair of smallest
 * ids, same ids), so training on the same corpus gives the same vocabulary and merges.
 * Special tokens in the texts are not treated specially (the reference does not either).
 * The result is a ready tokenizer; ts_tokenizer_save writes it. */
ts_status ts_tokenizer_train(const char *const *texts, const size_t *lens, size_t n_texts,
                             const ts_tokenizer_train_opts *opts, ts_tokenizer **out, ts_io_error *err);

/* Writes the tokenizer as a tokenizer.json that this loader and the reference library both
 * read (same layout and key order as the reference's own save). path: a file, or an existing
 * directory, into which tokenizer.json and tokenizer_config.json (bos/eos) are written.
 * Written atomically (ts_atomic_write_file). */
ts_status ts_tokenizer_save(const ts_tokenizer *tok, const char *path, ts_io_error *err);
/* The same tokenizer.json as a malloc'd NUL-terminated string (*len without the NUL). */
ts_status ts_tokenizer_to_json(const ts_tokenizer *tok, char **json, size_t *len, ts_io_error *err);

#ifdef __cplusplus
}
#endif
#endif
