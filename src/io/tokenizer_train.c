/* tokenizer_train.c - learns a byte-level BPE vocabulary from a corpus, step for step as the
 * reference's BpeTrainer does, so that the same corpus and settings give the same vocabulary,
 * the same merges and the same ids (checked against trained_*.json in the test fixtures):
 *
 *   1. every text is pre-tokenized (the tokenizer's own Splits + ByteLevel) and the words are
 *      counted; special tokens in the text are not cut out (the reference does not either);
 *   2. ids: the special tokens first, in the order given, then the 256 byte-level characters
 *      ordered by code point ('!' .. '~', '¡' .., then 'Ā' = byte 0 ...);
 *   3. every adjacent pair is counted over all words (weighted by word count), and remembered
 *      with the set of words it occurs in;
 *   4. repeatedly: the pair with the highest count is merged (ties: the smallest (left id,
 *      right id)), the new token appended to the vocabulary (or its id reused when the string
 *      already exists), and the merge applied to the words that contain it, updating the
 *      counts of the pairs around each occurrence - until the vocabulary is full or no pair
 *      is frequent enough.
 * The heap is the reference's lazy one: an entry whose count went stale is re-queued with the
 * current count when it reaches the top; each entry carries the words it was queued for, and
 * only those are merged when it wins (the reference's behaviour, even in the rare case where
 * that is not every word holding the pair). Counting is single-threaded: training data for
 * the vocabularies we train fits in seconds, and the result must not depend on threads. */
#include <stdlib.h>
#include <string.h>

#include "io/tokenizer_internal.h"

/* ---------------------------------------------------------------- the tokenizer.json parts */

/* DeepSeek-V3/V4's three isolating splits (the same strings as their tokenizer.json and
 * tools/make_tokenizer_fixture.py's DS_PATTERNS). */
static const char *const deepseek_patterns[] = {
    "\\p{N}{1,3}",
    "[\xe4\xb8\x80-\xe9\xbe\xa5\xe3\x81\x80-\xe3\x82\x9f\xe3\x82\xa0-\xe3\x83\xbf]+", /* [一-龥぀-ゟ゠-ヿ]+ */
    ("[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+|"
     " ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+"),
};

static json_t *byte_level_json(bool add_prefix_space, bool trim_offsets, bool use_regex) {
    return json_pack("{s:s, s:b, s:b, s:b}", "type", "ByteLevel", "add_prefix_space", add_prefix_space, "trim_offsets",
                     trim_offsets, "use_regex", use_regex);
}

static json_t *pre_tokenizer_json(const ts_tokenizer_train_opts *o) {
    if (o->pretokenizer == TS_TOKENIZER_PRETOK_GPT2) return byte_level_json(o->add_prefix_space, true, true);
    json_t *list = json_array();
    for (size_t i = 0; list && i < 3; i++)
        json_array_append_new(list, json_pack("{s:s, s:{s:s}, s:s, s:b}", "type", "Split", "pattern", "Regex",
                                              deepseek_patterns[i], "behavior", "Isolated", "invert", 0));
    if (list) json_array_append_new(list, byte_level_json(false, true, false));
    return json_pack("{s:s, s:o}", "type", "Sequence", "pretokenizers", list);
}

/* ---------------------------------------------------------------- state */

typedef struct {
    int64_t count;
    uint32_t left, right;
    size_t pos_off, pos_len; /* the words it was queued for, in trainer.positions */
} queued_pair;

typedef struct {
    uint64_t pair;
    uint32_t word;
} pair_in_word;

typedef struct {
    /* the vocabulary being built */
    tk_buf strings;
    size_t *tok_off, *tok_len;
    size_t n_tokens, cap_tokens;
    tk_strmap token_ids;
    uint32_t *merges; /* left, right per rank */
    size_t n_merges, cap_merges;
    /* the corpus as distinct words of symbols */
    tk_strmap word_counts;
    uint32_t *symbols;
    size_t *word_off, *word_len;
    int64_t *word_count;
    size_t n_words;
    /* pair statistics */
    tk_u64map pair_counts; /* pair -> int64 count (stored as its bits) */
    queued_pair *heap;
    size_t heap_n, heap_cap;
    uint32_t *positions;
    size_t n_positions, cap_positions;
    pair_in_word *changes; /* the pairs a merge step created, with their word */
    size_t n_changes, cap_changes;
} trainer;

static void trainer_free(trainer *t) {
    tk_buf_free(&t->strings);
    free(t->tok_off);
    free(t->tok_len);
    tk_strmap_free(&t->token_ids);
    free(t->merges);
    tk_strmap_free(&t->word_counts);
    free(t->symbols);
    free(t->word_off);
    free(t->word_len);
    free(t->word_count);
    tk_u64map_free(&t->pair_counts);
    free(t->heap);
    free(t->positions);
    free(t->changes);
}

static bool grow(void **p, size_t *cap, size_t need, size_t elem) {
    if (need <= *cap) return true;
    size_t c = *cap ? *cap : 64;
    while (c < need) c *= 2;
    void *q = realloc(*p, c * elem);
    if (!q) return false;
    *p = q;
    *cap = c;
    return true;
}

/* Adds a token string (if new) and returns its id; -1 on OOM. */
static int64_t add_token(trainer *t, const void *s, size_t n) {
    bool inserted;
    int64_t *id = tk_strmap_upsert(&t->token_ids, s, n, (int64_t)t->n_tokens, &inserted);
    if (!id) return -1;
    if (!inserted) return *id;
    if (t->n_tokens == t->cap_tokens) {
        size_t cap = t->cap_tokens ? 2 * t->cap_tokens : 1024;
        size_t *off = realloc(t->tok_off, cap * sizeof *off);
        if (off) t->tok_off = off;
        size_t *len = realloc(t->tok_len, cap * sizeof *len);
        if (len) t->tok_len = len;
        if (!off || !len) return -1;
        t->cap_tokens = cap;
    }
    t->tok_off[t->n_tokens] = t->strings.len;
    t->tok_len[t->n_tokens] = n;
    if (!tk_buf_append(&t->strings, s, n)) return -1;
    return (int64_t)t->n_tokens++;
}

/* ---------------------------------------------------------------- step 1-2: words and ids */

static ts_status count_word(void *ctx, const uint8_t *word, size_t n) {
    int64_t *count = tk_strmap_upsert(ctx, word, n, 0, NULL);
    if (!count) return TS_ERR_OOM;
    ++*count;
    return TS_OK;
}

static int compare_u32(const void *a, const void *b) {
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return (x > y) - (x < y);
}

/* Specials, then the byte-level alphabet by code point; byte_token[b] receives b's id. */
static bool initial_vocabulary(trainer *t, const ts_tokenizer_train_opts *o, uint32_t byte_token[256]) {
    for (size_t i = 0; i < o->n_special_tokens; i++)
        if (add_token(t, o->special_tokens[i], strlen(o->special_tokens[i])) < 0) return false;
    uint32_t chars[256];
    for (int b = 0; b < 256; b++) chars[b] = tk_byte_char((uint8_t)b);
    qsort(chars, 256, sizeof chars[0], compare_u32);
    for (int i = 0; i < 256; i++) {
        uint8_t utf8[4];
        int64_t id = add_token(t, utf8, tk_utf8_put(chars[i], utf8));
        if (id < 0) return false;
        byte_token[tk_char_byte(chars[i])] = (uint32_t)id;
    }
    return true;
}

/* The distinct words as runs of byte-token ids, with their counts. */
static bool corpus_words(trainer *t, const uint32_t byte_token[256]) {
    size_t total = t->word_counts.keys.len;
    t->n_words = t->word_counts.count;
    t->symbols = malloc((total ? total : 1) * sizeof *t->symbols);
    t->word_off = malloc((t->n_words ? t->n_words : 1) * sizeof *t->word_off);
    t->word_len = malloc((t->n_words ? t->n_words : 1) * sizeof *t->word_len);
    t->word_count = malloc((t->n_words ? t->n_words : 1) * sizeof *t->word_count);
    if (!t->symbols || !t->word_off || !t->word_len || !t->word_count) return false;
    size_t w = 0, used = 0;
    for (size_t i = 0; i < t->word_counts.cap; i++) {
        const tk_strmap_slot *s = &t->word_counts.slots[i];
        if (s->len == UINT32_MAX) continue;
        const uint8_t *bytes = tk_strmap_key(&t->word_counts, s);
        t->word_off[w] = used;
        t->word_len[w] = s->len;
        t->word_count[w] = s->value;
        for (size_t k = 0; k < s->len; k++) t->symbols[used++] = byte_token[bytes[k]];
        w++;
    }
    return true;
}

/* ---------------------------------------------------------------- the queue */

static bool ranks_before(const queued_pair *a, const queued_pair *b) { /* max count, then min pair */
    if (a->count != b->count) return a->count > b->count;
    return a->left != b->left ? a->left < b->left : a->right < b->right;
}

static bool heap_push(trainer *t, queued_pair e) {
    if (!grow((void **)&t->heap, &t->heap_cap, t->heap_n + 1, sizeof *t->heap)) return false;
    size_t i = t->heap_n++;
    while (i > 0 && ranks_before(&e, &t->heap[(i - 1) / 2])) {
        t->heap[i] = t->heap[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    t->heap[i] = e;
    return true;
}

static queued_pair heap_pop(trainer *t) {
    queued_pair top = t->heap[0], last = t->heap[--t->heap_n];
    size_t i = 0, n = t->heap_n;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n) break;
        if (c + 1 < n && ranks_before(&t->heap[c + 1], &t->heap[c])) c++;
        if (!ranks_before(&t->heap[c], &last)) break;
        t->heap[i] = t->heap[c];
        i = c;
    }
    if (n) t->heap[i] = last;
    return top;
}

static int64_t pair_count(const trainer *t, uint64_t pair) {
    const uint64_t *c = tk_u64map_find(&t->pair_counts, pair);
    return c ? (int64_t)*c : 0;
}

static bool add_pair_count(trainer *t, uint64_t pair, int64_t delta) {
    uint64_t *c = tk_u64map_upsert(&t->pair_counts, pair, 0);
    if (!c) return false;
    *c = (uint64_t)((int64_t)*c + delta);
    return true;
}

static bool note_change(trainer *t, uint64_t pair, uint32_t word) {
    if (!grow((void **)&t->changes, &t->cap_changes, t->n_changes + 1, sizeof *t->changes)) return false;
    t->changes[t->n_changes++] = (pair_in_word){pair, word};
    return true;
}

static int compare_pair_in_word(const void *a, const void *b) {
    const pair_in_word *x = a, *y = b;
    if (x->pair != y->pair) return x->pair < y->pair ? -1 : 1;
    return (x->word > y->word) - (x->word < y->word);
}

/* Queues each pair in t->changes (grouped, words deduplicated) with its current count. */
static bool queue_changes(trainer *t) {
    qsort(t->changes, t->n_changes, sizeof *t->changes, compare_pair_in_word);
    for (size_t i = 0; i < t->n_changes;) {
        uint64_t pair = t->changes[i].pair;
        size_t start = t->n_positions;
        for (; i < t->n_changes && t->changes[i].pair == pair; i++) {
            if (t->n_positions > start && t->positions[t->n_positions - 1] == t->changes[i].word) continue;
            if (!grow((void **)&t->positions, &t->cap_positions, t->n_positions + 1, sizeof *t->positions))
                return false;
            t->positions[t->n_positions++] = t->changes[i].word;
        }
        int64_t count = pair_count(t, pair);
        if (count > 0 &&
            !heap_push(t, (queued_pair){count, (uint32_t)(pair >> 32), (uint32_t)pair, start, t->n_positions - start}))
            return false;
    }
    t->n_changes = 0;
    return true;
}

/* Step 3: every pair of every word, counted and queued. */
static bool count_pairs(trainer *t) {
    for (size_t w = 0; w < t->n_words; w++) {
        const uint32_t *s = t->symbols + t->word_off[w];
        for (size_t k = 0; k + 1 < t->word_len[w]; k++) {
            uint64_t pair = tk_pair_key(s[k], s[k + 1]);
            if (!add_pair_count(t, pair, t->word_count[w]) || !note_change(t, pair, (uint32_t)w)) return false;
        }
    }
    return queue_changes(t);
}

/* ---------------------------------------------------------------- step 4: merging */

/* The reference's Word::merge: replaces each non-overlapping (left, right), left to right,
 * counting the pairs that disappear and appear around it. */
static bool merge_word(trainer *t, uint32_t w, uint32_t left, uint32_t right, uint32_t merged) {
    uint32_t *s = t->symbols + t->word_off[w];
    size_t len = t->word_len[w];
    int64_t count = t->word_count[w];
    for (size_t i = 0; i < len; i++) {
        if (!(s[i] == left && i + 1 < len && s[i + 1] == right)) continue;
        if (i > 0) {
            if (!add_pair_count(t, tk_pair_key(s[i - 1], left), -count)) return false;
            if (!add_pair_count(t, tk_pair_key(s[i - 1], merged), count) ||
                !note_change(t, tk_pair_key(s[i - 1], merged), w))
                return false;
        }
        s[i] = merged;
        memmove(s + i + 1, s + i + 2, (len - i - 2) * sizeof *s);
        len--;
        if (i + 1 < len) {
            if (!add_pair_count(t, tk_pair_key(right, s[i + 1]), -count)) return false;
            if (!add_pair_count(t, tk_pair_key(merged, s[i + 1]), count) ||
                !note_change(t, tk_pair_key(merged, s[i + 1]), w))
                return false;
        }
    }
    t->word_len[w] = len;
    return true;
}

static ts_status learn_merges(trainer *t, const ts_tokenizer_train_opts *o) {
    tk_buf joined = {0};
    ts_status st = TS_OK;
    while (t->n_tokens < o->vocab_size && t->heap_n) {
        queued_pair top = heap_pop(t);
        int64_t current = pair_count(t, tk_pair_key(top.left, top.right));
        if (top.count != current) { /* stale: back in the queue with the true count */
            top.count = current;
            if (!heap_push(t, top)) goto oom;
            continue;
        }
        if (top.count < 1 || (uint64_t)top.count < o->min_frequency) break;
        joined.len = 0;
        if (!tk_buf_append(&joined, t->strings.data + t->tok_off[top.left], t->tok_len[top.left]) ||
            !tk_buf_append(&joined, t->strings.data + t->tok_off[top.right], t->tok_len[top.right]))
            goto oom;
        int64_t merged = add_token(t, joined.data, joined.len);
        if (merged < 0 || !grow((void **)&t->merges, &t->cap_merges, 2 * (t->n_merges + 1), sizeof *t->merges))
            goto oom;
        t->merges[2 * t->n_merges] = top.left;
        t->merges[2 * t->n_merges + 1] = top.right;
        t->n_merges++;
        for (size_t k = 0; k < top.pos_len; k++)
            if (!merge_word(t, t->positions[top.pos_off + k], top.left, top.right, (uint32_t)merged)) goto oom;
        if (!queue_changes(t)) goto oom;
    }
    tk_buf_free(&joined);
    return st;
oom:
    tk_buf_free(&joined);
    return TS_ERR_OOM;
}

/* ---------------------------------------------------------------- the result */

static json_t *token_json(const trainer *t, size_t id) {
    return json_stringn((const char *)t->strings.data + t->tok_off[id], t->tok_len[id]);
}

static json_t *result_json(const trainer *t, const ts_tokenizer_train_opts *o, json_t *pre_tokenizer) {
    json_t *vocab = json_object(), *merges = json_array(), *added = json_array();
    for (size_t id = 0; vocab && id < t->n_tokens; id++) {
        char *key = strndup((const char *)t->strings.data + t->tok_off[id], t->tok_len[id]);
        if (key) json_object_set_new(vocab, key, json_integer((json_int_t)id));
        free(key);
    }
    for (size_t r = 0; merges && r < t->n_merges; r++)
        json_array_append_new(
            merges, json_pack("[o, o]", token_json(t, t->merges[2 * r]), token_json(t, t->merges[2 * r + 1])));
    for (size_t i = 0; added && i < o->n_special_tokens; i++) {
        const int64_t *id = tk_strmap_find(&t->token_ids, o->special_tokens[i], strlen(o->special_tokens[i]));
        json_array_append_new(added, json_pack("{s:I, s:s, s:b, s:b, s:b, s:b, s:b}", "id", (json_int_t)*id, "content",
                                               o->special_tokens[i], "single_word", 0, "lstrip", 0, "rstrip", 0,
                                               "normalized", 0, "special", 1));
    }
    json_t *model = json_pack("{s:s, s:n, s:n, s:n, s:n, s:b, s:b, s:b, s:o, s:o}", "type", "BPE", "dropout",
                              "unk_token", "continuing_subword_prefix", "end_of_word_suffix", "fuse_unk", 0,
                              "byte_fallback", 0, "ignore_merges", 0, "vocab", vocab, "merges", merges);
    return json_pack("{s:s, s:n, s:n, s:o, s:n, s:o, s:o, s:o, s:o}", "version", "1.0", "truncation", "padding",
                     "added_tokens", added, "normalizer", "pre_tokenizer", json_incref(pre_tokenizer), "post_processor",
                     byte_level_json(true, false, true), "decoder", byte_level_json(true, true, true), "model", model);
}

/* ---------------------------------------------------------------- entry point */

static ts_status check_opts(const ts_tokenizer_train_opts *o, ts_io_error *err) {
    if (o->pretokenizer != TS_TOKENIZER_PRETOK_DEEPSEEK && o->pretokenizer != TS_TOKENIZER_PRETOK_GPT2)
        return ts_io_set_error(err, TS_ERR_INVALID_ARG, "tokenizer train: unknown pre-tokenizer %d",
                               (int)o->pretokenizer);
    if (o->n_special_tokens && !o->special_tokens)
        return ts_io_set_error(err, TS_ERR_INVALID_ARG, "tokenizer train: special_tokens is NULL");
    for (size_t i = 0; i < o->n_special_tokens; i++) {
        json_t *probe = o->special_tokens[i] ? json_string(o->special_tokens[i]) : NULL;
        bool ok = probe && o->special_tokens[i][0];
        json_decref(probe);
        if (!ok)
            return ts_io_set_error(err, TS_ERR_INVALID_ARG, "tokenizer train: special token %zu is empty or not UTF-8",
                                   i);
    }
    const char *named[2] = {o->bos_token, o->eos_token};
    for (int k = 0; k < 2; k++) {
        bool listed = !named[k];
        for (size_t i = 0; !listed && i < o->n_special_tokens; i++)
            listed = strcmp(named[k], o->special_tokens[i]) == 0;
        if (!listed)
            return ts_io_set_error(err, TS_ERR_INVALID_ARG,
                                   "tokenizer train: %s token '%s' is not one of the special tokens", k ? "EOS" : "BOS",
                                   named[k]);
    }
    return TS_OK;
}

/* A tokenizer with the chosen pre-tokenizer and no vocabulary: what splits the corpus. */
static ts_status splitter(json_t *pre_tokenizer, ts_tokenizer **out, ts_io_error *err) {
    json_t *root = json_pack("{s:{s:s, s:{}, s:[]}, s:O, s:o}", "model", "type", "BPE", "vocab", "merges",
                             "pre_tokenizer", pre_tokenizer, "decoder", byte_level_json(true, true, true));
    if (!root) return ts_io_set_error(err, TS_ERR_OOM, "tokenizer train: out of memory");
    ts_status st = tk_build(root, "tokenizer train", out, err);
    json_decref(root);
    return st;
}

static ts_status set_named_ids(ts_tokenizer *tok, const ts_tokenizer_train_opts *o, ts_io_error *err) {
    int32_t bos = o->bos_token ? ts_tokenizer_token_to_id(tok, o->bos_token, strlen(o->bos_token)) : tok->bos_id;
    int32_t eos = o->eos_token ? ts_tokenizer_token_to_id(tok, o->eos_token, strlen(o->eos_token)) : tok->eos_id;
    return ts_tokenizer_set_bos_eos(tok, bos, eos, err);
}

ts_status ts_tokenizer_train(const char *const *texts, const size_t *lens, size_t n_texts,
                             const ts_tokenizer_train_opts *opts, ts_tokenizer **out, ts_io_error *err) {
    if (!out || !opts || (n_texts && (!texts || !lens)))
        return ts_io_set_error(err, TS_ERR_INVALID_ARG, "tokenizer train: texts, lens, opts and out are required");
    *out = NULL;
    ts_status st = check_opts(opts, err);
    if (st != TS_OK) return st;
    json_t *pre_tokenizer = pre_tokenizer_json(opts);
    ts_tokenizer *split = NULL;
    trainer t = {0};
    uint32_t byte_token[256];
    st = pre_tokenizer ? splitter(pre_tokenizer, &split, err) : TS_ERR_OOM;
    for (size_t i = 0; st == TS_OK && i < n_texts; i++)
        st = tk_pretokenize(split, (const uint8_t *)texts[i], lens[i], count_word, &t.word_counts, err);
    if (st == TS_OK) st = initial_vocabulary(&t, opts, byte_token) && corpus_words(&t, byte_token) ? TS_OK : TS_ERR_OOM;
    if (st == TS_OK) st = count_pairs(&t) ? TS_OK : TS_ERR_OOM;
    if (st == TS_OK) st = learn_merges(&t, opts);
    json_t *root = st == TS_OK ? result_json(&t, opts, pre_tokenizer) : NULL;
    if (st == TS_OK && !root) st = TS_ERR_OOM;
    if (st == TS_OK) st = tk_build(root, "trained tokenizer", out, err);
    if (st == TS_OK) st = set_named_ids(*out, opts, err);
    if (st == TS_ERR_OOM) ts_io_set_error(err, st, "tokenizer train: out of memory");
    if (st != TS_OK && *out) {
        ts_tokenizer_free(*out);
        *out = NULL;
    }
    json_decref(root);
    json_decref(pre_tokenizer);
    ts_tokenizer_free(split);
    trainer_free(&t);
    return st;
}
