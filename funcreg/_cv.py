"""Folds for cross-validation, and the rules that choose λ from validation losses."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Folds:
    """A k-fold split of ``n`` samples: ``val[f]`` holds fold f's held-out indices and
    ``train[f]`` the indices it trains on, all ``train[f]`` of one length (so that the
    folds' members can share one ``vmap``)."""

    train: list[torch.Tensor]
    val: list[torch.Tensor]

    @property
    def k(self) -> int:
        return len(self.val)


def make_folds(n: int, k: int, *, seed: int) -> Folds:
    """``k`` folds of a fixed shuffle of ``range(n)`` (a CPU generator seeded with ``seed``),
    sizes ⌈n/k⌉ or ⌊n/k⌋ as ``torch.tensor_split`` cuts them. Each fold trains on the
    other folds' samples, cut to the common length n − ⌈n/k⌉: when k does not divide n,
    a fold whose held-out part is short leaves out the last of its training samples (at
    most one), the same ones every run."""
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"folds must be an int (the number of folds), not {type(k).__name__}")
    if k < 2:
        raise ValueError(f"folds must be at least 2, got {k}")
    if k > n:
        raise ValueError(f"folds={k} is larger than the data: {n} samples")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    val = list(torch.tensor_split(order, k))
    length = n - max(len(v) for v in val)
    train = [torch.cat([v for j, v in enumerate(val) if j != f])[:length] for f in range(k)]
    return Folds(train, val)


def fold_stats(per_fold: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean over folds and its standard error, sample std / √k, for a (k, n) matrix
    (glmnet's ``cvm`` and ``cvsd`` with equal fold weights)."""
    k = per_fold.shape[0]
    mean = per_fold.mean(0)
    se = per_fold.std(0, correction=1) / math.sqrt(k)
    return mean, se


def choose(val_loss: torch.Tensor, val_se: torch.Tensor | None, rule: str) -> int:
    """The index of the λ a rule picks on a descending grid: ``"min"``, the lowest
    validation loss (the largest λ among ties); ``"1se"``, the largest λ whose validation
    loss is within one standard error of the minimum (glmnet's ``lambda.1se``)."""
    if rule not in ("min", "1se"):
        raise ValueError(f"rule must be 'min' or '1se', got {rule!r}")
    loss = val_loss.double().cpu()
    if bool(torch.isnan(loss).all()):
        raise ValueError("every validation loss is NaN: no λ can be chosen")
    finite = torch.where(torch.isnan(loss), torch.inf, loss)
    best = int(torch.nonzero(finite == finite.min())[0])
    if rule == "min":
        return best
    if val_se is None:
        raise ValueError("rule='1se' needs the standard error over folds: run fr.path with folds=k")
    bound = finite[best] + val_se.double().cpu()[best]
    return int(torch.nonzero(finite <= bound)[0])
