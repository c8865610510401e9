/* test_safetensors.c - the io layer against the reference: files written by the Python
 * safetensors library (tests/fixtures/safetensors, made by tools/make_safetensors_fixture.py,
 * with expected values computed there from the format definitions) must read back exactly;
 * our writer must reproduce those files byte for byte and round-trip through our reader;
 * sharded checkpoints, FP8 / MXFP4 dequantisation and the loader's conversions and errors;
 * every kind of corrupt file must give TS_ERR_FORMAT (or IO) with a message naming the file
 * and the tensor, never a crash (run it under ASan too); atomic writes leave no temporary
 * files and never a partial target. */
#define _XOPEN_SOURCE 700
#include <dirent.h>
#include <fcntl.h>
#include <ftw.h>
#include <jansson.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "check.h"
#include "files.h"
#include "tessera/core.h"
#include "tessera/io.h"

/* ---------------------------------------------------------------- helpers */

/* CHECK that a call returned `want`; on a mismatch print the io error. */
#define CHECK_STATUS(expr, want, err)                                                                        \
    do {                                                                                                     \
        ts_status got_ = (expr);                                                                             \
        CHECK(got_ == (want), "%s -> %s (wanted %s): %s", #expr, ts_status_name(got_), ts_status_name(want), \
              (err).message);                                                                                \
    } while (0)

#define CHECK_MSG(err, needle)                                                                               \
    CHECK(strstr((err).message, (needle)) != NULL, "message lacks \"%s\": %s", (needle), (err).message)

static char tmp_dir[256];

/* The fixtures sit beside this source file; __FILE__ is absolute in CMake builds. */
static const char *fixture(const char *name) { return test_fixture_path("safetensors", name); }

static const char *tmp_path(const char *name) {
    static char buf[8][600];
    static int next;
    char *p = buf[next++ % 8];
    snprintf(p, sizeof buf[0], "%s/%s", tmp_dir, name);
    return p;
}

static bool file_exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0;
}

/* Does any entry of dir start with prefix? (finds leftover temporary files) */
static bool dir_has_prefix(const char *dir, const char *prefix) {
    DIR *d = opendir(dir);
    bool found = false;
    struct dirent *de;
    while (d && (de = readdir(d)) != NULL)
        if (strncmp(de->d_name, prefix, strlen(prefix)) == 0) found = true;
    if (d) closedir(d);
    return found;
}

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st, (void)flag, (void)ftw;
    return remove(path);
}

static json_t *expected;

static json_t *jpath(json_t *root, const char *a, const char *b, const char *c) {
    json_t *v = json_object_get(root, a);
    if (b) v = json_object_get(v, b);
    if (c) v = json_object_get(v, c);
    return v;
}

/* Element i of a tensor as double, read through memcpy (tensor data need not be aligned). */
static double element(const ts_st_tensor *t, int64_t i) {
    unsigned char raw[8] = {0};
    int bytes = ts_st_dtype_bits(t->dtype) / 8;
    memcpy(raw, (const unsigned char *)t->data + i * bytes, (size_t)bytes);
    switch (t->dtype) {
    case TS_ST_U8: return raw[0];
    case TS_ST_I16: {
        int16_t v;
        memcpy(&v, raw, 2);
        return v;
    }
    default: {
        ts_dtype d;
        if (!ts_st_dtype_to_dtype(t->dtype, &d)) return NAN;
        return ts_load_f64(raw, d, 0);
    }
    }
}

static int64_t element_i64(const ts_st_tensor *t, int64_t i) {
    int64_t v;
    memcpy(&v, (const unsigned char *)t->data + i * 8, 8);
    return v;
}

static bool same_double(double a, double b) {
    return (isnan(a) && isnan(b)) || (a == b && signbit(a) == signbit(b));
}

/* ---------------------------------------------------------------- reading reference files */

static void check_tensor_against(const ts_st_tensor *t, const char *name, json_t *want) {
    CHECK(strcmp(ts_st_dtype_name(t->dtype), json_string_value(json_object_get(want, "dtype"))) == 0,
          "%s: dtype %s", name, ts_st_dtype_name(t->dtype));
    json_t *shape = json_object_get(want, "shape");
    CHECK(t->ndim == (int)json_array_size(shape), "%s: ndim %d", name, t->ndim);
    for (int d = 0; d < t->ndim && d < (int)json_array_size(shape); d++)
        CHECK(t->shape[d] == json_integer_value(json_array_get(shape, (size_t)d)), "%s: dim %d", name, d);
    json_t *values = json_object_get(want, "values");
    CHECK(t->numel == (int64_t)json_array_size(values), "%s: numel %lld", name, (long long)t->numel);
    int bytes = ts_st_dtype_bits(t->dtype) / 8;
    CHECK(t->nbytes == (size_t)(t->numel * bytes), "%s: nbytes %zu", name, t->nbytes);
    CHECK(((uintptr_t)t->data % (uintptr_t)bytes) == 0, "%s: reference files keep data aligned", name);
    for (size_t i = 0; i < json_array_size(values) && (int64_t)i < t->numel; i++) {
        json_t *v = json_array_get(values, i);
        if (t->dtype == TS_ST_I64) {
            CHECK(element_i64(t, (int64_t)i) == json_integer_value(v), "%s[%zu]", name, i);
        } else {
            double want_v = json_is_integer(v) ? (double)json_integer_value(v) : json_real_value(v);
            double got = element(t, (int64_t)i);
            CHECK(same_double(got, want_v), "%s[%zu] = %.17g, expected %.17g", name, i, got, want_v);
        }
    }
}

static void test_dtypes_fixture(void) {
    ts_io_error err = {0};
    ts_st_file *f = NULL;
    CHECK_STATUS(ts_st_file_open(fixture("dtypes.safetensors"), &f, &err), TS_OK, err);
    if (!f) return;
    json_t *want = jpath(expected, "dtypes", "tensors", NULL);
    CHECK(ts_st_file_count(f) == json_object_size(want), "count %zu", ts_st_file_count(f));
    const char *name;
    json_t *w;
    json_object_foreach(want, name, w) {
        const ts_st_tensor *t = ts_st_file_find(f, name);
        CHECK(t != NULL, "tensor %s not found", name);
        if (t) check_tensor_against(t, name, w);
    }
    for (size_t i = 1; i < ts_st_file_count(f); i++)
        CHECK(strcmp(ts_st_file_tensor(f, i - 1)->name, ts_st_file_tensor(f, i)->name) < 0, "name order");
    CHECK(ts_st_file_find(f, "t.nope") == NULL, "absent name found");
    CHECK(ts_st_file_metadata_count(f) == 1, "metadata count");
    const char *fmt = ts_st_file_metadata(f, "format");
    CHECK(fmt && strcmp(fmt, "pt") == 0, "metadata format = %s", fmt ? fmt : "(null)");
    const ts_st_tensor *scalar = ts_st_file_find(f, "t.scalar");
    CHECK(scalar && scalar->ndim == 0 && scalar->numel == 1, "scalar");
    ts_st_file_close(f);
}

/* Our writer, given what the reference wrote, must write the same bytes. */
static void rewrite_and_compare(const char *src_path, const char *dst_name) {
    ts_io_error err = {0};
    ts_st_file *f = NULL;
    CHECK_STATUS(ts_st_file_open(src_path, &f, &err), TS_OK, err);
    if (!f) return;
    size_t n = ts_st_file_count(f), n_meta = ts_st_file_metadata_count(f);
    ts_st_write_tensor *w = calloc(n + 1, sizeof *w);
    ts_st_metadata *meta = calloc(n_meta + 1, sizeof *meta);
    /* give them in reverse order: the writer must impose the reference order itself */
    for (size_t i = 0; i < n; i++) {
        const ts_st_tensor *t = ts_st_file_tensor(f, n - 1 - i);
        w[i] = (ts_st_write_tensor){t->name, t->dtype, t->ndim, t->shape, t->data, t->nbytes};
    }
    for (size_t i = 0; i < n_meta; i++) ts_st_file_metadata_at(f, i, &meta[i].key, &meta[i].value);
    const char *dst = tmp_path(dst_name);
    CHECK_STATUS(ts_st_write(dst, w, n, meta, n_meta, &err), TS_OK, err);
    size_t len_a = 0, len_b = 0;
    unsigned char *a = (unsigned char *)test_read_file(src_path, &len_a), *b = (unsigned char *)test_read_file(dst, &len_b);
    CHECK(a && b && len_a == len_b && memcmp(a, b, len_a) == 0,
          "%s rewritten differs from the reference (%zu vs %zu bytes)", src_path, len_a, len_b);
    free(a);
    free(b);
    free(w);
    free(meta);
    ts_st_file_close(f);
}

static void test_byte_identical_rewrite(void) {
    rewrite_and_compare(fixture("dtypes.safetensors"), "rewrite_dtypes.safetensors");
    rewrite_and_compare(fixture("sharded/model-00001-of-00002.safetensors"), "rewrite_s1.safetensors");
    rewrite_and_compare(fixture("sharded/model-00002-of-00002.safetensors"), "rewrite_s2.safetensors");
}

/* ---------------------------------------------------------------- dequantisation */

static void test_dequant_units(void) {
    /* FP8, 3x5 with 2x2 blocks: scale [2, 3]; partial blocks at the right and bottom */
    uint8_t w[15];
    for (int i = 0; i < 15; i++) w[i] = ts_f32_to_e4m3((float)(i - 7) * 0.5f);
    uint8_t scale[6] = {127, 128, 126, 130, 0xFF, 120};
    float out[15];
    ts_dequant_fp8_block(w, 3, 5, scale, 2, 2, out);
    for (int r = 0; r < 3; r++)
        for (int c = 0; c < 5; c++) {
            float s = ts_e8m0_to_f32(scale[(r / 2) * 3 + c / 2]);
            float want = ts_e4m3_to_f32(w[r * 5 + c]) * s;
            CHECK(same_double(out[r * 5 + c], want), "fp8 [%d,%d] = %g want %g", r, c, out[r * 5 + c], want);
        }
    CHECK(isnan(out[2 * 5 + 2]), "E8M0 0xFF scale gives NaN");
    uint16_t out_bf16[15];
    ts_dequant_fp8_block_bf16(w, 3, 5, scale, 2, 2, out_bf16);
    for (int i = 0; i < 15; i++)
        CHECK(out_bf16[i] == ts_f32_to_bf16(out[i]) || (isnan(out[i]) && isnan(ts_bf16_to_f32(out_bf16[i]))),
              "fp8 bf16 [%d]", i);

    /* MXFP4, one row of 35 (odd, crosses a 32-group): byte k = code(2k) | code(2k+1) << 4 */
    uint8_t codes[35], packed[18] = {0}, mx_scale[2] = {129, 125};
    for (int c = 0; c < 35; c++) {
        codes[c] = (uint8_t)((c * 7 + 3) & 15);
        packed[c / 2] |= (uint8_t)(c & 1 ? codes[c] << 4 : codes[c]);
    }
    float mx[35];
    ts_dequant_mxfp4(packed, 1, 35, mx_scale, mx);
    for (int c = 0; c < 35; c++) {
        float want = ts_e2m1_to_f32(codes[c]) * ts_e8m0_to_f32(mx_scale[c / 32]);
        CHECK(same_double(mx[c], want), "mxfp4 [%d] = %g want %g", c, mx[c], want);
    }
    /* the nibble order spelled out: byte 0x72 -> element 0 = code 2 (1.0), element 1 = code 7 (6.0) */
    uint8_t one_byte = 0x72, unit_scale = 127;
    float pair[2];
    ts_dequant_mxfp4(&one_byte, 1, 2, &unit_scale, pair);
    CHECK(pair[0] == 1.0f && pair[1] == 6.0f, "low nibble first: got %g %g", pair[0], pair[1]);
    uint16_t pair_bf16[2];
    ts_dequant_mxfp4_bf16(&one_byte, 1, 2, &unit_scale, pair_bf16);
    CHECK(pair_bf16[0] == ts_f32_to_bf16(1.0f) && pair_bf16[1] == ts_f32_to_bf16(6.0f), "mxfp4 bf16");
}

static void test_quant_fixture(void) {
    ts_io_error err = {0};
    ts_checkpoint *ck = NULL;
    CHECK_STATUS(ts_checkpoint_open(fixture("quant.safetensors"), &ck, &err), TS_OK, err);
    if (!ck) return;
    json_t *fp8 = jpath(expected, "quant", "fp8", NULL);
    const char *fp8_name = json_string_value(json_object_get(fp8, "name"));
    int64_t shape[2] = {130, 260};
    float *w = calloc(130 * 260, sizeof *w);
    CHECK_STATUS(ts_checkpoint_load(ck, fp8_name, 2, shape, TS_F32, w, 130 * 260 * sizeof *w, &err), TS_OK,
                 err);
    double sum = 0, weighted = 0;
    for (int64_t i = 0; i < 130 * 260; i++) {
        sum += w[i];
        weighted += w[i] * (double)(1 + i % 7);
    }
    CHECK(sum == json_real_value(json_object_get(fp8, "sum")), "fp8 sum %.17g", sum);
    CHECK(weighted == json_real_value(json_object_get(fp8, "weighted_sum")), "fp8 weighted sum %.17g",
          weighted);
    json_t *samples = json_object_get(fp8, "samples");
    for (size_t i = 0; i < json_array_size(samples); i++) {
        json_t *s = json_array_get(samples, i);
        int64_t r = json_integer_value(json_array_get(s, 0)), c = json_integer_value(json_array_get(s, 1));
        double want = json_real_value(json_array_get(s, 2));
        CHECK(w[r * 260 + c] == want, "fp8 [%lld,%lld] = %g want %g", (long long)r, (long long)c,
              w[r * 260 + c], want);
    }
    uint16_t *wb = calloc(130 * 260, sizeof *wb);
    CHECK_STATUS(ts_checkpoint_load(ck, fp8_name, 2, shape, TS_BF16, wb, 130 * 260 * 2, &err), TS_OK, err);
    int bf16_bad = 0;
    for (int64_t i = 0; i < 130 * 260; i++) bf16_bad += wb[i] != ts_f32_to_bf16(w[i]);
    CHECK(bf16_bad == 0, "%d bf16 values differ from rounding the f32 ones", bf16_bad);
    free(wb);
    free(w);

    json_t *mx = jpath(expected, "quant", "mxfp4", NULL);
    const char *mx_name = json_string_value(json_object_get(mx, "name"));
    int64_t mx_shape[2] = {6, 128};
    float mxv[6 * 128];
    CHECK_STATUS(ts_checkpoint_load(ck, mx_name, 2, mx_shape, TS_F32, mxv, sizeof mxv, &err), TS_OK, err);
    json_t *vals = json_object_get(mx, "values");
    int mx_bad = 0;
    for (size_t i = 0; i < json_array_size(vals) && i < 6 * 128; i++)
        mx_bad += !same_double(mxv[i], json_real_value(json_array_get(vals, i))) &&
                  !(mxv[i] == 0 && json_real_value(json_array_get(vals, i)) == 0);
    CHECK(mx_bad == 0 && json_array_size(vals) == 6 * 128, "%d MXFP4 values differ from the reference",
          mx_bad);
    uint16_t mx_f16[6 * 128];
    CHECK_STATUS(ts_checkpoint_load(ck, mx_name, 2, mx_shape, TS_F16, mx_f16, sizeof mx_f16, &err), TS_OK,
                 err);
    CHECK(ts_f16_to_f32(mx_f16[5]) == mxv[5], "mxfp4 as f16");

    json_t *plain = jpath(expected, "quant", "plain", NULL);
    float norm[8], base[4];
    int64_t n8 = 8, n4 = 4, ids_shape[2] = {5, 2};
    CHECK_STATUS(ts_checkpoint_load(ck, "layers.0.attn_norm.weight", 1, &n8, TS_F32, norm, sizeof norm, &err),
                 TS_OK, err);
    CHECK_STATUS(ts_checkpoint_load(ck, "hc_head_base", 1, &n4, TS_F32, base, sizeof base, &err), TS_OK, err);
    for (int i = 0; i < 8; i++)
        CHECK(norm[i] == json_real_value(
                             json_array_get(json_object_get(plain, "layers.0.attn_norm.weight"), (size_t)i)),
              "norm[%d]", i);
    for (int i = 0; i < 4; i++)
        CHECK(base[i] ==
                  (float)json_real_value(json_array_get(json_object_get(plain, "hc_head_base"), (size_t)i)),
              "hc_head_base[%d]", i);
    int64_t ids64[10];
    int32_t ids32[10];
    CHECK_STATUS(
        ts_checkpoint_load(ck, "layers.0.ffn.gate.tid2eid", 2, ids_shape, TS_I64, ids64, sizeof ids64, &err),
        TS_OK, err);
    CHECK_STATUS(
        ts_checkpoint_load(ck, "layers.0.ffn.gate.tid2eid", 2, ids_shape, TS_I32, ids32, sizeof ids32, &err),
        TS_OK, err);
    for (int i = 0; i < 10; i++) {
        json_int_t want = json_integer_value(
            json_array_get(json_object_get(plain, "layers.0.ffn.gate.tid2eid"), (size_t)i));
        CHECK(ids64[i] == want && ids32[i] == want, "tid2eid[%d]", i);
    }

    /* loader errors */
    float big[130 * 261];
    int64_t wrong[2] = {130, 261};
    CHECK_STATUS(ts_checkpoint_load(ck, fp8_name, 2, wrong, TS_F32, big, sizeof big, &err), TS_ERR_SHAPE,
                 err);
    CHECK_MSG(err, "expected shape [130, 261]");
    CHECK_MSG(err, "found F8_E4M3 [130, 260]");
    CHECK_MSG(err, fp8_name);
    int64_t mx_wrong[2] = {6, 130};
    CHECK_STATUS(ts_checkpoint_load(ck, mx_name, 2, mx_wrong, TS_F32, big, sizeof big, &err), TS_ERR_SHAPE,
                 err);
    CHECK_MSG(err, "expected shape [6, 65]");
    CHECK_STATUS(ts_checkpoint_load(ck, "nope.weight", 1, &n4, TS_F32, base, sizeof base, &err),
                 TS_ERR_FORMAT, err);
    CHECK_MSG(err, "no tensor 'nope.weight'");
    int64_t wkv_shape[2] = {4, 8};
    CHECK_STATUS(
        ts_checkpoint_load(ck, "layers.0.attn.wkv.weight", 2, wkv_shape, TS_F32, big, sizeof big, &err),
        TS_ERR_FORMAT, err);
    CHECK_MSG(err, "scale 'layers.0.attn.wkv.scale' is missing");
    CHECK_STATUS(
        ts_checkpoint_load(ck, "layers.0.ffn.gate.tid2eid", 2, ids_shape, TS_F32, big, sizeof big, &err),
        TS_ERR_DTYPE, err);
    CHECK_MSG(err, "I64");
    CHECK_STATUS(
        ts_checkpoint_load(ck, "layers.0.attn_norm.weight", 1, &n8, TS_I32, ids32, sizeof ids32, &err),
        TS_ERR_DTYPE, err);
    CHECK_STATUS(ts_checkpoint_load(ck, "layers.0.attn_norm.weight", 1, &n8, TS_F32, norm, 8, &err),
                 TS_ERR_INVALID_ARG, err);
    CHECK_STATUS(
        ts_checkpoint_load(ck, "layers.0.attn_norm.weight", 1, &n8, TS_F8_E4M3, norm, sizeof norm, &err),
        TS_ERR_DTYPE, err);
    ts_checkpoint_close(ck);
}

/* The loader's other paths, on a file our writer makes: an f32 "weight_scale_inv" scale,
 * F4-typed experts, and scales of the wrong shape or dtype or missing. */
static void test_loader_paths(void) {
    ts_io_error err = {0};
    enum { AR = 130, AC = 5 };
    uint8_t a[AR * AC], small[16], packed[32];
    for (int i = 0; i < AR * AC; i++) a[i] = (uint8_t)((i * 37 + 11) & 0x7E);
    for (int i = 0; i < 16; i++) small[i] = 0x38;
    for (int i = 0; i < 32; i++) packed[i] = (uint8_t)(i * 29 + 3);
    float a_scale[2] = {0.25f, 3.0f};
    uint8_t e8[2] = {127, 128}, bf[2] = {0, 0};
    int64_t sa[2] = {AR, AC}, sas[2] = {2, 1}, s44[2] = {4, 4}, s12[2] = {1, 2}, s11[2] = {1, 1};
    int64_t s2_16[2] = {2, 16}, s2_32[2] = {2, 32}, s21[2] = {2, 1};
    ts_st_write_tensor t[] = {
        {"a.weight", TS_ST_F8_E4M3, 2, sa, a, sizeof a},
        {"a.weight_scale_inv", TS_ST_F32, 2, sas, a_scale, sizeof a_scale},
        {"b.weight", TS_ST_F8_E4M3, 2, s44, small, 16},
        {"b.scale", TS_ST_F8_E8M0, 2, s12, e8, 2},
        {"c.weight", TS_ST_F8_E4M3, 2, s44, small, 16},
        {"c.scale", TS_ST_BF16, 2, s11, bf, 2},
        {"d.weight", TS_ST_I8, 2, s2_16, packed, 32},
        {"e.weight", TS_ST_F4, 2, s2_32, packed, 32},
        {"e.scale", TS_ST_F8_E8M0, 2, s21, e8, 2},
    };
    const char *path = tmp_path("loader.safetensors");
    CHECK_STATUS(ts_st_write(path, t, sizeof t / sizeof t[0], NULL, 0, &err), TS_OK, err);
    ts_checkpoint *ck = NULL;
    CHECK_STATUS(ts_checkpoint_open(path, &ck, &err), TS_OK, err);
    if (!ck) return;
    float out[AR * AC];
    uint16_t out_bf16[AR * AC];
    CHECK_STATUS(ts_checkpoint_load(ck, "a.weight", 2, sa, TS_F32, out, sizeof out, &err), TS_OK, err);
    CHECK_STATUS(ts_checkpoint_load(ck, "a.weight", 2, sa, TS_BF16, out_bf16, sizeof out_bf16, &err), TS_OK,
                 err);
    int bad = 0;
    for (int i = 0; i < AR * AC; i++) {
        float want = ts_e4m3_to_f32(a[i]) * a_scale[(i / AC) / 128];
        bad += out[i] != want || out_bf16[i] != ts_f32_to_bf16(want);
    }
    CHECK(bad == 0, "%d values wrong with an f32 scale", bad);
    int64_t flat[1] = {AR * AC};
    CHECK_STATUS(ts_checkpoint_load(ck, "a.weight", 1, flat, TS_F32, out, sizeof out, &err), TS_ERR_SHAPE,
                 err);
    CHECK_MSG(err, "2-D");
    CHECK_STATUS(ts_checkpoint_load(ck, "b.weight", 2, s44, TS_F32, out, sizeof out, &err), TS_ERR_SHAPE,
                 err);
    CHECK_MSG(err, "'b.scale'");
    CHECK_MSG(err, "expected shape [1, 1], found F8_E8M0 [1, 2]");
    CHECK_STATUS(ts_checkpoint_load(ck, "c.weight", 2, s44, TS_F32, out, sizeof out, &err), TS_ERR_DTYPE,
                 err);
    CHECK_MSG(err, "'c.scale'");
    CHECK_STATUS(ts_checkpoint_load(ck, "d.weight", 2, s2_32, TS_F32, out, sizeof out, &err), TS_ERR_FORMAT,
                 err);
    CHECK_MSG(err, "scale 'd.scale' is missing");
    CHECK_STATUS(ts_checkpoint_load(ck, "e.weight", 2, s2_32, TS_F32, out, sizeof out, &err), TS_OK, err);
    float want_e[64];
    ts_dequant_mxfp4(packed, 2, 32, e8, want_e);
    CHECK(memcmp(out, want_e, sizeof want_e) == 0, "F4-typed experts load like packed I8");
    ts_checkpoint_close(ck);
}

/* ---------------------------------------------------------------- sharded checkpoints */

static void check_sharded_values(ts_checkpoint *ck, json_t *want_values) {
    const char *name;
    json_t *vals;
    json_object_foreach(want_values, name, vals) {
        ts_io_error err = {0};
        const ts_st_tensor *t = NULL;
        CHECK_STATUS(ts_checkpoint_get(ck, name, &t, &err), TS_OK, err);
        if (!t) continue;
        CHECK(t->numel == (int64_t)json_array_size(vals), "%s numel", name);
        for (size_t i = 0; i < json_array_size(vals) && (int64_t)i < t->numel; i++) {
            json_t *v = json_array_get(vals, i);
            double want = json_is_integer(v) ? (double)json_integer_value(v) : json_real_value(v);
            CHECK(element(t, (int64_t)i) == want, "%s[%zu]", name, i);
        }
    }
}

static void test_sharded_fixture(void) {
    json_t *sh = jpath(expected, "sharded", NULL, NULL);
    const char *paths[2] = {fixture("sharded"), fixture("sharded/model.safetensors.index.json")};
    for (int k = 0; k < 2; k++) {
        ts_io_error err = {0};
        ts_checkpoint *ck = NULL;
        CHECK_STATUS(ts_checkpoint_open(paths[k], &ck, &err), TS_OK, err);
        if (!ck) continue;
        CHECK(ts_checkpoint_shard_count(ck) == 2, "2 shards, got %zu", ts_checkpoint_shard_count(ck));
        CHECK(ts_checkpoint_count(ck) == 4, "4 tensors, got %zu", ts_checkpoint_count(ck));
        CHECK(ts_checkpoint_has(ck, "head.weight") && !ts_checkpoint_has(ck, "nope"), "has");
        CHECK(strcmp(ts_checkpoint_name(ck, 0), "embed.weight") == 0, "first name");
        check_sharded_values(ck, json_object_get(sh, "values"));
        const ts_st_tensor *t = NULL;
        CHECK_STATUS(ts_checkpoint_get(ck, "head.weight", &t, &err), TS_OK, err);
        CHECK(t && strstr(t->file, json_string_value(jpath(sh, "weight_map", "head.weight", NULL))) != NULL,
              "head.weight comes from its shard");
        ts_checkpoint_close(ck);
    }
}

/* Several threads looking up tensors of a fresh checkpoint race to open the same shards. */
typedef struct {
    ts_checkpoint *ck;
    int ok;
} lookup_job;

static void *lookup_all(void *arg) {
    lookup_job *job = arg;
    static const char *const names[] = {"head.weight", "embed.weight", "layers.0.ids", "norm.weight"};
    for (int rep = 0; rep < 50; rep++)
        for (int i = 0; i < 4; i++) {
            const ts_st_tensor *t = NULL;
            job->ok += ts_checkpoint_get(job->ck, names[i], &t, NULL) == TS_OK && t != NULL;
        }
    return NULL;
}

static void test_sharded_threads(void) {
    ts_io_error err = {0};
    ts_checkpoint *ck = NULL;
    CHECK_STATUS(ts_checkpoint_open(fixture("sharded"), &ck, &err), TS_OK, err);
    if (!ck) return;
    enum { THREADS = 4 };
    pthread_t th[THREADS];
    lookup_job jobs[THREADS];
    for (int i = 0; i < THREADS; i++) {
        jobs[i] = (lookup_job){ck, 0};
        pthread_create(&th[i], NULL, lookup_all, &jobs[i]);
    }
    for (int i = 0; i < THREADS; i++) {
        pthread_join(th[i], NULL);
        CHECK(jobs[i].ok == 200, "thread %d found %d of 200", i, jobs[i].ok);
    }
    ts_checkpoint_close(ck);
}

static void copy_file(const char *from, const char *to) {
    size_t n = 0;
    unsigned char *b = (unsigned char *)test_read_file(from, &n);
    if (b) test_write_file(to, b, n);
    free(b);
}

static void test_sharded_errors(void) {
    ts_io_error err = {0};
    ts_checkpoint *ck = NULL;
    char dir[600];
    snprintf(dir, sizeof dir, "%s", tmp_path("broken"));
    mkdir(dir, 0777);
    char idx[700], s1[700];
    snprintf(idx, sizeof idx, "%s/model.safetensors.index.json", dir);
    snprintf(s1, sizeof s1, "%s/model-00001-of-00002.safetensors", dir);
    copy_file(fixture("sharded/model.safetensors.index.json"), idx);
    copy_file(fixture("sharded/model-00001-of-00002.safetensors"), s1);

    /* shard 2 missing: reported at open, naming the shard and a tensor it should hold */
    CHECK_STATUS(ts_checkpoint_open(dir, &ck, &err), TS_ERR_IO, err);
    CHECK(ck == NULL, "no checkpoint on failure");
    CHECK_MSG(err, "model-00002-of-00002.safetensors");
    CHECK_MSG(err, "missing");

    /* shards open lazily: a corrupt shard 2 only fails the lookups that need it */
    char s2[700];
    snprintf(s2, sizeof s2, "%s/model-00002-of-00002.safetensors", dir);
    test_write_file(s2, "garbage!garbage!", 16);
    CHECK_STATUS(ts_checkpoint_open(dir, &ck, &err), TS_OK, err);
    if (ck) {
        const ts_st_tensor *t = NULL;
        CHECK_STATUS(ts_checkpoint_get(ck, "embed.weight", &t, &err), TS_OK, err);
        CHECK_STATUS(ts_checkpoint_get(ck, "head.weight", &t, &err), TS_ERR_FORMAT, err);
        CHECK_MSG(err, "model-00002-of-00002.safetensors");
        ts_checkpoint_close(ck);
    }
    remove(s2);

    /* a name mapped to a shard that lacks it: found at lookup */
    const char *ghost = "{\"weight_map\": {\"embed.weight\": \"model-00001-of-00002.safetensors\", "
                        "\"ghost\": \"model-00001-of-00002.safetensors\"}}";
    test_write_file(idx, ghost, strlen(ghost));
    CHECK_STATUS(ts_checkpoint_open(dir, &ck, &err), TS_OK, err);
    if (ck) {
        const ts_st_tensor *t = NULL;
        CHECK_STATUS(ts_checkpoint_get(ck, "embed.weight", &t, &err), TS_OK, err);
        CHECK_STATUS(ts_checkpoint_get(ck, "ghost", &t, &err), TS_ERR_FORMAT, err);
        CHECK_MSG(err, "'ghost'");
        CHECK_MSG(err, "no such tensor");
        /* a tensor the shard holds but the index does not list stays invisible */
        CHECK(!ts_checkpoint_has(ck, "norm.weight"), "unlisted tensor visible");
        ts_checkpoint_close(ck);
    }
    const char *escape = "{\"weight_map\": {\"x\": \"../outside.safetensors\"}}";
    test_write_file(idx, escape, strlen(escape));
    CHECK_STATUS(ts_checkpoint_open(idx, &ck, &err), TS_ERR_FORMAT, err);
    CHECK_MSG(err, "'x'");
    const char *no_map = "{\"metadata\": {}}";
    test_write_file(idx, no_map, strlen(no_map));
    CHECK_STATUS(ts_checkpoint_open(idx, &ck, &err), TS_ERR_FORMAT, err);
    CHECK_MSG(err, "weight_map");
    test_write_file(idx, "{\"weight_map\": ", 15);
    CHECK_STATUS(ts_checkpoint_open(idx, &ck, &err), TS_ERR_FORMAT, err);
    CHECK_MSG(err, "not valid JSON");

    /* a directory without an index: every .safetensors file; a name in two of them is an error */
    remove(idx);
    char dup[700];
    snprintf(dup, sizeof dup, "%s/copy.safetensors", dir);
    copy_file(s1, dup);
    CHECK_STATUS(ts_checkpoint_open(dir, &ck, &err), TS_ERR_FORMAT, err);
    CHECK_MSG(err, "is in both");
    remove(dup);
    CHECK_STATUS(ts_checkpoint_open(dir, &ck, &err), TS_OK, err);
    if (ck) CHECK(ts_checkpoint_count(ck) == 2, "dir of one file");
    ts_checkpoint_close(ck);
    CHECK_STATUS(ts_checkpoint_open(tmp_path("does-not-exist"), &ck, &err), TS_ERR_IO, err);
}

/* ---------------------------------------------------------------- writer round trip */

static void test_writer_roundtrip(void) {
    ts_io_error err = {0};
    float f32[6] = {1, -2, 3.5f, 0, 1e-20f, -7};
    uint16_t bf16[3] = {0x3F80, 0xC000, 0x7FC0};
    int64_t i64[2] = {-1, 1LL << 50};
    uint8_t e4m3[5] = {0x38, 0xB8, 0x7E, 0x01, 0x00};
    uint8_t e8m0[2] = {127, 0xFF};
    int8_t i8[3] = {-5, 0, 5};
    uint8_t u8[1] = {9};
    uint8_t f4[2] = {0x21, 0x0F};
    double f64[1] = {-0.0};
    int64_t s23[2] = {2, 3}, s3[1] = {3}, s2[1] = {2}, s5[1] = {5}, s4[1] = {4}, s1[1] = {1}, s0[2] = {0, 7};
    ts_st_write_tensor t[] = {
        {"w.f32", TS_ST_F32, 2, s23, f32, sizeof f32},
        {"w.bf16", TS_ST_BF16, 1, s3, bf16, sizeof bf16},
        {"w.i64", TS_ST_I64, 1, s2, i64, sizeof i64},
        {"w.e4m3", TS_ST_F8_E4M3, 1, s5, e4m3, sizeof e4m3},
        {"w.scale", TS_ST_F8_E8M0, 1, s2, e8m0, 2},
        {"w.i8", TS_ST_I8, 1, s3, i8, 3},
        {"w.u8", TS_ST_U8, 1, s1, u8, 1},
        {"w.f4", TS_ST_F4, 1, s4, f4, 2},
        {"w.f64", TS_ST_F64, 0, NULL, f64, 8},
        {"w.empty", TS_ST_F32, 2, s0, NULL, 0},
    };
    size_t n = sizeof t / sizeof t[0];
    ts_st_metadata meta[] = {{"format", "pt"}, {"step", "1200"}};
    const char *path = tmp_path("roundtrip.safetensors");
    CHECK_STATUS(ts_st_write(path, t, n, meta, 2, &err), TS_OK, err);
    CHECK(!dir_has_prefix(tmp_dir, "roundtrip.safetensors.tmp."), "temporary file left behind");
    size_t len = 0;
    unsigned char *raw = (unsigned char *)test_read_file(path, &len);
    uint64_t header_len = 0;
    for (int i = 7; raw && i >= 0; i--) header_len = header_len << 8 | raw[i];
    CHECK(raw && header_len % 8 == 0 && raw[8] == '{', "header padded to 8 bytes (%llu)",
          (unsigned long long)header_len);
    free(raw);

    ts_st_file *f = NULL;
    CHECK_STATUS(ts_st_file_open(path, &f, &err), TS_OK, err);
    if (!f) return;
    CHECK(ts_st_file_count(f) == n, "count %zu", ts_st_file_count(f));
    for (size_t i = 0; i < n; i++) {
        const ts_st_tensor *r = ts_st_file_find(f, t[i].name);
        CHECK(r != NULL, "%s missing", t[i].name);
        if (!r) continue;
        CHECK(r->dtype == t[i].dtype && r->ndim == t[i].ndim && r->nbytes == t[i].nbytes, "%s header",
              t[i].name);
        for (int d = 0; d < r->ndim; d++) CHECK(r->shape[d] == t[i].shape[d], "%s dim %d", t[i].name, d);
        CHECK(t[i].nbytes == 0 || memcmp(r->data, t[i].data, t[i].nbytes) == 0, "%s bytes", t[i].name);
        int bytes = ts_st_dtype_bits(r->dtype) / 8;
        CHECK(bytes == 0 || (uintptr_t)r->data % (uintptr_t)bytes == 0, "%s aligned", t[i].name);
    }
    CHECK(ts_st_file_metadata_count(f) == 2, "metadata count");
    const char *step = ts_st_file_metadata(f, "step");
    CHECK(step && strcmp(step, "1200") == 0, "metadata step");
    ts_st_file_close(f);

    /* bad requests fail before anything is written */
    const char *bad_path = tmp_path("bad.safetensors");
    ts_st_write_tensor dup[2] = {t[0], t[0]};
    CHECK_STATUS(ts_st_write(bad_path, dup, 2, NULL, 0, &err), TS_ERR_INVALID_ARG, err);
    CHECK_MSG(err, "'w.f32' given twice");
    ts_st_write_tensor short_data = t[0];
    short_data.nbytes = 20;
    CHECK_STATUS(ts_st_write(bad_path, &short_data, 1, NULL, 0, &err), TS_ERR_INVALID_ARG, err);
    CHECK_MSG(err, "20 bytes given, 24 needed");
    ts_st_write_tensor reserved = t[0];
    reserved.name = "__metadata__";
    CHECK_STATUS(ts_st_write(bad_path, &reserved, 1, NULL, 0, &err), TS_ERR_INVALID_ARG, err);
    ts_st_metadata dup_meta[2] = {{"a", "1"}, {"a", "2"}};
    CHECK_STATUS(ts_st_write(bad_path, t, 1, dup_meta, 2, &err), TS_ERR_INVALID_ARG, err);
    CHECK(!file_exists(bad_path) && !dir_has_prefix(tmp_dir, "bad.safetensors"),
          "nothing written on bad input");

    /* sharded: 5 tensors of 24 bytes, at most 50 bytes a shard -> 3 shards */
    ts_st_write_tensor many[5];
    const char *names[5] = {"e", "a", "d", "b", "c"};
    for (int i = 0; i < 5; i++) many[i] = (ts_st_write_tensor){names[i], TS_ST_F32, 2, s23, f32, sizeof f32};
    const char *dir = tmp_path("sharded_out");
    CHECK_STATUS(ts_st_write_sharded(dir, many, 5, meta, 1, 50, &err), TS_OK, err);
    ts_checkpoint *ck = NULL;
    CHECK_STATUS(ts_checkpoint_open(dir, &ck, &err), TS_OK, err);
    if (ck) {
        CHECK(ts_checkpoint_shard_count(ck) == 3 && ts_checkpoint_count(ck) == 5,
              "3 shards / 5 tensors, got %zu / %zu", ts_checkpoint_shard_count(ck), ts_checkpoint_count(ck));
        const ts_st_tensor *c = NULL;
        CHECK_STATUS(ts_checkpoint_get(ck, "c", &c, &err), TS_OK, err);
        CHECK(c && strstr(c->file, "model-00002-of-00003.safetensors") && memcmp(c->data, f32, 24) == 0,
              "'c' lands in shard 2 of 3 (name order a b | c d | e)");
        float back[6];
        CHECK_STATUS(ts_checkpoint_load(ck, "e", 2, s23, TS_F32, back, sizeof back, &err), TS_OK, err);
        CHECK(memcmp(back, f32, sizeof back) == 0, "sharded value");
        ts_checkpoint_close(ck);
    }
    char idx[700];
    snprintf(idx, sizeof idx, "%s/model.safetensors.index.json", dir);
    json_error_t jerr;
    json_t *index = json_load_file(idx, 0, &jerr);
    CHECK(index && json_integer_value(jpath(index, "metadata", "total_size", NULL)) == 120,
          "index total_size");
    json_decref(index);
    CHECK_STATUS(ts_st_write_sharded(dir, many, 5, NULL, 0, 0, &err), TS_ERR_INVALID_ARG, err);
}

/* ---------------------------------------------------------------- corrupt files */

/* A file of: u64 header_len | header text | data_len bytes of data. */
static const char *make_file(const char *name, const char *header, size_t data_len) {
    size_t hl = strlen(header);
    size_t total = 8 + hl + data_len;
    unsigned char *b = calloc(total + 1, 1);
    for (int i = 0; i < 8; i++) b[i] = (unsigned char)((uint64_t)hl >> (8 * i));
    memcpy(b + 8, header, hl);
    const char *path = tmp_path(name);
    test_write_file(path, b, total);
    free(b);
    return path;
}

static void expect_open_fails(const char *path, ts_status want, const char *needle, const char *needle2) {
    ts_io_error err = {0};
    ts_st_file *f = (ts_st_file *)&err; /* must be reset to NULL */
    CHECK_STATUS(ts_st_file_open(path, &f, &err), want, err);
    CHECK(f == NULL, "%s: out not cleared on failure", path);
    CHECK_MSG(err, path);
    if (needle) CHECK_MSG(err, needle);
    if (needle2) CHECK_MSG(err, needle2);
    if (f) ts_st_file_close(f);
}

static void test_corrupt_files(void) {
    /* truncations of a valid file at many points */
    float a[4] = {1, 2, 3, 4};
    int64_t s4[1] = {4};
    ts_st_write_tensor t[2] = {{"alpha", TS_ST_F32, 1, s4, a, 16}, {"beta", TS_ST_F32, 1, s4, a, 16}};
    ts_io_error err = {0};
    const char *good = tmp_path("good.safetensors");
    CHECK_STATUS(ts_st_write(good, t, 2, NULL, 0, &err), TS_OK, err);
    size_t len = 0;
    unsigned char *raw = (unsigned char *)test_read_file(good, &len);
    if (!raw) return;
    uint64_t hl = 0;
    for (int i = 7; i >= 0; i--) hl = hl << 8 | raw[i];
    size_t cuts[] = {
        0, 1, 7, 8, 9, 8 + (size_t)hl / 2, 8 + (size_t)hl, 8 + (size_t)hl + 1, 8 + (size_t)hl + 16, len - 1};
    for (size_t k = 0; k < sizeof cuts / sizeof cuts[0]; k++) {
        const char *p = tmp_path("cut.safetensors");
        test_write_file(p, raw, cuts[k]);
        const char *needle = cuts[k] < 8 ? "truncated" : cuts[k] < 8 + hl ? "exceeds" : "truncated: tensor";
        expect_open_fails(p, TS_ERR_FORMAT, needle, NULL);
    }
    /* the cut inside the data area names the tensor it cuts */
    test_write_file(tmp_path("cut.safetensors"), raw, len - 1);
    expect_open_fails(tmp_path("cut.safetensors"), TS_ERR_FORMAT, "'beta'", NULL);

    /* header length beyond the file */
    unsigned char big[16];
    memcpy(big, raw, 16);
    big[5] = 1; /* 2^40-ish */
    test_write_file(tmp_path("biglen.safetensors"), big, 16);
    expect_open_fails(tmp_path("biglen.safetensors"), TS_ERR_FORMAT, "header length", "exceeds");
    free(raw);

    /* header length over the 100 MB limit, in a (sparse) file that is long enough */
    const char *huge = tmp_path("huge.safetensors");
    int fd = open(huge, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd >= 0) {
        uint64_t n = 100000001ull;
        unsigned char le[8];
        for (int i = 0; i < 8; i++) le[i] = (unsigned char)(n >> (8 * i));
        CHECK(write(fd, le, 8) == 8 && write(fd, "{", 1) == 1 && ftruncate(fd, (off_t)(8 + n)) == 0,
              "sparse file");
        close(fd);
        expect_open_fails(huge, TS_ERR_FORMAT, "100000000-byte limit", NULL);
        remove(huge);
    }

    expect_open_fails(make_file("badjson.safetensors", "{\"a\": {\"dtype\": \"F32\",", 0), TS_ERR_FORMAT,
                      "not valid JSON", NULL);
    expect_open_fails(make_file("notobj.safetensors", "[1, 2]  ", 0), TS_ERR_FORMAT, "must start with '{'",
                      NULL);
    expect_open_fails(make_file("overlap.safetensors",
                                "{\"x\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                                "\"y\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
                                12),
                      TS_ERR_FORMAT, "'y'", "overlaps tensor 'x'");
    expect_open_fails(make_file("gap.safetensors",
                                "{\"x\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                                "\"y\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]}}",
                                12),
                      TS_ERR_FORMAT, "gap of 4 unused bytes before tensor 'y'", NULL);
    expect_open_fails(make_file("size.safetensors",
                                "{\"w\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,12]}}", 12),
                      TS_ERR_FORMAT, "tensor 'w'", "hold 12 bytes but F32 [2, 2] needs 16");
    expect_open_fails(make_file("dtype.safetensors",
                                "{\"q\":{\"dtype\":\"Q4_K\",\"shape\":[2],\"data_offsets\":[0,2]}}", 2),
                      TS_ERR_FORMAT, "tensor 'q'", "unknown dtype \"Q4_K\"");
    expect_open_fails(make_file("dup.safetensors",
                                "{\"d\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},"
                                "\"d\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[1,2]}}",
                                2),
                      TS_ERR_FORMAT, "duplicate object key", "\"d\"");
    expect_open_fails(make_file("trailing.safetensors",
                                "{\"x\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2]}}", 5),
                      TS_ERR_FORMAT, "3 bytes after the last tensor", NULL);
    expect_open_fails(make_file("meta.safetensors", "{\"__metadata__\":{\"k\":3}}", 0), TS_ERR_FORMAT,
                      "metadata entry 'k'", NULL);
    expect_open_fails(
        make_file("neg.safetensors", "{\"n\":{\"dtype\":\"U8\",\"shape\":[-1],\"data_offsets\":[0,0]}}", 0),
        TS_ERR_FORMAT, "tensor 'n'", "shape");
    expect_open_fails(make_file("backwards.safetensors",
                                "{\"b\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[4,0]}}", 4),
                      TS_ERR_FORMAT, "tensor 'b'", "end before they begin");
    expect_open_fails(
        make_file("dims.safetensors",
                  "{\"m\":{\"dtype\":\"U8\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,1]}}", 1),
        TS_ERR_UNSUPPORTED, "tensor 'm'", "9 dims");
    expect_open_fails(
        make_file("f4odd.safetensors", "{\"h\":{\"dtype\":\"F4\",\"shape\":[3],\"data_offsets\":[0,2]}}", 2),
        TS_ERR_FORMAT, "tensor 'h'", "whole number of bytes");
    expect_open_fails(
        make_file("offsets.safetensors", "{\"o\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0]}}", 1),
        TS_ERR_FORMAT, "tensor 'o'", "data_offsets");
    expect_open_fails(
        make_file("overflow.safetensors",
                  "{\"v\":{\"dtype\":\"F64\",\"shape\":[4294967296,4294967296],\"data_offsets\":[0,8]}}", 8),
        TS_ERR_FORMAT, "tensor 'v'", "fits in 64 bits");
    expect_open_fails(tmp_path("absent.safetensors"), TS_ERR_IO, "cannot open", NULL);
    expect_open_fails(tmp_dir, TS_ERR_IO, "not a regular file", NULL);

    /* an empty file set is valid: "{}" */
    ts_st_file *f = NULL;
    CHECK_STATUS(ts_st_file_open(make_file("empty.safetensors", "{}      ", 0), &f, &err), TS_OK, err);
    if (f) CHECK(ts_st_file_count(f) == 0, "empty file");
    ts_st_file_close(f);
}

/* ---------------------------------------------------------------- atomic files */

static void test_atomic_files(void) {
    ts_io_error err = {0};
    const char *path = tmp_path("atomic.bin");
    CHECK_STATUS(ts_atomic_write_file(path, "first", 5, &err), TS_OK, err);
    size_t len = 0;
    unsigned char *b = (unsigned char *)test_read_file(path, &len);
    CHECK(b && len == 5 && memcmp(b, "first", 5) == 0, "atomic write content");
    free(b);
    CHECK(!dir_has_prefix(tmp_dir, "atomic.bin.tmp."), "tmp file left after success");

    /* streaming: the target keeps its old content until commit */
    ts_atomic_file *af = NULL;
    CHECK_STATUS(ts_atomic_file_open(path, &af, &err), TS_OK, err);
    if (af) {
        char want_prefix[600];
        snprintf(want_prefix, sizeof want_prefix, "%s.tmp.%ld", path, (long)getpid());
        CHECK(strcmp(ts_atomic_file_tmp_path(af), want_prefix) == 0, "tmp name %s",
              ts_atomic_file_tmp_path(af));
        /* a second writer of the same target gets its own temporary file */
        ts_atomic_file *other = NULL;
        CHECK_STATUS(ts_atomic_file_open(path, &other, &err), TS_OK, err);
        if (other) {
            CHECK(strcmp(ts_atomic_file_tmp_path(other), ts_atomic_file_tmp_path(af)) != 0,
                  "distinct tmp names");
            ts_atomic_file_abort(other);
        }
        CHECK_STATUS(ts_atomic_file_write(af, "second ", 7, &err), TS_OK, err);
        b = (unsigned char *)test_read_file(path, &len);
        CHECK(b && len == 5 && memcmp(b, "first", 5) == 0, "target unchanged before commit");
        free(b);
        CHECK_STATUS(ts_atomic_file_write(af, "version", 7, &err), TS_OK, err);
        CHECK_STATUS(ts_atomic_file_commit(af, &err), TS_OK, err);
        b = (unsigned char *)test_read_file(path, &len);
        CHECK(b && len == 14 && memcmp(b, "second version", 14) == 0, "committed content");
        free(b);
    }

    /* a failed writer aborts: old content stays, no temporary file remains */
    CHECK_STATUS(ts_atomic_file_open(path, &af, &err), TS_OK, err);
    if (af) {
        CHECK_STATUS(ts_atomic_file_write(af, "partial", 7, &err), TS_OK, err);
        CHECK(file_exists(ts_atomic_file_tmp_path(af)), "tmp exists while writing");
        ts_atomic_file_abort(af);
    }
    b = (unsigned char *)test_read_file(path, &len);
    CHECK(b && len == 14 && memcmp(b, "second version", 14) == 0, "abort keeps the old file");
    free(b);
    CHECK(!dir_has_prefix(tmp_dir, "atomic.bin.tmp."), "tmp file left after abort");

    /* a new target that is aborted never appears */
    const char *fresh = tmp_path("fresh.bin");
    CHECK_STATUS(ts_atomic_file_open(fresh, &af, &err), TS_OK, err);
    if (af) {
        CHECK_STATUS(ts_atomic_file_write(af, "x", 1, &err), TS_OK, err);
        ts_atomic_file_abort(af);
    }
    CHECK(!file_exists(fresh) && !dir_has_prefix(tmp_dir, "fresh.bin"), "aborted new file absent");

    CHECK_STATUS(ts_atomic_write_file(tmp_path("no-such-dir/x.bin"), "x", 1, &err), TS_ERR_IO, err);
    CHECK_MSG(err, "no-such-dir/x.bin");
    CHECK_STATUS(ts_atomic_file_write(NULL, "x", 1, &err), TS_ERR_INVALID_ARG, err);
}

/* ---------------------------------------------------------------- dtype table */

static void test_st_dtypes(void) {
    for (int t = 0; t < TS_ST_DTYPE_COUNT; t++) {
        ts_st_dtype back;
        CHECK(ts_st_dtype_from_name(ts_st_dtype_name((ts_st_dtype)t), &back) == TS_OK &&
                  back == (ts_st_dtype)t,
              "name round trip %d", t);
        ts_dtype d;
        if (ts_st_dtype_to_dtype((ts_st_dtype)t, &d)) {
            CHECK(ts_st_dtype_from_dtype(d, &back) && back == (ts_st_dtype)t, "dtype round trip %d", t);
            CHECK(ts_dtype_get_info(d)->bits == ts_st_dtype_bits((ts_st_dtype)t), "bits agree for %d", t);
        }
    }
    ts_st_dtype x;
    CHECK(ts_st_dtype_from_name("F8_E4M3FN", &x) == TS_ERR_FORMAT, "unknown name");
    ts_dtype d;
    CHECK(!ts_st_dtype_to_dtype(TS_ST_U8, &d) && !ts_st_dtype_to_dtype(TS_ST_I16, &d),
          "U8/I16 have no ts_dtype");
    CHECK(ts_st_dtype_to_dtype(TS_ST_F8_E8M0, &d) && d == TS_E8M0, "F8_E8M0 -> TS_E8M0");
}

int main(void) {
    snprintf(tmp_dir, sizeof tmp_dir, "/tmp/ts_safetensors_XXXXXX");
    if (!mkdtemp(tmp_dir)) {
        perror("mkdtemp");
        return 1;
    }
    json_error_t jerr;
    expected = json_load_file(fixture("expected.json"), 0, &jerr);
    CHECK(expected != NULL, "cannot read %s: %s", fixture("expected.json"), jerr.text);
    test_st_dtypes();
    test_dequant_units();
    test_atomic_files();
    test_writer_roundtrip();
    test_corrupt_files();
    test_loader_paths();
    if (expected) {
        test_dtypes_fixture();
        test_byte_identical_rewrite();
        test_quant_fixture();
        test_sharded_fixture();
        test_sharded_threads();
        test_sharded_errors();
    }
    json_decref(expected);
    nftw(tmp_dir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
    return check_summary("test_safetensors");
}
