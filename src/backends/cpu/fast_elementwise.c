/* fast_elementwise.c - the "cpu" backend's f32 fast paths for the elementwise ops and row
 * kernels that dominate an MLP or transformer step after matmul: add/sub/mul/div (same shape,
 * or one operand repeating along the trailing dims, such as a bias row, or a scalar, or held
 * along them, such as a per-row scale [.., T, 1]; a same-shaped operand may also be a view with
 * unit-stride rows), scale, relu, silu, clamp, exp, log, sqrt, sigmoid, softplus and the
 * relu/silu/sigmoid/clamp backward helpers, swiglu and its backward, softmax (along any axis)
 * and rms_norm along the last axis. Each works on contiguous f32 storage with plain loops the
 * compiler vectorizes, built a second time for AVX2 where that tier is active (TS_RANGE_FNS:
 * the same loops, vectors twice as wide; rms_norm has AVX2 code of its own with the same
 * arithmetic); anything else (other dtypes, views with odd strides, other axes, other
 * broadcasts) goes to the reference kernel of the op (ref_elementwise.c, ref_nn.c), which also
 * reports malformed nodes.
 *
 * Accuracy and determinism (the conformance suite compares with the reference at f32 nmse
 * 1e-10): + - * / of two floats rounded once in float equal the reference's double result
 * rounded to float (double has more than 2 * 24 + 2 bits, so the double rounding is harmless),
 * and so do scale, relu, clamp and clamp's backward; exp, softmax, silu, sigmoid, softplus and
 * the backwards of the last three take e^x from the vector math of fast_vmath.h (about 1 ulp;
 * results below FLT_MIN flush to 0), log and sqrt from libm, a few ulps from the reference. Row
 * kernels sum in double, in index order (rms_norm's squares in four interleaved partial sums,
 * on AVX2 for four rows at once, each row's sums its own), a thread's rows one after another.
 * Every element is computed by the same operations whichever
 * thread owns it, so results are bit-identical for any thread count. Nothing is allocated. */
#include <math.h>
#include <string.h>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "backends/cpu/fast_kernels.h"
#include "backends/cpu/fast_vmath.h"
#include "backends/cpu/ref_common.h"
#include "backends/cpu/ref_kernels.h"

/* Elements per thread chunk below which one thread does all the work: the ops are memory
 * bound, and waking a worker costs about as much as streaming this many floats. */
#define FAST_MIN_CHUNK 32768

static bool is_f32_on_host(const ts_tensor *t) { return t && t->dtype == TS_F32 && t->data; }

/* A contiguous f32 tensor shaped exactly like dst (the planner may let dst share its storage;
 * each element is then read before it is overwritten). */
static bool is_dense_like(const ts_tensor *t, const ts_tensor *dst) {
    return is_f32_on_host(t) && ts_same_shape(t, dst) && ts_is_contiguous(t);
}

/* ---------------------------------------------------------------- binary */

/* How an operand of a binary op lines up with the flat index i of the (contiguous) output: it
 * reads element (i / inner) % period. inner = 1: it repeats every `period` elements, period = n
 * (same shape) or the size of the trailing dims it covers (a bias row), or 1 (a scalar, read
 * with stride 0). inner > 1: it covers a window of dst's dims followed by size-1 dims (a
 * per-row scale [.., T, 1] against [.., T, D]), each element held for `inner` outputs. */
typedef struct {
    const float *p;
    int64_t period, inner;
    const ts_tensor *rows; /* non-NULL: a strided view of dst's shape read row by row (period: the row) */
} bcast_operand;

/* True when t is contiguous and, leading and trailing size-1 dims dropped, has exactly a
 * window of consecutive dims of dst; the trailing 1s must line up with dst's last dims. */
static bool window_operand(const ts_tensor *t, const ts_tensor *dst, bcast_operand *out) {
    if (!is_f32_on_host(t) || !ts_is_contiguous(t) || t->ndim > dst->ndim) return false;
    int first = 0, last = t->ndim;
    while (first < t->ndim && t->shape[first] == 1) first++;
    while (last > first && t->shape[last - 1] == 1) last--;
    int lead = dst->ndim - t->ndim;
    for (int d = first; d < last; d++)
        if (t->shape[d] != dst->shape[d + lead]) return false;
    *out = (bcast_operand){.p = t->data, .period = ts_nelements(t), .inner = 1};
    for (int d = last; d < t->ndim; d++) out->inner *= dst->shape[d + lead];
    return true;
}

/* A view of dst's shape whose last dim is unit-stride (a slice of columns, such as mHC's
 * coefficients cut from one projection): contiguous runs of a row's length. */
static bool rows_operand(const ts_tensor *t, const ts_tensor *dst, bcast_operand *out) {
    if (!is_f32_on_host(t) || !ts_same_shape(t, dst) || t->ndim < 1) return false;
    int last = t->ndim - 1;
    if (t->shape[last] != 1 && t->stride[last] != 1) return false;
    *out = (bcast_operand){.p = t->data, .period = t->shape[last], .inner = 1, .rows = t};
    return true;
}

/* window_operand without the trailing size-1 dims (inner = 1): the operand repeats along the
 * trailing dims, as a softmax mask must. */
static bool trailing_operand(const ts_tensor *t, const ts_tensor *dst, bcast_operand *out) {
    return window_operand(t, dst, out) && out->inner == 1;
}

typedef struct {
    ts_op op;
    float *d;
    bcast_operand a, b;
} binary_job;

/* d[k] = a[k * sa] op b[k * sb] for k < n, strides 0 or 1; one loop per case so each one
 * vectorizes. No restrict: the planner may give d the storage of a same-shaped a or b. */
#define BINARY_LOOPS(OPER)                                                   \
    do {                                                                     \
        if (sa && sb)                                                        \
            for (int64_t k = 0; k < n; k++) d[k] = a[k] OPER b[k];           \
        else if (sa)                                                         \
            for (int64_t k = 0; k < n; k++) d[k] = a[k] OPER b[0];           \
        else if (sb)                                                         \
            for (int64_t k = 0; k < n; k++) d[k] = a[0] OPER b[k];           \
        else                                                                 \
            for (int64_t k = 0; k < n; k++) d[k] = a[0] OPER b[0];           \
    } while (0)

TS_ALWAYS_INLINE void binary_segment(ts_op op, float *d, const float *a, int sa, const float *b, int sb, int64_t n) {
    switch (op) {
    case TS_OP_ADD: BINARY_LOOPS(+); break;
    case TS_OP_SUB: BINARY_LOOPS(-); break;
    case TS_OP_MUL: BINARY_LOOPS(*); break;
    case TS_OP_DIV: BINARY_LOOPS(/); break;
    default: break; /* unreachable: plan_binary admits these four */
    }
}

/* Where operand o is read for output i, whether it advances with i (stride 1) or holds (0),
 * and *n shortened to the run over which that stays true. */
static const float *operand_run(const bcast_operand *o, int64_t i, int64_t *n, int *stride) {
    if (o->rows) { /* the row's remaining run, at the row's offset in the view */
        int64_t k = i % o->period, at = k;
        if (o->period - k < *n) *n = o->period - k;
        *stride = 1;
        for (int64_t r = i / o->period, d = o->rows->ndim - 2; d >= 0; d--) {
            at += r % o->rows->shape[d] * o->rows->stride[d];
            r /= o->rows->shape[d];
        }
        return o->p + at;
    }
    if (o->inner > 1) { /* held for the rest of its inner block */
        int64_t left = o->inner - i % o->inner;
        if (left < *n) *n = left;
        *stride = 0;
        return o->p + (i / o->inner) % o->period;
    }
    int64_t k = i % o->period;
    if (o->period > 1 && o->period - k < *n) *n = o->period - k;
    *stride = o->period > 1;
    return o->p + k;
}

/* Walks [begin, end) in segments over which each operand advances or holds steadily. */
TS_ALWAYS_INLINE void binary_items(const binary_job *j, int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end;) {
        int64_t n = end - i;
        int sa, sb;
        const float *a = operand_run(&j->a, i, &n, &sa), *b = operand_run(&j->b, i, &n, &sb);
        binary_segment(j->op, j->d + i, a, sa, b, sb, n);
        i += n;
    }
}

TS_RANGE_FNS(binary_range, binary_items)

static bool plan_binary(const ts_tensor *dst, binary_job *j) {
    bool is_binary = dst->op == TS_OP_ADD || dst->op == TS_OP_SUB || dst->op == TS_OP_MUL || dst->op == TS_OP_DIV;
    if (!is_binary || dst->n_src != 2 || !is_f32_on_host(dst) || !ts_is_contiguous(dst)) return false;
    for (int k = 0; k < 2; k++)
        if (!window_operand(dst->src[k], dst, k ? &j->b : &j->a) && !rows_operand(dst->src[k], dst, k ? &j->b : &j->a))
            return false;
    j->op = dst->op;
    j->d = dst->data;
    return true;
}

TS_FAST_KERNEL(binary) {
    binary_job j;
    if (!plan_binary(dst, &j)) return ts_ref_binary(ctx, dst);
    ts_parallel_for(ctx->pool, ts_nelements(dst), FAST_MIN_CHUNK, TS_PICK_RANGE(binary_range), &j);
    return TS_OK;
}

/* ---------------------------------------------------------------- unary and unary backward */

typedef struct {
    ts_op op;
    float *d;
    const float *x, *dy; /* dy: backward ops only */
    float p0, p1;
    const ts_vmath *vm;
} unary_job;

#define EXP_BLOCK 256 /* elements per stack block of e^-|x| */

/* 1 / (1 + e^-x) from z = e^-|x|, which never overflows (the reference's formula, in float):
 * 1 / (1 + z) for x >= 0, z / (1 + z) below. A select, not a branch, so the loops vectorize
 * (the signs of activations are a coin toss for a branch predictor). */
TS_ALWAYS_INLINE float sigmoid_of(float x, float z) { return (x >= 0 ? 1.0f : z) / (1.0f + z); }

/* The ops built on z = e^-|x|, one stack block at a time through the vector exp. */
TS_ALWAYS_INLINE void exp_abs_block(const unary_job *j, float *d, const float *x, const float *dy, int64_t n) {
    float z[EXP_BLOCK];
    if (n <= 0) return; /* (and tells the compiler z is written before the exp reads it) */
    for (int64_t k = 0; k < n; k++) z[k] = -fabsf(x[k]);
    j->vm->exp(z, z, n);
    switch (j->op) {
    case TS_OP_SILU:
        for (int64_t k = 0; k < n; k++) d[k] = x[k] * sigmoid_of(x[k], z[k]);
        break;
    case TS_OP_SIGMOID:
        for (int64_t k = 0; k < n; k++) d[k] = sigmoid_of(x[k], z[k]);
        break;
    case TS_OP_SOFTPLUS: /* max(x, 0) + log1p(e^-|x|), the reference's overflow-free form */
        for (int64_t k = 0; k < n; k++) d[k] = (x[k] > 0 ? x[k] : 0.0f) + log1pf(z[k]);
        break;
    case TS_OP_SILU_BACK: /* d/dx x s(x) = s (1 + x (1 - s)) */
        for (int64_t k = 0; k < n; k++) {
            float s = sigmoid_of(x[k], z[k]);
            d[k] = dy[k] * s * (1.0f + x[k] * (1.0f - s));
        }
        break;
    default: break; /* unreachable: uses_exp_abs admits these */
    }
}

static bool uses_exp_abs(ts_op op) {
    return op == TS_OP_SILU || op == TS_OP_SIGMOID || op == TS_OP_SOFTPLUS || op == TS_OP_SILU_BACK;
}

TS_ALWAYS_INLINE void unary_items(const unary_job *j, int64_t begin, int64_t end) {
    float *d = j->d + begin;
    const float *x = j->x + begin, *dy = j->dy ? j->dy + begin : NULL;
    int64_t n = end - begin;
    float p0 = j->p0, p1 = j->p1;
    if (uses_exp_abs(j->op)) {
        for (int64_t k = 0; k < n; k += EXP_BLOCK)
            exp_abs_block(j, d + k, x + k, dy ? dy + k : NULL, n - k < EXP_BLOCK ? n - k : EXP_BLOCK);
        return;
    }
    switch (j->op) {
    case TS_OP_SCALE:
        for (int64_t k = 0; k < n; k++) d[k] = x[k] * p0;
        break;
    case TS_OP_RELU: /* NaN passes through, as in the reference */
        for (int64_t k = 0; k < n; k++) d[k] = (x[k] > 0 || isnan(x[k])) ? x[k] : 0.0f;
        break;
    case TS_OP_CLAMP: /* NaN fails both tests and passes through */
        for (int64_t k = 0; k < n; k++) d[k] = x[k] < p0 ? p0 : x[k] > p1 ? p1 : x[k];
        break;
    case TS_OP_EXP:
        j->vm->exp(d, x, n);
        break;
    case TS_OP_LOG:
        for (int64_t k = 0; k < n; k++) d[k] = logf(x[k]);
        break;
    case TS_OP_SQRT:
        for (int64_t k = 0; k < n; k++) d[k] = sqrtf(x[k]);
        break;

    case TS_OP_RELU_BACK:
        for (int64_t k = 0; k < n; k++) { /* both loads unconditional, so the select vectorizes */
            float g = dy[k], v = x[k];
            d[k] = v > 0 ? g : 0.0f;
        }
        break;
    case TS_OP_SIGMOID_BACK: /* x holds y = sigmoid: y (1 - y) */
        for (int64_t k = 0; k < n; k++) d[k] = dy[k] * x[k] * (1.0f - x[k]);
        break;
    case TS_OP_CLAMP_BACK: /* bounds included (PyTorch); NaN x fails both tests: 0 */
        for (int64_t k = 0; k < n; k++) {
            float g = dy[k], v = x[k];
            d[k] = (v >= p0) & (v <= p1) ? g : 0.0f;
        }
        break;
    default: break; /* unreachable: plan_unary admits these */
    }
}

TS_RANGE_FNS(unary_range, unary_items)

static bool has_fast_unary(ts_op op) {
    switch (op) {
    case TS_OP_SCALE: case TS_OP_RELU: case TS_OP_CLAMP: case TS_OP_SILU: case TS_OP_EXP: case TS_OP_LOG:
    case TS_OP_SQRT: case TS_OP_SIGMOID: case TS_OP_SOFTPLUS:
    case TS_OP_RELU_BACK: case TS_OP_SILU_BACK: case TS_OP_SIGMOID_BACK: case TS_OP_CLAMP_BACK:
        return true;
    default:
        return false;
    }
}

static bool is_backward_op(ts_op op) {
    return op == TS_OP_RELU_BACK || op == TS_OP_SILU_BACK || op == TS_OP_SIGMOID_BACK || op == TS_OP_CLAMP_BACK;
}

static bool plan_unary(const ts_tensor *dst, unary_job *j) {
    int n_src = is_backward_op(dst->op) ? 2 : 1;
    if (!has_fast_unary(dst->op) || dst->n_src != n_src || !is_f32_on_host(dst) || !ts_is_contiguous(dst)) return false;
    for (int i = 0; i < n_src; i++)
        if (!is_dense_like(dst->src[i], dst)) return false;
    *j = (unary_job){.op = dst->op, .d = dst->data, .x = dst->src[0]->data, .p0 = dst->fp[0], .p1 = dst->fp[1],
                     .vm = ts_vmath_active()};
    if (n_src == 2) j->dy = dst->src[1]->data;
    return true;
}

static ts_status run_unary(const ts_cpu_ctx *ctx, ts_tensor *dst, const unary_job *j) {
    ts_parallel_for(ctx->pool, ts_nelements(dst), FAST_MIN_CHUNK, TS_PICK_RANGE(unary_range), (void *)j);
    return TS_OK;
}

TS_FAST_KERNEL(unary) {
    unary_job j;
    return plan_unary(dst, &j) ? run_unary(ctx, dst, &j) : ts_ref_unary(ctx, dst);
}

TS_FAST_KERNEL(unary_back) {
    unary_job j;
    return plan_unary(dst, &j) ? run_unary(ctx, dst, &j) : ts_ref_unary_back(ctx, dst);
}

/* ---------------------------------------------------------------- swiglu and its backward */

typedef struct {
    float *d;                 /* [n] or, backward, [2, n]: da then db */
    const float *a, *b, *dy;  /* dy: backward only */
    int64_t n;
    float limit;              /* > 0: clamped */
    const ts_vmath *vm;
} swiglu_job;

/* Elements [k0, k0 + m) of a block: the clamped gate and up (as the reference clamps them),
 * z = e^-|gate|, and whether each clamp passes the gradient. */
TS_ALWAYS_INLINE void swiglu_block(const swiglu_job *j, int64_t k0, int64_t m, float *ac, float *bc, float *z,
                                    float *a_in, float *b_in) {
    float L = j->limit;
    const float *a = j->a + k0, *b = j->b + k0;
    if (L > 0) { /* selects without short-circuits, and float flags: the loop vectorizes */
        for (int64_t k = 0; k < m; k++) {
            ac[k] = a[k] > L ? L : a[k];
            bc[k] = b[k] < -L ? -L : b[k] > L ? L : b[k];
            a_in[k] = a[k] <= L ? 1.0f : 0.0f;
            b_in[k] = (b[k] >= -L) & (b[k] <= L) ? 1.0f : 0.0f;
        }
    } else {
        for (int64_t k = 0; k < m; k++) {
            ac[k] = a[k];
            bc[k] = b[k];
            a_in[k] = b_in[k] = 1.0f;
        }
    }
    for (int64_t k = 0; k < m; k++) z[k] = -fabsf(ac[k]);
    j->vm->exp(z, z, m);
}

TS_ALWAYS_INLINE void swiglu_items(const swiglu_job *j, int64_t begin, int64_t end) {
    float ac[EXP_BLOCK], bc[EXP_BLOCK], z[EXP_BLOCK], a_in[EXP_BLOCK], b_in[EXP_BLOCK];
    for (int64_t k0 = begin; k0 < end; k0 += EXP_BLOCK) {
        int64_t m = end - k0 < EXP_BLOCK ? end - k0 : EXP_BLOCK;
        swiglu_block(j, k0, m, ac, bc, z, a_in, b_in);
        float *out = j->d + k0;
        if (!j->dy) { /* may be a's or b's storage: read into the block above already */
            for (int64_t k = 0; k < m; k++) out[k] = ac[k] * sigmoid_of(ac[k], z[k]) * bc[k];
            continue;
        }
        /* the gradients' [2, n] output shares storage with no source */
        float *restrict da = out, *restrict db = out + j->n;
        const float *restrict dy = j->dy + k0;
        for (int64_t k = 0; k < m; k++) {
            float s = sigmoid_of(ac[k], z[k]);
            da[k] = dy[k] * bc[k] * (s * (1.0f + ac[k] * (1.0f - s)));
            db[k] = dy[k] * (ac[k] * s);
        }
        for (int64_t k = 0; k < m; k++) { /* the clamps' gates, apart: a select of loaded values vectorizes */
            da[k] = a_in[k] > 0.5f ? da[k] : 0.0f;
            db[k] = b_in[k] > 0.5f ? db[k] : 0.0f;
        }
    }
}

TS_RANGE_FNS(swiglu_range, swiglu_items)

/* Contiguous f32 sources of dst's (forward) or dst's trailing (backward) shape. */
static bool plan_swiglu(const ts_tensor *dst, swiglu_job *j) {
    bool back = dst->op == TS_OP_SWIGLU_BACK;
    if (dst->n_src != (back ? 3 : 2) || !is_f32_on_host(dst) || !ts_is_contiguous(dst)) return false;
    const ts_tensor *a = dst->src[0];
    for (int i = 0; i < dst->n_src; i++)
        if (!is_f32_on_host(dst->src[i]) || !ts_is_contiguous(dst->src[i]) || !ts_same_shape(dst->src[i], a)) return false;
    if (back ? ts_nelements(dst) != 2 * ts_nelements(a) || dst->shape[0] != 2 : !ts_same_shape(dst, a)) return false;
    *j = (swiglu_job){.d = dst->data, .a = a->data, .b = dst->src[1]->data, .dy = back ? dst->src[2]->data : NULL,
                      .n = ts_nelements(a), .limit = dst->fp[0], .vm = ts_vmath_active()};
    return true;
}

TS_FAST_KERNEL(swiglu) {
    swiglu_job j;
    if (!plan_swiglu(dst, &j)) return ts_ref_swiglu(ctx, dst);
    ts_parallel_for(ctx->pool, j.n, FAST_MIN_CHUNK, TS_PICK_RANGE(swiglu_range), &j);
    return TS_OK;
}

/* ---------------------------------------------------------------- rows: softmax, rms_norm */

typedef struct {
    float *y;
    const float *x;
    const float *aux;      /* softmax: mask (NULL: none); rms_norm: weight (NULL: none) */
    int64_t aux_period;    /* softmax mask: elements before it repeats; rms_norm weight: its stride */
    int64_t len;           /* elements per row */
    int64_t inner;         /* softmax: elements after the axis (1: along the last axis) */
    double eps;
    const ts_vmath *vm;    /* softmax */
} row_job;

/* Rows split so that a chunk touches at least REF_MIN_CHUNK elements. */
static void run_rows(const ts_cpu_ctx *ctx, const ts_tensor *dst, int64_t len, ts_range_fn fn, row_job *j) {
    int64_t rows = len > 0 ? ts_nelements(dst) / len : 0;
    ts_parallel_for(ctx->pool, rows, ref_items_min_chunk(len), fn, j);
}

/* Softmax of one row v = x (+ mask), following the reference: subtract the max; a NaN or +inf
 * makes the row NaN (through v - max); an all -inf row (fully masked) becomes zeros. y may be x. */
static void softmax_row(const ts_vmath *vm, float *y, const float *x, const float *mask, int64_t n) {
    if (mask)
        for (int64_t k = 0; k < n; k++) y[k] = x[k] + mask[k];
    else if (y != x)
        memcpy(y, x, (size_t)n * sizeof *y);
    float m = n > 0 ? vm->max(y, n) : -INFINITY;
    if (m == -INFINITY) {
        for (int64_t k = 0; k < n; k++) y[k] = 0.0f;
        return;
    }
    for (int64_t k = 0; k < n; k++) y[k] -= m;
    vm->exp(y, y, n);
    double sum = 0;
    for (int64_t k = 0; k < n; k++) sum += y[k];
    float inv = (float)(1.0 / sum);
    for (int64_t k = 0; k < n; k++) y[k] *= inv;
}

static void softmax_range(void *arg, int64_t begin, int64_t end, int tid) {
    const row_job *j = arg;
    for (int64_t r = begin; r < end; r++) {
        const float *mask = j->aux ? j->aux + (r * j->len) % j->aux_period : NULL;
        softmax_row(j->vm, j->y + r * j->len, j->x + r * j->len, mask, j->len);
    }
}

/* Softmax along a middle axis: x as [outer, len, inner], each of the inner columns a
 * distribution (V4's compressor pools that way at every decode step). Columns are done
 * SOFTMAX_COLS at a time, row by row (contiguous reads, the vector exp over a row of columns),
 * with softmax_row's steps per column: max (a NaN wins), e^(x - max) (exactly 0 at -inf), a
 * double sum, one float reciprocal; an all -inf column becomes zeros. Work item: one outer
 * block's column group. */
#define SOFTMAX_COLS 64

TS_ALWAYS_INLINE void softmax_cols(const ts_vmath *vm, float *y, const float *x, int64_t len, int64_t inner,
                                    int64_t w) {
    float m[SOFTMAX_COLS], inv[SOFTMAX_COLS], e[SOFTMAX_COLS];
    double sum[SOFTMAX_COLS] = {0};
    for (int64_t c = 0; c < w; c++) m[c] = -INFINITY;
    /* branch-free selects (v != v: NaN), so that the compiler vectorizes across the columns */
    for (int64_t k = 0; k < len; k++) {
        const float *xr = x + k * inner;
        for (int64_t c = 0; c < w; c++) {
            float v = xr[c], mc = m[c];
            m[c] = mc != mc || !(v > mc || v != v) ? mc : v;
        }
    }
    for (int64_t k = 0; k < len; k++) {
        const float *xr = x + k * inner;
        float *yr = y + k * inner;
        memcpy(e, xr, (size_t)w * sizeof *e);
        vm->exp_each(e, m, w);
        /* a column's max is -inf only when all of it is, so x = -inf alone picks the zeros; the
         * select and the double sums in loops of their own, which vectorize (x is read before y
         * is written: y may be x) */
        for (int64_t c = 0; c < w; c++) yr[c] = xr[c] == -INFINITY ? 0.0f : e[c];
        for (int64_t c = 0; c < w; c++) sum[c] += yr[c];
    }
    /* every column divided (an all -inf column's 1 / 0 then replaced): two loops that vectorize */
    for (int64_t c = 0; c < w; c++) inv[c] = (float)(1.0 / sum[c]);
    for (int64_t c = 0; c < w; c++) inv[c] = m[c] == -INFINITY ? 0.0f : inv[c];
    for (int64_t k = 0; k < len; k++)
        for (int64_t c = 0; c < w; c++) y[k * inner + c] *= inv[c];
}

TS_ALWAYS_INLINE void softmax_cols_items(const row_job *j, int64_t begin, int64_t end) {
    int64_t groups = (j->inner + SOFTMAX_COLS - 1) / SOFTMAX_COLS;
    for (int64_t item = begin; item < end; item++) {
        int64_t c0 = item % groups * SOFTMAX_COLS, at = item / groups * j->len * j->inner + c0;
        int64_t w = j->inner - c0 < SOFTMAX_COLS ? j->inner - c0 : SOFTMAX_COLS;
        softmax_cols(j->vm, j->y + at, j->x + at, j->len, j->inner, w);
    }
}

TS_RANGE_FNS(softmax_cols_range, softmax_cols_items)

/* Softmax of a contiguous x along any axis, with no mask; along the last axis also with a
 * contiguous mask repeating along the trailing dims (e.g. one [T, S] causal mask for every
 * batch and head). */
static bool plan_softmax(const ts_tensor *dst, row_job *j) {
    if (dst->op != TS_OP_SOFTMAX || dst->n_src < 1 || dst->n_src > 2 || dst->ndim < 1) return false;
    int axis = (int)dst->ip[0];
    if (axis < 0 || axis >= dst->ndim || !is_f32_on_host(dst) || !ts_is_contiguous(dst)) return false;
    if (!is_dense_like(dst->src[0], dst)) return false;
    *j = (row_job){.y = dst->data, .x = dst->src[0]->data, .len = dst->shape[axis], .inner = 1,
                   .vm = ts_vmath_active()};
    for (int d = axis + 1; d < dst->ndim; d++) j->inner *= dst->shape[d];
    if (dst->n_src == 2 && dst->src[1]) {
        bcast_operand mask;
        /* the mask must cover whole rows so that a row reads one contiguous run of it */
        if (j->inner != 1 || !trailing_operand(dst->src[1], dst, &mask) || j->len == 0 || mask.period % j->len != 0)
            return false;
        j->aux = mask.p;
        j->aux_period = mask.period;
    }
    return true;
}

TS_FAST_KERNEL(softmax) {
    row_job j;
    if (!plan_softmax(dst, &j)) return ts_ref_softmax(ctx, dst);
    if (j.inner == 1 || j.len == 0) {
        run_rows(ctx, dst, j.len, softmax_range, &j);
        return TS_OK;
    }
    int64_t items = ts_nelements(dst) / (j.len * j.inner) * ((j.inner + SOFTMAX_COLS - 1) / SOFTMAX_COLS);
    ts_parallel_for(ctx->pool, items, ref_items_min_chunk(j.len * SOFTMAX_COLS), TS_PICK_RANGE(softmax_cols_range), &j);
    return TS_OK;
}

/* y = x * r (* w), r = 1 / sqrt(mean(x^2) + eps), in double like the reference, rounded once. */
TS_ALWAYS_INLINE void rms_norm_row(const row_job *j, int64_t r, double ss) {
    int64_t n = j->len;
    const float *x = j->x + r * n;
    float *y = j->y + r * n;
    double inv = 1.0 / sqrt(ss / (double)n + j->eps);
    if (j->aux && j->aux_period == 1) /* (a loop of its own: unit strides vectorize) */
        for (int64_t k = 0; k < n; k++) y[k] = (float)(x[k] * inv * j->aux[k]);
    else if (j->aux)
        for (int64_t k = 0; k < n; k++) y[k] = (float)(x[k] * inv * j->aux[k * j->aux_period]);
    else
        for (int64_t k = 0; k < n; k++) y[k] = (float)(x[k] * inv);
}

static void rms_norm_range(void *arg, int64_t begin, int64_t end, int tid) {
    const row_job *j = arg;
    for (int64_t r = begin; r < end; r++) rms_norm_row(j, r, ts_fast_sum_squares(j->x + r * j->len, j->len));
}

#if defined(__x86_64__)
/* ts_fast_sum_squares of the four rows of n at x, each row's four partial sums the lanes of one
 * register: the same products and adds, but four rows' chains of dependent adds in flight (one
 * row's kept the adder waiting: 1.4 cycles per element of a 1024-wide row). */
static inline __attribute__((always_inline, target("avx2"))) void sum_squares4_avx2(const float *x, int64_t n,
                                                                                  double out[4]) {
    __m256d s[4] = {_mm256_setzero_pd(), _mm256_setzero_pd(), _mm256_setzero_pd(), _mm256_setzero_pd()};
    int64_t k = 0;
    for (; k + 4 <= n; k += 4)
        for (int r = 0; r < 4; r++) {
            __m256d v = _mm256_cvtps_pd(_mm_loadu_ps(x + r * n + k));
            s[r] = _mm256_add_pd(s[r], _mm256_mul_pd(v, v));
        }
    for (int r = 0; r < 4; r++) {
        double t[4];
        _mm256_storeu_pd(t, s[r]);
        for (int64_t i = k; i < n; i++) t[0] += (double)x[r * n + i] * x[r * n + i];
        out[r] = (t[0] + t[1]) + (t[2] + t[3]);
    }
}

/* rms_norm_range for AVX2: rows four at a time, and the row loops vectorized twice as wide. */
__attribute__((target("avx2"))) static void rms_norm_range_avx2(void *arg, int64_t begin, int64_t end, int tid) {
    const row_job *j = arg;
    int64_t r = begin;
    for (double ss[4]; r + 4 <= end; r += 4) {
        sum_squares4_avx2(j->x + r * j->len, j->len, ss);
        for (int i = 0; i < 4; i++) rms_norm_row(j, r + i, ss[i]);
    }
    for (; r < end; r++) rms_norm_row(j, r, ts_fast_sum_squares(j->x + r * j->len, j->len));
}
#endif

/* rms_norm of a contiguous x; the optional weight is a 1-D f32 vector of the row's length with
 * any non-negative stride. */
static bool plan_rms_norm(const ts_tensor *dst, row_job *j) {
    if (dst->op != TS_OP_RMS_NORM || dst->n_src < 1 || dst->n_src > 2 || dst->ndim < 1) return false;
    if (!is_f32_on_host(dst) || !ts_is_contiguous(dst) || !is_dense_like(dst->src[0], dst)) return false;
    *j = (row_job){.y = dst->data, .x = dst->src[0]->data, .len = dst->shape[dst->ndim - 1], .eps = dst->fp[0]};
    const ts_tensor *w = dst->n_src == 2 ? dst->src[1] : NULL;
    if (w) {
        if (!is_f32_on_host(w) || w->ndim != 1 || w->shape[0] != j->len || w->stride[0] < 0) return false;
        j->aux = w->data;
        j->aux_period = w->stride[0];
    }
    return true;
}

TS_FAST_KERNEL(rms_norm) {
    row_job j;
    if (!plan_rms_norm(dst, &j)) return ts_ref_rms_norm(ctx, dst);
    run_rows(ctx, dst, j.len, TS_PICK_RANGE(rms_norm_range), &j);
    return TS_OK;
}

/* ---------------------------------------------------------------- for tests */

bool ts_fast_elementwise_applies(const ts_tensor *dst) {
    if (!dst) return false;
    binary_job b;
    unary_job u;
    row_job r;
    switch (dst->op) {
    case TS_OP_ADD: case TS_OP_SUB: case TS_OP_MUL: case TS_OP_DIV: return plan_binary(dst, &b);
    case TS_OP_SOFTMAX: return plan_softmax(dst, &r);
    case TS_OP_RMS_NORM: return plan_rms_norm(dst, &r);
    case TS_OP_SWIGLU: case TS_OP_SWIGLU_BACK: {
        swiglu_job s;
        return plan_swiglu(dst, &s);
    }
    default: return plan_unary(dst, &u);
    }
}
