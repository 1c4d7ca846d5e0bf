"""The defects an adversarial probe found: each refused before anything is
written, or shown as NaN, with the leaf named. Every test here fails on the code before the
engine (checked once by running this file against it)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import torch

import funcreg as fr
from optim_helpers import assert_untouched, snapshot

STEPS = [
    pytest.param(fr.sgd, dict(momentum=0.9), id="sgd"),
    pytest.param(fr.adam, {}, id="adam"),
    pytest.param(fr.adamw, {}, id="adamw"),
]


def _tree() -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    params = {"w": torch.randn(3, 4, generator=g), "b": torch.randn(3, generator=g)}
    return params, {k: torch.randn(v.shape, generator=g) for k, v in params.items()}


# ------------------------------------------------------- nothing written before every check
@pytest.mark.parametrize("donate", [False, True])
@pytest.mark.parametrize("opt,kw", STEPS)
def test_an_integer_step_count_is_refused_before_anything_is_written(opt: Any, kw: dict, donate: bool) -> None:
    params, grads = _tree()
    state = opt.init(params)
    state["step"]["b"] = torch.zeros((), dtype=torch.int64)
    keep = snapshot(params, state)
    with pytest.raises(TypeError, match=r"state\['step'\] leaf 'b' has dtype torch.int64"):
        opt.step(params, grads, state, lr=0.1, donate=donate, **kw)
    assert_untouched(keep)


@pytest.mark.parametrize("opt,kw", STEPS)
def test_a_step_count_on_another_device_is_refused(opt: Any, kw: dict) -> None:
    """On the meta device the fused kernel does nothing while the counts would advance:
    a silently skipped step."""
    params, grads = _tree()
    state = opt.init(params)
    state["step"]["w"] = torch.zeros((), device="meta")
    keep = snapshot(params, {k: v for k, v in state.items() if k != "step"})
    for donate in (False, True):
        with pytest.raises(ValueError, match=r"state\['step'\] leaf 'w' lives on meta but the parameter lives on cpu"):
            opt.step(params, grads, state, lr=0.1, donate=donate, **kw)
    assert_untouched(keep)


def _inference(shape: tuple[int, ...]) -> torch.Tensor:
    with torch.inference_mode():
        return torch.randn(shape)


@pytest.mark.parametrize("call", [
    pytest.param(lambda p, g: fr.l1.prox(p, 0.1, 1.0, donate=True), id="prox"),
    pytest.param(lambda p, g: fr.project.box(p, -0.5, 0.5, donate=True), id="box"),
    pytest.param(lambda p, g: fr.adamw.step(p, g, fr.adamw.init(p), lr=0.1, donate=True), id="adamw"),
])
def test_an_inference_tensor_among_donated_leaves_is_refused_before_any_write(call: Callable[..., Any]) -> None:
    params, grads = _tree()
    params = {"a": params["w"], "z": _inference((3,))}
    grads = {"a": grads["w"], "z": torch.randn(3)}
    keep = snapshot({"a": params["a"]})
    with pytest.raises(ValueError, match=r"params leaf 'z'.*inference tensor"):
        call(params, grads)
    assert_untouched(keep)
    with torch.inference_mode():  # there, writing it is allowed
        call(params, grads)


def test_a_sparse_leaf_is_a_clear_error_naming_it() -> None:
    params, grads = _tree()
    sparse = {**params, "s": torch.eye(3).to_sparse()}
    for call in (lambda: fr.l1.prox(sparse, 0.1, 1.0), lambda: fr.l1.grad(sparse, 0.1),
                 lambda: fr.sgd.step(sparse, {**grads, "s": torch.eye(3)}, fr.sgd.init(params | {"s": torch.eye(3)}), lr=0.1)):
        with pytest.raises(TypeError, match=r"params leaf 's' is a torch.sparse_coo tensor"):
            call()
    state = fr.adam.init(params)
    bad = {**grads, "b": grads["b"].to_sparse()}
    with pytest.raises(TypeError, match=r"grads leaf 'b' is a torch.sparse_coo tensor"):
        fr.adam.step(params, bad, state, lr=0.1)


def test_meta_leaves_step_and_donate() -> None:
    """Shape inference on the meta device: the pure step runs, and two donated meta leaves
    (which have no memory) are no "shared memory"."""
    params = {"w": torch.empty(3, 4, device="meta"), "b": torch.empty(3, device="meta")}
    grads = {k: torch.empty_like(v) for k, v in params.items()}
    new, state = fr.sgd.step(params, grads, fr.sgd.init(params), lr=0.1, momentum=0.9)
    assert new["w"].device.type == "meta" and new["w"].shape == (3, 4)
    out = fr.l1.prox(params, 0.1, 1.0, donate=True)
    assert out["w"] is params["w"]
    fr.adamw.step(params, grads, fr.adamw.init(params), lr=0.1, donate=True)


# ------------------------------------------------------------------------------ NaN shows
NAN = torch.tensor(math.nan)


@pytest.mark.parametrize("call", [
    pytest.param(lambda p: fr.l0.prox(p, NAN, 1.0), id="l0-lam"),
    pytest.param(lambda p: fr.l0.prox(p, 0.1, NAN), id="l0-step"),
    pytest.param(lambda p: fr.mcp.prox(p, NAN, 4.0, gamma=3.0), id="mcp-lam-hard-regime"),
    pytest.param(lambda p: fr.mcp.prox(p, NAN, 1.0, gamma=3.0), id="mcp-lam-firm-regime"),
    pytest.param(lambda p: fr.mcp.prox(p, 0.1, NAN), id="mcp-step-tensor"),
    pytest.param(lambda p: fr.mcp.prox(p, 0.1, {k: torch.full_like(v, math.nan) for k, v in p.items()}),
                 id="mcp-step-per-element"),
    pytest.param(lambda p: fr.scad.prox(p, 0.1, 1.0, gamma=NAN), id="scad-gamma"),
    pytest.param(lambda p: fr.project.max_norm(p, NAN), id="max_norm"),
    pytest.param(lambda p: fr.project.l2_ball(p, NAN), id="l2_ball"),
])
def test_a_nan_hyperparameter_makes_the_result_nan(call: Callable[..., Any]) -> None:
    """As through the soft threshold: an op that decides by comparing with the
    hyperparameter must not turn NaN into "no change"."""
    params, _ = _tree()
    for path in ("fast", "composable"):
        with fr._dispatch.forced(path):
            out = call(params)
        for k, v in out.items():
            assert torch.isnan(v).all(), (path, k)
    assert torch.isnan(fr.l1.prox(params, NAN, 1.0)["w"]).all()  # the soft threshold, for reference


def test_a_nan_step_size_from_adam_shows_through_the_mcp_prox() -> None:
    params, grads = _tree()
    state = fr.adam.init(params)
    params, state = fr.adam.step(params, grads, state, lr=0.1)
    state["exp_avg_sq"]["w"] = torch.full((3, 4), math.nan)  # a diverged second moment
    out = fr.mcp.prox(params, 0.1, fr.adam.step_size(state, lr=0.1))
    assert torch.isnan(out["w"]).all() and not torch.isnan(out["b"]).any()


@pytest.mark.parametrize("what", ["prox", "grad", "value"])
def test_nuclear_norm_on_a_nan_leaf_names_the_leaf(what: str) -> None:
    params = {"a": torch.randn(3, 4), "b": torch.randn(3, 4)}
    params["b"][1, 2] = math.nan
    call = {"prox": lambda: fr.nuclear_norm.prox(params, 0.1, 1.0),
            "grad": lambda: fr.nuclear_norm.grad(params, 0.1),
            "value": lambda: fr.nuclear_norm(params, 0.1)}[what]
    for path in ("fast", "composable"):
        with fr._dispatch.forced(path), pytest.raises(ValueError, match=r"params leaf 'b'"):
            call()


# -------------------------------------------------------------- ensembles: no broadcasting
def test_update_where_and_converged_refuse_leaves_of_different_shapes() -> None:
    old = {"w": torch.zeros(2, 3), "b": torch.zeros(2)}
    new = {"w": torch.ones(2, 3), "b": torch.ones(2, 1)}  # would broadcast to (2, 2)
    with pytest.raises(ValueError, match=r"'b' has shape \(2, 1\)"):
        fr.update_where(torch.tensor(True), new, old)
    with pytest.raises(ValueError, match=r"'b' has shape \(2, 1\)"):
        fr.converged(old, new)


# ------------------------------------------------------------- params that require grad
@pytest.mark.parametrize("call", [
    pytest.param(lambda p, g: fr.sgd.step(p, g, fr.sgd.init(_detached(p)), lr=0.1), id="sgd"),
    pytest.param(lambda p, g: fr.adamw.step(p, g, fr.adamw.init(_detached(p)), lr=0.1), id="adamw"),
    pytest.param(lambda p, g: fr.l1.prox(p, 0.1, 1.0), id="prox"),
    pytest.param(lambda p, g: fr.l2.add_grad(g, p, 0.1), id="add_grad"),
    pytest.param(lambda p, g: fr.project.max_norm(p, 1.0), id="projection"),
])
def test_params_that_require_grad_are_refused(call: Callable[..., Any]) -> None:
    """``dict(model.named_parameters())``: the graph would grow with every step, and the
    module would never be updated."""
    model = torch.nn.Linear(4, 3)
    params = dict(model.named_parameters())
    grads = {k: torch.ones_like(v) for k, v in params.items()}
    with pytest.raises(ValueError, match=r"params leaf 'weight' requires grad and grad mode is on.*detach"):
        call(params, grads)
    with torch.no_grad():  # nothing records history there
        call(params, grads)


def _detached(p: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach() for k, v in p.items()}
