"""L2-SP: decay toward an anchor (the starting point of fine-tuning), not toward zero."""

from __future__ import annotations

from typing import Any

import torch

from funcreg import _hyper
from funcreg._ops import Column, Ops, Tensors
from funcreg._tree import Flat, check_pair, leaves_like
from funcreg.penalties._base import Penalty


class L2SP(Penalty):
    r"""L2-SP penalty :math:`\lambda \sum_i (w_i - w^0_i)^2` toward ``anchor`` :math:`w^0`.

    * gradient :math:`2\lambda (w - w^0)` (the same factor of 2 as :data:`fr.l2 <funcreg.l2>`);
    * prox, with :math:`c = 2\lambda\,\mathrm{step}`:
      :math:`(w + c\,w^0) / (1 + c)`, a step of :math:`c/(1+c)` from :math:`w` toward
      :math:`w^0`.

    ``anchor`` (keyword, required) is a pytree like params, usually a detached copy of
    the pretrained weights; only its selected leaves are read.

    >>> import torch, funcreg as fr
    >>> w, w0 = {"w": torch.tensor([3.0])}, {"w": torch.tensor([1.0])}
    >>> fr.l2_sp(w, 0.5, anchor=w0)
    tensor(2.)
    >>> fr.l2_sp.prox(w, 0.5, 1.0, anchor=w0)["w"]
    tensor([2.])
    """

    name = "l2_sp"
    without = {"lambda_max": "its prox moves weights toward the anchor, never to zero"}
    options = {"anchor": Penalty.REQUIRED}

    def _columns(self, flat: Flat, sel: list[int], options: dict[str, Any]) -> tuple[list[Any], ...]:
        anchors = leaves_like(flat, options["anchor"], "anchor")
        for i in sel:
            check_pair(flat.paths[i], flat.leaves[i], anchors[i], "anchor")
        return ([anchors[i] for i in sel],)

    def _value(self, w: torch.Tensor, lam: _hyper.Hyper, w0: torch.Tensor) -> torch.Tensor:
        if isinstance(lam, torch.Tensor) and lam.ndim:
            return (lam * (w - w0).square()).sum()
        return lam * (w - w0).square().sum()

    def _grad(self, ops: Ops, ws: Tensors, lam: Column, w0: Column) -> Tensors:
        return ops.mul_(ops.sub(ws, w0), _hyper.combine(lambda a: 2 * a, lam))

    def _prox(self, ops: Ops, ws: Tensors, lam: Column, step: Column, w0: Column) -> Tensors:
        c = _hyper.combine(lambda a, s: 2 * a * s / (1 + 2 * a * s), lam, step)
        return ops.lerp_(ws, w0, c)


l2_sp = L2SP()
