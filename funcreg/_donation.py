"""Donation: which donated leaves a call may write, the checks before it does, the write.

A call made with ``donate=True`` may put its results into the storage of the inputs it
donates (DESIGN.md, section 2). On the fast path the family math writes into them
directly (:class:`funcreg._ops.Owned`); where it computes out of place (the composable
path, and fast-path math that allocates, such as an SVD) :func:`commit` copies the
results in, which is an in-place update wherever the caller's transforms allow one:

* eagerly, and under ``torch.compile`` (functionalization turns the copy into an
  update of the input buffers, which Inductor writes in place);
* under ``torch.func.vmap`` when every donated leaf is batched at the current level (a
  leaf of the vmapped inputs, not one captured from outside), and no other transform is
  active;
* never under ``grad``, ``jacrev`` or ``jvp``, where writing into a traced input would
  change what is differentiated: there the call returns fresh tensors with the values
  of the pure call.
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator, Sequence

import torch

from funcreg import _sharding, _tree

_functorch = torch._C._functorch


def can_write(donated: Sequence[torch.Tensor]) -> bool:
    """Whether a donated call may write its results into ``donated`` now."""
    if torch.compiler.is_compiling():
        return True
    stack = _functorch.get_interpreter_stack()
    if not stack:
        return True
    if any(level.key() != _functorch.TransformType.Vmap for level in stack):
        return False
    current = _functorch.current_level()
    return all(
        _functorch.is_batchedtensor(d) and _functorch.maybe_get_level(d) == current
        for d in donated
    )


Label = tuple[str, "str | None"]  # (what: "params", "state['exp_avg']", "lr"...; leaf path)


def check(written: Iterable[tuple[Label, torch.Tensor]],
          read: Iterable[tuple[Label, object]]) -> None:
    """Refuse a donation that cannot be honoured, before anything is written.

    ``written`` are the donated leaves the call will overwrite, ``read`` every other
    tensor it reads (the rest of the donated trees included: a leaf that shares memory
    with a written one would change too). Raises ``ValueError`` naming the leaves for a
    written leaf that requires grad while grad mode is on, one whose elements overlap each
    other (an expanded view), or one whose memory overlaps any other leaf read or written
    (by byte range: interleaved strided views of one buffer count as overlapping), and for
    any tensor read that requires grad while grad mode is on (the results would depend on
    it through autograd).
    """
    grad_on = torch.is_grad_enabled()
    compiling = torch.compiler.is_compiling()
    spans: list[tuple[int, int, bool, Label]] = []
    for label, t in written:
        if grad_on and t.requires_grad:
            raise ValueError(
                f"cannot donate {_name(label)}: it requires grad and grad mode is on, so "
                "writing into it would corrupt autograd; donate detached tensors "
                "({k: p.detach() for k, p in model.named_parameters()}) or call under "
                "torch.no_grad()"
            )
        if compiling:
            continue  # traced tensors have no addresses to compare
        span = _span(t)
        if span is None:
            continue
        if not t.is_contiguous() and _may_overlap_itself(_local(t)):
            raise ValueError(
                f"cannot donate {_name(label)}: its elements may overlap in memory (an "
                "expanded, stride-0 or as_strided view), so one write could land on several "
                "of them; donate a .clone() of it"
            )
        spans.append((*span, True, label))
    if not spans:
        return
    for label, t in read:
        if isinstance(t, torch.Tensor):
            if grad_on and t.requires_grad:
                raise ValueError(
                    f"cannot donate: {_name(label)} requires grad and grad mode is on, so "
                    "the results would carry autograd history into the donated tensors; "
                    "detach it, call under torch.no_grad(), or use donate=False"
                )
            span = _span(t)
            if span is not None:
                spans.append((*span, False, label))
    spans.sort(key=lambda s: s[0])
    # Sweep by start address: a span overlaps an earlier one iff it starts before the
    # furthest end seen so far (of any span, or of a written one for a read span).
    reach_any: tuple[int, Label] | None = None
    reach_written: tuple[int, Label] | None = None
    for start, end, is_written, label in spans:
        reach = reach_any if is_written else reach_written
        if reach is not None and start < reach[0]:
            donated, other = (label, reach[1]) if is_written else (reach[1], label)
            raise ValueError(
                f"cannot donate {_name(donated)}: it shares memory with {_name(other)}, so "
                "writing the result into it would change that one too; pass a .clone() of "
                "one of them"
            )
        if reach_any is None or end > reach_any[0]:
            reach_any = (end, label)
        if is_written and (reach_written is None or end > reach_written[0]):
            reach_written = (end, label)


def commit(donated: Sequence[torch.Tensor], results: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Put ``results`` into ``donated`` where they are not already there; return ``donated``."""
    for d, r in zip(donated, results):
        if r is not d:
            d.copy_(r)
    return list(donated)


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


def _span(t: torch.Tensor) -> tuple[int, int] | None:
    """The byte range ``[start, end)`` that ``t``'s elements can touch; ``None`` if empty."""
    t = _local(t)
    n = t.numel()
    if n == 0:
        return None
    start = t.data_ptr()
    if t.is_contiguous():
        return start, start + n * t.element_size()
    extent = 1 + sum((size - 1) * stride for size, stride in zip(t.shape, t.stride()))
    return start, start + extent * t.element_size()


def _name(label: Label) -> str:
    what, path = label
    return what if path is None else f"{what} leaf {path!r}"


def labelled(
    flat: _tree.Flat, idx: list[int], cols: Sequence[Sequence[Any]], names: Sequence[str]
) -> Iterator[tuple[Label, torch.Tensor]]:
    """The tensors among per-leaf columns (hyperparameters, anchors), labelled for the
    errors of :func:`check`; ``names`` name the columns in order."""
    seen: set[int] = set()
    for k, col in enumerate(cols):
        name = names[k] if k < len(names) else "an option"
        for i, v in zip(idx, col):
            if isinstance(v, torch.Tensor) and id(v) not in seen:
                seen.add(id(v))
                yield (name, flat.paths[i]), v
