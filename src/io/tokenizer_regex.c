/* tokenizer_regex.c - the pre-tokenizer's regexes. tokenizer.json files are written for the
 * reference library, which runs them with Oniguruma (Ruby syntax); we run them with PCRE2
 * (UTF + UCP, JIT when available). The two agree on the syntax these files use (classes,
 * \p{..} general categories and scripts, {m,n}, alternation, lookahead) except for the
 * points below, which are translated here so that the meaning is Oniguruma's:
 *
 *   \s \S      Oniguruma: Unicode White_Space            -> \p{White_Space} / \P{White_Space}
 *   \w \W      Oniguruma: Letter|Mark|Number|Connector   -> [\p{L}\p{M}\p{N}\p{Pc}] / [^...]
 *              (PCRE2's \w lacks marks and non-decimal numbers)
 *   \p{L} \p{M} \p{N} \p{P} \p{S}  the reference's Oniguruma has Unicode 16 tables, PCRE2
 *              10.42 Unicode 14: the characters assigned in between (new emoji, CJK ext. H...)
 *              are added as explicit ranges (tokenizer_unicode.c, generated from the
 *              reference itself)                      -> [\p{S}\x{1F6DC}\x{1FA75}-...]
 *   \b \B      word boundary on that \w                  -> lookbehind/lookahead pairs
 *   \h \H      Oniguruma: hexadecimal digit (PCRE2: horizontal space) -> [0-9a-fA-F] / [^...]
 *   \uHHHH     Oniguruma's code point escape             -> \x{HHHH}
 *   \p{Long_Name}  general category long names           -> the short name PCRE2 knows
 *   (?m)       Ruby's m is "dot matches newline"         -> (?s)
 *   ^ $ .      the reference compiles so that ^/$ match at line breaks and . matches "\n"
 *              (checked against tokenizers 0.23)         -> PCRE2_MULTILINE | PCRE2_DOTALL
 * Refused with TS_ERR_UNSUPPORTED: Oniguruma's nested classes and class intersection
 * ([a-z&&[^x]]), \W or \H inside a class, \y \Y. Left as PCRE2 has them (may differ from
 * the reference for characters new since Unicode 14): subcategories (\p{Lu}...), scripts,
 * a negated category inside a class ([\P{L}]), POSIX brackets ([[:alpha:]]). DeepSeek's and
 * GPT-2's patterns use none of these.
 *
 * Matching follows the reference's find_matches exactly: leftmost-first matches over the
 * piece (the regex sees only the piece, as the reference runs it per piece), an empty match
 * right after the previous match is skipped by advancing one character, the gaps between
 * matches are kept as non-matches; then the Split behaviour decides what the pieces are.
 * Invalid UTF-8 is matched with PCRE2_MATCH_INVALID_UTF: such bytes match nothing and so end
 * up in the gaps, never lost. */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "io/tokenizer_internal.h"

/* GPT-2's pattern, as the reference's ByteLevel pre-tokenizer spells it. */
const char tk_gpt2_pattern[] = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

/* ---------------------------------------------------------------- translation */

typedef struct {
    const char *long_name, *short_name;
} property_alias;

/* General category long names (compared ignoring case, '_', '-' and ' ') and Oniguruma's
 * POSIX-like property names that PCRE2 spells differently. */
static const property_alias property_aliases[] = {
    {"letter", "L"},
    {"casedletter", "LC"},
    {"uppercaseletter", "Lu"},
    {"lowercaseletter", "Ll"},
    {"titlecaseletter", "Lt"},
    {"modifierletter", "Lm"},
    {"otherletter", "Lo"},
    {"mark", "M"},
    {"combiningmark", "M"},
    {"nonspacingmark", "Mn"},
    {"spacingmark", "Mc"},
    {"enclosingmark", "Me"},
    {"number", "N"},
    {"decimalnumber", "Nd"},
    {"letternumber", "Nl"},
    {"othernumber", "No"},
    {"punctuation", "P"},
    {"connectorpunctuation", "Pc"},
    {"dashpunctuation", "Pd"},
    {"openpunctuation", "Ps"},
    {"closepunctuation", "Pe"},
    {"initialpunctuation", "Pi"},
    {"finalpunctuation", "Pf"},
    {"otherpunctuation", "Po"},
    {"symbol", "S"},
    {"mathsymbol", "Sm"},
    {"currencysymbol", "Sc"},
    {"modifiersymbol", "Sk"},
    {"othersymbol", "So"},
    {"separator", "Z"},
    {"spaceseparator", "Zs"},
    {"lineseparator", "Zl"},
    {"paragraphseparator", "Zp"},
    {"other", "C"},
    {"control", "Cc"},
    {"format", "Cf"},
    {"surrogate", "Cs"},
    {"privateuse", "Co"},
    {"unassigned", "Cn"},
    {"space", "White_Space"},
    {"whitespace", "White_Space"},
};

static const char *property_short_name(const char *name, size_t len) {
    char folded[64];
    size_t n = 0;
    for (size_t i = 0; i < len; i++) {
        char c = name[i];
        if (c == '_' || c == '-' || c == ' ') continue;
        if (n + 1 >= sizeof folded) return NULL;
        folded[n++] = (char)tolower((unsigned char)c);
    }
    folded[n] = 0;
    for (size_t i = 0; i < sizeof property_aliases / sizeof property_aliases[0]; i++)
        if (strcmp(folded, property_aliases[i].long_name) == 0) return property_aliases[i].short_name;
    return NULL;
}

typedef struct {
    const char *src;
    size_t len, i;
    bool in_class;
    tk_buf out;
    char *why;
    size_t why_len;
    bool failed;
} translator;

static void emit(translator *t, const char *s) {
    if (!tk_buf_append(&t->out, s, strlen(s))) t->failed = true;
}

static void emit_n(translator *t, const char *s, size_t n) {
    if (!tk_buf_append(&t->out, s, n)) t->failed = true;
}

static void refuse(translator *t, const char *what) {
    if (!t->failed) snprintf(t->why, t->why_len, "%s (at offset %zu)", what, t->i);
    t->failed = true;
}

/* The members of one general category inside a class: \p{X} plus what Unicode 15-16 added. */
static void emit_category(translator *t, const char *cat) {
    emit(t, "\\p{");
    emit(t, cat);
    emit(t, "}");
    emit(t, tk_unicode_extra_ranges(cat[1] ? 0 : cat[0]));
}

/* Oniguruma's \w inside a class: Letter | Mark | Number | Connector_Punctuation. */
static void emit_word_chars(translator *t) {
    emit_category(t, "L");
    emit_category(t, "M");
    emit_category(t, "N");
    emit(t, "\\p{Pc}");
}

static void emit_word_class(translator *t, bool negated) {
    emit(t, negated ? "[^" : "[");
    emit_word_chars(t);
    emit(t, "]");
}

/* \b and \B on Oniguruma's \w, as lookarounds (PCRE2's own \b uses its narrower \w). */
static void emit_word_boundary(translator *t, bool boundary) {
    emit(t, "(?:(?<=");
    emit_word_class(t, false);
    emit(t, boundary ? ")(?!" : ")(?=");
    emit_word_class(t, false);
    emit(t, ")|(?<!");
    emit_word_class(t, false);
    emit(t, boundary ? ")(?=" : ")(?!");
    emit_word_class(t, false);
    emit(t, "))");
}

/* \p{...} / \P{...}: long category names become short ones; L, M, N, P and S also get the
 * characters Unicode 15-16 added to them (outside a class, or inside one when not negated;
 * a negated category inside a class cannot take additions and keeps PCRE2's tables). */
static void translate_property(translator *t, char kind) {
    size_t open = t->i + 2;
    if (open >= t->len || t->src[open] != '{') { /* \pL: one-letter form */
        char name[2] = {open < t->len ? t->src[open] : 0, 0};
        bool negated = kind == 'P';
        t->i = open < t->len ? open + 1 : open;
        if (!name[0]) {
            refuse(t, "\\p without a property");
        } else if (t->in_class && negated) {
            emit(t, "\\P");
            emit(t, name);
        } else {
            if (!t->in_class) emit(t, negated ? "[^" : "[");
            emit_category(t, name);
            if (!t->in_class) emit(t, "]");
        }
        return;
    }
    const char *close = memchr(t->src + open, '}', t->len - open);
    if (!close) {
        refuse(t, "unterminated \\p{");
        return;
    }
    size_t name_start = open + 1, name_end = (size_t)(close - t->src);
    bool caret = name_start < name_end && t->src[name_start] == '^';
    if (caret) name_start++;
    bool negated = (kind == 'P') != caret;
    char name[64];
    const char *alias = property_short_name(t->src + name_start, name_end - name_start);
    snprintf(name, sizeof name, "%.*s", alias ? (int)strlen(alias) : (int)(name_end - name_start),
             alias ? alias : t->src + name_start);
    t->i = name_end + 1;
    bool has_extra = tk_unicode_extra_ranges(name[1] ? 0 : name[0])[0] != 0;
    if (has_extra && !(t->in_class && negated)) {
        if (!t->in_class) emit(t, negated ? "[^" : "[");
        emit_category(t, name);
        if (!t->in_class) emit(t, "]");
        return;
    }
    emit(t, negated ? "\\P{" : "\\p{");
    emit(t, name);
    emit(t, "}");
}

/* Escapes replaced by fixed text, outside and inside a class (NULL inside: refused there). */
static const struct {
    char escape;
    const char *outside, *inside;
} fixed_escapes[] = {
    {'s', "\\p{White_Space}", "\\p{White_Space}"},
    {'S', "\\P{White_Space}", "\\P{White_Space}"},
    {'h', "[0-9a-fA-F]", "0-9a-fA-F"},
    {'H', "[^0-9a-fA-F]", NULL},
};

static bool translate_fixed_escape(translator *t, char e) {
    for (size_t k = 0; k < sizeof fixed_escapes / sizeof fixed_escapes[0]; k++) {
        if (fixed_escapes[k].escape != e) continue;
        const char *rep = t->in_class ? fixed_escapes[k].inside : fixed_escapes[k].outside;
        if (rep)
            emit(t, rep);
        else
            refuse(t, "\\H inside a character class is not supported");
        t->i += 2;
        return true;
    }
    return false;
}

/* \w \W \b \B: Oniguruma's word characters. */
static bool translate_word_escape(translator *t, char e) {
    if (e == 'w') {
        if (t->in_class)
            emit_word_chars(t);
        else
            emit_word_class(t, false);
    } else if (e == 'W') {
        if (t->in_class)
            refuse(t, "\\W inside a character class is not supported");
        else
            emit_word_class(t, true);
    } else if ((e == 'b' || e == 'B') && !t->in_class) { /* [\b] is a backspace in both */
        emit_word_boundary(t, e == 'b');
    } else {
        return false;
    }
    t->i += 2;
    return true;
}

/* \uHHHH -> \x{HHHH}. */
static void translate_code_point(translator *t) {
    size_t k = t->i + 2;
    while (k < t->len && k < t->i + 6 && isxdigit((unsigned char)t->src[k])) k++;
    if (k != t->i + 6) {
        refuse(t, "\\u must be followed by 4 hex digits");
        return;
    }
    emit(t, "\\x{");
    emit_n(t, t->src + t->i + 2, 4);
    emit(t, "}");
    t->i += 6;
}

static void translate_escape(translator *t) {
    if (t->i + 1 >= t->len) {
        refuse(t, "pattern ends with a backslash");
        return;
    }
    char e = t->src[t->i + 1];
    if (translate_fixed_escape(t, e) || translate_word_escape(t, e)) return;
    if (e == 'p' || e == 'P') {
        translate_property(t, e);
    } else if (e == 'u') {
        translate_code_point(t);
    } else if (e == 'y' || e == 'Y') {
        refuse(t, "text segment boundaries (\\y, \\Y) are not supported");
    } else { /* anything else means the same in both: copy the backslash and the character */
        uint32_t cp;
        bool valid;
        size_t n = tk_utf8_next((const uint8_t *)t->src + t->i + 1, t->len - t->i - 1, &cp, &valid);
        emit_n(t, t->src + t->i, 1 + n);
        t->i += 1 + n;
    }
}

/* "(?imx-imx)" or "(?imx-imx:": Ruby's m (dot matches newline) is PCRE2's s. */
static bool translate_option_group(translator *t) {
    size_t k = t->i + 2;
    while (k < t->len && strchr("imx-", t->src[k]) && t->src[k]) k++;
    if (k == t->i + 2 || k >= t->len || (t->src[k] != ')' && t->src[k] != ':')) return false;
    emit(t, "(?");
    for (size_t j = t->i + 2; j < k; j++) emit(t, t->src[j] == 'm' ? "s" : (char[2]){t->src[j], 0});
    t->i = k;
    return true;
}

static void translate_class_open(translator *t) {
    if (t->in_class) {
        if (t->i + 1 < t->len && t->src[t->i + 1] == ':') { /* POSIX bracket [:alpha:] */
            const char *end = strstr(t->src + t->i, ":]");
            if (!end || (size_t)(end - t->src) >= t->len) {
                refuse(t, "unterminated [:class:]");
                return;
            }
            size_t stop = (size_t)(end - t->src) + 2;
            emit_n(t, t->src + t->i, stop - t->i);
            t->i = stop;
            return;
        }
        refuse(t, "nested character classes (Oniguruma set operations) are not supported");
        return;
    }
    t->in_class = true;
    emit(t, "[");
    t->i++;
    if (t->i < t->len && t->src[t->i] == '^') {
        emit(t, "^");
        t->i++;
    }
    if (t->i < t->len && t->src[t->i] == ']') { /* a ']' first in a class is literal in both */
        emit(t, "]");
        t->i++;
    }
}

char *tk_regex_translate(const char *source, size_t len, char *why, size_t why_len) {
    translator t = {.src = source, .len = len, .why = why, .why_len = why_len};
    if (why_len) why[0] = 0;
    while (t.i < t.len && !t.failed) {
        char c = t.src[t.i];
        if (c == '\\') {
            translate_escape(&t);
        } else if (c == '[') {
            translate_class_open(&t);
        } else if (c == ']' && t.in_class) {
            t.in_class = false;
            emit(&t, "]");
            t.i++;
        } else if (c == '&' && t.in_class && t.i + 1 < t.len && t.src[t.i + 1] == '&') {
            refuse(&t, "class intersection (&&) is not supported");
        } else if (c == '(' && !t.in_class && t.i + 1 < t.len && t.src[t.i + 1] == '?' && translate_option_group(&t)) {
            /* done */
        } else {
            emit_n(&t, &c, 1);
            t.i++;
        }
    }
    if (!t.failed && t.in_class) refuse(&t, "unterminated character class");
    if (t.failed) {
        if (why_len && !why[0]) snprintf(why, why_len, "out of memory");
        tk_buf_free(&t.out);
        return NULL;
    }
    if (!tk_buf_append(&t.out, "", 0)) return NULL; /* make sure there is a NUL */
    return (char *)t.out.data;
}

/* ---------------------------------------------------------------- compiling */

ts_status tk_regex_compile(const char *source, size_t len, bool literal, const char *what, pcre2_code **out,
                           ts_io_error *err) {
    char why[160];
    char *pattern;
    *out = NULL;
    if (literal) {
        pattern = malloc(len + 1);
        if (pattern) {
            memcpy(pattern, source, len);
            pattern[len] = 0;
        }
    } else {
        pattern = tk_regex_translate(source, len, why, sizeof why);
        if (!pattern)
            return ts_io_set_error(err, TS_ERR_UNSUPPORTED, "%s: regex /%.*s/: %s", what, (int)(len > 200 ? 200 : len),
                                   source, why);
    }
    if (!pattern) return ts_io_set_error(err, TS_ERR_OOM, "%s: out of memory", what);
    size_t pattern_len = literal ? len : strlen(pattern);
    uint32_t options = PCRE2_UTF | PCRE2_MATCH_INVALID_UTF;
    options |= literal ? PCRE2_LITERAL : PCRE2_UCP | PCRE2_MULTILINE | PCRE2_DOTALL;
    pcre2_compile_context *cc = pcre2_compile_context_create(NULL);
    if (cc) pcre2_set_newline(cc, PCRE2_NEWLINE_LF); /* Oniguruma's line end is "\n" only */
    int code;
    PCRE2_SIZE offset;
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)pattern, pattern_len, options, &code, &offset, cc);
    pcre2_compile_context_free(cc);
    if (!re) {
        PCRE2_UCHAR msg[160];
        pcre2_get_error_message(code, msg, sizeof msg);
        ts_io_set_error(err, TS_ERR_UNSUPPORTED,
                        "%s: regex /%.*s/ does not compile under PCRE2 (as /%.*s/): %s at offset %zu", what,
                        (int)(len > 120 ? 120 : len), source, (int)(pattern_len > 120 ? 120 : pattern_len), pattern,
                        (const char *)msg, (size_t)offset);
        free(pattern);
        return TS_ERR_UNSUPPORTED;
    }
    free(pattern);
    pcre2_jit_compile(re, PCRE2_JIT_COMPLETE); /* when JIT is unavailable the interpreter runs */
    *out = re;
    return TS_OK;
}

pcre2_match_context *tk_match_context_new(void) {
    pcre2_match_context *mc = pcre2_match_context_create(NULL);
    if (!mc) return NULL;
    /* Our patterns are linear; the default match limit (10 M steps) could still be reached on
     * a multi-megabyte run of one character class, which must not turn into an error. */
    pcre2_set_match_limit(mc, UINT32_MAX);
    pcre2_set_depth_limit(mc, UINT32_MAX);
    pcre2_set_heap_limit(mc, 1u << 20); /* KiB: 1 GiB of backtracking memory at most */
    return mc;
}

/* ---------------------------------------------------------------- matching */

static int match_from(const pcre2_code *re, tk_matcher *m, const uint8_t *text, size_t n, size_t start,
                      uint32_t options) {
    int rc = pcre2_match(re, text, n, start, options, m->md, m->mctx);
    if (rc == PCRE2_ERROR_JIT_STACKLIMIT) /* the interpreter keeps its frames on the heap */
        rc = pcre2_match(re, text, n, start, options | PCRE2_NO_JIT, m->md, m->mctx);
    return rc;
}

bool tk_regex_matches_at(const pcre2_code *re, tk_matcher *m, const uint8_t *text, size_t n, size_t at) {
    if (at >= n) return false;
    return match_from(re, m, text, n, at, PCRE2_ANCHORED) >= 0;
}

/* The reference's find_matches (Oniguruma's find_iter + gap filling): marks cover [0, n). */
static ts_status find_matches(const pcre2_code *re, tk_matcher *m, const uint8_t *text, size_t n, tk_marks *marks,
                              ts_io_error *err) {
    size_t search_from = 0, prev = 0, last_match_end = 0;
    bool have_match = false;
    while (re && search_from <= n) {
        int rc = match_from(re, m, text, n, search_from, 0);
        if (rc == PCRE2_ERROR_NOMATCH) break;
        if (rc < 0) {
            PCRE2_UCHAR msg[160];
            pcre2_get_error_message(rc, msg, sizeof msg);
            return ts_io_set_error(err, TS_ERR_INTERNAL, "tokenizer: regex matching failed on a %zu-byte piece: %s", n,
                                   (const char *)msg);
        }
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(m->md);
        size_t s = ov[0], e = ov[1];
        if (e == s && have_match && last_match_end == e) { /* no empty match right after a match */
            uint32_t cp;
            bool valid;
            search_from += search_from < n ? tk_utf8_next(text + search_from, n - search_from, &cp, &valid) : 1;
            continue;
        }
        search_from = e;
        last_match_end = e;
        have_match = true;
        if (prev != s && !tk_marks_push(marks, prev, s, false)) goto oom;
        if (!tk_marks_push(marks, s, e, true)) goto oom;
        prev = e;
    }
    if (prev != n && !tk_marks_push(marks, prev, n, false)) goto oom;
    return TS_OK;
oom:
    return ts_io_set_error(err, TS_ERR_OOM, "tokenizer: out of memory");
}

/* Folds the marks into pieces as the reference's SplitDelimiterBehavior does. */
static bool apply_behavior(const tk_marks *marks, tk_split_behavior behavior, tk_spans *out) {
    size_t first = out->n;
    bool previous_match = false;
    switch (behavior) {
    case TK_SPLIT_ISOLATED:
        for (size_t i = 0; i < marks->n; i++)
            if (!tk_spans_push(out, marks->v[i].start, marks->v[i].end)) return false;
        break;
    case TK_SPLIT_REMOVED:
        for (size_t i = 0; i < marks->n; i++)
            if (!marks->v[i].is_match && !tk_spans_push(out, marks->v[i].start, marks->v[i].end)) return false;
        break;
    case TK_SPLIT_CONTIGUOUS:
        for (size_t i = 0; i < marks->n; i++) {
            const tk_mark *k = &marks->v[i];
            if (k->is_match == previous_match && out->n > first)
                out->v[out->n - 1].end = k->end;
            else if (!tk_spans_push(out, k->start, k->end))
                return false;
            previous_match = k->is_match;
        }
        break;
    case TK_SPLIT_MERGED_WITH_PREVIOUS:
        for (size_t i = 0; i < marks->n; i++) {
            const tk_mark *k = &marks->v[i];
            if (k->is_match && !previous_match && out->n > first)
                out->v[out->n - 1].end = k->end;
            else if (!tk_spans_push(out, k->start, k->end))
                return false;
            previous_match = k->is_match;
        }
        break;
    case TK_SPLIT_MERGED_WITH_NEXT: /* the same, walking backwards, then put back in order */
        for (size_t i = marks->n; i-- > 0;) {
            const tk_mark *k = &marks->v[i];
            if (k->is_match && !previous_match && out->n > first)
                out->v[out->n - 1].start = k->start;
            else if (!tk_spans_push(out, k->start, k->end))
                return false;
            previous_match = k->is_match;
        }
        for (size_t a = first, b = out->n; a + 1 < b; a++, b--) {
            tk_span tmp = out->v[a];
            out->v[a] = out->v[b - 1];
            out->v[b - 1] = tmp;
        }
        break;
    }
    /* empty pieces are dropped, as the reference's PreTokenizedString::split does */
    size_t kept = first;
    for (size_t i = first; i < out->n; i++)
        if (out->v[i].end > out->v[i].start) out->v[kept++] = out->v[i];
    out->n = kept;
    return true;
}

ts_status tk_regex_split(const pcre2_code *re, tk_matcher *m, const uint8_t *text, size_t n, tk_split_behavior behavior,
                         bool invert, tk_marks *scratch, tk_spans *out, ts_io_error *err) {
    if (n == 0) return TS_OK;
    scratch->n = 0;
    ts_status st = find_matches(re, m, text, n, scratch, err);
    if (st != TS_OK) return st;
    if (invert)
        for (size_t i = 0; i < scratch->n; i++) scratch->v[i].is_match = !scratch->v[i].is_match;
    if (!apply_behavior(scratch, behavior, out)) return ts_io_set_error(err, TS_ERR_OOM, "tokenizer: out of memory");
    return TS_OK;
}
