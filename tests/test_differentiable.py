"""``differentiable=True``: a step, ``.add_grad``, ``.prox`` or a projection on tensors that
require grad records their history, as torch.optim's ``differentiable`` does, so that plain
autograd gives hypergradients; without the flag such inputs are refused."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

import funcreg as fr
from registry import STEPS, Step, step_kwargs

F64 = torch.float64


def _params() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"w": torch.randn(3, 4, generator=g, dtype=F64), "b": torch.randn(3, generator=g, dtype=F64)}


X = torch.randn(8, 4, generator=torch.Generator().manual_seed(1), dtype=F64)
Y = torch.randn(8, 3, generator=torch.Generator().manual_seed(2), dtype=F64)


def _loss(p: dict[str, torch.Tensor]) -> torch.Tensor:
    return ((torch.tanh(X @ p["w"].T + p["b"]) - Y) ** 2).mean()


def _grads(p: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The task gradient, itself differentiable (create_graph), as in a hypergradient loop."""
    values = torch.autograd.grad(_loss(p), list(p.values()), create_graph=True)
    return dict(zip(p, values))


def _descend(p: dict[str, torch.Tensor], g: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v - 0.1 * g[k] for k, v in p.items()}


def _step_update(step: Step) -> Any:
    """``pytest.param(update, init, h0, steps)``: ``step`` on its ``hypergradient`` config,
    differentiated with respect to its ``hypergradient`` hyperparameter at the config's value."""
    config, name = step.hypergradient
    kw = {k: v for k, v in step_kwargs(step, step.configs[config or step.compose]).items() if k != "maximize"}
    init = step.init(kw)
    beta2 = kw.get("betas", step.hypers.get("betas", (0.0, 0.0)))[1]
    h0 = kw.get("betas", step.hypers.get("betas", (0.0,)))[0] if name == "beta1" else kw.get(name, step.hypers[name])

    def update(p: dict[str, torch.Tensor], s: Any, h: torch.Tensor) -> Any:
        hyper = {"betas": (h, beta2)} if name == "beta1" else {name: h}
        return step.opt.step(p, _grads(p), s, where=step.where, differentiable=True, **{**kw, **hyper})

    return pytest.param(update, lambda p: step.opt.init(p, **init), h0, step.unrolled,
                        id=f"{step.name}-{config or step.compose}-{name}")


UPDATES: list[Any] = [_step_update(s) for s in STEPS] + [
    pytest.param(lambda p, s, h: (_descend(p, fr.l2.add_grad(_grads(p), p, h, differentiable=True)), s),
                 None, 0.3, 3, id="add_grad"),
    pytest.param(lambda p, s, h: (fr.l1.prox(_descend(p, _grads(p)), h, 0.1, differentiable=True), s),
                 None, 0.3, 3, id="l1-prox"),
    pytest.param(lambda p, s, h: (fr.project.max_norm(_descend(p, _grads(p)), h, differentiable=True), s),
                 None, 0.3, 3, id="max-norm"),
]
"""(update, init, h0, steps): every step of the registry, and the penalties' and a
projection's differentiable calls."""


def _unrolled(update: Callable[..., Any], init: Any, steps: int) -> Callable[[torch.Tensor], torch.Tensor]:
    def run(h: torch.Tensor) -> torch.Tensor:
        p = {k: v.clone().requires_grad_() for k, v in _params().items()}
        s = init(p) if init is not None else None
        for _ in range(steps):
            p, s = update(p, s, h)
        return _loss(p)

    return run


@pytest.mark.parametrize("update,init,h0,steps", UPDATES)
def test_hypergradient_through_differentiable_steps_matches_finite_differences(
    update: Any, init: Any, h0: float, steps: int
) -> None:
    run = _unrolled(update, init, steps)
    eps = 1e-6
    h = torch.tensor(h0, dtype=F64, requires_grad=True)
    (hyper,) = torch.autograd.grad(run(h), h)
    fd = (run(torch.tensor(h0 + eps, dtype=F64)) - run(torch.tensor(h0 - eps, dtype=F64))) / (2 * eps)
    assert hyper.abs() > 1e-6
    torch.testing.assert_close(hyper, fd, rtol=1e-5, atol=1e-9)


def _refused_step(step: Step) -> Any:
    kw = step_kwargs(step, step.configs[step.compose])
    init = step.init(kw)
    return pytest.param(lambda p, g: step.opt.step(p, g, step.opt.init(_detached(p), **init), where=step.where, **kw),
                        id=step.name)


@pytest.mark.parametrize("call", [*[_refused_step(s) for s in STEPS],
    pytest.param(lambda p, g: fr.l2.add_grad(g, p, 0.1), id="add_grad"),
    pytest.param(lambda p, g: fr.group_lasso.prox(p, 0.1, 1.0), id="prox"),
    pytest.param(lambda p, g: fr.project.l1_ball(p, 1.0), id="projection"),
])
def test_the_refusal_says_what_to_do(call: Callable[..., Any]) -> None:
    params = {k: v.requires_grad_() for k, v in _params().items()}
    grads = {k: torch.ones_like(v) for k, v in params.items()}
    with pytest.raises(ValueError) as info:
        call(params, grads)
    message = str(info.value)
    assert "params leaf 'w' requires grad and grad mode is on" in message
    for advice in ("detach", "torch.no_grad()", "differentiable=True"):
        assert advice in message
    with torch.no_grad():
        call(params, grads)


def test_gradients_that_require_grad_are_refused_too() -> None:
    params = _params()
    grads = {k: torch.ones_like(v, requires_grad=True) for k, v in params.items()}
    with pytest.raises(ValueError, match=r"grads leaf 'w' requires grad"):
        fr.adamw.step(params, grads, fr.adamw.init(params), lr=0.1)
    out, _ = fr.adamw.step(params, grads, fr.adamw.init(params), lr=0.1, differentiable=True)
    assert out["w"].requires_grad


def test_differentiable_results_record_history_and_values_equal_the_fast_path() -> None:
    params = {k: v.requires_grad_() for k, v in _params().items()}
    grads = {k: torch.ones_like(v) for k, v in params.items()}
    state = fr.adamw.init(_detached(params))
    new, _ = fr.adamw.step(params, grads, state, lr=0.1, differentiable=True)
    with torch.no_grad():
        want, _ = fr.adamw.step(_detached(params), grads, state, lr=0.1)
    for k in want:
        assert new[k].grad_fn is not None
        torch.testing.assert_close(new[k].detach(), want[k], rtol=1e-12, atol=1e-12)


def test_donation_cannot_write_into_tensors_that_require_grad_even_when_differentiable() -> None:
    params = {k: v.requires_grad_() for k, v in _params().items()}
    with pytest.raises(ValueError, match=r"cannot donate params leaf '(w|b)': it requires grad"):
        fr.l1.prox(params, 0.1, 1.0, donate=True, differentiable=True)


def test_under_torch_func_transforms_no_flag_is_needed() -> None:
    params = _params()

    def after_steps(lr: torch.Tensor) -> torch.Tensor:
        p, s = params, fr.sgd.init(params)
        for _ in range(2):
            p, s = fr.sgd.step(p, torch.func.grad(_loss)(p), s, lr=lr, momentum=0.5)
        return _loss(p)

    hyper = torch.func.grad(after_steps)(torch.tensor(0.2, dtype=F64))
    lr = torch.tensor(0.2, dtype=F64, requires_grad=True)
    p, s = {k: v.requires_grad_() for k, v in _params().items()}, fr.sgd.init(params)
    for _ in range(2):
        p, s = fr.sgd.step(p, _grads(p), s, lr=lr, momentum=0.5, differentiable=True)
    (auto,) = torch.autograd.grad(_loss(p), lr)
    torch.testing.assert_close(hyper, auto, rtol=1e-10, atol=1e-12)


def _detached(p: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach() for k, v in p.items()}
