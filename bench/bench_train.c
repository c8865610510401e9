/* bench_train.c - training throughput of a model graph on the CPU backend: the Tessera side of
 * bench/bench_train_pytorch.py (which runs this program and the same model in PyTorch).
 *
 * One step = forward + loss + backward (ts_model_graph_build with backward, planned once) and an
 * AdamW update of every trained tensor (train.h: weight decay 0.1 on matrices, none on norms,
 * lr 1e-3), on batches of a synthetic token stream that has something to learn
 * (x[i+1] = (31·x[i] + 7 + r) mod V, r uniform in {0, 1, 2}), so the losses of the first and
 * last steps show that the steps train. Reports the median step time of --steps timed steps
 * after --warmup untimed ones, and tokens per second = batch·seq / median.
 *
 *   tessera_bench_train [--model PRESET|DIR] [--batch B] [--seq T] [--steps N] [--warmup N]
 *                       [--threads N] [--recompute] [--bf16] [--json]
 *
 * Defaults: dense-small (the 4.3 M comparison shape), batch 8, seq 256, 10 timed steps after 2
 * warm-up steps, every core. --json prints one object: the model's shape ("model", "kind",
 * "vocab", "hidden", "layers", "heads", "head_dim", "intermediate", "tied", "rope_theta",
 * "rms_norm_eps") and the run ("batch", "seq", "threads", "params", "step_s_median",
 * "tokens_per_s", "loss_first", "loss_last", "plan_bytes", "recompute", "precision",
 * "flops_per_token": model.h's training FLOPs of a token, averaged over the sequence - the
 * basis of an MFU, and the same count for any implementation of the model). --recompute checkpoints
 * every layer (activation recomputation: a lower planned arena for about one more forward);
 * --bf16 runs the weight matmuls on bf16 copies into f32 (model.h's compute_dtype). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "tessera/backend.h"
#include "tessera/model.h"
#include "tessera/train.h"

typedef struct {
    const char *model;
    int batch, seq, steps, warmup, threads;
    bool json, recompute, bf16;
} bench_opts;

static void usage(const char *argv0) {
    fprintf(stderr, "usage: %s [--model PRESET|DIR] [--batch B] [--seq T] [--steps N] [--warmup N] [--threads N] [--recompute] [--bf16] [--json]\n",
            argv0);
    exit(2);
}

static bench_opts parse(int argc, char **argv) {
    bench_opts o = {"dense-small", 8, 256, 10, 2, 0, false, false, false};
    struct {
        const char *name;
        int *target, min;
    } ints[] = {{"--batch", &o.batch, 1}, {"--seq", &o.seq, 1},     {"--steps", &o.steps, 1},
                {"--warmup", &o.warmup, 0}, {"--threads", &o.threads, 0}};
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--json") == 0) {
            o.json = true;
            continue;
        }
        if (strcmp(argv[i], "--recompute") == 0 || strcmp(argv[i], "--bf16") == 0) {
            *(strcmp(argv[i], "--bf16") == 0 ? &o.bf16 : &o.recompute) = true;
            continue;
        }
        if (i + 1 >= argc) usage(argv[0]);
        if (strcmp(argv[i], "--model") == 0) {
            o.model = argv[++i];
            continue;
        }
        size_t k = 0;
        while (k < sizeof ints / sizeof *ints && strcmp(argv[i], ints[k].name) != 0) k++;
        if (k == sizeof ints / sizeof *ints) usage(argv[0]);
        char *end;
        long v = strtol(argv[++i], &end, 10);
        if (*end || v < ints[k].min || v > (1 << 20)) usage(argv[0]);
        *ints[k].target = (int)v;
    }
    return o;
}

static void die(const char *what, const char *msg) {
    fprintf(stderr, "tessera_bench_train: %s: %s\n", what, msg);
    exit(1);
}

/* A checkpoint directory is loaded; a preset or config.json is initialised with seed 0. */
static ts_model_weights *load_weights(const char *model) {
    char err[1024] = "";
    ts_model_weights *w = NULL;
    struct stat sb;
    if (stat(model, &sb) == 0 && S_ISDIR(sb.st_mode)) {
        if (ts_model_load(model, TS_F32, &w, err, sizeof err) != TS_OK) die(model, err);
        return w;
    }
    ts_v4_config cfg;
    if (ts_v4_config_resolve(model, &cfg, err, sizeof err) != TS_OK || ts_model_weights_new(&cfg, TS_F32, &w, err, sizeof err) != TS_OK ||
        ts_model_weights_init(w, 0, err, sizeof err) != TS_OK)
        die(model, err);
    return w;
}

/* The trained tensors of the graph, as AdamW parameters with their weight and gradient arrays. */
typedef struct {
    int n;
    ts_adamw_param *params;
    float **weights;
    const float **grads;
    int64_t numel;
} trained_set;

static trained_set collect_trained(const ts_model_weights *w, const ts_model_graph *mg) {
    int nw = ts_model_weights_count(w);
    trained_set s = {0, calloc((size_t)nw, sizeof(ts_adamw_param)), calloc((size_t)nw, sizeof(float *)),
                     calloc((size_t)nw, sizeof(float *)), 0};
    if (!s.params || !s.weights || !s.grads) die("collecting parameters", "out of memory");
    for (int i = 0; i < nw; i++) {
        const float *g = ts_model_graph_grad_data(mg, i);
        if (!g) continue;
        const ts_model_tensor *t = ts_model_weights_info(w, i);
        s.params[s.n] = (ts_adamw_param){t->name, ts_model_tensor_numel(t), t->ndim == 2 ? 0 : 1};
        s.weights[s.n] = ts_model_weights_data(w, i);
        s.grads[s.n++] = g;
        s.numel += ts_model_tensor_numel(t);
    }
    return s;
}

/* Rows of the synthetic stream: ids [B, T] and next-token targets [B, T]. */
static void next_batch(ts_rng *rng, int64_t V, int B, int T, int32_t *ids, int32_t *targets) {
    for (int b = 0; b < B; b++) {
        int64_t x = (int64_t)(ts_rng_next(rng) % (uint64_t)V);
        for (int t = 0; t <= T; t++) {
            if (t < T) ids[b * T + t] = (int32_t)x;
            if (t > 0) targets[b * T + t - 1] = (int32_t)x;
            x = (31 * x + 7 + (int64_t)(ts_rng_next(rng) % 3)) % V;
        }
    }
}

static int cmp_double(const void *x, const void *y) {
    double a = *(const double *)x, b = *(const double *)y;
    return (a > b) - (a < b);
}

int main(int argc, char **argv) {
    bench_opts o = parse(argc, argv);
    int threads = o.threads > 0 ? o.threads : ts_cpu_count();
    ts_model_weights *w = load_weights(o.model);
    const ts_v4_config *c = ts_model_weights_config(w);
    char err[1024] = "";
    ts_model_graph_options go = {.batch = o.batch, .seq = o.seq, .loss = true, .backward = true, .recompute = o.recompute,
                                 .compute_dtype = o.bf16 ? TS_BF16 : TS_F32};
    ts_model_graph *mg = NULL;
    ts_backend *be = NULL;
    ts_threadpool *pool = NULL;
    ts_plan_stats plan;
    if (ts_model_graph_build(w, &go, &mg, err, sizeof err) != TS_OK) die("building the graph", err);
    if (ts_backend_cpu_new(threads, &be) != TS_OK || ts_threadpool_new(threads, &pool) != TS_OK) die("backend", "cannot start");
    if (ts_model_graph_alloc(mg, be, &plan, err, sizeof err) != TS_OK) die("planning", err);

    trained_set ts = collect_trained(w, mg);
    ts_adamw_group groups[2] = {ts_adamw_group_default(0.1), ts_adamw_group_default(0.0)};
    ts_adamw *opt = NULL;
    if (ts_adamw_new(groups, 2, ts.params, ts.n, &opt) != TS_OK) die("AdamW", "cannot create");

    size_t tokens = (size_t)o.batch * (size_t)o.seq;
    int32_t *ids = malloc(tokens * sizeof *ids), *targets = malloc(tokens * sizeof *targets);
    double *times = malloc((size_t)o.steps * sizeof *times);
    if (!ids || !targets || !times) die("buffers", "out of memory");
    ts_rng rng;
    ts_rng_seed(&rng, 1);
    float loss_first = 0, loss_last = 0;
    for (int step = 0; step < o.warmup + o.steps; step++) {
        next_batch(&rng, c->vocab_size, o.batch, o.seq, ids, targets);
        double t0 = ts_time_seconds();
        ts_status s = ts_tensor_write(mg->ids, ids, tokens * sizeof *ids);
        if (s == TS_OK) s = ts_tensor_write(mg->targets, targets, tokens * sizeof *targets);
        if (s == TS_OK) s = ts_graph_compute(mg->graph);
        if (s == TS_OK) s = ts_adamw_step(opt, ts.weights, ts.grads, 1e-3, pool);
        double dt = ts_time_seconds() - t0;
        if (s != TS_OK) die("step", ts_graph_error(mg->graph));
        float loss;
        ts_tensor_read_f32(mg->loss, &loss, 1);
        if (step == 0) loss_first = loss;
        loss_last = loss;
        if (step >= o.warmup) times[step - o.warmup] = dt;
    }
    qsort(times, (size_t)o.steps, sizeof *times, cmp_double);
    double median = o.steps % 2 ? times[o.steps / 2] : 0.5 * (times[o.steps / 2 - 1] + times[o.steps / 2]);
    double tps = (double)tokens / median, flops_per_token = 0;
    if (ts_model_training_flops_per_token(c, o.seq, &flops_per_token) != TS_OK) die("counting FLOPs", "invalid shape");
    if (o.json)
        printf("{\"model\": \"%s\", \"kind\": \"%s\", \"vocab\": %lld, \"hidden\": %lld, \"layers\": %lld, \"heads\": %lld, "
               "\"head_dim\": %lld, \"intermediate\": %lld, \"tied\": %s, \"rope_theta\": %.17g, \"rms_norm_eps\": %.17g, "
               "\"batch\": %d, \"seq\": %d, \"threads\": %d, \"params\": %lld, \"step_s_median\": %.6f, "
               "\"tokens_per_s\": %.1f, \"loss_first\": %.6f, \"loss_last\": %.6f, \"plan_bytes\": %zu, \"recompute\": %s, "
               "\"precision\": \"%s\", \"flops_per_token\": %.0f}\n",
               o.model, ts_model_kind_name(c->kind), (long long)c->vocab_size, (long long)c->hidden_size,
               (long long)c->num_hidden_layers, (long long)c->num_attention_heads, (long long)c->head_dim,
               (long long)c->intermediate_size, c->tie_word_embeddings ? "true" : "false", c->rope_theta, c->rms_norm_eps,
               o.batch, o.seq, threads, (long long)ts.numel, median, tps, loss_first, loss_last, plan.arena_bytes,
               o.recompute ? "true" : "false", o.bf16 ? "bf16" : "f32", flops_per_token);
    else
        printf("tessera %s: batch %d x seq %d, %d threads, %lld trained params, %s compute, planned arena %.1f MiB%s\n"
               "median step %.4f s over %d steps -> %.0f tokens/s (%.1f GFLOP/s of model FLOPs); loss %.4f (step 0) -> "
               "%.4f (step %d)\n",
               o.model, o.batch, o.seq, threads, (long long)ts.numel, o.bf16 ? "bf16" : "f32",
               (double)plan.arena_bytes / (1 << 20),
               o.recompute ? " (recomputation)" : "", median, o.steps, tps, tps * flops_per_token * 1e-9, loss_first, loss_last,
               o.warmup + o.steps - 1);
    free(ids);
    free(targets);
    free(times);
    free(ts.params);
    free(ts.weights);
    free(ts.grads);
    ts_adamw_free(opt);
    ts_threadpool_free(pool);
    ts_model_graph_free(mg);
    ts_backend_free(be);
    ts_model_weights_free(w);
    return 0;
}
