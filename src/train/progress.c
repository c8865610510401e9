/* progress.c - the live progress line of a training run (train.h):
 *   step 120/2000 | loss 2.345 | lr 3.0e-4 | 12.3k tok/s | MFU 3.1% | ETA 4m12s
 * On a terminal one line is redrawn in place with \r (at most 10 times a second, so drawing
 * never costs the run anything); into a file or a pipe, where \r would pile up, a plain line is
 * printed every log_every steps. The formatting is pure functions, tested without a terminal;
 * the clock is the caller's, so throughput and ETA are too. */
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "tessera/train.h"

#define REDRAW_SECONDS 0.1

/* v rounded to 3 significant digits (0 stays 0). */
static double round3(double v) {
    if (v == 0) return 0;
    double scale = pow(10, floor(log10(fabs(v))) - 2);
    return round(v / scale) * scale;
}

void ts_format_si(double v, char *buf, size_t cap) {
    static const char suffix[] = {'k', 'M', 'G', 'T'};
    if (!isfinite(v)) {
        snprintf(buf, cap, "--");
        return;
    }
    double r = round3(v);
    if (fabs(r) < 1000) {
        snprintf(buf, cap, "%.0f", round(v));
        return;
    }
    int unit = 0;
    r /= 1000;
    while (fabs(r) >= 1000 && unit < (int)sizeof suffix - 1) {
        r /= 1000;
        unit++;
    }
    double a = fabs(r);
    snprintf(buf, cap, a < 10 ? "%.2f%c" : a < 100 ? "%.1f%c" : "%.0f%c", r, suffix[unit]);
}

void ts_format_duration(double seconds, char *buf, size_t cap) {
    if (!(seconds >= 0) || !isfinite(seconds)) {
        snprintf(buf, cap, "--");
        return;
    }
    long long s = llround(seconds);
    if (s < 60)
        snprintf(buf, cap, "%llds", s);
    else if (s < 3600)
        snprintf(buf, cap, "%lldm%02llds", s / 60, s % 60);
    else if (s < 86400)
        snprintf(buf, cap, "%lldh%02lldm", s / 3600, s % 3600 / 60);
    else
        snprintf(buf, cap, "%lldd%02lldh", s / 86400, s % 86400 / 3600);
}

/* "3.0e-4": C's %e always writes two exponent digits, which the line has no room for. */
static void format_lr(double lr, char *buf, size_t cap) {
    if (!isfinite(lr) || lr == 0) {
        snprintf(buf, cap, "%g", lr);
        return;
    }
    int e = (int)floor(log10(fabs(lr)));
    double m = round(lr / pow(10, e) * 10) / 10;
    if (fabs(m) >= 10) {
        m /= 10;
        e++;
    }
    snprintf(buf, cap, "%.1fe%d", m, e);
}

size_t ts_progress_format(const ts_progress_line *p, char *buf, size_t cap) {
    char loss[32], lr[32], rate[32], eta[32], mfu[32] = "";
    if (isfinite(p->loss))
        snprintf(loss, sizeof loss, "%.3f", p->loss);
    else
        snprintf(loss, sizeof loss, "%s", isnan(p->loss) ? "nan" : "inf");
    format_lr(p->lr, lr, sizeof lr);
    ts_format_si(p->tokens_per_s, rate, sizeof rate);
    ts_format_duration(p->eta_seconds, eta, sizeof eta);
    if (p->mfu > 0 && isfinite(p->mfu)) snprintf(mfu, sizeof mfu, " | MFU %.1f%%", 100 * p->mfu);
    int n = snprintf(buf, cap, "step %lld/%lld | loss %s | lr %s | %s tok/s%s | ETA %s", (long long)p->step,
                     (long long)p->total_steps, loss, lr, rate, mfu, eta);
    return n < 0 ? 0 : (size_t)n;
}

void ts_progress_init(ts_progress *p, FILE *out, int tty, int64_t log_every, int64_t total_steps, int64_t first_step,
                      double now) {
    *p = (ts_progress){.out = out,
                       .tty = tty < 0 ? isatty(fileno(out)) != 0 : tty != 0,
                       .log_every = log_every > 0 ? log_every : 1,
                       .total_steps = total_steps,
                       .first_step = first_step,
                       .t_start = now,
                       .t_last_draw = -INFINITY};
}

void ts_progress_update(ts_progress *p, int64_t step, double loss, double lr, double tokens, double now) {
    p->tokens += tokens;
    double elapsed = now - p->t_start;
    int64_t done = step - p->first_step;
    bool last = step >= p->total_steps;
    double tokens_per_s = elapsed > 0 ? p->tokens / elapsed : NAN;
    ts_progress_line line = {.step = step,
                             .total_steps = p->total_steps,
                             .loss = loss,
                             .lr = lr,
                             .tokens_per_s = tokens_per_s,
                             .mfu = p->peak_flops > 0 ? tokens_per_s * p->flops_per_token / p->peak_flops : 0,
                             .eta_seconds = done > 0 && elapsed > 0 ? elapsed / (double)done * (double)(p->total_steps - step) : NAN};
    char text[256];
    size_t len = ts_progress_format(&line, text, sizeof text);
    if (len >= sizeof text) len = sizeof text - 1;
    if (p->tty) {
        if (!last && now - p->t_last_draw < REDRAW_SECONDS) return;
        /* Blank what is left of a longer previous line. */
        int pad = p->last_len > len ? (int)(p->last_len - len) : 0;
        fprintf(p->out, "\r%s%*s", text, pad, "");
        p->last_len = len;
        p->t_last_draw = now;
    } else {
        if (!last && step % p->log_every != 0) return;
        fprintf(p->out, "%s\n", text);
    }
    fflush(p->out);
}

void ts_progress_finish(ts_progress *p) {
    if (p->tty && p->last_len > 0) {
        fputc('\n', p->out);
        fflush(p->out);
        p->last_len = 0;
    }
}
