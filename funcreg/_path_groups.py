"""What a penalty family prunes, as groups: the norms that a path reports and plots.

A separable family (L1, elastic net, MCP, SCAD) prunes single weights; a grouped one
(group lasso, sparse group lasso) prunes slices along ``dim`` or, with ``groups=``,
the units of each coupling. A group is *kept* while its norm is not exactly 0.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

import funcreg
from funcreg._groups import group_norms


class Grouping:
    """The groups of the selected leaves under one family's options.

    ``norms(tree)`` maps a tree whose leaves have ``lead`` leading member dims to a
    ``(*members, G)`` tensor of group norms; ``labels`` names the G groups. The groups are
    the units of ``couplings`` (each coupling's ``{path: dim}`` and its number of groups)
    when the family was given ``groups=``; otherwise single weights when ``elementwise``
    (a family without ``dim``), else each selected leaf's slices along ``dim`` (the whole
    leaf for ``None``).
    """

    def __init__(self, penalty: Any, options: dict[str, Any], params: Any, where: Any):
        self.couplings: list[tuple[Mapping[str, int], int]] | None = None
        if options.get("groups") is not None:  # fr.Coupling's, or {path: dim} dicts
            couplings = funcreg.Coupling.normalize(options["groups"])
            sizes = [c.validate(params) for c in couplings]
            self.couplings = [(c.dims, G) for c, G in zip(couplings, sizes)]
            self.paths = sorted({p for c in couplings for p in c.dims})
        else:
            self.paths = list(funcreg.sparsity(params, where=where).leaves)
        self.elementwise = "dim" not in penalty.options
        self.dim: int | None = None if self.elementwise else options.get("dim", penalty.options["dim"])
        self.labels = self._labels(params)

    def _per_leaf(self, w: torch.Tensor, lead: int) -> torch.Tensor:
        """Norms of one leaf's groups, (*members, groups), as the families group it."""
        norms = w.abs() if self.elementwise else group_norms(w, self.dim, batch=lead)[0]
        return norms.reshape(*w.shape[:lead], -1)

    def _coupled(self, couplings: list[tuple[Mapping[str, int], int]], tree: dict[str, torch.Tensor],
                 lead: int) -> list[torch.Tensor]:
        out = []
        for dims, G in couplings:
            sq: torch.Tensor | None = None
            for p, d in dims.items():
                w = tree[p]
                w = w.movedim(lead + d % (w.ndim - lead), lead)
                w = w.reshape(*w.shape[:lead], G, -1)
                sq = (w * w).sum(-1) if sq is None else sq + (w * w).sum(-1)
            assert sq is not None, "a Coupling names at least one leaf"
            out.append(torch.sqrt(sq))
        return out

    def norms(self, tree: Any, lead: int = 1) -> torch.Tensor:
        """Group norms of every member: ``(*members, G)``, float64 on the leaves' device."""
        if self.couplings is not None:
            parts = self._coupled(self.couplings, tree, lead)
        else:
            parts = [self._per_leaf(tree[p].detach(), lead) for p in self.paths]
        return torch.cat([x.double() for x in parts], dim=-1)

    def _labels(self, params: Any) -> list[str]:
        if self.couplings is not None:
            return [f"unit {u} of group set {c}" for c, x in
                    enumerate(self._coupled(self.couplings, {p: v.unsqueeze(0) for p, v in params.items()}, 1))
                    for u in range(x.shape[-1])]
        labels = []
        for p in self.paths:
            count = self._per_leaf(params[p].detach().unsqueeze(0), 1).shape[-1]
            labels += [f"{p}[{j}]" for j in range(count)]
        return labels

    @property
    def unit(self) -> str:
        """What one group is, in words, for tables and axes."""
        if self.couplings is not None:
            return "units"
        if self.elementwise:
            return "weights"
        return "leaves" if self.dim is None else f"slices along dim {self.dim}"
