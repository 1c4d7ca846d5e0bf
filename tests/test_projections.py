"""Projections (``fr.project``): closed forms, ``torch.renorm``, Duchi et al.'s sort-based
L1-ball projection written as the paper's loop and a bisection on the threshold, the
variational inequality that characterizes a projection, and exact zeros."""

from __future__ import annotations

import math

import pytest
import torch

import funcreg as fr
import reference as ref

forced = fr._dispatch.forced
PATHS = ["fast", "composable"]
F64 = torch.float64
DTYPES = [torch.float32, torch.float64]


def _tree(dtype: torch.dtype = F64, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    shapes = {"a.weight": (5, 4), "a.bias": (5,), "conv": (3, 2, 2, 2), "s": (), "wide": (2, 9), "empty": (0, 3)}
    return {k: (torch.randn(s, generator=g, dtype=F64) * 0.8).to(dtype) for k, s in shapes.items()}


def _tol(dtype: torch.dtype) -> dict[str, float]:
    return {"rtol": 1e-12, "atol": 1e-14} if dtype == F64 else {"rtol": 2e-6, "atol": 2e-7}


# ---------------------------------------------------------------------------- max_norm
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("dim", [0, 1, -1])
def test_max_norm_matches_renorm_and_the_closed_form(dim: int, dtype: torch.dtype, path: str) -> None:
    params = {k: v for k, v in _tree(dtype).items() if v.ndim >= 2}
    radius = 0.9
    with forced(path):
        out = fr.project.max_norm(params, radius, dim=dim)
    for k, w in params.items():
        d = dim % w.ndim
        want = torch.stack([s * min(1.0, radius / float(s.double().norm())) if float(s.norm()) > 0 else s
                            for s in w.double().unbind(d)], d) if w.shape[d] else w.double()
        torch.testing.assert_close(out[k].double(), want, **_tol(dtype), msg=k)
        # torch.renorm divides by norm + 1e-7 (so it lands just inside the ball)
        torch.testing.assert_close(out[k], torch.renorm(w, 2, d, radius), rtol=1e-6, atol=1e-7, msg=k)
        inside = torch.linalg.vector_norm(w, dim=[i for i in range(w.ndim) if i != d], keepdim=True) <= radius
        assert torch.equal(torch.where(inside, out[k], 0), torch.where(inside, w, 0)), "inside: unchanged"


@pytest.mark.parametrize("path", PATHS)
def test_max_norm_on_vectors_scalars_and_whole_leaves(path: str) -> None:
    w = {"v": torch.tensor([-3.0, 0.5, 2.0, 0.0], dtype=F64), "s": torch.tensor(-4.0, dtype=F64),
         "m": torch.tensor([[3.0, 4.0], [0.0, 0.0]], dtype=F64)}
    with forced(path):
        out = fr.project.max_norm(w, 1.0)
        whole = fr.project.max_norm(w, 1.0, dim=None)
        ball = fr.project.l2_ball(w, 1.0)
    # a 1-d leaf along dim 0: each element is a slice, so a clamp to [-r, r]
    assert torch.equal(out["v"], torch.tensor([-1.0, 0.5, 1.0, 0.0], dtype=F64))
    assert torch.equal(out["s"], torch.tensor(-1.0, dtype=F64))
    torch.testing.assert_close(out["m"], torch.tensor([[0.6, 0.8], [0.0, 0.0]], dtype=F64))
    for k in w:
        torch.testing.assert_close(whole[k], ball[k])


# ----------------------------------------------------------------------------- l2_ball
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_l2_ball_closed_form(dtype: torch.dtype, path: str) -> None:
    params = _tree(dtype)
    for radius in (0.0, 0.5, 2.0, 100.0):
        with forced(path):
            out = fr.project.l2_ball(params, radius)
        for k, w in params.items():
            norm = float(w.double().norm())
            if norm <= radius:
                assert torch.equal(out[k], w), k  # inside the ball: the leaf itself, bit for bit
            else:
                torch.testing.assert_close(out[k].double(), w.double() * radius / norm, **_tol(dtype), msg=k)
                assert abs(float(out[k].double().norm()) - radius) <= 1e-5 * max(radius, 1)
    zero = {"z": torch.zeros(3, dtype=dtype)}
    assert torch.equal(fr.project.l2_ball(zero, 0.0)["z"], zero["z"])  # no 0/0


# ----------------------------------------------------------------------------- l1_ball
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_l1_ball_matches_the_sort_based_projection(dtype: torch.dtype, path: str) -> None:
    params = _tree(dtype, seed=1)
    for radius in (0.0, 0.3, 1.0, 4.0, 1e3):
        with forced(path):
            out = fr.project.l1_ball(params, radius)
        for k, w in params.items():
            want = ref.l1_ball_sorted(w, radius)
            torch.testing.assert_close(out[k].double(), want, **_tol(dtype), msg=f"{k} r={radius}")
            torch.testing.assert_close(want, ref.l1_ball_bisect(w, radius), rtol=1e-12, atol=1e-13)
            if float(w.double().abs().sum()) <= radius:
                assert torch.equal(out[k], w), k  # inside: unchanged
            else:
                l1 = float(out[k].double().abs().sum())
                assert abs(l1 - radius) <= (1e-12 if dtype == F64 else 1e-5) * max(1.0, radius), (k, l1)


@pytest.mark.parametrize("path", PATHS)
def test_l1_ball_ties_and_exact_zeros(path: str) -> None:
    """Repeated magnitudes (integers), exact zeros where |w| <= θ, r = 0 gives zeros."""
    w = torch.tensor([[3.0, -3.0, 1.0, 0.0], [-1.0, 2.0, 2.0, -0.5]], dtype=F64)
    with forced(path):
        out = fr.project.l1_ball({"w": w}, 5.0)["w"]
        zero = fr.project.l1_ball({"w": w}, 0.0)["w"]
    # θ = (3 + 3 + 2 + 2 − 5) / 4 = 1.25 over the top four magnitudes (the fifth, 1, is below)
    want = torch.tensor([[1.75, -1.75, 0.0, 0.0], [0.0, 0.75, 0.75, 0.0]], dtype=F64)
    torch.testing.assert_close(out, want, rtol=0, atol=1e-15)
    assert torch.equal(out == 0, w.abs() <= 1.25)
    assert torch.equal(zero, torch.zeros_like(w))


def test_l1_ball_bfloat16_is_the_projection_to_its_precision() -> None:
    g = torch.Generator().manual_seed(2)
    w = torch.randn(40, 30, generator=g).to(torch.bfloat16)
    for path in PATHS:
        with forced(path):
            out = fr.project.l1_ball({"w": w}, 20.0)["w"]
        assert out.dtype == torch.bfloat16
        torch.testing.assert_close(out.double(), ref.l1_ball_sorted(w, 20.0), rtol=0, atol=2e-2)


def test_l1_ball_is_the_projection() -> None:
    """p = Π(w) iff p is in the ball and ⟨w − p, x − p⟩ <= 0 for every x in it: checked at
    the ball's vertices ±r·e_i (their hull is the ball, and the form is linear in x)."""
    g = torch.Generator().manual_seed(3)
    for n, radius in ((7, 1.0), (30, 2.5), (200, 0.1)):
        w = torch.randn(n, generator=g, dtype=F64) * 2
        p = fr.project.l1_ball({"w": w}, radius)["w"]
        assert float(p.abs().sum()) <= radius * (1 + 1e-12)
        vertices = torch.cat([torch.eye(n, dtype=F64), -torch.eye(n, dtype=F64)]) * radius
        assert ((vertices - p) @ (w - p)).max() <= 1e-12


# ------------------------------------------------------------------ box, non_negative
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", DTYPES + [torch.bfloat16], ids=str)
def test_box_and_non_negative(dtype: torch.dtype, path: str) -> None:
    params = _tree(dtype, seed=4)
    g = torch.Generator().manual_seed(5)
    lows = {k: (-torch.rand(v.shape, generator=g)).to(dtype) for k, v in params.items()}
    with forced(path):
        box = fr.project.box(params, -0.5, 0.25)
        negative = fr.project.box(params, -1.5, -0.5)
        upper = fr.project.box(params, None, torch.tensor(0.1))
        per_element = fr.project.box(params, lows, 0.75)
        nonneg = fr.project.non_negative(params)
    for k, w in params.items():
        assert torch.equal(box[k], w.clamp(-0.5, 0.25)), k
        assert torch.equal(negative[k], w.clamp(-1.5, -0.5)), k
        assert torch.equal(upper[k], w.clamp(max=torch.tensor(0.1).to(dtype))), k  # cast to the leaf's dtype
        assert torch.equal(per_element[k], torch.maximum(w, lows[k]).clamp(max=0.75)), k
        assert torch.equal(nonneg[k], w.clamp_min(0)) and (nonneg[k] >= 0).all(), k
        assert torch.equal(nonneg[k] == 0, w <= 0), "exact zeros for the negatives"


def test_projections_respect_where_and_per_leaf_radii() -> None:
    params = _tree()
    radii = {"a.weight": 0.1, "a.bias": 5.0, "conv": torch.tensor(0.2, dtype=F64), "wide": 0.0}
    out = fr.project.l1_ball(params, radii, where=fr.select.exclude("^s$", "empty"))
    for k in ("s", "empty"):
        assert out[k] is params[k]
    for k, r in radii.items():
        torch.testing.assert_close(out[k], ref.l1_ball_sorted(params[k], float(r)), rtol=1e-12, atol=1e-14)
    out = fr.project.max_norm(params, 0.5, where=fr.select.weights)
    assert out["a.bias"] is params["a.bias"] and out["s"] is params["s"]
    assert math.isclose(float(out["a.weight"].norm(dim=1).max()), 0.5, rel_tol=1e-12)


def test_l1_ball_on_a_large_bfloat16_leaf_finds_its_threshold_in_float32() -> None:
    """Counts and cumulative sums past 256 are not exact in bfloat16: the threshold is
    found, and applied, in float32 and the result rounded once, so the projection lands
    on the ball to bfloat16's rounding of the values, not of the threshold."""
    w = torch.randn(200_000, generator=torch.Generator().manual_seed(0)).bfloat16() * 3
    out = fr.project.l1_ball({"w": w}, 1000.0)["w"]
    assert out.dtype == torch.bfloat16
    assert abs(out.double().abs().sum().item() - 1000.0) < 2.0  # 0.2%; a bfloat16 θ misses by ~1%
