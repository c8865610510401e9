/* weights.c - a model's tensors in host memory: allocation in the walk order of
 * ts_model_walk_tensors, the init scheme, loading a Hugging Face / official checkpoint (exact
 * conversion of FP8 and MXFP4 storage on load, three naming schemes) and saving one. The graph
 * builder (model_graph.c) binds its parameter leaves to these arrays and the optimizers update
 * them in place, so they are the one copy of the model.
 *
 * Routed experts are stored stacked: for each layer and each of w1 / w2 / w3 the E expert
 * matrices are one contiguous [E, rows, cols] block, expert e's tensor pointing into it. The
 * dense MoE reference builder multiplies all experts in one batched matmul over that block. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "model/model_internal.h"

struct ts_model_weights {
    ts_v4_config cfg;
    ts_dtype dt;
    int n, cap;
    ts_model_tensor *info;
    void *arena;     /* every tensor's storage, one block (see arena_alloc) */
    void **data;
    int *stack_base; /* routed experts: index of expert 0's tensor of the same kind; else -1 */
};

/* In-memory dtype of tensor i: the compute dtype, or i32 for the hash-routing tables. */
static ts_dtype mem_dtype(const ts_model_weights *w, int i) {
    return w->info[i].dtype == TS_I64 ? TS_I32 : w->dt;
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

/* Tensors start at this alignment inside the arena (cache lines, and whole AVX-512 vectors). */
#define TENSOR_ALIGN ((size_t)64)
/* The arena's alignment and size granule: a transparent huge page on x86-64 and aarch64 (4 KiB
 * base pages). */
#define ARENA_ALIGN ((size_t)2 << 20)

/* A zeroed block for all the tensors, in transparent huge pages where the system grants them
 * on request (its setting "madvise"): a decode step streams every weight, and with 4 KiB pages
 * a 16-slot step of the tiny model (27 MB of weights read per step) spent about 8% more time
 * (TLB misses, nested page walks on a VM). A refused hint leaves ordinary pages. */
static void *arena_alloc(size_t bytes) {
    size_t size = (bytes + ARENA_ALIGN - 1) / ARENA_ALIGN * ARENA_ALIGN;
    void *p = aligned_alloc(ARENA_ALIGN, size ? size : ARENA_ALIGN);
    if (!p) return NULL;
#ifdef MADV_HUGEPAGE
    madvise(p, size, MADV_HUGEPAGE);
#endif
    memset(p, 0, size);
    return p;
}

/* Bytes of tensor i's own storage: expert 0 holds all E experts' blocks, experts > 0 none. */
static size_t own_bytes(const ts_model_weights *w, int i) {
    const ts_model_tensor *t = &w->info[i];
    if (t->expert > 0) return 0;
    size_t bytes = ts_dtype_bytes(mem_dtype(w, i), ts_model_tensor_numel(t));
    return t->expert == 0 ? bytes * (size_t)w->cfg.n_routed_experts : bytes;
}

/* Allocates every tensor zeroed, all in one arena; expert blocks at expert 0 (walk order: e0.w1,
 * e0.w2, e0.w3, e1.w1...). */
static ts_status allocate(ts_model_weights *w) {
    w->data = calloc((size_t)w->n, sizeof *w->data);
    w->stack_base = malloc((size_t)w->n * sizeof *w->stack_base);
    if (!w->data || !w->stack_base) return TS_ERR_OOM;
    size_t total = 0;
    for (int i = 0; i < w->n; i++) total += (own_bytes(w, i) + TENSOR_ALIGN - 1) / TENSOR_ALIGN * TENSOR_ALIGN;
    if (!(w->arena = arena_alloc(total))) return TS_ERR_OOM;
    char *next = w->arena;
    for (int i = 0; i < w->n; i++) {
        const ts_model_tensor *t = &w->info[i];
        w->stack_base[i] = -1;
        if (t->expert > 0) {
            int base = i - 3 * t->expert;
            if (base < 0 || w->info[base].expert != 0 || w->info[base].layer != t->layer) return TS_ERR_INTERNAL;
            w->stack_base[i] = base;
            w->data[i] = (char *)w->data[base] +
                         (size_t)t->expert * ts_dtype_bytes(mem_dtype(w, i), ts_model_tensor_numel(t));
            continue;
        }
        if (t->expert == 0) w->stack_base[i] = i;
        w->data[i] = next;
        next += (own_bytes(w, i) + TENSOR_ALIGN - 1) / TENSOR_ALIGN * TENSOR_ALIGN;
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
    free(w->arena);
    free(w->data);
    free(w->stack_base);
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
        ts_st_dtype st = mem_dtype(w, i) == TS_I32 ? TS_ST_I32 : w->dt == TS_F64 ? TS_ST_F64 : TS_ST_F32;
        ts_status s = ts_model_init_tensor(&w->cfg, seed, &w->info[i], st, w->data[i], err, err_size);
        if (s != TS_OK) return s;
    }
    return TS_OK;
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

ts_status ts_model_load(const char *dir, ts_dtype dt, ts_model_weights **out, char *err, size_t err_size) {
    if (!dir || !out) return TS_ERR_INVALID_ARG;
    *out = NULL;
    ts_v4_config cfg;
    ts_status s = ts_v4_config_load(dir, &cfg, err, err_size);
    if (s != TS_OK) return s;
    ts_model_weights *w = NULL;
    s = ts_model_weights_new(&cfg, dt, &w, err, err_size);
    if (s != TS_OK) return s;
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
    const void *src = w->data[i];
    for (int64_t j = 0; j < numel; j++) {
        double v = mem_dtype(w, i) == TS_I32 ? ((const int32_t *)src)[j]
                   : w->dt == TS_F64         ? ((const double *)src)[j]
                                             : ((const float *)src)[j];
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
            st->dtype = w->dt == TS_F64 ? TS_ST_F64 : TS_ST_F32;
            st->data = w->data[i];
            st->nbytes = ts_dtype_bytes(w->dt, numel);
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
