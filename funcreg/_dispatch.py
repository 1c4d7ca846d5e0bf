"""Which implementation a call runs on, and running a body over groups of leaves.

* **fast**: ``torch._foreach_*`` (and fused) kernels, once per (device, dtype) group (as
  torch.optim groups tensors; DTensors in groups of their own). A donated call of a body
  with scratch goes in pieces: an elementwise body cuts a CPU leaf larger than
  :data:`BLOCK_BYTES` into flat views (its whole computation while a block is in cache,
  and scratch of one block), any other body goes in chunks of at most :data:`CHUNK`
  elements;
* **composable**: plain per-leaf ops, for ``grad``, ``jacrev``, autograd history and
  ``torch.compile`` (Inductor fuses them by itself);
* **stacked**: under ``vmap`` alone, the fast path on the stacked tensors (:mod:`funcreg._stacked`).

Tests force a route with :func:`forced`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any, Literal, NamedTuple

import torch

from funcreg import _ops, _sharding

Path = Literal["fast", "composable"]
_forced: Path | None = None

#: a donated non-elementwise call goes through a group in chunks of at most this many
#: elements (or one leaf, if larger), so that its scratch stays bounded
CHUNK = 1 << 23

#: a donated elementwise call goes through a CPU group in blocks of about this many bytes
BLOCK_BYTES = 1 << 20


@contextlib.contextmanager
def forced(path: Path | None) -> Iterator[None]:
    """Within the block, take ``path`` whatever the inputs (``None``: choose as usual;
    "composable" also keeps ``vmap`` off the stacked path)."""
    global _forced
    if path not in ("fast", "composable", None):
        raise ValueError(f"path must be 'fast', 'composable' or None, not {path!r}")
    previous, _forced = _forced, path
    try:
        yield
    finally:
        _forced = previous


def route(*, transformed: bool, traced: bool, stackable: bool) -> str:
    """"fast", "composable" or "stacked" for a call: ``transformed`` when torch.func or
    Dynamo is active, ``traced`` when an input records autograd history, ``stackable`` when
    the call can take the stacked path (under ``vmap`` alone)."""
    if _forced is not None:
        return _forced
    if transformed or traced:
        return "stacked" if stackable and not traced else "composable"
    return "fast"


Piece = list[tuple[int, "int | None", "int | None"]]  # (leaf, start, end): a leaf or a flat slice


class Group(NamedTuple):
    """Leaves ``idx`` (positions in the list the body gets) of one (device, dtype); ``fused``:
    all contiguous plain tensors on a real device, what torch's fused kernels take;
    ``pieces``: how a donated call cuts it (``None``: whole)."""

    idx: list[int]
    device: torch.device
    dtype: torch.dtype
    dtensor: bool
    fused: bool
    pieces: list[Piece] | None

    def ops(self, batch: int = 0) -> _ops.Foreach:
        cls = _ops.ForeachCPU if self.device.type == "cpu" else _ops.Foreach
        return cls(fused=self.fused, batch=batch, dtensor=self.dtensor)


def groups(leaves: list[torch.Tensor], others: list[list[Any]], *, donate: bool, elementwise: bool) -> list[Group]:
    """Group ``leaves`` (with ``others``, the lists the body gets beside them) for the fast
    path, and cut a donated call into pieces (``donate``)."""
    keyed: dict[tuple[torch.device, torch.dtype, bool], list[int]] = {}
    sharded = _sharding.any_dtensor(leaves)
    for k, x in enumerate(leaves):
        keyed.setdefault((x.device, x.dtype, sharded and _sharding.is_dtensor(x)), []).append(k)
    out = []
    for (device, dtype, dtensor), idx in keyed.items():
        beside = [col[k] for col in (leaves, *others) for k in idx]
        fused = device.type != "meta" and all(t.is_contiguous() for t in beside if isinstance(t, torch.Tensor))
        pieces = None
        if donate and elementwise and device.type == "cpu" and not dtensor:
            pieces = _blocks(idx, leaves, others)
        elif donate:
            pieces = [[]]  # chunks
            size = 0
            for k in idx:
                if pieces[-1] and size + leaves[k].numel() > CHUNK:
                    pieces.append([])
                    size = 0
                pieces[-1].append((k, None, None))
                size += leaves[k].numel()
        out.append(Group(idx, device, dtype, dtensor, fused, pieces))
    return out


def _blocks(idx: list[int], leaves: list[torch.Tensor], others: list[list[Any]]) -> list[Piece] | None:
    """Pieces of about :data:`BLOCK_BYTES`: a leaf larger than that is cut into flat slices
    when every tensor beside it has its shape and is contiguous (or is 0-d), else it goes
    whole; the smaller leaves go together in one piece (the per-leaf CPU ops finish each
    while it is in cache)."""
    block = max(1, BLOCK_BYTES // leaves[idx[0]].element_size())
    small: Piece = []
    blocks: list[Piece] = []
    for k in idx:
        x, n = leaves[k], leaves[k].numel()
        beside = [col[k] for col in (leaves, *others) if isinstance(col[k], torch.Tensor)]
        if n <= block or not all(t.ndim == 0 or (t.shape == x.shape and t.is_contiguous()) for t in beside):
            small.append((k, None, None))
        else:
            blocks += [[(k, a, min(a + block, n))] for a in range(0, n, block)]
    return ([small] if small else []) + blocks if blocks else None


def run_fast(body: Callable[..., Any], groups: list[Group], columns: dict[str, list[Any]],
             hypers: Callable[[Group], dict[str, Any]], static: dict[str, Any],
             writes: tuple[str, ...], owned: bool, n: int, batch: int = 0) -> dict[str, list[Any]]:
    """``body`` once per group (or piece) of the fast path. ``columns``: the per-leaf lists
    by keyword, ``n`` long; ``hypers(group)``: the hyperparameter columns of a group;
    ``writes``: the columns the body returns new values for (it may write into them when
    ``owned``). Returns those new values by name, in leaf order."""
    if len(groups) == 1 and len(groups[0].idx) == n and groups[0].pieces is None:  # the common case
        g = groups[0]
        cols = {name: _ops.Owned(col) if owned and name in writes else col for name, col in columns.items()}
        return named(body(g.ops(batch), **cols, **hypers(g), **static), writes)
    out = {name: list(columns[name]) if name in columns else [None] * n for name in writes}
    for g in groups:
        ops, h = g.ops(batch), _at(g.idx, hypers, g)
        at = {k: j for j, k in enumerate(g.idx)}
        for piece in g.pieces or [[(k, None, None) for k in g.idx]]:
            cols = {name: [_cut(col[k], a, b) for k, a, b in piece] for name, col in columns.items()}
            hp = {name: [_cut(v[at[k]], a, b) for k, a, b in piece] if isinstance(v, list) else v
                  for name, v in h.items()}
            cols = {name: _ops.Owned(col) if owned and name in writes else col for name, col in cols.items()}
            result = named(_at([k for k, _, _ in piece], body, ops, **cols, **hp, **static), writes)
            for name, values in result.items():
                if values is cols.get(name):
                    continue  # written in place: the leaves are already the results
                for (k, a, _), view, v in zip(piece, cols.get(name, [None] * len(piece)), values):
                    if a is None:
                        out[name][k] = v
                    elif v is not view:  # a block of a leaf: its result goes into the slice
                        view.copy_(v)
    return out


def _at(idx: list[int], fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``fn(...)``, its :class:`funcreg._engine.LeafError` renumbered from the leaves it
    was given to ``idx``."""
    from funcreg._engine import LeafError

    try:
        return fn(*args, **kwargs)
    except LeafError as e:
        raise LeafError(idx[e.k], str(e)) from None


def named(result: Any, writes: tuple[str, ...]) -> dict[str, list[Any]]:
    """A body's result by written role (a body that writes one role may return its list)."""
    return result if isinstance(result, dict) else {writes[0]: result}


def _cut(x: Any, a: int | None, b: int | None) -> Any:
    return x.view(-1)[a:b] if a is not None and isinstance(x, torch.Tensor) and x.ndim else x
