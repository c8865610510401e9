/* ref_attention.c - reference CPU kernels of TS_OP_ATTENTION and TS_OP_ATTENTION_BACK (contract:
 * ts_attention in graph.h; math: DeepSeek-V4 spec sections 2.5-2.9 and 3.7). Like the kernels of
 * ref_nn.c they are entries of ts_cpu_reference_kernels and the oracle that the flash-style CPU
 * kernel and every other backend are checked against: plain loops, every element read through
 * ref_get (any float dtype, any strides), arithmetic in double, one rounding per output element.
 *
 * Memory is linear in T and S: both kernels walk one query row (b, t, h) at a time and recompute
 * its scores whenever they are needed again - forward in two passes (the row max; then the
 * exp-sum and the weighted values), backward in two too (max and sum; the gradients, with
 * D = sum_j p_j dp_j = <dout, out> read from the forward's output) - so nothing T x S ever
 * exists. Scratch per thread: a few vectors of D doubles, and backward the double accumulators
 * of one (batch, kv head)'s dk, dv and dextra rows.
 *
 * The entries of a row are its visible keys j in [key_lo, key_hi) in ascending order (causal,
 * window and key_start only narrow that range), then its extra slots e = 0..E-1 in order (slots
 * holding -1 skipped). Sums run in that order.
 *
 * Determinism: forward splits the output rows among threads. Backward splits (batch, kv head)
 * pairs: a pair owns the dk / dv / dextra rows of its kv head and the dq rows of its query heads,
 * and accumulates them in a fixed order (query heads ascending, then t, then entries). dsink sums
 * over the batch, so each pair leaves partial sums per (b, h), added in b order afterwards.
 * Results are therefore bit-identical for any thread count.
 *
 * Conventions other backends must match:
 *  - the row max includes the sink logit; a row with neither entries nor sink has no
 *    distribution and outputs zeros (its gradients are zero too), never NaN;
 *  - a NaN score makes the row NaN; extra_idx values must be -1 or in [0, N), which is checked
 *    before anything is written (TS_ERR_RANGE naming the value and its position);
 *  - backward takes each row's D from the out source (whatever it holds), never from the
 *    recomputed probabilities. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ref_common.h"
#include "ref_kernels.h"

/* ---------------------------------------------------------------- the problem */

/* Everything both kernels read from the node: inputs (NULL when absent), sizes, parameters. */
typedef struct {
    const ts_tensor *q, *k, *v, *sink, *extra, *idx, *key_start, *dout, *out; /* out: the forward's */
    int64_t B, T, S, H, Hk, D, Dv, N, E;
    int64_t X;      /* extra's row width: D (one vector is key and value) or D + Dv (key | value) */
    int64_t xv;     /* where an extra row's value starts: 0 or D */
    int64_t group;  /* query heads per kv head: query head h reads kv head h / group */
    double scale;
    bool causal;
    int64_t window; /* 0: unlimited */
} attn_problem;

/* Unpacks the compact source list (q, k, v, [sink], [extra, extra_idx], [key_start], [dout, out])
 * of dst. */
static ts_status read_problem(const ts_cpu_ctx *ctx, const ts_tensor *dst, bool back, attn_problem *p) {
    memset(p, 0, sizeof *p);
    bool has_sink = dst->ip[2] != 0, has_extra = dst->ip[3] != 0, has_key_start = dst->ip[4] != 0;
    int want = 3 + has_sink + 2 * has_extra + has_key_start + 2 * back;
    if (dst->n_src != want) return ts_ref_fail(ctx, TS_ERR_INTERNAL, dst, "sources do not match ip[2..4]");
    for (int i = 0; i < want; i++)
        if (!dst->src[i]) return ts_ref_fail(ctx, TS_ERR_INTERNAL, dst, "missing inputs");
    int i = 3;
    p->q = dst->src[0];
    p->k = dst->src[1];
    p->v = dst->src[2];
    if (has_sink) p->sink = dst->src[i++];
    if (has_extra) {
        p->extra = dst->src[i++];
        p->idx = dst->src[i++];
    }
    if (has_key_start) p->key_start = dst->src[i++];
    if (back) {
        p->dout = dst->src[i];
        p->out = dst->src[i + 1];
    }
    p->B = p->q->shape[0];
    p->T = p->q->shape[1];
    p->H = p->q->shape[2];
    p->D = p->q->shape[3];
    p->S = p->k->shape[1];
    p->Hk = p->k->shape[2];
    p->Dv = p->v->shape[3];
    p->N = p->extra ? p->extra->shape[1] : 0;
    p->E = p->idx ? p->idx->shape[2] : 0;
    p->X = p->extra ? p->extra->shape[3] : 0;
    p->xv = p->X == p->D + p->Dv ? p->D : 0;
    p->group = p->H / p->Hk;
    p->scale = dst->fp[0];
    p->causal = dst->ip[0] != 0;
    p->window = dst->ip[1];
    return TS_OK;
}

/* The checks every kernel starts with (the constructor made the same ones; a test double or a
 * hand-built node may not have). */
static ts_status check_problem(const ts_cpu_ctx *ctx, const ts_tensor *dst, const attn_problem *p) {
    ts_status s = ts_ref_need_host_data(ctx, dst);
    if (s != TS_OK) return s;
    if (!ts_is_contiguous(dst)) return ts_ref_fail(ctx, TS_ERR_INTERNAL, dst, "output is not contiguous");
    const ts_tensor *floats[] = {p->q, p->k, p->v, p->sink, p->extra, p->dout, p->out, dst};
    for (size_t i = 0; i < sizeof floats / sizeof floats[0]; i++)
        if ((s = ref_need_float(ctx, dst, floats[i]))) return s;
    if (p->q->ndim != 4 || p->k->ndim != 4 || p->v->ndim != 4 || p->Hk < 1 || p->H % p->Hk ||
        p->k->shape[0] != p->B || p->k->shape[3] != p->D || p->v->shape[0] != p->B || p->v->shape[1] != p->S ||
        p->v->shape[2] != p->Hk)
        return ts_ref_fail(ctx, TS_ERR_SHAPE, dst, "q, k, v must be [B,T,H,D], [B,S,Hk,D], [B,S,Hk,Dv]");
    if (p->extra && (p->extra->ndim != 4 || p->extra->shape[0] != p->B || p->extra->shape[2] != p->Hk ||
                     (p->X != p->D + p->Dv && (p->X != p->D || p->Dv != p->D)) || p->idx->ndim != 3 ||
                     p->idx->shape[0] != p->B || p->idx->shape[1] != p->T))
        return ts_ref_fail(ctx, TS_ERR_SHAPE, dst,
                           "extra must be [B,N,Hk,D] (Dv == D) or [B,N,Hk,D+Dv], extra_idx [B,T,E]");
    if (p->idx && p->idx->dtype != TS_I32 && p->idx->dtype != TS_I64)
        return ts_ref_fail(ctx, TS_ERR_DTYPE, dst, "extra_idx must be i32 or i64");
    const ts_tensor *ks = p->key_start;
    if (ks && (ks->dtype != TS_I32 && ks->dtype != TS_I64))
        return ts_ref_fail(ctx, TS_ERR_DTYPE, dst, "key_start must be i32 or i64");
    if (ks && (ks->ndim != 2 || ks->shape[0] != p->B || ks->shape[1] != p->T))
        return ts_ref_fail(ctx, TS_ERR_SHAPE, dst, "key_start must be [B, T]");
    if (p->sink && (p->sink->ndim != 1 || p->sink->shape[0] != p->H))
        return ts_ref_fail(ctx, TS_ERR_SHAPE, dst, "sink must be [H]");
    if (p->window < 0) return ts_ref_fail(ctx, TS_ERR_INVALID_ARG, dst, "window must be >= 0");
    return TS_OK;
}

/* Storage offset of element [i0, i1, i2, 0] of a 4-D tensor: the start of one head's row. */
static int64_t row_start(const ts_tensor *t, int64_t i0, int64_t i1, int64_t i2) {
    return i0 * t->stride[0] + i1 * t->stride[1] + i2 * t->stride[2];
}

static int64_t index_at(const attn_problem *p, int64_t b, int64_t t, int64_t e) {
    const ts_tensor *idx = p->idx;
    return (int64_t)ref_get(idx, b * idx->stride[0] + t * idx->stride[1] + e * idx->stride[2]);
}

/* Every extra_idx value must be -1 (unused slot) or a row of extra. */
static ts_status check_extra_indices(const ts_cpu_ctx *ctx, const ts_tensor *dst, const attn_problem *p) {
    for (int64_t b = 0; b < p->B; b++)
        for (int64_t t = 0; t < p->T; t++)
            for (int64_t e = 0; e < p->E; e++) {
                double v = ref_get(p->idx, b * p->idx->stride[0] + t * p->idx->stride[1] + e * p->idx->stride[2]);
                if (v >= -1 && v < (double)p->N) continue;
                char d[160];
                return ts_graph_set_error(ctx->graph, TS_ERR_RANGE,
                                          "%s: extra_idx value %.0f at [%lld, %lld, %lld] outside -1 (unused) or "
                                          "[0, %lld) (%s)",
                                          ts_op_name(dst->op), v, (long long)b, (long long)t, (long long)e,
                                          (long long)p->N, ts_tensor_describe(p->idx, d, sizeof d));
            }
    return TS_OK;
}

/* ---------------------------------------------------------------- one query row */

/* Query t of batch b, head h: the kv head it reads, its visible keys, its query vector and its
 * sink logit (-inf without a sink: exp(-inf) = 0 removes it from every sum). */
typedef struct {
    int64_t b, t, h, kv;
    int64_t key_lo, key_hi; /* visible keys: key_lo <= j < key_hi (may be empty) */
    double sink;
    double *q;              /* D values, loaded once per row */
} attn_row;

/* Keys visible to query t at position pos = S - T + t: causal keeps j <= pos; a window keeps
 * j > pos - window (so the window of size w is pos-w+1 .. pos, the query's own key included);
 * key_start keeps j >= key_start[b, t]. */
static attn_row make_row(const attn_problem *p, int64_t b, int64_t t, int64_t h, double *q_buf) {
    attn_row r = {.b = b, .t = t, .h = h, .kv = h / p->group, .key_lo = 0, .key_hi = p->S, .q = q_buf};
    int64_t pos = p->S - p->T + t;
    if (p->causal && pos + 1 < r.key_hi) r.key_hi = pos + 1 > 0 ? pos + 1 : 0;
    if (p->window > 0 && pos - p->window + 1 > r.key_lo) r.key_lo = pos - p->window + 1;
    if (p->key_start) {
        const ts_tensor *ks = p->key_start;
        double lo = ref_get(ks, b * ks->stride[0] + t * ks->stride[1]);
        if (lo > (double)r.key_lo) r.key_lo = lo < (double)p->S ? (int64_t)lo : p->S;
    }
    if (r.key_lo > r.key_hi) r.key_lo = r.key_hi;
    r.sink = p->sink ? ref_get(p->sink, r.h * p->sink->stride[0]) : -INFINITY;
    int64_t off = row_start(p->q, b, t, h);
    for (int64_t d = 0; d < p->D; d++) q_buf[d] = ref_get(p->q, off + d * p->q->stride[3]);
    return r;
}

static int64_t entry_count(const attn_problem *p, const attn_row *r) { return r->key_hi - r->key_lo + p->E; }

/* One entry of a row: where its key and value rows start, and which accumulator row its
 * gradients go to (a key j: row j of dk and dv; an extra: row n of dextra, its first D columns
 * for the key role and the Dv from xv on for the value role - the same ones when shared). */
typedef struct {
    const ts_tensor *kt, *vt;
    int64_t k_off, v_off;
    bool is_extra;
    int64_t row;
} attn_entry;

/* Entry i of row r (0 <= i < entry_count); false for an unused extra slot (-1). */
static bool get_entry(const attn_problem *p, const attn_row *r, int64_t i, attn_entry *e) {
    int64_t n_keys = r->key_hi - r->key_lo;
    if (i < n_keys) {
        int64_t j = r->key_lo + i;
        *e = (attn_entry){p->k, p->v, row_start(p->k, r->b, j, r->kv), row_start(p->v, r->b, j, r->kv), false, j};
        return true;
    }
    int64_t n = index_at(p, r->b, r->t, i - n_keys);
    if (n < 0) return false;
    int64_t off = row_start(p->extra, r->b, n, r->kv);
    *e = (attn_entry){p->extra, p->extra, off, off + p->xv * p->extra->stride[3], true, n};
    return true;
}

/* scale * <q, key> */
static double entry_score(const attn_problem *p, const attn_row *r, const attn_entry *e) {
    double s = 0;
    for (int64_t d = 0; d < p->D; d++) s += r->q[d] * ref_get(e->kt, e->k_off + d * e->kt->stride[3]);
    return p->scale * s;
}

/* <w, value> over Dv */
static double value_dot(const attn_problem *p, const attn_entry *e, const double *w) {
    double s = 0;
    for (int64_t d = 0; d < p->Dv; d++) s += w[d] * ref_get(e->vt, e->v_off + d * e->vt->stride[3]);
    return s;
}

/* The softmax of a row, as max and denominator: p_i = exp(score_i - max) / denom. A NaN score
 * propagates; max = -inf means the row has neither entries nor sink. */
typedef struct {
    double max, denom;
} row_softmax;

static double row_max(const attn_problem *p, const attn_row *r) {
    double m = r->sink;
    attn_entry e;
    for (int64_t i = 0; i < entry_count(p, r) && !isnan(m); i++) {
        if (!get_entry(p, r, i, &e)) continue;
        double s = entry_score(p, r, &e);
        if (s > m || isnan(s)) m = s;
    }
    return m;
}

static row_softmax row_softmax_of(const attn_problem *p, const attn_row *r) {
    row_softmax sm = {row_max(p, r), 0};
    if (sm.max == -INFINITY) return sm;
    sm.denom = exp(r->sink - sm.max);
    attn_entry e;
    for (int64_t i = 0; i < entry_count(p, r); i++)
        if (get_entry(p, r, i, &e)) sm.denom += exp(entry_score(p, r, &e) - sm.max);
    return sm;
}

/* ---------------------------------------------------------------- forward */

typedef struct {
    const attn_problem *p;
    ts_tensor *dst;
    double *scratch; /* per thread: q (D) and the output accumulator (Dv) */
    int64_t scratch_len;
} forward_job;

/* out[b, t, h, :] = sum_i p_i value_i, written once (zeros for a row without a distribution). */
static void forward_row(const attn_problem *p, const attn_row *r, double *acc, ts_tensor *dst) {
    for (int64_t d = 0; d < p->Dv; d++) acc[d] = 0;
    row_softmax sm = row_softmax_of(p, r);
    attn_entry e;
    if (sm.max != -INFINITY) {
        for (int64_t i = 0; i < entry_count(p, r); i++) {
            if (!get_entry(p, r, i, &e)) continue;
            double w = exp(entry_score(p, r, &e) - sm.max) / sm.denom;
            for (int64_t d = 0; d < p->Dv; d++) acc[d] += w * ref_get(e.vt, e.v_off + d * e.vt->stride[3]);
        }
    }
    int64_t out = ((r->b * p->T + r->t) * p->H + r->h) * p->Dv;
    for (int64_t d = 0; d < p->Dv; d++) ref_set(dst, out + d, acc[d]);
}

/* Rows are numbered like the output: ((b * T) + t) * H + h. */
static void forward_range(void *arg, int64_t begin, int64_t end, int tid) {
    forward_job *job = arg;
    const attn_problem *p = job->p;
    double *q = job->scratch + (int64_t)tid * job->scratch_len, *acc = q + p->D;
    for (int64_t row = begin; row < end; row++) {
        int64_t h = row % p->H, t = (row / p->H) % p->T, b = row / (p->H * p->T);
        attn_row r = make_row(p, b, t, h, q);
        forward_row(p, &r, acc, job->dst);
    }
}

TS_REF_KERNEL(attention) {
    attn_problem p;
    ts_status s = read_problem(ctx, dst, false, &p);
    if (s == TS_OK) s = check_problem(ctx, dst, &p);
    if (s == TS_OK && (dst->ndim != 4 || dst->shape[0] != p.B || dst->shape[1] != p.T || dst->shape[2] != p.H ||
                       dst->shape[3] != p.Dv))
        s = ts_ref_fail(ctx, TS_ERR_SHAPE, dst, "output must be [B, T, H, Dv]");
    if (s == TS_OK && p.idx) s = check_extra_indices(ctx, dst, &p);
    if (s != TS_OK) return s;
    forward_job job = {.p = &p, .dst = dst, .scratch_len = p.D + p.Dv};
    job.scratch = malloc((size_t)ts_threadpool_size(ctx->pool) * (size_t)job.scratch_len * sizeof(double));
    if (!job.scratch) return ts_ref_fail(ctx, TS_ERR_OOM, dst, "out of memory for row scratch");
    int64_t rows = p.B * p.T * p.H, work_per_row = (p.S + p.E) * (p.D + p.Dv);
    ts_parallel_for(ctx->pool, rows, ref_items_min_chunk(work_per_row), forward_range, &job);
    free(job.scratch);
    return TS_OK;
}

/* ---------------------------------------------------------------- backward */

/* Where each gradient lives in the flat output (element offsets): dq | dk | dv | dsink | dextra. */
typedef struct {
    int64_t dq, dk, dv, dsink, dextra, total;
} back_layout;

static back_layout layout_of(const attn_problem *p) {
    back_layout l;
    l.dq = 0;
    l.dk = l.dq + p->B * p->T * p->H * p->D;
    l.dv = l.dk + p->B * p->S * p->Hk * p->D;
    l.dsink = l.dv + p->B * p->S * p->Hk * p->Dv;
    l.dextra = l.dsink + (p->sink ? p->H : 0);
    l.total = l.dextra + (p->extra ? p->B * p->N * p->Hk * p->X : 0);
    return l;
}

/* Per-thread accumulators of one (batch, kv head) pair, all in double. */
typedef struct {
    double *q, *dout, *dq; /* one row: D, Dv, D */
    double *dk, *dv;       /* S rows of D / Dv: this kv head's keys */
    double *dextra;        /* N rows of X: this kv head's extra entries */
} back_accumulators;

typedef struct {
    const attn_problem *p;
    back_layout layout;
    ts_tensor *dst;
    double *scratch;       /* per thread: scratch_len doubles, carved into back_accumulators */
    int64_t scratch_len;
    double *dsink_partial; /* [B, H]: each pair's share of dsink, summed in b order afterwards */
} back_job;

static int64_t back_scratch_len(const attn_problem *p) {
    return 2 * p->D + p->Dv + p->S * (p->D + p->Dv) + p->N * p->X;
}

static back_accumulators accumulators_for(const back_job *job, int tid) {
    const attn_problem *p = job->p;
    double *base = job->scratch + (int64_t)tid * job->scratch_len;
    back_accumulators a;
    a.q = base;
    a.dout = a.q + p->D;
    a.dq = a.dout + p->Dv;
    a.dk = a.dq + p->D;
    a.dv = a.dk + p->S * p->D;
    a.dextra = a.dv + p->S * p->Dv;
    return a;
}

/* D = sum_i p_i dp_i with dp_i = <dout, value_i>, the softmax backward's row constant, is
 * <dout, out> of the row: out = sum_i p_i value_i. */
static double row_delta(const attn_problem *p, int64_t b, int64_t t, int64_t h, const double *dout) {
    int64_t off = row_start(p->out, b, t, h);
    double delta = 0;
    for (int64_t d = 0; d < p->Dv; d++) delta += dout[d] * ref_get(p->out, off + d * p->out->stride[3]);
    return delta;
}

/* The gradients of one query row (spec 3.7): dl_i = p_i (dp_i - D); dq = scale sum_i dl_i key_i;
 * key_i receives scale dl_i q and value_i receives p_i dout. Returns this row's share of dsink,
 * -p_sink D (0 without a sink or without a distribution). */
static double backward_row(const attn_problem *p, const attn_row *r, double delta, back_accumulators *a) {
    for (int64_t d = 0; d < p->D; d++) a->dq[d] = 0;
    row_softmax sm = row_softmax_of(p, r);
    if (sm.max == -INFINITY) return 0; /* no entries, no sink: the output was 0 whatever the inputs */
    attn_entry e;
    for (int64_t i = 0; i < entry_count(p, r); i++) {
        if (!get_entry(p, r, i, &e)) continue;
        double prob = exp(entry_score(p, r, &e) - sm.max) / sm.denom;
        double dl = prob * (value_dot(p, &e, a->dout) - delta), g = p->scale * dl;
        double *dkey = e.is_extra ? a->dextra + e.row * p->X : a->dk + e.row * p->D;
        double *dval = e.is_extra ? dkey + p->xv : a->dv + e.row * p->Dv;
        for (int64_t d = 0; d < p->D; d++) {
            a->dq[d] += g * ref_get(e.kt, e.k_off + d * e.kt->stride[3]);
            dkey[d] += g * r->q[d];
        }
        for (int64_t d = 0; d < p->Dv; d++) dval[d] += prob * a->dout[d];
    }
    return -exp(r->sink - sm.max) / sm.denom * delta;
}

/* Writes rows [b, 0..rows, kv, :] of the accumulator acc (rows x width) into the flat output
 * section starting at `base`, laid out [B, rows, Hk, width]. */
static void store_rows(const back_job *job, int64_t base, int64_t b, int64_t kv, int64_t rows, int64_t width,
                       const double *acc) {
    const attn_problem *p = job->p;
    for (int64_t j = 0; j < rows; j++) {
        int64_t out = base + ((b * rows + j) * p->Hk + kv) * width;
        for (int64_t d = 0; d < width; d++) ref_set(job->dst, out + d, acc[j * width + d]);
    }
}

/* One (batch, kv head) pair: every query row of its query heads, in order. */
static void backward_pair(const back_job *job, int64_t b, int64_t kv, back_accumulators *a) {
    const attn_problem *p = job->p;
    memset(a->dk, 0, (size_t)(p->S * (p->D + p->Dv) + p->N * p->X) * sizeof(double)); /* dk, dv, dextra */
    for (int64_t h = kv * p->group; h < (kv + 1) * p->group; h++) {
        double dsink = 0;
        for (int64_t t = 0; t < p->T; t++) {
            attn_row r = make_row(p, b, t, h, a->q);
            int64_t dout_off = row_start(p->dout, b, t, h);
            for (int64_t d = 0; d < p->Dv; d++) a->dout[d] = ref_get(p->dout, dout_off + d * p->dout->stride[3]);
            dsink += backward_row(p, &r, row_delta(p, b, t, h, a->dout), a);
            int64_t dq_out = job->layout.dq + ((b * p->T + t) * p->H + h) * p->D;
            for (int64_t d = 0; d < p->D; d++) ref_set(job->dst, dq_out + d, a->dq[d]);
        }
        job->dsink_partial[b * p->H + h] = dsink;
    }
    store_rows(job, job->layout.dk, b, kv, p->S, p->D, a->dk);
    store_rows(job, job->layout.dv, b, kv, p->S, p->Dv, a->dv);
    if (p->extra) store_rows(job, job->layout.dextra, b, kv, p->N, p->X, a->dextra);
}

/* Pairs are numbered b * Hk + kv. */
static void backward_range(void *arg, int64_t begin, int64_t end, int tid) {
    back_job *job = arg;
    back_accumulators a = accumulators_for(job, tid);
    for (int64_t pair = begin; pair < end; pair++) backward_pair(job, pair / job->p->Hk, pair % job->p->Hk, &a);
}

/* t is shaped like the forward's output, [B, T, H, Dv]. */
static bool output_shaped(const attn_problem *p, const ts_tensor *t) {
    return t->ndim == 4 && t->shape[0] == p->B && t->shape[1] == p->T && t->shape[2] == p->H && t->shape[3] == p->Dv;
}

TS_REF_KERNEL(attention_back) {
    attn_problem p;
    ts_status s = read_problem(ctx, dst, true, &p);
    if (s == TS_OK) s = check_problem(ctx, dst, &p);
    bool dout_fits = s == TS_OK && output_shaped(&p, p.dout) && output_shaped(&p, p.out);
    if (s == TS_OK && !dout_fits) s = ts_ref_fail(ctx, TS_ERR_SHAPE, dst, "dout and out must be [B, T, H, Dv]");
    back_job job = {.p = &p, .dst = dst};
    if (s == TS_OK) job.layout = layout_of(&p);
    if (s == TS_OK && (dst->ndim != 1 || dst->shape[0] != job.layout.total))
        s = ts_ref_fail(ctx, TS_ERR_SHAPE, dst, "output must be flat: dq | dk | dv | dsink | dextra");
    if (s == TS_OK && p.idx) s = check_extra_indices(ctx, dst, &p);
    if (s != TS_OK) return s;

    job.scratch_len = back_scratch_len(&p);
    job.scratch = malloc((size_t)ts_threadpool_size(ctx->pool) * (size_t)job.scratch_len * sizeof(double));
    job.dsink_partial = malloc((size_t)(p.B * p.H) * sizeof(double));
    if (!job.scratch || !job.dsink_partial) {
        free(job.scratch);
        free(job.dsink_partial);
        return ts_ref_fail(ctx, TS_ERR_OOM, dst, "out of memory for gradient accumulators");
    }
    ts_parallel_for(ctx->pool, p.B * p.Hk, 1, backward_range, &job);
    for (int64_t h = 0; h < p.H && p.sink; h++) { /* sum over the batch in b order, any thread split */
        double dsink = 0;
        for (int64_t b = 0; b < p.B; b++) dsink += job.dsink_partial[b * p.H + h];
        ref_set(dst, job.layout.dsink + h, dsink);
    }
    free(job.scratch);
    free(job.dsink_partial);
    return TS_OK;
}
