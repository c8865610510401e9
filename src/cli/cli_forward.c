/* cli_forward.c - `tessera forward`: one forward pass of a model over a token sequence, for
 * checking a checkpoint by hand or from a script. The model is a checkpoint directory
 * (ts_model_load) or a preset / config.json initialised with seed 0 (ts_model_weights_init);
 * the graph is ts_model_graph_build for B = 1, T = the number of ids. It prints the argmax per
 * position (and the mean cross-entropy with --targets) and can write the logits [T, V] as a
 * little-endian f32 NumPy .npy file, atomically (io.h). Command-line mistakes are one line with
 * exit code 2 (cli.h); a checkpoint that fails to load or a failed computation exit with 1. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli/cli.h"
#include "tessera/backend.h"
#include "tessera/io.h"
#include "tessera/model.h"

#define MAX_TOKENS (1 << 20)
/* spec §7.1's byte-level vocabulary: 0 BOS, 1 EOS, 2 PAD, then bytes 0..255 as 3..258 */
#define BYTE_VOCAB 264
#define BYTE_OFFSET 3

typedef struct {
    int32_t *v;
    int64_t n, cap;
} id_list;

static bool id_push(id_list *l, int32_t id) {
    if (l->n == l->cap) {
        int64_t cap = l->cap ? 2 * l->cap : 64;
        int32_t *v = realloc(l->v, (size_t)cap * sizeof *v);
        if (!v) return false;
        l->v = v;
        l->cap = cap;
    }
    l->v[l->n++] = id;
    return true;
}

/* Integers separated by commas and/or white space, each in [lo, hi). Returns CLI_CONTINUE or
 * an exit code after one error line naming `what`. */
static int parse_ids(const char *text, const char *what, int64_t lo, int64_t hi, id_list *out) {
    const char *p = text;
    for (;;) {
        while (*p == ',' || *p == ' ' || *p == '\t' || *p == '\n' || *p == '\r') p++;
        if (!*p) break;
        char *end;
        errno = 0;
        long long v = strtoll(p, &end, 10);
        if (end == p || errno || (*end && !strchr(", \t\r\n", *end)))
            return cli_usage_error("forward", "%s: '%.*s' is not an integer", what, (int)strcspn(p, ", \t\r\n"), p);
        if (v < lo || v >= hi)
            return cli_usage_error("forward", "%s: %lld is outside [%lld, %lld)", what, v, (long long)lo, (long long)hi);
        if (out->n >= MAX_TOKENS) return cli_usage_error("forward", "%s: more than %d tokens", what, MAX_TOKENS);
        if (!id_push(out, (int32_t)v)) return cli_usage_error("forward", "%s: out of memory", what);
        p = end;
    }
    if (out->n == 0) return cli_usage_error("forward", "%s: no token ids", what);
    return CLI_CONTINUE;
}

/* The whole of a small text file (malloc'd, NUL-terminated), NULL with errno on failure. */
static char *read_text_file(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap);
    while (buf) {
        n += fread(buf + n, 1, cap - 1 - n, f);
        if (n < cap - 1) break;
        char *bigger = cap < ((size_t)64 << 20) ? realloc(buf, cap * 2) : NULL;
        if (!bigger) {
            free(buf);
            buf = NULL;
            errno = EFBIG;
            break;
        }
        buf = bigger;
        cap *= 2;
    }
    if (buf && ferror(f)) {
        free(buf);
        buf = NULL;
        errno = EIO;
    }
    fclose(f);
    if (buf) buf[n] = '\0';
    return buf;
}

/* A checkpoint directory is loaded; anything else ts_v4_config_resolve accepts is initialised
 * with seed 0. Returns CLI_CONTINUE or an exit code after one error line. */
static int load_model(const char *arg, ts_dtype dt, ts_model_weights **out, bool *random_init) {
    char msg[1024];
    struct stat sb;
    *random_init = !(stat(arg, &sb) == 0 && S_ISDIR(sb.st_mode));
    if (!*random_init) {
        if (ts_model_load(arg, dt, out, msg, sizeof msg) == TS_OK) return CLI_CONTINUE;
        fprintf(stderr, "tessera forward: %s\n", msg);
        return CLI_EXIT_FAILURE;
    }
    ts_v4_config cfg;
    if (ts_v4_config_resolve(arg, &cfg, msg, sizeof msg) != TS_OK) return cli_usage_error("forward", "--model: %s", msg);
    if (ts_model_weights_new(&cfg, dt, out, msg, sizeof msg) == TS_OK && ts_model_weights_init(*out, 0, msg, sizeof msg) == TS_OK)
        return CLI_CONTINUE;
    ts_model_weights_free(*out);
    *out = NULL;
    fprintf(stderr, "tessera forward: %s\n", msg);
    return CLI_EXIT_FAILURE;
}

static void put_le32(unsigned char *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (unsigned char)(v >> (8 * i));
}

/* NumPy format 1.0: magic, version, header length, a Python-literal dict padded with spaces to
 * a multiple of 64 bytes and ended by '\n', then the f32 values little-endian, C order. */
static ts_status write_npy(const char *path, const float *v, int64_t rows, int64_t cols, ts_io_error *err) {
    char dict[128];
    int len = snprintf(dict, sizeof dict, "{'descr': '<f4', 'fortran_order': False, 'shape': (%lld, %lld), }",
                       (long long)rows, (long long)cols);
    size_t header = 10 + (size_t)len + 1, padded = (header + 63) / 64 * 64;
    size_t data = (size_t)(rows * cols) * 4;
    unsigned char *buf = malloc(padded + data);
    if (!buf) return ts_io_set_error(err, TS_ERR_OOM, "%s: out of memory", path);
    memcpy(buf, "\x93NUMPY\x01\x00", 8);
    buf[8] = (unsigned char)((padded - 10) & 0xff);
    buf[9] = (unsigned char)((padded - 10) >> 8);
    memcpy(buf + 10, dict, (size_t)len);
    memset(buf + 10 + len, ' ', padded - 10 - (size_t)len - 1);
    buf[padded - 1] = '\n';
    for (int64_t i = 0; i < rows * cols; i++) {
        uint32_t bits;
        memcpy(&bits, &v[i], 4);
        put_le32(buf + padded + 4 * i, bits);
    }
    ts_status s = ts_atomic_write_file(path, buf, padded + data, err);
    free(buf);
    return s;
}

/* Builds, plans and computes the forward graph (+ loss with targets); logits -> out [T * V]. */
static int run_forward(const ts_model_weights *w, const id_list *ids, const id_list *targets, int threads, float *out,
                       double *loss) {
    char msg[1024] = "";
    ts_model_graph_options o = {.batch = 1, .seq = ids->n, .loss = targets->n > 0, .keep_logits = true};
    ts_model_graph *mg = NULL;
    ts_backend *be = NULL;
    ts_status s = ts_model_graph_build(w, &o, &mg, msg, sizeof msg);
    if (s == TS_OK) s = ts_backend_cpu_new(threads, &be);
    if (s == TS_OK) s = ts_model_graph_alloc(mg, be, NULL, msg, sizeof msg);
    if (s == TS_OK) s = ts_tensor_write(mg->ids, ids->v, (size_t)ids->n * sizeof *ids->v);
    if (s == TS_OK && o.loss) s = ts_tensor_write(mg->targets, targets->v, (size_t)targets->n * sizeof *targets->v);
    if (s == TS_OK) s = ts_graph_compute(mg->graph);
    if (s == TS_OK) s = ts_tensor_read_f32(mg->logits, out, ts_nelements(mg->logits));
    if (s == TS_OK && o.loss) {
        float l;
        s = ts_tensor_read_f32(mg->loss, &l, 1);
        *loss = l;
    }
    if (s != TS_OK && !msg[0]) snprintf(msg, sizeof msg, "%s %s", ts_status_name(s), mg ? ts_graph_error(mg->graph) : "");
    ts_model_graph_free(mg);
    ts_backend_free(be);
    if (s == TS_OK) return CLI_EXIT_OK;
    fprintf(stderr, "tessera forward: %s\n", msg);
    return CLI_EXIT_FAILURE;
}

static void print_argmax(const float *logits, int64_t T, int64_t V) {
    printf("argmax:");
    for (int64_t t = 0; t < T; t++) {
        const float *row = logits + t * V;
        int64_t best = 0;
        for (int64_t v = 1; v < V; v++)
            if (row[v] > row[best]) best = v;
        printf(" %lld", (long long)best);
    }
    printf("\n");
}

/* --ids / --ids-file / --text (exactly one is given) -> ids; --targets LIST|next -> targets (empty without it). */
static int read_inputs(const char *ids_arg, const char *ids_file, const char *text, const char *targets_arg,
                       int64_t V, id_list *ids, id_list *targets) {
    int rc = CLI_CONTINUE;
    if (ids_arg) rc = parse_ids(ids_arg, "--ids", 0, V, ids);
    if (ids_file) {
        char *content = read_text_file(ids_file);
        if (!content) return cli_usage_error("forward", "--ids-file: cannot read %s: %s", ids_file, strerror(errno));
        rc = parse_ids(content, "--ids-file", 0, V, ids);
        free(content);
    }
    if (text) {
        if (V != BYTE_VOCAB)
            return cli_usage_error("forward", "--text needs the byte-level vocabulary (%d ids); this model has %lld",
                                   BYTE_VOCAB, (long long)V);
        for (const unsigned char *c = (const unsigned char *)text; *c && rc == CLI_CONTINUE; c++)
            if (!id_push(ids, BYTE_OFFSET + *c)) rc = cli_usage_error("forward", "--text: out of memory");
        if (rc == CLI_CONTINUE && ids->n == 0) rc = cli_usage_error("forward", "--text: empty text");
    }
    if (rc != CLI_CONTINUE || !targets_arg) return rc;
    if (strcmp(targets_arg, "next") == 0) {
        for (int64_t t = 0; t < ids->n; t++)
            if (!id_push(targets, t + 1 < ids->n ? ids->v[t + 1] : -1)) return cli_usage_error("forward", "out of memory");
        return CLI_CONTINUE;
    }
    rc = parse_ids(targets_arg, "--targets", -1, V, targets);
    if (rc == CLI_CONTINUE && targets->n != ids->n)
        return cli_usage_error("forward", "--targets: %lld targets for %lld tokens", (long long)targets->n, (long long)ids->n);
    return rc;
}

int cli_forward_main(int argc, char **argv) {
    const char *model = NULL, *ids_arg = NULL, *ids_file = NULL, *text = NULL, *targets_arg = NULL, *out = NULL,
               *precision = "f32";
    int threads = 0;
    const cli_option options[] = {
        {"--model", CLI_OPT_STRING, &model, "DIR|PRESET",
         "checkpoint directory, or a preset / config.json initialised with seed 0", 0, 0},
        {"--ids", CLI_OPT_STRING, &ids_arg, "1,2,3", "token ids, separated by commas", 0, 0},
        {"--ids-file", CLI_OPT_STRING, &ids_file, "FILE", "token ids separated by commas or white space", 0, 0},
        {"--text", CLI_OPT_STRING, &text, "STR", "text as bytes of the byte-level vocabulary (byte b = id b + 3)", 0, 0},
        {"--targets", CLI_OPT_STRING, &targets_arg, "LIST|next",
         "next-token targets per position (-1 = none), or 'next' for the ids shifted by one; prints the loss", 0, 0},
        {"--out", CLI_OPT_STRING, &out, "FILE.npy", "write the logits [T, V] as a NumPy f32 array", 0, 0},
        {"--precision", CLI_OPT_STRING, &precision, "f32|f64", "compute dtype (the .npy file is f32 either way)", 0, 0},
        {"--threads", CLI_OPT_INT, &threads, "N", "compute threads (0: every core)", 0, 4096},
    };
    const cli_spec spec = {
        .command = "forward",
        .summary = "Run one forward pass of a model over a sequence of token ids (batch 1) and print\n"
                   "the most likely next token at every position.",
        .details = "Output: 'argmax: ...' (one id per position) and, with --targets, 'loss: ...' (mean\n"
                   "cross-entropy over the positions whose target is not -1).",
        .options = options,
        .n_options = (int)(sizeof options / sizeof options[0]),
    };
    int rc = cli_parse(&spec, argc, argv);
    if (rc != CLI_CONTINUE) return rc;
    if (!model) return cli_usage_error("forward", "--model is required");
    ts_dtype dt;
    if (strcmp(precision, "f32") == 0) dt = TS_F32;
    else if (strcmp(precision, "f64") == 0) dt = TS_F64;
    else return cli_usage_error("forward", "--precision must be f32 or f64 (got '%s')", precision);

    if ((ids_arg != NULL) + (ids_file != NULL) + (text != NULL) != 1)
        return cli_usage_error("forward", "give exactly one of --ids, --ids-file and --text");

    ts_model_weights *w = NULL;
    bool random_init;
    rc = load_model(model, dt, &w, &random_init);
    if (rc != CLI_CONTINUE) return rc;
    const ts_v4_config *c = ts_model_weights_config(w);
    id_list ids = {0}, targets = {0};
    float *logits = NULL;
    double loss = 0;
    rc = read_inputs(ids_arg, ids_file, text, targets_arg, c->vocab_size, &ids, &targets);
    if (rc == CLI_CONTINUE && c->max_position_embeddings > 0 && ids.n > c->max_position_embeddings)
        rc = cli_usage_error("forward", "%lld tokens exceed the model's max_position_embeddings %lld", (long long)ids.n,
                             (long long)c->max_position_embeddings);
    if (rc == CLI_CONTINUE) {
        logits = malloc((size_t)(ids.n * c->vocab_size) * sizeof *logits);
        rc = logits ? run_forward(w, &ids, &targets, threads, logits, &loss) : CLI_EXIT_FAILURE;
    }
    if (rc == CLI_EXIT_OK) {
        printf("model: %s (%s, %s), %lld tokens, %s\n", model, ts_model_kind_name(c->kind),
               random_init ? "random init, seed 0" : "checkpoint", (long long)ids.n, precision);
        print_argmax(logits, ids.n, c->vocab_size);
        if (targets.n) printf("loss: %.7f\n", loss);
        ts_io_error ioe;
        if (out && write_npy(out, logits, ids.n, c->vocab_size, &ioe) != TS_OK) {
            fprintf(stderr, "tessera forward: %s\n", ioe.message);
            rc = CLI_EXIT_FAILURE;
        } else if (out) {
            printf("logits: %s (f32 [%lld, %lld])\n", out, (long long)ids.n, (long long)c->vocab_size);
        }
    }
    free(logits);
    free(ids.v);
    free(targets.v);
    ts_model_weights_free(w);
    return rc;
}
