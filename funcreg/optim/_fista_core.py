"""FISTA's iteration on flat parameter vectors, the arithmetic that ``fr.fista.step`` (one
member, a pytree) and ``fr.path``'s training loop (every member of a block at once) share.

A member's leaves are laid end to end in one vector (:class:`Layout`), so that an
iteration costs a few tensor ops whatever the number of leaves; leading dims of the
vectors are members (none for ``fr.fista.step``; ``(λ,)`` or ``(fold, λ)`` for
``fr.path``). The metric is diagonal with one step per *block* of leaves (each leaf its
own block, unless the penalty's groups span leaves).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch

#: η is capped at SAFETY / (measured curvature), and grows by at most ``grow`` per step
SAFETY = 0.9
#: a secant's curvature is used where ⟨s, r⟩ stands this many roundings above 0
SECANT_NOISE = 1024
#: the sufficient-decrease test forgives this many roundings of |f(z)|
SLACK = 8


class Layout:
    """Where each leaf of a member lives in its flat vector, and the block of each leaf.

    ``blocks[i]`` is leaf i's block (default: its own); the flat vector's dtype is the
    widest floating dtype of the leaves, at least float32.
    """

    def __init__(self, leaves: Sequence[torch.Tensor], blocks: Sequence[int] | None = None):
        self.shapes = [tuple(x.shape) for x in leaves]
        self.sizes = [x.numel() for x in leaves]
        self.dtypes = [x.dtype for x in leaves]
        dtype = torch.float32
        for dt in self.dtypes:
            dtype = torch.promote_types(dtype, dt)
        self.dtype = dtype
        self.blocks = list(range(len(leaves))) if blocks is None else list(blocks)
        self.n_blocks = max(self.blocks) + 1
        device = leaves[0].device
        self.seg = torch.repeat_interleave(torch.tensor(self.blocks, dtype=torch.long),
                                           torch.tensor(self.sizes, dtype=torch.long)).to(device)
        self.leaf_block = torch.tensor(self.blocks, dtype=torch.long, device=device)
        self.first = torch.tensor([self.blocks.index(b) for b in range(self.n_blocks)],
                                  dtype=torch.long, device=device)

    def flatten(self, leaves: Sequence[torch.Tensor], lead: int = 0) -> torch.Tensor:
        """``(*members, P)``: the leaves (each with ``lead`` leading member dims) end to end."""
        return torch.cat([x.reshape((*x.shape[:lead], -1)).to(self.dtype) for x in leaves], -1)

    def unflatten(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """The leaves of ``flat`` (views where the dtype allows), in their own dtypes."""
        lead = flat.shape[:-1]
        return [part.reshape((*lead, *shape)).to(dt)
                for part, shape, dt in zip(flat.split(self.sizes, -1), self.shapes, self.dtypes)]

    def block_sums(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., P)`` → ``(..., blocks)``: the sum of each block's elements."""
        return x.new_zeros(*x.shape[:-1], self.n_blocks).index_add(-1, self.seg, x)

    def per_leaf(self, v: torch.Tensor) -> torch.Tensor:
        """``(..., blocks)`` → ``(..., leaves)``: each leaf its block's value."""
        return v.index_select(-1, self.leaf_block)

    def per_element(self, v: torch.Tensor) -> torch.Tensor:
        """``(..., blocks)`` → ``(..., P)``: each element its block's value."""
        return v.index_select(-1, self.seg)


class Iterate(NamedTuple):
    """FISTA's state for members with leading dims ``lead``, on flat vectors."""

    w: torch.Tensor  #: (*lead, P) the last accepted point
    z: torch.Tensor  #: (*lead, P) the extrapolated point, where the next gradient is taken
    t: torch.Tensor  #: (*lead,) the momentum count
    eta: torch.Tensor  #: (*lead, blocks) the step of each block
    curv: torch.Tensor  #: (*lead, blocks) each block's last measured curvature (0: none yet)
    z_prev: torch.Tensor  #: (*lead, P) where the previous gradient was taken
    g_prev: torch.Tensor  #: (*lead, P) that gradient (0 before the first step)
    ref: torch.Tensor  #: (*lead,) max|G| at the start, what convergence is relative to (NaN: not yet)


def start(w: torch.Tensor, eta: torch.Tensor, curv: torch.Tensor, layout: Layout,
          ref: torch.Tensor | None = None) -> Iterate:
    """The iterate at ``w`` ``(*lead, P)`` with first trial steps ``eta`` and curvatures
    ``curv`` (0: not measured) per block, each broadcast to ``(*lead, blocks)``; ``ref``
    is the size of the mapping that convergence is relative to (default: the first step's)."""
    lead = w.shape[:-1]
    eta = eta.to(layout.dtype).expand(*lead, layout.n_blocks).clone()
    curv = curv.to(layout.dtype).expand(*lead, layout.n_blocks).clone()
    ref = torch.full(lead, float("nan"), dtype=layout.dtype, device=w.device) if ref is None else ref
    return Iterate(w=w, z=w.clone(), t=torch.ones(lead, dtype=layout.dtype, device=w.device), eta=eta,
                   curv=curv, z_prev=w.clone(), g_prev=torch.zeros_like(w), ref=ref.to(layout.dtype))


def mapping(w: torch.Tensor, eta: torch.Tensor, layout: Layout,
            value_and_grad: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
            prox: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """max|G| at ``w``, G = (w − prox(w − η∇f(w)))/η with steps ``eta`` ``(*lead, blocks)``:
    what the first step of a member started at ``w`` measures."""
    _, g = value_and_grad(w)
    eta_e = layout.per_element(eta).to(g.dtype)
    return ((w - prox(w - eta_e * g, eta)).abs() / eta_e).amax(-1).to(eta.dtype)


def iterate(
    it: Iterate,
    layout: Layout,
    value_and_grad: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    value: Callable[[torch.Tensor], torch.Tensor],
    prox: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    *,
    rtol: float,
    atol: float,
    grow: float,
    active: torch.Tensor | None = None,
) -> tuple[Iterate, torch.Tensor]:
    """One FISTA trial for every member (see ``fr.fista`` for the math). ``value_and_grad``
    maps z ``(*lead, P)`` to f(z) ``(*lead,)`` and ∇f(z); ``value`` maps u to f(u);
    ``prox(v, eta)`` is the penalty's prox of v with each block's step in ``eta``.
    Members where ``active`` is False keep their whole state. Returns the next iterate and
    whether each member's accepted step passed the convergence test."""
    fz, g = value_and_grad(it.z)
    dtype = it.eta.dtype
    fz = fz.detach().to(dtype)
    eps = torch.finfo(g.dtype).eps
    # each block's curvature along the last move of z (a secant), where it stands above rounding
    s, r = it.z - it.z_prev, g - it.g_prev
    sr, ss, gg, pp = layout.block_sums(torch.stack([s * r, s * s, g * g, it.g_prev * it.g_prev])).unbind(0)
    measured = (ss > 0) & (sr > SECANT_NOISE * eps * ss.sqrt() * (gg.sqrt() + pp.sqrt()))
    curv = torch.where(measured, sr / torch.where(measured, ss, 1.0), it.curv).to(dtype)
    cap = SAFETY / torch.where(curv > 0, curv, 1.0)
    eta = torch.where(curv > 0, torch.minimum(it.eta, cap), it.eta)
    eta_e = layout.per_element(eta).to(g.dtype)
    u = prox(it.z - eta_e * g, eta)
    fu = value(u).detach().to(dtype)
    d = u - it.z
    quad = ((d * d / eta_e).sum(-1) / 2).to(dtype)  # ½‖u − z‖² in the metric 1/η
    excess = fu - fz - (g * d).sum(-1).to(dtype)  # f(u) above its linear model
    slack = SLACK * eps * fz.abs()
    accept = excess <= quad + slack
    # the curvature along the trial, relative to the metric's, is trusted above rounding only
    trusted = (quad > 0) & (excess > slack)
    ratio = excess / torch.where(trusted, quad, 1.0)
    factor = torch.where(accept, grow, 0.5).to(dtype)
    factor = torch.where(trusted, torch.minimum(factor, SAFETY / torch.where(trusted, ratio, 1.0)), factor)
    eta_next = eta * factor.unsqueeze(-1)
    step = u - it.w
    restart = (d * step / eta_e).sum(-1) < 0  # ⟨z − u, u − w⟩ > 0 in the metric: momentum uphill
    t = torch.where(restart, torch.ones_like(it.t), it.t)
    t_next = (1 + torch.sqrt(1 + 4 * t * t)) / 2
    beta = ((t - 1) / t_next).to(u.dtype).unsqueeze(-1)
    z_next = u + beta * step
    # stationarity: the prox-gradient mapping G = (z − u)/η, relative to its size at the start
    mapping = (d.abs() / eta_e).amax(-1).to(dtype)
    ref = torch.where(torch.isnan(it.ref), mapping, it.ref)
    small = mapping <= atol + rtol * ref
    take = accept if active is None else accept & active
    keep = None if active is None else active.unsqueeze(-1)

    def kept(new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
        return new if keep is None else torch.where(keep, new, old)

    nxt = Iterate(
        w=torch.where(take.unsqueeze(-1), u, it.w),
        z=torch.where(take.unsqueeze(-1), z_next, it.z),
        t=torch.where(take, t_next, it.t),
        eta=kept(eta_next, it.eta),
        curv=kept(curv, it.curv),
        z_prev=kept(it.z, it.z_prev),
        g_prev=kept(g.detach(), it.g_prev),
        ref=ref if active is None else torch.where(active, ref, it.ref),
    )
    return nxt, take & small
