"""The documentation site's docstring rewriting (docs/_ext/rst_markdown.py): every public
docstring comes out as Markdown with no reStructuredText left in it.

mkdocs --strict does not catch these: a leftover ``:math:`` role or a bare ``>>>`` line
(a Markdown block quote) is valid Markdown that simply reads wrong. Needs the ``docs``
extra (griffe); .ci/run runs it after installing that extra.
"""

from __future__ import annotations

import importlib.util
import inspect
import pathlib
import re
from typing import Any

import pytest

import funcreg as fr

pytest.importorskip("griffe", reason="the docs extra is not installed")

_PATH = pathlib.Path(__file__).parent.parent / "docs" / "_ext" / "rst_markdown.py"
_spec = importlib.util.spec_from_file_location("rst_markdown", _PATH)
assert _spec is not None and _spec.loader is not None
rst_markdown = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(rst_markdown)
to_markdown = rst_markdown.to_markdown


def _public_docstrings() -> dict[str, str]:
    """Every docstring the API reference shows: each name in ``fr.__all__`` (the class of
    an instance such as ``fr.l1``), the members of ``fr.select``, and their public methods,
    inherited ones included."""
    found: dict[str, Any] = {}
    for name in fr.__all__:
        obj = getattr(fr, name)
        subs = [getattr(obj, n) for n in obj.__all__] if inspect.ismodule(obj) else []
        for o in (obj, *subs):
            if inspect.ismodule(o):
                found[o.__name__] = o.__doc__
                continue
            if not (inspect.isclass(o) or inspect.isroutine(o)):
                o = type(o)  # fr.l1, fr.sgd, fr.select.weights are instances
            found[f"{o.__module__}.{o.__qualname__}"] = o.__doc__
            for cls in o.__mro__[:-1] if inspect.isclass(o) else ():
                for attr, member in vars(cls).items():
                    if inspect.isroutine(member) and (attr == "__call__" or not attr.startswith("_")):
                        found[f"{cls.__module__}.{cls.__qualname__}.{attr}"] = member.__doc__
    return {k: v for k, v in found.items() if v}


DOCSTRINGS = _public_docstrings()


@pytest.mark.parametrize("name", sorted(DOCSTRINGS))
def test_no_restructuredtext_is_left(name: str) -> None:
    md = to_markdown(inspect.cleandoc(DOCSTRINGS[name]))
    fence = None
    for line in md.splitlines():
        stripped = line.strip()
        if stripped.startswith("```"):
            fence = None if fence else stripped[3:]
            continue
        if fence:
            continue
        assert not re.search(r":[a-z]+:`", line), f"a role is left: {line!r}"
        assert not stripped.startswith((">>>", "...", ".. ")), f"outside a fence: {line!r}"
        assert not stripped.endswith("::"), f"a literal-block marker is left: {line!r}"
    assert fence is None, "a fence is not closed"


def test_examples_and_literal_blocks_become_fences() -> None:
    text = "Run it::\n\n    x = 1\n\nThen:\n\n>>> 1 + 1\n2\n\nDone."
    assert to_markdown(text).splitlines() == [
        "Run it:", "", "```python", "x = 1", "```", "", "Then:", "",
        "```pycon", ">>> 1 + 1", "2", "```", "", "Done.",
    ]


def test_math_roles_directives_and_cross_references() -> None:
    text = (
        "Value :math:`\\lambda |w|`, see :data:`fr.l2 <funcreg.l2>` and :class:`~a.b.C`.\n\n"
        ".. math::\n    a &= b \\\\\n    c &= d\n\n.. math:: e = f"
    )
    assert to_markdown(text).splitlines() == [
        "Value $\\lambda |w|$, see `fr.l2` and `C`.", "",
        "$$", "\\begin{aligned}", "a &= b \\\\", "c &= d", "\\end{aligned}", "$$", "",
        "$$", "e = f", "$$",
    ]


def test_list_item_continuations_get_four_spaces() -> None:
    text = "* first line\n  continued\n\n  .. math:: x\n\n  after\n\nNot in the list."
    assert to_markdown(text).splitlines() == [
        "* first line", "    continued", "", "    $$", "    x", "    $$", "", "    after", "",
        "Not in the list.",
    ]
