/* cpu_backend.c - the CPU backend: host buffers, a thread pool, and a table of kernels (one
 * per op) that compute runs node by node. The reference table is ts_cpu_reference_kernels;
 * optimized tiers and test doubles are the same backend with some entries replaced.
 * With TESSERA_PROFILE=1 in the environment the backend times every kernel and prints the
 * time per op kind to stderr when it is freed (to find what to optimize next);
 * TESSERA_PROFILE=shapes also splits it by the nodes' shapes (op, output and source shapes:
 * which matmul of a model, which softmax), the PROFILE_SHAPE_LINES costliest. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "graph/graph_internal.h"

#define CPU_ALIGN 64
#define PROFILE_SHAPES 4096    /* distinct node shapes kept (open addressing); more are lumped */
#define PROFILE_SHAPE_LINES 40

typedef struct {
    char key[200]; /* "" = unused */
    double seconds;
    int64_t calls;
} shape_entry;

typedef struct {
    char name[64];
    ts_threadpool *pool;
    ts_cpu_kernel kernels[TS_OP_COUNT];
    bool profile;
    double op_seconds[TS_OP_COUNT];
    int64_t op_calls[TS_OP_COUNT];
    shape_entry *shapes; /* [PROFILE_SHAPES] with TESSERA_PROFILE=shapes */
} cpu_state;

static double seconds_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* "op dtype[shape] <- [src shapes]": what tells two nodes of one op apart in a profile. */
static void shape_key(const ts_tensor *t, char *key, size_t size) {
    int n = snprintf(key, size, "%-12s %s[", ts_op_name(t->op), ts_dtype_name(t->dtype));
    for (int d = 0; d < t->ndim && (size_t)n < size; d++) n += snprintf(key + n, size - n, d ? ",%lld" : "%lld", (long long)t->shape[d]);
    for (int i = 0; i < t->n_src && t->src[i] && (size_t)n < size; i++) {
        n += snprintf(key + n, size - n, i ? " [" : "] <- [");
        for (int d = 0; d < t->src[i]->ndim && (size_t)n < size; d++)
            n += snprintf(key + n, size - n, d ? ",%lld" : "%lld", (long long)t->src[i]->shape[d]);
        if ((size_t)n < size) n += snprintf(key + n, size - n, "]");
    }
    if (!t->n_src && (size_t)n < size) snprintf(key + n, size - n, "]");
}

static void record_shape(cpu_state *st, const ts_tensor *t, double seconds) {
    char key[sizeof st->shapes[0].key];
    shape_key(t, key, sizeof key);
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (const char *c = key; *c; c++) h = (h ^ (unsigned char)*c) * 1099511628211ull;
    for (int probe = 0; probe < PROFILE_SHAPES; probe++) {
        shape_entry *e = &st->shapes[(h + (uint64_t)probe) % PROFILE_SHAPES];
        if (!e->key[0] || strcmp(e->key, key) == 0) {
            if (!e->key[0]) memcpy(e->key, key, sizeof key);
            e->seconds += seconds;
            e->calls++;
            return;
        }
    }
}

static int by_seconds_desc(const void *a, const void *b) {
    double x = ((const shape_entry *)a)->seconds, y = ((const shape_entry *)b)->seconds;
    return (x < y) - (x > y);
}

static void print_shape_profile(cpu_state *st, double total) {
    qsort(st->shapes, PROFILE_SHAPES, sizeof *st->shapes, by_seconds_desc);
    fprintf(stderr, "costliest node shapes:\n");
    for (int i = 0; i < PROFILE_SHAPE_LINES && st->shapes[i].key[0]; i++)
        fprintf(stderr, "  %9.4f s %5.1f %% %8lld calls  %s\n", st->shapes[i].seconds,
                100 * st->shapes[i].seconds / (total > 0 ? total : 1), (long long)st->shapes[i].calls, st->shapes[i].key);
}

static void print_profile(cpu_state *st) {
    double total = 0;
    for (int op = 0; op < TS_OP_COUNT; op++) total += st->op_seconds[op];
    fprintf(stderr, "profile of backend %s: %.3f s in kernels\n", st->name, total);
    bool shown[TS_OP_COUNT] = {false};
    for (;;) { /* descending by time */
        int best = -1;
        for (int op = 0; op < TS_OP_COUNT; op++)
            if (!shown[op] && st->op_calls[op] && (best < 0 || st->op_seconds[op] > st->op_seconds[best])) best = op;
        if (best < 0) break;
        shown[best] = true;
        fprintf(stderr, "  %-20s %9.3f s %5.1f %%  %8lld calls\n", ts_op_name((ts_op)best), st->op_seconds[best],
                100 * st->op_seconds[best] / (total > 0 ? total : 1), (long long)st->op_calls[best]);
    }
    if (st->shapes) print_shape_profile(st, total);
}

static void cpu_get_info(ts_backend *be, ts_backend_info *info) {
    cpu_state *st = be->impl;
    snprintf(info->name, sizeof info->name, "%s", st->name);
    snprintf(info->device, sizeof info->device, "host CPU (%d threads)", ts_threadpool_size(st->pool));
    info->n_threads = ts_threadpool_size(st->pool);
    info->host_visible = true;
    info->alignment = CPU_ALIGN;
}

static ts_status cpu_buffer_alloc(ts_backend *be, size_t size, ts_buffer **out) {
    *out = NULL;
    ts_buffer *b = calloc(1, sizeof *b);
    if (!b) return TS_ERR_OOM;
    size_t rounded = (size + CPU_ALIGN - 1) / CPU_ALIGN * CPU_ALIGN;
    b->host = aligned_alloc(CPU_ALIGN, rounded ? rounded : CPU_ALIGN);
    if (!b->host) {
        free(b);
        return TS_ERR_OOM;
    }
    b->backend = be;
    b->size = size;
    *out = b;
    return TS_OK;
}

static void cpu_buffer_free(ts_buffer *b) {
    free(b->host);
    free(b);
}

static ts_status cpu_buffer_write(ts_buffer *b, size_t off, const void *src, size_t size) {
    if (off > b->size || size > b->size - off) return TS_ERR_RANGE;
    memcpy((char *)b->host + off, src, size);
    return TS_OK;
}

static ts_status cpu_buffer_read(const ts_buffer *b, size_t off, void *dst, size_t size) {
    if (off > b->size || size > b->size - off) return TS_ERR_RANGE;
    memcpy(dst, (const char *)b->host + off, size);
    return TS_OK;
}

static bool cpu_supports_op(ts_backend *be, const ts_tensor *node) {
    cpu_state *st = be->impl;
    return node->op == TS_OP_NONE || ts_op_is_view(node->op) || st->kernels[node->op] != NULL;
}

static ts_status cpu_compute(ts_backend *be, ts_graph *g, int first, int last) {
    cpu_state *st = be->impl;
    ts_cpu_ctx ctx = {.graph = g, .pool = st->pool};
    for (int i = first; i < last; i++) {
        ts_tensor *t = g->nodes[i];
        if (t->op == TS_OP_NONE || ts_op_is_view(t->op)) continue;
        ts_cpu_kernel k = st->kernels[t->op];
        if (!k) {
            char d[160];
            return ts_graph_set_error(g, TS_ERR_UNSUPPORTED, "%s: no kernel on backend %s for %s", ts_op_name(t->op),
                                      st->name, ts_tensor_describe(t, d, sizeof d));
        }
        double t0 = st->profile ? seconds_now() : 0;
        ts_status s = k(&ctx, t);
        if (st->profile) {
            double dt = seconds_now() - t0;
            st->op_seconds[t->op] += dt;
            st->op_calls[t->op]++;
            if (st->shapes) record_shape(st, t, dt);
        }
        if (s != TS_OK) {
            char d[160];
            return ts_graph_set_error(g, s, "%s failed on %s", ts_op_name(t->op), ts_tensor_describe(t, d, sizeof d));
        }
    }
    return TS_OK;
}

static ts_status cpu_synchronize(ts_backend *be) { return TS_OK; }

static void cpu_free(ts_backend *be) {
    cpu_state *st = be->impl;
    if (st->profile) print_profile(st);
    ts_threadpool_free(st->pool);
    free(st->shapes);
    free(st);
    free(be);
}

static const ts_backend_iface cpu_iface = {
    .get_info = cpu_get_info,
    .buffer_alloc = cpu_buffer_alloc,
    .buffer_free = cpu_buffer_free,
    .buffer_write = cpu_buffer_write,
    .buffer_read = cpu_buffer_read,
    .supports_op = cpu_supports_op,
    .compute = cpu_compute,
    .synchronize = cpu_synchronize,
    .free = cpu_free,
};

ts_status ts_backend_cpu_new_with_kernels(const char *name, int n_threads, const ts_cpu_kernel kernels[TS_OP_COUNT],
                                          ts_backend **out) {
    if (!out) return TS_ERR_INVALID_ARG;
    *out = NULL;
    ts_backend *be = calloc(1, sizeof *be);
    cpu_state *st = calloc(1, sizeof *st);
    if (!be || !st) {
        free(be);
        free(st);
        return TS_ERR_OOM;
    }
    ts_status s = ts_threadpool_new(n_threads, &st->pool);
    if (s != TS_OK) {
        free(be);
        free(st);
        return s;
    }
    snprintf(st->name, sizeof st->name, "%s", name ? name : "cpu");
    const char *prof = getenv("TESSERA_PROFILE");
    st->profile = prof && *prof && strcmp(prof, "0") != 0;
    if (st->profile && strcmp(prof, "shapes") == 0) st->shapes = calloc(PROFILE_SHAPES, sizeof *st->shapes);
    for (int i = 0; i < TS_OP_COUNT; i++)
        st->kernels[i] = (kernels && kernels[i]) ? kernels[i] : ts_cpu_reference_kernels[i];
    be->iface = &cpu_iface;
    be->impl = st;
    *out = be;
    return TS_OK;
}

ts_status ts_backend_cpu_ref_new(int n_threads, ts_backend **out) {
    return ts_backend_cpu_new_with_kernels("cpu-ref", n_threads, NULL, out);
}
