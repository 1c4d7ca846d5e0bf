"""Helpers for ensembles over λ: K copies of a model trained in one ``vmap``.

The pattern (see ``examples/lambda_sweep.py``)::

    state = fr.replicate(fr.sgd.init(params), K)   # leaves gain a leading dim of size K
    params = fr.replicate(params, K)
    step = torch.func.vmap(train_step)             # train_step sees one member at a time
    params, state, active = step(params, state, lams, active)

Inside ``train_step``, :func:`converged` and :func:`update_where` let a member that has
converged stop moving while the others go on.
"""

from __future__ import annotations

from typing import Any

import torch

from funcreg._tree import flatten, leaves_like, require_tensors


def replicate(tree: Any, k: int) -> Any:
    """``k`` independent copies of every leaf, stacked along a new leading dimension.

    The result is what ``torch.func.stack_module_state`` gives for ``k`` identical
    modules, for any params tree (and for optimizer state: ``None`` leaves stay ``None``).

    Args:
        tree: a pytree of tensors (params, or optimizer state with ``None`` leaves).
        k: the number of copies, a positive int.

    Returns:
        A tree like ``tree`` whose leaves have shape ``(k, *leaf.shape)``.

    Raises:
        ValueError: ``k`` is not a positive int.
        TypeError: a leaf that is neither a tensor nor ``None`` (named).

    >>> import torch, funcreg as fr
    >>> fr.replicate({"w": torch.tensor([1.0, 2.0])}, 3)["w"].shape
    torch.Size([3, 2])
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    flat = flatten(tree, "tree")
    out: list[torch.Tensor | None] = []
    for path, leaf in zip(flat.paths, flat.leaves):
        if leaf is None:
            out.append(None)
        elif isinstance(leaf, torch.Tensor):
            out.append(leaf.detach().unsqueeze(0).repeat(k, *([1] * leaf.ndim)))
        else:
            raise TypeError(f"tree leaf {path!r} is a {type(leaf).__name__}, not a tensor")
    return flat.unflatten(out)


def update_where(active: Any, new: Any, old: Any) -> Any:
    r"""``new`` where ``active``, ``old`` elsewhere, leaf by leaf: a frozen member keeps ``old``.

    ``active`` is a Python bool or a bool tensor: 0-d inside ``vmap`` (one member), or of
    shape ``(K,)`` outside it, matched against each leaf's leading dimension. A leaf that
    is ``None`` in ``old`` (a momentum buffer not yet created) is taken from ``new``.

    Args:
        active: which members take ``new``: a Python bool, a 0-d bool tensor (inside
            ``vmap``) or a ``(K,)`` bool tensor (outside it).
        new: the updated tree.
        old: the tree a frozen member keeps, like ``new``.

    Returns:
        A tree like ``new``.

    Raises:
        TypeError: ``active`` of another type or rank; a ``new`` leaf that is not a tensor
            where ``old`` holds one (named).
        ValueError: a ``(K,)`` ``active`` whose K is not a leaf's leading size (named).

    >>> import torch, funcreg as fr
    >>> old, new = {"w": torch.zeros(2, 3)}, {"w": torch.ones(2, 3)}
    >>> fr.update_where(torch.tensor([True, False]), new, old)["w"]
    tensor([[1., 1., 1.],
            [0., 0., 0.]])
    """
    flat = flatten(old, "old")
    news = leaves_like(flat, new, "new")
    if isinstance(active, bool):
        return flat.unflatten([n if active or o is None else o for o, n in zip(flat.leaves, news)])
    if not isinstance(active, torch.Tensor) or active.dtype != torch.bool or active.ndim > 1:
        raise TypeError("active must be a Python bool or a 0-d or 1-d bool tensor")
    out = []
    for path, o, n in zip(flat.paths, flat.leaves, news):
        if o is None:
            out.append(n)
            continue
        if not isinstance(n, torch.Tensor):
            raise TypeError(f"new leaf {path!r} is a {type(n).__name__}, but old holds a tensor")
        _same_shape(path, o, n)
        if active.ndim == 1:
            if o.ndim == 0 or o.shape[0] != active.shape[0]:
                raise ValueError(
                    f"active has {active.shape[0]} members but leaf {path!r} has shape "
                    f"{tuple(o.shape)}"
                )
            mask = active.reshape(-1, *([1] * (o.ndim - 1)))
        else:
            mask = active
        out.append(torch.where(mask.to(o.device), n, o))
    return flat.unflatten(out)


def converged(old: Any, new: Any, *, rtol: float = 1e-6, atol: float = 0.0) -> torch.Tensor:
    r"""Whether one member's params stopped moving:
    :math:`\max |w_{new} - w_{old}| \le \mathrm{atol} + \mathrm{rtol}\cdot\max |w_{old}|`
    over all leaves. Call it inside ``vmap`` (one member); it returns a 0-d bool tensor.

    Args:
        old: the params before the step.
        new: the params after it, like ``old``.
        rtol: the tolerance relative to the largest ``|old|`` entry.
        atol: the absolute tolerance.

    Returns:
        A 0-d bool tensor (batched under ``vmap``).

    Raises:
        TypeError: a ``new`` leaf that is not a tensor where ``old`` holds one (named).
        ValueError: leaves whose shapes differ (named), or no non-empty leaf.

    >>> import torch, funcreg as fr
    >>> fr.converged({"w": torch.tensor([1.0])}, {"w": torch.tensor([1.0 + 1e-9])})
    tensor(True)
    """
    flat = flatten(old, "old")
    require_tensors(flat, "old")
    news = leaves_like(flat, new, "new")
    for path, o, n in zip(flat.paths, flat.leaves, news):
        if not isinstance(n, torch.Tensor):
            raise TypeError(f"new leaf {path!r} is a {type(n).__name__}, but old holds a tensor")
        _same_shape(path, o, n)
    pairs = [(o, n) for o, n in zip(flat.leaves, news) if o.numel()]
    if not pairs:
        raise ValueError("converged needs at least one non-empty leaf")
    # float32 so that leaves of different dtypes can be stacked
    change = torch.stack([(n - o).abs().amax().float() for o, n in pairs]).amax()
    scale = torch.stack([o.abs().amax().float() for o, _ in pairs]).amax()
    return change <= atol + rtol * scale


def _same_shape(path: str, old: torch.Tensor, new: torch.Tensor) -> None:
    """``new`` must have ``old``'s shape: a broadcast between them would be a silent error."""
    if new.shape != old.shape:
        raise ValueError(f"new leaf {path!r} has shape {tuple(new.shape)} but old has shape "
                         f"{tuple(old.shape)}")
