"""Parameter selection: fr.select selectors and their algebra, describe(), the three kinds
of ``where``, and the dotted leaf paths they see."""

from __future__ import annotations

import collections

import pytest
import torch
from hypothesis import given
from torch import nn

import funcreg as fr
from conftest import is_float, trees, walk


def _model_params():
    torch.manual_seed(0)
    model = nn.ModuleDict(
        {
            "enc": nn.Sequential(nn.Linear(4, 3), nn.LayerNorm(3)),
            "conv": nn.Conv1d(2, 3, 2),
            "head": nn.Linear(3, 1),
        }
    )
    params = {k: v.detach() for k, v in model.named_parameters()}
    params["steps"] = torch.tensor(5)  # an integer buffer
    return params


def _mask(params, where):
    """Which leaves ``where`` selects, read off fr.l1.grad with λ = 1 (ones where selected
    at nonzero entries) and cross-checked with describe()."""
    g = fr.l1.grad({k: v if not v.is_floating_point() else v.abs() + 1 for k, v in params.items()}, 1.0, where=where)
    from_grad = {k: bool(v.is_floating_point() and (v != 0).all().item() and v.numel() > 0) for k, v in g.items()}
    rows = fr.select.describe(params, where).splitlines()[1:-1]
    from_table = {r.split()[0]: r.split()[-1] == "yes" for r in rows}
    assert from_grad == from_table
    return {k for k, v in from_table.items() if v}


ALL_FLOAT = {"enc.0.weight", "enc.0.bias", "enc.1.weight", "enc.1.bias", "conv.weight", "conv.bias", "head.weight", "head.bias"}


def test_named_parameters_keys_are_their_own_paths() -> None:
    params = _model_params()
    seen = []

    def where(path, leaf):
        seen.append(path)
        return leaf.is_floating_point()

    fr.l2(params, 0.1, where=where)
    assert seen == list(params)  # every key of named_parameters(), as is, in order
    assert set(k for k in params if params[k].is_floating_point()) == ALL_FLOAT
    lam = {k: 0.1 for k in ALL_FLOAT}  # so a dict keyed by those names is a per-leaf λ
    torch.testing.assert_close(fr.l2(params, lam), fr.l2(params, 0.1))


def test_weights_only_exclude() -> None:
    params = _model_params()
    assert _mask(params, None) == ALL_FLOAT  # every floating leaf, not the int buffer
    assert _mask(params, fr.select.weights) == {"enc.0.weight", "conv.weight", "head.weight"}
    assert _mask(params, fr.select.only("bias")) == {"enc.0.bias", "enc.1.bias", "conv.bias", "head.bias"}
    assert _mask(params, fr.select.only(r"^enc\.0", "head.w")) == {"enc.0.weight", "enc.0.bias", "head.weight"}
    assert _mask(params, fr.select.exclude("bias", r"enc\.1")) == {"enc.0.weight", "conv.weight", "head.weight"}
    # only/exclude never pick the integer leaf, even when the regex matches it
    assert _mask(params, fr.select.only("steps|head")) == {"head.weight", "head.bias"}
    assert "steps" not in _mask(params, fr.select.exclude("nothing-matches-this"))


def test_selector_algebra() -> None:
    params = _model_params()
    w, enc = fr.select.weights, fr.select.only("enc")
    assert _mask(params, w & enc) == {"enc.0.weight"}
    assert _mask(params, w | enc) == {"enc.0.weight", "enc.0.bias", "enc.1.weight", "enc.1.bias", "conv.weight", "head.weight"}
    assert _mask(params, ~w) == ALL_FLOAT - {"enc.0.weight", "conv.weight", "head.weight"}
    assert _mask(params, ~(w | enc)) == {"conv.bias", "head.bias"}
    assert _mask(params, w & ~fr.select.only("conv")) == {"enc.0.weight", "head.weight"}
    assert "&" in repr(w & enc) and "~" in repr(~w)


def test_describe_table() -> None:
    params = {"fc.weight": torch.ones(3, 2), "fc.bias": torch.ones(3), "n": torch.tensor([1, 2])}
    text = fr.select.describe(params, fr.select.weights)
    lines = text.splitlines()
    assert lines[0].split() == ["path", "shape", "dtype", "selected"]
    assert lines[1].split() == ["fc.weight", "(3,", "2)", "torch.float32", "yes"]
    assert lines[2].split() == ["fc.bias", "(3,)", "torch.float32", "no"]
    assert lines[3].split() == ["n", "(2,)", "torch.int64", "no"]
    assert lines[4] == "1 of 3 leaves selected (6 of 11 elements)"
    # columns are aligned: every row starts its dtype column at the same offset
    starts = {line.index("torch") for line in lines[1:4]}
    assert len(starts) == 1 and lines[0].index("dtype") in starts
    # describing a where that selects nothing is not an error
    assert fr.select.describe(params, fr.select.only("nope")).splitlines()[-1] == "0 of 3 leaves selected (0 of 11 elements)"
    # default: every floating leaf
    assert fr.select.describe(params).splitlines()[-1] == "2 of 3 leaves selected (9 of 11 elements)"


def test_where_as_pytree_of_bools() -> None:
    params = {"a": [torch.ones(2), torch.ones(2, 2)], "b": torch.ones(3), "i": torch.tensor(1)}
    where = {"a": [True, False], "b": True, "i": False}
    out = fr.l1.prox(params, 0.5, 1.0, where=where)
    assert torch.equal(out["a"][0], torch.full((2,), 0.5))
    assert out["a"][1] is params["a"][1]  # unselected: passed through as is
    assert torch.equal(out["b"], torch.full((3,), 0.5))
    assert out["i"] is params["i"]
    assert fr.l1(params, 1.0, where=where).item() == 5.0
    g = fr.l2.grad(params, 1.0, where=where)
    assert torch.equal(g["a"][1], torch.zeros(2, 2)) and g["i"].dtype == torch.int64


def test_where_none_skips_integer_leaves() -> None:
    params = {"w": torch.ones(2, 2), "step": torch.tensor(7), "mask": torch.tensor([True, False])}
    assert fr.l2(params, 1.0).item() == 4.0
    out = fr.l2.prox(params, 0.5, 1.0)
    assert out["step"] is params["step"] and out["mask"] is params["mask"]
    g = fr.l2.grad(params, 1.0)
    assert torch.equal(g["step"], torch.tensor(0)) and g["mask"].dtype == torch.bool


def test_nested_tree_paths_are_dotted() -> None:
    Pair = collections.namedtuple("Pair", ["x", "y"])
    params = {
        "layers": [{"weight": torch.ones(2, 2), "bias": torch.ones(2)}, {"weight": torch.ones(2, 2)}],
        "extra": (torch.ones(1), Pair(torch.ones(1), collections.OrderedDict(k=torch.ones(1)))),
    }
    seen = []
    fr.l1(params, 1.0, where=lambda path, leaf: seen.append(path) or True)
    assert seen == ["layers.0.weight", "layers.0.bias", "layers.1.weight", "extra.0", "extra.1.0", "extra.1.1.k"]
    assert _mask_nested(params, fr.select.only(r"^layers\.\d+\.weight$")) == {"layers.0.weight", "layers.1.weight"}


def _mask_nested(params, where):
    rows = fr.select.describe(params, where).splitlines()[1:-1]
    return {r.split()[0] for r in rows if r.split()[-1] == "yes"}


@given(params=trees(int_leaves=True))
def test_where_sees_every_leaf_path_in_order(params) -> None:
    """The paths a where callable receives are the dotted key paths of the tree, as an
    independent walker computes them (dict insertion order, list/tuple indices)."""
    seen = []

    def where(path, leaf):
        seen.append((path, leaf))
        return leaf.is_floating_point()

    fr.l2(params, 0.1, where=where)
    expected = walk(params)
    assert [p for p, _ in seen] == [p for p, _ in expected]
    assert all(a is b for (_, a), (_, b) in zip(seen, expected))
    # and a where tree of bools built by the walker selects the same leaves
    rows = fr.select.describe(params).splitlines()[1:-1]
    assert [r.split()[-1] == "yes" for r in rows] == [is_float(x) for _, x in expected]


def test_selector_pattern_validation() -> None:
    with pytest.raises(ValueError):
        fr.select.only()
    with pytest.raises(ValueError):
        fr.select.exclude()
    with pytest.raises(TypeError):
        fr.select.only(3)  # type: ignore[arg-type]
