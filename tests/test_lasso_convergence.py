"""Proximal gradient descent with fr.l1.prox solves the Lasso (KKT conditions to 1e-6,
exact zeros), while the same number of subgradient steps with fr.l1.add_grad never gives
exact zeros."""

from __future__ import annotations

import torch

import funcreg as fr

N, D, LAM, ITERS = 60, 20, 0.1, 500


def _problem():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(N, D, generator=g, dtype=torch.float64)
    w_true = torch.zeros(D, dtype=torch.float64)
    w_true[[1, 7, 12]] = torch.tensor([2.0, -3.0, 1.5], dtype=torch.float64)
    y = X @ w_true + 0.01 * torch.randn(N, generator=g, dtype=torch.float64)
    lipschitz = torch.linalg.matrix_norm(X, ord=2).item() ** 2 / N
    return X, y, w_true, 1.0 / lipschitz


def _grad(X, y, w):
    """Gradient of 1/(2n)·‖Xw − y‖²."""
    return X.T @ (X @ w - y) / N


def test_proximal_gradient_reaches_lasso_kkt() -> None:
    X, y, w_true, step = _problem()
    params = {"w": torch.zeros(D, dtype=torch.float64)}
    for _ in range(ITERS):
        half = {"w": params["w"] - step * _grad(X, y, params["w"])}
        params = fr.l1.prox(half, LAM, step)
    w = params["w"]
    g = _grad(X, y, w)
    zero = w == 0
    # KKT: |g_j| <= λ where w_j = 0, g_j = −λ·sign(w_j) elsewhere
    assert (g[zero].abs() <= LAM + 1e-6).all(), g[zero].abs().max()
    assert torch.allclose(g[~zero], -LAM * torch.sign(w[~zero]), rtol=0, atol=1e-6), (g[~zero] + LAM * torch.sign(w[~zero])).abs().max()
    # exact zeros, and the true support is found
    assert zero.sum() >= D - 6
    assert (~zero[[1, 7, 12]]).all()
    assert (torch.sign(w[[1, 7, 12]]) == torch.sign(w_true[[1, 7, 12]])).all()


def test_subgradient_steps_give_no_exact_zeros() -> None:
    X, y, _, step = _problem()
    params = {"w": torch.zeros(D, dtype=torch.float64)}
    for _ in range(ITERS):
        grads = {"w": _grad(X, y, params["w"])}
        g = fr.l1.add_grad(grads, params, LAM)
        params = {"w": params["w"] - step * g["w"]}
    assert (params["w"] != 0).all()
