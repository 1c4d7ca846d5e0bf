"""Feature table of funcreg against torch.optim, torchopt and optax, as measured.

Every cell comes from a probe that runs a tiny case in this process: a pure step is one
whose inputs keep their values and version counters, vmap over lr is a batched run compared
with a loop, a hypergradient is compared with a central finite difference, and so on. No
cell is filled in from a library's documentation: a probe that raises reports the
exception, a probe that cannot run here (no GPU, library not installed) says so. The
probes live in ``peers/``, one module per library (one column).

Verdicts: ``yes``, ``partial`` (works only in a restricted form, said in the note), ``no``,
``n/a``, ``not measured`` (this machine cannot run it), ``not installed``, and
``probe failed`` (the probe itself broke: a bug to fix here, not a finding).

    python benchmarks/feature_matrix.py                  # torch.compile probes use inductor
    python benchmarks/feature_matrix.py --quick          # torch.compile probes use the eager backend
    python benchmarks/feature_matrix.py --only compiled_step --only pure_step

Flags as in benchmarks/README.md (``--only`` picks rows; ``--no-compile`` leaves the
torch.compile row unmeasured). ``main(argv)`` takes them as a list and returns
``{title: table}`` (markdown, with the versions under it). optax is probed when ``jax`` and
``optax`` import (``pip install -c constraints.txt jax optax``; CPU wheels are enough), and
torchopt when it does; they are not dependencies of funcreg.
"""

from __future__ import annotations

import importlib
import sys
import time
import warnings
from collections.abc import Callable

import torch

import funcreg as fr
import peers.funcreg
import peers.optax
import peers.torch_optim
import peers.torchopt
from _cli import parse
from peers import _probe
from peers._probe import Cell, brief

PEERS = (peers.funcreg, peers.torch_optim, peers.torchopt, peers.optax)  # the columns, in order

# (probe name, as each peer module defines it; the row's title)
FEATURES = [
    ("pure_step", "Pure step (inputs' values and `_version` unchanged)"),
    ("vmap_lr", "vmap over lr (4 lrs batched = loop)"),
    ("hypergradient", "Hypergradient d loss(after 1 step) / d lr"),
    ("decay_subset", "Weight decay on a subset of params"),
    ("l2_vs_decay", "L2 penalty λΣw² ≡ SGD weight_decay=2λ; what decay means"),
    ("l1_prox", "L1 prox (soft threshold, exact zeros)"),
    ("group_prox", "Group-lasso prox (block soft threshold)"),
    ("adam_parity", "Adam parity with torch.optim.Adam (20 float64 steps)"),
    ("compiled_step", "torch.compile(fullgraph=True), tensor lr, no recompile on a new lr value"),
    ("on_cuda", "Runs on CUDA"),
]
for _peer in PEERS:  # a peer without a row's probe is a bug here, not a cell
    _missing = [name for name, _ in FEATURES if not callable(getattr(_peer, name, None))]
    if _missing:
        raise ImportError(f"{_peer.__name__} lacks the probes {_missing}")


def _run(probe: Callable[[], Cell]) -> Cell:
    """Every probe returns its own verdict; an exception that escapes it is a probe bug."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return probe()
    except Exception as exc:
        return Cell("probe failed", brief(exc))


def _versions() -> str:
    parts = [f"torch {torch.__version__}", f"funcreg {fr.__version__}"]
    for name in ("torchopt", "jax", "optax"):
        try:
            parts.append(f"{name} {importlib.import_module(name).__version__}")
        except Exception:
            parts.append(f"{name} not installed")
    return ", ".join(parts)


def main(argv: list[str] | None = None) -> dict[str, str]:
    """Probe every cell (``argv`` as on the command line; ``None`` reads ``sys.argv``),
    print the table and return it as ``{title: markdown}``."""
    argv = sys.argv[1:] if argv is None else argv
    args = parse(argv, __doc__, only=[name for name, _ in FEATURES], threads=False, compile=True)
    _probe.COMPILE_BACKEND = "eager" if args.quick else "inductor"
    missing = {peer.NAME: peer.available() for peer in PEERS}
    lines = ["| feature | " + " | ".join(missing) + " |", "|---" * (len(PEERS) + 1) + "|"]
    start = time.perf_counter()
    for name, title in FEATURES:
        if name not in args.only:
            continue
        cells = []
        for peer in PEERS:
            if missing[peer.NAME]:
                cells.append(Cell("not installed", missing[peer.NAME]))
            elif name == "compiled_step" and not args.compile:
                cells.append(Cell("not measured", "--no-compile"))
            else:
                cells.append(_run(getattr(peer, name)))
        lines.append(f"| {title} | " + " | ".join(c.markdown() for c in cells) + " |")
    torch._dynamo.reset()
    extension = peers.torchopt.extension_note() if not missing["torchopt"] else ""
    notes = [
        "",
        f"Measured by {' '.join(['benchmarks/feature_matrix.py', *argv])} in "
        f"{time.perf_counter() - start:.0f} s on {sys.platform}, Python {sys.version.split()[0]}: {_versions()}.",
        f"Note: {extension}: every torchopt probe uses use_accelerated_op=False, torchopt's default."
        if extension else "Note: torchopt not installed.",
    ]
    table = "\n".join(lines + notes)
    print(table)
    return {"Feature matrix against torch.optim, torchopt and optax": table}


if __name__ == "__main__":
    main()
