"""MCP, the minimax concave penalty: L1 near zero, flat beyond γλ, so large weights go
unshrunk."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from funcreg._hyper import Param
from funcreg._ops import Column, Ops, Tensors, derive, each, is_number
from funcreg.penalties._base import Penalty, amax


class MCP(Penalty):
    r"""Minimax concave penalty (Zhang, "Nearly unbiased variable selection under
    minimax concave penalty", Ann. Statist. 38, 2010), per element, in scikit-learn-contrib
    skglm's ``MCPenalty(alpha=λ, gamma=γ)`` convention:

    .. math:: \mathrm{MCP}(w) = \begin{cases} \lambda|w| - \frac{w^2}{2\gamma} & |w| < \gamma\lambda \\
              \frac{\gamma\lambda^2}{2} & |w| \ge \gamma\lambda \end{cases}

    * gradient :math:`\mathrm{sign}(w)(\lambda - |w|/\gamma)` for :math:`|w| < \gamma\lambda`,
      0 beyond (and 0 at w = 0), that is
      :math:`(\gamma\lambda\,\mathrm{sign}(w) - \mathrm{clamp}(w, \pm\gamma\lambda))/\gamma`;
    * prox with step :math:`s`, the global minimizer of :math:`\tfrac12(u-w)^2 + s\,\mathrm{MCP}(u)`:
      for :math:`s < \gamma` firm thresholding (Gao & Bruce, "WaveShrink with firm
      shrinkage", Statistica Sinica 7, 1997), 0 for :math:`|w| \le s\lambda`,
      :math:`\frac{\gamma}{\gamma - s}\mathrm{soft}(w, s\lambda)` up to :math:`\gamma\lambda`,
      :math:`w` beyond; for :math:`s \ge \gamma`, where the objective is concave inside
      and skglm's closed form is no longer a minimizer, hard thresholding at
      :math:`\lambda\sqrt{s\gamma}` (ties go to 0);
    * ``lambda_max``: :math:`\lVert g\rVert_\infty`, as for L1 (the subdifferential at 0 is
      :math:`[-\lambda, \lambda]`).

    ``gamma`` (keyword, default 3) is a number > 0 or a 0-d tensor (whose range is not
    read); ``lam`` and ``step`` may be given per element, as for L1.

    >>> import torch, funcreg as fr
    >>> w = {"w": torch.tensor([0.5, 1.5, 4.0])}
    >>> fr.mcp.prox(w, 1.0, 1.0, gamma=3.0)["w"]
    tensor([0.0000, 0.7500, 4.0000])
    """

    name = "mcp"
    options = {"gamma": 3.0}
    hypers = (Param("gamma", low=-math.inf),)

    def _check_numbers(self, options: Mapping[str, Any]) -> None:
        gamma = options["gamma"]
        if isinstance(gamma, (int, float)) and not isinstance(gamma, bool) and gamma <= 0:
            raise ValueError(f"mcp gamma must be > 0 (the penalty is flat beyond gamma·lam), got {gamma}")

    def _value(self, w: torch.Tensor, *, lam: Any, gamma: Any) -> torch.Tensor:
        m = torch.minimum(w.abs(), torch.as_tensor(gamma * lam, dtype=w.dtype, device=w.device))
        return (lam * m - m.square() / (2 * gamma)).sum()

    def _grad(self, ops: Ops, *, params: Tensors, lam: Column, gamma: Column) -> Tensors:
        # (γλ·sign(w) - clamp(w, ±γλ)) / γ: exactly 0 beyond γλ, where the two terms match
        edge = derive(lambda a, g: g * a, lam, gamma)
        inside = ops.clamp_(params, derive(lambda e: -e, edge), edge)
        return ops.div_(ops.add_(ops.mul_(ops.sign(params), edge), inside, -1.0), gamma)

    def _prox(self, ops: Ops, *, params: Tensors, lam: Column, step: Column, gamma: Column) -> Tensors:
        n = len(params)
        firm = derive(lambda s, g: s < g, step, gamma)  # the objective is convex: firm thresholding
        if is_number(firm) and all(each(firm, n)):
            return ops.firm_threshold_(params, derive(lambda a, s: s * a, lam, step),
                                       derive(lambda a, g: g * a, lam, gamma),
                                       derive(lambda s, g: g / (g - s), step, gamma))
        if is_number(firm) and not any(each(firm, n)):
            return ops.hard_threshold_(params, derive(lambda a, s, g: a * (s * g) ** 0.5, lam, step, gamma))
        return [_prox_either(w, a, s, g) for w, a, s, g in zip(params, each(lam, n), each(step, n), each(gamma, n))]

    def _lambda_max(self, g: torch.Tensor, *, gamma: Any) -> torch.Tensor:
        return amax(g.abs())


def _prox_either(w: torch.Tensor, lam: Any, s: Any, g: Any) -> torch.Tensor:
    """Both regimes, chosen per element (tensor ``step`` or ``gamma``); a NaN in any
    hyperparameter gives NaN, as through the soft threshold."""
    t = lambda v: torch.as_tensor(v, dtype=w.dtype, device=w.device)  # noqa: E731 - a shorthand, as in the formula
    lam, s, g = t(lam), t(s), t(g)
    convex = s < g
    soft = w - torch.clamp(w, -s * lam, s * lam)
    firm = torch.where(w.abs() > g * lam, w, g / torch.where(convex, g - s, 1.0) * soft)  # no 0/0 unused
    hard = torch.where(w.abs() <= lam * torch.sqrt(s * g), 0.0, w)
    nan = torch.where(torch.isnan(lam) | torch.isnan(s) | torch.isnan(g), torch.nan, 0.0)
    return (torch.where(convex, firm, hard) + nan).to(w.dtype)


mcp = MCP()
