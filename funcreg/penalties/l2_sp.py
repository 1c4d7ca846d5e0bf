"""L2-SP: decay toward an anchor (the starting point of fine-tuning), not toward zero."""

from __future__ import annotations

from typing import Any

import torch

from funcreg._ops import Column, Ops, Tensors, derive
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
    one_pass = ("prox",)
    without = {"lambda_max": "its prox moves weights toward the anchor, never to zero"}
    options = {"anchor": Penalty.REQUIRED}
    trees = ("anchor",)

    def _value(self, w: torch.Tensor, *, lam: Any, anchor: torch.Tensor) -> torch.Tensor:
        if isinstance(lam, torch.Tensor) and lam.ndim:
            return (lam * (w - anchor).square()).sum()
        return lam * (w - anchor).square().sum()

    def _grad(self, ops: Ops, *, params: Tensors, lam: Column, anchor: Tensors) -> Tensors:
        return ops.mul_(ops.sub(params, anchor), derive(lambda a: 2 * a, lam))

    def _prox(self, ops: Ops, *, params: Tensors, lam: Column, step: Column, anchor: Tensors) -> Tensors:
        return ops.lerp_(params, anchor, derive(lambda a, s: 2 * a * s / (1 + 2 * a * s), lam, step))


l2_sp = L2SP()
