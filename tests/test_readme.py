"""The README's Quickstart is ``examples/quickstart.py``, line for line, and shows what the
script prints (numbers to 3 significant digits: the last digits of a float32 run may
differ across CPUs)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
EXAMPLE = (ROOT / "examples" / "quickstart.py").read_text()
NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:e[+-]?\d+)?")


def _quickstart_block(lang: str) -> str:
    section = README[README.index("## Quickstart"):README.index("\n## ", README.index("## Quickstart") + 1)]
    blocks = re.findall(rf"```{lang}\n(.*?)```", section, re.S)
    assert len(blocks) == 1, f"the Quickstart should hold one {lang} block"
    return blocks[0]


def test_the_readme_quickstart_is_the_example() -> None:
    body = EXAMPLE[EXAMPLE.index('"""', 3) + 3:].strip()  # the script without its docstring
    assert _quickstart_block("python").strip() == body


def _numbers_apart(text: str) -> tuple[str, list[float]]:
    return NUMBER.sub("#", text), [float(x) for x in NUMBER.findall(text)]


@pytest.mark.examples
def test_the_readme_shows_what_the_quickstart_prints() -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    out = subprocess.run([sys.executable, "examples/quickstart.py"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120, check=True).stdout
    shown = _quickstart_block("text")
    # the autograd-vs-closed-form gap is rounding noise: its size, not its digits, matters
    gap = re.compile(r"(autograd vs add_grad: )(\S+)")
    assert float(gap.search(out).group(2)) < 1e-6 and float(gap.search(shown).group(2)) < 1e-6
    out, shown = gap.sub(r"\1~", out), gap.sub(r"\1~", shown)
    skeleton_out, numbers_out = _numbers_apart(out.strip())
    skeleton_shown, numbers_shown = _numbers_apart(shown.strip())
    assert skeleton_shown == skeleton_out, f"the README shows another output:\n{out}"
    assert numbers_shown == pytest.approx(numbers_out, rel=1e-3, abs=1e-3), out
