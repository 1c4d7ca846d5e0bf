"""Stateless optimizer steps against torch.optim and torchopt, side by side.

For each step (SGD with weight decay, SGD with momentum 0.9 and weight decay, AdamW) and
each workload (a 50-leaf dict of about 10 MB float32, and 10 leaves of 10M float32 =
100M values, 400 MB a copy), one table times, interleaved in one run (see ``_timing.py``):

* ``torch.optim`` with ``foreach=True`` (the baseline every ratio divides by),
  ``foreach=False`` and ``fused=True``, each doing ``opt.step()`` with ``.grad`` set;
* funcreg eager with Python-float hyperparameters (its fused-kernel fast path), eager
  with tensor ``lr``/``weight_decay`` (its foreach path), and the step under
  ``torch.compile(fullgraph=True, dynamic=False)`` with tensor ``lr``/``weight_decay``
  (compiled once per workload, warmed up, and checked not to recompile when the tensors'
  values change);
* torchopt's functional AdamW (``inplace=False``), when torchopt is installed;
* ``a.add_(b)`` on two flat tensors of the same total size: the memory-bandwidth yardstick;
  and ``torch.add(a, b, out=c)`` into a buffer allocated once, which shows what writing
  out of place costs by itself (the CPU reads each line of ``c`` into cache before
  writing it), a cost every pure step pays and an in-place kernel does not.

Besides the median and its ratio to ``torch.optim foreach``, each row shows the effective
bandwidth: the bytes the step must move at the least (SGD with weight decay reads p and g
and writes p: 3 passes over the data; with momentum 5; AdamW reads p, g, m, v and writes
p, m, v: 7), divided by the time, as a fraction of ``add_``'s (3 passes), and the minor
page faults per call. funcreg's steps are pure, so every call allocates its outputs
afresh; with glibc's default malloc a block above the mmap threshold (raised dynamically,
but never past 32 MiB on 64-bit Linux) is an ``mmap`` that is unmapped when freed, so on
the 100M workload (40 MB leaves) every call page-faults its outputs in again. ``--both-allocators`` reruns the
script in two subprocesses, with glibc's defaults and with
``GLIBC_TUNABLES=glibc.malloc.mmap_threshold=4294967296:glibc.malloc.trim_threshold=17179869184``
(malloc keeps freed blocks in its heap and reuses them), and prints both sets of tables.

Every variant's result after two steps is checked against torch.optim's before anything
is timed (on the 10 MB workload), and funcreg's inputs are checked to be untouched
(values and version counters).

    python benchmarks/bench_optim.py --both-allocators   # the full run (a few minutes)
    python benchmarks/bench_optim.py                     # one run, this process's allocator
    python benchmarks/bench_optim.py --quick             # smoke test: 10M values, few reps
    python benchmarks/bench_optim.py --only adamw --no-compile

Flags as in benchmarks/README.md (``--only`` picks the step), and ``--both-allocators``.
``main(argv)`` takes them as a list and returns the tables as ``{title: markdown}``.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch._inductor.config

import funcreg as fr
from _cli import apply, parser
from _timing import Case, environment, measure
from _workloads import check_close, make_tree, tree_shapes
from peers.torchopt import extension_note

LR = 1e-3
WD_SGD = 1e-4
WD_ADAMW = 1e-2
MOMENTUM = 0.9
TUNABLES = "glibc.malloc.mmap_threshold=4294967296:glibc.malloc.trim_threshold=17179869184"
BYTES = 4  # float32


# --------------------------------------------------------------------------- workloads
@dataclass
class Workload:
    name: str
    shapes: list[tuple[int, ...]]
    reps: int
    warmup: int
    check: bool  # compare every variant's result with torch.optim's before timing

    @property
    def numel(self) -> int:
        return sum(math.prod(shape) for shape in self.shapes)


# --------------------------------------------------------------------------- optimizers
@dataclass
class Optimizer:
    key: str
    title: str
    passes: int  # minimum passes over the data: reads + writes of a full-size tensor
    torch_cls: Callable[..., torch.optim.Optimizer]
    torch_kwargs: dict[str, Any]
    fr_float: Callable[[Any, Any, Any], Any]  # (params, grads, state) -> (params, state)
    fr_tensor: Callable[[Any, Any, Any, torch.Tensor, torch.Tensor], Any]
    fr_init: Callable[[Any], Any]
    wd: float


def _sgd_float(p: Any, g: Any, s: Any) -> Any:
    return fr.sgd.step(p, g, s, lr=LR, weight_decay=WD_SGD)


def _sgd_tensor(p: Any, g: Any, s: Any, lr: torch.Tensor, wd: torch.Tensor) -> Any:
    return fr.sgd.step(p, g, s, lr=lr, weight_decay=wd)


def _sgdm_float(p: Any, g: Any, s: Any) -> Any:
    return fr.sgd.step(p, g, s, lr=LR, momentum=MOMENTUM, weight_decay=WD_SGD)


def _sgdm_tensor(p: Any, g: Any, s: Any, lr: torch.Tensor, wd: torch.Tensor) -> Any:
    return fr.sgd.step(p, g, s, lr=lr, momentum=MOMENTUM, weight_decay=wd)


def _adamw_float(p: Any, g: Any, s: Any) -> Any:
    return fr.adamw.step(p, g, s, lr=LR, weight_decay=WD_ADAMW)


def _adamw_tensor(p: Any, g: Any, s: Any, lr: torch.Tensor, wd: torch.Tensor) -> Any:
    return fr.adamw.step(p, g, s, lr=lr, weight_decay=wd)


OPTIMIZERS = [
    Optimizer("sgd", f"SGD, weight_decay={WD_SGD:g}, no momentum", 3, torch.optim.SGD,
              dict(lr=LR, weight_decay=WD_SGD), _sgd_float, _sgd_tensor, fr.sgd.init, WD_SGD),
    Optimizer("sgdm", f"SGD, momentum={MOMENTUM:g}, weight_decay={WD_SGD:g}", 5, torch.optim.SGD,
              dict(lr=LR, momentum=MOMENTUM, weight_decay=WD_SGD), _sgdm_float, _sgdm_tensor,
              fr.sgd.init, WD_SGD),
    Optimizer("adamw", f"AdamW, weight_decay={WD_ADAMW:g}", 7, torch.optim.AdamW,
              dict(lr=LR, weight_decay=WD_ADAMW), _adamw_float, _adamw_tensor, fr.adamw.init,
              WD_ADAMW),
]

# One compiled function per step; dynamic=False so that the second workload compiles its
# own static graph instead of turning the first one dynamic.
_COMPILED: dict[str, Callable[..., Any]] = {}


def compiled(opt: Optimizer) -> Callable[..., Any]:
    if opt.key not in _COMPILED:
        _COMPILED[opt.key] = torch.compile(opt.fr_tensor, fullgraph=True, dynamic=False)
    return _COMPILED[opt.key]


# --------------------------------------------------------------------------- torchopt
def torchopt_status() -> tuple[Any, str]:
    """(module or None, a note saying which torchopt path runs, or why none does)."""
    try:
        import torchopt
    except Exception as exc:  # not installed, or fails to import against this torch
        return None, f"torchopt not usable ({type(exc).__name__}: {exc}); its row is skipped"
    return torchopt, (f"torchopt {torchopt.__version__}: {extension_note()}; its row runs "
                      "torchopt's Python path, `use_accelerated_op=False`")


# --------------------------------------------------------------------------- helpers
def _leaves(*trees: Any) -> list[torch.Tensor]:
    import optree

    out = []
    for t in trees:
        out += [x for x in optree.tree_leaves(t, none_is_leaf=False, namespace="torch")
                if isinstance(x, torch.Tensor)]
    return out


def _pure(name: str, fn: Callable[[], Any], *inputs: Any) -> Any:
    """Run ``fn`` and check it left ``inputs`` untouched (values and version counters)."""
    leaves = _leaves(*inputs)
    before = [(x._version, x.clone()) for x in leaves]
    out = fn()
    for x, (version, value) in zip(leaves, before):
        if x._version != version or not torch.equal(x, value):
            raise AssertionError(f"{name} modified one of its inputs")
    return out


def _agrees(name: str, got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    check_close(name, got, want, reference="torch.optim's", rtol=1e-5, atol=1e-7)


def check(opt: Optimizer, wl: Workload, topt: Any, with_compile: bool) -> None:
    """Two steps of every variant from the same start agree with torch.optim foreach."""
    base = make_tree(0, shapes=wl.shapes)
    grads = make_tree(1, shapes=wl.shapes)
    lr_t, wd_t = torch.tensor(LR), torch.tensor(opt.wd)

    results: dict[str, dict[str, torch.Tensor]] = {}
    for label, kw in (("foreach", dict(foreach=True)), ("for-loop", dict(foreach=False)),
                      ("fused", dict(fused=True))):
        ps = {k: torch.nn.Parameter(v.clone()) for k, v in base.items()}
        o = opt.torch_cls(list(ps.values()), **opt.torch_kwargs, **kw)
        for k, p in ps.items():
            p.grad = grads[k].clone()
        o.step()
        o.step()
        results[label] = {k: p.detach() for k, p in ps.items()}
    want = results.pop("foreach")
    for label, got in results.items():
        _agrees(f"torch.optim {label}", got, want)

    # Step 1 once (eager, float hypers), then step 2 by each funcreg variant.
    p1, s1 = opt.fr_float(base, grads, opt.fr_init(base))
    variants = {
        "fr eager, float hypers": lambda: opt.fr_float(p1, grads, s1),
        "fr eager, tensor hypers": lambda: opt.fr_tensor(p1, grads, s1, lr_t, wd_t),
    }
    if with_compile:
        variants["fr compiled"] = lambda: compiled(opt)(p1, grads, s1, lr_t, wd_t)
    for name, fn in variants.items():
        p2, _ = _pure(name, fn, p1, grads, s1)
        _agrees(name, p2, want)

    if topt is not None and opt.key == "adamw":
        t = topt.adamw(LR, weight_decay=WD_ADAMW, use_accelerated_op=False)
        p, s = base, t.init(base)
        for _ in range(2):
            u, s = t.update(grads, s, params=p, inplace=False)
            p = topt.apply_updates(p, u, inplace=False)
        _agrees("torchopt.adamw", p, want)


# --------------------------------------------------------------------------- one table
def cases_for(opt: Optimizer, wl: Workload, topt: Any,
              with_compile: bool) -> tuple[list[Case], list[int], Callable[[], None]]:
    """The timed cases, each row's minimum number of passes, and a cleanup function."""
    base = make_tree(0, shapes=wl.shapes)
    grad_values = make_tree(1, shapes=wl.shapes)
    # One set of parameters serves every variant: torch.optim updates it in place (which
    # does not change what a step costs), funcreg and torchopt read detached aliases.
    params = {k: torch.nn.Parameter(v) for k, v in base.items()}
    for k, p in params.items():
        p.grad = grad_values[k]
    del base
    plist = list(params.values())
    flat_p = {k: p.detach() for k, p in params.items()}
    flat_g = {k: p.grad for k, p in params.items()}
    lr_t, wd_t = torch.tensor(LR), torch.tensor(opt.wd)

    torch_opts = {
        label: opt.torch_cls(plist, **opt.torch_kwargs, **kw)
        for label, kw in (("foreach=True", dict(foreach=True)),
                          ("foreach=False", dict(foreach=False)),
                          ("fused=True", dict(fused=True)))
    }

    state = opt.fr_init(flat_p)
    if opt.key == "sgdm":  # time the steady state: momentum buffers already there
        _, state = opt.fr_float(flat_p, flat_g, state)

    cases = [
        Case(f"torch.optim {label}", o.step) for label, o in torch_opts.items()
    ] + [
        Case("fr eager, float lr/wd", lambda: opt.fr_float(flat_p, flat_g, state),
             "fused kernel on fresh copies"),
        Case("fr eager, tensor lr/wd", lambda: opt.fr_tensor(flat_p, flat_g, state, lr_t, wd_t),
             "foreach path"),
    ]
    if with_compile:
        step_c = compiled(opt)
        step_c(flat_p, flat_g, state, lr_t, wd_t)  # compile now, outside every timed region
        with torch.compiler.set_stance("fail_on_recompile"):
            step_c(flat_p, flat_g, state, torch.tensor(LR * 2), torch.tensor(opt.wd * 3))
        cases.append(Case("fr torch.compile, tensor lr/wd",
                          lambda: step_c(flat_p, flat_g, state, lr_t, wd_t), "fullgraph, no recompile"))
    passes = [opt.passes] * len(cases)

    extra: list[Any] = []
    if topt is not None and opt.key == "adamw":
        t = topt.adamw(LR, weight_decay=WD_ADAMW, use_accelerated_op=False)
        t_state = t.init(flat_p)

        def torchopt_step() -> Any:
            u, s = t.update(flat_g, t_state, params=flat_p, inplace=False)
            return topt.apply_updates(flat_p, u, inplace=False), s

        cases.append(Case("torchopt.adamw, inplace=False", torchopt_step, "pure-Python path"))
        passes.append(opt.passes)
        extra.append(t_state)

    a = torch.zeros(wl.numel)
    b = torch.full((wl.numel,), 1e-6)
    c = torch.empty(wl.numel)
    cases.append(Case("reference: torch.add(a, b, out=c), c allocated once",
                      lambda: torch.add(a, b, out=c),
                      "out of place: writing c also reads it into cache"))
    passes.append(3)
    cases.append(Case("reference: a.add_(b), one flat tensor", lambda: a.add_(b),
                      "bandwidth yardstick, 3 passes"))
    passes.append(3)

    def cleanup() -> None:
        nonlocal state, a, b, c
        torch_opts.clear()
        extra.clear()
        params.clear()
        flat_p.clear()
        flat_g.clear()
        plist.clear()
        cases.clear()
        state = a = b = c = None  # type: ignore[assignment]
        gc.collect()

    return cases, passes, cleanup


def table(opt: Optimizer, wl: Workload, topt: Any, allocator: str, with_compile: bool) -> tuple[str, str]:
    start = time.perf_counter()
    if wl.check:
        check(opt, wl, topt, with_compile)
    cases, passes, cleanup = cases_for(opt, wl, topt, with_compile)
    rows = measure(cases, reps=wl.reps, warmup=wl.warmup, count_faults=True)
    cleanup()

    base = rows[0].median_ms  # torch.optim foreach=True
    add_ms = rows[-1].median_ms
    out_of_place = rows[-2].median_ms / add_ms
    nbytes = wl.numel * BYTES
    add_bw = 3 * nbytes / (add_ms / 1e3)
    title = f"{opt.title}; {wl.name}; {allocator}"
    lines = [f"### {title}", "",
             "| variant | median ms | IQR ms | × torch.optim foreach | min passes | GB/s "
             "| % of add_ BW | faults/call | note |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    by_name = {}
    for r, p in zip(rows, passes):
        bw = p * nbytes / (r.median_ms / 1e3)
        by_name[r.name] = (r, bw / add_bw)
        lines.append(
            f"| {r.name} | {r.median_ms:.3f} | {r.q1_ms:.3f}–{r.q3_ms:.3f} "
            f"| {r.median_ms / base:.2f} | {p} | {bw / 1e9:.1f} | {100 * bw / add_bw:.0f}% "
            f"| {r.faults:,.0f} | {r.note} |"
        )
    eager = by_name["fr eager, float lr/wd"][0].median_ms / base
    verdict = [
        f"eager (float) / torch.optim foreach = {eager:.2f} (target <= 1.0: "
        f"{'met' if eager <= 1.0 else 'MISSED'})",
    ]
    if with_compile:
        comp_row, comp_frac = by_name["fr torch.compile, tensor lr/wd"]
        comp = comp_row.median_ms / by_name["torch.optim fused=True"][0].median_ms
        verdict.append(f"compiled / torch.optim fused = {comp:.2f} (target <= 1.2: "
                       f"{'met' if comp <= 1.2 else 'MISSED'})")
    if with_compile and wl.numel >= 50_000_000:
        verdict.append(f"compiled at {100 * comp_frac:.0f}% of add_ bandwidth (target >= 50%: "
                       f"{'met' if comp_frac >= 0.5 else 'MISSED'})")
    lines += ["", f"medians of {wl.reps} interleaved reps after {wl.warmup} warm-up calls; "
              f"add_ bandwidth {add_bw / 1e9:.1f} GB/s; writing out of place costs "
              f"{out_of_place:.2f}x add_. " + "; ".join(verdict) + "."]
    print(f"[table took {time.perf_counter() - start:.0f} s]", flush=True)
    return title, "\n".join(lines)


# --------------------------------------------------------------------------- driver
def allocator_label() -> str:
    tun = os.environ.get("GLIBC_TUNABLES", "")
    if "mmap_threshold" in tun:
        return "glibc malloc, mmap_threshold=4 GiB (`GLIBC_TUNABLES` set)"
    return "glibc malloc defaults"


def workloads(quick: bool, reps: int | None) -> list[Workload]:
    if quick:
        return [Workload("50 leaves, 2.5M float32 (10 MB)", tree_shapes(), reps or 10, 2, True),
                Workload("10 leaves x 1M float32 (10M values, quick run)", [(1000, 1000)] * 10,
                         max(3, (reps or 10) // 2), 1, False)]
    return [Workload("50 leaves, 2.5M float32 (10 MB)", tree_shapes(), reps or 40, 3, True),
            Workload("10 leaves x 10M float32 (100M values, 400 MB a copy)",
                     [(10_000, 1_000)] * 10, max(3, (reps or 40) // 8), 1, False)]


def run_here(args: argparse.Namespace) -> dict[str, str]:
    # Compile in this process: a pool of compile workers idling beside the timed loops
    # would be one more thing competing for the two cores.
    torch._inductor.config.compile_threads = 1
    topt, note = torchopt_status()
    alloc = allocator_label()
    print(f"# funcreg optimizer-step benchmarks\n\n{environment()}\n"
          f"allocator: {alloc}; GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES', '')!r}\n"
          f"{note}\nlr={LR:g}, SGD weight_decay={WD_SGD:g}, AdamW weight_decay={WD_ADAMW:g}\n",
          flush=True)
    tables: dict[str, str] = {}
    with torch.no_grad():
        for wl in workloads(args.quick, args.reps):
            for opt in OPTIMIZERS:
                if opt.key in args.only:
                    title, text = table(opt, wl, topt, alloc, args.compile)
                    tables[title] = text
                    print(text + "\n", flush=True)
    return tables


def run_both(argv: list[str]) -> dict[str, str]:
    """This script twice, in subprocesses with ``argv``: glibc malloc's defaults, then
    ``GLIBC_TUNABLES`` set."""
    tables: dict[str, str] = {}
    for tunables in (None, TUNABLES):
        env = dict(os.environ)
        env.pop("GLIBC_TUNABLES", None)
        if tunables:
            env["GLIBC_TUNABLES"] = tunables
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "tables.json")
            cmd = [sys.executable, os.path.abspath(__file__), *argv, "--json", out]
            print(f"$ {'GLIBC_TUNABLES=' + tunables + ' ' if tunables else ''}"
                  f"{' '.join(cmd[1:])}", flush=True)
            subprocess.run(cmd, env=env, check=True)
            with open(out) as f:
                tables.update(json.load(f))
    return tables


def main(argv: list[str] | None = None) -> dict[str, str]:
    """Run the benchmarks (``argv`` as on the command line; ``None`` reads ``sys.argv``),
    print the tables, and return them as ``{title: markdown}``."""
    argv = sys.argv[1:] if argv is None else argv
    p = parser(__doc__, only=tuple(opt.key for opt in OPTIMIZERS), compile=True, devices=("cpu",),
               reps="repetitions of the 10 MB tables (the 100M tables take an eighth)")
    p.add_argument("--both-allocators", action="store_true",
                   help="run twice in subprocesses: glibc defaults and GLIBC_TUNABLES set")
    p.add_argument("--json", default=None, help=argparse.SUPPRESS)  # where run_both's runs write
    args = p.parse_args(argv)
    if args.both_allocators:
        return run_both([a for a in argv if a != "--both-allocators"])
    tables = run_here(apply(args))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(tables, f)
    return tables


if __name__ == "__main__":
    main()
