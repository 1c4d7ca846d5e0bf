"""Bad input to the penalties, the projections, ``lambda_max``, ``lambda_grid`` and
``sparsity``: a clear error that names the leaf path (docs/design.md, "Conventions"):
operations a family does not have are a TypeError, bad hyperparameters and leaves a
ValueError naming what is wrong and where, and nothing is written first."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

import pytest
import torch

import funcreg as fr
from conftest import REFERENCED, REFERENCED_IDS, Family, assert_untouched, snapshot


def _params():
    return {
        "enc": {"weight": torch.ones(2, 3), "bias": torch.ones(2)},
        "layers": [torch.ones(3, 3)],
        "count": torch.tensor(1),
    }


def _grads():
    return {
        "enc": {"weight": torch.ones(2, 3), "bias": torch.ones(2)},
        "layers": [torch.ones(3, 3)],
        "count": None,
    }


def _call_all(fam: Family, params, lam=0.1, *, step=0.5, grads=None, **kw):
    """Every public operation of ``fam``; each must raise the same way."""
    opts = {**fam.options(params), **kw} if fam.name == "l2_sp" and "anchor" not in kw else {**kw}
    yield lambda: fam.penalty(params, lam, **opts)
    yield lambda: fam.penalty.grad(params, lam, **opts)
    yield lambda: fam.penalty.add_grad(grads if grads is not None else _grads(), params, lam, **opts)
    yield lambda: fam.penalty.prox(params, lam, step, **opts)


def _raises_everywhere(fam: Family, exc, match: str, params, **kw) -> None:
    for call in _call_all(fam, params, **kw):
        with pytest.raises(exc, match=match):
            call()


# ------------------------------------------------------------------------------ params
@pytest.mark.parametrize("fam", REFERENCED, ids=REFERENCED_IDS)
@pytest.mark.parametrize("bad", [3.0, None, "w", [1.0]])
def test_non_tensor_param_leaf(fam: Family, bad) -> None:
    params = {"enc": {"weight": torch.ones(2, 3), "extra": bad}}
    path = "enc.extra" if not isinstance(bad, list) else "enc.extra.0"
    anchor = {"enc": {"weight": torch.ones(2, 3), "extra": bad}}
    kw = {"anchor": anchor} if fam.name == "l2_sp" else {}
    for call in (
        lambda: fam.penalty(params, 0.1, **kw),
        lambda: fam.penalty.grad(params, 0.1, **kw),
        lambda: fam.penalty.add_grad(params, params, 0.1, **kw),
        lambda: fam.penalty.prox(params, 0.1, 0.5, **kw),
    ):
        with pytest.raises(TypeError, match=re.escape(repr(path))):
            call()


def test_duplicate_paths() -> None:
    with pytest.raises(ValueError, match="'a.b'"):
        fr.l2({"a.b": torch.ones(1), "a": {"b": torch.ones(1)}}, 0.1)


# ------------------------------------------------------------------------------- where
@pytest.mark.parametrize("fam", REFERENCED, ids=REFERENCED_IDS)
def test_integer_leaf_explicitly_selected(fam: Family) -> None:
    where_tree = {"enc": {"weight": True, "bias": False}, "layers": [False], "count": True}
    _raises_everywhere(fam, TypeError, "'count'", _params(), where=where_tree)
    _raises_everywhere(fam, TypeError, "'count'", _params(), where=lambda p, x: True)


@pytest.mark.parametrize("bad", ["weight", b"weight", torch.tensor(True), 3, 0.5, object()])
def test_where_of_wrong_kind(bad) -> None:
    for call in _call_all(REFERENCED[0], _params(), where=bad):
        with pytest.raises(TypeError, match="where"):
            call()


def test_where_pytree_errors() -> None:
    p = _params()
    with pytest.raises(TypeError, match="'enc.bias'"):
        fr.l1(p, 0.1, where={"enc": {"weight": True, "bias": 1}, "layers": [False], "count": False})
    with pytest.raises(ValueError, match="'layers.0'"):  # a where tree missing a leaf
        fr.l1(p, 0.1, where={"enc": {"weight": True, "bias": False}, "count": False})
    with pytest.raises(ValueError, match="'enc.zzz'"):  # ... or with an extra one
        fr.l1(p, 0.1, where={"enc": {"weight": True, "bias": False, "zzz": True}, "layers": [True], "count": False})


@pytest.mark.parametrize("ret", [1, torch.tensor(True), None, "yes"])
def test_where_callable_returning_non_bool(ret) -> None:
    for call in _call_all(REFERENCED[1], _params(), where=lambda path, leaf: ret):
        with pytest.raises(TypeError, match="'enc.weight'"):
            call()


@pytest.mark.parametrize("fam", REFERENCED, ids=REFERENCED_IDS)
def test_where_selecting_nothing(fam: Family) -> None:
    for where in (fr.select.only("nothing"), lambda p, x: False, {"enc": {"weight": False, "bias": False}, "layers": [False], "count": False}):
        _raises_everywhere(fam, ValueError, "selects no leaf", _params(), where=where)
    # a params tree with no floating leaf at all
    with pytest.raises(ValueError, match="selects no leaf"):
        fam.penalty({"count": torch.tensor(1)}, 0.1, **({"anchor": {"count": torch.tensor(1)}} if fam.name == "l2_sp" else {}))


# ------------------------------------------------------------------------------- grads
@pytest.mark.parametrize("fam", REFERENCED, ids=REFERENCED_IDS)
def test_grads_structure_mismatch(fam: Family) -> None:
    p = _params()
    opts = fam.options(p)
    missing = _grads()
    del missing["enc"]["bias"]
    with pytest.raises(ValueError, match="'enc.bias'"):
        fam.penalty.add_grad(missing, p, 0.1, **opts)
    extra = _grads()
    extra["head"] = torch.ones(1)
    with pytest.raises(ValueError, match="'head'"):
        fam.penalty.add_grad(extra, p, 0.1, **opts)


@pytest.mark.parametrize("fam", REFERENCED, ids=REFERENCED_IDS)
def test_grad_leaf_shape_dtype_type_mismatch(fam: Family) -> None:
    p = _params()
    opts = fam.options(p)
    for bad, exc in ((torch.ones(3, 3, 1), ValueError), (torch.ones(3, 3, dtype=torch.float64), ValueError), (1.0, TypeError)):
        g = _grads()
        g["layers"][0] = bad
        with pytest.raises(exc, match="'layers.0'"):
            fam.penalty.add_grad(g, p, 0.1, **opts)


# ------------------------------------------------------------------------------ anchor
def test_anchor_errors() -> None:
    p = _params()

    def anchor(**change):
        a = {"enc": {"weight": torch.zeros(2, 3), "bias": torch.zeros(2)}, "layers": [torch.zeros(3, 3)], "count": torch.tensor(0)}
        for k, v in change.items():
            a["enc"][k] = v
        return a

    for call in _call_all(REFERENCED[4], p, anchor=anchor(bias=torch.zeros(3))):
        with pytest.raises(ValueError, match="'enc.bias'.*shape"):
            call()
    for call in _call_all(REFERENCED[4], p, anchor=anchor(weight=torch.zeros(2, 3, dtype=torch.float64))):
        with pytest.raises(ValueError, match="'enc.weight'.*dtype"):
            call()
    broken = anchor()
    del broken["layers"]
    for call in _call_all(REFERENCED[4], p, anchor=broken):
        with pytest.raises(ValueError, match="'layers.0'"):
            call()
    for call in _call_all(REFERENCED[4], p, anchor=anchor(bias=[0.0, 0.0])):
        with pytest.raises((TypeError, ValueError), match="enc.bias"):
            call()
    with pytest.raises(TypeError, match="anchor"):
        fr.l2_sp(p, 0.1)
    with pytest.raises(TypeError, match="anchor"):
        fr.l2_sp.prox(p, 0.1, 0.5)


def test_unknown_keyword() -> None:
    p = _params()
    with pytest.raises(TypeError, match="l1_ratio"):
        fr.l1(p, 0.1, l1_ratio=0.5)
    with pytest.raises(TypeError, match="anchor"):
        fr.l2.prox(p, 0.1, 0.5, anchor=p)
    with pytest.raises(TypeError, match="dim"):
        fr.elastic_net.grad(p, 0.1, dim=0)


# ------------------------------------------------------------------- hyperparameters
@pytest.mark.parametrize("fam", REFERENCED, ids=REFERENCED_IDS)
@pytest.mark.parametrize("bad", [-0.1, -1, math.nan, math.inf, -math.inf])
def test_bad_python_number_lam_or_step(fam: Family, bad: float) -> None:
    p = _params()
    _raises_everywhere(fam, ValueError, "lam", p, lam=bad)
    opts = fam.options(p)
    with pytest.raises(ValueError, match="step"):
        fam.penalty.prox(p, 0.1, bad, **opts)
    # inside a per-leaf dict, the error names the leaf
    lam = {"enc.weight": 0.1, "enc.bias": bad, "layers.0": 0.1}
    with pytest.raises(ValueError, match="'enc.bias'"):
        fam.penalty(p, lam, **opts)
    with pytest.raises(ValueError, match="'layers.0'"):
        fam.penalty.prox(p, 0.1, {"enc.weight": 0.1, "enc.bias": 0.1, "layers.0": bad}, **opts)


@pytest.mark.parametrize("bad", ["0.1", None, True, object()])
def test_lam_of_wrong_type(bad) -> None:
    for call in _call_all(REFERENCED[0], _params(), lam=bad):
        with pytest.raises(TypeError, match="lam"):
            call()


@pytest.mark.parametrize("bad", [1.5, -0.1, math.nan, math.inf])
def test_l1_ratio_out_of_range(bad: float) -> None:
    for call in _call_all(REFERENCED[2], _params(), l1_ratio=bad):
        with pytest.raises(ValueError, match="l1_ratio"):
            call()
    with pytest.raises(ValueError, match="l1_ratio"):
        fr.elastic_net(_params(), 0.1, l1_ratio=torch.ones(2))
    with pytest.raises(TypeError, match="l1_ratio"):
        fr.elastic_net(_params(), 0.1, l1_ratio="0.5")


@pytest.mark.parametrize("fam", REFERENCED, ids=REFERENCED_IDS)
def test_lam_dict_missing_or_unknown_leaf(fam: Family) -> None:
    p = _params()
    _raises_everywhere(fam, ValueError, "'enc.bias'", p, lam={"enc.weight": 0.1, "layers.0": 0.1})
    _raises_everywhere(fam, ValueError, "'enc.nope'", p, lam={"enc.weight": 0.1, "enc.bias": 0.1, "layers.0": 0.1, "enc.nope": 1.0})
    # a nested lam tree missing a leaf
    _raises_everywhere(fam, ValueError, "'layers.0'", p, lam={"enc": {"weight": 0.1, "bias": 0.1}})
    # unselected leaves may be left out
    opts = fam.options(p)
    fam.penalty(p, {"enc.weight": 0.1, "layers.0": 0.2}, where=fr.select.weights, **opts)


@pytest.mark.parametrize("fam", REFERENCED, ids=REFERENCED_IDS)
def test_non_0d_tensor_lam(fam: Family) -> None:
    p = _params()
    _raises_everywhere(fam, ValueError, "0-d", p, lam=torch.ones(2))
    _raises_everywhere(fam, ValueError, "0-d", p, lam=torch.ones(2, 3))  # even shaped like a leaf
    if fam.separable:  # per-element λ must have its leaf's shape
        _raises_everywhere(fam, ValueError, "'enc.weight'", p, lam={"enc.weight": torch.ones(3, 2), "enc.bias": 0.1, "layers.0": 0.1})
    else:
        _raises_everywhere(fam, ValueError, "'enc.weight'", p, lam={"enc.weight": torch.ones(2, 3), "enc.bias": 0.1, "layers.0": 0.1})


@pytest.mark.parametrize("dim", [2, -3, 5])
def test_group_lasso_dim_out_of_range(dim: int) -> None:
    for call in _call_all(REFERENCED[3], _params(), dim=dim):
        with pytest.raises(ValueError, match=r"'enc\.weight'|'layers\.0'"):
            call()
    with pytest.raises(ValueError, match="'enc.bias'"):  # a 1-d leaf takes dim 0 or -1 only
        fr.group_lasso(_params(), 0.1, dim=1)
    with pytest.raises(TypeError, match="dim"):
        fr.group_lasso(_params(), 0.1, dim=1.0)


def test_group_lasso_per_element_step() -> None:
    with pytest.raises(ValueError, match="'enc.weight'"):
        fr.group_lasso.prox(_params(), 0.1, {"enc.weight": torch.ones(2, 3), "enc.bias": 0.1, "layers.0": 0.1})


# --------------------------------------------------------------------------------- CUDA
@pytest.mark.cuda
def test_device_mismatch_names_the_leaf(cuda: torch.device) -> None:
    p = _params()
    g = _grads()
    g["enc"]["weight"] = g["enc"]["weight"].to(cuda)
    with pytest.raises(ValueError, match=r"'enc\.weight'.*cuda"):
        fr.l2.add_grad(g, p, 0.1)
    anchor = {k: v for k, v in _grads().items()}
    anchor["count"] = torch.tensor(0)
    anchor["layers"] = [torch.zeros(3, 3, device=cuda)]
    with pytest.raises(ValueError, match=r"'layers\.0'.*cuda"):
        fr.l2_sp(p, 0.1, anchor=anchor)


def _every_operation(penalty: fr.Penalty, params: Any, **kw: Any) -> list[Callable[[], Any]]:
    calls = [lambda: penalty(params, 0.1, **kw)]
    if "grad" not in penalty.without:
        calls += [lambda: penalty.grad(params, 0.1, **kw), lambda: penalty.add_grad(params, params, 0.1, **kw)]
    if "prox" not in penalty.without:
        calls.append(lambda: penalty.prox(params, 0.1, 0.5, **kw))
    if "lambda_max" not in penalty.without:
        calls.append(lambda: penalty.lambda_max(params, **kw))
    return calls


@pytest.mark.parametrize("penalty,operation", [
    (fr.l0, "grad"), (fr.l0, "add_grad"), (fr.l0, "lambda_max"),
    (fr.orthogonal, "prox"), (fr.orthogonal, "lambda_max"),
    (fr.l2, "lambda_max"), (fr.l2_sp, "lambda_max"),
], ids=lambda x: x if isinstance(x, str) else repr(x))
def test_operations_a_family_does_not_have(penalty: fr.Penalty, operation: str) -> None:
    p = {"w": torch.ones(2, 2)}
    args: dict[str, tuple[Any, ...]] = {"grad": (p, 0.1), "add_grad": (p, p, 0.1), "prox": (p, 0.1, 1.0), "lambda_max": (p,)}
    name = "lambda_max" if operation == "lambda_max" else ("grad" if operation == "add_grad" else operation)
    call = getattr(penalty, operation)
    keep = snapshot(p)
    with pytest.raises(TypeError, match=rf"{penalty!r} has no {name}"):
        call(*args[operation], **({"anchor": p} if penalty is fr.l2_sp else {}))
    if operation in ("prox", "add_grad"):  # a donated call is refused the same way
        with pytest.raises(TypeError, match=rf"{penalty!r} has no {name}"):
            call(*args[operation], donate=True)
    assert_untouched(keep)


@pytest.mark.parametrize("penalty", [fr.nuclear_norm, fr.orthogonal], ids=repr)
@pytest.mark.parametrize("leaf,path", [(torch.ones(2), "enc.bias"), (torch.tensor(1.0), "enc.bias")])
def test_matrix_families_refuse_vectors_and_scalars(penalty: fr.Penalty, leaf: torch.Tensor, path: str) -> None:
    params = {"enc": {"weight": torch.ones(2, 3), "bias": leaf}}
    for call in _every_operation(penalty, params):
        with pytest.raises(ValueError, match=rf"'{path}' has shape \(.*\).*where=fr.select.weights"):
            call()
    for call in _every_operation(penalty, params, where=fr.select.weights):  # the fix the message names
        call()


@pytest.mark.parametrize("gamma", [0.0, -1.0, math.nan, math.inf])
def test_mcp_gamma_out_of_range(gamma: float) -> None:
    for call in _every_operation(fr.mcp, _params(), gamma=gamma):
        with pytest.raises(ValueError, match="gamma"):
            call()


@pytest.mark.parametrize("gamma", [1.0, 0.5, 0.0, -2.0, math.nan, math.inf])
def test_scad_gamma_out_of_range(gamma: float) -> None:
    for call in _every_operation(fr.scad, _params(), gamma=gamma):
        with pytest.raises(ValueError, match="gamma"):
            call()


@pytest.mark.parametrize("penalty", [fr.mcp, fr.scad], ids=repr)
def test_gamma_of_the_wrong_kind(penalty: fr.Penalty) -> None:
    with pytest.raises(TypeError, match="gamma"):
        penalty(_params(), 0.1, gamma="3")
    with pytest.raises(ValueError, match="gamma.*0-d"):
        penalty.prox(_params(), 0.1, 1.0, gamma=torch.ones(2))
    with pytest.raises(TypeError, match="gamma"):  # one γ for the call, not a tree
        penalty.prox(_params(), 0.1, 1.0, gamma={"enc.weight": 3.0})


@pytest.mark.parametrize("rho", [1.5, -0.1, math.nan, math.inf])
def test_sparse_group_lasso_l1_ratio_out_of_range(rho: float) -> None:
    for call in _every_operation(fr.sparse_group_lasso, _params(), l1_ratio=rho):
        with pytest.raises(ValueError, match="l1_ratio"):
            call()
    with pytest.raises(ValueError, match="l1_ratio"):
        fr.elastic_net.lambda_max(_params(), l1_ratio=rho)
    with pytest.raises(ValueError, match="l1_ratio"):
        fr.sparse_group_lasso(_params(), 0.1, l1_ratio=torch.ones(2))


def test_group_families_take_one_value_per_leaf() -> None:
    per_element = {"enc.weight": torch.ones(2, 3), "enc.bias": 0.1, "layers.0": 0.1}
    for penalty in (fr.sparse_group_lasso, fr.nuclear_norm):
        kw = {"where": fr.select.weights} if penalty is fr.nuclear_norm else {}
        with pytest.raises(ValueError, match="'enc.weight'.*one value per leaf"):
            penalty.prox(_params(), per_element, 1.0, **kw)
        with pytest.raises(ValueError, match="'enc.weight'.*one value per leaf"):
            penalty.prox(_params(), 0.1, per_element, **kw)
    with pytest.raises(ValueError, match=r"sparse_group_lasso dim=2 .*'enc.weight'"):
        fr.sparse_group_lasso(_params(), 0.1, dim=2)
    with pytest.raises(TypeError, match="dim"):
        fr.sparse_group_lasso.lambda_max(_params(), dim=0.5)


def test_bad_lam_and_step_for_the_new_families() -> None:
    for penalty in (fr.sparse_group_lasso, fr.mcp, fr.scad, fr.l0):
        with pytest.raises(ValueError, match="lam"):
            penalty(_params(), -0.1)
        with pytest.raises(ValueError, match="step"):
            penalty.prox(_params(), 0.1, math.nan)
        with pytest.raises(ValueError, match="'layers.0'"):
            penalty.prox(_params(), {"enc.weight": 0.1, "enc.bias": 0.1, "layers.0": -1.0}, 0.5)


def test_lambda_max_errors() -> None:
    with pytest.raises(ValueError, match="selects no leaf"):
        fr.l1.lambda_max(_params(), where=fr.select.only("nothing"))
    with pytest.raises(TypeError, match="'g'"):
        fr.mcp.lambda_max({"g": 1.0})
    with pytest.raises(TypeError, match="unexpected keyword argument 'gamma'"):
        fr.l1.lambda_max(_params(), gamma=3.0)


# ------------------------------------------------------------------------- projections
@pytest.mark.parametrize("project,args", [
    (fr.project.max_norm, ()), (fr.project.l2_ball, ()), (fr.project.l1_ball, ()),
], ids=["max_norm", "l2_ball", "l1_ball"])
@pytest.mark.parametrize("bad", [-0.5, math.nan, math.inf])
def test_bad_radius(project: Callable[..., Any], args: tuple, bad: float) -> None:
    with pytest.raises(ValueError, match="finite number"):
        project(_params(), bad, *args)
    with pytest.raises(ValueError, match="'layers.0'"):
        project(_params(), {"enc.weight": 1.0, "enc.bias": 1.0, "layers.0": bad})
    with pytest.raises(ValueError, match="0-d"):
        project(_params(), torch.ones(2))


def test_box_errors() -> None:
    with pytest.raises(ValueError, match=r"'enc.weight' is empty: low=1.0 > high=0.0"):
        fr.project.box(_params(), 1.0, 0.0)
    with pytest.raises(ValueError, match=r"'layers.0' is empty: low=0.5 > high=0.25"):
        fr.project.box(_params(), {"enc.weight": 0.0, "enc.bias": 0.0, "layers.0": 0.5}, 0.25)
    with pytest.raises(ValueError, match="low or a high"):
        fr.project.box(_params(), None, None)
    with pytest.raises(ValueError, match="'enc.bias'.*shape"):
        fr.project.box(_params(), {"enc.weight": 0.0, "enc.bias": torch.zeros(3), "layers.0": 0.0}, 1.0)
    with pytest.raises(ValueError, match="finite"):
        fr.project.box(_params(), -math.inf, 1.0)
    fr.project.box(_params(), -2.0, -1.0)  # negative bounds are fine


def test_projection_selection_and_dim_errors() -> None:
    with pytest.raises(ValueError, match="selects no leaf"):
        fr.project.non_negative(_params(), where=lambda path, leaf: False)
    with pytest.raises(TypeError, match="'count'"):
        fr.project.l1_ball(_params(), 1.0, where=lambda path, leaf: True)
    with pytest.raises(ValueError, match=r"max_norm dim=2 is out of range for leaf 'enc.weight'"):
        fr.project.max_norm(_params(), 1.0, dim=2)
    with pytest.raises(TypeError, match="dim"):
        fr.project.max_norm(_params(), 1.0, dim="0")


def test_nothing_is_written_when_a_donated_call_fails() -> None:
    params = {"a": torch.randn(3, 4), "b": torch.randn(3), "c": torch.randn(2, 2)}
    keep = snapshot(params)
    with pytest.raises(ValueError, match="'c'"):
        fr.project.l1_ball(params, {"a": 1.0, "b": 1.0, "c": -1.0}, donate=True)
    with pytest.raises(ValueError, match="'c'"):
        fr.project.box(params, {"a": 0.0, "b": 0.0, "c": 2.0}, 1.0, donate=True)
    with pytest.raises(ValueError, match="'c'"):
        fr.mcp.prox(params, 0.1, {"a": 1.0, "b": 1.0, "c": math.nan}, donate=True)
    with pytest.raises(ValueError, match="'b'"):
        fr.nuclear_norm.prox(params, 0.1, 1.0, donate=True)
    assert_untouched(keep)


# ------------------------------------------------------------------ lambda_grid, sparsity
@pytest.mark.parametrize("n", [0, -3, 2.5, True, "10", None])
def test_lambda_grid_bad_n(n: Any) -> None:
    with pytest.raises(ValueError, match="n must be a positive int"):
        fr.lambda_grid(1.0, n=n)


@pytest.mark.parametrize("eps,exc", [(0.0, ValueError), (-1e-3, ValueError), (1.5, ValueError),
                                     (math.nan, ValueError), ("0.1", TypeError)])
def test_lambda_grid_bad_eps(eps: Any, exc: type) -> None:
    with pytest.raises(exc, match="eps"):
        fr.lambda_grid(1.0, eps=eps)


def test_lambda_grid_bad_lam_max() -> None:
    with pytest.raises(ValueError, match="lam_max"):
        fr.lambda_grid(-1.0)
    with pytest.raises(ValueError, match="lam_max.*0-d"):
        fr.lambda_grid(torch.ones(3))
    with pytest.raises(TypeError, match="lam_max"):
        fr.lambda_grid("1.0")


def test_sparsity_errors() -> None:
    with pytest.raises(TypeError, match="dim must be an int or None"):
        fr.sparsity(_params(), dim=1.0)
    with pytest.raises(TypeError, match="dim must be an int or None"):
        fr.sparsity(_params(), dim=True)
    with pytest.raises(ValueError, match="selects no leaf"):
        fr.sparsity(_params(), where=fr.select.only("nothing"))
    with pytest.raises(TypeError, match="'x.0'"):
        fr.sparsity({"x": [1.0, 2.0]})
