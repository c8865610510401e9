/* test_dtype.c - checks the dtype table and every conversion in src/core/dtype.c.
 *
 * The conversions are checked against a reference written independently of the implementation:
 * ref_value() decodes a code with ldexp() straight from the format's definition, and
 * ref_encode() rounds by binary-searching the (monotonic) positive codes for the two neighbours
 * of |x| and comparing 2|x| with their sum, which is exact in double. So ties, subnormals and
 * overflow are decided by arithmetic on values, not by the bit tricks under test. On top of that:
 *  - exhaustive decode/encode round trips of all f16, bf16, e4m3, e5m2, e2m1 and e8m0 codes;
 *  - every midpoint between adjacent codes (built by averaging f32 bit patterns, which is the
 *    value midpoint because f32 is linear within a binade), plus the f32 neighbours of each;
 *  - overflow thresholds, Inf, NaN, signed zero and the subnormal extremes spelled out by hand;
 *  - f32 -> f16 against the compiler's _Float16 over millions of pseudo-random patterns;
 *  - f64 and i64 sources, where a detour through f32 (or double) would round twice;
 *  - integer saturation, packed f4 nibbles, ts_convert against the scalar functions.
 * Sweeps count as one check each and print their first few mismatches. */
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "check.h"
#include "tessera/core.h"

/* ---------------------------------------------------------------- helpers */

static uint32_t bits_of(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static float float_of(uint32_t u) {
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static double double_of(uint64_t u) {
    double d;
    memcpy(&d, &u, sizeof d);
    return d;
}

static uint64_t rng_state = 0x243F6A8885A308D3ull;

static uint64_t next_random(void) { /* splitmix64 */
    uint64_t z = (rng_state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* Counts mismatches in a sweep; prints the first few. */
typedef struct {
    const char *what;
    long bad;
} sweep;

#define SWEEP_MISMATCH(sw, ...)                                        \
    do {                                                               \
        if ((sw)->bad++ < 5) {                                         \
            fprintf(stderr, "  mismatch in %s: ", (sw)->what);         \
            fprintf(stderr, __VA_ARGS__);                              \
            fputc('\n', stderr);                                       \
        }                                                              \
    } while (0)

#define SWEEP_DONE(sw) CHECK((sw)->bad == 0, "%s: %ld mismatches", (sw)->what, (sw)->bad)

/* ---------------------------------------------------------------- reference formats */

typedef enum { SPECIAL_IEEE, SPECIAL_FN, SPECIAL_NONE } special_kind;

typedef struct {
    const char *name;
    ts_dtype dtype;
    int bits, mant, exp, bias;
    special_kind special; /* IEEE: Inf + NaNs; FN: only S.1..1.1..1 is NaN; NONE: all finite */
} ref_format;

static const ref_format REF_F16 = {"f16", TS_F16, 16, 10, 5, 15, SPECIAL_IEEE};
static const ref_format REF_BF16 = {"bf16", TS_BF16, 16, 7, 8, 127, SPECIAL_IEEE};
static const ref_format REF_E4M3 = {"e4m3", TS_F8_E4M3, 8, 3, 4, 7, SPECIAL_FN};
static const ref_format REF_E5M2 = {"e5m2", TS_F8_E5M2, 8, 2, 5, 15, SPECIAL_IEEE};
static const ref_format REF_E2M1 = {"e2m1", TS_F4_E2M1, 4, 1, 2, 1, SPECIAL_NONE};
static const ref_format *const ALL_FORMATS[] = {&REF_F16, &REF_BF16, &REF_E4M3, &REF_E5M2, &REF_E2M1};
#define N_FORMATS (int)(sizeof ALL_FORMATS / sizeof ALL_FORMATS[0])

static bool is_neg(double x) { return signbit(x) != 0; }

static uint32_t mag_mask(const ref_format *f) { return (1u << (f->bits - 1)) - 1; }
static uint32_t sign_bit(const ref_format *f) { return 1u << (f->bits - 1); }
static uint32_t exp_ones(const ref_format *f) { return (1u << f->exp) - 1; }

static bool ref_is_nan(const ref_format *f, uint32_t code) {
    uint32_t mag = code & mag_mask(f);
    if (f->special == SPECIAL_IEEE) return (mag >> f->mant) == exp_ones(f) && (mag & ((1u << f->mant) - 1));
    if (f->special == SPECIAL_FN) return mag == mag_mask(f);
    return false;
}

/* Largest positive code that ref_encode may return: Inf for IEEE formats, else the max finite. */
static uint32_t ref_top(const ref_format *f) {
    if (f->special == SPECIAL_IEEE) return exp_ones(f) << f->mant;
    if (f->special == SPECIAL_FN) return mag_mask(f) - 1;
    return mag_mask(f);
}

/* The value of a code by definition (NaN for NaN codes, Inf for Inf). */
static double ref_value(const ref_format *f, uint32_t code) {
    uint32_t mag = code & mag_mask(f), e = mag >> f->mant, m = mag & ((1u << f->mant) - 1);
    double sign = (code & sign_bit(f)) ? -1.0 : 1.0;
    if (ref_is_nan(f, code)) return NAN;
    if (f->special == SPECIAL_IEEE && e == exp_ones(f)) return sign * INFINITY;
    if (e == 0) return sign * ldexp((double)m, 1 - f->bias - f->mant);
    return sign * ldexp((double)((1u << f->mant) + m), (int)e - f->bias - f->mant);
}

/* The value a positive magnitude code would have if the exponent went on without limit: Inf
 * stands for 2^(emax+1), e4m3's NaN slot for 480, e2m1's code 8 for 8. Rounding is defined on
 * this unbounded scale; overflow handling comes after. */
static double ref_unbounded(const ref_format *f, uint32_t mag) {
    uint32_t e = mag >> f->mant, m = mag & ((1u << f->mant) - 1);
    if (e == 0) return ldexp((double)m, 1 - f->bias - f->mant);
    return ldexp((double)((1u << f->mant) + m), (int)e - f->bias - f->mant);
}

/* Round-to-nearest-even of a non-NaN double, by search over values. */
static uint32_t ref_encode(const ref_format *f, double x) {
    uint32_t sign = signbit(x) ? sign_bit(f) : 0, top = ref_top(f);
    double a = fabs(x);
    if (a >= ref_unbounded(f, top)) return sign | top;
    uint32_t lo = 0, hi = top; /* invariant: value(lo) <= a < value(hi) */
    while (hi - lo > 1) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (ref_unbounded(f, mid) <= a) lo = mid;
        else hi = mid;
    }
    double twice = 2.0 * a, sum = ref_unbounded(f, lo) + ref_unbounded(f, hi);
    uint32_t pick = twice < sum ? lo : twice > sum ? hi : ((lo & 1) ? hi : lo);
    return sign | pick;
}

/* The implementation under test, by format. */
static uint32_t impl_encode(const ref_format *f, float x) {
    switch (f->dtype) {
    case TS_F16: return ts_f32_to_f16(x);
    case TS_BF16: return ts_f32_to_bf16(x);
    case TS_F8_E4M3: return ts_f32_to_e4m3(x);
    case TS_F8_E5M2: return ts_f32_to_e5m2(x);
    case TS_F4_E2M1: return ts_f32_to_e2m1(x);
    default: return 0xFFFFFFFF;
    }
}

static float impl_decode(const ref_format *f, uint32_t code) {
    switch (f->dtype) {
    case TS_F16: return ts_f16_to_f32((uint16_t)code);
    case TS_BF16: return ts_bf16_to_f32((uint16_t)code);
    case TS_F8_E4M3: return ts_e4m3_to_f32((uint8_t)code);
    case TS_F8_E5M2: return ts_e5m2_to_f32((uint8_t)code);
    case TS_F4_E2M1: return ts_e2m1_to_f32((uint8_t)code);
    default: return NAN;
    }
}

/* ts_store_f64 then read the code back (f4 packs into a nibble). */
static uint32_t store_f64_code(const ref_format *f, double v) {
    uint8_t buf[8] = {0};
    ts_store_f64(buf, f->dtype, 0, v);
    if (f->bits == 16) return (uint32_t)buf[0] | (uint32_t)buf[1] << 8;
    return f->bits == 4 ? buf[0] & 0x0Fu : buf[0];
}

/* NaN codes count as equal to each other when the sign matches; e2m1 NaN must be +0. */
static bool codes_agree(const ref_format *f, uint32_t got, uint32_t want) {
    if (ref_is_nan(f, want)) return ref_is_nan(f, got) && (got & sign_bit(f)) == (want & sign_bit(f));
    return got == want;
}

/* Expected code for a NaN input of the given sign. */
static uint32_t ref_nan_code(const ref_format *f, bool negative) {
    if (f->special == SPECIAL_NONE) return 0;
    uint32_t q = f->special == SPECIAL_IEEE ? (exp_ones(f) << f->mant) | (1u << (f->mant - 1)) : mag_mask(f);
    return q | (negative ? sign_bit(f) : 0);
}

/* ---------------------------------------------------------------- dtype table, names */

static void test_table(void) {
    static const struct {
        ts_dtype t;
        const char *name;
        int bits;
        bool is_float, is_int;
    } want[] = {
        {TS_F32, "f32", 32, true, false},        {TS_F16, "f16", 16, true, false},
        {TS_BF16, "bf16", 16, true, false},      {TS_F8_E4M3, "f8_e4m3", 8, true, false},
        {TS_F8_E5M2, "f8_e5m2", 8, true, false}, {TS_I32, "i32", 32, false, true},
        {TS_I64, "i64", 64, false, true},        {TS_F64, "f64", 64, true, false},
        {TS_I8, "i8", 8, false, true},           {TS_E8M0, "e8m0", 8, false, false},
        {TS_F4_E2M1, "f4_e2m1", 4, true, false},
    };
    int n = (int)(sizeof want / sizeof want[0]);
    CHECK(n == TS_DTYPE_COUNT, "test table covers %d of %d dtypes", n, TS_DTYPE_COUNT);
    for (int i = 0; i < n; i++) {
        const ts_dtype_info *info = ts_dtype_get_info(want[i].t);
        CHECK(info && info->name && strcmp(info->name, want[i].name) == 0, "name of %s", want[i].name);
        CHECK(info && info->bits == want[i].bits, "%s bits %d", want[i].name, info ? info->bits : -1);
        CHECK(info && info->is_float == want[i].is_float, "%s is_float", want[i].name);
        CHECK(info && info->is_int == want[i].is_int, "%s is_int", want[i].name);
        CHECK(strcmp(ts_dtype_name(want[i].t), want[i].name) == 0, "ts_dtype_name(%s)", want[i].name);
        ts_dtype back = TS_DTYPE_COUNT;
        CHECK(ts_dtype_from_name(want[i].name, &back) == TS_OK && back == want[i].t, "from_name(%s)",
              want[i].name);
        CHECK(ts_dtype_bytes(want[i].t, 8) == (size_t)want[i].bits, "bytes(%s, 8)", want[i].name);
    }
    ts_dtype out = TS_F32;
    CHECK(ts_dtype_from_name("f17", &out) == TS_ERR_INVALID_ARG, "unknown name rejected");
    CHECK(ts_dtype_from_name("F32", &out) == TS_ERR_INVALID_ARG, "names are case-sensitive");
    CHECK(ts_dtype_from_name("", &out) == TS_ERR_INVALID_ARG, "empty name rejected");
    CHECK(ts_dtype_from_name(NULL, &out) == TS_ERR_INVALID_ARG, "NULL name rejected");
    CHECK(ts_dtype_from_name("f32", NULL) == TS_ERR_INVALID_ARG, "NULL out rejected");
    CHECK(ts_dtype_get_info(TS_DTYPE_COUNT) != NULL, "out-of-range dtype still gives an info");
    CHECK(ts_dtype_name((ts_dtype)99) != NULL, "out-of-range dtype still gives a name");

    /* Sub-byte rounding up. */
    CHECK(ts_dtype_bytes(TS_F4_E2M1, 0) == 0, "f4 x0");
    CHECK(ts_dtype_bytes(TS_F4_E2M1, 1) == 1, "f4 x1");
    CHECK(ts_dtype_bytes(TS_F4_E2M1, 2) == 1, "f4 x2");
    CHECK(ts_dtype_bytes(TS_F4_E2M1, 3) == 2, "f4 x3");
    CHECK(ts_dtype_bytes(TS_F4_E2M1, 7) == 4, "f4 x7");
    CHECK(ts_dtype_bytes(TS_F4_E2M1, 4097) == 2049, "f4 x4097");
    CHECK(ts_dtype_bytes(TS_F32, 3) == 12, "f32 x3");
    CHECK(ts_dtype_bytes(TS_E8M0, 5) == 5, "e8m0 x5");
    CHECK(ts_dtype_bytes(TS_I64, 3) == 24, "i64 x3");
    CHECK(ts_dtype_bytes(TS_F32, -1) == 0, "negative count gives 0");
    CHECK(ts_dtype_bytes(TS_F4_E2M1, (int64_t)1 << 40) == (size_t)1 << 39, "f4 x2^40");
}

static void test_status_names(void) {
    const ts_status all[] = {TS_OK,        TS_ERR_INVALID_ARG, TS_ERR_SHAPE,       TS_ERR_DTYPE,
                             TS_ERR_OOM,   TS_ERR_IO,          TS_ERR_FORMAT,      TS_ERR_UNSUPPORTED,
                             TS_ERR_STATE, TS_ERR_RANGE,       TS_ERR_INTERNAL};
    int n = (int)(sizeof all / sizeof all[0]);
    CHECK(strcmp(ts_status_name(TS_OK), "TS_OK") == 0, "TS_OK name");
    CHECK(strcmp(ts_status_name(TS_ERR_DTYPE), "TS_ERR_DTYPE") == 0, "TS_ERR_DTYPE name");
    for (int i = 0; i < n; i++) {
        const char *a = ts_status_name(all[i]);
        CHECK(a && *a, "status %d has a name", (int)all[i]);
        for (int j = 0; j < i; j++)
            CHECK(a && strcmp(a, ts_status_name(all[j])) != 0, "statuses %d and %d share a name", i, j);
    }
    CHECK(ts_status_name((ts_status)1000) != NULL, "unknown status still has a name");
}

/* ---------------------------------------------------------------- exhaustive code sweeps */

/* Every code: decode equals the definition; encode(decode(c)) == c (NaN: stays NaN with its
 * sign; quiet NaNs of the wide formats come back bit-identical). */
static void test_all_codes(const ref_format *f) {
    char what[64];
    snprintf(what, sizeof what, "%s: every code decodes and round-trips", f->name);
    sweep sw = {what, 0};
    uint32_t n = 1u << f->bits;
    for (uint32_t c = 0; c < n; c++) {
        float v = impl_decode(f, c);
        double want = ref_value(f, c);
        uint32_t back = impl_encode(f, v);
        if (isnan(want)) {
            bool neg = (c & sign_bit(f)) != 0;
            if (!isnan(v) || is_neg(v) != neg)
                SWEEP_MISMATCH(&sw, "code 0x%X decodes to %g, want NaN of the same sign", c, v);
            bool quiet = f->special == SPECIAL_IEEE && (c >> (f->mant - 1)) & 1;
            uint32_t want_back = quiet || f->special == SPECIAL_FN ? c : ref_nan_code(f, neg);
            if (!ref_is_nan(f, back) || (quiet && back != c) || (back & sign_bit(f)) != (want_back & sign_bit(f)))
                SWEEP_MISMATCH(&sw, "NaN code 0x%X re-encodes to 0x%X", c, back);
            continue;
        }
        if ((double)v != want || is_neg(v) != is_neg(want))
            SWEEP_MISMATCH(&sw, "code 0x%X decodes to %.9g, want %.9g", c, v, want);
        if (back != c) SWEEP_MISMATCH(&sw, "code 0x%X -> %.9g -> 0x%X", c, v, back);
        if (store_f64_code(f, (double)v) != c) SWEEP_MISMATCH(&sw, "code 0x%X through ts_store_f64", c);
    }
    SWEEP_DONE(&sw);
}

/* Midpoint between every pair of adjacent positive codes (and their negatives): the tie goes to
 * the even code, one f32 ulp either side to the nearer one. Includes 0 | min subnormal, the
 * subnormal/normal boundary, every binade boundary, and max finite | next (overflow). */
static void test_midpoints(const ref_format *f) {
    char what[64];
    snprintf(what, sizeof what, "%s: ties to even at every midpoint", f->name);
    sweep sw = {what, 0};
    uint32_t top = ref_top(f);
    /* Saturating formats also get the pair (max finite, first unrepresentable step). */
    uint32_t last = f->special == SPECIAL_IEEE ? top : top + 1;
    for (uint32_t c = 0; c < last; c++) {
        /* Average the f32 bit patterns: within a binade (and onto the next power of two) f32 is
         * linear in its bits. 2^128 (bf16's step past max) comes out as Inf's pattern, which is
         * that same continuation. From 0, halve the smallest subnormal instead. */
        uint32_t a = bits_of((float)ref_unbounded(f, c)), b = bits_of((float)ref_unbounded(f, c + 1));
        uint32_t mid = c > 0 ? a + (b - a) / 2 : b >= 0x01000000 ? b - 0x00800000 : b >> 1;
        if (2.0 * (double)float_of(mid) != ref_unbounded(f, c) + ref_unbounded(f, c + 1)) {
            SWEEP_MISMATCH(&sw, "test bug: f32 0x%08X is not the midpoint of codes 0x%X, 0x%X", mid, c, c + 1);
            continue;
        }
        uint32_t up = c + 1 > top ? top : c + 1; /* saturation */
        uint32_t even = (c & 1) ? up : c;
        for (int s = 0; s < 2; s++) {
            uint32_t sg = s ? 0x80000000u : 0, csg = s ? sign_bit(f) : 0;
            uint32_t got_mid = impl_encode(f, float_of(sg | mid));
            uint32_t got_below = impl_encode(f, float_of(sg | (mid - 1)));
            uint32_t got_above = impl_encode(f, float_of(sg | (mid + 1)));
            if (got_mid != (csg | even))
                SWEEP_MISMATCH(&sw, "midpoint %.9g of 0x%X/0x%X -> 0x%X, want 0x%X", (double)float_of(sg | mid), c,
                               c + 1, got_mid, csg | even);
            if (got_below != (csg | c))
                SWEEP_MISMATCH(&sw, "just below midpoint %.9g -> 0x%X, want 0x%X", (double)float_of(sg | mid),
                               got_below, csg | c);
            if (got_above != (csg | up))
                SWEEP_MISMATCH(&sw, "just above midpoint %.9g -> 0x%X, want 0x%X", (double)float_of(sg | mid),
                               got_above, csg | up);
            /* The same points through the double path. */
            if (store_f64_code(f, (double)float_of(sg | mid)) != got_mid)
                SWEEP_MISMATCH(&sw, "ts_store_f64 disagrees at midpoint of 0x%X/0x%X", c, c + 1);
        }
    }
    SWEEP_DONE(&sw);
}

/* Random f32 inputs (uniform bit patterns, plus patterns focused on the format's range whose low
 * bits sit at or next to a tie) against ref_encode; and random doubles through ts_store_f64. */
static uint32_t focused_f32(const ref_format *f) {
    uint64_t r = next_random();
    int emin = 1 - f->bias - f->mant - 2, emax = (int)exp_ones(f) - f->bias + 2;
    int e = emin + (int)((r >> 32) % (uint64_t)(emax - emin + 1));
    if (e < -149) e = -149;
    if (e > 127) e = 127;
    uint32_t mant = (uint32_t)r & 0x7FFFFF;
    int drop = 23 - f->mant; /* f32 bits below the format's lsb */
    uint32_t low_mask = (1u << drop) - 1, half = 1u << (drop - 1);
    switch ((r >> 24) & 7) { /* half the time, sit on or beside a tie */
    case 0: mant = (mant & ~low_mask) | half; break;
    case 1: mant = (mant & ~low_mask) | (half + 1); break;
    case 2: mant = (mant & ~low_mask) | (half - 1); break;
    case 3: mant = mant & ~low_mask; break;
    default: break;
    }
    uint32_t sign = (uint32_t)(r >> 63) << 31;
    if (e >= -126) return sign | (uint32_t)(e + 127) << 23 | mant;
    return sign | ((mant | 0x800000) >> (-126 - e)); /* f32 subnormal */
}

static void test_random_against_reference(const ref_format *f, long count) {
    char what[80];
    snprintf(what, sizeof what, "%s: random f32 against reference rounding", f->name);
    sweep sw = {what, 0};
    for (long i = 0; i < count; i++) {
        uint32_t u = (i & 1) ? (uint32_t)next_random() : focused_f32(f);
        float x = float_of(u);
        uint32_t want = isnan(x) ? ref_nan_code(f, is_neg(x)) : ref_encode(f, x);
        uint32_t got = impl_encode(f, x);
        if (!codes_agree(f, got, want)) SWEEP_MISMATCH(&sw, "f32 0x%08X (%.9g) -> 0x%X, want 0x%X", u, x, got, want);
        uint32_t via_double = store_f64_code(f, (double)x);
        if (!codes_agree(f, via_double, got))
            SWEEP_MISMATCH(&sw, "f32 0x%08X: ts_store_f64 gives 0x%X, scalar 0x%X", u, via_double, got);
    }
    SWEEP_DONE(&sw);

    snprintf(what, sizeof what, "%s: random f64 through ts_store_f64", f->name);
    sweep sd = {what, 0};
    for (long i = 0; i < count / 4; i++) {
        /* A focused f32 widened, then random bits below f32's precision: exactly the values
         * where rounding to f32 first would land on a midpoint and round a second time. */
        double x = (double)float_of(focused_f32(f));
        uint64_t xb;
        memcpy(&xb, &x, sizeof xb);
        if ((xb & 0x7FF0000000000000ull) != 0 && !isinf(x) && !isnan(x)) xb ^= next_random() & 0x1FFFFFFFull;
        x = double_of(xb);
        uint32_t want = ref_encode(f, x), got = store_f64_code(f, x);
        if (got != want) SWEEP_MISMATCH(&sd, "f64 %.17g -> 0x%X, want 0x%X", x, got, want);
    }
    SWEEP_DONE(&sd);
}

/* ---------------------------------------------------------------- edges spelled out */

static void test_f16_edges(void) {
    CHECK(ts_f32_to_f16(0.0f) == 0x0000, "f16 +0");
    CHECK(ts_f32_to_f16(-0.0f) == 0x8000, "f16 -0 keeps its sign");
    CHECK(signbit(ts_f16_to_f32(0x8000)) && ts_f16_to_f32(0x8000) == 0.0f, "f16 -0 decodes to -0");
    CHECK(ts_f32_to_f16(1.0f) == 0x3C00, "f16 1");
    CHECK(ts_f32_to_f16(65504.0f) == 0x7BFF, "f16 max finite");
    CHECK(ts_f32_to_f16(65519.996f) == 0x7BFF, "f16 just below overflow threshold");
    CHECK(ts_f32_to_f16(65520.0f) == 0x7C00, "f16 65520 (the tie above max) -> Inf");
    CHECK(ts_f32_to_f16(-65520.0f) == 0xFC00, "f16 -65520 -> -Inf");
    CHECK(ts_f32_to_f16(1e10f) == 0x7C00, "f16 huge -> Inf");
    CHECK(ts_f32_to_f16(INFINITY) == 0x7C00 && ts_f32_to_f16(-INFINITY) == 0xFC00, "f16 +-Inf");
    CHECK(isinf(ts_f16_to_f32(0x7C00)) && ts_f16_to_f32(0xFC00) < 0, "f16 Inf decodes");
    uint16_t qn = ts_f32_to_f16(NAN), nqn = ts_f32_to_f16(-NAN);
    CHECK((qn & 0x7C00) == 0x7C00 && (qn & 0x3FF) && (qn & 0x200) && !(qn & 0x8000), "f16 NaN quiet: 0x%04X", qn);
    CHECK((nqn & 0x8000) && (nqn & 0x3FF), "f16 -NaN keeps sign: 0x%04X", nqn);
    CHECK(ts_f32_to_f16(float_of(0x7F800001)) >= 0x7E00, "f16 from f32 sNaN with low payload is still NaN");
    CHECK(ts_f32_to_f16(ldexpf(1, -24)) == 0x0001, "f16 min subnormal 2^-24");
    CHECK(ts_f16_to_f32(0x0001) == ldexpf(1, -24), "f16 0x0001 decodes");
    CHECK(ts_f32_to_f16(ldexpf(1023, -24)) == 0x03FF, "f16 max subnormal");
    CHECK(ts_f16_to_f32(0x03FF) == ldexpf(1023, -24), "f16 0x03FF decodes");
    CHECK(ts_f32_to_f16(ldexpf(1, -14)) == 0x0400, "f16 min normal");
    CHECK(ts_f32_to_f16(ldexpf(1, -25)) == 0x0000, "f16 half of min subnormal -> 0 (even)");
    CHECK(ts_f32_to_f16(-ldexpf(1, -25)) == 0x8000, "f16 -half of min subnormal -> -0");
    CHECK(ts_f32_to_f16(float_of(bits_of(ldexpf(1, -25)) + 1)) == 0x0001, "f16 just above half -> min");
    CHECK(ts_f32_to_f16(ldexpf(3, -25)) == 0x0002, "f16 1.5 x min subnormal -> 2 (even)");
    CHECK(ts_f32_to_f16(float_of(1)) == 0x0000, "f16 f32 min subnormal -> 0");
    CHECK(ts_f32_to_f16(ldexpf(2047, -25)) == 0x0400, "f16 max subnormal + half ulp -> min normal");
    CHECK(ts_f32_to_f16(1.0f + ldexpf(1, -11)) == 0x3C00, "f16 1 + half ulp -> 1 (even)");
    CHECK(ts_f32_to_f16(1.0f + ldexpf(3, -11)) == 0x3C02, "f16 1 + 1.5 ulp -> 1 + 2 ulp (even)");
    CHECK(ts_f32_to_f16(2048.0f + 1.0f) == 0x6800, "f16 2049 -> 2048 (even)");
    CHECK(ts_f32_to_f16(2048.0f + 3.0f) == 0x6802, "f16 2051 -> 2052 (even)");
}

static void test_bf16_edges(void) {
    CHECK(ts_f32_to_bf16(1.0f) == 0x3F80, "bf16 1");
    CHECK(ts_f32_to_bf16(-0.0f) == 0x8000, "bf16 -0");
    CHECK(ts_f32_to_bf16(FLT_MAX) == 0x7F80, "bf16 FLT_MAX rounds to Inf");
    CHECK(ts_f32_to_bf16(float_of(0x7F7F7FFF)) == 0x7F7F, "bf16 just below overflow threshold");
    CHECK(ts_f32_to_bf16(float_of(0x7F7F8000)) == 0x7F80, "bf16 tie above max -> Inf");
    CHECK(ts_f32_to_bf16(-INFINITY) == 0xFF80, "bf16 -Inf");
    uint16_t qn = ts_f32_to_bf16(NAN), snan = ts_f32_to_bf16(float_of(0xFF800001));
    CHECK((qn & 0x7F80) == 0x7F80 && (qn & 0x40), "bf16 NaN quiet: 0x%04X", qn);
    CHECK((snan & 0x7F80) == 0x7F80 && (snan & 0x7F) && (snan & 0x8000), "bf16 -sNaN stays NaN: 0x%04X", snan);
    CHECK(ts_f32_to_bf16(float_of(0x00010000)) == 0x0001, "bf16 min subnormal 2^-133");
    CHECK(ts_bf16_to_f32(0x0001) == ldexpf(1, -133), "bf16 0x0001 decodes");
    CHECK(ts_bf16_to_f32(0x007F) == ldexpf(127, -133), "bf16 max subnormal decodes");
    CHECK(ts_f32_to_bf16(float_of(0x00008000)) == 0x0000, "bf16 half of min subnormal -> 0");
    CHECK(ts_f32_to_bf16(float_of(0x00008001)) == 0x0001, "bf16 just above half -> min");
    CHECK(ts_f32_to_bf16(float_of(0x00018000)) == 0x0002, "bf16 1.5 x min -> 2 (even)");
    CHECK(ts_f32_to_bf16(float_of(0x007F8000)) == 0x0080, "bf16 max subnormal + half -> min normal");
    CHECK(ts_f32_to_bf16(float_of(0x3F808000)) == 0x3F80, "bf16 tie at 1 -> even");
    CHECK(ts_f32_to_bf16(float_of(0x3F818000)) == 0x3F82, "bf16 tie at 1+ulp -> even");
}

static void test_e4m3_edges(void) {
    CHECK(ts_e4m3_to_f32(0x7E) == 448.0f, "e4m3 0x7E is 448");
    CHECK(ts_f32_to_e4m3(448.0f) == 0x7E && ts_f32_to_e4m3(-448.0f) == 0xFE, "e4m3 +-448");
    CHECK(ts_f32_to_e4m3(464.0f) == 0x7E, "e4m3 464 (tie to the NaN slot) saturates to 448");
    CHECK(ts_f32_to_e4m3(465.0f) == 0x7E, "e4m3 above the rounding threshold saturates");
    CHECK(ts_f32_to_e4m3(1e30f) == 0x7E && ts_f32_to_e4m3(-1e30f) == 0xFE, "e4m3 huge saturates");
    CHECK(ts_f32_to_e4m3(INFINITY) == 0x7E && ts_f32_to_e4m3(-INFINITY) == 0xFE, "e4m3 +-Inf saturates");
    CHECK(ts_f32_to_e4m3(NAN) == 0x7F, "e4m3 NaN -> 0x7F");
    CHECK(ts_f32_to_e4m3(-NAN) == 0xFF, "e4m3 -NaN -> 0xFF");
    CHECK(isnan(ts_e4m3_to_f32(0x7F)) && isnan(ts_e4m3_to_f32(0xFF)), "e4m3 NaN codes decode to NaN");
    CHECK(ts_e4m3_to_f32(0x78) == 256.0f && ts_e4m3_to_f32(0x77) == 240.0f, "e4m3 S.1111.000 is finite");
    CHECK(ts_e4m3_to_f32(0x01) == ldexpf(1, -9), "e4m3 min subnormal 2^-9");
    CHECK(ts_e4m3_to_f32(0x07) == ldexpf(7, -9), "e4m3 max subnormal");
    CHECK(ts_e4m3_to_f32(0x08) == ldexpf(1, -6), "e4m3 min normal");
    CHECK(ts_f32_to_e4m3(ldexpf(1, -10)) == 0x00, "e4m3 half of min subnormal -> 0");
    CHECK(ts_f32_to_e4m3(-ldexpf(1, -10)) == 0x80, "e4m3 -half of min subnormal -> -0");
    CHECK(ts_f32_to_e4m3(ldexpf(1.0f, -10) * 1.0001f) == 0x01, "e4m3 just above half -> min");
    CHECK(ts_f32_to_e4m3(ldexpf(15, -10)) == 0x08, "e4m3 max subnormal + half -> min normal (even)");
    CHECK(ts_f32_to_e4m3(-0.0f) == 0x80 && signbit(ts_e4m3_to_f32(0x80)), "e4m3 -0");
}

static void test_e5m2_edges(void) {
    CHECK(ts_e5m2_to_f32(0x7B) == 57344.0f, "e5m2 max 57344");
    CHECK(ts_f32_to_e5m2(57344.0f) == 0x7B, "e5m2 57344");
    CHECK(ts_f32_to_e5m2(61439.996f) == 0x7B, "e5m2 just below threshold");
    CHECK(ts_f32_to_e5m2(61440.0f) == 0x7C, "e5m2 61440 (tie above max) -> Inf");
    CHECK(ts_f32_to_e5m2(-1e9f) == 0xFC, "e5m2 -huge -> -Inf");
    CHECK(ts_f32_to_e5m2(INFINITY) == 0x7C && ts_f32_to_e5m2(-INFINITY) == 0xFC, "e5m2 +-Inf");
    CHECK(isinf(ts_e5m2_to_f32(0x7C)) && ts_e5m2_to_f32(0xFC) < 0, "e5m2 Inf decodes");
    uint8_t qn = ts_f32_to_e5m2(NAN), nqn = ts_f32_to_e5m2(-NAN);
    CHECK((qn & 0x7F) > 0x7C && !(qn & 0x80), "e5m2 NaN: 0x%02X", qn);
    CHECK((nqn & 0x7F) > 0x7C && (nqn & 0x80), "e5m2 -NaN keeps sign: 0x%02X", nqn);
    for (uint8_t c = 0x7D; c <= 0x7F; c++) CHECK(isnan(ts_e5m2_to_f32(c)), "e5m2 0x%02X is NaN", c);
    CHECK(ts_e5m2_to_f32(0x01) == ldexpf(1, -16), "e5m2 min subnormal 2^-16");
    CHECK(ts_e5m2_to_f32(0x03) == ldexpf(3, -16), "e5m2 max subnormal");
    CHECK(ts_f32_to_e5m2(ldexpf(1, -17)) == 0x00, "e5m2 half of min subnormal -> 0");
    CHECK(ts_f32_to_e5m2(ldexpf(3, -17)) == 0x02, "e5m2 1.5 x min -> 2 (even)");
    CHECK(ts_f32_to_e5m2(ldexpf(7, -17)) == 0x04, "e5m2 max subnormal + half -> min normal");
    CHECK(ts_f32_to_e5m2(-0.0f) == 0x80, "e5m2 -0");
}

static void test_e2m1_table(void) {
    static const float values[8] = {0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f};
    for (uint8_t c = 0; c < 16; c++) {
        float want = (c & 8) ? -values[c & 7] : values[c & 7];
        float got = ts_e2m1_to_f32(c);
        CHECK(got == want && is_neg(got) == is_neg(want), "e2m1 code %u -> %g, want %g", c, got, want);
        CHECK(ts_f32_to_e2m1(want) == c, "e2m1 %g -> code %u", want, ts_f32_to_e2m1(want));
    }
    CHECK(ts_e2m1_to_f32(0xF7) == 6.0f, "e2m1 decode ignores the high nibble");
    CHECK(ts_f32_to_e2m1(0.25f) == 0x0, "e2m1 0.25 -> 0 (even)");
    CHECK(ts_f32_to_e2m1(0.26f) == 0x1, "e2m1 0.26 -> 0.5");
    CHECK(ts_f32_to_e2m1(0.75f) == 0x2, "e2m1 0.75 -> 1 (even)");
    CHECK(ts_f32_to_e2m1(1.25f) == 0x2, "e2m1 1.25 -> 1 (even)");
    CHECK(ts_f32_to_e2m1(1.75f) == 0x4, "e2m1 1.75 -> 2 (even)");
    CHECK(ts_f32_to_e2m1(2.5f) == 0x4, "e2m1 2.5 -> 2 (even)");
    CHECK(ts_f32_to_e2m1(3.5f) == 0x6, "e2m1 3.5 -> 4 (even)");
    CHECK(ts_f32_to_e2m1(5.0f) == 0x6, "e2m1 5 -> 4 (even)");
    CHECK(ts_f32_to_e2m1(5.01f) == 0x7, "e2m1 5.01 -> 6");
    CHECK(ts_f32_to_e2m1(-5.0f) == 0xE, "e2m1 -5 -> -4");
    CHECK(ts_f32_to_e2m1(7.0f) == 0x7 && ts_f32_to_e2m1(100.0f) == 0x7, "e2m1 saturates at 6");
    CHECK(ts_f32_to_e2m1(INFINITY) == 0x7 && ts_f32_to_e2m1(-INFINITY) == 0xF, "e2m1 +-Inf -> +-6");
    CHECK(ts_f32_to_e2m1(NAN) == 0x0 && ts_f32_to_e2m1(-NAN) == 0x0, "e2m1 NaN -> +0");
    CHECK(ts_f32_to_e2m1(-0.0f) == 0x8, "e2m1 -0");
    CHECK(ts_f32_to_e2m1(-0.1f) == 0x8, "e2m1 tiny negative -> -0");
}

static void test_e8m0(void) {
    sweep sw = {"e8m0: every code decodes and round-trips", 0};
    for (int b = 0; b < 256; b++) {
        float v = ts_e8m0_to_f32((uint8_t)b);
        if (b == 255) {
            if (!isnan(v)) SWEEP_MISMATCH(&sw, "0xFF -> %g, want NaN", v);
            continue;
        }
        if ((double)v != ldexp(1.0, b - 127)) SWEEP_MISMATCH(&sw, "0x%02X -> %g", b, v);
        if (ts_f32_to_e8m0(v) != b) SWEEP_MISMATCH(&sw, "2^%d -> 0x%02X", b - 127, ts_f32_to_e8m0(v));
        /* floor(log2): anything in [2^k, 2^(k+1)) maps to k. */
        float below_next = float_of(bits_of(v) + (b == 0 ? 0x3FFFFF : 0x7FFFFF));
        if (ts_f32_to_e8m0(below_next) != b) SWEEP_MISMATCH(&sw, "just below 2^%d -> 0x%02X", b - 126, b);
    }
    SWEEP_DONE(&sw);
    CHECK(ts_f32_to_e8m0(1.0f) == 127, "e8m0 1");
    CHECK(ts_f32_to_e8m0(1.999f) == 127, "e8m0 1.999 truncates to 2^0");
    CHECK(ts_f32_to_e8m0(1.5f) == 127, "e8m0 1.5 truncates to 2^0 (no log-domain rounding)");
    CHECK(ts_f32_to_e8m0(3.0f) == 128, "e8m0 3 -> 2^1");
    CHECK(ts_f32_to_e8m0(0.75f) == 126, "e8m0 0.75 -> 2^-1");
    CHECK(ts_f32_to_e8m0(FLT_MAX) == 254, "e8m0 FLT_MAX -> 2^127");
    CHECK(ts_f32_to_e8m0(ldexpf(1, -127)) == 0, "e8m0 2^-127");
    CHECK(ts_f32_to_e8m0(ldexpf(1, -126)) == 1, "e8m0 2^-126");
    CHECK(ts_f32_to_e8m0(float_of(1)) == 0, "e8m0 f32 min subnormal clamps to 2^-127");
    CHECK(ts_f32_to_e8m0(0.0f) == 0xFF && ts_f32_to_e8m0(-0.0f) == 0xFF, "e8m0 zero -> NaN");
    CHECK(ts_f32_to_e8m0(-1.0f) == 0xFF, "e8m0 negative -> NaN");
    CHECK(ts_f32_to_e8m0(INFINITY) == 0xFF && ts_f32_to_e8m0(-INFINITY) == 0xFF, "e8m0 Inf -> NaN");
    CHECK(ts_f32_to_e8m0(NAN) == 0xFF, "e8m0 NaN -> NaN");
    CHECK(ts_e8m0_to_f32(0) == ldexpf(1, -127), "e8m0 0x00 is 2^-127 (an f32 subnormal)");
    uint8_t buf[2] = {0, 0};
    ts_store_f64(buf, TS_E8M0, 0, 1e300);
    ts_store_f64(buf, TS_E8M0, 1, 1e-300);
    CHECK(buf[0] == 254 && buf[1] == 0, "e8m0 from double clamps to [-127, 127]: %u %u", buf[0], buf[1]);
    ts_store_f64(buf, TS_E8M0, 0, 0x1.fffffffffffffp+3);
    CHECK(buf[0] == 130, "e8m0 from double truncates (just under 16 -> 2^3): %u", buf[0]);
}

/* ---------------------------------------------------------------- compiler _Float16 */

#ifdef __FLT16_MAX__
__extension__ typedef _Float16 compiler_half; /* __extension__: quiet under -Wpedantic */

static uint16_t compiler_f16(float f) {
    compiler_half h = (compiler_half)f;
    uint16_t u;
    memcpy(&u, &h, sizeof u);
    return u;
}

static void test_against_float16(void) {
    sweep sw = {"f32 -> f16 agrees with the compiler's _Float16", 0};
    for (long i = 0; i < 4000000; i++) {
        uint32_t u = (i & 1) ? (uint32_t)next_random() : focused_f32(&REF_F16);
        float x = float_of(u);
        uint16_t got = ts_f32_to_f16(x), want = compiler_f16(x);
        bool ok = isnan(x) ? codes_agree(&REF_F16, got, want) : got == want;
        if (!ok) SWEEP_MISMATCH(&sw, "f32 0x%08X (%.9g) -> 0x%04X, _Float16 0x%04X", u, x, got, want);
    }
    SWEEP_DONE(&sw);
    sweep sd = {"f16 -> f32 agrees with the compiler's _Float16", 0};
    for (uint32_t c = 0; c < 65536; c++) {
        uint16_t h16 = (uint16_t)c;
        compiler_half h;
        memcpy(&h, &h16, sizeof h);
        float want = (float)h, got = ts_f16_to_f32(h16);
        bool ok = isnan(want) ? isnan(got) : bits_of(got) == bits_of(want);
        if (!ok) SWEEP_MISMATCH(&sd, "0x%04X -> %.9g, _Float16 %.9g", c, got, want);
    }
    SWEEP_DONE(&sd);
}
#endif

/* ---------------------------------------------------------------- double rounding */

/* Values just above a narrow format's midpoint whose f32 rounding lands exactly on the midpoint:
 * a two-step conversion would then tie to even and go the wrong way. */
static void test_no_double_rounding(void) {
    uint16_t h = 0;
    ts_store_f64(&h, TS_F16, 0, 1.0 + ldexp(1, -11) + ldexp(1, -40));
    CHECK(h == 0x3C01, "f64 -> f16 rounds once: 0x%04X", h);
    ts_store_f64(&h, TS_F16, 0, -(1.0 + ldexp(1, -11) - ldexp(1, -40)));
    CHECK(h == 0xBC00, "f64 -> f16 just below a tie: 0x%04X", h);
    ts_store_f64(&h, TS_BF16, 0, 1.0 + ldexp(1, -8) + ldexp(1, -30));
    CHECK(h == 0x3F81, "f64 -> bf16 rounds once: 0x%04X", h);
    uint8_t b = 0;
    ts_store_f64(&b, TS_F8_E4M3, 0, 1.0 + ldexp(1, -4) + ldexp(1, -30));
    CHECK(b == 0x39, "f64 -> e4m3 rounds once: 0x%02X", b);
    ts_store_f64(&b, TS_F8_E5M2, 0, 1.0 + ldexp(1, -3) + ldexp(1, -30));
    CHECK(b == 0x3D, "f64 -> e5m2 rounds once: 0x%02X", b);
    ts_store_f64(&b, TS_F4_E2M1, 0, 1.25 + ldexp(1, -30));
    CHECK((b & 0xF) == 0x3, "f64 -> e2m1 rounds once: 0x%X", b & 0xF);
    ts_store_f64(&h, TS_F16, 0, ldexp(1, -25) + ldexp(1, -60));
    CHECK(h == 0x0001, "f64 just above half of f16's min subnormal: 0x%04X", h);
    ts_store_f64(&h, TS_F16, 0, ldexp(1, -1074));
    CHECK(h == 0x0000, "f64 min subnormal -> f16 0");
    ts_store_f64(&h, TS_F16, 0, 1e300);
    CHECK(h == 0x7C00, "f64 huge -> f16 Inf");

    /* i64 sources: 2^30 + 2^22 + 1 is just above the bf16 midpoint 2^30 + 2^22; via f32 it
     * would become that midpoint and tie down to 2^30. */
    int64_t src[4] = {((int64_t)1 << 30) + ((int64_t)1 << 22) + 1, ((int64_t)1 << 60) - 1, INT64_MAX, INT64_MIN};
    uint16_t bf[4];
    CHECK(ts_convert(bf, TS_BF16, src, TS_I64, 4) == TS_OK, "i64 -> bf16");
    CHECK(bf[0] == 0x4E81, "i64 -> bf16 rounds once: 0x%04X", bf[0]);
    CHECK(bf[2] == 0x5F00 && bf[3] == 0xDF00, "i64 extremes -> bf16 +-2^63: 0x%04X 0x%04X", bf[2], bf[3]);
    uint8_t sc[4];
    CHECK(ts_convert(sc, TS_E8M0, src, TS_I64, 4) == TS_OK, "i64 -> e8m0");
    CHECK(sc[1] == 127 + 59, "i64 2^60 - 1 -> e8m0 2^59 (a double would say 2^60): %u", sc[1]);
    CHECK(sc[3] == 0xFF, "negative i64 -> e8m0 NaN");
    float f[4];
    CHECK(ts_convert(f, TS_F32, src, TS_I64, 4) == TS_OK, "i64 -> f32");
    CHECK(f[0] == (float)src[0] && f[1] == (float)src[1], "i64 -> f32 rounds once");
    int32_t i32[4];
    CHECK(ts_convert(i32, TS_I32, src, TS_I64, 4) == TS_OK, "i64 -> i32");
    CHECK(i32[0] == (int32_t)src[0] && i32[2] == INT32_MAX && i32[3] == INT32_MIN, "i64 -> i32 saturates");
}

/* ---------------------------------------------------------------- integers */

static void test_integer_stores(void) {
    static const struct {
        double v;
        int64_t i8, i32, i64;
    } cases[] = {
        {0.0, 0, 0, 0},
        {-0.5, 0, 0, 0},
        {1.9, 1, 1, 1},
        {-1.9, -1, -1, -1},
        {127.9, 127, 127, 127},
        {128.0, 127, 128, 128},
        {-128.5, -128, -128, -128},
        {-129.0, -128, -129, -129},
        {2147483647.5, 127, INT32_MAX, 2147483647},
        {2147483648.0, 127, INT32_MAX, 2147483648LL},
        {-2147483648.9, -128, INT32_MIN, -2147483648LL},
        {-2147483649.0, -128, INT32_MIN, -2147483649LL},
        {4611686018427387904.0, 127, INT32_MAX, 4611686018427387904LL},
        {9223372036854774784.0, 127, INT32_MAX, 9223372036854774784LL},
        {9223372036854775808.0, 127, INT32_MAX, INT64_MAX},
        {-9223372036854775808.0, -128, INT32_MIN, INT64_MIN},
        {-1e19, -128, INT32_MIN, INT64_MIN},
        {1e300, 127, INT32_MAX, INT64_MAX},
        {INFINITY, 127, INT32_MAX, INT64_MAX},
        {-INFINITY, -128, INT32_MIN, INT64_MIN},
        {NAN, 0, 0, 0},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        int8_t a;
        int32_t b;
        int64_t c;
        ts_store_f64(&a, TS_I8, 0, cases[k].v);
        ts_store_f64(&b, TS_I32, 0, cases[k].v);
        ts_store_f64(&c, TS_I64, 0, cases[k].v);
        CHECK(a == cases[k].i8, "i8 <- %.17g gives %d", cases[k].v, a);
        CHECK(b == cases[k].i32, "i32 <- %.17g gives %d", cases[k].v, b);
        CHECK(c == cases[k].i64, "i64 <- %.17g gives %lld", cases[k].v, (long long)c);
    }
    int32_t arr[3] = {-7, INT32_MAX, INT32_MIN};
    CHECK(ts_load_f64(arr, TS_I32, 1) == 2147483647.0, "i32 load");
    CHECK(ts_load_f64(arr, TS_I32, 2) == -2147483648.0, "i32 load min");
    int8_t a8[2] = {-128, 127};
    CHECK(ts_load_f64(a8, TS_I8, 0) == -128.0 && ts_load_f64(a8, TS_I8, 1) == 127.0, "i8 load");
}

/* ---------------------------------------------------------------- element access */

static void test_load_store_every_dtype(void) {
    static const double samples[] = {0.0, 1.5, -2.0, 6.0, -0.5};
    for (int t = 0; t < TS_DTYPE_COUNT; t++) {
        const ts_dtype_info *info = ts_dtype_get_info((ts_dtype)t);
        uint64_t buf[8] = {0};
        for (int i = 0; i < 5; i++) ts_store_f64(buf, (ts_dtype)t, i, samples[i]);
        for (int i = 0; i < 5; i++) {
            double want = samples[i];
            if (info->is_int) want = trunc(want);
            if (t == TS_E8M0) want = want > 0 ? exp2(floor(log2(want))) : NAN;
            double got = ts_load_f64(buf, (ts_dtype)t, i);
            bool ok = isnan(want) ? isnan(got) : got == want;
            CHECK(ok, "%s element %d: stored %g, loaded %g (want %g)", info->name, i, samples[i], got, want);
        }
    }
}

static void test_f4_nibbles(void) {
    uint8_t buf[3] = {0x00, 0xFF, 0xA5};
    ts_store_f64(buf, TS_F4_E2M1, 0, 1.0);  /* code 2 in the low nibble */
    CHECK(buf[0] == 0x02, "f4 element 0 -> low nibble of byte 0: 0x%02X", buf[0]);
    ts_store_f64(buf, TS_F4_E2M1, 1, -6.0); /* code 0xF in the high nibble */
    CHECK(buf[0] == 0xF2, "f4 element 1 -> high nibble, low kept: 0x%02X", buf[0]);
    ts_store_f64(buf, TS_F4_E2M1, 2, 0.0);
    CHECK(buf[1] == 0xF0, "f4 element 2 keeps element 3: 0x%02X", buf[1]);
    ts_store_f64(buf, TS_F4_E2M1, 5, 0.5);
    CHECK(buf[2] == 0x15, "f4 element 5 keeps element 4: 0x%02X", buf[2]);
    CHECK(ts_load_f64(buf, TS_F4_E2M1, 0) == 1.0 && ts_load_f64(buf, TS_F4_E2M1, 1) == -6.0, "f4 load 0, 1");
    CHECK(ts_load_f64(buf, TS_F4_E2M1, 3) == -6.0 && ts_load_f64(buf, TS_F4_E2M1, 4) == 3.0, "f4 load 3, 4");
    CHECK(ts_load_f64(buf, TS_F4_E2M1, 5) == 0.5, "f4 load 5");

    /* ts_convert with an odd count must leave the last byte's other nibble alone. */
    float src[3] = {1.0f, 2.0f, 4.0f};
    uint8_t dst[2] = {0xFF, 0xFF};
    CHECK(ts_convert(dst, TS_F4_E2M1, src, TS_F32, 3) == TS_OK, "f32 -> f4 odd count");
    CHECK(dst[0] == 0x42 && dst[1] == 0xF6, "f32 -> f4 packs and keeps the spare nibble: %02X %02X", dst[0], dst[1]);
    uint8_t copy[2] = {0x00, 0x00};
    CHECK(ts_convert(copy, TS_F4_E2M1, dst, TS_F4_E2M1, 3) == TS_OK, "f4 -> f4 odd count");
    CHECK(copy[0] == 0x42 && copy[1] == 0x06, "f4 copy stops at element 2: %02X %02X", copy[0], copy[1]);
    float back[3];
    CHECK(ts_convert(back, TS_F32, dst, TS_F4_E2M1, 3) == TS_OK, "f4 -> f32");
    CHECK(back[0] == 1.0f && back[1] == 2.0f && back[2] == 4.0f, "f4 -> f32 values");
}

/* ---------------------------------------------------------------- ts_convert */

static void test_convert_args(void) {
    float f = 1.0f;
    uint16_t h = 0;
    CHECK(ts_convert(NULL, TS_F16, &f, TS_F32, 1) == TS_ERR_INVALID_ARG, "NULL dst");
    CHECK(ts_convert(&h, TS_F16, NULL, TS_F32, 1) == TS_ERR_INVALID_ARG, "NULL src");
    CHECK(ts_convert(NULL, TS_F16, NULL, TS_F32, 0) == TS_OK, "n = 0 with NULLs is a no-op");
    CHECK(ts_convert(&h, TS_F16, &f, TS_F32, -1) == TS_ERR_INVALID_ARG, "negative n");
    CHECK(ts_convert(&h, TS_DTYPE_COUNT, &f, TS_F32, 1) != TS_OK, "invalid dst dtype");
    CHECK(ts_convert(&h, TS_F16, &f, (ts_dtype)42, 1) != TS_OK, "invalid src dtype");
    CHECK(ts_convert(&h, TS_F16, &f, TS_F32, 1) == TS_OK && h == 0x3C00, "single element");
}

/* Bulk f32 <-> narrow conversions must match the scalar functions bit for bit. */
static void test_convert_matches_scalar(void) {
    enum { N = 1 << 16 };
    static float src[N], back[N];
    static uint16_t h[N];
    static uint8_t b[N];
    for (int i = 0; i < N; i++) src[i] = float_of((i & 1) ? (uint32_t)next_random() : focused_f32(&REF_E4M3));
    src[0] = NAN, src[2] = -INFINITY, src[4] = -0.0f, src[6] = float_of(0x7F800001), src[8] = 1e-45f;

    static const struct {
        ts_dtype t;
        const ref_format *fmt;
    } narrow[] = {{TS_F16, &REF_F16}, {TS_BF16, &REF_BF16}, {TS_F8_E4M3, &REF_E4M3}, {TS_F8_E5M2, &REF_E5M2}};
    for (size_t k = 0; k < sizeof narrow / sizeof narrow[0]; k++) {
        const ref_format *f = narrow[k].fmt;
        void *dst = f->bits == 16 ? (void *)h : (void *)b;
        char what[64];
        snprintf(what, sizeof what, "ts_convert f32 <-> %s matches the scalar functions", f->name);
        sweep sw = {what, 0};
        if (ts_convert(dst, narrow[k].t, src, TS_F32, N) != TS_OK) SWEEP_MISMATCH(&sw, "ts_convert failed");
        if (ts_convert(back, TS_F32, dst, narrow[k].t, N) != TS_OK) SWEEP_MISMATCH(&sw, "ts_convert back failed");
        for (int i = 0; i < N; i++) {
            uint32_t got = f->bits == 16 ? h[i] : b[i], want = impl_encode(f, src[i]);
            if (got != want) SWEEP_MISMATCH(&sw, "element %d: 0x%X, scalar 0x%X", i, got, want);
            if (bits_of(back[i]) != bits_of(impl_decode(f, got))) SWEEP_MISMATCH(&sw, "element %d widening", i);
        }
        SWEEP_DONE(&sw);
    }

    sweep se = {"ts_convert f32 -> e8m0 / f4 matches the scalar functions", 0};
    static uint8_t packed[N / 2];
    if (ts_convert(b, TS_E8M0, src, TS_F32, N) != TS_OK || ts_convert(packed, TS_F4_E2M1, src, TS_F32, N) != TS_OK)
        SWEEP_MISMATCH(&se, "ts_convert failed");
    for (int i = 0; i < N; i++) {
        if (b[i] != ts_f32_to_e8m0(src[i])) SWEEP_MISMATCH(&se, "e8m0 element %d", i);
        uint8_t nib = (uint8_t)((i & 1) ? packed[i / 2] >> 4 : packed[i / 2] & 0xF);
        if (nib != ts_f32_to_e2m1(src[i])) SWEEP_MISMATCH(&se, "f4 element %d", i);
    }
    SWEEP_DONE(&se);
}

/* Every pair of dtypes: ts_convert equals element-by-element load/store through double on
 * values every dtype can hold approximately (so the generic path and the fast paths agree). */
static void test_convert_all_pairs(void) {
    static const double values[] = {0.0, 1.0, -1.5, 3.0, 0.5, 100.25, -7.0, 448.0, 1e-3, -6.0, 2.75};
    enum { N = (int)(sizeof values / sizeof values[0]) };
    sweep sw = {"ts_convert between every pair of dtypes", 0};
    for (int s = 0; s < TS_DTYPE_COUNT; s++) {
        uint64_t src[N] = {0};
        for (int i = 0; i < N; i++) ts_store_f64(src, (ts_dtype)s, i, values[i]);
        for (int d = 0; d < TS_DTYPE_COUNT; d++) {
            uint64_t got[N], want[N];
            memset(got, 0x5A, sizeof got);
            memset(want, 0x5A, sizeof want);
            if (ts_convert(got, (ts_dtype)d, src, (ts_dtype)s, N) != TS_OK) {
                SWEEP_MISMATCH(&sw, "%s -> %s failed", ts_dtype_name((ts_dtype)s), ts_dtype_name((ts_dtype)d));
                continue;
            }
            for (int i = 0; i < N; i++) ts_store_f64(want, (ts_dtype)d, i, ts_load_f64(src, (ts_dtype)s, i));
            if (memcmp(got, want, sizeof got) != 0)
                SWEEP_MISMATCH(&sw, "%s -> %s differs from load/store", ts_dtype_name((ts_dtype)s),
                               ts_dtype_name((ts_dtype)d));
        }
    }
    SWEEP_DONE(&sw);
}

/* ---------------------------------------------------------------- main */

int main(void) {
    test_table();
    test_status_names();
    for (int k = 0; k < N_FORMATS; k++) {
        test_all_codes(ALL_FORMATS[k]);
        test_midpoints(ALL_FORMATS[k]);
        test_random_against_reference(ALL_FORMATS[k], 400000);
    }
    test_f16_edges();
    test_bf16_edges();
    test_e4m3_edges();
    test_e5m2_edges();
    test_e2m1_table();
    test_e8m0();
#ifdef __FLT16_MAX__
    test_against_float16();
#else
    printf("dtype: no _Float16 in this compiler; skipping the comparison against it\n");
#endif
    test_no_double_rounding();
    test_integer_stores();
    test_load_store_every_dtype();
    test_f4_nibbles();
    test_convert_args();
    test_convert_matches_scalar();
    test_convert_all_pairs();
    return check_summary("dtype");
}
