"""L0: the count of nonzero weights, and its prox, hard thresholding."""

from __future__ import annotations

from typing import Any

import torch

from funcreg._ops import Column, Ops, Tensors, derive
from funcreg.penalties._base import Penalty


class L0(Penalty):
    r"""L0 penalty :math:`\lambda\,\#\{i : w_i \ne 0\}`.

    * prox, hard thresholding at :math:`t = \sqrt{2\lambda\,\mathrm{step}}`: keep
      :math:`w_i` where :math:`|w_i| > t`, 0 elsewhere (at :math:`|w_i| = t` both are
      minimizers of :math:`\tfrac12(u - w_i)^2 + \mathrm{step}\,\lambda[u \ne 0]`; the zero
      is taken, as the soft threshold zeroes its ties);
    * no gradient (the count is piecewise constant) and no ``lambda_max`` (the threshold
      depends on the step): ``.grad``, ``.add_grad`` and ``.lambda_max`` raise
      ``TypeError``. Iterative hard thresholding is a gradient step followed by
      ``fr.l0.prox`` (Blumensath & Davies, "Iterative hard thresholding for compressed
      sensing", Appl. Comput. Harmon. Anal. 27, 2009).

    >>> import torch, funcreg as fr
    >>> w = {"w": torch.tensor([0.5, -2.0, 0.0, 1.0])}
    >>> fr.l0(w, 0.1)
    tensor(0.3000)
    >>> fr.l0.prox(w, 0.5, 1.0)["w"]
    tensor([ 0., -2.,  0.,  0.])
    """

    name = "l0"
    without = {
        "grad": "the count of nonzeros is piecewise constant; use fr.l0.prox",
        "lambda_max": "its threshold sqrt(2·λ·step) depends on the step",
    }

    def _value(self, w: torch.Tensor, *, lam: Any) -> torch.Tensor:
        nonzero = (w != 0).to(w.dtype)
        if isinstance(lam, torch.Tensor) and lam.ndim:
            return (lam * nonzero).sum()
        return lam * nonzero.sum()

    def _prox(self, ops: Ops, *, params: Tensors, lam: Column, step: Column) -> Tensors:
        return ops.hard_threshold_(params, derive(lambda a, s: (2 * a * s) ** 0.5, lam, step))


l0 = L0()
