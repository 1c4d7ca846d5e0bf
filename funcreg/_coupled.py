"""Coupled groups over the leaves of one call: where each coupling's groups lie (the
layout), their norms across leaves, and per-group factors spread back onto each leaf.

A coupling (:class:`funcreg.Coupling`) cuts each of its leaves into G equal chunks along
a dim; group k is the k-th chunk of every leaf. The math runs on a ``(*batch, G)`` tensor
per coupling (``batch`` leading ensemble dims on the stacked path, none elsewhere), and
each leaf gets back a factor shaped to broadcast against it: one reduction across leaves,
then an elementwise write per leaf (docs/design.md, "Extension points").

The prox of one coupling in a diagonal metric (a step per leaf, as a proximal Adam takes)
is :func:`metric_factors`: with one step for every leaf it is the block soft threshold;
with several it solves a one-dimensional equation by Newton's method (exact for one step).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from funcreg import _sharding
from funcreg.coupling import Coupling

#: leaves by position: the call's list, or a dict of some of them
Leaves = Sequence[torch.Tensor] | Mapping[int, torch.Tensor]


@dataclass(frozen=True)
class Part:
    """A leaf of a coupling: ``k``, its position among the call's leaves; ``dim`` (from
    the member's first dim), ``size`` along it and ``width``, its slices per group."""

    k: int
    dim: int
    size: int
    width: int


@dataclass(frozen=True)
class Resolved:
    """A coupling of ``groups=`` (``index`` in it) over the call's leaves: G groups of
    ``size`` elements each, its ``parts``; ``owner``, the part whose leaf holds the widest
    dtype (the coupling's values are computed in that dtype)."""

    index: int
    groups: int
    size: int
    parts: tuple[Part, ...]
    owner: int


@dataclass(frozen=True)
class Layout:
    """The couplings a call computes on; ``alone``: those that share no leaf with another
    (their prox is closed-form), ``overlapping``: sets of couplings that share leaves,
    each connected through shared leaves."""

    couplings: tuple[Resolved, ...]
    alone: tuple[int, ...]
    overlapping: tuple[tuple[int, ...], ...]

    def sharing(self) -> tuple[int, int, int] | None:
        """Two couplings of ``groups=`` that share a leaf, and that leaf's position, or
        ``None``."""
        for members in self.overlapping:
            seen: dict[int, int] = {}
            for j in members:
                c = self.couplings[j]
                for part in c.parts:
                    if part.k in seen:
                        return seen[part.k], c.index, part.k
                    seen[part.k] = c.index
        return None


def layout(groups: tuple[Coupling, ...], paths: tuple[str, ...], shapes: tuple[torch.Size, ...],
           dtypes: tuple[torch.dtype, ...], what: str) -> Layout:
    """The layout of ``groups`` over leaves named ``paths`` (member shapes ``shapes``). A
    coupling none of whose leaves are here is left out (``where=`` did not select it); one
    with some of its leaves missing is a ``ValueError`` naming one (``what``: how the
    call names the missing leaf, e.g. a ``None`` gradient)."""
    find = _layout.__wrapped__ if torch.compiler.is_compiling() else _layout
    return find(groups, paths, shapes, dtypes, what)


@functools.lru_cache(maxsize=256)
def _layout(groups: tuple[Coupling, ...], paths: tuple[str, ...], shapes: tuple[torch.Size, ...],
            dtypes: tuple[torch.dtype, ...], what: str) -> Layout:
    at = {p: k for k, p in enumerate(paths)}
    resolved = []
    for index, c in enumerate(groups):
        here = [p for p in c.dims if p in at]
        if not here:
            continue
        if len(here) < len(c.dims):
            missing = next(p for p in c.dims if p not in at)
            raise ValueError(
                f"{what} {missing!r} is missing from the call, but the other leaves of groups[{index}] "
                f"({', '.join(repr(p) for p in here)}) are not: a coupled group's norm needs all of its "
                "leaves (give that leaf a zero gradient rather than None)")
        sizes = {p: shapes[at[p]][c.dims[p]] for p in c.dims}
        count = c.groups if c.groups is not None else min(sizes.values())
        parts = tuple(Part(at[p], c.dims[p] % len(shapes[at[p]]), sizes[p], sizes[p] // count) for p in c.dims)
        total = sum(shapes[part.k].numel() for part in parts)
        widest = 0
        for j, part in enumerate(parts):
            if torch.finfo(dtypes[part.k]).bits > torch.finfo(dtypes[parts[widest].k]).bits:
                widest = j
        resolved.append(Resolved(index, count, total // count, parts, widest))
    # couplings that share a leaf, joined into connected sets (each labelled by its first)
    label = list(range(len(resolved)))
    changed = True
    while changed:
        changed = False
        for i, a in enumerate(resolved):
            for j in range(i + 1, len(resolved)):
                shared = {p.k for p in a.parts} & {p.k for p in resolved[j].parts}
                if shared and label[i] != label[j]:
                    low = min(label[i], label[j])
                    label = [low if x in (label[i], label[j]) else x for x in label]
                    changed = True
    alone = tuple(j for j in range(len(resolved)) if label.count(label[j]) == 1)
    overlapping = tuple(tuple(j for j in range(len(resolved)) if label[j] == first)
                        for first in sorted(set(label)) if label.count(first) > 1)
    return Layout(tuple(resolved), alone, overlapping)


# ------------------------------------------------------------------------------ norms
def chunk_norms(w: torch.Tensor, part: Part, groups: int, batch: int, ord: float = 2) -> torch.Tensor:
    """``(*batch, G)``: the ``ord``-norm of each group's chunk of leaf ``w`` (a plain tensor
    also for a DTensor leaf: its global norms). Built from ``vector_norm`` only, whose
    gradient is 0 at a zero norm, so the value's gradient stays finite at zero groups."""
    d = batch + part.dim
    others = [j for j in range(batch, w.ndim) if j != d]
    x = torch.linalg.vector_norm(w, ord, dim=others) if others else w.abs()
    if _sharding.is_dtensor(x):
        # a norm across a sharded dim is a partial sum torch 2.13 mixes badly with plain
        # tensors: a pointwise op reduces it first; then the (G·width,) vector is gathered
        # (differentiably, also under torch.func's transforms)
        x = _sharding.to_plain(x.clamp_min(0.0))
    if part.width > 1:
        x = torch.linalg.vector_norm(x.unflatten(-1, (groups, part.width)), ord, dim=-1)
    return x


def dtype_of(c: Resolved, leaves: Leaves) -> torch.dtype:
    return leaves[c.parts[c.owner].k].dtype


def norms(c: Resolved, leaves: Leaves, batch: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The coupling's group norms ``(*batch, G)`` over all its leaves, in its dtype, and
    each part's chunk norms (for the prox in a metric)."""
    dtype = dtype_of(c, leaves)
    parts = [chunk_norms(leaves[p.k], p, c.groups, batch).to(dtype) for p in c.parts]
    if len(parts) == 1:
        return parts[0], parts
    return torch.linalg.vector_norm(torch.stack(parts, dim=-1), dim=-1), parts


def spread(f: torch.Tensor, leaf: torch.Tensor, part: Part, batch: int) -> torch.Tensor:
    """Per-group values ``f`` ``(*batch, G)`` as a tensor that broadcasts against ``leaf``
    (its dtype; a Replicate DTensor beside a DTensor leaf): each group's value on its chunk."""
    x = f if part.width == 1 else f.repeat_interleave(part.width, dim=-1)
    shape = [1] * (leaf.ndim - batch)
    shape[part.dim] = part.size
    x = x.reshape(*x.shape[:-1], *shape).to(leaf.dtype)
    return _sharding.replicate_like(x, leaf) if _sharding.is_dtensor(leaf) else x


def column(ops: Any, h: Any, k: int, like: torch.Tensor) -> Any:
    """Hyperparameter column ``h`` at leaf ``k`` as a scalar for the ``(*batch, G)`` tensor
    ``like``: a number, or a tensor in ``like``'s dtype shaped to broadcast per member."""
    v = h[k] if isinstance(h, (list, tuple)) else h
    if not isinstance(v, torch.Tensor):
        return v
    v = ops.scalar(v, like)
    if _sharding.is_dtensor(v):
        v = _sharding.to_plain(v)
    return v.to(like.dtype)


def nan_of(t: Any) -> Any:
    """0, or NaN where tensor ``t`` is NaN: added to a result whose arithmetic would hide a
    NaN hyperparameter behind a comparison."""
    return torch.where(torch.isnan(t), t, 0.0) if isinstance(t, torch.Tensor) else 0.0


# -------------------------------------------------------------------- prox in a metric
#: Newton iterations of the one-dimensional equation of :func:`metric_factors`: it starts
#: left of the root and converges monotonically (quadratically near it); one iteration is
#: exact when all steps are equal, and five reached 1e-12 in every trial with steps that
#: differ by up to 10⁶ (the tests check against a bisection)
NEWTON_STEPS = 8


def metric_factors(parts: list[torch.Tensor], steps: list[Any], t: Any) -> list[torch.Tensor]:
    r"""The prox of :math:`t\sum_g\lVert u_g\rVert` in the metric of a step per leaf, as
    one factor per (group, leaf): :math:`u_l = f_l\,v_l`.

    With :math:`a_l = \lVert v_{g,l}\rVert^2` (``parts``: chunk norms of each leaf) and
    :math:`c_l = s_l t`, the problem
    :math:`\min_u \sum_l \tfrac{1}{2s_l}\lVert u_l - v_l\rVert^2 + t\lVert u\rVert` has
    :math:`u_l = v_l\,r/(r + c_l)`, :math:`r = \lVert u\rVert`, where :math:`r > 0` solves
    :math:`\sum_l a_l/(r + c_l)^2 = 1` if :math:`\sum_l a_l/c_l^2 > 1`, and u = 0
    otherwise. Newton's method on :math:`\varphi(r)^{-1/2} = 1`, concave and increasing in
    r (as in Moré & Sorensen's trust-region secular equation), from the lower bound
    :math:`\max(\sqrt{A} - \max_l c_l, \max_l (\sqrt{a_l} - c_l), 0)`, rises monotonically
    to the root; for equal :math:`c_l` the first step lands on it.
    """
    a = torch.stack([p * p for p in parts], dim=-1)  # (*batch, G, L)
    c = torch.stack([_full(s * t, a) for s in steps], dim=-1)
    tiny = torch.finfo(a.dtype).tiny
    alive = (a / (c * c).clamp_min(tiny)).sum(-1) > 1
    r = torch.maximum((a.sum(-1).sqrt() - c.amax(-1)), (a.sqrt() - c).amax(-1)).clamp_min(0.0)
    for _ in range(NEWTON_STEPS):
        d = (r.unsqueeze(-1) + c).clamp_min(tiny)
        phi = (a / (d * d)).sum(-1)
        psi = (a / (d * d * d)).sum(-1).clamp_min(tiny)
        r = r + phi * (phi.sqrt() - 1) / psi
    r = r.unsqueeze(-1)
    f = torch.where(alive.unsqueeze(-1), r / (r + c).clamp_min(tiny), 0.0) + nan_of(c)
    return list(f.unbind(-1))


def _full(x: Any, a: torch.Tensor) -> torch.Tensor:
    """Number or tensor ``x`` broadcast to ``a``'s shape without its last dim, in its dtype."""
    x = x.to(a.dtype) if isinstance(x, torch.Tensor) else a.new_tensor(x)
    return x.expand(a.shape[:-1])
