"""Bad input raises a clear error that names the leaf path (docs/design.md, "Conventions")."""

from __future__ import annotations

import math
import re

import pytest
import torch

import funcreg as fr
from conftest import REFERENCED, REFERENCED_IDS, Family


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
