"""λ paths: ``.lambda_max`` against scikit-learn's ``alpha_max`` on its bundled diabetes data
and against independent formulas, the threshold behaviour on both sides of it (above, the
prox of a gradient step from 0 stays exactly 0; below, a weight moves), ``fr.lambda_grid``
against ``np.geomspace`` and scikit-learn's own path grid, and ``fr.sparsity``."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch

import funcreg as fr
import reference as ref

F64 = torch.float64


@pytest.fixture(scope="module")
def diabetes() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's diabetes data, centred as its path functions centre it (fit_intercept)."""
    datasets = pytest.importorskip("sklearn.datasets", reason="scikit-learn (the test extra) is the reference")
    x, y = datasets.load_diabetes(return_X_y=True)
    return torch.from_numpy(x - x.mean(0)), torch.from_numpy(y - y.mean())


def _grad_at_zero(x: torch.Tensor, y: torch.Tensor, shape: tuple[int, ...]) -> dict[str, torch.Tensor]:
    """∇ of scikit-learn's loss 1/(2n)‖y − x wᵀ‖² at w = 0, by autograd (w: outputs × features)."""
    def loss(p: dict[str, torch.Tensor]) -> torch.Tensor:
        pred = x @ p["w"].T
        return (y.reshape(pred.shape) - pred).square().sum() / (2 * x.shape[0])

    return torch.func.grad(loss)({"w": torch.zeros(shape, dtype=F64)})


@pytest.mark.parametrize("rho", [1.0, 0.5, 0.1])
def test_lambda_max_is_sklearns_alpha_max_on_diabetes(diabetes: tuple[torch.Tensor, torch.Tensor], rho: float) -> None:
    from sklearn.linear_model import ElasticNet, enet_path

    x, y = diabetes
    grads = _grad_at_zero(x, y, (1, x.shape[1]))
    alphas, *_ = enet_path(x.numpy(), y.numpy(), l1_ratio=rho)
    got = fr.elastic_net.lambda_max(grads, l1_ratio=rho)
    assert got.dtype == F64 and got.ndim == 0
    assert math.isclose(got.item(), alphas[0], rel_tol=1e-14)
    if rho == 1.0:
        assert math.isclose(fr.l1.lambda_max(grads).item(), alphas[0], rel_tol=1e-14)
    # scikit-learn's own fit on both sides: all zero at alpha_max, a weight moves just below
    raw_x, raw_y = x.numpy() + 1.0, y.numpy() + 150.0  # the intercept absorbs the shift
    above = ElasticNet(alpha=got.item() * (1 + 1e-9), l1_ratio=rho).fit(raw_x, raw_y)
    below = ElasticNet(alpha=got.item() * (1 - 1e-3), l1_ratio=rho, tol=1e-10).fit(raw_x, raw_y)
    assert np.all(above.coef_ == 0) and np.any(below.coef_ != 0)


def test_group_lambda_max_is_sklearns_multitask_alpha_max(diabetes: tuple[torch.Tensor, torch.Tensor]) -> None:
    """Two targets, the weight one row per target: groups along dim 1 are the features.
    scikit-learn's multi-task lasso has no sqrt(n_g) weight, so its alpha_max is sqrt(2)
    times funcreg's (and the sparse group lasso at ρ = 0 is the group lasso)."""
    from sklearn.linear_model import lasso_path

    x, y = diabetes
    y2 = torch.stack([y, (y.square() - y.square().mean()) / 100], 1)
    grads = _grad_at_zero(x, y2, (2, x.shape[1]))
    alphas, *_ = lasso_path(x.numpy(), y2.numpy())
    got = fr.group_lasso.lambda_max(grads, dim=1)
    assert math.isclose(got.item() * math.sqrt(2), alphas[0], rel_tol=1e-14)
    sgl = fr.sparse_group_lasso.lambda_max(grads, l1_ratio=0.0, dim=1)
    assert math.isclose(sgl.item(), got.item(), rel_tol=1e-13)


def test_lambda_grid_is_sklearns_path_grid(diabetes: tuple[torch.Tensor, torch.Tensor]) -> None:
    from sklearn.linear_model import lasso_path

    x, y = diabetes
    grads = _grad_at_zero(x, y, (1, x.shape[1]))
    for eps in (1e-3, 1e-2):
        alphas, *_ = lasso_path(x.numpy(), y.numpy(), eps=eps)
        grid = fr.lambda_grid(fr.l1.lambda_max(grads), n=len(alphas), eps=eps)
        np.testing.assert_allclose(grid.numpy(), alphas, rtol=1e-14)


# ------------------------------------------------------------------ independent formulas
def _grads(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    shapes = {"a.weight": (6, 4), "a.bias": (6,), "b.weight": (3, 2, 2), "c": (4, 4), "s": ()}
    return {k: torch.randn(s, generator=g, dtype=F64) for k, s in shapes.items()}


@pytest.mark.parametrize("dim", [0, 1, -1, None])
@pytest.mark.parametrize("rho", [0.0, 0.2, 0.5, 0.9, 1.0])
def test_sparse_group_lasso_lambda_max_is_the_exact_root(rho: float, dim: int | None) -> None:
    grads = {k: v for k, v in _grads(1).items() if v.ndim >= 2}
    want = max(ref.sgl_lambda_max(g, rho, dim) for g in grads.values())
    got = fr.sparse_group_lasso.lambda_max(grads, l1_ratio=rho, dim=dim)
    assert math.isclose(got.item(), want, rel_tol=1e-13), (got.item(), want)


def test_lambda_max_formulas() -> None:
    grads = _grads(2)
    flat = torch.cat([g.reshape(-1) for g in grads.values()])
    inf_norm = flat.abs().max().item()
    for fam, opts in ((fr.l1, {}), (fr.mcp, {}), (fr.scad, {"gamma": 2.0}), (fr.mcp, {"gamma": 0.5})):
        assert fam.lambda_max(grads, **opts).item() == inf_norm
    assert math.isclose(fr.elastic_net.lambda_max(grads, l1_ratio=0.25).item(), inf_norm / 0.25, rel_tol=1e-15)
    assert fr.elastic_net.lambda_max(grads, l1_ratio=0.0).item() == math.inf
    rows = max(float(g.reshape(g.shape[0], -1).norm(dim=1).max()) / math.sqrt(g[0].numel())
               for g in grads.values() if g.ndim)
    rows = max(rows, abs(grads["s"].item()))  # a 0-d leaf is one group of size 1
    assert math.isclose(fr.group_lasso.lambda_max(grads).item(), rows, rel_tol=1e-14)
    matrices = {k: v for k, v in grads.items() if v.ndim >= 2}
    sigma = max(float(np.linalg.norm(ref.as_matrix(g), ord=2)) for g in matrices.values())
    assert math.isclose(fr.nuclear_norm.lambda_max(matrices).item(), sigma, rel_tol=1e-13)
    # the maximum over the selected leaves only
    only = fr.l1.lambda_max(grads, where=fr.select.only("bias"))
    assert only.item() == grads["a.bias"].abs().max().item()


# (family, options, a step below the family's convexity limit)
THRESHOLDS = [
    pytest.param(fr.l1, {}, id="l1"),
    pytest.param(fr.elastic_net, {"l1_ratio": 0.4}, id="elastic_net"),
    pytest.param(fr.group_lasso, {}, id="group_lasso"),
    pytest.param(fr.group_lasso, {"dim": None}, id="group_lasso-leaf"),
    pytest.param(fr.sparse_group_lasso, {"l1_ratio": 0.3}, id="sparse_group_lasso"),
    pytest.param(fr.sparse_group_lasso, {"l1_ratio": 0.7, "dim": 1}, id="sparse_group_lasso-dim1"),
    pytest.param(fr.nuclear_norm, {}, id="nuclear_norm"),
    pytest.param(fr.mcp, {}, id="mcp"),
    pytest.param(fr.scad, {}, id="scad"),
]


@pytest.mark.parametrize("path", ["fast", "composable"])
@pytest.mark.parametrize("fam,opts", THRESHOLDS)
def test_threshold_behaviour_on_both_sides_of_lambda_max(fam: fr.Penalty, opts: dict[str, Any], path: str) -> None:
    """From w = 0, one proximal gradient step prox(−s·g, λ, s) (s = 0.5, inside every
    family's convex range) stays exactly 0 just above λ_max, and moves just below it."""
    grads = {k: v for k, v in _grads(3).items() if v.ndim >= 2}
    lam_max = fam.lambda_max(grads, **opts).item()
    moved = {k: -0.5 * g for k, g in grads.items()}
    with fr._dispatch.forced(path):
        above = fam.prox(moved, lam_max * (1 + 1e-9), 0.5, **opts)
        below = fam.prox(moved, lam_max * (1 - 1e-6), 0.5, **opts)
    assert all(torch.equal(v, torch.zeros_like(v)) for v in above.values())
    assert sum(int((v != 0).sum()) for v in below.values()) >= 1


# ---------------------------------------------------------------------------- lambda_grid
def test_lambda_grid_is_geomspace() -> None:
    for top, n, eps in ((2.0, 100, 1e-3), (0.37, 7, 0.5), (5.0, 2, 1e-4), (1.0, 1, 1e-3), (3.0, 5, 1.0)):
        grid = fr.lambda_grid(top, n=n, eps=eps)
        assert grid.dtype == F64 and grid.shape == (n,)
        np.testing.assert_allclose(grid.numpy(), np.geomspace(top, eps * top, n), rtol=4e-15)
        assert grid[0].item() == top  # exactly where the path starts
        assert (grid[1:] <= grid[:-1]).all()
    assert fr.lambda_grid(torch.tensor(2.0), n=4).tolist() == pytest.approx([2.0, 0.2, 0.02, 0.002], rel=1e-15)
    assert fr.lambda_grid(0.0, n=3).tolist() == [0.0, 0.0, 0.0]


def test_lambda_grid_under_vmap() -> None:
    tops = torch.tensor([1.0, 2.5, 0.1], dtype=F64)
    grids = torch.func.vmap(lambda t: fr.lambda_grid(t, n=6, eps=1e-2))(tops)
    for t, row in zip(tops, grids):
        torch.testing.assert_close(row, fr.lambda_grid(float(t), n=6, eps=1e-2), rtol=1e-15, atol=0)


# ------------------------------------------------------------------------------- sparsity
def test_sparsity_counts_zeros_and_zero_slices() -> None:
    params = {
        "fc.weight": torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 0.0], [2.0, 0.0, 0.0], [0.0, 0.0, 0.0]]),
        "fc.bias": torch.tensor([0.0, 3.0, 0.0, 0.0]),
        "conv": torch.zeros(2, 3, 2, 2),
        "s": torch.tensor(0.0),
        "steps": torch.tensor(5),
    }
    params["conv"][1, 2, 0, 1] = 1.0
    rows = fr.sparsity(params, dim=0)
    assert set(rows.leaves) == {"fc.weight", "fc.bias", "conv", "s"}  # floating leaves only
    w = rows.leaves["fc.weight"]
    assert (w.zeros, w.numel, w.groups, w.zero_groups) == (10, 12, 4, 2)
    assert w.zero_group_mask.tolist() == [False, True, False, True]
    assert rows.leaves["fc.bias"].zero_groups == 3  # a vector: each element is a slice
    assert (rows.leaves["conv"].zeros, rows.leaves["conv"].zero_groups) == (23, 1)
    assert rows.leaves["s"].groups is None  # a scalar has no dim 0
    assert (rows.zeros, rows.numel, rows.groups, rows.zero_groups) == (10 + 3 + 23 + 1, 12 + 4 + 24 + 1, 10, 6)
    assert rows.fraction == pytest.approx(37 / 41)
    cols = fr.sparsity(params, dim=-1, where=fr.select.weights)
    assert set(cols.leaves) == {"fc.weight", "conv"}
    assert cols.leaves["fc.weight"].zero_group_mask.tolist() == [False, False, True]
    assert cols.leaves["conv"].zero_groups == 1  # the last-dim slice 0 of conv is all zero
    plain = fr.sparsity(params)
    assert plain.groups is None and plain.zero_groups is None and plain.zeros == 37
    table = str(rows).splitlines()
    assert table[0].split() == ["path", "shape", "exact", "zeros", "zero", "slices", "along", "dim", "0"]
    assert table[1].split()[0] == "fc.weight" and "10/12" in table[1] and table[1].endswith("2/4")
    assert table[-1].startswith("total") and "37/41" in table[-1]


def test_sparsity_reads_what_a_group_prox_pruned() -> None:
    g = torch.Generator().manual_seed(4)
    w = torch.randn(8, 5, generator=g) * torch.tensor([0.01, 1, 0.01, 1, 1, 0.01, 1, 1]).unsqueeze(1)
    out = fr.group_lasso.prox({"w": w}, 0.1, 1.0)
    report = fr.sparsity(out, dim=0)
    assert report.zero_groups == 3
    assert report.leaves["w"].zero_group_mask.tolist() == [True, False, True, False, False, True, False, False]
    assert report.zeros == int((out["w"] == 0).sum())
