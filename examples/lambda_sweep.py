"""A regularization path for an MLP with ``fr.path``: 16 values of λ, trained to convergence.

The data are generated here with a fixed seed: a nonlinear regression in which 4 of 20
input features matter. Every member is the same one-hidden-layer tanh MLP, started from
the same weights, minimizing, full batch over the n training points,

    F_λ(w) = 1/n Σ_i (f_w(x_i) − y_i)²  +  0.1·‖W₂‖²  +  λ Σ_j √H·‖W₁[:, j]‖₂

The last term is ``fr.group_lasso(params, λ, dim=1)`` on the first layer W₁ (one group per
input feature), so a large enough λ switches features off exactly. The L2 term on the
output layer is part of the smooth loss: without a price on W₂ the network could shrink
W₁ and grow W₂ at no cost, and the group lasso would only rescale the layers.

``fr.path`` does the rest: it finds the grid for this network (a short bracketing run
places its top where every feature is pruned and its bottom where none is), trains all
members with FISTA (adaptive restart, a step per leaf found by backtracking),
freezes each one once its prox-gradient mapping has fallen to 1e-4 of its size at the
start, and reports the validation loss of each. The rule that picks λ here is support recovery, since the data
are synthetic and the question a group lasso is for, which inputs matter, has a known
answer: the sparsest member that keeps every true feature (ties broken by validation
loss); the table also marks the lowest validation loss, which lets noise features in.

Fixed seeds, full batches and one thread make the table identical run after run. Under
``torchrun`` the blocks of ``--block`` members are spread over the processes and the
result is the one of one process, bit for bit (tests/test_lambda_sweep_ranks.py).

    python examples/lambda_sweep.py [--members 16] [--plot lambda_sweep.png]
    torchrun --standalone --nproc_per_node=2 examples/lambda_sweep.py
"""

from __future__ import annotations

import argparse
import os

import torch
from torch import nn
from torch.func import functional_call

import funcreg as fr

N_FEATURES, SUPPORT = 20, (3, 7, 11, 16)


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
    parser.add_argument("--members", type=int, default=16, help="number of λ values")
    parser.add_argument("--block", type=int, default=8, help="members per vmap (spread over torchrun's processes)")
    parser.add_argument("--hidden", type=int, default=12)
    parser.add_argument("--n-train", type=int, default=1024)
    parser.add_argument("--plot", default="lambda_sweep.png", help="PNG path ('' to skip)")
    return parser.parse_args(argv)


def sweep(args: argparse.Namespace, distribute: bool = True) -> fr.Path:
    """The whole path: every process builds the same problem (fixed seeds) and gets the
    same result; with torch.distributed initialized (and ``distribute``), each trains its
    share of the blocks."""
    device = torch.device(args.device)
    torch.manual_seed(0)
    (x, y), val = make_data(device, args.n_train)
    model = nn.Sequential(nn.Linear(N_FEATURES, args.hidden), nn.Tanh(), nn.Linear(args.hidden, 1)).to(device)
    params = {k: v.detach() for k, v in model.named_parameters()}

    def mse(p, x, y):
        return ((functional_call(model, p, (x,)) - y) ** 2).mean()

    def smooth(p, x, y):
        return mse(p, x, y) + fr.l2(p, 0.1, where=fr.select.only(r"^2\.weight$"))

    return fr.path(smooth, params, fr.group_lasso, (x, y), where=fr.select.only(r"^0\.weight$"), dim=1,
                   n=args.members, val=val, metric=mse, block=args.block, distribute=distribute)


def report(res: fr.Path) -> int | None:
    """The table, with the support each member kept; returns the chosen member."""
    kept = [frozenset(torch.nonzero(res.group_norms[k]).flatten().tolist()) for k in range(len(res))]
    truth = frozenset(SUPPORT)
    covering = [k for k in range(len(res)) if truth <= kept[k]]
    chosen = min(covering, key=lambda k: (len(kept[k]), float(res.val_loss[k]))) if covering else None
    lowest = res.best("min")
    print(f"grid: {res.grid.note}")
    print(f"true support: features {sorted(truth)} of {N_FEATURES}\n")
    print(f"{'lambda':>9} {'train':>7} {'val':>7} {'kept':>4}  {'support':<17} converged")
    for k in range(len(res)):
        verdict = "recovered" if kept[k] == truth else ", ".join(filter(None, (
            f"missed {len(truth - kept[k])}" if truth - kept[k] else "",
            f"+{len(kept[k] - truth)} extra" if kept[k] - truth else "")))
        conv = f"at step {int(res.steps[k])}" if res.steps[k] else "no"
        mark = "  <- chosen" if k == chosen else ("  <- lowest val" if k == lowest else "")
        print(f"{res.lambdas[k]:9.2e} {res.train_loss[k]:7.4f} {res.val_loss[k]:7.4f} "
              f"{len(kept[k]):4d}  {verdict:<17} {conv:<12}{mark}".rstrip())
    n_conv = int((res.steps > 0).sum())
    print(f"\n{n_conv}/{len(res)} members converged (rtol {res.rtol:g})"
          + (f", the slowest after {int(res.steps.max())} steps" if n_conv == len(res) else ""))
    if chosen is None:
        print("no member keeps every true feature")
    else:
        extra = sorted(kept[chosen] - truth)
        print(f"chosen lambda {res.lambdas[chosen]:.2e} (sparsest support that keeps every true feature): "
              f"validation loss {res.val_loss[chosen]:.4f}, keeps features {sorted(kept[chosen])}"
              + (" = the true support" if not extra else f", {len(extra)} of them noise"))
    print(f"lowest validation loss {res.val_loss[lowest]:.4f} at lambda {res.lambdas[lowest]:.2e}, "
          f"keeping {len(kept[lowest])} features, {len(kept[lowest] - truth)} of them noise")
    return chosen


def main() -> None:
    args = parse()
    torch.set_num_threads(1)  # tiny matmuls gain nothing from a second thread; one fixes the sum order
    rank, world = 0, 1
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # started by torchrun
        import torch.distributed as dist

        dist.init_process_group("gloo")
        rank, world = dist.get_rank(), dist.get_world_size()
    if rank == 0:
        print(f"device {args.device}, 1 thread per process, {world} process(es), blocks of {args.block} "
              f"members; {args.members} members")
    res = sweep(args)
    if rank == 0:
        chosen = report(res)
        print(f"trained in {res.seconds:.1f} s")
        if args.plot:
            try:
                res.plot(args.plot, rule="min", chosen=chosen)
                print(f"wrote {args.plot}")
            except ImportError as error:
                print(f"{error}: no plot")
    if world > 1:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
