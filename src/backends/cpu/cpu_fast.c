/* cpu_fast.c - the "cpu" backend: the reference CPU backend (cpu_backend.c) with the optimized
 * kernels of fast_kernels.h swapped into its kernel table. Ops without an entry here run the
 * reference kernel, and every fast kernel hands the layouts it does not handle to the reference
 * kernel too, so this backend supports exactly what "cpu-ref" does; the conformance suite
 * (tests/test_conformance.c) checks it against the reference because it is in the registry
 * (backend.c). The GEMM picks its instruction-set tier (AVX-512, AVX2 + FMA, portable C) at
 * run time, so one binary runs everywhere. Also the kept-between-calls scratch buffer the fast
 * kernels share (ts_cpu_scratch). */
#include "backends/cpu/fast_kernels.h"

#include <stdlib.h>

static const ts_cpu_kernel fast_kernels[TS_OP_COUNT] = {
    [TS_OP_MATMUL] = ts_fast_matmul,
    [TS_OP_ADD] = ts_fast_binary,
    [TS_OP_SUB] = ts_fast_binary,
    [TS_OP_MUL] = ts_fast_binary,
    [TS_OP_DIV] = ts_fast_binary,
    [TS_OP_SCALE] = ts_fast_unary,
    [TS_OP_EXP] = ts_fast_unary,
    [TS_OP_LOG] = ts_fast_unary,
    [TS_OP_SQRT] = ts_fast_unary,
    [TS_OP_SIGMOID] = ts_fast_unary,
    [TS_OP_SOFTPLUS] = ts_fast_unary,
    [TS_OP_RELU] = ts_fast_unary,
    [TS_OP_SILU] = ts_fast_unary,
    [TS_OP_CLAMP] = ts_fast_unary,
    [TS_OP_SIGMOID_BACK] = ts_fast_unary_back,
    [TS_OP_RELU_BACK] = ts_fast_unary_back,
    [TS_OP_SILU_BACK] = ts_fast_unary_back,
    [TS_OP_CLAMP_BACK] = ts_fast_unary_back,
    [TS_OP_SWIGLU] = ts_fast_swiglu,
    [TS_OP_SWIGLU_BACK] = ts_fast_swiglu,
    [TS_OP_SUM] = ts_fast_reduce,
    [TS_OP_MEAN] = ts_fast_reduce,
    [TS_OP_MAX] = ts_fast_reduce,
    [TS_OP_SUM_TO] = ts_fast_sum_to,
    [TS_OP_COPY] = ts_fast_copy,
    [TS_OP_CONCAT] = ts_fast_concat,
    [TS_OP_GET_ROWS] = ts_fast_get_rows,
    [TS_OP_GATHER] = ts_fast_gather,
    [TS_OP_SOFTMAX] = ts_fast_softmax,
    [TS_OP_SOFTMAX_BACK] = ts_fast_softmax_back,
    [TS_OP_RMS_NORM] = ts_fast_rms_norm,
    [TS_OP_RMS_NORM_BACK] = ts_fast_rms_norm_back,
    [TS_OP_ROPE] = ts_fast_rope,
    [TS_OP_TOPK] = ts_fast_topk,
    [TS_OP_ATTENTION] = ts_fast_attention,
    [TS_OP_ATTENTION_BACK] = ts_fast_attention_back,
    [TS_OP_SINKHORN] = ts_fast_sinkhorn,
    [TS_OP_SINKHORN_BACK] = ts_fast_sinkhorn_back,
    [TS_OP_MATMUL_ID] = ts_fast_matmul_id,
    [TS_OP_MATMUL_ID_GRAD_W] = ts_fast_matmul_id_grad_w,
    [TS_OP_CROSS_ENTROPY] = ts_fast_cross_entropy,
    [TS_OP_CROSS_ENTROPY_BACK] = ts_fast_cross_entropy_back,
};

ts_status ts_backend_cpu_new(int n_threads, ts_backend **out) {
    return ts_backend_cpu_new_with_kernels("cpu", n_threads, fast_kernels, out);
}

void *ts_cpu_scratch_acquire(ts_cpu_scratch *s, size_t bytes, bool *temporary) {
    pthread_mutex_lock(&s->mu);
    *temporary = s->busy;
    if (!s->busy && s->bytes < bytes) {
        free(s->data);
        s->data = malloc(bytes);
        s->bytes = s->data ? bytes : 0;
    }
    void *p = *temporary ? NULL : s->data;
    if (p) s->busy = true;
    pthread_mutex_unlock(&s->mu);
    return *temporary ? malloc(bytes) : p;
}

void ts_cpu_scratch_release(ts_cpu_scratch *s, void *p, bool temporary) {
    if (temporary) {
        free(p);
        return;
    }
    pthread_mutex_lock(&s->mu);
    s->busy = false;
    pthread_mutex_unlock(&s->mu);
}
