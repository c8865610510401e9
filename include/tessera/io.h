/* io.h - the io layer's public API: safetensors files and sharded checkpoints (read through
 * mmap, validated in full before anything is handed out), the safetensors writer, dequantisation
 * of DeepSeek's block-scaled FP8 and MXFP4 weights, and crash-safe ("atomic") file writes.
 * The model layer loads and saves Hugging Face checkpoints through this; train writes its own
 * checkpoints and logs with the atomic-file helpers. config.json parsing lives in model.h.
 *
 * Error convention for the whole io layer: every function that can fail returns a ts_status
 * and takes a last argument `ts_io_error *err` (which may be NULL). On failure err->status is
 * the returned status and err->message says what went wrong, naming the file, the tensor and
 * the numbers involved, e.g.
 *   "ckpt/model-00001-of-00002.safetensors: tensor 'layers.0.attn.wq_a.weight': data_offsets
 *    [0, 100] hold 100 bytes but F8_E4M3 [16, 8] needs 128"
 * On success err is left untouched. Library code never prints, exits or aborts. */
#ifndef TESSERA_IO_H
#define TESSERA_IO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "tessera/core.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---------------------------------------------------------------- errors */

#define TS_IO_ERROR_MAX 512

typedef struct {
    ts_status status;
    char message[TS_IO_ERROR_MAX];
} ts_io_error;

/* Records status and a printf-style message in err (when err is not NULL); returns status, so
 * `return ts_io_set_error(err, TS_ERR_FORMAT, "...", ...);` reads naturally. Long messages are
 * truncated. Exported for other io-layer code (config.json, tokenizer, token shards). */
ts_status ts_io_set_error(ts_io_error *err, ts_status status, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;

/* ---------------------------------------------------------------- safetensors dtypes */

/* The dtypes a safetensors header may name. The file format has more types than the compute
 * layers use, so this is its own enum. Mapping to ts_dtype (ts_st_dtype_to_dtype):
 *   F64 F32 F16 BF16 F8_E4M3 F8_E5M2 I64 I32 I8 -> the ts_dtype of the same name;
 *   F8_E8M0 -> TS_E8M0;  F4 -> TS_F4_E2M1 (shape counts 4-bit elements, low nibble first);
 *   BOOL U8 I16 U16 U32 U64 -> none (no compute type; read their bytes directly).
 * DeepSeek's packed FP4 experts are stored as I8 [out, in/2] (see ts_dequant_mxfp4). */
typedef enum {
    TS_ST_BOOL = 0,
    TS_ST_U8,
    TS_ST_I8,
    TS_ST_I16,
    TS_ST_U16,
    TS_ST_I32,
    TS_ST_U32,
    TS_ST_I64,
    TS_ST_U64,
    TS_ST_F16,
    TS_ST_BF16,
    TS_ST_F32,
    TS_ST_F64,
    TS_ST_F8_E4M3,
    TS_ST_F8_E5M2,
    TS_ST_F8_E8M0,
    TS_ST_F4,
    TS_ST_DTYPE_COUNT
} ts_st_dtype;

const char *ts_st_dtype_name(ts_st_dtype t);          /* "F32", "BF16", ...; "?" if invalid */
/* Parses a header dtype string ("F8_E4M3", ...); TS_ERR_FORMAT for an unknown one. */
ts_status ts_st_dtype_from_name(const char *name, ts_st_dtype *out);
int ts_st_dtype_bits(ts_st_dtype t);                  /* 1..64; 0 if invalid */
bool ts_st_dtype_to_dtype(ts_st_dtype t, ts_dtype *out);   /* false when there is none */
bool ts_st_dtype_from_dtype(ts_dtype t, ts_st_dtype *out); /* false when there is none */

/* ---------------------------------------------------------------- one tensor */

#define TS_ST_MAX_DIMS 8

/* A tensor as the file describes it. `data` points into the read-only mapping and stays valid
 * until the file / checkpoint it came from is closed. Files written by ts_st_write (and by the
 * Python safetensors library) keep every tensor aligned to its element size; files from other
 * writers may not, so read through memcpy (ts_checkpoint_load does) rather than casting. */
typedef struct {
    const char *name;
    ts_st_dtype dtype;
    int ndim;                        /* 0 for a scalar */
    int64_t shape[TS_ST_MAX_DIMS];   /* outermost first */
    int64_t numel;                   /* product of shape (1 for a scalar) */
    const void *data;
    size_t nbytes;
    const char *file;                /* path of the file holding it */
} ts_st_tensor;

/* ---------------------------------------------------------------- reading one file */

/* Opens and validates a whole .safetensors file: the 8-byte little-endian header length, the
 * JSON header (objects only, no duplicate names, known dtypes, non-negative shapes, string
 * metadata), and the data layout exactly as the reference implementation requires (tensors
 * tile the data area with no gaps or overlaps, each span matching dtype x shape, the file
 * ending where the last tensor ends). Any violation is TS_ERR_FORMAT (TS_ERR_IO when the file
 * cannot be read, TS_ERR_UNSUPPORTED for more than TS_ST_MAX_DIMS dims) with a message naming
 * the file and the tensor. */
typedef struct ts_st_file ts_st_file;

ts_status ts_st_file_open(const char *path, ts_st_file **out, ts_io_error *err);
void ts_st_file_close(ts_st_file *f);
const char *ts_st_file_path(const ts_st_file *f);
size_t ts_st_file_count(const ts_st_file *f);
/* Tensors in name order (strcmp), i < count. */
const ts_st_tensor *ts_st_file_tensor(const ts_st_file *f, size_t i);
/* Binary search by name; NULL when absent. */
const ts_st_tensor *ts_st_file_find(const ts_st_file *f, const char *name);
/* The optional "__metadata__" string map, in key order. */
size_t ts_st_file_metadata_count(const ts_st_file *f);
void ts_st_file_metadata_at(const ts_st_file *f, size_t i, const char **key, const char **value);
const char *ts_st_file_metadata(const ts_st_file *f, const char *key); /* NULL when absent */

/* ---------------------------------------------------------------- checkpoints (one or many files) */

/* One lookup API over a single file or a sharded checkpoint. ts_checkpoint_open accepts:
 *  - a .safetensors file;
 *  - a `*.index.json` file (Hugging Face layout: {"metadata": {...}, "weight_map": {tensor name:
 *    shard file name relative to the index}});
 *  - a directory: its model.safetensors.index.json if present, else its model.safetensors, else
 *    every *.safetensors file in it (opened at once; a name in two files is an error).
 * With an index, shards are opened lazily, on the first lookup of a tensor they hold (under a
 * mutex, so lookups may come from several threads), and stay open until close. At open every
 * listed shard must exist (TS_ERR_IO naming it and one tensor mapped to it) and shard names must
 * be plain relative paths; a tensor mapped to a shard that does not contain it is TS_ERR_FORMAT
 * when it is looked up. Tensors a shard holds but the index does not list are not visible. */
typedef struct ts_checkpoint ts_checkpoint;

ts_status ts_checkpoint_open(const char *path, ts_checkpoint **out, ts_io_error *err);
void ts_checkpoint_close(ts_checkpoint *ck);
size_t ts_checkpoint_count(const ts_checkpoint *ck);
const char *ts_checkpoint_name(const ts_checkpoint *ck, size_t i); /* name order, i < count */
bool ts_checkpoint_has(const ts_checkpoint *ck, const char *name);  /* opens nothing */
size_t ts_checkpoint_shard_count(const ts_checkpoint *ck);
/* Finds a tensor, opening its shard if needed. A missing name is TS_ERR_FORMAT ("checkpoint
 * ... has no tensor '...'"); use ts_checkpoint_has first for optional tensors. */
ts_status ts_checkpoint_get(ts_checkpoint *ck, const char *name, const ts_st_tensor **out,
                            ts_io_error *err);

/* Loads a weight converted to `target` into out (out_bytes = room in bytes; the data is
 * written row-major with the logical shape `shape[ndim]`). What is accepted:
 *  - F32 / F64 / F16 / BF16 (and I8 / I32 / I64 when target is an integer type): the stored
 *    shape must equal `shape`; values are converted (rounding to nearest even when narrowing).
 *  - F8_E4M3 with a sibling scale (for "X.weight": "X.scale", else "X.weight_scale_inv";
 *    for another name N: "N.scale"): a 2-D weight [rows, cols] and an F8_E8M0 or F32 scale of
 *    shape [ceil(rows/128), ceil(cols/128)]; dequantised by ts_dequant_fp8_block.
 *  - I8 with a sibling scale, read as packed MXFP4: stored [rows, cols/2] for logical
 *    [rows, cols], scale F8_E8M0 [rows, ceil(cols/32)]; dequantised by ts_dequant_mxfp4.
 *    (F4 with logical shape [rows, cols] is accepted the same way.)
 * Targets: TS_F32, TS_BF16, TS_F16 for everything; TS_I32 / TS_I64 for plain integer tensors.
 * Errors: missing tensor or missing scale TS_ERR_FORMAT; wrong shape TS_ERR_SHAPE with
 * expected and found shapes in the message; a dtype that cannot be loaded as asked
 * TS_ERR_DTYPE; out_bytes too small TS_ERR_INVALID_ARG. */
ts_status ts_checkpoint_load(ts_checkpoint *ck, const char *name, int ndim, const int64_t *shape,
                             ts_dtype target, void *out, size_t out_bytes, ts_io_error *err);

/* ---------------------------------------------------------------- writing */

typedef struct {
    const char *name;
    ts_st_dtype dtype;
    int ndim;
    const int64_t *shape;   /* ndim entries; may be NULL when ndim == 0 */
    const void *data;
    size_t nbytes;          /* must equal what dtype x shape needs */
} ts_st_write_tensor;

typedef struct {
    const char *key;
    const char *value;
} ts_st_metadata;

/* Writes one spec-conformant .safetensors file atomically (see ts_atomic_file): compact JSON
 * header padded with spaces to a multiple of 8 bytes, "__metadata__" first (in the order
 * given), then the tensors in the reference library's order: by dtype, larger elements first
 * (U64 I64 F64 F32 U32 I32 BF16 F16 U16 I16 F8_E8M0 F8_E4M3 F8_E5M2 I8 U8 F4 BOOL), then by
 * name. So every tensor's data is aligned to its element size, and the file is byte-identical
 * to what the Python safetensors library writes for the same tensors and metadata.
 * Names must be non-empty, unique and not "__metadata__"; nbytes must match dtype x shape
 * (TS_ERR_INVALID_ARG otherwise, before anything is written). */
ts_status ts_st_write(const char *path, const ts_st_write_tensor *tensors, size_t n,
                      const ts_st_metadata *metadata, size_t n_metadata, ts_io_error *err);

/* Writes a sharded checkpoint into directory `dir` (created if missing): tensors sorted by
 * name are packed greedily into shards of at most max_shard_bytes of tensor data (a larger
 * tensor gets a shard of its own), named model-00001-of-0000N.safetensors, each carrying the
 * given metadata, then model.safetensors.index.json ({"metadata": {"total_size": bytes},
 * "weight_map": {...}}) is written last: it is the commit point. The index is written even
 * for a single shard. Every file is written atomically; files already in dir are not removed. */
ts_status ts_st_write_sharded(const char *dir, const ts_st_write_tensor *tensors, size_t n,
                              const ts_st_metadata *metadata, size_t n_metadata,
                              uint64_t max_shard_bytes, ts_io_error *err);

/* ---------------------------------------------------------------- dequantisation */

/* DeepSeek FP8 weights: w is E4M3 bytes [rows, cols]; scale is E8M0 bytes
 * [ceil(rows/block_rows), ceil(cols/block_cols)] (128 x 128 in the checkpoints; edge blocks
 * are partial). out[r][c] = e4m3(w[r][c]) * 2^(scale[r/br][c/bc] - 127); scale byte 0xFF
 * (E8M0 NaN) gives NaN. The product is exact in f32. */
void ts_dequant_fp8_block(const uint8_t *w_e4m3, int64_t rows, int64_t cols,
                          const uint8_t *scale_e8m0, int64_t block_rows, int64_t block_cols,
                          float *out);
/* Same, rounding each value to bf16 (nearest even); out holds bf16 bit patterns. */
void ts_dequant_fp8_block_bf16(const uint8_t *w_e4m3, int64_t rows, int64_t cols,
                               const uint8_t *scale_e8m0, int64_t block_rows, int64_t block_cols,
                               uint16_t *out);
/* Same with an f32 scale per block (the older "weight_scale_inv" spelling). */
void ts_dequant_fp8_block_f32scale(const uint8_t *w_e4m3, int64_t rows, int64_t cols,
                                   const float *scale, int64_t block_rows, int64_t block_cols,
                                   float *out);

/* DeepSeek MXFP4 experts: packed is [rows, ceil(cols/2)] bytes; element (r, 2k) is the LOW
 * nibble of byte (r, k) and element (r, 2k+1) the HIGH nibble; a nibble is an E2M1 code
 * (0..7 = +{0, .5, 1, 1.5, 2, 3, 4, 6}, 8..15 the negatives). scale is E8M0 [rows,
 * ceil(cols/32)], one per 32 consecutive elements of a row. out[r][c] = e2m1 * 2^(scale-127).
 * Verified against the official DeepSeek-V4 converter, inference/convert.py
 * cast_e2m1fn_to_e4m3fn: `low = x & 0x0F; high = (x >> 4) & 0x0F;
 * stack([TABLE[low], TABLE[high]], -1).flatten(2)` and `scale.size(1) == in_dim // 32`
 * (details in src/io/dequant.c). */
void ts_dequant_mxfp4(const uint8_t *packed, int64_t rows, int64_t cols,
                      const uint8_t *scale_e8m0, float *out);
void ts_dequant_mxfp4_bf16(const uint8_t *packed, int64_t rows, int64_t cols,
                           const uint8_t *scale_e8m0, uint16_t *out);

/* ---------------------------------------------------------------- atomic files */

/* A file that appears at its path complete or not at all, even across a crash: data goes to
 * "<path>.tmp.<pid>" (".<pid>.<k>" if that name is taken), commit fsyncs it, renames it over
 * path and fsyncs the directory; abort removes it. Either call frees the handle. After a failed
 * write only abort or commit may follow, and commit then refuses (TS_ERR_STATE) and cleans up.
 * The target is never opened, so a reader of the old file keeps a consistent copy. */
typedef struct ts_atomic_file ts_atomic_file;

ts_status ts_atomic_file_open(const char *path, ts_atomic_file **out, ts_io_error *err);
ts_status ts_atomic_file_write(ts_atomic_file *f, const void *data, size_t size, ts_io_error *err);
ts_status ts_atomic_file_commit(ts_atomic_file *f, ts_io_error *err);
void ts_atomic_file_abort(ts_atomic_file *f);
/* The temporary file's path (for tests and messages). */
const char *ts_atomic_file_tmp_path(const ts_atomic_file *f);

/* One call: open, write, commit (abort on any failure). */
ts_status ts_atomic_write_file(const char *path, const void *data, size_t size, ts_io_error *err);
/* fsyncs the directory holding path (so a rename or create in it is durable). */
ts_status ts_fsync_parent_dir(const char *path, ts_io_error *err);

#ifdef __cplusplus
}
#endif
#endif
