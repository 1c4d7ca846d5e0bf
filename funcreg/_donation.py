"""Donation: the checks before a call writes into the inputs it was given, and the write
(docs/design.md, "Ownership and donation"). Every donating operation (the engine's, and
``fr.distributed.all_reduce``) goes through this one protocol.

A call made with ``donate=True`` may put its results into the storage of the inputs it
donates: on the fast path the family math writes into them directly
(:class:`funcreg._ops.Owned`), elsewhere :func:`commit` copies the results in. Before
anything is written, :func:`written_spans` and :func:`check_reads` refuse a donation that
cannot be honoured: a written leaf that requires grad in grad mode, an inference tensor,
one whose elements overlap each other (an expanded view), or whose memory overlaps
another written leaf or any tensor the call reads (byte ranges: interleaved views of one
buffer count). Errors name the leaf.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from typing import NamedTuple

import torch

from funcreg import _sharding

_functorch = torch._C._functorch

Label = tuple[str, "str | None"]  # (what: "params", "state['exp_avg']", "lr"...; leaf path)


class Spans(NamedTuple):
    """The byte ranges of the written leaves, sorted and disjoint, for :func:`check_reads`."""

    starts: list[int]
    ends: list[int]
    labels: list[Label]


def written_spans(written: Iterable[tuple[Label, torch.Tensor]]) -> Spans:
    """Check the leaves a donated call will overwrite; raises ``ValueError`` naming the leaf."""
    grad_on, compiling = torch.is_grad_enabled(), torch.compiler.is_compiling()
    inference = compiling or torch.is_inference_mode_enabled()  # Dynamo traces neither
    spans: list[tuple[int, int, Label]] = []
    for label, t in written:
        if grad_on and t.requires_grad:
            raise ValueError(
                f"cannot donate {_name(label)}: it requires grad and grad mode is on, so "
                "writing into it would corrupt autograd; donate detached tensors "
                "({k: p.detach() for k, p in model.named_parameters()}) or call under "
                "torch.no_grad()")
        if compiling:
            continue  # traced tensors have no addresses to compare
        if not inference and t.is_inference():
            raise ValueError(
                f"cannot donate {_name(label)}: it is an inference tensor, which only code "
                "under torch.inference_mode() may write; donate a .clone() of it or call "
                "under torch.inference_mode()")
        local = _local(t)  # under vmap, the stacked tensor: an unbatched output of vmap is expanded
        span = _span(local)
        if span is None:
            continue  # empty and meta tensors have no memory
        if span[2] and _may_overlap_itself(local):
            raise ValueError(
                f"cannot donate {_name(label)}: its elements may overlap in memory (an "
                "expanded, stride-0 or as_strided view), so one write could land on several "
                "of them; donate a .clone() of it")
        spans.append((span[0], span[1], label))
    spans.sort(key=lambda s: s[0])
    for (_, end, first), (start, _, second) in zip(spans, spans[1:]):
        if start < end:
            raise _shared(second, first)
    return Spans([s for s, _, _ in spans], [e for _, e, _ in spans], [label for _, _, label in spans])


def check_reads(spans: Spans, read: Iterable[tuple[Label, object]]) -> None:
    """Refuse a donation whose written memory a tensor in ``read`` overlaps, and a read
    tensor that requires grad in grad mode (its history would reach the donated tensors)."""
    grad_on = torch.is_grad_enabled()
    for label, t in read:
        if not isinstance(t, torch.Tensor):
            continue
        if grad_on and t.requires_grad:
            raise ValueError(
                f"cannot donate: {_name(label)} requires grad and grad mode is on, so the "
                "results would carry autograd history into the donated tensors; detach it, "
                "call under torch.no_grad(), or use donate=False")
        span = _span(_local(t)) if spans.starts else None
        if span is not None:
            k = bisect.bisect_left(spans.starts, span[1]) - 1  # the last written span starting before its end
            if k >= 0 and spans.ends[k] > span[0]:
                raise _shared(spans.labels[k], label)


def commit(donated: Sequence[torch.Tensor], results: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Put ``results`` into ``donated`` where they are not already there; return ``donated``."""
    for d, r in zip(donated, results):
        if r is not d:
            d.copy_(r)
    return list(donated)


def _shared(donated: Label, other: Label) -> ValueError:
    return ValueError(
        f"cannot donate {_name(donated)}: it shares memory with {_name(other)}, so writing "
        "the result into it would change that one too; pass a .clone() of one of them")


def _local(t: torch.Tensor) -> torch.Tensor:
    """The plain tensor whose memory ``t`` is: a DTensor's local shard, the tensor a
    torch.func wrapper holds (in any nesting of the two)."""
    if type(t) is torch.Tensor and not _functorch.is_functorch_wrapped_tensor(t):
        return t  # the common case, a plain tensor
    t = _sharding.unwrap(t)
    while _sharding.is_dtensor(t):
        t = _sharding.unwrap(t._local_tensor)
    return t


def _may_overlap_itself(t: torch.Tensor) -> bool:
    """Whether two elements of ``t`` may share an address. torch answers "yes", "no" or
    "too hard" (any layout with gaps); for the last, a layout is accepted when, its dims
    sorted by stride, each stride steps past everything the smaller ones reach (a slice,
    a transpose, a step): sufficient, and refuses only layouts no module would hold."""
    verdict = torch._debug_has_internal_overlap(t)
    if verdict != 2:
        return verdict == 1
    reach = 0
    for size, stride in sorted((d for d in zip(t.shape, t.stride()) if d[0] > 1), key=lambda d: d[1]):
        if stride <= reach:
            return True
        reach += (size - 1) * stride
    return False


def _span(t: torch.Tensor) -> tuple[int, int, bool] | None:
    """The byte range ``[start, end)`` that plain tensor ``t``'s elements can touch, and
    whether it has gaps; ``None`` if it has none (empty, or on the meta device)."""
    n = t.numel()
    if n == 0 or t.is_meta:
        return None
    start, gaps = t.data_ptr(), not t.is_contiguous()
    extent = 1 + sum((size - 1) * stride for size, stride in zip(t.shape, t.stride())) if gaps else n
    return start, start + extent * t.element_size(), gaps


def _name(label: Label) -> str:
    what, path = label
    return what if path is None else f"{what} leaf {path!r}"
