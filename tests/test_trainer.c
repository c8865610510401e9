/* test_trainer.c - the model trainer (src/train/trainer.c) on a scaled-down V4 (every feature
 * on: mHC, window/CSA/HCA layers with the indexer, hash + learned routing, MTP, balance loss,
 * bias updates) and the embedded synthetic data:
 * 1. the loss falls: the mean LM loss of the last 5 of 40 steps is well below the first step's
 *    and below the data's unigram entropy;
 * 2. exact resume: 2N steps in one go and N steps + a restore of (weights, optimizer state, step,
 *    data position) into a fresh trainer + N steps end with bit-identical weights;
 *    the indexer's dense warm-up stage gives way to the sparse one at 20 % of the steps, and the
 *    resume test crosses that switch after the restore;
 * 3. the expert loads of a learned-routing layer add up to B·T·K and the balancing biases move;
 * 4. greedy completion and the synthetic-task evaluation run end to end (scores in [0, 1]). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "tessera/train.h"

#define B_ 2
#define T_ 32
#define STEPS 40

static char data_dir[64];

static void small_config(ts_v4_config *c) {
    ts_v4_preset("tiny", c);
    c->hidden_size = 64;
    c->num_hidden_layers = 3;
    int32_t ratios[4] = {0, 4, 8, 0};
    memset(c->compress_ratios, 0, sizeof c->compress_ratios);
    memcpy(c->compress_ratios, ratios, sizeof ratios);
    c->num_attention_heads = 2;
    c->head_dim = 32;
    c->qk_rope_head_dim = 16;
    c->q_lora_rank = 32;
    c->o_groups = 2;
    c->o_lora_rank = 16;
    c->n_routed_experts = 4;
    c->num_experts_per_tok = 2;
    c->moe_intermediate_size = 32;
    c->index_n_heads = 2;
    c->index_head_dim = 16;
    c->index_topk = 4;
    c->sliding_window = 8;
}

typedef struct {
    ts_model_weights *w;
    ts_data_loader *loader;
    ts_backend *be;
    ts_trainer *tr;
} rig;

static bool rig_new_with(rig *r, int64_t total_steps, int64_t indexer_warmup, int64_t accum, ts_dtype precision);
static bool rig_new(rig *r, int64_t total_steps, int64_t indexer_warmup) {
    return rig_new_with(r, total_steps, indexer_warmup, 1, TS_F32);
}

static bool rig_new_with(rig *r, int64_t total_steps, int64_t indexer_warmup, int64_t accum, ts_dtype precision) {
    memset(r, 0, sizeof *r);
    ts_v4_config c;
    small_config(&c);
    char err[512] = "";
    ts_status s = ts_model_weights_new(&c, TS_F32, &r->w, err, sizeof err);
    CHECK(s == TS_OK, "weights: %s", err);
    if (s != TS_OK) return false;
    ts_model_weights_init(r->w, 3, err, sizeof err);
    char path[128];
    snprintf(path, sizeof path, "%s/train-00000.tshard", data_dir);
    const char *paths[1] = {path};
    ts_data_loader_options lo;
    ts_data_loader_default_options(&lo, B_, T_, 5);
    ts_io_error ioe;
    CHECK(ts_data_loader_open(paths, 1, &lo, &r->loader, &ioe) == TS_OK, "loader: %s", ioe.message);
    ts_backend_cpu_new(2, &r->be);
    ts_trainer_options o;
    ts_trainer_default_options(&o, B_, T_, total_steps);
    o.lr.warmup_steps = 5;
    o.lr.peak_lr = 3e-3;
    o.bias_gamma = 1e-2;
    if (indexer_warmup >= 0) o.indexer_warmup = indexer_warmup;
    o.grad_accum = accum;
    o.precision = precision;
    s = ts_trainer_new(r->w, r->loader, r->be, &o, &r->tr, err, sizeof err);
    CHECK(s == TS_OK, "trainer: %s", err);
    return s == TS_OK;
}

static void rig_free(rig *r) {
    ts_trainer_free(r->tr);
    ts_data_loader_free(r->loader);
    ts_backend_free(r->be);
    ts_model_weights_free(r->w);
}

static bool step(rig *r, ts_train_step_stats *st) {
    char err[512] = "";
    ts_status s = ts_trainer_step(r->tr, st, err, sizeof err);
    CHECK(s == TS_OK, "step: %s", err);
    return s == TS_OK;
}

static size_t weight_bytes(const ts_model_weights *w, int i) {
    return ts_dtype_bytes(ts_model_weights_mem_dtype(w, i), ts_model_tensor_numel(ts_model_weights_info(w, i)));
}

static void test_learns_and_loads(double unigram_bits) {
    rig r;
    if (!rig_new(&r, STEPS, -1)) return;
    ts_train_step_stats st;
    double first = 0, last = 0;
    float *bias = ts_model_weights_data(r.w, ts_model_weights_find(r.w, "layers.1.ffn.gate.bias"));
    for (int i = 0; i < STEPS && step(&r, &st); i++) {
        if (i == 0) first = st.lm_loss;
        CHECK(st.dense_csa == (i < STEPS / 5), "step %d ran the %s indexer stage", i, st.dense_csa ? "dense" : "sparse");
        CHECK(st.indexer_loss > 0 && isfinite(st.indexer_loss), "step %d: indexer loss %g", i, st.indexer_loss);
        if (i >= STEPS - 5) last += st.lm_loss / 5;
        CHECK(isfinite(st.loss) && !st.skipped, "step %d: loss %g", i, st.loss);
    }
    double last_bits = last / log(2.0);
    CHECK(last < 0.6 * first, "LM loss %.3f -> %.3f: not learning", first, last);
    CHECK(last_bits < unigram_bits, "LM loss %.3f bits is not below the unigram entropy %.3f bits", last_bits,
          unigram_bits);
    printf("  LM loss %.3f -> %.3f nats (%.3f bits/token; unigram entropy %.3f bits) in %d steps\n", first, last,
           last_bits, unigram_bits, STEPS);

    const ts_v4_config *c = ts_model_weights_config(r.w);
    const int64_t *load = ts_trainer_expert_load(r.tr, 1);
    CHECK(load != NULL && ts_trainer_expert_load(r.tr, 0) == NULL, "layer 1 has loads, hash layer 0 none");
    if (load) {
        int64_t sum = 0;
        for (int e = 0; e < c->n_routed_experts; e++) sum += load[e];
        CHECK(sum == B_ * T_ * c->num_experts_per_tok, "expert loads sum to %lld", (long long)sum);
    }
    double moved = 0;
    for (int e = 0; e < c->n_routed_experts; e++) moved += fabs(bias[e]);
    CHECK(moved > 0, "the balancing biases never moved");

    /* greedy completion + the synthetic evaluation, end to end */
    ts_model_completer *cp = NULL;
    char err[512] = "";
    ts_status s = ts_model_completer_new(r.w, r.be, 7, 80, &cp, err, sizeof err);
    CHECK(s == TS_OK, "completer: %s", err);
    if (s == TS_OK) {
        ts_synth_eval ev;
        ts_io_error ioe;
        s = ts_synth_evaluate_model(1, 1, cp, &ev, &ioe);
        CHECK(s == TS_OK, "evaluate: %s", ioe.message);
        CHECK(s != TS_OK || (ev.total == 7 && ev.overall >= 0 && ev.overall <= 1), "evaluation counts");
    }
    ts_model_completer_free(cp);
    rig_free(&r);
}

/* Everything a checkpoint holds, copied in memory. */
typedef struct {
    void **weights;
    float **state;
    int n_state;
    int64_t step;
    ts_data_position pos;
} snapshot;

static void take(const rig *r, snapshot *sn) {
    int n = ts_model_weights_count(r->w);
    sn->weights = calloc((size_t)n, sizeof *sn->weights);
    for (int i = 0; i < n; i++) {
        sn->weights[i] = malloc(weight_bytes(r->w, i));
        memcpy(sn->weights[i], ts_model_weights_data(r->w, i), weight_bytes(r->w, i));
    }
    sn->n_state = ts_trainer_state_count(r->tr);
    sn->state = calloc((size_t)sn->n_state, sizeof *sn->state);
    for (int i = 0; i < sn->n_state; i++) {
        ts_optim_state os;
        ts_trainer_state_at(r->tr, i, &os);
        sn->state[i] = malloc((size_t)os.numel * sizeof(float));
        memcpy(sn->state[i], os.data, (size_t)os.numel * sizeof(float));
    }
    sn->step = ts_trainer_step_count(r->tr);
    ts_data_loader_position(r->loader, &sn->pos);
}

static void restore(rig *r, const snapshot *sn) {
    for (int i = 0; i < ts_model_weights_count(r->w); i++)
        memcpy(ts_model_weights_data(r->w, i), sn->weights[i], weight_bytes(r->w, i));
    CHECK(ts_trainer_state_count(r->tr) == sn->n_state, "state count");
    for (int i = 0; i < sn->n_state; i++) {
        ts_optim_state os;
        ts_trainer_state_at(r->tr, i, &os);
        memcpy(os.data, sn->state[i], (size_t)os.numel * sizeof(float));
    }
    ts_trainer_set_step(r->tr, sn->step);
    ts_io_error ioe;
    CHECK(ts_data_loader_seek(r->loader, &sn->pos, &ioe) == TS_OK, "seek: %s", ioe.message);
}

static void snapshot_free(snapshot *sn, int n_weights) {
    for (int i = 0; i < n_weights; i++) free(sn->weights[i]);
    for (int i = 0; i < sn->n_state; i++) free(sn->state[i]);
    free(sn->weights);
    free(sn->state);
}

static void test_exact_resume(ts_dtype precision) {
    const int N = 4;
    rig a, b; /* stage switch after the resume */
    if (!rig_new_with(&a, 2 * N, N + 2, 1, precision) || !rig_new_with(&b, 2 * N, N + 2, 1, precision)) return;
    ts_train_step_stats st;
    for (int i = 0; i < N; i++) step(&a, &st);
    snapshot sn;
    take(&a, &sn);
    for (int i = 0; i < N; i++) step(&a, &st);
    restore(&b, &sn); /* a fresh trainer, as a new process would have */
    for (int i = 0; i < N; i++) step(&b, &st);
    int differ = 0;
    for (int i = 0; i < ts_model_weights_count(a.w); i++)
        differ += memcmp(ts_model_weights_data(a.w, i), ts_model_weights_data(b.w, i), weight_bytes(a.w, i)) != 0;
    CHECK(differ == 0, "%d tensors differ between 2N steps and N + resume + N", differ);
    printf("  %s resume after %d of %d steps: weights bit-identical (%d tensors)\n", ts_dtype_name(precision), N, 2 * N,
           ts_model_weights_count(a.w));
    snapshot_free(&sn, ts_model_weights_count(a.w));
    rig_free(&a);
    rig_free(&b);
}

/* Mixed precision learns like f32: the same run in bf16 compute ends within a few percent of
 * f32's LM loss, and not bit-equal to it (the casts happened). */
static void test_bf16_learns(void) {
    rig r[2];
    double first[2] = {0}, last[2] = {0};
    for (int k = 0; k < 2; k++) {
        if (!rig_new_with(&r[k], STEPS, -1, 1, k ? TS_BF16 : TS_F32)) return;
        ts_train_step_stats st;
        for (int i = 0; i < STEPS && step(&r[k], &st); i++) {
            if (i == 0) first[k] = st.lm_loss;
            if (i >= STEPS - 5) last[k] += st.lm_loss / 5;
        }
        rig_free(&r[k]);
    }
    CHECK(last[1] < 0.6 * first[1], "bf16: LM loss %.3f -> %.3f: not learning", first[1], last[1]);
    CHECK(fabs(last[1] - last[0]) < 0.05 * last[0] && last[1] != last[0], "LM loss after %d steps: bf16 %.4f, f32 %.4f",
          STEPS, last[1], last[0]);
    printf("  bf16 compute: LM loss %.3f -> %.4f (f32: %.3f -> %.4f) in %d steps\n", first[1], last[1], first[0], last[0],
           STEPS);
}

/* Gradient accumulation: a step consumes grad_accum batches and reports their mean loss. */
static void test_accumulation(void) {
    rig r;
    if (!rig_new_with(&r, 20, -1, 3, TS_F32)) return;
    ts_train_step_stats st;
    if (step(&r, &st)) {
        CHECK(st.tokens > 2 * B_ * T_ && st.tokens <= 3 * B_ * T_, "3 micro-batches counted %lld tokens", (long long)st.tokens);
        CHECK(isfinite(st.loss) && !st.skipped, "accumulated step: loss %g", st.loss);
    }
    rig_free(&r);
}

int main(void) {
    snprintf(data_dir, sizeof data_dir, "/tmp/ts_trainer_%d", (int)getpid());
    ts_synth_options so;
    ts_synth_default_options(&so);
    so.n_train = 3000;
    so.n_val = 70;
    ts_synth_stats ss;
    ts_io_error ioe;
    if (ts_synth_write_shards(data_dir, &so, &ss, &ioe) != TS_OK) {
        fprintf(stderr, "synthetic data: %s\n", ioe.message);
        return 1;
    }
    test_learns_and_loads(ss.unigram_bits);
    test_exact_resume(TS_F32);
    test_exact_resume(TS_BF16);
    test_bf16_learns();
    test_accumulation();
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", data_dir);
    CHECK(system(cmd) == 0, "cleanup");
    return check_summary("trainer");
}
