r"""The prox of the group lasso over couplings that share leaves (overlapping groups).

For groups that overlap the prox

.. math:: \min_u \sum_l \tfrac{1}{2 s_l}\lVert u_l - v_l\rVert^2 + \sum_g t_g \lVert u_g\rVert

has no closed form. Its dual is a projection: :math:`u = v - S\sum_g \xi_g`, each
:math:`\xi_g` supported on group g with :math:`\lVert\xi_g\rVert \le t_g`, minimizing
:math:`\tfrac12\lVert v - S\sum_g\xi_g\rVert^2_{S^{-1}}`. Block coordinate ascent on it
takes the couplings in turn: the groups of one coupling are disjoint, so the exact
minimization over its block is that coupling's own closed-form prox of the residual
(Jenatton, Mairal, Obozinski & Bach, "Proximal methods for hierarchical sparse coding",
JMLR 12, 2011, section 3 and its dual; Bach, Jenatton, Mairal & Obozinski, "Optimization
with sparsity-inducing penalties", FnT ML 4(1), 2012, section 3.3).

Every sweep is certified by the duality gap
:math:`\Delta = \sum_g (t_g\lVert u_g\rVert - \langle u_g, \xi_g\rangle) \ge 0`: the
primal is strongly convex, so :math:`\lVert u - u^*\rVert \le \delta =
\sqrt{2\Delta\max_l s_l}`. The sweeps stop when :math:`\delta \le
\mathrm{RTOL}\,\lVert v\rVert / (1 + \sqrt{n})`, n the number of groups; then every group
whose norm is at most δ is set to exactly 0. That includes every group that is 0 in the
exact prox (its norm in u is at most ‖u − u*‖), and the result is within
:math:`\delta(1 + \sqrt{n}) \le \mathrm{RTOL}\,\lVert v\rVert` of the exact prox. The
stopping test reads the gap on the host, which eager calls and ``vmap`` alone (the stacked
path) allow; under ``grad``, ``jacrev`` or ``torch.compile`` it is refused.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import torch

from funcreg import _coupled, _sharding
from funcreg._groups import block_shrink

#: the result is within RTOL·‖v‖ of the exact prox (Euclidean norm over the overlapping
#: couplings' leaves, per ensemble member), computed in float64
RTOL = 1e-6
#: sweeps over the couplings before giving up with an error
MAX_SWEEPS = 5000

_functorch = torch._C._functorch


def prox(layout: _coupled.Layout, members: tuple[int, ...], v: Sequence[torch.Tensor],
         steps: Any, ts: dict[int, Any], shared_step: bool, batch: int, ops: Any,
         describe: Callable[[int], str]) -> dict[int, torch.Tensor]:
    """The prox of the couplings ``members`` of ``layout`` (one connected overlapping set)
    at ``v`` (every leaf of the call), with ``steps`` a per-leaf column and ``ts[j]`` the
    threshold of coupling j per unit step. Returns the new value of each of their leaves,
    by position, in its dtype. ``describe(k)`` names leaf k in errors."""
    couplings = [layout.couplings[j] for j in members]
    ks = sorted({p.k for c in couplings for p in c.parts})
    if torch.compiler.is_compiling() or any(
            _functorch.is_functorch_wrapped_tensor(x) for x in [*(v[k] for k in ks), *_tensors(steps), *_tensors(ts)]):
        first, second, k = layout.sharing()  # type: ignore[misc]
        raise ValueError(
            f"groups[{first}] and groups[{second}] overlap (both name {describe(k)}): the prox of "
            "overlapping groups has no closed form, and funcreg computes it by an iteration that "
            "stops on a duality gap read on the host, which torch.compile and torch.func's "
            "grad and jacrev cannot run. Call the prox eagerly or under vmap alone, or use "
            "couplings that do not overlap")
    x = {k: v[k].to(torch.float64) for k in ks}
    u = dict(x)
    eta = {(j, p.k): torch.zeros_like(x[p.k]) for j, c in zip(members, couplings) for p in c.parts}
    like = torch.zeros(x[ks[0]].shape[:batch], dtype=torch.float64, device=x[ks[0]].device).unsqueeze(-1)
    s_group = {k: _coupled.column(ops, steps, k, like) for k in ks}  # (*batch, 1) per leaf
    s_max = _max([s_group[k] for k in ks], like)
    total = sum(c.groups for c in couplings)
    size = torch.linalg.vector_norm(torch.stack([_norm(x[k], batch) for k in ks], dim=-1), dim=-1)
    target = RTOL * size / (1 + math.sqrt(total))
    delta = None
    for _ in range(MAX_SWEEPS):
        for j, c in zip(members, couplings):
            r = {p.k: u[p.k] + eta[(j, p.k)] for p in c.parts}
            norm, parts = _coupled.norms(c, r, batch)
            t = _as(ts[j])
            if shared_step:
                f = block_shrink(norm, s_group[c.parts[0].k] * t)
                factors = [f] * len(c.parts)
            else:
                factors = _coupled.metric_factors(parts, [s_group[p.k] for p in c.parts], t)
            for p, f in zip(c.parts, factors):
                new = r[p.k] * _coupled.spread(f, r[p.k], p, batch)
                eta[(j, p.k)] = r[p.k] - new
                u[p.k] = new
        gap = sum(_gap(c, j, u, eta, s_group, _as(ts[j]), batch) for j, c in zip(members, couplings))
        delta = (2 * gap.clamp_min(0.0) * s_max).sqrt()
        if bool(((delta <= target) | torch.isnan(delta)).all()):
            break
    else:
        assert delta is not None
        worst = float((delta / torch.where(size > 0, size, 1.0)).max())
        first, second, k = layout.sharing()  # type: ignore[misc]
        raise RuntimeError(
            f"the prox of overlapping groups[{first}] and groups[{second}] (sharing {describe(k)}) "
            f"did not reach its tolerance in {MAX_SWEEPS} sweeps (certified error {worst:.2e} of "
            f"‖w‖, aimed at {RTOL:.0e}); nothing was written")
    # every group no farther from 0 than the certified error is 0 in the exact prox or
    # within the tolerance of it: make it exactly 0
    nan = _coupled.nan_of(delta)
    for c in couplings:
        norm, _ = _coupled.norms(c, u, batch)
        keep = (norm > delta.unsqueeze(-1)).to(torch.float64)
        for p in c.parts:
            u[p.k] = u[p.k] * _coupled.spread(keep, u[p.k], p, batch)
    return {k: (u[k] + _member(nan, u[k], batch)).to(v[k].dtype) for k in ks}


def _tensors(h: Any) -> list[torch.Tensor]:
    values = h.values() if isinstance(h, dict) else h if isinstance(h, (list, tuple)) else [h]
    return [x for x in values if isinstance(x, torch.Tensor)]


def _as(t: Any) -> Any:
    return t.to(torch.float64) if isinstance(t, torch.Tensor) else t


def _max(values: list[Any], like: torch.Tensor) -> torch.Tensor:
    full = [v.expand_as(like) if isinstance(v, torch.Tensor) else torch.full_like(like, v) for v in values]
    return torch.stack(full, dim=-1).amax(-1).squeeze(-1)


def _norm(x: torch.Tensor, batch: int) -> torch.Tensor:
    n = torch.linalg.vector_norm(x, dim=list(range(batch, x.ndim))) if x.ndim > batch else x.abs()
    return _sharding.to_plain(n) if _sharding.is_dtensor(n) else n


def _member(h: Any, x: torch.Tensor, batch: int) -> Any:
    """A per-member value ``(*batch,)`` shaped to broadcast against ``x``."""
    if not isinstance(h, torch.Tensor) or h.ndim == 0:
        return h
    h = h.reshape(*h.shape, *[1] * (x.ndim - h.ndim))
    return _sharding.replicate_like(h, x) if _sharding.is_dtensor(x) else h


def _chunk_sums(y: torch.Tensor, p: _coupled.Part, groups: int, batch: int) -> torch.Tensor:
    """``(*batch, G)``: the sum of ``y`` over each group's chunk of a leaf."""
    d = batch + p.dim
    others = [j for j in range(batch, y.ndim) if j != d]
    x = y.sum(dim=others) if others else y
    if _sharding.is_dtensor(x):
        x = _sharding.to_plain(x)
    return x.unflatten(-1, (groups, p.width)).sum(-1) if p.width > 1 else x


def _gap(c: _coupled.Resolved, j: int, u: dict[int, torch.Tensor], eta: dict[tuple[int, int], torch.Tensor],
         s: dict[int, Any], t: Any, batch: int) -> torch.Tensor:
    """Coupling c's share of the duality gap, Σ_g (t‖u_g‖ − ⟨u_g, ξ_g⟩), per member."""
    norm, _ = _coupled.norms(c, u, batch)
    inner = 0.0
    for p in c.parts:
        step = s[p.k]
        dot = _chunk_sums(u[p.k] * eta[(j, p.k)], p, c.groups, batch)
        inner = inner + (torch.where(step > 0, dot / step, 0.0) if isinstance(step, torch.Tensor)
                         else (dot / step if step > 0 else 0.0 * dot))
    return (t * norm - inner).sum(-1)
