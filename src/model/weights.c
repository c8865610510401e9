/* weights.c - a model's tensors in host memory: allocation in the walk order of
 * ts_model_walk_tensors, the init scheme, loading a Hugging Face / official checkpoint (exact
 * conversion of FP8 and MXFP4 storage on load, three naming schemes) and saving one. The graph
 * builder (model_graph.c) binds its parameter leaves to these arrays and the optimizers update
 * them in place, so they are the one copy of the model. For inference the matmul weights can be
 * narrowed to bf16 once (ts_model_weights_narrow_matmuls): the graphs then bind those arrays.
 * ts_model_load_for_inference narrows before it loads, so those weights are read from the
 * checkpoint straight into bf16 and the f32 copy never exists (the f32 arrays, calloc'd and
 * never written, cost no memory): its peak is the inference model, not the f32 one.
 *
 * Routed experts are stored stacked: for each layer and each of w1 / w2 / w3 the E expert
 * matrices are one contiguous [E, rows, cols] block, expert e's tensor pointing into it. The
 * dense MoE reference builder multiplies all experts in one batched matmul over that block. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/model_internal.h"

struct ts_model_weights {
    ts_v4_config cfg;
    ts_dtype dt;
    int n, cap;
    ts_model_tensor *info;
    void **data;
    int *stack_base; /* routed experts: index of expert 0's tensor of the same kind; else -1 */
    ts_dtype *mem;   /* per tensor: the compute dtype, i32 (tid2eid) or the narrow matmul dtype */
};

/* In-memory dtype of tensor i. */
static ts_dtype mem_dtype(const ts_model_weights *w, int i) { return w->mem[i]; }

/* The safetensors dtype of an in-memory one. */
static ts_st_dtype st_dtype(ts_dtype t) {
    switch (t) {
    case TS_I32: return TS_ST_I32;
    case TS_F64: return TS_ST_F64;
    case TS_BF16: return TS_ST_BF16;
    default: return TS_ST_F32;
    }
}

static ts_status collect(const ts_model_tensor *t, void *user) {
    ts_model_weights *w = user;
    if (w->n == w->cap) {
        int cap = w->cap ? 2 * w->cap : 256;
        ts_model_tensor *info = realloc(w->info, (size_t)cap * sizeof *info);
        if (!info) return TS_ERR_OOM;
        w->info = info;
        w->cap = cap;
    }
    w->info[w->n++] = *t;
    return TS_OK;
}

/* Allocates every tensor zeroed; expert blocks at expert 0 (walk order: e0.w1, e0.w2, e0.w3, e1.w1...). */
static ts_status allocate(ts_model_weights *w) {
    w->data = calloc((size_t)w->n, sizeof *w->data);
    w->stack_base = malloc((size_t)w->n * sizeof *w->stack_base);
    w->mem = malloc((size_t)w->n * sizeof *w->mem);
    if (!w->data || !w->stack_base || !w->mem) return TS_ERR_OOM;
    int64_t E = w->cfg.n_routed_experts;
    for (int i = 0; i < w->n; i++) {
        const ts_model_tensor *t = &w->info[i];
        w->mem[i] = t->dtype == TS_I64 ? TS_I32 : w->dt;
        size_t bytes = ts_dtype_bytes(mem_dtype(w, i), ts_model_tensor_numel(t));
        w->stack_base[i] = -1;
        if (t->expert > 0) {
            int base = i - 3 * t->expert;
            if (base < 0 || w->info[base].expert != 0 || w->info[base].layer != t->layer) return TS_ERR_INTERNAL;
            w->stack_base[i] = base;
            w->data[i] = (char *)w->data[base] + (size_t)t->expert * bytes;
            continue;
        }
        if (t->expert == 0) {
            w->stack_base[i] = i;
            bytes *= (size_t)E;
        }
        w->data[i] = calloc(1, bytes ? bytes : 1);
        if (!w->data[i]) return TS_ERR_OOM;
    }
    return TS_OK;
}

ts_status ts_model_weights_new(const ts_v4_config *cfg, ts_dtype dt, ts_model_weights **out, char *err,
                               size_t err_size) {
    if (!cfg || !out) return TS_ERR_INVALID_ARG;
    *out = NULL;
    if (dt != TS_F32 && dt != TS_F64) {
        ts_error_printf(err, err_size, "model weights: compute dtype must be f32 or f64, not %s", ts_dtype_name(dt));
        return TS_ERR_UNSUPPORTED;
    }
    ts_status s = ts_v4_config_validate(cfg, err, err_size);
    if (s != TS_OK) return s;
    ts_model_weights *w = calloc(1, sizeof *w);
    if (!w) return TS_ERR_OOM;
    w->cfg = *cfg;
    w->dt = dt;
    s = ts_model_walk_tensors(cfg, collect, w);
    if (s == TS_OK) s = allocate(w);
    if (s != TS_OK) {
        ts_error_printf(err, err_size, "model weights: %s", s == TS_ERR_OOM ? "out of memory" : ts_status_name(s));
        ts_model_weights_free(w);
        return s;
    }
    *out = w;
    return TS_OK;
}

void ts_model_weights_free(ts_model_weights *w) {
    if (!w) return;
    for (int i = 0; w->data && i < w->n; i++)
        if (w->stack_base[i] < 0 || w->stack_base[i] == i) free(w->data[i]);
    free(w->data);
    free(w->stack_base);
    free(w->mem);
    free(w->info);
    free(w);
}

const ts_v4_config *ts_model_weights_config(const ts_model_weights *w) { return &w->cfg; }
ts_dtype ts_model_weights_dtype(const ts_model_weights *w) { return w->dt; }
int ts_model_weights_count(const ts_model_weights *w) { return w->n; }
const ts_model_tensor *ts_model_weights_info(const ts_model_weights *w, int i) {
    return i >= 0 && i < w->n ? &w->info[i] : NULL;
}
void *ts_model_weights_data(const ts_model_weights *w, int i) { return i >= 0 && i < w->n ? w->data[i] : NULL; }
int ts_model_weights_stack_base(const ts_model_weights *w, int i) { return w->stack_base[i]; }
ts_dtype ts_model_weights_mem_dtype(const ts_model_weights *w, int i) { return mem_dtype(w, i); }

int ts_model_weights_find(const ts_model_weights *w, const char *name) {
    for (int i = 0; i < w->n; i++)
        if (strcmp(w->info[i].name, name) == 0) return i;
    return -1;
}

ts_status ts_model_weights_init(ts_model_weights *w, uint64_t seed, char *err, size_t err_size) {
    for (int i = 0; i < w->n; i++) {
        ts_status s = ts_model_init_tensor(&w->cfg, seed, &w->info[i], st_dtype(mem_dtype(w, i)), w->data[i], err,
                                           err_size);
        if (s != TS_OK) return s;
    }
    return TS_OK;
}

/* ---------------------------------------------------------------- narrow matmul weights */

/* Tensor i (a routed expert's: its whole stacked block) in a new array of dt: its values
 * converted, or (!convert) left zero for the loader to fill. */
static ts_status narrow_tensor(ts_model_weights *w, int i, ts_dtype dt, bool convert) {
    int64_t E = w->stack_base[i] == i ? w->cfg.n_routed_experts : 1, numel = ts_model_tensor_numel(&w->info[i]);
    char *v = calloc(1, ts_dtype_bytes(dt, E * numel > 0 ? E * numel : 1));
    if (!v) return TS_ERR_OOM;
    ts_status s = convert ? ts_convert(v, dt, w->data[i], w->dt, E * numel) : TS_OK;
    if (s != TS_OK) {
        free(v);
        return s;
    }
    free(w->data[i]);
    for (int64_t e = 0; e < E; e++) { /* expert e's tensor of this kind: walk index i + 3e */
        w->data[i + 3 * e] = v + ts_dtype_bytes(dt, e * numel);
        w->mem[i + 3 * e] = dt;
    }
    return TS_OK;
}

static ts_status narrow_matmuls(ts_model_weights *w, ts_dtype dt, bool convert, char *err, size_t err_size) {
    if (!w) return TS_ERR_INVALID_ARG;
    if (dt == TS_F32) return TS_OK;
    if (dt != TS_BF16 || w->dt != TS_F32) {
        ts_error_printf(err, err_size, "model weights: matmul weights in %s: only bf16, from f32 weights (these are %s)",
                        ts_dtype_name(dt), ts_dtype_name(w->dt));
        return TS_ERR_UNSUPPORTED;
    }
    bool *cast = calloc((size_t)w->n, sizeof *cast);
    if (!cast) return TS_ERR_OOM;
    ts_status s = ts_model_autocast_weights(w, dt, cast, err, err_size);
    for (int i = 0; s == TS_OK && i < w->n; i++)
        if (cast[i] && mem_dtype(w, i) != dt && (w->stack_base[i] < 0 || w->stack_base[i] == i))
            s = narrow_tensor(w, i, dt, convert); /* an expert block's other tensors come with its first */
    free(cast);
    if (s == TS_ERR_OOM) ts_error_printf(err, err_size, "model weights: out of memory narrowing to %s", ts_dtype_name(dt));
    return s;
}

ts_status ts_model_weights_narrow_matmuls(ts_model_weights *w, ts_dtype dt, char *err, size_t err_size) {
    return narrow_matmuls(w, dt, true, err, err_size);
}

bool ts_model_matmul_dtype_from_name(const char *name, ts_dtype *out) {
    ts_dtype dt;
    if (ts_dtype_from_name(name, &dt) != TS_OK || (dt != TS_F32 && dt != TS_BF16)) return false;
    *out = dt;
    return true;
}

static ts_status load_weights(const char *dir, ts_dtype dt, ts_dtype matmul_dtype, ts_model_weights **out, char *err,
                              size_t err_size);

ts_status ts_model_load_for_inference(const char *dir, ts_dtype matmul_dtype, ts_model_weights **out, char *err,
                                      size_t err_size) {
    return load_weights(dir, TS_F32, matmul_dtype, out, err, err_size);
}

/* ---------------------------------------------------------------- loading */

int ts_model_name_candidates(const char *name, char out[][TS_MODEL_NAME_CANDIDATE_MAX]) {
    int n = 0;
    snprintf(out[n++], sizeof out[0], "%s", name);
    snprintf(out[n++], sizeof out[0], "model.%s", name);
    if (strcmp(name, "embed.weight") == 0) snprintf(out[n++], sizeof out[0], "model.embed_tokens.weight");
    if (strcmp(name, "head.weight") == 0) snprintf(out[n++], sizeof out[0], "lm_head.weight");
    if (strncmp(name, "hc_head_", 8) == 0) snprintf(out[n++], sizeof out[0], "model.hc_head.hc_%s", name + 8);
    const char *kv = strstr(name, "attn.kv_norm.weight");
    if (kv && strcmp(kv, "attn.kv_norm.weight") == 0) {
        int len = (int)(kv - name);
        snprintf(out[n++], sizeof out[0], "%.*sattn.norm.weight", len, name);
        snprintf(out[n++], sizeof out[0], "model.%.*sattn.norm.weight", len, name);
    }
    return n;
}

static ts_status load_tensor(ts_model_weights *w, int i, ts_checkpoint *ck, const char *path, char *err,
                             size_t err_size) {
    const ts_model_tensor *t = &w->info[i];
    char names[TS_MODEL_NAME_CANDIDATES][TS_MODEL_NAME_CANDIDATE_MAX];
    int n = ts_model_name_candidates(t->name, names), k = 0;
    while (k < n && !ts_checkpoint_has(ck, names[k])) k++;
    if (k == n) {
        ts_error_printf(err, err_size, "checkpoint %s has no tensor '%s' (also looked for '%s')", path, t->name, names[1]);
        return TS_ERR_FORMAT;
    }
    ts_dtype md = mem_dtype(w, i);
    int64_t numel = ts_model_tensor_numel(t);
    /* The loader converts to f32 at most; f64 weights are widened afterwards (exact). */
    ts_dtype target = md == TS_F64 ? TS_F32 : md;
    void *buf = md == TS_F64 ? malloc((size_t)(numel > 0 ? numel : 1) * sizeof(float)) : w->data[i];
    if (!buf) return TS_ERR_OOM;
    ts_io_error ioe;
    ts_status s = ts_checkpoint_load(ck, names[k], t->ndim, t->shape, target, buf,
                                     ts_dtype_bytes(target, numel), &ioe);
    if (s != TS_OK) ts_error_printf(err, err_size, "loading '%s': %s", names[k], ioe.message);
    if (s == TS_OK && md == TS_F64)
        for (int64_t j = 0; j < numel; j++) ((double *)w->data[i])[j] = ((float *)buf)[j];
    if (md == TS_F64) free(buf);
    return s;
}

/* The checkpoint in dir as weights of dt, the matmul weights in matmul_dtype (== dt: as the
 * others); those are narrowed before loading, so they are read straight into it. */
static ts_status load_weights(const char *dir, ts_dtype dt, ts_dtype matmul_dtype, ts_model_weights **out, char *err,
                              size_t err_size) {
    if (!dir || !out) return TS_ERR_INVALID_ARG;
    *out = NULL;
    ts_v4_config cfg;
    ts_status s = ts_v4_config_load(dir, &cfg, err, err_size);
    if (s != TS_OK) return s;
    ts_model_weights *w = NULL;
    s = ts_model_weights_new(&cfg, dt, &w, err, err_size);
    if (s != TS_OK) return s;
    if (matmul_dtype != dt && (s = narrow_matmuls(w, matmul_dtype, false, err, err_size)) != TS_OK) {
        ts_model_weights_free(w);
        return s;
    }
    ts_checkpoint *ck = NULL;
    ts_io_error ioe;
    s = ts_checkpoint_open(dir, &ck, &ioe);
    if (s != TS_OK) ts_error_printf(err, err_size, "%s", ioe.message);
    for (int i = 0; s == TS_OK && i < w->n; i++) s = load_tensor(w, i, ck, dir, err, err_size);
    ts_checkpoint_close(ck);
    if (s != TS_OK) {
        ts_model_weights_free(w);
        return s;
    }
    *out = w;
    return TS_OK;
}

ts_status ts_model_load(const char *dir, ts_dtype dt, ts_model_weights **out, char *err, size_t err_size) {
    return load_weights(dir, dt, dt, out, err, err_size);
}

/* ---------------------------------------------------------------- saving */

static ts_status save_source(void *user, const ts_model_tensor *t, ts_st_dtype st, void *data, char *err,
                             size_t err_size) {
    const ts_model_weights *w = user;
    int i = ts_model_weights_find(w, t->name);
    if (i < 0) {
        ts_error_printf(err, err_size, "saving: the model has no tensor '%s'", t->name);
        return TS_ERR_INTERNAL;
    }
    int64_t numel = ts_model_tensor_numel(t);
    for (int64_t j = 0; j < numel; j++) {
        double v = ts_load_f64(w->data[i], mem_dtype(w, i), j);
        switch (st) {
        case TS_ST_F64: ((double *)data)[j] = v; break;
        case TS_ST_F32: ((float *)data)[j] = (float)v; break;
        case TS_ST_BF16: ((uint16_t *)data)[j] = ts_f32_to_bf16((float)v); break;
        case TS_ST_I64: ((int64_t *)data)[j] = (int64_t)v; break;
        case TS_ST_I32: ((int32_t *)data)[j] = (int32_t)v; break;
        default:
            ts_error_printf(err, err_size, "saving '%s': unsupported storage dtype", t->name);
            return TS_ERR_UNSUPPORTED;
        }
    }
    return TS_OK;
}

ts_status ts_model_save(const ts_model_weights *w, const char *dir, ts_dtype storage, bool force, char *err,
                        size_t err_size) {
    if (!w) return TS_ERR_INVALID_ARG;
    return ts_model_write_checkpoint(&w->cfg, storage, dir, force, 0, save_source, (void *)w, err, err_size);
}

/* ---------------------------------------------------------------- as a tensor list */

ts_status ts_model_weights_st_list(const ts_model_weights *w, ts_model_st_list *out) {
    memset(out, 0, sizeof *out);
    out->tensors = calloc((size_t)w->n, sizeof *out->tensors);
    out->owned = calloc((size_t)w->n, sizeof *out->owned);
    if (!out->tensors || !out->owned) {
        ts_model_st_list_free(out);
        return TS_ERR_OOM;
    }
    for (int i = 0; i < w->n; i++) {
        const ts_model_tensor *t = &w->info[i];
        int64_t numel = ts_model_tensor_numel(t);
        ts_st_write_tensor *st = &out->tensors[out->n++];
        st->name = t->name;
        st->ndim = t->ndim;
        st->shape = t->shape;
        if (mem_dtype(w, i) == TS_I32) { /* hash tables are I64 in checkpoints (spec §1.4) */
            int64_t *v = malloc((size_t)numel * sizeof *v);
            if (!v) {
                ts_model_st_list_free(out);
                return TS_ERR_OOM;
            }
            for (int64_t j = 0; j < numel; j++) v[j] = ((const int32_t *)w->data[i])[j];
            out->owned[i] = v;
            st->dtype = TS_ST_I64;
            st->data = v;
            st->nbytes = (size_t)numel * sizeof *v;
        } else {
            st->dtype = st_dtype(mem_dtype(w, i));
            st->data = w->data[i];
            st->nbytes = ts_dtype_bytes(mem_dtype(w, i), numel);
        }
    }
    out->n_owned = (size_t)w->n;
    return TS_OK;
}

void ts_model_st_list_free(ts_model_st_list *l) {
    for (size_t i = 0; l->owned && i < l->n_owned; i++) free(l->owned[i]);
    free(l->owned);
    free(l->tensors);
    memset(l, 0, sizeof *l);
}
