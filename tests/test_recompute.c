/* test_recompute.c - activation recomputation (ts_set_checkpoint, ts_model_graph_options.recompute):
 * a training graph built with checkpoints at every layer gives the same loss and the same
 * gradient bits as the one without, for a DeepSeek-V4 model with every training loss on (MTP,
 * sequence balance, the indexer's KL) and for the dense baseline, on the optimized CPU backend;
 * and the memory planner's peak is lower. Prints both peaks. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "small_v4.h"
#include "tessera/backend.h"
#include "tessera/model.h"

enum { B = 2, T = 48 };

static ts_model_weights *model(const char *preset, bool shrink) {
    ts_v4_config c;
    if (shrink) small_v4_config(&c, (const int32_t[4]){0, 4, 16, 4}); /* window, CSA, HCA layers; CSA MTP */
    else ts_v4_preset(preset, &c);
    char err[256];
    ts_model_weights *w = NULL;
    if (ts_model_weights_new(&c, TS_F32, &w, err, sizeof err) != TS_OK || ts_model_weights_init(w, 11, err, sizeof err) != TS_OK) {
        CHECK(false, "%s: %s", preset, err);
        ts_model_weights_free(w);
        return NULL;
    }
    return w;
}

/* Builds, allocates and runs one training graph on a fixed batch; NULL on failure. */
static ts_model_graph *run(const ts_model_weights *w, ts_backend *be, ts_model_graph_options o, size_t *peak) {
    char err[512] = "";
    ts_model_graph *mg = NULL;
    ts_plan_stats st = {0};
    if (ts_model_graph_build(w, &o, &mg, err, sizeof err) != TS_OK || ts_model_graph_alloc(mg, be, &st, err, sizeof err) != TS_OK) {
        CHECK(false, "graph (recompute %d): %s", (int)o.recompute, err);
        ts_model_graph_free(mg);
        return NULL;
    }
    *peak = st.arena_bytes;
    int64_t V = ts_model_weights_config(w)->vocab_size;
    int32_t ids[B * T], tg[B * T], mtp_tg[B * T];
    for (int i = 0; i < B * T; i++) ids[i] = (int32_t)((i * 37 + i / 5 + 3) % V);
    for (int i = 0; i < B * T; i++) {
        int t = i % T;
        tg[i] = t + 1 < T ? ids[i + 1] : -1;
        mtp_tg[i] = t + 2 < T ? ids[i + 2] : -1;
    }
    ts_tensor_write(mg->ids, ids, sizeof ids);
    ts_tensor_write(mg->targets, tg, sizeof tg);
    if (mg->mtp_ids) {
        int32_t mids[B * T]; /* the token at t+1 (0 past the end) */
        for (int i = 0; i < B * T; i++) mids[i] = tg[i] < 0 ? 0 : tg[i];
        ts_tensor_write(mg->mtp_ids, mids, sizeof mids);
        ts_tensor_write(mg->mtp_targets, mtp_tg, sizeof mtp_tg);
    }
    ts_status s = ts_graph_compute(mg->graph);
    CHECK(s == TS_OK, "compute (recompute %d): %s", (int)o.recompute, ts_graph_error(mg->graph));
    return mg;
}

static void compare(const char *what, const ts_model_weights *w, ts_model_graph_options o) {
    ts_backend *be;
    ts_backend_cpu_new(2, &be);
    size_t peak[2] = {0, 0};
    ts_model_graph *g[2];
    for (int r = 0; r < 2; r++) {
        o.recompute = r;
        g[r] = run(w, be, o, &peak[r]);
    }
    if (g[0] && g[1]) {
        float l0, l1;
        ts_tensor_read_f32(g[0]->loss, &l0, 1);
        ts_tensor_read_f32(g[1]->loss, &l1, 1);
        int differ = 0, compared = 0;
        for (int i = 0; i < ts_model_weights_count(w); i++) {
            const float *a = ts_model_graph_grad_data(g[0], i), *b = ts_model_graph_grad_data(g[1], i);
            CHECK((a == NULL) == (b == NULL), "%s: weight %s has a gradient in one graph only", what,
                  ts_model_weights_info(w, i)->name);
            if (!a || !b) continue;
            compared++;
            differ += memcmp(a, b, (size_t)ts_model_tensor_numel(ts_model_weights_info(w, i)) * sizeof(float)) != 0;
        }
        CHECK(l0 == l1 && compared > 0 && differ == 0, "%s: loss %.9g vs %.9g, %d of %d gradients differ", what, l0, l1,
              differ, compared);
        CHECK(peak[1] < peak[0], "%s: recomputation did not lower the peak (%zu vs %zu bytes)", what, peak[1], peak[0]);
        printf("%s, batch %d x %d: loss %.6f, %d gradients bit-identical; planned peak %.2f MiB -> %.2f MiB with "
               "recomputation (%.0f%%)\n",
               what, B, T, l0, compared, peak[0] / 1048576.0, peak[1] / 1048576.0, 100.0 * peak[1] / peak[0]);
    }
    ts_model_graph_free(g[0]);
    ts_model_graph_free(g[1]);
    ts_backend_free(be);
}

int main(void) {
    ts_model_weights *v4 = model("tiny", true), *dense = model("dense-tiny", false);
    if (v4)
        compare("V4 (MTP, balance and indexer losses)", v4,
                (ts_model_graph_options){.batch = B, .seq = T, .loss = true, .backward = true, .mtp = true,
                                         .balance_alpha = 0.01, .indexer_loss = true});
    if (dense)
        compare("dense baseline", dense, (ts_model_graph_options){.batch = B, .seq = T, .loss = true, .backward = true});
    ts_model_weights_free(v4);
    ts_model_weights_free(dense);
    return check_summary("recompute");
}
