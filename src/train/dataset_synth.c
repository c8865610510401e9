/* dataset_synth.c - the embedded default dataset: a corpus the project generates itself, made of
 * short task documents with exact answers ("417+85=502", "rev kqzt=tzqk", ...; data.h lists the
 * tasks), that the tiny DeepSeek-V4 learns on two CPU cores in minutes, and the evaluator that
 * scores a model's greedy completions on held-out items.
 *
 * Every item is a pure function of (seed, split, index): its RNG is seeded from those three, so
 * items can be generated in any order, and the evaluator regenerates exactly the validation
 * items that ts_synth_write_shards stored. Held-out items are unseen by construction: a prompt's
 * split is decided by a salted hash of the prompt itself, and generation redraws until the
 * prompt lands in the split asked for. The tasks are easy on purpose (copying, reversing,
 * sorting and counting short letter strings, in-context key-value recall, 3-digit arithmetic):
 * each needs a different mechanism (induction copying, position arithmetic, comparison, carry),
 * so per-task accuracy shows which ones a model has picked up. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "tessera/data.h"

/* Fixed: the train/val partition of prompts must not depend on the corpus seed. */
#define SPLIT_SALT 0x7E55E4A5EED5A17Dull
#define VAL_ONE_IN 8

static const char *const TASK_NAMES[TS_SYNTH_TASK_COUNT] = {"copy", "reverse", "sort", "count",
                                                            "recall", "add", "sub"};
static const char *const COLOURS[] = {"red", "blue", "green", "gold", "pink", "gray", "black", "white"};
#define N_COLOURS (sizeof COLOURS / sizeof COLOURS[0])

const char *ts_synth_task_name(ts_synth_task t) {
    return (unsigned)t < TS_SYNTH_TASK_COUNT ? TASK_NAMES[t] : "?";
}

ts_synth_split ts_synth_split_of(const char *prompt, size_t len) {
    return ts_xxh64(prompt, len, SPLIT_SALT) % VAL_ONE_IN == 0 ? TS_SYNTH_VAL : TS_SYNTH_TRAIN;
}

/* ================================================================ generators */

static int uniform_int(ts_rng *rng, int lo, int hi) { /* inclusive; tiny ranges, bias irrelevant */
    return lo + (int)(ts_rng_next(rng) % (uint64_t)(hi - lo + 1));
}

static void random_letters(ts_rng *rng, char *out, int n, const char *alphabet) {
    int k = (int)strlen(alphabet);
    for (int i = 0; i < n; i++) out[i] = alphabet[uniform_int(rng, 0, k - 1)];
    out[n] = '\0';
}

static const char LOWER[] = "abcdefghijklmnopqrstuvwxyz";

/* A number of 1..3 digits, the digit count uniform, so short operands are as common as long. */
static int random_operand(ts_rng *rng) {
    int digits = uniform_int(rng, 1, 3);
    static const int lo[] = {0, 0, 10, 100}, hi[] = {0, 9, 99, 999};
    return uniform_int(rng, lo[digits], hi[digits]);
}

/* Sets the item from a prompt and an answer. */
static void set_item(ts_synth_item *it, ts_synth_task task, const char *prompt, const char *answer) {
    it->task = task;
    it->prompt_len = snprintf(it->text, sizeof it->text, "%s", prompt);
    it->len = it->prompt_len + snprintf(it->text + it->prompt_len, sizeof it->text - (size_t)it->prompt_len, "%s", answer);
}

static void make_copy(ts_rng *rng, ts_synth_item *it) {
    char w[16], prompt[32];
    random_letters(rng, w, uniform_int(rng, 3, 8), LOWER);
    snprintf(prompt, sizeof prompt, "copy %s=", w);
    set_item(it, TS_SYNTH_COPY, prompt, w);
}

static void make_reverse(ts_rng *rng, ts_synth_item *it) {
    char w[16], r[16], prompt[32];
    int n = uniform_int(rng, 3, 7);
    random_letters(rng, w, n, LOWER);
    for (int i = 0; i < n; i++) r[i] = w[n - 1 - i];
    r[n] = '\0';
    snprintf(prompt, sizeof prompt, "rev %s=", w);
    set_item(it, TS_SYNTH_REVERSE, prompt, r);
}

static void make_sort(ts_rng *rng, ts_synth_item *it) {
    char w[16], s[16], prompt[32];
    int n = uniform_int(rng, 3, 7);
    random_letters(rng, w, n, LOWER);
    memcpy(s, w, (size_t)n + 1);
    for (int i = 1; i < n; i++) /* insertion sort: n <= 7 */
        for (int j = i; j > 0 && s[j - 1] > s[j]; j--) {
            char t = s[j];
            s[j] = s[j - 1];
            s[j - 1] = t;
        }
    snprintf(prompt, sizeof prompt, "sort %s=", w);
    set_item(it, TS_SYNTH_SORT, prompt, s);
}

static void make_count(ts_rng *rng, ts_synth_item *it) {
    char w[16], prompt[40], answer[8], letter = "abcd"[uniform_int(rng, 0, 3)];
    int n = uniform_int(rng, 4, 10), count = 0;
    random_letters(rng, w, n, "abcd");
    for (int i = 0; i < n; i++) count += w[i] == letter;
    snprintf(prompt, sizeof prompt, "count %c in %s=", letter, w);
    snprintf(answer, sizeof answer, "%d", count);
    set_item(it, TS_SYNTH_COUNT, prompt, answer);
}

static void make_recall(ts_rng *rng, ts_synth_item *it) {
    int n = uniform_int(rng, 2, 4), keys[4], values[4];
    for (int i = 0; i < n; i++) {
        bool fresh;
        do { /* distinct keys, so the question has one answer */
            keys[i] = uniform_int(rng, 0, 9);
            fresh = true;
            for (int j = 0; j < i; j++) fresh = fresh && keys[j] != keys[i];
        } while (!fresh);
        values[i] = uniform_int(rng, 0, (int)N_COLOURS - 1);
    }
    int q = uniform_int(rng, 0, n - 1);
    char prompt[TS_SYNTH_TEXT_MAX];
    int used = 0;
    for (int i = 0; i < n; i++)
        used += snprintf(prompt + used, sizeof prompt - (size_t)used, "k%d:%s ", keys[i], COLOURS[values[i]]);
    snprintf(prompt + used, sizeof prompt - (size_t)used, "k%d?=", keys[q]);
    set_item(it, TS_SYNTH_RECALL, prompt, COLOURS[values[q]]);
}

static void make_arithmetic(ts_rng *rng, ts_synth_item *it, bool subtract) {
    int a = random_operand(rng), b = random_operand(rng);
    if (subtract && a < b) {
        int t = a;
        a = b;
        b = t;
    }
    char prompt[24], answer[8];
    snprintf(prompt, sizeof prompt, "%d%c%d=", a, subtract ? '-' : '+', b);
    snprintf(answer, sizeof answer, "%d", subtract ? a - b : a + b);
    set_item(it, subtract ? TS_SYNTH_SUB : TS_SYNTH_ADD, prompt, answer);
}

static void make_task(ts_rng *rng, ts_synth_task task, ts_synth_item *it) {
    switch (task) {
    case TS_SYNTH_COPY: make_copy(rng, it); break;
    case TS_SYNTH_REVERSE: make_reverse(rng, it); break;
    case TS_SYNTH_SORT: make_sort(rng, it); break;
    case TS_SYNTH_COUNT: make_count(rng, it); break;
    case TS_SYNTH_RECALL: make_recall(rng, it); break;
    case TS_SYNTH_ADD: make_arithmetic(rng, it, false); break;
    default: make_arithmetic(rng, it, true); break;
    }
}

static uint64_t mix64(uint64_t x) {
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

void ts_synth_item_make(uint64_t seed, ts_synth_split split, uint64_t index, ts_synth_item *out) {
    ts_rng rng;
    ts_rng_seed(&rng, mix64(mix64(seed) ^ ((uint64_t)split << 62)) ^ mix64(index ^ 0xD0C5ull));
    ts_synth_task task = (ts_synth_task)(index % TS_SYNTH_TASK_COUNT);
    /* Redraw until the prompt is one of this split's. 1 in 8 prompts are validation ones and
     * every task has thousands of prompts, so this ends after ~1.1 (train) or ~8 (val) draws. */
    do make_task(&rng, task, out);
    while (ts_synth_split_of(out->text, (size_t)out->prompt_len) != split);
}

void ts_synth_generate(uint64_t seed, ts_synth_split split, size_t n, ts_synth_item *items) {
    for (size_t i = 0; i < n; i++) ts_synth_item_make(seed, split, i, &items[i]);
}

/* ================================================================ entropy */

/* Target counts per byte-level id: the document's bytes and its EOS. */
static void count_targets(const ts_synth_item *it, uint64_t counts[TS_BYTE_VOCAB_SIZE]) {
    for (int i = 0; i < it->len; i++) counts[(unsigned char)it->text[i] + TS_BYTE_OFFSET]++;
    counts[TS_BYTE_EOS]++;
}

static double entropy_bits(const uint64_t counts[TS_BYTE_VOCAB_SIZE]) {
    uint64_t total = 0;
    for (int i = 0; i < TS_BYTE_VOCAB_SIZE; i++) total += counts[i];
    double h = 0.0;
    for (int i = 0; i < TS_BYTE_VOCAB_SIZE; i++)
        if (counts[i]) {
            double p = (double)counts[i] / (double)total;
            h -= p * log2(p);
        }
    return h;
}

double ts_synth_unigram_entropy(const ts_synth_item *items, size_t n) {
    uint64_t counts[TS_BYTE_VOCAB_SIZE] = {0};
    for (size_t i = 0; i < n; i++) count_targets(&items[i], counts);
    return entropy_bits(counts);
}

/* ================================================================ shards */

void ts_synth_default_options(ts_synth_options *o) {
    o->seed = 1;
    o->n_train = 20000;
    o->n_val = 200 * TS_SYNTH_TASK_COUNT;
}

/* One split's items, BOS + bytes + EOS per document; counts target ids when counts != NULL. */
static ts_status write_split(const char *dir, const char *name, uint64_t seed, ts_synth_split split, uint64_t n,
                             uint64_t *tokens, uint64_t counts[TS_BYTE_VOCAB_SIZE], ts_io_error *err) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s-00000%s", dir, name, TS_SHARD_EXTENSION);
    ts_shard_writer *w = NULL;
    ts_status st = ts_shard_writer_new(path, TS_BYTE_VOCAB_SIZE, &w, err);
    for (uint64_t i = 0; i < n && st == TS_OK; i++) {
        ts_synth_item it;
        ts_synth_item_make(seed, split, i, &it);
        uint32_t ids[TS_SYNTH_TEXT_MAX + 2];
        size_t k = 0;
        ids[k++] = TS_BYTE_BOS;
        for (int j = 0; j < it.len; j++) ids[k++] = (uint32_t)(unsigned char)it.text[j] + TS_BYTE_OFFSET;
        ids[k++] = TS_BYTE_EOS;
        st = ts_shard_writer_add(w, ids, k, err);
        if (counts) count_targets(&it, counts);
    }
    if (st != TS_OK) {
        ts_shard_writer_abort(w);
        return st;
    }
    *tokens = ts_shard_writer_tokens(w);
    return ts_shard_writer_finish(w, err);
}

ts_status ts_synth_write_shards(const char *dir, const ts_synth_options *opts, ts_synth_stats *stats,
                                ts_io_error *err) {
    if (!dir || !opts) return ts_io_set_error(err, TS_ERR_INVALID_ARG, "synthetic dataset: dir and options are required");
    if (opts->n_train == 0 || opts->n_val == 0)
        return ts_io_set_error(err, TS_ERR_INVALID_ARG, "synthetic dataset: n_train and n_val must be >= 1");
    if (mkdir(dir, 0777) != 0 && errno != EEXIST)
        return ts_io_set_error(err, TS_ERR_IO, "%s: cannot create directory: %s", dir, strerror(errno));
    ts_synth_stats s = {.train_docs = opts->n_train, .val_docs = opts->n_val};
    uint64_t counts[TS_BYTE_VOCAB_SIZE] = {0};
    ts_status st = write_split(dir, "train", opts->seed, TS_SYNTH_TRAIN, opts->n_train, &s.train_tokens, counts, err);
    if (st == TS_OK) st = write_split(dir, "val", opts->seed, TS_SYNTH_VAL, opts->n_val, &s.val_tokens, NULL, err);
    s.unigram_bits = entropy_bits(counts);
    if (stats) *stats = s;
    return st;
}

/* ================================================================ evaluation */

ts_status ts_synth_evaluate(uint64_t seed, int n_per_task, ts_complete_fn complete, void *ctx, ts_synth_eval *out,
                            ts_io_error *err) {
    if (!complete || !out || n_per_task < 1)
        return ts_io_set_error(err, TS_ERR_INVALID_ARG, "synthetic eval: completion callback, out and n_per_task >= 1 are required");
    memset(out, 0, sizeof *out);
    uint64_t n = (uint64_t)n_per_task * TS_SYNTH_TASK_COUNT;
    for (uint64_t i = 0; i < n; i++) {
        ts_synth_item it;
        ts_synth_item_make(seed, TS_SYNTH_VAL, i, &it);
        char got[TS_SYNTH_ANSWER_CAP + 1];
        size_t got_len = 0;
        int rc = complete(ctx, it.text, (size_t)it.prompt_len, got, TS_SYNTH_ANSWER_CAP, &got_len);
        if (rc != 0)
            return ts_io_set_error(err, TS_ERR_INTERNAL, "synthetic eval: completion of \"%.*s\" failed (code %d)",
                                   it.prompt_len, it.text, rc);
        size_t answer_len = (size_t)(it.len - it.prompt_len);
        bool right = got_len == answer_len && memcmp(got, it.text + it.prompt_len, answer_len) == 0;
        out->n[it.task]++;
        out->correct[it.task] += right;
    }
    for (int t = 0; t < TS_SYNTH_TASK_COUNT; t++) {
        out->accuracy[t] = out->n[t] ? (double)out->correct[t] / (double)out->n[t] : 0.0;
        out->total += out->n[t];
        out->total_correct += out->correct[t];
    }
    out->overall = out->total ? (double)out->total_correct / (double)out->total : 0.0;
    return TS_OK;
}
