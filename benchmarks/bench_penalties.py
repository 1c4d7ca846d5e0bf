"""Penalty gradients, regularized training steps and the L1 prox, side by side.

Three tables of medians over interleaved repetitions (see ``_timing.py``), each with a
ratio column relative to its first row and the minor page faults per call:

1. ``fr.l1.add_grad`` / ``fr.l2.add_grad`` on a 50-leaf dict of 2.5M float32 values,
   against ``torch.func.grad`` of the penalty value plus adding it to the gradients, a
   per-leaf Python loop, and funcreg's own composable path forced.
   Target: ``add_grad`` at least 3x faster than autograd of the penalty.
2. One L1-regularized SGD step of an 8.4M-parameter MLP (1024-2048-2048-1024-10,
   batch 64): the penalty in the loss with ``.backward()``, a per-parameter gradient
   hook, a post-accumulate-grad hook, and funcreg (``torch.func.grad`` + ``fr.l1.add_grad``),
   all against the unregularized step, functional and ``nn.Module``. The SGD update is
   the same call everywhere (``torch._foreach_add_(params, grads, alpha=-lr)``), so only
   the regularization differs. Every variant regularizes every parameter, biases too.
   Targets: the funcreg step within 1.10x of the unregularized functional step (1.15x for
   the donated eager step, 1.10x compiled).
3. ``fr.l1.prox`` on the 50-leaf dict, against a per-leaf ``w - w.clamp(-t, t)`` loop,
   the composable path forced, and (for reference) per-leaf ``F.softshrink``.

The ``torch.compile(fullgraph=True)`` rows (``--no-compile`` leaves them out): ``add_grad``
and ``prox`` with tensor hyperparameters, and the funcreg step with ``add_grad`` and the
update compiled together. Every variant's result is checked against funcreg's before
anything is timed.

funcreg's functions are pure, so each call writes a fresh output; with glibc's default
malloc, large freed blocks go back to the OS and the next call page-faults them in again
(the faults column shows when). To see the step without that cost, run the step table
with ``GLIBC_TUNABLES=glibc.malloc.mmap_threshold=4294967296:glibc.malloc.trim_threshold=17179869184``.

    python benchmarks/bench_penalties.py                # all tables (about two minutes)
    python benchmarks/bench_penalties.py --no-compile   # without the torch.compile rows
    python benchmarks/bench_penalties.py --quick        # a few repetitions: a smoke test
    python benchmarks/bench_penalties.py --only step --threads 1

Flags as in benchmarks/README.md. ``main(argv)`` takes them as a list and returns the
tables as ``{title: markdown}``.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad

import funcreg as fr
from _cli import parse
from _timing import Case, Row, environment, timed_table
from _workloads import check_close, make_tree, mlp, numel
from funcreg import _dispatch

LAM = 1e-4  # add_grad and the training step
LR = 1e-3
PROX_LAM, PROX_STEP = 0.2, 0.1  # threshold 0.02: zeroes about 30% of the tree's values
MLP = (1024, 2048, 2048, 1024, 10)  # 8,403,978 parameters


# ------------------------------------------------------------- 1. add_grad on a 50-leaf tree
def add_grad_cases(penalty: str) -> list[Case]:
    params = make_tree(0)
    grads = {k: v.clone() for k, v in make_tree(1).items()}
    lam = LAM
    if penalty == "l1":
        family = fr.l1

        def value(p: dict[str, torch.Tensor]) -> torch.Tensor:
            return sum(lam * w.abs().sum() for w in p.values())

        def loop() -> dict[str, torch.Tensor]:
            return {k: g + lam * torch.sign(params[k]) for k, g in grads.items()}

        loop_text = "`{k: g + lam*torch.sign(w)}`"
    else:
        family = fr.l2

        def value(p: dict[str, torch.Tensor]) -> torch.Tensor:
            return sum(lam * w.square().sum() for w in p.values())

        def loop() -> dict[str, torch.Tensor]:
            return {k: g + 2 * lam * params[k] for k, g in grads.items()}

        loop_text = "`{k: g + 2*lam*w}`"
    penalty_grad = grad(value)

    def fast() -> Any:
        return family.add_grad(grads, params, lam)

    def autograd() -> dict[str, torch.Tensor]:
        pg = penalty_grad(params)
        return {k: g + pg[k] for k, g in grads.items()}

    def composable() -> Any:
        with _dispatch.forced("composable"):
            return family.add_grad(grads, params, lam)

    cases = [
        Case(f"`fr.{penalty}.add_grad` (fast path)", fast),
        Case(f"`torch.func.grad` of the {penalty} value, + grads", autograd),
        Case(f"per-leaf loop {loop_text}", loop),
        Case(f"`fr.{penalty}.add_grad`, composable path forced", composable),
    ]
    want = fast()
    for case in cases[1:]:
        check_close(case.name, case.fn(), want)
    return cases


def add_grad_compiled(penalty: str) -> list[Case]:
    params = make_tree(0)
    grads = {k: v.clone() for k, v in make_tree(1).items()}
    family = fr.l1 if penalty == "l1" else fr.l2
    lam = torch.tensor(LAM)  # a tensor λ, as a sweep over λ would pass it

    def fn(g: Any, p: Any, lam: torch.Tensor) -> Any:
        return family.add_grad(g, p, lam)

    compiled = torch.compile(fn, fullgraph=True)
    case = Case(f"`fr.{penalty}.add_grad` [torch.compile, fullgraph, tensor λ]",
                lambda: compiled(grads, params, lam))
    check_close(case.name, case.fn(), family.add_grad(grads, params, LAM))
    return [case]


# --------------------------------------------------------- 2. one regularized MLP training step
def step_cases(batch: int = 64, *, compiled: bool = False) -> list[Case]:
    """Closures that each run one SGD step on their own copy of the same MLP.

    With ``compiled``, one more row: funcreg's ``add_grad`` and the same update under
    one ``torch.compile``, which fuses λ·sign(w) into the update's single pass.
    """
    torch.manual_seed(0)
    base = mlp(*MLP)
    torch.manual_seed(1)
    x = torch.randn(batch, 1024)
    y = torch.randint(0, 10, (batch,))
    lam, lr = LAM, LR

    def update(ps: list[torch.Tensor], gs: list[torch.Tensor]) -> None:
        # The one SGD update every variant shares, in place on the model's storage.
        torch._foreach_add_(ps, gs, alpha=-lr)

    def functional(kind: str) -> tuple[Callable[[], Any], nn.Module]:
        """``torch.func.grad`` of the task loss, then by ``kind``: nothing ("none"),
        ``fr.l1.add_grad`` ("funcreg"), the same and the update compiled together
        ("compiled"), or the yardstick ("floor") described in ``builders``."""
        model = copy.deepcopy(base)
        params = {k: v.detach() for k, v in model.named_parameters()}
        plist = list(params.values())

        def loss_fn(p: dict[str, torch.Tensor]) -> torch.Tensor:
            return F.cross_entropy(functional_call(model, p, (x,)), y)

        grad_fn = grad(loss_fn)

        donate = kind in ("donated", "donated_compiled")

        def regularized_update(p: dict[str, torch.Tensor], g: dict[str, torch.Tensor]) -> None:
            g = fr.l1.add_grad(g, p, lam, donate=donate)
            update(list(p.values()), list(g.values()))

        compiled_kinds = ("compiled", "donated_compiled")
        fused = torch.compile(regularized_update, fullgraph=True) if kind in compiled_kinds else None

        def step() -> None:
            g = grad_fn(params)
            if fused is not None:
                fused(params, g)
                return
            gs = list(g.values())
            if kind in ("funcreg", "donated"):
                # the gradients are this step's own: donating them lets add_grad write in place
                gs = list(fr.l1.add_grad(g, params, lam, donate=donate).values())
            elif kind == "floor":
                gs = list(torch._foreach_add(gs, plist))
            update(plist, gs)

        return step, model

    def module(kind: str) -> tuple[Callable[[], Any], nn.Module]:
        model = copy.deepcopy(base)
        plist = list(model.parameters())
        if kind == "hook":
            for p in plist:
                p.register_hook(lambda g, p=p: g + lam * torch.sign(p))
        elif kind == "post_hook":
            def add_sign(p: torch.Tensor) -> None:
                p.grad.add_(torch.sign(p), alpha=lam)

            for p in plist:
                p.register_post_accumulate_grad_hook(add_sign)

        def step() -> None:
            for p in plist:
                p.grad = None
            loss = F.cross_entropy(model(x), y)
            if kind == "in_loss":
                loss = loss + lam * sum(p.abs().sum() for p in plist)
            loss.backward()
            with torch.no_grad():
                update(plist, [p.grad for p in plist])

        return step, model

    # (row name, builder, which rows must end the first step at the same parameters, note)
    builders: list[tuple[str, Callable[[], tuple[Callable[[], Any], nn.Module]], str, str]] = [
        ("unregularized: `torch.func.grad` + update", lambda: functional("none"), "plain",
         "baseline for funcreg"),
        ("unregularized: `nn.Module` `.backward()` + update", lambda: module("none"), "plain",
         "baseline for the module recipes"),
        ("L1 in the loss, `.backward()` + update", lambda: module("in_loss"), "l1",
         "the common recipe"),
        ("L1 by `param.register_hook(g + λ·sign(p))` + update", lambda: module("hook"), "l1", ""),
        ("L1 by post-accumulate-grad hook `p.grad.add_(sign(p), alpha=λ)` + update",
         lambda: module("post_hook"), "l1", "mutates `.grad` in place"),
        ("L1 by funcreg: `torch.func.grad` + `fr.l1.add_grad` + update",
         lambda: functional("funcreg"), "l1", ""),
        ("L1 by funcreg, donated: `fr.l1.add_grad(..., donate=True)` + update",
         lambda: functional("donated"), "l1", "writes g + λ·sign(w) into the gradients"),
    ]
    if compiled:
        builders += [
            ("L1 by funcreg, `fr.l1.add_grad` + update under one `torch.compile`",
             lambda: functional("compiled"), "l1",
             "same math; Inductor fuses λ·sign(w) into the update"),
            ("L1 by funcreg, donated `fr.l1.add_grad` + update under one `torch.compile`",
             lambda: functional("donated_compiled"), "l1",
             "the regularized gradients are also written back into g"),
        ]
    builders.append(
        ("yardstick: `torch.func.grad` + `torch._foreach_add(g, w)` + update",
         lambda: functional("floor"), "",
         "not L1: one pass reading g and w into a fresh tree, the least an eager pure "
         "add_grad can cost")
    )

    # One step from the same start must give the same parameters within each group.
    results: dict[str, dict[str, torch.Tensor]] = {}
    for name, build, group, _ in builders:
        if not group:
            continue
        step, model = build()
        step()
        got = {k: v.detach() for k, v in model.named_parameters()}
        if group in results:
            check_close(name, got, results[group])
        else:
            results[group] = got
    del results

    cases = []
    for name, build, _, note in builders:
        step, _model = build()
        cases.append(Case(name, step, note))
    return cases


# ------------------------------------------------------------------- 3. prox on a 50-leaf tree
def prox_cases() -> list[Case]:
    params = make_tree(0)
    lam, step = PROX_LAM, PROX_STEP
    t = lam * step

    def fast() -> Any:
        return fr.l1.prox(params, lam, step)

    def loop() -> dict[str, torch.Tensor]:
        return {k: w - w.clamp(-t, t) for k, w in params.items()}

    def composable() -> Any:
        with _dispatch.forced("composable"):
            return fr.l1.prox(params, lam, step)

    def softshrink() -> dict[str, torch.Tensor]:
        return {k: F.softshrink(w, t) for k, w in params.items()}

    cases = [
        Case("`fr.l1.prox` (fast path)", fast),
        Case("per-leaf loop `w - w.clamp(-t, t)`", loop),
        Case("`fr.l1.prox`, composable path forced", composable),
        Case("per-leaf `F.softshrink(w, t)`", softshrink,
             "reference only: one fused kernel, Python-float t only"),
    ]
    want = fast()
    for case in cases[1:]:
        check_close(case.name, case.fn(), want)
    return cases


def prox_compiled() -> list[Case]:
    params = make_tree(0)
    lam, step = torch.tensor(PROX_LAM), torch.tensor(PROX_STEP)
    compiled = torch.compile(lambda p, a, s: fr.l1.prox(p, a, s), fullgraph=True)
    case = Case("`fr.l1.prox` [torch.compile, fullgraph, tensor λ and step]",
                lambda: compiled(params, lam, step))
    check_close(case.name, case.fn(), fr.l1.prox(params, PROX_LAM, PROX_STEP))
    return [case]


# ------------------------------------------------------------------------------- driver
def add_grad_target(rows: list[Row]) -> str:
    speedup = rows[1].median_ms / rows[0].median_ms
    return (f"add_grad is {speedup:.2f}x faster than autograd of the penalty "
            f"(target >= 3x: {'met' if speedup >= 3 else 'MISSED'})")


def step_target(rows: list[Row]) -> str:
    lines = []
    for row in rows:
        ratio = row.median_ms / rows[0].median_ms
        if "by funcreg" in row.name:
            # a donated eager step has the looser target: it still makes one pass for
            # sign(w) and one to add it, where the compiled one fuses them into the update
            limit = 1.15 if "donated" in row.name and "compile" not in row.name else 1.10
            lines.append(f"{row.name} / unregularized functional step = {ratio:.3f} "
                         f"(target <= {limit:.2f}: {'met' if ratio <= limit else 'MISSED'})")
        elif row.name.startswith("yardstick"):
            lines.append(f"yardstick (one fresh pass, no L1) / unregularized functional "
                         f"step = {ratio:.3f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, str]:
    """Run the benchmarks (``argv`` as on the command line; ``None`` reads ``sys.argv``),
    print the tables, and return them as ``{title: markdown}``."""
    args = parse(argv, __doc__, only=("add_grad", "step", "prox"), compile=True, devices=("cpu",),
                 reps="repetitions of the tree tables (the step table takes a third)")
    reps = args.reps or (10 if args.quick else 300)
    step_reps = max(3, reps // 3)
    warmup = 2 if args.quick else 10

    tree = make_tree()
    torch.manual_seed(0)
    model = mlp(*MLP)
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    print(f"# funcreg penalty benchmarks\n\n{environment()}\n"
          f"allocator: glibc malloc, GLIBC_TUNABLES={tunables!r}"
          f"{'' if tunables else ' (defaults)'}\n")
    print(f"tree: {len(tree)} leaves, {numel(tree):,} float32 values; "
          f"MLP: {'-'.join(map(str, MLP))}, {numel(dict(model.named_parameters())):,} parameters, "
          f"batch 64; λ={LAM:g}, lr={LR:g}; prox λ={PROX_LAM:g}, step={PROX_STEP:g}; "
          f"medians of {reps} (steps: {step_reps}) interleaved "
          f"repetitions after {warmup} warm-up calls\n", flush=True)
    del tree, model

    tables: dict[str, str] = {}
    for penalty in ("l1", "l2") if "add_grad" in args.only else ():
        cases = add_grad_cases(penalty) + (add_grad_compiled(penalty) if args.compile else [])
        title = f"`fr.{penalty}.add_grad`, 50 leaves, 2.5M float32"
        tables[title] = timed_table(cases, title=title, reps=reps, warmup=warmup, target=add_grad_target)
    if "step" in args.only:
        title = "L1-regularized SGD step, MLP 8.4M params, batch 64"
        tables[title] = timed_table(step_cases(compiled=args.compile), title=title, reps=step_reps,
                                    warmup=warmup, target=step_target)
    if "prox" in args.only:
        title = "`fr.l1.prox`, 50 leaves, 2.5M float32"
        cases = prox_cases() + (prox_compiled() if args.compile else [])
        tables[title] = timed_table(cases, title=title, reps=reps, warmup=warmup)
    return tables


if __name__ == "__main__":
    main()
