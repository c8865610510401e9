/* test_model.c - the whole DeepSeek-V4 model (src/model/model_graph.c + weights.c) against the
 * reference: the tiny random DeepseekV4ForCausalLM of tests/fixtures/v4 (transformers 5.24,
 * made by tools/make_v4_fixture.py; every layer type - window-only, CSA, HCA - hash and learned
 * routing, T = 46 > window 8 and > several blocks of 4 and 8), loaded through the real
 * checkpoint loader.
 *
 * 1. f64 build vs the port's f64 run: logits, loss, the routing and indexer selections, and the
 *    gradient of every parameter that has one (146 tensors; the file stores them rounded to f32,
 *    so the tolerance is f32 rounding: 2e-6 relative + 1e-7 absolute).
 * 2. f32 build on the optimized backend vs the port's f32-rounded logits: max abs error <= 1e-4
 *    and identical argmax (the bar); gradients within 2e-3 relative to their max.
 * 3. Batch of 2 (row 0 = the batch-1 sequence): logits and loss.
 * 4. Causality: changing token s leaves every logit at positions < s bit-identical, for s on and
 *    around compressor block boundaries (4, 8) and the window edge.
 * 5. Finite differences on the whole model (f64): d loss / d w for sampled elements of several
 *    parameter kinds, including the MTP block of a preset with one.
 * 6. Save -> load round trip gives identical logits; loader errors name the tensor (missing
 *    tensor, wrong shape, truncated file). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "check.h"
#include "model_fixture.h"
#include "model/model_internal.h"
#include "tessera/backend.h"
#include "tessera/io.h"
#include "tessera/model.h"
#include "tessera/train.h"

#define T_ 46
#define V_ 64


typedef struct {
    ts_model_weights *w;
    ts_model_graph *mg;
    ts_backend *be;
} run;

static void run_free(run *r) {
    ts_model_graph_free(r->mg);
    ts_backend_free(r->be);
    memset(r, 0, sizeof *r);
}

/* Builds (loss + backward) on `be` for ids [B, T] and computes. Targets = ids shifted left. */
static bool run_model(run *r, ts_model_weights *w, ts_backend *be, const int32_t *ids, int64_t B, int64_t T,
                      bool backward) {
    char err[512] = "";
    r->w = w;
    r->be = be;
    ts_model_graph_options o = {.batch = B, .seq = T, .loss = true, .backward = backward, .keep_logits = true};
    ts_status s = ts_model_graph_build(w, &o, &r->mg, err, sizeof err);
    CHECK(s == TS_OK, "build: %s", err);
    if (s != TS_OK) return false;
    s = ts_model_graph_alloc(r->mg, be, NULL, err, sizeof err);
    CHECK(s == TS_OK, "alloc: %s", err);
    int32_t *tg = malloc((size_t)(B * T) * sizeof *tg);
    for (int64_t b = 0; b < B; b++)
        for (int64_t t = 0; t < T; t++) tg[b * T + t] = t + 1 < T ? ids[b * T + t + 1] : -1;
    CHECK_OK(ts_tensor_write(r->mg->ids, ids, (size_t)(B * T) * 4), r->mg->graph);
    CHECK_OK(ts_tensor_write(r->mg->targets, tg, (size_t)(B * T) * 4), r->mg->graph);
    free(tg);
    s = ts_graph_compute(r->mg->graph);
    CHECK(s == TS_OK, "compute: %s", ts_graph_error(r->mg->graph));
    return s == TS_OK;
}

/* Compares the gradient of every weight with the fixture's grad.<file name>; returns how many
 * tensors were compared. rel: tolerance relative to the tensor's largest |expected| value. */
static int compare_grads(const run *r, double rel, double abs_floor, double *worst_out) {
    int compared = 0;
    double worst = 0;
    for (int i = 0; i < ts_model_weights_count(r->w); i++) {
        const ts_model_tensor *t = ts_model_weights_info(r->w, i);
        char names[TS_MODEL_NAME_CANDIDATES][TS_MODEL_NAME_CANDIDATE_MAX], key[TS_MODEL_NAME_CANDIDATES * TS_MODEL_NAME_CANDIDATE_MAX + 8];
        int nc = ts_model_name_candidates(t->name, names);
        double *want = NULL;
        int64_t n = 0;
        for (int k = 0; k < nc && !want; k++) {
            snprintf(key, sizeof key, "grad.%s", names[k]);
            want = expect(key, &n);
        }
        const void *got = ts_model_graph_grad_data(r->mg, i);
        if (!want) {
            /* no reference gradient: indexer weights, tid2eid and the router bias have none */
            bool none_expected = strstr(t->name, "indexer") || strstr(t->name, "tid2eid") || strstr(t->name, "gate.bias");
            CHECK(none_expected, "no fixture gradient for %s", t->name);
            free(want);
            continue;
        }
        CHECK(got != NULL, "no gradient computed for %s", t->name);
        if (!got || n != ts_model_tensor_numel(t)) {
            free(want);
            continue;
        }
        double scale = 0, err = 0;
        for (int64_t j = 0; j < n; j++) scale = fmax(scale, fabs(want[j]));
        bool f64 = ts_model_weights_dtype(r->w) == TS_F64;
        int bad = 0;
        for (int64_t j = 0; j < n; j++) {
            double g = f64 ? ((const double *)got)[j] : ((const float *)got)[j];
            double e = fabs(g - want[j]);
            err = fmax(err, e / fmax(scale, 1e-30));
            if (e > rel * scale + abs_floor) bad++;
        }
        CHECK(bad == 0, "%s: %d of %lld gradient values off (worst %.2e relative to max %.2e)", t->name, bad,
              (long long)n, err, scale);
        worst = fmax(worst, err);
        compared++;
        free(want);
    }
    if (worst_out) *worst_out = worst;
    return compared;
}

/* ---------------------------------------------------------------- 1. f64 parity */

static void test_f64_parity(ts_model_weights *w64) {
    int64_t n;
    int32_t *ids = fixture_ids("ids", &n);
    run r;
    ts_backend *be;
    ts_backend_cpu_ref_new(2, &be);
    if (!run_model(&r, w64, be, ids, 1, T_, true)) {
        run_free(&r);
        free(ids);
        return;
    }
    double *want = expect("logits_f64", NULL), *got = read_f64(r.mg->logits);
    double d = max_abs_diff(got, want, T_ * V_);
    /* not 1e-12: op parameters are f32 by design (the 1/sqrt(c) score scale, eps, the indexer
     * scale), e.g. 1/sqrt(32) rounds with a 2.6e-9 relative error */
    CHECK(d < 1e-6, "f64 logits max abs error %.3e", d);
    printf("  f64 logits vs port (f64): max abs error %.2e\n", d);
    double loss;
    ts_tensor_read(r.mg->loss, &loss, sizeof loss);
    double *wl = expect("loss_f64", NULL);
    CHECK(fabs(loss - wl[0]) < 1e-8, "f64 loss %.15f vs %.15f", loss, wl[0]);
    printf("  f64 loss %.12f (port %.12f)\n", loss, wl[0]);
    free(wl);
    free(want);
    free(got);

    /* routing: experts per token, sorted (the fixture sorts by expert id) */
    const ts_v4_config *c = ts_model_weights_config(w64);
    for (int layer = 0; layer < c->num_hidden_layers; layer++) {
        char key[64];
        snprintf(key, sizeof key, "route.layers.%d.experts", layer);
        double *we = expect(key, NULL);
        ts_tensor *ri = r.mg->route_idx[layer];
        CHECK(we && ri, "routing of layer %d", layer);
        if (!we || !ri) continue;
        int64_t K = c->num_experts_per_tok, bad = 0;
        int64_t *idx = malloc((size_t)(T_ * K) * sizeof *idx);
        if (ri->dtype == TS_I64) ts_tensor_read(ri, idx, (size_t)(T_ * K) * 8);
        else {
            int32_t *i32 = malloc((size_t)(T_ * K) * 4);
            ts_tensor_read(ri, i32, (size_t)(T_ * K) * 4);
            for (int64_t j = 0; j < T_ * K; j++) idx[j] = i32[j];
            free(i32);
        }
        for (int64_t t = 0; t < T_; t++) {
            int64_t *row = idx + t * K;
            for (int64_t a = 0; a < K; a++) /* sort the row */
                for (int64_t bq = a + 1; bq < K; bq++)
                    if (row[bq] < row[a]) {
                        int64_t tmp = row[a];
                        row[a] = row[bq];
                        row[bq] = tmp;
                    }
            for (int64_t a = 0; a < K; a++) bad += row[a] != (int64_t)we[t * K + a];
        }
        CHECK(bad == 0, "layer %d: %lld routing choices differ from the port", layer, (long long)bad);
        free(idx);
        free(we);
    }
    /* indexer picks (sorted, -1 = none) on the CSA layers */
    for (int layer = 0; layer < c->num_hidden_layers; layer++) {
        if (c->compress_ratios[layer] != TS_V4_RATIO_CSA) continue;
        char key[64];
        snprintf(key, sizeof key, "index.layers.%d.topk", layer);
        int64_t nk;
        double *wk = expect(key, &nk);
        ts_tensor *ii = r.mg->index_idx[layer];
        CHECK(wk && ii && ts_nelements(ii) == nk, "indexer picks of layer %d", layer);
        if (!wk || !ii || ts_nelements(ii) != nk) {
            free(wk);
            continue;
        }
        int32_t *got_k = malloc((size_t)nk * 4);
        ts_tensor_read(ii, got_k, (size_t)nk * 4);
        int64_t k = ii->shape[2], bad = 0;
        for (int64_t t = 0; t < nk / k; t++) {
            int32_t *row = got_k + t * k;
            for (int64_t a = 0; a < k; a++)
                for (int64_t bq = a + 1; bq < k; bq++)
                    if (row[bq] < row[a]) {
                        int32_t tmp = row[a];
                        row[a] = row[bq];
                        row[bq] = tmp;
                    }
            for (int64_t a = 0; a < k; a++) bad += row[a] != (int32_t)wk[t * k + a];
        }
        CHECK(bad == 0, "layer %d: %lld indexer picks differ from the port", layer, (long long)bad);
        free(got_k);
        free(wk);
    }
    double worst;
    int compared = compare_grads(&r, 2e-6, 1e-7, &worst);
    CHECK(compared == 146, "compared %d gradients, the fixture has 146", compared);
    printf("  f64 gradients: %d tensors, worst error %.2e relative to each tensor's max\n", compared, worst);
    run_free(&r);
    free(ids);
}

/* ---------------------------------------------------------------- 2. f32 parity, 3. batch 2 */

static void test_f32_parity(void) {
    char err[512] = "";
    ts_model_weights *w = NULL;
    ts_status s = ts_model_load(fixture_dir, TS_F32, &w, err, sizeof err);
    CHECK(s == TS_OK, "load f32: %s", err);
    if (s != TS_OK) return;
    int64_t n;
    int32_t *ids = fixture_ids("ids", &n);
    run r;
    ts_backend *be;
    ts_backend_cpu_new(2, &be);
    if (run_model(&r, w, be, ids, 1, T_, true)) {
        double *want = expect("logits", NULL), *got = read_f64(r.mg->logits);
        double d = max_abs_diff(got, want, T_ * V_);
        int argmax_bad = 0;
        for (int t = 0; t < T_; t++) {
            int ag = 0, aw = 0;
            for (int v = 1; v < V_; v++) {
                if (got[t * V_ + v] > got[t * V_ + ag]) ag = v;
                if (want[t * V_ + v] > want[t * V_ + aw]) aw = v;
            }
            argmax_bad += ag != aw;
        }
        CHECK(d <= 1e-4, "f32 logits max abs error %.3e > 1e-4", d);
        CHECK(argmax_bad == 0, "%d argmax positions differ", argmax_bad);
        printf("  f32 logits (optimized cpu backend) vs port: max abs error %.2e, argmax identical at %d/%d\n", d,
               T_ - argmax_bad, T_);
        double worst;
        int compared = compare_grads(&r, 2e-3, 0, &worst);
        printf("  f32 gradients: %d tensors, worst error %.2e relative to each tensor's max\n", compared, worst);
        free(want);
        free(got);
    }
    run_free(&r);
    free(ids);

    /* batch of two */
    ids = fixture_ids("ids_b2", &n);
    ts_backend_cpu_new(2, &be);
    if (run_model(&r, w, be, ids, 2, T_, false)) {
        double *want = expect("logits_b2", NULL), *got = read_f64(r.mg->logits);
        double d = max_abs_diff(got, want, 2 * T_ * V_);
        CHECK(d <= 1e-4, "batch-2 f32 logits max abs error %.3e", d);
        float loss;
        ts_tensor_read(r.mg->loss, &loss, sizeof loss);
        double *wl = expect("loss_b2_f64", NULL);
        CHECK(fabs(loss - wl[0]) < 1e-5, "batch-2 loss %.7f vs %.7f", loss, wl[0]);
        printf("  batch 2: logits max abs error %.2e, loss %.7f (port %.7f)\n", d, loss, wl[0]);
        free(wl);
        free(want);
        free(got);
    }
    run_free(&r);
    free(ids);
    ts_model_weights_free(w);
}

/* ---------------------------------------------------------------- 4. causality */

/* The fixture sequence through a forward-only f64 graph on the reference backend. */
static bool forward_fixture(ts_model_weights *w64, run *r, int32_t **ids) {
    int64_t n;
    *ids = fixture_ids("ids", &n);
    ts_backend *be;
    ts_backend_cpu_ref_new(2, &be);
    if (run_model(r, w64, be, *ids, 1, T_, false)) return true;
    run_free(r);
    free(*ids);
    return false;
}

static void test_causality(ts_model_weights *w64) {
    int32_t *ids;
    run r;
    if (!forward_fixture(w64, &r, &ids)) return;
    double *base = read_f64(r.mg->logits);
    const int changes[] = {3, 4, 7, 8, 9, 15, 16, 17, 24, 31, 32, 40, 45};
    for (size_t k = 0; k < sizeof changes / sizeof *changes; k++) {
        int s = changes[k];
        int32_t *mod = malloc(sizeof(int32_t) * T_);
        memcpy(mod, ids, sizeof(int32_t) * T_);
        mod[s] = (mod[s] + 17) % V_;
        ts_tensor_write(r.mg->ids, mod, sizeof(int32_t) * T_);
        ts_graph_compute(r.mg->graph);
        double *got = read_f64(r.mg->logits);
        int leaked = 0, changed_at_s = 0;
        for (int t = 0; t < T_; t++)
            for (int v = 0; v < V_; v++) {
                if (t < s) leaked += got[t * V_ + v] != base[t * V_ + v];
                if (t == s) changed_at_s += got[t * V_ + v] != base[t * V_ + v];
            }
        CHECK(leaked == 0, "changing token %d changed %d logits at earlier positions", s, leaked);
        CHECK(changed_at_s > 0, "changing token %d did not change its own logits", s);
        free(got);
        free(mod);
    }
    free(base);
    run_free(&r);
    free(ids);
}

/* Document masking: with a second document starting at s, logits at positions >= s do not
 * change when tokens of the first document change (window keys via the attention's key_start,
 * compressed blocks via the block tables); without the mask they do. */
static void test_doc_mask(ts_model_weights *w64) {
    int32_t *ids;
    run r;
    if (!forward_fixture(w64, &r, &ids)) return;
    const int s = 19;
    int32_t starts[T_], mod[T_];
    for (int t = 0; t < T_; t++) starts[t] = t < s ? 0 : s;
    memcpy(mod, ids, sizeof mod);
    for (int t = 0; t < s; t++) mod[t] = (mod[t] + 5) % V_;
    double *outs[2][2];
    for (int masked = 0; masked < 2; masked++)
        for (int changed = 0; changed < 2; changed++) {
            CHECK_OK(ts_model_graph_set_doc_start(r.mg, masked ? starts : NULL), r.mg->graph);
            ts_tensor_write(r.mg->ids, changed ? mod : ids, sizeof mod);
            ts_graph_compute(r.mg->graph);
            outs[masked][changed] = read_f64(r.mg->logits);
        }
    int leaked_masked = 0, leaked_plain = 0;
    for (int t = s; t < T_; t++)
        for (int v = 0; v < V_; v++) {
            leaked_masked += outs[1][0][t * V_ + v] != outs[1][1][t * V_ + v];
            leaked_plain += outs[0][0][t * V_ + v] != outs[0][1][t * V_ + v];
        }
    CHECK(leaked_masked == 0, "document mask: %d logits of the second document depend on the first", leaked_masked);
    CHECK(leaked_plain > 0, "without the mask the second document should see the first");
    printf("  document mask: the second document (from position %d) is independent of the first\n", s);
    for (int i = 0; i < 4; i++) free(outs[i / 2][i % 2]);
    run_free(&r);
    free(ids);
}

/* ---------------------------------------------------------------- 5. finite differences */

/* The graph's balance loss against the host formula (ts_moe_seq_balance_loss) on the same
 * router scores and selections. */
static void check_balance_loss(const ts_model_graph *mg, const ts_v4_config *c, int64_t T, double alpha) {
    double want = 0, got = 0;
    int64_t E = c->n_routed_experts, K = c->num_experts_per_tok;
    int layers = 0;
    for (int64_t l = 0; l < ts_v4_n_layer_slots(c); l++) {
        if (!mg->route_scores[l]) continue;
        double *s64 = read_f64(mg->route_scores[l]);
        float *s = malloc((size_t)(T * E) * sizeof *s);
        for (int64_t i = 0; i < T * E; i++) s[i] = (float)s64[i];
        int32_t *idx = malloc((size_t)(T * K) * sizeof *idx);
        ts_tensor_read(mg->route_idx[l], idx, (size_t)(T * K) * sizeof *idx);
        double lb = 0;
        CHECK(ts_moe_seq_balance_loss(s, idx, T, (int)E, (int)K, alpha, &lb, NULL) == TS_OK, "host balance loss");
        want += lb;
        layers++;
        free(s64);
        free(s);
        free(idx);
    }
    ts_tensor_read(mg->balance_loss, &got, sizeof got);
    CHECK(layers >= 2 && fabs(got - want) <= 1e-6 * fabs(want), "balance loss %.9g vs host %.9g (%d layers)", got,
          want, layers);
    printf("  balance loss over %d learned-routing layers: %.9f (host formula %.9f)\n", layers, got, want);
}

/* d loss / d w[i][j] by central differences against the graph's gradient, for `count` elements
 * of every weight whose name contains one of the patterns. */
static void fd_check_opts(ts_model_weights *w, const char *const *patterns, int n_patterns, ts_model_graph_options o);

static void fd_check(ts_model_weights *w, const char *const *patterns, int n_patterns, bool mtp) {
    ts_model_graph_options o = {.batch = 1, .seq = 20, .loss = true, .backward = true, .mtp = mtp,
                                .balance_alpha = mtp ? 0.5 : 0};
    fd_check_opts(w, patterns, n_patterns, o);
}

static void fd_check_opts(ts_model_weights *w, const char *const *patterns, int n_patterns, ts_model_graph_options o) {
    bool mtp = o.mtp;
    const ts_v4_config *c = ts_model_weights_config(w);
    int64_t T = 20;
    int32_t ids[20], mtp_ids[20], tg[20], mtp_tg[20];
    for (int t = 0; t < T; t++) ids[t] = (int32_t)((t * 7 + 3) % c->vocab_size);
    for (int t = 0; t < T; t++) {
        tg[t] = t + 1 < T ? ids[t + 1] : -1;
        mtp_ids[t] = t + 1 < T ? ids[t + 1] : 0;
        mtp_tg[t] = t + 2 < T ? ids[t + 2] : -1;
    }
    char err[512] = "";
    ts_model_graph *mg = NULL;
    ts_status s = ts_model_graph_build(w, &o, &mg, err, sizeof err);
    CHECK(s == TS_OK, "fd build: %s", err);
    if (s != TS_OK) return;
    ts_backend *be;
    ts_backend_cpu_ref_new(2, &be);
    CHECK_OK(ts_model_graph_alloc(mg, be, NULL, err, sizeof err), mg->graph);
    ts_tensor_write(mg->ids, ids, sizeof ids);
    ts_tensor_write(mg->targets, tg, sizeof tg);
    if (mtp) {
        ts_tensor_write(mg->mtp_ids, mtp_ids, sizeof mtp_ids);
        ts_tensor_write(mg->mtp_targets, mtp_tg, sizeof mtp_tg);
    }
    ts_graph_compute(mg->graph);
    if (o.balance_alpha > 0) check_balance_loss(mg, c, T, o.balance_alpha);
    int checked = 0, bad = 0;
    double worst = 0;
    for (int i = 0; i < ts_model_weights_count(w); i++) {
        const ts_model_tensor *t = ts_model_weights_info(w, i);
        bool want = false;
        for (int p = 0; p < n_patterns; p++) want = want || strstr(t->name, patterns[p]);
        const double *gd = ts_model_graph_grad_data(mg, i);
        if (!want || !gd) continue;
        double *wd = ts_model_weights_data(w, i);
        int64_t numel = ts_model_tensor_numel(t);
        double *gcopy = malloc((size_t)numel * sizeof *gcopy);
        memcpy(gcopy, gd, (size_t)numel * sizeof *gcopy);
        for (int k = 0; k < 3; k++) {
            int64_t j = (int64_t)((k * 2654435761u + (unsigned)i * 40503u) % (uint64_t)numel);
            double keep = wd[j], h = 1e-6, lp, lm;
            wd[j] = keep + h;
            ts_graph_compute(mg->graph);
            ts_tensor_read(mg->loss, &lp, sizeof lp);
            wd[j] = keep - h;
            ts_graph_compute(mg->graph);
            ts_tensor_read(mg->loss, &lm, sizeof lm);
            wd[j] = keep;
            double num = (lp - lm) / (2 * h), ana = gcopy[j];
            double e = fabs(num - ana) / fmax(fmax(fabs(num), fabs(ana)), 1e-3);
            worst = fmax(worst, e);
            if (e > 1e-5) {
                bad++;
                fprintf(stderr, "  fd %s[%lld]: analytic %.9e numeric %.9e\n", t->name, (long long)j, ana, num);
            }
            checked++;
        }
        ts_graph_compute(mg->graph); /* back to the unperturbed gradients for the next tensor */
        free(gcopy);
    }
    CHECK(bad == 0, "%d of %d finite-difference checks failed", bad, checked);
    CHECK(checked >= 3 * n_patterns, "only %d elements checked", checked);
    printf("  finite differences%s: %d elements, worst relative error %.2e\n",
           mtp ? " (with MTP)" : o.indexer_loss ? " (indexer KL loss)" : "", checked, worst);
    if (o.indexer_loss) {
        double kl;
        ts_tensor_read(mg->indexer_loss, &kl, sizeof kl);
        CHECK(kl > 0 && isfinite(kl), "indexer KL %g", kl);
    }
    ts_model_graph_free(mg);
    ts_backend_free(be);
}

static void test_finite_differences(ts_model_weights *w64) {
    static const char *const kinds[] = {"embed.weight", "layers.1.hc_attn_fn", "layers.2.hc_ffn_base",
                                        "layers.1.attn.attn_sink", "layers.2.attn.compressor.ape",
                                        "layers.3.attn.compressor.wkv", "layers.0.attn.wo_a", "layers.1.attn.wq_b",
                                        "layers.2.ffn.experts.1.w1", "layers.0.ffn.gate.weight", "hc_head_scale",
                                        "head.weight"};
    fd_check(w64, kinds, (int)(sizeof kinds / sizeof *kinds), false);

    /* MTP: a small random V4 with one MTP block (no reference implementation exists, see
     * docs/v4-reference-notes.md §1) - its gradient is checked by finite differences. */
    ts_v4_config c = *ts_model_weights_config(w64);
    c.num_nextn_predict_layers = 1;
    c.compress_ratios[c.num_hidden_layers] = 0;
    char err[256];
    ts_model_weights *wm = NULL;
    ts_status s = ts_model_weights_new(&c, TS_F64, &wm, err, sizeof err);
    CHECK(s == TS_OK, "mtp weights: %s", err);
    if (s != TS_OK) return;
    ts_model_weights_init(wm, 7, err, sizeof err);
    /* bigger than the init's 0.02 so the MTP path carries signal */
    for (int i = 0; i < ts_model_weights_count(wm); i++) {
        const ts_model_tensor *t = ts_model_weights_info(wm, i);
        if (ts_model_weights_mem_dtype(wm, i) != TS_F64 || t->ndim != 2) continue;
        double *d = ts_model_weights_data(wm, i);
        for (int64_t j = 0; j < ts_model_tensor_numel(t); j++) d[j] = d[j] * 10;
    }
    static const char *const mtp_kinds[] = {"mtp.0.e_proj", "mtp.0.h_proj", "mtp.0.enorm", "mtp.0.hnorm",
                                            "mtp.0.hc_head_fn", "mtp.0.attn.wkv", "mtp.0.ffn.experts.2.w3",
                                            "embed.weight", "layers.2.ffn.gate.weight", "mtp.0.ffn.gate.weight"};
    fd_check(wm, mtp_kinds, (int)(sizeof mtp_kinds / sizeof *mtp_kinds), true);
    ts_model_weights_free(wm);
}

/* The indexer KL loss (dense warm-up and sparse stages): finite differences on the indexer's
 * weights, and detachment - every other gradient is exactly what the model has without it. */
static void test_indexer_loss(ts_model_weights *w64) {
    static const char *const kinds[] = {"layers.1.attn.indexer.wq_b", "layers.1.attn.indexer.weights_proj",
                                        "layers.3.attn.indexer.compressor.wkv", "layers.3.attn.indexer.compressor.ape",
                                        "layers.1.attn.indexer.compressor.norm"};
    for (int sparse = 0; sparse < 2; sparse++) {
        ts_model_graph_options o = {.batch = 1, .seq = 20, .loss = true, .backward = true, .indexer_loss = true,
                                    .dense_csa = !sparse};
        fd_check_opts(w64, kinds, (int)(sizeof kinds / sizeof *kinds), o);
    }
    int64_t n;
    int32_t *ids = fixture_ids("ids", &n);
    for (int sparse = 0; sparse < 2; sparse++) {
        ts_model_graph *g2[2] = {NULL, NULL};
        ts_backend *be;
        ts_backend_cpu_ref_new(2, &be);
        char err[256];
        int32_t tg[T_];
        for (int t = 0; t < T_; t++) tg[t] = t + 1 < T_ ? ids[t + 1] : -1;
        for (int with = 0; with < 2; with++) {
            ts_model_graph_options o = {.batch = 1, .seq = T_, .loss = true, .backward = true,
                                        .indexer_loss = with, .dense_csa = !sparse};
            ts_model_graph_build(w64, &o, &g2[with], err, sizeof err);
            ts_model_graph_alloc(g2[with], be, NULL, err, sizeof err);
            ts_tensor_write(g2[with]->ids, ids, sizeof tg);
            ts_tensor_write(g2[with]->targets, tg, sizeof tg);
            ts_graph_compute(g2[with]->graph);
        }
        int differ = 0, indexer_grads = 0, indexer_tensors = 0;
        for (int i = 0; i < ts_model_weights_count(w64); i++) {
            const ts_model_tensor *t = ts_model_weights_info(w64, i);
            const double *a = ts_model_graph_grad_data(g2[0], i), *b = ts_model_graph_grad_data(g2[1], i);
            if (strstr(t->name, "indexer")) {
                indexer_tensors++;
                indexer_grads += b != NULL;
                continue;
            }
            if (!a || !b) continue;
            differ += memcmp(a, b, (size_t)ts_model_tensor_numel(t) * sizeof(double)) != 0;
        }
        CHECK(differ == 0, "%s stage: the indexer loss changed %d non-indexer gradients", sparse ? "sparse" : "dense",
              differ);
        CHECK(indexer_tensors == 12 && indexer_grads == indexer_tensors, "%s stage: %d of %d indexer tensors got a gradient",
              sparse ? "sparse" : "dense", indexer_grads, indexer_tensors);
        ts_model_graph_free(g2[0]);
        ts_model_graph_free(g2[1]);
        ts_backend_free(be);
    }
    printf("  indexer KL loss: detached (every other gradient unchanged) in the dense and sparse stages\n");
    free(ids);
}

/* ---------------------------------------------------------------- 6. save / load, errors */

static void test_save_load(ts_model_weights *w64) {
    char dir[] = "/tmp/ts_model_XXXXXX";
    CHECK(mkdtemp(dir) != NULL, "mkdtemp");
    char out[1100], err[512] = "";
    snprintf(out, sizeof out, "%s/ck", dir);
    ts_model_weights *wf = NULL;
    CHECK_OK(ts_model_load(fixture_dir, TS_F32, &wf, err, sizeof err), NULL);
    ts_status s = ts_model_save(wf, out, TS_F32, false, err, sizeof err);
    CHECK(s == TS_OK, "save: %s", err);
    ts_model_weights *back = NULL;
    s = ts_model_load(out, TS_F32, &back, err, sizeof err);
    CHECK(s == TS_OK, "reload: %s", err);
    if (back) {
        bool same = ts_model_weights_count(back) == ts_model_weights_count(wf);
        for (int i = 0; same && i < ts_model_weights_count(wf); i++) {
            const ts_model_tensor *t = ts_model_weights_info(wf, i);
            size_t bytes = ts_dtype_bytes(ts_model_weights_mem_dtype(wf, i), ts_model_tensor_numel(t));
            same = memcmp(ts_model_weights_data(wf, i), ts_model_weights_data(back, i), bytes) == 0;
        }
        CHECK(same, "saved and reloaded weights differ");
    }
    ts_model_weights_free(back);

    /* a second save into the non-empty dir is refused without force */
    s = ts_model_save(wf, out, TS_F32, false, err, sizeof err);
    CHECK(s == TS_ERR_STATE, "save into a non-empty dir: %s", ts_status_name(s));

    /* truncated safetensors file */
    char st[1200];
    snprintf(st, sizeof st, "%s/model.safetensors", out);
    struct stat sb;
    stat(st, &sb);
    CHECK(truncate(st, sb.st_size - 100) == 0, "truncate");
    back = NULL;
    s = ts_model_load(out, TS_F32, &back, err, sizeof err);
    CHECK(s != TS_OK && back == NULL, "truncated checkpoint loaded");
    printf("  truncated file: %s\n", err);

    /* a config whose shapes do not match the tensors: the error names the tensor */
    ts_v4_config c = *ts_model_weights_config(wf);
    c.q_lora_rank = 20;
    ts_model_weights *other = NULL;
    ts_model_weights_new(&c, TS_F32, &other, err, sizeof err);
    s = ts_model_save(other, out, TS_F32, true, err, sizeof err);
    char cfgpath[1200];
    snprintf(cfgpath, sizeof cfgpath, "%s/config.json", out);
    ts_v4_config_save(ts_model_weights_config(wf), cfgpath, err, sizeof err); /* config says 24 */
    s = ts_model_load(out, TS_F32, &back, err, sizeof err);
    CHECK(s == TS_ERR_SHAPE && strstr(err, "wq_a"), "shape mismatch: %s %s", ts_status_name(s), err);
    printf("  wrong shape: %s\n", err);
    ts_model_weights_free(other);

    /* a missing tensor: a checkpoint of a config without MTP read with one */
    c = *ts_model_weights_config(wf);
    ts_model_save(wf, out, TS_F32, true, err, sizeof err);
    c.num_nextn_predict_layers = 1;
    c.compress_ratios[c.num_hidden_layers] = 0;
    ts_v4_config_save(&c, cfgpath, err, sizeof err);
    s = ts_model_load(out, TS_F32, &back, err, sizeof err);
    CHECK(s == TS_ERR_FORMAT && strstr(err, "mtp.0."), "missing tensor: %s %s", ts_status_name(s), err);
    printf("  missing tensor: %s\n", err);
    ts_model_weights_free(wf);
    char cmd[1200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    CHECK(system(cmd) == 0, "cleanup");
}

int main(void) {
    if (!fixture_open("v4")) return 1;
    char err[512] = "";
    ts_model_weights *w64 = NULL;
    ts_status s = ts_model_load(fixture_dir, TS_F64, &w64, err, sizeof err);
    CHECK(s == TS_OK, "load f64: %s", err);
    if (s == TS_OK) {
        test_f64_parity(w64);
        test_causality(w64);
        test_doc_mask(w64);
        test_finite_differences(w64);
        test_indexer_loss(w64);
    }
    test_f32_parity();
    test_save_load(w64);
    ts_model_weights_free(w64);
    ts_st_file_close(expected);
    return check_summary("model");
}
