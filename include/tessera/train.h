/* train.h - training. Today this layer holds the MLP demonstration: the smallest complete
 * training run through the engine (graph -> backward -> memory plan -> compute -> SGD), used
 * by `tessera demo` and tests/test_mlp_demo.c to show that the pieces learn together. Below it
 * are the DeepSeek-V4 trainer's building blocks on plain f32 arrays: the AdamW and Muon
 * optimizers with checkpointable state, learning-rate and MTP-weight schedules, gradient
 * clipping and accumulation, and the MoE balancing rules (spec §5); and the model trainer
 * (trainer.c) that puts them together with a model graph and a data loader. Last, what a run
 * needs around the model: the run config (train_config.c), the run directory with its metrics
 * log and loss plot (run_dir.c, loss_plot.c), the progress line (progress.c) and crash-proof
 * checkpoints with the exact training state (checkpoint.c). */
#ifndef TESSERA_TRAIN_H
#define TESSERA_TRAIN_H

#include <stdio.h>
#include <time.h>

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
/* Spreads the matrices over n_threads threads and allocates their workspaces; ts_muon_step does
 * it on the first step with a pool of another size, so calling it ahead (with the pool's size)
 * only keeps that allocation out of the step. */
ts_status ts_muon_plan(ts_muon *opt, int n_threads);
/* State buffers: "<name>.momentum" per parameter. */
int ts_muon_state_count(const ts_muon *opt);
ts_status ts_muon_state_at(ts_muon *opt, int i, ts_optim_state *out);

/* The orthogonalization alone: X [rows x cols] is replaced by HybridNS(X) (normalization,
 * transpose handling and n_fast + n_stable iterations as above, no RMS scaling). work must
 * hold ts_muon_ns_workspace_floats(rows, cols) floats. Its matrix products are the CPU
 * backend's GEMM (FMA where the CPU has it; the same bits for any thread count). Exposed for
 * tests and diagnostics. */
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
    double mtp_weight;           /* its loss weight before the LR decay (0.3); a third of it after */
    int64_t grad_accum;          /* micro-batches per step (1): their mean gradient is applied */
    double balance_alpha;        /* sequence-wise balance loss weight (1e-4); 0 = off */
    double bias_gamma;           /* aux-loss-free bias step (1e-3); 0 = frozen */
    bool dense_csa;              /* CSA always attends to every completed block */
    bool indexer_loss;           /* train the lightning indexer by its KL loss (spec §5.1) */
    int64_t indexer_warmup;      /* steps of the dense stage (CSA dense, indexer learns the dense
                                  * attention) before CSA switches to the indexer's top-k */
    ts_dtype precision;          /* compute: TS_F32 (default), or TS_BF16 mixed precision (model.h's
                                  * compute_dtype); weights, gradients and optimizer state stay f32 */
    bool recompute;              /* activation recomputation (model.h's recompute): less memory,
                                  * a second forward of the layers in backward */
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
/* The plan of the same training graph without recomputation, planned and not allocated: what
 * the recompute option saves (the trainer's own plan when it does not recompute). */
ts_status ts_trainer_plan_without_recompute(const ts_trainer *tr, ts_plan_stats *out, char *err, size_t err_size);

/* Exact-answer accuracy on the first n_per_task held-out items of each synthetic task (the
 * items ts_synth_evaluate scores), completed greedily in batches by c (synth_eval.c). The
 * completer's max_len must hold BOS + the longest prompt + TS_SYNTH_ANSWER_CAP (80 is enough). */
ts_status ts_synth_evaluate_model(uint64_t seed, int n_per_task, ts_model_completer *c, ts_synth_eval *out,
                                  ts_io_error *err);

/* ---------------------------------------------------------------- run config (train_config.c)
 *
 * Every option of `tessera train` and of the recipe behind it, in one struct. A run's config is
 * built in three layers: the defaults (the spec §7.2 tiny recipe, ts_lr_schedule_tiny), then a
 * JSON file (--config FILE.json: an object whose keys are the field names below), then the
 * command-line flags (the same names with '-' for '_': --save-every 100 or --save-every=100;
 * a boolean flag alone means true). Errors name the key and are one line:
 *   TS_ERR_IO     the JSON file cannot be read;
 *   TS_ERR_FORMAT unknown key or flag, malformed JSON, a value of the wrong type ("steps" must be
 *                 an integer) or that does not parse ("--steps 12x"), a flag without its value;
 *   TS_ERR_RANGE  a value outside its bounds or not one of its choices, or two options that do
 *                 not fit together (warmup_steps >= steps with a decaying schedule).
 * The effective config is saved into the run directory as JSON that loads back to the same
 * struct. */

#define TS_TRAIN_TEXT_MAX 1024 /* room for a path or a prompt, NUL included */

typedef enum { TS_TRAIN_OPTIM_MUON = 0, TS_TRAIN_OPTIM_ADAMW } ts_train_optimizer;

typedef struct {
    /* the CLI's options */
    char model[TS_TRAIN_TEXT_MAX]; /* preset name or config.json path ("tiny") */
    char data[TS_TRAIN_TEXT_MAX];  /* token shard directory; "" = the embedded synthetic tasks */
    int64_t steps;                 /* optimizer steps (1000) */
    int64_t batch, seq;            /* sequences per micro-batch, tokens per sequence (8 x 256) */
    int64_t threads;               /* compute threads; 0 = every core */
    ts_dtype precision;            /* TS_F32 or TS_BF16 compute (f32) */
    uint64_t seed;                 /* weights, data order, synthetic data (1) */
    int64_t save_every;            /* checkpoint every K steps; 0 = only the final one (200) */
    char out[TS_TRAIN_TEXT_MAX];   /* run directory; "" = runs/<YYYYmmdd-HHMMSS> */
    bool resume;                   /* continue from the run directory's latest checkpoint */
    /* the recipe */
    double lr;                     /* peak learning rate (1e-3) */
    double min_lr_ratio;           /* final lr = lr * this (0.1) */
    int64_t warmup_steps;          /* linear warm-up; -1 = min(100, steps / 10), the tiny recipe's
                                    * 100 at 1000 steps (-1, resolved by ts_train_config_check) */
    ts_lr_kind schedule;           /* constant | cosine | wsd (wsd) */
    double decay_fraction;         /* wsd: last fraction of the steps spent decaying (0.2) */
    ts_lr_decay_shape decay_shape; /* wsd: cosine | linear (cosine) */
    double weight_decay;           /* decoupled, Muon matrices and AdamW embedding / head (0.1) */
    double grad_clip;              /* max global gradient norm; 0 = off (1.0) */
    int64_t grad_accum;            /* micro-batches per optimizer step (1) */
    int64_t eval_every;            /* validation every N steps; 0 = never (100) */
    int64_t eval_batches;          /* validation batches per evaluation (8) */
    int64_t keep_last;             /* complete ckpt-<step>/ directories kept (3) */
    int64_t log_every;             /* plain progress lines / metrics rows every N steps (10) */
    ts_train_optimizer optimizer;  /* muon (Muon + AdamW, spec §5.3) | adamw (AdamW only) */
    double mtp_weight;             /* MTP loss weight before the decay phase; 0 = off (0.3) */
    char sample_prompt[TS_TRAIN_TEXT_MAX]; /* completed greedily at each evaluation ("" = none) */
    int64_t sample_tokens;         /* tokens generated for it (32) */
    bool recompute;                /* activation recomputation: less memory, more FLOPs */
} ts_train_config;

void ts_train_config_default(ts_train_config *c);
/* Applies a JSON object's keys on top of c (keys absent from the file keep their value), then
 * checks the whole config. On failure c may be partly updated. */
ts_status ts_train_config_load_json(ts_train_config *c, const char *path, ts_io_error *err);
ts_status ts_train_config_parse_json(ts_train_config *c, const char *json_text, const char *source,
                                     ts_io_error *err);
/* argv[0 .. argc) are the options after `tessera train`. Loads --config (wherever it stands) over
 * c first, then applies the other flags in order, then checks the whole config. */
ts_status ts_train_config_parse_args(ts_train_config *c, int argc, char *const *argv, ts_io_error *err);
/* The cross-field checks the loaders end with (warmup -1 is resolved here). */
ts_status ts_train_config_check(ts_train_config *c, ts_io_error *err);
/* Pretty JSON of every field (malloc'd; NULL when out of memory); it parses back to c. */
char *ts_train_config_to_json(const ts_train_config *c);
/* Writes ts_train_config_to_json atomically to path (the run directory's train_config.json). */
ts_status ts_train_config_save(const ts_train_config *c, const char *path, ts_io_error *err);
/* XXH64 of the options that change the trained numbers (model, data, shapes, seed, precision,
 * the recipe), not of those that only change logging, checkpointing or threads; stored in
 * checkpoints so a resume can tell it continues the same run. */
uint64_t ts_train_config_hash(const ts_train_config *c);
/* The learning-rate schedule the config describes. */
ts_lr_schedule ts_train_config_lr_schedule(const ts_train_config *c);
/* The help text for every option (flag, value, default, meaning), snprintf-style: writes at
 * most cap bytes (NUL included) and returns the full length. */
size_t ts_train_config_help(char *buf, size_t cap);

/* ---------------------------------------------------------------- run directory (run_dir.c)
 *
 * A run lives in one directory: train_config.json, metrics.jsonl, loss.svg, ckpt-<step>/,
 * final/. */

/* Creates the run directory and writes its path to path_out: `out` when it is non-empty
 * (parents created as needed; an existing directory is reused), else
 * <runs_root>/<YYYYmmdd-HHMMSS of `when`, local time> with -2, -3 ... appended when taken.
 * Writability is proven by creating and removing a file in it. TS_ERR_IO with the path and the
 * reason when it cannot be created or written; TS_ERR_RANGE when the path does not fit. */
ts_status ts_run_dir_create(const char *out, const char *runs_root, time_t when, char *path_out, size_t cap,
                            ts_io_error *err);

/* metrics.jsonl: one JSON object per line, flushed per line, so a crash loses at most the line
 * being written (a torn last line is dropped by every reader here). */
typedef struct ts_metrics_log ts_metrics_log;

/* An extra field: n == 1 writes a number, n > 1 an array (per-expert loads...). Non-finite
 * values are written as null (JSON has no NaN). */
typedef struct {
    const char *key;
    const double *values;
    int n;
} ts_metric_extra;

/* One row; loss, lr and tokens_per_s are left out when NaN. */
typedef struct {
    int64_t step;
    double loss, lr, tokens_per_s;
    const ts_metric_extra *extras;
    int n_extras;
} ts_metrics_row;

/* Opens <run_dir>/metrics.jsonl. keep_through_step < 0: a new, empty log. Otherwise (a resumed
 * run) the rows with step <= keep_through_step are kept and later ones (written after the
 * checkpoint the run resumes from) and torn lines are dropped, atomically, before appending. */
ts_status ts_metrics_open(const char *run_dir, int64_t keep_through_step, ts_metrics_log **out, ts_io_error *err);
ts_status ts_metrics_write(ts_metrics_log *m, const ts_metrics_row *row, ts_io_error *err);
const char *ts_metrics_path(const ts_metrics_log *m);
void ts_metrics_close(ts_metrics_log *m);

/* Plots train loss ("loss", a line) and validation loss ("val_loss", dots) against "step" from
 * a metrics.jsonl file into a self-contained SVG (axes, ticks, labels, legend), written
 * atomically. A step logged twice keeps its last row; rows without the fields are skipped; with
 * no points at all the plot says so. log_y: logarithmic loss axis (needs losses > 0; others are
 * left out). */
ts_status ts_loss_plot_write(const char *metrics_path, const char *svg_path, bool log_y, ts_io_error *err);

/* ---------------------------------------------------------------- progress display (progress.c)
 *
 *   step 120/2000 | loss 2.345 | lr 3.0e-4 | 12.3k tok/s | MFU 3.1% | ETA 4m12s
 * redrawn in place with \r on a terminal, or printed as a plain line every log_every steps (and
 * at the last step) when the stream is a file or a pipe. */

typedef struct {
    int64_t step, total_steps; /* step counts from 1 here: "step 1/2000" after the first one */
    double loss, lr;
    double tokens_per_s;       /* NaN: not known yet */
    double eta_seconds;        /* NaN: not known yet */
    double mfu;                /* model FLOP utilization, "| MFU 3.1%" after tok/s (0 or NaN: left out) */
} ts_progress_line;

/* The line above, no newline (snprintf-style return). */
size_t ts_progress_format(const ts_progress_line *p, char *buf, size_t cap);
/* "950", "12.3k", "4.56M", "1.2G" (3 significant digits). */
void ts_format_si(double v, char *buf, size_t cap);
/* "42s", "4m12s", "1h02m", "3d04h"; "--" for NaN or negative. */
void ts_format_duration(double seconds, char *buf, size_t cap);

typedef struct {
    FILE *out;
    bool tty;               /* redraw in place */
    int64_t log_every;      /* plain lines: every N steps */
    int64_t total_steps;
    int64_t first_step;     /* steps already done when this process started (a resume) */
    double t_start;         /* ts_time_seconds() at start */
    double tokens;          /* since start */
    double t_last_draw;
    size_t last_len;        /* of the line on screen, to blank a longer previous one */
    double flops_per_token; /* model FLOPs of a trained token and the machine's peak FLOP/s, */
    double peak_flops;      /* set after ts_progress_init for the MFU (0: no MFU shown) */
} ts_progress;

/* tty: 1 / 0 force the mode, -1 asks isatty(out). */
void ts_progress_init(ts_progress *p, FILE *out, int tty, int64_t log_every, int64_t total_steps,
                      int64_t first_step, double now);
/* After step `step` (1-based, as displayed) which consumed `tokens`; now = ts_time_seconds().
 * Throughput and ETA count only this process's steps. A terminal is redrawn at most 10 times a
 * second (and always at the last step). */
void ts_progress_update(ts_progress *p, int64_t step, double loss, double lr, double tokens, double now);
/* Ends the live line (a newline on a terminal). */
void ts_progress_finish(ts_progress *p);

/* ---------------------------------------------------------------- training checkpoints (checkpoint.c)
 *
 * A checkpoint is a directory <run_dir>/ckpt-<step>/ (or final/):
 *   model.safetensors           the weights (ts_st_write)
 *   config.json                 the model config text
 *   <tokenizer files>           optional, names chosen by the caller
 *   training_state.safetensors  optimizer state tensors (caller-named, "<param>.exp_avg"...) and
 *                               metadata: format_version, step, rng, data_position, lr_schedule,
 *                               tokens_seen, config_hash, plus the caller's own strings
 *   manifest.json               size and XXH64 of every file above; written last: the commit
 * It is built in ckpt-<step>.tmp-<pid>/ (every file fsynced, then the directory), renamed into
 * place and the run directory fsynced, so after a crash a ckpt-<step>/ is either complete or
 * absent. Older ckpt-* directories beyond keep_last are deleted only after the new one is
 * committed. One writer per run directory. */

#define TS_TRAIN_CKPT_FORMAT_VERSION 1

/* The training state besides tensors. */
typedef struct {
    int64_t step;               /* optimizer steps taken */
    ts_rng rng;                 /* the trainer's generator */
    ts_data_position data;      /* where the train loader is (ts_data_loader_position) */
    ts_lr_schedule lr;          /* the schedule in force */
    uint64_t tokens_seen;
    uint64_t config_hash;       /* ts_train_config_hash of the run */
} ts_train_state;

/* A file stored as is (tokenizer.json, ...): a plain name, not one of the reserved ones. */
typedef struct {
    const char *name;
    const void *data;
    size_t size;
} ts_train_ckpt_file;

typedef struct {
    const ts_st_write_tensor *weights;
    size_t n_weights;
    const char *config_json;
    const ts_train_ckpt_file *files;
    size_t n_files;
    const ts_st_write_tensor *optim_state;
    size_t n_optim_state;
    const ts_st_metadata *metadata; /* the caller's strings (keys other than the reserved ones) */
    size_t n_metadata;
    ts_train_state state;
} ts_train_ckpt_contents;

/* Writes <run_dir>/<name>/ (name NULL: "ckpt-<state.step>"; "final" for the end of a run),
 * replacing a committed checkpoint of the same name, then keeps the keep_last newest ckpt-*
 * (keep_last <= 0: keeps all). path_out (may be NULL) receives the directory's path. */
ts_status ts_train_ckpt_save(const char *run_dir, const char *name, const ts_train_ckpt_contents *c,
                             int keep_last, char *path_out, size_t cap, ts_io_error *err);
/* Removes the leftovers of interrupted saves and deletions (<name>.tmp-<pid>/) in run_dir; call
 * once when a run starts, before any writer runs. */
ts_status ts_train_ckpt_clean(const char *run_dir, ts_io_error *err);

/* An opened checkpoint whose manifest verified. */
typedef struct ts_train_ckpt ts_train_ckpt;

/* Opens one checkpoint directory: checks every file against the manifest (size, XXH64), then
 * opens the safetensors files and parses the state. TS_ERR_FORMAT (corrupt, incomplete, bad
 * metadata) / TS_ERR_IO / TS_ERR_UNSUPPORTED (another format version), naming the file. */
ts_status ts_train_ckpt_open(const char *dir, ts_train_ckpt **out, ts_io_error *err);
/* Opens the newest checkpoint of run_dir (ckpt-<step>/ and final/, by step; final first on a
 * tie) that verifies; each one that does not is skipped with a call to warn (may be NULL) saying
 * why. *out is NULL when none is left (a fresh run). */
typedef void (*ts_train_ckpt_warn_fn)(void *user, const char *message);
ts_status ts_train_ckpt_open_latest(const char *run_dir, ts_train_ckpt_warn_fn warn, void *user,
                                    ts_train_ckpt **out, ts_io_error *err);
void ts_train_ckpt_close(ts_train_ckpt *c);
const char *ts_train_ckpt_path(const ts_train_ckpt *c);
const ts_train_state *ts_train_ckpt_state(const ts_train_ckpt *c);
/* The tensors, by name (ts_checkpoint_get / ts_checkpoint_load); owned by c. */
ts_checkpoint *ts_train_ckpt_weights(ts_train_ckpt *c);
ts_checkpoint *ts_train_ckpt_optim_state(ts_train_ckpt *c);
const char *ts_train_ckpt_config_json(const ts_train_ckpt *c);
/* Any training_state metadata value (the caller's own keys included); NULL when absent. */
const char *ts_train_ckpt_metadata(const ts_train_ckpt *c, const char *key);
/* A stored file's bytes (malloc'd, caller frees; verified at open). TS_ERR_FORMAT when the
 * manifest does not list it. */
ts_status ts_train_ckpt_read_file(const ts_train_ckpt *c, const char *name, void **data, size_t *size,
                                  ts_io_error *err);

#ifdef __cplusplus
}
#endif
#endif
