#!/usr/bin/env python3
"""check_hf_roundtrip.py - does a checkpoint written by Tessera load in Hugging Face transformers
and give the same logits? Run by developers (it needs the .venv-tools environment of
tools/make_v4_fixture.py and the built `tessera` binary; tests never run it):

    python3 tools/check_hf_roundtrip.py [--tessera build/tessera] [CHECKPOINT_DIR ...]

Without directories it writes two with `tessera init` (the same writer as every Tessera save):
the V4 fixture's config (every layer type, hash + learned routing, YaRN) and the `tiny` preset
(HCA ratio 32, MTP). For each checkpoint it
  1. loads it with DeepseekV4ForCausalLM.from_pretrained and fails on any missing or unexpected
     tensor (the port drops mtp.* by design: it has no MTP block, docs/v4-reference-notes.md);
  2. runs the port in float32 on a random sequence longer than the window and several blocks
     (67 tokens by default: 16 CSA blocks, so tiny's top-16 indexer keeps every block - at init
     many indexer scores are exactly 0 (ReLU), and torch.topk breaks such ties differently from
     our lower-index-first rule, which changes the picks without either being wrong; the V4
     fixture config checks real selections, top-3 of up to 16 blocks);
  3. runs `tessera forward --out logits.npy` on the same ids;
  4. compares: max |logit difference| <= 1e-4 and identical argmax at every position.
Exit status 0 when every checkpoint passes.
"""
import argparse
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))
from fixture_venv import ensure_venv  # noqa: E402

if __name__ == "__main__":
    ensure_venv(__file__)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from transformers import DeepseekV4ForCausalLM  # noqa: E402

FIXTURE_CONFIG = os.path.join(ROOT, "tests", "fixtures", "v4", "tiny-ref", "config.json")


def port_logits(ckpt, ids):
    model, info = DeepseekV4ForCausalLM.from_pretrained(ckpt, output_loading_info=True)
    missing = list(info.get("missing_keys", []))
    unexpected = [k for k in info.get("unexpected_keys", []) if not k.startswith("mtp.")
                  and ".mtp." not in k]
    if missing or unexpected:
        raise SystemExit("%s: transformers reports missing %s, unexpected %s" % (ckpt, missing, unexpected))
    model.eval()
    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids]))
    return out.logits[0].float().numpy()


def tessera_logits(tessera, ckpt, ids, workdir):
    out = os.path.join(workdir, "logits.npy")
    subprocess.check_call([tessera, "forward", "--model", ckpt, "--ids", ",".join(map(str, ids)),
                           "--out", out], stdout=subprocess.DEVNULL)
    return np.load(out)


def check(tessera, ckpt, seq, workdir):
    import json
    with open(os.path.join(ckpt, "config.json")) as f:
        vocab = json.load(f)["vocab_size"]
    rng = np.random.default_rng(7)
    ids = [int(i) for i in rng.integers(0, vocab, size=seq)]
    ref = port_logits(ckpt, ids)
    ours = tessera_logits(tessera, ckpt, ids, workdir)
    diff = float(np.max(np.abs(ref - ours)))
    same_argmax = bool(np.all(ref.argmax(-1) == ours.argmax(-1)))
    ok = diff <= 1e-4 and same_argmax
    print("%s: %d tokens, max |logit diff| %.2e, argmax %s -> %s"
          % (ckpt, seq, diff, "identical" if same_argmax else "DIFFERENT", "ok" if ok else "FAILED"))
    return ok


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tessera", default=os.path.join(ROOT, "build", "tessera"))
    ap.add_argument("--seq", type=int, default=67)
    ap.add_argument("checkpoints", nargs="*")
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as work:
        ckpts = args.checkpoints
        if not ckpts:
            for name, model in (("fixture-config", FIXTURE_CONFIG), ("tiny", "tiny")):
                d = os.path.join(work, name)
                subprocess.check_call([args.tessera, "init", "--model", model, "--seed", "3", "--out", d],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                ckpts.append(d)
        ok = all([check(args.tessera, c, args.seq, work) for c in ckpts])
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
