"""The probes of funcreg's own column of the feature matrix."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import torch

import funcreg as fr

from ._probe import (
    ALR,
    F64,
    LAM,
    LR,
    LRS,
    STEPS,
    WD,
    Cell,
    D,
    adam_reference,
    brief,
    central_diff,
    compile_cell,
    compiled_twice,
    cuda_vs_cpu,
    decay_cell,
    half_sq,
    max_diff,
    parity_cell,
    quad_grads,
    rel_err,
    sci,
    snapshot,
    subset_cell,
    tensors,
    touched,
)

NAME = "funcreg"


def available() -> str | None:
    """None: funcreg is what the table is about."""
    return None


def _cuda_tests() -> str:
    """How many of funcreg's tests carry the ``cuda`` marker, from pytest's own collection."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    cmd = [sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "cuda", "-p", "no:cacheprovider", "tests"]
    try:
        out = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=300).stdout
    except Exception as exc:
        return f"could not collect them ({brief(exc, 40)})"
    found = re.search(r"(\d+)(?:/\d+)? tests? collected", out)
    if not found:
        return "could not collect them (no count in pytest's output)"
    files = {line.split("::")[0] for line in out.splitlines() if "::" in line}
    return f"{found.group(1)} tests marked cuda in {len(files)} files (pytest -m cuda --collect-only)"


def pure_step() -> Cell:
    checked, leaves = [], 0
    for label, call in (
        ("adam.step (float lr: fused kernel)", lambda p, g, s: fr.adam.step(p, g, s, lr=0.1, weight_decay=0.01)),
        ("adam.step (tensor lr: foreach)", lambda p, g, s: fr.adam.step(p, g, s, lr=torch.tensor(0.1, dtype=F64))),
        ("sgd.step momentum", lambda p, g, s: fr.sgd.step(p, g, s, lr=0.1, momentum=0.9, weight_decay=0.01)),
    ):
        p, g = tensors()
        s = (fr.sgd if "sgd" in label else fr.adam).init(p)
        s = call(p, g, s)[1]  # a state that has taken one step
        snap = snapshot((p, g, s))
        new_p, _ = call(p, g, s)
        vals, vers = touched(snap)
        if vals or vers:
            return Cell("no", f"{label}: {vals} input leaves changed value, {vers} bumped _version")
        if torch.equal(new_p["W"], p["W"]):
            return Cell("probe failed", f"{label} did not move the params")
        checked.append(label)
        leaves += len(snap)
    return Cell("yes", f"values and _version of all {leaves} input leaves (params, grads, state) unchanged "
                       "by " + ", ".join(checked))


def vmap_lr() -> Cell:
    p, g = tensors()

    def three_steps(lr: Any) -> torch.Tensor:
        params, state = p, fr.adam.init(p)
        for _ in range(3):
            params, state = fr.adam.step(params, g, state, lr=lr, weight_decay=0.01)
        return params["W"]

    batched = torch.func.vmap(three_steps)(torch.tensor(LRS, dtype=F64))
    loop = torch.stack([three_steps(lr) for lr in LRS])
    d = (batched - loop).abs().max().item()
    ok = d <= 1e-12
    return Cell("yes" if ok else "no", f"torch.func.vmap over {len(LRS)} lrs, 3 Adam steps: max|Δ| vs loop {sci(d)}")


def hypergradient() -> Cell:
    p, g = tensors()
    s = fr.adam.init(p)

    def f(lr: Any) -> Any:
        return half_sq(fr.adam.step(p, g, s, lr=lr)[0])

    hg = torch.func.grad(f)(torch.tensor(0.1, dtype=F64)).item()
    fd = central_diff(lambda lr: f(lr).item(), 0.1)
    r = rel_err(hg, fd)
    return Cell("yes" if r < 1e-6 else "no",
                f"torch.func.grad of loss after 1 Adam step w.r.t. lr: rel. err vs finite diff {sci(r)}")


def decay_subset() -> Cell:
    p, g = tensors()
    zeros = {k: torch.zeros_like(v) for k, v in g.items()}
    new, _ = fr.adamw.step(p, zeros, fr.adamw.init(p), lr=LR, weight_decay=WD, where=fr.select.weights)
    return subset_cell(new["W"], new["b"], "adamw where=fr.select.weights")


def l2_vs_decay() -> Cell:
    p, g = tensors()
    wd, _ = fr.sgd.step(p, g, fr.sgd.init(p), lr=LR, weight_decay=2 * LAM)
    pen_g = torch.func.grad(lambda q: fr.l2(q, LAM))(p)
    pen, _ = fr.sgd.step(p, {k: g[k] + pen_g[k] for k in g}, fr.sgd.init(p), lr=LR)
    zeros = {k: torch.zeros_like(v) for k, v in g.items()}
    aw, _ = fr.adamw.step(p, zeros, fr.adamw.init(p), lr=LR, weight_decay=WD)
    return decay_cell(max_diff(wd, pen), max_diff(aw, {k: v * (1 - LR * WD) for k, v in p.items()}),
                      "sgd.step(weight_decay=2λ)", "adamw:")


def l1_prox() -> Cell:
    p, _ = tensors()
    lam, step = 0.5, 1.0
    out = fr.l1.prox(p, lam, step)
    zeros = sum(int((v == 0).sum()) for v in out.values())
    expect = sum(int((v.abs() <= lam * step).sum()) for v in p.values())
    ref = {k: torch.sign(v) * (v.abs() - lam * step).clamp_min(0) for k, v in p.items()}
    d = max_diff(out, ref)
    ok = zeros == expect and zeros > 0 and d <= 1e-15
    return Cell("yes" if ok else "no", f"fr.l1.prox: {zeros}/{expect} entries with |w|≤λ·step exactly 0; "
                                       f"max|Δ| vs sign(w)·max(|w|−t,0) {sci(d)}")


def group_prox() -> Cell:
    w = torch.tensor([[3.0, 4.0], [0.3, 0.4], [0.0, 0.0]], dtype=F64)
    lam, step = 1.0 / math.sqrt(2), 1.0
    out = fr.group_lasso.prox({"w": w}, lam, step)["w"]
    t = lam * step * math.sqrt(2)
    ref = torch.stack([(1 - t / r.norm()).clamp_min(0) * r if r.norm() > 0 else r for r in w])
    d = (out - ref).abs().max().item()
    zero_rows = int((out == 0).all(dim=1).sum())
    ok = d <= 1e-15 and zero_rows == 2 and torch.isfinite(out).all()
    return Cell("yes" if ok else "no", f"fr.group_lasso.prox: {zero_rows}/3 rows exactly 0 (one was 0 already, "
                                       f"finite); max|Δ| vs max(1−t/‖w_g‖,0)·w_g {sci(d)}")


def adam_parity() -> Cell:
    ref = adam_reference()
    p, _ = tensors()
    X, Y, c = (torch.tensor(D[k], dtype=F64) for k in ("X", "Y", "c"))
    worst = 0.0
    for lr in (ALR, torch.tensor(ALR, dtype=F64)):
        params, state = p, fr.adam.init(p)
        for _ in range(STEPS):
            params, state = fr.adam.step(params, quad_grads(params, X, Y, c), state, lr=lr)
        worst = max(worst, max_diff(params, ref))
    return parity_cell(worst, "fr.adam.step, float and tensor lr")


def compiled_step() -> Cell:
    p, g = tensors(torch.float32)
    s = fr.adam.init(p)

    def step(p: Any, g: Any, s: Any, lr: Any) -> Any:
        return fr.adam.step(p, g, s, lr=lr, weight_decay=0.01)

    def make(compile: Callable[[Any], Any]) -> Callable[[float], float]:
        compiled = compile(step)
        return lambda lr: max_diff(compiled(p, g, s, torch.tensor(lr))[0], step(p, g, s, lr)[0])

    return compile_cell(compiled_twice(make, True), "fullgraph, fr.adam.step with a tensor lr")


def on_cuda() -> Cell:
    if not torch.cuda.is_available():
        return Cell("not measured", f"tests exist: {_cuda_tests()}; not run here, "
                                    "torch.cuda.is_available() is False")

    def step(dev: torch.device) -> dict[str, torch.Tensor]:
        p, g = (tuple({k: v.to(dev) for k, v in t.items()} for t in tensors()))
        return fr.adam.step(p, g, fr.adam.init(p), lr=0.1, weight_decay=0.01)[0]

    return cuda_vs_cpu(step, "fr.adam.step")
