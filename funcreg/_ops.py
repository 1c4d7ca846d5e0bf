"""The vocabulary every family, step and projection is written in, and its implementations.

A body (see :mod:`funcreg._engine`) is a short function of lists of leaves (``params``,
``grads``, ``exp_avg``...) and hyperparameter columns, written against the ops below and
run on :class:`Foreach` (:class:`ForeachCPU` for CPU groups: ``torch._foreach_*`` over one
(device, dtype) group, the fast path and, with ``batch`` leading ensemble dims, the stacked
path) or on :data:`PER_LEAF` (plain out-of-place ops that ``vmap``, ``grad``, ``jacrev``
and ``torch.compile`` trace: the composable path).

**Ownership** (docs/design.md). A list of leaves is borrowed (a plain ``list``) or owned
(:class:`Owned`: allocated by the call, or donated). An op whose name ends in ``_`` writes
into its *first* argument when that is owned and returns it, and otherwise computes the
same values into fresh tensors, which the call then owns; it never writes into any other
argument. Ops without ``_`` always allocate; :data:`PER_LEAF` never writes in place.

**Columns.** A hyperparameter column is a Python number, a tensor (one 0-d value for every
leaf) or a list with one number or tensor per leaf; :func:`derive` computes a derived
column (``1 - beta1``) once per distinct value, :func:`each` spells one out per leaf.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal, cast, overload

import torch

from funcreg import _sharding

Tensors = list[torch.Tensor]
Hyper = float | torch.Tensor
# a column's entries are Hypers; typed Any because list is invariant, and callers pass a
# list[Tensor] or a list[float] (``isinstance(h, (list, tuple))`` narrows a Column)
Column = float | torch.Tensor | list[Any] | tuple[Any, ...]


class Owned(list):
    """Leaves the running call may overwrite: tensors it allocated, or donated inputs."""


def owned(xs: Sequence[torch.Tensor]) -> bool:
    return isinstance(xs, Owned)


def subset(xs: Tensors, idx: Sequence[int]) -> Tensors:
    """The leaves ``idx`` of ``xs``, owned if ``xs`` is."""
    items = [xs[k] for k in idx]
    return Owned(items) if owned(xs) else items


def owned_copy(xs: Tensors) -> Tensors:
    """``xs`` if owned, else fresh copies of it: what a fused in-place kernel may run on."""
    return xs if owned(xs) else Owned([x.clone() for x in xs])


def each(h: Column, n: int) -> list[Hyper]:
    """Column ``h`` as one value per leaf."""
    return list(h) if isinstance(h, (list, tuple)) else [h] * n


def is_number(h: Column) -> bool:
    """Whether every value of ``h`` is a Python number (known on the host)."""
    if isinstance(h, (list, tuple)):
        return not any(isinstance(v, torch.Tensor) for v in h)
    return not isinstance(h, torch.Tensor)


def derive(fn: Callable[..., Any], *cols: Column) -> Column:
    """The column ``fn(a, b, ...)``, leaf by leaf where a column is a list and once
    otherwise; values shared between leaves (one λ tensor for all) are computed once."""
    if not any(isinstance(c, (list, tuple)) for c in cols):
        return fn(*cols)
    n = max(len(c) for c in cols if isinstance(c, (list, tuple)))
    rows = zip(*(each(c, n) for c in cols))
    if torch.compiler.is_compiling():  # id() would make Dynamo guard on tensor identity
        return [fn(*args) for args in rows]
    cache: dict[tuple[int, ...], Any] = {}
    out = []
    for args in rows:
        key = tuple(map(id, args))
        if key not in cache:
            cache[key] = fn(*args)
        out.append(cache[key])
    return out


def _as_tensor(v: Hyper, like: torch.Tensor) -> torch.Tensor:
    return v if isinstance(v, torch.Tensor) else torch.full((), v, dtype=like.dtype, device=like.device)


def _keep(x: torch.Tensor, result: torch.Tensor) -> torch.Tensor:
    """``result`` in ``x``'s dtype, as the in-place op would leave it: a 0-d bfloat16 leaf
    times a float32 tensor (Adam's bias corrections) would otherwise promote."""
    return result if result.dtype == x.dtype else result.to(x.dtype)


def _clamp(x: torch.Tensor, low: Hyper | None, high: Hyper | None) -> torch.Tensor:
    if isinstance(low, torch.Tensor) or isinstance(high, torch.Tensor):
        # torch.clamp takes tensor bounds only with no Python number beside them
        return torch.clamp(x, None if low is None else _as_tensor(low, x),
                           None if high is None else _as_tensor(high, x))
    return x.clamp(low, high)


def _nan_of(t: Hyper, x: torch.Tensor) -> torch.Tensor | None:
    """0 where threshold ``t`` is a number, NaN where it is NaN (``None`` for a Python
    number, validated finite): added to a hard threshold's result, it makes a NaN threshold
    show, where ``|x| <= NaN`` alone would keep ``x``."""
    return torch.where(torch.isnan(t), t, 0.0).to(x.dtype) if isinstance(t, torch.Tensor) else None


class PerLeaf:
    """Composable implementation: per-leaf out-of-place tensor ops; ownership is ignored.
    ``bcast``, ``scalar`` and ``counts`` shape a member's values against its leaf on the
    stacked path (:class:`Foreach`); here, where ``vmap`` hides the members, they are
    the identity."""

    fused = False  # torch's fused optimizer kernels are never traced
    batch = 0
    dtensor = False

    def bcast(self, xs: list[Any], like: Tensors) -> list[Any]:
        return xs

    def scalar(self, h: Hyper, like: torch.Tensor) -> Hyper:
        return h

    @overload
    def counts(self, xs: Tensors, *, check: Literal[False]) -> Tensors: ...
    @overload
    def counts(self, xs: Tensors, *, check: bool = True) -> Tensors | None: ...

    def counts(self, xs: Tensors, *, check: bool = True) -> Tensors | None:
        return xs

    def sign(self, xs: Tensors) -> Tensors:
        return [torch.sign(x) for x in xs]

    def neg(self, xs: Tensors) -> Tensors:
        return [-x for x in xs]

    def sqrt(self, xs: Tensors) -> Tensors:
        return [torch.sqrt(x) for x in xs]

    def reciprocal_(self, xs: Tensors) -> Tensors:
        return [torch.reciprocal(x) for x in xs]

    def sub(self, xs: Tensors, ys: Tensors) -> Tensors:
        return [x - y for x, y in zip(xs, ys)]

    def mul_(self, xs: Tensors, h: Column) -> Tensors:
        return [_keep(x, x * v) for x, v in zip(xs, each(h, len(xs)))]

    mul = mul_

    def one_minus_pow(self, base: Column, exponents: Tensors) -> Tensors:
        """``1 - b ** e`` for each 0-d exponent (Adam's bias corrections)."""
        return [1 - b**e for b, e in zip(each(base, len(exponents)), exponents)]

    def add_(self, xs: Tensors, ys: Tensors | Column, alpha: Column | None = None) -> Tensors:
        """``x + alpha * y`` for leaves ``ys``, or ``x + h`` for a column ``h``."""
        ys = each(ys, len(xs))
        if alpha is None:
            return [_keep(x, x + y) for x, y in zip(xs, ys)]
        return [_keep(x, x + a * y) for x, y, a in zip(xs, ys, each(alpha, len(xs)))]

    def div_(self, xs: Tensors, h: Column) -> Tensors:
        return [_keep(x, x / v) for x, v in zip(xs, each(h, len(xs)))]

    def lerp_(self, xs: Tensors, ys: Tensors, h: Column) -> Tensors:
        return [torch.lerp(x, y, _as_tensor(v, x)) for x, y, v in zip(xs, ys, each(h, len(xs)))]

    def addcmul_(self, xs: Tensors, ys: Tensors, zs: Tensors, h: Column = 1.0) -> Tensors:
        """``x + h * y * z``."""
        return [_keep(x, x + v * y * z) for x, y, z, v in zip(xs, ys, zs, each(h, len(xs)))]

    def addcdiv_(self, xs: Tensors, ys: Tensors, zs: Tensors, h: Column = 1.0) -> Tensors:
        """``x + h * y / z``."""
        return [_keep(x, x + v * y / z) for x, y, z, v in zip(xs, ys, zs, each(h, len(xs)))]

    def maximum_(self, xs: Tensors, ys: Tensors) -> Tensors:
        return [torch.maximum(x, y) for x, y in zip(xs, ys)]

    def sign_(self, xs: Tensors) -> Tensors:
        return [torch.sign(x) for x in xs]

    def sqrt_(self, xs: Tensors) -> Tensors:
        return [torch.sqrt(x) for x in xs]

    def clamp_(self, xs: Tensors, low: Column | None, high: Column | None) -> Tensors:
        """``clamp(x, low, high)``; a bound of ``None`` is no bound."""
        n = len(xs)
        lows, highs = ([None] * n if b is None else each(b, n) for b in (low, high))
        return [_keep(x, _clamp(x, a, b)) for x, a, b in zip(xs, lows, highs)]

    def soft_threshold_(self, xs: Tensors, t: Column) -> Tensors:
        """``x - clamp(x, -t, t)``: exact zeros where ``|x| <= t``, ties included."""
        return [_keep(x, x - _clamp(x, -v, v)) for x, v in zip(xs, each(t, len(xs)))]

    def hard_threshold_(self, xs: Tensors, t: Column) -> Tensors:
        """``x`` where ``|x| > t``, exact zeros elsewhere (ties zeroed); a NaN ``x`` or
        ``t`` gives NaN, as through the soft threshold."""
        out = []
        for x, v in zip(xs, each(t, len(xs))):
            y = torch.where(x.abs() <= v, torch.zeros((), dtype=x.dtype, device=x.device), x)
            nan = _nan_of(v, x)
            out.append(y if nan is None else y + nan)
        return out

    def firm_threshold_(self, xs: Tensors, low: Column, high: Column, c: Column) -> Tensors:
        """Firm thresholding: 0 where ``|x| <= low``, ``c·soft(x, low)`` up to ``high``, ``x``
        beyond (continuous when ``c = high / (high - low)``), computed as
        ``(x - clamp(x, ±high)) + c·(clamp(x, ±high) - clamp(x, ±low))``: both terms are
        exactly 0 where ``|x| <= low``, and the first is exactly 0 up to ``high``."""
        n = len(xs)
        out = []
        for x, a, b, k in zip(xs, each(low, n), each(high, n), each(c, n)):
            outer = _clamp(x, -b, b)
            out.append(_keep(x, (x - outer) + k * (outer - _clamp(x, -a, a))))
        return out


def _cow(in_place: Callable[..., Any], out_of_place: Callable[..., Any], xs: Tensors,
         *args: Any, **kwargs: Any) -> Tensors:
    """A foreach op on ``xs``: in place when ``xs`` is owned, into fresh tensors otherwise."""
    if owned(xs):
        in_place(xs, *args, **kwargs)
        return xs
    return Owned(_keep(x, r) for x, r in zip(xs, out_of_place(xs, *args, **kwargs)))


def _arg(xs: Tensors, h: Column, *, tensor: bool = False) -> Any:
    """Column ``h`` as a foreach argument: a number, a ScalarList, a tensor (``tensor``:
    the op has a ``.Tensor`` overload) or a list of tensors."""
    if isinstance(h, torch.Tensor):
        return h if tensor else [h] * len(xs)
    if not isinstance(h, (list, tuple)):
        return float(h)
    if is_number(h):
        return [float(v) for v in h]
    return [_as_tensor(v, x) for x, v in zip(xs, h)]


def _tensors(arg: Any) -> bool:
    return isinstance(arg, torch.Tensor) or (isinstance(arg, list) and bool(arg)
                                             and isinstance(arg[0], torch.Tensor))


class Foreach:
    """Fast implementation: ``torch._foreach_*`` over one (device, dtype) group.

    ``fused``: the group may run torch's fused optimizer kernels (contiguous leaves on a
    real device, not traced); ``batch``: leading ensemble dims of every leaf (the stacked
    path); ``dtensor``: the group's leaves are DTensors."""

    def __init__(self, *, fused: bool = False, batch: int = 0, dtensor: bool = False):
        self.fused, self.batch, self.dtensor = fused, batch, dtensor

    def bcast(self, xs: list[Any], like: Tensors) -> list[Any]:
        """A member's 0-d values (a step count, a bias correction: ``batch`` leading dims)
        shaped to broadcast against its leaf."""
        if not self.batch:
            return xs
        return [x.reshape(*x.shape, *[1] * (w.ndim - x.ndim)) if isinstance(x, torch.Tensor) else x
                for x, w in zip(xs, like)]

    def scalar(self, h: Hyper, like: torch.Tensor) -> Hyper:
        """A member's scalar hyperparameter (``batch`` leading dims, then ones) shaped to
        broadcast against ``like``, a tensor with the same leading dims (singular values)."""
        if not self.batch or not isinstance(h, torch.Tensor) or h.ndim <= self.batch:
            return h
        return h.reshape(*h.shape[:self.batch], *[1] * (like.ndim - self.batch))

    @overload
    def counts(self, xs: Tensors, *, check: Literal[False]) -> Tensors: ...
    @overload
    def counts(self, xs: Tensors, *, check: bool = True) -> Tensors | None: ...

    def counts(self, xs: Tensors, *, check: bool = True) -> Tensors | None:
        """Each leaf's step count as one 0-d value, what torch's fused kernels take. On the
        stacked path: the first member's, when every member's count is the same (read on
        the host, on CPU only, as torch.optim's CPU step reads its counts; not read with
        ``check=False``), else ``None``."""
        if not self.batch:
            return xs
        if check and xs[0].device.type != "cpu":
            return None
        members = torch.stack(xs)  # one row per leaf (few kernels: each costs more than the data)
        members = members if members.ndim == 2 else members.flatten(1)
        if check and any(row.count(row[0]) != len(row) for row in members.tolist()):
            return None
        return list(members[:, 0].unbind())

    def sign(self, xs: Tensors) -> Tensors:
        return Owned(torch._foreach_sign(xs))

    def neg(self, xs: Tensors) -> Tensors:
        return Owned(torch._foreach_neg(xs))

    def sqrt(self, xs: Tensors) -> Tensors:
        return Owned(torch._foreach_sqrt(xs))

    def sub(self, xs: Tensors, ys: Tensors) -> Tensors:
        return Owned(torch._foreach_sub(xs, ys))

    def mul(self, xs: Tensors, h: Column) -> Tensors:
        return Owned(_keep(x, r) for x, r in zip(xs, torch._foreach_mul(xs, _arg(xs, h, tensor=True))))

    def one_minus_pow(self, base: Column, exponents: Tensors) -> Tensors:
        if isinstance(base, (list, tuple, torch.Tensor)):
            return PER_LEAF.one_minus_pow(base, exponents)
        out = list(torch._foreach_pow(float(base), exponents))
        torch._foreach_neg_(out)
        torch._foreach_add_(out, 1.0)
        return out

    def add_(self, xs: Tensors, ys: Tensors | Column, alpha: Column | None = None) -> Tensors:
        """``x + alpha * y`` for leaves ``ys``, or ``x + h`` for a column ``h``."""
        if not isinstance(ys, (list, tuple)) or not all(isinstance(y, torch.Tensor) for y in ys):
            base = _whole_base(xs) if owned(xs) and not isinstance(ys, (list, tuple, torch.Tensor)) else None
            if base is not None:  # step counters made by init: one kernel, not one per leaf
                base.add_(float(cast(float, ys)))
                return xs
            return _cow(torch._foreach_add_, torch._foreach_add, xs, _arg(xs, ys, tensor=True))
        if alpha is None or not isinstance(alpha, (list, tuple, torch.Tensor)):
            return _cow(torch._foreach_add_, torch._foreach_add, xs, ys,
                        alpha=1.0 if alpha is None else float(alpha))
        # a tensor alpha: x + y * alpha, foreach's addcmul with the alphas as third operand
        scale = [_as_tensor(v, x) for x, v in zip(xs, each(alpha, len(xs)))]
        return _cow(torch._foreach_addcmul_, torch._foreach_addcmul, _in_place_only(xs), ys, scale)

    def mul_(self, xs: Tensors, h: Column) -> Tensors:
        return _cow(torch._foreach_mul_, torch._foreach_mul, xs, _arg(xs, h, tensor=True))

    def div_(self, xs: Tensors, h: Column) -> Tensors:
        return _cow(torch._foreach_div_, torch._foreach_div, xs, _arg(xs, h, tensor=True))

    def lerp_(self, xs: Tensors, ys: Tensors, h: Column) -> Tensors:
        return _cow(torch._foreach_lerp_, torch._foreach_lerp, xs, ys, _arg(xs, h))

    def addcmul_(self, xs: Tensors, ys: Tensors, zs: Tensors, h: Column = 1.0) -> Tensors:
        """``x + h * y * z``; a tensor ``h`` scales a fresh copy of ``ys`` first (the op
        takes tensor scalars only as one 1-d CPU tensor)."""
        arg = _arg(xs, h)
        if _tensors(arg):
            ys, arg = list(torch._foreach_mul(ys, arg)), 1.0
        return _cow(torch._foreach_addcmul_, torch._foreach_addcmul, _in_place_only(xs), ys, zs, arg)

    def addcdiv_(self, xs: Tensors, ys: Tensors, zs: Tensors, h: Column = 1.0) -> Tensors:
        """``x + h * y / z``; a tensor ``h`` scales a fresh copy of ``ys`` first."""
        arg = _arg(xs, h)
        if _tensors(arg):
            ys, arg = list(torch._foreach_mul(ys, arg)), 1.0
        return _cow(torch._foreach_addcdiv_, torch._foreach_addcdiv, _in_place_only(xs), ys, zs, arg)

    def maximum_(self, xs: Tensors, ys: Tensors) -> Tensors:
        return _cow(torch._foreach_maximum_, torch._foreach_maximum, xs, ys)

    def reciprocal_(self, xs: Tensors) -> Tensors:
        return _cow(torch._foreach_reciprocal_, torch._foreach_reciprocal, xs)

    def sign_(self, xs: Tensors) -> Tensors:
        return _cow(torch._foreach_sign_, torch._foreach_sign, xs)

    def sqrt_(self, xs: Tensors) -> Tensors:
        return _cow(torch._foreach_sqrt_, torch._foreach_sqrt, xs)

    def clamp_(self, xs: Tensors, low: Column | None, high: Column | None) -> Tensors:
        """``clamp(x, low, high)``; a bound of ``None`` is no bound: numbers go to
        clamp_min/clamp_max, tensors to maximum/minimum."""
        for bound, numbers, tensors in (
                (low, (torch._foreach_clamp_min_, torch._foreach_clamp_min),
                 (torch._foreach_maximum_, torch._foreach_maximum)),
                (high, (torch._foreach_clamp_max_, torch._foreach_clamp_max),
                 (torch._foreach_minimum_, torch._foreach_minimum))):
            if bound is not None:
                arg = _arg(xs, bound)
                xs = _cow(*(tensors if _tensors(arg) else numbers), xs, arg)
        return xs

    def soft_threshold_(self, xs: Tensors, t: Column) -> Tensors:
        """``x - clamp(x, -t, t)``: exact zeros where ``|x| <= t``, ties included."""
        arg = _arg(xs, t)
        if _tensors(arg):
            clamped = torch._foreach_maximum(xs, torch._foreach_neg(arg))
            torch._foreach_minimum_(clamped, arg)
        else:
            clamped = torch._foreach_clamp_min(xs, -arg if isinstance(arg, float) else [-v for v in arg])
            torch._foreach_clamp_max_(clamped, arg)
        return _cow(torch._foreach_sub_, torch._foreach_sub, xs, clamped)

    def hard_threshold_(self, xs: Tensors, t: Column) -> Tensors:
        """As :meth:`PerLeaf.hard_threshold_`; in place, one masked fill per leaf: there is
        no foreach form, and a multiply by the mask would turn inf into nan."""
        if not owned(xs):
            return Owned(PER_LEAF.hard_threshold_(xs, t))
        for x, v in zip(xs, each(t, len(xs))):
            x.masked_fill_(x.abs() <= v, 0)
            nan = _nan_of(v, x)
            if nan is not None:
                x.add_(nan)
        return xs

    def firm_threshold_(self, xs: Tensors, low: Column, high: Column, c: Column) -> Tensors:
        """As :meth:`PerLeaf.firm_threshold_`, a leaf at a time (five kernels, the two clamps'
        scratch one leaf each): no foreach form has the clamps' tensor bounds and the
        final multiply-add together."""
        n = len(xs)
        out = xs if owned(xs) else Owned()
        for x, a, b, k in zip(xs, each(low, n), each(high, n), each(c, n)):
            outer, inner = _clamp(x, -b, b), _clamp(x, -a, a)
            torch.sub(outer, inner, out=inner)  # clamp(±high) - clamp(±low), into scratch
            y = x.sub_(outer) if out is xs else torch.sub(x, outer, out=outer)
            if isinstance(k, torch.Tensor):
                y.addcmul_(inner, k)
            else:
                y.add_(inner, alpha=k)
            if out is not xs:
                out.append(y)
        return out


class ForeachCPU(Foreach):
    """:class:`Foreach` for a CPU group, where a ``torch._foreach_*`` op is a C++ loop of
    the per-tensor kernel: one full pass over every leaf per op; a chain of them exists
    only because foreach ops have no ``out=``, and one per-leaf kernel into a tensor the
    call owns does the same work in one pass."""

    def mul_(self, xs: Tensors, h: Column) -> Tensors:
        arg = _arg(xs, h, tensor=True)
        if owned(xs) and xs and xs[0].dtype in (torch.bfloat16, torch.float16) and not _tensors(arg):
            # In place on a CPU half-precision group, _foreach_mul_ rounds a Python scalar
            # to the leaves' dtype first (0.9 becomes 0.8984375 in bfloat16), unlike the
            # out-of-place op: a float32 tensor keeps the scalar exact, so donated and pure
            # calls agree to the bit.
            arg = [torch.tensor(v, dtype=torch.float32) for v in each(arg, len(xs))]
        return _cow(torch._foreach_mul_, torch._foreach_mul, xs, arg)

    def soft_threshold_(self, xs: Tensors, t: Column) -> Tensors:
        """Each leaf finished while its clamp is still in cache (one leaf of scratch)."""
        if owned(xs) and not isinstance(t, (list, tuple, torch.Tensor)):  # the common donated case
            for x in xs:
                x.sub_(x.clamp(-t, t))
            return xs
        negated: dict[int, torch.Tensor] = {}
        out = xs if owned(xs) else Owned()
        for x, v in zip(xs, each(t, len(xs))):
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


def _whole_base(xs: Tensors) -> torch.Tensor | None:
    """The 1-d tensor whose elements ``xs`` are, each once and in order (the step counters
    ``init`` makes), or ``None``."""
    base = xs[0]._base if xs and xs[0].ndim == 0 else None
    if base is None or base.ndim != 1 or base.numel() != len(xs) or not base.is_contiguous():
        return None
    start = base.storage_offset()
    if any(x._base is not base for x in xs) or [x.storage_offset() for x in xs] != list(range(start, start + len(xs))):
        return None
    return base


def _in_place_only(xs: Tensors) -> Tensors:
    """Owned copies of borrowed DTensor leaves, for the ops whose out-of-place foreach form
    has no sharding strategy in torch 2.13 (``addcmul`` and ``addcdiv``)."""
    return owned_copy(xs) if not owned(xs) and xs and _sharding.is_dtensor(xs[0]) else xs


PER_LEAF = PerLeaf()
Ops = PerLeaf | Foreach
