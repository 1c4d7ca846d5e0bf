"""Stateless SGD with momentum, Nesterov, weight decay and maximize, as torch.optim.SGD."""

from __future__ import annotations

from typing import Any

import torch

from funcreg import _dispatch, _hyper
from funcreg._ops import Column, Ops, Tensors
from funcreg._selection import Where
from funcreg._tree import flatten, require_tensors
from funcreg.optim._common import Batch, prepare


class SGD:
    r"""Stochastic gradient descent as a pure function, step for step torch.optim.SGD.

    With :math:`g` the gradient (negated when ``maximize``), :math:`\mu` = ``momentum``,
    :math:`\tau` = ``dampening`` and :math:`\gamma` = ``lr``:

    .. math::
        g &\leftarrow g + \mathrm{wd}\cdot w \quad\text{(on the leaves ``where`` selects)} \\
        b &\leftarrow g \ \text{(first step)}, \qquad b \leftarrow \mu b + (1-\tau) g \ \text{(after)} \\
        g &\leftarrow g + \mu b \ \text{(nesterov)}, \qquad g \leftarrow b \ \text{(otherwise)} \\
        w &\leftarrow w - \gamma g

    ``weight_decay`` keeps torch.optim's meaning: it adds ``wd * w`` to the gradient, which is
    the gradient of :math:`\tfrac{wd}{2}\sum w^2`, so ``fr.l2(params, lam)`` in the loss equals
    ``weight_decay=2 * lam``. ``where`` chooses the leaves that are decayed (all by default);
    every leaf with a gradient is updated. A leaf whose gradient is ``None`` keeps its value
    and its state.

    The state is ``{"momentum_buffer": tree}`` whose leaves are ``None`` until the first step
    with momentum, as in torch.optim. Every hyperparameter may be a Python number or a 0-d
    tensor, batched under ``vmap`` for an ensemble.

    Proximal SGD, for true zeros from L1, is this step followed by the prox at step ``lr``::

        params, state = fr.sgd.step(params, grads, state, lr=lr)
        params = fr.l1.prox(params, lam, lr)

    >>> import torch, funcreg as fr
    >>> params, grads = {"w": torch.tensor([1.0, -1.0])}, {"w": torch.tensor([0.5, 0.5])}
    >>> state = fr.sgd.init(params)
    >>> params, state = fr.sgd.step(params, grads, state, lr=0.1, momentum=0.9)
    >>> params["w"], state["momentum_buffer"]["w"]
    (tensor([ 0.9500, -1.0500]), tensor([0.5000, 0.5000]))
    """

    name = "fr.sgd"

    def init(self, params: Any) -> dict[str, Any]:
        """The initial state: no momentum buffer yet for any leaf."""
        flat = flatten(params)
        require_tensors(flat)
        return {"momentum_buffer": flat.unflatten([None] * len(flat.leaves))}

    def step(
        self,
        params: Any,
        grads: Any,
        state: dict[str, Any],
        *,
        lr: Any,
        momentum: Any = 0.0,
        dampening: Any = 0.0,
        nesterov: bool = False,
        weight_decay: Any = 0.0,
        maximize: bool = False,
        where: Where = None,
    ) -> tuple[Any, dict[str, Any]]:
        """One SGD step: returns ``(new_params, new_state)``; the inputs are not modified."""
        lr = _hyper.number("lr", lr)
        momentum = _hyper.number("momentum", momentum)
        dampening = _hyper.number("dampening", dampening, high=1.0)
        weight_decay = _hyper.number("weight_decay", weight_decay)
        if nesterov and isinstance(momentum, float) and (momentum == 0 or dampening != 0):
            raise ValueError("nesterov needs a momentum and zero dampening")
        batch = prepare(self.name, params, grads, state, ("momentum_buffer",), where,
                        optional=("momentum_buffer",))
        # A Python-number 0 is known to be 0: no buffer, no decay, as in torch.optim.
        use_momentum = not (isinstance(momentum, float) and momentum == 0)
        use_decay = not (isinstance(weight_decay, float) and weight_decay == 0)

        new_p: list[Any] = [None] * len(batch.active)
        new_b: list[Any] = [None] * len(batch.active)
        bufs = batch.state["momentum_buffer"]
        parts: dict[tuple[bool, bool], list[int]] = {}
        for k, i in enumerate(batch.active):
            first = bufs[i] is None
            parts.setdefault((use_decay and batch.decayed[k], first), []).append(k)
        for (decay, first), ks in parts.items():
            idx = [batch.active[k] for k in ks]
            ps = [batch.flat.leaves[i] for i in idx]
            gs = [batch.grads[i] for i in idx]
            bs = [bufs[i] for i in idx]
            hyper = [_hyper.per_leaf(n, v, batch.flat, idx) for n, v in
                     (("lr", lr), ("momentum", momentum), ("dampening", dampening),
                      ("weight_decay", weight_decay))]
            options = dict(decay=decay, first=first, use_momentum=use_momentum,
                           nesterov=nesterov, maximize=maximize)
            fast = _dispatch.use_fast_path(ps, gs, [] if first else bs, *hyper)
            fused = fast and all(not isinstance(v, torch.Tensor)
                                 for v in (momentum, dampening, weight_decay))

            def body(ops: Ops, *cols: Any) -> Any:
                if fused:
                    return _fused(*cols, **options)
                return _sgd(ops, *cols, **options)

            outs = _dispatch.run(body, [ps, gs, bs, *hyper], ps, fast=fast)
            for k, p, b in zip(ks, *outs):
                new_p[k] = p
                new_b[k] = b if use_momentum else bufs[batch.active[k]]
        return batch.rebuild(new_p, {"momentum_buffer": new_b}, state)


def _sgd(
    ops: Ops, ps: Tensors, gs: Tensors, bufs: list[Any], lr: Column, momentum: Column,
    dampening: Column, wd: Column, *, decay: bool, first: bool, use_momentum: bool,
    nesterov: bool, maximize: bool,
) -> tuple[Tensors, list[Any]]:
    g = ops.neg(gs) if maximize else gs
    if decay:
        g = ops.axpy(g, ps, wd)
    new_bufs: list[Any] = bufs
    if use_momentum:
        if first:
            # The buffer starts as the gradient itself; copy it so state never aliases grads.
            new_bufs = [x.clone() for x in g] if g is gs else g
        else:
            undamped = _hyper.combine(lambda d: 1 - d, dampening)
            new_bufs = ops.axpy(ops.mul(bufs, momentum), g, undamped)
        g = ops.axpy(g, new_bufs, momentum) if nesterov else new_bufs
    return ops.axpy(ps, g, _hyper.combine(lambda a: -a, lr)), new_bufs


def _fused(
    ps: Tensors, gs: Tensors, bufs: list[Any], lr: Column, momentum: Column,
    dampening: Column, wd: Column, *, decay: bool, first: bool, use_momentum: bool,
    nesterov: bool, maximize: bool,
) -> tuple[Tensors, list[Any]]:
    """torch's fused SGD kernel, run in place on fresh copies so the inputs stay untouched."""
    new_p = [p.clone() for p in ps]
    if not use_momentum:
        new_bufs: list[Any] = []
    elif first:
        new_bufs = [torch.empty_like(g) for g in gs]
    else:
        new_bufs = [b.clone() for b in bufs]
    torch._fused_sgd_(
        new_p, gs, new_bufs,
        weight_decay=wd[0] if decay else 0.0,
        momentum=momentum[0] if use_momentum else 0.0,
        lr=lr[0],
        dampening=dampening[0],
        nesterov=nesterov,
        maximize=maximize,
        is_first_step=first,
    )
    return new_p, new_bufs if use_momentum else bufs


sgd = SGD()
