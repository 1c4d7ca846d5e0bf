"""Hyperparameters: what each one may be, its validation, and its values per leaf.

A hyperparameter is a Python number, a 0-d tensor (possibly batched under ``vmap``: an
ensemble over λ) or, where :class:`Param` allows it, a pytree or a dict keyed by leaf path
giving one value per leaf (and, with ``per_element``, a tensor shaped like the leaf).
Python numbers are range-checked on every call; a tensor's value is never read on the host
(no ``.item()``, no comparisons), which would break ``vmap`` and recompile
``torch.compile``. What a value *is* (its :func:`kind`) keys the engine's plan; the value
itself never does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Real
from typing import Any

import optree
import torch

from funcreg import _sharding, _tree

NUMBER = "number"


@dataclass(frozen=True)
class Param:
    """A hyperparameter's contract: its name, the range of a Python-number value, and the
    forms it may take (``per_leaf``: a tree keyed by leaf path; ``per_element``: values in
    it shaped like their leaf; ``optional``: ``None`` means absent). ``why`` ends the error
    that refuses a per-element value."""

    name: str
    low: float = 0.0
    high: float = math.inf
    high_open: bool = False
    per_leaf: bool = False
    per_element: bool = False
    optional: bool = False
    why: str = ""

    def number(self, value: Any, where: str = "") -> Any:
        return number(self.name, value, low=self.low, high=self.high, high_open=self.high_open, where=where)


def number(name: str, value: Any, *, low: float = 0.0, high: float = math.inf,
           high_open: bool = False, where: str = "") -> Any:
    """A finite Python number in range, as a float; a 0-d tensor passes unread."""
    at = f" for leaf {where!r}" if where else ""
    if isinstance(value, torch.Tensor):
        if value.ndim != 0:
            raise ValueError(f"{name}{at} must be a number or a 0-d tensor, got a tensor of shape "
                             f"{tuple(value.shape)}; batch it with torch.func.vmap instead")
        return value
    if isinstance(value, bool) or not isinstance(value, Real):
        several = (f"; for several {name} (an ensemble, one member each), pass one tensor of them "
                   "and map over it with torch.func.vmap") if isinstance(value, (list, tuple)) else ""
        raise TypeError(f"{name}{at} must be a number or a tensor, not {type(value).__name__}{several}")
    value = float(value)
    if not math.isfinite(value) or value < low or (value >= high if high_open else value > high):
        span = "" if (low, high) == (-math.inf, math.inf) else f" in [{low}, {high}{')' if high_open else ']'}"
        raise ValueError(f"{name}{at} must be a finite number{span}, got {value}")
    return value


def _tensor_kind(p: Param, v: torch.Tensor, where: str = "") -> tuple[Any, ...]:
    if v.layout != torch.strided:
        raise TypeError(f"{p.name}{f' for leaf {where!r}' if where else ''} is a {v.layout} "
                        "tensor; hyperparameters are dense tensors")
    return ("tensor", v.dtype, v.device, tuple(v.shape), v.is_contiguous(), _sharding.is_dtensor(v))


def kind(p: Param, value: Any) -> Any:
    """What ``value`` is, for the plan's key (``None``, :data:`NUMBER`, a 0-d tensor's dtype
    and device, or a per-leaf tree's structure and its leaves' kinds); Python numbers are
    range-checked here, on every call. Raises ``TypeError``/``ValueError`` for a value that
    ``p`` does not allow."""
    if type(value) is float and math.isfinite(value) and p.low <= value and (
            value < p.high if p.high_open else value <= p.high):
        return NUMBER  # the common case, checked without a call
    if value is None and p.optional:
        return None
    if isinstance(value, torch.Tensor):
        p.number(value)  # a 0-d tensor, or the error that says to vmap instead
        if value.layout != torch.strided:
            _tensor_kind(p, value)  # the error
        return ("tensor", value.dtype, value.device)
    if isinstance(value, Real) or not p.per_leaf or optree.tree_is_leaf(
            value, none_is_leaf=True, namespace=_tree.NAMESPACE):
        p.number(value)  # the range, or a TypeError for a str, None, a list of one ...
        return NUMBER
    fp, leaves = _tree.structure(value)
    paths = _tree.paths_of(value, fp, p.name)
    kinds: list[Any] = []
    for path, v in zip(paths, leaves):
        if isinstance(v, torch.Tensor):
            kinds.append(_tensor_kind(p, v, path))
        else:
            p.number(v, where=path)
            kinds.append(NUMBER)
    return ("tree", fp, paths, tuple(kinds))


def check_tree(p: Param, k: Any, flat: _tree.Flat, active: list[int]) -> list[int]:
    """Validate a per-leaf tree of kind ``k`` against params ``flat``; returns, for each
    active leaf, the position of its value among the tree's leaves."""
    _, _, paths, kinds = k
    known = set(flat.paths)
    for path in paths:
        if path not in known:
            example = flat.paths[0] if flat.paths else "fc.weight"
            raise ValueError(
                f"{p.name} names leaf {path!r}, which params do not have. A list or dict of "
                f"values is read as one {p.name} per leaf, keyed by leaf path "
                f"({{{example!r}: ...}}); for several {p.name} (an ensemble, one member "
                f"each), pass one tensor of them and map over it with torch.func.vmap")
    at = {path: j for j, path in enumerate(paths)}
    out = []
    for i in active:
        path, leaf = flat.paths[i], flat.leaves[i]
        if path not in at:
            raise ValueError(f"{p.name} gives no value for selected leaf {path!r}")
        j = at[path]
        if kinds[j] != NUMBER and kinds[j][3] != ():
            shape = kinds[j][3]
            if not p.per_element:
                raise ValueError(f"{p.name} for leaf {path!r} must be a number or a 0-d tensor, "
                                 f"got shape {shape}{p.why}")
            if shape != tuple(leaf.shape):
                raise ValueError(f"{p.name} for leaf {path!r} has shape {shape}; a per-element "
                                 f"value must have the leaf's shape {tuple(leaf.shape)}")
            if _sharding.is_dtensor(leaf) and not kinds[j][5]:
                raise ValueError(f"{p.name} for leaf {path!r} is a plain tensor but the leaf is a "
                                 "DTensor; give a per-element value as a DTensor with the leaf's placements")
        out.append(j)
    return out


def cast(values: list[Any], leaves: list[torch.Tensor], sharded: bool = True) -> list[Any]:
    """Tensor values cast to their leaf's dtype and device, once per distinct pair (and,
    beside DTensor leaves inside a torch.func transform, as Replicate DTensors; ``sharded``
    False says there are none)."""
    if sharded and _sharding.any_dtensor(leaves):
        values = _sharding.replicated(values, leaves)
    if torch.compiler.is_compiling():  # no id() caches: Dynamo would guard on identity
        return [v.to(dtype=x.dtype, device=x.device) if isinstance(v, torch.Tensor) else v
                for v, x in zip(values, leaves)]
    cache: dict[tuple[int, torch.dtype, torch.device], torch.Tensor] = {}
    out = []
    for v, x in zip(values, leaves):
        if isinstance(v, torch.Tensor) and (v.dtype != x.dtype or v.device != x.device):
            key = (id(v), x.dtype, x.device)
            if key not in cache:
                cache[key] = v.to(dtype=x.dtype, device=x.device)
            v = cache[key]
        out.append(v)
    return out
