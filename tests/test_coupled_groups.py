"""``groups=`` on fr.group_lasso and fr.sparse_group_lasso.

References are written here without funcreg: each group's slices are cut out by hand
(``narrow``) and concatenated, in float64; gradients are autograd of that reference value;
proxes are checked against the block soft threshold of the concatenation and against the
optimality conditions (also in the metric of a step per leaf); the prox of overlapping
couplings against ADMM, a different algorithm; ``lambda_max`` as the smallest λ at which 0
is stationary. Then vmap over λ against a loop, the fast path against the composable one,
donated against pure, torch.compile, differentiable=True, ``where=``, and the errors.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch._dynamo.testing import CompileCounter

import funcreg as fr
from conftest import assert_untouched, snapshot
from funcreg import _overlap
from registry import FAMILIES as ALL_FAMILIES

# each family that takes couplings: (penalty, its l1_ratio or None)
FAMILIES = {f.name: (f.penalty, f.coupled.get("l1_ratio")) for f in ALL_FAMILIES if f.coupled is not None}


def _params(dtype: torch.dtype = torch.float64, seed: int = 0) -> dict[str, torch.Tensor]:
    """A conv unit with its BatchNorm, read by a Linear after Flatten (3 columns a channel),
    two attention heads of q/k rows, and a leaf no coupling names. Unit 1 and head 0 are
    zero, unit 3 is small (near its threshold)."""
    g = torch.Generator().manual_seed(seed)
    shapes = {"conv.weight": (4, 2, 3, 3), "conv.bias": (4,), "bn.weight": (4,), "bn.bias": (4,),
              "fc.weight": (5, 12), "fc.bias": (5,), "q.weight": (6, 5), "q.bias": (6,),
              "k.weight": (6, 5), "other": (3,)}
    p = {k: torch.randn(s, generator=g, dtype=torch.float64) for k, s in shapes.items()}
    for k in ("conv.weight", "conv.bias", "bn.weight", "bn.bias"):
        p[k][1] = 0.0
        p[k][3] *= 0.05
    for k in ("q.weight", "q.bias", "k.weight"):
        p[k][:3] = 0.0
    return {k: v.to(dtype) for k, v in p.items()}


UNITS = {"conv.weight": 0, "conv.bias": 0, "bn.weight": 0, "bn.bias": 0}
HEADS = fr.Coupling({"q.weight": 0, "q.bias": 0, "k.weight": 0}, groups=2)
CHUNKED = [UNITS, fr.Coupling({"fc.weight": 1}, groups=4), HEADS]  # disjoint
# a unit with the next layer's columns that read it, beside the next layer's own units
OVERLAP = [{**UNITS, "fc.weight": 1}, {"fc.weight": 0, "fc.bias": 0}]


def _resolved(params: dict, couplings: list) -> list[tuple[dict, int]]:
    out = []
    for c in couplings:
        dims = dict(c.dims) if isinstance(c, fr.Coupling) else c
        groups = c.groups if isinstance(c, fr.Coupling) and c.groups else min(params[p].shape[d] for p, d in dims.items())
        out.append((dims, groups))
    return out


def _slices(params: dict, dims: dict, groups: int, k: int) -> list[tuple[str, torch.Tensor]]:
    """Group k's slice of every leaf of the coupling (views)."""
    out = []
    for path, dim in dims.items():
        width = params[path].shape[dim] // groups
        out.append((path, params[path].narrow(dim, k * width, width)))
    return out


def _concat(params: dict, dims: dict, groups: int, k: int) -> torch.Tensor:
    return torch.cat([s.reshape(-1) for _, s in _slices(params, dims, groups, k)])


def ref_value(params: dict, couplings: list, lam: float, rho: float | None) -> torch.Tensor:
    p = {k: v.double() for k, v in params.items()}
    total = torch.zeros((), dtype=torch.float64)
    share = 1.0 if rho is None else 1 - rho
    for dims, groups in _resolved(p, couplings):
        for k in range(groups):
            v = _concat(p, dims, groups, k)
            total = total + lam * share * math.sqrt(v.numel()) * torch.linalg.vector_norm(v)
    if rho is not None:
        named = {path for dims, _ in _resolved(p, couplings) for path in dims}
        total = total + lam * rho * sum(p[path].abs().sum() for path in named)
    return total


def ref_grad(params: dict, couplings: list, lam: float, rho: float | None) -> dict:
    p = {k: v.detach().double().clone().requires_grad_() for k, v in params.items()}
    ref_value(p, couplings, lam, rho).backward()
    return {k: torch.zeros_like(v) if v.grad is None else v.grad for k, v in p.items()}


def ref_prox(params: dict, couplings: list, lam: float, step: float, rho: float | None) -> dict:
    """Disjoint couplings: soft threshold (sparse group lasso), then each concatenated
    group's block soft threshold, written back slice by slice."""
    out = {k: v.double().clone() for k, v in params.items()}
    resolved = _resolved(out, couplings)
    share = 1.0 if rho is None else 1 - rho
    if rho is not None:
        for path in {path for dims, _ in resolved for path in dims}:
            out[path] = torch.sign(out[path]) * (out[path].abs() - step * lam * rho).clamp_min(0)
    for dims, groups in resolved:
        for k in range(groups):
            v = _concat(out, dims, groups, k)
            norm = float(torch.linalg.vector_norm(v))
            t = step * lam * share * math.sqrt(v.numel())
            scale = max(norm - t, 0.0) / norm if norm > 0 else 0.0
            for _, s in _slices(out, dims, groups, k):
                s.mul_(scale)
    return out


def _close(got: dict, want: dict, atol: float = 1e-10, rtol: float = 1e-9) -> None:
    for k in want:
        torch.testing.assert_close(got[k].double(), want[k].double(), atol=atol, rtol=rtol, msg=lambda m: f"{k}: {m}")


# -------------------------------------------------------------- values, gradients, prox
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("couplings", [CHUNKED, OVERLAP], ids=["chunked", "overlapping"])
@pytest.mark.parametrize("path", ["fast", "composable"])
def test_values_and_gradients_against_hand_concatenation(family: str, couplings: list, path: str) -> None:
    penalty, rho = FAMILIES[family]
    opts = {} if rho is None else {"l1_ratio": rho}
    p, grads = _params(), _params(seed=1)
    snap = snapshot(p, grads)
    with fr._dispatch.forced(path):
        value = penalty(p, 0.7, groups=couplings, **opts)
        torch.testing.assert_close(value, ref_value(p, couplings, 0.7, rho))
        want = ref_grad(p, couplings, 0.7, rho)  # other: 0, never named
        _close(penalty.grad(p, 0.7, groups=couplings, **opts), want)
        added = penalty.add_grad(grads, p, 0.7, groups=couplings, **opts)
        _close(added, {k: grads[k] + want[k] for k in p})
        assert added["other"] is grads["other"]  # not penalized: passed through
        # autograd of funcreg's own value: finite (0) at the zero groups
        _close(torch.func.grad(lambda q: penalty(q, 0.7, groups=couplings, **opts))(p), want)
    assert_untouched(snap)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("path", ["fast", "composable"])
def test_prox_is_the_block_soft_threshold_of_each_concatenated_group(family: str, path: str) -> None:
    penalty, rho = FAMILIES[family]
    opts = {} if rho is None else {"l1_ratio": rho}
    p = _params()
    for lam, step in ((0.3, 0.5), (1.2, 0.9), (0.0, 1.0)):
        with fr._dispatch.forced(path):
            out = penalty.prox(p, lam, step, groups=CHUNKED, **opts)
        _close(out, ref_prox(p, CHUNKED, lam, step, rho))
        assert out["other"] is p["other"]
    # optimality (group lasso): (v_g - u_g)/s = t u_g/‖u_g‖ where u_g != 0, ‖v_g‖ <= s·t where u_g = 0
    if rho is None:
        out = fr.group_lasso.prox(p, 1.2, 0.9, groups=CHUNKED)
        zeros = 0
        for dims, groups in _resolved(p, CHUNKED):
            for k in range(groups):
                v, u = _concat(p, dims, groups, k), _concat(out, dims, groups, k)
                t = 1.2 * math.sqrt(v.numel())
                if bool((u == 0).all()):
                    zeros += 1
                    assert float(v.norm()) <= 0.9 * t
                else:
                    torch.testing.assert_close((v - u) / 0.9, t * u / u.norm())
        assert 2 <= zeros < 10  # unit 1, head 0 (zero), and more at this λ, not all


def test_prox_with_a_step_per_leaf_is_the_prox_in_that_metric() -> None:
    """fr.prox_adam's case: a step per leaf, different within a coupling. The optimality
    conditions of min Σ_l ‖u_l − v_l‖²/(2 s_l) + t‖u_g‖, per group."""
    p = _params()
    steps = {k: s for k, s in zip(p, (0.5, 2.0, 0.01, 1.0, 0.3, 0.7, 3.0, 0.1, 0.6, 1.0))}
    for path in ("fast", "composable"):
        with fr._dispatch.forced(path):
            out = fr.group_lasso.prox(p, 0.4, steps, groups=CHUNKED)
        kinds = set()
        for dims, groups in _resolved(p, CHUNKED):
            for k in range(groups):
                vs = _slices(p, dims, groups, k)
                us = dict(_slices(out, dims, groups, k))
                t = 0.4 * math.sqrt(sum(s.numel() for _, s in vs))
                norm = torch.linalg.vector_norm(torch.cat([u.reshape(-1) for u in us.values()]))
                if float(norm) == 0:
                    kinds.add("zero")
                    dual = torch.cat([(v / steps[path_]).reshape(-1) for path_, v in vs])
                    assert float(dual.norm()) <= t * (1 + 1e-12)
                else:
                    kinds.add("live")
                    for path_, v in vs:
                        torch.testing.assert_close((v - us[path_]) / steps[path_], t * us[path_] / norm,
                                                   atol=1e-12, rtol=1e-10)
        assert kinds == {"zero", "live"}
    # one step for every leaf, given per leaf, is the closed form
    _close(fr.group_lasso.prox(p, 0.4, {k: 0.7 for k in p}, groups=CHUNKED),
           fr.group_lasso.prox(p, 0.4, 0.7, groups=CHUNKED))


# ----------------------------------------------------------------- overlapping couplings
def _admm(params: dict, couplings: list, lam: float, steps: dict, rho: float | None, iters: int = 3000) -> dict:
    """The overlapping prox by ADMM on y_g = u[g] (Boyd et al. 2011, section 6.4), float64,
    one index matrix per coupling, in the metric of a step per leaf."""
    paths = sorted({path for dims, _ in _resolved(params, couplings) for path in dims})
    v = {k: params[k].double() for k in paths}
    if rho is not None:
        v = {k: torch.sign(x) * (x.abs() - steps[k] * lam * rho).clamp_min(0) for k, x in v.items()}
    offsets, start = {}, 0
    for k in paths:
        offsets[k] = start
        start += v[k].numel()
    flat = torch.cat([v[k].reshape(-1) for k in paths])
    s = torch.cat([torch.full((v[k].numel(),), float(steps[k]), dtype=torch.float64) for k in paths])
    index = {k: torch.arange(v[k].numel()).reshape(v[k].shape) + offsets[k] for k in paths}
    blocks = []
    for dims, groups in _resolved(params, couplings):
        rows = torch.stack([torch.cat([ix.reshape(-1) for _, ix in _slices(index, dims, groups, k)])
                            for k in range(groups)])
        t = lam * (1.0 if rho is None else 1 - rho) * math.sqrt(rows.shape[1])
        blocks.append((rows, t))
    count = torch.zeros_like(flat)
    for rows, _ in blocks:
        count.index_add_(0, rows.reshape(-1), torch.ones(rows.numel(), dtype=torch.float64))
    y = [torch.zeros(rows.shape, dtype=torch.float64) for rows, _ in blocks]
    z = [torch.zeros(rows.shape, dtype=torch.float64) for rows, _ in blocks]
    u, r = flat.clone(), 1.0
    for _ in range(iters):
        acc = torch.zeros_like(flat)
        for (rows, _), yb, zb in zip(blocks, y, z):
            acc.index_add_(0, rows.reshape(-1), (yb - zb).reshape(-1))
        u = (flat / s + r * acc) / (1 / s + r * count)
        for j, (rows, t) in enumerate(blocks):
            x = u[rows] + z[j]
            n = x.norm(dim=1, keepdim=True)
            y[j] = x * ((n - t / r).clamp_min(0) / torch.where(n > 0, n, 1.0))
            z[j] = z[j] + u[rows] - y[j]
    out = dict(params)
    for k in paths:
        out[k] = u[offsets[k]:offsets[k] + v[k].numel()].reshape(v[k].shape)
    out["_zero_groups"] = [(rows, yb.norm(dim=1) == 0) for (rows, _), yb in zip(blocks, y)]
    out["_offsets"] = offsets
    return out


@pytest.mark.parametrize("family", FAMILIES)
def test_overlapping_prox_is_within_its_tolerance_of_admm_with_exact_zeros(family: str) -> None:
    penalty, rho = FAMILIES[family]
    opts = {} if rho is None else {"l1_ratio": rho}
    p = _params()
    for steps in (1.0, {k: s for k, s in zip(p, (0.9, 1.4, 0.3, 1.0, 1.0, 1.1, 1, 1, 1, 1))}):
        lam = 0.9
        per_leaf = steps if isinstance(steps, dict) else {k: steps for k in p}
        ref = _admm(p, OVERLAP, lam, per_leaf, rho, iters=3000 if steps == 1.0 else 8000)  # converged to 1e-8
        out = penalty.prox(p, lam, steps, groups=OVERLAP, **opts)
        named = sorted(ref["_offsets"])
        size = torch.cat([p[k].reshape(-1) for k in named]).norm()
        err = torch.cat([(out[k] - ref[k]).reshape(-1) for k in named]).norm()
        assert float(err) <= 2 * _overlap.RTOL * float(size), float(err / size)
        flat = torch.cat([out[k].reshape(-1) for k in named])
        zero_groups = 0
        for rows, zero in ref["_zero_groups"]:
            for row, z in zip(rows, zero):
                if bool(z):  # zero in the exact prox (ADMM's y): exactly zero here
                    zero_groups += 1
                    assert bool((flat[row] == 0).all())
        assert 1 <= zero_groups < 9, zero_groups
        assert out["other"] is p["other"]


def test_overlapping_prox_certifies_its_error_and_snaps_to_zero(monkeypatch: pytest.MonkeyPatch) -> None:
    """The sweeps stop on the duality gap: with a cap of one sweep (far from converged) the
    call fails before writing anything, even donated."""
    p = _params()
    donated = {k: v.clone() for k, v in p.items()}
    snap = snapshot(donated)
    monkeypatch.setattr(_overlap, "MAX_SWEEPS", 1)
    with pytest.raises(RuntimeError, match=r"groups\[0\] and groups\[1\].*did not reach its tolerance.*nothing was written"):
        fr.group_lasso.prox(donated, 0.35, 1.0, groups=OVERLAP, donate=True)
    assert_untouched(snap)


def test_overlapping_couplings_are_refused_where_the_iteration_cannot_run() -> None:
    p = _params()
    with pytest.raises(ValueError, match=r"groups\[0\] and groups\[1\] overlap .*'fc.weight'.*torch.compile"):
        torch.func.grad(lambda q: fr.group_lasso.prox(q, 0.3, 1.0, groups=OVERLAP)["fc.bias"].sum())(p)
    with pytest.raises(ValueError, match=r"overlap .*'fc.weight'.*no closed form"):
        fr.group_lasso.lambda_max(p, groups=OVERLAP)
    # under vmap alone (the stacked path) it runs, member by member as a loop would
    lams = torch.tensor([0.1, 0.35, 1.0], dtype=torch.float64)
    got = torch.func.vmap(lambda lam: fr.group_lasso.prox(p, lam, 1.0, groups=OVERLAP))(lams)
    for j, lam in enumerate(lams):  # each within its tolerance of the exact prox
        _close({k: v[j] for k, v in got.items()}, fr.group_lasso.prox(p, float(lam), 1.0, groups=OVERLAP),
               atol=2e-5, rtol=0)


# --------------------------------------------------------------------------- lambda_max
@pytest.mark.parametrize("family", FAMILIES)
def test_lambda_max_is_the_smallest_lambda_at_which_zero_is_stationary(family: str) -> None:
    """w = 0 is stationary for f with ∇f(0) = g iff prox(−g) = 0 (step 1)."""
    penalty, rho = FAMILIES[family]
    opts = {} if rho is None else {"l1_ratio": rho}
    g = _params(seed=2)
    top = float(penalty.lambda_max(g, groups=CHUNKED, **opts))
    minus = {k: -v for k, v in g.items()}
    above = penalty.prox(minus, top * (1 + 1e-9), 1.0, groups=CHUNKED, **opts)
    below = penalty.prox(minus, top * (1 - 1e-6), 1.0, groups=CHUNKED, **opts)
    named = {p for c in CHUNKED for p in (c.dims if isinstance(c, fr.Coupling) else c)}
    assert all(bool((above[k] == 0).all()) for k in named)
    assert any(bool((below[k] != 0).any()) for k in named)
    if rho is None:  # max over groups of ‖g_g‖/sqrt(n_g), on the hand concatenation
        want = max(float(_concat(g, dims, G, k).norm()) / math.sqrt(_concat(g, dims, G, k).numel())
                   for dims, G in _resolved(g, CHUNKED) for k in range(G))
        assert top == pytest.approx(want, rel=1e-12)


@settings(max_examples=10)
@given(groups=st.integers(1, 3), widths=st.lists(st.integers(1, 3), min_size=1, max_size=3),
       seed=st.integers(0, 2**16))
def test_value_of_random_chunked_couplings_is_lam_sqrt_n_times_coupling_norms(
        groups: int, widths: list[int], seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    params, dims = {}, {}
    for i, m in enumerate(widths):
        shape = [2, 3]
        shape[i % 2] = groups * m
        params[f"w{i}"] = torch.randn(*shape, generator=g, dtype=torch.float64)
        dims[f"w{i}"] = i % 2
    c = fr.Coupling(dims, groups=groups)
    want = 0.6 * math.sqrt(c.group_size(params)) * c.norms(params).sum()
    torch.testing.assert_close(fr.group_lasso(params, 0.6, groups=[c]), want)
    torch.testing.assert_close(fr.group_lasso.prox(params, 0.6, 0.5, groups=[c])[f"w{len(widths) - 1}"],
                               ref_prox(params, [c], 0.6, 0.5, None)[f"w{len(widths) - 1}"])


# ------------------------------------------------------------ vmap, donation, transforms
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("path", [None, "composable"], ids=["stacked", "composable"])
def test_vmap_over_lam_against_a_loop(family: str, path: str | None) -> None:
    penalty, rho = FAMILIES[family]
    opts = {"groups": CHUNKED, **({} if rho is None else {"l1_ratio": rho})}
    p, grads = _params(), _params(seed=1)
    lams = torch.tensor([0.0, 0.1, 0.4, 1.5], dtype=torch.float64)
    steps = torch.tensor([1.0, 0.5, 0.25, 2.0], dtype=torch.float64)
    with fr._dispatch.forced(path):
        values = torch.func.vmap(lambda lam: penalty(p, lam, **opts))(lams)
        added = torch.func.vmap(lambda lam: penalty.add_grad(grads, p, lam, **opts))(lams)
        proxed = torch.func.vmap(lambda lam, s: penalty.prox(p, lam, s, **opts))(lams, steps)
        stacked = {k: torch.stack([v, 2 * v]) for k, v in p.items()}  # batched params too
        both = torch.func.vmap(lambda q: penalty.prox(q, 0.4, 0.5, **opts))(stacked)
    for j, (lam, s) in enumerate(zip(lams, steps)):
        torch.testing.assert_close(values[j], penalty(p, lam, **opts))
        _close({k: v[j] for k, v in added.items()}, penalty.add_grad(grads, p, lam, **opts), atol=1e-12)
        _close({k: v[j] for k, v in proxed.items()}, penalty.prox(p, lam, s, **opts), atol=1e-12)
    _close({k: v[1] for k, v in both.items()}, penalty.prox({k: 2 * v for k, v in p.items()}, 0.4, 0.5, **opts))


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("couplings", [CHUNKED, OVERLAP], ids=["chunked", "overlapping"])
def test_donated_equals_pure_bit_for_bit(family: str, dtype: torch.dtype, couplings: list) -> None:
    penalty, rho = FAMILIES[family]
    opts = {"groups": couplings, **({} if rho is None else {"l1_ratio": rho})}
    p, grads = _params(dtype), _params(dtype, seed=1)
    p["fc.bias"] = p["fc.bias"].float()  # one coupling over two dtypes
    grads["fc.bias"] = grads["fc.bias"].float()
    snap = snapshot(p, grads)
    pure = penalty.prox(p, 0.3, 0.5, **opts)
    pure_g = penalty.add_grad(grads, p, 0.3, **opts)
    assert_untouched(snap)
    donated, dg = {k: v.clone() for k, v in p.items()}, {k: v.clone() for k, v in grads.items()}
    out = penalty.prox(donated, 0.3, 0.5, donate=True, **opts)
    out_g = penalty.add_grad(dg, p, 0.3, donate=True, **opts)
    for k in p:
        assert out[k] is donated[k] and out_g[k] is dg[k]
        assert torch.equal(out[k], pure[k]) and torch.equal(out_g[k], pure_g[k]), k
    if couplings is CHUNKED:  # and against the float64 reference, to the dtype's precision
        tol = 2e-2 if dtype == torch.bfloat16 else 1e-5
        _close(pure, ref_prox(p, couplings, 0.3, 0.5, rho), atol=tol, rtol=tol)


def test_nothing_is_written_before_the_checks() -> None:
    p = _params()
    donated = {k: v.clone() for k, v in p.items()}
    snap = snapshot(donated)
    bad = [UNITS, fr.Coupling({"fc.weight": 1, "fc.bias": 0}, groups=4)]  # fc.bias: 5 rows, not 4k
    with pytest.raises(ValueError, match=r"groups\[1\]: leaf 'fc.bias' has size 5 .* 4 groups"):
        fr.group_lasso.prox(donated, 0.3, 1.0, groups=bad, donate=True)
    assert_untouched(snap)


def test_compiled_without_recompiles_and_differentiable() -> None:
    p = _params(torch.float32)
    counter = CompileCounter()
    prox = torch.compile(lambda q, a, s: fr.sparse_group_lasso.prox(q, a, s, groups=CHUNKED, l1_ratio=0.3),
                         backend=counter, fullgraph=True)
    for lam in (0.1, 0.4):
        _close(prox(p, torch.tensor(lam), torch.tensor(0.5)),
               fr.sparse_group_lasso.prox(p, lam, 0.5, groups=CHUNKED, l1_ratio=0.3), atol=1e-6, rtol=1e-5)
    assert counter.frame_count == 1
    # hypergradient d Σ prox / d λ through differentiable=True, against a finite difference
    q = _params()

    def total(lam: Any) -> torch.Tensor:
        out = fr.group_lasso.prox(q, lam, 0.5, groups=CHUNKED, differentiable=True)
        return sum(v.sum() for v in out.values())

    lam = torch.tensor(0.4, dtype=torch.float64, requires_grad=True)
    total(lam).backward()
    fd = (total(torch.tensor(0.4 + 1e-6, dtype=torch.float64)) - total(torch.tensor(0.4 - 1e-6, dtype=torch.float64))) / 2e-6
    torch.testing.assert_close(lam.grad, fd.detach(), atol=1e-6, rtol=1e-6)


# --------------------------------------------------------------------- where and errors
def test_where_selects_whole_couplings() -> None:
    p = _params()
    without_heads = fr.group_lasso.prox(p, 0.5, 1.0, groups=CHUNKED, where=fr.select.exclude(r"^[qk]\."))
    _close(without_heads, fr.group_lasso.prox(p, 0.5, 1.0, groups=CHUNKED[:2]))
    assert without_heads["q.weight"] is p["q.weight"]
    tree = {k: not k.startswith("conv") and not k.startswith("bn") for k in p}
    _close(fr.group_lasso.grad(p, 0.5, groups=CHUNKED, where=tree), fr.group_lasso.grad(p, 0.5, groups=CHUNKED[1:]))
    with pytest.raises(ValueError, match=r"where selects params leaf 'conv.weight' but not 'conv.bias'.*groups\[0\]"):
        fr.group_lasso.prox(p, 0.5, 1.0, groups=CHUNKED, where=fr.select.weights)
    with pytest.raises(ValueError, match="where selects none of the leaves that groups= names"):
        fr.group_lasso(p, 0.5, groups=CHUNKED, where=fr.select.only("other"))


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda p: fr.group_lasso(p, 0.1, groups=[UNITS], dim=0), ValueError, "pass dim= or groups=, not both"),
        (lambda p: fr.group_lasso.prox(p, 0.1, 1.0, groups=[{"nope.weight": 0}]), ValueError,
         r"groups\[0\] names leaf 'nope.weight', which params do not have"),
        (lambda p: fr.sparse_group_lasso.grad(p, 0.1, groups=[UNITS, {"fc.weight": 0, "nope": 0}]), ValueError,
         r"groups\[1\] names leaf 'nope'"),
        (lambda p: fr.group_lasso(p, 0.1, groups=[{"fc.weight": 0, "conv.bias": 0}]), ValueError,
         r"groups\[0\]: leaf 'fc.weight' has size 5 along dim 0, which is not a positive multiple of .* 4 groups"),
        (lambda p: fr.group_lasso(p, 0.1, groups=[{"fc.bias": 1}]), ValueError, r"leaf 'fc.bias' has 1 dims"),
        (lambda p: fr.group_lasso.prox(p, {k: 0.1 for k in p}, 1.0, groups=[UNITS]), TypeError,
         "with groups=, lam is one value"),
        (lambda p: fr.group_lasso.add_grad({**p, "bn.bias": None}, p, 0.1, groups=[UNITS]), ValueError,
         r"grads leaf 'bn.bias' is missing .* groups\[0\]"),
        (lambda p: fr.group_lasso(p, 0.1, groups=["conv.weight"]), TypeError, r"couplings\[0\] is a str"),
    ],
)
def test_errors_name_the_leaf(call: Any, error: type, match: str) -> None:
    p = _params()
    snap = snapshot(p)
    with pytest.raises(error, match=match):
        call(p)
    assert_untouched(snap)


@pytest.mark.parametrize("family", FAMILIES)
def test_a_call_without_options_leaves_the_family_able_to_take_groups(family: str) -> None:
    """A call without options gets the family's defaults themselves: the group families
    once removed ``groups`` from them, so that every later ``groups=`` call (and fr.path's
    check of its options) refused it."""
    fam = FAMILIES[family][0]
    p, units = _params(), [UNITS]
    fam(p, 0.1)
    fam.prox(p, 0.1, step=0.5)
    assert "groups" in fam.options
    expected = fam(p, 0.1, groups=units)
    fam(p, 0.1)
    torch.testing.assert_close(fam(p, 0.1, groups=units), expected)
    assert not torch.equal(expected, fam(p, 0.1))
