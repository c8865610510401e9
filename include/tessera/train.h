/* train.h - training. Today this layer holds the MLP demonstration: the smallest complete
 * training run through the engine (graph -> backward -> memory plan -> compute -> SGD), used
 * by `tessera demo` and tests/test_mlp_demo.c to show that the pieces learn together. Below it
 * are the DeepSeek-V4 trainer's building blocks on plain f32 arrays: the AdamW and Muon
 * optimizers with checkpointable state, learning-rate and MTP-weight schedules, gradient
 * clipping and accumulation, and the MoE balancing rules (spec §5); and the model trainer
 * (trainer.c) that puts them together with a model graph and a data loader. */
#ifndef TESSERA_TRAIN_H
#define TESSERA_TRAIN_H

#include "tessera/backend.h"
#include "tessera/data.h"
#include "tessera/graph.h"
#include "tessera/model.h"

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

/* ---------------------------------------------------------------- optimizers (spec §5.3)
 *
 * The DeepSeek-V4 trainer updates every trained tensor with one of two optimizers, as
 * ts_model_walk_tensors' `optim` field says: AdamW (embedding, heads, norms, mHC base/scale,
 * attention sink, compressor ape) or Muon (every other matrix). Both work on plain f32 host
 * arrays: the trainer hands them the parameter and gradient buffers it reads from the graph, in
 * the order the parameters were registered at creation. All state is allocated by the _new
 * function; a step allocates nothing. Hyper-parameters are doubles and per-step scalars are
 * computed in double and rounded to f32 once, as PyTorch does with its Python-float
 * hyper-parameters. Results are bit-identical for any thread count.
 *
 * State for checkpoints: each optimizer lists its state as named f32 buffers (ts_optim_state)
 * that it owns. To save, write data[0..numel) of every buffer; to restore, create an optimizer
 * with the same parameters and copy the saved values into the buffers of the same names.
 * Continuing from restored state is bitwise identical to never having stopped. */

#define TS_OPTIM_STATE_NAME_MAX 128

typedef struct {
    char name[TS_OPTIM_STATE_NAME_MAX]; /* "<param>.exp_avg", "<param>.momentum", "step", ... */
    float *data;                        /* owned by the optimizer */
    int64_t numel;
} ts_optim_state;

/* ---- AdamW, the arithmetic of torch.optim.AdamW on CPU (its foreach and single-tensor paths
 * agree), in f32:
 *   step += 1
 *   p  = p * f32(1 - lr*wd)                              (decoupled weight decay)
 *   m  = lerp(m, g, f32(1 - beta1))                       (as PyTorch's vectorized lerp: one FMA)
 *   v  = v * f32(beta2);  v = fma(f32(1 - beta2) * g, g, v)  (PyTorch's addcmul kernel)
 *   d  = sqrt(v) / f32(sqrt(1 - beta2^step)) + f32(eps)
 *   p  = p + f32(-lr / (1 - beta1^step)) * m / d
 * with lr = the scheduled learning rate x the group's lr_scale (in double). sqrt here is the
 * correctly rounded sqrtf; PyTorch's x86 build takes MKL's, which is an ulp off for ~20 % of
 * inputs. tests/test_optim.c therefore checks bit-identity with PyTorch's ops run with an IEEE
 * sqrt and a few-ulp match with torch.optim.AdamW itself (tests/fixtures/optim/adamw.json). */

typedef struct {
    double lr_scale;     /* multiplies the learning rate passed to ts_adamw_step */
    double beta1, beta2; /* V4 recipe: 0.9, 0.95 */
    double eps;          /* 1e-8 */
    double weight_decay; /* decoupled; 0 = off (norms, biases, scales, sink) */
} ts_adamw_group;

/* The spec §7.2 recipe: lr_scale 1, betas (0.9, 0.95), eps 1e-8, weight decay `weight_decay`. */
ts_adamw_group ts_adamw_group_default(double weight_decay);

typedef struct {
    const char *name; /* copied; names the state buffers (NULL: "param<i>"); at most
                       * TS_OPTIM_STATE_NAME_MAX - 12 characters */
    int64_t numel;    /* > 0 */
    int group;        /* index into the groups array */
} ts_adamw_param;

typedef struct ts_adamw ts_adamw;

/* Copies groups and params; zero moments, step 0. TS_ERR_INVALID_ARG on NULL / bad indices /
 * numel <= 0 / betas outside [0, 1) / eps < 0, TS_ERR_OOM. */
ts_status ts_adamw_new(const ts_adamw_group *groups, int n_groups, const ts_adamw_param *params,
                       int n_params, ts_adamw **out);
void ts_adamw_free(ts_adamw *opt);
/* One step on every parameter: params[i] and grads[i] hold params[i].numel floats (registration
 * order). pool may be NULL. */
ts_status ts_adamw_step(ts_adamw *opt, float *const *params, const float *const *grads, double lr,
                        ts_threadpool *pool);
int64_t ts_adamw_step_count(const ts_adamw *opt);
/* State buffers: "step" (1 float holding the integral step count, as PyTorch keeps it), then
 * "<name>.exp_avg" and "<name>.exp_avg_sq" per parameter. */
int ts_adamw_state_count(const ts_adamw *opt);
ts_status ts_adamw_state_at(ts_adamw *opt, int i, ts_optim_state *out);

/* ---- Muon (spec §5.3, RPT Algorithm 1), for a matrix W [n x m] with gradient G:
 *   M = mu*M + G;   U = G + mu*M  (Nesterov; U = M when nesterov is off)
 *   X = U / (||U||_F + ns_eps), transposed to [m x n] when n > m so that X is wide
 *   10 hybrid Newton-Schulz iterations X = a*X + (b*A + c*A*A)*X, A = X*X^T:
 *     iterations 1-8 (a,b,c) = (3.4445, -4.7750, 2.0315), iterations 9-10 (2, -1.5, 0.5)
 *   O = X (transposed back) * sqrt(max(n, m)) * update_rms   (update RMS = 0.18)
 *   W = W * (1 - lr*wd) - lr * O
 * 3-D expert stacks [E, n, m] are E independent matrices. Norms are accumulated in double; the
 * matrix products are f32 with a fixed summation order (bit-identical for any thread count). */

#define TS_MUON_NS_STEPS_FAST 8   /* iterations with the fast-convergence coefficients */
#define TS_MUON_NS_STEPS_STABLE 2 /* iterations with the singular-value-pinning coefficients */
extern const double ts_muon_ns_fast[3];   /* 3.4445, -4.7750, 2.0315 */
extern const double ts_muon_ns_stable[3]; /* 2, -1.5, 0.5 */

typedef struct {
    double lr_scale;     /* multiplies the learning rate passed to ts_muon_step */
    double momentum;     /* mu = 0.95 */
    bool nesterov;       /* true */
    double weight_decay; /* lambda = 0.1, decoupled */
    double update_rms;   /* gamma = 0.18 */
    double ns_eps;       /* 1e-7, added to the Frobenius norm before dividing */
} ts_muon_group;

/* The spec §5.3 values: lr_scale 1, momentum 0.95 Nesterov, weight decay 0.1, RMS 0.18, eps 1e-7. */
ts_muon_group ts_muon_group_default(void);

typedef struct {
    const char *name;   /* copied; names the state buffers (NULL: "param<i>"); at most
                         * TS_OPTIM_STATE_NAME_MAX - 10 characters */
    int64_t n_matrices; /* 1 for a 2-D weight, E for an [E, rows, cols] expert stack */
    int64_t rows, cols; /* of each matrix, row-major */
    int group;
} ts_muon_param;

typedef struct ts_muon ts_muon;

/* Momentum zeroed; the Newton-Schulz workspace (for the largest matrix) is allocated here. */
ts_status ts_muon_new(const ts_muon_group *groups, int n_groups, const ts_muon_param *params,
                      int n_params, ts_muon **out);
void ts_muon_free(ts_muon *opt);
ts_status ts_muon_step(ts_muon *opt, float *const *params, const float *const *grads, double lr,
                       ts_threadpool *pool);
/* State buffers: "<name>.momentum" per parameter. */
int ts_muon_state_count(const ts_muon *opt);
ts_status ts_muon_state_at(ts_muon *opt, int i, ts_optim_state *out);

/* The orthogonalization alone: X [rows x cols] is replaced by HybridNS(X) (normalization,
 * transpose handling and n_fast + n_stable iterations as above, no RMS scaling). work must
 * hold ts_muon_ns_workspace_floats(rows, cols) floats. Its matrix products use SSE or AVX as
 * the CPU allows, with results identical to plain f32 loops. Exposed for tests and
 * diagnostics. */
int64_t ts_muon_ns_workspace_floats(int64_t rows, int64_t cols);
void ts_muon_newton_schulz(float *x, int64_t rows, int64_t cols, double eps, int n_fast,
                           int n_stable, float *work, ts_threadpool *pool);

/* ---------------------------------------------------------------- schedules (spec §5.4, §7.2)
 *
 * Learning rate as a pure function of the step (counted from 0; the update of step s uses
 * lr(s)). Every kind starts with a linear warm-up: lr(s) = peak * (s + 1) / warmup_steps for
 * s < warmup_steps, so the first update is not wasted and step warmup_steps - 1 runs at peak.
 * After it:
 *   CONSTANT  peak forever;
 *   COSINE    decay from peak at s = warmup_steps to final_lr at s = total_steps:
 *             final + (peak - final) * (1 + cos(pi * p)) / 2, p = (s - warmup) / (total - warmup);
 *   WSD       warm-up, stable at peak, then decay over the last decay_steps =
 *             round(decay_fraction * total_steps) steps, from peak at s = total - decay_steps to
 *             final_lr at s = total_steps, linearly or by the cosine above.
 * Steps at or past total_steps get final_lr (CONSTANT: peak). */

typedef enum { TS_LR_CONSTANT = 0, TS_LR_COSINE, TS_LR_WSD } ts_lr_kind;
typedef enum { TS_LR_DECAY_LINEAR = 0, TS_LR_DECAY_COSINE } ts_lr_decay_shape;

typedef struct {
    ts_lr_kind kind;
    double peak_lr;
    int64_t warmup_steps;          /* 0: start at peak */
    int64_t total_steps;           /* COSINE, WSD: the step at which final_lr is reached */
    double final_lr;               /* COSINE, WSD floor */
    double decay_fraction;         /* WSD: fraction of total_steps spent decaying, (0, 1] */
    ts_lr_decay_shape decay_shape; /* WSD */
} ts_lr_schedule;

/* The spec §7.2 tiny recipe: peak 1e-3, 100 warm-up steps, constant, cosine to 10 % of peak
 * over the last 20 % of total_steps (WSD, cosine decay). */
ts_lr_schedule ts_lr_schedule_tiny(int64_t total_steps);
/* TS_ERR_INVALID_ARG (with a message) when fields are negative, inconsistent or not finite. */
ts_status ts_lr_schedule_validate(const ts_lr_schedule *s, char *err, size_t err_size);
double ts_lr_at(const ts_lr_schedule *s, int64_t step);
/* First step of the decay phase (COSINE: warmup_steps; WSD: total - decay_steps; CONSTANT:
 * INT64_MAX, never). */
int64_t ts_lr_decay_start(const ts_lr_schedule *s);

/* MTP loss weight (spec §5.1): 0.3 until the learning-rate decay starts, 0.1 from then on. */
#define TS_MTP_WEIGHT 0.3
#define TS_MTP_WEIGHT_DURING_DECAY 0.1
double ts_mtp_loss_weight(const ts_lr_schedule *s, int64_t step);

/* ---------------------------------------------------------------- gradients
 *
 * A gradient list is n buffers grads[i] of numels[i] floats, in a fixed order (the trainer's
 * parameter order), which makes every reduction below deterministic. */

/* Global L2 norm: squares summed in double, buffer by buffer, element by element. */
double ts_grad_global_norm(float *const *grads, const int64_t *numels, int n);
/* Clips to max_norm: when the global norm exceeds max_norm (> 0) every gradient is multiplied
 * by f32(max_norm / norm), so the new norm is max_norm up to f32 rounding. Returns the
 * pre-clip norm. A non-finite norm leaves the gradients unchanged (the caller should skip the
 * step). */
double ts_grad_clip_global_norm(float *const *grads, const int64_t *numels, int n, double max_norm);
/* Gradient accumulation over n_micro micro-batches, called once per micro-batch in order:
 * micro 0 copies, the next ones add, and the last one divides the sum by n_micro, leaving the
 * mean gradient in acc. */
ts_status ts_grad_accumulate(float *acc, const float *micro_grad, int64_t numel, int micro,
                             int n_micro);

/* ---------------------------------------------------------------- MoE balancing (spec §5.1-§5.2)
 *
 * Aux-loss-free bias update (V3 rule, used for V4): after each step, for every expert
 *   b_e = b_e + gamma * sign(mean_load - load_e),  load_e = tokens routed to e in the step,
 * sign(0) = 0, gamma 1e-3 (0 at the very end of training). The comparison is exact
 * (load_e * E against the total). Hash-routed layers have no bias. */
#define TS_MOE_BIAS_GAMMA 1e-3
ts_status ts_moe_bias_update(float *bias, const int64_t *load, int n_experts, double gamma);

/* Sequence-wise balance loss for one sequence of T tokens:
 *   f_e = E / (K * T) * #{t : e in topk_t},   P_e = (1/T) * sum_t s_et / sum_e' s_e't,
 *   L = alpha * sum_e f_e * P_e   (alpha 1e-4 in the tiny recipe).
 * scores [T x E] are the router affinities (non-negative, before the bias), topk [T x K] the
 * selected expert ids. f_e counts are constants; grad_scores (may be NULL) receives dL/ds
 * [T x E] (overwritten): alpha / (T * S_t) * (f_e - sum_e' f_e' * s_e't / S_t), S_t = sum_e s_et.
 * Sums in double. TS_ERR_RANGE for an expert id outside [0, E) or a row with S_t <= 0. */
#define TS_MOE_BALANCE_ALPHA 1e-4
ts_status ts_moe_seq_balance_loss(const float *scores, const int32_t *topk, int64_t T, int n_experts,
                                  int k, double alpha, double *loss, float *grad_scores);

/* ---------------------------------------------------------------- the model trainer (trainer.c)
 *
 * One training step of a V4 or dense model, top to bottom: next batch from the loader -> inputs
 * (ids, targets, MTP ids/targets) -> forward + backward on the planned graph -> global-norm
 * clipping (a non-finite norm skips the update) -> learning rate and MTP weight from the schedule
 * -> Muon on the matrices, AdamW on the rest (spec §5.3, model.h's optim field) -> aux-loss-free
 * bias update from the step's expert loads (§5.2). The weights are updated in place; the graph
 * is built and planned once. */

typedef struct {
    int64_t batch, seq;          /* B, T of every step */
    ts_lr_schedule lr;
    double weight_decay;         /* Muon matrices and AdamW embedding / head (0.1) */
    double grad_clip;            /* max global norm (1.0); 0 = off */
    bool adamw_only;             /* AdamW for every tensor (no Muon) */
    bool mtp;                    /* train the MTP block (when the config has one) */
    double balance_alpha;        /* sequence-wise balance loss weight (1e-4); 0 = off */
    double bias_gamma;           /* aux-loss-free bias step (1e-3); 0 = frozen */
    bool dense_csa;              /* CSA always attends to every completed block */
    bool indexer_loss;           /* train the lightning indexer by its KL loss (spec §5.1) */
    int64_t indexer_warmup;      /* steps of the dense stage (CSA dense, indexer learns the dense
                                  * attention) before CSA switches to the indexer's top-k */
} ts_trainer_options;

/* The spec §7.2 recipe for total_steps steps of batch x seq (indexer: dense for the first 20 %). */
void ts_trainer_default_options(ts_trainer_options *o, int64_t batch, int64_t seq, int64_t total_steps);

typedef struct {
    int64_t step;                /* the step just taken (0-based) */
    double loss, lm_loss, mtp_loss, balance_loss, indexer_loss;
    bool dense_csa;              /* the step ran the indexer's dense stage */
    double lr, grad_norm;
    int64_t tokens;              /* non-padding input tokens of the batch */
    double seconds;              /* wall time of the step */
    bool skipped;                /* non-finite gradient: no update */
} ts_train_step_stats;

typedef struct ts_trainer ts_trainer;

/* w must be f32 weights; train yields the batches (batch x seq). The backend runs the graph. */
ts_status ts_trainer_new(ts_model_weights *w, ts_data_loader *train, ts_backend *be, const ts_trainer_options *o,
                         ts_trainer **out, char *err, size_t err_size);
void ts_trainer_free(ts_trainer *tr);
ts_status ts_trainer_step(ts_trainer *tr, ts_train_step_stats *st, char *err, size_t err_size);
/* Mean next-token loss over up to max_batches batches of val (a single-pass loader, rewound
 * first), on a forward-only graph of the same shape. */
ts_status ts_trainer_eval(ts_trainer *tr, ts_data_loader *val, int max_batches, double *loss, char *err,
                          size_t err_size);
int64_t ts_trainer_step_count(const ts_trainer *tr);
/* For checkpoints: the step counter and every optimizer state buffer (AdamW then Muon, as named
 * by ts_adamw_state_at / ts_muon_state_at). Restoring = set the step, copy saved buffers into the
 * ones of the same name. */
void ts_trainer_set_step(ts_trainer *tr, int64_t step);
int ts_trainer_state_count(const ts_trainer *tr);
ts_status ts_trainer_state_at(ts_trainer *tr, int i, ts_optim_state *out);
/* Tokens each expert of MoE layer slot `layer` received in the last step (NULL for a layer
 * without learned routing); n_experts entries. */
const int64_t *ts_trainer_expert_load(const ts_trainer *tr, int layer);
/* The planner's figures for the training graph. */
ts_plan_stats ts_trainer_plan_stats(const ts_trainer *tr);

/* Exact-answer accuracy on the first n_per_task held-out items of each synthetic task (the
 * items ts_synth_evaluate scores), completed greedily in batches by c (synth_eval.c). The
 * completer's max_len must hold BOS + the longest prompt + TS_SYNTH_ANSWER_CAP (80 is enough). */
ts_status ts_synth_evaluate_model(uint64_t seed, int n_per_task, ts_model_completer *c, ts_synth_eval *out,
                                  ts_io_error *err);

#ifdef __cplusplus
}
#endif
#endif
