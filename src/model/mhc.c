/* mhc.c - graph builders for mHC, DeepSeek-V4's Manifold-Constrained Hyper-Connections (spec
 * §2.3): hc_pre (coefficients, Sinkhorn, collapse), hc_post (write-back) and hc_head (final
 * collapse). Built from graph ops only (the Sinkhorn projection is one fused op, ts_sinkhorn),
 * so autodiff supplies the backward (spec §3 items 2-6); the model builders call these around every attention / MoE sub-layer. Declared,
 * with the tensor layout, in model_internal.h. */
#include "model/model_internal.h"

/* X [..., n, d] with 1 or 2 leading dims -> X as [T, n, d] (a view when X is contiguous);
 * lead/n_lead receive the leading dims for reshaping outputs back. */
static ts_tensor *flatten_tokens(ts_graph *g, const char *who, ts_tensor *X, int64_t *lead, int *n_lead) {
    if (X->ndim != 3 && X->ndim != 4) {
        ts_graph_set_error(g, TS_ERR_SHAPE, "%s: X must be [T, n, d] or [B, T, n, d], got %d dims", who, X->ndim);
        return NULL;
    }
    *n_lead = X->ndim - 2;
    int64_t T = 1;
    for (int i = 0; i < *n_lead; i++) {
        lead[i] = X->shape[i];
        T *= X->shape[i];
    }
    int64_t shape[3] = {T, X->shape[X->ndim - 2], X->shape[X->ndim - 1]};
    return ts_reshape(g, X, 3, shape);
}

/* [T, k...] -> [lead..., k...] */
static ts_tensor *unflatten(ts_graph *g, ts_tensor *t, const int64_t *lead, int n_lead, int n_tail,
                            const int64_t *tail) {
    if (!t) return NULL;
    int64_t shape[TS_MAX_DIMS];
    for (int i = 0; i < n_lead; i++) shape[i] = lead[i];
    for (int i = 0; i < n_tail; i++) shape[n_lead + i] = tail[i];
    return ts_reshape(g, t, n_lead + n_tail, shape);
}

static bool check_param(ts_graph *g, const char *who, const char *what, const ts_tensor *t, ts_dtype dt,
                        int ndim, int64_t d0, int64_t d1) {
    if (t->dtype != dt) {
        ts_graph_set_error(g, TS_ERR_DTYPE, "%s: %s must have X's dtype", who, what);
        return false;
    }
    if (t->ndim != ndim || t->shape[0] != d0 || (ndim == 2 && t->shape[1] != d1)) {
        char buf[128];
        ts_graph_set_error(g, TS_ERR_SHAPE, "%s: %s is %s, expected [%lld%s%lld]", who, what,
                           ts_tensor_describe(t, buf, sizeof buf), (long long)d0, ndim == 2 ? ", " : "",
                           ndim == 2 ? (long long)d1 : 0LL);
        return false;
    }
    return true;
}

static ts_tensor *scalar_const(ts_graph *g, ts_dtype dt, float value) {
    int64_t one = 1;
    return ts_fill(g, dt, 1, &one, value);
}

/* raw = (x·fnᵀ)/RMS(x) for Xf [T, n, d], fn [k, n*d] -> [T, k]. Normalising first and projecting
 * after equals the official "project, then multiply by 1/RMS" and needs one fused op only. */
static ts_tensor *projection(ts_graph *g, ts_tensor *Xf, ts_tensor *fn, float norm_eps) {
    ts_tensor *x = ts_reshape_2d(g, Xf, Xf->shape[0], Xf->shape[1] * Xf->shape[2]);
    return ts_matmul(g, ts_rms_norm(g, x, NULL, norm_eps), fn, false, true);
}

/* Σ_i w_i X[i]: w [T, n], Xf [T, n, d] -> [T, d] (batched [1, n]·[n, d]). */
static ts_tensor *collapse(ts_graph *g, ts_tensor *w, ts_tensor *Xf) {
    int64_t T = Xf->shape[0], n = Xf->shape[1], d = Xf->shape[2];
    int64_t ws[3] = {T, 1, n};
    ts_tensor *y = ts_matmul(g, ts_reshape(g, w, 3, ws), Xf, false, false);
    return ts_reshape_2d(g, y, T, d);
}

ts_tensor *ts_mhc_pre(ts_graph *g, ts_tensor *X, ts_tensor *fn, ts_tensor *base, ts_tensor *scale,
                      int64_t n, float norm_eps, float eps_hc, int sinkhorn_iters,
                      ts_tensor **u, ts_tensor **post, ts_tensor **comb, ts_tensor **pre) {
    static const char *who = "mhc_pre";
    if (u) *u = NULL;
    if (post) *post = NULL;
    if (comb) *comb = NULL;
    if (pre) *pre = NULL;
    if (!g || !X || !fn || !base || !scale) return NULL;
    if (n < 1 || sinkhorn_iters < 1) {
        ts_graph_set_error(g, TS_ERR_INVALID_ARG, "%s: n = %lld and sinkhorn_iters = %d must be >= 1", who,
                           (long long)n, sinkhorn_iters);
        return NULL;
    }
    int64_t lead[2];
    int n_lead;
    ts_tensor *Xf = flatten_tokens(g, who, X, lead, &n_lead);
    if (!Xf) return NULL;
    int64_t T = Xf->shape[0], d = Xf->shape[2], k = (2 + n) * n;
    if (Xf->shape[1] != n) {
        ts_graph_set_error(g, TS_ERR_SHAPE, "%s: X has %lld streams, expected n = %lld", who,
                           (long long)Xf->shape[1], (long long)n);
        return NULL;
    }
    ts_dtype dt = X->dtype;
    if (!check_param(g, who, "fn", fn, dt, 2, k, n * d) || !check_param(g, who, "base", base, dt, 1, k, 0) ||
        !check_param(g, who, "scale", scale, dt, 1, 3, 0))
        return NULL;

    ts_tensor *raw = projection(g, Xf, fn, norm_eps); /* [T, k] */
    ts_tensor *s_a = ts_slice(g, scale, 0, 0, 1), *s_p = ts_slice(g, scale, 0, 1, 1),
              *s_m = ts_slice(g, scale, 0, 2, 1);
    ts_tensor *la = ts_add(g, ts_mul(g, ts_slice(g, raw, 1, 0, n), s_a), ts_slice(g, base, 0, 0, n));
    ts_tensor *lp = ts_add(g, ts_mul(g, ts_slice(g, raw, 1, n, n), s_p), ts_slice(g, base, 0, n, n));
    ts_tensor *lm = ts_add(g, ts_mul(g, ts_slice(g, raw, 1, 2 * n, n * n), s_m), ts_slice(g, base, 0, 2 * n, n * n));

    ts_tensor *pre_t = ts_add(g, ts_sigmoid(g, la), scalar_const(g, dt, eps_hc)); /* [T, n] */
    ts_tensor *post_t = ts_scale(g, ts_sigmoid(g, lp), 2.0f);                    /* [T, n] */
    int64_t ms[3] = {T, n, n};
    ts_tensor *comb_t = ts_sinkhorn(g, ts_reshape(g, lm, 3, ms), sinkhorn_iters, eps_hc); /* [T, n, n] */
    ts_tensor *u_t = collapse(g, pre_t, Xf);                                      /* [T, d] */

    int64_t tail_n[1] = {n}, tail_nn[2] = {n, n}, tail_d[1] = {d};
    u_t = ts_set_name(unflatten(g, u_t, lead, n_lead, 1, tail_d), "mhc.u");
    post_t = ts_set_name(unflatten(g, post_t, lead, n_lead, 1, tail_n), "mhc.post");
    comb_t = ts_set_name(unflatten(g, comb_t, lead, n_lead, 2, tail_nn), "mhc.comb");
    pre_t = ts_set_name(unflatten(g, pre_t, lead, n_lead, 1, tail_n), "mhc.pre");
    if (!u_t || !post_t || !comb_t || !pre_t) return NULL;
    if (u) *u = u_t;
    if (post) *post = post_t;
    if (comb) *comb = comb_t;
    if (pre) *pre = pre_t;
    return u_t;
}

ts_tensor *ts_mhc_post(ts_graph *g, ts_tensor *X, ts_tensor *v, ts_tensor *post, ts_tensor *comb) {
    static const char *who = "mhc_post";
    if (!g || !X || !v || !post || !comb) return NULL;
    int64_t lead[2];
    int n_lead;
    ts_tensor *Xf = flatten_tokens(g, who, X, lead, &n_lead);
    if (!Xf) return NULL;
    int64_t T = Xf->shape[0], n = Xf->shape[1], d = Xf->shape[2];
    if (ts_nelements(v) != T * d || ts_nelements(post) != T * n || ts_nelements(comb) != T * n * n ||
        v->shape[v->ndim - 1] != d || post->shape[post->ndim - 1] != n || comb->ndim < 2 ||
        comb->shape[comb->ndim - 1] != n || comb->shape[comb->ndim - 2] != n) {
        char b0[96], b1[96], b2[96], b3[96];
        ts_graph_set_error(g, TS_ERR_SHAPE, "%s: X %s, v %s, post %s, comb %s do not fit [..., n, d], [..., d], "
                           "[..., n], [..., n, n]", who, ts_tensor_describe(X, b0, sizeof b0),
                           ts_tensor_describe(v, b1, sizeof b1), ts_tensor_describe(post, b2, sizeof b2),
                           ts_tensor_describe(comb, b3, sizeof b3));
        return NULL;
    }
    int64_t vs[3] = {T, 1, d}, ps[3] = {T, n, 1}, cs[3] = {T, n, n};
    ts_tensor *mix = ts_matmul(g, ts_reshape(g, comb, 3, cs), Xf, true, false);               /* combᵀ·X */
    ts_tensor *wr = ts_matmul(g, ts_reshape(g, post, 3, ps), ts_reshape(g, v, 3, vs), false, false); /* post·v */
    int64_t tail[2] = {n, d};
    return ts_set_name(unflatten(g, ts_add(g, mix, wr), lead, n_lead, 2, tail), "mhc.x_out");
}

ts_tensor *ts_mhc_head(ts_graph *g, ts_tensor *X, ts_tensor *fn, ts_tensor *base, ts_tensor *scale,
                       float norm_eps, float eps_hc, ts_tensor **w_out) {
    static const char *who = "mhc_head";
    if (w_out) *w_out = NULL;
    if (!g || !X || !fn || !base || !scale) return NULL;
    int64_t lead[2];
    int n_lead;
    ts_tensor *Xf = flatten_tokens(g, who, X, lead, &n_lead);
    if (!Xf) return NULL;
    int64_t n = Xf->shape[1], d = Xf->shape[2];
    ts_dtype dt = X->dtype;
    if (!check_param(g, who, "fn", fn, dt, 2, n, n * d) || !check_param(g, who, "base", base, dt, 1, n, 0) ||
        !check_param(g, who, "scale", scale, dt, 1, 1, 0))
        return NULL;
    ts_tensor *logit = ts_add(g, ts_mul(g, projection(g, Xf, fn, norm_eps), scale), base);
    ts_tensor *w = ts_add(g, ts_sigmoid(g, logit), scalar_const(g, dt, eps_hc)); /* [T, n] */
    ts_tensor *y = collapse(g, w, Xf);
    int64_t tail_n[1] = {n}, tail_d[1] = {d};
    y = ts_set_name(unflatten(g, y, lead, n_lead, 1, tail_d), "mhc.head");
    w = ts_set_name(unflatten(g, w, lead, n_lead, 1, tail_n), "mhc.head_w");
    if (!y || !w) return NULL;
    if (w_out) *w_out = w;
    return y;
}
