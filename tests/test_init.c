/* test_init.c - ts_model_init_write (src/model/init.c) and `tessera init`: a tiny checkpoint is
 * written into a temp dir and reopened with ts_checkpoint_open; every tensor of
 * ts_model_walk_tensors must be there with its shape and dtype, config.json must round-trip to
 * the preset, the files must be a pure function of the seed, the values must follow the
 * documented scheme (std of matrices, norms 1, mHC biases, distinct tid2eid rows), non-empty
 * and unusable directories must be refused, dense-tiny, bf16 and sharded output must work, and
 * the CLI (the tessera binary beside this test, as in test_cli.c) must behave likewise. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check.h"
#include "files.h"
#include "tessera/io.h"
#include "tessera/model.h"

static char base[256];

static void path_of(char *buf, size_t size, const char *sub, const char *file) {
    snprintf(buf, size, "%s/%s%s%s", base, sub, file ? "/" : "", file ? file : "");
}

/* 1 identical, 0 different, -1 unreadable. */
static int same_file(const char *a, const char *b) {
    size_t na, nb;
    char *x = test_read_file(a, &na), *y = test_read_file(b, &nb);
    int r = (!x || !y) ? -1 : (na == nb && memcmp(x, y, na) == 0);
    free(x);
    free(y);
    return r;
}

static ts_status write_model(const char *preset, uint64_t seed, ts_dtype dt, const char *sub, bool force) {
    ts_v4_config cfg;
    if (ts_v4_preset(preset, &cfg) != TS_OK) return TS_ERR_INVALID_ARG;
    char dir[512], err[512] = "";
    path_of(dir, sizeof dir, sub, NULL);
    ts_status s = ts_model_init_write(&cfg, seed, dt, dir, force, err, sizeof err);
    if (s != TS_OK && s != TS_ERR_STATE) fprintf(stderr, "init %s -> %s: %s\n", dir, ts_status_name(s), err);
    return s;
}

/* ---------------------------------------------------------------- inventory */

typedef struct {
    ts_checkpoint *ck;
    int64_t n_tensors, n_params, bad;
} inventory;

static ts_status check_tensor(const ts_model_tensor *t, void *user) {
    inventory *inv = user;
    inv->n_tensors++;
    if (t->is_param) inv->n_params += ts_model_tensor_numel(t);
    const ts_st_tensor *st = NULL;
    ts_io_error e;
    if (ts_checkpoint_get(inv->ck, t->name, &st, &e) != TS_OK) {
        if (inv->bad++ < 5) CHECK(false, "missing tensor %s: %s", t->name, e.message);
        return TS_OK;
    }
    ts_st_dtype want;
    bool ok = ts_st_dtype_from_dtype(t->dtype, &want) && st->dtype == want && st->ndim == t->ndim;
    for (int i = 0; ok && i < t->ndim; i++) ok = st->shape[i] == t->shape[i];
    if (!ok && inv->bad++ < 5)
        CHECK(false, "%s: stored %s ndim %d [%lld, %lld], walker %s [%lld, %lld]", t->name, ts_st_dtype_name(st->dtype),
              st->ndim, (long long)st->shape[0], (long long)(st->ndim > 1 ? st->shape[1] : 0), ts_dtype_name(t->dtype),
              (long long)t->shape[0], (long long)t->shape[1]);
    return TS_OK;
}

/* Every walker tensor present with its shape and dtype; parameter count = count_params. */
static void check_inventory(const char *sub, const ts_v4_config *written) {
    char dir[512];
    path_of(dir, sizeof dir, sub, NULL);
    inventory inv = {0};
    ts_io_error e;
    ts_status s = ts_checkpoint_open(dir, &inv.ck, &e);
    CHECK(s == TS_OK, "open %s: %s", dir, s == TS_OK ? "" : e.message);
    if (s != TS_OK) return;
    CHECK(ts_model_walk_tensors(written, check_tensor, &inv) == TS_OK, "walk %s", sub);
    CHECK(inv.bad == 0, "%s: %lld tensors wrong", sub, (long long)inv.bad);
    CHECK((int64_t)ts_checkpoint_count(inv.ck) == inv.n_tensors, "%s: file has %zu tensors, walker %lld", sub,
          ts_checkpoint_count(inv.ck), (long long)inv.n_tensors);
    ts_model_param_counts pc;
    CHECK(ts_model_count_params(written, &pc) == TS_OK && pc.total == inv.n_params,
          "%s: params in file %lld vs count_params %lld", sub, (long long)inv.n_params, (long long)pc.total);
    ts_checkpoint_close(inv.ck);

    ts_v4_config back;
    char err[512];
    CHECK(ts_v4_config_load(dir, &back, err, sizeof err) == TS_OK, "config.json of %s: %s", sub, err);
    CHECK(ts_v4_config_equal(&back, written), "%s: config.json does not round-trip", sub);
}

/* ---------------------------------------------------------------- values */

static const float *f32_tensor(ts_checkpoint *ck, const char *name, int64_t *n) {
    const ts_st_tensor *t = NULL;
    if (ts_checkpoint_get(ck, name, &t, NULL) != TS_OK || t->dtype != TS_ST_F32) {
        CHECK(false, "no f32 tensor %s", name);
        return NULL;
    }
    *n = t->numel;
    return t->data;
}

static void check_std(ts_checkpoint *ck, const char *name, double want) {
    int64_t n = 0;
    const float *x = f32_tensor(ck, name, &n);
    if (!x) return;
    double s = 0, s2 = 0;
    for (int64_t i = 0; i < n; i++) s += x[i], s2 += (double)x[i] * x[i];
    double mean = s / n, sd = sqrt(s2 / n - mean * mean);
    CHECK(fabs(sd - want) < 0.1 * want && fabs(mean) < 0.1 * want, "%s: mean %g std %g, want std %g", name, mean, sd,
          want);
}

static void check_values(const ts_v4_config *cfg) {
    char dir[512];
    path_of(dir, sizeof dir, "a", NULL);
    ts_checkpoint *ck = NULL;
    if (ts_checkpoint_open(dir, &ck, NULL) != TS_OK) {
        CHECK(false, "reopen %s", dir);
        return;
    }
    check_std(ck, "layers.0.attn.wq_a.weight", 0.02);
    check_std(ck, "layers.1.ffn.experts.3.w1.weight", 0.02);
    check_std(ck, "embed.weight", 0.02);
    check_std(ck, "layers.2.hc_attn_fn", 0.02);
    check_std(ck, "layers.3.attn.wo_b.weight", 0.02 / sqrt(2.0 * (double)cfg->num_hidden_layers));

    int n_norms = 0;
    bool norms_ok = true, zeros_ok = true;
    for (size_t i = 0; i < ts_checkpoint_count(ck); i++) {
        const char *name = ts_checkpoint_name(ck, i);
        size_t len = strlen(name);
        bool is_norm = len >= 11 && strcmp(name + len - 11, "norm.weight") == 0;
        bool is_zero = strstr(name, "attn_sink") || strstr(name, "compressor.ape") || strstr(name, "gate.bias");
        if (!is_norm && !is_zero) continue;
        int64_t n = 0;
        const float *x = f32_tensor(ck, name, &n);
        for (int64_t j = 0; x && j < n; j++) {
            if (is_norm) norms_ok = norms_ok && x[j] == 1.0f;
            else zeros_ok = zeros_ok && x[j] == 0.0f;
        }
        n_norms += is_norm;
    }
    CHECK(n_norms > 20 && norms_ok, "%d norms, all 1: %d", n_norms, norms_ok);
    CHECK(zeros_ok, "sinks, ape and router biases are 0");

    int64_t n = 0, hc = cfg->hc_mult;
    const float *b = f32_tensor(ck, "layers.1.hc_ffn_base", &n);
    bool base_ok = b && n == (2 + hc) * hc;
    for (int64_t j = 0; base_ok && j < n; j++) base_ok = b[j] == (j < hc ? (float)-log((double)(hc - 1)) : 0.0f);
    CHECK(base_ok, "hc base = [-ln 3 x4 | 0 ...]");
    b = f32_tensor(ck, "hc_head_base", &n);
    base_ok = b && n == hc;
    for (int64_t j = 0; base_ok && j < n; j++) base_ok = b[j] == (float)-log(3.0);
    CHECK(base_ok, "hc_head_base = -ln 3");
    const float *sc = f32_tensor(ck, "layers.0.hc_attn_scale", &n);
    CHECK(sc && n == 3 && sc[0] == 0.01f && sc[1] == 0.01f && sc[2] == 0.01f, "hc scale 0.01");
    sc = f32_tensor(ck, "mtp.0.hc_head_scale", &n);
    CHECK(sc && n == 1 && sc[0] == 0.01f, "mtp hc_head scale 0.01");

    /* tid2eid: K distinct experts in [0, E) per row, and every expert used. */
    const ts_st_tensor *t = NULL;
    CHECK(ts_checkpoint_get(ck, "layers.0.ffn.gate.tid2eid", &t, NULL) == TS_OK && t->dtype == TS_ST_I64 &&
              t->shape[0] == cfg->vocab_size && t->shape[1] == cfg->num_experts_per_tok,
          "tid2eid [vocab, K] I64");
    if (t && t->dtype == TS_ST_I64) {
        const int64_t *tab = t->data;
        int64_t K = t->shape[1], E = cfg->n_routed_experts, used[64] = {0};
        bool ok = E <= 64;
        for (int64_t v = 0; ok && v < t->shape[0]; v++)
            for (int64_t j = 0; ok && j < K; j++) {
                int64_t e = tab[v * K + j];
                ok = e >= 0 && e < E;
                for (int64_t q = 0; ok && q < j; q++) ok = tab[v * K + q] != e;
                if (ok) used[e]++;
            }
        CHECK(ok, "tid2eid rows distinct and in range");
        for (int64_t e = 0; ok && e < E; e++)
            CHECK(used[e] > t->shape[0] * K / E / 2, "expert %lld used %lld times", (long long)e, (long long)used[e]);
    }
    ts_checkpoint_close(ck);
}

/* bf16 storage: same values as the f32 file, rounded. */
static void check_bf16(void) {
    char a[512], e[512];
    path_of(a, sizeof a, "a", NULL);
    path_of(e, sizeof e, "e", NULL);
    ts_checkpoint *ca = NULL, *ce = NULL;
    if (ts_checkpoint_open(a, &ca, NULL) != TS_OK || ts_checkpoint_open(e, &ce, NULL) != TS_OK) {
        CHECK(false, "open a/e");
        ts_checkpoint_close(ca);
        return;
    }
    const ts_st_tensor *ta = NULL, *te = NULL;
    const char *name = "layers.2.attn.wkv.weight";
    bool ok = ts_checkpoint_get(ca, name, &ta, NULL) == TS_OK && ts_checkpoint_get(ce, name, &te, NULL) == TS_OK &&
              te->dtype == TS_ST_BF16 && te->numel == ta->numel;
    for (int64_t i = 0; ok && i < ta->numel; i++)
        ok = ((const uint16_t *)te->data)[i] == ts_f32_to_bf16(((const float *)ta->data)[i]);
    CHECK(ok, "bf16 file = f32 file rounded (%s)", name);
    CHECK(ts_checkpoint_get(ce, "layers.2.hc_attn_fn", &te, NULL) == TS_OK && te->dtype == TS_ST_F32,
          "mHC stays f32 in a bf16 checkpoint");
    ts_checkpoint_close(ca);
    ts_checkpoint_close(ce);
}

/* ---------------------------------------------------------------- CLI */

static char tessera_path[4096];

static bool find_tessera(void) {
    char self[4000];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n <= 0) return false;
    self[n] = '\0';
    char *slash = strrchr(self, '/');
    if (!slash) return false;
    *slash = '\0';
    snprintf(tessera_path, sizeof tessera_path, "%s/tessera", self);
    return access(tessera_path, X_OK) == 0;
}

/* Runs tessera with args; returns the exit code (-1 abnormal), output lines in *lines. */
static int run_cli(const char *args, int *lines) {
    char cmd[8192];
    snprintf(cmd, sizeof cmd, "'%s' %s 2>&1", tessera_path, args);
    FILE *p = popen(cmd, "r");
    if (!p) return -1;
    char buf[4096];
    size_t len = fread(buf, 1, sizeof buf - 1, p);
    buf[len] = '\0';
    int status = pclose(p);
    *lines = 0;
    for (size_t i = 0; i < len; i++) *lines += buf[i] == '\n';
    return status != -1 && WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

static void test_cli(void) {
    if (!find_tessera()) {
        printf("tessera binary not found beside the test; CLI checks skipped\n");
        return;
    }
    char dir[512], args[1200], f1[600], f2[600];
    int lines = 0;
    path_of(dir, sizeof dir, "g", NULL);
    snprintf(args, sizeof args, "init --model tiny --seed 3 --out '%s'", dir);
    CHECK(run_cli(args, &lines) == 0, "cli init tiny");
    CHECK(write_model("tiny", 3, TS_F32, "h", false) == TS_OK, "library seed 3");
    path_of(f1, sizeof f1, "g", "model.safetensors");
    path_of(f2, sizeof f2, "h", "model.safetensors");
    CHECK(same_file(f1, f2) == 1, "cli and library write the same bytes");
    CHECK(run_cli(args, &lines) == 1 && lines == 1, "cli refuses a non-empty dir with one line (%d lines)", lines);
    snprintf(args, sizeof args, "init --model tiny --seed 3 --out '%s' --force", dir);
    CHECK(run_cli(args, &lines) == 0, "cli --force");
    path_of(f1, sizeof f1, "a", "config.json");
    snprintf(args, sizeof args, "init --model tiny --out '%s/sub'", f1);
    CHECK(run_cli(args, &lines) == 1 && lines == 1, "cli: unusable dir is one line, exit 1 (%d lines)", lines);
    CHECK(run_cli("init --model nonesuch --out /tmp/x", &lines) == 2, "cli: unknown model exit 2");
    CHECK(run_cli("init --model tiny --out /tmp/x --dtype fp8", &lines) == 2, "cli: bad dtype exit 2");
    CHECK(run_cli("init --model tiny", &lines) == 2, "cli: missing --out exit 2");
    CHECK(run_cli("init --help", &lines) == 0 && lines > 5, "cli: init --help");
}

int main(void) {
    double t0 = ts_time_seconds();
    snprintf(base, sizeof base, "/tmp/ts_test_init_XXXXXX");
    if (!mkdtemp(base)) {
        perror("mkdtemp");
        return 1;
    }
    ts_v4_config tiny, written;
    CHECK(ts_v4_preset("tiny", &tiny) == TS_OK, "tiny preset");
    CHECK(ts_model_init_config(&tiny, TS_F32, &written, NULL, 0) == TS_OK && ts_v4_config_equal(&written, &tiny),
          "f32 init config of tiny is tiny");

    CHECK(write_model("tiny", 7, TS_F32, "a", false) == TS_OK, "init tiny");
    check_inventory("a", &tiny);
    check_values(&tiny);

    /* determinism */
    char f1[600], f2[600];
    CHECK(write_model("tiny", 7, TS_F32, "b", false) == TS_OK, "init tiny again");
    CHECK(write_model("tiny", 8, TS_F32, "c", false) == TS_OK, "init tiny seed 8");
    path_of(f1, sizeof f1, "a", "model.safetensors");
    path_of(f2, sizeof f2, "b", "model.safetensors");
    CHECK(same_file(f1, f2) == 1, "same seed, same bytes");
    path_of(f2, sizeof f2, "c", "model.safetensors");
    CHECK(same_file(f1, f2) == 0, "different seed, different bytes");
    path_of(f1, sizeof f1, "a", "config.json");
    path_of(f2, sizeof f2, "c", "config.json");
    CHECK(same_file(f1, f2) == 1, "config.json does not depend on the seed");

    /* refusals */
    CHECK(write_model("tiny", 7, TS_F32, "a", false) == TS_ERR_STATE, "non-empty dir refused");
    CHECK(write_model("tiny", 9, TS_F32, "c", true) == TS_OK, "--force");
    {
        ts_v4_config cfg = tiny;
        char dir[600], err[512] = "";
        path_of(dir, sizeof dir, "a", "config.json/sub");
        CHECK(ts_model_init_write(&cfg, 1, TS_F32, dir, false, err, sizeof err) == TS_ERR_IO && err[0] &&
                  !strchr(err, '\n'),
              "unusable dir: TS_ERR_IO, one line: '%s'", err);
        CHECK(ts_model_init_write(&cfg, 1, TS_F8_E4M3, dir, false, err, sizeof err) == TS_ERR_UNSUPPORTED,
              "fp8 storage refused");
    }

    /* dense-tiny */
    ts_v4_config dense;
    CHECK(ts_v4_preset("dense-tiny", &dense) == TS_OK, "dense-tiny preset");
    CHECK(write_model("dense-tiny", 7, TS_F32, "d", false) == TS_OK, "init dense-tiny");
    check_inventory("d", &dense);

    /* bf16 */
    CHECK(write_model("tiny", 7, TS_BF16, "e", false) == TS_OK, "init tiny bf16");
    CHECK(ts_model_init_config(&tiny, TS_BF16, &written, NULL, 0) == TS_OK, "bf16 config");
    check_inventory("e", &written);
    check_bf16();

    /* sharded: 4 MB shards, then a single file forced over it */
    {
        char dir[600], err[512] = "";
        path_of(dir, sizeof dir, "f", NULL);
        CHECK(ts_model_init_write_sharded(&tiny, 7, TS_F32, dir, false, 4u << 20, err, sizeof err) == TS_OK,
              "sharded: %s", err);
        check_inventory("f", &tiny);
        ts_checkpoint *ck = NULL;
        if (ts_checkpoint_open(dir, &ck, NULL) == TS_OK) {
            CHECK(ts_checkpoint_shard_count(ck) > 1, "%zu shards", ts_checkpoint_shard_count(ck));
            ts_checkpoint *ca = NULL;
            path_of(f1, sizeof f1, "a", NULL);
            const ts_st_tensor *x = NULL, *y = NULL;
            const char *name = "layers.4.ffn.experts.5.w3.weight";
            CHECK(ts_checkpoint_open(f1, &ca, NULL) == TS_OK && ts_checkpoint_get(ck, name, &x, NULL) == TS_OK &&
                      ts_checkpoint_get(ca, name, &y, NULL) == TS_OK && x->nbytes == y->nbytes &&
                      memcmp(x->data, y->data, x->nbytes) == 0,
                  "sharding does not change values");
            ts_checkpoint_close(ca);
            ts_checkpoint_close(ck);
        }
        CHECK(ts_model_init_write(&tiny, 7, TS_F32, dir, true, err, sizeof err) == TS_OK, "single over sharded");
        path_of(f1, sizeof f1, "f", "model.safetensors.index.json");
        CHECK(access(f1, F_OK) != 0, "stale index removed");
        check_inventory("f", &tiny);
    }

    test_cli();

    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", base);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", base);
    printf("test_init: %.1f s\n", ts_time_seconds() - t0);
    return check_summary("test_init");
}
