"""fr.rmsprop.step_size and fr.adagrad.step_size: the per-element step of a proximal
RMSprop or Adagrad, against a hand computation, and the L1 and group lasso proxes taken
with it."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

import funcreg as fr
from optim_helpers import (  # noqa: F401  (_one_thread is an autouse fixture)
    _one_thread,
    assert_untouched,
    grad_sequence,
    mlp_params,
    snapshot,
)

F64 = torch.float64
ROUTES = ["fast", "foreach", "composable"]


def _state(opt: Any, init: dict[str, Any], kw: dict[str, Any], steps: int = 6) -> tuple[dict, dict]:
    """Params and state after ``steps`` random steps; ``2.bias`` never has a gradient."""
    params = mlp_params(F64)
    state = opt.init(params, **init)
    for g in grad_sequence(params, steps):
        params, state = opt.step(params, {**g, "2.bias": None}, state, **kw)
    return params, state


def _hand(values: torch.Tensor, fn: Any) -> torch.Tensor:
    """``fn`` of every element of ``values``, in Python floats."""
    return torch.tensor([fn(*v) for v in zip(*(x.reshape(-1).tolist() for x in values))],
                        dtype=F64).reshape(values[0].shape)


def _kw(route: str, kw: dict[str, Any]) -> dict[str, Any]:
    return {k: torch.tensor(v, dtype=F64) if route == "foreach" and not isinstance(v, bool) else v
            for k, v in kw.items()}


CASES = [
    pytest.param(fr.rmsprop, {}, dict(lr=0.01, eps=1e-8), id="rmsprop"),
    pytest.param(fr.rmsprop, {"centered": True}, dict(lr=0.02, eps=1e-3, centered=True), id="rmsprop-centered"),
    pytest.param(fr.adagrad, {}, dict(lr=0.1, eps=1e-10), id="adagrad"),
    pytest.param(fr.adagrad, {"initial_accumulator_value": 0.1}, dict(lr=0.3, lr_decay=0.2, eps=1e-4),
                 id="adagrad-lr-decay"),
]


def _expected(opt: Any, state: dict, kw: dict[str, Any], k: str) -> torch.Tensor:
    """The step by hand: lr / (sqrt(v) + eps) (centered: sqrt(v - ḡ²)), Adagrad's lr decayed
    by its count; 0 for a leaf never stepped."""
    t = float(state["step"][k])
    if t == 0:
        return torch.zeros_like(state["sum" if opt is fr.adagrad else "square_avg"][k])
    eps = kw["eps"]
    if opt is fr.adagrad:
        clr = kw["lr"] / (1 + (t - 1) * kw.get("lr_decay", 0.0))
        return _hand([state["sum"][k]], lambda s: clr / (math.sqrt(s) + eps))
    if kw.get("centered"):
        return _hand([state["square_avg"][k], state["grad_avg"][k]],
                     lambda v, m: kw["lr"] / (math.sqrt(v - m * m) + eps))
    return _hand([state["square_avg"][k]], lambda v: kw["lr"] / (math.sqrt(v) + eps))


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("opt,init,kw", CASES)
def test_step_size_is_the_hand_computation(opt: Any, init: dict, kw: dict[str, Any], route: str) -> None:
    _, state = _state(opt, init, kw)
    snap = snapshot(state)
    with fr._dispatch.forced("composable" if route == "composable" else None):
        eta = opt.step_size(state, **_kw(route, kw))
    assert_untouched(snap)
    assert list(eta) == list(state["step"])
    for k in eta:
        torch.testing.assert_close(eta[k], _expected(opt, state, kw, k), rtol=1e-12, atol=0,
                                   msg=lambda m, k=k: f"{k}: {m}")
    assert torch.equal(eta["2.bias"], torch.zeros_like(eta["2.bias"]))  # never stepped


@pytest.mark.parametrize("opt,init,kw", CASES)
def test_step_size_under_vmap_over_lr_equals_a_loop(opt: Any, init: dict, kw: dict[str, Any]) -> None:
    _, state = _state(opt, init, kw)
    lrs = torch.tensor([0.01, 0.1, 0.5], dtype=F64)
    rest = {k: v for k, v in kw.items() if k != "lr"}
    got = torch.func.vmap(lambda lr: opt.step_size(state, lr=lr, **rest))(lrs)
    for i, lr in enumerate(lrs):
        want = opt.step_size(state, lr=float(lr), **rest)
        for k in want:
            torch.testing.assert_close(got[k][i], want[k], rtol=1e-12, atol=0)


@pytest.mark.parametrize("opt,init,kw", CASES)
def test_l1_prox_with_the_step_size_is_the_hand_soft_threshold(opt: Any, init: dict, kw: dict[str, Any]) -> None:
    """Proximal RMSprop / Adagrad: after the step, each weight is soft-thresholded at
    λ times its own step, exactly (zeros included)."""
    params, state = _state(opt, init, kw)
    eta = opt.step_size(state, **kw)
    lam = 2.0 * max(float(params[k].abs().median() / eta[k].max()) for k in params if k != "2.bias")
    out = fr.l1.prox(params, lam, eta, where=fr.select.weights)
    zeros = 0
    for k in params:
        if params[k].ndim < 2:
            assert out[k] is params[k] or torch.equal(out[k], params[k])
            continue
        want = _hand([params[k], eta[k]], lambda w, e: math.copysign(max(abs(w) - lam * e, 0.0), w))
        torch.testing.assert_close(out[k], want, rtol=1e-12, atol=1e-15, msg=lambda m, k=k: f"{k}: {m}")
        zeros += int((out[k] == 0).sum())
    assert zeros > 0  # the threshold did zero some weights


@pytest.mark.parametrize("opt,init,kw", CASES)
def test_group_lasso_prox_with_one_step_per_leaf_is_the_hand_block_threshold(
        opt: Any, init: dict, kw: dict[str, Any]) -> None:
    """The group lasso takes one step per leaf: the mean of the per-element steps (as
    fr.prox_adam does for grouped families); each row g of a weight then shrinks by
    max(0, 1 − λ·η·sqrt(n_g)/‖w_g‖)."""
    params, state = _state(opt, init, kw)
    eta = opt.step_size(state, **kw)
    per_leaf = {k: e.mean() for k, e in eta.items()}
    norms = {k: params[k].norm(dim=1) for k in params if params[k].ndim == 2}
    lam = float(min(n.median() / (per_leaf[k] * math.sqrt(params[k].shape[1])) for k, n in norms.items()))
    out = fr.group_lasso.prox(params, lam, per_leaf, where=fr.select.weights)
    zeroed = 0
    for k, _w in norms.items():
        step, size = float(per_leaf[k]), params[k].shape[1]
        for g, row in enumerate(params[k]):
            shrink = max(0.0, 1.0 - lam * step * math.sqrt(size) / math.sqrt(sum(x * x for x in row.tolist())))
            torch.testing.assert_close(out[k][g], row * shrink, rtol=1e-12, atol=1e-15)
            zeroed += shrink == 0.0
    assert zeroed > 0  # whole rows were removed


@pytest.mark.parametrize("opt", [fr.rmsprop, fr.adagrad], ids=["rmsprop", "adagrad"])
def test_proximal_training_solves_a_lasso_with_exact_zeros(opt: Any) -> None:
    """A sparse regression trained by the step and the L1 prox at its step size: the
    uninformative weights are exactly 0, and the result meets the lasso's optimality
    conditions (to the accuracy of a few hundred steps)."""
    g = torch.Generator().manual_seed(0)
    n, d, lam = 200, 30, 0.1
    x = torch.randn(n, d, generator=g, dtype=F64)
    w_true = torch.zeros(d, dtype=F64)
    w_true[:4] = torch.tensor([2.0, -3.0, 1.5, 1.0], dtype=F64)
    y = x @ w_true + 0.1 * torch.randn(n, generator=g, dtype=F64)
    params = {"w": 0.1 * torch.randn(d, generator=g, dtype=F64)}
    state = opt.init(params)
    kw = dict(lr=0.5) if opt is fr.adagrad else dict(lr=0.01, alpha=0.999)
    for _ in range(600):
        grads = {"w": x.T @ (x @ params["w"] - y) / n}
        params, state = opt.step(params, grads, state, **kw)
        params = fr.l1.prox(params, lam, opt.step_size(state, **kw if opt is fr.adagrad else dict(lr=kw["lr"])))
    w = params["w"]
    assert torch.equal(w[4:], torch.zeros_like(w[4:]))
    assert (w[:4] != 0).all()
    corr = x.T @ (y - x @ w) / n
    assert corr[4:].abs().max() <= lam
    torch.testing.assert_close(corr[:4], lam * torch.sign(w[:4]), rtol=0, atol=1e-3)
