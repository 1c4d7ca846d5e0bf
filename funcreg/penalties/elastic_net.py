"""Elastic net in scikit-learn's convention: value, gradient and prox."""

from __future__ import annotations

from typing import Any

import torch

from funcreg._hyper import Param
from funcreg._ops import Column, Ops, Tensors, derive
from funcreg.penalties._base import Penalty, amax


class ElasticNet(Penalty):
    r"""Elastic net, as scikit-learn writes it (``alpha`` = λ, ``l1_ratio`` = ρ):

    .. math:: \lambda\Big(\rho \sum_i |w_i| + \frac{1-\rho}{2} \sum_i w_i^2\Big)

    Note the ½ on the squared term, unlike :data:`fr.l2 <funcreg.l2>`: ρ = 1 is
    ``fr.l1``, ρ = 0 is ``fr.l2`` with λ/2.

    * gradient :math:`\lambda\rho\,\mathrm{sign}(w) + \lambda(1-\rho)\,w`;
    * prox with :math:`s` = ``step``:
      :math:`\mathrm{soft}(w, s\lambda\rho) / (1 + s\lambda(1-\rho))`.

    ``l1_ratio`` (keyword, default 0.5 as in scikit-learn) is a number in [0, 1] or a
    0-d tensor. ``lambda_max`` is :math:`\lVert g\rVert_\infty / \rho`, scikit-learn's
    ``alpha_max`` for ``ElasticNet`` (infinite for ρ = 0, where no λ zeroes the weights).

    >>> import torch, funcreg as fr
    >>> w = {"w": torch.tensor([2.0, -0.5])}
    >>> fr.elastic_net(w, 1.0, l1_ratio=0.5)
    tensor(2.3125)
    >>> fr.elastic_net.prox(w, 1.0, 1.0, l1_ratio=0.5)["w"]
    tensor([1., 0.])
    """

    name = "elastic_net"
    options = {"l1_ratio": 0.5}
    hypers = (Param("l1_ratio", high=1.0),)

    def _value(self, w: torch.Tensor, *, lam: Any, l1_ratio: Any) -> torch.Tensor:
        rho = l1_ratio
        per_element = isinstance(lam, torch.Tensor) and lam.ndim
        l1 = (lam * w.abs()).sum() if per_element else lam * w.abs().sum()
        l2 = (lam * w.square()).sum() if per_element else lam * w.square().sum()
        return rho * l1 + (1 - rho) / 2 * l2

    def _grad(self, ops: Ops, *, params: Tensors, lam: Column, l1_ratio: Column) -> Tensors:
        a = derive(lambda lm, r: lm * r, lam, l1_ratio)
        b = derive(lambda lm, r: lm * (1 - r), lam, l1_ratio)
        return ops.add_(ops.mul_(ops.sign(params), a), params, b)

    def _lambda_max(self, g: torch.Tensor, *, l1_ratio: Any) -> torch.Tensor:
        top, rho = amax(g.abs()), l1_ratio
        # ρ = 0 is ridge: no λ zeroes the weights, also where the gradient is 0 (not 0/0)
        return torch.where(torch.as_tensor(rho, device=top.device) > 0, top / rho, torch.inf)

    def _prox(self, ops: Ops, *, params: Tensors, lam: Column, step: Column, l1_ratio: Column) -> Tensors:
        t = derive(lambda lm, s, r: s * lm * r, lam, step, l1_ratio)
        shrink = derive(lambda lm, s, r: 1 / (1 + s * lm * (1 - r)), lam, step, l1_ratio)
        return ops.mul_(ops.soft_threshold_(params, t), shrink)


elastic_net = ElasticNet()
