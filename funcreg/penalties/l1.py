"""L1 (lasso): value, subgradient, and soft-thresholding prox."""

from __future__ import annotations

from typing import Any

import torch

from funcreg._ops import Column, Ops, Tensors, derive
from funcreg.penalties._base import Penalty, amax


class L1(Penalty):
    r"""L1 penalty :math:`\lambda \sum_i |w_i|`.

    * ``fr.l1(params, lam)``: the value (0-d tensor, differentiable);
    * ``fr.l1.grad(params, lam)``: :math:`\lambda\,\mathrm{sign}(w)`, with the subgradient 0
      at :math:`w = 0`;
    * ``fr.l1.add_grad(grads, params, lam)``: ``grads`` plus that gradient;
    * ``fr.l1.prox(params, lam, step)``: soft thresholding at :math:`t = \lambda\,\mathrm{step}`,

      .. math:: \mathrm{prox}(w) = \mathrm{sign}(w)\max(|w| - t, 0) = w - \mathrm{clamp}(w, -t, t),

      exactly 0 where :math:`|w| \le t` (true sparsity, which subgradient steps never give).

    ``lam`` and ``step`` may also be given per element (a tensor shaped like the leaf):
    a weighted lasso, or the per-element step of a proximal Adam.

    ``fr.l1.lambda_max(grads)`` is :math:`\lVert g\rVert_\infty`, with ``grads`` the task
    loss's gradient at w = 0: scikit-learn's ``alpha_max`` (for its loss
    :math:`\tfrac{1}{2n}\lVert y - Xw\rVert^2`, :math:`g = -X^\top y / n`).

    >>> import torch, funcreg as fr
    >>> w = {"w": torch.tensor([-2.0, 0.5, 3.0])}
    >>> fr.l1(w, 0.1)
    tensor(0.5500)
    >>> fr.l1.prox(w, 1.0, 1.0)["w"]
    tensor([-1.,  0.,  2.])
    """

    name = "l1"

    def _value(self, w: torch.Tensor, *, lam: Any) -> torch.Tensor:
        if isinstance(lam, torch.Tensor) and lam.ndim:
            return (lam * w.abs()).sum()
        return lam * w.abs().sum()

    def _grad(self, ops: Ops, *, params: Tensors, lam: Column) -> Tensors:
        return ops.mul_(ops.sign(params), lam)

    def _add_grad(self, ops: Ops, *, grads: Tensors, params: Tensors, lam: Column) -> Tensors:
        return ops.add_(grads, ops.sign(params), lam)

    def _prox(self, ops: Ops, *, params: Tensors, lam: Column, step: Column) -> Tensors:
        return ops.soft_threshold_(params, derive(lambda a, s: a * s, lam, step))

    def _lambda_max(self, g: torch.Tensor) -> torch.Tensor:
        return amax(g.abs())


l1 = L1()
