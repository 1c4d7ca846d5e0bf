"""What a penalty family prunes, as groups: the norms that a path reports and plots.

A separable family (L1, elastic net, MCP, SCAD) prunes single weights; a grouped one
(group lasso, sparse group lasso) prunes slices along ``dim`` or, with ``groups=``,
the units of each coupling. A group is *kept* while its norm is not exactly 0.
"""

from __future__ import annotations

from typing import Any

import torch

import funcreg


class Grouping:
    """The groups of the selected leaves under one family's options.

    ``norms(tree)`` maps a tree whose leaves have ``lead`` leading member dims to a
    ``(*members, G)`` tensor of group norms; ``labels`` names the G groups.
    """

    def __init__(self, penalty: Any, options: dict[str, Any], params: Any, where: Any):
        self.couplings = None
        if options.get("groups") is not None:  # fr.Coupling's, or {path: dim} dicts
            couplings = funcreg.Coupling.normalize(options["groups"])
            self.couplings = [c.dims for c in couplings], [c.validate(params) for c in couplings]
            self.paths = sorted({p for c in couplings for p in c.dims})
        else:
            self.paths = list(funcreg.sparsity(params, where=where).leaves)
        self.dim = options.get("dim", penalty.options.get("dim", "elements")) \
            if "dim" in penalty.options else "elements"
        self.labels = self._labels(params)

    def _per_leaf(self, w: torch.Tensor, lead: int) -> torch.Tensor:
        """Norms of one leaf's groups, (*members, groups)."""
        if self.dim == "elements":
            return w.abs().flatten(lead)
        if self.dim is None:
            return torch.linalg.vector_norm(w.flatten(lead), dim=-1, keepdim=True)
        d = lead + self.dim % (w.ndim - lead)
        others = [k for k in range(lead, w.ndim) if k != d]
        return torch.linalg.vector_norm(w, dim=others) if others else w.abs()

    def _coupled(self, tree: dict[str, torch.Tensor], lead: int) -> list[torch.Tensor]:
        out = []
        for dims, G in zip(*self.couplings):
            sq = 0
            for p, d in dims.items():
                w = tree[p]
                d = lead + d % (w.ndim - lead)
                w = w.movedim(d, lead)
                w = w.reshape(*w.shape[:lead], G, -1)
                sq = sq + (w * w).sum(-1)
            out.append(torch.sqrt(sq))
        return out

    def norms(self, tree: Any, lead: int = 1) -> torch.Tensor:
        """Group norms of every member: ``(*members, G)``, float64 on the leaves' device."""
        if self.couplings is not None:
            parts = self._coupled(tree, lead)
        else:
            parts = [self._per_leaf(tree[p].detach(), lead) for p in self.paths]
        return torch.cat([x.double() for x in parts], dim=-1)

    def _labels(self, params: Any) -> list[str]:
        if self.couplings is not None:
            return [f"unit {u} of group set {c}" for c, x in
                    enumerate(self._coupled({p: v.unsqueeze(0) for p, v in params.items()}, 1))
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
        if self.dim == "elements":
            return "weights"
        return "leaves" if self.dim is None else f"slices along dim {self.dim}"
