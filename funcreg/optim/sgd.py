"""Stateless SGD with momentum, Nesterov, weight decay and maximize, as torch.optim.SGD."""

from __future__ import annotations

from typing import Any, cast

import torch

from funcreg import _ops
from funcreg._hyper import Param
from funcreg._ops import Column, Ops, Tensors, derive, each, is_number
from funcreg._selection import Where
from funcreg.optim._common import fused_lr, run_step, step_op, zero_state


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

    def __init__(self) -> None:
        hypers = (Param("lr"), Param("momentum"), Param("dampening", high=1.0), Param("weight_decay"))
        self._plain = step_op(self.name, _sgd, (), hypers)
        self._momentum = step_op(self.name, _sgd, ("momentum_buffer",), hypers)

    def init(self, params: Any, *, momentum: bool = True) -> dict[str, Any]:
        """Zero step counts, and zero momentum buffers unless ``momentum=False``.

        Args:
            params: the parameter tree.
            momentum: add the ``momentum_buffer`` (a step with ``momentum=0`` needs none).

        Returns:
            The state: a dict of trees like params (``step`` holds 0-d counts), fresh
            tensors on each leaf's device.

        Raises:
            TypeError: a leaf that is not a floating-point tensor (named).
        """
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
        differentiable: bool = False,
    ) -> tuple[Any, dict[str, Any]]:
        """One SGD step: returns ``(new_params, new_state)``.

        The inputs are not modified, unless ``donate=True``: then params and state are
        donated, the step writes into their storage (on the fast path, torch's fused SGD
        kernel runs on them in place, as torch.optim's fused step does) and returns trees
        holding those same tensors. Params that require grad, in grad mode, are refused
        unless ``differentiable=True``, which records the step's autograd history (for
        hypergradients, as torch.optim's ``differentiable``).

        Args:
            params: the parameter tree (``dict(model.named_parameters())``, detached).
            grads: gradients, a tree like params; a ``None`` leaf leaves that leaf and its
                state as they are.
            state: from :meth:`init` (with its ``momentum_buffer`` when ``momentum`` is
                not a Python 0).
            lr: the learning rate, a number >= 0 or a 0-d tensor (batched under
                ``vmap``).
            momentum, dampening, weight_decay: torch.optim.SGD's, each a number >= 0 or a
                0-d tensor (``dampening`` at most 1); ``weight_decay`` is coupled (added
                to the gradient).
            nesterov: Nesterov momentum (needs a momentum and zero dampening).
            maximize: ascend the objective.
            where: the leaves that are decayed (all by default).
            donate: write the results into params and state and return those tensors.
            differentiable: record autograd history (hypergradients), as torch.optim's flag.

        Returns:
            ``(new_params, new_state)``; the inputs are unchanged unless donated.

        Raises:
            ValueError: a negative or non-finite number, ``nesterov`` without momentum
                or with dampening, a state without the buffers the step needs, trees
                that do not match params (each naming the leaf).
            TypeError: a non-tensor or integer leaf, a hyperparameter of the wrong type.
        """
        hypers = {"lr": lr, "momentum": momentum, "dampening": dampening, "weight_decay": weight_decay}
        for p in self._plain.hypers:
            p.number(hypers[p.name])
        if nesterov and (_zero(momentum) or not (isinstance(dampening, torch.Tensor) or _zero(dampening))):
            raise ValueError("nesterov needs a momentum and zero dampening")
        # A Python-number 0 is known to be 0: no buffer, no decay, as in torch.optim.
        op = self._plain if _zero(momentum) else self._momentum
        return run_step(op, params, grads, state, hypers, where=where, donate=donate,
                        differentiable=differentiable, decay=not _zero(weight_decay),
                        nesterov=nesterov, maximize=maximize, damped=not _zero(dampening))


def _zero(v: Any) -> bool:
    """A Python-number 0 (a tensor's value is not read)."""
    return not isinstance(v, torch.Tensor) and v == 0


def _sgd(ops: Ops, *, params: Tensors, grads: Tensors, step: Tensors, momentum_buffer: Tensors | None = None,
         lr: Column, momentum: Column, dampening: Column, weight_decay: Column, decay: bool,
         nesterov: bool, maximize: bool, damped: bool) -> dict[str, Tensors]:
    if (ops.fused and not ops.dtensor and not damped and is_number(momentum) and is_number(weight_decay)
            and not (ops.batch and isinstance(lr, list))):
        # torch's fused kernel knows the first step only as one flag for all leaves; with
        # a zero buffer and no dampening every step is the same formula, so it needs none.
        return _fused(ops, params=params, grads=grads, step=step, momentum_buffer=momentum_buffer, lr=lr,
                      momentum=cast(float, momentum), weight_decay=cast(float, weight_decay) if decay else 0.0,
                      nesterov=nesterov, maximize=maximize)
    if maximize:
        grads = ops.neg(grads)
    if decay:
        grads = ops.add_(grads, params, weight_decay)
    if momentum_buffer is not None:
        kept = None
        if damped:
            # The buffer starts at zero: the first step must take all of g, later ones
            # (1 - τ). torch.optim ignores dampening without momentum; a tensor momentum
            # may be 0.
            n = len(params)
            first = [((s == 0) | (m == 0) if isinstance(m, torch.Tensor) else s == 0).to(p.dtype)
                     for s, m, p in zip(ops.bcast(step, params), each(momentum, n), params)]
            kept = [1 - d * (1 - f) for d, f in zip(each(dampening, n), first)]
        momentum_buffer = ops.add_(ops.mul_(momentum_buffer, momentum), grads, kept)
        grads = ops.add_(grads, momentum_buffer, momentum) if nesterov else momentum_buffer
    params = ops.add_(params, grads, derive(lambda a: -a, lr))
    step = ops.add_(step, 1.0)
    return {"params": params, "step": step, **({"momentum_buffer": momentum_buffer}
                                               if momentum_buffer is not None else {})}


def _fused(ops: Ops, *, params: Tensors, grads: Tensors, step: Tensors, momentum_buffer: Tensors | None,
           lr: Any, momentum: float, weight_decay: float, nesterov: bool, maximize: bool) -> dict[str, Tensors]:
    """torch's fused SGD kernel: in place on donated params and buffers, as torch.optim's
    fused step is, and otherwise on fresh copies (inputs stay untouched)."""
    bufs = _ops.owned_copy(momentum_buffer) if momentum_buffer is not None else []
    params = _ops.owned_copy(params)
    torch._fused_sgd_(params, grads, bufs, weight_decay=weight_decay,
                      momentum=momentum if momentum_buffer is not None else 0.0, lr=fused_lr(lr),
                      dampening=0.0, nesterov=nesterov, maximize=maximize, is_first_step=False)
    return {"params": params, "step": ops.add_(step, 1.0),
            **({"momentum_buffer": bufs} if momentum_buffer is not None else {})}


sgd = SGD()
