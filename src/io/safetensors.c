/* safetensors.c - reading and writing Hugging Face safetensors files and sharded checkpoints,
 * and loading weights from them converted to the compute dtypes. The model layer maps its
 * parameters onto the official DeepSeek-V4 tensor names through this file; the format itself
 * (https://github.com/huggingface/safetensors) is:
 *
 *   u64 little-endian N | N bytes of JSON header | data area
 *   header = {"__metadata__": {str: str}?, name: {"dtype": "F32", "shape": [..],
 *             "data_offsets": [begin, end]}, ...}   (offsets relative to the data area)
 *
 * Reading maps the file read-only and validates everything before any tensor is handed out,
 * with the reference implementation's rules (it rejects gaps between tensors and bytes after
 * the last one, so we do too: a file it refuses is one no other tool can read). Lookups are a
 * binary search over names sorted once at open; DeepSeek-V4 checkpoints hold ~70k-145k
 * tensors. Sharded checkpoints open each shard on first use.
 *
 * The mapping is MAP_PRIVATE and read-only: if another process truncates a file while it is
 * mapped, touching the lost pages raises SIGBUS, as with every mmap reader; our own writers
 * never modify a file in place (they replace it atomically), so that cannot come from us. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tessera/io.h"

/* The reference implementation refuses headers over 100 MB; so do we (a 145k-tensor
 * checkpoint has shard headers of a few hundred KB). */
#define ST_MAX_HEADER_BYTES 100000000ull
#define ST_METADATA_KEY "__metadata__"
#define INDEX_FILE_NAME "model.safetensors.index.json"
#define SINGLE_FILE_NAME "model.safetensors"

/* ================================================================ errors */

ts_status ts_io_set_error(ts_io_error *err, ts_status status, const char *fmt, ...) {
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->message, sizeof err->message, fmt, ap);
        va_end(ap);
        err->status = status;
    }
    return status;
}

/* "[130, 260]" (or "[]" for a scalar) into buf. */
static const char *format_shape(char *buf, size_t room, int ndim, const int64_t *shape) {
    size_t used = (size_t)snprintf(buf, room, "[");
    for (int d = 0; d < ndim && used < room; d++)
        used += (size_t)snprintf(buf + used, room - used, d ? ", %lld" : "%lld", (long long)shape[d]);
    if (used < room) snprintf(buf + used, room - used, "]");
    return buf;
}

/* ================================================================ dtypes */

typedef struct {
    const char *name;
    int bits;
    bool has_dtype;
    ts_dtype dtype;
} st_dtype_info;

static const st_dtype_info st_dtypes[] = {
    [TS_ST_BOOL] = {"BOOL", 8, false, TS_F32},
    [TS_ST_U8] = {"U8", 8, false, TS_F32},
    [TS_ST_I8] = {"I8", 8, true, TS_I8},
    [TS_ST_I16] = {"I16", 16, false, TS_F32},
    [TS_ST_U16] = {"U16", 16, false, TS_F32},
    [TS_ST_I32] = {"I32", 32, true, TS_I32},
    [TS_ST_U32] = {"U32", 32, false, TS_F32},
    [TS_ST_I64] = {"I64", 64, true, TS_I64},
    [TS_ST_U64] = {"U64", 64, false, TS_F32},
    [TS_ST_F16] = {"F16", 16, true, TS_F16},
    [TS_ST_BF16] = {"BF16", 16, true, TS_BF16},
    [TS_ST_F32] = {"F32", 32, true, TS_F32},
    [TS_ST_F64] = {"F64", 64, true, TS_F64},
    [TS_ST_F8_E4M3] = {"F8_E4M3", 8, true, TS_F8_E4M3},
    [TS_ST_F8_E5M2] = {"F8_E5M2", 8, true, TS_F8_E5M2},
    [TS_ST_F8_E8M0] = {"F8_E8M0", 8, true, TS_E8M0},
    [TS_ST_F4] = {"F4", 4, true, TS_F4_E2M1},
};
_Static_assert(sizeof st_dtypes / sizeof st_dtypes[0] == TS_ST_DTYPE_COUNT,
               "every ts_st_dtype needs an entry in st_dtypes");

static bool st_dtype_valid(ts_st_dtype t) { return (unsigned)t < TS_ST_DTYPE_COUNT; }

const char *ts_st_dtype_name(ts_st_dtype t) { return st_dtype_valid(t) ? st_dtypes[t].name : "?"; }

int ts_st_dtype_bits(ts_st_dtype t) { return st_dtype_valid(t) ? st_dtypes[t].bits : 0; }

ts_status ts_st_dtype_from_name(const char *name, ts_st_dtype *out) {
    for (int t = 0; t < TS_ST_DTYPE_COUNT; t++) {
        if (name && strcmp(name, st_dtypes[t].name) == 0) {
            *out = (ts_st_dtype)t;
            return TS_OK;
        }
    }
    return TS_ERR_FORMAT;
}

bool ts_st_dtype_to_dtype(ts_st_dtype t, ts_dtype *out) {
    if (!st_dtype_valid(t) || !st_dtypes[t].has_dtype) return false;
    *out = st_dtypes[t].dtype;
    return true;
}

bool ts_st_dtype_from_dtype(ts_dtype t, ts_st_dtype *out) {
    for (int s = 0; s < TS_ST_DTYPE_COUNT; s++) {
        if (st_dtypes[s].has_dtype && st_dtypes[s].dtype == t) {
            *out = (ts_st_dtype)s;
            return true;
        }
    }
    return false;
}

/* Bytes for numel elements; false on overflow or on a fractional byte count (odd F4 count). */
static bool st_bytes_for(ts_st_dtype t, int64_t numel, uint64_t *bytes) {
    uint64_t bits = (uint64_t)ts_st_dtype_bits(t);
    if (numel < 0 || bits == 0 || (uint64_t)numel > UINT64_MAX / bits) return false;
    uint64_t total_bits = (uint64_t)numel * bits;
    if (total_bits % 8) return false;
    *bytes = total_bits / 8;
    return true;
}

/* Product of the dims; false on overflow. */
static bool shape_numel(int ndim, const int64_t *shape, int64_t *numel) {
    int64_t n = 1;
    for (int d = 0; d < ndim; d++) {
        if (shape[d] < 0 || __builtin_mul_overflow(n, shape[d], &n)) return false;
    }
    *numel = n;
    return true;
}

/* ================================================================ one file: structure */

typedef struct {
    char *key;
    char *value;
} st_kv;

struct ts_st_file {
    char *path;
    void *map;
    size_t map_size;
    ts_st_tensor *tensors; /* sorted by name; names owned */
    size_t n_tensors;
    st_kv *metadata; /* sorted by key */
    size_t n_metadata;
};

void ts_st_file_close(ts_st_file *f) {
    if (!f) return;
    for (size_t i = 0; i < f->n_tensors; i++) free((char *)f->tensors[i].name);
    for (size_t i = 0; i < f->n_metadata; i++) {
        free(f->metadata[i].key);
        free(f->metadata[i].value);
    }
    free(f->tensors);
    free(f->metadata);
    if (f->map) munmap(f->map, f->map_size);
    free(f->path);
    free(f);
}

const char *ts_st_file_path(const ts_st_file *f) { return f->path; }
size_t ts_st_file_count(const ts_st_file *f) { return f->n_tensors; }

const ts_st_tensor *ts_st_file_tensor(const ts_st_file *f, size_t i) {
    return i < f->n_tensors ? &f->tensors[i] : NULL;
}

static int cmp_tensor_name(const void *a, const void *b) {
    return strcmp(((const ts_st_tensor *)a)->name, ((const ts_st_tensor *)b)->name);
}

const ts_st_tensor *ts_st_file_find(const ts_st_file *f, const char *name) {
    if (!f || !name) return NULL;
    ts_st_tensor key = {.name = name};
    return bsearch(&key, f->tensors, f->n_tensors, sizeof key, cmp_tensor_name);
}

size_t ts_st_file_metadata_count(const ts_st_file *f) { return f->n_metadata; }

void ts_st_file_metadata_at(const ts_st_file *f, size_t i, const char **key, const char **value) {
    *key = i < f->n_metadata ? f->metadata[i].key : NULL;
    *value = i < f->n_metadata ? f->metadata[i].value : NULL;
}

static int cmp_kv_key(const void *a, const void *b) {
    return strcmp(((const st_kv *)a)->key, ((const st_kv *)b)->key);
}

const char *ts_st_file_metadata(const ts_st_file *f, const char *key) {
    if (!f || !key) return NULL;
    st_kv probe = {.key = (char *)key};
    const st_kv *hit = bsearch(&probe, f->metadata, f->n_metadata, sizeof probe, cmp_kv_key);
    return hit ? hit->value : NULL;
}

/* ================================================================ one file: parsing */

/* Shared context while a file is being opened, so messages can name it. */
typedef struct {
    const char *path;
    ts_io_error *err;
} st_parse;

static ts_status parse_metadata(st_parse *p, ts_st_file *f, json_t *obj) {
    if (!json_is_object(obj))
        return ts_io_set_error(p->err, TS_ERR_FORMAT, "%s: \"__metadata__\" is not an object of strings",
                               p->path);
    f->metadata = calloc(json_object_size(obj) + 1, sizeof *f->metadata);
    if (!f->metadata) return ts_io_set_error(p->err, TS_ERR_OOM, "%s: out of memory", p->path);
    const char *key;
    json_t *value;
    json_object_foreach(obj, key, value) {
        if (!json_is_string(value))
            return ts_io_set_error(p->err, TS_ERR_FORMAT,
                                   "%s: metadata entry '%s' is not a string (metadata must map "
                                   "strings to strings)",
                                   p->path, key);
        st_kv *kv = &f->metadata[f->n_metadata];
        kv->key = strdup(key);
        kv->value = strdup(json_string_value(value));
        f->n_metadata++; /* counted before checking, so close frees a half-made entry */
        if (!kv->key || !kv->value) return ts_io_set_error(p->err, TS_ERR_OOM, "%s: out of memory", p->path);
    }
    qsort(f->metadata, f->n_metadata, sizeof *f->metadata, cmp_kv_key);
    return TS_OK;
}

/* Reads a JSON array of non-negative integers (at most max_len of them) into out. */
static bool json_int_array(json_t *arr, int64_t *out, size_t max_len, size_t *len) {
    if (!json_is_array(arr) || json_array_size(arr) > max_len) return false;
    for (size_t i = 0; i < json_array_size(arr); i++) {
        json_t *v = json_array_get(arr, i);
        if (!json_is_integer(v) || json_integer_value(v) < 0) return false;
        out[i] = (int64_t)json_integer_value(v);
    }
    *len = json_array_size(arr);
    return true;
}

/* One header entry -> t (name, dtype, shape, numel, nbytes) and its raw data offsets. */
static ts_status parse_tensor_entry(st_parse *p, const char *name, json_t *entry, ts_st_tensor *t,
                                    uint64_t offsets[2]) {
    if (!json_is_object(entry))
        return ts_io_set_error(p->err, TS_ERR_FORMAT, "%s: tensor '%s': header entry is not an object",
                               p->path, name);
    json_t *dtype = json_object_get(entry, "dtype");
    if (!json_is_string(dtype))
        return ts_io_set_error(p->err, TS_ERR_FORMAT, "%s: tensor '%s': missing \"dtype\" string", p->path,
                               name);
    if (ts_st_dtype_from_name(json_string_value(dtype), &t->dtype) != TS_OK)
        return ts_io_set_error(p->err, TS_ERR_FORMAT, "%s: tensor '%s': unknown dtype \"%s\"", p->path, name,
                               json_string_value(dtype));

    json_t *shape = json_object_get(entry, "shape");
    size_t ndim;
    if (json_is_array(shape) && json_array_size(shape) > TS_ST_MAX_DIMS)
        return ts_io_set_error(p->err, TS_ERR_UNSUPPORTED,
                               "%s: tensor '%s' has %zu dims; at most %d are supported", p->path, name,
                               json_array_size(shape), TS_ST_MAX_DIMS);
    if (!json_int_array(shape, t->shape, TS_ST_MAX_DIMS, &ndim))
        return ts_io_set_error(p->err, TS_ERR_FORMAT,
                               "%s: tensor '%s': \"shape\" must be an array of non-negative integers",
                               p->path, name);
    t->ndim = (int)ndim;

    int64_t off[2];
    size_t n_off;
    if (!json_int_array(json_object_get(entry, "data_offsets"), off, 2, &n_off) || n_off != 2)
        return ts_io_set_error(p->err, TS_ERR_FORMAT,
                               "%s: tensor '%s': \"data_offsets\" must be [begin, end] with "
                               "non-negative integers",
                               p->path, name);
    offsets[0] = (uint64_t)off[0];
    offsets[1] = (uint64_t)off[1];

    uint64_t need;
    char sh[160];
    if (!shape_numel(t->ndim, t->shape, &t->numel) || !st_bytes_for(t->dtype, t->numel, &need))
        return ts_io_set_error(p->err, TS_ERR_FORMAT,
                               "%s: tensor '%s': %s %s is not a whole number of bytes that fits in 64 bits",
                               p->path, name, ts_st_dtype_name(t->dtype),
                               format_shape(sh, sizeof sh, t->ndim, t->shape));
    if (offsets[1] < offsets[0])
        return ts_io_set_error(p->err, TS_ERR_FORMAT,
                               "%s: tensor '%s': data_offsets [%llu, %llu] end before they begin", p->path,
                               name, (unsigned long long)offsets[0], (unsigned long long)offsets[1]);
    if (offsets[1] - offsets[0] != need)
        return ts_io_set_error(
            p->err, TS_ERR_FORMAT,
            "%s: tensor '%s': data_offsets [%llu, %llu] hold %llu bytes but %s %s needs %llu", p->path, name,
            (unsigned long long)offsets[0], (unsigned long long)offsets[1],
            (unsigned long long)(offsets[1] - offsets[0]), ts_st_dtype_name(t->dtype),
            format_shape(sh, sizeof sh, t->ndim, t->shape), (unsigned long long)need);
    t->nbytes = (size_t)need;
    t->name = strdup(name);
    if (!t->name) return ts_io_set_error(p->err, TS_ERR_OOM, "%s: out of memory", p->path);
    return TS_OK;
}

typedef struct {
    uint64_t begin, end;
    size_t tensor;
} st_span;

static int cmp_span(const void *a, const void *b) {
    const st_span *x = a, *y = b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end) return x->end < y->end ? -1 : 1;
    return 0;
}

/* The reference rule: sorted by offset, the tensors tile the data area exactly. Each failure
 * names the tensor where the tiling breaks. */
static ts_status check_layout(st_parse *p, ts_st_file *f, st_span *spans, uint64_t data_size) {
    qsort(spans, f->n_tensors, sizeof *spans, cmp_span);
    uint64_t expected_begin = 0;
    const char *prev = NULL;
    for (size_t i = 0; i < f->n_tensors; i++) {
        const st_span *s = &spans[i];
        const char *name = f->tensors[s->tensor].name;
        if (s->end > data_size)
            return ts_io_set_error(p->err, TS_ERR_FORMAT,
                                   "%s: truncated: tensor '%s' occupies bytes [%llu, %llu) of the data "
                                   "area but the file holds only %llu bytes after its header",
                                   p->path, name, (unsigned long long)s->begin, (unsigned long long)s->end,
                                   (unsigned long long)data_size);
        if (s->begin < expected_begin)
            return ts_io_set_error(p->err, TS_ERR_FORMAT,
                                   "%s: tensor '%s' at data_offsets [%llu, %llu] overlaps tensor '%s', "
                                   "which ends at %llu",
                                   p->path, name, (unsigned long long)s->begin, (unsigned long long)s->end,
                                   prev, (unsigned long long)expected_begin);
        if (s->begin > expected_begin)
            return ts_io_set_error(p->err, TS_ERR_FORMAT,
                                   "%s: gap of %llu unused bytes before tensor '%s' (data_offsets [%llu, "
                                   "%llu]); safetensors requires tensors to be contiguous",
                                   p->path, (unsigned long long)(s->begin - expected_begin), name,
                                   (unsigned long long)s->begin, (unsigned long long)s->end);
        expected_begin = s->end;
        prev = name;
    }
    if (expected_begin != data_size)
        return ts_io_set_error(p->err, TS_ERR_FORMAT,
                               "%s: %llu bytes after the last tensor (tensors end at byte %llu of a "
                               "%llu-byte data area)",
                               p->path, (unsigned long long)(data_size - expected_begin),
                               (unsigned long long)expected_begin, (unsigned long long)data_size);
    return TS_OK;
}

/* Fills f->tensors from the parsed header and points each at its bytes. */
static ts_status parse_header(st_parse *p, ts_st_file *f, json_t *root, const uint8_t *data,
                              uint64_t data_size) {
    size_t n_entries = json_object_size(root);
    f->tensors = calloc(n_entries + 1, sizeof *f->tensors);
    st_span *spans = calloc(n_entries + 1, sizeof *spans);
    if (!f->tensors || !spans) {
        free(spans);
        return ts_io_set_error(p->err, TS_ERR_OOM, "%s: out of memory for %zu tensors", p->path, n_entries);
    }
    ts_status s = TS_OK;
    const char *key;
    json_t *value;
    json_object_foreach(root, key, value) {
        if (strcmp(key, ST_METADATA_KEY) == 0) {
            s = parse_metadata(p, f, value);
        } else {
            ts_st_tensor *t = &f->tensors[f->n_tensors];
            uint64_t off[2] = {0, 0};
            s = parse_tensor_entry(p, key, value, t, off);
            if (s == TS_OK) {
                spans[f->n_tensors] = (st_span){off[0], off[1], f->n_tensors};
                t->data = data + off[0]; /* in range: check_layout verifies off[1] <= data_size */
                t->file = f->path;
                f->n_tensors++;
            }
        }
        if (s != TS_OK) break;
    }
    if (s == TS_OK) s = check_layout(p, f, spans, data_size);
    free(spans);
    if (s != TS_OK) return s;
    qsort(f->tensors, f->n_tensors, sizeof *f->tensors, cmp_tensor_name);
    for (size_t i = 1; i < f->n_tensors; i++) /* jansson already rejects duplicate keys */
        if (strcmp(f->tensors[i - 1].name, f->tensors[i].name) == 0)
            return ts_io_set_error(p->err, TS_ERR_FORMAT, "%s: tensor '%s' appears twice in the header",
                                   p->path, f->tensors[i].name);
    return TS_OK;
}

static uint64_t read_u64_le(const uint8_t *b) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | b[i];
    return v;
}

/* Maps the whole file read-only into f->map. */
static ts_status map_file(st_parse *p, ts_st_file *f) {
    int fd = open(p->path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return ts_io_set_error(p->err, TS_ERR_IO, "%s: cannot open: %s", p->path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return ts_io_set_error(p->err, TS_ERR_IO, "%s: not a regular file", p->path);
    }
    if (st.st_size < 8) {
        close(fd);
        return ts_io_set_error(p->err, TS_ERR_FORMAT,
                               "%s: truncated: %lld bytes, shorter than the 8-byte header length", p->path,
                               (long long)st.st_size);
    }
    void *map = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    int e = errno;
    close(fd); /* the mapping keeps the file alive */
    if (map == MAP_FAILED)
        return ts_io_set_error(p->err, TS_ERR_IO, "%s: mmap failed: %s", p->path, strerror(e));
    f->map = map;
    f->map_size = (size_t)st.st_size;
    return TS_OK;
}

/* Checks the header length against the file and parses the JSON it frames. */
static ts_status load_header_json(st_parse *p, const ts_st_file *f, uint64_t *header_len, json_t **root) {
    const uint8_t *bytes = f->map;
    uint64_t n = read_u64_le(bytes);
    if (n > f->map_size - 8)
        return ts_io_set_error(p->err, TS_ERR_FORMAT,
                               "%s: header length %llu exceeds the %llu bytes after the length field "
                               "(file truncated or not safetensors)",
                               p->path, (unsigned long long)n, (unsigned long long)(f->map_size - 8));
    if (n > ST_MAX_HEADER_BYTES)
        return ts_io_set_error(p->err, TS_ERR_FORMAT, "%s: header length %llu exceeds the %llu-byte limit",
                               p->path, (unsigned long long)n, ST_MAX_HEADER_BYTES);
    if (n == 0 || bytes[8] != '{')
        return ts_io_set_error(p->err, TS_ERR_FORMAT,
                               "%s: header is not a JSON object (it must start with '{')", p->path);
    json_error_t jerr;
    *root = json_loadb((const char *)bytes + 8, (size_t)n, JSON_REJECT_DUPLICATES, &jerr);
    if (!*root)
        return ts_io_set_error(p->err, TS_ERR_FORMAT,
                               "%s: header is not valid JSON: %s (at byte %d of the header)", p->path,
                               jerr.text, jerr.position);
    if (!json_is_object(*root)) {
        json_decref(*root);
        *root = NULL;
        return ts_io_set_error(p->err, TS_ERR_FORMAT, "%s: header is not a JSON object", p->path);
    }
    *header_len = n;
    return TS_OK;
}

ts_status ts_st_file_open(const char *path, ts_st_file **out, ts_io_error *err) {
    if (!path || !out)
        return ts_io_set_error(err, TS_ERR_INVALID_ARG, "safetensors open: path and out are required");
    *out = NULL;
    st_parse p = {path, err};
    ts_st_file *f = calloc(1, sizeof *f);
    if (!f || !(f->path = strdup(path))) {
        free(f);
        return ts_io_set_error(err, TS_ERR_OOM, "%s: out of memory", path);
    }
    uint64_t header_len = 0;
    json_t *root = NULL;
    ts_status s = map_file(&p, f);
    if (s == TS_OK) s = load_header_json(&p, f, &header_len, &root);
    if (s == TS_OK) {
        const uint8_t *data = (const uint8_t *)f->map + 8 + header_len;
        s = parse_header(&p, f, root, data, f->map_size - 8 - header_len);
    }
    json_decref(root);
    if (s != TS_OK) {
        ts_st_file_close(f);
        return s;
    }
    *out = f;
    return TS_OK;
}

/* ================================================================ checkpoints */

typedef struct {
    char *path;
    ts_st_file *file; /* NULL until first needed */
} ck_shard;

typedef struct {
    char *name;
    size_t shard;
} ck_entry;

struct ts_checkpoint {
    char *path; /* what the caller opened, for messages */
    ck_shard *shards;
    size_t n_shards;
    ck_entry *entries; /* sorted by name */
    size_t n_entries;
    pthread_mutex_t lock; /* guards lazy shard opening */
};

void ts_checkpoint_close(ts_checkpoint *ck) {
    if (!ck) return;
    for (size_t i = 0; i < ck->n_shards; i++) {
        ts_st_file_close(ck->shards[i].file);
        free(ck->shards[i].path);
    }
    for (size_t i = 0; i < ck->n_entries; i++) free(ck->entries[i].name);
    free(ck->shards);
    free(ck->entries);
    pthread_mutex_destroy(&ck->lock);
    free(ck->path);
    free(ck);
}

size_t ts_checkpoint_count(const ts_checkpoint *ck) { return ck->n_entries; }
size_t ts_checkpoint_shard_count(const ts_checkpoint *ck) { return ck->n_shards; }

const char *ts_checkpoint_name(const ts_checkpoint *ck, size_t i) {
    return i < ck->n_entries ? ck->entries[i].name : NULL;
}

static int cmp_entry_name(const void *a, const void *b) {
    return strcmp(((const ck_entry *)a)->name, ((const ck_entry *)b)->name);
}

static const ck_entry *find_entry(const ts_checkpoint *ck, const char *name) {
    if (!name) return NULL;
    ck_entry key = {.name = (char *)name};
    return bsearch(&key, ck->entries, ck->n_entries, sizeof key, cmp_entry_name);
}

bool ts_checkpoint_has(const ts_checkpoint *ck, const char *name) { return find_entry(ck, name) != NULL; }

ts_status ts_checkpoint_get(ts_checkpoint *ck, const char *name, const ts_st_tensor **out, ts_io_error *err) {
    if (!ck || !name || !out)
        return ts_io_set_error(err, TS_ERR_INVALID_ARG, "checkpoint get: NULL argument");
    *out = NULL;
    const ck_entry *e = find_entry(ck, name);
    if (!e) return ts_io_set_error(err, TS_ERR_FORMAT, "checkpoint %s has no tensor '%s'", ck->path, name);
    ck_shard *shard = &ck->shards[e->shard];
    ts_status s = TS_OK;
    pthread_mutex_lock(&ck->lock);
    if (!shard->file) s = ts_st_file_open(shard->path, &shard->file, err);
    pthread_mutex_unlock(&ck->lock);
    if (s != TS_OK) return s;
    const ts_st_tensor *t = ts_st_file_find(shard->file, name);
    if (!t)
        return ts_io_set_error(
            err, TS_ERR_FORMAT,
            "checkpoint %s: the index maps tensor '%s' to shard %s, which has no such tensor", ck->path, name,
            shard->path);
    *out = t;
    return TS_OK;
}

static ts_status ck_new(const char *path, ts_checkpoint **out, ts_io_error *err) {
    ts_checkpoint *ck = calloc(1, sizeof *ck);
    if (!ck || !(ck->path = strdup(path))) {
        free(ck);
        return ts_io_set_error(err, TS_ERR_OOM, "%s: out of memory", path);
    }
    pthread_mutex_init(&ck->lock, NULL);
    *out = ck;
    return TS_OK;
}

static char *join_path(const char *dir, const char *name) {
    size_t n = strlen(dir) + strlen(name) + 2;
    char *p = malloc(n);
    if (p) snprintf(p, n, "%s/%s", dir, name);
    return p;
}

/* Directory part of path ("." when none); caller frees. */
static char *dir_of(const char *path) {
    const char *slash = strrchr(path, '/');
    if (!slash) return strdup(".");
    if (slash == path) return strdup("/");
    return strndup(path, (size_t)(slash - path));
}

/* Adds already-open shard files and all their names; a name in two shards is an error. */
static ts_status ck_add_open_shards(ts_checkpoint *ck, ts_st_file **files, size_t n_files, ts_io_error *err) {
    size_t total = 0;
    for (size_t i = 0; i < n_files; i++) total += ts_st_file_count(files[i]);
    ck->shards = calloc(n_files + 1, sizeof *ck->shards);
    ck->entries = calloc(total + 1, sizeof *ck->entries);
    if (!ck->shards || !ck->entries) return ts_io_set_error(err, TS_ERR_OOM, "%s: out of memory", ck->path);
    for (size_t i = 0; i < n_files; i++) {
        ck->shards[i].file = files[i];
        files[i] = NULL; /* owned by ck now */
        ck->n_shards++;
        if (!(ck->shards[i].path = strdup(ts_st_file_path(ck->shards[i].file))))
            return ts_io_set_error(err, TS_ERR_OOM, "%s: out of memory", ck->path);
        for (size_t k = 0; k < ts_st_file_count(ck->shards[i].file); k++) {
            ck_entry *e = &ck->entries[ck->n_entries];
            if (!(e->name = strdup(ts_st_file_tensor(ck->shards[i].file, k)->name)))
                return ts_io_set_error(err, TS_ERR_OOM, "%s: out of memory", ck->path);
            e->shard = i;
            ck->n_entries++;
        }
    }
    qsort(ck->entries, ck->n_entries, sizeof *ck->entries, cmp_entry_name);
    for (size_t i = 1; i < ck->n_entries; i++)
        if (strcmp(ck->entries[i - 1].name, ck->entries[i].name) == 0)
            return ts_io_set_error(err, TS_ERR_FORMAT, "checkpoint %s: tensor '%s' is in both %s and %s",
                                   ck->path, ck->entries[i].name, ck->shards[ck->entries[i - 1].shard].path,
                                   ck->shards[ck->entries[i].shard].path);
    return TS_OK;
}

/* Opens each path (eagerly) and adds it as a shard. */
static ts_status ck_open_files(ts_checkpoint *ck, char **paths, size_t n, ts_io_error *err) {
    ts_st_file **files = calloc(n + 1, sizeof *files);
    if (!files) return ts_io_set_error(err, TS_ERR_OOM, "%s: out of memory", ck->path);
    ts_status s = TS_OK;
    for (size_t i = 0; i < n && s == TS_OK; i++) s = ts_st_file_open(paths[i], &files[i], err);
    if (s == TS_OK) s = ck_add_open_shards(ck, files, n, err);
    for (size_t i = 0; i < n; i++) ts_st_file_close(files[i]); /* those not handed over */
    free(files);
    return s;
}

/* ---------------------------------------------------------------- index.json */

/* Shard names come from a file we did not write: keep them inside the checkpoint directory. */
static bool shard_name_safe(const char *name) {
    if (!*name || name[0] == '/') return false;
    for (const char *p = name; *p;) {
        const char *end = strchr(p, '/');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        if (len == 2 && p[0] == '.' && p[1] == '.') return false;
        p += len + (end ? 1 : 0);
    }
    return true;
}

static int cmp_str_ptr(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static ts_status read_small_file(const char *path, char **out, size_t *len, ts_io_error *err) {
    FILE *fp = fopen(path, "rb");
    if (!fp) return ts_io_set_error(err, TS_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    while (buf) {
        n += fread(buf + n, 1, cap - n, fp);
        if (n < cap) break;
        char *bigger = realloc(buf, cap * 2);
        if (!bigger) {
            free(buf);
            buf = NULL;
            break;
        }
        buf = bigger;
        cap *= 2;
    }
    bool failed = ferror(fp);
    fclose(fp);
    if (!buf) return ts_io_set_error(err, TS_ERR_OOM, "%s: out of memory reading it", path);
    if (failed) {
        free(buf);
        return ts_io_set_error(err, TS_ERR_IO, "%s: read error", path);
    }
    *out = buf;
    *len = n;
    return TS_OK;
}

/* Sorted, de-duplicated copy of the shard names in names[0..n) (which it sorts). */
static size_t unique_sorted(const char **names, size_t n) {
    qsort(names, n, sizeof *names, cmp_str_ptr);
    size_t u = 0;
    for (size_t i = 0; i < n; i++)
        if (u == 0 || strcmp(names[i], names[u - 1]) != 0) names[u++] = names[i];
    return u;
}

/* The distinct shard file names of weight_map, sorted, become ck->shards (paths resolved
 * against dir); each entry records the position of its shard. */
static ts_status ck_build_from_weight_map(ts_checkpoint *ck, const char *dir, json_t *weight_map,
                                          ts_io_error *err) {
    size_t n = json_object_size(weight_map), n_unique = 0;
    const char **names = calloc(n + 1, sizeof *names);
    ck->entries = calloc(n + 1, sizeof *ck->entries);
    ck->shards = calloc(n + 1, sizeof *ck->shards);
    if (!names || !ck->entries || !ck->shards) {
        free(names);
        return ts_io_set_error(err, TS_ERR_OOM, "%s: out of memory", ck->path);
    }
    ts_status s = TS_OK;
    const char *key;
    json_t *value;
    size_t i = 0;
    json_object_foreach(weight_map, key, value) {
        if (!json_is_string(value) || !shard_name_safe(json_string_value(value))) {
            s = ts_io_set_error(
                err, TS_ERR_FORMAT,
                "%s: weight_map entry for '%s' must be a shard file name relative to the index", ck->path,
                key);
            break;
        }
        names[i++] = json_string_value(value);
    }
    if (s == TS_OK) n_unique = unique_sorted(names, n);
    for (i = 0; i < n_unique && s == TS_OK; i++) {
        if (!(ck->shards[i].path = join_path(dir, names[i])))
            s = ts_io_set_error(err, TS_ERR_OOM, "%s: out of memory", ck->path);
        else
            ck->n_shards++;
    }
    if (s == TS_OK) json_object_foreach(weight_map, key, value) {
            const char *shard = json_string_value(value);
            const char **hit = bsearch(&shard, names, n_unique, sizeof *names, cmp_str_ptr);
            ck_entry *e = &ck->entries[ck->n_entries];
            if (!(e->name = strdup(key))) {
                s = ts_io_set_error(err, TS_ERR_OOM, "%s: out of memory", ck->path);
                break;
            }
            e->shard = (size_t)(hit - names);
            ck->n_entries++;
        }
    free(names);
    if (s == TS_OK) qsort(ck->entries, ck->n_entries, sizeof *ck->entries, cmp_entry_name);
    return s;
}

/* Every shard must exist now, so a missing one is reported at open, not mid-load. */
static ts_status ck_check_shards_exist(const ts_checkpoint *ck, ts_io_error *err) {
    for (size_t i = 0; i < ck->n_shards; i++) {
        struct stat st;
        if (stat(ck->shards[i].path, &st) == 0) continue;
        int e = errno;
        const char *example = "?";
        size_t count = 0;
        for (size_t k = 0; k < ck->n_entries; k++) {
            if (ck->entries[k].shard != i) continue;
            if (count++ == 0) example = ck->entries[k].name;
        }
        return ts_io_set_error(err, TS_ERR_IO,
                               "checkpoint %s: shard %s (holding %zu tensors, e.g. '%s') is missing: %s",
                               ck->path, ck->shards[i].path, count, example, strerror(e));
    }
    return TS_OK;
}

static ts_status ck_open_index(ts_checkpoint *ck, const char *index_path, ts_io_error *err) {
    char *text = NULL;
    size_t len = 0;
    ts_status s = read_small_file(index_path, &text, &len, err);
    if (s != TS_OK) return s;
    json_error_t jerr;
    json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
    free(text);
    if (!root)
        return ts_io_set_error(err, TS_ERR_FORMAT, "%s: not valid JSON: %s (line %d, column %d)", index_path,
                               jerr.text, jerr.line, jerr.column);
    json_t *weight_map = json_object_get(root, "weight_map");
    if (!json_is_object(weight_map)) {
        s = ts_io_set_error(err, TS_ERR_FORMAT, "%s: no \"weight_map\" object", index_path);
    } else {
        char *dir = dir_of(index_path);
        s = dir ? ck_build_from_weight_map(ck, dir, weight_map, err)
                : ts_io_set_error(err, TS_ERR_OOM, "%s: out of memory", index_path);
        free(dir);
    }
    json_decref(root);
    if (s == TS_OK) s = ck_check_shards_exist(ck, err);
    return s;
}

/* ---------------------------------------------------------------- directories */

static bool is_regular_file(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

static bool ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcmp(s + n - m, suffix) == 0;
}

static void free_strings(char **v, size_t n) {
    for (size_t i = 0; i < n; i++) free(v[i]);
    free(v);
}

/* A directory without an index: every *.safetensors file in it, in name order. */
static ts_status ck_open_all_in_dir(ts_checkpoint *ck, const char *dir, ts_io_error *err) {
    DIR *d = opendir(dir);
    if (!d) return ts_io_set_error(err, TS_ERR_IO, "%s: cannot list directory: %s", dir, strerror(errno));
    char **paths = NULL;
    size_t n = 0, cap = 0;
    ts_status s = TS_OK;
    struct dirent *de;
    while (s == TS_OK && (de = readdir(d)) != NULL) {
        if (!ends_with(de->d_name, ".safetensors")) continue;
        if (n == cap) {
            cap = cap ? cap * 2 : 8;
            char **bigger = realloc(paths, cap * sizeof *paths);
            if (!bigger) {
                s = ts_io_set_error(err, TS_ERR_OOM, "%s: out of memory", dir);
                break;
            }
            paths = bigger;
        }
        if (!(paths[n] = join_path(dir, de->d_name)))
            s = ts_io_set_error(err, TS_ERR_OOM, "%s: out of memory", dir);
        else
            n++;
    }
    closedir(d);
    if (s == TS_OK && n == 0)
        s = ts_io_set_error(err, TS_ERR_IO, "%s: no %s, no %s and no .safetensors files", dir,
                            INDEX_FILE_NAME, SINGLE_FILE_NAME);
    if (s == TS_OK) {
        qsort(paths, n, sizeof *paths, cmp_str_ptr);
        s = ck_open_files(ck, paths, n, err);
    }
    free_strings(paths, n);
    return s;
}

static ts_status ck_open_dir(ts_checkpoint *ck, const char *dir, ts_io_error *err) {
    char *index = join_path(dir, INDEX_FILE_NAME);
    char *single = join_path(dir, SINGLE_FILE_NAME);
    ts_status s;
    if (!index || !single)
        s = ts_io_set_error(err, TS_ERR_OOM, "%s: out of memory", dir);
    else if (is_regular_file(index))
        s = ck_open_index(ck, index, err);
    else if (is_regular_file(single))
        s = ck_open_files(ck, &single, 1, err);
    else
        s = ck_open_all_in_dir(ck, dir, err);
    free(index);
    free(single);
    return s;
}

ts_status ts_checkpoint_open(const char *path, ts_checkpoint **out, ts_io_error *err) {
    if (!path || !out)
        return ts_io_set_error(err, TS_ERR_INVALID_ARG, "checkpoint open: path and out are required");
    *out = NULL;
    struct stat st;
    if (stat(path, &st) != 0) return ts_io_set_error(err, TS_ERR_IO, "%s: %s", path, strerror(errno));
    ts_checkpoint *ck = NULL;
    ts_status s = ck_new(path, &ck, err);
    if (s != TS_OK) return s;
    char *one = (char *)path;
    if (S_ISDIR(st.st_mode))
        s = ck_open_dir(ck, path, err);
    else if (ends_with(path, ".json"))
        s = ck_open_index(ck, path, err);
    else
        s = ck_open_files(ck, &one, 1, err);
    if (s != TS_OK) {
        ts_checkpoint_close(ck);
        return s;
    }
    *out = ck;
    return TS_OK;
}

/* ================================================================ loading with conversion */

/* Where a load request stands; every message names the tensor. */
typedef struct {
    ts_checkpoint *ck;
    const char *name;
    int ndim;
    const int64_t *shape;
    int64_t numel;
    ts_dtype target;
    void *out;
    ts_io_error *err;
} load_req;

static bool same_shape(int ndim, const int64_t *a, int ndim_b, const int64_t *b) {
    if (ndim != ndim_b) return false;
    for (int d = 0; d < ndim; d++)
        if (a[d] != b[d]) return false;
    return true;
}

static ts_status shape_error(const load_req *r, const ts_st_tensor *t, const char *what, int ndim,
                             const int64_t *expected) {
    char want[160], got[160];
    return ts_io_set_error(r->err, TS_ERR_SHAPE, "%s: tensor '%s'%s: expected shape %s, found %s %s", t->file,
                           t->name, what, format_shape(want, sizeof want, ndim, expected),
                           ts_st_dtype_name(t->dtype), format_shape(got, sizeof got, t->ndim, t->shape));
}

/* The data as a pointer aligned for `align`-byte elements: the mapping itself when it is,
 * else a copy (*owned, to free). Files from foreign writers need not align tensors. */
static ts_status aligned_data(const load_req *r, const ts_st_tensor *t, size_t align, const void **data,
                              void **owned) {
    *owned = NULL;
    *data = t->data;
    if (align <= 1 || ((uintptr_t)t->data % align) == 0) return TS_OK;
    void *copy = malloc(t->nbytes ? t->nbytes : 1);
    if (!copy) return ts_io_set_error(r->err, TS_ERR_OOM, "tensor '%s': out of memory", t->name);
    memcpy(copy, t->data, t->nbytes);
    *owned = copy;
    *data = copy;
    return TS_OK;
}

static bool target_is_float(ts_dtype t) { return t == TS_F32 || t == TS_BF16 || t == TS_F16; }
static bool target_is_int(ts_dtype t) { return t == TS_I32 || t == TS_I64; }

/* A same-shape tensor converted element by element. */
static ts_status load_plain(const load_req *r, const ts_st_tensor *t) {
    ts_dtype src = TS_F32;
    bool convertible = ts_st_dtype_to_dtype(t->dtype, &src);
    bool src_float = convertible &&
                     (src == TS_F32 || src == TS_F64 || src == TS_F16 || src == TS_BF16 || src == TS_F8_E5M2);
    bool src_int = convertible && (src == TS_I8 || src == TS_I32 || src == TS_I64);
    if (!(target_is_float(r->target) ? src_float : src_int))
        return ts_io_set_error(r->err, TS_ERR_DTYPE, "%s: tensor '%s' is %s, which cannot be loaded as %s",
                               t->file, t->name, ts_st_dtype_name(t->dtype), ts_dtype_name(r->target));
    if (!same_shape(r->ndim, r->shape, t->ndim, t->shape)) return shape_error(r, t, "", r->ndim, r->shape);
    const void *data;
    void *owned;
    ts_status s = aligned_data(r, t, (size_t)ts_st_dtype_bits(t->dtype) / 8, &data, &owned);
    if (s != TS_OK) return s;
    s = ts_convert(r->out, r->target, data, src, r->numel);
    free(owned);
    if (s != TS_OK)
        return ts_io_set_error(r->err, s, "%s: tensor '%s': converting %s to %s failed", t->file, t->name,
                               ts_st_dtype_name(t->dtype), ts_dtype_name(r->target));
    return TS_OK;
}

/* "X.weight" -> "X.<suffix>"; another name N -> "N.<suffix>". Caller frees. */
static char *sibling_name(const char *name, const char *suffix) {
    size_t n = strlen(name);
    if (ends_with(name, ".weight")) n -= strlen(".weight");
    size_t room = n + strlen(suffix) + 2;
    char *s = malloc(room);
    if (s) snprintf(s, room, "%.*s.%s", (int)n, name, suffix);
    return s;
}

/* Finds the scale tensor of a quantised weight ("X.scale", else "X.weight_scale_inv"). */
static ts_status find_scale(const load_req *r, const ts_st_tensor *t, const ts_st_tensor **scale) {
    static const char *const suffixes[] = {"scale", "weight_scale_inv"};
    char *first = NULL;
    for (size_t i = 0; i < sizeof suffixes / sizeof suffixes[0]; i++) {
        char *candidate = sibling_name(t->name, suffixes[i]);
        if (!candidate) {
            free(first);
            return ts_io_set_error(r->err, TS_ERR_OOM, "tensor '%s': out of memory", t->name);
        }
        if (ts_checkpoint_has(r->ck, candidate)) {
            ts_status s = ts_checkpoint_get(r->ck, candidate, scale, r->err);
            free(candidate);
            free(first);
            return s;
        }
        if (!first)
            first = candidate;
        else
            free(candidate);
    }
    ts_status s =
        ts_io_set_error(r->err, TS_ERR_FORMAT, "%s: tensor '%s' is %s but its scale '%s' is missing", t->file,
                        t->name, ts_st_dtype_name(t->dtype), first ? first : "?");
    free(first);
    return s;
}

/* Runs a dequantiser that writes f32 or bf16; for f16 it goes through an f32 buffer. */
typedef void (*dequant_fn)(const void *ctx, float *out_f32, uint16_t *out_bf16);

static ts_status run_dequant(const load_req *r, dequant_fn fn, const void *ctx) {
    if (r->target == TS_F32) {
        fn(ctx, r->out, NULL);
    } else if (r->target == TS_BF16) {
        fn(ctx, NULL, r->out);
    } else {
        float *tmp = malloc((size_t)(r->numel ? r->numel : 1) * sizeof *tmp);
        if (!tmp) return ts_io_set_error(r->err, TS_ERR_OOM, "tensor '%s': out of memory", r->name);
        fn(ctx, tmp, NULL);
        ts_status s = ts_convert(r->out, r->target, tmp, TS_F32, r->numel);
        free(tmp);
        if (s != TS_OK)
            return ts_io_set_error(r->err, s, "tensor '%s': conversion to %s failed", r->name,
                                   ts_dtype_name(r->target));
    }
    return TS_OK;
}

typedef struct {
    const uint8_t *w;
    int64_t rows, cols;
    const uint8_t *scale_e8m0;
    const float *scale_f32;
} fp8_job;

enum { FP8_BLOCK = 128 };

static void fp8_job_run(const void *ctx, float *out_f32, uint16_t *out_bf16) {
    const fp8_job *j = ctx;
    if (j->scale_f32) {
        if (out_f32) {
            ts_dequant_fp8_block_f32scale(j->w, j->rows, j->cols, j->scale_f32, FP8_BLOCK, FP8_BLOCK,
                                          out_f32);
        } else { /* bf16 from an f32 scale: dequantise row by row through a small buffer */
            float row[FP8_BLOCK];
            int64_t scale_cols = (j->cols + FP8_BLOCK - 1) / FP8_BLOCK;
            for (int64_t r = 0; r < j->rows; r++)
                for (int64_t c0 = 0; c0 < j->cols; c0 += FP8_BLOCK) {
                    int64_t width = j->cols - c0 < FP8_BLOCK ? j->cols - c0 : FP8_BLOCK;
                    float s = j->scale_f32[(r / FP8_BLOCK) * scale_cols + c0 / FP8_BLOCK];
                    ts_dequant_fp8_block_f32scale(j->w + r * j->cols + c0, 1, width, &s, 1, FP8_BLOCK, row);
                    for (int64_t c = 0; c < width; c++)
                        out_bf16[r * j->cols + c0 + c] = ts_f32_to_bf16(row[c]);
                }
        }
    } else if (out_f32) {
        ts_dequant_fp8_block(j->w, j->rows, j->cols, j->scale_e8m0, FP8_BLOCK, FP8_BLOCK, out_f32);
    } else {
        ts_dequant_fp8_block_bf16(j->w, j->rows, j->cols, j->scale_e8m0, FP8_BLOCK, FP8_BLOCK, out_bf16);
    }
}

static ts_status load_fp8(const load_req *r, const ts_st_tensor *t) {
    if (r->ndim != 2) return shape_error(r, t, " (FP8 block-scaled weights are 2-D)", r->ndim, r->shape);
    if (!same_shape(r->ndim, r->shape, t->ndim, t->shape)) return shape_error(r, t, "", r->ndim, r->shape);
    const ts_st_tensor *scale;
    ts_status s = find_scale(r, t, &scale);
    if (s != TS_OK) return s;
    if (scale->dtype != TS_ST_F8_E8M0 && scale->dtype != TS_ST_F32)
        return ts_io_set_error(r->err, TS_ERR_DTYPE,
                               "%s: scale '%s' of '%s' is %s; expected F8_E8M0 (or F32)", scale->file,
                               scale->name, t->name, ts_st_dtype_name(scale->dtype));
    int64_t want[2] = {(t->shape[0] + FP8_BLOCK - 1) / FP8_BLOCK, (t->shape[1] + FP8_BLOCK - 1) / FP8_BLOCK};
    if (!same_shape(2, want, scale->ndim, scale->shape))
        return shape_error(r, scale, " (one scale per 128x128 block)", 2, want);
    const void *scale_data;
    void *owned;
    s = aligned_data(r, scale, scale->dtype == TS_ST_F32 ? sizeof(float) : 1, &scale_data, &owned);
    if (s != TS_OK) return s;
    fp8_job job = {t->data, t->shape[0], t->shape[1], NULL, NULL};
    if (scale->dtype == TS_ST_F32)
        job.scale_f32 = scale_data;
    else
        job.scale_e8m0 = scale_data;
    s = run_dequant(r, fp8_job_run, &job);
    free(owned);
    return s;
}

typedef struct {
    const uint8_t *packed;
    int64_t rows, cols;
    const uint8_t *scale;
} mxfp4_job;

static void mxfp4_job_run(const void *ctx, float *out_f32, uint16_t *out_bf16) {
    const mxfp4_job *j = ctx;
    if (out_f32)
        ts_dequant_mxfp4(j->packed, j->rows, j->cols, j->scale, out_f32);
    else
        ts_dequant_mxfp4_bf16(j->packed, j->rows, j->cols, j->scale, out_bf16);
}

enum { MXFP4_GROUP = 32 };

static ts_status load_mxfp4(const load_req *r, const ts_st_tensor *t) {
    if (r->ndim != 2) return shape_error(r, t, " (packed FP4 weights are 2-D)", r->ndim, r->shape);
    int64_t rows = r->shape[0], cols = r->shape[1];
    /* I8 stores two codes per byte ([rows, cols/2]); F4 counts codes ([rows, cols]). */
    int64_t stored[2] = {rows, t->dtype == TS_ST_F4 ? cols : (cols + 1) / 2};
    if (!same_shape(2, stored, t->ndim, t->shape))
        return shape_error(r, t, " (packed FP4, two values per byte)", 2, stored);
    const ts_st_tensor *scale;
    ts_status s = find_scale(r, t, &scale);
    if (s != TS_OK) return s;
    if (scale->dtype != TS_ST_F8_E8M0)
        return ts_io_set_error(r->err, TS_ERR_DTYPE, "%s: scale '%s' of '%s' is %s; expected F8_E8M0",
                               scale->file, scale->name, t->name, ts_st_dtype_name(scale->dtype));
    int64_t want[2] = {rows, (cols + MXFP4_GROUP - 1) / MXFP4_GROUP};
    if (!same_shape(2, want, scale->ndim, scale->shape))
        return shape_error(r, scale, " (one scale per 32 inputs)", 2, want);
    mxfp4_job job = {t->data, rows, cols, scale->data};
    return run_dequant(r, mxfp4_job_run, &job);
}

ts_status ts_checkpoint_load(ts_checkpoint *ck, const char *name, int ndim, const int64_t *shape,
                             ts_dtype target, void *out, size_t out_bytes, ts_io_error *err) {
    if (!ck || !name || !out || ndim < 0 || ndim > TS_ST_MAX_DIMS || (ndim > 0 && !shape))
        return ts_io_set_error(err, TS_ERR_INVALID_ARG, "checkpoint load '%s': bad arguments",
                               name ? name : "?");
    if (!target_is_float(target) && !target_is_int(target))
        return ts_io_set_error(err, TS_ERR_DTYPE, "checkpoint load '%s': cannot load into %s", name,
                               ts_dtype_name(target));
    load_req r = {ck, name, ndim, shape, 0, target, out, err};
    if (!shape_numel(ndim, shape, &r.numel))
        return ts_io_set_error(err, TS_ERR_INVALID_ARG, "checkpoint load '%s': invalid expected shape", name);
    size_t need = ts_dtype_bytes(target, r.numel);
    if (out_bytes < need)
        return ts_io_set_error(err, TS_ERR_INVALID_ARG,
                               "checkpoint load '%s': %zu bytes of room, %s needs %zu", name, out_bytes,
                               ts_dtype_name(target), need);
    const ts_st_tensor *t;
    ts_status s = ts_checkpoint_get(ck, name, &t, err);
    if (s != TS_OK) return s;
    /* Quantised forms load only as floats; an I8 tensor loaded as float is packed MXFP4. */
    if (target_is_float(target) && t->dtype == TS_ST_F8_E4M3) return load_fp8(&r, t);
    if (target_is_float(target) && (t->dtype == TS_ST_I8 || t->dtype == TS_ST_F4)) return load_mxfp4(&r, t);
    return load_plain(&r, t);
}

/* ================================================================ writing */

/* Why a tensor given to the writer cannot be written, or NULL when it can. */
static const char *write_tensor_problem(const ts_st_write_tensor *t, uint64_t *need) {
    int64_t numel;
    if (!t->name || !*t->name || strcmp(t->name, ST_METADATA_KEY) == 0)
        return "the name must be non-empty and not \"__metadata__\"";
    if (!st_dtype_valid(t->dtype)) return "unknown dtype";
    if (t->ndim < 0 || t->ndim > TS_ST_MAX_DIMS || (t->ndim > 0 && !t->shape))
        return "ndim must be 0..TS_ST_MAX_DIMS, with a shape array when above 0";
    if (!shape_numel(t->ndim, t->shape, &numel) || !st_bytes_for(t->dtype, numel, need))
        return "the shape must be non-negative and a whole number of bytes";
    if (t->nbytes != *need) return "nbytes differs from what dtype x shape needs";
    if (t->nbytes > 0 && !t->data) return "data is NULL";
    return NULL;
}

/* The reference serializer orders tensors by its dtype enum, descending, then by name. That
 * enum runs BOOL, F4, (F6 x2), U8, I8, F8_E5M2, F8_E4M3, F8_E8M0, I16, U16, F16, BF16, I32, U32,
 * F32, (C64), F64, I64, U64, so element sizes never increase along the file: with the header
 * padded to 8 bytes every tensor starts aligned to its element size. Using the same order
 * makes our files byte-identical to the Python library's for the same tensors. */
static int layout_rank(const ts_st_write_tensor *t) {
    static const int rank[TS_ST_DTYPE_COUNT] = {
        [TS_ST_BOOL] = 0,    [TS_ST_F4] = 1,      [TS_ST_U8] = 4,   [TS_ST_I8] = 5,   [TS_ST_F8_E5M2] = 6,
        [TS_ST_F8_E4M3] = 7, [TS_ST_F8_E8M0] = 8, [TS_ST_I16] = 9,  [TS_ST_U16] = 10, [TS_ST_F16] = 11,
        [TS_ST_BF16] = 12,   [TS_ST_I32] = 13,    [TS_ST_U32] = 14, [TS_ST_F32] = 15, [TS_ST_F64] = 17,
        [TS_ST_I64] = 18,    [TS_ST_U64] = 19,
    };
    return rank[t->dtype];
}

static int cmp_write_name(const void *a, const void *b) {
    return strcmp((*(const ts_st_write_tensor *const *)a)->name,
                  (*(const ts_st_write_tensor *const *)b)->name);
}

/* Layout order: see layout_rank. */
static int cmp_write_layout(const void *a, const void *b) {
    const ts_st_write_tensor *x = *(const ts_st_write_tensor *const *)a,
                             *y = *(const ts_st_write_tensor *const *)b;
    int rx = layout_rank(x), ry = layout_rank(y);
    if (rx != ry) return ry - rx;
    return strcmp(x->name, y->name);
}

/* Checks every tensor and that names are unique; *sorted gets pointers in name order. */
static ts_status validate_write_set(const char *path, const ts_st_write_tensor *tensors, size_t n,
                                    const ts_st_write_tensor **sorted, ts_io_error *err) {
    for (size_t i = 0; i < n; i++) {
        uint64_t need = 0;
        const ts_st_write_tensor *t = &tensors[i];
        const char *problem = write_tensor_problem(t, &need);
        if (problem) {
            char sh[160] = "[?]";
            if (t->ndim >= 0 && t->ndim <= TS_ST_MAX_DIMS && (t->ndim == 0 || t->shape))
                format_shape(sh, sizeof sh, t->ndim, t->shape);
            return ts_io_set_error(
                err, TS_ERR_INVALID_ARG,
                "%s: cannot write tensor #%zu '%s' (%s %s, %zu bytes given, %llu needed): %s", path, i,
                t->name ? t->name : "(null)", ts_st_dtype_name(t->dtype), sh, t->nbytes,
                (unsigned long long)need, problem);
        }
        sorted[i] = t;
    }
    qsort(sorted, n, sizeof *sorted, cmp_write_name);
    for (size_t i = 1; i < n; i++)
        if (strcmp(sorted[i - 1]->name, sorted[i]->name) == 0)
            return ts_io_set_error(err, TS_ERR_INVALID_ARG, "%s: tensor name '%s' given twice", path,
                                   sorted[i]->name);
    return TS_OK;
}

static json_t *shape_json(int ndim, const int64_t *shape) {
    json_t *arr = json_array();
    for (int d = 0; arr && d < ndim; d++) json_array_append_new(arr, json_integer(shape[d]));
    return arr;
}

/* The header text (JSON padded with spaces to a multiple of 8 bytes) for tensors in `order`. */
static char *build_header(const ts_st_write_tensor *const *order, size_t n, const ts_st_metadata *metadata,
                          size_t n_metadata, size_t *len) {
    json_t *root = json_object();
    bool ok = root != NULL;
    if (ok && n_metadata > 0) {
        json_t *meta = json_object();
        ok = meta && json_object_set_new(root, ST_METADATA_KEY, meta) == 0;
        for (size_t i = 0; ok && i < n_metadata; i++)
            ok = json_object_set_new(meta, metadata[i].key, json_string(metadata[i].value)) == 0;
    }
    uint64_t offset = 0;
    for (size_t i = 0; ok && i < n; i++) {
        json_t *entry = json_object(), *offsets = json_array();
        ok = entry && offsets && json_object_set_new(root, order[i]->name, entry) == 0;
        if (!ok) {
            json_decref(entry);
            json_decref(offsets);
            break;
        }
        json_object_set_new(entry, "dtype", json_string(ts_st_dtype_name(order[i]->dtype)));
        json_object_set_new(entry, "shape", shape_json(order[i]->ndim, order[i]->shape));
        json_array_append_new(offsets, json_integer((json_int_t)offset));
        offset += order[i]->nbytes;
        json_array_append_new(offsets, json_integer((json_int_t)offset));
        json_object_set_new(entry, "data_offsets", offsets);
    }
    char *text = ok ? json_dumps(root, JSON_COMPACT) : NULL;
    json_decref(root);
    if (!text) return NULL;
    size_t n_text = strlen(text), padded = (n_text + 7) / 8 * 8;
    char *out = realloc(text, padded + 1);
    if (!out) {
        free(text);
        return NULL;
    }
    memset(out + n_text, ' ', padded - n_text);
    out[padded] = '\0';
    *len = padded;
    return out;
}

/* Metadata keys must be unique strings (a JSON object cannot hold a key twice). */
static ts_status validate_metadata(const char *path, const ts_st_metadata *metadata, size_t n,
                                   ts_io_error *err) {
    for (size_t i = 0; i < n; i++) {
        if (!metadata[i].key || !metadata[i].value)
            return ts_io_set_error(err, TS_ERR_INVALID_ARG, "%s: metadata entry #%zu has a NULL key or value",
                                   path, i);
        for (size_t k = 0; k < i; k++)
            if (strcmp(metadata[k].key, metadata[i].key) == 0)
                return ts_io_set_error(err, TS_ERR_INVALID_ARG, "%s: metadata key '%s' given twice", path,
                                       metadata[i].key);
    }
    return TS_OK;
}

/* Small tensors are gathered into one staging buffer so a checkpoint of many tiny tensors
 * costs a few large writes instead of one syscall each; big ones are written directly. */
enum { STAGE_BYTES = 1 << 20 };

typedef struct {
    ts_atomic_file *af;
    unsigned char *buf; /* NULL: no staging (allocation failed), write through */
    size_t used;
} stager;

static ts_status stage_flush(stager *st, ts_io_error *err) {
    ts_status s = st->used ? ts_atomic_file_write(st->af, st->buf, st->used, err) : TS_OK;
    st->used = 0;
    return s;
}

static ts_status stage_write(stager *st, const void *data, size_t n, ts_io_error *err) {
    if (!st->buf || n > STAGE_BYTES / 4) {
        ts_status s = stage_flush(st, err);
        return s == TS_OK ? ts_atomic_file_write(st->af, data, n, err) : s;
    }
    if (st->used + n > STAGE_BYTES) {
        ts_status s = stage_flush(st, err);
        if (s != TS_OK) return s;
    }
    if (n) memcpy(st->buf + st->used, data, n);
    st->used += n;
    return TS_OK;
}

static ts_status write_file_body(ts_atomic_file *af, const char *header, size_t header_len,
                                 const ts_st_write_tensor *const *order, size_t n, ts_io_error *err) {
    stager st = {af, malloc(STAGE_BYTES), 0};
    uint8_t len_le[8];
    for (int i = 0; i < 8; i++) len_le[i] = (uint8_t)((uint64_t)header_len >> (8 * i));
    ts_status s = stage_write(&st, len_le, sizeof len_le, err);
    if (s == TS_OK) s = stage_write(&st, header, header_len, err);
    for (size_t i = 0; i < n && s == TS_OK; i++) s = stage_write(&st, order[i]->data, order[i]->nbytes, err);
    if (s == TS_OK) s = stage_flush(&st, err);
    free(st.buf);
    return s;
}

ts_status ts_st_write(const char *path, const ts_st_write_tensor *tensors, size_t n,
                      const ts_st_metadata *metadata, size_t n_metadata, ts_io_error *err) {
    if (!path || (n > 0 && !tensors) || (n_metadata > 0 && !metadata))
        return ts_io_set_error(err, TS_ERR_INVALID_ARG, "safetensors write: NULL argument");
    const ts_st_write_tensor **order = calloc(n + 1, sizeof *order);
    if (!order) return ts_io_set_error(err, TS_ERR_OOM, "%s: out of memory", path);
    ts_status s = validate_write_set(path, tensors, n, order, err);
    if (s == TS_OK) s = validate_metadata(path, metadata, n_metadata, err);
    char *header = NULL;
    size_t header_len = 0;
    if (s == TS_OK) {
        qsort(order, n, sizeof *order, cmp_write_layout);
        header = build_header(order, n, metadata, n_metadata, &header_len);
        if (!header) s = ts_io_set_error(err, TS_ERR_OOM, "%s: out of memory building the header", path);
    }
    ts_atomic_file *af = NULL;
    if (s == TS_OK) s = ts_atomic_file_open(path, &af, err);
    if (s == TS_OK) {
        s = write_file_body(af, header, header_len, order, n, err);
        if (s == TS_OK)
            s = ts_atomic_file_commit(af, err);
        else
            ts_atomic_file_abort(af);
    }
    free(header);
    free(order);
    return s;
}

/* ---------------------------------------------------------------- sharded */

/* Shard number of each tensor in name order: greedy packing up to max_bytes per shard. */
static size_t assign_shards(const ts_st_write_tensor *const *by_name, size_t n, uint64_t max_bytes,
                            size_t *shard_of) {
    size_t shard = 0;
    uint64_t used = 0;
    for (size_t i = 0; i < n; i++) {
        if (used > 0 && used + by_name[i]->nbytes > max_bytes) {
            shard++;
            used = 0;
        }
        used += by_name[i]->nbytes;
        shard_of[i] = shard;
    }
    return n ? shard + 1 : 1; /* an empty checkpoint still gets one (empty) shard */
}

static ts_status write_index(const char *dir, const ts_st_write_tensor *const *by_name, size_t n,
                             const size_t *shard_of, size_t n_shards, ts_io_error *err) {
    uint64_t total = 0;
    json_t *root = json_object(), *meta = json_object(), *map = json_object();
    bool ok = root && meta && map;
    char file[64];
    for (size_t i = 0; ok && i < n; i++) {
        total += by_name[i]->nbytes;
        snprintf(file, sizeof file, "model-%05zu-of-%05zu.safetensors", shard_of[i] + 1, n_shards);
        ok = json_object_set_new(map, by_name[i]->name, json_string(file)) == 0;
    }
    ok = ok && json_object_set_new(meta, "total_size", json_integer((json_int_t)total)) == 0;
    ok = ok && json_object_set_new(root, "metadata", meta) == 0;
    meta = NULL;
    ok = ok && json_object_set_new(root, "weight_map", map) == 0;
    map = NULL;
    char *text = ok ? json_dumps(root, JSON_INDENT(2)) : NULL;
    json_decref(root);
    json_decref(meta);
    json_decref(map);
    char *path = join_path(dir, INDEX_FILE_NAME);
    ts_status s;
    if (!text || !path)
        s = ts_io_set_error(err, TS_ERR_OOM, "%s: out of memory writing the index", dir);
    else
        s = ts_atomic_write_file(path, text, strlen(text), err);
    free(text);
    free(path);
    return s;
}

static ts_status write_one_shard(const char *dir, size_t shard, size_t n_shards,
                                 const ts_st_write_tensor *const *by_name, size_t n, const size_t *shard_of,
                                 ts_st_write_tensor *scratch, const ts_st_metadata *metadata,
                                 size_t n_metadata, ts_io_error *err) {
    size_t count = 0;
    for (size_t i = 0; i < n; i++)
        if (shard_of[i] == shard) scratch[count++] = *by_name[i];
    char file[64];
    snprintf(file, sizeof file, "model-%05zu-of-%05zu.safetensors", shard + 1, n_shards);
    char *path = join_path(dir, file);
    if (!path) return ts_io_set_error(err, TS_ERR_OOM, "%s: out of memory", dir);
    ts_status s = ts_st_write(path, scratch, count, metadata, n_metadata, err);
    free(path);
    return s;
}

ts_status ts_st_write_sharded(const char *dir, const ts_st_write_tensor *tensors, size_t n,
                              const ts_st_metadata *metadata, size_t n_metadata, uint64_t max_shard_bytes,
                              ts_io_error *err) {
    if (!dir || (n > 0 && !tensors) || (n_metadata > 0 && !metadata) || max_shard_bytes == 0)
        return ts_io_set_error(err, TS_ERR_INVALID_ARG,
                               "sharded write: dir, tensors and a non-zero max shard size are required");
    if (mkdir(dir, 0777) != 0 && errno != EEXIST)
        return ts_io_set_error(err, TS_ERR_IO, "%s: cannot create directory: %s", dir, strerror(errno));
    const ts_st_write_tensor **by_name = calloc(n + 1, sizeof *by_name);
    size_t *shard_of = calloc(n + 1, sizeof *shard_of);
    ts_st_write_tensor *scratch = calloc(n + 1, sizeof *scratch);
    ts_status s = TS_OK;
    if (!by_name || !shard_of || !scratch) s = ts_io_set_error(err, TS_ERR_OOM, "%s: out of memory", dir);
    /* Validate everything before the first shard is written. */
    if (s == TS_OK) s = validate_write_set(dir, tensors, n, by_name, err);
    if (s == TS_OK) s = validate_metadata(dir, metadata, n_metadata, err);
    size_t n_shards = s == TS_OK ? assign_shards(by_name, n, max_shard_bytes, shard_of) : 0;
    for (size_t k = 0; k < n_shards && s == TS_OK; k++)
        s = write_one_shard(dir, k, n_shards, by_name, n, shard_of, scratch, metadata, n_metadata, err);
    if (s == TS_OK) s = write_index(dir, by_name, n, shard_of, n_shards, err);
    free(by_name);
    free(shard_of);
    free(scratch);
    return s;
}
