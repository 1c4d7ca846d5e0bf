"""``.grad`` and ``.add_grad``: closed forms, agreement with autograd of the value,
subgradient 0 at 0, and the pass-through rules for unselected and ``None`` leaves."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import funcreg as fr
from conftest import (
    FAMILIES,
    FAMILY_IDS,
    Family,
    assert_close_ref,
    is_float,
    lams,
    leaf_dict,
    trees,
    walk,
)


@pytest.mark.parametrize("fam", FAMILIES, ids=FAMILY_IDS)
@given(data=st.data())
def test_grad_matches_closed_form(fam: Family, data: st.DataObject) -> None:
    params = data.draw(trees(dtypes=(torch.float32, torch.float64, torch.bfloat16), mode="zeros", int_leaves=True))
    lam = data.draw(lams(params, separable=fam.separable))
    opts = fam.options(params, data.draw)
    got = leaf_dict(fam.penalty.grad(params, lam, **opts))
    want = fam.ref_grad(params, lam, opts)
    for path, x in walk(params):
        if path in want:
            assert_close_ref(got[path], want[path], x.dtype, scale=3 * (1 + x.double().abs().max().item() if x.numel() else 1), what=path)
        else:  # integer leaves are not selected by where=None: zeros like them
            assert got[path].dtype == x.dtype and torch.equal(got[path], torch.zeros_like(x))


@pytest.mark.parametrize("fam", FAMILIES, ids=FAMILY_IDS)
@given(data=st.data())
@settings(max_examples=15)
def test_grad_equals_autograd_of_value(fam: Family, data: st.DataObject) -> None:
    """Where the penalty is differentiable (no element at 0 for L1/elastic net, no zero
    group for group lasso: mode "away"), ``.grad`` is torch.func.grad of the value."""
    params = data.draw(trees(dtypes=(torch.float64,), mode="away"))
    lam = data.draw(lams(params, separable=fam.separable))
    opts = fam.options(params, data.draw)
    auto = torch.func.grad(lambda p: fam.penalty(p, lam, **opts))(params)
    analytic = fam.penalty.grad(params, lam, **opts)
    for (path, a), (_, b) in zip(walk(auto), walk(analytic)):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12, msg=path)


@pytest.mark.parametrize("fam", FAMILIES, ids=FAMILY_IDS)
def test_grad_with_where_matches_autograd(fam: Family) -> None:
    g = torch.Generator().manual_seed(3)
    params = {
        "enc.weight": torch.randn(3, 4, generator=g, dtype=torch.float64) + 3,
        "enc.bias": torch.randn(3, generator=g, dtype=torch.float64) + 3,
        "dec.weight": torch.randn(2, 3, generator=g, dtype=torch.float64) - 3,
    }
    opts = fam.options(params)
    where = fr.select.weights & fr.select.exclude("dec")
    auto = torch.func.grad(lambda p: fam.penalty(p, 0.3, where=where, **opts))(params)
    analytic = fam.penalty.grad(params, 0.3, where=where, **opts)
    for k in params:
        torch.testing.assert_close(analytic[k], auto[k])
    assert torch.equal(analytic["enc.bias"], torch.zeros(3, dtype=torch.float64))
    assert torch.equal(analytic["dec.weight"], torch.zeros(2, 3, dtype=torch.float64))
    assert analytic["enc.weight"].abs().min() > 0


def test_subgradient_is_zero_at_zero() -> None:
    w = {"w": torch.tensor([0.0, -0.0, 1.0, -2.0])}
    torch.testing.assert_close(fr.l1.grad(w, 0.5)["w"], torch.tensor([0.0, 0.0, 0.5, -0.5]))
    # elastic net: λρ·sign(w) + λ(1−ρ)·w
    torch.testing.assert_close(
        fr.elastic_net.grad(w, 2.0, l1_ratio=0.25)["w"], torch.tensor([0.0, 0.0, 0.5 + 1.5, -0.5 - 3.0])
    )
    with torch.no_grad():  # the same on both paths
        for path in ("fast", "composable"):
            with fr._dispatch.forced(path):
                assert fr.l1.grad(w, 0.5)["w"][:2].tolist() == [0.0, 0.0]


@pytest.mark.parametrize("dim", [0, -1, None])
def test_group_lasso_zero_group_is_finite(dim: int | None) -> None:
    """A whole group at zero: value, analytic gradient and autograd gradient are finite,
    and the gradient of the zero group is 0."""
    w = torch.tensor([[0.0, 0.0, 0.0], [3.0, 0.0, 4.0]], dtype=torch.float64)
    if dim is None:
        w = torch.zeros(2, 3, dtype=torch.float64)
    p = {"w": w, "z": torch.zeros(4, dtype=torch.float64), "s": torch.zeros((), dtype=torch.float64)}
    value = fr.group_lasso(p, 0.5, dim=dim)
    assert torch.isfinite(value)
    auto = torch.func.grad(lambda q: fr.group_lasso(q, 0.5, dim=dim))(p)
    analytic = fr.group_lasso.grad(p, 0.5, dim=dim)
    leaf = {k: v.detach().clone().requires_grad_() for k, v in p.items()}
    fr.group_lasso(leaf, 0.5, dim=dim).backward()
    for k in p:
        for g in (auto[k], analytic[k], leaf[k].grad):
            assert torch.isfinite(g).all(), k
        torch.testing.assert_close(auto[k], analytic[k])
        torch.testing.assert_close(leaf[k].grad, analytic[k])
    assert torch.equal(analytic["z"], torch.zeros(4, dtype=torch.float64))
    if dim == 0:
        assert torch.equal(analytic["w"][0], torch.zeros(3, dtype=torch.float64))
        # nonzero row: λ·sqrt(3)·w/‖w‖
        torch.testing.assert_close(analytic["w"][1], 0.5 * 3**0.5 * torch.tensor([0.6, 0.0, 0.8], dtype=torch.float64))


# ---------------------------------------------------------------------- add_grad
@pytest.mark.parametrize("fam", FAMILIES, ids=FAMILY_IDS)
@given(data=st.data())
@settings(max_examples=15)
def test_add_grad_is_grads_plus_grad(fam: Family, data: st.DataObject) -> None:
    params = data.draw(trees(dtypes=(torch.float32, torch.float64), mode="zeros", int_leaves=True))
    lam = data.draw(lams(params, separable=fam.separable))
    opts = fam.options(params, data.draw)
    seed = data.draw(st.integers(0, 1000))
    gen = torch.Generator().manual_seed(seed)
    grads = {p: (torch.randn(x.shape, generator=gen, dtype=torch.float64).to(x.dtype) if is_float(x) else None) for p, x in walk(params)}
    got = leaf_dict(fam.penalty.add_grad(grads, params, lam, **opts))
    pen = leaf_dict(fam.penalty.grad(params, lam, **opts))
    for path, _x in walk(params):
        if grads[path] is None:
            assert got[path] is None
        else:
            torch.testing.assert_close(got[path], grads[path] + pen[path], msg=path)


def test_add_grad_pass_through_rules() -> None:
    g = torch.Generator().manual_seed(0)
    params = {
        "a.weight": torch.randn(2, 3, generator=g),
        "a.bias": torch.randn(2, generator=g),
        "b.weight": torch.randn(3, 3, generator=g),
        "steps": torch.tensor(4),
    }
    grads = {
        "a.weight": torch.randn(2, 3, generator=g),
        "a.bias": torch.randn(2, generator=g),
        "b.weight": None,
        "steps": None,
    }
    for fam in FAMILIES:
        opts = fam.options(params)
        out = fam.penalty.add_grad(grads, params, 0.2, where=fr.select.weights, **opts)
        assert list(out) == list(params)
        assert out["a.bias"] is grads["a.bias"]  # unselected: the very same object
        assert out["b.weight"] is None and out["steps"] is None  # no gradient stays None
        pen = fam.penalty.grad(params, 0.2, where=fr.select.weights, **opts)
        torch.testing.assert_close(out["a.weight"], grads["a.weight"] + pen["a.weight"])
        assert out["a.weight"] is not grads["a.weight"]
        # every selected gradient is None: nothing to add
        none = {k: None for k in params}
        out = fam.penalty.add_grad(none, params, 0.2, **opts)
        assert all(v is None for v in out.values())


def test_add_grad_matches_by_path() -> None:
    """A gradient dict with its keys in another order lines up by path."""
    params = {"x": torch.tensor([1.0, -1.0]), "y": torch.tensor([2.0])}
    grads = {"y": torch.tensor([10.0]), "x": torch.tensor([0.0, 0.0])}
    out = fr.l2.add_grad(grads, params, 0.5)
    torch.testing.assert_close(out["x"], torch.tensor([1.0, -1.0]))
    torch.testing.assert_close(out["y"], torch.tensor([12.0]))


def test_grad_closed_forms_by_hand() -> None:
    w = {"w": torch.tensor([1.0, -2.0]), "b": torch.tensor([0.5])}
    w0 = {"w": torch.tensor([0.5, 0.0]), "b": torch.tensor([1.5])}
    torch.testing.assert_close(fr.l2.grad(w, 0.5)["w"], torch.tensor([1.0, -2.0]))
    torch.testing.assert_close(fr.l2_sp.grad(w, 0.5, anchor=w0)["w"], torch.tensor([0.5, -2.0]))
    torch.testing.assert_close(fr.l2_sp.grad(w, 0.5, anchor=w0)["b"], torch.tensor([-1.0]))
    # per-element λ
    lam = {"w": torch.tensor([1.0, 3.0]), "b": 0.0}
    torch.testing.assert_close(fr.l1.grad(w, lam)["w"], torch.tensor([1.0, -3.0]))
    torch.testing.assert_close(fr.l2.grad(w, lam)["b"], torch.tensor([0.0]))
