"""What a sparse model kept: exact zeros per leaf, and the all-zero slices along a dim."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from funcreg import _sharding
from funcreg._selection import Where, selection
from funcreg._tree import flatten, require_tensors


@dataclass(frozen=True)
class LeafSparsity:
    """One leaf: its exact zeros and, when counted, its all-zero slices along ``dim``."""

    path: str
    shape: tuple[int, ...]
    numel: int
    zeros: int
    #: slices along ``dim`` (``None`` when no dim was given or the leaf has no such dim)
    groups: int | None
    zero_groups: int | None
    #: CPU bool tensor of shape ``(groups,)``: True where the slice is all zero
    zero_group_mask: torch.Tensor | None

    @property
    def fraction(self) -> float:
        return self.zeros / self.numel if self.numel else 0.0


@dataclass(frozen=True)
class Sparsity:
    """The selected leaves' :class:`LeafSparsity`, by path, with totals; ``str()`` is a table."""

    leaves: dict[str, LeafSparsity]
    dim: int | None

    @property
    def numel(self) -> int:
        return sum(s.numel for s in self.leaves.values())

    @property
    def zeros(self) -> int:
        return sum(s.zeros for s in self.leaves.values())

    @property
    def fraction(self) -> float:
        return self.zeros / self.numel if self.numel else 0.0

    @property
    def groups(self) -> int | None:
        counted = [s.groups for s in self.leaves.values() if s.groups is not None]
        return sum(counted) if counted else None

    @property
    def zero_groups(self) -> int | None:
        counted = [s.zero_groups for s in self.leaves.values() if s.zero_groups is not None]
        return sum(counted) if counted else None

    def __str__(self) -> str:
        rows: list[tuple[str, ...]] = [("path", "shape", "exact zeros")]
        if self.dim is not None:
            rows[0] += (f"zero slices along dim {self.dim}",)

        def cells(path: str, shape: str, zeros: int, numel: int, zg: int | None, g: int | None) -> tuple:
            row = (path, shape, f"{zeros}/{numel} ({zeros / numel if numel else 0.0:.1%})")
            return row + ((f"{zg}/{g}" if g is not None else "-",) if self.dim is not None else ())

        for s in self.leaves.values():
            rows.append(cells(s.path, str(s.shape), s.zeros, s.numel, s.zero_groups, s.groups))
        rows.append(cells("total", "", self.zeros, self.numel, self.zero_groups, self.groups))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def sparsity(params: Any, *, where: Where = None, dim: int | None = None) -> Sparsity:
    """Exact zeros per selected leaf of ``params`` and, with ``dim``, the slices along
    ``dim`` that are entirely zero (a group lasso's groups: with ``dim=0`` pruned output
    units or filters, with ``dim=1`` pruned inputs of a linear layer), with totals.

    ``str()`` of the result is a table, like :func:`fr.select.describe`; its attributes
    hold the same numbers for code. It reads values on the host, so call it outside
    ``vmap`` (for an ensemble, on one member: ``{k: v[i] for k, v in params.items()}``).

    Args:
        params: the parameter tree.
        where: the leaves to report (all by default), as for the penalties.
        dim: also count the slices along this dim that are entirely zero.

    Returns:
        A ``Sparsity`` report: ``zeros``, ``numel``, ``fraction``, ``zero_groups``,
        ``groups``, and ``leaves`` (one ``LeafSparsity`` per path); ``str()`` of it is
        the table below.

    Raises:
        TypeError: ``dim`` not an int or ``None``; a leaf that is not a tensor.
        ValueError: a ``where`` that does not match params.

    >>> import torch, funcreg as fr
    >>> w = {"fc.weight": torch.tensor([[0.0, 1.0], [0.0, 0.0]]), "fc.bias": torch.zeros(2)}
    >>> report = fr.sparsity(w, dim=0)
    >>> report.zeros, report.zero_groups
    (5, 3)
    >>> print(report)
    path       shape   exact zeros   zero slices along dim 0
    fc.weight  (2, 2)  3/4 (75.0%)   1/2
    fc.bias    (2,)    2/2 (100.0%)  2/2
    total              5/6 (83.3%)   3/4
    """
    if dim is not None and (isinstance(dim, bool) or not isinstance(dim, int)):
        raise TypeError(f"dim must be an int or None, not {type(dim).__name__}")
    flat = flatten(params)
    require_tensors(flat)
    mask = selection(flat, where)
    leaves = {}
    for path, w, chosen in zip(flat.paths, flat.leaves, mask):
        if not chosen:
            continue
        zero = w == 0
        groups = zero_groups = group_mask = None
        if dim is not None and -w.ndim <= dim < w.ndim:
            d = dim % w.ndim
            others = [k for k in range(w.ndim) if k != d]
            slices = zero.all(dim=others) if others else zero  # 1-d: each element a slice
            group_mask = _host(slices).to(torch.bool)
            groups, zero_groups = w.shape[d], int(group_mask.sum())
        leaves[path] = LeafSparsity(path, tuple(w.shape), w.numel(), int(_host(zero.sum())),
                                    groups, zero_groups, group_mask)
    return Sparsity(leaves, dim)


def _host(x: torch.Tensor) -> torch.Tensor:
    """``x`` on the CPU as a plain tensor (a DTensor's global value)."""
    return _sharding.gathered(x).detach().cpu()
