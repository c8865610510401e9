#!/usr/bin/env python3
"""make_dense_fixture.py - reference outputs of a tiny random Hugging Face LlamaForCausalLM for
checking Tessera's dense baseline (model_type "tessera_dense", src/model/dense_graph.c) against
it. The dense baseline is Llama's math: pre-norm decoder, RMSNorm, causal multi-head attention
with RoPE on the whole head, SwiGLU, no biases.

Run by developers only (tests never run it; its outputs are committed):

    python3 tools/make_dense_fixture.py            # writes tests/fixtures/dense/
    python3 tools/make_dense_fixture.py --check    # regenerates into a temp dir and compares

Like the other fixture tools it re-runs itself inside .venv-tools (tools/fixture_venv.py) and
is deterministic (fixed seed, one thread).

RoPE layout - the one real difference between the two models. Tessera's ts_rope rotates
interleaved pairs (2k, 2k+1) of a head (the original Llama / Meta layout); Hugging Face's Llama
rotates split halves (k, k + head_dim/2) (rotate_half). Both use angle p * theta^(-2k/head_dim)
for pair k, so the models agree exactly once the rows of q_proj and k_proj are permuted within
each head: HF row s*head_dim/2 + k  <->  Tessera row 2k + s (s = 0, 1). This is the permutation of
transformers' convert_llama_weights_to_hf.py. q.k is unchanged because q and k are permuted
alike; v, o and the FFN need no change. llama_to_tessera / tessera_to_llama below are that
converter (plus the renaming); the fixture checks both directions: the Tessera checkpoint it
writes (tiny-ref/) converts back to the identical Llama state dict and reproduces its logits.
Tessera's own checkpoints keep the Tessera names (embed.weight, layers.N.attn.wq.weight, ...),
so transformers does not open them directly - run tessera_to_llama first.

Outputs (tests/fixtures/dense/, ~0.5 MiB):
  tiny-ref/              config.json (model_type tessera_dense, llama keys) + model.safetensors
                         (F32, Tessera names, q/k rows in the interleaved layout)
  expected.safetensors   ids [1, T] and ids_b2 [2, T] (I64); logits_f64 / loss_f64 (F64, the
                         float64 reference) and logits (F32 rounding of it); logits_f32run /
                         loss_f32run (the model run in float32); logits_b2_f64 / loss_b2_f64;
                         grad.<tessera name> (F64) for every parameter, converted to the
                         interleaved layout like the weights
  expected.json          config, versions, losses, argmax per position, the name table

Loss: model(input_ids=ids, labels=ids) - logits at t are scored against ids[t+1], the mean over
the B*(T-1) predicted positions (Tessera: targets[t] = ids[t+1], targets[T-1] = -1).

Precision: LlamaRMSNorm and the rotary embedding compute in float32 even in a float64 model,
so the float64 reference runs the unchanged code under make_v4_fixture's Promote64 (every
float32 request becomes float64; no float32 tensor may appear) with inv_freq recomputed in
float64. rms_norm_eps is 2^-16 and head_dim 16 so that the f32 constants Tessera's graph keeps
(eps, the 1/sqrt(head_dim) scale) are exact and the f64 comparison can be tight.
"""
import argparse
import copy
import json
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fixture_venv import ROOT, ensure_venv  # noqa: E402

OUT = os.path.join(ROOT, "tests", "fixtures", "dense")

if __name__ == "__main__":
    ensure_venv(__file__)

import torch  # noqa: E402

import transformers  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

from make_v4_fixture import Promote64  # noqa: E402

SEED = 3
SEQ = 24
BATCH2 = 2

# head_dim 16 != hidden_size / heads, so the [H*hd, d] projection shapes are exercised;
# theta 1000 (not 10^4) so that every rotary pair turns visibly over 24 positions.
CONFIG = dict(
    vocab_size=64,
    hidden_size=32,
    intermediate_size=72,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=4,
    head_dim=16,
    rms_norm_eps=2.0 ** -16,
    rope_theta=1000.0,
    max_position_embeddings=128,
    tie_word_embeddings=False,
    bos_token_id=0,
    eos_token_id=1,
    pad_token_id=None,
)


def llama_config(cfg):
    c = {k: v for k, v in cfg.items() if k != "rope_theta"}
    c["rope_parameters"] = {"rope_type": "default", "rope_theta": cfg["rope_theta"]}
    return LlamaConfig(**c, attention_bias=False, mlp_bias=False, hidden_act="silu",
                       attn_implementation="eager")


def tessera_config_json(cfg):
    """config.json of the Tessera checkpoint: the llama keys with model_type tessera_dense."""
    c = dict(cfg)
    c.update(model_type="tessera_dense", architectures=["TesseraDenseForCausalLM"], hidden_act="silu",
             torch_dtype="float32")
    return c


# ------------------------------------------------------------------------------------------
# the converter: Hugging Face Llama names and halves RoPE layout <-> Tessera names, interleaved
LAYER_NAMES = {  # HF suffix under model.layers.N. -> Tessera suffix under layers.N.
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn.wq.weight",
    "self_attn.k_proj.weight": "attn.wk.weight",
    "self_attn.v_proj.weight": "attn.wv.weight",
    "self_attn.o_proj.weight": "attn.wo.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn.w1.weight",
    "mlp.up_proj.weight": "ffn.w3.weight",
    "mlp.down_proj.weight": "ffn.w2.weight",
}
TOP_NAMES = {"model.embed_tokens.weight": "embed.weight", "model.norm.weight": "norm.weight",
             "lm_head.weight": "head.weight"}
ROTARY = ("attn.wq.weight", "attn.wk.weight")


def halves_to_interleaved(w, heads):
    """Rows of a q/k projection, per head: HF row s*hd/2 + k -> Tessera row 2k + s."""
    rows, cols = w.shape
    return w.reshape(heads, 2, rows // heads // 2, cols).transpose(1, 2).reshape(rows, cols)


def interleaved_to_halves(w, heads):
    rows, cols = w.shape
    return w.reshape(heads, rows // heads // 2, 2, cols).transpose(1, 2).reshape(rows, cols)


def tessera_name(hf_name):
    if hf_name in TOP_NAMES:
        return TOP_NAMES[hf_name]
    parts = hf_name.split(".", 3)  # model, layers, N, suffix
    assert parts[:2] == ["model", "layers"] and parts[3] in LAYER_NAMES, hf_name
    return f"layers.{parts[2]}.{LAYER_NAMES[parts[3]]}"


def llama_to_tessera(state, heads, tied):
    """HF Llama state dict (or its gradients) -> Tessera tensors."""
    out = {}
    for k, v in state.items():
        if tied and k == "lm_head.weight":
            continue
        name = tessera_name(k)
        out[name] = halves_to_interleaved(v, heads) if name.endswith(ROTARY) else v
    return {k: v.contiguous() for k, v in out.items()}


def tessera_to_llama(tensors, heads, tied):
    inverse = {v: k for k, v in TOP_NAMES.items()}
    out = {}
    for name, v in tensors.items():
        if name in inverse:
            hf = inverse[name]
        else:
            _, n, suffix = name.split(".", 2)
            hf = "model.layers.%s.%s" % (n, next(h for h, t in LAYER_NAMES.items() if t == suffix))
        out[hf] = interleaved_to_halves(v, heads) if name.endswith(ROTARY) else v
    if tied:
        out["lm_head.weight"] = out["model.embed_tokens.weight"]
    return {k: v.contiguous() for k, v in out.items()}


# ------------------------------------------------------------------------------------------
def init_params(model, gen):
    """Non-trivial values: norms around 1, matrices with unit-variance outputs."""
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if name.endswith("norm.weight"):
                v = torch.randn(p.shape, generator=gen) * 0.2 + 1.0
            elif name.endswith("embed_tokens.weight"):
                v = torch.randn(p.shape, generator=gen)
            else:
                v = torch.randn(p.shape, generator=gen) * p.shape[1] ** -0.5
            p.copy_(v)


def rebuild_inv_freq(model):
    """inv_freq in float64 by the model's own function (it was made in float32 at init)."""
    rot = model.model.rotary_emb
    with Promote64():
        inv, _ = rot.compute_default_rope_parameters(model.config)
    assert inv.dtype == torch.float64
    rot.inv_freq.copy_(inv)
    rot.original_inv_freq.copy_(inv)


def run(model, ids, promote, with_grad):
    model.zero_grad(set_to_none=True)
    mode = Promote64() if promote else None
    try:
        if mode:
            mode.__enter__()
        out = model(input_ids=ids, labels=ids, use_cache=False)
        if with_grad:
            out.loss.backward()
    finally:
        if mode:
            mode.__exit__(None, None, None)
    if mode and mode.leaks:
        raise RuntimeError(f"float32 tensors produced in the float64 run by: {sorted(mode.leaks)}")
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return out.loss.detach(), out.logits.detach(), grads


def generate(out_dir):
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    torch.manual_seed(SEED)
    heads, tied = CONFIG["num_attention_heads"], CONFIG["tie_word_embeddings"]

    model = LlamaForCausalLM(llama_config(CONFIG)).eval()
    gen = torch.Generator().manual_seed(SEED)
    init_params(model, gen)
    ids2 = torch.randint(0, CONFIG["vocab_size"], (BATCH2, SEQ), generator=gen)
    ids1 = ids2[:1].clone()

    # --- the Tessera checkpoint, and the converter in both directions --------------------
    ref_dir = os.path.join(out_dir, "tiny-ref")
    os.makedirs(ref_dir, exist_ok=True)
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    st_path = os.path.join(ref_dir, "model.safetensors")
    save_file(llama_to_tessera(sd, heads, tied), st_path, metadata={"format": "pt"})
    with open(os.path.join(ref_dir, "config.json"), "w") as f:
        json.dump(tessera_config_json(CONFIG), f, indent=2, sort_keys=True)
        f.write("\n")
    for fn in os.listdir(ref_dir):  # safetensors creates files 0600; these are committed
        os.chmod(os.path.join(ref_dir, fn), 0o644)

    back = tessera_to_llama(load_file(st_path), heads, tied)
    assert back.keys() == sd.keys() and all(torch.equal(back[k], sd[k]) for k in sd), "converter round trip"
    reloaded = LlamaForCausalLM(llama_config(CONFIG)).eval()
    reloaded.load_state_dict(back, strict=True)

    # --- float32 runs ----------------------------------------------------------------------
    loss32, logits32, _ = run(model, ids1, promote=False, with_grad=False)
    l2, lg2, _ = run(reloaded, ids1, promote=False, with_grad=False)
    assert torch.equal(lg2, logits32) and torch.equal(l2, loss32), "reloaded model differs"

    # --- float64 runs: forward, loss, backward -----------------------------------------------
    model64 = copy.deepcopy(model).double()
    rebuild_inv_freq(model64)
    loss, logits, grads = run(model64, ids1, promote=True, with_grad=True)
    loss_b2, logits_b2, _ = run(model64, ids2, promote=True, with_grad=False)
    dl = (logits - logits32.double()).abs().max().item()
    assert dl < 1e-4, f"float32 and float64 runs disagree: max |dlogits| = {dl}"
    db = (logits_b2[:1] - logits).abs().max().item()
    assert db < 1e-12, db
    assert len(grads) == len(sd), "every parameter has a gradient"

    f32 = lambda t: t.detach().to(torch.float32).contiguous()  # noqa: E731
    T = {
        "ids": ids1.to(torch.int64), "ids_b2": ids2.to(torch.int64),
        "logits": f32(logits), "logits_f64": logits.contiguous(), "loss_f64": loss.reshape(1),
        "logits_f32run": f32(logits32), "loss_f32run": f32(loss32.reshape(1)),
        "logits_b2_f64": logits_b2.contiguous(), "loss_b2_f64": loss_b2.reshape(1),
    }
    for k, v in llama_to_tessera(grads, heads, tied).items():
        T["grad." + k] = v.detach().contiguous()
    exp_path = os.path.join(out_dir, "expected.safetensors")
    save_file(T, exp_path, metadata={"format": "pt"})
    os.chmod(exp_path, 0o644)

    info = {
        "what": "reference outputs of transformers' LlamaForCausalLM on the weights of tiny-ref/ "
                "(converted by this script's llama_to_tessera: renamed, q/k rows permuted from "
                "HF's split-halves RoPE layout to Tessera's interleaved pairs)",
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "python": sys.version.split()[0]},
        "seed": SEED,
        "seq_len": SEQ,
        "config": CONFIG,
        "dtype": {
            "weights": "float32",
            "reference": "float64 run of the unchanged LlamaForCausalLM under Promote64 "
                         "(make_v4_fixture.py), inv_freq recomputed in float64",
            "f32_vs_f64_max_abs_logit_diff": dl,
        },
        "loss": {"definition": "model(input_ids=ids, labels=ids): mean cross-entropy of logits[t] "
                               "against ids[t+1] over the B*(T-1) predicted positions",
                 "b1": loss.item(), "b1_f32run": loss32.item(), "b2": loss_b2.item()},
        "argmax_b1": logits.argmax(-1)[0].tolist(),
        "hf_to_tessera_names": {k: tessera_name(k) for k in sorted(sd)},
        "tensors": {k: {"dtype": str(v.dtype).replace("torch.", ""), "shape": list(v.shape)}
                    for k, v in sorted(T.items())},
    }
    with open(os.path.join(out_dir, "expected.json"), "w") as f:
        json.dump(info, f, indent=1, sort_keys=True)
        f.write("\n")
    return info


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--check", action="store_true",
                    help="regenerate into a temporary directory and compare with the committed files")
    ap.add_argument("--out", default=OUT)
    a = ap.parse_args()
    if a.check:
        tmp = tempfile.mkdtemp()
        try:
            generate(tmp)
            bad = []
            for dp, _, files in os.walk(tmp):
                for fn in files:
                    rel = os.path.relpath(os.path.join(dp, fn), tmp)
                    ref = os.path.join(a.out, rel)
                    if not os.path.exists(ref) or open(ref, "rb").read() != open(os.path.join(dp, fn), "rb").read():
                        bad.append(rel)
            print("identical" if not bad else "DIFFERENT: " + ", ".join(sorted(bad)))
            sys.exit(1 if bad else 0)
        finally:
            shutil.rmtree(tmp)
    if os.path.isdir(os.path.join(a.out, "tiny-ref")):
        shutil.rmtree(os.path.join(a.out, "tiny-ref"))
    os.makedirs(a.out, exist_ok=True)
    info = generate(a.out)
    total = sum(os.path.getsize(os.path.join(dp, fn)) for dp, _, files in os.walk(a.out) for fn in files)
    print(f"wrote {a.out}: {total} bytes; loss b1 {info['loss']['b1']:.10f} b2 {info['loss']['b2']:.10f}")
    print("f32 vs f64 max |dlogit|:", info["dtype"]["f32_vs_f64_max_abs_logit_diff"])


if __name__ == "__main__":
    main()
