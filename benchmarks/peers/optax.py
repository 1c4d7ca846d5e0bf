"""The probes of optax's column of the feature matrix, in JAX with float64 enabled."""

from __future__ import annotations

import inspect
import re
from typing import Any

import numpy as np

from ._probe import (
    ALR,
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
    decay_cell,
    half_sq,
    max_diff,
    no_prox,
    parity_cell,
    quad_grads,
    rel_err,
    scan,
    sci,
    subset_cell,
)

NAME = "optax"
_JAX: dict[str, Any] = {}


def available() -> str | None:
    """None when jax and optax import, else why not."""
    try:
        _jax()
        return None
    except Exception as exc:
        return brief(exc, 60) + " (pip install -c constraints.txt jax optax)"


def _jax() -> tuple[Any, Any, Any]:
    """jax (float64 enabled), jax.numpy and optax, imported on first use."""
    if not _JAX:
        import jax

        jax.config.update("jax_enable_x64", True)
        import jax.numpy as jnp
        import optax

        _JAX.update(jax=jax, jnp=jnp, optax=optax)
    return _JAX["jax"], _JAX["jnp"], _JAX["optax"]


def _arrays() -> tuple[dict[str, Any], dict[str, Any]]:
    """The shared problem's params and grads as jax arrays."""
    _, jnp, _ = _jax()
    return ({"W": jnp.asarray(D["W"]), "b": jnp.asarray(D["b"])},
            {"W": jnp.asarray(D["gW"]), "b": jnp.asarray(D["gb"])})


def pure_step() -> Cell:
    jax, _, optax = _jax()
    p, g = _arrays()
    tx = optax.adam(0.1)
    s = tx.init(p)
    u, s = tx.update(g, s, p)
    before = [np.array(x) for x in jax.tree_util.tree_leaves((p, g, s))]
    u, _ = tx.update(g, s, p)
    optax.apply_updates(p, u)
    after = [np.array(x) for x in jax.tree_util.tree_leaves((p, g, s))]
    same = all(np.array_equal(a, b) for a, b in zip(before, after))
    try:
        p["W"][0, 0] = 1.0
        assign = "item assignment worked"
    except TypeError:
        assign = "item assignment raises TypeError"
    if not same:
        return Cell("no", "an input array changed after update/apply_updates")
    return Cell("yes", f"jax arrays are immutable ({assign}); {len(before)} input leaves equal after a step")


def vmap_lr() -> Cell:
    jax, jnp, optax = _jax()
    p, g = _arrays()

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
    return Cell("yes" if d <= 1e-12 else "no", f"jax.vmap over {len(LRS)} lrs, 3 Adam steps: max|Δ| vs loop {sci(d)}")


def hypergradient() -> Cell:
    jax, jnp, optax = _jax()
    p, g = _arrays()

    def f(lr: Any) -> Any:
        tx = optax.adam(lr)
        u, _ = tx.update(g, tx.init(p), p)
        return half_sq(optax.apply_updates(p, u))

    hg = float(jax.grad(f)(jnp.asarray(0.1)))
    r = rel_err(hg, central_diff(lambda lr: float(f(lr)), 0.1))
    return Cell("yes" if r < 1e-6 else "no", f"jax.grad w.r.t. lr (a traced scalar): rel. err vs finite diff {sci(r)}")


def decay_subset() -> Cell:
    _, jnp, optax = _jax()
    p, g = _arrays()
    zeros = {k: jnp.zeros_like(v) for k, v in g.items()}
    tx = optax.adamw(LR, weight_decay=WD, mask={"W": True, "b": False})
    u, _ = tx.update(zeros, tx.init(p), p)
    new = optax.apply_updates(p, u)
    return subset_cell(new["W"], new["b"], "adamw(mask={'W': True, 'b': False})")


def l2_vs_decay() -> Cell:
    jax, jnp, optax = _jax()
    p, g = _arrays()
    has_wd = "weight_decay" in inspect.signature(optax.sgd).parameters

    def run(tx: Any, grads: Any) -> Any:
        u, _ = tx.update(grads, tx.init(p), p)
        return optax.apply_updates(p, u)

    wd = run(optax.chain(optax.add_decayed_weights(2 * LAM), optax.sgd(LR)), g)
    pen_g = jax.grad(lambda q: sum(LAM * (v * v).sum() for v in q.values()))(p)
    pen = run(optax.sgd(LR), {k: g[k] + pen_g[k] for k in g})
    aw = run(optax.adamw(LR, weight_decay=WD), {k: jnp.zeros_like(v) for k, v in g.items()})
    cell = decay_cell(max_diff(wd, pen), max_diff(aw, {k: v * (1 - LR * WD) for k, v in p.items()}),
                      "chain(add_decayed_weights(2λ), sgd)", "adamw:")
    if not has_wd:
        cell.note = "optax.sgd has no weight_decay argument; " + cell.note
    return cell


def l1_prox() -> Cell:
    _, jnp, optax = _jax()
    found, n = scan("optax", PROX_NAMES)
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


def group_prox() -> Cell:
    _jax()
    return no_prox("optax", GROUP_NAMES)


def adam_parity() -> Cell:
    _, jnp, optax = _jax()
    ref = adam_reference()
    p, _ = _arrays()
    X, Y, c = (jnp.asarray(D[k]) for k in ("X", "Y", "c"))
    tx = optax.adam(ALR)
    params, state = p, tx.init(p)
    for _ in range(STEPS):
        u, state = tx.update(quad_grads(params, X, Y, c), state, params)
        params = optax.apply_updates(params, u)
    assert np.asarray(params["W"]).dtype == np.float64
    return parity_cell(max_diff(params, ref), "optax.adam, jax_enable_x64")


def compiled_step() -> Cell:
    jax, jnp, optax = _jax()
    p, g = _arrays()
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
        d = max(d, max_diff(jitted(p, g, s, jnp.asarray(lr)), step(p, g, s, lr)))
    return Cell("n/a (JAX: jit)", f"jax.jit of one optax.adam step with a traced lr: {len(traces) - 2} trace(s) "
                                  f"for 2 lr values; max|Δ| vs un-jitted {sci(d)}")


def on_cuda() -> Cell:
    jax, _, optax = _jax()
    platforms = sorted({d.platform for d in jax.devices()})
    if "gpu" not in platforms and "cuda" not in platforms:
        return Cell("not measured", f"no GPU here (jax devices: {', '.join(platforms)})")

    def step(dev: Any) -> Any:
        p, g = jax.device_put(_arrays(), dev)
        tx = optax.adam(0.1)
        u, _ = tx.update(g, tx.init(p), p)
        return optax.apply_updates(p, u)

    gpu = [d for d in jax.devices() if d.platform in ("gpu", "cuda")][0]
    d = max_diff(step(gpu), step(jax.devices("cpu")[0]))
    return Cell("yes" if d <= 1e-12 else "no", f"optax.adam: float64 GPU vs CPU max|Δ| {sci(d)}")
