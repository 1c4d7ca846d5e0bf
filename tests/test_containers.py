"""Containers that register their keys only with ``torch.utils._pytree``: their leaves are
named by key (``0.weight``), never by position (``0.0``), or the container is refused.

torch mirrors such a type into optree's "torch" namespace without its keys, so these tests
guard against a regression to optree's positional names, which would let
``exclude("bias")`` decay biases and a per-path λ dict miss its leaves.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.utils._pytree as torch_pytree
from torch import nn

import funcreg as fr


@pytest.fixture
def tensordict() -> Any:
    return pytest.importorskip("tensordict", reason="tensordict is in the 'test' extra")


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2))


def _leaf_keys(td: Any) -> list[str]:
    return [".".join(k) for k in td.keys(include_nested=True, leaves_only=True)]


def _rows(table: str) -> dict[str, str]:
    """describe()'s table as {path: "yes"/"no"}."""
    return {r.split()[0]: r.split()[-1] for r in table.splitlines()[1:-1]}


def test_tensordict_leaves_are_named_by_key(tensordict: Any) -> None:
    td = tensordict.TensorDict.from_module(_model()).detach()
    rows = _rows(fr.select.describe(td, fr.select.exclude("bias")))
    assert rows == {"0.weight": "yes", "0.bias": "no", "2.weight": "yes", "2.bias": "no"}


def test_nested_in_a_dict_and_beside_none(tensordict: Any) -> None:
    td = tensordict.TensorDict.from_module(_model()).detach()
    tree = {"net": td, "scale": torch.ones(2)}
    seen: list[str] = []
    fr.l2(tree, 1.0, where=lambda path, leaf: seen.append(path) or True)
    assert seen == ["net.0.weight", "net.0.bias", "net.2.weight", "net.2.bias", "scale"]
    grads = {"net": td.apply(torch.ones_like), "scale": None}  # None: no gradient
    out = fr.l2.add_grad(grads, tree, 1.0, where=fr.select.exclude("bias"))
    assert out["scale"] is None


@pytest.mark.parametrize("route", ["eager", "vmap"])
def test_exclude_bias_leaves_biases_untouched(tensordict: Any, route: str) -> None:
    td = tensordict.TensorDict.from_module(_model()).detach()
    grads = td.apply(lambda t: torch.full_like(t, 0.5))
    where = fr.select.exclude("bias")
    if route == "eager":
        prox = fr.l2.prox(td, 0.1, 1.0, where=where)
        added = fr.l1.add_grad(grads, td, 0.1, where=where)
    else:  # the composable path, λ batched
        lams = torch.tensor([0.1, 0.2])
        prox = torch.func.vmap(lambda lam: fr.l2.prox(td, lam, 1.0, where=where))(lams)[0]
        added = torch.func.vmap(lambda lam: fr.l1.add_grad(grads, td, lam, where=where))(lams)[0]
    for out in (prox, added):
        assert isinstance(out, tensordict.TensorDict)
        assert sorted(_leaf_keys(out)) == sorted(_leaf_keys(td))
    for layer in ("0", "2"):
        assert torch.equal(prox[layer, "bias"], td[layer, "bias"])
        assert torch.equal(added[layer, "bias"], grads[layer, "bias"])
        torch.testing.assert_close(prox[layer, "weight"], td[layer, "weight"] / 1.2)
        torch.testing.assert_close(
            added[layer, "weight"], grads[layer, "weight"] + 0.1 * td[layer, "weight"].sign()
        )


def test_per_path_lambda_dict(tensordict: Any) -> None:
    td = tensordict.TensorDict.from_module(_model()).detach()
    lam = {"0.weight": 0.5, "2.weight": 0.25}
    got = fr.l1(td, lam, where=fr.select.weights)
    want = 0.5 * td["0", "weight"].abs().sum() + 0.25 * td["2", "weight"].abs().sum()
    torch.testing.assert_close(got, want)
    grads = fr.l1.grad(td, lam, where=fr.select.weights)
    torch.testing.assert_close(grads["2", "weight"], 0.25 * td["2", "weight"].sign())
    with pytest.raises(ValueError, match=r"'0\.0'"):  # positional names are not params'
        fr.l1(td, {"0.0": 0.5}, where=fr.select.only("0.weight"))


def test_optimizer_step_and_plain_dict_grads(tensordict: Any) -> None:
    td = tensordict.TensorDict.from_module(_model()).detach()
    plain = {k: v.detach() for k, v in _model().named_parameters()}
    grads = {k: torch.full_like(v, 0.5) for k, v in plain.items()}  # matched by path
    state = fr.adamw.init(td)
    new, state = fr.adamw.step(td, grads, state, lr=0.1, where=fr.select.exclude("bias"))
    ref, _ = fr.adamw.step(plain, grads, fr.adamw.init(plain), lr=0.1, where=fr.select.exclude("bias"))
    assert isinstance(new, tensordict.TensorDict)
    assert isinstance(state["exp_avg"], tensordict.TensorDict)
    for path, value in ref.items():
        torch.testing.assert_close(new[tuple(path.split("."))], value)


# ------------------------------------------- containers registered with torch.utils._pytree
class Keyed:
    """A container whose registration gives its keys."""

    def __init__(self, **items: Any):
        self.items = items


class Unkeyed:
    """A container registered without flatten_with_keys_fn: torch knows no names for it."""

    def __init__(self, *items: Any):
        self.items = list(items)


class Inconsistent(Keyed):
    """A registration whose two flatten functions disagree on the number of children."""


torch_pytree.register_pytree_node(
    Keyed,
    lambda c: (list(c.items.values()), list(c.items)),
    lambda values, keys: Keyed(**dict(zip(keys, values))),
    flatten_with_keys_fn=lambda c: (
        [(torch_pytree.MappingKey(k), v) for k, v in c.items.items()], list(c.items)
    ),
)
torch_pytree.register_pytree_node(
    Unkeyed, lambda c: (c.items, None), lambda values, _: Unkeyed(*values)
)
torch_pytree.register_pytree_node(
    Inconsistent,
    lambda c: (list(c.items.values()), list(c.items)),
    lambda values, keys: Inconsistent(**dict(zip(keys, values))),
    flatten_with_keys_fn=lambda c: ([(torch_pytree.MappingKey("only"), 0)], list(c.items)),
)


def test_container_with_keys_is_named_and_rebuilt() -> None:
    tree = {"block": Keyed(weight=torch.ones(2, 2), bias=torch.ones(2))}
    rows = _rows(fr.select.describe(tree, fr.select.exclude("bias")))
    assert rows == {"block.weight": "yes", "block.bias": "no"}
    out = fr.l2.prox(tree, 0.5, 1.0, where=fr.select.exclude("bias"))
    assert isinstance(out["block"], Keyed) and list(out["block"].items) == ["weight", "bias"]
    torch.testing.assert_close(out["block"].items["weight"], torch.full((2, 2), 0.5))
    assert torch.equal(out["block"].items["bias"], torch.ones(2))


@pytest.mark.parametrize("where", [None, fr.select.exclude("bias")])
def test_container_without_keys_is_refused(where: Any) -> None:
    tree = {"block": Unkeyed(torch.ones(2, 2), torch.ones(2))}
    message = r"params: the .*Unkeyed at block .*without flatten_with_keys_fn"
    with pytest.raises(TypeError, match=message):
        fr.l2(tree, 0.1, where=where)
    with pytest.raises(TypeError, match=message):
        fr.select.describe(tree)
    with pytest.raises(TypeError, match=r"the .*Unkeyed at the root"):
        fr.sgd.init(Unkeyed(torch.ones(2)))


def test_inconsistent_registration_is_refused() -> None:
    with pytest.raises(TypeError, match=r"Inconsistent at the root flattens to 2 children"):
        fr.l1(Inconsistent(weight=torch.ones(2, 2), bias=torch.ones(2)), 0.1)


def test_container_with_keys_under_compile() -> None:
    tree = {"block": Keyed(weight=torch.ones(2, 2), bias=torch.ones(2))}
    value = torch.compile(
        lambda t, lam: fr.l2(t, lam, where=fr.select.exclude("bias")), fullgraph=True
    )
    torch.testing.assert_close(value(tree, torch.tensor(0.5)), torch.tensor(2.0))
