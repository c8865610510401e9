/* lr_schedule.c - learning-rate and MTP-weight schedules (train.h) as pure functions of the
 * step, so a resumed run needs nothing but the step number to continue on the same curve.
 * DeepSeek-V4 (spec §5.4): linear warm-up, constant peak, cosine decay at the end; the tiny
 * recipe (spec §7.2) is the same shape with a 100-step warm-up and the last 20 % decaying to
 * 10 % of the peak. The MTP loss weight (spec §5.1) follows the schedule's decay phase. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>

#include "tessera/train.h"

#define PI 3.14159265358979323846

ts_lr_schedule ts_lr_schedule_tiny(int64_t total_steps) {
    ts_lr_schedule s = {.kind = TS_LR_WSD,
                        .peak_lr = 1e-3,
                        .warmup_steps = 100,
                        .total_steps = total_steps,
                        .final_lr = 1e-4,
                        .decay_fraction = 0.2,
                        .decay_shape = TS_LR_DECAY_COSINE};
    return s;
}

static ts_status invalid(char *err, size_t err_size, const char *why) {
    if (err && err_size) snprintf(err, err_size, "lr schedule: %s", why);
    return TS_ERR_INVALID_ARG;
}

ts_status ts_lr_schedule_validate(const ts_lr_schedule *s, char *err, size_t err_size) {
    if (!s) return invalid(err, err_size, "NULL");
    if (s->kind != TS_LR_CONSTANT && s->kind != TS_LR_COSINE && s->kind != TS_LR_WSD)
        return invalid(err, err_size, "unknown kind");
    if (!isfinite(s->peak_lr) || s->peak_lr < 0) return invalid(err, err_size, "peak_lr must be finite and >= 0");
    if (s->warmup_steps < 0) return invalid(err, err_size, "warmup_steps < 0");
    if (s->kind == TS_LR_CONSTANT) return TS_OK;
    if (!isfinite(s->final_lr) || s->final_lr < 0) return invalid(err, err_size, "final_lr must be finite and >= 0");
    if (s->total_steps <= s->warmup_steps) return invalid(err, err_size, "total_steps must exceed warmup_steps");
    if (s->kind == TS_LR_WSD) {
        if (!(s->decay_fraction > 0 && s->decay_fraction <= 1))
            return invalid(err, err_size, "decay_fraction must be in (0, 1]");
        if (s->decay_shape != TS_LR_DECAY_LINEAR && s->decay_shape != TS_LR_DECAY_COSINE)
            return invalid(err, err_size, "unknown decay_shape");
        if (ts_lr_decay_start(s) < s->warmup_steps)
            return invalid(err, err_size, "the decay phase overlaps the warm-up");
    }
    return TS_OK;
}

/* WSD decay length: round(decay_fraction * total), at least one step. */
static int64_t wsd_decay_steps(const ts_lr_schedule *s) {
    int64_t n = (int64_t)floor(s->decay_fraction * (double)s->total_steps + 0.5);
    return n < 1 ? 1 : n;
}

int64_t ts_lr_decay_start(const ts_lr_schedule *s) {
    switch (s->kind) {
    case TS_LR_COSINE: return s->warmup_steps;
    case TS_LR_WSD: return s->total_steps - wsd_decay_steps(s);
    case TS_LR_CONSTANT: break;
    }
    return INT64_MAX;
}

/* From peak at progress 0 to final at progress 1. */
static double decay_curve(ts_lr_decay_shape shape, double peak, double final, double progress) {
    if (shape == TS_LR_DECAY_LINEAR) return peak + (final - peak) * progress;
    return final + (peak - final) * 0.5 * (1.0 + cos(PI * progress));
}

double ts_lr_at(const ts_lr_schedule *s, int64_t step) {
    if (step < 0) step = 0;
    if (step < s->warmup_steps) return s->peak_lr * (double)(step + 1) / (double)s->warmup_steps;
    if (s->kind == TS_LR_CONSTANT) return s->peak_lr;
    if (step >= s->total_steps) return s->final_lr;
    int64_t start = ts_lr_decay_start(s);
    if (step < start) return s->peak_lr;
    double progress = (double)(step - start) / (double)(s->total_steps - start);
    ts_lr_decay_shape shape = s->kind == TS_LR_COSINE ? TS_LR_DECAY_COSINE : s->decay_shape;
    return decay_curve(shape, s->peak_lr, s->final_lr, progress);
}

double ts_mtp_loss_weight(const ts_lr_schedule *s, int64_t step) {
    return step >= ts_lr_decay_start(s) ? TS_MTP_WEIGHT_DURING_DECAY : TS_MTP_WEIGHT;
}
