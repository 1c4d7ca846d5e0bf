"""Rewriting the selected leaves of a params tree: a prox, a projection.

One path for all of them: choose the implementation, refuse a donation that cannot be
honoured, run the leaf-list math, write donated results into place, rebuild the tree.
"""

from __future__ import annotations

import itertools
from typing import Any, Callable, Iterable, Sequence

import torch

from funcreg import _dispatch, _donation, _ops
from funcreg._tree import Flat


def rewrite(
    flat: Flat,
    sel: list[int],
    body: Callable[..., list[torch.Tensor]],
    cols: Sequence[list[Any]],
    names: Sequence[str],
    *,
    donate: bool,
    elementwise: bool = False,
) -> Any:
    """``body(ops, ws, *cols)`` on the selected leaves ``ws`` of params ``flat``; the other
    leaves pass through. ``cols`` are per-selected-leaf columns, ``names`` what to call
    them in an error. ``donate`` donates params: results go into its selected leaves;
    ``elementwise`` says ``body`` treats every element alike (see :func:`_dispatch.run`)."""
    chosen = set(sel)
    new = apply(
        body, [flat.leaves[i] for i in sel], cols, donate=donate, elementwise=elementwise,
        written=lambda: ((("params", flat.paths[i]), flat.leaves[i]) for i in sel),
        read=lambda: itertools.chain(
            ((("params", p), w) for i, (p, w) in enumerate(zip(flat.paths, flat.leaves))
             if i not in chosen),
            _donation.labelled(flat, sel, cols, names)),
    )
    out = list(flat.leaves)
    for i, w in zip(sel, new):
        out[i] = w
    return flat.unflatten(out)


def apply(
    body: Callable[..., list[torch.Tensor]],
    target: list[torch.Tensor],
    cols: Sequence[Sequence[Any]],
    *,
    donate: bool,
    elementwise: bool,
    written: Callable[[], Iterable[tuple[Any, torch.Tensor]]],
    read: Callable[[], Iterable[tuple[Any, Any]]],
) -> list[torch.Tensor]:
    """``body(ops, target, *cols)``, the new values of ``target``, on the implementation the
    inputs allow; with ``donate``, written into ``target`` itself once the donation is
    checked (``written`` and ``read`` label the tensors for the check, built only then)."""
    fast = _dispatch.use_fast_path(target, *cols)
    in_place = donate and _donation.can_write(target)
    if in_place:
        _donation.check(written(), read())
        if fast:
            target = _ops.Owned(target)
    new = _dispatch.run(body, [target, *cols], target, fast=fast, elementwise=elementwise)
    return _donation.commit(target, new) if in_place else new
