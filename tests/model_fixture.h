/* model_fixture.h - the reference-model fixtures the model tests share: a tiny checkpoint
 * (tests/fixtures/<set>/tiny-ref, written by tools/make_<set>_fixture.py from the reference
 * implementation) and the reference's outputs (tests/fixtures/<set>/expected.safetensors), read
 * back as doubles; plus reading a computed tensor as doubles and the full-forward logits. */
#ifndef TS_TEST_MODEL_FIXTURE_H
#define TS_TEST_MODEL_FIXTURE_H

#include <math.h>
#include <stdlib.h>

#include "files.h"
#include "tessera/graph.h"
#include "tessera/io.h"
#include "tessera/model.h"

static char fixture_dir[2048];
static ts_st_file *expected;

/* Opens the set's expected outputs and names its checkpoint directory in fixture_dir; false
 * (after saying why) when the fixture cannot be read. */
static inline bool fixture_open(const char *set) {
    snprintf(fixture_dir, sizeof fixture_dir, "%s", test_fixture_path(set, "tiny-ref"));
    const char *path = test_fixture_path(set, "expected.safetensors");
    ts_io_error ioe;
    if (ts_st_file_open(path, &expected, &ioe) == TS_OK) return true;
    fprintf(stderr, "cannot open %s: %s\n", path, ioe.message);
    return false;
}

/* An expected tensor as doubles (malloc'd), NULL when absent. */
static inline double *expect(const char *name, int64_t *numel) {
    const ts_st_tensor *t = ts_st_file_find(expected, name);
    if (!t) return NULL;
    int64_t n = 1;
    for (int d = 0; d < t->ndim; d++) n *= t->shape[d];
    double *v = malloc((size_t)n * sizeof *v);
    for (int64_t i = 0; i < n; i++) {
        switch (t->dtype) {
        case TS_ST_F64: v[i] = ((const double *)t->data)[i]; break;
        case TS_ST_F32: v[i] = ((const float *)t->data)[i]; break;
        case TS_ST_I64: v[i] = (double)((const int64_t *)t->data)[i]; break;
        default: v[i] = NAN;
        }
    }
    if (numel) *numel = n;
    return v;
}

/* An expected integer tensor (token ids) as i32 (malloc'd). */
static inline int32_t *fixture_ids(const char *name, int64_t *n) {
    double *d = expect(name, n);
    if (!d) return NULL;
    int32_t *ids = malloc((size_t)*n * sizeof *ids);
    for (int64_t i = 0; i < *n; i++) ids[i] = (int32_t)d[i];
    free(d);
    return ids;
}

/* A computed f32 or f64 tensor as doubles (malloc'd). */
static inline double *read_f64(const ts_tensor *t) {
    int64_t n = ts_nelements(t);
    double *v = malloc((size_t)n * sizeof *v);
    if (t->dtype == TS_F64) ts_tensor_read(t, v, (size_t)n * sizeof *v);
    else {
        float *f = malloc((size_t)n * sizeof *f);
        ts_tensor_read_f32(t, f, n);
        for (int64_t i = 0; i < n; i++) v[i] = f[i];
        free(f);
    }
    return v;
}

/* Full-forward logits [T, V] (as doubles, malloc'd) of one sequence: the oracle the incremental
 * decoders are checked against. Needs check.h (included first). */
static inline double *full_logits(ts_model_weights *w, ts_backend *be, const int32_t *ids, int64_t T) {
    char err[256] = "";
    ts_model_graph *mg = NULL;
    ts_model_graph_options o = {.batch = 1, .seq = T};
    ts_status s = ts_model_graph_build(w, &o, &mg, err, sizeof err);
    if (s == TS_OK) s = ts_model_graph_alloc(mg, be, NULL, err, sizeof err);
    CHECK(s == TS_OK, "full graph: %s", err);
    if (s != TS_OK) return NULL;
    ts_tensor_write(mg->ids, ids, (size_t)T * sizeof(int32_t));
    CHECK_OK(ts_graph_compute(mg->graph), mg->graph);
    double *out = read_f64(mg->logits);
    ts_model_graph_free(mg);
    return out;
}

/* The greedy next token after ids[0..T) by the full forward pass (the completer's oracle). */
static inline int full_argmax(ts_model_weights *w, ts_backend *be, const int32_t *ids, int64_t T) {
    double *lg = full_logits(w, be, ids, T);
    if (!lg) return -1;
    int64_t V = ts_model_weights_config(w)->vocab_size;
    const double *last = lg + (T - 1) * V;
    int best = 0;
    for (int64_t v = 1; v < V; v++)
        if (last[v] > last[best]) best = (int)v;
    free(lg);
    return best;
}

/* max |a - b| over n values. */
static inline double max_abs_diff(const double *a, const double *b, int64_t n) {
    double m = 0;
    for (int64_t i = 0; i < n; i++) m = fmax(m, fabs(a[i] - b[i]));
    return m;
}

#endif
