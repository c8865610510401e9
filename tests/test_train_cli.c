/* test_train_cli.c - `tessera train` as a process (the binary beside this test), on a small V4
 * config (every layer type, MTP) and the embedded synthetic data:
 * 1. resume is exact, in f32 and in bf16 compute: a run of 2N steps and a run of N steps +
 *    --resume + N more steps leave byte-identical final/model.safetensors (and optimizer state);
 *    the precision is in train_config.json and the log; a bf16 run's checkpoint is f32;
 *    --recompute trains the very same weights;
 * 2. SIGKILL at random moments - during steps and during checkpoint writes (a checkpoint every
 *    step) - several times; after each kill the run directory's newest checkpoint verifies, and
 *    resuming to the end gives the same final weights as the uninterrupted run;
 * 3. bad options fail with one line and exit code 2, a shape too large for memory with exit code 1
 *    and a line saying what to lower; the run directory holds metrics.jsonl, loss.svg,
 *    train_config.json. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "check.h"
#include "files.h"
#include "tessera/model.h"
#include "tessera/train.h"

static char tessera[4096], work[64], config[128];

static bool find_binary(void) {
    char self[4000];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n <= 0) return false;
    self[n] = '\0';
    char *slash = strrchr(self, '/');
    if (!slash) return false;
    *slash = '\0';
    snprintf(tessera, sizeof tessera, "%s/tessera", self);
    return access(tessera, X_OK) == 0;
}

static void write_config(void) {
    ts_v4_config c;
    ts_v4_preset("tiny", &c);
    c.hidden_size = 64;
    c.num_hidden_layers = 3;
    int32_t ratios[4] = {0, 4, 32, 0};
    memset(c.compress_ratios, 0, sizeof c.compress_ratios);
    memcpy(c.compress_ratios, ratios, sizeof ratios);
    c.moe_intermediate_size = 32;
    c.q_lora_rank = 32;
    c.sliding_window = 8;
    snprintf(config, sizeof config, "%s/small.json", work);
    char err[256];
    CHECK(ts_v4_config_save(&c, config, err, sizeof err) == TS_OK, "config: %s", err);
}

/* Starts `tessera train` with the common options plus up to 6 extra arguments (NULL-terminated),
 * output to OUT.log; returns the pid. */
static pid_t start_train(const char *out, int steps, const char *const *extra) {
    fflush(stdout); /* the child's freopen would flush our buffered lines a second time */
    fflush(stderr);
    pid_t pid = fork();
    if (pid != 0) return pid;
    char log[256], steps_s[16];
    snprintf(log, sizeof log, "%s.log", out);
    snprintf(steps_s, sizeof steps_s, "%d", steps);
    if (!freopen(log, "a", stdout) || !freopen(log, "a", stderr)) _exit(127);
    const char *argv[40] = {tessera, "train", "--model", config, "--out", out, "--steps", steps_s, "--batch", "2",
                            "--seq", "64", "--threads", "1", "--eval-every", "0", "--log-every", "5",
                            "--sample-prompt", "", "--warmup-steps", "2"};
    int n = 22;
    for (int i = 0; extra && extra[i]; i++) argv[n++] = extra[i];
    argv[n] = NULL;
    execv(tessera, (char *const *)argv);
    _exit(127);
}

static int train(const char *out, int steps, const char *const *extra) {
    int st;
    if (waitpid(start_train(out, steps, extra), &st, 0) < 0) return -1;
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

#define ARGS(...) ((const char *const[]){__VA_ARGS__, NULL})

/* Whether dir_a/file and dir_b/file are byte-identical. */
static bool same_file(const char *a, const char *b, const char *file) {
    char pa[512], pb[512];
    snprintf(pa, sizeof pa, "%s/%s", a, file);
    snprintf(pb, sizeof pb, "%s/%s", b, file);
    size_t na = 0, nb = 0;
    void *da = test_read_file(pa, &na), *db = test_read_file(pb, &nb);
    bool same = da && db && na == nb && memcmp(da, db, na) == 0;
    free(da);
    free(db);
    return same;
}

static bool exists(const char *dir, const char *file) {
    char p[512];
    snprintf(p, sizeof p, "%s/%s", dir, file);
    return access(p, F_OK) == 0;
}

enum { N = 6 };

/* 1. 2N straight vs N + resume + N in the given precision; final_straight gets the straight
 * run's final/ directory. */
static void resume_exact(const char *precision, char *final_straight, size_t size) {
    char straight[128], resumed[128], final_b[160], cmd[512];
    snprintf(straight, sizeof straight, "%s/straight-%s", work, precision);
    snprintf(resumed, sizeof resumed, "%s/resumed-%s", work, precision);
    CHECK(train(straight, 2 * N, ARGS("--precision", precision)) == 0, "straight run failed (see %s.log)", straight);
    CHECK(train(resumed, 2 * N, ARGS("--precision", precision, "--save-every", "6")) == 0, "run with checkpoints failed");
    /* remove what came after step N, as if the process had ended there */
    snprintf(cmd, sizeof cmd, "rm -rf '%s/final' '%s/ckpt-12'", resumed, resumed);
    CHECK(system(cmd) == 0, "trim");
    CHECK(train(resumed, 2 * N, ARGS("--precision", precision, "--save-every", "6", "--resume")) == 0,
          "resume failed (see %s.log)", resumed);
    snprintf(final_straight, size, "%s/final", straight);
    snprintf(final_b, sizeof final_b, "%s/final", resumed);
    CHECK(same_file(final_straight, final_b, "model.safetensors"), "%s: resumed weights differ from the straight run",
          precision);
    CHECK(exists(straight, "metrics.jsonl") && exists(straight, "loss.svg") && exists(straight, "train_config.json"),
          "run directory files");
    /* the precision is in the saved config and the first lines of the log */
    char path[256], want[64];
    snprintf(path, sizeof path, "%s/train_config.json", straight);
    char *json = test_read_file(path, NULL);
    snprintf(path, sizeof path, "%s.log", straight);
    char *log = test_read_file(path, NULL);
    snprintf(want, sizeof want, "\"precision\": \"%s\"", precision);
    CHECK(json && strstr(json, want), "train_config.json lacks %s", want);
    snprintf(want, sizeof want, ", %s", strcmp(precision, "bf16") == 0 ? "bf16 (f32 master weights) compute" : "f32 compute");
    CHECK(log && strstr(log, want), "the log does not say '%s'", want);
    free(json);
    free(log);
    printf("  %s resume: %d steps straight vs %d + resume + %d: final weights byte-identical\n", precision, 2 * N, N, N);
}

int main(void) {
    if (!find_binary()) {
        CHECK(false, "no tessera binary beside this test (%s)", tessera);
        return check_summary("train_cli");
    }
    snprintf(work, sizeof work, "/tmp/ts_train_cli_%d", (int)getpid());
    mkdir(work, 0777);
    write_config();
    char final_a[160], final_h[160], killed[128];
    resume_exact("f32", final_a, sizeof final_a);
    resume_exact("bf16", final_h, sizeof final_h);
    size_t na = 0, nh = 0;
    char path[256], cmd[512];
    snprintf(path, sizeof path, "%s/model.safetensors", final_a);
    free(test_read_file(path, &na));
    snprintf(path, sizeof path, "%s/model.safetensors", final_h);
    free(test_read_file(path, &nh));
    CHECK(na > 0 && na == nh && !same_file(final_a, final_h, "model.safetensors"),
          "bf16 checkpoint: f32 like the f32 run's (%zu vs %zu bytes), other values", nh, na);
    /* recomputation changes memory, not numbers: the same final weights as the straight f32 run */
    char recomputed[128], final_r[160];
    snprintf(recomputed, sizeof recomputed, "%s/recomputed", work);
    CHECK(train(recomputed, 2 * N, ARGS("--recompute")) == 0, "--recompute run failed (see %s.log)", recomputed);
    snprintf(final_r, sizeof final_r, "%s/final", recomputed);
    CHECK(same_file(final_a, final_r, "model.safetensors"), "--recompute changed the trained weights");
    snprintf(path, sizeof path, "%s.log", recomputed);
    char *log = test_read_file(path, NULL);
    CHECK(log && strstr(log, "activation recomputation: "), "the log does not give both peaks");
    free(log);
    printf("  --recompute: final weights byte-identical to the run without\n");
    snprintf(killed, sizeof killed, "%s/killed", work);

    /* 2. SIGKILL at random moments (a checkpoint every step), then resume to the end */
    srand((unsigned)time(NULL));
    int verified = 0;
    for (int round = 0; round < 3; round++) {
        pid_t pid = start_train(killed, 2 * N, ARGS("--save-every", "1", "--keep-last", "2", "--resume"));
        struct timespec ts = {0, (long)(300 + rand() % 1200) * 1000000L};
        nanosleep(&ts, NULL);
        kill(pid, SIGKILL);
        int st;
        waitpid(pid, &st, 0);
        ts_train_ckpt *ck = NULL;
        ts_io_error ioe;
        ts_status s = ts_train_ckpt_open_latest(killed, NULL, NULL, &ck, &ioe);
        CHECK(s == TS_OK, "after kill %d: %s", round, ioe.message);
        if (ck) verified++;
        ts_train_ckpt_close(ck);
    }
    CHECK(train(killed, 2 * N, ARGS("--save-every", "1", "--keep-last", "2", "--resume")) == 0, "final resume failed");
    char final_k[160];
    snprintf(final_k, sizeof final_k, "%s/final", killed);
    CHECK(same_file(final_a, final_k, "model.safetensors"), "killed + resumed weights differ from the straight run");
    printf("  SIGKILL 3 times at random moments (%d left a verified checkpoint); resumed to the end: weights byte-identical\n",
           verified);

    /* 3. errors */
    char bad[256];
    snprintf(bad, sizeof bad, "%s/bad", work);
    CHECK(train(bad, 2, ARGS("--lr", "banana")) == 2, "a bad value is a usage error");
    CHECK(train(bad, 2, ARGS("--no-such-option", "1")) == 2, "an unknown option is a usage error");
    /* a shape whose activations cannot be allocated (hundreds of GiB): one line that says what to change */
    char oom[256], oom_log[300];
    snprintf(oom, sizeof oom, "%s/oom", work);
    snprintf(oom_log, sizeof oom_log, "%s.log", oom);
    CHECK(train(oom, 4, ARGS("--batch", "100000")) == 1, "an arena too large for memory is a failure (exit 1)");
    char *text = test_read_file(oom_log, NULL);
    CHECK(text && strstr(text, "could not allocate the arena") && strstr(text, "lower --batch or --seq"),
          "out-of-memory message: %s", text ? text : "(no log)");
    free(text);
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", work);
    CHECK(system(cmd) == 0, "cleanup");
    return check_summary("train_cli");
}
