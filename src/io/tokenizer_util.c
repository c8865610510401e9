/* tokenizer_util.c - the tokenizer's small building blocks: growable buffers and id lists,
 * two open-addressing hash maps (byte strings -> values for vocabularies and word counts,
 * uint64 -> uint64 for merge pairs), strict UTF-8 stepping, and GPT-2's byte-level alphabet
 * (every byte written as one printable code point, which is how byte-level BPE vocabularies
 * spell their tokens: space is "Ġ" U+0120, newline "Ċ" U+010A). */
#include <stdlib.h>
#include <string.h>

#include "io/tokenizer_internal.h"

/* ---------------------------------------------------------------- buffers */

bool tk_buf_reserve(tk_buf *b, size_t extra) {
    if (b->len + extra + 1 <= b->cap) return true; /* +1: room for a terminating NUL */
    size_t cap = b->cap ? b->cap : 64;
    while (cap < b->len + extra + 1) cap *= 2;
    uint8_t *p = realloc(b->data, cap);
    if (!p) return false;
    b->data = p;
    b->cap = cap;
    return true;
}

bool tk_buf_append(tk_buf *b, const void *p, size_t n) {
    if (!tk_buf_reserve(b, n)) return false;
    if (n) memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len] = 0;
    return true;
}

void tk_buf_free(tk_buf *b) {
    free(b->data);
    memset(b, 0, sizeof *b);
}

bool tk_spans_push(tk_spans *s, size_t start, size_t end) {
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 64;
        tk_span *v = realloc(s->v, cap * sizeof *v);
        if (!v) return false;
        s->v = v;
        s->cap = cap;
    }
    s->v[s->n].start = start;
    s->v[s->n].end = end;
    s->n++;
    return true;
}

void tk_spans_free(tk_spans *s) {
    free(s->v);
    memset(s, 0, sizeof *s);
}

bool tk_marks_push(tk_marks *m, size_t start, size_t end, bool is_match) {
    if (m->n == m->cap) {
        size_t cap = m->cap ? m->cap * 2 : 64;
        tk_mark *v = realloc(m->v, cap * sizeof *v);
        if (!v) return false;
        m->v = v;
        m->cap = cap;
    }
    m->v[m->n].start = start;
    m->v[m->n].end = end;
    m->v[m->n].is_match = is_match;
    m->n++;
    return true;
}

void tk_marks_free(tk_marks *m) {
    free(m->v);
    memset(m, 0, sizeof *m);
}

static bool ids_reserve(ts_token_ids *out, size_t extra) {
    if (out->n + extra <= out->cap) return true;
    size_t cap = out->cap ? out->cap : 256;
    while (cap < out->n + extra) cap *= 2;
    int32_t *p = realloc(out->ids, cap * sizeof *p);
    if (!p) return false;
    out->ids = p;
    out->cap = cap;
    return true;
}

bool tk_ids_push(ts_token_ids *out, int32_t id) {
    if (!ids_reserve(out, 1)) return false;
    out->ids[out->n++] = id;
    return true;
}

bool tk_ids_append(ts_token_ids *out, const int32_t *ids, size_t n) {
    if (!ids_reserve(out, n)) return false;
    if (n) memcpy(out->ids + out->n, ids, n * sizeof *ids);
    out->n += n;
    return true;
}

/* ---------------------------------------------------------------- hashing */

uint64_t tk_hash_u64(uint64_t x) { /* splitmix64's finaliser */
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ULL;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebULL;
    x ^= x >> 31;
    return x;
}

uint64_t tk_hash_bytes(const void *p, size_t n) {
    const uint8_t *s = p;
    uint64_t h = 0x9e3779b97f4a7c15ULL ^ (uint64_t)n;
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, s, 8);
        h = (h ^ (w * 0xc2b2ae3d27d4eb4fULL)) * 0x100000001b3ULL;
        h = h << 27 | h >> 37;
        s += 8;
        n -= 8;
    }
    if (n) {
        uint64_t w = 0;
        memcpy(&w, s, n);
        h = (h ^ (w * 0xc2b2ae3d27d4eb4fULL)) * 0x100000001b3ULL;
    }
    return tk_hash_u64(h);
}

/* ---------------------------------------------------------------- byte string map */

static bool strmap_grow(tk_strmap *m) {
    size_t cap = m->cap ? m->cap * 2 : 64;
    tk_strmap_slot *slots = malloc(cap * sizeof *slots);
    if (!slots) return false;
    for (size_t i = 0; i < cap; i++) slots[i].len = UINT32_MAX;
    for (size_t i = 0; i < m->cap; i++) {
        if (m->slots[i].len == UINT32_MAX) continue;
        size_t j = (size_t)m->slots[i].hash & (cap - 1);
        while (slots[j].len != UINT32_MAX) j = (j + 1) & (cap - 1);
        slots[j] = m->slots[i];
    }
    free(m->slots);
    m->slots = slots;
    m->cap = cap;
    return true;
}

static tk_strmap_slot *strmap_probe(const tk_strmap *m, const void *key, size_t len, uint64_t hash) {
    size_t j = (size_t)hash & (m->cap - 1);
    for (;;) {
        tk_strmap_slot *s = &m->slots[j];
        if (s->len == UINT32_MAX) return s;
        if (s->hash == hash && s->len == len && memcmp(m->keys.data + s->off, key, len) == 0) return s;
        j = (j + 1) & (m->cap - 1);
    }
}

const int64_t *tk_strmap_find(const tk_strmap *m, const void *key, size_t len) {
    if (!m->cap) return NULL;
    tk_strmap_slot *s = strmap_probe(m, key, len, tk_hash_bytes(key, len));
    return s->len == UINT32_MAX ? NULL : &s->value;
}

int64_t *tk_strmap_upsert(tk_strmap *m, const void *key, size_t len, int64_t init, bool *inserted) {
    if (inserted) *inserted = false;
    if (len >= UINT32_MAX || m->keys.len + len >= UINT32_MAX) return NULL;
    if ((m->count + 1) * 10 > m->cap * 7 && !strmap_grow(m)) return NULL;
    uint64_t hash = tk_hash_bytes(key, len);
    tk_strmap_slot *s = strmap_probe(m, key, len, hash);
    if (s->len != UINT32_MAX) return &s->value;
    uint32_t off = (uint32_t)m->keys.len;
    if (!tk_buf_append(&m->keys, key, len)) return NULL;
    s->hash = hash;
    s->off = off;
    s->len = (uint32_t)len;
    s->value = init;
    m->count++;
    if (inserted) *inserted = true;
    return &s->value;
}

const uint8_t *tk_strmap_key(const tk_strmap *m, const tk_strmap_slot *slot) { return m->keys.data + slot->off; }

void tk_strmap_free(tk_strmap *m) {
    free(m->slots);
    tk_buf_free(&m->keys);
    memset(m, 0, sizeof *m);
}

/* ---------------------------------------------------------------- uint64 map */

static bool u64map_grow(tk_u64map *m) {
    size_t cap = m->cap ? m->cap * 2 : 64;
    uint64_t *keys = malloc(cap * sizeof *keys), *vals = malloc(cap * sizeof *vals);
    if (!keys || !vals) {
        free(keys);
        free(vals);
        return false;
    }
    memset(keys, 0xff, cap * sizeof *keys);
    for (size_t i = 0; i < m->cap; i++) {
        if (m->keys[i] == UINT64_MAX) continue;
        size_t j = (size_t)tk_hash_u64(m->keys[i]) & (cap - 1);
        while (keys[j] != UINT64_MAX) j = (j + 1) & (cap - 1);
        keys[j] = m->keys[i];
        vals[j] = m->vals[i];
    }
    free(m->keys);
    free(m->vals);
    m->keys = keys;
    m->vals = vals;
    m->cap = cap;
    return true;
}

uint64_t *tk_u64map_find(const tk_u64map *m, uint64_t key) {
    if (!m->cap) return NULL;
    size_t j = (size_t)tk_hash_u64(key) & (m->cap - 1);
    while (m->keys[j] != UINT64_MAX) {
        if (m->keys[j] == key) return &m->vals[j];
        j = (j + 1) & (m->cap - 1);
    }
    return NULL;
}

uint64_t *tk_u64map_upsert(tk_u64map *m, uint64_t key, uint64_t init) {
    if ((m->count + 1) * 10 > m->cap * 7 && !u64map_grow(m)) return NULL;
    size_t j = (size_t)tk_hash_u64(key) & (m->cap - 1);
    while (m->keys[j] != UINT64_MAX) {
        if (m->keys[j] == key) return &m->vals[j];
        j = (j + 1) & (m->cap - 1);
    }
    m->keys[j] = key;
    m->vals[j] = init;
    m->count++;
    return &m->vals[j];
}

void tk_u64map_free(tk_u64map *m) {
    free(m->keys);
    free(m->vals);
    memset(m, 0, sizeof *m);
}

/* ---------------------------------------------------------------- UTF-8 */

size_t tk_utf8_next(const uint8_t *p, size_t n, uint32_t *cp, bool *valid) {
    uint8_t c = p[0];
    size_t len;
    uint32_t v, min;
    *valid = false;
    *cp = c;
    if (c < 0x80) {
        *valid = true;
        return 1;
    } else if (c >= 0xc2 && c <= 0xdf) {
        len = 2, v = c & 0x1f, min = 0x80;
    } else if (c >= 0xe0 && c <= 0xef) {
        len = 3, v = c & 0x0f, min = 0x800;
    } else if (c >= 0xf0 && c <= 0xf4) {
        len = 4, v = c & 0x07, min = 0x10000;
    } else {
        return 1;
    }
    if (n < len) return 1;
    for (size_t i = 1; i < len; i++) {
        if ((p[i] & 0xc0) != 0x80) return 1;
        v = v << 6 | (p[i] & 0x3f);
    }
    /* overlong forms, UTF-16 surrogates and values past U+10FFFF are not UTF-8 */
    if (v < min || (v >= 0xd800 && v <= 0xdfff) || v > 0x10ffff) return 1;
    *cp = v;
    *valid = true;
    return len;
}

size_t tk_utf8_put(uint32_t cp, uint8_t out[4]) {
    if (cp < 0x80) {
        out[0] = (uint8_t)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (uint8_t)(0xc0 | cp >> 6);
        out[1] = (uint8_t)(0x80 | (cp & 0x3f));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (uint8_t)(0xe0 | cp >> 12);
        out[1] = (uint8_t)(0x80 | (cp >> 6 & 0x3f));
        out[2] = (uint8_t)(0x80 | (cp & 0x3f));
        return 3;
    }
    out[0] = (uint8_t)(0xf0 | cp >> 18);
    out[1] = (uint8_t)(0x80 | (cp >> 12 & 0x3f));
    out[2] = (uint8_t)(0x80 | (cp >> 6 & 0x3f));
    out[3] = (uint8_t)(0x80 | (cp & 0x3f));
    return 4;
}

size_t tk_utf8_last_start(const uint8_t *p, size_t n) {
    size_t i = n - 1;
    for (int k = 0; k < 3 && i > 0 && (p[i] & 0xc0) == 0x80; k++) i--;
    /* only a lead byte whose sequence ends exactly at n makes this one character */
    uint32_t cp;
    bool valid;
    if (tk_utf8_next(p + i, n - i, &cp, &valid) == n - i) return i;
    return n - 1;
}

/* ---------------------------------------------------------------- byte-level alphabet */

/* bytes_to_unicode: the printable bytes '!'..'~', 0xA1..0xAC and 0xAE..0xFF stand for
 * themselves; the other 68 (controls, space, DEL, NBSP, soft hyphen) become 256, 257, ... in
 * byte order, so that every token prints without whitespace or control characters. */
static bool byte_is_printable(unsigned b) {
    return (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
}

static uint32_t byte_to_char[256];
static int16_t char_to_byte[256 + 68];
static pthread_once_t alphabet_once = PTHREAD_ONCE_INIT;

static void alphabet_init(void) {
    uint32_t next = 256;
    for (unsigned b = 0; b < 256; b++) byte_to_char[b] = byte_is_printable(b) ? b : next++;
    for (unsigned c = 0; c < 256 + 68; c++) char_to_byte[c] = -1;
    for (unsigned b = 0; b < 256; b++) char_to_byte[byte_to_char[b]] = (int16_t)b;
}

uint32_t tk_byte_char(uint8_t b) {
    pthread_once(&alphabet_once, alphabet_init);
    return byte_to_char[b];
}

int tk_char_byte(uint32_t cp) {
    pthread_once(&alphabet_once, alphabet_init);
    return cp < 256 + 68 ? char_to_byte[cp] : -1;
}

bool tk_is_white_space(uint32_t cp) {
    return (cp >= 0x09 && cp <= 0x0d) || cp == 0x20 || cp == 0x85 || cp == 0xa0 || cp == 0x1680 ||
           (cp >= 0x2000 && cp <= 0x200a) || cp == 0x2028 || cp == 0x2029 || cp == 0x202f || cp == 0x205f ||
           cp == 0x3000;
}
