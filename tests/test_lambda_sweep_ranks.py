"""The main job's λ grid split across 2 gloo ranks gives, bit for bit, what one process
gives: each rank trains a contiguous slice in its own vmap, and the slices are gathered in
grid order (examples/lambda_sweep.py under ``torchrun``)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import torch

from _dist import Checks, run_ranks

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "lambda_sweep.py"
SHORT = ["--members", "6", "--block", "3", "--hidden", "6", "--n-train", "256", "--max-steps", "1500",
         "--plot", ""]


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
    _, lams, _, w, stopped, _ = example.sweep(args, rank, world)
    # the same sweep in this one process, as a single vmap over the whole grid
    _, lams_one, _, w_one, stopped_one, _ = example.sweep(args)
    check("same grid", torch.equal(lams, lams_one))
    for k in w_one:
        check(f"weights {k} bitwise", torch.equal(w[k], w_one[k]), (w[k] - w_one[k]).abs().max().item())
    check("convergence steps", torch.equal(stopped, stopped_one), f"{stopped} vs {stopped_one}")
    check("every member converged", bool((stopped > 0).all()), stopped)
    check.done()


def test_lambda_grid_split_across_ranks_equals_one_process() -> None:
    run_ranks(_split_grid, timeout=120)
