/* cli_demo.c - `tessera demo`: runs the MLP demonstration (train.h) and narrates it: the model
 * and its memory plan, the minibatch loss every few steps, then how far the loss fell and the
 * accuracy on training and held-out points. It is the project's main job until DeepSeek-V4
 * training lands, and what scripts/quickstart.sh runs. With --compare-backends it trains the
 * same run on the reference kernels ("cpu-ref") and on the optimized ones ("cpu") and prints
 * both step times, the speed-up and how closely the two runs' losses agree. */
#include <math.h>

#include "cli/cli.h"
#include "tessera/backend.h"
#include "tessera/train.h"

typedef struct {
    int every; /* print the loss of every Nth step (and of the last) */
    int steps;
} progress;

static void print_step(void *user, int step, float loss) {
    const progress *p = user;
    if (step % p->every == 0 || step == p->steps - 1) {
        printf("step %5d  loss %.4f\n", step, (double)loss);
        fflush(stdout);
    }
}

static void print_setup(const ts_mlp_demo_options *o) {
    printf("dataset:  %s, %d classes, %d training + %d held-out points, noise %g, seed %llu\n",
           ts_mlp_dataset_name(o->dataset), o->n_classes, o->n_train, o->n_heldout, (double)o->noise,
           (unsigned long long)o->seed);
    printf("model:    MLP 2 -> %d -> %d -> %d (ReLU), cross-entropy loss\n", o->hidden, o->hidden, o->n_classes);
    printf("training: plain SGD, %d steps of batch %d, learning rate %g decaying linearly to %g\n", o->steps,
           o->batch, (double)o->learning_rate, (double)o->learning_rate * 0.1);
    fflush(stdout);
}

static double kib(size_t bytes) { return (double)bytes / 1024.0; }

/* on_ready: the graph and its memory plan, known before the first step runs. */
static void print_plan(void *user, const ts_mlp_demo_result *r) {
    const ts_plan_stats *p = &r->train_plan;
    printf("graph:    %d nodes (forward + backward), %lld parameters, backend %s\n", r->train_nodes,
           (long long)r->n_params, r->backend);
    printf("memory:   planned peak %.1f KiB for %d intermediates (sum of their sizes %.1f KiB; %d reuse an\n"
           "          input in place), plus %.1f KiB of parameters and inputs\n",
           kib(p->arena_bytes), p->n_intermediates, kib(p->naive_bytes), p->n_inplace, kib(p->leaf_bytes));
    fflush(stdout);
}

static void print_result(const ts_mlp_demo_options *o, const ts_mlp_demo_result *r) {
    double factor = r->loss_last > 0 ? (double)r->loss_first / (double)r->loss_last : INFINITY;
    printf("loss:     %.4f -> %.4f (%.1fx lower; means of the first and last %d steps)\n", (double)r->loss_first,
           (double)r->loss_last, factor, TS_MLP_LOSS_WINDOW);
    printf("accuracy: train %.1f%%, held-out %.1f%%\n", 100.0 * r->train_accuracy, 100.0 * r->heldout_accuracy);
    printf("time:     %.2f s for %d steps (%.2f ms/step)\n", r->seconds, o->steps, 1e3 * r->seconds / o->steps);
}

/* The two backends --compare-backends trains on: the oracle first, then the fast tier. */
static const char *const compared_backends[2] = {"cpu-ref", "cpu"};

static double ms_per_step(const ts_mlp_demo_options *o, const ts_mlp_demo_result *r) {
    return 1e3 * r->seconds / o->steps;
}

static void print_compared_run(const ts_mlp_demo_options *o, const ts_mlp_demo_result *r) {
    printf("%-8s  loss %.4f -> %.4f, held-out accuracy %.1f%%, %.2f s for %d steps (%.3f ms/step)\n", r->backend,
           (double)r->loss_first, (double)r->loss_last, 100.0 * r->heldout_accuracy, r->seconds, o->steps,
           ms_per_step(o, r));
    fflush(stdout);
}

/* Trains the same run (same seed, data, threads) on each of compared_backends, quietly, and
 * prints one line per backend, then the speed-up of the second over the first. */
static int compare_backends(ts_mlp_demo_options o) {
    ts_mlp_demo_result res[2];
    o.on_ready = NULL;
    o.on_step = NULL;
    for (int i = 0; i < 2; i++) {
        o.backend = compared_backends[i];
        ts_status s = ts_mlp_demo_run(&o, &res[i]);
        if (s != TS_OK) {
            fprintf(stderr, "tessera demo: %s\n", res[i].error[0] ? res[i].error : ts_status_name(s));
            return CLI_EXIT_FAILURE;
        }
        print_compared_run(&o, &res[i]);
    }
    double ref_ms = ms_per_step(&o, &res[0]), fast_ms = ms_per_step(&o, &res[1]);
    printf("speed-up: %s %.3f ms/step vs %s %.3f ms/step: %.1fx faster\n", compared_backends[1], fast_ms,
           compared_backends[0], ref_ms, fast_ms > 0 ? ref_ms / fast_ms : INFINITY);
    printf("agreement: final losses differ by %.2g (f32 GEMM sums vs the reference's double sums)\n",
           fabs((double)res[1].loss_last - (double)res[0].loss_last));
    return CLI_EXIT_OK;
}

int cli_demo_main(int argc, char **argv) {
    ts_mlp_demo_options o;
    ts_mlp_demo_default_options(&o);
    const char *dataset = ts_mlp_dataset_name(o.dataset);
    int log_every = 0;
    bool compare = false;
    const cli_option options[] = {
        {"--dataset", CLI_OPT_STRING, &dataset, "NAME", "spiral or rings", 0, 0},
        {"--classes", CLI_OPT_INT, &o.n_classes, "N", "spiral arms / rings", 2, 16},
        {"--train", CLI_OPT_INT, &o.n_train, "N", "training points", 1, 1e7},
        {"--heldout", CLI_OPT_INT, &o.n_heldout, "N", "held-out points", 1, 1e7},
        {"--noise", CLI_OPT_FLOAT, &o.noise, "X", "std-dev of the jitter on each point", 0, 10},
        {"--hidden", CLI_OPT_INT, &o.hidden, "N", "width of the two hidden layers", 1, 4096},
        {"--batch", CLI_OPT_INT, &o.batch, "N", "minibatch size", 1, 1e7},
        {"--steps", CLI_OPT_INT, &o.steps, "N", "SGD steps", 1, 1e8},
        {"--lr", CLI_OPT_FLOAT, &o.learning_rate, "X", "initial learning rate", 1e-6, 100},
        {"--seed", CLI_OPT_U64, &o.seed, "N", "seed for data, initialization and batch order", 0, 0},
        {"--threads", CLI_OPT_INT, &o.n_threads, "N", "compute threads, 0 = all cores", 0, 1024},
        {"--backend", CLI_OPT_STRING, &o.backend, "NAME", "backend to train on (see 'tessera info')", 0, 0},
        {"--log-every", CLI_OPT_INT, &log_every, "N", "print the loss every N steps; 0 = about 20 lines", 0, 1e8},
        {"--compare-backends", CLI_OPT_FLAG, &compare, NULL,
         "train the same run on cpu-ref and on cpu and print both step times and the speed-up", 0, 0},
    };
    const cli_spec spec = {
        .command = "demo",
        .summary = "Train a 3-layer MLP to classify points of a generated 2-D dataset (spiral arms or\n"
                   "concentric rings) with plain SGD, printing the loss as it falls and the final accuracy\n"
                   "on training and held-out points. Deterministic for a seed and thread count.",
        .options = options,
        .n_options = (int)(sizeof options / sizeof options[0]),
    };
    int rc = cli_parse(&spec, argc, argv);
    if (rc != CLI_CONTINUE) return rc;
    if (ts_mlp_dataset_from_name(dataset, &o.dataset) != TS_OK)
        return cli_usage_error("demo", "--dataset: '%s' is not spiral or rings", dataset);
    if (o.backend && !ts_backend_registry_find(o.backend))
        return cli_usage_error("demo", "--backend: no backend named '%s' (see 'tessera info')", o.backend);
    if (o.batch > o.n_train) return cli_usage_error("demo", "--batch %d is larger than --train %d", o.batch, o.n_train);

    if (compare) {
        print_setup(&o);
        return compare_backends(o);
    }
    progress prog = {.every = log_every > 0 ? log_every : (o.steps + 19) / 20, .steps = o.steps};
    o.on_ready = print_plan;
    o.on_step = print_step;
    o.user = &prog;
    print_setup(&o);
    ts_mlp_demo_result res;
    ts_status s = ts_mlp_demo_run(&o, &res);
    if (s != TS_OK) {
        fprintf(stderr, "tessera demo: %s\n", res.error[0] ? res.error : ts_status_name(s));
        return CLI_EXIT_FAILURE;
    }
    print_result(&o, &res);
    return CLI_EXIT_OK;
}
