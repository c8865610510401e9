/* synth_eval.c - exact-answer accuracy of a model on the held-out items of the embedded
 * synthetic dataset (data.h): the prompts are completed greedily in batches by a
 * ts_model_completer, then scored by ts_synth_evaluate, which owns the item list and the
 * scoring rule (its per-prompt callback looks the batched answers up). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tessera/train.h"

typedef struct {
    ts_synth_item *items;
    char (*answers)[TS_SYNTH_ANSWER_CAP + 1];
    size_t n;
} answer_table;

static int lookup(void *ctx, const char *prompt, size_t prompt_len, char *out, size_t cap, size_t *out_len) {
    const answer_table *t = ctx;
    for (size_t i = 0; i < t->n; i++) {
        const ts_synth_item *it = &t->items[i];
        if ((size_t)it->prompt_len != prompt_len || memcmp(it->text, prompt, prompt_len) != 0) continue;
        size_t n = strlen(t->answers[i]);
        if (n > cap) n = cap;
        memcpy(out, t->answers[i], n);
        *out_len = n;
        return 0;
    }
    return 1; /* a prompt we did not complete: the item lists disagree */
}

/* Completes items[0..n) in batches; answers[i] receives the decoded text. */
static ts_status complete_all(ts_model_completer *c, const ts_synth_item *items, size_t n,
                              char (*answers)[TS_SYNTH_ANSWER_CAP + 1]) {
    int64_t B = ts_model_completer_batch(c);
    int32_t prompt_ids[B][TS_SYNTH_TEXT_MAX + 1], out_ids[B][TS_SYNTH_ANSWER_CAP];
    const int32_t *prompts[B];
    int32_t *outs[B];
    int64_t lens[B], out_lens[B];
    for (size_t first = 0; first < n; first += (size_t)B) {
        int rows = (int)((n - first) < (size_t)B ? n - first : (size_t)B);
        for (int r = 0; r < rows; r++) {
            const ts_synth_item *it = &items[first + r];
            prompt_ids[r][0] = TS_BYTE_BOS;
            for (int k = 0; k < it->prompt_len; k++) prompt_ids[r][k + 1] = (uint8_t)it->text[k] + TS_BYTE_OFFSET;
            prompts[r] = prompt_ids[r];
            lens[r] = it->prompt_len + 1;
            outs[r] = out_ids[r];
        }
        ts_status s = ts_model_complete(c, rows, prompts, lens, TS_SYNTH_ANSWER_CAP, TS_BYTE_EOS, TS_BYTE_PAD, outs,
                                        out_lens);
        if (s != TS_OK) return s;
        for (int r = 0; r < rows; r++)
            ts_byte_decode(out_ids[r], (size_t)out_lens[r], answers[first + r], TS_SYNTH_ANSWER_CAP + 1);
    }
    return TS_OK;
}

ts_status ts_synth_evaluate_model(uint64_t seed, int n_per_task, ts_model_completer *c, ts_synth_eval *out,
                                  ts_io_error *err) {
    size_t n = (size_t)n_per_task * TS_SYNTH_TASK_COUNT;
    answer_table t = {calloc(n ? n : 1, sizeof *t.items), calloc(n ? n : 1, sizeof *t.answers), n};
    ts_status s = t.items && t.answers ? TS_OK : TS_ERR_OOM;
    if (s == TS_OK) {
        ts_synth_generate(seed, TS_SYNTH_VAL, n, t.items);
        s = complete_all(c, t.items, n, t.answers);
        if (s != TS_OK) ts_io_set_error(err, s, "synthetic evaluation: completing the prompts failed: %s",
                                        ts_status_name(s));
    }
    if (s == TS_OK) s = ts_synth_evaluate(seed, n_per_task, lookup, &t, out, err);
    free(t.items);
    free(t.answers);
    return s;
}
