"""Leaf-list arithmetic, written once per family and run on one of two implementations.

Every penalty, step and projection in funcreg is a short function of lists of leaves
(``ws``, ``gs``, ``ms``...) and hyperparameter columns, written against the vocabulary
below and run by :mod:`funcreg._dispatch` on one of

* :data:`FOREACH` (and :data:`FOREACH_CPU` for CPU groups): ``torch._foreach_*``
  kernels over leaves of one (device, dtype) group, the fast path;
* :data:`PER_LEAF`: plain out-of-place tensor ops, one leaf at a time, which ``vmap``,
  ``grad``, ``jacrev`` and ``torch.compile`` can trace, the composable path.

**Ownership.** A list of leaves is *borrowed* (a plain ``list``: the caller's tensors,
never written) or *owned* (:class:`Owned`: tensors the running call may overwrite,
because it allocated them or because the caller donated them). The ops whose name ends
in ``_`` work like torch's in-place ops on their first argument when it is owned (they
write into it and return it), and like the out-of-place op when it is borrowed (the result
goes into fresh tensors, which the call then owns). So one line of family math, ::

    ms = ops.lerp_(ms, gs, 1 - beta1)

is torch.optim's ``torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)`` when the state was
donated, and ``torch._foreach_lerp(...)`` into a fresh tree otherwise; the ops that follow
on ``ms`` then run in place either way. The ops without ``_`` always allocate, and on
the fast path return a :class:`Temp`, an intermediate that two ops may recycle: on CPU
``add_(xs, ys)`` writes ``x + y`` into a ``Temp`` ``ys`` when ``xs`` is borrowed (``g + Δ``
into the buffer of ``Δ``), and ``addcdiv_`` may scale a ``Temp`` divisor in place; so do
not read a ``Temp`` after passing it there. :data:`PER_LEAF` never writes in place: it returns plain lists,
and a donated call copies its results into the donated storage afterwards
(:mod:`funcreg._donation`).

A hyperparameter column ``h`` holds one value per leaf: a Python float, a 0-d tensor, or
a tensor that broadcasts against the leaf (a per-element λ, a group lasso's per-row
scales). Where an op takes ``h``, a single Python float stands for the same value on
every leaf.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence, Union

import torch

from funcreg import _sharding
from funcreg._hyper import Hyper

Tensors = list[torch.Tensor]
Column = Union[float, Sequence[Hyper]]


class Owned(list):
    """Leaves the running call may overwrite: tensors it allocated, or donated inputs."""


class Temp(Owned):
    """An intermediate result: owned, and free for the op it is passed to to recycle."""


def owned(xs: Sequence[torch.Tensor]) -> bool:
    return isinstance(xs, Owned)


def like(xs: Sequence[torch.Tensor], items: list[torch.Tensor]) -> list[torch.Tensor]:
    """``items`` with the ownership of ``xs`` (for a subset or a reordering of ``xs``)."""
    return type(xs)(items) if isinstance(xs, Owned) else items


def _col(h: Column, n: int) -> Sequence[Hyper]:
    return [h] * n if isinstance(h, (float, int)) else h


def _as_tensor(v: Hyper, like: torch.Tensor) -> torch.Tensor:
    if isinstance(v, torch.Tensor):
        return v
    return torch.full((), v, dtype=like.dtype, device=like.device)


def _scalar(h: Column, n: int) -> float | None:
    """The one Python float every leaf of ``h`` holds, or ``None``."""
    if isinstance(h, (float, int)):
        return float(h)
    first = h[0] if n else 0.0
    if isinstance(first, torch.Tensor) or any(isinstance(v, torch.Tensor) or v != first for v in h):
        return None
    return float(first)


def _arg(xs: Tensors, h: Column) -> float | list[float] | Tensors:
    """``h`` as a foreach argument: one float, a ScalarList, or a list of tensors."""
    if isinstance(h, (float, int)):
        return float(h)
    if all(not isinstance(v, torch.Tensor) for v in h):
        return list(h)  # type: ignore[arg-type]
    return [_as_tensor(v, x) for x, v in zip(xs, h)]


class PerLeaf:
    """Composable implementation: per-leaf out-of-place tensor ops; ownership is ignored."""

    # ------------------------------------------------------------- allocating ops
    @staticmethod
    def sign(xs: Tensors) -> Tensors:
        return [torch.sign(x) for x in xs]

    @staticmethod
    def neg(xs: Tensors) -> Tensors:
        return [-x for x in xs]

    @staticmethod
    def sqrt(xs: Tensors) -> Tensors:
        return [torch.sqrt(x) for x in xs]

    @staticmethod
    def sub(xs: Tensors, ys: Tensors) -> Tensors:
        return [x - y for x, y in zip(xs, ys)]

    @staticmethod
    def mul(xs: Tensors, h: Column) -> Tensors:
        return [x * v for x, v in zip(xs, _col(h, len(xs)))]

    @staticmethod
    def temp(xs: Tensors) -> Tensors:
        """Tensors the family just allocated itself (per-leaf math), as a :class:`Temp`."""
        return xs

    @staticmethod
    def one_minus_pow(base: Column, exponents: Tensors) -> Tensors:
        """``1 - b ** e`` for each 0-d exponent (Adam's bias corrections)."""
        return [1 - b**e for b, e in zip(_col(base, len(exponents)), exponents)]

    # ------------------------------------------- what torch's in-place ops compute
    # Each keeps its first argument's dtype, as the in-place op would: a 0-d bfloat16 leaf
    # times a 0-d float32 scalar (Adam's bias corrections) would otherwise promote.
    @staticmethod
    def add_(xs: Tensors, ys: Tensors | Column, alpha: Column | None = None) -> Tensors:
        """``x + alpha * y`` for leaves ``ys``, or ``x + h`` for a column ``h``."""
        ys = _col(ys, len(xs))
        if alpha is None:
            return [_keep(x, x + y) for x, y in zip(xs, ys)]
        return [_keep(x, x + a * y) for x, y, a in zip(xs, ys, _col(alpha, len(xs)))]

    @staticmethod
    def mul_(xs: Tensors, h: Column) -> Tensors:
        return [_keep(x, x * v) for x, v in zip(xs, _col(h, len(xs)))]

    @staticmethod
    def div_(xs: Tensors, h: Column) -> Tensors:
        return [_keep(x, x / v) for x, v in zip(xs, _col(h, len(xs)))]

    @staticmethod
    def lerp_(xs: Tensors, ys: Tensors, h: Column) -> Tensors:
        return [torch.lerp(x, y, _as_tensor(v, x)) for x, y, v in zip(xs, ys, _col(h, len(xs)))]

    @staticmethod
    def addcmul_(xs: Tensors, ys: Tensors, zs: Tensors, h: Column) -> Tensors:
        """``x + h * y * z``."""
        return [_keep(x, x + v * y * z) for x, y, z, v in zip(xs, ys, zs, _col(h, len(xs)))]

    @staticmethod
    def addcdiv_(xs: Tensors, ys: Tensors, zs: Tensors, h: Column) -> Tensors:
        """``x + h * y / z``."""
        return [_keep(x, x + v * y / z) for x, y, z, v in zip(xs, ys, zs, _col(h, len(xs)))]

    @staticmethod
    def maximum_(xs: Tensors, ys: Tensors) -> Tensors:
        return [torch.maximum(x, y) for x, y in zip(xs, ys)]

    @staticmethod
    def reciprocal_(xs: Tensors) -> Tensors:
        return [torch.reciprocal(x) for x in xs]

    @staticmethod
    def clamp_(xs: Tensors, low: Column | None, high: Column | None) -> Tensors:
        """``clamp(x, low, high)``; a bound of ``None`` is no bound."""
        n = len(xs)
        lows = _col(low, n) if low is not None else [None] * n
        highs = _col(high, n) if high is not None else [None] * n
        return [_keep(x, _clamp(x, a, b)) for x, a, b in zip(xs, lows, highs)]

    @staticmethod
    def soft_threshold_(xs: Tensors, t: Column) -> Tensors:
        """``x - clamp(x, -t, t)``: exact zeros where ``|x| <= t``, ties included."""
        return [_keep(x, x - _clamp(x, -v, v)) for x, v in zip(xs, _col(t, len(xs)))]

    @staticmethod
    def hard_threshold_(xs: Tensors, t: Column) -> Tensors:
        """``x`` where ``|x| > t``, exact zeros elsewhere (ties zeroed; a NaN stays NaN, as
        through the soft threshold)."""
        return [torch.where(x.abs() <= v, torch.zeros((), dtype=x.dtype, device=x.device), x)
                for x, v in zip(xs, _col(t, len(xs)))]

    @staticmethod
    def firm_threshold_(xs: Tensors, low: Column, high: Column, c: Column) -> Tensors:
        """Firm thresholding: 0 where ``|x| <= low``, ``c·soft(x, low)`` up to ``high``, ``x``
        beyond (continuous when ``c = high / (high - low)``), computed as
        ``(x - clamp(x, ±high)) + c·(clamp(x, ±high) - clamp(x, ±low))``: both terms are
        exactly 0 where ``|x| <= low``, and the first is exactly 0 up to ``high``."""
        n = len(xs)
        out = []
        for x, a, b, k in zip(xs, _col(low, n), _col(high, n), _col(c, n)):
            outer = _clamp(x, -b, b)
            out.append(_keep(x, (x - outer) + k * (outer - _clamp(x, -a, a))))
        return out


def _keep(x: torch.Tensor, result: torch.Tensor) -> torch.Tensor:
    return result if result.dtype == x.dtype else result.to(x.dtype)


def _clamp(x: torch.Tensor, low: Hyper | None, high: Hyper | None) -> torch.Tensor:
    if isinstance(low, torch.Tensor) or isinstance(high, torch.Tensor):
        # torch.clamp takes tensor bounds only with no Python number beside them
        return torch.clamp(x, None if low is None else _as_tensor(low, x),
                           None if high is None else _as_tensor(high, x))
    return x.clamp(low, high)


def _cow(in_place: Callable[..., Any], out_of_place: Callable[..., Any], xs: Tensors,
         *args: Any, **kwargs: Any) -> Tensors:
    """A foreach op on ``xs``: in place when ``xs`` is owned, into fresh tensors otherwise."""
    if owned(xs):
        in_place(xs, *args, **kwargs)
        return xs
    # keep each leaf's dtype, as the in-place op does (see PerLeaf)
    return Owned(_keep(x, r) for x, r in zip(xs, out_of_place(xs, *args, **kwargs)))


class Foreach:
    """Fast implementation: ``torch._foreach_*`` over one (device, dtype) group."""

    # ------------------------------------------------------------- allocating ops
    @staticmethod
    def sign(xs: Tensors) -> Tensors:
        return Temp(torch._foreach_sign(xs))

    @staticmethod
    def neg(xs: Tensors) -> Tensors:
        return Temp(torch._foreach_neg(xs))

    @staticmethod
    def sqrt(xs: Tensors) -> Tensors:
        return Temp(torch._foreach_sqrt(xs))

    @staticmethod
    def sub(xs: Tensors, ys: Tensors) -> Tensors:
        return Temp(torch._foreach_sub(xs, ys))

    @staticmethod
    def mul(xs: Tensors, h: Column) -> Tensors:
        return Temp(torch._foreach_mul(xs, _arg(xs, h)))

    @staticmethod
    def temp(xs: Tensors) -> Tensors:
        return Temp(xs)

    @staticmethod
    def one_minus_pow(base: Column, exponents: Tensors) -> Tensors:
        b = _scalar(base, len(exponents))
        if b is None:
            return PerLeaf.one_minus_pow(base, exponents)
        out = torch._foreach_pow(b, exponents)
        torch._foreach_neg_(out)
        torch._foreach_add_(out, 1.0)
        return Temp(out)

    # --------------------------------------------------- in place on owned leaves
    @staticmethod
    def add_(xs: Tensors, ys: Tensors | Column, alpha: Column | None = None) -> Tensors:
        """``x + alpha * y`` for leaves ``ys``, or ``x + h`` for a column ``h``."""
        if _is_column(ys):
            return _cow(torch._foreach_add_, torch._foreach_add, xs, _arg(xs, ys))  # type: ignore[arg-type]
        a = 1.0 if alpha is None else _scalar(alpha, len(xs))
        if a is not None:
            return _cow(torch._foreach_add_, torch._foreach_add, xs, ys, alpha=a)
        scale = [_as_tensor(v, x) for x, v in zip(xs, _col(alpha, len(xs)))]  # type: ignore[arg-type]
        return _cow(torch._foreach_addcmul_, torch._foreach_addcmul, xs, ys, scale)

    @staticmethod
    def mul_(xs: Tensors, h: Column) -> Tensors:
        return _cow(torch._foreach_mul_, torch._foreach_mul, xs, _arg(xs, h))

    @staticmethod
    def div_(xs: Tensors, h: Column) -> Tensors:
        return _cow(torch._foreach_div_, torch._foreach_div, xs, _arg(xs, h))

    @staticmethod
    def lerp_(xs: Tensors, ys: Tensors, h: Column) -> Tensors:
        return _cow(torch._foreach_lerp_, torch._foreach_lerp, xs, ys, _arg(xs, h))

    @staticmethod
    def addcmul_(xs: Tensors, ys: Tensors, zs: Tensors, h: Column) -> Tensors:
        """``x + h * y * z``."""
        arg = _arg(xs, h)
        if isinstance(arg, list) and isinstance(arg[0], torch.Tensor):
            # the op takes tensor scalars only as one 1-d CPU tensor
            ys, arg = torch._foreach_mul(ys, arg), 1.0
        xs = _in_place_only(xs)
        return _cow(torch._foreach_addcmul_, torch._foreach_addcmul, xs, ys, zs, arg)

    @staticmethod
    def addcdiv_(xs: Tensors, ys: Tensors, zs: Tensors, h: Column) -> Tensors:
        """``x + h * y / z``; a tensor ``h`` is folded into ``zs`` when it is a :class:`Temp`
        (as torch.optim's capturable Adam folds its step size into the denominator)."""
        arg = _arg(xs, h)
        if isinstance(arg, list) and isinstance(arg[0], torch.Tensor):
            if isinstance(zs, Temp):
                torch._foreach_div_(zs, arg)
            else:
                ys = torch._foreach_mul(ys, arg)
            arg = 1.0
        xs = _in_place_only(xs)
        return _cow(torch._foreach_addcdiv_, torch._foreach_addcdiv, xs, ys, zs, arg)

    @staticmethod
    def maximum_(xs: Tensors, ys: Tensors) -> Tensors:
        return _cow(torch._foreach_maximum_, torch._foreach_maximum, xs, ys)

    @staticmethod
    def reciprocal_(xs: Tensors) -> Tensors:
        return _cow(torch._foreach_reciprocal_, torch._foreach_reciprocal, xs)

    @staticmethod
    def clamp_(xs: Tensors, low: Column | None, high: Column | None) -> Tensors:
        """``clamp(x, low, high)``; a bound of ``None`` is no bound."""
        # numbers go to clamp_min/clamp_max, tensors to maximum/minimum
        ops = ((low, (torch._foreach_clamp_min_, torch._foreach_clamp_min),
                (torch._foreach_maximum_, torch._foreach_maximum)),
               (high, (torch._foreach_clamp_max_, torch._foreach_clamp_max),
                (torch._foreach_minimum_, torch._foreach_minimum)))
        for bound, scalar, tensor in ops:
            if bound is not None:
                arg = _arg(xs, bound)
                in_place, out_of_place = tensor if isinstance(arg, list) and isinstance(arg[0], torch.Tensor) else scalar
                xs = _cow(in_place, out_of_place, xs, arg)
        return xs

    @staticmethod
    def hard_threshold_(xs: Tensors, t: Column) -> Tensors:
        """``x`` where ``|x| > t``, exact zeros elsewhere (ties zeroed). One masked fill per
        leaf: there is no foreach form, and a multiply by the mask would turn inf into nan."""
        dropped = [x.abs() <= v for x, v in zip(xs, _col(t, len(xs)))]
        if owned(xs):
            for x, d in zip(xs, dropped):
                x.masked_fill_(d, 0)
            return xs
        return Owned(x.masked_fill(d, 0) for x, d in zip(xs, dropped))

    @staticmethod
    def firm_threshold_(xs: Tensors, low: Column, high: Column, c: Column) -> Tensors:
        """As :meth:`PerLeaf.firm_threshold_`, a leaf at a time (five kernels, the two clamps'
        scratch one leaf each): no foreach form has the clamps' tensor bounds and the
        final multiply-add together."""
        n = len(xs)
        out = xs if owned(xs) else Owned()
        for x, a, b, k in zip(xs, _col(low, n), _col(high, n), _col(c, n)):
            outer = _clamp(x, -b, b)
            inner = _clamp(x, -a, a)
            torch.sub(outer, inner, out=inner)  # clamp(±high) - clamp(±low)
            if out is xs:
                x.sub_(outer)
                _add_scaled(x, inner, k)
            else:
                torch.sub(x, outer, out=outer)
                _add_scaled(outer, inner, k)
                out.append(outer)
        return out

    @staticmethod
    def soft_threshold_(xs: Tensors, t: Column) -> Tensors:
        """``x - clamp(x, -t, t)``: exact zeros where ``|x| <= t``, ties included."""
        arg = _arg(xs, t)
        if isinstance(arg, list) and isinstance(arg[0], torch.Tensor):
            clamped = torch._foreach_maximum(xs, torch._foreach_neg(arg))
            torch._foreach_minimum_(clamped, arg)
        else:
            low = -arg if isinstance(arg, float) else [-v for v in arg]  # type: ignore[union-attr]
            clamped = torch._foreach_clamp_min(xs, low)
            torch._foreach_clamp_max_(clamped, arg)
        return _cow(torch._foreach_sub_, torch._foreach_sub, xs, clamped)


def _in_place_only(xs: Tensors) -> Tensors:
    """Owned copies of borrowed DTensor leaves, for the ops whose out-of-place foreach form
    has no sharding strategy in torch 2.13 (``addcmul`` and ``addcdiv`` with scalars)."""
    return owned_copy(xs) if not owned(xs) and xs and _sharding.is_dtensor(xs[0]) else xs


def owned_copy(xs: Tensors) -> Tensors:
    """``xs`` if owned, else fresh copies of it: what a fused in-place kernel may run on."""
    return xs if owned(xs) else Owned([x.clone() for x in xs])


def _is_column(ys: Tensors | Column) -> bool:
    """Whether ``add_``'s operand is a column of numbers rather than a list of tensors (a
    list of 0-d tensors is both, and either reading gives the same sums)."""
    return isinstance(ys, (float, int)) or not all(isinstance(y, torch.Tensor) for y in ys)


class ForeachCPU(Foreach):
    """:class:`Foreach` for a CPU group.

    On CPU a ``torch._foreach_*`` op is a C++ loop of the per-tensor kernel over the
    leaves: one full pass over every leaf per op. Where a chain of them exists only
    because foreach ops have no ``out=`` (``g + λ·Δ`` into the fresh ``Δ``, a clamp as
    ``clamp_min`` then ``clamp_max_``, the subtraction of a soft threshold into yet
    another new tensor), one per-leaf kernel does the work in one pass, writing into a
    tensor the call owns, and the soft threshold finishes each leaf while its clamp is
    still in cache (and frees it at once, so a donated call needs one leaf of scratch).
    Like every fast-path op, these pass Python-float hyperparameters to ``alpha=`` or a
    clamp bound, and tensor ones as tensors: nothing here is ever traced.
    """

    @staticmethod
    def add_(xs: Tensors, ys: Tensors | Column, alpha: Column | None = None) -> Tensors:
        """As :meth:`Foreach.add_`, but into a :class:`Temp` ``ys`` in one pass per leaf
        when ``xs`` is borrowed (``g + λ·sign(w)`` into the fresh ``sign(w)``)."""
        if owned(xs) or not isinstance(ys, Temp):
            return Foreach.add_(xs, ys, alpha)
        alphas = _col(1.0 if alpha is None else alpha, len(xs))
        for x, y, a in zip(xs, ys, alphas):
            if isinstance(a, torch.Tensor):
                torch.addcmul(x, y, a, out=y)
            else:
                torch.add(x, y, alpha=a, out=y)
        return ys

    @staticmethod
    def mul_(xs: Tensors, h: Column) -> Tensors:
        arg = _arg(xs, h)
        if owned(xs) and xs and xs[0].dtype in (torch.bfloat16, torch.float16) \
                and not (isinstance(arg, list) and isinstance(arg[0], torch.Tensor)):
            # In place on a CPU half-precision group, _foreach_mul_ rounds a Python scalar
            # to the leaves' dtype first (0.9 becomes 0.8984375 in bfloat16), unlike the
            # out-of-place op and every other in-place foreach op: a float32 tensor keeps
            # the scalar exact, so donated and pure calls agree to the bit.
            arg = [torch.tensor(v, dtype=torch.float32) for v in _col(arg, len(xs))]  # type: ignore[arg-type]
        return _cow(torch._foreach_mul_, torch._foreach_mul, xs, arg)

    @staticmethod
    def soft_threshold_(xs: Tensors, t: Column) -> Tensors:
        negated: dict[int, torch.Tensor] = {}
        out = xs if owned(xs) else Owned()
        for x, v in zip(xs, _col(t, len(xs))):
            if isinstance(v, torch.Tensor):
                if id(v) not in negated:
                    negated[id(v)] = torch.neg(v)
                y = torch.clamp(x, negated[id(v)], v)
            else:
                y = torch.clamp(x, -v, v)
            if out is xs:
                x.sub_(y)
            else:
                out.append(_keep(x, torch.sub(x, y, out=y)))
        return out


def _add_scaled(y: torch.Tensor, z: torch.Tensor, k: Hyper) -> None:
    """``y += k·z`` in place; a tensor ``k`` through ``addcmul_`` (no ``alpha=`` for it)."""
    if isinstance(k, torch.Tensor):
        y.addcmul_(z, k)
    else:
        y.add_(z, alpha=k)


PER_LEAF = PerLeaf()
FOREACH = Foreach()
FOREACH_CPU = ForeachCPU()
Ops = Union[PerLeaf, Foreach]
