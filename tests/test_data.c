/* test_data.c - the data pipeline of data.h: XXH64 against the reference vectors; token shards
 * round-trip (u16 and u32 tokens) and every kind of corruption gives the right status and a
 * message naming the file and the fault; prepare turns a directory of text and JSONL files
 * (with malformed lines) into the expected documents with a stable split; the loader packs
 * without losing or repeating a token in an epoch, restarts positions at document starts, gets
 * targets right and resumes exactly from a saved position; the synthetic dataset is
 * deterministic, disjoint between train and validation, and every answer is right (checked by
 * an independent solver here); the evaluator scores an oracle 100 % and guessing ~0 %. */
#define _XOPEN_SOURCE 700
#include <ftw.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "check.h"
#include "files.h"
#include "tessera/data.h"

/* ================================================================ helpers */

#define CHECK_STATUS(expr, want, err)                                                                        \
    do {                                                                                                     \
        ts_status got_ = (expr);                                                                             \
        CHECK(got_ == (want), "%s -> %s (wanted %s): %s", #expr, ts_status_name(got_), ts_status_name(want), \
              (err).message);                                                                                \
    } while (0)

#define CHECK_MSG(err, needle) \
    CHECK(strstr((err).message, (needle)) != NULL, "message lacks \"%s\": %s", (needle), (err).message)

static char tmp_dir[256];

static const char *tmp_path(const char *name) {
    static char buf[8][600];
    static int next;
    char *p = buf[next++ % 8];
    snprintf(p, sizeof buf[0], "%s/%s", tmp_dir, name);
    return p;
}

static void write_text(const char *path, const char *text) { test_write_file(path, text, strlen(text)); }

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st, (void)flag, (void)ftw;
    return remove(path);
}

static uint64_t get_le(const unsigned char *p, int bytes) {
    uint64_t v = 0;
    for (int i = bytes - 1; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}

static void put_le(unsigned char *p, uint64_t v, int bytes) {
    for (int i = 0; i < bytes; i++) p[i] = (unsigned char)(v >> (8 * i));
}

/* Recomputes both checksums of a shard image, so a test can plant a fault that only the deeper
 * checks (document index, token range) can catch. */
static void fix_checksums(unsigned char *img, size_t len) {
    put_le(img + 48, ts_xxh64(img + 64, len - 64, 0), 8);
    put_le(img + 56, (uint32_t)ts_xxh64(img, 56, 0), 4);
}

/* Opens a shard expecting failure `want`; the message must name the file and contain needle. */
static void expect_open_fails(const char *path, ts_status want, const char *needle) {
    ts_io_error err = {0};
    ts_shard *s = NULL;
    CHECK_STATUS(ts_shard_open(path, 0, &s, &err), want, err);
    CHECK(s == NULL, "failed open must not return a shard (%s)", path);
    CHECK_MSG(err, path);
    CHECK_MSG(err, needle);
    ts_shard_close(s);
}

/* ================================================================ checksum, byte vocabulary */

static void test_xxh64(void) {
    CHECK(ts_xxh64("", 0, 0) == 0xEF46DB3751D8E999ull, "empty");
    CHECK(ts_xxh64("a", 1, 0) == 0xD24EC4F1A98C6E5Bull, "a");
    CHECK(ts_xxh64("abc", 3, 0) == 0x44BC2CF5AD770999ull, "abc");
    CHECK(ts_xxh64("Call me Ishmael.", 16, 0) == 0x6D04390FC9D61A90ull, "16 bytes");
    const char *long_text = "Nobody inspects the spammish repetition"; /* 39 bytes: stripes + tail */
    CHECK(ts_xxh64(long_text, strlen(long_text), 0) == 0xFBCEA83C8A378BF1ull, "39 bytes");
    CHECK(ts_xxh64("abc", 3, 1) != ts_xxh64("abc", 3, 0), "the seed matters");
}

static void test_byte_vocabulary(void) {
    CHECK(TS_BYTE_VOCAB_SIZE == 264 && TS_BYTE_BOS == 0 && TS_BYTE_EOS == 1 && TS_BYTE_PAD == 2 && TS_BYTE_OFFSET == 3,
          "spec 7.1 layout");
    const char text[] = "A\xff\x00z";
    uint32_t ids[8];
    size_t n = 0;
    CHECK(ts_byte_encode(NULL, text, 4, ids, 8, &n) == TS_OK && n == 4, "encode");
    CHECK(ids[0] == 'A' + 3u && ids[1] == 258 && ids[2] == 3 && ids[3] == 'z' + 3u, "ids %u %u %u %u", ids[0], ids[1],
          ids[2], ids[3]);
    CHECK(ts_byte_encode(NULL, text, 4, ids, 3, &n) == TS_ERR_RANGE && n == 4, "too small a buffer asks for 4");
    int32_t doc[] = {TS_BYTE_BOS, 'h' + 3, 'i' + 3, TS_BYTE_PAD, 260, TS_BYTE_EOS};
    char out[8];
    CHECK(ts_byte_decode(doc, 6, out, sizeof out) == 2 && strcmp(out, "hi") == 0, "decode skips specials: %s", out);
    CHECK(ts_byte_decode(doc, 6, out, 2) == 1 && strcmp(out, "h") == 0, "decode respects cap");
}

/* ================================================================ shards */

/* Writes docs given as ids with lengths; returns the status of finish. */
static ts_status write_shard(const char *path, uint32_t vocab, const uint32_t *ids, const size_t *lens, size_t n_docs) {
    ts_io_error err = {0};
    ts_shard_writer *w = NULL;
    ts_status st = ts_shard_writer_new(path, vocab, &w, &err);
    for (size_t d = 0; d < n_docs && st == TS_OK; d++) {
        st = ts_shard_writer_add(w, ids, lens[d], &err);
        ids += lens[d];
    }
    if (st != TS_OK) {
        ts_shard_writer_abort(w);
        return st;
    }
    return ts_shard_writer_finish(w, &err);
}

static void check_round_trip(const char *name, uint32_t vocab, uint32_t token_bytes) {
    const size_t lens[] = {3, 1, 5};
    uint32_t ids[9];
    for (int i = 0; i < 9; i++) ids[i] = (uint32_t)((vocab - 1) - (uint32_t)i * 7 % vocab);
    const char *path = tmp_path(name);
    CHECK(write_shard(path, vocab, ids, lens, 3) == TS_OK, "write %s", name);
    ts_io_error err = {0};
    ts_shard *s = NULL;
    CHECK_STATUS(ts_shard_open(path, 0, &s, &err), TS_OK, err);
    if (!s) return;
    const ts_shard_info *info = ts_shard_get_info(s);
    CHECK(info->version == 1 && info->token_bytes == token_bytes && info->vocab_size == vocab && info->n_tokens == 9 &&
              info->n_docs == 3,
          "%s info: v%u %u-byte vocab %u, %llu tokens, %llu docs", name, info->version, info->token_bytes,
          info->vocab_size, (unsigned long long)info->n_tokens, (unsigned long long)info->n_docs);
    bool same = true;
    for (int i = 0; i < 9; i++) same = same && ts_shard_token(s, (uint64_t)i) == ids[i];
    CHECK(same, "%s tokens round-trip", name);
    int32_t got[5];
    ts_shard_read(s, 4, 5, got);
    CHECK(got[0] == (int32_t)ids[4] && got[4] == (int32_t)ids[8], "%s read", name);
    CHECK(ts_shard_doc_start(s, 0) == 0 && ts_shard_doc_start(s, 1) == 3 && ts_shard_doc_start(s, 2) == 4 &&
              ts_shard_doc_start(s, 3) == 9,
          "%s document index", name);
    CHECK(strcmp(ts_shard_path(s), path) == 0, "path");
    ts_shard_close(s);
    size_t len = 0;
    unsigned char *img = (unsigned char *)test_read_file(path, &len);
    size_t index_at = (64 + 9 * token_bytes + 7) / 8 * 8;
    CHECK(img && len == index_at + 4 * 8, "%s file size %zu", name, len);
    CHECK(img && memcmp(img, "TSSHARD", 8) == 0, "magic");
    CHECK(img && get_le(img + 48, 8) == ts_xxh64(img + 64, len - 64, 0), "payload checksum is plain XXH64 of the payload");
    free(img);
}

static void test_shard_round_trip(void) {
    check_round_trip("u16.tshard", TS_BYTE_VOCAB_SIZE, 2);
    check_round_trip("u16max.tshard", 65536, 2);
    check_round_trip("u32.tshard", 100000, 4);

    /* An empty shard is valid (prepare writes one for an empty split). */
    CHECK(write_shard(tmp_path("empty.tshard"), 264, NULL, NULL, 0) == TS_OK, "write empty");
    ts_io_error err = {0};
    ts_shard *s = NULL;
    CHECK_STATUS(ts_shard_open(tmp_path("empty.tshard"), 0, &s, &err), TS_OK, err);
    CHECK(s && ts_shard_get_info(s)->n_docs == 0 && ts_shard_get_info(s)->n_tokens == 0, "empty shard");
    ts_shard_close(s);

    /* The writer refuses bad input and keeps what it had. */
    ts_shard_writer *w = NULL;
    CHECK_STATUS(ts_shard_writer_new(tmp_path("w.tshard"), 264, &w, &err), TS_OK, err);
    uint32_t good[] = {5, 6}, bad[] = {5, 264};
    CHECK_STATUS(ts_shard_writer_add(w, good, 2, &err), TS_OK, err);
    CHECK_STATUS(ts_shard_writer_add(w, bad, 2, &err), TS_ERR_RANGE, err);
    CHECK_MSG(err, "token 264 at position 1");
    CHECK_STATUS(ts_shard_writer_add(w, good, 0, &err), TS_ERR_INVALID_ARG, err);
    CHECK(ts_shard_writer_docs(w) == 1 && ts_shard_writer_tokens(w) == 2, "failed adds leave the writer unchanged");
    ts_shard_writer_abort(w);
    CHECK(access(tmp_path("w.tshard"), F_OK) != 0, "abort writes nothing");
}

static void test_shard_corruption(void) {
    const size_t lens[] = {4, 2, 3};
    uint32_t ids[9] = {0, 10, 11, 1, 0, 1, 0, 200, 1};
    const char *good = tmp_path("good.tshard");
    CHECK(write_shard(good, 264, ids, lens, 3) == TS_OK, "write");
    size_t len = 0;
    unsigned char *img = (unsigned char *)test_read_file(good, &len);
    if (!img) return;
    unsigned char *bad = malloc(len + 16);
    const char *path = tmp_path("bad.tshard");

    expect_open_fails(tmp_path("missing.tshard"), TS_ERR_IO, "cannot open");
    test_write_file(path, "", 0);
    expect_open_fails(path, TS_ERR_FORMAT, "bad magic");

    memcpy(bad, img, len);
    bad[0] = 'X';
    test_write_file(path, bad, len);
    expect_open_fails(path, TS_ERR_FORMAT, "bad magic");

    memcpy(bad, img, len);
    put_le(bad + 8, 2, 4); /* a future version, header checksum made consistent */
    fix_checksums(bad, len);
    test_write_file(path, bad, len);
    expect_open_fails(path, TS_ERR_UNSUPPORTED, "version 2 is newer");

    memcpy(bad, img, len);
    bad[20] ^= 1; /* vocab size changed, header checksum not updated */
    test_write_file(path, bad, len);
    expect_open_fails(path, TS_ERR_FORMAT, "header checksum mismatch");

    test_write_file(path, img, 40);
    expect_open_fails(path, TS_ERR_FORMAT, "truncated");
    test_write_file(path, img, len - 8);
    expect_open_fails(path, TS_ERR_FORMAT, "truncated");

    memcpy(bad, img, len);
    memset(bad + len, 0, 8);
    test_write_file(path, bad, len + 8);
    expect_open_fails(path, TS_ERR_FORMAT, "trailing data");

    memcpy(bad, img, len);
    put_le(bad + 24, (uint64_t)1 << 60, 8); /* absurd token count, checksums consistent */
    fix_checksums(bad, len);
    test_write_file(path, bad, len);
    expect_open_fails(path, TS_ERR_FORMAT, "truncated");

    memcpy(bad, img, len);
    bad[64 + 2 * 7] ^= 0x40; /* one token byte flipped */
    test_write_file(path, bad, len);
    expect_open_fails(path, TS_ERR_FORMAT, "payload checksum mismatch");
    /* Skipping the scan trusts the payload (structure still checked). */
    ts_io_error err = {0};
    ts_shard *s = NULL;
    CHECK_STATUS(ts_shard_open(path, TS_SHARD_OPEN_SKIP_SCAN, &s, &err), TS_OK, err);
    ts_shard_close(s);

    memcpy(bad, img, len);
    put_le(bad + 64 + 2 * 7, 300, 2); /* token 7 = 300 >= 264, checksums consistent */
    fix_checksums(bad, len);
    test_write_file(path, bad, len);
    expect_open_fails(path, TS_ERR_RANGE, "token 300 at position 7 is out of range for vocab size 264");

    size_t index_at = (64 + 9 * 2 + 7) / 8 * 8;
    memcpy(bad, img, len);
    put_le(bad + index_at + 8 * 1, 3, 8); /* documents [0, 3), [3, 3) (empty), [3, 9) */
    put_le(bad + index_at + 8 * 2, 3, 8);
    fix_checksums(bad, len);
    test_write_file(path, bad, len);
    expect_open_fails(path, TS_ERR_FORMAT, "document 1 spans tokens [3, 3)");

    memcpy(bad, img, len);
    put_le(bad + index_at + 8 * 3, 8, 8); /* documents end before the tokens do */
    fix_checksums(bad, len);
    test_write_file(path, bad, len);
    expect_open_fails(path, TS_ERR_FORMAT, "documents end at token 8");

    memcpy(bad, img, len);
    put_le(bad + 16, 3, 4); /* token width 3 */
    fix_checksums(bad, len);
    test_write_file(path, bad, len);
    expect_open_fails(path, TS_ERR_FORMAT, "token width 3");

    free(bad);
    free(img);
}

/* ================================================================ prepare */

typedef struct {
    int count;
    char first[TS_IO_ERROR_MAX];
    char all[2048];
} warnings;

static void collect_warning(void *user, const char *message) {
    warnings *w = user;
    if (w->count++ == 0) snprintf(w->first, sizeof w->first, "%s", message);
    size_t used = strlen(w->all);
    snprintf(w->all + used, sizeof w->all - used, "%s\n", message);
}

/* The documents of a split, decoded to text (BOS/EOS stripped), in shard order. */
typedef struct {
    char text[32][128];
    int n;
    bool framed; /* every document was BOS ... EOS */
} doc_set;

static void read_split(const char *dir, const char *split, doc_set *out) {
    memset(out, 0, sizeof *out);
    out->framed = true;
    char **paths = NULL;
    size_t n = 0;
    ts_io_error err = {0};
    CHECK_STATUS(ts_shard_list(dir, split, &paths, &n, &err), TS_OK, err);
    for (size_t i = 0; i < n; i++) {
        ts_shard *s = NULL;
        CHECK_STATUS(ts_shard_open(paths[i], 0, &s, &err), TS_OK, err);
        if (!s) continue;
        for (uint64_t d = 0; d < ts_shard_get_info(s)->n_docs && out->n < 32; d++) {
            uint64_t a = ts_shard_doc_start(s, d), b = ts_shard_doc_start(s, d + 1);
            int32_t ids[256];
            size_t k = (size_t)(b - a) < 256 ? (size_t)(b - a) : 256;
            ts_shard_read(s, a, k, ids);
            out->framed = out->framed && ids[0] == TS_BYTE_BOS && ids[k - 1] == TS_BYTE_EOS;
            ts_byte_decode(ids, k, out->text[out->n++], 128);
        }
        ts_shard_close(s);
    }
    ts_shard_list_free(paths, n);
}

static bool doc_set_has(const doc_set *s, const char *text) {
    for (int i = 0; i < s->n; i++)
        if (strcmp(s->text[i], text) == 0) return true;
    return false;
}

static void make_prepare_inputs(const char *in) {
    mkdir(in, 0777);
    char path[700];
    snprintf(path, sizeof path, "%s/a.txt", in);
    /* 3 documents: blank lines between (several, whitespace-only, CRLF); leading blank lines */
    write_text(path, "\n\nfirst line\nsecond line\n\n  \t \n\nthird doc\r\nstill third\r\n\r\nlast one");
    snprintf(path, sizeof path, "%s/b.jsonl", in);
    write_text(path,
               "{\"text\": \"json one\", \"id\": 1}\n"
               "{\"text\": \"json two\\nwith newline\"}\n"
               "{bad json\n"
               "\n"
               "{\"title\": \"no text field\"}\n"
               "[\"not\", \"an object\"]\n"
               "{\"text\": 42}\n"
               "{\"text\": \"   \"}\n"
               "{\"text\": \"json three\"}\n"
               "{\"text\": \"json four \\u00e9\"}");
    snprintf(path, sizeof path, "%s/.hidden.txt", in);
    write_text(path, "must be skipped");
}

static const char *const EXPECTED_DOCS[] = {"first line\nsecond line", "third doc\nstill third", "last one",
                                            "json one", "json two\nwith newline", "json three",
                                            "json four \xc3\xa9"};
#define N_EXPECTED_DOCS 7

/* An encoder with 2 ids per byte (id = 3 + 2 * byte + bit), to exercise the retry on a
 * too-small buffer and a vocabulary that is not the byte one. */
static int double_encode(void *ctx, const char *text, size_t len, uint32_t *out, size_t cap, size_t *n_out) {
    (void)ctx;
    *n_out = 2 * len;
    if (2 * len > cap) return TS_ERR_RANGE;
    for (size_t i = 0; i < len; i++) {
        out[2 * i] = 3 + 2u * (unsigned char)text[i];
        out[2 * i + 1] = 4 + 2u * (unsigned char)text[i];
    }
    return TS_OK;
}

static void test_prepare(void) {
    const char *in = tmp_path("prep_in");
    make_prepare_inputs(in);
    const char *out1 = tmp_path("prep_out1");
    const char *inputs[] = {in};
    warnings warn = {0};
    ts_prepare_options o;
    ts_prepare_default_options(&o);
    o.inputs = inputs;
    o.n_inputs = 1;
    o.out_dir = out1;
    o.val_fraction = 0.4;
    o.split_seed = 7;
    o.warn = collect_warning;
    o.warn_user = &warn;
    ts_prepare_result r;
    ts_io_error err = {0};
    CHECK_STATUS(ts_data_prepare(&o, &r, &err), TS_OK, err);
    CHECK(r.files == 2, "files %llu (the hidden one is skipped)", (unsigned long long)r.files);
    CHECK(r.train_docs + r.val_docs == N_EXPECTED_DOCS, "docs %llu + %llu", (unsigned long long)r.train_docs,
          (unsigned long long)r.val_docs);
    CHECK(r.bad_lines == 4 && warn.count == 4, "bad lines %llu, warnings %d", (unsigned long long)r.bad_lines, warn.count);
    CHECK(r.empty_docs == 1, "empty docs %llu", (unsigned long long)r.empty_docs);
    CHECK(strstr(warn.all, "b.jsonl:3: invalid JSON") && strstr(warn.all, "b.jsonl:5: no \"text\" field") &&
              strstr(warn.all, "b.jsonl:6: not a JSON object") && strstr(warn.all, "b.jsonl:7: field \"text\" is not a string"),
          "warnings name file and line:\n%s", warn.all);
    CHECK(r.train_shards == 1 && r.val_shards == 1, "one shard per split");

    /* Every expected document is in the split its hash says, with BOS/EOS around it. */
    doc_set train, val;
    read_split(out1, "train", &train);
    read_split(out1, "val", &val);
    int expect_val = 0;
    uint64_t expect_tokens = 0;
    for (int i = 0; i < N_EXPECTED_DOCS; i++) {
        const char *t = EXPECTED_DOCS[i];
        bool is_val = (double)(ts_xxh64(t, strlen(t), 7) >> 11) * 0x1.0p-53 < 0.4;
        expect_val += is_val;
        expect_tokens += strlen(t) + 2;
        CHECK(doc_set_has(is_val ? &val : &train, t), "\"%s\" should be in %s", t, is_val ? "val" : "train");
    }
    CHECK(r.val_docs == (uint64_t)expect_val && val.n == expect_val && train.n == N_EXPECTED_DOCS - expect_val,
          "split counts: val %d expected %d", val.n, expect_val);
    CHECK(expect_val > 0 && expect_val < N_EXPECTED_DOCS, "seed 7 gives both splits documents (%d val)", expect_val);
    CHECK(r.train_tokens + r.val_tokens == expect_tokens, "tokens %llu, expected %llu",
          (unsigned long long)(r.train_tokens + r.val_tokens), (unsigned long long)expect_tokens);
    CHECK(train.framed && val.framed, "documents are BOS ... EOS");

    /* Refuses to mix with an earlier run... */
    CHECK_STATUS(ts_data_prepare(&o, &r, &err), TS_ERR_STATE, err);
    CHECK_MSG(err, "already holds");

    /* ...and with overwrite, the split is the same for every document whatever the input order
     * (files given one by one, reversed) and however the shards are cut. */
    char a_txt[700], b_jsonl[700];
    snprintf(a_txt, sizeof a_txt, "%s/a.txt", in);
    snprintf(b_jsonl, sizeof b_jsonl, "%s/b.jsonl", in);
    const char *reversed[] = {b_jsonl, a_txt};
    o.inputs = reversed;
    o.n_inputs = 2;
    o.overwrite = true;
    o.max_shard_tokens = 20; /* about one document per shard */
    o.warn = NULL;
    CHECK_STATUS(ts_data_prepare(&o, &r, &err), TS_OK, err);
    CHECK(r.train_shards + r.val_shards > 2, "small shards roll over: %u + %u", r.train_shards, r.val_shards);
    doc_set train2, val2;
    read_split(out1, "train", &train2);
    read_split(out1, "val", &val2);
    bool stable = train2.n == train.n && val2.n == val.n;
    for (int i = 0; i < train.n; i++) stable = stable && doc_set_has(&train2, train.text[i]);
    for (int i = 0; i < val.n; i++) stable = stable && doc_set_has(&val2, val.text[i]);
    CHECK(stable, "split is stable across input order and shard size");

    /* A smaller rerun removes the larger run's leftover shards. */
    o.max_shard_tokens = 0;
    CHECK_STATUS(ts_data_prepare(&o, &r, &err), TS_OK, err);
    char **paths = NULL;
    size_t n = 0;
    CHECK_STATUS(ts_shard_list(out1, "train", &paths, &n, &err), TS_OK, err);
    CHECK(n == 1, "stale shards removed: %zu left", n);
    ts_shard_list_free(paths, n);

    /* Strict mode: the first bad line fails the run, naming file and line. */
    o.jsonl_strict = true;
    CHECK_STATUS(ts_data_prepare(&o, &r, &err), TS_ERR_FORMAT, err);
    CHECK_MSG(err, "b.jsonl:3: invalid JSON");

    /* One document per file. */
    ts_prepare_default_options(&o);
    o.inputs = inputs;
    o.n_inputs = 1;
    o.out_dir = tmp_path("prep_out2");
    o.text_split = TS_TEXT_DOC_PER_FILE;
    o.val_fraction = 0.0;
    CHECK_STATUS(ts_data_prepare(&o, &r, &err), TS_OK, err);
    CHECK(r.train_docs == 1 + 4 && r.val_docs == 0, "a.txt whole + 4 JSONL docs: %llu / %llu",
          (unsigned long long)r.train_docs, (unsigned long long)r.val_docs);

    /* Another tokenizer: two ids per byte, vocab 600, no BOS; a 5000-byte document makes the
     * encoder ask for a larger buffer. */
    char long_dir[700], long_txt[720];
    snprintf(long_dir, sizeof long_dir, "%s", tmp_path("prep_long"));
    snprintf(long_txt, sizeof long_txt, "%s/long.txt", long_dir);
    mkdir(long_dir, 0777);
    char *long_doc = malloc(5001);
    memset(long_doc, 'x', 5000);
    long_doc[5000] = '\0';
    write_text(long_txt, long_doc);
    free(long_doc);
    ts_prepare_default_options(&o);
    o.inputs = (const char *const[]){a_txt, long_txt};
    o.n_inputs = 2;
    o.out_dir = tmp_path("prep_out3");
    o.encode = double_encode;
    o.vocab_size = 600;
    o.bos_id = -1;
    o.eos_id = 599;
    o.val_fraction = 0.0;
    CHECK_STATUS(ts_data_prepare(&o, &r, &err), TS_OK, err);
    size_t a_bytes = strlen(EXPECTED_DOCS[0]) + strlen(EXPECTED_DOCS[1]) + strlen(EXPECTED_DOCS[2]);
    CHECK(r.train_docs == 4 && r.train_tokens == 2 * (a_bytes + 5000) + 4, "custom encoder tokens %llu",
          (unsigned long long)r.train_tokens);
    /* An encoder producing ids beyond the vocabulary is an error naming the input. */
    o.vocab_size = 200; /* "f" encodes to 207 */
    o.eos_id = 1;
    o.overwrite = true;
    CHECK_STATUS(ts_data_prepare(&o, &r, &err), TS_ERR_RANGE, err);
    CHECK_MSG(err, "a.txt:");

    /* Missing input. */
    ts_prepare_default_options(&o);
    o.inputs = (const char *const[]){tmp_path("nope")};
    o.n_inputs = 1;
    o.out_dir = tmp_path("prep_out4");
    CHECK_STATUS(ts_data_prepare(&o, NULL, &err), TS_ERR_IO, err);
    CHECK_MSG(err, "nope");
}

/* ================================================================ loader */

/* Two shards, u32 tokens, every token id unique (10 + its global position) so a token tells
 * which document and offset it came from. */
#define L_DOCS 37
#define L_VOCAB 2000
static size_t l_len[L_DOCS];
static uint64_t l_first[L_DOCS + 1];        /* global first token id - 10 of each doc */
static int l_doc_of[L_VOCAB], l_off_of[L_VOCAB];
static uint64_t l_total;

static void make_loader_shards(const char *p0, const char *p1) {
    uint32_t ids[L_VOCAB];
    for (int d = 0; d < L_DOCS; d++) l_len[d] = 1 + (size_t)(d * 7 % 23); /* 1..23 tokens, some single */
    l_total = 0;
    for (int d = 0; d < L_DOCS; d++) {
        l_first[d] = l_total;
        for (size_t j = 0; j < l_len[d]; j++) {
            ids[l_total] = (uint32_t)(10 + l_total);
            l_doc_of[10 + l_total] = d;
            l_off_of[10 + l_total] = (int)j;
            l_total++;
        }
    }
    l_first[L_DOCS] = l_total;
    const int split = 20; /* documents 0..19 in shard 0, the rest in shard 1 */
    CHECK(write_shard(p0, L_VOCAB, ids, l_len, split) == TS_OK, "shard 0");
    CHECK(write_shard(p1, L_VOCAB, ids + l_first[split], l_len + split, L_DOCS - split) == TS_OK, "shard 1");
}

/* Checks everything a batch promises about every token, given the token ids are unique. */
static bool batch_consistent(const ts_batch *b) {
    bool ok = true;
    for (int row = 0; row < b->batch; row++) {
        const int64_t base = (int64_t)row * b->seq_len;
        for (int t = 0; t < b->seq_len; t++) {
            int64_t i = base + t;
            int32_t tok = b->inputs[i];
            if (b->doc_ids[i] < 0) { /* padding */
                ok = ok && tok == TS_BYTE_PAD && b->targets[i] == TS_TARGET_IGNORE && b->doc_start[i] == t &&
                     b->positions[i] == 0 && b->segments[i] == -1;
                continue;
            }
            int d = l_doc_of[tok], off = l_off_of[tok];
            ok = ok && d == b->doc_ids[i];
            bool last = (size_t)off + 1 == l_len[d];
            ok = ok && b->targets[i] == (last ? TS_TARGET_IGNORE : tok + 1);
            ok = ok && b->positions[i] == t - b->doc_start[i] && b->doc_start[i] <= t;
            bool same_as_prev = t > 0 && b->doc_ids[i - 1] == d && b->segments[i - 1] == b->segments[i];
            if (off == 0 || t == 0) { /* a document's first token, or the row's: a new segment */
                ok = ok && b->doc_start[i] == t && b->positions[i] == 0;
                ok = ok && b->segments[i] == (t == 0 ? 0 : b->segments[i - 1] + 1);
            } else {
                ok = ok && same_as_prev && b->inputs[i - 1] == tok - 1 && b->doc_start[i] == b->doc_start[i - 1];
            }
        }
    }
    return ok;
}

static bool batches_equal(const ts_batch *a, const ts_batch *b) {
    size_t n = (size_t)a->batch * (size_t)a->seq_len;
    return a->batch == b->batch && a->seq_len == b->seq_len && a->epoch == b->epoch && a->n_tokens == b->n_tokens &&
           a->n_targets == b->n_targets && memcmp(a->inputs, b->inputs, n * 4) == 0 &&
           memcmp(a->targets, b->targets, n * 4) == 0 && memcmp(a->positions, b->positions, n * 4) == 0 &&
           memcmp(a->doc_start, b->doc_start, n * 4) == 0 && memcmp(a->segments, b->segments, n * 4) == 0 &&
           memcmp(a->doc_ids, b->doc_ids, n * 8) == 0;
}

/* Copies of a batch's arrays, to compare batches from different loaders. */
typedef struct {
    ts_batch b;
    int32_t in[5][64];
    int64_t ids[64];
} batch_copy;

static void copy_batch(batch_copy *c, const ts_batch *b) {
    size_t n = (size_t)b->batch * (size_t)b->seq_len;
    c->b = *b;
    memcpy(c->in[0], b->inputs, n * 4);
    memcpy(c->in[1], b->targets, n * 4);
    memcpy(c->in[2], b->positions, n * 4);
    memcpy(c->in[3], b->doc_start, n * 4);
    memcpy(c->in[4], b->segments, n * 4);
    memcpy(c->ids, b->doc_ids, n * 8);
    c->b.inputs = c->in[0];
    c->b.targets = c->in[1];
    c->b.positions = c->in[2];
    c->b.doc_start = c->in[3];
    c->b.segments = c->in[4];
    c->b.doc_ids = c->ids;
}

static void test_loader_epoch(const char *const *paths) {
    ts_data_loader_options o;
    ts_data_loader_default_options(&o, 3, 16, 42);
    ts_data_loader *l = NULL;
    ts_io_error err = {0};
    CHECK_STATUS(ts_data_loader_open(paths, 2, &o, &l, &err), TS_OK, err);
    if (!l) return;
    CHECK(ts_data_loader_docs(l) == L_DOCS && ts_data_loader_tokens(l) == l_total && ts_data_loader_vocab_size(l) == L_VOCAB,
          "sizes");
    /* The first l_total input tokens of the stream are exactly epoch 0: each token once. */
    int seen[L_VOCAB] = {0};
    uint64_t taken = 0, targets = 0;
    bool consistent = true, epochs_ok = true, shuffled = false;
    int64_t prev_tok = -1;
    int n_batches = 0;
    while (taken < 3 * l_total) {
        const ts_batch *b = ts_data_loader_next(l);
        consistent = consistent && batch_consistent(b);
        n_batches++;
        for (int i = 0; i < b->batch * b->seq_len; i++, taken++) {
            if (taken < l_total) {
                seen[b->inputs[i]]++;
                targets += b->targets[i] != TS_TARGET_IGNORE;
                if (prev_tok >= 0 && b->inputs[i] != prev_tok + 1) shuffled = shuffled || l_off_of[b->inputs[i]] == 0;
                prev_tok = b->inputs[i];
            }
        }
        epochs_ok = epochs_ok && b->epoch == (taken - (uint64_t)(b->batch * b->seq_len)) / l_total;
        CHECK(b->n_tokens == b->batch * b->seq_len, "training batches are never padded");
    }
    bool once = true;
    for (uint64_t t = 0; t < l_total; t++) once = once && seen[10 + t] == 1;
    CHECK(once, "epoch 0 holds every token exactly once");
    CHECK(targets == l_total - L_DOCS, "targets: every token but each document's last (%llu)", (unsigned long long)targets);
    CHECK(consistent, "every token's target, position, doc_start and segment are right");
    CHECK(epochs_ok, "batch epoch numbers");
    CHECK(shuffled, "documents are not in file order");
    ts_data_loader_free(l);
}

static void test_loader_order(const char *const *paths) {
    ts_io_error err = {0};
    ts_data_loader_options o;
    ts_data_loader *a = NULL, *b = NULL, *c = NULL, *plain = NULL;
    ts_data_loader_default_options(&o, 2, 8, 5);
    CHECK_STATUS(ts_data_loader_open(paths, 2, &o, &a, &err), TS_OK, err);
    CHECK_STATUS(ts_data_loader_open(paths, 2, &o, &b, &err), TS_OK, err);
    o.seed = 6;
    CHECK_STATUS(ts_data_loader_open(paths, 2, &o, &c, &err), TS_OK, err);
    o.shuffle = false;
    CHECK_STATUS(ts_data_loader_open(paths, 2, &o, &plain, &err), TS_OK, err);
    if (!a || !b || !c || !plain) return;
    bool same = true, differs = false;
    for (int i = 0; i < 40; i++) {
        const ts_batch *ba = ts_data_loader_next(a), *bb = ts_data_loader_next(b), *bc = ts_data_loader_next(c);
        same = same && batches_equal(ba, bb);
        differs = differs || memcmp(ba->inputs, bc->inputs, 16 * 4) != 0;
    }
    CHECK(same, "same seed, same batches");
    CHECK(differs, "another seed, another order");
    /* Without shuffling the stream is the file order: token ids 10, 11, 12, ... */
    bool in_order = true;
    int64_t expect = 10;
    for (int i = 0; i < 10; i++) {
        const ts_batch *bp = ts_data_loader_next(plain);
        for (int j = 0; j < 16; j++) {
            in_order = in_order && bp->inputs[j] == expect;
            expect = expect + 1 == 10 + (int64_t)l_total ? 10 : expect + 1;
        }
    }
    CHECK(in_order, "unshuffled order is file order, wrapping at the epoch end");
    ts_data_loader_free(a);
    ts_data_loader_free(b);
    ts_data_loader_free(c);
    ts_data_loader_free(plain);
}

static void test_loader_resume(const char *const *paths) {
    ts_io_error err = {0};
    ts_data_loader_options o;
    ts_data_loader_default_options(&o, 4, 16, 99);
    ts_data_loader *run = NULL, *resumed = NULL;
    CHECK_STATUS(ts_data_loader_open(paths, 2, &o, &run, &err), TS_OK, err);
    CHECK_STATUS(ts_data_loader_open(paths, 2, &o, &resumed, &err), TS_OK, err);
    if (!run || !resumed) return;
    for (int i = 0; i < 7; i++) ts_data_loader_next(run);
    ts_data_position pos, parsed;
    ts_data_loader_position(run, &pos);
    char text[TS_DATA_POSITION_TEXT_MAX];
    ts_data_position_format(&pos, text, sizeof text);
    CHECK_STATUS(ts_data_position_parse(text, &parsed, &err), TS_OK, err);
    CHECK(memcmp(&pos, &parsed, sizeof pos) == 0, "position text round-trips: %s", text);
    CHECK(strncmp(text, "tsdata1 epoch=", 14) == 0, "%s", text);
    /* The uninterrupted run continues; the resumed loader must produce the same batches,
     * including across the next epoch boundaries (7 batches of 64 = 448 tokens > 1 epoch). */
    static batch_copy expected[12];
    uint64_t first_epoch = 0, last_epoch = 0;
    for (int i = 0; i < 12; i++) {
        const ts_batch *b = ts_data_loader_next(run);
        copy_batch(&expected[i], b);
        if (i == 0) first_epoch = b->epoch;
        last_epoch = b->epoch;
    }
    CHECK(last_epoch > first_epoch, "the compared batches cross an epoch boundary (%llu..%llu)",
          (unsigned long long)first_epoch, (unsigned long long)last_epoch);
    ts_data_loader_next(resumed); /* somewhere else first: seek must fully reset */
    CHECK_STATUS(ts_data_loader_seek(resumed, &parsed, &err), TS_OK, err);
    bool same = true;
    for (int i = 0; i < 12; i++) same = same && batches_equal(&expected[i].b, ts_data_loader_next(resumed));
    CHECK(same, "resumed batches identical to the uninterrupted run");

    /* Positions that do not belong to this loader. */
    ts_data_position bad = parsed;
    bad.seed++;
    CHECK_STATUS(ts_data_loader_seek(resumed, &bad, &err), TS_ERR_INVALID_ARG, err);
    CHECK_MSG(err, "seed");
    bad = parsed;
    bad.data_fingerprint ^= 1;
    CHECK_STATUS(ts_data_loader_seek(resumed, &bad, &err), TS_ERR_INVALID_ARG, err);
    CHECK_MSG(err, "other data");
    bad = parsed;
    bad.doc_cursor = L_DOCS;
    CHECK_STATUS(ts_data_loader_seek(resumed, &bad, &err), TS_ERR_RANGE, err);
    bad = parsed;
    bad.token_offset = 1000;
    CHECK_STATUS(ts_data_loader_seek(resumed, &bad, &err), TS_ERR_RANGE, err);
    CHECK_STATUS(ts_data_position_parse("tsdata1 epoch=x", &bad, &err), TS_ERR_FORMAT, err);
    CHECK_STATUS(ts_data_position_parse("tsdata1 epoch=1 doc=2 token=3 seed=4 data=0000000000000005 extra", &bad, &err),
                 TS_ERR_FORMAT, err);

    /* A resumed run may change B and T: the token stream continues where it stopped. */
    ts_data_loader_options o2 = o;
    o2.batch = 1;
    o2.seq_len = 64;
    ts_data_loader *reshaped = NULL;
    CHECK_STATUS(ts_data_loader_open(paths, 2, &o2, &reshaped, &err), TS_OK, err);
    if (reshaped) {
        CHECK_STATUS(ts_data_loader_seek(reshaped, &parsed, &err), TS_OK, err);
        const ts_batch *b = ts_data_loader_next(reshaped);
        CHECK(memcmp(b->inputs, expected[0].b.inputs, 64 * 4) == 0, "stream continues with another shape");
        ts_data_loader_free(reshaped);
    }
    ts_data_loader_free(run);
    ts_data_loader_free(resumed);
}

static void test_loader_single_pass(const char *const *paths) {
    ts_io_error err = {0};
    ts_data_loader_options o;
    ts_data_loader_default_options(&o, 2, 32, 1);
    o.single_pass = true;
    o.pad_id = TS_BYTE_PAD;
    ts_data_loader *l = NULL;
    CHECK_STATUS(ts_data_loader_open(paths, 2, &o, &l, &err), TS_OK, err);
    if (!l) return;
    for (int pass = 0; pass < 2; pass++) {
        int64_t expect = 10, tokens = 0;
        bool in_order = true, consistent = true;
        int batches = 0;
        const ts_batch *b;
        while ((b = ts_data_loader_next(l)) != NULL && batches < 100) {
            batches++;
            consistent = consistent && batch_consistent(b) && b->epoch == 0;
            tokens += b->n_tokens;
            for (int i = 0; i < b->batch * b->seq_len; i++)
                if (b->doc_ids[i] >= 0) in_order = in_order && b->inputs[i] == expect++;
        }
        CHECK(tokens == (int64_t)l_total && expect == 10 + (int64_t)l_total, "pass %d covers all %llu tokens once", pass,
              (unsigned long long)l_total);
        CHECK(in_order && consistent, "pass %d in file order, padded tail", pass);
        CHECK(batches == (int)((l_total + 63) / 64), "pass %d: %d batches", pass, batches);
        CHECK(ts_data_loader_next(l) == NULL, "stays exhausted");
        ts_data_position end;
        ts_data_loader_position(l, &end);
        CHECK(end.doc_cursor == L_DOCS, "exhausted position");
        ts_data_loader_rewind(l);
    }
    ts_data_loader_free(l);

    /* Shards with different vocabularies cannot be mixed. */
    uint32_t ids[] = {1, 2};
    size_t lens[] = {2};
    CHECK(write_shard(tmp_path("other_vocab.tshard"), 264, ids, lens, 1) == TS_OK, "write");
    const char *mixed[] = {paths[0], tmp_path("other_vocab.tshard")};
    CHECK_STATUS(ts_data_loader_open(mixed, 2, &o, &l, &err), TS_ERR_FORMAT, err);
    CHECK_MSG(err, "vocab size 264 differs");
    /* A broken shard's error comes through unchanged. */
    const char *broken[] = {tmp_path("missing.tshard")};
    CHECK_STATUS(ts_data_loader_open(broken, 1, &o, &l, &err), TS_ERR_IO, err);
}

static void test_loader(void) {
    const char *p0 = tmp_path("loader-0.tshard"), *p1 = tmp_path("loader-1.tshard");
    make_loader_shards(p0, p1);
    const char *paths[] = {p0, p1};
    test_loader_epoch(paths);
    test_loader_order(paths);
    test_loader_resume(paths);
    test_loader_single_pass(paths);
}

/* ================================================================ synthetic dataset */

/* The test's own solver: parses a prompt and computes its answer from scratch (shares no code
 * with the generator). Returns false on a prompt it does not recognise. */
static bool solve(const char *prompt, char *answer, size_t cap) {
    char w[64], c;
    int a, b, n = 0;
    size_t len = strlen(prompt);
    if (len == 0 || prompt[len - 1] != '=') return false;
    if (sscanf(prompt, "copy %63[a-z]=%n", w, &n) == 1 && (size_t)n == len) {
        snprintf(answer, cap, "%s", w);
        return true;
    }
    if (sscanf(prompt, "rev %63[a-z]=%n", w, &n) == 1 && (size_t)n == len) {
        size_t k = strlen(w);
        for (size_t i = 0; i < k && i + 1 < cap; i++) answer[i] = w[k - 1 - i];
        answer[k < cap ? k : cap - 1] = '\0';
        return true;
    }
    if (sscanf(prompt, "sort %63[a-z]=%n", w, &n) == 1 && (size_t)n == len) {
        int counts[26] = {0};
        for (const char *p = w; *p; p++) counts[*p - 'a']++;
        size_t k = 0;
        for (int l = 0; l < 26; l++)
            while (counts[l]-- && k + 1 < cap) answer[k++] = (char)('a' + l);
        answer[k] = '\0';
        return true;
    }
    if (sscanf(prompt, "count %c in %63[a-z]=%n", &c, w, &n) == 2 && (size_t)n == len) {
        int k = 0;
        for (const char *p = w; *p; p++) k += *p == c;
        snprintf(answer, cap, "%d", k);
        return true;
    }
    if (sscanf(prompt, "%d+%d=%n", &a, &b, &n) == 2 && (size_t)n == len) {
        snprintf(answer, cap, "%d", a + b);
        return true;
    }
    if (sscanf(prompt, "%d-%d=%n", &a, &b, &n) == 2 && (size_t)n == len) {
        snprintf(answer, cap, "%d", a - b);
        return true;
    }
    const char *q = strstr(prompt, "?=");
    if (prompt[0] == 'k' && q && q - prompt >= 2 && q[-2] == 'k') { /* recall: "k3:red k7:blue k7?=" */
        char key[4] = {'k', q[-1], ':', 0};
        const char *hit = strstr(prompt, key);
        if (!hit || hit > q) return false;
        hit += 3;
        size_t k = 0;
        while (hit[k] && hit[k] != ' ' && k + 1 < cap) {
            answer[k] = hit[k];
            k++;
        }
        answer[k] = '\0';
        return true;
    }
    return false;
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static void test_synth_items(void) {
    enum { N_TRAIN = 14000, N_VAL = 1400 };
    ts_synth_item *train = malloc(N_TRAIN * sizeof *train), *again = malloc(N_TRAIN * sizeof *again),
                  *val = malloc(N_VAL * sizeof *val), *other = malloc(N_VAL * sizeof *other);
    double t0 = ts_time_seconds();
    ts_synth_generate(3, TS_SYNTH_TRAIN, N_TRAIN, train);
    double seconds = ts_time_seconds() - t0;
    printf("generated %d items in %.3f s\n", N_TRAIN, seconds);
    CHECK(seconds < 1.0, "generation is fast: %.3f s for %d items", seconds, N_TRAIN);
    ts_synth_generate(3, TS_SYNTH_TRAIN, N_TRAIN, again);
    ts_synth_generate(3, TS_SYNTH_VAL, N_VAL, val);
    ts_synth_generate(4, TS_SYNTH_VAL, N_VAL, other);
    CHECK(memcmp(train, again, N_TRAIN * sizeof *train) == 0, "deterministic");
    int differ = 0;
    for (int i = 0; i < N_VAL; i++) differ += strcmp(val[i].text, other[i].text) != 0;
    CHECK(differ > N_VAL / 2, "another seed gives other items (%d of %d differ)", differ, N_VAL);

    /* Every answer right, every prompt well-formed and in its split; tasks round-robin. */
    int wrong = 0, bad_form = 0, bad_split = 0, bad_task = 0, per_task[TS_SYNTH_TASK_COUNT] = {0};
    int max_len = 0;
    for (int s = 0; s < 2; s++) {
        const ts_synth_item *items = s ? val : train;
        int n = s ? N_VAL : N_TRAIN;
        for (int i = 0; i < n; i++) {
            const ts_synth_item *it = &items[i];
            char prompt[TS_SYNTH_TEXT_MAX], answer[TS_SYNTH_TEXT_MAX];
            snprintf(prompt, sizeof prompt, "%.*s", it->prompt_len, it->text);
            bool form = it->len > it->prompt_len && it->len < TS_SYNTH_TEXT_MAX && (int)strlen(it->text) == it->len &&
                        solve(prompt, answer, sizeof answer);
            bad_form += !form;
            if (form && strcmp(answer, it->text + it->prompt_len) != 0) {
                if (wrong++ < 5) fprintf(stderr, "wrong answer: %s (expected %s)\n", it->text, answer);
            }
            bad_split += ts_synth_split_of(it->text, (size_t)it->prompt_len) != (s ? TS_SYNTH_VAL : TS_SYNTH_TRAIN);
            bad_task += it->task != (ts_synth_task)(i % TS_SYNTH_TASK_COUNT);
            per_task[it->task]++;
            if (it->len > max_len) max_len = it->len;
            if (it->len - it->prompt_len > TS_SYNTH_ANSWER_CAP) bad_form++;
        }
    }
    CHECK(wrong == 0 && bad_form == 0, "%d wrong answers, %d malformed items", wrong, bad_form);
    CHECK(bad_split == 0 && bad_task == 0, "split %d, task %d mismatches", bad_split, bad_task);
    printf("longest document: %d bytes; examples:", max_len);
    for (int t = 0; t < TS_SYNTH_TASK_COUNT; t++) printf(" [%s] %s", ts_synth_task_name(train[t].task), train[t].text);
    printf("\n");

    /* Held-out prompts never occur in training. */
    const char **all = malloc((N_TRAIN + N_VAL) * sizeof *all);
    char (*prompts)[TS_SYNTH_TEXT_MAX + 2] = malloc((N_TRAIN + N_VAL) * sizeof *prompts);
    for (int i = 0; i < N_TRAIN + N_VAL; i++) {
        const ts_synth_item *it = i < N_TRAIN ? &train[i] : &val[i - N_TRAIN];
        snprintf(prompts[i], sizeof prompts[i], "%c%.*s", i < N_TRAIN ? 'T' : 'V', it->prompt_len, it->text);
    }
    /* Sort the prompts without their T/V tag; equal neighbours with different tags leak. */
    for (int i = 0; i < N_TRAIN + N_VAL; i++) all[i] = prompts[i] + 1;
    int leaks = 0;
    qsort(all, N_TRAIN + N_VAL, sizeof *all, cmp_str);
    for (int i = 1; i < N_TRAIN + N_VAL; i++)
        if (strcmp(all[i], all[i - 1]) == 0 && all[i][-1] != all[i - 1][-1]) leaks++;
    CHECK(leaks == 0, "%d validation prompts also occur in training", leaks);
    free(all);
    free(prompts);

    /* Entropy matches an independent count over bytes + EOS. */
    double counts[TS_BYTE_VOCAB_SIZE] = {0}, total = 0, h = 0;
    for (int i = 0; i < N_TRAIN; i++) {
        for (int j = 0; j < train[i].len; j++) counts[(unsigned char)train[i].text[j]]++;
        counts[256]++; /* EOS, in a slot no ASCII byte uses */
        total += train[i].len + 1;
    }
    for (int i = 0; i < TS_BYTE_VOCAB_SIZE; i++)
        if (counts[i] > 0) h -= counts[i] / total * log2(counts[i] / total);
    double got = ts_synth_unigram_entropy(train, N_TRAIN);
    CHECK(fabs(got - h) < 1e-9 && got > 3.0 && got < 7.0, "unigram entropy %.6f bits, expected %.6f", got, h);
    printf("unigram entropy: %.3f bits/token\n", got);
    free(train);
    free(again);
    free(val);
    free(other);
}

static void test_synth_shards(void) {
    const char *dir = tmp_path("synth");
    ts_synth_options o;
    ts_synth_default_options(&o);
    CHECK(o.n_train == 20000 && o.n_val == 1400 && o.seed == 1, "defaults");
    o.n_train = 700;
    o.n_val = 70;
    ts_synth_stats st;
    ts_io_error err = {0};
    CHECK_STATUS(ts_synth_write_shards(dir, &o, &st, &err), TS_OK, err);
    ts_synth_item items[700];
    ts_synth_generate(o.seed, TS_SYNTH_TRAIN, 700, items);
    uint64_t tokens = 0;
    for (int i = 0; i < 700; i++) tokens += (uint64_t)items[i].len + 2;
    CHECK(st.train_docs == 700 && st.val_docs == 70 && st.train_tokens == tokens, "stats %llu docs %llu tokens",
          (unsigned long long)st.train_docs, (unsigned long long)st.train_tokens);
    CHECK(fabs(st.unigram_bits - ts_synth_unigram_entropy(items, 700)) < 1e-12, "stats entropy");
    char **paths = NULL;
    size_t n = 0;
    CHECK_STATUS(ts_shard_list(dir, "train", &paths, &n, &err), TS_OK, err);
    ts_shard *s = NULL;
    if (n == 1) CHECK_STATUS(ts_shard_open(paths[0], 0, &s, &err), TS_OK, err);
    if (s) {
        CHECK(ts_shard_get_info(s)->vocab_size == TS_BYTE_VOCAB_SIZE && ts_shard_get_info(s)->n_docs == 700, "train shard");
        int32_t ids[TS_SYNTH_TEXT_MAX + 2];
        uint64_t a = ts_shard_doc_start(s, 5), b = ts_shard_doc_start(s, 6);
        ts_shard_read(s, a, (size_t)(b - a), ids);
        char text[TS_SYNTH_TEXT_MAX];
        ts_byte_decode(ids, (size_t)(b - a), text, sizeof text);
        CHECK(ids[0] == TS_BYTE_BOS && ids[b - a - 1] == TS_BYTE_EOS && strcmp(text, items[5].text) == 0,
              "document 5 is BOS + \"%s\" + EOS: \"%s\"", items[5].text, text);
        ts_shard_close(s);
    }
    ts_shard_list_free(paths, n);
    /* The loader reads the synthetic shards as they are. */
    const char *val_path = tmp_path("synth/val-00000.tshard");
    ts_data_loader_options lo;
    ts_data_loader_default_options(&lo, 2, 64, 0);
    lo.single_pass = true;
    ts_data_loader *l = NULL;
    CHECK_STATUS(ts_data_loader_open(&val_path, 1, &lo, &l, &err), TS_OK, err);
    if (l) {
        const ts_batch *b = ts_data_loader_next(l);
        CHECK(b && b->inputs[0] == TS_BYTE_BOS && b->positions[0] == 0, "val stream starts with BOS");
        ts_data_loader_free(l);
    }
}

/* ---- evaluator callbacks */

static int oracle_complete(void *ctx, const char *prompt, size_t prompt_len, char *out, size_t cap, size_t *out_len) {
    int *calls = ctx;
    (*calls)++;
    char p[TS_SYNTH_TEXT_MAX], answer[TS_SYNTH_TEXT_MAX];
    snprintf(p, sizeof p, "%.*s", (int)prompt_len, prompt);
    if (!solve(p, answer, sizeof answer)) return 7;
    *out_len = strlen(answer) < cap ? strlen(answer) : cap;
    memcpy(out, answer, *out_len);
    return 0;
}

static int random_complete(void *ctx, const char *prompt, size_t prompt_len, char *out, size_t cap, size_t *out_len) {
    (void)prompt, (void)prompt_len;
    ts_rng *rng = ctx;
    size_t n = 1 + ts_rng_next(rng) % 5;
    for (size_t i = 0; i < n && i < cap; i++) out[i] = "abcdefghijklmnopqrstuvwxyz0123456789"[ts_rng_next(rng) % 36];
    *out_len = n < cap ? n : cap;
    return 0;
}

/* The right answer that never stops: exact match must fail. */
static int rambling_complete(void *ctx, const char *prompt, size_t prompt_len, char *out, size_t cap, size_t *out_len) {
    size_t n = 0;
    oracle_complete(ctx, prompt, prompt_len, out, cap, &n);
    while (n < cap) out[n++] = ' ';
    *out_len = n;
    return 0;
}

static int failing_complete(void *ctx, const char *prompt, size_t prompt_len, char *out, size_t cap, size_t *out_len) {
    (void)ctx, (void)prompt, (void)prompt_len, (void)out, (void)cap, (void)out_len;
    return 3;
}

static void test_synth_evaluate(void) {
    ts_synth_eval ev;
    ts_io_error err = {0};
    int calls = 0;
    CHECK_STATUS(ts_synth_evaluate(1, 50, oracle_complete, &calls, &ev, &err), TS_OK, err);
    CHECK(calls == 50 * TS_SYNTH_TASK_COUNT && ev.total == calls && ev.overall == 1.0, "oracle: %lld of %lld",
          (long long)ev.total_correct, (long long)ev.total);
    for (int t = 0; t < TS_SYNTH_TASK_COUNT; t++)
        CHECK(ev.n[t] == 50 && ev.accuracy[t] == 1.0, "oracle %s: %.3f", ts_synth_task_name((ts_synth_task)t),
              ev.accuracy[t]);
    ts_rng rng;
    ts_rng_seed(&rng, 11);
    CHECK_STATUS(ts_synth_evaluate(1, 50, random_complete, &rng, &ev, &err), TS_OK, err);
    CHECK(ev.overall < 0.05, "random guessing: %.3f", ev.overall);
    printf("random guessing scores %.3f (count: %.2f)\n", ev.overall, ev.accuracy[TS_SYNTH_COUNT]);
    CHECK_STATUS(ts_synth_evaluate(1, 10, rambling_complete, &calls, &ev, &err), TS_OK, err);
    CHECK(ev.total_correct == 0, "answers that do not stop score 0 (%lld)", (long long)ev.total_correct);
    CHECK_STATUS(ts_synth_evaluate(1, 10, failing_complete, NULL, &ev, &err), TS_ERR_INTERNAL, err);
    CHECK_MSG(err, "code 3");
    /* The evaluated items are the first items of the validation shard. */
    ts_synth_item first;
    ts_synth_item_make(1, TS_SYNTH_VAL, 0, &first);
    CHECK(first.task == TS_SYNTH_COPY && ts_synth_split_of(first.text, (size_t)first.prompt_len) == TS_SYNTH_VAL,
          "val item 0: %s", first.text);
}

int main(void) {
    snprintf(tmp_dir, sizeof tmp_dir, "/tmp/ts_test_data_XXXXXX");
    if (!mkdtemp(tmp_dir)) {
        perror("mkdtemp");
        return 1;
    }
    test_xxh64();
    test_byte_vocabulary();
    test_shard_round_trip();
    test_shard_corruption();
    test_prepare();
    test_loader();
    test_synth_items();
    test_synth_shards();
    test_synth_evaluate();
    nftw(tmp_dir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
    return check_summary("test_data");
}
