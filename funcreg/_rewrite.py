"""Rewriting the selected leaves of a params tree: a prox, a projection.

One path for all of them: choose the implementation, refuse a donation that cannot be
honoured, run the leaf-list math, write donated results into place, rebuild the tree.
"""

from __future__ import annotations

import itertools
from typing import Any, Callable, Iterator, Sequence

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
    ws = [flat.leaves[i] for i in sel]
    fast = _dispatch.use_fast_path(ws, *cols)
    in_place = donate and _donation.writable(ws)
    if in_place:
        written = set(sel)
        _donation.check(
            ((("params", flat.paths[i]), flat.leaves[i]) for i in sel),
            itertools.chain(
                ((("params", p), w) for i, (p, w) in enumerate(zip(flat.paths, flat.leaves))
                 if i not in written),
                hyper_reads(flat, sel, cols, names),
            ),
        )
        if fast:
            ws = _ops.Owned(ws)
    new = _dispatch.run(body, [ws, *cols], ws, fast=fast, elementwise=elementwise)
    if in_place:
        new = _donation.commit(ws, new)
    out = list(flat.leaves)
    for i, w in zip(sel, new):
        out[i] = w
    return flat.unflatten(out)


def hyper_reads(
    flat: Flat, idx: list[int], cols: Sequence[list[Any]], names: Sequence[str]
) -> Iterator[tuple[tuple[str, str], torch.Tensor]]:
    """The tensors among per-leaf columns (hyperparameters, anchors), labelled for errors."""
    seen: set[int] = set()
    for k, col in enumerate(cols):
        name = names[k] if k < len(names) else "an option"
        for i, v in zip(idx, col):
            if isinstance(v, torch.Tensor) and id(v) not in seen:
                seen.add(id(v))
                yield (name, flat.paths[i]), v
