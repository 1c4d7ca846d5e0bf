"""A griffe extension for the documentation site: funcreg's docstrings are written for
``help()`` and doctest, in reStructuredText habits (``:math:`` roles, ``.. math::`` and
``::`` blocks, bare ``>>>`` examples), while mkdocstrings renders Markdown. This rewrites
each docstring's text before mkdocstrings reads it, so the sources stay as they are.

Math becomes ``$...$`` / ``$$...$$`` for pymdownx.arithmatex, examples and literal blocks
become fenced code, cross-reference roles become inline code, and list items' two-space
continuation lines get the four spaces Python-Markdown needs.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:class|func|mod|meth|attr|data|obj|exc):`([^`]+)`")
_MATH_ROLE = re.compile(r":math:`([^`]+)`")
_TITLED = re.compile(r"^(.*?)\s*<([^>]+)>$")
_CODE = re.compile(r"``([^`]+)``")


def _role(match: re.Match[str]) -> str:
    """``:class:`~a.b.C``` -> `` `C` ``; ``:data:`fr.l2 <funcreg.l2>``` -> `` `fr.l2` ``."""
    target = match.group(1)
    titled = _TITLED.match(target)
    if titled:
        return f"`{titled.group(1)}`"
    if target.startswith("~"):
        return f"`{target[1:].rsplit('.', 1)[-1]}`"
    return f"`{target}`"


def _inline(line: str) -> str:
    line = _MATH_ROLE.sub(lambda m: f"${m.group(1)}$", line)
    return _ROLE.sub(_role, line)


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _block(lines: list[str], start: int, indent: int) -> tuple[list[str], int]:
    """The lines from ``start`` indented deeper than ``indent`` (blank lines inside kept),
    and the index after them."""
    end = start
    while end < len(lines) and (not lines[end].strip() or _indent(lines[end]) > indent):
        end += 1
    while end > start and not lines[end - 1].strip():
        end -= 1
    return lines[start:end], end


def _dedent(block: list[str]) -> list[str]:
    depth = min(_indent(x) for x in block if x.strip())
    return [x[depth:] for x in block]


def _fence(block: list[str], pad: str) -> list[str]:
    body = _dedent(block)
    lang = "pycon" if body[0].lstrip().startswith(">>>") else "python"
    return [f"{pad}```{lang}", *(pad + x if x else "" for x in body), f"{pad}```"]


def _math(expr: list[str], pad: str) -> list[str]:
    # ``code`` inside \text{} would show its backticks as quotes: keep the bare word
    body = [_CODE.sub(r"\1", x.strip()) for x in expr if x.strip()]
    # Sphinx sets a multi-line formula in an aligned environment; MathJax needs it spelled out
    if any("&" in x or x.endswith("\\\\") for x in body):
        body = ["\\begin{aligned}", *body, "\\end{aligned}"]
    return [f"{pad}$$", *(pad + x for x in body), f"{pad}$$"]


#: Google-style sections (``Args:`` and the like): their entries become a list under a
#: bold title, since Markdown would run the indented lines into one paragraph
_SECTIONS = ("Args:", "Arguments:", "Attributes:", "Raises:", "Returns:", "Yields:")
_ENTRY = re.compile(r"^(\**[\w.]+(?:, \**[\w.]+)*)( \([^)]*\))?:\s*(.*)$")


def _section(title: str, block: list[str], pad: str) -> list[str]:
    """``Args:`` and its indented ``name: text`` entries as a bold title and a list (each
    name as code); ``Returns:`` and ``Yields:`` hold prose, kept as a paragraph."""
    body = _dedent(block)
    out = [f"{pad}**{title}**", ""]
    if title in ("Returns:", "Yields:"):
        return out + [pad + _inline(x.strip()) for x in body if x.strip()] + [""]
    for x in body:
        entry = _ENTRY.match(x) if x and not x[0].isspace() else None
        if entry:
            name, kind, rest = entry.groups()
            out.append(f"{pad}- `{name}`{kind or ''}: {_inline(rest)}")
        elif x.strip():
            out.append(f"{pad}  {_inline(x.strip())}")
    return out + [""]


def to_markdown(text: str) -> str:
    """The Markdown for one docstring written in funcreg's reStructuredText habits."""
    lines = text.splitlines()
    out: list[str] = []
    in_item = False  # inside a "* " list item, whose continuation lines are re-indented
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        indent = _indent(line)
        if stripped.startswith(("* ", "- ")):
            in_item = indent == 0
        elif stripped and indent == 0:
            in_item = False
        pad = " " * (indent + (2 if in_item and indent else 0))
        if stripped in _SECTIONS:
            block, end = _block(lines, i + 1, indent)
            if block:
                out += _section(stripped, block, pad)
                i = end
                continue
        if stripped.startswith(".. math::"):
            first = stripped[len(".. math::"):]
            block, i = _block(lines, i + 1, indent)
            out += _math([first, *block], pad)
            continue
        if stripped.startswith(">>>"):
            end = i
            while end < len(lines) and lines[end].strip():
                end += 1
            out += _fence(lines[i:end], pad)
            i = end
            continue
        if stripped.endswith("::"):
            intro = line.rstrip()[:-2].rstrip()
            j = i + 1
            while j < len(lines) and not lines[j].strip():
                j += 1
            block, end = _block(lines, j, indent)
            if block:
                if intro.strip():
                    # "text::" reads "text:"; a lone "::" only opens the block
                    out.append(pad + _inline(intro.strip()) + ":")
                    out.append("")
                out += _fence(block, pad)
                i = end
                continue
        out.append(pad + _inline(stripped) if stripped else "")
        i += 1
    return "\n".join(out)


class RstToMarkdown(griffe.Extension):
    """Rewrite every docstring with :func:`to_markdown` as griffe creates its object."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = to_markdown(obj.docstring.value)
