"""Choosing between the fast (multi-tensor) path and the composable (per-leaf) path.

``torch._foreach_*`` kernels have no ``vmap`` batching rule and no functorch support, so
the fast path is taken only when no input tensor (leaf, gradient, state or
hyperparameter) is wrapped by a torch.func transform, none needs autograd, and
``torch.compile`` is not tracing (Inductor fuses the per-leaf ops by itself). Tests can
force either path with :func:`forced`.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterable, Iterator, Literal, Sequence

import torch

from funcreg import _ops, _sharding

Path = Literal["fast", "composable"]
_forced: Path | None = None


@contextlib.contextmanager
def forced(path: Path | None) -> Iterator[None]:
    """Within the block, take ``path`` whatever the inputs (``None``: choose as usual)."""
    global _forced
    if path not in ("fast", "composable", None):
        raise ValueError(f"path must be 'fast', 'composable' or None, not {path!r}")
    previous, _forced = _forced, path
    try:
        yield
    finally:
        _forced = previous


def use_fast_path(*columns: Iterable[Any]) -> bool:
    """Whether ``_foreach_*`` kernels may run on every tensor in ``columns``."""
    if _forced is not None:
        return _forced == "fast"
    if torch.compiler.is_compiling():
        return False
    # A tensor is traced when a torch.func transform wraps it, or autograd records it.
    # This runs on every call, over every leaf and hyperparameter: keep it a tight loop.
    wrapped = torch._C._functorch.is_functorch_wrapped_tensor
    grad_mode = torch.is_grad_enabled()
    tensor = torch.Tensor
    for column in columns:
        for x in column:
            if isinstance(x, tensor) and (wrapped(x) or (grad_mode and x.requires_grad)):
                return False
    return True


def _foreach_for(device: torch.device) -> _ops.Foreach:
    return _ops.FOREACH_CPU if device.type == "cpu" else _ops.FOREACH


#: On the fast path of a donated call, the leaves go to ``body`` in chunks of at most this
#: many elements (or one leaf, if larger), so that its scratch tensors, such as the
#: ``sign(w)`` of an L1 gradient, stay bounded instead of growing with the model.
CHUNK = 1 << 23

#: A donated elementwise call works through a CPU group in blocks of about this many bytes
#: (flat views of its leaves), doing the whole computation of one block while it is in
#: cache: no scratch tensor is larger than a block, and no pass streams a whole leaf
#: through memory only for the next op to stream it again.
BLOCK_BYTES = 1 << 20


def run(
    body: Callable[..., Any],
    columns: Sequence[Sequence[Any]],
    group_by: Sequence[torch.Tensor],
    *,
    fast: bool,
    chunked: bool = True,
    elementwise: bool = False,
) -> Any:
    """``body(ops, *columns)`` on one implementation of :mod:`funcreg._ops`.

    ``body`` returns a list of leaves, or a tuple of such lists, one entry per input
    position. On the fast path it runs once per (device, dtype) group of ``group_by``, as
    torch.optim groups tensors for its foreach kernels (DTensors in groups of their own),
    and the results are put back in order. When a column is owned (donated), groups are
    cut into chunks of at most :data:`CHUNK` elements (unless ``chunked`` is False: a
    fused kernel needs no scratch), and each part keeps its column's ownership. With
    ``elementwise`` (``body`` treats every element alike, and returns one list, the new
    values of the first column) and the first column owned, plain CPU groups go in blocks
    of :data:`BLOCK_BYTES` (flat views; a leaf that cannot be cut goes whole), the results
    written into the first column's leaves; DTensor and CUDA groups go in chunks.
    """
    if not fast:
        return body(_ops.PER_LEAF, *columns)
    # DTensors and plain tensors never share a foreach call ("mixed torch.Tensor and
    # DTensor"); DTensors on different meshes may.
    groups: dict[tuple[torch.device, torch.dtype, bool], list[int]] = {}
    sharded = _sharding.is_dtensor if _sharding.any_dtensor(group_by) else None
    for i, leaf in enumerate(group_by):
        key = (leaf.device, leaf.dtype, sharded is not None and sharded(leaf))
        groups.setdefault(key, []).append(i)
    outputs: list[list[Any]] | None = None
    if elementwise and _ops.owned(columns[0]):
        outputs = [list(columns[0])]
        for key in [k for k in groups if k[0].type == "cpu" and not k[2]]:
            _run_blocked(body, columns, groups.pop(key), group_by)
        if not groups:
            return outputs[0]
    if chunked and any(_ops.owned(col) for col in columns):
        parts = [(key[0], chunk) for key, idx in groups.items() for chunk in _chunks(idx, group_by)]
    else:
        parts = [(key[0], idx) for key, idx in groups.items()]
    if len(parts) == 1 and outputs is None:
        return body(_foreach_for(parts[0][0]), *columns)
    single = False
    for device, idx in parts:
        result = body(_foreach_for(device), *(_ops.like(col, [col[i] for i in idx]) for col in columns))
        single = isinstance(result, list)
        pieces = [result] if single else list(result)
        if outputs is None:
            outputs = [[None] * len(group_by) for _ in pieces]
        for out, piece in zip(outputs, pieces):
            for i, value in zip(idx, piece):
                out[i] = value
    assert outputs is not None
    return outputs[0] if single else tuple(outputs)


def _run_blocked(body: Callable[..., Any], columns: Sequence[Sequence[Any]], idx: list[int],
                 leaves: Sequence[torch.Tensor]) -> None:
    """``body`` over blocks of the leaves ``idx`` of one CPU group, in place in the first
    (owned) column. A tensor shaped like its leaf (a gradient, a per-element λ) is cut as
    the leaf is; a number or a 0-d tensor goes to every block of its leaf; a leaf with a
    strided tensor, or with a value of another shape, goes whole."""
    block = max(1, BLOCK_BYTES // leaves[idx[0]].element_size())
    pieces: list[tuple[int, int | None, int | None]] = []
    for i in idx:
        n = leaves[i].numel()
        tensors = [col[i] for col in columns if isinstance(col[i], torch.Tensor)]
        if all(t.ndim == 0 or (t.shape == leaves[i].shape and t.is_contiguous()) for t in tensors):
            pieces += [(i, a, min(a + block, n)) for a in range(0, n, block)]
        else:  # a strided leaf, or a value that broadcasts, cannot be cut: it goes whole
            pieces.append((i, None, None))
    part: list[tuple[int, int | None, int | None]] = []
    size = 0
    for piece in pieces:
        n = leaves[piece[0]].numel() if piece[1] is None else piece[2] - piece[1]  # type: ignore[operator]
        if part and size + n > block:
            _run_part(body, columns, leaves, part)
            part, size = [], 0
        part.append(piece)
        size += n
    if part:
        _run_part(body, columns, leaves, part)


def _run_part(body: Callable[..., Any], columns: Sequence[Sequence[Any]],
              leaves: Sequence[torch.Tensor], part: list[tuple[int, int | None, int | None]]) -> None:
    def cut(v: Any, i: int, a: int | None, b: int | None) -> Any:
        if a is not None and isinstance(v, torch.Tensor) and v.shape == leaves[i].shape:
            return v.view(-1)[a:b]
        return v

    cols = [_ops.like(col, [cut(col[i], i, a, b) for i, a, b in part]) for col in columns]
    for view, new in zip(cols[0], body(_ops.FOREACH_CPU, *cols)):
        if new is not view:
            view.copy_(new)


def _chunks(idx: list[int], leaves: Sequence[torch.Tensor]) -> Iterator[list[int]]:
    chunk: list[int] = []
    size = 0
    for i in idx:
        n = leaves[i].numel()
        if chunk and size + n > CHUNK:
            yield chunk
            chunk, size = [], 0
        chunk.append(i)
        size += n
    if chunk:
        yield chunk
