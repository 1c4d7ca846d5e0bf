"""FISTA: accelerated proximal gradient with adaptive restart and a step size that finds
itself, as a stateless step that ``vmap`` can batch over many λ."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import optree
import torch
from torch.func import grad_and_value

from funcreg.optim import _fista_core as _core
from funcreg.penalties import Penalty


def _map(fn: Callable[..., Any], tree: Any, *rest: Any) -> Any:
    return optree.tree_map(fn, tree, *rest, namespace="torch")


class FISTA:
    r"""Full-batch accelerated proximal gradient (FISTA) with adaptive restart, backtracking
    and one step per leaf, as a pure ``init``/``step`` pair.

    It minimizes :math:`F(w) = f(w) + P_\lambda(w)`, with ``loss`` the smooth part
    :math:`f` (task loss plus any smooth penalty) and ``penalty`` a family whose prox
    gives :math:`P_\lambda`. Each leaf :math:`l` has its own step :math:`\eta_l`: the
    iteration runs in the diagonal metric with one value per leaf, so that a leaf on which
    the loss is flat (an input layer on small-scale features next to an intercept, say)
    is not held to the step of the stiffest leaf. The state holds the extrapolated point
    :math:`z` and the momentum count :math:`t`. One step, from :math:`w` (``params``):

    .. math::
        u &= \operatorname{prox}_{\eta P_\lambda}\bigl(z - \eta\odot\nabla f(z)\bigr)
             \quad\text{(each leaf's prox with its own step)} \\
        \text{accept} &\iff f(u) \le f(z) + \langle\nabla f(z), u - z\rangle
                             + \sum_l \tfrac{1}{2\eta_l}\lVert u_l - z_l\rVert^2 \\
        \text{restart} &\iff \sum_l \tfrac{1}{\eta_l}\langle z_l - u_l,\, u_l - w_l\rangle > 0
             \quad (t \leftarrow 1) \\
        t' &= \tfrac12\bigl(1 + \sqrt{1 + 4t^2}\bigr), \qquad
        w, z, t \leftarrow u,\; u + \tfrac{t - 1}{t'}(u - w),\; t'

    The acceptance test is Beck & Teboulle's sufficient decrease, in that metric (with a
    slack of a few units of rounding in :math:`f`, so that float noise near the solution
    does not read as curvature). A rejected step leaves :math:`w, z, t` as they are and
    only changes the steps, so every member makes at most one trial per step and ``vmap``
    sees no data-dependent control flow. The restart is O'Donoghue & Candès' gradient
    scheme: momentum is dropped when it points uphill.

    **The steps** follow two measurements. Each leaf's step is capped by the curvature
    along the last move of :math:`z` (a secant, as Barzilai & Borwein's step),

    .. math::
        \ell_l = \frac{\langle\nabla_l f(z) - \nabla_l f(z^-),\ z_l - z^-_l\rangle}
                       {\lVert z_l - z^-_l\rVert^2}, \qquad \eta_l \le 0.9/\ell_l,

    measured only where it stands well above rounding (the last value measured,
    ``state["curvature"]``, keeps capping); and all steps move together with the curvature
    along the trial relative to the metric's,

    .. math::
        \rho = \frac{f(u) - f(z) - \langle\nabla f(z), u-z\rangle}
                     {\sum_l \tfrac{1}{2\eta_l}\lVert u_l - z_l\rVert^2}, \qquad
        \eta \leftarrow \eta\min(\mathrm{grow}, 0.9/\rho) \ \text{(accepted)}, \quad
        \eta \leftarrow \eta\min(1/2, 0.9/\rho) \ \text{(rejected)}

    (:math:`\rho` where the excess stands above rounding). So a first ``lr`` that is too large costs a
    few rejected trials and one that is too small a few steps of growth; no step size
    needs tuning. With a single leaf this is backtracking with the step following the
    curvature along each trial. Where a family's ``groups=`` may tie slices of several
    leaves into one group, all leaves share one step (the prox of a group takes one).

    **Convergence.** ``state["converged"]`` says whether the accepted trial's prox-gradient
    mapping :math:`G = (z - u)/\eta`, which is 0 exactly at the stationary points of
    :math:`F`, has fallen to ``rtol`` times its size at the start:
    :math:`\max|G| \le \mathrm{atol} + \mathrm{rtol}\,\max|G_0|`, with :math:`G_0` the
    mapping of the first step from ``init``'s params (``state["ref"]``). The test is
    scale-free (scaling the loss scales both sides) and depends neither on the size of the
    weights nor on where the step adaptation stands; how close it brings the weights to a
    solution still depends on the conditioning (on a convex problem, within about
    :math:`\max|G|/\mu` of it, :math:`\mu` the smallest curvature in that metric).

    References: Beck & Teboulle, "A fast iterative shrinkage-thresholding algorithm for
    linear inverse problems", SIAM J. Imaging Sci. 2 (2009); O'Donoghue & Candès,
    "Adaptive restart for accelerated gradient schemes", Found. Comput. Math. 15 (2015);
    Barzilai & Borwein, "Two-point step size gradient methods", IMA J. Numer. Anal. 8
    (1988); Combettes & Vũ, "Variable metric forward-backward splitting with applications
    to monotone inclusions in duality", Optimization 63 (2014).

    >>> import torch, funcreg as fr
    >>> x, y = torch.eye(3), torch.tensor([3.0, 0.5, -2.0])
    >>> def loss(p, x, y):
    ...     return 0.5 * ((x @ p["w"] - y) ** 2).sum()
    >>> params = {"w": torch.zeros(3)}
    >>> state = fr.fista.init(params)
    >>> for _ in range(30):
    ...     params, state = fr.fista.step(loss, params, state, (x, y), penalty=fr.l1, lam=1.0)
    >>> params["w"], bool(state["converged"])
    (tensor([ 2.,  0., -1.]), True)
    """

    name = "fista"

    def init(self, params: Any, *, lr: Any = 1.0) -> dict[str, Any]:
        """The state for ``params``: ``z`` (a copy of params), ``t`` = 1, ``lr`` (a tree like
        params holding each leaf's first trial step, the given number or 0-d tensor),
        ``curvature`` (a tree of zeros: not yet measured), ``ref`` = NaN (the size of the
        first step's mapping, not yet measured), ``converged`` = False, and the secant's
        memory ``z_prev`` (a copy of params) and ``g_prev`` (zeros). The scalars are 0-d
        tensors on the first leaf's device, in the widest floating dtype of the leaves (at
        least float32).

        Args:
            params: the parameter tree (the starting iterate).
            lr: the first trial step η, a positive number or 0-d tensor (a tensor batched
                under ``vmap`` gives each member its own).

        Returns:
            The state dict described above.

        Raises:
            TypeError: ``params`` is not a non-empty tree of tensors.
            ValueError: ``lr`` is not positive and finite.
        """
        leaves = optree.tree_leaves(params, namespace="torch")
        if not leaves or not all(isinstance(x, torch.Tensor) for x in leaves):
            raise TypeError("fista.init needs a non-empty tree of tensors")
        device = leaves[0].device
        dtype = _core.Layout(leaves).dtype
        lr = torch.as_tensor(lr, dtype=dtype, device=device)
        if lr.ndim == 0 and not torch._C._functorch.is_functorch_wrapped_tensor(lr):
            if not bool(torch.isfinite(lr)) or bool(lr <= 0):
                raise ValueError(f"lr must be a positive finite number, got {lr.item()}")
        return {
            "z": _map(lambda x: x.detach().clone(), params),
            "t": torch.ones((), dtype=dtype, device=device),
            "lr": _map(lambda x: lr.clone(), params),
            "curvature": _map(lambda x: torch.zeros((), dtype=dtype, device=device), params),
            "ref": torch.full((), float("nan"), dtype=dtype, device=device),
            "converged": torch.zeros((), dtype=torch.bool, device=device),
            "z_prev": _map(lambda x: x.detach().clone(), params),
            "g_prev": _map(torch.zeros_like, params),
        }

    def step(
        self,
        loss: Callable[..., torch.Tensor],
        params: Any,
        state: dict[str, Any],
        batch: tuple[Any, ...] = (),
        *,
        penalty: Penalty,
        lam: Any,
        where: Any = None,
        rtol: float = 1e-4,
        atol: float = 0.0,
        grow: float = 1.25,
        **options: Any,
    ) -> tuple[Any, dict[str, Any]]:
        """One FISTA trial from ``params`` (the last accepted iterate): returns
        ``(new_params, new_state)``; nothing is mutated.

        Args:
            loss: ``loss(params, *batch)`` → 0-d tensor, the smooth part f.
            params: the current iterate w, a pytree of tensors.
            state: from :meth:`init` or the previous step.
            batch: the data, passed to ``loss`` after params.
            penalty: the family (``fr.l1``, ``fr.group_lasso``, ...); its ``.prox`` is used.
            lam: its λ (a number, or a tensor batched under ``vmap``).
            where: the penalized leaves, as for the penalty.
            rtol, atol: the convergence test written to ``state["converged"]``.
            grow: the largest factor by which η may grow after an accepted step (≥ 1).
            **options: the family's keyword arguments (``dim=``, ``l1_ratio=``, ...).

        Returns:
            ``(new_params, new_state)``: the accepted iterate (``params`` itself where the
            trial was rejected) and the state with its step size, momentum and
            ``converged`` flag updated.

        Raises:
            TypeError: ``penalty`` is not a family.
            ValueError: ``grow < 1``, a negative tolerance, a state not made by
                :meth:`init` for a tree like ``params``; whatever the penalty or ``loss``
                raise for bad input.
        """
        if not isinstance(penalty, Penalty):
            raise TypeError(f"penalty must be a funcreg penalty family (fr.l1, ...), not {penalty!r}")
        if not grow >= 1.0:
            raise ValueError(f"grow must be >= 1, got {grow}")
        if not (rtol >= 0.0 and atol >= 0.0):
            raise ValueError("rtol and atol must be >= 0")
        for key in _STATE:
            if key not in state:
                raise ValueError(f"state has no {key!r}: make it with fr.fista.init(params)")
        leaves, spec = optree.tree_flatten(params, namespace="torch")
        layout = _core.Layout(leaves, _step_blocks(len(leaves), options))

        def flat(tree: Any, what: str) -> torch.Tensor:
            got, got_spec = optree.tree_flatten(tree, namespace="torch")
            if got_spec != spec:
                raise ValueError(f"state[{what!r}] is not a tree like params: make the state with "
                                 "fr.fista.init(params)")
            return layout.flatten(got)

        def per_block(tree: Any, what: str) -> torch.Tensor:
            values = torch.stack([v.to(layout.dtype) for v in optree.tree_leaves(tree, namespace="torch")])
            if values.shape != (len(leaves),):
                raise ValueError(f"state[{what!r}] must hold one 0-d tensor per leaf: make the state "
                                 "with fr.fista.init(params)")
            return values.index_select(0, layout.first)

        it = _core.Iterate(w=flat(params, "params"), z=flat(state["z"], "z"), t=state["t"],
                           eta=per_block(state["lr"], "lr"), curv=per_block(state["curvature"], "curvature"),
                           z_prev=flat(state["z_prev"], "z_prev"), g_prev=flat(state["g_prev"], "g_prev"),
                           ref=state["ref"])

        def tree(theta: torch.Tensor) -> Any:
            return optree.tree_unflatten(spec, layout.unflatten(theta))

        def member_loss(theta: torch.Tensor) -> torch.Tensor:
            return loss(tree(theta), *batch)

        def value_and_grad(theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            try:
                g, v = grad_and_value(member_loss)(theta)
            except RuntimeError as error:
                if "scalar Tensor" in str(error):  # torch.func's own check, reworded as ours
                    raise ValueError(f"loss must return a 0-d tensor: {error}") from error
                raise
            return v, g

        def prox(v: torch.Tensor, eta: torch.Tensor) -> torch.Tensor:
            steps = optree.tree_unflatten(spec, list(layout.per_leaf(eta).unbind(-1)))
            return layout.flatten(optree.tree_leaves(
                penalty.prox(tree(v), lam, steps, where=where, **options), namespace="torch"))

        nxt, done = _core.iterate(it, layout, value_and_grad, member_loss, prox, rtol=rtol, atol=atol,
                                  grow=grow)

        def leaf_values(v: torch.Tensor) -> Any:
            return optree.tree_unflatten(spec, list(layout.per_leaf(v).to(state["t"].dtype).unbind(-1)))

        new_state = {
            "z": tree(nxt.z),
            "t": nxt.t.to(state["t"].dtype),
            "lr": leaf_values(nxt.eta),
            "curvature": leaf_values(nxt.curv),
            "ref": nxt.ref.to(state["t"].dtype),
            "converged": done,
            "z_prev": tree(nxt.z_prev),
            "g_prev": tree(nxt.g_prev),
        }
        return tree(nxt.w), new_state


_STATE = ("z", "t", "lr", "curvature", "ref", "converged", "z_prev", "g_prev")


def _step_blocks(n_leaves: int, options: dict[str, Any]) -> list[int] | None:
    """The step blocks: one per leaf, or a single one when the family's ``groups=`` may
    tie slices of several leaves into one group (whose prox needs one step)."""
    return [0] * n_leaves if options.get("groups") is not None else None


fista = FISTA()
