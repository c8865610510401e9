/* checkpoint.c - crash-proof training checkpoints (train.h): weights, model config, tokenizer
 * files and the exact training state (optimizer tensors, step, RNG, data position, schedule,
 * tokens seen, config hash) in one directory per checkpoint, so a resumed run continues as if it
 * had never stopped.
 *
 * Crash safety comes from two rules. A checkpoint is assembled in <name>.tmp-<pid>/ and only
 * renamed to <name>/ once every file in it and the manifest (the commit record, written last)
 * are on disk; so a visible ckpt-<step>/ is complete unless the disk itself corrupted it. And the
 * manifest holds the size and XXH64 of every file, so such corruption (a flipped byte, a
 * truncated file) is caught at load, and the loader falls back to the previous checkpoint.
 * Deletion renames first (to a .tmp- name the start-of-run cleaner removes), so a checkpoint is
 * never seen half-deleted either. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <jansson.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tessera/train.h"

#define MODEL_FILE "model.safetensors"
#define CONFIG_FILE "config.json"
#define STATE_FILE "training_state.safetensors"
#define MANIFEST_FILE "manifest.json"
#define MANIFEST_FORMAT "tessera-train-checkpoint"
#define TMP_MARK ".tmp-"
#define CKPT_PREFIX "ckpt-"
#define FINAL_NAME "final"
#define MANIFEST_MAX_BYTES (16u << 20)

/* The training_state metadata keys this file owns. */
static const char *const reserved_keys[] = {"format", "format_version", "step", "rng", "data_position",
                                            "lr_schedule", "tokens_seen", "config_hash"};
static const char *const reserved_files[] = {MODEL_FILE, CONFIG_FILE, STATE_FILE, MANIFEST_FILE};

#define COUNT(a) (sizeof(a) / sizeof *(a))

static bool in_list(const char *s, const char *const *list, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (strcmp(s, list[i]) == 0) return true;
    return false;
}

/* A single path component we create ourselves: no separators, no dot names, no temp marker. */
static bool plain_name(const char *s) {
    return s && *s && !strchr(s, '/') && strcmp(s, ".") != 0 && strcmp(s, "..") != 0 && !strstr(s, TMP_MARK);
}

static ts_status join(char *buf, size_t cap, const char *dir, const char *name, ts_io_error *err) {
    int n = snprintf(buf, cap, "%s/%s", dir, name);
    if (n < 0 || (size_t)n >= cap) return ts_io_set_error(err, TS_ERR_RANGE, "%s/%s: path too long", dir, name);
    return TS_OK;
}

/* "ckpt-<digits>" -> its step; -1 for any other name. */
static int64_t ckpt_step_of(const char *name) {
    size_t p = strlen(CKPT_PREFIX);
    if (strncmp(name, CKPT_PREFIX, p) != 0 || !name[p]) return -1;
    int64_t step = 0;
    for (const char *c = name + p; *c; c++) {
        if (*c < '0' || *c > '9' || step > (INT64_MAX - 9) / 10) return -1;
        step = step * 10 + (*c - '0');
    }
    return step;
}

/* ---------------------------------------------------------------- files */

/* Size and XXH64 of a file, read through a mapping. */
static ts_status hash_file(const char *path, uint64_t *size, uint64_t *hash, ts_io_error *err) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return ts_io_set_error(err, TS_ERR_IO, "%s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return ts_io_set_error(err, TS_ERR_IO, "%s: %s", path, strerror(e));
    }
    *size = (uint64_t)st.st_size;
    void *map = st.st_size > 0 ? mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0) : NULL;
    close(fd);
    if (map == MAP_FAILED) return ts_io_set_error(err, TS_ERR_IO, "%s: cannot map: %s", path, strerror(errno));
    *hash = ts_xxh64(map, (size_t)st.st_size, 0);
    if (map) munmap(map, (size_t)st.st_size);
    return TS_OK;
}

/* The whole file, NUL-terminated (malloc'd). */
static ts_status read_file(const char *path, size_t max, char **data, size_t *size, ts_io_error *err) {
    FILE *f = fopen(path, "rb");
    if (!f) return ts_io_set_error(err, errno == ENOENT ? TS_ERR_FORMAT : TS_ERR_IO, "%s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || (uint64_t)st.st_size > max) {
        fclose(f);
        return ts_io_set_error(err, TS_ERR_FORMAT, "%s: missing or larger than %zu bytes", path, max);
    }
    char *buf = malloc((size_t)st.st_size + 1);
    size_t got = buf ? fread(buf, 1, (size_t)st.st_size, f) : 0;
    fclose(f);
    if (!buf) return ts_io_set_error(err, TS_ERR_OOM, "%s: out of memory", path);
    if (got != (size_t)st.st_size) {
        free(buf);
        return ts_io_set_error(err, TS_ERR_IO, "%s: short read", path);
    }
    buf[got] = '\0';
    *data = buf;
    if (size) *size = got;
    return TS_OK;
}

/* rm -r of a checkpoint directory (files and, from interrupted ts_st_write calls, nothing deeper
 * than one more level; the recursion handles any depth). */
static int remove_tree(const char *path) {
    DIR *d = opendir(path);
    if (!d) return unlink(path);
    struct dirent *e;
    int rc = 0;
    while ((e = readdir(d))) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
        char child[PATH_MAX];
        if (snprintf(child, sizeof child, "%s/%s", path, e->d_name) >= (int)sizeof child) {
            rc = -1;
            continue;
        }
        struct stat st;
        if (lstat(child, &st) == 0 && S_ISDIR(st.st_mode))
            rc |= remove_tree(child);
        else
            rc |= unlink(child);
    }
    closedir(d);
    return rmdir(path) | rc;
}

/* Renames dir out of sight (to a .tmp- name) before deleting it, so a crash mid-deletion leaves
 * nothing the loader would consider. */
static ts_status retire(const char *run_dir, const char *name, const char *why, ts_io_error *err) {
    char from[PATH_MAX], to[PATH_MAX];
    if (snprintf(from, sizeof from, "%s/%s", run_dir, name) >= (int)sizeof from ||
        snprintf(to, sizeof to, "%s/%s" TMP_MARK "%ld.%s", run_dir, name, (long)getpid(), why) >= (int)sizeof to)
        return ts_io_set_error(err, TS_ERR_RANGE, "%s/%s: path too long", run_dir, name);
    if (rename(from, to) != 0) return ts_io_set_error(err, TS_ERR_IO, "cannot retire %s: %s", from, strerror(errno));
    ts_status s = ts_fsync_parent_dir(to, err);
    if (s == TS_OK && remove_tree(to) != 0)
        s = ts_io_set_error(err, TS_ERR_IO, "cannot delete %s: %s", to, strerror(errno));
    return s;
}

/* ---------------------------------------------------------------- state <-> metadata text */

static const char *lr_kind_names[] = {"constant", "cosine", "wsd"};
static const char *lr_shape_names[] = {"linear", "cosine"};

static int name_index(const char *s, const char *const *names, int n) {
    for (int i = 0; i < n; i++)
        if (strcmp(s, names[i]) == 0) return i;
    return -1;
}

/* %.17g round-trips every double through strtod exactly. */
static void format_lr(const ts_lr_schedule *s, char *buf, size_t cap) {
    int kind = s->kind >= 0 && s->kind < 3 ? (int)s->kind : 0;
    int shape = s->decay_shape == TS_LR_DECAY_COSINE ? 1 : 0;
    snprintf(buf, cap,
             "tslr1 kind=%s peak=%.17g warmup=%" PRId64 " total=%" PRId64 " final=%.17g decay_fraction=%.17g shape=%s",
             lr_kind_names[kind], s->peak_lr, s->warmup_steps, s->total_steps, s->final_lr, s->decay_fraction,
             lr_shape_names[shape]);
}

static bool parse_lr(const char *text, ts_lr_schedule *s) {
    char kind[16], shape[16];
    int used = 0;
    if (sscanf(text,
               "tslr1 kind=%15s peak=%lf warmup=%" SCNd64 " total=%" SCNd64 " final=%lf decay_fraction=%lf shape=%15s%n",
               kind, &s->peak_lr, &s->warmup_steps, &s->total_steps, &s->final_lr, &s->decay_fraction, shape,
               &used) != 7 ||
        text[used] != '\0')
        return false;
    int k = name_index(kind, lr_kind_names, 3), h = name_index(shape, lr_shape_names, 2);
    s->kind = (ts_lr_kind)k;
    s->decay_shape = (ts_lr_decay_shape)h;
    return k >= 0 && h >= 0;
}

static bool parse_rng(const char *text, ts_rng *r) {
    int used = 0;
    return sscanf(text, "%16" SCNx64 " %16" SCNx64 " %16" SCNx64 " %16" SCNx64 "%n", &r->s[0], &r->s[1], &r->s[2],
                  &r->s[3], &used) == 4 &&
           text[used] == '\0';
}

static bool parse_u64(const char *text, int base, uint64_t *v) {
    char *end;
    errno = 0;
    *v = strtoull(text, &end, base);
    return *text && *text != '-' && !*end && errno == 0;
}

/* Text forms of the state, owned by the caller's stack. */
typedef struct {
    char version[16], step[32], rng[80], data[TS_DATA_POSITION_TEXT_MAX], lr[256], tokens[32], hash[32];
} state_text;

static void format_state(const ts_train_state *st, state_text *t) {
    snprintf(t->version, sizeof t->version, "%d", TS_TRAIN_CKPT_FORMAT_VERSION);
    snprintf(t->step, sizeof t->step, "%" PRId64, st->step);
    snprintf(t->rng, sizeof t->rng, "%016" PRIx64 " %016" PRIx64 " %016" PRIx64 " %016" PRIx64, st->rng.s[0],
             st->rng.s[1], st->rng.s[2], st->rng.s[3]);
    ts_data_position_format(&st->data, t->data, sizeof t->data);
    format_lr(&st->lr, t->lr, sizeof t->lr);
    snprintf(t->tokens, sizeof t->tokens, "%" PRIu64, st->tokens_seen);
    snprintf(t->hash, sizeof t->hash, "%016" PRIx64, st->config_hash);
}

/* ---------------------------------------------------------------- saving */

static ts_status check_contents(const char *name, const ts_train_ckpt_contents *c, ts_io_error *err) {
    if (!c->config_json) return ts_io_set_error(err, TS_ERR_INVALID_ARG, "checkpoint %s: config.json text is required", name);
    if (c->state.step < 0) return ts_io_set_error(err, TS_ERR_INVALID_ARG, "checkpoint %s: negative step", name);
    if ((c->n_weights && !c->weights) || (c->n_files && !c->files) || (c->n_optim_state && !c->optim_state) ||
        (c->n_metadata && !c->metadata))
        return ts_io_set_error(err, TS_ERR_INVALID_ARG, "checkpoint %s: a list with entries but no array", name);
    for (size_t i = 0; i < c->n_files; i++) {
        const char *f = c->files[i].name;
        if (!plain_name(f) || in_list(f, reserved_files, COUNT(reserved_files)) || (c->files[i].size && !c->files[i].data))
            return ts_io_set_error(err, TS_ERR_INVALID_ARG, "checkpoint %s: file '%s' is not a plain, unreserved name with data",
                                   name, f ? f : "(null)");
        for (size_t k = 0; k < i; k++)
            if (strcmp(c->files[k].name, f) == 0)
                return ts_io_set_error(err, TS_ERR_INVALID_ARG, "checkpoint %s: file '%s' given twice", name, f);
    }
    for (size_t i = 0; i < c->n_metadata; i++)
        if (!c->metadata[i].key || !c->metadata[i].value || in_list(c->metadata[i].key, reserved_keys, COUNT(reserved_keys)))
            return ts_io_set_error(err, TS_ERR_INVALID_ARG, "checkpoint %s: metadata key '%s' is missing, reserved or has no value",
                                   name, c->metadata[i].key ? c->metadata[i].key : "(null)");
    return TS_OK;
}

static ts_status write_state_file(const char *path, const ts_train_ckpt_contents *c, ts_io_error *err) {
    state_text t;
    format_state(&c->state, &t);
    size_t n = COUNT(reserved_keys) + c->n_metadata;
    ts_st_metadata *meta = malloc(n * sizeof *meta);
    if (!meta) return ts_io_set_error(err, TS_ERR_OOM, "%s: out of memory", path);
    const char *values[] = {MANIFEST_FORMAT, t.version, t.step, t.rng, t.data, t.lr, t.tokens, t.hash};
    for (size_t i = 0; i < COUNT(reserved_keys); i++) meta[i] = (ts_st_metadata){reserved_keys[i], values[i]};
    for (size_t i = 0; i < c->n_metadata; i++) meta[COUNT(reserved_keys) + i] = c->metadata[i];
    ts_status s = ts_st_write(path, c->optim_state, c->n_optim_state, meta, n, err);
    free(meta);
    return s;
}

/* manifest.json: {"format", "format_version", "step", "files": {name: {"bytes", "xxh64"}}}, the
 * sums taken from the files as they are on disk. */
static ts_status write_manifest(const char *dir, int64_t step, const char *const *names, size_t n, ts_io_error *err) {
    json_t *files = json_object(), *root = json_object();
    ts_status s = files && root ? TS_OK : ts_io_set_error(err, TS_ERR_OOM, "%s: out of memory", dir);
    for (size_t i = 0; s == TS_OK && i < n; i++) {
        char path[PATH_MAX], hex[32];
        uint64_t size, hash;
        s = join(path, sizeof path, dir, names[i], err);
        if (s == TS_OK) s = hash_file(path, &size, &hash, err);
        if (s != TS_OK) break;
        snprintf(hex, sizeof hex, "%016" PRIx64, hash);
        json_object_set_new(files, names[i], json_pack("{sIss}", "bytes", (json_int_t)size, "xxh64", hex));
    }
    char *text = NULL;
    if (s == TS_OK) {
        json_object_set_new(root, "format", json_string(MANIFEST_FORMAT));
        json_object_set_new(root, "format_version", json_integer(TS_TRAIN_CKPT_FORMAT_VERSION));
        json_object_set_new(root, "step", json_integer((json_int_t)step));
        json_object_set(root, "files", files);
        text = json_dumps(root, JSON_INDENT(2));
        if (!text) s = ts_io_set_error(err, TS_ERR_OOM, "%s: out of memory", dir);
    }
    char path[PATH_MAX];
    if (s == TS_OK) s = join(path, sizeof path, dir, MANIFEST_FILE, err);
    if (s == TS_OK) s = ts_atomic_write_file(path, text, strlen(text), err);
    free(text);
    json_decref(files);
    json_decref(root);
    return s;
}

/* Every file into dir (each written atomically: fsynced, renamed, dir fsynced), manifest last. */
static ts_status write_files(const char *dir, const ts_train_ckpt_contents *c, ts_io_error *err) {
    size_t n = 3 + c->n_files;
    const char **names = malloc(n * sizeof *names);
    if (!names) return ts_io_set_error(err, TS_ERR_OOM, "%s: out of memory", dir);
    names[0] = MODEL_FILE;
    names[1] = CONFIG_FILE;
    names[2] = STATE_FILE;
    for (size_t i = 0; i < c->n_files; i++) names[3 + i] = c->files[i].name;
    static const ts_st_metadata weights_meta[] = {{"format", "pt"}}; /* what transformers expects */
    char path[PATH_MAX];
    ts_status s = join(path, sizeof path, dir, MODEL_FILE, err);
    if (s == TS_OK) s = ts_st_write(path, c->weights, c->n_weights, weights_meta, 1, err);
    if (s == TS_OK) s = join(path, sizeof path, dir, CONFIG_FILE, err);
    if (s == TS_OK) s = ts_atomic_write_file(path, c->config_json, strlen(c->config_json), err);
    if (s == TS_OK) s = join(path, sizeof path, dir, STATE_FILE, err);
    if (s == TS_OK) s = write_state_file(path, c, err);
    for (size_t i = 0; s == TS_OK && i < c->n_files; i++) {
        s = join(path, sizeof path, dir, c->files[i].name, err);
        if (s == TS_OK) s = ts_atomic_write_file(path, c->files[i].data, c->files[i].size, err);
    }
    if (s == TS_OK) s = write_manifest(dir, c->state.step, names, n, err);
    free(names);
    return s;
}

typedef struct {
    char name[NAME_MAX + 1];
    int64_t step;
} entry;

static int by_step_desc(const void *a, const void *b) {
    const entry *x = a, *y = b;
    return x->step < y->step ? 1 : x->step > y->step ? -1 : 0;
}

/* The run directory's ckpt-<step> entries, newest first (malloc'd). */
static ts_status list_ckpts(const char *run_dir, entry **out, size_t *n_out, ts_io_error *err) {
    *out = NULL;
    *n_out = 0;
    DIR *d = opendir(run_dir);
    if (!d) return ts_io_set_error(err, TS_ERR_IO, "%s: %s", run_dir, strerror(errno));
    entry *list = NULL;
    size_t n = 0, cap = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        int64_t step = ckpt_step_of(e->d_name);
        if (step < 0) continue;
        if (n == cap) {
            cap = cap ? 2 * cap : 16;
            entry *grown = realloc(list, cap * sizeof *list);
            if (!grown) {
                free(list);
                closedir(d);
                return ts_io_set_error(err, TS_ERR_OOM, "%s: out of memory listing checkpoints", run_dir);
            }
            list = grown;
        }
        snprintf(list[n].name, sizeof list[n].name, "%s", e->d_name);
        list[n++].step = step;
    }
    closedir(d);
    if (n > 1) qsort(list, n, sizeof *list, by_step_desc);
    *out = list;
    *n_out = n;
    return TS_OK;
}

/* After committing step `step`: ckpt-* newer than it belong to an abandoned continuation (the
 * run resumed from an older one) and go; of the rest the keep_last newest stay. */
static ts_status prune(const char *run_dir, int64_t step, int keep_last, ts_io_error *err) {
    entry *list;
    size_t n;
    ts_status s = list_ckpts(run_dir, &list, &n, err);
    size_t kept = 0;
    for (size_t i = 0; s == TS_OK && i < n; i++) {
        bool keep = list[i].step <= step && (keep_last <= 0 || kept < (size_t)keep_last);
        if (keep)
            kept++;
        else
            s = retire(run_dir, list[i].name, "del", err);
    }
    free(list);
    return s;
}

ts_status ts_train_ckpt_save(const char *run_dir, const char *name, const ts_train_ckpt_contents *c, int keep_last,
                             char *path_out, size_t cap, ts_io_error *err) {
    if (!run_dir || !c) return ts_io_set_error(err, TS_ERR_INVALID_ARG, "checkpoint save: run_dir and contents are required");
    char own_name[64];
    if (!name) {
        snprintf(own_name, sizeof own_name, CKPT_PREFIX "%" PRId64, c->state.step);
        name = own_name;
    }
    if (!plain_name(name)) return ts_io_set_error(err, TS_ERR_INVALID_ARG, "checkpoint name '%s' is not a plain name", name);
    ts_status s = check_contents(name, c, err);
    char tmp[PATH_MAX], dir[PATH_MAX];
    if (s == TS_OK && (snprintf(tmp, sizeof tmp, "%s/%s" TMP_MARK "%ld", run_dir, name, (long)getpid()) >= (int)sizeof tmp ||
                       snprintf(dir, sizeof dir, "%s/%s", run_dir, name) >= (int)sizeof dir))
        s = ts_io_set_error(err, TS_ERR_RANGE, "%s/%s: path too long", run_dir, name);
    if (s != TS_OK) return s;
    remove_tree(tmp); /* our own leftover from a failed attempt */
    if (mkdir(tmp, 0777) != 0) return ts_io_set_error(err, TS_ERR_IO, "cannot create %s: %s", tmp, strerror(errno));
    s = write_files(tmp, c, err);
    /* A committed checkpoint of the same name (a re-save) is moved aside, not overwritten: rename
     * cannot replace a non-empty directory. */
    struct stat st;
    if (s == TS_OK && stat(dir, &st) == 0) s = retire(run_dir, name, "old", err);
    if (s == TS_OK && rename(tmp, dir) != 0)
        s = ts_io_set_error(err, TS_ERR_IO, "cannot rename %s to %s: %s", tmp, dir, strerror(errno));
    if (s != TS_OK) {
        remove_tree(tmp);
        return s;
    }
    s = ts_fsync_parent_dir(dir, err);
    if (s == TS_OK && ckpt_step_of(name) >= 0) s = prune(run_dir, c->state.step, keep_last, err);
    if (s == TS_OK && path_out && cap) snprintf(path_out, cap, "%s", dir);
    return s;
}

ts_status ts_train_ckpt_clean(const char *run_dir, ts_io_error *err) {
    if (!run_dir) return ts_io_set_error(err, TS_ERR_INVALID_ARG, "checkpoint clean: run_dir is required");
    DIR *d = opendir(run_dir);
    if (!d) return errno == ENOENT ? TS_OK : ts_io_set_error(err, TS_ERR_IO, "%s: %s", run_dir, strerror(errno));
    ts_status s = TS_OK;
    struct dirent *e;
    while ((e = readdir(d))) {
        const char *mark = strstr(e->d_name, TMP_MARK);
        if (!mark) continue;
        char base[NAME_MAX + 1];
        snprintf(base, sizeof base, "%.*s", (int)(mark - e->d_name), e->d_name);
        if (strcmp(base, FINAL_NAME) != 0 && ckpt_step_of(base) < 0) continue; /* not ours */
        char path[PATH_MAX];
        if (join(path, sizeof path, run_dir, e->d_name, err) != TS_OK || remove_tree(path) != 0)
            s = ts_io_set_error(err, TS_ERR_IO, "cannot remove %s/%s: %s", run_dir, e->d_name, strerror(errno));
    }
    closedir(d);
    return s;
}

/* ---------------------------------------------------------------- loading */

struct ts_train_ckpt {
    char *path;
    json_t *files;       /* the manifest's file table */
    char *config_json;
    ts_st_file *state_file; /* for the metadata */
    ts_checkpoint *weights, *optim;
    ts_train_state state;
};

void ts_train_ckpt_close(ts_train_ckpt *c) {
    if (!c) return;
    ts_checkpoint_close(c->weights);
    ts_checkpoint_close(c->optim);
    ts_st_file_close(c->state_file);
    free(c->config_json);
    json_decref(c->files);
    free(c->path);
    free(c);
}

/* Reads and checks manifest.json; *files is its file table (a new reference). */
static ts_status read_manifest(const char *dir, int64_t *step, json_t **files, ts_io_error *err) {
    char path[PATH_MAX], *text;
    ts_status s = join(path, sizeof path, dir, MANIFEST_FILE, err);
    if (s == TS_OK) s = read_file(path, MANIFEST_MAX_BYTES, &text, NULL, err);
    if (s != TS_OK) return s;
    json_error_t jerr;
    json_t *root = json_loads(text, JSON_REJECT_DUPLICATES, &jerr);
    free(text);
    json_t *format = json_object_get(root, "format"), *version = json_object_get(root, "format_version");
    json_t *st = json_object_get(root, "step"), *table = json_object_get(root, "files");
    if (!root || !json_is_string(format) || strcmp(json_string_value(format), MANIFEST_FORMAT) != 0 ||
        !json_is_integer(st) || json_integer_value(st) < 0 || !json_is_object(table) || !json_is_integer(version))
        s = ts_io_set_error(err, TS_ERR_FORMAT, "%s: not a %s manifest", path, MANIFEST_FORMAT);
    else if (json_integer_value(version) != TS_TRAIN_CKPT_FORMAT_VERSION)
        s = ts_io_set_error(err, TS_ERR_UNSUPPORTED, "%s: format version %lld (this build reads %d)", path,
                            (long long)json_integer_value(version), TS_TRAIN_CKPT_FORMAT_VERSION);
    if (s == TS_OK) {
        *step = (int64_t)json_integer_value(st);
        *files = json_incref(table);
    }
    json_decref(root);
    return s;
}

/* Every file the manifest lists has its size and sum; the three required ones are listed. */
static ts_status verify_files(const char *dir, json_t *files, ts_io_error *err) {
    for (size_t i = 0; i < 3; i++)
        if (!json_object_get(files, reserved_files[i]))
            return ts_io_set_error(err, TS_ERR_FORMAT, "%s: the manifest does not list %s", dir, reserved_files[i]);
    const char *name;
    json_t *v;
    json_object_foreach(files, name, v) {
        json_t *bytes = json_object_get(v, "bytes"), *sum = json_object_get(v, "xxh64");
        uint64_t want_sum, size, hash;
        if (!plain_name(name) || !json_is_integer(bytes) || !json_is_string(sum) ||
            !parse_u64(json_string_value(sum), 16, &want_sum))
            return ts_io_set_error(err, TS_ERR_FORMAT, "%s: bad manifest entry '%s'", dir, name);
        char path[PATH_MAX];
        ts_io_error why;
        ts_status s = join(path, sizeof path, dir, name, err);
        if (s != TS_OK) return s;
        /* A listed file that cannot be read makes the checkpoint incomplete, not the disk bad. */
        if (hash_file(path, &size, &hash, &why) != TS_OK) return ts_io_set_error(err, TS_ERR_FORMAT, "%s", why.message);
        if (size != (uint64_t)json_integer_value(bytes))
            return ts_io_set_error(err, TS_ERR_FORMAT, "%s: %" PRIu64 " bytes, the manifest says %lld (truncated?)", path,
                                   size, (long long)json_integer_value(bytes));
        if (hash != want_sum)
            return ts_io_set_error(err, TS_ERR_FORMAT, "%s: XXH64 %016" PRIx64 " does not match the manifest's %s (corrupt)",
                                   path, hash, json_string_value(sum));
    }
    return TS_OK;
}

static ts_status parse_state(ts_train_ckpt *c, int64_t manifest_step, ts_io_error *err) {
    const ts_st_file *f = c->state_file;
    const char *v[COUNT(reserved_keys)];
    for (size_t i = 0; i < COUNT(reserved_keys); i++)
        if (!(v[i] = ts_st_file_metadata(f, reserved_keys[i])))
            return ts_io_set_error(err, TS_ERR_FORMAT, "%s/" STATE_FILE ": no '%s' in the metadata", c->path, reserved_keys[i]);
    ts_train_state *st = &c->state;
    uint64_t version, step;
    ts_io_error pos_err;
    bool ok = strcmp(v[0], MANIFEST_FORMAT) == 0 && parse_u64(v[1], 10, &version) &&
              version == TS_TRAIN_CKPT_FORMAT_VERSION && parse_u64(v[2], 10, &step) && (int64_t)step == manifest_step &&
              parse_rng(v[3], &st->rng) && ts_data_position_parse(v[4], &st->data, &pos_err) == TS_OK &&
              parse_lr(v[5], &st->lr) && parse_u64(v[6], 10, &st->tokens_seen) && parse_u64(v[7], 16, &st->config_hash);
    if (!ok)
        return ts_io_set_error(err, TS_ERR_FORMAT, "%s/" STATE_FILE ": the training-state metadata is malformed or disagrees with the manifest",
                               c->path);
    st->step = (int64_t)step;
    return TS_OK;
}

ts_status ts_train_ckpt_open(const char *dir, ts_train_ckpt **out, ts_io_error *err) {
    if (!dir || !out) return ts_io_set_error(err, TS_ERR_INVALID_ARG, "checkpoint open: dir and out are required");
    *out = NULL;
    ts_train_ckpt *c = calloc(1, sizeof *c);
    if (!c || !(c->path = strdup(dir))) {
        free(c);
        return ts_io_set_error(err, TS_ERR_OOM, "%s: out of memory", dir);
    }
    int64_t step = 0;
    char path[PATH_MAX];
    ts_status s = read_manifest(dir, &step, &c->files, err);
    if (s == TS_OK) s = verify_files(dir, c->files, err);
    if (s == TS_OK) s = join(path, sizeof path, dir, CONFIG_FILE, err);
    if (s == TS_OK) s = read_file(path, SIZE_MAX - 1, &c->config_json, NULL, err);
    if (s == TS_OK) s = join(path, sizeof path, dir, MODEL_FILE, err);
    if (s == TS_OK) s = ts_checkpoint_open(path, &c->weights, err);
    if (s == TS_OK) s = join(path, sizeof path, dir, STATE_FILE, err);
    if (s == TS_OK) s = ts_checkpoint_open(path, &c->optim, err);
    if (s == TS_OK) s = ts_st_file_open(path, &c->state_file, err);
    if (s == TS_OK) s = parse_state(c, step, err);
    if (s != TS_OK) {
        ts_train_ckpt_close(c);
        return s;
    }
    *out = c;
    return TS_OK;
}

/* Candidates for the latest: ckpt-<step> by name, final by its manifest (-1 when unreadable,
 * so it is tried last and its failure reported). */
static ts_status list_candidates(const char *run_dir, entry **out, size_t *n_out, ts_io_error *err) {
    ts_status s = list_ckpts(run_dir, out, n_out, err);
    char final_dir[PATH_MAX];
    struct stat st;
    if (s != TS_OK || join(final_dir, sizeof final_dir, run_dir, FINAL_NAME, NULL) != TS_OK || stat(final_dir, &st) != 0)
        return s;
    entry *grown = realloc(*out, (*n_out + 1) * sizeof *grown);
    if (!grown) return ts_io_set_error(err, TS_ERR_OOM, "%s: out of memory listing checkpoints", run_dir);
    json_t *files = NULL;
    int64_t step = -1;
    if (read_manifest(final_dir, &step, &files, NULL) != TS_OK) step = -1;
    json_decref(files);
    /* Inserted before the ckpt of the same step: final wins a tie. */
    size_t at = 0;
    while (at < *n_out && grown[at].step > step) at++;
    memmove(grown + at + 1, grown + at, (*n_out - at) * sizeof *grown);
    snprintf(grown[at].name, sizeof grown[at].name, FINAL_NAME);
    grown[at].step = step;
    *out = grown;
    (*n_out)++;
    return TS_OK;
}

ts_status ts_train_ckpt_open_latest(const char *run_dir, ts_train_ckpt_warn_fn warn, void *user, ts_train_ckpt **out,
                                    ts_io_error *err) {
    if (!run_dir || !out) return ts_io_set_error(err, TS_ERR_INVALID_ARG, "checkpoint open: run_dir and out are required");
    *out = NULL;
    struct stat st;
    if (stat(run_dir, &st) != 0 && errno == ENOENT) return TS_OK;
    entry *list;
    size_t n;
    ts_status s = list_candidates(run_dir, &list, &n, err);
    for (size_t i = 0; s == TS_OK && i < n && !*out; i++) {
        char dir[PATH_MAX];
        ts_io_error why = {0};
        s = join(dir, sizeof dir, run_dir, list[i].name, err);
        if (s != TS_OK || ts_train_ckpt_open(dir, out, &why) == TS_OK || !warn) continue;
        char message[TS_IO_ERROR_MAX + NAME_MAX + 32];
        snprintf(message, sizeof message, "skipping checkpoint %s: %s", list[i].name, why.message);
        warn(user, message);
    }
    free(list);
    return s;
}

const char *ts_train_ckpt_path(const ts_train_ckpt *c) { return c->path; }
const ts_train_state *ts_train_ckpt_state(const ts_train_ckpt *c) { return &c->state; }
ts_checkpoint *ts_train_ckpt_weights(ts_train_ckpt *c) { return c->weights; }
ts_checkpoint *ts_train_ckpt_optim_state(ts_train_ckpt *c) { return c->optim; }
const char *ts_train_ckpt_config_json(const ts_train_ckpt *c) { return c->config_json; }
const char *ts_train_ckpt_metadata(const ts_train_ckpt *c, const char *key) {
    return ts_st_file_metadata(c->state_file, key);
}

ts_status ts_train_ckpt_read_file(const ts_train_ckpt *c, const char *name, void **data, size_t *size, ts_io_error *err) {
    if (!c || !name || !data || !size) return ts_io_set_error(err, TS_ERR_INVALID_ARG, "checkpoint read: arguments are required");
    if (!json_object_get(c->files, name) || !plain_name(name))
        return ts_io_set_error(err, TS_ERR_FORMAT, "checkpoint %s has no file '%s'", c->path, name);
    char path[PATH_MAX], *text;
    ts_status s = join(path, sizeof path, c->path, name, err);
    if (s == TS_OK) s = read_file(path, SIZE_MAX - 1, &text, size, err);
    if (s == TS_OK) *data = text;
    return s;
}
