"""fr.rmsprop, fr.adagrad, fr.muon and fr.lion compose: an ensemble under ``vmap`` with every
hyperparameter batched (the stacked path and the per-leaf path) against a loop, stacked
params and states, ``torch.compile(fullgraph=True)`` with tensor hyperparameters and no
recompile, donated against pure bit for bit, pure calls that change nothing, and
hypergradients through the steps."""

from __future__ import annotations

from typing import Any, Callable

import pytest
import torch
from torch._dynamo.testing import CompileCounter
from torch.func import vmap

import funcreg as fr
from funcreg import _stacked
from optim_helpers import (  # noqa: F401  (_one_thread is an autouse fixture)
    _one_thread,
    assert_untouched,
    clone_tree,
    grad_sequence,
    mlp_params,
    snapshot,
    tensors_of,
)
from registry import Step, compose_cases, step_kwargs

# Inductor's import warns about torch.jit internals: not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:.*torch.jit.script_method.*:DeprecationWarning")

F64 = torch.float64
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


def _member(h: dict[str, Any], i: int) -> dict[str, Any]:
    return {k: tuple(b[i] for b in v) if isinstance(v, tuple) else v[i] for k, v in h.items()}


def _stack(trees: list[Any]) -> Any:
    if isinstance(trees[0], dict):
        return {k: _stack([t[k] for t in trees]) for k in trees[0]}
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
@pytest.mark.parametrize("step,kw", compose_cases())
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
    init = {**kw, **_member(hypers, 0)}

    def run(p: Any, h: dict[str, Any], *gs: Any) -> Any:
        s = _init(step, p, init)
        for g in gs:
            p, s = step.opt.step(p, g, s, where=step.where, **static, **h)
        return {**p, **{f"state.{key}.{k}": v for key, tree in s.items() for k, v in tree.items() if v is not None}}

    args = (_stack(members), hypers, *[_stack([g[t] for g in grads]) for t in range(4)])
    got = vmap(run)(*args)
    assert len(stacked) == 4, "the stacked path was not taken"
    with fr._dispatch.forced("composable"):
        per_leaf = vmap(run)(*args)
    for i in range(K):
        loop = run(members[i], _member(hypers, i), *grads[i])
        _close({k: v[i] for k, v in got.items()}, loop, f"stacked, member {i}:")
        _close({k: v[i] for k, v in per_leaf.items()}, loop, f"per-leaf, member {i}:",
               atol=2e-3 if step.name == "muon" else 1e-12)
    # the members differ: the batch carried different hyperparameters
    assert not torch.allclose(got["0.weight"][0] - members[0]["0.weight"], got["0.weight"][1] - members[1]["0.weight"])


@pytest.mark.parametrize("step,kw", compose_cases())
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
DTYPES = [torch.float32, torch.float64, torch.bfloat16]


def _donation_tree(dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Matrices of two aspect ratios, a vector and a 0-d leaf (Muon takes the matrices)."""
    g = torch.Generator().manual_seed(0)
    shapes = {"0.weight": (6, 3), "0.bias": (6,), "1.weight": (2, 6), "scale": ()}
    return {k: torch.randn(s, generator=g, dtype=F64).to(dtype) for k, s in shapes.items()}


@pytest.mark.parametrize("route", ["fast", "foreach", "composable"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("step,kw", compose_cases())
def test_donated_step_equals_pure_bit_for_bit(step: Step, kw: dict[str, Any], dtype: torch.dtype, route: str) -> None:
    """The pure call's values, written into the donated params and state (the same tensors
    come back, in their own storage), with ``None`` gradients on changing leaves; the
    gradients and tensor hyperparameters stay as they were."""
    kw = step_kwargs(step, kw)
    if route == "foreach":
        if dtype == torch.bfloat16 and "betas" in step.hypers:
            pytest.skip("tensor betas are cast to the leaves' dtype, and 0.999 is 1.0 in bfloat16")
        kw = step.tensors(kw)
    params = _donation_tree(dtype)
    pure_p, pure_s = params, _init(step, params, kw)
    don_p, don_s = clone_tree(params), _init(step, params, kw)
    gen = torch.Generator().manual_seed(1)
    with fr._dispatch.forced("composable" if route == "composable" else None):
        for t in range(3):
            g = {k: None if k == ("0.weight" if t == 1 else "scale") else
                 torch.randn(v.shape, generator=gen, dtype=F64).to(dtype) for k, v in params.items()}
            keep = snapshot(g, {k: v for k, v in kw.items() if isinstance(v, torch.Tensor)})
            pure_p, pure_s = step.opt.step(pure_p, g, pure_s, where=step.where, **kw)
            ptrs = {k: v.data_ptr() for k, v in don_p.items()}
            out_p, out_s = step.opt.step(don_p, g, don_s, where=step.where, donate=True, **kw)
            assert_untouched(keep)
            for k in params:
                assert out_p[k] is don_p[k] and don_p[k].data_ptr() == ptrs[k], f"step {t}: {k} not in place"
                assert torch.equal(out_p[k], pure_p[k]), f"step {t}: params {k} not bit-equal to the pure call"
            for key in pure_s:
                for k in params:
                    a, e = out_s[key][k], pure_s[key][k]
                    assert (a is None) == (e is None) and (a is None or torch.equal(a, e)), f"step {t}: {key} {k}"
                    assert a is don_s[key][k], f"step {t}: state[{key!r}][{k!r}] is not the donated tensor"
            don_p, don_s = out_p, out_s


@pytest.mark.parametrize("step,kw", compose_cases())
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


# ---------------------------------------------------------------------------- purity
@pytest.mark.parametrize("route", ["fast", "foreach", "composable"])
@pytest.mark.parametrize("step,kw", compose_cases())
def test_pure_steps_change_nothing_and_share_no_memory(step: Step, kw: dict[str, Any], route: str) -> None:
    kw = step_kwargs(step, kw)
    if route == "foreach":
        kw = step.tensors(kw)
    params = mlp_params(F64)
    state = _init(step, params, kw)
    with fr._dispatch.forced("composable" if route == "composable" else None):
        for g in grad_sequence(params, 3):
            snap = snapshot(params, g, state, {k: v for k, v in kw.items() if isinstance(v, torch.Tensor)},
                            [b for b in kw.get("betas", ()) if isinstance(b, torch.Tensor)])
            new_p, new_s = step.opt.step(params, g, state, where=step.where, **kw)
            assert_untouched(snap)
            inputs = {x.untyped_storage().data_ptr() for _, x in tensors_of((params, g, state))}
            passed = {id(x) for _, x in tensors_of((params, state))}
            for path, x in tensors_of((new_p, new_s)):
                if id(x) not in passed:  # a leaf the step does not update may pass through
                    assert x.untyped_storage().data_ptr() not in inputs, f"output {path} aliases an input"
            params, state = new_p, new_s


# --------------------------------------------------------------------- hypergradients
X = torch.randn(16, 4, generator=torch.Generator().manual_seed(3), dtype=F64)
Y = torch.sin(X @ torch.randn(4, 3, generator=torch.Generator().manual_seed(4), dtype=F64))


def _loss(p: dict[str, torch.Tensor]) -> torch.Tensor:
    h = torch.tanh(X @ p["0.weight"].T + p["0.bias"])
    return ((h @ p["2.weight"].T + p["2.bias"] - Y) ** 2).mean()


@pytest.mark.parametrize("step,kw", compose_cases())
def test_hypergradient_wrt_lr_matches_finite_differences(step: Step, kw: dict[str, Any]) -> None:
    """d loss / d lr through unrolled steps: torch.func.grad (no flag needed), plain autograd
    with ``differentiable=True``, and a central finite difference agree. Muon and Lion take
    one step: through later steps the bfloat16 rounding (Muon) and the sign (Lion) make
    the loss piecewise constant in lr at a finite difference's scale."""
    kw = {k: v for k, v in step_kwargs(step, kw).items() if k not in ("lr", "maximize")}
    steps = 1 if step.name in ("muon", "lion") else 3

    def run(lr: torch.Tensor, **flags: Any) -> torch.Tensor:
        params = mlp_params(F64)
        if flags:  # plain autograd: the task gradient itself differentiable (create_graph)
            params = {k: v.requires_grad_() for k, v in params.items()}
        state = _init(step, params, kw)
        for _ in range(steps):
            g = torch.func.grad(_loss)(params) if not flags else dict(zip(params, torch.autograd.grad(
                _loss(params), list(params.values()), create_graph=True)))
            params, state = step.opt.step(params, g, state, lr=lr, where=step.where, **kw, **flags)
        return _loss(params)

    lr, h = 0.01, 1e-6
    hyper = torch.func.grad(run)(torch.tensor(lr, dtype=F64))
    fd = (run(torch.tensor(lr + h, dtype=F64)) - run(torch.tensor(lr - h, dtype=F64))) / (2 * h)
    assert hyper.abs() > 1e-4
    torch.testing.assert_close(hyper, fd, rtol=1e-5, atol=1e-9)
    lr_t = torch.tensor(lr, dtype=F64, requires_grad=True)
    (auto,) = torch.autograd.grad(run(lr_t, differentiable=True), lr_t)
    torch.testing.assert_close(auto, hyper, rtol=1e-10, atol=1e-14)
