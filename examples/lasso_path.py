"""A Lasso path: every λ of a grid at once, by proximal gradient under one ``vmap``.

For each λ it minimizes scikit-learn's Lasso objective (``alpha=λ``)

    1/(2n) ‖y − Xw‖² + λ‖w‖₁          (fr.l1(params, λ) is λ·Σ|w|)

by FISTA with step 1/L, L the largest eigenvalue of XᵀX/n, and adaptive restart: a
gradient step on the smooth part, then the prox of the L1 part, ``fr.l1.prox`` (soft
thresholding, exact zeros). ``torch.func.vmap`` runs the whole grid in
one call with λ a batched tensor; a λ whose solution stops moving is frozen
(``fr.converged`` / ``fr.update_where``) while the others go on. Everything is float64.

The data are scikit-learn's bundled diabetes set (no download), X standardized and y
centered so that no intercept is needed, and the path is checked against
``sklearn.linear_model.lasso_path`` on the same data and λs. Without scikit-learn it runs
on generated sparse-regression data instead and skips the comparison.

    python examples/lasso_path.py [--iters 5000] [--n-lambdas 20]
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.func import vmap

import funcreg as fr


def load_data() -> tuple[torch.Tensor, torch.Tensor, bool]:
    """(X, y, from_sklearn): X with centered unit-variance columns, y centered."""
    try:
        from sklearn.datasets import load_diabetes
    except ImportError:
        print("scikit-learn is not installed: generated sparse-regression data, "
              "no comparison with lasso_path (pip install -e '.[examples]')")
        g = torch.Generator().manual_seed(0)
        X = torch.randn(200, 30, generator=g, dtype=torch.float64)
        w_true = torch.zeros(30, dtype=torch.float64)
        w_true[[2, 5, 11, 17, 23]] = torch.tensor([3.0, -2.0, 1.5, 1.0, -0.5], dtype=torch.float64)
        y = X @ w_true + 0.5 * torch.randn(200, generator=g, dtype=torch.float64)
        from_sklearn = False
    else:
        X, y = (torch.from_numpy(a) for a in load_diabetes(return_X_y=True))
        print(f"data: scikit-learn's diabetes set, {X.shape[0]} samples x {X.shape[1]} features")
        from_sklearn = True
    X = (X - X.mean(0)) / X.std(0, correction=0)
    return X, y - y.mean(), from_sklearn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--iters", type=int, default=5000, help="most FISTA iterations")
    parser.add_argument("--n-lambdas", type=int, default=20)
    parser.add_argument("--tol", type=float, default=1e-13,
                        help="a λ stops when max|Δw| <= tol * max|w|")
    args = parser.parse_args()

    X, y, from_sklearn = load_data()
    n = X.shape[0]
    step = 1.0 / torch.linalg.eigvalsh(X.T @ X / n)[-1]  # 1/L
    lam_max = (X.T @ y).abs().max() / n                 # w = 0 for every λ >= lam_max
    lams = lam_max * torch.logspace(0.25, -3, args.n_lambdas, dtype=torch.float64)  # decreasing

    def smooth(params):  # 1/(2n) ‖y − Xw‖²
        r = y - X @ params["w"]
        return r @ r / (2 * n)

    def smooth_grad(params):  # its gradient, Xᵀ(Xw − y)/n (torch.func.grad gives the same, slower)
        return {"w": X.T @ (X @ params["w"] - y) / n}

    def objective(params, lam):
        return smooth(params) + fr.l1(params, lam)

    def fista_step(params, z, t, lam, active):
        """One FISTA step for one λ; vmap runs it for the whole grid."""
        g = smooth_grad(z)
        new = fr.l1.prox({"w": z["w"] - step * g["w"]}, lam, step)
        w, w_new = params["w"], new["w"]
        # Adaptive restart (O'Donoghue & Candès): drop the momentum when it points uphill.
        t = torch.where((z["w"] - w_new) @ (w_new - w) > 0, torch.ones_like(t), t)
        t_new = (1 + torch.sqrt(1 + 4 * t * t)) / 2
        z_new = {"w": w_new + (t - 1) / t_new * (w_new - w)}
        active = active & ~fr.converged(params, new, rtol=args.tol)
        return (*fr.update_where(active, (new, z_new, t_new), (params, z, t)), active)

    K = len(lams)
    params = fr.replicate({"w": torch.zeros(X.shape[1], dtype=torch.float64)}, K)
    z, t = params, torch.ones(K, dtype=torch.float64)
    active = torch.ones(K, dtype=torch.bool)
    step_all = vmap(fista_step)
    start = time.perf_counter()
    for it in range(1, args.iters + 1):
        params, z, t, active = step_all(params, z, t, lams, active)
        done = not active.any()
        if it % 100 == 0 or done or it == args.iters:
            print(f"iteration {it:5d}: {int(active.sum())}/{K} lambdas still moving, "
                  f"{time.perf_counter() - start:.2f}s")
        if done:
            break

    W = params["w"]  # (K, n_features)
    obj = vmap(objective)(params, lams)
    print(f"\n{'lambda':>10} {'nonzeros':>8} {'objective':>14}")
    for k in range(K):
        print(f"{lams[k].item():10.4g} {int((W[k] != 0).sum()):8d} {obj[k].item():14.8f}")

    if from_sklearn:
        from sklearn.linear_model import lasso_path

        sk_lams, sk_coefs, _ = lasso_path(X.numpy(), y.numpy(), alphas=lams.numpy(),
                                          tol=1e-14, max_iter=100_000)
        assert torch.allclose(torch.tensor(sk_lams.copy()), lams)  # same (decreasing) order
        gap = (W - torch.tensor(sk_coefs.copy()).T).abs().max().item()
        print(f"\nlargest |coefficient difference| vs scikit-learn lasso_path: {gap:.2e} "
              f"(coefficients up to {W.abs().max().item():.1f})")


if __name__ == "__main__":
    main()
