"""The stacked path (funcreg/_stacked.py): under ``vmap`` alone every family, projection
and step runs its multi-tensor body on the stacked ensemble tensors, and gives what the
per-leaf path and a Python loop over the members give: with batched λ, lr and step,
``in_dims`` other than 0, partly batched trees, and nested ``vmap``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch.func import vmap

import funcreg as fr
from funcreg import _stacked
from registry import PROJECTIONS, VARIANTS, Step, stacked_cases, step_kwargs

F64 = torch.float64
K = 3
SHAPES = {"a.weight": (4, 3), "a.bias": (4,), "c.weight": (2, 3, 2), "s": ()}
LAMS = torch.tensor([0.05, 0.3, 1.2], dtype=F64)
STEPS = torch.tensor([0.5, 1.0, 4.0], dtype=F64)  # MCP's and SCAD's regimes both


def _tree(seed: int, batch: tuple[int, ...] = ()) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn((*batch, *s), generator=g, dtype=F64) for k, s in SHAPES.items()}


def _stack(outs: list[Any]) -> Any:
    return {k: torch.stack([o[k] for o in outs]) for k in outs[0]}


def _member(tree: dict[str, torch.Tensor], i: int) -> dict[str, torch.Tensor]:
    return {k: v[i] for k, v in tree.items()}


def _close(a: Any, b: Any, what: str) -> None:
    assert list(a) == list(b), what
    for k in b:
        torch.testing.assert_close(a[k], b[k], rtol=1e-10, atol=1e-12, msg=lambda m: f"{what} {k}: {m}")


@pytest.fixture
def stacked(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many calls took the stacked path."""
    calls: list[int] = []
    real = _stacked.run

    def spy(*args: Any) -> Any:
        out = real(*args)
        if out is not None:
            calls.append(len(next(iter(out.values()))))
        return out

    monkeypatch.setattr(_stacked, "run", spy)
    return calls


def _both(fn: Callable[..., Any], *args: Any, in_dims: Any = 0, stacked: list[int]) -> Any:
    """``vmap(fn)`` on the stacked path, checked against the per-leaf path."""
    before = len(stacked)
    got = vmap(fn, in_dims=in_dims)(*args)
    assert len(stacked) > before, "the stacked path was not taken"
    with fr._dispatch.forced("composable"):
        want = vmap(fn, in_dims=in_dims)(*args)
    _close(got, want, "stacked vs per-leaf")
    return got


@pytest.mark.parametrize("name", list(VARIANTS))
def test_every_family_on_stacked_members_with_batched_lam_and_step(name: str, stacked: list[int]) -> None:
    penalty, params, grads = VARIANTS[name].penalty, _tree(0, (K,)), _tree(1, (K,))
    opts = VARIANTS[name].options(_member(params, 0))
    members = range(K)
    if "prox" not in penalty.without:
        got = _both(lambda p, a, s: penalty.prox(p, a, s, **opts), params, LAMS, STEPS, stacked=stacked)
        _close(got, _stack([penalty.prox(_member(params, i), LAMS[i], STEPS[i], **opts) for i in members]), "loop")
    if "grad" not in penalty.without:
        got = _both(lambda g, p, a: penalty.add_grad(g, p, a, **opts), grads, params, LAMS, stacked=stacked)
        _close(got, _stack([penalty.add_grad(_member(grads, i), _member(params, i), LAMS[i], **opts)
                            for i in members]), "loop")
        got = _both(lambda p, a: penalty.grad(p, a, **opts), params, LAMS, stacked=stacked)
        _close(got, _stack([penalty.grad(_member(params, i), LAMS[i], **opts) for i in members]), "loop")


@pytest.mark.parametrize("name", list(PROJECTIONS))
def test_every_projection_on_stacked_members(name: str, stacked: list[int]) -> None:
    project, params = PROJECTIONS[name], _tree(2, (K,))
    got = _both(project, params, LAMS, stacked=stacked)
    _close(got, _stack([project(_member(params, i), LAMS[i]) for i in range(K)]), "loop")


def test_lam_batched_over_captured_params_in_dims_and_partly_batched_trees(stacked: list[int]) -> None:
    params, grads = _tree(3), _tree(4, (K,))
    # params captured from outside vmap (not batched), λ batched
    got = _both(lambda a: fr.l1.prox(params, a, 1.0), LAMS, stacked=stacked)
    _close(got, _stack([fr.l1.prox(params, a, 1.0) for a in LAMS]), "captured params")
    # stacked along dim 1 (and along dim 0 for the 0-d leaf), a per-leaf λ tree
    moved = {k: (v.movedim(0, 1) if v.ndim > 1 else v) for k, v in _tree(5, (K,)).items()}
    dims = {k: (1 if v.ndim > 1 else 0) for k, v in moved.items()}
    got = _both(lambda p, a: fr.group_lasso.prox(p, {"a.weight": a, "a.bias": 0.2, "c.weight": a, "s": 0.1}, 0.5),
                moved, LAMS, in_dims=(dims, 0), stacked=stacked)
    members = [{k: (v.select(dims[k], i)) for k, v in moved.items()} for i in range(K)]
    _close(got, _stack([fr.group_lasso.prox(m, {"a.weight": a, "a.bias": 0.2, "c.weight": a, "s": 0.1}, 0.5)
                        for m, a in zip(members, LAMS)]), "in_dims")
    # a partly batched tree: the gradients of two leaves batched, of the others shared
    part = {k: (v if k in ("a.weight", "s") else v[0]) for k, v in grads.items()}
    pdims = {k: (0 if k in ("a.weight", "s") else None) for k in grads}
    got = _both(lambda g, a: fr.l2.add_grad(g, params, a), part, LAMS, in_dims=(pdims, 0), stacked=stacked)
    _close(got, _stack([fr.l2.add_grad({k: (v[i] if pdims[k] == 0 else v) for k, v in part.items()}, params, a)
                        for i, a in enumerate(LAMS)]), "partly batched")


def test_nested_vmap_over_a_grid_of_lam_and_members(stacked: list[int]) -> None:
    params = _tree(6, (K,))
    grid = torch.tensor([[0.1, 0.5], [0.2, 0.7], [0.0, 1.5]], dtype=F64)  # (members, λ)

    def inner(p: Any, lams: torch.Tensor) -> Any:
        return vmap(lambda a: fr.sparse_group_lasso.prox(p, a, 0.5, l1_ratio=0.5))(lams)

    got = _both(inner, params, grid, stacked=stacked)
    for i in range(K):
        for j in range(2):
            want = fr.sparse_group_lasso.prox(_member(params, i), grid[i, j], 0.5, l1_ratio=0.5)
            _close({k: v[i, j] for k, v in got.items()}, want, f"member {i}, lam {j}")


@pytest.mark.parametrize("step,kw", stacked_cases())
def test_every_step_on_stacked_members_with_batched_lr(step: Step, kw: dict[str, Any], stacked: list[int]) -> None:
    """Every step of the registry whose per-leaf path is exact under vmap (fr.muon's is
    tested in tests/test_steps_compose.py), lr batched: stacked = per-leaf = a loop."""
    init = step.init(kw)
    kw = {k: v for k, v in step_kwargs(step, kw).items() if k != "lr"}
    params = _tree(7, (K,))
    lrs = torch.tensor([0.01, 0.1, 0.3], dtype=F64)
    seq = [_tree(10 + t, (K,)) for t in range(3)]

    def run(p: Any, lr: torch.Tensor, *gs: Any) -> Any:
        s = step.opt.init(p, **init)
        for g in gs:
            p, s = step.opt.step(p, g, s, lr=lr, **kw)
        return {**p, **{f"state.{k}": v for k, v in s.items() if k != "step" for v in [v["a.weight"]]}}

    got = _both(run, params, lrs, *seq, stacked=stacked)
    loop = _stack([run(_member(params, i), lrs[i], *(_member(g, i) for g in seq)) for i in range(K)])
    _close(got, loop, "loop")


def test_donated_steps_on_the_stacked_path_write_into_the_ensemble(stacked: list[int]) -> None:
    params, grads = _tree(8, (K,)), _tree(11, (K,))
    state = vmap(fr.adamw.init)(params)  # its step counts: one per leaf, expanded over the members
    lrs = torch.tensor([0.01, 0.1, 0.3], dtype=F64)
    step = lambda donate: vmap(lambda p, g, s, lr: fr.adamw.step(p, g, s, lr=lr, donate=donate))  # noqa: E731
    with pytest.raises(ValueError, match=r"state\['step'\] leaf '.*'.*overlap in memory"):
        step(True)(params, grads, state, lrs)
    state = fr.replicate(fr.adamw.init(_member(params, 0)), K)
    want_p, want_s = step(False)(params, grads, state, lrs)
    ptrs = {k: v.data_ptr() for k, v in params.items()}
    got_p, got_s = step(True)(params, grads, state, lrs)
    assert stacked
    for k in params:
        assert torch.equal(params[k], want_p[k]) and params[k].data_ptr() == ptrs[k], k
        assert torch.equal(state["exp_avg"][k], want_s["exp_avg"][k]), k
        assert torch.equal(got_p[k], want_p[k]), k


def test_grad_and_jacrev_take_the_per_leaf_path(stacked: list[int]) -> None:
    params = _tree(12)
    loss = lambda p: sum((v ** 2).sum() for v in fr.l1.prox(p, 0.1, 1.0).values())  # noqa: E731
    vmap(torch.func.grad(loss))(_tree(13, (K,)))
    torch.func.jacrev(lambda a: fr.l1.prox(params, a, 1.0)["a.weight"])(torch.tensor(0.2, dtype=F64))
    assert not stacked


def test_nested_vmap_with_batch_dims_anywhere_and_levels_that_batch_nothing(stacked: list[int]) -> None:
    """Each level's batch dim brought to the front wherever it sits (the inner level's at
    the end of some leaves), a leaf batched at neither level, and an outer level that
    batches none of the call's tensors."""
    params = _tree(14, (K, 2))
    moved = {k: (v.movedim(1, -1) if v.ndim > 2 else v) for k, v in params.items()}
    inner = {k: (-1 if v.ndim > 2 else 0) for k, v in params.items()}
    shared = _tree(15)["c.weight"]

    def f(p: Any, lam: torch.Tensor) -> Any:
        return vmap(lambda q: fr.group_lasso.prox({**q, "shared": shared}, lam, 0.5, dim=-1), in_dims=(inner,))(p)

    got = _both(f, moved, LAMS, stacked=stacked)
    for i in range(K):
        for j in range(2):
            member = {k: v[i, j] for k, v in params.items()}
            want = fr.group_lasso.prox({**member, "shared": shared}, LAMS[i], 0.5, dim=-1)
            _close({k: v[i, j] for k, v in got.items()}, want, f"member {i}, inner {j}")
    before = len(stacked)
    got = vmap(lambda _: vmap(lambda p: fr.l1.prox(p, 0.3, 1.0))(params))(torch.arange(2))
    assert len(stacked) > before
    _close({k: v[1] for k, v in got.items()}, fr.l1.prox(params, 0.3, 1.0), "outer level batching nothing")


def test_a_torch_without_the_functorch_primitives_takes_the_per_leaf_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """The stacked path rests on private functorch primitives: on a torch without one of
    them, vmap gives the same results on the per-leaf path, not an error."""
    import importlib

    monkeypatch.delattr(torch._C._functorch, "_unwrap_batched")
    try:
        importlib.reload(_stacked)
        assert not _stacked.AVAILABLE
        calls: list[Any] = []
        monkeypatch.setattr(_stacked, "run", lambda *args: calls.append(args))
        params, grads, lrs = _tree(16, (K,)), _tree(17, (K,)), torch.tensor([0.01, 0.1, 0.3], dtype=F64)
        got = vmap(lambda p, a: fr.l1.prox(p, a, 1.0))(params, LAMS)
        _close(got, _stack([fr.l1.prox(_member(params, i), LAMS[i], 1.0) for i in range(K)]), "prox")
        state = fr.replicate(fr.adam.init(_member(params, 0)), K)
        got, _ = vmap(lambda p, g, s, lr: fr.adam.step(p, g, s, lr=lr, donate=True))(params, grads, state, lrs)
        one = fr.adam.init(_member(params, 0))
        _close(got, _stack([fr.adam.step(_member(params, i), _member(grads, i), one, lr=lrs[i])[0]
                            for i in range(K)]), "donated step")
        assert not calls
    finally:
        monkeypatch.undo()
        importlib.reload(_stacked)
    assert _stacked.AVAILABLE
