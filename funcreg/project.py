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

import functools
import math
from typing import Any

import torch

from funcreg import _engine, _sharding
from funcreg._engine import LeafError, Op, Role
from funcreg._groups import check_dim, group_norms
from funcreg._hyper import Param
from funcreg._ops import Column, Ops, Tensors, each, subset
from funcreg._selection import Where
from funcreg._tree import Flat

__all__ = ["max_norm", "l2_ball", "l1_ball", "box", "non_negative"]


def max_norm(params: Any, max_norm: Any, *, dim: int | None = 0, where: Where = None,
             donate: bool = False, differentiable: bool = False) -> Any:
    r"""Each slice ``w.select(dim, i)`` into the L2 ball of radius ``max_norm``:
    :math:`w_i \min(1, r / \lVert w_i\rVert_2)` — ``torch.renorm(w, 2, dim, r)``'s
    meaning, computed exactly (renorm divides by :math:`\lVert w_i\rVert + 10^{-7}`).

    ``dim=0`` (the default) bounds the norm of each output unit's incoming weights of a
    linear layer, or of each conv filter: the max-norm constraint of dropout networks
    (Srivastava et al., "Dropout: a simple way to prevent neural networks from
    overfitting", JMLR 15, 2014). ``dim=None`` bounds the whole leaf (:func:`l2_ball`).

    Args:
        params: the parameter tree.
        max_norm: the radius, a number >= 0, a 0-d tensor (batched under ``vmap``) or a dict ``{leaf path: value}``.
        dim: the dim whose slices are bounded (``None``: the whole leaf).
        where: the leaves to project (all by default): a selector, a callable
            ``(path, leaf) -> bool`` or a tree of bools.
        donate: write the results into ``params``' selected leaves and return them.
        differentiable: record autograd history through params that require grad.

    Returns:
        A tree like params: the projection on the selected leaves, the others as they are.

    Raises:
        ValueError: a negative or non-finite radius, a ``dim`` a leaf does not have,
            trees that do not match, a per-leaf value naming a leaf params lack; with
            ``donate=True``, a donated leaf that overlaps another input (each naming the
            leaf).
        TypeError: a leaf that is not a floating-point tensor, a value of the wrong type.

    >>> import torch, funcreg as fr
    >>> w = {"w": torch.tensor([[3.0, 4.0], [0.3, 0.4]])}
    >>> fr.project.max_norm(w, 1.0)["w"]
    tensor([[0.6000, 0.8000],
            [0.3000, 0.4000]])
    """
    return _run(_MAX_NORM, params, {"max_norm": max_norm}, where, donate, differentiable, dim=dim)


def l2_ball(params: Any, radius: Any, *, where: Where = None, donate: bool = False,
            differentiable: bool = False) -> Any:
    r"""Each selected leaf into the L2 ball of ``radius``:
    :math:`w \min(1, r / \lVert w\rVert_2)`, the norm over the whole leaf.

    Args:
        params: the parameter tree.
        radius: a number >= 0, a 0-d tensor (batched under ``vmap``) or a dict ``{leaf path: value}``.
        where: the leaves to project (all by default): a selector, a callable
            ``(path, leaf) -> bool`` or a tree of bools.
        donate: write the results into ``params``' selected leaves and return them.
        differentiable: record autograd history through params that require grad.

    Returns:
        A tree like params: the projection on the selected leaves, the others as they are.

    Raises:
        ValueError: a negative or non-finite radius, trees that do not match, a per-leaf value naming a leaf
            params lack; with ``donate=True``, a donated leaf that overlaps another
            input (each naming the leaf).
        TypeError: a leaf that is not a floating-point tensor, a value of the wrong type.

    >>> import torch, funcreg as fr
    >>> fr.project.l2_ball({"w": torch.tensor([3.0, 4.0])}, 1.0)["w"]
    tensor([0.6000, 0.8000])
    """
    return _run(_L2_BALL, params, {"radius": radius}, where, donate, differentiable)


def l1_ball(params: Any, radius: Any, *, where: Where = None, donate: bool = False,
            differentiable: bool = False) -> Any:
    r"""Each selected leaf into the L1 ball of ``radius``, exactly: the soft threshold
    :math:`\mathrm{sign}(w)\max(|w| - \theta, 0)` at the :math:`\theta \ge 0` that makes
    :math:`\lVert\cdot\rVert_1 = r`, and :math:`\theta = 0` (the leaf as it is) inside the
    ball. θ comes from sorting :math:`|w|` (Duchi, Shalev-Shwartz, Singer, Chandra,
    "Efficient projections onto the l1-ball for learning in high dimensions", ICML 2008),
    without data-dependent shapes, so a batched radius works under ``vmap``.

    Args:
        params: the parameter tree.
        radius: a number >= 0, a 0-d tensor (batched under ``vmap``) or a dict ``{leaf path: value}``.
        where: the leaves to project (all by default): a selector, a callable
            ``(path, leaf) -> bool`` or a tree of bools.
        donate: write the results into ``params``' selected leaves and return them.
        differentiable: record autograd history through params that require grad.

    Returns:
        A tree like params: the projection on the selected leaves, the others as they are.

    Raises:
        ValueError: a negative or non-finite radius, trees that do not match, a per-leaf value naming a leaf
            params lack; with ``donate=True``, a donated leaf that overlaps another
            input (each naming the leaf).
        TypeError: a leaf that is not a floating-point tensor, a value of the wrong type.

    >>> import torch, funcreg as fr
    >>> fr.project.l1_ball({"w": torch.tensor([3.0, -1.0, 0.5])}, 2.0)["w"]
    tensor([2., 0., 0.])
    """
    return _run(_L1_BALL, params, {"radius": radius}, where, donate, differentiable)


def box(params: Any, low: Any, high: Any, *, where: Where = None, donate: bool = False,
        differentiable: bool = False) -> Any:
    """Each selected element into ``[low, high]``: ``clamp(w, low, high)``. The bounds may
    be negative, may be given per element (tensors shaped like the leaf), and ``None``
    leaves that side unbounded.

    Args:
        params: the parameter tree.
        low: the lower bound or ``None``: a number, a 0-d tensor, a tensor shaped like
            the leaf, or a dict ``{leaf path: value}``.
        high: the upper bound or ``None``, in the same forms.
        where: the leaves to project (all by default): a selector, a callable
            ``(path, leaf) -> bool`` or a tree of bools.
        donate: write the results into ``params``' selected leaves and return them.
        differentiable: record autograd history through params that require grad.

    Returns:
        A tree like params: the projection on the selected leaves, the others as they are.

    Raises:
        ValueError: no bound at all, ``low > high`` somewhere, trees that do not match, a per-leaf value naming a leaf
            params lack; with ``donate=True``, a donated leaf that overlaps another
            input (each naming the leaf).
        TypeError: a leaf that is not a floating-point tensor, a value of the wrong type.

    >>> import torch, funcreg as fr
    >>> fr.project.box({"w": torch.tensor([-2.0, 0.5, 3.0])}, -1.0, 1.0)["w"]
    tensor([-1.0000,  0.5000,  1.0000])
    """
    if low is None and high is None:
        raise ValueError("box needs a low or a high bound")
    return _run(_BOX, params, {"low": low, "high": high}, where, donate, differentiable)


def non_negative(params: Any, *, where: Where = None, donate: bool = False,
                 differentiable: bool = False) -> Any:
    """Each selected element into ``[0, inf)``: ``clamp_min(w, 0)``.

    Args:
        params: the parameter tree.
        where: the leaves to project (all by default): a selector, a callable
            ``(path, leaf) -> bool`` or a tree of bools.
        donate: write the results into ``params``' selected leaves and return them.
        differentiable: record autograd history through params that require grad.

    Returns:
        A tree like params: the projection on the selected leaves, the others as they are.

    Raises:
        ValueError: trees that do not match, a per-leaf value naming a leaf
            params lack; with ``donate=True``, a donated leaf that overlaps another
            input (each naming the leaf).
        TypeError: a leaf that is not a floating-point tensor, a value of the wrong type.

    >>> import torch, funcreg as fr
    >>> fr.project.non_negative({"w": torch.tensor([-2.0, 0.5])})["w"]
    tensor([0.0000, 0.5000])
    """
    return _run(_NON_NEGATIVE, params, {}, where, donate, differentiable)


# --------------------------------------------------------------------------- the math
def _ball(ops: Ops, *, params: Tensors, radius: Column, dim: int | None = None) -> Tensors:
    scales = []
    for w, r in zip(params, each(radius, len(params))):
        norms, _ = group_norms(w, dim, ops.batch)
        inside = norms <= r  # False for a NaN radius: the scale is then NaN, not 1
        # the division only where it is used: r / 0 would poison autograd through where
        scales.append(torch.where(inside, 1.0, r / torch.where(inside, 1.0, norms)))
    return ops.mul_(params, scales)


def _max_norm(ops: Ops, *, params: Tensors, max_norm: Column, dim: int | None) -> Tensors:
    return _ball(ops, params=params, radius=max_norm, dim=dim)


def _l1_ball(ops: Ops, *, params: Tensors, radius: Column) -> Tensors:
    thetas = ops.bcast([_l1_threshold(w, r, ops.batch) for w, r in zip(params, each(radius, len(params)))],
                       params)
    wide = [k for k, w in enumerate(params) if w.dtype in _HALF]
    rest = [k for k in range(len(params)) if k not in wide]
    out: list[Any] = [None] * len(params)
    for k, w in zip(rest, ops.soft_threshold_(subset(params, rest), [thetas[k] for k in rest]) if rest else []):
        out[k] = w
    for k in wide:
        # thresholded in float32 and rounded once: in the leaf's own dtype θ itself would
        # round (by 0.008 near 2.7 in bfloat16), and the norm with it, by that much times
        # the count of surviving entries
        w = params[k].float()
        out[k] = (w - torch.clamp(w, -thetas[k], thetas[k])).to(params[k].dtype)
    return out


def _l1_threshold(w: torch.Tensor, r: Any, batch: int) -> torch.Tensor:
    """θ ≥ 0 with ‖soft(w, θ)‖₁ = r, or 0 when ‖w‖₁ ≤ r (Duchi et al.'s Figure 1), per
    ensemble member of the ``batch`` leading dims."""
    if math.prod(w.shape[batch:]) == 0:
        return w.new_zeros(w.shape[:batch])
    # a sort over a whole DTensor leaf needs all of it: gather it (θ is one number); a
    # half-precision leaf's cumulative sums and counts would round, so θ is found in float32
    full = _sharding.gathered(w)
    if full.dtype in _HALF:
        full = full.float()
    u = torch.sort(full.abs().reshape(*full.shape[:batch], -1), dim=-1, descending=True).values
    if isinstance(r, torch.Tensor) and batch:
        r = r.reshape(*r.shape[:batch], 1)
    excess = torch.cumsum(u, -1) - r  # Σ_{j≤k} u_j - r
    k = torch.arange(1, u.shape[-1] + 1, dtype=u.dtype, device=u.device)
    # ρ = the largest k with u_k > (Σ_{j≤k} u_j - r) / k; those k form a prefix
    rho = (u * k > excess).sum(-1, keepdim=True).clamp_min(1)
    theta = excess.gather(-1, rho - 1).squeeze(-1) / rho.squeeze(-1)
    return theta.clamp_min(0.0)


def _box(ops: Ops, *, params: Tensors, low: Column | None, high: Column | None) -> Tensors:
    return ops.clamp_(params, low, high)


def _non_negative(ops: Ops, *, params: Tensors) -> Tensors:
    return ops.clamp_(params, 0.0, None)


def _check_box(values: dict[str, list[Any]]) -> None:
    for k, (a, b) in enumerate(zip(values["low"], values["high"])):
        if a is not None and b is not None and not isinstance(a, torch.Tensor) \
                and not isinstance(b, torch.Tensor) and a > b:
            raise LeafError(k, f"the box for {{leaf}} is empty: low={a} > high={b}")


def _check_max_norm(flat: Flat, selected: list[int], *, dim: Any) -> None:
    check_dim("max_norm", dim, flat, selected)


_HALF = (torch.bfloat16, torch.float16)
_PARAMS = Role("params", "params")
_bound = functools.partial(Param, per_leaf=True, per_element=True, optional=True, low=-math.inf)
_MAX_NORM = Op("fr.project.max_norm", _max_norm, _PARAMS, writes=("params",),
               hypers=(Param("max_norm", per_leaf=True),), check=_check_max_norm)
_L2_BALL = Op("fr.project.l2_ball", _ball, _PARAMS, writes=("params",), hypers=(Param("radius", per_leaf=True),))
_L1_BALL = Op("fr.project.l1_ball", _l1_ball, _PARAMS, writes=("params",), hypers=(Param("radius", per_leaf=True),))
_BOX = Op("fr.project.box", _box, _PARAMS, writes=("params",), elementwise=True,
          hypers=(_bound("low"), _bound("high")), validate=_check_box)
_NON_NEGATIVE = Op("fr.project.non_negative", _non_negative, _PARAMS, writes=("params",), pieces=False)


def _run(op: Op, params: Any, hypers: dict[str, Any], where: Where, donate: bool, differentiable: bool,
         **static: Any) -> Any:
    return _engine.run(op, [params], hypers, where=where, donate=donate, differentiable=differentiable,
                       static=tuple(static.items()))["params"]
