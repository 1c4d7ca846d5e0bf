"""The stacked fast path: under ``vmap``, the multi-tensor kernels on the ensemble's
stacked tensors themselves (docs/design.md, "The vocabulary and its three implementations").

Under ``torch.func.vmap`` every leaf a member sees is a batched view of one stacked tensor,
and ``torch._foreach_*`` has no batching rule. Rather than fall back to per-leaf ops (one
batched kernel per leaf per op), a call takes the tensors under the wrappers
(:func:`peel`, with functorch's own ``_unwrap_batched``), brings every vmap level's batch
dim to the front (a leaf not batched at a level is expanded, and is then never written in
place; a hyperparameter gets a dim of 1 and broadcasts), runs the body on the fast path
with ``ops.batch`` leading dims and its hyperparameters shaped per member, and wraps the
results again at each level (``_add_batch_dim``, as ``vmap`` wraps its inputs). The
kernels run with functorch's dispatch keys excluded: below every level there is nothing
left for its layers to do, and they would triple the cost of each small op.

These primitives are private: on a torch that lacks them :data:`AVAILABLE` is False and
``vmap`` takes the per-leaf path.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from funcreg import _dispatch, _donation, _ops

_functorch = torch._C._functorch
_PRIMITIVES = ("_unwrap_batched", "_add_batch_dim", "is_functorch_wrapped_tensor", "get_interpreter_stack",
               "get_dynamic_layer_stack_depth")
_KEYS = ("FuncTorchDynamicLayerBackMode", "FuncTorchDynamicLayerFrontMode", "FuncTorchVmapMode")


def levels(top: Any) -> tuple[int, ...] | None:
    """The vmap levels now active, innermost first (``top``: the innermost transform), when
    every active transform is a ``vmap`` and this torch offers the stacked path; else ``None``."""
    if not AVAILABLE or top.key() != _functorch.TransformType.Vmap:
        return None
    if _functorch.get_dynamic_layer_stack_depth() == 1:
        return (top.level(),)  # the common case, one vmap
    stack = _functorch.get_interpreter_stack()
    if any(i.key() != _functorch.TransformType.Vmap for i in stack):
        return None
    return tuple(i.level() for i in reversed(stack))


def peel(leaves: list[Any], levels: tuple[int, ...]) -> tuple[list[Any], list[tuple[int | None, ...]]]:
    """The tensors under the leaves' vmap wrappers, and each one's batch dim per level
    (``None``: not batched there), innermost level first."""
    if len(levels) == 1:
        level = levels[0]
        pairs = [_functorch._unwrap_batched(x, level) if isinstance(x, torch.Tensor) else (x, None) for x in leaves]
        return [x for x, _ in pairs], [(d,) for _, d in pairs]
    bases, dims = [], []
    for x in leaves:
        ds: tuple[int | None, ...] = ()
        if isinstance(x, torch.Tensor):
            for level in levels:
                x, d = _functorch._unwrap_batched(x, level)
                ds += (d,)
        bases.append(x)
        dims.append(ds)
    return bases, dims


def run(body: Callable[..., Any], prepass: Callable[..., dict[str, list[Any]]] | None, static: dict[str, Any],
        columns: dict[str, list[Any]], bases: dict[str, list[Any]], dims: dict[str, list[Any]],
        hypers: dict[str, Any], levels: tuple[int, ...], writes: tuple[str, ...], donate: bool,
        groups: list[_dispatch.Group]) -> dict[str, list[Any]] | None:
    """The body on the stacked tensors (``bases`` under ``columns``' wrappers, batched along
    ``dims``; ``hypers``: a number, one tensor, or a list per leaf); the new leaves of each
    written role, or ``None`` where a tensor is wrapped by something else (a tensor of a
    finished transform): the per-leaf path takes the call."""
    n = len(next(iter(columns.values())))
    extra = {id(v): v for h in hypers.values() for v in (h if isinstance(h, list) else [h])
             if isinstance(v, torch.Tensor)}  # a hyperparameter tensor shared by leaves goes once
    hb, hd = peel(list(extra.values()), levels)
    if any(map(_functorch.is_functorch_wrapped_tensor, [t for name in columns for t in bases[name]] + hb)):
        return None
    with torch._C._ExcludeDispatchKeyGuard(_EXCLUDED):
        if all(ds.count((0,)) == len(ds) for ds in (*dims.values(), hd)):
            # one level, every tensor batched at the front: the common case
            sizes, in_place, front, member = [1], donate, bases, dict(zip(extra, hb))
        else:
            # each level's size, from a tensor batched there (a level that batches none is left out)
            pairs = [(t, d) for name in columns for t, d in zip(bases[name], dims[name])] + list(zip(hb, hd))
            sizes = [next((_size(t, d, k) for t, d in pairs if d[k] is not None), None) for k in range(len(levels))]
            in_place = donate and not any(s is not None and d[k] is None for name in writes
                                          for d in dims[name] for k, s in enumerate(sizes))  # none expanded
            front = {name: [_front(t, d, sizes, True) for t, d in zip(bases[name], dims[name])] for name in columns}
            member = {i: _front(t, d, sizes, False) for i, t, d in zip(extra, hb, hd)}
        nb = sum(s is not None for s in sizes)
        shaped: dict[tuple[Any, ...], torch.Tensor] = {}

        def of(v: Any, leaf: torch.Tensor) -> Any:
            """A member's value (``nb`` batch dims, then nothing or the leaf's member shape),
            in the leaf's dtype and shaped to broadcast against the stacked leaf."""
            if not isinstance(v, torch.Tensor):
                return v
            key = (id(v), leaf.ndim, leaf.dtype)
            if key not in shaped:
                h = member[id(v)]
                if h.dtype != leaf.dtype or h.device != leaf.device:
                    h = h.to(dtype=leaf.dtype, device=leaf.device)
                shaped[key] = h.reshape(*h.shape, *[1] * (leaf.ndim - nb)) if h.ndim == nb < leaf.ndim else h
            return shaped[key]

        main = front[writes[0]]
        hyp = {name: [of(v, x) for v, x in zip(h if isinstance(h, list) else [h] * n, main)]
               if isinstance(h, (list, torch.Tensor)) else h for name, h in hypers.items()}
        fused = any(g.fused for g in groups) and all(t.is_contiguous() for ts in front.values() for t in ts)
        groups = [g._replace(fused=g.fused and fused, pieces=None) for g in groups]
        if prepass is not None:
            hyp.update(prepass(_ops.Foreach(batch=nb), **front, **hyp, **static))
        out = _dispatch.run_fast(body, groups, front, lambda g: _sub(hyp, g, n), static, writes, in_place, n,
                                 batch=nb)
        if in_place:  # results computed out of place (an SVD) go in; the inputs are the results
            for name in writes:
                _donation.commit(front[name], out[name])
            return {name: columns[name] for name in writes}
    wrap = [level for level, s in zip(levels, sizes) if s is not None][::-1] if nb else []  # outermost first
    return {name: [_wrap(x, wrap) for x in out[name]] for name in writes}


def _size(t: torch.Tensor, dims: tuple[int | None, ...], k: int) -> int:
    """The size of level ``k``'s batch dim in ``t``."""
    return t.shape[_positions(t.ndim, dims)[0][k]]


def _positions(ndim: int, dims: tuple[int | None, ...]) -> tuple[list[int | None], list[int]]:
    """Where each level's batch dim sits in a base tensor (levels innermost first; ``None``:
    not batched there), and its other dims: each wrapper's batch dim indexes the dims of
    the one under it, once the outer levels' dims are taken out."""
    rest, at = list(range(ndim)), [None] * len(dims)
    for k in reversed(range(len(dims))):  # the outermost wrapper's dim indexes the base's own
        if dims[k] is not None:
            at[k] = rest.pop(dims[k])
    return at, rest


def _front(t: torch.Tensor, dims: tuple[int | None, ...], sizes: list[int | None], expand: bool) -> torch.Tensor:
    """``t`` with the batch dims of the levels that batch anything in front, outermost
    first; a level that does not batch ``t`` gets a dim of its size (``expand``: a leaf)
    or of 1 (a hyperparameter, which then broadcasts)."""
    if dims == (0,) and sizes[0] is not None:
        return t  # one level, batched at the front: the common case
    at, rest = _positions(t.ndim, dims)
    order = [p for p, s in zip(reversed(at), reversed(sizes)) if s is not None and p is not None]
    if order + rest != list(range(t.ndim)):
        t = t.permute(*order, *rest)
    k = 0
    for p, s in zip(reversed(at), reversed(sizes)):
        if s is None:
            continue
        if p is None:
            t = t.unsqueeze(k)
            if expand:
                t = t.expand(*t.shape[:k], s, *t.shape[k + 1:])
        k += 1
    return t


def _wrap(x: torch.Tensor, levels: list[int]) -> torch.Tensor:
    for level in levels:
        x = _functorch._add_batch_dim(x, 0, level)
    return x


def _sub(hypers: dict[str, Any], g: _dispatch.Group, n: int) -> dict[str, Any]:
    if len(g.idx) == n:
        return hypers
    return {k: [v[i] for i in g.idx] if isinstance(v, list) else v for k, v in hypers.items()}


def _available() -> bool:
    return (all(hasattr(_functorch, name) for name in _PRIMITIVES) and hasattr(torch._C, "_ExcludeDispatchKeyGuard")
            and all(hasattr(torch._C.DispatchKey, key) for key in _KEYS))


#: whether the stacked path can run on this torch; if not, ``vmap`` takes the per-leaf path
AVAILABLE = _available()
_EXCLUDED = None
if AVAILABLE:
    _EXCLUDED = torch._C.DispatchKeySet(getattr(torch._C.DispatchKey, _KEYS[0]))
    for _key in _KEYS[1:]:
        _EXCLUDED = _EXCLUDED | torch._C.DispatchKeySet(getattr(torch._C.DispatchKey, _key))
