"""A prox after every ``optimizer.step()``: the classic ``nn.Module`` + ``torch.optim`` loop."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from funcreg._tree import flatten


def after_step(
    optimizer: torch.optim.Optimizer,
    model: nn.Module,
    prox: Callable[[dict[str, torch.Tensor]], Any],
) -> RemovableHandle:
    """Run ``prox`` on ``model``'s own parameters after every ``optimizer.step()``.

    Registers a post-step hook on ``optimizer`` (``register_step_post_hook``), so it runs
    under any trainer that calls ``optimizer.step()``, a hand-written loop or a framework's.
    After each step the hook calls ``prox(params)`` with
    ``params = {name: p.detach() for name, p in model.named_parameters()}``: the module's
    own storage, which a prox called with ``donate=True`` writes in place (a proximal
    gradient step, with the prox's step the optimizer's learning rate, is then the
    optimizer's step followed by the prox). If ``prox`` returns other tensors (a pure prox),
    the hook copies them into the parameters, after checking every leaf's shape.

    Args:
        optimizer: the ``torch.optim`` optimizer that updates ``model``.
        model: the module whose parameters ``prox`` reads and writes.
        prox: ``params -> params``; it reads what it needs of the optimizer itself (its
            learning rate: ``optimizer.param_groups[0]["lr"]``, which a scheduler changes).

    Returns:
        The hook's handle: ``handle.remove()`` stops it.

    Raises:
        TypeError: ``model`` is not an ``nn.Module`` or ``prox`` not callable; at a step,
            ``prox`` returned a tree without a tensor for one of the parameters.
        ValueError: at a step, a leaf ``prox`` returned has another shape than its
            parameter (named), raised before any parameter is written.

    >>> import torch, funcreg as fr
    >>> model = torch.nn.Linear(2, 1)
    >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
    >>> def clip(params):  # a stand-in for fr.group_lasso.prox(..., donate=True)
    ...     return {k: v.clamp_(-0.5, 0.5) for k, v in params.items()}
    >>> handle = fr.prune.after_step(opt, model, clip)
    >>> model(torch.ones(1, 2)).sum().mul(-100).backward()
    >>> opt.step()
    >>> bool(model.weight.abs().max() <= 0.5)
    True
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, not {type(model).__name__}")
    if not callable(prox):
        raise TypeError(f"prox must be callable, not {type(prox).__name__}")

    def hook(opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        with torch.no_grad():
            live = {name: p.detach() for name, p in model.named_parameters()}
            out = prox(live)
            flat = flatten(out, "what prox returned")
            got = dict(zip(flat.paths, flat.leaves))
            writes = []
            for name, p in live.items():
                q = got.get(name)
                if not isinstance(q, torch.Tensor):
                    raise TypeError(f"prox returned no tensor for parameter {name!r}")
                if q.shape != p.shape:
                    raise ValueError(f"prox returned shape {tuple(q.shape)} for parameter "
                                     f"{name!r} of shape {tuple(p.shape)}")
                if q.data_ptr() != p.data_ptr():
                    writes.append((p, q))
            for p, q in writes:
                p.copy_(q)

    return optimizer.register_step_post_hook(hook)
