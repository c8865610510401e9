/* tokenizer_bpe.c - BPE on one pre-token (a "word": the bytes between pre-tokenizer splits),
 * and the cache of finished words that makes encoding real text fast (most words repeat).
 *
 * The merge loop is the reference's Word::merge_all: every adjacent pair that has a merge
 * goes into a min-heap keyed by (merge rank, position); the lowest is applied, its
 * neighbours' new pairs are pushed, stale entries are recognised and skipped when popped.
 * That is O(n log n) in the word length, so a pre-token of a million identical bytes (a run
 * of spaces, say) costs about a second rather than hours; and because ties go to the
 * leftmost position, the result is the reference's, merge for merge.
 *
 * The cache maps word bytes -> ids. It is split into shards, each behind its own mutex, so
 * threads encoding at once rarely wait for each other; a shard that fills up is emptied
 * (bounded memory whatever the input), and words longer than 256 bytes are not cached. */
#include <stdlib.h>
#include <string.h>

#include "io/tokenizer_internal.h"

/* ---------------------------------------------------------------- the word cache */

enum {
    CACHE_SHARDS = 16,
    CACHE_MAX_WORD = 256,
    CACHE_SLOTS = 8192,   /* per shard (power of two); emptied when 70 % full */
    CACHE_POOL = 1 << 20, /* bytes of ids + keys per shard before it is emptied */
};

typedef struct {
    uint64_t hash; /* 0: empty slot */
    uint32_t off;  /* in the pool: n_ids int32 ids, then the key bytes */
    uint16_t key_len, n_ids;
} cache_slot;

typedef struct {
    pthread_mutex_t lock;
    cache_slot *slots; /* allocated on first insert */
    size_t count;
    tk_buf pool;
} cache_shard;

struct tk_cache {
    cache_shard shard[CACHE_SHARDS];
};

tk_cache *tk_cache_new(void) {
    tk_cache *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    for (int i = 0; i < CACHE_SHARDS; i++) pthread_mutex_init(&c->shard[i].lock, NULL);
    return c;
}

void tk_cache_free(tk_cache *c) {
    if (!c) return;
    for (int i = 0; i < CACHE_SHARDS; i++) {
        pthread_mutex_destroy(&c->shard[i].lock);
        free(c->shard[i].slots);
        tk_buf_free(&c->shard[i].pool);
    }
    free(c);
}

static cache_shard *shard_of(tk_cache *c, uint64_t hash) { return &c->shard[hash >> 60]; }

/* Finds the slot holding word, or the empty slot where it would go. */
static cache_slot *cache_probe(cache_shard *sh, uint64_t hash, const uint8_t *word, size_t n) {
    size_t j = (size_t)hash & (CACHE_SLOTS - 1);
    for (;;) {
        cache_slot *s = &sh->slots[j];
        if (s->hash == 0) return s;
        if (s->hash == hash && s->key_len == n &&
            memcmp(sh->pool.data + s->off + (size_t)s->n_ids * sizeof(int32_t), word, n) == 0)
            return s;
        j = (j + 1) & (CACHE_SLOTS - 1);
    }
}

/* 1: found (ids appended), 0: absent, -1: out of memory. */
static int cache_get(tk_cache *c, uint64_t hash, const uint8_t *word, size_t n, ts_token_ids *out) {
    cache_shard *sh = shard_of(c, hash);
    int found = 0;
    pthread_mutex_lock(&sh->lock);
    if (sh->slots) {
        cache_slot *s = cache_probe(sh, hash, word, n);
        if (s->hash) {
            int32_t ids[CACHE_MAX_WORD];
            memcpy(ids, sh->pool.data + s->off, (size_t)s->n_ids * sizeof(int32_t));
            found = tk_ids_append(out, ids, s->n_ids) ? 1 : -1;
        }
    }
    pthread_mutex_unlock(&sh->lock);
    return found;
}

static void cache_put(tk_cache *c, uint64_t hash, const uint8_t *word, size_t n, const int32_t *ids, size_t n_ids) {
    cache_shard *sh = shard_of(c, hash);
    size_t need = n_ids * sizeof(int32_t) + n;
    pthread_mutex_lock(&sh->lock);
    if (!sh->slots) sh->slots = calloc(CACHE_SLOTS, sizeof *sh->slots);
    if (sh->slots) {
        if ((sh->count + 1) * 10 > CACHE_SLOTS * 7 || sh->pool.len + need > CACHE_POOL) { /* empty it */
            memset(sh->slots, 0, CACHE_SLOTS * sizeof *sh->slots);
            sh->count = 0;
            sh->pool.len = 0;
        }
        cache_slot *s = cache_probe(sh, hash, word, n);
        uint32_t off = (uint32_t)sh->pool.len;
        if (!s->hash && tk_buf_append(&sh->pool, ids, n_ids * sizeof(int32_t)) && tk_buf_append(&sh->pool, word, n)) {
            *s = (cache_slot){hash, off, (uint16_t)n, (uint16_t)n_ids};
            sh->count++;
        }
    }
    pthread_mutex_unlock(&sh->lock);
}

/* ---------------------------------------------------------------- the merge heap */

typedef struct tk_bpe_merge merge_entry;

static bool merge_before(const merge_entry *a, const merge_entry *b) {
    return a->rank != b->rank ? a->rank < b->rank : a->pos < b->pos;
}

static bool heap_push(tk_bpe_scratch *s, merge_entry e) {
    if (s->heap_n == s->heap_cap) {
        size_t cap = s->heap_cap ? s->heap_cap * 2 : 64;
        merge_entry *h = realloc(s->heap, cap * sizeof *h);
        if (!h) return false;
        s->heap = h;
        s->heap_cap = cap;
    }
    size_t i = s->heap_n++;
    while (i > 0 && merge_before(&e, &s->heap[(i - 1) / 2])) {
        s->heap[i] = s->heap[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    s->heap[i] = e;
    return true;
}

static merge_entry heap_pop(tk_bpe_scratch *s) {
    merge_entry top = s->heap[0], last = s->heap[--s->heap_n];
    size_t i = 0, n = s->heap_n;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n) break;
        if (c + 1 < n && merge_before(&s->heap[c + 1], &s->heap[c])) c++;
        if (!merge_before(&s->heap[c], &last)) break;
        s->heap[i] = s->heap[c];
        i = c;
    }
    if (n) s->heap[i] = last;
    return top;
}

/* ---------------------------------------------------------------- one word */

static bool symbols_reserve(tk_bpe_scratch *s, size_t n) {
    if (n <= s->cap) return true;
    size_t cap = s->cap ? s->cap : 64;
    while (cap < n) cap *= 2;
    int32_t *id = realloc(s->id, cap * sizeof *id);
    if (id) s->id = id;
    int32_t *prev = realloc(s->prev, cap * sizeof *prev);
    if (prev) s->prev = prev;
    int32_t *next = realloc(s->next, cap * sizeof *next);
    if (next) s->next = next;
    uint32_t *len = realloc(s->len, cap * sizeof *len);
    if (len) s->len = len;
    if (!id || !prev || !next || !len) return false;
    s->cap = cap;
    return true;
}

/* Appends a symbol, linked after the previous one (the reference's Word::add). */
static void symbol_add(tk_bpe_scratch *s, size_t *count, int32_t id, uint32_t len) {
    size_t i = (*count)++;
    s->id[i] = id;
    s->len[i] = len;
    s->prev[i] = (int32_t)i - 1;
    s->next[i] = -1;
    if (i > 0) s->next[i - 1] = (int32_t)i;
}

/* One symbol per byte, through the byte-level alphabet; bytes the vocabulary lacks become the
 * unknown token (fused into one when fuse_unk) or, without one, are dropped - as the reference
 * does. Returns the symbol count. */
static size_t word_symbols(const ts_tokenizer *tok, tk_bpe_scratch *s, const uint8_t *w, size_t n) {
    size_t count = 0;
    uint32_t unk_len = 0; /* bytes waiting to become one unknown token */
    for (size_t i = 0; i < n; i++) {
        int32_t id = tok->byte_id[w[i]];
        if (id >= 0) {
            if (unk_len) symbol_add(s, &count, tok->unk_id, unk_len);
            unk_len = 0;
            symbol_add(s, &count, id, 1);
        } else if (tok->unk_id >= 0) {
            if (unk_len && !tok->fuse_unk) {
                symbol_add(s, &count, tok->unk_id, unk_len);
                unk_len = 0;
            }
            unk_len++;
        }
    }
    if (unk_len) symbol_add(s, &count, tok->unk_id, unk_len);
    return count;
}

static bool push_pair(const ts_tokenizer *tok, tk_bpe_scratch *s, int32_t pos) {
    int32_t next = s->next[pos];
    const uint64_t *m = tk_u64map_find(&tok->merges, tk_pair_key((uint32_t)s->id[pos], (uint32_t)s->id[next]));
    if (!m) return true;
    return heap_push(s, (merge_entry){(uint32_t)(*m >> 32), (uint32_t)pos, (int32_t)(uint32_t)*m});
}

/* The reference's Word::merge_all. */
static bool merge_all(const ts_tokenizer *tok, tk_bpe_scratch *s, size_t count) {
    s->heap_n = 0;
    for (size_t i = 0; i + 1 < count; i++)
        if (!push_pair(tok, s, (int32_t)i)) return false;
    while (s->heap_n) {
        merge_entry top = heap_pop(s);
        int32_t pos = (int32_t)top.pos;
        if (s->len[pos] == 0 || s->next[pos] < 0) continue; /* merged away, or now last */
        int32_t right = s->next[pos];
        const uint64_t *m = tk_u64map_find(&tok->merges, tk_pair_key((uint32_t)s->id[pos], (uint32_t)s->id[right]));
        if (!m || (int32_t)(uint32_t)*m != top.new_id) continue; /* stale: the pair changed */
        s->id[pos] = top.new_id;
        s->len[pos] += s->len[right];
        s->next[pos] = s->next[right];
        s->len[right] = 0;
        if (s->next[pos] >= 0) s->prev[s->next[pos]] = pos;
        if (s->prev[pos] >= 0 && !push_pair(tok, s, s->prev[pos])) return false;
        if (s->next[pos] >= 0 && !push_pair(tok, s, pos)) return false;
    }
    return true;
}

ts_status tk_bpe_word(const ts_tokenizer *tok, tk_bpe_scratch *s, const uint8_t *word, size_t n, ts_token_ids *out) {
    if (n == 0) return TS_OK;
    if (tok->ignore_merges) { /* a word that is itself a token is taken whole */
        const int64_t *id = tk_strmap_find(&tok->vocab_bytes, word, n);
        if (id) return tk_ids_push(out, (int32_t)*id) ? TS_OK : TS_ERR_OOM;
    }
    if (n == 1 && tok->byte_id[word[0]] >= 0) return tk_ids_push(out, tok->byte_id[word[0]]) ? TS_OK : TS_ERR_OOM;

    bool cached = tok->cache && n <= CACHE_MAX_WORD;
    uint64_t hash = cached ? tk_hash_bytes(word, n) | 1 : 0; /* 0 marks an empty slot */
    if (cached) {
        int hit = cache_get(tok->cache, hash, word, n, out);
        if (hit) return hit > 0 ? TS_OK : TS_ERR_OOM;
    }
    if (!symbols_reserve(s, n)) return TS_ERR_OOM;
    size_t count = word_symbols(tok, s, word, n);
    if (!merge_all(tok, s, count)) return TS_ERR_OOM;
    size_t first = out->n;
    for (size_t i = 0; i < count; i++)
        if (s->len[i] && !tk_ids_push(out, s->id[i])) return TS_ERR_OOM;
    if (cached) cache_put(tok->cache, hash, word, n, out->ids + first, out->n - first);
    return TS_OK;
}

void tk_bpe_scratch_free(tk_bpe_scratch *s) {
    free(s->id);
    free(s->prev);
    free(s->next);
    free(s->len);
    free(s->heap);
    memset(s, 0, sizeof *s);
}
