/* data_prepare.c - `prepare`: text and JSONL files -> train / validation token shards through
 * any tokenizer's encode callback (data.h states the document and split rules), and the
 * byte-level tokenizer that is the default encoder (the tiny configuration's vocabulary).
 *
 * Shape of a run: list the input files, make sure out_dir is ours to write, then stream every
 * file document by document into a "sink" per split (the current shard writer, rolled over at
 * max_shard_tokens), then remove shards a previous, larger run left behind. Nothing here holds
 * more than one document's text and one shard's tokens in memory. */
#include <dirent.h>
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "tessera/data.h"

/* ================================================================ byte-level tokenizer */

int ts_byte_encode(void *ctx, const char *text, size_t len, uint32_t *out_ids, size_t cap, size_t *n_out) {
    (void)ctx;
    *n_out = len;
    if (len > cap) return TS_ERR_RANGE;
    const unsigned char *bytes = (const unsigned char *)text;
    for (size_t i = 0; i < len; i++) out_ids[i] = (uint32_t)bytes[i] + TS_BYTE_OFFSET;
    return TS_OK;
}

size_t ts_byte_decode(const int32_t *ids, size_t n, char *out, size_t cap) {
    size_t k = 0;
    for (size_t i = 0; i < n && k + 1 < cap; i++)
        if (ids[i] >= TS_BYTE_OFFSET && ids[i] < TS_BYTE_OFFSET + 256) out[k++] = (char)(ids[i] - TS_BYTE_OFFSET);
    if (cap) out[k] = '\0';
    return k;
}

/* ================================================================ options */

void ts_prepare_default_options(ts_prepare_options *o) {
    memset(o, 0, sizeof *o);
    o->encode = ts_byte_encode;
    o->vocab_size = TS_BYTE_VOCAB_SIZE;
    o->bos_id = TS_BYTE_BOS;
    o->eos_id = TS_BYTE_EOS;
    o->val_fraction = 0.05;
    o->text_split = TS_TEXT_DOC_PER_BLOCK;
    o->jsonl_field = "text";
    o->max_shard_tokens = 64ull << 20;
}

static ts_status check_options(const ts_prepare_options *o, ts_io_error *err) {
    if (!o || !o->out_dir || !o->encode || (!o->inputs && o->n_inputs))
        return ts_io_set_error(err, TS_ERR_INVALID_ARG, "prepare: options, out_dir and encode are required");
    if (o->n_inputs == 0) return ts_io_set_error(err, TS_ERR_INVALID_ARG, "prepare: no input files");
    if (o->vocab_size == 0) return ts_io_set_error(err, TS_ERR_INVALID_ARG, "prepare: vocab_size must be >= 1");
    if (!(o->val_fraction >= 0.0 && o->val_fraction < 1.0))
        return ts_io_set_error(err, TS_ERR_INVALID_ARG, "prepare: val_fraction %g is outside [0, 1)", o->val_fraction);
    if (o->bos_id >= (int64_t)o->vocab_size || o->eos_id >= (int64_t)o->vocab_size)
        return ts_io_set_error(err, TS_ERR_INVALID_ARG, "prepare: bos_id %lld / eos_id %lld outside vocab size %u",
                               (long long)o->bos_id, (long long)o->eos_id, o->vocab_size);
    if (o->text_split != TS_TEXT_DOC_PER_BLOCK && o->text_split != TS_TEXT_DOC_PER_FILE)
        return ts_io_set_error(err, TS_ERR_INVALID_ARG, "prepare: unknown text_split %d", (int)o->text_split);
    if (o->input_format != TS_INPUT_AUTO && o->input_format != TS_INPUT_TEXT && o->input_format != TS_INPUT_JSONL)
        return ts_io_set_error(err, TS_ERR_INVALID_ARG, "prepare: unknown input_format %d", (int)o->input_format);
    return TS_OK;
}

/* ================================================================ input files */

typedef struct {
    char **items;
    size_t n, cap;
} string_list;

static void string_list_free(string_list *l) {
    for (size_t i = 0; i < l->n; i++) free(l->items[i]);
    free(l->items);
    memset(l, 0, sizeof *l);
}

static bool string_list_push(string_list *l, const char *a, const char *b) {
    if (l->n == l->cap) {
        size_t cap = l->cap ? 2 * l->cap : 16;
        char **p = realloc(l->items, cap * sizeof *p);
        if (!p) return false;
        l->items = p;
        l->cap = cap;
    }
    size_t room = strlen(a) + (b ? strlen(b) + 1 : 0) + 1;
    char *s = malloc(room);
    if (!s) return false;
    if (b)
        snprintf(s, room, "%s/%s", a, b);
    else
        snprintf(s, room, "%s", a);
    l->items[l->n++] = s;
    return true;
}

static int compare_strings(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* A directory's regular, non-hidden files in name order. */
static ts_status list_directory(const char *dir, string_list *files, ts_io_error *err) {
    DIR *d = opendir(dir);
    if (!d) return ts_io_set_error(err, TS_ERR_IO, "%s: cannot open directory: %s", dir, strerror(errno));
    string_list names = {0};
    ts_status st = TS_OK;
    for (struct dirent *e; (e = readdir(d)) != NULL;) {
        if (e->d_name[0] == '.') continue;
        if (!string_list_push(&names, dir, e->d_name)) {
            st = ts_io_set_error(err, TS_ERR_OOM, "%s: out of memory listing files", dir);
            break;
        }
    }
    closedir(d);
    if (names.n) qsort(names.items, names.n, sizeof *names.items, compare_strings); /* an empty dir has no array */
    for (size_t i = 0; st == TS_OK && i < names.n; i++) {
        struct stat sb;
        if (stat(names.items[i], &sb) != 0 || !S_ISREG(sb.st_mode)) continue;
        if (!string_list_push(files, names.items[i], NULL))
            st = ts_io_set_error(err, TS_ERR_OOM, "%s: out of memory listing files", dir);
    }
    string_list_free(&names);
    return st;
}

static ts_status collect_inputs(const ts_prepare_options *o, string_list *files, ts_io_error *err) {
    for (size_t i = 0; i < o->n_inputs; i++) {
        const char *path = o->inputs[i];
        struct stat sb;
        if (!path || stat(path, &sb) != 0)
            return ts_io_set_error(err, TS_ERR_IO, "%s: cannot read input: %s", path ? path : "(null)",
                                   strerror(errno));
        ts_status st = TS_OK;
        if (S_ISDIR(sb.st_mode))
            st = list_directory(path, files, err);
        else if (!string_list_push(files, path, NULL))
            st = ts_io_set_error(err, TS_ERR_OOM, "prepare: out of memory");
        if (st != TS_OK) return st;
    }
    return TS_OK;
}

static bool has_suffix(const char *s, const char *suffix) {
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && strcmp(s + n - k, suffix) == 0;
}

static bool is_jsonl(const ts_prepare_options *o, const char *path) {
    if (o->input_format != TS_INPUT_AUTO) return o->input_format == TS_INPUT_JSONL;
    return has_suffix(path, ".jsonl") || has_suffix(path, ".ndjson");
}

static bool is_blank(const char *s, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (!strchr(" \t\r\f\v\n", s[i]) || s[i] == '\0') return false;
    return true;
}

/* ================================================================ output directory */

static const char *const SPLIT_NAMES[2] = {"train", "val"};

static ts_status make_directory(const char *dir, ts_io_error *err) {
    if (mkdir(dir, 0777) == 0 || errno == EEXIST) {
        struct stat sb;
        if (stat(dir, &sb) == 0 && S_ISDIR(sb.st_mode)) return TS_OK;
        return ts_io_set_error(err, TS_ERR_IO, "%s: exists and is not a directory", dir);
    }
    return ts_io_set_error(err, TS_ERR_IO, "%s: cannot create directory: %s", dir, strerror(errno));
}

/* Refuses to mix a new run's shards with an old run's unless asked to replace them. */
static ts_status check_out_dir(const ts_prepare_options *o, ts_io_error *err) {
    ts_status st = make_directory(o->out_dir, err);
    if (st != TS_OK || o->overwrite) return st;
    for (int s = 0; s < 2; s++) {
        char **paths = NULL;
        size_t n = 0;
        if (ts_shard_list(o->out_dir, SPLIT_NAMES[s], &paths, &n, NULL) == TS_OK) {
            ts_shard_list_free(paths, n);
            return ts_io_set_error(err, TS_ERR_STATE, "%s: already holds %s shards (set overwrite to replace them)",
                                   o->out_dir, SPLIT_NAMES[s]);
        }
    }
    return TS_OK;
}

static void shard_path(char *buf, size_t room, const char *dir, int split, uint32_t index) {
    snprintf(buf, room, "%s/%s-%05u%s", dir, SPLIT_NAMES[split], index, TS_SHARD_EXTENSION);
}

/* Removes <split>-NNNNN.tshard for NNNNN >= keep (left from an earlier run with more shards). */
static void remove_stale_shards(const char *dir, int split, uint32_t keep) {
    char **paths = NULL;
    size_t n = 0;
    if (ts_shard_list(dir, SPLIT_NAMES[split], &paths, &n, NULL) != TS_OK) return;
    for (size_t i = 0; i < n; i++) {
        const char *name = strrchr(paths[i], '/') + 1 + strlen(SPLIT_NAMES[split]) + 1;
        char *end = NULL;
        unsigned long index = strtoul(name, &end, 10);
        if (end && strcmp(end, TS_SHARD_EXTENSION) == 0 && index >= keep) remove(paths[i]);
    }
    ts_shard_list_free(paths, n);
}

/* ================================================================ the run */

typedef struct {
    const ts_prepare_options *opts;
    ts_prepare_result *res;
    ts_io_error *err;
    ts_shard_writer *writer[2]; /* current shard per split */
    uint32_t shards[2];         /* shards started per split */
    uint32_t *ids;              /* encode buffer */
    size_t ids_cap;
    char *doc;                  /* text of the document being assembled (plain-text blocks) */
    size_t doc_len, doc_cap;
} prep_run;

static ts_status start_shard(prep_run *r, int split) {
    char path[4096];
    shard_path(path, sizeof path, r->opts->out_dir, split, r->shards[split]);
    ts_status st = ts_shard_writer_new(path, r->opts->vocab_size, &r->writer[split], r->err);
    if (st == TS_OK) r->shards[split]++;
    return st;
}

static ts_status finish_shard(prep_run *r, int split) {
    ts_shard_writer *w = r->writer[split];
    r->writer[split] = NULL;
    return ts_shard_writer_finish(w, r->err);
}

static bool ensure_ids(prep_run *r, size_t need) {
    if (need <= r->ids_cap) return true;
    size_t cap = r->ids_cap ? r->ids_cap : 4096;
    while (cap < need) cap *= 2;
    uint32_t *p = realloc(r->ids, cap * sizeof *p);
    if (!p) return false;
    r->ids = p;
    r->ids_cap = cap;
    return true;
}

/* Encodes text into r->ids[1..] leaving room for BOS before and EOS after; returns the number
 * of ids of the whole document in *n. The buffer starts at one id per byte (enough for any
 * byte-level tokenizer) and grows when the encoder asks for more. */
static ts_status encode_document(prep_run *r, const char *where, const char *text, size_t len, size_t *n) {
    const ts_prepare_options *o = r->opts;
    size_t want = len + 2;
    for (;;) {
        if (!ensure_ids(r, want)) return ts_io_set_error(r->err, TS_ERR_OOM, "%s: out of memory encoding", where);
        size_t got = 0;
        int rc = o->encode(o->encode_ctx, text, len, r->ids + 1, r->ids_cap - 2, &got);
        if (rc == TS_OK && got <= r->ids_cap - 2) {
            size_t k = 0;
            if (o->bos_id >= 0) r->ids[k++] = (uint32_t)o->bos_id;
            if (k == 0) memmove(r->ids, r->ids + 1, got * sizeof *r->ids);
            k += got;
            if (o->eos_id >= 0) r->ids[k++] = (uint32_t)o->eos_id;
            *n = k;
            return TS_OK;
        }
        if (rc != TS_ERR_RANGE && rc != TS_OK)
            return ts_io_set_error(r->err, TS_ERR_FORMAT, "%s: the encoder failed (code %d)", where, rc);
        want = (got + 2 > r->ids_cap) ? got + 2 : 2 * r->ids_cap;
    }
}

/* One document: pick its split from its text, encode, append (rolling the shard over first
 * when it would grow past max_shard_tokens). */
static ts_status add_document(prep_run *r, const char *where, const char *text, size_t len) {
    const ts_prepare_options *o = r->opts;
    if (is_blank(text, len)) {
        r->res->empty_docs++;
        return TS_OK;
    }
    uint64_t h = ts_xxh64(text, len, o->split_seed);
    int split = (double)(h >> 11) * 0x1.0p-53 < o->val_fraction ? 1 : 0;
    size_t n = 0;
    ts_status st = encode_document(r, where, text, len, &n);
    if (st != TS_OK) return st;
    if (n == 0) { /* an encoder that drops everything and no BOS/EOS: nothing to store */
        r->res->empty_docs++;
        return TS_OK;
    }
    ts_shard_writer *w = r->writer[split];
    if (o->max_shard_tokens && ts_shard_writer_docs(w) > 0 && ts_shard_writer_tokens(w) + n > o->max_shard_tokens) {
        st = finish_shard(r, split);
        if (st == TS_OK) st = start_shard(r, split);
        if (st != TS_OK) return st;
    }
    st = ts_shard_writer_add(r->writer[split], r->ids, n, r->err);
    if (st != TS_OK) {
        /* The writer's message names the shard; say which input produced the bad id. */
        char inner[TS_IO_ERROR_MAX];
        snprintf(inner, sizeof inner, "%s", r->err ? r->err->message : "");
        return ts_io_set_error(r->err, st, "%s: %s", where, inner);
    }
    if (split) {
        r->res->val_docs++;
        r->res->val_tokens += n;
    } else {
        r->res->train_docs++;
        r->res->train_tokens += n;
    }
    return TS_OK;
}

static bool doc_append(prep_run *r, const char *s, size_t n) {
    if (r->doc_len + n + 1 > r->doc_cap) {
        size_t cap = r->doc_cap ? r->doc_cap : 4096;
        while (cap < r->doc_len + n + 1) cap *= 2;
        char *p = realloc(r->doc, cap);
        if (!p) return false;
        r->doc = p;
        r->doc_cap = cap;
    }
    memcpy(r->doc + r->doc_len, s, n);
    r->doc_len += n;
    return true;
}

/* Line without its "\n" or "\r\n". */
static size_t strip_line_end(const char *line, size_t n) {
    if (n && line[n - 1] == '\n') n--;
    if (n && line[n - 1] == '\r') n--;
    return n;
}

static ts_status flush_block(prep_run *r, const char *where) {
    ts_status st = TS_OK;
    if (r->doc_len) st = add_document(r, where, r->doc, r->doc_len);
    r->doc_len = 0;
    return st;
}

static ts_status read_text_blocks(prep_run *r, const char *path, FILE *f) {
    char *line = NULL, where[4200];
    size_t line_cap = 0;
    ssize_t got;
    long line_no = 0, block_line = 0;
    ts_status st = TS_OK;
    r->doc_len = 0;
    while (st == TS_OK && (got = getline(&line, &line_cap, f)) >= 0) {
        line_no++;
        size_t n = strip_line_end(line, (size_t)got);
        if (is_blank(line, n)) {
            snprintf(where, sizeof where, "%s:%ld", path, block_line);
            st = flush_block(r, where);
            continue;
        }
        if (r->doc_len == 0) block_line = line_no;
        bool ok = (r->doc_len == 0 || doc_append(r, "\n", 1)) && doc_append(r, line, n);
        if (!ok) st = ts_io_set_error(r->err, TS_ERR_OOM, "%s:%ld: out of memory", path, line_no);
    }
    if (st == TS_OK && ferror(f)) st = ts_io_set_error(r->err, TS_ERR_IO, "%s: read error: %s", path, strerror(errno));
    snprintf(where, sizeof where, "%s:%ld", path, block_line);
    if (st == TS_OK) st = flush_block(r, where);
    free(line);
    return st;
}

static ts_status read_text_file(prep_run *r, const char *path, FILE *f) {
    r->doc_len = 0;
    char chunk[1 << 16];
    size_t got;
    while ((got = fread(chunk, 1, sizeof chunk, f)) > 0)
        if (!doc_append(r, chunk, got)) return ts_io_set_error(r->err, TS_ERR_OOM, "%s: out of memory", path);
    if (ferror(f)) return ts_io_set_error(r->err, TS_ERR_IO, "%s: read error: %s", path, strerror(errno));
    return flush_block(r, path);
}

/* A bad JSONL line: warn and skip, or fail in strict mode. `reason` is already formatted. */
static ts_status bad_jsonl_line(prep_run *r, const char *path, long line_no, const char *reason) {
    char msg[TS_IO_ERROR_MAX];
    snprintf(msg, sizeof msg, "%s:%ld: %s", path, line_no, reason);
    if (r->opts->jsonl_strict) return ts_io_set_error(r->err, TS_ERR_FORMAT, "%s", msg);
    r->res->bad_lines++;
    if (r->opts->warn) r->opts->warn(r->opts->warn_user, msg);
    return TS_OK;
}

static ts_status read_jsonl_line(prep_run *r, const char *path, long line_no, const char *line, size_t n) {
    const char *field = r->opts->jsonl_field ? r->opts->jsonl_field : "text";
    char reason[300];
    json_error_t jerr;
    json_t *root = json_loadb(line, n, 0, &jerr);
    if (!root) {
        snprintf(reason, sizeof reason, "invalid JSON: %s (column %d)", jerr.text, jerr.column);
        return bad_jsonl_line(r, path, line_no, reason);
    }
    json_t *value = json_is_object(root) ? json_object_get(root, field) : NULL;
    ts_status st;
    if (!json_is_object(root)) {
        st = bad_jsonl_line(r, path, line_no, "not a JSON object");
    } else if (!json_is_string(value)) {
        snprintf(reason, sizeof reason, value ? "field \"%s\" is not a string" : "no \"%s\" field", field);
        st = bad_jsonl_line(r, path, line_no, reason);
    } else {
        char where[4200];
        snprintf(where, sizeof where, "%s:%ld", path, line_no);
        st = add_document(r, where, json_string_value(value), json_string_length(value));
    }
    json_decref(root);
    return st;
}

static ts_status read_jsonl(prep_run *r, const char *path, FILE *f) {
    char *line = NULL;
    size_t line_cap = 0;
    ssize_t got;
    long line_no = 0;
    ts_status st = TS_OK;
    while (st == TS_OK && (got = getline(&line, &line_cap, f)) >= 0) {
        line_no++;
        size_t n = strip_line_end(line, (size_t)got);
        if (!is_blank(line, n)) st = read_jsonl_line(r, path, line_no, line, n);
    }
    if (st == TS_OK && ferror(f)) st = ts_io_set_error(r->err, TS_ERR_IO, "%s: read error: %s", path, strerror(errno));
    free(line);
    return st;
}

static ts_status read_input(prep_run *r, const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return ts_io_set_error(r->err, TS_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    ts_status st;
    if (is_jsonl(r->opts, path))
        st = read_jsonl(r, path, f);
    else if (r->opts->text_split == TS_TEXT_DOC_PER_FILE)
        st = read_text_file(r, path, f);
    else
        st = read_text_blocks(r, path, f);
    fclose(f);
    if (st == TS_OK) r->res->files++;
    return st;
}

ts_status ts_data_prepare(const ts_prepare_options *opts, ts_prepare_result *res, ts_io_error *err) {
    ts_prepare_result local;
    if (!res) res = &local;
    memset(res, 0, sizeof *res);
    ts_status st = check_options(opts, err);
    string_list files = {0};
    if (st == TS_OK) st = collect_inputs(opts, &files, err);
    if (st == TS_OK) st = check_out_dir(opts, err);
    prep_run r = {.opts = opts, .res = res, .err = err};
    for (int s = 0; s < 2 && st == TS_OK; s++) st = start_shard(&r, s);
    for (size_t i = 0; i < files.n && st == TS_OK; i++) st = read_input(&r, files.items[i]);
    for (int s = 0; s < 2; s++) {
        if (!r.writer[s]) continue;
        if (st == TS_OK)
            st = finish_shard(&r, s);
        else
            ts_shard_writer_abort(r.writer[s]);
    }
    if (st == TS_OK && opts->overwrite)
        for (int s = 0; s < 2; s++) remove_stale_shards(opts->out_dir, s, r.shards[s]);
    res->train_shards = r.shards[0];
    res->val_shards = r.shards[1];
    string_list_free(&files);
    free(r.ids);
    free(r.doc);
    return st;
}
