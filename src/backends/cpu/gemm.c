/* gemm.c - driver of the CPU backend's single-precision GEMM: tier selection, workspace cache,
 * BLIS-style cache blocking with packing, the small-M streaming path, and threading.
 *
 * Loop nest of the blocked path (BLIS naming), for C[M x N] += op(A)[M x K] op(B)[K x N]:
 *
 *   jc: N in NC-column panels
 *     pc: K in KC-deep slices            -> pack op(B)[pc:pc+KC, jc:jc+NC] (lives in L3)
 *       ic: M in MC-row blocks           -> pack op(A)[ic:ic+MC, pc:pc+KC] (lives in L2)
 *         jr: NR-column micro-panels of B (one micro-panel stays in L1 across the ir loop)
 *           ir: MR-row micro-panels of A -> micro-kernel updates one MR x NR tile of C
 *
 * Packing reorders both operands into the micro-kernel's layout (A k-major MR-wide, B k-major
 * NR-wide, zero-padded to whole tiles), which is where all four transpose variants are absorbed.
 * Threads: one fork per call; the team then walks the loop nest together, meeting at spin
 * barriers. Members split the ic range (rows of C) when M has enough micro-tiles, packing the
 * shared B panel cooperatively first; otherwise they split the jr range (columns) and each packs
 * its own B micro-panels. Static partitions. Each C element is always accumulated over the same
 * KC slices in the same order by the same micro-kernel, so the partition never changes a bit of
 * the result; the small-M path keeps that property too (see the kernel files).
 *
 * Workspace: one shared B panel (MAX_KC x MAX_NC, 6 MiB) plus, per thread, one A block
 * (MAX_MC x MAX_KC, 576 KiB) and one B micro-panel (MAX_KC x MAX_NR, 48 KiB), sized by the
 * blocking bounds in gemm.h (so no tier switch reallocates), allocated on first use and kept in
 * a cache of WS_SLOTS entries keyed by thread count. After warm-up a call allocates nothing; a
 * call that finds every cached workspace busy (concurrent callers) allocates a temporary one,
 * and a new thread count evicts an idle entry once all slots are taken. The memory stays until
 * process exit. The small-M path needs a workspace only for narrow operands (per-thread areas
 * hold their f32 conversions); on f32, and f32 times a B the tier's narrow kernels read as
 * stored, it needs none. */
#include "backends/cpu/gemm.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "tessera/cpu.h"

/* ---------------------------------------------------------------- tiers */

static bool runs_everywhere(void) { return true; }

#if defined(__x86_64__)
/* The AVX2 tier's converting packer uses F16C for f16 (every AVX2 CPU has it). */
static bool cpu_runs_avx2(void) {
    const ts_cpu_features *f = ts_cpu_features_get();
    return f->avx2 && f->fma && f->f16c;
}

/* The AVX-512 tier reuses the AVX2 small-M path and packers, so it needs those as well. */
static bool cpu_runs_avx512(void) { return cpu_runs_avx2() && ts_cpu_features_get()->avx512f; }
#endif

/* The tiers this build has, lowest first: adding one (NEON, say) is one more row here, its
 * kernel file and its enum value. */
static const struct {
    const ts_gemm_kernels *kernels;
    bool (*runs_here)(void);
} tier_table[] = {
    {&ts_gemm_kernels_generic, runs_everywhere},
#if defined(__x86_64__)
    {&ts_gemm_kernels_avx2, cpu_runs_avx2},
    {&ts_gemm_kernels_avx512, cpu_runs_avx512},
#elif defined(__aarch64__)
    {&ts_gemm_kernels_neon, runs_everywhere}, /* ASIMD is part of the AArch64 base architecture */
#endif
};
#define N_BUILT_TIERS ((int)(sizeof tier_table / sizeof tier_table[0]))

static pthread_once_t tier_once = PTHREAD_ONCE_INIT;
static int best_row;            /* tier_table row of the best tier this CPU runs */
static _Atomic int active_row;  /* tier_table row in use */

/* Row of tier t in tier_table, or -1 when this build lacks it. */
static int row_of(ts_gemm_tier t) {
    for (int r = 0; r < N_BUILT_TIERS; r++)
        if (tier_table[r].kernels->tier == t) return r;
    return -1;
}

/* Reads TESSERA_CPU_TIER; it can only lower the tier. Runs once, so its warnings print once. */
static int row_from_env(void) {
    const char *req = getenv("TESSERA_CPU_TIER");
    if (!req || !*req) return best_row;
    for (int r = 0; r < N_BUILT_TIERS; r++) {
        if (strcasecmp(req, tier_table[r].kernels->name) != 0) continue;
        if (r <= best_row) return r;
        break;
    }
    for (int t = 0; t < TS_GEMM_TIER_COUNT; t++)
        if (strcasecmp(req, ts_gemm_tier_to_name((ts_gemm_tier)t)) == 0) {
            fprintf(stderr, "tessera: warning: TESSERA_CPU_TIER=%s is not supported by this CPU; using %s\n", req,
                    tier_table[best_row].kernels->name);
            return best_row;
        }
    fprintf(stderr, "tessera: warning: unknown TESSERA_CPU_TIER=%s (expected generic|avx2|avx512|neon); using %s\n", req,
            tier_table[best_row].kernels->name);
    return best_row;
}

static void tier_init(void) {
    for (int r = 0; r < N_BUILT_TIERS; r++)
        if (tier_table[r].runs_here()) best_row = r;
    atomic_store(&active_row, row_from_env());
}

static const ts_gemm_kernels *active_kernels(void) {
    pthread_once(&tier_once, tier_init);
    return tier_table[atomic_load(&active_row)].kernels;
}

ts_gemm_tier ts_gemm_tier_active(void) { return active_kernels()->tier; }

ts_gemm_tier ts_gemm_tier_best(void) {
    pthread_once(&tier_once, tier_init);
    return tier_table[best_row].kernels->tier;
}

int ts_gemm_tiers_here(ts_gemm_tier out[TS_GEMM_TIER_COUNT]) {
    pthread_once(&tier_once, tier_init);
    for (int r = 0; r <= best_row; r++) out[r] = tier_table[r].kernels->tier;
    return best_row + 1;
}

bool ts_gemm_tier_set(ts_gemm_tier t) {
    pthread_once(&tier_once, tier_init);
    int r = row_of(t);
    if (r < 0 || r > best_row) return false;
    atomic_store(&active_row, r);
    return true;
}

const char *ts_gemm_tier_to_name(ts_gemm_tier t) {
    static const char *const names[TS_GEMM_TIER_COUNT] = {"generic", "avx2", "avx512", "neon"};
    return ((int)t >= 0 && t < TS_GEMM_TIER_COUNT) ? names[t] : "?";
}

const char *ts_gemm_tier_name(void) { return active_kernels()->name; }

ts_gemm_blocking ts_gemm_get_blocking(void) {
    const ts_gemm_kernels *k = active_kernels();
    return (ts_gemm_blocking){k->mr, k->nr, k->mc, k->kc, k->nc, TS_GEMM_SMALL_M, TS_GEMM_SMALL_M_NT};
}

/* ---------------------------------------------------------------- workspace cache */

#define WS_ALIGN 64
#define WS_SLOTS 8
#define B_PANEL_FLOATS ((size_t)TS_GEMM_MAX_KC * TS_GEMM_MAX_NC)
#define A_BLOCK_FLOATS ((size_t)TS_GEMM_MAX_MC * TS_GEMM_MAX_KC)
/* B is packed FUSED_COLS columns at a time (row-major B is then read in runs of this many
 * floats, long enough for the hardware prefetchers); on the fused column-split path the packed
 * group is used straight away from L2. */
#ifndef FUSED_COLS
#define FUSED_COLS 256
#endif
#define B_MICRO_FLOATS ((size_t)TS_GEMM_MAX_KC * FUSED_COLS)
#define THREAD_FLOATS (A_BLOCK_FLOATS + B_MICRO_FLOATS) /* per thread: A block, B micro-panels */

typedef struct {
    int n_threads; /* 0: empty slot */
    bool busy;
    bool temporary; /* not in the cache: freed on release */
    float *b_panel;     /* shared by all threads of a call */
    float *thread_area; /* n_threads areas of THREAD_FLOATS */
} gemm_ws;

static pthread_mutex_t ws_mu = PTHREAD_MUTEX_INITIALIZER;
static gemm_ws ws_cache[WS_SLOTS];

static bool ws_alloc(gemm_ws *ws, int n_threads) {
    size_t floats = B_PANEL_FLOATS + THREAD_FLOATS * (size_t)n_threads;
    float *mem = aligned_alloc(WS_ALIGN, floats * sizeof(float)); /* all counts are multiples of 16 */
    if (!mem) return false;
    ws->n_threads = n_threads;
    ws->b_panel = mem;
    ws->thread_area = mem + B_PANEL_FLOATS;
    return true;
}

static void ws_free(gemm_ws *ws) {
    free(ws->b_panel);
    memset(ws, 0, sizeof *ws);
}

/* Returns a workspace for n_threads marked busy, or NULL when memory is exhausted. */
static gemm_ws *ws_acquire(int n_threads) {
    gemm_ws *hit = NULL, *empty = NULL, *evictable = NULL;
    pthread_mutex_lock(&ws_mu);
    for (int i = 0; i < WS_SLOTS && !hit; i++) {
        gemm_ws *w = &ws_cache[i];
        if (w->n_threads == n_threads && !w->busy) hit = w;
        else if (w->n_threads == 0 && !empty) empty = w;
        else if (!w->busy && !evictable) evictable = w;
    }
    if (!hit) {
        gemm_ws *slot = empty ? empty : evictable;
        if (slot) {
            if (slot->n_threads) ws_free(slot);
            if (ws_alloc(slot, n_threads)) hit = slot;
        }
    }
    if (hit) hit->busy = true;
    pthread_mutex_unlock(&ws_mu);
    if (hit) return hit;

    gemm_ws *tmp = calloc(1, sizeof *tmp); /* every slot busy: concurrent callers */
    if (!tmp) return NULL;
    if (!ws_alloc(tmp, n_threads)) {
        free(tmp);
        return NULL;
    }
    tmp->temporary = tmp->busy = true;
    return tmp;
}

static void ws_release(gemm_ws *ws) {
    if (ws->temporary) {
        ws_free(ws);
        free(ws);
        return;
    }
    pthread_mutex_lock(&ws_mu);
    ws->busy = false;
    pthread_mutex_unlock(&ws_mu);
}

/* ---------------------------------------------------------------- portable packer */

void ts_gemm_pack_generic(float *dst, const float *src, int64_t rs, int64_t cs, int rows, int w,
                          int64_t kc) {
    if (rs == 1) { /* the panel's rows are adjacent in memory: copy w-wide rows of k */
        for (int64_t k = 0; k < kc; k++) {
            const float *s = src + k * cs;
            float *d = dst + k * w;
            int i = 0;
            for (; i < rows; i++) d[i] = s[i];
            for (; i < w; i++) d[i] = 0.0f;
        }
        return;
    }
    /* Transposing gather: walk each source row along k (sequential reads), scatter into columns. */
    for (int i = 0; i < rows; i++) {
        const float *s = src + i * rs;
        for (int64_t k = 0; k < kc; k++) dst[k * w + i] = s[k * cs];
    }
    for (int i = rows; i < w; i++)
        for (int64_t k = 0; k < kc; k++) dst[k * w + i] = 0.0f;
}

/* ---------------------------------------------------------------- narrow operands */

bool ts_gemm_dtype_supported(ts_dtype t) {
    return t == TS_F32 || t == TS_BF16 || t == TS_F16 || t == TS_F8_E4M3 || t == TS_F8_E5M2;
}

static float fp8_tables[2][256];
static pthread_once_t fp8_once = PTHREAD_ONCE_INIT;

static void fp8_init(void) {
    for (int c = 0; c < 256; c++) {
        fp8_tables[0][c] = ts_e4m3_to_f32((uint8_t)c);
        fp8_tables[1][c] = ts_e5m2_to_f32((uint8_t)c);
    }
}

/* f32 value of each of the 256 codes of an fp8 type, built once from core/dtype.c's conversions. */
static const float *fp8_table(ts_dtype type) {
    pthread_once(&fp8_once, fp8_init);
    return fp8_tables[type == TS_F8_E5M2];
}

/* One operand as stored, seen as the rows of its packed panels: element (r, k) lies at
 * data + (r*rs + k*cs) elements of `type`. r is a row of op(A), or a column of op(B). */
typedef struct {
    const void *data;
    ts_dtype type;
    int64_t rs, cs;
} gemm_src;

static size_t elem_bytes(ts_dtype t) { return (size_t)ts_dtype_get_info(t)->bits / 8; }

/* Element i (not a byte offset) of a supported type, as f32. */
static float element_f32(const void *data, ts_dtype type, int64_t i) {
    switch (type) {
    case TS_BF16: return ts_bf16_to_f32(((const uint16_t *)data)[i]);
    case TS_F16: return ts_f16_to_f32(((const uint16_t *)data)[i]);
    case TS_F8_E4M3:
    case TS_F8_E5M2: return fp8_table(type)[((const uint8_t *)data)[i]];
    default: return ((const float *)data)[i];
    }
}

static float src_at(const gemm_src *s, int64_t r, int64_t k) { return element_f32(s->data, s->type, r * s->rs + k * s->cs); }

/* Address of element (r, k) of s. */
static const void *src_ptr(const gemm_src *s, int64_t r, int64_t k) {
    return (const char *)s->data + (size_t)(r * s->rs + k * s->cs) * elem_bytes(s->type);
}

void ts_gemm_pack_cvt_generic(float *dst, const void *src, ts_dtype type, int64_t rs, int64_t cs, int rows, int w,
                              int64_t kc) {
    for (int64_t k = 0; k < kc; k++)
        for (int i = 0; i < w; i++) dst[k * w + i] = i < rows ? element_f32(src, type, i * rs + k * cs) : 0.0f;
}

/* ---------------------------------------------------------------- simple paths */

/* C = beta * C, for K == 0 or alpha == 0 (A and B are not read). */
static void scale_c(int64_t M, int64_t N, float beta, float *C, int64_t ldc) {
    for (int64_t i = 0; i < M; i++) {
        float *c = C + i * ldc;
        if (beta == 0.0f) memset(c, 0, (size_t)N * sizeof(float));
        else if (beta != 1.0f)
            for (int64_t j = 0; j < N; j++) c[j] *= beta;
    }
}

/* Unblocked triple loop: used only if the workspace cannot be allocated, so that a GEMM never
 * fails (the API has no error return). b is seen as panel rows (columns of op(B)). */
static void naive_gemm(int64_t M, int64_t N, int64_t K, float alpha, const gemm_src *a, const gemm_src *b, float beta,
                       float *C, int64_t ldc) {
    for (int64_t i = 0; i < M; i++)
        for (int64_t j = 0; j < N; j++) {
            float s = 0.0f;
            for (int64_t k = 0; k < K; k++) s += src_at(a, i, k) * src_at(b, j, k);
            float *c = &C[i * ldc + j];
            *c = beta == 0.0f ? alpha * s : alpha * s + beta * *c;
        }
}

/* ---------------------------------------------------------------- small-M path */

/* Multiply-adds a thread must get before another one is worth its wake-up (tens of
 * microseconds on a VM): the blocked path's threshold; the small-M path, with no barriers and
 * one fork, uses an eighth of it (SMALL_M_FORK_DIVISOR), as does a blocked call of one row
 * block split by columns. Tests lower it so small shapes exercise every thread. */
#define DEFAULT_MIN_FMAS_PER_THREAD ((int64_t)1 << 21)
#define SMALL_M_FORK_DIVISOR 8
static _Atomic int64_t min_fmas_per_thread = DEFAULT_MIN_FMAS_PER_THREAD;

void ts_gemm_set_parallel_threshold(int64_t fmas) {
    atomic_store(&min_fmas_per_thread, fmas > 0 ? fmas : DEFAULT_MIN_FMAS_PER_THREAD);
}

/* The small-M kernels read f32, except the tier's narrow ones (small_nn_narrow /
 * small_nt_narrow: the decode GEMV on bf16, f16 or fp8 weights, which widen B in registers). A
 * narrow op(A) is converted whole (M x K, row-major) into each thread's scratch; a narrow op(B)
 * that no narrow kernel reads, a strip of columns at a time: NT_STRIP_MAX rows of the stored
 * N x K matrix, or NN_STRIP columns of the stored K x N one (a 32-wide panel the tier's
 * converting packer vectorizes), each used right after conversion while it is in L1/L2. The
 * kernels' per-element arithmetic does not depend on which columns a call gets, so the result
 * is the f32 path's on the converted values, whatever the strips or threads. */
#define NT_STRIP_MAX 8
#define NN_STRIP 32

typedef struct {
    ts_gemm_small_args args; /* f32 operands; a narrow one is replaced per thread */
    ts_gemm_small_fn fn;
    ts_gemm_pack_cvt_fn cvt;
    bool trans_b;
    bool convert_b; /* B is narrow and converted in strips (not read by a fused kernel) */
    int64_t group; /* columns per parallel item: a whole strip when B is converted */
    int64_t n;
    gemm_src a, b;    /* as stored (b: rows are columns of op(B)) */
    float *scratch;   /* per-thread areas of THREAD_FLOATS, when an operand is narrow */
} small_job;

/* n contiguous narrow elements to f32: the bulk as a 32-wide panel with adjacent rows (the
 * layout a tier's converting packer vectorizes), the tail element by element. */
static void convert_run(ts_gemm_pack_cvt_fn cvt, float *dst, const void *src, ts_dtype type, int64_t n) {
    int64_t bulk = n / 32 * 32;
    if (bulk) cvt(dst, src, type, 1, 32, 32, 32, bulk / 32);
    for (int64_t i = bulk; i < n; i++) dst[i] = element_f32(src, type, i);
}

/* Columns [j0, j0 + w) of narrow op(B) into f32 scratch; returns the f32 view's ldb. */
static int64_t convert_b_strip(const small_job *job, float *dst, int64_t j0, int64_t w) {
    int64_t K = job->args.k;
    if (job->trans_b) { /* w rows of the stored N x K matrix, each contiguous along k */
        for (int64_t j = 0; j < w; j++) convert_run(job->cvt, dst + j * K, src_ptr(&job->b, j0 + j, 0), job->b.type, K);
        return K;
    }
    /* K rows of w adjacent columns: a w-wide panel, rows (columns of op(B)) adjacent */
    job->cvt(dst, src_ptr(&job->b, j0, 0), job->b.type, 1, job->b.cs, (int)w, NN_STRIP, K);
    return NN_STRIP;
}

/* Products with B stored [N, K] and up to GROUPED_M rows (a MoE expert's rows of a prefill
 * chunk, a 32- or 48-token chunk's linear layers) or few columns (N <= NARROW_N: mHC's
 * [T, 24] <- [T, 1024] projection, the router's [T, 8]) at any M take the small-M path: its
 * kernels run on groups of TS_GEMM_SMALL_M_NT rows over the same columns of B, which stay in
 * L1/L2 from one group to the next, and B is never packed. Packing B costs about as much as
 * the multiply at these M when B comes from DRAM (a weight): 20-48 x 128 x 256 ran 1.25-1.8x
 * faster in groups on 1 thread, 32 rows 1.3-1.6x on 2, about even at 64. Blocked, a narrow
 * B fills one or two NR panels: 24 columns split between two threads as one panel each (45
 * GFLOP/s on 64 x 24 x 1024, no faster on 2 threads than on 1), while the groups ran 64-1024
 * rows at 1.0-2.0x that (Zen 3 VM, cold weights). */
#define GROUPED_M 48
#define NARROW_N 32

/* The tier's kernel over columns [n0, n1) of all of args's rows, TS_GEMM_SMALL_M_NT at a time
 * when there are more (only B^T products have more: GROUPED_M, NARROW_N). */
static void small_rows(const small_job *job, const ts_gemm_small_args *args, int64_t n0, int64_t n1) {
    ts_gemm_small_args g = *args;
    for (int64_t i0 = 0; i0 < args->m; i0 += TS_GEMM_SMALL_M_NT) {
        g.m = args->m - i0 < TS_GEMM_SMALL_M_NT ? args->m - i0 : TS_GEMM_SMALL_M_NT;
        g.a = args->a + i0 * args->a_rs;
        g.c = args->c + i0 * args->ldc;
        job->fn(&g, n0, n1);
    }
}

static void small_range(void *ctx, int64_t begin, int64_t end, int thread_id) {
    small_job *job = ctx;
    int64_t n0 = begin * job->group, n1 = end * job->group;
    if (n1 > job->n) n1 = job->n;
    if (!job->scratch) {
        small_rows(job, &job->args, n0, n1);
        return;
    }
    ts_gemm_small_args args = job->args;
    float *scratch = job->scratch + (size_t)thread_id * THREAD_FLOATS;
    if (job->a.type != TS_F32) {
        for (int64_t i = 0; i < args.m; i++) {
            if (job->a.cs == 1) convert_run(job->cvt, scratch + i * args.k, src_ptr(&job->a, i, 0), job->a.type, args.k);
            else
                for (int64_t k = 0; k < args.k; k++) scratch[i * args.k + k] = src_at(&job->a, i, k);
        }
        args.a = scratch;
        args.a_rs = args.k;
        args.a_cs = 1;
        scratch += args.m * args.k;
    }
    if (!job->convert_b) {
        small_rows(job, &args, n0, n1);
        return;
    }
    float *c = args.c;
    for (int64_t j0 = n0; j0 < n1; j0 += job->group) {
        int64_t w = n1 - j0 < job->group ? n1 - j0 : job->group;
        args.ldb = convert_b_strip(job, scratch, j0, w);
        args.b = scratch;
        args.c = c + j0;
        small_rows(job, &args, 0, w);
    }
}

/* Strip width for a narrow op(B) (columns per strip), or 0 when even the narrowest strip does
 * not fit a thread's scratch beside the converted A (then the blocked path takes the call). */
static int64_t narrow_b_strip(const small_job *job) {
    int64_t room = (int64_t)THREAD_FLOATS - (job->a.type != TS_F32 ? job->args.m * job->args.k : 0);
    if (job->trans_b) {
        int64_t rows = room / job->args.k;
        return rows < NT_STRIP_MAX ? (rows > 0 ? rows : 0) : NT_STRIP_MAX;
    }
    return room >= NN_STRIP * job->args.k ? NN_STRIP : 0;
}

/* False (nothing done) when the call does not fit the small-M path's scratch. */
static bool small_m_gemm(ts_threadpool *pool, const ts_gemm_kernels *kern, small_job *job) {
    job->fn = job->trans_b ? kern->small_nt : kern->small_nn;
    job->cvt = kern->pack_cvt ? kern->pack_cvt : ts_gemm_pack_cvt_generic;
    /* nn vectorizes across columns: hand out whole vectors' worth so chunks stay aligned. */
    job->group = job->trans_b ? 1 : 16;
    unsigned read_as_stored = job->trans_b ? kern->narrow_nt_types : kern->narrow_nn_types;
    if (job->b.type != TS_F32 && (read_as_stored >> job->b.type & 1u)) {
        job->fn = job->trans_b ? kern->small_nt_narrow : kern->small_nn_narrow; /* B read as stored, no copy */
        job->args.b_narrow = job->b.data;
        job->args.b_type = job->b.type;
    } else {
        job->convert_b = job->b.type != TS_F32;
    }
    bool narrow = job->a.type != TS_F32 || job->convert_b;
    if (job->a.type != TS_F32 && job->args.m * job->args.k > (int64_t)THREAD_FLOATS) return false;
    if (job->convert_b && !(job->group = narrow_b_strip(job))) return false;
    gemm_ws *ws = narrow ? ws_acquire(ts_threadpool_size(pool)) : NULL;
    if (narrow && !ws) return false;
    job->scratch = ws ? ws->thread_area : NULL;
    int64_t items = (job->n + job->group - 1) / job->group;
    int64_t fmas_per_item = job->args.m * job->args.k * job->group;
    int64_t min_fmas = atomic_load(&min_fmas_per_thread) / SMALL_M_FORK_DIVISOR;
    int64_t min_chunk = (min_fmas + fmas_per_item - 1) / fmas_per_item;
    ts_parallel_for(pool, items, min_chunk, small_range, job);
    if (ws) ws_release(ws);
    return true;
}

/* ---------------------------------------------------------------- team barrier */

/* The blocked path forks once per call and keeps its threads (a "team") together with this
 * barrier between phases: waking pool workers costs tens of microseconds per fork on a VM,
 * which a fork per KC slice would pay again and again. Waiters spin briefly, then yield, so an
 * oversubscribed machine still makes progress. */
typedef struct {
    _Atomic unsigned arrived;
    _Atomic unsigned generation;
} spin_barrier;

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

static void barrier_wait(spin_barrier *b, int team) {
    if (team <= 1) return;
    unsigned gen = atomic_load_explicit(&b->generation, memory_order_acquire);
    if (atomic_fetch_add_explicit(&b->arrived, 1, memory_order_acq_rel) == (unsigned)team - 1) {
        atomic_store_explicit(&b->arrived, 0, memory_order_relaxed);
        atomic_fetch_add_explicit(&b->generation, 1, memory_order_release);
        return;
    }
    for (unsigned spins = 0; atomic_load_explicit(&b->generation, memory_order_acquire) == gen; spins++) {
        if (spins < 4096) cpu_relax();
        else sched_yield();
    }
}

/* ---------------------------------------------------------------- blocked path */

/* The call's parameters, shared read-only by the team (barrier and team size aside). */
typedef struct {
    const ts_gemm_kernels *kern;
    ts_gemm_pack_fn pack_a, pack_b;
    ts_gemm_pack_cvt_fn pack_cvt; /* for narrow operands */
    int mr, nr, mc;
    int64_t m, n, k;
    float alpha, beta;
    gemm_src a;         /* op(A)(i, k) = element (i, k) */
    gemm_src b;         /* op(B)(k, j) = element (j, k) */
    float *c;
    int64_t ldc;
    int64_t nc_max;     /* width of the column panels (NR-aligned, at most NC) */
    float *b_panel;     /* shared */
    float *thread_area; /* per member */
    int team;
    spin_barrier barrier;
} gemm_job;

/* Packs panel rows [r0, r0 + rows) x depth [k0, k0 + kc) of s into a w-wide panel at dst. */
static void pack_panel(const gemm_job *job, ts_gemm_pack_fn pack_f32, const gemm_src *s, float *dst, int64_t r0,
                       int64_t k0, int rows, int w, int64_t kc) {
    if (s->type == TS_F32) pack_f32(dst, src_ptr(s, r0, k0), s->rs, s->cs, rows, w, kc);
    else job->pack_cvt(dst, src_ptr(s, r0, k0), s->type, s->rs, s->cs, rows, w, kc);
}

/* Where the team is: the current B panel (each member tracks it itself). */
typedef struct {
    int64_t jc, nc, pc, kc;
    int64_t n_panels; /* NR-wide micro-panels in the panel */
    float beta;       /* beta for this KC slice: the caller's for the first, 1 after */
} gemm_block;

/* Packs micro-panels [p0, p1) into consecutive slots of dst, 8 k at a time across all of them,
 * so that row-major B is read in runs of (p1 - p0) * NR floats rather than NR. */
static void pack_b_group(const gemm_job *job, const gemm_block *blk, int64_t p0, int64_t p1, float *dst) {
    int64_t panel_floats = job->nr * blk->kc;
    for (int64_t k0 = 0; k0 < blk->kc; k0 += 8) {
        int64_t kn = blk->kc - k0 < 8 ? blk->kc - k0 : 8;
        for (int64_t p = p0; p < p1; p++) {
            int64_t j = blk->jc + p * job->nr;
            int64_t cols = blk->jc + blk->nc - j < job->nr ? blk->jc + blk->nc - j : job->nr;
            pack_panel(job, job->pack_b, &job->b, dst + (p - p0) * panel_floats + k0 * job->nr, j, blk->pc + k0,
                       (int)cols, job->nr, kn);
        }
    }
}

/* Packs micro-panels [p0, p1) into their slots of the shared B panel, a group at a time. */
static void pack_b_panels(const gemm_job *job, const gemm_block *blk, int64_t p0, int64_t p1) {
    int64_t group = FUSED_COLS / job->nr;
    for (int64_t g = p0; g < p1; g += group)
        pack_b_group(job, blk, g, g + group < p1 ? g + group : p1, job->b_panel + g * job->nr * blk->kc);
}

static void pack_a_block(const gemm_job *job, const gemm_block *blk, float *a_block, int64_t ic, int64_t mc) {
    for (int64_t ir = 0; ir < mc; ir += job->mr) {
        int64_t rows = mc - ir < job->mr ? mc - ir : job->mr;
        pack_panel(job, job->pack_a, &job->a, a_block + ir * blk->kc, ic + ir, blk->pc, (int)rows, job->mr, blk->kc);
    }
}

/* A partial tile goes through a full-size scratch tile so the micro-kernel's arithmetic (and
 * hence every bit of the result) is the same as for interior tiles. */
static void edge_tile(const gemm_job *job, const gemm_block *blk, const float *ap, const float *bp, float *c,
                      int64_t rows, int64_t cols) {
    _Alignas(64) float tile[TS_GEMM_MAX_MR * TS_GEMM_MAX_NR];
    int nr = job->nr;
    if (blk->beta != 0.0f) {
        memset(tile, 0, sizeof tile);
        for (int64_t i = 0; i < rows; i++) memcpy(tile + i * nr, c + i * job->ldc, (size_t)cols * sizeof(float));
    }
    job->kern->ukernel(blk->kc, ap, bp, tile, nr, job->alpha, blk->beta);
    for (int64_t i = 0; i < rows; i++) memcpy(c + i * job->ldc, tile + i * nr, (size_t)cols * sizeof(float));
}

/* Rows [ic, ic+mc) of C (A block packed) times the packed B micro-panel bp (micro-panel p). */
static void micro_panel_column(const gemm_job *job, const gemm_block *blk, const float *a_block, int64_t ic,
                               int64_t mc, int64_t p, const float *bp) {
    int mr = job->mr, nr = job->nr;
    int64_t j = blk->jc + p * nr;
    int64_t cols = blk->jc + blk->nc - j < nr ? blk->jc + blk->nc - j : nr;
    for (int64_t ir = 0; ir < mc; ir += mr) {
        int64_t rows = mc - ir < mr ? mc - ir : mr;
        const float *ap = a_block + ir * blk->kc;
        float *c = job->c + (ic + ir) * job->ldc + j;
        if (rows == mr && cols == nr) job->kern->ukernel(blk->kc, ap, bp, c, job->ldc, job->alpha, blk->beta);
        else edge_tile(job, blk, ap, bp, c, rows, cols);
    }
}

/* Rows [ic, ic+mc) of C times B micro-panels [p0, p1) of the shared packed B panel. */
static void macro_kernel(const gemm_job *job, const gemm_block *blk, const float *a_block, int64_t ic, int64_t mc,
                         int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; p++)
        micro_panel_column(job, blk, a_block, ic, mc, p, job->b_panel + p * job->nr * blk->kc);
}

static float *member_a_block(const gemm_job *job, int rank) {
    return job->thread_area + (size_t)rank * THREAD_FLOATS;
}

static float *member_b_micro(const gemm_job *job, int rank) { return member_a_block(job, rank) + A_BLOCK_FLOATS; }

/* Member `rank`'s share [*b, *e) of n items: contiguous, sizes differing by at most one. */
static void share(int64_t n, int team, int rank, int64_t *b, int64_t *e) {
    *b = n * rank / team;
    *e = n * (rank + 1) / team;
}

/* Rows split: pack a share of the B panel, wait for the whole panel, multiply a share of the
 * micro-tile rows against all of it, wait until nobody reads the panel any more. */
static void slice_split_rows(gemm_job *job, const gemm_block *blk, int rank) {
    int64_t b, e;
    share(blk->n_panels, job->team, rank, &b, &e);
    pack_b_panels(job, blk, b, e);
    barrier_wait(&job->barrier, job->team);

    float *a_block = member_a_block(job, rank);
    share((job->m + job->mr - 1) / job->mr, job->team, rank, &b, &e);
    int64_t r1 = e * job->mr < job->m ? e * job->mr : job->m;
    for (int64_t ic = b * job->mr; ic < r1; ic += job->mc) {
        int64_t mc = r1 - ic < job->mc ? r1 - ic : job->mc;
        pack_a_block(job, blk, a_block, ic, mc);
        macro_kernel(job, blk, a_block, ic, mc, 0, blk->n_panels);
    }
    barrier_wait(&job->barrier, job->team);
}

/* Columns split (few rows): the member packs and uses only its own B micro-panels, and its own
 * copy of the (small) A block, so no barrier is needed. With a single row block each B
 * micro-panel is used right after it is packed, while still in L1, so B (read once per call,
 * the dominant traffic when M is small) never goes back to memory packed. */
static void slice_split_cols(gemm_job *job, const gemm_block *blk, int rank) {
    int64_t p0, p1;
    share(blk->n_panels, job->team, rank, &p0, &p1);
    if (p0 == p1) return;
    float *a_block = member_a_block(job, rank);
    if (job->m <= job->mc) {
        float *b_micro = member_b_micro(job, rank);
        int64_t panel_floats = job->nr * blk->kc;
        pack_a_block(job, blk, a_block, 0, job->m);
        int64_t group = FUSED_COLS / job->nr;
        for (int64_t g = p0; g < p1; g += group) {
            int64_t g1 = g + group < p1 ? g + group : p1;
            pack_b_group(job, blk, g, g1, b_micro);
            for (int64_t p = g; p < g1; p++)
                micro_panel_column(job, blk, a_block, 0, job->m, p, b_micro + (p - g) * panel_floats);
        }
        return;
    }
    pack_b_panels(job, blk, p0, p1);
    for (int64_t ic = 0; ic < job->m; ic += job->mc) {
        int64_t mc = job->m - ic < job->mc ? job->m - ic : job->mc;
        pack_a_block(job, blk, a_block, ic, mc);
        macro_kernel(job, blk, a_block, ic, mc, p0, p1);
    }
}

static int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

/* The whole loop nest as run by one team member. Every member walks the same jc/pc sequence
 * and makes the same decisions, so they meet at the same barriers. */
static void team_member(gemm_job *job, int rank) {
    const ts_gemm_kernels *kern = job->kern;
    int64_t row_tiles = ceil_div(job->m, kern->mr);
    gemm_block blk;
    for (blk.jc = 0; blk.jc < job->n; blk.jc += job->nc_max) {
        blk.nc = job->n - blk.jc < job->nc_max ? job->n - blk.jc : job->nc_max;
        blk.n_panels = ceil_div(blk.nc, kern->nr);
        /* One row block (M <= MC): split columns, so each member streams its own part of B
         * through L1 once (the fused path). Else split rows while each member gets many
         * micro-tiles, and columns otherwise (balance beats re-packing the few rows of A). */
        bool enough_panels = blk.n_panels >= 2 * (int64_t)job->team;
        bool split_rows = job->m <= job->mc ? !enough_panels : row_tiles >= 8 * (int64_t)job->team || !enough_panels;
        for (blk.pc = 0; blk.pc < job->k; blk.pc += kern->kc) {
            blk.kc = job->k - blk.pc < kern->kc ? job->k - blk.pc : kern->kc;
            blk.beta = blk.pc == 0 ? job->beta : 1.0f;
            if (split_rows) slice_split_rows(job, &blk, rank);
            else slice_split_cols(job, &blk, rank);
        }
    }
}

static void team_entry(void *ctx, int64_t begin, int64_t end, int thread_id) {
    (void)thread_id;
    gemm_job *job = ctx;
    if (end - begin != 1) { /* the pool ran the job serially (nested call): one member does all */
        job->team = 1;
        begin = 0;
    }
    team_member(job, (int)begin);
}

static void blocked_gemm(ts_threadpool *pool, gemm_ws *ws, gemm_job *job) {
    const ts_gemm_kernels *kern = job->kern;
    /* Equal NR-aligned column panels no wider than NC (no sliver panel at the end). */
    job->nc_max = ceil_div(ceil_div(job->n, ceil_div(job->n, kern->nc)), kern->nr) * kern->nr;
    job->b_panel = ws->b_panel;
    job->thread_area = ws->thread_area;
    double fmas = (double)job->m * (double)job->n * (double)job->k;
    int team = ts_threadpool_size(pool);
    /* One row block split by columns (team_member) meets at no barrier: like the small-M
     * path, a member costs one wake-up, so it takes the small-M path's threshold. */
    bool barrier_free = job->m <= job->mc && ceil_div(job->nc_max, kern->nr) >= 2 * (int64_t)team;
    double min_fmas = (double)(atomic_load(&min_fmas_per_thread) / (barrier_free ? SMALL_M_FORK_DIVISOR : 1));
    if (fmas < min_fmas * team) team = (int)(fmas / min_fmas);
    if (team < 1) team = 1;
    job->team = team;
    atomic_init(&job->barrier.arrived, 0);
    atomic_init(&job->barrier.generation, 0);
    if (team == 1) team_member(job, 0);
    else ts_parallel_for(pool, team, 1, team_entry, job); /* one item per member */
}

/* ---------------------------------------------------------------- entry point */

void ts_gemm(ts_threadpool *pool, bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
             const void *A, ts_dtype a_type, int64_t lda, const void *B, ts_dtype b_type, int64_t ldb, float beta,
             float *C, int64_t ldc) {
    if (M <= 0 || N <= 0) return;
    if (K <= 0 || alpha == 0.0f) {
        scale_c(M, N, beta, C, ldc);
        return;
    }
    const ts_gemm_kernels *kern = active_kernels();
    gemm_src a = {.data = A, .type = a_type, .rs = trans_a ? 1 : lda, .cs = trans_a ? lda : 1};
    gemm_src b = {.data = B, .type = b_type, .rs = trans_b ? ldb : 1, .cs = trans_b ? 1 : ldb};

    /* Small M: bandwidth-bound, stream B once without packing; so do B^T products of up to
     * GROUPED_M rows or NARROW_N columns, in row groups, when op(A) lies contiguous along k
     * (whatever its dtype, so that narrow operands get the f32 path's bits). The B^T forms need
     * op(A) contiguous along k (narrow A is converted so that it is). */
    bool small = trans_b ? M <= TS_GEMM_SMALL_M_NT || ((M <= GROUPED_M || N <= NARROW_N) && a.cs == 1)
                         : M <= TS_GEMM_SMALL_M;
    if (small && (!trans_b || a.cs == 1 || a_type != TS_F32)) {
        small_job job = {.args = {.m = M, .k = K, .alpha = alpha, .beta = beta, .a = A, .a_rs = a.rs, .a_cs = a.cs,
                                  .b = B, .ldb = ldb, .c = C, .ldc = ldc},
                         .trans_b = trans_b, .n = N, .a = a, .b = b};
        if (small_m_gemm(pool, kern, &job)) return;
    }

    gemm_ws *ws = ws_acquire(ts_threadpool_size(pool));
    if (!ws) {
        naive_gemm(M, N, K, alpha, &a, &b, beta, C, ldc);
        return;
    }
    gemm_job job = {.kern = kern,
                    .pack_a = kern->pack_a ? kern->pack_a : ts_gemm_pack_generic,
                    .pack_b = kern->pack_b ? kern->pack_b : ts_gemm_pack_generic,
                    .pack_cvt = kern->pack_cvt ? kern->pack_cvt : ts_gemm_pack_cvt_generic,
                    .mr = kern->mr, .nr = kern->nr, .mc = kern->mc,
                    .m = M, .n = N, .k = K, .alpha = alpha, .beta = beta,
                    .a = a, .b = b, .c = C, .ldc = ldc};
    blocked_gemm(pool, ws, &job);
    ws_release(ws);
}

void ts_gemm_f32(ts_threadpool *pool, bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
                 const float *A, int64_t lda, const float *B, int64_t ldb, float beta, float *C, int64_t ldc) {
    ts_gemm(pool, trans_a, trans_b, M, N, K, alpha, A, TS_F32, lda, B, TS_F32, ldb, beta, C, ldc);
}
