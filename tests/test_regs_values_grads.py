"""Values and gradients of sparse group lasso, nuclear norm, MCP, SCAD, L0 and the
orthogonality penalty: values against independent formulas (Python arithmetic per element,
numpy's SVD and matrix products), ``.grad`` against closed forms and against autograd of
the value away from kinks, and ``.add_grad`` as grads plus ``.grad``."""

from __future__ import annotations

import math
from typing import Any, Callable

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import funcreg as fr
import reference as ref
from conftest import TOL, elementwise, is_float, lams, leaf_dict, lowest_dtype, ref_sum, resolve, trees, walk

forced = fr._dispatch.forced
F64 = torch.float64

# the separable families: (penalty, γ values to draw, value per element, gradient per element)
ELEMENTWISE: dict[str, tuple[fr.Penalty, list[float | None], Callable[..., float], Callable[..., float] | None]] = {
    "mcp": (fr.mcp, [0.5, 1.5, 3.0], ref.mcp_1, ref.mcp_grad_1),
    "scad": (fr.scad, [1.5, 2.5, 3.7], ref.scad_1, ref.scad_grad_1),
    "l0": (fr.l0, [None], lambda x, lam: lam * (x != 0), None),
}


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


MATRICES = [(4, 3), (3, 5), (2, 3, 2), (1, 1), (5, 5), (2, 1, 3, 1)]


def _matrices(dtype: torch.dtype, seed: int = 0, scale: float = 1.0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {f"m{i}": (scale * torch.randn(s, generator=g, dtype=F64)).to(dtype) for i, s in enumerate(MATRICES)}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("lam_form", ["number", "tensor", "dict"])
@pytest.mark.parametrize("name", ["nuclear_norm", "orthogonal"])
def test_matrix_values_match_numpy(name: str, lam_form: str, dtype: torch.dtype) -> None:
    params = _matrices(dtype)
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


def test_values_by_hand() -> None:
    w = {"w": torch.tensor([0.5, -2.0, 4.0, 0.0], dtype=F64)}
    # MCP, λ = 1, γ = 3: 0.5 − 0.25/6, 2 − 4/6, then γλ²/2 = 1.5 beyond |w| = 3
    assert fr.mcp(w, 1.0).item() == pytest.approx(0.5 - 0.25 / 6 + 2 - 4 / 6 + 1.5)
    # SCAD, λ = 1, γ = 3: 0.5; (2·3·2 − 4 − 1)/4 = 1.75; λ²(γ + 1)/2 = 2
    assert fr.scad(w, 1.0, gamma=3.0).item() == pytest.approx(0.5 + 1.75 + 2.0)
    assert fr.l0(w, 0.25).item() == 0.75
    m = {"m": torch.tensor([[3.0, 0.0], [0.0, -4.0]], dtype=F64)}
    assert fr.nuclear_norm(m, 0.5).item() == pytest.approx(3.5)


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
    full = _matrices(F64, seed=1)
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
    params = _matrices(dtype, seed=3, scale=0.5)
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
def test_add_grad_is_grads_plus_grad(name: str, path: str) -> None:
    penalty = getattr(fr, name)
    params = {**_matrices(torch.float32, seed=4), **{f"d.{k}": v for k, v in _matrices(F64, seed=5).items()}}
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
