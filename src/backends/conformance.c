/* conformance.c - the backend conformance suite (see tessera/conformance.h).
 *
 * Layout of this file:
 *   1. case description: how input values are drawn, input layouts, variants (shapes + params)
 *   2. the case table: every op with its variants; cases = op x variant x dtype
 *   3. case enumeration and names
 *   4. per-case data: values drawn in each op's valid domain, rounded to the case dtype
 *   5. building a case graph (once for the backend under test, once in f64 for the oracle)
 *   6. running a graph and comparing results (normalized MSE, NaN/Inf, guards, top-k)
 *   7. the public entry points
 *
 * The oracle is the reference CPU backend computing the same graph in f64 from identical input
 * values, so a difference is the backend's error plus the rounding of its output. */
#include "tessera/conformance.h"

#include <float.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#define GUARD_BYTES 256     /* around every tensor: catches writes past either end */
#define SLICE_PAD 3         /* extra last-axis elements of a leaf fed as a slice... */
#define SLICE_START 1       /* ...of which the view skips the first */
#define PADDING_VALUE 77.0  /* leaf elements outside the view: wrong if a backend reads them */
#define CLAMP_LO -0.5f
#define CLAMP_HI 0.75f
#define SWIGLU_LIMIT 0.75f /* inputs are kept >= 0.05 from +-limit (the clamps' kinks) */
#define CASE_DTYPE (-1)     /* in a COPY / FILL variant's ip[0]: "the case dtype" */
#define SEED 0x7E55E4A5C0FFEEull

/* ================================================================ 1. case description */

/* How the values of one input are drawn: each op's inputs come from its valid domain. */
typedef enum {
    GEN_DEFAULT = 0,     /* the op's domain for this input (op_domain) */
    GEN_NORMAL,          /* N(0, 1) */
    GEN_POSITIVE,        /* U[0.25, 4): log, sqrt */
    GEN_AWAY_FROM_ZERO,  /* +-U[0.25, 2): divisors, relu's kink */
    GEN_AWAY_FROM_CLAMP, /* N(0, 1) kept >= 0.05 from the clamp bounds (clamp's kinks) */
    GEN_AWAY_FROM_LIMIT, /* N(0, 1) kept >= 0.05 from +-SWIGLU_LIMIT */
    GEN_PROBABILITY,     /* U[0.05, 0.95): sigmoid / softmax outputs fed to their backward */
    GEN_ANGLE,           /* U[-pi, pi): rope angles */
    GEN_UNIQUE_MAX,      /* U[-2, 2), one element per lane along axis ip[0] raised by 4: no max ties */
    GEN_MAX_OF_SRC0,     /* max of input 0 along axis ip[0] (max_back's y) */
    GEN_CAUSAL_MASK,     /* 0 on and below the diagonal of the last two axes, -inf above */
    GEN_INDEX,           /* integers in [0, hi) */
    GEN_TARGET,          /* integers in [0, hi), about 1 in 6 replaced by -1 (an ignored target) */
    GEN_DOC_START,       /* [B, T] attention key_start of packed documents over hi = S keys: query t
                            (position hi - T + t) gets the start of its document (random lengths) */
    GEN_KEY_BOUND,       /* integers in [-2, hi + 2): arbitrary key lower bounds, empty rows included */
} value_gen;

/* How an input reaches the op: as its leaf, or as a non-contiguous view of a leaf. */
typedef enum {
    LAYOUT_CONTIGUOUS = 0,
    LAYOUT_TRANSPOSED, /* leaf stores the last two axes swapped; the op reads ts_transpose(leaf) */
    LAYOUT_SLICED,     /* leaf is SLICE_PAD wider on the last axis; the op reads a slice of it */
} input_layout;

typedef struct {
    int ndim;                     /* 0: no input (the list of inputs ends here) */
    int64_t shape[TS_MAX_DIMS];   /* the shape the op sees */
    value_gen gen;
    input_layout layout;
    ts_dtype index_dtype;         /* GEN_INDEX / GEN_TARGET: i32 or i64; float inputs: the case dtype */
    int64_t hi;                   /* GEN_INDEX / GEN_TARGET: exclusive upper bound */
} input_spec;

/* One shape/parameter combination of an op; run once per case dtype. */
typedef struct {
    input_spec in[TS_MAX_SRC];
    int32_t ip[8];
    float fp[4];
    const char *note;             /* parameters worth showing in the case name */
} variant;

typedef struct {
    ts_op op;
    const variant *variants;
    int n_variants;
    const float *fp;              /* fp[4] shared by every variant, or NULL: the variant's own */
} op_entry;

#define NARGS_(a, b, c, d, n, ...) n
#define NARGS(...) NARGS_(__VA_ARGS__, 4, 3, 2, 1, 0)
#define SHAPE(...) .ndim = NARGS(__VA_ARGS__), .shape = {__VA_ARGS__}
#define F(...) {SHAPE(__VA_ARGS__)}                                 /* float input, op's domain */
#define FT(...) {SHAPE(__VA_ARGS__), .layout = LAYOUT_TRANSPOSED}   /* ... fed as a transposed view */
#define FS(...) {SHAPE(__VA_ARGS__), .layout = LAYOUT_SLICED}       /* ... fed as a slice */
#define FG(g, ...) {SHAPE(__VA_ARGS__), .gen = (g)}                 /* float input, explicit values */
#define IDX(t, h, ...) {SHAPE(__VA_ARGS__), .gen = GEN_INDEX, .index_dtype = (t), .hi = (h)}
#define TGT(t, h, ...) {SHAPE(__VA_ARGS__), .gen = GEN_TARGET, .index_dtype = (t), .hi = (h)}
#define DOC(t, h, ...) {SHAPE(__VA_ARGS__), .gen = GEN_DOC_START, .index_dtype = (t), .hi = (h)}
#define BOUND(t, h, ...) {SHAPE(__VA_ARGS__), .gen = GEN_KEY_BOUND, .index_dtype = (t), .hi = (h)}
#define COUNT(a) ((int)(sizeof(a) / sizeof((a)[0])))

/* ================================================================ 2. the case table */

/* Shapes: 1, 7, 33 (odd sizes that defeat vector widths), 1000 on the last axis (more than a
 * tile), 3-D/4-D, and non-contiguous inputs (^T transposed, ^S sliced views). */

static const variant unary_variants[] = { /* also the forward shapes of scale and clamp */
    {.in = {F(1)}},
    {.in = {F(7)}},
    {.in = {F(7, 33)}},
    {.in = {F(3, 1000)}},
    {.in = {F(2, 3, 5, 7)}},
    {.in = {FT(7, 33)}},
    {.in = {FS(7, 33)}},
};

static const variant unary_back_variants[] = { /* x (or y), dy */
    {.in = {F(1), F(1)}},
    {.in = {F(7, 33), F(7, 33)}},
    {.in = {F(3, 1000), F(3, 1000)}},
    {.in = {FT(7, 33), F(7, 33)}},
    {.in = {F(7, 33), FS(7, 33)}},
};

/* gate, up (, dy); the limit is the variant's fp[0] (0: unclamped) */
static const variant swiglu_variants[] = {
    {.in = {F(1), F(1)}, .fp = {SWIGLU_LIMIT}, .note = "limit=0.75"},
    {.in = {F(7, 33), F(7, 33)}, .fp = {SWIGLU_LIMIT}, .note = "limit=0.75"},
    {.in = {F(3, 1000), F(3, 1000)}, .fp = {SWIGLU_LIMIT}, .note = "limit=0.75"},
    {.in = {FT(7, 33), F(7, 33)}, .fp = {SWIGLU_LIMIT}, .note = "limit=0.75"},
    {.in = {F(7, 33), FS(7, 33)}, .fp = {0}, .note = "unclamped"},
};

static const variant swiglu_back_variants[] = {
    {.in = {F(1), F(1), F(1)}, .fp = {SWIGLU_LIMIT}, .note = "limit=0.75"},
    {.in = {F(7, 33), F(7, 33), F(7, 33)}, .fp = {SWIGLU_LIMIT}, .note = "limit=0.75"},
    {.in = {F(3, 1000), F(3, 1000), F(3, 1000)}, .fp = {0}, .note = "unclamped"},
    {.in = {FT(7, 33), FS(7, 33), F(7, 33)}, .fp = {SWIGLU_LIMIT}, .note = "limit=0.75"},
};

static const variant binary_variants[] = {
    {.in = {F(1), F(1)}},
    {.in = {F(7), F(7)}},
    {.in = {F(7, 33), F(7, 33)}},
    {.in = {F(7, 33), F(33)}},
    {.in = {F(7, 1), F(1, 33)}},
    {.in = {F(2, 7, 33), F(7, 1)}},
    {.in = {F(2, 7, 33), F(2, 7, 1)}},
    {.in = {F(3, 1, 1), F(3, 7, 33)}},
    {.in = {F(3, 1000), F(3, 1000)}},
    {.in = {FT(7, 33), F(7, 33)}},
    {.in = {F(7, 33), FS(7, 33)}},
    {.in = {F(33), FT(7, 33)}},
    /* column slices (unit-stride rows) against a scalar and a row, as mHC's coefficients */
    {.in = {FS(7, 9), F(1)}},
    {.in = {FS(2, 7, 33), F(33)}},
};

static const variant reduce_variants[] = { /* ip[0] = axis */
    {.in = {F(1)}, .ip = {0}, .note = "axis=0"},
    {.in = {F(7, 33)}, .ip = {1}, .note = "axis=1"},
    {.in = {F(7, 33)}, .ip = {0}, .note = "axis=0"},
    {.in = {F(3, 1000)}, .ip = {1}, .note = "axis=1"},
    {.in = {F(2, 7, 33)}, .ip = {1}, .note = "axis=1"},
    {.in = {F(2, 3, 300)}, .ip = {1}, .note = "axis=1"},
    {.in = {F(2, 3, 5, 7)}, .ip = {3}, .note = "axis=3"},
    {.in = {FT(7, 33)}, .ip = {1}, .note = "axis=1"},
    {.in = {FS(7, 33)}, .ip = {0}, .note = "axis=0"},
};

static const variant sum_to_variants[] = { /* ip = target ndim, shape */
    {.in = {F(7, 33)}, .ip = {2, 1, 33}, .note = "to [1,33]"},
    {.in = {F(7, 33)}, .ip = {1, 33}, .note = "to [33]"},
    {.in = {F(2, 7, 33)}, .ip = {2, 7, 1}, .note = "to [7,1]"},
    {.in = {F(3, 1000)}, .ip = {1, 1}, .note = "to [1]"},
    {.in = {F(7, 33)}, .ip = {2, 7, 1}, .note = "to [7,1]"},
    {.in = {F(4, 5, 6)}, .ip = {3, 4, 1, 6}, .note = "to [4,1,6]"},
    {.in = {F(2, 3, 5, 7)}, .ip = {3, 3, 1, 7}, .note = "to [3,1,7]"},
    {.in = {F(2, 3, 4, 5)}, .ip = {4, 2, 1, 4, 1}, .note = "to [2,1,4,1]"},
    {.in = {F(5, 2, 300)}, .ip = {2, 2, 300}, .note = "to [2,300]"},
    {.in = {FT(7, 33)}, .ip = {2, 1, 33}, .note = "to [1,33]"},
};

static const variant matmul_variants[] = { /* ip = trans_a, trans_b; M, N, K among 1, 7, 33, 64 */
    {.in = {F(1, 1), F(1, 1)}},
    {.in = {F(7, 33), F(33, 1)}},
    {.in = {F(1, 64), F(64, 7)}},
    {.in = {F(33, 7), F(7, 64)}},
    {.in = {F(64, 64), F(64, 33)}},
    {.in = {F(7, 33), F(1, 33)}, .ip = {0, 1}, .note = "trans_b"},
    {.in = {F(33, 7), F(33, 64)}, .ip = {1, 0}, .note = "trans_a"},
    {.in = {F(2, 33, 7), F(2, 64, 33)}, .ip = {1, 1}, .note = "trans_a trans_b"},
    {.in = {FT(7, 33), F(33, 7)}},
    {.in = {F(7, 64), FS(64, 33)}},
    {.in = {F(2, 7, 33), F(33, 7)}},
    {.in = {F(3, 1, 7, 33), F(2, 33, 64)}},
    /* batches sharing B, as a batched decode step's linear layers: the fast kernel folds them
     * into the rows of one GEMM (16 rows: the small-M path's widest case) */
    {.in = {F(16, 1, 64), F(33, 64)}, .ip = {0, 1}, .note = "trans_b, batches folded"},
    {.in = {FS(16, 1, 64), F(7, 64)}, .ip = {0, 1}, .note = "trans_b, sliced batches folded"},
    {.in = {F(3, 4, 1, 33), F(1, 7, 33)}, .ip = {0, 1}, .note = "trans_b, 2 batch dims folded"},
    /* many small batches of their own B (a decode step's mHC mixes): spread over the threads */
    {.in = {F(16, 4, 7), F(16, 7, 33)}, .note = "16 small batches"},
    {.in = {F(16, 4, 1), F(16, 1, 33)}, .note = "16 outer products"},
    /* K <= 8 with B not transposed: scaled rows of B added up (the fast kernel's tiny-K path) */
    {.in = {F(16, 1, 4), F(16, 4, 33)}, .note = "16 tiny-K products"},
    {.in = {FT(7, 8), F(8, 33)}, .note = "tiny K, A a transposed view"},
    {.in = {F(3, 7, 8), FS(8, 33)}, .note = "tiny K, B sliced and shared"},
    {.in = {F(2, 7, 9), F(2, 9, 33)}, .note = "K one past the tiny-K path"},
};

static const variant softmax_variants[] = { /* ip[0] = axis; optional additive mask */
    {.in = {F(7)}, .ip = {0}, .note = "axis=0"},
    {.in = {F(7, 33)}, .ip = {1}, .note = "axis=1"},
    {.in = {F(7, 33)}, .ip = {0}, .note = "axis=0"},
    {.in = {F(3, 1000)}, .ip = {1}, .note = "axis=1"},
    {.in = {F(2, 7, 100)}, .ip = {1}, .note = "axis=1 (middle)"},
    {.in = {F(3, 33, 64)}, .ip = {1}, .note = "axis=1 (middle)"},
    {.in = {F(2, 7, 7), FG(GEN_CAUSAL_MASK, 7, 7)}, .ip = {2}, .note = "axis=2 causal mask"},
    {.in = {F(2, 7, 33), F(7, 33)}, .ip = {2}, .note = "axis=2 mask"},
    {.in = {FT(7, 33)}, .ip = {1}, .note = "axis=1"},
    {.in = {FS(7, 33)}, .ip = {1}, .note = "axis=1"},
};

static const float rms_norm_eps[4] = {1e-5f};
static const variant rms_norm_variants[] = { /* x, optional weight */
    {.in = {F(1, 1)}},
    {.in = {F(7), F(7)}},
    {.in = {F(7, 33), F(33)}},
    {.in = {F(7, 33)}},
    {.in = {F(3, 1000), F(1000)}},
    {.in = {F(9, 1000)}},
    {.in = {F(5, 7, 64), F(64)}},
    {.in = {FT(7, 33), F(33)}},
    {.in = {FS(2, 7, 33), F(33)}},
};

static const variant rope_variants[] = { /* x, angles; ip = n_rot, inverse */
    {.in = {F(7, 8), F(7, 4)}, .ip = {8, 0}, .note = "n_rot=8"},
    {.in = {F(2, 7, 16), F(7, 8)}, .ip = {16, 0}, .note = "n_rot=16"},
    {.in = {F(2, 7, 33), F(7, 16)}, .ip = {32, 0}, .note = "n_rot=32"},
    {.in = {F(2, 7, 16), F(7, 4)}, .ip = {8, 1}, .note = "n_rot=8 inverse"},
    {.in = {F(3, 7, 16), F(3, 7, 8)}, .ip = {16, 0}, .note = "n_rot=16"},
    {.in = {F(2, 7, 3, 12), F(7, 1, 4)}, .ip = {8, 1}, .note = "n_rot=8 inverse"},
    {.in = {FT(7, 16), F(7, 8)}, .ip = {16, 0}, .note = "n_rot=16"},
};

static const variant get_rows_variants[] = { /* table, ids */
    {.in = {F(7, 33), IDX(TS_I32, 7, 5)}},
    {.in = {F(33, 7), IDX(TS_I64, 33, 2, 3)}},
    {.in = {F(1000), IDX(TS_I32, 1000, 7)}},
    {.in = {F(64, 3, 5), IDX(TS_I64, 64, 7)}},
    {.in = {FT(7, 33), IDX(TS_I32, 7, 4)}},
};

static const variant topk_variants[] = { /* ip[0] = k */
    {.in = {F(1)}, .ip = {1}, .note = "k=1"},
    {.in = {F(7, 33)}, .ip = {5}, .note = "k=5"},
    {.in = {F(3, 1000)}, .ip = {8}, .note = "k=8"},
    {.in = {F(2, 7, 33)}, .ip = {33}, .note = "k=33"},
    {.in = {FT(7, 33)}, .ip = {3}, .note = "k=3"},
};

static const variant gather_variants[] = { /* x, idx; ip[0] = axis */
    {.in = {F(7, 33), IDX(TS_I32, 33, 7, 5)}, .ip = {1}, .note = "axis=1"},
    {.in = {F(7, 33), IDX(TS_I64, 7, 3, 33)}, .ip = {0}, .note = "axis=0"},
    {.in = {F(2, 7, 33), IDX(TS_I32, 33, 2, 7, 1)}, .ip = {2}, .note = "axis=2"},
    {.in = {F(3, 1000), IDX(TS_I64, 1000, 3, 10)}, .ip = {1}, .note = "axis=1"},
    {.in = {F(5, 1, 65), IDX(TS_I32, 65, 5, 1, 16)}, .ip = {2}, .note = "axis=2"},
    {.in = {FT(7, 33), IDX(TS_I32, 33, 7, 4)}, .ip = {1}, .note = "axis=1"},
};

static const variant scatter_add_variants[] = { /* base, idx, values; ip[0] = axis */
    {.in = {F(7, 33), IDX(TS_I32, 33, 7, 5), F(7, 5)}, .ip = {1}, .note = "axis=1"},
    {.in = {F(7, 33), IDX(TS_I64, 7, 20, 33), F(20, 33)}, .ip = {0}, .note = "axis=0"},
    {.in = {F(2, 7, 33), IDX(TS_I32, 33, 2, 7, 3), F(2, 7, 3)}, .ip = {2}, .note = "axis=2"},
    {.in = {F(1000), IDX(TS_I64, 1000, 300), F(300)}, .ip = {0}, .note = "axis=0"},
    {.in = {FT(7, 33), IDX(TS_I32, 33, 7, 4), F(7, 4)}, .ip = {1}, .note = "axis=1"},
};

static const variant cross_entropy_variants[] = { /* logits, targets (some -1 = ignored) */
    {.in = {F(1, 7), TGT(TS_I32, 7, 1)}},
    {.in = {F(7, 33), TGT(TS_I64, 33, 7)}},
    {.in = {F(3, 1000), TGT(TS_I32, 1000, 3)}},
    {.in = {F(2, 7, 33), TGT(TS_I32, 33, 2, 7)}},
    {.in = {FT(7, 33), TGT(TS_I64, 33, 7)}},
};

/* q, k, v [, sink] [, extra, extra_idx] [, key_start]; ip = causal, window, has_sink, has_extra,
 * has_key_start; fp[0] = scale. Odd sizes, Dv != D, grouped heads (H = 4 over Hk = 2), V4's
 * shared head (Hk = 1) with extra entries whose index slots hold some -1 (TGT draws about 1 in
 * 6), extras as key | value rows (D + Dv wide; sliced and transposed too), decoding (T < S, T = 1), a window without causality, document masks (key_start: packed
 * documents, and arbitrary bounds that leave some rows empty), strided q and k, and lengths past
 * the optimized kernel's tiles (33, 100, 257: several query and key tiles, ragged last ones). */
static const variant attention_variants[] = {
    {.in = {F(1, 5, 1, 8), F(1, 5, 1, 8), F(1, 5, 1, 8)}, .ip = {1, 0, 0, 0}, .fp = {0.35f}, .note = "causal"},
    {.in = {F(2, 7, 3, 5), F(2, 7, 3, 5), F(2, 7, 3, 3)}, .ip = {0, 0, 0, 0}, .fp = {0.45f}, .note = "full"},
    {.in = {F(2, 9, 2, 4), F(2, 9, 2, 4), F(2, 9, 2, 4)}, .ip = {1, 3, 0, 0}, .fp = {0.5f}, .note = "causal window=3"},
    {.in = {F(1, 5, 2, 4), F(1, 5, 2, 4), F(1, 5, 2, 4), F(2)}, .ip = {0, 2, 1, 0}, .fp = {0.5f},
     .note = "window=2 sink"},
    {.in = {F(1, 6, 4, 8), F(1, 6, 2, 8), F(1, 6, 2, 8), F(4)}, .ip = {1, 0, 1, 0}, .fp = {0.35f},
     .note = "causal sink gqa"},
    {.in = {F(2, 8, 4, 8), F(2, 8, 1, 8), F(2, 8, 1, 8), F(4), F(2, 3, 1, 8), TGT(TS_I32, 3, 2, 8, 4)},
     .ip = {1, 4, 1, 1}, .fp = {0.35f}, .note = "causal window=4 sink extras"},
    {.in = {F(2, 3, 2, 8), F(2, 11, 1, 8), F(2, 11, 1, 8), F(2, 4, 1, 8), TGT(TS_I64, 4, 2, 3, 2)},
     .ip = {1, 5, 0, 1}, .fp = {0.35f}, .note = "decode causal window=5 extras"},
    {.in = {FT(1, 4, 2, 8), FS(1, 4, 2, 8), F(1, 4, 2, 8)}, .ip = {1, 0, 0, 0}, .fp = {0.35f}, .note = "causal"},
    {.in = {FS(1, 33, 2, 8), F(1, 33, 2, 8), FS(1, 33, 2, 8)}, .ip = {1, 0, 0, 0}, .fp = {0.35f}, .note = "causal"},
    {.in = {F(2, 13, 2, 8), F(2, 13, 2, 8), F(2, 13, 2, 8), DOC(TS_I32, 13, 2, 13)}, .ip = {1, 0, 0, 0, 1},
     .fp = {0.35f}, .note = "causal key_start"},
    {.in = {F(1, 33, 4, 16), F(1, 33, 2, 16), F(1, 33, 2, 16), F(4), DOC(TS_I64, 33, 1, 33)}, .ip = {1, 4, 1, 0, 1},
     .fp = {0.25f}, .note = "causal window=4 sink gqa key_start"},
    {.in = {F(2, 8, 4, 8), F(2, 8, 1, 8), F(2, 8, 1, 8), F(4), F(2, 3, 1, 8), TGT(TS_I32, 3, 2, 8, 4),
            DOC(TS_I32, 8, 2, 8)},
     .ip = {1, 0, 1, 1, 1}, .fp = {0.35f}, .note = "causal sink extras key_start"},
    {.in = {F(1, 7, 2, 8), F(1, 9, 2, 8), F(1, 9, 2, 5), BOUND(TS_I32, 9, 1, 7)}, .ip = {0, 0, 0, 0, 1},
     .fp = {0.35f}, .note = "key bounds"},
    {.in = {F(1, 1, 4, 16), F(1, 70, 2, 16), F(1, 70, 2, 16), F(4)}, .ip = {1, 0, 1, 0}, .fp = {0.25f},
     .note = "decode T=1 causal sink"},
    {.in = {F(1, 100, 2, 16), F(1, 100, 1, 16), F(1, 100, 1, 16), F(2)}, .ip = {1, 40, 1, 0}, .fp = {0.25f},
     .note = "causal window=40 sink"},
    {.in = {F(1, 257, 2, 8), F(1, 257, 2, 8), F(1, 257, 2, 8), DOC(TS_I32, 257, 1, 257)}, .ip = {1, 0, 0, 0, 1},
     .fp = {0.35f}, .note = "causal key_start"},
    {.in = {F(2, 9, 4, 5), F(2, 9, 2, 5), F(2, 9, 2, 3), F(4), F(2, 4, 2, 8), TGT(TS_I32, 4, 2, 9, 3),
            DOC(TS_I32, 9, 2, 9)},
     .ip = {1, 3, 1, 1, 1}, .fp = {0.4f}, .note = "causal window=3 sink gqa key|value extras key_start"},
    {.in = {F(1, 1, 4, 16), F(1, 1, 4, 16), F(1, 1, 4, 16), FS(1, 70, 4, 32), TGT(TS_I32, 70, 1, 1, 70)},
     .ip = {1, 0, 0, 1}, .fp = {0.25f}, .note = "decode T=1 causal key|value extras"},
    {.in = {F(1, 7, 2, 3), F(1, 9, 2, 3), F(1, 9, 2, 6), FT(1, 5, 2, 9), TGT(TS_I64, 5, 1, 7, 2)}, .ip = {0, 0, 0, 1},
     .fp = {0.5f}, .note = "key|value extras Dv > D"},
};

static const variant attention_back_variants[] = { /* attention's inputs, then dout and out */
    {.in = {F(1, 5, 1, 8), F(1, 5, 1, 8), F(1, 5, 1, 8), F(1, 5, 1, 8), F(1, 5, 1, 8)}, .ip = {1, 0, 0, 0},
     .fp = {0.35f}, .note = "causal"},
    {.in = {F(2, 7, 3, 5), F(2, 7, 3, 5), F(2, 7, 3, 3), F(2, 7, 3, 3), F(2, 7, 3, 3)}, .ip = {0, 2, 0, 0},
     .fp = {0.45f}, .note = "window=2"},
    {.in = {F(1, 6, 4, 8), F(1, 6, 2, 8), F(1, 6, 2, 8), F(4), F(1, 6, 4, 8), F(1, 6, 4, 8)}, .ip = {1, 0, 1, 0},
     .fp = {0.35f}, .note = "causal sink gqa"},
    {.in = {F(2, 8, 4, 8), F(2, 8, 1, 8), F(2, 8, 1, 8), F(4), F(2, 3, 1, 8), TGT(TS_I32, 3, 2, 8, 4),
            F(2, 8, 4, 8), F(2, 8, 4, 8)},
     .ip = {1, 4, 1, 1}, .fp = {0.35f}, .note = "causal window=4 sink extras"},
    {.in = {F(2, 3, 2, 8), F(2, 11, 1, 8), F(2, 11, 1, 8), F(2, 4, 1, 8), TGT(TS_I64, 4, 2, 3, 2), FT(2, 3, 2, 8),
            F(2, 3, 2, 8)},
     .ip = {1, 5, 0, 1}, .fp = {0.35f}, .note = "decode causal window=5 extras"},
    {.in = {F(2, 13, 2, 8), F(2, 13, 2, 8), F(2, 13, 2, 8), DOC(TS_I32, 13, 2, 13), F(2, 13, 2, 8),
            F(2, 13, 2, 8)},
     .ip = {1, 0, 0, 0, 1}, .fp = {0.35f}, .note = "causal key_start"},
    {.in = {F(2, 8, 4, 8), F(2, 8, 1, 8), F(2, 8, 1, 8), F(4), F(2, 3, 1, 8), TGT(TS_I32, 3, 2, 8, 4),
            DOC(TS_I64, 8, 2, 8), F(2, 8, 4, 8), F(2, 8, 4, 8)},
     .ip = {1, 4, 1, 1, 1}, .fp = {0.35f}, .note = "causal window=4 sink extras key_start"},
    {.in = {F(1, 7, 2, 8), F(1, 9, 2, 8), F(1, 9, 2, 5), F(2), BOUND(TS_I32, 9, 1, 7), FS(1, 7, 2, 5),
            F(1, 7, 2, 5)},
     .ip = {0, 0, 1, 0, 1}, .fp = {0.35f}, .note = "sink key bounds"},
    {.in = {F(1, 100, 4, 16), F(1, 100, 2, 16), F(1, 100, 2, 16), F(4), F(1, 100, 4, 16), FS(1, 100, 4, 16)},
     .ip = {1, 40, 1, 0}, .fp = {0.25f}, .note = "causal window=40 sink gqa strided out"},
    {.in = {F(1, 257, 2, 8), F(1, 257, 1, 8), F(1, 257, 1, 8), DOC(TS_I32, 257, 1, 257), F(1, 257, 2, 8),
            F(1, 257, 2, 8)},
     .ip = {1, 0, 0, 0, 1}, .fp = {0.35f}, .note = "causal key_start"},
    {.in = {F(2, 9, 4, 5), F(2, 9, 2, 5), F(2, 9, 2, 3), F(4), F(2, 4, 2, 8), TGT(TS_I32, 4, 2, 9, 3),
            DOC(TS_I32, 9, 2, 9), F(2, 9, 4, 3), F(2, 9, 4, 3)},
     .ip = {1, 3, 1, 1, 1}, .fp = {0.4f}, .note = "causal window=3 sink gqa key|value extras key_start"},
    {.in = {F(1, 3, 4, 16), F(1, 3, 4, 16), F(1, 3, 4, 16), FS(1, 40, 4, 32), TGT(TS_I32, 40, 1, 3, 40),
            DOC(TS_I32, 3, 1, 3), F(1, 3, 4, 16), F(1, 3, 4, 16)},
     .ip = {1, 0, 0, 1, 1}, .fp = {0.25f}, .note = "decode causal key|value extras key_start"},
    {.in = {F(1, 70, 4, 12), F(1, 70, 2, 12), F(1, 70, 2, 20), F(4), F(1, 9, 2, 32), TGT(TS_I32, 9, 1, 70, 5),
            F(1, 70, 4, 20), F(1, 70, 4, 20)},
     .ip = {1, 20, 1, 1}, .fp = {0.3f}, .note = "causal window=20 sink gqa key|value extras"},
    {.in = {F(1, 7, 2, 3), F(1, 9, 2, 3), F(1, 9, 2, 6), FT(1, 5, 2, 9), TGT(TS_I64, 5, 1, 7, 2), F(1, 7, 2, 6),
            F(1, 7, 2, 6)},
     .ip = {0, 0, 0, 1}, .fp = {0.5f}, .note = "key|value extras Dv > D"},
};

/* x [..., n, n]; ip[0] = iters, fp[0] = eps. mHC's shape (n = 4, 20 iterations, eps 1e-6) over
 * many tokens, n = 1 and the largest n, a large eps, and strided x. */
static const variant sinkhorn_variants[] = {
    {.in = {F(4, 4)}, .ip = {20}, .fp = {1e-6f}, .note = "iters=20"},
    {.in = {F(2, 33, 4, 4)}, .ip = {20}, .fp = {1e-6f}, .note = "iters=20"},
    {.in = {F(7, 4, 4)}, .ip = {20}, .fp = {1e-6f}, .note = "iters=20 odd count"},
    {.in = {F(5, 1, 1)}, .ip = {3}, .fp = {1e-6f}, .note = "iters=3"},
    {.in = {F(3, 16, 16)}, .ip = {4}, .fp = {0.05f}, .note = "iters=4 eps=0.05"},
    {.in = {F(2, 7, 7)}, .ip = {1}, .fp = {0}, .note = "iters=1 eps=0"},
    {.in = {FT(6, 4, 4)}, .ip = {20}, .fp = {1e-6f}, .note = "iters=20"},
    {.in = {FS(6, 3, 3)}, .ip = {7}, .fp = {1e-3f}, .note = "iters=7"},
};

static const variant sinkhorn_back_variants[] = { /* x, dy; as sinkhorn */
    {.in = {F(4, 4), F(4, 4)}, .ip = {20}, .fp = {1e-6f}, .note = "iters=20"},
    {.in = {F(2, 33, 4, 4), F(2, 33, 4, 4)}, .ip = {20}, .fp = {1e-6f}, .note = "iters=20"},
    {.in = {F(5, 1, 1), F(5, 1, 1)}, .ip = {3}, .fp = {1e-6f}, .note = "iters=3"},
    {.in = {F(3, 16, 16), F(3, 16, 16)}, .ip = {4}, .fp = {0.05f}, .note = "iters=4 eps=0.05"},
    {.in = {FT(6, 4, 4), F(6, 4, 4)}, .ip = {20}, .fp = {1e-6f}, .note = "iters=20"},
    {.in = {F(6, 3, 3), FS(6, 3, 3)}, .ip = {7}, .fp = {1e-3f}, .note = "iters=7"},
};

/* w [E, N, K], x [T, K] (a row per token) or [T, Kk, K] (a row per slot), ids [T, Kk]; ip[0] = w
 * used transposed ([E, K, N]). T = 1, 7, 33; E = 1 (every id the same); Kk = 1..4; ids drawn at
 * random, so tokens pick one expert twice and some experts none; strided x and w (sliced views
 * are read in place by the optimized kernel, a transposed w falls back to the reference). */
static const variant matmul_id_variants[] = {
    {.in = {F(4, 8, 16), F(1, 16), IDX(TS_I32, 4, 1, 2)}, .note = "decode"},
    {.in = {F(3, 7, 5), F(7, 5), IDX(TS_I64, 3, 7, 1)}, .note = "Kk=1"},
    {.in = {F(1, 9, 6), F(7, 3, 6), IDX(TS_I32, 1, 7, 3)}, .note = "E=1"},
    {.in = {F(5, 33, 17), F(33, 4, 17), IDX(TS_I32, 5, 33, 4)}, .note = "Kk=4"},
    {.in = {F(8, 12, 64), F(33, 64), IDX(TS_I64, 8, 33, 2)}, .note = "Kk=2"},
    {.in = {F(4, 16, 8), F(7, 2, 16), IDX(TS_I32, 4, 7, 2)}, .ip = {1}, .note = "trans_w"},
    {.in = {FS(3, 7, 5), FS(7, 2, 5), IDX(TS_I32, 3, 7, 2)}, .note = "Kk=2"},
    {.in = {FT(3, 7, 5), F(7, 5), IDX(TS_I32, 3, 7, 2)}, .note = "Kk=2"},
};

/* a [T, Kk, N] or [T, N], b [T, Kk, K] or [T, K], ids [T, Kk]; ip[0] = E. As matmul_id, plus more
 * experts than pairs (most gradients all zero). */
static const variant matmul_id_grad_w_variants[] = {
    {.in = {F(1, 2, 8), F(1, 16), IDX(TS_I32, 4, 1, 2)}, .ip = {4}, .note = "E=4 decode"},
    {.in = {F(1, 2, 8), F(1, 16), IDX(TS_I64, 9, 1, 2)}, .ip = {9}, .note = "E=9 unused experts"},
    {.in = {F(7, 1, 5), F(7, 9), IDX(TS_I64, 3, 7, 1)}, .ip = {3}, .note = "E=3 Kk=1"},
    {.in = {F(7, 3, 6), F(7, 3, 4), IDX(TS_I32, 1, 7, 3)}, .ip = {1}, .note = "E=1"},
    {.in = {F(33, 4, 17), F(33, 4, 12), IDX(TS_I32, 5, 33, 4)}, .ip = {5}, .note = "E=5 Kk=4"},
    {.in = {F(33, 2, 12), F(33, 64), IDX(TS_I64, 8, 33, 2)}, .ip = {8}, .note = "E=8"},
    {.in = {FS(7, 2, 5), FS(7, 2, 6), IDX(TS_I32, 3, 7, 2)}, .ip = {3}, .note = "E=3"},
    {.in = {FT(7, 2, 5), F(7, 6), IDX(TS_I32, 3, 7, 2)}, .ip = {3}, .note = "E=3"},
};

static const variant max_back_variants[] = { /* x, y = max(x), dy; ip[0] = axis */
    {.in = {F(1), F(1), F(1)}, .ip = {0}, .note = "axis=0"},
    {.in = {F(7, 33), F(7, 1), F(7, 1)}, .ip = {1}, .note = "axis=1"},
    {.in = {F(7, 33), F(1, 33), F(1, 33)}, .ip = {0}, .note = "axis=0"},
    {.in = {F(3, 1000), F(3, 1), F(3, 1)}, .ip = {1}, .note = "axis=1"},
    {.in = {F(2, 7, 33), F(2, 1, 33), F(2, 1, 33)}, .ip = {1}, .note = "axis=1"},
    {.in = {FT(7, 33), F(7, 1), F(7, 1)}, .ip = {1}, .note = "axis=1"},
};

static const variant softmax_back_variants[] = { /* y, dy; ip[0] = axis */
    {.in = {F(7, 33), F(7, 33)}, .ip = {1}, .note = "axis=1"},
    {.in = {F(7, 33), F(7, 33)}, .ip = {0}, .note = "axis=0"},
    {.in = {F(3, 1000), F(3, 1000)}, .ip = {1}, .note = "axis=1"},
    {.in = {F(2, 7, 33), F(2, 7, 33)}, .ip = {2}, .note = "axis=2"},
    {.in = {FT(7, 33), F(7, 33)}, .ip = {1}, .note = "axis=1"},
};

static const variant rms_norm_back_variants[] = { /* x, dy, optional weight */
    {.in = {F(1, 1), F(1, 1)}},
    {.in = {F(7, 33), F(7, 33), F(33)}},
    {.in = {F(7, 33), F(7, 33)}},
    {.in = {F(3, 1000), F(3, 1000), F(1000)}},
    {.in = {F(2, 7, 33), FS(2, 7, 33), FS(33)}},
    {.in = {FT(7, 33), F(7, 33), F(33)}},
};

static const variant get_rows_back_variants[] = { /* ids, dy; ip[0] = table rows */
    {.in = {IDX(TS_I32, 7, 5), F(5, 33)}, .ip = {7}, .note = "rows=7"},
    {.in = {IDX(TS_I64, 33, 2, 3), F(2, 3, 7)}, .ip = {33}, .note = "rows=33"},
    {.in = {IDX(TS_I32, 1000, 7), F(7)}, .ip = {1000}, .note = "rows=1000"},
    {.in = {IDX(TS_I32, 7, 33), FT(33, 7)}, .ip = {7}, .note = "rows=7"},
};

static const variant cross_entropy_back_variants[] = { /* logits, targets, dloss [1] */
    {.in = {F(1, 7), TGT(TS_I32, 7, 1), F(1)}},
    {.in = {F(7, 33), TGT(TS_I64, 33, 7), F(1)}},
    {.in = {F(3, 1000), TGT(TS_I32, 1000, 3), F(1)}},
    {.in = {FT(7, 33), TGT(TS_I32, 33, 7), F(1)}},
};

static const variant fill_variants[] = { /* ip = dtype, ndim, shape; fp[0] = value */
    {.ip = {CASE_DTYPE, 1, 1}, .fp = {0.3f}, .note = "[1] value=0.3"},
    {.ip = {CASE_DTYPE, 2, 7, 33}, .fp = {-2.5f}, .note = "[7,33] value=-2.5"},
    {.ip = {CASE_DTYPE, 2, 3, 1000}, .fp = {1e-3f}, .note = "[3,1000] value=0.001"},
};

static const variant copy_variants[] = { /* ip[0] = target dtype */
    {.in = {F(7, 33)}, .ip = {CASE_DTYPE}},
    {.in = {F(2, 3, 5, 7)}, .ip = {CASE_DTYPE}},
    {.in = {FT(7, 33)}, .ip = {CASE_DTYPE}},
    {.in = {FS(3, 1000)}, .ip = {CASE_DTYPE}},
    {.in = {F(7, 33)}, .ip = {TS_F32}, .note = "to f32"},
    {.in = {F(7, 33)}, .ip = {TS_F16}, .note = "to f16"},
    {.in = {F(7, 33)}, .ip = {TS_BF16}, .note = "to bf16"},
    {.in = {F(7, 33)}, .ip = {TS_F64}, .note = "to f64"},
    {.in = {FT(7, 33)}, .ip = {TS_BF16}, .note = "to bf16"},
    {.in = {FT(2, 7, 33)}, .ip = {TS_F32}, .note = "to f32"},
    {.in = {FS(2, 3, 300)}, .ip = {TS_F16}, .note = "to f16"},
};

static const variant concat_variants[] = { /* ip[0] = axis */
    {.in = {F(7, 33), F(7, 33)}, .ip = {0}, .note = "axis=0"},
    {.in = {F(7, 1), F(7, 33), F(7, 5)}, .ip = {1}, .note = "axis=1"},
    {.in = {F(1, 33), FT(7, 33), F(3, 33), FS(2, 33)}, .ip = {0}, .note = "axis=0"},
    {.in = {F(2, 7, 33), F(2, 7, 33)}, .ip = {2}, .note = "axis=2"},
    {.in = {F(3, 500), F(3, 500)}, .ip = {1}, .note = "axis=1"},
};

/* Views run no kernel; each is fed into a contiguous copy, which is what reads it. */
static const variant reshape_variants[] = { /* ip = ndim, shape */
    {.in = {F(7, 33)}, .ip = {2, 33, 7}, .note = "to [33,7]"},
    {.in = {F(2, 3, 5, 7)}, .ip = {1, 210}, .note = "to [210]"},
    {.in = {F(1000)}, .ip = {3, 10, 10, 10}, .note = "to [10,10,10]"},
    {.in = {FT(7, 33)}, .ip = {1, 231}, .note = "to [231]"},
};

static const variant permute_variants[] = { /* ip = perm */
    {.in = {F(7, 33)}, .ip = {1, 0}, .note = "perm=1,0"},
    {.in = {F(2, 7, 33)}, .ip = {2, 0, 1}, .note = "perm=2,0,1"},
    {.in = {F(2, 3, 5, 7)}, .ip = {0, 2, 3, 1}, .note = "perm=0,2,3,1"},
    {.in = {FS(7, 33)}, .ip = {1, 0}, .note = "perm=1,0"},
};

static const variant slice_variants[] = { /* ip = axis, start, length */
    {.in = {F(7, 33)}, .ip = {1, 3, 20}, .note = "axis=1 [3,23)"},
    {.in = {F(7, 33)}, .ip = {0, 2, 4}, .note = "axis=0 [2,6)"},
    {.in = {F(3, 1000)}, .ip = {1, 1, 999}, .note = "axis=1 [1,1000)"},
    {.in = {FT(7, 33)}, .ip = {0, 1, 5}, .note = "axis=0 [1,6)"},
};

static const variant expand_variants[] = { /* ip = ndim, shape */
    {.in = {F(1, 33)}, .ip = {2, 7, 33}, .note = "to [7,33]"},
    {.in = {F(7, 1)}, .ip = {2, 7, 33}, .note = "to [7,33]"},
    {.in = {F(33)}, .ip = {3, 2, 7, 33}, .note = "to [2,7,33]"},
    {.in = {FT(1, 33)}, .ip = {2, 7, 33}, .note = "to [7,33]"},
};

static const float scale_factor[4] = {-1.75f};
static const float clamp_bounds[4] = {CLAMP_LO, CLAMP_HI};

#define OP(op, variants) {op, variants, COUNT(variants), NULL}
#define OP_FP(op, variants, fp) {op, variants, COUNT(variants), fp}

/* Every op except TS_OP_NONE, in enum order (test_conformance checks that none is missing). */
static const op_entry op_table[] = {
    OP(TS_OP_RESHAPE, reshape_variants),
    OP(TS_OP_PERMUTE, permute_variants),
    OP(TS_OP_SLICE, slice_variants),
    OP(TS_OP_EXPAND, expand_variants),
    OP(TS_OP_FILL, fill_variants),
    OP(TS_OP_COPY, copy_variants),
    OP(TS_OP_CONCAT, concat_variants),
    OP(TS_OP_ADD, binary_variants),
    OP(TS_OP_SUB, binary_variants),
    OP(TS_OP_MUL, binary_variants),
    OP(TS_OP_DIV, binary_variants),
    OP_FP(TS_OP_SCALE, unary_variants, scale_factor),
    OP(TS_OP_EXP, unary_variants),
    OP(TS_OP_LOG, unary_variants),
    OP(TS_OP_SQRT, unary_variants),
    OP(TS_OP_SIGMOID, unary_variants),
    OP(TS_OP_SOFTPLUS, unary_variants),
    OP(TS_OP_SILU, unary_variants),
    OP(TS_OP_RELU, unary_variants),
    OP_FP(TS_OP_CLAMP, unary_variants, clamp_bounds),
    OP(TS_OP_SUM, reduce_variants),
    OP(TS_OP_MEAN, reduce_variants),
    OP(TS_OP_MAX, reduce_variants),
    OP(TS_OP_SUM_TO, sum_to_variants),
    OP(TS_OP_MATMUL, matmul_variants),
    OP(TS_OP_SOFTMAX, softmax_variants),
    OP_FP(TS_OP_RMS_NORM, rms_norm_variants, rms_norm_eps),
    OP(TS_OP_ROPE, rope_variants),
    OP(TS_OP_GET_ROWS, get_rows_variants),
    OP(TS_OP_TOPK, topk_variants),
    OP(TS_OP_GATHER, gather_variants),
    OP(TS_OP_SCATTER_ADD, scatter_add_variants),
    OP(TS_OP_CROSS_ENTROPY, cross_entropy_variants),
    OP(TS_OP_ATTENTION, attention_variants),
    OP(TS_OP_SINKHORN, sinkhorn_variants),
    OP(TS_OP_MATMUL_ID, matmul_id_variants),
    OP(TS_OP_SWIGLU, swiglu_variants),
    OP(TS_OP_SIGMOID_BACK, unary_back_variants),
    OP(TS_OP_SILU_BACK, unary_back_variants),
    OP(TS_OP_RELU_BACK, unary_back_variants),
    OP_FP(TS_OP_CLAMP_BACK, unary_back_variants, clamp_bounds),
    OP(TS_OP_MAX_BACK, max_back_variants),
    OP(TS_OP_SOFTMAX_BACK, softmax_back_variants),
    OP_FP(TS_OP_RMS_NORM_BACK, rms_norm_back_variants, rms_norm_eps),
    OP(TS_OP_GET_ROWS_BACK, get_rows_back_variants),
    OP(TS_OP_CROSS_ENTROPY_BACK, cross_entropy_back_variants),
    OP(TS_OP_ATTENTION_BACK, attention_back_variants),
    OP(TS_OP_SINKHORN_BACK, sinkhorn_back_variants),
    OP(TS_OP_MATMUL_ID_GRAD_W, matmul_id_grad_w_variants),
    OP(TS_OP_SWIGLU_BACK, swiglu_back_variants),
};

/* f64 too: a backend that supports it must get it right; one that does not reports unsupported. */
static const ts_dtype case_dtypes[] = {TS_F32, TS_F16, TS_BF16, TS_F64};

/* The values each op's inputs are drawn from when the variant does not say. */
static value_gen op_domain(ts_op op, int i) {
    switch (op) {
    case TS_OP_LOG: case TS_OP_SQRT: return GEN_POSITIVE;
    case TS_OP_DIV: return i == 1 ? GEN_AWAY_FROM_ZERO : GEN_NORMAL;
    case TS_OP_RELU: case TS_OP_RELU_BACK: return i == 0 ? GEN_AWAY_FROM_ZERO : GEN_NORMAL;
    case TS_OP_CLAMP: case TS_OP_CLAMP_BACK: return i == 0 ? GEN_AWAY_FROM_CLAMP : GEN_NORMAL;
    case TS_OP_SWIGLU: case TS_OP_SWIGLU_BACK: return i < 2 ? GEN_AWAY_FROM_LIMIT : GEN_NORMAL;
    case TS_OP_SIGMOID_BACK: case TS_OP_SOFTMAX_BACK: return i == 0 ? GEN_PROBABILITY : GEN_NORMAL;
    case TS_OP_MAX: return GEN_UNIQUE_MAX;
    case TS_OP_MAX_BACK: return i == 0 ? GEN_UNIQUE_MAX : i == 1 ? GEN_MAX_OF_SRC0 : GEN_NORMAL;
    case TS_OP_ROPE: return i == 1 ? GEN_ANGLE : GEN_NORMAL;
    default: return GEN_NORMAL;
    }
}

/* Inputs that become parameters in gradient mode: every float input except rope's angles (they
 * come from positions; autodiff refuses a gradient for them rather than return a partial one). */
static bool input_differentiable(ts_op op, int i) { return !(op == TS_OP_ROPE && i == 1); }

/* Ops whose gradient mode cases exist: everything autodiff differentiates. Fill and top-k have
 * no gradient; the *_BACK helpers are themselves the gradients (checked by their own cases). */
static bool op_differentiable(ts_op op) {
    return op != TS_OP_FILL && op != TS_OP_TOPK && op < TS_OP_FIRST_BACKWARD_;
}

/* ================================================================ 3. enumeration and names */

typedef struct {
    const op_entry *entry;
    const variant *var;
    ts_dtype dtype;
    bool grad;
    char name[160];
} conf_case;

static bool is_index_gen(value_gen g) {
    return g == GEN_INDEX || g == GEN_TARGET || g == GEN_DOC_START || g == GEN_KEY_BOUND;
}

static int variant_n_inputs(const variant *v) {
    int n = 0;
    while (n < TS_MAX_SRC && v->in[n].ndim > 0) n++;
    return n;
}

static value_gen input_gen(const conf_case *c, int i) {
    value_gen g = c->var->in[i].gen;
    return g == GEN_DEFAULT ? op_domain(c->entry->op, i) : g;
}

/* Appends printf output to buf at *len, never past size. */
static void append(char *buf, size_t size, size_t *len, const char *fmt, ...) {
    if (*len >= size) return;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf + *len, size - *len, fmt, ap);
    va_end(ap);
    if (n > 0) *len = (*len + (size_t)n < size) ? *len + (size_t)n : size;
}

/* "matmul f32 [7,33]x[33,1]", "add bf16 [7,33]^T,[7,33]", "gather f16 [7,33],i64[3,33] axis=0" */
static void make_case_name(conf_case *c) {
    size_t len = 0, size = sizeof c->name;
    const variant *v = c->var;
    append(c->name, size, &len, "%s%s %s", c->grad ? "grad " : "", ts_op_name(c->entry->op), ts_dtype_name(c->dtype));
    const char *sep = c->entry->op == TS_OP_MATMUL ? "x" : ",";
    for (int i = 0; i < variant_n_inputs(v); i++) {
        const input_spec *in = &v->in[i];
        const char *index_type = is_index_gen(in->gen) ? ts_dtype_name(in->index_dtype) : "";
        const char *view = in->layout == LAYOUT_TRANSPOSED ? "^T" : in->layout == LAYOUT_SLICED ? "^S" : "";
        append(c->name, size, &len, "%s%s[", i ? sep : " ", index_type);
        for (int d = 0; d < in->ndim; d++) append(c->name, size, &len, d ? ",%lld" : "%lld", (long long)in->shape[d]);
        append(c->name, size, &len, "]%s", view);
    }
    if (v->note) append(c->name, size, &len, " %s", v->note);
}

typedef bool (*case_visitor)(const conf_case *c, void *ctx); /* false: stop */

/* Calls fn (if not NULL) for each case selected by opts, in table order; returns how many. */
static int for_each_case(const ts_conformance_options *opts, case_visitor fn, void *ctx) {
    bool grad = opts && opts->gradients;
    const char *filter = (opts && opts->op_filter && opts->op_filter[0]) ? opts->op_filter : NULL;
    int count = 0;
    for (int e = 0; e < COUNT(op_table); e++) {
        if (grad && !op_differentiable(op_table[e].op)) continue;
        for (int v = 0; v < op_table[e].n_variants; v++) {
            for (int t = 0; t < COUNT(case_dtypes); t++) {
                conf_case c = {.entry = &op_table[e], .var = &op_table[e].variants[v], .dtype = case_dtypes[t],
                               .grad = grad};
                make_case_name(&c);
                if (filter && !strstr(c.name, filter)) continue;
                count++;
                if (fn && !fn(&c, ctx)) return count;
            }
        }
    }
    return count;
}

/* ================================================================ 4. per-case data */

/* Host copies of everything a case writes, in f64 holding values exactly representable in the
 * tensor's dtype, so the backend under test and the oracle are given identical numbers. */
typedef struct {
    int n_in;
    double *logical[TS_MAX_SRC];  /* each input as the op sees it, row-major */
    int64_t n_logical[TS_MAX_SRC];
    double *leaf[TS_MAX_SRC];     /* each input's leaf storage (padding included) */
    int64_t n_leaf[TS_MAX_SRC];
    double *weights;              /* gradient mode: the loss weights, shaped like the op's result */
    int64_t n_weights;
} case_data;

static void case_data_free(case_data *d) {
    for (int i = 0; i < TS_MAX_SRC; i++) {
        free(d->logical[i]);
        free(d->leaf[i]);
    }
    free(d->weights);
    memset(d, 0, sizeof *d);
}

static int64_t shape_elements(int ndim, const int64_t *shape) {
    int64_t n = 1;
    for (int d = 0; d < ndim; d++) n *= shape[d];
    return n;
}

/* Elements between neighbours along axis a of a contiguous tensor. */
static int64_t inner_size(int ndim, const int64_t *shape, int a) {
    return shape_elements(ndim - a - 1, shape + a + 1);
}

/* The value stored when v is written to a tensor of dtype t and read back. */
static double round_to_dtype(double v, ts_dtype t) {
    unsigned char b[8] = {0};
    ts_store_f64(b, t, 0, v);
    return ts_load_f64(b, t, 0);
}

static double uniform(ts_rng *r, double lo, double hi) { return lo + (hi - lo) * ts_rng_uniform(r); }

static double random_sign(ts_rng *r) { return (ts_rng_next(r) >> 63) ? -1.0 : 1.0; }

static int64_t random_below(ts_rng *r, int64_t n) { return (int64_t)(ts_rng_next(r) % (uint64_t)n); }

/* One independent draw of an elementwise generator. */
static double draw(ts_rng *r, value_gen g, int64_t hi) {
    switch (g) {
    case GEN_POSITIVE: return uniform(r, 0.25, 4.0);
    case GEN_AWAY_FROM_ZERO: return random_sign(r) * uniform(r, 0.25, 2.0);
    case GEN_AWAY_FROM_CLAMP: {
        double x = ts_rng_normal(r);
        if (fabs(x - CLAMP_LO) < 0.05) x = CLAMP_LO - 0.1;
        if (fabs(x - CLAMP_HI) < 0.05) x = CLAMP_HI + 0.1;
        return x;
    }
    case GEN_AWAY_FROM_LIMIT: {
        double x = ts_rng_normal(r);
        return fabs(fabs(x) - SWIGLU_LIMIT) < 0.05 ? x + (x < 0 ? -0.1 : 0.1) : x;
    }
    case GEN_PROBABILITY: return uniform(r, 0.05, 0.95);
    case GEN_ANGLE: return uniform(r, -3.141592653589793, 3.141592653589793);
    case GEN_UNIQUE_MAX: return uniform(r, -2.0, 2.0);
    case GEN_INDEX: return (double)random_below(r, hi);
    case GEN_TARGET: return random_below(r, 6) == 0 ? -1.0 : (double)random_below(r, hi);
    case GEN_KEY_BOUND: return (double)(random_below(r, hi + 4) - 2);
    default: return ts_rng_normal(r);
    }
}

/* Raises one random element of every lane along axis a by 4, so each lane has a unique max. */
static void make_max_unique(ts_rng *r, double *x, const input_spec *in, int a) {
    int64_t len = in->shape[a], inner = inner_size(in->ndim, in->shape, a);
    int64_t lanes = shape_elements(in->ndim, in->shape) / len;
    for (int64_t l = 0; l < lanes; l++) {
        int64_t base = (l / inner) * len * inner + l % inner;
        x[base + random_below(r, len) * inner] += 4.0;
    }
}

/* y[j] = max of x along axis a, where y is x's shape with axis a of size 1. */
static void max_along_axis(const double *x, const input_spec *xin, int a, double *y) {
    int64_t len = xin->shape[a], inner = inner_size(xin->ndim, xin->shape, a);
    int64_t n = shape_elements(xin->ndim, xin->shape);
    for (int64_t j = 0; j < n / len; j++) y[j] = -INFINITY;
    for (int64_t i = 0; i < n; i++) {
        int64_t j = (i / (len * inner)) * inner + i % inner;
        if (x[i] > y[j]) y[j] = x[i];
    }
}

static void causal_mask(double *m, const input_spec *in) {
    int64_t rows = in->shape[in->ndim - 2], cols = in->shape[in->ndim - 1];
    int64_t n = shape_elements(in->ndim, in->shape);
    for (int64_t i = 0; i < n; i++) {
        int64_t col = i % cols, row = (i / cols) % rows;
        m[i] = col <= row ? 0.0 : -INFINITY;
    }
}

/* Packed documents over the hi keys of each batch row (a new one starts at a key with
 * probability 1/5; the first at 0), and each query's document start: query t sits at position
 * hi - T + t (decoding against a cache when T < hi). */
static void doc_starts(ts_rng *r, double *x, const input_spec *in) {
    int64_t B = in->shape[0], T = in->shape[1], S = in->hi;
    for (int64_t i = 0; i < B * T; i++) x[i] = 0; /* queries before the first key (T > hi) */
    for (int64_t b = 0; b < B; b++) {
        int64_t start = 0;
        for (int64_t pos = 0; pos < S; pos++) {
            if (pos > 0 && random_below(r, 5) == 0) start = pos;
            int64_t t = pos - (S - T);
            if (t >= 0) x[b * T + t] = (double)start;
        }
    }
}

/* Fills the logical values of input i (inputs before it are already drawn: max_back reads x). */
static void generate_input(const conf_case *c, int i, ts_rng *r, case_data *d) {
    const input_spec *in = &c->var->in[i];
    value_gen g = input_gen(c, i);
    double *x = d->logical[i];
    int64_t n = d->n_logical[i];
    int axis = c->var->ip[0];
    if (g == GEN_MAX_OF_SRC0) {
        max_along_axis(d->logical[0], &c->var->in[0], axis, x);
    } else if (g == GEN_CAUSAL_MASK) {
        causal_mask(x, in);
    } else if (g == GEN_DOC_START) {
        doc_starts(r, x, in);
    } else {
        for (int64_t k = 0; k < n; k++) x[k] = draw(r, g, in->hi);
        if (g == GEN_UNIQUE_MAX) make_max_unique(r, x, in, axis);
        if (g == GEN_TARGET) x[0] = (double)random_below(r, in->hi); /* at least one counted target */
    }
    ts_dtype t = is_index_gen(g) ? in->index_dtype : c->dtype;
    for (int64_t k = 0; k < n; k++) x[k] = round_to_dtype(x[k], t);
}

/* Storage offset (elements) of logical element i of t, relative to the start of its leaf. */
static int64_t storage_offset(const ts_tensor *t, int64_t i) {
    int64_t off = t->view_src ? t->offset : 0;
    for (int d = t->ndim - 1; d >= 0; d--) {
        off += (i % t->shape[d]) * t->stride[d];
        i /= t->shape[d];
    }
    return off;
}

/* Places input i's logical values into its leaf as the view `fed` reads them; the rest of the
 * leaf gets PADDING_VALUE (index leaves: 0, still in range for a backend that wrongly reads it). */
static void scatter_to_leaf(const ts_tensor *fed, bool is_index, case_data *d, int i) {
    for (int64_t k = 0; k < d->n_leaf[i]; k++) d->leaf[i][k] = is_index ? 0.0 : PADDING_VALUE;
    for (int64_t k = 0; k < d->n_logical[i]; k++) d->leaf[i][storage_offset(fed, k)] = d->logical[i][k];
}

static uint64_t name_hash(const char *s) {
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

/* ================================================================ 5. case graphs */

typedef struct {
    ts_graph *g;
    int n_in;
    ts_tensor *leaf[TS_MAX_SRC];  /* the leaves holding each input */
    ts_tensor *fed[TS_MAX_SRC];   /* what the op reads: the leaf or a view of it */
    ts_tensor *y;                 /* the op's result, contiguous */
    ts_tensor *weights;           /* gradient mode: loss = sum(y * weights) */
} case_graph;

static ts_tensor *new_input_leaf(ts_graph *g, const input_spec *in, ts_dtype t, bool param, int i) {
    int64_t shape[TS_MAX_DIMS];
    memcpy(shape, in->shape, sizeof shape);
    int last = in->ndim - 1;
    if (in->layout == LAYOUT_TRANSPOSED && in->ndim >= 2) {
        shape[last] = in->shape[last - 1];
        shape[last - 1] = in->shape[last];
    } else if (in->layout == LAYOUT_SLICED) {
        shape[last] += SLICE_PAD;
    }
    char name[16];
    snprintf(name, sizeof name, "in%d", i);
    ts_tensor *leaf = ts_new_tensor(g, t, in->ndim, shape, name);
    return param ? ts_set_param(leaf) : leaf;
}

static ts_tensor *view_of_leaf(ts_graph *g, const input_spec *in, ts_tensor *leaf) {
    switch (in->layout) {
    case LAYOUT_TRANSPOSED: return ts_transpose(g, leaf, -1, -2);
    case LAYOUT_SLICED: return ts_slice(g, leaf, -1, SLICE_START, in->shape[in->ndim - 1]);
    default: return leaf;
    }
}

/* The op's parameters. Dtype parameters (copy's target, fill's dtype) become f64 in the oracle. */
static void case_params(const conf_case *c, bool oracle, int32_t ip[8], float fp[4]) {
    memcpy(ip, c->var->ip, 8 * sizeof ip[0]);
    memcpy(fp, c->entry->fp ? c->entry->fp : c->var->fp, 4 * sizeof fp[0]);
    ts_op op = c->entry->op;
    if (op == TS_OP_COPY || op == TS_OP_FILL) ip[0] = oracle ? TS_F64 : ip[0] == CASE_DTYPE ? (int32_t)c->dtype : ip[0];
}

/* sum(y * weights) as a [1] tensor; the weights leaf is returned in *weights. */
static ts_tensor *weighted_sum(ts_graph *g, ts_tensor *y, ts_tensor **weights) {
    *weights = ts_new_tensor(g, y->dtype, y->ndim, y->shape, "loss_weights");
    int64_t n = ts_nelements(y);
    ts_tensor *flat = ts_reshape(g, ts_mul(g, y, *weights), 1, &n);
    int32_t axis0 = 0;
    return flat ? ts_op_node(g, TS_OP_SUM, &flat, 1, &axis0, 1, NULL, 0) : NULL;
}

/* Builds the case's graph: inputs in the case dtype (oracle: f64), the op, and in gradient mode
 * the weighted-sum loss and its backward graph. Returns the graph's status; cg->g is set even on
 * error (its message says what failed). */
static ts_status build_case_graph(const conf_case *c, bool oracle, case_graph *cg) {
    memset(cg, 0, sizeof *cg);
    cg->g = ts_graph_new();
    if (!cg->g) return TS_ERR_OOM;
    ts_graph *g = cg->g;
    ts_dtype ft = oracle ? TS_F64 : c->dtype;
    cg->n_in = variant_n_inputs(c->var);
    for (int i = 0; i < cg->n_in; i++) {
        const input_spec *in = &c->var->in[i];
        bool index = is_index_gen(in->gen), param = c->grad && !index && input_differentiable(c->entry->op, i);
        cg->leaf[i] = new_input_leaf(g, in, index ? in->index_dtype : ft, param, i);
        cg->fed[i] = cg->leaf[i] ? view_of_leaf(g, in, cg->leaf[i]) : NULL;
    }
    int32_t ip[8];
    float fp[4];
    case_params(c, oracle, ip, fp);
    ts_tensor *y = ts_op_node(g, c->entry->op, cg->fed, cg->n_in, ip, 8, fp, 4);
    if (y && ts_is_view(y)) y = ts_cont(g, y); /* a view runs no kernel: the copy reads it */
    cg->y = y;
    if (y && c->grad) {
        ts_tensor *loss = weighted_sum(g, y, &cg->weights);
        if (loss) ts_graph_backward(g, loss);
    } else if (y) {
        ts_set_output(y);
    }
    if (!y && ts_graph_status(g) == TS_OK) ts_graph_set_error(g, TS_ERR_INTERNAL, "op constructor returned NULL");
    return ts_graph_status(g);
}

/* Whether `be` supports every node of the graph. */
static bool graph_supported(ts_backend *be, const ts_graph *g) {
    for (int i = 0; i < ts_graph_n_nodes(g); i++)
        if (!ts_backend_supports_op(be, ts_graph_node(g, i))) return false;
    return true;
}

/* Draws the case's inputs (and loss weights) with the case's own seed, so a case sees the same
 * numbers whatever the filter; `cg` (the graph under test) gives the leaf layouts. */
static ts_status generate_case_data(const conf_case *c, const case_graph *cg, case_data *d) {
    memset(d, 0, sizeof *d);
    ts_rng r;
    ts_rng_seed(&r, SEED ^ name_hash(c->name));
    d->n_in = cg->n_in;
    for (int i = 0; i < d->n_in; i++) {
        const input_spec *in = &c->var->in[i];
        d->n_logical[i] = shape_elements(in->ndim, in->shape);
        d->n_leaf[i] = ts_nelements(cg->leaf[i]);
        d->logical[i] = malloc((size_t)d->n_logical[i] * sizeof(double));
        d->leaf[i] = malloc((size_t)d->n_leaf[i] * sizeof(double));
        if (!d->logical[i] || !d->leaf[i]) return TS_ERR_OOM;
        generate_input(c, i, &r, d);
        scatter_to_leaf(cg->fed[i], is_index_gen(in->gen), d, i);
    }
    if (cg->weights) {
        d->n_weights = ts_nelements(cg->weights);
        d->weights = malloc((size_t)d->n_weights * sizeof(double));
        if (!d->weights) return TS_ERR_OOM;
        for (int64_t k = 0; k < d->n_weights; k++)
            d->weights[k] = round_to_dtype(ts_rng_normal(&r), cg->weights->dtype);
    }
    return TS_OK;
}

/* ================================================================ 6. running and comparing */

static ts_status write_values(ts_tensor *t, const double *v) {
    int64_t n = ts_nelements(t);
    size_t bytes = ts_nbytes(t);
    unsigned char *buf = malloc(bytes ? bytes : 1);
    if (!buf) return TS_ERR_OOM;
    for (int64_t k = 0; k < n; k++) ts_store_f64(buf, t->dtype, k, v[k]);
    ts_status s = ts_tensor_write(t, buf, bytes);
    free(buf);
    return s;
}

/* Reads t (any dtype) into a new f64 array; NULL when out of memory or the read fails. */
static double *read_values(const ts_tensor *t) {
    int64_t n = ts_nelements(t);
    size_t bytes = ts_nbytes(t);
    unsigned char *buf = malloc(bytes ? bytes : 1);
    double *v = malloc((size_t)n * sizeof(double));
    if (!buf || !v || ts_tensor_read(t, buf, bytes) != TS_OK) {
        free(buf);
        free(v);
        return NULL;
    }
    for (int64_t k = 0; k < n; k++) v[k] = ts_load_f64(buf, t->dtype, k);
    free(buf);
    return v;
}

/* Allocates the graph on `be` with guards, writes the case's data, computes and checks the
 * guards. On failure msg says which step failed and why. */
static ts_status execute(case_graph *cg, ts_backend *be, const case_data *d, char *msg, size_t msize) {
    ts_plan_options po = {.guard_bytes = GUARD_BYTES};
    ts_status s = ts_graph_alloc(cg->g, be, &po, NULL);
    if (s != TS_OK) {
        snprintf(msg, msize, "alloc: %s: %s", ts_status_name(s), ts_graph_error(cg->g));
        return s;
    }
    for (int i = 0; i < cg->n_in && s == TS_OK; i++) s = write_values(cg->leaf[i], d->leaf[i]);
    if (s == TS_OK && cg->weights) s = write_values(cg->weights, d->weights);
    if (s != TS_OK) {
        snprintf(msg, msize, "writing inputs: %s: %s", ts_status_name(s), ts_graph_error(cg->g));
        return s;
    }
    s = ts_graph_compute(cg->g);
    if (s != TS_OK) {
        snprintf(msg, msize, "compute: %s: %s", ts_status_name(s), ts_graph_error(cg->g));
        return s;
    }
    s = ts_graph_check_guards(cg->g);
    if (s != TS_OK) snprintf(msg, msize, "guard bytes damaged: %s", ts_graph_error(cg->g));
    return s;
}

/* The tensors a case compares: the op's result, or (gradient mode) the gradient of every
 * parameter leaf. Returns how many; entries may be NULL when autodiff produced no gradient. */
static int case_outputs(const conf_case *c, const case_graph *cg, ts_tensor **outs) {
    if (!c->grad) {
        outs[0] = cg->y;
        return 1;
    }
    int n = 0;
    for (int i = 0; i < cg->n_in; i++)
        if (cg->leaf[i]->flags & TS_FLAG_PARAM) outs[n++] = ts_grad(cg->leaf[i]);
    return n;
}

/* Squared differences and the oracle's energy over the finite elements. */
typedef struct {
    double err, energy;
    int64_t n;
} error_sums;

/* Sums y against ref; false with msg set when y has NaN/Inf where ref is finite (or differs
 * from a non-finite ref). */
static bool sum_errors(const double *y, const double *ref, int64_t n, error_sums *e, char *msg, size_t msize) {
    memset(e, 0, sizeof *e);
    for (int64_t k = 0; k < n; k++) {
        bool ref_finite = isfinite(ref[k]);
        if (!ref_finite || !isfinite(y[k])) {
            bool same = isnan(ref[k]) ? isnan(y[k]) : y[k] == ref[k];
            if (ref_finite || !same) {
                snprintf(msg, msize, "element %lld is %g, oracle %g", (long long)k, y[k], ref[k]);
                return false;
            }
            continue;
        }
        e->err += (y[k] - ref[k]) * (y[k] - ref[k]);
        e->energy += ref[k] * ref[k];
        e->n++;
    }
    return true;
}

/* Top-k returns indices; what matters is which values they select, so both index sets are
 * turned into the selected input values (equal values are interchangeable: ties may go either
 * way when a backend compares in its own precision). Checks range and distinctness per row.
 * True when the gathered values agree exactly, else false with msg set. */
static bool compare_topk(const double *idx, const double *ref_idx, const ts_tensor *y, const case_data *d,
                           char *msg, size_t msize) {
    const double *x = d->logical[0];
    int64_t k = y->shape[y->ndim - 1], n_out = ts_nelements(y);
    int64_t row_len = d->n_logical[0] / (n_out / k);
    for (int64_t j = 0; j < n_out; j++) {
        int64_t row = j / k, col = j % k;
        double v = idx[j];
        if (!(v >= 0 && v < (double)row_len) || v != floor(v)) {
            snprintf(msg, msize, "index %lld is %g, outside [0, %lld)", (long long)j, v, (long long)row_len);
            return false;
        }
        for (int64_t p = row * k; p < j; p++)
            if (idx[p] == v) {
                snprintf(msg, msize, "row %lld selects index %g twice", (long long)row, v);
                return false;
            }
        double got = x[row * row_len + (int64_t)v], want = x[row * row_len + (int64_t)ref_idx[j]];
        if (got != want) {
            snprintf(msg, msize, "row %lld rank %lld selects %g (index %g), oracle %g (index %g)", (long long)row,
                     (long long)col, got, v, want, ref_idx[j]);
            return false;
        }
    }
    return true;
}

double ts_conformance_tolerance(ts_dtype t) {
    /* Normalized MSE is a mean squared relative error. The oracle is exact (f64 on identical
     * inputs), so an honest backend's error is its output rounding, relative error <= u (unit
     * roundoff), i.e. nmse <= u^2, plus what its own arithmetic adds. Each bound leaves room for
     * that arithmetic but not for a wrong result: */
    switch (t) {
    case TS_F64: return 1e-24;  /* u^2 = 1.2e-32; 1e-24 allows rms relative error 1e-12 (summation
                                   order, fused multiply-add, library exp/log) */
    case TS_F32: return 1e-10;  /* u^2 = 3.6e-15; allows rms relative error 1e-5: f32 accumulation
                                   over K <= 1000 and few-ulp exp/rsqrt approximations */
    case TS_F16: return 1e-6;   /* u = 2^-11, u^2 = 2.4e-7; allows rms relative error 1e-3 (2 ulp):
                                   one rounding of the output plus one of an intermediate */
    case TS_BF16: return 1e-4;  /* u = 2^-8, u^2 = 1.5e-5; allows rms relative error 1e-2 (2.6 ulp),
                                   the same margin as f16 */
    default: return 0;          /* integers (and top-k's selected values) must match exactly */
    }
}

/* The spacing of the dtype's subnormals: below it a value cannot be stored more closely, so the
 * relative bound u breaks down there (an f16 gradient of 1e-6 is rounded to a multiple of
 * 6e-8). Each element may therefore also be off by this much. */
static double subnormal_step(ts_dtype t) {
    switch (t) {
    case TS_F16: return 0x1p-24;
    case TS_BF16: return 0x1p-133;
    case TS_F32: return 0x1p-149;
    default: return 0;
    }
}

double ts_conformance_grad_factor(void) {
    /* A gradient is the end of a chain (forward result, seed, backward ops), each link rounded to
     * the case dtype, and backward formulas such as softmax's y * (dy - sum(y * dy)) amplify the
     * rounding of their inputs where terms cancel. On the reference backend gradient errors reach
     * a few u^2; 10x the forward bound keeps a margin without hiding a wrong rule (a 1% scale
     * error is nmse 1e-4). */
    return 10.0;
}

typedef struct {
    bool passed;
    double nmse;     /* worst over the compared outputs */
    double ratio;    /* nmse / tolerance, worst */
    char msg[512];
} case_verdict;

static void verdict_fail(case_verdict *v, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(v->msg, sizeof v->msg, fmt, ap);
    va_end(ap);
    v->passed = false;
}

/* Checks output values y against ref for output dtype t: sum (y - ref)^2 must stay within
 * tolerance * sum ref^2 (scaled in gradient mode) plus one subnormal step squared per element
 * (twice the rounding error of storing a subnormal; not scaled: it only covers that rounding). */
static void check_error_budget(const conf_case *c, ts_dtype t, const double *y, const double *ref, int64_t n,
                               const char *what, case_verdict *v) {
    char msg[256];
    error_sums e;
    if (!sum_errors(y, ref, n, &e, msg, sizeof msg)) {
        verdict_fail(v, "%s: %s", what, msg);
        return;
    }
    double scale = c->grad ? ts_conformance_grad_factor() : 1, tol = ts_conformance_tolerance(t) * scale;
    double step = subnormal_step(t), allowed = tol * e.energy + (double)e.n * step * step;
    double nmse = e.err / fmax(e.energy, DBL_MIN);
    if (nmse > v->nmse) v->nmse = nmse;
    if (allowed > 0 && e.err / allowed > v->ratio) v->ratio = e.err / allowed;
    if (e.err > allowed) verdict_fail(v, "%s: nmse %.2e > tolerance %.0e", what, nmse, tol);
}

/* Compares output k of the backend (t) with the oracle's (ref_t). */
static void compare_output(const conf_case *c, int k, const ts_tensor *t, const ts_tensor *ref_t,
                           const case_data *d, case_verdict *v) {
    char what[200], desc[160], msg[256];
    if (c->grad) snprintf(what, sizeof what, "gradient %d %s", k, t ? ts_tensor_describe(t, desc, sizeof desc) : "");
    else snprintf(what, sizeof what, "output %s", t ? ts_tensor_describe(t, desc, sizeof desc) : "");
    if (!t || !ref_t) {
        verdict_fail(v, "%s: %s", what, !t ? "missing on the backend" : "missing in the oracle");
        return;
    }
    if (ts_nelements(t) != ts_nelements(ref_t)) {
        verdict_fail(v, "%s: %lld elements, oracle %lld", what, (long long)ts_nelements(t),
                     (long long)ts_nelements(ref_t));
        return;
    }
    double *y = read_values(t), *ref = read_values(ref_t);
    if (!y || !ref) verdict_fail(v, "%s: could not read the result", what);
    else if (c->entry->op == TS_OP_TOPK && !c->grad) {
        if (!compare_topk(y, ref, t, d, msg, sizeof msg)) verdict_fail(v, "%s: %s", what, msg);
    } else {
        check_error_budget(c, t->dtype, y, ref, ts_nelements(t), what, v);
    }
    free(y);
    free(ref);
}

/* The oracle side: the same case in f64 on the reference backend. */
static void run_oracle_and_compare(const conf_case *c, const case_graph *cg, const case_data *d, ts_backend *oracle,
                                   case_verdict *v) {
    case_graph ref;
    char msg[400];
    ts_status s = build_case_graph(c, true, &ref);
    if (s != TS_OK) {
        verdict_fail(v, "oracle build: %s", ts_graph_error(ref.g));
    } else if (execute(&ref, oracle, d, msg, sizeof msg) != TS_OK) {
        verdict_fail(v, "oracle %s", msg);
    } else {
        ts_tensor *outs[TS_MAX_SRC], *ref_outs[TS_MAX_SRC];
        int n = case_outputs(c, cg, outs);
        case_outputs(c, &ref, ref_outs);
        for (int k = 0; k < n && v->passed; k++) compare_output(c, k, outs[k], ref_outs[k], d, v);
    }
    ts_graph_free(ref.g);
}

typedef enum { CASE_PASSED, CASE_FAILED, CASE_UNSUPPORTED } case_outcome;

static case_outcome run_case(const conf_case *c, ts_backend *be, ts_backend *oracle, case_verdict *v) {
    memset(v, 0, sizeof *v);
    v->passed = true;
    case_graph cg;
    case_data d = {0};
    case_outcome out = CASE_FAILED;
    char msg[400];
    if (build_case_graph(c, false, &cg) != TS_OK) {
        verdict_fail(v, "build: %s", cg.g ? ts_graph_error(cg.g) : "out of memory");
    } else if (!graph_supported(be, cg.g)) {
        out = CASE_UNSUPPORTED;
    } else if (generate_case_data(c, &cg, &d) != TS_OK) {
        verdict_fail(v, "out of memory generating inputs");
    } else if (execute(&cg, be, &d, msg, sizeof msg) != TS_OK) {
        verdict_fail(v, "%s", msg);
    } else {
        run_oracle_and_compare(c, &cg, &d, oracle, v);
        out = v->passed ? CASE_PASSED : CASE_FAILED;
    }
    case_data_free(&d);
    ts_graph_free(cg.g);
    return out;
}

/* ================================================================ 7. public entry points */

typedef struct {
    ts_backend *be, *oracle;
    FILE *log;
    ts_conformance_result *res;
} run_ctx;

static void record(run_ctx *rc, const conf_case *c, case_outcome out, const case_verdict *v) {
    ts_conformance_result *r = rc->res;
    ts_conformance_op_result *po = &r->per_op[c->entry->op];
    r->n_cases++;
    po->n_cases++;
    switch (out) {
    case CASE_PASSED:
        r->n_passed++;
        po->n_passed++;
        if (rc->log) fprintf(rc->log, "PASS %s nmse=%.1e\n", c->name, v->nmse);
        break;
    case CASE_UNSUPPORTED:
        r->n_unsupported++;
        po->n_unsupported++;
        if (rc->log) fprintf(rc->log, "SKIP %s (unsupported)\n", c->name);
        break;
    case CASE_FAILED:
        r->n_failed++;
        po->n_failed++;
        if (!r->first_failure[0]) {
            snprintf(r->first_failure, sizeof r->first_failure, "%s", c->name);
            snprintf(r->first_failure_message, sizeof r->first_failure_message, "%s", v->msg);
        }
        if (rc->log) fprintf(rc->log, "FAIL %s: %s\n", c->name, v->msg);
        break;
    }
    if (out != CASE_UNSUPPORTED && v->ratio > r->worst_ratio) r->worst_ratio = v->ratio;
}

static bool run_visitor(const conf_case *c, void *ctx) {
    run_ctx *rc = ctx;
    case_verdict v;
    case_outcome out = run_case(c, rc->be, rc->oracle, &v);
    record(rc, c, out, &v);
    return true;
}

ts_status ts_conformance_run(ts_backend *be, const ts_conformance_options *opts, ts_conformance_result *res) {
    if (!be || !res) return TS_ERR_INVALID_ARG;
    memset(res, 0, sizeof *res);
    run_ctx rc = {.be = be, .log = opts ? opts->log : NULL, .res = res};
    ts_status s = ts_backend_cpu_ref_new(opts ? opts->n_threads : 0, &rc.oracle);
    if (s != TS_OK) return s;
    for_each_case(opts, run_visitor, &rc);
    ts_backend_free(rc.oracle);
    return TS_OK;
}

typedef struct {
    int index;
    char *buf;
    size_t size;
    bool found;
} name_ctx;

static bool name_visitor(const conf_case *c, void *ctx) {
    name_ctx *nc = ctx;
    if (nc->index-- > 0) return true;
    snprintf(nc->buf, nc->size, "%s", c->name);
    nc->found = true;
    return false;
}

int ts_conformance_case_count(const ts_conformance_options *opts) { return for_each_case(opts, NULL, NULL); }

ts_status ts_conformance_case_name(const ts_conformance_options *opts, int i, char *buf, size_t size) {
    if (!buf || size == 0) return TS_ERR_INVALID_ARG;
    name_ctx nc = {.index = i, .buf = buf, .size = size};
    buf[0] = '\0';
    if (i >= 0) for_each_case(opts, name_visitor, &nc);
    return nc.found ? TS_OK : TS_ERR_RANGE;
}

/* Support of one op entry for one dtype: how many of its variants the backend supports. */
static int supported_variants(ts_backend *be, const op_entry *e, ts_dtype t) {
    int n = 0;
    for (int v = 0; v < e->n_variants; v++) {
        conf_case c = {.entry = e, .var = &e->variants[v], .dtype = t};
        case_graph cg;
        if (build_case_graph(&c, false, &cg) == TS_OK && graph_supported(be, cg.g)) n++;
        ts_graph_free(cg.g);
    }
    return n;
}

/* One column of the support table (the last one unpadded: no trailing blanks). */
static void print_column(FILE *out, int t, const char *text) {
    fprintf(out, t + 1 < COUNT(case_dtypes) ? " %-5s" : " %s", text);
}

void ts_conformance_print_support(ts_backend *be, FILE *out) {
    if (!be || !out) return;
    ts_backend_info info;
    ts_backend_get_info(be, &info);
    fprintf(out, "ops on backend %s (yes: every conformance case, part: some, -: none)\n", info.name);
    fprintf(out, "  %-20s", "op");
    for (int t = 0; t < COUNT(case_dtypes); t++) print_column(out, t, ts_dtype_name(case_dtypes[t]));
    fputc('\n', out);
    int n_missing = 0;
    const char *missing[COUNT(op_table)];
    for (int e = 0; e < COUNT(op_table); e++) {
        const op_entry *en = &op_table[e];
        int any = 0;
        fprintf(out, "  %-20s", ts_op_name(en->op));
        for (int t = 0; t < COUNT(case_dtypes); t++) {
            int n = supported_variants(be, en, case_dtypes[t]);
            any += n;
            print_column(out, t, n == en->n_variants ? "yes" : n > 0 ? "part" : "-");
        }
        fputc('\n', out);
        if (!any) missing[n_missing++] = ts_op_name(en->op);
    }
    fprintf(out, "%d of %d ops supported", COUNT(op_table) - n_missing, COUNT(op_table));
    for (int i = 0; i < n_missing; i++) fprintf(out, "%s%s", i ? ", " : "; missing: ", missing[i]);
    fputc('\n', out);
}
