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


def run(
    body: Callable[..., Any],
    columns: Sequence[Sequence[Any]],
    group_by: Sequence[torch.Tensor],
    *,
    fast: bool,
    chunked: bool = True,
) -> Any:
    """``body(ops, *columns)`` on one implementation of :mod:`funcreg._ops`.

    ``body`` returns a list of leaves, or a tuple of such lists, one entry per input
    position. On the fast path it runs once per (device, dtype) group of ``group_by``, as
    torch.optim groups tensors for its foreach kernels (DTensors in groups of their own),
    and the results are put back in order. When a column is owned (donated), groups are
    cut into chunks of at most :data:`CHUNK` elements (unless ``chunked`` is False: a
    fused kernel needs no scratch), and each part keeps its column's ownership.
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
    if chunked and any(_ops.owned(col) for col in columns):
        parts = [(key[0], chunk) for key, idx in groups.items() for chunk in _chunks(idx, group_by)]
    else:
        parts = [(key[0], idx) for key, idx in groups.items()]
    if len(parts) == 1:
        return body(_foreach_for(parts[0][0]), *columns)
    outputs: list[list[Any]] | None = None
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
