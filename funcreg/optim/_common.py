"""What the stateless steps share: matching params, grads and state, and the leaves to update."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from funcreg._selection import Where, selection
from funcreg._tree import Flat, check_pair, flatten, leaves_like, require_tensors


@dataclass
class Batch:
    """The leaves a step updates: those with a gradient, split by weight decay.

    ``active`` indexes the leaves of ``flat`` whose gradient is not ``None``;
    ``decayed[k]`` says whether ``where`` applies weight decay to ``active[k]``.
    ``state[name]`` lists every leaf's state entry, in ``flat``'s order.
    """

    flat: Flat
    grads: list[Any]
    state: dict[str, list[Any]]
    active: list[int]
    decayed: list[bool]

    def rebuild(
        self, new_params: list[torch.Tensor], new_state: dict[str, list[Any]], old_state: dict[str, Any]
    ) -> tuple[Any, dict[str, Any]]:
        """Params and state trees with the active leaves replaced, the rest as they were."""
        params = list(self.flat.leaves)
        for i, p in zip(self.active, new_params):
            params[i] = p
        state = dict(old_state)
        for name, values in new_state.items():
            leaves = list(self.state[name])
            for i, v in zip(self.active, values):
                leaves[i] = v
            state[name] = self.flat.unflatten(leaves)
        return self.flat.unflatten(params), state


def prepare(
    name: str,
    params: Any,
    grads: Any,
    state: Any,
    keys: tuple[str, ...],
    where: Where,
) -> Batch:
    """Validate a step's inputs and find the leaves it updates.

    ``keys`` are the state entries the step reads, each a tree like params. Every check
    runs before anything is computed, so an error never leaves a half-applied update.
    """
    flat = flatten(params)
    require_tensors(flat)
    for path, leaf in zip(flat.paths, flat.leaves):
        if not leaf.is_floating_point():
            raise TypeError(
                f"{name}: params leaf {path!r} has dtype {leaf.dtype}; only floating-point "
                "parameters can be optimized"
            )
    if not isinstance(state, dict):
        raise TypeError(f"{name}: state must be the dict returned by {name}.init, not {type(state).__name__}")
    for key in keys:
        if key not in state:
            raise ValueError(
                f"{name}: state has no entry {key!r}; create the state with {name}.init(params"
                + (", amsgrad=True" if key == "max_exp_avg_sq" else "")
                + ")"
            )
    gs = leaves_like(flat, grads, "grads")
    st = {key: leaves_like(flat, state[key], f"state[{key!r}]") for key in keys}
    for i, path in enumerate(flat.paths):
        leaf = flat.leaves[i]
        if gs[i] is not None:
            check_pair(path, leaf, gs[i], "grads")
        for key in keys:
            value = st[key][i]
            if key == "step":
                if not isinstance(value, torch.Tensor) or value.ndim != 0:
                    raise ValueError(f"{name}: state['step'] leaf {path!r} must be a 0-d tensor")
                continue
            check_pair(path, leaf, value, f"state[{key!r}]")
    mask = [True] * len(flat.leaves) if where is None else selection(flat, where)
    active = [i for i, g in enumerate(gs) if g is not None]
    return Batch(flat, gs, st, active, [mask[i] for i in active])
