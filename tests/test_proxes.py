"""Proximal operators of every family: closed forms and optimality conditions, that the
prox is the (global) argmin of ½‖u−w‖² + step·penalty(u) (dense-grid brute force for the
nonconvex families, in every step regime), skglm's own prox functions where their closed
forms hold, numpy's SVD for singular value thresholding, and exact zeros at the
thresholds, ties included."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import funcreg as fr
import reference as ref
from conftest import (
    REFERENCED,
    REFERENCED_IDS,
    Family,
    assert_close_ref,
    elementwise,
    group_slices,
    lams,
    leaf_dict,
    resolve,
    sign,
    steps,
    trees,
    walk,
)
from registry import FAMILIES as ALL_FAMILIES

forced = fr._dispatch.forced


@pytest.mark.parametrize("fam", REFERENCED, ids=REFERENCED_IDS)
@given(data=st.data())
def test_prox_matches_closed_form(fam: Family, data: st.DataObject) -> None:
    params = data.draw(trees(dtypes=(torch.float32, torch.float64, torch.bfloat16), mode="zeros", int_leaves=True))
    lam = data.draw(lams(params, separable=fam.separable))
    step = data.draw(steps(params, separable=fam.separable))
    opts = fam.options(params, data.draw)
    got = leaf_dict(fam.penalty.prox(params, lam, step, **opts))
    want = fam.ref_prox(params, lam, step, opts)
    originals = leaf_dict(params)
    for path, x in walk(params):
        if path in want:
            scale = 2 * (1 + (x.double().abs().max().item() if x.numel() else 0))
            assert_close_ref(got[path], want[path], x.dtype, scale=scale, what=path)
        else:  # an unselected (integer) leaf is passed through as is
            assert got[path] is originals[path]


def _optimality_residual(fam: Family, w: torch.Tensor, u: torch.Tensor, lam: torch.Tensor, step: torch.Tensor, o: dict) -> float:
    """The largest violation of 0 ∈ u − w + step·∂penalty(u), written per family."""
    n = fam.name
    if n in ("l1", "elastic_net"):
        rho = o.get("rho", 1.0)

        def viol(wi: float, ui: float, l: float, s: float) -> float:
            a, b = s * l * rho, s * l * (1 - rho)  # step·(l1 weight), step·(l2 weight)
            r = wi - ui - b * ui  # must lie in a·∂|ui|
            if ui == 0:
                return max(abs(r) - a, 0.0)
            if sign(ui) != sign(wi):
                return math.inf
            return abs(r - a * sign(ui))

        return elementwise(viol, w, u, lam, step).max().item() if w.numel() else 0.0
    if n == "l2":
        return (elementwise(lambda wi, ui, l, s: ui - wi + 2 * l * s * ui, w, u, lam, step).abs().max().item() if w.numel() else 0.0)
    if n == "l2_sp":
        return (elementwise(lambda wi, ui, x0, l, s: ui - wi + 2 * l * s * (ui - x0), w, u, o["w0"], lam, step).abs().max().item() if w.numel() else 0.0)
    worst = 0.0
    for get, n_g in group_slices(w, o["dim"]):
        wg, ug = get(w.double()).reshape(-1).tolist(), get(u.double()).reshape(-1).tolist()
        t = float(lam) * float(step) * math.sqrt(n_g)
        unorm = math.sqrt(math.fsum(v * v for v in ug))
        if unorm == 0:
            worst = max(worst, math.sqrt(math.fsum(v * v for v in wg)) - t)
        else:
            worst = max([worst] + [abs(wi - ui - t * ui / unorm) for wi, ui in zip(wg, ug)])
    return worst


@pytest.mark.parametrize("fam", REFERENCED, ids=REFERENCED_IDS)
@given(data=st.data())
def test_prox_satisfies_optimality(fam: Family, data: st.DataObject) -> None:
    params = data.draw(trees(dtypes=(torch.float64,), mode="zeros"))
    lam = data.draw(lams(params, separable=fam.separable))
    step = data.draw(steps(params, separable=fam.separable))
    opts = fam.options(params, data.draw)
    with forced(data.draw(st.sampled_from(["fast", "composable"]))):
        out = leaf_dict(fam.penalty.prox(params, lam, step, **opts))
    for path, w in walk(params):
        o = fam.leaf_options(opts, path)
        res = _optimality_residual(fam, w, out[path], resolve(lam, path, w), resolve(step, path, w), o)
        assert res <= 1e-12 * (1 + (w.abs().max().item() if w.numel() else 0)) * 10, (path, res)


@given(data=st.data())
def test_l1_zero_set_is_exact(data: st.DataObject) -> None:
    """float64: u == 0 exactly where |w| <= λ·step, and u == w − t·sign(u) elsewhere."""
    params = data.draw(trees(dtypes=(torch.float64,), mode="zeros"))
    lam = data.draw(lams(params))
    step = data.draw(steps(params))
    with forced(data.draw(st.sampled_from(["fast", "composable"]))):
        out = leaf_dict(fr.l1.prox(params, lam, step))
    for path, w in walk(params):
        t = resolve(lam, path, w) * resolve(step, path, w)
        u = out[path]
        zero = w.abs() <= t
        assert torch.equal(u == 0, zero), path
        torch.testing.assert_close(u[~zero], (w - t * torch.sign(u))[~zero] if t.ndim else w[~zero] - t * torch.sign(u[~zero]), rtol=0, atol=1e-15)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("path", ["fast", "composable"])
@pytest.mark.parametrize("form", ["number", "tensor", "dict", "element"])
def test_l1_ties_at_threshold(dtype: torch.dtype, path: str, form: str) -> None:
    """Values exactly at ±t (dyadic, so exact in every dtype) go to exactly 0."""
    t = 0.125  # λ = 0.25, step = 0.5
    w = torch.tensor([t, -t, t + 2**-6, -(t - 2**-6), 0.0, 3 * t, -1.0], dtype=dtype)
    want = torch.tensor([0.0, 0.0, 2**-6, 0.0, 0.0, 2 * t, -1.0 + t], dtype=dtype)
    lam, step = {
        "number": (0.25, 0.5),
        "tensor": (torch.tensor(0.25), torch.tensor(0.5, dtype=torch.float64)),
        "dict": ({"w": 0.25}, {"w": torch.tensor(0.5)}),
        "element": ({"w": torch.full((7,), 0.25)}, {"w": torch.full((7,), 0.5, dtype=torch.float64)}),
    }[form]
    with torch.no_grad(), forced(path):
        u = fr.l1.prox({"w": w}, lam, step)["w"]
        en = fr.elastic_net.prox({"w": w}, lam, step, l1_ratio=1.0)["w"]
    assert u.dtype == dtype
    assert torch.equal(u, want), u
    assert torch.equal(en, want), en
    assert (u[:2] == 0).all() and (u[3:5] == 0).all()


@pytest.mark.parametrize("path", ["fast", "composable"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_group_prox_zeroes_exactly_at_threshold(path: str, dtype: torch.dtype) -> None:
    # rows of size 4 (sqrt = 2); λ·step = 1 → t = 2
    w = torch.tensor(
        [[1.0, 1.0, 1.0, 1.0],  # norm 2 == t: zero (tie)
         [1.0, -1.0, 1.0, 1.5],  # norm > 2: shrunk
         [0.5, 0.5, 0.5, -0.5],  # norm 1 < t: zero
         [0.0, 0.0, 0.0, 0.0],  # already zero: stays zero, no NaN
         [4.0, 0.0, -3.0, 0.0]],  # norm 5: scaled by 3/5
        dtype=dtype,
    )
    with torch.no_grad(), forced(path):
        u = fr.group_lasso.prox({"w": w}, 0.5, 2.0)["w"]
    assert torch.isfinite(u).all()
    for i in (0, 2, 3):
        assert torch.equal(u[i], torch.zeros(4, dtype=dtype)), i
    norm1 = math.sqrt(1 + 1 + 1 + 2.25)
    torch.testing.assert_close(u[1], w[1] * (norm1 - 2) / norm1)
    torch.testing.assert_close(u[4], torch.tensor([2.4, 0.0, -1.8, 0.0], dtype=dtype))
    # dim=None: one group of 20, t = 1·sqrt(20); ‖w‖ = sqrt(4 + 6.25 + 1 + 25) < sqrt(20)·... check both ways
    total = w.double().norm().item()
    for lam in (total / math.sqrt(20), total / math.sqrt(20) * 0.999):
        with torch.no_grad(), forced(path):
            v = fr.group_lasso.prox({"w": w.double()}, lam, 1.0, dim=None)["w"]
        if lam * math.sqrt(20) >= total:
            assert torch.equal(v, torch.zeros_like(v))
        else:
            assert (v != 0).any()


@given(data=st.data())
@settings(max_examples=20)
def test_group_zero_set_is_exact(data: st.DataObject) -> None:
    """A group is zeroed exactly when its norm <= λ·step·sqrt(n_g) (away from ties)."""
    params = data.draw(trees(dtypes=(torch.float64,), mode="zeros"))
    lam = data.draw(lams(params, separable=False))
    step = data.draw(steps(params, separable=False))
    dim = data.draw(st.sampled_from([0, -1, None]))
    with forced(data.draw(st.sampled_from(["fast", "composable"]))):
        out = leaf_dict(fr.group_lasso.prox(params, lam, step, dim=dim))
    for path, w in walk(params):
        t0 = float(resolve(lam, path, w)) * float(resolve(step, path, w))
        for get, n_g in group_slices(w, dim):
            norm = math.sqrt(sum(v * v for v in get(w).reshape(-1).tolist()))
            t = t0 * math.sqrt(n_g)
            if abs(norm - t) <= 1e-9 * max(t, 1e-300):
                continue
            ug = get(out[path])
            assert bool((ug == 0).all()) == (norm <= t), (path, norm, t)


def _objective(fam: Family, u: torch.Tensor, w: torch.Tensor, lam: float, step: float, o: dict) -> float:
    """½‖u − w‖² + step·penalty(u) with the reference penalty (independent of funcreg)."""
    return 0.5 * (u - w).square().sum().item() + step * fam.leaf_value(u, torch.tensor(lam, dtype=torch.float64), **o)


@pytest.mark.parametrize("fam", REFERENCED, ids=REFERENCED_IDS)
@pytest.mark.parametrize("seed", range(4))
def test_prox_is_the_argmin(fam: Family, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(4, 3, generator=g, dtype=torch.float64)
    w[1] *= 0.05  # a group / some elements that the prox zeroes
    params = {"w": w}
    opts = fam.options(params)
    lam, step = [(0.3, 1.0), (1.0, 0.5), (0.05, 2.0), (2.0, 0.25)][seed]
    u = fam.penalty.prox(params, lam, step, **opts)["w"]
    o = fam.leaf_options(opts, "w")
    best = _objective(fam, u, w, lam, step, o)
    candidates = [w, torch.zeros_like(w)]
    for k in range(60):
        eps = [1e-1, 1e-2, 1e-3][k % 3]
        d = torch.randn(w.shape, generator=g, dtype=torch.float64)
        candidates.append(u + eps * d)
        candidates.append(u + eps * d * (u != 0))  # stay on the support
    for c in candidates:
        assert best <= _objective(fam, c, w, lam, step, o) + 1e-13


@pytest.mark.parametrize("fam", REFERENCED, ids=REFERENCED_IDS)
def test_prox_identity_at_zero_lam_or_step(fam: Family) -> None:
    g = torch.Generator().manual_seed(5)
    p = {"w": torch.randn(3, 2, generator=g, dtype=torch.float64), "b": torch.randn(2, generator=g, dtype=torch.float64)}
    opts = fam.options(p)
    for lam, step in [(0.0, 1.0), (1.0, 0.0), (torch.tensor(0.0), torch.tensor(3.0))]:
        out = fam.penalty.prox(p, lam, step, **opts)
        for k in p:
            assert torch.equal(out[k], p[k]), (k, lam, step)


def test_prox_closed_forms_by_hand() -> None:
    w = {"w": torch.tensor([2.0, -0.5, 0.0], dtype=torch.float64)}
    torch.testing.assert_close(fr.l2.prox(w, 0.5, 1.0)["w"], w["w"] / 2)
    torch.testing.assert_close(fr.l2.prox(w, 0.25, 3.0)["w"], w["w"] / 2.5)
    # elastic net: soft(w, sλρ)/(1 + sλ(1−ρ)), s=1, λ=1, ρ=0.5 → soft(w, 0.5)/1.5
    torch.testing.assert_close(
        fr.elastic_net.prox(w, 1.0, 1.0, l1_ratio=0.5)["w"], torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    )
    torch.testing.assert_close(
        fr.elastic_net.prox(w, 2.0, 0.5, l1_ratio=0.25)["w"],
        torch.tensor([1.75 / 1.75, 0.25 / 1.75 * -1, 0.0], dtype=torch.float64),
    )
    # l2_sp: (w + c w0)/(1 + c), c = 2λs = 1 → midpoint
    w0 = {"w": torch.tensor([0.0, 0.5, 4.0], dtype=torch.float64)}
    torch.testing.assert_close(fr.l2_sp.prox(w, 0.5, 1.0, anchor=w0)["w"], torch.tensor([1.0, 0.0, 2.0], dtype=torch.float64))
    # per-element step (separable): each element its own threshold
    s = {"w": torch.tensor([1.0, 0.25, 5.0], dtype=torch.float64)}
    torch.testing.assert_close(fr.l1.prox(w, 1.0, s)["w"], torch.tensor([1.0, -0.25, 0.0], dtype=torch.float64))


def test_group_lasso_rejects_per_element_step_and_lam() -> None:
    p = {"w": torch.ones(2, 3)}
    with pytest.raises(ValueError, match="'w'"):
        fr.group_lasso.prox(p, 0.1, {"w": torch.ones(2, 3)})
    with pytest.raises(ValueError, match="'w'"):
        fr.group_lasso.prox(p, {"w": torch.ones(2, 3)}, 0.1)
    with pytest.raises(ValueError, match="group"):
        fr.group_lasso(p, {"w": torch.ones(2, 3)})
    with pytest.raises(ValueError):
        fr.group_lasso.prox(p, 0.1, torch.ones(2, 3))


PATHS = ["fast", "composable"]
F64 = torch.float64

FAMILIES_1D = {f.name: (f.penalty, f.prox_closed, f.value_closed, f.regimes) for f in ALL_FAMILIES if f.prox_closed}


def _w(n: int = 1203, top: float = 6.0) -> torch.Tensor:
    """A grid of ``n`` (odd, a multiple of 3) inputs of both signs, 0 among them, as a
    (3, n/3) matrix leaf."""
    x = torch.linspace(-top, top, n, dtype=F64)
    x[n // 2] = 0.0
    return x.reshape(3, -1)


def _forms(form: str, w: torch.Tensor, lam: float, gamma: float, step: float) -> tuple[Any, Any, Any]:
    """λ, step and γ as Python numbers, 0-d tensors, or per-element λ and step tensors."""
    if form == "float":
        return lam, step, gamma
    if form == "tensor":
        return torch.tensor(lam, dtype=F64), torch.tensor(step, dtype=F64), torch.tensor(gamma, dtype=F64)
    return {"w": torch.full(w.shape, lam, dtype=F64)}, {"w": torch.full(w.shape, step, dtype=F64)}, gamma


# ------------------------------------------------------------------------ MCP and SCAD
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("form", ["float", "tensor", "element"])
@pytest.mark.parametrize("name", list(FAMILIES_1D))
def test_mcp_scad_prox_match_the_closed_forms(name: str, form: str, path: str) -> None:
    penalty, closed, _, cases = FAMILIES_1D[name]
    w = _w()
    for lam, gamma, step in cases:
        a, s, g = _forms(form, w, lam, gamma, step)
        with forced(path):
            u = penalty.prox({"w": w}, a, s, gamma=g)["w"]
        torch.testing.assert_close(u, closed(w, lam, gamma, step), rtol=1e-13, atol=1e-13,
                                   msg=lambda m: f"λ={lam} γ={gamma} step={step}: {m}")


def _grid_objective(value: Callable[..., torch.Tensor], lam: Any, gamma: Any, step: Any) -> Callable[..., torch.Tensor]:
    return lambda u, w: (u - w).square() / 2 + step * value(u, lam, gamma)


@pytest.mark.parametrize("form", ["float", "tensor", "element"])
@pytest.mark.parametrize("name", list(FAMILIES_1D))
def test_mcp_scad_prox_is_the_global_minimizer(name: str, form: str) -> None:
    """The objective at the prox is no larger than its minimum over a dense grid, for every
    step (step ≥ γ for MCP and step ≥ γ − 1 for SCAD included, where skglm's closed forms
    stop being minimizers)."""
    penalty, _, value, cases = FAMILIES_1D[name]
    gen = torch.Generator().manual_seed(0)
    for lam, gamma, step in cases:
        w = (torch.rand(200, generator=gen, dtype=F64) * 2 - 1) * 2 * lam * max(gamma, math.sqrt(gamma * step) + step, 1.0)
        a, s, g = _forms(form, w, lam, gamma, step)
        u = penalty.prox({"w": w}, a, s, gamma=g)["w"]
        h = _grid_objective(value, lam, gamma, step)
        best, _ = ref.grid_argmin(h, w, points=2001)
        gap = h(u, w) - best
        assert gap.max() <= 1e-12 * (1 + w.abs().max()), (lam, gamma, step, gap.max().item())


@pytest.mark.parametrize("name", list(FAMILIES_1D))
def test_mcp_scad_prox_is_global_for_batched_step_and_gamma(name: str) -> None:
    """Step and γ batched under vmap (an ensemble over both): each member's prox is its
    own global minimizer, and equals the closed form."""
    penalty, closed, value, _ = FAMILIES_1D[name]
    low = 0.2 if name == "mcp" else 1.1
    gen = torch.Generator().manual_seed(1)
    gammas = low + torch.rand(24, generator=gen, dtype=F64) * 5
    steps = torch.rand(24, generator=gen, dtype=F64) * 2 * (gammas + 1)
    steps[:4] = gammas[:4] if name == "mcp" else gammas[:4] - 1  # exactly at the regime change
    lam = 0.6
    w = torch.linspace(-8, 8, 201, dtype=F64)
    out = torch.func.vmap(lambda s, g: penalty.prox({"w": w}, lam, s, gamma=g)["w"])(steps, gammas)
    for k in range(len(steps)):
        s, g = steps[k].item(), gammas[k].item()
        h = _grid_objective(value, lam, g, s)
        best, _ = ref.grid_argmin(h, w, points=2001)
        assert (h(out[k], w) - best).max() <= 1e-12 * 9, (s, g)
        torch.testing.assert_close(out[k], closed(w, lam, g, s), rtol=1e-12, atol=1e-12)


def test_mcp_prox_per_leaf_steps_in_both_regimes() -> None:
    """One call whose leaves fall in different regimes (firm and hard thresholding)."""
    w = _w(603)
    steps = {"a": 0.5, "b": 5.0, "c": torch.tensor(3.0, dtype=F64)}
    out = fr.mcp.prox({"a": w, "b": w, "c": w}, 0.4, steps, gamma=3.0)
    for k, s in steps.items():
        torch.testing.assert_close(out[k], ref.mcp_prox(w, 0.4, 3.0, float(s)), rtol=1e-13, atol=1e-13)


def _skglm_prox_funcs() -> Any:
    return pytest.importorskip(
        "skglm.utils.prox_funcs", reason="skglm (the test extra) compares its own prox functions")


def test_mcp_scad_prox_match_skglm_where_its_closed_forms_hold() -> None:
    """skglm's prox_MCP is the minimizer only for step < γ, and prox_SCAD divides by
    γ − 1 − step; compare there, a few hundred scalar calls in all."""
    pf = _skglm_prox_funcs()
    gen = torch.Generator().manual_seed(2)
    cases = [(0.3, 3.0, 0.5), (1.0, 3.0, 2.9), (0.7, 1.5, 1.0)]
    for lam, gamma, step in cases:
        w = (torch.rand(60, generator=gen, dtype=F64) * 2 - 1) * 2 * gamma * lam
        got = fr.mcp.prox({"w": w}, lam, step, gamma=gamma)["w"]
        want = torch.tensor([pf.prox_MCP(x, step, lam, gamma) for x in w.tolist()], dtype=F64)
        torch.testing.assert_close(got, want, rtol=1e-13, atol=1e-13)
    for lam, gamma, step in [(0.3, 3.7, 0.5), (1.0, 3.7, 2.0), (0.5, 3.0, 3.0), (0.4, 2.0, 6.0)]:
        w = (torch.rand(60, generator=gen, dtype=F64) * 2 - 1) * 3 * gamma * lam
        got = fr.scad.prox({"w": w}, lam, step, gamma=gamma)["w"]
        want = torch.tensor([pf.prox_SCAD(x, step, lam, gamma) for x in w.tolist()], dtype=F64)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_mcp_prox_beats_skglm_beyond_its_closed_form() -> None:
    """For step ≥ γ skglm hard-thresholds at λ·step instead of λ·sqrt(γ·step): funcreg's
    prox is never worse, and strictly better where skglm zeroes a weight it should keep."""
    pf = _skglm_prox_funcs()
    lam, gamma, step = 0.5, 2.0, 8.0  # keep |w| > λ·sqrt(γ·step) = 2, skglm zeroes |w| <= 4
    w = torch.linspace(-5, 5, 101, dtype=F64)
    got = fr.mcp.prox({"w": w}, lam, step, gamma=gamma)["w"]
    theirs = torch.tensor([pf.prox_MCP(x, step, lam, gamma) for x in w.tolist()], dtype=F64)
    h = _grid_objective(ref.mcp_t, lam, gamma, step)
    assert (h(got, w) <= h(theirs, w) + 1e-12).all()
    assert (h(got, w) < h(theirs, w) - 1e-3).sum() > 10


# ---------------------------------------------------------------------------------- L0
@pytest.mark.parametrize("path", PATHS)
def test_l0_prox_is_hard_thresholding_and_the_minimizer(path: str) -> None:
    w = _w(903, 3.0)
    for lam, step in [(0.5, 1.0), (0.125, 0.3), (2.0, 2.0), (0.0, 1.0), (1.0, 0.0)]:
        with forced(path):
            u = fr.l0.prox({"w": w}, lam, step)["w"]
        torch.testing.assert_close(u, ref.hard(w, math.sqrt(2 * lam * step)), rtol=0, atol=0)
        # per element the only candidates are 0 and w itself: the prox is the better one
        h = (u - w).square() / 2 + step * lam * (u != 0).to(F64)
        assert (h <= torch.minimum(w.square() / 2, step * lam * (w != 0).to(F64)) + 1e-15).all()


# -------------------------------------------------------------------- sparse group lasso
SGL_SHAPES = [((4, 6), 0), ((4, 6), 1), ((3, 2, 2), 0), ((5,), 0), ((4, 3), None), ((), 0)]


def _sgl_w(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=g, dtype=F64)
    if len(shape) >= 2:
        w[0] *= 0.05  # a group the prox zeroes whole
    return w


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("shape,dim", SGL_SHAPES)
def test_sparse_group_lasso_prox_matches_the_closed_form(shape: tuple[int, ...], dim: int | None, path: str) -> None:
    w = _sgl_w(shape, 3)
    for lam, step, rho in [(0.3, 1.0, 0.5), (1.0, 0.5, 0.0), (0.5, 0.7, 1.0), (0.2, 2.0, 0.8), (0.0, 1.0, 0.3)]:
        with forced(path):
            u = fr.sparse_group_lasso.prox({"w": w}, lam, step, l1_ratio=rho, dim=dim)["w"]
        torch.testing.assert_close(u, ref.sgl_prox(w, lam, rho, step, dim), rtol=1e-13, atol=1e-14)


@pytest.mark.parametrize("shape,dim", SGL_SHAPES[:4])
def test_sparse_group_lasso_prox_is_the_argmin(shape: tuple[int, ...], dim: int | None) -> None:
    gen = torch.Generator().manual_seed(4)
    w = _sgl_w(shape, 5)
    for lam, step, rho in [(0.3, 1.0, 0.5), (0.8, 0.5, 0.2), (0.2, 2.0, 0.9)]:
        u = fr.sparse_group_lasso.prox({"w": w}, lam, step, l1_ratio=rho, dim=dim)["w"]

        def h(v: torch.Tensor) -> float:
            return 0.5 * float((v - w).square().sum()) + step * ref.sgl_value(v, lam, rho, dim)

        best = h(u)
        for k in range(90):
            d = torch.randn(w.shape, generator=gen, dtype=F64) * [1e-1, 1e-3, 1e-6][k % 3]
            assert best <= h(u + d) + 1e-13
            assert best <= h(u + d * (u != 0)) + 1e-13  # along the support
        assert best <= h(torch.zeros_like(w)) and best <= h(w)


# --------------------------------------------------------------------------- nuclear norm
NUCLEAR_SHAPES = [(4, 3), (3, 5), (2, 3, 2), (6, 6)]


@pytest.mark.parametrize("path", PATHS)
def test_svt_matches_numpy_svd(path: str) -> None:
    """Several leaves of one shape (one batched SVD on the fast path) and of others."""
    gen = torch.Generator().manual_seed(7)
    params = {f"{i}.{j}": torch.randn(s, generator=gen, dtype=F64) for i, s in enumerate(NUCLEAR_SHAPES) for j in range(3)}
    for lam, step in [(0.3, 1.0), (1.0, 0.5), (5.0, 1.0), (0.0, 1.0)]:
        with forced(path):
            out = fr.nuclear_norm.prox(params, lam, step)
        for k, w in params.items():
            torch.testing.assert_close(out[k], ref.svt(w, lam * step), rtol=1e-12, atol=1e-12)
            rank = int((np.linalg.svd(ref.as_matrix(w), compute_uv=False) > lam * step).sum())
            assert torch.linalg.matrix_rank(out[k].reshape(w.shape[0], -1)) == rank


@pytest.mark.parametrize("shape", NUCLEAR_SHAPES[:3])
def test_svt_is_the_argmin(shape: tuple[int, ...]) -> None:
    gen = torch.Generator().manual_seed(8)
    w = torch.randn(shape, generator=gen, dtype=F64)
    lam, step = 0.4, 1.5
    u = fr.nuclear_norm.prox({"w": w}, lam, step)["w"]

    def h(v: torch.Tensor) -> float:
        return 0.5 * float((v - w).square().sum()) + step * ref.nuclear_value(v, lam)

    best = h(u)
    for k in range(60):
        d = torch.randn(shape, generator=gen, dtype=F64) * [1e-1, 1e-3, 1e-6][k % 3]
        assert best <= h(u + d) + 1e-12
    assert best <= h(torch.zeros_like(w)) and best <= h(w)


# ----------------------------------------------------------------------- exact zeros, ties
TIE_DTYPES = [torch.float32, torch.float64, torch.bfloat16]


def _tie_input(t: float, dtype: torch.dtype) -> torch.Tensor:
    """Values at ±t exactly (dyadic: exact in every dtype), just inside and outside, zero."""
    return torch.tensor([t, -t, t - 2**-5, -(t + 2**-5), 0.0, 4 * t], dtype=dtype)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", TIE_DTYPES, ids=str)
@pytest.mark.parametrize("case", [
    # (family, λ, step, γ, the threshold at or below which |w| goes to 0)
    pytest.param((fr.mcp, 0.25, 0.5, 3.0, 0.125), id="mcp-firm"),
    pytest.param((fr.mcp, 0.25, 2.0, 2.0, 0.5), id="mcp-step=gamma"),
    pytest.param((fr.mcp, 0.25, 8.0, 2.0, 1.0), id="mcp-hard"),
    pytest.param((fr.scad, 0.25, 0.5, 3.75, 0.125), id="scad-three-piece"),
    pytest.param((fr.scad, 0.25, 2.5, 3.0, 0.625), id="scad-jump"),
    pytest.param((fr.scad, 0.25, 4.0, 3.0, 1.0), id="scad-hard"),
    pytest.param((fr.l0, 0.125, 1.0, None, 0.5), id="l0"),
])
@pytest.mark.parametrize("form", ["float", "tensor", "element"])
def test_prox_zeroes_exactly_at_the_threshold(case: tuple, dtype: torch.dtype, path: str, form: str) -> None:
    penalty, lam, step, gamma, t = case
    w = _tie_input(t, dtype)
    opts = {} if gamma is None else {"gamma": torch.tensor(gamma) if form == "tensor" else gamma}
    if form == "tensor":
        lam, step = torch.tensor(lam, dtype=F64), torch.tensor(step)
    elif form == "element":
        lam, step = ({"w": torch.full(w.shape, v, dtype=F64)} for v in (lam, step))
    with torch.no_grad(), forced(path):
        u = penalty.prox({"w": w}, lam, step, **opts)["w"]
    assert u.dtype == dtype
    zero = w.abs() <= t
    assert torch.equal(u == 0, zero), (u, w)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", TIE_DTYPES, ids=str)
def test_sparse_group_lasso_zeroes_elements_and_groups_exactly(dtype: torch.dtype, path: str) -> None:
    # λ = 1, step = 0.5, ρ = 0.5: elements at |w| <= 0.25 go; then groups of 4 (sqrt 2) whose
    # soft-thresholded norm is <= 0.25·2 = 0.5 go too
    w = torch.tensor([[0.25, -0.25, 0.125, 0.0],  # every element at or inside the L1 threshold
                      [0.5, -0.5, 0.25, 0.0],  # soft → (0.25, -0.25, 0, 0): norm sqrt(1/8) < 0.5
                      [0.75, 0.25, 0.0, 0.0],  # soft → (0.5, 0, 0, 0): norm 0.5 == 0.5, a tie
                      [2.25, -1.25, 0.25, 0.0]], dtype=dtype)  # survives, with exact zeros inside
    with torch.no_grad(), forced(path):
        u = fr.sparse_group_lasso.prox({"w": w}, 1.0, 0.5, l1_ratio=0.5)["w"]
    assert u.dtype == dtype
    assert torch.equal(u[:3], torch.zeros(3, 4, dtype=dtype))
    assert torch.equal(u[3] == 0, torch.tensor([False, False, True, True]))
    # the survivor: soft (2, −1, 0, 0), norm sqrt(5), scaled by 1 − 0.5/sqrt(5)
    want = torch.tensor([2.0, -1.0, 0.0, 0.0], dtype=F64) * (1 - 0.5 / math.sqrt(5))
    torch.testing.assert_close(u[3].double(), want, rtol=1e-2 if dtype == torch.bfloat16 else 1e-6, atol=0)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_svt_zeroes_at_the_threshold(dtype: torch.dtype, path: str) -> None:
    """torch has no bfloat16 SVD on CPU. Singular values at or below the threshold, ties
    included, give an exact zero matrix; a diagonal one keeps exact zeros."""
    gen = torch.Generator().manual_seed(9)
    q, _ = torch.linalg.qr(torch.randn(4, 4, generator=gen, dtype=F64))
    w = (q @ torch.diag(torch.tensor([2.0, 1.0, 0.5, 0.25], dtype=F64)) @ q.T).to(dtype)
    top = float(torch.linalg.svdvals(w.double())[0])
    d = torch.diag(torch.tensor([2.0, 1.0, 0.5, 0.0], dtype=dtype))
    with forced(path):
        zeroed = fr.nuclear_norm.prox({"w": w}, top * 1.001, 1.0)["w"]
        tie = fr.nuclear_norm.prox({"d": d}, 1.0, 1.0)["d"]
    assert torch.equal(zeroed, torch.zeros_like(w))
    assert torch.equal(tie.abs(), torch.diag(torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=dtype)))


@pytest.mark.parametrize("name", list(FAMILIES_1D))
def test_prox_is_the_identity_at_zero_lam(name: str) -> None:
    penalty = FAMILIES_1D[name][0]
    w = _w(303)
    for path in PATHS:
        with forced(path):
            assert torch.equal(penalty.prox({"w": w}, 0.0, 2.0)["w"], w)
            assert torch.equal(penalty.prox({"w": w}, torch.tensor(0.0), torch.tensor(5.0))["w"], w)


@pytest.mark.parametrize("path", ["fast", "composable"])
def test_hard_thresholds_keep_nan_on_both_paths(path: str) -> None:
    """A NaN weight stays NaN (as through the soft threshold), whichever path runs."""
    w = {"w": torch.tensor([float("nan"), 0.1, 5.0])}
    with fr._dispatch.forced(path):
        for out in (fr.l0.prox(w, 0.5, 1.0)["w"], fr.mcp.prox(w, 1.0, 5.0, gamma=3.0)["w"],
                    fr.mcp.prox(w, 1.0, torch.tensor(5.0), gamma=3.0)["w"]):
            assert out[0].isnan() and out[1] == 0 and out[2] == 5.0, out
