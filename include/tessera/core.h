/* core.h - the bottom layer of Tessera: status codes, dtypes and their conversions,
 * a deterministic thread pool and a small RNG. Everything above (graph, backends, model,
 * train, serve) is built on these; nothing here knows about graphs. */
#ifndef TESSERA_CORE_H
#define TESSERA_CORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define TS_VERSION_STRING "0.1.0"

/* ---------------------------------------------------------------- status */

typedef enum {
    TS_OK = 0,
    TS_ERR_INVALID_ARG, /* a caller passed something meaningless (NULL, negative size...) */
    TS_ERR_SHAPE,       /* shapes do not fit the operation */
    TS_ERR_DTYPE,       /* dtype not accepted by the operation */
    TS_ERR_OOM,         /* an allocation failed */
    TS_ERR_IO,          /* a file could not be read or written */
    TS_ERR_FORMAT,      /* a file or message is malformed */
    TS_ERR_UNSUPPORTED, /* valid request the implementation cannot do (yet) */
    TS_ERR_STATE,       /* called at the wrong time (e.g. compute before alloc) */
    TS_ERR_RANGE,       /* an index or value is out of its valid range */
    TS_ERR_INTERNAL     /* a bug in Tessera */
} ts_status;

const char *ts_status_name(ts_status s);

/* The one-line error messages of functions taking (char *err, size_t err_size): formats into
 * err when it is non-NULL and err_size > 0, else does nothing. */
void ts_error_printf(char *err, size_t err_size, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* ---------------------------------------------------------------- dtypes */

/* Room is left in this enum for block-scaled types; TS_DTYPE_COUNT must stay last. */
typedef enum {
    TS_F32 = 0,
    TS_F16,
    TS_BF16,
    TS_F8_E4M3, /* OCP FP8 E4M3 "fn": no Inf, NaN = S.1111.111, max 448 */
    TS_F8_E5M2, /* OCP FP8 E5M2: IEEE-like, has Inf and NaN, max 57344 */
    TS_I32,
    TS_I64,
    TS_F64,     /* used by reference checks (gradient checking in double) */
    TS_I8,
    TS_E8M0,    /* unsigned power-of-two scale: 2^(byte-127), 0xFF = NaN */
    TS_F4_E2M1, /* MXFP4 element: 2 per byte, low nibble first; scales live in a separate E8M0 tensor */
    TS_DTYPE_COUNT
} ts_dtype;

typedef struct {
    const char *name;  /* "f32", "bf16", ... */
    int bits;          /* bits per element (4 for f4_e2m1) */
    bool is_float;
    bool is_int;
} ts_dtype_info;

const ts_dtype_info *ts_dtype_get_info(ts_dtype t);
const char *ts_dtype_name(ts_dtype t);
/* Parses a name as printed by ts_dtype_name; returns TS_ERR_INVALID_ARG when unknown. */
ts_status ts_dtype_from_name(const char *name, ts_dtype *out);
/* Bytes needed for n elements (rounded up for sub-byte types). */
size_t ts_dtype_bytes(ts_dtype t, int64_t n);

/* Scalar conversions. All float narrowing rounds to nearest, ties to even. NaN stays NaN.
 * Overflow: f16/bf16/e5m2 go to +-Inf; e4m3 (which has no Inf) and e2m1 saturate to their
 * largest finite value; e8m0 takes floor(log2 x) (the MX / DeepSeek ue8m0 scale convention)
 * and returns NaN (0xFF) for non-positive or non-finite input. Subnormals are produced and consumed exactly. */
uint16_t ts_f32_to_f16(float f);
float ts_f16_to_f32(uint16_t h);
uint16_t ts_f32_to_bf16(float f);
float ts_bf16_to_f32(uint16_t h);
uint8_t ts_f32_to_e4m3(float f);
float ts_e4m3_to_f32(uint8_t v);
uint8_t ts_f32_to_e5m2(float f);
float ts_e5m2_to_f32(uint8_t v);
uint8_t ts_f32_to_e8m0(float f);
float ts_e8m0_to_f32(uint8_t v);
uint8_t ts_f32_to_e2m1(float f); /* 4-bit code in the low nibble */
float ts_e2m1_to_f32(uint8_t code);

/* Element access by index for any dtype (packed types included); used by reference kernels,
 * tests and I/O. Integer dtypes convert by truncation toward zero on store (values are
 * expected to be integral). Narrowing float stores round as above. */
double ts_load_f64(const void *base, ts_dtype t, int64_t i);
void ts_store_f64(void *base, ts_dtype t, int64_t i, double v);

/* Converts n contiguous elements; src and dst must not overlap. */
ts_status ts_convert(void *dst, ts_dtype dst_type, const void *src, ts_dtype src_type, int64_t n);

/* ---------------------------------------------------------------- thread pool */

/* A fixed set of worker threads. ts_parallel_for splits [0, n) into one contiguous chunk per
 * thread (static schedule), so the same thread count always gives the same partition and
 * therefore bit-identical results. Calls from inside a worker run serially. */
typedef struct ts_threadpool ts_threadpool;
typedef void (*ts_range_fn)(void *ctx, int64_t begin, int64_t end, int thread_id);

ts_status ts_threadpool_new(int n_threads, ts_threadpool **out);
void ts_threadpool_free(ts_threadpool *pool);
int ts_threadpool_size(const ts_threadpool *pool);
/* min_chunk: do not give a thread fewer than this many items (limits overhead on small n). */
void ts_parallel_for(ts_threadpool *pool, int64_t n, int64_t min_chunk, ts_range_fn fn, void *ctx);

/* ---------------------------------------------------------------- rng */

/* Counter-free, splittable generator (xoshiro256** seeded by splitmix64). */
typedef struct { uint64_t s[4]; } ts_rng;
void ts_rng_seed(ts_rng *r, uint64_t seed);
uint64_t ts_rng_next(ts_rng *r);
double ts_rng_uniform(ts_rng *r);            /* [0, 1) */
double ts_rng_normal(ts_rng *r);             /* N(0, 1) */

/* ---------------------------------------------------------------- misc */

int ts_cpu_count(void);
double ts_time_seconds(void); /* monotonic */

#ifdef __cplusplus
}
#endif
#endif
