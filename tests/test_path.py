"""fr.path: the grid's span on deep networks, convergence with defaults, validation and
cross-validation against hand computations, warm starts, determinism, the table and
the plot, and every bad input refused before training."""

from __future__ import annotations

import io
import re
import sys
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap

import funcreg as fr


def _lasso(n: int = 48, p: int = 6, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, p, generator=g, dtype=torch.float64)
    y = 2 * x[:, 0] - x[:, 1] + 0.5 * x[:, 2] + 0.5 * torch.randn(n, generator=g, dtype=torch.float64)

    def mse(params, x, y):
        return 0.5 * ((x @ params["w"] - y) ** 2).mean()

    return mse, {"w": torch.zeros(p, dtype=torch.float64)}, x, y


def _mlp(seed: int = 0, n: int = 160):
    """An MLP regression in which 3 of 10 inputs matter (the main job, smaller)."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(10, 6), nn.Tanh(), nn.Linear(6, 1))
    params = {k: v.detach() for k, v in model.named_parameters()}
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 10, generator=g)
    y = (torch.tanh(1.5 * x[:, 0]) + x[:, 3] - 0.5 * x[:, 7] + 0.2 * torch.randn(n, generator=g)).unsqueeze(1)

    def mse(p, x, y):
        return ((functional_call(model, p, (x,)) - y) ** 2).mean()

    def smooth(p, x, y):  # a price on the output layer, so the first cannot just shrink
        return mse(p, x, y) + 0.05 * (p["2.weight"] ** 2).sum()

    return smooth, mse, params, x, y


FIRST = fr.select.only(r"^0\.weight$")


@pytest.fixture(autouse=True)
def _one_thread():
    """Small models on one thread: a second one only adds contention on a shared machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_grid_spans_the_path_of_an_mlp_and_members_converge_with_defaults() -> None:
    smooth, mse, params, x, y = _mlp()
    res = fr.path(smooth, params, fr.group_lasso, (x, y), where=FIRST, dim=1, n=5, metric=mse,
                  val=(x[:40], y[:40]))
    assert res.groups == 10
    assert int(res.kept[0]) <= 1, res  # the largest λ prunes at least 90 % of the inputs
    assert int(res.kept[-1]) >= 9, res  # the smallest at most 10 %
    assert bool((res.steps > 0).all()), res  # every member converged with the defaults
    assert res.grid.method == "bracket" and "bracket" in str(res)
    lams = res.lambdas
    assert bool((lams[1:] < lams[:-1]).all())


def test_blank_inputs_are_dead_groups_counted_apart_from_what_lambda_pruned() -> None:
    smooth, mse, params, x, y = _mlp()
    x = x.clone()
    x[:, [2, 5]] = 0  # two inputs blank in every sample: their weights get no gradient
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the grid's ends must meet their targets, dead groups apart
        res = fr.path(smooth, params, fr.group_lasso, (x, y), where=FIRST, dim=1, n=3, metric=mse)
    assert res.dead[:, [2, 5]].all(), res  # held at zero at every λ
    assert not res.dead[-1, [0, 1, 3, 4, 6, 7, 8, 9]].any(), res
    assert int(res.kept[-1]) == 8, res  # at the bottom λ pruned nothing else
    assert int(res.kept[0]) == 0, res
    assert " dead " in str(res).splitlines()[2] and "a blank input" in str(res)


def test_grid_spans_the_path_of_a_digits_cnn() -> None:
    sklearn = pytest.importorskip("sklearn.datasets")
    X, Y = sklearn.load_digits(return_X_y=True)
    x = torch.tensor(X[:120], dtype=torch.float32).reshape(-1, 1, 8, 8) / 16
    y = torch.tensor(Y[:120])
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Conv2d(3, 4, 3, padding=1),
                          nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, 10))
    params = {k: v.detach() for k, v in model.named_parameters()}

    def ce(p, x, y):
        return F.cross_entropy(functional_call(model, p, (x,)), y)

    filters = fr.select.only(r"^[02]\.weight$")
    # the grid is what is tested here (convergence is the MLP's test): a short training
    res = fr.path(ce, params, fr.group_lasso, (x, y), where=filters, dim=0, n=2, rtol=1e-3, max_steps=300)
    assert res.groups == 7  # whole conv filters of both layers
    assert int(res.kept[0]) == 0, res  # ≥ 90 % of 7 filters: all of them
    # ≤ 10 %: none pruned by λ (a filter whose ReLU is off on every image is dead, not pruned)
    assert int(res.kept[-1]) + int(res.dead[-1].sum()) == 7, res


def test_val_loss_is_the_metric_recomputed_on_val() -> None:
    mse, params, x, y = _lasso()
    xv, yv = x[:12] + 0.1, y[:12]

    def mae(p, x, y):
        return (x @ p["w"] - y).abs().mean()

    res = fr.path(mse, params, fr.l1, (x, y), n=4, grid="zero", val=(xv, yv), metric=mae)
    for k in range(4):
        assert float(res.val_loss[k]) == pytest.approx(float(mae(res.member(k), xv, yv)), rel=1e-12)
        assert float(res.train_loss[k]) == pytest.approx(float(mae(res.member(k), x, y)), rel=1e-12)
    assert res.val_se is None
    assert res.best("min") == int(torch.argmin(res.val_loss))
    with pytest.raises(ValueError, match="needs the standard error over folds"):
        res.best("1se")


def test_folds_refit_and_the_1se_rule_by_hand() -> None:
    mse, params, x, y = _lasso(n=50)
    res = fr.path(mse, params, fr.l1, (x, y), n=6, grid="zero", folds=5, block=3)
    alone = fr.path(mse, params, fr.l1, (x, y), lambdas=res.lambdas, block=3)
    for k in params:  # the refit members are the path on all of the data, bit for bit
        assert torch.equal(res.params[k], alone.params[k])
    assert torch.equal(res.steps, alone.steps)
    # each fold member is the path trained on that fold's training part
    split = torch.randperm(50, generator=torch.Generator().manual_seed(0))
    held = list(torch.tensor_split(split, 5))
    train2 = torch.cat([v for j, v in enumerate(held) if j != 2])
    fold2 = fr.path(mse, params, fr.l1, (x[train2], y[train2]), lambdas=res.lambdas, block=3)
    torch.testing.assert_close(res.fold_loss[2], vmap(mse, in_dims=(0, None, None))(
        fold2.params, x[held[2]], y[held[2]]), rtol=1e-9, atol=1e-12)
    # the rules, by hand, from the per-fold losses
    per_fold = res.fold_loss
    mean = per_fold.mean(0)
    se = per_fold.std(0) / 5 ** 0.5
    torch.testing.assert_close(res.val_loss, mean)
    torch.testing.assert_close(res.val_se, se)
    best = min(range(6), key=lambda k: (float(mean[k]), k))
    one_se = min(k for k in range(6) if float(mean[k]) <= float(mean[best] + se[best]))
    assert res.best("min") == best and res.best("1se") == one_se
    assert res.best("1se") <= res.best("min")
    assert re.search(r"<- (min, )?1se", str(res))


def test_warm_starts_reach_the_same_solutions_in_fewer_steps() -> None:
    mse, params, x, y = _lasso(n=60, p=10, seed=2)
    cold = fr.path(mse, params, fr.l1, (x, y), n=8, grid="zero", eps=1e-3, block=2, rtol=1e-8)
    warm = fr.path(mse, params, fr.l1, (x, y), n=8, grid="zero", eps=1e-3, block=2, rtol=1e-8,
                   warm_start=True)
    torch.testing.assert_close(warm.params["w"], cold.params["w"], atol=1e-6, rtol=0)
    assert bool((warm.steps > 0).all())
    assert int(warm.steps[2:].sum()) < int(cold.steps[2:].sum())  # blocks after the first
    # with folds, each fold's members continue from that fold's own solutions
    cold = fr.path(mse, params, fr.l1, (x, y), lambdas=cold.lambdas[::2], block=2, rtol=1e-8, folds=3)
    warm = fr.path(mse, params, fr.l1, (x, y), lambdas=cold.lambdas, block=2, rtol=1e-8, folds=3,
                   warm_start=True)
    torch.testing.assert_close(warm.fold_loss, cold.fold_loss, rtol=1e-6, atol=0)
    assert int(warm.fold_steps[:, 2:].sum()) < int(cold.fold_steps[:, 2:].sum())


def test_default_tolerance_reaches_the_lasso_solution_on_a_badly_scaled_design() -> None:
    """Diabetes: features of norm 1 next to an unpenalized intercept near 152, a design
    on which one step for all leaves needed thousands of steps and its relative-step
    test stopped hundreds of units from the solution (about 250 on coefficients of
    about 700). Cold and warm starts at the default tolerance, against scikit-learn."""
    pytest.importorskip("sklearn")
    from sklearn.datasets import load_diabetes
    from sklearn.linear_model import Lasso

    X, Y = load_diabetes(return_X_y=True)
    x, y = torch.from_numpy(X), torch.from_numpy(Y)

    def half_mse(p, x, y):
        return 0.5 * ((x @ p["w"] + p["b"] - y) ** 2).mean()

    params = {"w": torch.zeros(10, dtype=torch.float64), "b": torch.tensor(float(Y.mean()), dtype=torch.float64)}
    lams = torch.tensor([0.1, 0.01, 0.003, 0.001], dtype=torch.float64)
    want = torch.stack([torch.from_numpy(Lasso(alpha=float(a), tol=1e-12, max_iter=10**6).fit(X, Y).coef_)
                        for a in lams])
    scale = float(want.abs().max())  # about 700
    # scikit-learn's own default (tol 1e-4 on the duality gap) is within 0.5 % of scale here
    for warm in (False, True):
        for rtol, within in ((None, 2e-2), (1e-5, 2e-3)):
            options = {} if rtol is None else {"rtol": rtol}
            res = fr.path(half_mse, params, fr.l1, (x, y), lambdas=lams, where=fr.select.only("^w$"),
                          warm_start=warm, block=1 if warm else None, **options)
            assert bool((res.steps > 0).all()) and int(res.steps.max()) < 300, res
            torch.testing.assert_close(res.params["w"], want, atol=within * scale, rtol=0)


def test_minibatch_prox_adam_reaches_the_full_batch_solution() -> None:
    mse, params, x, y = _lasso(n=64, p=6, seed=3)
    full = fr.path(mse, params, fr.l1, (x, y), lambdas=[0.2, 0.05], rtol=1e-8)
    mini = fr.path(mse, params, fr.l1, (x, y), lambdas=[0.2, 0.05], batch_size=16, lr=0.05,
                   rtol=1e-3, max_steps=300)
    assert mini.solver == "prox_adam" and bool((mini.steps > 0).all()), mini
    torch.testing.assert_close(mini.params["w"], full.params["w"], atol=5e-3, rtol=0)
    assert int(mini.steps.max()) % 4 == 0  # minibatch steps, whole epochs of 4 batches
    found = fr.path(mse, params, fr.l1, (x, y), n=3, batch_size=16, lr=0.05)  # bracketed by minibatches
    assert found.kept.tolist()[0] == 0 and found.kept.tolist()[-1] == 6, found
    assert torch.equal(mini.kept, full.kept)


def test_the_same_call_gives_the_same_table_and_bits() -> None:
    smooth, mse, params, x, y = _mlp(seed=1, n=64)
    lams = torch.tensor([0.05, 0.01, 0.002])
    one = fr.path(smooth, params, fr.group_lasso, (x, y), lambdas=lams, where=FIRST, dim=1,
                  folds=3, metric=mse, max_steps=150)
    two = fr.path(smooth, params, fr.group_lasso, (x, y), lambdas=lams, where=FIRST, dim=1,
                  folds=3, metric=mse, max_steps=150)
    assert str(one) == str(two)
    for k in params:
        assert torch.equal(one.params[k], two.params[k])
    assert "device cpu" in str(one)


def test_progress_is_quiet_off_a_terminal_and_shown_when_asked(monkeypatch) -> None:
    mse, params, x, y = _lasso()
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    fr.path(mse, params, fr.l1, (x, y), lambdas=[0.1])
    assert err.getvalue() == ""  # StringIO is not a tty
    fr.path(mse, params, fr.l1, (x, y), lambdas=[0.1], progress=True)
    assert "members still moving" in err.getvalue()


def test_plot_writes_a_png(tmp_path) -> None:
    pytest.importorskip("matplotlib")
    mse, params, x, y = _lasso()
    res = fr.path(mse, params, fr.l1, (x, y), n=3, grid="zero", folds=3)
    out = tmp_path / "path.png"
    res.plot(str(out))
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_without_matplotlib_says_how_to_get_it(monkeypatch, tmp_path) -> None:
    mse, params, x, y = _lasso()
    res = fr.path(mse, params, fr.l1, (x, y), lambdas=[0.1])
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match="pip install matplotlib"):
        res.plot(str(tmp_path / "x.png"))


def _no_training(monkeypatch) -> None:
    """Fail the test if any training starts: every bad input must be refused before."""
    module = sys.modules["funcreg.path"]  # the attribute funcreg.path is the function

    def refuse(*args, **kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr(module, "train", refuse)
    monkeypatch.setattr(module._grid, "build", refuse)


def test_bad_inputs_are_refused_before_training(monkeypatch) -> None:
    mse, params, x, y = _lasso()
    _no_training(monkeypatch)
    with pytest.raises(ValueError, match="0-d floating tensor, got a tensor of shape"):
        fr.path(lambda p, x, y: (x @ p["w"] - y) ** 2, params, fr.l1, (x, y))
    with pytest.raises(ValueError, match=r"different batch sizes \[48, 47\]"):
        fr.path(mse, params, fr.l1, (x, y[:-1]))
    with pytest.raises(ValueError, match="strictly descending"):
        fr.path(mse, params, fr.l1, (x, y), lambdas=[0.1, 0.2])
    with pytest.raises(ValueError, match="positive and finite"):
        fr.path(mse, params, fr.l1, (x, y), lambdas=[0.1, 0.0])
    with pytest.raises(ValueError, match="1-d"):
        fr.path(mse, params, fr.l1, (x, y), lambdas=[[0.1]])
    with pytest.raises(ValueError, match="folds=49 is larger than the data: 48 samples"):
        fr.path(mse, params, fr.l1, (x, y), folds=49)
    with pytest.raises(ValueError, match="folds must be at least 2"):
        fr.path(mse, params, fr.l1, (x, y), folds=1)

    def bad_metric(p, x, y):
        return (x @ p["w"][:3] - y).abs().mean()  # a shape error on any batch

    with pytest.raises(ValueError, match="metric failed on val: RuntimeError"):
        fr.path(mse, params, fr.l1, (x, y), val=(x[:5], y[:5]), metric=bad_metric)
    with pytest.raises(ValueError, match="metric failed on fold 0"):
        fr.path(mse, params, fr.l1, (x, y), folds=3, metric=lambda p, x, y: p["missing"].sum())
    with pytest.raises(ValueError, match="0-d tensor, got a tensor of shape"):
        fr.path(mse, params, fr.l1, (x, y), val=(x, y), metric=lambda p, x, y: x @ p["w"])
    with pytest.raises(ValueError, match="val= or folds=, not both"):
        fr.path(mse, params, fr.l1, (x, y), val=(x, y), folds=3)
    with pytest.raises(ValueError, match=r"val's tensors have different batch sizes"):
        fr.path(mse, params, fr.l1, (x, y), val=(x, y[:3]))
    with pytest.raises(TypeError, match="unexpected option 'dimm'"):
        fr.path(mse, params, fr.group_lasso, (x, y), dimm=1)
    with pytest.raises(TypeError, match="penalty family"):
        fr.path(mse, params, "l1", (x, y))
    with pytest.raises(TypeError, match="dict of tensors"):
        fr.path(mse, [params["w"]], fr.l1, (x, y))
    with pytest.raises(ValueError, match="solver='prox_adam' needs batch_size"):
        fr.path(mse, params, fr.l1, (x, y), solver="prox_adam")
    with pytest.raises(ValueError, match="selects no leaf"):
        fr.path(mse, params, fr.l1, (x, y), where=fr.select.only("nope"))


def test_groups_of_couplings_are_fr_couplings_norms() -> None:
    """What fr.path counts and plots for groups=[couplings] (when a family takes them)."""
    from funcreg._path_groups import Grouping

    torch.manual_seed(0)
    p = {"fc.weight": torch.randn(6, 3), "fc.bias": torch.randn(6), "c.weight": torch.randn(4, 12)}
    couplings = [fr.Coupling({"fc.weight": 0, "fc.bias": 0}), fr.Coupling({"c.weight": 1}, groups=4)]
    grouping = Grouping(fr.group_lasso, {"groups": couplings}, p, None)
    members = {k: torch.stack([v, 2 * v]) for k, v in p.items()}
    want = torch.cat([c.norms(p).double() for c in couplings])
    torch.testing.assert_close(grouping.norms(members), torch.stack([want, 2 * want]))
    assert len(grouping.labels) == 10 and grouping.unit == "units"


@pytest.mark.parametrize("family,kw", [(fr.l1, {}), (fr.group_lasso, {}), (fr.group_lasso, {"dim": None})])
def test_a_scalar_leaf_is_one_group(family: fr.penalties.Penalty, kw: dict) -> None:
    """A 0-d leaf (a scalar bias) is one group of one weight, as the families read it; the
    path's group norms once failed on it (IndexError, or a modulo by zero for dim=0)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 5, generator=g)
    y = x[:, 0] - 2 * x[:, 1] + 1.5 + 0.1 * torch.randn(64, generator=g)

    def mse(p, x, y):
        return 0.5 * ((x @ p["w"] + p["b"] - y) ** 2).mean()

    res = fr.path(mse, {"w": torch.zeros(5), "b": torch.zeros(())}, family, (x, y), n=3, grid="zero", **kw)
    torch.testing.assert_close(res.group_norms[:, -1], res.params["b"].abs().double())
    assert res.group_norms.shape[1] == (2 if kw else 6)
    assert int(res.kept[0]) == 0 and float(res.params["b"][-1]) != 0.0
