/* test_speculative.c - the MTP block as a draft (ts_model_decoder_mtp) and speculative decoding
 * (ts_speculator, speculative.c) on random V4 models of the reference fixture's shape plus one
 * MTP block (f64, reference backend).
 * 1. Draft logits: fed by steps, chunks and rewinds, with the draft asked for after every piece
 *    or only now and then (the block then catches up several positions in one pass), the MTP
 *    logits at every asked position equal the training graph's mtp_logits (opts.mtp, mtp_ids =
 *    the next tokens) within 1e-6, for MTP layers of CSA (m = 4), HCA (m = 8) and window only,
 *    over 100 positions (24 CSA / 12 HCA block completions). A sequence more than
 *    TS_MODEL_MTP_MAX_LAG ahead of the block, an empty slot and a dense model are refused.
 * 2. Greedy speculative decoding gives plain greedy decoding's tokens, for prompts of 1..100
 *    tokens (100: a prefill in pieces): on the random model (drafts nearly always rejected) and
 *    on a "copy" model built so that the draft is right unless attention in the last layer
 *    disagrees (accepted and rejected drafts both occur); and drafting only when the block is
 *    confident (ts_speculator_set_min_prob: fewer drafts, the same tokens).
 * 3. Sampling: the same seed gives the same tokens; over 3000 seeded rounds from one state, the
 *    token after `next` follows the target distribution p (chi-square), while always accepting
 *    the draft (distribution q) would fail the same test by a wide margin; the acceptance rate
 *    is sum_v min(p, q), as the theory says. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "model_fixture.h"
#include "tessera/backend.h"
#include "tessera/infer.h"
#include "tessera/model.h"

enum { V = 64 };

/* The fixture's config with one MTP block of compress ratio `ratio`, random weights (2-D ones
 * scaled up so that the indexer's scores and the MTP path carry signal). */
static ts_model_weights *mtp_model(int32_t ratio, uint64_t seed) {
    char err[512] = "";
    ts_model_weights *ref = NULL, *w = NULL;
    ts_status s = ts_model_load(test_fixture_path("v4", "tiny-ref"), TS_F64, &ref, err, sizeof err);
    CHECK(s == TS_OK, "load: %s", err);
    if (s != TS_OK) return NULL;
    ts_v4_config c = *ts_model_weights_config(ref);
    ts_model_weights_free(ref);
    c.num_nextn_predict_layers = 1;
    c.compress_ratios[c.num_hidden_layers] = ratio;
    s = ts_model_weights_new(&c, TS_F64, &w, err, sizeof err);
    if (s == TS_OK) s = ts_model_weights_init(w, seed, err, sizeof err);
    CHECK(s == TS_OK, "weights: %s", err);
    for (int i = 0; s == TS_OK && i < ts_model_weights_count(w); i++) {
        const ts_model_tensor *t = ts_model_weights_info(w, i);
        if (ts_model_weights_mem_dtype(w, i) != TS_F64 || t->ndim != 2) continue;
        double *d = ts_model_weights_data(w, i);
        for (int64_t j = 0; j < ts_model_tensor_numel(t); j++) d[j] *= 8;
    }
    return w;
}

/* The training graph's MTP logits [T, V]: mtp_ids[t] = ids[t + 1], last_next after the end. */
static double *full_mtp_logits(ts_model_weights *w, ts_backend *be, const int32_t *ids, int64_t T, int32_t last_next) {
    char err[256] = "";
    ts_model_graph *mg = NULL;
    ts_model_graph_options o = {.batch = 1, .seq = T, .mtp = true};
    ts_status s = ts_model_graph_build(w, &o, &mg, err, sizeof err);
    if (s == TS_OK) s = ts_model_graph_alloc(mg, be, NULL, err, sizeof err);
    CHECK(s == TS_OK, "mtp graph: %s", err);
    if (s != TS_OK) return NULL;
    int32_t *next = malloc((size_t)T * sizeof *next);
    for (int64_t t = 0; t < T; t++) next[t] = t + 1 < T ? ids[t + 1] : last_next;
    ts_tensor_write(mg->ids, ids, (size_t)T * sizeof(int32_t));
    ts_tensor_write(mg->mtp_ids, next, (size_t)T * sizeof(int32_t));
    CHECK_OK(ts_graph_compute(mg->graph), mg->graph);
    double *out = read_f64(mg->mtp_logits);
    free(next);
    ts_model_graph_free(mg);
    return out;
}

static double row_diff(const float *a, const double *b) {
    double worst = 0;
    for (int v = 0; v < V; v++) worst = fmax(worst, fabs(a[v] - b[v]));
    return worst;
}

/* Feeds ids[0..T) in pieces (cycling; 1 = a step, more = one extend) and after most pieces asks
 * for the draft after the next token (x after the last), compared with ref [T, V]. Every 4th
 * piece first asks with a wrong token (the second call must redo the position); every 3rd
 * skips the draft when the lag allows (the next call catches up); every 5th then extends by
 * [next, wrong] and truncates the wrong one away, as a rejected draft does. Returns the worst
 * difference and counts the compared positions. */
static double draft_case(ts_model_decoder *dec, const double *ref, const int32_t *ids, int64_t T, int32_t x,
                         const int *pieces, int n_pieces, int *compared) {
    float lg[V], scratch[V];
    double worst = 0;
    int64_t len = 0, covered = 0;
    ts_model_decoder_reset(dec, 0);
    for (int k = 0; len < T; k++) {
        int64_t n = pieces[k % n_pieces] < T - len ? pieces[k % n_pieces] : T - len;
        int slot = 0;
        if (n == 1) CHECK_OK(ts_model_decoder_step(dec, 1, &slot, &ids[len], scratch), NULL);
        else CHECK_OK(ts_model_decoder_extend(dec, 0, &ids[len], n, scratch, 1), NULL);
        len += n;
        int32_t next = len < T ? ids[len] : x;
        if (k % 3 == 2 && len < T && len - covered + pieces[(k + 1) % n_pieces] <= TS_MODEL_MTP_MAX_LAG) continue;
        if (k % 4 == 1) CHECK_OK(ts_model_decoder_mtp(dec, 0, (next + 7) % V, lg), NULL);
        CHECK_OK(ts_model_decoder_mtp(dec, 0, next, lg), NULL);
        covered = len;
        worst = fmax(worst, row_diff(lg, ref + (len - 1) * V));
        (*compared)++;
        if (k % 5 == 4 && len + 2 <= T) {
            int32_t pair[2] = {next, (ids[len + 1] + 1) % V};
            float two[2 * V];
            CHECK_OK(ts_model_decoder_extend(dec, 0, pair, 2, two, 2), NULL);
            CHECK_OK(ts_model_decoder_truncate(dec, 0, len + 1), NULL);
            len++;
        }
    }
    return worst;
}

static void test_draft_logits(ts_backend *be) {
    enum { T = 100 };
    int32_t ids[T];
    for (int i = 0; i < T; i++) ids[i] = (i * 37 + 11) % V;
    static const int p1[] = {1}, p2[] = {5, 3, 16}, p3[] = {1, 13, 2, 33}, p4[] = {64, 1, 7};
    const int *pats[] = {p1, p2, p3, p4}, np[] = {1, 3, 4, 3};
    const int32_t ratios[] = {4, 8, 0};
    for (int r = 0; r < 3; r++) {
        ts_model_weights *w = mtp_model(ratios[r], 5 + (uint64_t)r);
        if (!w) return;
        double *ref = full_mtp_logits(w, be, ids, T, 9);
        char err[256] = "";
        ts_model_decoder *dec = NULL;
        CHECK(ts_model_decoder_new(w, be, 2, T, &dec, err, sizeof err) == TS_OK, "decoder: %s", err);
        double worst = 0;
        int compared = 0;
        for (int k = 0; dec && ref && k < 4; k++) {
            double d = draft_case(dec, ref, ids, T, 9, pats[k], np[k], &compared);
            CHECK(d <= 1e-6, "MTP ratio %d, pattern %d: draft logits differ by %.3e", ratios[r], k, d);
            worst = fmax(worst, d);
        }
        printf("  MTP layer of ratio %d: %d drafts over 4 feeding patterns, max |logit difference| %.2e\n",
               ratios[r], compared, worst);
        if (r == 0 && dec) { /* refusals: too far ahead of the block, an empty slot */
            float lg[V];
            ts_model_decoder_reset(dec, 1);
            CHECK(ts_model_decoder_mtp(dec, 1, 3, lg) == TS_ERR_INVALID_ARG, "empty slot");
            CHECK_OK(ts_model_decoder_extend(dec, 1, ids, TS_MODEL_MTP_MAX_LAG + 1, lg, 1), NULL);
            CHECK(ts_model_decoder_mtp_lag(dec, 1) == TS_MODEL_MTP_MAX_LAG + 1, "lag %lld after %d tokens",
                  (long long)ts_model_decoder_mtp_lag(dec, 1), TS_MODEL_MTP_MAX_LAG + 1);
            CHECK(ts_model_decoder_mtp(dec, 1, 3, lg) == TS_ERR_RANGE, "a lag of %d accepted", TS_MODEL_MTP_MAX_LAG + 1);
            CHECK(ts_model_decoder_mtp(dec, 1, V, lg) == TS_ERR_INVALID_ARG, "token out of range");
            /* the lag the engine reads instead of keeping its own count */
            ts_model_decoder_reset(dec, 1);
            CHECK_OK(ts_model_decoder_extend(dec, 1, ids, 10, lg, 1), NULL);
            CHECK(ts_model_decoder_mtp_lag(dec, 1) == 10, "lag %lld after 10 tokens", (long long)ts_model_decoder_mtp_lag(dec, 1));
            CHECK_OK(ts_model_decoder_mtp(dec, 1, 3, lg), NULL);
            int64_t covered = ts_model_decoder_mtp_lag(dec, 1);
            CHECK_OK(ts_model_decoder_extend(dec, 1, ids + 10, 5, lg, 1), NULL);
            int64_t after = ts_model_decoder_mtp_lag(dec, 1);
            CHECK_OK(ts_model_decoder_truncate(dec, 1, 10), NULL);
            CHECK(covered == 0 && after == 5 && ts_model_decoder_mtp_lag(dec, 1) == 1,
                  "lag after a draft %lld, after 5 more tokens %lld, after rewinding onto the drafted position %lld "
                  "(its entry read the token after it: open again)",
                  (long long)covered, (long long)after, (long long)ts_model_decoder_mtp_lag(dec, 1));
        }
        ts_model_decoder_free(dec);
        free(ref);
        ts_model_weights_free(w);
    }
}

/* n tokens after prompt[0..len) with the sampler (one slot; speculative when sp is given). */
static void generate(ts_model_decoder *dec, ts_speculator *sp, ts_sampler *smp, const ts_sampling_params *sampling,
                     const int32_t *prompt, int64_t len, int n, int32_t *out) {
    float lg[V];
    int slot = 0, got = 0, n_out = 0;
    ts_model_decoder_reset(dec, 0);
    CHECK_OK(ts_sampler_start(smp, sampling, prompt, (size_t)len), NULL);
    CHECK_OK(sp ? ts_speculator_prefill(sp, 0, prompt, len, lg) : ts_model_decoder_extend(dec, 0, prompt, len, lg, 1),
             NULL);
    CHECK_OK(ts_sampler_sample(smp, lg, &out[got++], NULL), NULL);
    while (got < n) {
        int32_t two[2];
        if (sp) CHECK_OK(ts_speculator_step(sp, slot, smp, out[got - 1], two, &n_out), NULL);
        else {
            CHECK_OK(ts_model_decoder_step(dec, 1, &slot, &out[got - 1], lg), NULL);
            CHECK_OK(ts_sampler_sample(smp, lg, &two[0], NULL), NULL);
            n_out = 1;
        }
        if (n_out < 1) return;
        for (int i = 0; i < n_out && got < n; i++) out[got++] = two[i];
    }
}

/* Greedy: speculative (drafting when the block's top probability is >= min_prob) == plain for
 * several prompt lengths; adds up the drafts. */
static void greedy_case(ts_model_weights *w, ts_backend *be, const char *what, float min_prob, int64_t *drafted,
                        int64_t *accepted) {
    enum { NEW = 40, MAXP = 100 };
    int32_t prompt[MAXP], plain[NEW], spec[NEW];
    for (int i = 0; i < MAXP; i++) prompt[i] = (i * 29 + 5) % V;
    char err[256] = "";
    ts_model_decoder *dec = NULL;
    ts_speculator *sp = NULL;
    ts_sampler *smp = NULL;
    CHECK(ts_model_decoder_new(w, be, 1, MAXP + NEW + 1, &dec, err, sizeof err) == TS_OK, "decoder: %s", err);
    CHECK(ts_speculator_new(w, dec, &sp, err, sizeof err) == TS_OK, "speculator: %s", err);
    CHECK_OK(ts_sampler_new(V, &smp), NULL);
    if (!dec || !sp || !smp) return;
    ts_speculator_set_min_prob(sp, min_prob);
    ts_sampling_params greedy = ts_sampling_defaults();
    greedy.temperature = 0;
    const int64_t lens[] = {1, 2, 7, 30, 64, 100};
    for (int k = 0; k < 6; k++) {
        generate(dec, NULL, smp, &greedy, prompt, lens[k], NEW, plain);
        generate(dec, sp, smp, &greedy, prompt, lens[k], NEW, spec);
        int same = 0;
        while (same < NEW && plain[same] == spec[same]) same++;
        CHECK(same == NEW, "%s, prompt of %lld: speculative greedy differs from plain at token %d", what,
              (long long)lens[k], same);
    }
    ts_speculator_stats(sp, drafted, accepted);
    printf("  greedy, %s, drafts from p >= %.1f: 6 prompts of 1..100 tokens x %d tokens identical; %lld drafts, %lld "
           "accepted\n", what, min_prob, NEW, (long long)*drafted, (long long)*accepted);
    ts_sampler_free(smp);
    ts_speculator_free(sp);
    ts_model_decoder_free(dec);
}

/* Whether official name `name` ends with `suffix`. */
static bool ends_with(const char *name, const char *suffix) {
    size_t n = strlen(name), k = strlen(suffix);
    return n >= k && strcmp(name + n - k, suffix) == 0;
}

/* Makes w a model the MTP block predicts well: no sub-layer writes to the residual streams
 * (wo_b and every w2 zero) except the last main layer's attention at `leak` times its weights,
 * so the main model's next token is nearly a function of the current one; the MTP block passes
 * the normalised embedding of the next token through (e_proj = I, h_proj = 0), so it drafts
 * that function of the next token - the token after it, unless the leak changes it. The shared
 * head is scaled up so that the block's confidence varies. */
static void make_copy_model(ts_model_weights *w, double leak) {
    const ts_v4_config *c = ts_model_weights_config(w);
    char last[64];
    snprintf(last, sizeof last, "layers.%lld.attn.wo_b.weight", (long long)c->num_hidden_layers - 1);
    for (int i = 0; i < ts_model_weights_count(w); i++) {
        const ts_model_tensor *t = ts_model_weights_info(w, i);
        double *d = ts_model_weights_data(w, i), f = -1;
        if (strcmp(t->name, last) == 0) f = leak;
        else if (strcmp(t->name, "head.weight") == 0) f = 5; /* sharper: drafts of varied confidence */
        else if (ends_with(t->name, "wo_b.weight") || ends_with(t->name, "w2.weight") ||
                 strcmp(t->name, "mtp.0.h_proj.weight") == 0 || strcmp(t->name, "mtp.0.e_proj.weight") == 0)
            f = 0;
        for (int64_t j = 0; f >= 0 && j < ts_model_tensor_numel(t); j++) d[j] *= f;
        if (strcmp(t->name, "mtp.0.e_proj.weight") == 0)
            for (int64_t j = 0; j < c->hidden_size; j++) d[j * c->hidden_size + j] = 1;
    }
}

static void test_greedy(ts_backend *be) {
    ts_model_weights *w = mtp_model(4, 21);
    if (!w) return;
    int64_t drafted, accepted, all_drafted;
    greedy_case(w, be, "random model", 0, &drafted, &accepted);
    CHECK(drafted > accepted, "the random model's drafts should be rejected now and then");
    make_copy_model(w, 0.5);
    greedy_case(w, be, "copy model", 0, &all_drafted, &accepted);
    CHECK(accepted > all_drafted / 4 && accepted < all_drafted, "copy model: %lld of %lld drafts accepted",
          (long long)accepted, (long long)all_drafted);
    greedy_case(w, be, "copy model", 0.5f, &drafted, &accepted);
    CHECK(drafted > 0 && drafted < all_drafted, "min_prob 0.5: %lld drafts of %lld", (long long)drafted,
          (long long)all_drafted);
    ts_model_weights_free(w);
}

/* Chi-square of counts[V] (n draws) against probabilities p[V]; bins expecting < 5 merged. */
static double chi_square(const int *counts, const float *p, int n, int *df) {
    double chi = 0, rest_e = 0, rest_o = 0;
    *df = -1;
    for (int v = 0; v < V; v++) {
        double e = n * (double)p[v];
        if (e < 5) {
            rest_e += e;
            rest_o += counts[v];
            continue;
        }
        chi += (counts[v] - e) * (counts[v] - e) / e;
        (*df)++;
    }
    if (rest_e > 0) chi += (rest_o - rest_e) * (rest_o - rest_e) / rest_e, (*df)++;
    return chi;
}

static void test_sampling(ts_backend *be) {
    enum { LEN = 10, N = 3000, NEW = 30 };
    ts_model_weights *w = mtp_model(4, 33);
    if (!w) return;
    int32_t prompt[LEN], next = 17, a[NEW], b[NEW];
    for (int i = 0; i < LEN; i++) prompt[i] = (i * 13 + 2) % V;
    char err[256] = "";
    ts_model_decoder *dec = NULL;
    ts_speculator *sp = NULL;
    ts_sampler *smp = NULL;
    CHECK(ts_model_decoder_new(w, be, 1, 64, &dec, err, sizeof err) == TS_OK, "decoder: %s", err);
    CHECK(ts_speculator_new(w, dec, &sp, err, sizeof err) == TS_OK, "speculator: %s", err);
    CHECK_OK(ts_sampler_new(V, &smp), NULL);
    if (!dec || !sp || !smp) return;
    ts_sampling_params sampling = ts_sampling_defaults();
    sampling.temperature = 1.0f;
    sampling.seed = 99;
    generate(dec, sp, smp, &sampling, prompt, LEN, NEW, a);
    generate(dec, sp, smp, &sampling, prompt, LEN, NEW, b);
    CHECK(memcmp(a, b, sizeof a) == 0, "same seed, different tokens");

    /* the target p and the draft q after prompt + next, from the plain decoder and the block */
    float lg[V], p[V], q[V];
    int slot = 0, counts[V] = {0};
    CHECK_OK(ts_sampler_start(smp, &sampling, prompt, LEN), NULL);
    ts_model_decoder_reset(dec, 0);
    CHECK_OK(ts_model_decoder_extend(dec, 0, prompt, LEN, lg, 1), NULL);
    CHECK_OK(ts_model_decoder_mtp(dec, 0, next, lg), NULL);
    CHECK_OK(ts_sampler_probs(smp, lg, q), NULL);
    CHECK_OK(ts_model_decoder_step(dec, 1, &slot, &next, lg), NULL);
    CHECK_OK(ts_sampler_probs(smp, lg, p), NULL);
    CHECK_OK(ts_model_decoder_truncate(dec, 0, LEN), NULL);
    int64_t drafted0, accepted0;
    ts_speculator_stats(sp, &drafted0, &accepted0);
    for (int i = 0; i < N; i++) {
        int32_t out[2];
        int n_out = 0;
        sampling.seed = 1000 + (uint64_t)i;
        CHECK_OK(ts_sampler_start(smp, &sampling, prompt, LEN), NULL);
        CHECK_OK(ts_speculator_step(sp, 0, smp, next, out, &n_out), NULL);
        if (n_out > 0) counts[out[0]]++;
        CHECK_OK(ts_model_decoder_truncate(dec, 0, LEN), NULL);
    }
    int df, df_q;
    double chi = chi_square(counts, p, N, &df), overlap = 0;
    /* what always accepting the draft would score: counts in proportion to q */
    int as_q[V];
    for (int v = 0; v < V; v++) as_q[v] = (int)lround(N * (double)q[v]), overlap += fmin(p[v], q[v]);
    double chi_q = chi_square(as_q, p, N, &df_q), limit = df + 6 * sqrt(2.0 * df);
    int64_t drafted, accepted;
    ts_speculator_stats(sp, &drafted, &accepted);
    drafted -= drafted0;
    accepted -= accepted0;
    CHECK(chi < limit, "speculative samples vs p: chi-square %.1f (df %d, limit %.1f)", chi, df, limit);
    CHECK(chi_q > 3 * limit, "the test has no power: q scores only %.1f", chi_q);
    /* a draft d ~ q is accepted with probability sum_d q(d) min(1, p(d)/q(d)) = sum min(p, q) */
    CHECK(drafted == N && fabs((double)accepted / N - overlap) < 0.05, "acceptance %lld / %lld, expected %.3f",
          (long long)accepted, (long long)drafted, overlap);
    printf("  sampling: same seed same tokens; %d rounds: chi-square vs p %.1f (df %d, limit %.1f; always accepting "
           "q would score %.1f); acceptance %.2f (sum min(p, q) = %.2f)\n", N, chi, df, limit, chi_q,
           (double)accepted / (double)drafted, overlap);
    ts_sampler_free(smp);
    ts_speculator_free(sp);
    ts_model_decoder_free(dec);
    ts_model_weights_free(w);
}

/* A dense model has no MTP block: the speculator and the draft call refuse it. */
static void test_dense_refused(ts_backend *be) {
    ts_v4_config c;
    ts_v4_preset("dense-tiny", &c);
    c.hidden_size = 32;
    c.num_hidden_layers = 1;
    char err[256] = "";
    ts_model_weights *w = NULL;
    ts_model_decoder *dec = NULL;
    ts_speculator *sp = NULL;
    CHECK(ts_model_weights_new(&c, TS_F32, &w, err, sizeof err) == TS_OK, "dense weights: %s", err);
    if (!w) return;
    ts_model_weights_init(w, 1, err, sizeof err);
    CHECK(ts_model_decoder_new(w, be, 1, 8, &dec, err, sizeof err) == TS_OK, "dense decoder: %s", err);
    if (!dec) return;
    err[0] = '\0';
    CHECK(ts_speculator_new(w, dec, &sp, err, sizeof err) == TS_ERR_UNSUPPORTED && strstr(err, "MTP"), "dense: '%s'",
          err);
    float *lg = malloc((size_t)c.vocab_size * sizeof *lg);
    int32_t one = 5;
    CHECK_OK(ts_model_decoder_extend(dec, 0, &one, 1, lg, 1), NULL);
    CHECK(ts_model_decoder_mtp(dec, 0, 5, lg) == TS_ERR_UNSUPPORTED, "dense decoder drafted");
    CHECK(ts_model_decoder_mtp_lag(dec, 0) == 0, "a dense decoder has no MTP lag");
    free(lg);
    ts_model_decoder_free(dec);
    ts_model_weights_free(w);
}

int main(void) {
    ts_backend *be;
    ts_backend_cpu_ref_new(2, &be);
    test_draft_logits(be);
    test_greedy(be);
    test_sampling(be);
    test_dense_refused(be);
    ts_backend_free(be);
    return check_summary("speculative");
}
