/* complete.c - greedy continuation of a batch of prompts (evaluation of the synthetic tasks,
 * samples in the training log). DeepSeek-V4 models run the incremental decoder (decode.c): every
 * row advances one token per step - a prompt token while it prefills, then its own last pick -
 * so prefill and generation of different rows share each step. Other models recompute the whole
 * window: one forward graph of a fixed [B, T] shape; each step writes every row's tokens so far
 * (padded), computes, and appends the argmax at each row's last position (causality makes the
 * padding irrelevant; quadratic in the length). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tessera/model.h"

struct ts_model_completer {
    ts_model_decoder *dec; /* V4: incremental decoding */
    ts_model_graph *mg;    /* otherwise: the whole window per step */
    int64_t B, T, V;
    int32_t *ids;  /* [B, T] */
    float *row;    /* [V] */
};

ts_status ts_model_completer_new(const ts_model_weights *w, ts_backend *be, int64_t batch, int64_t max_len,
                                 ts_model_completer **out, char *err, size_t err_size) {
    if (!w || !be || !out || batch < 1 || max_len < 2) return TS_ERR_INVALID_ARG;
    *out = NULL;
    ts_model_completer *c = calloc(1, sizeof *c);
    if (!c) return TS_ERR_OOM;
    c->B = batch;
    c->T = max_len;
    c->V = ts_model_weights_config(w)->vocab_size;
    ts_status s;
    if (ts_model_weights_config(w)->kind == TS_MODEL_DEEPSEEK_V4) {
        s = ts_model_decoder_new(w, be, (int)batch, max_len, &c->dec, err, err_size);
    } else {
        ts_model_graph_options o = {.batch = batch, .seq = max_len};
        s = ts_model_graph_build(w, &o, &c->mg, err, err_size);
        if (s == TS_OK) s = ts_model_graph_alloc(c->mg, be, NULL, err, err_size);
    }
    c->ids = malloc((size_t)(batch * max_len) * sizeof *c->ids);
    c->row = malloc((size_t)(batch * c->V) * sizeof *c->row);
    if (s == TS_OK && (!c->ids || !c->row)) {
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
    ts_model_graph_free(c->mg);
    ts_model_decoder_free(c->dec);
    free(c->ids);
    free(c->row);
    free(c);
}

int64_t ts_model_completer_batch(const ts_model_completer *c) { return c->B; }
int64_t ts_model_completer_max_len(const ts_model_completer *c) { return c->T; }

static int32_t argmax_row(const float *row, int64_t V);

static int32_t argmax_at(ts_model_completer *c, int64_t r, int64_t t) {
    const ts_tensor *lg = c->mg->logits;
    int64_t base = (r * c->T + t) * c->V;
    if (lg->dtype == TS_F32) memcpy(c->row, (const float *)lg->data + base, (size_t)c->V * sizeof(float));
    else
        for (int64_t v = 0; v < c->V; v++) c->row[v] = (float)((const double *)lg->data)[base + v];
    return argmax_row(c->row, c->V);
}

static int32_t argmax_row(const float *row, int64_t V) {
    int32_t best = 0;
    for (int64_t v = 1; v < V; v++)
        if (row[v] > row[best]) best = (int32_t)v;
    return best;
}

/* The decoder path: row r feeds prompt[r][pos] while pos < len, then its last pick. */
static ts_status complete_decoding(ts_model_completer *c, int n, const int32_t *const *prompts,
                                   const int64_t *prompt_lens, int64_t max_new, int32_t stop_id, int32_t **outs,
                                   int64_t *out_lens) {
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

ts_status ts_model_complete(ts_model_completer *c, int n, const int32_t *const *prompts, const int64_t *prompt_lens,
                            int64_t max_new, int32_t stop_id, int32_t pad_id, int32_t **outs, int64_t *out_lens) {
    if (n < 1 || n > c->B || !prompts || !prompt_lens || !outs || !out_lens) return TS_ERR_INVALID_ARG;
    for (int r = 0; r < n; r++)
        if (prompt_lens[r] < 1 || prompt_lens[r] >= c->T) return TS_ERR_RANGE;
    if (c->dec) return complete_decoding(c, n, prompts, prompt_lens, max_new, stop_id, outs, out_lens);
    if (!c->mg->logits->data) return TS_ERR_UNSUPPORTED; /* needs host-visible memory */
    int64_t len[n];
    bool done[n];
    for (int64_t i = 0; i < c->B * c->T; i++) c->ids[i] = pad_id;
    for (int r = 0; r < n; r++) {
        memcpy(c->ids + r * c->T, prompts[r], (size_t)prompt_lens[r] * sizeof(int32_t));
        len[r] = prompt_lens[r];
        done[r] = false;
        out_lens[r] = 0;
    }
    for (int64_t step = 0; step < max_new; step++) {
        bool any = false;
        for (int r = 0; r < n; r++) any = any || (!done[r] && len[r] < c->T);
        if (!any) break;
        ts_status s = ts_tensor_write(c->mg->ids, c->ids, (size_t)(c->B * c->T) * sizeof(int32_t));
        if (s == TS_OK) s = ts_graph_compute(c->mg->graph);
        if (s != TS_OK) return s;
        for (int r = 0; r < n; r++) {
            if (done[r] || len[r] >= c->T) continue;
            int32_t next = argmax_at(c, r, len[r] - 1);
            if (next == stop_id) {
                done[r] = true;
                continue;
            }
            outs[r][out_lens[r]++] = next;
            c->ids[r * c->T + len[r]++] = next;
        }
    }
    return TS_OK;
}
