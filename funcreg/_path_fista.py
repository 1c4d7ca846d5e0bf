"""Full-batch training of a path's members with FISTA, every member of a batch in one
iteration on flat parameter vectors.

The refit members of a block are a ``(λ,)`` batch on all of the data; with folds, its
fold members are a ``(fold, λ)`` batch, each fold on its own training part (``vmap`` over
folds outside, λ inside, so that each fold's data are passed once). The iteration is
``fr.fista``'s own (:mod:`funcreg.optim._fista_core`); here the loss is evaluated for
every member of a batch at once, one ``vmap``\\ ed forward whose gradient comes from one
backward pass through the sum of the members' losses (members share no weights, so
that is each member's own gradient, and it costs less than ``vmap`` of
``torch.func.grad``), and the penalty's prox is ``vmap``\\ ed over the members and given
only the penalized leaves.

A member that has converged is frozen. λ columns whose members have all converged leave
the working set (their results are final), so late steps cost what the members still
moving cost; which columns leave, and when, depends only on the block's own results, so
a block gives the same bits wherever it runs.

With ``compile=True`` the iteration of each batch is compiled once with
``torch.compile(fullgraph=True, dynamic=False)`` and reused by every block of the same
size; the working set then keeps its shape (finished columns stay in it, frozen), since
every new shape would compile anew. If compiling fails, the path trains eagerly and
warns with the reason.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch.func import grad_and_value, vmap

from funcreg._path_groups import Grouping
from funcreg.optim import _fista_core as core
from funcreg.optim.fista import _step_blocks as step_blocks

if TYPE_CHECKING:  # _path_train imports this module when it trains with FISTA
    from funcreg._path_train import Members, Problem, Settings

#: the growth bound of fr.fista.step's default
GROW = 1.25


class Trainer:
    """Trains blocks of one path: the flat layout of a member, the batched evaluations of
    the loss and the prox, and (with ``compile``) the compiled iteration, shared by all
    blocks."""

    def __init__(self, problem: Problem, params: dict[str, torch.Tensor], settings: Settings):
        self.problem, self.settings = problem, settings
        self.params = params
        self.paths = list(params)
        self.layout = core.Layout([params[k] for k in self.paths], step_blocks(len(self.paths), problem.options))
        chosen = set(Grouping(problem.penalty, problem.options, params, problem.where).paths)
        self.selected = [i for i, k in enumerate(self.paths) if k in chosen]
        self.penalized = self.layout.flatten([torch.full(params[k].shape, i in self.selected, device=params[k].device)
                                              for i, k in enumerate(self.paths)]).bool()
        self.compile = bool(settings.compile)
        self._compiled: dict[bool, Callable[..., Any]] = {}
        self.carry: list[tuple[torch.Tensor, torch.Tensor]] = []

    # -- one member, as vmap sees it
    def _tree(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        return dict(zip(self.paths, self.layout.unflatten(theta)))

    def _loss(self, theta: torch.Tensor, *batch: torch.Tensor) -> torch.Tensor:
        return self.problem.loss(self._tree(theta), *batch)

    def _prox(self, v: torch.Tensor, eta: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
        leaves, steps = self.layout.unflatten(v), self.layout.per_leaf(eta).unbind(-1)
        p, names = self.problem, self.paths
        out = p.penalty.prox({names[i]: leaves[i] for i in self.selected}, lam,
                             {names[i]: steps[i] for i in self.selected}, **p.options)
        for i in self.selected:
            leaves[i] = out[names[i]]
        return self.layout.flatten(leaves)

    # -- every member of a batch
    def _iterate(self, nested: bool, functional: bool) -> Callable[..., Any]:
        """``fn(it, lam, active, *batch) -> (it, done)``: one iteration of a batch."""
        rtol = float(self.settings.rtol)

        def fn(it: core.Iterate, lam: torch.Tensor, active: torch.Tensor,
               *batch: torch.Tensor) -> tuple[core.Iterate, torch.Tensor]:
            value = _over_members(self._loss, len(batch), nested)
            if functional:  # what torch.compile can trace
                vg = _over_members(grad_and_value(self._loss), len(batch), nested)

                def value_and_grad(theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
                    g, v = vg(theta, *batch)
                    return v, g
            else:
                def value_and_grad(theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
                    return _summed_backward(value, theta, batch)

            prox = _over_members(self._prox, 0, nested)
            return core.iterate(it, self.layout, value_and_grad, lambda u: value(u, *batch),
                                lambda v, eta: prox(v, eta, lam), rtol=rtol, atol=0.0, grow=GROW,
                                active=active)

        return fn

    def start_mapping(self, w: torch.Tensor, lams: torch.Tensor, data: tuple[torch.Tensor, ...],
                      nested: bool) -> torch.Tensor:
        """max|G| of every member at ``w`` with the first trial step ``lr``."""
        value = _over_members(self._loss, len(data), nested)
        prox = _over_members(self._prox, 0, nested)
        lam = lams.to(self.layout.dtype).expand(w.shape[:-1]).contiguous()
        eta = torch.full((*w.shape[:-1], self.layout.n_blocks), float(self.settings.lr),
                         dtype=self.layout.dtype, device=w.device)
        return core.mapping(w, eta, self.layout, lambda th: _summed_backward(value, th, data),
                            lambda v, e: prox(v, e, lam))

    def _step_fn(self, nested: bool) -> tuple[Callable[..., Any], bool]:
        """The iteration for a batch, and whether it is compiled."""
        if not self.compile:
            return self._iterate(nested, functional=False), False
        if nested not in self._compiled:
            try:
                self._compiled[nested] = torch.compile(self._iterate(nested, functional=True), fullgraph=True,
                                                       dynamic=False)
            except Exception as error:
                return self.fall_back(error, nested), False
        return self._compiled[nested], True

    def block(self, lams: torch.Tensor, starts: list[tuple[dict[str, torch.Tensor], tuple[torch.Tensor, ...], bool]],
              progress: Callable[[str], None]) -> list[Members]:
        """Train one block: ``starts`` holds, per batch, its starting weights (a tree with
        the batch's member dims), its data and whether it is nested over folds. Returns,
        per batch, the weights (a tree with the member dims) and the step at which each
        member converged (0: never)."""
        batches = []
        for j, (w, data, nested) in enumerate(starts):
            lead = w[self.paths[0]].ndim - len(self.layout.shapes[0])
            flat = self.layout.flatten([w[k] for k in self.paths], lead)
            fn, compiled = self._step_fn(nested)
            eta = torch.full((self.layout.n_blocks,), float(self.settings.lr), dtype=self.layout.dtype,
                             device=flat.device)
            curv = torch.zeros_like(eta)
            ref = None
            if self.carry:  # warm start: the previous block's solutions, with their steps
                cold = self.layout.flatten([self.params[k].expand(*w[k].shape) for k in self.paths], lead)
                # an empty model carries no support to continue from (and in a network its
                # units may have no gradient left to regrow): such a member starts cold
                empty = (flat[..., self.penalized] == 0).all(-1, keepdim=True)
                flat = torch.where(empty, cold, flat)
                eta = torch.where(empty, eta, self.carry[j][0].unsqueeze(-2))
                curv = torch.where(empty, curv, self.carry[j][1].unsqueeze(-2))
                # convergence stays relative to the mapping at the cold start
                ref = self.start_mapping(cold, lams, data, nested)
            batches.append(Batch(flat, lams, eta, curv, ref, data, nested, fn, compiled, self))
        total = sum(b.active.numel() for b in batches)
        for s in range(1, int(self.settings.max_steps) + 1):
            for b in batches:
                if b.moving:
                    b.step(s)
            moving = sum(b.moving for b in batches)
            progress(f"step {s}, {moving}/{total} members still moving")
            if not moving:
                break
        out = []
        for b in batches:
            flat_w, stopped = b.finish()
            out.append(({k: v.contiguous() for k, v in zip(self.paths, self.layout.unflatten(flat_w))}, stopped))
        if self.settings.warm_start:  # the smallest λ's steps go on to the next block
            self.carry = [(b.final_eta.select(b.dim, -1), b.final_curv.select(b.dim, -1)) for b in batches]
        return out

    def fall_back(self, error: Exception, nested: bool) -> Callable[..., Any]:
        """Stop compiling (warning once, with ``error``) and return the eager iteration."""
        if self.compile:
            reason = (str(error).strip().splitlines() or [""])[0]
            warnings.warn(f"fr.path: torch.compile could not compile the FISTA iteration "
                          f"({type(error).__name__}: {reason}); training eagerly instead", stacklevel=2)
        self.compile = False
        self._compiled.clear()
        return self._iterate(nested, functional=False)


class Batch:
    """The members of one batch of a block (refit or folds) still training, and the
    results of those that left; ``dim`` is the λ dim among the member dims."""

    def __init__(self, w: torch.Tensor, lams: torch.Tensor, eta: torch.Tensor, curv: torch.Tensor,
                 ref: torch.Tensor | None, data: tuple[torch.Tensor, ...], nested: bool, fn: Callable[..., Any],
                 compiled: bool, trainer: Trainer):
        layout = trainer.layout
        self.data, self.nested, self.fn, self.compiled, self.trainer = data, nested, fn, compiled, trainer
        self.dim = w.ndim - 2
        self.it = core.start(w, eta, curv, layout, ref)
        self.final_eta, self.final_curv = self.it.eta.clone(), self.it.curv.clone()
        self.lam = lams.to(layout.dtype).expand(w.shape[:-1]).contiguous()
        self.active = torch.ones(self.lam.shape, dtype=torch.bool, device=w.device)
        self.stopped = torch.zeros(self.lam.shape, dtype=torch.long, device=w.device)
        self.cols = torch.arange(self.lam.shape[-1], device=w.device)
        self.final_w = w.clone()
        self.final_stopped = self.stopped.clone()
        self.moving = int(self.active.sum())

    def step(self, s: int) -> None:
        """One iteration of the working set; members that converge are frozen with ``s``
        as their step, and (eagerly) columns whose members all converged leave."""
        try:
            self.it, done = self.fn(self.it, self.lam, self.active, *self.data)
        except Exception as error:  # any compile failure falls back to eager
            if not self.compiled:
                raise
            self.fn, self.compiled = self.trainer.fall_back(error, self.nested), False
            self.it, done = self.fn(self.it, self.lam, self.active, *self.data)
        self.stopped = torch.where(done, s, self.stopped)
        self.active = self.active & ~done
        alive = self.active.reshape(-1, self.active.shape[-1]).any(0)
        self.moving = int(self.active.sum())
        if not self.compiled and not bool(alive.all()):
            self._retire(alive)

    def _retire(self, alive: torch.Tensor) -> None:
        """Write the finished columns' results and drop them from the working set."""
        d = self.dim
        gone, keep = torch.nonzero(~alive).flatten(), torch.nonzero(alive).flatten()
        self.final_w.index_copy_(d, self.cols[gone], self.it.w.index_select(d, gone))
        self.final_stopped.index_copy_(d, self.cols[gone], self.stopped.index_select(d, gone))
        self.final_eta.index_copy_(d, self.cols[gone], self.it.eta.index_select(d, gone))
        self.final_curv.index_copy_(d, self.cols[gone], self.it.curv.index_select(d, gone))
        self.cols = self.cols[keep]
        self.it = core.Iterate(*(x.index_select(d, keep) for x in self.it))
        self.lam, self.active, self.stopped = (x.index_select(d, keep) for x in (self.lam, self.active, self.stopped))

    def finish(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every member's final flat weights and stopping step (0: did not converge)."""
        if len(self.cols):
            self._retire(torch.zeros(len(self.cols), dtype=torch.bool, device=self.cols.device))
        return self.final_w, self.final_stopped


def _over_members(fn: Callable[..., Any], n_batch: int, nested: bool) -> Callable[..., Any]:
    """``fn`` over the member dims: λ inside, folds outside when ``nested``. The first
    argument is per member; of the rest, the last ``n_batch`` are data (shared by the λ,
    one per fold) and the others per member."""

    def dims(per_member: bool) -> Callable[[int], tuple[Any, ...]]:
        def at(n_args: int) -> tuple[Any, ...]:
            data = 0 if per_member else None
            return (*([0] * (n_args - n_batch)), *([data] * n_batch))
        return at

    def call(*args: Any) -> Any:
        inner = vmap(fn, in_dims=dims(False)(len(args)))
        return (vmap(inner, in_dims=dims(True)(len(args))) if nested else inner)(*args)

    return call


def _summed_backward(value: Callable[..., torch.Tensor], theta: torch.Tensor,
                     batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Every member's f and ∇f from one batched forward and one backward of Σ f."""
    with torch.enable_grad():
        leaf = theta.detach().requires_grad_()
        values = value(leaf, *batch)
        g = torch.autograd.grad(values.sum(), leaf, allow_unused=True)[0] if values.requires_grad else None
    return values.detach(), torch.zeros_like(theta) if g is None else g
