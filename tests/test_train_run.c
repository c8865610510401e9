/* test_train_run.c - the model-independent half of `tessera train` (train.h): the run config
 * (defaults against the tiny recipe, JSON + flag layering, every error class), the run directory,
 * metrics.jsonl and loss.svg read back independently, the progress line's formatting, and the
 * checkpoints: bitwise round trip of tensors and state, keep-last, fallback past corrupt and
 * incomplete checkpoints, and processes killed with SIGKILL at random moments while saving. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <jansson.h>
#include <math.h>
#include <poll.h>
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
#include "tessera/train.h"

static char tmp_root[64];

static void path_in(char *buf, size_t cap, const char *rel) { snprintf(buf, cap, "%s/%s", tmp_root, rel); }

static void write_text(const char *path, const char *text) {
    FILE *f = fopen(path, "wb");
    if (f) {
        fputs(text, f);
        fclose(f);
    }
}

static void remove_all(const char *path) {
    DIR *d = opendir(path);
    if (!d) {
        unlink(path);
        return;
    }
    struct dirent *e;
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        char child[4096];
        snprintf(child, sizeof child, "%s/%s", path, e->d_name);
        remove_all(child);
    }
    closedir(d);
    rmdir(path);
}

static bool exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0;
}

/* Entries of dir whose name contains `part`. */
static int count_entries(const char *dir, const char *part) {
    DIR *d = opendir(dir);
    int n = 0;
    struct dirent *e;
    while (d && (e = readdir(d)))
        if (strstr(e->d_name, part)) n++;
    if (d) closedir(d);
    return n;
}

/* ================================================================ run config */

/* The options the brief lists, typed here independently of the table in train_config.c. */
static const char *const every_flag[] = {
    "--config", "--model", "--data", "--steps", "--batch", "--seq", "--threads", "--precision", "--seed",
    "--save-every", "--out", "--resume", "--lr", "--min-lr-ratio", "--warmup-steps", "--schedule",
    "--decay-fraction", "--decay-shape", "--weight-decay", "--grad-clip", "--grad-accum", "--eval-every",
    "--eval-batches", "--keep-last", "--log-every", "--optimizer", "--mtp-weight", "--sample-prompt",
    "--sample-tokens", "--recompute"};

static void test_config_defaults(void) {
    ts_train_config c;
    ts_train_config_default(&c);
    ts_io_error err;
    CHECK(ts_train_config_check(&c, &err) == TS_OK, "defaults check: %s", err.message);
    /* spec §7.2: batch 8 x 256, the tiny schedule, MTP 0.3, Muon */
    CHECK(c.batch == 8 && c.seq == 256, "batch %lld seq %lld", (long long)c.batch, (long long)c.seq);
    ts_lr_schedule got = ts_train_config_lr_schedule(&c), want = ts_lr_schedule_tiny(c.steps);
    CHECK(got.kind == want.kind && got.peak_lr == want.peak_lr && got.warmup_steps == want.warmup_steps &&
              got.total_steps == want.total_steps && fabs(got.final_lr - want.final_lr) < 1e-18 &&
              got.decay_fraction == want.decay_fraction && got.decay_shape == want.decay_shape,
          "schedule differs from ts_lr_schedule_tiny: warmup %lld final %g", (long long)got.warmup_steps, got.final_lr);
    CHECK(c.mtp_weight == TS_MTP_WEIGHT && c.optimizer == TS_TRAIN_OPTIM_MUON && c.precision == TS_F32,
          "mtp %g optimizer %d", c.mtp_weight, (int)c.optimizer);
    CHECK(strcmp(c.model, "tiny") == 0 && c.out[0] == '\0' && !c.resume, "model '%s'", c.model);

    /* warm-up -1 = min(100, steps / 10) */
    char *short_run[] = {"--steps", "50"};
    ts_train_config_default(&c);
    CHECK(ts_train_config_parse_args(&c, 2, short_run, &err) == TS_OK && c.warmup_steps == 5, "warmup %lld: %s",
          (long long)c.warmup_steps, err.message);
}

static void test_config_layers(void) {
    char path[256];
    path_in(path, sizeof path, "run.json");
    write_text(path, "{\"steps\": 400, \"lr\": 0.0025, \"schedule\": \"cosine\", \"data\": \"shards\",\n"
                     " \"recompute\": true, \"keep_last\": 5, \"sample_prompt\": \"2+2=\", \"seed\": 7}\n");
    ts_train_config c;
    ts_io_error err;
    ts_train_config_default(&c);
    CHECK(ts_train_config_load_json(&c, path, &err) == TS_OK, "load: %s", err.message);
    CHECK(c.steps == 400 && c.lr == 0.0025 && c.schedule == TS_LR_COSINE && !strcmp(c.data, "shards") && c.recompute &&
              c.keep_last == 5 && !strcmp(c.sample_prompt, "2+2=") && c.seed == 7,
          "file values not applied");
    CHECK(c.batch == 8 && c.grad_clip == 1.0, "untouched keys changed");

    /* Flags override the file wherever --config stands; both --k v and --k=v. */
    char cfg_flag[300];
    snprintf(cfg_flag, sizeof cfg_flag, "--config=%s", path);
    char *argv[] = {"--steps", "900", cfg_flag, "--lr=3e-4", "--resume", "--optimizer", "adamw", "--precision", "bf16",
                    "--out", "runs/x", "--recompute=false", "--warmup-steps", "-1"};
    ts_train_config_default(&c);
    CHECK(ts_train_config_parse_args(&c, (int)(sizeof argv / sizeof *argv), argv, &err) == TS_OK, "args: %s", err.message);
    CHECK(c.steps == 900 && c.lr == 3e-4 && c.resume && c.optimizer == TS_TRAIN_OPTIM_ADAMW && c.precision == TS_BF16 &&
              !strcmp(c.out, "runs/x") && !c.recompute && c.keep_last == 5 && c.schedule == TS_LR_COSINE,
          "layering wrong: steps %lld lr %g", (long long)c.steps, c.lr);
    CHECK(c.warmup_steps == 90, "auto warm-up at 900 steps: %lld", (long long)c.warmup_steps);

    /* The saved effective config loads back to the same values. */
    char saved[256];
    path_in(saved, sizeof saved, "effective.json");
    c.lr = 1e-3 / 3; /* needs all 17 digits: the JSON must carry every bit */
    c.seed = 0x7fffffffffffffffULL;
    CHECK(ts_train_config_save(&c, saved, &err) == TS_OK, "save: %s", err.message);
    ts_train_config back;
    ts_train_config_default(&back);
    CHECK(ts_train_config_load_json(&back, saved, &err) == TS_OK, "reload: %s", err.message);
    char *a = ts_train_config_to_json(&c), *b = ts_train_config_to_json(&back);
    CHECK(a && b && strcmp(a, b) == 0, "reloaded config differs:\n%s\n%s", a, b);
    CHECK(back.lr == c.lr && back.seed == c.seed && back.precision == TS_BF16 && !strcmp(back.out, "runs/x"),
          "fields differ after reload");
    free(a);
    free(b);

    /* The hash follows the trained numbers only. */
    uint64_t h = ts_train_config_hash(&c);
    back = c;
    back.threads = 3;
    back.log_every = 1;
    back.keep_last = 1;
    CHECK(ts_train_config_hash(&back) == h, "hash changed with threads / logging");
    back.lr = c.lr * 2;
    CHECK(ts_train_config_hash(&back) != h, "hash ignores lr");
    back = c;
    back.seed++;
    CHECK(ts_train_config_hash(&back) != h, "hash ignores the seed");
}

typedef struct {
    const char *json;   /* a file's text, or NULL */
    const char *args[4];
    ts_status want;
    const char *names;  /* the message must contain this */
} bad_case;

static void test_config_errors(void) {
    const bad_case cases[] = {
        {"{\"stepz\": 3}", {0}, TS_ERR_FORMAT, "stepz"},
        {"{\"steps\": \"10\"}", {0}, TS_ERR_FORMAT, "steps"},
        {"{\"steps\": 10.5}", {0}, TS_ERR_FORMAT, "steps"},
        {"{\"lr\": \"fast\"}", {0}, TS_ERR_FORMAT, "lr"},
        {"{\"resume\": 1}", {0}, TS_ERR_FORMAT, "resume"},
        {"{\"model\": 4}", {0}, TS_ERR_FORMAT, "model"},
        {"[1, 2]", {0}, TS_ERR_FORMAT, "object"},
        {"{\"steps\": 10,}", {0}, TS_ERR_FORMAT, ":1:"},
        {"{\"steps\": 1, \"steps\": 2}", {0}, TS_ERR_FORMAT, "steps"},
        {"{\"batch\": 0}", {0}, TS_ERR_RANGE, "batch"},
        {"{\"precision\": \"f16\"}", {0}, TS_ERR_RANGE, "precision"},
        {"{\"decay_fraction\": 0}", {0}, TS_ERR_RANGE, "decay_fraction"},
        {"{\"seed\": -1}", {0}, TS_ERR_RANGE, "seed"},
        {"{\"grad_clip\": -0.5}", {0}, TS_ERR_RANGE, "grad_clip"},
        {NULL, {"--stepz", "3"}, TS_ERR_FORMAT, "--stepz"},
        {NULL, {"--steps", "12x"}, TS_ERR_FORMAT, "--steps"},
        {NULL, {"--steps"}, TS_ERR_FORMAT, "--steps"},
        {NULL, {"--lr", "-1"}, TS_ERR_RANGE, "lr"},
        {NULL, {"--lr", "nan"}, TS_ERR_RANGE, "lr"},
        {NULL, {"--resume=maybe"}, TS_ERR_FORMAT, "--resume"},
        {NULL, {"--schedule", "linear"}, TS_ERR_RANGE, "--schedule"},
        {NULL, {"steps", "10"}, TS_ERR_FORMAT, "steps"},
        {NULL, {"--steps", "100", "--warmup-steps", "100"}, TS_ERR_RANGE, "warmup_steps"},
        {NULL, {"--seed", "-4"}, TS_ERR_RANGE, "--seed"},
        {NULL, {"--model", ""}, TS_ERR_RANGE, "model"},
        {NULL, {"--config", "/nonexistent/run.json"}, TS_ERR_IO, "/nonexistent/run.json"},
        {NULL, {"--config=a.json", "--config=b.json"}, TS_ERR_FORMAT, "--config"},
    };
    char path[256];
    path_in(path, sizeof path, "bad.json");
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        const bad_case *t = &cases[i];
        ts_train_config c;
        ts_train_config_default(&c);
        ts_io_error err = {0};
        ts_status s;
        if (t->json) {
            write_text(path, t->json);
            s = ts_train_config_load_json(&c, path, &err);
        } else {
            int argc = 0;
            while (argc < 4 && t->args[argc]) argc++;
            s = ts_train_config_parse_args(&c, argc, (char *const *)t->args, &err);
        }
        CHECK(s == t->want, "case %zu: %s -> %s, want %s (%s)", i, t->json ? t->json : t->args[0], ts_status_name(s),
              ts_status_name(t->want), err.message);
        CHECK(strstr(err.message, t->names) && !strchr(err.message, '\n'), "case %zu: message '%s' should name '%s'", i,
              err.message, t->names);
    }
    /* A value longer than the field is refused, not cut. */
    char long_text[TS_TRAIN_TEXT_MAX + 10];
    memset(long_text, 'a', sizeof long_text - 1);
    long_text[sizeof long_text - 1] = '\0';
    char *argv[] = {"--out", long_text};
    ts_train_config c;
    ts_train_config_default(&c);
    ts_io_error err;
    CHECK(ts_train_config_parse_args(&c, 2, argv, &err) == TS_ERR_RANGE && strstr(err.message, "--out"), "long --out: %s",
          err.message);
}

static void test_config_help(void) {
    size_t n = ts_train_config_help(NULL, 0);
    char *help = malloc(n + 1);
    CHECK(ts_train_config_help(help, n + 1) == n && strlen(help) == n, "help length");
    for (size_t i = 0; i < sizeof every_flag / sizeof *every_flag; i++) {
        char with_space[64];
        snprintf(with_space, sizeof with_space, "%s ", every_flag[i]);
        CHECK(strstr(help, with_space) != NULL, "help does not document %s", every_flag[i]);
    }
    /* ...and every key of the saved config is a documented flag. */
    ts_train_config c;
    ts_train_config_default(&c);
    char *text = ts_train_config_to_json(&c);
    json_t *root = json_loads(text, 0, NULL);
    const char *key;
    json_t *v;
    size_t n_keys = 0;
    json_object_foreach(root, key, v) {
        char flag[64] = "--";
        for (size_t k = 0; key[k] && k < 60; k++) flag[2 + k] = key[k] == '_' ? '-' : key[k];
        CHECK(strstr(help, flag) != NULL, "key %s has no flag in the help", key);
        n_keys++;
    }
    CHECK(n_keys + 1 == sizeof every_flag / sizeof *every_flag, "%zu keys, %zu known flags", n_keys,
          sizeof every_flag / sizeof *every_flag);
    json_decref(root);
    free(text);
    char small[16];
    CHECK(ts_train_config_help(small, sizeof small) == n && strlen(small) == sizeof small - 1, "help truncation");
    free(help);
}

/* ================================================================ run directory, metrics, plot */

static void test_run_dir(void) {
    char root[256], p1[512], p2[512], p3[512], want[512];
    path_in(root, sizeof root, "runs");
    time_t when = 1700000000;
    ts_io_error err;
    CHECK(ts_run_dir_create(NULL, root, when, p1, sizeof p1, &err) == TS_OK, "create: %s", err.message);
    CHECK(ts_run_dir_create("", root, when, p2, sizeof p2, &err) == TS_OK, "create 2: %s", err.message);
    CHECK(ts_run_dir_create(NULL, root, when, p3, sizeof p3, &err) == TS_OK, "create 3: %s", err.message);
    char stamp[32];
    struct tm tm;
    strftime(stamp, sizeof stamp, "%Y%m%d-%H%M%S", localtime_r(&when, &tm));
    snprintf(want, sizeof want, "%s/%s", root, stamp);
    CHECK(strcmp(p1, want) == 0, "%s, want %s", p1, want);
    snprintf(want, sizeof want, "%s/%s-2", root, stamp);
    CHECK(strcmp(p2, want) == 0, "%s, want %s", p2, want);
    snprintf(want, sizeof want, "%s/%s-3", root, stamp);
    CHECK(strcmp(p3, want) == 0 && exists(p3), "%s, want %s", p3, want);

    char out[256];
    path_in(out, sizeof out, "explicit/a/b");
    CHECK(ts_run_dir_create(out, NULL, when, p1, sizeof p1, &err) == TS_OK && !strcmp(p1, out) && exists(out),
          "explicit --out: %s", err.message);
    CHECK(ts_run_dir_create(out, NULL, when, p1, sizeof p1, &err) == TS_OK, "existing --out reused: %s", err.message);
    CHECK(count_entries(out, "write-test") == 0, "probe file left behind");

    /* A path through a regular file can be created by no one, root included. */
    char file[256], bad[300];
    path_in(file, sizeof file, "plain-file");
    write_text(file, "x");
    snprintf(bad, sizeof bad, "%s/run", file);
    CHECK(ts_run_dir_create(bad, NULL, when, p1, sizeof p1, &err) == TS_ERR_IO && strstr(err.message, bad) &&
              !strchr(err.message, '\n'),
          "unwritable: %s", err.message);
    if (geteuid() != 0) {
        char ro[256];
        path_in(ro, sizeof ro, "read-only");
        mkdir(ro, 0555);
        CHECK(ts_run_dir_create(ro, NULL, when, p1, sizeof p1, &err) == TS_ERR_IO, "read-only dir accepted");
    }
}

static json_t *line_json(const char *text, int index) {
    const char *p = text;
    for (int i = 0; i < index && p; i++) p = strchr(p, '\n') ? strchr(p, '\n') + 1 : NULL;
    if (!p) return NULL;
    const char *end = strchr(p, '\n');
    return end ? json_loadb(p, (size_t)(end - p), 0, NULL) : NULL;
}

static int count_lines(const char *text) {
    int n = 0;
    for (const char *p = text; *p; p++) n += *p == '\n';
    return n;
}

static void test_metrics(void) {
    char dir[256], path[300];
    path_in(dir, sizeof dir, "metrics-run");
    mkdir(dir, 0777);
    ts_metrics_log *m;
    ts_io_error err;
    CHECK(ts_metrics_open(dir, -1, &m, &err) == TS_OK, "open: %s", err.message);
    snprintf(path, sizeof path, "%s/metrics.jsonl", dir);
    CHECK(m && !strcmp(ts_metrics_path(m), path), "path");
    const double load[4] = {3, 0, 17, 4}, val = 2.5, bad = NAN;
    const ts_metric_extra extras[] = {{"expert_load.0", load, 4}, {"val_loss", &val, 1}, {"grad_norm", &bad, 1}};
    for (int s = 1; s <= 10; s++) {
        ts_metrics_row row = {.step = s, .loss = 4.0 / s, .lr = 1e-4 * s, .tokens_per_s = 1000.5 * s,
                              .extras = s == 5 ? extras : NULL, .n_extras = s == 5 ? 3 : 0};
        if (s == 7) row.loss = NAN;
        CHECK(ts_metrics_write(m, &row, &err) == TS_OK, "write: %s", err.message);
        /* flushed per line: the file holds every row at once */
        char *now = test_read_file(path, NULL);
        CHECK(now && count_lines(now) == s, "after row %d the file has %d lines", s, now ? count_lines(now) : -1);
        free(now);
    }
    ts_metrics_close(m);
    char *text = test_read_file(path, NULL);
    json_t *r5 = line_json(text, 4), *r7 = line_json(text, 6), *r10 = line_json(text, 9);
    CHECK(r5 && json_integer_value(json_object_get(r5, "step")) == 5, "row 5");
    CHECK(fabs(json_number_value(json_object_get(r5, "loss")) - 0.8) < 1e-12 &&
              fabs(json_number_value(json_object_get(r5, "lr")) - 5e-4) < 1e-15 &&
              fabs(json_number_value(json_object_get(r5, "tokens_per_s")) - 5002.5) < 1e-9,
          "row 5 numbers");
    json_t *arr = json_object_get(r5, "expert_load.0");
    CHECK(json_array_size(arr) == 4 && json_number_value(json_array_get(arr, 2)) == 17, "array extra");
    CHECK(json_number_value(json_object_get(r5, "val_loss")) == 2.5, "scalar extra");
    CHECK(json_is_null(json_object_get(r5, "grad_norm")), "NaN extra must be null");
    CHECK(r7 && !json_object_get(r7, "loss") && json_object_get(r7, "lr"), "NaN loss must be left out");
    CHECK(r10 && fabs(json_number_value(json_object_get(r10, "loss")) - 0.4) < 1e-12, "row 10");
    json_decref(r5);
    json_decref(r7);
    json_decref(r10);
    free(text);

    /* A crash left a torn line; the resumed run (from step 6) cuts back and appends. */
    FILE *f = fopen(path, "ab");
    fputs("{\"step\": 11, \"lo", f);
    fclose(f);
    CHECK(ts_metrics_open(dir, 6, &m, &err) == TS_OK, "reopen: %s", err.message);
    ts_metrics_row row = {.step = 7, .loss = 9, .lr = NAN, .tokens_per_s = NAN};
    CHECK(ts_metrics_write(m, &row, &err) == TS_OK, "append: %s", err.message);
    ts_metrics_close(m);
    text = test_read_file(path, NULL);
    CHECK(count_lines(text) == 7, "after resume: %d lines", count_lines(text));
    for (int i = 0; i < 7; i++) {
        json_t *r = line_json(text, i);
        CHECK(r && json_integer_value(json_object_get(r, "step")) == i + 1, "line %d after resume", i);
        if (i == 6) CHECK(json_number_value(json_object_get(r, "loss")) == 9 && !json_object_get(r, "lr"), "new row 7");
        json_decref(r);
    }
    free(text);
}

/* The points of the first polyline, and the number of <circle> elements inside the val group. */
static int svg_points(const char *svg, double *x, double *y, int cap) {
    const char *p = strstr(svg, "<polyline");
    p = p ? strstr(p, "points=\"") : NULL;
    if (!p) return 0;
    p += 8;
    int n = 0, used;
    while (n < cap && sscanf(p, "%lf,%lf%n", &x[n], &y[n], &used) == 2) {
        n++;
        p += used;
        while (*p == ' ') p++;
    }
    return n;
}

static int val_circles(const char *svg, double *cx, double *cy, int cap) {
    const char *p = strstr(svg, "<g class=\"val\"");
    const char *end = p ? strstr(p, "</g>") : NULL;
    int n = 0;
    while (p && (p = strstr(p, "<circle cx=\"")) && p < end && n < cap) {
        sscanf(p, "<circle cx=\"%lf\" cy=\"%lf\"", &cx[n], &cy[n]);
        n++;
        p++;
    }
    return n;
}

static double train_loss_at(int s) { return 4.0 * exp(-s / 25.0) + 1.0; }

static void check_plot(const char *svg_path, bool log_y) {
    enum { N = 100 };
    size_t size;
    char *svg = test_read_file(svg_path, &size);
    CHECK(svg && !strncmp(svg, "<?xml", 5) && strstr(svg, "<svg xmlns=\"http://www.w3.org/2000/svg\"") &&
              size > 7 && !strcmp(svg + size - 7, "</svg>\n"),
          "not a complete SVG document");
    if (!svg) return;
    static double x[2 * N], y[2 * N];
    int n = svg_points(svg, x, y, 2 * N);
    CHECK(n == N, "%d train points, want %d (one per step)", n, N);
    /* y must be an affine function of the loss (or of its log): fit from the ends, check all,
     * including step 50, which was logged twice and must show the second value. */
    double f0 = log_y ? log(train_loss_at(1)) : train_loss_at(1), f1 = log_y ? log(train_loss_at(N)) : train_loss_at(N);
    double slope = (y[N - 1] - y[0]) / (f1 - f0);
    double worst = 0;
    for (int i = 0; i < n; i++) {
        double loss = i + 1 == 50 ? 1.5 : train_loss_at(i + 1);
        double f = log_y ? log(loss) : loss;
        worst = fmax(worst, fabs(y[0] + slope * (f - f0) - y[i]));
        if (i) CHECK(x[i] > x[i - 1], "x not increasing at %d", i);
    }
    CHECK(slope < 0 && worst < 0.02, "y off the loss mapping by %.3f px (slope %g)", worst, slope);
    CHECK(fabs((x[1] - x[0]) - (x[N - 1] - x[N - 2])) < 0.02, "x not linear in the step");
    double cx[16], cy[16];
    int nv = val_circles(svg, cx, cy, 16);
    CHECK(nv == 5, "%d val points, want 5", nv);
    for (int i = 0; i < nv; i++) {
        int s = 20 * (i + 1);
        double f = log_y ? log(train_loss_at(s) + 0.2) : train_loss_at(s) + 0.2;
        CHECK(fabs(cx[i] - x[s - 1]) < 0.02 && fabs(y[0] + slope * (f - f0) - cy[i]) < 0.02, "val point %d misplaced", i);
    }
    CHECK(strstr(svg, ">step</text>") && strstr(svg, "train loss") && strstr(svg, "val loss") &&
              strstr(svg, log_y ? "loss (log scale)" : ">loss</text>"),
          "labels or legend missing");
    CHECK(strstr(svg, "class=\"xtick\"") && strstr(svg, ">20</text>") && strstr(svg, ">100</text>"), "x tick labels");
    CHECK(strstr(svg, log_y ? ">2</text>" : ">3</text>") && strstr(svg, "class=\"ytick\""), "y tick labels");
    free(svg);
}

static void test_loss_plot(void) {
    char dir[256], metrics[300], svg[300];
    path_in(dir, sizeof dir, "plot-run");
    mkdir(dir, 0777);
    snprintf(metrics, sizeof metrics, "%s/metrics.jsonl", dir);
    snprintf(svg, sizeof svg, "%s/loss.svg", dir);
    ts_metrics_log *m;
    ts_io_error err;
    CHECK(ts_metrics_open(dir, -1, &m, &err) == TS_OK, "open: %s", err.message);
    for (int s = 1; s <= 100; s++) {
        double val = train_loss_at(s) + 0.2;
        ts_metric_extra extra = {"val_loss", &val, 1};
        ts_metrics_row row = {.step = s, .loss = s == 50 ? 9.0 : train_loss_at(s), .lr = 1e-3, .tokens_per_s = 100,
                              .extras = s % 20 == 0 ? &extra : NULL, .n_extras = s % 20 == 0};
        ts_metrics_write(m, &row, &err);
    }
    ts_metrics_row again = {.step = 50, .loss = 1.5, .lr = NAN, .tokens_per_s = NAN}; /* logged twice: last wins */
    ts_metrics_write(m, &again, &err);
    ts_metrics_close(m);
    FILE *f = fopen(metrics, "ab");
    fputs("{\"step\": 7, \"task_accuracy\": 0.5}\nnot json\n{\"step\": 101, \"loss\": 0.", f); /* skipped */
    fclose(f);
    CHECK(ts_loss_plot_write(metrics, svg, false, &err) == TS_OK, "plot: %s", err.message);
    check_plot(svg, false);
    CHECK(ts_loss_plot_write(metrics, svg, true, &err) == TS_OK, "log plot: %s", err.message);
    check_plot(svg, true);
    CHECK(count_entries(dir, ".tmp") == 0, "temporary file left");

    write_text(metrics, "");
    CHECK(ts_loss_plot_write(metrics, svg, false, &err) == TS_OK, "empty plot: %s", err.message);
    char *text = test_read_file(svg, NULL);
    CHECK(text && strstr(text, "no data yet") && strstr(text, "</svg>"), "empty plot text");
    free(text);
    char missing[300];
    snprintf(missing, sizeof missing, "%s/none.jsonl", dir);
    CHECK(ts_loss_plot_write(missing, svg, false, &err) == TS_ERR_IO && strstr(err.message, "none.jsonl"), "missing log");
}

/* ================================================================ progress */

static void test_progress_format(void) {
    char b[64];
    const struct {
        double v;
        const char *want;
    } si[] = {{950, "950"}, {12345, "12.3k"}, {4560000, "4.56M"}, {999999, "1.00M"}, {1.2e9, "1.20G"},
              {999.6, "1.00k"}, {0, "0"}, {NAN, "--"}};
    for (size_t i = 0; i < sizeof si / sizeof *si; i++) {
        ts_format_si(si[i].v, b, sizeof b);
        CHECK(!strcmp(b, si[i].want), "si(%g) = '%s', want '%s'", si[i].v, b, si[i].want);
    }
    const struct {
        double s;
        const char *want;
    } du[] = {{42, "42s"}, {252, "4m12s"}, {59.6, "1m00s"}, {3725, "1h02m"}, {3 * 86400 + 4 * 3600 + 59, "3d04h"},
              {0, "0s"}, {NAN, "--"}, {-1, "--"}};
    for (size_t i = 0; i < sizeof du / sizeof *du; i++) {
        ts_format_duration(du[i].s, b, sizeof b);
        CHECK(!strcmp(b, du[i].want), "duration(%g) = '%s', want '%s'", du[i].s, b, du[i].want);
    }
    ts_progress_line p = {120, 2000, 2.345, 3e-4, 12300, 252, 0};
    char line[128];
    size_t n = ts_progress_format(&p, line, sizeof line);
    const char *want = "step 120/2000 | loss 2.345 | lr 3.0e-4 | 12.3k tok/s | ETA 4m12s";
    CHECK(!strcmp(line, want) && n == strlen(want), "'%s'", line);
    p.mfu = 0.0314;
    ts_progress_format(&p, line, sizeof line);
    CHECK(!strcmp(line, "step 120/2000 | loss 2.345 | lr 3.0e-4 | 12.3k tok/s | MFU 3.1% | ETA 4m12s"), "'%s'", line);
    p = (ts_progress_line){1, 10, NAN, 9.96e-4, NAN, NAN, NAN};
    ts_progress_format(&p, line, sizeof line);
    CHECK(!strcmp(line, "step 1/10 | loss nan | lr 1.0e-3 | -- tok/s | ETA --"), "'%s'", line);
}

static void test_progress_display(void) {
    /* Not a terminal: a line every log_every steps and at the end, no \r. */
    char *out = NULL;
    size_t size = 0;
    FILE *f = open_memstream(&out, &size);
    ts_progress p;
    ts_progress_init(&p, f, 0, 5, 12, 0, 100.0);
    for (int s = 1; s <= 12; s++) ts_progress_update(&p, s, 1.0, 1e-3, 1000, 100.0 + 0.5 * s);
    ts_progress_finish(&p);
    fclose(f);
    CHECK(count_lines(out) == 3 && !strchr(out, '\r'), "plain lines:\n%s", out);
    /* step 5 at 2.5 s: 5000 tokens / 2.5 s = 2.00k tok/s, ETA 2.5 / 5 * 7 = 3.5 s -> 4s */
    CHECK(strstr(out, "step 5/12 | loss 1.000 | lr 1.0e-3 | 2.00k tok/s | ETA 4s\n") != NULL, "first line:\n%s", out);
    CHECK(strstr(out, "step 12/12 |") && strstr(out, "ETA 0s\n"), "last line:\n%s", out);
    free(out);

    /* A terminal: redrawn in place at most every 0.1 s, always at the last step. */
    f = open_memstream(&out, &size);
    ts_progress_init(&p, f, 1, 5, 10, 0, 0.0);
    for (int s = 1; s <= 10; s++) ts_progress_update(&p, s, s == 3 ? 123456.0 : 1.0, 1e-3, 10, 0.06 * s);
    size_t before_finish = 0;
    fflush(f);
    before_finish = size;
    ts_progress_finish(&p);
    fclose(f);
    int redraws = 0;
    for (size_t i = 0; i < size; i++) redraws += out[i] == '\r';
    /* draws at t = 0.06 (first), 0.18, 0.30, 0.42, 0.54 and the last step 0.60 */
    CHECK(redraws == 6, "%d redraws, want 6", redraws);
    CHECK(!memchr(out, '\n', before_finish) && out[size - 1] == '\n', "newline only at finish");
    free(out);

    /* A resumed run: throughput and ETA count this process's steps only. */
    f = open_memstream(&out, &size);
    ts_progress_init(&p, f, 0, 1, 200, 100, 50.0);
    ts_progress_update(&p, 101, 2.0, 1e-3, 4096, 51.0);
    fclose(f);
    CHECK(strstr(out, "step 101/200 | loss 2.000 | lr 1.0e-3 | 4.10k tok/s | ETA 1m39s") != NULL, "resume: %s", out);
    free(out);
}

/* ================================================================ checkpoints */

/* A deterministic value for element i of tensor t at step s. */
static uint64_t mix(uint64_t x) {
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

enum { N_T = 5 };

typedef struct {
    int64_t shapes[N_T][2];
    float *f32[3];      /* embed, exp_avg, exp_avg_sq */
    uint16_t *bf16;     /* norm */
    int64_t *i64;       /* tid2eid */
    ts_st_write_tensor weights[3], optim[2];
    char config[128], tokenizer[256];
    ts_train_ckpt_file files[1];
    ts_st_metadata meta[1];
    ts_train_ckpt_contents c;
} fake_ckpt;

static void fill_f32(float *x, int64_t n, int64_t step, int t) {
    for (int64_t i = 0; i < n; i++) {
        uint32_t bits = (uint32_t)mix(((uint64_t)step << 40) ^ ((uint64_t)t << 32) ^ (uint64_t)i);
        memcpy(&x[i], &bits, 4); /* every bit pattern, NaN payloads included: the copy must be exact */
    }
}

/* rows x cols of f32 weights (the size of the checkpoint) plus small tensors of other dtypes. */
static void fake_make(fake_ckpt *k, int64_t step, int64_t rows, int64_t cols) {
    memset(k, 0, sizeof *k);
    int64_t n = rows * cols;
    for (int t = 0; t < 3; t++) {
        k->f32[t] = malloc((size_t)n * sizeof(float));
        fill_f32(k->f32[t], n, step, t);
    }
    k->bf16 = malloc(32 * sizeof *k->bf16);
    k->i64 = malloc(20 * sizeof *k->i64);
    for (int i = 0; i < 32; i++) k->bf16[i] = (uint16_t)mix((uint64_t)step * 77 + (uint64_t)i);
    for (int i = 0; i < 20; i++) k->i64[i] = (int64_t)mix((uint64_t)step * 91 + (uint64_t)i);
    k->shapes[0][0] = rows;
    k->shapes[0][1] = cols;
    k->shapes[1][0] = 32;
    k->shapes[2][0] = 10;
    k->shapes[2][1] = 2;
    k->weights[0] = (ts_st_write_tensor){"embed.weight", TS_ST_F32, 2, k->shapes[0], k->f32[0], (size_t)n * 4};
    k->weights[1] = (ts_st_write_tensor){"layers.0.norm.weight", TS_ST_BF16, 1, k->shapes[1], k->bf16, 64};
    k->weights[2] = (ts_st_write_tensor){"tid2eid", TS_ST_I64, 2, k->shapes[2], k->i64, 160};
    k->optim[0] = (ts_st_write_tensor){"embed.weight.exp_avg", TS_ST_F32, 2, k->shapes[0], k->f32[1], (size_t)n * 4};
    k->optim[1] = (ts_st_write_tensor){"embed.weight.exp_avg_sq", TS_ST_F32, 2, k->shapes[0], k->f32[2], (size_t)n * 4};
    snprintf(k->config, sizeof k->config, "{\"model_type\": \"deepseek_v4\", \"step_written\": %" PRId64 "}\n", step);
    snprintf(k->tokenizer, sizeof k->tokenizer, "{\"version\": \"1.0\", \"step\": %" PRId64 "}", step);
    k->files[0] = (ts_train_ckpt_file){"tokenizer.json", k->tokenizer, strlen(k->tokenizer)};
    k->meta[0] = (ts_st_metadata){"note", "written by test_train_run"};
    ts_train_state st = {.step = step, .tokens_seen = (uint64_t)step * 2048, .config_hash = 0xfedcba9876543210ULL};
    ts_rng_seed(&st.rng, 42);
    for (int64_t i = 0; i < step; i++) ts_rng_next(&st.rng);
    st.data = (ts_data_position){.epoch = (uint64_t)step / 7, .doc_cursor = (uint64_t)step * 3, .token_offset = 5,
                                 .seed = 11, .data_fingerprint = 0x0123456789abcdefULL};
    st.lr = ts_lr_schedule_tiny(1000);
    st.lr.peak_lr = 1e-3 / 3; /* not a short decimal */
    k->c = (ts_train_ckpt_contents){k->weights, 3, k->config, k->files, 1, k->optim, 2, k->meta, 1, st};
}

static void fake_free(fake_ckpt *k) {
    for (int t = 0; t < 3; t++) free(k->f32[t]);
    free(k->bf16);
    free(k->i64);
}

/* Every tensor of ck bitwise equal to the fake's, the state field by field. Returns the number
 * of mismatches (also CHECKed). */
static int compare(ts_train_ckpt *ck, const fake_ckpt *k) {
    int bad = 0;
    const ts_st_write_tensor *lists[2] = {k->weights, k->optim};
    size_t counts[2] = {3, 2};
    ts_checkpoint *files[2] = {ts_train_ckpt_weights(ck), ts_train_ckpt_optim_state(ck)};
    for (int l = 0; l < 2; l++)
        for (size_t i = 0; i < counts[l]; i++) {
            const ts_st_write_tensor *t = &lists[l][i];
            ts_dtype dt;
            ts_st_dtype_to_dtype(t->dtype, &dt);
            void *buf = malloc(t->nbytes);
            ts_io_error err;
            ts_status s = ts_checkpoint_load(files[l], t->name, t->ndim, t->shape, dt, buf, t->nbytes, &err);
            bool same = s == TS_OK && memcmp(buf, t->data, t->nbytes) == 0;
            CHECK(same, "tensor %s differs (%s)", t->name, s == TS_OK ? "bytes" : err.message);
            bad += !same;
            free(buf);
        }
    const ts_train_state *got = ts_train_ckpt_state(ck), *want = &k->c.state;
    bool state_ok = got->step == want->step && !memcmp(got->rng.s, want->rng.s, sizeof got->rng.s) &&
                    got->tokens_seen == want->tokens_seen && got->config_hash == want->config_hash &&
                    got->data.epoch == want->data.epoch && got->data.doc_cursor == want->data.doc_cursor &&
                    got->data.token_offset == want->data.token_offset && got->data.seed == want->data.seed &&
                    got->data.data_fingerprint == want->data.data_fingerprint && got->lr.kind == want->lr.kind &&
                    got->lr.peak_lr == want->lr.peak_lr && got->lr.warmup_steps == want->lr.warmup_steps &&
                    got->lr.total_steps == want->lr.total_steps && got->lr.final_lr == want->lr.final_lr &&
                    got->lr.decay_fraction == want->lr.decay_fraction && got->lr.decay_shape == want->lr.decay_shape;
    CHECK(state_ok, "state differs at step %lld", (long long)want->step);
    bool text_ok = !strcmp(ts_train_ckpt_config_json(ck), k->config) &&
                   ts_train_ckpt_metadata(ck, "note") && !strcmp(ts_train_ckpt_metadata(ck, "note"), "written by test_train_run");
    void *tok = NULL;
    size_t tok_size = 0;
    ts_io_error err;
    text_ok = text_ok && ts_train_ckpt_read_file(ck, "tokenizer.json", &tok, &tok_size, &err) == TS_OK &&
              tok_size == strlen(k->tokenizer) && !memcmp(tok, k->tokenizer, tok_size);
    free(tok);
    CHECK(text_ok, "config, metadata or tokenizer file differs");
    return bad + !state_ok + !text_ok;
}

static int save_fake(const char *run_dir, int64_t step, int keep, const char *name, int64_t rows) {
    fake_ckpt k;
    fake_make(&k, step, rows, 16);
    ts_io_error err;
    ts_status s = ts_train_ckpt_save(run_dir, name, &k.c, keep, NULL, 0, &err);
    CHECK(s == TS_OK, "save step %lld: %s", (long long)step, err.message);
    fake_free(&k);
    return s == TS_OK ? 0 : 1;
}

typedef struct {
    int n;
    char last[600];
} warnings;

static void on_warn(void *user, const char *message) {
    warnings *w = user;
    w->n++;
    snprintf(w->last, sizeof w->last, "%s", message);
}

static int64_t latest_step(const char *run_dir, warnings *w) {
    ts_train_ckpt *ck;
    ts_io_error err;
    ts_status s = ts_train_ckpt_open_latest(run_dir, on_warn, w, &ck, &err);
    CHECK(s == TS_OK, "open latest: %s", err.message);
    int64_t step = ck ? ts_train_ckpt_state(ck)->step : -1;
    ts_train_ckpt_close(ck);
    return step;
}

static void test_ckpt_round_trip(void) {
    char run[256];
    path_in(run, sizeof run, "ckpt-round-trip");
    mkdir(run, 0777);
    fake_ckpt k;
    fake_make(&k, 123, 64, 48);
    char path[512];
    ts_io_error err;
    CHECK(ts_train_ckpt_save(run, NULL, &k.c, 3, path, sizeof path, &err) == TS_OK, "save: %s", err.message);
    char want[512];
    snprintf(want, sizeof want, "%s/ckpt-123", run);
    CHECK(!strcmp(path, want), "saved to %s", path);
    const char *names[] = {"model.safetensors", "config.json", "training_state.safetensors", "manifest.json", "tokenizer.json"};
    for (size_t i = 0; i < 5; i++) {
        char f[600];
        snprintf(f, sizeof f, "%s/%s", path, names[i]);
        CHECK(exists(f), "%s missing", f);
    }
    CHECK(count_entries(run, ".tmp") == 0 && count_entries(path, ".tmp") == 0, "temporary files left");
    /* the manifest's sums are the files' XXH64 */
    char mpath[600];
    snprintf(mpath, sizeof mpath, "%s/manifest.json", path);
    json_t *man = json_load_file(mpath, 0, NULL);
    json_t *entry = json_object_get(json_object_get(man, "files"), "config.json");
    char expect_hex[32];
    snprintf(expect_hex, sizeof expect_hex, "%016" PRIx64, ts_xxh64(k.config, strlen(k.config), 0));
    CHECK(entry && !strcmp(json_string_value(json_object_get(entry, "xxh64")), expect_hex) &&
              json_integer_value(json_object_get(entry, "bytes")) == (json_int_t)strlen(k.config),
          "manifest entry of config.json");
    json_decref(man);

    warnings w = {0};
    ts_train_ckpt *ck;
    CHECK(ts_train_ckpt_open_latest(run, on_warn, &w, &ck, &err) == TS_OK && ck, "open: %s", err.message);
    if (ck) {
        CHECK(!strcmp(ts_train_ckpt_path(ck), want), "opened %s", ts_train_ckpt_path(ck));
        CHECK(compare(ck, &k) == 0, "round trip");
        /* the restored generator continues the same sequence */
        ts_rng a = ts_train_ckpt_state(ck)->rng, b = k.c.state.rng;
        CHECK(ts_rng_next(&a) == ts_rng_next(&b), "rng continuation");
        void *data;
        size_t size;
        CHECK(ts_train_ckpt_read_file(ck, "../secret", &data, &size, &err) == TS_ERR_FORMAT, "unlisted file read");
        ts_train_ckpt_close(ck);
    }
    CHECK(w.n == 0, "warnings on a good checkpoint: %s", w.last);

    /* bad input is refused before anything is written */
    ts_train_ckpt_file bad_file = {"../x", "y", 1};
    ts_train_ckpt_contents c = k.c;
    c.files = &bad_file;
    CHECK(ts_train_ckpt_save(run, "ckpt-5", &c, 3, NULL, 0, &err) == TS_ERR_INVALID_ARG, "path in a file name");
    ts_st_metadata reserved = {"step", "7"};
    c = k.c;
    c.metadata = &reserved;
    CHECK(ts_train_ckpt_save(run, "ckpt-5", &c, 3, NULL, 0, &err) == TS_ERR_INVALID_ARG && strstr(err.message, "step"),
          "reserved metadata key");
    CHECK(ts_train_ckpt_save(run, "a/b", &k.c, 3, NULL, 0, &err) == TS_ERR_INVALID_ARG, "name with a slash");
    char nowhere[300];
    snprintf(nowhere, sizeof nowhere, "%s/missing-dir", run);
    CHECK(ts_train_ckpt_save(nowhere, NULL, &k.c, 3, NULL, 0, &err) == TS_ERR_IO, "missing run dir");
    CHECK(count_entries(run, "ckpt-5") == 0, "a refused save left something");
    fake_free(&k);

    /* no checkpoint at all: a fresh run */
    char empty[256];
    path_in(empty, sizeof empty, "ckpt-empty");
    mkdir(empty, 0777);
    CHECK(ts_train_ckpt_open_latest(empty, NULL, NULL, &ck, &err) == TS_OK && !ck, "empty run dir");
    CHECK(ts_train_ckpt_open_latest(nowhere, NULL, NULL, &ck, &err) == TS_OK && !ck, "missing run dir");
}

static void test_ckpt_keep_last(void) {
    char run[256], p[400];
    path_in(run, sizeof run, "ckpt-keep");
    mkdir(run, 0777);
    for (int s = 10; s <= 50; s += 10) save_fake(run, s, 2, NULL, 8);
    for (int s = 10; s <= 50; s += 10) {
        snprintf(p, sizeof p, "%s/ckpt-%d", run, s);
        CHECK(exists(p) == (s >= 40), "ckpt-%d %s", s, exists(p) ? "kept" : "deleted");
    }
    CHECK(count_entries(run, ".tmp") == 0, "leftovers after pruning");
    /* final/ does not count against keep_last and wins a tie */
    save_fake(run, 50, 2, "final", 8);
    warnings w = {0};
    ts_train_ckpt *ck;
    ts_io_error err;
    CHECK(ts_train_ckpt_open_latest(run, on_warn, &w, &ck, &err) == TS_OK && ck && strstr(ts_train_ckpt_path(ck), "/final"),
          "final should be the latest");
    ts_train_ckpt_close(ck);
    snprintf(p, sizeof p, "%s/ckpt-40", run);
    CHECK(exists(p), "final pruned a ckpt");
    /* re-saving a step replaces it */
    fake_ckpt k;
    fake_make(&k, 50, 4, 16);
    k.c.state.tokens_seen = 777;
    CHECK(ts_train_ckpt_save(run, NULL, &k.c, 2, NULL, 0, &err) == TS_OK, "re-save: %s", err.message);
    snprintf(p, sizeof p, "%s/ckpt-50", run);
    CHECK(ts_train_ckpt_open(p, &ck, &err) == TS_OK && ts_train_ckpt_state(ck)->tokens_seen == 777 && compare(ck, &k) == 0,
          "re-saved ckpt-50: %s", err.message);
    ts_train_ckpt_close(ck);
    fake_free(&k);
    /* a resume from ckpt-30 abandons 40 and 50 once it saves */
    save_fake(run, 30, 2, NULL, 8);
    CHECK(count_entries(run, "ckpt-") == 1 && exists(run) && latest_step(run, &w) == 50, "after the abandoned future");
    snprintf(p, sizeof p, "%s/ckpt-30", run);
    CHECK(exists(p), "ckpt-30 missing");
    CHECK(w.n == 0, "warnings: %s", w.last);
}

static void flip_byte(const char *path, long from_end) {
    FILE *f = fopen(path, "r+b");
    fseek(f, -from_end, SEEK_END);
    int c = fgetc(f);
    fseek(f, -from_end, SEEK_END);
    fputc(c ^ 0x10, f);
    fclose(f);
}

static void test_ckpt_corruption(void) {
    char run[256], p[400];
    path_in(run, sizeof run, "ckpt-corrupt");
    mkdir(run, 0777);
    for (int s = 1; s <= 4; s++) save_fake(run, s, 0, NULL, 32);
    warnings w = {0};
    CHECK(latest_step(run, &w) == 4 && w.n == 0, "intact: step 4");

    /* a flipped byte inside tensor data: the safetensors header still parses, the sum does not */
    snprintf(p, sizeof p, "%s/ckpt-4/model.safetensors", run);
    flip_byte(p, 100);
    CHECK(latest_step(run, &w) == 3 && w.n == 1 && strstr(w.last, "ckpt-4") && strstr(w.last, "model.safetensors"),
          "flipped byte: warning '%s'", w.last);
    ts_train_ckpt *ck;
    ts_io_error err;
    snprintf(p, sizeof p, "%s/ckpt-4", run);
    CHECK(ts_train_ckpt_open(p, &ck, &err) == TS_ERR_FORMAT && !ck, "direct open of a corrupt checkpoint");

    /* a truncated file */
    snprintf(p, sizeof p, "%s/ckpt-3/training_state.safetensors", run);
    CHECK(truncate(p, 1000) == 0, "truncate");
    w.n = 0;
    CHECK(latest_step(run, &w) == 2 && w.n == 2 && strstr(w.last, "ckpt-3") && strstr(w.last, "truncated"),
          "truncated: warning '%s'", w.last);

    /* an incomplete one (no manifest) and a tampered manifest */
    snprintf(p, sizeof p, "%s/ckpt-2/manifest.json", run);
    unlink(p);
    snprintf(p, sizeof p, "%s/ckpt-1/manifest.json", run);
    char *text = test_read_file(p, NULL);
    char *hex = text ? strstr(text, "\"xxh64\": \"") : NULL;
    if (hex) hex[12] = hex[12] == '0' ? '1' : '0';
    write_text(p, text);
    free(text);
    w.n = 0;
    int64_t none = latest_step(run, &w);
    CHECK(none == -1 && w.n == 4, "nothing loadable: step %lld, %d warnings", (long long)none, w.n);

    /* a partially written checkpoint (a killed writer's temporary directory) with a higher step and
     * every file intact is still never picked; the cleaner removes it */
    save_fake(run, 5, 0, NULL, 32);
    snprintf(p, sizeof p, "%s/ckpt-5", run);
    char tmp[400];
    snprintf(tmp, sizeof tmp, "%s/ckpt-6.tmp-99999", run);
    CHECK(rename(p, tmp) == 0, "rename");
    char stray[400];
    snprintf(stray, sizeof stray, "%s/notes.tmp-1", run); /* not ours: must survive the cleaner */
    write_text(stray, "keep me");
    w.n = 0;
    CHECK(latest_step(run, &w) == -1, "a .tmp- directory was loaded");
    CHECK(ts_train_ckpt_clean(run, &err) == TS_OK && !exists(tmp) && exists(stray), "clean: %s", err.message);
}

/* ---------------------------------------------------------------- SIGKILL */

enum { KILL_ROWS = 256 * 1024 / 16 }; /* 1 MiB per f32 tensor, 3 of them: ~3 MiB per checkpoint */

/* A training run that only checkpoints: resumes from the latest, then saves step after step,
 * reporting each committed step on the pipe. */
static void checkpoint_writer(const char *run, int report_fd) {
    ts_io_error err;
    ts_train_ckpt *ck = NULL;
    if (ts_train_ckpt_clean(run, &err) != TS_OK || ts_train_ckpt_open_latest(run, NULL, NULL, &ck, &err) != TS_OK) _exit(2);
    int64_t step = ck ? ts_train_ckpt_state(ck)->step : 0;
    ts_train_ckpt_close(ck);
    for (;;) {
        step++;
        fake_ckpt k;
        fake_make(&k, step, KILL_ROWS, 16);
        ts_status s = ts_train_ckpt_save(run, NULL, &k.c, 2, NULL, 0, &err);
        fake_free(&k);
        int64_t msg = s == TS_OK ? step : -1;
        if (write(report_fd, &msg, sizeof msg) != (ssize_t)sizeof msg || s != TS_OK) _exit(3);
    }
}

static void test_ckpt_sigkill(void) {
    enum { KILLS = 8 };
    char run[256];
    path_in(run, sizeof run, "ckpt-sigkill");
    mkdir(run, 0777);
    ts_rng rng;
    ts_rng_seed(&rng, 2024);
    int64_t committed = 0; /* the newest step any writer reported as saved */
    int interrupted = 0, failures = 0;
    double t0 = ts_time_seconds();
    for (int round = 0; round < KILLS; round++) {
        int fds[2];
        if (pipe(fds) != 0) break;
        pid_t pid = fork();
        if (pid == 0) {
            close(fds[0]);
            checkpoint_writer(run, fds[1]);
        }
        close(fds[1]);
        /* Each writer commits one checkpoint before the clock starts, so the run advances however
         * slow the disk; the kill then lands at a random moment of the saves that follow. */
        struct pollfd pfd = {fds[0], POLLIN, 0};
        int64_t msg;
        if (poll(&pfd, 1, 30000) == 1 && read(fds[0], &msg, sizeof msg) == (ssize_t)sizeof msg) {
            CHECK(msg > 0, "round %d: a save failed", round);
            if (msg > committed) committed = msg;
        }
        int delay_ms = (int)(ts_rng_uniform(&rng) * 200);
        struct timespec ts = {0, delay_ms * 1000000L};
        nanosleep(&ts, NULL);
        kill(pid, SIGKILL);
        int status;
        waitpid(pid, &status, 0);
        CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL, "round %d: writer exited on its own (%d)", round, status);
        while (read(fds[0], &msg, sizeof msg) == (ssize_t)sizeof msg) {
            CHECK(msg > 0, "round %d: a save failed", round);
            if (msg > committed) committed = msg;
        }
        close(fds[0]);
        interrupted += count_entries(run, ".tmp-") > 0;

        /* The latest loadable checkpoint verifies and is a committed one: the last reported, or
         * the next if the kill came between its rename and the report. */
        warnings w = {0};
        ts_train_ckpt *ck = NULL;
        ts_io_error err;
        CHECK(ts_train_ckpt_open_latest(run, on_warn, &w, &ck, &err) == TS_OK, "round %d: %s", round, err.message);
        CHECK(w.n == 0, "round %d: a committed checkpoint failed to verify: %s", round, w.last);
        int64_t step = ck ? ts_train_ckpt_state(ck)->step : 0;
        CHECK(step == committed || step == committed + 1, "round %d: loaded step %lld, last committed %lld", round,
              (long long)step, (long long)committed);
        if (ck) {
            fake_ckpt k;
            fake_make(&k, step, KILL_ROWS, 16);
            failures += compare(ck, &k);
            fake_free(&k);
            ts_train_ckpt_close(ck);
        }
        if (step > committed) committed = step;
    }
    ts_io_error err;
    CHECK(ts_train_ckpt_clean(run, &err) == TS_OK && count_entries(run, ".tmp-") == 0, "leftovers after clean");
    /* A kill between a save's rename and its pruning of the oldest leaves keep_last + 1; the next
     * save prunes back to keep_last. */
    CHECK(count_entries(run, "ckpt-") <= 3, "more than keep_last + 1 after a kill: %d", count_entries(run, "ckpt-"));
    fake_ckpt next;
    fake_make(&next, committed + 2, KILL_ROWS, 16);
    CHECK(ts_train_ckpt_save(run, NULL, &next.c, 2, NULL, 0, &err) == TS_OK, "save after the kills: %s", err.message);
    fake_free(&next);
    CHECK(count_entries(run, "ckpt-") == 2, "keep_last 2 not held after a save: %d", count_entries(run, "ckpt-"));
    CHECK(committed >= KILLS, "the writers made too little progress (%lld steps)", (long long)committed);
    CHECK(failures == 0, "%d mismatches in loaded checkpoints", failures);
    printf("sigkill: %d kills, %lld checkpoints committed, %d kills left a .tmp- directory (a save or deletion cut short), %.1f s\n", KILLS,
           (long long)committed, interrupted, ts_time_seconds() - t0);
}

int main(void) {
    snprintf(tmp_root, sizeof tmp_root, "/tmp/ts_train_run_XXXXXX");
    if (!mkdtemp(tmp_root)) {
        perror("mkdtemp");
        return 1;
    }
    test_config_defaults();
    test_config_layers();
    test_config_errors();
    test_config_help();
    test_run_dir();
    test_metrics();
    test_loss_plot();
    test_progress_format();
    test_progress_display();
    test_ckpt_round_trip();
    test_ckpt_keep_last();
    test_ckpt_corruption();
    test_ckpt_sigkill();
    remove_all(tmp_root);
    return check_summary("test_train_run");
}
