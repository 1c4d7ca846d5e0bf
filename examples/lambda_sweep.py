"""A regularization path for an MLP: 16 values of λ trained to convergence in one vmap.

Every member is the same one-hidden-layer tanh MLP, started from the same weights, with
its own λ for a group lasso on the columns of the first layer (one group per input
feature), so a large enough λ switches input features off exactly. The data are generated
here with a fixed seed: a nonlinear regression in which 4 of 20 input features matter.

Member k minimizes, full batch over the n training points,

    F_k(w) = 1/n Σ_i (f_w(x_i) − y_i)²  +  l2·‖W₂‖²  +  λ_k Σ_j √H·‖W₁[:, j]‖₂

with W₁ the (H, 20) first-layer weight and W₂ the (1, H) output weight; the last term is
``fr.group_lasso(params, λ_k, dim=1)`` on W₁ (groups are slices along dim 1, n_g = H).
The L2 term is needed: an MLP can shrink W₁ and grow W₂ at no cost to the fit, so without
a price on W₂ the group lasso would only rescale the layers. Its size (l2 = 0.1) keeps the
first layer at a scale where tanh bends, and the nonlinear features then grow steadily as
λ falls instead of switching on at a threshold.

Optimizer: FISTA (accelerated proximal gradient) with a fixed step η and adaptive
restart, for all members at once under ``torch.func.vmap``; f is the smooth part (the
first two terms):

    u = prox_{η·λ_k}(z − η∇f(z))       fr.group_lasso.prox: whole columns exactly 0
    t ← 1 if (z − u)·(u − w) > 0       restart: the momentum points uphill
    t' = (1 + √(1 + 4t²))/2,  w, z, t ← u, u + (t − 1)/t'·(u − w), t'

A member has converged when that prox-gradient step barely moves z,
``fr.converged(z, u, rtol)``: max|u − z| ≤ rtol·max|z|. Since u − z is −η times the
gradient mapping, which is 0 exactly at the stationary points of F_k, this is a
first-order optimality test, not a plateau test. A converged member is frozen
(``fr.update_where``) while the others go on; the table says after how many steps each
one stopped.

The λ grid comes from the problem, as scikit-learn's ``lasso_path`` builds it: λ_max is
the smallest λ at which W₁ = 0 is stationary, max_j ‖∂f/∂W₁[:, j]‖ / √H at W₁ = 0, and
the grid runs geometrically from λ_max down to eps·λ_max. For an MLP that threshold is
exact only for the first layer with the other layers held where they are (here at their
initial values): training moves W₂, and with it the gradient on W₁, so a member at λ_max
may still keep features, while the network whose weights are all 0 (output bias at the
mean of y) is stationary for every λ. λ_max sets the scale of the grid; it does not promise
that the grid starts empty. The
grid stops at eps = 0.01: below that the penalty is too weak to keep the landscape
simple, members land in different local minima depending on the path the optimizer takes
(a different step size changes which), and neighbouring λ stop giving neighbouring answers.

The rule that picks λ is support recovery: the sparsest member that keeps every true
feature, ties broken by validation loss. The data are synthetic so that the question a
group lasso is for, which inputs matter, has a known answer. Validation loss alone answers
another question: it keeps falling as noise features come in with tiny weights at the
bottom of the grid (the lasso's over-selection at its prediction-optimal λ). The table
marks both, so the price of the sparse answer in validation loss is on the same screen.
``examples/digits_pruning.py`` picks λ without ground truth, by the one-standard-error rule.

Full-batch steps, fixed seeds and one CPU thread (a fixed order of floating-point sums)
make the table identical from one run to the next on a machine.

    python examples/lambda_sweep.py [--device cpu] [--members 16] [--plot lambda_sweep.png]
"""

from __future__ import annotations

import argparse
import math
import time

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

import funcreg as fr


# --- stand-ins ------------------------------------------------------------------------
# TODO(funcreg): replace with fr.group_lasso.lambda_max and fr.lambda_grid once they land.
def _group_lasso_lambda_max(grads, *, where=None, dim=0) -> torch.Tensor:
    """max over the selected leaves and their groups g (slices along ``dim``) of
    ‖grads_g‖₂ / √n_g: with grads = ∇f at w = 0, the smallest λ at which w = 0 is
    stationary for f + group lasso. ``where`` is a ``(path, leaf) -> bool`` selector."""
    out = []
    for path, g in grads.items():
        if g.is_floating_point() and (where is None or where(path, g)):
            slices = g.movedim(dim, 0).reshape(g.shape[dim], -1)
            out.append(torch.linalg.vector_norm(slices, dim=1).max() / math.sqrt(slices.shape[1]))
    return torch.stack(out).max()


def _lambda_grid(lam_max, n: int = 100, eps: float = 1e-3) -> torch.Tensor:
    """n values from lam_max down to eps·lam_max, geometrically spaced, descending:
    a 1-d float64 tensor (scikit-learn's lasso_path grid)."""
    lam_max = torch.as_tensor(lam_max, dtype=torch.float64).cpu()
    return lam_max * torch.logspace(0.0, math.log10(eps), n, dtype=torch.float64)


# --- end of stand-ins -----------------------------------------------------------------


N_FEATURES, SUPPORT = 20, (3, 7, 11, 16)
FIRST = "0.weight"  # first layer, shape (hidden, N_FEATURES): column j reads feature j


def make_data(device: torch.device, n_train: int, n_val: int = 2000):
    """y = 1.5·tanh(1.5·x₃) + x₇ − tanh(2·x₁₁) + 0.5·x₁₆ + 0.3·noise, standardized."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n_train + n_val, N_FEATURES, generator=g)
    a, b, c, d = (x[:, j] for j in SUPPORT)
    y = 1.5 * torch.tanh(1.5 * a) + b - torch.tanh(2 * c) + 0.5 * d + 0.3 * torch.randn(len(x), generator=g)
    y = ((y - y.mean()) / y.std()).unsqueeze(1)
    x, y = x.to(device), y.to(device)
    return (x[:n_train], y[:n_train]), (x[n_train:], y[n_train:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--members", type=int, default=16, help="number of λ values (K)")
    parser.add_argument("--eps", type=float, default=1e-2, help="smallest λ / λ_max")
    parser.add_argument("--hidden", type=int, default=12)
    parser.add_argument("--n-train", type=int, default=1024)
    parser.add_argument("--lr", type=float, default=0.1, help="fixed proximal-gradient step η")
    parser.add_argument("--rtol", type=float, default=1e-5, help="convergence: max|Δw| <= rtol·max|w|")
    parser.add_argument("--max-steps", type=int, default=3000)
    parser.add_argument("--plot", default="lambda_sweep.png", help="PNG path ('' to skip)")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.set_num_threads(1)  # tiny matmuls gain nothing from a second thread; one fixes the sum order
    torch.manual_seed(0)

    (x, y), (x_val, y_val) = make_data(device, args.n_train)
    model = nn.Sequential(nn.Linear(N_FEATURES, args.hidden), nn.Tanh(), nn.Linear(args.hidden, 1)).to(device)
    init = {k: v.detach() for k, v in model.named_parameters()}
    first_layer = fr.select.only(rf"^{FIRST}$")
    others = fr.select.weights & ~first_layer
    lr, l2, K = args.lr, 0.1, args.members

    def mse(params, x, y):
        return ((functional_call(model, params, (x,)) - y) ** 2).mean()

    smooth = fr.penalized(mse, lambda p: fr.l2(p, l2, where=others))

    at_zero = dict(init, **{FIRST: torch.zeros_like(init[FIRST])})
    lam_max = _group_lasso_lambda_max(grad(smooth)(at_zero, x, y), where=first_layer, dim=1)
    lams = _lambda_grid(lam_max, K, args.eps).to(device)

    def fista_step(w, z, t, lam, active):
        g = grad(smooth)(z, x, y)
        u = fr.group_lasso.prox({k: z[k] - lr * g[k] for k in z}, lam, lr, dim=1, where=first_layer)
        # Adaptive restart (O'Donoghue & Candès): drop the momentum when it points uphill.
        uphill = sum(((z[k] - u[k]) * (u[k] - w[k])).sum() for k in z) > 0
        t = torch.where(uphill, torch.ones_like(t), t)
        t_next = (1 + torch.sqrt(1 + 4 * t * t)) / 2
        z_next = {k: u[k] + (t - 1) / t_next * (u[k] - w[k]) for k in z}
        still = active & ~fr.converged(z, u, rtol=args.rtol)
        return (*fr.update_where(active, (u, z_next, t_next), (w, z, t)), still)

    w = fr.replicate(init, K)  # every member starts from the same weights
    z, t = w, torch.ones(K, device=device)
    active = torch.ones(K, dtype=torch.bool, device=device)
    stopped = torch.zeros(K, dtype=torch.long, device=device)  # step at which each converged
    step = vmap(fista_step)
    print(f"device {device}, {torch.get_num_threads()} thread(s); {K} members, "
          f"λ_max = {lam_max.item():.4g}, grid down to {args.eps:g}·λ_max")
    start = time.perf_counter()
    for s in range(1, args.max_steps + 1):
        w, z, t, now = step(w, z, t, lams, active)
        stopped = torch.where(active & ~now, s, stopped)
        active = now
        if s % 250 == 0:
            print(f"step {s:5d}: {int(active.sum())}/{K} members still moving", flush=True)
        if not active.any():
            break
    elapsed = time.perf_counter() - start

    train = vmap(mse, in_dims=(0, None, None))(w, x, y)
    val = vmap(mse, in_dims=(0, None, None))(w, x_val, y_val)
    col_norms = torch.linalg.vector_norm(w[FIRST], dim=1)  # (K, N_FEATURES)
    kept = [frozenset(torch.nonzero(col_norms[k]).flatten().tolist()) for k in range(K)]
    truth = frozenset(SUPPORT)
    # Support recovery: the sparsest member that keeps every true feature, then validation loss.
    covering = [k for k in range(K) if truth <= kept[k]]
    chosen = min(covering, key=lambda k: (len(kept[k]), val[k].item())) if covering else None
    best_val = int(val.argmin())

    print(f"\ntrue support: features {sorted(truth)} of {N_FEATURES}")
    print(f"{'lambda':>9} {'λ/λ_max':>8} {'train':>7} {'val':>7} {'kept':>4}  {'support':<16} converged")
    for k in range(K):
        verdict = "recovered" if kept[k] == truth else ", ".join(filter(None, (
            f"missed {len(truth - kept[k])}" if truth - kept[k] else "",
            f"+{len(kept[k] - truth)} extra" if kept[k] - truth else "")))
        conv = f"at step {int(stopped[k])}" if stopped[k] else "no"
        mark = "  <- chosen" if k == chosen else ("  <- lowest val" if k == best_val else "")
        print(f"{lams[k].item():9.2e} {(lams[k] / lam_max).item():8.4f} {train[k].item():7.4f} "
              f"{val[k].item():7.4f} {len(kept[k]):4d}  {verdict:<16} {conv:<12}{mark}".rstrip())

    n_conv = int((stopped > 0).sum())
    slowest = f", the slowest after {int(stopped.max())} steps" if n_conv == K else ""
    print(f"\n{n_conv}/{K} members converged within {args.max_steps} steps (rtol {args.rtol:g}){slowest}")
    if chosen is None:
        print("no member keeps every true feature")
    else:
        extra = sorted(kept[chosen] - truth)
        print(f"chosen lambda {lams[chosen].item():.2e} (sparsest support that keeps every true feature): "
              f"validation loss {val[chosen].item():.4f}, keeps features {sorted(kept[chosen])}"
              + (" = the true support" if not extra else f", {len(extra)} of them noise"))
    print(f"lowest validation loss {val[best_val].item():.4f} at lambda {lams[best_val].item():.2e}, "
          f"keeping {len(kept[best_val])} features, {len(kept[best_val] - truth)} of them noise")
    print(f"trained in {elapsed:.1f} s")

    if args.plot:
        plot(args.plot, lams.cpu(), col_norms.cpu(), train.cpu(), val.cpu(), kept, chosen, best_val)


def plot(path, lams, col_norms, train, val, kept, chosen, best_val) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        print("matplotlib is not installed (pip install -e '.[examples]'): no plot")
        return
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 7.5), sharex=True)
    for j in range(N_FEATURES):
        on = j in SUPPORT
        top.plot(lams, col_norms[:, j], marker="." if on else None, lw=2 if on else 1,
                 color=None if on else "0.7", label=f"feature {j}" if on else None, zorder=3 if on else 2)
    top.plot([], [], color="0.7", label=f"{N_FEATURES - len(SUPPORT)} noise features")
    top.set_ylabel("‖W₁[:, j]‖ (first-layer weights of feature j)")
    top.set_title("Group lasso on the input features of an MLP: the regularization path")
    top.legend(fontsize=8)
    bottom.plot(lams, train, marker=".", label="train MSE")
    bottom.plot(lams, val, marker=".", label="validation MSE")
    bottom.set_yscale("log")
    bottom.set_ylabel("MSE (standardized y)")
    bottom.set_xscale("log")
    bottom.set_xlabel("λ")
    count = bottom.twinx()
    count.step(lams, [len(s) for s in kept], where="mid", color="0.4", ls=":", label="features kept")
    count.set_ylabel("features kept")
    count.set_ylim(0, N_FEATURES + 0.5)
    count.yaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in (top, bottom):
        if chosen is not None:
            ax.axvline(lams[chosen], color="k", ls="--", lw=1)
        ax.axvline(lams[best_val], color="0.5", ls="-.", lw=1)
    handles = bottom.get_legend_handles_labels()[0] + count.get_legend_handles_labels()[0]
    handles += [plt.Line2D([], [], color="k", ls="--", lw=1), plt.Line2D([], [], color="0.5", ls="-.", lw=1)]
    labels = ["train MSE", "validation MSE", "features kept",
              "chosen: sparsest λ keeping the true support", "lowest validation loss"]
    bottom.legend(handles, labels, fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
