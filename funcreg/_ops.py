"""Leaf-list arithmetic with two implementations: multi-tensor kernels and per-leaf ops.

Every penalty and step in funcreg is written once, against the small vocabulary below, and
runs on either implementation:

* :data:`FOREACH` calls ``torch._foreach_*`` kernels. The caller hands it leaves of one
  (device, dtype) group; it may write in place into tensors it allocated itself.
  :data:`FOREACH_CPU` is the same for CPU groups, except for a few ops where one fused
  per-leaf kernel writing into a fresh tensor (``out=``) replaces a chain of foreach calls.
* :data:`PER_LEAF` uses plain tensor ops, one leaf at a time, never in place, so that
  ``vmap``, ``grad``, ``jacrev`` and ``torch.compile`` can trace it.

A hyperparameter column ``h`` holds one value per leaf: a Python float, a 0-d tensor, or a
tensor shaped like the leaf.
"""

from __future__ import annotations

from typing import Sequence

import torch

from funcreg._hyper import Hyper

Tensors = list[torch.Tensor]
Column = Sequence[Hyper]


class PerLeaf:
    """Composable implementation: per-leaf, out-of-place tensor ops."""

    @staticmethod
    def mul(xs: Tensors, h: Column) -> Tensors:
        return [x * v for x, v in zip(xs, h)]

    @staticmethod
    def iadd(fresh: Tensors, ys: Tensors) -> Tensors:
        return [x + y for x, y in zip(fresh, ys)]

    @staticmethod
    def sub(xs: Tensors, ys: Tensors) -> Tensors:
        return [x - y for x, y in zip(xs, ys)]

    @staticmethod
    def sign(xs: Tensors) -> Tensors:
        return [torch.sign(x) for x in xs]

    @staticmethod
    def lerp(xs: Tensors, ys: Tensors, h: Column) -> Tensors:
        return [torch.lerp(x, y, _as_tensor(v, x)) for x, y, v in zip(xs, ys, h)]

    @staticmethod
    def neg(xs: Tensors) -> Tensors:
        return [-x for x in xs]

    @staticmethod
    def axpy(xs: Tensors, ys: Tensors, h: Column) -> Tensors:
        """``x + h * y``."""
        return [x + y * v for x, y, v in zip(xs, ys, h)]

    @staticmethod
    def addcmul(fresh: Tensors, ys: Tensors, zs: Tensors, h: Column) -> Tensors:
        """``fresh + h * y * z``."""
        return [x + v * y * z for x, y, z, v in zip(fresh, ys, zs, h)]

    @staticmethod
    def div(xs: Tensors, ys: Tensors) -> Tensors:
        return [x / y for x, y in zip(xs, ys)]

    @staticmethod
    def sqrt(xs: Tensors) -> Tensors:
        return [torch.sqrt(x) for x in xs]

    @staticmethod
    def maximum(xs: Tensors, ys: Tensors) -> Tensors:
        return [torch.maximum(x, y) for x, y in zip(xs, ys)]

    @staticmethod
    def add_scalar(xs: Tensors, h: Column) -> Tensors:
        """``x + h``."""
        return [x + v for x, v in zip(xs, h)]

    @staticmethod
    def one_minus_pow(base: Column, exponents: Tensors) -> Tensors:
        """``1 - b ** e`` for each 0-d exponent (Adam's bias corrections)."""
        return [1 - b**e for b, e in zip(base, exponents)]

    @staticmethod
    def ireciprocal(fresh: Tensors) -> Tensors:
        return [torch.reciprocal(x) for x in fresh]

    @staticmethod
    def iaxpy(xs: Tensors, fresh: Tensors, h: Column) -> Tensors:
        """``x + h * fresh`` (the fast path writes it into ``fresh``)."""
        return [x + y * v for x, y, v in zip(xs, fresh, h)]

    @staticmethod
    def soft_threshold(xs: Tensors, t: Column) -> Tensors:
        """``x - clamp(x, -t, t)``: exact zeros where ``|x| <= t``, ties included."""
        return [x - _clamp(x, v) for x, v in zip(xs, t)]

    # "fresh" arguments below are tensors the caller just allocated; FOREACH reuses them.
    imul = mul
    iadd_scalar = add_scalar


def _clamp(x: torch.Tensor, t: Hyper) -> torch.Tensor:
    if isinstance(t, torch.Tensor):
        return torch.clamp(x, -t, t)
    return x.clamp(-t, t)


def _as_tensor(v: Hyper, like: torch.Tensor) -> torch.Tensor:
    if isinstance(v, torch.Tensor):
        return v
    return torch.full((), v, dtype=like.dtype, device=like.device)


def _arg(xs: Tensors, h: Column) -> list[float] | Tensors:
    """A column as a foreach argument: a ScalarList when every value is a Python float."""
    if all(not isinstance(v, torch.Tensor) for v in h):
        return list(h)  # type: ignore[arg-type]
    return [_as_tensor(v, x) for x, v in zip(xs, h)]


class Foreach:
    """Fast implementation: ``torch._foreach_*`` over one (device, dtype) group."""

    @staticmethod
    def mul(xs: Tensors, h: Column) -> Tensors:
        return list(torch._foreach_mul(xs, _arg(xs, h)))

    @staticmethod
    def sub(xs: Tensors, ys: Tensors) -> Tensors:
        return list(torch._foreach_sub(xs, ys))

    @staticmethod
    def sign(xs: Tensors) -> Tensors:
        return list(torch._foreach_sign(xs))

    @staticmethod
    def _clamp_abs(xs: Tensors, t: Column) -> Tensors:
        """``clamp(x, -t, t)``."""
        arg = _arg(xs, t)
        if isinstance(arg[0], torch.Tensor):
            out = list(torch._foreach_maximum(xs, torch._foreach_neg(arg)))
            torch._foreach_minimum_(out, arg)
        else:
            out = list(torch._foreach_clamp_min(xs, [-v for v in arg]))
            torch._foreach_clamp_max_(out, arg)
        return out

    @staticmethod
    def lerp(xs: Tensors, ys: Tensors, h: Column) -> Tensors:
        return list(torch._foreach_lerp(xs, ys, _arg(xs, h)))

    @staticmethod
    def neg(xs: Tensors) -> Tensors:
        return list(torch._foreach_neg(xs))

    @staticmethod
    def axpy(xs: Tensors, ys: Tensors, h: Column) -> Tensors:
        arg = _arg(xs, h)
        if isinstance(arg[0], torch.Tensor):
            return list(torch._foreach_addcmul(xs, ys, arg))
        out = list(torch._foreach_mul(ys, arg))
        torch._foreach_add_(out, xs)
        return out

    @staticmethod
    def addcmul(fresh: Tensors, ys: Tensors, zs: Tensors, h: Column) -> Tensors:
        arg = _arg(fresh, h)
        if isinstance(arg[0], torch.Tensor):
            torch._foreach_addcmul_(fresh, torch._foreach_mul(ys, arg), zs)
        else:
            torch._foreach_addcmul_(fresh, ys, zs, arg)
        return fresh

    @staticmethod
    def div(xs: Tensors, ys: Tensors) -> Tensors:
        return list(torch._foreach_div(xs, ys))

    @staticmethod
    def sqrt(xs: Tensors) -> Tensors:
        return list(torch._foreach_sqrt(xs))

    @staticmethod
    def maximum(xs: Tensors, ys: Tensors) -> Tensors:
        return list(torch._foreach_maximum(xs, ys))

    @staticmethod
    def add_scalar(xs: Tensors, h: Column) -> Tensors:
        return list(torch._foreach_add(xs, _arg(xs, h)))

    @staticmethod
    def iadd_scalar(fresh: Tensors, h: Column) -> Tensors:
        torch._foreach_add_(fresh, _arg(fresh, h))
        return fresh

    @staticmethod
    def one_minus_pow(base: Column, exponents: Tensors) -> Tensors:
        b = base[0]
        if isinstance(b, torch.Tensor) or any(v != b for v in base):
            return PerLeaf.one_minus_pow(base, exponents)
        out = list(torch._foreach_pow(b, exponents))
        torch._foreach_neg_(out)
        torch._foreach_add_(out, 1)
        return out

    @staticmethod
    def ireciprocal(fresh: Tensors) -> Tensors:
        torch._foreach_reciprocal_(fresh)
        return fresh

    @staticmethod
    def iadd(fresh: Tensors, ys: Tensors) -> Tensors:
        torch._foreach_add_(fresh, ys)
        return fresh

    @staticmethod
    def imul(fresh: Tensors, h: Column) -> Tensors:
        torch._foreach_mul_(fresh, _arg(fresh, h))
        return fresh

    @staticmethod
    def iaxpy(xs: Tensors, fresh: Tensors, h: Column) -> Tensors:
        torch._foreach_mul_(fresh, _arg(fresh, h))
        torch._foreach_add_(fresh, xs)
        return fresh

    @classmethod
    def soft_threshold(cls, xs: Tensors, t: Column) -> Tensors:
        return list(torch._foreach_sub(xs, cls._clamp_abs(xs, t)))


class ForeachCPU(Foreach):
    """:class:`Foreach` for a CPU group.

    On CPU a ``torch._foreach_*`` op is a C++ loop of the per-tensor kernel over the
    leaves: one full pass over every leaf per op. Where a chain of them exists only
    because foreach ops have no ``out=`` (``x + h * fresh`` as ``mul_`` then ``add_``,
    a clamp as ``clamp_min`` then ``clamp_max_``, the subtraction of a soft threshold
    into yet another new tensor), one per-leaf kernel does the work in one pass, writing
    into the tensor that was just allocated. Same math, fewer passes over memory and
    fewer allocations; the soft threshold also finishes each leaf while its clamp is
    still in cache. Python-float hyperparameters reach ``alpha=`` or a clamp bound only
    here, on plain tensors the fast path never sees traced.
    """

    @staticmethod
    def iaxpy(xs: Tensors, fresh: Tensors, h: Column) -> Tensors:
        for x, y, v in zip(xs, fresh, h):
            if isinstance(v, torch.Tensor):
                torch.addcmul(x, y, v, out=y)
            else:
                torch.add(x, y, alpha=v, out=y)
        return fresh

    @staticmethod
    def soft_threshold(xs: Tensors, t: Column) -> Tensors:
        negated: dict[int, torch.Tensor] = {}
        out = []
        for x, v in zip(xs, t):
            y = _clamp_cpu(x, v, negated)
            torch.sub(x, y, out=y)
            out.append(y)
        return out


def _clamp_cpu(x: torch.Tensor, t: Hyper, negated: dict[int, torch.Tensor]) -> torch.Tensor:
    """``clamp(x, -t, t)`` in one kernel; ``negated`` keeps ``-t`` once per tensor ``t``."""
    if not isinstance(t, torch.Tensor):
        return torch.clamp(x, -t, t)
    if id(t) not in negated:
        negated[id(t)] = torch.neg(t)
    return torch.clamp(x, negated[id(t)], t)


PER_LEAF = PerLeaf()
FOREACH = Foreach()
FOREACH_CPU = ForeachCPU()
Ops = PerLeaf | Foreach
