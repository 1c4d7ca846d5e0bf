"""Bad input to fr.rmsprop, fr.adagrad, fr.muon and fr.lion: a clear error naming the leaf
or the argument, on both paths, and nothing written."""

from __future__ import annotations

import math
from typing import Any, Callable

import pytest
import torch

import funcreg as fr
from optim_helpers import _one_thread, assert_untouched, mlp_params, snapshot  # noqa: F401
from registry import GENERIC, LION, MUON, RMSPROP, Step, compose_cases, matrices, step_kwargs

F64 = torch.float64


def _setup(step: Step, kw: dict[str, Any]) -> tuple[dict, dict, dict]:
    """Params, grads and a state after one step, so that nothing is trivially zero."""
    params = mlp_params(F64)
    grads = {k: torch.full_like(v, 0.5) for k, v in params.items()}
    state = step.opt.init(params, **step.init(kw))
    params, state = step.opt.step(params, grads, state, where=step.where, **step_kwargs(step, kw))
    return params, grads, state


def _raises(exc: type, match: str, fn: Callable[[], Any], *trees: Any) -> None:
    """``fn()`` raises ``exc`` matching ``match`` on both paths, donated or not, and leaves
    ``trees`` as they were."""
    for path in ("fast", "composable"):
        snap = snapshot(*trees)
        with fr._dispatch.forced(path), pytest.raises(exc, match=match):
            fn()
        assert_untouched(snap)


def _call(step: Step, kw: dict[str, Any], params: Any, grads: Any, state: Any, **extra: Any) -> Callable[[], Any]:
    return lambda: step.opt.step(params, grads, state, **{"where": step.where, **step_kwargs(step, kw), **extra})


@pytest.mark.parametrize("donate", [False, True])
@pytest.mark.parametrize("step,kw", compose_cases())
def test_a_bad_leaf_is_named_and_nothing_is_written(step: Step, kw: dict[str, Any], donate: bool) -> None:
    params, grads, state = _setup(step, kw)
    entry = next(k for k in state if k != "step")
    shape = {**state, entry: {**state[entry], "2.weight": torch.zeros(8, 3, dtype=F64)}}
    _raises(ValueError, rf"state\['{entry}'\] leaf '2\.weight' has shape \(8, 3\)",
            _call(step, kw, params, grads, shape, donate=donate), params, grads, shape)
    dtype = {**grads, "0.weight": grads["0.weight"].float()}
    _raises(ValueError, r"grads leaf '0\.weight' has dtype", _call(step, kw, params, dtype, state, donate=donate),
            params, dtype, state)
    missing = {**state, entry: {k: v for k, v in state[entry].items() if k != "2.weight"}}
    _raises(ValueError, r"lacks params leaf '2\.weight'", _call(step, kw, params, grads, missing, donate=donate),
            params, grads, missing)
    count = {**state, "step": {**state["step"], "0.weight": torch.ones(2)}}
    _raises(ValueError, r"state\['step'\] leaf '0\.weight' must be a 0-d tensor",
            _call(step, kw, params, grads, count, donate=donate), params, grads, count)


@pytest.mark.parametrize("value", [-1.0, math.nan, math.inf])
@pytest.mark.parametrize("step,name", [pytest.param(s, n, id=f"{s.name}-{n}") for s in GENERIC for n in s.hypers
                                       if n != "betas"])
def test_negative_or_non_finite_numbers_are_refused(step: Step, name: str, value: float) -> None:
    kw = step.configs[step.compose]
    params, grads, state = _setup(step, kw)
    _raises(ValueError, rf"{name} must be a finite number", _call(step, kw, params, grads, state, **{name: value}),
            params, grads, state)


@pytest.mark.parametrize("betas,match", [((1.5, 0.99), r"beta1.*\[0\.0, 1\.0\]"), ((0.9, -0.1), r"beta2"),
                                         ((0.9, math.nan), r"beta2"), ((0.9,), r"betas must be a pair")])
def test_lion_betas_outside_0_1_or_not_a_pair(betas: Any, match: str) -> None:
    params, grads, state = _setup(LION, {"lr": 0.1})
    _raises(ValueError if "pair" not in match else TypeError, match,
            lambda: fr.lion.step(params, grads, state, lr=0.1, betas=betas), params, grads, state)


def test_rmsprop_momentum_or_centered_without_their_state() -> None:
    params, grads, state = _setup(RMSPROP, {"lr": 0.1})
    _raises(ValueError, r"momentum needs state\['momentum_buffer'\].*init\(params, momentum=True\)",
            lambda: fr.rmsprop.step(params, grads, state, lr=0.1, momentum=0.9), params, grads, state)
    _raises(ValueError, r"momentum needs state\['momentum_buffer'\]",
            lambda: fr.rmsprop.step(params, grads, state, lr=0.1, momentum=torch.tensor(0.0)), params, grads, state)
    _raises(ValueError, r"centered needs state\['grad_avg'\].*init\(params, centered=True\)",
            lambda: fr.rmsprop.step(params, grads, state, lr=0.1, centered=True), params, grads, state)
    # a bad momentum is named as such, not as a missing buffer
    _raises(ValueError, r"momentum must be a finite number",
            lambda: fr.rmsprop.step(params, grads, state, lr=0.1, momentum=-0.5), params, grads, state)
    _raises(TypeError, r"momentum must be a number or a tensor",
            lambda: fr.rmsprop.step(params, grads, state, lr=0.1, momentum="0.9"), params, grads, state)
    # a state with more entries than a step needs passes them through
    full = fr.rmsprop.init(params, momentum=True, centered=True)
    _, new = fr.rmsprop.step(params, grads, full, lr=0.1)
    assert all(new[key][k] is full[key][k] for key in ("momentum_buffer", "grad_avg") for k in params)


@pytest.mark.parametrize("donate", [False, True])
def test_muon_refuses_a_selected_leaf_that_is_not_a_matrix(donate: bool) -> None:
    params = mlp_params(F64)
    grads = {k: torch.ones_like(v) for k, v in params.items()}
    state = fr.muon.init(params)
    _raises(ValueError, r"fr\.muon: params leaf '0\.bias' has shape \(8,\); Muon updates matrices only.*where=",
            lambda: fr.muon.step(params, grads, state, lr=0.1, donate=donate), params, grads, state)
    conv = {**params, "c.weight": torch.ones(2, 3, 3, 3, dtype=F64)}
    conv_g = {k: torch.ones_like(v) for k, v in conv.items()}
    _raises(ValueError, r"'c\.weight' has shape \(2, 3, 3, 3\)",
            lambda: fr.muon.step(conv, conv_g, fr.muon.init(conv), lr=0.1, where=fr.select.weights, donate=donate),
            conv, conv_g)
    # with where= selecting the matrices, the rest pass through
    new, _ = fr.muon.step(params, grads, state, lr=0.1, where=matrices)
    assert new["0.bias"] is params["0.bias"] and not torch.equal(new["0.weight"], params["0.weight"])


@pytest.mark.parametrize("bad,exc,match", [
    (dict(ns_steps=100), ValueError, r"ns_steps must be an int in \[0, 100\)"),
    (dict(ns_steps=2.0), ValueError, r"ns_steps"),
    (dict(ns_coefficients=(3.4, -4.7)), TypeError, r"ns_coefficients must be three"),
    (dict(ns_coefficients=(3.4, -4.7, torch.tensor(2.0))), TypeError, r"ns_coefficients"),
    (dict(ns_coefficients=(3.4, -4.7, math.inf)), TypeError, r"ns_coefficients"),
    (dict(adjust_lr_fn="rms"), ValueError, r"adjust_lr_fn must be one of"),
])
def test_muon_options_are_checked(bad: dict[str, Any], exc: type, match: str) -> None:
    params, grads, state = _setup(MUON, MUON.configs["default"])
    _raises(exc, match, lambda: fr.muon.step(params, grads, state, lr=0.1, where=matrices, **bad),
            params, grads, state)


def test_init_and_step_size_refuse_what_they_cannot_use() -> None:
    params = mlp_params(F64)
    with pytest.raises(ValueError, match=r"initial_accumulator_value must be a finite number"):
        fr.adagrad.init(params, initial_accumulator_value=-0.1)
    ints = {**params, "count": torch.ones(3, dtype=torch.int64)}
    for step in GENERIC:
        with pytest.raises(TypeError, match=r"params leaf 'count' has dtype torch.int64"):
            step.opt.init(ints)
    with pytest.raises(ValueError, match=r"fr\.rmsprop\.step_size needs a state from fr\.rmsprop\.init"):
        fr.rmsprop.step_size(fr.adagrad.init(params), lr=0.1)
    with pytest.raises(ValueError, match=r"init\(params, centered=True\)"):
        fr.rmsprop.step_size(fr.rmsprop.init(params), lr=0.1, centered=True)
    with pytest.raises(ValueError, match=r"fr\.adagrad\.step_size needs a state"):
        fr.adagrad.step_size(fr.rmsprop.init(params), lr=0.1)
    with pytest.raises(ValueError, match=r"lr must be a finite number"):
        fr.adagrad.step_size(fr.adagrad.init(params), lr=-1.0)


@pytest.mark.parametrize("step,kw", compose_cases())
def test_params_that_require_grad_are_refused_unless_differentiable(step: Step, kw: dict[str, Any]) -> None:
    params = {k: v.requires_grad_() for k, v in mlp_params(F64).items()}
    grads = {k: torch.ones_like(v) for k, v in params.items()}
    state = step.opt.init({k: v.detach() for k, v in params.items()}, **step.init(kw))
    with pytest.raises(ValueError, match=r"params leaf '0\.weight' requires grad.*differentiable=True"):
        _call(step, kw, params, grads, state)()
    new, _ = _call(step, kw, params, grads, state, differentiable=True)()
    assert new["0.weight"].grad_fn is not None
