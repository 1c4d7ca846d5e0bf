"""From a λ path to a smaller CNN: conv channels of a digits CNN pruned with coupled group
lasso, then cut out of the model with ``fr.prune.shrink``.

The data are scikit-learn's bundled 8x8 digits (1797 images, no download), split once with
a fixed seed: the first 500 images train (``--n-train``), images 800-999 validate, the last
797 test; pixels standardized with training statistics. The CNN is conv(1→8, 3x3)–BN–ReLU,
conv(8→16, 3x3, stride 2)–BN–ReLU, Flatten, Linear(16·16→10). ``fr.prune.couplings`` reads
its units from its dataflow: each conv channel is its filter, its bias entry and its
BatchNorm's scale and shift (the Linear after ``Flatten`` reads a second-layer channel as a
block of 16 columns); the output layer has none. The penalty is

    F_λ(w) = cross-entropy(w) + λ Σ_units √n_g ‖(filter, bias, BN scale, BN shift)‖₂

``fr.group_lasso(..., groups=couplings)``: a unit's whole group goes to zero at once, so a
removed channel outputs ReLU(0) = 0 and nothing needs folding. ``fr.path`` trains every λ
of the grid in one vmap (full batch, FISTA with a first trial step of 0.05). The grid's
ends are given (``--grid``; ``--grid 0 0`` lets fr.path bracket them itself, which trains
13 to 26 more members briefly: over a minute more). The BatchNorms run in eval mode
throughout, each a learned per-channel scale and shift (their running statistics stay 0
and 1): with batch statistics a channel's filter is scale-invariant, and the penalty
shrank filters without zeroing units (the same grid kept 15 of 16 second-layer channels
where eval mode keeps 2 at the same validation accuracy). Training stops after a budget of
150 steps (``--max-steps``), before fr.path's convergence test is met: the training images
are separable, so the cross-entropy keeps falling as the weights grow, and units whose
ReLU turns off on every image die (zero, with a zero gradient: ``res.dead``) and the prox
holds them there. After 500 steps the smallest λ keeps 3 to 4 of 8 and 2 of 16 channels,
all the others dead, and which units die first changes with the rounding of the sums;
after 150 the path goes from 5+2 channels at the top to every channel at its bottom. The
rule: the largest λ whose validation accuracy is within ``--within`` of the best (the
smallest model the validation set cannot tell from the best). ``fr.prune.shrink(model,
params, couplings)`` then cuts the zero channels out (weights, BatchNorm statistics, the
Linear's column blocks), with the example inputs the couplings were found with.

Printed: the path's table, then parameter count, CPU latency (one thread, eval mode, batch
1 and 64, median of repetitions taken in turns) and test accuracy of the dense model (the
path's smallest λ, which keeps every channel), of the chosen member at full size (masked)
and of the shrunk one.

    python examples/digits_cnn_pruning.py [--members 5] [--within 0.02]
"""

from __future__ import annotations

import argparse
import statistics
import time
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

import funcreg as fr


def load_digits_split(n_train: int = 800):
    """A fixed shuffle: the first n_train images train, the next 200 validate, the last 797 test."""
    from sklearn.datasets import load_digits

    x, y = (torch.from_numpy(a) for a in load_digits(return_X_y=True))
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    x, y = x[order].float().reshape(-1, 1, 8, 8), y[order]
    mean, std = x[:800].mean(), x[:800].std()
    x = (x - mean) / std
    return (x[:n_train], y[:n_train]), (x[800:1000], y[800:1000]), (x[1000:], y[1000:])


def cnn(c1: int, c2: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, c1, 3, padding=1), nn.BatchNorm2d(c1), nn.ReLU(),
                         nn.Conv2d(c1, c2, 3, stride=2, padding=1), nn.BatchNorm2d(c2), nn.ReLU(),
                         nn.Flatten(), nn.Linear(c2 * 16, 10))


def latency_ms(models: list[tuple[nn.Module, dict]], batch: int, reps: int) -> list[float]:
    """Median milliseconds of a forward call of each model, taken in turns (a machine that
    slows down for a while slows every model alike), after 10 warm-up rounds."""
    x = torch.randn(batch, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    times: list[list[float]] = [[] for _ in models]
    with torch.no_grad():
        for i in range(reps + 10):
            for (m, p), t in zip(models, times):
                start = time.perf_counter()
                functional_call(m, p, (x,))
                if i >= 10:
                    t.append(time.perf_counter() - start)
    return [1e3 * statistics.median(t) for t in times]


def accuracy(model: nn.Module, params: dict, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((functional_call(model.eval(), params, (x,)).argmax(-1) == y).float().mean())


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """The example's options (``parse([])``: its defaults, as benchmarks/bench_prune.py runs it)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--members", type=int, default=5, help="number of λ values")
    parser.add_argument("--n-train", type=int, default=500)
    parser.add_argument("--channels", type=int, nargs=2, default=(8, 16))
    parser.add_argument("--grid", type=float, nargs=2, default=(0.008, 0.0002), metavar=("TOP", "BOTTOM"),
                        help="the λ grid's ends; 0 0: fr.path finds them (a bracket, about a minute more)")
    parser.add_argument("--rtol", type=float, default=1e-4, help="convergence tolerance of fr.path")
    parser.add_argument("--max-steps", type=int, default=150,
                        help="the step budget: training longer prunes more at every λ, by dead units")
    parser.add_argument("--lr", type=float, default=0.05, help="FISTA's first trial step")
    parser.add_argument("--within", type=float, default=0.02, help="accuracy the rule may give up")
    parser.add_argument("--reps", type=int, default=100, help="latency repetitions at batch 64 (x4 at batch 1)")
    return parser.parse_args(argv)


def train(args: argparse.Namespace) -> SimpleNamespace:
    """Data, model, couplings, the path, the chosen member and its shrunk model."""
    torch.set_num_threads(1)  # small convolutions gain little from a second thread; one fixes the sum order
    torch.manual_seed(0)
    (x, y), val, test = load_digits_split(args.n_train)
    model = cnn(*args.channels).eval()
    couplings = fr.prune.couplings(model, x[:2])  # from the module's dataflow, before training
    params = {k: v.detach() for k, v in model.named_parameters()}

    def cross_entropy(p, x, y):
        return F.cross_entropy(functional_call(model, p, (x,)), y)

    def error(p, x, y):
        return (functional_call(model, p, (x,)).argmax(-1) != y).float().mean()

    top, bottom = args.grid
    lambdas = fr.lambda_grid(torch.tensor(top), args.members, bottom / top) if top > 0 else None
    res = fr.path(cross_entropy, params, fr.group_lasso, (x, y), groups=couplings, lambdas=lambdas,
                  n=args.members, val=val, metric=error, rtol=args.rtol, max_steps=args.max_steps, lr=args.lr)
    best = float(res.val_loss.min())
    chosen = min(k for k in range(len(res)) if float(res.val_loss[k]) <= best + args.within)  # λ descends
    masked = res.member(chosen)
    small, small_params = result = fr.prune.shrink(model, masked, couplings)
    return SimpleNamespace(
        model=model, couplings=couplings, res=res, chosen=chosen, best=best, report=result.report, test=test,
        sizes=(len(x), len(val[0]), len(test[0])),
        rows=[("dense (smallest λ)", model, res.member(len(res) - 1)), ("chosen, masked", model, masked),
              ("chosen, shrunk", small.eval(), small_params)])


def main() -> None:
    args = parse()
    t = train(args)
    res, chosen, (x_test, y_test) = t.res, t.chosen, t.test
    print(f"digits: {t.sizes[0]} train, {t.sizes[1]} validation, {t.sizes[2]} test images; CNN "
          f"conv(1→{args.channels[0]})-BN-ReLU, conv(→{args.channels[1]}, stride 2)-BN-ReLU, Flatten, Linear; 1 thread")
    print("couplings: " + "; ".join(f"{', '.join(c.dims)} ({c.groups} units)" for c in t.couplings))
    # units kept per coupling: res.group_norms holds the couplings' groups in order
    units = torch.stack([g.sum(1) for g in (res.group_norms != 0).split([c.groups for c in t.couplings], 1)], 1)
    print(f"grid: {res.grid.note}\n")
    print(f"{'lambda':>9} {'train':>6} {'val':>6} {'channels':>9}  converged")
    for k in range(len(res)):
        conv = f"at step {int(res.steps[k])}" if res.steps[k] else "no"
        mark = "  <- chosen" if k == chosen else ""
        kept = "+".join(str(int(u)) for u in units[k])
        print(f"{res.lambdas[k]:9.2e} {1 - res.train_loss[k]:6.1%} {1 - res.val_loss[k]:6.1%} {kept:>9}  {conv}{mark}")
    print(f"\n{int((res.steps > 0).sum())}/{len(res)} members converged (rtol {res.rtol:g}, at most "
          f"{res.max_steps} steps) in {res.seconds:.1f} s; channels kept per conv layer, of "
          f"{'+'.join(map(str, args.channels))}")
    print(f"chosen lambda {res.lambdas[chosen]:.2e}: the largest whose validation accuracy is within "
          f"{args.within:.0%} of the best ({1 - t.best:.1%})\n")
    print(t.report, "\n")
    one = latency_ms([(m, p) for _, m, p in t.rows], 1, 4 * args.reps)
    many = latency_ms([(m, p) for _, m, p in t.rows], 64, args.reps)
    print(f"{'model':<19} {'params':>7} {'batch 1':>9} {'batch 64':>9} {'test acc':>8}")
    for (name, m, p), a, b in zip(t.rows, one, many):
        count = sum(v.numel() for k, v in p.items() if k in dict(m.named_parameters()))
        print(f"{name:<19} {count:7d} {a:7.3f}ms {b:7.3f}ms {accuracy(m, p, x_test, y_test):8.1%}")
    (_, model, masked), (_, small, small_params) = t.rows[1:]
    with torch.no_grad():
        gap = (functional_call(small, small_params, (x_test,)) - functional_call(model, masked, (x_test,))).abs().max()
    print(f"shrunk vs masked on the test images: max |Δ logits| = {float(gap):.1e}")


if __name__ == "__main__":
    main()
