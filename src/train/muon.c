/* muon.c - the Muon optimizer (train.h) as DeepSeek-V4 trains its matrices (spec §5.3, RPT
 * Algorithm 1): Nesterov momentum 0.95, hybrid Newton-Schulz orthogonalization (8 fast + 2
 * stabilizing iterations), update rescaled to RMS 0.18 so that AdamW's learning-rate schedule
 * applies unchanged, decoupled weight decay. AdamW (adamw.c) takes the tensors Muon does not.
 *
 * Cost: Newton-Schulz takes three matrix products per iteration (A = X*X^T, A*A, (bA + cA^2)*X),
 * ~10 * (4*s*s*l + 2*s^3) flops for an s x l matrix (s <= l). For small models at small
 * batches that is several times the forward + backward pass (tiny preset, 4 x 128 tokens: ~50
 * GFLOP against ~14), so the products run on the CPU backend's packed, FMA micro-kernel GEMM
 * (src/backends/cpu/gemm.h) and the matrices are spread over the threads whole: a model has
 * hundreds of small ones (every expert of every layer), each far too small to split well, so
 * a step is one batched computation - a plan made once per thread count deals the matrices out
 * to the threads by cost (longest first, to the least loaded thread), each thread
 * orthogonalizing its share with its own workspace. Only a matrix worth more than a fraction of
 * a thread's share is instead split across the threads inside its products.
 *
 * Determinism: ts_gemm_f32 gives the same bits for any thread count (its contract), every other
 * operation is elementwise or summed in double in index order, and a matrix's result does not
 * depend on which thread computes it - so a step gives identical bits on 1 or N threads. The
 * products use FMA where the CPU's GEMM tier does, so bits may differ between CPU tiers
 * (tests/test_optim.c checks the result against a double-precision reference). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backends/cpu/gemm.h"
#include "train/optim_common.h"
#include "tessera/train.h"

const double ts_muon_ns_fast[3] = {3.4445, -4.7750, 2.0315};
const double ts_muon_ns_stable[3] = {2.0, -1.5, 0.5};

/* Longest state-buffer suffix (".momentum") plus its terminator. */
#define MUON_SUFFIX_MAX 10
/* Elementwise passes: elements per thread below which one thread does it all. */
#define MUON_MIN_CHUNK 16384
/* A matrix costing more than 1/MUON_SPLIT_SHARE of a thread's share of the step is split across
 * the threads inside its products instead of going to one thread whole. */
#define MUON_SPLIT_SHARE 2

/* dst[cols x rows] = src[rows x cols]^T, in 32 x 32 tiles so both sides stay in cache. */
static void transpose(const float *src, int64_t rows, int64_t cols, float *dst) {
    enum { T = 32 };
    for (int64_t i0 = 0; i0 < rows; i0 += T)
        for (int64_t j0 = 0; j0 < cols; j0 += T) {
            int64_t i1 = i0 + T < rows ? i0 + T : rows, j1 = j0 + T < cols ? j0 + T : cols;
            for (int64_t i = i0; i < i1; i++)
                for (int64_t j = j0; j < j1; j++) dst[j * rows + i] = src[i * cols + j];
        }
}

/* ---------------------------------------------------------------- Newton-Schulz */

static double frobenius_norm(const float *x, int64_t n) {
    double sum = 0;
    for (int64_t i = 0; i < n; i++) sum += (double)x[i] * x[i];
    return sqrt(sum);
}

int64_t ts_muon_ns_workspace_floats(int64_t rows, int64_t cols) {
    int64_t s = rows < cols ? rows : cols, l = rows < cols ? cols : rows;
    /* two wide s x l buffers (the iterate ping-pongs between them and x), A, bA + cA^2 */
    return 2 * s * l + 2 * s * s;
}

/* Multiply-adds of one Newton-Schulz iteration (the plan's cost of a matrix). */
static double ns_cost(int64_t rows, int64_t cols) {
    double s = (double)(rows < cols ? rows : cols), l = (double)(rows < cols ? cols : rows);
    return 1.5 * s * s * l + 0.5 * s * s * s; /* the two Gram products are about half-size (sym_gram) */
}

/* C = alpha * Y Y^T + beta * C for Y [n x k] and a symmetric C [n x n] (so is the result):
 * only the blocks on and above the diagonal are multiplied, by row blocks of GRAM_BLOCK, and
 * the rest mirrored - about half the work of the full product for large n. Below
 * GRAM_SPLIT_MIN rows the blocks are too thin to pay and one full product is taken. Each
 * element comes out of one ts_gemm_f32 call either way, so the bits do not depend on the
 * thread count. */
#define GRAM_BLOCK 48      /* 8 of the AVX2 micro-kernel's 6-row tiles */
#define GRAM_SPLIT_MIN 96  /* measured: 64 x 256 is faster whole, 128 x 256 in blocks */
static void sym_gram(ts_threadpool *pool, const float *y, int64_t n, int64_t k, float alpha, float beta, float *c) {
    int64_t block = n < GRAM_SPLIT_MIN ? n : GRAM_BLOCK;
    for (int64_t i0 = 0; i0 < n; i0 += block) {
        int64_t m = n - i0 < block ? n - i0 : block;
        ts_gemm_f32(pool, false, true, m, n - i0, k, alpha, y + i0 * k, k, y + i0 * k, k, beta, c + i0 * n + i0, n);
    }
    for (int64_t i = block; i < n; i++) /* rows of the first block are whole */
        for (int64_t j = 0; j < i; j++) c[i * n + j] = c[j * n + i];
}

/* One iteration on the wide X [s x l] into Y: Y = a*X + (b*A + c*A*A)*X with A = X*X^T (A is
 * symmetric, so A*A = A*A^T is a Gram product too). */
static void ns_iteration(const float *x, float *y, int64_t s, int64_t l, const double coef[3], float *a_mat,
                         float *poly, ts_threadpool *pool) {
    const float a = (float)coef[0], b = (float)coef[1], c = (float)coef[2];
    sym_gram(pool, x, s, l, 1.0f, 0.0f, a_mat); /* A = X X^T */
    memcpy(poly, a_mat, sizeof(float) * (size_t)(s * s));
    sym_gram(pool, a_mat, s, s, c, b, poly); /* bA + cA^2 */
    memcpy(y, x, sizeof(float) * (size_t)(s * l));
    ts_gemm_f32(pool, false, false, s, l, s, 1.0f, poly, s, x, l, a, y, l); /* aX + (bA + cA^2) X */
}

void ts_muon_newton_schulz(float *x, int64_t rows, int64_t cols, double eps, int n_fast,
                           int n_stable, float *work, ts_threadpool *pool) {
    if (!x || !work || rows <= 0 || cols <= 0) return;
    bool tall = rows > cols; /* work on the wide orientation: A is then the small s x s Gram */
    int64_t s = tall ? cols : rows, l = tall ? rows : cols;
    float *buf0 = work, *buf1 = work + s * l, *a_mat = buf1 + s * l, *poly = a_mat + s * s;

    float denom = (float)(frobenius_norm(x, rows * cols) + eps);
    if (denom > 0) /* else x is all zeros (eps 0): the iteration keeps it zero */
        for (int64_t i = 0; i < rows * cols; i++) x[i] = x[i] / denom;
    float *X = x, *Y = buf0;
    if (tall) {
        transpose(x, rows, cols, buf0);
        X = buf0;
        Y = buf1;
    }
    for (int it = 0; it < n_fast + n_stable; it++) {
        ns_iteration(X, Y, s, l, it < n_fast ? ts_muon_ns_fast : ts_muon_ns_stable, a_mat, poly, pool);
        float *t = X;
        X = Y;
        Y = t;
    }
    if (tall) transpose(X, cols, rows, x);
    else if (X != x) memcpy(x, X, sizeof(float) * (size_t)(rows * cols));
}

/* ---------------------------------------------------------------- optimizer state */

typedef struct {
    char *name;
    int64_t n_matrices, rows, cols;
    int group;
    float *momentum;
} muon_param;

/* One matrix of the step: matrix `matrix` of parameter `param`; `index` is its place in
 * ts_muon.tasks (a sorted copy keeps it). */
typedef struct {
    int param, index;
    int64_t matrix;
    double cost;
} muon_task;

/* How a step's matrices are spread over n_threads (made on the first step with a pool of that
 * size, kept until the size changes). */
typedef struct {
    int n_threads;
    int *order;         /* task indices: the split ones first, then thread 0's, thread 1's, ... */
    int n_split;        /* the first n_split of order: split across the threads one by one */
    int *bin_start;     /* [n_threads + 1]: thread t takes order[n_split + bin_start[t] ..] */
    float *work;        /* thread 0's workspace (largest matrix), then one per other thread */
    int64_t work_big, work_small; /* floats of thread 0's and of each other thread's */
} muon_plan;

struct ts_muon {
    int n_groups, n_params, n_tasks;
    ts_muon_group *groups;
    muon_param *params;
    muon_task *tasks;    /* every matrix, by parameter and matrix */
    float *momentum_all; /* every parameter's momentum buffer, one allocation */
    muon_plan plan;
};

ts_muon_group ts_muon_group_default(void) {
    ts_muon_group g = {.lr_scale = 1.0, .momentum = 0.95, .nesterov = true, .weight_decay = 0.1,
                       .update_rms = 0.18, .ns_eps = 1e-7};
    return g;
}

static bool group_is_valid(const ts_muon_group *g) {
    return isfinite(g->lr_scale) && g->lr_scale >= 0 && g->momentum >= 0 && g->momentum < 1 &&
           isfinite(g->weight_decay) && g->weight_decay >= 0 && isfinite(g->update_rms) &&
           g->update_rms > 0 && isfinite(g->ns_eps) && g->ns_eps >= 0;
}

static bool param_is_valid(const ts_muon_param *p, int n_groups) {
    return p->n_matrices > 0 && p->rows > 0 && p->cols > 0 && p->group >= 0 && p->group < n_groups &&
           (!p->name || strlen(p->name) + MUON_SUFFIX_MAX <= TS_OPTIM_STATE_NAME_MAX);
}

/* Floats a thread needs for one matrix: U, then the Newton-Schulz workspace. */
static int64_t task_work_floats(const ts_muon *opt, const muon_task *t) {
    const muon_param *p = &opt->params[t->param];
    return p->rows * p->cols + ts_muon_ns_workspace_floats(p->rows, p->cols);
}

static ts_status make_tasks(ts_muon *opt) {
    int64_t n = 0;
    for (int i = 0; i < opt->n_params; i++) n += opt->params[i].n_matrices;
    if (n > 1 << 30) return TS_ERR_INVALID_ARG;
    opt->n_tasks = (int)n;
    opt->tasks = calloc((size_t)(n ? n : 1), sizeof *opt->tasks);
    if (!opt->tasks) return TS_ERR_OOM;
    int k = 0;
    for (int i = 0; i < opt->n_params; i++)
        for (int64_t e = 0; e < opt->params[i].n_matrices; e++, k++)
            opt->tasks[k] = (muon_task){i, k, e, ns_cost(opt->params[i].rows, opt->params[i].cols)};
    return TS_OK;
}

ts_status ts_muon_new(const ts_muon_group *groups, int n_groups, const ts_muon_param *params,
                      int n_params, ts_muon **out) {
    if (!out) return TS_ERR_INVALID_ARG;
    *out = NULL;
    if (!groups || n_groups <= 0 || n_params < 0 || (!params && n_params > 0)) return TS_ERR_INVALID_ARG;
    for (int g = 0; g < n_groups; g++)
        if (!group_is_valid(&groups[g])) return TS_ERR_INVALID_ARG;
    int64_t total = 0;
    for (int i = 0; i < n_params; i++) {
        if (!param_is_valid(&params[i], n_groups)) return TS_ERR_INVALID_ARG;
        total += params[i].n_matrices * params[i].rows * params[i].cols;
    }

    ts_muon *opt = calloc(1, sizeof *opt);
    if (!opt) return TS_ERR_OOM;
    opt->n_groups = n_groups;
    opt->n_params = n_params;
    opt->groups = malloc(sizeof *opt->groups * (size_t)n_groups);
    opt->params = calloc((size_t)(n_params ? n_params : 1), sizeof *opt->params);
    opt->momentum_all = calloc((size_t)(total + 1), sizeof(float));
    if (!opt->groups || !opt->params || !opt->momentum_all) {
        ts_muon_free(opt);
        return TS_ERR_OOM;
    }
    memcpy(opt->groups, groups, sizeof *groups * (size_t)n_groups);
    float *next = opt->momentum_all;
    for (int i = 0; i < n_params; i++) {
        muon_param *p = &opt->params[i];
        p->name = optim_param_name_copy(params[i].name, i);
        if (!p->name) {
            ts_muon_free(opt);
            return TS_ERR_OOM;
        }
        p->n_matrices = params[i].n_matrices;
        p->rows = params[i].rows;
        p->cols = params[i].cols;
        p->group = params[i].group;
        p->momentum = next;
        next += p->n_matrices * p->rows * p->cols;
    }
    ts_status s = make_tasks(opt);
    if (s == TS_OK) s = ts_muon_plan(opt, 1); /* the single-thread plan (and workspace) up front */
    if (s != TS_OK) {
        ts_muon_free(opt);
        return s;
    }
    *out = opt;
    return TS_OK;
}

static void plan_free(muon_plan *p) {
    free(p->order);
    free(p->bin_start);
    free(p->work);
    memset(p, 0, sizeof *p);
}

void ts_muon_free(ts_muon *opt) {
    if (!opt) return;
    if (opt->params)
        for (int i = 0; i < opt->n_params; i++) free(opt->params[i].name);
    free(opt->params);
    free(opt->groups);
    free(opt->tasks);
    free(opt->momentum_all);
    plan_free(&opt->plan);
    free(opt);
}

/* ---------------------------------------------------------------- the plan */

/* Costliest first; ties by task index, so that the plan is a pure function of the parameters. */
static int by_cost_desc(const void *pa, const void *pb) {
    const muon_task *a = pa, *b = pb;
    if (a->cost != b->cost) return a->cost > b->cost ? -1 : 1;
    return (a->index > b->index) - (a->index < b->index);
}

/* Deals the matrices not split across threads out longest first, each to the least loaded
 * thread, then lays order[] out thread by thread. */
static void deal_out(const muon_task *sorted, int n_sorted, int *owner, int *order, int *bin_start, int n_threads) {
    double load[n_threads];
    int count[n_threads], fill[n_threads];
    for (int t = 0; t < n_threads; t++) load[t] = 0, count[t] = 0;
    for (int k = 0; k < n_sorted; k++) {
        int best = 0;
        for (int t = 1; t < n_threads; t++)
            if (load[t] < load[best]) best = t;
        load[best] += sorted[k].cost;
        owner[k] = best;
        count[best]++;
    }
    bin_start[0] = 0;
    for (int t = 0; t < n_threads; t++) bin_start[t + 1] = bin_start[t] + count[t];
    for (int t = 0; t < n_threads; t++) fill[t] = bin_start[t];
    for (int k = 0; k < n_sorted; k++) order[fill[owner[k]]++] = sorted[k].index;
}

ts_status ts_muon_plan(ts_muon *opt, int n_threads) {
    if (!opt || n_threads < 1 || n_threads > 1024) return TS_ERR_INVALID_ARG;
    if (opt->plan.n_threads == n_threads) return TS_OK;
    int n = opt->n_tasks;
    muon_plan p = {.n_threads = n_threads};
    p.order = malloc(sizeof(int) * (size_t)(n + 1));
    p.bin_start = malloc(sizeof(int) * (size_t)(n_threads + 1));
    muon_task *sorted = malloc(sizeof *sorted * (size_t)(n + 1));
    int *owner = malloc(sizeof(int) * (size_t)(n + 1));
    ts_status s = p.order && p.bin_start && sorted && owner ? TS_OK : TS_ERR_OOM;
    if (s == TS_OK) {
        double total = 0;
        for (int i = 0; i < n; i++) total += opt->tasks[i].cost;
        if (n) memcpy(sorted, opt->tasks, sizeof *sorted * (size_t)n);
        qsort(sorted, (size_t)n, sizeof *sorted, by_cost_desc);
        double split_above = n_threads > 1 ? total / n_threads / MUON_SPLIT_SHARE : INFINITY;
        for (; p.n_split < n && sorted[p.n_split].cost > split_above; p.n_split++) {
            p.order[p.n_split] = sorted[p.n_split].index;
            int64_t need = task_work_floats(opt, &sorted[p.n_split]);
            if (need > p.work_big) p.work_big = need;
        }
        for (int k = p.n_split; k < n; k++) {
            int64_t need = task_work_floats(opt, &sorted[k]);
            if (need > p.work_small) p.work_small = need;
        }
        if (p.work_small > p.work_big) p.work_big = p.work_small;
        deal_out(sorted + p.n_split, n - p.n_split, owner, p.order + p.n_split, p.bin_start, n_threads);
        p.work = malloc(sizeof(float) * (size_t)(p.work_big + (n_threads - 1) * p.work_small + 1));
        if (!p.work) s = TS_ERR_OOM;
    }
    free(sorted);
    free(owner);
    if (s != TS_OK) {
        plan_free(&p);
        return s;
    }
    plan_free(&opt->plan);
    opt->plan = p;
    return TS_OK;
}

/* ---------------------------------------------------------------- the step */

/* M = mu*M + G, and the direction to orthogonalize: U = G + mu*M (Nesterov) or U = M. */
typedef struct {
    float *momentum, *u;
    const float *grad;
    float mu;
    bool nesterov;
} momentum_job;

static void momentum_range(void *ctx, int64_t begin, int64_t end, int thread_id) {
    const momentum_job *j = ctx;
    for (int64_t i = begin; i < end; i++) {
        float m = j->momentum[i] * j->mu + j->grad[i];
        j->momentum[i] = m;
        j->u[i] = j->nesterov ? j->grad[i] + j->mu * m : m;
    }
}

/* W = W * decay - scale * O. */
typedef struct {
    float *w;
    const float *o;
    bool decays;
    float decay, scale;
} apply_job;

static void apply_range(void *ctx, int64_t begin, int64_t end, int thread_id) {
    const apply_job *j = ctx;
    for (int64_t i = begin; i < end; i++) {
        float w = j->decays ? j->w[i] * j->decay : j->w[i];
        j->w[i] = w - j->scale * j->o[i];
    }
}

typedef struct {
    ts_muon *opt;
    float *const *params;
    const float *const *grads;
    double lr;
} step_ctx;

/* The whole update of one matrix, using work (task_work_floats of it); pool NULL when called
 * from inside a thread's share. */
static void update_matrix(const step_ctx *c, int task, float *work, ts_threadpool *pool) {
    const muon_task *t = &c->opt->tasks[task];
    const muon_param *p = &c->opt->params[t->param];
    const ts_muon_group *g = &c->opt->groups[p->group];
    int64_t rows = p->rows, cols = p->cols, n = rows * cols, off = t->matrix * n;
    float *u = work, *ns_work = work + n;
    momentum_job mj = {p->momentum + off, u, c->grads[t->param] + off, (float)g->momentum, g->nesterov};
    ts_parallel_for(pool, n, MUON_MIN_CHUNK, momentum_range, &mj);

    ts_muon_newton_schulz(u, rows, cols, g->ns_eps, TS_MUON_NS_STEPS_FAST, TS_MUON_NS_STEPS_STABLE,
                          ns_work, pool);

    /* O = O' * sqrt(max(n, m)) * gamma gives the update an RMS of gamma (O' has singular
     * values ~1), matching AdamW's typical update size (spec §5.3 step 4). */
    double lr = c->lr * g->lr_scale, rms_scale = sqrt((double)(rows > cols ? rows : cols)) * g->update_rms;
    apply_job aj = {c->params[t->param] + off, u, g->weight_decay != 0, (float)(1.0 - lr * g->weight_decay),
                    (float)(lr * rms_scale)};
    ts_parallel_for(pool, n, MUON_MIN_CHUNK, apply_range, &aj);
}

/* Threads [begin, end) of the plan, each share on the workspace of its thread (a pool that runs
 * the job serially hands all of them to thread 0, which does them one after another). */
static void shares_range(void *ctx, int64_t begin, int64_t end, int thread_id) {
    const step_ctx *c = ctx;
    const muon_plan *p = &c->opt->plan;
    float *work = p->work + (thread_id == 0 ? 0 : p->work_big + (int64_t)(thread_id - 1) * p->work_small);
    for (int64_t t = begin; t < end; t++)
        for (int k = p->bin_start[t]; k < p->bin_start[t + 1]; k++)
            update_matrix(c, p->order[p->n_split + k], work, NULL);
}

ts_status ts_muon_step(ts_muon *opt, float *const *params, const float *const *grads, double lr,
                       ts_threadpool *pool) {
    if (!opt || (opt->n_params > 0 && (!params || !grads)) || !isfinite(lr)) return TS_ERR_INVALID_ARG;
    for (int i = 0; i < opt->n_params; i++)
        if (!params[i] || !grads[i]) return TS_ERR_INVALID_ARG;
    ts_status s = ts_muon_plan(opt, ts_threadpool_size(pool));
    if (s != TS_OK) return s;
    step_ctx c = {opt, params, grads, lr};
    for (int k = 0; k < opt->plan.n_split; k++) update_matrix(&c, opt->plan.order[k], opt->plan.work, pool);
    ts_parallel_for(pool, opt->plan.n_threads, 1, shares_range, &c);
    return TS_OK;
}

/* ---------------------------------------------------------------- state */

int ts_muon_state_count(const ts_muon *opt) { return opt ? opt->n_params : 0; }

ts_status ts_muon_state_at(ts_muon *opt, int i, ts_optim_state *out) {
    if (!opt || !out || i < 0 || i >= opt->n_params) return TS_ERR_INVALID_ARG;
    muon_param *p = &opt->params[i];
    snprintf(out->name, sizeof out->name, "%s.momentum", p->name);
    out->data = p->momentum;
    out->numel = p->n_matrices * p->rows * p->cols;
    return TS_OK;
}
