"""The probes of torch.optim's column of the feature matrix."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ._probe import (
    F64,
    GROUP_NAMES,
    LAM,
    LR,
    LRS,
    PROX_NAMES,
    WD,
    Cell,
    adam_reference,
    brief,
    central_diff,
    compile_cell,
    compiled_twice,
    cuda_vs_cpu,
    decay_cell,
    half_sq,
    max_diff,
    no_gpu,
    no_prox,
    rel_err,
    sci,
    snapshot,
    subset_cell,
    tensors,
    touched,
)

NAME = "torch.optim"


def available() -> str | None:
    """None: torch.optim comes with torch."""
    return None


def _step(p: dict[str, torch.Tensor], g: dict[str, torch.Tensor], **kw: Any) -> dict[str, torch.Tensor]:
    """One ``opt.step()`` of ``kind`` (``torch.optim.SGD`` unless ``kind=`` says) with ``kw``,
    on Parameters copied from ``p`` with gradients ``g``: the new params."""
    ps = {k: torch.nn.Parameter(v.clone()) for k, v in p.items()}
    for k, x in ps.items():
        x.grad = g[k].clone()
    kind = kw.pop("kind", torch.optim.SGD)
    kind(list(ps.values()), **kw).step()
    return {k: v.detach() for k, v in ps.items()}


def pure_step() -> Cell:
    p, g = tensors()
    ps = [torch.nn.Parameter(p["W"]), torch.nn.Parameter(p["b"])]
    opt = torch.optim.Adam(ps, lr=0.1)
    for x, gx in zip(ps, g.values()):
        x.grad = gx.clone()
    opt.step()
    snap = snapshot((ps, [x.grad for x in ps], [opt.state[x] for x in ps]))
    opt.step()
    vals, vers = touched(snap)
    return Cell("no", f"by design: opt.step() changed {vals}/{len(snap)} leaves of params+grads+state in place "
                      f"({vers} _version bumps)")


def vmap_lr() -> Cell:
    p, _ = tensors()
    lrs = torch.tensor(LRS, dtype=F64)

    def inside(lr: torch.Tensor) -> torch.Tensor:  # the optimizer built under vmap
        w = torch.nn.Parameter(p["W"].clone())
        w.grad = torch.ones_like(w)
        torch.optim.Adam([w], lr=lr).step()
        return w.detach().clone()

    w = torch.nn.Parameter(p["W"].clone())
    w.grad = torch.ones_like(w)
    opt = torch.optim.Adam([w], lr=0.1)

    def outside(lr: torch.Tensor) -> torch.Tensor:  # the optimizer built before, lr set under vmap
        opt.param_groups[0]["lr"] = lr
        opt.step()
        return w.detach().clone()

    notes = []
    for label, fn in (("Adam([w], lr=batched lr) built under vmap", inside),
                      ("param_groups[0]['lr'] = batched lr, then step()", outside)):
        try:
            torch.func.vmap(fn)(lrs)
            notes.append(f"{label}: ran (not compared)")
        except Exception as exc:
            notes.append(f"{label}: {brief(exc, 70)}")
    ran = any("ran" in n for n in notes)
    return Cell("probe failed" if ran else "no", "torch.func.vmap: " + "; ".join(notes))


def hypergradient() -> Cell:
    p, g = tensors()

    def stepped(lr: Any, differentiable: bool, leaf: bool) -> torch.Tensor:
        w = p["W"].clone()  # with differentiable=True a non-leaf may be optimized
        if leaf:
            w = torch.nn.Parameter(w)
        w.grad = g["W"].clone()
        torch.optim.Adam([w], lr=lr, differentiable=differentiable).step()
        return w

    def after(lr: Any, differentiable: bool, leaf: bool) -> torch.Tensor:
        return half_sq({"W": stepped(lr, differentiable, leaf)})

    notes = []
    try:  # the default optimizer, a tensor lr that requires grad
        lr = torch.tensor(0.1, dtype=F64, requires_grad=True)
        torch.autograd.grad(after(lr, False, True), lr)
        notes.append("default (differentiable=False): a gradient came back")
    except Exception as exc:
        notes.append(f"default (differentiable=False): {brief(exc, 50)}")
    # The differentiable step is compared with a finite difference of itself: its forward
    # is not the default step's (see the last note).
    fd = central_diff(lambda x: after(torch.tensor(x, dtype=F64), True, False).item(), 0.1)
    try:
        lr = torch.tensor(0.1, dtype=F64, requires_grad=True)
        (hg,) = torch.autograd.grad(after(lr, True, False), lr)
        r = rel_err(hg.item(), fd)
        verdict = "partial" if r < 1e-6 else "no"
        notes.insert(0, f"torch.autograd through Adam(differentiable=True, tensor lr) stepping a non-leaf copy "
                        f"in place: rel. err vs finite diff {sci(r)}")
    except Exception as exc:
        verdict = "no"
        notes.insert(0, f"differentiable=True: {brief(exc, 60)}")
    try:
        hg_func = torch.func.grad(lambda lr: after(lr, True, False))(torch.tensor(0.1, dtype=F64)).item()
        notes.append(f"torch.func.grad: rel. err {sci(rel_err(hg_func, fd))}")
    except Exception as exc:
        notes.append(f"torch.func.grad: {brief(exc, 50)}")
    dw = (stepped(torch.tensor(0.1, dtype=F64), True, False) - stepped(0.1, False, True)).abs().max().item()
    notes.append(f"in float64 the differentiable step differs from the default one by max|Δw| {sci(dw)}")
    return Cell(verdict, "; ".join(notes))


def decay_subset() -> Cell:
    p, _ = tensors()
    W, b = torch.nn.Parameter(p["W"].clone()), torch.nn.Parameter(p["b"].clone())
    opt = torch.optim.AdamW([{"params": [W]}, {"params": [b], "weight_decay": 0.0}], lr=LR, weight_decay=WD)
    for x in (W, b):
        x.grad = torch.zeros_like(x)
    opt.step()
    return subset_cell(W.detach(), b.detach(), "AdamW, two param groups")


def l2_vs_decay() -> Cell:
    p, g = tensors()
    wd = _step(p, g, lr=LR, weight_decay=2 * LAM)
    q = {k: v.clone().requires_grad_() for k, v in p.items()}
    pen_g = dict(zip(q, torch.autograd.grad(sum(LAM * (v * v).sum() for v in q.values()), list(q.values()))))
    pen = _step(p, {k: g[k] + pen_g[k] for k in g}, lr=LR)
    zeros = {k: torch.zeros_like(v) for k, v in g.items()}
    aw = _step(p, zeros, kind=torch.optim.AdamW, lr=LR, weight_decay=WD)
    return decay_cell(max_diff(wd, pen), max_diff(aw, {k: v * (1 - LR * WD) for k, v in p.items()}),
                      "SGD(weight_decay=2λ)", "AdamW:")


def l1_prox() -> Cell:
    extra = "; torch.nn.functional.softshrink exists, outside torch.optim" if hasattr(
        torch.nn.functional, "softshrink") else ""
    return no_prox("torch.optim", PROX_NAMES, extra)


def group_prox() -> Cell:
    return no_prox("torch.optim", GROUP_NAMES)


def adam_parity() -> Cell:
    ref = adam_reference()
    d = max(max_diff(adam_reference(foreach=True), ref), max_diff(adam_reference(fused=True), ref))
    return Cell("yes", f"the reference (default impl on CPU); foreach=True and fused=True vs it: max|Δ| {sci(d)}")


def compiled_step() -> Cell:
    p, g = tensors(torch.float32)

    def make(compile: Callable[[Any], Any]) -> Callable[[float], float]:
        ps = [torch.nn.Parameter(v.clone()) for v in p.values()]
        eager = [torch.nn.Parameter(v.clone()) for v in p.values()]
        lr = torch.tensor(0.1)
        opt = torch.optim.Adam(ps, lr=lr)
        ref = torch.optim.Adam(eager, lr=0.1)
        for x, y, gx in zip(ps, eager, g.values()):
            x.grad, y.grad = gx.clone(), gx.clone()
        step = compile(lambda: opt.step())

        def run(value: float) -> float:
            lr.fill_(value)  # the tensor lr changed in place, as torch.optim's docs suggest
            ref.param_groups[0]["lr"] = value
            step()
            ref.step()
            return max((x - y).abs().max().item() for x, y in zip(ps, eager))

        return run

    how = "opt.step() with a tensor lr changed by fill_"
    try:
        return compile_cell(compiled_twice(make, True), "fullgraph, " + how)
    except Exception as exc:
        full = brief(exc, 60)
    cell = compile_cell(compiled_twice(make, False), "fullgraph=False, " + how, fullgraph=False)
    if cell.verdict == "yes":
        cell.verdict = "partial"
    cell.note = f"fullgraph=True: {full}; " + cell.note
    return cell


def on_cuda() -> Cell:
    if not torch.cuda.is_available():
        return no_gpu()

    def step(dev: torch.device) -> dict[str, torch.Tensor]:
        p, g = (tuple({k: v.to(dev) for k, v in t.items()} for t in tensors()))
        return _step(p, g, kind=torch.optim.Adam, lr=0.1, weight_decay=0.01)

    return cuda_vs_cpu(step, "Adam.step")
