"""Stateless RMSprop, step for step torch.optim.RMSprop, and its per-element step size for
a proximal RMSprop."""

from __future__ import annotations

from typing import Any

import torch

from funcreg import _engine
from funcreg._engine import Op, Role
from funcreg._hyper import Param
from funcreg._ops import Column, Ops, Tensors, derive, each
from funcreg._selection import Where
from funcreg.optim._common import STEP, run_step, step_op, zero_state


class RMSprop:
    r"""RMSprop as a pure function, step for step torch.optim.RMSprop.

    With :math:`g` the gradient (negated when ``maximize``), :math:`\gamma` = ``lr``,
    :math:`\alpha` = ``alpha``, :math:`\mu` = ``momentum`` and :math:`\epsilon` = ``eps``:

    .. math::
        g &\leftarrow g + \mathrm{wd}\cdot w \quad\text{(on the leaves ``where`` selects)} \\
        v &\leftarrow \alpha v + (1-\alpha) g^2 \\
        \bar g &\leftarrow \alpha \bar g + (1-\alpha) g, \qquad
            d = \sqrt{v - \bar g^2} + \epsilon \quad\text{(centered)}, \qquad
            d = \sqrt{v} + \epsilon \quad\text{(otherwise)} \\
        b &\leftarrow \mu b + g / d, \quad w \leftarrow w - \gamma b \quad\text{(momentum)}, \qquad
            w \leftarrow w - \gamma\, g / d \quad\text{(otherwise)}

    ``weight_decay`` keeps torch.optim's meaning (``wd * w`` added to the gradient, the
    gradient of :math:`\tfrac{wd}{2}\sum w^2`); ``where`` chooses the decayed leaves (all by
    default), so ``where=fr.select.weights`` is torch.optim with a second parameter group
    without decay. A leaf whose gradient is ``None`` keeps its value and its state.

    The state is ``{"step", "square_avg"}`` (:math:`v`), plus ``"momentum_buffer"``
    (:math:`b`) from ``init(params, momentum=True)`` and ``"grad_avg"`` (:math:`\bar g`)
    from ``init(params, centered=True)``, torch.optim's names, each a tree like params
    (``step`` holds one float32 0-d count per leaf). Hyperparameters may be Python numbers
    or 0-d tensors (batched under ``vmap``); a tensor ``momentum`` always uses the buffer
    (a member whose momentum is 0 then takes the plain step's values).

    Reference: Tieleman & Hinton, *Neural Networks for Machine Learning*, lecture 6.5
    (2012); the centered form from Graves, "Generating sequences with recurrent neural
    networks" (2013).

    >>> import torch, funcreg as fr
    >>> params, grads = {"w": torch.tensor([1.0, -1.0])}, {"w": torch.tensor([0.5, -2.0])}
    >>> state = fr.rmsprop.init(params)
    >>> params, state = fr.rmsprop.step(params, grads, state, lr=0.01)
    >>> params["w"]
    tensor([ 0.9000, -0.9000])
    """

    name = "fr.rmsprop"

    def __init__(self) -> None:
        hypers = (Param("lr"), Param("alpha"), Param("eps"), Param("weight_decay"), Param("momentum"))
        self._ops = {(momentum, centered): step_op(self.name, _rmsprop, _entries(momentum, centered), hypers)
                     for momentum in (False, True) for centered in (False, True)}
        self._step_size = {centered: Op(f"{self.name}.step_size", _step_size, Role("v", "state['square_avg']"),
                                        roles=(STEP,) + ((Role("grad_avg", "state['grad_avg']"),) if centered else ()),
                                        hypers=(Param("lr"), Param("eps")), output="tree", where="none",
                                        history=False)
                           for centered in (False, True)}

    def init(self, params: Any, *, momentum: bool = False, centered: bool = False) -> dict[str, Any]:
        """Zero step counts and ``square_avg``; ``momentum=True`` adds a zero
        ``momentum_buffer`` (for a step with ``momentum`` other than a Python 0) and
        ``centered=True`` a zero ``grad_avg`` (for ``centered=True`` steps).

        Args:
            params: the parameter tree.
            momentum: add the ``momentum_buffer`` a step with momentum needs.
            centered: add the ``grad_avg`` a centered step needs.

        Returns:
            The state: a dict of trees like params (``step`` holds 0-d counts), fresh
            tensors on each leaf's device.

        Raises:
            TypeError: a leaf that is not a floating-point tensor (named).
        """
        return zero_state(params, _entries(momentum, centered))

    def step(
        self,
        params: Any,
        grads: Any,
        state: dict[str, Any],
        *,
        lr: Any,
        alpha: Any = 0.99,
        eps: Any = 1e-8,
        weight_decay: Any = 0.0,
        momentum: Any = 0.0,
        centered: bool = False,
        maximize: bool = False,
        where: Where = None,
        donate: bool = False,
        differentiable: bool = False,
    ) -> tuple[Any, dict[str, Any]]:
        """One RMSprop step: returns ``(new_params, new_state)``.

        Args:
            params: the parameter tree (``dict(model.named_parameters())``, detached).
            grads: gradients, a tree like params; a ``None`` leaf leaves that leaf and its
                state as they are.
            state: from :meth:`init` (with ``momentum=True`` when ``momentum`` is not a
                Python 0, ``centered=True`` when ``centered``).
            lr, alpha, eps, weight_decay, momentum: torch.optim.RMSprop's, each a number
                >= 0 or a 0-d tensor (batched under ``vmap``).
            centered: divide by an estimate of the gradient's standard deviation,
                sqrt(v - ḡ²), rather than its root mean square.
            maximize: ascend the objective.
            where: the leaves that are decayed (all by default).
            donate: write the results into params and state and return those tensors
                (nothing is allocated for them); the values are the pure call's.
            differentiable: record autograd history (hypergradients), as torch.optim's flag.

        Returns:
            ``(new_params, new_state)``; the inputs are unchanged unless donated.

        Raises:
            ValueError: a negative or non-finite number, a state without the entries the
                step needs, trees that do not match params, a ``where`` that selects
                nothing (each naming the leaf).
            TypeError: a non-tensor or integer leaf, a hyperparameter of the wrong type.
        """
        hypers = {"lr": lr, "alpha": alpha, "eps": eps, "weight_decay": weight_decay, "momentum": momentum}
        for p in self._ops[False, False].hypers:  # a bad momentum is named before the state it would need
            p.number(hypers[p.name])
        buffered = not _zero(momentum)
        _require(state, buffered, centered)
        return run_step(self._ops[buffered, centered], params, grads, state, hypers, where=where, donate=donate,
                        differentiable=differentiable, decay=not _zero(weight_decay), maximize=maximize)

    def step_size(self, state: dict[str, Any], *, lr: Any, eps: Any = 1e-8, centered: bool = False) -> Any:
        r"""RMSprop's per-element step, a tree like params, for a proximal RMSprop.

        After a step without momentum, RMSprop moved each weight by ``step_size * g``:

        .. math:: \eta = \frac{\gamma}{d}, \qquad d = \sqrt{v} + \epsilon
            \quad\text{or, centered,}\quad d = \sqrt{v - \bar g^2} + \epsilon

        (0 for a leaf never stepped; with momentum it is the preconditioner the buffer
        accumulates). The prox of a penalty scaled by this metric gives proximal
        RMSprop::

            params, state = fr.rmsprop.step(params, grads, state, lr=lr)
            params = fr.l1.prox(params, lam, fr.rmsprop.step_size(state, lr=lr))

        Args:
            state: the state after the step.
            lr, eps, centered: the same as given to the step.

        Returns:
            A tree like params of tensors like each leaf.

        Raises:
            ValueError: a state without ``square_avg`` (or ``grad_avg`` when centered), a
                negative or non-finite number.
        """
        keys = ("square_avg", "step") + (("grad_avg",) if centered else ())
        if not isinstance(state, dict) or any(k not in state for k in keys):
            raise ValueError(f"{self.name}.step_size needs a state from {self.name}.init"
                             + ("(params, centered=True)" if centered else ""))
        trees = [state["square_avg"], state["step"]] + ([state["grad_avg"]] if centered else [])
        return _engine.run(self._step_size[centered], trees, {"lr": lr, "eps": eps})


def _entries(momentum: bool, centered: bool) -> tuple[str, ...]:
    return ("square_avg",) + (("momentum_buffer",) if momentum else ()) + (("grad_avg",) if centered else ())


def _zero(v: Any) -> bool:
    """A Python-number 0 (a tensor's value is not read)."""
    return not isinstance(v, torch.Tensor) and v == 0


def _require(state: Any, momentum: bool, centered: bool) -> None:
    """The state entries a step with this ``momentum`` and ``centered`` needs, named with
    the ``init`` call that makes them."""
    if not isinstance(state, dict):
        return  # run_step says what a state must be
    for key, flag, needed in (("momentum_buffer", "momentum", momentum), ("grad_avg", "centered", centered)):
        if needed and key not in state:
            raise ValueError(f"fr.rmsprop: a step with {flag} needs state[{key!r}]; create the state "
                             f"with fr.rmsprop.init(params, {flag}=True)")


def _rmsprop(
    ops: Ops, *, params: Tensors, grads: Tensors, step: Tensors, square_avg: Tensors,
    momentum_buffer: Tensors | None = None, grad_avg: Tensors | None = None, lr: Column, alpha: Column,
    eps: Column, weight_decay: Column, momentum: Column, decay: bool, maximize: bool,
) -> dict[str, Tensors]:
    # torch.optim's foreach RMSprop, line for line
    step = ops.add_(step, 1.0)
    if maximize:
        grads = ops.neg(grads)
    if decay:
        grads = ops.add_(grads, params, weight_decay)
    square_avg = ops.addcmul_(ops.mul_(square_avg, alpha), grads, grads, derive(lambda a: 1 - a, alpha))
    if grad_avg is not None:
        grad_avg = ops.lerp_(grad_avg, grads, derive(lambda a: 1 - a, alpha))
        # v - ḡ², into a fresh tensor: square_avg, as a borrowed list, is only read
        avg = ops.sqrt_(ops.addcmul_(list(square_avg), grad_avg, grad_avg, -1.0))
    else:
        avg = ops.sqrt(square_avg)
    avg = ops.add_(avg, eps)
    minus_lr = derive(lambda a: -a, lr)
    if momentum_buffer is not None:
        momentum_buffer = ops.addcdiv_(ops.mul_(momentum_buffer, momentum), grads, avg)
        params = ops.add_(params, momentum_buffer, minus_lr)
    else:
        params = ops.addcdiv_(params, grads, avg, minus_lr)
    out = {"params": params, "step": step, "square_avg": square_avg}
    if momentum_buffer is not None:
        out["momentum_buffer"] = momentum_buffer
    if grad_avg is not None:
        out["grad_avg"] = grad_avg
    return out


def _step_size(ops: Ops, *, v: Tensors, step: Tensors, grad_avg: Tensors | None = None, lr: Column,
               eps: Column) -> Tensors:
    # A leaf never stepped has v = 0: its step size is 0, not lr / eps.
    taken = [(s > 0).to(torch.float64 if x.dtype == torch.float64 else torch.float32)
             for s, x in zip(ops.bcast(step, v), v)]
    denom = ops.sqrt(v) if grad_avg is None else ops.sqrt_(ops.addcmul_(list(v), grad_avg, grad_avg, -1.0))
    denom = ops.add_(denom, eps)
    return ops.mul_(ops.reciprocal_(denom), [a * k for a, k in zip(each(lr, len(v)), taken)])


rmsprop = RMSprop()
