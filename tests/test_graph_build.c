/* test_graph_build.c - graph construction: shape inference, views sharing storage, and the
 * error contract (a constructor that fails returns NULL, records the first error with a message
 * naming the op, the tensors and their shapes, and later constructors given NULL keep it). */
#include <math.h>
#include <string.h>

#include "check.h"
#include "tessera/tessera.h"

static bool has(const char *hay, const char *needle) { return strstr(hay, needle) != NULL; }

/* Builds one failing op in a fresh graph and checks status and message fragments. */
typedef ts_tensor *(*build_fn)(ts_graph *g);

static void expect_error(const char *what, build_fn build, ts_status want, const char *frag1, const char *frag2) {
    ts_graph *g = ts_graph_new();
    ts_tensor *r = build(g);
    const char *msg = ts_graph_error(g);
    CHECK(r == NULL, "%s: constructor returned a node", what);
    CHECK(ts_graph_status(g) == want, "%s: status %s, want %s (%s)", what, ts_status_name(ts_graph_status(g)),
          ts_status_name(want), msg);
    CHECK(has(msg, frag1) && has(msg, frag2), "%s: message '%s' lacks '%s' / '%s'", what, msg, frag1, frag2);
    ts_graph_free(g);
}

static ts_tensor *bad_add(ts_graph *g) {
    return ts_add(g, ts_new_tensor_2d(g, TS_F32, 2, 3, "a"), ts_new_tensor_2d(g, TS_F32, 4, 3, "b"));
}
static ts_tensor *bad_add_dtype(ts_graph *g) {
    return ts_add(g, ts_new_tensor_1d(g, TS_F32, 3, "a"), ts_new_tensor_1d(g, TS_BF16, 3, "b"));
}
static ts_tensor *bad_matmul(ts_graph *g) {
    return ts_matmul(g, ts_new_tensor_2d(g, TS_F32, 5, 7, "x"), ts_new_tensor_2d(g, TS_F32, 6, 3, "w"), false, false);
}
static ts_tensor *bad_matmul_batch(ts_graph *g) {
    return ts_matmul(g, ts_new_tensor_3d(g, TS_F32, 2, 5, 7, "x"), ts_new_tensor_3d(g, TS_F32, 3, 7, 3, "w"), false, false);
}
static ts_tensor *bad_axis(ts_graph *g) { return ts_sum(g, ts_new_tensor_2d(g, TS_F32, 2, 3, "x"), 2, true); }
static ts_tensor *bad_reshape(ts_graph *g) { return ts_reshape_2d(g, ts_new_tensor_2d(g, TS_F32, 4, 5, "e"), 3, 7); }
static ts_tensor *bad_slice(ts_graph *g) { return ts_slice(g, ts_new_tensor_2d(g, TS_F32, 4, 5, "s"), 1, 3, 3); }
static ts_tensor *bad_rms_weight(ts_graph *g) {
    return ts_rms_norm(g, ts_new_tensor_2d(g, TS_F32, 4, 8, "h"), ts_new_tensor_1d(g, TS_F32, 4, "norm.weight"), 1e-6f);
}
static ts_tensor *bad_rope(ts_graph *g) {
    return ts_rope(g, ts_new_tensor_3d(g, TS_F32, 5, 2, 8, "q"), ts_new_tensor_2d(g, TS_F32, 5, 3, "angles"), 5, false);
}
static ts_tensor *bad_ids(ts_graph *g) {
    return ts_get_rows(g, ts_new_tensor_2d(g, TS_F32, 10, 4, "embed"), ts_new_tensor_1d(g, TS_F32, 3, "ids"));
}
static ts_tensor *bad_ce(ts_graph *g) {
    return ts_cross_entropy(g, ts_new_tensor_2d(g, TS_F32, 4, 10, "logits"), ts_new_tensor_1d(g, TS_I32, 5, "targets"));
}
static ts_tensor *bad_topk(ts_graph *g) {
    ts_tensor *v = NULL;
    ts_topk(g, ts_new_tensor_2d(g, TS_F32, 2, 3, "scores"), 4, &v, NULL);
    return v;
}
static ts_tensor *bad_concat(ts_graph *g) {
    ts_tensor *xs[2] = {ts_new_tensor_2d(g, TS_F32, 2, 3, "l"), ts_new_tensor_2d(g, TS_F32, 3, 4, "r")};
    return ts_concat(g, xs, 2, 0);
}
static ts_tensor *bad_leaf(ts_graph *g) {
    int64_t s[2] = {3, 0};
    return ts_new_tensor(g, TS_F32, 2, s, "empty");
}
static ts_tensor *bad_float_op(ts_graph *g) { return ts_exp(g, ts_new_tensor_1d(g, TS_I32, 3, "count")); }

static void test_errors(void) {
    expect_error("add shapes", bad_add, TS_ERR_SHAPE, "add", "'b' f32[4,3]");
    expect_error("add dtypes", bad_add_dtype, TS_ERR_DTYPE, "add", "bf16[3]");
    expect_error("matmul inner", bad_matmul, TS_ERR_SHAPE, "matmul", "'w' f32[6,3]");
    expect_error("matmul batch", bad_matmul_batch, TS_ERR_SHAPE, "batch", "f32[2,5,7]");
    expect_error("axis", bad_axis, TS_ERR_SHAPE, "sum", "axis 2");
    expect_error("reshape", bad_reshape, TS_ERR_SHAPE, "reshape", "'e' f32[4,5]");
    expect_error("slice", bad_slice, TS_ERR_SHAPE, "slice", "[3, 6)");
    expect_error("rms weight", bad_rms_weight, TS_ERR_SHAPE, "rms_norm", "'norm.weight' f32[4]");
    expect_error("rope n_rot", bad_rope, TS_ERR_SHAPE, "rope", "n_rot");
    expect_error("ids dtype", bad_ids, TS_ERR_DTYPE, "get_rows", "'ids' f32[3]");
    expect_error("ce shapes", bad_ce, TS_ERR_SHAPE, "cross_entropy", "'targets' i32[5]");
    expect_error("topk k", bad_topk, TS_ERR_SHAPE, "topk", "'scores' f32[2,3]");
    expect_error("concat", bad_concat, TS_ERR_SHAPE, "concat", "'r' f32[3,4]");
    expect_error("leaf dim 0", bad_leaf, TS_ERR_SHAPE, "empty", "dimension 1");
    expect_error("float op on ints", bad_float_op, TS_ERR_DTYPE, "exp", "'count' i32[3]");
}

/* The first error wins; NULL inputs propagate without new messages. */
static void test_error_propagation(void) {
    ts_graph *g = ts_graph_new();
    ts_tensor *a = ts_new_tensor_2d(g, TS_F32, 2, 3, "a"), *b = ts_new_tensor_2d(g, TS_F32, 3, 3, "b");
    ts_tensor *bad = ts_add(g, a, b);
    char first[1024];
    snprintf(first, sizeof first, "%s", ts_graph_error(g));
    ts_tensor *r = ts_relu(g, ts_matmul(g, bad, b, false, false));
    ts_tensor *c = ts_exp(g, ts_new_tensor_1d(g, TS_I32, 2, "later"));
    CHECK(!r && !c, "NULL must propagate");
    CHECK(strcmp(first, ts_graph_error(g)) == 0, "first error kept: '%s' vs '%s'", first, ts_graph_error(g));
    ts_backend *be = NULL;
    CHECK_OK(ts_backend_cpu_ref_new(1, &be), NULL);
    CHECK(ts_graph_alloc(g, be, NULL, NULL) != TS_OK, "alloc of a broken graph must fail");
    CHECK(has(ts_graph_error(g), "add"), "message still names the original op: %s", ts_graph_error(g));
    ts_graph_free(g);
    ts_backend_free(be);
}

static void test_shape_inference(void) {
    ts_graph *g = ts_graph_new();
    ts_tensor *x = ts_new_tensor_4d(g, TS_F32, 2, 1, 5, 7, "x"), *w = ts_new_tensor_3d(g, TS_F32, 3, 7, 4, "w");
    ts_tensor *m = ts_matmul(g, x, w, false, false);
    CHECK(m && m->ndim == 4 && m->shape[0] == 2 && m->shape[1] == 3 && m->shape[2] == 5 && m->shape[3] == 4,
          "batched broadcast matmul shape");
    ts_tensor *mt = ts_matmul(g, w, w, true, false); /* [3,4,7] x [3,7,4] */
    CHECK(mt && mt->shape[1] == 4 && mt->shape[2] == 4, "trans_a matmul shape");
    ts_tensor *s = ts_add(g, ts_new_tensor_3d(g, TS_F32, 2, 3, 4, "p"), ts_new_tensor_2d(g, TS_F32, 3, 1, "q"));
    CHECK(s && s->ndim == 3 && s->shape[2] == 4, "broadcast add shape");
    ts_tensor *r = ts_sum(g, s, -1, false);
    CHECK(r && r->ndim == 2 && r->shape[0] == 2 && r->shape[1] == 3, "sum without keepdim drops the axis");
    ts_tensor *emb = ts_get_rows(g, ts_new_tensor_2d(g, TS_F32, 10, 8, "embed"), ts_new_tensor_2d(g, TS_I32, 2, 5, "ids"));
    CHECK(emb && emb->ndim == 3 && emb->shape[2] == 8, "get_rows shape");
    ts_tensor *vals = NULL, *idx = NULL;
    CHECK_OK(ts_topk(g, emb, 3, &vals, &idx), g);
    CHECK(idx && idx->dtype == TS_I32 && idx->shape[2] == 3 && vals && vals->dtype == TS_F32, "topk outputs");
    ts_tensor *ce = ts_cross_entropy(g, emb, ts_new_tensor_2d(g, TS_I64, 2, 5, "targets"));
    CHECK(ce && ce->ndim == 1 && ce->shape[0] == 1, "cross_entropy is [1]");
    CHECK(ts_graph_status(g) == TS_OK, "%s", ts_graph_error(g));
    ts_graph_free(g);
}

/* Views share their root's storage: after alloc, their addresses point into it. */
static void test_views_share_storage(void) {
    ts_graph *g = ts_graph_new();
    ts_tensor *x = ts_new_tensor_3d(g, TS_F32, 2, 3, 4, "x");
    ts_tensor *t = ts_transpose(g, x, 0, 2);
    ts_tensor *sl = ts_slice(g, x, 1, 1, 2);
    ts_tensor *rs = ts_reshape_2d(g, x, 6, 4);
    int perm[3] = {1, 2, 0};
    ts_tensor *p = ts_permute(g, x, perm);
    ts_tensor *rt = ts_reshape_2d(g, t, 4, 6); /* not contiguous: must copy */
    CHECK(t && t->view_src == x && t->stride[0] == 1 && t->stride[2] == 12, "transpose is a strided view");
    CHECK(sl && sl->view_src == x && sl->offset == 4, "slice offset");
    CHECK(rs && rs->view_src == x && ts_is_contiguous(rs), "reshape of contiguous is a view");
    CHECK(p && p->shape[0] == 3 && p->shape[2] == 2 && p->stride[2] == 12, "permute geometry");
    CHECK(rt && rt->view_src && rt->view_src->op == TS_OP_COPY, "reshape of a transpose goes through a copy");
    ts_set_output(rt);
    ts_backend *be = NULL;
    CHECK_OK(ts_backend_cpu_ref_new(1, &be), NULL);
    CHECK_OK(ts_graph_alloc(g, be, NULL, NULL), g);
    CHECK(t->data == x->data && rs->data == x->data, "views alias the root");
    CHECK((char *)sl->data == (char *)x->data + 4 * sizeof(float), "slice address");
    float xs[24], out[24];
    for (int i = 0; i < 24; i++) xs[i] = (float)i;
    CHECK_OK(ts_tensor_write_f32(x, xs, 24), g);
    CHECK_OK(ts_graph_compute(g), g);
    CHECK_OK(ts_tensor_read_f32(rt, out, 24), g);
    /* rt[a][b] = t flattened; t[i][j][k] = x[k][j][i] with t shape [4,3,2] */
    int bad = 0;
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < 3; j++)
            for (int k = 0; k < 2; k++)
                if (out[i * 6 + j * 2 + k] != xs[k * 12 + j * 4 + i]) bad++;
    CHECK(bad == 0, "%d elements of reshape(transpose(x)) wrong", bad);
    ts_graph_free(g);
    ts_backend_free(be);
}

/* ts_detach: y = sum(x·x + detach(x)·x) has dy/dx = 2x + x (the detached factor is a constant). */
static void test_detach(void) {
    ts_graph *g = ts_graph_new();
    ts_tensor *x = ts_set_param(ts_new_tensor_1d(g, TS_F64, 3, "x"));
    ts_tensor *d = ts_detach(g, x);
    CHECK(d && !(d->flags & TS_FLAG_REQUIRES_GRAD), "detach keeps no gradient path");
    ts_tensor *y = ts_sum(g, ts_add(g, ts_mul(g, x, x), ts_mul(g, d, x)), 0, false);
    CHECK_OK(ts_graph_backward(g, y), g);
    ts_backend *be = NULL;
    CHECK_OK(ts_backend_cpu_ref_new(1, &be), NULL);
    CHECK_OK(ts_graph_alloc(g, be, NULL, NULL), g);
    double xv[3] = {1.5, -2, 0.25}, gv[3];
    ts_tensor_write(x, xv, sizeof xv);
    CHECK_OK(ts_graph_compute(g), g);
    ts_tensor_read(ts_grad(x), gv, sizeof gv);
    for (int i = 0; i < 3; i++) CHECK(gv[i] == 3 * xv[i], "d/dx[%d] = %g, want %g", i, gv[i], 3 * xv[i]);
    ts_graph_free(g);
    ts_backend_free(be);
}

/* ts_graph_compute_range: y = x + 1, z = y * 2 as two ranges, the second alone after y was
 * overwritten by hand; ranges outside the graph are refused. */
static void test_compute_range(void) {
    ts_graph *g = ts_graph_new();
    ts_tensor *x = ts_new_tensor_1d(g, TS_F32, 4, "x");
    ts_tensor *one = ts_fill(g, TS_F32, 1, (int64_t[]){1}, 1.0f);
    ts_tensor *y = ts_set_output(ts_add(g, x, one));
    int cut = ts_graph_n_nodes(g);
    ts_tensor *z = ts_set_output(ts_scale(g, y, 2.0f));
    ts_backend *be = NULL;
    CHECK_OK(ts_backend_cpu_ref_new(1, &be), NULL);
    CHECK_OK(ts_graph_alloc(g, be, NULL, NULL), g);
    float xs[4] = {1, 2, 3, 4}, ys[4] = {10, 20, 30, 40}, out[4];
    CHECK_OK(ts_tensor_write_f32(x, xs, 4), g);
    CHECK_OK(ts_graph_compute_range(g, 0, cut), g);
    CHECK_OK(ts_tensor_read_f32(y, out, 4), g);
    CHECK(out[0] == 2 && out[3] == 5, "first range: y = %g .. %g", out[0], out[3]);
    CHECK_OK(ts_tensor_write_f32(y, ys, 4), g);
    CHECK_OK(ts_graph_compute_range(g, cut, ts_graph_n_nodes(g)), g);
    CHECK_OK(ts_tensor_read_f32(z, out, 4), g);
    CHECK(out[0] == 20 && out[3] == 80, "second range alone reads y as written: z = %g .. %g", out[0], out[3]);
    CHECK(ts_graph_compute_range(g, -1, 2) == TS_ERR_INVALID_ARG, "a range before node 0 is refused");
    CHECK(ts_graph_compute_range(g, 0, ts_graph_n_nodes(g) + 1) == TS_ERR_INVALID_ARG, "a range past the end");
    CHECK(ts_graph_compute_range(g, 2, 1) == TS_ERR_INVALID_ARG, "a reversed range is refused");
    ts_graph_free(g);
    ts_backend_free(be);
}

int main(void) {
    test_compute_range();
    test_detach();
    test_errors();
    test_error_propagation();
    test_shape_inference();
    test_views_share_storage();
    return check_summary("graph_build");
}
