/* test_conformance_catches.c - the conformance suite must be able to fail. CPU backends whose
 * kernel tables swap in deliberately broken kernels (each runs the reference kernel, then
 * corrupts its result) must be reported as failing for exactly the broken ops, while every
 * untouched op still passes; a backend lacking an op must be reported as unsupported, not crash.
 * This test passes when the harness catches them all. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "tessera/conformance.h"

#define THREADS 2

/* ---------------------------------------------------------------- broken kernels */

static ts_status reference(const ts_cpu_ctx *ctx, ts_tensor *dst) {
    return ts_cpu_reference_kernels[dst->op](ctx, dst);
}

/* (1) matmul: the largest-magnitude result element off by a relative 1e-3. */
static ts_status matmul_off_by_1e3(const ts_cpu_ctx *ctx, ts_tensor *dst) {
    ts_status s = reference(ctx, dst);
    int64_t n = ts_nelements(dst), big = 0;
    for (int64_t k = 1; k < n; k++)
        if (fabs(ts_load_f64(dst->data, dst->dtype, k)) > fabs(ts_load_f64(dst->data, dst->dtype, big))) big = k;
    ts_store_f64(dst->data, dst->dtype, big, ts_load_f64(dst->data, dst->dtype, big) * (1 + 1e-3));
    return s;
}

/* (2) add: also changes the byte just past its output, as an off-by-one loop bound would. */
static ts_status add_writes_past_end(const ts_cpu_ctx *ctx, ts_tensor *dst) {
    ts_status s = reference(ctx, dst);
    unsigned char *past = (unsigned char *)dst->data + ts_nbytes(dst);
    *past = (unsigned char)~*past;
    return s;
}

/* (3) softmax: a NaN in the first element. */
static ts_status softmax_with_nan(const ts_cpu_ctx *ctx, ts_tensor *dst) {
    ts_status s = reference(ctx, dst);
    ts_store_f64(dst->data, dst->dtype, 0, NAN);
    return s;
}

/* (4) rms_norm_back: every element scaled by 1.25 (a wrong normalization factor). */
static ts_status rms_norm_back_wrong_scale(const ts_cpu_ctx *ctx, ts_tensor *dst) {
    ts_status s = reference(ctx, dst);
    for (int64_t k = 0; k < ts_nelements(dst); k++)
        ts_store_f64(dst->data, dst->dtype, k, 1.25 * ts_load_f64(dst->data, dst->dtype, k));
    return s;
}

/* ---------------------------------------------------------------- (5) a backend lacking an op */

/* ts_backend_cpu_new_with_kernels fills NULL entries from the reference table, so a missing op
 * is modelled as a wrapper whose supports_op says no for it; everything else is delegated. */
typedef struct {
    ts_backend base;
    ts_backend *inner;
    ts_op hidden;
} hiding_backend;

static ts_backend *inner_of(ts_backend *be) { return ((hiding_backend *)be)->inner; }

static void hiding_get_info(ts_backend *be, ts_backend_info *info) {
    inner_of(be)->iface->get_info(inner_of(be), info);
    snprintf(info->name, sizeof info->name, "cpu-without-%s", ts_op_name(((hiding_backend *)be)->hidden));
}
static ts_status hiding_buffer_alloc(ts_backend *be, size_t size, ts_buffer **out) {
    return inner_of(be)->iface->buffer_alloc(inner_of(be), size, out);
}
static bool hiding_supports_op(ts_backend *be, const ts_tensor *node) {
    return node->op != ((hiding_backend *)be)->hidden && ts_backend_supports_op(inner_of(be), node);
}
static ts_status hiding_compute(ts_backend *be, ts_graph *g, int first, int last) {
    return inner_of(be)->iface->compute(inner_of(be), g, first, last);
}
static ts_status hiding_synchronize(ts_backend *be) { return ts_backend_synchronize(inner_of(be)); }
static void hiding_free(ts_backend *be) {
    ts_backend_free(inner_of(be));
    free(be);
}

static ts_backend *new_backend_without(ts_op hidden) {
    static ts_backend_iface iface;
    ts_backend *inner = NULL;
    hiding_backend *h = calloc(1, sizeof *h);
    if (!h || ts_backend_cpu_ref_new(THREADS, &inner) != TS_OK) {
        free(h);
        return NULL;
    }
    iface = *inner->iface; /* buffers are the inner backend's: their functions stay as they are */
    iface.get_info = hiding_get_info;
    iface.buffer_alloc = hiding_buffer_alloc;
    iface.supports_op = hiding_supports_op;
    iface.compute = hiding_compute;
    iface.synchronize = hiding_synchronize;
    iface.free = hiding_free;
    h->base.iface = &iface;
    h->inner = inner;
    h->hidden = hidden;
    return &h->base;
}

/* ---------------------------------------------------------------- checks */

static ts_conformance_result run(ts_backend *be, bool gradients, const char *filter) {
    ts_conformance_options opts = {.gradients = gradients, .op_filter = filter, .n_threads = THREADS};
    ts_conformance_result res;
    ts_status s = ts_conformance_run(be, &opts, &res);
    CHECK(s == TS_OK, "ts_conformance_run: %s", ts_status_name(s));
    return res;
}

static bool in_list(ts_op op, const ts_op *list, int n) {
    for (int i = 0; i < n; i++)
        if (list[i] == op) return true;
    return false;
}

/* Every op in `broken` has failing cases; every other op with cases passed all of them. */
static void check_fails_exactly(const ts_conformance_result *r, const ts_op *broken, int n_broken, const char *what) {
    for (int op = 0; op < TS_OP_COUNT; op++) {
        const ts_conformance_op_result *p = &r->per_op[op];
        if (in_list((ts_op)op, broken, n_broken))
            CHECK(p->n_failed > 0, "%s: broken %s not caught (%d cases passed)", what, ts_op_name((ts_op)op),
                  p->n_passed);
        else
            CHECK(p->n_failed == 0 && p->n_passed == p->n_cases, "%s: untouched %s: %d of %d cases failed", what,
                  ts_op_name((ts_op)op), p->n_failed, p->n_cases);
    }
    CHECK(r->n_unsupported == 0, "%s: %d cases unsupported", what, r->n_unsupported);
}

/* The first failure of a filtered run says why it failed. */
static void check_reason(ts_backend *be, const char *filter, const char *reason) {
    ts_conformance_result r = run(be, false, filter);
    CHECK(r.n_failed > 0 && strstr(r.first_failure_message, reason),
          "'%s': expected a failure mentioning '%s', got %d failed, '%s'", filter, reason, r.n_failed,
          r.first_failure_message);
}

/* Every case selected by `filter` fails: used where the corruption is far above the tolerance
 * for every shape (a relative 1e-3 on one matmul element is above f32's and f64's; low
 * precision may round it away, and in f16 a gradient may sit in the subnormals, where a 25%
 * error is less than the spacing of the representable values). */
static void check_all_caught(ts_backend *be, bool gradients, const char *filter) {
    ts_conformance_result r = run(be, gradients, filter);
    CHECK(r.n_cases > 0 && r.n_failed == r.n_cases, "'%s'%s: %d of %d cases caught", filter,
          gradients ? " (gradients)" : "", r.n_failed, r.n_cases);
}

static void test_broken_kernels(void) {
    ts_cpu_kernel kernels[TS_OP_COUNT] = {0};
    kernels[TS_OP_MATMUL] = matmul_off_by_1e3;
    kernels[TS_OP_ADD] = add_writes_past_end;
    kernels[TS_OP_SOFTMAX] = softmax_with_nan;
    kernels[TS_OP_RMS_NORM_BACK] = rms_norm_back_wrong_scale;
    ts_backend *be = NULL;
    CHECK(ts_backend_cpu_new_with_kernels("cpu-broken", THREADS, kernels, &be) == TS_OK, "creating the broken backend");
    if (!be) return;
    const ts_op broken[] = {TS_OP_MATMUL, TS_OP_ADD, TS_OP_SOFTMAX, TS_OP_RMS_NORM_BACK};
    ts_conformance_result all = run(be, false, NULL);
    printf("conformance (broken backend): %d cases, %d passed, %d failed\n", all.n_cases, all.n_passed, all.n_failed);
    check_fails_exactly(&all, broken, 4, "forward");
    check_reason(be, "add f32 [7,33],[7,33]", "guard");
    check_reason(be, "softmax bf16 [7,33] axis=1", "nan");
    check_reason(be, "rms_norm_back f16", "nmse");
    check_all_caught(be, false, "matmul f32");
    check_all_caught(be, false, "matmul f64");
    check_all_caught(be, false, "rms_norm_back");
    ts_backend_free(be);
}

/* (4) seen from gradient mode: only rms_norm's backward uses rms_norm_back, so exactly the
 * rms_norm gradient cases fail there. */
static void test_wrong_gradient_kernel(void) {
    ts_cpu_kernel kernels[TS_OP_COUNT] = {0};
    kernels[TS_OP_RMS_NORM_BACK] = rms_norm_back_wrong_scale;
    ts_backend *be = NULL;
    CHECK(ts_backend_cpu_new_with_kernels("cpu-bad-grad", THREADS, kernels, &be) == TS_OK, "creating the backend");
    if (!be) return;
    const ts_op broken[] = {TS_OP_RMS_NORM};
    ts_conformance_result r = run(be, true, NULL);
    printf("conformance (wrong rms_norm_back, gradients): %d cases, %d passed, %d failed\n", r.n_cases, r.n_passed,
           r.n_failed);
    check_fails_exactly(&r, broken, 1, "gradients");
    check_all_caught(be, true, "rms_norm f32");
    check_all_caught(be, true, "rms_norm f64");
    check_all_caught(be, true, "rms_norm bf16");
    ts_backend_free(be);
}

/* (5) a backend without silu: its cases are unsupported (forward and gradient), silu_back's
 * still pass, nothing fails, and the support listing names the gap. */
static void test_missing_op(void) {
    ts_backend *be = new_backend_without(TS_OP_SILU);
    CHECK(be != NULL, "creating the backend without silu");
    if (!be) return;
    for (int grad = 0; grad <= 1; grad++) {
        ts_conformance_result r = run(be, grad, "silu");
        const ts_conformance_op_result *silu = &r.per_op[TS_OP_SILU], *back = &r.per_op[TS_OP_SILU_BACK];
        CHECK(silu->n_cases > 0 && silu->n_unsupported == silu->n_cases, "%s: %d of %d silu cases unsupported",
              grad ? "gradients" : "forward", silu->n_unsupported, silu->n_cases);
        CHECK(r.n_failed == 0 && back->n_passed == back->n_cases, "%s: %d failed, silu_back %d of %d passed",
              grad ? "gradients" : "forward", r.n_failed, back->n_passed, back->n_cases);
    }
    char *text = NULL;
    size_t size = 0;
    FILE *mem = open_memstream(&text, &size);
    ts_conformance_print_support(be, mem);
    fclose(mem);
    CHECK(text && strstr(text, "missing: silu\n"), "support listing does not name silu as missing:\n%s",
          text ? text : "");
    free(text);
    ts_backend_free(be);
}

int main(void) {
    test_broken_kernels();
    test_wrong_gradient_kernel();
    test_missing_op();
    return check_summary("test_conformance_catches");
}
