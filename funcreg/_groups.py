"""The groups of a leaf: its slices along ``dim`` (the group lasso's, the sparse group
lasso's, ``fr.project.max_norm``'s), their norms, and the check of ``dim``."""

from __future__ import annotations

import math
from typing import Any

import torch

from funcreg import _sharding
from funcreg._tree import Flat


def check_dim(what: str, dim: Any, flat: Flat, sel: list[int]) -> None:
    """``dim`` must be None or an int in range for every selected leaf (0-d leaves are one
    group whatever ``dim`` says)."""
    if dim is not None and (isinstance(dim, bool) or not isinstance(dim, int)):
        raise TypeError(f"{what} dim must be an int or None, not {type(dim).__name__}")
    for i in sel:
        leaf = flat.leaves[i]
        if dim is not None and leaf.ndim and not -leaf.ndim <= dim < leaf.ndim:
            raise ValueError(
                f"{what} dim={dim} is out of range for leaf {flat.paths[i]!r} of shape "
                f"{tuple(leaf.shape)}"
            )


def group_norms(w: torch.Tensor, dim: int | None, batch: int = 0) -> tuple[torch.Tensor, int]:
    """The Euclidean norm of each group (keepdim, so it broadcasts over ``w``) and the
    group size. A 0-d leaf, or ``dim=None``, is one group. ``batch`` leading dims of ``w``
    are ensemble members (the stacked path), each with its own groups."""
    # The clamp is a no-op on values but not on DTensors: a norm across the sharded dim
    # is a _NormPartial, which torch 2.13 sums wrong and mixes badly with plain tensors;
    # any pointwise op makes it reduce first (one all-reduce), as the math needs anyway.
    member = list(range(batch, w.ndim))
    if batch and not member:  # a 0-d leaf, per member: one group of one element
        return w.abs(), 1
    if dim is None or w.ndim == batch:
        size = math.prod(w.shape[batch:])
        if not batch:
            return torch.linalg.vector_norm(w).clamp_min(0.0), size
        return torch.linalg.vector_norm(w, dim=member, keepdim=True).clamp_min(0.0), size
    others = [d for d in member if d != batch + dim % (w.ndim - batch)]
    if not others:  # a 1-d leaf grouped along its only dim: each element is a group
        return w.abs(), 1
    norms = torch.linalg.vector_norm(w, dim=others, keepdim=True).clamp_min(0.0)
    if norms.shape == w.shape:
        # every other dim has size 1 (FSDP2's Linear(n, 1) weight): the norms come back
        # replicated, and a replicated factor of the leaf's own shape makes DTensor choose
        # a replicated product, or refuse an in-place one; on the leaf's placements they
        # are a local slice, no communication
        norms = _sharding.place_like(norms, w)
    return norms, math.prod([w.shape[d] for d in others])


def inverse_norms(norms: torch.Tensor) -> torch.Tensor:
    """``1 / ‖w_g‖`` per group, and 0 for a zero group: the group lasso's gradient
    ``w_g / ‖w_g‖`` scale, with the minimal-norm subgradient (0) at a zero group."""
    return torch.where(norms > 0, norms.reciprocal(), 0.0)


def block_shrink(norms: torch.Tensor, t: Any) -> torch.Tensor:
    """The block soft threshold's factor ``max(1 - t / ‖w_g‖, 0)`` per group: exactly 0
    where ``‖w_g‖ <= t``, a zero group included (no 0/0)."""
    return (norms - t).clamp_min(0.0) / torch.where(norms > 0, norms, 1.0)
