/* muon.c - the Muon optimizer (train.h) as DeepSeek-V4 trains its matrices (spec §5.3, RPT
 * Algorithm 1): Nesterov momentum 0.95, hybrid Newton-Schulz orthogonalization (8 fast + 2
 * stabilizing iterations), update rescaled to RMS 0.18 so that AdamW's learning-rate schedule
 * applies unchanged, decoupled weight decay. AdamW (adamw.c) takes the tensors Muon does not.
 *
 * Newton-Schulz needs three matrix products per iteration (A = X*X^T, A*A, (bA + cA^2)*X) on
 * matrices up to a few thousand wide, so this file carries its own cache-blocked,
 * register-tiled f32 matrix product. The project's fast GEMM (src/backends/cpu/gemm.h,
 * ts_gemm_f32) is internal to the CPU backend and was still being written when this was; once
 * it is finished and exported, gemm_nn below can call it instead (keeping the guarantee that
 * results do not depend on the thread count).
 *
 * Determinism: every element of a product is summed over k in ascending order by one thread
 * with separately rounded multiplies and adds (tests/test_optim.c checks the result against
 * plain triple loops bit for bit), and norms are summed in double in index order, so a step
 * gives identical bits on 1 or N threads and on SSE or AVX machines. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "train/optim_common.h"
#include "tessera/train.h"

const double ts_muon_ns_fast[3] = {3.4445, -4.7750, 2.0315};
const double ts_muon_ns_stable[3] = {2.0, -1.5, 0.5};

/* Longest state-buffer suffix (".momentum") plus its terminator. */
#define MUON_SUFFIX_MAX 10
/* Elementwise passes: elements per thread below which one thread does it all. */
#define MUON_MIN_CHUNK 16384

/* ---------------------------------------------------------------- matrix product */

/* C[M x N] = A[M x K] * B[K x N], all row-major with row strides lda, ldb, ldc, in the
 * GotoBLAS shape: for each GEMM_KC x GEMM_NC block of B (C holds the partial sums between k
 * blocks), the block is packed into GEMM_NR-wide column strips, each k-major and contiguous
 * (B's rows are often 2 or 4 KiB apart, which would make every k of a strip hit the same L1
 * set); then the threads take the rows of C four at a time, pack their A rows k-major and
 * update 4 x 16 tiles of C held in registers.
 *
 * The per-element arithmetic is c = c + a*b for k ascending, a separately rounded f32 multiply
 * and add, on every path: full tile or edge, 4-wide SSE or 8-wide AVX (chosen at run time; no
 * FMA, which would round differently - the AVX target leaves FMA out and the build's ISO C
 * mode does not contract a*b + c). So no element's value depends on the thread count, on
 * which thread computed it, or on the CPU's vector width. */
#define GEMM_MR 4
#define GEMM_NR 16
#define GEMM_KC 256
#define GEMM_NC 512
#define GEMM_PACK_FLOATS ((int64_t)GEMM_KC * GEMM_NC)
/* Multiply-adds a thread must get before the product is split over threads. */
#define GEMM_MIN_FMAS_PER_THREAD 65536

typedef float v4f __attribute__((vector_size(16)));

static inline v4f load4(const float *p) {
    v4f v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline void store4(float *p, v4f v) { memcpy(p, &v, sizeof v); }

/* tile[r][j] (+)= sum_k apack[k*MR + r] * bpack[k*NR + j] for the 4 x 16 tile (row stride
 * ldt), 8 columns at a time so that the 8 accumulators fit the 16 SSE registers. */
static void micro_tile_sse(int64_t kc, const float *apack, const float *bpack, float *tile, int64_t ldt,
                           bool first) {
    for (int half = 0; half < GEMM_NR / 8; half++) {
        float *t = tile + 8 * half;
        const float *bp = bpack + 8 * half;
        v4f acc[GEMM_MR][2];
        for (int r = 0; r < GEMM_MR; r++) {
            acc[r][0] = first ? (v4f){0, 0, 0, 0} : load4(t + r * ldt);
            acc[r][1] = first ? (v4f){0, 0, 0, 0} : load4(t + r * ldt + 4);
        }
        for (int64_t k = 0; k < kc; k++) {
            v4f b0 = load4(bp + k * GEMM_NR), b1 = load4(bp + k * GEMM_NR + 4);
            const float *a = apack + k * GEMM_MR;
            for (int r = 0; r < GEMM_MR; r++) {
                v4f ar = (v4f){a[r], a[r], a[r], a[r]};
                acc[r][0] = acc[r][0] + ar * b0;
                acc[r][1] = acc[r][1] + ar * b1;
            }
        }
        for (int r = 0; r < GEMM_MR; r++) {
            store4(t + r * ldt, acc[r][0]);
            store4(t + r * ldt + 4, acc[r][1]);
        }
    }
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define GEMM_HAVE_AVX 1
#include "tessera/cpu.h"

typedef float v8f __attribute__((vector_size(32)));

/* The same tile with 8-wide AVX vectors (compiled for AVX whatever the build flags; called
 * only when the CPU and OS support it). */
__attribute__((target("avx"))) static void micro_tile_avx(int64_t kc, const float *apack, const float *bpack,
                                                          float *tile, int64_t ldt, bool first) {
    v8f acc[GEMM_MR][2];
    for (int r = 0; r < GEMM_MR; r++)
        for (int v = 0; v < 2; v++) {
            if (first) acc[r][v] = (v8f){0, 0, 0, 0, 0, 0, 0, 0};
            else memcpy(&acc[r][v], tile + r * ldt + 8 * v, sizeof(v8f));
        }
    for (int64_t k = 0; k < kc; k++) {
        v8f b0, b1;
        memcpy(&b0, bpack + k * GEMM_NR, sizeof b0);
        memcpy(&b1, bpack + k * GEMM_NR + 8, sizeof b1);
        const float *a = apack + k * GEMM_MR;
        for (int r = 0; r < GEMM_MR; r++) {
            v8f ar = (v8f){a[r], a[r], a[r], a[r], a[r], a[r], a[r], a[r]};
            acc[r][0] = acc[r][0] + ar * b0;
            acc[r][1] = acc[r][1] + ar * b1;
        }
    }
    for (int r = 0; r < GEMM_MR; r++)
        for (int v = 0; v < 2; v++) memcpy(tile + r * ldt + 8 * v, &acc[r][v], sizeof(v8f));
}
#endif

typedef void (*micro_tile_fn)(int64_t kc, const float *apack, const float *bpack, float *tile, int64_t ldt,
                              bool first);

static micro_tile_fn micro_tile_pick(void) {
#ifdef GEMM_HAVE_AVX
    if (ts_cpu_features_get()->avx) return micro_tile_avx;
#endif
    return micro_tile_sse;
}

/* A partial tile (fewer rows or columns) goes through a local full-size copy; the arithmetic
 * on the valid elements is unchanged. */
static void micro_edge(micro_tile_fn micro, int64_t kc, const float *apack, const float *bpack, float *c,
                       int64_t ldc, int rows, int cols, bool first) {
    float tile[GEMM_MR * GEMM_NR] = {0};
    for (int r = 0; r < rows && !first; r++) memcpy(tile + r * GEMM_NR, c + r * ldc, sizeof(float) * (size_t)cols);
    micro(kc, apack, bpack, tile, GEMM_NR, first);
    for (int r = 0; r < rows; r++) memcpy(c + r * ldc, tile + r * GEMM_NR, sizeof(float) * (size_t)cols);
}

/* B[k0.., j0..] (kc x nc) -> strips of GEMM_NR columns, strip s at pack + s*kc*NR, element
 * (k, j) at [k*NR + j]; columns past nc are zero. */
static void pack_b(const float *b, int64_t ldb, int64_t kc, int64_t nc, float *pack) {
    for (int64_t j0 = 0; j0 < nc; j0 += GEMM_NR) {
        int64_t w = nc - j0 < GEMM_NR ? nc - j0 : GEMM_NR;
        float *strip = pack + j0 * kc;
        for (int64_t k = 0; k < kc; k++) {
            const float *row = b + k * ldb + j0;
            for (int64_t j = 0; j < GEMM_NR; j++) strip[k * GEMM_NR + j] = j < w ? row[j] : 0.0f;
        }
    }
}

typedef struct {
    int64_t M, kc, nc;
    const float *A; /* at column k0 */
    int64_t lda;
    const float *bpack;
    float *C; /* at column j0 */
    int64_t ldc;
    bool first;
    micro_tile_fn micro;
} gemm_block_job;

/* Rows [4*q0, 4*q1) of C against the packed B block. */
static void gemm_block_quads(void *ctx, int64_t q0, int64_t q1, int thread_id) {
    const gemm_block_job *g = ctx;
    float apack[GEMM_KC * GEMM_MR];
    for (int64_t q = q0; q < q1; q++) {
        int64_t i = q * GEMM_MR;
        int rows = g->M - i < GEMM_MR ? (int)(g->M - i) : GEMM_MR;
        for (int64_t k = 0; k < g->kc; k++) /* missing rows are zero and never stored */
            for (int r = 0; r < GEMM_MR; r++) apack[k * GEMM_MR + r] = r < rows ? g->A[(i + r) * g->lda + k] : 0.0f;
        float *c = g->C + i * g->ldc;
        for (int64_t j = 0; j < g->nc; j += GEMM_NR) {
            int cols = g->nc - j < GEMM_NR ? (int)(g->nc - j) : GEMM_NR;
            const float *strip = g->bpack + j * g->kc;
            if (rows == GEMM_MR && cols == GEMM_NR)
                g->micro(g->kc, apack, strip, c + j, g->ldc, g->first);
            else
                micro_edge(g->micro, g->kc, apack, strip, c + j, g->ldc, rows, cols, g->first);
        }
    }
}

/* bpack holds GEMM_PACK_FLOATS floats. */
static void gemm_nn(ts_threadpool *pool, int64_t M, int64_t N, int64_t K, const float *A, int64_t lda,
                    const float *B, int64_t ldb, float *C, int64_t ldc, float *bpack) {
    int64_t quads = (M + GEMM_MR - 1) / GEMM_MR;
    micro_tile_fn micro = micro_tile_pick();
    for (int64_t k0 = 0; k0 < K; k0 += GEMM_KC) {
        int64_t kc = K - k0 < GEMM_KC ? K - k0 : GEMM_KC;
        for (int64_t j0 = 0; j0 < N; j0 += GEMM_NC) {
            int64_t nc = N - j0 < GEMM_NC ? N - j0 : GEMM_NC;
            pack_b(B + k0 * ldb + j0, ldb, kc, nc, bpack);
            gemm_block_job g = {M, kc, nc, A + k0, lda, bpack, C + j0, ldc, k0 == 0, micro};
            int64_t fmas_per_quad = GEMM_MR * kc * nc;
            int64_t min_quads = (GEMM_MIN_FMAS_PER_THREAD + fmas_per_quad - 1) / fmas_per_quad;
            ts_parallel_for(pool, quads, min_quads, gemm_block_quads, &g);
        }
    }
}

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
    /* X (when transposed), X^T then B*X, A, A*A, the packed B block of the products */
    return 2 * s * l + 2 * s * s + GEMM_PACK_FLOATS;
}

/* One iteration on the wide X [s x l]: X = a*X + (b*A + c*A*A)*X with A = X*X^T. */
static void ns_iteration(float *x, int64_t s, int64_t l, const double coef[3], float *xt_or_y,
                         float *a_mat, float *a2, float *bpack, ts_threadpool *pool) {
    const float a = (float)coef[0], b = (float)coef[1], c = (float)coef[2];
    transpose(x, s, l, xt_or_y);
    gemm_nn(pool, s, s, l, x, l, xt_or_y, s, a_mat, s, bpack); /* A = X X^T */
    gemm_nn(pool, s, s, s, a_mat, s, a_mat, s, a2, s, bpack);  /* A^2 */
    for (int64_t i = 0; i < s * s; i++) a2[i] = b * a_mat[i] + c * a2[i];
    float *y = xt_or_y;                                        /* X^T is no longer needed */
    gemm_nn(pool, s, l, s, a2, s, x, l, y, l, bpack);          /* (bA + cA^2) X */
    for (int64_t i = 0; i < s * l; i++) x[i] = a * x[i] + y[i];
}

void ts_muon_newton_schulz(float *x, int64_t rows, int64_t cols, double eps, int n_fast,
                           int n_stable, float *work, ts_threadpool *pool) {
    if (!x || !work || rows <= 0 || cols <= 0) return;
    bool tall = rows > cols; /* work on the wide orientation: A is then the small s x s Gram */
    int64_t s = tall ? cols : rows, l = tall ? rows : cols;
    float *xt_or_y = work, *a_mat = work + s * l, *a2 = a_mat + s * s, *wide = a2 + s * s;
    float *bpack = wide + s * l;

    float denom = (float)(frobenius_norm(x, rows * cols) + eps);
    if (denom > 0) /* else x is all zeros (eps 0): the iteration keeps it zero */
        for (int64_t i = 0; i < rows * cols; i++) x[i] = x[i] / denom;
    float *X = x;
    if (tall) {
        transpose(x, rows, cols, wide);
        X = wide;
    }
    for (int it = 0; it < n_fast + n_stable; it++)
        ns_iteration(X, s, l, it < n_fast ? ts_muon_ns_fast : ts_muon_ns_stable, xt_or_y, a_mat, a2, bpack, pool);
    if (tall) transpose(wide, cols, rows, x);
}

/* ---------------------------------------------------------------- optimizer state */

typedef struct {
    char *name;
    int64_t n_matrices, rows, cols;
    int group;
    float *momentum;
} muon_param;

struct ts_muon {
    int n_groups, n_params;
    ts_muon_group *groups;
    muon_param *params;
    float *momentum_all; /* every parameter's momentum buffer, one allocation */
    float *work;         /* U for one matrix + the Newton-Schulz workspace, sized for the largest */
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

ts_status ts_muon_new(const ts_muon_group *groups, int n_groups, const ts_muon_param *params,
                      int n_params, ts_muon **out) {
    if (!out) return TS_ERR_INVALID_ARG;
    *out = NULL;
    if (!groups || n_groups <= 0 || n_params < 0 || (!params && n_params > 0)) return TS_ERR_INVALID_ARG;
    for (int g = 0; g < n_groups; g++)
        if (!group_is_valid(&groups[g])) return TS_ERR_INVALID_ARG;
    int64_t total = 0, work = 0;
    for (int i = 0; i < n_params; i++) {
        if (!param_is_valid(&params[i], n_groups)) return TS_ERR_INVALID_ARG;
        int64_t per_matrix = params[i].rows * params[i].cols;
        total += params[i].n_matrices * per_matrix;
        int64_t need = per_matrix + ts_muon_ns_workspace_floats(params[i].rows, params[i].cols);
        if (need > work) work = need;
    }

    ts_muon *opt = calloc(1, sizeof *opt);
    if (!opt) return TS_ERR_OOM;
    opt->n_groups = n_groups;
    opt->n_params = n_params;
    opt->groups = malloc(sizeof *opt->groups * (size_t)n_groups);
    opt->params = calloc((size_t)(n_params ? n_params : 1), sizeof *opt->params);
    opt->momentum_all = calloc((size_t)(total + 1), sizeof(float));
    opt->work = malloc(sizeof(float) * (size_t)(work + 1));
    if (!opt->groups || !opt->params || !opt->momentum_all || !opt->work) {
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
    *out = opt;
    return TS_OK;
}

void ts_muon_free(ts_muon *opt) {
    if (!opt) return;
    if (opt->params)
        for (int i = 0; i < opt->n_params; i++) free(opt->params[i].name);
    free(opt->params);
    free(opt->groups);
    free(opt->momentum_all);
    free(opt->work);
    free(opt);
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

static void update_matrix(ts_muon *opt, const ts_muon_group *g, double lr, float *w, const float *grad,
                          float *momentum, int64_t rows, int64_t cols, ts_threadpool *pool) {
    int64_t n = rows * cols;
    float *u = opt->work, *ns_work = opt->work + n;
    momentum_job mj = {momentum, u, grad, (float)g->momentum, g->nesterov};
    ts_parallel_for(pool, n, MUON_MIN_CHUNK, momentum_range, &mj);

    ts_muon_newton_schulz(u, rows, cols, g->ns_eps, TS_MUON_NS_STEPS_FAST, TS_MUON_NS_STEPS_STABLE,
                          ns_work, pool);

    /* O = O' * sqrt(max(n, m)) * gamma gives the update an RMS of gamma (O' has singular
     * values ~1), matching AdamW's typical update size (spec §5.3 step 4). */
    double rms_scale = sqrt((double)(rows > cols ? rows : cols)) * g->update_rms;
    apply_job aj = {w, u, g->weight_decay != 0, (float)(1.0 - lr * g->weight_decay),
                    (float)(lr * rms_scale)};
    ts_parallel_for(pool, n, MUON_MIN_CHUNK, apply_range, &aj);
}

ts_status ts_muon_step(ts_muon *opt, float *const *params, const float *const *grads, double lr,
                       ts_threadpool *pool) {
    if (!opt || (opt->n_params > 0 && (!params || !grads)) || !isfinite(lr)) return TS_ERR_INVALID_ARG;
    for (int i = 0; i < opt->n_params; i++)
        if (!params[i] || !grads[i]) return TS_ERR_INVALID_ARG;
    for (int i = 0; i < opt->n_params; i++) {
        muon_param *p = &opt->params[i];
        const ts_muon_group *g = &opt->groups[p->group];
        int64_t n = p->rows * p->cols;
        for (int64_t e = 0; e < p->n_matrices; e++) /* each expert matrix on its own */
            update_matrix(opt, g, lr * g->lr_scale, params[i] + e * n, grads[i] + e * n,
                          p->momentum + e * n, p->rows, p->cols, pool);
    }
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
