"""The engine's plan cache (funcreg/_engine.py, docs/design.md "Plans"): a plan is reused
only for the same structure, leaf metadata, ``where`` and hyperparameter kinds; anything
else gets a fresh plan, and values are never cached."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import funcreg as fr
from funcreg import _engine


@pytest.fixture
def builds(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the ops whose plan was built (not recalled) during the test."""
    seen: list[str] = []
    real = _engine._plan

    def spy(op: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append(op.name)
        return real(op, *args, **kwargs)

    monkeypatch.setattr(_engine, "_plan", spy)
    _engine._PLANS.clear()
    for op in _all_ops():
        op.recent = []
    return seen


def _all_ops() -> list[Any]:
    ops = [op for fam in (fr.l1, fr.l2, fr.group_lasso, fr.elastic_net) for op in fam._ops.values()]
    return ops + [fr.sgd._plain, fr.sgd._momentum, *fr.adamw._ops.values(), *fr.adam._ops.values()]


def _tree(seed: int = 0, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"w": torch.randn(3, 4, generator=g).to(dtype), "b": torch.randn(3, generator=g).to(dtype)}


def _soft(x: torch.Tensor, t: float) -> torch.Tensor:
    return x - x.clamp(-t, t)


def test_the_same_structure_reuses_its_plan(builds: list[str]) -> None:
    p = _tree()
    for _ in range(3):
        fr.l1.prox(p, 0.1, 1.0)
    q = _tree(1)  # other tensors of the same metadata: recalled by metadata
    fr.l1.prox(q, 0.1, 1.0)
    fr.l1.prox(p, torch.tensor(0.3), 1.0)  # a tensor λ is another kind: another plan
    fr.l1.prox(p, torch.tensor(0.5), 1.0)  # ... but not another value
    assert builds == ["fr.l1.prox", "fr.l1.prox"]


@pytest.mark.parametrize("change", ["structure", "key-order", "nested", "shape", "dtype", "device", "strides"])
def test_a_changed_tree_gets_a_fresh_plan_and_the_right_answer(builds: list[str], change: str) -> None:
    p = _tree()
    fr.l1.prox(p, 0.3, 1.0)
    q = {
        "structure": {**p, "extra": torch.randn(2)},
        "key-order": {"b": p["b"], "w": p["w"]},
        "nested": {"layer": {"w": p["w"]}, "b": p["b"]},
        "shape": {"w": torch.randn(4, 3), "b": p["b"]},
        "dtype": {"w": p["w"].double(), "b": p["b"]},
        "device": {"w": p["w"], "b": torch.empty(3, device="meta")},
        "strides": {"w": torch.randn(4, 3).t(), "b": p["b"]},
    }[change]
    out = fr.l1.prox(q, 0.3, 1.0)
    assert len(builds) == 2
    assert list(out) == list(q)
    for k, v in q.items():
        if isinstance(v, dict):
            torch.testing.assert_close(out[k]["w"], _soft(v["w"], 0.3))
        elif v.device.type != "meta":
            assert out[k].dtype == v.dtype and out[k].shape == v.shape
            torch.testing.assert_close(out[k], _soft(v, 0.3))


@pytest.mark.parametrize("change", ["resize_", "transpose_", "data"])
def test_a_leaf_changed_in_place_is_looked_at_again(change: str) -> None:
    """The same tensor objects are recognized only unmoved: an in-place metadata change
    moves the version counter, a new ``.data`` the address."""
    params = _tree()
    state = fr.sgd.init(params)
    grads = {k: torch.ones_like(v) for k, v in params.items()}
    fr.sgd.step(params, grads, state, lr=0.1, momentum=0.9, donate=True)
    w = params["w"]
    if change == "resize_":
        w.resize_(2, 6)
    elif change == "transpose_":
        w.transpose_(0, 1)
    else:
        w.data = torch.zeros(4, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"'w' has (shape|dtype)"):
        fr.sgd.step(params, grads, state, lr=0.1, momentum=0.9, donate=True)


def test_a_selector_or_a_where_tree_is_part_of_the_plan(builds: list[str]) -> None:
    p = {"l.weight": torch.randn(3, 2), "l.bias": torch.randn(3)}
    a = fr.l1.prox(p, 1.0, 1.0, where=fr.select.weights)
    b = fr.l1.prox(p, 1.0, 1.0, where=fr.select.only("bias"))
    c = fr.l1.prox(p, 1.0, 1.0, where={"l.weight": False, "l.bias": True})
    assert torch.equal(a["l.bias"], p["l.bias"]) and not torch.equal(a["l.weight"], p["l.weight"])
    assert torch.equal(b["l.weight"], p["l.weight"]) and torch.equal(c["l.weight"], p["l.weight"])
    fr.l1.prox(p, 1.0, 1.0, where=fr.select.only("bias"))  # a new Selector object, the same key
    assert len(builds) == 3


def test_a_user_where_is_called_every_time_and_its_new_answer_followed() -> None:
    p = {"a": torch.ones(2), "b": torch.ones(2)}
    chosen = {"a"}
    calls: list[str] = []

    def where(path: str, leaf: torch.Tensor) -> bool:
        calls.append(path)
        return path in chosen

    out = fr.l1.prox(p, 0.5, 1.0, where=where)
    assert out["a"].tolist() == [0.5, 0.5] and out["b"].tolist() == [1.0, 1.0]
    chosen.clear()
    chosen.add("b")
    out = fr.l1.prox(p, 0.5, 1.0, where=where)
    assert out["a"].tolist() == [1.0, 1.0] and out["b"].tolist() == [0.5, 0.5]
    assert calls == ["a", "b", "a", "b"]  # once per leaf per call


def test_values_are_never_cached() -> None:
    p = _tree()
    lam = torch.tensor(0.1)
    first = fr.l1.prox(p, lam, 1.0)
    lam.fill_(0.7)  # the same tensor object, a new value
    second = fr.l1.prox(p, lam, 1.0)
    torch.testing.assert_close(first["w"], _soft(p["w"], 0.1))
    torch.testing.assert_close(second["w"], _soft(p["w"], 0.7))
    p["w"].mul_(2)  # the leaves' values, in place
    torch.testing.assert_close(fr.l1.prox(p, lam, 1.0)["w"], _soft(p["w"], 0.7))
    with pytest.raises(ValueError, match="finite"):  # a number is range-checked on every call
        fr.l1.prox(p, -1.0, 1.0)


def test_the_cache_is_bounded(builds: list[str]) -> None:
    for n in range(1, _engine.CACHE_SIZE + 20):
        fr.l2.prox({"w": torch.randn(n)}, 0.1, 1.0)
    assert len(_engine._PLANS) <= _engine.CACHE_SIZE
    fr.l2.prox({"w": torch.randn(1)}, 0.1, 1.0)  # the oldest was dropped: built again
    assert builds[-1] == "fr.l2.prox" and len(builds) == _engine.CACHE_SIZE + 20


def test_donation_checks_follow_replaced_leaves() -> None:
    """A donated call recognized by its leaves checks again what changed: a state entry
    replaced by another's tensor is refused."""
    params = _tree()
    grads = {k: torch.ones_like(v) for k, v in params.items()}
    state = fr.adam.init(params)
    params, state = fr.adam.step(params, grads, state, lr=0.1, donate=True)
    params, state = fr.adam.step(params, grads, state, lr=0.1, donate=True)
    state["exp_avg_sq"] = {**state["exp_avg_sq"], "b": state["exp_avg"]["b"]}
    with pytest.raises(ValueError, match=r"state\['exp_avg(_sq)?'\] leaf 'b'.*shares memory"):
        fr.adam.step(params, grads, state, lr=0.1, donate=True)
    grads_alias = {"w": params["w"], "b": grads["b"]}
    state["exp_avg_sq"] = {k: torch.zeros_like(v) for k, v in params.items()}
    with pytest.raises(ValueError, match=r"params leaf 'w'.*grads leaf 'w'|grads leaf 'w'.*params leaf 'w'"):
        fr.adam.step(params, grads_alias, state, lr=0.1, donate=True)


def test_recalled_plans_give_the_pure_and_donated_values_of_fresh_ones() -> None:
    """Many calls on the same leaves (the recognized path) equal calls that build every plan."""
    params, state = _tree(), None
    grads = {k: torch.full_like(v, 0.5) for k, v in params.items()}
    ref_p = {k: v.clone() for k, v in params.items()}
    state, ref_s = fr.adamw.init(params), fr.adamw.init(ref_p)
    for t in range(4):
        params, state = fr.adamw.step(params, grads, state, lr=0.1, donate=True)
        _engine._PLANS.clear()
        fr.adamw._ops[False].recent = []
        ref_p, ref_s = fr.adamw.step(ref_p, grads, ref_s, lr=0.1)
        for k in params:
            assert torch.equal(params[k], ref_p[k]), (t, k)


def test_a_prepass_sees_every_leaf_of_the_call_at_once() -> None:
    """The extension point for coupled groups: a reduction across leaves (here the L1 norm
    of the whole tree) runs once on all of them, across (device, dtype) groups, on every
    route, before the elementwise body."""
    from funcreg._hyper import Param

    seen: list[int] = []

    def prepass(ops: Any, *, params: list[torch.Tensor], **_: Any) -> dict[str, list[Any]]:
        seen.append(len(params))
        norms = [w.abs().sum(dim=tuple(range(ops.batch, w.ndim))).double() for w in params]
        total = sum(norms[1:], norms[0])
        return {"total": ops.bcast([total.to(w.dtype) for w in params], params)}

    def body(ops: Any, *, params: list[torch.Tensor], lam: Any, total: list[Any]) -> list[torch.Tensor]:
        return ops.mul(params, [t * lam for t in total])

    op = _engine.Op("test.scale_by_norm", body, _engine.Role("params", "params"), writes=("params",),
                    hypers=(Param("lam"),), prepass=prepass)
    p = {"a": torch.randn(3, 2), "b": torch.randn(4, dtype=torch.float64), "c": torch.randn(2)}
    total = sum(v.abs().sum().item() for v in p.values())
    want = {k: v * total * 0.5 for k, v in p.items()}
    for path in ("fast", "composable"):
        with fr._dispatch.forced(path):
            got = _engine.run(op, [p], {"lam": 0.5})["params"]
        for k in p:
            torch.testing.assert_close(got[k], want[k])
    stacked = {k: torch.stack([v, 2 * v]) for k, v in p.items()}
    got = torch.func.vmap(lambda q: _engine.run(op, [q], {"lam": 0.5})["params"])(stacked)
    for k in p:
        torch.testing.assert_close(got[k][1], 2 * p[k] * 2 * total * 0.5)
    assert seen == [3, 3, 3]


def test_a_cached_plan_keeps_no_tensor_alive() -> None:
    """Plans outlive calls: they must not hold the trees they were built from."""
    import gc
    import weakref

    params = _tree(5)
    state = fr.adamw.init(params)
    grads = {k: torch.ones_like(v) for k, v in params.items()}
    new, state = fr.adamw.step(params, grads, state, lr=0.1)
    fr.adamw.step(new, grads, state, lr=0.1, donate=True)
    refs = [weakref.ref(v) for tree in (params, new, grads, state["exp_avg"]) for v in tree.values()]
    del params, new, grads, state
    gc.collect()
    assert all(r() is None for r in refs)


def test_a_prepass_is_told_the_paths_of_the_leaves_it_sees() -> None:
    """Coupled groups name their leaves by path: the prepass gets ``paths``, those of the
    active leaves in the order it gets them, on every route."""
    from funcreg._hyper import Param

    seen: list[tuple[str, ...]] = []

    def prepass(ops: Any, *, params: list[torch.Tensor], paths: tuple[str, ...], **_: Any) -> dict[str, list[Any]]:
        seen.append(tuple(paths))
        return {}

    def body(ops: Any, *, params: list[torch.Tensor], lam: Any) -> list[torch.Tensor]:
        return ops.mul(params, lam)

    op = _engine.Op("test.paths", body, _engine.Role("params", "params"), writes=("params",),
                    hypers=(Param("lam"),), prepass=prepass)
    p = {"a": torch.randn(3, 2), "b": torch.randn(4, dtype=torch.float64), "c": torch.randn(2)}
    where = {"a": True, "b": False, "c": True}
    for path in ("fast", "composable"):
        with fr._dispatch.forced(path):
            _engine.run(op, [p], {"lam": 0.5})
            _engine.run(op, [p], {"lam": 0.5}, where=where)
    torch.func.vmap(lambda lam: _engine.run(op, [p], {"lam": lam})["params"])(torch.ones(2))
    assert seen == [("a", "b", "c"), ("a", "c")] * 2 + [("a", "b", "c")]
