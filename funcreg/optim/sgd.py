"""Stateless SGD with momentum, Nesterov, weight decay and maximize, as torch.optim.SGD."""

from __future__ import annotations

from typing import Any

import torch

from funcreg import _hyper, _ops, _sharding
from funcreg._ops import Ops, Tensors
from funcreg._selection import Where
from funcreg.optim._common import fused_lr, prepare, zero_state


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

    The state is ``{"step": tree, "momentum_buffer": tree}``: a 0-d float32 step count per
    leaf and a zero-initialized buffer (``init(params, momentum=False)`` leaves the buffer
    out, for plain SGD). A zero buffer makes the first step ``b = g`` exactly as in
    torch.optim; the count is what tells the first step when ``dampening`` is not 0. Every
    hyperparameter may be a Python number or a 0-d tensor, batched under ``vmap`` for an
    ensemble.

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

    def init(self, params: Any, *, momentum: bool = True) -> dict[str, Any]:
        """Zero step counts, and zero momentum buffers unless ``momentum=False``."""
        return zero_state(params, ("momentum_buffer",) if momentum else ())

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
        donate: bool = False,
    ) -> tuple[Any, dict[str, Any]]:
        """One SGD step: returns ``(new_params, new_state)``.

        The inputs are not modified, unless ``donate=True``: then params and state are
        donated, the step writes into their storage (on the fast path, torch's fused SGD
        kernel runs on them in place, as torch.optim's fused step does) and returns trees
        holding those same tensors.
        """
        lr = _hyper.number("lr", lr)
        momentum = _hyper.number("momentum", momentum)
        dampening = _hyper.number("dampening", dampening, high=1.0)
        weight_decay = _hyper.number("weight_decay", weight_decay)
        if nesterov and (
            (isinstance(momentum, float) and momentum == 0)
            or (isinstance(dampening, float) and dampening != 0)
        ):
            raise ValueError("nesterov needs a momentum and zero dampening")
        # A Python-number 0 is known to be 0: no buffer, no decay, as in torch.optim.
        use_momentum = not (isinstance(momentum, float) and momentum == 0)
        use_decay = not (isinstance(weight_decay, float) and weight_decay == 0)
        keys = ("step", "momentum_buffer") if use_momentum else ("step",)
        batch = prepare(self.name, params, grads, state, keys, where)
        damped = not (isinstance(dampening, float) and dampening == 0)
        return batch.update(
            state,
            {"lr": lr, "momentum": momentum, "dampening": dampening, "weight_decay": weight_decay},
            use_decay=use_decay,
            # torch's fused kernel knows the first step only as one flag for all leaves; with
            # a zero buffer and no dampening every step is the same formula, so it needs none.
            fused_ok=not damped and not any(
                isinstance(v, torch.Tensor) for v in (momentum, dampening, weight_decay))
            # torch registers no sharding strategy for _fused_sgd_: DTensors take foreach
            and not _sharding.any_dtensor(batch.flat.leaves),
            fused=_fused,
            generic=_sgd,
            donate=donate,
            use_momentum=use_momentum,
            damped=damped,
            nesterov=nesterov,
            maximize=maximize,
        )


def _sgd(
    ops: Ops, ps: Tensors, gs: Tensors, steps: Tensors, *rest: Any, decay: bool,
    use_momentum: bool, damped: bool, nesterov: bool, maximize: bool,
) -> tuple[Tensors, ...]:
    bufs = rest[0] if use_momentum else None
    lr, momentum, dampening, wd = rest[1:] if use_momentum else rest
    if maximize:
        gs = ops.neg(gs)
    if decay:
        gs = ops.add_(gs, ps, wd)
    if use_momentum:
        if damped:
            # The buffer starts at zero: the first step must take all of g, later ones
            # (1 - τ). torch.optim ignores dampening without momentum; a tensor momentum
            # may be 0.
            first = [((s == 0) | (m == 0) if isinstance(m, torch.Tensor) else s == 0).to(p.dtype)
                     for s, m, p in zip(steps, momentum, ps)]
            kept: Any = [1 - d * (1 - f) for d, f in zip(dampening, first)]
        else:
            kept = None
        bufs = ops.add_(ops.mul_(bufs, momentum), gs, kept)
        gs = ops.add_(gs, bufs, momentum) if nesterov else bufs
    ps = ops.add_(ps, gs, _hyper.combine(lambda a: -a, lr))
    steps = ops.add_(steps, 1.0)
    return (ps, steps) + ((bufs,) if use_momentum else ())


def _fused(
    ops: Ops, ps: Tensors, gs: Tensors, steps: Tensors, *rest: Any, decay: bool,
    use_momentum: bool, damped: bool, nesterov: bool, maximize: bool,
) -> tuple[Tensors, ...]:
    """torch's fused SGD kernel: in place on donated params and buffers, as torch.optim's
    fused step is, and otherwise on fresh copies (inputs stay untouched)."""
    bufs = _ops.owned_copy(rest[0]) if use_momentum else []
    lr, momentum, dampening, wd = rest[1:] if use_momentum else rest
    ps = _ops.owned_copy(ps)
    torch._fused_sgd_(
        ps, gs, bufs,
        weight_decay=wd[0] if decay else 0.0,
        momentum=momentum[0] if use_momentum else 0.0,
        lr=fused_lr(lr[0]),
        dampening=0.0,
        nesterov=nesterov,
        maximize=maximize,
        is_first_step=False,
    )
    return (ps, ops.add_(steps, 1.0)) + ((bufs,) if use_momentum else ())


sgd = SGD()
