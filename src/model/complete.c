/* complete.c - greedy continuation of a batch of prompts (evaluation of the synthetic tasks,
 * samples in the training log) on the incremental decoder (decoder.c, every model kind): every
 * row advances one token per step - a prompt token while it prefills, then its own last pick -
 * so prefill and generation of different rows share each step. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tessera/model.h"

struct ts_model_completer {
    ts_model_decoder *dec;
    int64_t B, T, V;
    float *row; /* [B, V] */
};

ts_status ts_model_completer_new(const ts_model_weights *w, ts_backend *be, int64_t batch, int64_t max_len,
                                 ts_model_completer **out, char *err, size_t err_size) {
    if (!w || !be || !out || batch < 1 || batch > INT32_MAX || max_len < 2) return TS_ERR_INVALID_ARG;
    *out = NULL;
    ts_model_completer *c = calloc(1, sizeof *c);
    if (!c) return TS_ERR_OOM;
    c->B = batch;
    c->T = max_len;
    c->V = ts_model_weights_config(w)->vocab_size;
    ts_status s = ts_model_decoder_new(w, be, (int)batch, max_len, &c->dec, err, err_size);
    c->row = malloc((size_t)(batch * c->V) * sizeof *c->row);
    if (s == TS_OK && !c->row) {
        ts_error_printf(err, err_size, "completer: out of memory");
        s = TS_ERR_OOM;
    }
    if (s != TS_OK) {
        ts_model_completer_free(c);
        return s;
    }
    *out = c;
    return TS_OK;
}

void ts_model_completer_free(ts_model_completer *c) {
    if (!c) return;
    ts_model_decoder_free(c->dec);
    free(c->row);
    free(c);
}

int64_t ts_model_completer_batch(const ts_model_completer *c) { return c->B; }
int64_t ts_model_completer_max_len(const ts_model_completer *c) { return c->T; }

static int32_t argmax_row(const float *row, int64_t V) {
    int32_t best = 0;
    for (int64_t v = 1; v < V; v++)
        if (row[v] > row[best]) best = (int32_t)v;
    return best;
}

/* Row r feeds prompt[r][pos] while pos < len, then its last pick. */
static ts_status complete_rows(ts_model_completer *c, int n, const int32_t *const *prompts, const int64_t *prompt_lens,
                               int64_t max_new, int32_t stop_id, int32_t **outs, int64_t *out_lens) {
    int64_t pos[n];
    bool done[n];
    int32_t feed[n];
    int slots[n], rows[n];
    for (int r = 0; r < n; r++) {
        ts_model_decoder_reset(c->dec, r);
        pos[r] = 0;
        done[r] = max_new < 1;
        out_lens[r] = 0;
    }
    for (;;) {
        int k = 0;
        for (int r = 0; r < n; r++) {
            if (done[r] || pos[r] >= c->T) continue;
            feed[k] = pos[r] < prompt_lens[r] ? prompts[r][pos[r]] : outs[r][out_lens[r] - 1];
            slots[k] = r;
            rows[k++] = r;
        }
        if (k == 0) return TS_OK;
        ts_status s = ts_model_decoder_step(c->dec, k, slots, feed, c->row);
        if (s != TS_OK) return s;
        for (int i = 0; i < k; i++) {
            int r = rows[i];
            if (++pos[r] < prompt_lens[r]) continue; /* still prefilling */
            int32_t next = argmax_row(c->row + (int64_t)i * c->V, c->V);
            if (next == stop_id) done[r] = true;
            else outs[r][out_lens[r]++] = next;
            if (out_lens[r] >= max_new) done[r] = true;
        }
    }
}

/* pad_id: unused since every model decodes incrementally (no padded window any more). */
ts_status ts_model_complete(ts_model_completer *c, int n, const int32_t *const *prompts, const int64_t *prompt_lens,
                            int64_t max_new, int32_t stop_id, int32_t pad_id, int32_t **outs, int64_t *out_lens) {
    (void)pad_id;
    if (n < 1 || n > c->B || !prompts || !prompt_lens || !outs || !out_lens) return TS_ERR_INVALID_ARG;
    for (int r = 0; r < n; r++)
        if (prompt_lens[r] < 1 || prompt_lens[r] >= c->T) return TS_ERR_RANGE;
    return complete_rows(c, n, prompts, prompt_lens, max_new, stop_id, outs, out_lens);
}
