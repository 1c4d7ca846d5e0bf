"""Sparse group lasso: L1 within groups plus group lasso across them."""

from __future__ import annotations

import math
from typing import Any

import torch

from funcreg._groups import block_shrink, check_dim, group_norms, inverse_norms
from funcreg._hyper import Param
from funcreg._ops import Column, Ops, Tensors, derive, each
from funcreg._tree import Flat
from funcreg.penalties._base import amax
from funcreg.penalties._coupled import CoupledGroups


class SparseGroupLasso(CoupledGroups):
    r"""Sparse group lasso, with ``l1_ratio`` = ρ and groups as in ``fr.group_lasso``
    (slices along ``dim``, weighted by :math:`\sqrt{n_g}`):

    .. math:: \lambda\Big(\rho \sum_i |w_i| + (1-\rho) \sum_g \sqrt{n_g}\,\lVert w_g\rVert_2\Big)

    ρ = 1 is ``fr.l1``, ρ = 0 is ``fr.group_lasso``; in between, whole groups and single
    weights inside the surviving groups go to zero.

    * gradient :math:`\lambda\rho\,\mathrm{sign}(w) + \lambda(1-\rho)\sqrt{n_g}\,w_g/\lVert w_g\rVert`
      (the second term 0 for a zero group);
    * prox: soft threshold at :math:`s\lambda\rho`, then block soft threshold at
      :math:`s\lambda(1-\rho)\sqrt{n_g}`, the exact prox for groups that partition the leaf
      (Simon, Friedman, Hastie, Tibshirani, "A sparse-group lasso", J. Comput. Graph.
      Stat. 22, 2013);
    * ``lambda_max``: per group the λ at which
      :math:`\lVert \mathrm{soft}(g_g, \lambda\rho)\rVert = \lambda(1-\rho)\sqrt{n_g}`
      (found by bisection in float64; there is no closed form), the largest over groups.

    ``lam`` and ``step`` are one value per leaf; ``l1_ratio`` a number in [0, 1] or a 0-d
    tensor; ``dim`` an int or None (the whole leaf one group). ``groups=`` (instead of
    ``dim=``) takes couplings as ``fr.group_lasso`` does; the L1 term then covers the
    leaves they name, each element once, and the prox is still the soft threshold followed
    by the groups' prox (also for overlapping couplings and a step per leaf: both steps are
    exact in any diagonal metric).

    >>> import torch, funcreg as fr
    >>> w = {"w": torch.tensor([[3.0, 0.2], [0.1, 0.1]])}
    >>> fr.sparse_group_lasso.prox(w, 1.0, 0.5, l1_ratio=0.5)["w"]
    tensor([[2.3964, 0.0000],
            [0.0000, 0.0000]])
    """

    name = "sparse_group_lasso"
    options = {"l1_ratio": 0.5, "dim": 0, "groups": None}
    hypers = (Param("l1_ratio", high=1.0),)
    elementwise = False

    def _check(self, flat: Flat, selected: list[int], *, dim: Any) -> None:
        check_dim(self.name, dim, flat, selected)

    def _value(self, w: torch.Tensor, *, lam: Any, l1_ratio: Any, dim: int | None) -> torch.Tensor:
        norms, size = group_norms(w, dim)
        return lam * (l1_ratio * w.abs().sum() + (1 - l1_ratio) * math.sqrt(size) * norms.sum())

    def _grad(self, ops: Ops, *, params: Tensors, lam: Column, l1_ratio: Column, dim: int | None) -> Tensors:
        n = len(params)
        block = []
        for w, a, r in zip(params, each(lam, n), each(l1_ratio, n)):
            norms, size = group_norms(w, dim, ops.batch)
            block.append(inverse_norms(norms) * (a * (1 - r) * math.sqrt(size)))
        return ops.add_(ops.mul_(ops.sign(params), derive(lambda a, r: a * r, lam, l1_ratio)), params, block)

    def _prox(self, ops: Ops, *, params: Tensors, lam: Column, step: Column, l1_ratio: Column,
              dim: int | None) -> Tensors:
        us = ops.soft_threshold_(params, derive(lambda a, s, r: s * a * r, lam, step, l1_ratio))
        n = len(params)
        scales = []
        for u, a, s, r in zip(us, each(lam, n), each(step, n), each(l1_ratio, n)):
            norms, size = group_norms(u, dim, ops.batch)
            scales.append(block_shrink(norms, s * a * (1 - r) * math.sqrt(size)))
        return ops.mul_(us, scales)

    def _lambda_max(self, g: torch.Tensor, *, l1_ratio: Any, dim: int | None) -> torch.Tensor:
        rho = l1_ratio
        if g.numel() == 0:
            return g.new_zeros((), dtype=torch.float64)
        a = _groups(g.abs().to(torch.float64), dim)  # one group per row
        rho = torch.as_tensor(rho, dtype=torch.float64, device=a.device)
        c = (1 - rho) * math.sqrt(a.shape[1])
        # φ(λ) = ‖soft(a, λρ)‖ - λc falls from ‖a‖ ≥ 0 at λ = 0 to ≤ 0 at ‖a‖/c (and, for
        # ρ = 1, at max|a|/ρ): bisect between them, per group at once
        hi = torch.where(c > 0, a.norm(dim=1) / torch.where(c > 0, c, 1.0), a.amax(dim=1) / rho)
        lo = torch.zeros_like(hi)
        for _ in range(64):  # float64: enough halvings to pin the root to the last bits
            mid = (lo + hi) / 2
            above = (a - mid.unsqueeze(1) * rho).clamp_min(0.0).norm(dim=1) > mid * c
            lo, hi = torch.where(above, mid, lo), torch.where(above, hi, mid)
        return amax(hi)


def _groups(g: torch.Tensor, dim: int | None) -> torch.Tensor:
    """The groups of ``g`` as the rows of a matrix (``dim=None`` or 0-d: one row)."""
    if dim is None or g.ndim == 0:
        return g.reshape(1, -1)
    return g.movedim(dim, 0).reshape(g.shape[dim], -1)


sparse_group_lasso = SparseGroupLasso()
