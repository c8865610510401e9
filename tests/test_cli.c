/* test_cli.c - runs the built `tessera` binary the way a user would and checks exit codes and
 * the lines people and scripts rely on: --help, every subcommand's --help, version, info, ops,
 * a short demo, `forward` on the V4 reference checkpoint (logits .npy vs the port), `bench gemm
 * --json` on tiny shapes, `bench attention --json` on its smallest configurations, `tokenizer train/encode/decode` and `data prepare/synth/info` on
 * generated files, `generate --speculative mtp` against plain greedy generation, its sampling
 * options (a seed repeats its text), `--dtype bf16` and a bad --dtype of generate, chat and
 * serve, and the one-line errors (exit code 2 for command-line
 * mistakes, 1 for failed work). Also checks the
 * run-time CPU feature detection (cpu.h) that `info` prints. The binary is found next to this
 * test's executable (both are built into the same CMake build directory). */
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <jansson.h>

#include "backends/cpu/gemm.h"
#include "check.h"
#include "files.h"
#include "tessera/core.h"
#include "tessera/cpu.h"
#include "tessera/data.h"
#include "tessera/io.h"
#include "tessera/tokenizer.h"

static char tessera_path[4096];

/* The directory of /proc/self/exe + "/tessera". */
static bool find_tessera(void) {
    char self[4000]; /* leaves room in tessera_path for "/tessera" */
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n <= 0) return false;
    self[n] = '\0';
    char *slash = strrchr(self, '/');
    if (!slash) return false;
    *slash = '\0';
    snprintf(tessera_path, sizeof tessera_path, "%s/tessera", self);
    return access(tessera_path, X_OK) == 0;
}

typedef struct {
    int exit_code;   /* -1 when it did not exit normally */
    char out[65536]; /* stdout and stderr together */
    int n_lines;
} run_result;

/* Runs `tessera ARGS` through the shell (ARGS are simple words) and captures its output. */
static void run(run_result *r, const char *fmt, ...) {
    char args[1024], cmd[6000];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(args, sizeof args, fmt, ap);
    va_end(ap);
    snprintf(cmd, sizeof cmd, "'%s' %s 2>&1", tessera_path, args);
    memset(r, 0, sizeof *r);
    r->exit_code = -1;
    FILE *p = popen(cmd, "r");
    if (!p) return;
    size_t len = fread(r->out, 1, sizeof r->out - 1, p);
    r->out[len] = '\0';
    int status = pclose(p);
    if (status != -1 && WIFEXITED(status)) r->exit_code = WEXITSTATUS(status);
    for (size_t i = 0; i < len; i++) r->n_lines += r->out[i] == '\n';
}

static bool has(const run_result *r, const char *text) { return strstr(r->out, text) != NULL; }

/* The rest of the line that starts with `prefix` (copied into buf), or NULL. */
static const char *line_starting(const run_result *r, const char *prefix, char *buf, size_t size) {
    for (const char *line = r->out; line && *line; line = strchr(line, '\n') ? strchr(line, '\n') + 1 : NULL) {
        if (strncmp(line, prefix, strlen(prefix)) != 0) continue;
        const char *v = line + strlen(prefix);
        size_t n = strcspn(v, "\n");
        snprintf(buf, size, "%.*s", (int)n, v);
        return buf;
    }
    return NULL;
}

static void test_top_level_help(void) {
    run_result r;
    run(&r, "--help");
    CHECK(r.exit_code == 0, "--help exit %d", r.exit_code);
    CHECK(has(&r, "usage: tessera <command>"), "--help output:\n%s", r.out);
    const char *commands[] = {"version", "info", "ops", "demo"};
    for (int i = 0; i < 4; i++) CHECK(has(&r, commands[i]), "--help does not list %s", commands[i]);

    run(&r, "");
    CHECK(r.exit_code == 2, "no command: exit %d (want 2)", r.exit_code);
    run(&r, "help demo");
    CHECK(r.exit_code == 0 && has(&r, "usage: tessera demo"), "help demo: exit %d\n%s", r.exit_code, r.out);
}

static void test_every_subcommand_help(void) {
    const char *commands[] = {"version", "info", "ops", "demo"};
    for (int i = 0; i < 4; i++) {
        run_result r;
        char usage[64];
        run(&r, "%s --help", commands[i]);
        snprintf(usage, sizeof usage, "usage: tessera %s", commands[i]);
        CHECK(r.exit_code == 0, "%s --help exit %d", commands[i], r.exit_code);
        CHECK(has(&r, usage) && has(&r, "--help"), "%s --help output:\n%s", commands[i], r.out);
    }
    run_result r;
    run(&r, "demo --help");
    CHECK(has(&r, "--steps") && has(&r, "--dataset") && has(&r, "--seed"), "demo --help lacks options:\n%s", r.out);
}

static void test_version(void) {
    run_result r;
    char want[64], buf[256];
    run(&r, "version");
    snprintf(want, sizeof want, "tessera %s\n", TS_VERSION_STRING);
    CHECK(r.exit_code == 0, "version exit %d", r.exit_code);
    CHECK(strncmp(r.out, want, strlen(want)) == 0, "version's first line is not '%s':\n%s", want, r.out);
    ts_build_info b = ts_build_info_get();
    const char *compiler = line_starting(&r, "compiler:", buf, sizeof buf);
    CHECK(compiler && strstr(compiler, b.compiler), "compiler line missing or wrong:\n%s", r.out);
    const char *type = line_starting(&r, "build type:", buf, sizeof buf);
    CHECK(type && strstr(type, b.build_type), "build type line missing or wrong:\n%s", r.out);
    run(&r, "--version");
    CHECK(r.exit_code == 0 && strncmp(r.out, want, strlen(want)) == 0, "--version:\n%s", r.out);
}

static void test_info(void) {
    run_result r;
    char buf[1024], want[512];
    run(&r, "info");
    CHECK(r.exit_code == 0, "info exit %d", r.exit_code);
    const ts_cpu_features *f = ts_cpu_features_get();
    const char *simd = line_starting(&r, "simd:", buf, sizeof buf);
    ts_cpu_features_format(f, want, sizeof want);
    CHECK(simd && strstr(simd, want), "simd line '%s' does not list '%s'", simd ? simd : "(missing)", want);
    const char *cpu = line_starting(&r, "cpu:", buf, sizeof buf);
    CHECK(cpu && strstr(cpu, f->model_name), "cpu line missing the model name '%s':\n%s", f->model_name, r.out);
    const char *cores = line_starting(&r, "cores:", buf, sizeof buf);
    CHECK(cores && atoi(cores) == ts_cpu_count(), "cores line '%s', want %d", cores ? cores : "(missing)", ts_cpu_count());
    const char *backend = line_starting(&r, "backend:", buf, sizeof buf);
    CHECK(backend && strstr(backend, "cpu-ref"), "no cpu-ref backend line:\n%s", r.out);
    const char *build = line_starting(&r, "build:", buf, sizeof buf);
    CHECK(build && strstr(build, "sanitizers"), "no build line:\n%s", r.out);
    const char *gemm = line_starting(&r, "gemm:", buf, sizeof buf);
    snprintf(want, sizeof want, "%s kernels", ts_gemm_tier_name()); /* same TESSERA_CPU_TIER as the child */
    CHECK(gemm && strstr(gemm, want), "gemm line '%s' does not name '%s'", gemm ? gemm : "(missing)", want);
}

/* `tessera bench gemm --json` on tiny shapes: one machine line, then for each shape and dtype
 * one object per peer that runs it (or one with peer "none"), consecutive, with the documented keys; usage errors for a missing or unknown benchmark and a bad dtype. */
static void test_bench_gemm(void) {
    run_result r;
    run(&r, "bench");
    CHECK(r.exit_code == 2 && has(&r, "usage: tessera bench"), "bench: exit %d\n%s", r.exit_code, r.out);
    run(&r, "bench nope");
    CHECK(r.exit_code == 2 && has(&r, "unknown benchmark"), "bench nope: exit %d\n%s", r.exit_code, r.out);
    run(&r, "bench gemm --dtypes f64");
    CHECK(r.exit_code == 2 && has(&r, "--dtypes"), "bench gemm --dtypes f64: exit %d\n%s", r.exit_code, r.out);
    run(&r, "bench gemm --shapes 40x24x16,1x64x48:nt --dtypes f32,bf16 --repeats 1 --threads 1 --read-mib 8 --json");
    CHECK(r.exit_code == 0, "bench gemm --json: exit %d\n%s", r.exit_code, r.out);
    int rows = 0, machine = 0;
    char last_case[128] = "";
    for (char *save = NULL, *line = strtok_r(r.out, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        json_t *j = json_loads(line, 0, NULL);
        CHECK(j != NULL, "bench gemm: not JSON: %s", line);
        const char *op = j ? json_string_value(json_object_get(j, "op")) : NULL;
        if (op && strcmp(op, "machine") == 0) machine++;
        else if (op) {
            char key[128];
            snprintf(key, sizeof key, "%s %s %lld %lld %lld", op, json_string_value(json_object_get(j, "dtype")),
                     (long long)json_integer_value(json_object_get(j, "m")),
                     (long long)json_integer_value(json_object_get(j, "n")),
                     (long long)json_integer_value(json_object_get(j, "k")));
            if (strcmp(key, last_case) != 0) rows++;
            snprintf(last_case, sizeof last_case, "%s", key);
            json_t *peer_gf = json_object_get(j, "peer_gflops");
            CHECK(json_string_value(json_object_get(j, "dtype")) && json_integer_value(json_object_get(j, "m")) > 0 &&
                      json_integer_value(json_object_get(j, "n")) > 0 && json_integer_value(json_object_get(j, "k")) > 0 &&
                      json_integer_value(json_object_get(j, "threads")) == 1 &&
                      json_number_value(json_object_get(j, "gflops")) > 0 &&
                      json_string_value(json_object_get(j, "peer")) && (json_is_null(peer_gf) || json_is_number(peer_gf)),
                  "bench gemm: incomplete object %s", line);
            if (strcmp(op, "gemv") == 0)
                CHECK(json_number_value(json_object_get(j, "bandwidth_fraction")) > 0, "gemv without bandwidth: %s", line);
        }
        json_decref(j);
    }
    CHECK(machine == 1 && rows == 4, "bench gemm: %d machine lines, %d cases (want 1, 4)", machine, rows);

    /* the configurations of at most 0.3 counted GFLOP at T = 1024: the windowed forward ones */
    run(&r, "bench attention --quick --threads 1 --reps 1 --max-gflop 0.3 --ref-gflop 0 --json");
    int attn = 0;
    for (char *save = NULL, *line = strtok_r(r.out, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        json_t *j = json_loads(line, 0, NULL);
        CHECK(j && !strcmp(json_string_value(json_object_get(j, "bench")), "attention") &&
                  json_integer_value(json_object_get(j, "T")) == 1024 && json_number_value(json_object_get(j, "gflops")) > 0 &&
                  json_number_value(json_object_get(j, "gflop")) <= 0.3 &&
                  json_integer_value(json_object_get(j, "arena_bytes")) > 0,
              "bench attention: %s", line);
        attn += j != NULL;
        json_decref(j);
    }
    CHECK(r.exit_code == 0 && attn >= 1, "bench attention --json: exit %d, %d lines", r.exit_code, attn);
}

/* The model report: the exact published Flash inventory, and a clean refusal of unknown models. */
static void test_info_model(void) {
    run_result r;
    char buf[1024];
    run(&r, "info --model flash");
    CHECK(r.exit_code == 0, "info --model flash exit %d:\n%s", r.exit_code, r.out);
    const char *total = line_starting(&r, "parameters_total:", buf, sizeof buf);
    CHECK(total && strstr(total, " 290942289362"), "parameters_total line: %s", total ? total : "(missing)");
    const char *active = line_starting(&r, "parameters_active:", buf, sizeof buf);
    CHECK(active && strstr(active, " 14118225362"), "parameters_active line: %s", active ? active : "(missing)");
    run(&r, "info --model tiny");
    CHECK(r.exit_code == 0 && has(&r, "parameters_total: "), "info --model tiny:\n%s", r.out);
}

static void test_ops(void) {
    run_result r;
    run(&r, "ops");
    CHECK(r.exit_code == 0, "ops exit %d:\n%s", r.exit_code, r.out);
    CHECK(has(&r, "cpu-ref") && has(&r, "matmul") && has(&r, "cross_entropy"), "ops output:\n%s", r.out);
    run(&r, "ops --backend cpu-ref");
    CHECK(r.exit_code == 0 && has(&r, "matmul"), "ops --backend cpu-ref exit %d:\n%s", r.exit_code, r.out);
    run(&r, "ops --backend no-such-backend");
    CHECK(r.exit_code == 2 && r.n_lines == 1 && has(&r, "no-such-backend"), "ops --backend no-such-backend: exit %d\n%s",
          r.exit_code, r.out);
}

/* Every mistake on the command line: exit code 2 and exactly one line that names it. */
static void expect_usage_error(const char *args, const char *mentions) {
    run_result r;
    run(&r, "%s", args);
    CHECK(r.exit_code == 2, "'tessera %s': exit %d (want 2)", args, r.exit_code);
    CHECK(r.n_lines == 1, "'tessera %s': %d lines of output (want 1):\n%s", args, r.n_lines, r.out);
    CHECK(has(&r, mentions), "'tessera %s': error does not mention '%s':\n%s", args, mentions, r.out);
}

static void test_usage_errors(void) {
    expect_usage_error("frobnicate", "unknown command 'frobnicate'");
    expect_usage_error("--frobnicate", "unknown option '--frobnicate'");
    expect_usage_error("chat", "--model DIR is required");
    expect_usage_error("info --bogus", "unknown option '--bogus'");
    expect_usage_error("version extra", "unexpected argument 'extra'");
    expect_usage_error("demo --steps", "--steps needs a value");
    expect_usage_error("demo --steps abc", "not an integer");
    expect_usage_error("demo --steps 0", "outside");
    expect_usage_error("demo --dataset moons", "moons");
    expect_usage_error("demo --backend nope", "nope");
    expect_usage_error("info --model no-such-model", "no-such-model");
    expect_usage_error("forward --ids 1", "--model is required");
    expect_usage_error("forward --model dense-tiny", "exactly one of --ids");
    expect_usage_error("forward --model dense-tiny --ids 1,x", "'x' is not an integer");
    expect_usage_error("forward --model dense-tiny --ids 1,264", "264 is outside [0, 264)");
    expect_usage_error("forward --model dense-tiny --ids 1,2 --targets 3", "1 targets for 2 tokens");
    expect_usage_error("forward --model no-such-model --ids 1", "no-such-model");
}

/* A tiny demo run: the command works end to end and prints its summary lines. */
static void test_short_demo(void) {
    run_result r;
    run(&r, "demo --steps 30 --train 120 --heldout 60 --hidden 16 --batch 30 --threads 1");
    CHECK(r.exit_code == 0, "short demo exit %d:\n%s", r.exit_code, r.out);
    CHECK(has(&r, "memory:   planned peak") && has(&r, "step     0  loss") && has(&r, "loss:") && has(&r, "accuracy:"),
          "short demo output:\n%s", r.out);
}

/* TESSERA_PROFILE: kernel time per op; "shapes" adds the costliest node shapes, each with its
 * op and the shapes of its output and sources. */
static void test_profile(void) {
    static run_result r;
    const char *demo = "demo --steps 5 --train 120 --heldout 60 --hidden 16 --batch 30 --threads 1";
    setenv("TESSERA_PROFILE", "shapes", 1);
    run(&r, "%s", demo);
    CHECK(r.exit_code == 0 && has(&r, "profile of backend cpu") && has(&r, "costliest node shapes:"),
          "TESSERA_PROFILE=shapes demo: exit %d\n%s", r.exit_code, r.out);
    const char *shapes = strstr(r.out, "costliest node shapes:");
    CHECK(shapes && strstr(shapes, "matmul") && strstr(shapes, "f32[30,16] <- [30,"), "no matmul node shape:\n%s", r.out);
    setenv("TESSERA_PROFILE", "1", 1);
    run(&r, "%s", demo);
    CHECK(r.exit_code == 0 && has(&r, "profile of backend cpu") && !has(&r, "costliest node shapes:"),
          "TESSERA_PROFILE=1 demo: exit %d\n%s", r.exit_code, r.out);
    unsetenv("TESSERA_PROFILE");
}

/* The logits of a .npy file written by `tessera forward`: checks the format 1.0 header (f32
 * little-endian, C order, shape [rows, cols]) and returns the values (malloc'd) or NULL. */
static float *read_npy_f32(const char *path, int64_t rows, int64_t cols) {
    FILE *f = fopen(path, "rb");
    CHECK(f != NULL, "cannot open %s", path);
    if (!f) return NULL;
    unsigned char pre[10];
    char dict[4096] = "", want_shape[64];
    bool ok = fread(pre, 1, 10, f) == 10 && memcmp(pre, "\x93NUMPY\x01\x00", 8) == 0;
    size_t hlen = ok ? (size_t)pre[8] | (size_t)pre[9] << 8 : 0;
    ok = ok && hlen < sizeof dict && (10 + hlen) % 64 == 0 && fread(dict, 1, hlen, f) == hlen && dict[hlen - 1] == '\n';
    snprintf(want_shape, sizeof want_shape, "'shape': (%lld, %lld)", (long long)rows, (long long)cols);
    ok = ok && strstr(dict, "'descr': '<f4'") && strstr(dict, "'fortran_order': False") && strstr(dict, want_shape);
    CHECK(ok, "%s: not an f32 [%lld, %lld] .npy file (header '%s')", path, (long long)rows, (long long)cols, dict);
    float *v = ok ? malloc((size_t)(rows * cols) * sizeof *v) : NULL;
    ok = v && fread(v, sizeof *v, (size_t)(rows * cols), f) == (size_t)(rows * cols) && fgetc(f) == EOF;
    CHECK(ok, "%s: data size", path);
    fclose(f);
    if (!ok) free(v);
    return ok ? v : NULL;
}

/* `tessera forward` on the V4 reference checkpoint: the logits it writes match the transformers
 * port's (tests/fixtures/v4/expected.safetensors) within 1e-4, and it prints their argmax and
 * the port's loss. */
static void test_forward(void) {
    const char *slash = strrchr(__FILE__, '/');
    int len = slash ? (int)(slash - __FILE__) : 1;
    const char *base = slash ? __FILE__ : ".";
    char model[1024], exp_path[1024], dir[] = "/tmp/ts_cli_forward_XXXXXX", npy[64];
    snprintf(model, sizeof model, "%.*s/fixtures/v4/tiny-ref", len, base);
    snprintf(exp_path, sizeof exp_path, "%.*s/fixtures/v4/expected.safetensors", len, base);
    ts_st_file *exp = NULL;
    ts_io_error ioe;
    CHECK(ts_st_file_open(exp_path, &exp, &ioe) == TS_OK, "%s", ioe.message);
    CHECK(mkdtemp(dir) != NULL, "mkdtemp");
    if (!exp) return;
    const ts_st_tensor *ids = ts_st_file_find(exp, "ids"), *logits = ts_st_file_find(exp, "logits"),
                       *loss = ts_st_file_find(exp, "loss_f64");
    int64_t T = ids->shape[1], V = logits->shape[2];
    char list[1024] = "", want_argmax[1024] = "";
    for (int64_t t = 0; t < T; t++) {
        const float *row = (const float *)logits->data + t * V;
        int64_t best = 0;
        for (int64_t v = 1; v < V; v++)
            if (row[v] > row[best]) best = v;
        snprintf(list + strlen(list), sizeof list - strlen(list), "%s%lld", t ? "," : "",
                 (long long)((const int64_t *)ids->data)[t]);
        snprintf(want_argmax + strlen(want_argmax), sizeof want_argmax - strlen(want_argmax), " %lld", (long long)best);
    }
    snprintf(npy, sizeof npy, "%s/logits.npy", dir);
    run_result r;
    run(&r, "forward --model '%s' --ids %s --targets next --out %s --threads 2", model, list, npy);
    CHECK(r.exit_code == 0, "forward exit %d:\n%s", r.exit_code, r.out);
    char buf[1024];
    const char *argmax = line_starting(&r, "argmax:", buf, sizeof buf);
    CHECK(argmax && strcmp(argmax, want_argmax) == 0, "argmax line '%s', want '%s'", argmax ? argmax : "(missing)", want_argmax);
    const char *l = line_starting(&r, "loss: ", buf, sizeof buf);
    double want_loss = ((const double *)loss->data)[0];
    CHECK(l && fabs(atof(l) - want_loss) < 1e-5, "loss line '%s', want %.7f", l ? l : "(missing)", want_loss);
    float *got = read_npy_f32(npy, T, V);
    double worst = 0;
    for (int64_t i = 0; got && i < T * V; i++) worst = fmax(worst, fabs(got[i] - ((const float *)logits->data)[i]));
    CHECK(got && worst <= 1e-4, "forward logits max abs error %.3e vs the port", worst);
    free(got);
    unlink(npy);
    rmdir(dir);
    ts_st_file_close(exp);

}

/* ---------------------------------------------------------------- tokenizer and data commands */

/* Writes len bytes to dir/name; returns the path in buf. */
static const char *write_file(const char *dir, const char *name, const void *data, size_t len, char *buf, size_t size) {
    snprintf(buf, size, "%s/%s", dir, name);
    FILE *f = fopen(buf, "wb");
    bool ok = f && fwrite(data, 1, len, f) == len;
    if (f) ok = fclose(f) == 0 && ok;
    CHECK(ok, "cannot write %s", buf);
    return buf;
}

/* The number after `prefix` on the line starting with it, or -1. */
static double number_after(const run_result *r, const char *prefix) {
    char buf[256];
    const char *v = line_starting(r, prefix, buf, sizeof buf);
    return v ? atof(v) : -1;
}

/* A failed run (not a command-line mistake): exit code 1 and one line naming the problem. */
static void expect_work_failure(const char *args, const char *mentions) {
    run_result r;
    run(&r, "%s", args);
    CHECK(r.exit_code == 1, "'tessera %s': exit %d (want 1)\n%s", args, r.exit_code, r.out);
    CHECK(r.n_lines == 1, "'tessera %s': %d lines of output (want 1):\n%s", args, r.n_lines, r.out);
    CHECK(has(&r, mentions), "'tessera %s': error does not mention '%s':\n%s", args, mentions, r.out);
}

/* ~5 KB of generated English-like text: words drawn from a small list by an LCG. */
static size_t make_corpus(char *buf, size_t cap) {
    static const char *const words[] = {"the", "cat", "sat", "on", "mat", "and", "dog", "ran", "far", "quick", "fox"};
    uint32_t s = 12345;
    size_t n = 0;
    for (int w = 0; n + 16 < cap && w < 1200; w++) {
        s = s * 1664525u + 1013904223u;
        n += (size_t)snprintf(buf + n, cap - n, "%s%s", words[(s >> 16) % 11], w % 20 == 19 ? ".\n\n" : " ");
    }
    return n;
}

/* `tessera tokenizer`: training on generated text, the counts it reports, encode / decode round
 * trips (invalid UTF-8 and NUL bytes included, compared byte for byte through a file), special
 * tokens, and its errors. */
static void test_tokenizer_commands(const char *dir) {
    char corpus[8192], path[1024], bad_path[1024], out_path[1024], args[4096];
    size_t corpus_len = make_corpus(corpus, sizeof corpus);
    write_file(dir, "corpus.txt", corpus, corpus_len, path, sizeof path);
    run_result r;
    run(&r, "tokenizer --help");
    CHECK(r.exit_code == 0 && has(&r, "train") && has(&r, "encode") && has(&r, "decode"), "tokenizer --help:\n%s", r.out);
    run(&r, "tokenizer train --input %s --vocab-size 280 --out %s/tok --special '<s>' '</s>'", path, dir);
    CHECK(r.exit_code == 0, "tokenizer train: exit %d\n%s", r.exit_code, r.out);
    /* Every merge adds one token: 280 = 256 bytes + 2 special + 22 merges (the corpus has more). */
    CHECK(number_after(&r, "vocab_size: ") == 280 && number_after(&r, "merges: ") == 22, "train counts:\n%s", r.out);
    CHECK(has(&r, "bos: 0 <s>\n") && has(&r, "eos: 1 </s>\n"), "train bos/eos:\n%s", r.out);
    char buf[256];
    const char *text = line_starting(&r, "training_text: ", buf, sizeof buf);
    unsigned long long files = 0, bytes = 0, tokens = 0;
    CHECK(text && sscanf(text, "%llu files, %llu bytes, %llu tokens", &files, &bytes, &tokens) == 3 && files == 1 &&
              bytes == corpus_len,
          "training_text line '%s' (want %zu bytes)", text ? text : "(missing)", corpus_len);
    CHECK(tokens > 0 && fabs(number_after(&r, "bytes_per_token: ") - (double)bytes / (double)tokens) < 1e-3 &&
              tokens * 2 < bytes,
          "bytes_per_token %g for %llu bytes / %llu tokens", number_after(&r, "bytes_per_token: "), bytes, tokens);
    snprintf(path, sizeof path, "%s/tok/tokenizer.json", dir);
    json_t *saved = json_load_file(path, 0, NULL); /* the model's vocab lists the specials too, as the reference's does */
    json_t *vocab = json_object_get(json_object_get(saved, "model"), "vocab");
    CHECK(json_object_size(vocab) == 280 && json_array_size(json_object_get(saved, "added_tokens")) == 2,
          "%s: %zu vocab entries (want 280) and 2 added tokens", path, json_object_size(vocab));
    json_decref(saved);
    snprintf(path, sizeof path, "%s/tok/tokenizer_config.json", dir);
    CHECK(access(path, R_OK) == 0, "no %s", path);

    /* The training text encodes to as many ids as train counted. */
    run(&r, "tokenizer encode --tokenizer %s/tok --file %s/corpus.txt --ids-only", dir, dir);
    unsigned long long n_ids = r.out[0] ? 1 : 0;
    for (const char *p = r.out; *p; p++) n_ids += *p == ',';
    CHECK(r.exit_code == 0 && n_ids == tokens, "encode of the training text: %llu ids, train said %llu", n_ids, tokens);

    /* Invalid UTF-8 (a cut multi-byte sequence, stray continuation bytes, 0xff) and a NUL. */
    static const char bad[] = "caf\xc3 the \xff\xfe cat\x80\x80 \xe2\x82 sat\0on";
    write_file(dir, "bad.bin", bad, sizeof bad - 1, bad_path, sizeof bad_path);
    run(&r, "tokenizer encode --tokenizer %s/tok --file %s --ids-only", dir, bad_path);
    CHECK(r.exit_code == 0 && r.n_lines == 1, "encode invalid UTF-8: exit %d\n%s", r.exit_code, r.out);
    snprintf(args, sizeof args, "%.*s", (int)strcspn(r.out, "\n"), r.out);
    snprintf(out_path, sizeof out_path, "%s/decoded.bin", dir);
    run(&r, "tokenizer decode --tokenizer %s/tok --ids %s > %s", dir, args, out_path);
    size_t got_len = 0;
    char *got = test_read_file(out_path, &got_len);
    CHECK(r.exit_code == 0 && got && got_len == sizeof bad - 1 && memcmp(got, bad, got_len) == 0,
          "decode(encode(invalid UTF-8)): exit %d, %zu bytes back of %zu", r.exit_code, got_len, sizeof bad - 1);
    free(got);

    /* Special tokens: recognised in the text by default, plain text with --no-special. */
    run(&r, "tokenizer encode --tokenizer %s/tok --text '<s>the cat'", dir);
    CHECK(r.exit_code == 0 && strncmp(r.out, "ids: 0,", 7) == 0 && has(&r, "       0  <s>\n") && has(&r, "tokens: "),
          "encode with a special token:\n%s", r.out);
    run(&r, "tokenizer encode --tokenizer %s/tok --text '<s>the cat' --ids-only --no-special --eos", dir);
    CHECK(r.exit_code == 0 && r.out[0] != '0' && strstr(r.out, ",1\n") && r.n_lines == 1, "encode --no-special --eos:\n%s", r.out);
    run(&r, "tokenizer decode --tokenizer %s/tok/tokenizer.json --ids 0,1 --skip-special", dir);
    CHECK(r.exit_code == 0 && r.out[0] == '\0', "decode --skip-special of specials printed '%s'", r.out);

    snprintf(args, sizeof args, "tokenizer decode --tokenizer %s/tok --ids 5,280", dir);
    expect_usage_error(args, "280 is outside [0, 280)");
    snprintf(args, sizeof args, "tokenizer decode --tokenizer %s/tok --ids 5,x", dir);
    expect_usage_error(args, "'x' is not an integer");
    snprintf(args, sizeof args, "tokenizer encode --tokenizer %s/tok --text a --file %s", dir, bad_path);
    expect_usage_error(args, "exactly one of --text and --file");
    snprintf(args, sizeof args, "tokenizer train --input %s --out %s/t2 --vocab-size 257 --special a b", bad_path, dir);
    expect_usage_error(args, "--vocab-size 257");
    snprintf(args, sizeof args, "tokenizer train --input %s --out %s/t2 --special a --bos b", bad_path, dir);
    expect_usage_error(args, "--bos 'b'");
    expect_usage_error("tokenizer frobnicate", "unknown subcommand 'frobnicate'");
    snprintf(args, sizeof args, "tokenizer encode --tokenizer %s --text a", bad_path);
    expect_work_failure(args, "bad.bin");
    snprintf(args, sizeof args, "tokenizer encode --tokenizer %s/no-such-dir --text a", dir);
    expect_work_failure(args, "no-such-dir");
    snprintf(args, sizeof args, "tokenizer train --input %s/no-such-file --out %s/t2", dir, dir);
    expect_work_failure(args, "no-such-file");
    snprintf(args, sizeof args, "tokenizer train --input %s --out %s/tok", bad_path, dir);
    expect_work_failure(args, "already exists");
}

/* Entropy in bits of the targets of a byte-level shard: every token but each document's first
 * (BOS), counted straight from the file. */
static double shard_target_entropy(const char *path) {
    ts_shard *s = NULL;
    ts_io_error ioe;
    if (ts_shard_open(path, 0, &s, &ioe) != TS_OK) return -1;
    const ts_shard_info *info = ts_shard_get_info(s);
    double counts[1024] = {0}, n = 0;
    for (uint64_t d = 0; d < info->n_docs; d++)
        for (uint64_t i = ts_shard_doc_start(s, d) + 1; i < ts_shard_doc_start(s, d + 1); i++, n++)
            counts[ts_shard_token(s, i) % 1024]++;
    ts_shard_close(s);
    double h = 0;
    for (int v = 0; v < 1024; v++)
        if (counts[v] > 0) h -= counts[v] / n * log2(counts[v] / n);
    return h;
}

/* `tessera data`: prepare on text + JSONL with counts checked against the documents written,
 * the hash split, a forced format, a BPE tokenizer, `info` on good and corrupt shards, synth's
 * entropy against the shard it wrote, and the errors. */
static void test_data_commands(const char *dir) {
    static const char text[] = "alpha beta\n\n\ngamma\ndelta\n\n  \t\nepsilon\n";
    static const char jsonl[] = "{\"text\": \"one\"}\n{\"text\": \"caf\\u00e9\"}\nnot json\n{\"other\": 1}\n\n";
    const char *docs[] = {"alpha beta", "gamma\ndelta", "epsilon", "one", "caf\xc3\xa9"};
    char txt_path[1024], jsonl_path[1024], lines_path[1024], shard[1024], args[4096];
    write_file(dir, "a.txt", text, sizeof text - 1, txt_path, sizeof txt_path);
    write_file(dir, "b.jsonl", jsonl, sizeof jsonl - 1, jsonl_path, sizeof jsonl_path);
    write_file(dir, "c.txt", "{\"text\": \"zz\"}\n", 15, lines_path, sizeof lines_path);
    uint64_t want_tokens = 0;
    for (int i = 0; i < 5; i++) want_tokens += strlen(docs[i]) + 2; /* BOS + bytes + EOS */

    run_result r;
    run(&r, "data prepare --input %s %s --out %s/sh --val-fraction 0", txt_path, jsonl_path, dir);
    CHECK(r.exit_code == 0 && has(&r, "documents: train 5, val 0\n") && has(&r, "2 bad JSONL lines"),
          "data prepare: exit %d\n%s", r.exit_code, r.out);
    char want[128];
    snprintf(want, sizeof want, "tokens: train %llu, val 0\n", (unsigned long long)want_tokens);
    CHECK(has(&r, want) && has(&r, "shards: train 1, val 1"), "data prepare wants '%s':\n%s", want, r.out);
    CHECK(has(&r, "b.jsonl:3"), "the bad JSONL line is not reported:\n%s", r.out);
    snprintf(shard, sizeof shard, "%s/sh/train-00000.tshard", dir);
    ts_shard *s = NULL;
    ts_io_error ioe;
    CHECK(ts_shard_open(shard, 0, &s, &ioe) == TS_OK, "%s", ioe.message);
    if (s) { /* document 0 is BOS, the bytes of "alpha beta" + 3, EOS */
        bool same = ts_shard_token(s, 0) == 0 && ts_shard_token(s, 11) == 1 && ts_shard_doc_start(s, 1) == 12;
        for (int i = 0; i < 10; i++) same = same && ts_shard_token(s, 1 + (uint64_t)i) == (uint32_t)docs[0][i] + 3;
        CHECK(same, "%s: the first document is not BOS 'alpha beta' EOS", shard);
        ts_shard_close(s);
    }
    run(&r, "data info %s/sh", dir);
    snprintf(want, sizeof want, "tokens: %llu\n", (unsigned long long)want_tokens);
    CHECK(r.exit_code == 0 && has(&r, want) && has(&r, "documents: 5 ") && has(&r, "documents: 0\n") &&
              has(&r, "vocab_size: 264 (2-byte tokens)") && has(&r, "checksums: ok"),
          "data info: exit %d\n%s", r.exit_code, r.out);

    /* The split: a document is held out iff XXH64(text, seed) / 2^64 < fraction. */
    int want_val = 0;
    for (int i = 0; i < 5; i++) want_val += (double)ts_xxh64(docs[i], strlen(docs[i]), 7) / 18446744073709551616.0 < 0.5;
    run(&r, "data prepare --input %s %s --out %s/sh --val-fraction 0.5 --seed 7 --overwrite", txt_path, jsonl_path, dir);
    snprintf(want, sizeof want, "documents: train %d, val %d\n", 5 - want_val, want_val);
    CHECK(r.exit_code == 0 && has(&r, want), "split with seed 7 wants '%s':\n%s", want, r.out);
    /* --format jsonl reads a .txt file as JSON Lines; auto would take it as one text document. */
    run(&r, "data prepare --input %s --out %s/fmt --format jsonl --val-fraction 0", lines_path, dir);
    CHECK(r.exit_code == 0 && has(&r, "tokens: train 4, val 0\n"), "--format jsonl:\n%s", r.out);
    run(&r, "data prepare --input %s --out %s/fmt --val-fraction 0 --overwrite", lines_path, dir);
    CHECK(r.exit_code == 0 && has(&r, "tokens: train 16, val 0\n"), "--format auto on a .txt:\n%s", r.out);
    /* Through the BPE tokenizer trained above: its vocabulary, its BOS / EOS, and per document
     * as many tokens as the tokenizer gives the text (specials in it being plain text). */
    char tok_dir[1024];
    snprintf(tok_dir, sizeof tok_dir, "%s/tok", dir);
    ts_tokenizer *tok = NULL;
    CHECK(ts_tokenizer_load(tok_dir, &tok, &ioe) == TS_OK, "%s", ioe.message);
    uint64_t bpe_tokens = 0;
    ts_token_ids ids = {0};
    for (int i = 0; tok && i < 5; i++) {
        ts_token_ids_clear(&ids);
        CHECK(ts_tokenizer_encode(tok, docs[i], strlen(docs[i]), 0, &ids, &ioe) == TS_OK, "%s", ioe.message);
        bpe_tokens += ids.n + 2;
    }
    ts_token_ids_free(&ids);
    ts_tokenizer_free(tok);
    run(&r, "data prepare --input %s %s --out %s/bpe --tokenizer %s --val-fraction 0", txt_path, jsonl_path, dir, tok_dir);
    snprintf(want, sizeof want, "tokens: train %llu, val 0\n", (unsigned long long)bpe_tokens);
    CHECK(r.exit_code == 0 && has(&r, "(vocab 280, bos 0, eos 1)") && has(&r, want) && bpe_tokens < want_tokens,
          "data prepare --tokenizer wants '%s' (byte-level: %llu):\n%s", want, (unsigned long long)want_tokens, r.out);

    /* A flipped payload byte: info still shows the header, then fails on the checksum. */
    snprintf(shard, sizeof shard, "%s/sh/val-00000.tshard", dir);
    FILE *f = fopen(shard, "r+b");
    int c = f && fseek(f, 70, SEEK_SET) == 0 ? fgetc(f) : EOF;
    CHECK(c != EOF && fseek(f, 70, SEEK_SET) == 0 && fputc(c ^ 0x40, f) != EOF, "cannot corrupt %s", shard);
    if (f) fclose(f);
    run(&r, "data info %s", shard);
    CHECK(r.exit_code == 1 && has(&r, "checksums: FAILED") && has(&r, "payload checksum mismatch"),
          "data info on a corrupt shard: exit %d\n%s", r.exit_code, r.out);

    run(&r, "data synth --out %s/syn --train-docs 300 --val-docs 40 --seed 5", dir);
    CHECK(r.exit_code == 0 && has(&r, "documents: train 300, val 40\n"), "data synth: exit %d\n%s", r.exit_code, r.out);
    snprintf(shard, sizeof shard, "%s/syn/train-00000.tshard", dir);
    double h = shard_target_entropy(shard), printed = number_after(&r, "unigram_entropy: ");
    CHECK(h > 1 && fabs(printed - h) < 1e-5, "synth entropy printed %.6f, the shard's targets give %.6f", printed, h);
    run(&r, "data info %s", shard);
    CHECK(r.exit_code == 0 && has(&r, "documents: 300 ") && has(&r, "checksums: ok"), "data info synth:\n%s", r.out);

    expect_usage_error("data prepare --input x", "--out is required");
    snprintf(args, sizeof args, "data prepare --input %s --out %s/o --val-fraction 1", txt_path, dir);
    expect_usage_error(args, "--val-fraction must be below 1");
    snprintf(args, sizeof args, "data prepare --input %s --out %s/o --format csv", txt_path, dir);
    expect_usage_error(args, "csv");
    expect_usage_error("data synth --out x --train-docs 0", "must be >= 1");
    expect_usage_error("data info", "give a shard");
    expect_usage_error("data frobnicate", "unknown subcommand 'frobnicate'");
    snprintf(args, sizeof args, "data prepare --input %s/no-such-file --out %s/o", dir, dir);
    expect_work_failure(args, "no-such-file");
    snprintf(args, sizeof args, "data prepare --input %s --out %s/o --tokenizer %s", txt_path, dir, jsonl_path);
    expect_work_failure(args, "b.jsonl");
    snprintf(args, sizeof args, "data prepare --input %s --out %s", txt_path, txt_path);
    expect_work_failure(args, "not a directory");
    snprintf(args, sizeof args, "data prepare --input %s --out %s/sh", txt_path, dir);
    expect_work_failure(args, "--overwrite");
    snprintf(args, sizeof args, "%s/empty", dir);
    mkdir(args, 0777);
    snprintf(args, sizeof args, "data prepare --input %s/empty --out %s/o", dir, dir);
    run(&r, "%s", args);
    CHECK(r.exit_code == 1 && has(&r, "no documents"), "prepare on an empty directory: exit %d\n%s", r.exit_code, r.out);
    if (geteuid() != 0) { /* root reads any directory */
        snprintf(args, sizeof args, "%s/locked", dir);
        mkdir(args, 0);
        snprintf(args, sizeof args, "data prepare --input %s/locked --out %s/o", dir, dir);
        expect_work_failure(args, "locked");
    }
    snprintf(args, sizeof args, "data info %s/no-such-file", dir);
    expect_work_failure(args, "no-such-file");
    snprintf(args, sizeof args, "data info %s", txt_path);
    expect_work_failure(args, "not a token shard");
}

static void test_tokenizer_and_data(void) {
    char dir[] = "/tmp/ts_cli_tok_XXXXXX", cmd[256];
    CHECK(mkdtemp(dir) != NULL, "mkdtemp");
    test_tokenizer_commands(dir);
    test_data_commands(dir);
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    CHECK(system(cmd) == 0, "%s", cmd);
}

/* `generate --speculative mtp`: on a V4 checkpoint with an MTP block the same greedy text as
 * plain decoding (standard output compared byte for byte, as hex), with the acceptance rate on
 * standard error; a dense checkpoint and an unknown draft are refused in one line. */
static void test_generate_speculative(void) {
    char dir[] = "/tmp/ts_cli_gen_XXXXXX", cmd[256], path[300];
    CHECK(mkdtemp(dir) != NULL, "mkdtemp");
    static run_result r, plain, spec;
    run(&r, "init --model tiny --seed 4 --out %s/v4", dir);
    CHECK(r.exit_code == 0, "init tiny: %s", r.out);
    run(&r, "init --model dense-tiny --out %s/dense", dir);
    CHECK(r.exit_code == 0, "init dense-tiny: %s", r.out);
    const char *gen = "generate --prompt 'The cat' --max-tokens 48 --model";
    run(&plain, "%s %s/v4 2>/dev/null | od -An -tx1", gen, dir);
    run(&spec, "%s %s/v4 --speculative mtp 2>%s/stderr.txt | od -An -tx1", gen, dir, dir);
    CHECK(plain.exit_code == 0 && plain.n_lines > 3 && strcmp(plain.out, spec.out) == 0,
          "speculative text differs from plain:\n%s\nvs\n%s", plain.out, spec.out);
    snprintf(path, sizeof path, "%s/stderr.txt", dir);
    char *err = test_read_file(path, NULL);
    CHECK(err && strstr(err, "speculative (mtp): ") && strstr(err, "acceptance rate") &&
              strstr(err, "tokens/s"), "speculative stats: %s", err ? err : "(none)");
    free(err);
    run(&r, "%s %s/dense --speculative mtp", gen, dir);
    CHECK(r.exit_code == 1 && r.n_lines == 1 && has(&r, "MTP block"), "dense: %d %s", r.exit_code, r.out);
    run(&r, "%s %s/v4 --speculative ngram", gen, dir);
    CHECK(r.exit_code == 2 && has(&r, "ngram"), "unknown draft: %d %s", r.exit_code, r.out);

    /* every sampling option: a seed repeats its text, another seed gives another; a value out of
     * the sampler's range is one usage line naming it */
    const char *sampled = "--temperature 1.3 --top-k 40 --top-p 0.95 --min-p 0.02 --repeat-penalty 1.1 "
                          "--frequency-penalty 0.2 --presence-penalty 0.1";
    static run_result a, b;
    run(&a, "%s %s/v4 %s --seed 7 2>/dev/null | od -An -tx1", gen, dir, sampled);
    run(&b, "%s %s/v4 %s --seed 7 2>/dev/null | od -An -tx1", gen, dir, sampled);
    run(&r, "%s %s/v4 %s --seed 8 2>/dev/null | od -An -tx1", gen, dir, sampled);
    CHECK(a.exit_code == 0 && a.n_lines > 3 && strcmp(a.out, b.out) == 0 && strcmp(a.out, r.out) != 0 &&
              strcmp(a.out, plain.out) != 0,
          "sampling: seed 7 twice %s, seed 8 %s, greedy %s", strcmp(a.out, b.out) ? "differs" : "repeats",
          strcmp(a.out, r.out) ? "differs" : "is the same", strcmp(a.out, plain.out) ? "differs" : "is the same");
    run(&r, "%s %s/v4 --top-p 0", gen, dir);
    CHECK(r.exit_code == 2 && r.n_lines == 1 && has(&r, "top_p"), "--top-p 0: %d %s", r.exit_code, r.out);
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    CHECK(system(cmd) == 0, "%s", cmd);
}

/* --dtype of the inference commands: bf16 matmul weights generate (the same greedy text as f32
 * on this model), an unknown dtype is one error line from each command. */
static void test_generate_dtype(void) {
    char dir[] = "/tmp/ts_cli_dtype_XXXXXX", cmd[256];
    CHECK(mkdtemp(dir) != NULL, "mkdtemp");
    static run_result r, f32, bf16;
    run(&r, "init --model dense-tiny --out %s/dense", dir);
    CHECK(r.exit_code == 0, "init dense-tiny: %s", r.out);
    const char *gen = "generate --prompt 'The cat' --max-tokens 24 --model";
    run(&f32, "%s %s/dense 2>/dev/null | od -An -tx1", gen, dir);
    run(&bf16, "%s %s/dense --dtype bf16 2>/dev/null | od -An -tx1", gen, dir);
    CHECK(f32.exit_code == 0 && bf16.exit_code == 0 && bf16.n_lines > 1 && strcmp(f32.out, bf16.out) == 0,
          "bf16 text differs from f32:\n%s\nvs\n%s", f32.out, bf16.out);
    static const char *const commands[] = {"generate --prompt hi", "chat", "serve --port 0"};
    for (int i = 0; i < 3; i++) {
        run(&r, "%s --model %s/dense --dtype fp7 </dev/null", commands[i], dir);
        CHECK(r.exit_code == 2 && r.n_lines == 1 && has(&r, "--dtype fp7: expected f32 or bf16"), "%s --dtype fp7: %d %s",
              commands[i], r.exit_code, r.out);
    }
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    CHECK(system(cmd) == 0, "%s", cmd);
}

/* Detection itself: implied features, agreement with the compiler's own cpuid probe, and the
 * formatter's handling of small buffers. */
static void test_cpu_features(void) {
    ts_cpu_features f;
    ts_cpu_features_detect(&f);
    CHECK(f.logical_cores == ts_cpu_count(), "logical_cores %d", f.logical_cores);
    CHECK(f.model_name[0] != '\0', "empty model name");
#if defined(__x86_64__)
    CHECK(strcmp(f.arch, "x86_64") == 0, "arch %s", f.arch);
    CHECK(!f.avx2 || f.avx, "avx2 without avx");
    CHECK(!f.avx512bw || f.avx512f, "avx512bw without avx512f");
    __builtin_cpu_init();
    CHECK(f.sse4_2 == (__builtin_cpu_supports("sse4.2") != 0), "sse4.2 disagrees with the compiler");
    CHECK(f.avx == (__builtin_cpu_supports("avx") != 0), "avx disagrees with the compiler");
    CHECK(f.avx2 == (__builtin_cpu_supports("avx2") != 0), "avx2 disagrees with the compiler");
    CHECK(f.fma == (__builtin_cpu_supports("fma") != 0), "fma disagrees with the compiler");
    CHECK(f.avx512f == (__builtin_cpu_supports("avx512f") != 0), "avx512f disagrees with the compiler");
#elif defined(__aarch64__)
    CHECK(strcmp(f.arch, "aarch64") == 0, "arch %s", f.arch);
    CHECK(f.asimd, "aarch64 Linux always has asimd");
#endif
    ts_cpu_features none;
    memset(&none, 0, sizeof none);
    char buf[64];
    CHECK(strcmp(ts_cpu_features_format(&none, buf, sizeof buf), "none") == 0, "no features -> '%s'", buf);
    ts_cpu_features some = none;
    some.avx = some.avx2 = some.fma = true;
    CHECK(strcmp(ts_cpu_features_format(&some, buf, sizeof buf), "avx avx2 fma") == 0, "got '%s'", buf);
    CHECK(strcmp(ts_cpu_features_format(&some, buf, 9), "avx avx2") == 0, "truncated to '%s'", buf);
}

int main(void) {
    test_cpu_features();
    if (!find_tessera()) {
        CHECK(false, "the tessera binary was not found next to this test (%s)", tessera_path);
        return check_summary("test_cli");
    }
    test_top_level_help();
    test_every_subcommand_help();
    test_version();
    test_info();
    test_info_model();
    test_ops();
    test_usage_errors();
    test_short_demo();
    test_profile();
    test_forward();
    test_bench_gemm();
    test_tokenizer_and_data();
    test_generate_speculative();
    test_generate_dtype();
    return check_summary("test_cli");
}
