"""Proximal steps and ``step_size``: a step then a prox gives exact zeros where a
subgradient step gives none; fr.adam.step_size, fr.rmsprop.step_size and
fr.adagrad.step_size against hand computations, under vmap, and the L1 and group lasso
proxes taken with them."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import funcreg as fr
from optim_helpers import (  # noqa: F401  (_one_thread is an autouse fixture)  # noqa: F401  (_one_thread is an autouse fixture)
    DEVICES,
    _one_thread,
    assert_untouched,
    grad_sequence,
    mlp_params,
    on_route,
    route_kwargs,
    snapshot,
)

LAM = 0.1


def _regression(device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A sparse linear regression: 30 features, 4 of them informative."""
    g = torch.Generator().manual_seed(0)
    n, d = 200, 30
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    w_true = torch.zeros(d, dtype=torch.float64)
    w_true[:4] = torch.tensor([2.0, -3.0, 1.5, 1.0], dtype=torch.float64)
    y = x @ w_true + 0.1 * torch.randn(n, generator=g, dtype=torch.float64)
    return x.to(device), y.to(device), w_true.to(device)


def _train(opt: Any, mode: str, route: str, device: str, steps: int = 500) -> torch.Tensor:
    x, y, _ = _regression(device)
    n, d = x.shape
    g = torch.Generator().manual_seed(1)
    params = {"w": (0.1 * torch.randn(d, generator=g, dtype=torch.float64)).to(device)}
    lr = 0.1 if opt is fr.sgd else 0.05
    kw = route_kwargs(route, {"lr": lr}, torch.float64, device)
    state = opt.init(params)
    with on_route(route):
        for _ in range(steps):
            grads = {"w": x.T @ (x @ params["w"] - y) / n}
            if mode == "subgradient":
                grads = fr.l1.add_grad(grads, params, LAM)
            params, state = opt.step(params, grads, state, **kw)
            if mode == "prox":
                step = kw["lr"] if opt is fr.sgd else fr.adam.step_size(state, lr=kw["lr"])
                params = fr.l1.prox(params, LAM, step)
    return params["w"]


ROUTES = ["fused", "fused-tensor-lr", "composable"]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("opt", [fr.sgd, fr.adam], ids=["sgd", "adam"])
def test_proximal_step_gives_exact_zeros_where_subgradient_gives_none(opt: Any, route: str, device: str) -> None:
    x, y, w_true = _regression(device)
    prox = _train(opt, "prox", route, device)
    sub = _train(opt, "subgradient", route, device)

    # proximal training: every uninformative weight exactly 0, every informative one not
    assert torch.equal(prox[4:], torch.zeros_like(prox[4:]))
    assert (prox[:4] != 0).all()
    # and it solved the lasso: KKT conditions of ½‖Xw − y‖²/n + λ‖w‖₁
    corr = x.T @ (y - x @ prox) / x.shape[0]
    assert corr[4:].abs().max() <= LAM
    torch.testing.assert_close(corr[:4], LAM * torch.sign(prox[:4]), rtol=0, atol=1e-8)
    torch.testing.assert_close(prox[:4], w_true[:4], rtol=0, atol=0.2)

    # subgradient training of the same objective: close to the same weights, no zero at all
    assert (sub != 0).all()
    torch.testing.assert_close(sub, prox, rtol=0, atol=0.05)


def _adam_state(amsgrad: bool = False, steps: int = 5, shrink: bool = False) -> tuple[dict, dict, list]:
    """Params and Adam state after ``steps`` random steps; ``shrink`` makes gradients
    smaller each step, so that max_exp_avg_sq stays above exp_avg_sq."""
    params = mlp_params(torch.float64)
    grads = grad_sequence(params, steps)
    if shrink:
        grads = [{k: v * 0.3**t for k, v in g.items()} for t, g in enumerate(grads)]
    state = fr.adam.init(params, amsgrad=amsgrad)
    for g in grads:
        params, state = fr.adam.step(params, g, state, lr=0.01, amsgrad=amsgrad)
    return params, state, grads


def _hand_step_size(v: torch.Tensor, t: int, lr: float, betas: tuple[float, float], eps: float) -> torch.Tensor:
    """lr / (1 - b1^t) / (sqrt(v) / sqrt(1 - b2^t) + eps), per element in Python floats."""
    b1, b2 = betas
    vals = [lr / (1 - b1**t) / (math.sqrt(e) / math.sqrt(1 - b2**t) + eps) for e in v.reshape(-1).tolist()]
    return torch.tensor(vals, dtype=torch.float64).reshape(v.shape)


@pytest.mark.parametrize("route", ["fused", "foreach", "composable"])
@pytest.mark.parametrize("lr,betas,eps", [(0.01, (0.9, 0.999), 1e-8), (0.3, (0.5, 0.9), 1e-3), (1e-3, (0.0, 0.0), 1e-8)])
def test_step_size_is_the_hand_computation(route: str, lr: float, betas: tuple[float, float], eps: float) -> None:
    _, state, _ = _adam_state(steps=7)
    kw = route_kwargs(route, dict(lr=lr, betas=betas, eps=eps), torch.float64)
    with on_route(route):
        eta = fr.adam.step_size(state, **kw)
    assert list(eta) == list(state["exp_avg_sq"])
    for k, v in state["exp_avg_sq"].items():
        assert int(state["step"][k]) == 7
        torch.testing.assert_close(eta[k], _hand_step_size(v, 7, lr, betas, eps), rtol=1e-12, atol=0)


@given(
    lr=st.floats(1e-4, 1.0),
    b1=st.floats(0.0, 0.99),
    b2=st.floats(0.0, 0.9999),
    eps=st.floats(1e-10, 1e-2),
    t=st.integers(1, 50),
)
def test_step_size_hand_computation_property(lr: float, b1: float, b2: float, eps: float, t: int) -> None:
    g = torch.Generator().manual_seed(t)
    v = torch.rand(3, 2, generator=g, dtype=torch.float64) ** 4  # includes tiny values
    state = {
        "step": {"w": torch.tensor(float(t))},
        "exp_avg": {"w": torch.zeros(3, 2, dtype=torch.float64)},
        "exp_avg_sq": {"w": v},
    }
    eta = fr.adam.step_size(state, lr=lr, betas=(b1, b2), eps=eps)["w"]
    torch.testing.assert_close(eta, _hand_step_size(v, t, lr, (b1, b2), eps), rtol=1e-11, atol=0)


@pytest.mark.parametrize("route", ["fused", "foreach", "composable"])
def test_step_size_is_zero_for_a_leaf_never_stepped(route: str) -> None:
    params = mlp_params(torch.float64)
    kw = route_kwargs(route, dict(lr=0.01, betas=(0.9, 0.999), eps=1e-8), torch.float64)
    with on_route(route):
        fresh = fr.adam.step_size(fr.adam.init(params), **kw)
    for k, p in params.items():
        assert torch.equal(fresh[k], torch.zeros_like(p)), k
        assert fresh[k].dtype == p.dtype

    # one leaf never gets a gradient: its step size stays 0, the others' do not
    grads = grad_sequence(params, 3)
    state = fr.adam.init(params)
    for g in grads:
        params, state = fr.adam.step(params, {**g, "2.bias": None}, state, lr=0.01)
    with on_route(route):
        eta = fr.adam.step_size(state, **kw)
    assert torch.equal(eta["2.bias"], torch.zeros(3, dtype=torch.float64))
    assert all((eta[k] > 0).all() for k in ("0.weight", "0.bias", "2.weight"))
    assert torch.isfinite(torch.cat([e.reshape(-1) for e in eta.values()])).all()


@pytest.mark.parametrize("route", ["fused", "composable"])
def test_step_size_uses_max_exp_avg_sq_with_amsgrad(route: str) -> None:
    _, state, _ = _adam_state(amsgrad=True, steps=6, shrink=True)
    for k in state["exp_avg_sq"]:
        assert (state["max_exp_avg_sq"][k] > state["exp_avg_sq"][k]).all()
    with on_route(route):
        eta = fr.adam.step_size(state, lr=0.01, amsgrad=True)
    for k in state["exp_avg_sq"]:
        expected = _hand_step_size(state["max_exp_avg_sq"][k], 6, 0.01, (0.9, 0.999), 1e-8)
        torch.testing.assert_close(eta[k], expected, rtol=1e-12, atol=0)
        assert not torch.allclose(eta[k], _hand_step_size(state["exp_avg_sq"][k], 6, 0.01, (0.9, 0.999), 1e-8))


@pytest.mark.parametrize("amsgrad", [False, True])
@pytest.mark.parametrize("route", ["fused", "foreach", "composable"])
def test_step_size_is_how_far_adam_moved_per_unit_of_momentum(route: str, amsgrad: bool) -> None:
    """After a step, params moved by exactly ``-step_size * exp_avg``."""
    params, state, _ = _adam_state(amsgrad=amsgrad, steps=4)
    grads = grad_sequence(params, 1, seed=9)[0]
    kw = route_kwargs(route, dict(lr=0.02, betas=(0.8, 0.99), eps=1e-6), torch.float64)
    with on_route(route):
        new, new_state = fr.adam.step(params, grads, state, amsgrad=amsgrad, **kw)
        eta = fr.adam.step_size(new_state, amsgrad=amsgrad, **kw)
    for k in params:
        torch.testing.assert_close(new[k] - params[k], -eta[k] * new_state["exp_avg"][k], rtol=1e-9, atol=1e-15)


def test_prox_with_step_size_accepts_per_element_steps_on_float32() -> None:
    params = mlp_params(torch.float32)
    grads = grad_sequence(params, 1)[0]
    state = fr.adam.init(params)
    params, state = fr.adam.step(params, grads, state, lr=0.01)
    eta = fr.adam.step_size(state, lr=0.01)
    assert all(eta[k].dtype == torch.float32 and eta[k].shape == params[k].shape for k in params)
    out = fr.l1.prox(params, 50.0, eta)
    for k in params:
        expected = params[k] - params[k].clamp(-50.0 * eta[k], 50.0 * eta[k])
        torch.testing.assert_close(out[k], expected)


def test_step_size_with_amsgrad_needs_the_amsgrad_state() -> None:
    params = mlp_params(torch.float64)
    with pytest.raises(ValueError, match=r"amsgrad=True"):
        fr.adam.step_size(fr.adam.init(params), lr=0.01, amsgrad=True)


F64 = torch.float64
STEP_ROUTES = ["fast", "foreach", "composable"]


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


@pytest.mark.parametrize("route", STEP_ROUTES)
@pytest.mark.parametrize("opt,init,kw", CASES)
def test_rmsprop_adagrad_step_size_is_the_hand_computation(opt: Any, init: dict, kw: dict[str, Any], route: str) -> None:
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
