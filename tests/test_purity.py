"""No public call mutates its inputs: values and version counters of every input tensor
(params, grads, anchor, λ, step) are unchanged, on both paths, and outputs never share
memory with the inputs they replace.

Every family and projection: no call mutates its inputs, on either path, and results share no memory with them.
"""

from __future__ import annotations

import pytest
import torch
import torch._dynamo
from hypothesis import given, settings
from hypothesis import strategies as st

import funcreg as fr
from conftest import (
    REFERENCED,
    REFERENCED_IDS,
    Family,
    assert_untouched,
    fixed_params,
    is_float,
    lams,
    snapshot,
    steps,
    trees,
    walk,
)
from registry import PROJECTIONS, UNREFERENCED_VARIANTS

PATHS = ["fast", "composable", None]


def _inputs(fam: Family, lam_form: str):
    g = torch.Generator().manual_seed(0)
    params = {
        "a": {"weight": torch.randn(3, 4, generator=g), "bias": torch.randn(3, generator=g)},
        "b": [torch.randn(2, 2, generator=g, dtype=torch.float64), torch.randn((), generator=g, dtype=torch.float64)],
        "count": torch.tensor(3),
        "zero": torch.zeros(2, 3),
    }
    grads = {
        "a": {"weight": torch.randn(3, 4, generator=g), "bias": None},
        "b": [torch.randn(2, 2, generator=g, dtype=torch.float64), torch.randn((), generator=g, dtype=torch.float64)],
        "count": None,
        "zero": torch.randn(2, 3, generator=g),
    }
    per_elem = {p: torch.rand(x.shape, generator=g) for p, x in walk(params) if is_float(x)}
    lam = {"tensor": torch.tensor(0.3, dtype=torch.float64), "element": per_elem}[lam_form]
    step = torch.tensor(0.5) if lam_form == "tensor" else {p: torch.rand(x.shape, generator=g, dtype=torch.float64) for p, x in walk(params) if is_float(x)}
    return params, grads, lam, step, fam.options(params)


def _selected_outputs_are_fresh(inputs, outputs):
    for (path, x), (_, y) in zip(walk(inputs), walk(outputs)):
        if is_float(x) and y is not None and x.numel():
            assert y.untyped_storage().data_ptr() != x.untyped_storage().data_ptr(), path


@pytest.mark.parametrize("path", PATHS, ids=["fast", "composable", "auto"])
@pytest.mark.parametrize(
    "fam, lam_form",
    [pytest.param(f, form, id=f"{f.name}-{form}") for f in REFERENCED for form in ("tensor", "element") if f.separable or form == "tensor"],
)
def test_no_call_mutates_its_inputs(fam: Family, lam_form: str, path: str | None) -> None:
    params, grads, lam, step, opts = _inputs(fam, lam_form)
    snap = snapshot(params, grads, lam, step, opts.get("anchor"))
    with fr._dispatch.forced(path):
        value = fam.penalty(params, lam, **opts)
        g = fam.penalty.grad(params, lam, **opts)
        ag = fam.penalty.add_grad(grads, params, lam, **opts)
        pr = fam.penalty.prox(params, lam, step, **opts)
    assert_untouched(snap)
    assert torch.isfinite(value)
    _selected_outputs_are_fresh(params, g)
    _selected_outputs_are_fresh(grads, ag)
    _selected_outputs_are_fresh(params, pr)
    # writing into the outputs does not reach the inputs either
    for out in (g, ag, pr):
        for p, y in walk(out):
            if is_float(y) and p != "count":
                y.add_(1.0)
    assert_untouched(snap)


@pytest.mark.parametrize("fam", REFERENCED, ids=REFERENCED_IDS)
@given(data=st.data())
@settings(max_examples=10)
def test_purity_on_generated_trees(fam: Family, data: st.DataObject) -> None:
    params = data.draw(trees(dtypes=(torch.float32, torch.float64, torch.bfloat16), mode="zeros", int_leaves=True))
    lam = data.draw(lams(params, separable=fam.separable))
    step = data.draw(steps(params, separable=fam.separable))
    opts = fam.options(params, data.draw)
    grads = [x.clone() + 1 if is_float(x) else None for _, x in walk(params)]
    grads = dict(zip([p for p, _ in walk(params)], grads))
    snap = snapshot(params, grads, lam, step, opts.get("anchor"))
    with fr._dispatch.forced(data.draw(st.sampled_from(PATHS))):
        fam.penalty(params, lam, **opts)
        fam.penalty.grad(params, lam, **opts)
        fam.penalty.add_grad(grads, params, lam, **opts)
        fam.penalty.prox(params, lam, step, **opts)
    assert_untouched(snap)


@pytest.mark.parametrize("path", PATHS, ids=["fast", "composable", "auto"])
def test_nothing_is_half_applied_on_error(path: str | None) -> None:
    """An error on the last leaf leaves every input as it was."""
    params = {"a": torch.randn(3, 4), "b": torch.randn(3), "c": torch.randn(2, 2)}
    grads = {"a": torch.randn(3, 4), "b": torch.randn(3), "c": torch.randn(2, 3)}  # bad shape last
    snap = snapshot(params, grads)
    with fr._dispatch.forced(path):
        with pytest.raises(ValueError, match="'c'"):
            fr.l2.add_grad(grads, params, 0.1)
        with pytest.raises(ValueError, match="'c'"):
            fr.l1.prox(params, {"a": 0.1, "b": 0.1, "c": -1.0}, 0.5)
    assert_untouched(snap)


forced = fr._dispatch.forced
BOTH_PATHS = ["fast", "composable"]
F64 = torch.float64






# ------------------------------------------------------------------------------ purity
@pytest.mark.parametrize("path", BOTH_PATHS + [None])
@pytest.mark.parametrize("name", list(UNREFERENCED_VARIANTS))
def test_no_call_of_the_other_families_mutates_its_inputs(name: str, path: str | None) -> None:
    penalty, params, grads = UNREFERENCED_VARIANTS[name].penalty, fixed_params(9), fixed_params(10)
    opts = UNREFERENCED_VARIANTS[name].options(params)
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


@pytest.mark.parametrize("path", BOTH_PATHS + [None])
def test_projections_lambda_grid_and_sparsity_do_not_mutate(path: str | None) -> None:
    params = fixed_params(11)
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
