"""The trees and models the benchmark scripts time, and the check that a table's variants
computed the same thing before any of them is timed."""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["TREE_NUMEL", "check_close", "make_tree", "mlp", "numel", "tree_shapes"]

# The weights of the 50-leaf tree, in turn: matrices of three aspect ratios and a conv kernel.
_KINDS = [(256, 384), (384, 256), (320, 320), (128, 64, 3, 3), (512, 256)]
#: values in the unscaled 50-leaf tree (10.1 MB of float32)
TREE_NUMEL = 5 * sum(math.prod(s) + s[0] for s in _KINDS)


def tree_shapes(numel: int = TREE_NUMEL) -> list[tuple[int, ...]]:
    """50 shapes, 25 weights each followed by its bias, with the first dimension scaled so
    that the tree holds about ``numel`` values (2,527,040 unscaled)."""
    scale = max(1, round(numel / TREE_NUMEL))
    shapes: list[tuple[int, ...]] = []
    for i in range(25):
        rows, *rest = _KINDS[i % len(_KINDS)]
        shapes += [(rows * scale, *rest), (rows * scale,)]
    return shapes


def make_tree(seed: int = 0, *, shapes: list[tuple[int, ...]] | None = None,
              device: str = "cpu") -> dict[str, torch.Tensor]:
    """A dict of float32 leaves drawn from N(0, 0.05²), named ``block{i}.weight`` and
    ``block{i}.bias`` in turn as ``named_parameters()`` orders them; ``shapes`` defaults to
    :func:`tree_shapes`'s 50."""
    gen = torch.Generator().manual_seed(seed)
    return {f"block{i // 2}.{'bias' if i % 2 else 'weight'}":
            torch.randn(shape, generator=gen).mul_(0.05).to(device)
            for i, shape in enumerate(shapes or tree_shapes())}


def mlp(*sizes: int) -> nn.Sequential:
    """Linear layers of the given widths with a ReLU between each two (none after the last),
    initialized from torch's global generator (seed it first)."""
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


def numel(tree: dict[str, torch.Tensor]) -> int:
    return sum(v.numel() for v in tree.values())


def check_close(name: str, got: dict[str, torch.Tensor], want: dict[str, torch.Tensor], *,
                reference: str = "funcreg's", rtol: float = 1e-5, atol: float = 1e-6) -> None:
    """Raise, naming the variant and the leaf, unless ``got`` matches ``want`` leaf by leaf."""
    for k in want:
        if not torch.allclose(got[k], want[k], rtol=rtol, atol=atol):
            err = (got[k] - want[k]).abs().max().item()
            raise AssertionError(f"{name}: leaf {k!r} differs from {reference} result by {err:.3g}")
