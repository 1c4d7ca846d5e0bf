"""What every penalty family shares: selection, hyperparameters, pairing, dispatch.

A family (one module each: :mod:`~funcreg.penalties.l1`, ...) supplies only its math, per
leaf for the value and as leaf-list code for the gradient and the prox (see
:mod:`funcreg._ops`); :class:`Penalty` turns that into the four public operations.
"""

from __future__ import annotations

import itertools
from typing import Any

import torch

from funcreg import _dispatch, _donation, _hyper, _sharding
from funcreg._ops import Column, Ops, Tensors
from funcreg._rewrite import apply, rewrite
from funcreg._selection import Where, selection
from funcreg._tree import Flat, check_pair, flatten, leaves_like, require_tensors


class Penalty:
    """A penalty family: ``penalty(params, lam)`` is its value; ``.grad``, ``.add_grad``
    and ``.prox`` are its exact gradient, the gradient added to a gradient tree, and its
    proximal operator; ``.lambda_max`` is the smallest λ at which zero weights are
    stationary, where the prox can zero a leaf or a group.
    """

    # A family sets ``name``, ``options`` (extra keyword arguments and their defaults,
    # REQUIRED for none) and implements _value, _grad, _prox and, where it has one,
    # _lambda_max; _columns turns options into per-selected-leaf columns. An operation
    # that means nothing for a family is named in ``without`` with the reason.
    name: str = ""
    options: dict[str, Any] = {}
    #: whether the family is separable: its math treats every element alike, so ``lam``
    #: and ``step`` may be given per element
    elementwise: bool = True
    #: operation -> why this family has none ("grad", "prox", "lambda_max")
    without: dict[str, str] = {}

    REQUIRED = object()

    # ----------------------------------------------------------------- the family's math
    def _value(self, w: torch.Tensor, lam: _hyper.Hyper, *extra: Any) -> torch.Tensor:
        raise NotImplementedError

    def _grad(self, ops: Ops, ws: Tensors, lam: Column, *extra: Column) -> Tensors:
        raise NotImplementedError

    def _prox(
        self, ops: Ops, ws: Tensors, lam: Column, step: Column, *extra: Column
    ) -> Tensors:
        raise NotImplementedError

    def _lambda_max(self, g: torch.Tensor, *extra: Any) -> torch.Tensor:
        raise NotImplementedError

    def _columns(
        self, flat: Flat, sel: list[int], options: dict[str, Any]
    ) -> tuple[list[Any], ...]:
        """Per-selected-leaf columns for the options (none by default)."""
        return ()

    # --------------------------------------------------------------- the public operations
    def __call__(self, params: Any, lam: Any, *, where: Where = None, **options: Any) -> torch.Tensor:
        """The penalty's value over the leaves ``where`` selects: a 0-d tensor (batched under
        ``vmap``) that autograd and torch.func can differentiate."""
        flat, sel, lam_col, extra = self._prepare(params, lam, where, options)
        terms = [
            self._value(flat.leaves[i], lam_col[k], *(c[k] for c in extra))
            for k, i in enumerate(sel)
        ]
        if _sharding.any_dtensor(terms):
            # the DTensor leaves' terms are partial sums: add them up, then reduce once
            sharded = [t for t in terms if _sharding.is_dtensor(t)]
            plain = [t for t in terms if not _sharding.is_dtensor(t)]
            terms = [_sharding.to_plain(sum(sharded[1:], sharded[0])), *plain]
        return sum(terms[1:], terms[0])

    def grad(self, params: Any, lam: Any, *, where: Where = None, **options: Any) -> Any:
        """The penalty's gradient, computed in closed form (no autograd): a tree like
        params, zero on the leaves ``where`` does not select."""
        self._require("grad")
        flat, sel, lam_col, extra = self._prepare(params, lam, where, options)
        ws = [flat.leaves[i] for i in sel]
        fast = _dispatch.use_fast_path(ws, lam_col, *extra)
        new = dict(zip(sel, _dispatch.run(self._grad, [ws, lam_col, *extra], ws, fast=fast)))
        return flat.unflatten([new[i] if i in new else torch.zeros_like(x)
                               for i, x in enumerate(flat.leaves)])

    def add_grad(
        self, grads: Any, params: Any, lam: Any, *, where: Where = None, donate: bool = False,
        **options: Any,
    ) -> Any:
        """``grads`` plus the penalty's gradient on the selected leaves, as a new tree.

        Unselected leaves pass through as they are, and a ``None`` gradient stays ``None``.
        ``donate=True`` donates ``grads``: the sums are written into its selected leaves,
        and the returned tree holds those same tensors (see :mod:`funcreg._donation` for
        what that means under torch.func transforms).
        """
        self._require("grad")
        flat, sel, lam_col, extra = self._prepare(params, lam, where, options)
        gs_all = leaves_like(flat, grads, "grads")
        for i in sel:
            if gs_all[i] is not None:
                check_pair(flat.paths[i], flat.leaves[i], gs_all[i], "grads")
        # A None gradient means "no gradient": it stays None, as in torch.optim.
        keep = [k for k, i in enumerate(sel) if gs_all[i] is not None]
        if not keep:
            return grads
        idx = [sel[k] for k in keep]
        ws = [flat.leaves[i] for i in idx]
        gs = [gs_all[i] for i in idx]
        cols = [[c[k] for k in keep] for c in (lam_col, *extra)]
        chosen = set(idx)
        new = apply(
            self._add_grad, gs, [ws, *cols], donate=donate, elementwise=self.elementwise,
            written=lambda: ((("grads", flat.paths[i]), gs_all[i]) for i in idx),
            read=lambda: itertools.chain(
                ((("params", p), w) for p, w in zip(flat.paths, flat.leaves)),
                ((("grads", p), g) for i, (p, g) in enumerate(zip(flat.paths, gs_all))
                 if i not in chosen),
                _donation.labelled(flat, idx, cols, ("lam", *self.options))),
        )
        out = list(gs_all)
        for i, g in zip(idx, new):
            out[i] = g
        return flat.unflatten(out)

    def prox(
        self, params: Any, lam: Any, step: Any, *, where: Where = None, donate: bool = False,
        **options: Any,
    ) -> Any:
        r"""The proximal operator
        :math:`\operatorname{argmin}_u \tfrac12\lVert u - w\rVert^2 + \mathrm{step}\cdot P(u)`
        on the selected leaves; the others pass through as they are. ``step`` takes the
        same forms as ``lam`` and, for separable penalties, a tensor shaped like the leaf
        (the per-element step of a proximal Adam). ``donate=True`` donates ``params``:
        the results are written into its selected leaves (which may be a live module's
        parameters, ``{k: p.detach() for k, p in model.named_parameters()}``), and the
        returned tree holds those same tensors."""
        self._require("prox")
        flat, sel, lam_col, extra = self._prepare(params, lam, where, options)
        step_col = _hyper.per_leaf(
            "step", step, flat, sel, elementwise=self.elementwise, why=self._why_not_elementwise()
        )
        names = ("lam", "step", *self.options)
        return rewrite(flat, sel, self._prox, [lam_col, step_col, *extra], names, donate=donate,
                       elementwise=self.elementwise)

    def lambda_max(self, grads: Any, *, where: Where = None, **options: Any) -> torch.Tensor:
        """The smallest λ for which zero weights are stationary: ``grads`` is the task loss's
        gradient at w = 0 on the selected leaves, and the result is the maximum over them
        of the family's threshold (a 0-d float64 tensor). Above it the prox keeps every
        selected leaf at zero; below it some weight moves. Start a λ path there,
        ``fr.lambda_grid(fr.l1.lambda_max(grads))``, as scikit-learn starts at its
        ``alpha_max``."""
        self._require("lambda_max")
        full = self._options(options)
        flat = flatten(grads, "grads")
        require_tensors(flat, "grads")
        sel = [i for i, m in enumerate(selection(flat, where)) if m]
        extra = self._columns(flat, sel, full)
        per_leaf = [self._lambda_max(flat.leaves[i], *(c[k] for c in extra)) for k, i in enumerate(sel)]
        device = per_leaf[0].device
        return torch.stack([_sharding.to_plain(v).to(device, torch.float64) for v in per_leaf]).amax()

    # ------------------------------------------------------------------------ plumbing
    def _require(self, operation: str) -> None:
        if operation in self.without:
            raise TypeError(f"fr.{self.name} has no {operation}: {self.without[operation]}")

    def _options(self, options: dict[str, Any]) -> dict[str, Any]:
        """The family's keyword arguments, defaults filled in; unknown or missing ones are
        a TypeError."""
        unknown = set(options) - set(self.options)
        if unknown:
            raise TypeError(f"{self.name}() got an unexpected keyword argument {sorted(unknown)[0]!r}")
        full = dict(self.options)
        full.update(options)
        for key, value in full.items():
            if value is self.REQUIRED:
                raise TypeError(f"{self.name}() missing required keyword argument {key!r}")
        return full

    def _add_grad(self, ops: Ops, gs: Tensors, ws: Tensors, lam: Column, *extra: Column) -> Tensors:
        return ops.add_(gs, self._grad(ops, ws, lam, *extra))

    def _why_not_elementwise(self) -> str:
        return "" if self.elementwise else (
            f"; {self.name} acts on whole groups, so it takes one value per leaf, not one "
            "per element"
        )

    def _prepare(
        self, params: Any, lam: Any, where: Where, options: dict[str, Any]
    ) -> tuple[Flat, list[int], list[_hyper.Hyper], tuple[list[Any], ...]]:
        full = self._options(options)
        flat = flatten(params)
        require_tensors(flat)
        mask = selection(flat, where)
        sel = [i for i, m in enumerate(mask) if m]
        lam_col = _hyper.per_leaf(
            "lam", lam, flat, sel, elementwise=self.elementwise, why=self._why_not_elementwise()
        )
        return flat, sel, lam_col, self._columns(flat, sel, full)

    def __repr__(self) -> str:
        return f"fr.{self.name}"


def amax(x: torch.Tensor) -> torch.Tensor:
    """The largest entry, and 0 for an empty tensor (a threshold no empty leaf raises)."""
    if not x.numel():
        return x.new_zeros(())
    return _sharding.amax(x) if _sharding.is_dtensor(x) else x.amax()
