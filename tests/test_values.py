"""Penalty values of every family against independent float64 references: per-leaf formulas
over generated pytrees and every form λ can take, per-element Python arithmetic for the
families with a γ, numpy's SVD and matrix products for the matrix families, and values
worked out by hand."""

from __future__ import annotations

import collections
import math
from collections.abc import Callable
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
    float_paths,
    is_float,
    lams,
    lowest_dtype,
    matrix_tree,
    ref_sum,
    resolve,
    tree_map,
    trees,
    walk,
)
from registry import ELEMENTWISE


def _check_value(got: torch.Tensor, want: float, params: object, scale: float) -> None:
    assert isinstance(got, torch.Tensor) and got.ndim == 0
    rtol, atol = TOL[lowest_dtype(params)]
    assert math.isclose(got.double().item(), want, rel_tol=rtol, abs_tol=atol * max(1.0, scale)), (
        got.item(),
        want,
    )


@pytest.mark.parametrize("fam", REFERENCED, ids=REFERENCED_IDS)
@given(data=st.data())
def test_value_matches_reference(fam: Family, data: st.DataObject) -> None:
    params = data.draw(trees(dtypes=(torch.float32, torch.float64, torch.bfloat16), int_leaves=True))
    lam = data.draw(lams(params, separable=fam.separable))
    opts = fam.options(params, data.draw)
    got = fam.penalty(params, lam, **opts)
    want = fam.ref_value(params, lam, opts)
    # scale: the value with every term made positive and λ at its largest (bf16 error bound)
    scale = sum(x.double().abs().sum().item() + x.double().square().sum().item() for _, x in fam.selected(params)) * 3
    _check_value(got, want, params, scale)


@pytest.mark.parametrize("fam", REFERENCED, ids=REFERENCED_IDS)
@given(data=st.data())
@settings(max_examples=15)
def test_lam_forms_agree(fam: Family, data: st.DataObject) -> None:
    """The same λ written as a number, a 0-d tensor, a path dict, a pytree and (separable)
    a per-element tensor gives the same value."""
    params = data.draw(trees(dtypes=(torch.float64,)))
    value = data.draw(st.sampled_from([0.0, 0.125, 0.75, 3.0]))  # exact in float32
    opts = fam.options(params, data.draw)
    forms = [
        value,
        torch.tensor(value),
        torch.tensor(value, dtype=torch.float32),
        {p: value for p in float_paths(params)},
        tree_map(lambda x: value, params),
    ]
    if fam.separable:
        forms.append({p: torch.full(x.shape, value, dtype=torch.float64) for p, x in walk(params)})
    results = [fam.penalty(params, lam, **opts) for lam in forms]
    for r in results[1:]:
        torch.testing.assert_close(r, results[0], rtol=1e-12, atol=1e-12)


def test_values_by_hand() -> None:
    """A few values worked out by hand."""
    w = {"w": torch.tensor([2.0, -0.5], dtype=torch.float64)}
    assert fr.l1(w, 0.1).item() == pytest.approx(0.25)
    assert fr.l2(w, 0.5).item() == pytest.approx(0.5 * 4.25)
    # scikit-learn's elastic net: α(ρ Σ|w| + (1−ρ)/2 Σ w²) = 1·(0.5·2.5 + 0.25·4.25)
    assert fr.elastic_net(w, 1.0, l1_ratio=0.5).item() == pytest.approx(2.3125)
    assert fr.elastic_net(w, 1.0).item() == pytest.approx(2.3125)  # default l1_ratio 0.5
    assert fr.elastic_net(w, 2.0, l1_ratio=0.2).item() == pytest.approx(2.0 * (0.2 * 2.5 + 0.4 * 4.25))
    w0 = {"w": torch.tensor([1.0, 0.5], dtype=torch.float64)}
    assert fr.l2_sp(w, 3.0, anchor=w0).item() == pytest.approx(3.0 * (1.0 + 1.0))


def test_elastic_net_limits() -> None:
    """ρ = 1 is the L1 penalty, ρ = 0 is the L2 penalty with λ/2 (the ½ of sklearn)."""
    g = torch.Generator().manual_seed(0)
    p = {"a": torch.randn(3, 4, generator=g, dtype=torch.float64), "b": torch.randn(5, generator=g, dtype=torch.float64)}
    torch.testing.assert_close(fr.elastic_net(p, 0.7, l1_ratio=1.0), fr.l1(p, 0.7))
    torch.testing.assert_close(fr.elastic_net(p, 0.7, l1_ratio=0.0), fr.l2(p, 0.35))
    torch.testing.assert_close(fr.elastic_net(p, 0.7, l1_ratio=torch.tensor(1.0)), fr.l1(p, 0.7))


def test_group_lasso_groups_by_hand() -> None:
    w = torch.tensor([[3.0, 4.0], [0.0, 0.0], [1.0, 0.0]], dtype=torch.float64)
    p = {"w": w}
    # dim=0 (default): rows, size 2
    assert fr.group_lasso(p, 0.5).item() == pytest.approx(0.5 * math.sqrt(2) * (5 + 0 + 1))
    assert fr.group_lasso(p, 0.5, dim=0).item() == pytest.approx(0.5 * math.sqrt(2) * 6)
    # dim=1 and dim=-1: columns, size 3
    col = 0.5 * math.sqrt(3) * (math.sqrt(9 + 1) + 4)
    assert fr.group_lasso(p, 0.5, dim=1).item() == pytest.approx(col)
    assert fr.group_lasso(p, 0.5, dim=-1).item() == pytest.approx(col)
    # dim=None: the whole leaf is one group of size 6
    assert fr.group_lasso(p, 0.5, dim=None).item() == pytest.approx(0.5 * math.sqrt(6) * math.sqrt(26))
    # a 3-d leaf: dim=-2 is dim=1, groups of size 2*2
    x = torch.arange(12, dtype=torch.float64).reshape(2, 3, 2)
    want = sum(2 * math.sqrt(sum(v * v for v in x[:, j, :].reshape(-1).tolist())) for j in range(3))
    assert fr.group_lasso({"x": x}, 1.0, dim=-2).item() == pytest.approx(want)
    assert fr.group_lasso({"x": x}, 1.0, dim=1).item() == pytest.approx(want)
    # a 1-d leaf along its only dim: every element is its own group (size 1) = L1
    v = torch.tensor([-1.0, 2.0, 0.0], dtype=torch.float64)
    assert fr.group_lasso({"v": v}, 0.3).item() == pytest.approx(0.9)
    # a 0-d leaf is one group of size 1
    assert fr.group_lasso({"s": torch.tensor(-2.0)}, 0.3).item() == pytest.approx(0.6)


def test_empty_and_scalar_leaves() -> None:
    p = {"e": torch.empty(0, 3), "f": torch.empty(2, 0), "s": torch.tensor(-1.5)}
    assert fr.l1(p, 2.0).item() == pytest.approx(3.0)
    assert fr.l2(p, 2.0).item() == pytest.approx(4.5)
    assert fr.group_lasso(p, 2.0).item() == pytest.approx(3.0)
    assert fr.group_lasso(p, 2.0, dim=None).item() == pytest.approx(3.0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_value_dtype(dtype: torch.dtype) -> None:
    p = {"a": torch.ones(2, 3, dtype=dtype)}
    for fam in REFERENCED:
        assert fam.penalty(p, torch.tensor(0.5, dtype=torch.float64), **fam.options(p)).dtype == dtype


def test_value_respects_where() -> None:
    g = torch.Generator().manual_seed(1)
    p = {"l.weight": torch.randn(3, 2, generator=g), "l.bias": torch.randn(3, generator=g), "n": torch.arange(3)}
    for fam in REFERENCED:
        opts = fam.options(p)
        got = fam.penalty(p, 0.4, where=fr.select.weights, **opts)
        want = fam.ref_value(p, 0.4, opts, where=lambda path, x: x.ndim >= 2)
        assert got.item() == pytest.approx(want, rel=1e-5)


def test_nested_pytree_kinds() -> None:
    """Paths in a nested tree: λ keyed by dotted path reaches the right leaf."""
    Pair = collections.namedtuple("Pair", ["x", "y"])
    p = {
        "layers": [{"weight": torch.ones(2, 2)}, {"weight": 2 * torch.ones(2, 2)}],
        "od": collections.OrderedDict(z=torch.ones(3), a=torch.ones(1)),
        "nt": Pair(torch.ones(2), (torch.ones(1),)),
    }
    lam = {"layers.0.weight": 1.0, "layers.1.weight": 10.0, "od.z": 100.0, "od.a": 0.0, "nt.0": 1000.0, "nt.1.0": 0.5}
    got = fr.l1(p, lam).item()
    assert got == pytest.approx(4 + 80 + 300 + 0 + 2000 + 0.5)


forced = fr._dispatch.forced
F64 = torch.float64



def _opts(gamma: float | None) -> dict[str, Any]:
    return {} if gamma is None else {"gamma": gamma}


def _per_element(fn: Callable[..., float], gamma: float | None) -> Callable[..., float]:
    return fn if gamma is None else (lambda x, lam: fn(x, lam, gamma))


def _scale(params: Any) -> float:
    """A bound on the size of the terms (for low-precision tolerances)."""
    return 3 * sum(x.double().abs().sum().item() + x.double().square().sum().item()
                   for _, x in walk(params) if is_float(x)) + 1




# ----------------------------------------------------------------------------- values
@pytest.mark.parametrize("name", list(ELEMENTWISE))
@given(data=st.data())
@settings(max_examples=20)
def test_elementwise_values_match_the_formulas(name: str, data: st.DataObject) -> None:
    penalty, gammas, value, _ = ELEMENTWISE[name]
    params = data.draw(trees(dtypes=(torch.float32, torch.float64, torch.bfloat16), mode="zeros", int_leaves=True))
    lam = data.draw(lams(params))
    gamma = data.draw(st.sampled_from(gammas))
    got = penalty(params, lam, **_opts(gamma))
    per = _per_element(value, gamma)
    want = math.fsum(ref_sum(per, x, resolve(lam, p, x)) for p, x in walk(params) if is_float(x))
    rtol, atol = TOL[lowest_dtype(params)]
    assert got.ndim == 0
    assert math.isclose(got.double().item(), want, rel_tol=rtol, abs_tol=atol * _scale(params)), (got, want)


@given(data=st.data())
@settings(max_examples=20)
def test_sparse_group_lasso_value_matches_the_formula(data: st.DataObject) -> None:
    params = data.draw(trees(dtypes=(torch.float32, torch.float64), mode="zeros", int_leaves=True))
    lam = data.draw(lams(params, separable=False))
    rho = data.draw(st.sampled_from([0.0, 0.3, 0.5, 1.0]))
    dim = data.draw(st.sampled_from([0, -1, None]))
    got = fr.sparse_group_lasso(params, lam, l1_ratio=rho, dim=dim)
    want = math.fsum(ref.sgl_value(x, float(resolve(lam, p, x)), rho, dim) for p, x in walk(params) if is_float(x))
    rtol, atol = TOL[lowest_dtype(params)]
    assert math.isclose(got.double().item(), want, rel_tol=rtol, abs_tol=atol * _scale(params)), (got, want)


def test_sparse_group_lasso_limits_are_l1_and_group_lasso() -> None:
    g = torch.Generator().manual_seed(0)
    p = {"a": torch.randn(3, 4, generator=g, dtype=F64), "b": torch.randn(5, generator=g, dtype=F64)}
    torch.testing.assert_close(fr.sparse_group_lasso(p, 0.7, l1_ratio=1.0), fr.l1(p, 0.7))
    torch.testing.assert_close(fr.sparse_group_lasso(p, 0.7, l1_ratio=0.0, dim=-1), fr.group_lasso(p, 0.7, dim=-1))
    for k in ("prox", "grad"):
        a = getattr(fr.sparse_group_lasso, k)(p, 0.7, *((0.5,) if k == "prox" else ()), l1_ratio=0.0, dim=None)
        b = getattr(fr.group_lasso, k)(p, 0.7, *((0.5,) if k == "prox" else ()), dim=None)
        for leaf in p:
            torch.testing.assert_close(a[leaf], b[leaf])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("lam_form", ["number", "tensor", "dict"])
@pytest.mark.parametrize("name", ["nuclear_norm", "orthogonal"])
def test_matrix_values_match_numpy(name: str, lam_form: str, dtype: torch.dtype) -> None:
    params = matrix_tree(dtype)
    lam = {"number": 0.3, "tensor": torch.tensor(0.3, dtype=F64),
           "dict": {k: 0.1 * (i + 1) for i, k in enumerate(params)}}[lam_form]
    penalty = getattr(fr, name)
    value = ref.nuclear_value if name == "nuclear_norm" else ref.orthogonal_value
    want = math.fsum(value(w, float(resolve(lam, k, w))) for k, w in params.items())
    got = penalty(params, lam)
    assert got.dtype == dtype
    rtol = 1e-12 if dtype == F64 else 1e-5
    assert math.isclose(got.double().item(), want, rel_tol=rtol), (got, want)


def test_orthogonal_value_uses_the_smaller_gram_matrix() -> None:
    # 2 orthonormal rows of length 3: W Wᵀ = I exactly (W ᵀW would be a rank-2 projector)
    w = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.6, 0.8]], dtype=F64)
    assert fr.orthogonal({"w": w}, 1.0).item() == 0.0
    assert fr.orthogonal({"w": w.T.contiguous()}, 1.0).item() == 0.0
    assert fr.orthogonal({"w": 2 * w}, 0.5).item() == pytest.approx(0.5 * 2 * 9)  # 4I − I


def test_mcp_scad_l0_nuclear_values_by_hand() -> None:
    w = {"w": torch.tensor([0.5, -2.0, 4.0, 0.0], dtype=F64)}
    # MCP, λ = 1, γ = 3: 0.5 − 0.25/6, 2 − 4/6, then γλ²/2 = 1.5 beyond |w| = 3
    assert fr.mcp(w, 1.0).item() == pytest.approx(0.5 - 0.25 / 6 + 2 - 4 / 6 + 1.5)
    # SCAD, λ = 1, γ = 3: 0.5; (2·3·2 − 4 − 1)/4 = 1.75; λ²(γ + 1)/2 = 2
    assert fr.scad(w, 1.0, gamma=3.0).item() == pytest.approx(0.5 + 1.75 + 2.0)
    assert fr.l0(w, 0.25).item() == 0.75
    m = {"m": torch.tensor([[3.0, 0.0], [0.0, -4.0]], dtype=F64)}
    assert fr.nuclear_norm(m, 0.5).item() == pytest.approx(3.5)
