/* grad_clip.c - gradient utilities of the trainer (train.h): the global L2 norm over all
 * gradient buffers, clipping to a maximum norm (V3 used 1.0; V4 does not say, spec §5.4), and
 * averaging gradients over micro-batches. Sums run in double in a fixed order (buffer by
 * buffer, element by element), so the norm - and the clipped gradients - are the same bits on
 * every run whatever the thread count. */
#include <math.h>

#include "tessera/train.h"

double ts_grad_global_norm(float *const *grads, const int64_t *numels, int n) {
    if (!grads || !numels) return 0;
    double sum = 0;
    for (int b = 0; b < n; b++)
        for (int64_t i = 0; i < numels[b]; i++) sum += (double)grads[b][i] * grads[b][i];
    return sqrt(sum);
}

double ts_grad_clip_global_norm(float *const *grads, const int64_t *numels, int n, double max_norm) {
    double norm = ts_grad_global_norm(grads, numels, n);
    /* No epsilon in the divisor: the clipped norm is max_norm itself, not slightly below. */
    if (!isfinite(norm) || !(max_norm > 0) || norm <= max_norm) return norm;
    float scale = (float)(max_norm / norm);
    for (int b = 0; b < n; b++)
        for (int64_t i = 0; i < numels[b]; i++) grads[b][i] *= scale;
    return norm;
}

ts_status ts_grad_accumulate(float *acc, const float *micro_grad, int64_t numel, int micro,
                             int n_micro) {
    if (!acc || !micro_grad || numel < 0 || n_micro <= 0 || micro < 0 || micro >= n_micro)
        return TS_ERR_INVALID_ARG;
    if (micro == 0)
        for (int64_t i = 0; i < numel; i++) acc[i] = micro_grad[i];
    else
        for (int64_t i = 0; i < numel; i++) acc[i] += micro_grad[i];
    /* Dividing the f32 sum (rather than adding g/n each time) rounds once per element. */
    if (micro == n_micro - 1 && n_micro > 1) {
        float n = (float)n_micro;
        for (int64_t i = 0; i < numel; i++) acc[i] /= n;
    }
    return TS_OK;
}
