"""Ensemble helpers: fr.replicate, fr.update_where and fr.converged, alone, under vmap, and
together in a vmapped K-member training step that freezes a converged member exactly."""

from __future__ import annotations

import collections

import pytest
import torch
from torch import nn
from torch.func import grad, stack_module_state, vmap

import funcreg as fr

Pair = collections.namedtuple("Pair", ["first", "second"])


def walk(tree, prefix=""):
    """[(dotted path, leaf)] of dicts, lists and tuples, written without optree."""
    if isinstance(tree, dict):
        return [pl for k, v in tree.items() for pl in walk(v, f"{prefix}{k}.")]
    if isinstance(tree, (list, tuple)):
        return [pl for i, v in enumerate(tree) for pl in walk(v, f"{prefix}{i}.")]
    return [(prefix[:-1], tree)]


def snapshot(*trees):
    return [(x, x.detach().clone(), x._version) for t in trees for _, x in walk(t)
            if isinstance(x, torch.Tensor)]


def assert_untouched(snap) -> None:
    for x, value, version in snap:
        assert x._version == version and torch.equal(x.detach(), value)


def _tree():
    g = torch.Generator().manual_seed(0)
    return {
        "layer": {"weight": torch.randn(2, 3, generator=g), "bias": torch.randn(2, generator=g)},
        "scale": torch.tensor(1.5, dtype=torch.float64),
        "extra": [torch.arange(4), Pair(torch.randn(1, generator=g), torch.randn(2, 2, generator=g))],
    }


# --------------------------------------------------------------------------- replicate
@pytest.mark.parametrize("k", [1, 3])
def test_replicate_stacks_k_copies(k: int) -> None:
    tree = _tree()
    out = fr.replicate(tree, k)
    assert type(out["extra"][1]) is Pair
    for (path, x), (path_out, y) in zip(walk(tree), walk(out)):
        assert path == path_out
        assert y.shape == (k, *x.shape), path
        assert y.dtype == x.dtype and y.device == x.device, path
        for i in range(k):
            assert torch.equal(y[i], x), path


def test_replicate_matches_stack_module_state() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))
    params = {k: v.detach() for k, v in model.named_parameters()}
    stacked, _ = stack_module_state([model] * 3)
    out = fr.replicate(params, 3)
    assert list(out) == list(stacked)
    for key in out:
        assert torch.equal(out[key], stacked[key].detach()), key
        assert not out[key].requires_grad


def test_replicate_copies_share_no_storage() -> None:
    tree = {"w": torch.randn(2, 3, requires_grad=True), "s": torch.tensor(2.0)}
    snap = snapshot(tree)
    out = fr.replicate(tree, 4)
    assert_untouched(snap)
    for key, x in tree.items():
        y = out[key]
        # not a view of the input ...
        assert y.untyped_storage().data_ptr() != x.untyped_storage().data_ptr(), key
        # ... and not an expand()ed view either: K rows laid side by side, none overlapping
        assert y.is_contiguous() and y.stride(0) == max(1, x.numel()), key
        assert y.untyped_storage().nbytes() >= y.numel() * y.element_size(), key
    a, b = fr.replicate(tree, 2)["w"], fr.replicate(tree, 2)["w"]
    assert a.untyped_storage().data_ptr() != b.untyped_storage().data_ptr()


def test_replicate_keeps_none_leaves() -> None:
    state = {"momentum_buffer": {"w": None, "b": torch.zeros(3)}, "extra": (None, torch.ones(()))}
    out = fr.replicate(state, 2)
    assert out["momentum_buffer"]["w"] is None and out["extra"][0] is None
    assert out["momentum_buffer"]["b"].shape == (2, 3)
    assert out["extra"][1].shape == (2,)
    assert isinstance(out["extra"], tuple)


def test_replicate_of_optimizer_state() -> None:
    params = {"w": torch.randn(2, 3), "b": torch.randn(3)}
    state = fr.replicate(fr.adam.init(params), 5)
    assert state["step"]["w"].shape == (5,)
    assert state["exp_avg"]["w"].shape == (5, 2, 3)


@pytest.mark.parametrize("k", [0, -2, 2.0, True, "3", None])
def test_replicate_bad_k(k) -> None:
    with pytest.raises(ValueError, match="k must be a positive int"):
        fr.replicate({"w": torch.ones(2)}, k)


@pytest.mark.parametrize("bad", [0.5, 3, "w", object()])
def test_replicate_non_tensor_leaf(bad) -> None:
    with pytest.raises(TypeError, match=r"'net\.lr'"):
        fr.replicate({"w": torch.ones(2), "net": {"lr": bad}}, 2)


# ------------------------------------------------------------------------ update_where
def _members(k: int = 3):
    g = torch.Generator().manual_seed(1)
    old = {"w": torch.randn(k, 2, 3, generator=g), "b": torch.randn(k, generator=g),
           "d": torch.randn(k, 4, dtype=torch.float64, generator=g)}
    new = {key: v + 1 for key, v in old.items()}
    return old, new


def test_update_where_one_d_active_outside_vmap() -> None:
    old, new = _members()
    active = torch.tensor([True, False, True])
    snap = snapshot(old, new, active)
    out = fr.update_where(active, new, old)
    assert_untouched(snap)
    for key in old:
        assert out[key].dtype == old[key].dtype and out[key].shape == old[key].shape
        for i, a in enumerate(active.tolist()):
            assert torch.equal(out[key][i], (new if a else old)[key][i]), (key, i)


def test_update_where_zero_d_active_inside_vmap() -> None:
    old, new = _members()
    active = torch.tensor([False, True, True])
    seen = []

    def member(a, n, o):
        seen.append(a.shape)
        return fr.update_where(a, n, o)

    out = vmap(member)(active, new, old)
    assert seen == [torch.Size([])]  # one member at a time: a 0-d active
    expected = fr.update_where(active, new, old)
    for key in old:
        assert torch.equal(out[key], expected[key]), key


@pytest.mark.parametrize("flag", [True, False])
def test_update_where_zero_d_active_outside_vmap(flag: bool) -> None:
    old, new = _members()
    out = fr.update_where(torch.tensor(flag), new, old)
    for key in old:
        assert torch.equal(out[key], (new if flag else old)[key]), key


@pytest.mark.parametrize("flag", [True, False])
def test_update_where_python_bool(flag: bool) -> None:
    old, new = _members()
    out = fr.update_where(flag, new, old)
    for key in old:
        assert torch.equal(out[key], (new if flag else old)[key]), key


@pytest.mark.parametrize("active", [False, torch.tensor(False), torch.tensor([False, False])])
def test_update_where_none_old_leaf_takes_new(active) -> None:
    old = {"w": torch.zeros(2, 3), "buf": None}
    new = {"w": torch.ones(2, 3), "buf": torch.full((2, 3), 7.0)}
    out = fr.update_where(active, new, old)
    assert torch.equal(out["w"], old["w"])  # frozen
    assert torch.equal(out["buf"], new["buf"])  # nothing to keep: taken from new


def test_update_where_none_old_leaf_inside_vmap() -> None:
    new = {"w": torch.ones(2, 3), "buf": torch.full((2, 3), 7.0)}

    def member(a, n, w_old):
        return fr.update_where(a, n, {"w": w_old, "buf": None})

    out = vmap(member)(torch.tensor([False, True]), new, torch.zeros(2, 3))
    assert torch.equal(out["w"], torch.tensor([[0.0] * 3, [1.0] * 3]))
    assert torch.equal(out["buf"], new["buf"])


def test_update_where_member_count_mismatch_names_the_leaf() -> None:
    old = {"layer": {"w": torch.zeros(2, 3)}}
    new = {"layer": {"w": torch.ones(2, 3)}}
    with pytest.raises(ValueError, match=r"3 members.*'layer\.w'.*\(2, 3\)"):
        fr.update_where(torch.tensor([True, False, True]), new, old)
    with pytest.raises(ValueError, match=r"'s'"):
        fr.update_where(torch.tensor([True, False]), {"s": torch.ones(())}, {"s": torch.zeros(())})


@pytest.mark.parametrize("bad", [torch.tensor([1, 0]), torch.ones(2, 2, dtype=torch.bool), 1, 0.0, None])
def test_update_where_bad_active(bad) -> None:
    old, new = _members(2)
    with pytest.raises(TypeError, match="active"):
        fr.update_where(bad, new, old)


def test_update_where_structure_mismatch() -> None:
    old, new = _members()
    del new["b"]
    with pytest.raises(ValueError, match="'b'"):
        fr.update_where(torch.tensor([True, True, True]), new, old)


# --------------------------------------------------------------------------- converged
def test_converged_true_and_false() -> None:
    old = {"w": torch.tensor([1.0, -2.0]), "b": torch.tensor(0.5)}
    assert fr.converged(old, old).item() is True
    assert fr.converged(old, {"w": old["w"] + 1e-7, "b": old["b"]}).item() is True  # 1e-7 <= 1e-6 * 2
    assert fr.converged(old, {"w": old["w"], "b": old["b"] + 1e-4}).item() is False  # any leaf counts
    assert fr.converged(old, {"w": old["w"] + 1e-4, "b": old["b"]}, rtol=1e-4).item() is True
    assert fr.converged(old, {"w": old["w"] + 1e-4, "b": old["b"]}, rtol=0.0).item() is False
    assert fr.converged(old, {"w": old["w"] + 1e-4, "b": old["b"]}, rtol=0.0, atol=2e-4).item() is True
    out = fr.converged(old, old)
    assert out.dtype == torch.bool and out.shape == ()


def test_converged_at_zero() -> None:
    zero = {"w": torch.zeros(3)}
    assert fr.converged(zero, zero).item() is True  # nothing moved
    assert fr.converged(zero, {"w": torch.tensor([0.0, 1e-30, 0.0])}).item() is False
    assert fr.converged(zero, {"w": torch.tensor([0.0, 1e-30, 0.0])}, atol=1e-20).item() is True


def test_converged_mixed_dtypes() -> None:
    old = {"a": torch.tensor([1.0, 2.0]), "b": torch.tensor([4.0], dtype=torch.float64),
           "c": torch.tensor([0.5], dtype=torch.bfloat16), "empty": torch.zeros(0)}
    same = {k: v.clone() for k, v in old.items()}
    assert fr.converged(old, same).item() is True
    moved = dict(same, b=same["b"] + 1e-3)  # the float64 leaf moved by 1e-3 > 1e-6 * 4
    assert fr.converged(old, moved).item() is False
    assert fr.converged(old, moved, rtol=1e-3).item() is True


def test_converged_inside_vmap_equals_loop() -> None:
    g = torch.Generator().manual_seed(2)
    K = 5
    old = {"w": torch.randn(K, 3, 2, generator=g), "d": torch.randn(K, 4, dtype=torch.float64, generator=g)}
    steps = torch.tensor([0.0, 1e-9, 1e-7, 1e-5, 1e-3])
    new = {"w": old["w"] + steps.view(K, 1, 1), "d": old["d"] - steps.double().view(K, 1)}
    batched = vmap(lambda o, n: fr.converged(o, n, rtol=1e-6))(old, new)
    loop = torch.stack([
        fr.converged({k: v[i] for k, v in old.items()}, {k: v[i] for k, v in new.items()}, rtol=1e-6)
        for i in range(K)
    ])
    assert batched.dtype == torch.bool and batched.shape == (K,)
    assert torch.equal(batched, loop)
    assert batched[:2].all() and not batched[-1]


def test_converged_structure_mismatch() -> None:
    with pytest.raises(ValueError, match="'b'"):
        fr.converged({"w": torch.ones(2), "b": torch.ones(1)}, {"w": torch.ones(2)})


# ------------------------------------------------------------- a vmapped K-member training
def test_vmapped_training_freezes_a_converged_member_exactly() -> None:
    """Member 0 (a large learning rate) converges first; from then on its params and state
    stay bit-for-bit the same while the other members keep moving, and they move exactly as
    they would if trained alone."""
    K, RTOL, STEPS = 3, 1e-5, 80
    g = torch.Generator().manual_seed(3)
    base = {"w": torch.randn(4, generator=g), "b": torch.randn((), generator=g)}
    target = torch.randn(4, generator=g)
    lrs = torch.tensor([0.8, 0.02, 0.01])

    def loss(params):
        return 0.5 * ((params["w"] - target) ** 2).sum() + 0.5 * (params["b"] - 1.0) ** 2

    def raw_step(params, state, lr):
        return fr.sgd.step(params, grad(loss)(params), state, lr=lr, momentum=0.5)

    def train_step(params, state, lr, active):
        new, new_state = raw_step(params, state, lr)
        active = active & ~fr.converged(params, new, rtol=RTOL)
        return (fr.update_where(active, new, params),
                fr.update_where(active, new_state, state), active)

    step = vmap(train_step)
    params, state = fr.replicate(base, K), fr.replicate(fr.sgd.init(base), K)
    active = torch.ones(K, dtype=torch.bool)
    frozen_at, frozen = None, None
    for t in range(STEPS):
        prev = params
        params, state, active = step(params, state, lrs, active)
        if frozen_at is None and not active[0]:
            frozen_at = t
            frozen = [x[0].clone() for _, x in walk((params, state))]
            # the update it would get is not zero: freezing, not a fixed point, keeps it still
            new, _ = raw_step({k: v[0] for k, v in params.items()},
                              {k: {p: v[0] for p, v in s.items()} for k, s in state.items()}, lrs[0])
            assert any(not torch.equal(new[k], params[k][0]) for k in new)
        if frozen_at is not None:
            assert not active[0]  # a frozen member stays frozen
            now = [x[0] for _, x in walk((params, state))]
            assert all(torch.equal(a, b) for a, b in zip(now, frozen)), f"member 0 moved at step {t}"
        assert active[1:].all()
        for k in params:  # the others still move
            assert not torch.equal(params[k][1:], prev[k][1:]), (t, k)
    assert frozen_at is not None and frozen_at < STEPS - 20  # frozen for 20 steps at least

    for i in (1, 2):  # an active member moves exactly as when trained alone
        alone, alone_state = base, fr.sgd.init(base)
        for _ in range(STEPS):
            alone, alone_state = raw_step(alone, alone_state, lrs[i])
        for k in alone:
            torch.testing.assert_close(params[k][i], alone[k], rtol=1e-6, atol=1e-7)


def test_converged_all_empty_leaves_is_a_clear_error():
    empty = {"w": torch.zeros(0, 3)}
    with pytest.raises(ValueError, match="non-empty leaf"):
        fr.converged(empty, empty)


def test_update_where_none_new_leaf_for_tensor_old_names_the_leaf():
    with pytest.raises(TypeError, match="'w'"):
        fr.update_where(torch.tensor(True), {"w": None}, {"w": torch.zeros(2)})
