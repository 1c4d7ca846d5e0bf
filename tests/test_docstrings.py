"""Every public callable's docstring lists its arguments, what it returns and what it
raises (Google style: ``Args:``, ``Returns:``, ``Raises:``), checked against
``inspect.signature``: a parameter added without its ``Args`` entry fails here.

Public means: each name in ``fr.__all__``; the ``__all__`` of the public submodules
(``fr.select``, ``fr.project``, ``fr.distributed``, ``fr.prune``); the four operations of
the penalty families and the value (``__call__``); the steps' ``init``, ``step`` and
``step_size``; the public methods of the public classes (``fr.Path``, ``fr.Coupling``).
A class documents its constructor's arguments (``Attributes:`` for a dataclass's fields).
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import types
from collections.abc import Callable
from typing import Any

import pytest

import funcreg as fr

_OPERATIONS = ("__call__", "grad", "add_grad", "prox", "lambda_max", "init", "step", "step_size")
#: callables that raise nothing of their own (a predicate on a path and a leaf)
_RAISE_NOTHING = {"fr.select.weights"}


def _public() -> dict[str, Callable[..., Any]]:
    found: dict[str, Callable[..., Any]] = {}
    seen: set[int] = set()

    def add(name: str, obj: Any) -> None:
        key = id(getattr(obj, "__func__", obj))
        if key not in seen:
            seen.add(key)
            found[name] = obj

    for name in fr.__all__:
        obj = getattr(fr, name)
        if isinstance(obj, types.ModuleType):
            for sub in obj.__all__:
                add(f"fr.{name}.{sub}", getattr(obj, sub))
        elif inspect.isclass(obj):
            add(f"fr.{name}", obj)
            for m, v in vars(obj).items():
                if not m.startswith("_") and inspect.isfunction(v):
                    add(f"fr.{name}.{m}", getattr(obj, m))
        elif inspect.isfunction(obj):
            add(f"fr.{name}", obj)
        else:  # an instance: a penalty family or a step
            for m in _OPERATIONS:
                if hasattr(type(obj), m) and (m != "__call__" or isinstance(obj, fr.Penalty)):
                    add(f"fr.{name}.{m}", getattr(obj, m))
    return found


PUBLIC = _public()


def _section(doc: str, *titles: str) -> list[str] | None:
    """The lines of the first section titled one of ``titles`` (``None``: no such section)."""
    lines = doc.splitlines()
    for i, line in enumerate(lines):
        if line.strip() in titles:
            depth = len(line) - len(line.lstrip())
            body = []
            for x in lines[i + 1:]:
                if x.strip() and len(x) - len(x.lstrip()) <= depth:
                    break
                body.append(x)
            return body
    return None


def _entries(body: list[str]) -> set[str]:
    """The names a section's entries document (``name:``, ``name (type):``, ``**options:``,
    and several that share a description, ``lr, eps:``)."""
    depth = min((len(x) - len(x.lstrip()) for x in body if x.strip()), default=0)
    names = set()
    for x in body:
        entry = re.match(r"^(\**\w+(?:, \**\w+)*)( \([^)]*\))?:", x[depth:]) if x.strip() else None
        if entry:
            names.update(n.lstrip("*") for n in entry.group(1).split(", "))
    return names


def _doc(obj: Any) -> str:
    doc = inspect.getdoc(obj) or ""
    if inspect.isclass(obj) and obj.__init__ is not object.__init__ and obj.__init__.__doc__:
        doc += "\n" + inspect.getdoc(obj.__init__)  # type: ignore[operator]  # checked above
    return doc


def test_the_inventory_covers_every_kind_of_public_callable() -> None:
    # a guard on the test itself: were the walk to miss a kind, the checks below would pass
    # vacuously for it
    for name in ("fr.adam.step", "fr.Penalty.prox", "fr.elastic_net.__call__", "fr.path", "fr.Path.best",
                 "fr.select.only", "fr.project.box", "fr.distributed.all_reduce", "fr.prune.shrink",
                 "fr.Coupling", "fr.fista.step", "fr.prox_adam.init", "fr.muon.step", "fr.replicate"):
        assert name in PUBLIC, name


@pytest.mark.parametrize("name", sorted(PUBLIC))
def test_every_argument_has_an_entry(name: str) -> None:
    obj = PUBLIC[name]
    doc = _doc(obj)
    params = [p for p in inspect.signature(obj).parameters if p != "self"]
    if dataclasses.is_dataclass(obj):
        body = _section(doc, "Attributes:", "Args:")
    else:
        body = _section(doc, "Args:")
    if not params:
        return
    assert body is not None, f"{name}'s docstring has no Args section (it takes {params})"
    missing = [p for p in params if p not in _entries(body)]
    assert not missing, f"{name}'s docstring lists no entry for {missing}"


@pytest.mark.parametrize("name", sorted(n for n, o in PUBLIC.items() if not inspect.isclass(o)))
def test_every_function_says_what_it_returns_and_raises(name: str) -> None:
    doc = _doc(PUBLIC[name])
    assert _section(doc, "Returns:") or _section(doc, "Yields:"), f"{name}'s docstring has no Returns section"
    if name not in _RAISE_NOTHING:
        assert _section(doc, "Raises:"), f"{name}'s docstring has no Raises section"


def test_a_missing_entry_is_caught() -> None:
    # the check can fail: a docstring without one of the signature's parameters
    def f(a: int, b: int) -> int:
        """Sum.

        Args:
            a: the first.

        Returns:
            a + b.
        """
        return a + b

    body = _section(inspect.getdoc(f) or "", "Args:")
    assert body is not None and _entries(body) == {"a"}
