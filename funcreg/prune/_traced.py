"""Couplings that remember the example inputs they were found with, so that
``fr.prune.shrink(model, params, couplings)`` needs none of its own."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import optree
import torch

from funcreg.coupling import Coupling


class Traced(Coupling):
    """A :class:`fr.Coupling` as :func:`fr.prune.couplings` returns it: equal to (and
    hashing like) the plain coupling with its dims and G, and holding privately a copy of
    the example inputs the model was traced with."""

    __slots__ = ("_inputs",)

    def __init__(self, coupling: Coupling, inputs: tuple[Any, ...]) -> None:
        super().__init__(coupling.dims, groups=coupling.groups)
        self._inputs = inputs


def remember(couplings: list[Coupling], example_inputs: tuple[Any, ...]) -> list[Coupling]:
    """``couplings`` as :class:`Traced`, sharing one detached copy of ``example_inputs`` (a
    later in-place change of the caller's tensors does not reach it)."""
    copy: Any = optree.tree_map(lambda x: x.detach().clone() if isinstance(x, torch.Tensor) else x,
                                # optree's stubs want one leaf type; example inputs mix tensors and numbers
                                example_inputs, none_is_leaf=True, namespace="torch")  # type: ignore[arg-type]
    return [Traced(c, copy) for c in couplings]


def inputs_of(couplings: Any) -> tuple[Any, ...] | None:
    """The example inputs the first traced coupling among ``couplings`` remembers, if any."""
    items = [couplings] if isinstance(couplings, (Coupling, Mapping)) else couplings
    if not isinstance(items, (list, tuple)):
        return None
    return next((c._inputs for c in items if isinstance(c, Traced)), None)
