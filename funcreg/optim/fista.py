"""FISTA: accelerated proximal gradient with adaptive restart and a step size that finds
itself, as a stateless step that ``vmap`` can batch over many λ."""

from __future__ import annotations

from typing import Any, Callable

import optree
import torch
from torch.func import grad_and_value

from funcreg.ensemble import converged
from funcreg.penalties import Penalty


def _map(fn: Callable[..., Any], tree: Any, *rest: Any) -> Any:
    return optree.tree_map(fn, tree, *rest, namespace="torch")


def _dot(a: Any, b: Any) -> torch.Tensor:
    """Σ over all leaves of ⟨a, b⟩, accumulated in float32 or wider."""
    terms = optree.tree_leaves(_map(lambda x, y: (x * y).sum(), a, b), namespace="torch")
    return torch.stack([t.to(torch.promote_types(t.dtype, torch.float32)) for t in terms]).sum()


class FISTA:
    r"""Full-batch accelerated proximal gradient (FISTA) with adaptive restart and a
    per-member step size found by backtracking, as a pure ``init``/``step`` pair.

    It minimizes :math:`F(w) = f(w) + P_\lambda(w)`, with ``loss`` the smooth part
    :math:`f` (task loss plus any smooth penalty) and ``penalty`` a family whose prox
    gives :math:`P_\lambda`. The state holds the extrapolated point :math:`z`, the
    momentum count :math:`t` and the step :math:`\eta`. One step, from :math:`w`
    (``params``):

    .. math::
        u &= \operatorname{prox}_{\eta P_\lambda}\bigl(z - \eta\nabla f(z)\bigr) \\
        \text{accept} &\iff f(u) \le f(z) + \langle\nabla f(z), u - z\rangle
                             + \tfrac{1}{2\eta}\lVert u - z\rVert^2 \\
        \text{restart} &\iff \langle z - u,\, u - w\rangle > 0 \quad (t \leftarrow 1) \\
        t' &= \tfrac12\bigl(1 + \sqrt{1 + 4t^2}\bigr), \qquad
        w, z, t \leftarrow u,\; u + \tfrac{t - 1}{t'}(u - w),\; t'

    The acceptance test is the sufficient decrease of Beck & Teboulle's backtracking
    (with a slack of a few units of rounding in :math:`f`, so that float noise near the
    solution does not read as curvature). A rejected step leaves :math:`w, z, t` as they
    are and only changes :math:`\eta`, so every member makes at most one trial per step
    and ``vmap`` sees no data-dependent control flow. The step follows the local
    curvature measured along each trial,

    .. math::
        \hat L = \frac{2\,(f(u) - f(z) - \langle\nabla f(z), u-z\rangle)}{\lVert u - z\rVert^2},
        \qquad \eta \leftarrow \min(\mathrm{grow}\cdot\eta,\ 0.9/\hat L) \ \text{(accepted)},
        \quad \eta \leftarrow \min(\eta/2,\ 0.9/\hat L) \ \text{(rejected)},

    so a starting ``lr`` that is too large costs a few rejected trials and one that is
    too small a few steps of growth; no step size needs tuning. :math:`\hat L` is measured
    only where the excess of :math:`f(u)` over its linear model stands above rounding,
    and the last value measured (``state["curvature"]``, 0 until then) keeps capping
    :math:`\eta` while trials are too short to show curvature, as they are near a
    solution, where every :math:`\eta` gives :math:`u \approx z`. The restart is
    O'Donoghue & Candès' gradient scheme: momentum is dropped when it points uphill.

    ``state["converged"]`` says whether the accepted step barely moved the point,
    :math:`\max|u - z| \le \mathrm{atol} + \mathrm{rtol}\max|z|` (:func:`fr.converged`).
    Since :math:`u - z = -\eta\,G_\eta(z)` with :math:`G_\eta` the prox-gradient mapping,
    which is 0 exactly at the stationary points of :math:`F`, and :math:`\eta` tracks
    :math:`1/L`, this is a first-order optimality test, not a plateau test.

    References: Beck & Teboulle, "A fast iterative shrinkage-thresholding algorithm for
    linear inverse problems", SIAM J. Imaging Sci. 2 (2009); O'Donoghue & Candès,
    "Adaptive restart for accelerated gradient schemes", Found. Comput. Math. 15 (2015).

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
        """The state for ``params``: ``z`` (a copy of params), ``t`` = 1, ``lr`` (the first
        trial step, a number or a 0-d tensor), ``curvature`` = 0 (not yet measured),
        ``converged`` = False; the scalars are 0-d tensors on the first leaf's device, in
        the widest floating dtype of the leaves (at least float32)."""
        leaves = optree.tree_leaves(params, namespace="torch")
        if not leaves or not all(isinstance(x, torch.Tensor) for x in leaves):
            raise TypeError("fista.init needs a non-empty tree of tensors")
        device = leaves[0].device
        # scalars in the widest floating dtype among the leaves (at least float32)
        dtype = torch.float32
        for x in leaves:
            if x.is_floating_point():
                dtype = torch.promote_types(dtype, x.dtype)
        lr = torch.as_tensor(lr, dtype=dtype, device=device)
        if lr.ndim == 0 and not torch._C._functorch.is_functorch_wrapped_tensor(lr):
            if not bool(torch.isfinite(lr)) or bool(lr <= 0):
                raise ValueError(f"lr must be a positive finite number, got {lr.item()}")
        return {
            "z": _map(lambda x: x.detach().clone(), params),
            "t": torch.ones((), dtype=dtype, device=device),
            "lr": lr.clone(),
            "curvature": torch.zeros((), dtype=dtype, device=device),
            "converged": torch.zeros((), dtype=torch.bool, device=device),
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
        rtol: float = 1e-5,
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

        Raises:
            ValueError: ``grow < 1`` or a negative tolerance; whatever the penalty or
                ``loss`` raise for bad input.
        """
        if not isinstance(penalty, Penalty):
            raise TypeError(f"penalty must be a funcreg penalty family (fr.l1, ...), not {penalty!r}")
        if not grow >= 1.0:
            raise ValueError(f"grow must be >= 1, got {grow}")
        if not (rtol >= 0.0 and atol >= 0.0):
            raise ValueError("rtol and atol must be >= 0")
        for key in ("z", "t", "lr", "curvature", "converged"):
            if key not in state:
                raise ValueError(f"state has no {key!r}: make it with fr.fista.init(params)")
        z, t, eta = state["z"], state["t"], state["lr"]
        try:
            g, fz = grad_and_value(loss)(z, *batch)
        except RuntimeError as error:
            if "scalar Tensor" in str(error):  # torch.func's own check, reworded as ours
                raise ValueError(f"loss must return a 0-d tensor: {error}") from error
            raise
        u = penalty.prox(_map(lambda a, b: a - eta * b, z, g), lam, eta, where=where, **options)
        fu = loss(u, *batch)
        d = _map(torch.sub, u, z)
        dd, gd = _dot(d, d), _dot(g, d)
        excess = (fu - fz - gd).to(dd.dtype)  # f(u) above its linear model
        slack = 8 * torch.finfo(fz.dtype).eps * fz.detach().abs().to(dd.dtype)
        accept = excess <= dd / (2 * eta) + slack
        # The curvature along the trial is trusted only where the excess stands above
        # rounding; the last trusted value caps η, so that η cannot drift upward where
        # the trials are too short to show curvature (near a solution every η gives u ≈ z).
        trusted = (dd > 0) & (excess > slack)
        curv = torch.where(trusted, 2 * excess / torch.where(dd > 0, dd, 1.0), state["curvature"])
        cap = torch.where(curv > 0, 0.9 / torch.where(curv > 0, curv, 1.0), float("inf"))
        eta_next = torch.minimum(torch.where(accept, eta * grow, eta * 0.5), cap).to(eta.dtype)
        w = params
        restart = _dot(_map(torch.sub, z, u), _map(torch.sub, u, w)) > 0
        t = torch.where(restart, torch.ones_like(t), t)
        t_next = (1 + torch.sqrt(1 + 4 * t * t)) / 2
        beta = (t - 1) / t_next
        z_next = _map(lambda a, b: a + beta.to(a.dtype) * (a - b), u, w)
        done = accept & converged(z, u, rtol=rtol, atol=atol)

        def pick(new: Any, old: Any) -> Any:
            return _map(lambda n, o: torch.where(accept, n, o), new, old)

        new_params = pick(u, w)
        new_state = {
            "z": pick(z_next, z),
            "t": torch.where(accept, t_next, state["t"]),
            "lr": eta_next,
            "curvature": curv.to(state["curvature"].dtype),
            "converged": done,
        }
        return new_params, new_state


fista = FISTA()
