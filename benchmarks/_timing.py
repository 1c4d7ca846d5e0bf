"""How funcreg's benchmark scripts time their cases and print their tables.

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
    rows = measure(cases, reps=50, warmup=5)
    print(markdown_table(rows, title="..."))

or, measured, tabled, printed and returned in one call, ``timed_table(cases, ...)``.
"""

from __future__ import annotations

import gc
import os
import platform
import random
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

__all__ = [
    "Case",
    "Row",
    "environment",
    "machine",
    "markdown_table",
    "measure",
    "timed_table",
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
    note: str = ""
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
    count_faults: bool = False,
    clock: Callable[[], int] = time.perf_counter_ns,
) -> list[Row]:
    """Time every case ``reps`` times after ``warmup`` calls, interleaving the cases.

    Returns one :class:`Row` per case, in the order given; ``ratio`` is each median over
    the first case's median (so the first row reads 1.00). Times are wall time, or what
``clock`` counts (``time.process_time_ns``: this process's CPU time, which another job on
a shared machine disturbs less). With
    ``count_faults``, each
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
            Row(case.name, med, q1, q3, med / medians[0], case.note,
                statistics.median(f) if f else None)
        )
    return rows


def _minor_faults() -> int:
    import resource  # Unix only, so only imported when faults are counted

    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


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


def timed_table(
    cases: Sequence[Case],
    *,
    title: str,
    reps: int,
    warmup: int,
    target: Callable[[list[Row]], str] | None = None,
    count_faults: bool = True,
    ratio_header: str = "× first row",
    clock: Callable[[], int] = time.perf_counter_ns,
) -> str:
    """:func:`measure` the cases, print their :func:`markdown_table` and return it.

    ``target``, given the rows, returns lines (a verdict against a target, a ratio worth
    reading) that follow the table as a bulleted list; ``clock`` is :func:`measure`'s.
    """
    rows = measure(cases, reps=reps, warmup=warmup, count_faults=count_faults, clock=clock)
    text = markdown_table(rows, title=title, ratio_header=ratio_header)
    if target is not None:
        text += "\n\n" + "\n".join("- " + line for line in target(rows).splitlines())
    print(text + "\n", flush=True)
    return text


def machine() -> str:
    """The processor, its cores, the memory and the operating system, in one line."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        memory = f", {os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB RAM"
    except (ValueError, OSError, AttributeError):
        memory = ""
    return f"{os.cpu_count()} CPUs ({model}){memory}, {platform.system()} {platform.release()}"


def environment() -> str:
    """One line naming what the numbers were measured on, and which funcreg was measured
    (the one this process imports: the checkout on ``PYTHONPATH`` or the installed one)."""
    import funcreg

    return (
        f"funcreg {funcreg.__version__} from {os.path.dirname(os.path.dirname(funcreg.__file__))}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} intra-op threads, "
        f"Python {platform.python_version()}, "
        f"CUDA {'available' if torch.cuda.is_available() else 'not available'}; {machine()}"
    )
