#!/usr/bin/env python3
"""bench_train_pytorch.py - training throughput of Tessera's dense baseline against the same
model in PyTorch, on the CPU, side by side.

    python3 bench/bench_train_pytorch.py [--tessera build/bench/tessera_bench_train]
        [--model dense-small] [--v4-model tiny] [--batch 8] [--seq 256] [--steps 5] [--warmup 1]
        [--threads N] [--modes f32,bf16] [--json]

Tessera: runs bench/bench_train.c (tessera_bench_train --json), which builds the dense graph
(forward, loss, backward; memory planned once) and takes AdamW steps, and reports the shape it
ran, in f32 and with --bf16 (bf16 weight matmuls into f32, f32 master weights). PyTorch: the
same architecture built here from that shape - pre-norm decoder, RMSNorm,
causal multi-head attention (F.scaled_dot_product_attention) with interleaved-pair RoPE on the
whole head, SwiGLU, no biases, tied or untied head as the model says - with torch.optim.AdamW
(lr 1e-3, betas 0.9/0.95, eps 1e-8, weight decay 0.1 on matrices, 0 on norms, like the C side),
in float32 and in bfloat16 autocast (f32 master weights). Same batch, sequence, synthetic token
stream rule, init scheme (so the loss columns are comparable) and thread count
(torch.set_num_threads). Each reports the median step time of
--steps timed steps after --warmup untimed ones; a step is zero_grad + forward + loss + backward
+ optimizer step. tokens/s = batch * seq / median.

MFU (model FLOP utilization) = tokens/s x the model's training FLOPs per token (model.h's count,
which tessera_bench_train reports; the same for both sides, since it is the same model) / the
machine's f32 FMA peak with --threads threads (`tessera bench gemm`'s register-only FMA loop).
The DeepSeek-V4 preset --v4-model (default tiny; "" skips it) is timed on the Tessera side
alone, at the same batch, sequence and threads: there is no PyTorch V4 here to set beside it
(transformers' port is not part of .venv-tools).

It runs inside the repository's .venv-tools (made by tools/make_v4_fixture.py, which has torch);
nothing is downloaded. Use one quiet machine: other processes on the cores skew both sides.
"""
import argparse
import glob
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV = os.path.join(ROOT, ".venv-tools")


def ensure_venv():
    """Re-executes this script with the .venv-tools interpreter; never installs anything."""
    if os.path.realpath(sys.prefix) == os.path.realpath(VENV):
        return
    venv_python = os.path.join(VENV, "bin", "python")
    if not os.path.exists(venv_python):
        sys.exit("bench_train_pytorch: %s is missing; create it with python3 tools/make_v4_fixture.py" % VENV)
    os.execv(venv_python, [venv_python, os.path.abspath(__file__)] + sys.argv[1:])


if __name__ == "__main__":
    ensure_venv()

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402


# ------------------------------------------------------------------------------------------ model
def rope(x, cos, sin):
    """x [B, H, T, hd]: rotate interleaved pairs (2k, 2k+1) by angle t * theta^(-2k/hd)."""
    x0, x1 = x[..., 0::2], x[..., 1::2]
    return torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1).flatten(-2)


class Block(nn.Module):
    def __init__(self, s):
        super().__init__()
        d, hc, f = s["hidden"], s["heads"] * s["head_dim"], s["intermediate"]
        self.heads, self.head_dim = s["heads"], s["head_dim"]
        self.attn_norm = nn.RMSNorm(d, eps=s["rms_norm_eps"])
        self.wq, self.wk, self.wv = (nn.Linear(d, hc, bias=False) for _ in range(3))
        self.wo = nn.Linear(hc, d, bias=False)
        self.ffn_norm = nn.RMSNorm(d, eps=s["rms_norm_eps"])
        self.w1, self.w3 = nn.Linear(d, f, bias=False), nn.Linear(d, f, bias=False)
        self.w2 = nn.Linear(f, d, bias=False)

    def forward(self, x, cos, sin):
        B, T, _ = x.shape
        h = self.attn_norm(x)
        q, k, v = (w(h).view(B, T, self.heads, self.head_dim).transpose(1, 2) for w in (self.wq, self.wk, self.wv))
        o = F.scaled_dot_product_attention(rope(q, cos, sin), rope(k, cos, sin), v, is_causal=True)
        x = x + self.wo(o.transpose(1, 2).reshape(B, T, -1))
        h = self.ffn_norm(x)
        return x + self.w2(F.silu(self.w1(h)) * self.w3(h))


class Dense(nn.Module):
    def __init__(self, s, seq):
        super().__init__()
        self.embed = nn.Embedding(s["vocab"], s["hidden"])
        self.layers = nn.ModuleList(Block(s) for _ in range(s["layers"]))
        self.norm = nn.RMSNorm(s["hidden"], eps=s["rms_norm_eps"])
        self.head = None if s["tied"] else nn.Linear(s["hidden"], s["vocab"], bias=False)
        hd = s["head_dim"]
        freqs = s["rope_theta"] ** (-torch.arange(0, hd, 2, dtype=torch.float64) / hd)
        ang = torch.arange(seq, dtype=torch.float64)[:, None] * freqs[None, :]
        self.register_buffer("cos", ang.cos().float(), persistent=False)
        self.register_buffer("sin", ang.sin().float(), persistent=False)
        out_std = 0.02 / (2 * s["layers"]) ** 0.5
        for name, p in self.named_parameters():  # Tessera's init (src/model/init.c), norms 1
            if p.dim() == 2:
                nn.init.normal_(p, std=out_std if name.endswith(("wo.weight", "w2.weight")) else 0.02)

    def forward(self, ids):
        x = self.embed(ids)
        for layer in self.layers:
            x = layer(x, self.cos, self.sin)
        x = self.norm(x)
        return x @ (self.embed.weight if self.head is None else self.head.weight).t()


# ------------------------------------------------------------------------------------------ runs
def batches(vocab, batch, seq, gen):
    """The bench_train.c stream rule: x[i+1] = (31 x[i] + 7 + r) mod V, r in {0, 1, 2}."""
    while True:
        x = torch.randint(0, vocab, (batch,), generator=gen)
        cols = []
        for _ in range(seq + 1):
            cols.append(x)
            x = (31 * x + 7 + torch.randint(0, 3, (batch,), generator=gen)) % vocab
        rows = torch.stack(cols, dim=1)
        yield rows[:, :-1].contiguous(), rows[:, 1:].contiguous()


def run_torch(shape, a, bf16):
    torch.manual_seed(0)
    model = Dense(shape, a.seq)
    decay = [p for p in model.parameters() if p.dim() == 2]
    other = [p for p in model.parameters() if p.dim() != 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": other, "weight_decay": 0.0}],
                            lr=1e-3, betas=(0.9, 0.95), eps=1e-8)
    data = batches(shape["vocab"], a.batch, a.seq, torch.Generator().manual_seed(1))
    times, losses = [], []
    for step in range(a.warmup + a.steps):
        ids, targets = next(data)
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(ids)
        loss = F.cross_entropy(logits.float().view(-1, shape["vocab"]), targets.view(-1))
        loss.backward()
        opt.step()
        dt = time.perf_counter() - t0
        losses.append(loss.item())
        if step >= a.warmup:
            times.append(dt)
    med = statistics.median(times)
    return {"step_s_median": med, "tokens_per_s": a.batch * a.seq / med, "loss_first": losses[0],
            "loss_last": losses[-1], "params": sum(p.numel() for p in model.parameters())}


def find_tessera():
    """The most recently built build*/bench/tessera_bench_train (an older build dir may be stale)."""
    hits = glob.glob(os.path.join(ROOT, "build*", "bench", "tessera_bench_train"))
    if not hits:
        sys.exit("bench_train_pytorch: no tessera_bench_train found under build*/bench; build it or pass --tessera")
    return max(hits, key=os.path.getmtime)


def run_tessera(a, model, bf16):
    exe = a.tessera or find_tessera()
    cmd = [exe, "--model", model, "--batch", str(a.batch), "--seq", str(a.seq), "--steps", str(a.steps),
           "--warmup", str(a.warmup), "--threads", str(a.threads), "--json"] + (["--bf16"] if bf16 else [])
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def fma_peak_gflops(a):
    """`tessera bench gemm`'s register-only f32 FMA peak with a.threads threads (the tessera
    binary of the same build as tessera_bench_train)."""
    exe = os.path.join(os.path.dirname(os.path.dirname(a.tessera or find_tessera())), "tessera")
    out = subprocess.run([exe, "bench", "gemm", "--shapes", "64x64x64", "--dtypes", "f32", "--threads",
                          str(a.threads), "--repeats", "1", "--json"], check=True, capture_output=True, text=True).stdout
    for line in out.splitlines():
        obj = json.loads(line)
        if obj.get("op") == "machine":
            return obj["fma_peak_gflops"]
    sys.exit("bench_train_pytorch: tessera bench gemm printed no machine line")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tessera", help="path of tessera_bench_train (default: the newest build*/bench one)")
    ap.add_argument("--model", default="dense-small", help="a dense preset or checkpoint directory")
    ap.add_argument("--v4-model", default="tiny", help="a DeepSeek-V4 preset or directory timed on our side too (\"\": none)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--steps", type=int, default=5, help="timed steps (the median is reported)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--modes", default="f32,bf16", help="precisions run on both sides: f32 and/or bf16")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    a = ap.parse_args()
    modes = [m for m in a.modes.split(",") if m]
    if any(m not in ("f32", "bf16") for m in modes):
        sys.exit("bench_train_pytorch: --modes takes f32 and/or bf16")
    torch.set_num_threads(a.threads)

    peak = fma_peak_gflops(a)
    results, v4 = {}, {}
    for m in modes:
        results["tessera %s" % m] = run_tessera(a, a.model, m == "bf16")
    ts = next(iter(results.values()))
    if ts["kind"] != "tessera_dense":
        sys.exit("bench_train_pytorch: %s is not a dense model" % a.model)
    for m in modes:
        results["pytorch %s" % ("f32" if m == "f32" else "bf16 autocast")] = run_torch(ts, a, m == "bf16")
        results["pytorch %s" % ("f32" if m == "f32" else "bf16 autocast")]["flops_per_token"] = ts["flops_per_token"]
    if a.v4_model:
        for m in modes:
            v4["tessera %s" % m] = run_tessera(a, a.v4_model, m == "bf16")
    for r in list(results.values()) + list(v4.values()):
        r["mfu"] = r["tokens_per_s"] * r["flops_per_token"] / (peak * 1e9)
    if a.json:
        print(json.dumps({"model": a.model, "v4_model": a.v4_model, "batch": a.batch, "seq": a.seq, "threads": a.threads,
                          "torch": torch.__version__, "fma_peak_gflops": peak, "results": results, "v4_results": v4}))
        return
    print("%s: %d params, batch %d x seq %d = %d tokens/step, %d threads, median of %d steps after %d warm-up (torch %s)"
          % (a.model, ts["params"], a.batch, a.seq, a.batch * a.seq, a.threads, a.steps, a.warmup, torch.__version__))
    print("f32 FMA peak %.1f GFLOP/s (%d threads); %.2f MFLOP per trained token" % (peak, a.threads,
                                                                                   ts["flops_per_token"] * 1e-6))
    print("%-22s %10s %12s %8s   %s" % ("", "step s", "tokens/s", "MFU", "loss first -> last"))
    for name, r in results.items():
        print("%-22s %10.4f %12.0f %7.1f%%   %.4f -> %.4f" % (name, r["step_s_median"], r["tokens_per_s"],
                                                           100 * r["mfu"], r["loss_first"], r["loss_last"]))
    for m in modes:
        ours = results["tessera %s" % m]
        for name, r in results.items():
            if name.startswith("pytorch %s" % m):
                print("tessera %s / %s: %.3fx tokens/s" % (m, name, ours["tokens_per_s"] / r["tokens_per_s"]))
    for name, r in v4.items():
        print("%s (DeepSeek-V4, %d params, %.2f MFLOP/token) %s: %.4f s/step, %.0f tokens/s, MFU %.1f%%, loss %.4f -> %.4f"
              % (a.v4_model, r["params"], r["flops_per_token"] * 1e-6, name, r["step_s_median"], r["tokens_per_s"],
                 100 * r["mfu"], r["loss_first"], r["loss_last"]))


if __name__ == "__main__":
    main()
