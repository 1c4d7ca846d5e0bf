"""Optimizer state: None gradients, checkpoints, and purity of every step of the registry
(tests/registry.py: each Step's ``state`` configs)."""

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
    grad_sequence,
    mlp_params,
    on_route,
    snapshot,
    tensors_of,
)
from registry import Step, state_cases, step_kwargs, step_route_kwargs


def _run(step: Step, kw: dict[str, Any], route: str, device: str = "cpu",
         dtype: torch.dtype = torch.float64) -> tuple[dict[str, Any], dict[str, Any]]:
    """(init kwargs, step kwargs) of a config on ``route``; ``where`` the step's leaves."""
    kw = step_route_kwargs(step, kw, route, dtype, device)
    return step.init(kw), {**step_kwargs(step, kw), "where": step.where}


def _updated(step: Step, params: dict[str, torch.Tensor]) -> list[str]:
    return [k for k, v in params.items() if step.where is None or step.where(k, v)]


def _state_leaves(state: dict, path: str) -> dict[str, Any]:
    """``{entry: leaf}`` of one parameter path across the state entries."""
    return {key: tree[path] for key, tree in state.items() if isinstance(tree, dict) and path in tree}


# ------------------------------------------------------------------------ None gradients
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("step,kw", state_cases())
def test_none_gradient_leaves_param_and_state_untouched(step: Step, kw: dict, route: str, device: str) -> None:
    params = mlp_params(torch.float64, device)
    grads = grad_sequence(params, 4)
    init, step_kw = _run(step, kw, route, device)
    state = step.opt.init(params, **init)
    with on_route(route):
        for t, g in enumerate(grads):
            g = {**g, "0.bias": None}
            if t == 0:
                g["2.weight"] = None  # no gradient on the very first step either
            before = _state_leaves(state, "0.bias")
            before_w = _state_leaves(state, "2.weight")
            snap = snapshot(params["0.bias"], before)
            new_params, new_state = step.opt.step(params, g, state, **step_kw)

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


@pytest.mark.parametrize("step,kw", state_cases())
def test_all_gradients_none_is_a_no_op(step: Step, kw: dict) -> None:
    params = mlp_params(torch.float64)
    init, step_kw = _run(step, kw, "fused")
    state = step.opt.init(params, **init)
    new_params, new_state = step.opt.step(params, {k: None for k in params}, state, **step_kw)
    for k in params:
        assert new_params[k] is params[k]
        for key, leaf in _state_leaves(state, k).items():
            assert _state_leaves(new_state, k)[key] is leaf


# --------------------------------------------------------------------------- checkpoints
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("route", ["fused", "foreach", "composable"])
@pytest.mark.parametrize("step,kw", state_cases())
def test_state_survives_save_and_load_and_the_run_continues_bit_identically(
    step: Step, kw: dict, route: str, device: str, tmp_path: Any
) -> None:
    params = mlp_params(torch.float64, device)
    grads = grad_sequence(params, 10)
    for g in grads[::3]:
        g["2.bias"] = None  # a state where leaves have taken different numbers of steps
    init, step_kw = _run(step, kw, route, device)
    state = step.opt.init(params, **init)
    with on_route(route):
        for g in grads[:5]:
            params, state = step.opt.step(params, g, state, **step_kw)

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
            run_a = step.opt.step(*run_a[:1], g, run_a[1], **step_kw)
            run_b = step.opt.step(*run_b[:1], g, run_b[1], **step_kw)
            for (pa, a), (pb, b) in zip(tensors_of(run_a), tensors_of(run_b)):
                assert pa == pb
                assert torch.equal(a, b), f"step {t + 6}: {pa} differs after restore"


# -------------------------------------------------------------------------------- purity
def _storages(tree: Any) -> set[int]:
    return {x.untyped_storage().data_ptr() for _, x in tensors_of(tree) if x.numel()}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("step,kw", state_cases())
def test_step_mutates_nothing(step: Step, kw: dict, route: str, device: str) -> None:
    """Values and version counters of params, grads and state are unchanged after every
    step, on every route; the outputs share no memory with the inputs."""
    params = mlp_params(torch.float64, device)
    init, step_kw = _run(step, kw, route, device)
    state = step.opt.init(params, **init)
    hypers = [v for v in step_kw.values() if isinstance(v, torch.Tensor)] + list(step_kw.get("betas", ()))
    with on_route(route):
        for g in grad_sequence(params, 3):
            snap = snapshot(params, g, state, [h for h in hypers if isinstance(h, torch.Tensor)])
            new_params, new_state = step.opt.step(params, g, state, **step_kw)
            assert_untouched(snap)
            inputs = _storages(params) | _storages(g) | _storages(state)
            passed = {id(x) for _, x in tensors_of((params, state))}
            for path, x in tensors_of((new_params, new_state)):
                # a leaf the step does not update may be passed through as it is
                if id(x) not in passed and x.numel():
                    assert x.untyped_storage().data_ptr() not in inputs, f"output {path} aliases an input"
            assert all(new_params[k] is not params[k] for k in _updated(step, params)), "a param was not updated"
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


@pytest.mark.parametrize("step,kw", state_cases())
def test_init_is_zero_and_shaped_like_params(step: Step, kw: dict) -> None:
    """Every state entry zero (or the step's ``initial`` value), shaped like its leaf."""
    params = {**mlp_params(torch.float64), "extra": torch.ones(2, dtype=torch.float32)}
    init, step_kw = _run(step, kw, "fused")
    state = step.opt.init(params, **init)
    initial = step.initial(kw)
    assert isinstance(state, dict)
    for key, tree in state.items():
        assert list(tree) == list(params), key
        for k, leaf in tree.items():
            if leaf is None:
                continue
            assert torch.equal(leaf, torch.full_like(leaf, initial.get(key, 0.0))), (key, k)
            if leaf.ndim:
                assert leaf.shape == params[k].shape and leaf.dtype == params[k].dtype
    # and a step keeps every leaf's dtype and device
    grads = {k: torch.ones_like(v) for k, v in params.items()}
    new, _ = step.opt.step(params, grads, state, **step_kw)
    for k in params:
        assert new[k].dtype == params[k].dtype and new[k].device == params[k].device


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("route", ["fused", "foreach", "composable"])
@pytest.mark.parametrize("step,kw", state_cases())
def test_cuda_matches_cpu(step: Step, kw: dict, route: str) -> None:
    cpu = mlp_params(torch.float64)
    gpu = {k: v.cuda() for k, v in cpu.items()}
    grads = grad_sequence(cpu, 20)
    (init, kw_cpu), (_, kw_gpu) = _run(step, kw, route, "cpu"), _run(step, kw, route, "cuda")
    s_cpu, s_gpu = step.opt.init(cpu, **init), step.opt.init(gpu, **init)
    with on_route(route):
        for g in grads:
            cpu, s_cpu = step.opt.step(cpu, g, s_cpu, **kw_cpu)
            gpu, s_gpu = step.opt.step(gpu, {k: v.cuda() for k, v in g.items()}, s_gpu, **kw_gpu)
    for k in cpu:
        assert gpu[k].is_cuda
        torch.testing.assert_close(gpu[k].cpu(), cpu[k], rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------------------ dtypes kept
@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("step,kw", state_cases())
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=str)
def test_every_leaf_keeps_its_dtype(step: Step, kw: dict, route: str, dtype: torch.dtype) -> None:
    """A 0-d half-precision leaf meets 0-d float32 scalars (Adam's bias corrections):
    an out-of-place op would promote it, the step must not."""
    params = {"w": torch.randn(3, 2).to(dtype), "s": torch.tensor(0.5, dtype=dtype)}
    grads = {"w": torch.randn(3, 2).to(dtype), "s": torch.tensor(0.25, dtype=dtype)}
    init, step_kw = _run(step, kw, route, dtype=dtype)
    state = step.opt.init(params, **init)
    with on_route(route):
        new, new_state = step.opt.step(params, grads, state, **step_kw)
    for k in params:
        assert new[k].dtype == dtype, k
        for key, tree in new_state.items():
            if key != "step":
                assert tree[k].dtype == dtype, (key, k)
