"""Soft orthogonality: the distance of a weight's Gram matrix from the identity."""

from __future__ import annotations

from typing import Any

import torch

from funcreg import _ops, _sharding
from funcreg._ops import Column, Ops, Tensors, each
from funcreg._tree import Flat
from funcreg.penalties._base import Penalty
from funcreg.penalties._matrix import as_matrix, check_matrices, identity_like


class Orthogonal(Penalty):
    r"""Orthogonality penalty :math:`\lambda\lVert W W^\top - I\rVert_F^2`, on the smaller
    Gram side of each matrix leaf :math:`W` (a leaf of ndim > 2 is seen as
    ``W.reshape(W.shape[0], -1)``): :math:`W W^\top` when W has no more rows than
    columns (orthonormal rows), :math:`W^\top W` otherwise (orthonormal columns).

    * gradient :math:`4\lambda (W W^\top - I) W`, or :math:`4\lambda W (W^\top W - I)`;
    * no prox (it has no closed form) and no ``lambda_max`` (zero weights are not what it
      drives toward): ``.prox`` and ``.lambda_max`` raise ``TypeError``.

    ``lam`` is one value per leaf. Reference: Bansal, Chen, Wang, "Can we gain more from
    orthogonality regularizations in training deep CNNs?", NeurIPS 2018 (their SO
    regularizer); Brock et al., "Neural photo editing with introspective adversarial
    networks", ICLR 2017.

    >>> import torch, funcreg as fr
    >>> w = {"w": torch.tensor([[1.0, 0.0], [0.0, 2.0]])}
    >>> fr.orthogonal(w, 1.0)
    tensor(9.)
    >>> fr.orthogonal.grad(w, 1.0)["w"]
    tensor([[ 0.,  0.],
            [ 0., 24.]])
    """

    name = "orthogonal"
    elementwise = False
    without = {
        "prox": "the orthogonality penalty has no closed-form proximal operator; use .grad",
        "lambda_max": "it drives weights toward orthonormal ones, not toward zero",
    }

    def _check(self, flat: Flat, selected: list[int]) -> None:
        check_matrices(self.name, flat, selected)

    def _value(self, w: torch.Tensor, *, lam: Any) -> torch.Tensor:
        gram, eye = _gram(as_matrix(w))
        return lam * (gram - eye).square().sum()

    def _grad(self, ops: Ops, *, params: Tensors, lam: Column) -> Tensors:
        out = _ops.Owned()
        for w, a in zip(params, each(lam, len(params))):
            m = as_matrix(w, ops.batch)
            gram, eye = _gram(m)
            g = (gram - eye) @ m if m.shape[-2] <= m.shape[-1] else m @ (gram - eye)
            out.append(_sharding.place_like(4 * a * g.reshape(w.shape), w))
        return out


def _gram(m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The smaller Gram matrix of ``m`` and the identity of its size."""
    gram = m @ m.mT if m.shape[-2] <= m.shape[-1] else m.mT @ m
    return gram, identity_like(gram)


orthogonal = Orthogonal()
