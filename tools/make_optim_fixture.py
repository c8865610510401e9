#!/usr/bin/env python3
"""make_optim_fixture.py - records a reference AdamW trajectory from PyTorch's own
torch.optim.AdamW for tests/test_optim.c, so the C optimizer (src/train/adamw.c) is checked
against the real implementation and not against a re-statement of its formula.

Run by developers only (tests never run it; its output is committed):

    python3 tools/make_optim_fixture.py        # writes tests/fixtures/optim/adamw.json

It creates (or reuses) the virtual environment .venv-tools and pip-installs torch there from
PyPI on first use (a large download: the PyPI wheel brings CUDA libraries), then re-runs
itself inside it. Everything is deterministic: fixed seeds, fixed problem, fixed learning
rates; re-running gives the same file.

The problem: three parameters in two groups, sized so that some element counts are not
multiples of the CPU vector width (PyTorch's kernels treat such tails with scalar code):
  group 0  betas (0.9, 0.95), eps 1e-8, weight decay 0.1, lr scale 1      params w [8, 16], u [37]
  group 1  betas (0.3, 0.999), eps 1e-6, no weight decay, lr scale 0.5    param  c [5]
(beta1 = 0.3 takes the other branch of torch.lerp, weight 1 - beta1 >= 0.5.) The gradients
come from a fixed least-squares loss evaluated at the current parameters by autograd, with a
zero and some tiny gradient entries mixed in; they are recorded per step, so the C test feeds
the same gradient bits and compares the parameters (and moments) PyTorch reached. The
learning rate changes every step, as a schedule would. PyTorch's foreach and single-tensor
implementations are both run and must agree bit for bit; the file records the foreach run.

One PyTorch op is not IEEE: on x86 builds with MKL, torch.sqrt of f32 goes through MKL's
vsSqrt in its "high accuracy" mode, which is off by one ulp for ~20 % of inputs (and may
differ between CPU models). C's sqrtf is correctly rounded, so parameters can drift from
PyTorch's by a few ulp over the steps. To pin down everything else exactly, the script also
writes out AdamW op by op (adamw_by_ops: the tensor ops of torch/optim/adam.py in its order),
asserts that this reproduces torch.optim.AdamW bit for bit, and then records a second
trajectory made by the very same ops with only sqrt replaced by the correctly rounded one.
The C test must match that one bit for bit, and the real one to a few ulp.

Output (JSON, every float written as the exact decimal of its f32 value):
  torch_version, cpu_capability, groups[{lr_scale, beta1, beta2, eps, weight_decay}],
  params[{name, group, shape, init}],
  steps[{lr, grads, params, ieee_sqrt_grads, ieee_sqrt_params}] (each a list per parameter),
  final_state{step, exp_avg[per param], exp_avg_sq[per param]} (of the torch.optim.AdamW run)
"""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV = os.path.join(ROOT, ".venv-tools")
OUT = os.path.join(ROOT, "tests", "fixtures", "optim", "adamw.json")

# The version the committed fixture was made with.
TORCH_VERSION = "2.15.0"
REQUIREMENTS = ["torch==" + TORCH_VERSION]

STEPS = 5
LRS = [1e-2, 2e-2, 1.5e-2, 1e-2, 5e-3]
GROUPS = [
    {"lr_scale": 1.0, "beta1": 0.9, "beta2": 0.95, "eps": 1e-8, "weight_decay": 0.1},
    {"lr_scale": 0.5, "beta1": 0.3, "beta2": 0.999, "eps": 1e-6, "weight_decay": 0.0},
]
PARAMS = [("w", [8, 16], 0), ("u", [37], 0), ("c", [5], 1)]


def ensure_venv():
    """Re-executes this script with the .venv-tools interpreter (creating it if needed)."""
    venv_python = os.path.join(VENV, "bin", "python")
    if os.path.realpath(sys.prefix) == os.path.realpath(VENV):
        return
    if not os.path.exists(venv_python):
        subprocess.check_call([sys.executable, "-m", "venv", VENV])
    probe = f"import torch; assert torch.__version__.split('+')[0] == '{TORCH_VERSION}'"
    if subprocess.call([venv_python, "-c", probe], stderr=subprocess.DEVNULL) != 0:
        subprocess.check_call([venv_python, "-m", "pip", "install", "-q"] + REQUIREMENTS)
    os.execv(venv_python, [venv_python, os.path.abspath(__file__)] + sys.argv[1:])


ensure_venv()

import torch  # noqa: E402


def initial_params():
    gen = torch.Generator().manual_seed(20260424)
    return [torch.randn(shape, generator=gen, dtype=torch.float32) * 0.5 for _, shape, _ in PARAMS]


def targets():
    gen = torch.Generator().manual_seed(7)
    return [torch.randn(shape, generator=gen, dtype=torch.float32) for _, shape, _ in PARAMS]


def gradients(params, tgts, step):
    """Autograd gradients of a fixed weighted least-squares loss, with special entries: one
    exact zero (v stays 0 there at first, exercising eps) and one tiny value per parameter."""
    leaves = [p.detach().clone().requires_grad_(True) for p in params]
    loss = sum(((i + 1.0) * (x - t) ** 2).sum() for i, (x, t) in enumerate(zip(leaves, tgts)))
    loss.backward()
    grads = [x.grad.detach().clone() for x in leaves]
    for i, g in enumerate(grads):
        flat = g.view(-1)
        flat[(3 * step + i) % flat.numel()] = 0.0
        flat[(5 * step + 2 * i + 1) % flat.numel()] = 1e-12 * (step + 1)
    return grads


def adamw_by_ops(params, grads, state, group, lr, ieee_sqrt):
    """One AdamW step written out with the tensor ops torch/optim/adam.py applies, in its
    order. With ieee_sqrt=False it must equal torch.optim.AdamW bit for bit (asserted in
    main), which pins down the arithmetic; with ieee_sqrt=True the one op that is not IEEE in
    PyTorch's CPU build, sqrt (MKL's vsSqrt, off by an ulp for ~20 % of inputs), is replaced by
    the correctly rounded f32 square root that C's sqrtf gives."""
    state["step"] += 1.0
    step = state["step"]
    beta1, beta2 = group["beta1"], group["beta2"]
    for p, g, m, v in zip(params, grads, state["exp_avg"], state["exp_avg_sq"]):
        if group["weight_decay"] != 0:
            p.mul_(1 - lr * group["weight_decay"])
        m.lerp_(g, 1 - beta1)
        v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        bias_correction1 = 1 - beta1 ** step
        bias_correction2 = 1 - beta2 ** step
        root = v.double().sqrt().float() if ieee_sqrt else v.sqrt()
        denom = (root / bias_correction2 ** 0.5).add_(group["eps"])
        p.addcdiv_(m, denom, value=-(lr / bias_correction1))


def run_by_ops(ieee_sqrt):
    """The same trajectory as run() through adamw_by_ops (gradients recomputed from these
    parameters, exactly as run() does)."""
    params = [p.clone() for p in initial_params()]
    tgts = targets()
    states = [{"step": 0.0, "exp_avg": [], "exp_avg_sq": []} for _ in GROUPS]
    members = [[i for i, (_, _, pg) in enumerate(PARAMS) if pg == gi] for gi in range(len(GROUPS))]
    for gi, idx in enumerate(members):
        states[gi]["exp_avg"] = [torch.zeros_like(params[i]) for i in idx]
        states[gi]["exp_avg_sq"] = [torch.zeros_like(params[i]) for i in idx]
    records = []
    for step in range(STEPS):
        grads = gradients(params, tgts, step)
        for gi, idx in enumerate(members):
            adamw_by_ops([params[i] for i in idx], [grads[i] for i in idx], states[gi], GROUPS[gi],
                         LRS[step] * GROUPS[gi]["lr_scale"], ieee_sqrt)
        records.append({"grads": [g.clone() for g in grads], "params": [p.clone() for p in params]})
    return records


def run(foreach):
    """Returns (per-step records, final optimizer state) for one implementation."""
    params = [p.clone() for p in initial_params()]
    tgts = targets()
    groups = []
    for gi, g in enumerate(GROUPS):
        members = [p for p, (_, _, pg) in zip(params, PARAMS) if pg == gi]
        groups.append({"params": members, "lr": LRS[0] * g["lr_scale"], "betas": (g["beta1"], g["beta2"]),
                       "eps": g["eps"], "weight_decay": g["weight_decay"]})
    opt = torch.optim.AdamW(groups, foreach=foreach)
    records = []
    for step in range(STEPS):
        grads = gradients(params, tgts, step)
        for p, g in zip(params, grads):
            p.grad = g.clone()
        for group, g in zip(opt.param_groups, GROUPS):
            group["lr"] = LRS[step] * g["lr_scale"]
        opt.step()
        records.append({"lr": LRS[step], "grads": [g.clone() for g in grads],
                        "params": [p.detach().clone() for p in params]})
    state = [opt.state[p] for p in params]
    return records, state


def as_list(t):
    """Exact decimals: a Python float made from an f32 is that f32's value."""
    return [float(v) for v in t.reshape(-1).tolist()]


def to_json(value, indent=0):
    """Indented JSON with every list of numbers on one line (compact yet diffable)."""
    pad = " " * indent
    if isinstance(value, dict):
        items = [f'{pad} {json.dumps(k)}: {to_json(v, indent + 1)}' for k, v in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(value, list) and value and not all(isinstance(v, (int, float)) for v in value):
        items = [pad + " " + to_json(v, indent + 1) for v in value]
        return "[\n" + ",\n".join(items) + "\n" + pad + "]"
    return json.dumps(value)


def same_bits(a, b):
    return torch.equal(a.view(torch.int32), b.view(torch.int32))


def main():
    torch.use_deterministic_algorithms(True)
    rec_fe, state_fe = run(foreach=True)
    rec_st, state_st = run(foreach=False)
    for a, b in zip(rec_fe, rec_st):
        assert all(same_bits(x, y) for x, y in zip(a["params"], b["params"])), "foreach != single-tensor"
    steps = [float(s["step"]) for s in state_fe]
    assert steps == [float(STEPS)] * len(PARAMS)
    by_ops = run_by_ops(ieee_sqrt=False)
    for a, b in zip(rec_fe, by_ops):
        assert all(same_bits(x, y) for x, y in zip(a["params"], b["params"])), "op-by-op != torch.optim.AdamW"
    ieee = run_by_ops(ieee_sqrt=True)

    out = {
        "generator": "tools/make_optim_fixture.py",
        "torch_version": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "groups": GROUPS,
        "params": [{"name": n, "group": g, "shape": s, "init": as_list(p)}
                   for (n, s, g), p in zip(PARAMS, initial_params())],
        "steps": [{"lr": r["lr"], "grads": [as_list(g) for g in r["grads"]],
                   "params": [as_list(p) for p in r["params"]],
                   "ieee_sqrt_grads": [as_list(g) for g in q["grads"]],
                   "ieee_sqrt_params": [as_list(p) for p in q["params"]]} for r, q in zip(rec_fe, ieee)],
        "final_state": {"step": STEPS,
                        "exp_avg": [as_list(s["exp_avg"]) for s in state_fe],
                        "exp_avg_sq": [as_list(s["exp_avg_sq"]) for s in state_fe]},
    }
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        f.write(to_json(out) + "\n")
    differ = sum(int((a != b).sum()) for r, q in zip(rec_fe, ieee) for a, b in zip(r["params"], q["params"]))
    print(f"wrote {OUT} ({os.path.getsize(OUT)} bytes); foreach, single-tensor and op-by-op agree bitwise; "
          f"the IEEE-sqrt trajectory differs in {differ} parameter values")


if __name__ == "__main__":
    main()
