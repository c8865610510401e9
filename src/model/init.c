/* init.c - a freshly initialised checkpoint: `tessera init` and tests write one through
 * ts_model_init_write (declared at the end of model.h). The tensor list is
 * ts_model_walk_tensors (accounting.c), so names, shapes and the set of tensors are exactly
 * those the loader expects (spec §1.4, Hugging Face layout, no "model." prefix); this file only
 * decides the values. Output: DIR/model.safetensors, or model-0000k-of-0000N.safetensors +
 * model.safetensors.index.json when the data exceeds the shard size, then DIR/config.json.
 * Every file is written atomically (io.h).
 *
 * Init scheme (spec §7.2 [proposal] and §2.3.5 [proposal]; σ = standard deviation):
 *   - every matrix (embed, head, attention, compressor, indexer, router gate, experts, shared
 *     experts, MTP e/h_proj, dense wq/wk/wv/w1/w3): N(0, 0.02²);
 *   - residual output projections - V4 attn.wo_b and every ffn w2 (routed and shared experts),
 *     dense attn.wo and ffn.w2: N(0, 0.02² / (2 L)), L = num_hidden_layers (spec §7.2);
 *   - every RMSNorm weight (*norm.weight): 1;
 *   - mHC (n = hc_mult): hc_*_fn ~ N(0, 0.02²); hc_{attn,ffn}_base = [b_a (n) = logit(1/n)
 *     (= -ln 3 for n = 4) | b_p (n) = 0 | b_m (n²) = 0]; hc_head_base = logit(1/n);
 *     every hc_*_scale = 0.01 (so mHC starts as a plain pre-norm residual, spec §2.3.5);
 *   - attn.attn_sink 0, *compressor.ape 0, ffn.gate.bias 0;
 *   - ffn.gate.tid2eid [vocab, K] (int64): row v holds K DISTINCT experts in [0, E):
 *       x = tseed + v * 0xD1B54A32D192ED03 (mod 2^64)
 *       repeat: e = splitmix64(&x) mod E, skipped if already in the row, until K are chosen
 *     where splitmix64 is the standard step (x += 0x9E3779B97F4A7C15, then the xor-shift /
 *     multiply finaliser, as in core/rng.c) and tseed is the tensor seed below.
 * Randomness: each tensor has its own stream, independent of order and sharding:
 *   tseed = mix64(seed ^ fnv1a64(name)), mix64 = splitmix64's finaliser,
 *   values = ts_rng_normal of a ts_rng seeded with tseed, row-major, scaled by σ.
 * Storage: f32, or bf16 (the same f32 values rounded to nearest even). The written config is
 * the input config with torch_dtype = expert_dtype = the storage dtype and quantization off
 * (an init checkpoint holds no FP8/FP4 weights), so the walker's dtypes match the file.
 * Tokenizer files are not written (the tiny/small presets use spec §7.1's byte-level
 * vocabulary; the CLI prints a note). */
#include "tessera/model.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tessera/io.h"
#include "model/model_internal.h"

#define INIT_STD 0.02
#define DEFAULT_SHARD_BYTES ((uint64_t)4 << 30) /* 4 GiB: tiny and small fit in one file */

static uint64_t mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static uint64_t splitmix64(uint64_t *x) { return mix64(*x += 0x9E3779B97F4A7C15ull); }

static uint64_t fnv1a64(const char *s) {
    uint64_t h = 0xCBF29CE484222325ull;
    for (; *s; s++) h = (h ^ (uint8_t)*s) * 0x100000001B3ull;
    return h;
}

static bool ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcmp(s + n - m, suffix) == 0;
}

/* ---------------------------------------------------------------- the tensor list */

typedef struct {
    ts_model_tensor t;
    ts_st_dtype st;
    size_t nbytes;
    int shard; /* 0-based */
} entry;

typedef struct {
    entry *v;
    size_t n, cap;
    ts_dtype storage;
} entry_list;

static ts_status collect(const ts_model_tensor *t, void *user) {
    entry_list *l = user;
    if (l->n == l->cap) {
        size_t cap = l->cap ? 2 * l->cap : 256;
        entry *v = realloc(l->v, cap * sizeof *v);
        if (!v) return TS_ERR_OOM;
        l->v = v;
        l->cap = cap;
    }
    entry *e = &l->v[l->n++];
    memset(e, 0, sizeof *e);
    e->t = *t;
    ts_dtype dt = t->dtype == TS_I64 ? TS_I64 : t->dtype == TS_F32 ? TS_F32 : l->storage;
    if (!ts_st_dtype_from_dtype(dt, &e->st)) return TS_ERR_INTERNAL;
    e->nbytes = ts_dtype_bytes(dt, ts_model_tensor_numel(t));
    return TS_OK;
}

/* ---------------------------------------------------------------- values */

typedef struct {
    const ts_v4_config *cfg;
    uint64_t seed;
} init_job;

typedef enum { INIT_NORMAL, INIT_CONST, INIT_HC_BASE, INIT_TID2EID } init_kind;

typedef struct {
    init_kind kind;
    double value; /* σ for INIT_NORMAL, the constant for INIT_CONST */
} init_rule;

/* The rule for one tensor (see the header comment); false when no rule applies. */
static bool rule_for(const ts_v4_config *c, const ts_model_tensor *t, init_rule *r) {
    const char *n = t->name;
    double out_std = INIT_STD / sqrt(2.0 * (double)(c->num_hidden_layers > 0 ? c->num_hidden_layers : 1));
    if (ends_with(n, "norm.weight")) *r = (init_rule){INIT_CONST, 1.0};
    else if (ends_with(n, "attn_sink") || ends_with(n, "compressor.ape") || ends_with(n, "gate.bias"))
        *r = (init_rule){INIT_CONST, 0.0};
    else if (strncmp(n, "hc_", 3) == 0 || strstr(n, ".hc_")) {
        if (ends_with(n, "_fn")) *r = (init_rule){INIT_NORMAL, INIT_STD};
        else if (ends_with(n, "_scale")) *r = (init_rule){INIT_CONST, 0.01};
        else if (ends_with(n, "_base")) *r = (init_rule){INIT_HC_BASE, 0.0};
        else return false;
    } else if (ends_with(n, "gate.tid2eid")) *r = (init_rule){INIT_TID2EID, 0.0};
    else if (ends_with(n, "attn.wo_b.weight") || ends_with(n, "w2.weight") ||
             (c->kind == TS_MODEL_DENSE && ends_with(n, "attn.wo.weight")))
        *r = (init_rule){INIT_NORMAL, out_std};
    else if (t->ndim == 2 && ends_with(n, ".weight")) *r = (init_rule){INIT_NORMAL, INIT_STD};
    else return false;
    return true;
}

/* Values are computed in f32 and then stored, so every storage dtype holds the same numbers. */
static void store(void *data, ts_st_dtype st, int64_t i, double v) {
    float f = (float)v;
    if (st == TS_ST_F32) ((float *)data)[i] = f;
    else if (st == TS_ST_F64) ((double *)data)[i] = f;
    else ((uint16_t *)data)[i] = ts_f32_to_bf16(f);
}

static int64_t table_at(const void *data, ts_st_dtype st, int64_t i) {
    return st == TS_ST_I64 ? ((const int64_t *)data)[i] : ((const int32_t *)data)[i];
}

ts_status ts_model_init_tensor(const ts_v4_config *c, uint64_t seed, const ts_model_tensor *t, ts_st_dtype st,
                               void *data, char *err, size_t err_size) {
    init_rule r;
    if (!rule_for(c, t, &r)) {
        ts_error_printf(err, err_size, "no init rule for tensor '%s'", t->name);
        return TS_ERR_INTERNAL;
    }
    int64_t numel = ts_model_tensor_numel(t);
    uint64_t tseed = mix64(seed ^ fnv1a64(t->name));
    switch (r.kind) {
    case INIT_NORMAL: {
        ts_rng rng;
        ts_rng_seed(&rng, tseed);
        for (int64_t i = 0; i < numel; i++) store(data, st, i, (float)(r.value * ts_rng_normal(&rng)));
        break;
    }
    case INIT_CONST:
        for (int64_t i = 0; i < numel; i++) store(data, st, i, r.value);
        break;
    case INIT_HC_BASE: {
        int64_t n = c->hc_mult;
        double logit = -log((double)(n - 1)); /* logit(1/n) */
        for (int64_t i = 0; i < numel; i++) store(data, st, i, i < n ? logit : 0.0);
        break;
    }
    case INIT_TID2EID: {
        int64_t rows = t->shape[0], k = t->shape[1];
        uint64_t E = (uint64_t)c->n_routed_experts;
        if (t->ndim != 2 || (st != TS_ST_I64 && st != TS_ST_I32) || k > (int64_t)E) {
            ts_error_printf(err, err_size, "tensor '%s': cannot choose %lld distinct experts of %llu", t->name,
                    (long long)k, (unsigned long long)E);
            return TS_ERR_INTERNAL;
        }
        for (int64_t v = 0; v < rows; v++) {
            uint64_t x = tseed + (uint64_t)v * 0xD1B54A32D192ED03ull;
            for (int64_t j = 0; j < k;) {
                int64_t ex = (int64_t)(splitmix64(&x) % E);
                bool dup = false;
                for (int64_t q = 0; q < j; q++) dup = dup || table_at(data, st, v * k + q) == ex;
                if (dup) continue;
                if (st == TS_ST_I64) ((int64_t *)data)[v * k + j] = ex;
                else ((int32_t *)data)[v * k + j] = (int32_t)ex;
                j++;
            }
        }
        break;
    }
    }
    return TS_OK;
}

static ts_status init_source(void *user, const ts_model_tensor *t, ts_st_dtype st, void *data, char *err,
                             size_t err_size) {
    const init_job *job = user;
    return ts_model_init_tensor(job->cfg, job->seed, t, st, data, err, err_size);
}

/* ---------------------------------------------------------------- the directory */

/* Creates dir (and missing parents); refuses a non-empty one unless force. */
static ts_status prepare_dir(const char *dir, bool force, char *err, size_t err_size) {
    struct stat sb;
    if (stat(dir, &sb) == 0) {
        if (!S_ISDIR(sb.st_mode)) {
            ts_error_printf(err, err_size, "%s exists and is not a directory", dir);
            return TS_ERR_IO;
        }
        DIR *d = opendir(dir);
        if (!d) {
            ts_error_printf(err, err_size, "cannot read directory %s: %s", dir, strerror(errno));
            return TS_ERR_IO;
        }
        bool empty = true;
        struct dirent *de;
        while ((de = readdir(d)) != NULL)
            if (strcmp(de->d_name, ".") != 0 && strcmp(de->d_name, "..") != 0) empty = false;
        closedir(d);
        if (!empty && !force) {
            ts_error_printf(err, err_size, "%s exists and is not empty (use --force to write into it)", dir);
            return TS_ERR_STATE;
        }
    } else {
        char path[4096];
        if (snprintf(path, sizeof path, "%s", dir) >= (int)sizeof path) {
            ts_error_printf(err, err_size, "directory path too long");
            return TS_ERR_INVALID_ARG;
        }
        for (char *p = path + 1; *p; p++) { /* mkdir -p */
            if (*p != '/') continue;
            *p = '\0';
            if (mkdir(path, 0777) != 0 && errno != EEXIST) {
                ts_error_printf(err, err_size, "cannot create directory %s: %s", path, strerror(errno));
                return TS_ERR_IO;
            }
            *p = '/';
        }
        if (mkdir(path, 0777) != 0 && errno != EEXIST) {
            ts_error_printf(err, err_size, "cannot create directory %s: %s", dir, strerror(errno));
            return TS_ERR_IO;
        }
    }
    if (access(dir, W_OK | X_OK) != 0) {
        ts_error_printf(err, err_size, "cannot write to directory %s: %s", dir, strerror(errno));
        return TS_ERR_IO;
    }
    return TS_OK;
}

static ts_status join(char *buf, size_t size, const char *dir, const char *file, char *err, size_t err_size) {
    if (snprintf(buf, size, "%s/%s", dir, file) >= (int)size) {
        ts_error_printf(err, err_size, "path too long: %s/%s", dir, file);
        return TS_ERR_INVALID_ARG;
    }
    return TS_OK;
}

/* ---------------------------------------------------------------- writing */

static const ts_st_metadata METADATA[] = {{"format", "pt"}};

/* Writes the entries of one shard (or all of them, shard < 0) to path. */
static ts_status write_file(const entry_list *l, int shard, const char *path, ts_model_tensor_source source,
                            void *user, char *err, size_t err_size) {
    size_t n = 0;
    for (size_t i = 0; i < l->n; i++) n += shard < 0 || l->v[i].shard == shard;
    ts_st_write_tensor *wt = calloc(n ? n : 1, sizeof *wt);
    void **bufs = calloc(n ? n : 1, sizeof *bufs);
    ts_status s = wt && bufs ? TS_OK : TS_ERR_OOM;
    if (s != TS_OK) ts_error_printf(err, err_size, "out of memory");
    size_t k = 0;
    for (size_t i = 0; i < l->n && s == TS_OK; i++) {
        const entry *e = &l->v[i];
        if (shard >= 0 && e->shard != shard) continue;
        bufs[k] = malloc(e->nbytes ? e->nbytes : 1);
        if (!bufs[k]) {
            ts_error_printf(err, err_size, "out of memory for tensor '%s' (%zu bytes)", e->t.name, e->nbytes);
            s = TS_ERR_OOM;
            break;
        }
        s = source(user, &e->t, e->st, bufs[k], err, err_size);
        if (s != TS_OK) break;
        wt[k] = (ts_st_write_tensor){e->t.name, e->st, e->t.ndim, e->t.shape, bufs[k], e->nbytes};
        k++;
    }
    if (s == TS_OK) {
        ts_io_error ioe;
        s = ts_st_write(path, wt, n, METADATA, 1, &ioe);
        if (s != TS_OK) ts_error_printf(err, err_size, "%s", ioe.message);
    }
    for (size_t i = 0; bufs && i < n; i++) free(bufs[i]);
    free(bufs);
    free(wt);
    return s;
}

/* HF index: {"metadata": {"total_size": N}, "weight_map": {name: shard file}}, written last. */
static ts_status write_index(const entry_list *l, int n_shards, uint64_t total, const char *path, char *err,
                             size_t err_size) {
    json_t *root = json_object(), *meta = json_object(), *map = json_object();
    bool ok = root && meta && map;
    for (size_t i = 0; ok && i < l->n; i++) {
        char file[64];
        snprintf(file, sizeof file, "model-%05d-of-%05d.safetensors", l->v[i].shard + 1, n_shards);
        ok = json_object_set_new(map, l->v[i].t.name, json_string(file)) == 0;
    }
    ok = ok && json_object_set_new(meta, "total_size", json_integer((json_int_t)total)) == 0;
    ok = ok && json_object_set(root, "metadata", meta) == 0 && json_object_set(root, "weight_map", map) == 0;
    char *text = ok ? json_dumps(root, JSON_INDENT(2) | JSON_SORT_KEYS) : NULL;
    json_decref(meta);
    json_decref(map);
    json_decref(root);
    if (!text) {
        ts_error_printf(err, err_size, "out of memory building %s", path);
        return TS_ERR_OOM;
    }
    ts_io_error ioe;
    ts_status s = ts_atomic_write_file(path, text, strlen(text), &ioe);
    free(text);
    if (s != TS_OK) ts_error_printf(err, err_size, "%s", ioe.message);
    return s;
}

static ts_status write_config(const ts_v4_config *c, const char *path, char *err, size_t err_size) {
    char *json = NULL;
    ts_status s = ts_v4_config_to_json(c, &json, err, err_size);
    if (s != TS_OK) return s;
    size_t n = strlen(json);
    char *text = malloc(n + 2);
    if (!text) {
        free(json);
        ts_error_printf(err, err_size, "out of memory");
        return TS_ERR_OOM;
    }
    memcpy(text, json, n);
    text[n] = '\n';
    text[n + 1] = '\0';
    free(json);
    ts_io_error ioe;
    s = ts_atomic_write_file(path, text, n + 1, &ioe);
    free(text);
    if (s != TS_OK) ts_error_printf(err, err_size, "%s", ioe.message);
    return s;
}

ts_status ts_model_init_config(const ts_v4_config *cfg, ts_dtype storage, ts_v4_config *out, char *err,
                               size_t err_size) {
    if (!cfg || !out) return TS_ERR_INVALID_ARG;
    if (storage != TS_F32 && storage != TS_BF16) {
        ts_error_printf(err, err_size, "init storage dtype must be f32 or bf16 (got %s)", ts_dtype_name(storage));
        return TS_ERR_UNSUPPORTED;
    }
    *out = *cfg;
    out->torch_dtype = storage;
    out->expert_dtype = storage;
    out->quantization.fp8 = false;
    return ts_v4_config_validate(out, err, err_size);
}

ts_status ts_model_write_checkpoint(const ts_v4_config *cfg, ts_dtype storage, const char *dir, bool force,
                                    uint64_t max_shard_bytes, ts_model_tensor_source source, void *user, char *err,
                                    size_t err_size) {
    if (!cfg || !dir || !*dir) {
        ts_error_printf(err, err_size, "writing a checkpoint: NULL config or empty directory");
        return TS_ERR_INVALID_ARG;
    }
    if (max_shard_bytes == 0) max_shard_bytes = DEFAULT_SHARD_BYTES;
    ts_v4_config c;
    ts_status s = ts_model_init_config(cfg, storage, &c, err, err_size);
    if (s != TS_OK) return s;
    entry_list l = {NULL, 0, 0, storage};
    s = ts_model_walk_tensors(&c, collect, &l);
    if (s != TS_OK) ts_error_printf(err, err_size, "listing the model's tensors failed: %s", ts_status_name(s));
    if (s == TS_OK) s = prepare_dir(dir, force, err, err_size);

    /* Shards: greedy in walk order; a tensor larger than a shard gets one of its own. */
    uint64_t total = 0, in_shard = 0;
    int n_shards = l.n ? 1 : 0;
    for (size_t i = 0; s == TS_OK && i < l.n; i++) {
        if (in_shard > 0 && in_shard + l.v[i].nbytes > max_shard_bytes) {
            n_shards++;
            in_shard = 0;
        }
        l.v[i].shard = n_shards - 1;
        in_shard += l.v[i].nbytes;
        total += l.v[i].nbytes;
    }

    char single[4096], index[4096], path[4096];
    if (s == TS_OK) s = join(single, sizeof single, dir, "model.safetensors", err, err_size);
    if (s == TS_OK) s = join(index, sizeof index, dir, "model.safetensors.index.json", err, err_size);
    if (s == TS_OK && n_shards <= 1) {
        /* A stale index (from --force over a sharded checkpoint) would shadow the new file. */
        if (unlink(index) != 0 && errno != ENOENT) {
            ts_error_printf(err, err_size, "cannot remove stale %s: %s", index, strerror(errno));
            s = TS_ERR_IO;
        }
        if (s == TS_OK) s = write_file(&l, -1, single, source, user, err, err_size);
    } else if (s == TS_OK) {
        if (unlink(index) != 0 && errno != ENOENT) { /* the old commit point goes first */
            ts_error_printf(err, err_size, "cannot remove stale %s: %s", index, strerror(errno));
            s = TS_ERR_IO;
        }
        for (int k = 0; s == TS_OK && k < n_shards; k++) {
            char file[64];
            snprintf(file, sizeof file, "model-%05d-of-%05d.safetensors", k + 1, n_shards);
            s = join(path, sizeof path, dir, file, err, err_size);
            if (s == TS_OK) s = write_file(&l, k, path, source, user, err, err_size);
        }
        if (s == TS_OK) s = write_index(&l, n_shards, total, index, err, err_size);
        if (s == TS_OK && unlink(single) != 0 && errno != ENOENT) {
            ts_error_printf(err, err_size, "cannot remove stale %s: %s", single, strerror(errno));
            s = TS_ERR_IO;
        }
    }
    if (s == TS_OK) s = join(path, sizeof path, dir, "config.json", err, err_size);
    if (s == TS_OK) s = write_config(&c, path, err, err_size);
    free(l.v);
    return s;
}

ts_status ts_model_init_write_sharded(const ts_v4_config *cfg, uint64_t seed, ts_dtype storage, const char *dir,
                                      bool force, uint64_t max_shard_bytes, char *err, size_t err_size) {
    init_job job = {cfg, seed};
    return ts_model_write_checkpoint(cfg, storage, dir, force, max_shard_bytes, init_source, &job, err, err_size);
}

ts_status ts_model_init_write(const ts_v4_config *cfg, uint64_t seed, ts_dtype storage, const char *dir, bool force,
                              char *err, size_t err_size) {
    return ts_model_init_write_sharded(cfg, seed, storage, dir, force, 0, err, err_size);
}
