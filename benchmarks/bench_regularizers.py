"""The newer regularizers side by side: singular value thresholding, the L1-ball projection
and the MCP prox.

Three tables of medians over interleaved repetitions (see ``_timing.py``), each with a
ratio column relative to its first row and the minor page faults per call:

1. ``fr.nuclear_norm.prox`` on 50 matrix leaves (25 of 256x256, 25 of 128x512, float32):
   the fast path (one batched SVD per shape), a per-leaf Python loop of
   ``torch.linalg.svd`` and the reconstruction, and funcreg's composable path forced.
2. ``fr.project.l1_ball`` on the 50-leaf, 2.5M-value tree of ``bench_penalties.py``,
   against a plain per-leaf sort-based loop (Duchi et al.'s algorithm as a user writes it,
   with Python control flow on the values) and the composable path forced.
3. ``fr.mcp.prox`` against ``fr.l1.prox`` on the same tree, with Python-number
   hyperparameters, a tensor λ, and tensor λ and step, plus ``torch.compile(fullgraph=True)``
   rows for both. Target: MCP within 1.5x of L1.

Every variant's result is checked against funcreg's before anything is timed.

    python benchmarks/bench_regularizers.py             # all tables (a few minutes on 2 cores)
    python benchmarks/bench_regularizers.py --quick     # a few repetitions: a smoke test
    python benchmarks/bench_regularizers.py --only mcp --no-compile

Flags as in benchmarks/README.md. ``main(argv)`` takes them as a list and returns the
tables as ``{title: markdown}``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

import funcreg as fr
from _cli import parse
from _timing import Case, Row, environment, timed_table
from _workloads import check_close, make_tree, numel
from funcreg import _dispatch

SVT_LAM, SVT_STEP = 1.0, 0.5  # threshold 0.5 against σ_max ≈ 1.6: most singular values go
L1_RADIUS = 50.0  # each weight leaf's L1 norm is about 4000, each bias's about 10 (inside)
PROX_LAM, PROX_STEP, GAMMA = 0.2, 0.1, 3.0  # threshold 0.02, γλ = 0.6: MCP's firm regime


# --------------------------------------------------------------------------- workloads
def make_matrices(seed: int = 0) -> dict[str, torch.Tensor]:
    """50 float32 matrix leaves, two shapes: 25 of (256, 256) and 25 of (128, 512)."""
    gen = torch.Generator().manual_seed(seed)
    tree: dict[str, torch.Tensor] = {}
    for i in range(25):
        tree[f"square{i}.weight"] = torch.randn(256, 256, generator=gen) * 0.05
        tree[f"wide{i}.weight"] = torch.randn(128, 512, generator=gen) * 0.05
    return tree


def _checked(cases: list[Case], want: Any, **tol: float) -> list[Case]:
    for case in cases[1:]:
        check_close(case.name, case.fn(), want, **tol)
    return cases


# ------------------------------------------------------------------------ 1. SVT
def svt_cases() -> list[Case]:
    tree = make_matrices()
    t = SVT_LAM * SVT_STEP

    def fast() -> Any:
        return fr.nuclear_norm.prox(tree, SVT_LAM, SVT_STEP)

    def loop() -> dict[str, torch.Tensor]:
        out = {}
        for k, w in tree.items():
            u, s, vh = torch.linalg.svd(w, full_matrices=False)
            out[k] = (u * (s - t).clamp_min(0)) @ vh
        return out

    def composable() -> Any:
        with _dispatch.forced("composable"):
            return fr.nuclear_norm.prox(tree, SVT_LAM, SVT_STEP)

    cases = [
        Case("`fr.nuclear_norm.prox` (fast path: one batched SVD per shape)", fast),
        Case("per-leaf loop `torch.linalg.svd` + `(u * (s - t).clamp_min(0)) @ vh`", loop),
        Case("`fr.nuclear_norm.prox`, composable path forced", composable, "one SVD per leaf"),
    ]
    # batched and single SVDs round differently: compare at float32 SVD accuracy
    return _checked(cases, fast(), rtol=1e-4, atol=2e-5)


# --------------------------------------------------------------------- 2. L1 ball
def l1_ball_loop(tree: dict[str, torch.Tensor], radius: float) -> dict[str, torch.Tensor]:
    """Duchi et al.'s projection, a leaf at a time, reading values on the host."""
    out = {}
    for k, w in tree.items():
        a = w.abs().reshape(-1)
        if a.sum().item() <= radius:
            out[k] = w
            continue
        mu = torch.sort(a, descending=True).values
        excess = mu.cumsum(0) - radius
        j = torch.arange(1, a.numel() + 1, dtype=w.dtype)
        rho = int((mu * j > excess).nonzero().max()) + 1  # the last j that passes
        theta = excess[rho - 1] / rho
        out[k] = torch.sign(w) * (w.abs() - theta).clamp_min(0)
    return out


def l1_ball_cases() -> list[Case]:
    tree = make_tree(0)

    def fast() -> Any:
        return fr.project.l1_ball(tree, L1_RADIUS)

    def composable() -> Any:
        with _dispatch.forced("composable"):
            return fr.project.l1_ball(tree, L1_RADIUS)

    cases = [
        Case("`fr.project.l1_ball` (fast path)", fast),
        Case("per-leaf sort-based loop (Duchi et al., host reads)", lambda: l1_ball_loop(tree, L1_RADIUS)),
        Case("`fr.project.l1_ball`, composable path forced", composable),
    ]
    return _checked(cases, fast())


# ------------------------------------------------------------------ 3. MCP vs L1
def mcp_cases(*, compiled: bool) -> list[Case]:
    tree = make_tree(0)
    lam_t = torch.tensor(PROX_LAM)
    step_t = torch.tensor(PROX_STEP)

    def mcp(lam: Any, step: Any) -> Callable[[], Any]:
        return lambda: fr.mcp.prox(tree, lam, step, gamma=GAMMA)

    def l1(lam: Any, step: Any) -> Callable[[], Any]:
        return lambda: fr.l1.prox(tree, lam, step)

    cases = [
        Case("`fr.l1.prox`, numbers", l1(PROX_LAM, PROX_STEP)),
        Case("`fr.mcp.prox`, numbers", mcp(PROX_LAM, PROX_STEP)),
        Case("`fr.l1.prox`, tensor λ", l1(lam_t, PROX_STEP)),
        Case("`fr.mcp.prox`, tensor λ", mcp(lam_t, PROX_STEP)),
        Case("`fr.l1.prox`, tensor λ and step", l1(lam_t, step_t)),
        Case("`fr.mcp.prox`, tensor λ and step", mcp(lam_t, step_t),
             "a tensor step: both regimes, chosen per element"),
        Case("`fr.scad.prox`, numbers", lambda: fr.scad.prox(tree, PROX_LAM, PROX_STEP),
             "reference: its closed form per regime, per leaf"),
    ]
    if compiled:
        l1_c = torch.compile(lambda p, a, s: fr.l1.prox(p, a, s), fullgraph=True)
        mcp_c = torch.compile(lambda p, a, s: fr.mcp.prox(p, a, s, gamma=GAMMA), fullgraph=True)
        cases += [
            Case("`fr.l1.prox` [torch.compile, fullgraph, tensor λ and step]", lambda: l1_c(tree, lam_t, step_t)),
            Case("`fr.mcp.prox` [torch.compile, fullgraph, tensor λ and step]", lambda: mcp_c(tree, lam_t, step_t)),
        ]
    l1_want = fr.l1.prox(tree, PROX_LAM, PROX_STEP)
    mcp_want = fr.mcp.prox(tree, PROX_LAM, PROX_STEP, gamma=GAMMA)
    scad_want = fr.scad.prox(tree, PROX_LAM, PROX_STEP)
    for case in cases[1:]:
        want = l1_want if "l1" in case.name else scad_want if "scad" in case.name else mcp_want
        check_close(case.name, case.fn(), want)
    return cases


def mcp_target(rows: list[Row]) -> str:
    by_name = {r.name: r.median_ms for r in rows}
    lines = []
    for suffix in (", numbers", ", tensor λ", ", tensor λ and step",
                   " [torch.compile, fullgraph, tensor λ and step]"):
        l1, mcp = by_name.get("`fr.l1.prox`" + suffix), by_name.get("`fr.mcp.prox`" + suffix)
        if l1 and mcp:
            ratio = mcp / l1
            lines.append(f"mcp / l1 prox{suffix}: {ratio:.2f} "
                         f"(target <= 1.5: {'met' if ratio <= 1.5 else 'MISSED'})")
    return "\n".join(lines)


# ------------------------------------------------------------------------------- driver
def main(argv: list[str] | None = None) -> dict[str, str]:
    """Run the benchmarks (``argv`` as on the command line; ``None`` reads ``sys.argv``),
    print the tables, and return them as ``{title: markdown}``."""
    args = parse(argv, __doc__, only=("svt", "l1_ball", "mcp"), compile=True, devices=("cpu",),
                 reps="repetitions of the MCP table (SVT takes a tenth, the L1 ball a third)")
    reps = args.reps or (10 if args.quick else 300)
    warmup = 2 if args.quick else 5
    matrices, tree = make_matrices(), make_tree()
    print(f"# funcreg regularizer benchmarks\n\n{environment()}\n")
    print(f"matrices: {len(matrices)} leaves (25 of 256x256, 25 of 128x512), {numel(matrices):,} float32 "
          f"values, SVT at λ·step = {SVT_LAM * SVT_STEP:g}; tree: {len(tree)} leaves, {numel(tree):,} "
          f"float32 values, L1 ball radius {L1_RADIUS:g}, prox λ={PROX_LAM:g}, step={PROX_STEP:g}, "
          f"MCP γ={GAMMA:g}; medians of interleaved repetitions after {warmup} warm-up calls\n", flush=True)
    del matrices, tree

    tables: dict[str, str] = {}

    def emit(title: str, cases: list[Case], n: int, target: Callable[[list[Row]], str] | None = None) -> None:
        tables[title] = timed_table(cases, title=f"{title} ({n} repetitions)", reps=n, warmup=warmup,
                                    target=target)

    if "svt" in args.only:
        emit("`fr.nuclear_norm.prox`, 50 matrix leaves, 3.3M float32", svt_cases(), max(3, reps // 10))
    if "l1_ball" in args.only:
        emit("`fr.project.l1_ball`, 50 leaves, 2.5M float32", l1_ball_cases(), max(3, reps // 3))
    if "mcp" in args.only:
        emit("`fr.mcp.prox` vs `fr.l1.prox`, 50 leaves, 2.5M float32",
             mcp_cases(compiled=args.compile), reps, mcp_target)
    return tables


if __name__ == "__main__":
    main()
