/* backend.c - thin wrappers over a backend's function table, and the registry of backends
 * compiled into this binary. */
#include <string.h>

#include "tessera/backend.h"

void ts_backend_get_info(ts_backend *be, ts_backend_info *info) {
    memset(info, 0, sizeof *info);
    be->iface->get_info(be, info);
}

ts_status ts_backend_buffer_alloc(ts_backend *be, size_t size, ts_buffer **out) {
    return be->iface->buffer_alloc(be, size, out);
}

void ts_buffer_free(ts_buffer *buf) {
    if (buf) buf->backend->iface->buffer_free(buf);
}

bool ts_backend_supports_op(ts_backend *be, const ts_tensor *node) { return be->iface->supports_op(be, node); }
ts_status ts_backend_synchronize(ts_backend *be) { return be->iface->synchronize(be); }

void ts_backend_free(ts_backend *be) {
    if (be) be->iface->free(be);
}

static const ts_backend_entry registry[] = {
    {"cpu-ref", "reference CPU kernels: plain C for every op, computed in double", ts_backend_cpu_ref_new},
    {"cpu", "optimized CPU kernels (packed SIMD GEMM, f32 elementwise/softmax/rms_norm; reference kernels elsewhere)",
     ts_backend_cpu_new},
};

int ts_backend_registry_count(void) { return (int)(sizeof registry / sizeof registry[0]); }

const ts_backend_entry *ts_backend_registry_get(int i) {
    return (i >= 0 && i < ts_backend_registry_count()) ? &registry[i] : NULL;
}

const ts_backend_entry *ts_backend_registry_find(const char *name) {
    for (int i = 0; i < ts_backend_registry_count(); i++)
        if (strcmp(registry[i].name, name) == 0) return &registry[i];
    return NULL;
}
