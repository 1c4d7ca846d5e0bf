"""Train 16 MLPs at once, one per regularization strength λ, and pick λ by validation.

Each member is the same small MLP with its own λ for a group lasso on the columns of the
first layer (one group per input feature), so a large enough λ switches input features
off exactly. The data are generated here with a fixed seed: a nonlinear regression in
which only 4 of 20 input features matter, so the right λ recovers that support.

One ``torch.func.vmap`` runs the whole ensemble: the gradient of the penalized loss (task
loss + a small L2 on the other weights), a momentum SGD step and the group-lasso prox, with
λ a batched tensor. A member whose weights stop moving is frozen (``fr.converged`` /
``fr.update_where``) while the rest go on.

    python examples/lambda_sweep.py [--device cuda] [--steps 3000] [--plot lambda_sweep.png]
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

import funcreg as fr

N_FEATURES, SUPPORT, K = 20, (3, 7, 11, 16), 16
FIRST = "0.weight"  # first layer, shape (hidden, N_FEATURES): column j reads feature j


def make_data(device: torch.device, n_train: int = 1024, n_val: int = 512):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n_train + n_val, N_FEATURES, generator=g)
    a, b, c, d = (x[:, j] for j in SUPPORT)
    y = 1.5 * torch.sin(1.5 * a) + b - torch.tanh(2 * c) + 0.5 * d + 0.2 * torch.randn(len(x), generator=g)
    y = (y - y.mean()) / y.std()
    x, y = x.to(device), y.unsqueeze(1).to(device)
    return (x[:n_train], y[:n_train]), (x[n_train:], y[n_train:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--plot", default="lambda_sweep.png", help="PNG path ('' to skip)")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)

    (x, y), (x_val, y_val) = make_data(device)
    model = nn.Sequential(nn.Linear(N_FEATURES, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(),
                          nn.Linear(32, 1)).to(device)
    base = {k: v.detach() for k, v in model.named_parameters()}
    lams = torch.logspace(-3, -1, K, device=device)  # group-lasso strengths, one per member
    lr, l2 = 0.1, 1e-3
    first_layer = fr.select.only(rf"^{FIRST}$")
    others = fr.select.weights & ~first_layer

    def mse(params, x, y):
        return ((functional_call(model, params, (x,)) - y) ** 2).mean()

    loss = fr.penalized(mse, lambda p: fr.l2(p, l2, where=others))

    def train_step(params, state, lam, active):
        grads = grad(loss)(params, x, y)
        new, new_state = fr.sgd.step(params, grads, state, lr=lr)
        # Proximal step: exact zeros for whole input columns, which subgradients never give.
        new = fr.group_lasso.prox(new, lam, lr, dim=1, where=first_layer)
        active = active & ~fr.converged(params, new, rtol=1e-6)
        return (fr.update_where(active, new, params),
                fr.update_where(active, new_state, state), active)

    params = fr.replicate(base, K)  # every member starts from the same weights
    state = fr.replicate(fr.sgd.init(base), K)
    active = torch.ones(K, dtype=torch.bool, device=device)
    step = vmap(train_step)
    start = time.perf_counter()
    for t in range(1, args.steps + 1):
        params, state, active = step(params, state, lams, active)
        if t % 500 == 0 or t == args.steps:
            val = vmap(mse, in_dims=(0, None, None))(params, x_val, y_val)
            print(f"step {t:5d}/{args.steps}  best val loss {val.min().item():.4f}  "
                  f"members still moving {int(active.sum())}/{K}  "
                  f"{time.perf_counter() - start:5.1f}s", flush=True)

    train = vmap(mse, in_dims=(0, None, None))(params, x, y)
    val = vmap(mse, in_dims=(0, None, None))(params, x_val, y_val)
    w = params[FIRST]                                   # (K, hidden, N_FEATURES)
    col_norms = torch.linalg.vector_norm(w, dim=1)      # (K, N_FEATURES)
    zeros = (w == 0).float().mean(dim=(1, 2))
    truth = set(SUPPORT)
    print(f"\ntrue support: features {sorted(truth)} of {N_FEATURES}")
    print(f"{'lambda':>9} {'train':>8} {'val':>8} {'zeros':>7}  kept  support")
    for k in range(K):
        kept = {j for j in range(N_FEATURES) if col_norms[k, j] > 0}
        verdict = "recovered" if kept == truth else (
            f"missed {sorted(truth - kept)}" if truth - kept else f"+{len(kept - truth)} extra")
        print(f"{lams[k].item():9.2e} {train[k].item():8.4f} {val[k].item():8.4f} "
              f"{zeros[k].item():7.1%}  {len(kept):4d}  {verdict}")
    best = int(val.argmin())
    kept = sorted(j for j in range(N_FEATURES) if col_norms[best, j] > 0)
    print(f"\nbest lambda {lams[best].item():.2e}: validation loss {val[best].item():.4f}, "
          f"keeps features {kept}")

    if args.plot:
        plot(args.plot, lams.cpu(), col_norms.cpu(), val.cpu(), best)


def plot(path: str, lams: torch.Tensor, col_norms: torch.Tensor, val: torch.Tensor, best: int) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install -e '.[examples]'): no plot")
        return
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 7), sharex=True)
    for j in range(N_FEATURES):
        on = j in SUPPORT
        top.plot(lams, col_norms[:, j], lw=2 if on else 1, color=None if on else "0.6",
                 label=f"feature {j}" if on else None)
    top.set_ylabel("first-layer weight norm")
    top.set_title("Regularization path: group lasso on input features (grey: noise features)")
    top.legend()
    bottom.plot(lams, val, marker="o")
    bottom.axvline(lams[best], color="k", ls="--", lw=1, label=f"best λ = {lams[best]:.1e}")
    bottom.set_xscale("log")
    bottom.set_xlabel("λ")
    bottom.set_ylabel("validation MSE")
    bottom.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
