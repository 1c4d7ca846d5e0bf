"""Minibatch training of a path's members: epochs of proximal Adam, and the full-data
criterion that decides when each member has converged."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch.func import grad, vmap

import funcreg
from funcreg._path_train import Group, Problem, Settings

#: proximal Adam's lr is multiplied by this after an epoch that did not improve its criterion
DECAY = 0.9


def step_fn(problem: Problem) -> Callable[..., Any]:
    def one(w: Any, st: Any, lam: torch.Tensor, active: torch.Tensor, lr: torch.Tensor,
            *batch: torch.Tensor) -> Any:
        g = grad(problem.loss)(w, *batch)
        nw, ns = funcreg.prox_adam.step(w, g, st, lr=lr, penalty=problem.penalty, lam=lam,
                                        where=problem.where, **problem.options)
        return funcreg.update_where(active, (nw, ns), (w, st))
    return one


def _adam_residual(problem: Problem, lr0: float) -> Callable[..., Any]:
    """max |w − prox(w − η∇F(w), ηλ)| for one member, η the base lr: the prox-gradient
    mapping (times η) in a fixed metric, so that its reduction measures stationarity."""
    def one(w: Any, lam: torch.Tensor, g: Any) -> torch.Tensor:
        u = problem.penalty.prox({k: w[k] - lr0 * g[k] for k in w}, lam, lr0, where=problem.where,
                                 **problem.options)
        return torch.stack([(u[k] - w[k]).abs().amax().double() for k in w]).amax()
    return one


def nest(fn: Callable[..., Any], n_batch: int, folds: bool) -> Callable[..., Any]:
    inner = vmap(fn, in_dims=(0, 0, 0, 0, 0, *([None] * n_batch)))
    if not folds:
        return inner
    return vmap(inner, in_dims=(0, 0, 0, 0, 0, *([0] * n_batch)))


def run(problem: Problem, groups: list[Group], settings: Settings,
              progress: Callable[[str], None]) -> None:
    """Epochs of proximal Adam over a fixed shuffle per epoch; after each epoch, the
    full-data criterion (gradient accumulated over minibatches, no update): a member
    stops once its prox-gradient mapping fell to ``rtol`` times its value at the start,
    and its ``lr`` is multiplied by ``DECAY`` (0.9) after an epoch that did not lower the
    mapping below its best."""
    size = settings.batch_size
    assert size is not None, "Options.resolve gives proximal Adam a batch_size, and only it"
    residual = _adam_residual(problem, float(settings.lr))
    grad_fn = grad(problem.loss)
    total = sum(g.active.numel() for g in groups)
    steps_done = 0
    start = {}
    for i, g in enumerate(groups):
        nested = g.active.ndim == 2
        start[i] = _vmap_nested(residual, nested)(g.w, g.lam, _full_grad(grad_fn, g, size, nested))
    for epoch in range(1, settings.max_steps + 1):
        for i, g in enumerate(groups):
            if not bool(g.active.any()):
                continue
            nested = g.active.ndim == 2
            n = g.batch[0].shape[1 if nested else 0]
            order = torch.randperm(n, generator=torch.Generator().manual_seed(settings.seed * 100003 + epoch))
            order = order.to(g.batch[0].device)
            for idx in order.split(size):
                batch = tuple(t[:, idx] if nested else t[idx] for t in g.batch)
                g.w, g.state = g.fn(g.w, g.state, g.lam, g.active, g.lr, *batch)
            steps_this = math.ceil(n / size)
            gsum = _full_grad(grad_fn, g, size, nested)
            r = _vmap_nested(residual, nested)(g.w, g.lam, gsum) / start[i].clamp(min=1e-300)
            done = g.active & (r <= settings.rtol)
            g.stopped = torch.where(done, steps_done + steps_this, g.stopped)
            stalled = g.active & ~done & (r >= g.best)
            g.lr = torch.where(stalled, g.lr * DECAY, g.lr)
            g.best = torch.minimum(g.best, r)
            g.active = g.active & ~done
        steps_done += steps_this
        moving = sum(int(g.active.sum()) for g in groups)
        progress(f"epoch {epoch}, {moving}/{total} members still moving")
        if not moving:
            break


def _vmap_nested(fn: Callable[..., Any], nested: bool) -> Callable[..., Any]:
    inner = vmap(fn)
    return vmap(inner) if nested else inner


def _full_grad(grad_fn: Callable[..., Any], g: Group, size: int, nested: bool) -> Any:
    """The gradient of the mean loss over all of a group's data, accumulated in chunks of
    ``size`` weighted by their share (the loss is a mean over its batch)."""
    n = g.batch[0].shape[1 if nested else 0]
    total: Any = None
    one = vmap(grad_fn, in_dims=(0, *([None] * len(g.batch))))
    fn = vmap(one, in_dims=(0, *([0] * len(g.batch)))) if nested else one
    for idx in torch.arange(n, device=g.batch[0].device).split(size):
        batch = tuple(t[:, idx] if nested else t[idx] for t in g.batch)
        part = fn(g.w, *batch)
        share = len(idx) / n
        total = {k: v * share for k, v in part.items()} if total is None else \
            {k: total[k] + v * share for k, v in part.items()}
    return total
