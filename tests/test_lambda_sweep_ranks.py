"""The main job's λ grid split across 2 gloo ranks gives, bit for bit, what one process
gives: fr.path spreads its blocks over the ranks and gathers them in grid order
(examples/lambda_sweep.py under ``torchrun``)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import torch

from _dist import Checks, run_ranks

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "lambda_sweep.py"
SHORT = ["--members", "4", "--block", "2", "--hidden", "6", "--n-train", "192", "--plot", ""]


def _example() -> Any:
    spec = importlib.util.spec_from_file_location("lambda_sweep", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _split_grid(rank: int, world: int) -> None:
    example = _example()
    check = Checks(rank)
    args = example.parse(SHORT)
    spread = example.sweep(args)
    alone = example.sweep(args, distribute=False)  # the whole grid in this one process
    check("spread over 2 ranks, alone on 1", (spread.ranks, alone.ranks) == (2, 1), (spread.ranks, alone.ranks))
    check("same grid", torch.equal(spread.lambdas, alone.lambdas))
    for k in alone.params:
        check(f"weights {k} bitwise", torch.equal(spread.params[k], alone.params[k]),
              (spread.params[k] - alone.params[k]).abs().max().item())
    check("convergence steps", torch.equal(spread.steps, alone.steps), f"{spread.steps} vs {alone.steps}")
    check("every member converged", bool((spread.steps > 0).all()), spread.steps)
    check.done()


def test_lambda_grid_split_across_ranks_equals_one_process() -> None:
    run_ranks(_split_grid, timeout=120)
