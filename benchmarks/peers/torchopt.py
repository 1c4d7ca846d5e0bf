"""The probes of torchopt's column of the feature matrix, on torchopt's default path
(``use_accelerated_op=False``; :func:`extension_note` says whether its C++ extension loads)."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from ._probe import (
    ALR,
    F64,
    GROUP_NAMES,
    LAM,
    LR,
    LRS,
    PROX_NAMES,
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
    no_gpu,
    no_prox,
    parity_cell,
    quad_grads,
    raised_in,
    rel_err,
    sci,
    snapshot,
    subset_cell,
    tensors,
    touched,
)

NAME = "torchopt"


def _module() -> Any:
    return importlib.import_module("torchopt")


def available() -> str | None:
    """None when torchopt imports, else why not."""
    try:
        _module()
        return None
    except Exception as exc:
        return brief(exc, 60) + " (pip install -c constraints.txt torchopt)"


def extension_note() -> str:
    """Whether torchopt's C++ extension loads with this torch; without it torchopt runs its
    Python path (``use_accelerated_op=False``, its default)."""
    try:
        importlib.import_module("torchopt._C")
        return "torchopt's C++ extension imports"
    except ImportError as exc:
        why = "ImportError: undefined symbol, built for another torch" if "undefined symbol" in str(exc) \
            else brief(exc, 50)
        return f"torchopt's C++ extension (torchopt._C) does not load with this torch ({why})"
    except Exception as exc:
        return f"torchopt's C++ extension: {brief(exc, 50)}"


def pure_step() -> Cell:
    to = _module()

    def one(inplace: bool) -> tuple[dict[str, tuple[int, int]], int]:
        p, g = tensors()
        tx = to.adam(lr=0.1)
        s = tx.init(p)
        u, s = tx.update({k: v.clone() for k, v in g.items()}, s, params=p, inplace=False)
        snaps = {"param": snapshot(p), "grad": snapshot(g), "state": snapshot(s)}
        u, _ = tx.update(g, s, params=p, inplace=inplace)
        to.apply_updates(p, u, inplace=inplace)
        return {k: touched(v) for k, v in snaps.items()}, sum(len(v) for v in snaps.values())

    def says(t: dict[str, tuple[int, int]]) -> str:
        return ", ".join(f"{k}s {v[0]} changed/{v[1]} _version bumps" for k, v in t.items())

    default, _ = one(True)
    explicit, n = one(False)
    pure = not any(a or b for a, b in explicit.values())
    dirty = any(a or b for a, b in default.values())
    default_note = f"with the defaults (inplace=True): {says(default)}"
    if pure and dirty:
        return Cell("partial", f"pure only with inplace=False on both update() and apply_updates() ({n} leaves "
                               f"untouched); {default_note}")
    if pure:
        return Cell("yes", f"inputs untouched with inplace=False and with the defaults ({n} leaves)")
    return Cell("no", f"with inplace=False: {says(explicit)}")


def vmap_lr() -> Cell:
    to = _module()
    p, g = tensors()

    def step(lr: Any) -> torch.Tensor:
        tx = to.adam(lr=lr)
        s = tx.init(p)
        u, _ = tx.update(g, s, params=p, inplace=False)
        return to.apply_updates(p, u, inplace=False)["W"]

    lrs = torch.tensor(LRS, dtype=F64)
    loop = torch.stack([step(lr) for lr in LRS])
    try:
        d = (torch.func.vmap(step)(lrs) - loop).abs().max().item()
        return Cell("yes" if d <= 1e-12 else "no", f"torch.func.vmap over a tensor lr: max|Δ| vs loop {sci(d)}")
    except Exception as exc:
        direct = brief(exc, 60)
    # The same with the lr given as a schedule (a callable), which skips the `lr >= 0` check.
    try:
        d = (torch.func.vmap(lambda lr: step(lambda _count: lr))(lrs) - loop).abs().max().item()
    except Exception as exc:
        return Cell("no", f"tensor lr: {direct}; schedule lr: {brief(exc, 60)}")
    if d <= 1e-12:
        return Cell("partial", f"tensor lr: {direct}; works with a schedule lr=lambda _: lr (max|Δ| vs loop {sci(d)})")
    return Cell("no", f"tensor lr: {direct}; schedule lr ran but max|Δ| vs loop {sci(d)}")


def hypergradient() -> Cell:
    to = _module()
    p, g = tensors()

    def f(lr: Any) -> Any:
        tx = to.adam(lr=lr)
        u, _ = tx.update(g, tx.init(p), params=p, inplace=False)
        return half_sq(to.apply_updates(p, u, inplace=False))

    fd = central_diff(lambda lr: f(lr).item(), 0.1)
    notes = []
    verdict = "no"
    try:
        lr = torch.tensor(0.1, dtype=F64, requires_grad=True)
        (hg,) = torch.autograd.grad(f(lr), lr)
        r = rel_err(hg.item(), fd)
        verdict = "yes" if r < 1e-6 else "no"
        notes.append(f"torch.autograd, tensor lr, inplace=False: rel. err vs finite diff {sci(r)}")
    except Exception as exc:
        notes.append(f"torch.autograd: {brief(exc, 60)}")
    try:
        hg_func = torch.func.grad(f)(torch.tensor(0.1, dtype=F64)).item()
        notes.append(f"torch.func.grad: rel. err {sci(rel_err(hg_func, fd))}")
    except Exception as exc:
        notes.append(f"torch.func.grad: {brief(exc, 60)}")
    return Cell(verdict, "; ".join(notes))


def decay_subset() -> Cell:
    to = _module()
    p, g = tensors()
    zeros = {k: torch.zeros_like(v) for k, v in g.items()}

    def run(tx: Any) -> dict[str, torch.Tensor]:
        u, _ = tx.update(zeros, tx.init(p), params=p, inplace=False)
        return to.apply_updates(p, u, inplace=False)

    cell = subset_cell(*run(to.adamw(lr=LR, weight_decay=WD, mask={"W": True, "b": False})).values(),
                       "adamw(mask={'W': True, 'b': False})")
    if cell.verdict == "yes":
        return cell
    notes = [cell.note]
    none = run(to.adamw(lr=LR, weight_decay=WD, mask={"W": False, "b": False}))
    decayed = [k for k in none if not np.array_equal(none[k].numpy(), D[k])]
    notes.append(f"an all-False mask still changed {decayed}")
    try:
        run(to.adamw(lr=LR, weight_decay=WD, mask=[True, False]))
        notes.append("a flat-list mask ran")
    except Exception as exc:
        notes.append(f"a flat-list mask [True, False]: {brief(exc, 50)}")
    chained = to.chain(to.transform.scale_by_adam(), to.transform.add_decayed_weights(WD, mask={"W": True, "b": False}),
                       to.transform.scale(-LR))
    by_hand = subset_cell(*run(chained).values(), "")
    if by_hand.verdict == "yes":
        notes.append("a hand-built chain(scale_by_adam, add_decayed_weights(wd, mask), scale(-lr)) masks right")
        return Cell("partial", "; ".join(notes))
    notes.append(f"hand-built chain too:{by_hand.note}")
    return Cell("no", "; ".join(notes))


def l2_vs_decay() -> Cell:
    to = _module()
    p, g = tensors()

    def run(tx: Any, grads: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        u, _ = tx.update(grads, tx.init(p), params=p, inplace=False)
        return to.apply_updates(p, u, inplace=False)

    wd = run(to.sgd(lr=LR, weight_decay=2 * LAM), g)
    pen = run(to.sgd(lr=LR), {k: g[k] + 2 * LAM * p[k] for k in g})
    aw = run(to.adamw(lr=LR, weight_decay=WD), {k: torch.zeros_like(v) for k, v in g.items()})
    return decay_cell(max_diff(wd, pen), max_diff(aw, {k: v * (1 - LR * WD) for k, v in p.items()}),
                      "sgd(weight_decay=2λ)", "adamw:")


def l1_prox() -> Cell:
    _module()
    return no_prox("torchopt", PROX_NAMES)


def group_prox() -> Cell:
    _module()
    return no_prox("torchopt", GROUP_NAMES)


def adam_parity() -> Cell:
    to = _module()
    ref = adam_reference()
    p, _ = tensors()
    X, Y, c = (torch.tensor(D[k], dtype=F64) for k in ("X", "Y", "c"))
    tx = to.adam(lr=ALR)
    params, state = p, tx.init(p)
    for _ in range(STEPS):
        u, state = tx.update(quad_grads(params, X, Y, c), state, params=params, inplace=False)
        params = to.apply_updates(params, u, inplace=False)
    return parity_cell(max_diff(params, ref), "torchopt.adam, inplace=False")


def compiled_step() -> Cell:
    to = _module()
    p, g = tensors(torch.float32)
    s = to.adam(lr=0.1).init(p)

    def maker(make_lr: Callable[[torch.Tensor], Any]) -> Callable[[Callable[[Any], Any]], Callable[[float], float]]:
        def step(p: Any, g: Any, s: Any, lr: torch.Tensor) -> Any:
            tx = to.adam(lr=make_lr(lr))
            u, s = tx.update(g, s, params=p, inplace=False)
            return to.apply_updates(p, u, inplace=False)

        def make(compile: Callable[[Any], Any]) -> Callable[[float], float]:
            compiled = compile(step)
            return lambda lr: max_diff(compiled(p, g, s, torch.tensor(lr)), step(p, g, s, torch.tensor(lr)))

        return make

    how = "torchopt.adam(lr=tensor), update+apply_updates inplace=False"
    try:
        return compile_cell(compiled_twice(maker(lambda lr: lr), True), "fullgraph, " + how)
    except Exception as exc:
        notes = [f"fullgraph=True, tensor lr: {brief(exc, 60)}"]
    try:
        compiled_twice(maker(lambda lr: (lambda _count: lr)), True)
        notes.append("fullgraph=True with a schedule lr=lambda _: lr compiled (not compared)")
        return Cell("probe failed", "; ".join(notes))
    except Exception as exc:
        notes.append(f"with a schedule lr=lambda _: lr: {brief(exc, 50)}")
    try:
        cell = compile_cell(compiled_twice(maker(lambda lr: lr), False), "fullgraph=False, tensor lr",
                            fullgraph=False)
    except Exception as exc:
        return Cell("no", "; ".join(notes + [f"fullgraph=False: {brief(exc, 50)} (raised in {raised_in(exc)})"]))
    cell.note = "; ".join(notes + [cell.note])
    if cell.verdict == "yes":
        cell.verdict = "partial"
    return cell


def on_cuda() -> Cell:
    to = _module()
    if not torch.cuda.is_available():
        return no_gpu()

    def step(dev: torch.device) -> dict[str, torch.Tensor]:
        p, g = (tuple({k: v.to(dev) for k, v in t.items()} for t in tensors()))
        tx = to.adam(lr=0.1)
        u, _ = tx.update(g, tx.init(p), params=p, inplace=False)
        return to.apply_updates(p, u, inplace=False)

    return cuda_vs_cpu(step, "torchopt.adam")
