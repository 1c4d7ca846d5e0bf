"""Donation (``donate=True``): the values of the pure call, bit for bit on the same path,
written into the donated inputs' own storage; everything not donated left untouched; and
every donation that cannot be honoured refused before anything is written.

Every family and projection donated: bit-equal to the pure call in the donated storage, in blocks, inside vmap, and refused before anything is written.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch._dynamo
from torch.func import grad, jacrev, vmap

import funcreg as fr
from conftest import (
    REFERENCED,
    Family,
)
from optim_helpers import (
    _one_thread,  # noqa: F401  (autouse fixture)
    assert_untouched,
    clone_tree,
    snapshot,
)
from registry import PROJECTIONS, Step, donation_cases, fused_cases, step_kwargs

forced = fr._dispatch.forced
PATHS = ["fast", "composable"]


def _tree(dtype: torch.dtype, seed: int = 0) -> dict[str, torch.Tensor]:
    """Leaves of every kind a model has, a 0-d one and an empty one included."""
    g = torch.Generator().manual_seed(seed)
    shapes = {"0.weight": (4, 3), "0.bias": (4,), "1.weight": (2, 4, 3), "scale": (), "empty": (0, 3)}
    return {k: (torch.randn(s, generator=g, dtype=torch.float64) * 0.6).to(dtype) for k, s in shapes.items()}


def _grads(params: dict[str, torch.Tensor], seed: int = 1, none: str | None = "0.bias") -> dict[str, Any]:
    g = torch.Generator().manual_seed(seed)
    return {k: (None if k == none else torch.randn(v.shape, generator=g, dtype=torch.float64).to(v.dtype))
            for k, v in params.items()}


def _ptrs(tree: dict[str, Any]) -> dict[str, int]:
    return {k: v.untyped_storage().data_ptr() for k, v in tree.items() if v is not None}


def _assert_equal(actual: dict[str, Any], expected: dict[str, Any], what: str) -> None:
    assert list(actual) == list(expected), what
    for k in expected:
        if expected[k] is None:
            assert actual[k] is None, f"{what} {k}"
        else:
            assert actual[k].dtype == expected[k].dtype, f"{what} {k}"
            assert torch.equal(actual[k], expected[k]), f"{what} {k}: not bit-equal to the pure call"


def _assert_in_place(out: dict[str, Any], donated: dict[str, Any], ptrs: dict[str, int], what: str) -> None:
    for k, x in donated.items():
        if x is None:
            assert out[k] is None
            continue
        assert out[k] is x, f"{what} {k}: the returned leaf is not the donated tensor"
        assert x.untyped_storage().data_ptr() == ptrs[k], f"{what} {k}: storage changed"


# ---------------------------------------------------------------------- penalty families
DTYPES = [torch.float32, torch.float64, torch.bfloat16]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("fam, lam", [
    pytest.param(f, lam, id=f"{f.name}-{lam}") for f in REFERENCED
    for lam in ("float", "tensor", "element") if f.separable or lam != "element"  # group lasso: one λ per leaf
])
def test_donated_add_grad_and_prox_equal_pure(fam: Family, dtype: torch.dtype, path: str, lam: str) -> None:
    params = _tree(dtype)
    grads = _grads(params)
    opts = fam.options(params)
    lam_value: Any = {"float": 0.3, "tensor": torch.tensor(0.3, dtype=torch.float64),
                      "element": {k: torch.full(v.shape, 0.2, dtype=dtype) for k, v in params.items()}}[lam]
    step = torch.tensor(0.7)
    with forced(path):
        pure_g = fam.penalty.add_grad(grads, params, lam_value, **opts)
        pure_p = fam.penalty.prox(params, lam_value, step, **opts)

        donated_g = clone_tree(grads)
        ptrs = _ptrs(donated_g)
        keep = snapshot(params, lam_value, opts.get("anchor"))
        out_g = fam.penalty.add_grad(donated_g, params, lam_value, donate=True, **opts)
        assert_untouched(keep)
        _assert_equal(out_g, pure_g, "add_grad")
        _assert_in_place(out_g, donated_g, ptrs, "add_grad")

        donated_p = clone_tree(params)
        ptrs = _ptrs(donated_p)
        keep = snapshot(lam_value, step, opts.get("anchor"))
        out_p = fam.penalty.prox(donated_p, lam_value, step, donate=True, **opts)
        assert_untouched(keep)
        _assert_equal(out_p, pure_p, "prox")
        _assert_in_place(out_p, donated_p, ptrs, "prox")


def test_unselected_leaves_and_none_gradients_are_not_written() -> None:
    params, grads = _tree(torch.float32), _grads(_tree(torch.float32))
    donated = clone_tree(grads)
    keep = snapshot({k: donated[k] for k in ("0.weight", "1.weight") if k in donated})
    out = fr.l1.add_grad(donated, params, 0.1, where=fr.select.exclude("weight"), donate=True)
    assert_untouched(keep)
    assert out["0.bias"] is None
    donated = clone_tree(params)
    keep = snapshot({k: donated[k] for k in ("0.bias", "scale")})
    out = fr.l1.prox(donated, 0.1, 1.0, where=fr.select.weights, donate=True)
    assert_untouched(keep)
    assert out["0.bias"] is donated["0.bias"]


def test_large_donated_tree_is_processed_in_bounded_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunks of the fast path (bounded scratch, for math that needs whole leaves, such as
    group norms) give the same bits as one chunk."""
    params = {f"w{i}": torch.randn(50, 40) for i in range(6)}
    grads = {k: torch.randn_like(v) for k, v in params.items()}
    pure = fr.group_lasso.add_grad(grads, params, 0.01)
    monkeypatch.setattr(fr._dispatch, "CHUNK", 4000)  # two leaves per chunk
    seen: list[int] = []
    op = fr.group_lasso._ops["add_grad"]
    real = op.body

    def spy(ops: Any, **kw: Any) -> Any:
        seen.append(len(kw["grads"]))
        return real(ops, **kw)

    monkeypatch.setattr(op, "body", spy)
    donated = clone_tree(grads)
    out = fr.group_lasso.add_grad(donated, params, 0.01, donate=True)
    assert seen == [2, 2, 2]
    _assert_equal(out, pure, "chunked add_grad")


@pytest.mark.parametrize("fam", [f for f in REFERENCED if f.separable], ids=lambda f: f.name)
def test_donated_elementwise_calls_work_in_blocks(fam: Family, monkeypatch: pytest.MonkeyPatch) -> None:
    """A leaf larger than a block is cut into flat views; a strided leaf goes whole; the
    bits are those of the pure call."""
    gen = torch.Generator().manual_seed(3)
    params = {"big": torch.randn(37, 29, generator=gen), "small": torch.randn(5, generator=gen),
              "strided": torch.randn(6, 8, generator=gen).t(), "scale": torch.randn((), generator=gen)}
    grads = {k: torch.randn(v.shape, generator=gen) for k, v in params.items()}
    opts = fam.options(params)
    lam = {k: torch.rand(v.shape, generator=gen) for k, v in params.items()}  # per element
    monkeypatch.setattr(fr._dispatch, "BLOCK_BYTES", 256)  # 64 float32 values a block
    pure_g = fam.penalty.add_grad(grads, params, lam, **opts)
    pure_p = fam.penalty.prox(params, lam, 0.3, **opts)
    donated = clone_tree(grads)
    ptrs = _ptrs(donated)
    _assert_in_place(fam.penalty.add_grad(donated, params, lam, donate=True, **opts), donated, ptrs, "add_grad")
    _assert_equal(donated, pure_g, "blocked add_grad")
    donated = clone_tree(params)
    ptrs = _ptrs(donated)
    _assert_in_place(fam.penalty.prox(donated, lam, 0.3, donate=True, **opts), donated, ptrs, "prox")
    _assert_equal(donated, pure_p, "blocked prox")


# ---------------------------------------------------------------------- optimizer steps
ROUTES = ["fused", "foreach", "composable"]


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("step,kw", donation_cases())
def test_donated_step_equals_pure(step: Step, kw: dict[str, Any], dtype: torch.dtype, route: str) -> None:
    """Every step of the registry (its compose config and its ``donation`` cases): the pure
    call's values, bit for bit, written into the donated params and state (the same
    tensors come back, in their own storage), with ``None`` gradients on changing leaves;
    the gradients and tensor hyperparameters stay as they were."""
    kw = step_kwargs(step, kw)
    where = kw.pop("where", step.where)
    if route == "foreach":  # every hyperparameter a tensor: the foreach ops, not the fused kernel
        if dtype == torch.bfloat16 and "betas" in step.hypers:
            pytest.skip("tensor betas are cast to the leaves' dtype, and 0.999 is 1.0 in bfloat16")
        kw = step.tensors(kw)
    params = _tree(dtype)
    pure_p, pure_s = params, step.opt.init(params, **step.init(kw))
    don_p, don_s = clone_tree(params), step.opt.init(params, **step.init(kw))
    with forced("composable" if route == "composable" else None):
        for t in range(3):
            g = _grads(params, seed=t + 1, none="0.bias" if t != 1 else "scale")
            keep = snapshot(g, {k: v for k, v in kw.items() if isinstance(v, torch.Tensor)},
                            [b for b in kw.get("betas", ()) if isinstance(b, torch.Tensor)])
            pure_p, pure_s = step.opt.step(pure_p, g, pure_s, where=where, **kw)
            ptrs = _ptrs(don_p)
            state_ptrs = {key: _ptrs(tree) for key, tree in don_s.items()}
            out_p, out_s = step.opt.step(don_p, g, don_s, where=where, donate=True, **kw)
            assert_untouched(keep)
            _assert_equal(out_p, pure_p, f"step {t} params")
            _assert_in_place(out_p, don_p, ptrs, f"step {t} params")
            assert list(out_s) == list(pure_s), f"step {t} state entries"
            for key in pure_s:
                _assert_equal(out_s[key], pure_s[key], f"step {t} state[{key!r}]")
                _assert_in_place(out_s[key], don_s[key], state_ptrs[key], f"step {t} state[{key!r}]")
            don_p, don_s = out_p, out_s


def test_donated_fused_adamw_is_torch_optim_fused(monkeypatch: pytest.MonkeyPatch) -> None:
    """No clone on the fused route: the kernel runs on the donated tensors themselves,
    and the trajectory is torch.optim's fused AdamW, bit for bit."""
    copy = fr._ops.owned_copy

    def no_copy(xs: Any) -> Any:
        out = copy(xs)
        assert out is xs, "a donated fused step copied its params or state"
        return out

    monkeypatch.setattr(fr._ops, "owned_copy", no_copy)
    params = {k: v for k, v in _tree(torch.float32).items() if k != "empty"}
    ref = {k: v.clone() for k, v in params.items()}
    opt = torch.optim.AdamW(list(ref.values()), lr=0.01, weight_decay=0.1, fused=True)
    state = fr.adamw.init(params)
    for t in range(5):
        g = _grads(params, seed=t + 1, none=None)
        for k, p in ref.items():
            p.grad = g[k].clone()
        opt.step()
        params, state = fr.adamw.step(params, g, state, lr=0.01, weight_decay=0.1, donate=True)
    for k in ref:
        assert torch.equal(params[k], ref[k]), k


def _strided(layout: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(buffer, param view of it, a contiguous gradient) for a strided param layout."""
    g = torch.Generator().manual_seed(3)
    if layout == "transposed":  # dense, but not in the gradient's order
        buf = torch.randn(3, 4, generator=g, dtype=torch.float64)
        return buf, buf.t(), torch.randn(4, 3, generator=g, dtype=torch.float64)
    buf = torch.randn(4, 6, generator=g, dtype=torch.float64)
    view = buf[:, :3] if layout == "column-slice" else buf[:, ::2]
    return buf, view, torch.randn(4, 3, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("layout", ["column-slice", "every-other-column", "transposed"])
@pytest.mark.parametrize("step,kw", fused_cases())
def test_steps_on_strided_leaves(step: Step, kw: dict[str, Any], layout: str) -> None:
    """torch's fused kernels walk memory as flat arrays, so a strided leaf must not reach
    them: pure and donated steps (every step with a fused kernel, on a config it fuses)
    give the composable path's values, and a donated view writes only its own elements of
    the buffer it lives in."""
    opt, kw = step.opt, step_kwargs(step, kw)
    init = step.init(kw)
    buf, view, g = _strided(layout)
    with forced("composable"):
        ref, _ = opt.step({"w": view}, {"w": g}, opt.init({"w": view}, **init), **kw)
    pure, _ = opt.step({"w": view}, {"w": g}, opt.init({"w": view}, **init), **kw)
    torch.testing.assert_close(pure["w"], ref["w"], rtol=1e-12, atol=1e-12)
    outside = torch.ones_like(buf, dtype=torch.bool)
    outside.as_strided(view.shape, view.stride(), view.storage_offset()).fill_(False)
    before = buf[outside].clone()
    out, _ = opt.step({"w": view}, {"w": g}, opt.init({"w": view}, **init), donate=True, **kw)
    assert out["w"] is view
    assert torch.equal(view, pure["w"])
    assert torch.equal(buf[outside], before), "the donated step wrote outside its view"


# ---------------------------------------------------------------------- a live nn.Module
def test_prox_into_a_live_module_after_torch_optim_step() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(32, 6), torch.randn(32, 2)
    ptrs = {k: p.data_ptr() for k, p in model.named_parameters()}
    for _ in range(3):
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        live = {k: p.detach() for k, p in model.named_parameters()}
        pure = fr.l1.prox(live, 0.05, 0.1, where=fr.select.weights)
        out = fr.l1.prox(live, 0.05, 0.1, where=fr.select.weights, donate=True)
        for k, p in model.named_parameters():
            assert out[k] is live[k] and p.data_ptr() == ptrs[k]
            assert torch.equal(p.detach(), pure[k]), k
    zeros = sum(int((p == 0).sum()) for k, p in model.named_parameters() if "weight" in k)
    assert zeros > 0  # the model itself holds exact zeros
    # and the module keeps training: autograd still works on the written parameters
    opt.zero_grad()
    torch.nn.functional.mse_loss(model(x), y).backward()
    assert all(p.grad is not None for p in model.parameters())


def test_live_parameters_that_require_grad_are_refused() -> None:
    model = torch.nn.Linear(3, 2)
    params = dict(model.named_parameters())
    keep = snapshot({k: p.detach() for k, p in params.items()})
    with pytest.raises(ValueError, match=r"params leaf 'weight'.*requires grad.*detach"):
        fr.l1.prox(params, 0.1, 1.0, donate=True)
    assert_untouched(keep)
    with torch.no_grad():  # allowed there: nothing records the write
        fr.l1.prox(params, 0.1, 1.0, donate=True)


# ---------------------------------------------------------------------- refused donations
def _tied() -> tuple[Any, Callable[[], Any]]:
    w = torch.randn(4, 3)
    return w, lambda: fr.l1.prox({"a": w, "b": w}, 0.1, 1.0, donate=True)


def _overlapping_views() -> tuple[Any, Callable[[], Any]]:
    flat = torch.randn(10)
    return flat, lambda: fr.l1.prox({"a": flat[:6], "b": flat[4:]}, 0.1, 1.0, donate=True)


def _unselected_alias() -> tuple[Any, Callable[[], Any]]:
    w = torch.randn(4, 3)
    return w, lambda: fr.l1.prox({"a": w, "b": w[1:]}, 0.1, 1.0, where=fr.select.only("^a$"), donate=True)


def _grads_is_params() -> tuple[Any, Callable[[], Any]]:
    w = torch.randn(4, 3)
    return w, lambda: fr.l1.add_grad({"a": w}, {"a": w}, 0.1, donate=True)


def _anchor_is_params() -> tuple[Any, Callable[[], Any]]:
    w = torch.randn(4, 3)
    return w, lambda: fr.l2_sp.prox({"a": w}, 0.1, 1.0, anchor={"a": w}, donate=True)


def _lam_is_params() -> tuple[Any, Callable[[], Any]]:
    w = torch.randn(4, 3)
    return w, lambda: fr.l1.prox({"a": w}, {"a": w}, 1.0, donate=True)


def _expanded() -> tuple[Any, Callable[[], Any]]:
    w = torch.randn(3)
    return w, lambda: fr.l1.prox({"a": w.expand(4, 3)}, 0.1, 1.0, donate=True)


def _step_grads_is_params() -> tuple[Any, Callable[[], Any]]:
    w = torch.randn(4, 3)
    state = fr.sgd.init({"a": w})
    return (w, state), lambda: fr.sgd.step({"a": w}, {"a": w}, state, lr=0.1, momentum=0.9, donate=True)


def _state_entries_alias() -> tuple[Any, Callable[[], Any]]:
    w, g = torch.randn(4, 3), torch.ones(4, 3)
    state = fr.adam.init({"a": w})
    state["exp_avg_sq"] = state["exp_avg"]
    return (w, g, state), lambda: fr.adam.step({"a": w}, {"a": g}, state, lr=0.1, donate=True)


def _shared_step_count() -> tuple[Any, Callable[[], Any]]:
    params = {"a": torch.randn(4, 3), "b": torch.randn(2)}
    grads = {k: torch.ones_like(v) for k, v in params.items()}
    state = fr.adam.init(params)
    state["step"]["b"] = state["step"]["a"]
    return (params, grads, state), lambda: fr.adam.step(params, grads, state, lr=0.1, donate=True)


def _hyper_is_params() -> tuple[Any, Callable[[], Any]]:
    lr = torch.tensor(0.1)
    state = fr.sgd.init({"lr": lr})
    return (lr, state), lambda: fr.sgd.step({"lr": lr}, {"lr": torch.tensor(1.0)}, state, lr=lr, donate=True)


def _interleaved_views() -> tuple[Any, Callable[[], Any]]:
    w = torch.randn(4, 6)
    return w, lambda: fr.l1.prox({"a": w[:, :3], "b": w[:, 3:]}, 0.1, 1.0, donate=True)


def _as_strided_overlap() -> tuple[Any, Callable[[], Any]]:
    base = torch.arange(12.0)  # rows two elements apart, four long: neighbours overlap
    return base, lambda: fr.l1.prox({"a": base.as_strided((4, 4), (2, 1))}, 0.5, 1.0, donate=True)


def _step_params_require_grad() -> tuple[Any, Callable[[], Any]]:
    w = torch.randn(4, 3, requires_grad=True)
    state = fr.adamw.init({"a": w.detach()})
    return (w.detach(), state), lambda: fr.adamw.step({"a": w}, {"a": torch.ones(4, 3)}, state, lr=0.1,
                                                       donate=True)


def _step_expanded_state() -> tuple[Any, Callable[[], Any]]:
    w = torch.randn(4, 3)
    state = fr.sgd.init({"a": w})
    state["momentum_buffer"] = {"a": torch.zeros(3).expand(4, 3)}
    return (w, state), lambda: fr.sgd.step({"a": w}, {"a": torch.ones(4, 3)}, state, lr=0.1, momentum=0.9,
                                           donate=True)


def _hyper_requires_grad() -> tuple[Any, Callable[[], Any]]:
    w, lam = torch.randn(4, 3), torch.tensor(0.1, requires_grad=True)
    return (w, lam.detach()), lambda: fr.l1.prox({"a": w}, lam, 1.0, donate=True)


def _params_require_grad_in_add_grad() -> tuple[Any, Callable[[], Any]]:
    w, g = torch.randn(4, 3, requires_grad=True), torch.randn(4, 3)
    return (w.detach(), g), lambda: fr.l1.add_grad({"a": g}, {"a": w}, 0.1, donate=True)


REFUSALS = [
    pytest.param(_interleaved_views, r"shares memory", id="interleaved-strided-views"),
    pytest.param(_hyper_requires_grad, r"lam leaf 'a' requires grad.*autograd history",
                 id="hyper-requires-grad"),
    pytest.param(_params_require_grad_in_add_grad, r"params leaf 'a' requires grad",
                 id="read-params-require-grad"),
    pytest.param(_tied, r"params leaf '(a|b)'.*shares memory with params leaf '(a|b)'", id="tied"),
    pytest.param(_overlapping_views, r"shares memory", id="overlapping-views"),
    pytest.param(_unselected_alias, r"params leaf 'a'.*shares memory with params leaf 'b'", id="unselected-alias"),
    pytest.param(_grads_is_params, r"grads leaf 'a'.*params leaf 'a'", id="grads-is-params"),
    pytest.param(_anchor_is_params, r"params leaf 'a'.*anchor leaf 'a'", id="anchor-is-params"),
    pytest.param(_lam_is_params, r"params leaf 'a'.*lam leaf 'a'", id="lam-is-params"),
    pytest.param(_expanded, r"params leaf 'a'.*overlap in memory.*expanded", id="expanded"),
    pytest.param(_step_params_require_grad, r"params leaf 'a'.*requires grad", id="step-params-require-grad"),
    pytest.param(_step_expanded_state, r"state\['momentum_buffer'\] leaf 'a'.*overlap in memory",
                 id="step-expanded-state"),
    pytest.param(_as_strided_overlap, r"params leaf 'a'.*may overlap in memory", id="as-strided-overlap"),
    pytest.param(_step_grads_is_params, r"(params|state\['momentum_buffer'\]) leaf 'a'.*grads leaf 'a'|"
                 r"grads leaf 'a'.*params leaf 'a'", id="step-grads-is-params"),
    pytest.param(_state_entries_alias, r"state\['exp_avg(_sq)?'\] leaf 'a'.*shares memory with state",
                 id="state-entries-alias"),
    pytest.param(_shared_step_count, r"state\['step'\] leaf '(a|b)'.*shares memory", id="shared-step-count"),
    pytest.param(_hyper_is_params, r"params leaf 'lr'.*shares memory with lr|lr.*params leaf 'lr'",
                 id="hyper-is-params"),
]


@pytest.mark.parametrize("case,match", REFUSALS)
def test_refused_donations_write_nothing(case: Callable[[], Any], match: str) -> None:
    inputs, call = case()
    keep = snapshot(inputs)
    with pytest.raises(ValueError, match=match):
        call()
    assert_untouched(keep)


def test_disjoint_views_of_one_buffer_may_be_donated() -> None:
    """A flat parameter buffer split into views (as FSDP1 keeps them) is no aliasing."""
    flat = torch.randn(20)
    params = {"a": flat[:12].view(4, 3), "b": flat[12:]}
    pure = fr.l1.prox(params, 0.3, 1.0)
    out = fr.l1.prox(params, 0.3, 1.0, donate=True)
    _assert_equal(out, pure, "views")
    assert torch.equal(flat[:12], pure["a"].reshape(-1))


# ---------------------------------------------------------------------- transforms
def test_donation_inside_vmap_writes_into_the_batched_inputs() -> None:
    """An ensemble step that donates its own members' params: in place in the stacked
    tensors (the vmapped inputs), with the values of the pure call."""
    params = fr.replicate(_tree(torch.float64), 3)
    lams = torch.tensor([0.0, 0.1, 0.5], dtype=torch.float64)
    pure = vmap(lambda p, lam: fr.l1.prox(p, lam, 1.0))(params, lams)
    donated = clone_tree(params)
    ptrs = _ptrs(donated)
    out = vmap(lambda p, lam: fr.l1.prox(p, lam, 1.0, donate=True))(donated, lams)
    for k in pure:
        assert torch.equal(out[k], pure[k]) and torch.equal(donated[k], pure[k]), k
        assert donated[k].untyped_storage().data_ptr() == ptrs[k]


def test_donation_inside_vmap_of_captured_params_stays_pure() -> None:
    """Params captured from outside vmap cannot hold a batch of results: not written."""
    params = _tree(torch.float64)
    keep = snapshot(params)
    lams = torch.tensor([0.0, 0.1, 0.5], dtype=torch.float64)
    out = vmap(lambda lam: fr.l1.prox(params, lam, 1.0, donate=True))(lams)
    pure = vmap(lambda lam: fr.l1.prox(params, lam, 1.0))(lams)
    assert_untouched(keep)
    for k in pure:
        assert torch.equal(out[k], pure[k]), k


@pytest.mark.parametrize("transform", ["grad", "jacrev"])
def test_donation_under_grad_and_jacrev_gives_the_pure_values(transform: str) -> None:
    params = {"w": torch.randn(3, 2, dtype=torch.float64), "b": torch.randn(3, dtype=torch.float64)}
    grads = {k: torch.randn_like(v) for k, v in params.items()}
    keep = snapshot(params, grads)

    def loss(p: dict[str, torch.Tensor], donate: bool) -> torch.Tensor:
        q = fr.l1.prox(p, 0.1, 1.0, donate=donate)
        g = fr.l2.add_grad(clone_tree(grads) if donate else grads, q, 0.2, donate=donate)
        q, _ = fr.sgd.step(q, g, fr.sgd.init(q), lr=0.1, momentum=0.5, donate=donate)
        return sum((v ** 3).sum() for v in q.values())

    fn = grad if transform == "grad" else jacrev
    got = fn(lambda p: loss(p, True))(params)
    want = fn(lambda p: loss(p, False))(params)
    assert_untouched(keep)
    for k in want:
        assert torch.equal(got[k], want[k]), k


def test_compiled_donated_step_and_prox_do_not_recompile() -> None:
    from torch._dynamo.testing import CompileCounter

    torch._dynamo.reset()
    counter = CompileCounter()

    def train_step(p: Any, g: Any, s: Any, lr: torch.Tensor, lam: torch.Tensor) -> Any:
        g = fr.l1.add_grad(g, p, lam, donate=True)
        p, s = fr.sgd.step(p, g, s, lr=lr, momentum=0.9, donate=True)
        return fr.l1.prox(p, lam, lr, donate=True), s

    compiled = torch.compile(train_step, backend=counter, fullgraph=True)
    params = {k: v for k, v in _tree(torch.float32).items() if k != "empty"}
    ref_p, ref_s = clone_tree(params), fr.sgd.init(params)
    don_p, don_s = clone_tree(params), fr.sgd.init(params)
    for t, (lr, lam) in enumerate([(0.1, 0.01), (0.05, 0.02), (0.2, 0.0)]):
        g = _grads(params, seed=t + 1, none=None)
        ref_g = fr.l1.add_grad(g, ref_p, lam)
        ref_p, ref_s = fr.sgd.step(ref_p, ref_g, ref_s, lr=lr, momentum=0.9)
        ref_p = fr.l1.prox(ref_p, lam, lr)
        ptrs = _ptrs(don_p)
        out_p, out_s = compiled(don_p, clone_tree(g), don_s, torch.tensor(lr), torch.tensor(lam))
        for k in ref_p:
            torch.testing.assert_close(out_p[k], ref_p[k], rtol=1e-6, atol=1e-6)
            torch.testing.assert_close(don_p[k], ref_p[k], rtol=1e-6, atol=1e-6)  # written in place
            assert don_p[k].untyped_storage().data_ptr() == ptrs[k]
            torch.testing.assert_close(don_s["momentum_buffer"][k], ref_s["momentum_buffer"][k],
                                       rtol=1e-6, atol=1e-6)
        don_p, don_s = out_p, out_s
    assert counter.frame_count == 1
    torch._dynamo.reset()


F64 = torch.float64
W = fr.select.weights






# ---------------------------------------------------------------------------- donation
def _donation_tree(dtype: torch.dtype) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(12)
    shapes = {"0.weight": (4, 3), "0.bias": (4,), "1.weight": (2, 4, 3), "2.weight": (4, 3), "scale": (), "empty": (3, 0)}
    return {k: (torch.randn(s, generator=g, dtype=F64) * 0.6).to(dtype) for k, s in shapes.items()}


DONATED: dict[str, Callable[..., Any]] = {
    "sparse_group_lasso": lambda p, **kw: fr.sparse_group_lasso.prox(p, 0.2, torch.tensor(0.7), l1_ratio=0.4, **kw),
    "nuclear_norm": lambda p, **kw: fr.nuclear_norm.prox(p, 0.3, 0.7, where=W, **kw),
    "mcp-firm": lambda p, **kw: fr.mcp.prox(p, 0.3, 0.7, **kw),
    "mcp-hard": lambda p, **kw: fr.mcp.prox(p, 0.3, 5.0, **kw),
    "mcp-tensor": lambda p, **kw: fr.mcp.prox(p, torch.tensor(0.3), torch.tensor(4.0), gamma=torch.tensor(3.0), **kw),
    "scad": lambda p, **kw: fr.scad.prox(p, 0.3, 0.7, **kw),
    "scad-hard": lambda p, **kw: fr.scad.prox(p, torch.tensor(0.3), 9.0, **kw),
    "l0": lambda p, **kw: fr.l0.prox(p, 0.1, 0.7, **kw),
    "l0-element": lambda p, **kw: fr.l0.prox(p, {k: torch.full(v.shape, 0.1, dtype=v.dtype) for k, v in p.items()}, 0.7, **kw),
    **{f"project.{k}": (lambda p, f=f, **kw: f(p, 0.5, **kw)) for k, f in PROJECTIONS.items()},
    "project.l1_ball-tensor": lambda p, **kw: fr.project.l1_ball(p, torch.tensor(0.5), **kw),
}


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", [torch.float32, F64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("name", list(DONATED))
def test_donated_prox_and_projection_equal_pure(name: str, dtype: torch.dtype, path: str) -> None:
    call = DONATED[name]
    with forced(path):
        pure = call(_donation_tree(dtype))
        donated = _donation_tree(dtype)
        ptrs = {k: v.untyped_storage().data_ptr() for k, v in donated.items()}
        out = call(donated, donate=True)
    for k, x in donated.items():
        assert out[k] is x, f"{k}: the returned leaf is not the donated tensor"
        assert x.untyped_storage().data_ptr() == ptrs[k], f"{k}: storage changed"
        assert out[k].dtype == pure[k].dtype and torch.equal(out[k], pure[k]), f"{k}: not bit-equal to the pure call"


DONATED_GRADS: dict[str, Callable[..., Any]] = {
    "sparse_group_lasso": lambda g, p, **kw: fr.sparse_group_lasso.add_grad(g, p, 0.2, l1_ratio=0.4, **kw),
    "nuclear_norm": lambda g, p, **kw: fr.nuclear_norm.add_grad(g, p, 0.3, where=W, **kw),
    "mcp": lambda g, p, **kw: fr.mcp.add_grad(g, p, 0.3, **kw),
    "mcp-tensor": lambda g, p, **kw: fr.mcp.add_grad(g, p, torch.tensor(0.3), gamma=torch.tensor(2.0), **kw),
    "scad": lambda g, p, **kw: fr.scad.add_grad(g, p, 0.3, **kw),
    "orthogonal": lambda g, p, **kw: fr.orthogonal.add_grad(g, p, 0.3, where=W, **kw),
}


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", [torch.float32, F64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("name", list(DONATED_GRADS))
def test_donated_add_grad_equals_pure(name: str, dtype: torch.dtype, path: str) -> None:
    """``.add_grad(..., donate=True)`` writes into the gradients (a None one stays None)."""
    call = DONATED_GRADS[name]
    params = _donation_tree(dtype)

    def grads() -> dict[str, Any]:
        g = {k: v.flip(0) + 0.25 if v.ndim else v + 0.25 for k, v in _donation_tree(dtype).items()}
        g["0.bias"] = None
        return g

    keep = snapshot(params)
    with forced(path):
        pure = call(grads(), params)
        donated = grads()
        ptrs = {k: v.untyped_storage().data_ptr() for k, v in donated.items() if v is not None}
        out = call(donated, params, donate=True)
    assert_untouched(keep)
    for k, x in donated.items():
        if x is None:
            assert out[k] is None and pure[k] is None, k
            continue
        assert out[k] is x and x.untyped_storage().data_ptr() == ptrs[k], f"{k}: not written in place"
        assert out[k].dtype == pure[k].dtype and torch.equal(out[k], pure[k]), f"{k}: not bit-equal to the pure call"


def test_donation_inside_vmap_writes_into_the_ensemble() -> None:
    params = fr.replicate(_donation_tree(F64), 3)
    steps_ = torch.tensor([0.5, 3.0, 8.0], dtype=F64)  # firm, hard and hard thresholding
    pure = torch.func.vmap(lambda p, s: fr.mcp.prox(p, 0.3, s))(params, steps_)
    ptrs = {k: v.untyped_storage().data_ptr() for k, v in params.items()}
    out = torch.func.vmap(lambda p, s: fr.mcp.prox(p, 0.3, s, donate=True))(params, steps_)
    for k in pure:
        assert torch.equal(out[k], pure[k]) and torch.equal(params[k], pure[k]), k
        assert params[k].untyped_storage().data_ptr() == ptrs[k]


def _tied_params() -> dict[str, torch.Tensor]:
    w = torch.randn(4, 3)
    return {"0.weight": w, "2.weight": w}


REFUSED = {
    "tied": (_tied_params, r"params leaf '[02].weight'.*shares memory with params leaf '[02].weight'"),
    "requires-grad": (lambda: {"0.weight": torch.randn(4, 3, requires_grad=True)}, r"'0.weight'.*requires grad"),
    "expanded": (lambda: {"0.weight": torch.randn(3).expand(4, 3)}, r"'0.weight'.*overlap in memory"),
}


@pytest.mark.parametrize("case", list(REFUSED))
@pytest.mark.parametrize("name", list(DONATED))
def test_refused_donated_proxes_and_projections_write_nothing(name: str, case: str) -> None:
    make, match = REFUSED[case]
    call = DONATED[name]
    params = make()
    keep = snapshot({k: v.detach() for k, v in params.items()})
    with pytest.raises(ValueError, match=match):
        call(params, donate=True)
    assert_untouched(keep)


def test_refused_donations_of_hyperparameters_read_from_params() -> None:
    w, r = torch.randn(4, 3), torch.tensor(0.5)
    with pytest.raises(ValueError, match=r"params leaf 'a'.*radius leaf 'a'"):
        fr.project.l1_ball({"a": w}, {"a": w[0, 0]}, donate=True)
    with pytest.raises(ValueError, match=r"params leaf 'a'.*low leaf 'a'"):
        fr.project.box({"a": w}, {"a": w}, 1.0, donate=True)
    with pytest.raises(ValueError, match=r"params leaf 'r'.*shares memory"):
        fr.project.max_norm({"a": w, "r": r}, r, where=fr.select.only("^r$"), donate=True)
    with pytest.raises(ValueError, match=r"params leaf 'a'.*step leaf 'a'"):
        fr.mcp.prox({"a": w}, 0.1, {"a": w}, donate=True)
    with pytest.raises(ValueError, match=r"params leaf 'a'.*gamma"):
        fr.scad.prox({"a": w, "g": r}, 0.1, 1.0, gamma=w[1, 1], where=fr.select.only("^a$"), donate=True)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("name", ["mcp-firm", "mcp-hard", "mcp-tensor", "scad", "scad-hard", "l0", "l0-element",
                                  "project.box", "project.box-upper", "project.non_negative"])
def test_donated_elementwise_calls_cut_into_blocks_equal_pure(name: str, path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A donated elementwise call works through CPU leaves in blocks (flat views, their
    per-element hyperparameters cut alike): blocks of 40 bytes cut every leaf mid-way."""
    monkeypatch.setattr(fr._dispatch, "BLOCK_BYTES", 40)
    call = DONATED[name]
    with forced(path):
        pure = call(_donation_tree(torch.float32))
        donated = _donation_tree(torch.float32)
        out = call(donated, donate=True)
    for k, x in donated.items():
        assert out[k] is x and torch.equal(x, pure[k]), k
