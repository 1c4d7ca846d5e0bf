"""Error messages that say what to do instead: each test provokes a mistake a
new user makes and asserts both the leaf the message names and its hint."""

from __future__ import annotations

import re

import pytest
import torch

import funcreg as fr


@pytest.fixture
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 2))


@pytest.fixture
def params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach() for k, v in model.named_parameters()}


@pytest.mark.parametrize("lam", [[0.1, 0.2], (0.1, 0.2)])
def test_several_lam_as_a_list_points_to_vmap_and_to_a_per_leaf_dict(params, lam) -> None:
    with pytest.raises(ValueError) as info:
        fr.l1(params, lam)
    message = str(info.value)
    assert "lam names leaf '0'" in message
    assert "torch.func.vmap" in message and "one tensor" in message
    assert "{'0.weight': ...}" in message  # a per-leaf λ, keyed by an actual path


def test_a_per_leaf_dict_with_a_wrong_path_shows_a_right_one(params) -> None:
    with pytest.raises(ValueError, match=re.escape("lam names leaf 'weight'")) as info:
        fr.l1(params, {"weight": 0.1})
    assert "{'0.weight': ...}" in str(info.value)


def test_several_learning_rates_as_a_list_point_to_vmap(params) -> None:
    grads = {k: torch.ones_like(v) for k, v in params.items()}
    with pytest.raises(TypeError, match="lr must be a number or a tensor, not list") as info:
        fr.sgd.step(params, grads, fr.sgd.init(params), lr=[0.1, 0.2])
    assert "torch.func.vmap" in str(info.value)


def test_where_as_a_list_of_paths_points_to_select_only(params) -> None:
    with pytest.raises(TypeError) as info:
        fr.l1(params, 0.1, where=["0.weight"])
    message = str(info.value)
    assert "a where is a selector, a callable (path, leaf) -> bool, or a tree of bools" in message
    assert "fr.select.only('0.weight')" in message


def test_where_as_a_string_points_to_select_only(params) -> None:
    with pytest.raises(TypeError, match=re.escape("where=fr.select.only('bias')")):
        fr.l1(params, 0.1, where="bias")


def test_a_where_tree_missing_a_leaf_says_it_needs_every_leaf(params) -> None:
    with pytest.raises(ValueError, match="it lacks params leaf '0.bias'") as info:
        fr.l1(params, 0.1, where={"0.weight": True})
    assert "a bool for every leaf" in str(info.value) and "fr.select.only" in str(info.value)


@pytest.mark.parametrize("call", ["add_grad", "step"])
def test_grads_missing_a_leaf_say_that_a_none_gradient_is_allowed(params, call) -> None:
    grads = {"0.weight": torch.ones_like(params["0.weight"])}
    with pytest.raises(ValueError, match="it lacks params leaf '0.bias'") as info:
        if call == "add_grad":
            fr.l1.add_grad(grads, params, 0.1)
        else:
            fr.sgd.step(params, grads, fr.sgd.init(params), lr=0.1)
    assert "given as None (grads[path] = None)" in str(info.value)


def test_the_hint_holds_none_gradient_as_it_says(params) -> None:
    # what the message recommends works: a None gradient leaves its leaf as it is
    grads = {"0.weight": torch.ones_like(params["0.weight"]), "0.bias": None}
    out = fr.l1.add_grad(grads, params, 0.1)
    assert out["0.bias"] is None
    new, _ = fr.sgd.step(params, grads, fr.sgd.init(params), lr=0.1)
    torch.testing.assert_close(new["0.bias"], params["0.bias"])


def test_a_module_given_as_params_says_how_to_get_its_parameters(model) -> None:
    with pytest.raises(TypeError, match="is a Sequential, not a tensor") as info:
        fr.l1(model, 0.1)
    assert "{k: p.detach() for k, p in model.named_parameters()}" in str(info.value)


def test_select_only_with_a_list_says_to_unpack_it() -> None:
    with pytest.raises(TypeError, match=re.escape("fr.select.only(*patterns)")):
        fr.select.only(["0.weight", "0.bias"])
