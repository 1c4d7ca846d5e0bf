"""Group lasso: value, gradient and block soft-thresholding prox."""

from __future__ import annotations

import math
from typing import Any

import torch

from funcreg._groups import block_shrink, check_dim, group_norms, inverse_norms
from funcreg._ops import Column, Ops, Tensors, each
from funcreg._tree import Flat
from funcreg.penalties._base import amax
from funcreg.penalties._coupled import CoupledGroups


class GroupLasso(CoupledGroups):
    r"""Group lasso :math:`\lambda \sum_g \sqrt{n_g}\,\lVert w_g \rVert_2`.

    A group :math:`w_g` is one slice of a leaf along ``dim`` (keyword, default 0: one
    group per output row of a linear weight, one per filter of a conv weight), so a whole
    group can be driven to zero, pruning a unit; ``dim=None`` makes each leaf one group.
    :math:`n_g` is the group's size, the usual weight that keeps large groups from being
    favoured.

    * gradient :math:`\lambda\sqrt{n_g}\, w_g / \lVert w_g\rVert`, and 0 for a zero group
      (finite, also under ``torch.func.grad`` of the value);
    * prox, block soft thresholding with :math:`t_g = \lambda\,\mathrm{step}\sqrt{n_g}`:

      .. math:: \mathrm{prox}(w_g) = \max(\lVert w_g\rVert - t_g, 0)\, w_g / \lVert w_g\rVert,

      exactly 0 where :math:`\lVert w_g\rVert \le t_g`.

    ``lam`` and ``step`` are one value per leaf (a number, a 0-d tensor or a per-leaf
    tree), not per element. ``lambda_max`` is :math:`\max_g \lVert g_g\rVert / \sqrt{n_g}`
    over the groups of the task loss's gradient at w = 0.

    **Coupled groups** (``groups=``, instead of ``dim=``): a list of couplings, each an
    ``fr.Coupling`` or a dict ``{path: dim}`` (docs/pruning.md). Group k of a coupling is
    the k-th of its G equal chunks along each named dim, over all its leaves (a unit's
    weight row, bias entry and BatchNorm scale and shift; an attention head's rows), and
    :math:`n_g` its total number of elements. Leaves no coupling names are not
    penalized; ``where=`` selects whole couplings (one it splits is an error). With
    ``groups=``, ``lam`` is one value (a number or a 0-d tensor); ``step`` may be one per
    leaf (a proximal Adam's), and the prox is then exact in that metric: per group
    :math:`u_l = v_l\,r/(r + s_l t_g)`, r solving a one-dimensional equation. Couplings
    may overlap (share a leaf): values and gradients sum over all groups, ``lambda_max``
    refuses, and the prox is computed iteratively to ``1e-6·‖w‖`` with exact zeros (see
    ``funcreg/_overlap.py``), eagerly or under ``vmap``.

    Reference: Yuan & Lin, "Model selection and estimation in regression with grouped
    variables", JRSS B 68 (2006).

    >>> import torch, funcreg as fr
    >>> w = {"w": torch.tensor([[3.0, 4.0], [0.3, 0.4]])}
    >>> fr.group_lasso.prox(w, 1.0 / 2 ** 0.5, 1.0)["w"]
    tensor([[2.4000, 3.2000],
            [0.0000, 0.0000]])
    >>> units = {"fc.weight": 0, "fc.bias": 0}          # row k and entry k: unit k
    >>> p = {"fc.weight": torch.tensor([[3.0], [0.1]]), "fc.bias": torch.tensor([4.0, 0.1])}
    >>> out = fr.group_lasso.prox(p, 0.5, 1.0, groups=[units])  # t = 0.5·sqrt(2)
    >>> out["fc.weight"], out["fc.bias"]
    (tensor([[2.5757],
            [0.0000]]), tensor([3.4343, 0.0000]))
    """

    name = "group_lasso"
    options = {"dim": 0, "groups": None}
    elementwise = False

    def _check(self, flat: Flat, selected: list[int], *, dim: Any) -> None:
        check_dim(self.name, dim, flat, selected)

    def _value(self, w: torch.Tensor, *, lam: Any, dim: int | None) -> torch.Tensor:
        norms, size = group_norms(w, dim)
        return lam * math.sqrt(size) * norms.sum()

    def _grad(self, ops: Ops, *, params: Tensors, lam: Column, dim: int | None) -> Tensors:
        scales = []
        for w, a in zip(params, each(lam, len(params))):
            norms, size = group_norms(w, dim, ops.batch)
            scales.append(inverse_norms(norms) * (a * math.sqrt(size)))
        return ops.mul(params, scales)

    def _lambda_max(self, g: torch.Tensor, *, dim: int | None) -> torch.Tensor:
        norms, size = group_norms(g, dim)
        return amax(norms) / math.sqrt(size) if size else g.new_zeros(())

    def _prox(self, ops: Ops, *, params: Tensors, lam: Column, step: Column, dim: int | None) -> Tensors:
        scales = []
        for w, a, s in zip(params, each(lam, len(params)), each(step, len(params))):
            norms, size = group_norms(w, dim, ops.batch)
            scales.append(block_shrink(norms, a * s * math.sqrt(size)))
        return ops.mul_(params, scales)


group_lasso = GroupLasso()
