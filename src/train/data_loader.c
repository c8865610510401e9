/* data_loader.c - packs token shards into B x T training batches with document boundaries
 * (data.h describes what every per-token array means and why targets stop at document ends).
 *
 * The loader sees all shards as one list of documents, numbered across shards in the order
 * given. An epoch is a permutation of that list; the permutation of epoch e comes from an RNG
 * seeded with (seed, e), so the loader's whole state is (epoch, cursor into the permutation,
 * offset into that document): that triple is the checkpointable position. Rows are filled by
 * copying "pieces" - the longest run of one document that fits in what is left of the row.
 * All buffers are allocated at open; next() only copies. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tessera/data.h"

struct ts_data_loader {
    ts_data_loader_options opts;
    ts_shard **shards;
    size_t n_shards;
    uint64_t *shard_doc_base; /* n_shards + 1: global index of each shard's first document */
    uint64_t n_docs, n_tokens;
    uint32_t vocab_size;
    uint64_t fingerprint;

    uint64_t *order;          /* this epoch's document order (global document indices) */
    uint64_t epoch, cursor, offset;
    bool exhausted;           /* single pass: the stream has ended */

    /* The document at `cursor`, looked up once per document rather than once per piece. */
    const ts_shard *doc_shard;
    uint64_t doc_first, doc_len;

    ts_batch batch;
    int32_t *inputs, *targets, *positions, *doc_start, *segments;
    int64_t *doc_ids;
};

/* ================================================================ document order */

static uint64_t mix64(uint64_t x) {
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

/* Uniform in [0, n) without modulo bias (rejects the top partial range). */
static uint64_t rng_below(ts_rng *rng, uint64_t n) {
    uint64_t limit = UINT64_MAX - UINT64_MAX % n, x;
    do x = ts_rng_next(rng);
    while (x >= limit);
    return x % n;
}

/* File order, then (when shuffling) Fisher-Yates with the epoch's own RNG. */
static void build_order(ts_data_loader *l) {
    for (uint64_t i = 0; i < l->n_docs; i++) l->order[i] = i;
    if (!l->opts.shuffle) return;
    ts_rng rng;
    ts_rng_seed(&rng, mix64(l->opts.seed) ^ mix64(l->epoch + 0x5EEDull));
    for (uint64_t i = l->n_docs - 1; i > 0; i--) {
        uint64_t j = rng_below(&rng, i + 1), t = l->order[i];
        l->order[i] = l->order[j];
        l->order[j] = t;
    }
}

/* Binary search for the shard holding global document g. */
static size_t shard_of(const ts_data_loader *l, uint64_t g) {
    size_t lo = 0, hi = l->n_shards; /* shard_doc_base[lo] <= g < shard_doc_base[hi] */
    while (hi - lo > 1) {
        size_t mid = lo + (hi - lo) / 2;
        if (l->shard_doc_base[mid] <= g)
            lo = mid;
        else
            hi = mid;
    }
    return lo;
}

static void load_current_doc(ts_data_loader *l) {
    uint64_t g = l->order[l->cursor];
    size_t s = shard_of(l, g);
    uint64_t local = g - l->shard_doc_base[s];
    l->doc_shard = l->shards[s];
    l->doc_first = ts_shard_doc_start(l->doc_shard, local);
    l->doc_len = ts_shard_doc_start(l->doc_shard, local + 1) - l->doc_first;
}

/* Moves to the next document, starting the next epoch (new order) after the last one; a
 * single-pass loader ends instead. */
static void advance_document(ts_data_loader *l) {
    l->offset = 0;
    if (++l->cursor < l->n_docs) {
        load_current_doc(l);
        return;
    }
    if (l->opts.single_pass) {
        l->exhausted = true;
        return;
    }
    l->epoch++;
    l->cursor = 0;
    build_order(l);
    load_current_doc(l);
}

/* ================================================================ packing */

/* Copies the next piece of the current document into row positions [t, t + k). */
static int fill_piece(ts_data_loader *l, int64_t row_base, int t, int room, int segment) {
    uint64_t left = l->doc_len - l->offset;
    int k = left < (uint64_t)room ? (int)left : room;
    int64_t at = row_base + t;
    uint64_t first = l->doc_first + l->offset;
    ts_shard_read(l->doc_shard, first, (size_t)k, l->inputs + at);
    /* Targets: the following token of the same document; none after its last token. */
    memcpy(l->targets + at, l->inputs + at + 1, (size_t)(k - 1) * sizeof *l->targets);
    bool doc_continues = l->offset + (uint64_t)k < l->doc_len;
    l->targets[at + k - 1] = doc_continues ? (int32_t)ts_shard_token(l->doc_shard, first + (uint64_t)k) : TS_TARGET_IGNORE;
    int64_t g = (int64_t)l->order[l->cursor];
    for (int j = 0; j < k; j++) {
        l->positions[at + j] = j;
        l->doc_start[at + j] = t;
        l->segments[at + j] = segment;
        l->doc_ids[at + j] = g;
    }
    l->batch.n_tokens += k;
    l->batch.n_targets += k - (doc_continues ? 0 : 1);
    l->offset += (uint64_t)k;
    if (l->offset == l->doc_len) advance_document(l);
    return k;
}

static void fill_padding(ts_data_loader *l, int64_t row_base, int t) {
    for (int j = t; j < l->opts.seq_len; j++) {
        int64_t at = row_base + j;
        l->inputs[at] = l->opts.pad_id;
        l->targets[at] = TS_TARGET_IGNORE;
        l->positions[at] = 0;
        l->doc_start[at] = j; /* attends only to itself: no fully masked attention row */
        l->segments[at] = -1;
        l->doc_ids[at] = -1;
    }
}

static void fill_row(ts_data_loader *l, int row) {
    int64_t base = (int64_t)row * l->opts.seq_len;
    int t = 0, segment = 0;
    while (t < l->opts.seq_len && !l->exhausted) t += fill_piece(l, base, t, l->opts.seq_len - t, segment++);
    fill_padding(l, base, t);
}

const ts_batch *ts_data_loader_next(ts_data_loader *l) {
    if (l->exhausted) return NULL;
    l->batch.n_tokens = 0;
    l->batch.n_targets = 0;
    l->batch.epoch = l->epoch;
    for (int row = 0; row < l->opts.batch; row++) fill_row(l, row);
    return &l->batch;
}

/* ================================================================ position */

static void go_to(ts_data_loader *l, uint64_t epoch, uint64_t cursor, uint64_t offset) {
    l->epoch = epoch;
    l->cursor = cursor;
    l->offset = offset;
    l->exhausted = false;
    build_order(l);
    load_current_doc(l);
}

void ts_data_loader_rewind(ts_data_loader *l) { go_to(l, 0, 0, 0); }

void ts_data_loader_position(const ts_data_loader *l, ts_data_position *out) {
    out->epoch = l->epoch;
    out->doc_cursor = l->cursor;
    out->token_offset = l->offset;
    out->seed = l->opts.seed;
    out->data_fingerprint = l->fingerprint;
    if (l->exhausted) { /* one past the end of a single pass */
        out->doc_cursor = l->n_docs;
        out->token_offset = 0;
    }
}

ts_status ts_data_loader_seek(ts_data_loader *l, const ts_data_position *pos, ts_io_error *err) {
    if (!l || !pos) return ts_io_set_error(err, TS_ERR_INVALID_ARG, "data loader seek: NULL argument");
    if (pos->data_fingerprint != l->fingerprint)
        return ts_io_set_error(err, TS_ERR_INVALID_ARG,
                               "data position was taken on other data (fingerprint %016" PRIx64 ", these shards %016" PRIx64 ")",
                               pos->data_fingerprint, l->fingerprint);
    if (pos->seed != l->opts.seed)
        return ts_io_set_error(err, TS_ERR_INVALID_ARG, "data position was taken with seed %" PRIu64 ", loader has %" PRIu64,
                               pos->seed, l->opts.seed);
    if (l->opts.single_pass && pos->epoch == 0 && pos->doc_cursor == l->n_docs && pos->token_offset == 0) {
        go_to(l, 0, 0, 0);
        l->exhausted = true;
        return TS_OK;
    }
    if ((l->opts.single_pass && pos->epoch != 0) || pos->doc_cursor >= l->n_docs)
        return ts_io_set_error(err, TS_ERR_RANGE, "data position epoch %" PRIu64 " document %" PRIu64 " is outside the data (%" PRIu64 " documents)",
                               pos->epoch, pos->doc_cursor, l->n_docs);
    go_to(l, pos->epoch, pos->doc_cursor, 0);
    if (pos->token_offset >= l->doc_len)
        return ts_io_set_error(err, TS_ERR_RANGE, "data position token %" PRIu64 " is past the end of document %" PRIu64 " (%" PRIu64 " tokens)",
                               pos->token_offset, pos->doc_cursor, l->doc_len);
    l->offset = pos->token_offset;
    return TS_OK;
}

void ts_data_position_format(const ts_data_position *pos, char *buf, size_t cap) {
    snprintf(buf, cap, "tsdata1 epoch=%" PRIu64 " doc=%" PRIu64 " token=%" PRIu64 " seed=%" PRIu64 " data=%016" PRIx64,
             pos->epoch, pos->doc_cursor, pos->token_offset, pos->seed, pos->data_fingerprint);
}

ts_status ts_data_position_parse(const char *text, ts_data_position *out, ts_io_error *err) {
    ts_data_position p;
    int used = 0;
    if (!text || !out ||
        sscanf(text, "tsdata1 epoch=%" SCNu64 " doc=%" SCNu64 " token=%" SCNu64 " seed=%" SCNu64 " data=%16" SCNx64 "%n",
               &p.epoch, &p.doc_cursor, &p.token_offset, &p.seed, &p.data_fingerprint, &used) != 5 ||
        text[used] != '\0')
        return ts_io_set_error(err, TS_ERR_FORMAT, "not a data position: \"%.200s\"", text ? text : "(null)");
    *out = p;
    return TS_OK;
}

/* ================================================================ open / free */

void ts_data_loader_default_options(ts_data_loader_options *o, int batch, int seq_len, uint64_t seed) {
    memset(o, 0, sizeof *o);
    o->batch = batch;
    o->seq_len = seq_len;
    o->seed = seed;
    o->shuffle = true;
    o->pad_id = TS_BYTE_PAD;
}

void ts_data_loader_free(ts_data_loader *l) {
    if (!l) return;
    for (size_t i = 0; l->shards && i < l->n_shards; i++) ts_shard_close(l->shards[i]);
    free(l->shards);
    free(l->shard_doc_base);
    free(l->order);
    free(l->inputs);
    free(l->targets);
    free(l->positions);
    free(l->doc_start);
    free(l->segments);
    free(l->doc_ids);
    free(l);
}

static ts_status open_shards(ts_data_loader *l, const char *const *paths, ts_io_error *err) {
    uint64_t fp_words[4];
    l->fingerprint = mix64(l->n_shards);
    for (size_t i = 0; i < l->n_shards; i++) {
        ts_status st = ts_shard_open(paths[i], l->opts.open_flags, &l->shards[i], err);
        if (st != TS_OK) return st;
        const ts_shard_info *info = ts_shard_get_info(l->shards[i]);
        if (i == 0) l->vocab_size = info->vocab_size;
        if (info->vocab_size != l->vocab_size)
            return ts_io_set_error(err, TS_ERR_FORMAT, "%s: vocab size %u differs from %s's %u", paths[i],
                                   info->vocab_size, paths[0], l->vocab_size);
        l->shard_doc_base[i] = l->n_docs;
        l->n_docs += info->n_docs;
        l->n_tokens += info->n_tokens;
        /* The fingerprint chains what identifies each shard's content, in order. */
        fp_words[0] = info->n_tokens;
        fp_words[1] = info->n_docs;
        fp_words[2] = info->payload_checksum;
        fp_words[3] = info->vocab_size;
        l->fingerprint = ts_xxh64(fp_words, sizeof fp_words, l->fingerprint);
    }
    l->shard_doc_base[l->n_shards] = l->n_docs;
    if (l->n_docs == 0) return ts_io_set_error(err, TS_ERR_FORMAT, "%s: the shards hold no documents", paths[0]);
    if (l->opts.pad_id < 0 || (uint32_t)l->opts.pad_id >= l->vocab_size)
        return ts_io_set_error(err, TS_ERR_INVALID_ARG, "data loader: pad id %d is outside vocab size %u",
                               l->opts.pad_id, l->vocab_size);
    return TS_OK;
}

static bool alloc_buffers(ts_data_loader *l) {
    size_t n = (size_t)l->opts.batch * (size_t)l->opts.seq_len;
    l->order = malloc(l->n_docs * sizeof *l->order);
    l->inputs = malloc(n * sizeof *l->inputs);
    l->targets = malloc(n * sizeof *l->targets);
    l->positions = malloc(n * sizeof *l->positions);
    l->doc_start = malloc(n * sizeof *l->doc_start);
    l->segments = malloc(n * sizeof *l->segments);
    l->doc_ids = malloc(n * sizeof *l->doc_ids);
    if (!l->order || !l->inputs || !l->targets || !l->positions || !l->doc_start || !l->segments || !l->doc_ids)
        return false;
    l->batch = (ts_batch){.batch = l->opts.batch, .seq_len = l->opts.seq_len, .inputs = l->inputs,
                          .targets = l->targets, .positions = l->positions, .doc_start = l->doc_start,
                          .segments = l->segments, .doc_ids = l->doc_ids};
    return true;
}

ts_status ts_data_loader_open(const char *const *paths, size_t n_paths, const ts_data_loader_options *opts,
                              ts_data_loader **out, ts_io_error *err) {
    if (!paths || n_paths == 0 || !opts || !out)
        return ts_io_set_error(err, TS_ERR_INVALID_ARG, "data loader: shard paths, options and out are required");
    if (opts->batch < 1 || opts->seq_len < 1 || (int64_t)opts->batch * opts->seq_len > INT32_MAX)
        return ts_io_set_error(err, TS_ERR_INVALID_ARG, "data loader: batch %d x seq_len %d is not a valid shape",
                               opts->batch, opts->seq_len);
    *out = NULL;
    ts_data_loader *l = calloc(1, sizeof *l);
    if (!l) return ts_io_set_error(err, TS_ERR_OOM, "data loader: out of memory");
    l->opts = *opts;
    if (l->opts.single_pass) l->opts.shuffle = false;
    l->n_shards = n_paths;
    l->shards = calloc(n_paths, sizeof *l->shards);
    l->shard_doc_base = calloc(n_paths + 1, sizeof *l->shard_doc_base);
    ts_status st = (l->shards && l->shard_doc_base) ? open_shards(l, paths, err)
                                                    : ts_io_set_error(err, TS_ERR_OOM, "data loader: out of memory");
    if (st == TS_OK && !alloc_buffers(l))
        st = ts_io_set_error(err, TS_ERR_OOM, "data loader: out of memory for %llu documents and %d x %d batches",
                             (unsigned long long)l->n_docs, opts->batch, opts->seq_len);
    if (st != TS_OK) {
        ts_data_loader_free(l);
        return st;
    }
    ts_data_loader_rewind(l);
    *out = l;
    return TS_OK;
}

uint64_t ts_data_loader_tokens(const ts_data_loader *l) { return l->n_tokens; }
uint64_t ts_data_loader_docs(const ts_data_loader *l) { return l->n_docs; }
uint32_t ts_data_loader_vocab_size(const ts_data_loader *l) { return l->vocab_size; }
