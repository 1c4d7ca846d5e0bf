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
from typing import TYPE_CHECKING, Any

import optree
import torch

import funcreg
from funcreg._cv import Folds

if TYPE_CHECKING:
    from funcreg._path_fista import Trainer

#: one layout's trained members (the refit ones, or the fold ones): weights with the
#: layout's leading member dims, and the step at which each stopped (0: never)
Members = tuple[dict[str, torch.Tensor], torch.Tensor]


@dataclass
class Options:
    """The solver's options of :func:`fr.path` as the user gave them (documented there):
    ``None`` stands for the chosen solver's default. :meth:`resolve` checks them."""

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

    def resolve(self) -> Settings:
        """The settings the solvers read, every default filled in.

        Raises:
            ValueError: an unknown solver or grid, ``prox_adam`` without ``batch_size``,
                a count that is not a positive int, a step or tolerance that is not a
                positive number, a flag that is not a bool.
        """
        solver = self.solver
        if self.batch_size is not None and solver == "fista":
            solver = "prox_adam"
        if solver not in ("fista", "prox_adam"):
            raise ValueError(f"solver must be 'fista' or 'prox_adam', got {solver!r}")
        if solver == "prox_adam" and self.batch_size is None:
            raise ValueError("solver='prox_adam' needs batch_size= (the minibatch size)")
        full = solver == "fista"
        settings = Settings(
            solver=solver,
            lr=(1.0 if full else 1e-2) if self.lr is None else self.lr,
            rtol=(1e-4 if full else 1e-3) if self.rtol is None else self.rtol,
            max_steps=(3000 if full else 200) if self.max_steps is None else self.max_steps,
            batch_size=self.batch_size, block=self.block, warm_start=self.warm_start,
            progress=self.progress, seed=self.seed, grid=self.grid, distribute=self.distribute,
            compile=self.compile,
        )
        for name in ("max_steps", "batch_size", "block"):
            v = getattr(settings, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        for name in ("lr", "rtol"):
            v = getattr(settings, name)
            if not (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be a positive number, got {v!r}")
        for name in ("warm_start", "distribute", "compile"):
            if not isinstance(getattr(settings, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(settings, name)!r}")
        if settings.grid not in ("bracket", "zero"):
            raise ValueError(f"grid must be 'bracket' or 'zero', got {settings.grid!r}")
        return settings


@dataclass(frozen=True)
class Settings:
    """The solver's settings once resolved (:meth:`Options.resolve`): the solver's
    defaults filled in. ``batch_size`` is ``None`` exactly when the solver is FISTA
    (full batch); ``block`` is ``None`` for one block of every λ."""

    solver: str
    lr: float
    rtol: float
    max_steps: int
    batch_size: int | None
    block: int | None
    warm_start: bool
    progress: bool | None
    seed: int
    grid: str
    distribute: bool
    compile: bool


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
    """Members that share one vmapped step: their weights, solver state, λ, batch, which
    are still training, their step at stop (0: not stopped), their proximal Adam lr and
    best criterion so far."""

    fn: Callable[..., Any]
    w: dict[str, torch.Tensor]
    state: Any
    lam: torch.Tensor
    batch: tuple[torch.Tensor, ...]
    active: torch.Tensor
    lr: torch.Tensor
    best: torch.Tensor
    stopped: torch.Tensor = field(init=False)

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
    warm: list[dict[str, torch.Tensor]] | None = None
    trainer: Trainer | None = None
    if settings.solver == "fista":
        from funcreg._path_fista import Trainer

        trainer = Trainer(problem, params, settings)
    for j, b in enumerate(mine):
        out = _train_block(problem, lams[blocks[b]], params, warm, data, fold_data, settings, trainer,
                           _block_progress(progress, j + 1, len(mine)))
        results.append(out)
        if settings.warm_start:  # the next block starts from this block's smallest λ
            warm = [{k: v[-1] for k, v in out[0][0].items()}]
            if len(out) > 1:
                warm.append({k: v[:, -1] for k, v in out[1][0].items()})
    progress.close()
    seconds = time.perf_counter() - start
    if world > 1:
        results = _gather(results, world, params)
    w = {k: torch.cat([r[0][0][k] for r in results]) for k in params}
    steps = torch.cat([r[0][1] for r in results])
    fw = fs = None
    if folds is not None:
        fw = {k: torch.cat([r[1][0][k] for r in results], dim=1) for k in params}
        fs = torch.cat([r[1][1] for r in results], dim=1)
    return Trained(w, steps, fw, fs, seconds, len(blocks), world)


def _block_progress(progress: Progress, block: int, blocks: int) -> Callable[[str], None]:
    """The status callback of block ``block`` (from 1) of ``blocks``."""
    def report(text: str) -> None:
        progress(f"block {block}/{blocks}, {text}")
    return report


def _ranks(settings: Settings) -> tuple[int, int]:
    import torch.distributed as dist

    if settings.distribute and dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _gather(results: list[list[Members]], world: int, params: dict[str, torch.Tensor]) -> list[list[Members]]:
    import torch.distributed as dist

    device = next(iter(params.values())).device

    def move(r: list[Members], to: torch.device | str) -> list[Members]:
        return [({k: v.to(to) for k, v in w.items()}, stopped.to(to)) for w, stopped in r]

    parts: list[Any] = [None] * world
    dist.all_gather_object(parts, [move(r, "cpu") for r in results])
    return [move(r, device) for part in parts for r in part]


def _train_block(
    problem: Problem, lams: torch.Tensor, params: dict[str, torch.Tensor], warm: list[dict[str, torch.Tensor]] | None,
    data: tuple[torch.Tensor, ...], fold_data: tuple[torch.Tensor, ...] | None,
    settings: Settings, trainer: Trainer | None, progress: Callable[[str], None],
) -> list[Members]:
    """Train one block: its refit members and, with folds (``fold_data``: each fold's
    training set, stacked), its fold members; returns their weights and steps, refit
    first. ``warm`` is ``None`` (every member from ``params``) or the previous block's
    smallest-λ solutions: one tree for the refit members, one with a leading fold dim for
    the fold members."""
    b = len(lams)
    device = lams.device
    refit_w = _stack(params if warm is None else warm[0], (b,))
    layouts: list[tuple[tuple[int, ...], tuple[torch.Tensor, ...], dict[str, torch.Tensor], bool]] = [
        ((b,), data, refit_w, False)]
    if fold_data is not None:
        k = fold_data[0].shape[0]
        if warm is None:
            fold_w = _stack(params, (k, b))
        else:  # one start per fold, shared by the block's λ
            fold_w = {key: v.unsqueeze(1).repeat(1, b, *([1] * (v.ndim - 1))) for key, v in warm[1].items()}
        layouts.append(((k, b), fold_data, fold_w, True))
    if trainer is not None:  # FISTA
        return trainer.block(lams, [(w, batch, nested) for _, batch, w, nested in layouts], progress)
    from funcreg import _path_minibatch  # it builds on this module's types

    groups = []
    for shape, batch, w, nested in layouts:
        lam = lams.expand(shape).contiguous()
        active = torch.ones(shape, dtype=torch.bool, device=device)
        st = _tmap(lambda v: v.reshape(*([1] * len(shape)), *v.shape).repeat(*shape, *([1] * v.ndim)),
                   funcreg.prox_adam.init(params))
        fn = _path_minibatch.nest(_path_minibatch.step_fn(problem), len(batch), nested)
        groups.append(Group(fn, w, st, lam, batch, active, lr=torch.full(shape, float(settings.lr), device=device),
                            best=torch.full(shape, math.inf, device=device)))
    _path_minibatch.run(problem, groups, settings, progress)
    return [(g.w, g.stopped) for g in groups]


def _tmap(fn: Callable[..., Any], tree: Any, *rest: Any) -> Any:
    return optree.tree_map(fn, tree, *rest, namespace="torch")
