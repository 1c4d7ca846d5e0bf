"""Stateless Muon, step for step torch.optim.Muon: momentum orthogonalized by a bfloat16
Newton–Schulz iteration, for the matrix leaves ``where`` selects."""

from __future__ import annotations

import dataclasses
import math
from numbers import Real
from typing import Any

import torch

from funcreg._hyper import Param
from funcreg._ops import Column, Ops, Tensors, derive, each
from funcreg._selection import Where
from funcreg._tree import Flat
from funcreg.optim._common import run_step, step_op, zero_state

#: Keller Jordan's quintic coefficients, torch.optim.Muon's defaults
NS_COEFFICIENTS = (3.4445, -4.775, 2.0315)
ADJUST_LR_FNS = (None, "original", "match_rms_adamw")


class Muon:
    r"""Muon as a pure function, step for step torch.optim.Muon, on the matrix leaves
    ``where`` selects.

    With :math:`G` a leaf's gradient (an :math:`A\times B` matrix), :math:`\mu` =
    ``momentum``, :math:`\gamma` = ``lr``, :math:`\lambda` = ``weight_decay`` and
    :math:`B_{uf}` the momentum buffer:

    .. math::
        B_{uf} &\leftarrow \mu B_{uf} + (1-\mu) G \\
        U &= (1-\mu) G + \mu B_{uf} \quad\text{(nesterov)}, \qquad U = B_{uf} \quad\text{(otherwise)} \\
        O &= \mathrm{NS}^{(a,b,c)}_k(U), \qquad
        W \leftarrow W\,(1 - \gamma\lambda) - \gamma\,r(A, B)\; O

    :math:`\mathrm{NS}^{(a,b,c)}_k` is torch's: :math:`X = U/\max(\lVert U\rVert_F, \epsilon)` in
    bfloat16 (transposed when :math:`A > B`), then ``ns_steps`` times
    :math:`X \leftarrow aX + (bM + cM^2)X` with :math:`M = XX^\top`, an approximate
    orthogonalization (the singular values of :math:`O` are near 1, not exactly).
    :math:`r` is ``adjust_lr_fn``'s ratio: :math:`\sqrt{\max(1, A/B)}` for ``"original"``
    (and ``None``, torch's default), :math:`0.2\sqrt{\max(A, B)}` for
    ``"match_rms_adamw"`` (an update of AdamW's RMS, so AdamW's ``lr`` and
    ``weight_decay`` carry over). The weight decay is decoupled and applies to every
    updated leaf.

    **Which leaves.** Muon is an optimizer for the weight matrices of hidden layers:
    torch.optim.Muon refuses any parameter that is not 2-D, and so does this step.
    ``where`` chooses the leaves it *updates* (every floating-point leaf by default); each
    must be a matrix, and a selected leaf of another rank is a ``ValueError`` naming it,
    raised before anything is written. Leaves not selected pass through unchanged (params
    and state): step them with another optimizer, typically ``fr.adamw``, with their
    gradients (the others ``None``). ``init(params)`` makes a buffer for every leaf, as
    every step's ``init`` does: to keep none for the leaves Muon does not update, give it
    a tree of its matrices alone (``{k: v for k, v in params.items() if v.ndim == 2}``).

    The state is ``{"step", "momentum_buffer"}``: one float32 0-d count per leaf (Muon
    does not read it) and :math:`B_{uf}`, a tree like params. ``lr``, ``weight_decay``,
    ``momentum`` and ``eps`` may be Python numbers or 0-d tensors (batched under
    ``vmap``); ``ns_coefficients``, ``ns_steps``, ``nesterov`` and ``adjust_lr_fn`` shape
    the computation and are Python values.

    Under ``vmap`` the stacked path runs the iteration as batched products
    (``torch.baddbmm``), which give each member the bits of its own ``torch.addmm``; the
    per-leaf path (under ``grad``, say) leaves the products to ``vmap``'s batching rule,
    which rounds the bfloat16 products differently: its members agree with a loop to
    bfloat16's precision in the update, not bit for bit.

    One difference from torch.optim.Muon: for a bfloat16 leaf without ``nesterov``,
    torch's iteration normalizes the momentum buffer itself in place (``U.bfloat16()`` is
    the buffer, and it is divided by its norm), so its buffer no longer follows the
    formula above; this step leaves the buffer as the formula says.

    References: Jordan, Jin, Boza, You, Cesista, Newhouse & Bernstein, "Muon: an optimizer
    for hidden layers in neural networks" (2024, kellerjordan.github.io/posts/muon);
    Liu et al., "Muon is scalable for LLM training" (2025, arXiv:2502.16982) for
    ``"match_rms_adamw"``.

    >>> import torch, funcreg as fr
    >>> params = {"w": torch.eye(2), "b": torch.zeros(2)}
    >>> grads = {"w": torch.tensor([[2.0, 0.0], [0.0, 0.5]]), "b": None}
    >>> only_w = fr.select.only("^w$")
    >>> state = fr.muon.init(params)
    >>> params, state = fr.muon.step(params, grads, state, lr=0.1, weight_decay=0.0, where=only_w)
    >>> params["w"].diagonal()  # both directions moved alike, whatever the gradient's scale
    tensor([0.9270, 0.9270])
    """

    name = "fr.muon"

    def __init__(self) -> None:
        hypers = (Param("lr"), Param("weight_decay"), Param("momentum"), Param("eps"))
        op = step_op(self.name, _muon, ("momentum_buffer",), hypers)
        # where= selects the leaves Muon updates (not the decayed ones), and they must be matrices
        self._op = dataclasses.replace(op, where="select", check=_matrices)

    def init(self, params: Any) -> dict[str, Any]:
        """Zero step counts and momentum buffers, for every leaf (as the other steps' ``init``;
        a leaf the steps do not select keeps its zeros).

        Args:
            params: the parameter tree.

        Returns:
            The state: a dict of trees like params (``step`` holds 0-d counts), fresh
            tensors on each leaf's device.

        Raises:
            TypeError: a leaf that is not a floating-point tensor (named).
        """
        return zero_state(params, ("momentum_buffer",))

    def step(
        self,
        params: Any,
        grads: Any,
        state: dict[str, Any],
        *,
        lr: Any,
        weight_decay: Any = 0.1,
        momentum: Any = 0.95,
        nesterov: bool = True,
        ns_coefficients: tuple[float, float, float] = NS_COEFFICIENTS,
        eps: Any = 1e-7,
        ns_steps: int = 5,
        adjust_lr_fn: str | None = None,
        where: Where = None,
        donate: bool = False,
        differentiable: bool = False,
    ) -> tuple[Any, dict[str, Any]]:
        """One Muon step: returns ``(new_params, new_state)``.

        Args:
            params: the parameter tree (``dict(model.named_parameters())``, detached).
            grads: gradients, a tree like params; a ``None`` leaf leaves that leaf and its
                state as they are.
            state: from :meth:`init`.
            lr, weight_decay, momentum, eps: torch.optim.Muon's, each a number >= 0 or a
                0-d tensor (batched under ``vmap``).
            nesterov: orthogonalize the Nesterov look-ahead rather than the buffer.
            ns_coefficients: the Newton–Schulz polynomial's ``(a, b, c)``, Python numbers.
            ns_steps: Newton–Schulz iterations, an int in [0, 100).
            adjust_lr_fn: ``None`` or ``"original"``, or ``"match_rms_adamw"`` (above).
            where: the leaves Muon updates, all matrices (every floating-point leaf by
                default); the others pass through unchanged.
            donate: write the results into params and state and return those tensors;
                the values are the pure call's.
            differentiable: record autograd history (hypergradients), as torch.optim's flag.

        Returns:
            ``(new_params, new_state)``; the inputs are unchanged unless donated.

        Raises:
            ValueError: a selected leaf that is not a matrix, a negative or non-finite
                number, an unknown ``adjust_lr_fn``, ``ns_steps`` out of range, a state
                without ``momentum_buffer``, trees that do not match params, a ``where``
                that selects nothing (each naming the leaf).
            TypeError: a non-tensor or integer leaf, ``ns_coefficients`` not three
                numbers, a hyperparameter of the wrong type.
        """
        coefficients = _coefficients(ns_coefficients)
        if isinstance(ns_steps, bool) or not isinstance(ns_steps, int) or not 0 <= ns_steps < 100:
            raise ValueError(f"ns_steps must be an int in [0, 100), got {ns_steps!r}")
        if adjust_lr_fn not in ADJUST_LR_FNS:
            raise ValueError(f"adjust_lr_fn must be one of {ADJUST_LR_FNS}, got {adjust_lr_fn!r}")
        hypers = {"lr": lr, "weight_decay": weight_decay, "momentum": momentum, "eps": eps}
        decay = isinstance(weight_decay, torch.Tensor) or weight_decay != 0
        return run_step(self._op, params, grads, state, hypers, where=where, donate=donate,
                        differentiable=differentiable, decay=False, decayed=decay, nesterov=bool(nesterov),
                        ns_coefficients=coefficients, ns_steps=ns_steps, adjust_lr_fn=adjust_lr_fn)


def _coefficients(value: Any) -> tuple[float, float, float]:
    if (not isinstance(value, (tuple, list)) or len(value) != 3
            or not all(isinstance(v, Real) and not isinstance(v, bool) and math.isfinite(v) for v in value)):
        raise TypeError(f"ns_coefficients must be three finite Python numbers (a, b, c), got {value!r}")
    return (float(value[0]), float(value[1]), float(value[2]))


def _matrices(flat: Flat, selected: list[int], **static: Any) -> None:
    """Every selected leaf a floating-point matrix, as torch.optim.Muon requires."""
    for i in selected:
        x = flat.leaves[i]
        if x.ndim != 2:
            raise ValueError(
                f"fr.muon: params leaf {flat.paths[i]!r} has shape {tuple(x.shape)}; Muon updates "
                "matrices only (as torch.optim.Muon): select the 2-D leaves with where= (e.g. "
                "where=lambda path, leaf: leaf.ndim == 2) and step the others with another "
                "optimizer such as fr.adamw")


def _ratio(shape: torch.Size, adjust_lr_fn: str | None) -> float:
    """torch.optim.Muon's learning-rate adjustment for an ``A x B`` matrix."""
    rows, cols = shape
    if adjust_lr_fn == "match_rms_adamw":
        return 0.2 * math.sqrt(max(rows, cols))
    return math.sqrt(max(1, rows / cols))


def _orthogonalize(u: torch.Tensor, *, batch: int, coefficients: tuple[float, float, float], steps: int,
                   eps: Any, dtype: torch.dtype) -> torch.Tensor:
    """torch.optim.Muon's Newton–Schulz iteration on matrix ``u`` (after ``batch`` leading
    ensemble dims: then as batched products, which round as each member's own would), in
    bfloat16; the result in ``dtype``, the leaf's."""
    a, b, c = coefficients
    x = u.bfloat16()  # u itself when it is bfloat16 (the buffer): nothing below writes into x
    tall = x.shape[-2] > x.shape[-1]
    if tall:
        x = x.mT
    norm = x.norm() if not batch else torch.linalg.vector_norm(x, dim=(-2, -1), keepdim=True)
    # the spectral norm at most 1
    x = x / (norm.clamp_min(eps.to(norm.dtype)) if isinstance(eps, torch.Tensor) else norm.clamp(min=eps))
    if batch:
        lead = x.shape[:-2]
        x = x.reshape(-1, *x.shape[-2:])
    for _ in range(steps):
        gram = x @ x.mT
        if batch:
            x = torch.baddbmm(x, torch.baddbmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
        else:
            x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    if batch:
        x = x.reshape(*lead, *x.shape[-2:])
    return (x.mT if tall else x).to(dtype)


def _muon(ops: Ops, *, params: Tensors, grads: Tensors, step: Tensors, momentum_buffer: Tensors, lr: Column,
          weight_decay: Column, momentum: Column, eps: Column, decayed: bool, nesterov: bool,
          ns_coefficients: tuple[float, float, float], ns_steps: int, adjust_lr_fn: str | None) -> dict[str, Tensors]:
    # torch.optim.Muon's step, one leaf list at a time
    step = ops.add_(step, 1.0)
    momentum_buffer = ops.lerp_(momentum_buffer, grads, derive(lambda m: 1 - m, momentum))
    # the Nesterov look-ahead lerp(g, B, μ) is a fresh tensor: grads are only read
    update = ops.lerp_(grads, momentum_buffer, momentum) if nesterov else momentum_buffer
    n = len(params)
    ortho = [_orthogonalize(u, batch=ops.batch, coefficients=ns_coefficients, steps=ns_steps, eps=e, dtype=w.dtype)
             for u, e, w in zip(update, each(eps, n), params)]
    if decayed:
        params = ops.mul_(params, derive(lambda a, wd: 1 - a * wd, lr, weight_decay))
    scaled = [-a * _ratio(w.shape[-2:], adjust_lr_fn) for a, w in zip(each(lr, n), params)]
    params = ops.add_(params, ortho, scaled)
    return {"params": params, "step": step, "momentum_buffer": momentum_buffer}


muon = Muon()
