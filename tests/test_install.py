"""The editable install (the README's set-up) from a clone directory named ``funcreg/``,
used by a script next to that clone: ``import funcreg`` must reach the package, not the
clone root as an empty namespace package (setuptools' default editable finder is consulted
after the path finder, which takes the clone root; pyproject.toml's ``package-dir`` makes
the install a ``.pth`` path entry instead, where the package wins)."""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys
import venv

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_a_script_next_to_a_clone_named_funcreg_imports_the_package(tmp_path: pathlib.Path) -> None:
    clone = tmp_path / "funcreg"
    clone.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE", "MANIFEST.in"):
        shutil.copy(ROOT / name, clone / name)
    shutil.copytree(ROOT / "funcreg", clone / "funcreg", ignore=shutil.ignore_patterns("__pycache__"))
    # the system's packages (torch, optree, setuptools) serve the venv: nothing is downloaded
    venv.EnvBuilder(system_site_packages=True, with_pip=False).create(tmp_path / "venv")
    python = tmp_path / "venv" / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # only the install decides
    install = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
         "--no-build-isolation", "-e", str(clone)],
        capture_output=True, text=True, timeout=300, env=env)
    if install.returncode != 0:
        pytest.skip(f"no editable install here (pip or setuptools too old?): {install.stderr[-500:]}")
    script = tmp_path / "script.py"
    script.write_text("import funcreg as fr\nprint(fr.__file__)\nprint(fr.l1)\n")
    run = subprocess.run([str(python), str(script)], cwd=tmp_path, capture_output=True, text=True,
                         timeout=300, env=env)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.splitlines()[0] == str(clone / "funcreg" / "__init__.py")
