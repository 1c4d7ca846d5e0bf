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
trained in one cheap vmap (loose tolerance, few steps or epochs of the path's solver).
What those members pruned gives the grid's ends: its top is the smallest bracket λ that
left at least 90 % of the selected groups at zero; its bottom is ``MARGIN`` bracket
steps (a decade and a half) below the largest λ under which every member pruned at most
10 % of them. The margin is there because a short run prunes less than a converged one
at small λ, where groups die slowly: on the digits MLP of ``examples/digits_pruning.py``,
a decade below the λ where the short runs pruned at most 10 %, converged members still
prune 13 %. If either end is missing, the bracket is shifted by its width, at most
``SHIFTS`` times.

*Dead* groups are counted apart at the bottom: a group that is zero and whose gradient
is exactly zero there too (an input blank in every sample, whose weights get no
gradient; a unit whose activation is off on every sample) is held at zero by any λ > 0,
since nothing pulls it back. The top counts it as pruned (the model is empty there);
the bottom's share is of the groups that are not dead (what λ pruned among the groups
the data can still use). After training, ``fr.path`` reports what the ends really
pruned, dead groups apart, and ``Path.dead`` marks them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.func import grad, vmap

import funcreg
from funcreg._path_groups import Grouping
from funcreg._path_train import Options, Problem, Settings, train

BRACKET, HIGH, LOW, SHIFTS = 13, 100.0, 1e-4, 2
BRACKET_RTOL, BRACKET_STEPS = 1e-2, 100  # FISTA
BRACKET_ADAM_RTOL, BRACKET_EPOCHS = 1e-1, 20  # proximal Adam
TOP, BOTTOM = 0.9, 0.1
MARGIN = 3  # bracket steps (a decade and a half) kept below the bottom the short runs found


@dataclass(frozen=True)
class Grid:
    """A grid and how it was found, for ``Path.grid`` and the report: ``bracket`` holds
    the bracket's λ (descending) and ``pruned`` what each bracket member pruned, two
    columns: the share of groups at zero, and the share of the groups that are not dead
    which are zero."""

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
        lam_max = lambda_max_at_zero(problem, params, data, grouping.paths)
        if not bool(lam_max > 0):
            raise ValueError("λ_max at w = 0 is 0 (the gradient there vanishes, as in a deep "
                             "network whose later layer is zero too): use grid='bracket'")
        lams = funcreg.lambda_grid(lam_max, n, eps)
        return Grid(lams, "zero", float(lam_max), f"λ_max at w = 0 ({float(lam_max):.4g}) down to {eps:g}·λ_max")
    scale = per_leaf_scale(problem, params, data, grouping.paths)
    if not bool(scale > 0):
        raise ValueError("every per-leaf λ_max is 0 at these params: no scale for a grid; pass lambdas=")
    ratio = (LOW / HIGH) ** (1 / (BRACKET - 1))
    hi, seen_l, seen_p = HIGH, [], []
    all_l = all_p = torch.zeros(0)
    if settings.solver == "fista":
        quick = Options(solver="fista", lr=settings.lr, rtol=BRACKET_RTOL, max_steps=BRACKET_STEPS,
                        progress=settings.progress, distribute=False).resolve()
    else:  # data that need minibatches: a few epochs of the same solver
        quick = Options(solver="prox_adam", batch_size=settings.batch_size, lr=settings.lr,
                        rtol=BRACKET_ADAM_RTOL, max_steps=BRACKET_EPOCHS, seed=settings.seed,
                        progress=settings.progress, distribute=False).resolve()
    top: float | None = None
    bottom: float | None = None
    for _ in range(SHIFTS + 1):
        lams = float(scale) * hi * ratio ** torch.arange(BRACKET, dtype=torch.float64)
        lams = lams.to(scale.device)
        out = train(problem, lams, params, data, None, quick, label="fr.path grid")
        zero, cut = shares(*groups_at_rest(problem, grouping, out.params, data, settings.batch_size))
        seen_l.append(lams.cpu())
        seen_p.append(torch.stack([zero, cut], -1).cpu())
        all_l, all_p = torch.cat(seen_l), torch.cat(seen_p)
        order = torch.argsort(all_l, descending=True, stable=True)
        all_l, all_p = all_l[order], all_p[order]
        fresh = torch.cat([torch.ones(1, dtype=torch.bool), ~torch.isclose(all_l[1:], all_l[:-1])])
        all_l, all_p = all_l[fresh], all_p[fresh]  # a shifted bracket repeats the end it starts from
        top = _run_end(all_l, all_p[:, 0] >= TOP)
        bottom = _run_end(all_l.flip(0), (all_p[:, 1] <= BOTTOM).flip(0), margin=MARGIN)
        if top is not None and bottom is not None and bottom < top:
            break
        # shift the bracket by its width toward the missing end
        hi = hi * (HIGH / LOW) if top is None else hi * (LOW / HIGH)
    if top is None or bottom is None or not bottom < top:
        raise ValueError(
            "could not bracket the path: over λ from "
            f"{float(all_l.min()):.3g} to {float(all_l.max()):.3g} the share of groups at zero went "
            f"from {float(all_p[:, 0].min()):.0%} to {float(all_p[:, 0].max()):.0%}, the share pruned by "
            f"λ from {float(all_p[:, 1].min()):.0%} to {float(all_p[:, 1].max()):.0%}; pass lambdas=")
    lams = funcreg.lambda_grid(torch.tensor(top, dtype=torch.float64), n, bottom / top).to(scale.device)
    note = (f"bracket: scale λ₀ = {float(scale):.4g} (largest per-leaf λ_max); {len(all_l)} λ "
            f"trained briefly; top {top:.4g} pruned ≥ {TOP:.0%}, bottom {bottom:.4g} ≤ {BOTTOM:.0%} "
            "of the groups (dead groups apart)")
    return Grid(lams, "bracket", float(scale), note, all_l, all_p)


def groups_at_rest(problem: Problem, grouping: Grouping, members: dict[str, torch.Tensor], data: tuple,
                   chunk: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Two ``(n, G)`` masks over the groups of each member (leading dim n): *zero*, the
    group is exactly 0; *dead*, zero and its gradient of the smooth loss on ``data`` exactly
    0 too, so that nothing pulls it back and any λ > 0 holds it there (an input blank in
    every sample, a unit off on every sample). The gradient is accumulated over chunks of
    ``chunk`` samples (all at once for ``None``)."""
    n = len(data[0])
    one = vmap(grad(problem.loss), in_dims=(0, *([None] * len(data))))
    total: dict[str, torch.Tensor] | None = None
    for idx in torch.arange(n, device=data[0].device).split(chunk or n):
        part = one(members, *(t[idx] for t in data))
        # only exact zeros matter: a group is dead when its gradient is 0 on every chunk
        total = part if total is None else {k: total[k].abs() + v.abs() for k, v in part.items()}
    assert total is not None
    zero = grouping.norms(members) == 0
    return zero, zero & (grouping.norms(total) == 0)


def shares(zero: torch.Tensor, dead: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per member: the share of groups at zero, what the grid's top aims at; and the share
    of the groups that are not dead which λ pruned (zero but not dead), what its bottom
    aims at (1 when every group is dead). float64."""
    live = (~dead).sum(-1)
    cut = (zero & ~dead).sum(-1).double() / live.clamp(min=1)
    return zero.double().mean(-1), torch.where(live > 0, cut, 1.0)


def _run_end(lams: torch.Tensor, ok: torch.Tensor, margin: int = 0) -> float | None:
    """The last λ of the run of ``ok`` values that starts at ``lams[0]``, stepped back
    ``margin`` values into the run (None if the run is not longer than the margin)."""
    bad = torch.nonzero(~ok).flatten()
    end = (int(bad[0]) if len(bad) else len(ok)) - 1 - margin
    return float(lams[end]) if end >= 0 else None
