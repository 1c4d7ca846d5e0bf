"""fr.rmsprop, fr.adagrad, fr.muon and fr.lion against torch's fastest implementation of each,
donated and pure, on the trees of bench_engine.py, one thread.

For each step and tree, three rows' times (medians of interleaved repetitions after
warm-up, see ``_timing.py``; CPU time of this process, which a shared machine disturbs
less than wall time), each optimizer updating its own copy of the parameters in place
with the same gradients:

* the baseline: ``torch.optim.RMSprop(foreach=True)``, ``torch.optim.Adagrad(fused=True)``
  (torch's fused CPU kernel), ``torch.optim.Muon`` (its only implementation, a loop over
  the matrices), and for Lion, which torch.optim lacks, the in-place foreach Lion a user
  would write (``_foreach_mul_`` for the decay, ``_foreach_lerp``, ``_foreach_sign_``,
  ``_foreach_add_``, ``_foreach_lerp_``);
* ``fr.<step>.step(donate=True)``, writing into its params and state;
* ``fr.<step>.step`` (pure), allocating new params and state every call;
* for Adagrad also ``torch.optim.Adagrad(foreach=True)``, what a pure step, which must
  allocate its outputs, compares with (the fused kernel runs on copies there).

Hyperparameters: RMSprop and Adagrad with ``weight_decay=1e-2`` (torch's defaults
otherwise), Muon with torch's defaults, Lion with ``weight_decay=1e-2``. Muon takes the
matrix leaves only and runs on the two trees made of matrices: its bfloat16 Newton–Schulz
iteration on the model trees' large matrices takes minutes a step on one CPU thread, and
what it costs is torch's own products, the same in both. Before anything is timed, one
step of each variant from the same start is checked against the baseline's.

    python benchmarks/bench_steps.py            # every step on every tree (about 12 minutes)
    python benchmarks/bench_steps.py --quick    # the synthetic trees only, few repetitions
    python benchmarks/bench_steps.py --only lion --only muon

Flags as in benchmarks/README.md (one thread always: ``--threads`` is not taken).
``main(argv)`` takes them as a list and returns the tables as ``{title: markdown}``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

import funcreg as fr
from _cli import parse
from _timing import Case, environment, measure
from _workloads import check_close
from bench_engine import REPS, SMALL, TREES, tensors

LR_LION, B1, B2, WD = 1e-4, 0.9, 0.99, 1e-2
MATRIX_TREES = ["400 leaves of 64×64", "50 leaves, 10 MB"]


class Lion:
    """The foreach Lion a user writes without funcreg, in place (Chen et al. 2023)."""

    def __init__(self, params: list[torch.Tensor], grads: list[torch.Tensor]):
        self.params, self.grads = params, grads
        self.exp_avg = [torch.zeros_like(p) for p in params]

    def step(self) -> None:
        torch._foreach_mul_(self.params, 1 - LR_LION * WD)
        update = torch._foreach_lerp(self.grads, self.exp_avg, B1)  # β1·m + (1 − β1)·g
        torch._foreach_sign_(update)
        torch._foreach_add_(self.params, update, alpha=-LR_LION)
        torch._foreach_lerp_(self.exp_avg, self.grads, 1 - B2)


# step name -> (baseline's label, its builder over (params with .grad, grads), funcreg's
# step, init and keyword arguments)
STEPS: dict[str, tuple[str, Callable[..., Any], Any, dict[str, Any], dict[str, Any]]] = {
    "rmsprop": ("torch.optim.RMSprop(foreach=True)",
                lambda ps, gs: torch.optim.RMSprop(ps, lr=1e-3, weight_decay=WD, foreach=True),
                fr.rmsprop, {}, dict(lr=1e-3, weight_decay=WD)),
    "adagrad": ("torch.optim.Adagrad(fused=True)",
                lambda ps, gs: torch.optim.Adagrad(ps, lr=1e-2, weight_decay=WD, fused=True),
                fr.adagrad, {}, dict(lr=1e-2, weight_decay=WD)),
    "muon": ("torch.optim.Muon", lambda ps, gs: torch.optim.Muon(ps, lr=0.02),
             fr.muon, {}, dict(lr=0.02)),
    "lion": ("foreach Lion by hand", Lion, fr.lion, {}, dict(lr=LR_LION, betas=(B1, B2), weight_decay=WD)),
}


def _shapes(step: str, tree: str) -> list[tuple[str, tuple[int, ...]]]:
    shapes = TREES[tree]()
    return [(k, s) for k, s in shapes if len(s) == 2] if step == "muon" else shapes


#: a second baseline: the foreach form where the first is a fused kernel
FOREACH = {"adagrad": ("torch.optim.Adagrad(foreach=True)",
                       lambda ps: torch.optim.Adagrad(ps, lr=1e-2, weight_decay=WD, foreach=True))}


def _setup(step: str, shapes: list[tuple[str, tuple[int, ...]]]) -> tuple[list[Case], Callable[[], None]]:
    """The cases (baseline, funcreg donated, funcreg pure, and a second baseline where
    there is one) on fresh tensors, and the check."""
    label, build, opt, init, kw = STEPS[step]
    params = {k: torch.nn.Parameter(v) for k, v in tensors(shapes, 0).items()}
    grads = tensors(shapes, 1)
    for k, p in params.items():
        p.grad = grads[k]
    baseline = build(list(params.values()), list(grads.values()))
    extra = []
    if step in FOREACH:  # its own copy of the params, with the same gradients
        own = {k: torch.nn.Parameter(p.detach().clone()) for k, p in params.items()}
        for k, p in own.items():
            p.grad = grads[k]
        extra = [Case(FOREACH[step][0], FOREACH[step][1](list(own.values())).step)]
    donated_p = {k: p.detach().clone() for k, p in params.items()}
    donated_s = opt.init(donated_p, **init)
    pure_p = {k: p.detach().clone() for k, p in params.items()}
    pure_s = opt.init(pure_p, **init)

    def donated() -> None:
        opt.step(donated_p, grads, donated_s, donate=True, **kw)

    def pure() -> Any:
        return opt.step(pure_p, grads, pure_s, **kw)

    def check() -> None:
        """One step of each from the same start: funcreg's params are the baseline's."""
        baseline.step()
        want = {k: p.detach() for k, p in params.items()}
        got_pure, _ = pure()
        donated()
        tol = dict(rtol=1e-5, atol=1e-6) if step != "muon" else dict(rtol=1e-4, atol=1e-5)
        check_close(f"fr.{step}.step (pure)", got_pure, want, reference=label, **tol)
        check_close(f"fr.{step}.step(donate=True)", donated_p, want, reference=label, **tol)

    return [Case(label, baseline.step), Case("donated", donated), Case("pure", pure), *extra], check


def table(step: str, trees: list[str], reps: dict[str, int]) -> str:
    label = STEPS[step][0]
    second = [f" {FOREACH[step][0]} ms | fr pure × it |"] if step in FOREACH else [""]
    lines = [f"### fr.{step}.step against {label}", "",
             f"| tree | leaves | {label} ms | fr donated ms | × | fr pure ms | × |{second[0]}",
             "|---|---:|---:|---:|---:|---:|---:|" + ("---:|---:|" if step in FOREACH else "")]
    for tree in trees:
        shapes = _shapes(step, tree)
        cases, check = _setup(step, shapes)
        check()
        rows = measure(cases, reps=reps[tree], warmup=3, clock=time.process_time_ns)
        b, d, p = (r.median_ms for r in rows[:3])
        line = f"| {tree} | {len(shapes)} | {b:.3f} | {d:.3f} | {d / b:.2f} | {p:.3f} | {p / b:.2f} |"
        if len(rows) > 3:
            line += f" {rows[3].median_ms:.3f} | {p / rows[3].median_ms:.2f} |"
        lines.append(line)
    lines += ["", "Medians of " + ", ".join(f"{reps[t]}" for t in trees) + " interleaved repetitions (CPU time, "
              "one thread); × is the ratio to the baseline in the same run."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, str]:
    """Run the tables (``argv`` as on the command line; ``None`` reads ``sys.argv``), print
    them, and return them as ``{title: markdown}``."""
    args = parse(argv, __doc__, only=list(STEPS), threads=False)
    torch.set_num_threads(1)
    print(f"{environment()}\n", flush=True)
    tables: dict[str, str] = {}
    reps = {t: max(5, r // (4 if args.quick else 1)) for t, r in REPS.items()}
    with torch.no_grad():  # as torch.optim's step runs; funcreg's checks are the same either way
        for step in args.only:
            trees = MATRIX_TREES if step == "muon" else list(TREES)
            if args.quick:
                trees = [t for t in trees if t in SMALL][:1 if step == "muon" else 3]
            text = table(step, trees, reps)
            tables[step] = text
            print("\n" + text + "\n", flush=True)
    return tables


if __name__ == "__main__":
    main()
