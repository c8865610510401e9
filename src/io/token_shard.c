/* token_shard.c - the token shard file format (data.h has the byte layout): the writer that
 * `prepare` and the synthetic dataset use, the validating mmap reader the data loader uses,
 * listing a directory's shards, and XXH64, the checksum the format relies on.
 *
 * The writer keeps the whole file image in one buffer (header room, tokens, then the document
 * index appended at finish), so the checksum is one pass over contiguous bytes and the file is
 * one atomic write. The reader validates everything at open so that the loader can then index
 * the mapping without checks; as with every mmap reader, a file truncated by another process
 * while mapped raises SIGBUS, which our own writers never cause (they replace files whole). */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tessera/data.h"

/* ================================================================ XXH64 */

static const uint64_t XXH_P1 = 0x9E3779B185EBCA87ull;
static const uint64_t XXH_P2 = 0xC2B2AE3D27D4EB4Full;
static const uint64_t XXH_P3 = 0x165667B19E3779F9ull;
static const uint64_t XXH_P4 = 0x85EBCA77C2B2AE63ull;
static const uint64_t XXH_P5 = 0x27D4EB2F165667C5ull;

static uint64_t rotl64(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }

/* Little-endian loads through bytes: correct on any host, and compilers turn them into plain
 * loads on little-endian ones. */
static uint64_t load_le64(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}
static uint32_t load_le32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static uint16_t load_le16(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }

static void store_le64(uint8_t *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static void store_le32(uint8_t *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static void store_le16(uint8_t *p, uint16_t v) {
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

static uint64_t xxh_round(uint64_t acc, uint64_t lane) {
    acc += lane * XXH_P2;
    return rotl64(acc, 31) * XXH_P1;
}

static uint64_t xxh_merge(uint64_t h, uint64_t acc) {
    h ^= xxh_round(0, acc);
    return h * XXH_P1 + XXH_P4;
}

uint64_t ts_xxh64(const void *data, size_t size, uint64_t seed) {
    const uint8_t *p = data, *end = p + size;
    uint64_t h;
    if (size >= 32) {
        uint64_t v1 = seed + XXH_P1 + XXH_P2, v2 = seed + XXH_P2, v3 = seed, v4 = seed - XXH_P1;
        for (; end - p >= 32; p += 32) {
            v1 = xxh_round(v1, load_le64(p));
            v2 = xxh_round(v2, load_le64(p + 8));
            v3 = xxh_round(v3, load_le64(p + 16));
            v4 = xxh_round(v4, load_le64(p + 24));
        }
        h = rotl64(v1, 1) + rotl64(v2, 7) + rotl64(v3, 12) + rotl64(v4, 18);
        h = xxh_merge(h, v1);
        h = xxh_merge(h, v2);
        h = xxh_merge(h, v3);
        h = xxh_merge(h, v4);
    } else {
        h = seed + XXH_P5;
    }
    h += (uint64_t)size;
    for (; end - p >= 8; p += 8) h = rotl64(h ^ xxh_round(0, load_le64(p)), 27) * XXH_P1 + XXH_P4;
    if (end - p >= 4) {
        h = rotl64(h ^ (uint64_t)load_le32(p) * XXH_P1, 23) * XXH_P2 + XXH_P3;
        p += 4;
    }
    for (; p < end; p++) h = rotl64(h ^ *p * XXH_P5, 11) * XXH_P1;
    h ^= h >> 33;
    h *= XXH_P2;
    h ^= h >> 29;
    h *= XXH_P3;
    h ^= h >> 32;
    return h;
}

/* ================================================================ layout */

enum {
    OFF_MAGIC = 0,
    OFF_VERSION = 8,
    OFF_HEADER_BYTES = 12,
    OFF_TOKEN_BYTES = 16,
    OFF_VOCAB = 20,
    OFF_N_TOKENS = 24,
    OFF_N_DOCS = 32,
    OFF_INDEX = 40,
    OFF_PAYLOAD_SUM = 48,
    OFF_HEADER_SUM = 56,
    OFF_RESERVED = 60,
};

static uint32_t token_bytes_for(uint32_t vocab_size) { return vocab_size <= 65536u ? 2u : 4u; }
static uint64_t align8(uint64_t x) { return (x + 7) & ~(uint64_t)7; }
static uint32_t header_checksum(const uint8_t *header) { return (uint32_t)ts_xxh64(header, OFF_HEADER_SUM, 0); }

/* ================================================================ writer */

struct ts_shard_writer {
    char *path;
    uint32_t vocab_size, token_bytes;
    uint8_t *image;        /* header room + tokens; the index is appended at finish */
    size_t image_cap;
    uint64_t n_tokens;
    uint64_t *doc_starts;  /* n_docs + 1 entries */
    size_t n_docs, docs_cap;
};

ts_status ts_shard_writer_new(const char *path, uint32_t vocab_size, ts_shard_writer **out, ts_io_error *err) {
    if (!path || !out || vocab_size == 0 || vocab_size > TS_SHARD_MAX_VOCAB)
        return ts_io_set_error(err, TS_ERR_INVALID_ARG, "shard writer: path, out and vocab_size in [1, 2^31) are required");
    ts_shard_writer *w = calloc(1, sizeof *w);
    if (w) w->path = strdup(path);
    if (w) w->image_cap = 1u << 16;
    if (w) w->image = calloc(1, w->image_cap);
    if (w) w->docs_cap = 1024;
    if (w) w->doc_starts = calloc(w->docs_cap, sizeof *w->doc_starts);
    if (!w || !w->path || !w->image || !w->doc_starts) {
        ts_shard_writer_abort(w);
        return ts_io_set_error(err, TS_ERR_OOM, "%s: out of memory creating the shard writer", path);
    }
    w->vocab_size = vocab_size;
    w->token_bytes = token_bytes_for(vocab_size);
    *out = w;
    return TS_OK;
}

void ts_shard_writer_abort(ts_shard_writer *w) {
    if (!w) return;
    free(w->path);
    free(w->image);
    free(w->doc_starts);
    free(w);
}

uint64_t ts_shard_writer_tokens(const ts_shard_writer *w) { return w->n_tokens; }
uint64_t ts_shard_writer_docs(const ts_shard_writer *w) { return w->n_docs; }

/* Grows the image so it holds at least `need` bytes (doubling, so appends are amortised O(1)). */
static bool image_reserve(ts_shard_writer *w, uint64_t need) {
    if (need <= w->image_cap) return true;
    size_t cap = w->image_cap;
    while (cap < need) {
        if (cap > SIZE_MAX / 2) return false;
        cap *= 2;
    }
    uint8_t *p = realloc(w->image, cap);
    if (!p) return false;
    w->image = p;
    w->image_cap = cap;
    return true;
}

static bool docs_reserve(ts_shard_writer *w) {
    if (w->n_docs + 2 <= w->docs_cap) return true;
    size_t cap = w->docs_cap * 2;
    uint64_t *p = realloc(w->doc_starts, cap * sizeof *p);
    if (!p) return false;
    w->doc_starts = p;
    w->docs_cap = cap;
    return true;
}

ts_status ts_shard_writer_add(ts_shard_writer *w, const uint32_t *ids, size_t n, ts_io_error *err) {
    if (!w || (!ids && n))
        return ts_io_set_error(err, TS_ERR_INVALID_ARG, "shard writer: NULL writer or ids");
    if (n == 0)
        return ts_io_set_error(err, TS_ERR_INVALID_ARG, "%s: document %zu is empty (documents need >= 1 token)",
                               w->path, w->n_docs);
    for (size_t i = 0; i < n; i++)
        if (ids[i] >= w->vocab_size)
            return ts_io_set_error(err, TS_ERR_RANGE,
                                   "%s: document %zu: token %u at position %zu is out of range for vocab size %u",
                                   w->path, w->n_docs, ids[i], i, w->vocab_size);
    uint64_t begin = TS_SHARD_HEADER_BYTES + w->n_tokens * w->token_bytes;
    if (!image_reserve(w, begin + (uint64_t)n * w->token_bytes) || !docs_reserve(w))
        return ts_io_set_error(err, TS_ERR_OOM, "%s: out of memory at %llu tokens", w->path,
                               (unsigned long long)w->n_tokens);
    uint8_t *p = w->image + begin;
    for (size_t i = 0; i < n; i++, p += w->token_bytes) {
        if (w->token_bytes == 2)
            store_le16(p, (uint16_t)ids[i]);
        else
            store_le32(p, ids[i]);
    }
    w->n_tokens += n;
    w->doc_starts[++w->n_docs] = w->n_tokens;
    return TS_OK;
}

static void write_header(ts_shard_writer *w, uint64_t index_offset, uint64_t file_size) {
    uint8_t *h = w->image;
    memset(h, 0, TS_SHARD_HEADER_BYTES);
    memcpy(h + OFF_MAGIC, TS_SHARD_MAGIC, sizeof TS_SHARD_MAGIC); /* 7 letters + NUL */
    store_le32(h + OFF_VERSION, TS_SHARD_VERSION);
    store_le32(h + OFF_HEADER_BYTES, TS_SHARD_HEADER_BYTES);
    store_le32(h + OFF_TOKEN_BYTES, w->token_bytes);
    store_le32(h + OFF_VOCAB, w->vocab_size);
    store_le64(h + OFF_N_TOKENS, w->n_tokens);
    store_le64(h + OFF_N_DOCS, w->n_docs);
    store_le64(h + OFF_INDEX, index_offset);
    uint64_t payload = ts_xxh64(h + TS_SHARD_HEADER_BYTES, (size_t)(file_size - TS_SHARD_HEADER_BYTES), 0);
    store_le64(h + OFF_PAYLOAD_SUM, payload);
    store_le32(h + OFF_HEADER_SUM, header_checksum(h));
}

ts_status ts_shard_writer_finish(ts_shard_writer *w, ts_io_error *err) {
    if (!w) return ts_io_set_error(err, TS_ERR_INVALID_ARG, "shard writer: NULL writer");
    uint64_t tokens_end = TS_SHARD_HEADER_BYTES + w->n_tokens * w->token_bytes;
    uint64_t index_offset = align8(tokens_end);
    uint64_t file_size = index_offset + (uint64_t)(w->n_docs + 1) * 8;
    ts_status s = TS_OK;
    if (!image_reserve(w, file_size)) {
        s = ts_io_set_error(err, TS_ERR_OOM, "%s: out of memory finishing the shard", w->path);
    } else {
        memset(w->image + tokens_end, 0, (size_t)(index_offset - tokens_end));
        for (size_t d = 0; d <= w->n_docs; d++) store_le64(w->image + index_offset + 8 * d, w->doc_starts[d]);
        write_header(w, index_offset, file_size);
        s = ts_atomic_write_file(w->path, w->image, (size_t)file_size, err);
    }
    ts_shard_writer_abort(w);
    return s;
}

/* ================================================================ reader */

struct ts_shard {
    char *path;
    const uint8_t *map;
    size_t map_size;
    ts_shard_info info;
    const uint8_t *tokens;
    const uint8_t *index;
};

void ts_shard_close(ts_shard *s) {
    if (!s) return;
    if (s->map) munmap((void *)s->map, s->map_size);
    free(s->path);
    free(s);
}

const ts_shard_info *ts_shard_get_info(const ts_shard *s) { return &s->info; }
const char *ts_shard_path(const ts_shard *s) { return s->path; }

uint32_t ts_shard_token(const ts_shard *s, uint64_t i) {
    const uint8_t *p = s->tokens + i * s->info.token_bytes;
    return s->info.token_bytes == 2 ? load_le16(p) : load_le32(p);
}

void ts_shard_read(const ts_shard *s, uint64_t start, size_t n, int32_t *out) {
    const uint8_t *p = s->tokens + start * s->info.token_bytes;
    if (s->info.token_bytes == 2)
        for (size_t i = 0; i < n; i++) out[i] = (int32_t)load_le16(p + 2 * i);
    else
        for (size_t i = 0; i < n; i++) out[i] = (int32_t)load_le32(p + 4 * i);
}

uint64_t ts_shard_doc_start(const ts_shard *s, uint64_t d) { return load_le64(s->index + 8 * d); }

/* Maps the whole file; sizes too small to hold even the magic are left to the header checks. */
static ts_status map_shard(ts_shard *s, ts_io_error *err) {
    int fd = open(s->path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return ts_io_set_error(err, TS_ERR_IO, "%s: cannot open: %s", s->path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return ts_io_set_error(err, TS_ERR_IO, "%s: not a regular file", s->path);
    }
    if (st.st_size < (off_t)TS_SHARD_HEADER_BYTES) {
        /* Too short to map usefully: read what is there so the magic can still be judged. */
        uint8_t head[TS_SHARD_HEADER_BYTES] = {0};
        ssize_t got = read(fd, head, sizeof head);
        close(fd);
        if (got < 8 || memcmp(head, TS_SHARD_MAGIC, sizeof TS_SHARD_MAGIC) != 0)
            return ts_io_set_error(err, TS_ERR_FORMAT, "%s: not a token shard (bad magic; %lld bytes)", s->path,
                                   (long long)st.st_size);
        return ts_io_set_error(err, TS_ERR_FORMAT, "%s: truncated: %lld bytes, the header alone needs %u",
                               s->path, (long long)st.st_size, TS_SHARD_HEADER_BYTES);
    }
    void *map = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    int e = errno;
    close(fd); /* the mapping keeps the file alive */
    if (map == MAP_FAILED) return ts_io_set_error(err, TS_ERR_IO, "%s: mmap failed: %s", s->path, strerror(e));
    s->map = map;
    s->map_size = (size_t)st.st_size;
    return TS_OK;
}

/* Magic, version, header checksum and the header's own fields. */
static ts_status check_header(ts_shard *s, uint64_t *index_offset, ts_io_error *err) {
    const uint8_t *h = s->map;
    if (memcmp(h, TS_SHARD_MAGIC, sizeof TS_SHARD_MAGIC) != 0)
        return ts_io_set_error(err, TS_ERR_FORMAT, "%s: not a token shard (bad magic)", s->path);
    uint32_t version = load_le32(h + OFF_VERSION);
    if (version > TS_SHARD_VERSION)
        return ts_io_set_error(err, TS_ERR_UNSUPPORTED,
                               "%s: shard version %u is newer than this build reads (up to %u)", s->path, version,
                               TS_SHARD_VERSION);
    if (version == 0) return ts_io_set_error(err, TS_ERR_FORMAT, "%s: shard version 0 is invalid", s->path);
    uint32_t stored = load_le32(h + OFF_HEADER_SUM), computed = header_checksum(h);
    if (stored != computed)
        return ts_io_set_error(err, TS_ERR_FORMAT,
                               "%s: header checksum mismatch (stored %08x, computed %08x): the header is corrupt",
                               s->path, stored, computed);
    s->info.version = version;
    s->info.token_bytes = load_le32(h + OFF_TOKEN_BYTES);
    s->info.vocab_size = load_le32(h + OFF_VOCAB);
    s->info.n_tokens = load_le64(h + OFF_N_TOKENS);
    s->info.n_docs = load_le64(h + OFF_N_DOCS);
    s->info.payload_checksum = load_le64(h + OFF_PAYLOAD_SUM);
    *index_offset = load_le64(h + OFF_INDEX);
    uint32_t header_bytes = load_le32(h + OFF_HEADER_BYTES);
    if (header_bytes != TS_SHARD_HEADER_BYTES)
        return ts_io_set_error(err, TS_ERR_FORMAT, "%s: header_bytes is %u, version 1 has %u", s->path,
                               header_bytes, TS_SHARD_HEADER_BYTES);
    if (s->info.token_bytes != 2 && s->info.token_bytes != 4)
        return ts_io_set_error(err, TS_ERR_FORMAT, "%s: token width %u bytes (must be 2 or 4)", s->path,
                               s->info.token_bytes);
    if (s->info.vocab_size == 0 || s->info.vocab_size > TS_SHARD_MAX_VOCAB ||
        (s->info.token_bytes == 2 && s->info.vocab_size > 65536u))
        return ts_io_set_error(err, TS_ERR_FORMAT, "%s: vocab size %u does not fit %u-byte tokens", s->path,
                               s->info.vocab_size, s->info.token_bytes);
    return TS_OK;
}

/* The sections must tile the file exactly: tokens, padding to 8, the index, nothing after. */
static ts_status check_sizes(ts_shard *s, uint64_t index_offset, ts_io_error *err) {
    uint64_t size = s->map_size, n_tokens = s->info.n_tokens, n_docs = s->info.n_docs;
    /* Counts larger than any file could hold are reported as truncation without overflowing. */
    if (n_tokens > size / s->info.token_bytes || n_docs > size / 8)
        return ts_io_set_error(err, TS_ERR_FORMAT,
                               "%s: truncated: header says %llu tokens and %llu documents, file has %llu bytes",
                               s->path, (unsigned long long)n_tokens, (unsigned long long)n_docs,
                               (unsigned long long)size);
    uint64_t expected_index = align8(TS_SHARD_HEADER_BYTES + n_tokens * s->info.token_bytes);
    if (index_offset != expected_index)
        return ts_io_set_error(err, TS_ERR_FORMAT,
                               "%s: document index offset is %llu, but %llu tokens end at %llu", s->path,
                               (unsigned long long)index_offset, (unsigned long long)n_tokens,
                               (unsigned long long)expected_index);
    uint64_t expected_size = expected_index + (n_docs + 1) * 8;
    if (size < expected_size)
        return ts_io_set_error(err, TS_ERR_FORMAT, "%s: truncated: header says %llu bytes, file has %llu",
                               s->path, (unsigned long long)expected_size, (unsigned long long)size);
    if (size > expected_size)
        return ts_io_set_error(err, TS_ERR_FORMAT, "%s: %llu bytes of trailing data after the %llu the header describes",
                               s->path, (unsigned long long)(size - expected_size), (unsigned long long)expected_size);
    s->tokens = s->map + TS_SHARD_HEADER_BYTES;
    s->index = s->map + index_offset;
    return TS_OK;
}

static ts_status check_payload(const ts_shard *s, ts_io_error *err) {
    uint64_t computed = ts_xxh64(s->map + TS_SHARD_HEADER_BYTES, s->map_size - TS_SHARD_HEADER_BYTES, 0);
    if (computed != s->info.payload_checksum)
        return ts_io_set_error(err, TS_ERR_FORMAT,
                               "%s: payload checksum mismatch (stored %016llx, computed %016llx): the file is corrupt",
                               s->path, (unsigned long long)s->info.payload_checksum, (unsigned long long)computed);
    return TS_OK;
}

static ts_status check_doc_index(const ts_shard *s, ts_io_error *err) {
    uint64_t n_docs = s->info.n_docs;
    if (ts_shard_doc_start(s, 0) != 0)
        return ts_io_set_error(err, TS_ERR_FORMAT, "%s: document index starts at %llu, not 0", s->path,
                               (unsigned long long)ts_shard_doc_start(s, 0));
    for (uint64_t d = 0; d < n_docs; d++) {
        uint64_t a = ts_shard_doc_start(s, d), b = ts_shard_doc_start(s, d + 1);
        if (b <= a || b > s->info.n_tokens)
            return ts_io_set_error(err, TS_ERR_FORMAT,
                                   "%s: document %llu spans tokens [%llu, %llu), not a non-empty range within %llu tokens",
                                   s->path, (unsigned long long)d, (unsigned long long)a, (unsigned long long)b,
                                   (unsigned long long)s->info.n_tokens);
    }
    if (ts_shard_doc_start(s, n_docs) != s->info.n_tokens)
        return ts_io_set_error(err, TS_ERR_FORMAT, "%s: documents end at token %llu, the shard holds %llu", s->path,
                               (unsigned long long)ts_shard_doc_start(s, n_docs),
                               (unsigned long long)s->info.n_tokens);
    return TS_OK;
}

static ts_status check_token_range(const ts_shard *s, ts_io_error *err) {
    for (uint64_t i = 0; i < s->info.n_tokens; i++) {
        uint32_t id = ts_shard_token(s, i);
        if (id >= s->info.vocab_size)
            return ts_io_set_error(err, TS_ERR_RANGE, "%s: token %u at position %llu is out of range for vocab size %u",
                                   s->path, id, (unsigned long long)i, s->info.vocab_size);
    }
    return TS_OK;
}

ts_status ts_shard_open(const char *path, unsigned flags, ts_shard **out, ts_io_error *err) {
    if (!path || !out) return ts_io_set_error(err, TS_ERR_INVALID_ARG, "shard open: path and out are required");
    *out = NULL;
    ts_shard *s = calloc(1, sizeof *s);
    if (s) s->path = strdup(path);
    if (!s || !s->path) {
        ts_shard_close(s);
        return ts_io_set_error(err, TS_ERR_OOM, "%s: out of memory", path);
    }
    uint64_t index_offset = 0;
    bool scan = !(flags & TS_SHARD_OPEN_SKIP_SCAN);
    ts_status st = map_shard(s, err);
    if (st == TS_OK) st = check_header(s, &index_offset, err);
    if (st == TS_OK) st = check_sizes(s, index_offset, err);
    if (st == TS_OK && scan) st = check_payload(s, err);
    if (st == TS_OK) st = check_doc_index(s, err);
    if (st == TS_OK && scan) st = check_token_range(s, err);
    if (st != TS_OK) {
        ts_shard_close(s);
        return st;
    }
    *out = s;
    return TS_OK;
}

/* ================================================================ listing */

static int compare_strings(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* "<split>-<anything>.tshard" */
static bool is_split_shard(const char *name, const char *split) {
    size_t n = strlen(name), ns = strlen(split), ne = strlen(TS_SHARD_EXTENSION);
    return n > ns + 1 + ne && strncmp(name, split, ns) == 0 && name[ns] == '-' &&
           strcmp(name + n - ne, TS_SHARD_EXTENSION) == 0;
}

void ts_shard_list_free(char **paths, size_t n) {
    if (!paths) return;
    for (size_t i = 0; i < n; i++) free(paths[i]);
    free(paths);
}

ts_status ts_shard_list(const char *dir, const char *split, char ***paths, size_t *n, ts_io_error *err) {
    if (!dir || !split || !paths || !n)
        return ts_io_set_error(err, TS_ERR_INVALID_ARG, "shard list: dir, split, paths and n are required");
    *paths = NULL;
    *n = 0;
    DIR *d = opendir(dir);
    if (!d) return ts_io_set_error(err, TS_ERR_IO, "%s: cannot open directory: %s", dir, strerror(errno));
    char **list = NULL;
    size_t count = 0, cap = 0;
    ts_status st = TS_OK;
    for (struct dirent *e; st == TS_OK && (e = readdir(d)) != NULL;) {
        if (!is_split_shard(e->d_name, split)) continue;
        if (count == cap) {
            size_t ncap = cap ? 2 * cap : 8;
            char **grown = realloc(list, ncap * sizeof *grown);
            if (!grown) {
                st = ts_io_set_error(err, TS_ERR_OOM, "%s: out of memory listing shards", dir);
                break;
            }
            list = grown;
            cap = ncap;
        }
        size_t room = strlen(dir) + strlen(e->d_name) + 2;
        list[count] = malloc(room);
        if (!list[count]) {
            st = ts_io_set_error(err, TS_ERR_OOM, "%s: out of memory listing shards", dir);
            break;
        }
        snprintf(list[count++], room, "%s/%s", dir, e->d_name);
    }
    closedir(d);
    if (st == TS_OK && count == 0)
        st = ts_io_set_error(err, TS_ERR_IO, "%s: no %s-*%s shards", dir, split, TS_SHARD_EXTENSION);
    if (st != TS_OK) {
        ts_shard_list_free(list, count);
        return st;
    }
    qsort(list, count, sizeof *list, compare_strings);
    *paths = list;
    *n = count;
    return TS_OK;
}
