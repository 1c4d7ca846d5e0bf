"""Proximal steps (a step, then fr.l1.prox) and fr.adam.step_size."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import funcreg as fr
from optim_helpers import (  # noqa: F401  (_one_thread is an autouse fixture)
    DEVICES,
    _one_thread,
    grad_sequence,
    mlp_params,
    on_route,
    route_kwargs,
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
