"""Stateless Adam and AdamW, step for step torch.optim.Adam / AdamW, and Adam's
per-element step size for a proximal Adam."""

from __future__ import annotations

from typing import Any

import torch

from funcreg import _dispatch, _hyper, _ops
from funcreg._ops import Column, Ops, Tensors
from funcreg._selection import Where
from funcreg._tree import flatten, leaves_like, require_tensors
from funcreg.optim._common import fused_lr, prepare, zero_state


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

    def init(self, params: Any, *, amsgrad: bool = False) -> dict[str, Any]:
        """Zero moments and step counts; ``amsgrad=True`` adds the running max of ``v``."""
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
    ) -> tuple[Any, dict[str, Any]]:
        """One Adam step: returns ``(new_params, new_state)``.

        ``weight_decay`` and ``decoupled`` default to torch.optim's: 0 and coupled for
        ``fr.adam``, 1e-2 and decoupled for ``fr.adamw``. The inputs are not modified,
        unless ``donate=True``: then params and state are donated, the step writes into
        their storage (on the fast path with Python-number hyperparameters it is
        torch.optim's fused step, run on them in place) and returns trees holding those
        same tensors.
        """
        decoupled = self._decoupled if decoupled is None else decoupled
        weight_decay = self._weight_decay if weight_decay is None else weight_decay
        lr = _hyper.number("lr", lr)
        beta1, beta2 = _betas(betas)
        eps = _hyper.number("eps", eps)
        weight_decay = _hyper.number("weight_decay", weight_decay)
        keys = ("step", "exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if amsgrad else ())
        batch = prepare(self.name, params, grads, state, keys, where)
        use_decay = not (isinstance(weight_decay, float) and weight_decay == 0)

        return batch.update(
            state,
            {"lr": lr, "beta1": beta1, "beta2": beta2, "eps": eps, "weight_decay": weight_decay},
            use_decay=use_decay,
            # torch's fused kernel takes a float or tensor lr, and floats for the rest
            fused_ok=not any(isinstance(v, torch.Tensor) for v in (beta1, beta2, eps, weight_decay)),
            fused=_fused,
            generic=_adam,
            donate=donate,
            decoupled=decoupled,
            amsgrad=amsgrad,
            maximize=maximize,
        )

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
        """
        lr = _hyper.number("lr", lr)
        beta1, beta2 = _betas(betas)
        eps = _hyper.number("eps", eps)
        key = "max_exp_avg_sq" if amsgrad else "exp_avg_sq"
        if not isinstance(state, dict) or key not in state or "step" not in state:
            raise ValueError(
                f"{self.name}.step_size needs a state from {self.name}.init"
                + ("(params, amsgrad=True)" if amsgrad else "")
            )
        flat = flatten(state[key], f"state[{key!r}]")
        require_tensors(flat, f"state[{key!r}]")
        steps = leaves_like(flat, state["step"], "state['step']")
        every = list(range(len(flat.leaves)))
        hyper = [_hyper.per_leaf(n, v, flat, every) for n, v in
                 (("lr", lr), ("beta1", beta1), ("beta2", beta2), ("eps", eps))]
        fast = _dispatch.use_fast_path(flat.leaves, steps, *hyper)
        out = _dispatch.run(_step_size, [flat.leaves, steps, *hyper], flat.leaves, fast=fast)
        return flat.unflatten(out)


def _betas(betas: Any) -> tuple[_hyper.Hyper, _hyper.Hyper]:
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise TypeError("betas must be a pair (beta1, beta2)")
    return tuple(  # type: ignore[return-value]
        _hyper.number(f"beta{k + 1}", b, high=1.0, high_open=True) for k, b in enumerate(betas)
    )


def _corrections(
    ops: Ops, steps: Tensors, like: Tensors, beta1: Column, beta2: Column
) -> tuple[Tensors, Tensors]:
    """``1 - beta ** t`` per leaf, in float64 for float64 leaves and float32 otherwise
    (torch.optim computes them in double on the host)."""
    t = [s.to(torch.float64 if x.dtype == torch.float64 else torch.float32) for s, x in zip(steps, like)]
    return ops.one_minus_pow(beta1, t), ops.one_minus_pow(beta2, t)


def _adam(
    ops: Ops, ps: Tensors, gs: Tensors, steps: Tensors, ms: Tensors, vs: Tensors, *rest: Any,
    decay: bool, decoupled: bool, amsgrad: bool, maximize: bool,
) -> tuple[Tensors, ...]:
    vmaxs = rest[0] if amsgrad else None
    lr, beta1, beta2, eps, wd = rest[1:] if amsgrad else rest
    steps = ops.add_(steps, 1.0)
    if maximize:
        gs = ops.neg(gs)
    if decay and not decoupled:
        gs = ops.add_(gs, ps, wd)
    if decay and decoupled:
        ps = ops.mul_(ps, _hyper.combine(lambda a, w: 1 - a * w, lr, wd))
    ms = ops.lerp_(ms, gs, _hyper.combine(lambda b: 1 - b, beta1))
    vs = ops.addcmul_(ops.mul_(vs, beta2), gs, gs, _hyper.combine(lambda b: 1 - b, beta2))
    if amsgrad:
        vmaxs = ops.maximum_(vmaxs, vs)
    bc1, bc2 = _corrections(ops, steps, ps, beta1, beta2)
    denom = ops.add_(ops.div_(ops.sqrt(vmaxs if amsgrad else vs), [b.sqrt() for b in bc2]), eps)
    ps = ops.addcdiv_(ps, ms, denom, [-a / b for a, b in zip(lr, bc1)])
    return (ps, steps, ms, vs) + ((vmaxs,) if amsgrad else ())


def _fused(
    ops: Ops, ps: Tensors, gs: Tensors, steps: Tensors, ms: Tensors, vs: Tensors, *rest: Any,
    decay: bool, decoupled: bool, amsgrad: bool, maximize: bool,
) -> tuple[Tensors, ...]:
    """torch's fused Adam(W) kernel: in place on donated params and state, as
    torch.optim's fused step is, and otherwise on fresh copies (inputs stay untouched)."""
    vmaxs = _ops.owned_copy(rest[0]) if amsgrad else []
    lr, beta1, beta2, eps, wd = rest[1:] if amsgrad else rest
    ps, ms, vs = _ops.owned_copy(ps), _ops.owned_copy(ms), _ops.owned_copy(vs)
    steps = ops.add_(steps, 1.0)
    kernel = torch._fused_adamw_ if decoupled else torch._fused_adam_
    kernel(
        ps, gs, ms, vs, vmaxs, steps,
        lr=fused_lr(lr[0]), beta1=beta1[0], beta2=beta2[0],
        weight_decay=wd[0] if decay else 0.0, eps=eps[0],
        amsgrad=amsgrad, maximize=maximize,
    )
    return (ps, steps, ms, vs) + ((vmaxs,) if amsgrad else ())


def _step_size(
    ops: Ops, vs: Tensors, steps: Tensors, lr: Column, beta1: Column, beta2: Column, eps: Column
) -> Tensors:
    # A leaf never stepped has t = 0: its step size is 0, not lr / 0.
    taken = [(s > 0).to(torch.float64 if v.dtype == torch.float64 else torch.float32)
             for s, v in zip(steps, vs)]
    bc1, bc2 = _corrections(ops, [s.clamp_min(1) for s in steps], vs, beta1, beta2)
    denom = ops.add_(ops.div_(ops.sqrt(vs), [b.sqrt() for b in bc2]), eps)
    return ops.mul_(ops.reciprocal_(denom), [a * k / b for a, k, b in zip(lr, taken, bc1)])


adam = Adam("fr.adam", decoupled=False, weight_decay=0.0)
adamw = Adam("fr.adamw", decoupled=True, weight_decay=1e-2)
