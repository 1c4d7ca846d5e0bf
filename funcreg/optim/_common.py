"""What the stateless steps share: matching params, grads and state, and the leaves to update."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from funcreg import _dispatch, _donation, _hyper, _ops
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

    def update(
        self,
        old_state: dict[str, Any],
        hyper: dict[str, Any],
        *,
        use_decay: bool,
        fused_ok: bool,
        fused: Callable[..., tuple[list[Any], ...]],
        generic: Callable[..., tuple[list[Any], ...]],
        donate: bool,
        **options: Any,
    ) -> tuple[Any, dict[str, Any]]:
        """Run one step on the active leaves and return the new params and state trees.

        Decayed and undecayed leaves go separately (torch.optim's two parameter groups):
        ``generic(ops, params, grads, *state, *hyper, decay=..., **options)`` runs on the
        chosen implementation of :mod:`funcreg._ops`; on the fast path, when
        ``fused_ok`` and every tensor of the group is contiguous,
        ``fused(ops, params, grads, *state, *hyper, ...)`` runs torch's fused kernel
        instead. Both return the new params then one list per state entry,
        in the order of ``self.state``. With ``donate``, the params and the state entries
        of the active leaves are owned: the results land in their storage.
        """
        keys = list(self.state)
        leaves = self.flat.leaves
        in_place = donate and _donation.can_write(
            [leaves[i] for i in self.active] + [self.state[k][i] for k in keys for i in self.active])
        if in_place:
            self._check_donation(hyper)
        new_p: list[Any] = [None] * len(self.active)
        new = {key: [None] * len(self.active) for key in keys}
        parts: dict[bool, list[int]] = {}
        for k, decayed in enumerate(self.decayed):
            parts.setdefault(use_decay and decayed, []).append(k)
        for decay, ks in parts.items():
            idx = [self.active[k] for k in ks]
            ps = [leaves[i] for i in idx]
            gs = [self.grads[i] for i in idx]
            st = [[self.state[key][i] for i in idx] for key in keys]
            cols = [_hyper.per_leaf(n, v, self.flat, idx) for n, v in hyper.items()]
            # a column is its value cast per leaf: the values alone tell whether any is traced
            fast = _dispatch.use_fast_path(ps, gs, *st, hyper.values())
            # torch's fused kernels walk each tensor's memory as one flat array: a leaf
            # whose param, grad or state is strided (a transposed or sliced view) would
            # be paired element by element with the wrong values, or written past its end
            fuse = fast and fused_ok and all(
                t.is_contiguous() for col in (ps, gs, *st) for t in col)
            donated = [ps, *st]
            if in_place and fast:
                ps, st = _ops.Owned(ps), [_ops.Owned(x) for x in st]

            def body(ops: Any, *columns: Any) -> Any:
                if fuse:
                    return fused(ops, *columns, decay=decay, **options)
                return generic(ops, *columns, decay=decay, **options)

            # torch's fused kernels work in place with no scratch: no need to chunk them
            outs = _dispatch.run(body, [ps, gs, *st, *cols], ps, fast=fast, chunked=not fuse)
            if in_place:
                outs = [_donation.commit(d, out) for d, out in zip(donated, outs)]
            for j, k in enumerate(ks):
                new_p[k] = outs[0][j]
                for key, out in zip(keys, outs[1:]):
                    new[key][k] = out[j]
        return self._rebuild(new_p, new, old_state)

    def _check_donation(self, hyper: dict[str, Any]) -> None:
        """A donated step writes the params and state of the leaves with a gradient; it
        reads the gradients, the hyperparameters and the leaves it leaves alone."""
        paths, leaves = self.flat.paths, self.flat.leaves
        active = set(self.active)
        written: list[tuple[tuple[str, str], torch.Tensor]] = [
            (("params", paths[i]), leaves[i]) for i in self.active]
        read: list[tuple[tuple[str, str], Any]] = [
            (("params", paths[i]), leaves[i]) for i in range(len(leaves)) if i not in active]
        for key, values in self.state.items():
            for i, v in enumerate(values):
                (written if i in active else read).append(((f"state[{key!r}]", paths[i]), v))
        read += [(("grads", paths[i]), self.grads[i]) for i in self.active]
        read += [((name, None), v) for name, v in hyper.items() if isinstance(v, torch.Tensor)]
        _donation.check(written, read)

    def _rebuild(
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


def fused_lr(lr: Any) -> Any:
    """``lr`` as torch's fused kernels take it: a tensor lr cast to a half-precision leaf
    dtype goes back to float32 (as torch.optim hands it over), a number as it is."""
    if isinstance(lr, torch.Tensor) and lr.dtype in (torch.bfloat16, torch.float16):
        return lr.float()
    return lr


def zero_state(params: Any, buffers: tuple[str, ...]) -> dict[str, Any]:
    """A step's initial state: ``"step"``, a 0-d float32 count per leaf on the leaf's
    device (as torch.optim keeps it), and a zero tree like params for each of ``buffers``."""
    flat = flatten(params)
    require_tensors(flat)
    # the same refusal as the steps', so that a bad tree fails at init, not a step later
    for path, leaf in zip(flat.paths, flat.leaves):
        if not leaf.is_floating_point():
            raise TypeError(
                f"init: params leaf {path!r} has dtype {leaf.dtype}; only floating-point "
                "parameters can be optimized (keep integer and bool buffers out of params)"
            )
    state = {"step": flat.unflatten(
        [torch.zeros((), dtype=torch.float32, device=p.device) for p in flat.leaves])}
    for name in buffers:
        state[name] = flat.unflatten([torch.zeros_like(p) for p in flat.leaves])
    return state


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
