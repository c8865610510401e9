/* model_internal.h - internal declarations shared by the graph builders under src/model/ (not
 * part of the public API in include/tessera/). Each builder file owns one section below; add a
 * new section for a new file rather than editing another one. */
#ifndef TS_MODEL_INTERNAL_H
#define TS_MODEL_INTERNAL_H

#include "tessera/graph.h"
#include "tessera/model.h"

/* ================================================================ mHC (mhc.c), spec §2.3
 *
 * Graph builders for Manifold-Constrained Hyper-Connections. They only record nodes (existing
 * graph ops throughout), so ts_graph_backward derives the whole backward of spec §3 items 2-6,
 * Sinkhorn included (every iteration is unrolled).
 *
 * Layout: the residual state X is [T, n, d] or [B, T, n, d] (any float dtype; every other input
 * has X's dtype): per token, n = hc_mult streams of width d, stream-major, so that flattening a
 * token gives the spec's x = vec(X_t) (stream 0's d values, then stream 1's, ...). Per-token
 * outputs keep X's leading dims ("..." below = [T] or [B, T]).
 *
 * Constants (eps_hc, norm_eps) enter the graph as float op parameters / f32-valued fills, so in
 * an f64 graph 1e-6 acts as (double)1e-6f; references should use the same value.
 *
 * Errors: like every graph constructor, a NULL input gives NULL without a new error; a bad shape,
 * dtype or count records the first error in the graph and gives NULL. */

/* hc_pre (spec §2.3.1): coefficients and the collapsed sub-layer input.
 *   fn    [(2+n)*n, n*d]   projection (rows: a (n) | p (n) | m (n*n, row-major))
 *   base  [(2+n)*n]        static biases b_a | b_p | b_m
 *   scale [3]              s_a, s_p, s_m
 * raw = (x·fnᵀ)/RMS(x), RMS(x) = sqrt(mean(x²) + norm_eps) over the n*d values of a token
 * (computed as rms_norm(x)·fnᵀ: the same value, one fused op with a fused backward);
 * pre = σ(s_a·a + b_a) + eps_hc; post = 2σ(s_p·p + b_p);
 * comb = Sinkhorn(s_m·m + b_m as [n, n], row i = source stream), sinkhorn_iters >= 1 total
 * iterations with the spec's step-6 ordering and +eps_hc placements;
 * u = Σ_i pre_i X[i].
 * Outputs (each pointer may be NULL): u [..., d], post [..., n], comb [..., n, n], pre [..., n].
 * Returns u (NULL on error; then every requested output is NULL too). */
ts_tensor *ts_mhc_pre(ts_graph *g, ts_tensor *X, ts_tensor *fn, ts_tensor *base, ts_tensor *scale,
                      int64_t n, float norm_eps, float eps_hc, int sinkhorn_iters,
                      ts_tensor **u, ts_tensor **post, ts_tensor **comb, ts_tensor **pre);

/* hc_post (spec §2.3.3): X'[j] = post_j·v + Σ_i comb_ij·X[i] (= combᵀ·X + post·v per token).
 * X [..., n, d], v [..., d], post [..., n], comb [..., n, n] -> X' [..., n, d]. */
ts_tensor *ts_mhc_post(ts_graph *g, ts_tensor *X, ts_tensor *v, ts_tensor *post, ts_tensor *comb);

/* hc_head (spec §2.3.4): w = σ(scale·(x·fnᵀ)/RMS(x) + base) + eps_hc; y = Σ_i w_i X[i].
 * X [..., n, d], fn [n, n*d], base [n], scale [1] -> y [..., d]. w_out (may be NULL): [..., n]. */
ts_tensor *ts_mhc_head(ts_graph *g, ts_tensor *X, ts_tensor *fn, ts_tensor *base, ts_tensor *scale,
                       float norm_eps, float eps_hc, ts_tensor **w_out);

#endif
