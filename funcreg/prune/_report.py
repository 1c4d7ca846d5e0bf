"""What ``fr.prune.shrink`` removed and kept, per coupling, as data and as a table."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from funcreg.coupling import Coupling


@dataclass(frozen=True)
class CouplingShrink:
    """One coupling: its groups, those removed, and the zero groups kept with the reason.

    Attributes:
        label: the coupling's name in the table (its first leaf and dim).
        coupling: the :class:`fr.Coupling` itself.
        groups: G, its number of groups.
        removed: the groups removed from the model (all zero).
        kept_zero: ``(group, why)`` for each zero group that could not be removed exactly.
    """

    label: str
    coupling: Coupling
    groups: int
    removed: tuple[int, ...]
    #: (group, why it was kept) for each group that was zero but could not be removed exactly
    kept_zero: tuple[tuple[int, str], ...]

    @property
    def live(self) -> int:
        """Groups kept because they are not zero."""
        return self.groups - len(self.removed) - len(self.kept_zero)


@dataclass(frozen=True)
class ShrinkReport:
    """Per coupling what :func:`fr.prune.shrink` did, and the parameter counts; ``str()`` is
    a table, as :func:`fr.sparsity`'s is.

    Attributes:
        couplings: one :class:`CouplingShrink` per coupling.
        params_before: the model's parameter count before the shrink.
        params_after: and after it.
    """

    couplings: tuple[CouplingShrink, ...]
    params_before: int
    params_after: int

    @property
    def removed(self) -> int:
        return sum(len(c.removed) for c in self.couplings)

    @property
    def kept_zero(self) -> int:
        return sum(len(c.kept_zero) for c in self.couplings)

    def __str__(self) -> str:
        rows = [("coupling", "groups", "removed", "zero, kept", "live")]
        for c in self.couplings:
            rows.append((c.label, str(c.groups), str(len(c.removed)), str(len(c.kept_zero)), str(c.live)))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]
        share = self.params_after / self.params_before if self.params_before else 1.0
        lines.append(f"parameters: {self.params_before} -> {self.params_after} ({share:.1%})")
        for c in self.couplings:
            for group, why in c.kept_zero:
                lines.append(f"kept zero group {group} of {c.label}: {why}")
        return "\n".join(lines)


class Shrunk(tuple):
    """``(smaller_model, smaller_params)``, as a pair that unpacks, with ``.report``.

    Args:
        model: the smaller copy of the model.
        params: its parameters and buffers, by path.
        report: the :class:`ShrinkReport`.
    """

    report: ShrinkReport

    def __new__(cls, model: nn.Module, params: dict[str, Any], report: ShrinkReport) -> Shrunk:
        self = super().__new__(cls, (model, params))
        self.report = report
        return self

    @property
    def model(self) -> nn.Module:
        return self[0]

    @property
    def params(self) -> dict[str, Any]:
        return self[1]
