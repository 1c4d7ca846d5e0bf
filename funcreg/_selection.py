"""Turning a ``where=`` argument into one bool per leaf (see :mod:`funcreg.select`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import optree
import torch

from funcreg._tree import NAMESPACE, Flat, leaves_like

Where = Callable[[str, torch.Tensor], bool] | Any | None


def selection(flat: Flat, where: Where, *, allow_empty: bool = False) -> list[bool]:
    """One bool per leaf of ``flat``: does ``where`` select it?

    Raises ``TypeError`` for a ``where`` of the wrong kind or one that selects a
    non-floating-point leaf, and ``ValueError`` when it selects nothing.
    """
    if where is None:
        mask = [leaf.is_floating_point() for leaf in flat.leaves]
    elif callable(where):
        mask = []
        for path, leaf in zip(flat.paths, flat.leaves):
            chosen = where(path, leaf)
            if not isinstance(chosen, bool):
                raise TypeError(
                    f"where returned a {type(chosen).__name__} for leaf {path!r}; it must "
                    "return a Python bool"
                )
            mask.append(chosen)
    else:
        if isinstance(where, str) or (isinstance(where, (list, tuple)) and where
                                      and all(isinstance(w, str) for w in where)):
            patterns = ", ".join(repr(w) for w in ([where] if isinstance(where, str) else where))
            raise TypeError(
                f"where is a {'str' if isinstance(where, str) else f'{type(where).__name__} of str'}; "
                "a where is a selector, a "
                "callable (path, leaf) -> bool, or a tree of bools shaped like params: to "
                f"select leaves by path, pass where=fr.select.only({patterns}) (regular "
                "expressions, searched in each leaf's path)"
            )
        if isinstance(where, (bytes, torch.Tensor)) or (
            # a lone number or object is no pytree of bools (a lone bool may be one)
            not isinstance(where, bool)
            and optree.tree_is_leaf(where, none_is_leaf=True, namespace=NAMESPACE)
        ):
            raise TypeError(
                "where must be None, a callable (path, leaf) -> bool, or a pytree of bools "
                f"shaped like params, not a {type(where).__name__}"
            )
        mask = leaves_like(flat, where, "where", ". A where tree holds a bool for every leaf of params; "
                           "to select some leaves by path, pass where=fr.select.only(...)")
        for path, chosen in zip(flat.paths, mask):
            if not isinstance(chosen, bool):
                raise TypeError(
                    f"where leaf {path!r} is a {type(chosen).__name__}; a where pytree "
                    "holds Python bools"
                )
    for path, leaf, chosen in zip(flat.paths, flat.leaves, mask):
        if chosen and not leaf.is_floating_point():
            raise TypeError(
                f"where selects leaf {path!r} of dtype {leaf.dtype}; only floating-point "
                "leaves can be regularized or optimized"
            )
    if not allow_empty and not any(mask):
        raise ValueError(
            "where selects no leaf of params"
            + (f" (leaves: {', '.join(flat.paths[:8])}{', ...' if len(flat.paths) > 8 else ''})"
               if flat.paths else " (params is empty)")
            + "; see fr.select.describe(params, where)"
        )
    return mask
