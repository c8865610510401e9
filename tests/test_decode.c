/* test_decode.c - incremental decoding (src/model/decode.c) against the full forward pass.
 * 1. The V4 reference fixture (window-only, CSA with indexer, HCA; window 8, blocks of 4 and 8),
 *    f64: feeding the 46 tokens one at a time gives every position's logits of the full
 *    sequence (max abs difference <= 1e-6: the f64 logits are handed out as f32, whose rounding
 *    is ~1e-7 here), across 11 CSA and 5 HCA block completions.
 * 2. Two sequences in two slots at different positions in the same steps (the second starts 5
 *    tokens later; then one slot is reset and reused): each matches its own full forward pass.
 *    Eight sequences in eight slots, starting at different steps and each sitting out a
 *    different subset of steps (so passes of 1, 2, 4 and 8 rows run and the slots' state rows
 *    move): each matches its own full forward pass.
 * 3. extend: a sequence fed in chunks of many sizes (one pass per chunk of 64, a multiple of 8 or 4, 2, 1 tokens), mixed
 *    with single steps, gives the full pass's logits after every token (logit_rows = chunk),
 *    and only the last rows when logit_rows is smaller.
 * 4. truncate: A, then B, truncated back to A, then C gives the logits of A + C, for cuts on and
 *    across CSA / HCA block boundaries and B of 1..16 tokens, by steps and by extend; a rewind
 *    past the bound is TS_ERR_UNSUPPORTED and leaves the slot as it was.
 * 4b. fork: slot 0 holds A[0..20) + B[0..10); slot 1 forked from it at 20 goes on with A and
 *    slot 0 with B, stepping together: each gives the logits of its own full pass; a fork
 *    further back than the rewind bound is TS_ERR_UNSUPPORTED, the target unchanged.
 * 4c. the paged pool: 500 random steps / extends / truncates / resets / forks of 4 slots over 9
 *    blocks of 8 positions (24 would hold them all), following 5 sequences that share prefixes
 *    (switching after forks and truncates, so shared blocks are copied on write): every logit
 *    matches the full pass, TS_ERR_OOM from step and extend changes no length and no block, and
 *    resets give every block back; a pool too large for the cache index is TS_ERR_INVALID_ARG.
 * 4d. batch: a mix of a single token, a chunk keeping 3 rows and sequences keeping none gives
 *    the full passes' rows in one pass per chunk length, as does the next step of all; 60 random
 *    batches over 4 slots (chunks of equal length from different slots and positions sharing
 *    passes, chunks padded up to the next chunk length) give the full passes' rows in one pass
 *    per distinct chunk length each; bad batches
 *    are refused, and one the pool cannot hold is TS_ERR_OOM with nothing appended (its single
 *    tokens would have fitted).
 * 5. f32 on the optimized backend: the scaled-down tiny preset (more heads, top-16 indexer over
 *    longer sequences, MTP present but unused, HCA blocks of 32) matches within 1e-4 stepped
 *    and fed in chunks; one slot stepping alone in an 8-slot decoder gives the logits of a
 *    1-slot decoder. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "model_fixture.h"
#include "tessera/backend.h"
#include "tessera/io.h"
#include "tessera/model.h"

/* Decodes seqs[k] (lengths lens[k]) in slots k, sequence k starting at step starts[k] and
 * sitting out the steps with (step + k) % pause == 0 (pause 0: none), and returns the worst
 * |decoded - full| over every position of every sequence. */
static double decode_vs_full(ts_model_weights *w, ts_backend *be, int n_seq, int32_t *const *seqs,
                             const int64_t *lens, const int64_t *starts, int pause, int64_t max_len) {
    char err[256] = "";
    ts_model_decoder *dec = NULL;
    ts_status s = ts_model_decoder_new(w, be, n_seq, max_len, &dec, err, sizeof err);
    CHECK(s == TS_OK, "decoder: %s", err);
    if (s != TS_OK) return INFINITY;
    int64_t V = ts_model_weights_config(w)->vocab_size;
    double *full[8];
    for (int k = 0; k < n_seq; k++) full[k] = full_logits(w, be, seqs[k], lens[k]);
    float *logits = malloc((size_t)(n_seq * V) * sizeof *logits);
    double worst = 0;
    for (int64_t step = 0, left = n_seq; left > 0; step++) {
        int slots[8], n = 0;
        int32_t ids[8];
        for (int k = 0; k < n_seq; k++) {
            int64_t p = ts_model_decoder_length(dec, k);
            if (step < starts[k] || p >= lens[k] || (pause && (step + k) % pause == 0)) continue;
            slots[n] = k;
            ids[n++] = seqs[k][p];
            left -= p + 1 == lens[k];
        }
        if (n == 0) continue;
        CHECK_OK(ts_model_decoder_step(dec, n, slots, ids, logits), NULL);
        for (int i = 0; i < n; i++) {
            int k = slots[i];
            int64_t p = ts_model_decoder_length(dec, k) - 1;
            for (int64_t v = 0; v < V; v++) worst = fmax(worst, fabs(logits[i * V + v] - full[k][p * V + v]));
        }
    }
    free(logits);
    for (int k = 0; k < n_seq; k++) free(full[k]);
    ts_model_decoder_free(dec);
    return worst;
}

/* Feeds ids[0..n) to `slot` in pieces of pieces[0], pieces[1], .. tokens (cycling; 1 = a step,
 * more = one extend with a row of logits per token) and writes the logits after each token into
 * out [n, V]. */
static void feed(ts_model_decoder *dec, int slot, const int32_t *ids, int64_t n, const int *pieces, int n_pieces,
                 int64_t V, float *out) {
    for (int64_t at = 0, i = 0; at < n; i++) {
        int64_t k = pieces[i % n_pieces] < n - at ? pieces[i % n_pieces] : n - at;
        if (k == 1) CHECK_OK(ts_model_decoder_step(dec, 1, &slot, &ids[at], out + at * V), NULL);
        else CHECK_OK(ts_model_decoder_extend(dec, slot, &ids[at], k, out + at * V, k), NULL);
        at += k;
    }
}

static double worst_diff(const float *a, const double *b, int64_t n) {
    double worst = 0;
    for (int64_t i = 0; i < n; i++) worst = fmax(worst, fabs(a[i] - b[i]));
    return worst;
}

/* Feeding ids in each piece pattern gives the full pass's logits within tol; so do the last
 * rows of one extend with fewer logit rows. */
static void check_extend(ts_model_weights *w, ts_backend *be, const int32_t *ids, int64_t n, const int *const *patterns,
                         const int *n_pieces, int n_patterns, double tol, const char *what) {
    int64_t V = ts_model_weights_config(w)->vocab_size;
    char err[256] = "";
    ts_model_decoder *dec = NULL;
    CHECK(ts_model_decoder_new(w, be, 2, n, &dec, err, sizeof err) == TS_OK, "decoder: %s", err);
    if (!dec) return;
    double *full = full_logits(w, be, ids, n), worst = 0;
    float *lg = malloc((size_t)(n * V) * sizeof *lg);
    for (int k = 0; k < n_patterns; k++) {
        ts_model_decoder_reset(dec, k % 2);
        feed(dec, k % 2, ids, n, patterns[k], n_pieces[k], V, lg);
        double d = worst_diff(lg, full, n * V);
        CHECK(d <= tol && ts_model_decoder_length(dec, k % 2) == n, "%s: pattern %d differs by %.3e", what, k, d);
        worst = fmax(worst, d);
    }
    int64_t head = n / 3, rows = 3; /* extend the rest with the last 3 rows of logits only */
    ts_model_decoder_reset(dec, 1);
    feed(dec, 1, ids, head, (const int[]){1}, 1, V, lg);
    CHECK_OK(ts_model_decoder_extend(dec, 1, ids + head, n - head, lg, rows), NULL);
    double d = worst_diff(lg, full + (n - rows) * V, rows * V);
    CHECK(d <= tol, "%s: the last %lld logit rows differ by %.3e", what, (long long)rows, d);
    printf("  %s: %lld tokens in %d chunk patterns, max |logit difference| %.2e (last rows only: %.2e)\n", what,
           (long long)n, n_patterns, worst, d);
    free(lg);
    free(full);
    ts_model_decoder_free(dec);
}

/* A = a[0..na), then B = b[0..nb), truncated back to na, then a[na..n) gives a's logits over
 * a[na..n); pieces: how A and the rest are fed (see feed). */
static double rewind_case(ts_model_decoder *dec, const int32_t *a, const int32_t *b, const double *full, int64_t n,
                          int64_t na, int64_t nb, const int *pieces, int n_pieces, int64_t V, float *lg) {
    ts_model_decoder_reset(dec, 0);
    feed(dec, 0, a, na, pieces, n_pieces, V, lg);
    feed(dec, 0, b, nb, pieces, n_pieces, V, lg + na * V);
    CHECK_OK(ts_model_decoder_truncate(dec, 0, na), NULL);
    CHECK(ts_model_decoder_length(dec, 0) == na, "truncate sets the length");
    feed(dec, 0, a + na, n - na, pieces, n_pieces, V, lg + na * V);
    return worst_diff(lg + na * V, full + na * V, (n - na) * V);
}

static void test_truncate(ts_model_weights *w, ts_backend *be, const int32_t *a, const int32_t *b) {
    enum { N = 46, V = 64 };
    char err[256] = "";
    ts_model_decoder *dec = NULL;
    CHECK(ts_model_decoder_new(w, be, 1, 48, &dec, err, sizeof err) == TS_OK, "decoder: %s", err);
    if (!dec) return;
    double *full = full_logits(w, be, a, N), worst = 0;
    float lg[N * V];
    static const int steps[] = {1}, chunks[] = {5, 3, 16};
    const int64_t cuts[] = {7, 8, 12, 15, 16, 23, 30}, drafts[] = {1, 5, 16};
    int cases = 0;
    for (int i = 0; i < 7; i++)
        for (int j = 0; j < 3; j++) {
            bool by_steps = (i + j) % 2 == 0;
            double d = rewind_case(dec, a, b, full, N, cuts[i], drafts[j], by_steps ? steps : chunks, by_steps ? 1 : 3,
                                   V, lg);
            CHECK(d <= 1e-6, "A = %lld tokens, B = %lld: differs by %.3e", (long long)cuts[i], (long long)drafts[j], d);
            worst = fmax(worst, d);
            cases++;
        }
    /* two rewinds within reach: a[0..20) b[0..8) -> 20, a[20..24) b[0..6) -> 24, then the rest */
    ts_model_decoder_reset(dec, 0);
    feed(dec, 0, a, 20, steps, 1, V, lg);
    feed(dec, 0, b, 8, chunks, 3, V, lg + 20 * V);
    CHECK_OK(ts_model_decoder_truncate(dec, 0, 20), NULL);
    feed(dec, 0, a + 20, 4, steps, 1, V, lg + 20 * V);
    feed(dec, 0, b, 6, steps, 1, V, lg + 24 * V);
    CHECK_OK(ts_model_decoder_truncate(dec, 0, 24), NULL);
    feed(dec, 0, a + 24, N - 24, chunks, 3, V, lg + 24 * V);
    double d2 = worst_diff(lg + 20 * V, full + 20 * V, (N - 20) * V);
    CHECK(d2 <= 1e-6, "two rewinds: differs by %.3e", d2);
    /* past the bound: refused, the slot unchanged; 16 back still works */
    int32_t spliced[N];
    memcpy(spliced, a, sizeof spliced);
    spliced[12] = b[0];
    double *full_s = full_logits(w, be, spliced, N);
    ts_model_decoder_reset(dec, 0);
    feed(dec, 0, a, 12, chunks, 3, V, lg);
    feed(dec, 0, b, 17, steps, 1, V, lg + 12 * V);
    ts_status st = ts_model_decoder_truncate(dec, 0, 12);
    CHECK(st == TS_ERR_UNSUPPORTED && ts_model_decoder_length(dec, 0) == 29, "17 back: %s", ts_status_name(st));
    CHECK_OK(ts_model_decoder_truncate(dec, 0, 13), NULL);
    feed(dec, 0, a + 13, N - 13, steps, 1, V, lg + 13 * V);
    double d3 = worst_diff(lg + 13 * V, full_s + 13 * V, (N - 13) * V);
    CHECK(d3 <= 1e-6, "after a refused rewind: differs by %.3e", d3);
    printf("  truncate: %d rewinds of 1..16 tokens over block boundaries, max |logit difference| %.2e; two in a "
           "row %.2e; 17 back refused, 16 back %.2e\n", cases, worst, d2, d3);
    free(full_s);
    free(full);
    ts_model_decoder_free(dec);
}

static void test_fork(ts_model_weights *w, ts_backend *be, const int32_t *a, const int32_t *b) {
    enum { N = 46, V = 64, CUT = 20, B_LEN = 26 };
    char err[256] = "";
    ts_model_decoder *dec = NULL;
    CHECK(ts_model_decoder_new(w, be, 3, 48, &dec, err, sizeof err) == TS_OK, "decoder: %s", err);
    if (!dec) return;
    int32_t ab[CUT + B_LEN];
    memcpy(ab, a, CUT * sizeof(int32_t));
    memcpy(ab + CUT, b, B_LEN * sizeof(int32_t));
    double *full_a = full_logits(w, be, a, N), *full_ab = full_logits(w, be, ab, CUT + B_LEN);
    float lg_a[N * V], lg_ab[(CUT + B_LEN) * V], two[2 * V];
    static const int chunks[] = {7, 3};
    feed(dec, 2, b, 3, chunks, 2, V, lg_a); /* slot 2 holds something of its own */
    feed(dec, 0, ab, CUT + 10, chunks, 2, V, lg_ab);
    CHECK(ts_model_decoder_fork(dec, 2, 0, 12) == TS_ERR_UNSUPPORTED && ts_model_decoder_length(dec, 2) == 3,
          "a fork 18 back from the furthest length is refused, the target unchanged");
    CHECK_OK(ts_model_decoder_fork(dec, 1, 0, CUT), NULL);
    CHECK(ts_model_decoder_length(dec, 1) == CUT && ts_model_decoder_length(dec, 0) == CUT + 10, "fork lengths");
    int slots[2] = {1, 0};
    for (int64_t i = 0; i < B_LEN - 10; i++) { /* both slots in one step */
        int32_t ids[2] = {a[CUT + i], ab[CUT + 10 + i]};
        CHECK_OK(ts_model_decoder_step(dec, 2, slots, ids, two), NULL);
        memcpy(lg_a + (CUT + i) * V, two, V * sizeof(float));
        memcpy(lg_ab + (CUT + 10 + i) * V, two + V, V * sizeof(float));
    }
    feed(dec, 1, a + CUT + B_LEN - 10, N - (CUT + B_LEN - 10), chunks, 2, V, lg_a + (CUT + B_LEN - 10) * V);
    double da = worst_diff(lg_a + CUT * V, full_a + CUT * V, (N - CUT) * V);
    double db = worst_diff(lg_ab, full_ab, (CUT + B_LEN) * V);
    CHECK(da <= 1e-6 && db <= 1e-6, "fork then diverge: the fork differs by %.3e, its source by %.3e", da, db);
    printf("  fork: a copy rewound 10 tokens and the source diverge, max |logit difference| %.2e, %.2e\n", da, db);
    free(full_a);
    free(full_ab);
    ts_model_decoder_free(dec);
}

/* Random steps / extends / truncates / resets / forks over a pool of 9 blocks of 8 positions
 * (4 slots of 46 need 24): every slot follows one of 5 master sequences that share prefixes, and
 * may switch to another sharing the prefix it holds (after a fork or a truncate: its later
 * tokens then diverge from its old blocks' other holders, so shared blocks are copied on write).
 * Every logit handed out matches the master's full pass; TS_ERR_OOM leaves every length and the
 * free blocks as they were (and the later logits still match); resets give every block back. */
static void test_pool_random(ts_model_weights *w, ts_backend *be, const int32_t *a, const int32_t *b) {
    enum { N = 46, V = 64, M = 5, SLOTS = 4, OPS = 500 };
    char err[256] = "";
    ts_model_decoder *dec = NULL;
    CHECK(ts_model_decoder_new_pooled(w, be, SLOTS, N, 9 * 8, &dec, err, sizeof err) == TS_OK, "decoder: %s", err);
    if (!dec) return;
    int32_t master[M][N];
    const int32_t *parts[M][2] = {{a, a}, {a, b}, {a, b + 10}, {b, b}, {b, a}};
    const int cut[M] = {N, 20, 12, N, 25};
    double *full[M];
    for (int k = 0; k < M; k++) {
        for (int i = 0; i < N; i++) master[k][i] = i < cut[k] ? parts[k][0][i] : parts[k][1][i - cut[k]];
        full[k] = full_logits(w, be, master[k], N);
    }
    int follows[SLOTS] = {0, 1, 3, 4};
    uint64_t rng = 12345;
#define RND(n) ((int)((rng = rng * 6364136223846793005ULL + 1442695040888963407ULL) >> 33) % (n))
    float *lg = malloc((size_t)(SLOTS > 12 ? SLOTS : 12) * V * sizeof *lg);
    double worst = 0;
    int n_oom_step = 0, n_oom_extend = 0, n_forks = 0, n_switch = 0, bad_oom = 0;
    ts_model_decoder_pool p0, p1;
    for (int op = 0; op < OPS; op++) {
        int kind = RND(10), s = RND(SLOTS);
        int64_t len = ts_model_decoder_length(dec, s), before[SLOTS];
        for (int i = 0; i < SLOTS; i++) before[i] = ts_model_decoder_length(dec, i);
        ts_model_decoder_pool_info(dec, &p0);
        ts_status st = TS_OK;
        int oom_kind = 0;
        if (kind < 4) { /* a step of a random subset */
            int slots[SLOTS], n = 0;
            int32_t ids[SLOTS];
            for (int i = 0; i < SLOTS; i++)
                if (before[i] < N && (RND(2) || (n == 0 && i == SLOTS - 1))) {
                    slots[n] = i;
                    ids[n++] = master[follows[i]][before[i]];
                }
            if (n == 0) continue;
            st = ts_model_decoder_step(dec, n, slots, ids, lg);
            for (int i = 0; st == TS_OK && i < n; i++)
                for (int v = 0; v < V; v++)
                    worst = fmax(worst, fabs(lg[i * V + v] - full[follows[slots[i]]][before[slots[i]] * V + v]));
            oom_kind = 1;
        } else if (kind < 6) { /* an extend, every row's logits */
            int64_t n = 1 + RND(12);
            n = n < N - len ? n : N - len;
            if (n < 1) continue;
            st = ts_model_decoder_extend(dec, s, master[follows[s]] + len, n, lg, n);
            for (int64_t i = 0; st == TS_OK && i < n * V; i++)
                worst = fmax(worst, fabs(lg[i] - full[follows[s]][len * V + i]));
            oom_kind = 2;
        } else if (kind == 6 && len > 0) { /* a truncate, maybe onto another master */
            int64_t to = len - 1 - RND(10);
            to = to > 0 ? to : 0;
            st = ts_model_decoder_truncate(dec, s, to);
            CHECK(st == TS_OK || (st == TS_ERR_UNSUPPORTED && ts_model_decoder_length(dec, s) == len), "truncate: %s",
                  ts_status_name(st));
            int k = RND(M);
            if (st == TS_OK && memcmp(master[k], master[follows[s]], (size_t)to * sizeof(int32_t)) == 0) {
                n_switch += k != follows[s];
                follows[s] = k;
            }
        } else if (kind == 7) {
            ts_model_decoder_reset(dec, s);
            follows[s] = RND(M);
        } else if (kind >= 8) { /* a fork from another slot, going on with a master sharing the prefix */
            int src = (s + 1 + RND(SLOTS - 1)) % SLOTS;
            int64_t at = before[src] - RND(12);
            if (at < 1) continue;
            st = ts_model_decoder_fork(dec, s, src, at);
            CHECK(st == TS_OK || (st == TS_ERR_UNSUPPORTED && ts_model_decoder_length(dec, s) == len), "fork: %s",
                  ts_status_name(st));
            if (st != TS_OK) continue;
            n_forks++;
            int k = RND(M);
            follows[s] = memcmp(master[k], master[follows[src]], (size_t)at * sizeof(int32_t)) ? follows[src] : k;
        }
        if (st != TS_ERR_OOM || oom_kind == 0) continue;
        n_oom_step += oom_kind == 1;
        n_oom_extend += oom_kind == 2;
        ts_model_decoder_pool_info(dec, &p1);
        for (int i = 0; i < SLOTS; i++) bad_oom += ts_model_decoder_length(dec, i) != before[i];
        bad_oom += p1.free_blocks != p0.free_blocks;
        ts_model_decoder_reset(dec, s); /* make room */
        follows[s] = RND(M);
    }
#undef RND
    for (int i = 0; i < SLOTS; i++) ts_model_decoder_reset(dec, i);
    ts_model_decoder_pool_info(dec, &p1);
    CHECK(worst <= 1e-6, "random ops over a small pool: logits differ from the full pass by %.3e", worst);
    CHECK(bad_oom == 0 && n_oom_step > 0 && n_oom_extend > 0, "TS_ERR_OOM (%d from step, %d from extend) changed the "
          "state %d times", n_oom_step, n_oom_extend, bad_oom);
    CHECK(n_forks > 0 && n_switch > 0, "%d forks, %d truncates onto another master", n_forks, n_switch);
    CHECK(p1.shared && p1.blocks == 9 && p1.block_positions == 8 && p1.free_blocks == p1.blocks,
          "after resets: %lld of %lld blocks of %lld positions free", (long long)p1.free_blocks, (long long)p1.blocks,
          (long long)p1.block_positions);
    printf("  pool of 9 blocks (4 slots of 46 need 24): %d random ops, %d forks, %d + %d TS_ERR_OOM (nothing changed), "
           "max |logit difference| %.2e, every block back\n", OPS, n_forks, n_oom_step, n_oom_extend, worst);
    free(lg);
    for (int k = 0; k < M; k++) free(full[k]);
    ts_model_decoder_free(dec);
    dec = NULL;
    err[0] = '\0';
    ts_status big = ts_model_decoder_new_pooled(w, be, SLOTS, N, INT64_MAX / 2, &dec, err, sizeof err);
    CHECK(big == TS_ERR_INVALID_ARG && !dec && strstr(err, "index"), "a pool past the cache index: %s (%s)",
          ts_status_name(big), err);
}

/* ts_model_decoder_batch: a mix of a single token, a chunk keeping 3 rows and sequences keeping
 * none gives the full passes' rows in three passes (the 7 tokens as a chunk of 8 with one
 * padding token, 4 of the 5, then the single tokens of the rest), and the next step of all four
 * (their states after the batch) too; bad batches are refused with nothing appended. */
static void test_batch(ts_model_weights *w, ts_backend *be, const int32_t *a, const int32_t *b) {
    enum { V = 64 };
    char err[256] = "";
    ts_model_decoder *dec = NULL;
    CHECK(ts_model_decoder_new(w, be, 4, 48, &dec, err, sizeof err) == TS_OK, "decoder: %s", err);
    if (!dec) return;
    double *full_a = full_logits(w, be, a, 46), *full_b = full_logits(w, be, b, 46);
    float lg[10 * V];
    static const int chunk[] = {10};
    feed(dec, 0, a, 10, chunk, 1, V, lg);
    feed(dec, 1, b, 3, chunk, 1, V, lg);
    ts_model_decoder_seq seqs[4] = {{1, b + 3, 1, 1}, {0, a + 10, 7, 3}, {2, a, 1, 0}, {3, b, 5, 0}};
    int64_t before = ts_model_decoder_passes(dec);
    CHECK_OK(ts_model_decoder_batch(dec, 4, seqs, lg), NULL);
    double worst = fmax(worst_diff(lg, full_b + 3 * V, V), worst_diff(lg + V, full_a + 14 * V, 3 * V));
    CHECK(ts_model_decoder_passes(dec) - before == 3, "a batch of chunks 1, 8 (7 + padding), 1, 4 1: %lld passes",
          (long long)(ts_model_decoder_passes(dec) - before));
    int slots[4] = {0, 1, 2, 3};
    int32_t next[4] = {a[17], b[4], a[1], b[5]};
    CHECK_OK(ts_model_decoder_step(dec, 4, slots, next, lg), NULL);
    worst = fmax(worst, fmax(worst_diff(lg, full_a + 17 * V, V), worst_diff(lg + V, full_b + 4 * V, V)));
    worst = fmax(worst, fmax(worst_diff(lg + 2 * V, full_a + V, V), worst_diff(lg + 3 * V, full_b + 5 * V, V)));
    CHECK(worst <= 1e-6, "a mixed batch (V4): logits differ from the full passes by %.3e", worst);
    ts_model_decoder_seq twice[2] = {{0, a, 1, 1}, {0, a, 1, 1}}, too_many_rows = {1, b, 2, 3}, empty = {1, b, 0, 0};
    ts_model_decoder_seq too_long[2] = {{1, b, 1, 1}, {2, a, 47, 1}};
    CHECK(ts_model_decoder_batch(dec, 2, twice, lg) == TS_ERR_INVALID_ARG &&
              ts_model_decoder_batch(dec, 1, &too_many_rows, lg) == TS_ERR_INVALID_ARG &&
              ts_model_decoder_batch(dec, 1, &empty, lg) == TS_ERR_INVALID_ARG &&
              ts_model_decoder_batch(dec, 2, too_long, lg) == TS_ERR_RANGE,
          "a repeated slot, logit_rows > n, n = 0, a slot past max_len");
    CHECK(ts_model_decoder_length(dec, 0) == 18 && ts_model_decoder_length(dec, 1) == 5 &&
              ts_model_decoder_length(dec, 2) == 2,
          "refused batches append nothing");
    printf("  batch: a mixed batch in 3 passes and the step after it, max |logit difference| %.2e\n", worst);
    ts_model_decoder_free(dec);

    /* A pool short for the batch: its step would fit, its extend would not - nothing is appended. */
    dec = NULL;
    CHECK(ts_model_decoder_new_pooled(w, be, 2, 48, 3 * 8, &dec, err, sizeof err) == TS_OK, "pooled decoder: %s", err);
    if (dec) {
        feed(dec, 0, a, 10, chunk, 1, V, lg);
        ts_model_decoder_seq short_pool[2] = {{0, a + 10, 1, 1}, {1, b, 17, 1}};
        ts_model_decoder_pool p;
        ts_model_decoder_pool_info(dec, &p);
        int64_t free_before = p.free_blocks;
        ts_status st = ts_model_decoder_batch(dec, 2, short_pool, lg);
        ts_model_decoder_pool_info(dec, &p);
        CHECK(st == TS_ERR_OOM && ts_model_decoder_length(dec, 0) == 10 && ts_model_decoder_length(dec, 1) == 0 &&
                  p.free_blocks == free_before,
              "a batch the pool cannot hold: %s, lengths %lld and %lld, %lld of %lld free blocks", ts_status_name(st),
              (long long)ts_model_decoder_length(dec, 0), (long long)ts_model_decoder_length(dec, 1),
              (long long)p.free_blocks, (long long)free_before);
        ts_model_decoder_free(dec);
    }
    free(full_a);
    free(full_b);
}

/* Chunk lengths of decode.c, ascending: 1, 2, 4, then the multiples of 8 up to 64. */
static const int64_t chunk_lengths[] = {1, 2, 4, 8, 16, 24, 32, 40, 48, 56, 64};
enum { N_CHUNK_LENGTHS = sizeof chunk_lengths / sizeof chunk_lengths[0] };

/* Index in chunk_lengths of the tokens of a sequence's next pass when `left` remain: the
 * longest chunk length it fills, or the next one when its padding is at most a quarter of it. */
static int chunk_of(int64_t left) {
    int c = N_CHUNK_LENGTHS - 1;
    while (c > 0 && chunk_lengths[c] > left) c--;
    if (chunk_lengths[c] < left && c + 1 < N_CHUNK_LENGTHS && 4 * (chunk_lengths[c + 1] - left) <= chunk_lengths[c + 1])
        c++;
    return c;
}

/* Random batches over 4 slots (two following a, two following b, from different positions;
 * each sequence 1..12 tokens, or 13..40 one time in four, keeping 0..n rows of logits, a slot
 * sitting out now and then and starting over when full) give the full passes' rows, and each
 * batch costs one pass per distinct chunk length its sequences break into - rows of equal
 * chunks share a pass. */
static void test_batch_groups(ts_model_weights *w, ts_backend *be, const int32_t *a, const int32_t *b) {
    enum { V = 64, SLOTS = 4, N = 46, BATCHES = 60 };
    char err[256] = "";
    ts_model_decoder *dec = NULL;
    CHECK(ts_model_decoder_new(w, be, SLOTS, 48, &dec, err, sizeof err) == TS_OK, "decoder: %s", err);
    if (!dec) return;
    double *full_a = full_logits(w, be, a, N), *full_b = full_logits(w, be, b, N);
    const int32_t *src[SLOTS] = {a, b, a, b};
    const double *full[SLOTS] = {full_a, full_b, full_a, full_b};
    float lg[SLOTS * 40 * V];
    feed(dec, 2, a, 5, (const int[]){1}, 1, V, lg);
    feed(dec, 3, b, 3, (const int[]){1}, 1, V, lg);
    unsigned rng = 2024u;
#define RND(n) ((int)((rng = rng * 1103515245u + 12345u) >> 16) % (n))
    double worst = 0;
    int bad_passes = 0, shared = 0;
    for (int it = 0; it < BATCHES; it++) {
        ts_model_decoder_seq seqs[SLOTS];
        int64_t pos[SLOTS];
        int n = 0, uses[N_CHUNK_LENGTHS] = {0};
        for (int s = 0; s < SLOTS; s++) {
            int64_t len = ts_model_decoder_length(dec, s);
            if (len >= N - 1) ts_model_decoder_reset(dec, s), len = 0;
            if (RND(5) == 0) continue;
            int64_t k = RND(4) ? 1 + RND(12) : 13 + RND(28);
            if (k > N - len) k = N - len;
            pos[n] = len;
            seqs[n++] = (ts_model_decoder_seq){s, src[s] + len, k, RND((int)k + 1)};
            for (int64_t left = k; left > 0; left -= chunk_lengths[chunk_of(left)] < left ? chunk_lengths[chunk_of(left)] : left)
                uses[chunk_of(left)]++;
        }
        if (n == 0) continue;
        int distinct = 0;
        for (int c = 0; c < N_CHUNK_LENGTHS; c++) distinct += uses[c] > 0, shared += c > 0 && uses[c] > 1;
        int64_t before = ts_model_decoder_passes(dec);
        CHECK_OK(ts_model_decoder_batch(dec, n, seqs, lg), NULL);
        bad_passes += ts_model_decoder_passes(dec) - before != distinct;
        for (int i = 0, row = 0; i < n; i++) {
            const ts_model_decoder_seq *q = &seqs[i];
            for (int64_t r = 0; r < q->logit_rows; r++, row++)
                worst = fmax(worst, worst_diff(lg + row * V, full[q->slot] + (pos[i] + q->n - q->logit_rows + r) * V, V));
            CHECK(ts_model_decoder_length(dec, q->slot) == pos[i] + q->n, "slot %d holds its tokens", q->slot);
        }
    }
#undef RND
    CHECK(worst <= 1e-6, "random batches: logits differ from the full passes by %.3e", worst);
    CHECK(bad_passes == 0 && shared > 0, "%d batches missed one pass per chunk length; %d passes of chunks shared",
          bad_passes, shared);
    printf("  batch: %d random batches over 4 slots (%d chunk passes shared by several slots), one pass per chunk "
           "length, max |logit difference| %.2e\n", BATCHES, shared, worst);
    free(full_a);
    free(full_b);
    ts_model_decoder_free(dec);
}

static void test_completer(ts_model_weights *w, ts_backend *be, const int32_t *a, const int32_t *b);

static void test_fixture(void) {
    const char *slash = strrchr(__FILE__, '/');
    char dir[1024], exp_path[1024];
    snprintf(dir, sizeof dir, "%.*s/fixtures/v4/tiny-ref", (int)(slash - __FILE__), __FILE__);
    snprintf(exp_path, sizeof exp_path, "%.*s/fixtures/v4/expected.safetensors", (int)(slash - __FILE__), __FILE__);
    char err[512] = "";
    ts_model_weights *w = NULL;
    ts_status s = ts_model_load(dir, TS_F64, &w, err, sizeof err);
    CHECK(s == TS_OK, "load: %s", err);
    ts_st_file *ex = NULL;
    ts_io_error ioe;
    CHECK(ts_st_file_open(exp_path, &ex, &ioe) == TS_OK, "%s", ioe.message);
    if (s != TS_OK || !ex) return;
    const ts_st_tensor *t = ts_st_file_find(ex, "ids_b2");
    int32_t a[46], b[46];
    for (int i = 0; i < 46; i++) {
        a[i] = (int32_t)((const int64_t *)t->data)[i];
        b[i] = (int32_t)((const int64_t *)t->data)[46 + i];
    }
    ts_backend *be;
    ts_backend_cpu_ref_new(2, &be);
    int32_t *one[1] = {a};
    int64_t len1[1] = {46}, start1[1] = {0};
    double d1 = decode_vs_full(w, be, 1, one, len1, start1, 0, 48);
    CHECK(d1 <= 1e-6, "fixture: decoded logits differ from the full pass by %.3e", d1);
    printf("  fixture (f64): 46 tokens decoded one by one, max |logit difference| %.2e\n", d1);

    int32_t *two[2] = {a, b};
    int64_t len2[2] = {46, 40}, start2[2] = {0, 5};
    double d2 = decode_vs_full(w, be, 2, two, len2, start2, 0, 48);
    CHECK(d2 <= 1e-6, "two slots: max difference %.3e", d2);
    printf("  two sequences in two slots, offset by 5 steps: max |logit difference| %.2e\n", d2);

    int32_t rot[8][46], *eight[8];
    int64_t len8[8], start8[8];
    for (int k = 0; k < 8; k++) {
        for (int i = 0; i < 46; i++) rot[k][i] = (k % 2 ? b : a)[(i + 3 * k) % 46];
        eight[k] = rot[k];
        len8[k] = 30 + 2 * k;
        start8[k] = (k * 5) % 11;
    }
    double d8 = decode_vs_full(w, be, 8, eight, len8, start8, 3, 48);
    CHECK(d8 <= 1e-6, "eight slots with pauses: max difference %.3e", d8);
    printf("  eight sequences in eight slots, staggered and pausing: max |logit difference| %.2e\n", d8);

    static const int p1[] = {46}, p2[] = {3, 17, 1, 25}, p3[] = {5}, p4[] = {1, 13, 2, 33}, p5[] = {8, 4};
    const int *pats[] = {p1, p2, p3, p4, p5}, np[] = {1, 4, 1, 4, 2};
    check_extend(w, be, a, 46, pats, np, 5, 1e-6, "extend (f64 fixture)");
    test_truncate(w, be, a, b);
    test_fork(w, be, a, b);
    test_pool_random(w, be, a, b);
    test_batch(w, be, a, b);
    test_batch_groups(w, be, a, b);

    /* reset and reuse a slot */
    ts_model_decoder *dec = NULL;
    ts_model_decoder_new(w, be, 1, 48, &dec, err, sizeof err);
    float lg[64];
    int slot = 0;
    for (int i = 0; i < 10; i++) ts_model_decoder_step(dec, 1, &slot, &b[i], lg);
    ts_model_decoder_reset(dec, 0);
    CHECK(ts_model_decoder_length(dec, 0) == 0, "reset empties the slot");
    double *full = full_logits(w, be, a, 20), worst = 0;
    for (int i = 0; i < 20; i++) {
        ts_model_decoder_step(dec, 1, &slot, &a[i], lg);
        for (int v = 0; v < 64; v++) worst = fmax(worst, fabs(lg[v] - full[i * 64 + v]));
    }
    CHECK(worst <= 1e-6, "a reused slot differs by %.3e", worst);
    free(full);
    /* a full slot refuses more tokens */
    ts_model_decoder_reset(dec, 0);
    ts_status st = TS_OK;
    for (int i = 0; i < 49 && st == TS_OK; i++) st = ts_model_decoder_step(dec, 1, &slot, &a[i % 46], lg);
    CHECK(st == TS_ERR_RANGE && ts_model_decoder_length(dec, 0) == 48, "overflow: %s", ts_status_name(st));
    ts_model_decoder_free(dec);
    test_completer(w, be, a, b);
    ts_backend_free(be);
    ts_st_file_close(ex);
    ts_model_weights_free(w);
}

/* The completer (decoder path: rows prefill and generate in shared steps) gives the same greedy
 * continuations as argmax over full forward passes of the growing sequences. */
static void test_completer(ts_model_weights *w, ts_backend *be, const int32_t *a, const int32_t *b) {
    enum { NEW = 8 };
    int64_t lens[2] = {5, 11};
    const int32_t *prompts[2] = {a, b};
    int32_t out0[NEW], out1[NEW], *outs[2] = {out0, out1};
    int64_t out_lens[2];
    char err[256] = "";
    ts_model_completer *c = NULL;
    CHECK(ts_model_completer_new(w, be, 2, 32, &c, err, sizeof err) == TS_OK, "completer: %s", err);
    if (!c) return;
    CHECK_OK(ts_model_complete(c, 2, prompts, lens, NEW, -1, 2, outs, out_lens), NULL);
    for (int r = 0; r < 2; r++) {
        int32_t seq[32];
        memcpy(seq, prompts[r], (size_t)lens[r] * sizeof(int32_t));
        int64_t n = lens[r];
        int same = out_lens[r] == NEW;
        for (int k = 0; k < NEW && same; k++) {
            int best = full_argmax(w, be, seq, n);
            same = outs[r][k] == best;
            seq[n++] = best;
        }
        CHECK(same, "row %d: the completer's greedy continuation differs from the full passes'", r);
    }
    ts_model_completer_free(c);
}

/* One slot stepping alone among eight (a 1-row pass after 8-row ones) gives the logits of a
 * 1-slot decoder fed the same tokens. */
static void test_alone(ts_model_weights *w, ts_backend *be, const int32_t *ids, int64_t T) {
    int64_t V = ts_model_weights_config(w)->vocab_size;
    char err[256] = "";
    ts_model_decoder *many = NULL, *one = NULL;
    CHECK(ts_model_decoder_new(w, be, 8, T, &many, err, sizeof err) == TS_OK, "decoder: %s", err);
    CHECK(ts_model_decoder_new(w, be, 1, T, &one, err, sizeof err) == TS_OK, "decoder: %s", err);
    if (!many || !one) return;
    float *lg = malloc((size_t)(8 * V) * sizeof *lg), *ref = malloc((size_t)V * sizeof *ref);
    int slots[8] = {7, 6, 5, 4, 3, 2, 1, 0}, zero = 0;
    int32_t tok[8];
    double worst = 0;
    for (int64_t p = 0; p < 40; p++) {
        int n = p < 20 ? 8 : 1; /* all eight, then slot 4 alone (slots 7 and 4 trade state rows) */
        for (int i = 0; i < 8; i++) tok[i] = ids[(p + 5 * i) % T];
        const int *sl = n == 8 ? slots : &slots[3];
        const int32_t *tk = n == 8 ? tok : &tok[3];
        CHECK_OK(ts_model_decoder_step(many, n, sl, tk, lg), NULL);
        CHECK_OK(ts_model_decoder_step(one, 1, &zero, &tok[3], ref), NULL);
        for (int64_t v = 0; v < V; v++) worst = fmax(worst, fabs(lg[(n == 8 ? 3 : 0) * V + v] - ref[v]));
    }
    CHECK(worst <= 1e-5, "one slot among eight differs from a 1-slot decoder by %.3e", worst);
    printf("  one slot stepping alone among eight vs a 1-slot decoder: max |logit difference| %.2e\n", worst);
    free(lg);
    free(ref);
    ts_model_decoder_free(many);
    ts_model_decoder_free(one);
}

static void test_tiny_f32(void) {
    ts_v4_config c;
    ts_v4_preset("tiny", &c);
    c.hidden_size = 64;
    c.moe_intermediate_size = 32;
    c.q_lora_rank = 32;
    char err[256];
    ts_model_weights *w = NULL;
    ts_status s = ts_model_weights_new(&c, TS_F32, &w, err, sizeof err);
    CHECK(s == TS_OK, "weights: %s", err);
    if (s != TS_OK) return;
    ts_model_weights_init(w, 11, err, sizeof err);
    /* larger than the init's 0.02 so that the indexer's scores are not all tied at 0 */
    for (int i = 0; i < ts_model_weights_count(w); i++) {
        const ts_model_tensor *t = ts_model_weights_info(w, i);
        if (ts_model_weights_mem_dtype(w, i) != TS_F32 || t->ndim != 2) continue;
        float *d = ts_model_weights_data(w, i);
        for (int64_t j = 0; j < ts_model_tensor_numel(t); j++) d[j] *= 8;
    }
    enum { T = 100 };
    int32_t ids[T];
    for (int i = 0; i < T; i++) ids[i] = 3 + (i * 37 + 11) % 250;
    ts_backend *be;
    ts_backend_cpu_new(2, &be);
    int32_t *one[1] = {ids};
    int64_t len[1] = {T}, start[1] = {0};
    double d = decode_vs_full(w, be, 1, one, len, start, 0, T);
    CHECK(d <= 1e-4, "tiny f32: max difference %.3e", d);
    printf("  tiny preset (hidden 64, f32, optimized backend): %d tokens, max |logit difference| %.2e\n", T, d);
    static const int p1[] = {100}, p2[] = {31, 33, 36}, p3[] = {1, 64, 2, 33}, p4[] = {7};
    const int *pats[] = {p1, p2, p3, p4}, np[] = {1, 3, 4, 1};
    check_extend(w, be, ids, T, pats, np, 4, 1e-4, "extend (tiny f32)");
    test_alone(w, be, ids, T);
    ts_backend_free(be);
    ts_model_weights_free(w);
}

int main(void) {
    test_fixture();
    test_tiny_f32();
    return check_summary("decode");
}
