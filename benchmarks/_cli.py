"""The command line every benchmark script shares. The convention (what each flag means,
which script takes which) is written once, in benchmarks/README.md: a flag means the same
in every script that takes it, and a script leaves out a flag that means nothing for it."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

import torch

__all__ = ["apply", "parse", "parser"]


def parser(
    doc: str,
    *,
    only: Sequence[str] = (),
    reps: str | None = None,
    threads: bool = True,
    compile: bool = False,
    devices: Sequence[str] = (),
) -> argparse.ArgumentParser:
    """A parser with the shared flags a script takes.

    ``doc`` is the script's docstring (its first paragraph becomes the description);
    ``only`` names the tables ``--only`` selects (no ``--only`` when empty); ``reps`` is
    ``--reps``'s help, saying what N counts (no ``--reps`` when ``None``); ``threads`` adds
    ``--threads``; ``compile`` adds ``--compile/--no-compile``; ``devices`` are the choices
    of ``--device``, the first the default (no ``--device`` when empty).
    """
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0],
                                epilog="Flags as in benchmarks/README.md.")
    p.add_argument("--quick", action="store_true",
                   help="a smoke run: a few repetitions, smaller workloads where the full ones are slow")
    if reps is not None:
        p.add_argument("--reps", type=int, default=None, metavar="N", help=reps)
    if threads:
        p.add_argument("--threads", type=int, default=None, metavar="N",
                       help="torch.set_num_threads(N) first (default: torch's own choice)")
    if compile:
        p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                       help="the torch.compile rows (default: on)")
    if only:
        p.add_argument("--only", action=_Only, choices=list(only), default=list(only), metavar="NAME",
                       help=f"only this part, one of {', '.join(only)} (repeatable; default: all)")
    if devices:
        p.add_argument("--device", choices=list(devices), default=devices[0],
                       help=f"where the tensors live (default: {devices[0]})")
    return p


class _Only(argparse.Action):
    """``--only``: the names given, or all of them (the default) when none is."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 value: object, option_string: str | None = None) -> None:
        chosen = getattr(namespace, self.dest)
        setattr(namespace, self.dest, [*(chosen if chosen is not self.default else []), value])


def apply(args: argparse.Namespace) -> argparse.Namespace:
    """Act on the flags that set up the process (``--threads``) and return ``args``."""
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    return args


def parse(argv: Sequence[str] | None, doc: str, **flags: Any) -> argparse.Namespace:
    """``apply(parser(doc, **flags).parse_args(argv))``; ``argv`` ``None`` reads ``sys.argv``."""
    return apply(parser(doc, **flags).parse_args(argv))
