"""Bad input to the steps (every step of tests/registry.py): a clear error that names the
leaf or the argument, on every path, and nothing half-applied or written."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

import pytest
import torch

import funcreg as fr
from optim_helpers import (  # noqa: F401  (_one_thread is an autouse fixture)
    _one_thread,
    assert_untouched,
    mlp_params,
    on_route,
    snapshot,
)
from registry import (
    ADAM,
    LION,
    MUON,
    RMSPROP,
    SGD,
    STEPS,
    Step,
    compose_cases,
    matrices,
    step_kwargs,
)

F64 = torch.float64
CASES = compose_cases(STEPS)
"""Every step of the registry on its compose config."""


def _call(step: Step, kw: dict[str, Any], params: Any, grads: Any, state: Any, **extra: Any) -> Callable[[], Any]:
    return lambda: step.opt.step(params, grads, state, **{"where": step.where, **step_kwargs(step, kw), **extra})


def _setup(step: Step, kw: dict[str, Any]) -> tuple[dict, dict, dict]:
    """Params, grads and a state that has already taken one step (so nothing is trivially
    zero), with a float32 leaf at the end so that the fast path has two groups."""
    params = {**mlp_params(F64), "head.scale": torch.ones(3, dtype=torch.float32)}
    grads = {k: torch.full_like(v, 0.5) for k, v in params.items()}
    state = step.opt.init(params, **step.init(kw))
    params, state = _call(step, kw, params, grads, state)()
    return params, grads, state


def _step_of(opt: Any) -> Step:
    return next(s for s in STEPS if s.opt is opt)


def _updated(step: Step, params: dict[str, torch.Tensor], path: str) -> str:
    """``path``, or the first leaf ``step`` updates if it does not update that one (Muon's
    where= selects the matrices it updates; the others pass through unchecked)."""
    if step.where is None or step.where(path, params[path]):
        return path
    return next(k for k, v in params.items() if step.where(k, v))


def _entries(state: dict[str, Any]) -> list[str]:
    """The state's entries that hold one tensor per leaf (the step counts left out)."""
    return [key for key in state if key != "step"]


def _raises(exc: type, match: str, fn: Callable[[], Any], *trees: Any) -> None:
    """``fn()`` raises ``exc`` matching ``match`` on every route and leaves ``trees`` as they were."""
    for route in ("fused", "composable"):
        snap = snapshot(*trees)
        with on_route(route), pytest.raises(exc, match=match):
            fn()
        assert_untouched(snap)


def _replace(tree: dict, path: str, value: Any) -> dict:
    return {k: (value if k == path else v) for k, v in tree.items()}


# -------------------------------------------------------------------- state vs params
@pytest.mark.parametrize("step,kw", CASES)
def test_state_missing_a_leaf(step: Step, kw: dict) -> None:
    params, grads, state = _setup(step, kw)
    key = _entries(state)[0]
    bad = {**state, key: {k: v for k, v in state[key].items() if k != "2.weight"}}
    _raises(ValueError, rf"state\['{key}'\].*lacks params leaf '2\.weight'",
            _call(step, kw, params, grads, bad), params, grads, bad)


@pytest.mark.parametrize("step,kw", CASES)
def test_state_with_an_extra_leaf(step: Step, kw: dict) -> None:
    params, grads, state = _setup(step, kw)
    key = _entries(state)[-1]
    bad = {**state, key: {**state[key], "ghost.weight": torch.zeros(2, dtype=torch.float64)}}
    _raises(ValueError, r"'ghost\.weight'", _call(step, kw, params, grads, bad), params, grads, bad)


@pytest.mark.parametrize("step,kw", CASES)
def test_state_leaf_of_the_wrong_shape(step: Step, kw: dict) -> None:
    params, grads, state = _setup(step, kw)
    key, leaf = _entries(state)[0], _updated(step, params, "head.scale")
    bad = {**state, key: _replace(state[key], leaf, torch.zeros(4, dtype=params[leaf].dtype))}
    _raises(ValueError, rf"'{re.escape(leaf)}'.*shape \(4,\)", _call(step, kw, params, grads, bad), params, grads, bad)


@pytest.mark.parametrize("step,kw", CASES)
def test_state_leaf_of_the_wrong_dtype(step: Step, kw: dict) -> None:
    params, grads, state = _setup(step, kw)
    key, leaf = _entries(state)[-1], _updated(step, params, "0.bias")
    bad = {**state, key: _replace(state[key], leaf, state[key][leaf].float())}
    _raises(ValueError, rf"'{re.escape(leaf)}'.*dtype", _call(step, kw, params, grads, bad), params, grads, bad)


@pytest.mark.parametrize("step,kw", CASES)
def test_state_of_another_optimizer_or_not_a_dict(step: Step, kw: dict) -> None:
    params, grads, state = _setup(step, kw)
    # the state of the first other step that lacks one of this step's entries
    other = next(o for s in STEPS if s is not step and not set(state) <= set(o := s.opt.init(params)))
    # (RMSprop names first the entry its centered or momentum option needs)
    _raises(ValueError, r"state has no entry|needs state\['", _call(step, kw, params, grads, other),
            params, grads, other)
    _raises(TypeError, r"state must be", _call(step, kw, params, grads, [1, 2]), params, grads)


@pytest.mark.parametrize("opt", [fr.adam, fr.adamw])
def test_amsgrad_needs_max_exp_avg_sq(opt: Any) -> None:
    params, grads, state = _setup(_step_of(opt), {"lr": 0.1})
    _raises(ValueError, r"max_exp_avg_sq.*amsgrad=True",
            lambda: opt.step(params, grads, state, lr=0.1, amsgrad=True), params, grads, state)
    # the amsgrad state itself is fine without amsgrad, and passes max_exp_avg_sq through
    ams = opt.init(params, amsgrad=True)
    _, new = opt.step(params, grads, ams, lr=0.1)
    assert all(new["max_exp_avg_sq"][k] is ams["max_exp_avg_sq"][k] for k in params)


# ------------------------------------------------------------------------ hyperparameters
BAD_NUMBERS = [-1.0, -1e-12, math.nan, math.inf, -math.inf]


def test_sgd_dampening_above_one() -> None:
    params, grads, state = _setup(SGD, {"lr": 0.1, "momentum": 0.9})
    _raises(ValueError, r"dampening", lambda: fr.sgd.step(params, grads, state, lr=0.1, momentum=0.9, dampening=1.5),
            params, grads, state)


@pytest.mark.parametrize(
    "betas,which",
    [((1.0, 0.999), "beta1"), ((0.9, 1.0), "beta2"), ((-0.1, 0.999), "beta1"), ((0.9, -1e-9), "beta2"),
     ((0.9, math.nan), "beta2"), ((math.inf, 0.999), "beta1"), ((0.9, 1.5), "beta2")],
)
@pytest.mark.parametrize("opt", [fr.adam, fr.adamw], ids=["adam", "adamw"])
def test_adam_betas_outside_0_1(opt: Any, betas: tuple, which: str) -> None:
    params, grads, state = _setup(_step_of(opt), {"lr": 0.1})
    _raises(ValueError, rf"{which}.*\[0\.0, 1\.0\)", lambda: opt.step(params, grads, state, lr=1e-3, betas=betas),
            params, grads, state)
    _raises(ValueError, rf"{which}", lambda: opt.step_size(state, lr=0.1, betas=betas), state)


@pytest.mark.parametrize("betas", [0.9, (0.9,), (0.9, 0.99, 0.999), None])
def test_adam_betas_must_be_a_pair(betas: Any) -> None:
    params, grads, state = _setup(ADAM, {"lr": 0.1})
    _raises(TypeError, r"betas must be a pair", lambda: fr.adam.step(params, grads, state, lr=1e-3, betas=betas),
            params, grads, state)


@pytest.mark.parametrize("bad", ["0.1", None, True, [0.1]])
def test_hyperparameter_of_the_wrong_type(bad: Any) -> None:
    params, grads, state = _setup(SGD, {"lr": 0.1, "momentum": 0.9})
    _raises(TypeError, r"lr must be a number or a tensor", lambda: fr.sgd.step(params, grads, state, lr=bad),
            params, grads, state)


def test_hyperparameter_tensor_that_is_not_0d() -> None:
    params, grads, state = _setup(ADAM, {"lr": 0.1})
    _raises(ValueError, r"lr must be a number or a 0-d tensor.*vmap",
            lambda: fr.adam.step(params, grads, state, lr=torch.tensor([0.1, 0.2])), params, grads, state)


def test_step_size_validates_its_hyperparameters_and_state() -> None:
    params, grads, state = _setup(ADAM, {"lr": 0.1})
    _raises(ValueError, r"lr", lambda: fr.adam.step_size(state, lr=-0.1), state)
    _raises(ValueError, r"eps", lambda: fr.adam.step_size(state, lr=0.1, eps=math.nan), state)
    _raises(ValueError, r"step_size needs a state", lambda: fr.adam.step_size(fr.sgd.init(params), lr=0.1))


def test_nesterov_needs_momentum_and_no_dampening() -> None:
    params, grads, state = _setup(SGD, {"lr": 0.1, "momentum": 0.9})
    _raises(ValueError, r"nesterov", lambda: fr.sgd.step(params, grads, state, lr=0.1, nesterov=True),
            params, grads, state)
    _raises(ValueError, r"nesterov",
            lambda: fr.sgd.step(params, grads, state, lr=0.1, momentum=0.0, nesterov=True), params, grads, state)
    _raises(ValueError, r"nesterov",
            lambda: fr.sgd.step(params, grads, state, lr=0.1, momentum=0.9, dampening=0.1, nesterov=True),
            params, grads, state)


# ------------------------------------------------------------------------ params and grads
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool])
@pytest.mark.parametrize("step,kw", CASES)
def test_integer_params_are_a_type_error(step: Step, kw: dict, dtype: torch.dtype) -> None:
    params = {**mlp_params(torch.float64), "count": torch.ones(3, 2, dtype=dtype)}  # a matrix: Muon's too
    grads = {k: torch.ones_like(v) for k, v in params.items()}
    # init refuses the integer leaf too, so the state comes from a float stand-in for it
    state = step.opt.init({**params, "count": torch.ones(3, 2, dtype=torch.float64)}, **step.init(kw))
    _raises(TypeError, r"'count'.*floating-point", _call(step, kw, params, grads, state), params, grads, state)


@pytest.mark.parametrize("step,kw", CASES)
def test_non_tensor_param_leaf(step: Step, kw: dict) -> None:
    params = {"w": torch.ones(2, 2, dtype=torch.float64), "scale": 1.0}
    with pytest.raises(TypeError, match=r"'scale'.*not a tensor"):
        step.opt.init(params, **step.init(kw))


@pytest.mark.parametrize("step,kw", CASES)
def test_grad_of_the_wrong_shape(step: Step, kw: dict) -> None:
    params, grads, state = _setup(step, kw)
    bad = _replace(grads, "2.weight", torch.zeros(8, 3, dtype=torch.float64))
    _raises(ValueError, r"grads leaf '2\.weight' has shape \(8, 3\)", _call(step, kw, params, bad, state),
            params, bad, state)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.int64])
@pytest.mark.parametrize("step,kw", CASES)
def test_grad_of_the_wrong_dtype(step: Step, kw: dict, dtype: torch.dtype) -> None:
    params, grads, state = _setup(step, kw)
    bad = _replace(grads, "0.weight", grads["0.weight"].to(dtype))
    _raises(ValueError, r"grads leaf '0\.weight' has dtype", _call(step, kw, params, bad, state), params, bad, state)


@pytest.mark.parametrize("step,kw", CASES)
def test_grads_missing_extra_or_not_tensors(step: Step, kw: dict) -> None:
    params, grads, state = _setup(step, kw)
    missing = {k: v for k, v in grads.items() if k != "0.bias"}
    _raises(ValueError, r"grads.*lacks params leaf '0\.bias'", _call(step, kw, params, missing, state),
            params, missing, state)
    extra = {**grads, "1.weight": torch.zeros(2, dtype=torch.float64)}
    _raises(ValueError, r"grads.*'1\.weight'", _call(step, kw, params, extra, state), params, extra, state)
    leaf = _updated(step, params, "2.bias")
    number = _replace(grads, leaf, 0.5)
    _raises(TypeError, rf"grads leaf '{re.escape(leaf)}'", _call(step, kw, params, number, state), params, grads, state)


@pytest.mark.parametrize("step,kw", CASES)
def test_where_selecting_nothing(step: Step, kw: dict) -> None:
    params, grads, state = _setup(step, kw)
    _raises(ValueError, r"where selects no leaf",
            _call(step, kw, params, grads, state, weight_decay=0.1, where=fr.select.only("nope")),
            params, grads, state)
    _raises(TypeError, r"where", _call(step, kw, params, grads, state, weight_decay=0.1, where="weight"),
            params, grads, state)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("step,kw", CASES)
def test_device_mismatch_names_the_leaf_and_devices(step: Step, kw: dict) -> None:
    params = {k: v.cuda() for k, v in mlp_params(torch.float64).items()}
    state = step.opt.init(params, **step.init(kw))
    grads = {k: torch.ones_like(v) for k, v in params.items()}
    bad = _replace(grads, "0.bias", grads["0.bias"].cpu())
    _raises(ValueError, r"'0\.bias' lives on cpu.*cuda", _call(step, kw, params, bad, state), params, bad, state)
    key = _entries(state)[0]
    bad_state = {**state, key: _replace(state[key], "2.weight", state[key]["2.weight"].cpu())}
    _raises(ValueError, r"'2\.weight' lives on cpu", _call(step, kw, params, grads, bad_state),
            params, grads, bad_state)


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.uint8, torch.bool])
@pytest.mark.parametrize("step", STEPS, ids=lambda s: s.name)
def test_init_on_integer_or_bool_params_is_a_type_error(step: Step, dtype: torch.dtype) -> None:
    params = {**mlp_params(torch.float64), "enc.count": torch.ones(3, dtype=dtype)}
    snap = snapshot(params)
    with pytest.raises(TypeError, match=rf"params leaf 'enc\.count' has dtype {dtype}.*floating-point"):
        step.opt.init(params)
    assert_untouched(snap)


def _setup_step(step: Step, kw: dict[str, Any]) -> tuple[dict, dict, dict]:
    """Params, grads and a state after one step, so that nothing is trivially zero."""
    params = mlp_params(F64)
    grads = {k: torch.full_like(v, 0.5) for k, v in params.items()}
    state = step.opt.init(params, **step.init(kw))
    params, state = step.opt.step(params, grads, state, where=step.where, **step_kwargs(step, kw))
    return params, grads, state


def _raises_on_both_paths(exc: type, match: str, fn: Callable[[], Any], *trees: Any) -> None:
    """``fn()`` raises ``exc`` matching ``match`` on both paths, donated or not, and leaves
    ``trees`` as they were."""
    for path in ("fast", "composable"):
        snap = snapshot(*trees)
        with fr._dispatch.forced(path), pytest.raises(exc, match=match):
            fn()
        assert_untouched(snap)


@pytest.mark.parametrize("donate", [False, True])
@pytest.mark.parametrize("step,kw", CASES)
def test_a_bad_leaf_is_named_and_nothing_is_written(step: Step, kw: dict[str, Any], donate: bool) -> None:
    params, grads, state = _setup_step(step, kw)
    entry = next(k for k in state if k != "step")
    shape = {**state, entry: {**state[entry], "2.weight": torch.zeros(8, 3, dtype=F64)}}
    _raises_on_both_paths(ValueError, rf"state\['{entry}'\] leaf '2\.weight' has shape \(8, 3\)",
            _call(step, kw, params, grads, shape, donate=donate), params, grads, shape)
    dtype = {**grads, "0.weight": grads["0.weight"].float()}
    _raises_on_both_paths(ValueError, r"grads leaf '0\.weight' has dtype", _call(step, kw, params, dtype, state, donate=donate),
            params, dtype, state)
    missing = {**state, entry: {k: v for k, v in state[entry].items() if k != "2.weight"}}
    _raises_on_both_paths(ValueError, r"lacks params leaf '2\.weight'", _call(step, kw, params, grads, missing, donate=donate),
            params, grads, missing)
    count = {**state, "step": {**state["step"], "0.weight": torch.ones(2)}}
    _raises_on_both_paths(ValueError, r"state\['step'\] leaf '0\.weight' must be a 0-d tensor",
            _call(step, kw, params, grads, count, donate=donate), params, grads, count)


@pytest.mark.parametrize("value", BAD_NUMBERS)
@pytest.mark.parametrize("step,name", [pytest.param(s, n, id=f"{s.name}-{n}") for s in STEPS for n in s.hypers
                                       if n != "betas"])
def test_negative_or_non_finite_numbers_are_refused(step: Step, name: str, value: float) -> None:
    kw = step.configs[step.compose]
    params, grads, state = _setup_step(step, kw)
    _raises_on_both_paths(ValueError, rf"{name} must be a finite number", _call(step, kw, params, grads, state, **{name: value}),
            params, grads, state)


@pytest.mark.parametrize("betas,match", [((1.5, 0.99), r"beta1.*\[0\.0, 1\.0\]"), ((0.9, -0.1), r"beta2"),
                                         ((0.9, math.nan), r"beta2"), ((0.9,), r"betas must be a pair")])
def test_lion_betas_outside_0_1_or_not_a_pair(betas: Any, match: str) -> None:
    params, grads, state = _setup_step(LION, {"lr": 0.1})
    _raises_on_both_paths(ValueError if "pair" not in match else TypeError, match,
            lambda: fr.lion.step(params, grads, state, lr=0.1, betas=betas), params, grads, state)


def test_rmsprop_momentum_or_centered_without_their_state() -> None:
    params, grads, state = _setup_step(RMSPROP, {"lr": 0.1})
    _raises_on_both_paths(ValueError, r"momentum needs state\['momentum_buffer'\].*init\(params, momentum=True\)",
            lambda: fr.rmsprop.step(params, grads, state, lr=0.1, momentum=0.9), params, grads, state)
    _raises_on_both_paths(ValueError, r"momentum needs state\['momentum_buffer'\]",
            lambda: fr.rmsprop.step(params, grads, state, lr=0.1, momentum=torch.tensor(0.0)), params, grads, state)
    _raises_on_both_paths(ValueError, r"centered needs state\['grad_avg'\].*init\(params, centered=True\)",
            lambda: fr.rmsprop.step(params, grads, state, lr=0.1, centered=True), params, grads, state)
    # a bad momentum is named as such, not as a missing buffer
    _raises_on_both_paths(ValueError, r"momentum must be a finite number",
            lambda: fr.rmsprop.step(params, grads, state, lr=0.1, momentum=-0.5), params, grads, state)
    _raises_on_both_paths(TypeError, r"momentum must be a number or a tensor",
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
    _raises_on_both_paths(ValueError, r"fr\.muon: params leaf '0\.bias' has shape \(8,\); Muon updates matrices only.*where=",
            lambda: fr.muon.step(params, grads, state, lr=0.1, donate=donate), params, grads, state)
    conv = {**params, "c.weight": torch.ones(2, 3, 3, 3, dtype=F64)}
    conv_g = {k: torch.ones_like(v) for k, v in conv.items()}
    _raises_on_both_paths(ValueError, r"'c\.weight' has shape \(2, 3, 3, 3\)",
            lambda: fr.muon.step(conv, conv_g, fr.muon.init(conv), lr=0.1, where=fr.select.weights, donate=donate),
            conv, conv_g)
    # with where= selecting the matrices, the rest pass through
    new, _ = fr.muon.step(params, grads, state, lr=0.1, where=matrices)
    assert new["0.bias"] is params["0.bias"] and not torch.equal(new["0.weight"], params["0.weight"])


def test_muon_names_a_number_gradient_on_a_leaf_it_does_not_update() -> None:
    """A leaf Muon passes through is not read, but the engine holds it to recognize the next
    call: a number there once failed with "cannot create weak reference to 'float' object"."""
    params, grads, state = _setup_step(MUON, MUON.configs["default"])
    number = _replace(grads, "2.bias", 0.5)
    _raises_on_both_paths(TypeError, r"grads leaf '2\.bias'", _call(MUON, MUON.configs["default"], params, number, state),
            params, grads, state)


@pytest.mark.parametrize("bad,exc,match", [
    (dict(ns_steps=100), ValueError, r"ns_steps must be an int in \[0, 100\)"),
    (dict(ns_steps=2.0), ValueError, r"ns_steps"),
    (dict(ns_coefficients=(3.4, -4.7)), TypeError, r"ns_coefficients must be three"),
    (dict(ns_coefficients=(3.4, -4.7, torch.tensor(2.0))), TypeError, r"ns_coefficients"),
    (dict(ns_coefficients=(3.4, -4.7, math.inf)), TypeError, r"ns_coefficients"),
    (dict(adjust_lr_fn="rms"), ValueError, r"adjust_lr_fn must be one of"),
])
def test_muon_options_are_checked(bad: dict[str, Any], exc: type, match: str) -> None:
    params, grads, state = _setup_step(MUON, MUON.configs["default"])
    _raises_on_both_paths(exc, match, lambda: fr.muon.step(params, grads, state, lr=0.1, where=matrices, **bad),
            params, grads, state)


def test_init_and_step_size_refuse_what_they_cannot_use() -> None:
    params = mlp_params(F64)
    with pytest.raises(ValueError, match=r"initial_accumulator_value must be a finite number"):
        fr.adagrad.init(params, initial_accumulator_value=-0.1)
    with pytest.raises(ValueError, match=r"fr\.rmsprop\.step_size needs a state from fr\.rmsprop\.init"):
        fr.rmsprop.step_size(fr.adagrad.init(params), lr=0.1)
    with pytest.raises(ValueError, match=r"init\(params, centered=True\)"):
        fr.rmsprop.step_size(fr.rmsprop.init(params), lr=0.1, centered=True)
    with pytest.raises(ValueError, match=r"fr\.adagrad\.step_size needs a state"):
        fr.adagrad.step_size(fr.rmsprop.init(params), lr=0.1)
    with pytest.raises(ValueError, match=r"lr must be a finite number"):
        fr.adagrad.step_size(fr.adagrad.init(params), lr=-1.0)


@pytest.mark.parametrize("step,kw", CASES)
def test_params_that_require_grad_are_refused_unless_differentiable(step: Step, kw: dict[str, Any]) -> None:
    params = {k: v.requires_grad_() for k, v in mlp_params(F64).items()}
    grads = {k: torch.ones_like(v) for k, v in params.items()}
    state = step.opt.init({k: v.detach() for k, v in params.items()}, **step.init(kw))
    with pytest.raises(ValueError, match=r"params leaf '0\.weight' requires grad.*differentiable=True"):
        _call(step, kw, params, grads, state)()
    new, _ = _call(step, kw, params, grads, state, differentiable=True)()
    assert new["0.weight"].grad_fn is not None
