"""fr.path against LassoNet's path and scikit-learn's LassoCV, side by side in one run.

1. The main job's data (examples/lambda_sweep.py: 20 features, 4 informative, 1024
   training and 2000 validation points): fr.path (group lasso on the first layer's input
   columns of a 20-12-1 MLP, the grid it finds) against ``LassoNetRegressor(hidden_dims=
   (12,)).path(X, y, X_val=..., y_val=...)`` with LassoNet's defaults: wall time, and the
   best validation MSE at each support size (number of features kept).
2. Feature selection of digits pixels (1000 training, 797 validation images): fr.path
   (group lasso on the 64 input columns of a 64-16-10 MLP, cross-entropy) against
   ``LassoNetClassifier(hidden_dims=(16,)).path``: wall time, the best validation
   accuracy at each number of pixels kept.
3. scikit-learn's ``LassoCV(cv=5)`` on diabetes against fr.path with fr.l1, ``folds=5``
   and scikit-learn's loss convention 1/(2n)‖y − Xw − b‖², on the same five splits: the
   chosen α on scikit-learn's grid (``lambdas=model.alphas_``) and on fr.path's own, the
   time ratio, and how far the refit coefficients are from the exact lasso solutions
   (scikit-learn's own ``lasso_path`` at its default tolerance alongside); then the same
   path with ``compile=True`` (compiling included).
4. Warm starts: the steps fr.path's continuation saves (``warm_start=True``, blocks of 2)
   on the main job and on diabetes.

The wall times of parts 1–3 are medians over repetitions whose cases are interleaved
(``_timing.measure``: each round runs every case once, in a shuffled order), so that a
burst of load from another process slows all of them alike; the compile row and part 4
are one run each. LassoNet is an optional benchmark extra (``pip install -e ".[bench]"``);
without it its rows are skipped with a line saying so. One thread unless ``--threads``
says otherwise, fixed seeds. On a shared machine read the times as provisional.

    python benchmarks/bench_path.py [--quick] [--threads N] [--only main_job|digits|lasso_cv|warm_start]
"""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "examples"), str(ROOT / "benchmarks")]

import funcreg as fr  # noqa: E402
from _cli import parse  # noqa: E402
from _timing import Case, environment, measure  # noqa: E402
from funcreg._cv import make_folds  # noqa: E402  (the very splits fr.path uses, for LassoCV)

HAVE_LASSONET = importlib.util.find_spec("lassonet") is not None


def by_support(sizes: list[int], metric: list[float], lower_is_better: bool = True) -> dict[int, float]:
    """The best metric at each support size."""
    best: dict[int, float] = {}
    for s, m in zip(sizes, metric):
        if s not in best or (m < best[s] if lower_is_better else m > best[s]):
            best[s] = m
    return best


def table(title: str, rows: dict[str, dict[int, float]], fmt: str, keep: list[int]) -> str:
    names = list(rows)
    lines = [f"### {title}", "", "| kept | " + " | ".join(names) + " |", "|---:|" + "---:|" * len(names)]
    for s in keep:
        cells = [format(rows[n][s], fmt) if s in rows[n] else "–" for n in names]
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def timed(cases: dict[str, Any], quick: bool, reps: int, warmup: int = 0) -> tuple[dict[str, float], dict[str, Any]]:
    """Median wall seconds of each case (interleaved repetitions) and its last result."""
    last: dict[str, Any] = {}

    def keep(name: str, fn: Any) -> Any:
        def call() -> None:
            last[name] = fn()
        return call

    rows = measure([Case(name, keep(name, fn)) for name, fn in cases.items()], reps=1 if quick else reps,
                   warmup=0 if quick else warmup)
    return {r.name: r.median_ms / 1e3 for r in rows}, last


def main_job(quick: bool) -> None:
    import lambda_sweep

    args = lambda_sweep.parse(["--plot", ""] + (["--members", "8"] if quick else []))
    (x, y), (xv, yv) = lambda_sweep.make_data(torch.device("cpu"), args.n_train)
    cases: dict[str, Any] = {"fr.path": lambda: lambda_sweep.sweep(args)}
    if HAVE_LASSONET:
        from lassonet import LassoNetRegressor

        def lassonet() -> Any:
            model = LassoNetRegressor(hidden_dims=(args.hidden,), verbose=0, random_state=0, torch_seed=0)
            return model.path(x.numpy(), y.numpy(), X_val=xv.numpy(), y_val=yv.numpy())

        cases["LassoNet"] = lassonet
    seconds, out = timed(cases, quick, reps=3)
    res = out["fr.path"]
    rows = {"fr.path": by_support(res.kept.tolist(), res.val_loss.tolist())}
    print(f"## Main job: {len(res)} λ, fr.path {seconds['fr.path']:.1f} s (median, grid search included; the "
          f"last run trained {res.seconds:.1f} s); best validation MSE {float(res.val_loss.min()):.4f}")
    truth = frozenset(lambda_sweep.SUPPORT)
    exact = [k for k in range(len(res)) if frozenset(torch.nonzero(res.group_norms[k]).flatten().tolist()) == truth]
    if exact:
        print(f"fr.path: true support recovered at {len(exact)} λ, best validation MSE there "
              f"{min(float(res.val_loss[k]) for k in exact):.4f}")
    if HAVE_LASSONET:
        path = out["LassoNet"]
        sizes = [int(h.selected.sum()) for h in path]
        rows["LassoNet"] = by_support(sizes, [h.val_loss for h in path])
        exact_l = [h.val_loss for h in path if frozenset(torch.nonzero(h.selected).flatten().tolist()) == truth]
        print(f"LassoNet: {len(path)} λ in {seconds['LassoNet']:.1f} s (median); best validation MSE "
              f"{min(h.val_loss for h in path):.4f}"
              + (f"; true support at {len(exact_l)} λ, best validation MSE there {min(exact_l):.4f}"
                 if exact_l else ""))
        print(f"time fr.path / LassoNet: {seconds['fr.path'] / seconds['LassoNet']:.2f}")
    else:
        print("LassoNet is not installed (pip install -e '.[bench]'): its rows are skipped")
    print()
    print(table("Main job: best validation MSE at each number of features kept", rows, ".4f",
                sorted(set().union(*rows.values()))))
    print()


def digits(quick: bool) -> None:
    from sklearn.datasets import load_digits

    X, Y = load_digits(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(X))
    X, Y = X[order].astype(np.float32), Y[order]
    mean, std = X[:1000].mean(0), X[:1000].std(0)
    X = (X - mean) / np.where(std > 0, std, 1.0)
    x, y = torch.from_numpy(X[:1000]), torch.from_numpy(Y[:1000])
    xv, yv = torch.from_numpy(X[1000:]), torch.from_numpy(Y[1000:])
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(64, 16), nn.Tanh(), nn.Linear(16, 10))
    params = {k: v.detach() for k, v in net.named_parameters()}

    def ce(p, x, y):
        return F.cross_entropy(functional_call(net, p, (x,)), y) + 1e-3 * (p["2.weight"] ** 2).sum()

    def error(p, x, y):
        return (functional_call(net, p, (x,)).argmax(-1) != y).float().mean()

    def ours() -> Any:
        return fr.path(ce, params, fr.group_lasso, (x, y), where=fr.select.only(r"^0\.weight$"), dim=1,
                       n=8 if quick else 16, val=(xv, yv), metric=error, block=8)

    cases: dict[str, Any] = {"fr.path": ours}
    if HAVE_LASSONET:
        from lassonet import LassoNetClassifier

        def lassonet() -> Any:
            model = LassoNetClassifier(hidden_dims=(16,), verbose=0, random_state=0, torch_seed=0)
            path = model.path(X[:1000], Y[:1000], X_val=X[1000:], y_val=Y[1000:], return_state_dicts=True)
            return model, path

        cases["LassoNet"] = lassonet
    seconds, out = timed(cases, quick, reps=3)
    res = out["fr.path"]
    rows = {"fr.path": by_support(res.kept.tolist(), (1 - res.val_loss).tolist(), lower_is_better=False)}
    print(f"## Digits pixels: {len(res)} λ, fr.path {seconds['fr.path']:.1f} s (median, grid search included; the "
          f"last run trained {res.seconds:.1f} s); best validation accuracy "
          f"{1 - float(res.val_loss.min()):.4f}; kept from {int(res.kept[0])} to {int(res.kept[-1])} of 64 pixels "
          f"({int(res.dead[-1].sum())} blank in every "
          "training image: dead at every λ)")
    if HAVE_LASSONET:
        model, path = out["LassoNet"]
        accs = []
        with torch.no_grad():
            for h in path:
                model.model.load_state_dict(h.state_dict)
                accs.append(float((model.model(xv).argmax(-1) == yv).float().mean()))
        rows["LassoNet"] = by_support([int(h.selected.sum()) for h in path], accs, lower_is_better=False)
        print(f"LassoNet: {len(path)} λ in {seconds['LassoNet']:.1f} s (median); best validation accuracy "
              f"{max(accs):.4f}")
        print(f"time fr.path / LassoNet: {seconds['fr.path'] / seconds['LassoNet']:.2f}")
    else:
        print("LassoNet is not installed (pip install -e '.[bench]'): its rows are skipped")
    sizes = sorted(set().union(*rows.values()))
    shown = [s for s in sizes if s in rows["fr.path"] or s % 8 == 0 or s == max(sizes)]
    print()
    print(table("Digits: best validation accuracy at each number of pixels kept (LassoNet rows: "
                "sizes fr.path also reached, and every 8th)", rows, ".4f", shown))
    print()


def diabetes(quick: bool) -> None:
    from sklearn.datasets import load_diabetes
    from sklearn.linear_model import Lasso, LassoCV, lasso_path

    X, Y = load_diabetes(return_X_y=True)
    x, y = torch.from_numpy(X), torch.from_numpy(Y)
    folds = make_folds(len(X), 5, seed=0)
    cv = [(tr.numpy(), va.numpy()) for tr, va in zip(folds.train, folds.val)]
    sk = LassoCV(cv=cv).fit(X, Y)  # 100 alphas, eps 1e-3: its defaults
    alphas = torch.from_numpy(sk.alphas_)

    def half_mse(p, x, y):
        return 0.5 * ((x @ p["w"] + p["b"] - y) ** 2).mean()

    def mse(p, x, y):
        return ((x @ p["w"] + p["b"] - y) ** 2).mean()

    params = {"w": torch.zeros(X.shape[1], dtype=torch.float64),
              "b": torch.tensor(float(Y.mean()), dtype=torch.float64)}
    kw = dict(n=100, eps=1e-3, where=fr.select.only("^w$"), folds=5, metric=mse, grid="zero")
    variants = {
        "scikit-learn's grid, default rtol": dict(lambdas=alphas),
        "scikit-learn's grid, rtol 1e-5": dict(lambdas=alphas, rtol=1e-5),
        "fr.path's own grid, default rtol": dict(lambdas=None),
    }
    cases: dict[str, Any] = {"LassoCV": lambda: LassoCV(cv=cv).fit(X, Y)}
    for name, extra in variants.items():
        cases[name] = lambda extra=extra: fr.path(half_mse, params, fr.l1, (x, y), **dict(kw, **extra))
    seconds, out = timed(cases, quick, reps=5, warmup=1)
    # the exact solutions on the full data, and how far scikit-learn's own path is from them
    exact = np.stack([Lasso(alpha=float(a), tol=1e-12, max_iter=10**6).fit(X, Y).coef_ for a in sk.alphas_])
    _, sk_coefs, _ = lasso_path(X - X.mean(0), Y - Y.mean(), alphas=sk.alphas_)
    scale = np.abs(exact).max()
    print("## LassoCV on diabetes (5 folds, the same splits)")
    print(f"LassoCV: alpha_ = {sk.alpha_:.5g} (grid index {int(np.argmin(np.abs(sk.alphas_ - sk.alpha_)))}), "
          f"{seconds['LassoCV']:.3f} s (median); its lasso_path at its default tolerance is within "
          f"{np.abs(sk_coefs.T - exact).max():.2f} of the exact coefficients (largest |w| {scale:.0f})")
    for name in variants:
        res = out[name]
        k = res.best("min")
        lams = res.lambdas.numpy()
        sk_idx = np.searchsorted(-lams, -sk.alpha_)  # where scikit-learn's α falls on this grid
        step = abs(np.log(lams[k] / sk.alpha_)) / abs(np.log(lams[0] / lams[1]))
        print(f"fr.path, {name}: λ = {lams[k]:.5g} (index {k}; scikit-learn's α near index {sk_idx}), "
              f"{step:.2f} grid steps from scikit-learn's α; {seconds[name]:.2f} s (median), time ratio "
              f"fr.path / LassoCV {seconds[name] / seconds['LassoCV']:.1f}; "
              f"{int((res.steps > 0).sum())}/{len(res)} refit and {int((res.fold_steps > 0).sum())}/"
              f"{res.fold_steps.numel()} fold members converged, the slowest at step "
              f"{int(max(res.steps.max(), res.fold_steps.max()))}")
        if name.startswith("scikit-learn's grid"):
            print(f"  mean CV MSE along the grid, max |fr.path − LassoCV| / LassoCV: "
                  f"{np.max(np.abs(res.val_loss.numpy() - sk.mse_path_.mean(1)) / sk.mse_path_.mean(1)):.2e}; "
                  f"refit coefficients within {np.abs(res.params['w'].numpy() - exact).max():.2f} of the exact ones")
    start = time.perf_counter()
    res = fr.path(half_mse, params, fr.l1, (x, y), **dict(kw, lambdas=alphas, compile=True))
    took = time.perf_counter() - start
    print(f"fr.path, scikit-learn's grid, default rtol, compile=True (one run, compiling included): {took:.1f} s, "
          f"time ratio fr.path / LassoCV {took / seconds['LassoCV']:.0f}; chosen index {res.best('min')}")
    print()


def warm_starts(quick: bool) -> None:
    import lambda_sweep

    args = lambda_sweep.parse(["--plot", ""] + (["--members", "8"] if quick else []))
    print("## Warm starts (blocks of 2 λ, each block from the previous block's smallest-λ solution)")
    (x, y), val = lambda_sweep.make_data(torch.device("cpu"), args.n_train)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(lambda_sweep.N_FEATURES, args.hidden), nn.Tanh(), nn.Linear(args.hidden, 1))
    params = {k: v.detach() for k, v in model.named_parameters()}

    def mse(p, x, y):
        return ((functional_call(model, p, (x,)) - y) ** 2).mean()

    def smooth(p, x, y):
        return mse(p, x, y) + fr.l2(p, 0.1, where=fr.select.only(r"^2\.weight$"))

    kw = dict(where=fr.select.only(r"^0\.weight$"), dim=1, n=args.members, val=val, metric=mse, block=2)
    cold = fr.path(smooth, params, fr.group_lasso, (x, y), **kw)
    warm = fr.path(smooth, params, fr.group_lasso, (x, y), **dict(kw, lambdas=cold.lambdas), warm_start=True)
    print(f"main job: steps summed over members, cold {int(cold.steps.sum())}, warm {int(warm.steps.sum())} "
          f"({1 - int(warm.steps.sum()) / int(cold.steps.sum()):.0%} saved); time cold {cold.seconds:.1f} s, "
          f"warm {warm.seconds:.1f} s; kept cold {cold.kept.tolist()}, warm {warm.kept.tolist()}")
    from sklearn.datasets import load_diabetes

    X, Y = load_diabetes(return_X_y=True)
    x, y = torch.from_numpy(X), torch.from_numpy(Y)

    def half_mse(p, x, y):
        return 0.5 * ((x @ p["w"] + p["b"] - y) ** 2).mean()

    params = {"w": torch.zeros(10, dtype=torch.float64), "b": torch.tensor(float(Y.mean()), dtype=torch.float64)}
    kw = dict(n=30, eps=1e-3, where=fr.select.only("^w$"), grid="zero", block=2)
    c = fr.path(half_mse, params, fr.l1, (x, y), **kw)
    w = fr.path(half_mse, params, fr.l1, (x, y), warm_start=True, **kw)
    gap = float((c.params["w"] - w.params["w"]).abs().max() / c.params["w"].abs().max())
    print(f"diabetes lasso, 30 λ, default rtol: steps cold {int(c.steps.sum())}, warm {int(w.steps.sum())} "
          f"({1 - int(w.steps.sum()) / int(c.steps.sum()):.0%} saved); time cold {c.seconds:.2f} s, "
          f"warm {w.seconds:.2f} s; max |w_cold − w_warm| / max |w| {gap:.1e}")
    print()


PARTS = {"main_job": main_job, "digits": digits, "lasso_cv": diabetes, "warm_start": warm_starts}


def main(argv: list[str] | None = None) -> None:
    args = parse(argv, __doc__, only=list(PARTS))
    if not args.threads:
        torch.set_num_threads(1)
    print(f"# fr.path against LassoNet and LassoCV\n\n{environment()}; LassoNet "
          f"{'installed' if HAVE_LASSONET else 'not installed'}\n")
    start = time.perf_counter()
    for name in args.only:
        PARTS[name](args.quick)
    print(f"(the whole run: {time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
