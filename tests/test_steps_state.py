"""Optimizer state: None gradients, checkpoints, and purity of every step."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import funcreg as fr
from optim_helpers import (  # noqa: F401  (_one_thread is an autouse fixture)
    DEVICES,
    ROUTES,
    _one_thread,
    assert_untouched,
    full_kwargs,
    grad_sequence,
    mlp_params,
    on_route,
    route_kwargs,
    snapshot,
    tensors_of,
)

CONFIGS = [
    pytest.param(fr.sgd, {}, dict(lr=0.05), id="sgd"),
    pytest.param(fr.sgd, {}, dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.1, maximize=True), id="sgd-nesterov"),
    pytest.param(fr.sgd, {}, dict(lr=0.05, momentum=0.9, dampening=0.5, weight_decay=0.1), id="sgd-dampening"),
    pytest.param(fr.adam, {}, dict(lr=0.01, weight_decay=0.1, maximize=True), id="adam"),
    pytest.param(fr.adam, {"amsgrad": True}, dict(lr=0.01, amsgrad=True), id="adam-amsgrad"),
    pytest.param(fr.adamw, {"amsgrad": True}, dict(lr=0.01, weight_decay=0.1, amsgrad=True, maximize=True), id="adamw"),
]


def _kw(route: str, opt: Any, kw: dict, device: str = "cpu", dtype: torch.dtype = torch.float64) -> dict:
    return route_kwargs(route, full_kwargs(opt, kw), dtype, device)


def _state_leaves(state: dict, path: str) -> dict[str, Any]:
    """``{entry: leaf}`` of one parameter path across the state entries."""
    return {key: tree[path] for key, tree in state.items() if isinstance(tree, dict) and path in tree}


# ------------------------------------------------------------------------ None gradients
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("opt,init,kw", CONFIGS)
def test_none_gradient_leaves_param_and_state_untouched(opt: Any, init: dict, kw: dict, route: str, device: str) -> None:
    params = mlp_params(torch.float64, device)
    grads = grad_sequence(params, 4)
    state = opt.init(params, **init)
    step_kw = _kw(route, opt, kw, device)
    with on_route(route):
        for t, g in enumerate(grads):
            g = {**g, "0.bias": None}
            if t == 0:
                g["2.weight"] = None  # no gradient on the very first step either
            before = _state_leaves(state, "0.bias")
            before_w = _state_leaves(state, "2.weight")
            snap = snapshot(params["0.bias"], before)
            new_params, new_state = opt.step(params, g, state, **step_kw)

            # same objects, same values
            assert new_params["0.bias"] is params["0.bias"]
            after = _state_leaves(new_state, "0.bias")
            assert after.keys() == before.keys()
            for key in before:
                assert after[key] is before[key], f"state[{key!r}]['0.bias'] was replaced"
            assert_untouched(snap)
            if t == 0:
                assert new_params["2.weight"] is params["2.weight"]
                for key, leaf in _state_leaves(new_state, "2.weight").items():
                    assert leaf is before_w[key]
            # the leaves with a gradient did move
            assert not torch.equal(new_params["0.weight"], params["0.weight"])
            params, state = new_params, new_state


@pytest.mark.parametrize("opt,init,kw", CONFIGS)
def test_all_gradients_none_is_a_no_op(opt: Any, init: dict, kw: dict) -> None:
    params = mlp_params(torch.float64)
    state = opt.init(params, **init)
    new_params, new_state = opt.step(params, {k: None for k in params}, state, **kw)
    for k in params:
        assert new_params[k] is params[k]
        for key, leaf in _state_leaves(state, k).items():
            assert _state_leaves(new_state, k)[key] is leaf


# --------------------------------------------------------------------------- checkpoints
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("route", ["fused", "foreach", "composable"])
@pytest.mark.parametrize("opt,init,kw", CONFIGS)
def test_state_survives_save_and_load_and_the_run_continues_bit_identically(
    opt: Any, init: dict, kw: dict, route: str, device: str, tmp_path: Any
) -> None:
    params = mlp_params(torch.float64, device)
    grads = grad_sequence(params, 10)
    for g in grads[::3]:
        g["2.bias"] = None  # a state where leaves have taken different numbers of steps
    step_kw = _kw(route, opt, kw, device)
    state = opt.init(params, **init)
    with on_route(route):
        for g in grads[:5]:
            params, state = opt.step(params, g, state, **step_kw)

    path = tmp_path / "checkpoint.pt"
    torch.save({"params": params, "state": state}, path)
    loaded = torch.load(path, weights_only=True)
    assert loaded["state"].keys() == state.keys()
    for (p_a, a), (p_b, b) in zip(tensors_of(loaded["state"]), tensors_of(state)):
        assert p_a == p_b and a.dtype == b.dtype and a.device == b.device and torch.equal(a, b)

    run_a = (params, state)
    run_b = (loaded["params"], loaded["state"])
    with on_route(route):
        for t, g in enumerate(grads[5:]):
            run_a = opt.step(*run_a[:1], g, run_a[1], **step_kw)
            run_b = opt.step(*run_b[:1], g, run_b[1], **step_kw)
            for (pa, a), (pb, b) in zip(tensors_of(run_a), tensors_of(run_b)):
                assert pa == pb
                assert torch.equal(a, b), f"step {t + 6}: {pa} differs after restore"


# -------------------------------------------------------------------------------- purity
def _storages(tree: Any) -> set[int]:
    return {x.untyped_storage().data_ptr() for _, x in tensors_of(tree) if x.numel()}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("opt,init,kw", CONFIGS)
def test_step_mutates_nothing(opt: Any, init: dict, kw: dict, route: str, device: str) -> None:
    """Values and version counters of params, grads and state are unchanged after every
    step, on every route; the outputs share no memory with the inputs."""
    params = mlp_params(torch.float64, device)
    state = opt.init(params, **init)
    step_kw = _kw(route, opt, kw, device)
    hypers = [v for v in step_kw.values() if isinstance(v, torch.Tensor)] + list(step_kw.get("betas", ()))
    with on_route(route):
        for g in grad_sequence(params, 3):
            snap = snapshot(params, g, state, [h for h in hypers if isinstance(h, torch.Tensor)])
            new_params, new_state = opt.step(params, g, state, **step_kw)
            assert_untouched(snap)
            inputs = _storages(params) | _storages(g) | _storages(state)
            passed = {id(x) for _, x in tensors_of((params, state))}
            for path, x in tensors_of((new_params, new_state)):
                # a leaf the step does not update may be passed through as it is
                if id(x) not in passed and x.numel():
                    assert x.untyped_storage().data_ptr() not in inputs, f"output {path} aliases an input"
            assert all(new_params[k] is not params[k] for k in params), "a param was not updated"
            params, state = new_params, new_state


@pytest.mark.parametrize("route", ["fused", "composable"])
def test_step_size_mutates_nothing(route: str) -> None:
    params = mlp_params(torch.float64)
    state = fr.adam.init(params, amsgrad=True)
    params, state = fr.adam.step(params, grad_sequence(params, 1)[0], state, lr=1e-3, amsgrad=True)
    snap = snapshot(state)
    with on_route(route):
        eta = fr.adam.step_size(state, lr=0.01)
    assert_untouched(snap)
    assert not (_storages(eta) & _storages(state))


@pytest.mark.parametrize("opt,init,kw", CONFIGS)
def test_init_is_zero_and_shaped_like_params(opt: Any, init: dict, kw: dict) -> None:
    params = {**mlp_params(torch.float64), "extra": torch.ones(2, dtype=torch.float32)}
    state = opt.init(params, **init)
    assert isinstance(state, dict)
    for key, tree in state.items():
        assert list(tree) == list(params), key
        for k, leaf in tree.items():
            if leaf is None:
                continue
            assert torch.equal(leaf, torch.zeros_like(leaf)), (key, k)
            if leaf.ndim:
                assert leaf.shape == params[k].shape and leaf.dtype == params[k].dtype
    # and a step keeps every leaf's dtype and device
    grads = {k: torch.ones_like(v) for k, v in params.items()}
    new, _ = opt.step(params, grads, state, **kw)
    for k in params:
        assert new[k].dtype == params[k].dtype and new[k].device == params[k].device


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("route", ["fused", "foreach", "composable"])
@pytest.mark.parametrize("opt,init,kw", CONFIGS)
def test_cuda_matches_cpu(opt: Any, init: dict, kw: dict, route: str) -> None:
    cpu = mlp_params(torch.float64)
    gpu = {k: v.cuda() for k, v in cpu.items()}
    grads = grad_sequence(cpu, 20)
    s_cpu, s_gpu = opt.init(cpu, **init), opt.init(gpu, **init)
    with on_route(route):
        for g in grads:
            cpu, s_cpu = opt.step(cpu, g, s_cpu, **_kw(route, opt, kw, "cpu"))
            gpu, s_gpu = opt.step(gpu, {k: v.cuda() for k, v in g.items()}, s_gpu, **_kw(route, opt, kw, "cuda"))
    for k in cpu:
        assert gpu[k].is_cuda
        torch.testing.assert_close(gpu[k].cpu(), cpu[k], rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------------------ dtypes kept
@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("opt,init,kw", CONFIGS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=str)
def test_every_leaf_keeps_its_dtype(opt: Any, init: dict, kw: dict, route: str, dtype: torch.dtype) -> None:
    """A 0-d half-precision leaf meets 0-d float32 scalars (Adam's bias corrections):
    an out-of-place op would promote it, the step must not."""
    params = {"w": torch.randn(3, 2).to(dtype), "s": torch.tensor(0.5, dtype=dtype)}
    grads = {"w": torch.randn(3, 2).to(dtype), "s": torch.tensor(0.25, dtype=dtype)}
    state = opt.init(params, **init)
    with on_route(route):
        new, new_state = opt.step(params, grads, state, **_kw(route, opt, kw, dtype=dtype))
    for k in params:
        assert new[k].dtype == dtype, k
        for key, tree in new_state.items():
            if key != "step":
                assert tree[k].dtype == dtype, (key, k)
