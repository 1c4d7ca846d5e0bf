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

The grid is trained in blocks of ``--block`` members, one vmap each. Under ``torchrun``
the blocks are spread over the processes (gloo; each trains its own in its own vmap,
seeded explicitly, since every process starts from a different seed), rank 0 gathers the
weights and prints the same table and plot, and the numbers are those of one process bit
for bit (``tests/test_lambda_sweep_ranks.py`` checks it).

    python examples/lambda_sweep.py [--device cpu] [--members 16] [--plot lambda_sweep.png]
    torchrun --standalone --nproc_per_node=2 examples/lambda_sweep.py
"""

from __future__ import annotations

import argparse
import math
import os
import time

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

import funcreg as fr




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


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--members", type=int, default=16, help="number of λ values (K)")
    parser.add_argument("--block", type=int, default=8,
                        help="members per vmap; with torchrun, blocks are spread over the processes")
    parser.add_argument("--eps", type=float, default=1e-2, help="smallest λ / λ_max")
    parser.add_argument("--hidden", type=int, default=12)
    parser.add_argument("--n-train", type=int, default=1024)
    parser.add_argument("--lr", type=float, default=0.1, help="fixed proximal-gradient step η")
    parser.add_argument("--rtol", type=float, default=1e-5, help="convergence: max|Δw| <= rtol·max|w|")
    parser.add_argument("--max-steps", type=int, default=3000)
    parser.add_argument("--plot", default="lambda_sweep.png", help="PNG path ('' to skip)")
    return parser.parse_args(argv)


class Problem:
    """The data, the model and the smooth part f of every member's objective, built the
    same way (fixed seeds) in every process that trains a part of the grid."""

    def __init__(self, args: argparse.Namespace):
        self.device = torch.device(args.device)
        torch.manual_seed(0)  # every process, however started, draws the same weights
        (self.x, self.y), (self.x_val, self.y_val) = make_data(self.device, args.n_train)
        self.model = nn.Sequential(nn.Linear(N_FEATURES, args.hidden), nn.Tanh(),
                                   nn.Linear(args.hidden, 1)).to(self.device)
        self.init = {k: v.detach() for k, v in self.model.named_parameters()}
        self.first_layer = fr.select.only(rf"^{FIRST}$")
        others = fr.select.weights & ~self.first_layer
        self.smooth = fr.penalized(self.mse, lambda p: fr.l2(p, 0.1, where=others))

    def mse(self, params, x, y):
        return ((functional_call(self.model, params, (x,)) - y) ** 2).mean()

    def grid(self, members: int, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
        """λ_max (W₁ = 0 stationary, the rest at init) and the geometric grid below it."""
        at_zero = dict(self.init, **{FIRST: torch.zeros_like(self.init[FIRST])})
        g = grad(self.smooth)(at_zero, self.x, self.y)
        lam_max = fr.group_lasso.lambda_max(g, where=self.first_layer, dim=1)
        return fr.lambda_grid(lam_max, members, eps).to(self.device), lam_max

    def train(self, lams: torch.Tensor, args: argparse.Namespace, log: bool = True):
        """FISTA for one member per λ, all in one vmap: the final weights (leading dim K)
        and the step at which each member converged (0: it did not)."""
        x, y, lr, K = self.x, self.y, args.lr, len(lams)
        smooth, first_layer = self.smooth, self.first_layer

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

        w = fr.replicate(self.init, K)  # every member starts from the same weights
        z, t = w, torch.ones(K, device=self.device)
        active = torch.ones(K, dtype=torch.bool, device=self.device)
        stopped = torch.zeros(K, dtype=torch.long, device=self.device)
        step = vmap(fista_step)
        for s in range(1, args.max_steps + 1):
            w, z, t, now = step(w, z, t, lams, active)
            stopped = torch.where(active & ~now, s, stopped)
            active = now
            if log and s % 250 == 0:
                print(f"step {s:5d}: {int(active.sum())}/{K} members still moving", flush=True)
            if not active.any():
                break
        return w, stopped


def sweep(args: argparse.Namespace, rank: int = 0, world: int = 1):
    """Train the whole grid, in blocks of ``args.block`` consecutive λ values, one vmap
    per block: all of them in this process, or, with ``world`` processes in a
    torch.distributed group, a contiguous run of blocks per rank, the results gathered
    onto every rank in grid order.

    Blocks, not one slice per process, because batched kernels choose their blocking by
    batch size (a vmap over 8 members and one over 16 differ in the last bits of the
    second layer's gradient): with the same blocks everywhere, one process and N give the
    same bits. No collective runs inside vmap (under vmap the functional collectives give
    wrong, rank-dependent sums without an error): the gather comes after training."""
    problem = Problem(args)
    lams, lam_max = problem.grid(args.members, args.eps)
    blocks = list(torch.arange(len(lams)).split(args.block))
    start = time.perf_counter()
    mine = [blocks[i] for i in torch.tensor_split(torch.arange(len(blocks)), world)[rank].tolist()]
    results = [problem.train(lams[b], args, log=rank == 0 and j == 0) for j, b in enumerate(mine)]
    elapsed = time.perf_counter() - start
    if world > 1:
        import torch.distributed as dist

        parts: list = [None] * world
        dist.all_gather_object(parts, [({k: v.cpu() for k, v in w.items()}, s.cpu()) for w, s in results])
        results = [({k: v.to(problem.device) for k, v in w.items()}, s.to(problem.device))
                   for part in parts for w, s in part]
    w = {k: torch.cat([r[0][k] for r in results]) for k in problem.init}
    stopped = torch.cat([r[1] for r in results])
    return problem, lams, lam_max, w, stopped, elapsed


def main() -> None:
    args = parse()
    torch.set_num_threads(1)  # tiny matmuls gain nothing from a second thread; one fixes the sum order
    rank, world = 0, 1
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # started by torchrun
        import torch.distributed as dist

        dist.init_process_group("gloo")
        rank, world = dist.get_rank(), dist.get_world_size()
    if rank == 0:
        blocks = math.ceil(args.members / args.block)
        where = (f"{world} processes, {blocks} blocks of {args.block} members spread over them"
                 if world > 1 else f"1 process, {blocks} blocks of {args.block} members")
        print(f"device {args.device}, {torch.get_num_threads()} thread(s) per process, {where}; "
              f"{args.members} members, grid down to {args.eps:g}·λ_max")
    problem, lams, lam_max, w, stopped, elapsed = sweep(args, rank, world)
    if rank == 0:
        report(problem, lams, lam_max, w, stopped, elapsed, args)
    if world > 1:
        torch.distributed.destroy_process_group()


def report(problem, lams, lam_max, w, stopped, elapsed, args) -> None:
    K = len(lams)
    train = vmap(problem.mse, in_dims=(0, None, None))(w, problem.x, problem.y)
    val = vmap(problem.mse, in_dims=(0, None, None))(w, problem.x_val, problem.y_val)
    col_norms = torch.linalg.vector_norm(w[FIRST], dim=1)  # (K, N_FEATURES)
    kept = [frozenset(torch.nonzero(col_norms[k]).flatten().tolist()) for k in range(K)]
    truth = frozenset(SUPPORT)
    # Support recovery: the sparsest member that keeps every true feature, then validation loss.
    covering = [k for k in range(K) if truth <= kept[k]]
    chosen = min(covering, key=lambda k: (len(kept[k]), val[k].item())) if covering else None
    best_val = int(val.argmin())

    print(f"\nλ_max = {lam_max.item():.4g}; true support: features {sorted(truth)} of {N_FEATURES}")
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
