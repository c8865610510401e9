/* data.h - training data: pre-tokenized token shards (io layer), `prepare` that turns text and
 * JSONL files into train / validation shards through any tokenizer, the byte-level tokenizer of
 * the tiny configuration, the data loader that packs shards into B x T training sequences with
 * document boundaries (train layer), and the embedded synthetic dataset that the project
 * generates itself, with an exact-answer evaluator.
 *
 * Errors follow the io convention (io.h): functions that can fail return a ts_status and take a
 * last `ts_io_error *err` (may be NULL) whose message names the file and what is wrong.
 *
 * How the pieces fit:
 *   text / JSONL --ts_data_prepare(encode)--> DIR/train-00000.tshard, DIR/val-00000.tshard
 *   ts_synth_write_shards ------------------> the same layout, from the generated corpus
 *   ts_shard_list(DIR, "train") --> ts_data_loader_open --> ts_data_loader_next: B x T batches
 *   ts_synth_evaluate(complete) --> exact-answer accuracy per task on held-out items */
#ifndef TESSERA_DATA_H
#define TESSERA_DATA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "tessera/core.h"
#include "tessera/io.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---------------------------------------------------------------- checksum */

/* XXH64 (xxHash, 64-bit) of size bytes, exactly the reference algorithm, so a shard's checksum
 * can be checked with the stock `xxhsum -H64` over the same bytes. Also used for the stable
 * train/validation split of documents. */
uint64_t ts_xxh64(const void *data, size_t size, uint64_t seed);

/* ---------------------------------------------------------------- token shards
 *
 * A token shard (".tshard") holds the documents of one split, already tokenized. Layout, all
 * integers little-endian, every section 8-byte aligned:
 *
 *   offset  size  field
 *   0       8     magic "TSSHARD\0"
 *   8       4     version (1)
 *   12      4     header_bytes (64): where the tokens start
 *   16      4     token_bytes: 2 (u16) when vocab_size <= 65536, else 4 (u32)
 *   20      4     vocab_size: every token id is < this
 *   24      8     n_tokens
 *   32      8     n_docs
 *   40      8     doc_index_offset = header_bytes + n_tokens * token_bytes rounded up to 8
 *   48      8     payload_checksum: XXH64 (seed 0) of bytes [header_bytes, end of file)
 *   56      4     header_checksum: low 32 bits of XXH64 (seed 0) of bytes [0, 56)
 *   60      4     reserved, 0
 *   64            tokens[n_tokens], zero padding to 8
 *   doc_index_offset  u64 doc_start[n_docs + 1]: document d is tokens [doc_start[d],
 *                     doc_start[d + 1]); doc_start[0] = 0, doc_start[n_docs] = n_tokens, and
 *                     every document holds at least one token (strictly increasing).
 *   end of file
 *
 * A reader accepts versions up to its own; a newer one is TS_ERR_UNSUPPORTED. */

#define TS_SHARD_MAGIC "TSSHARD"
#define TS_SHARD_VERSION 1u
#define TS_SHARD_HEADER_BYTES 64u
#define TS_SHARD_EXTENSION ".tshard"
/* Token ids are handed to the model as int32, so vocabularies stop below 2^31. */
#define TS_SHARD_MAX_VOCAB 0x7FFFFFFFu

typedef struct {
    uint32_t version;
    uint32_t token_bytes;    /* 2 or 4 */
    uint32_t vocab_size;
    uint64_t n_tokens;
    uint64_t n_docs;
    uint64_t payload_checksum;
} ts_shard_info;

/* ---- writing. The writer keeps the shard's image in memory (2 or 4 bytes per token) and
 * writes it in one go, atomically, at finish; ts_data_prepare bounds that memory by starting a
 * new shard every max_shard_tokens. */
typedef struct ts_shard_writer ts_shard_writer;

/* 1 <= vocab_size <= TS_SHARD_MAX_VOCAB; the token width follows from it. */
ts_status ts_shard_writer_new(const char *path, uint32_t vocab_size, ts_shard_writer **out, ts_io_error *err);
/* Appends one document of n >= 1 token ids, each < vocab_size (TS_ERR_RANGE naming the id and
 * its position otherwise; TS_ERR_INVALID_ARG for an empty document). Nothing is appended on
 * error. */
ts_status ts_shard_writer_add(ts_shard_writer *w, const uint32_t *ids, size_t n, ts_io_error *err);
uint64_t ts_shard_writer_tokens(const ts_shard_writer *w);
uint64_t ts_shard_writer_docs(const ts_shard_writer *w);
/* Writes the file atomically (ts_atomic_write_file) and frees the writer, also on failure. */
ts_status ts_shard_writer_finish(ts_shard_writer *w, ts_io_error *err);
/* Frees the writer without writing anything. */
void ts_shard_writer_abort(ts_shard_writer *w);

/* ---- reading. Opening maps the file read-only and validates all of it before returning:
 * magic, version, header checksum, header fields, file size (truncated or trailing bytes),
 * payload checksum, the document index, and every token id against vocab_size. Failures:
 * TS_ERR_IO (cannot open / map), TS_ERR_FORMAT (bad magic, bad header, truncated, checksum
 * mismatch, bad document index), TS_ERR_UNSUPPORTED (newer version), TS_ERR_RANGE (a token id
 * >= vocab_size); the message names the file and says what is wrong. */
typedef struct ts_shard ts_shard;

enum {
    /* Skip the payload checksum and the token-range scan (for very large trusted shards whose
     * every page would otherwise be read at open). The structure is still validated. */
    TS_SHARD_OPEN_SKIP_SCAN = 1u << 0,
};

ts_status ts_shard_open(const char *path, unsigned flags, ts_shard **out, ts_io_error *err);
void ts_shard_close(ts_shard *s);
const ts_shard_info *ts_shard_get_info(const ts_shard *s);
const char *ts_shard_path(const ts_shard *s);
/* Token i (< n_tokens). */
uint32_t ts_shard_token(const ts_shard *s, uint64_t i);
/* Copies tokens [start, start + n) (which must lie inside the shard) into out. */
void ts_shard_read(const ts_shard *s, uint64_t start, size_t n, int32_t *out);
/* First token of document d; d == n_docs gives n_tokens. */
uint64_t ts_shard_doc_start(const ts_shard *s, uint64_t d);

/* Paths of DIR/<split>-*.tshard (split "train", "val", ...) in name order, as prepare and
 * ts_synth_write_shards name them. Zero shards is TS_ERR_IO naming the directory and split.
 * Free with ts_shard_list_free. */
ts_status ts_shard_list(const char *dir, const char *split, char ***paths, size_t *n, ts_io_error *err);
void ts_shard_list_free(char **paths, size_t n);

/* ---------------------------------------------------------------- byte-level tokenizer
 *
 * The tiny configuration's vocabulary (spec §7.1): 264 ids, 0 BOS, 1 EOS, 2 PAD, 3..258 = bytes
 * 0..255 (id = byte + 3), 259..263 reserved. Documents are stored as BOS, text, EOS. */

#define TS_BYTE_VOCAB_SIZE 264
#define TS_BYTE_BOS 0
#define TS_BYTE_EOS 1
#define TS_BYTE_PAD 2
#define TS_BYTE_OFFSET 3

/* An encoder turns len bytes of text into at most cap token ids in out_ids and sets *n_out.
 * It returns 0 (TS_OK) on success. When cap is too small it returns TS_ERR_RANGE and should
 * set *n_out to the number it needs (the caller then retries with a larger buffer); any other
 * non-zero value is a failure. It adds no BOS/EOS: callers do. Our BPE tokenizer plugs in here. */
typedef int (*ts_encode_fn)(void *ctx, const char *text, size_t len, uint32_t *out_ids, size_t cap,
                            size_t *n_out);

/* The byte-level encoder (ctx unused): one id per byte. */
int ts_byte_encode(void *ctx, const char *text, size_t len, uint32_t *out_ids, size_t cap, size_t *n_out);
/* Writes the bytes of the byte ids among ids[0..n) into out (special and reserved ids are
 * skipped), at most cap - 1 of them, NUL-terminated (cap >= 1). Returns the bytes written. */
size_t ts_byte_decode(const int32_t *ids, size_t n, char *out, size_t cap);

/* ---------------------------------------------------------------- prepare
 *
 * Turns text files into train and validation shards (the library half of `tessera data
 * prepare`). Inputs are files or directories (a directory contributes its regular files, in
 * name order, not recursively, skipping names that start with '.'). Files are read in the order
 * given. A file whose name ends in ".jsonl" or ".ndjson" is JSON Lines; every other file is
 * plain UTF-8 (or any bytes) text (`input_format` can force one or the other for every file):
 *  - plain text, TS_TEXT_DOC_PER_BLOCK (default): documents are separated by one or more blank
 *    lines (lines holding only spaces, tabs, \r, \f, \v); a document is its lines joined with
 *    "\n", without the final line break ("\r\n" is read as "\n").
 *  - plain text, TS_TEXT_DOC_PER_FILE: each file is one document, byte for byte.
 *  - JSONL: each non-blank line is a JSON object whose string field `jsonl_field` ("text") is
 *    one document. A line that is not valid JSON, not an object, or lacks the field as a string
 *    is reported as "FILE:LINE: reason" through `warn` and skipped, or fails the whole run with
 *    TS_ERR_FORMAT when jsonl_strict is set.
 * Documents that are empty or whitespace-only are skipped (and counted).
 *
 * Split: a document goes to validation when XXH64(text, split_seed) / 2^64 < val_fraction.
 * The split depends only on the document's text, so it is stable across runs, input order and
 * tokenizers, and exact duplicates always land on the same side (no leakage through copies).
 *
 * Each document is stored as [bos_id] + encode(text) + [eos_id] (either omitted when < 0).
 * Output: out_dir/train-00000.tshard ... and out_dir/val-00000.tshard ...: a new shard is
 * started before a document that would take the current one past max_shard_tokens (a document
 * never spans shards). Both splits get at least one shard, possibly with zero documents.
 * out_dir is created if missing; if it already holds train-/val- shards the run fails with
 * TS_ERR_STATE unless overwrite is set, in which case shards left over from the earlier run
 * (numbers beyond the new count) are removed after the new ones are written. A failed run
 * leaves the shards it had already completed (each one whole, being written atomically); rerun
 * with overwrite. */

typedef enum {
    TS_TEXT_DOC_PER_BLOCK = 0,
    TS_TEXT_DOC_PER_FILE,
} ts_text_split;

typedef enum {
    TS_INPUT_AUTO = 0, /* by name: ".jsonl" / ".ndjson" are JSON Lines, the rest text */
    TS_INPUT_TEXT,
    TS_INPUT_JSONL,
} ts_input_format;

/* Receives each non-fatal problem (a skipped JSONL line), already formatted. */
typedef void (*ts_prepare_warn_fn)(void *user, const char *message);

typedef struct {
    const char *const *inputs;  /* files or directories */
    size_t n_inputs;
    const char *out_dir;
    ts_encode_fn encode;        /* default ts_byte_encode */
    void *encode_ctx;
    uint32_t vocab_size;        /* default TS_BYTE_VOCAB_SIZE */
    int64_t bos_id, eos_id;     /* default TS_BYTE_BOS, TS_BYTE_EOS; < 0: none */
    double val_fraction;        /* [0, 1); default 0.05 */
    uint64_t split_seed;        /* default 0 */
    ts_text_split text_split;
    ts_input_format input_format; /* default TS_INPUT_AUTO */
    const char *jsonl_field;    /* default "text" */
    bool jsonl_strict;          /* default false: skip bad lines */
    uint64_t max_shard_tokens;  /* default 64 Mi; 0: no limit */
    bool overwrite;             /* default false */
    ts_prepare_warn_fn warn;    /* may be NULL */
    void *warn_user;
} ts_prepare_options;

typedef struct {
    uint64_t files;
    uint64_t train_docs, val_docs;
    uint64_t train_tokens, val_tokens;
    uint32_t train_shards, val_shards;
    uint64_t bad_lines;   /* JSONL lines skipped */
    uint64_t empty_docs;  /* empty / whitespace-only documents skipped */
} ts_prepare_result;

void ts_prepare_default_options(ts_prepare_options *opts);
/* res may be NULL; when given it is zeroed first and filled as far as the run got. */
ts_status ts_data_prepare(const ts_prepare_options *opts, ts_prepare_result *res, ts_io_error *err);

/* ---------------------------------------------------------------- data loader
 *
 * The loader maps one or more shards (same vocab_size) and cuts the token stream into rows of
 * T tokens, B rows per batch. Training order: epoch e visits every document exactly once, in a
 * permutation drawn from (seed, e) (or in file order with shuffle off); the documents of
 * epoch 0, then epoch 1, ... form one endless stream, cut into consecutive rows. So within an
 * epoch no token is lost or repeated; a document may continue from one row into the next, and
 * the first row of an epoch can begin in the previous epoch's last document.
 *
 * Per token (row-major [B, T], index t within the row):
 *  - inputs[t]: the token id.
 *  - targets[t]: the next token of the same document, or TS_TARGET_IGNORE when t is the last
 *    token of its document (the next token belongs to another document that, under the document
 *    mask, the model cannot see; with BOS-prefixed documents it would always be BOS) and on
 *    padding. The target of a row's last token is read from the document even though that token
 *    is the next row's first input.
 *  - doc_start[t]: the row index of the first token of t's segment (the part of its document
 *    inside this row; 0 for a document continued from the previous row). The document mask
 *    is: t may attend to s iff doc_start[t] <= s <= t. Padding tokens have doc_start[t] = t.
 *  - positions[t] = t - doc_start[t]: restarts at 0 at each document (and at the row start for
 *    a continued document), so positions are always < T.
 *  - segments[t]: 0, 1, 2, ... for the successive segments of a row; -1 on padding.
 *  - doc_ids[t]: which document (0-based, over all shards in the order given); -1 on padding.
 * Nothing is allocated per batch: the returned batch and its arrays belong to the loader and
 * are overwritten by the next call.
 *
 * Single pass (validation): the documents are read once in file order; the stream's tail is
 * padded with pad_id (targets ignored) to fill the last batch, after which next returns NULL;
 * ts_data_loader_rewind starts again. */

#define TS_TARGET_IGNORE (-1)

typedef struct {
    int batch;          /* B >= 1 */
    int seq_len;        /* T >= 1 */
    uint64_t seed;      /* document order */
    bool shuffle;       /* permute documents each epoch (default true) */
    bool single_pass;   /* one epoch in file order, then end (validation); forces shuffle off */
    int32_t pad_id;     /* padding token for the single-pass tail (default TS_BYTE_PAD) */
    unsigned open_flags;/* passed to ts_shard_open */
} ts_data_loader_options;

typedef struct {
    int batch, seq_len;
    const int32_t *inputs;     /* [B * T] */
    const int32_t *targets;    /* [B * T] */
    const int32_t *positions;  /* [B * T] */
    const int32_t *doc_start;  /* [B * T] */
    const int32_t *segments;   /* [B * T] */
    const int64_t *doc_ids;    /* [B * T] */
    int64_t n_tokens;          /* non-padding inputs */
    int64_t n_targets;         /* targets that are not TS_TARGET_IGNORE */
    uint64_t epoch;            /* epoch of the batch's first token */
} ts_batch;

/* Where the loader is in its stream: the next token is token `token_offset` of document
 * `doc_cursor` of epoch `epoch`'s order. The order of an epoch is a pure function of (seed,
 * epoch), so this is the whole state (the shuffle RNG is re-seeded from them). Positions are
 * token-granular, so a run may resume with another batch size or sequence length. */
typedef struct {
    uint64_t epoch;
    uint64_t doc_cursor;
    uint64_t token_offset;
    uint64_t seed;
    uint64_t data_fingerprint; /* identifies the shards (counts and checksums) */
} ts_data_position;

typedef struct ts_data_loader ts_data_loader;

/* Train defaults: shuffle on, single pass off, pad TS_BYTE_PAD. */
void ts_data_loader_default_options(ts_data_loader_options *opts, int batch, int seq_len, uint64_t seed);
ts_status ts_data_loader_open(const char *const *paths, size_t n_paths, const ts_data_loader_options *opts,
                              ts_data_loader **out, ts_io_error *err);
void ts_data_loader_free(ts_data_loader *l);
/* The next batch, or NULL once a single-pass loader is exhausted. */
const ts_batch *ts_data_loader_next(ts_data_loader *l);
void ts_data_loader_rewind(ts_data_loader *l);
uint64_t ts_data_loader_tokens(const ts_data_loader *l); /* per epoch */
uint64_t ts_data_loader_docs(const ts_data_loader *l);
uint32_t ts_data_loader_vocab_size(const ts_data_loader *l);
void ts_data_loader_position(const ts_data_loader *l, ts_data_position *out);
/* Restores a position: TS_ERR_INVALID_ARG when it was taken on other data (fingerprint) or
 * with another seed, TS_ERR_RANGE when it points outside the data. */
ts_status ts_data_loader_seek(ts_data_loader *l, const ts_data_position *pos, ts_io_error *err);

/* Text form for checkpoints (a safetensors metadata value, a JSON string):
 * "tsdata1 epoch=E doc=D token=K seed=S data=XXXXXXXXXXXXXXXX" (data in hex). */
#define TS_DATA_POSITION_TEXT_MAX 160
void ts_data_position_format(const ts_data_position *pos, char *buf, size_t cap);
ts_status ts_data_position_parse(const char *text, ts_data_position *out, ts_io_error *err);

/* ---------------------------------------------------------------- synthetic dataset
 *
 * The default corpus, generated by the project itself (no third-party text): short documents,
 * each a task prompt ending in '=' followed by its exact answer, e.g. "417+285=702". Tasks:
 *   copy     "copy kqzt=kqzt"                   3-8 random letters
 *   reverse  "rev kqzt=tzqk"                    3-7 letters
 *   sort     "sort kqzt=kqtz"                   3-7 letters, sorted by byte value
 *   count    "count b in abcbd=2"               4-10 letters of "abcd"
 *   recall   "k3:red k7:blue k1:gold k7?=blue"  2-4 distinct digit keys, 8 colour words
 *   add      "417+85=502"                       operands 0-999, 1-3 digits each
 *   sub      "417-85=332"                       operands 0-999, first >= second
 * Item i of a split has task i mod TS_SYNTH_TASK_COUNT, so tasks are balanced. An item's split
 * is a property of its prompt (XXH64 of the prompt with a fixed salt: 1 in 8 prompts are
 * validation-only), and generation redraws until the prompt belongs to the requested split:
 * held-out items are never training items, for every seed. */

typedef enum {
    TS_SYNTH_COPY = 0,
    TS_SYNTH_REVERSE,
    TS_SYNTH_SORT,
    TS_SYNTH_COUNT,
    TS_SYNTH_RECALL,
    TS_SYNTH_ADD,
    TS_SYNTH_SUB,
    TS_SYNTH_TASK_COUNT
} ts_synth_task;

typedef enum { TS_SYNTH_TRAIN = 0, TS_SYNTH_VAL = 1 } ts_synth_split;

#define TS_SYNTH_TEXT_MAX 64

typedef struct {
    ts_synth_task task;
    int prompt_len;               /* text[0, prompt_len) is the prompt; it ends with '=' */
    int len;                      /* text[prompt_len, len) is the answer */
    char text[TS_SYNTH_TEXT_MAX]; /* NUL-terminated */
} ts_synth_item;

const char *ts_synth_task_name(ts_synth_task t);
/* The split an item with this prompt belongs to. */
ts_synth_split ts_synth_split_of(const char *prompt, size_t len);
/* Item `index` of `split` for `seed`: deterministic, independent of every other item. */
void ts_synth_item_make(uint64_t seed, ts_synth_split split, uint64_t index, ts_synth_item *out);
/* Items [0, n) of a split into items[n]. */
void ts_synth_generate(uint64_t seed, ts_synth_split split, size_t n, ts_synth_item *items);
/* Unigram entropy, in bits per token, of the byte-level targets of these documents: every text
 * byte and each document's EOS (BOS is never a target, see the loader). A trained model's
 * next-token loss (in bits: nats / ln 2) far below this shows it learned more than byte
 * frequencies. */
double ts_synth_unigram_entropy(const ts_synth_item *items, size_t n);

typedef struct {
    uint64_t seed;       /* default 1 */
    uint64_t n_train;    /* default 20000 documents */
    uint64_t n_val;      /* default 1400 (200 per task) */
} ts_synth_options;

typedef struct {
    uint64_t train_docs, val_docs;
    uint64_t train_tokens, val_tokens;   /* BOS and EOS included */
    double unigram_bits;                 /* ts_synth_unigram_entropy of the training items */
} ts_synth_stats;

void ts_synth_default_options(ts_synth_options *opts);
/* Writes dir/train-00000.tshard and dir/val-00000.tshard (byte vocabulary, BOS + text + EOS;
 * dir is created if missing, existing files of those names replaced). stats may be NULL. */
ts_status ts_synth_write_shards(const char *dir, const ts_synth_options *opts, ts_synth_stats *stats,
                                ts_io_error *err);

/* Greedy completion: given a prompt (text, without BOS: the callback adds it, as documents
 * start with BOS), write the generated text into out, stopping at EOS (not written) or after
 * cap bytes, set *out_len, and return 0; a non-zero return aborts the evaluation. */
typedef int (*ts_complete_fn)(void *ctx, const char *prompt, size_t prompt_len, char *out, size_t cap,
                              size_t *out_len);

typedef struct {
    int64_t n[TS_SYNTH_TASK_COUNT];
    int64_t correct[TS_SYNTH_TASK_COUNT];
    double accuracy[TS_SYNTH_TASK_COUNT]; /* correct / n */
    int64_t total, total_correct;
    double overall;                       /* total_correct / total */
} ts_synth_eval;

/* The room the evaluator gives a completion: longer than every answer, so a completion that
 * does not stop at EOS never matches by truncation. */
#define TS_SYNTH_ANSWER_CAP 24

/* Completes the first n_per_task * TS_SYNTH_TASK_COUNT validation items of `seed` (the same
 * items ts_synth_write_shards puts first in val) and scores exact matches of the answer.
 * A callback failure is returned as TS_ERR_INTERNAL with its code in the message. */
ts_status ts_synth_evaluate(uint64_t seed, int n_per_task, ts_complete_fn complete, void *ctx,
                            ts_synth_eval *out, ts_io_error *err);

#ifdef __cplusplus
}
#endif
#endif
