/* dequant.c - turns DeepSeek's stored low-precision weights into f32 or bf16: FP8 E4M3 with
 * one E8M0 scale per 128x128 block (attention and shared-expert projections) and MXFP4 with
 * one E8M0 scale per 32 inputs (routed experts). The checkpoint loader (safetensors.c) calls
 * these; model code that keeps weights in f32 never sees the packed forms.
 *
 * Conventions, and where they were checked (public mirrors of the official DeepSeek-V4
 * inference code, read through the project's code index):
 *  - FP8 block scales: inference/convert.py dequantises wo_a as
 *      weight.unflatten(0, (-1, 128)).unflatten(-1, (-1, 128)).float()
 *        * scale[:, None, :, None].float()
 *    i.e. value = float(e4m3) * float(scale) with scale indexed [row / 128][col / 128]; the
 *    pure-torch fp8_gemm in Nicooo-Wang/DeepSeek-V4-Pro-code inference/kernel.py expands a
 *    [ceil(N/128), ceil(K/128)] scale the same way and cuts it to [N, K], so edge blocks are
 *    partial. float8_e8m0fnu -> float is 2^(byte - 127) (kernel.py _scale_to_f32), 0xFF = NaN.
 *  - MXFP4 nibble order: inference/convert.py cast_e2m1fn_to_e4m3fn does
 *      x = x.view(torch.uint8); low = x & 0x0F; high = (x >> 4) & 0x0F
 *      x = torch.stack([FP4_TABLE[low], FP4_TABLE[high]], dim=-1).flatten(2)
 *    so byte k of a row holds element 2k in its low nibble and 2k+1 in its high nibble, and it
 *    asserts scale.size(1) == in_dim // 32 (one scale per 32 consecutive inputs of a row).
 *    FP4_TABLE = {0, .5, 1, 1.5, 2, 3, 4, 6, 0, -.5, ..., -6}: the E2M1 codes. The one
 *    difference here is code 8, which ts_e2m1_to_f32 reads as -0.0 (equal to 0 in every use).
 *    The same order is torch's float4_e2m1fn_x2 (the converter's default path just views the
 *    int8 bytes as that type) and the OCP MX / NVIDIA __nv_fp4x2 layout.
 * Every product here is exact in f32: an E4M3 or E2M1 value has at most 4 significant bits
 * and a scale is a power of two; only the bf16 variants round (to nearest even). */
#include "tessera/io.h"

/* Where dequantised values go: exactly one of the two pointers is set. */
typedef struct {
    float *f32;
    uint16_t *bf16;
} dq_out;

static inline void dq_put(dq_out out, int64_t i, float v) {
    if (out.f32)
        out.f32[i] = v;
    else
        out.bf16[i] = ts_f32_to_bf16(v);
}

/* A block scale is either an E8M0 byte or (older checkpoints) an f32. */
typedef struct {
    const uint8_t *e8m0;
    const float *f32;
} dq_scale;

static inline float dq_scale_at(dq_scale s, int64_t i) {
    return s.e8m0 ? ts_e8m0_to_f32(s.e8m0[i]) : s.f32[i];
}

static void fill_e4m3_table(float table[256]) {
    for (int b = 0; b < 256; b++) table[b] = ts_e4m3_to_f32((uint8_t)b);
}

static void dequant_fp8_block(const uint8_t *w, int64_t rows, int64_t cols, dq_scale scale,
                              int64_t block_rows, int64_t block_cols, dq_out out) {
    if (rows <= 0 || cols <= 0 || block_rows <= 0 || block_cols <= 0) return;
    float e4m3[256];
    fill_e4m3_table(e4m3);
    int64_t scale_cols = (cols + block_cols - 1) / block_cols;
    for (int64_t r = 0; r < rows; r++) {
        const uint8_t *w_row = w + r * cols;
        int64_t scale_row = (r / block_rows) * scale_cols;
        for (int64_t c0 = 0; c0 < cols; c0 += block_cols) {
            float s = dq_scale_at(scale, scale_row + c0 / block_cols);
            int64_t c1 = c0 + block_cols < cols ? c0 + block_cols : cols;
            for (int64_t c = c0; c < c1; c++) dq_put(out, r * cols + c, e4m3[w_row[c]] * s);
        }
    }
}

void ts_dequant_fp8_block(const uint8_t *w_e4m3, int64_t rows, int64_t cols,
                          const uint8_t *scale_e8m0, int64_t block_rows, int64_t block_cols,
                          float *out) {
    dequant_fp8_block(w_e4m3, rows, cols, (dq_scale){scale_e8m0, NULL}, block_rows, block_cols,
                      (dq_out){out, NULL});
}

void ts_dequant_fp8_block_bf16(const uint8_t *w_e4m3, int64_t rows, int64_t cols,
                               const uint8_t *scale_e8m0, int64_t block_rows, int64_t block_cols,
                               uint16_t *out) {
    dequant_fp8_block(w_e4m3, rows, cols, (dq_scale){scale_e8m0, NULL}, block_rows, block_cols,
                      (dq_out){NULL, out});
}

void ts_dequant_fp8_block_f32scale(const uint8_t *w_e4m3, int64_t rows, int64_t cols,
                                   const float *scale, int64_t block_rows, int64_t block_cols,
                                   float *out) {
    dequant_fp8_block(w_e4m3, rows, cols, (dq_scale){NULL, scale}, block_rows, block_cols,
                      (dq_out){out, NULL});
}

/* MXFP4 scale groups are 32 consecutive elements of a row (the OCP MX block size, and
 * DeepSeek's fp4_block_size). */
enum { MXFP4_GROUP = 32 };

static void dequant_mxfp4(const uint8_t *packed, int64_t rows, int64_t cols,
                          const uint8_t *scale_e8m0, dq_out out) {
    if (rows <= 0 || cols <= 0) return;
    float e2m1[16];
    for (int code = 0; code < 16; code++) e2m1[code] = ts_e2m1_to_f32((uint8_t)code);
    int64_t row_bytes = (cols + 1) / 2;
    int64_t scale_cols = (cols + MXFP4_GROUP - 1) / MXFP4_GROUP;
    for (int64_t r = 0; r < rows; r++) {
        const uint8_t *p_row = packed + r * row_bytes;
        const uint8_t *s_row = scale_e8m0 + r * scale_cols;
        for (int64_t c0 = 0; c0 < cols; c0 += MXFP4_GROUP) {
            float s = ts_e8m0_to_f32(s_row[c0 / MXFP4_GROUP]);
            int64_t c1 = c0 + MXFP4_GROUP < cols ? c0 + MXFP4_GROUP : cols;
            for (int64_t c = c0; c < c1; c++) {
                uint8_t byte = p_row[c / 2];
                uint8_t code = (c & 1) ? (uint8_t)(byte >> 4) : (uint8_t)(byte & 0x0F);
                dq_put(out, r * cols + c, e2m1[code] * s);
            }
        }
    }
}

void ts_dequant_mxfp4(const uint8_t *packed, int64_t rows, int64_t cols,
                      const uint8_t *scale_e8m0, float *out) {
    dequant_mxfp4(packed, rows, cols, scale_e8m0, (dq_out){out, NULL});
}

void ts_dequant_mxfp4_bf16(const uint8_t *packed, int64_t rows, int64_t cols,
                           const uint8_t *scale_e8m0, uint16_t *out) {
    dequant_mxfp4(packed, rows, cols, scale_e8m0, (dq_out){NULL, out});
}
