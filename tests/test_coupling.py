"""fr.Coupling: validation against a params tree, group norms against slices concatenated by
hand, chunked couplings, and how a list of dicts and Couplings is normalized."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import funcreg as fr


def _hand_norms(params: dict, dims: dict, groups: int) -> list[float]:
    """Group k: the k-th of `groups` equal chunks along each leaf's dim, concatenated, in
    float64 Python arithmetic."""
    out = []
    for k in range(groups):
        parts = []
        for path, dim in dims.items():
            w = params[path]
            width = w.shape[dim] // groups
            parts.append(w.narrow(dim, k * width, width).reshape(-1))
        values = torch.cat(parts).tolist()
        out.append(math.sqrt(sum(v * v for v in values)))
    return out


def test_norms_of_a_unit_coupling_match_hand_concatenation() -> None:
    torch.manual_seed(0)
    params = {"fc.weight": torch.randn(5, 3), "fc.bias": torch.randn(5), "bn.weight": torch.randn(5),
              "other": torch.randn(2)}
    dims = {"fc.weight": 0, "fc.bias": 0, "bn.weight": 0}
    c = fr.Coupling(dims)
    assert c.groups is None and c.validate(params) == 5
    assert c.group_size(params) == 5
    torch.testing.assert_close(c.norms(params), torch.tensor(_hand_norms(params, dims, 5)))


def test_chunked_coupling_conv_channels_and_their_columns_after_flatten() -> None:
    # 3 conv channels, each read by a block of 4 columns of the next Linear
    torch.manual_seed(1)
    params = {"conv.weight": torch.randn(3, 2, 2, 2), "conv.bias": torch.randn(3),
              "fc.weight": torch.randn(7, 12)}
    dims = {"conv.weight": 0, "conv.bias": 0, "fc.weight": 1}
    c = fr.Coupling(dims)
    assert c.validate(params) == 3  # the smallest named size
    assert c.group_size(params) == 8 + 1 + 7 * 4
    torch.testing.assert_close(c.norms(params), torch.tensor(_hand_norms(params, dims, 3)))


def test_heads_coupling_with_explicit_groups() -> None:
    torch.manual_seed(2)
    params = {f"{n}.weight": torch.randn(8, 6, dtype=torch.float64) for n in "qkv"}
    params.update({f"{n}.bias": torch.randn(8, dtype=torch.float64) for n in "qkv"})
    dims = {path: 0 for path in params}
    c = fr.Coupling(dims, groups=2)  # 2 heads of 4 rows
    assert c.validate(params) == 2 and c.group_size(params) == 3 * (4 * 6 + 4)
    norms = c.norms(params)
    assert norms.dtype == torch.float64
    torch.testing.assert_close(norms, torch.tensor(_hand_norms(params, dims, 2), dtype=torch.float64))


@settings(max_examples=10)
@given(groups=st.integers(1, 4), multiples=st.lists(st.integers(1, 3), min_size=1, max_size=3),
       seed=st.integers(0, 2**16))
def test_norms_for_random_multiples(groups: int, multiples: list[int], seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    params, dims = {}, {}
    for i, m in enumerate(multiples):
        dim = i % 2
        shape = [2, 3]
        shape[dim] = groups * m
        params[f"w{i}"] = torch.randn(*shape, generator=g, dtype=torch.float64)
        dims[f"w{i}"] = dim
    c = fr.Coupling(dims, groups=groups)
    torch.testing.assert_close(c.norms(params), torch.tensor(_hand_norms(params, dims, groups), dtype=torch.float64))


def test_norms_are_zero_exactly_for_zero_groups_and_work_in_nested_trees() -> None:
    params = {"a": {"w": torch.tensor([[0.0, 0.0], [3.0, 4.0]])}}
    c = fr.Coupling({"a.w": 0})
    assert c.norms(params).tolist() == [0.0, 5.0]


@pytest.mark.parametrize(
    "dims, groups, params, match",
    [
        ({"missing": 0}, None, {"w": torch.zeros(2)}, "no leaf 'missing'"),
        ({"w": 2}, None, {"w": torch.zeros(2, 2)}, "leaf 'w' has 2 dims"),
        ({"w": 0, "b": 0}, None, {"w": torch.zeros(6, 2), "b": torch.zeros(4)}, "leaf 'w' has size 6"),
        ({"w": 0}, 4, {"w": torch.zeros(6)}, "leaf 'w' has size 6 .* 4 groups"),
        ({"w": 0}, None, {"w": torch.zeros(0, 3)}, "leaf 'w' has size 0"),
    ],
)
def test_validate_names_the_leaf(dims: dict, groups: int | None, params: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        fr.Coupling(dims, groups=groups).validate(params)


def test_validate_refuses_a_non_tensor_leaf() -> None:
    with pytest.raises(TypeError, match="leaf 'w' is a float"):
        fr.Coupling({"w": 0}).validate({"w": 1.0})


@pytest.mark.parametrize(
    "args, kwargs, error",
    [
        (([("w", 0)],), {}, TypeError),
        (({},), {}, ValueError),
        (({1: 0},), {}, TypeError),
        (({"w": True},), {}, TypeError),
        (({"w": 0},), {"groups": 0}, ValueError),
        (({"w": 0},), {"groups": 2.0}, TypeError),
    ],
)
def test_constructor_errors(args: tuple, kwargs: dict, error: type) -> None:
    with pytest.raises(error):
        fr.Coupling(*args, **kwargs)


def test_dims_are_read_only_and_equality_and_hash() -> None:
    d = {"w": 0, "b": 0}
    c = fr.Coupling(d, groups=2)
    d["x"] = 1  # the coupling holds its own copy
    assert dict(c.dims) == {"w": 0, "b": 0}
    with pytest.raises(TypeError):
        c.dims["x"] = 1  # type: ignore[index]
    assert c == fr.Coupling({"b": 0, "w": 0}, groups=2) and hash(c) == hash(fr.Coupling({"b": 0, "w": 0}, groups=2))
    assert c != fr.Coupling({"w": 0, "b": 0})
    assert repr(c) == "Coupling({'w': 0, 'b': 0}, groups=2)"


def test_normalize_a_mixed_list() -> None:
    heads = fr.Coupling({"q.weight": 0}, groups=2)
    out = fr.Coupling.normalize([{"0.weight": 0, "0.bias": 0}, heads])
    assert out == (fr.Coupling({"0.weight": 0, "0.bias": 0}), heads) and out[1] is heads
    assert fr.Coupling.normalize({"w": 0}) == (fr.Coupling({"w": 0}),)
    assert fr.Coupling.normalize(heads) == (heads,)
    with pytest.raises(TypeError, match=r"couplings\[1\] is a str"):
        fr.Coupling.normalize([heads, "q.weight"])
    with pytest.raises(ValueError, match="empty"):
        fr.Coupling.normalize([])
    with pytest.raises(TypeError, match="not set"):
        fr.Coupling.normalize({heads})  # type: ignore[arg-type]
