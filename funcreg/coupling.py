"""Couplings: units made of slices of several leaves (a row of a weight, the entry of its
bias, of a norm layer's scale and shift), the data type that ``groups=`` and
:mod:`funcreg.prune` share."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

import torch

from funcreg._tree import flatten


class Coupling:
    """Leaves whose slices make up each unit: ``{path: dim}`` and a number of groups G.

    Group k of a coupling is the k-th of G equal chunks along each named dim, over all its
    leaves: with ``dims = {"fc.weight": 0, "fc.bias": 0}`` and G = ``fc``'s out features,
    group k is row k of the weight and entry k of the bias. A leaf whose named size is a
    multiple m·G contributes m consecutive slices to each group (a conv channel's block of
    columns in a Linear after ``Flatten``, one attention head's rows). A group's weight in
    the group lasso is sqrt(n_g), n_g the group's total number of elements over all leaves.

    Args:
        dims: a non-empty mapping from leaf path (as in ``named_parameters()``) to the dim
            along which that leaf is chunked; negative dims count from the end.
        groups: G, the number of groups; ``None`` (the default) means the smallest named
            size, resolved against the params by :meth:`validate`.

    Raises:
        TypeError: ``dims`` is not a mapping of ``str`` to ``int``, or ``groups`` not an int.
        ValueError: ``dims`` is empty, or ``groups`` is below 1.

    A plain dict ``{path: dim}`` is a coupling with the default G wherever one is accepted
    (:meth:`normalize`).

    >>> import torch, funcreg as fr
    >>> params = {"fc.weight": torch.tensor([[3.0, 0.0], [0.0, 0.0], [0.0, 0.0]]),
    ...           "fc.bias": torch.tensor([4.0, 0.0, 1.0])}
    >>> units = fr.Coupling({"fc.weight": 0, "fc.bias": 0})
    >>> units.validate(params), units.group_size(params)
    (3, 3)
    >>> units.norms(params)
    tensor([5., 0., 1.])
    """

    __slots__ = ("_dims", "_groups")

    def __init__(self, dims: Mapping[str, int], *, groups: int | None = None) -> None:
        if not isinstance(dims, Mapping):
            raise TypeError(f"Coupling dims must be a mapping {{path: dim}}, not {type(dims).__name__}")
        if not dims:
            raise ValueError("Coupling dims must name at least one leaf")
        for path, dim in dims.items():
            if not isinstance(path, str):
                raise TypeError(f"Coupling dims: the path {path!r} is a {type(path).__name__}, not a str")
            if isinstance(dim, bool) or not isinstance(dim, int):
                raise TypeError(f"Coupling dims: the dim of leaf {path!r} is {dim!r}, not an int")
        if groups is not None and (isinstance(groups, bool) or not isinstance(groups, int)):
            raise TypeError(f"Coupling groups must be an int or None, not {groups!r}")
        if groups is not None and groups < 1:
            raise ValueError(f"Coupling groups must be >= 1, got {groups}")
        self._dims = MappingProxyType(dict(dims))
        self._groups = groups

    @property
    def dims(self) -> Mapping[str, int]:
        """The leaves and the dim each is chunked along (read-only)."""
        return self._dims

    @property
    def groups(self) -> int | None:
        """G as given; ``None`` means the smallest named size (see :meth:`validate`)."""
        return self._groups

    def __repr__(self) -> str:
        return f"Coupling({dict(self._dims)!r}, groups={self._groups!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Coupling):
            return NotImplemented
        return dict(self._dims) == dict(other._dims) and self._groups == other._groups

    def __hash__(self) -> int:
        return hash((frozenset(self._dims.items()), self._groups))

    def validate(self, params: Any) -> int:
        """Check the coupling against a params tree and return G, its number of groups.

        Every named path must be a tensor leaf of ``params`` with the named dim, and every
        named size a positive multiple of G (G being the smallest named size unless given).

        Args:
            params: the parameter tree the coupling names leaves of.

        Returns:
            G, the number of groups.

        Raises:
            ValueError: naming the leaf: a path ``params`` lack, a dim the leaf does not
                have, a size that is zero or not a multiple of G.
            TypeError: a named leaf is not a tensor.
        """
        sizes = self._sizes(params)
        groups = self._groups if self._groups is not None else min(sizes.values())
        for path, size in sizes.items():
            if size == 0 or size % groups:
                raise ValueError(
                    f"Coupling: leaf {path!r} has size {size} along dim {self._dims[path]}, "
                    f"which is not a positive multiple of the coupling's {groups} groups"
                )
        return groups

    def group_size(self, params: Any) -> int:
        """n_g, the number of elements in each group (all groups are the same size).

        Args:
            params: the parameter tree.

        Returns:
            n_g, an int.

        Raises:
            ValueError, TypeError: as :meth:`validate`.
        """
        groups = self.validate(params)
        leaves = _leaves(params)
        return sum(leaves[path].numel() for path in self._dims) // groups

    def norms(self, params: Any) -> torch.Tensor:
        """Each group's L2 norm, a tensor of shape ``(G,)``: for group k, the square root of
        the sum of squares of its slices in every leaf.

        Written plainly (per leaf: move the dim to the front, cut it into G chunks, sum the
        squares), so that it serves as the reference for the penalties' coupled groups. The
        result has the promoted dtype of the named leaves.

        Args:
            params: the parameter tree.

        Returns:
            A tensor of shape ``(G,)``.

        Raises:
            ValueError, TypeError: as :meth:`validate`.
        """
        groups = self.validate(params)
        leaves = _leaves(params)
        total = None
        for path, dim in self._dims.items():
            w = leaves[path]
            squares = w.movedim(dim, 0).reshape(groups, -1).square().sum(dim=1)
            total = squares if total is None else total + squares
        assert total is not None  # dims is never empty
        return total.sqrt()

    @classmethod
    def normalize(cls, couplings: Coupling | Mapping[str, int] | Sequence[Any]) -> tuple[Coupling, ...]:
        """Couplings as given to ``groups=`` or to :func:`fr.prune.shrink`, as a tuple of
        :class:`Coupling`.

        A list or tuple may mix dicts ``{path: dim}`` (each becomes ``Coupling(d)``, G the
        smallest named size) and :class:`Coupling` objects (kept as they are); a single
        dict or :class:`Coupling` is a list of one. The order is kept.

        Raises:
            TypeError: an entry is neither a mapping nor a :class:`Coupling` (its position
                is named), or ``couplings`` is something else.
            ValueError: the list is empty.
        """
        if isinstance(couplings, (Coupling, Mapping)):
            couplings = [couplings]
        if not isinstance(couplings, (list, tuple)):
            raise TypeError(
                "couplings must be a Coupling, a dict {path: dim}, or a list of them, "
                f"not {type(couplings).__name__}"
            )
        if not couplings:
            raise ValueError("couplings is empty: name at least one coupling")
        out = []
        for i, c in enumerate(couplings):
            if isinstance(c, Coupling):
                out.append(c)
            elif isinstance(c, Mapping):
                out.append(cls(c))
            else:
                raise TypeError(
                    f"couplings[{i}] is a {type(c).__name__}, not a Coupling or a dict {{path: dim}}"
                )
        return tuple(out)

    def _sizes(self, params: Any) -> dict[str, int]:
        """Each named leaf's size along its dim, after checking the leaf and the dim."""
        leaves = _leaves(params)
        sizes = {}
        for path, dim in self._dims.items():
            if path not in leaves:
                raise ValueError(f"Coupling: params have no leaf {path!r}")
            w = leaves[path]
            if not isinstance(w, torch.Tensor):
                raise TypeError(f"Coupling: params leaf {path!r} is a {type(w).__name__}, not a tensor")
            if not -w.ndim <= dim < w.ndim:
                raise ValueError(
                    f"Coupling: leaf {path!r} has {w.ndim} dims, so it has no dim {dim}"
                )
            sizes[path] = w.shape[dim]
        return sizes


def _leaves(params: Any) -> dict[str, Any]:
    flat = flatten(params)
    return dict(zip(flat.paths, flat.leaves))

