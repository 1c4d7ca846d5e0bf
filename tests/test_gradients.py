"""``.grad`` and ``.add_grad`` of every family: closed forms (per leaf, per element, numpy
for the matrix families), agreement with autograd of the value away from kinks,
subgradient 0 at 0, ``.add_grad`` as grads plus ``.grad``, and the pass-through rules for
unselected and ``None`` leaves."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import funcreg as fr
import reference as ref
from conftest import (
    REFERENCED,
    REFERENCED_IDS,
    TOL,
    Family,
    assert_close_ref,
    elementwise,
    is_float,
    lams,
    leaf_dict,
    matrix_tree,
    resolve,
    trees,
    walk,
)
from registry import ELEMENTWISE


@pytest.mark.parametrize("fam", REFERENCED, ids=REFERENCED_IDS)
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


@pytest.mark.parametrize("fam", REFERENCED, ids=REFERENCED_IDS)
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


@pytest.mark.parametrize("fam", REFERENCED, ids=REFERENCED_IDS)
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
@pytest.mark.parametrize("fam", REFERENCED, ids=REFERENCED_IDS)
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
    for path, _ in walk(params):
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
    for fam in REFERENCED:
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


forced = fr._dispatch.forced
F64 = torch.float64





# -------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("name", ["mcp", "scad"])
@given(data=st.data())
@settings(max_examples=20)
def test_elementwise_grads_match_the_formulas(name: str, data: st.DataObject) -> None:
    """Per element, both paths, every form of λ; the gradient is 0 at w = 0."""
    penalty, gammas, _, grad = ELEMENTWISE[name]
    params = data.draw(trees(dtypes=(torch.float32, torch.float64), mode="zeros", int_leaves=True))
    lam = data.draw(lams(params))
    gamma = data.draw(st.sampled_from(gammas))
    with forced(data.draw(st.sampled_from(["fast", "composable"]))):
        got = leaf_dict(penalty.grad(params, lam, gamma=gamma))
    for path, x in walk(params):
        if not is_float(x):
            assert torch.equal(got[path], torch.zeros_like(x))
            continue
        want = elementwise(lambda v, a: grad(v, a, gamma), x, resolve(lam, path, x))
        rtol, atol = TOL[x.dtype]
        torch.testing.assert_close(got[path].double(), want, rtol=rtol, atol=atol * 10, msg=path)
        assert (got[path][x == 0] == 0).all()


def _away_from_kinks(lam: float, gamma: float, seed: int) -> dict[str, torch.Tensor]:
    """Leaves whose |w| keeps 1e-3 away from 0, λ and γλ (where MCP and SCAD bend)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, shape in (("a", (4, 5)), ("b", (7,)), ("c", ())):
        w = torch.randn(shape, generator=g, dtype=F64) * 2 * gamma * lam
        for kink in (0.0, lam, gamma * lam):
            near = (w.abs() - kink).abs() < 1e-3
            w = torch.where(near, w + 0.01 * torch.sign(w + 1e-12), w)
        out[k] = w
    return out


@pytest.mark.parametrize("path", ["fast", "composable"])
@pytest.mark.parametrize("name,gamma", [("mcp", 3.0), ("mcp", 0.7), ("scad", 3.7), ("scad", 1.4)])
def test_elementwise_grads_equal_autograd_of_the_value(name: str, gamma: float, path: str) -> None:
    penalty = ELEMENTWISE[name][0]
    for lam in (0.3, 1.0):
        params = _away_from_kinks(lam, gamma, seed=int(gamma * 10))
        auto = torch.func.grad(lambda p: penalty(p, lam, gamma=gamma))(params)
        with forced(path):
            analytic = penalty.grad(params, lam, gamma=gamma)
        for k in params:
            torch.testing.assert_close(analytic[k], auto[k], rtol=1e-12, atol=1e-14, msg=k)
        # a tensor λ and γ, and a per-element λ: the same gradients
        with forced(path):
            t = penalty.grad(params, torch.tensor(lam, dtype=F64), gamma=torch.tensor(gamma, dtype=F64))
            e = penalty.grad(params, {k: torch.full(v.shape, lam, dtype=F64) for k, v in params.items()}, gamma=gamma)
        for k in params:
            torch.testing.assert_close(t[k], analytic[k], rtol=1e-13, atol=1e-15)
            torch.testing.assert_close(e[k], analytic[k], rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("path", ["fast", "composable"])
@pytest.mark.parametrize("dim", [0, 1, None])
def test_sparse_group_lasso_grad(dim: int | None, path: str) -> None:
    """Autograd of the value where no element and no group is 0; the closed form with zero
    elements and a zero group, whose gradient is 0 (finite under autograd too)."""
    g = torch.Generator().manual_seed(11)
    away = {"w": torch.randn(4, 5, generator=g, dtype=F64).abs().add(0.1) * torch.tensor([1.0, -1.0]).repeat(10)[:5],
            "v": torch.randn(3, 2, 2, generator=g, dtype=F64).abs().add(0.1)}
    for rho in (0.0, 0.4, 1.0):
        auto = torch.func.grad(lambda p: fr.sparse_group_lasso(p, 0.6, l1_ratio=rho, dim=dim))(away)
        with forced(path):
            analytic = fr.sparse_group_lasso.grad(away, 0.6, l1_ratio=rho, dim=dim)
        for k in away:
            torch.testing.assert_close(analytic[k], auto[k], rtol=1e-12, atol=1e-14)
    w = torch.tensor([[0.0, 0.0, 0.0], [3.0, 0.0, -4.0]], dtype=F64)
    with forced(path):
        got = fr.sparse_group_lasso.grad({"w": w}, 0.5, l1_ratio=0.4)["w"]
    want = torch.tensor([[0.0, 0.0, 0.0], [0.2 + 0.3 * 3**0.5 * 0.6, 0.0, -0.2 - 0.3 * 3**0.5 * 0.8]], dtype=F64)
    torch.testing.assert_close(got, want)
    auto = torch.func.grad(lambda p: fr.sparse_group_lasso(p, 0.5, l1_ratio=0.4))({"w": w})["w"]
    assert torch.isfinite(auto).all() and torch.equal(auto[0], torch.zeros(3, dtype=F64))


@pytest.mark.parametrize("path", ["fast", "composable"])
def test_nuclear_norm_grad(path: str) -> None:
    """Full rank: autograd of the value. Rank-deficient and zero leaves: λ·U_r V_rᵀ, the
    minimal-norm subgradient (autograd keeps the arbitrary null directions there)."""
    full = matrix_tree(F64, seed=1)
    auto = torch.func.grad(lambda p: fr.nuclear_norm(p, 0.7))(full)
    with forced(path):
        analytic = fr.nuclear_norm.grad(full, 0.7)
    for k in full:
        torch.testing.assert_close(analytic[k], auto[k], rtol=1e-10, atol=1e-12, msg=k)
    g = torch.Generator().manual_seed(2)
    deficient = {
        "rank1": torch.outer(torch.randn(4, generator=g, dtype=F64), torch.randn(3, generator=g, dtype=F64)),
        "rank2": torch.randn(5, 2, generator=g, dtype=F64) @ torch.randn(2, 6, generator=g, dtype=F64),
        "zero": torch.zeros(3, 3, dtype=F64),
        "same": torch.randn(2, 3, generator=g, dtype=F64),  # two leaves of one shape: one batched SVD
        "same2": torch.zeros(2, 3, dtype=F64),
    }
    with forced(path):
        got = fr.nuclear_norm.grad(deficient, 0.5)
    for k, w in deficient.items():
        torch.testing.assert_close(got[k], ref.nuclear_subgradient(w, 0.5), rtol=1e-10, atol=1e-12, msg=k)
    assert torch.equal(got["zero"], torch.zeros(3, 3, dtype=F64))


@pytest.mark.parametrize("path", ["fast", "composable"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_orthogonal_grad(dtype: torch.dtype, path: str) -> None:
    params = matrix_tree(dtype, seed=3, scale=0.5)
    with forced(path):
        got = fr.orthogonal.grad(params, 0.3)
    auto = torch.func.grad(lambda p: fr.orthogonal(p, 0.3))(params)
    tol = 1e-12 if dtype == F64 else 2e-5
    for k, w in params.items():
        torch.testing.assert_close(got[k].double(), ref.orthogonal_grad(w, 0.3), rtol=tol, atol=tol, msg=k)
        torch.testing.assert_close(got[k], auto[k], rtol=tol, atol=tol, msg=k)
        assert got[k].dtype == dtype


@pytest.mark.parametrize("path", ["fast", "composable"])
@pytest.mark.parametrize("name", ["sparse_group_lasso", "nuclear_norm", "mcp", "scad", "orthogonal"])
def test_add_grad_is_grads_plus_grad_with_none_and_unselected_leaves(name: str, path: str) -> None:
    penalty = getattr(fr, name)
    params = {**matrix_tree(torch.float32, seed=4), **{f"d.{k}": v for k, v in matrix_tree(F64, seed=5).items()}}
    g = torch.Generator().manual_seed(6)
    grads: dict[str, Any] = {k: torch.randn(v.shape, generator=g, dtype=F64).to(v.dtype) for k, v in params.items()}
    grads["m1"] = None
    with forced(path):
        out = penalty.add_grad(grads, params, 0.2, where=fr.select.exclude("m2"))
        pen = penalty.grad(params, 0.2, where=fr.select.exclude("m2"))
    assert out["m1"] is None and out["m2"] is grads["m2"]
    for k in params:
        if k not in ("m1", "m2"):
            torch.testing.assert_close(out[k], grads[k] + pen[k], msg=k)


@pytest.mark.parametrize("path", ["fast", "composable"])
@pytest.mark.parametrize("shape", [
    (3, 0), (2, 0, 4), (0, 3),
])
def test_matrix_families_on_empty_leaves(shape: tuple[int, ...], path: str) -> None:
    """An empty weight (a layer with no inputs or no units) is an empty matrix: value 0,
    zero gradient and prox, λ_max 0, as the other families give."""
    w = {"w": torch.zeros(shape)}
    with forced(path):
        for penalty in (fr.nuclear_norm, fr.orthogonal):
            assert penalty(w, 0.5).item() == 0.0
            assert penalty.grad(w, 0.5)["w"].shape == shape
        assert fr.nuclear_norm.prox(w, 0.5, 1.0)["w"].shape == shape
        assert fr.nuclear_norm.lambda_max(w).item() == 0.0


def test_nuclear_norm_on_half_precision_leaves_decomposes_in_float32() -> None:
    """torch has no bfloat16 SVD on CPU: the leaf is decomposed in float32, and every
    result comes back in the leaf's dtype."""
    w32 = torch.randn(6, 4, generator=torch.Generator().manual_seed(5))
    w16 = {"w": w32.bfloat16()}
    ref = {"w": w32.bfloat16().float()}
    assert fr.nuclear_norm(w16, 0.3).dtype == torch.bfloat16
    torch.testing.assert_close(fr.nuclear_norm(w16, 0.3).float(), fr.nuclear_norm(ref, 0.3), rtol=1e-2, atol=1e-2)
    for got, want in ((fr.nuclear_norm.prox(w16, 0.3, 1.0), fr.nuclear_norm.prox(ref, 0.3, 1.0)),
                      (fr.nuclear_norm.grad(w16, 0.3), fr.nuclear_norm.grad(ref, 0.3))):
        assert got["w"].dtype == torch.bfloat16
        torch.testing.assert_close(got["w"].float(), want["w"], rtol=2e-2, atol=2e-2)
