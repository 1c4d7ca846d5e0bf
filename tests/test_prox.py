"""Proximal operators: closed forms, optimality conditions, exact zeros at the threshold
(ties included), and that the prox is the argmin of ½‖u−w‖² + step·penalty(u)."""

from __future__ import annotations

import math

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

forced = fr._dispatch.forced


@pytest.mark.parametrize("fam", FAMILIES, ids=FAMILY_IDS)
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


@pytest.mark.parametrize("fam", FAMILIES, ids=FAMILY_IDS)
@given(data=st.data())
def test_prox_satisfies_optimality(fam: Family, data: st.DataObject) -> None:
    params = data.draw(trees(dtypes=(torch.float64,), mode="zeros"))
    lam = data.draw(lams(params, separable=fam.separable))
    step = data.draw(steps(params, separable=fam.separable))
    opts = fam.options(params, data.draw)
    with forced(data.draw(st.sampled_from(["fast", "composable"]))):
        out = leaf_dict(fam.penalty.prox(params, lam, step, **opts))
    for path, w in walk(params):
        o = fam._leaf_opts(opts, path)
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


@pytest.mark.parametrize("fam", FAMILIES, ids=FAMILY_IDS)
@pytest.mark.parametrize("seed", range(4))
def test_prox_is_the_argmin(fam: Family, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(4, 3, generator=g, dtype=torch.float64)
    w[1] *= 0.05  # a group / some elements that the prox zeroes
    params = {"w": w}
    opts = fam.options(params)
    lam, step = [(0.3, 1.0), (1.0, 0.5), (0.05, 2.0), (2.0, 0.25)][seed]
    u = fam.penalty.prox(params, lam, step, **opts)["w"]
    o = fam._leaf_opts(opts, "w")
    best = _objective(fam, u, w, lam, step, o)
    candidates = [w, torch.zeros_like(w)]
    for k in range(60):
        eps = [1e-1, 1e-2, 1e-3][k % 3]
        d = torch.randn(w.shape, generator=g, dtype=torch.float64)
        candidates.append(u + eps * d)
        candidates.append(u + eps * d * (u != 0))  # stay on the support
    for c in candidates:
        assert best <= _objective(fam, c, w, lam, step, o) + 1e-13


@pytest.mark.parametrize("fam", FAMILIES, ids=FAMILY_IDS)
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
