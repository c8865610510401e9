/* fast_kernels.h - the optimized CPU kernels of the "cpu" backend (cpu_fast.c puts them in its
 * kernel table; every other op runs the reference kernel). Each kernel takes its fast path only
 * for the layouts it was written for (f32, strides it can address directly) and otherwise calls
 * the reference kernel of the same op, so it accepts every node the reference accepts and fails
 * the same way on bad input. fast_matmul.c holds matmul; fast_elementwise.c the elementwise,
 * softmax and rms_norm paths; fast_attention.c fused attention and its backward; fast_reduce.c
 * sum_to, sum / mean / max and copy; fast_move.c concat, get_rows and gather; fast_rows.c
 * rms_norm_back, softmax_back, rope and topk; fast_sinkhorn.c the Sinkhorn projection and its
 * backward; fast_moe.c the mixture-of-experts matmul_id and its weight gradient; fast_loss.c the
 * cross-entropy loss and its backward. The vector math several of them share (row max, exp,
 * dot, axpy per SIMD tier) is fast_vmath.h; TS_RANGE_FNS below builds a kernel's plain loops for
 * AVX2 as well. */
#ifndef TS_FAST_KERNELS_H
#define TS_FAST_KERNELS_H

#include <pthread.h>

#include "tessera/backend.h"

#define TS_FAST_KERNEL(name) ts_status ts_fast_##name(const ts_cpu_ctx *ctx, ts_tensor *dst)

/* fast_matmul.c */
TS_FAST_KERNEL(matmul);
/* Whether ts_fast_matmul would hand dst to the packed GEMM (true) or to the reference kernel
 * (false); for tests, which check that odd layouts really fall back. */
bool ts_fast_matmul_uses_gemm(const ts_tensor *dst);

/* fast_elementwise.c */
TS_FAST_KERNEL(binary);     /* add, sub, mul, div */
TS_FAST_KERNEL(unary);      /* scale, exp, log, sqrt, sigmoid, softplus, silu, relu, clamp */
TS_FAST_KERNEL(unary_back); /* sigmoid_back, silu_back, relu_back, clamp_back */
TS_FAST_KERNEL(swiglu);     /* swiglu, swiglu_back */
TS_FAST_KERNEL(softmax);
TS_FAST_KERNEL(rms_norm);
/* Whether the fast elementwise / row kernel for dst's op takes its own f32 path (tests). */
bool ts_fast_elementwise_applies(const ts_tensor *dst);

/* fast_attention.c: flash-style f32 attention and its backward */
TS_FAST_KERNEL(attention);
TS_FAST_KERNEL(attention_back);
/* Whether dst (an attention or attention_back node) takes the tiled f32 path (tests). */
bool ts_fast_attention_applies(const ts_tensor *dst);

/* fast_reduce.c: reductions planned as [s0, k0, s1, k1, s2] -> [k0, k1], and strided copies / casts */
TS_FAST_KERNEL(sum_to);
TS_FAST_KERNEL(reduce); /* sum, mean, max over one axis */
TS_FAST_KERNEL(copy);   /* strided views -> contiguous, casts f32 <-> f16 / bf16 / f64 (and others) */
/* Whether a sum_to / sum / mean / max / copy node takes its f32 path (tests). */
bool ts_fast_reduce_applies(const ts_tensor *dst);

/* fast_move.c: concat, get_rows and gather (along the last axis) as memcpy runs on contiguous storage */
TS_FAST_KERNEL(concat);
TS_FAST_KERNEL(get_rows);
TS_FAST_KERNEL(gather);
/* Whether a concat / get_rows / gather node takes its memcpy path (tests). */
bool ts_fast_move_applies(const ts_tensor *dst);

/* fast_rows.c: row kernels along the last axis (topk: the indices of the k largest) */
TS_FAST_KERNEL(rms_norm_back);
TS_FAST_KERNEL(softmax_back);
TS_FAST_KERNEL(rope);
TS_FAST_KERNEL(topk);
/* Whether an rms_norm_back / softmax_back / rope / topk node takes its f32 path (tests). */
bool ts_fast_rows_applies(const ts_tensor *dst);

/* fast_sinkhorn.c: mHC's Sinkhorn projection and its backward on contiguous f32 matrices */
TS_FAST_KERNEL(sinkhorn);
TS_FAST_KERNEL(sinkhorn_back);
bool ts_fast_sinkhorn_applies(const ts_tensor *dst);

/* fast_moe.c: mixture-of-experts matmul_id and its weight gradient, grouped per expert on the GEMM */
TS_FAST_KERNEL(matmul_id);
TS_FAST_KERNEL(matmul_id_grad_w);
/* Whether a matmul_id / matmul_id_grad_w node takes the grouped GEMM path (tests). */
bool ts_fast_moe_applies(const ts_tensor *dst);

/* fast_loss.c: cross-entropy and its backward over contiguous f32 logits */
TS_FAST_KERNEL(cross_entropy);
TS_FAST_KERNEL(cross_entropy_back);
/* Whether a cross_entropy / cross_entropy_back node takes the f32 path (tests). */
bool ts_fast_loss_applies(const ts_tensor *dst);

/* A range function `name` (for ts_parallel_for) whose work is body(job, begin, end), an
 * always-inlined function of plain loops, and on x86-64 also name_avx2: the same body compiled
 * for AVX2 (not FMA: no contracted multiply-adds), whose vectors hold twice the baseline's (SSE2)
 * floats and doubles. The same C, hence the same operations and the same bits;
 * TS_PICK_RANGE(name) takes the AVX2 one when the AVX2 tier is active (ts_vmath_avx2_active). */
#define TS_ALWAYS_INLINE static inline __attribute__((always_inline))
#if defined(__x86_64__)
#define TS_RANGE_FNS(name, body)                                                                           \
    static void name(void *arg, int64_t begin, int64_t end, int tid) { body(arg, begin, end); }            \
    __attribute__((target("avx2"))) static void name##_avx2(void *arg, int64_t begin, int64_t end, int tid) { \
        body(arg, begin, end);                                                                             \
    }
#define TS_PICK_RANGE(name) (ts_vmath_avx2_active() ? name##_avx2 : name)
#else
#define TS_RANGE_FNS(name, body) \
    static void name(void *arg, int64_t begin, int64_t end, int tid) { body(arg, begin, end); }
#define TS_PICK_RANGE(name) (name)
#endif

/* Sum of x[k]^2 in double (rms_norm and its backward): four interleaved partial sums, so that
 * the adds do not wait on each other; the products are exact in double, and the order differs
 * from the reference's running sum only in a double's last bits. */
static inline double ts_fast_sum_squares(const float *x, int64_t n) {
    double s[4] = {0, 0, 0, 0};
    int64_t k = 0;
    for (; k + 4 <= n; k += 4)
        for (int l = 0; l < 4; l++) s[l] += (double)x[k + l] * x[k + l];
    for (; k < n; k++) s[0] += (double)x[k] * x[k];
    return (s[0] + s[1]) + (s[2] + s[3]);
}

/* Sum of x[k] y[k] (w[k * ws] when w) in double, in four interleaved partial sums like
 * ts_fast_sum_squares (rms_norm's backward). */
static inline double ts_fast_dot_double(const float *x, const float *y, const float *w, int64_t ws, int64_t n) {
    double s[4] = {0, 0, 0, 0};
    int64_t k = 0;
    if (w)
        for (; k + 4 <= n; k += 4)
            for (int l = 0; l < 4; l++) s[l] += (double)x[k + l] * y[k + l] * w[(k + l) * ws];
    else
        for (; k + 4 <= n; k += 4)
            for (int l = 0; l < 4; l++) s[l] += (double)x[k + l] * y[k + l];
    for (; k < n; k++) s[0] += (double)x[k] * y[k] * (w ? w[k * ws] : 1.0f);
    return (s[0] + s[1]) + (s[2] + s[3]);
}

/* A scratch buffer kept between a kernel's calls, so that a graph's runs allocate only on the
 * first one. A second concurrent caller (another graph on another thread) gets a temporary
 * buffer instead; *temporary tells release to free it. NULL when memory is exhausted. */
typedef struct {
    pthread_mutex_t mu;
    void *data;
    size_t bytes;
    bool busy;
} ts_cpu_scratch;
#define TS_CPU_SCRATCH_INIT {PTHREAD_MUTEX_INITIALIZER, NULL, 0, false}
void *ts_cpu_scratch_acquire(ts_cpu_scratch *s, size_t bytes, bool *temporary);
void ts_cpu_scratch_release(ts_cpu_scratch *s, void *p, bool temporary);

#endif
