/* plan.c - the memory planner, the executor entry point and tensor I/O.
 *
 * ts_graph_alloc turns a built graph (forward and backward nodes alike, in topological order)
 * into storage, once:
 *   1. a liveness pass finds, for every intermediate (a node that runs a kernel and owns its
 *      storage), the last node that reads it, directly or through views;
 *   2. nodes are walked in order; each intermediate either takes over the region of an input
 *      that dies at this very node (in-place, when the op allows it) or gets a best-fit region
 *      of one arena; regions go back to the free list right after their last use;
 *   3. leaves the user did not bind get a separate persistent buffer;
 *   4. the arena and leaf buffers are allocated from the backend, optional guard bytes around
 *      every region are filled, and every tensor (views too) gets buffer, offset and address.
 * With guards on, a freed region is reused only whole and only by a tensor of the same byte
 * size, so a guard byte is never some other tensor's data and can be checked after a run.
 * The peak (the arena size) is therefore known before any kernel runs, and ts_graph_compute
 * only hands the node range to the backend. ts_tensor_bind*, ts_tensor_write/read live here
 * because they are about where the planner put things. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "graph_internal.h"

#define PLAN_MIN_ALIGN 64

enum { BUF_ARENA, BUF_LEAVES, BUF_COUNT };
static const char *const buffer_names[BUF_COUNT] = {"arena", "leaf buffer"};

/* One placement of a tensor: where its elements start and how many bytes they take. With
 * guards, guard_bytes before data_offset and guard_bytes from data_offset + nbytes on belong
 * to this placement. In-place nodes share the placement of the input they overwrite. */
typedef struct {
    int buffer;         /* BUF_ARENA or BUF_LEAVES */
    size_t data_offset; /* bytes from the start of the buffer */
    size_t nbytes;      /* element bytes (ts_nbytes) */
} plan_region;

struct ts_plan_state {
    ts_backend *backend;
    ts_buffer *buffers[BUF_COUNT]; /* the graph's own: no BUF_ARENA one in a shared arena */
    ts_shared_arena *shared;       /* where BUF_ARENA lies, or NULL */
    size_t guard_bytes;
    plan_region *regions;
    int n_regions;
    int *region_of;          /* node id -> index in regions, -1 for views and bound leaves */
    unsigned char *scratch;  /* guard_bytes, for reading guards of device buffers */
    ts_plan_stats stats;
};

struct ts_shared_arena {
    ts_backend *backend;
    ts_buffer *buffer; /* NULL until a graph needs bytes */
    size_t size;
    ts_graph **graphs; /* allocated into it */
    int n_graphs, cap_graphs;
};

/* ---------------------------------------------------------------- small helpers */

static size_t align_up(size_t n, size_t a) { return (n + a - 1) / a * a; }

static ts_tensor *storage_root(const ts_tensor *t) { return t->view_src ? t->view_src : (ts_tensor *)t; }

static bool is_leaf(const ts_tensor *t) { return t->op == TS_OP_NONE; }

/* A node that runs a kernel and owns its storage: what the arena holds. */
static bool is_intermediate(const ts_tensor *t) { return !is_leaf(t) && !ts_is_view(t); }

/* Leaves bound with ts_tensor_bind / _bind_host before alloc already have storage. */
static bool has_storage(const ts_tensor *t) { return t->buffer != NULL || t->data != NULL; }

/* Bytes per element for address arithmetic; 0 for packed sub-byte dtypes (whose views never
 * have an offset). */
static size_t element_size(ts_dtype t) { return (size_t)(ts_dtype_get_info(t)->bits / 8); }

/* Guard byte k: varies with k so that a kernel storing one repeated value cannot mimic it. */
static unsigned char guard_byte(size_t k) { return (unsigned char)(0xA5u ^ (k * 0x3Du)); }

/* ---------------------------------------------------------------- liveness */

/* last_use[id] for every node: the index of the last node reading its storage (uses through
 * views count for the root), its own index when nothing reads it, and n_nodes for outputs
 * and the roots of output views, which must survive the whole compute. */
static void compute_last_use(const ts_graph *g, int *last_use) {
    int n = g->n_nodes;
    for (int i = 0; i < n; i++) last_use[i] = i;
    for (int i = 0; i < n; i++) {
        const ts_tensor *t = g->nodes[i];
        for (int k = 0; k < t->n_src; k++) {
            if (!t->src[k]) continue;
            int r = storage_root(t->src[k])->id;
            if (last_use[r] < i) last_use[r] = i;
        }
        if (t->flags & TS_FLAG_OUTPUT) last_use[storage_root(t)->id] = n;
    }
}

/* ---------------------------------------------------------------- the arena allocator */

/* A free span of the arena. key is the nbytes of the tensor that last lived there; it only
 * matters in exact mode (see arena_allocator). */
typedef struct {
    size_t offset, size, key;
} free_span;

/* Best-fit over a free list sorted by offset; adjacent spans merge; when nothing fits the
 * arena grows at its end (absorbing a free span that touches the end). In exact mode, used
 * when guards are on, a span is reused only whole and only by a tensor of the same byte size,
 * so every tensor placed there has its data and its guards at the same addresses: no guard
 * byte is ever some other tensor's data, and guards stay checkable after a run. */
typedef struct {
    free_span *spans;
    int n_spans;
    size_t top; /* arena size so far = the peak */
    bool exact;
} arena_allocator;

static void remove_span(arena_allocator *a, int i) {
    memmove(&a->spans[i], &a->spans[i + 1], (size_t)(a->n_spans - i - 1) * sizeof a->spans[0]);
    a->n_spans--;
}

static size_t arena_take(arena_allocator *a, size_t size, size_t key) {
    int best = -1;
    for (int i = 0; i < a->n_spans; i++) {
        const free_span *s = &a->spans[i];
        bool fits = a->exact ? (s->key == key && s->size == size) : s->size >= size;
        if (fits && (best < 0 || s->size < a->spans[best].size)) best = i;
    }
    if (best >= 0) {
        size_t off = a->spans[best].offset;
        a->spans[best].offset += size;
        a->spans[best].size -= size;
        if (a->spans[best].size == 0) remove_span(a, best);
        return off;
    }
    if (!a->exact && a->n_spans > 0) {
        free_span *last = &a->spans[a->n_spans - 1];
        if (last->offset + last->size == a->top) {
            size_t off = last->offset;
            a->top = off + size;
            remove_span(a, a->n_spans - 1);
            return off;
        }
    }
    size_t off = a->top;
    a->top += size;
    return off;
}

/* The list has room for one span per intermediate plus one, so this never reallocates. */
static void arena_give_back(arena_allocator *a, size_t offset, size_t size, size_t key) {
    int i = 0;
    while (i < a->n_spans && a->spans[i].offset < offset) i++;
    if (!a->exact) {
        bool joins_prev = i > 0 && a->spans[i - 1].offset + a->spans[i - 1].size == offset;
        bool joins_next = i < a->n_spans && offset + size == a->spans[i].offset;
        if (joins_prev && joins_next) {
            a->spans[i - 1].size += size + a->spans[i].size;
            remove_span(a, i);
            return;
        }
        if (joins_prev) {
            a->spans[i - 1].size += size;
            return;
        }
        if (joins_next) {
            a->spans[i].offset = offset;
            a->spans[i].size += size;
            return;
        }
    }
    memmove(&a->spans[i + 1], &a->spans[i], (size_t)(a->n_spans - i) * sizeof a->spans[0]);
    a->spans[i] = (free_span){offset, size, key};
    a->n_spans++;
}

/* ---------------------------------------------------------------- planning */

/* Everything the planning pass needs; freed before ts_graph_alloc returns. */
typedef struct {
    ts_graph *g;
    ts_plan_options opts;
    size_t alignment;
    size_t guard_lead;           /* bytes from a region's start to its data (guard, aligned) */
    int *last_use;
    int *dies_first, *dies_next; /* per node: intermediates whose last use is that node */
    unsigned char *owns;         /* per node: still holds its arena region */
    arena_allocator arena;
    size_t leaf_top;
    struct ts_plan_state *st;
} planner;

/* Region footprint of a tensor of nbytes: leading guard, data, trailing guard, aligned. */
static size_t region_size(const planner *p, size_t nbytes) {
    return p->guard_lead + align_up(nbytes + p->opts.guard_bytes, p->alignment);
}

static int add_region(planner *p, int buffer, size_t data_offset, size_t nbytes) {
    struct ts_plan_state *st = p->st;
    st->regions[st->n_regions] = (plan_region){buffer, data_offset, nbytes};
    return st->n_regions++;
}

/* Another source of node that reads s's storage through a different tensor (a view of s, or
 * a view s is the root of): writing over s in place would change what that source reads
 * before it is read (e.g. add(x, slice(x)) broadcasting one row of x over all rows). */
static bool storage_read_elsewhere(const ts_tensor *node, const ts_tensor *s) {
    for (int k = 0; k < node->n_src; k++) {
        const ts_tensor *o = node->src[k];
        if (o && o != s && storage_root(o) == s) return true;
    }
    return false;
}

/* The source whose region node may take over, or -1. The source must die at this node (its
 * last use, views included, is here), so nobody reads it afterwards; it must be laid out
 * exactly like the node so that element i of the output overwrites only element i of the
 * input, which the op's kernel has already read. Leaves never qualify. */
static int inplace_source(const planner *p, const ts_tensor *node) {
    for (int k = 0; k < node->n_src; k++) {
        const ts_tensor *s = node->src[k];
        if (!s || !ts_op_inplace_ok(node->op, k)) continue;
        if (!is_intermediate(s) || !p->owns[s->id]) continue;
        if (p->last_use[s->id] != node->id || (s->flags & TS_FLAG_OUTPUT)) continue;
        if (s->dtype != node->dtype || !ts_same_shape(s, node) || ts_nbytes(s) != ts_nbytes(node)) continue;
        if (!ts_is_contiguous(s) || !ts_is_contiguous(node)) continue;
        if (storage_read_elsewhere(node, s)) continue;
        return k;
    }
    return -1;
}

static void place_intermediate(planner *p, const ts_tensor *t) {
    struct ts_plan_state *st = p->st;
    size_t nbytes = ts_nbytes(t);
    int k = (p->opts.naive || p->opts.no_inplace) ? -1 : inplace_source(p, t);
    if (k >= 0) {
        const ts_tensor *s = t->src[k];
        st->region_of[t->id] = st->region_of[s->id];
        p->owns[s->id] = 0; /* handed on: freed when t dies, not when s does */
        st->stats.n_inplace++;
    } else {
        size_t off = arena_take(&p->arena, region_size(p, nbytes), nbytes);
        st->region_of[t->id] = add_region(p, BUF_ARENA, off + p->guard_lead, nbytes);
    }
    p->owns[t->id] = 1;
    st->stats.n_intermediates++;
    st->stats.naive_bytes += region_size(p, nbytes);
}

/* Frees the regions of intermediates whose last use is node i. Called after node i's output
 * is placed, so an output never lands on an input it is still reading (in-place aside). */
static void free_dead_at(planner *p, int i) {
    if (p->opts.naive) return;
    for (int id = p->dies_first[i]; id >= 0; id = p->dies_next[id]) {
        if (!p->owns[id]) continue;
        p->owns[id] = 0;
        const plan_region *r = &p->st->regions[p->st->region_of[id]];
        arena_give_back(&p->arena, r->data_offset - p->guard_lead, region_size(p, r->nbytes), r->nbytes);
    }
}

static void build_death_lists(planner *p) {
    int n = p->g->n_nodes;
    for (int i = 0; i < n; i++) p->dies_first[i] = -1;
    for (int id = n - 1; id >= 0; id--) {
        int last = p->last_use[id];
        if (!is_intermediate(p->g->nodes[id]) || last >= n) continue;
        p->dies_next[id] = p->dies_first[last];
        p->dies_first[last] = id;
    }
}

static void plan_intermediates(planner *p) {
    compute_last_use(p->g, p->last_use);
    build_death_lists(p);
    for (int i = 0; i < p->g->n_nodes; i++) {
        const ts_tensor *t = p->g->nodes[i];
        if (is_intermediate(t)) place_intermediate(p, t);
        free_dead_at(p, i);
    }
    p->st->stats.arena_bytes = p->arena.top;
}

/* Unbound leaves live for the whole life of the graph: packed one after another. */
static void plan_leaves(planner *p) {
    for (int i = 0; i < p->g->n_nodes; i++) {
        const ts_tensor *t = p->g->nodes[i];
        if (!is_leaf(t) || has_storage(t)) continue;
        size_t nbytes = ts_nbytes(t);
        p->st->region_of[t->id] = add_region(p, BUF_LEAVES, p->leaf_top + p->guard_lead, nbytes);
        p->leaf_top += region_size(p, nbytes);
    }
    p->st->stats.leaf_bytes = p->leaf_top;
}

/* ---------------------------------------------------------------- checks before planning */

static ts_status check_graph_allocatable(ts_graph *g, ts_backend *be, const ts_backend_info *info) {
    for (int i = 0; i < g->n_nodes; i++) {
        const ts_tensor *t = g->nodes[i];
        char d[160];
        if (is_leaf(t) && t->buffer && t->buffer->backend != be && !(t->buffer->host && info->host_visible))
            return ts_graph_set_error(g, TS_ERR_UNSUPPORTED,
                                      "ts_graph_alloc: leaf %s is bound to a buffer of another backend than %s",
                                      ts_tensor_describe(t, d, sizeof d), info->name);
        if (is_leaf(t) && !t->buffer && t->data && !info->host_visible)
            return ts_graph_set_error(g, TS_ERR_UNSUPPORTED,
                                      "ts_graph_alloc: leaf %s is bound to host memory but backend %s is not host-visible",
                                      ts_tensor_describe(t, d, sizeof d), info->name);
        /* One backend runs the whole graph until the executor splits graphs across backends. */
        if (!ts_backend_supports_op(be, t))
            return ts_graph_set_error(g, TS_ERR_UNSUPPORTED, "ts_graph_alloc: backend %s cannot run %s %s",
                                      info->name, ts_op_name(t->op), ts_tensor_describe(t, d, sizeof d));
    }
    return TS_OK;
}

/* A graph that recorded an error (while being built, usually) is refused; that first error
 * stays the message (first error wins), with a note that alloc refused the graph. */
static ts_status refuse_broken_graph(ts_graph *g) {
    static const char note[] = " [ts_graph_alloc refused: the graph holds this error]";
    size_t len = strlen(g->error);
    if (!strstr(g->error, note)) snprintf(g->error + len, sizeof g->error - len, "%s", note);
    return TS_ERR_STATE;
}

/* ---------------------------------------------------------------- storage */

static void plan_state_free(struct ts_plan_state *st) {
    if (!st) return;
    for (int b = 0; b < BUF_COUNT; b++) ts_buffer_free(st->buffers[b]);
    free(st->regions);
    free(st->region_of);
    free(st->scratch);
    free(st);
}

/* Drops g from the shared arena it lies in, if any. */
static void leave_shared_arena(ts_graph *g) {
    ts_shared_arena *a = g->plan->shared;
    for (int i = 0; a && i < a->n_graphs; i++)
        if (a->graphs[i] == g) {
            a->graphs[i] = a->graphs[--a->n_graphs];
            break;
        }
}

void ts_plan_release(ts_graph *g) {
    if (!g || !g->plan) return;
    leave_shared_arena(g);
    plan_state_free(g->plan);
    g->plan = NULL;
}

static ts_status allocate_buffers(ts_graph *g, struct ts_plan_state *st) {
    size_t sizes[BUF_COUNT] = {st->shared ? 0 : st->stats.arena_bytes, st->stats.leaf_bytes};
    for (int b = 0; b < BUF_COUNT; b++) {
        if (sizes[b] == 0) continue;
        ts_status s = ts_backend_buffer_alloc(st->backend, sizes[b], &st->buffers[b]);
        if (s != TS_OK || !st->buffers[b]) {
            st->buffers[b] = NULL;
            return ts_graph_set_error(g, s != TS_OK ? s : TS_ERR_OOM,
                                      "ts_graph_alloc: backend could not allocate the %s (%zu bytes = %.2f GiB): %s",
                                      buffer_names[b], sizes[b], (double)sizes[b] / (1 << 30), ts_status_name(s));
        }
    }
    return TS_OK;
}

static ts_buffer *buffer_of(const struct ts_plan_state *st, int b) {
    return b == BUF_ARENA && st->shared ? st->shared->buffer : st->buffers[b];
}

/* Writes the guard pattern on both sides of every region (shared regions are simply written
 * again with the same bytes). */
static ts_status fill_guards(ts_graph *g, struct ts_plan_state *st) {
    size_t gb = st->guard_bytes;
    if (gb == 0) return TS_OK;
    unsigned char *pattern = malloc(gb);
    if (!pattern) return ts_graph_set_error(g, TS_ERR_OOM, "ts_graph_alloc: out of memory for guards");
    for (size_t k = 0; k < gb; k++) pattern[k] = guard_byte(k);
    ts_status s = TS_OK;
    for (int r = 0; r < st->n_regions && s == TS_OK; r++) {
        const plan_region *reg = &st->regions[r];
        ts_buffer *buf = buffer_of(st, reg->buffer);
        s = buf->backend->iface->buffer_write(buf, reg->data_offset - gb, pattern, gb);
        if (s == TS_OK) s = buf->backend->iface->buffer_write(buf, reg->data_offset + reg->nbytes, pattern, gb);
    }
    free(pattern);
    if (s != TS_OK) return ts_graph_set_error(g, s, "ts_graph_alloc: writing guard bytes failed: %s", ts_status_name(s));
    return TS_OK;
}

static void point_at(ts_tensor *t, ts_buffer *buf, size_t offset) {
    t->buffer = buf;
    t->buffer_offset = offset;
    t->data = buf && buf->host ? (char *)buf->host + offset : NULL;
}

/* Gives every tensor its storage. Views follow their root, which comes earlier in the
 * (topological) node order, so one pass suffices. */
static void assign_storage(ts_graph *g, struct ts_plan_state *st) {
    for (int i = 0; i < g->n_nodes; i++) {
        ts_tensor *t = g->nodes[i];
        if (ts_is_view(t)) {
            const ts_tensor *root = t->view_src;
            size_t delta = (size_t)t->offset * element_size(t->dtype);
            t->buffer = root->buffer;
            t->buffer_offset = root->buffer_offset + delta;
            t->data = root->data ? (char *)root->data + delta : NULL;
        } else if (st->region_of[i] >= 0) {
            const plan_region *r = &st->regions[st->region_of[i]];
            point_at(t, buffer_of(st, r->buffer), r->data_offset);
        } /* else: a bound leaf keeps what ts_tensor_bind gave it */
    }
}

/* Makes room for `bytes` in arena a (and for one more graph in its list): a larger buffer
 * with every graph already there moved into it. Nothing changes on failure. */
static ts_status shared_arena_reserve(ts_shared_arena *a, size_t bytes) {
    if (a->n_graphs == a->cap_graphs) {
        int cap = a->cap_graphs ? 2 * a->cap_graphs : 8;
        ts_graph **gs = realloc(a->graphs, (size_t)cap * sizeof *gs);
        if (!gs) return TS_ERR_OOM;
        a->graphs = gs;
        a->cap_graphs = cap;
    }
    if (bytes <= a->size) return TS_OK;
    ts_buffer *bigger = NULL;
    ts_status s = ts_backend_buffer_alloc(a->backend, bytes, &bigger);
    if (s != TS_OK || !bigger) return s != TS_OK ? s : TS_ERR_OOM;
    ts_buffer_free(a->buffer);
    a->buffer = bigger;
    a->size = bytes;
    for (int i = 0; i < a->n_graphs; i++) assign_storage(a->graphs[i], a->graphs[i]->plan);
    return TS_OK;
}

ts_status ts_shared_arena_new(ts_backend *be, ts_shared_arena **out) {
    if (!out) return TS_ERR_INVALID_ARG;
    *out = NULL;
    if (!be) return TS_ERR_INVALID_ARG;
    ts_shared_arena *a = calloc(1, sizeof *a);
    if (!a) return TS_ERR_OOM;
    a->backend = be;
    *out = a;
    return TS_OK;
}

/* Graphs still in the arena keep pointers into it: they must be freed first. */
void ts_shared_arena_free(ts_shared_arena *a) {
    if (!a) return;
    ts_buffer_free(a->buffer);
    free(a->graphs);
    free(a);
}

size_t ts_shared_arena_bytes(const ts_shared_arena *a) { return a ? a->size : 0; }

static struct ts_plan_state *plan_state_new(ts_graph *g, ts_backend *be, size_t guard_bytes) {
    struct ts_plan_state *st = calloc(1, sizeof *st);
    if (!st) return NULL;
    size_t n = (size_t)g->n_nodes + 1;
    st->backend = be;
    st->guard_bytes = guard_bytes;
    st->regions = malloc(n * sizeof *st->regions);
    st->region_of = malloc(n * sizeof *st->region_of);
    st->scratch = guard_bytes ? malloc(guard_bytes) : NULL;
    if (!st->regions || !st->region_of || (guard_bytes && !st->scratch)) {
        plan_state_free(st);
        return NULL;
    }
    for (int i = 0; i < g->n_nodes; i++) st->region_of[i] = -1;
    return st;
}

static void planner_free(planner *p) {
    free(p->last_use);
    free(p->dies_first);
    free(p->dies_next);
    free(p->owns);
    free(p->arena.spans);
}

ts_status ts_graph_alloc(ts_graph *g, ts_backend *be, const ts_plan_options *opts, ts_plan_stats *stats) {
    if (!g) return TS_ERR_INVALID_ARG;
    if (!be) return ts_graph_set_error(g, TS_ERR_INVALID_ARG, "ts_graph_alloc: no backend given");
    if (g->plan) return ts_graph_set_error(g, TS_ERR_STATE, "ts_graph_alloc: graph is already allocated");
    if (g->status != TS_OK) return refuse_broken_graph(g);
    ts_backend_info info;
    ts_backend_get_info(be, &info);
    ts_status s = check_graph_allocatable(g, be, &info);
    if (s != TS_OK) return s;
    ts_shared_arena *shared = opts ? opts->shared_arena : NULL;
    if (shared && (shared->backend != be || opts->guard_bytes))
        return ts_graph_set_error(g, TS_ERR_INVALID_ARG,
                                  "ts_graph_alloc: a shared arena takes graphs of its own backend, without guards");

    planner p = {.g = g};
    if (opts) p.opts = *opts;
    p.alignment = info.alignment > PLAN_MIN_ALIGN ? info.alignment : PLAN_MIN_ALIGN;
    p.guard_lead = p.opts.guard_bytes ? align_up(p.opts.guard_bytes, p.alignment) : 0;
    p.arena.exact = p.opts.guard_bytes > 0;
    size_t n = (size_t)g->n_nodes + 1;
    p.last_use = malloc(n * sizeof *p.last_use);
    p.dies_first = malloc(n * sizeof *p.dies_first);
    p.dies_next = malloc(n * sizeof *p.dies_next);
    p.owns = calloc(n, 1);
    p.arena.spans = malloc(n * sizeof *p.arena.spans);
    p.st = plan_state_new(g, be, p.opts.guard_bytes);
    if (!p.last_use || !p.dies_first || !p.dies_next || !p.owns || !p.arena.spans || !p.st) {
        planner_free(&p);
        plan_state_free(p.st);
        return ts_graph_set_error(g, TS_ERR_OOM, "ts_graph_alloc: out of memory planning %d nodes", g->n_nodes);
    }

    plan_intermediates(&p);
    plan_leaves(&p);
    struct ts_plan_state *st = p.st;
    planner_free(&p);
    if (p.opts.plan_only) {
        if (stats) *stats = st->stats;
        plan_state_free(st);
        return TS_OK;
    }

    st->shared = shared;
    s = allocate_buffers(g, st);
    if (s == TS_OK && shared) {
        s = shared_arena_reserve(shared, st->stats.arena_bytes);
        if (s != TS_OK)
            ts_graph_set_error(g, s, "ts_graph_alloc: the shared arena could not grow to %zu bytes (%.2f GiB): %s",
                               st->stats.arena_bytes, (double)st->stats.arena_bytes / (1 << 30), ts_status_name(s));
    }
    if (s == TS_OK) s = fill_guards(g, st);
    if (s != TS_OK) {
        plan_state_free(st);
        return s;
    }
    g->plan = st;
    assign_storage(g, st);
    if (shared) shared->graphs[shared->n_graphs++] = g;
    if (stats) *stats = st->stats;
    return TS_OK;
}

/* ---------------------------------------------------------------- execution */

ts_status ts_graph_compute(ts_graph *g) { return ts_graph_compute_range(g, 0, g ? g->n_nodes : 0); }

ts_status ts_graph_compute_range(ts_graph *g, int first, int last) {
    if (!g) return TS_ERR_INVALID_ARG;
    if (!g->plan)
        return ts_graph_set_error(g, TS_ERR_STATE, "ts_graph_compute: graph is not allocated (call ts_graph_alloc first)");
    if (first < 0 || last > g->n_nodes || first > last)
        return ts_graph_set_error(g, TS_ERR_INVALID_ARG, "ts_graph_compute_range: [%d, %d) is not within the %d nodes",
                                  first, last, g->n_nodes);
    ts_backend *be = g->plan->backend;
    ts_status s = be->iface->compute(be, g, first, last);
    ts_status sync = ts_backend_synchronize(be);
    if (s != TS_OK) return s;
    if (sync != TS_OK)
        return ts_graph_set_error(g, sync, "ts_graph_compute: backend synchronize failed: %s", ts_status_name(sync));
    return TS_OK;
}

/* ---------------------------------------------------------------- guards */

/* The guard bytes as they are now: straight from host memory, else read into scratch. */
static const unsigned char *guard_now(struct ts_plan_state *st, const plan_region *r, size_t offset) {
    ts_buffer *buf = buffer_of(st, r->buffer);
    if (buf->host) return (const unsigned char *)buf->host + offset;
    if (buf->backend->iface->buffer_read(buf, offset, st->scratch, st->guard_bytes) != TS_OK) return NULL;
    return st->scratch;
}

/* Index of the first changed guard byte, guard_bytes if intact, or -1 if unreadable. */
static long long first_damaged(struct ts_plan_state *st, const plan_region *r, size_t offset) {
    const unsigned char *b = guard_now(st, r, offset);
    if (!b) return -1;
    for (size_t k = 0; k < st->guard_bytes; k++)
        if (b[k] != guard_byte(k)) return (long long)k;
    return (long long)st->guard_bytes;
}

/* Every tensor that lived in region r's place, in node order (in-place chains and reuse in
 * exact mode share it): one of their kernels wrote out of bounds. */
static void describe_occupants(const ts_graph *g, const struct ts_plan_state *st, const plan_region *r,
                               char *out, size_t size) {
    size_t len = 0;
    int listed = 0, more = 0;
    out[0] = '\0';
    for (int i = 0; i < g->n_nodes; i++) {
        int ri = st->region_of[i];
        if (ri < 0 || st->regions[ri].buffer != r->buffer || st->regions[ri].data_offset != r->data_offset) continue;
        if (listed == 4) {
            more++;
            continue;
        }
        char d[160];
        const ts_tensor *t = g->nodes[i];
        int w = snprintf(out + len, size - len, "%s%s %s (node %d)", listed ? ", " : "", ts_op_name(t->op),
                         ts_tensor_describe(t, d, sizeof d), i);
        if (w < 0 || (size_t)w >= size - len) break;
        len += (size_t)w;
        listed++;
    }
    if (more && len < size) snprintf(out + len, size - len, " and %d more", more);
}

static ts_status report_damage(ts_graph *g, struct ts_plan_state *st, const plan_region *r, bool after,
                               long long byte) {
    char who[720];
    describe_occupants(g, st, r, who, sizeof who);
    const char *side = after ? "after" : "before";
    if (byte < 0)
        return ts_graph_set_error(g, TS_ERR_INTERNAL, "guard check: could not read the guard %s the data at %s offset %zu of: %s",
                                  side, buffer_names[r->buffer], r->data_offset, who);
    return ts_graph_set_error(g, TS_ERR_INTERNAL,
                              "guard check: the guard %s the data at %s offset %zu was overwritten (guard byte %lld of %zu); "
                              "a kernel wrote out of bounds of: %s",
                              side, buffer_names[r->buffer], r->data_offset, byte, st->guard_bytes, who);
}

ts_status ts_graph_check_guards(ts_graph *g) {
    if (!g) return TS_ERR_INVALID_ARG;
    struct ts_plan_state *st = g->plan;
    if (!st) return ts_graph_set_error(g, TS_ERR_STATE, "ts_graph_check_guards: graph is not allocated");
    size_t gb = st->guard_bytes;
    if (gb == 0) return TS_OK; /* no guards were asked for: nothing to check */
    for (int i = 0; i < st->n_regions; i++) {
        const plan_region *r = &st->regions[i];
        long long before = first_damaged(st, r, r->data_offset - gb);
        if (before != (long long)gb) return report_damage(g, st, r, false, before);
        long long after = first_damaged(st, r, r->data_offset + r->nbytes);
        if (after != (long long)gb) return report_damage(g, st, r, true, after);
    }
    return TS_OK;
}

/* ---------------------------------------------------------------- binding */

ts_status ts_tensor_bind(ts_tensor *leaf, ts_buffer *buf, size_t offset) {
    if (!leaf || !buf || !is_leaf(leaf)) return TS_ERR_INVALID_ARG;
    if (has_storage(leaf)) return TS_ERR_STATE; /* bound already, or allocated by the planner */
    size_t es = element_size(leaf->dtype);
    if (es > 1 && offset % es) return TS_ERR_INVALID_ARG;
    size_t nbytes = ts_nbytes(leaf);
    if (offset > buf->size || nbytes > buf->size - offset) return TS_ERR_RANGE;
    point_at(leaf, buf, offset);
    return TS_OK;
}

ts_status ts_tensor_bind_host(ts_tensor *leaf, void *host) {
    if (!leaf || !host || !is_leaf(leaf)) return TS_ERR_INVALID_ARG;
    if (has_storage(leaf)) return TS_ERR_STATE;
    leaf->buffer = NULL;
    leaf->buffer_offset = 0;
    leaf->data = host;
    return TS_OK;
}

/* ---------------------------------------------------------------- tensor I/O */

/* Storage offset in elements of the element with row-major index i (relative to t->data). */
static int64_t strided_offset(const ts_tensor *t, int64_t i) {
    int64_t off = 0;
    for (int d = t->ndim - 1; d >= 0; d--) {
        off += (i % t->shape[d]) * t->stride[d];
        i /= t->shape[d];
    }
    return off;
}

/* A broadcast view (stride 0 over a dimension > 1) maps several elements to one address. */
static bool has_aliased_elements(const ts_tensor *t) {
    for (int d = 0; d < t->ndim; d++)
        if (t->shape[d] > 1 && t->stride[d] == 0) return true;
    return false;
}

static ts_status check_io(const ts_tensor *t, const void *p, size_t bytes) {
    if (!t || !p) return TS_ERR_INVALID_ARG;
    if (!has_storage(t)) return TS_ERR_STATE;
    if (bytes != ts_nbytes(t)) return TS_ERR_INVALID_ARG;
    return TS_OK;
}

/* Element by element through host memory, for views that are not contiguous: from packed
 * user memory into t (src given) or from t into packed user memory (dst given). */
static ts_status copy_strided(const ts_tensor *t, const void *src, void *dst) {
    size_t es = element_size(t->dtype);
    if (!t->data || es == 0) return TS_ERR_UNSUPPORTED;
    int64_t n = ts_nelements(t);
    for (int64_t i = 0; i < n; i++) {
        char *elem = (char *)t->data + strided_offset(t, i) * (int64_t)es;
        if (src) memcpy(elem, (const char *)src + i * (int64_t)es, es);
        else memcpy((char *)dst + i * (int64_t)es, elem, es);
    }
    return TS_OK;
}

ts_status ts_tensor_write(ts_tensor *t, const void *src, size_t bytes) {
    ts_status s = check_io(t, src, bytes);
    if (s != TS_OK) return s;
    if (ts_is_contiguous(t)) {
        if (t->buffer) return t->buffer->backend->iface->buffer_write(t->buffer, t->buffer_offset, src, bytes);
        memcpy(t->data, src, bytes);
        return TS_OK;
    }
    if (has_aliased_elements(t)) return TS_ERR_INVALID_ARG;
    return copy_strided(t, src, NULL);
}

ts_status ts_tensor_read(const ts_tensor *t, void *dst, size_t bytes) {
    ts_status s = check_io(t, dst, bytes);
    if (s != TS_OK) return s;
    if (ts_is_contiguous(t)) {
        if (t->buffer) return t->buffer->backend->iface->buffer_read(t->buffer, t->buffer_offset, dst, bytes);
        memcpy(dst, t->data, bytes);
        return TS_OK;
    }
    return copy_strided(t, NULL, dst);
}

ts_status ts_tensor_write_f32(ts_tensor *t, const float *src, int64_t n) {
    if (!t || !src) return TS_ERR_INVALID_ARG;
    if (n != ts_nelements(t)) return TS_ERR_INVALID_ARG;
    if (t->dtype == TS_F32) return ts_tensor_write(t, src, (size_t)n * sizeof(float));
    size_t bytes = ts_nbytes(t);
    void *tmp = malloc(bytes ? bytes : 1);
    if (!tmp) return TS_ERR_OOM;
    ts_status s = ts_convert(tmp, t->dtype, src, TS_F32, n);
    if (s == TS_OK) s = ts_tensor_write(t, tmp, bytes);
    free(tmp);
    return s;
}

ts_status ts_tensor_read_f32(const ts_tensor *t, float *dst, int64_t n) {
    if (!t || !dst) return TS_ERR_INVALID_ARG;
    if (n != ts_nelements(t)) return TS_ERR_INVALID_ARG;
    if (t->dtype == TS_F32) return ts_tensor_read(t, dst, (size_t)n * sizeof(float));
    size_t bytes = ts_nbytes(t);
    void *tmp = malloc(bytes ? bytes : 1);
    if (!tmp) return TS_ERR_OOM;
    ts_status s = ts_tensor_read(t, tmp, bytes);
    if (s == TS_OK) s = ts_convert(dst, TS_F32, tmp, t->dtype, n);
    free(tmp);
    return s;
}
