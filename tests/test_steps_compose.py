"""The steps compose with torch.func and torch.compile: an ensemble under ``vmap`` over
lr, weight decay, λ and every hyperparameter (the stacked path and the per-leaf path)
against a Python loop, stacked params and states, gradients and hypergradients through
unrolled steps against hand derivations and finite differences,
``torch.compile(fullgraph=True)`` with tensor hyperparameters and no recompile, and
donated steps inside vmap (donated steps bit-equal to pure ones: tests/test_donation.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch._dynamo.testing import CompileCounter, CompileCounterWithBackend
from torch.func import vmap

import funcreg as fr
from funcreg import _stacked
from optim_helpers import (  # noqa: F401  (_one_thread is an autouse fixture)
    _one_thread,
    assert_tree_close,
    grad_sequence,
    mlp_forward,
    mlp_params,
    tensors_of,
)
from registry import STEPS, Step, compose_cases, step_kwargs

# Inductor's import warns about torch.jit internals: not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:.*torch.jit.script_method.*:DeprecationWarning")

F64 = torch.float64


def _data(seed: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(32, 4, generator=g, dtype=F64)
    return x, torch.sin(x @ torch.randn(4, 3, generator=g, dtype=F64))


X, Y = _data()
P0 = mlp_params(F64)


def _loss(params: dict[str, torch.Tensor]) -> torch.Tensor:
    return ((mlp_forward(params, X) - Y) ** 2).mean()


def _t(v: float) -> torch.Tensor:
    return torch.tensor(v, dtype=F64)


# ------------------------------------------------------------------------------- vmap
def _sgd_run(lr: Any, wd: Any, lam: Any, steps: int = 5) -> dict[str, torch.Tensor]:
    """Proximal SGD with momentum on the MLP, gradients from the loss."""
    params = P0
    state = fr.sgd.init(params)
    for _ in range(steps):
        grads = torch.func.grad(_loss)(params)
        params, state = fr.sgd.step(params, grads, state, lr=lr, momentum=0.9, weight_decay=wd,
                                    where=fr.select.weights)
        params = fr.l1.prox(params, lam, lr)
    return params


def _adam_run(lr: Any, wd: Any, lam: Any, steps: int = 5) -> dict[str, torch.Tensor]:
    """Proximal AdamW (amsgrad) on the MLP."""
    params = P0
    state = fr.adamw.init(params, amsgrad=True)
    for _ in range(steps):
        grads = torch.func.grad(_loss)(params)
        params, state = fr.adamw.step(params, grads, state, lr=lr, weight_decay=wd, amsgrad=True)
        params = fr.l1.prox(params, lam, fr.adamw.step_size(state, lr=lr))
    return params


LRS = [0.01, 0.05, 0.1, 0.2]
WDS = [0.0, 0.1, 0.3, 1e-3]
LAMS = [0.0, 1e-3, 0.01, 0.05]


@pytest.mark.parametrize("run", [_sgd_run, _adam_run], ids=["sgd", "adamw"])
def test_vmap_over_lr_weight_decay_and_lambda_equals_a_loop(run: Callable[..., Any]) -> None:
    batched = torch.func.vmap(run)(torch.tensor(LRS, dtype=F64), torch.tensor(WDS, dtype=F64),
                                   torch.tensor(LAMS, dtype=F64))
    for i, (lr, wd, lam) in enumerate(zip(LRS, WDS, LAMS)):
        expected = run(lr, wd, lam)  # eager, Python numbers: the fast path
        assert_tree_close({k: v[i] for k, v in batched.items()}, expected, rtol=1e-10, atol=1e-12,
                          what=f"member {i}: ")
    # the members differ: the batch really carried different hyperparameters
    assert not torch.allclose(batched["0.weight"][0], batched["0.weight"][-1])


def _stack(trees: list[Any]) -> Any:
    """Stack same-structured dict trees leaf by leaf (``None`` stays ``None``)."""
    first = trees[0]
    if isinstance(first, dict):
        return {k: _stack([t[k] for t in trees]) for k in first}
    if first is None:
        assert all(t is None for t in trees)
        return None
    return torch.stack(trees)


def _member(tree: Any, i: int) -> Any:
    if isinstance(tree, dict):
        return {k: _member(v, i) for k, v in tree.items()}
    return None if tree is None else tree[i]


@pytest.mark.parametrize(
    "opt,init,kw",
    [
        pytest.param(fr.sgd, {}, dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01), id="sgd"),
        pytest.param(fr.sgd, {}, dict(lr=0.05, momentum=0.9, dampening=0.5), id="sgd-dampening"),
        pytest.param(fr.adam, {"amsgrad": True}, dict(lr=0.01, weight_decay=0.1, amsgrad=True), id="adam"),
        pytest.param(fr.adamw, {}, dict(lr=0.01), id="adamw"),
    ],
)
def test_vmap_over_stacked_params_and_states_equals_a_loop(opt: Any, init: dict, kw: dict) -> None:
    members = [mlp_params(F64, seed=s) for s in range(3)]
    grads = [grad_sequence(p, 4, seed=10 + i) for i, p in enumerate(members)]
    states = [opt.init(p, **init) for p in members]

    # Python loop, eager (fast path)
    loop_p, loop_s = list(members), list(states)
    for t in range(4):
        for i in range(3):
            loop_p[i], loop_s[i] = opt.step(loop_p[i], grads[i][t], loop_s[i], **kw)

    # one vmap over the member dimension of params, grads and state
    step = torch.func.vmap(lambda p, g, s: opt.step(p, g, s, **kw))
    params, state = _stack(members), _stack(states)
    for t in range(4):
        params, state = step(params, _stack([g[t] for g in grads]), state)
    for i in range(3):
        assert_tree_close(_member(params, i), loop_p[i], rtol=1e-10, atol=1e-12, what=f"member {i}: ")
        for key in loop_s[i]:
            for (path, a), (_, e) in zip(tensors_of(_member(state[key], i)), tensors_of(loop_s[i][key])):
                torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-12, msg=lambda m: f"{key}.{path}: {m}")


# ----------------------------------------------------------------------- hypergradient
def test_grad_through_one_sgd_step_wrt_lr_is_hand_derived() -> None:
    """d/dlr L(w - lr g) = -<∇L(w - lr g), g>."""
    params = mlp_params(F64)
    grads = torch.func.grad(_loss)(params)
    state = fr.sgd.init(params)

    def after(lr: torch.Tensor) -> torch.Tensor:
        new, _ = fr.sgd.step(params, grads, state, lr=lr)
        return _loss(new)

    lr = _t(0.1)
    hyper = torch.func.grad(after)(lr)
    new, _ = fr.sgd.step(params, grads, state, lr=0.1)
    g1 = torch.func.grad(_loss)(new)
    expected = -sum((g1[k] * grads[k]).sum() for k in params)
    torch.testing.assert_close(hyper, expected, rtol=1e-12, atol=1e-14)


def _unrolled(opt: Any, init: dict, kw: dict, steps: int = 3) -> Callable[[torch.Tensor], torch.Tensor]:
    def run(lr: torch.Tensor) -> torch.Tensor:
        params = mlp_params(F64)
        state = opt.init(params, **init)
        for _ in range(steps):
            params, state = opt.step(params, torch.func.grad(_loss)(params), state, lr=lr, **kw)
        return _loss(params)

    return run


@pytest.mark.parametrize(
    "opt,init,kw",
    [
        pytest.param(fr.sgd, {}, dict(momentum=0.9, nesterov=True, weight_decay=0.01), id="sgd-nesterov"),
        pytest.param(fr.sgd, {}, dict(momentum=0.9, dampening=0.3, maximize=False), id="sgd-dampening"),
        pytest.param(fr.adam, {"amsgrad": True}, dict(weight_decay=0.1, amsgrad=True), id="adam"),
        pytest.param(fr.adamw, {}, dict(weight_decay=0.1), id="adamw"),
    ],
)
def test_hypergradient_through_unrolled_steps_matches_finite_differences(opt: Any, init: dict, kw: dict) -> None:
    """torch.func.grad with respect to lr through 3 steps (each step's gradient depends on
    lr through the params) equals a central finite difference of the eager run."""
    run = _unrolled(opt, init, kw)
    lr, h = 0.05, 1e-6
    hyper = torch.func.grad(run)(_t(lr))
    fd = (run(_t(lr + h)) - run(_t(lr - h))) / (2 * h)
    assert hyper.abs() > 1e-3
    torch.testing.assert_close(hyper, fd, rtol=1e-6, atol=1e-9)
    # plain autograd on a requires_grad lr agrees: from the second step on the params
    # carry its history, which a step records only when asked (differentiable=True)
    lr_t = _t(lr).requires_grad_()
    (auto,) = torch.autograd.grad(_unrolled(opt, init, {**kw, "differentiable": True})(lr_t), lr_t)
    torch.testing.assert_close(auto, hyper, rtol=1e-12, atol=1e-15)


# ----------------------------------------------------------------------- torch.compile
def _hyper_values(i: int) -> dict[str, torch.Tensor]:
    return dict(lr=_t(0.01 * (i + 1)), momentum=_t(0.9 - 0.05 * i), weight_decay=_t(0.02 * i),
                b1=_t(0.9 - 0.01 * i), b2=_t(0.999 - 0.001 * i), eps=_t(1e-8 * (i + 1)))


def _sgd_step(p: Any, g: Any, s: Any, h: dict[str, torch.Tensor]) -> Any:
    return fr.sgd.step(p, g, s, lr=h["lr"], momentum=h["momentum"], weight_decay=h["weight_decay"],
                       nesterov=True, where=fr.select.weights)


def _adam_step(p: Any, g: Any, s: Any, h: dict[str, torch.Tensor]) -> Any:
    return fr.adam.step(p, g, s, lr=h["lr"], betas=(h["b1"], h["b2"]), eps=h["eps"],
                        weight_decay=h["weight_decay"], amsgrad=True)


def _adamw_step(p: Any, g: Any, s: Any, h: dict[str, torch.Tensor]) -> Any:
    return fr.adamw.step(p, g, s, lr=h["lr"], betas=(h["b1"], h["b2"]), eps=h["eps"],
                         weight_decay=h["weight_decay"], maximize=True)


def _sgd_damped_step(p: Any, g: Any, s: Any, h: dict[str, torch.Tensor]) -> Any:
    return fr.sgd.step(p, g, s, lr=h["lr"], momentum=h["momentum"], dampening=h["b1"] - 0.5,
                       maximize=True)


@pytest.mark.parametrize(
    "step,init",
    [
        pytest.param(_sgd_step, lambda p: fr.sgd.init(p), id="sgd"),
        pytest.param(_sgd_damped_step, lambda p: fr.sgd.init(p), id="sgd-dampening"),
        pytest.param(_adam_step, lambda p: fr.adam.init(p, amsgrad=True), id="adam"),
        pytest.param(_adamw_step, lambda p: fr.adamw.init(p), id="adamw"),
    ],
)
def test_compile_fullgraph_equals_eager_without_recompiles(step: Callable, init: Callable) -> None:
    torch._dynamo.reset()
    counter = CompileCounter()
    compiled = torch.compile(step, backend=counter, fullgraph=True)
    params = mlp_params(F64)
    grads = grad_sequence(params, 8)
    p_c = p_e = params
    s_c = s_e = init(params)
    frames = None
    for i, g in enumerate(grads):
        h = _hyper_values(i)  # fresh tensors with new values every step
        p_c, s_c = compiled(p_c, g, s_c, h)
        p_e, s_e = step(p_e, g, s_e, h)
        assert_tree_close(p_c, p_e, rtol=1e-12, atol=1e-14, what=f"step {i + 1}: ")
        if i == 1:
            # a state may change structure on the first step (a momentum buffer appears)
            frames = counter.frame_count
    assert counter.frame_count == frames, "changing hyperparameter values recompiled"
    assert frames is not None and frames <= 2
    for key in s_e:
        for (path, a), (_, e) in zip(tensors_of(s_c[key]), tensors_of(s_e[key])):
            torch.testing.assert_close(a, e, rtol=1e-12, atol=1e-14, msg=lambda m: f"{key}.{path}: {m}")
    torch._dynamo.reset()


def test_compile_inductor_adam_equals_eager() -> None:
    """The same through Inductor's generated code (one compile: it is the slow one)."""
    torch._dynamo.reset()
    counter = CompileCounterWithBackend("inductor")
    compiled = torch.compile(_adam_step, backend=counter, fullgraph=True)
    params = mlp_params(F64)
    p_c = p_e = params
    s_c = s_e = fr.adam.init(params, amsgrad=True)
    frames = None
    for i, g in enumerate(grad_sequence(params, 4)):
        h = _hyper_values(i)
        p_c, s_c = compiled(p_c, g, s_c, h)
        p_e, s_e = _adam_step(p_e, g, s_e, h)
        assert_tree_close(p_c, p_e, rtol=1e-10, atol=1e-12, what=f"step {i + 1}: ")
        frames = counter.frame_count if frames is None else frames
    assert counter.frame_count == frames, "changing hyperparameter values recompiled"
    torch._dynamo.reset()


def test_vmap_over_momentum_including_zero_matches_torch_optim() -> None:
    """An ensemble over momentum: the member with momentum 0 ignores dampening, as
    torch.optim.SGD does (a tensor momentum's value cannot be read on the host)."""
    momenta = [0.0, 0.5, 0.9]
    grads = grad_sequence(P0, 6)

    def run(momentum: torch.Tensor) -> dict[str, torch.Tensor]:
        params, state = P0, fr.sgd.init(P0)
        for g in grads:
            params, state = fr.sgd.step(params, g, state, lr=0.1, momentum=momentum, dampening=0.4)
        return params

    batched = torch.func.vmap(run)(torch.tensor(momenta, dtype=F64))
    for i, m in enumerate(momenta):
        ps = {k: v.clone() for k, v in P0.items()}
        opt = torch.optim.SGD(list(ps.values()), lr=0.1, momentum=m, dampening=0.4)
        for g in grads:
            for k, t in ps.items():
                t.grad = g[k].clone()
            opt.step()
        assert_tree_close({k: v[i] for k, v in batched.items()}, ps, rtol=1e-12, atol=1e-12,
                          what=f"momentum {m}: ")


# Inductor's import warns about torch.jit internals: not ours to fix.

K = 3
SCALES = (1.0, 0.5, 0.8)  # each member's hyperparameters: the config's, times these


def _init(step: Step, params: Any, kw: dict[str, Any]) -> dict[str, Any]:
    return step.opt.init(params, **step.init(kw))


def _batched(step: Step, kw: dict[str, Any]) -> dict[str, Any]:
    """Every hyperparameter of ``step`` as a (K,) tensor, member i the config's times SCALES[i]."""
    out = {}
    for name, default in step.hypers.items():
        v = kw.get(name, default)
        if name == "betas":
            out[name] = tuple(torch.tensor([min(b * s, 0.999) for s in SCALES], dtype=F64) for b in v)
        else:
            out[name] = torch.tensor([v * s for s in SCALES], dtype=F64)
    return out


def _member_hypers(h: dict[str, Any], i: int) -> dict[str, Any]:
    return {k: tuple(b[i] for b in v) if isinstance(v, tuple) else v[i] for k, v in h.items()}


def _stack_trees(trees: list[Any]) -> Any:
    if isinstance(trees[0], dict):
        return {k: _stack_trees([t[k] for t in trees]) for k in trees[0]}
    return None if trees[0] is None else torch.stack(trees)


def _close(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], what: str, atol: float = 1e-12) -> None:
    assert list(actual) == list(expected), what
    for k in expected:
        torch.testing.assert_close(actual[k], expected[k], rtol=0 if atol > 1e-12 else 1e-10, atol=atol,
                                   msg=lambda m, k=k: f"{what} {k}: {m}")


@pytest.fixture
def stacked(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many calls took the stacked path."""
    calls: list[int] = []
    real = _stacked.run

    def spy(*args: Any) -> Any:
        out = real(*args)
        if out is not None:  # None: it handed the call back to the per-leaf path
            calls.append(len(next(iter(out.values()))))
        return out

    monkeypatch.setattr(_stacked, "run", spy)
    return calls


# ------------------------------------------------------------------------------- vmap
@pytest.mark.parametrize("step,kw", compose_cases(STEPS))
def test_vmap_over_every_hyperparameter_equals_a_loop(step: Step, kw: dict[str, Any], stacked: list[int]) -> None:
    """K members, stacked params and gradients, each member its own value of every tensor
    hyperparameter: the stacked path gives each member the loop's values (the loop runs
    the same 0-d tensors eagerly); the per-leaf path too, except Muon's, whose bfloat16
    products vmap's own batching rule rounds differently (to bfloat16's precision in the
    update: see fr.muon)."""
    kw = step_kwargs(step, kw)
    static = {k: v for k, v in kw.items() if k not in step.hypers}
    hypers = _batched(step, kw)
    members = [mlp_params(F64, seed=s) for s in range(K)]
    grads = [grad_sequence(p, 4, seed=10 + i) for i, p in enumerate(members)]
    init = {**kw, **_member_hypers(hypers, 0)}

    def run(p: Any, h: dict[str, Any], *gs: Any) -> Any:
        s = _init(step, p, init)
        for g in gs:
            p, s = step.opt.step(p, g, s, where=step.where, **static, **h)
        return {**p, **{f"state.{key}.{k}": v for key, tree in s.items() for k, v in tree.items() if v is not None}}

    args = (_stack_trees(members), hypers, *[_stack_trees([g[t] for g in grads]) for t in range(4)])
    got = vmap(run)(*args)
    assert len(stacked) == 4, "the stacked path was not taken"
    with fr._dispatch.forced("composable"):
        per_leaf = vmap(run)(*args)
    for i in range(K):
        loop = run(members[i], _member_hypers(hypers, i), *grads[i])
        _close({k: v[i] for k, v in got.items()}, loop, f"stacked, member {i}:")
        _close({k: v[i] for k, v in per_leaf.items()}, loop, f"per-leaf, member {i}:",
               atol=1e-12 if step.vmap_exact else 2e-3)
    # the members differ: the batch carried different hyperparameters
    assert not torch.allclose(got["0.weight"][0] - members[0]["0.weight"], got["0.weight"][1] - members[1]["0.weight"])


@pytest.mark.parametrize("step,kw", compose_cases(STEPS))
def test_vmap_over_lr_with_captured_params_and_state(step: Step, kw: dict[str, Any], stacked: list[int]) -> None:
    """An ensemble over lr from one model (params and state captured, not batched): the
    members are the loop's runs, each from the same start."""
    kw = step_kwargs(step, kw)
    params = mlp_params(F64)
    state = _init(step, params, kw)
    grads = grad_sequence(params, 1)[0]
    lrs = torch.tensor([kw["lr"] * s for s in SCALES], dtype=F64)
    rest = {k: v for k, v in kw.items() if k != "lr"}
    got = vmap(lambda lr: step.opt.step(params, grads, state, lr=lr, where=step.where, **rest)[0])(lrs)
    assert stacked
    for i, lr in enumerate(lrs):
        want, _ = step.opt.step(params, grads, state, lr=lr, where=step.where, **rest)
        _close({k: v[i] for k, v in got.items()}, want, f"lr {float(lr)}:")


# ----------------------------------------------------------------------- torch.compile
@pytest.mark.parametrize("step,kw", compose_cases())
def test_compile_fullgraph_with_tensor_hyperparameters_does_not_recompile(step: Step, kw: dict[str, Any]) -> None:
    torch._dynamo.reset()
    kw = step_kwargs(step, kw)
    static = {k: v for k, v in kw.items() if k not in step.hypers}
    counter = CompileCounter()

    def one(p: Any, g: Any, s: Any, h: dict[str, Any]) -> Any:
        return step.opt.step(p, g, s, where=step.where, **static, **h)

    compiled = torch.compile(one, backend=counter, fullgraph=True)
    params = mlp_params(F64)
    p_c = p_e = params
    s_c = s_e = _init(step, params, {**kw, **step.tensors(kw)})
    for t, g in enumerate(grad_sequence(params, 5)):
        h = {k: v * (1 - 0.05 * t) if isinstance(v, torch.Tensor) else tuple(b * (1 - 0.01 * t) for b in v)
             for k, v in step.tensors(kw).items() if k in step.hypers}  # fresh tensors, new values
        p_c, s_c = compiled(p_c, g, s_c, h)
        p_e, s_e = one(p_e, g, s_e, h)
        _close(p_c, p_e, f"step {t + 1}:", atol=1e-12)
    assert counter.frame_count == 1, "changing hyperparameter values recompiled"
    for key in s_e:
        for (path, a), (_, e) in zip(tensors_of(s_c[key]), tensors_of(s_e[key])):
            torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-12, msg=lambda m: f"{key}.{path}: {m}")
    torch._dynamo.reset()


# ------------------------------------------------------------------------- donation
def _donation_tree(dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Matrices of two aspect ratios, a vector and a 0-d leaf (Muon takes the matrices)."""
    g = torch.Generator().manual_seed(0)
    shapes = {"0.weight": (6, 3), "0.bias": (6,), "1.weight": (2, 6), "scale": ()}
    return {k: torch.randn(s, generator=g, dtype=F64).to(dtype) for k, s in shapes.items()}


@pytest.mark.parametrize("step,kw", compose_cases(STEPS))
def test_donated_steps_inside_vmap_write_into_the_ensemble(step: Step, kw: dict[str, Any]) -> None:
    kw = step_kwargs(step, kw)
    params = fr.replicate(_donation_tree(F64), K)
    grads = {k: torch.randn_like(v) for k, v in params.items()}
    state = fr.replicate(_init(step, _donation_tree(F64), kw), K)
    lrs = torch.tensor([kw["lr"] * s for s in SCALES], dtype=F64)
    rest = {k: v for k, v in kw.items() if k != "lr"}

    def run(donate: bool) -> Callable[..., Any]:
        return vmap(lambda p, g, s, lr: step.opt.step(p, g, s, lr=lr, where=step.where, donate=donate, **rest))

    pure_p, pure_s = run(False)(params, grads, state, lrs)
    ptrs = {k: v.data_ptr() for k, v in params.items()}
    run(True)(params, grads, state, lrs)
    for k in params:
        assert torch.equal(params[k], pure_p[k]) and params[k].data_ptr() == ptrs[k], k
    for key in pure_s:
        for (path, a), (_, e) in zip(tensors_of(state[key]), tensors_of(pure_s[key])):
            assert torch.equal(a, e), (key, path)


# --------------------------------------------------------------------- hypergradients
X_FIT = torch.randn(16, 4, generator=torch.Generator().manual_seed(3), dtype=F64)
Y_FIT = torch.sin(X_FIT @ torch.randn(4, 3, generator=torch.Generator().manual_seed(4), dtype=F64))


def _fit_loss(p: dict[str, torch.Tensor]) -> torch.Tensor:
    h = torch.tanh(X_FIT @ p["0.weight"].T + p["0.bias"])
    return ((h @ p["2.weight"].T + p["2.bias"] - Y_FIT) ** 2).mean()


@pytest.mark.parametrize("step,kw", compose_cases(STEPS))
def test_hypergradient_wrt_lr_matches_finite_differences(step: Step, kw: dict[str, Any]) -> None:
    """d loss / d lr through unrolled steps: torch.func.grad (no flag needed), plain autograd
    with ``differentiable=True``, and a central finite difference agree, through
    ``step.unrolled`` steps."""
    kw = {k: v for k, v in step_kwargs(step, kw).items() if k not in ("lr", "maximize")}
    steps = step.unrolled

    def run(lr: torch.Tensor, **flags: Any) -> torch.Tensor:
        params = mlp_params(F64)
        if flags:  # plain autograd: the task gradient itself differentiable (create_graph)
            params = {k: v.requires_grad_() for k, v in params.items()}
        state = _init(step, params, kw)
        for _ in range(steps):
            g = torch.func.grad(_fit_loss)(params) if not flags else dict(zip(params, torch.autograd.grad(
                _fit_loss(params), list(params.values()), create_graph=True)))
            params, state = step.opt.step(params, g, state, lr=lr, where=step.where, **kw, **flags)
        return _fit_loss(params)

    lr, h = 0.01, 1e-6
    hyper = torch.func.grad(run)(torch.tensor(lr, dtype=F64))
    fd = (run(torch.tensor(lr + h, dtype=F64)) - run(torch.tensor(lr - h, dtype=F64))) / (2 * h)
    assert hyper.abs() > 1e-4
    torch.testing.assert_close(hyper, fd, rtol=1e-5, atol=1e-9)
    lr_t = torch.tensor(lr, dtype=F64, requires_grad=True)
    (auto,) = torch.autograd.grad(run(lr_t, differentiable=True), lr_t)
    torch.testing.assert_close(auto, hyper, rtol=1e-10, atol=1e-14)
