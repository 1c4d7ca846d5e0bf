"""Pruning pixels and hidden units of an MLP on scikit-learn's digits, 12 values of λ at once.

The data are scikit-learn's bundled 8x8 digits (1797 images, 10 classes; no download),
split once with a fixed seed into 1000 training, 400 validation and 397 test images, each
pixel standardized with the training mean and standard deviation. Every member is the
same 64-16-10 tanh MLP from the same initial weights, trained full batch with its own λ:

    F_k(w) = cross-entropy(w)  +  λ_k (Σ_j √16·‖W₁[:, j]‖₂  +  Σ_u √10·‖W₂[:, u]‖₂)

``fr.group_lasso(params, λ_k, dim=1)`` on the two weight matrices: a group is one column,
so an all-zero column of W₁ (16, 64) is an input pixel the network no longer reads and an
all-zero column of W₂ (10, 16) is a hidden unit it no longer uses. Both are structure that
can be cut out: the pruned network is a dense (P, U) MLP with U·(P + 1) + 10·(U + 1)
parameters, P pixels and U units kept, against 1210 for the full one. Penalizing both
layers also fixes the scale a penalty on one layer alone would leave free (the other
layer could grow to undo the shrinkage), so no other term is needed.

Training is FISTA with a fixed step and adaptive restart, a member frozen
(``fr.update_where``) once ``fr.converged`` says the prox-gradient step barely moves it,
as in ``examples/lambda_sweep.py``, which derives the steps.

λ grid: λ_max is computed for each layer alone, with the other at its initial value, as
the smallest λ at which that layer = 0 is stationary (max over its columns of
‖∂CE/∂column‖/√n_g); the grid runs from the larger of the two down to eps·λ_max. The
usual definition, all penalized weights at 0 at once, gives almost nothing here: with
W₂ = 0 the gradient on W₁ is 0, and with W₁ = 0 every image looks the same to the output
layer, whose gradient is then only the gap between the class probabilities of its initial
bias and the class frequencies. The per-layer threshold gives the grid its scale (and here
the top of the grid prunes everything).

The rule that picks λ is the one-standard-error rule on validation accuracy: the largest
λ whose validation accuracy is within one standard error, sqrt(a(1 − a)/n_val), of the
best member's a. Members that close to the best cannot be told apart on 400 validation
images, so the rule takes the smallest network among them. The test images are used only
to report the chosen member's accuracy.

    python examples/digits_pruning.py [--device cpu] [--members 12] [--plot digits_pruning.png]
"""

from __future__ import annotations

import argparse
import math
import time

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

import funcreg as fr




W1 = "0.weight"  # (hidden, 64): column j reads pixel j
W2 = "2.weight"  # (10, hidden): column u carries hidden unit u


def load_digits_split(device: torch.device, n_train: int = 1000):
    """Images 0-999 of a fixed shuffle train (the first n_train of them are used),
    1000-1399 validate, the other 397 test."""
    from sklearn.datasets import load_digits

    x, y = (torch.from_numpy(a) for a in load_digits(return_X_y=True))
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    x, y = x[order].float().to(device), y[order].to(device)
    mean, std = x[:n_train].mean(0), x[:n_train].std(0)
    x = (x - mean) / torch.where(std > 0, std, 1.0)  # pixels blank in every training image stay 0
    return (x[:n_train], y[:n_train]), (x[1000:1400], y[1000:1400]), (x[1400:], y[1400:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--members", type=int, default=12, help="number of λ values (K)")
    parser.add_argument("--eps", type=float, default=3e-2, help="smallest λ / λ_max")
    parser.add_argument("--hidden", type=int, default=16)
    parser.add_argument("--n-train", type=int, default=1000)
    parser.add_argument("--lr", type=float, default=0.3, help="fixed proximal-gradient step η")
    parser.add_argument("--rtol", type=float, default=1e-5, help="convergence: max|Δw| <= rtol·max|w|")
    parser.add_argument("--max-steps", type=int, default=4000)
    parser.add_argument("--plot", default="digits_pruning.png", help="PNG path ('' to skip)")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.set_num_threads(1)  # small matmuls gain little from a second thread; one fixes the sum order
    torch.manual_seed(0)

    (x, y), (x_val, y_val), (x_test, y_test) = load_digits_split(device, args.n_train)
    H, K, lr = args.hidden, args.members, args.lr
    model = nn.Sequential(nn.Linear(64, H), nn.Tanh(), nn.Linear(H, 10)).to(device)
    init = {k: v.detach() for k, v in model.named_parameters()}
    pruned = fr.select.only(rf"^{W1}$", rf"^{W2}$")

    def cross_entropy(params, x, y):
        return F.cross_entropy(functional_call(model, params, (x,)), y)

    def accuracy(params, x, y):
        return (functional_call(model, params, (x,)).argmax(-1) == y).float().mean()

    # λ_max one layer at a time, the other at its initial value (see the docstring).
    g1 = grad(cross_entropy)(dict(init, **{W1: torch.zeros_like(init[W1])}), x, y)[W1]
    g2 = grad(cross_entropy)(dict(init, **{W2: torch.zeros_like(init[W2])}), x, y)[W2]
    lam_max = fr.group_lasso.lambda_max({W1: g1, W2: g2}, where=pruned, dim=1)
    lams = fr.lambda_grid(lam_max, K, args.eps).to(device)

    def fista_step(w, z, t, lam, active):
        g = grad(cross_entropy)(z, x, y)
        u = fr.group_lasso.prox({k: z[k] - lr * g[k] for k in z}, lam, lr, dim=1, where=pruned)
        uphill = sum(((z[k] - u[k]) * (u[k] - w[k])).sum() for k in z) > 0  # adaptive restart
        t = torch.where(uphill, torch.ones_like(t), t)
        t_next = (1 + torch.sqrt(1 + 4 * t * t)) / 2
        z_next = {k: u[k] + (t - 1) / t_next * (u[k] - w[k]) for k in z}
        still = active & ~fr.converged(z, u, rtol=args.rtol)
        return (*fr.update_where(active, (u, z_next, t_next), (w, z, t)), still)

    w = fr.replicate(init, K)
    z, t = w, torch.ones(K, device=device)
    active = torch.ones(K, dtype=torch.bool, device=device)
    stopped = torch.zeros(K, dtype=torch.long, device=device)
    step = vmap(fista_step)
    print(f"device {device}, {torch.get_num_threads()} thread(s); digits: {len(x)} train, "
          f"{len(x_val)} validation, {len(x_test)} test images; {K} members, λ_max = {lam_max.item():.4g}")
    start = time.perf_counter()
    for s in range(1, args.max_steps + 1):
        w, z, t, now = step(w, z, t, lams, active)
        stopped = torch.where(active & ~now, s, stopped)
        active = now
        if s % 500 == 0:
            print(f"step {s:5d}: {int(active.sum())}/{K} members still moving", flush=True)
        if not active.any():
            break
    elapsed = time.perf_counter() - start

    acc = {name: vmap(accuracy, in_dims=(0, None, None))(w, *data)
           for name, data in (("train", (x, y)), ("val", (x_val, y_val)), ("test", (x_test, y_test)))}
    members = [{p: v[k] for p, v in w.items()} for k in range(K)]
    sparsity = [fr.sparsity(m, where=pruned, dim=1) for m in members]
    pixels = [64 - s.leaves[W1].zero_groups for s in sparsity]
    units = [H - s.leaves[W2].zero_groups for s in sparsity]
    n_params = [u * (p + 1) + 10 * (u + 1) for p, u in zip(pixels, units)]
    # One-standard-error rule: the largest λ within one SE of the best validation accuracy.
    best = int(acc["val"].argmax())
    a = acc["val"][best].item()
    se = math.sqrt(a * (1 - a) / len(x_val))
    chosen = min(k for k in range(K) if acc["val"][k].item() >= a - se)

    full = H * 65 + 10 * (H + 1)
    print(f"\n{'lambda':>9} {'λ/λ_max':>8} {'train':>6} {'val':>6} {'pixels':>6} {'units':>5} "
          f"{'params':>6}  converged")
    for k in range(K):
        conv = f"at step {int(stopped[k])}" if stopped[k] else "no"
        mark = "  <- chosen" if k == chosen else ("  <- best val" if k == best else "")
        print(f"{lams[k].item():9.2e} {(lams[k] / lam_max).item():8.4f} {acc['train'][k].item():6.1%} "
              f"{acc['val'][k].item():6.1%} {pixels[k]:6d} {units[k]:5d} {n_params[k]:6d}  {conv}{mark}")
    n_conv = int((stopped > 0).sum())
    slowest = f", the slowest after {int(stopped.max())} steps" if n_conv == K else ""
    print(f"\n{n_conv}/{K} members converged within {args.max_steps} steps (rtol {args.rtol:g}){slowest}")
    print(f"pixels and units: how many the network still reads and uses (of 64 and {H}); "
          f"params: those of the pruned dense MLP (of {full})")
    print(f"chosen lambda {lams[chosen].item():.2e} (largest within one SE, {se:.1%}, of the best "
          f"validation accuracy {a:.1%}): {pixels[chosen]} pixels, {units[chosen]} units, "
          f"{n_params[chosen]} of {full} parameters, test accuracy {acc['test'][chosen].item():.1%}")
    print(sparsity[chosen])
    print(f"trained in {elapsed:.1f} s")

    if args.plot:
        plot(args.plot, lams.cpu(), acc, n_params, units, full, sparsity, chosen)


def plot(path, lams, acc, n_params, units, full, sparsity, chosen) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install -e '.[examples]'): no plot")
        return
    shown = sorted({len(lams) // 3, chosen, len(lams) - 1})
    fig = plt.figure(figsize=(8, 6.5))
    curve = fig.add_subplot(2, 1, 1)
    used = [k for k in range(len(lams)) if units[k] > 0]  # the empty networks sit at chance
    for name in ("train", "val"):
        curve.plot([n_params[k] for k in used], acc[name][used].cpu(), marker=".", label=f"{name} accuracy")
    curve.plot(n_params[chosen], acc["val"][chosen].cpu(), "ko", mfc="none", ms=10,
               label=f"chosen (one-SE rule), λ = {lams[chosen]:.2g}")
    curve.set_xlim(0, full)
    curve.set_xlabel(f"parameters left in the pruned MLP (of {full}); one point per λ")
    curve.set_ylabel("accuracy")
    curve.legend(fontsize=8, loc="lower right")
    curve.set_title("Group lasso on the pixels and hidden units of a 64-16-10 MLP (digits)")
    for i, k in enumerate(shown):
        ax = fig.add_subplot(2, len(shown), len(shown) + i + 1)
        kept = ~sparsity[k].leaves[W1].zero_group_mask
        ax.imshow(kept.reshape(8, 8), cmap="Greys", vmin=0, vmax=1)
        ax.set_title(f"λ = {lams[k]:.2g}{' (chosen)' if k == chosen else ''}:\n"
                     f"{int(kept.sum())} pixels read (black)", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
