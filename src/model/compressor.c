/* compressor.c - graph builders for DeepSeek-V4's KV compressors and lightning indexer (spec
 * §2.4, §2.7-2.9): the HCA (non-overlapping, ratio m') and CSA (overlapping, m = 4) compressed
 * entries, the indexer's scores and top-k block selection, and the host-side helpers that fill
 * their constant leaves (YaRN RoPE angle tables, the causal block mask, HCA's visible-block list).
 * Built from existing graph ops only, so autodiff supplies the backward (spec §3 item 9); the
 * attention builder passes the entries to ts_attention as `extra` with the index lists as
 * `extra_idx`. Declared, with the conventions, in model_internal.h. */
#include <math.h>
#include <stdlib.h>

#include "model/model_internal.h"

/* ---------------------------------------------------------------- RoPE tables (host side) */

bool ts_v4_rope_freqs(double base, int n_rot, const ts_v4_rope_scaling *yarn, double *omega, double *lo_out,
                      double *hi_out) {
    if (n_rot < 2 || n_rot % 2 || !(base > 1) || !omega) return false;
    int half = n_rot / 2;
    for (int k = 0; k < half; k++) omega[k] = pow(base, -2.0 * k / n_rot);
    double lo = 0, hi = 0;
    if (yarn && yarn->enabled && yarn->original_max_position_embeddings > 0 && yarn->factor > 0) {
        double L = (double)yarn->original_max_position_embeddings;
        double corr_fast = n_rot * log(L / (2 * M_PI * yarn->beta_fast)) / (2 * log(base));
        double corr_slow = n_rot * log(L / (2 * M_PI * yarn->beta_slow)) / (2 * log(base));
        lo = fmax(0.0, floor(corr_fast));
        hi = fmin((double)(n_rot - 1), ceil(corr_slow));
        if (lo == hi) hi += 0.001;
        for (int k = 0; k < half; k++) {
            double gamma = fmin(fmax((k - lo) / (hi - lo), 0.0), 1.0); /* pair index vs dims: V3 quirk */
            omega[k] = omega[k] / yarn->factor * gamma + omega[k] * (1 - gamma);
        }
    }
    if (lo_out) *lo_out = lo;
    if (hi_out) *hi_out = hi;
    return true;
}

bool ts_v4_rope_angles(double base, int n_rot, const ts_v4_rope_scaling *yarn, int64_t n_pos, int64_t pos_step,
                       double *angles) {
    double omega[512];
    if (n_rot > 1024 || n_pos < 0 || !angles || !ts_v4_rope_freqs(base, n_rot, yarn, omega, NULL, NULL))
        return false;
    int half = n_rot / 2;
    for (int64_t p = 0; p < n_pos; p++)
        for (int k = 0; k < half; k++) angles[p * half + k] = (double)(p * pos_step) * omega[k];
    return true;
}

/* Writes n doubles into a float leaf of any float dtype. */
static ts_status write_doubles(ts_tensor *leaf, const double *v, int64_t n) {
    if (leaf->dtype == TS_F64) return ts_tensor_write(leaf, v, (size_t)n * sizeof(double));
    float *f = malloc((size_t)(n > 0 ? n : 1) * sizeof(float));
    if (!f) return TS_ERR_OOM;
    for (int64_t i = 0; i < n; i++) f[i] = (float)v[i];
    ts_status s = ts_tensor_write_f32(leaf, f, n);
    free(f);
    return s;
}

ts_status ts_v4_rope_angles_write(ts_tensor *leaf, double base, int n_rot, const ts_v4_rope_scaling *yarn,
                                  int64_t pos_step) {
    if (!leaf || n_rot < 2 || n_rot % 2) return TS_ERR_INVALID_ARG;
    int64_t n = ts_nelements(leaf);
    if (n % (n_rot / 2)) return TS_ERR_SHAPE;
    double *a = malloc((size_t)(n > 0 ? n : 1) * sizeof(double));
    if (!a) return TS_ERR_OOM;
    ts_status s = ts_v4_rope_angles(base, n_rot, yarn, n / (n_rot / 2), pos_step, a) ? write_doubles(leaf, a, n)
                                                                                     : TS_ERR_INVALID_ARG;
    free(a);
    return s;
}

/* ---------------------------------------------------------------- masks and index lists */

int64_t ts_v4_visible_blocks(int64_t t, int64_t m, int64_t n_blocks) {
    if (m < 1 || t < 0) return 0;
    int64_t v = (t + 1) / m;
    return v < n_blocks ? v : n_blocks;
}

bool ts_v4_block_usable(int64_t t, int64_t i, int64_t m, int64_t doc_start) {
    int64_t first = m == TS_V4_RATIO_CSA && i > 0 ? (i - 1) * m : i * m;
    return (i + 1) * m - 1 <= t && first >= doc_start;
}

void ts_v4_block_mask(int64_t T, int64_t m, int64_t n_blocks, double *mask) {
    for (int64_t t = 0; t < T; t++)
        for (int64_t i = 0; i < n_blocks; i++) mask[t * n_blocks + i] = ts_v4_block_usable(t, i, m, 0) ? 0.0 : -INFINITY;
}

ts_status ts_v4_block_mask_write(ts_tensor *leaf, int64_t m) {
    if (!leaf || leaf->ndim != 2 || m < 1) return TS_ERR_INVALID_ARG;
    int64_t T = leaf->shape[0], nb = leaf->shape[1];
    double *v = malloc((size_t)(T * nb > 0 ? T * nb : 1) * sizeof(double));
    if (!v) return TS_ERR_OOM;
    ts_v4_block_mask(T, m, nb, v);
    ts_status s = write_doubles(leaf, v, T * nb);
    free(v);
    return s;
}

void ts_v4_hca_extra_idx(int64_t T, int64_t m, int64_t n_blocks, int32_t *idx) {
    for (int64_t t = 0; t < T; t++)
        for (int64_t i = 0; i < n_blocks; i++) idx[t * n_blocks + i] = ts_v4_block_usable(t, i, m, 0) ? (int32_t)i : -1;
}

/* ---------------------------------------------------------------- compressors
 * x is [T, d] or [B, T, d]; axes are counted from the end so one code path serves both. */

/* Checks the compressor weights against x with k = mult·c channels; returns n_blocks (0 after
 * recording an error, -1 when an input is NULL). */
static int64_t check_comp(ts_graph *g, const char *who, ts_tensor *x, const ts_v4_compressor_w *w, int64_t m,
                          int mult, ts_tensor *angles, int n_rot) {
    if (!x || !w || !w->wkv || !w->wgate || !w->ape || !w->norm || !angles) return -1;
    if (x->ndim != 2 && x->ndim != 3) {
        ts_graph_set_error(g, TS_ERR_SHAPE, "%s: x must be [T, d] or [B, T, d], got %d dims", who, x->ndim);
        return 0;
    }
    int64_t T = x->shape[x->ndim - 2], d = x->shape[x->ndim - 1];
    if (m < 1 || T / m < 1) {
        ts_graph_set_error(g, TS_ERR_SHAPE, "%s: ratio %lld with T = %lld gives no completed block", who,
                           (long long)m, (long long)T);
        return 0;
    }
    int64_t k = w->wkv->shape[0], c = k / mult, nb = T / m;
    const ts_tensor *ts[4] = {w->wkv, w->wgate, w->ape, w->norm};
    for (int i = 0; i < 4; i++)
        if (ts[i]->dtype != x->dtype || angles->dtype != x->dtype) {
            ts_graph_set_error(g, TS_ERR_DTYPE, "%s: weights and angles must have x's dtype", who);
            return 0;
        }
    if (w->wkv->ndim != 2 || k % mult || c < 1 || w->wkv->shape[1] != d || w->wgate->ndim != 2 ||
        w->wgate->shape[0] != k || w->wgate->shape[1] != d || w->ape->ndim != 2 || w->ape->shape[0] != m ||
        w->ape->shape[1] != k || w->norm->ndim != 1 || w->norm->shape[0] != c) {
        ts_graph_set_error(g, TS_ERR_SHAPE,
                           "%s: want wkv/wgate [%d·c, d = %lld], ape [m = %lld, %d·c], norm [c]", who, mult,
                           (long long)d, (long long)m, mult);
        return 0;
    }
    if (n_rot < 2 || n_rot % 2 || n_rot > c || angles->ndim != 2 || angles->shape[0] != nb ||
        angles->shape[1] != n_rot / 2) {
        ts_graph_set_error(g, TS_ERR_SHAPE, "%s: want even n_rot <= c and angles [n_blocks = %lld, n_rot/2]", who,
                           (long long)nb);
        return 0;
    }
    return nb;
}

/* C = x·wkvᵀ and Z = x·wgateᵀ + ape on the first nb·m tokens, as [(B,) nb, m, k]. */
static void project(ts_graph *g, ts_tensor *x, const ts_v4_compressor_w *w, int64_t m, int64_t nb, ts_tensor **C,
                    ts_tensor **Z) {
    int tax = x->ndim - 2;
    ts_tensor *xs = x->shape[tax] == nb * m ? x : ts_slice(g, x, tax, 0, nb * m);
    int64_t k = w->wkv->shape[0];
    int64_t shape[4], n = 0;
    if (x->ndim == 3) shape[n++] = x->shape[0];
    shape[n++] = nb;
    shape[n++] = m;
    shape[n++] = k;
    *C = ts_reshape(g, ts_matmul(g, xs, w->wkv, false, true), (int)n, shape);
    *Z = ts_add(g, ts_reshape(g, ts_matmul(g, xs, w->wgate, false, true), (int)n, shape), w->ape);
}

ts_tensor *ts_v4_compress_pool(ts_graph *g, ts_tensor *C, ts_tensor *Z, ts_tensor *norm, ts_tensor *angles,
                               int n_rot, float eps) {
    ts_tensor *S = ts_softmax(g, Z, -2, NULL);
    ts_tensor *pooled = ts_sum(g, ts_mul(g, S, C), -2, false);
    return ts_rope(g, ts_rms_norm(g, pooled, norm, eps), angles, n_rot, false);
}

ts_tensor *ts_v4_hca_compress(ts_graph *g, ts_tensor *x, const ts_v4_compressor_w *w, int64_t m,
                              ts_tensor *angles, int n_rot, float eps) {
    int64_t nb = check_comp(g, "hca_compress", x, w, m, 1, angles, n_rot);
    if (nb <= 0) return NULL;
    ts_tensor *C, *Z;
    project(g, x, w, m, nb, &C, &Z);
    return ts_v4_compress_pool(g, C, Z, w->norm, angles, n_rot, eps);
}

ts_tensor *ts_v4_csa_compress(ts_graph *g, ts_tensor *x, const ts_v4_compressor_w *w, int64_t m,
                              ts_tensor *angles, int n_rot, float eps) {
    int64_t nb = check_comp(g, "csa_compress", x, w, m, 2, angles, n_rot);
    if (nb <= 0) return NULL;
    int64_t c = w->wkv->shape[0] / 2;
    ts_tensor *C, *Z;
    project(g, x, w, m, nb, &C, &Z);
    /* series b = channels [0, c) (to the next block), series a = [c, 2c) (own block) */
    ts_tensor *Cb = ts_slice(g, C, -1, 0, c), *Ca = ts_slice(g, C, -1, c, c);
    ts_tensor *Zb = ts_slice(g, Z, -1, 0, c), *Za = ts_slice(g, Z, -1, c, c);
    /* previous block's b series: block 0 gets a zero value and a -inf score (weight exactly 0) */
    int64_t s1[4], n = 0;
    if (x->ndim == 3) s1[n++] = x->shape[0];
    s1[n++] = 1;
    s1[n++] = m;
    s1[n++] = c;
    ts_tensor *Cprev = ts_fill(g, x->dtype, (int)n, s1, 0.0f), *Zprev = ts_fill(g, x->dtype, (int)n, s1, -INFINITY);
    if (nb > 1) {
        ts_tensor *cp[2] = {Cprev, ts_slice(g, Cb, -3, 0, nb - 1)}, *zp[2] = {Zprev, ts_slice(g, Zb, -3, 0, nb - 1)};
        Cprev = ts_concat(g, cp, 2, -3);
        Zprev = ts_concat(g, zp, 2, -3);
    }
    ts_tensor *cs[2] = {Cprev, Ca}, *zs[2] = {Zprev, Za};
    return ts_v4_compress_pool(g, ts_concat(g, cs, 2, -2), ts_concat(g, zs, 2, -2), w->norm, angles, n_rot, eps);
}

/* ---------------------------------------------------------------- indexer */

ts_tensor *ts_v4_indexer(ts_graph *g, ts_tensor *x, ts_tensor *cq, ts_tensor *wq_b, ts_tensor *weights_proj,
                         const ts_v4_compressor_w *comp, int64_t n_heads, int64_t head_dim, int64_t m,
                         ts_tensor *angles_q, ts_tensor *angles_k, int n_rot, float eps, ts_tensor *mask,
                         int64_t topk, ts_tensor **scores, ts_tensor **keys) {
    if (scores) *scores = NULL;
    if (keys) *keys = NULL;
    if (!x || !cq || !wq_b || !weights_proj || !angles_q || !mask) return NULL;
    ts_tensor *K = ts_v4_csa_compress(g, x, comp, m, angles_k, n_rot, eps);
    if (!K) return NULL;
    bool batched = x->ndim == 3;
    int64_t B = batched ? x->shape[0] : 1, T = x->shape[x->ndim - 2], d = x->shape[x->ndim - 1];
    int64_t nb = K->shape[K->ndim - 2];
    const ts_tensor *ts[4] = {cq, wq_b, weights_proj, mask};
    for (int i = 0; i < 4; i++)
        if (ts[i]->dtype != x->dtype || angles_q->dtype != x->dtype) {
            ts_graph_set_error(g, TS_ERR_DTYPE, "indexer: inputs must have x's dtype");
            return NULL;
        }
    bool mask_ok = mask->shape[mask->ndim - 1] == nb && mask->shape[mask->ndim - 2] == T &&
                   (mask->ndim == 2 || (mask->ndim == 3 && batched && mask->shape[0] == B));
    if (K->shape[K->ndim - 1] != head_dim || n_heads < 1 || cq->ndim != x->ndim || cq->shape[cq->ndim - 2] != T ||
        (batched && cq->shape[0] != B) || wq_b->ndim != 2 || wq_b->shape[0] != n_heads * head_dim ||
        wq_b->shape[1] != cq->shape[cq->ndim - 1] || weights_proj->ndim != 2 || weights_proj->shape[0] != n_heads ||
        weights_proj->shape[1] != d || angles_q->ndim != 2 || angles_q->shape[0] != T ||
        angles_q->shape[1] != n_rot / 2 || !mask_ok || topk < 1) {
        ts_graph_set_error(g, TS_ERR_SHAPE,
                           "indexer: want cq [(B,) T, q_lora], wq_b [n_heads·head_dim, q_lora], weights_proj "
                           "[n_heads, d], compressor width head_dim, angles_q [T, n_rot/2], mask [(B,) T, n_blocks], "
                           "topk >= 1");
        return NULL;
    }
    int64_t sa[3] = {T, 1, n_rot / 2}, x3[3] = {B, T, d}, c3[3] = {B, T, cq->shape[cq->ndim - 1]};
    int64_t k3[3] = {B, nb, head_dim};
    ts_tensor *idx = ts_v4_indexer_select(g, ts_reshape(g, x, 3, x3), ts_reshape(g, cq, 3, c3), wq_b, weights_proj,
                                          ts_reshape(g, K, 3, k3), n_heads, head_dim, ts_reshape(g, angles_q, 3, sa),
                                          n_rot, mask, topk, scores);
    if (!idx) return NULL;
    if (!batched) {
        idx = ts_reshape_2d(g, idx, T, idx->shape[2]);
        if (scores) *scores = ts_reshape_2d(g, *scores, T, nb);
    }
    if (keys) *keys = K;
    return idx;
}

ts_tensor *ts_v4_indexer_select(ts_graph *g, ts_tensor *x, ts_tensor *cq, ts_tensor *wq_b, ts_tensor *weights_proj,
                                ts_tensor *K, int64_t n_heads, int64_t head_dim, ts_tensor *angles_q, int n_rot,
                                ts_tensor *mask, int64_t topk, ts_tensor **scores) {
    if (scores) *scores = NULL;
    if (!x || !cq || !wq_b || !weights_proj || !K || !angles_q || !mask) return NULL;
    int64_t B = x->shape[0], T = x->shape[1], nb = K->shape[1];
    int64_t sq[4] = {B, T, n_heads, head_dim};
    ts_tensor *q = ts_reshape(g, ts_matmul(g, cq, wq_b, false, true), 4, sq);
    q = ts_rope(g, q, angles_q, n_rot, false);
    ts_tensor *wt = ts_scale(g, ts_matmul(g, x, weights_proj, false, true),
                             (float)(1.0 / sqrt((double)head_dim * (double)n_heads)));
    int64_t sw[4] = {B, T, n_heads, 1}, sd[4] = {B, T, n_heads, nb};
    int64_t sqf[3] = {B, T * n_heads, head_dim}, sst[3] = {B, T, nb};
    ts_tensor *qk = ts_reshape(g, ts_matmul(g, ts_reshape(g, q, 3, sqf), K, false, true), 4, sd);
    ts_tensor *sc = ts_sum(g, ts_mul(g, ts_relu(g, qk), ts_reshape(g, wt, 4, sw)), 2, false); /* [B, T, nb] */
    sc = ts_add(g, sc, mask);
    int k = (int)(topk < nb ? topk : nb);
    ts_tensor *idx = NULL;
    if (!sc || ts_topk(g, sc, k, NULL, &idx) != TS_OK) return NULL;
    /* slots that picked an invisible block (mask -inf) -> -1: (idx+1)·exp(mask[t, idx]) - 1 in f32 */
    ts_tensor *full_mask = ts_same_shape(mask, sc) ? mask : ts_expand(g, mask, 3, sst);
    ts_tensor *vis = ts_exp(g, ts_cast(g, ts_gather(g, full_mask, -1, idx), TS_F32));
    ts_tensor *fidx = ts_add(g, ts_cast(g, idx, TS_F32), ts_fill(g, TS_F32, 1, (int64_t[]){1}, 1.0f));
    ts_tensor *out = ts_cast(g, ts_sub(g, ts_mul(g, fidx, vis), ts_fill(g, TS_F32, 1, (int64_t[]){1}, 1.0f)),
                             TS_I32);
    if (!out) return NULL;
    if (scores) *scores = sc;
    return out;
}
