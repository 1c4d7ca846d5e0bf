"""Stateless Adam and AdamW, step for step torch.optim.Adam / AdamW, and Adam's
per-element step size for a proximal Adam."""

from __future__ import annotations

from typing import Any, cast

import torch

from funcreg import _engine, _ops
from funcreg._engine import Op, Role
from funcreg._hyper import Param
from funcreg._ops import Column, Ops, Tensors, derive, each, is_number
from funcreg._selection import Where
from funcreg.optim._common import STEP, fused_lr, run_step, step_op, zero_state


class Adam:
    r"""Adam as a pure function, step for step torch.optim.Adam (``decoupled=False``) or
    torch.optim.AdamW (``decoupled=True``).

    With :math:`g` the gradient (negated when ``maximize``), :math:`t` the leaf's step
    count after this step, :math:`\gamma` = ``lr`` and ``betas`` = :math:`(\beta_1, \beta_2)`:

    .. math::
        g &\leftarrow g + \mathrm{wd}\cdot w \quad\text{(coupled)}, \qquad
        w \leftarrow w\,(1 - \gamma\,\mathrm{wd}) \quad\text{(decoupled)} \\
        m &\leftarrow \beta_1 m + (1-\beta_1) g, \qquad
        v \leftarrow \beta_2 v + (1-\beta_2) g^2 \\
        \hat v &= \max(\hat v_{\text{prev}}, v) \ \text{(amsgrad)}, \quad \hat v = v \ \text{(otherwise)} \\
        w &\leftarrow w - \frac{\gamma}{1-\beta_1^t}\,
            \frac{m}{\sqrt{\hat v}/\sqrt{1-\beta_2^t} + \epsilon}

    ``weight_decay`` keeps torch.optim's meaning (coupled: ``wd * w`` added to the
    gradient; decoupled: ``w * (1 - lr * wd)``); ``where`` chooses the decayed leaves (all
    by default), so ``where=fr.select.weights`` is torch.optim with a second parameter group
    without decay. A leaf whose gradient is ``None`` keeps its value and state.

    The state is ``{"step", "exp_avg", "exp_avg_sq"}`` (plus ``"max_exp_avg_sq"`` from
    ``init(params, amsgrad=True)``), each a tree like params; ``step`` holds one float32
    0-d count per leaf. Hyperparameters may be Python numbers or 0-d tensors (batched
    under ``vmap``).

    >>> import torch, funcreg as fr
    >>> params, grads = {"w": torch.tensor([1.0, -1.0])}, {"w": torch.tensor([0.5, -2.0])}
    >>> state = fr.adam.init(params)
    >>> params, state = fr.adam.step(params, grads, state, lr=0.1)
    >>> params["w"]
    tensor([ 0.9000, -0.9000])
    """

    def __init__(self, name: str, decoupled: bool, weight_decay: float):
        self.name = name
        self._decoupled = decoupled
        self._weight_decay = weight_decay
        hypers = (Param("lr"), Param("beta1", high=1.0, high_open=True), Param("beta2", high=1.0, high_open=True),
                  Param("eps"),
                  Param("weight_decay"))
        entries = ("exp_avg", "exp_avg_sq")
        self._ops = {ams: step_op(name, _adam, entries + (("max_exp_avg_sq",) if ams else ()), hypers)
                     for ams in (False, True)}
        self._step_size = {key: Op(f"{name}.step_size", _step_size, Role("v", f"state[{key!r}]"), roles=(STEP,),
                                   hypers=hypers[:4], output="tree", where="none", history=False)
                           for key in ("exp_avg_sq", "max_exp_avg_sq")}

    def init(self, params: Any, *, amsgrad: bool = False) -> dict[str, Any]:
        """Zero moments and step counts; ``amsgrad=True`` adds the running max of ``v``.

        Args:
            params: the parameter tree.
            amsgrad: add ``max_exp_avg_sq``, which an ``amsgrad=True`` step needs.

        Returns:
            The state: a dict of trees like params (``step`` holds 0-d counts), fresh
            tensors on each leaf's device.

        Raises:
            TypeError: a leaf that is not a floating-point tensor (named).
        """
        buffers = ("exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if amsgrad else ())
        return zero_state(params, buffers)

    def step(
        self,
        params: Any,
        grads: Any,
        state: dict[str, Any],
        *,
        lr: Any,
        betas: tuple[Any, Any] = (0.9, 0.999),
        eps: Any = 1e-8,
        weight_decay: Any = None,
        decoupled: bool | None = None,
        amsgrad: bool = False,
        maximize: bool = False,
        where: Where = None,
        donate: bool = False,
        differentiable: bool = False,
    ) -> tuple[Any, dict[str, Any]]:
        """One Adam step: returns ``(new_params, new_state)``.

        ``weight_decay`` and ``decoupled`` default to torch.optim's: 0 and coupled for
        ``fr.adam``, 1e-2 and decoupled for ``fr.adamw``. The inputs are not modified,
        unless ``donate=True``: then params and state are donated, the step writes into
        their storage (on the fast path with Python-number hyperparameters it is
        torch.optim's fused step, run on them in place) and returns trees holding those
        same tensors. Params that require grad, in grad mode, are refused unless
        ``differentiable=True``, which records the step's autograd history (for
        hypergradients, as torch.optim's ``differentiable``).

        Args:
            params: the parameter tree (``dict(model.named_parameters())``, detached).
            grads: gradients, a tree like params; a ``None`` leaf leaves that leaf and its
                state as they are.
            state: from :meth:`init` (``amsgrad=True`` there for an ``amsgrad`` step).
            lr: the learning rate, a number >= 0 or a 0-d tensor (batched under
                ``vmap``).
            betas: ``(beta1, beta2)``, each in [0, 1): the decay rates of the first and
                second moments.
            eps: added to the denominator, a number >= 0 or a 0-d tensor.
            weight_decay: a number >= 0 or a 0-d tensor (default 0 for ``fr.adam``, 1e-2
                for ``fr.adamw``).
            decoupled: decay the weights directly (AdamW) rather than through the
                gradient (Adam); the default is the object's.
            amsgrad: divide by the running maximum of the second moment.
            maximize: ascend the objective.
            where: the leaves that are decayed (all by default).
            donate: write the results into params and state and return those tensors.
            differentiable: record autograd history (hypergradients), as torch.optim's flag.

        Returns:
            ``(new_params, new_state)``; the inputs are unchanged unless donated.

        Raises:
            ValueError: a negative or non-finite number, a beta outside [0, 1), a state
                without the moments the step needs, trees that do not match params
                (each naming the leaf).
            TypeError: ``betas`` not a pair, a non-tensor or integer leaf, a
                hyperparameter of the wrong type.
        """
        weight_decay = self._weight_decay if weight_decay is None else weight_decay
        beta1, beta2 = _betas(betas)
        hypers = {"lr": lr, "beta1": beta1, "beta2": beta2, "eps": eps, "weight_decay": weight_decay}
        decay = not (not isinstance(weight_decay, torch.Tensor) and weight_decay == 0)
        return run_step(self._ops[amsgrad], params, grads, state, hypers, where=where, donate=donate,
                        differentiable=differentiable, decay=decay, maximize=maximize,
                        decoupled=self._decoupled if decoupled is None else decoupled)

    def step_size(
        self, state: dict[str, Any], *, lr: Any, betas: tuple[Any, Any] = (0.9, 0.999),
        eps: Any = 1e-8, amsgrad: bool = False,
    ) -> Any:
        r"""Adam's per-element step, a tree like params, for a proximal Adam.

        After a step, Adam moved each weight by ``step_size * m``:

        .. math:: \eta = \frac{\gamma}{1-\beta_1^t}\,\frac{1}{\sqrt{\hat v}/\sqrt{1-\beta_2^t} + \epsilon}

        (with ``max_exp_avg_sq`` as :math:`\hat v` when ``amsgrad``, and 0 for a leaf never
        stepped). The prox of a penalty scaled by this metric gives proximal Adam::

            params, state = fr.adam.step(params, grads, state, lr=lr)
            params = fr.l1.prox(params, lam, fr.adam.step_size(state, lr=lr))

        Pass the same ``lr``, ``betas``, ``eps`` and ``amsgrad`` as to the step.

        Args:
            state: the state after the step.
            lr, betas, eps, amsgrad: the same as given to the step.

        Returns:
            A tree like params of tensors like each leaf.

        Raises:
            ValueError: a state without ``exp_avg_sq`` (``max_exp_avg_sq`` with
                ``amsgrad``) or ``step``, a negative or non-finite number.
            TypeError: ``betas`` not a pair.
        """
        beta1, beta2 = _betas(betas)
        key = "max_exp_avg_sq" if amsgrad else "exp_avg_sq"
        if not isinstance(state, dict) or key not in state or "step" not in state:
            raise ValueError(
                f"{self.name}.step_size needs a state from {self.name}.init"
                + ("(params, amsgrad=True)" if amsgrad else "")
            )
        hypers = {"lr": lr, "beta1": beta1, "beta2": beta2, "eps": eps}
        return _engine.run(self._step_size[key], [state[key], state["step"]], hypers)


def _betas(betas: Any) -> tuple[Any, Any]:
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise TypeError("betas must be a pair (beta1, beta2)")
    return betas[0], betas[1]


def _corrections(ops: Ops, step: Tensors, like: Tensors, beta1: Column, beta2: Column) -> tuple[Tensors, Tensors]:
    """``1 - beta ** t`` per leaf (shaped to broadcast against it), in float64 for float64
    leaves and float32 otherwise (torch.optim computes them in double on the host)."""
    t = [s.to(torch.float64 if x.dtype == torch.float64 else torch.float32)
         for s, x in zip(ops.bcast(step, like), like)]
    return ops.one_minus_pow(beta1, t), ops.one_minus_pow(beta2, t)


def _adam(
    ops: Ops, *, params: Tensors, grads: Tensors, step: Tensors, exp_avg: Tensors, exp_avg_sq: Tensors,
    max_exp_avg_sq: Tensors | None = None, lr: Column, beta1: Column, beta2: Column, eps: Column,
    weight_decay: Column, decay: bool, decoupled: bool, maximize: bool,
) -> dict[str, Tensors]:
    if (ops.fused and all(is_number(h) for h in (beta1, beta2, eps, weight_decay))
            and not (ops.batch and isinstance(lr, list)) and ops.counts(step) is not None):
        return _fused(ops, params=params, grads=grads, step=step, exp_avg=exp_avg, exp_avg_sq=exp_avg_sq,
                      max_exp_avg_sq=max_exp_avg_sq, lr=lr, beta1=cast(float, beta1), beta2=cast(float, beta2),
                      eps=cast(float, eps), weight_decay=cast(float, weight_decay) if decay else 0.0,
                      decoupled=decoupled, maximize=maximize)
    # torch.optim's foreach Adam, in its capturable form: the bias corrections are tensors
    # (each leaf's own step count), never read on the host
    step = ops.add_(step, 1.0)
    if maximize:
        grads = ops.neg(grads)
    if decay and decoupled:
        params = ops.mul_(params, derive(lambda a, w: 1 - a * w, lr, weight_decay))
    elif decay:
        grads = ops.add_(grads, params, weight_decay)
    exp_avg = ops.lerp_(exp_avg, grads, derive(lambda b: 1 - b, beta1))
    exp_avg_sq = ops.addcmul_(ops.mul_(exp_avg_sq, beta2), grads, grads, derive(lambda b: 1 - b, beta2))
    if max_exp_avg_sq is not None:
        max_exp_avg_sq = ops.maximum_(max_exp_avg_sq, exp_avg_sq)
    bias_correction1, bias_correction2 = _corrections(ops, step, params, beta1, beta2)
    n = len(params)
    step_size = [b.reciprocal() * -a for a, b in zip(each(lr, n), bias_correction1)]  # -lr / bc1
    denom = ops.sqrt(exp_avg_sq if max_exp_avg_sq is None else max_exp_avg_sq)
    denom = ops.div_(denom, [b.sqrt() * s for b, s in zip(bias_correction2, step_size)])
    denom = ops.add_(denom, [e / s for e, s in zip(each(eps, n), step_size)])
    params = ops.addcdiv_(params, exp_avg, denom)  # p - lr/bc1 · m / (sqrt(v)/sqrt(bc2) + eps)
    return {"params": params, "step": step, "exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq,
            **({"max_exp_avg_sq": max_exp_avg_sq} if max_exp_avg_sq is not None else {})}


def _fused(
    ops: Ops, *, params: Tensors, grads: Tensors, step: Tensors, exp_avg: Tensors, exp_avg_sq: Tensors,
    max_exp_avg_sq: Tensors | None, lr: Any, beta1: float, beta2: float, eps: float, weight_decay: float,
    decoupled: bool, maximize: bool,
) -> dict[str, Tensors]:
    """torch's fused Adam(W) kernel: in place on donated params and state, as torch.optim's
    fused step is, and otherwise on fresh copies (inputs stay untouched)."""
    params, exp_avg, exp_avg_sq = map(_ops.owned_copy, (params, exp_avg, exp_avg_sq))
    maxima = _ops.owned_copy(max_exp_avg_sq) if max_exp_avg_sq is not None else []
    step = ops.add_(step, 1.0)
    kernel = torch._fused_adamw_ if decoupled else torch._fused_adam_
    kernel(params, grads, exp_avg, exp_avg_sq, maxima, ops.counts(step, check=False), lr=fused_lr(lr),
           beta1=beta1, beta2=beta2, weight_decay=weight_decay, eps=eps, amsgrad=max_exp_avg_sq is not None,
           maximize=maximize)
    return {"params": params, "step": step, "exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq,
            **({"max_exp_avg_sq": maxima} if max_exp_avg_sq is not None else {})}


def _step_size(ops: Ops, *, v: Tensors, step: Tensors, lr: Column, beta1: Column, beta2: Column,
               eps: Column) -> Tensors:
    # A leaf never stepped has t = 0: its step size is 0, not lr / 0.
    taken = [(s > 0).to(torch.float64 if x.dtype == torch.float64 else torch.float32)
             for s, x in zip(ops.bcast(step, v), v)]
    bias_correction1, bias_correction2 = _corrections(ops, [s.clamp_min(1) for s in step], v, beta1, beta2)
    denom = ops.add_(ops.div_(ops.sqrt(v), [b.sqrt() for b in bias_correction2]), eps)
    return ops.mul_(ops.reciprocal_(denom), [a * k / b for a, k, b in zip(each(lr, len(v)), taken, bias_correction1)])


adam = Adam("fr.adam", decoupled=False, weight_decay=0.0)
adamw = Adam("fr.adamw", decoupled=True, weight_decay=1e-2)
