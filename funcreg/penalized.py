"""Penalized losses: a task loss plus penalties, as one function torch.func can transform."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch


def penalized(
    loss_fn: Callable[..., Any], *penalty_fns: Callable[[Any], torch.Tensor]
) -> Callable[..., Any]:
    r"""``loss_fn`` plus penalties: :math:`f(\theta, \ldots) + \sum_k P_k(\theta)`.

    The result has ``loss_fn``'s signature, with params first; each ``penalty_fn`` takes
    the params alone. If ``loss_fn`` returns ``(loss, aux)``, the penalties are added to
    ``loss`` and ``aux`` passes through, so ``torch.func.grad(..., has_aux=True)`` works.
    λ stays a free variable of the penalty function, so it can be a tensor batched by
    ``vmap``:

    Args:
        loss_fn: ``loss_fn(params, *args, **kwargs)``, returning a loss or ``(loss, aux)``.
        *penalty_fns: functions of the params alone, each returning a 0-d tensor.

    Returns:
        ``penalized_loss(params, *args, **kwargs)``, with ``loss_fn``'s signature.

    Raises:
        TypeError: ``loss_fn`` or a penalty function is not callable; at call time, a
            ``loss_fn`` returning a tuple that is not a pair.

    >>> import torch, funcreg as fr
    >>> def mse(params, x, y):
    ...     return ((x @ params["w"] - y) ** 2).mean()
    >>> loss = fr.penalized(mse, lambda p: fr.l1(p, 0.1))
    >>> params = {"w": torch.ones(3)}
    >>> x, y = torch.eye(3), torch.zeros(3)
    >>> loss(params, x, y)
    tensor(1.3000)
    >>> torch.func.grad(loss)(params, x, y)["w"]
    tensor([0.7667, 0.7667, 0.7667])
    """
    for k, fn in enumerate((loss_fn, *penalty_fns)):
        if not callable(fn):
            what = "loss_fn" if k == 0 else f"penalty_fns[{k - 1}]"
            raise TypeError(f"{what} must be callable, not {type(fn).__name__}")

    @functools.wraps(loss_fn)
    def penalized_loss(params: Any, *args: Any, **kwargs: Any) -> Any:
        out = loss_fn(params, *args, **kwargs)
        penalty = sum(fn(params) for fn in penalty_fns)
        if isinstance(out, tuple):
            if len(out) != 2:
                raise TypeError(
                    "loss_fn must return a loss or a (loss, aux) pair, got a tuple of "
                    f"{len(out)}"
                )
            return out[0] + penalty, out[1]
        return out + penalty

    return penalized_loss
