/* loss_plot.c - loss.svg of a run directory (train.h, ts_loss_plot_write): train loss as a line
 * and validation loss as dots against the step, read back from metrics.jsonl, so the plot can be
 * redrawn at any time (after every evaluation, after a crash) from the log alone. The SVG is
 * self-contained (no scripts, fonts or stylesheets) and written atomically, so a viewer that
 * reloads it never sees half a picture. */
#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tessera/train.h"

typedef struct {
    int64_t step;
    double v;
    size_t seq; /* line number, so that the last row of a repeated step wins */
} point;

typedef struct {
    point *p;
    size_t n, cap;
} series;

static bool series_push(series *s, int64_t step, double v, size_t seq) {
    if (s->n == s->cap) {
        size_t cap = s->cap ? 2 * s->cap : 256;
        point *p = realloc(s->p, cap * sizeof *p);
        if (!p) return false;
        s->p = p;
        s->cap = cap;
    }
    s->p[s->n++] = (point){step, v, seq};
    return true;
}

static int by_step_then_line(const void *a, const void *b) {
    const point *x = a, *y = b;
    if (x->step != y->step) return x->step < y->step ? -1 : 1;
    return x->seq < y->seq ? -1 : x->seq > y->seq;
}

/* Sorts by step and keeps the last-logged point of each step. */
static void series_settle(series *s) {
    if (s->n == 0) return; /* qsort's base may not be NULL */
    qsort(s->p, s->n, sizeof *s->p, by_step_then_line);
    size_t out = 0;
    for (size_t i = 0; i < s->n; i++) {
        if (i + 1 < s->n && s->p[i + 1].step == s->p[i].step) continue;
        s->p[out++] = s->p[i];
    }
    s->n = out;
}

/* A finite number field (and > 0 when the axis is logarithmic). */
static bool number_field(json_t *row, const char *key, bool log_y, double *v) {
    json_t *x = json_object_get(row, key);
    if (!json_is_number(x)) return false;
    *v = json_number_value(x);
    return isfinite(*v) && (!log_y || *v > 0);
}

static ts_status read_metrics(const char *path, bool log_y, series *train, series *val, ts_io_error *err) {
    FILE *f = fopen(path, "rb");
    if (!f) return ts_io_set_error(err, TS_ERR_IO, "%s: %s", path, strerror(errno));
    char *line = NULL;
    size_t cap = 0, seq = 0;
    ssize_t n;
    bool ok = true;
    while (ok && (n = getline(&line, &cap, f)) > 0) {
        json_t *row = json_loadb(line, (size_t)n, 0, NULL);
        json_t *step = row ? json_object_get(row, "step") : NULL;
        double v;
        if (json_is_integer(step)) {
            int64_t s = (int64_t)json_integer_value(step);
            if (number_field(row, "loss", log_y, &v)) ok = series_push(train, s, v, seq);
            if (ok && number_field(row, "val_loss", log_y, &v)) ok = series_push(val, s, v, seq);
        }
        json_decref(row);
        seq++;
    }
    bool read_error = ferror(f);
    free(line);
    fclose(f);
    if (!ok) return ts_io_set_error(err, TS_ERR_OOM, "%s: out of memory reading the metrics", path);
    if (read_error) return ts_io_set_error(err, TS_ERR_IO, "%s: read error", path);
    series_settle(train);
    series_settle(val);
    return TS_OK;
}

/* ---------------------------------------------------------------- axes */

enum { WIDTH = 800, HEIGHT = 480, LEFT = 72, RIGHT = 24, TOP = 44, BOTTOM = 56, MAX_TICKS = 32 };
#define PLOT_W (WIDTH - LEFT - RIGHT)
#define PLOT_H (HEIGHT - TOP - BOTTOM)

/* 1, 2 or 5 times a power of ten, about range / target. */
static double nice_step(double range, int target) {
    double raw = range / target;
    double mag = pow(10, floor(log10(raw)));
    double f = raw / mag;
    return (f <= 1 ? 1 : f <= 2 ? 2 : f <= 5 ? 5 : 10) * mag;
}

typedef struct {
    double lo, hi; /* data-space ends of the axis */
    bool log;
    double ticks[MAX_TICKS];
    int n_ticks;
} axis;

static void linear_ticks(axis *a, double lo, double hi, int target) {
    double step = nice_step(hi - lo, target);
    a->n_ticks = 0;
    for (double t = ceil(lo / step - 1e-9) * step; t <= hi * (1 + 1e-12) + 1e-12 && a->n_ticks < MAX_TICKS; t += step)
        a->ticks[a->n_ticks++] = fabs(t) < step * 1e-9 ? 0 : t;
}

static void x_axis(axis *a, int64_t first, int64_t last) {
    a->log = false;
    a->lo = (double)first;
    a->hi = last > first ? (double)last : (double)first + 1;
    double step = fmax(1, nice_step(a->hi - a->lo, 8));
    a->n_ticks = 0;
    for (double t = ceil(a->lo / step) * step; t <= a->hi && a->n_ticks < MAX_TICKS; t += step) a->ticks[a->n_ticks++] = t;
}

/* Linear: the data range widened to whole tick steps. Log: 1-2-5 ticks per decade (decades only
 * over a wide range), or plain steps when the range holds fewer than two of those. */
static void y_axis(axis *a, double lo, double hi, bool log_y) {
    a->log = log_y;
    if (!log_y) {
        if (hi - lo < 1e-12 * fmax(1, fabs(hi))) {
            lo -= fmax(fabs(lo) * 0.1, 1e-3);
            hi += fmax(fabs(hi) * 0.1, 1e-3);
        }
        double step = nice_step(hi - lo, 6);
        a->lo = floor(lo / step) * step;
        a->hi = ceil(hi / step) * step;
        linear_ticks(a, a->lo, a->hi, 6);
        return;
    }
    a->lo = lo / 1.05;
    a->hi = hi * 1.05;
    static const double mantissas[] = {1, 2, 5};
    bool wide = log10(a->hi / a->lo) > 3;
    a->n_ticks = 0;
    for (int d = (int)floor(log10(a->lo)); d <= (int)ceil(log10(a->hi)); d++)
        for (int m = 0; m < (wide ? 1 : 3); m++) {
            double t = mantissas[m] * pow(10, d);
            if (t >= a->lo && t <= a->hi && a->n_ticks < MAX_TICKS) a->ticks[a->n_ticks++] = t;
        }
    if (a->n_ticks < 2) linear_ticks(a, a->lo, a->hi, 4);
}

static double x_px(const axis *a, double v) { return LEFT + (v - a->lo) / (a->hi - a->lo) * PLOT_W; }

static double y_px(const axis *a, double v) {
    double f = a->log ? (log10(v) - log10(a->lo)) / (log10(a->hi) - log10(a->lo)) : (v - a->lo) / (a->hi - a->lo);
    return TOP + PLOT_H - f * PLOT_H;
}

/* ---------------------------------------------------------------- drawing */

#define TRAIN_COLOR "#1f77b4"
#define VAL_COLOR "#d62728"

static void draw_axes(FILE *o, const axis *x, const axis *y) {
    fprintf(o, "<g stroke=\"#e4e4e4\" stroke-width=\"1\">\n");
    for (int i = 0; i < y->n_ticks; i++)
        fprintf(o, "<line x1=\"%d\" y1=\"%.2f\" x2=\"%d\" y2=\"%.2f\"/>\n", LEFT, y_px(y, y->ticks[i]), LEFT + PLOT_W,
                y_px(y, y->ticks[i]));
    fprintf(o, "</g>\n<g stroke=\"#333\" stroke-width=\"1\" fill=\"none\">\n");
    fprintf(o, "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\"/>\n", LEFT, TOP, PLOT_W, PLOT_H);
    for (int i = 0; i < x->n_ticks; i++)
        fprintf(o, "<line x1=\"%.2f\" y1=\"%d\" x2=\"%.2f\" y2=\"%d\"/>\n", x_px(x, x->ticks[i]), TOP + PLOT_H,
                x_px(x, x->ticks[i]), TOP + PLOT_H + 5);
    for (int i = 0; i < y->n_ticks; i++)
        fprintf(o, "<line x1=\"%d\" y1=\"%.2f\" x2=\"%d\" y2=\"%.2f\"/>\n", LEFT - 5, y_px(y, y->ticks[i]), LEFT,
                y_px(y, y->ticks[i]));
    fprintf(o, "</g>\n<g fill=\"#333\">\n");
    for (int i = 0; i < x->n_ticks; i++)
        fprintf(o, "<text class=\"xtick\" x=\"%.2f\" y=\"%d\" text-anchor=\"middle\">%.0f</text>\n", x_px(x, x->ticks[i]),
                TOP + PLOT_H + 19, x->ticks[i]);
    for (int i = 0; i < y->n_ticks; i++)
        fprintf(o, "<text class=\"ytick\" x=\"%d\" y=\"%.2f\" text-anchor=\"end\">%g</text>\n", LEFT - 8,
                y_px(y, y->ticks[i]) + 4, y->ticks[i]);
    fprintf(o, "<text x=\"%d\" y=\"%d\" text-anchor=\"middle\">step</text>\n", LEFT + PLOT_W / 2, HEIGHT - 14);
    fprintf(o, "<text x=\"18\" y=\"%d\" text-anchor=\"middle\" transform=\"rotate(-90 18 %d)\">loss%s</text>\n",
            TOP + PLOT_H / 2, TOP + PLOT_H / 2, y->log ? " (log scale)" : "");
    fprintf(o, "</g>\n");
}

static void draw_series(FILE *o, const axis *x, const axis *y, const series *train, const series *val) {
    if (train->n > 0) {
        fprintf(o, "<polyline class=\"train\" fill=\"none\" stroke=\"" TRAIN_COLOR "\" stroke-width=\"1.5\" points=\"");
        for (size_t i = 0; i < train->n; i++)
            fprintf(o, "%s%.2f,%.2f", i ? " " : "", x_px(x, (double)train->p[i].step), y_px(y, train->p[i].v));
        fprintf(o, "\"/>\n");
    }
    fprintf(o, "<g class=\"val\" fill=\"" VAL_COLOR "\">\n");
    for (size_t i = 0; i < val->n; i++)
        fprintf(o, "<circle cx=\"%.2f\" cy=\"%.2f\" r=\"3.5\"/>\n", x_px(x, (double)val->p[i].step), y_px(y, val->p[i].v));
    fprintf(o, "</g>\n");
}

static void draw_legend(FILE *o, bool has_val) {
    int x = LEFT + PLOT_W - 130, y = TOP + 16;
    fprintf(o, "<g class=\"legend\">\n<rect x=\"%d\" y=\"%d\" width=\"122\" height=\"%d\" fill=\"white\" stroke=\"#bbb\"/>\n",
            x - 6, y - 12, has_val ? 42 : 24);
    fprintf(o, "<line x1=\"%d\" y1=\"%d\" x2=\"%d\" y2=\"%d\" stroke=\"" TRAIN_COLOR "\" stroke-width=\"2\"/>\n", x, y - 4,
            x + 22, y - 4);
    fprintf(o, "<text x=\"%d\" y=\"%d\" fill=\"#333\">train loss</text>\n", x + 30, y);
    if (has_val) {
        fprintf(o, "<circle cx=\"%d\" cy=\"%d\" r=\"3.5\" fill=\"" VAL_COLOR "\"/>\n", x + 11, y + 14);
        fprintf(o, "<text x=\"%d\" y=\"%d\" fill=\"#333\">val loss</text>\n", x + 30, y + 18);
    }
    fprintf(o, "</g>\n");
}

static void draw(FILE *o, const series *train, const series *val, bool log_y) {
    fprintf(o, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
               "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" viewBox=\"0 0 %d %d\" "
               "font-family=\"sans-serif\" font-size=\"12\">\n"
               "<rect width=\"%d\" height=\"%d\" fill=\"white\"/>\n"
               "<text x=\"%d\" y=\"26\" text-anchor=\"middle\" font-size=\"16\" fill=\"#333\">training loss</text>\n",
            WIDTH, HEIGHT, WIDTH, HEIGHT, WIDTH, HEIGHT, WIDTH / 2);
    if (train->n + val->n == 0) {
        fprintf(o, "<text x=\"%d\" y=\"%d\" text-anchor=\"middle\" fill=\"#777\">no data yet</text>\n</svg>\n", WIDTH / 2,
                HEIGHT / 2);
        return;
    }
    int64_t first = INT64_MAX, last = INT64_MIN;
    double lo = INFINITY, hi = -INFINITY;
    const series *both[2] = {train, val};
    for (int k = 0; k < 2; k++)
        for (size_t i = 0; i < both[k]->n; i++) {
            const point *p = &both[k]->p[i];
            first = p->step < first ? p->step : first;
            last = p->step > last ? p->step : last;
            lo = fmin(lo, p->v);
            hi = fmax(hi, p->v);
        }
    axis x, y;
    x_axis(&x, first, last);
    y_axis(&y, lo, hi, log_y);
    draw_axes(o, &x, &y);
    draw_series(o, &x, &y, train, val);
    draw_legend(o, val->n > 0);
    fprintf(o, "</svg>\n");
}

ts_status ts_loss_plot_write(const char *metrics_path, const char *svg_path, bool log_y, ts_io_error *err) {
    if (!metrics_path || !svg_path) return ts_io_set_error(err, TS_ERR_INVALID_ARG, "loss plot: paths are required");
    series train = {0}, val = {0};
    ts_status s = read_metrics(metrics_path, log_y, &train, &val, err);
    char *svg = NULL;
    size_t size = 0;
    if (s == TS_OK) {
        FILE *o = open_memstream(&svg, &size);
        if (o) draw(o, &train, &val, log_y);
        if (!o || fclose(o) != 0) s = ts_io_set_error(err, TS_ERR_OOM, "%s: out of memory drawing the plot", svg_path);
    }
    if (s == TS_OK) s = ts_atomic_write_file(svg_path, svg, size, err);
    free(svg);
    free(train.p);
    free(val.p);
    return s;
}
