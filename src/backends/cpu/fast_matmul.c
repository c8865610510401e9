/* fast_matmul.c - the "cpu" backend's matmul: batched f32 matmul on the packed SIMD GEMM
 * (gemm.h), everything else on the reference kernel (ref_nn.c).
 *
 * The fast path takes f32 operands and output whose last two dims form a matrix with unit stride
 * along one of them: contiguous, row- or column-sliced, or a transposed view. Trans flags and
 * leading dimensions come from the strides, so views are multiplied where they lie, never
 * copied. Batch dims follow the reference's broadcasting (size-1 or stride-0 dims reuse one
 * matrix); batches run one after another, each GEMM using the backend's whole thread pool. Any
 * other layout (no unit stride in the matrix, a stride-0 matrix dim, negative strides), dtype,
 * an output overlapping an input, or a malformed node goes to ts_ref_matmul, which computes it
 * or reports the error. Nothing is allocated here (the GEMM keeps its packing workspace
 * between calls). GEMM results are bit-identical for any thread count (gemm.h), so this kernel
 * is deterministic too. */
#include "backends/cpu/fast_kernels.h"
#include "backends/cpu/gemm.h"
#include "backends/cpu/ref_common.h"
#include "backends/cpu/ref_kernels.h"

/* One operand as the GEMM reads it: row-major storage with leading dimension ld, transposed
 * (trans) or not, starting at a per-batch offset from data. */
typedef struct {
    const ts_tensor *t;
    bool trans;
    int64_t ld;
} gemm_operand;

typedef struct {
    gemm_operand a, b;
    int64_t M, N, K;
    int64_t n_batch; /* output matrices: product of dst's batch dims */
} gemm_plan;

/* Row-major addressing of a rows x cols matrix whose element (i, j) sits at i*rs + j*cs: true
 * when cs is the unit stride (or irrelevant) and rows do not overlap. *ld gets the row stride;
 * a single row gets ld = cols, a value the GEMM accepts and never steps by. */
static bool row_major_ld(int64_t rows, int64_t cols, int64_t rs, int64_t cs, int64_t *ld) {
    if (cols > 1 && cs != 1) return false;
    if (rows <= 1) {
        *ld = cols > 1 ? cols : 1;
        return true;
    }
    if (rs < (cols > 1 ? cols : 1)) return false;
    *ld = rs;
    return true;
}

/* How GEMM reads the matrix held in the last two dims of t, which the op uses transposed when
 * op_trans. Stored row-major: pass op_trans through. Stored column-major (a transposed view):
 * it is the row-major transpose, so flip the flag. False when neither stride is unit. */
static bool operand_layout(const ts_tensor *t, bool op_trans, gemm_operand *out) {
    int r = t->ndim - 2;
    int64_t rows = t->shape[r], cols = t->shape[r + 1], rs = t->stride[r], cs = t->stride[r + 1];
    out->t = t;
    if (row_major_ld(rows, cols, rs, cs, &out->ld)) {
        out->trans = op_trans;
        return true;
    }
    if (row_major_ld(cols, rows, cs, rs, &out->ld)) {
        out->trans = !op_trans;
        return true;
    }
    return false;
}

static bool strides_nonnegative(const ts_tensor *t) {
    for (int d = 0; d < t->ndim; d++)
        if (t->stride[d] < 0) return false;
    return true;
}

/* Bytes from t->data to just past the last element t can address. */
static int64_t span_bytes(const ts_tensor *t) {
    int64_t last = 0;
    for (int d = 0; d < t->ndim; d++) {
        if (t->shape[d] == 0) return 0;
        last += (t->shape[d] - 1) * t->stride[d];
    }
    return (last + 1) * (int64_t)sizeof(float);
}

/* GEMM requires C not to overlap A or B; a planner never does that to matmul, but a caller
 * binding storage by hand could. */
static bool overlaps(const ts_tensor *x, const ts_tensor *y) {
    const char *x0 = x->data, *y0 = y->data;
    return x0 < y0 + span_bytes(y) && y0 < x0 + span_bytes(x);
}

/* Batch dims of t (rank >= 2) broadcast to the nb batch dims of c. */
static bool batch_broadcasts(const ts_tensor *t, const ts_tensor *c, int nb) {
    int tb = t->ndim - 2;
    if (tb > nb) return false;
    for (int d = 0; d < tb; d++)
        if (t->shape[d] != 1 && t->shape[d] != c->shape[d + nb - tb]) return false;
    return true;
}

static bool is_f32_on_host(const ts_tensor *t) { return t && t->dtype == TS_F32 && t->data; }

/* Fills *p when dst can run on the GEMM; false sends it to the reference kernel. The shape
 * checks mirror ts_ref_matmul's so that a malformed node is never multiplied here. */
static bool plan_gemm(const ts_tensor *dst, gemm_plan *p) {
    if (dst->op != TS_OP_MATMUL || dst->n_src < 2) return false;
    const ts_tensor *a = dst->src[0], *b = dst->src[1];
    if (!is_f32_on_host(dst) || !is_f32_on_host(a) || !is_f32_on_host(b)) return false;
    if (a->ndim < 2 || b->ndim < 2 || dst->ndim < 2 || !ts_is_contiguous(dst)) return false;
    if (!strides_nonnegative(a) || !strides_nonnegative(b)) return false;
    bool ta = dst->ip[0] != 0, tb = dst->ip[1] != 0;
    int ra = a->ndim - 2, rb = b->ndim - 2, nb = dst->ndim - 2;
    p->M = a->shape[ra + (ta ? 1 : 0)];
    p->K = a->shape[ra + (ta ? 0 : 1)];
    p->N = b->shape[rb + (tb ? 0 : 1)];
    if (b->shape[rb + (tb ? 1 : 0)] != p->K || dst->shape[nb] != p->M || dst->shape[nb + 1] != p->N) return false;
    if (!batch_broadcasts(a, dst, nb) || !batch_broadcasts(b, dst, nb)) return false;
    if (!operand_layout(a, ta, &p->a) || !operand_layout(b, tb, &p->b)) return false;
    if (overlaps(dst, a) || overlaps(dst, b)) return false;
    p->n_batch = 1;
    for (int d = 0; d < nb; d++) p->n_batch *= dst->shape[d];
    return true;
}

/* Element offset of the matrix of t (rank >= 2) that output batch `batch` (row-major over the
 * nb batch dims of c) reads; broadcast dims (size 1) stay at 0, stride-0 dims add nothing. */
static int64_t batch_offset(const ts_tensor *t, const ts_tensor *c, int64_t batch) {
    int nb = c->ndim - 2, lead = nb - (t->ndim - 2);
    int64_t off = 0;
    for (int d = nb - 1; d >= 0; d--) {
        int64_t coord = batch % c->shape[d];
        batch /= c->shape[d];
        int td = d - lead;
        if (td >= 0 && t->shape[td] != 1) off += coord * t->stride[td];
    }
    return off;
}

static void run_gemm(const ts_cpu_ctx *ctx, const gemm_plan *p, ts_tensor *dst) {
    const float *a = p->a.t->data, *b = p->b.t->data;
    float *c = dst->data;
    for (int64_t batch = 0; batch < p->n_batch; batch++) {
        ts_gemm_f32(ctx->pool, p->a.trans, p->b.trans, p->M, p->N, p->K, 1.0f, a + batch_offset(p->a.t, dst, batch),
                    p->a.ld, b + batch_offset(p->b.t, dst, batch), p->b.ld, 0.0f, c + batch * p->M * p->N, p->N);
    }
}

bool ts_fast_matmul_uses_gemm(const ts_tensor *dst) {
    gemm_plan p;
    return dst && plan_gemm(dst, &p);
}

TS_FAST_KERNEL(matmul) {
    gemm_plan p;
    if (!plan_gemm(dst, &p)) return ts_ref_matmul(ctx, dst);
    run_gemm(ctx, &p, dst);
    return TS_OK;
}
