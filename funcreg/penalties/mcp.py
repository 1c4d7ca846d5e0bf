"""MCP, the minimax concave penalty: L1 near zero, flat beyond γλ, so large weights go
unshrunk."""

from __future__ import annotations

import math
from typing import Any

import torch

from funcreg import _hyper
from funcreg._ops import Column, Ops, Tensors, like
from funcreg._tree import Flat
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

    def _columns(self, flat: Flat, sel: list[int], options: dict[str, Any]) -> tuple[list[Any], ...]:
        gamma = _hyper.number("gamma", options["gamma"], low=-math.inf)
        if isinstance(gamma, float) and gamma <= 0:
            raise ValueError(f"mcp gamma must be > 0 (the penalty is flat beyond gamma·lam), got {gamma}")
        return (_hyper.per_leaf("gamma", gamma, flat, sel),)

    def _value(self, w: torch.Tensor, lam: _hyper.Hyper, gamma: _hyper.Hyper) -> torch.Tensor:
        m = torch.minimum(w.abs(), torch.as_tensor(gamma * lam, dtype=w.dtype, device=w.device))
        return (lam * m - m.square() / (2 * gamma)).sum()

    def _grad(self, ops: Ops, ws: Tensors, lam: Column, gamma: Column) -> Tensors:
        # (γλ·sign(w) - clamp(w, ±γλ)) / γ: exactly 0 beyond γλ, where the two terms match
        edge = _hyper.combine(lambda a, g: g * a, lam, gamma)
        num = ops.add_(ops.mul_(ops.sign(ws), edge), ops.clamp_(ws, [-e for e in edge], edge), -1.0)
        return ops.div_(num, gamma)

    def _prox(self, ops: Ops, ws: Tensors, lam: Column, step: Column, gamma: Column) -> Tensors:
        firm, hard, mixed = [], [], []
        for k, (s, g) in enumerate(zip(step, gamma)):
            if isinstance(s, torch.Tensor) or isinstance(g, torch.Tensor):
                mixed.append(k)
            else:
                (firm if s < g else hard).append(k)
        out: list[Any] = [None] * len(ws)
        if firm:
            a, s, g = ([col[k] for k in firm] for col in (lam, step, gamma))
            result = ops.firm_threshold_(like(ws, [ws[k] for k in firm]), [x * y for x, y in zip(s, a)],
                                         [x * y for x, y in zip(g, a)], [y / (y - x) for x, y in zip(s, g)])
            for k, r in zip(firm, result):
                out[k] = r
        if hard:
            a, s, g = ([col[k] for k in hard] for col in (lam, step, gamma))
            result = ops.hard_threshold_(like(ws, [ws[k] for k in hard]),
                                         [y * (x * z) ** 0.5 for x, y, z in zip(s, a, g)])
            for k, r in zip(hard, result):
                out[k] = r
        for k in mixed:  # tensor step or gamma: both regimes, chosen per element
            out[k] = _prox_either(ws[k], lam[k], step[k], gamma[k])
        return out

    def _lambda_max(self, g: torch.Tensor, _gamma: _hyper.Hyper) -> torch.Tensor:
        return amax(g.abs())


def _prox_either(w: torch.Tensor, lam: _hyper.Hyper, s: _hyper.Hyper, g: _hyper.Hyper) -> torch.Tensor:
    convex = torch.as_tensor(s < g, device=w.device)
    low = s * lam
    high = g * lam
    scale = g / torch.where(convex, g - s, 1.0)  # the unused branch must not divide by 0
    t_hard = lam * torch.sqrt(torch.as_tensor(s * g, dtype=w.dtype, device=w.device))
    soft = w - torch.clamp(w, -torch.as_tensor(low, dtype=w.dtype, device=w.device),
                           torch.as_tensor(low, dtype=w.dtype, device=w.device))
    firm = torch.where(w.abs() > high, w, scale * soft)
    hard = torch.where(w.abs() <= t_hard, 0.0, w)  # NaN stays NaN, as on the other paths
    return torch.where(convex, firm, hard).to(w.dtype)


mcp = MCP()
