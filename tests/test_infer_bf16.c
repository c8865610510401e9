/* test_infer_bf16.c - inference on bf16 matmul weights (ts_model_weights_narrow_matmuls and
 * ts_model_load_for_inference, model.h) for the dense baseline (dense-tiny) and DeepSeek-V4 (the
 * tiny preset at hidden 64, with its MTP block), 2-D weights scaled up so that attention, the
 * indexer and the argmax carry signal:
 *  - which tensors are narrowed: every linear of the dense model and its tied embedding; V4's
 *    attention projections, experts and MTP projections, and nothing of what spec §4.5 keeps in
 *    FP32 (mHC, compressors, indexer, router, head) nor norms or the (untied) embedding - and
 *    the bf16 values are the f32 ones rounded to nearest even (checked bit for bit);
 *  - decoding on the bf16 weights (token by token, and a prompt through extend in uneven pieces)
 *    against the full forward pass on f32 weights holding the same rounded values (f32
 *    activations): every position's logits within 1e-4 of the logit scale; and against decoding
 *    on those f32 weights: bit for bit (the GEMM widens bf16 exactly and keeps the arithmetic);
 *  - against the original f32 model: the greedy text of the f32 decoder, fed to the bf16 one,
 *    gets the same argmax at >= 90% of its positions, and the logits' relative rms difference
 *    is <= 10% (V4's discrete choices - routing, indexer picks - can flip on a few tokens);
 *  - --dtype names (f32, bf16 only); ts_model_load_for_inference: bf16 reads a checkpoint
 *    (both families, stacked experts included) straight into the same tensors, bit for bit the
 *    f32 load narrowed afterwards; f16 is refused with nothing returned. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "model_fixture.h"
#include "tessera/backend.h"
#include "tessera/model.h"

enum { T = 80, PROMPT = 16 };

/* Weights of cfg from the init scheme, 2-D ones times gain. */
static ts_model_weights *make(const ts_v4_config *c, uint64_t seed, float gain) {
    char err[256] = "";
    ts_model_weights *w = NULL;
    ts_status s = ts_model_weights_new(c, TS_F32, &w, err, sizeof err);
    if (s == TS_OK) s = ts_model_weights_init(w, seed, err, sizeof err);
    CHECK(s == TS_OK, "weights: %s", err);
    if (s != TS_OK) return NULL;
    for (int i = 0; i < ts_model_weights_count(w); i++) {
        const ts_model_tensor *t = ts_model_weights_info(w, i);
        if (ts_model_weights_mem_dtype(w, i) != TS_F32 || t->ndim != 2) continue;
        float *d = ts_model_weights_data(w, i);
        for (int64_t j = 0; j < ts_model_tensor_numel(t); j++) d[j] *= gain;
    }
    return w;
}

/* Whether tensor `name` of a model of this kind must be bf16 (see the top of the file). */
static bool want_narrow(ts_model_kind kind, const ts_model_tensor *t) {
    if (kind == TS_MODEL_DENSE) return t->ndim == 2;
    static const char *const narrow[] = {"attn.wq_a.", "attn.wq_b.", "attn.wkv.", "attn.wo_a.", "attn.wo_b.",
                                         "ffn.experts.", "ffn.shared_experts.", "e_proj.", "h_proj."};
    for (size_t k = 0; k < sizeof narrow / sizeof *narrow; k++)
        if (strstr(t->name, narrow[k])) return true;
    return false;
}

/* Checks which tensors bf is narrowed in and that their values are f32's rounded; rounds the
 * same tensors of r (an f32 copy) in place. */
static void check_and_round(const ts_model_weights *bf, ts_model_weights *r, const char *what) {
    ts_model_kind kind = ts_model_weights_config(bf)->kind;
    int bad_set = 0, bad_bits = 0, narrowed = 0;
    for (int i = 0; i < ts_model_weights_count(bf); i++) {
        const ts_model_tensor *t = ts_model_weights_info(bf, i);
        bool is_bf16 = ts_model_weights_mem_dtype(bf, i) == TS_BF16;
        if (is_bf16 != want_narrow(kind, t) && bad_set++ == 0)
            fprintf(stderr, "%s: %s is %s\n", what, t->name, ts_dtype_name(ts_model_weights_mem_dtype(bf, i)));
        if (!is_bf16) continue;
        narrowed++;
        const uint16_t *h = ts_model_weights_data(bf, i);
        float *f = ts_model_weights_data(r, i);
        for (int64_t j = 0; j < ts_model_tensor_numel(t); j++) {
            bad_bits += h[j] != ts_f32_to_bf16(f[j]);
            f[j] = ts_bf16_to_f32(ts_f32_to_bf16(f[j]));
        }
    }
    CHECK(bad_set == 0 && narrowed > 0, "%s: %d tensors narrowed or kept wrongly (%d narrowed)", what, bad_set,
          narrowed);
    CHECK(bad_bits == 0, "%s: %d bf16 values are not the f32 ones rounded", what, bad_bits);
}

static ts_model_decoder *decoder(ts_model_weights *w, ts_backend *be) {
    char err[256] = "";
    ts_model_decoder *d = NULL;
    ts_status s = ts_model_decoder_new(w, be, 2, T, &d, err, sizeof err);
    CHECK(s == TS_OK, "decoder: %s", err);
    return d;
}

/* Logits [T, V] after each of ids[0..T): token by token (pieces NULL) or through extend in the
 * given pieces (summing to T), in slot 1 of a two-slot decoder. */
static float *decode(ts_model_weights *w, ts_backend *be, const int32_t *ids, const int *pieces) {
    int64_t V = ts_model_weights_config(w)->vocab_size;
    float *out = calloc((size_t)(T * V), sizeof *out);
    ts_model_decoder *d = decoder(w, be);
    int slot = 1;
    for (int64_t at = 0, k = 0; d && at < T; k++) {
        int64_t n = pieces ? pieces[k] : 1;
        ts_status s = pieces ? ts_model_decoder_extend(d, slot, ids + at, n, out + at * V, n)
                             : ts_model_decoder_step(d, 1, &slot, ids + at, out + at * V);
        CHECK(s == TS_OK, "decoding at %lld: %s", (long long)at, ts_status_name(s));
        if (s != TS_OK) break;
        at += n;
    }
    ts_model_decoder_free(d);
    return out;
}

static int argmax(const float *row, int64_t V) {
    int best = 0;
    for (int64_t v = 1; v < V; v++)
        if (row[v] > row[best]) best = (int)v;
    return best;
}

/* ids[PROMPT..T) := the f32 model's greedy continuation of ids[0..PROMPT). */
static void greedy_text(ts_model_weights *w, ts_backend *be, int32_t *ids) {
    int64_t V = ts_model_weights_config(w)->vocab_size;
    float *row = malloc((size_t)V * sizeof *row);
    ts_model_decoder *d = decoder(w, be);
    int slot = 0;
    for (int64_t i = 0; d && i + 1 < T; i++) {
        CHECK(ts_model_decoder_step(d, 1, &slot, &ids[i], row) == TS_OK, "greedy step %lld", (long long)i);
        if (i + 1 >= PROMPT) ids[i + 1] = argmax(row, V);
    }
    ts_model_decoder_free(d);
    free(row);
}

static void test_model(const ts_v4_config *c, float gain, const char *what) {
    ts_model_weights *f32 = make(c, 7, gain), *bf = make(c, 7, gain), *rounded = make(c, 7, gain);
    ts_backend *be = NULL;
    CHECK(ts_backend_cpu_new(2, &be) == TS_OK, "backend");
    if (!f32 || !bf || !rounded || !be) return;
    char err[256] = "";
    CHECK(ts_model_weights_narrow_matmuls(bf, TS_BF16, err, sizeof err) == TS_OK, "%s: narrow: %s", what, err);
    check_and_round(bf, rounded, what);
    int64_t V = c->vocab_size;
    int32_t ids[T];
    for (int i = 0; i < T; i++) ids[i] = (int32_t)(3 + (i * 37 + 11) % 250);
    greedy_text(f32, be, ids);

    double *full = full_logits(rounded, be, ids, T);
    float *stepped = decode(bf, be, ids, NULL), *stepped_f32 = decode(rounded, be, ids, NULL);
    static const int pieces[] = {1, 30, 2, 47};
    float *extended = decode(bf, be, ids, pieces), *extended_f32 = decode(rounded, be, ids, pieces);
    float *orig = decode(f32, be, ids, NULL);
    double scale = 0, d_step = 0, d_ext = 0, err2 = 0, energy = 0;
    int same = 0;
    for (int64_t e = 0; full && e < T * V; e++) scale = fmax(scale, fabs(full[e]));
    for (int64_t e = 0; full && e < T * V; e++) {
        d_step = fmax(d_step, fabs(stepped[e] - full[e]));
        d_ext = fmax(d_ext, fabs(extended[e] - full[e]));
        err2 += ((double)stepped[e] - orig[e]) * ((double)stepped[e] - orig[e]);
        energy += (double)orig[e] * orig[e];
    }
    for (int64_t p = PROMPT - 1; p + 1 < T; p++) same += argmax(stepped + p * V, V) == ids[p + 1];
    int greedy_n = T - PROMPT;
    double rel = sqrt(err2 / energy);
    CHECK(full && d_step <= 1e-4 * scale && d_ext <= 1e-4 * scale,
          "%s: bf16 decoding vs the full pass on rounded weights: steps %.3g, extend %.3g (scale %.3g)", what, d_step,
          d_ext, scale);
    size_t bytes = (size_t)(T * V) * sizeof(float);
    CHECK(memcmp(stepped, stepped_f32, bytes) == 0 && memcmp(extended, extended_f32, bytes) == 0,
          "%s: bf16 decoding differs from f32 decoding on the rounded weights", what);
    CHECK(rel <= 0.1 && same >= greedy_n * 9 / 10,
          "%s: vs the f32 model: relative rms logit difference %.3g, greedy tokens %d of %d", what, rel, same, greedy_n);
    printf("  %s: |bf16 decode - full pass on rounded weights| %.2e (steps) %.2e (extend), scale %.2f; vs the f32 "
           "model: relative rms %.2e, same greedy token at %d of %d\n",
           what, d_step, d_ext, scale, rel, same, greedy_n);
    free(full);
    free(stepped);
    free(stepped_f32);
    free(extended);
    free(extended_f32);
    free(orig);
    ts_backend_free(be);
    ts_model_weights_free(f32);
    ts_model_weights_free(bf);
    ts_model_weights_free(rounded);
}

/* A checkpoint through ts_model_load_for_inference: the f32 load narrowed afterwards, bit for bit. */
static void test_load(const ts_v4_config *c, const char *what) {
    char dir[] = "/tmp/tessera_infer_bf16_XXXXXX", err[256] = "";
    CHECK(mkdtemp(dir) != NULL, "mkdtemp");
    CHECK(ts_model_init_write(c, 3, TS_F32, dir, true, err, sizeof err) == TS_OK, "init: %s", err);
    ts_model_weights *w = NULL, *ref = NULL;
    ts_status s = ts_model_load_for_inference(dir, TS_BF16, &w, err, sizeof err);
    CHECK(s == TS_OK, "%s: load bf16: %s", what, err);
    CHECK(ts_model_load(dir, TS_F32, &ref, err, sizeof err) == TS_OK &&
              ts_model_weights_narrow_matmuls(ref, TS_BF16, err, sizeof err) == TS_OK,
          "%s: f32 load, narrowed: %s", what, err);
    int narrowed = 0, same = 0;
    for (int i = 0; w && ref && i < ts_model_weights_count(w); i++) {
        ts_dtype dt = ts_model_weights_mem_dtype(w, i);
        size_t bytes = ts_dtype_bytes(dt, ts_model_tensor_numel(ts_model_weights_info(w, i)));
        narrowed += dt == TS_BF16;
        same += dt == ts_model_weights_mem_dtype(ref, i) &&
                !memcmp(ts_model_weights_data(w, i), ts_model_weights_data(ref, i), bytes);
    }
    CHECK(w && ref && narrowed > 0 && same == ts_model_weights_count(w), "%s: %d of %d tensors as loaded then narrowed (%d bf16)",
          what, same, w ? ts_model_weights_count(w) : 0, narrowed);
    if (w && c->kind == TS_MODEL_DENSE) /* tied, so narrowed */
        CHECK(ts_model_weights_mem_dtype(w, ts_model_weights_find(w, "embed.weight")) == TS_BF16,
              "loaded embed.weight is not bf16");
    ts_model_weights_free(w);
    ts_model_weights_free(ref);
    s = ts_model_load_for_inference(dir, TS_F16, &w, err, sizeof err);
    CHECK(s == TS_ERR_UNSUPPORTED && w == NULL && strstr(err, "f16"), "f16: %s '%s'", ts_status_name(s), err);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    CHECK(system(cmd) == 0, "cleanup");
}

int main(void) {
    ts_v4_config dense, v4;
    ts_v4_preset("dense-tiny", &dense);
    ts_v4_preset("tiny", &v4);
    v4.hidden_size = 64;
    v4.moe_intermediate_size = 32;
    v4.q_lora_rank = 32;
    test_model(&dense, 6, "dense-tiny");
    test_model(&v4, 8, "tiny V4");
    ts_dtype dt = TS_F64;
    CHECK(!ts_model_matmul_dtype_from_name("fp7", &dt) && !ts_model_matmul_dtype_from_name("f16", &dt) &&
              dt == TS_F64, "bad names accepted");
    CHECK(ts_model_matmul_dtype_from_name("bf16", &dt) && dt == TS_BF16, "bf16");
    CHECK(ts_model_matmul_dtype_from_name("f32", &dt) && dt == TS_F32, "f32");
    test_load(&dense, "dense-tiny");
    test_load(&v4, "tiny V4");
    return check_summary("infer_bf16");
}
