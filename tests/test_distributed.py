"""fr.distributed.all_reduce on 2 gloo ranks, and the data-parallel torch.func pattern.

Each multi-process test runs one battery of checks in one spawn (tests/_dist.py); the
argument errors that need no process group run in the test process itself.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, vmap

import funcreg as fr
from _dist import Checks, run_ranks


# ---------------------------------------------------------------- in the test process
def test_outside_a_process_group_is_an_error() -> None:
    import torch.distributed as dist

    assert not dist.is_initialized()
    with pytest.raises(RuntimeError, match="initialized process group"):
        fr.distributed.all_reduce({"w": torch.ones(2)})


def test_without_torch_distributed_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch.distributed as dist

    monkeypatch.setattr(dist, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="is_available"):
        fr.distributed.all_reduce({"w": torch.ones(2)})


def test_bad_op_is_an_error_before_anything_else() -> None:
    with pytest.raises(ValueError, match="op must be 'mean' or 'sum'"):
        fr.distributed.all_reduce({"w": torch.ones(2)}, op="max")


def test_under_a_transform_is_an_error_before_anything_else() -> None:
    with pytest.raises(RuntimeError, match="torch.func transform"):
        vmap(lambda x: fr.distributed.all_reduce({"x": x})["x"])(torch.ones(3, 2))


# ------------------------------------------------------------------------- the ranks
def _mixed(rank: int, ints: bool = False) -> dict[str, Any]:
    """Rank ``rank``'s tree: float32, float64, bfloat16, a transposed view, 0-d, empty
    and None leaves, nested; with ``ints``, an int64 leaf whose sum float64 would round."""
    g = torch.Generator().manual_seed(100 + rank)

    def r(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)

    tree: dict[str, Any] = {
        "a": r(3, 4),
        "b": [r(5, dtype=torch.float64), None, {"c": r(2, 3, dtype=torch.bfloat16)}],
        "t": r(4, 3).t(),
        "s": r(),
        "e": r(0, 3),
        "n": None,
    }
    if ints:
        tree["i"] = torch.arange(4) * (rank + 1) + 2**60 + 1
    return tree


def _leaves(tree: Any) -> list[tuple[str, Any]]:
    """(path, leaf) in order, walked by hand (dicts and lists only)."""
    if isinstance(tree, dict):
        return [(f"{k}.{p}".rstrip("."), x) for k, v in tree.items() for p, x in _leaves(v)]
    if isinstance(tree, list):
        return [(f"{i}.{p}".rstrip("."), x) for i, v in enumerate(tree) for p, x in _leaves(v)]
    return [("", tree)]


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)


_TOL = {torch.float32: 1e-6, torch.float64: 1e-13, torch.bfloat16: 1e-2}


class _Counting:
    """Counts the calls to torch.distributed.all_reduce while active."""

    def __init__(self) -> None:
        import torch.distributed as dist

        self.dist, self.real, self.calls = dist, dist.all_reduce, 0

    def __enter__(self) -> _Counting:
        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            return self.real(*args, **kwargs)

        self.dist.all_reduce = counted
        return self

    def __exit__(self, *exc: Any) -> None:
        self.dist.all_reduce = self.real


def _gathered_equal(tree: Any) -> bool:
    """Whether every rank holds the same bits in ``tree``'s tensor leaves."""
    import torch.distributed as dist

    mine = [x for _, x in _leaves(tree) if isinstance(x, torch.Tensor)]
    everyone: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, mine)
    return all(len(o) == len(mine) and all(map(_same_bits, o, mine)) for o in everyone)


def _check_values(check: Checks, rank: int, world: int, op: str) -> None:
    """Mean / sum of the mixed tree against per-leaf collectives and the hand result."""
    import torch.distributed as dist

    ints = op == "sum"
    tree = _mixed(rank, ints)
    before = [(x, x.clone(), x._version) for _, x in _leaves(tree) if x is not None]
    with _Counting() as count:
        out = fr.distributed.all_reduce(tree, op=op)
    # f32, f64, bf16 (and int64) buckets, plus the check: not one per leaf.
    check(f"{op}: collectives", count.calls == 4 + ints, count.calls)
    check(f"{op}: inputs untouched",
          all(x._version == v and _same_bits(x, c) for x, c, v in before))
    everyone = [_leaves(_mixed(r, ints)) for r in range(world)]
    got = _leaves(out)
    check(f"{op}: paths", [p for p, _ in got] == [p for p, _ in everyone[rank]])
    for k, (path, x) in enumerate(everyone[rank]):
        y = got[k][1]
        if x is None:
            check(f"{op}: {path} stays None", y is None)
            continue
        check(f"{op}: {path} is fresh", y is not x and y.dtype == x.dtype and y.shape == x.shape)
        per_leaf = x.clone()
        dist.all_reduce(per_leaf)
        if op == "mean":
            per_leaf.div_(world)
        check(f"{op}: {path} bitwise as a per-leaf all_reduce", _same_bits(y, per_leaf))
        if x.is_floating_point():
            hand = sum(e[k][1].double() for e in everyone)
            hand = hand / world if op == "mean" else hand
            check(f"{op}: {path} hand-computed",
                  torch.allclose(y.double(), hand, rtol=_TOL[x.dtype], atol=_TOL[x.dtype]))
        else:
            check(f"{op}: {path} exact integer sum",
                  y.tolist() == [sum(e[k][1][j].item() for e in everyone) for j in range(4)])
    check(f"{op}: same bits on every rank", _gathered_equal(out))


def _check_collective_counts(check: Checks, rank: int) -> None:
    torch.manual_seed(rank)
    tree = {f"layer{i}.weight": torch.randn(30, 20) for i in range(25)}
    tree.update({f"layer{i}.bias": torch.randn(30) for i in range(25)})
    with _Counting() as count:
        fr.distributed.all_reduce(tree)
    check("50 leaves of one dtype: one bucket and the check", count.calls == 2, count.calls)
    with _Counting() as count:
        fr.distributed.all_reduce(tree, check=False)
    check("check=False: no check collective", count.calls == 1, count.calls)


def _check_buckets_and_donation(check: Checks, rank: int, world: int) -> None:
    import torch.distributed as dist

    tree = _mixed(rank)
    pure = fr.distributed.all_reduce(tree)
    donated = _mixed(rank)
    ptrs = [(x, x.data_ptr()) for _, x in _leaves(donated) if x is not None]
    with _Counting() as count:
        back = fr.distributed.all_reduce(donated, donate=True)
    check("donate: same collectives as pure", count.calls == 4, count.calls)
    check("donate: returns the same tensors",
          all(y is x for (_, x), (_, y) in zip(_leaves(donated), _leaves(back))))
    check("donate: writes where the leaves lie", all(x.data_ptr() == p for x, p in ptrs))
    check("donate: transposed leaf keeps its layout", donated["t"].stride() == (1, 3))
    check("donate: equals the pure call",
          all(_same_bits(x, y) for (_, x), (_, y) in zip(_leaves(pure), _leaves(back))
              if x is not None))

    # Small buckets: many collectives, in-place single-leaf buckets, and scratch reuse.
    saved = fr.distributed.BUCKET
    fr.distributed.BUCKET = 4
    try:
        small = {f"p{i}": torch.full((2,), float(rank * 10 + i)) for i in range(9)}
        small["big"] = torch.arange(7.0) * (rank + 1)
        want = {k: v.clone() for k, v in small.items()}
        for v in want.values():
            dist.all_reduce(v)
            v.div_(world)
        with _Counting() as count:
            pure_small = fr.distributed.all_reduce(small)
        check("small buckets: one per 4 elements", count.calls == 1 + 5 + 1, count.calls)
        check("small buckets: values",
              all(_same_bits(pure_small[k], want[k]) for k in want))
        check("small buckets: pure is a copy", pure_small["big"] is not small["big"])
        fr.distributed.all_reduce(small, donate=True)
        check("small buckets, donated: values", all(_same_bits(small[k], want[k]) for k in want))
        # Results each share one bucket's storage: none is bigger than a bucket.
        bases = {pure_small[k].untyped_storage().data_ptr() for k in ("p0", "p1")}
        check("small buckets: p0 and p1 share a bucket", len(bases) == 1)
    finally:
        fr.distributed.BUCKET = saved


def _check_refusals(check: Checks, rank: int) -> None:
    w = torch.ones(3)
    with _Counting() as count:
        with check.raises("bad op", ValueError, "op must be"):
            fr.distributed.all_reduce({"w": w}, op="max")
    check("bad op: no collective", count.calls == 0, count.calls)
    with check.raises("integer mean", TypeError, r"'i'.*op='sum'"):
        fr.distributed.all_reduce({"w": w, "i": torch.arange(3)})
    with check.raises("bool leaf", TypeError, "'flag'.*bool"):
        fr.distributed.all_reduce({"flag": torch.ones(2, dtype=torch.bool)}, op="sum")
    with check.raises("non-tensor leaf", TypeError, r"'b\.0' is a float"):
        fr.distributed.all_reduce({"a": w, "b": [1.0]})
    with check.raises("under vmap", RuntimeError, "torch.func transform"):
        vmap(lambda x: fr.distributed.all_reduce({"x": x})["x"])(torch.ones(3, 2))
    with check.raises("under grad", RuntimeError, "torch.func transform"):
        grad(lambda x: fr.distributed.all_reduce({"x": x})["x"].sum())(torch.ones(2))

    # Donations that cannot be honoured: refused before any data moves.
    p = torch.ones(3, requires_grad=True)
    with _Counting() as count:
        with check.raises("donate a leaf that requires grad", ValueError, "requires grad"):
            fr.distributed.all_reduce({"p": p}, donate=True)
    check("refused donation: only the check collective", count.calls == 1, count.calls)
    with check.raises("donate one tensor at two paths", ValueError, "shares memory"):
        fr.distributed.all_reduce({"a": w, "b": w}, donate=True)
    with check.raises("donate an expanded view", ValueError, "overlap"):
        fr.distributed.all_reduce({"a": torch.ones(3).expand(2, 3)}, donate=True)
    with torch.no_grad():
        out = fr.distributed.all_reduce({"p": p}, donate=True)
    check("donate under no_grad is fine", out["p"] is p)

    # One rank refuses: the other raises too, instead of waiting in a collective.
    mine = torch.full((3,), float(rank))
    tree = {"a": mine, "b": mine if rank == 0 else mine.clone()}
    with check.raises("a refusal on one rank reaches all",
                      ValueError if rank == 0 else RuntimeError,
                      "shares memory" if rank == 0 else "refused on another rank"):
        fr.distributed.all_reduce(tree, donate=True)
    check("nothing written after a refusal", torch.equal(mine, torch.full((3,), float(rank))))


def _check_mismatches(check: Checks, rank: int) -> None:
    shape = (3,) if rank == 0 else (4,)
    with check.raises("shapes differ", ValueError,
                      r"differ across ranks: leaf 'w' is float32 of shape \(3,\) on cpu on "
                      r"rank 0 but float32 of shape \(4,\) on cpu on rank 1"):
        fr.distributed.all_reduce({"v": torch.ones(2), "w": torch.ones(shape)})
    dtype = torch.float32 if rank == 0 else torch.float64
    with check.raises("dtypes differ", ValueError, "leaf 'w' is float32 .* float64"):
        fr.distributed.all_reduce({"w": torch.ones(3, dtype=dtype)})
    tree = {"w": torch.ones(3)} if rank == 0 else {"w": torch.ones(3), "extra": torch.ones(1)}
    with check.raises("structures differ", ValueError, "rank 0 has 1 leaves, rank 1 has 2"):
        fr.distributed.all_reduce(tree)
    tree = {"w": torch.ones(3)} if rank == 0 else {"u": torch.ones(3)}
    with check.raises("paths differ", ValueError, "leaf 'w' where rank 1 has leaf 'u'"):
        fr.distributed.all_reduce(tree)
    out = fr.distributed.all_reduce({"w": torch.full((2,), float(rank))}, op="sum")
    check("the group still works after the errors", out["w"].tolist() == [1.0, 1.0])


def _check_dtensors(check: Checks, rank: int, world: int) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor, Replicate, Shard

    # A Replicate leaf whose replicas differ (rank-local gradients): averaged, kept Replicate.
    mesh = init_device_mesh("cpu", (world,))
    local = torch.arange(6.0).reshape(2, 3) * (rank + 1)
    d = DTensor.from_local(local, mesh, [Replicate()], run_check=False)
    out = fr.distributed.all_reduce({"d": d, "p": torch.full((2,), float(rank))})
    mean = torch.arange(6.0).reshape(2, 3) * sum(r + 1 for r in range(world)) / world
    y = out["d"]
    check("DTensor: stays a DTensor", isinstance(y, DTensor))
    check("DTensor: placements, shape, stride kept",
          y.placements == (Replicate(),) and y.shape == d.shape and y.stride() == d.stride())
    check("DTensor: local is the mean", torch.equal(y.to_local(), mean))
    check("DTensor: plain leaf alongside", out["p"].tolist() == [0.5, 0.5])
    ptr = local.data_ptr()
    back = fr.distributed.all_reduce({"d": d}, donate=True)
    check("DTensor donated: same object, same shard storage",
          back["d"] is d and d.to_local().data_ptr() == ptr and torch.equal(local, mean))

    # Shards of one mesh summed over that mesh's own ranks would mix different rows.
    s = DTensor.from_local(torch.ones(2, 3), mesh, [Shard(0)], run_check=False)
    with check.raises("Shard across the group", ValueError, r"'s'.*Shard\(dim=0\)"):
        fr.distributed.all_reduce({"s": s})

    # A (dp, tp) mesh: sharded on tp, reduced over dp (the group across the mesh).
    mesh2 = init_device_mesh("cpu", (world, 1), mesh_dim_names=("dp", "tp"))
    dp = mesh2["dp"].get_group()
    tp = DTensor.from_local(torch.full((3, 2), float(rank)), mesh2, [Replicate(), Shard(0)],
                            run_check=False)
    out = fr.distributed.all_reduce({"w": tp}, group=dp)
    check("dp x tp: placements kept", out["w"].placements == (Replicate(), Shard(0)))
    check("dp x tp: mean over dp", torch.equal(out["w"].to_local(), torch.full((3, 2), 0.5)))
    crossing = DTensor.from_local(torch.ones(3, 2), mesh2, [Shard(0), Replicate()],
                                  run_check=False)
    with check.raises("dp x tp: sharded along dp", ValueError, "placements"):
        fr.distributed.all_reduce({"w": crossing}, group=dp)


def _check_keyed_containers(check: Checks, rank: int) -> None:
    """A container that registers its keys only with torch.utils._pytree (TensorDict does)
    has no positional-path spec cache: the check's fingerprint must still work."""
    try:
        from tensordict import TensorDict
    except ImportError:
        return  # the test extra installs it; without it there is nothing to check here
    tree = TensorDict({"w": torch.full((3,), float(rank)), "b": torch.ones(2)}, batch_size=[])
    out = fr.distributed.all_reduce(tree)
    check("TensorDict: reduced by key", torch.equal(out["w"], torch.full((3,), 0.5)))
    check("TensorDict: stays a TensorDict", type(out).__name__ == "TensorDict")


def _all_reduce_battery(rank: int, world: int) -> None:
    check = Checks(rank)
    _check_keyed_containers(check, rank)
    _check_values(check, rank, world, "mean")
    _check_values(check, rank, world, "sum")
    _check_collective_counts(check, rank)
    _check_buckets_and_donation(check, rank, world)
    _check_refusals(check, rank)
    _check_mismatches(check, rank)
    _check_dtensors(check, rank, world)
    check.done()


def test_all_reduce_on_two_ranks() -> None:
    run_ranks(_all_reduce_battery, world=2, timeout=60)


# ------------------------------------------------------ the data-parallel torch.func loop
def _train(model: nn.Module, params: dict[str, torch.Tensor], x: torch.Tensor,
           y: torch.Tensor, steps: int, reduce: bool) -> dict[str, torch.Tensor]:
    def mse(p: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return ((functional_call(model, p, (x,)) - y) ** 2).mean()

    state = fr.adamw.init(params)
    for _ in range(steps):
        grads = grad(mse)(params, x, y)
        if reduce:
            grads = fr.distributed.all_reduce(grads)
        params, state = fr.adamw.step(params, grads, state, lr=1e-2)
    return params


def _data_parallel_battery(rank: int, world: int) -> None:
    from torch.nn.parallel import DistributedDataParallel

    check = Checks(rank)
    torch.manual_seed(0)  # the same model and full batch on every rank
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 1)).double()
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    x, y = torch.randn(32, 6, dtype=torch.float64), torch.randn(32, 1, dtype=torch.float64)
    n = x.shape[0] // world
    mine = slice(rank * n, (rank + 1) * n)

    ddp = DistributedDataParallel(model)
    local = grad(lambda p: ((functional_call(ddp.module, p, (x[mine],)) - y[mine]) ** 2).mean())(params)
    check("DDP + torch.func.grad: grads stay rank-local", not _gathered_equal(local))

    distributed = _train(model, params, x[mine], y[mine], 10, reduce=True)
    single = _train(model, params, x, y, 10, reduce=False)  # one process, the whole batch
    gap = max((distributed[k] - single[k]).abs().max().item() for k in single)
    moved = min((single[k] - params[k]).abs().max().item() for k in single)
    check("equals the single-process full-batch run", gap <= 1e-6, gap)
    check("the run trained", moved > 1e-3 and math.isfinite(moved), moved)
    check("same bits on every rank", _gathered_equal(distributed))
    check.done()


def test_data_parallel_torch_func_training_on_two_ranks() -> None:
    run_ranks(_data_parallel_battery, world=2, timeout=60)
