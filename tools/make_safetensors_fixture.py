#!/usr/bin/env python3
"""make_safetensors_fixture.py - writes the small safetensors fixtures that
tests/test_safetensors.c reads, using the REFERENCE Python `safetensors` library, so the C
reader is checked against files it did not write itself.

Run by developers only (tests never run it; its outputs are committed):

    python3 tools/make_safetensors_fixture.py            # writes tests/fixtures/safetensors/

It creates a virtual environment in .venv-tools (numpy + safetensors from PyPI) on first use
and re-runs itself inside it. Everything is deterministic (fixed seeds), so re-running gives
the same bytes, except that safetensors may order several `__metadata__` keys differently
from run to run (it keeps them in a hash map); files the C test compares byte-for-byte
therefore carry a single metadata key.

Outputs (all small; < 200 KiB in total):
  dtypes.safetensors   one tensor per dtype (F64 F32 F16 BF16 I64 I32 I16 I8 U8 F8_E5M2, a
                       scalar, an empty tensor) + metadata {"format": "pt"}
  quant.safetensors    DeepSeek-V4-style quantised weights with their `.scale` siblings:
                       FP8 E4M3 [130, 260] with E8M0 128x128 block scales [2, 3] (partial edge
                       blocks), MXFP4 packed as I8 [6, 64] (logical [6, 128]) with E8M0 scales
                       [6, 4], an FP8 weight without scale, plain BF16 / F32 / I64 tensors,
                       and three metadata keys
  sharded/             model-0000{1,2}-of-00002.safetensors + model.safetensors.index.json
  expected.json        what the C test checks: every small tensor's values, and for the FP8
                       weight the exact sum, a weighted sum and samples of the dequantised values
                       (computed here in numpy from the format definitions, not by the C code)

Conventions (see src/io/dequant.c for where they were verified):
  E4M3: bias 7, no Inf, S.1111.111 = NaN;  E8M0 scale byte s means 2^(s - 127);
  MXFP4: element 2k of a row is the LOW nibble of byte k, 2k+1 the HIGH nibble; one scale per
  32 consecutive elements of a row.
"""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV = os.path.join(ROOT, ".venv-tools")
OUT = os.path.join(ROOT, "tests", "fixtures", "safetensors")


# safetensors 0.8.0 is the version these fixtures were made and checked with (its TensorSpec
# takes raw bytes for dtypes numpy lacks: BF16, F8_E4M3, F8_E8M0).
REQUIREMENTS = ["numpy", "safetensors==0.8.0"]


def ensure_venv():
    """Re-executes this script with the .venv-tools interpreter (creating it if needed)."""
    venv_python = os.path.join(VENV, "bin", "python")
    if os.path.realpath(sys.prefix) == os.path.realpath(VENV):
        return
    if not os.path.exists(venv_python):
        subprocess.check_call([sys.executable, "-m", "venv", VENV])
    probe = "import numpy, safetensors; assert safetensors.__version__ == '0.8.0'"
    have = subprocess.call([venv_python, "-c", probe], stderr=subprocess.DEVNULL)
    if have != 0:
        subprocess.check_call([venv_python, "-m", "pip", "install", "-q"] + REQUIREMENTS)
    os.execv(venv_python, [venv_python, os.path.abspath(__file__)] + sys.argv[1:])


ensure_venv()

import numpy as np  # noqa: E402
from safetensors import TensorSpec, safe_open, serialize_file  # noqa: E402

# torch-style dtype names that safetensors' TensorSpec accepts, by header dtype
TORCH_NAME = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
    "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8",
    "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2", "F8_E8M0": "float8_e8m0fnu",
}


def save(path, tensors, metadata):
    """tensors: {name: (header dtype, shape, raw little-endian bytes as a numpy array)}.
    Raw bytes let us write BF16 / FP8 / E8M0, which numpy has no types for."""
    keep = []
    specs = {}
    for name, (dtype, shape, raw) in tensors.items():
        buf = np.ascontiguousarray(raw).view(np.uint8).reshape(-1)
        keep.append(buf)
        specs[name] = TensorSpec(dtype=TORCH_NAME[dtype], shape=list(shape),
                                 data_ptr=buf.ctypes.data, data_len=buf.nbytes)
    serialize_file(specs, path, metadata=metadata)
    os.chmod(path, 0o644)  # the library creates files 0600; these are committed
    # read back with the reference reader: the header must say what we meant
    with safe_open(path, framework="np") as f:
        assert sorted(f.keys()) == sorted(tensors)


def bf16_bits(values):
    """bf16 bit patterns of values that bf16 holds exactly (asserted)."""
    f = np.asarray(values, dtype=np.float32)
    bits = f.view(np.uint32)
    assert np.all((bits & 0xFFFF) == 0), "fixture bf16 values must be exact"
    return (bits >> 16).astype(np.uint16)


def e4m3_value(b):
    """E4M3 ('fn') byte -> float64, from the definition."""
    b = np.asarray(b, dtype=np.int64)
    sign = np.where(b & 0x80, -1.0, 1.0)
    exp = (b >> 3) & 0xF
    man = b & 0x7
    val = np.where(exp == 0, man / 8.0 * 2.0 ** -6, (1 + man / 8.0) * 2.0 ** (exp - 7))
    val = np.where((b & 0x7F) == 0x7F, np.nan, val)
    return sign * val


def e5m2_value(b):
    b = np.asarray(b, dtype=np.int64)
    sign = np.where(b & 0x80, -1.0, 1.0)
    exp = (b >> 2) & 0x1F
    man = b & 0x3
    return sign * np.where(exp == 0, man / 4.0 * 2.0 ** -14, (1 + man / 4.0) * 2.0 ** (exp - 15))


E2M1 = np.array([0, .5, 1, 1.5, 2, 3, 4, 6, -0.0, -.5, -1, -1.5, -2, -3, -4, -6])


def e8m0_value(s):
    return 2.0 ** (np.asarray(s, dtype=np.float64) - 127)


def as_list(a):
    return [float(x) for x in np.asarray(a, dtype=np.float64).reshape(-1)]


# ---------------------------------------------------------------- dtypes.safetensors

def make_dtypes(expected):
    f64 = np.array([np.pi, -1e300, 5e-324], dtype=np.float64)
    f32 = np.array([[1.5, -2.25, 3.0], [1e-8, -0.0, 65504.0]], dtype=np.float32)
    f16 = np.array([0.5, -1.0, 65504.0, 2.0 ** -24], dtype=np.float16)
    bf16 = np.array([1.0, -2.5, 3.140625, 65280.0])
    i64 = np.array([2 ** 40 + 1, -7, 9007199254740993], dtype=np.int64)
    i32 = np.array([-2147483648, 2147483647], dtype=np.int32)
    i16 = np.array([-32768, 12345], dtype=np.int16)
    i8 = np.array([-128, -1, 0, 1, 127], dtype=np.int8)
    u8 = np.array([0, 1, 200, 255], dtype=np.uint8)
    e5m2 = np.array([0x3C, 0xC0, 0x7B, 0x01], dtype=np.uint8)  # 1, -2, 57344, 2^-16
    scalar = np.array(42.0, dtype=np.float32)
    empty = np.zeros((0, 3), dtype=np.float32)
    tensors = {
        "t.f64": ("F64", f64.shape, f64),
        "t.f32": ("F32", f32.shape, f32),
        "t.f16": ("F16", f16.shape, f16),
        "t.bf16": ("BF16", (2, 2), bf16_bits(bf16)),
        "t.i64": ("I64", i64.shape, i64),
        "t.i32": ("I32", i32.shape, i32),
        "t.i16": ("I16", i16.shape, i16),
        "t.i8": ("I8", i8.shape, i8),
        "t.u8": ("U8", u8.shape, u8),
        "t.f8_e5m2": ("F8_E5M2", e5m2.shape, e5m2),
        "t.scalar": ("F32", (), scalar),
        "t.empty": ("F32", (0, 3), empty),
    }
    save(os.path.join(OUT, "dtypes.safetensors"), tensors, {"format": "pt"})
    values = {
        "t.f64": as_list(f64), "t.f32": as_list(f32), "t.f16": as_list(f16.astype(np.float64)),
        "t.bf16": as_list(bf16), "t.i64": [int(x) for x in i64], "t.i32": [int(x) for x in i32],
        "t.i16": [int(x) for x in i16], "t.i8": [int(x) for x in i8], "t.u8": [int(x) for x in u8],
        "t.f8_e5m2": as_list(e5m2_value(e5m2)), "t.scalar": [42.0], "t.empty": [],
    }
    expected["dtypes"] = {
        "metadata": {"format": "pt"},
        "tensors": {name: {"dtype": d, "shape": list(shape), "values": values[name]}
                    for name, (d, shape, _) in tensors.items()},
    }


# ---------------------------------------------------------------- quant.safetensors

def make_quant(expected):
    rng = np.random.default_rng(20260424)
    # FP8 weight [130, 260]: 2 x 3 blocks of 128 x 128, the last row / column of blocks partial
    rows, cols = 130, 260
    w = rng.integers(0, 256, size=(rows, cols), dtype=np.int64)
    w = np.where((w & 0x7F) == 0x7F, w ^ 0x01, w).astype(np.uint8)  # no NaN codes
    scale = rng.integers(120, 135, size=(2, 3)).astype(np.uint8)
    deq = e4m3_value(w) * e8m0_value(np.repeat(np.repeat(scale, 128, 0), 128, 1)[:rows, :cols])
    flat = deq.reshape(-1)
    weights = (np.arange(flat.size) % 7) + 1
    samples = [(r, c) for r in (0, 1, 127, 128, 129) for c in (0, 127, 128, 255, 256, 259)]
    samples += [tuple(int(v) for v in rng.integers(0, (rows, cols))) for _ in range(20)]

    # MXFP4 expert weight: logical [6, 128] -> packed I8 [6, 64], scales [6, 4]
    erows, ecols = 6, 128
    codes = rng.integers(0, 16, size=(erows, ecols)).astype(np.uint8)
    packed = (codes[:, 0::2] | (codes[:, 1::2] << 4)).astype(np.uint8).view(np.int8)
    escale = rng.integers(118, 137, size=(erows, ecols // 32)).astype(np.uint8)
    edeq = E2M1[codes] * e8m0_value(np.repeat(escale, 32, 1))

    norm = np.array([1.0, 0.5, -0.25, 2.0, 1.5, -3.0, 0.125, 8.0])
    hc_base = np.array([0.1, -0.2, 0.3, 1e-3], dtype=np.float32)
    tid2eid = np.arange(10, dtype=np.int64).reshape(5, 2) * 3 - 4
    noscale = np.full((4, 8), 0x38, dtype=np.uint8)  # 1.0 in E4M3

    tensors = {
        "layers.0.attn.wq_a.weight": ("F8_E4M3", (rows, cols), w),
        "layers.0.attn.wq_a.scale": ("F8_E8M0", (2, 3), scale),
        "layers.0.ffn.experts.0.w1.weight": ("I8", (erows, ecols // 2), packed),
        "layers.0.ffn.experts.0.w1.scale": ("F8_E8M0", (erows, ecols // 32), escale),
        "layers.0.attn.wkv.weight": ("F8_E4M3", (4, 8), noscale),
        "layers.0.attn_norm.weight": ("BF16", (8,), bf16_bits(norm)),
        "hc_head_base": ("F32", (4,), hc_base),
        "layers.0.ffn.gate.tid2eid": ("I64", (5, 2), tid2eid),
    }
    metadata = {"format": "pt", "producer": "tools/make_safetensors_fixture.py", "model": "dsv4-fixture"}
    save(os.path.join(OUT, "quant.safetensors"), tensors, metadata)
    expected["quant"] = {
        "metadata": metadata,
        "fp8": {
            "name": "layers.0.attn.wq_a.weight", "shape": [rows, cols],
            "scale": [[int(x) for x in row] for row in scale],
            # values are dyadic with few bits: these double sums are exact in any order
            "sum": float(flat.sum()), "weighted_sum": float((flat * weights).sum()),
            "weights": "1 + (flat index % 7)",
            "samples": [[r, c, float(deq[r, c])] for r, c in samples],
        },
        "mxfp4": {
            "name": "layers.0.ffn.experts.0.w1.weight", "shape": [erows, ecols],
            "first_bytes": [int(x) for x in packed.view(np.uint8)[0, :4]],
            "values": as_list(edeq),
        },
        "plain": {
            "layers.0.attn_norm.weight": as_list(norm),
            "hc_head_base": as_list(hc_base),
            "layers.0.ffn.gate.tid2eid": [int(x) for x in tid2eid.reshape(-1)],
        },
        "unscaled_fp8": "layers.0.attn.wkv.weight",
    }


# ---------------------------------------------------------------- sharded/

def make_sharded(expected):
    d = os.path.join(OUT, "sharded")
    os.makedirs(d, exist_ok=True)
    embed = (np.arange(12, dtype=np.float32).reshape(4, 3) - 5.5)
    norm = np.array([1.0, 2.0, 0.5])
    head = (np.arange(12).reshape(4, 3) * 0.25).astype(np.float16)
    ids = np.array([7, -9], dtype=np.int32)
    shards = {
        "model-00001-of-00002.safetensors": {
            "embed.weight": ("F32", (4, 3), embed),
            "norm.weight": ("BF16", (3,), bf16_bits(norm)),
        },
        "model-00002-of-00002.safetensors": {
            "head.weight": ("F16", (4, 3), head),
            "layers.0.ids": ("I32", (2,), ids),
        },
    }
    weight_map, total = {}, 0
    for fname, tensors in shards.items():
        save(os.path.join(d, fname), tensors, {"format": "pt"})
        for name, (_, _, raw) in tensors.items():
            weight_map[name] = fname
            total += np.asarray(raw).nbytes
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    with open(os.path.join(d, "model.safetensors.index.json"), "w") as f:
        json.dump(index, f, indent=2)
        f.write("\n")
    expected["sharded"] = {
        "weight_map": weight_map,
        "values": {"embed.weight": as_list(embed), "norm.weight": as_list(norm),
                   "head.weight": as_list(head.astype(np.float64)), "layers.0.ids": [7, -9]},
    }


def main():
    os.makedirs(OUT, exist_ok=True)
    expected = {"generator": "tools/make_safetensors_fixture.py",
                "safetensors_version": __import__("safetensors").__version__}
    make_dtypes(expected)
    make_quant(expected)
    make_sharded(expected)
    with open(os.path.join(OUT, "expected.json"), "w") as f:
        json.dump(expected, f, indent=1)
        f.write("\n")
    total = 0
    for dirpath, _, files in os.walk(OUT):
        for name in files:
            total += os.path.getsize(os.path.join(dirpath, name))
    print(f"wrote {OUT} ({total} bytes)")


if __name__ == "__main__":
    main()
