"""The stacked fast path: under ``vmap``, the multi-tensor kernels on the ensemble's
stacked tensors themselves (docs/design.md, "The stacked path").

Under ``torch.func.vmap`` every leaf a member sees is a batched view of one stacked tensor,
and ``torch._foreach_*`` has no batching rule. Rather than fall back to per-leaf ops (one
batched kernel per leaf per op), a call goes through one operator, ``funcreg::stacked``,
whose kernel for functorch's ``FuncTorchBatched`` dispatch key is its vmap rule: at each
vmap level it moves every tensor's batch dim to the front (a leaf not batched at that
level is expanded, and is then never written in place; a hyperparameter gets a size-1 dim
and broadcasts), and calls the operator again one level down. Below the last level the
body runs on the fast path, its leaves carrying ``ops.batch`` leading ensemble dims and
its hyperparameters broadcasting per member, and the results go back up batched at dim 0.

The rule is registered with ``torch.library`` as torch's own ``register_vmap`` registers
one; it unwraps with the same functorch primitives, but not through ``register_vmap``'s
pure-Python pytree pass, which costs about 9 µs per tensor (measured on this project's
2-core machine: more than the per-leaf path it would replace on a small model).

Only a plain ``vmap`` stack takes this path (:func:`funcreg._dispatch.route`); under
``grad``, ``jacrev`` or ``torch.compile`` the per-leaf path traces the math instead.
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from funcreg import _dispatch

_functorch = torch._C._functorch
_lib = torch.library.Library("funcreg", "FRAGMENT")
_lib.define("stacked(int job, Tensor(a!)[] written, Tensor[] read) -> Tensor[]")
_BATCHED = torch._C.DispatchKeySet(torch._C.DispatchKey.FuncTorchBatched)


@dataclass
class Job:
    """One call's body and how its tensors travel: ``written`` and ``read`` name the role
    lists, in order; ``hypers`` maps each hyperparameter to a number, or to the positions
    (in the ``read`` list, after the role leaves) of its per-leaf tensors."""

    body: Callable[..., Any]
    static: dict[str, Any]
    written: list[str]
    read: list[str]
    n: int
    hypers: dict[str, Any]
    donate: bool
    prepass: Callable[..., dict[str, list[Any]]] | None
    groups: list[_dispatch.Group]  # the plan's, over the leaves' (device, dtype)
    batch: int = 0
    expanded: bool = False  # a written leaf was not batched at some level: no in-place writes
    tensors: list[torch.Tensor] = field(default_factory=list)


_JOBS: dict[int, Job] = {}


def run(job: Job, columns: dict[str, list[torch.Tensor]], hyper_tensors: list[torch.Tensor]) -> dict[str, list[Any]]:
    """The body on the stacked tensors: the new leaves of each written role."""
    written = [x for name in job.written for x in columns[name]]
    read = [x for name in job.read for x in columns[name]] + hyper_tensors
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
    if size is not None:
        job.batch += 1
        job.expanded |= any(d is None for _, d in w)
        leaves = len(job.read) * job.n
        w = [(_front(t, d, size), 0) for t, d in w]
        r = [(_front(t, d, size) if k < leaves else _front(t, d, 1), 0) for k, (t, d) in enumerate(r)]
    w, r = [t for t, _ in w], [t for t, _ in r]
    if not any(map(_functorch.is_functorch_wrapped_tensor, itertools.chain(w, r))):
        out = _bottom(job_id, w, r)  # the last level: no second trip through the dispatcher
    else:
        with torch._C._ExcludeDispatchKeyGuard(_BATCHED):
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
    n, nb = job.n, job.batch
    columns = {name: written[k * n:(k + 1) * n] for k, name in enumerate(job.written)}
    columns.update({name: read[k * n:(k + 1) * n] for k, name in enumerate(job.read)})
    extra = read[len(job.read) * n:]
    main = columns[job.written[0]]
    hypers: dict[str, Any] = {}
    for name, how in job.hypers.items():
        if isinstance(how, list):  # per leaf, a tensor's position or a number
            hypers[name] = [_member(extra[j], x, nb) if isinstance(j, int) else j for j, x in zip(how, main)]
        else:
            hypers[name] = how
    if len(job.groups) == 1:  # one (device, dtype): the plan's group, its fusability per call
        group = copy.copy(job.groups[0])
        group.pieces = None  # cut for a donated eager call: the stacked leaves go whole
        group.fused = group.fused and all(t.is_contiguous() for t in itertools.chain(written, read[:len(job.read) * n]))
        groups = [group]
    else:
        groups = _dispatch.groups(main, [columns[name] for name in job.read], donate=False, elementwise=False)
    if job.prepass is not None:
        from funcreg._ops import Foreach
        hypers.update(job.prepass(Foreach(batch=nb), **columns, **hypers, **job.static))
    out = _dispatch.run_fast(job.body, groups, columns, lambda g: _sub(hypers, g, n), job.static,
                             tuple(job.written), job.donate and not job.expanded, n, batch=nb)
    # results written in place are the inputs themselves (:func:`run` takes those); the
    # operator's outputs may not alias its inputs, so a result that is an input goes as a view
    if job.donate and not job.expanded:
        for t, x in zip(written, (x for name in job.written for x in out[name])):
            if x is not t:  # a body that computed out of place (an SVD): into the donated tensor
                t.copy_(x)
        return []
    inputs = {id(t) for t in written} | {id(t) for t in read}
    return [x.view_as(x) if id(x) in inputs else x for x in (x for name in job.written for x in out[name])]


def _member(h: torch.Tensor, leaf: torch.Tensor, nb: int) -> torch.Tensor:
    """A member's hyperparameter (``nb`` batch dims, then nothing or the leaf's member
    shape) shaped to broadcast against the stacked leaf."""
    if h.ndim == nb:
        return h.reshape(*h.shape, *[1] * (leaf.ndim - nb))
    return h


def _sub(hypers: dict[str, Any], g: _dispatch.Group, n: int) -> dict[str, Any]:
    if len(g.idx) == n:
        return hypers
    return {k: [v[i] for i in g.idx] if isinstance(v, list) else v for k, v in hypers.items()}


_lib.impl("stacked", _rule, "FuncTorchBatched", with_keyset=True)
_lib.impl("stacked", _bottom, "CompositeExplicitAutograd")
