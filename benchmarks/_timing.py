"""Shared timing helper for funcreg's benchmark scripts.

The machines these scripts run on are small and shared, so absolute times drift from run
to run. What this helper reports is therefore built to be read as *ratios within one run*:

* every case is warmed up first (first-call allocations, lazy initialisation, and for
  ``torch.compile`` variants the compilation itself);
* the repetitions of all cases of a table are **interleaved**: each round runs every
  case once, in a freshly shuffled order, so a burst of load from another process
  slows all cases alike instead of one of them;
* each case's time is the **median** over rounds, and the table's ratio column divides
  it by the first row's median.

Usage::

    cases = [Case("fast", fast_fn), Case("baseline", slow_fn)]
    cases += compiled_variants(cases)          # optional torch.compile rows
    rows = measure(cases, reps=50, warmup=5)
    print(markdown_table(rows, title="..."))
"""

from __future__ import annotations

import gc
import os
import platform
import random
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

__all__ = [
    "Case",
    "Row",
    "compiled_variants",
    "environment",
    "markdown_table",
    "measure",
]


@dataclass
class Case:
    """One row of a table: a name and a zero-argument callable that does the work once."""

    name: str
    fn: Callable[[], Any]
    note: str = ""


@dataclass
class Row:
    """A measured case: median and quartiles in milliseconds, ratio to the table's first row."""

    name: str
    median_ms: float
    q1_ms: float
    q3_ms: float
    ratio: float
    reps: int
    note: str = ""
    samples_ms: list[float] = field(default_factory=list, repr=False)
    #: median minor page faults per call, when :func:`measure` was asked to count them
    faults: float | None = None


def _sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def measure(
    cases: Sequence[Case],
    *,
    reps: int,
    warmup: int = 3,
    seed: int = 0,
    clock: Callable[[], int] = time.perf_counter_ns,
    count_faults: bool = False,
) -> list[Row]:
    """Time every case ``reps`` times after ``warmup`` calls, interleaving the cases.

    Returns one :class:`Row` per case, in the order given; ``ratio`` is each median over
    the first case's median (so the first row reads 1.00). ``clock`` (nanoseconds) is
    wall time by default; ``time.process_time_ns`` counts only this process's CPU time,
    which a crowded machine disturbs less, but which also counts idle-spinning worker
    threads, so use it for single-threaded comparisons only. With ``count_faults``, each
    row also gets the median number of minor page faults per call (memory the call
    touched for the first time since the allocator got it from the OS), read outside
    the timed region.
    """
    if not cases:
        raise ValueError("measure() needs at least one case")
    if reps < 1:
        raise ValueError(f"reps must be >= 1, got {reps}")
    for case in cases:
        for _ in range(warmup):
            case.fn()
    _sync()

    rng = random.Random(seed)
    order = list(range(len(cases)))
    samples: list[list[float]] = [[] for _ in cases]
    faults: list[list[int]] = [[] for _ in cases]
    gc.collect()
    gc_was_enabled = gc.isenabled()
    gc.disable()  # a collection in the middle of one sample is noise, not cost
    try:
        for _ in range(reps):
            rng.shuffle(order)
            for i in order:
                fn = cases[i].fn
                _sync()
                if count_faults:
                    before = _minor_faults()
                start = clock()
                result = fn()
                _sync()
                samples[i].append((clock() - start) / 1e6)
                if count_faults:
                    faults[i].append(_minor_faults() - before)
                del result  # free the outputs outside the timed region
    finally:
        if gc_was_enabled:
            gc.enable()

    medians = [statistics.median(s) for s in samples]
    rows = []
    for case, s, f, med in zip(cases, samples, faults, medians):
        q1, _, q3 = statistics.quantiles(s, n=4) if len(s) >= 2 else (med, med, med)
        rows.append(
            Row(case.name, med, q1, q3, med / medians[0], len(s), case.note, list(s),
                statistics.median(f) if f else None)
        )
    return rows


def _minor_faults() -> int:
    import resource  # Unix only, so only imported when faults are counted

    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def compiled_variants(
    cases: Sequence[Case],
    *,
    make: Callable[[Case], Callable[[], Any]] | None = None,
    suffix: str = " [torch.compile]",
    **compile_kwargs: Any,
) -> list[Case]:
    """A ``torch.compile`` variant of each case.

    By default the case's own callable is compiled (``torch.compile(case.fn,
    **compile_kwargs)``). Cases whose callable closes over state that compiling it
    whole would not suit can pass ``make``, which returns the callable to time for
    a case (for example one that calls a compiled inner function). Compilation happens
    during :func:`measure`'s warm-up, not in the timed region.
    """
    out = []
    for case in cases:
        fn = make(case) if make is not None else torch.compile(case.fn, **compile_kwargs)
        out.append(Case(case.name + suffix, fn, case.note))
    return out


def markdown_table(rows: Sequence[Row], *, title: str = "", ratio_header: str = "× first row") -> str:
    """A markdown table: variant, median ms, interquartile range, ratio to the first row."""
    has_notes = any(r.note for r in rows)
    has_faults = any(r.faults is not None for r in rows)
    header = ["variant", "median ms", "IQR ms", ratio_header]
    header += (["page faults/call"] if has_faults else []) + (["note"] if has_notes else [])
    lines = []
    if title:
        lines += [f"### {title}", ""]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join(["---"] + ["---:"] * (3 + has_faults) + (["---"] if has_notes else [])) + "|")
    for r in rows:
        cells = [
            r.name,
            f"{r.median_ms:.3f}",
            f"{r.q1_ms:.3f}–{r.q3_ms:.3f}",
            f"{r.ratio:.2f}",
        ]
        cells += ([f"{r.faults:.0f}" if r.faults is not None else ""] if has_faults else [])
        cells += [r.note] if has_notes else []
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def environment() -> str:
    """One line naming what the numbers were measured on."""
    cpu = platform.processor() or platform.machine()
    return (
        f"torch {torch.__version__}, {torch.get_num_threads()} intra-op threads, "
        f"{os.cpu_count()} CPUs ({cpu}), Python {platform.python_version()}, "
        f"CUDA {'available' if torch.cuda.is_available() else 'not available'}"
    )
