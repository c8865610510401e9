/* tokenizer_added.c - added tokens (DeepSeek's <｜User｜>, <think>, BOS/EOS...), which are cut
 * out of the text before pre-tokenization and map straight to their ids.
 *
 * The rules are the reference's (AddedVocabulary::find_matches): tokens whose `normalized` is
 * false are looked for first, over the whole text; tokens whose `normalized` is true then over
 * the pieces in between (after normalization, which is the identity for the files we accept).
 * In each pass the search is leftmost-longest and non-overlapping (the reference's
 * Aho-Corasick automaton with MatchKind::LeftmostLongest; a byte trie gives the same answer),
 * and then each match is filtered and widened:
 *   - a special token is skipped when special tokens are not being parsed (its text then
 *     goes through BPE; the search still resumes after it, as in the reference);
 *   - single_word: skipped unless neither neighbour is a word character (Rust regex \w);
 *   - lstrip / rstrip: the match swallows the white space before / after it. */
#include <stdlib.h>
#include <string.h>

#include "io/tokenizer_internal.h"

/* ---------------------------------------------------------------- the trie */

static int32_t trie_new_node(tk_trie *t, uint8_t byte) {
    if (t->n == t->cap) {
        size_t cap = t->cap ? t->cap * 2 : 256;
        tk_trie_node *nodes = realloc(t->nodes, cap * sizeof *nodes);
        if (!nodes) return -1;
        t->nodes = nodes;
        t->cap = cap;
    }
    tk_trie_node *nd = &t->nodes[t->n];
    nd->child = nd->sibling = nd->added = -1;
    nd->byte = byte;
    return (int32_t)t->n++;
}

static int32_t trie_child(const tk_trie *t, int32_t node, uint8_t byte) {
    if (node == 0) return t->root_child[byte];
    for (int32_t c = t->nodes[node].child; c >= 0; c = t->nodes[c].sibling)
        if (t->nodes[c].byte == byte) return c;
    return -1;
}

bool tk_trie_insert(tk_trie *t, const uint8_t *s, size_t n, int32_t added) {
    if (t->n == 0) {
        if (trie_new_node(t, 0) < 0) return false;
        for (int b = 0; b < 256; b++) t->root_child[b] = -1;
    }
    int32_t node = 0;
    for (size_t i = 0; i < n; i++) {
        int32_t next = trie_child(t, node, s[i]);
        if (next < 0) {
            next = trie_new_node(t, s[i]);
            if (next < 0) return false;
            if (node == 0) {
                t->root_child[s[i]] = next;
            } else {
                t->nodes[next].sibling = t->nodes[node].child;
                t->nodes[node].child = next;
            }
        }
        node = next;
    }
    t->nodes[node].added = added; /* a later token with the same content replaces the earlier */
    return true;
}

void tk_trie_free(tk_trie *t) {
    free(t->nodes);
    memset(t, 0, sizeof *t);
}

/* The longest token that text[0, n) starts with: its index in tok->added, or -1. */
static int32_t trie_longest(const tk_trie *t, const uint8_t *text, size_t n, size_t *len) {
    int32_t best = -1;
    int32_t node = t->root_child[text[0]];
    size_t k = 1;
    while (node >= 0) {
        if (t->nodes[node].added >= 0) {
            best = t->nodes[node].added;
            *len = k;
        }
        if (k == n) break;
        node = trie_child(t, node, text[k++]);
    }
    return best;
}

/* Leftmost-longest: the first position at or after `from` where some token starts. */
static int32_t trie_find(const tk_trie *t, const uint8_t *text, size_t n, size_t from, size_t *start, size_t *len) {
    if (t->n == 0) return -1;
    for (size_t p = from; p < n; p++) {
        if (t->root_child[text[p]] < 0) continue;
        int32_t hit = trie_longest(t, text + p, n - p, len);
        if (hit >= 0) {
            *start = p;
            return hit;
        }
    }
    return -1;
}

/* ---------------------------------------------------------------- the matching rules */

static bool is_word_char_at(const ts_tokenizer *tok, tk_matcher *m, const uint8_t *text, size_t n, size_t at) {
    return tok->word_re && tk_regex_matches_at(tok->word_re, m, text, n, at);
}

/* Rust regex \w$ on text[0, end): is the last character a word character? */
static bool ends_with_word(const ts_tokenizer *tok, tk_matcher *m, const uint8_t *text, size_t end) {
    if (end == 0) return false;
    size_t last = tk_utf8_last_start(text, end);
    return is_word_char_at(tok, m, text, end, last);
}

/* Start of the white space run that ends text[0, end) (end itself when there is none). */
static size_t white_space_start(const uint8_t *text, size_t end) {
    while (end > 0) {
        size_t last = tk_utf8_last_start(text, end);
        uint32_t cp;
        bool valid;
        tk_utf8_next(text + last, end - last, &cp, &valid);
        if (!valid || !tk_is_white_space(cp)) break;
        end = last;
    }
    return end;
}

/* End of the white space run that starts at text[start]. */
static size_t white_space_end(const uint8_t *text, size_t n, size_t start) {
    while (start < n) {
        uint32_t cp;
        bool valid;
        size_t len = tk_utf8_next(text + start, n - start, &cp, &valid);
        if (!valid || !tk_is_white_space(cp)) break;
        start += len;
    }
    return start;
}

static bool segments_push(tk_segments *s, int32_t id, size_t start, size_t end) {
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 32;
        tk_segment *v = realloc(s->v, cap * sizeof *v);
        if (!v) return false;
        s->v = v;
        s->cap = cap;
    }
    s->v[s->n++] = (tk_segment){id, start, end};
    return true;
}

void tk_segments_free(tk_segments *s) {
    free(s->v);
    memset(s, 0, sizeof *s);
}

/* One pass of the reference's find_matches over text[base, base + n): appends segments
 * (offsets relative to text) covering that range. */
static bool find_added(const ts_tokenizer *tok, const tk_trie *trie, tk_matcher *m, const uint8_t *text, size_t base,
                       size_t n, bool parse_special, tk_segments *out) {
    const uint8_t *s = text + base;
    size_t start_offset = 0, from = 0, start, len;
    int32_t hit;
    while ((hit = trie_find(trie, s, n, from, &start, &len)) >= 0) {
        const tk_added *a = &tok->added[hit];
        size_t stop = start + len;
        from = stop;
        if (a->special && !parse_special) continue;
        if (a->single_word) {
            bool space_before = start == 0 || !ends_with_word(tok, m, s, start);
            bool space_after = stop == n || !is_word_char_at(tok, m, s, n, stop);
            if (!space_before || !space_after) continue;
        }
        if (a->lstrip) {
            size_t new_start = white_space_start(s, start);
            start = new_start > start_offset ? new_start : start_offset;
        }
        if (a->rstrip) stop = white_space_end(s, n, stop);
        if (start_offset < start && !segments_push(out, -1, base + start_offset, base + start)) return false;
        if (!segments_push(out, a->id, base + start, base + stop)) return false;
        start_offset = stop;
    }
    if (start_offset != n && !segments_push(out, -1, base + start_offset, base + n)) return false;
    return true;
}

ts_status tk_split_added(const ts_tokenizer *tok, tk_matcher *m, const uint8_t *text, size_t n, bool parse_special,
                         tk_segments *raw, tk_segments *out, ts_io_error *err) {
    raw->n = 0;
    if (n == 0) return TS_OK;
    if (!find_added(tok, &tok->trie_raw, m, text, 0, n, parse_special, raw)) goto oom;
    for (size_t i = 0; i < raw->n; i++) {
        tk_segment seg = raw->v[i];
        if (seg.id >= 0 || tok->trie_norm.n == 0) {
            if (!segments_push(out, seg.id, seg.start, seg.end)) goto oom;
        } else if (!find_added(tok, &tok->trie_norm, m, text, seg.start, seg.end - seg.start, parse_special, out)) {
            goto oom;
        }
    }
    return TS_OK;
oom:
    return ts_io_set_error(err, TS_ERR_OOM, "tokenizer: out of memory");
}
