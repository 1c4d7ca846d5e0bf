"""Projections onto constraint sets: the proximal operators of indicator functions.

Each takes a params tree and returns the Euclidean projection of every selected leaf (or
of every slice of it, for :func:`max_norm`) onto its set, the other leaves passing
through; with ``donate=True`` the results are written into ``params``. Radii and bounds
are numbers, 0-d tensors (batched under ``vmap``: one radius per ensemble member) or
per-leaf trees, like λ. A projected gradient step is a step followed by a projection::

    params, state = fr.sgd.step(params, grads, state, lr=lr)
    params = fr.project.max_norm(params, 3.0, where=fr.select.weights)
"""

from __future__ import annotations

import math
from typing import Any

import torch

from funcreg import _hyper, _sharding
from funcreg._groups import check_dim, group_norms
from funcreg._ops import Column, Ops, Tensors, like
from funcreg._rewrite import rewrite
from funcreg._selection import Where, selection
from funcreg._tree import Flat, flatten, require_tensors

__all__ = ["max_norm", "l2_ball", "l1_ball", "box", "non_negative"]


def max_norm(params: Any, max_norm: Any, *, dim: int | None = 0, where: Where = None,
             donate: bool = False) -> Any:
    r"""Each slice ``w.select(dim, i)`` into the L2 ball of radius ``max_norm``:
    :math:`w_i \min(1, r / \lVert w_i\rVert_2)` — ``torch.renorm(w, 2, dim, r)``'s
    meaning, computed exactly (renorm divides by :math:`\lVert w_i\rVert + 10^{-7}`).

    ``dim=0`` (the default) bounds the norm of each output unit's incoming weights of a
    linear layer, or of each conv filter: the max-norm constraint of dropout networks
    (Srivastava et al., "Dropout: a simple way to prevent neural networks from
    overfitting", JMLR 15, 2014). ``dim=None`` bounds the whole leaf (:func:`l2_ball`).

    >>> import torch, funcreg as fr
    >>> w = {"w": torch.tensor([[3.0, 4.0], [0.3, 0.4]])}
    >>> fr.project.max_norm(w, 1.0)["w"]
    tensor([[0.6000, 0.8000],
            [0.3000, 0.4000]])
    """
    flat, sel = _select(params, where)
    check_dim("max_norm", dim, flat, sel)
    radius = _hyper.per_leaf("max_norm", max_norm, flat, sel)
    return rewrite(flat, sel, _ball, [radius, [dim] * len(sel)], ("max_norm", "dim"), donate=donate)


def l2_ball(params: Any, radius: Any, *, where: Where = None, donate: bool = False) -> Any:
    r"""Each selected leaf into the L2 ball of ``radius``:
    :math:`w \min(1, r / \lVert w\rVert_2)`, the norm over the whole leaf.

    >>> import torch, funcreg as fr
    >>> fr.project.l2_ball({"w": torch.tensor([3.0, 4.0])}, 1.0)["w"]
    tensor([0.6000, 0.8000])
    """
    flat, sel = _select(params, where)
    r = _hyper.per_leaf("radius", radius, flat, sel)
    return rewrite(flat, sel, _ball, [r, [None] * len(sel)], ("radius",), donate=donate)


def l1_ball(params: Any, radius: Any, *, where: Where = None, donate: bool = False) -> Any:
    r"""Each selected leaf into the L1 ball of ``radius``, exactly: the soft threshold
    :math:`\mathrm{sign}(w)\max(|w| - \theta, 0)` at the :math:`\theta \ge 0` that makes
    :math:`\lVert\cdot\rVert_1 = r`, and :math:`\theta = 0` (the leaf as it is) inside the
    ball. θ comes from sorting :math:`|w|` (Duchi, Shalev-Shwartz, Singer, Chandra,
    "Efficient projections onto the l1-ball for learning in high dimensions", ICML 2008),
    without data-dependent shapes, so a batched radius works under ``vmap``.

    >>> import torch, funcreg as fr
    >>> fr.project.l1_ball({"w": torch.tensor([3.0, -1.0, 0.5])}, 2.0)["w"]
    tensor([2., 0., 0.])
    """
    flat, sel = _select(params, where)
    r = _hyper.per_leaf("radius", radius, flat, sel)
    return rewrite(flat, sel, _l1_ball, [r], ("radius",), donate=donate)


def box(params: Any, low: Any, high: Any, *, where: Where = None, donate: bool = False) -> Any:
    """Each selected element into ``[low, high]``: ``clamp(w, low, high)``. The bounds may
    be negative, may be given per element (tensors shaped like the leaf), and ``None``
    leaves that side unbounded.

    >>> import torch, funcreg as fr
    >>> fr.project.box({"w": torch.tensor([-2.0, 0.5, 3.0])}, -1.0, 1.0)["w"]
    tensor([-1.0000,  0.5000,  1.0000])
    """
    flat, sel = _select(params, where)
    if low is None and high is None:
        raise ValueError("box needs a low or a high bound")
    lows = None if low is None else _hyper.per_leaf("low", low, flat, sel, elementwise=True, low=-math.inf)
    highs = None if high is None else _hyper.per_leaf("high", high, flat, sel, elementwise=True, low=-math.inf)
    if lows is not None and highs is not None:
        for i, a, b in zip(sel, lows, highs):
            if not isinstance(a, torch.Tensor) and not isinstance(b, torch.Tensor) and a > b:
                raise ValueError(f"box for leaf {flat.paths[i]!r} is empty: low={a} > high={b}")
    cols = [c for c in (lows, highs) if c is not None]
    names = tuple(n for n, c in (("low", lows), ("high", highs)) if c is not None)

    def body(ops: Ops, ws: Tensors, *bounds: Column) -> Tensors:
        given = iter(bounds)
        return ops.clamp_(ws, next(given) if lows is not None else None,
                          next(given) if highs is not None else None)

    return rewrite(flat, sel, body, cols, names, donate=donate, elementwise=True)


def non_negative(params: Any, *, where: Where = None, donate: bool = False) -> Any:
    """Each selected element into ``[0, inf)``: ``clamp_min(w, 0)``.

    >>> import torch, funcreg as fr
    >>> fr.project.non_negative({"w": torch.tensor([-2.0, 0.5])})["w"]
    tensor([0.0000, 0.5000])
    """
    flat, sel = _select(params, where)
    return rewrite(flat, sel, _non_negative, [], (), donate=donate, elementwise=True)


# --------------------------------------------------------------------------- the math
def _ball(ops: Ops, ws: Tensors, radius: Column, dims: Column) -> Tensors:
    scales = []
    for w, r, dim in zip(ws, radius, dims):
        norms, _ = group_norms(w, dim)
        outside = norms > r
        # the division only where it is used: r / 0 would poison autograd through where
        scales.append(torch.where(outside, r / torch.where(outside, norms, 1.0), 1.0))
    return ops.mul_(ws, scales)


def _l1_ball(ops: Ops, ws: Tensors, radius: Column) -> Tensors:
    thetas = [_l1_threshold(w, r) for w, r in zip(ws, radius)]
    half = {k for k, w in enumerate(ws) if w.dtype in _HALF}
    rest = [k for k in range(len(ws)) if k not in half]
    out: list[torch.Tensor] = [None] * len(ws)  # type: ignore[list-item]
    if rest:
        new = ops.soft_threshold_(like(ws, [ws[k] for k in rest]), [thetas[k] for k in rest])
        for k, w in zip(rest, new):
            out[k] = w
    for k in half:
        # thresholded in float32 and rounded once: in the leaf's own dtype θ itself would
        # round (by 0.008 near 2.7 in bfloat16), and the norm with it, by that much times
        # the count of surviving entries
        wide = ws[k].float()
        out[k] = (wide - torch.clamp(wide, -thetas[k], thetas[k])).to(ws[k].dtype)
    return out


def _l1_threshold(w: torch.Tensor, r: _hyper.Hyper) -> torch.Tensor:
    """θ ≥ 0 with ‖soft(w, θ)‖₁ = r, or 0 when ‖w‖₁ ≤ r (Duchi et al.'s Figure 1)."""
    if w.numel() == 0:
        return w.new_zeros(())
    # a sort over a whole DTensor leaf needs all of it: gather it (θ is one number); a
    # half-precision leaf's cumulative sums and counts would round, so θ is found in float32
    full = _sharding.gathered(w)
    if full.dtype in _HALF:
        full = full.float()
    u = torch.sort(full.abs().reshape(-1), descending=True).values
    excess = torch.cumsum(u, 0) - r  # Σ_{j≤k} u_j - r
    k = torch.arange(1, u.numel() + 1, dtype=u.dtype, device=u.device)
    # ρ = the largest k with u_k > (Σ_{j≤k} u_j - r) / k; those k form a prefix
    rho = (u * k > excess).sum().clamp_min(1)
    theta = excess.gather(0, (rho - 1).reshape(1)).reshape(()) / rho
    return theta.clamp_min(0.0)


def _non_negative(ops: Ops, ws: Tensors) -> Tensors:
    return ops.clamp_(ws, 0.0, None)


_HALF = (torch.bfloat16, torch.float16)


def _select(params: Any, where: Where) -> tuple[Flat, list[int]]:
    flat = flatten(params)
    require_tensors(flat)
    return flat, [i for i, m in enumerate(selection(flat, where)) if m]
