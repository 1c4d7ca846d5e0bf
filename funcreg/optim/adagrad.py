"""Stateless Adagrad, step for step torch.optim.Adagrad, and its per-element step size for
a proximal Adagrad."""

from __future__ import annotations

from typing import Any, cast

import torch

from funcreg import _engine, _hyper, _ops
from funcreg._engine import Op, Role
from funcreg._hyper import Param
from funcreg._ops import Column, Ops, Tensors, derive, each, is_number
from funcreg._selection import Where
from funcreg._tree import flatten
from funcreg.optim._common import STEP, fused_lr, run_step, step_op, zero_state


class Adagrad:
    r"""Adagrad as a pure function, step for step torch.optim.Adagrad.

    With :math:`g` the gradient (negated when ``maximize``), :math:`t` the leaf's step
    count after this step, :math:`\gamma` = ``lr``, :math:`\delta` = ``lr_decay`` and
    :math:`\epsilon` = ``eps``:

    .. math::
        g &\leftarrow g + \mathrm{wd}\cdot w \quad\text{(on the leaves ``where`` selects)} \\
        s &\leftarrow s + g^2 \\
        w &\leftarrow w - \frac{\gamma}{1 + (t-1)\,\delta}\,\frac{g}{\sqrt{s} + \epsilon}

    ``weight_decay`` keeps torch.optim's meaning (``wd * w`` added to the gradient, the
    gradient of :math:`\tfrac{wd}{2}\sum w^2`); ``where`` chooses the decayed leaves (all by
    default), so ``where=fr.select.weights`` is torch.optim with a second parameter group
    without decay. A leaf whose gradient is ``None`` keeps its value and its state.

    The state is ``{"step", "sum"}`` (torch.optim's names): one float32 0-d count per
    leaf and :math:`s`, a tree like params that starts at ``initial_accumulator_value``.
    Hyperparameters may be Python numbers or 0-d tensors (batched under ``vmap``). On the
    fast path, with Python-number ``lr_decay``, ``weight_decay`` and ``eps``, a CPU step is
    torch's fused Adagrad kernel (``torch.optim.Adagrad(fused=True)``'s), run in place on
    donated tensors and on fresh copies otherwise.

    Reference: Duchi, Hazan & Singer, "Adaptive subgradient methods for online learning and
    stochastic optimization", JMLR 12 (2011).

    >>> import torch, funcreg as fr
    >>> params, grads = {"w": torch.tensor([1.0, -1.0])}, {"w": torch.tensor([0.5, -2.0])}
    >>> state = fr.adagrad.init(params)
    >>> params, state = fr.adagrad.step(params, grads, state, lr=0.1)
    >>> params["w"]
    tensor([ 0.9000, -0.9000])
    """

    name = "fr.adagrad"

    def __init__(self) -> None:
        hypers = (Param("lr"), Param("lr_decay"), Param("weight_decay"), Param("eps"))
        self._op = step_op(self.name, _adagrad, ("sum",), hypers)
        self._step_size = Op(f"{self.name}.step_size", _step_size, Role("sum", "state['sum']"), roles=(STEP,),
                             hypers=(Param("lr"), Param("lr_decay"), Param("eps")), output="tree", where="none",
                             history=False)

    def init(self, params: Any, *, initial_accumulator_value: Any = 0.0) -> dict[str, Any]:
        """Zero step counts, and ``sum`` filled with ``initial_accumulator_value`` (a number
        >= 0 or a 0-d tensor).

        Args:
            params: the parameter tree.
            initial_accumulator_value: the starting value of ``sum``, as torch.optim's.

        Returns:
            The state: a dict of trees like params (``step`` holds 0-d counts), fresh
            tensors on each leaf's device.

        Raises:
            TypeError: a leaf that is not a floating-point tensor (named).
            ValueError: a negative or non-finite ``initial_accumulator_value``.
        """
        value = _hyper.number("initial_accumulator_value", initial_accumulator_value)
        state = zero_state(params, ("sum",))
        if isinstance(value, torch.Tensor) or value != 0:
            # the zeros were just allocated here, so a number fills them in place; a tensor
            # goes out of place, since under vmap it may be batched where they are not
            sums = flatten(state["sum"], "state['sum']")
            state["sum"] = sums.unflatten([s + value.to(s.dtype) if isinstance(value, torch.Tensor)
                                           else s.fill_(value) for s in sums.leaves])
        return state

    def step(
        self,
        params: Any,
        grads: Any,
        state: dict[str, Any],
        *,
        lr: Any,
        lr_decay: Any = 0.0,
        weight_decay: Any = 0.0,
        eps: Any = 1e-10,
        maximize: bool = False,
        where: Where = None,
        donate: bool = False,
        differentiable: bool = False,
    ) -> tuple[Any, dict[str, Any]]:
        """One Adagrad step: returns ``(new_params, new_state)``.

        Args:
            params: the parameter tree (``dict(model.named_parameters())``, detached).
            grads: gradients, a tree like params; a ``None`` leaf leaves that leaf and its
                state as they are.
            state: from :meth:`init`.
            lr, lr_decay, weight_decay, eps: torch.optim.Adagrad's, each a number >= 0 or
                a 0-d tensor (batched under ``vmap``).
            maximize: ascend the objective.
            where: the leaves that are decayed (all by default).
            donate: write the results into params and state and return those tensors
                (nothing is allocated for them); the values are the pure call's.
            differentiable: record autograd history (hypergradients), as torch.optim's flag.

        Returns:
            ``(new_params, new_state)``; the inputs are unchanged unless donated.

        Raises:
            ValueError: a negative or non-finite number, a state without ``sum``, trees
                that do not match params, a ``where`` that selects nothing (each naming
                the leaf).
            TypeError: a non-tensor or integer leaf, a hyperparameter of the wrong type.
        """
        hypers = {"lr": lr, "lr_decay": lr_decay, "weight_decay": weight_decay, "eps": eps}
        decay = isinstance(weight_decay, torch.Tensor) or weight_decay != 0
        return run_step(self._op, params, grads, state, hypers, where=where, donate=donate,
                        differentiable=differentiable, decay=decay, maximize=maximize)

    def step_size(self, state: dict[str, Any], *, lr: Any, lr_decay: Any = 0.0, eps: Any = 1e-10) -> Any:
        r"""Adagrad's per-element step, a tree like params, for a proximal Adagrad.

        After a step, Adagrad moved each weight by ``step_size * g``:

        .. math:: \eta = \frac{\gamma}{1 + (t-1)\,\delta}\,\frac{1}{\sqrt{s} + \epsilon}

        (0 for a leaf never stepped). The prox of a penalty scaled by this metric gives
        proximal Adagrad (Duchi et al.'s composite mirror descent with a diagonal
        metric)::

            params, state = fr.adagrad.step(params, grads, state, lr=lr)
            params = fr.l1.prox(params, lam, fr.adagrad.step_size(state, lr=lr))

        Args:
            state: the state after the step.
            lr, lr_decay, eps: the same as given to the step.

        Returns:
            A tree like params of tensors like each leaf.

        Raises:
            ValueError: a state without ``sum``, a negative or non-finite number.
        """
        if not isinstance(state, dict) or "sum" not in state or "step" not in state:
            raise ValueError(f"{self.name}.step_size needs a state from {self.name}.init")
        return _engine.run(self._step_size, [state["sum"], state["step"]],
                           {"lr": lr, "lr_decay": lr_decay, "eps": eps})


def _minus_clr(ops: Ops, step: Tensors, like: Tensors, lr: Column, lr_decay: Column) -> Column:
    """``-lr / (1 + (t - 1) * lr_decay)`` per leaf, from each leaf's count ``t`` (in float64
    for float64 leaves, as torch.optim computes it on the host, float32 otherwise)."""
    if is_number(lr_decay) and not isinstance(lr_decay, list) and lr_decay == 0:
        return derive(lambda a: -a, lr)
    n = len(like)
    t = [s.to(torch.float64 if x.dtype == torch.float64 else torch.float32)
         for s, x in zip(ops.bcast(step, like), like)]
    return [-a / (1 + (s - 1) * d) for a, d, s in zip(each(lr, n), each(lr_decay, n), t)]


def _adagrad(
    ops: Ops, *, params: Tensors, grads: Tensors, step: Tensors, sum: Tensors, lr: Column,
    lr_decay: Column, weight_decay: Column, eps: Column, decay: bool, maximize: bool,
) -> dict[str, Tensors]:
    if (ops.fused and not ops.dtensor and params[0].device.type == "cpu"
            and all(is_number(h) for h in (lr_decay, weight_decay, eps))
            and not (ops.batch and isinstance(lr, list)) and ops.counts(step) is not None):
        return _fused(ops, params=params, grads=grads, step=step, sums=sum, lr=lr, lr_decay=cast(float, lr_decay),
                      weight_decay=cast(float, weight_decay) if decay else 0.0, eps=cast(float, eps),
                      maximize=maximize)
    # torch.optim's foreach Adagrad, with its learning-rate decay computed from each leaf's
    # count as a tensor (never read on the host)
    step = ops.add_(step, 1.0)
    if maximize:
        grads = ops.neg(grads)
    if decay:
        grads = ops.add_(grads, params, weight_decay)
    minus_clr = _minus_clr(ops, step, params, lr, lr_decay)
    sum = ops.addcmul_(sum, grads, grads)
    std = ops.add_(ops.sqrt(sum), eps)
    params = ops.addcdiv_(params, ops.mul_(grads, minus_clr), std)
    return {"params": params, "step": step, "sum": sum}


def _fused(ops: Ops, *, params: Tensors, grads: Tensors, step: Tensors, sums: Tensors, lr: Any, lr_decay: float,
           weight_decay: float, eps: float, maximize: bool) -> dict[str, Tensors]:
    """torch's fused Adagrad kernel: in place on donated params and state, as torch.optim's
    fused step is, and otherwise on fresh copies (inputs stay untouched)."""
    params, sums = _ops.owned_copy(params), _ops.owned_copy(sums)
    step = ops.add_(step, 1.0)
    torch._fused_adagrad_(params, grads, sums, ops.counts(step, check=False), lr=fused_lr(lr), lr_decay=lr_decay,
                          weight_decay=weight_decay, eps=eps, maximize=maximize)
    return {"params": params, "step": step, "sum": sums}


def _step_size(ops: Ops, *, sum: Tensors, step: Tensors, lr: Column, lr_decay: Column, eps: Column) -> Tensors:
    # A leaf never stepped has t = 0: its step size is 0, not lr / (1 - lr_decay) / eps.
    taken = [(s > 0).to(torch.float64 if x.dtype == torch.float64 else torch.float32)
             for s, x in zip(ops.bcast(step, sum), sum)]
    minus_clr = _minus_clr(ops, step, sum, lr, lr_decay)
    denom = ops.add_(ops.sqrt(sum), eps)
    return ops.mul_(ops.reciprocal_(denom), [-c * k for c, k in zip(each(minus_clr, len(sum)), taken)])


adagrad = Adagrad()
