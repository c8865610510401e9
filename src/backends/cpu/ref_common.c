/* ref_common.c - the out-of-line helpers of ref_common.h (element moves, error reporting, the
 * host-storage check) shared by the reference kernels of ref_elementwise.c and ref_nn.c. */
#include "ref_common.h"

#include <string.h>

void ts_ref_move_element(ts_tensor *dst, int64_t dst_off, const ts_tensor *src, int64_t src_off) {
    int bits = ref_dtype_bits(dst->dtype);
    if (src->dtype == dst->dtype && bits >= 8) {
        size_t size = (size_t)bits / 8;
        memcpy((char *)dst->data + dst_off * (int64_t)size, (const char *)src->data + src_off * (int64_t)size, size);
    } else {
        ref_set(dst, dst_off, ref_get(src, src_off));
    }
}

ts_status ts_ref_fail(const ts_cpu_ctx *ctx, ts_status s, const ts_tensor *t, const char *why) {
    char d[160];
    return ts_graph_set_error(ctx->graph, s, "%s (reference kernel): %s: %s", ts_op_name(t->op),
                              ts_tensor_describe(t, d, sizeof d), why);
}

ts_status ts_ref_need_host_data(const ts_cpu_ctx *ctx, const ts_tensor *dst) {
    if (!dst->data) return ts_ref_fail(ctx, TS_ERR_STATE, dst, "output has no host storage");
    for (int i = 0; i < dst->n_src; i++)
        if (dst->src[i] && !dst->src[i]->data) return ts_ref_fail(ctx, TS_ERR_STATE, dst, "an input has no host storage");
    return TS_OK;
}
