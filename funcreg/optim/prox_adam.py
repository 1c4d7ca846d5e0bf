"""Proximal Adam: a minibatch step for penalties with a prox, with the fixed points of
the full problem."""

from __future__ import annotations

from typing import Any

import optree
import torch

from funcreg.optim.adam import adam
from funcreg.penalties import Penalty


def _map(fn: Any, tree: Any, *rest: Any) -> Any:
    return optree.tree_map(fn, tree, *rest, namespace="torch")


class ProxAdam:
    r"""Adam's step followed by the penalty's prox in Adam's metric: a stateless
    minibatch step for :math:`f(w) + P_\lambda(w)`, ``init``/``step`` like ``fr.adam``.

    With :math:`\hat m = m/(1-\beta_1^t)` Adam's bias-corrected first moment (an average
    of recent gradients) and :math:`\eta = \gamma/(\sqrt{\hat v}+\epsilon)` its
    per-element step per unit of :math:`\hat m` (``fr.adam.step_size(state, lr=lr)``
    times :math:`1-\beta_1^t`, so that Adam's own move is :math:`\eta\odot\hat m`):

    .. math::
        w \leftarrow \operatorname{prox}_{\eta P_\lambda}\bigl(w - \eta \odot \hat m\bigr)

    * for a separable family (``fr.l1``, ``fr.elastic_net``, ``fr.mcp``, ``fr.scad``
      and the like) :math:`\eta` is per element: this is ``fr.adam.step`` followed by the prox
      with step :math:`\eta` (``fr.adam.step_size``'s recipe takes
      :math:`\eta/(1-\beta_1^t)`, a threshold larger by that factor in the first steps;
      the two agree once :math:`\beta_1^t` is negligible);
    * for a family whose prox takes one step per leaf (``fr.group_lasso``,
      ``fr.sparse_group_lasso``, ``fr.nuclear_norm``) the prox of a group in a diagonal
      metric has no closed form, so every leaf takes one step, the mean of Adam's
      per-element steps over the leaf, for the gradient step and the prox alike.

    **Why a prox after a momentum step is sound here.** At a fixed point the moments stop
    changing, so :math:`\hat m = \nabla f(w)` and
    :math:`w = \operatorname{prox}_{\eta P}(w - \eta\nabla f(w))`, which is exactly the
    first-order optimality condition :math:`0 \in \nabla f(w) + \partial P_\lambda(w)`
    (the diagonal :math:`\eta` scales both terms alike). Two things would break this, and
    are avoided: a momentum buffer that sums rather than averages (torch.optim.SGD's
    undampened buffer tends to :math:`\nabla f/(1-\beta)`, which would shrink λ by
    :math:`1-\beta`), and a prox step that differs from the gradient step (which is why
    grouped families use one step per leaf for both). With minibatch gradients the
    iterate only hovers around such a point unless ``lr`` decreases; ``fr.path`` halves
    it when the full-data criterion stops improving (see :func:`fr.path`).

    The state is ``fr.adam``'s (``{"step", "exp_avg", "exp_avg_sq"}``).

    Reference: the proximal Adam of Yun, Lozano & Yang, "Adaptive proximal gradient
    methods for structured neural networks", NeurIPS 2021 (ProxGen).

    >>> import torch, funcreg as fr
    >>> params, grads = {"w": torch.tensor([1.0, -0.05])}, {"w": torch.tensor([0.5, -2.0])}
    >>> state = fr.prox_adam.init(params)
    >>> params, state = fr.prox_adam.step(params, grads, state, lr=0.1, penalty=fr.l1, lam=2.0)
    >>> params["w"]
    tensor([0.5000, 0.0000])
    """

    name = "prox_adam"

    def init(self, params: Any) -> dict[str, Any]:
        """Zero moments and step counts, as ``fr.adam.init(params)``.

        Args:
            params: the parameter tree.

        Returns:
            The state: a dict of trees like params (``step`` holds 0-d counts), fresh
            tensors on each leaf's device.

        Raises:
            TypeError: a leaf that is not a floating-point tensor (named).
        """
        return adam.init(params)

    def step(
        self,
        params: Any,
        grads: Any,
        state: dict[str, Any],
        *,
        lr: Any,
        penalty: Penalty,
        lam: Any,
        where: Any = None,
        betas: tuple[Any, Any] = (0.9, 0.999),
        eps: Any = 1e-8,
        **options: Any,
    ) -> tuple[Any, dict[str, Any]]:
        """One proximal Adam step: returns ``(new_params, new_state)``; nothing is mutated.

        Args:
            params, grads, state: as for ``fr.adam.step`` (grads of the smooth part only).
            lr, betas, eps: Adam's, as for ``fr.adam.step``.
            penalty: the family whose prox is applied (``fr.l1``, ``fr.group_lasso``, ...).
            lam: its λ (a number, or a tensor batched under ``vmap``).
            where: the penalized leaves.
            **options: the family's keyword arguments (``dim=``, ``l1_ratio=``, ...).

        Returns:
            ``(new_params, new_state)``: the Adam step followed by the prox in Adam's
            metric, and Adam's new state.

        Raises:
            TypeError: ``penalty`` is not a family; whatever ``fr.adam.step`` and the
                family's ``prox`` raise for bad input (before anything is computed).
        """
        if not isinstance(penalty, Penalty):
            raise TypeError(f"penalty must be a funcreg penalty family (fr.l1, ...), not {penalty!r}")
        moved, state = adam.step(params, grads, state, lr=lr, betas=betas, eps=eps)
        size = adam_metric(state, lr=lr, betas=betas, eps=eps, elementwise=penalty.elementwise)
        if penalty.elementwise:
            return penalty.prox(moved, lam, size, where=where, **options), state
        corr = _corrections(state, betas[0])
        mhat = _map(lambda m, c: m / c.to(m.dtype), state["exp_avg"], corr)
        stepped = _map(lambda w, m, e: w - e * m, params, mhat, size)
        return penalty.prox(stepped, lam, size, where=where, **options), state

prox_adam = ProxAdam()


def _corrections(state: dict[str, Any], beta1: Any) -> Any:
    """1 − β₁ᵗ per leaf, from the state's step counts, in float64 (cast where used)."""
    b = torch.as_tensor(beta1, dtype=torch.float64)
    return _map(lambda t: 1 - b.to(t.device) ** t.to(torch.float64), state["step"])


def adam_metric(
    state: dict[str, Any], *, lr: Any, betas: tuple[Any, Any] = (0.9, 0.999), eps: Any = 1e-8,
    elementwise: bool = True,
) -> Any:
    """Adam's step per unit of the averaged gradient m̂, γ/(√v̂ + ε): ``fr.adam.step_size``
    times 1 − β₁ᵗ, per element, or (``elementwise=False``) its mean over each leaf."""
    corr = _corrections(state, betas[0])
    size = _map(lambda e, c: e * c.to(e.dtype), adam.step_size(state, lr=lr, betas=betas, eps=eps), corr)
    return size if elementwise else _map(lambda e: e.mean(), size)
