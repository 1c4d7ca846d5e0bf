"""Feature table of funcreg against torch.optim, torchopt and optax, as measured.

Every cell comes from a probe that runs a tiny case in this process: a pure step is one
whose inputs keep their values and version counters, vmap over lr is a batched run compared
with a loop, a hypergradient is compared with a central finite difference, and so on. No
cell is filled in from a library's documentation: a probe that raises reports the
exception, a probe that cannot run here (no GPU, library not installed) says so.

Verdicts: ``yes``, ``partial`` (works only in a restricted form, said in the note), ``no``,
``n/a``, ``not measured`` (this machine cannot run it), ``not installed``, and
``probe failed`` (the probe itself broke: a bug to fix here, not a finding).

    python benchmarks/feature_matrix.py            # torch.compile probes use inductor
    python benchmarks/feature_matrix.py --quick    # torch.compile probes use the eager backend

``main(quick=False)`` returns ``[table]`` (markdown, with the versions under it).
optax is probed when ``jax`` and ``optax`` import (``pip install -c constraints.txt jax
optax``; CPU wheels are enough); they are not dependencies of funcreg.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import math
import os
import pkgutil
import re
import sys
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import funcreg as fr  # noqa: E402

LIBS = ("funcreg", "torch.optim", "torchopt", "optax")
F64 = torch.float64


@dataclass
class Cell:
    verdict: str
    note: str = ""

    def markdown(self) -> str:
        # a probe's note is raw text: "|" would split the cell, and "[0]['lr']" would read
        # as a Markdown reference link (the documentation site then looks up 'lr')
        note = self.note.replace("|", "\\|").replace("[", "\\[").replace("]", "\\]")
        note = note.replace("\n", " ")
        return f"**{self.verdict}**" + (f": {note}" if note else "")


def _short(exc: BaseException, n: int = 90) -> str:
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    msg = msg if len(msg) <= n else msg[: n - 1] + "…"
    return f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__


def _site(exc: BaseException) -> str:
    """The innermost frame's file, as ``package/module.py``."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is None:
        return "?"
    parts = tb.tb_frame.f_code.co_filename.replace(os.sep, "/").split("/")
    return "/".join(parts[-2:])


def _run(probe: Callable[[], Cell]) -> Cell:
    """Every probe returns its own verdict; an exception that escapes it is a probe bug."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return probe()
    except Exception as exc:  # noqa: BLE001
        return Cell("probe failed", _short(exc))


def _e(x: float) -> str:
    return "0" if x == 0 else f"{x:.1e}"


# ----------------------------------------------------------------------------- inputs


def _np_data() -> dict[str, Any]:
    """One small problem, in numpy float64, shared by every library's probe."""
    import numpy as np

    rng = np.random.default_rng(0)
    return {
        "W": rng.standard_normal((3, 4)),  # a weight matrix
        "b": rng.standard_normal(4),  # a bias
        "gW": rng.standard_normal((3, 4)),
        "gb": rng.standard_normal(4),
        "X": rng.standard_normal((6, 3)),  # quadratic problem for the 20-step parity run
        "Y": rng.standard_normal((6, 4)),
        "c": rng.standard_normal(4),
    }


D = _np_data()


def _t(dtype: torch.dtype = F64) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    params = {"W": torch.tensor(D["W"], dtype=dtype), "b": torch.tensor(D["b"], dtype=dtype)}
    grads = {"W": torch.tensor(D["gW"], dtype=dtype), "b": torch.tensor(D["gb"], dtype=dtype)}
    return params, grads


def _quad_grads(p: dict[str, Any], X: Any, Y: Any, c: Any) -> dict[str, Any]:
    """Gradient of ½‖XW − Y‖² + ½‖b − c‖²; works on torch tensors and jax arrays alike."""
    return {"W": X.T @ (X @ p["W"] - Y), "b": p["b"] - c}


def _half_sq(p: dict[str, Any]) -> Any:
    return sum(0.5 * (v * v).sum() for v in p.values())


def _maxdiff(a: dict[str, Any], b: dict[str, Any]) -> float:
    import numpy as np

    return max(float(np.max(np.abs(np.asarray(a[k], dtype=np.float64) - np.asarray(b[k], dtype=np.float64))))
               for k in a)


def _snapshot(tree: Any) -> list[tuple[torch.Tensor, torch.Tensor, int]]:
    leaves = [x for x in torch.utils._pytree.tree_leaves(tree) if isinstance(x, torch.Tensor)]
    return [(x, x.detach().clone(), x._version) for x in leaves]


def _touched(snap: list[tuple[torch.Tensor, torch.Tensor, int]]) -> tuple[int, int]:
    """How many leaves changed value, and how many had their version counter bumped."""
    values = sum(not torch.equal(x.detach(), old) for x, old, _ in snap)
    versions = sum(x._version != v for x, _, v in snap)
    return values, versions


def _fd(f: Callable[[float], float], x: float, h: float = 1e-6) -> float:
    return (f(x + h) - f(x - h)) / (2 * h)


def _rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-300)


LRS = (1e-3, 1e-2, 1e-1, 1.0)


# ----------------------------------------------------------------------------- imports


def _torchopt() -> Any:
    return importlib.import_module("torchopt")


_JAX: dict[str, Any] = {}


def _jax() -> tuple[Any, Any, Any]:
    if not _JAX:
        import jax

        jax.config.update("jax_enable_x64", True)
        import jax.numpy as jnp
        import optax

        _JAX.update(jax=jax, jnp=jnp, optax=optax)
    return _JAX["jax"], _JAX["jnp"], _JAX["optax"]


def _j() -> tuple[dict[str, Any], dict[str, Any]]:
    _, jnp, _ = _jax()
    return ({"W": jnp.asarray(D["W"]), "b": jnp.asarray(D["b"])},
            {"W": jnp.asarray(D["gW"]), "b": jnp.asarray(D["gb"])})


def _available(name: str) -> str | None:
    """None when the library imports, else why not."""
    try:
        if name == "torchopt":
            _torchopt()
        elif name == "optax":
            _jax()
        return None
    except Exception as exc:  # noqa: BLE001
        hint = {"optax": " (pip install -c constraints.txt jax optax)",
                "torchopt": " (pip install -c constraints.txt torchopt)"}.get(name, "")
        return _short(exc, 60) + hint


# ----------------------------------------------------------------------------- 1. pure step


def pure_funcreg() -> Cell:
    checked, leaves = [], 0
    for label, call in (
        ("adam.step (float lr: fused kernel)", lambda p, g, s: fr.adam.step(p, g, s, lr=0.1, weight_decay=0.01)),
        ("adam.step (tensor lr: foreach)", lambda p, g, s: fr.adam.step(p, g, s, lr=torch.tensor(0.1, dtype=F64))),
        ("sgd.step momentum", lambda p, g, s: fr.sgd.step(p, g, s, lr=0.1, momentum=0.9, weight_decay=0.01)),
    ):
        p, g = _t()
        s = (fr.sgd if "sgd" in label else fr.adam).init(p)
        s = call(p, g, s)[1]  # a state that has taken one step
        snap = _snapshot((p, g, s))
        new_p, _ = call(p, g, s)
        vals, vers = _touched(snap)
        if vals or vers:
            return Cell("no", f"{label}: {vals} input leaves changed value, {vers} bumped _version")
        if torch.equal(new_p["W"], p["W"]):
            return Cell("probe failed", f"{label} did not move the params")
        checked.append(label)
        leaves += len(snap)
    return Cell("yes", f"values and _version of all {leaves} input leaves (params, grads, state) unchanged "
                       "by " + ", ".join(checked))


def pure_torch_optim() -> Cell:
    p, g = _t()
    ps = [torch.nn.Parameter(p["W"]), torch.nn.Parameter(p["b"])]
    opt = torch.optim.Adam(ps, lr=0.1)
    for x, gx in zip(ps, g.values()):
        x.grad = gx.clone()
    opt.step()
    snap = _snapshot((ps, [x.grad for x in ps], [opt.state[x] for x in ps]))
    opt.step()
    vals, vers = _touched(snap)
    return Cell("no", f"by design: opt.step() changed {vals}/{len(snap)} leaves of params+grads+state in place "
                      f"({vers} _version bumps)")


def pure_torchopt() -> Cell:
    to = _torchopt()

    def one(inplace: bool) -> tuple[dict[str, tuple[int, int]], int]:
        p, g = _t()
        tx = to.adam(lr=0.1)
        s = tx.init(p)
        u, s = tx.update({k: v.clone() for k, v in g.items()}, s, params=p, inplace=False)
        snaps = {"param": _snapshot(p), "grad": _snapshot(g), "state": _snapshot(s)}
        u, _ = tx.update(g, s, params=p, inplace=inplace)
        to.apply_updates(p, u, inplace=inplace)
        return {k: _touched(v) for k, v in snaps.items()}, sum(len(v) for v in snaps.values())

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


def pure_optax() -> Cell:
    import numpy as np

    _, jnp, optax = _jax()
    p, g = _j()
    tx = optax.adam(0.1)
    s = tx.init(p)
    u, s = tx.update(g, s, p)
    before = [np.array(x) for x in _jax()[0].tree_util.tree_leaves((p, g, s))]
    u, s2 = tx.update(g, s, p)
    optax.apply_updates(p, u)
    after = [np.array(x) for x in _jax()[0].tree_util.tree_leaves((p, g, s))]
    same = all(np.array_equal(a, b) for a, b in zip(before, after))
    try:
        p["W"][0, 0] = 1.0
        assign = "item assignment worked"
    except TypeError:
        assign = "item assignment raises TypeError"
    if not same:
        return Cell("no", "an input array changed after update/apply_updates")
    return Cell("yes", f"jax arrays are immutable ({assign}); {len(before)} input leaves equal after a step")


# ----------------------------------------------------------------------------- 2. vmap over lr


def vmap_funcreg() -> Cell:
    p, g = _t()

    def three_steps(lr: Any) -> torch.Tensor:
        params, state = p, fr.adam.init(p)
        for _ in range(3):
            params, state = fr.adam.step(params, g, state, lr=lr, weight_decay=0.01)
        return params["W"]

    batched = torch.func.vmap(three_steps)(torch.tensor(LRS, dtype=F64))
    loop = torch.stack([three_steps(lr) for lr in LRS])
    d = (batched - loop).abs().max().item()
    ok = d <= 1e-12
    return Cell("yes" if ok else "no", f"torch.func.vmap over {len(LRS)} lrs, 3 Adam steps: max|Δ| vs loop {_e(d)}")


def vmap_torch_optim() -> Cell:
    p, _ = _t()
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
        except Exception as exc:  # noqa: BLE001
            notes.append(f"{label}: {_short(exc, 70)}")
    ran = any("ran" in n for n in notes)
    return Cell("probe failed" if ran else "no", "torch.func.vmap: " + "; ".join(notes))


def vmap_torchopt() -> Cell:
    to = _torchopt()
    p, g = _t()

    def step(lr: Any) -> torch.Tensor:
        tx = to.adam(lr=lr)
        s = tx.init(p)
        u, _ = tx.update(g, s, params=p, inplace=False)
        return to.apply_updates(p, u, inplace=False)["W"]

    lrs = torch.tensor(LRS, dtype=F64)
    loop = torch.stack([step(lr) for lr in LRS])
    try:
        d = (torch.func.vmap(step)(lrs) - loop).abs().max().item()
        return Cell("yes" if d <= 1e-12 else "no", f"torch.func.vmap over a tensor lr: max|Δ| vs loop {_e(d)}")
    except Exception as exc:  # noqa: BLE001
        direct = _short(exc, 60)
    # The same with the lr given as a schedule (a callable), which skips the `lr >= 0` check.
    try:
        d = (torch.func.vmap(lambda lr: step(lambda _count: lr))(lrs) - loop).abs().max().item()
    except Exception as exc:  # noqa: BLE001
        return Cell("no", f"tensor lr: {direct}; schedule lr: {_short(exc, 60)}")
    if d <= 1e-12:
        return Cell("partial", f"tensor lr: {direct}; works with a schedule lr=lambda _: lr (max|Δ| vs loop {_e(d)})")
    return Cell("no", f"tensor lr: {direct}; schedule lr ran but max|Δ| vs loop {_e(d)}")


def vmap_optax() -> Cell:
    jax, jnp, optax = _jax()
    p, g = _j()

    def three_steps(lr: Any) -> Any:
        tx = optax.adam(lr)
        params, state = p, tx.init(p)
        for _ in range(3):
            u, state = tx.update(g, state, params)
            params = optax.apply_updates(params, u)
        return params["W"]

    batched = jax.vmap(three_steps)(jnp.asarray(LRS))
    loop = jnp.stack([three_steps(lr) for lr in LRS])
    d = float(jnp.max(jnp.abs(batched - loop)))
    return Cell("yes" if d <= 1e-12 else "no", f"jax.vmap over {len(LRS)} lrs, 3 Adam steps: max|Δ| vs loop {_e(d)}")


# ----------------------------------------------------------------------------- 3. hypergradient


def hyper_funcreg() -> Cell:
    p, g = _t()
    s = fr.adam.init(p)

    def f(lr: Any) -> Any:
        return _half_sq(fr.adam.step(p, g, s, lr=lr)[0])

    hg = torch.func.grad(f)(torch.tensor(0.1, dtype=F64)).item()
    fd = _fd(lambda lr: f(lr).item(), 0.1)
    r = _rel(hg, fd)
    return Cell("yes" if r < 1e-6 else "no",
                f"torch.func.grad of loss after 1 Adam step w.r.t. lr: rel. err vs finite diff {_e(r)}")


def hyper_torch_optim() -> Cell:
    p, g = _t()

    def stepped(lr: Any, differentiable: bool, leaf: bool) -> torch.Tensor:
        w = p["W"].clone()  # with differentiable=True a non-leaf may be optimized
        if leaf:
            w = torch.nn.Parameter(w)
        w.grad = g["W"].clone()
        torch.optim.Adam([w], lr=lr, differentiable=differentiable).step()
        return w

    def after(lr: Any, differentiable: bool, leaf: bool) -> torch.Tensor:
        return _half_sq({"W": stepped(lr, differentiable, leaf)})

    notes = []
    try:  # the default optimizer, a tensor lr that requires grad
        lr = torch.tensor(0.1, dtype=F64, requires_grad=True)
        torch.autograd.grad(after(lr, False, True), lr)
        notes.append("default (differentiable=False): a gradient came back")
    except Exception as exc:  # noqa: BLE001
        notes.append(f"default (differentiable=False): {_short(exc, 50)}")
    # The differentiable step is compared with a finite difference of itself: its forward
    # is not the default step's (see the last note).
    fd = _fd(lambda x: after(torch.tensor(x, dtype=F64), True, False).item(), 0.1)
    try:
        lr = torch.tensor(0.1, dtype=F64, requires_grad=True)
        (hg,) = torch.autograd.grad(after(lr, True, False), lr)
        r = _rel(hg.item(), fd)
        verdict = "partial" if r < 1e-6 else "no"
        notes.insert(0, f"torch.autograd through Adam(differentiable=True, tensor lr) stepping a non-leaf copy "
                        f"in place: rel. err vs finite diff {_e(r)}")
    except Exception as exc:  # noqa: BLE001
        verdict = "no"
        notes.insert(0, f"differentiable=True: {_short(exc, 60)}")
    try:
        hg_func = torch.func.grad(lambda lr: after(lr, True, False))(torch.tensor(0.1, dtype=F64)).item()
        notes.append(f"torch.func.grad: rel. err {_e(_rel(hg_func, fd))}")
    except Exception as exc:  # noqa: BLE001
        notes.append(f"torch.func.grad: {_short(exc, 50)}")
    dw = (stepped(torch.tensor(0.1, dtype=F64), True, False) - stepped(0.1, False, True)).abs().max().item()
    notes.append(f"in float64 the differentiable step differs from the default one by max|Δw| {_e(dw)}")
    return Cell(verdict, "; ".join(notes))


def hyper_torchopt() -> Cell:
    to = _torchopt()
    p, g = _t()

    def f(lr: Any) -> Any:
        tx = to.adam(lr=lr)
        u, _ = tx.update(g, tx.init(p), params=p, inplace=False)
        return _half_sq(to.apply_updates(p, u, inplace=False))

    fd = _fd(lambda lr: f(lr).item(), 0.1)
    notes = []
    verdict = "no"
    try:
        lr = torch.tensor(0.1, dtype=F64, requires_grad=True)
        (hg,) = torch.autograd.grad(f(lr), lr)
        r = _rel(hg.item(), fd)
        verdict = "yes" if r < 1e-6 else "no"
        notes.append(f"torch.autograd, tensor lr, inplace=False: rel. err vs finite diff {_e(r)}")
    except Exception as exc:  # noqa: BLE001
        notes.append(f"torch.autograd: {_short(exc, 60)}")
    try:
        hg_func = torch.func.grad(f)(torch.tensor(0.1, dtype=F64)).item()
        notes.append(f"torch.func.grad: rel. err {_e(_rel(hg_func, fd))}")
    except Exception as exc:  # noqa: BLE001
        notes.append(f"torch.func.grad: {_short(exc, 60)}")
    return Cell(verdict, "; ".join(notes))


def hyper_optax() -> Cell:
    jax, jnp, optax = _jax()
    p, g = _j()

    def f(lr: Any) -> Any:
        tx = optax.adam(lr)
        u, _ = tx.update(g, tx.init(p), p)
        return _half_sq(optax.apply_updates(p, u))

    hg = float(jax.grad(f)(jnp.asarray(0.1)))
    r = _rel(hg, _fd(lambda lr: float(f(lr)), 0.1))
    return Cell("yes" if r < 1e-6 else "no", f"jax.grad w.r.t. lr (a traced scalar): rel. err vs finite diff {_e(r)}")


# ----------------------------------------------------------------------------- 4. decay on a subset

LR, WD = 0.1, 0.5  # zero gradients: an AdamW step is then the decay alone


def _subset_verdict(new_W: Any, new_b: Any, how: str) -> Cell:
    import numpy as np

    dW = float(np.max(np.abs(np.asarray(new_W) - D["W"] * (1 - LR * WD))))
    b_same = bool(np.array_equal(np.asarray(new_b), D["b"]))
    ok = dW <= 1e-15 and b_same
    return Cell("yes" if ok else "no",
                f"{how}: W decayed (max|Δ| vs W·(1−lr·wd) {_e(dW)}), b {'untouched' if b_same else 'CHANGED'}")


def subset_funcreg() -> Cell:
    p, g = _t()
    zeros = {k: torch.zeros_like(v) for k, v in g.items()}
    new, _ = fr.adamw.step(p, zeros, fr.adamw.init(p), lr=LR, weight_decay=WD, where=fr.select.weights)
    return _subset_verdict(new["W"], new["b"], "adamw where=fr.select.weights")


def subset_torch_optim() -> Cell:
    p, _ = _t()
    W, b = torch.nn.Parameter(p["W"].clone()), torch.nn.Parameter(p["b"].clone())
    opt = torch.optim.AdamW([{"params": [W]}, {"params": [b], "weight_decay": 0.0}], lr=LR, weight_decay=WD)
    for x in (W, b):
        x.grad = torch.zeros_like(x)
    opt.step()
    return _subset_verdict(W.detach(), b.detach(), "AdamW, two param groups")


def subset_torchopt() -> Cell:
    import numpy as np

    to = _torchopt()
    p, g = _t()
    zeros = {k: torch.zeros_like(v) for k, v in g.items()}

    def run(tx: Any) -> dict[str, torch.Tensor]:
        u, _ = tx.update(zeros, tx.init(p), params=p, inplace=False)
        return to.apply_updates(p, u, inplace=False)

    cell = _subset_verdict(*run(to.adamw(lr=LR, weight_decay=WD, mask={"W": True, "b": False})).values(),
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
    except Exception as exc:  # noqa: BLE001
        notes.append(f"a flat-list mask [True, False]: {_short(exc, 50)}")
    chained = to.chain(to.transform.scale_by_adam(), to.transform.add_decayed_weights(WD, mask={"W": True, "b": False}),
                       to.transform.scale(-LR))
    by_hand = _subset_verdict(*run(chained).values(), "")
    if by_hand.verdict == "yes":
        notes.append("a hand-built chain(scale_by_adam, add_decayed_weights(wd, mask), scale(-lr)) masks right")
        return Cell("partial", "; ".join(notes))
    notes.append(f"hand-built chain too:{by_hand.note}")
    return Cell("no", "; ".join(notes))


def subset_optax() -> Cell:
    _, jnp, optax = _jax()
    p, g = _j()
    zeros = {k: jnp.zeros_like(v) for k, v in g.items()}
    tx = optax.adamw(LR, weight_decay=WD, mask={"W": True, "b": False})
    u, _ = tx.update(zeros, tx.init(p), p)
    new = optax.apply_updates(p, u)
    return _subset_verdict(new["W"], new["b"], "adamw(mask={'W': True, 'b': False})")


# ----------------------------------------------------------------------------- 5. L2 vs weight decay

LAM = 0.3


def _decay_note(sgd_diff: float, adamw_diff: float, sgd_how: str, adamw_how: str) -> Cell:
    ok = sgd_diff <= 1e-15 and adamw_diff <= 1e-15
    return Cell("yes" if ok else "no",
                f"{sgd_how} = step on grad of λΣw² (max|Δ| {_e(sgd_diff)}), i.e. coupled g+wd·w; "
                f"{adamw_how} decoupled w·(1−lr·wd) (max|Δ| {_e(adamw_diff)})")


def decay_funcreg() -> Cell:
    p, g = _t()
    wd, _ = fr.sgd.step(p, g, fr.sgd.init(p), lr=LR, weight_decay=2 * LAM)
    pen_g = torch.func.grad(lambda q: fr.l2(q, LAM))(p)
    pen, _ = fr.sgd.step(p, {k: g[k] + pen_g[k] for k in g}, fr.sgd.init(p), lr=LR)
    zeros = {k: torch.zeros_like(v) for k, v in g.items()}
    aw, _ = fr.adamw.step(p, zeros, fr.adamw.init(p), lr=LR, weight_decay=WD)
    return _decay_note(_maxdiff(wd, pen), _maxdiff(aw, {k: v * (1 - LR * WD) for k, v in p.items()}),
                       "sgd.step(weight_decay=2λ)", "adamw:")


def _torch_sgd(p: dict[str, torch.Tensor], g: dict[str, torch.Tensor], **kw: Any) -> dict[str, torch.Tensor]:
    ps = {k: torch.nn.Parameter(v.clone()) for k, v in p.items()}
    for k, x in ps.items():
        x.grad = g[k].clone()
    kind = kw.pop("kind", torch.optim.SGD)
    kind(list(ps.values()), **kw).step()
    return {k: v.detach() for k, v in ps.items()}


def decay_torch_optim() -> Cell:
    p, g = _t()
    wd = _torch_sgd(p, g, lr=LR, weight_decay=2 * LAM)
    q = {k: v.clone().requires_grad_() for k, v in p.items()}
    pen_g = dict(zip(q, torch.autograd.grad(sum(LAM * (v * v).sum() for v in q.values()), list(q.values()))))
    pen = _torch_sgd(p, {k: g[k] + pen_g[k] for k in g}, lr=LR)
    zeros = {k: torch.zeros_like(v) for k, v in g.items()}
    aw = _torch_sgd(p, zeros, kind=torch.optim.AdamW, lr=LR, weight_decay=WD)
    return _decay_note(_maxdiff(wd, pen), _maxdiff(aw, {k: v * (1 - LR * WD) for k, v in p.items()}),
                       "SGD(weight_decay=2λ)", "AdamW:")


def decay_torchopt() -> Cell:
    to = _torchopt()
    p, g = _t()

    def run(tx: Any, grads: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        u, _ = tx.update(grads, tx.init(p), params=p, inplace=False)
        return to.apply_updates(p, u, inplace=False)

    wd = run(to.sgd(lr=LR, weight_decay=2 * LAM), g)
    pen = run(to.sgd(lr=LR), {k: g[k] + 2 * LAM * p[k] for k in g})
    aw = run(to.adamw(lr=LR, weight_decay=WD), {k: torch.zeros_like(v) for k, v in g.items()})
    return _decay_note(_maxdiff(wd, pen), _maxdiff(aw, {k: v * (1 - LR * WD) for k, v in p.items()}),
                       "sgd(weight_decay=2λ)", "adamw:")


def decay_optax() -> Cell:
    jax, jnp, optax = _jax()
    p, g = _j()
    has_wd = "weight_decay" in inspect.signature(optax.sgd).parameters

    def run(tx: Any, grads: Any) -> Any:
        u, _ = tx.update(grads, tx.init(p), p)
        return optax.apply_updates(p, u)

    wd = run(optax.chain(optax.add_decayed_weights(2 * LAM), optax.sgd(LR)), g)
    pen_g = jax.grad(lambda q: sum(LAM * (v * v).sum() for v in q.values()))(p)
    pen = run(optax.sgd(LR), {k: g[k] + pen_g[k] for k in g})
    aw = run(optax.adamw(LR, weight_decay=WD), {k: jnp.zeros_like(v) for k, v in g.items()})
    cell = _decay_note(_maxdiff(wd, pen), _maxdiff(aw, {k: v * (1 - LR * WD) for k, v in p.items()}),
                       "chain(add_decayed_weights(2λ), sgd)", "adamw:")
    if not has_wd:
        cell.note = "optax.sgd has no weight_decay argument; " + cell.note
    return cell


# ----------------------------------------------------------------------------- 6-7. prox operators

PROX_NAMES = re.compile(r"prox|soft_?thresh|shrink|lasso|(^|_)l1($|_)", re.I)
GROUP_NAMES = re.compile(r"prox|group_?lasso|block_?soft|group_?soft", re.I)


def _scan(package: str, pattern: re.Pattern[str]) -> tuple[list[str], int]:
    """Public callables under ``package`` (all its importable submodules) whose name matches."""
    root = importlib.import_module(package)
    modules = [root]
    for info in pkgutil.walk_packages(getattr(root, "__path__", []), package + "."):
        if re.search(r"(^|\.)(_?tests?|.*_test)(\.|$)", info.name):
            continue
        try:
            modules.append(importlib.import_module(info.name))
        except Exception:  # noqa: BLE001  (optional-dependency submodules)
            continue
    found = set()
    for mod in modules:
        for name in dir(mod):
            if not name.startswith("_") and pattern.search(name) and callable(getattr(mod, name, None)):
                found.add(f"{mod.__name__}.{name}")
    return sorted(found), len(modules)


def l1_funcreg() -> Cell:
    p, _ = _t()
    lam, step = 0.5, 1.0
    out = fr.l1.prox(p, lam, step)
    zeros = sum(int((v == 0).sum()) for v in out.values())
    expect = sum(int((v.abs() <= lam * step).sum()) for v in p.values())
    ref = {k: torch.sign(v) * (v.abs() - lam * step).clamp_min(0) for k, v in p.items()}
    d = _maxdiff(out, ref)
    ok = zeros == expect and zeros > 0 and d <= 1e-15
    return Cell("yes" if ok else "no", f"fr.l1.prox: {zeros}/{expect} entries with |w|≤λ·step exactly 0; "
                                       f"max|Δ| vs sign(w)·max(|w|−t,0) {_e(d)}")


def _no_prox(package: str, pattern: re.Pattern[str], extra: str = "") -> Cell:
    found, n = _scan(package, pattern)
    if found:
        return Cell("probe failed", f"names to look at by hand: {', '.join(found)[:100]}")
    return Cell("no", f"no callable named /{pattern.pattern}/ in {n} modules of {package}{extra}")


def l1_torch_optim() -> Cell:
    extra = "; torch.nn.functional.softshrink exists, outside torch.optim" if hasattr(
        torch.nn.functional, "softshrink") else ""
    return _no_prox("torch.optim", PROX_NAMES, extra)


def l1_torchopt() -> Cell:
    _torchopt()
    return _no_prox("torchopt", PROX_NAMES)


def l1_optax() -> Cell:
    _, jnp, optax = _jax()
    found, n = _scan("optax", PROX_NAMES)
    proj = getattr(getattr(optax, "projections", None), "projection_l1_ball", None)
    real = [f for f in found if re.search(r"prox|soft_?thresh|shrink|lasso", f.rsplit(".", 1)[1], re.I)]
    if real:
        return Cell("probe failed", f"prox-like names to run by hand: {', '.join(real)[:100]}")
    if proj is None:
        return Cell("no", f"no prox/soft-threshold in {n} modules of optax")
    w = jnp.asarray(D["W"])
    out = proj(w, 2.0)
    zeros = int((out == 0).sum())
    norm = float(jnp.abs(out).sum())
    return Cell("partial" if zeros else "no",
                f"no L1 prox/soft-threshold in {n} modules; projections.projection_l1_ball (constraint "
                f"‖w‖₁≤r, not a penalty) gave {zeros}/{w.size} exact zeros, ‖out‖₁={norm:.3g} for r=2")


def group_funcreg() -> Cell:
    w = torch.tensor([[3.0, 4.0], [0.3, 0.4], [0.0, 0.0]], dtype=F64)
    lam, step = 1.0 / math.sqrt(2), 1.0
    out = fr.group_lasso.prox({"w": w}, lam, step)["w"]
    t = lam * step * math.sqrt(2)
    ref = torch.stack([(1 - t / r.norm()).clamp_min(0) * r if r.norm() > 0 else r for r in w])
    d = (out - ref).abs().max().item()
    zero_rows = int((out == 0).all(dim=1).sum())
    ok = d <= 1e-15 and zero_rows == 2 and torch.isfinite(out).all()
    return Cell("yes" if ok else "no", f"fr.group_lasso.prox: {zero_rows}/3 rows exactly 0 (one was 0 already, "
                                       f"finite); max|Δ| vs max(1−t/‖w_g‖,0)·w_g {_e(d)}")


def group_torch_optim() -> Cell:
    return _no_prox("torch.optim", GROUP_NAMES)


def group_torchopt() -> Cell:
    _torchopt()
    return _no_prox("torchopt", GROUP_NAMES)


def group_optax() -> Cell:
    _jax()
    return _no_prox("optax", GROUP_NAMES)


# ----------------------------------------------------------------------------- 8. Adam parity

STEPS, ALR = 20, 0.05


def _torch_adam_ref(**kw: Any) -> dict[str, torch.Tensor]:
    p, _ = _t()
    X, Y, c = (torch.tensor(D[k], dtype=F64) for k in ("X", "Y", "c"))
    ps = {k: torch.nn.Parameter(v.clone()) for k, v in p.items()}
    opt = torch.optim.Adam(list(ps.values()), lr=ALR, **kw)
    for _ in range(STEPS):
        g = _quad_grads({k: v.detach() for k, v in ps.items()}, X, Y, c)
        for k, x in ps.items():
            x.grad = g[k]
        opt.step()
    return {k: v.detach() for k, v in ps.items()}


def _parity(d: float, how: str) -> Cell:
    verdict = "yes" if d <= 1e-12 else "partial" if d <= 1e-4 else "no"
    level = " (float32-level, not float64)" if verdict == "partial" else ""
    return Cell(verdict, f"{how}: max|Δ| vs torch.optim.Adam after {STEPS} float64 steps {_e(d)}{level}")


def parity_funcreg() -> Cell:
    ref = _torch_adam_ref()
    p, _ = _t()
    X, Y, c = (torch.tensor(D[k], dtype=F64) for k in ("X", "Y", "c"))
    worst = 0.0
    for label, lr in (("float lr", ALR), ("tensor lr", torch.tensor(ALR, dtype=F64))):
        params, state = p, fr.adam.init(p)
        for _ in range(STEPS):
            params, state = fr.adam.step(params, _quad_grads(params, X, Y, c), state, lr=lr)
        worst = max(worst, _maxdiff(params, ref))
    return _parity(worst, "fr.adam.step, float and tensor lr")


def parity_torch_optim() -> Cell:
    ref = _torch_adam_ref()
    d = max(_maxdiff(_torch_adam_ref(foreach=True), ref), _maxdiff(_torch_adam_ref(fused=True), ref))
    return Cell("yes", f"the reference (default impl on CPU); foreach=True and fused=True vs it: max|Δ| {_e(d)}")


def parity_torchopt() -> Cell:
    to = _torchopt()
    ref = _torch_adam_ref()
    p, _ = _t()
    X, Y, c = (torch.tensor(D[k], dtype=F64) for k in ("X", "Y", "c"))
    tx = to.adam(lr=ALR)
    params, state = p, tx.init(p)
    for _ in range(STEPS):
        u, state = tx.update(_quad_grads(params, X, Y, c), state, params=params, inplace=False)
        params = to.apply_updates(params, u, inplace=False)
    return _parity(_maxdiff(params, ref), "torchopt.adam, inplace=False")


def parity_optax() -> Cell:
    import numpy as np

    _, jnp, optax = _jax()
    ref = _torch_adam_ref()
    p, _ = _j()
    X, Y, c = (jnp.asarray(D[k]) for k in ("X", "Y", "c"))
    tx = optax.adam(ALR)
    params, state = p, tx.init(p)
    for _ in range(STEPS):
        u, state = tx.update(_quad_grads(params, X, Y, c), state, params)
        params = optax.apply_updates(params, u)
    assert np.asarray(params["W"]).dtype == np.float64
    return _parity(_maxdiff(params, ref), "optax.adam, jax_enable_x64")


# ----------------------------------------------------------------------------- 9. torch.compile

COMPILE_BACKEND = "inductor"


def _counter() -> Any:
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    return CompileCounterWithBackend(COMPILE_BACKEND)


def _compiled_twice(make: Callable[[Any], Callable[[float], float]], fullgraph: bool) -> tuple[int, int, float]:
    """Compile, call with lr 0.1 then 0.01: (graphs on the first call, graphs compiled again for
    the second value, max|Δ| vs eager). ``make(backend)`` returns ``run(lr) -> max|Δ|``."""
    cnt = _counter()
    run = make(lambda fn: torch.compile(fn, fullgraph=fullgraph, backend=cnt))
    d = run(0.1)
    first = cnt.frame_count
    d = max(d, run(0.01))
    return first, cnt.frame_count - first, d


def _compile_cell(result: tuple[int, int, float], how: str, fullgraph: bool = True) -> Cell:
    first, again, d = result
    close = d <= 1e-5  # float32 params: compiled and eager round differently
    ok = close and again == 0 and (first == 1 or not fullgraph)
    return Cell("yes" if ok else "partial" if close else "no",
                f"{how}, backend={COMPILE_BACKEND}: {first} graph(s) on the first call, {again} recompile(s) "
                f"for a new lr value; max|Δ| vs eager {_e(d)}")


def compile_funcreg() -> Cell:
    p, g = _t(torch.float32)
    s = fr.adam.init(p)

    def step(p: Any, g: Any, s: Any, lr: Any) -> Any:
        return fr.adam.step(p, g, s, lr=lr, weight_decay=0.01)

    def make(compile: Callable[[Any], Any]) -> Callable[[float], float]:
        compiled = compile(step)
        return lambda lr: _maxdiff(compiled(p, g, s, torch.tensor(lr))[0], step(p, g, s, lr)[0])

    return _compile_cell(_compiled_twice(make, True), "fullgraph, fr.adam.step with a tensor lr")


def compile_torch_optim() -> Cell:
    p, g = _t(torch.float32)

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
        return _compile_cell(_compiled_twice(make, True), "fullgraph, " + how)
    except Exception as exc:  # noqa: BLE001
        full = _short(exc, 60)
    cell = _compile_cell(_compiled_twice(make, False), "fullgraph=False, " + how, fullgraph=False)
    if cell.verdict == "yes":
        cell.verdict = "partial"
    cell.note = f"fullgraph=True: {full}; " + cell.note
    return cell


def compile_torchopt() -> Cell:
    to = _torchopt()
    p, g = _t(torch.float32)
    s = to.adam(lr=0.1).init(p)

    def maker(make_lr: Callable[[torch.Tensor], Any]) -> Callable[[Callable[[Any], Any]], Callable[[float], float]]:
        def step(p: Any, g: Any, s: Any, lr: torch.Tensor) -> Any:
            tx = to.adam(lr=make_lr(lr))
            u, s = tx.update(g, s, params=p, inplace=False)
            return to.apply_updates(p, u, inplace=False)

        def make(compile: Callable[[Any], Any]) -> Callable[[float], float]:
            compiled = compile(step)
            return lambda lr: _maxdiff(compiled(p, g, s, torch.tensor(lr)), step(p, g, s, torch.tensor(lr)))

        return make

    how = "torchopt.adam(lr=tensor), update+apply_updates inplace=False"
    try:
        return _compile_cell(_compiled_twice(maker(lambda lr: lr), True), "fullgraph, " + how)
    except Exception as exc:  # noqa: BLE001
        notes = [f"fullgraph=True, tensor lr: {_short(exc, 60)}"]
    try:
        _compiled_twice(maker(lambda lr: (lambda _count: lr)), True)
        notes.append("fullgraph=True with a schedule lr=lambda _: lr compiled (not compared)")
        return Cell("probe failed", "; ".join(notes))
    except Exception as exc:  # noqa: BLE001
        notes.append(f"with a schedule lr=lambda _: lr: {_short(exc, 50)}")
    try:
        cell = _compile_cell(_compiled_twice(maker(lambda lr: lr), False), "fullgraph=False, tensor lr",
                             fullgraph=False)
    except Exception as exc:  # noqa: BLE001
        return Cell("no", "; ".join(notes + [f"fullgraph=False: {_short(exc, 50)} (raised in {_site(exc)})"]))
    cell.note = "; ".join(notes + [cell.note])
    if cell.verdict == "yes":
        cell.verdict = "partial"
    return cell


def compile_optax() -> Cell:
    jax, jnp, optax = _jax()
    p, g = _j()
    tx = optax.adam(0.1)
    s = tx.init(p)
    traces = []

    def step(p: Any, g: Any, s: Any, lr: Any) -> Any:
        traces.append(1)
        u, s = optax.adam(lr).update(g, s, p)
        return optax.apply_updates(p, u)

    jitted = jax.jit(step)
    d = 0.0
    for lr in (0.1, 0.01):
        d = max(d, _maxdiff(jitted(p, g, s, jnp.asarray(lr)), step(p, g, s, lr)))
    return Cell("n/a (JAX: jit)", f"jax.jit of one optax.adam step with a traced lr: {len(traces) - 2} trace(s) "
                                  f"for 2 lr values; max|Δ| vs un-jitted {_e(d)}")


# ----------------------------------------------------------------------------- 10. CUDA


def _cuda_tests() -> str:
    """How many of funcreg's tests carry the ``cuda`` marker, from pytest's own collection."""
    import subprocess

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cmd = [sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "cuda", "-p", "no:cacheprovider", "tests"]
    try:
        out = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=300).stdout
    except Exception as exc:  # noqa: BLE001
        return f"could not collect them ({_short(exc, 40)})"
    found = re.search(r"(\d+)(?:/\d+)? tests? collected", out)
    if not found:
        return "could not collect them (no count in pytest's output)"
    files = {line.split("::")[0] for line in out.splitlines() if "::" in line}
    return f"{found.group(1)} tests marked cuda in {len(files)} files (pytest -m cuda --collect-only)"


def _cuda_torch(step: Callable[[torch.device], dict[str, torch.Tensor]], how: str) -> Cell:
    d = _maxdiff({k: v.cpu() for k, v in step(torch.device("cuda")).items()}, step(torch.device("cpu")))
    return Cell("yes" if d <= 1e-12 else "no", f"{how}: float64 CUDA vs CPU max|Δ| {_e(d)}")


def _no_cuda() -> Cell:
    return Cell("not measured", "no GPU here (torch.cuda.is_available() is False)")


def cuda_funcreg() -> Cell:
    if not torch.cuda.is_available():
        return Cell("not measured", f"tests exist: {_cuda_tests()}; not run here, "
                                    "torch.cuda.is_available() is False")

    def step(dev: torch.device) -> dict[str, torch.Tensor]:
        p, g = (tuple({k: v.to(dev) for k, v in t.items()} for t in _t()))
        return fr.adam.step(p, g, fr.adam.init(p), lr=0.1, weight_decay=0.01)[0]

    return _cuda_torch(step, "fr.adam.step")


def cuda_torch_optim() -> Cell:
    if not torch.cuda.is_available():
        return _no_cuda()

    def step(dev: torch.device) -> dict[str, torch.Tensor]:
        p, g = (tuple({k: v.to(dev) for k, v in t.items()} for t in _t()))
        return _torch_sgd(p, g, kind=torch.optim.Adam, lr=0.1, weight_decay=0.01)

    return _cuda_torch(step, "Adam.step")


def cuda_torchopt() -> Cell:
    to = _torchopt()
    if not torch.cuda.is_available():
        return _no_cuda()

    def step(dev: torch.device) -> dict[str, torch.Tensor]:
        p, g = (tuple({k: v.to(dev) for k, v in t.items()} for t in _t()))
        tx = to.adam(lr=0.1)
        u, _ = tx.update(g, tx.init(p), params=p, inplace=False)
        return to.apply_updates(p, u, inplace=False)

    return _cuda_torch(step, "torchopt.adam")


def cuda_optax() -> Cell:
    jax, _, optax = _jax()
    platforms = sorted({d.platform for d in jax.devices()})
    if "gpu" not in platforms and "cuda" not in platforms:
        return Cell("not measured", f"no GPU here (jax devices: {', '.join(platforms)})")

    def step(dev: Any) -> Any:
        p, g = jax.device_put(_j(), dev)
        tx = optax.adam(0.1)
        u, _ = tx.update(g, tx.init(p), p)
        return optax.apply_updates(p, u)

    gpu = [d for d in jax.devices() if d.platform in ("gpu", "cuda")][0]
    d = _maxdiff(step(gpu), step(jax.devices("cpu")[0]))
    return Cell("yes" if d <= 1e-12 else "no", f"optax.adam: float64 GPU vs CPU max|Δ| {_e(d)}")


# ----------------------------------------------------------------------------- the table

FEATURES: list[tuple[str, tuple[Callable[[], Cell], ...]]] = [
    ("Pure step (inputs' values and `_version` unchanged)",
     (pure_funcreg, pure_torch_optim, pure_torchopt, pure_optax)),
    ("vmap over lr (4 lrs batched = loop)", (vmap_funcreg, vmap_torch_optim, vmap_torchopt, vmap_optax)),
    ("Hypergradient d loss(after 1 step) / d lr", (hyper_funcreg, hyper_torch_optim, hyper_torchopt, hyper_optax)),
    ("Weight decay on a subset of params", (subset_funcreg, subset_torch_optim, subset_torchopt, subset_optax)),
    ("L2 penalty λΣw² ≡ SGD weight_decay=2λ; what decay means",
     (decay_funcreg, decay_torch_optim, decay_torchopt, decay_optax)),
    ("L1 prox (soft threshold, exact zeros)", (l1_funcreg, l1_torch_optim, l1_torchopt, l1_optax)),
    ("Group-lasso prox (block soft threshold)", (group_funcreg, group_torch_optim, group_torchopt, group_optax)),
    ("Adam parity with torch.optim.Adam (20 float64 steps)",
     (parity_funcreg, parity_torch_optim, parity_torchopt, parity_optax)),
    ("torch.compile(fullgraph=True), tensor lr, no recompile on a new lr value",
     (compile_funcreg, compile_torch_optim, compile_torchopt, compile_optax)),
    ("Runs on CUDA", (cuda_funcreg, cuda_torch_optim, cuda_torchopt, cuda_optax)),
]


def _versions() -> str:
    parts = [f"torch {torch.__version__}", f"funcreg {fr.__version__}"]
    for name in ("torchopt", "jax", "optax"):
        try:
            parts.append(f"{name} {importlib.import_module(name).__version__}")
        except Exception:  # noqa: BLE001
            parts.append(f"{name} not installed")
    return ", ".join(parts)


def _torchopt_accel() -> str:
    try:
        importlib.import_module("torchopt._C")
        return "torchopt's C++ extension imports; probes use use_accelerated_op=False (torchopt's default)"
    except ImportError as exc:
        why = "ImportError: undefined symbol, built for another torch" if "undefined symbol" in str(exc) \
            else _short(exc, 50)
        return (f"torchopt's C++ extension (torchopt._C) does not load with this torch ({why}): "
                "every torchopt probe uses use_accelerated_op=False, torchopt's default")
    except Exception as exc:  # noqa: BLE001
        return f"torchopt C++ extension: {_short(exc, 50)}"


def main(quick: bool = False) -> list[str]:
    global COMPILE_BACKEND
    COMPILE_BACKEND = "eager" if quick else "inductor"
    missing = {lib: _available(lib) for lib in LIBS}
    lines = ["| feature | " + " | ".join(LIBS) + " |", "|---" * (len(LIBS) + 1) + "|"]
    start = time.perf_counter()
    for feature, probes in FEATURES:
        cells = []
        for lib, probe in zip(LIBS, probes):
            if missing[lib]:
                cells.append(Cell("not installed", missing[lib]))
            else:
                cells.append(_run(probe))
        lines.append(f"| {feature} | " + " | ".join(c.markdown() for c in cells) + " |")
    torch._dynamo.reset()
    notes = [
        "",
        f"Measured by benchmarks/feature_matrix.py{' --quick' if quick else ''} in "
        f"{time.perf_counter() - start:.0f} s on {sys.platform}, Python {sys.version.split()[0]}: {_versions()}.",
        f"Note: {_torchopt_accel() if not missing['torchopt'] else 'torchopt not installed'}.",
    ]
    return ["\n".join(lines + notes)]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="torch.compile probes on the eager backend")
    args = parser.parse_args()
    for table in main(quick=args.quick):
        print(table)
