/* backend.h - the interface every compute backend implements, and the registry of backends.
 *
 * A backend is a table of functions (ts_backend_iface): device information, buffers (the only
 * memory kernels touch), supports_op, compute over a range of graph nodes, and synchronize.
 * The executor (ts_graph_compute) hands each backend the nodes it owns, in order. The CPU
 * backend is always present and holds the reference kernels, against which the conformance
 * suite checks every other backend. To port Tessera to a new device, implement this table and
 * pass the conformance suite (docs/backend-porting.md). */
#ifndef TESSERA_BACKEND_H
#define TESSERA_BACKEND_H

#include "tessera/graph.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    char name[64];          /* "cpu-ref", "cpu", ... */
    char device[128];       /* human description of the device */
    int n_threads;          /* compute threads (CPU) or 0 */
    size_t memory_bytes;    /* device memory, 0 if shared with the host */
    bool host_visible;      /* buffers are plain host memory (ts_tensor.data is valid) */
    size_t alignment;       /* buffer alignment guaranteed by buffer_alloc */
} ts_backend_info;

typedef struct ts_backend_iface {
    void (*get_info)(ts_backend *be, ts_backend_info *info);
    /* Buffers: one allocation of device memory. size may be 0. */
    ts_status (*buffer_alloc)(ts_backend *be, size_t size, ts_buffer **out);
    void (*buffer_free)(ts_buffer *buf);
    /* Host copies; offsets and sizes in bytes. */
    ts_status (*buffer_write)(ts_buffer *buf, size_t offset, const void *src, size_t size);
    ts_status (*buffer_read)(const ts_buffer *buf, size_t offset, void *dst, size_t size);
    /* Whether this backend can run `node` (dtypes, shapes, strides as they are). */
    bool (*supports_op)(ts_backend *be, const ts_tensor *node);
    /* Runs nodes [first, last) of g in order; views and leaves among them are skipped by the
     * backend itself. Returns the first error (with its message recorded in g). */
    ts_status (*compute)(ts_backend *be, ts_graph *g, int first, int last);
    ts_status (*synchronize)(ts_backend *be);
    void (*free)(ts_backend *be);
} ts_backend_iface;

struct ts_backend {
    const ts_backend_iface *iface;
    void *impl;                     /* backend-private state */
};

struct ts_buffer {
    ts_backend *backend;
    size_t size;
    void *host;                     /* host address when host-visible, else NULL */
    void *impl;
};

/* Thin wrappers over the table. */
void ts_backend_get_info(ts_backend *be, ts_backend_info *info);
ts_status ts_backend_buffer_alloc(ts_backend *be, size_t size, ts_buffer **out);
void ts_buffer_free(ts_buffer *buf);
bool ts_backend_supports_op(ts_backend *be, const ts_tensor *node);
ts_status ts_backend_synchronize(ts_backend *be);
void ts_backend_free(ts_backend *be);

/* ---------------------------------------------------------------- CPU backend */

/* A CPU kernel computes node `dst` from its sources (all storage host-visible). It returns
 * TS_OK or an error, after recording a message with ts_graph_set_error (e.g. an embedding id
 * out of range). `pool` is the backend's thread pool. */
typedef struct {
    ts_graph *graph;
    ts_threadpool *pool;
} ts_cpu_ctx;
typedef ts_status (*ts_cpu_kernel)(const ts_cpu_ctx *ctx, ts_tensor *dst);

/* The reference kernels: plain C, every op, any strides, every float dtype (computed in
 * double). Entries for views and leaves are NULL. */
extern const ts_cpu_kernel ts_cpu_reference_kernels[TS_OP_COUNT];

/* The reference CPU backend with n_threads workers (<= 0: all cores). */
ts_status ts_backend_cpu_ref_new(int n_threads, ts_backend **out);
/* The optimized CPU backend ("cpu"): the reference backend with fast kernels swapped in
 * (packed SIMD GEMM for f32 matmul; f32 paths for common elementwise ops, softmax and rms_norm;
 * flash-style tiled f32 attention), each falling back to the reference kernel for layouts and
 * dtypes it does not handle. */
ts_status ts_backend_cpu_new(int n_threads, ts_backend **out);
/* A CPU backend that runs `kernels` (copied; NULL entries fall back to the reference) -
 * how optimized CPU tiers and test doubles plug in. */
ts_status ts_backend_cpu_new_with_kernels(const char *name, int n_threads,
                                          const ts_cpu_kernel kernels[TS_OP_COUNT], ts_backend **out);

/* ---------------------------------------------------------------- registry */

typedef ts_status (*ts_backend_factory)(int n_threads, ts_backend **out);
typedef struct {
    const char *name;
    const char *description;
    ts_backend_factory create;
} ts_backend_entry;

/* All backends compiled in and usable on this machine; the reference CPU backend is first. */
int ts_backend_registry_count(void);
const ts_backend_entry *ts_backend_registry_get(int i);
const ts_backend_entry *ts_backend_registry_find(const char *name);

#ifdef __cplusplus
}
#endif
#endif
