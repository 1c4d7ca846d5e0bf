"""Composition with torch.func and torch.compile: vmap over λ (an ensemble over a grid),
vmap over stacked params, jacrev, and torch.compile(fullgraph=True) with tensor λ that
does not recompile when λ changes.

Every family and projection under vmap (over λ, γ, l1_ratio, radius, stacked params) against a loop, and under torch.compile(fullgraph=True) with tensor hyperparameters, without recompiling.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch._dynamo
from torch._dynamo.testing import CompileCounter

import funcreg as fr
from conftest import (
    REFERENCED,
    REFERENCED_IDS,
    Family,
    close_trees,
    fixed_params,
    stack_outputs,
)
from registry import FAMILY_BY_NAME, PROJECTIONS, VARIANTS

LAMS = torch.tensor([0.0, 0.01, 0.05, 0.1, 0.3, 0.5, 1.0, 2.0], dtype=torch.float64)
STEPS = torch.tensor([0.0, 0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 4.0], dtype=torch.float64)


def _params(seed: int = 0, batch: int | None = None):
    g = torch.Generator().manual_seed(seed)
    pre = (batch,) if batch else ()
    p = {
        "l1.weight": torch.randn(*pre, 3, 4, generator=g, dtype=torch.float64),
        "l1.bias": torch.randn(*pre, 3, generator=g, dtype=torch.float64),
        "s": torch.randn(pre, generator=g, dtype=torch.float64),
    }
    p["l1.weight"][..., 0, :] *= 0.01  # a row that group lasso / L1 zero out
    return p


def _stack(outs):
    return {k: torch.stack([o[k] for o in outs]) for k in outs[0]}


def _assert_tree_close(a, b, **kw):
    assert list(a) == list(b)
    for k in a:
        torch.testing.assert_close(a[k], b[k], msg=k, **kw)


@pytest.mark.parametrize("fam", REFERENCED, ids=REFERENCED_IDS)
def test_vmap_over_lam_unbatched_params(fam: Family) -> None:
    p = _params()
    opts = fam.options(p)
    grads = _params(1)
    v = torch.func.vmap(lambda lam: fam.penalty(p, lam, **opts))(LAMS)
    torch.testing.assert_close(v, torch.stack([fam.penalty(p, lam, **opts) for lam in LAMS]))
    ag = torch.func.vmap(lambda lam: fam.penalty.add_grad(grads, p, lam, **opts))(LAMS)
    _assert_tree_close(ag, _stack([fam.penalty.add_grad(grads, p, lam, **opts) for lam in LAMS]))
    pr = torch.func.vmap(lambda lam: fam.penalty.prox(p, lam, 0.5, **opts))(LAMS)
    _assert_tree_close(pr, _stack([fam.penalty.prox(p, lam, 0.5, **opts) for lam in LAMS]))
    # a batched step, and λ and step batched together
    ps = torch.func.vmap(lambda s: fam.penalty.prox(p, 0.3, s, **opts))(STEPS)
    _assert_tree_close(ps, _stack([fam.penalty.prox(p, 0.3, s, **opts) for s in STEPS]))
    pls = torch.func.vmap(lambda lam, s: fam.penalty.prox(p, lam, s, **opts))(LAMS, STEPS)
    _assert_tree_close(pls, _stack([fam.penalty.prox(p, lam, s, **opts) for lam, s in zip(LAMS, STEPS)]))
    # a batched λ inside a per-leaf dict
    d = torch.func.vmap(lambda lam: fam.penalty.prox(p, {"l1.weight": lam, "l1.bias": 0.2, "s": lam}, 0.5, **opts))(LAMS)
    _assert_tree_close(
        d, _stack([fam.penalty.prox(p, {"l1.weight": lam, "l1.bias": 0.2, "s": lam}, 0.5, **opts) for lam in LAMS])
    )


@pytest.mark.parametrize("fam", REFERENCED, ids=REFERENCED_IDS)
def test_vmap_over_lam_and_stacked_params(fam: Family) -> None:
    """An ensemble: 8 models (stacked params), each with its own λ."""
    pb = _params(2, batch=8)
    gb = _params(3, batch=8)
    opts = fam.options(_params())  # an unbatched anchor shared by the ensemble
    unstack = [{k: v[i] for k, v in pb.items()} for i in range(8)]
    gun = [{k: v[i] for k, v in gb.items()} for i in range(8)]
    v = torch.func.vmap(lambda p, lam: fam.penalty(p, lam, **opts))(pb, LAMS)
    torch.testing.assert_close(v, torch.stack([fam.penalty(p, lam, **opts) for p, lam in zip(unstack, LAMS)]))
    ag = torch.func.vmap(lambda g, p, lam: fam.penalty.add_grad(g, p, lam, **opts))(gb, pb, LAMS)
    _assert_tree_close(ag, _stack([fam.penalty.add_grad(g, p, lam, **opts) for g, p, lam in zip(gun, unstack, LAMS)]))
    pr = torch.func.vmap(lambda p, lam, s: fam.penalty.prox(p, lam, s, **opts))(pb, LAMS, STEPS)
    _assert_tree_close(pr, _stack([fam.penalty.prox(p, lam, s, **opts) for p, lam, s in zip(unstack, LAMS, STEPS)]))
    # stacked params, one shared λ
    gr = torch.func.vmap(lambda p: fam.penalty.grad(p, 0.3, **opts))(pb)
    _assert_tree_close(gr, _stack([fam.penalty.grad(p, 0.3, **opts) for p in unstack]))


def test_vmap_of_grad_of_penalized_loss() -> None:
    """vmap(grad(loss + penalty)) over λ: the ensemble-over-λ training gradient."""
    g = torch.Generator().manual_seed(4)
    x, y = torch.randn(10, 4, generator=g, dtype=torch.float64), torch.randn(10, generator=g, dtype=torch.float64)
    p = {"w": torch.randn(4, generator=g, dtype=torch.float64)}

    def mse(p, x, y):
        return ((x @ p["w"] - y) ** 2).mean()

    def grad_at(lam):
        return torch.func.grad(fr.penalized(mse, lambda q: fr.l2(q, lam), lambda q: fr.l1(q, lam / 2)))(p, x, y)

    batched = torch.func.vmap(grad_at)(LAMS)
    task = torch.func.grad(mse)(p, x, y)["w"]
    for i, lam in enumerate(LAMS):
        torch.testing.assert_close(batched["w"][i], task + 2 * lam * p["w"] + lam / 2 * torch.sign(p["w"]))


def test_jacrev_of_penalized_loss() -> None:
    g = torch.Generator().manual_seed(5)
    x = torch.randn(6, 3, generator=g, dtype=torch.float64)
    y = torch.randn(6, generator=g, dtype=torch.float64)
    w = torch.randn(3, generator=g, dtype=torch.float64)
    w0 = torch.randn(3, generator=g, dtype=torch.float64)

    def per_sample(p, x, y):  # a vector of losses: jacrev gives a (6, 3) Jacobian
        return (x @ p["w"] - y) ** 2

    loss = fr.penalized(
        per_sample, lambda p: fr.l2(p, 0.3), lambda p: fr.elastic_net(p, 0.2, l1_ratio=0.4),
        lambda p: fr.l2_sp(p, 0.1, anchor={"w": w0}),
    )
    jac = torch.func.jacrev(loss)({"w": w}, x, y)["w"]
    ref = torch.autograd.functional.jacobian(lambda v: loss({"w": v}, x, y), w)
    torch.testing.assert_close(jac, ref)
    # manual: 2 r_i x_i + penalty gradient (same for every row)
    r = x @ w - y
    pen = 2 * 0.3 * w + 0.2 * 0.4 * torch.sign(w) + 0.2 * 0.6 * w + 2 * 0.1 * (w - w0)
    torch.testing.assert_close(jac, 2 * r[:, None] * x + pen)
    # Hessian by jacrev of grad: task Hessian + 2λ I (+ (1−ρ)λ I + 2λ_sp I)
    scalar = fr.penalized(lambda p, x, y: per_sample(p, x, y).sum(), lambda p: fr.l2(p, 0.3))
    hess = torch.func.jacrev(torch.func.grad(scalar))({"w": w}, x, y)["w"]["w"]
    torch.testing.assert_close(hess, 2 * x.T @ x + 0.6 * torch.eye(3, dtype=torch.float64))
    torch.testing.assert_close(hess, torch.autograd.functional.hessian(lambda v: scalar({"w": v}, x, y), w))


def test_jacrev_of_prox_with_respect_to_lam() -> None:
    w = torch.tensor([2.0, -0.5, 0.1, -3.0], dtype=torch.float64)
    lam, s = torch.tensor(0.4, dtype=torch.float64), 0.5
    d_l2 = torch.func.jacrev(lambda l: fr.l2.prox({"w": w}, l, s)["w"])(lam)
    torch.testing.assert_close(d_l2, -2 * s * w / (1 + 2 * lam * s) ** 2)
    d_l1 = torch.func.jacrev(lambda l: fr.l1.prox({"w": w}, l, s)["w"])(lam)
    torch.testing.assert_close(d_l1, torch.where(w.abs() > lam * s, -s * torch.sign(w), torch.zeros_like(w)))
    d_val = torch.func.jacrev(lambda l: fr.group_lasso({"w": w.reshape(2, 2)}, l))(lam)
    torch.testing.assert_close(d_val, 2**0.5 * w.reshape(2, 2).norm(dim=1).sum())


# ---------------------------------------------------------------------------- compile
def _mse(p, x, y):
    return ((x @ p["w"].T + p["b"] - y) ** 2).mean()


def test_compiled_penalized_loss_does_not_recompile_when_lam_changes() -> None:
    torch._dynamo.reset()
    g = torch.Generator().manual_seed(6)
    p = {"w": torch.randn(3, 4, generator=g), "b": torch.randn(3, generator=g)}
    x, y = torch.randn(5, 4, generator=g), torch.randn(5, 3, generator=g)
    w0 = {k: torch.zeros_like(v) for k, v in p.items()}

    def loss_and_grad(p, x, y, lam):
        loss = fr.penalized(
            _mse,
            lambda q: fr.l1(q, lam, where=fr.select.weights),
            lambda q: fr.l2(q, lam / 2),
            lambda q: fr.elastic_net(q, lam, l1_ratio=0.3),
            lambda q: fr.group_lasso(q, lam),
            lambda q: fr.l2_sp(q, lam, anchor=w0),
        )
        return loss(p, x, y), torch.func.grad(loss)(p, x, y)

    counter = CompileCounter()
    compiled = torch.compile(loss_and_grad, backend=counter, fullgraph=True)
    lams = [torch.tensor(lam) for lam in (0.1, 0.2, 0.7, 0.0)]  # distinct tensors, all alive
    for lam in lams:
        got_loss, got_grad = compiled(p, x, y, lam)
        want_loss, want_grad = loss_and_grad(p, x, y, lam)
        torch.testing.assert_close(got_loss, want_loss)
        _assert_tree_close(got_grad, want_grad)
    assert counter.frame_count == 1
    torch._dynamo.reset()


@pytest.mark.parametrize("fam", REFERENCED, ids=REFERENCED_IDS)
def test_compiled_add_grad_and_prox(fam: Family) -> None:
    torch._dynamo.reset()
    g = torch.Generator().manual_seed(7)
    p = {"w": torch.randn(3, 4, generator=g), "b": torch.randn(3, generator=g, dtype=torch.float64)}
    grads = {"w": torch.randn(3, 4, generator=g), "b": torch.randn(3, generator=g, dtype=torch.float64)}
    opts = fam.options(p)
    counter = CompileCounter()
    add_grad = torch.compile(lambda gr, q, lam: fam.penalty.add_grad(gr, q, lam, **opts), backend=counter, fullgraph=True)
    prox = torch.compile(lambda q, lam, s: fam.penalty.prox(q, lam, s, **opts), backend=counter, fullgraph=True)
    values = ((0.1, 0.5), (0.3, 1.0), (2.0, 0.25))
    # distinct tensor objects, all alive at once (a λ schedule): a guard on a tensor's
    # identity, not only on its value, would recompile for each of them
    tensors = [(torch.tensor(lam), torch.tensor(s, dtype=torch.float64)) for lam, s in values]
    for (lam, s), (lam_t, s_t) in zip(values, tensors):
        _assert_tree_close(add_grad(grads, p, lam_t), fam.penalty.add_grad(grads, p, lam, **opts))
        _assert_tree_close(prox(p, lam_t, s_t), fam.penalty.prox(p, lam, s, **opts))
    assert counter.frame_count == 2  # one graph each, never recompiled
    torch._dynamo.reset()


def test_inductor_compiled_prox_matches_eager() -> None:
    """A real (Inductor) compile of a proximal step on a tensor λ."""
    torch._dynamo.reset()
    g = torch.Generator().manual_seed(8)
    p = {"w": torch.randn(8, 5, generator=g), "b": torch.randn(8, generator=g)}

    def step(q, lam):
        q = fr.l1.prox(q, lam, 0.5, where=fr.select.weights)
        return fr.group_lasso.prox(q, lam, 0.5)

    compiled = torch.compile(step, fullgraph=True)
    for lam in (0.1, 0.8):
        _assert_tree_close(compiled(p, torch.tensor(lam)), step(p, torch.tensor(lam)), rtol=1e-5, atol=1e-6)
    torch._dynamo.reset()


def test_vmap_over_l1_ratio_and_anchor() -> None:
    p = _params()
    ratios = torch.linspace(0, 1, 8, dtype=torch.float64)
    out = torch.func.vmap(lambda r: fr.elastic_net.prox(p, 0.5, 0.5, l1_ratio=r))(ratios)
    _assert_tree_close(out, _stack([fr.elastic_net.prox(p, 0.5, 0.5, l1_ratio=float(r)) for r in ratios]))
    v = torch.func.vmap(lambda r: fr.elastic_net(p, 0.5, l1_ratio=r))(ratios)
    torch.testing.assert_close(v, torch.stack([fr.elastic_net(p, 0.5, l1_ratio=float(r)) for r in ratios]))
    anchors = _params(9, batch=8)  # one anchor per ensemble member
    g = torch.func.vmap(lambda a: fr.l2_sp.grad(p, 0.5, anchor=a))(anchors)
    for k in p:
        torch.testing.assert_close(g[k], 2 * 0.5 * (p[k] - anchors[k]))


def test_autograd_through_a_lam_that_requires_grad() -> None:
    """A λ with requires_grad (hyperparameter learning with plain autograd) makes the
    operations differentiable in λ."""
    w = torch.tensor([2.0, -0.5, 0.1, -3.0], dtype=torch.float64)
    lam = torch.tensor(0.4, dtype=torch.float64, requires_grad=True)
    u = fr.l2.prox({"w": w}, lam, 0.5)["w"]
    (grad_lam,) = torch.autograd.grad(u.sum(), lam)
    torch.testing.assert_close(grad_lam, (-2 * 0.5 * w / (1 + 2 * 0.4 * 0.5) ** 2).sum())
    g = fr.l1.add_grad({"w": torch.zeros(4, dtype=torch.float64)}, {"w": w}, lam)["w"]
    (grad_lam,) = torch.autograd.grad(g.sum(), lam)
    torch.testing.assert_close(grad_lam, torch.sign(w).sum())


forced = fr._dispatch.forced
F64 = torch.float64
W = fr.select.weights

WITH_GRAD = [k for k, v in VARIANTS.items() if v.family.has("grad")]
WITH_PROX = [k for k, v in VARIANTS.items() if v.family.has("prox")]

GRID_LAMS = torch.tensor([0.0, 0.05, 0.3, 1.0, 2.5], dtype=F64)
GRID_STEPS = torch.tensor([0.0, 0.5, 1.0, 3.0, 10.0], dtype=F64)  # MCP's and SCAD's regimes all
GRID_GAMMAS = torch.tensor([1.2, 1.5, 3.0, 3.7, 6.0], dtype=F64)




# ------------------------------------------------------------------------------- vmap
@pytest.mark.parametrize("name", list(VARIANTS))
def test_vmap_over_lam_equals_a_loop(name: str) -> None:
    penalty, p, grads = VARIANTS[name].penalty, fixed_params(), fixed_params(1)
    opts = VARIANTS[name].options(p)
    checks: list[tuple[Callable[..., Any], tuple[torch.Tensor, ...]]] = [(lambda a: penalty(p, a, **opts), (GRID_LAMS,))]
    if name in WITH_GRAD:
        checks += [(lambda a: penalty.grad(p, a, **opts), (GRID_LAMS,)),
                   (lambda a: penalty.add_grad(grads, p, a, **opts), (GRID_LAMS,))]
    if name in WITH_PROX:
        checks += [(lambda a: penalty.prox(p, a, 0.7, **opts), (GRID_LAMS,)),
                   (lambda a, s: penalty.prox(p, a, s, **opts), (GRID_LAMS, GRID_STEPS))]
    for fn, args in checks:
        batched = torch.func.vmap(fn)(*args)
        close_trees(batched, stack_outputs([fn(*(a[i] for a in args)) for i in range(len(args[0]))]))


@pytest.mark.parametrize("name", list(VARIANTS))
def test_vmap_over_stacked_params_and_lam(name: str) -> None:
    """An ensemble: stacked params, one λ (and step) per member."""
    penalty, pb = VARIANTS[name].penalty, fixed_params(2, batch=5)
    members = [{k: v[i] for k, v in pb.items()} for i in range(5)]
    opts = VARIANTS[name].options(members[0])
    if name in WITH_PROX:
        out = torch.func.vmap(lambda q, a, s: penalty.prox(q, a, s, **opts))(pb, GRID_LAMS, GRID_STEPS)
        close_trees(out, stack_outputs([penalty.prox(q, a, s, **opts) for q, a, s in zip(members, GRID_LAMS, GRID_STEPS)]))
    if name in WITH_GRAD:
        out = torch.func.vmap(lambda q, a: penalty.grad(q, a, **opts))(pb, GRID_LAMS)
        close_trees(out, stack_outputs([penalty.grad(q, a, **opts) for q, a in zip(members, GRID_LAMS)]))


@pytest.mark.parametrize("penalty", [fr.mcp, fr.scad], ids=["mcp", "scad"])
def test_vmap_over_gamma_equals_a_loop(penalty: fr.Penalty) -> None:
    p = fixed_params()
    for fn in (lambda g: penalty(p, 0.5, gamma=g), lambda g: penalty.grad(p, 0.5, gamma=g),
               lambda g: penalty.prox(p, 0.5, 2.0, gamma=g), lambda g, s: penalty.prox(p, 0.5, s, gamma=g)):
        args = (GRID_GAMMAS,) if fn.__code__.co_argcount == 1 else (GRID_GAMMAS, GRID_STEPS)
        close_trees(torch.func.vmap(fn)(*args), stack_outputs([fn(*(a[i] for a in args)) for i in range(5)]))


def test_vmap_over_l1_ratio_equals_a_loop() -> None:
    p, grads = fixed_params(), fixed_params(3)
    ratios = torch.tensor([0.0, 0.2, 0.5, 0.9, 1.0], dtype=F64)
    for fn in (lambda r: fr.sparse_group_lasso(p, 0.5, l1_ratio=r),
               lambda r: fr.sparse_group_lasso.prox(p, 0.5, 1.0, l1_ratio=r),
               lambda r: fr.sparse_group_lasso.grad(p, 0.5, l1_ratio=r),
               lambda r: fr.sparse_group_lasso.lambda_max(grads, l1_ratio=r)):
        close_trees(torch.func.vmap(fn)(ratios), stack_outputs([fn(r) for r in ratios]))


@pytest.mark.parametrize("name", list(PROJECTIONS))
def test_vmap_over_radius_equals_a_loop(name: str) -> None:
    project = PROJECTIONS[name]
    p = fixed_params()
    radii = torch.tensor([0.0, 0.1, 0.5, 2.0, 100.0], dtype=F64)
    close_trees(torch.func.vmap(lambda r: project(p, r))(radii), stack_outputs([project(p, r) for r in radii]))
    pb = fixed_params(4, batch=5)
    out = torch.func.vmap(lambda q, r: project(q, r))(pb, radii)
    close_trees(out, stack_outputs([project({k: v[i] for k, v in pb.items()}, radii[i]) for i in range(5)]))


def test_vmap_over_lambda_max() -> None:
    gb = fixed_params(5, batch=4)
    for penalty, opts in ((fr.mcp, {}), (fr.nuclear_norm, {"where": W}), (fr.sparse_group_lasso, {"dim": None})):
        out = torch.func.vmap(lambda g: penalty.lambda_max(g, **opts))(gb)
        close_trees(out, torch.stack([penalty.lambda_max({k: v[i] for k, v in gb.items()}, **opts) for i in range(4)]))


# ---------------------------------------------------------------------------- compile
COMPILE_VALUES = ((0.1, 0.5), (0.3, 1.0), (2.0, 0.25), (0.5, 6.0))  # the last: MCP's and SCAD's hard regime


@pytest.mark.parametrize("name", ["sparse_group_lasso", "nuclear_norm", "mcp", "scad", "l0", "orthogonal"])
def test_compiled_add_grad_and_prox_do_not_recompile(name: str) -> None:
    penalty = FAMILY_BY_NAME[name].penalty
    torch._dynamo.reset()
    p = {"w": fixed_params(13)["l1.weight"].float(), "v": fixed_params(14)["l2.weight"]}
    opts = VARIANTS[name].options(p)
    grads = {k: torch.randn_like(v) for k, v in p.items()}
    counter = CompileCounter()
    tensors = [(torch.tensor(a), torch.tensor(s, dtype=F64)) for a, s in COMPILE_VALUES]  # all alive at once
    graphs = 0
    if "grad" not in penalty.without:
        add_grad = torch.compile(lambda g, q, a: penalty.add_grad(g, q, a, **opts), backend=counter, fullgraph=True)
        for (a, _), (a_t, _) in zip(COMPILE_VALUES, tensors):
            close_trees(add_grad(grads, p, a_t), penalty.add_grad(grads, p, a, **opts), rtol=1e-5, atol=1e-6)
        graphs += 1
    if "prox" not in penalty.without:
        prox = torch.compile(lambda q, a, s: penalty.prox(q, a, s, **opts), backend=counter, fullgraph=True)
        for (a, s), (a_t, s_t) in zip(COMPILE_VALUES, tensors):
            close_trees(prox(p, a_t, s_t), penalty.prox(p, a, s, **opts), rtol=1e-5, atol=1e-6)
        graphs += 1
    assert counter.frame_count == graphs
    torch._dynamo.reset()


@pytest.mark.parametrize("penalty", [fr.mcp, fr.scad], ids=["mcp", "scad"])
def test_compiled_prox_with_a_tensor_gamma_does_not_recompile(penalty: fr.Penalty) -> None:
    torch._dynamo.reset()
    p = fixed_params(15)
    counter = CompileCounter()
    prox = torch.compile(lambda q, a, s, g: penalty.prox(q, a, s, gamma=g), backend=counter, fullgraph=True)
    values = [(0.3, 0.5, 3.7), (1.0, 2.0, 1.5), (0.5, 9.0, 2.5)]
    tensors = [tuple(torch.tensor(v, dtype=F64) for v in vs) for vs in values]
    for (a, s, g), t in zip(values, tensors):
        close_trees(prox(p, *t), penalty.prox(p, a, s, gamma=g))
    assert counter.frame_count == 1
    torch._dynamo.reset()


def test_compiled_projections_do_not_recompile() -> None:
    torch._dynamo.reset()
    p = fixed_params(16)
    counter = CompileCounter()
    compiled = {k: torch.compile(f, backend=counter, fullgraph=True) for k, f in PROJECTIONS.items()}
    radii = [torch.tensor(r, dtype=F64) for r in (0.2, 0.9, 5.0)]
    for r in radii:
        for k, f in PROJECTIONS.items():
            close_trees(compiled[k](p, r), f(p, float(r)))
    assert counter.frame_count == len(PROJECTIONS)
    torch._dynamo.reset()
