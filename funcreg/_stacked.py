"""The stacked fast path: under ``vmap``, the multi-tensor kernels on the ensemble's
stacked tensors themselves (docs/design.md, "The vocabulary and its three implementations").

Under ``torch.func.vmap`` every leaf a member sees is a batched view of one stacked tensor,
and ``torch._foreach_*`` has no batching rule. Rather than fall back to per-leaf ops (one
batched kernel per leaf per op), a call goes through one operator, ``funcreg::stacked``,
whose kernel for functorch's ``FuncTorchBatched`` dispatch key is its vmap rule: at each
vmap level it moves every tensor's batch dim to the front (a leaf not batched at that
level is expanded, and is then never written in place; a hyperparameter gets a size-1 dim
and broadcasts), and calls the operator again one level down. Below the last level the
body runs on the fast path, its leaves carrying ``ops.batch`` leading ensemble dims and
its hyperparameters shaped per member to broadcast against them, and the results go back
up batched at dim 0.

The rule is registered with ``torch.library`` as torch's own ``register_vmap`` registers
one, but unwraps with functorch's C++ primitives rather than through ``register_vmap``'s
pure-Python pytree pass (about 9 µs per tensor). Those primitives are private: on a torch
that lacks them :data:`AVAILABLE` is False and ``vmap`` takes the per-leaf path.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from funcreg import _dispatch, _donation, _ops

_functorch = torch._C._functorch
_PRIMITIVES = ("_unwrap_batched", "_add_batch_dim", "current_level", "is_functorch_wrapped_tensor")
_KEYS = ("FuncTorchBatched", "FuncTorchDynamicLayerBackMode", "FuncTorchDynamicLayerFrontMode", "FuncTorchVmapMode")


@dataclass
class Job:
    """One call's body and how its tensors travel: ``written`` and ``read`` name the role
    lists, in order; ``hypers`` (set by :func:`run`) maps each hyperparameter to a number,
    or to one entry per leaf: the position of its tensor among those that cross after the
    role leaves, or its number."""

    body: Callable[..., Any]
    static: dict[str, Any]
    written: list[str]
    read: list[str]
    n: int
    donate: bool
    prepass: Callable[..., dict[str, list[Any]]] | None
    groups: list[_dispatch.Group]  # the plan's, over the leaves' (device, dtype)
    hypers: dict[str, Any] = field(default_factory=dict)
    batch: int = 0
    expanded: bool = False  # a written leaf was not batched at some level: no in-place writes


_JOBS: dict[int, Job] = {}


def run(job: Job, columns: dict[str, list[torch.Tensor]], hypers: dict[str, Any]) -> dict[str, list[Any]]:
    """The body on the stacked tensors (``hypers``: a number, one tensor, or a list per
    leaf); the new leaves of each written role."""
    tensors: list[torch.Tensor] = []
    at: dict[int, int] = {}  # a tensor shared by leaves crosses once
    for name, v in hypers.items():
        if isinstance(v, torch.Tensor):
            v = [v] * job.n
        if isinstance(v, list):
            for x in v:
                if isinstance(x, torch.Tensor) and id(x) not in at:
                    at[id(x)] = len(tensors)
                    tensors.append(x)
            v = [at[id(x)] if isinstance(x, torch.Tensor) else float(x) for x in v]
        job.hypers[name] = v
    written = [x for name in job.written for x in columns[name]]
    read = [x for name in job.read for x in columns[name]] + tensors
    _JOBS[id(job)] = job
    try:
        out = torch.ops.funcreg.stacked(id(job), written, read)
    finally:
        del _JOBS[id(job)]
    if not out:  # written in place
        return {name: columns[name] for name in job.written}
    return {name: out[k * job.n:(k + 1) * job.n] for k, name in enumerate(job.written)}


def _rule(keyset: Any, job_id: int, written: list[torch.Tensor], read: list[torch.Tensor]) -> list[torch.Tensor]:
    job = _JOBS[job_id]
    level = _functorch.current_level()
    w = [_functorch._unwrap_batched(t, level) for t in written]
    r = [_functorch._unwrap_batched(t, level) for t in read]
    size = next((t.shape[d] for t, d in itertools.chain(w, r) if d is not None), None)
    if size is None:
        w, r = [t for t, _ in w], [t for t, _ in r]
    else:
        job.batch += 1
        job.expanded |= any(d is None for _, d in w)
        leaves = len(job.read) * job.n
        w = [_front(t, d, size) for t, d in w]
        r = [_front(t, d, size if k < leaves else 1) for k, (t, d) in enumerate(r)]
    if not any(map(_functorch.is_functorch_wrapped_tensor, itertools.chain(w, r))):
        # the last level: no second trip through the dispatcher, and the kernels below it
        # skip functorch's layers, which have nothing left to do (3× cheaper small ops)
        with torch._C._ExcludeDispatchKeyGuard(_keys("FuncTorchDynamicLayerBackMode", "FuncTorchDynamicLayerFrontMode",
                                                     "FuncTorchVmapMode")):
            out = _bottom(job_id, w, r)
    else:
        with torch._C._ExcludeDispatchKeyGuard(_keys("FuncTorchBatched")):
            out = torch.ops.funcreg.stacked(job_id, w, r)
    return out if size is None else [_functorch._add_batch_dim(o, 0, level) for o in out]


def _front(t: torch.Tensor, dim: int | None, size: int) -> torch.Tensor:
    """``t`` with its batch dim first; not batched: a leaf expanded to ``size`` members, a
    hyperparameter (``size`` 1) given a dim of 1 that broadcasts."""
    if dim is None:
        return t.expand(size, *t.shape) if size > 1 else t.unsqueeze(0)
    return t if dim == 0 else t.movedim(dim, 0)


def _bottom(job_id: int, written: list[torch.Tensor], read: list[torch.Tensor]) -> list[torch.Tensor]:
    """Below every vmap level: the body on the fast path, ``job.batch`` leading dims."""
    job = _JOBS[job_id]
    n, nb, roles = job.n, job.batch, len(job.read) * job.n
    columns = {name: written[k * n:(k + 1) * n] for k, name in enumerate(job.written)}
    columns.update({name: read[k * n:(k + 1) * n] for k, name in enumerate(job.read)})
    main, extra, shaped = columns[job.written[0]], read[roles:], {}

    def member(j: int, leaf: torch.Tensor) -> torch.Tensor:
        """A member's value (``nb`` batch dims, then nothing or the leaf's member shape),
        in the leaf's dtype and shaped to broadcast against the stacked leaf."""
        key = (j, leaf.ndim, leaf.dtype)
        if key not in shaped:
            h = extra[j].to(dtype=leaf.dtype, device=leaf.device)
            shaped[key] = h.reshape(*h.shape, *[1] * (leaf.ndim - nb)) if h.ndim == nb else h
        return shaped[key]

    hypers = {name: [member(j, x) if isinstance(j, int) else j for j, x in zip(how, main)]
              if isinstance(how, list) else how for name, how in job.hypers.items()}
    # the plan's groups; the stacked leaves go whole, and fuse only if contiguous
    contiguous = all(t.is_contiguous() for t in itertools.chain(written, read[:roles]))
    groups = [g._replace(fused=g.fused and contiguous, pieces=None) for g in job.groups]
    if job.prepass is not None:
        hypers.update(job.prepass(_ops.Foreach(batch=nb), **columns, **hypers, **job.static))
    in_place = job.donate and not job.expanded
    out = _dispatch.run_fast(job.body, groups, columns, lambda g: _sub(hypers, g, n), job.static,
                             tuple(job.written), in_place, n, batch=nb)
    results = [x for name in job.written for x in out[name]]
    if in_place:  # results computed out of place (an SVD) go in; :func:`run` returns the inputs
        _donation.commit(written, results)
        return []
    # the operator's outputs may not alias its inputs: a result that is an input goes as a view
    inputs = {id(t) for t in itertools.chain(written, read)}
    return [x.view_as(x) if id(x) in inputs else x for x in results]


def _sub(hypers: dict[str, Any], g: _dispatch.Group, n: int) -> dict[str, Any]:
    if len(g.idx) == n:
        return hypers
    return {k: [v[i] for i in g.idx] if isinstance(v, list) else v for k, v in hypers.items()}


def _keys(*names: str) -> Any:
    out = torch._C.DispatchKeySet(getattr(torch._C.DispatchKey, names[0]))
    for name in names[1:]:
        out = out | torch._C.DispatchKeySet(getattr(torch._C.DispatchKey, name))
    return out


def _register() -> bool:
    """Define ``funcreg::stacked`` and its vmap rule, if this torch has what they use."""
    if not (all(hasattr(_functorch, name) for name in _PRIMITIVES) and hasattr(torch._C, "_ExcludeDispatchKeyGuard")
            and all(hasattr(torch._C.DispatchKey, key) for key in _KEYS)):
        return False
    global _lib
    try:
        _lib = torch.library.Library("funcreg", "FRAGMENT")
        _lib.define("stacked(int job, Tensor(a!)[] written, Tensor[] read) -> Tensor[]")
        _lib.impl("stacked", _rule, "FuncTorchBatched", with_keyset=True)
        _lib.impl("stacked", _bottom, "CompositeExplicitAutograd")
    except (RuntimeError, TypeError, AttributeError):
        return False
    return True


_lib: Any = None
#: whether the stacked path can run on this torch; if not, ``vmap`` takes the per-leaf path
AVAILABLE = _register()
