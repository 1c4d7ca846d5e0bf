"""Parameter selection: which leaves of a params tree an operation touches (``where=``).

A ``where`` is one of

* ``None``: every floating-point leaf;
* a callable ``(path: str, leaf: Tensor) -> bool``, such as the selectors below;
* a pytree of Python bools with the structure of params.

The selectors here only ever pick floating-point leaves, and combine with ``&``, ``|``
and ``~``::

    >>> import torch, funcreg as fr
    >>> params = {"fc.weight": torch.ones(3, 2), "fc.bias": torch.ones(3)}
    >>> print(fr.select.describe(params, fr.select.weights))
    path       shape   dtype          selected
    fc.weight  (3, 2)  torch.float32  yes
    fc.bias    (3,)    torch.float32  no
    1 of 2 leaves selected (6 of 9 elements)
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import torch

from funcreg._selection import Where, selection
from funcreg._tree import flatten, require_tensors

__all__ = ["Selector", "weights", "only", "exclude", "describe"]


class Selector:
    """A named predicate ``(path, leaf) -> bool`` over floating-point leaves; ``&``, ``|``
    and ``~`` combine selectors.

    Args:
        predicate: ``(path, leaf) -> bool``, asked only about floating-point leaves (an
            integer or bool leaf is never selected).
        name: what ``repr`` shows, in a table or an error message.
    """

    #: for funcreg's own selectors, which read only a leaf's path and metadata, a value that
    #: identifies the predicate: the engine then caches its answer with the plan. ``None``
    #: for a predicate of the user's, which is called on every call.
    _key: Any = None

    def __init__(self, predicate: Callable[[str, torch.Tensor], bool], name: str):
        self._predicate = predicate
        self._name = name

    def __call__(self, path: str, leaf: torch.Tensor) -> bool:
        return leaf.is_floating_point() and bool(self._predicate(path, leaf))

    def __and__(self, other: Selector) -> Selector:
        return _keyed(Selector(lambda p, x: self(p, x) and other(p, x), f"({self} & {other})"),
                      "and", self, other)

    def __or__(self, other: Selector) -> Selector:
        return _keyed(Selector(lambda p, x: self(p, x) or other(p, x), f"({self} | {other})"),
                      "or", self, other)

    def __invert__(self) -> Selector:
        return _keyed(Selector(lambda p, x: not self(p, x), f"~{self}"), "not", self)

    def __repr__(self) -> str:
        return self._name


def _keyed(selector: Selector, op: str, *parts: Any) -> Selector:
    """``selector`` with a cache key, when every part of it has one."""
    keys = [p._key if isinstance(p, Selector) else p for p in parts]
    if all(k is not None for k in keys):
        selector._key = (op, *keys)
    return selector


weights = _keyed(Selector(lambda path, leaf: leaf.ndim >= 2, "fr.select.weights"), "weights")
weights.__doc__ = """Leaves with ``ndim >= 2``: weight matrices and filters, not biases or norms.

Args:
    path: the leaf's dotted path (not read).
    leaf: the tensor.

Returns:
    Whether the leaf is a floating-point tensor with ``ndim >= 2``.
"""


def _compile(patterns: tuple[str, ...]) -> list[re.Pattern[str]]:
    if not patterns:
        raise ValueError("give at least one regular expression")
    for p in patterns:
        if not isinstance(p, str):
            several = ("; pass several patterns as separate arguments, fr.select.only(*patterns)"
                       if isinstance(p, (list, tuple)) else "")
            raise TypeError(f"a selector pattern must be a str, not {type(p).__name__}{several}")
    return [re.compile(p) for p in patterns]


def only(*patterns: str) -> Selector:
    """Leaves whose dotted path matches (``re.search``) any of ``patterns``.

    Args:
        *patterns: regular expressions, e.g. ``only("fc", r"\\.weight$")``.

    Returns:
        A :class:`Selector`, to pass as ``where=``.

    Raises:
        ValueError: no pattern given.
        TypeError: a pattern that is not a str (a list of paths is several arguments:
            ``only(*paths)``).
    """
    regexes = _compile(patterns)
    return _keyed(Selector(
        lambda path, leaf: any(r.search(path) for r in regexes),
        f"fr.select.only{patterns!r}",
    ), "only", patterns)


def exclude(*patterns: str) -> Selector:
    """Leaves whose dotted path matches none of ``patterns``, e.g. ``exclude("bias", "norm")``.

    Args:
        *patterns: regular expressions.

    Returns:
        A :class:`Selector`, to pass as ``where=``.

    Raises:
        ValueError: no pattern given.
        TypeError: a pattern that is not a str.
    """
    regexes = _compile(patterns)
    return _keyed(Selector(
        lambda path, leaf: not any(r.search(path) for r in regexes),
        f"fr.select.exclude{patterns!r}",
    ), "exclude", patterns)


def describe(params: Any, where: Where = None) -> str:
    """A table of every leaf of ``params``: path, shape, dtype, and whether ``where`` picks it.

    Unlike the operations, describing a ``where`` that selects nothing is not an error: the
    table is how you find out why.

    Args:
        params: the parameter tree.
        where: anything the operations take as ``where=``.

    Returns:
        The table, a str (``print`` it).

    Raises:
        TypeError: a leaf that is not a tensor; a ``where`` funcreg cannot read.
        ValueError: a ``where`` tree that does not match params.
    """
    flat = flatten(params)
    require_tensors(flat)
    mask = selection(flat, where, allow_empty=True)
    rows = [("path", "shape", "dtype", "selected")]
    for path, leaf, chosen in zip(flat.paths, flat.leaves, mask):
        rows.append((path, str(tuple(leaf.shape)), str(leaf.dtype), "yes" if chosen else "no"))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r[:3], widths)) + "  " + r[3] for r in rows]
    n_sel = sum(mask)
    el_sel = sum(x.numel() for x, m in zip(flat.leaves, mask) if m)
    el_all = sum(x.numel() for x in flat.leaves)
    lines.append(
        f"{n_sel} of {len(mask)} leaves selected ({el_sel} of {el_all} elements)"
    )
    return "\n".join(lines)
