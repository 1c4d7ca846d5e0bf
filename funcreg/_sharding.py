"""DTensor leaves: recognising them, and the places where they need care.

funcreg's math runs on ``DTensor`` leaves (FSDP2's sharded parameters, tensor-parallel
shards) as it does on plain tensors, and keeps each leaf's placements, except where
torch 2.13's DTensor needs help:

* a penalty's value is a 0-d ``Partial`` DTensor; added to a plain loss it breaks the
  backward ("mixed torch.Tensor and DTensor"), so :func:`to_plain` turns it into the
  plain tensor it stands for, with a backward that hands the gradient back as a
  ``Replicate`` DTensor;
* a plain hyperparameter batched by ``vmap`` is not a scalar to DTensor's dispatch, so
  :func:`replicate_like` turns it into a ``Replicate`` DTensor on the leaf's mesh;
* some foreach and fused kernels have no sharding strategy (``_fused_sgd_``, the
  out-of-place ``_foreach_addcmul`` / ``_foreach_addcdiv`` with scalars), so the fast path
  asks :func:`is_dtensor` and takes the forms that do; and linear algebra comes back
  replicated, so :func:`place_like` puts a result back on its leaf's placements.

No import of ``torch.distributed.tensor`` happens here: a DTensor can only exist once
that module is loaded, so its absence from ``sys.modules`` answers "no DTensor" for free.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any, TypeGuard

import torch

if TYPE_CHECKING:
    from torch.distributed.tensor import DTensor

_functorch = torch._C._functorch


def _dtensor_type() -> type[DTensor] | None:
    module = sys.modules.get("torch.distributed.tensor")
    return getattr(module, "DTensor", None)


def loaded() -> bool:
    """Whether DTensors can exist in this process (``torch.distributed.tensor`` imported)."""
    return _dtensor_type() is not None


def unwrap(x: Any) -> Any:
    """The tensor inside any torch.func wrappers of ``x`` (``x`` itself when there are none)."""
    while isinstance(x, torch.Tensor) and _functorch.is_functorch_wrapped_tensor(x):
        x = _functorch.get_unwrapped(x)
    return x


def is_dtensor(x: Any) -> TypeGuard[DTensor]:
    """Whether ``x`` is a DTensor, also when vmap or grad wrap it (``isinstance`` is then
    False)."""
    if torch.compiler.is_compiling():  # Dynamo sees through no torch.func wrapper here
        dtensor = _dtensor_type()
        return dtensor is not None and isinstance(x, dtensor)
    if type(x) is torch.Tensor and not _functorch.is_functorch_wrapped_tensor(x):
        return False  # a plain tensor: the common case, answered first
    dtensor = _dtensor_type()
    if dtensor is None or not isinstance(x, torch.Tensor):
        return False
    return isinstance(x, dtensor) or (
        _functorch.is_functorch_wrapped_tensor(x) and isinstance(unwrap(x), dtensor))


def any_dtensor(xs: Any) -> bool:
    dtensor = _dtensor_type()
    return dtensor is not None and any(is_dtensor(x) for x in xs)


class _ToPlain(torch.autograd.Function):
    """A 0-d DTensor's global value as a plain tensor; the gradient goes back as a
    ``Replicate`` DTensor (what a plain scalar is to DTensor's dispatch)."""

    @staticmethod
    def forward(x: Any) -> Any:
        from torch.distributed.tensor import DTensor, Replicate

        value = x.full_tensor()
        # Built here, where torch.func is out of the way: DTensor.from_local is an
        # autograd.Function without a setup_context, which the transforms refuse.
        one = DTensor.from_local(torch.ones((), dtype=value.dtype, device=value.device),
                                 x.device_mesh, [Replicate()] * x.device_mesh.ndim, run_check=False)
        return value, one

    @staticmethod
    def setup_context(ctx: Any, inputs: Any, output: Any) -> None:
        ctx.mark_non_differentiable(output[1])
        ctx.save_for_backward(output[1])

    @staticmethod
    def backward(ctx: Any, grad: Any, _: Any) -> Any:
        (one,) = ctx.saved_tensors
        with _implicit_replication():  # ``grad`` may be batched by vmap
            return grad * one

    @staticmethod
    def vmap(info: Any, in_dims: Any, x: Any) -> Any:
        value, one = _ToPlain.apply(x)
        return (value, one), (in_dims[0], None)


def to_plain(value: torch.Tensor) -> torch.Tensor:
    """A penalty value computed on DTensor leaves, as the plain 0-d tensor it stands for
    (one all-reduce of the partial sums); a plain value passes through."""
    return _ToPlain.apply(value)[0] if is_dtensor(value) else value


class _implicit_replication:
    """DTensor's implicit replication of plain tensors, restoring the previous setting on
    exit (torch 2.13's own context manager resets it to off instead)."""

    def __enter__(self) -> None:
        self._previous = torch._C._get_dtensor_allow_implicit_replication()
        torch._C._set_dtensor_allow_implicit_replication(True)

    def __exit__(self, *exc: Any) -> None:
        torch._C._set_dtensor_allow_implicit_replication(self._previous)


def place_like(x: torch.Tensor, leaf: torch.Tensor) -> torch.Tensor:
    """``x`` with the placements of DTensor ``leaf`` (linear algebra on a sharded leaf,
    an SVD or a Gram matrix, comes back replicated); anything else as it is. Under a
    torch.func transform ``x`` stays as it came (``redistribute`` is no op a transform
    can see through): the same values, replicated."""
    if not (is_dtensor(leaf) and is_dtensor(x)):
        return x
    if _functorch.is_functorch_wrapped_tensor(x) or _functorch.is_functorch_wrapped_tensor(leaf):
        return x
    if x.placements != leaf.placements:
        return x.redistribute(leaf.device_mesh, leaf.placements)
    return x


def amax(x: torch.Tensor) -> torch.Tensor:
    """The largest entry of a non-empty DTensor, as a 0-d ``Partial("max")`` DTensor
    (:func:`to_plain` reduces it). DTensor's own ``amax`` fails on a rank whose shard is
    empty (FSDP2's shard of a ``Linear(n, 1)`` bias), leaving the other ranks waiting in
    the collective; an empty shard contributes -inf instead."""
    from torch.distributed.tensor import DTensor, Partial

    if not isinstance(x, DTensor):  # wrapped by a transform, which has no to_local
        return x.amax()
    local = x.to_local()
    top = local.amax() if local.numel() else local.new_full((), -float("inf"))
    return DTensor.from_local(top, x.device_mesh, [Partial("max")] * x.device_mesh.ndim, run_check=False)


def gathered(x: torch.Tensor) -> torch.Tensor:
    """A DTensor's full value as a plain tensor (an all-gather), for the few computations
    DTensor cannot shard, such as a sort over an unevenly sharded leaf."""
    return x.full_tensor() if is_dtensor(x) else x


def replicate_like(h: torch.Tensor, leaf: torch.Tensor) -> torch.Tensor:
    """A plain hyperparameter (batched by vmap or not) as a ``Replicate`` DTensor on the
    mesh of DTensor ``leaf``; no communication."""
    with _implicit_replication():
        return h * leaf.new_ones(())


def replicated(values: list[Any], leaves: list[torch.Tensor]) -> list[Any]:
    """Plain 0-d tensors beside DTensor leaves as Replicate DTensors on the leaves' meshes.

    Eagerly DTensor's dispatch takes a plain 0-d tensor as a scalar; under ``vmap`` a
    batched one is a plain tensor of K elements to it ("mixed torch.Tensor and DTensor"),
    so inside a transform it becomes a Replicate DTensor first (no communication)."""
    if torch.compiler.is_compiling():
        return values  # no torch.func transform wraps what Dynamo traces
    wrapped = torch._C._functorch.is_functorch_wrapped_tensor
    cache: dict[tuple[int, int], torch.Tensor] = {}
    out = []
    for v, leaf in zip(values, leaves):
        if (isinstance(v, torch.Tensor) and v.ndim == 0 and is_dtensor(leaf)
                and not is_dtensor(v) and (wrapped(v) or wrapped(leaf))):
            key = (id(v), id(unwrap(leaf).device_mesh))
            if key not in cache:
                cache[key] = replicate_like(v, leaf)
            v = cache[key]
        out.append(v)
    return out
