"""What the probes of every library share: the verdict cell, one small problem, the
comparisons they make and how a verdict reads from them."""

from __future__ import annotations

import importlib
import os
import pkgutil
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

F64 = torch.float64
LRS = (1e-3, 1e-2, 1e-1, 1.0)  # vmap over lr
LR, WD = 0.1, 0.5  # decay on a subset: zero gradients, so an AdamW step is the decay alone
LAM = 0.3  # L2 penalty against weight decay
STEPS, ALR = 20, 0.05  # Adam parity
PROX_NAMES = re.compile(r"prox|soft_?thresh|shrink|lasso|(^|_)l1($|_)", re.I)
GROUP_NAMES = re.compile(r"prox|group_?lasso|block_?soft|group_?soft", re.I)
#: torch.compile's backend in the compile probes: feature_matrix.py sets "eager" for --quick
COMPILE_BACKEND = "inductor"


@dataclass
class Cell:
    """One cell of the table: a verdict and what the probe observed."""

    verdict: str
    note: str = ""

    def markdown(self) -> str:
        # a probe's note is raw text: "|" would split the cell, and "[0]['lr']" would read
        # as a Markdown reference link (the documentation site then looks up 'lr')
        note = self.note.replace("|", "\\|").replace("[", "\\[").replace("]", "\\]")
        note = note.replace("\n", " ")
        return f"**{self.verdict}**" + (f": {note}" if note else "")


def brief(exc: BaseException, n: int = 90) -> str:
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    msg = msg if len(msg) <= n else msg[: n - 1] + "…"
    return f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__


def raised_in(exc: BaseException) -> str:
    """The innermost frame's file, as ``package/module.py``."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is None:
        return "?"
    parts = tb.tb_frame.f_code.co_filename.replace(os.sep, "/").split("/")
    return "/".join(parts[-2:])


def sci(x: float) -> str:
    return "0" if x == 0 else f"{x:.1e}"


def _problem() -> dict[str, Any]:
    """One small problem, in numpy float64, shared by every library's probe."""
    rng = np.random.default_rng(0)
    return {
        "W": rng.standard_normal((3, 4)),  # a weight matrix
        "b": rng.standard_normal(4),  # a bias
        "gW": rng.standard_normal((3, 4)),
        "gb": rng.standard_normal(4),
        "X": rng.standard_normal((6, 3)),  # quadratic problem for the 20-step parity run
        "Y": rng.standard_normal((6, 4)),
        "c": rng.standard_normal(4),
    }


D = _problem()


def tensors(dtype: torch.dtype = F64) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    params = {"W": torch.tensor(D["W"], dtype=dtype), "b": torch.tensor(D["b"], dtype=dtype)}
    grads = {"W": torch.tensor(D["gW"], dtype=dtype), "b": torch.tensor(D["gb"], dtype=dtype)}
    return params, grads


def quad_grads(p: dict[str, Any], X: Any, Y: Any, c: Any) -> dict[str, Any]:
    """Gradient of ½‖XW − Y‖² + ½‖b − c‖²; works on torch tensors and jax arrays alike."""
    return {"W": X.T @ (X @ p["W"] - Y), "b": p["b"] - c}


def half_sq(p: dict[str, Any]) -> Any:
    return sum(0.5 * (v * v).sum() for v in p.values())


def max_diff(a: dict[str, Any], b: dict[str, Any]) -> float:
    return max(float(np.max(np.abs(np.asarray(a[k], dtype=np.float64) - np.asarray(b[k], dtype=np.float64))))
               for k in a)


def snapshot(tree: Any) -> list[tuple[torch.Tensor, torch.Tensor, int]]:
    leaves = [x for x in torch.utils._pytree.tree_leaves(tree) if isinstance(x, torch.Tensor)]
    return [(x, x.detach().clone(), x._version) for x in leaves]


def touched(snap: list[tuple[torch.Tensor, torch.Tensor, int]]) -> tuple[int, int]:
    """How many leaves changed value, and how many had their version counter bumped."""
    values = sum(not torch.equal(x.detach(), old) for x, old, _ in snap)
    versions = sum(x._version != v for x, _, v in snap)
    return values, versions


def central_diff(f: Callable[[float], float], x: float, h: float = 1e-6) -> float:
    return (f(x + h) - f(x - h)) / (2 * h)


def rel_err(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-300)


def subset_cell(new_W: Any, new_b: Any, how: str) -> Cell:
    dW = float(np.max(np.abs(np.asarray(new_W) - D["W"] * (1 - LR * WD))))
    b_same = bool(np.array_equal(np.asarray(new_b), D["b"]))
    ok = dW <= 1e-15 and b_same
    return Cell("yes" if ok else "no",
                f"{how}: W decayed (max|Δ| vs W·(1−lr·wd) {sci(dW)}), b {'untouched' if b_same else 'CHANGED'}")


def decay_cell(sgd_diff: float, adamw_diff: float, sgd_how: str, adamw_how: str) -> Cell:
    ok = sgd_diff <= 1e-15 and adamw_diff <= 1e-15
    return Cell("yes" if ok else "no",
                f"{sgd_how} = step on grad of λΣw² (max|Δ| {sci(sgd_diff)}), i.e. coupled g+wd·w; "
                f"{adamw_how} decoupled w·(1−lr·wd) (max|Δ| {sci(adamw_diff)})")


def scan(package: str, pattern: re.Pattern[str]) -> tuple[list[str], int]:
    """Public callables under ``package`` (all its importable submodules) whose name matches."""
    root = importlib.import_module(package)
    modules = [root]
    for info in pkgutil.walk_packages(getattr(root, "__path__", []), package + "."):
        if re.search(r"(^|\.)(_?tests?|.*_test)(\.|$)", info.name):
            continue
        try:
            modules.append(importlib.import_module(info.name))
        except Exception:
            continue
    found = set()
    for mod in modules:
        for name in dir(mod):
            if not name.startswith("_") and pattern.search(name) and callable(getattr(mod, name, None)):
                found.add(f"{mod.__name__}.{name}")
    return sorted(found), len(modules)


def no_prox(package: str, pattern: re.Pattern[str], extra: str = "") -> Cell:
    found, n = scan(package, pattern)
    if found:
        return Cell("probe failed", f"names to look at by hand: {', '.join(found)[:100]}")
    return Cell("no", f"no callable named /{pattern.pattern}/ in {n} modules of {package}{extra}")


def adam_reference(**kw: Any) -> dict[str, torch.Tensor]:
    p, _ = tensors()
    X, Y, c = (torch.tensor(D[k], dtype=F64) for k in ("X", "Y", "c"))
    ps = {k: torch.nn.Parameter(v.clone()) for k, v in p.items()}
    opt = torch.optim.Adam(list(ps.values()), lr=ALR, **kw)
    for _ in range(STEPS):
        g = quad_grads({k: v.detach() for k, v in ps.items()}, X, Y, c)
        for k, x in ps.items():
            x.grad = g[k]
        opt.step()
    return {k: v.detach() for k, v in ps.items()}


def parity_cell(d: float, how: str) -> Cell:
    verdict = "yes" if d <= 1e-12 else "partial" if d <= 1e-4 else "no"
    level = " (float32-level, not float64)" if verdict == "partial" else ""
    return Cell(verdict, f"{how}: max|Δ| vs torch.optim.Adam after {STEPS} float64 steps {sci(d)}{level}")


def _counter() -> Any:
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    return CompileCounterWithBackend(COMPILE_BACKEND)


def compiled_twice(make: Callable[[Any], Callable[[float], float]], fullgraph: bool) -> tuple[int, int, float]:
    """Compile, call with lr 0.1 then 0.01: (graphs on the first call, graphs compiled again for
    the second value, max|Δ| vs eager). ``make(backend)`` returns ``run(lr) -> max|Δ|``."""
    cnt = _counter()
    run = make(lambda fn: torch.compile(fn, fullgraph=fullgraph, backend=cnt))
    d = run(0.1)
    first = cnt.frame_count
    d = max(d, run(0.01))
    return first, cnt.frame_count - first, d


def compile_cell(result: tuple[int, int, float], how: str, fullgraph: bool = True) -> Cell:
    first, again, d = result
    close = d <= 1e-5  # float32 params: compiled and eager round differently
    ok = close and again == 0 and (first == 1 or not fullgraph)
    return Cell("yes" if ok else "partial" if close else "no",
                f"{how}, backend={COMPILE_BACKEND}: {first} graph(s) on the first call, {again} recompile(s) "
                f"for a new lr value; max|Δ| vs eager {sci(d)}")


def cuda_vs_cpu(step: Callable[[torch.device], dict[str, torch.Tensor]], how: str) -> Cell:
    d = max_diff({k: v.cpu() for k, v in step(torch.device("cuda")).items()}, step(torch.device("cpu")))
    return Cell("yes" if d <= 1e-12 else "no", f"{how}: float64 CUDA vs CPU max|Δ| {sci(d)}")


def no_gpu() -> Cell:
    return Cell("not measured", "no GPU here (torch.cuda.is_available() is False)")
