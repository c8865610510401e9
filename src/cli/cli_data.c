/* cli_data.c - `tessera data prepare|synth|info`: the command-line face of the training-data
 * pieces of data.h. `prepare` turns text / JSONL files into train and validation token shards
 * (ts_data_prepare) through the byte-level vocabulary or a BPE tokenizer.json, `synth` writes
 * the embedded synthetic dataset (ts_synth_write_shards), `info` validates shards and prints
 * their headers and counts. Command-line mistakes exit with 2, failed work with 1 (cli.h). */
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli/cli.h"
#include "tessera/data.h"
#include "tessera/tokenizer.h"

/* ---------------------------------------------------------------- prepare */

/* Adapts ts_tokenizer_encode to ts_encode_fn. Special tokens written in a document are encoded
 * as plain text: a corpus must not be able to forge BOS / EOS. */
typedef struct {
    const ts_tokenizer *tok;
    ts_token_ids ids;   /* reused for every document */
    ts_io_error err;    /* why the last encode failed */
} bpe_encoder;

static int bpe_encode(void *ctx, const char *text, size_t len, uint32_t *out_ids, size_t cap, size_t *n_out) {
    bpe_encoder *e = ctx;
    ts_token_ids_clear(&e->ids);
    ts_status st = ts_tokenizer_encode(e->tok, text, len, 0, &e->ids, &e->err);
    if (st != TS_OK) return st;
    *n_out = e->ids.n;
    if (e->ids.n > cap) return TS_ERR_RANGE;
    for (size_t i = 0; i < e->ids.n; i++) out_ids[i] = (uint32_t)e->ids.ids[i];
    return TS_OK;
}

#define MAX_WARNINGS 10

typedef struct {
    uint64_t count;
} warn_state;

/* Skipped JSONL lines: the first few are shown, the total is in the summary. */
static void print_warning(void *user, const char *message) {
    warn_state *w = user;
    if (w->count++ < MAX_WARNINGS) fprintf(stderr, "tessera data prepare: skipped %s\n", message);
    else if (w->count == MAX_WARNINGS + 1) fprintf(stderr, "tessera data prepare: (further skipped lines not shown)\n");
}

static int parse_format(const char *name, ts_input_format *out) {
    if (strcmp(name, "auto") == 0) *out = TS_INPUT_AUTO;
    else if (strcmp(name, "text") == 0) *out = TS_INPUT_TEXT;
    else if (strcmp(name, "jsonl") == 0) *out = TS_INPUT_JSONL;
    else return cli_usage_error("data prepare", "--format must be text, jsonl or auto (got '%s')", name);
    return CLI_CONTINUE;
}

static void print_special(const char *what, int64_t id) {
    if (id >= 0) printf(", %s %lld", what, (long long)id);
    else printf(", no %s", what);
}

static void print_prepared(const ts_prepare_options *o, const ts_prepare_result *r, const char *tokenizer) {
    printf("inputs: %llu files\n", (unsigned long long)r->files);
    printf("tokenizer: %s (vocab %u", tokenizer, o->vocab_size);
    print_special("bos", o->bos_id);
    print_special("eos", o->eos_id);
    printf(")\n");
    printf("documents: train %llu, val %llu\n", (unsigned long long)r->train_docs, (unsigned long long)r->val_docs);
    printf("skipped: %llu empty documents, %llu bad JSONL lines\n", (unsigned long long)r->empty_docs,
           (unsigned long long)r->bad_lines);
    printf("tokens: train %llu, val %llu\n", (unsigned long long)r->train_tokens, (unsigned long long)r->val_tokens);
    printf("shards: train %u, val %u in %s\n", r->train_shards, r->val_shards, o->out_dir);
}

static int prepare_main(int argc, char **argv) {
    static cli_list inputs; /* static: 2 KiB, off the stack */
    const char *out = NULL, *tokenizer = "byte", *format = "auto", *field = "text";
    float val_fraction = 0.05f;
    uint64_t seed = 0, max_shard_tokens = 64ull << 20;
    bool doc_per_file = false, strict = false, overwrite = false;
    const cli_option options[] = {
        {"--input", CLI_OPT_LIST, &inputs, "PATH...", "text / JSONL files, or directories of them", 0, 0},
        {"--out", CLI_OPT_STRING, &out, "DIR", "where train-*.tshard and val-*.tshard go (created if missing)", 0, 0},
        {"--tokenizer", CLI_OPT_STRING, &tokenizer, "DIR|tokenizer.json|byte", "the vocabulary: a BPE tokenizer or the 264-id byte one", 0, 0},
        {"--val-fraction", CLI_OPT_FLOAT, &val_fraction, "F", "share of documents held out for validation, in [0, 1)", 0, 1},
        {"--format", CLI_OPT_STRING, &format, "text|jsonl|auto", "input format (auto: .jsonl / .ndjson are JSONL)", 0, 0},
        {"--seed", CLI_OPT_U64, &seed, "S", "seed of the train/validation split (by each document's text hash)", 0, 0},
        {"--field", CLI_OPT_STRING, &field, "NAME", "the JSONL field holding the text", 0, 0},
        {"--doc-per-file", CLI_OPT_FLAG, &doc_per_file, NULL, "each text file is one document (default: blank lines separate)", 0, 0},
        {"--strict", CLI_OPT_FLAG, &strict, NULL, "a bad JSONL line fails the run (default: skipped, reported)", 0, 0},
        {"--max-shard-tokens", CLI_OPT_U64, &max_shard_tokens, "N", "start a new shard past N tokens (0: no limit)", 0, 0},
        {"--overwrite", CLI_OPT_FLAG, &overwrite, NULL, "replace the shards of an earlier run in DIR", 0, 0},
    };
    const cli_spec spec = {
        .command = "data prepare",
        .summary = "Tokenize text and JSONL files into train and validation token shards.",
        .details = "Each document is stored as BOS + tokens + EOS (the tokenizer's, when it has them). A document\n"
                   "goes to validation by a hash of its text, so the split is stable across runs and inputs and\n"
                   "duplicates never straddle it. Special tokens written in the text are encoded as plain text.",
        .options = options,
        .n_options = (int)(sizeof options / sizeof options[0]),
    };
    int rc = cli_parse(&spec, argc, argv);
    if (rc != CLI_CONTINUE) return rc;
    if (inputs.n == 0) return cli_usage_error(spec.command, "--input is required");
    if (!out || !*out) return cli_usage_error(spec.command, "--out is required");
    if (val_fraction >= 1.0f)
        return cli_usage_error(spec.command, "--val-fraction must be below 1 (got %g)", (double)val_fraction);
    if (!*field) return cli_usage_error(spec.command, "--field must not be empty");

    ts_prepare_options o;
    ts_prepare_default_options(&o);
    if ((rc = parse_format(format, &o.input_format)) != CLI_CONTINUE) return rc;
    o.inputs = inputs.items;
    o.n_inputs = (size_t)inputs.n;
    o.out_dir = out;
    o.val_fraction = val_fraction;
    o.split_seed = seed;
    o.text_split = doc_per_file ? TS_TEXT_DOC_PER_FILE : TS_TEXT_DOC_PER_BLOCK;
    o.jsonl_field = field;
    o.jsonl_strict = strict;
    o.max_shard_tokens = max_shard_tokens;
    o.overwrite = overwrite;
    warn_state warnings = {0};
    o.warn = print_warning;
    o.warn_user = &warnings;

    bpe_encoder enc = {0};
    ts_tokenizer *tok = NULL;
    ts_io_error ioe;
    if (strcmp(tokenizer, "byte") != 0) {
        if (ts_tokenizer_load(tokenizer, &tok, &ioe) != TS_OK) return cli_failure(spec.command, "%s", ioe.message);
        enc.tok = tok;
        o.encode = bpe_encode;
        o.encode_ctx = &enc;
        o.vocab_size = (uint32_t)ts_tokenizer_vocab_size(tok);
        o.bos_id = ts_tokenizer_bos_id(tok);
        o.eos_id = ts_tokenizer_eos_id(tok);
    }
    ts_prepare_result res;
    if (ts_data_prepare(&o, &res, &ioe) == TS_OK) {
        print_prepared(&o, &res, tokenizer);
        if (res.train_docs + res.val_docs == 0)
            rc = cli_failure(spec.command, "the inputs hold no documents (the shards are empty)");
    } else if (ioe.status == TS_ERR_STATE) rc = cli_failure(spec.command, "%s: rerun with --overwrite", ioe.message);
    else if (enc.err.message[0]) rc = cli_failure(spec.command, "%s: %s", ioe.message, enc.err.message);
    else rc = cli_failure(spec.command, "%s", ioe.message);
    ts_token_ids_free(&enc.ids);
    ts_tokenizer_free(tok);
    return rc == CLI_CONTINUE ? CLI_EXIT_OK : rc;
}

/* ---------------------------------------------------------------- synth */

static int synth_main(int argc, char **argv) {
    const char *out = NULL;
    ts_synth_options o;
    ts_synth_default_options(&o);
    const cli_option options[] = {
        {"--out", CLI_OPT_STRING, &out, "DIR", "where train-00000.tshard and val-00000.tshard go", 0, 0},
        {"--train-docs", CLI_OPT_U64, &o.n_train, "N", "training documents", 0, 0},
        {"--val-docs", CLI_OPT_U64, &o.n_val, "N", "validation documents (held-out prompts only)", 0, 0},
        {"--seed", CLI_OPT_U64, &o.seed, "S", "generator seed: the same seed writes the same shards", 0, 0},
    };
    const cli_spec spec = {
        .command = "data synth",
        .summary = "Write the embedded synthetic dataset (copy, reverse, sort, count, recall, add, sub) as\n"
                   "byte-level token shards: BOS + \"prompt=answer\" + EOS per document.",
        .details = "Also prints the unigram entropy of the training targets: a model's loss (in bits) well\n"
                   "below it has learned more than byte frequencies.",
        .options = options,
        .n_options = (int)(sizeof options / sizeof options[0]),
    };
    int rc = cli_parse(&spec, argc, argv);
    if (rc != CLI_CONTINUE) return rc;
    if (!out || !*out) return cli_usage_error(spec.command, "--out is required");
    if (o.n_train == 0 || o.n_val == 0) return cli_usage_error(spec.command, "--train-docs and --val-docs must be >= 1");

    ts_synth_stats s;
    ts_io_error ioe;
    if (ts_synth_write_shards(out, &o, &s, &ioe) != TS_OK) return cli_failure(spec.command, "%s", ioe.message);
    printf("wrote: %s/train-00000.tshard, %s/val-00000.tshard\n", out, out);
    printf("documents: train %llu, val %llu\n", (unsigned long long)s.train_docs, (unsigned long long)s.val_docs);
    printf("tokens: train %llu, val %llu\n", (unsigned long long)s.train_tokens, (unsigned long long)s.val_tokens);
    printf("unigram_entropy: %.6f bits/token\n", s.unigram_bits);
    return CLI_EXIT_OK;
}

/* ---------------------------------------------------------------- info */

static void print_shard(const ts_shard *s) {
    const ts_shard_info *i = ts_shard_get_info(s);
    uint64_t shortest = UINT64_MAX, longest = 0;
    for (uint64_t d = 0; d < i->n_docs; d++) {
        uint64_t len = ts_shard_doc_start(s, d + 1) - ts_shard_doc_start(s, d);
        if (len < shortest) shortest = len;
        if (len > longest) longest = len;
    }
    printf("shard: %s\n", ts_shard_path(s));
    printf("version: %u\n", i->version);
    printf("vocab_size: %u (%u-byte tokens)\n", i->vocab_size, i->token_bytes);
    printf("tokens: %llu\n", (unsigned long long)i->n_tokens);
    printf("documents: %llu", (unsigned long long)i->n_docs);
    if (i->n_docs)
        printf(" (tokens per document: min %llu, mean %.1f, max %llu)", (unsigned long long)shortest,
               (double)i->n_tokens / (double)i->n_docs, (unsigned long long)longest);
    printf("\npayload_checksum: %016llx\n", (unsigned long long)i->payload_checksum);
}

/* Full validation first; when that fails, a structural open (no payload scan) still shows what
 * the header says. Returns CLI_EXIT_OK or CLI_EXIT_FAILURE. */
static int show_shard(const char *path) {
    ts_shard *s = NULL;
    ts_io_error full, structural;
    if (ts_shard_open(path, 0, &s, &full) == TS_OK) {
        print_shard(s);
        printf("checksums: ok (header and payload; every token id < vocab_size)\n");
        ts_shard_close(s);
        return CLI_EXIT_OK;
    }
    if (ts_shard_open(path, TS_SHARD_OPEN_SKIP_SCAN, &s, &structural) != TS_OK)
        return cli_failure("data info", "%s", full.message);
    print_shard(s);
    printf("checksums: FAILED\n");
    ts_shard_close(s);
    return cli_failure("data info", "%s", full.message);
}

/* A directory stands for its train-* and val-* shards. */
static int show_path(const char *path) {
    struct stat sb;
    if (stat(path, &sb) != 0 || !S_ISDIR(sb.st_mode)) return show_shard(path);
    static const char *const splits[] = {"train", "val"};
    int rc = CLI_EXIT_OK, found = 0;
    for (int k = 0; k < 2; k++) {
        char **paths = NULL;
        size_t n = 0;
        if (ts_shard_list(path, splits[k], &paths, &n, NULL) != TS_OK) continue;
        for (size_t j = 0; j < n; j++) {
            if (found++) putchar('\n');
            if (show_shard(paths[j]) != CLI_EXIT_OK) rc = CLI_EXIT_FAILURE;
        }
        ts_shard_list_free(paths, n);
    }
    if (!found)
        return cli_failure("data info", "%s: no train-*%s or val-*%s shards", path, TS_SHARD_EXTENSION, TS_SHARD_EXTENSION);
    return rc;
}

static int info_main(int argc, char **argv) {
    static cli_list paths;
    const cli_option options[] = {
        {"PATH...", CLI_OPT_LIST, &paths, NULL, "shard files, or directories of train-* and val-* shards", 0, 0},
    };
    const cli_spec spec = {
        .command = "data info",
        .summary = "Validate token shards (magic, header and payload checksums, document index, token range)\n"
                   "and print their headers and counts.",
        .options = options,
        .n_options = (int)(sizeof options / sizeof options[0]),
    };
    int rc = cli_parse(&spec, argc, argv);
    if (rc != CLI_CONTINUE) return rc;
    if (paths.n == 0) return cli_usage_error(spec.command, "give a shard file or directory");
    rc = CLI_EXIT_OK;
    for (int i = 0; i < paths.n; i++) {
        if (i) putchar('\n');
        if (show_path(paths.items[i]) != CLI_EXIT_OK) rc = CLI_EXIT_FAILURE;
    }
    return rc;
}

/* ---------------------------------------------------------------- dispatch */

int cli_data_main(int argc, char **argv) {
    static const cli_subcommand subs[] = {
        {"prepare", "text / JSONL files -> train and validation token shards", prepare_main},
        {"synth", "write the embedded synthetic dataset as token shards", synth_main},
        {"info", "validate token shards and print their headers and counts", info_main},
    };
    return cli_dispatch("data", subs, (int)(sizeof subs / sizeof subs[0]), argc, argv);
}
