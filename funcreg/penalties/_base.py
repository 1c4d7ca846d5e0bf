"""What every penalty family shares: its four operations, described to the engine.

A family (one module each: :mod:`~funcreg.penalties.l1`, ...) supplies only its math, with
every hyperparameter by keyword (``lam``, ``step``, ``gamma``...): the value of one leaf
(:meth:`Penalty._value`), and the gradient and prox as leaf-list code in the vocabulary of
:mod:`funcreg._ops`. :class:`Penalty` hands each operation to :func:`funcreg._engine.run`,
which flattens, selects, validates, checks donation, dispatches and writes back.
"""

from __future__ import annotations

import types
from collections.abc import Mapping
from typing import Any

import torch

from funcreg import _engine, _ops, _sharding
from funcreg._engine import Op, Role
from funcreg._hyper import Param
from funcreg._ops import Column, Ops, Tensors
from funcreg._selection import Where
from funcreg._tree import Flat

PARAMS = Role("params", "params")
GRADS = Role("grads", "grads", none=True)


class Penalty:
    """A penalty family: ``penalty(params, lam)`` is its value; ``.grad``, ``.add_grad``
    and ``.prox`` are its exact gradient, the gradient added to a gradient tree, and its
    proximal operator; ``.lambda_max`` is the smallest λ at which zero weights are
    stationary, where the prox can zero a leaf or a group.
    """

    # A family sets ``name`` and ``options`` (its keyword arguments and their defaults,
    # REQUIRED for none), says which options are hyperparameters (``hypers``: validated
    # numbers or tensors, batched under vmap) and which are trees (``trees``: read like
    # params), and implements _value, _grad (or _add_grad), _prox and, where it has one,
    # _lambda_max; the rest of ``options`` reach the math as they are (a ``dim``), checked
    # by _check. An operation that means nothing for a family is named in ``without``.
    name: str = ""
    options: dict[str, Any] = {}
    hypers: tuple[Param, ...] = ()
    trees: tuple[str, ...] = ()
    #: whether the family is separable: its math treats every element alike, so ``lam``
    #: and ``step`` may be given per element, and a donated call may run in blocks
    elementwise: bool = True
    #: operation -> why this family has none ("grad", "prox", "lambda_max")
    without: dict[str, str] = {}
    #: operations whose fast path is one kernel per leaf: nothing to gain from cutting a
    #: donated call into cache-sized pieces
    one_pass: tuple[str, ...] = ()

    REQUIRED = object()

    def __init__(self) -> None:
        why = "" if self.elementwise else (
            f"; {self.name} acts on whole groups, so it takes one value per leaf, not one per element")
        lam = Param("lam", per_leaf=True, per_element=self.elementwise, why=why)
        step = Param("step", per_leaf=True, per_element=self.elementwise, why=why)
        roles = tuple(Role(t, t) for t in self.trees)
        self._not_static = {p.name for p in self.hypers} | set(self.trees)
        # a call without options gets the defaults themselves, read-only: a family that
        # changed them would change every later call's
        self._defaults = (types.MappingProxyType(self.options)
                          if all(v is not self.REQUIRED for v in self.options.values()) else None)
        common = dict(hypers=(lam, *self.hypers), roles=roles, check=self._check, prepass=self._prepass)
        self._ops = {
            "value": Op(f"fr.{self.name}", _each(self._value), PARAMS, output="sum", history=False,
                        **{**common, "prepass": None}),
            "grad": Op(f"fr.{self.name}.grad", self._grad, PARAMS, output="tree", history=False, **common),
            "add_grad": Op(f"fr.{self.name}.add_grad", self._add_grad, PARAMS, writes=("grads",),
                           elementwise=self.elementwise, pieces="add_grad" not in self.one_pass,
                           **{**common, "roles": (GRADS, *roles)}),
            "prox": Op(f"fr.{self.name}.prox", self._prox, PARAMS, writes=("params",),
                       elementwise=self.elementwise, pieces="prox" not in self.one_pass,
                       **{**common, "hypers": (lam, step, *self.hypers)}),
            "lambda_max": Op(f"fr.{self.name}.lambda_max", _each(self._lambda_max), Role("grads", "grads"),
                             output="max", history=False, **{**common, "hypers": self.hypers, "prepass": None}),
        }

    # ----------------------------------------------------------------- the family's math
    def _value(self, w: torch.Tensor, *, lam: Any, **options: Any) -> torch.Tensor:
        raise NotImplementedError

    def _grad(self, ops: Ops, *, params: Tensors, lam: Column, **options: Any) -> Tensors:
        raise NotImplementedError

    def _add_grad(self, ops: Ops, *, grads: Tensors, params: Tensors, lam: Column, **options: Any) -> Tensors:
        return ops.add_(grads, self._grad(ops, params=params, lam=lam, **options))

    def _prox(self, ops: Ops, *, params: Tensors, lam: Column, step: Column, **options: Any) -> Tensors:
        raise NotImplementedError

    def _lambda_max(self, g: torch.Tensor, **options: Any) -> torch.Tensor:
        raise NotImplementedError

    def _check(self, flat: Flat, selected: list[int], **options: Any) -> None:
        """Validate the options against the selected leaves (once per plan)."""

    #: ``_prepass(ops, **leaves_and_options) -> {name: per-leaf list}``, run on all active
    #: leaves before the gradient and the prox (see :mod:`funcreg._engine`)
    _prepass: Any = None

    def _check_numbers(self, options: Mapping[str, Any]) -> None:
        """Validate the options on every call (Python numbers)."""

    # --------------------------------------------------------------- the public operations
    def __call__(self, params: Any, lam: Any, *, where: Where = None, **options: Any) -> torch.Tensor:
        """The penalty's value over the leaves ``where`` selects: a 0-d tensor (batched under
        ``vmap``) that autograd and torch.func can differentiate.

        Args:
            params: the parameter tree (a dict of tensors, ``dict(model.named_parameters())``,
                or any pytree of tensors).
            lam: λ ≥ 0: a number, a 0-d tensor (a tensor of λ under ``vmap`` trains an
                ensemble, one member per λ), or a dict ``{leaf path: λ}`` giving each
                selected leaf its own (for separable families also a tensor shaped like
                the leaf).
            where: the leaves the penalty applies to: ``None`` (every leaf), a selector
                (``fr.select.weights``, ``fr.select.only("fc")``), a callable
                ``(path, leaf) -> bool``, or a tree of bools like params.
            **options: the family's own keywords (``dim`` of ``fr.group_lasso``,
                ``l1_ratio`` of ``fr.elastic_net``, ``gamma`` of ``fr.mcp``, ...; see the
                family's section), defaults filled in.

        Returns:
            A 0-d tensor, :math:`\\sum_{\\text{selected}} \\lambda\\,P(w)`.

        Raises:
            ValueError: a negative or non-finite λ, trees whose structures or leaf
                shapes do not match, a per-leaf ``lam`` naming a leaf params lack or
                missing a selected one, a ``where`` tree that does not match (each
                message naming the leaf path).
            TypeError: a leaf that is not a floating-point tensor, an unknown or missing
                family keyword, an operation the family does not have (``fr.l0.grad``),
                a ``where`` of a type funcreg cannot read.
        """
        return self._run("value", [params], {"lam": lam}, where, options)

    def grad(self, params: Any, lam: Any, *, where: Where = None, **options: Any) -> Any:
        """The penalty's gradient, computed in closed form (no autograd).

        Args:
            params: the parameter tree.
            lam: λ ≥ 0: a number, a 0-d tensor (a tensor of λ under ``vmap`` trains an
                ensemble, one member per λ), or a dict ``{leaf path: λ}`` giving each
                selected leaf its own (for separable families also a tensor shaped like
                the leaf).
            where: the leaves the penalty applies to: ``None`` (every leaf), a selector
                (``fr.select.weights``, ``fr.select.only("fc")``), a callable
                ``(path, leaf) -> bool``, or a tree of bools like params.
            **options: the family's own keywords (``dim`` of ``fr.group_lasso``,
                ``l1_ratio`` of ``fr.elastic_net``, ``gamma`` of ``fr.mcp``, ...; see the
                family's section), defaults filled in.

        Returns:
            A tree like params: the gradient on the selected leaves, zero on the others.

        Raises:
            ValueError: a negative or non-finite λ, trees whose structures or leaf
                shapes do not match, a per-leaf ``lam`` naming a leaf params lack or
                missing a selected one, a ``where`` tree that does not match (each
                message naming the leaf path).
            TypeError: a leaf that is not a floating-point tensor, an unknown or missing
                family keyword, an operation the family does not have (``fr.l0.grad``),
                a ``where`` of a type funcreg cannot read.
        """
        self._require("grad")
        return self._run("grad", [params], {"lam": lam}, where, options)

    def add_grad(
        self, grads: Any, params: Any, lam: Any, *, where: Where = None, donate: bool = False,
        differentiable: bool = False, **options: Any,
    ) -> Any:
        """``grads`` plus the penalty's gradient on the selected leaves, as a new tree.

        Unselected leaves pass through as they are, and a ``None`` gradient stays ``None``.
        ``donate=True`` donates ``grads``: the sums are written into its selected leaves,
        and the returned tree holds those same tensors (see :mod:`funcreg._donation` for
        what that means under torch.func transforms). Inputs that require grad, in grad
        mode, are refused unless ``differentiable=True``, which records their history.

        Args:
            grads: the gradient tree, like params; a ``None`` leaf stays ``None``.
            params: the parameter tree.
            lam: λ ≥ 0: a number, a 0-d tensor (a tensor of λ under ``vmap`` trains an
                ensemble, one member per λ), or a dict ``{leaf path: λ}`` giving each
                selected leaf its own (for separable families also a tensor shaped like
                the leaf).
            where: the leaves the penalty applies to: ``None`` (every leaf), a selector
                (``fr.select.weights``, ``fr.select.only("fc")``), a callable
                ``(path, leaf) -> bool``, or a tree of bools like params.
            donate: write the sums into ``grads``' selected leaves and return them.
            differentiable: record autograd history through inputs that require grad.
            **options: the family's own keywords (``dim`` of ``fr.group_lasso``,
                ``l1_ratio`` of ``fr.elastic_net``, ``gamma`` of ``fr.mcp``, ...; see the
                family's section), defaults filled in.

        Returns:
            A tree like grads: ``grads + ∇P(params)`` on the selected leaves.

        Raises:
            ValueError: a negative or non-finite λ, trees whose structures or leaf
                shapes do not match, a per-leaf ``lam`` naming a leaf params lack or
                missing a selected one, a ``where`` tree that does not match (each
                message naming the leaf path).
            TypeError: a leaf that is not a floating-point tensor, an unknown or missing
                family keyword, an operation the family does not have (``fr.l0.grad``),
                a ``where`` of a type funcreg cannot read.
            ValueError: with ``donate=True``, a donated leaf that overlaps another input
                or itself, or that requires grad in grad mode.
        """
        self._require("grad")
        return self._run("add_grad", [params, grads], {"lam": lam}, where, options,
                         donate=donate, differentiable=differentiable)["grads"]

    def prox(
        self, params: Any, lam: Any, step: Any, *, where: Where = None, donate: bool = False,
        differentiable: bool = False, **options: Any,
    ) -> Any:
        r"""The proximal operator
        :math:`\operatorname{argmin}_u \tfrac12\lVert u - w\rVert^2 + \mathrm{step}\cdot P(u)`
        on the selected leaves; the others pass through as they are. ``step`` takes the
        same forms as ``lam`` and, for separable penalties, a tensor shaped like the leaf
        (the per-element step of a proximal Adam). ``donate=True`` donates ``params``:
        the results are written into its selected leaves (which may be a live module's
        parameters, ``{k: p.detach() for k, p in model.named_parameters()}``), and the
        returned tree holds those same tensors. Params that require grad, in grad mode,
        are refused unless ``differentiable=True``, which records their history.

        Args:
            params: the parameter tree (the point ``w`` of the prox).
            lam: λ ≥ 0: a number, a 0-d tensor (a tensor of λ under ``vmap`` trains an
                ensemble, one member per λ), or a dict ``{leaf path: λ}`` giving each
                selected leaf its own (for separable families also a tensor shaped like
                the leaf).
            step: the step ``η`` ≥ 0 (the learning rate of the gradient step before the
                prox), in any form ``lam`` takes.
            where: the leaves the penalty applies to: ``None`` (every leaf), a selector
                (``fr.select.weights``, ``fr.select.only("fc")``), a callable
                ``(path, leaf) -> bool``, or a tree of bools like params.
            donate: write the results into ``params``' selected leaves and return them.
            differentiable: record autograd history through params that require grad.
            **options: the family's own keywords (``dim`` of ``fr.group_lasso``,
                ``l1_ratio`` of ``fr.elastic_net``, ``gamma`` of ``fr.mcp``, ...; see the
                family's section), defaults filled in.

        Returns:
            A tree like params: the prox on the selected leaves, the others as they are.

        Raises:
            ValueError: a negative or non-finite λ, trees whose structures or leaf
                shapes do not match, a per-leaf ``lam`` naming a leaf params lack or
                missing a selected one, a ``where`` tree that does not match (each
                message naming the leaf path).
            TypeError: a leaf that is not a floating-point tensor, an unknown or missing
                family keyword, an operation the family does not have (``fr.l0.grad``),
                a ``where`` of a type funcreg cannot read.
            ValueError: with ``donate=True``, a donated leaf that overlaps another input
                or itself, or that requires grad in grad mode.
        """
        self._require("prox")
        return self._run("prox", [params], {"lam": lam, "step": step}, where, options,
                         donate=donate, differentiable=differentiable)["params"]

    def lambda_max(self, grads: Any, *, where: Where = None, **options: Any) -> torch.Tensor:
        """The smallest λ for which zero weights are stationary: ``grads`` is the task loss's
        gradient at w = 0 on the selected leaves, and the result is the maximum over them
        of the family's threshold (a 0-d float64 tensor). Above it the prox keeps every
        selected leaf at zero; below it some weight moves. Start a λ path there,
        ``fr.lambda_grid(fr.l1.lambda_max(grads))``, as scikit-learn starts at its
        ``alpha_max``.

        Args:
            grads: the task loss's gradient at w = 0, a tree like params.
            where: the leaves the penalty applies to: ``None`` (every leaf), a selector
                (``fr.select.weights``, ``fr.select.only("fc")``), a callable
                ``(path, leaf) -> bool``, or a tree of bools like params.
            **options: the family's own keywords (``dim`` of ``fr.group_lasso``,
                ``l1_ratio`` of ``fr.elastic_net``, ``gamma`` of ``fr.mcp``, ...; see the
                family's section), defaults filled in.

        Returns:
            A 0-d float64 tensor, λ_max.

        Raises:
            ValueError: trees that do not match, a ``where`` that selects nothing.
            TypeError: a family without a λ_max (``fr.l2``, ``fr.l2_sp``), a leaf that is not
                a floating-point tensor, an unknown family keyword.
        """
        self._require("lambda_max")
        return self._run("lambda_max", [grads], {}, where, options)

    # ------------------------------------------------------------------------ plumbing
    def _run(self, what: str, trees: list[Any], hypers: dict[str, Any], where: Where,
             options: dict[str, Any], **flags: Any) -> Any:
        full = self._options(options)
        self._check_numbers(full)
        static = tuple((k, v) for k, v in full.items() if k not in self._not_static)
        op = self._ops[what]
        hypers.update((p.name, full[p.name]) for p in self.hypers if p in op.hypers)
        return _engine.run(op, [*trees, *(full[t] for t in self.trees)], hypers, where=where,
                           static=static, **flags)

    def _require(self, operation: str) -> None:
        if operation in self.without:
            raise TypeError(f"fr.{self.name} has no {operation}: {self.without[operation]}")

    def _options(self, options: dict[str, Any]) -> Mapping[str, Any]:
        """The family's keyword arguments, defaults filled in; unknown or missing ones are
        a TypeError."""
        if not options and self._defaults is not None:
            return self._defaults
        unknown = set(options) - set(self.options)
        if unknown:
            raise TypeError(f"{self.name}() got an unexpected keyword argument {sorted(unknown)[0]!r}")
        full = {**self.options, **options}
        for key, value in full.items():
            if value is self.REQUIRED:
                raise TypeError(f"{self.name}() missing required keyword argument {key!r}")
        return full

    def __repr__(self) -> str:
        return f"fr.{self.name}"


def _each(per_leaf: Any) -> Any:
    """A body from a function of one leaf and its values (``_value``, ``_lambda_max``)."""

    def body(ops: Ops, **columns: Any) -> list[Any]:
        leaves = columns.pop("params", None)
        if leaves is None:
            leaves = columns.pop("grads")
        n = len(leaves)
        rows = {k: _ops.each(v, n) if isinstance(v, list) else [v] * n for k, v in columns.items()}
        out = []
        for j, x in enumerate(leaves):
            try:
                out.append(per_leaf(x, **{k: v[j] for k, v in rows.items()}))
            except torch.linalg.LinAlgError as e:  # NaN in a matrix leaf: name the leaf
                raise _engine.LeafError(j, str(e).split("\n")[0]) from None
        return out

    return body


def amax(x: torch.Tensor) -> torch.Tensor:
    """The largest entry, and 0 for an empty tensor (a threshold no empty leaf raises)."""
    if not x.numel():
        return x.new_zeros(())
    return _sharding.amax(x) if _sharding.is_dtensor(x) else x.amax()

