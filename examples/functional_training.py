"""A functional training loop with an L1 penalty, two ways: subgradient vs proximal.

A small MLP is run through ``torch.func.functional_call`` on generated data (fixed seed)
and trained by full-batch AdamW (``fr.adamw.step``, weight decay on the weight matrices
only). The L1 penalty λ·Σ|w| on the weight matrices enters in one of two ways:

* subgradient: it is part of the loss, ``fr.penalized(mse, lambda p: fr.l1(p, lam, ...))``,
  and ``torch.func.grad`` adds λ·sign(w) to the gradient. Weights shrink and then jitter
  around 0, but hardly ever land on exactly 0;
* proximal: the loss is the task loss alone, and after each AdamW step ``fr.l1.prox``
  soft-thresholds the weights with Adam's own per-element step (``fr.adam.step_size``),
  a proximal Adam. Small weights become exactly 0.

Do not do both: with the prox, the L1 term must not also be in the loss.

    python examples/functional_training.py [--steps 600] [--lam 2e-3]
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn
from torch.func import functional_call, grad

import funcreg as fr


def make_data(n_train: int = 512, n_val: int = 512):
    """y depends on 4 of 16 input features, nonlinearly, plus noise."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n_train + n_val, 16, generator=g)
    y = torch.sin(2 * x[:, 0]) + x[:, 1] * x[:, 2] - 0.5 * x[:, 3] + 0.1 * torch.randn(len(x), generator=g)
    y = y.unsqueeze(1)
    return (x[:n_train], y[:n_train]), (x[n_train:], y[n_train:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--lam", type=float, default=2e-3, help="L1 strength λ")
    args = parser.parse_args()
    lam, lr, wd = args.lam, 5e-3, 1e-2
    torch.manual_seed(0)

    (x, y), (x_val, y_val) = make_data()
    model = nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 1))
    init = {k: v.detach() for k, v in model.named_parameters()}
    print(fr.select.describe(init, fr.select.weights), "\n")

    def mse(params, x, y):
        return ((functional_call(model, params, (x,)) - y) ** 2).mean()

    # Variant 1: L1 in the loss; grad() gives the task gradient + λ·sign(w).
    loss = fr.penalized(mse, lambda p: fr.l1(p, lam, where=fr.select.weights))

    def subgradient_step(params, state):
        grads = grad(loss)(params, x, y)
        return fr.adamw.step(params, grads, state, lr=lr, weight_decay=wd, where=fr.select.weights)

    # Variant 2: proximal AdamW. The loss is the task loss alone; the L1 term is the prox.
    def proximal_step(params, state):
        grads = grad(mse)(params, x, y)
        params, state = fr.adamw.step(params, grads, state, lr=lr, weight_decay=wd, where=fr.select.weights)
        params = fr.l1.prox(params, lam, fr.adam.step_size(state, lr=lr), where=fr.select.weights)
        return params, state

    results = {}
    for name, train_step in (("subgradient", subgradient_step), ("proximal", proximal_step)):
        params, state = init, fr.adamw.init(init)
        start = time.perf_counter()
        for t in range(1, args.steps + 1):
            params, state = train_step(params, state)
            if t % max(1, args.steps // 3) == 0 or t == args.steps:
                print(f"{name:>11} step {t:4d}/{args.steps}  train mse {mse(params, x, y).item():.4f}  "
                      f"objective {loss(params, x, y).item():.4f}  {time.perf_counter() - start:4.1f}s")
        weights = torch.cat([w.flatten() for k, w in params.items() if fr.select.weights(k, w)])
        results[name] = (mse(params, x, y).item(), mse(params, x_val, y_val).item(),
                         loss(params, x, y).item(), (weights == 0).float().mean().item(),
                         (weights.abs() < 1e-3).float().mean().item())

    print(f"\nL1 lambda {lam:g} on the weight matrices ({weights.numel()} weights)")
    print(f"{'variant':>11} {'train':>8} {'val':>8} {'objective':>10} {'exact zeros':>12} {'|w| < 1e-3':>11}")
    for name, (train, val, obj, zeros, small) in results.items():
        print(f"{name:>11} {train:8.4f} {val:8.4f} {obj:10.4f} {zeros:12.1%} {small:11.1%}")


if __name__ == "__main__":
    main()
