"""L2 (ridge): value, gradient and shrinkage prox, with the factor of 2 spelled out."""

from __future__ import annotations

from typing import Any

import torch

from funcreg._ops import Column, Ops, Tensors, derive
from funcreg.penalties._base import Penalty


class L2(Penalty):
    r"""L2 penalty :math:`\lambda \sum_i w_i^2` (no ½).

    * gradient :math:`2\lambda w`;
    * prox :math:`w / (1 + 2\lambda\,\mathrm{step})`.

    **The factor of 2.** Adding ``fr.l2(params, lam)`` to a loss is exactly
    ``torch.optim.SGD(weight_decay=2 * lam)``: torch.optim's ``weight_decay`` adds
    ``wd * w`` to the gradient, the gradient of :math:`\tfrac{wd}{2}\sum w^2`.

    >>> import torch, funcreg as fr
    >>> w = {"w": torch.tensor([1.0, -2.0])}
    >>> fr.l2(w, 0.5)
    tensor(2.5000)
    >>> fr.l2.grad(w, 0.5)["w"]
    tensor([ 1., -2.])
    >>> fr.l2.prox(w, 0.5, 1.0)["w"]
    tensor([ 0.5000, -1.0000])
    """

    name = "l2"
    one_pass = ("add_grad", "prox")
    without = {"lambda_max": "its prox w / (1 + 2·λ·step) shrinks but never zeroes a weight"}

    def _value(self, w: torch.Tensor, *, lam: Any) -> torch.Tensor:
        if isinstance(lam, torch.Tensor) and lam.ndim:
            return (lam * w.square()).sum()
        return lam * w.square().sum()

    def _grad(self, ops: Ops, *, params: Tensors, lam: Column) -> Tensors:
        return ops.mul(params, derive(lambda a: 2 * a, lam))

    def _add_grad(self, ops: Ops, *, grads: Tensors, params: Tensors, lam: Column) -> Tensors:
        return ops.add_(grads, params, derive(lambda a: 2 * a, lam))

    def _prox(self, ops: Ops, *, params: Tensors, lam: Column, step: Column) -> Tensors:
        return ops.mul_(params, derive(lambda a, s: 1 / (1 + 2 * a * s), lam, step))


l2 = L2()
