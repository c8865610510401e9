/* run_dir.c - where a training run writes (train.h): the run directory itself (runs/<timestamp>/
 * or --out) and its metrics.jsonl log, one JSON object per step, flushed line by line so a crash
 * loses at most a torn last line, which every reader here drops. On resume the log is cut back to
 * the checkpoint's step, so the rows of steps that are about to be retrained do not appear twice.
 * loss.svg is drawn from this log by loss_plot.c. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tessera/train.h"

/* ---------------------------------------------------------------- the directory */

/* mkdir -p: creates every missing component of path (an existing directory is fine). */
static int make_dirs(const char *path) {
    char buf[PATH_MAX];
    if (snprintf(buf, sizeof buf, "%s", path) >= (int)sizeof buf) {
        errno = ENAMETOOLONG;
        return -1;
    }
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/') continue;
        *p = '\0';
        if (mkdir(buf, 0777) != 0 && errno != EEXIST) return -1;
        *p = '/';
    }
    if (mkdir(buf, 0777) != 0 && errno != EEXIST) return -1;
    struct stat st;
    if (stat(buf, &st) != 0) return -1;
    if (!S_ISDIR(st.st_mode)) {
        errno = ENOTDIR;
        return -1;
    }
    return 0;
}

/* Creating a file is the only test of writability that holds for every user (root passes
 * access(W_OK) on a read-only mount) and every file system. */
static ts_status prove_writable(const char *dir, ts_io_error *err) {
    char probe[PATH_MAX];
    snprintf(probe, sizeof probe, "%s/.tessera-write-test.%ld", dir, (long)getpid());
    int fd = open(probe, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
    if (fd < 0) return ts_io_set_error(err, TS_ERR_IO, "run directory %s is not writable: %s", dir, strerror(errno));
    close(fd);
    unlink(probe);
    return TS_OK;
}

static ts_status create_stamped(const char *root, time_t when, char *path, size_t cap, ts_io_error *err) {
    enum { MAX_SUFFIX = 1000 };
    if (make_dirs(root) != 0)
        return ts_io_set_error(err, TS_ERR_IO, "cannot create the runs directory %s: %s", root, strerror(errno));
    char stamp[32];
    struct tm tm;
    strftime(stamp, sizeof stamp, "%Y%m%d-%H%M%S", localtime_r(&when, &tm));
    for (int k = 1; k <= MAX_SUFFIX; k++) {
        int n = k == 1 ? snprintf(path, cap, "%s/%s", root, stamp) : snprintf(path, cap, "%s/%s-%d", root, stamp, k);
        if (n < 0 || (size_t)n >= cap)
            return ts_io_set_error(err, TS_ERR_RANGE, "run directory name under %s does not fit in %zu bytes", root, cap);
        if (mkdir(path, 0777) == 0) return TS_OK;
        if (errno != EEXIST) return ts_io_set_error(err, TS_ERR_IO, "cannot create run directory %s: %s", path, strerror(errno));
    }
    return ts_io_set_error(err, TS_ERR_IO, "%s/%s ... -%d are all taken", root, stamp, MAX_SUFFIX);
}

ts_status ts_run_dir_create(const char *out, const char *runs_root, time_t when, char *path_out, size_t cap,
                            ts_io_error *err) {
    if (!path_out || cap == 0) return ts_io_set_error(err, TS_ERR_INVALID_ARG, "run directory: no room for the path");
    ts_status s;
    if (out && *out) {
        if (strlen(out) >= cap)
            return ts_io_set_error(err, TS_ERR_RANGE, "run directory %s: path longer than %zu bytes", out, cap - 1);
        if (make_dirs(out) != 0)
            return ts_io_set_error(err, TS_ERR_IO, "cannot create run directory %s: %s", out, strerror(errno));
        snprintf(path_out, cap, "%s", out);
        s = TS_OK;
    } else {
        s = create_stamped(runs_root && *runs_root ? runs_root : "runs", when, path_out, cap, err);
    }
    return s != TS_OK ? s : prove_writable(path_out, err);
}

/* ---------------------------------------------------------------- metrics.jsonl */

struct ts_metrics_log {
    FILE *f;
    char *path;
};

/* The step of a complete log line, or -1 when the line is not a JSON object with an integer
 * "step" (a torn last line). */
static int64_t line_step(const char *line, size_t len) {
    json_t *row = json_loadb(line, len, 0, NULL);
    json_t *step = row ? json_object_get(row, "step") : NULL;
    int64_t v = json_is_integer(step) && json_integer_value(step) >= 0 ? (int64_t)json_integer_value(step) : -1;
    json_decref(row);
    return v;
}

/* Rewrites path keeping the lines of steps <= keep (atomically; a missing file stays missing). */
static ts_status cut_back(const char *path, int64_t keep, ts_io_error *err) {
    FILE *f = fopen(path, "rb");
    if (!f) return errno == ENOENT ? TS_OK : ts_io_set_error(err, TS_ERR_IO, "%s: %s", path, strerror(errno));
    char *kept = NULL, *line = NULL;
    size_t kept_size = 0, line_cap = 0;
    FILE *mem = open_memstream(&kept, &kept_size);
    ssize_t n;
    while (mem && (n = getline(&line, &line_cap, f)) > 0) {
        bool complete = line[n - 1] == '\n';
        int64_t step = complete ? line_step(line, (size_t)n) : -1;
        if (step >= 0 && step <= keep) fwrite(line, 1, (size_t)n, mem);
    }
    bool read_ok = !ferror(f);
    fclose(f);
    free(line);
    if (!mem || fclose(mem) != 0) {
        free(kept);
        return ts_io_set_error(err, TS_ERR_OOM, "%s: out of memory reading the metrics log", path);
    }
    ts_status s = read_ok ? ts_atomic_write_file(path, kept, kept_size, err)
                          : ts_io_set_error(err, TS_ERR_IO, "%s: read error", path);
    free(kept);
    return s;
}

ts_status ts_metrics_open(const char *run_dir, int64_t keep_through_step, ts_metrics_log **out, ts_io_error *err) {
    if (!run_dir || !out) return ts_io_set_error(err, TS_ERR_INVALID_ARG, "metrics log: run_dir and out are required");
    *out = NULL;
    ts_metrics_log *m = calloc(1, sizeof *m);
    size_t room = strlen(run_dir) + sizeof "/metrics.jsonl";
    if (!m || !(m->path = malloc(room))) {
        free(m);
        return ts_io_set_error(err, TS_ERR_OOM, "%s: out of memory opening the metrics log", run_dir);
    }
    snprintf(m->path, room, "%s/metrics.jsonl", run_dir);
    ts_status s = keep_through_step >= 0 ? cut_back(m->path, keep_through_step, err) : TS_OK;
    if (s == TS_OK && !(m->f = fopen(m->path, keep_through_step >= 0 ? "ab" : "wb")))
        s = ts_io_set_error(err, TS_ERR_IO, "%s: %s", m->path, strerror(errno));
    if (s != TS_OK) {
        ts_metrics_close(m);
        return s;
    }
    *out = m;
    return TS_OK;
}

const char *ts_metrics_path(const ts_metrics_log *m) { return m ? m->path : NULL; }

void ts_metrics_close(ts_metrics_log *m) {
    if (!m) return;
    if (m->f) fclose(m->f);
    free(m->path);
    free(m);
}

/* JSON has no NaN or infinity; %.10g keeps what a loss curve needs and reads back as a number. */
static void put_number(FILE *f, double v) {
    if (isfinite(v))
        fprintf(f, "%.10g", v);
    else
        fputs("null", f);
}

static void put_key(FILE *f, const char *key) {
    fputs(", \"", f);
    for (const unsigned char *p = (const unsigned char *)key; *p; p++) {
        if (*p == '"' || *p == '\\')
            fprintf(f, "\\%c", *p);
        else if (*p < 0x20)
            fprintf(f, "\\u%04x", *p);
        else
            fputc(*p, f);
    }
    fputs("\": ", f);
}

ts_status ts_metrics_write(ts_metrics_log *m, const ts_metrics_row *row, ts_io_error *err) {
    if (!m || !row || (row->n_extras > 0 && !row->extras))
        return ts_io_set_error(err, TS_ERR_INVALID_ARG, "metrics log: log and row are required");
    FILE *f = m->f;
    fprintf(f, "{\"step\": %" PRId64, row->step);
    const struct {
        const char *key;
        double v;
    } fixed[] = {{"loss", row->loss}, {"lr", row->lr}, {"tokens_per_s", row->tokens_per_s}};
    for (size_t i = 0; i < sizeof fixed / sizeof *fixed; i++) {
        if (isnan(fixed[i].v)) continue;
        put_key(f, fixed[i].key);
        put_number(f, fixed[i].v);
    }
    for (int i = 0; i < row->n_extras; i++) {
        const ts_metric_extra *x = &row->extras[i];
        put_key(f, x->key ? x->key : "?");
        if (x->n == 1) {
            put_number(f, x->values[0]);
            continue;
        }
        fputc('[', f);
        for (int k = 0; k < x->n; k++) {
            if (k) fputs(", ", f);
            put_number(f, x->values[k]);
        }
        fputc(']', f);
    }
    fputs("}\n", f);
    if (fflush(f) != 0 || ferror(f)) {
        clearerr(f);
        return ts_io_set_error(err, TS_ERR_IO, "%s: writing the metrics row of step %" PRId64 " failed: %s", m->path,
                               row->step, strerror(errno));
    }
    return TS_OK;
}
