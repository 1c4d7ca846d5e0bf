"""fr.fista and fr.prox_adam: against a hand-written FISTA iteration, against the
problem's own solution, and under vmap against a loop."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, vmap

import funcreg as fr


def _lasso_data(n: int = 40, p: int = 6, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, p, generator=g, dtype=torch.float64)
    y = x[:, 0] * 2 - x[:, 2] + 0.3 * torch.randn(n, generator=g, dtype=torch.float64)
    return x, y


def _mse(p, x, y):
    return 0.5 * ((x @ p["w"] - y) ** 2).mean()


def _hand_fista(f, grad, start, penalized, lam, steps, lr=1.0, grow=1.25):
    """FISTA with one backtracking trial per step and one step per leaf, written out in
    Python floats (the iteration fr.fista documents) for leaves given as lists: ``f`` and
    ``grad`` take and give dicts of lists; the leaves in ``penalized`` carry λ‖·‖₁."""
    eps = 2.220446049250313e-16

    def dot(a, b):
        return sum(x * y for x, y in zip(a, b))

    def soft(v, t):
        return [math.copysign(max(abs(a) - t, 0.0), a) for a in v]

    w = {k: list(v) for k, v in start.items()}
    z, z_prev = dict(w), dict(w)
    g_prev = {k: [0.0] * len(v) for k, v in w.items()}
    t = 1.0
    eta = {k: lr for k in w}
    curv = {k: 0.0 for k in w}
    history = []
    for _ in range(steps):
        fz, g = f(z), grad(z)
        for k in w:  # each leaf's curvature along the last move of z, above rounding
            s = [a - b for a, b in zip(z[k], z_prev[k])]
            r = [a - b for a, b in zip(g[k], g_prev[k])]
            sr, ss = dot(s, r), dot(s, s)
            if ss > 0 and sr > 1024 * eps * math.sqrt(ss) * (math.sqrt(dot(g[k], g[k])) + math.sqrt(dot(g_prev[k], g_prev[k]))):
                curv[k] = sr / ss
            if curv[k] > 0:
                eta[k] = min(eta[k], 0.9 / curv[k])
        u = {}
        for k in w:
            v = [a - eta[k] * b for a, b in zip(z[k], g[k])]
            u[k] = soft(v, eta[k] * lam) if k in penalized else v
        fu = f(u)
        d = {k: [a - b for a, b in zip(u[k], z[k])] for k in w}
        quad = sum(dot(d[k], d[k]) / (2 * eta[k]) for k in w)
        excess = fu - fz - sum(dot(g[k], d[k]) for k in w)
        slack = 8 * eps * abs(fz)
        accept = excess <= quad + slack
        factor = grow if accept else 0.5
        if quad > 0 and excess > slack:
            factor = min(factor, 0.9 * quad / excess)
        z_prev, g_prev = z, g
        if accept:
            uphill = sum(dot([a - b for a, b in zip(z[k], u[k])], [a - b for a, b in zip(u[k], w[k])]) / eta[k]
                         for k in w)
            if uphill > 0:
                t = 1.0
            t_next = (1 + math.sqrt(1 + 4 * t * t)) / 2
            z = {k: [a + (t - 1) / t_next * (a - c) for a, c in zip(u[k], w[k])] for k in w}
            w, t = u, t_next
        eta = {k: e * factor for k, e in eta.items()}
        history.append(({k: list(v) for k, v in w.items()}, dict(eta)))
    return history


def _lasso_with_intercept(x, y):
    """½‖Xw + b − y‖²/n and its gradient, in Python floats."""
    X, Y = x.tolist(), y.tolist()
    n = len(Y)

    def residuals(p):
        return [sum(a * b for a, b in zip(row, p["w"])) + p["b"][0] - t for row, t in zip(X, Y)]

    def f(p):
        return 0.5 * sum(r * r for r in residuals(p)) / n

    def grad(p):
        r = residuals(p)
        return {"w": [sum(X[i][j] * r[i] for i in range(n)) / n for j in range(len(X[0]))], "b": [sum(r) / n]}

    return f, grad


def test_fista_steps_equal_a_hand_written_iteration() -> None:
    x, y = _lasso_data()
    x = x / 4  # features on a smaller scale than the intercept: the two leaves need different steps
    lam, steps = 0.02, 12  # later, η follows curvature read off rounding-sized excesses
    params = {"w": torch.zeros(6, dtype=torch.float64), "b": torch.tensor(0.0, dtype=torch.float64)}
    where = fr.select.only("^w$")
    state = fr.fista.init(params, lr=5.0)  # too large on purpose: rejections, then growth

    def loss(p, x, y):
        return 0.5 * ((x @ p["w"] + p["b"] - y) ** 2).mean()

    f, grad = _lasso_with_intercept(x, y)
    reference = _hand_fista(f, grad, {"w": [0.0] * 6, "b": [0.0]}, {"w"}, lam, steps, lr=5.0)
    rejected = 0
    for k in range(steps):
        before = float(state["lr"]["w"])
        params, state = fr.fista.step(loss, params, state, (x, y), penalty=fr.l1, lam=lam, where=where)
        want_w, want_eta = reference[k]
        torch.testing.assert_close(params["w"], torch.tensor(want_w["w"], dtype=torch.float64),
                                   rtol=1e-10, atol=1e-12)
        assert float(params["b"]) == pytest.approx(want_w["b"][0], rel=1e-10, abs=1e-12)
        for leaf in ("w", "b"):
            assert float(state["lr"][leaf]) == pytest.approx(want_eta[leaf], rel=1e-8)
        rejected += float(state["lr"]["w"]) < before * 0.99
    assert rejected >= 1  # the backtracking branch was exercised
    assert float(state["lr"]["w"]) > 4 * float(state["lr"]["b"])  # the secant gave each leaf its step


def test_fista_converges_to_the_lasso_solution() -> None:
    sklearn = pytest.importorskip("sklearn.linear_model")
    x, y = _lasso_data(n=60, p=8, seed=1)
    lam = 0.05
    params = {"w": torch.zeros(8, dtype=torch.float64)}
    state = fr.fista.init(params)
    for _ in range(500):
        params, state = fr.fista.step(_mse, params, state, (x, y), penalty=fr.l1, lam=lam, rtol=1e-10)
        if state["converged"]:
            break
    assert bool(state["converged"])
    ref = sklearn.Lasso(alpha=lam, fit_intercept=False, tol=1e-12, max_iter=100000).fit(x.numpy(), y.numpy())
    torch.testing.assert_close(params["w"], torch.from_numpy(ref.coef_), atol=1e-7, rtol=0)


def _mlp():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 1)).double()
    params = {k: v.detach() for k, v in model.named_parameters()}
    g = torch.Generator().manual_seed(3)
    x = torch.randn(32, 5, generator=g, dtype=torch.float64)
    y = torch.tanh(x[:, :1]) + 0.1 * torch.randn(32, 1, generator=g, dtype=torch.float64)

    def loss(p, x, y):
        return ((functional_call(model, p, (x,)) - y) ** 2).mean()

    return loss, params, x, y


def test_fista_under_vmap_equals_a_loop() -> None:
    loss, params, x, y = _mlp()
    lams = torch.tensor([0.3, 0.03, 0.003], dtype=torch.float64)
    where = fr.select.only(r"^0\.weight$")

    def step(w, st, lam):
        return fr.fista.step(loss, w, st, (x, y), penalty=fr.group_lasso, lam=lam, where=where, dim=1)

    w, st = fr.replicate(params, 3), fr.replicate(fr.fista.init(params), 3)
    loop = [(params, fr.fista.init(params)) for _ in range(3)]
    for _ in range(15):
        w, st = vmap(step)(w, st, lams)
        loop = [step(p, s, lam) for (p, s), lam in zip(loop, lams)]
    for k in range(3):
        for name in params:
            torch.testing.assert_close(w[name][k], loop[k][0][name], rtol=1e-10, atol=1e-12)
        for name in params:  # steps read curvature off differences a few roundings above noise
            torch.testing.assert_close(st["lr"][name][k], loop[k][1]["lr"][name], rtol=2e-2, atol=0)
    assert bool((w["0.weight"][0] == 0).all(0).any())  # the largest λ pruned an input


def test_prox_adam_is_adam_then_the_prox_in_its_metric() -> None:
    torch.manual_seed(1)
    params = {"w": torch.randn(4, 3, dtype=torch.float64), "b": torch.randn(3, dtype=torch.float64)}
    grads = [{k: torch.randn_like(v) for k, v in params.items()} for _ in range(3)]
    state = fr.prox_adam.init(params)
    ref_p, ref_s = params, fr.adam.init(params)
    for t, g in enumerate(grads, start=1):
        params, state = fr.prox_adam.step(params, g, state, lr=0.05, penalty=fr.l1, lam=0.4)
        ref_p, ref_s = fr.adam.step(ref_p, g, ref_s, lr=0.05)
        # the step per unit of m̂: lr / (sqrt(v̂) + eps)
        size = {k: 0.05 / ((ref_s["exp_avg_sq"][k] / (1 - 0.999 ** t)).sqrt() + 1e-8) for k in ref_p}
        ref_p = {k: v - (v.clamp(-0.4 * size[k], 0.4 * size[k])) for k, v in ref_p.items()}
        for k in params:
            torch.testing.assert_close(params[k], ref_p[k], rtol=1e-12, atol=1e-14)


def test_prox_adam_grouped_takes_one_step_per_leaf() -> None:
    torch.manual_seed(2)
    params = {"w": torch.randn(4, 3, dtype=torch.float64)}
    g = {"w": torch.randn(4, 3, dtype=torch.float64)}
    new, state = fr.prox_adam.step(params, g, fr.prox_adam.init(params), lr=0.1,
                                   penalty=fr.group_lasso, lam=0.5, dim=0)
    mhat = g["w"]  # after one step, m̂ = g
    s = (0.1 / (g["w"].abs() + 1e-8)).mean()
    v = params["w"] - s * mhat
    norms = v.norm(dim=1, keepdim=True)
    want = v * torch.clamp(1 - 0.5 * s * math.sqrt(3) / norms, min=0)
    torch.testing.assert_close(new["w"], want, rtol=1e-12, atol=1e-14)


def test_prox_adam_under_vmap_equals_a_loop() -> None:
    loss, params, x, y = _mlp()
    lams = torch.tensor([0.1, 0.01], dtype=torch.float64)

    def step(w, st, lam):
        return fr.prox_adam.step(w, grad(loss)(w, x, y), st, lr=0.01, penalty=fr.l1, lam=lam)

    w, st = fr.replicate(params, 2), fr.replicate(fr.prox_adam.init(params), 2)
    loop = [(params, fr.prox_adam.init(params)) for _ in range(2)]
    for _ in range(5):
        w, st = vmap(step)(w, st, lams)
        loop = [step(p, s, lam) for (p, s), lam in zip(loop, lams)]
    for k in range(2):
        for name in params:
            torch.testing.assert_close(w[name][k], loop[k][0][name], rtol=1e-10, atol=1e-12)


def test_solver_errors() -> None:
    params = {"w": torch.zeros(3)}
    with pytest.raises(ValueError, match="lr must be a positive"):
        fr.fista.init(params, lr=0.0)
    with pytest.raises(TypeError, match="penalty family"):
        fr.fista.step(lambda p: p["w"].sum(), params, fr.fista.init(params), penalty="l1", lam=1.0)
    with pytest.raises(ValueError, match="fr.fista.init"):
        fr.fista.step(lambda p: p["w"].sum(), params, {}, penalty=fr.l1, lam=1.0)
    with pytest.raises(ValueError, match="0-d tensor"):
        fr.fista.step(lambda p: p["w"], params, fr.fista.init(params), penalty=fr.l1, lam=1.0)
    with pytest.raises(TypeError, match="penalty family"):
        fr.prox_adam.step(params, params, fr.prox_adam.init(params), lr=0.1, penalty=None, lam=1.0)


def test_the_path_engine_is_fr_fista_step_batched() -> None:
    """fr.path's iteration (every member at once, one backward pass of the summed losses)
    against a Python loop of fr.fista.step, member by member."""
    loss, params, x, y = _mlp()
    lams = torch.tensor([0.1, 0.01, 0.001], dtype=torch.float64)
    where = fr.select.only(r"^0\.weight$")
    res = fr.path(loss, params, fr.group_lasso, (x, y), lambdas=lams, where=where, dim=1, max_steps=12,
                  rtol=1e-300)
    assert not bool((res.steps > 0).any())  # every member made all 12 steps
    for k, lam in enumerate(lams):
        w, st = params, fr.fista.init(params)
        for _ in range(12):
            w, st = fr.fista.step(loss, w, st, (x, y), penalty=fr.group_lasso, lam=lam, where=where, dim=1)
        for name in params:
            torch.testing.assert_close(res.params[name][k], w[name], rtol=1e-9, atol=1e-12)


def test_convergence_is_the_mapping_relative_to_the_first_step() -> None:
    x, y = _lasso_data()
    params = {"w": torch.zeros(6, dtype=torch.float64)}
    state = fr.fista.init(params)
    assert bool(torch.isnan(state["ref"]))
    mappings = []
    for _ in range(300):
        z, eta = state["z"]["w"], state["lr"]["w"]
        params, state = fr.fista.step(_mse, params, state, (x, y), penalty=fr.l1, lam=0.05, rtol=1e-6)
        # the trial by hand: u = soft(z − η∇f(z), ηλ), G = (z − u)/η, with η after the secant's cap
        eta = torch.minimum(eta, 0.9 / state["curvature"]["w"]) if float(state["curvature"]["w"]) > 0 else eta
        v = z - eta * grad(_mse)({"w": z}, x, y)["w"]
        u = v - v.clamp(-eta * 0.05, eta * 0.05)
        mappings.append(float(((z - u) / eta).abs().max()))
        if bool(state["converged"]):
            break
    assert bool(state["converged"])
    assert float(state["ref"]) == pytest.approx(mappings[0], rel=1e-12)
    assert mappings[-1] <= 1e-6 * mappings[0] < min(mappings[:-1])


def test_compile_failure_falls_back_to_eager_with_a_warning(monkeypatch) -> None:
    x, y = _lasso_data()
    params = {"w": torch.zeros(6, dtype=torch.float64)}
    eager = fr.path(_mse, params, fr.l1, (x, y), lambdas=[0.1, 0.01])

    def compile_that_fails(fn, **kwargs):
        def call(*args):
            raise RuntimeError("no C++ compiler on this machine")
        return call

    monkeypatch.setattr(torch, "compile", compile_that_fails)
    with pytest.warns(UserWarning, match="could not compile .*no C\\+\\+ compiler.*training eagerly"):
        res = fr.path(_mse, params, fr.l1, (x, y), lambdas=[0.1, 0.01], compile=True)
    assert torch.equal(res.params["w"], eager.params["w"]) and torch.equal(res.steps, eager.steps)
