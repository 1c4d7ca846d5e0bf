"""The stacked fast path: under ``vmap``, the multi-tensor kernels on the ensemble's
stacked tensors themselves (docs/design.md, "The stacked path").

Every leaf a member sees under ``torch.func.vmap`` is a batched view of one stacked tensor,
and ``torch._foreach_*`` has no batching rule. Rather than fall back to per-leaf ops, a call
takes the tensors under the wrappers (:func:`peel`, functorch's ``_unwrap_batched``), brings
every vmap level's batch dim to the front (a leaf not batched at a level is expanded, and
never written in place; a hyperparameter gets a dim of 1 and broadcasts), runs the body on
the fast path with ``ops.batch`` leading dims, and wraps the results again at each level
(``_add_batch_dim``, as ``vmap`` wraps its inputs). The kernels run with functorch's
dispatch keys excluded: below every level its layers have nothing left to do, and would
triple the cost of each small op. These primitives are private: on a torch without them
:data:`AVAILABLE` is False and ``vmap`` takes the per-leaf path.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

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
    if len(levels) == 1:  # the common case, one vmap: one call per leaf
        pairs = [_functorch._unwrap_batched(x, levels[0]) if isinstance(x, torch.Tensor) else (x, None) for x in leaves]
        return [x for x, _ in pairs], [(d,) for _, d in pairs]
    bases, dims = [], []
    for x in leaves:
        ds: tuple[int | None, ...] = ()
        for level in levels if isinstance(x, torch.Tensor) else ():
            x, d = _functorch._unwrap_batched(x, level)
            ds += (d,)
        bases.append(x)
        dims.append(ds)
    return bases, dims


def run(body: Callable[..., Any], prepass: Callable[..., dict[str, list[Any]]] | None, static: dict[str, Any],
        columns: dict[str, list[Any]], bases: dict[str, list[Any]], dims: dict[str, list[Any]],
        hypers: dict[str, Any], levels: tuple[int, ...], writes: tuple[str, ...], donate: bool,
        groups: list[_dispatch.Group]) -> dict[str, list[Any]] | None:
    """The body on the stacked tensors (``bases``, under ``columns``' wrappers, batched along
    ``dims``; ``hypers``: a number, one tensor or a list per leaf): the new leaves of each
    written role, or ``None`` when a tensor is wrapped by a transform that has ended."""
    n = len(columns[writes[0]])
    extra = {id(v): v for h in hypers.values() for v in (h if isinstance(h, list) else [h])
             if isinstance(v, torch.Tensor)}  # a hyperparameter tensor shared by leaves goes once
    hb, hd = peel(list(extra.values()), levels)
    if any(map(_functorch.is_functorch_wrapped_tensor, [t for name in columns for t in bases[name]] + hb)):
        return None
    # _EXCLUDED is None only where the primitives are missing, and then this path is never taken
    with torch._C._ExcludeDispatchKeyGuard(_EXCLUDED):  # type: ignore[arg-type]
        sizes: list[int | None]
        if all(ds.count((0,)) == len(ds) for ds in (*dims.values(), hd)):  # one level, batched at dim 0
            sizes, in_place, front, member = [1], donate, bases, dict(zip(extra, hb))
        else:
            pairs = [(t, d) for name in columns for t, d in zip(bases[name], dims[name])] + list(zip(hb, hd))
            # each level's size, from a tensor it batches (a level that batches none is left out)
            sizes = [next((t.shape[_positions(t.ndim, d)[0][k]] for t, d in pairs if d[k] is not None), None)
                     for k in range(len(levels))]
            in_place = donate and not any(s is not None and d[k] is None  # no donated leaf expanded
                                          for name in writes for d in dims[name] for k, s in enumerate(sizes))
            front = {name: [_front(t, d, sizes, True) for t, d in zip(bases[name], dims[name])] for name in columns}
            member = {i: _front(t, d, sizes, False) for i, t, d in zip(extra, hb, hd)}
        nb, shaped = sum(s is not None for s in sizes), {}

        def of(v: Any, leaf: torch.Tensor) -> Any:
            """A member's value (``nb`` batch dims, then nothing or the leaf's member shape)
            in the leaf's dtype, shaped to broadcast against the stacked leaf."""
            key = (id(v), leaf.ndim, leaf.dtype)
            if key not in shaped:
                h = member[id(v)]
                if h.dtype != leaf.dtype or h.device != leaf.device:
                    h = h.to(dtype=leaf.dtype, device=leaf.device)
                shaped[key] = h.reshape(*h.shape, *[1] * (leaf.ndim - nb)) if h.ndim == nb < leaf.ndim else h
            return shaped[key]

        hyp = {name: [of(v, x) if isinstance(v, torch.Tensor) else v
                      for v, x in zip(h if isinstance(h, list) else [h] * n, front[writes[0]])]
               if isinstance(h, (list, torch.Tensor)) else h for name, h in hypers.items()}
        fused = any(g.fused for g in groups) and all(t.is_contiguous() for ts in front.values() for t in ts)
        groups = [g._replace(fused=g.fused and fused, pieces=None) for g in groups]
        if prepass is not None:
            hyp.update(prepass(_ops.Foreach(batch=nb), **front, **hyp, **static))
        out = _dispatch.run_fast(body, groups, front, lambda g: hyp if len(g.idx) == n else {
            k: [v[i] for i in g.idx] if isinstance(v, list) else v for k, v in hyp.items()},
            static, writes, in_place, n, batch=nb)
        if in_place:  # results computed out of place (an SVD) go in; the inputs are the results
            for name in writes:
                _donation.commit(front[name], out[name])
            return {name: columns[name] for name in writes}
    wrap = [level for level, s in zip(levels, sizes) if s is not None][::-1]  # outermost first
    return {name: [_wrap(x, wrap) for x in out[name]] for name in writes}


def _positions(ndim: int, dims: tuple[int | None, ...]) -> tuple[list[int | None], list[int]]:
    """Where each level's batch dim sits in a tensor under wrappers (levels innermost first;
    ``None``: not batched there), and its other dims: each wrapper's batch dim indexes the
    dims of the one under it, once the outer levels' dims are taken out."""
    rest = list(range(ndim))
    at: list[int | None] = [None] * len(dims)
    for k in reversed(range(len(dims))):  # the outermost wrapper's dim indexes the base's own
        d = dims[k]
        if d is not None:
            at[k] = rest.pop(d)
    return at, rest


def _front(t: torch.Tensor, dims: tuple[int | None, ...], sizes: list[int | None], expand: bool) -> torch.Tensor:
    """``t`` with the batch dims of the levels that batch anything in front, outermost
    first; a level that does not batch ``t`` gets a dim of its size (``expand``: a leaf)
    or of 1 (a hyperparameter, which then broadcasts)."""
    at, rest = _positions(t.ndim, dims)
    outer = [(p, s) for p, s in zip(reversed(at), reversed(sizes)) if s is not None]
    order = [p for p, _ in outer if p is not None] + rest
    if order != list(range(t.ndim)):
        t = t.permute(*order)
    for k, (p, s) in enumerate(outer):
        if p is None:
            t = t.unsqueeze(k).expand(*t.shape[:k], s, *t.shape[k:]) if expand else t.unsqueeze(k)
    return t


def _wrap(x: torch.Tensor, levels: list[int]) -> torch.Tensor:
    for level in levels:
        x = _functorch._add_batch_dim(x, 0, level)
    return x


#: whether the stacked path can run on this torch; if not, ``vmap`` takes the per-leaf path
AVAILABLE = (all(hasattr(_functorch, name) for name in _PRIMITIVES) and hasattr(torch._C, "_ExcludeDispatchKeyGuard")
             and all(hasattr(torch._C.DispatchKey, key) for key in _KEYS))
_EXCLUDED = None
for _key in _KEYS if AVAILABLE else ():
    _set = torch._C.DispatchKeySet(getattr(torch._C.DispatchKey, _key))
    _EXCLUDED = _set if _EXCLUDED is None else _EXCLUDED | _set
