"""Averaging a tree across processes: the data-parallel step of a ``torch.func`` loop.

With ``torch.func.grad`` each process gets the gradient of the loss on *its* batch only.
:func:`all_reduce` averages those gradient trees across a process group, in a few
coalesced collectives, so that every process takes the same step on the gradient of
the whole batch.
"""

from __future__ import annotations

import collections
import functools
import hashlib
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

import torch

from funcreg import _donation, _sharding, _tree

if TYPE_CHECKING:  # not imported at run time: funcreg imports where torch.distributed is absent
    from torch.distributed import ProcessGroup
    from torch.distributed.tensor import DTensor

__all__ = ["all_reduce"]

#: Leaves of one (device, dtype) go to the backend as one flat buffer of at most this many
#: elements (64 MiB of float32); a larger leaf gets a buffer of its own. Bounded buckets
#: keep a donated call's scratch memory bounded (at most two buckets are in flight), and
#: a result leaf, a view of its bucket, keeps no more than one bucket alive.
BUCKET = 1 << 24

Op = Literal["mean", "sum"]

_functorch = torch._C._functorch


@torch.compiler.disable  # host-side checks and eager collectives: a graph break, run eagerly
def all_reduce(
    tree: Any,
    *,
    op: Op = "mean",
    group: ProcessGroup | None = None,
    donate: bool = False,
    check: bool = True,
) -> Any:
    """Average (or sum) every tensor leaf of ``tree`` across the processes of ``group``.

    For each tensor leaf ``x`` (same path on every rank) of the ``N`` processes of
    ``group`` (the default process group when ``None``)::

        op="mean":   x ← (1/N) · Σ_r x⁽ʳ⁾
        op="sum":    x ← Σ_r x⁽ʳ⁾

    computed as a sum by the backend, then divided by ``N`` in the leaf's dtype. Every
    rank gets the same bits back (the tests check this on gloo). ``None`` leaves stay
    ``None``. Integer leaves may be summed; their mean is a ``TypeError`` (it is not an
    integer, and a result must keep its leaf's dtype), as is any bool leaf; complex leaves
    are reduced like floating ones. The call is a collective: every rank of ``group`` must
    make it, with trees of one structure, shapes and dtypes.

    **Cost.** Leaves are packed by (device, dtype) into flat buffers of at most
    :data:`BUCKET` elements, all buffers are reduced asynchronously, then awaited: a
    tree of one dtype takes one collective (per 2²⁴ elements), not one per leaf. Before
    them, ``check=True`` runs one more, tiny one (three int64): a blake2b fingerprint of
    the leaf paths, dtypes and (global and local) shapes, compared across ranks. Trees
    that differ would otherwise make the data collectives hang, abort the process or
    silently mix unrelated leaves; with the check, every rank raises a ``ValueError``
    that names the first leaf that differs, and an argument that one rank refuses (a
    non-tensor leaf, a donation that cannot be honoured) makes the others raise too
    instead of waiting for it. ``check=False`` saves that collective, and the host sync
    it costs on a GPU, in a loop known to be consistent; it gives up both protections.

    **Results** are new tensors (views into fresh bucket buffers) that do not require
    grad: a collective has no autograd formula here. ``donate=True`` writes the results
    into the leaves themselves (reduced in place when a bucket is a single contiguous
    leaf, else copied back from a bucket of scratch) and returns a tree holding those
    same tensors. A donation that cannot be honoured (a leaf that requires grad while
    grad mode is on, one tensor at two paths, an expanded view) is a ``ValueError``
    before any data moves.

    **DTensor leaves** have their local shards reduced across ``group`` and come back as
    DTensors with the same mesh, placements, shape and stride. That is meaningful when
    ``group`` runs across the DTensor's mesh, such as the data-parallel group of a 2-D
    (dp, tp) mesh with the tensor-parallel shards on ``tp``: reducing two ranks that hold
    different shards (or different partial sums) would add unrelated numbers, so a leaf
    whose Shard or Partial mesh dimension ``group`` spans is a ``ValueError``. FSDP2's
    gradients need no all-reduce at all: ``fully_shard`` has already averaged them.

    **Why this exists: DDP and torch.func.** ``DistributedDataParallel`` averages
    gradients from autograd hooks on the module's parameters, which fire while
    ``loss.backward()`` accumulates ``.grad``. ``torch.func.grad`` differentiates with
    respect to the tensors given to ``functional_call`` and returns the gradients as
    values: no ``.grad`` is accumulated, the hooks never fire, and each rank is silently
    left with the gradient of its own batch. The data-parallel ``torch.func`` step is::

        grads = torch.func.grad(loss)(params, local_batch)      # this rank's batch
        grads = fr.distributed.all_reduce(grads)                # mean over the ranks
        params, state = fr.adamw.step(params, grads, state, lr=1e-3)

    With equal local batch sizes and a mean loss, the averaged gradient is the gradient
    of the mean loss on the global batch, so every rank takes the step one process
    would take on the whole batch (see ``docs/sharded.md``).

    Under ``torch.compile`` the call is a graph break and runs eagerly
    (``fullgraph=True`` refuses it).

    Args:
        tree: a pytree of tensors (gradients, typically); ``None`` leaves stay ``None``.
        op: ``"mean"`` or ``"sum"``.
        group: the process group (the default group when ``None``).
        donate: write the results into the leaves themselves and return them.
        check: compare the trees' paths, dtypes and shapes across ranks first (one tiny
            collective), so that a mismatch is an error on every rank, not a hang.

    Returns:
        A tree like ``tree`` holding the reduced tensors (the leaves themselves when
        donated).

    Raises:
        ValueError: an ``op`` other than "mean" or "sum"; with ``check=True``, trees that
            differ across ranks (naming the first leaf that differs); a donation that
            cannot be honoured; a DTensor leaf sharded across ``group``.
        TypeError: the mean of an integer leaf, a bool leaf, a leaf that is not a tensor.
        RuntimeError: ``torch.distributed`` unavailable or not initialized, this rank
            not in ``group``, or a call under a ``torch.func`` transform (``vmap``,
            ``grad``, ...): collectives have no batching rule and no derivative there
            (torch's functional collectives even return wrong values under ``vmap``),
            so reduce the gradients ``torch.func.grad`` returned, outside it.

    Example (on each of the processes, after ``torch.distributed.init_process_group``)::

        import torch.distributed as dist
        grads = {"w": torch.full((2,), float(dist.get_rank()))}
        fr.distributed.all_reduce(grads)["w"]              # on 2 ranks: tensor([0.5, 0.5])
        fr.distributed.all_reduce(grads, op="sum")["w"]    # tensor([1., 1.])
    """
    if op not in ("mean", "sum"):
        raise ValueError(f"op must be 'mean' or 'sum', not {op!r}")
    if _functorch.get_interpreter_stack():
        raise RuntimeError(_UNDER_TRANSFORM)
    dist = _distributed(group)
    flat = _tree.flatten(tree, "tree")
    leaves = flat.leaves
    try:
        shards, dtensor = _shards(flat, op, group, dist)
        if donate:
            _donation.written_spans((("tree", p), x) for p, x in zip(flat.paths, leaves)
                                    if isinstance(x, torch.Tensor))
        refused: Exception | None = None
    except (TypeError, ValueError, RuntimeError) as error:
        shards, dtensor, refused = [], None, error
    buckets = _buckets(shards) if refused is None else []
    if check:
        _agree(dist, group, flat, buckets, dtensor, refused)
    elif refused is not None:
        raise refused

    world = dist.get_world_size(group)
    scale = world if op == "mean" and world > 1 else None
    out = list(leaves)
    with torch.no_grad():  # a collective has no derivative here (see the docstring)
        pending: collections.deque[_Pending] = collections.deque()
        scratch = 0  # elements of scratch held by pending donated buckets
        for ids in buckets:
            locs = [shards[i] for i in ids]
            if donate and len(locs) == 1 and locs[0].is_contiguous():
                buf = locs[0]  # reduced where it lies
            else:
                if donate:  # at most two buckets of scratch alive, this one's included
                    size = sum(x.numel() for x in locs)
                    while pending and scratch + size > 2 * BUCKET:
                        scratch -= _finish(pending.popleft(), leaves, out, donate, scale, dtensor)
                    scratch += size
                buf = _pack(locs)
            work = dist.all_reduce(buf, op=dist.ReduceOp.SUM, group=group, async_op=True)
            pending.append(_Pending(ids, locs, buf, work))
        while pending:
            _finish(pending.popleft(), leaves, out, donate, scale, dtensor)
        if not donate:
            for i, x in enumerate(leaves):  # empty leaves are in no bucket
                if x is not None and out[i] is x:
                    out[i] = torch.empty_like(x)
    return flat.unflatten(out)


_UNDER_TRANSFORM = (
    "fr.distributed.all_reduce cannot run under a torch.func transform (vmap, grad, "
    "jacrev, ...): collectives have no batching rule or derivative there. Call it on "
    "the gradients torch.func.grad returned, outside the transform"
)


def _distributed(group: Any) -> Any:
    """``torch.distributed``, once it is known to have a process group ``group`` this
    rank belongs to."""
    import torch.distributed as dist  # the module imports on every build; its API may not

    if not dist.is_available():
        raise RuntimeError(
            "fr.distributed.all_reduce needs torch.distributed, which this build of torch "
            "does not have (torch.distributed.is_available() is False)"
        )
    if not dist.is_initialized():
        raise RuntimeError(
            "fr.distributed.all_reduce needs an initialized process group: call "
            "torch.distributed.init_process_group(...) first (torchrun sets up its "
            "environment), on every rank"
        )
    if dist.get_rank(group) < 0:
        raise RuntimeError(
            f"this process (global rank {dist.get_rank()}) is not a member of the group "
            "given to fr.distributed.all_reduce; only its members may call it"
        )
    return dist


def _shards(flat: _tree.Flat, op: str, group: Any, dist: Any) -> tuple[list[Any], type[DTensor] | None]:
    """Per leaf, the plain tensor to reduce (a DTensor's local shard) or ``None``; and the
    DTensor class if the tree holds any. Raises for a leaf that cannot be reduced."""
    dtensor = _sharding._dtensor_type()
    shards: list[Any] = []
    ranks: tuple[int, ...] | None = None
    for path, x in zip(flat.paths, flat.leaves):
        if x is None:
            shards.append(None)
            continue
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"tree leaf {path!r} is a {type(x).__name__}, not a tensor or None")
        if _functorch.is_functorch_wrapped_tensor(x):
            raise RuntimeError(_UNDER_TRANSFORM)
        if x.dtype == torch.bool:
            raise TypeError(
                f"tree leaf {path!r} is a bool tensor, which has no sum or mean of its own "
                "dtype; convert it to an integer or floating dtype"
            )
        if op == "mean" and not (x.is_floating_point() or x.is_complex()):
            raise TypeError(
                f"tree leaf {path!r} has dtype {x.dtype}: its mean is not an integer, and "
                "the result keeps the leaf's dtype; use op='sum' (and divide as you see "
                "fit) or cast the leaf to a floating dtype"
            )
        if dtensor is not None and isinstance(x, dtensor):
            if ranks is None:
                ranks = tuple(dist.get_process_group_ranks(group or dist.group.WORLD))
            _check_orthogonal(path, x, ranks)
            x = x._local_tensor
        shards.append(x)
    return shards, dtensor


def _check_orthogonal(path: str, x: Any, ranks: tuple[int, ...]) -> None:
    """Refuse a DTensor leaf whose shards (or partial sums) differ across ``ranks``."""
    dims = tuple(d for d, p in enumerate(x.placements) if not p.is_replicate())
    crossing = _crossing(x.device_mesh, dims, ranks)
    if crossing:
        raise ValueError(
            f"tree leaf {path!r} is a DTensor with placements {tuple(x.placements)}, and "
            f"the group holds ranks {crossing} of its mesh with different shards or "
            "partial sums of it, whose sum means nothing; pass the data-parallel group "
            "that runs across the mesh (group=...), or, for FSDP2 gradients, do not "
            "all-reduce at all: fully_shard has already averaged them"
        )


@functools.lru_cache(maxsize=64)
def _crossing(mesh: Any, dims: tuple[int, ...], ranks: tuple[int, ...]) -> tuple[int, ...]:
    """Two ranks of ``ranks`` that sit at different coordinates of ``mesh`` along
    ``dims``, or ``()``. Runs once per (mesh, placements, group), not once per call."""
    grid = mesh.mesh
    seen: dict[tuple[int, ...], int] = {}
    for r in ranks:
        where = (grid == r).nonzero()
        if len(where):
            key = tuple(int(where[0, d]) for d in dims)
            seen.setdefault(key, r)
            if len(seen) > 1:
                return tuple(seen.values())
    return ()


def _buckets(shards: list[Any]) -> list[list[int]]:
    """Leaf indices grouped by (device, dtype), in leaf order, cut at :data:`BUCKET`
    elements; empty leaves (nothing to reduce) go to no bucket."""
    open_: dict[tuple[torch.device, torch.dtype], tuple[list[int], int]] = {}
    order: list[list[int]] = []
    for i, x in enumerate(shards):
        if x is None or x.numel() == 0:
            continue
        key = (x.device, x.dtype)
        ids, size = open_.get(key, (None, 0))
        if ids is None or size + x.numel() > BUCKET:
            ids, size = [], 0
            order.append(ids)
        ids.append(i)
        open_[key] = (ids, size + x.numel())
    return order


def _pack(locs: list[torch.Tensor]) -> torch.Tensor:
    """A fresh flat buffer holding ``locs`` one after the other."""
    if len(locs) == 1:  # _flatten_dense_tensors would hand back a view of the leaf itself
        return locs[0].clone(memory_format=torch.contiguous_format).view(-1)
    return torch._utils._flatten_dense_tensors(locs)


class _Pending(NamedTuple):
    """A bucket on its way: its leaf indices, their tensors, its buffer, the backend's work."""

    ids: list[int]
    locs: list[torch.Tensor]
    buf: torch.Tensor
    work: Any


def _finish(
    bucket: _Pending,
    leaves: list[Any],
    out: list[Any],
    donate: bool,
    scale: int | None,
    dtensor: type[DTensor] | None,
) -> int:
    """Wait for one bucket, divide it by ``scale`` (the group size, for a mean) and put
    its leaves in ``out``; returns the elements of scratch it freed."""
    ids, locs, buf, work = bucket
    work.wait()
    if scale is not None:
        buf.div_(scale)
    if donate and buf is locs[0]:
        out[ids[0]] = leaves[ids[0]]
        return 0
    views = torch._utils._unflatten_dense_tensors(buf, locs)
    if donate:
        torch._foreach_copy_(locs, list(views))
        for i in ids:
            out[i] = leaves[i]
        return buf.numel()
    for i, x, v in zip(ids, locs, views):
        leaf = leaves[i]
        if dtensor is not None and isinstance(leaf, dtensor):
            if not x.is_contiguous():  # the stride the DTensor reports must be the local's
                v = torch.empty_like(x).copy_(v)
            v = dtensor.from_local(v, leaf.device_mesh, leaf.placements, run_check=False,
                                   shape=leaf.shape, stride=leaf.stride())
        out[i] = v
    return 0


def _agree(
    dist: Any,
    group: Any,
    flat: _tree.Flat,
    buckets: list[list[int]],
    dtensor: type | None,
    refused: Exception | None,
) -> None:
    """The check collective: raise on every rank unless all of them can go on.

    One MIN all-reduce of ``[h, -h, -refused]``, ``h`` a fingerprint of this rank's tree,
    tells every rank the same two facts: whether the fingerprints differ (min h != max h)
    and whether any rank refused its arguments. blake2b, not ``hash()``: string hashes
    are salted per interpreter, so equal trees would hash differently on two ranks.
    """
    items = _items(flat, dtensor)
    layout = [len(ids) for ids in buckets]
    digest = hashlib.blake2b(_paths_digest(flat.paths), digest_size=8)
    digest.update(repr((items, layout)).encode())
    h = int.from_bytes(digest.digest(), "little") >> 1  # fits int64, and so does -h
    votes = torch.tensor([h, -h, -int(refused is not None)], dtype=torch.int64,
                         device=_check_device(dist, group))
    dist.all_reduce(votes, op=dist.ReduceOp.MIN, group=group)
    low, minus_high, minus_refused = votes.tolist()
    if minus_refused < 0:
        if refused is not None:
            raise refused
        raise RuntimeError(
            "fr.distributed.all_reduce was refused on another rank of the group (its own "
            "error says why); nothing was reduced, and no tree was written"
        )
    if low != -minus_high:
        # Every rank got the same votes, so every rank takes this branch: gathering the
        # descriptions for the message is a collective all of them make.
        mine = (list(zip(flat.paths, items)), layout)
        everyone: list[Any] = [None] * dist.get_world_size(group)
        dist.all_gather_object(everyone, mine, group=group)
        ranks = dist.get_process_group_ranks(group or dist.group.WORLD)
        raise ValueError(
            "fr.distributed.all_reduce: the trees differ across ranks: "
            f"{_difference(everyone, ranks)}; every rank must pass a tree of the same "
            "structure, shapes and dtypes"
        )


@functools.lru_cache(maxsize=256)
def _paths_digest(paths: tuple[str, ...]) -> bytes:
    """A digest of a tree's leaf paths. Paths, not ``repr(spec)``: a custom node's repr
    may hold a memory address."""
    return hashlib.blake2b("\0".join(paths).encode(), digest_size=16).digest()


_DTYPE_NAMES: dict[torch.dtype, str] = {}


def _items(flat: _tree.Flat, dtensor: type[DTensor] | None) -> list[Any]:
    """What must agree across ranks about each leaf, as plain Python values whose repr
    is the same in every process. The device's type but not its index: rank r on
    cuda:r is the usual layout. Runs on every call: keep it cheap."""
    out: list[Any] = []
    for x in flat.leaves:
        if x is None:
            out.append(None)
        elif not isinstance(x, torch.Tensor):
            out.append(type(x).__name__)
        else:
            name = _DTYPE_NAMES.get(x.dtype)
            if name is None:
                name = _DTYPE_NAMES[x.dtype] = str(x.dtype).removeprefix("torch.")
            kind = "cpu" if x.is_cpu else x.device.type
            if dtensor is not None and isinstance(x, dtensor):
                out.append((name, kind, tuple(x.shape), tuple(x._local_tensor.shape),
                            repr(tuple(x.placements)), tuple(x.device_mesh.shape)))
            else:
                out.append((name, kind, tuple(x.shape)))
    return out


def _words(item: Any) -> str:
    """An item of :func:`_items` for an error message."""
    if item is None:
        return "None"
    if isinstance(item, str):
        return f"a {item}"
    if len(item) == 3:
        return f"{item[0]} of shape {item[2]} on {item[1]}"
    name, kind, shape, local, placements, mesh = item
    return (f"a DTensor {name} of shape {shape} (local {local}, {placements} on a {mesh} "
            f"mesh) on {kind}")


def _difference(everyone: list[Any], ranks: list[int]) -> str:
    """The first way another rank's tree differs from the first rank's."""
    (first, first_buckets), r0 = everyone[0], ranks[0]
    for (other, other_buckets), r in zip(everyone[1:], ranks[1:]):
        for (p0, d0), (p1, d1) in zip(first, other):
            if p0 != p1:
                return f"rank {r0} has leaf {p0!r} where rank {r} has leaf {p1!r}"
            if d0 != d1:
                return f"leaf {p0!r} is {_words(d0)} on rank {r0} but {_words(d1)} on rank {r}"
        if len(first) != len(other):
            return f"rank {r0} has {len(first)} leaves, rank {r} has {len(other)}"
        if first_buckets != other_buckets:
            return (f"their leaves fall into different buckets (rank {r0}: "
                    f"{first_buckets} leaves per bucket, rank {r}: {other_buckets}); are "
                    "some on several devices of one type?")
    return "their fingerprints differ"


def _check_device(dist: Any, group: Any) -> torch.device:
    """Where the check's three integers go: the CPU when the group's backend takes CPU
    tensors (gloo), else the current device of its device type (NCCL: the current GPU).
    Every rank decides it the same way from the same group."""
    types = getattr(group or dist.group.WORLD, "_device_types", None)
    if not types or any(d.type == "cpu" for d in types):
        return torch.device("cpu")
    kind = types[0].type
    return torch.device(kind, getattr(torch, kind).current_device())
