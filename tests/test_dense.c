/* test_dense.c - the dense baseline (src/model/dense_graph.c) against transformers'
 * LlamaForCausalLM: the tiny random model of tests/fixtures/dense (made by
 * tools/make_dense_fixture.py, which converts Llama's split-halves RoPE layout to our
 * interleaved one by permuting q/k rows), loaded through the real checkpoint loader.
 *
 * 1. f64 build vs Llama's f64 run: logits, loss and the gradient of every parameter (all stored
 *    in f64 by the fixture, so the bars are tight).
 * 2. f32 build on the optimized backend vs the f64 reference rounded to f32: logits within 1e-4,
 *    identical argmax, gradients; and a batch of two sequences (f64).
 * 3. Causality: changing token s leaves every logit before s bit-identical and changes s's own.
 * 4. Finite differences (f64) of the loss for sampled elements of every kind of weight.
 * 5. Tied embeddings: the tied model equals the untied one whose head is a copy of the
 *    embedding, and the tied gradient is the sum of the untied embedding and head gradients.
 * 6. Save -> load round trip of a dense checkpoint gives identical weights. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "model_fixture.h"
#include "tessera/backend.h"
#include "tessera/io.h"
#include "tessera/model.h"

#define T_ 24
#define V_ 64


static double read_loss(const ts_model_graph *mg) {
    double *v = read_f64(mg->loss), l = v[0];
    free(v);
    return l;
}

/* A built, allocated and computed graph (loss; backward when asked) for ids [B, T]. */
typedef struct {
    ts_model_graph *mg;
    ts_backend *be;
} run;

static void run_free(run *r) {
    ts_model_graph_free(r->mg);
    ts_backend_free(r->be);
    memset(r, 0, sizeof *r);
}

static bool run_model(run *r, const ts_model_weights *w, bool optimized, const int32_t *ids, int64_t B, bool backward) {
    char err[512] = "";
    memset(r, 0, sizeof *r);
    if (optimized) ts_backend_cpu_new(2, &r->be);
    else ts_backend_cpu_ref_new(2, &r->be);
    ts_model_graph_options o = {.batch = B, .seq = T_, .loss = true, .backward = backward, .keep_logits = true};
    ts_status s = ts_model_graph_build(w, &o, &r->mg, err, sizeof err);
    CHECK(s == TS_OK, "build: %s", err);
    if (s == TS_OK) s = ts_model_graph_alloc(r->mg, r->be, NULL, err, sizeof err);
    CHECK(s == TS_OK, "alloc: %s", err);
    if (s != TS_OK) return false;
    int32_t tg[2 * T_];
    for (int64_t b = 0; b < B; b++)
        for (int t = 0; t < T_; t++) tg[b * T_ + t] = t + 1 < T_ ? ids[b * T_ + t + 1] : -1;
    CHECK_OK(ts_tensor_write(r->mg->ids, ids, (size_t)(B * T_) * 4), r->mg->graph);
    CHECK_OK(ts_tensor_write(r->mg->targets, tg, (size_t)(B * T_) * 4), r->mg->graph);
    s = ts_graph_compute(r->mg->graph);
    CHECK(s == TS_OK, "compute: %s", ts_graph_error(r->mg->graph));
    return s == TS_OK;
}

/* Every weight's gradient vs grad.<name>: worst error relative to the tensor's largest value. */
static double compare_grads(const run *r, const ts_model_weights *w, double rel, int *compared) {
    double worst = 0;
    *compared = 0;
    for (int i = 0; i < ts_model_weights_count(w); i++) {
        const ts_model_tensor *t = ts_model_weights_info(w, i);
        char key[128];
        snprintf(key, sizeof key, "grad.%s", t->name);
        int64_t n = 0;
        double *want = expect(key, &n);
        const void *got = ts_model_graph_grad_data(r->mg, i);
        CHECK(want && got && n == ts_model_tensor_numel(t), "gradient of %s (fixture %d, graph %d)", t->name, !!want, !!got);
        if (!want || !got || n != ts_model_tensor_numel(t)) {
            free(want);
            continue;
        }
        double scale = 0, err = 0;
        for (int64_t j = 0; j < n; j++) scale = fmax(scale, fabs(want[j]));
        bool f64 = ts_model_weights_dtype(w) == TS_F64;
        for (int64_t j = 0; j < n; j++) {
            double g = f64 ? ((const double *)got)[j] : ((const float *)got)[j];
            err = fmax(err, fabs(g - want[j]) / fmax(scale, 1e-30));
        }
        CHECK(err <= rel, "%s: gradient error %.2e relative to max %.2e (bar %.0e)", t->name, err, scale, rel);
        worst = fmax(worst, err);
        (*compared)++;
        free(want);
    }
    return worst;
}

/* ---------------------------------------------------------------- 1. f64 parity */

static void test_f64_parity(const ts_model_weights *w64) {
    int64_t n;
    int32_t *ids = fixture_ids("ids", &n);
    run r;
    if (run_model(&r, w64, false, ids, 1, true)) {
        double *want = expect("logits_f64", NULL), *got = read_f64(r.mg->logits);
        double d = max_abs_diff(got, want, T_ * V_);
        CHECK(d < 1e-12, "f64 logits max abs error %.3e", d);
        double *wl = expect("loss_f64", NULL), loss = read_loss(r.mg);
        CHECK(fabs(loss - wl[0]) < 1e-13, "f64 loss %.15f vs %.15f", loss, wl[0]);
        printf("  f64 logits vs Llama (f64): max abs error %.2e; loss %.12f (Llama %.12f)\n", d, loss, wl[0]);
        int compared;
        double worst = compare_grads(&r, w64, 1e-11, &compared);
        CHECK(compared == ts_model_weights_count(w64), "compared %d of %d gradients", compared, ts_model_weights_count(w64));
        printf("  f64 gradients: %d tensors, worst error %.2e relative to each tensor's max\n", compared, worst);
        free(wl);
        free(want);
        free(got);
    }
    run_free(&r);
    free(ids);

    ids = fixture_ids("ids_b2", &n);
    if (run_model(&r, w64, false, ids, 2, false)) {
        double *want = expect("logits_b2_f64", NULL), *got = read_f64(r.mg->logits);
        double d = max_abs_diff(got, want, 2 * T_ * V_);
        double *wl = expect("loss_b2_f64", NULL), loss = read_loss(r.mg);
        CHECK(d < 1e-12 && fabs(loss - wl[0]) < 1e-13, "batch 2: logits error %.3e, loss %.15f vs %.15f", d, loss, wl[0]);
        printf("  batch 2 (f64): logits max abs error %.2e, loss %.12f (Llama %.12f)\n", d, loss, wl[0]);
        free(wl);
        free(want);
        free(got);
    }
    run_free(&r);
    free(ids);
}

/* ---------------------------------------------------------------- 2. f32 parity */

static void test_f32_parity(void) {
    char err[512] = "";
    ts_model_weights *w = NULL;
    ts_status s = ts_model_load(fixture_dir, TS_F32, &w, err, sizeof err);
    CHECK(s == TS_OK, "load f32: %s", err);
    if (s != TS_OK) return;
    int64_t n;
    int32_t *ids = fixture_ids("ids", &n);
    run r;
    if (run_model(&r, w, true, ids, 1, true)) {
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
        double *wl = expect("loss_f64", NULL), loss = read_loss(r.mg);
        CHECK(fabs(loss - wl[0]) < 1e-5, "f32 loss %.7f vs %.7f", loss, wl[0]);
        printf("  f32 logits (optimized cpu backend) vs Llama: max abs error %.2e, argmax identical at %d/%d, loss %.7f\n",
               d, T_ - argmax_bad, T_, loss);
        int compared;
        double worst = compare_grads(&r, w, 1e-4, &compared);
        printf("  f32 gradients: %d tensors, worst error %.2e relative to each tensor's max\n", compared, worst);
        free(wl);
        free(want);
        free(got);
    }
    run_free(&r);
    free(ids);
    ts_model_weights_free(w);
}

/* ---------------------------------------------------------------- 3. causality */

static void test_causality(const ts_model_weights *w64) {
    int64_t n;
    int32_t *ids = fixture_ids("ids", &n);
    run r;
    if (run_model(&r, w64, false, ids, 1, false)) {
        double *base = read_f64(r.mg->logits);
        const int changes[] = {0, 1, 5, 11, 12, 22, 23};
        for (size_t k = 0; k < sizeof changes / sizeof *changes; k++) {
            int s = changes[k];
            int32_t mod[T_];
            memcpy(mod, ids, sizeof mod);
            mod[s] = (mod[s] + 17) % V_;
            ts_tensor_write(r.mg->ids, mod, sizeof mod);
            ts_graph_compute(r.mg->graph);
            double *got = read_f64(r.mg->logits);
            int leaked = 0, changed_at_s = 0;
            for (int t = 0; t <= s; t++)
                for (int v = 0; v < V_; v++) {
                    bool differs = got[t * V_ + v] != base[t * V_ + v];
                    if (t < s) leaked += differs;
                    else changed_at_s += differs;
                }
            CHECK(leaked == 0, "changing token %d changed %d logits at earlier positions", s, leaked);
            CHECK(changed_at_s > 0, "changing token %d did not change its own logits", s);
            free(got);
        }
        free(base);
    }
    run_free(&r);
    free(ids);
}

/* ---------------------------------------------------------------- 4. finite differences */

static void test_finite_differences(ts_model_weights *w64) {
    int64_t n;
    int32_t *ids = fixture_ids("ids", &n);
    run r;
    if (!run_model(&r, w64, false, ids, 1, true)) {
        run_free(&r);
        free(ids);
        return;
    }
    /* the analytic gradients at the unperturbed weights, before any probe recomputes the graph */
    int nw = ts_model_weights_count(w64);
    double **grads = calloc((size_t)nw, sizeof *grads);
    for (int i = 0; i < nw; i++) {
        size_t bytes = (size_t)ts_model_tensor_numel(ts_model_weights_info(w64, i)) * sizeof(double);
        grads[i] = malloc(bytes);
        memcpy(grads[i], ts_model_graph_grad_data(r.mg, i), bytes);
    }
    int checked = 0, bad = 0;
    double worst = 0;
    for (int i = 0; i < nw; i++) {
        const ts_model_tensor *t = ts_model_weights_info(w64, i);
        int64_t numel = ts_model_tensor_numel(t);
        double *wd = ts_model_weights_data(w64, i), *grad = grads[i];
        for (int k = 0; k < 2; k++) {
            int64_t j = (int64_t)((k * 2654435761u + (unsigned)i * 40503u) % (uint64_t)numel);
            double keep = wd[j], h = 1e-5;
            wd[j] = keep + h;
            ts_graph_compute(r.mg->graph);
            double lp = read_loss(r.mg);
            wd[j] = keep - h;
            ts_graph_compute(r.mg->graph);
            double lm = read_loss(r.mg);
            wd[j] = keep;
            double num = (lp - lm) / (2 * h);
            double e = fabs(num - grad[j]) / fmax(fmax(fabs(num), fabs(grad[j])), 1e-3);
            worst = fmax(worst, e);
            if (e > 1e-6) {
                bad++;
                fprintf(stderr, "  fd %s[%lld]: analytic %.9e numeric %.9e\n", t->name, (long long)j, grad[j], num);
            }
            checked++;
        }
        free(grad);
    }
    free(grads);
    CHECK(bad == 0, "%d of %d finite-difference checks failed", bad, checked);
    printf("  finite differences: %d elements of %d tensors, worst relative error %.2e\n", checked,
           ts_model_weights_count(w64), worst);
    run_free(&r);
    free(ids);
}

/* ---------------------------------------------------------------- 5. tied embeddings */

static void copy_weights(ts_model_weights *dst, const ts_model_weights *src) {
    for (int i = 0; i < ts_model_weights_count(dst); i++) {
        const ts_model_tensor *t = ts_model_weights_info(dst, i);
        int j = ts_model_weights_find(src, t->name);
        memcpy(ts_model_weights_data(dst, i), ts_model_weights_data(src, j), (size_t)ts_model_tensor_numel(t) * sizeof(double));
    }
}

static void test_tied(ts_model_weights *w64) {
    ts_v4_config c = *ts_model_weights_config(w64);
    c.tie_word_embeddings = true;
    char err[256];
    ts_model_weights *tied = NULL, *untied = NULL;
    CHECK(ts_model_weights_new(&c, TS_F64, &tied, err, sizeof err) == TS_OK, "tied weights: %s", err);
    CHECK(ts_model_weights_new(ts_model_weights_config(w64), TS_F64, &untied, err, sizeof err) == TS_OK, "untied: %s", err);
    if (!tied || !untied) return;
    CHECK(ts_model_weights_find(tied, "head.weight") < 0, "a tied model has no head.weight");
    copy_weights(tied, w64);
    copy_weights(untied, w64);
    int embed = ts_model_weights_find(untied, "embed.weight"), head = ts_model_weights_find(untied, "head.weight");
    memcpy(ts_model_weights_data(untied, head), ts_model_weights_data(untied, embed),
           (size_t)ts_model_tensor_numel(ts_model_weights_info(untied, embed)) * sizeof(double));
    int64_t n;
    int32_t *ids = fixture_ids("ids", &n);
    run rt, ru;
    if (run_model(&rt, tied, false, ids, 1, true) && run_model(&ru, untied, false, ids, 1, true)) {
        double *lt = read_f64(rt.mg->logits), *lu = read_f64(ru.mg->logits);
        CHECK(max_abs_diff(lt, lu, T_ * V_) == 0, "tied and untied-with-copied-head logits differ");
        int64_t numel = ts_model_tensor_numel(ts_model_weights_info(untied, embed));
        const double *gt = ts_model_graph_grad_data(rt.mg, ts_model_weights_find(tied, "embed.weight"));
        const double *ge = ts_model_graph_grad_data(ru.mg, embed), *gh = ts_model_graph_grad_data(ru.mg, head);
        double d = 0;
        for (int64_t j = 0; gt && ge && gh && j < numel; j++) d = fmax(d, fabs(gt[j] - (ge[j] + gh[j])));
        CHECK(gt && ge && gh && d < 1e-14, "tied embedding gradient differs from embed + head gradients by %.2e", d);
        printf("  tied embeddings: logits identical, gradient = embed + head gradients (max diff %.1e)\n", d);
        free(lt);
        free(lu);
    }
    run_free(&rt);
    run_free(&ru);
    free(ids);
    ts_model_weights_free(tied);
    ts_model_weights_free(untied);
}

/* ---------------------------------------------------------------- 6. save / load */

static void test_save_load(void) {
    char dir[] = "/tmp/ts_dense_XXXXXX", err[512] = "";
    CHECK(mkdtemp(dir) != NULL, "mkdtemp");
    ts_model_weights *w = NULL, *back = NULL;
    CHECK(ts_model_load(fixture_dir, TS_F32, &w, err, sizeof err) == TS_OK, "load: %s", err);
    ts_status s = w ? ts_model_save(w, dir, TS_F32, true, err, sizeof err) : TS_ERR_STATE;
    CHECK(s == TS_OK, "save: %s", err);
    if (s == TS_OK) s = ts_model_load(dir, TS_F32, &back, err, sizeof err);
    CHECK(s == TS_OK, "reload: %s", err);
    if (back) {
        bool same = ts_v4_config_equal(ts_model_weights_config(w), ts_model_weights_config(back)) &&
                    ts_model_weights_count(back) == ts_model_weights_count(w);
        for (int i = 0; same && i < ts_model_weights_count(w); i++)
            same = memcmp(ts_model_weights_data(w, i), ts_model_weights_data(back, i),
                          (size_t)ts_model_tensor_numel(ts_model_weights_info(w, i)) * sizeof(float)) == 0;
        CHECK(same, "saved and reloaded dense weights differ");
    }
    ts_model_weights_free(back);
    ts_model_weights_free(w);
    char cmd[1200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    CHECK(system(cmd) == 0, "cleanup");
}

int main(void) {
    if (!fixture_open("dense")) return 1;
    char err[512] = "";
    ts_model_weights *w64 = NULL;
    ts_status s = ts_model_load(fixture_dir, TS_F64, &w64, err, sizeof err);
    CHECK(s == TS_OK, "load f64: %s", err);
    if (s == TS_OK) {
        test_f64_parity(w64);
        test_causality(w64);
        test_finite_differences(w64);
        test_tied(w64);
    }
    test_f32_parity();
    test_save_load();
    ts_model_weights_free(w64);
    ts_st_file_close(expected);
    return check_summary("dense");
}
