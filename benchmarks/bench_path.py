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
   chosen α on scikit-learn's grid (``lambdas=model.alphas_``) and on fr.path's own, and
   the time ratio.
4. Warm starts: the steps fr.path's continuation saves (``warm_start=True``, blocks of 2)
   on the main job and on diabetes.

LassoNet is an optional benchmark extra (``pip install -e ".[bench]"``); without it its
rows are skipped with a line saying so. One thread unless ``--threads`` says otherwise,
fixed seeds. Times are wall times of one run each (these are whole paths, seconds long),
so read them as provisional on a shared machine.

    python benchmarks/bench_path.py [--quick] [--threads N] [--only main_job|digits|lasso_cv|warm_start]
"""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "examples"), str(ROOT / "benchmarks")]

import funcreg as fr  # noqa: E402
from _cli import parse  # noqa: E402
from _timing import environment  # noqa: E402
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


def main_job(quick: bool) -> None:
    import lambda_sweep

    args = lambda_sweep.parse(["--plot", ""] + (["--members", "8"] if quick else []))
    start = time.perf_counter()
    res = lambda_sweep.sweep(args)
    ours = time.perf_counter() - start
    (x, y), (xv, yv) = lambda_sweep.make_data(torch.device("cpu"), args.n_train)
    rows = {"fr.path": by_support(res.kept.tolist(), res.val_loss.tolist())}
    print(f"## Main job: {len(res)} λ, fr.path {ours:.1f} s (training {res.seconds:.1f} s, the grid "
          f"search the rest); best validation MSE {float(res.val_loss.min()):.4f}")
    truth = frozenset(lambda_sweep.SUPPORT)
    exact = [k for k in range(len(res)) if frozenset(torch.nonzero(res.group_norms[k]).flatten().tolist()) == truth]
    if exact:
        print(f"fr.path: true support recovered at {len(exact)} λ, best validation MSE there "
              f"{min(float(res.val_loss[k]) for k in exact):.4f}")
    if HAVE_LASSONET:
        from lassonet import LassoNetRegressor

        model = LassoNetRegressor(hidden_dims=(args.hidden,), verbose=0, random_state=0, torch_seed=0)
        start = time.perf_counter()
        path = model.path(x.numpy(), y.numpy(), X_val=xv.numpy(), y_val=yv.numpy())
        theirs = time.perf_counter() - start
        sizes = [int(h.selected.sum()) for h in path]
        rows["LassoNet"] = by_support(sizes, [h.val_loss for h in path])
        exact_l = [h.val_loss for h in path if frozenset(torch.nonzero(h.selected).flatten().tolist()) == truth]
        print(f"LassoNet: {len(path)} λ in {theirs:.1f} s; best validation MSE "
              f"{min(h.val_loss for h in path):.4f}" + (f"; true support at {len(exact_l)} λ, best "
                                                          f"validation MSE there {min(exact_l):.4f}" if exact_l else ""))
        print(f"time fr.path / LassoNet: {ours / theirs:.2f}")
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

    start = time.perf_counter()
    res = fr.path(ce, params, fr.group_lasso, (x, y), where=fr.select.only(r"^0\.weight$"), dim=1,
                  n=8 if quick else 16, val=(xv, yv), metric=error, block=8)
    ours = time.perf_counter() - start
    rows = {"fr.path": by_support(res.kept.tolist(), (1 - res.val_loss).tolist(), lower_is_better=False)}
    print(f"## Digits pixels: {len(res)} λ, fr.path {ours:.1f} s (training {res.seconds:.1f} s); best "
          f"validation accuracy {1 - float(res.val_loss.min()):.4f}; kept from {int(res.kept[0])} to "
          f"{int(res.kept[-1])} of 64 pixels")
    if HAVE_LASSONET:
        from lassonet import LassoNetClassifier

        model = LassoNetClassifier(hidden_dims=(16,), verbose=0, random_state=0, torch_seed=0)
        start = time.perf_counter()
        path = model.path(X[:1000], Y[:1000], X_val=X[1000:], y_val=Y[1000:], return_state_dicts=True)
        theirs = time.perf_counter() - start
        accs = []
        with torch.no_grad():
            for h in path:
                model.model.load_state_dict(h.state_dict)
                accs.append(float((model.model(xv).argmax(-1) == yv).float().mean()))
        rows["LassoNet"] = by_support([int(h.selected.sum()) for h in path], accs, lower_is_better=False)
        print(f"LassoNet: {len(path)} λ in {theirs:.1f} s; best validation accuracy {max(accs):.4f}")
        print(f"time fr.path / LassoNet: {ours / theirs:.2f}")
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
    from sklearn.linear_model import LassoCV

    X, Y = load_diabetes(return_X_y=True)
    x, y = torch.from_numpy(X), torch.from_numpy(Y)
    folds = make_folds(len(X), 5, seed=0)
    cv = [(tr.numpy(), va.numpy()) for tr, va in zip(folds.train, folds.val)]
    start = time.perf_counter()
    sk = LassoCV(cv=cv).fit(X, Y)  # 100 alphas, eps 1e-3: its defaults
    t_sk = time.perf_counter() - start
    alphas = torch.from_numpy(sk.alphas_)

    def half_mse(p, x, y):
        return 0.5 * ((x @ p["w"] + p["b"] - y) ** 2).mean()

    def mse(p, x, y):
        return ((x @ p["w"] + p["b"] - y) ** 2).mean()

    params = {"w": torch.zeros(X.shape[1], dtype=torch.float64), "b": torch.tensor(float(Y.mean()), dtype=torch.float64)}
    where = fr.select.only("^w$")
    print("## LassoCV on diabetes (5 folds, the same splits)")
    print(f"LassoCV: alpha_ = {sk.alpha_:.5g} (grid index {int(np.argmin(np.abs(sk.alphas_ - sk.alpha_)))}), "
          f"{t_sk:.2f} s")
    for name, grid in (("scikit-learn's grid", alphas), ("fr.path's own grid", None)):
        start = time.perf_counter()
        res = fr.path(half_mse, params, fr.l1, (x, y), lambdas=grid, n=100, eps=1e-3, where=where,
                      folds=5, metric=mse, grid="zero", rtol=1e-7)
        took = time.perf_counter() - start
        k = res.best("min")
        lams = res.lambdas.numpy()
        sk_idx = np.searchsorted(-lams, -sk.alpha_)  # where scikit-learn's α falls on this grid
        step = abs(np.log(lams[k] / sk.alpha_)) / abs(np.log(lams[0] / lams[1]))
        print(f"fr.path, {name}: λ = {lams[k]:.5g} (index {k}; scikit-learn's α near index {sk_idx}), "
              f"{step:.2f} grid steps from scikit-learn's α; {took:.2f} s, time ratio fr.path / LassoCV "
              f"{took / t_sk:.2f}; {int((res.steps > 0).sum())}/{len(res)} refit and "
              f"{int((res.fold_steps > 0).sum())}/{res.fold_steps.numel()} fold members converged")
        if grid is not None:
            ours = res.val_loss.numpy()
            theirs = sk.mse_path_.mean(1)
            print(f"  mean CV MSE along the grid, max |fr.path − LassoCV| / LassoCV: "
                  f"{np.max(np.abs(ours - theirs) / theirs):.2e}")
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
    kw = dict(n=30, eps=1e-3, where=fr.select.only("^w$"), grid="zero", block=2, rtol=1e-7)
    c = fr.path(half_mse, params, fr.l1, (x, y), **kw)
    w = fr.path(half_mse, params, fr.l1, (x, y), warm_start=True, **kw)
    gap = float((c.params["w"] - w.params["w"]).abs().max() / c.params["w"].abs().max())
    print(f"diabetes lasso, 30 λ, rtol 1e-7: steps cold {int(c.steps.sum())}, warm {int(w.steps.sum())} "
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
