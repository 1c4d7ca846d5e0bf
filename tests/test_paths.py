"""The fast (``torch._foreach_*``) and composable (per-leaf) paths agree, and the
automatic choice picks the fast path for plain tensors and the composable one under
torch.func transforms and autograd.

Every family and projection: the fast and composable paths agree on generated and mixed-dtype trees.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch._dynamo
from hypothesis import given, settings
from hypothesis import strategies as st

import funcreg as fr
from conftest import (
    REFERENCED,
    REFERENCED_IDS,
    Family,
    fixed_params,
    is_float,
    lams,
    leaf_dict,
    steps,
    trees,
    walk,
)
from funcreg import _dispatch
from registry import PROJECTIONS, UNREFERENCED_VARIANTS

forced = _dispatch.forced


def _all_ops(fam: Family, params, grads, lam, step, opts):
    return (
        fam.penalty.grad(params, lam, **opts),
        fam.penalty.add_grad(grads, params, lam, **opts),
        fam.penalty.prox(params, lam, step, **opts),
    )


def _size(tree: Any) -> dict[str, float]:
    return {p: float(x.double().abs().max()) if is_float(x) and x.numel() else 0.0 for p, x in walk(tree)}


def _compare_all(fast: tuple, comp: tuple, params: Any, grads: Any) -> None:
    """The two paths round their intermediates differently: each may be off by a rounding
    at the size of the operands (a gradient, the penalty's term, a weight), not of a result
    that cancelled them (bfloat16's step at 2.5 is 0.016)."""
    pen, g, w = _size(fast[0]), _size(grads), _size(params)
    scales = ({p: 1 + v for p, v in pen.items()}, {p: 1 + v + g.get(p, 0.0) for p, v in pen.items()},
              {p: 1 + v for p, v in w.items()})
    for name, a, b, scale in zip(("grad", "add_grad", "prox"), fast, comp, scales):
        _compare(a, b, name, scale)


def _compare(a, b, what: str, scale: dict[str, float]) -> None:
    for (path, x), (_, y) in zip(walk(a), walk(b)):
        if x is None:
            assert y is None, (what, path)
            continue
        assert x.dtype == y.dtype and x.shape == y.shape, (what, path)
        tol = {torch.float64: 1e-12, torch.float32: 1e-6, torch.bfloat16: 1e-2}.get(x.dtype, 0)
        torch.testing.assert_close(x, y, rtol=tol, atol=tol * scale.get(path, 1.0), msg=f"{what} {path}")


@pytest.mark.parametrize("fam", REFERENCED, ids=REFERENCED_IDS)
@given(data=st.data())
def test_fast_and_composable_paths_agree(fam: Family, data: st.DataObject) -> None:
    # mixed dtypes in one tree: several (device, dtype) groups on the fast path
    params = data.draw(trees(dtypes=(torch.float32, torch.float64, torch.bfloat16), mode="zeros", int_leaves=True, max_leaves=7))
    lam = data.draw(lams(params, separable=fam.separable))
    step = data.draw(steps(params, separable=fam.separable))
    opts = fam.options(params, data.draw)
    gen = torch.Generator().manual_seed(data.draw(st.integers(0, 99)))
    grads = {p: (torch.randn(x.shape, generator=gen).to(x.dtype) if is_float(x) else None) for p, x in walk(params)}
    if data.draw(st.booleans()) and grads:  # a None gradient for some float leaf
        first = next((p for p, x in walk(params) if is_float(x)), None)
        grads[first] = None
    with forced("fast"):
        fast = _all_ops(fam, params, grads, lam, step, opts)
    with forced("composable"):
        comp = _all_ops(fam, params, grads, lam, step, opts)
    _compare_all(fast, comp, params, grads)


@pytest.mark.parametrize(
    "fam, lam_form",
    [
        pytest.param(f, form, id=f"{f.name}-{form}")
        for f in REFERENCED
        for form in ("float", "tensor", "dict", "element")
        if f.separable or form != "element"  # group lasso takes one λ per leaf
    ],
)
def test_paths_agree_on_mixed_dtype_model(fam: Family, lam_form: str) -> None:
    g = torch.Generator().manual_seed(11)
    params = {
        "a.weight": torch.randn(4, 3, generator=g),
        "a.bias": torch.randn(4, generator=g, dtype=torch.float64),
        "b.weight": torch.randn(2, 4, generator=g, dtype=torch.float64),
        "b.bias": torch.randn(2, generator=g),
        "c": torch.randn(3, 3, generator=g, dtype=torch.bfloat16),
    }
    lam = {
        "float": 0.3,
        "tensor": torch.tensor(0.3),
        "dict": {k: 0.1 * (i + 1) for i, k in enumerate(params)},
        "element": {k: torch.rand(v.shape, generator=g) for k, v in params.items()},
    }[lam_form]
    grads = {k: torch.randn(v.shape, generator=g).to(v.dtype) for k, v in params.items()}
    opts = fam.options(params)
    with forced("fast"):
        fast = _all_ops(fam, params, grads, lam, 0.5, opts)
    with forced("composable"):
        comp = _all_ops(fam, params, grads, lam, 0.5, opts)
    _compare_all(fast, comp, params, grads)
    for a in fast:
        for k, v in params.items():
            assert leaf_dict(a)[k].dtype == v.dtype


class _Spy:
    """Records whether ``route`` chose the fast path."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[bool] = []
        real = _dispatch.route

        def spy(**kw):
            out = real(**kw)
            self.calls.append(out == "fast")
            return out

        monkeypatch.setattr(_dispatch, "route", spy)


def test_plain_tensors_take_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    foreach_calls = []
    real_sign = torch._foreach_sign
    monkeypatch.setattr(torch, "_foreach_sign", lambda xs: foreach_calls.append(len(xs)) or real_sign(xs))
    spy = _Spy(monkeypatch)
    p = {"w": torch.randn(3, 2), "b": torch.randn(3)}
    fr.l1.grad(p, 0.1)
    fr.l1.add_grad(p, p, torch.tensor(0.1))
    fr.l1.prox(p, 0.1, 0.5)
    assert spy.calls == [True, True, True]
    assert foreach_calls and set(foreach_calls) == {2}  # one multi-tensor sign over both leaves
    for fam in REFERENCED:
        spy.calls.clear()
        fam.penalty.prox(p, 0.1, torch.tensor(0.5), **fam.options(p))
        assert spy.calls == [True], fam.name


def test_transforms_and_autograd_take_the_composable_path(monkeypatch: pytest.MonkeyPatch) -> None:
    foreach_calls = []
    real_sign = torch._foreach_sign
    monkeypatch.setattr(torch, "_foreach_sign", lambda xs: foreach_calls.append(len(xs)) or real_sign(xs))
    spy = _Spy(monkeypatch)
    p = {"w": torch.randn(3, 2), "b": torch.randn(3)}
    # vmap over λ: the hyperparameter is a batched (functorch-wrapped) tensor; vmap alone
    # takes the stacked path: the multi-tensor kernels on the unwrapped stacked tensors
    out = torch.func.vmap(lambda lam: fr.l1.grad(p, lam))(torch.tensor([0.1, 0.2]))
    torch.testing.assert_close(out["w"][1], 0.2 * torch.sign(p["w"]))
    # vmap over params
    torch.func.vmap(lambda q: fr.l1.grad(q, 0.1))({k: v.expand(2, *v.shape) for k, v in p.items()})
    assert foreach_calls == [2, 2] and not any(spy.calls)
    foreach_calls.clear()
    # torch.func.grad through .add_grad: params are wrapped
    torch.func.grad(lambda q: fr.l2.add_grad(q, q, 0.1)["w"].sum())(p)
    # params that require grad, with grad mode on
    leaf = {k: v.clone().requires_grad_() for k, v in p.items()}
    g = fr.l2.grad(leaf, 0.5)
    g["w"].sum().backward()
    torch.testing.assert_close(leaf["w"].grad, torch.ones(3, 2))
    assert spy.calls and not any(spy.calls)
    assert foreach_calls == []
    # the same leaves under no_grad are plain again
    spy.calls.clear()
    with torch.no_grad():
        fr.l1.grad(leaf, 0.1)
    assert spy.calls == [True] and foreach_calls == [2]  # l1.grad: foreach sign over both leaves


def test_forced_rejects_unknown_path_and_restores() -> None:
    with pytest.raises(ValueError):
        with forced("fastest"):  # type: ignore[arg-type]
            pass
    plain = dict(transformed=False, traced=False, stackable=True)
    with forced("composable"):
        with forced("fast"):
            assert _dispatch.route(**plain) == "fast"
        assert _dispatch.route(**plain) == "composable"
    assert _dispatch.route(**plain) == "fast"


F64 = torch.float64






# ------------------------------------------------------------------ fast vs composable
def _ops(penalty: fr.Penalty, params: Any, grads: Any, lam: Any, step: Any, opts: dict[str, Any]) -> list[Any]:
    out = []
    if "grad" not in penalty.without:
        out += [penalty.grad(params, lam, **opts), penalty.add_grad(grads, params, lam, **opts)]
    if "prox" not in penalty.without:
        out.append(penalty.prox(params, lam, step, **opts))
    return out


def _compare_trees(a: Any, b: Any) -> None:
    assert [p for p, _ in walk(a)] == [p for p, _ in walk(b)], "the trees' paths differ"
    for (path, x), (_, y) in zip(walk(a), walk(b)):
        if x is None:
            assert y is None, path
            continue
        assert x.dtype == y.dtype and x.shape == y.shape, path
        tol = {F64: 1e-11, torch.float32: 2e-5, torch.bfloat16: 2e-2}.get(x.dtype, 0)
        torch.testing.assert_close(x, y, rtol=tol, atol=tol, msg=path)


MATRIX_SHAPES = [(2, 3), (1, 4), (3, 1), (2, 1, 3), (2, 2, 2), (3, 3)]
FLOATS = (torch.float32, F64)


@pytest.mark.parametrize("name", list(UNREFERENCED_VARIANTS))
@given(data=st.data())
@settings(max_examples=12)
def test_fast_and_composable_paths_agree_for_the_other_families(name: str, data: st.DataObject) -> None:
    variant = UNREFERENCED_VARIANTS[name]
    penalty = variant.penalty
    matrix = variant.family.matrix or name.endswith("dim1")
    dtypes = FLOATS if name == "nuclear_norm" else FLOATS + (torch.bfloat16,)  # no bfloat16 SVD
    params = data.draw(trees(dtypes=dtypes, mode="zeros", max_leaves=6,
                             **({"shapes": MATRIX_SHAPES} if matrix else {"int_leaves": True})))
    opts = {k: v for k, v in variant.options(params).items() if k != "where"}
    separable = penalty.elementwise
    lam = data.draw(lams(params, separable=separable))
    step = data.draw(steps(params, separable=separable, forms=("number", "tensor", "dict") + (("element",) if separable else ())))
    gen = torch.Generator().manual_seed(data.draw(st.integers(0, 99)))
    grads = {p: torch.randn(x.shape, generator=gen).to(x.dtype) if is_float(x) else None for p, x in walk(params)}
    with forced("fast"):
        fast = _ops(penalty, params, grads, lam, step, opts)
    with forced("composable"):
        comp = _ops(penalty, params, grads, lam, step, opts)
    for a, b in zip(fast, comp):
        _compare_trees(a, b)


@pytest.mark.parametrize("name", list(PROJECTIONS))
def test_projection_paths_agree_on_a_mixed_dtype_tree(name: str) -> None:
    params = {**fixed_params(6), **{f"f.{k}": v for k, v in fixed_params(7, dtype=torch.float32).items()},
              **{f"h.{k}": v for k, v in fixed_params(8, dtype=torch.bfloat16).items()}}
    radii: list[Any] = [0.4, torch.tensor(0.4)]
    if not name.startswith("box"):  # box negates its bound, so no dict there
        radii.append({k: 0.3 * (i % 4) for i, k in enumerate(params)})
    for r in radii:
        with forced("fast"):
            fast = PROJECTIONS[name](params, r)
        with forced("composable"):
            comp = PROJECTIONS[name](params, r)
        _compare_trees(fast, comp)
