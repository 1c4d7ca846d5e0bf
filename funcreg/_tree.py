"""Pytree plumbing: a parameter tree as an ordered list of (dotted path, leaf) pairs.

Trees go through optree in the ``"torch"`` namespace, the one torch.func registers its own
types in, with ``None`` a leaf (a ``None`` gradient means "no gradient") and dicts kept in
insertion order. A leaf's path is its keys joined with ``.``, so the keys of
``dict(model.named_parameters())`` are their own paths.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import optree
import torch

# Importing torch's optree bridge registers torch's own node types in the "torch" namespace
# and switches that namespace to insertion-ordered dicts, as torch.func itself relies on.
import torch.utils._cxx_pytree  # noqa: F401

NAMESPACE = "torch"


@dataclass(frozen=True)
class Flat:
    """A flattened tree: its leaves in order, their dotted paths and the structure."""

    paths: tuple[str, ...]
    leaves: list[Any]
    spec: optree.PyTreeSpec

    def unflatten(self, leaves: list[Any]) -> Any:
        return optree.tree_unflatten(self.spec, leaves)


@functools.lru_cache(maxsize=256)
def _paths(spec: optree.PyTreeSpec) -> tuple[tuple[str, ...], str | None]:
    """The dotted paths of a structure's leaves, and the first path that repeats, if any.

    A training loop passes trees of one structure again and again: this runs once per
    structure, not once per call.
    """
    paths = tuple(".".join(str(k) for k in keys) for keys in spec.paths())
    seen: set[str] = set()
    duplicate = next((p for p in paths if p in seen or seen.add(p)), None)
    return paths, duplicate


def flatten(tree: Any, what: str = "params") -> Flat:
    """Flatten ``tree``; two leaves whose paths print the same are an error."""
    leaves, spec = optree.tree_flatten(tree, none_is_leaf=True, namespace=NAMESPACE)
    # Dynamo traces through a cache (and warns); a compiled graph runs none of this anyway.
    find = _paths.__wrapped__ if torch.compiler.is_compiling() else _paths
    paths, duplicate = find(spec)
    if duplicate is not None:
        raise ValueError(f"{what}: two leaves share the path {duplicate!r}; rename one of them")
    return Flat(paths, leaves, spec)


def require_tensors(flat: Flat, what: str = "params") -> None:
    """Every leaf must be a tensor (params, state, anchors: no ``None``, no numbers)."""
    for path, leaf in zip(flat.paths, flat.leaves):
        if not isinstance(leaf, torch.Tensor):
            raise TypeError(
                f"{what} leaf {path!r} is a {type(leaf).__name__}, not a tensor"
            )


def leaves_like(flat: Flat, tree: Any, what: str) -> list[Any]:
    """The leaves of ``tree`` in ``flat``'s order, matched by path.

    Matching by path rather than by exact container type lets a gradient dict whose keys
    were inserted in another order, or a list where params hold a tuple, line up with the
    params; a missing or an extra leaf is an error that names it.
    """
    # The common case, the very structure of params, needs no path strings: an equal
    # spec (dict key order included) means equal paths.
    leaves, spec = optree.tree_flatten(tree, none_is_leaf=True, namespace=NAMESPACE)
    if spec == flat.spec:
        return leaves
    other = flatten(tree, what)
    if other.paths == flat.paths:
        return other.leaves
    by_path = dict(zip(other.paths, other.leaves))
    missing = [p for p in flat.paths if p not in by_path]
    extra = [p for p in other.paths if p not in set(flat.paths)]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"it lacks params leaf {missing[0]!r}")
        if extra:
            parts.append(f"it has leaf {extra[0]!r}, which params do not")
        raise ValueError(
            f"{what} does not have the structure of params: " + "; ".join(parts)
        )
    return [by_path[p] for p in flat.paths]


def check_pair(
    path: str, leaf: torch.Tensor, other: torch.Tensor, what: str
) -> None:
    """``other`` (a gradient, a state or an anchor leaf) must fit param ``leaf``."""
    if not isinstance(other, torch.Tensor):
        raise TypeError(
            f"{what} leaf {path!r} is a {type(other).__name__}, not a tensor"
        )
    if other.shape != leaf.shape:
        raise ValueError(
            f"{what} leaf {path!r} has shape {tuple(other.shape)} but the parameter has "
            f"shape {tuple(leaf.shape)}"
        )
    if other.device != leaf.device:
        raise ValueError(
            f"{what} leaf {path!r} lives on {other.device} but the parameter lives on "
            f"{leaf.device}"
        )
    if other.dtype != leaf.dtype:
        raise ValueError(
            f"{what} leaf {path!r} has dtype {other.dtype} but the parameter has dtype "
            f"{leaf.dtype}"
        )
