"""Stateless Lion (Chen et al. 2023), with decoupled weight decay."""

from __future__ import annotations

from typing import Any

import torch

from funcreg._hyper import Param
from funcreg._ops import Column, Ops, Tensors, derive
from funcreg._selection import Where
from funcreg.optim._common import run_step, step_op, zero_state


class Lion:
    r"""Lion, the sign-momentum optimizer of Chen et al. (2023), as a pure function.

    With :math:`g` the gradient, :math:`\gamma` = ``lr``, ``betas`` =
    :math:`(\beta_1, \beta_2)` and :math:`m` the momentum:

    .. math::
        c &= \beta_1 m + (1-\beta_1) g \\
        w &\leftarrow w - \gamma\,\bigl(\operatorname{sign}(c) + \mathrm{wd}\cdot w\bigr) \\
        m &\leftarrow \beta_2 m + (1-\beta_2) g

    The weight decay is decoupled, as in the paper (and AdamW): ``w * (1 - lr * wd)``
    before the signed step, on the leaves ``where`` selects (all by default), so
    ``where=fr.select.weights`` leaves biases and norms undecayed. Every leaf with a
    gradient is updated; a leaf whose gradient is ``None`` keeps its value and its state.
    Lion's update has the same size, ``lr``, in every coordinate, so its ``lr`` is
    typically 3-10 times smaller than AdamW's and its ``weight_decay`` as many times
    larger (the paper's advice).

    The state is ``{"step", "exp_avg"}``: one float32 0-d count per leaf (Lion does not
    read it) and :math:`m`, a tree like params. Hyperparameters may be Python numbers or
    0-d tensors (batched under ``vmap``).

    Reference: Chen, Liang, Huang, Real, Wang, Pham, Dong, Luong, Hsieh, Lu & Le,
    "Symbolic discovery of optimization algorithms", NeurIPS 2023 (Algorithm 2).

    >>> import torch, funcreg as fr
    >>> params, grads = {"w": torch.tensor([1.0, -1.0])}, {"w": torch.tensor([0.5, -2.0])}
    >>> state = fr.lion.init(params)
    >>> params, state = fr.lion.step(params, grads, state, lr=0.1)
    >>> params["w"], state["exp_avg"]["w"]
    (tensor([ 0.9000, -0.9000]), tensor([ 0.0050, -0.0200]))
    """

    name = "fr.lion"

    def __init__(self) -> None:
        hypers = (Param("lr"), Param("beta1", high=1.0), Param("beta2", high=1.0), Param("weight_decay"))
        self._op = step_op(self.name, _lion, ("exp_avg",), hypers)

    def init(self, params: Any) -> dict[str, Any]:
        """Zero step counts and a zero ``exp_avg``.

        Args:
            params: the parameter tree.

        Returns:
            The state: a dict of trees like params (``step`` holds 0-d counts), fresh
            tensors on each leaf's device.

        Raises:
            TypeError: a leaf that is not a floating-point tensor (named).
        """
        return zero_state(params, ("exp_avg",))

    def step(
        self,
        params: Any,
        grads: Any,
        state: dict[str, Any],
        *,
        lr: Any,
        betas: tuple[Any, Any] = (0.9, 0.99),
        weight_decay: Any = 0.0,
        where: Where = None,
        donate: bool = False,
        differentiable: bool = False,
    ) -> tuple[Any, dict[str, Any]]:
        """One Lion step: returns ``(new_params, new_state)``.

        Args:
            params: the parameter tree (``dict(model.named_parameters())``, detached).
            grads: gradients, a tree like params; a ``None`` leaf leaves that leaf and its
                state as they are.
            state: from :meth:`init`.
            lr: the step, a number >= 0 or a 0-d tensor (batched under ``vmap``).
            betas: ``(beta1, beta2)`` in [0, 1]: the interpolation of the update and of
                the momentum.
            weight_decay: decoupled decay, a number >= 0 or a 0-d tensor.
            where: the leaves that are decayed (all by default).
            donate: write the results into params and state and return those tensors
                (nothing is allocated for them); the values are the pure call's.
            differentiable: record autograd history, as torch.optim's flag (the sign has
                zero derivative, so only the decay carries a hypergradient).

        Returns:
            ``(new_params, new_state)``; the inputs are unchanged unless donated.

        Raises:
            ValueError: a negative or non-finite number, a beta outside [0, 1], a state
                without ``exp_avg``, trees that do not match params, a ``where`` that
                selects nothing (each naming the leaf).
            TypeError: ``betas`` not a pair, a non-tensor or integer leaf, a
                hyperparameter of the wrong type.
        """
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise TypeError("betas must be a pair (beta1, beta2)")
        hypers = {"lr": lr, "beta1": betas[0], "beta2": betas[1], "weight_decay": weight_decay}
        decay = isinstance(weight_decay, torch.Tensor) or weight_decay != 0
        return run_step(self._op, params, grads, state, hypers, where=where, donate=donate,
                        differentiable=differentiable, decay=decay)


def _lion(ops: Ops, *, params: Tensors, grads: Tensors, step: Tensors, exp_avg: Tensors, lr: Column,
          beta1: Column, beta2: Column, weight_decay: Column, decay: bool) -> dict[str, Tensors]:
    step = ops.add_(step, 1.0)
    # c = β1·m + (1 − β1)·g = lerp(g, m, β1): a fresh tensor (grads are only read), whose
    # sign is then taken in place
    update = ops.sign_(ops.lerp_(grads, exp_avg, beta1))
    if decay:
        params = ops.mul_(params, derive(lambda a, w: 1 - a * w, lr, weight_decay))
    params = ops.add_(params, update, derive(lambda a: -a, lr))
    exp_avg = ops.lerp_(exp_avg, grads, derive(lambda b: 1 - b, beta2))
    return {"params": params, "step": step, "exp_avg": exp_avg}


lion = Lion()
