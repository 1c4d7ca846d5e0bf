"""Shared pieces for the tests of the steps (tests/test_steps_*.py, and the steps'
donation, defect and stacked-path tests).

Reference trajectories come from torch.optim itself, run on ``nn.Parameter``-free leaf
tensors with ``.grad`` set by hand, so that funcreg and torch.optim see exactly the same
gradient sequence. Trees are walked by hand (plain dicts of tensors), not with optree.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch

import funcreg as fr
from funcreg import _dispatch

# ------------------------------------------------------------------------------ devices
DEVICES = [
    pytest.param("cpu", id="cpu"),
    pytest.param(
        "cuda",
        id="cuda",
        marks=[
            pytest.mark.cuda,
            pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
        ],
    ),
]


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """torch's fused CPU kernels spin on a thread pool; on a small, busy machine that makes
    a 200-step trajectory on tiny tensors 100x slower. One intra-op thread per test, then
    restore whatever the session had."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# ------------------------------------------------------------------------------ trees
def mlp_params(dtype: torch.dtype = torch.float64, device: str = "cpu", seed: int = 0) -> dict[str, torch.Tensor]:
    """The parameters of a small MLP 4 -> 8 -> 3, as ``dict(model.named_parameters())``."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    return {k: v.detach().to(dtype=dtype, device=device).clone() for k, v in model.named_parameters()}


def mlp_forward(params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    h = torch.tanh(x @ params["0.weight"].T + params["0.bias"])
    return h @ params["2.weight"].T + params["2.bias"]


def grad_sequence(params: dict[str, torch.Tensor], n: int, seed: int = 1) -> list[dict[str, torch.Tensor]]:
    """``n`` fixed random gradient dicts shaped like ``params``."""
    g = torch.Generator().manual_seed(seed)
    return [
        {k: torch.randn(v.shape, generator=g, dtype=torch.float64).to(v.dtype).to(v.device) for k, v in params.items()}
        for _ in range(n)
    ]


def clone_tree(tree: Any) -> Any:
    if isinstance(tree, dict):
        return {k: clone_tree(v) for k, v in tree.items()}
    if isinstance(tree, torch.Tensor):
        return tree.clone()
    return tree


def tensors_of(tree: Any, prefix: str = "") -> list[tuple[str, torch.Tensor]]:
    """``[(path, tensor)]`` for every tensor in nested dicts / lists (None skipped)."""
    if isinstance(tree, dict):
        out = []
        for k, v in tree.items():
            out += tensors_of(v, f"{prefix}.{k}" if prefix else str(k))
        return out
    if isinstance(tree, (list, tuple)):
        out = []
        for i, v in enumerate(tree):
            out += tensors_of(v, f"{prefix}.{i}" if prefix else str(i))
        return out
    if isinstance(tree, torch.Tensor):
        return [(prefix, tree)]
    return []


def snapshot(*trees: Any) -> list[tuple[str, torch.Tensor, torch.Tensor, int]]:
    """(path, tensor, copy of its value, version counter) for every tensor in ``trees``."""
    return [(p, x, x.detach().clone(), x._version) for t in trees for p, x in tensors_of(t)]


def assert_untouched(snap: list[tuple[str, torch.Tensor, torch.Tensor, int]]) -> None:
    for path, x, value, version in snap:
        assert x._version == version, f"{path}: version counter {version} -> {x._version}"
        assert torch.equal(x, value), f"{path}: value changed"


def assert_tree_close(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], *, rtol: float, atol: float, what: str = "") -> None:
    assert list(actual) == list(expected), f"{what}: keys {list(actual)} != {list(expected)}"
    for k in expected:
        assert actual[k].dtype == expected[k].dtype, f"{what}{k}: dtype"
        assert actual[k].device == expected[k].device, f"{what}{k}: device"
        torch.testing.assert_close(actual[k], expected[k], rtol=rtol, atol=atol, msg=lambda m, k=k: f"{what}{k}: {m}")


def assert_trajectory_close(actual: list[dict[str, torch.Tensor]], expected: list[dict[str, torch.Tensor]], dtype: torch.dtype) -> None:
    """Every step's params, compared in one go (per key, stacked over steps)."""
    assert len(actual) == len(expected)
    stack = lambda traj: {k: torch.stack([p[k] for p in traj]) for k in traj[0]}  # noqa: E731
    a, e = stack(actual), stack(expected)
    for k in e:
        bad = ~torch.isclose(a[k], e[k], **tol(dtype)).reshape(len(actual), -1).all(dim=1)
        if bad.any():
            t = int(bad.nonzero()[0])
            assert_tree_close(actual[t], expected[t], **tol(dtype), what=f"step {t + 1}: ")
    assert_tree_close(actual[-1], expected[-1], **tol(dtype), what="last step: ")


def tol(dtype: torch.dtype) -> dict[str, float]:
    """Trajectory tolerance: 1e-10 in float64, float32's precision after 200 steps."""
    return dict(rtol=1e-10, atol=1e-10) if dtype == torch.float64 else dict(rtol=2e-5, atol=2e-5)


# ------------------------------------------------------------------------- torch.optim
def torch_trajectory(
    opt_cls: type, params: dict[str, torch.Tensor], grads: list[dict[str, Any]],
    groups: Callable[[dict[str, torch.Tensor]], list[dict[str, Any]]] | None = None, **kw: Any,
) -> list[dict[str, torch.Tensor]]:
    """torch.optim's params after every step of ``grads`` (a ``None`` gradient: no grad)."""
    ps = {k: v.clone() for k, v in params.items()}
    opt = opt_cls(groups(ps) if groups else list(ps.values()), **kw)
    out = []
    for g in grads:
        for k, t in ps.items():
            t.grad = None if g[k] is None else g[k].clone()
        opt.step()
        out.append(clone_tree(ps))
    return out


def fr_trajectory(
    opt: Any, params: dict[str, torch.Tensor], grads: list[dict[str, Any]],
    init: dict[str, Any] | None = None, **kw: Any,
) -> list[dict[str, torch.Tensor]]:
    state = opt.init(params, **(init or {}))
    out = []
    for g in grads:
        params, state = opt.step(params, g, state, **kw)
        out.append(params)
    return out


# ---------------------------------------------------------------------------- routes
ROUTES = ["fused", "fused-tensor-lr", "foreach", "composable"]
"""How a step is run:

* ``fused``: Python-number hyperparameters, default dispatch (fast path, torch's fused kernel);
* ``fused-tensor-lr``: the same with a 0-d tensor ``lr`` (the fused kernels take a tensor lr);
* ``foreach``: every hyperparameter a 0-d tensor in the leaves' dtype (fast path, foreach ops);
* ``composable``: Python numbers, per-leaf path forced.
"""

TENSOR_HYPERS = {
    "fused": (),
    "fused-tensor-lr": ("lr",),
    "foreach": ("lr", "momentum", "dampening", "weight_decay", "betas", "eps"),
    "composable": (),
}


def route_kwargs(route: str, kw: dict[str, Any], dtype: torch.dtype, device: str = "cpu") -> dict[str, Any]:
    """``kw`` with the hyperparameters that ``route`` passes as tensors turned into 0-d
    tensors of the leaves' dtype (float64 leaves get float64 tensors: 0.9 stays 0.9)."""
    out = dict(kw)
    for name in TENSOR_HYPERS[route]:
        if name not in out:
            continue
        v = out[name]
        if name == "betas":
            out[name] = tuple(torch.tensor(b, dtype=dtype, device=device) for b in v)
        else:
            out[name] = torch.tensor(v, dtype=dtype, device=device)
    return out


def full_kwargs(opt: Any, kw: dict[str, Any]) -> dict[str, Any]:
    """Spell out the defaults a route should turn into tensors (the foreach route needs
    every hyperparameter as a tensor, not only the ones a test names)."""
    out = dict(kw)
    if opt is fr.sgd:
        out.setdefault("momentum", 0.0)
        out.setdefault("dampening", 0.0)
        out.setdefault("weight_decay", 0.0)
    else:
        out.setdefault("betas", (0.9, 0.999))
        out.setdefault("eps", 1e-8)
        out.setdefault("weight_decay", 1e-2 if opt is fr.adamw else 0.0)
    return out


class RouteSpy:
    """Records which implementation each step ran: the fast flag of every dispatch and
    the fused kernels called."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch):
        self.fast: list[bool] = []
        self.fused: list[str] = []
        real_route = _dispatch.route

        def route(**kw: Any) -> str:
            chosen = real_route(**kw)
            self.fast.append(chosen == "fast")
            return chosen

        monkeypatch.setattr(_dispatch, "route", route)
        for name in ("_fused_sgd_", "_fused_adam_", "_fused_adamw_"):
            real = getattr(torch, name)

            def kernel(*a: Any, _real: Any = real, _name: str = name, **k: Any) -> Any:
                self.fused.append(_name)
                return _real(*a, **k)

            monkeypatch.setattr(torch, name, kernel)


@contextlib.contextmanager
def on_route(route: str) -> Iterator[None]:
    with _dispatch.forced("composable" if route == "composable" else None):
        yield


def check_route(spy: RouteSpy, route: str, *, expect_fused: bool) -> None:
    assert spy.fast, "no dispatch recorded"
    if route == "composable":
        assert not any(spy.fast), "composable route ran the fast path"
        assert not spy.fused, f"composable route called {spy.fused[0]}"
        return
    assert all(spy.fast), f"{route} route ran the composable path"
    if route == "foreach":
        assert not spy.fused, f"tensor hyperparameters reached {spy.fused[0]}"
    elif expect_fused:
        assert spy.fused, f"{route} route never called torch's fused kernel"
