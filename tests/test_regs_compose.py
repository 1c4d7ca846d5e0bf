"""The new families and the projections under torch.func and torch.compile, and the
engineering contract: vmap over a batched λ (and γ, l1_ratio, radius) equals a loop, the
fast and composable paths agree, no call mutates its inputs, donated calls equal pure ones
bit for bit in the donated storage (and refuse what they cannot honour), and
torch.compile(fullgraph=True) with tensor hyperparameters never recompiles."""

from __future__ import annotations

from typing import Any, Callable

import pytest
import torch
import torch._dynamo
from hypothesis import given, settings
from hypothesis import strategies as st
from torch._dynamo.testing import CompileCounter

import funcreg as fr
from conftest import assert_untouched, is_float, lams, snapshot, steps, trees, walk
from registry import BY_NAME, VARIANTS

forced = fr._dispatch.forced
PATHS = ["fast", "composable"]
F64 = torch.float64
W = fr.select.weights

WITH_GRAD = [k for k, v in VARIANTS.items() if v.family.has("grad")]
WITH_PROX = [k for k, v in VARIANTS.items() if v.family.has("prox")]
# each projection as fn(params, radius-like tensor or number, **kw)
PROJECTIONS: dict[str, Callable[..., Any]] = {
    "max_norm": lambda p, r, **kw: fr.project.max_norm(p, r, where=W, **kw),
    "max_norm-dim1": lambda p, r, **kw: fr.project.max_norm(p, r, dim=1, where=W, **kw),
    "l2_ball": lambda p, r, **kw: fr.project.l2_ball(p, r, **kw),
    "l1_ball": lambda p, r, **kw: fr.project.l1_ball(p, r, **kw),
    "box": lambda p, r, **kw: fr.project.box(p, -r, r, **kw),
    "box-upper": lambda p, r, **kw: fr.project.box(p, None, r, **kw),
    "non_negative": lambda p, r, **kw: fr.project.non_negative(p, **kw),
}


def _params(seed: int = 0, batch: int | None = None, dtype: torch.dtype = F64) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    pre = (batch,) if batch else ()
    shapes = {"l1.weight": (4, 3), "l1.bias": (4,), "l2.weight": (2, 3, 2), "l3.weight": (4, 3), "s": ()}
    p = {k: torch.randn((*pre, *s), generator=g, dtype=F64).to(dtype) for k, s in shapes.items()}
    p["l1.weight"][..., 0, :] *= 0.01  # a row the group families and SVT zero
    return p


def _stack(outs: list[Any]) -> Any:
    if isinstance(outs[0], torch.Tensor):
        return torch.stack(outs)
    return {k: torch.stack([o[k] for o in outs]) for k in outs[0]}


def _close(a: Any, b: Any, **kw: Any) -> None:
    if isinstance(a, torch.Tensor):
        torch.testing.assert_close(a, b, **kw)
        return
    assert list(a) == list(b)
    for k in a:
        torch.testing.assert_close(a[k], b[k], msg=k, **kw)


LAMS = torch.tensor([0.0, 0.05, 0.3, 1.0, 2.5], dtype=F64)
STEPS = torch.tensor([0.0, 0.5, 1.0, 3.0, 10.0], dtype=F64)  # MCP's and SCAD's regimes all
GAMMAS = torch.tensor([1.2, 1.5, 3.0, 3.7, 6.0], dtype=F64)


# ------------------------------------------------------------------------------- vmap
@pytest.mark.parametrize("name", list(VARIANTS))
def test_vmap_over_lam_equals_a_loop(name: str) -> None:
    penalty, p, grads = VARIANTS[name].penalty, _params(), _params(1)
    opts = VARIANTS[name].options(p)
    checks: list[tuple[Callable[..., Any], tuple[torch.Tensor, ...]]] = [(lambda a: penalty(p, a, **opts), (LAMS,))]
    if name in WITH_GRAD:
        checks += [(lambda a: penalty.grad(p, a, **opts), (LAMS,)),
                   (lambda a: penalty.add_grad(grads, p, a, **opts), (LAMS,))]
    if name in WITH_PROX:
        checks += [(lambda a: penalty.prox(p, a, 0.7, **opts), (LAMS,)),
                   (lambda a, s: penalty.prox(p, a, s, **opts), (LAMS, STEPS))]
    for fn, args in checks:
        batched = torch.func.vmap(fn)(*args)
        _close(batched, _stack([fn(*(a[i] for a in args)) for i in range(len(args[0]))]))


@pytest.mark.parametrize("name", list(VARIANTS))
def test_vmap_over_stacked_params_and_lam(name: str) -> None:
    """An ensemble: stacked params, one λ (and step) per member."""
    penalty, pb = VARIANTS[name].penalty, _params(2, batch=5)
    members = [{k: v[i] for k, v in pb.items()} for i in range(5)]
    opts = VARIANTS[name].options(members[0])
    if name in WITH_PROX:
        out = torch.func.vmap(lambda q, a, s: penalty.prox(q, a, s, **opts))(pb, LAMS, STEPS)
        _close(out, _stack([penalty.prox(q, a, s, **opts) for q, a, s in zip(members, LAMS, STEPS)]))
    if name in WITH_GRAD:
        out = torch.func.vmap(lambda q, a: penalty.grad(q, a, **opts))(pb, LAMS)
        _close(out, _stack([penalty.grad(q, a, **opts) for q, a in zip(members, LAMS)]))


@pytest.mark.parametrize("penalty", [fr.mcp, fr.scad], ids=["mcp", "scad"])
def test_vmap_over_gamma_equals_a_loop(penalty: fr.Penalty) -> None:
    p = _params()
    for fn in (lambda g: penalty(p, 0.5, gamma=g), lambda g: penalty.grad(p, 0.5, gamma=g),
               lambda g: penalty.prox(p, 0.5, 2.0, gamma=g), lambda g, s: penalty.prox(p, 0.5, s, gamma=g)):
        args = (GAMMAS,) if fn.__code__.co_argcount == 1 else (GAMMAS, STEPS)
        _close(torch.func.vmap(fn)(*args), _stack([fn(*(a[i] for a in args)) for i in range(5)]))


def test_vmap_over_l1_ratio_equals_a_loop() -> None:
    p, grads = _params(), _params(3)
    ratios = torch.tensor([0.0, 0.2, 0.5, 0.9, 1.0], dtype=F64)
    for fn in (lambda r: fr.sparse_group_lasso(p, 0.5, l1_ratio=r),
               lambda r: fr.sparse_group_lasso.prox(p, 0.5, 1.0, l1_ratio=r),
               lambda r: fr.sparse_group_lasso.grad(p, 0.5, l1_ratio=r),
               lambda r: fr.sparse_group_lasso.lambda_max(grads, l1_ratio=r)):
        _close(torch.func.vmap(fn)(ratios), _stack([fn(r) for r in ratios]))


@pytest.mark.parametrize("name", list(PROJECTIONS))
def test_vmap_over_radius_equals_a_loop(name: str) -> None:
    project = PROJECTIONS[name]
    p = _params()
    radii = torch.tensor([0.0, 0.1, 0.5, 2.0, 100.0], dtype=F64)
    _close(torch.func.vmap(lambda r: project(p, r))(radii), _stack([project(p, r) for r in radii]))
    pb = _params(4, batch=5)
    out = torch.func.vmap(lambda q, r: project(q, r))(pb, radii)
    _close(out, _stack([project({k: v[i] for k, v in pb.items()}, radii[i]) for i in range(5)]))


def test_vmap_over_lambda_max() -> None:
    gb = _params(5, batch=4)
    for penalty, opts in ((fr.mcp, {}), (fr.nuclear_norm, {"where": W}), (fr.sparse_group_lasso, {"dim": None})):
        out = torch.func.vmap(lambda g: penalty.lambda_max(g, **opts))(gb)
        _close(out, torch.stack([penalty.lambda_max({k: v[i] for k, v in gb.items()}, **opts) for i in range(4)]))


# ------------------------------------------------------------------ fast vs composable
def _ops(penalty: fr.Penalty, params: Any, grads: Any, lam: Any, step: Any, opts: dict[str, Any]) -> list[Any]:
    out = []
    if "grad" not in penalty.without:
        out += [penalty.grad(params, lam, **opts), penalty.add_grad(grads, params, lam, **opts)]
    if "prox" not in penalty.without:
        out.append(penalty.prox(params, lam, step, **opts))
    return out


def _compare_trees(a: Any, b: Any) -> None:
    assert [p for p, _ in walk(a)] == [p for p, _ in walk(b)], "the trees' paths differ"
    for (path, x), (_, y) in zip(walk(a), walk(b)):
        if x is None:
            assert y is None, path
            continue
        assert x.dtype == y.dtype and x.shape == y.shape, path
        tol = {F64: 1e-11, torch.float32: 2e-5, torch.bfloat16: 2e-2}.get(x.dtype, 0)
        torch.testing.assert_close(x, y, rtol=tol, atol=tol, msg=path)


MATRIX_SHAPES = [(2, 3), (1, 4), (3, 1), (2, 1, 3), (2, 2, 2), (3, 3)]
FLOATS = (torch.float32, F64)


@pytest.mark.parametrize("name", list(VARIANTS))
@given(data=st.data())
@settings(max_examples=12)
def test_fast_and_composable_paths_agree(name: str, data: st.DataObject) -> None:
    variant = VARIANTS[name]
    penalty = variant.penalty
    matrix = variant.family.matrix or name.endswith("dim1")
    dtypes = FLOATS if name == "nuclear_norm" else FLOATS + (torch.bfloat16,)  # no bfloat16 SVD
    params = data.draw(trees(dtypes=dtypes, mode="zeros", max_leaves=6,
                             **({"shapes": MATRIX_SHAPES} if matrix else {"int_leaves": True})))
    opts = {k: v for k, v in variant.options(params).items() if k != "where"}
    separable = penalty.elementwise
    lam = data.draw(lams(params, separable=separable))
    step = data.draw(steps(params, separable=separable, forms=("number", "tensor", "dict") + (("element",) if separable else ())))
    gen = torch.Generator().manual_seed(data.draw(st.integers(0, 99)))
    grads = {p: torch.randn(x.shape, generator=gen).to(x.dtype) if is_float(x) else None for p, x in walk(params)}
    with forced("fast"):
        fast = _ops(penalty, params, grads, lam, step, opts)
    with forced("composable"):
        comp = _ops(penalty, params, grads, lam, step, opts)
    for a, b in zip(fast, comp):
        _compare_trees(a, b)


@pytest.mark.parametrize("name", list(PROJECTIONS))
def test_projection_paths_agree_on_a_mixed_dtype_tree(name: str) -> None:
    params = {**_params(6), **{f"f.{k}": v for k, v in _params(7, dtype=torch.float32).items()},
              **{f"h.{k}": v for k, v in _params(8, dtype=torch.bfloat16).items()}}
    radii: list[Any] = [0.4, torch.tensor(0.4)]
    if not name.startswith("box"):  # box negates its bound, so no dict there
        radii.append({k: 0.3 * (i % 4) for i, k in enumerate(params)})
    for r in radii:
        with forced("fast"):
            fast = PROJECTIONS[name](params, r)
        with forced("composable"):
            comp = PROJECTIONS[name](params, r)
        _compare_trees(fast, comp)


# ------------------------------------------------------------------------------ purity
@pytest.mark.parametrize("path", PATHS + [None])
@pytest.mark.parametrize("name", list(VARIANTS))
def test_no_call_mutates_its_inputs(name: str, path: str | None) -> None:
    penalty, params, grads = VARIANTS[name].penalty, _params(9), _params(10)
    opts = VARIANTS[name].options(params)
    lam = torch.tensor(0.3, dtype=F64)
    step = torch.tensor(0.8, dtype=F64)
    kw = {**opts, **({"gamma": torch.tensor(2.5)} if name.startswith(("mcp", "scad")) else {})}
    keep = snapshot(params, grads, lam, step, kw.get("gamma"), kw.get("anchor"))
    with forced(path):
        outputs = [penalty(params, lam, **kw)]
        if "grad" not in penalty.without:
            outputs += [penalty.grad(params, lam, **kw), penalty.add_grad(grads, params, lam, **kw)]
        if "prox" not in penalty.without:
            outputs.append(penalty.prox(params, lam, step, **kw))
        if "lambda_max" not in penalty.without:
            outputs.append(penalty.lambda_max(grads, **kw))
    assert_untouched(keep)
    for out in outputs[1:]:
        if isinstance(out, dict):  # fresh storage for every selected leaf
            for k, y in out.items():
                if y is not params[k] and y is not grads[k]:
                    assert y.untyped_storage().data_ptr() not in (params[k].untyped_storage().data_ptr(),
                                                                    grads[k].untyped_storage().data_ptr()), k


@pytest.mark.parametrize("path", PATHS + [None])
def test_projections_lambda_grid_and_sparsity_do_not_mutate(path: str | None) -> None:
    params = _params(11)
    radius = torch.tensor(0.5, dtype=F64)
    keep = snapshot(params, radius)
    with forced(path):
        for name, project in PROJECTIONS.items():
            out = project(params, radius)
            for k, y in out.items():
                if y is not params[k]:
                    assert y.untyped_storage().data_ptr() != params[k].untyped_storage().data_ptr(), (name, k)
        fr.lambda_grid(radius, n=5)
        fr.sparsity(params, dim=0)
    assert_untouched(keep)


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


def _tied() -> dict[str, torch.Tensor]:
    w = torch.randn(4, 3)
    return {"0.weight": w, "2.weight": w}


REFUSED = {
    "tied": (_tied, r"params leaf '[02].weight'.*shares memory with params leaf '[02].weight'"),
    "requires-grad": (lambda: {"0.weight": torch.randn(4, 3, requires_grad=True)}, r"'0.weight'.*requires grad"),
    "expanded": (lambda: {"0.weight": torch.randn(3).expand(4, 3)}, r"'0.weight'.*overlap in memory"),
}


@pytest.mark.parametrize("case", list(REFUSED))
@pytest.mark.parametrize("name", list(DONATED))
def test_refused_donations_write_nothing(name: str, case: str) -> None:
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


# ---------------------------------------------------------------------------- compile
COMPILE_VALUES = ((0.1, 0.5), (0.3, 1.0), (2.0, 0.25), (0.5, 6.0))  # the last: MCP's and SCAD's hard regime


@pytest.mark.parametrize("name", ["sparse_group_lasso", "nuclear_norm", "mcp", "scad", "l0", "orthogonal"])
def test_compiled_add_grad_and_prox_do_not_recompile(name: str) -> None:
    penalty = BY_NAME[name].penalty
    torch._dynamo.reset()
    p = {"w": _params(13)["l1.weight"].float(), "v": _params(14)["l2.weight"]}
    opts = VARIANTS[name].options(p)
    grads = {k: torch.randn_like(v) for k, v in p.items()}
    counter = CompileCounter()
    tensors = [(torch.tensor(a), torch.tensor(s, dtype=F64)) for a, s in COMPILE_VALUES]  # all alive at once
    graphs = 0
    if "grad" not in penalty.without:
        add_grad = torch.compile(lambda g, q, a: penalty.add_grad(g, q, a, **opts), backend=counter, fullgraph=True)
        for (a, _), (a_t, _) in zip(COMPILE_VALUES, tensors):
            _close(add_grad(grads, p, a_t), penalty.add_grad(grads, p, a, **opts), rtol=1e-5, atol=1e-6)
        graphs += 1
    if "prox" not in penalty.without:
        prox = torch.compile(lambda q, a, s: penalty.prox(q, a, s, **opts), backend=counter, fullgraph=True)
        for (a, s), (a_t, s_t) in zip(COMPILE_VALUES, tensors):
            _close(prox(p, a_t, s_t), penalty.prox(p, a, s, **opts), rtol=1e-5, atol=1e-6)
        graphs += 1
    assert counter.frame_count == graphs
    torch._dynamo.reset()


@pytest.mark.parametrize("penalty", [fr.mcp, fr.scad], ids=["mcp", "scad"])
def test_compiled_prox_with_a_tensor_gamma_does_not_recompile(penalty: fr.Penalty) -> None:
    torch._dynamo.reset()
    p = _params(15)
    counter = CompileCounter()
    prox = torch.compile(lambda q, a, s, g: penalty.prox(q, a, s, gamma=g), backend=counter, fullgraph=True)
    values = [(0.3, 0.5, 3.7), (1.0, 2.0, 1.5), (0.5, 9.0, 2.5)]
    tensors = [tuple(torch.tensor(v, dtype=F64) for v in vs) for vs in values]
    for (a, s, g), t in zip(values, tensors):
        _close(prox(p, *t), penalty.prox(p, a, s, gamma=g))
    assert counter.frame_count == 1
    torch._dynamo.reset()


def test_compiled_projections_do_not_recompile() -> None:
    torch._dynamo.reset()
    p = _params(16)
    counter = CompileCounter()
    compiled = {k: torch.compile(f, backend=counter, fullgraph=True) for k, f in PROJECTIONS.items()}
    radii = [torch.tensor(r, dtype=F64) for r in (0.2, 0.9, 5.0)]
    for r in radii:
        for k, f in PROJECTIONS.items():
            _close(compiled[k](p, r), f(p, float(r)))
    assert counter.frame_count == len(PROJECTIONS)
    torch._dynamo.reset()


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
