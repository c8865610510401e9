/* fast_loss.c - the "cpu" backend's f32 cross-entropy and its backward: a language model's loss
 * over [tokens, vocabulary] logits, which on a small model is as much work as a matmul when
 * done element by element in double (the reference). Rows run in parallel, each through the
 * vector math of fast_vmath.h (the row max, then e^(x - max) and its sum in blocks); nothing is
 * allocated after the first call.
 *
 * Same conventions as the reference (ref_nn.c): targets < 0 are ignored, the loss is the mean
 * over the others (0 when there are none), and per-row losses are summed in row order in double,
 * so the result is the same for any thread count. Targets >= V, and every layout this file does
 * not handle (non-f32, non-contiguous, other shapes), go to the reference kernel, which reports
 * the error or does the work. */
#include <math.h>
#include <string.h>

#include "backends/cpu/fast_kernels.h"
#include "backends/cpu/fast_vmath.h"
#include "backends/cpu/ref_common.h"
#include "backends/cpu/ref_kernels.h"

#define EXP_BLOCK 512 /* logits per stack block while summing e^(x - max) */

typedef struct {
    const float *x;       /* [rows, V] */
    const void *targets;  /* [rows], i32 or i64 */
    bool t64;
    int64_t V;
    float *dx;            /* backward: [rows, V] */
    float g;              /* backward: dloss / n_valid */
    double *row_loss;     /* forward: [rows] */
    const ts_vmath *vm;
} ce_job;

static int64_t target_of(const ce_job *j, int64_t r) {
    return j->t64 ? ((const int64_t *)j->targets)[r] : ((const int32_t *)j->targets)[r];
}

/* log sum_k e^(x[k] - m) for the row's max m, without writing the row. */
static double log_sum_exp_shifted(const ts_vmath *vm, const float *x, int64_t V, float m) {
    float block[EXP_BLOCK];
    double sum = 0;
    for (int64_t k = 0; k < V; k += EXP_BLOCK) {
        int64_t n = V - k < EXP_BLOCK ? V - k : EXP_BLOCK;
        memcpy(block, x + k, (size_t)n * sizeof *block);
        sum += vm->exp_sum(block, n, m);
    }
    return log(sum);
}

static void forward_range(void *arg, int64_t begin, int64_t end, int tid) {
    const ce_job *j = arg;
    for (int64_t r = begin; r < end; r++) {
        int64_t t = target_of(j, r);
        const float *x = j->x + r * j->V;
        if (t < 0) {
            j->row_loss[r] = 0;
            continue;
        }
        float m = j->vm->max(x, j->V);
        j->row_loss[r] = (double)m + log_sum_exp_shifted(j->vm, x, j->V, m) - (double)x[t];
    }
}

/* dx = g (softmax(x) - onehot(t)); rows with an ignored target get zeros. */
static void backward_range(void *arg, int64_t begin, int64_t end, int tid) {
    const ce_job *j = arg;
    int64_t V = j->V;
    for (int64_t r = begin; r < end; r++) {
        int64_t t = target_of(j, r);
        const float *x = j->x + r * V;
        float *dx = j->dx + r * V;
        if (t < 0) {
            memset(dx, 0, (size_t)V * sizeof *dx);
            continue;
        }
        float m = j->vm->max(x, V);
        if (dx != x) memcpy(dx, x, (size_t)V * sizeof *dx);
        float scale = (float)(j->g / (double)j->vm->exp_sum(dx, V, m));
        for (int64_t k = 0; k < V; k++) dx[k] *= scale;
        dx[t] -= j->g;
    }
}

static bool is_contiguous_f32(const ts_tensor *t) { return t && t->dtype == TS_F32 && t->data && ts_is_contiguous(t); }

/* The job for logits [.., V] and targets logits.shape[:-1] (contiguous, in range), or false. */
static bool plan(const ts_tensor *logits, const ts_tensor *targets, ce_job *j, int64_t *n_valid) {
    if (!is_contiguous_f32(logits) || logits->ndim < 1 || !targets || !targets->data || !ts_is_contiguous(targets) ||
        (targets->dtype != TS_I32 && targets->dtype != TS_I64) || targets->ndim != logits->ndim - 1)
        return false;
    for (int d = 0; d < targets->ndim; d++)
        if (targets->shape[d] != logits->shape[d]) return false;
    *j = (ce_job){.x = logits->data, .targets = targets->data, .t64 = targets->dtype == TS_I64,
                  .V = logits->shape[logits->ndim - 1], .vm = ts_vmath_active()};
    if (j->V < 1) return false;
    int64_t rows = ts_nelements(targets), valid = 0;
    for (int64_t r = 0; r < rows; r++) {
        int64_t t = target_of(j, r);
        if (t >= j->V) return false; /* the reference names the bad target */
        valid += t >= 0;
    }
    *n_valid = valid;
    return true;
}

static bool plan_forward(const ts_tensor *dst, ce_job *j, int64_t *n_valid) {
    return dst->n_src == 2 && is_contiguous_f32(dst) && ts_nelements(dst) == 1 && plan(dst->src[0], dst->src[1], j, n_valid);
}

static bool plan_backward(const ts_tensor *dst, ce_job *j, int64_t *n_valid) {
    return dst->n_src == 3 && is_contiguous_f32(dst) && plan(dst->src[0], dst->src[1], j, n_valid) &&
           ts_same_shape(dst, dst->src[0]) && dst->src[2] && dst->src[2]->dtype == TS_F32 && dst->src[2]->data &&
           ts_nelements(dst->src[2]) == 1;
}

bool ts_fast_loss_applies(const ts_tensor *dst) {
    ce_job j;
    int64_t n_valid;
    return dst && (dst->op == TS_OP_CROSS_ENTROPY ? plan_forward(dst, &j, &n_valid) : plan_backward(dst, &j, &n_valid));
}

static ts_cpu_scratch row_losses = TS_CPU_SCRATCH_INIT;

TS_FAST_KERNEL(cross_entropy) {
    ce_job j;
    int64_t n_valid;
    if (!plan_forward(dst, &j, &n_valid)) return ts_ref_cross_entropy(ctx, dst);
    int64_t rows = ts_nelements(dst->src[1]);
    bool temporary;
    j.row_loss = ts_cpu_scratch_acquire(&row_losses, (size_t)(rows > 0 ? rows : 1) * sizeof(double), &temporary);
    if (!j.row_loss) return ts_ref_cross_entropy(ctx, dst);
    ts_parallel_for(ctx->pool, rows, ref_items_min_chunk(j.V), forward_range, &j);
    double total = 0;
    for (int64_t r = 0; r < rows; r++) total += j.row_loss[r];
    ts_cpu_scratch_release(&row_losses, j.row_loss, temporary);
    *(float *)dst->data = n_valid ? (float)(total / (double)n_valid) : 0.0f;
    return TS_OK;
}

TS_FAST_KERNEL(cross_entropy_back) {
    ce_job j;
    int64_t n_valid;
    if (!plan_backward(dst, &j, &n_valid)) return ts_ref_cross_entropy_back(ctx, dst);
    j.dx = dst->data;
    j.g = n_valid ? (float)(*(const float *)dst->src[2]->data / (double)n_valid) : 0.0f;
    ts_parallel_for(ctx->pool, ts_nelements(dst->src[1]), ref_items_min_chunk(j.V), backward_range, &j);
    return TS_OK;
}
