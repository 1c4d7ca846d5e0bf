"""Pytree plumbing: a parameter tree as an ordered list of (dotted path, leaf) pairs.

Trees go through optree in the ``"torch"`` namespace, the one torch.func registers its own
types in, with ``None`` a leaf (a ``None`` gradient means "no gradient") and dicts kept in
insertion order. A leaf's path is its keys joined with ``.``, so the keys of
``dict(model.named_parameters())`` are their own paths.

A type registered only with ``torch.utils._pytree`` (a ``tensordict.TensorDict``, say) is
mirrored by torch into the ``"torch"`` namespace without its keys, so optree alone would
name its leaves by position (``0.0`` for ``0.weight``); such nodes take their keys from
the type's ``flatten_with_keys_fn`` instead, or are refused when it has none.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import optree
import torch

# Importing torch's optree bridge registers torch's own node types in the "torch" namespace
# and switches that namespace to insertion-ordered dicts, as torch.func itself relies on.
import torch.utils._cxx_pytree
import torch.utils._pytree as torch_pytree

NAMESPACE = "torch"


@dataclass(frozen=True)
class Flat:
    """A flattened tree: its leaves in order, their dotted paths and its structure (see
    :func:`structure`)."""

    paths: tuple[str, ...]
    leaves: list[Any]
    spec: Any

    def unflatten(self, leaves: list[Any]) -> Any:
        return unflatten(self.spec, leaves)


#: the types of the values of a dict that is a flat tree (optree takes them as leaves)
_LEAF_TYPES = frozenset({torch.Tensor, torch.nn.Parameter, type(None), int, float, bool})


def structure(tree: Any) -> tuple[Any, list[Any]]:
    """``(fingerprint, leaves)`` of ``tree``: for a flat dict of tensors or numbers (the
    usual ``named_parameters()`` tree) the tuple of its keys, cheap to build and to compare
    on every call; otherwise optree's ``PyTreeSpec``."""
    if type(tree) is dict:
        leaves = list(tree.values())
        if _LEAF_TYPES.issuperset(map(type, leaves)):
            return tuple(tree), leaves
    leaves, spec = optree.tree_flatten(tree, none_is_leaf=True, namespace=NAMESPACE)
    return spec, leaves


def unflatten(spec: Any, leaves: list[Any]) -> Any:
    if isinstance(spec, tuple):
        return dict(zip(spec, leaves))
    return optree.tree_unflatten(spec, leaves)


def paths_of(tree: Any, spec: Any, what: str) -> tuple[str, ...]:
    """The dotted paths of a tree of structure ``spec``; two leaves whose paths print the
    same are an error."""
    if isinstance(spec, tuple):
        found = _with_duplicate(tuple(k if isinstance(k, str) else str(k) for k in spec))
    else:
        find = _paths.__wrapped__ if torch.compiler.is_compiling() else _paths
        found = find(spec) or _torch_keyed_paths(tree, spec, what)
    paths, duplicate = found
    if duplicate is not None:
        raise ValueError(f"{what}: two leaves share the path {duplicate!r}; rename one of them")
    return paths


@functools.lru_cache(maxsize=256)
def _paths(spec: optree.PyTreeSpec) -> tuple[tuple[str, ...], str | None] | None:
    """The dotted paths of a structure's leaves, and the first path that repeats, if any;
    ``None`` when the structure holds a node whose keys only torch's pytree knows.

    A training loop passes trees of one structure again and again: this runs once per
    structure, not once per call.
    """
    if _keyed_by_torch(spec):
        return None
    return _with_duplicate(tuple(".".join(str(k) for k in keys) for keys in spec.paths()))


def _with_duplicate(paths: tuple[str, ...]) -> tuple[tuple[str, ...], str | None]:
    """``paths`` and the first of them that repeats, if any."""
    seen: set[str] = set()
    duplicate = None
    for p in paths:
        if p in seen:
            duplicate = p
            break
        seen.add(p)
    return paths, duplicate


def _mirrored(cls: type | None) -> bool:
    """Did torch mirror ``cls`` from ``torch.utils._pytree`` into optree's "torch" namespace?

    Those are the custom nodes there that torch's own registry also lists (the builtin
    containers it lists are optree's own kinds): the mirror drops ``flatten_with_keys_fn``,
    which leaves optree only positions.
    """
    if cls is None or cls not in torch_pytree.SUPPORTED_NODES:
        return False
    entry = optree.register_pytree_node.get(cls, namespace=NAMESPACE)
    return entry is not None and entry.kind == optree.PyTreeKind.CUSTOM


def _keyed_by_torch(spec: optree.PyTreeSpec) -> bool:
    # spec.type, not spec.kind: under torch.compile the spec is Dynamo's stand-in, which
    # has no kind
    return _mirrored(spec.type) or any(_keyed_by_torch(child) for child in spec.children())


# Paths of the structures that _keyed_by_torch flags, filled from the first tree of each.
# The keys of a node are a function of its structure (its context says how to rebuild it),
# so one tree per spec suffices; the bound keeps a stream of new structures from growing it.
_TORCH_KEYED: dict[optree.PyTreeSpec, tuple[tuple[str, ...], str | None]] = {}
_TORCH_KEYED_MAX = 256


def _torch_keyed_paths(
    tree: Any, spec: optree.PyTreeSpec, what: str
) -> tuple[tuple[str, ...], str | None]:
    """What :func:`_paths` gives, for a structure it cannot name from the spec alone."""
    # no dict lookups while tracing: Dynamo would guard on the cache's contents
    compiling = torch.compiler.is_compiling()
    found = None if compiling else _TORCH_KEYED.get(spec)
    if found is None:
        keys: list[tuple[Any, ...]] = []
        _walk(tree, (), keys, what)
        found = _with_duplicate(tuple(".".join(str(k) for k in path) for path in keys))
        if not compiling:
            if len(_TORCH_KEYED) >= _TORCH_KEYED_MAX:
                _TORCH_KEYED.clear()
            _TORCH_KEYED[spec] = found
    return found


def _walk(node: Any, prefix: tuple[Any, ...], out: list[tuple[Any, ...]], what: str) -> None:
    """Append the key path of every leaf under ``node``, in optree's leaf order."""
    if optree.tree_is_leaf(node, none_is_leaf=True, namespace=NAMESPACE):
        out.append(prefix)
        return
    children, _, entries, _ = optree.tree_flatten_one_level(
        node, none_is_leaf=True, namespace=NAMESPACE
    )
    if _mirrored(type(node)):
        node_def = torch_pytree.SUPPORTED_NODES[type(node)]
        name = f"{type(node).__module__}.{type(node).__qualname__}"
        at = ".".join(str(k) for k in prefix) or "the root"
        if node_def.flatten_with_keys_fn is None:
            raise TypeError(
                f"{what}: the {name} at {at} is registered with torch.utils._pytree without "
                "flatten_with_keys_fn, so its leaves have no names, only positions; register "
                "it with flatten_with_keys_fn, or pass its leaves in a dict"
            )
        keyed, _ = node_def.flatten_with_keys_fn(node)
        if len(keyed) != len(children):
            raise TypeError(
                f"{what}: the {name} at {at} flattens to {len(children)} children but its "
                f"flatten_with_keys_fn gives {len(keyed)}"
            )
        children = [child for _, child in keyed]
        entries = tuple(_key_name(key) for key, _ in keyed)
    for key, child in zip(entries, children):
        _walk(child, prefix + (key,), out, what)


def _key_name(key: Any) -> Any:
    """The bare key in one of torch's key-path entries (``MappingKey('w')`` -> ``'w'``)."""
    if isinstance(key, torch_pytree.MappingKey):
        return key.key
    if isinstance(key, torch_pytree.SequenceKey):
        return key.idx
    if isinstance(key, torch_pytree.GetAttrKey):
        return key.name
    return key


def flatten(tree: Any, what: str = "params") -> Flat:
    """Flatten ``tree``; two leaves whose paths print the same are an error."""
    spec, leaves = structure(tree)
    return Flat(paths_of(tree, spec, what), leaves, spec)


def require_tensors(flat: Flat, what: str = "params") -> None:
    """Every leaf must be a tensor (params, state, anchors: no ``None``, no numbers)."""
    for path, leaf in zip(flat.paths, flat.leaves):
        if not isinstance(leaf, torch.Tensor):
            raise _not_a_tensor(what, path, leaf)


def leaves_like(flat: Flat, tree: Any, what: str, hint: str = "") -> list[Any]:
    """The leaves of ``tree`` in ``flat``'s order, matched by path.

    Matching by path rather than by exact container type lets a gradient dict whose keys
    were inserted in another order, or a list where params hold a tuple, line up with the
    params; a missing or an extra leaf is an error that names it, followed by ``hint``
    (what to do instead).
    """
    # The common case, the very structure of params, needs no path strings: an equal
    # structure (dict key order included) means equal paths.
    spec, leaves = structure(tree)
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
            f"{what} does not have the structure of params: " + "; ".join(parts) + hint
        )
    return [by_path[p] for p in flat.paths]


def _not_a_tensor(what: str, path: str, x: Any) -> TypeError:
    # a module given where its parameters belong is the common case: say how to get them
    module = ("; pass its parameters as a tree, {k: p.detach() for k, p in model.named_parameters()}"
              if isinstance(x, torch.nn.Module) else "")
    return TypeError(f"{what} leaf {path!r} is a {type(x).__name__}, not a tensor{module}")


def check_leaf(what: str, path: str, x: Any) -> None:
    """A leaf funcreg computes on: a dense (strided) tensor."""
    if not isinstance(x, torch.Tensor):
        raise _not_a_tensor(what, path, x)
    if x.layout != torch.strided:
        raise TypeError(f"{what} leaf {path!r} is a {x.layout} tensor; funcreg works on dense "
                        "(strided) tensors: pass .to_dense() of it")


def check_pair(op: str, what: str, path: str, leaf: torch.Tensor, other: Any) -> None:
    """``other`` (a gradient, a state or an anchor leaf) must fit param ``leaf``."""
    check_leaf(what, path, other)
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
