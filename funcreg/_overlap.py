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
with sparsity-inducing penalties", FnT ML 4(1), 2012, section 3.3). Plain sweeps converge
linearly but slowly where groups cross (a unit with the next layer's columns beside that
layer's rows: over 6000 sweeps on the tests' example); Anderson's acceleration of the
sweeps (Walker & Ni, "Anderson acceleration for fixed-point iterations", SIAM J. Numer.
Anal. 49, 2011), kept only where it lowers the dual objective below the plain sweep's,
needs about 150 there.

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
from collections.abc import Callable, Sequence
from typing import Any

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
        first, second, k = layout.sharing()  # type: ignore[misc]  # not None: the layout overlaps here
        raise ValueError(
            f"groups[{first}] and groups[{second}] overlap (both name {describe(k)}): the prox of "
            "overlapping groups has no closed form, and funcreg computes it by an iteration that "
            "stops on a duality gap read on the host, which torch.compile and torch.func's "
            "grad and jacrev cannot run. Call the prox eagerly or under vmap alone, or use "
            "couplings that do not overlap")
    x = {k: v[k].to(torch.float64) for k in ks}
    like = torch.zeros(x[ks[0]].shape[:batch], dtype=torch.float64, device=x[ks[0]].device).unsqueeze(-1)
    s = {k: _coupled.column(ops, steps, k, like) for k in ks}  # per member, (*batch, 1)
    t = {j: _as(ts[j]) for j in members}
    s_max = _max([s[k] for k in ks], like)
    size = torch.linalg.vector_norm(torch.stack([_norm(x[k], batch) for k in ks], dim=-1), dim=-1)
    target = RTOL * size / (1 + math.sqrt(sum(c.groups for c in couplings)))
    problem = _Problem(members, couplings, x, s, t, shared_step, batch)
    eta = {(j, p.k): torch.zeros_like(x[p.k]) for j, c in problem.blocks for p in c.parts}
    history: list[tuple[dict, dict]] = []
    delta = None
    for _ in range(MAX_SWEEPS):
        swept = problem.sweep(eta)
        history = [*history, (swept, {key: swept[key] - eta[key] for key in eta})][-MEMORY:]
        eta = problem.accelerated(history, swept) if len(history) > 1 else swept
        delta = (2 * problem.gap(eta).clamp_min(0.0) * s_max).sqrt()
        if bool(((delta <= target) | torch.isnan(delta)).all()):
            break
    else:
        assert delta is not None
        worst = float((delta / torch.where(size > 0, size, 1.0)).max())
        first, second, k = layout.sharing()  # type: ignore[misc]  # not None: the layout overlaps here
        raise RuntimeError(
            f"the prox of overlapping groups[{first}] and groups[{second}] (sharing {describe(k)}) "
            f"did not reach its tolerance in {MAX_SWEEPS} sweeps (certified error {worst:.2e} of "
            f"‖w‖, aimed at {RTOL:.0e}); nothing was written")
    # every group no farther from 0 than the certified error is 0 in the exact prox or
    # within the tolerance of it: make it exactly 0
    u = problem.primal(eta)
    nan = _coupled.nan_of(delta)
    for c in couplings:
        norm = _coupled.norms(c, u, batch)[0]
        keep = (norm > delta.unsqueeze(-1)).to(torch.float64)
        for p in c.parts:
            u[p.k] = u[p.k] * _coupled.spread(keep, u[p.k], p, batch)
    return {k: (u[k] + _member(nan, u[k], batch)).to(v[k].dtype) for k in ks}


#: past sweeps that Anderson acceleration combines
MEMORY = 5


class _Problem:
    """The dual of one overlapping set's prox, in the scaled variables η = S·ξ (per
    coupling and leaf, so that u = v − Σ η): a sweep of block coordinate ascent, Anderson's
    acceleration of the sweeps, the duality gap."""

    def __init__(self, members: tuple[int, ...], couplings: list[_coupled.Resolved], x: dict[int, torch.Tensor],
                 s: dict[int, Any], t: dict[int, Any], shared_step: bool, batch: int) -> None:
        self.blocks = list(zip(members, couplings))
        self.x, self.s, self.t, self.shared, self.batch = x, s, t, shared_step, batch
        self.s_leaf = {k: _member(_per_member(h, batch), x[k], batch) for k, h in s.items()}

    def primal(self, eta: dict[tuple[int, int], torch.Tensor]) -> dict[int, torch.Tensor]:
        u = dict(self.x)
        for (_, k), e in eta.items():
            u[k] = u[k] - e
        return u

    def sweep(self, eta: dict[tuple[int, int], torch.Tensor]) -> dict[tuple[int, int], torch.Tensor]:
        """Each coupling's block of η minimized exactly in turn: its closed-form prox of
        the residual the others leave."""
        eta, u, batch = dict(eta), self.primal(eta), self.batch
        for j, c in self.blocks:
            r = {p.k: u[p.k] + eta[(j, p.k)] for p in c.parts}
            norm, parts = _coupled.norms(c, r, batch)
            if self.shared:
                factors = [block_shrink(norm, self.s[c.parts[0].k] * self.t[j])] * len(c.parts)
            else:
                factors = _coupled.metric_factors(parts, [self.s[p.k] for p in c.parts], self.t[j])
            for p, f in zip(c.parts, factors):
                u[p.k] = r[p.k] * _coupled.spread(f, r[p.k], p, batch)
                eta[(j, p.k)] = r[p.k] - u[p.k]
        return eta

    def accelerated(self, history: list[tuple[dict, dict]], swept: dict) -> dict:
        """Anderson's extrapolation of the last sweeps (the combination of their results
        whose residuals, summed with weights that add to 1, are smallest), put back in the
        dual balls; kept per member only where it lowers the dual objective below the plain
        sweep's, so every step is at least a sweep."""
        m = len(history)
        gram = torch.stack([torch.stack([_dot(fa, fb, self.batch) for _, fb in history], dim=-1)
                            for _, fa in history], dim=-2)  # (*batch, m, m)
        scale = gram.diagonal(dim1=-2, dim2=-1).amax(-1, keepdim=True).unsqueeze(-1)
        eye = torch.eye(m, dtype=gram.dtype, device=gram.device)
        weights = torch.linalg.solve(gram + (1e-10 * scale + torch.finfo(gram.dtype).tiny) * eye,
                                     torch.ones(gram.shape[:-1], dtype=gram.dtype, device=gram.device))
        weights = weights / weights.sum(-1, keepdim=True)
        candidate = {key: sum(_member(weights[..., i], x[key], self.batch) * x[key] for i, (x, _) in enumerate(history))
                     for key in swept}
        candidate = self.feasible(candidate)
        better = (self.dual(candidate) < self.dual(swept)) & torch.isfinite(weights).all(-1)
        return {key: torch.where(_member(better, swept[key], self.batch), candidate[key], swept[key])
                for key in swept}

    def feasible(self, eta: dict[tuple[int, int], torch.Tensor]) -> dict[tuple[int, int], torch.Tensor]:
        """η with each group's ξ = S⁻¹η scaled into its ball ‖ξ_g‖ ≤ t."""
        out = dict(eta)
        for j, c in self.blocks:
            xi = {p.k: self._xi(eta[(j, p.k)], p.k) for p in c.parts}
            norm = _coupled.norms(c, xi, self.batch)[0]
            t = self.t[j]
            f = torch.where(norm > t, t / torch.where(norm > 0, norm, 1.0), 1.0)
            for p in c.parts:
                out[(j, p.k)] = eta[(j, p.k)] * _coupled.spread(f, xi[p.k], p, self.batch)
        return out

    def _xi(self, e: torch.Tensor, k: int) -> torch.Tensor:
        h = self.s_leaf[k]
        if isinstance(h, torch.Tensor):
            return torch.where(h > 0, e / torch.where(h > 0, h, 1.0), 0.0)
        return e / h if h > 0 else 0.0 * e

    def dual(self, eta: dict[tuple[int, int], torch.Tensor]) -> torch.Tensor:
        """½‖u‖² in the metric S⁻¹, per member (what the ascent lowers)."""
        u = self.primal(eta)
        return _dot({k: self._xi(x, k) for k, x in u.items()}, u, self.batch) / 2

    def gap(self, eta: dict[tuple[int, int], torch.Tensor]) -> torch.Tensor:
        """Σ_g (t‖u_g‖ − ⟨u_g, ξ_g⟩) per member, for η in the balls."""
        u, total = self.primal(eta), torch.zeros((), dtype=torch.float64)
        for j, c in self.blocks:
            norm = _coupled.norms(c, u, self.batch)[0]
            inner = sum(_chunk_sums(u[p.k] * self._xi(eta[(j, p.k)], p.k), p, c.groups, self.batch) for p in c.parts)
            total = total + (self.t[j] * norm - inner).sum(-1)
        return total


def _per_member(h: Any, batch: int) -> Any:
    """A ``(*batch, 1)`` column as ``(*batch,)`` (a number or a 0-d tensor as it is)."""
    return h.reshape(h.shape[:batch]) if isinstance(h, torch.Tensor) and h.ndim > batch else h


def _dot(a: dict, b: dict, batch: int) -> torch.Tensor:
    """Σ over the keys of ⟨a[key], b[key]⟩ over each member's elements: ``(*batch,)``."""
    total: Any = 0.0
    for key in a:
        y = a[key] * b[key]
        d = (y.sum(dim=list(range(batch, y.ndim))) if y.ndim > batch else y)
        total = total + (_sharding.to_plain(d) if _sharding.is_dtensor(d) else d)
    return total


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
