"""What the stateless steps share: their state, and their description to the engine.

A step is an :class:`funcreg._engine.Op` whose main tree is params, whose roles are the
gradients (a ``None`` gradient leaves that leaf and its state alone) and the state
entries (each a tree like params; ``step`` holds 0-d counters), whose written roles are
params and the state, and whose ``where`` chooses the decayed leaves (torch.optim's two
parameter groups). A new step (RMSprop, Adagrad, Lion, Muon) is one module: its state
entries, its hyperparameters and its body, run through :func:`run_step`.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import Any

import torch

from funcreg import _engine
from funcreg._engine import Op, Role
from funcreg._hyper import Param
from funcreg._tree import flatten, require_tensors


def _count(op: str, what: str, path: str, leaf: torch.Tensor, v: Any) -> None:
    """A step count: a 0-d floating tensor on the leaf's device, as ``init`` makes it."""
    if not isinstance(v, torch.Tensor) or v.ndim != 0:
        raise ValueError(f"{op}: {what} leaf {path!r} must be a 0-d tensor")
    if not v.is_floating_point():
        raise TypeError(f"{op}: {what} leaf {path!r} has dtype {v.dtype}; step counts are 0-d "
                        "floating-point tensors, as init makes them")
    if v.device != leaf.device:
        raise ValueError(f"{op}: {what} leaf {path!r} lives on {v.device} but the parameter lives "
                         f"on {leaf.device}")


PARAMS = Role("params", "params")
GRADS = Role("grads", "grads", none=True)
STEP = Role("step", "state['step']", check=_count)


def state(name: str) -> Role:
    """The role of state entry ``name``: a tree like params."""
    return Role(name, f"state[{name!r}]")


def step_op(name: str, body: Callable[..., Any], entries: tuple[str, ...], hypers: tuple[Param, ...]) -> Op:
    """The op of a step whose state holds ``step`` counters and the trees ``entries``."""
    roles = (GRADS, STEP, *(state(e) for e in entries))
    return Op(name, body, PARAMS, roles=roles, writes=("params", "step", *entries), hypers=hypers,
              where="decay", pieces=False)


def run_step(op: Op, params: Any, grads: Any, state: Any, hypers: dict[str, Any], *, where: Any,
             donate: bool, differentiable: bool, decay: bool, **static: Any) -> tuple[Any, dict[str, Any]]:
    """``op`` on params, grads and the state entries it names; returns the new params and
    state (entries the op does not use pass through). ``decay``: run the leaves ``where``
    selects apart from the others, with ``decay=True``."""
    entries = [r.name for r in op.roles[1:]]
    if not isinstance(state, dict):
        raise TypeError(f"{op.name}: state must be the dict returned by {op.name}.init, not "
                        f"{type(state).__name__}")
    for key in entries:
        if key not in state:
            raise ValueError(f"{op.name}: state has no entry {key!r}; create the state with "
                             f"{op.name}.init(params{', amsgrad=True' if key == 'max_exp_avg_sq' else ''})")
    out = _engine.run(op, [params, grads, *(state[k] for k in entries)], hypers, where=where,
                      donate=donate, differentiable=differentiable, split=decay,
                      static=tuple(sorted(static.items())))
    return out["params"], {**state, **{k: out[k] for k in entries}}


def fused_lr(lr: Any) -> Any:
    """``lr`` as torch's fused kernels take it: one value (a DTensor group's column holds
    it once per leaf); a tensor lr cast to a half-precision leaf dtype goes back to float32
    (as torch.optim hands it over), a number as it is."""
    if isinstance(lr, list):
        lr = lr[0]
    if isinstance(lr, torch.Tensor) and lr.dtype in (torch.bfloat16, torch.float16):
        return lr.float()
    return lr


def zero_state(params: Any, buffers: tuple[str, ...]) -> dict[str, Any]:
    """A step's initial state: ``"step"``, a 0-d float32 count per leaf on the leaf's
    device (as torch.optim keeps it), and a zero tree like params for each of ``buffers``."""
    flat = flatten(params)
    require_tensors(flat)
    for path, leaf in zip(flat.paths, flat.leaves):  # the steps' refusal, at init, not a step later
        if not leaf.is_floating_point():
            raise TypeError(f"init: params leaf {path!r} has dtype {leaf.dtype}; only floating-point "
                            "parameters can be optimized (keep integer and bool buffers out of params)")
    # the counts of the leaves on one device are the elements of one buffer, so that a
    # donated step advances them all with one kernel (each is still its own 0-d tensor)
    counts = {d: iter(torch.zeros(n, dtype=torch.float32, device=d).unbind())
              for d, n in collections.Counter(p.device for p in flat.leaves).items()}
    return {"step": flat.unflatten([next(counts[p.device]) for p in flat.leaves]),
            **{name: flat.unflatten([torch.zeros_like(p) for p in flat.leaves]) for name in buffers}}
