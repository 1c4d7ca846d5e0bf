"""``groups=`` on the group penalties: groups made of slices of several leaves.

``fr.group_lasso(params, lam, groups=[...])`` and ``fr.sparse_group_lasso`` take a list
of couplings (``fr.Coupling`` or dicts ``{path: dim}``, docs/pruning.md) in place of
``dim=``. Each operation is an op of its own for the engine: a ``prepass`` reduces across
each coupling's leaves (its group norms, :mod:`funcreg._coupled`) and hands every leaf a
factor, after which the body is the elementwise write ``dim=`` has. Couplings that share a
leaf (overlapping groups) have values and gradients that sum over all groups, and a prox
computed by :mod:`funcreg._overlap` to a certified tolerance.

Selection: only the leaves the couplings name are penalized, and ``where=`` selects whole
couplings: a coupling whose leaves ``where`` all leaves out is not penalized, and one it
splits (selecting ``fc.weight`` but not ``fc.bias``) is an error, since a unit is all of
its slices.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from numbers import Real
from typing import Any

import torch

from funcreg import _coupled, _engine, _ops, _overlap, _sharding, _tree
from funcreg._engine import Op, Role
from funcreg._groups import block_shrink, inverse_norms
from funcreg._ops import Owned, Tensors, derive, subset
from funcreg._selection import Where
from funcreg._tree import Flat
from funcreg.coupling import Coupling
from funcreg.penalties._base import GRADS, PARAMS, Penalty


class CoupledGroups(Penalty):
    """A group family that also takes ``groups=`` (a list of couplings) instead of ``dim=``.

    The family's own ``dim=`` math is unchanged; with ``groups=`` every operation runs the
    coupled ops built here, which read ``l1_ratio`` when the family has one (the sparse
    group lasso's ρ; the group lasso is ρ = 0).
    """

    def __init__(self) -> None:
        super().__init__()
        lam, step = self._ops["prox"].hypers[:2]
        name = f"fr.{self.name}"
        common: dict[str, Any] = dict(hypers=(lam, *self.hypers), check=_check(name, "params"))
        self._coupled = {
            "value": Op(name, _terms, PARAMS, output="sum", history=False, prepass=_value, **common),
            "grad": Op(f"{name}.grad", _grad, PARAMS, output="tree", history=False,
                       prepass=_factors("params leaf"), **common),
            "add_grad": Op(f"{name}.add_grad", _add_grad, PARAMS, roles=(GRADS,), writes=("grads",),
                           prepass=_factors("grads leaf"), **common),
            "prox": Op(f"{name}.prox", _prox, PARAMS, writes=("params",), prepass=_prox_prepass,
                       **{**common, "hypers": (lam, step, *self.hypers)}),
            "lambda_max": Op(f"{name}.lambda_max", _terms, Role("grads", "grads"), output="max",
                             history=False, prepass=_lambda_max, hypers=self.hypers,
                             check=_check(f"{name}.lambda_max", "grads")),
        }

    def _options(self, options: dict[str, Any]) -> Mapping[str, Any]:
        full = super()._options(options)
        return {k: v for k, v in full.items() if k != "groups"} if full.get("groups") is None else full

    def _run(self, what: str, trees: list[Any], hypers: dict[str, Any], where: Where,
             options: dict[str, Any], **flags: Any) -> Any:
        if options.get("groups") is None:
            return super()._run(what, trees, hypers, where, options, **flags)
        name = f"fr.{self.name}"
        if "dim" in options:
            raise ValueError(f"{name}: pass dim= or groups=, not both (a coupling names each leaf's dim)")
        couplings = Coupling.normalize(options["groups"])
        full = self._options({k: v for k, v in options.items() if k != "groups"})
        lam = hypers.get("lam")
        if "lam" in hypers and not isinstance(lam, (Real, torch.Tensor)):
            raise TypeError(f"{name}: with groups=, lam is one value for every coupling (a number or a "
                            f"0-d tensor, batched under vmap), not a {type(lam).__name__}: a group "
                            "spans several leaves, so a value per leaf has no meaning")
        static: tuple[tuple[str, Any], ...] = (("groups", couplings),)
        if what == "prox":
            static += (("shared_step", isinstance(hypers["step"], (Real, torch.Tensor))),)
        op = self._coupled[what]
        hypers = {**hypers, **{p.name: full[p.name] for p in op.hypers if p.name in full}}
        named = frozenset(p for c in couplings for p in c.dims)
        try:
            return _engine.run(op, trees, hypers, where=_only(where, named), static=static, **flags)
        except ValueError as e:
            if not str(e).startswith("where selects no leaf"):
                raise
            raise _nothing_named(op, trees[0], couplings) from None


# ------------------------------------------------------------------------------ where
class _Named:
    """``where=`` of a coupled call: the leaves the couplings name, among those ``inner``
    selects (``None``: all of them). Keyed like funcreg's selectors when ``inner`` is one,
    so that the engine caches the selection with its plan."""

    def __init__(self, named: frozenset[str], inner: Any) -> None:
        self.named, self.inner = named, inner
        key = getattr(inner, "_key", None)
        self._key = ("coupled", named) if inner is None else (
            ("coupled", named, key) if key is not None else None)

    def __call__(self, path: str, leaf: torch.Tensor) -> Any:
        if self.inner is None:
            return path in self.named
        chosen = self.inner(path, leaf)
        return chosen and path in self.named if isinstance(chosen, bool) else chosen  # else: the engine's error


def _only(where: Where, named: frozenset[str]) -> Where:
    if where is None or callable(where):
        return _Named(named, where)
    flat = _tree.flatten(where, "where")  # a tree of bools: the same tree, False off the couplings
    return flat.unflatten([b and p in named if isinstance(b, bool) else b for p, b in zip(flat.paths, flat.leaves)])


def _nothing_named(op: Op, tree: Any, couplings: tuple[Coupling, ...]) -> ValueError:
    paths = set(_tree.flatten(tree, op.main.label).paths)
    for i, c in enumerate(couplings):
        for p in c.dims:
            if p not in paths:
                return ValueError(f"{op.name}: groups[{i}] names leaf {p!r}, which {op.main.label} do not have")
    return ValueError(f"{op.name}: where selects none of the leaves that groups= names")


def _check(name: str, label: str) -> Callable[..., None]:
    def check(flat: Flat, selected: list[int], *, groups: tuple[Coupling, ...], **_: Any) -> None:
        """Every coupling fits the tree, lives on one device, and is selected whole or not at all."""
        leaves = dict(zip(flat.paths, flat.leaves))
        chosen = {flat.paths[i] for i in selected}
        for i, c in enumerate(groups):
            for p in c.dims:
                if p not in leaves:
                    raise ValueError(f"{name}: groups[{i}] names leaf {p!r}, which {label} do not have")
            try:
                c.validate(leaves)
            except ValueError as e:
                raise ValueError(f"{name}: groups[{i}]: {str(e).removeprefix('Coupling: ')}") from None
            first = next(iter(c.dims))
            for p in c.dims:
                if leaves[p].device != leaves[first].device:
                    raise ValueError(f"{name}: groups[{i}] spans devices: {label} leaf {first!r} lives on "
                                     f"{leaves[first].device}, leaf {p!r} on {leaves[p].device}")
            picked = [p for p in c.dims if p in chosen]
            if picked and len(picked) < len(c.dims):
                left = next(p for p in c.dims if p not in chosen)
                raise ValueError(
                    f"{name}: where selects {label} leaf {picked[0]!r} but not {left!r}, both in "
                    f"groups[{i}]: a coupled group is all of its slices, so select every leaf of a "
                    "coupling or none")
    return check


# ------------------------------------------------------------------------ the prepasses
def _layout(ops: Any, leaves: Tensors, paths: tuple[str, ...], groups: tuple[Coupling, ...],
            what: str) -> _coupled.Layout:
    shapes = tuple(x.shape[ops.batch:] for x in leaves)
    return _coupled.layout(groups, tuple(paths), shapes, tuple(x.dtype for x in leaves), what)


def _weights(ops: Any, c: _coupled.Resolved, like: torch.Tensor, lam: Any, l1_ratio: Any) -> Any:
    """λ(1 − ρ)·sqrt(n_g): the coupling's threshold per unit step, per member."""
    k = c.parts[c.owner].k
    a = _coupled.column(ops, lam, k, like)
    if l1_ratio is not None:
        a = a * (1 - _coupled.column(ops, l1_ratio, k, like))
    return a * math.sqrt(c.size)


def _value(ops: Any, *, params: Tensors, paths: tuple[str, ...], groups: tuple[Coupling, ...],
           lam: Any, l1_ratio: Any = None, **_: Any) -> dict[str, list[Any]]:
    n = len(params)
    terms: list[Any] = [0.0] * n
    for c in _layout(ops, params, paths, groups, "params leaf").couplings:
        norm = _coupled.norms(c, params, ops.batch)[0]
        k = c.parts[c.owner].k
        terms[k] = terms[k] + _weights(ops, c, norm, lam, l1_ratio) * norm.sum(-1)
    if l1_ratio is not None:
        for k, (w, a, r) in enumerate(zip(params, _each(lam, n), _each(l1_ratio, n))):
            terms[k] = terms[k] + _sharding.to_plain(a * r * w.abs().sum())
    return {"term": terms}


def _factors(what: str) -> Callable[..., dict[str, list[Any]]]:
    def prepass(ops: Any, *, params: Tensors, paths: tuple[str, ...], groups: tuple[Coupling, ...],
                lam: Any, l1_ratio: Any = None, **_: Any) -> dict[str, list[Any]]:
        """The group part of the gradient per leaf, λ(1 − ρ)·sqrt(n_g)/‖w_g‖ (0 at a zero
        group), summed over the couplings that name the leaf."""
        factor: list[Any] = [None] * len(params)
        for c in _layout(ops, params, paths, groups, what).couplings:
            norm = _coupled.norms(c, params, ops.batch)[0]
            f = inverse_norms(norm) * _weights(ops, c, norm, lam, l1_ratio)
            for p in c.parts:
                g = _coupled.spread(f, params[p.k], p, ops.batch)
                factor[p.k] = g if factor[p.k] is None else factor[p.k] + g
        return {"factor": factor}
    return prepass


def _prox_prepass(ops: Any, *, params: Tensors, paths: tuple[str, ...], groups: tuple[Coupling, ...],
                  lam: Any, step: Any, shared_step: bool, l1_ratio: Any = None, **_: Any) -> dict[str, list[Any]]:
    """Per leaf, what the body multiplies (``base``: ``None`` for the params themselves, or
    the soft-thresholded leaf of the sparse group lasso) and by what (``factor``; ``None``
    where ``base`` is already the result, an overlapping coupling's leaf)."""
    n = len(params)
    base: list[Any] = [None] * n
    if l1_ratio is not None:  # the exact prox: soft threshold, then the groups' (Simon et al.)
        # (a foreach op takes no mix of DTensors and plain tensors: those go leaf by leaf)
        each = _ops.PER_LEAF if _sharding.any_dtensor(params) else ops
        base = list(each.soft_threshold_(params, derive(lambda a, s, r: s * a * r, lam, step, l1_ratio)))
    v = [b if b is not None else w for b, w in zip(base, params)]
    factor: list[Any] = [None] * n
    layout = _layout(ops, params, paths, groups, "params leaf")
    ts = {}
    for j, c in enumerate(layout.couplings):
        norm, parts = _coupled.norms(c, v, ops.batch)
        ts[j] = _weights(ops, c, norm, lam, l1_ratio)
        if j not in layout.alone:
            continue
        if shared_step:
            f = block_shrink(norm, _coupled.column(ops, step, c.parts[c.owner].k, norm) * ts[j])
            factors = [f] * len(c.parts)
        else:
            factors = _coupled.metric_factors(parts, [_coupled.column(ops, step, p.k, norm) for p in c.parts], ts[j])
        for p, f in zip(c.parts, factors):
            factor[p.k] = _coupled.spread(f, v[p.k], p, ops.batch)
    for members in layout.overlapping:
        done = _overlap.prox(layout, members, v, step, ts, shared_step, ops.batch, ops,
                             lambda k: f"params leaf {paths[k]!r}")
        for k, x in done.items():
            base[k], factor[k] = x, None
    return {"base": base, "factor": factor}


def _lambda_max(ops: Any, *, grads: Tensors, paths: tuple[str, ...], groups: tuple[Coupling, ...],
                l1_ratio: Any = None, **_: Any) -> dict[str, list[Any]]:
    """Per leaf, the largest threshold over the groups of the couplings that name it."""
    layout = _layout(ops, grads, paths, groups, "grads leaf")
    if layout.overlapping:
        first, second, k = layout.sharing()  # type: ignore[misc]  # not None: the layout overlaps here
        raise ValueError(
            f"groups[{first}] and groups[{second}] overlap (both name grads leaf {paths[k]!r}): the "
            "smallest λ at which 0 is stationary is then the dual norm of overlapping groups, "
            "which has no closed form; fr.group_lasso.lambda_max refuses it. Pass lambdas= to "
            "fr.path, or compute λ_max with couplings that do not overlap")
    top: list[Any] = [None] * len(grads)
    for c in layout.couplings:
        if l1_ratio is None:
            norm = _coupled.norms(c, grads, ops.batch)[0]
            best = norm.amax(-1) / math.sqrt(c.size)
        else:
            best = _sparse_threshold(ops, c, grads, l1_ratio)
        for p in c.parts:
            top[p.k] = best if top[p.k] is None else torch.maximum(top[p.k], best)
    return {"term": top}


def _sparse_threshold(ops: Any, c: _coupled.Resolved, grads: Tensors, l1_ratio: Any) -> torch.Tensor:
    """The sparse group lasso's λ_max over a coupling's groups: per group the λ at which
    ‖soft(g_g, λρ)‖ = λ(1 − ρ)·sqrt(n_g), found by bisection in float64 (as ``dim=``'s)."""
    a = {p.k: grads[p.k].abs().to(torch.float64) for p in c.parts}
    size, _ = _coupled.norms(c, a, ops.batch)
    top = torch.stack([_coupled.chunk_norms(a[p.k], p, c.groups, ops.batch, ord=math.inf) for p in c.parts],
                      dim=-1).amax(-1)
    rho = _coupled.column(ops, l1_ratio, c.parts[c.owner].k, size)
    rho = rho if isinstance(rho, torch.Tensor) else size.new_tensor(rho)
    w = (1 - rho) * math.sqrt(c.size)
    hi = torch.where(w > 0, size / torch.where(w > 0, w, 1.0), top / rho)
    lo = torch.zeros_like(hi)
    for _ in range(64):  # float64: enough halvings to pin the root to the last bits
        mid = (lo + hi) / 2
        shrunk = {p.k: (a[p.k] - _coupled.spread(mid * rho, a[p.k], p, ops.batch)).clamp_min(0.0) for p in c.parts}
        norm = _coupled.norms(c, shrunk, ops.batch)[0]
        above = norm > mid * w
        lo, hi = torch.where(above, mid, lo), torch.where(above, hi, mid)
    return hi.amax(-1)


def _each(h: Any, n: int) -> list[Any]:
    return list(h) if isinstance(h, (list, tuple)) else [h] * n


# ----------------------------------------------------------------------------- the bodies
def _terms(ops: Any, *, term: list[Any], **_: Any) -> list[Any]:
    """A value's or λ_max's per-leaf terms, computed by the prepass."""
    return term


def _grad(ops: Any, *, params: Tensors, factor: list[Any], lam: Any, l1_ratio: Any = None, **_: Any) -> Tensors:
    if l1_ratio is None:
        return ops.mul(params, factor)
    return ops.add_(ops.mul_(ops.sign(params), derive(lambda a, r: a * r, lam, l1_ratio)), params, factor)


def _add_grad(ops: Any, *, grads: Tensors, params: Tensors, factor: list[Any], lam: Any,
              l1_ratio: Any = None, **_: Any) -> Tensors:
    if l1_ratio is not None:
        grads = ops.add_(grads, ops.sign(params), derive(lambda a, r: a * r, lam, l1_ratio))
    return ops.add_(grads, params, factor)


def _prox(ops: Any, *, params: Tensors, base: list[Any], factor: list[Any], **_: Any) -> Tensors:
    if all(b is None for b in base):  # the group lasso of couplings that do not overlap
        return ops.mul_(params, factor)
    out = list(params)
    for source, idx in ((params, [j for j, b in enumerate(base) if b is None]),
                        (Owned(base), [j for j, b in enumerate(base) if b is not None])):
        scaled = [j for j in idx if factor[j] is not None]
        if scaled:  # the call's own tensors (soft-thresholded leaves) are written in place
            for j, x in zip(scaled, ops.mul_(subset(source, scaled), [factor[j] for j in scaled])):
                out[j] = x
        for j in idx:
            if factor[j] is None:
                out[j] = base[j]
    return out
