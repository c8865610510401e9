/* train.h - training. Today this layer holds the MLP demonstration: the smallest complete
 * training run through the engine (graph -> backward -> memory plan -> compute -> SGD), used
 * by `tessera demo` and tests/test_mlp_demo.c to show that the pieces learn together. The
 * DeepSeek-V4 trainer (optimizers, schedules, checkpoints, data loader) will live here too. */
#ifndef TESSERA_TRAIN_H
#define TESSERA_TRAIN_H

#include "tessera/graph.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---------------------------------------------------------------- MLP demonstration
 *
 * A 3-layer MLP, 2 -> hidden -> hidden -> n_classes (ReLU between layers), classifies points
 * of a generated 2-D dataset: interleaved spiral arms or concentric rings, one class per arm or
 * ring. Training draws shuffled minibatches from a training set and takes plain SGD steps; a
 * separate held-out set from the same distribution measures generalization. The training graph
 * (forward, backward) and an evaluation graph sharing its parameter storage are each built and
 * planned once, then computed every step. Everything is deterministic for a seed and a thread
 * count. */

typedef enum {
    TS_MLP_DATA_SPIRAL = 0, /* n_classes interleaved spiral arms */
    TS_MLP_DATA_RINGS,      /* n_classes concentric rings */
} ts_mlp_dataset;

struct ts_mlp_demo_result_;
/* Called after every training step with the minibatch loss of that step (steps count from 0). */
typedef void (*ts_mlp_step_fn)(void *user, int step, float loss);
/* Called once, after the graphs are built and planned and before the first step, with the
 * result's n_params, train_plan, train_nodes and backend already filled. */
typedef void (*ts_mlp_ready_fn)(void *user, const struct ts_mlp_demo_result_ *res);

typedef struct {
    ts_mlp_dataset dataset;
    int n_classes;         /* arms or rings, 2..16 */
    int n_train;           /* training points */
    int n_heldout;         /* held-out points, never trained on */
    float noise;           /* std-dev of the Gaussian jitter on each point (data units ~1) */
    int hidden;            /* width of both hidden layers */
    int batch;             /* minibatch rows; the training graph is built for this size */
    int steps;             /* SGD steps */
    float learning_rate;   /* initial; decays linearly to 10% of it over the run */
    uint64_t seed;         /* data, initialization and minibatch order */
    int n_threads;         /* backend threads; <= 0: all cores */
    const char *backend;   /* registry name (ts_backend_registry_find); NULL: the first */
    ts_mlp_ready_fn on_ready; /* may be NULL */
    ts_mlp_step_fn on_step;   /* may be NULL */
    void *user;               /* passed to on_ready and on_step */
} ts_mlp_demo_options;

/* Losses averaged over this many steps at each end of the run, to smooth minibatch noise. */
#define TS_MLP_LOSS_WINDOW 10

typedef struct ts_mlp_demo_result_ {
    float loss_first;          /* mean loss of the first TS_MLP_LOSS_WINDOW steps (fewer if the run is shorter) */
    float loss_last;           /* mean loss of the last TS_MLP_LOSS_WINDOW steps */
    float train_accuracy;      /* fraction of training points classified right, after training */
    float heldout_accuracy;    /* same on the held-out points */
    int64_t n_params;          /* trainable scalars */
    ts_plan_stats train_plan;  /* memory plan of the training graph (forward + backward) */
    int train_nodes;           /* nodes in the training graph */
    double seconds;            /* wall time of the training steps */
    char backend[64];          /* the backend that ran it */
    char error[512];           /* when the run failed: what went wrong */
} ts_mlp_demo_result;

/* The defaults `tessera demo` uses: a 3-arm spiral, hidden 64, a few seconds on 2 cores. */
void ts_mlp_demo_default_options(ts_mlp_demo_options *opts);
/* Checks opts (TS_ERR_INVALID_ARG with res->error saying which field), trains, evaluates.
 * res is always filled (zeroed first). */
ts_status ts_mlp_demo_run(const ts_mlp_demo_options *opts, ts_mlp_demo_result *res);
const char *ts_mlp_dataset_name(ts_mlp_dataset d);
/* "spiral" / "rings" -> *out; TS_ERR_INVALID_ARG when unknown. */
ts_status ts_mlp_dataset_from_name(const char *name, ts_mlp_dataset *out);

#ifdef __cplusplus
}
#endif
#endif
