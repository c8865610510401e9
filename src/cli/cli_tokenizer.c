/* cli_tokenizer.c - `tessera tokenizer train|encode|decode`: the command-line face of the
 * byte-level BPE tokenizer (tokenizer.h). `train` learns a vocabulary from text files and writes
 * DIR/tokenizer.json + tokenizer_config.json (atomically, through ts_tokenizer_save), then loads
 * what it wrote back and measures it on the training text; `encode` prints the ids (and tokens)
 * of a text, `decode` prints the bytes of a list of ids, exactly. Any bytes go through, invalid
 * UTF-8 included: decode(encode(x)) == x. Command-line mistakes exit with 2, failed work with 1
 * (cli.h), each as one line. */
#include <errno.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli/cli.h"
#include "tessera/tokenizer.h"

#define BYTE_TOKENS 256
#define MAX_FILE_BYTES ((size_t)1 << 32)

/* The whole of a file (malloc'd, with a NUL after its *len bytes), or NULL with errno set.
 * Reads until EOF rather than trusting the size, so pipes and /dev/stdin work too. */
static char *read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    while (buf) {
        n += fread(buf + n, 1, cap - 1 - n, f);
        if (n < cap - 1) break;
        char *bigger = cap < MAX_FILE_BYTES ? realloc(buf, cap * 2) : NULL;
        if (!bigger) {
            free(buf);
            errno = cap < MAX_FILE_BYTES ? ENOMEM : EFBIG;
        }
        buf = bigger;
        cap *= 2;
    }
    if (buf && ferror(f)) {
        int e = errno ? errno : EIO;
        free(buf);
        buf = NULL;
        errno = e;
    }
    fclose(f);
    if (buf) buf[n] = '\0';
    *len = n;
    return buf;
}

static int load_tokenizer(const char *command, const char *path, ts_tokenizer **tok) {
    ts_io_error ioe;
    if (ts_tokenizer_load(path, tok, &ioe) == TS_OK) return CLI_CONTINUE;
    return cli_failure(command, "%s", ioe.message);
}

/* ---------------------------------------------------------------- train */

typedef struct {
    const char **texts;
    size_t *lens;
    size_t n, bytes;
} corpus;

static void corpus_free(corpus *c) {
    for (size_t i = 0; i < c->n; i++) free((char *)c->texts[i]);
    free(c->texts);
    free(c->lens);
}

/* Each input file is one document (the pre-tokenizer never joins pieces across documents). */
static int read_corpus(const cli_list *inputs, corpus *c) {
    c->texts = calloc((size_t)inputs->n, sizeof *c->texts);
    c->lens = calloc((size_t)inputs->n, sizeof *c->lens);
    if (!c->texts || !c->lens) return cli_failure("tokenizer train", "out of memory");
    for (int i = 0; i < inputs->n; i++) {
        struct stat sb;
        if (stat(inputs->items[i], &sb) == 0 && S_ISDIR(sb.st_mode))
            return cli_usage_error("tokenizer train", "--input %s is a directory (give its files)", inputs->items[i]);
        c->texts[i] = read_file(inputs->items[i], &c->lens[i]);
        if (!c->texts[i]) return cli_failure("tokenizer train", "%s: cannot read: %s", inputs->items[i], strerror(errno));
        c->n++;
        c->bytes += c->lens[i];
    }
    return CLI_CONTINUE;
}

static int check_specials(const cli_list *special, const char *bos, const char *eos) {
    for (int i = 0; i < special->n; i++)
        for (int j = 0; j < i; j++)
            if (strcmp(special->items[i], special->items[j]) == 0)
                return cli_usage_error("tokenizer train", "--special: '%s' is given twice", special->items[i]);
    const char *named[2] = {bos, eos}, *names[2] = {"--bos", "--eos"};
    for (int k = 0; k < 2; k++) {
        bool listed = !named[k];
        for (int i = 0; !listed && i < special->n; i++) listed = strcmp(named[k], special->items[i]) == 0;
        if (!listed)
            return cli_usage_error("tokenizer train", "%s '%s' is not one of the --special tokens", names[k], named[k]);
    }
    return CLI_CONTINUE;
}

/* DIR is created when missing; an existing tokenizer.json in it is replaced only with force. */
static int prepare_out_dir(const char *dir, bool force) {
    struct stat sb;
    if (mkdir(dir, 0777) != 0 && errno != EEXIST)
        return cli_failure("tokenizer train", "%s: cannot create directory: %s", dir, strerror(errno));
    if (stat(dir, &sb) != 0 || !S_ISDIR(sb.st_mode))
        return cli_failure("tokenizer train", "%s: exists and is not a directory", dir);
    char path[4096];
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    if (!force && stat(path, &sb) == 0)
        return cli_failure("tokenizer train", "%s already exists (--force replaces it)", path);
    return CLI_CONTINUE;
}

/* The number of merges in the saved file, read independently of the tokenizer library. */
static long count_saved_merges(const char *dir) {
    char path[4096];
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    json_t *root = json_load_file(path, 0, NULL);
    json_t *merges = json_object_get(json_object_get(root, "model"), "merges");
    long n = json_is_array(merges) ? (long)json_array_size(merges) : -1;
    json_decref(root);
    return n;
}

/* Encodes the training text with the tokenizer as saved and checks that it decodes back to the
 * same bytes; *tokens gets the total. */
static int measure(const ts_tokenizer *tok, const corpus *c, const cli_list *inputs, size_t *tokens) {
    ts_token_ids ids = {0};
    ts_token_bytes back = {0};
    ts_io_error ioe;
    int rc = CLI_CONTINUE;
    *tokens = 0;
    for (size_t i = 0; i < c->n && rc == CLI_CONTINUE; i++) {
        ts_token_ids_clear(&ids);
        ts_token_bytes_clear(&back);
        if (ts_tokenizer_encode(tok, c->texts[i], c->lens[i], 0, &ids, &ioe) != TS_OK ||
            ts_tokenizer_decode(tok, ids.ids, ids.n, 0, &back, &ioe) != TS_OK)
            rc = cli_failure("tokenizer train", "%s: %s", inputs->items[i], ioe.message);
        else if (back.n != c->lens[i] || memcmp(back.data, c->texts[i], back.n) != 0)
            rc = cli_failure("tokenizer train", "%s: the saved tokenizer does not decode its encoding back to the text",
                             inputs->items[i]);
        *tokens += ids.n;
    }
    ts_token_ids_free(&ids);
    ts_token_bytes_free(&back);
    return rc;
}

static void print_special(const ts_tokenizer *tok, const char *what, int32_t id) {
    size_t len = 0;
    const char *s = id >= 0 ? ts_tokenizer_id_to_token(tok, id, &len) : NULL;
    if (s) printf("%s: %d %.*s\n", what, id, (int)len, s);
    else printf("%s: none\n", what);
}

static int train_main(int argc, char **argv) {
    static cli_list inputs, special; /* static: 2 KiB each, off the stack */
    const char *out = NULL, *bos = NULL, *eos = NULL, *pretok = "deepseek";
    int vocab_size = 32000;
    uint64_t min_frequency = 0;
    bool force = false;
    const cli_option options[] = {
        {"--input", CLI_OPT_LIST, &inputs, "FILE...", "training text files (each file is one document)", 0, 0},
        {"--vocab-size", CLI_OPT_INT, &vocab_size, "N", "total vocabulary: 256 byte tokens + special tokens + merges", 1, 2147483647},
        {"--out", CLI_OPT_STRING, &out, "DIR", "where tokenizer.json and tokenizer_config.json go (created if missing)", 0, 0},
        {"--min-frequency", CLI_OPT_U64, &min_frequency, "F", "never merge a pair seen fewer than F times", 0, 0},
        {"--special", CLI_OPT_LIST, &special, "TOKEN...", "special tokens, given ids 0, 1, ... in this order", 0, 0},
        {"--bos", CLI_OPT_STRING, &bos, "TOKEN", "the special token to record as BOS (default: <s>, <|begin_of_text|>, ...)", 0, 0},
        {"--eos", CLI_OPT_STRING, &eos, "TOKEN", "the special token to record as EOS (default: </s>, <|endoftext|>, ...)", 0, 0},
        {"--pretokenizer", CLI_OPT_STRING, &pretok, "NAME", "how text is split before merging: deepseek or gpt2", 0, 0},
        {"--force", CLI_OPT_FLAG, &force, NULL, "replace an existing DIR/tokenizer.json", 0, 0},
    };
    const cli_spec spec = {
        .command = "tokenizer train",
        .summary = "Learn a byte-level BPE vocabulary from text files, as the Hugging Face BpeTrainer does,\n"
                   "and write DIR/tokenizer.json and DIR/tokenizer_config.json atomically.",
        .details = "Prints the vocabulary size, the number of merges and the bytes per token the saved\n"
                   "tokenizer achieves on the training text (which it also checks decodes back exactly).",
        .options = options,
        .n_options = (int)(sizeof options / sizeof options[0]),
    };
    int rc = cli_parse(&spec, argc, argv);
    if (rc != CLI_CONTINUE) return rc;
    if (inputs.n == 0) return cli_usage_error(spec.command, "--input is required");
    if (!out || !*out) return cli_usage_error(spec.command, "--out is required");
    if (vocab_size < BYTE_TOKENS + special.n)
        return cli_usage_error(spec.command, "--vocab-size %d is below the %d byte tokens + %d special tokens", vocab_size,
                               BYTE_TOKENS, special.n);
    ts_tokenizer_train_opts opts = {.vocab_size = (size_t)vocab_size, .special_tokens = special.items,
                                    .n_special_tokens = (size_t)special.n, .min_frequency = min_frequency,
                                    .bos_token = bos, .eos_token = eos};
    if (strcmp(pretok, "deepseek") == 0) opts.pretokenizer = TS_TOKENIZER_PRETOK_DEEPSEEK;
    else if (strcmp(pretok, "gpt2") == 0) opts.pretokenizer = TS_TOKENIZER_PRETOK_GPT2;
    else return cli_usage_error(spec.command, "--pretokenizer must be deepseek or gpt2 (got '%s')", pretok);
    if ((rc = check_specials(&special, bos, eos)) != CLI_CONTINUE) return rc;

    corpus c = {0};
    ts_tokenizer *trained = NULL, *saved = NULL;
    ts_io_error ioe;
    size_t tokens = 0;
    rc = read_corpus(&inputs, &c);
    if (rc == CLI_CONTINUE) rc = prepare_out_dir(out, force);
    if (rc == CLI_CONTINUE && ts_tokenizer_train(c.texts, c.lens, c.n, &opts, &trained, &ioe) != TS_OK)
        rc = cli_failure(spec.command, "%s", ioe.message);
    if (rc == CLI_CONTINUE && ts_tokenizer_save(trained, out, &ioe) != TS_OK)
        rc = cli_failure(spec.command, "%s", ioe.message);
    if (rc == CLI_CONTINUE) rc = load_tokenizer(spec.command, out, &saved);
    if (rc == CLI_CONTINUE) rc = measure(saved, &c, &inputs, &tokens);
    if (rc == CLI_CONTINUE) {
        printf("wrote: %s/tokenizer.json, %s/tokenizer_config.json\n", out, out);
        printf("vocab_size: %d\n", ts_tokenizer_vocab_size(saved));
        printf("merges: %ld\n", count_saved_merges(out));
        printf("special_tokens: %d\n", special.n);
        print_special(saved, "bos", ts_tokenizer_bos_id(saved));
        print_special(saved, "eos", ts_tokenizer_eos_id(saved));
        printf("training_text: %zu files, %zu bytes, %zu tokens\n", c.n, c.bytes, tokens);
        printf("bytes_per_token: %.4f\n", tokens ? (double)c.bytes / (double)tokens : 0.0);
    }
    ts_tokenizer_free(trained);
    ts_tokenizer_free(saved);
    corpus_free(&c);
    return rc == CLI_CONTINUE ? CLI_EXIT_OK : rc;
}

/* ---------------------------------------------------------------- encode */

/* A token's string as the file writes it ("Ġthe"), with control bytes and backslashes escaped
 * so that one token stays on one line. */
static void print_token_string(const char *s, size_t n) {
    for (size_t i = 0; i < n; i++) {
        unsigned char b = (unsigned char)s[i];
        if (b < 0x20 || b == 0x7f || b == '\\') printf("\\x%02x", b);
        else putchar(b);
    }
}

static void print_encoding(const ts_tokenizer *tok, const ts_token_ids *ids, size_t n_bytes, bool ids_only) {
    if (!ids_only) printf("ids: ");
    for (size_t i = 0; i < ids->n; i++) printf("%s%d", i ? "," : "", ids->ids[i]);
    putchar('\n');
    if (ids_only) return;
    for (size_t i = 0; i < ids->n; i++) {
        size_t len = 0;
        const char *s = ts_tokenizer_id_to_token(tok, ids->ids[i], &len);
        printf("%8d  ", ids->ids[i]);
        print_token_string(s ? s : "", len);
        putchar('\n');
    }
    printf("tokens: %zu, bytes: %zu, bytes_per_token: %.4f\n", ids->n, n_bytes,
           ids->n ? (double)n_bytes / (double)ids->n : 0.0);
}

static int encode_main(int argc, char **argv) {
    const char *tok_path = NULL, *text = NULL, *file = NULL;
    bool ids_only = false, no_special = false, add_bos = false, add_eos = false;
    const cli_option options[] = {
        {"--tokenizer", CLI_OPT_STRING, &tok_path, "DIR|tokenizer.json", "the tokenizer", 0, 0},
        {"--text", CLI_OPT_STRING, &text, "STR", "the text to encode", 0, 0},
        {"--file", CLI_OPT_STRING, &file, "F", "encode the bytes of this file instead", 0, 0},
        {"--ids-only", CLI_OPT_FLAG, &ids_only, NULL, "print only the ids, comma-separated (what decode --ids takes)", 0, 0},
        {"--no-special", CLI_OPT_FLAG, &no_special, NULL, "special tokens written in the text are plain text (as data prepare does)", 0, 0},
        {"--bos", CLI_OPT_FLAG, &add_bos, NULL, "prepend the tokenizer's BOS id", 0, 0},
        {"--eos", CLI_OPT_FLAG, &add_eos, NULL, "append the tokenizer's EOS id", 0, 0},
    };
    const cli_spec spec = {
        .command = "tokenizer encode",
        .summary = "Print the token ids of a text: one line of ids, then each id with its token, then the counts.",
        .details = "Any bytes are accepted (invalid UTF-8 included) and none is lost.",
        .options = options,
        .n_options = (int)(sizeof options / sizeof options[0]),
    };
    int rc = cli_parse(&spec, argc, argv);
    if (rc != CLI_CONTINUE) return rc;
    if (!tok_path) return cli_usage_error(spec.command, "--tokenizer is required");
    if (!text == !file) return cli_usage_error(spec.command, "give exactly one of --text and --file");

    size_t len = text ? strlen(text) : 0;
    char *data = NULL;
    if (file && !(data = read_file(file, &len)))
        return cli_failure(spec.command, "%s: cannot read: %s", file, strerror(errno));
    ts_tokenizer *tok = NULL;
    ts_token_ids ids = {0};
    ts_io_error ioe;
    unsigned flags = (no_special ? 0u : TS_TOKENIZE_PARSE_SPECIAL) | (add_bos ? TS_TOKENIZE_ADD_BOS : 0u) |
                     (add_eos ? TS_TOKENIZE_ADD_EOS : 0u);
    rc = load_tokenizer(spec.command, tok_path, &tok);
    if (rc == CLI_CONTINUE && ts_tokenizer_encode(tok, file ? data : text, len, flags, &ids, &ioe) != TS_OK)
        rc = ioe.status == TS_ERR_STATE ? cli_usage_error(spec.command, "%s", ioe.message)
                                        : cli_failure(spec.command, "%s", ioe.message);
    if (rc == CLI_CONTINUE) print_encoding(tok, &ids, len, ids_only);
    ts_token_ids_free(&ids);
    ts_tokenizer_free(tok);
    free(data);
    return rc == CLI_CONTINUE ? CLI_EXIT_OK : rc;
}

/* ---------------------------------------------------------------- decode */

/* Ids separated by commas and/or white space, each in [0, vocab). */
static int parse_ids(const char *text, int32_t vocab, ts_token_ids *out) {
    const char *sep = ", \t\r\n";
    for (const char *p = text + strspn(text, sep); *p; p += strspn(p, sep)) {
        char *end;
        errno = 0;
        long long v = strtoll(p, &end, 10);
        int len = (int)strcspn(p, sep);
        if (end != p + len || errno) return cli_usage_error("tokenizer decode", "--ids: '%.*s' is not an integer", len, p);
        if (v < 0 || v >= vocab) return cli_usage_error("tokenizer decode", "--ids: %lld is outside [0, %d)", v, vocab);
        if (out->n == out->cap) {
            size_t cap = out->cap ? 2 * out->cap : 64;
            int32_t *grown = realloc(out->ids, cap * sizeof *grown);
            if (!grown) return cli_failure("tokenizer decode", "out of memory");
            out->ids = grown;
            out->cap = cap;
        }
        out->ids[out->n++] = (int32_t)v;
        p = end;
    }
    return CLI_CONTINUE;
}

static int decode_main(int argc, char **argv) {
    const char *tok_path = NULL, *ids_arg = NULL;
    bool skip_special = false;
    const cli_option options[] = {
        {"--tokenizer", CLI_OPT_STRING, &tok_path, "DIR|tokenizer.json", "the tokenizer", 0, 0},
        {"--ids", CLI_OPT_STRING, &ids_arg, "1,2,3", "token ids, separated by commas or spaces", 0, 0},
        {"--skip-special", CLI_OPT_FLAG, &skip_special, NULL, "leave special tokens out", 0, 0},
    };
    const cli_spec spec = {
        .command = "tokenizer decode",
        .summary = "Print the bytes the ids stand for, exactly (nothing added, not even a newline).",
        .options = options,
        .n_options = (int)(sizeof options / sizeof options[0]),
    };
    int rc = cli_parse(&spec, argc, argv);
    if (rc != CLI_CONTINUE) return rc;
    if (!tok_path) return cli_usage_error(spec.command, "--tokenizer is required");
    if (!ids_arg) return cli_usage_error(spec.command, "--ids is required");

    ts_tokenizer *tok = NULL;
    ts_token_ids ids = {0};
    ts_token_bytes bytes = {0};
    ts_io_error ioe;
    rc = load_tokenizer(spec.command, tok_path, &tok);
    if (rc == CLI_CONTINUE) rc = parse_ids(ids_arg, ts_tokenizer_vocab_size(tok), &ids);
    if (rc == CLI_CONTINUE && ids.n == 0) rc = cli_usage_error(spec.command, "--ids: no token ids");
    if (rc == CLI_CONTINUE &&
        ts_tokenizer_decode(tok, ids.ids, ids.n, skip_special ? TS_TOKENIZE_SKIP_SPECIAL : 0, &bytes, &ioe) != TS_OK)
        rc = ioe.status == TS_ERR_RANGE ? cli_usage_error(spec.command, "--ids: %s", ioe.message)
                                        : cli_failure(spec.command, "%s", ioe.message);
    if (rc == CLI_CONTINUE && fwrite(bytes.data, 1, bytes.n, stdout) != bytes.n)
        rc = cli_failure(spec.command, "cannot write the output: %s", strerror(errno));
    ts_token_bytes_free(&bytes);
    ts_token_ids_free(&ids);
    ts_tokenizer_free(tok);
    return rc == CLI_CONTINUE ? CLI_EXIT_OK : rc;
}

/* ---------------------------------------------------------------- dispatch */

int cli_tokenizer_main(int argc, char **argv) {
    static const cli_subcommand subs[] = {
        {"train", "learn a BPE vocabulary from text files -> DIR/tokenizer.json", train_main},
        {"encode", "text -> token ids (and tokens)", encode_main},
        {"decode", "token ids -> the exact bytes", decode_main},
    };
    return cli_dispatch("tokenizer", subs, (int)(sizeof subs / sizeof subs[0]), argc, argv);
}
