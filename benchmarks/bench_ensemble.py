"""A K = 16 λ-ensemble training step: one vmapped funcreg step vs a loop over 16 models.

Each of the 16 members is the same MLP architecture with its own L2 strength λ_k. One
training step is forward, backward, L2 gradient and SGD with momentum:

* **loop, torch.optim** (baseline): 16 ``nn.Module``s, each with its own
  ``torch.optim.SGD(momentum=0.9, weight_decay=2 * λ_k)`` (the factor of 2 makes it the
  same L2 penalty λ·Σw²): ``zero_grad``, forward, ``backward``, ``step``, 16 times;
* **funcreg, vmap**: the 16 members' params stacked (``fr.replicate``), and one
  ``torch.func.vmap`` over ``grad`` of the task loss, ``fr.l2.add_grad`` with a batched λ
  and ``fr.sgd.step``;
* the same vmapped step under ``torch.compile``;
* a yardstick: ``vmap`` of ``grad`` of the task loss alone, what torch.func costs before
  any regularization or update.

A second configuration is the one issue 17 measures: Adam with an L1 penalty (λ_k·Σ|w|
in each model's loss for the loop; ``fr.l1.add_grad`` and ``fr.adam.step`` in the vmapped
step), with the funcreg step also donated (in place in the stacked tensors, as
torch.optim is), and on the per-leaf path forced (the route ``vmap`` took before the
stacked path). Target (issue 17): the eager step ≥ 5× the loop.

Before timing, one step of each is checked to give the same parameters.

    python benchmarks/bench_ensemble.py [--quick] [--threads 1]
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

import funcreg as fr

try:
    from _timing import Case, environment, markdown_table, measure
except ImportError:  # run as a module from the repository root
    from benchmarks._timing import Case, environment, markdown_table, measure

K, BATCH, LR, MOMENTUM = 16, 64, 0.05, 0.9
SIZES = {"tiny (32-64-64-1)": (32, 64, 64, 1), "mid (64-128-128-10)": (64, 128, 128, 10)}


def mlp(sizes: tuple[int, ...]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


def cases_for(sizes: tuple[int, ...]) -> list[Case]:
    torch.manual_seed(0)
    x, y = torch.randn(BATCH, sizes[0]), torch.randn(BATCH, sizes[-1])
    lams = torch.logspace(-4, -1, K)
    base = mlp(sizes)

    models = [copy.deepcopy(base) for _ in range(K)]
    opts = [torch.optim.SGD(m.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=2 * lam.item())
            for m, lam in zip(models, lams)]

    def loop_step() -> None:
        for model, opt in zip(models, opts):
            opt.zero_grad()
            ((model(x) - y) ** 2).mean().backward()
            opt.step()

    def mse(params, x, y):
        return ((functional_call(base, params, (x,)) - y) ** 2).mean()

    def member_step(params, state, lam):
        grads = fr.l2.add_grad(grad(mse)(params, x, y), params, lam)
        return fr.sgd.step(params, grads, state, lr=LR, momentum=MOMENTUM)

    start = {k: v.detach() for k, v in base.named_parameters()}
    holder = {"params": fr.replicate(start, K), "state": fr.replicate(fr.sgd.init(start), K)}
    eager = vmap(member_step)
    compiled = torch.compile(vmap(member_step))

    def funcreg_step(step=eager):
        def run() -> None:
            holder["params"], holder["state"] = step(holder["params"], holder["state"], lams)
        return run

    _check(loop_step, models, funcreg_step(), holder)
    grads_only = vmap(grad(mse), in_dims=(0, None, None))
    return [
        Case("loop over 16 models, torch.optim.SGD", loop_step),
        Case("funcreg, vmap over 16", funcreg_step()),
        Case("funcreg, vmap over 16 [torch.compile]", funcreg_step(compiled)),
        Case("yardstick: vmap of grad alone, no penalty, no update",
             lambda: grads_only(holder["params"], x, y)),
    ]


def adam_cases_for(sizes: tuple[int, ...]) -> list[Case]:
    """Adam + L1: the loop with the penalty in each loss, funcreg pure, donated and on the
    per-leaf path."""
    torch.manual_seed(0)
    x, y = torch.randn(BATCH, sizes[0]), torch.randn(BATCH, sizes[-1])
    lams = torch.logspace(-4, -1, K)
    base = mlp(sizes)
    models = [copy.deepcopy(base) for _ in range(K)]
    opts = [torch.optim.Adam(m.parameters(), lr=1e-3) for m in models]

    def loop_step() -> None:
        for model, opt, lam in zip(models, opts, lams):
            opt.zero_grad()
            penalty = sum(p.abs().sum() for p in model.parameters())
            (((model(x) - y) ** 2).mean() + lam * penalty).backward()
            opt.step()

    def mse(params, x, y):
        return ((functional_call(base, params, (x,)) - y) ** 2).mean()

    def member_step(params, state, lam, donate=False):
        grads = fr.l1.add_grad(grad(mse)(params, x, y), params, lam, donate=donate)
        return fr.adam.step(params, grads, state, lr=1e-3, donate=donate)

    start = {k: v.detach() for k, v in base.named_parameters()}
    holder = {"params": fr.replicate(start, K), "state": fr.replicate(fr.adam.init(start), K)}
    pure, donated = vmap(member_step), vmap(lambda p, s, lam: member_step(p, s, lam, donate=True))

    def funcreg_step(step=pure, path=None):
        def run() -> None:
            with fr._dispatch.forced(path):
                holder["params"], holder["state"] = step(holder["params"], holder["state"], lams)
        return run

    _check(loop_step, models, funcreg_step(), holder)
    grads_only = vmap(grad(mse), in_dims=(0, None, None))
    return [
        Case("loop over 16 models, torch.optim.Adam, L1 in the loss", loop_step),
        Case("funcreg, vmap over 16 (stacked path)", funcreg_step()),
        Case("funcreg, vmap over 16, donated", funcreg_step(donated)),
        Case("funcreg, vmap over 16, per-leaf path forced", funcreg_step(path="composable")),
        Case("yardstick: vmap of grad alone, no penalty, no update",
             lambda: grads_only(holder["params"], x, y)),
    ]


def _check(loop_step, models, funcreg_step, holder) -> None:
    """One step of each path must land on the same parameters."""
    loop_step()
    funcreg_step()
    for k, model in enumerate(models):
        for name, p in model.named_parameters():
            if not torch.allclose(p.detach(), holder["params"][name][k], rtol=1e-4, atol=1e-6):
                raise AssertionError(f"member {k} leaf {name}: loop and vmapped step differ")


def main(quick: bool = False) -> list[str]:
    tables = []
    for label, sizes in SIZES.items():
        rows = measure(cases_for(sizes), reps=10 if quick else 60, warmup=2 if quick else 5)
        tables.append(markdown_table(rows, title=f"K = 16 ensemble training step, {label} MLP, "
                                                 f"batch {BATCH}", ratio_header="× loop"))
    for label, sizes in SIZES.items():
        rows = measure(adam_cases_for(sizes), reps=10 if quick else 60, warmup=2 if quick else 5,
                       clock=time.process_time_ns)
        tables.append(markdown_table(rows, title=f"K = 16 ensemble step, Adam + L1, {label} MLP, "
                                                 f"batch {BATCH}", ratio_header="× loop")
                      + f"\n\nloop / funcreg: {rows[0].median_ms / rows[1].median_ms:.1f}× pure, "
                        f"{rows[0].median_ms / rows[2].median_ms:.1f}× donated (target ≥ 5×), "
                        f"{rows[0].median_ms / rows[3].median_ms:.1f}× on the per-leaf path; CPU time.")
    return tables


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="few repetitions (a smoke run)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads(N) first")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(environment())
    for table in main(quick=args.quick):
        print()
        print(table)
