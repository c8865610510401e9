/* fast_kernels.h - the optimized CPU kernels of the "cpu" backend (cpu_fast.c puts them in its
 * kernel table; every other op runs the reference kernel). Each kernel takes its fast path only
 * for the layouts it was written for (f32, strides it can address directly) and otherwise calls
 * the reference kernel of the same op, so it accepts every node the reference accepts and fails
 * the same way on bad input. fast_matmul.c holds matmul; fast_elementwise.c the elementwise,
 * softmax and rms_norm paths; fast_attention.c fused attention and its backward. */
#ifndef TS_FAST_KERNELS_H
#define TS_FAST_KERNELS_H

#include "tessera/backend.h"

#define TS_FAST_KERNEL(name) ts_status ts_fast_##name(const ts_cpu_ctx *ctx, ts_tensor *dst)

/* fast_matmul.c */
TS_FAST_KERNEL(matmul);
/* Whether ts_fast_matmul would hand dst to the packed GEMM (true) or to the reference kernel
 * (false); for tests, which check that odd layouts really fall back. */
bool ts_fast_matmul_uses_gemm(const ts_tensor *dst);

/* fast_elementwise.c */
TS_FAST_KERNEL(binary);     /* add, sub, mul, div */
TS_FAST_KERNEL(unary);      /* scale, relu, silu (others: reference) */
TS_FAST_KERNEL(unary_back); /* relu_back, silu_back (others: reference) */
TS_FAST_KERNEL(softmax);
TS_FAST_KERNEL(rms_norm);
/* Whether the fast elementwise / row kernel for dst's op takes its own f32 path (tests). */
bool ts_fast_elementwise_applies(const ts_tensor *dst);

/* fast_attention.c: flash-style f32 attention and its backward */
TS_FAST_KERNEL(attention);
TS_FAST_KERNEL(attention_back);
/* Whether dst (an attention or attention_back node) takes the tiled f32 path (tests). */
bool ts_fast_attention_applies(const ts_tensor *dst);

#endif
