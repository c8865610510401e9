/* fast_vmath.c - the per-tier vector math of fast_vmath.h: the portable versions, then the
 * AVX2 + FMA ones (compiled for AVX2 by per-function target attributes, called only after
 * run-time detection), then the tier choice. */
#include "backends/cpu/fast_vmath.h"

#include <math.h>

#include "backends/cpu/gemm.h"

float ts_vmax_generic(const float *x, int64_t n) {
    float m = x[0];
    for (int64_t i = 1; i < n; i++)
        if (x[i] > m || isnan(x[i])) m = x[i];
    return m;
}

void ts_vexp_generic(float *d, const float *x, int64_t n) {
    for (int64_t i = 0; i < n; i++) d[i] = expf(x[i]);
}

float ts_vexp_sum_generic(float *x, int64_t n, float shift) {
    float s = 0;
    for (int64_t i = 0; i < n; i++) s += x[i] = expf(x[i] - shift);
    return s;
}

void ts_vexp_each_generic(float *x, const float *shift, int64_t n) {
    for (int64_t i = 0; i < n; i++) x[i] = expf(x[i] - shift[i]);
}

float ts_vdot_generic(const float *a, const float *b, int64_t n) {
    float s = 0;
    for (int64_t i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}

void ts_vaxpy_generic(float *y, float a, const float *x, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] += a * x[i];
}

void ts_vdots_generic(const float *a, const float *const *x, int64_t count, int64_t n, float *out) {
    for (int64_t e = 0; e < count; e++) out[e] = ts_vdot_generic(a, x[e], n);
}

void ts_vaxpys_generic(float *y, const float *a, const float *const *x, int64_t count, int64_t n) {
    for (int64_t e = 0; e < count; e++) ts_vaxpy_generic(y, a[e], x[e], n);
}

static const ts_vmath ts_vmath_generic = {ts_vmax_generic,  ts_vexp_generic,  ts_vexp_sum_generic, ts_vexp_each_generic,
                                          ts_vdot_generic,  ts_vaxpy_generic, ts_vdots_generic,    ts_vaxpys_generic};

#if defined(__x86_64__)

#define AVX2 __attribute__((target("avx2,fma")))
#define AVX2_INLINE static inline __attribute__((always_inline, target("avx2,fma")))

AVX2_INLINE float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* exp in the style of Cephes' expf: 2^n * e^r with |r| <= ln2/2 and a degree-6 polynomial,
 * about 1 ulp. Inputs are clamped to the finite range (the constants come first so that a NaN
 * input stays NaN). */
AVX2_INLINE __m256 exp8(__m256 x) {
    x = _mm256_min_ps(_mm256_set1_ps(88.3762626647949f), x);
    x = _mm256_max_ps(_mm256_set1_ps(-87.3365447504019f), x);
    __m256 n = _mm256_floor_ps(_mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f), _mm256_set1_ps(0.5f)));
    x = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    x = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), x);
    __m256 y = _mm256_set1_ps(1.9875691500e-4f);
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.3981999507e-3f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(8.3334519073e-3f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(4.1665795894e-2f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.6666665459e-1f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(5.0000001201e-1f));
    y = _mm256_fmadd_ps(y, _mm256_mul_ps(x, x), _mm256_add_ps(x, _mm256_set1_ps(1.0f)));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvttps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(y, _mm256_castsi256_ps(e));
}

AVX2 float ts_vmax_avx2(const float *x, int64_t n) {
    float m = x[0];
    int64_t i = 0;
    if (n >= 8) {
        __m256 mv = _mm256_loadu_ps(x);
        for (i = 8; i + 8 <= n; i += 8) mv = _mm256_max_ps(_mm256_loadu_ps(x + i), mv); /* NaN from x wins */
        float v[8];
        _mm256_storeu_ps(v, mv);
        for (int l = 0; l < 8; l++)
            if (v[l] > m || isnan(v[l])) m = v[l];
    }
    for (; i < n; i++)
        if (x[i] > m || isnan(x[i])) m = x[i];
    return m;
}

/* exp8 over the whole float range: +inf above ln(FLT_MAX), 0 below the smallest normal's log
 * (e^-inf = 0 exactly; results that would be subnormal flush to 0). */
AVX2_INLINE __m256 exp8_full(__m256 x) {
    __m256 y = exp8(x);
    y = _mm256_blendv_ps(y, _mm256_set1_ps(INFINITY), _mm256_cmp_ps(x, _mm256_set1_ps(88.7228391f), _CMP_GT_OQ));
    return _mm256_blendv_ps(y, _mm256_setzero_ps(), _mm256_cmp_ps(x, _mm256_set1_ps(-87.3365447504019f), _CMP_LT_OQ));
}

AVX2 void ts_vexp_avx2(float *d, const float *x, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(d + i, exp8_full(_mm256_loadu_ps(x + i)));
    if (i < n) {
        __m256i m = ts_avx2_lanes(n - i);
        _mm256_maskstore_ps(d + i, m, exp8_full(_mm256_maskload_ps(x + i, m)));
    }
}

AVX2 float ts_vexp_sum_avx2(float *x, int64_t n, float shift) {
    __m256 s = _mm256_set1_ps(shift), sum = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(x + i), s));
        _mm256_storeu_ps(x + i, e);
        sum = _mm256_add_ps(sum, e);
    }
    if (i < n) {
        __m256i m = ts_avx2_lanes(n - i);
        __m256 e = _mm256_and_ps(exp8(_mm256_sub_ps(_mm256_maskload_ps(x + i, m), s)), _mm256_castsi256_ps(m));
        _mm256_maskstore_ps(x + i, m, e);
        sum = _mm256_add_ps(sum, e);
    }
    return hsum(sum);
}

AVX2 void ts_vexp_each_avx2(float *x, const float *shift, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(x + i, exp8(_mm256_sub_ps(_mm256_loadu_ps(x + i), _mm256_loadu_ps(shift + i))));
    if (i < n) {
        __m256i m = ts_avx2_lanes(n - i);
        __m256 d = _mm256_sub_ps(_mm256_maskload_ps(x + i, m), _mm256_maskload_ps(shift + i, m));
        _mm256_maskstore_ps(x + i, m, exp8(d));
    }
}

AVX2 float ts_vdot_avx2(const float *a, const float *b, int64_t n) {
    __m256 s = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) s = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s);
    if (i < n) {
        __m256i m = ts_avx2_lanes(n - i);
        s = _mm256_fmadd_ps(_mm256_maskload_ps(a + i, m), _mm256_maskload_ps(b + i, m), s);
    }
    return hsum(s);
}

AVX2 void ts_vaxpy_avx2(float *y, float a, const float *x, int64_t n) {
    __m256 av = _mm256_set1_ps(a);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, _mm256_fmadd_ps(av, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
    if (i < n) {
        __m256i m = ts_avx2_lanes(n - i);
        _mm256_maskstore_ps(y + i, m, _mm256_fmadd_ps(av, _mm256_maskload_ps(x + i, m), _mm256_maskload_ps(y + i, m)));
    }
}

/* Four rows at a time: four independent FMA chains, each row's lanes and tail as in vdot. */
AVX2 void ts_vdots_avx2(const float *a, const float *const *x, int64_t count, int64_t n, float *out) {
    int64_t e = 0;
    for (; e + 4 <= count; e += 4) {
        __m256 s[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
        int64_t i = 0;
        for (; i + 8 <= n; i += 8) {
            __m256 av = _mm256_loadu_ps(a + i);
            for (int r = 0; r < 4; r++) s[r] = _mm256_fmadd_ps(av, _mm256_loadu_ps(x[e + r] + i), s[r]);
        }
        if (i < n) {
            __m256i m = ts_avx2_lanes(n - i);
            __m256 av = _mm256_maskload_ps(a + i, m);
            for (int r = 0; r < 4; r++) s[r] = _mm256_fmadd_ps(av, _mm256_maskload_ps(x[e + r] + i, m), s[r]);
        }
        for (int r = 0; r < 4; r++) out[e + r] = hsum(s[r]);
    }
    for (; e < count; e++) out[e] = ts_vdot_avx2(a, x[e], n);
}

/* Elements [i, i + 8V) of y += a_e x_e for all rows e, held in registers: one load and one
 * store of y per 8V elements instead of one per row. Past n (the masked tail, V = 1), as vaxpy. */
AVX2_INLINE void axpys_vectors(float *y, const float *a, const float *const *x, int64_t count, int64_t i, int64_t n,
                               const int V) {
    __m256i m = ts_avx2_lanes(n - i);
    __m256 acc[8];
    for (int v = 0; v < V; v++) acc[v] = i + 8 <= n ? _mm256_loadu_ps(y + i + 8 * v) : _mm256_maskload_ps(y + i, m);
    for (int64_t e = 0; e < count; e++) {
        __m256 av = _mm256_set1_ps(a[e]);
        for (int v = 0; v < V; v++)
            acc[v] = _mm256_fmadd_ps(av, i + 8 <= n ? _mm256_loadu_ps(x[e] + i + 8 * v) : _mm256_maskload_ps(x[e] + i, m),
                                     acc[v]);
    }
    for (int v = 0; v < V; v++) {
        if (i + 8 <= n) _mm256_storeu_ps(y + i + 8 * v, acc[v]);
        else _mm256_maskstore_ps(y + i, m, acc[v]);
    }
}

AVX2 void ts_vaxpys_avx2(float *y, const float *a, const float *const *x, int64_t count, int64_t n) {
    int64_t i = 0;
    for (; i + 64 <= n; i += 64) axpys_vectors(y, a, x, count, i, n, 8);
    for (; i < n; i += 8) axpys_vectors(y, a, x, count, i, n, 1);
}

static const ts_vmath ts_vmath_avx2 = {ts_vmax_avx2,  ts_vexp_avx2,  ts_vexp_sum_avx2, ts_vexp_each_avx2,
                                       ts_vdot_avx2,  ts_vaxpy_avx2, ts_vdots_avx2,    ts_vaxpys_avx2};

#endif

/* AVX-512 CPUs all have AVX2 + FMA; wider vectors buy little on these memory-bound loops. */
bool ts_vmath_avx2_active(void) {
    ts_gemm_tier t = ts_gemm_tier_active();
    return t == TS_GEMM_TIER_AVX2 || t == TS_GEMM_TIER_AVX512;
}

const ts_vmath *ts_vmath_active(void) {
#if defined(__x86_64__)
    if (ts_vmath_avx2_active()) return &ts_vmath_avx2;
#endif
    return &ts_vmath_generic;
}
