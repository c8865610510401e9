/* dtype.c - the dtype table, scalar conversions between f32 and every narrow format, and
 * element access by index for any dtype. Reference kernels, tests, checkpoint I/O and the graph
 * planner all go through these, so they are the single definition of what each format means.
 *
 * How narrowing works. Every finite source value (f32, f64 or i64) is first unpacked, exactly,
 * into sign * sig * 2^(exp - 63) with the leading 1 of the 64-bit sig at bit 63 (so exp is
 * floor(log2 |x|)). One routine, pack_small(), then rounds that to any of the small float
 * formats with a single round-to-nearest-even step done in integers, going straight into the
 * subnormal range when the exponent is below the format's minimum. Rounding once from the exact
 * value is what makes f64 -> f16 and i64 -> bf16 as exact as f32 -> f16: going through f32
 * first would round twice and occasionally land on the wrong side of a midpoint.
 * f32 -> f16 and f32 -> bf16, the hot pairs, also have short dedicated bit-twiddling versions;
 * tests/test_dtype.c checks them against pack_small() (via ts_store_f64) and against the
 * compiler's _Float16.
 *
 * Conventions (the header gives the summary; the reasons live here):
 *  - NaN stays NaN and is made quiet; the sign and the top payload bits are kept where the format
 *    has room. e4m3 has one NaN per sign (S.1111.111), so NaN -> 0x7F / 0xFF.
 *  - f8_e4m3 is OCP "e4m3fn": bias 7, no Inf, max finite 448. Anything whose magnitude rounds
 *    above 448, and +-Inf, SATURATES to +-448. This matches DeepSeek's FP8 quantisation code and
 *    torch's saturating float8 casts; a NaN produced by overflow would poison a whole block.
 *  - f8_e5m2 is IEEE-like: overflow under round-to-nearest-even goes to +-Inf (a value that
 *    rounds above 57344, i.e. |x| >= 61440, becomes Inf).
 *  - f4_e2m1 (MXFP4 element, values 0, 0.5, 1, 1.5, 2, 3, 4, 6) has no Inf or NaN: overflow and
 *    +-Inf saturate to +-6, and NaN maps to +0 (the MX spec leaves NaN to the scale, and 0 is
 *    the value that does least harm inside a block).
 *  - e8m0 (MX / DeepSeek "ue8m0" scale) is 2^(byte - 127), 0xFF = NaN. From a float it takes
 *    floor(log2 x), i.e. it truncates the mantissa: the MX spec computes a block's shared scale
 *    this way (and DeepSeek's ue8m0 scale is the same power of two); callers that need a scale
 *    >= amax/max_repr round up themselves. The exponent is clamped to [-127, 127]; zero,
 *    negatives, NaN and Inf all give 0xFF.
 *  - Integer stores truncate toward zero and saturate at the type's range; NaN gives 0.
 */
#include <math.h>
#include <string.h>

#include "tessera/core.h"

/* ---------------------------------------------------------------- dtype table */

static const ts_dtype_info dtype_table[] = {
    [TS_F32] = {"f32", 32, true, false},
    [TS_F16] = {"f16", 16, true, false},
    [TS_BF16] = {"bf16", 16, true, false},
    [TS_F8_E4M3] = {"f8_e4m3", 8, true, false},
    [TS_F8_E5M2] = {"f8_e5m2", 8, true, false},
    [TS_I32] = {"i32", 32, false, true},
    [TS_I64] = {"i64", 64, false, true},
    [TS_F64] = {"f64", 64, true, false},
    [TS_I8] = {"i8", 8, false, true},
    [TS_E8M0] = {"e8m0", 8, false, false}, /* a scale, not a value type */
    [TS_F4_E2M1] = {"f4_e2m1", 4, true, false},
};
_Static_assert(sizeof dtype_table / sizeof dtype_table[0] == TS_DTYPE_COUNT,
               "every ts_dtype needs an entry in dtype_table");

/* Returned for out-of-range dtypes so callers that dereference the result do not crash. */
static const ts_dtype_info invalid_dtype = {"invalid", 0, false, false};

static bool dtype_valid(ts_dtype t) { return (unsigned)t < TS_DTYPE_COUNT; }

const ts_dtype_info *ts_dtype_get_info(ts_dtype t) {
    return dtype_valid(t) ? &dtype_table[t] : &invalid_dtype;
}

const char *ts_dtype_name(ts_dtype t) { return ts_dtype_get_info(t)->name; }

ts_status ts_dtype_from_name(const char *name, ts_dtype *out) {
    if (!name || !out) return TS_ERR_INVALID_ARG;
    for (int t = 0; t < TS_DTYPE_COUNT; t++) {
        if (strcmp(name, dtype_table[t].name) == 0) {
            *out = (ts_dtype)t;
            return TS_OK;
        }
    }
    return TS_ERR_INVALID_ARG;
}

size_t ts_dtype_bytes(ts_dtype t, int64_t n) {
    if (n <= 0) return 0;
    uint64_t bits = (uint64_t)ts_dtype_get_info(t)->bits, un = (uint64_t)n;
    /* Split n so n * bits cannot overflow for any n a size_t could describe. */
    return (size_t)((un / 8) * bits + ((un % 8) * bits + 7) / 8);
}

/* ---------------------------------------------------------------- bits */

static uint32_t f32_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static float f32_from_bits(uint32_t u) {
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static uint64_t f64_bits(double d) {
    uint64_t u;
    memcpy(&u, &d, sizeof u);
    return u;
}

/* Position of the highest set bit; x must be nonzero. */
static int top_bit(uint64_t x) {
#if defined(__GNUC__)
    return 63 - __builtin_clzll(x);
#else
    int p = 0;
    while (x >>= 1) p++;
    return p;
#endif
}

/* ---------------------------------------------------------------- exact unpacked values */

typedef enum { VAL_ZERO, VAL_FINITE, VAL_INF, VAL_NAN } value_kind;

/* A finite nonzero value is (-1)^neg * sig * 2^(exp - 63), sig's bit 63 set. For NaN, sig holds
 * the source's fraction bits left-aligned at bit 63 (bit 63 is the quiet bit). */
typedef struct {
    value_kind kind;
    bool neg;
    int exp;
    uint64_t sig;
} exact_value;

static exact_value unpack_f32(float f) {
    uint32_t u = f32_bits(f), e = (u >> 23) & 0xFF, frac = u & 0x7FFFFF;
    exact_value v = {VAL_FINITE, (u >> 31) != 0, 0, 0};
    if (e == 0xFF) {
        v.kind = frac ? VAL_NAN : VAL_INF;
        v.sig = (uint64_t)frac << 41;
    } else if (e == 0) {
        if (frac == 0) {
            v.kind = VAL_ZERO;
        } else { /* subnormal: frac * 2^-149 */
            int p = top_bit(frac);
            v.exp = -149 + p;
            v.sig = (uint64_t)frac << (63 - p);
        }
    } else {
        v.exp = (int)e - 127;
        v.sig = (uint64_t)(frac | 0x800000) << 40;
    }
    return v;
}

static exact_value unpack_f64(double d) {
    uint64_t u = f64_bits(d), frac = u & 0xFFFFFFFFFFFFFull;
    int e = (int)((u >> 52) & 0x7FF);
    exact_value v = {VAL_FINITE, (u >> 63) != 0, 0, 0};
    if (e == 0x7FF) {
        v.kind = frac ? VAL_NAN : VAL_INF;
        v.sig = frac << 12;
    } else if (e == 0) {
        if (frac == 0) {
            v.kind = VAL_ZERO;
        } else { /* subnormal: frac * 2^-1074 */
            int p = top_bit(frac);
            v.exp = -1074 + p;
            v.sig = frac << (63 - p);
        }
    } else {
        v.exp = e - 1023;
        v.sig = (frac | (1ull << 52)) << 11;
    }
    return v;
}

static exact_value unpack_i64(int64_t x) {
    exact_value v = {VAL_ZERO, x < 0, 0, 0};
    if (x == 0) return v;
    uint64_t mag = x < 0 ? 0 - (uint64_t)x : (uint64_t)x;
    int p = top_bit(mag);
    v.kind = VAL_FINITE;
    v.exp = p;
    v.sig = mag << (63 - p);
    return v;
}

/* ---------------------------------------------------------------- small float formats */

typedef struct {
    int mant_bits;        /* stored fraction bits */
    int exp_bits;
    int bias;
    int sign_shift;       /* total bits - 1 */
    bool ieee_specials;   /* the all-ones exponent means Inf/NaN (f16, bf16, e5m2) */
    bool saturates;       /* overflow and Inf give max_finite instead of Inf */
    uint32_t max_finite;  /* magnitude code of the largest finite value */
    uint32_t nan_code;    /* magnitude code of NaN when !ieee_specials; 0 = no NaN (-> +0) */
} small_float;

static const small_float fmt_f16 = {10, 5, 15, 15, true, false, 0x7BFF, 0};
static const small_float fmt_bf16 = {7, 8, 127, 15, true, false, 0x7F7F, 0};
static const small_float fmt_e4m3 = {3, 4, 7, 7, false, true, 0x7E, 0x7F};
static const small_float fmt_e5m2 = {2, 5, 15, 7, true, false, 0x7B, 0};
static const small_float fmt_e2m1 = {1, 2, 1, 3, false, true, 0x7, 0};

/* sig >> shift rounded to nearest, ties to even. shift >= 1. */
static uint64_t shift_right_rne(uint64_t sig, int shift) {
    if (shift > 64) return 0; /* below half of the result's unit: rounds to 0 */
    if (shift == 64) return sig > (1ull << 63) ? 1 : 0; /* exactly half ties to even 0 */
    uint64_t q = sig >> shift, rem = sig & ((1ull << shift) - 1), half = 1ull << (shift - 1);
    if (rem > half || (rem == half && (q & 1))) q++;
    return q;
}

static uint32_t overflow_code(const small_float *f) {
    if (f->saturates) return f->max_finite;
    return ((1u << f->exp_bits) - 1) << f->mant_bits; /* Inf */
}

static uint32_t pack_nan(const small_float *f, const exact_value *v) {
    uint32_t sign = v->neg ? 1u << f->sign_shift : 0;
    if (f->ieee_specials) {
        uint32_t exp_ones = ((1u << f->exp_bits) - 1) << f->mant_bits;
        uint32_t payload = (uint32_t)(v->sig >> (64 - f->mant_bits));
        return sign | exp_ones | payload | (1u << (f->mant_bits - 1)); /* quiet bit */
    }
    return f->nan_code ? sign | f->nan_code : 0;
}

/* Rounds an exact value to format f (round to nearest, ties to even). */
static uint32_t pack_small(const small_float *f, exact_value v) {
    uint32_t sign = v.neg ? 1u << f->sign_shift : 0;
    switch (v.kind) {
    case VAL_ZERO: return sign;
    case VAL_INF: return sign | overflow_code(f);
    case VAL_NAN: return pack_nan(f, &v);
    case VAL_FINITE: break;
    }
    int max_biased = (1 << f->exp_bits) - (f->ieee_specials ? 2 : 1);
    int emin = 1 - f->bias, emax = max_biased - f->bias;
    if (v.exp > emax) return sign | overflow_code(f);
    /* Keep mant_bits + 1 bits of sig for a normal result; below emin the unit of the last place
     * stays at 2^(emin - mant_bits), so shift further. */
    bool subnormal = v.exp < emin;
    int shift = 63 - f->mant_bits + (subnormal ? emin - v.exp : 0);
    uint64_t q = shift_right_rne(v.sig, shift);
    /* q includes the implicit leading bit, which adds one to the exponent field; a carry out of
     * the mantissa (q == 2^(mant_bits+1), or a subnormal rounding up to 2^mant_bits) lands in
     * the exponent field too, giving the right code without a special case. */
    uint32_t code = subnormal ? (uint32_t)q : ((uint32_t)(v.exp - emin) << f->mant_bits) + (uint32_t)q;
    if (code > f->max_finite) return sign | overflow_code(f);
    return sign | code;
}

/* Widening to f32 is exact for every small format. */
static float unpack_small(const small_float *f, uint32_t code) {
    uint32_t sign = ((code >> f->sign_shift) & 1) << 31;
    uint32_t mag = code & ((1u << f->sign_shift) - 1);
    uint32_t e = mag >> f->mant_bits, frac = mag & ((1u << f->mant_bits) - 1);
    int m = f->mant_bits;
    if ((f->ieee_specials && e == (1u << f->exp_bits) - 1) || (f->nan_code && mag == f->nan_code)) {
        if (f->ieee_specials && frac == 0) return f32_from_bits(sign | 0x7F800000);
        return f32_from_bits(sign | 0x7FC00000 | (frac << (23 - m)));
    }
    if (e == 0) {
        if (frac == 0) return f32_from_bits(sign);
        /* frac * 2^(1 - bias - m): normalise so the top set bit becomes the implicit 1. Every
         * format here except bf16 (decoded separately) has its subnormals inside f32's normals. */
        int p = top_bit(frac);
        uint32_t biased = (uint32_t)(1 - f->bias - m + p + 127);
        return f32_from_bits(sign | (biased << 23) | ((frac << (23 - p)) & 0x7FFFFF));
    }
    return f32_from_bits(sign | ((e - (uint32_t)f->bias + 127) << 23) | (frac << (23 - m)));
}

/* ---------------------------------------------------------------- f16 and bf16 */

/* Dedicated f32 -> f16: the same rounding as pack_small, in the classic add-and-shift form. */
static uint16_t f32_bits_to_f16(uint32_t u) {
    uint32_t sign = (u >> 16) & 0x8000, a = u & 0x7FFFFFFF;
    if (a > 0x7F800000) return (uint16_t)(sign | 0x7E00 | ((a >> 13) & 0x3FF)); /* NaN, quiet */
    if (a >= 0x477FF000) return (uint16_t)(sign | 0x7C00); /* >= 65520 (the midpoint to 2^16): Inf */
    if (a >= 0x38800000) { /* normal result: >= 2^-14 */
        uint32_t m = a - ((127u - 15u) << 23); /* rebias; the carry of rounding runs into the exponent */
        return (uint16_t)(sign | ((m + 0xFFF + ((m >> 13) & 1)) >> 13));
    }
    if (a <= 0x33000000) return (uint16_t)sign; /* <= 2^-25, half the smallest subnormal: ties to 0 */
    /* Subnormal result in units of 2^-24: value = mant * 2^(e - 150), so shift by 126 - e. */
    uint32_t e = a >> 23, mant = (a & 0x7FFFFF) | 0x800000;
    int shift = 126 - (int)e; /* 14..24 */
    uint32_t q = mant >> shift, rem = mant & ((1u << shift) - 1), half = 1u << (shift - 1);
    if (rem > half || (rem == half && (q & 1))) q++;
    return (uint16_t)(sign | q);
}

static uint16_t f32_bits_to_bf16(uint32_t u) {
    if ((u & 0x7FFFFFFF) > 0x7F800000) return (uint16_t)((u >> 16) | 0x0040); /* NaN, quiet */
    /* bf16 is the top half of f32, so RNE is: add just under half, plus the kept lsb, truncate.
     * Overflow carries into an all-ones exponent with zero mantissa, which is Inf. */
    return (uint16_t)((u + 0x7FFF + ((u >> 16) & 1)) >> 16);
}

uint16_t ts_f32_to_f16(float f) { return f32_bits_to_f16(f32_bits(f)); }
float ts_f16_to_f32(uint16_t h) { return unpack_small(&fmt_f16, h); }
uint16_t ts_f32_to_bf16(float f) { return f32_bits_to_bf16(f32_bits(f)); }

float ts_bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    if ((u & 0x7FFFFFFF) > 0x7F800000) u |= 0x00400000; /* quiet NaN */
    return f32_from_bits(u);
}

/* ---------------------------------------------------------------- fp8, fp4, e8m0 */

uint8_t ts_f32_to_e4m3(float f) { return (uint8_t)pack_small(&fmt_e4m3, unpack_f32(f)); }
float ts_e4m3_to_f32(uint8_t v) { return unpack_small(&fmt_e4m3, v); }
uint8_t ts_f32_to_e5m2(float f) { return (uint8_t)pack_small(&fmt_e5m2, unpack_f32(f)); }
float ts_e5m2_to_f32(uint8_t v) { return unpack_small(&fmt_e5m2, v); }
uint8_t ts_f32_to_e2m1(float f) { return (uint8_t)pack_small(&fmt_e2m1, unpack_f32(f)); }
float ts_e2m1_to_f32(uint8_t code) { return unpack_small(&fmt_e2m1, code & 0xF); }

/* floor(log2 x) clamped to [-127, 127], biased by 127; see the top comment for why floor. */
static uint8_t pack_e8m0(exact_value v) {
    if (v.kind != VAL_FINITE || v.neg) return 0xFF;
    int e = v.exp < -127 ? -127 : v.exp > 127 ? 127 : v.exp;
    return (uint8_t)(e + 127);
}

uint8_t ts_f32_to_e8m0(float f) { return pack_e8m0(unpack_f32(f)); }

float ts_e8m0_to_f32(uint8_t v) {
    if (v == 0xFF) return f32_from_bits(0x7FC00000);
    if (v == 0) return f32_from_bits(0x00400000); /* 2^-127 is an f32 subnormal */
    return f32_from_bits((uint32_t)v << 23);
}

/* ---------------------------------------------------------------- integers */

/* Truncation toward zero with saturation; NaN -> 0. The comparisons use bounds that are exact
 * doubles (2^31, 2^63, ...), so every double in range converts without undefined behaviour. */
static int8_t f64_to_i8(double v) {
    if (v != v) return 0;
    if (v >= 127.0) return INT8_MAX;
    if (v <= -128.0) return INT8_MIN;
    return (int8_t)v;
}

static int32_t f64_to_i32(double v) {
    if (v != v) return 0;
    if (v >= 2147483647.0) return INT32_MAX;
    if (v <= -2147483648.0) return INT32_MIN;
    return (int32_t)v;
}

static int64_t f64_to_i64(double v) {
    if (v != v) return 0;
    if (v >= 9223372036854775808.0) return INT64_MAX; /* 2^63 */
    if (v <= -9223372036854775808.0) return INT64_MIN;
    return (int64_t)v;
}

static int64_t clamp_i64(int64_t x, int64_t lo, int64_t hi) { return x < lo ? lo : x > hi ? hi : x; }

/* ---------------------------------------------------------------- element access */

static uint8_t load_nibble(const void *base, int64_t i) {
    uint8_t byte = ((const uint8_t *)base)[i >> 1];
    return (uint8_t)((i & 1) ? byte >> 4 : byte & 0x0F);
}

static void store_nibble(void *base, int64_t i, uint8_t code) {
    uint8_t *byte = (uint8_t *)base + (i >> 1);
    code &= 0x0F;
    *byte = (uint8_t)((i & 1) ? (*byte & 0x0F) | (code << 4) : (*byte & 0xF0) | code);
}

double ts_load_f64(const void *base, ts_dtype t, int64_t i) {
    switch (t) {
    case TS_F32: return ((const float *)base)[i];
    case TS_F16: return ts_f16_to_f32(((const uint16_t *)base)[i]);
    case TS_BF16: return ts_bf16_to_f32(((const uint16_t *)base)[i]);
    case TS_F8_E4M3: return ts_e4m3_to_f32(((const uint8_t *)base)[i]);
    case TS_F8_E5M2: return ts_e5m2_to_f32(((const uint8_t *)base)[i]);
    case TS_I32: return ((const int32_t *)base)[i];
    case TS_I64: return (double)((const int64_t *)base)[i];
    case TS_F64: return ((const double *)base)[i];
    case TS_I8: return ((const int8_t *)base)[i];
    case TS_E8M0: return ts_e8m0_to_f32(((const uint8_t *)base)[i]);
    case TS_F4_E2M1: return ts_e2m1_to_f32(load_nibble(base, i));
    case TS_DTYPE_COUNT: break;
    }
    return NAN;
}

/* Narrow float stores round once from the double's exact value (no detour through f32). */
void ts_store_f64(void *base, ts_dtype t, int64_t i, double v) {
    switch (t) {
    case TS_F32: ((float *)base)[i] = (float)v; return; /* the hardware rounds once, RNE */
    case TS_F16: ((uint16_t *)base)[i] = (uint16_t)pack_small(&fmt_f16, unpack_f64(v)); return;
    case TS_BF16: ((uint16_t *)base)[i] = (uint16_t)pack_small(&fmt_bf16, unpack_f64(v)); return;
    case TS_F8_E4M3: ((uint8_t *)base)[i] = (uint8_t)pack_small(&fmt_e4m3, unpack_f64(v)); return;
    case TS_F8_E5M2: ((uint8_t *)base)[i] = (uint8_t)pack_small(&fmt_e5m2, unpack_f64(v)); return;
    case TS_I32: ((int32_t *)base)[i] = f64_to_i32(v); return;
    case TS_I64: ((int64_t *)base)[i] = f64_to_i64(v); return;
    case TS_F64: ((double *)base)[i] = v; return;
    case TS_I8: ((int8_t *)base)[i] = f64_to_i8(v); return;
    case TS_E8M0: ((uint8_t *)base)[i] = pack_e8m0(unpack_f64(v)); return;
    case TS_F4_E2M1: store_nibble(base, i, (uint8_t)pack_small(&fmt_e2m1, unpack_f64(v))); return;
    case TS_DTYPE_COUNT: return;
    }
}

/* i64 does not fit a double exactly above 2^53, so i64 sources skip ts_load_f64 and round once
 * from the integer itself. */
static void store_i64(void *base, ts_dtype t, int64_t i, int64_t x) {
    switch (t) {
    case TS_F32: ((float *)base)[i] = (float)x; return;
    case TS_F16: ((uint16_t *)base)[i] = (uint16_t)pack_small(&fmt_f16, unpack_i64(x)); return;
    case TS_BF16: ((uint16_t *)base)[i] = (uint16_t)pack_small(&fmt_bf16, unpack_i64(x)); return;
    case TS_F8_E4M3: ((uint8_t *)base)[i] = (uint8_t)pack_small(&fmt_e4m3, unpack_i64(x)); return;
    case TS_F8_E5M2: ((uint8_t *)base)[i] = (uint8_t)pack_small(&fmt_e5m2, unpack_i64(x)); return;
    case TS_I32: ((int32_t *)base)[i] = (int32_t)clamp_i64(x, INT32_MIN, INT32_MAX); return;
    case TS_I64: ((int64_t *)base)[i] = x; return;
    case TS_F64: ((double *)base)[i] = (double)x; return;
    case TS_I8: ((int8_t *)base)[i] = (int8_t)clamp_i64(x, INT8_MIN, INT8_MAX); return;
    case TS_E8M0: ((uint8_t *)base)[i] = pack_e8m0(unpack_i64(x)); return;
    case TS_F4_E2M1: store_nibble(base, i, (uint8_t)pack_small(&fmt_e2m1, unpack_i64(x))); return;
    case TS_DTYPE_COUNT: return;
    }
}

/* ---------------------------------------------------------------- bulk conversion */

/* Same dtype: a bit copy (NaN payloads included). For packed f4 an odd tail element goes in
 * by nibble so the neighbouring nibble of dst's last byte survives. */
static void copy_same(void *dst, const void *src, ts_dtype t, int64_t n) {
    if (t != TS_F4_E2M1) {
        memcpy(dst, src, ts_dtype_bytes(t, n));
        return;
    }
    memcpy(dst, src, (size_t)(n / 2));
    if (n & 1) store_nibble(dst, n - 1, load_nibble(src, n - 1));
}

/* Fast loops for f32 sources; each calls the same scalar routine as the public function. */
static bool convert_from_f32(void *dst, ts_dtype dst_type, const float *src, int64_t n) {
    int64_t i;
    switch (dst_type) {
    case TS_F16:
        for (i = 0; i < n; i++) ((uint16_t *)dst)[i] = f32_bits_to_f16(f32_bits(src[i]));
        return true;
    case TS_BF16:
        for (i = 0; i < n; i++) ((uint16_t *)dst)[i] = f32_bits_to_bf16(f32_bits(src[i]));
        return true;
    case TS_F8_E4M3:
        for (i = 0; i < n; i++) ((uint8_t *)dst)[i] = ts_f32_to_e4m3(src[i]);
        return true;
    case TS_F8_E5M2:
        for (i = 0; i < n; i++) ((uint8_t *)dst)[i] = ts_f32_to_e5m2(src[i]);
        return true;
    case TS_E8M0:
        for (i = 0; i < n; i++) ((uint8_t *)dst)[i] = ts_f32_to_e8m0(src[i]);
        return true;
    default: return false;
    }
}

/* Fast loops for f32 destinations (widening is exact). */
static bool convert_to_f32(float *dst, const void *src, ts_dtype src_type, int64_t n) {
    int64_t i;
    switch (src_type) {
    case TS_F16:
        for (i = 0; i < n; i++) dst[i] = ts_f16_to_f32(((const uint16_t *)src)[i]);
        return true;
    case TS_BF16:
        for (i = 0; i < n; i++) dst[i] = ts_bf16_to_f32(((const uint16_t *)src)[i]);
        return true;
    case TS_F8_E4M3:
        for (i = 0; i < n; i++) dst[i] = ts_e4m3_to_f32(((const uint8_t *)src)[i]);
        return true;
    case TS_F8_E5M2:
        for (i = 0; i < n; i++) dst[i] = ts_e5m2_to_f32(((const uint8_t *)src)[i]);
        return true;
    default: return false;
    }
}

ts_status ts_convert(void *dst, ts_dtype dst_type, const void *src, ts_dtype src_type, int64_t n) {
    if (n < 0) return TS_ERR_INVALID_ARG;
    if (!dtype_valid(dst_type) || !dtype_valid(src_type)) return TS_ERR_DTYPE;
    if (n == 0) return TS_OK;
    if (!dst || !src) return TS_ERR_INVALID_ARG;
    if (dst_type == src_type) {
        copy_same(dst, src, src_type, n);
        return TS_OK;
    }
    if (src_type == TS_F32 && convert_from_f32(dst, dst_type, src, n)) return TS_OK;
    if (dst_type == TS_F32 && convert_to_f32(dst, src, src_type, n)) return TS_OK;
    if (src_type == TS_I64) {
        for (int64_t i = 0; i < n; i++) store_i64(dst, dst_type, i, ((const int64_t *)src)[i]);
        return TS_OK;
    }
    /* Every other source dtype is exact in double, so this rounds exactly once. */
    for (int64_t i = 0; i < n; i++) ts_store_f64(dst, dst_type, i, ts_load_f64(src, src_type, i));
    return TS_OK;
}
