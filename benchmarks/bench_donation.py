"""Donated steps against pure ones and torch.optim: time, and peak memory per process.

For AdamW and for SGD with momentum 0.9, on 50 float32 leaves of 25M and of 100M values
in all (the leaf shapes of the 10 MB tree of ``_workloads.py``, scaled), four variants:

* ``fr pure``: ``params, state = fr.adamw.step(params, grads, state, lr=...)``, which
  allocates fresh params and state every call;
* ``fr donated``: the same with ``donate=True``: torch's fused kernel in place on the
  caller's params and state;
* ``torch.optim foreach=True`` and ``torch.optim fused=True``: ``opt.step()`` with
  ``.grad`` set.

The time table interleaves the variants in one process (medians, see ``_timing.py``);
the memory table runs each variant alone in a fresh process (``--child``) and reports the
peak memory its steps took (resident set size above what the process held after its
imports; ``torch.cuda.max_memory_allocated`` with ``--device cuda``), next to the bytes
the step's inputs hold (params, grads and state: 3 trees for SGD with momentum, 4 for
AdamW).

    python benchmarks/bench_donation.py            # both tables, 25M and 100M (a few minutes)
    python benchmarks/bench_donation.py --quick    # 5M values, few reps: a smoke test
    python benchmarks/bench_donation.py --device cuda --only adamw

Flags as in benchmarks/README.md (``--only`` picks the step); nothing here is compiled.
``main(argv)`` takes them as a list and returns the tables as ``{title: markdown}``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import torch

import funcreg as fr
from _cli import apply, parser
from _timing import Case, environment, markdown_table, measure
from _workloads import make_tree, tree_shapes

LR, WD, MOMENTUM = 1e-3, 1e-2, 0.9
VARIANTS = ["fr pure", "fr donated", "torch.optim foreach=True", "torch.optim fused=True"]
STEPS = {"adamw": "AdamW, weight_decay=1e-2", "sgdm": "SGD, momentum=0.9"}


def stepper(variant: str, opt: str, numel: int, device: str) -> Callable[[], None]:
    """A zero-argument step of ``variant`` on its own params and state."""
    params = make_tree(0, shapes=tree_shapes(numel), device=device)
    grads = make_tree(1, shapes=tree_shapes(numel), device=device)
    if variant.startswith("torch.optim"):
        ps = [torch.nn.Parameter(p) for p in params.values()]
        for p, g in zip(ps, grads.values()):
            p.grad = g
        kw = dict(foreach=True) if "foreach" in variant else dict(fused=True)
        if opt == "adamw":
            o: torch.optim.Optimizer = torch.optim.AdamW(ps, lr=LR, weight_decay=WD, **kw)
        else:
            o = torch.optim.SGD(ps, lr=LR, momentum=MOMENTUM, **kw)
        return o.step
    donate = variant == "fr donated"
    if opt == "adamw":
        state = fr.adamw.init(params)

        def call(p: Any, s: Any) -> Any:
            return fr.adamw.step(p, grads, s, lr=LR, weight_decay=WD, donate=donate)
    else:
        state = fr.sgd.init(params)

        def call(p: Any, s: Any) -> Any:
            return fr.sgd.step(p, grads, s, lr=LR, momentum=MOMENTUM, donate=donate)

    box = [params, state]

    def step() -> None:
        box[0], box[1] = call(box[0], box[1])

    return step


def input_bytes(opt: str, numel: int) -> int:
    trees = 4 if opt == "adamw" else 3  # params, grads and the moments / the momentum buffer
    return trees * numel * 4


# ------------------------------------------------------------------------------ memory
def _status(key: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key + ":"))


def child(variant: str, opt: str, numel: int, device: str) -> None:
    """Run a few steps of one variant in this fresh process and print the peak memory
    they took beyond what the process held after its imports.

    On CPU that is the peak RSS (``VmHWM``, reset after the imports by writing 5 to
    ``/proc/self/clear_refs``; ``ru_maxrss`` would not do, since a child inherits its
    parent's at fork) minus the RSS at that point."""
    if device == "cpu":
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        start = _status("VmRSS")
    with torch.no_grad():
        step = stepper(variant, opt, numel, device)
        for _ in range(4):
            step()
    if device == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = _status("VmHWM") - start
    print(json.dumps({"peak": peak}))


def memory_table(opt: str, numel: int, device: str, threads: int | None) -> str:
    peaks = {}
    for variant in VARIANTS:
        cmd = [sys.executable, os.path.abspath(__file__), "--child", variant, "--opt", opt,
               "--numel", str(numel), "--device", device]
        cmd += ["--threads", str(threads)] if threads else []
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        peaks[variant] = json.loads(out.strip().splitlines()[-1])["peak"]
    floor = input_bytes(opt, numel)
    fused = peaks["torch.optim fused=True"]
    what = "peak RSS above the imports" if device == "cpu" else "max_memory_allocated"
    lines = [f"### Peak memory: {STEPS[opt]}; {numel / 1e6:.0f}M float32, 50 leaves; {device}", "",
             f"| variant | {what}, MB | beyond the inputs, MB | × torch.optim fused |",
             "|---|---:|---:|---:|"]
    for variant, peak in peaks.items():
        lines.append(f"| {variant} | {peak / 2**20:,.0f} | {(peak - floor) / 2**20:,.0f} "
                     f"| {peak / fused:.3f} |")
    ratio = peaks["fr donated"] / fused
    lines += ["", f"each variant alone in a fresh process, 4 steps; the inputs (params, grads, "
              f"state) hold {floor / 2**20:,.0f} MB. fr donated / torch.optim fused = "
              f"{ratio:.3f} (target <= 1.02: {'met' if ratio <= 1.02 else 'MISSED'})."]
    return "\n".join(lines)


# -------------------------------------------------------------------------------- time
def time_table(opt: str, numel: int, device: str, reps: int, warmup: int) -> str:
    with torch.no_grad():
        cases = [Case(v, stepper(v, opt, numel, device)) for v in VARIANTS]
        rows = measure(cases, reps=reps, warmup=warmup)
    by = {r.name: r.median_ms for r in rows}
    text = markdown_table(rows, title=f"Step time: {STEPS[opt]}; {numel / 1e6:.0f}M float32, "
                                      f"50 leaves; {device}", ratio_header="× fr pure")
    fused = by["torch.optim fused=True"]
    ratio = by["fr donated"] / fused
    text += (f"\n\nmedians of {reps} interleaved reps after {warmup} warm-up calls. "
             f"fr donated / torch.optim fused = {ratio:.3f} (target <= 1.05: "
             f"{'met' if ratio <= 1.05 else 'MISSED'}); fr donated / fr pure = "
             f"{by['fr donated'] / by['fr pure']:.3f}; fr pure / torch.optim foreach = "
             f"{by['fr pure'] / by['torch.optim foreach=True']:.3f}.")
    return text


def main(argv: list[str] | None = None) -> dict[str, str]:
    """Run the benchmarks (``argv`` as on the command line; ``None`` reads ``sys.argv``),
    print the tables, and return them as ``{title: markdown}``."""
    p = parser(__doc__, only=tuple(STEPS), devices=("cpu", "cuda"),
               reps="repetitions of each time table (default 30 at 25M, 12 at 100M)")
    # one variant's memory, measured in a fresh process that memory_table starts
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--opt", default="adamw", help=argparse.SUPPRESS)
    p.add_argument("--numel", type=int, default=0, help=argparse.SUPPRESS)
    args = apply(p.parse_args(argv))
    if args.child:
        child(args.child, args.opt, args.numel, args.device)
        return {}
    sizes = [5_000_000] if args.quick else [25_000_000, 100_000_000]
    print(f"# Donated vs pure steps\n\n{environment()}\n", flush=True)
    tables: dict[str, str] = {}
    for numel in sizes:
        reps = args.reps or (5 if args.quick else (30 if numel < 50_000_000 else 12))
        for opt in args.only:
            for title, text in ((f"time {opt} {numel}", time_table(opt, numel, args.device, reps, 2)),
                                (f"memory {opt} {numel}", memory_table(opt, numel, args.device, args.threads))):
                tables[title] = text
                print(text + "\n", flush=True)
    return tables


if __name__ == "__main__":
    main()
