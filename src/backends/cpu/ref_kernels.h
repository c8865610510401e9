/* ref_kernels.h - the reference CPU kernels, one per op (see graph.h for each op's contract).
 * ref_elementwise.c holds creation/movement, elementwise, reductions and their backward
 * helpers; ref_nn.c holds matmul, softmax, norms, rope, indexing, losses and the mixture-of-
 * experts matmul_id (+ its weight gradient); ref_attention.c holds fused attention and its
 * backward; ref_sinkhorn.c mHC's Sinkhorn projection and its backward. */
#ifndef TS_REF_KERNELS_H
#define TS_REF_KERNELS_H

#include "tessera/backend.h"

#define TS_REF_KERNEL(name) ts_status ts_ref_##name(const ts_cpu_ctx *ctx, ts_tensor *dst)

/* ref_elementwise.c */
TS_REF_KERNEL(fill);
TS_REF_KERNEL(copy);
TS_REF_KERNEL(concat);
TS_REF_KERNEL(binary);       /* add, sub, mul, div */
TS_REF_KERNEL(unary);        /* scale, exp, log, sqrt, sigmoid, softplus, silu, relu, clamp */
TS_REF_KERNEL(reduce);       /* sum, mean, max */
TS_REF_KERNEL(sum_to);
TS_REF_KERNEL(unary_back);   /* sigmoid_back, silu_back, relu_back, clamp_back */
TS_REF_KERNEL(swiglu);       /* swiglu and swiglu_back */
TS_REF_KERNEL(max_back);

/* ref_nn.c */
TS_REF_KERNEL(matmul);
TS_REF_KERNEL(softmax);
TS_REF_KERNEL(rms_norm);
TS_REF_KERNEL(rope);
TS_REF_KERNEL(get_rows);
TS_REF_KERNEL(topk);
TS_REF_KERNEL(gather);
TS_REF_KERNEL(scatter_add);
TS_REF_KERNEL(cross_entropy);
TS_REF_KERNEL(softmax_back);
TS_REF_KERNEL(rms_norm_back);
TS_REF_KERNEL(get_rows_back);
TS_REF_KERNEL(cross_entropy_back);
TS_REF_KERNEL(matmul_id);
TS_REF_KERNEL(matmul_id_grad_w);

/* ref_attention.c */
TS_REF_KERNEL(attention);
TS_REF_KERNEL(attention_back);

/* ref_sinkhorn.c: the kernels and the per-matrix arithmetic, in double, of one row-major n x n
 * matrix (n <= TS_SINKHORN_MAX_N, iters <= TS_SINKHORN_MAX_ITERS), which fast_sinkhorn.c reuses */
TS_REF_KERNEL(sinkhorn);
TS_REF_KERNEL(sinkhorn_back);
/* k: the logits in, the projection out */
void ts_sinkhorn_matrix(double *k, int n, int iters, double eps);
/* The forward's first part (softmax along rows into p unless NULL, then + eps): what the
 * normalisation steps, columns first, start from (fast_sinkhorn.c runs those itself for n = 4) */
void ts_sinkhorn_matrix_start(double *k, int n, double eps, double *p);
/* x: the logits; g: d loss / d projection in, d loss / d logits out */
void ts_sinkhorn_matrix_back(const double *x, double *g, int n, int iters, double eps);

#endif
