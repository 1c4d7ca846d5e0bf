"""What the matrix penalties share: each leaf seen as a matrix, ``W.reshape(W.shape[0], -1)``."""

from __future__ import annotations

import math
from typing import Any

import torch

from funcreg import _sharding
from funcreg._tree import Flat


def check_matrices(name: str, flat: Flat, selected: list[int]) -> None:
    """Every selected leaf must have at least 2 dims: a 0-d or 1-d leaf is no matrix."""
    for i in selected:
        if flat.leaves[i].ndim < 2:
            raise ValueError(
                f"{name} acts on matrices, but leaf {flat.paths[i]!r} has shape "
                f"{tuple(flat.leaves[i].shape)}; select the weights only "
                "(where=fr.select.weights)"
            )


def as_matrix(w: torch.Tensor, batch: int = 0) -> torch.Tensor:
    """A weight as the matrix the penalty sees: one row per output unit or filter (the
    column count spelled out: ``-1`` is ambiguous for a leaf with no rows), after
    ``batch`` leading ensemble dims."""
    return w.reshape(*w.shape[:batch + 1], math.prod(w.shape[batch + 1:]))


def identity_like(gram: torch.Tensor) -> torch.Tensor:
    """The identity matrix the size of ``gram`` (a Replicate DTensor beside a DTensor)."""
    eye = torch.eye(gram.shape[-1], dtype=gram.dtype, device=gram.device)
    return _sharding.replicate_like(eye, gram) if _sharding.is_dtensor(gram) else eye


def by_shape(ws: list[torch.Tensor]) -> dict[tuple[Any, ...], list[int]]:
    """Leaves that can share one batched linear-algebra call: same shape, dtype, device."""
    groups: dict[tuple[Any, ...], list[int]] = {}
    for k, w in enumerate(ws):
        groups.setdefault((tuple(w.shape), w.dtype, w.device), []).append(k)
    return groups
