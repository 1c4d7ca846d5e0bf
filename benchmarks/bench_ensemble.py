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

A second configuration is the engine's yardstick: Adam with an L1 penalty (λ_k·Σ|w|
in each model's loss for the loop; ``fr.l1.add_grad`` and ``fr.adam.step`` in the vmapped
step), with the funcreg step also donated (in place in the stacked tensors, as
torch.optim is), and on the per-leaf path forced (the route ``vmap`` took before the
stacked path). Target: the eager step ≥ 5× the loop.

Before timing, one step of each is checked to give the same parameters.

    python benchmarks/bench_ensemble.py                # both MLPs (under a minute)
    python benchmarks/bench_ensemble.py --quick        # a few repetitions: a smoke test
    python benchmarks/bench_ensemble.py --only tiny --no-compile

Flags as in benchmarks/README.md. ``main(argv)`` takes them as a list and returns the
tables as ``{title: markdown}``.
"""

from __future__ import annotations

import copy
import time

import torch
from torch.func import functional_call, grad, vmap

import funcreg as fr
from _cli import parse
from _timing import Case, environment, timed_table
from _workloads import mlp

K, BATCH, LR, MOMENTUM = 16, 64, 0.05, 0.9
SIZES = {"tiny": (32, 64, 64, 1), "mid": (64, 128, 128, 10)}


def cases_for(sizes: tuple[int, ...], *, compiled: bool) -> list[Case]:
    torch.manual_seed(0)
    x, y = torch.randn(BATCH, sizes[0]), torch.randn(BATCH, sizes[-1])
    lams = torch.logspace(-4, -1, K)
    base = mlp(*sizes)

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

    def funcreg_step(step=eager):
        def run() -> None:
            holder["params"], holder["state"] = step(holder["params"], holder["state"], lams)
        return run

    _check(loop_step, models, funcreg_step(), holder)
    grads_only = vmap(grad(mse), in_dims=(0, None, None))
    cases = [
        Case("loop over 16 models, torch.optim.SGD", loop_step),
        Case("funcreg, vmap over 16", funcreg_step()),
    ]
    if compiled:
        cases.append(Case("funcreg, vmap over 16 [torch.compile]", funcreg_step(torch.compile(eager))))
    cases.append(Case("yardstick: vmap of grad alone, no penalty, no update",
                      lambda: grads_only(holder["params"], x, y)))
    return cases


def adam_cases_for(sizes: tuple[int, ...]) -> list[Case]:
    """Adam + L1: the loop with the penalty in each loss, funcreg pure, donated and on the
    per-leaf path."""
    torch.manual_seed(0)
    x, y = torch.randn(BATCH, sizes[0]), torch.randn(BATCH, sizes[-1])
    lams = torch.logspace(-4, -1, K)
    base = mlp(*sizes)
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


def main(argv: list[str] | None = None) -> dict[str, str]:
    """Run the benchmarks (``argv`` as on the command line; ``None`` reads ``sys.argv``),
    print the tables, and return them as ``{title: markdown}``."""
    args = parse(argv, __doc__, only=tuple(SIZES), compile=True, devices=("cpu",),
                 reps="repetitions of each table")
    reps, warmup = args.reps or (10 if args.quick else 60), 2 if args.quick else 5
    print(f"# K = {K} λ-ensemble training step\n\n{environment()}\n", flush=True)
    tables = {}
    for label in args.only:
        sizes = SIZES[label]
        title = (f"K = 16 ensemble training step, {label} ({'-'.join(map(str, sizes))}) MLP, "
                 f"batch {BATCH}")
        tables[title] = timed_table(cases_for(sizes, compiled=args.compile), title=title, reps=reps,
                                    warmup=warmup, count_faults=False, ratio_header="× loop")
    for label in args.only:
        sizes = SIZES[label]
        title = (f"K = 16 ensemble step, Adam + L1, {label} ({'-'.join(map(str, sizes))}) MLP, "
                 f"batch {BATCH}")

        def verdict(rows: list) -> str:
            return (f"loop / funcreg: {rows[0].median_ms / rows[1].median_ms:.1f}× pure, "
                    f"{rows[0].median_ms / rows[2].median_ms:.1f}× donated (target ≥ 5×), "
                    f"{rows[0].median_ms / rows[3].median_ms:.1f}× on the per-leaf path; CPU time.")

        tables[title] = timed_table(adam_cases_for(sizes), title=title, reps=reps, warmup=warmup,
                                    target=verdict, count_faults=False, ratio_header="× loop",
                                    clock=time.process_time_ns)
    return tables


if __name__ == "__main__":
    main()
