"""Donated steps against pure ones and torch.optim: time, and peak memory per process.

For AdamW and for SGD with momentum 0.9, on 50 float32 leaves of 25M and of 100M values
in all (the leaf shapes of ``bench_optim.py``'s 10 MB tree, scaled), four variants:

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
    python benchmarks/bench_donation.py --device cuda

``main(argv)`` returns the tables as ``{title: markdown}`` for ``benchmarks/run.py``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from typing import Any, Callable

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import funcreg as fr  # noqa: E402
from _timing import Case, environment, markdown_table, measure  # noqa: E402

LR, WD, MOMENTUM = 1e-3, 1e-2, 0.9
KINDS = [(256, 384), (384, 256), (320, 320), (128, 64, 3, 3), (512, 256)]
VARIANTS = ["fr pure", "fr donated", "torch.optim foreach=True", "torch.optim fused=True"]
STEPS = {"adamw": "AdamW, weight_decay=1e-2", "sgdm": "SGD, momentum=0.9"}


def shapes(numel: int) -> list[tuple[int, ...]]:
    """25 weights and their biases, the 10 MB tree's shapes with the first dim scaled so
    that the tree holds about ``numel`` values."""
    base = 5 * sum(math.prod(s) + s[0] for s in KINDS)  # 2,527,040 values
    scale = max(1, round(numel / base))
    out: list[tuple[int, ...]] = []
    for i in range(25):
        s = KINDS[i % len(KINDS)]
        out += [(s[0] * scale, *s[1:]), (s[0] * scale,)]
    return out


def make(numel: int, seed: int, device: str) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {f"layer{i // 2}.{'weight' if i % 2 == 0 else 'bias'}":
            torch.empty(s).uniform_(-0.05, 0.05, generator=gen).to(device)
            for i, s in enumerate(shapes(numel))}


def stepper(variant: str, opt: str, numel: int, device: str) -> Callable[[], None]:
    """A zero-argument step of ``variant`` on its own params and state."""
    params = make(numel, 0, device)
    grads = make(numel, 1, device)
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


def memory_table(opt: str, numel: int, device: str) -> str:
    peaks = {}
    for variant in VARIANTS:
        cmd = [sys.executable, os.path.abspath(__file__), "--child", variant, "--opt", opt,
               "--numel", str(numel), "--device", device]
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
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="5M values and a few reps")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--reps", type=int, default=None)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--opt", default="adamw", help=argparse.SUPPRESS)
    parser.add_argument("--numel", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child, args.opt, args.numel, args.device)
        return {}
    sizes = [5_000_000] if args.quick else [25_000_000, 100_000_000]
    print(f"# Donated vs pure steps\n\n{environment()}\n", flush=True)
    tables: dict[str, str] = {}
    for numel in sizes:
        reps = args.reps or (5 if args.quick else (30 if numel < 50_000_000 else 12))
        for opt in STEPS:
            for title, text in ((f"time {opt} {numel}", time_table(opt, numel, args.device, reps, 2)),
                                (f"memory {opt} {numel}", memory_table(opt, numel, args.device))):
                tables[title] = text
                print(text + "\n", flush=True)
    return tables


if __name__ == "__main__":
    main()
