"""SCAD, the smoothly clipped absolute deviation: L1 near zero, quadratic blend, flat
beyond γλ."""

from __future__ import annotations

import math
from typing import Any

import torch

from funcreg import _hyper
from funcreg._ops import Column, Ops, Tensors
from funcreg._tree import Flat
from funcreg.penalties._base import Penalty
from funcreg.penalties.l1 import amax


class SCAD(Penalty):
    r"""Smoothly clipped absolute deviation (Fan & Li, "Variable selection via nonconcave
    penalized likelihood and its oracle properties", JASA 96, 2001), per element, in
    scikit-learn-contrib skglm's ``SCAD(alpha=λ, gamma=γ)`` convention:

    .. math:: \mathrm{SCAD}(w) = \begin{cases} \lambda|w| & |w| \le \lambda \\
              \frac{2\gamma\lambda|w| - w^2 - \lambda^2}{2(\gamma - 1)} & \lambda < |w| \le \gamma\lambda \\
              \frac{\lambda^2(\gamma + 1)}{2} & |w| > \gamma\lambda \end{cases}

    * gradient :math:`\mathrm{sign}(w)\,\mathrm{clamp}\big((\gamma\lambda - |w|)/(\gamma - 1), 0, \lambda\big)`:
      :math:`\lambda\,\mathrm{sign}(w)` up to λ (0 at w = 0), falling linearly to 0 at γλ;
    * prox with step :math:`s`, the global minimizer of :math:`\tfrac12(u-w)^2 + s\,\mathrm{SCAD}(u)`
      for every :math:`s`: the best of the three pieces' own minimizers (the soft threshold
      clipped to :math:`[0, \lambda]`, the middle piece's stationary point clipped to
      :math:`[\lambda, \gamma\lambda]` when that piece is convex, :math:`s < \gamma - 1`,
      and :math:`\max(|w|, \gamma\lambda)`). For :math:`s < \gamma - 1` that is the
      textbook three-piece thresholding rule skglm implements; beyond it, where the rule
      stops being a minimizer, it is still the exact one. Ties go to the smaller
      :math:`|u|`;
    * ``lambda_max``: :math:`\lVert g\rVert_\infty`, as for L1.

    ``gamma`` (keyword, default 3.7, Fan & Li's choice) is a number > 1 or a 0-d tensor
    (whose range is not read); ``lam`` and ``step`` may be given per element.

    >>> import torch, funcreg as fr
    >>> w = {"w": torch.tensor([0.5, 1.5, 3.0, 5.0])}
    >>> fr.scad.prox(w, 1.0, 1.0)["w"]
    tensor([0.0000, 0.5000, 2.5882, 5.0000])
    """

    name = "scad"
    options = {"gamma": 3.7}

    def _columns(self, flat: Flat, sel: list[int], options: dict[str, Any]) -> tuple[list[Any], ...]:
        gamma = _hyper.number("gamma", options["gamma"], low=-math.inf)
        if isinstance(gamma, float) and gamma <= 1:
            raise ValueError(f"scad gamma must be > 1 (its middle piece divides by gamma - 1), got {gamma}")
        return (_hyper.per_leaf("gamma", gamma, flat, sel),)

    def _value(self, w: torch.Tensor, lam: _hyper.Hyper, gamma: _hyper.Hyper) -> torch.Tensor:
        return _scad(w.abs(), lam, gamma).sum()

    def _grad(self, ops: Ops, ws: Tensors, lam: Column, gamma: Column) -> Tensors:
        out = []
        for w, a, g in zip(ws, lam, gamma):
            slope = ((g * a - w.abs()) / (g - 1)).clamp_min(0.0)
            out.append(torch.sign(w) * torch.minimum(slope, torch.as_tensor(a, dtype=w.dtype, device=w.device)))
        return ops.temp(out)

    def _prox(self, ops: Ops, ws: Tensors, lam: Column, step: Column, gamma: Column) -> Tensors:
        return [_prox(w, a, s, g) for w, a, s, g in zip(ws, lam, step, gamma)]

    def _lambda_max(self, g: torch.Tensor, gamma: _hyper.Hyper) -> torch.Tensor:
        return amax(g.abs())


def _scad(m: torch.Tensor, lam: _hyper.Hyper, gamma: _hyper.Hyper) -> torch.Tensor:
    """SCAD of ``m = |w|``, the integral of its slope from 0: λ·min(m, λ), plus the
    quadratic blend over ``[λ, q]`` with ``q = clamp(m, λ, γλ)``."""
    lam_t = torch.as_tensor(lam, dtype=m.dtype, device=m.device)
    q = torch.minimum(torch.maximum(m, lam_t), gamma * lam_t)
    return lam_t * torch.minimum(m, lam_t) + (gamma * lam_t * (q - lam_t) - (q.square() - lam_t.square()) / 2) / (gamma - 1)


def _prox(w: torch.Tensor, lam: _hyper.Hyper, s: _hyper.Hyper, gamma: _hyper.Hyper) -> torch.Tensor:
    m = w.abs()
    lam_t = torch.as_tensor(lam, dtype=w.dtype, device=w.device)
    edge = gamma * lam_t
    # each piece's minimizer of ½(u - m)² + s·SCAD(u) over its own interval, u ≥ 0
    inner = torch.minimum((m - s * lam_t).clamp_min(0.0), lam_t)
    convex = torch.as_tensor((gamma - 1) - s > 0, device=w.device)
    # the unused branch must not divide by 0; and in the leaf's dtype, since torch.where
    # of Python numbers would round γ − 1 − s to float32
    safe = torch.where(convex, torch.as_tensor((gamma - 1) - s, dtype=w.dtype, device=w.device), 1.0)
    middle = torch.minimum(torch.maximum(((gamma - 1) * m - s * edge) / safe, lam_t), edge)
    outer = torch.maximum(m, edge)

    def objective(u: torch.Tensor) -> torch.Tensor:
        return (u - m).square() / 2 + s * _scad(u, lam, gamma)

    f_inner, f_middle, f_outer = objective(inner), objective(middle), objective(outer)
    f_middle = torch.where(convex, f_middle, torch.inf)
    best = torch.where(f_inner <= torch.minimum(f_middle, f_outer), inner,
                       torch.where(f_middle <= f_outer, middle, outer))
    return (torch.sign(w) * best).to(w.dtype)


scad = SCAD()
