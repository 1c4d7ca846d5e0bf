"""SCAD, the smoothly clipped absolute deviation: L1 near zero, quadratic blend, flat
beyond γλ."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from funcreg._hyper import Param
from funcreg._ops import Column, Ops, Owned, Tensors, each
from funcreg.penalties._base import Penalty, amax


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
      for every :math:`s`: for :math:`s < \gamma - 1` (a convex objective) the three-piece
      thresholding rule (the soft threshold up to :math:`(1+s)\lambda`, then
      :math:`((\gamma-1)w - \mathrm{sign}(w)s\gamma\lambda)/(\gamma-1-s)` up to
      :math:`\gamma\lambda`, then :math:`w`), which skglm implements; beyond it, where that
      rule stops being a minimizer, a jump from the soft threshold to :math:`w` at
      :math:`\lambda(\gamma+1+s)/2` (or :math:`\lambda\sqrt{s(\gamma+1)}` once
      :math:`s \ge \gamma+1`). Ties go to the smaller :math:`|u|`;
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
    hypers = (Param("gamma", low=-math.inf),)

    def _check_numbers(self, options: Mapping[str, Any]) -> None:
        gamma = options["gamma"]
        if isinstance(gamma, (int, float)) and not isinstance(gamma, bool) and gamma <= 1:
            raise ValueError(f"scad gamma must be > 1 (its middle piece divides by gamma - 1), got {gamma}")

    def _value(self, w: torch.Tensor, *, lam: Any, gamma: Any) -> torch.Tensor:
        return _scad(w.abs(), lam, gamma).sum()

    def _grad(self, ops: Ops, *, params: Tensors, lam: Column, gamma: Column) -> Tensors:
        out = Owned()
        for w, a, g in zip(params, each(lam, len(params)), each(gamma, len(params))):
            slope = ((g * a - w.abs()) / (g - 1)).clamp_min(0.0)
            out.append(torch.sign(w) * torch.minimum(slope, torch.as_tensor(a, dtype=w.dtype, device=w.device)))
        return out

    def _prox(self, ops: Ops, *, params: Tensors, lam: Column, step: Column, gamma: Column) -> Tensors:
        n = len(params)
        return [_prox(w, a, s, g) for w, a, s, g in zip(params, each(lam, n), each(step, n), each(gamma, n))]

    def _lambda_max(self, g: torch.Tensor, *, gamma: Any) -> torch.Tensor:
        return amax(g.abs())


def _scad(m: torch.Tensor, lam: Any, gamma: Any) -> torch.Tensor:
    """SCAD of ``m = |w|``, the integral of its slope from 0: λ·min(m, λ), plus the
    quadratic blend over ``[λ, q]`` with ``q = clamp(m, λ, γλ)``."""
    lam_t = torch.as_tensor(lam, dtype=m.dtype, device=m.device)
    q = torch.minimum(torch.maximum(m, lam_t), gamma * lam_t)
    return (lam_t * torch.minimum(m, lam_t)
            + (gamma * lam_t * (q - lam_t) - (q.square() - lam_t.square()) / 2) / (gamma - 1))


def _prox(w: torch.Tensor, lam: Any, s: Any, gamma: Any) -> torch.Tensor:
    """The global minimizer of ½(u - w)² + s·SCAD(u), elementwise, for every s ≥ 0.

    With m = |w| and u of w's sign: while the objective is convex (s < γ - 1), the
    three-piece rule: the soft threshold up to (1 + s)λ, the middle piece's stationary
    point ((γ - 1)m - sγλ)/(γ - 1 - s) up to γλ, m beyond. Once the middle piece is concave
    its endpoints never win, and the answer jumps from the soft threshold straight to m
    where the two objectives meet: at λ(γ + 1 + s)/2 while s < γ + 1, at λ√(s(γ + 1)) after
    (a hard threshold). Ties take the lower branch."""
    m = w.abs()
    t = lambda v: torch.as_tensor(v, dtype=w.dtype, device=w.device)  # noqa: E731 - a shorthand, as in the formula
    lam_t, s_t, g_t = t(lam), t(s), t(gamma)
    convex = s_t < g_t - 1
    soft = (m - s_t * lam_t).clamp_min(0.0)
    # the middle piece's stationary point, as m - s(γλ - m)/(γ - 1 - s): exact at s = 0
    middle = m - s_t * (g_t * lam_t - m) / torch.where(convex, g_t - 1 - s_t, 1.0)
    jump = torch.where(s_t < g_t + 1, lam_t * (g_t + 1 + s_t) / 2,
                       lam_t * torch.sqrt(torch.maximum(s_t, g_t + 1) * (g_t + 1)))
    keep = torch.where(convex, g_t * lam_t, jump)  # beyond it, u = w
    inside = torch.where(convex & (m > (1 + s_t) * lam_t), middle, soft)
    # a comparison with NaN picks a branch: a NaN hyperparameter must show instead
    nan = torch.where(torch.isnan(lam_t) | torch.isnan(s_t) | torch.isnan(g_t), torch.nan, 0.0)
    return (torch.sign(w) * torch.where(m > keep, m, inside) + nan).to(w.dtype)


scad = SCAD()
