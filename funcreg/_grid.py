"""The λ grid of a path when none is given: found for the network at hand.

``grid="zero"``: the λ_max at w = 0, all selected leaves zero at once (the others where
``params`` holds them), and the geometric grid below it down to eps·λ_max, scikit-learn's
``lasso_path`` grid. For a linear model, or any problem convex in the penalized leaves
with the others fixed, that λ_max is exact: from it up, w = 0 is the solution.

``grid="bracket"`` (the default): for a deep network λ_max at 0 says nothing (zeroing a
later layer zeroes the gradient of an earlier one), and even each layer's own λ_max, with
the others at their initial values, is only a scale: training moves the other layers.
So the scale λ₀ (the largest per-leaf λ_max: each selected leaf zeroed alone) only
places a wide bracket, ``BRACKET`` values from ``HIGH``·λ₀ down to ``LOW``·λ₀, which is
trained in one cheap vmap (loose tolerance, few steps or epochs of the path's solver). What those members pruned gives
the grid's ends: its top is the smallest bracket λ that pruned at least 90 % of the
selected groups, its bottom one bracket step below the largest that pruned at most 10 %
(a short run prunes less than a converged one at small λ, where groups die slowly, so
the bottom keeps a margin); if either is missing, the bracket is shifted by its width, at
most ``SHIFTS`` times. After training, ``fr.path`` reports what the ends really pruned.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.func import grad

import funcreg
from funcreg._path_groups import Grouping
from funcreg._path_train import Problem, Settings, train

BRACKET, HIGH, LOW, SHIFTS = 13, 100.0, 1e-4, 2
BRACKET_RTOL, BRACKET_STEPS = 1e-3, 400  # FISTA
BRACKET_ADAM_RTOL, BRACKET_EPOCHS = 1e-1, 20  # proximal Adam
TOP, BOTTOM = 0.9, 0.1


@dataclass(frozen=True)
class Grid:
    """A grid and how it was found, for ``Path.grid`` and the report."""

    lambdas: torch.Tensor
    method: str
    scale: float
    note: str
    bracket: torch.Tensor | None = None
    pruned: torch.Tensor | None = None


def lambda_max_at_zero(problem: Problem, params: dict[str, torch.Tensor], data: tuple,
                       selected: list[str]) -> torch.Tensor:
    """λ_max with every selected leaf zero at once, the others at ``params``."""
    at_zero = dict(params, **{p: torch.zeros_like(params[p]) for p in selected})
    g = grad(problem.loss)(at_zero, *data)
    return problem.penalty.lambda_max(g, where=problem.where, **problem.options)


def per_leaf_scale(problem: Problem, params: dict[str, torch.Tensor], data: tuple,
                   selected: list[str]) -> torch.Tensor:
    """The largest per-leaf λ_max: each selected leaf zeroed alone, the rest at ``params``."""
    best = None
    for p in selected:
        g = grad(problem.loss)(dict(params, **{p: torch.zeros_like(params[p])}), *data)
        only = {k: (v if k == p else torch.zeros_like(v)) for k, v in g.items()}
        lam = problem.penalty.lambda_max(only, where=problem.where, **problem.options)
        best = lam if best is None else torch.maximum(best, lam)
    assert best is not None
    return best


def build(problem: Problem, params: dict[str, torch.Tensor], data: tuple, grouping: Grouping,
          n: int, eps: float, settings: Settings) -> Grid:
    """The grid of ``n`` values for ``lambdas=None`` (see the module docstring)."""
    if "lambda_max" in getattr(problem.penalty, "without", {}):
        raise ValueError(f"fr.{problem.penalty.name} has no lambda_max to scale a grid: pass lambdas=")
    if settings.grid == "zero":
        top = lambda_max_at_zero(problem, params, data, grouping.paths)
        if not bool(top > 0):
            raise ValueError("λ_max at w = 0 is 0 (the gradient there vanishes, as in a deep "
                             "network whose later layer is zero too): use grid='bracket'")
        lams = funcreg.lambda_grid(top, n, eps)
        return Grid(lams, "zero", float(top), f"λ_max at w = 0 ({float(top):.4g}) down to {eps:g}·λ_max")
    scale = per_leaf_scale(problem, params, data, grouping.paths)
    if not bool(scale > 0):
        raise ValueError("every per-leaf λ_max is 0 at these params: no scale for a grid; pass lambdas=")
    ratio = (LOW / HIGH) ** (1 / (BRACKET - 1))
    hi, seen_l, seen_p = HIGH, [], []
    all_l = all_p = torch.zeros(0)
    if settings.solver == "fista":
        quick = Settings(solver="fista", lr=settings.lr, rtol=BRACKET_RTOL, max_steps=BRACKET_STEPS,
                         progress=settings.progress, distribute=False)
    else:  # data that need minibatches: a few epochs of the same solver
        quick = Settings(solver="prox_adam", batch_size=settings.batch_size, lr=settings.lr,
                         rtol=BRACKET_ADAM_RTOL, max_steps=BRACKET_EPOCHS, seed=settings.seed,
                         progress=settings.progress, distribute=False)
    top = bottom = None
    for _ in range(SHIFTS + 1):
        lams = float(scale) * hi * ratio ** torch.arange(BRACKET, dtype=torch.float64)
        lams = lams.to(scale.device)
        out = train(problem, lams, params, data, None, quick, label="fr.path grid")
        pruned = (grouping.norms(out.params) == 0).double().mean(-1).cpu()
        seen_l.append(lams.cpu())
        seen_p.append(pruned)
        all_l, all_p = torch.cat(seen_l), torch.cat(seen_p)
        order = torch.argsort(all_l, descending=True)
        all_l, all_p = all_l[order], all_p[order]
        top = _run_end(all_l, all_p >= TOP)
        bottom = _run_end(all_l.flip(0), (all_p <= BOTTOM).flip(0), margin=1)
        if top is not None and bottom is not None and bottom < top:
            break
        # shift the bracket by its width toward the missing end
        hi = hi * (HIGH / LOW) if top is None else hi * (LOW / HIGH)
    if top is None or bottom is None or not bottom < top:
        raise ValueError(
            "could not bracket the path: over λ from "
            f"{float(all_l.min()):.3g} to {float(all_l.max()):.3g} the pruned share went from "
            f"{float(all_p.min()):.0%} to {float(all_p.max()):.0%}; pass lambdas=")
    lams = funcreg.lambda_grid(torch.tensor(top, dtype=torch.float64), n, bottom / top).to(scale.device)
    note = (f"bracket: scale λ₀ = {float(scale):.4g} (largest per-leaf λ_max); {len(all_l)} λ "
            f"trained briefly; top {top:.4g} pruned ≥ {TOP:.0%}, bottom {bottom:.4g} ≤ {BOTTOM:.0%} "
            "of the groups")
    return Grid(lams, "bracket", float(scale), note, all_l, all_p)


def _run_end(lams: torch.Tensor, ok: torch.Tensor, margin: int = 0) -> float | None:
    """The last λ of the run of ``ok`` values that starts at ``lams[0]``, stepped back
    ``margin`` values into the run (None if the run is not longer than the margin)."""
    bad = torch.nonzero(~ok).flatten()
    end = (int(bad[0]) if len(bad) else len(ok)) - 1 - margin
    return float(lams[end]) if end >= 0 else None
