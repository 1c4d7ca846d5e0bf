"""Hyperparameters: validate Python numbers, and give each selected leaf its own value.

A hyperparameter is a Python number, a 0-d tensor (possibly batched under ``vmap``, which
is how an ensemble over λ is written) or, where a per-leaf value makes sense (``lam``,
``step``), a pytree or a dict keyed by leaf path. Values are never read on the host
(no ``.item()``, no Python comparisons on tensors): that would break ``vmap`` and force
``torch.compile`` to recompile.
"""

from __future__ import annotations

import math
from numbers import Real
from typing import Any, Union

import optree
import torch

from funcreg import _sharding
from funcreg._tree import NAMESPACE, Flat, flatten

Hyper = Union[float, torch.Tensor]


def number(
    name: str,
    value: Any,
    *,
    low: float = 0.0,
    high: float = math.inf,
    high_open: bool = False,
    where: str = "",
) -> Hyper:
    """Check one scalar hyperparameter: a finite Python number in range, or a 0-d tensor.

    Only Python numbers are range-checked: a tensor's value is not read.
    """
    at = f" for leaf {where!r}" if where else ""
    if isinstance(value, torch.Tensor):
        if value.ndim != 0:
            raise ValueError(
                f"{name}{at} must be a number or a 0-d tensor, got a tensor of shape "
                f"{tuple(value.shape)}; batch it with torch.func.vmap instead"
            )
        return value
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name}{at} must be a number or a tensor, not {type(value).__name__}")
    value = float(value)
    above = value >= high if high_open else value > high
    if not math.isfinite(value) or value < low or above:
        bound = ")" if high_open else "]"
        where = "" if (low, high) == (-math.inf, math.inf) else f" in [{low}, {high}{bound}"
        raise ValueError(f"{name}{at} must be a finite number{where}, got {value}")
    return value


def per_leaf(
    name: str,
    value: Any,
    flat: Flat,
    selected: list[int],
    *,
    elementwise: bool = False,
    low: float = 0.0,
    high: float = math.inf,
    why: str = "",
) -> list[Hyper]:
    """One value of hyperparameter ``name`` per selected leaf of ``flat``.

    ``value`` is a number or a 0-d tensor shared by all leaves, or a tree whose leaf paths
    are params paths (a nested pytree shaped like params or a flat dict keyed by dotted
    path; unselected leaves may be left out). With ``elementwise``, a per-leaf value may
    also be a tensor shaped like its leaf (a per-element step, as a proximal Adam needs);
    ``why`` is added to the error when such a value is not allowed. Tensors are cast to
    their leaf's dtype and device.
    """
    if isinstance(value, (torch.Tensor, Real)) or optree.tree_is_leaf(
        value, none_is_leaf=True, namespace=NAMESPACE
    ):  # one value for all leaves (number() rejects a str, None, ...: TypeError)
        shared = number(name, value, low=low, high=high)
        if not isinstance(shared, torch.Tensor):
            return [shared] * len(selected)
        return _cast([shared] * len(selected), [flat.leaves[i] for i in selected])

    given = flatten(value, name)
    by_path = dict(zip(given.paths, given.leaves))
    known = set(flat.paths)
    for path in given.paths:
        if path not in known:
            raise ValueError(f"{name} names leaf {path!r}, which params do not have")
    out: list[Hyper] = []
    for i in selected:
        path, leaf = flat.paths[i], flat.leaves[i]
        if path not in by_path:
            raise ValueError(f"{name} gives no value for selected leaf {path!r}")
        v = by_path[path]
        if isinstance(v, torch.Tensor) and v.ndim != 0:
            if not elementwise:
                raise ValueError(
                    f"{name} for leaf {path!r} must be a number or a 0-d tensor, got shape "
                    f"{tuple(v.shape)}{why}"
                )
            if v.shape != leaf.shape:
                raise ValueError(
                    f"{name} for leaf {path!r} has shape {tuple(v.shape)}; a per-element "
                    f"value must have the leaf's shape {tuple(leaf.shape)}"
                )
            if _sharding.is_dtensor(leaf) and not _sharding.is_dtensor(v):
                raise ValueError(
                    f"{name} for leaf {path!r} is a plain tensor but the leaf is a DTensor; "
                    "give a per-element value as a DTensor with the leaf's placements"
                )
            out.append(v)
        else:
            out.append(number(name, v, low=low, high=high, where=path))
    return _cast(out, [flat.leaves[i] for i in selected])


def _cast(values: list[Hyper], leaves: list[torch.Tensor]) -> list[Hyper]:
    """Cast tensor values to their leaf's dtype and device, once per distinct pair (and,
    for DTensor leaves inside a torch.func transform, to Replicate DTensors)."""
    if _sharding.any_dtensor(leaves):
        values = _replicated(values, leaves)
    if torch.compiler.is_compiling():
        # No id()-keyed cache while tracing: id() of a tensor makes Dynamo guard on that
        # object's identity, so every new λ tensor would recompile. Inductor dedups anyway.
        return [
            v.to(dtype=leaf.dtype, device=leaf.device) if isinstance(v, torch.Tensor) else v
            for v, leaf in zip(values, leaves)
        ]
    cache: dict[tuple[int, torch.dtype, torch.device], torch.Tensor] = {}
    out: list[Hyper] = []
    for v, leaf in zip(values, leaves):
        if isinstance(v, torch.Tensor) and (v.dtype != leaf.dtype or v.device != leaf.device):
            key = (id(v), leaf.dtype, leaf.device)
            if key not in cache:
                cache[key] = v.to(dtype=leaf.dtype, device=leaf.device)
            v = cache[key]
        out.append(v)
    return out


def _replicated(values: list[Hyper], leaves: list[torch.Tensor]) -> list[Hyper]:
    """Plain 0-d tensors beside DTensor leaves as Replicate DTensors on the leaves' meshes.

    Eagerly DTensor's dispatch takes a plain 0-d tensor as a scalar; under ``vmap`` a
    batched one is a plain tensor of K elements to it ("mixed torch.Tensor and DTensor"),
    so inside a transform it becomes a Replicate DTensor first (no communication)."""
    if torch.compiler.is_compiling():
        return values  # no torch.func transform wraps what Dynamo traces (and see _cast)
    wrapped = torch._C._functorch.is_functorch_wrapped_tensor
    cache: dict[tuple[int, int], torch.Tensor] = {}
    out: list[Hyper] = []
    for v, leaf in zip(values, leaves):
        if (isinstance(v, torch.Tensor) and v.ndim == 0 and _sharding.is_dtensor(leaf)
                and not _sharding.is_dtensor(v) and (wrapped(v) or wrapped(leaf))):
            key = (id(v), id(_sharding.unwrap(leaf).device_mesh))
            if key not in cache:
                cache[key] = _sharding.replicate_like(v, leaf)
            v = cache[key]
        out.append(v)
    return out


def combine(fn: Any, *columns: list[Hyper]) -> list[Hyper]:
    """``[fn(a, b, ...) for each leaf]``, computing once for values shared between leaves.

    Derived hyperparameters (``lam * step``, ``1 / (1 + 2 lam step)``) are per-leaf
    scalars; when one tensor λ serves every leaf, this keeps it to one tiny kernel instead
    of one per leaf.
    """
    if torch.compiler.is_compiling():
        # See _cast: id() on a traced tensor would guard on its identity (recompiles).
        return [fn(*args) for args in zip(*columns)]
    cache: dict[tuple[int, ...], Hyper] = {}
    out: list[Hyper] = []
    for args in zip(*columns):
        key = tuple(id(a) for a in args)
        if key not in cache:
            cache[key] = fn(*args)
        out.append(cache[key])
    return out
