"""Smoke tests: every example runs as a script (``python examples/X.py``, short settings) and
prints what its docstring promises. Each takes a few seconds, mostly torch's import;
``-m "not examples"`` leaves them out."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.examples

ROOT = Path(__file__).resolve().parents[1]
HAVE_SKLEARN = importlib.util.find_spec("sklearn") is not None


def run(*args: str) -> str:
    """Run ``python *args`` from the repository root on one thread; return its stdout."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MPLBACKEND="Agg")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, f"exit code {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def test_every_example_has_a_smoke_test() -> None:
    tested = {"quickstart.py", "lambda_sweep.py", "functional_training.py", "lasso_path.py",
              "digits_pruning.py", "torch_optim_users.py", "digits_cnn_pruning.py", "transformer_pruning.py"}
    assert {p.name for p in (ROOT / "examples").glob("*.py")} == tested


def test_quickstart() -> None:
    out = run("examples/quickstart.py")
    assert "penalized loss" in out
    gap = float(re.search(r"autograd vs add_grad: (\S+)", out).group(1))
    assert gap < 1e-5


def test_lambda_sweep() -> None:
    out = run("examples/lambda_sweep.py", "--members", "6", "--n-train", "256", "--hidden", "8",
              "--plot", "")
    assert re.search(r"^device cpu", out, re.M), out
    assert re.search(r"^grid: bracket: .* top [\d.e+-]+ pruned", out, re.M), out
    rows = re.findall(r"^ *([\d.e+-]+) +([\d.]+) +([\d.]+) +(\d+)  .*?"
                      r"(at step \d+|no) *(<- chosen)?", out, re.M)
    assert len(rows) == 6, out
    lams = [float(r[0]) for r in rows]
    assert lams == sorted(lams, reverse=True)
    assert all(r[4].startswith("at step") for r in rows), out  # every member converged
    assert "6/6 members converged" in out
    kept = [int(r[3]) for r in rows]
    assert kept[0] <= 2 and kept[-1] >= 18, out  # the grid spans the path: (nearly) none to all
    chosen = re.search(r"chosen lambda ([\d.e+-]+) .*keeps features \[([\d, ]+)\]", out)
    assert chosen, out
    marked = [r for r in rows if r[5]]
    assert len(marked) == 1 and float(marked[0][0]) == float(chosen.group(1))
    assert int(marked[0][3]) == len(chosen.group(2).split(","))  # the support it reports


def test_functional_training() -> None:
    out = run("examples/functional_training.py", "--steps", "60")
    assert re.search(r"variant\s+train\s+val\s+objective\s+exact zeros", out)
    zeros = {m.group(1): float(m.group(2)) for m in
             re.finditer(r"^\s*(subgradient|proximal)(?:\s+\S+){3}\s+([\d.]+)%", out, re.M)}
    assert set(zeros) == {"subgradient", "proximal"}, out
    assert zeros["proximal"] >= 10.0 and zeros["proximal"] > zeros["subgradient"], zeros


@pytest.mark.skipif(not HAVE_SKLEARN, reason="the digits come with scikit-learn")
def test_digits_pruning() -> None:
    out = run("examples/digits_pruning.py", "--members", "3", "--folds", "2", "--n-train", "200",
              "--hidden", "6", "--rtol", "1e-3", "--plot", "")
    assert re.search(r"^device cpu", out, re.M), out
    rows = re.findall(r"^ *([\d.e+-]+) +[\d.]+% +[\d.]+% +[\d.]+% +(\d+) +(\d+) +(\d+)  "
                      r"(at step \d+|no)(  <- chosen)?", out, re.M)
    assert len(rows) == 3, out
    assert all(r[4].startswith("at step") for r in rows) and "3/3 refit members converged" in out, out
    for _, pixels, units, params, *_ in rows:  # the pruned dense MLP: U(P + 1) + 10(U + 1)
        assert int(params) == int(units) * (int(pixels) + 1) + 10 * (int(units) + 1)
    assert int(rows[0][1]) == 0 and int(rows[-1][1]) > 0  # from all pruned to some pixels kept
    chosen = re.search(r"chosen lambda ([\d.e+-]+) .*: (\d+) pixels, (\d+) units, (\d+) of 460 "
                       r"parameters, test accuracy [\d.]+%", out)
    assert chosen, out
    marked = [r for r in rows if r[5]]
    assert len(marked) == 1 and marked[0][1:4] == chosen.groups()[1:], (marked, chosen.groups())


def _table(out: str) -> list[tuple[float, int, float]]:
    assert re.search(r"lambda\s+nonzeros\s+objective", out), out
    return [(float(a), int(b), float(c)) for a, b, c in
            re.findall(r"^\s*([\d.e+-]+)\s+(\d+)\s+([\d.]+)\s*$", out, re.M)]


def test_lasso_path() -> None:
    out = run("examples/lasso_path.py", "--iters", "2000", "--n-lambdas", "12")
    rows = _table(out)
    assert len(rows) == 12
    assert rows[0][1] == 0  # the path starts above lambda_max: all coefficients exactly 0
    assert [r[0] for r in rows] == sorted((r[0] for r in rows), reverse=True)
    assert "0/12 lambdas still moving" in out
    if HAVE_SKLEARN:
        assert "diabetes" in out
        gap = float(re.search(r"vs scikit-learn lasso_path: (\S+)", out).group(1))
        assert gap < 1e-6, out
    else:
        assert "generated sparse-regression data" in out


def test_lasso_path_without_sklearn() -> None:
    """The fallback data, with scikit-learn hidden whether or not it is installed."""
    code = ("import runpy, sys; sys.modules['sklearn'] = None; "
            "sys.argv = ['lasso_path.py', '--n-lambdas', '8']; "
            "runpy.run_path('examples/lasso_path.py', run_name='__main__')")
    out = run("-c", code)
    assert "generated sparse-regression data" in out
    assert "scikit-learn lasso_path:" not in out
    rows = _table(out)
    assert len(rows) == 8 and rows[0][1] == 0 and rows[-1][1] > 0


def test_torch_optim_users() -> None:
    out = run("examples/torch_optim_users.py", "--steps", "20")
    rows = {m.group(1).strip(): float(m.group(2)) for m in
            re.finditer(r"^(L[12]: .+?)\s{2,}.+?\s([\d.]+)%$", out, re.M)}
    assert len(rows) == 6, out
    assert rows["L1: fr.l1.prox after step"] > 0  # exact zeros in the module itself
    assert all(v == 0 for k, v in rows.items() if k != "L1: fr.l1.prox after step"), rows
    for name in ("weight_decay", "backward hook"):
        gap = float(re.search(rf"{name}\S* vs .*max \|Δw\| = (\S+)", out).group(1))
        assert gap < 1e-6, out


def _pruned(out: str, members: int) -> None:
    """What both pruning examples print: the path's table with one chosen member, shrink's
    report, and dense / masked / shrunk rows whose counts agree with the report."""
    rows = re.findall(r"^ *([\d.e+-]+) +[\d.]+% +[\d.]+% .*?(at step \d+|no)(  <- chosen)?$", out, re.M)
    assert len(rows) == members and sum(bool(r[2]) for r in rows) == 1, out
    before, after = map(int, re.search(r"^parameters: (\d+) -> (\d+)", out, re.M).groups())
    models = {m.group(1): (int(m.group(2)), float(m.group(5))) for m in re.finditer(
        r"^(dense \(smallest λ\)|chosen, masked|chosen, shrunk) +(\d+) +([\d.]+)ms +([\d.]+)ms +([\d.]+)%$", out, re.M)}
    assert len(models) == 3, out
    assert models["dense (smallest λ)"][0] == models["chosen, masked"][0] == before
    assert models["chosen, shrunk"][0] == after <= before
    assert models["chosen, shrunk"][1] == models["chosen, masked"][1]  # the same function
    gap = float(re.search(r"max \|Δ logits\| = (\S+)", out).group(1))
    assert gap < 1e-4, out


@pytest.mark.skipif(not HAVE_SKLEARN, reason="the digits come with scikit-learn")
def test_digits_cnn_pruning() -> None:
    out = run("examples/digits_cnn_pruning.py", "--members", "2", "--n-train", "150", "--max-steps", "40",
              "--reps", "3", "--grid", "0.008", "0.0002")
    assert "couplings: 0.weight, 0.bias, 1.weight, 1.bias (8 units); 3.weight, 3.bias, 4.weight, 4.bias (16 units)" in out
    _pruned(out, 2)


def test_transformer_pruning() -> None:
    out = run("examples/transformer_pruning.py", "--members", "2", "--n-train", "100", "--max-steps", "40",
              "--reps", "3", "--grid", "0.01", "0.001")
    assert "(4 groups); fc1.weight, fc1.bias (32 groups)" in out
    _pruned(out, 2)
