"""Training a regularization path: blocks of λ, every (fold, λ) member of a block in one
``vmap``, each member frozen once it has converged.

A block of b values of λ trains, side by side, b refit members on all of the data (one
``vmap``) and, with k folds, k·b fold members (one nested ``vmap``: folds outside, λ
inside, so each fold's training set is passed once, never copied per member). The
blocks are fixed by ``block`` alone, never by the number of processes: batched kernels
choose their blocking by batch size, so the same blocks give the same bits whether one
process trains them all or several share them. Under torch.distributed the blocks are
spread over the ranks in contiguous runs and gathered after training (no collective runs
inside ``vmap``, where the functional collectives would give wrong sums).

The full-batch loop (FISTA) is here; the minibatch one is in :mod:`funcreg._path_minibatch`.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import optree
import torch

import funcreg
from funcreg._cv import Folds


@dataclass
class Settings:
    """The solver's options of :func:`fr.path` (documented there)."""

    solver: str = "fista"
    lr: float | None = None
    rtol: float | None = None
    max_steps: int | None = None
    batch_size: int | None = None
    block: int | None = None
    warm_start: bool = False
    progress: bool | None = None
    seed: int = 0
    grid: str = "bracket"
    distribute: bool = True
    compile: bool = False

    def __post_init__(self) -> None:
        if self.batch_size is not None and self.solver == "fista":
            self.solver = "prox_adam"
        if self.solver not in ("fista", "prox_adam"):
            raise ValueError(f"solver must be 'fista' or 'prox_adam', got {self.solver!r}")
        if self.solver == "prox_adam" and self.batch_size is None:
            raise ValueError("solver='prox_adam' needs batch_size= (the minibatch size)")
        full = self.solver == "fista"
        self.lr = (1.0 if full else 1e-2) if self.lr is None else self.lr
        self.rtol = (1e-4 if full else 1e-3) if self.rtol is None else self.rtol
        self.max_steps = (3000 if full else 200) if self.max_steps is None else self.max_steps
        for name in ("max_steps", "batch_size", "block"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        for name in ("lr", "rtol"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be a positive number, got {v!r}")
        for name in ("warm_start", "distribute", "compile"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if self.grid not in ("bracket", "zero"):
            raise ValueError(f"grid must be 'bracket' or 'zero', got {self.grid!r}")


@dataclass
class Problem:
    """One member's objective: the smooth loss, the family, its options and selection."""

    loss: Callable[..., torch.Tensor]
    penalty: Any
    options: dict[str, Any]
    where: Any


@dataclass
class Trained:
    """A trained grid: refit members (leading dim n) and, with folds, fold members
    (leading dims k, n); steps at which each converged (0: never)."""

    params: dict[str, torch.Tensor]
    steps: torch.Tensor
    fold_params: dict[str, torch.Tensor] | None = None
    fold_steps: torch.Tensor | None = None
    seconds: float = 0.0
    blocks: int = 1
    ranks: int = 1


class Progress:
    """One self-overwriting status line on stderr, only when stderr is a terminal (or when
    forced); nothing otherwise."""

    def __init__(self, enabled: bool | None, label: str):
        self.on = sys.stderr.isatty() if enabled is None else bool(enabled)
        self.label = label
        self.last = 0.0

    def __call__(self, text: str, force: bool = False) -> None:
        now = time.monotonic()
        if self.on and (force or now - self.last > 0.2):
            self.last = now
            sys.stderr.write(f"\r{self.label}: {text}\x1b[K")
            sys.stderr.flush()

    def close(self) -> None:
        if self.on:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()


@dataclass
class Group:
    """Members that share one vmapped step: their weights, solver state, λ, batch."""

    fn: Callable[..., Any]
    w: Any
    state: Any
    lam: torch.Tensor
    batch: tuple[torch.Tensor, ...]
    active: torch.Tensor
    stopped: torch.Tensor = field(init=False)
    lr: torch.Tensor | None = None
    best: torch.Tensor | None = None

    def __post_init__(self) -> None:
        self.stopped = torch.zeros(self.active.shape, dtype=torch.long, device=self.active.device)


def _stack(tree: dict[str, torch.Tensor], shape: tuple[int, ...]) -> dict[str, torch.Tensor]:
    """Independent copies of every leaf along new leading dims ``shape``."""
    return {k: v.detach().reshape(*([1] * len(shape)), *v.shape).repeat(*shape, *([1] * v.ndim)).clone()
            for k, v in tree.items()}


def train(
    problem: Problem, lams: torch.Tensor, params: dict[str, torch.Tensor],
    data: tuple[torch.Tensor, ...], folds: Folds | None, settings: Settings, label: str = "fr.path",
) -> Trained:
    """Train every member of the grid; see the module docstring."""
    n = len(lams)
    blocks = list(torch.arange(n).split(settings.block or n))
    rank, world = _ranks(settings)
    if world > 1 and settings.warm_start:
        raise ValueError("warm_start chains the blocks one after another, so they cannot be "
                         "spread over processes: pass distribute=False (or warm_start=False)")
    mine = [int(i) for i in torch.tensor_split(torch.arange(len(blocks)), world)[rank]]
    progress = Progress(settings.progress if rank == 0 else False, label)
    fold_data = None
    if folds is not None:
        fold_data = tuple(torch.stack([t[idx.to(t.device)] for idx in folds.train]) for t in data)
    start = time.perf_counter()
    results = []
    warm: tuple[Any, Any] | None = None
    trainer = None
    if settings.solver == "fista":
        from funcreg._path_fista import Trainer

        trainer = Trainer(problem, params, settings)
    for j, b in enumerate(mine):
        out = _train_block(problem, lams[blocks[b]], params, warm, data, fold_data, folds, settings, trainer,
                           lambda s, j=j: progress(f"block {j + 1}/{len(mine)}, {s}"))
        results.append(out)
        if settings.warm_start:  # the next block starts from this block's smallest λ
            warm = ({k: v[-1] for k, v in out[0].items()},
                    None if out[2] is None else {k: v[:, -1] for k, v in out[2].items()})
    progress.close()
    seconds = time.perf_counter() - start
    if world > 1:
        results = _gather(results, world, params)
    w = {k: torch.cat([r[0][k] for r in results]) for k in params}
    steps = torch.cat([r[1] for r in results])
    fw = fs = None
    if folds is not None:
        fw = {k: torch.cat([r[2][k] for r in results], dim=1) for k in params}
        fs = torch.cat([r[3] for r in results], dim=1)
    return Trained(w, steps, fw, fs, seconds, len(blocks), world)


def _ranks(settings: Settings) -> tuple[int, int]:
    import torch.distributed as dist

    if settings.distribute and dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _gather(results: list[Any], world: int, params: dict[str, torch.Tensor]) -> list[Any]:
    import torch.distributed as dist

    device = next(iter(params.values())).device

    def move(x: Any, to: Any) -> Any:
        if x is None:
            return None
        if isinstance(x, dict):
            return {k: v.to(to) for k, v in x.items()}
        return x.to(to)

    parts: list[Any] = [None] * world
    dist.all_gather_object(parts, [tuple(move(x, "cpu") for x in r) for r in results])
    return [tuple(move(x, device) for x in r) for part in parts for r in part]


def _train_block(
    problem: Problem, lams: torch.Tensor, params: dict[str, torch.Tensor], warm: tuple[Any, Any] | None,
    data: tuple[torch.Tensor, ...], fold_data: tuple[torch.Tensor, ...] | None, folds: Folds | None,
    settings: Settings, trainer: Any, progress: Callable[[str], None],
) -> tuple[Any, torch.Tensor, Any, torch.Tensor | None]:
    """Train one block: its refit members and, with folds, its fold members. ``warm`` is
    ``None`` (every member from ``params``) or the previous block's smallest-λ solutions:
    one tree for the refit members, one with a leading fold dim for the fold members."""
    b = len(lams)
    device = lams.device
    refit_w = _stack(params if warm is None else warm[0], (b,))
    layouts = [((b,), data, refit_w, False)]
    if fold_data is not None:
        k = folds.k
        if warm is None:
            fold_w = _stack(params, (k, b))
        else:  # one start per fold, shared by the block's λ
            fold_w = {key: v.unsqueeze(1).repeat(1, b, *([1] * (v.ndim - 1))) for key, v in warm[1].items()}
        layouts.append(((k, b), fold_data, fold_w, True))
    if trainer is not None:  # FISTA
        out = trainer.block(lams, [(w, batch, nested) for _, batch, w, nested in layouts], progress)
        if fold_data is None:
            return out[0][0], out[0][1], None, None
        return out[0][0], out[0][1], out[1][0], out[1][1]
    from funcreg import _path_minibatch  # it builds on this module's types

    groups = []
    for shape, batch, w, nested in layouts:
        lam = lams.expand(shape).contiguous()
        active = torch.ones(shape, dtype=torch.bool, device=device)
        st = _tmap(lambda v: v.reshape(*([1] * len(shape)), *v.shape).repeat(*shape, *([1] * v.ndim)),
                   funcreg.prox_adam.init(params))
        fn = _path_minibatch.nest(_path_minibatch.step_fn(problem), len(batch), nested)
        g = Group(fn, w, st, lam, batch, active)
        g.lr = torch.full(shape, float(settings.lr), device=device)
        g.best = torch.full(shape, math.inf, device=device)
        groups.append(g)
    _path_minibatch.run(problem, groups, settings, progress)
    refit = groups[0]
    if fold_data is None:
        return refit.w, refit.stopped, None, None
    return refit.w, refit.stopped, groups[1].w, groups[1].stopped


def _tmap(fn: Callable[..., Any], tree: Any, *rest: Any) -> Any:
    return optree.tree_map(fn, tree, *rest, namespace="torch")
