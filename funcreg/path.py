"""``fr.path``: from data to a chosen λ in one call, for any torch network.

One call trains a grid of regularization strengths (every member in one ``vmap``, in
blocks), optionally over k folds, and returns the weights, the losses and the rules that
choose λ; :class:`Path` is its result.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.func import vmap

from funcreg import _cv, _grid
from funcreg._path_groups import Grouping
from funcreg._path_train import Options, Problem, train
from funcreg.penalties import Penalty

_SOLVER_OPTIONS = {f.name for f in dataclasses.fields(Options)}


@dataclass
class Path:
    """The result of :func:`fr.path`: one member per λ, on a descending grid.

    Attributes:
        lambdas: 1-d float64 tensor, descending.
        params: dict like the given params, each leaf with a leading dim ``len(lambdas)``
            (with folds: the members refit on all of the data).
        steps: 1-d int tensor, the step at which each member converged (0: never).
        train_loss: the metric of each member on ``data``.
        val_loss: the metric on ``val``, or its mean over folds; ``None`` without either.
        val_se: its standard error over folds (sample std / √k); ``None`` without folds.
        fold_loss: ``(k, len(lambdas))``, each fold member's metric on its held-out part.
        fold_steps: ``(k, len(lambdas))``, when each fold member converged (0: never).
        kept: 1-d int tensor, the groups each member keeps (norm not exactly 0).
        dead: ``(len(lambdas), groups)`` bool, the groups of each member that are zero and
            whose gradient on ``data`` is exactly zero there too (an input blank in every
            sample, a unit whose activation is off on every sample): nothing pulls them
            back, so any λ > 0 holds them at zero; they are counted apart from what λ pruned.
        groups: how many groups the penalty acts on.
        unit: what one group is, in words (the plot's axis label).
        group_norms: ``(len(lambdas), groups)`` float64, each group's norm per member.
        group_labels: a name per group (``"0.weight[3]"``).
        grid: how the grid was found (``grid.note``, ``grid.method``, the bracket's λ
            and pruned shares).
        penalty: the penalty as it was called, e.g. ``"fr.group_lasso(dim=0)"``.
        solver, device, seconds, blocks, ranks, max_steps, rtol: how it was trained
            (``seconds``: wall time of the training, grid search excluded).
    """

    lambdas: torch.Tensor
    params: dict[str, torch.Tensor]
    steps: torch.Tensor
    train_loss: torch.Tensor
    val_loss: torch.Tensor | None
    val_se: torch.Tensor | None
    fold_loss: torch.Tensor | None
    fold_steps: torch.Tensor | None
    kept: torch.Tensor
    dead: torch.Tensor
    groups: int
    unit: str
    group_norms: torch.Tensor
    group_labels: list[str]
    grid: Any
    penalty: str
    solver: str
    device: str
    seconds: float
    blocks: int
    ranks: int
    max_steps: int
    rtol: float

    def best(self, rule: str = "min") -> int:
        """The index of the chosen λ: ``"min"``, the lowest validation loss (the largest
        λ among ties); ``"1se"``, the largest λ whose validation loss is within one
        standard error of the minimum (glmnet's ``lambda.1se``; needs folds).

        Args:
            rule: ``"min"`` or ``"1se"``.

        Returns:
            The member's index into ``lambdas``.

        Raises:
            ValueError: no validation loss (fr.path ran without ``val=`` or ``folds=``),
                ``"1se"`` without folds, or an unknown rule.
        """
        if self.val_loss is None:
            raise ValueError("no validation loss: run fr.path with val=(...) or folds=k")
        return _cv.choose(self.val_loss, self.val_se, rule)

    def member(self, k: int) -> dict[str, torch.Tensor]:
        """Member ``k``'s weights, a tree like the given params (no leading dim).

        Args:
            k: the member's index (``res.best()``, for one).

        Returns:
            A dict of views into ``params``.

        Raises:
            IndexError: ``k`` outside ``range(len(self))``.
        """
        return {p: v[k] for p, v in self.params.items()}

    def __len__(self) -> int:
        return len(self.lambdas)

    def __str__(self) -> str:
        return _table(self)

    def plot(self, path: str, *, rule: str | None = None, chosen: int | None = None) -> None:
        """Write a PNG to ``path``: the group norms along the path (top) and the train
        and validation losses (bottom, ±1 standard error with folds), with the λ chosen
        by ``rule`` marked (default ``"1se"`` with folds, ``"min"`` with ``val=``, none
        without validation) and, if given, member ``chosen`` (your own rule's pick).
        Needs matplotlib (an optional extra).

        Args:
            path: the PNG file to write.
            rule: the rule whose λ is marked, as for :meth:`best`.
            chosen: a member to mark besides.

        Returns:
            None; the figure is written to ``path``.

        Raises:
            ImportError: matplotlib is not installed.
        """
        from funcreg._path_plot import plot

        plot(self, path, rule, chosen)


def path(
    loss: Callable[..., torch.Tensor],
    params: dict[str, torch.Tensor],
    penalty: Penalty,
    data: Sequence[torch.Tensor],
    *,
    lambdas: Any = None,
    n: int = 16,
    eps: float = 1e-2,
    where: Any = None,
    val: Sequence[torch.Tensor] | None = None,
    folds: int | None = None,
    metric: Callable[..., torch.Tensor] | None = None,
    **options: Any,
) -> Path:
    r"""Train a regularization path and report it: for each λ of a descending grid, a
    member minimizing

    .. math:: F_\lambda(w) = \mathrm{loss}(w, \mathrm{data}) + P_\lambda(w)

    from ``params``, every member of a block in one ``vmap``, each frozen once converged.

    Args:
        loss: ``loss(params, *data)`` → 0-d tensor, the smooth part of one member's
            objective: the task loss (a mean over the batch) plus any smooth penalty.
        params: the starting weights, a dict keyed by leaf path
            (``{k: v.detach() for k, v in model.named_parameters()}``); every member
            starts from them.
        penalty: the family (``fr.l1``, ``fr.group_lasso``, ``fr.elastic_net``, ...).
        data: a tuple of tensors of one batch size, the training data.
        lambdas: a 1-d tensor (or sequence), positive and strictly descending; ``None``
            builds a grid of ``n`` values for this network (option ``grid=``, below).
        n, eps: the grid's size, and for ``grid="zero"`` its smallest λ / λ_max.
        where: the penalized leaves, as for the family.
        val: a tuple of tensors, the validation batch.
        folds: k, for k-fold cross-validation over ``data`` (exclusive with ``val``):
            every (fold, λ) member trains in one ``vmap`` per block, then ``params`` is
            refit on all of ``data`` for each λ (in the same vmap run).
        metric: ``metric(params, *batch)`` → 0-d tensor, lower is better: what
            ``train_loss``, ``val_loss`` and the rules read (a task loss without the smooth
            penalty, an error rate); default ``loss``.
        **options: the family's keyword arguments (``dim=``, ``groups=``,
            ``l1_ratio=``, ...) and the solver's:

            * ``solver``: ``"fista"`` (default; full batch, :data:`fr.fista`) or
              ``"prox_adam"`` (minibatches, :data:`fr.prox_adam`; the default when
              ``batch_size`` is given);
            * ``batch_size``: the minibatch size for ``"prox_adam"``;
            * ``lr``: FISTA's first trial step (1.0; backtracking adapts it), or
              proximal Adam's learning rate (1e-2);
            * ``rtol``: convergence tolerance, the prox-gradient mapping relative to
              its size at the start (1e-4 for FISTA, 1e-3 for proximal Adam; see below);
            * ``max_steps``: FISTA steps (3000), or proximal Adam epochs (200);
            * ``block``: λ values per vmap (default all); fixed blocks make the
              results independent of the number of processes;
            * ``warm_start``: train the blocks from large λ to small, each block
              starting from the previous block's smallest-λ solution and (FISTA) its
              steps (glmnet's continuation), instead of every member from ``params``;
            * ``compile``: FISTA only; compile each batch's iteration with
              ``torch.compile(fullgraph=True, dynamic=False)``, once, reused by every
              block of the same size (default False: compiling costs seconds per
              shape, which pays off only on long paths; if it fails, the path trains
              eagerly and warns with the reason);
            * ``grid``: ``"bracket"`` (default) or ``"zero"``, for ``lambdas=None``;
            * ``progress``: a status line on stderr (default: only when stderr is a
              terminal); ``seed``: the folds' shuffle and the minibatch order (0);
            * ``distribute``: when torch.distributed is initialized, spread the blocks
              over its ranks (default True); every rank returns the whole result.

    **The grid** (``lambdas=None``). ``grid="zero"`` is scikit-learn's: λ_max, the
    smallest λ at which w = 0 (all selected leaves at once) is stationary, down to
    eps·λ_max; exact for linear models. ``grid="bracket"`` finds the range for a
    network, where λ_max at 0 says nothing: a wide bracket around the largest per-leaf
    λ_max is trained briefly in one vmap, and the grid runs from the smallest λ that
    left at least 90 % of the groups at zero to well below the largest that pruned at
    most 10 % of them. Groups that are zero with a gradient exactly zero there too
    (*dead*: an input blank in every sample, a unit off on every sample) are held at
    zero by any λ > 0; they count as pruned at the top but not at the bottom, and
    ``res.dead`` marks them (``res.grid.note`` says what was found; the docs page
    "Choosing λ for a network" has the details).

    **Convergence.** FISTA: a member stops when the prox-gradient mapping of an
    accepted step, :math:`\max|G|` with :math:`G = (z - u)/\eta` in its metric of one
    step per leaf, has fallen to ``rtol`` times its size at ``params`` (with warm
    starts too: the reference stays the cold start's), a first-order optimality test
    that depends neither on the scale of the loss nor on that of the weights
    (:data:`fr.fista`). Proximal Adam: after each epoch, the prox-gradient mapping on all of the data
    (the gradient accumulated over minibatches, no update),
    :math:`\max|w - \operatorname{prox}_{\eta P}(w - \eta\nabla F(w))|` with
    :math:`\eta` the base ``lr``, must have fallen to ``rtol`` times its value at the
    start; where it did not improve on its best, that member's ``lr`` is multiplied by
    0.9 (minibatch noise keeps a constant-step iterate hovering, so the step must
    shrink for the criterion to be met). It assumes ``loss`` is a mean over the batch.
    ``res.steps`` holds the step (FISTA) or minibatch step (proximal Adam) at which each
    member stopped, 0 if it did not.

    Returns:
        A :class:`Path`; ``str(res)`` is the table, ``res.best(rule)`` the chosen index,
        ``res.plot(file)`` the picture.

    Raises:
        TypeError: ``params`` not a dict of floating tensors, ``penalty`` not a family,
            an unknown option.
        ValueError: ``loss`` not returning a 0-d tensor; data or val tensors of different
            batch sizes or devices; a grid not 1-d, not positive, not strictly descending;
            ``folds`` below 2 or larger than the data, or given with ``val``; a ``metric``
            that fails (or returns no 0-d tensor) on ``val`` or a fold; bad solver options.
            All before any training starts.

    >>> import torch, funcreg as fr
    >>> g = torch.Generator().manual_seed(0)
    >>> x = torch.randn(64, 5, generator=g)
    >>> y = x[:, 0] - 2 * x[:, 1] + 0.1 * torch.randn(64, generator=g)
    >>> def mse(p, x, y):
    ...     return 0.5 * ((x @ p["w"] - y) ** 2).mean()
    >>> res = fr.path(mse, {"w": torch.zeros(5)}, fr.l1, (x, y), n=4, grid="zero", folds=4)
    >>> res.kept.tolist(), bool((res.steps > 0).all())
    ([0, 2, 2, 3], True)
    """
    if not isinstance(penalty, Penalty):
        raise TypeError(f"penalty must be a funcreg penalty family (fr.l1, fr.group_lasso, ...), "
                        f"not {penalty!r}")
    family = {k: v for k, v in options.items() if k in penalty.options}
    solver = {k: v for k, v in options.items() if k not in penalty.options}
    unknown = set(solver) - _SOLVER_OPTIONS
    if unknown:
        raise TypeError(f"fr.path got an unexpected option {sorted(unknown)[0]!r}: neither "
                        f"fr.{penalty.name}'s ({', '.join(penalty.options) or 'none'}) nor the "
                        f"solver's ({', '.join(sorted(_SOLVER_OPTIONS))})")
    settings = Options(**solver).resolve()
    params = _check_params(params)
    device = next(iter(params.values())).device
    data = _check_batch("data", data, device)
    if val is not None:
        val = _check_batch("val", val, device)
        if folds is not None:
            raise ValueError("pass val= or folds=, not both")
    split = _cv.make_folds(len(data[0]), folds, seed=settings.seed) if folds is not None else None
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    if not (isinstance(eps, (int, float)) and 0 < eps < 1):
        raise ValueError(f"eps must be in (0, 1), got {eps!r}")
    grid_given = lambdas is not None
    if grid_given:
        lambdas = _check_lambdas(lambdas, device)
    problem = Problem(loss, penalty, family, where)
    metric = loss if metric is None else metric
    _check_calls(problem, metric, params, data, val, split)
    grouping = Grouping(penalty, family, params, where)

    if grid_given:
        grid = _grid.Grid(lambdas, "given", float("nan"), f"{len(lambdas)} λ given")
    else:
        grid = _grid.build(problem, params, data, grouping, n, eps, settings)
        lambdas = grid.lambdas
    trained = train(problem, lambdas, params, data, split, settings)

    def evaluate(tree: Any, batch: tuple) -> torch.Tensor:
        return vmap(metric, in_dims=(0, *([None] * len(batch))))(tree, *batch).detach()

    train_loss = evaluate(trained.params, data)
    val_loss = val_se = fold_loss = None
    if val is not None:
        val_loss = evaluate(trained.params, val)
    if split is not None:
        assert trained.fold_params is not None
        fold_loss = torch.stack([
            evaluate({k: v[f] for k, v in trained.fold_params.items()},
                     tuple(t[idx.to(t.device)] for t in data))
            for f, idx in enumerate(split.val)])
        val_loss, val_se = _cv.fold_stats(fold_loss.double())
    norms = grouping.norms(trained.params)
    zero, dead = _grid.groups_at_rest(problem, grouping, trained.params, data, settings.batch_size)
    if grid.method == "bracket":
        zero, cut = _grid.shares(zero, dead)
        top, bottom = float(zero[0]), float(cut[-1])
        if top < _grid.TOP or bottom > _grid.BOTTOM:
            warnings.warn(
                f"fr.path: after training, the grid's largest λ left {top:.1%} of the groups at zero "
                f"and its smallest pruned {bottom:.1%} of the groups that are not dead (aimed at "
                f"≥ {_grid.TOP:.0%} and ≤ {_grid.BOTTOM:.0%}). Pass lambdas= to choose the range "
                "yourself.", stacklevel=2)
    return Path(
        lambdas=lambdas, params=trained.params, steps=trained.steps, train_loss=train_loss,
        val_loss=val_loss, val_se=val_se, fold_loss=fold_loss, fold_steps=trained.fold_steps,
        kept=(norms != 0).sum(-1), dead=dead, groups=norms.shape[-1], unit=grouping.unit,
        group_norms=norms, group_labels=grouping.labels, grid=grid,
        penalty=_describe_penalty(penalty, family), solver=settings.solver, device=str(device),
        seconds=trained.seconds, blocks=trained.blocks, ranks=trained.ranks,
        max_steps=int(settings.max_steps), rtol=float(settings.rtol),
    )


def _describe_penalty(penalty: Penalty, family: dict[str, Any]) -> str:
    shown = ", ".join(f"{k}={v!r}" for k, v in family.items() if k != "groups")
    if "groups" in family:
        shown = ", ".join(filter(None, [shown, f"groups=[{len(family['groups'])} couplings]"]))
    return f"fr.{penalty.name}" + (f"({shown})" if shown else "")


def _check_params(params: Any) -> dict[str, torch.Tensor]:
    if not isinstance(params, dict) or not params:
        raise TypeError("params must be a non-empty dict of tensors keyed by leaf path, as "
                        "{k: v.detach() for k, v in model.named_parameters()}")
    devices = set()
    for k, v in params.items():
        if not isinstance(v, torch.Tensor):
            raise TypeError(f"params leaf {k!r} is a {type(v).__name__}, not a tensor")
        if not v.is_floating_point():
            raise TypeError(f"params leaf {k!r} has dtype {v.dtype}: fr.path trains floating-point leaves")
        devices.add(v.device)
    if len(devices) > 1:
        raise ValueError(f"params live on several devices ({sorted(map(str, devices))}): fr.path "
                         "trains on one")
    return {k: v.detach() for k, v in params.items()}


def _check_batch(name: str, batch: Any, device: torch.device) -> tuple[torch.Tensor, ...]:
    if isinstance(batch, torch.Tensor) or not isinstance(batch, (tuple, list)) or not batch:
        raise TypeError(f"{name} must be a non-empty tuple of tensors (inputs, targets, ...)")
    sizes = []
    for i, t in enumerate(batch):
        if not isinstance(t, torch.Tensor) or t.ndim == 0:
            raise TypeError(f"{name}[{i}] must be a tensor with a batch dim, got "
                            f"{type(t).__name__ if not isinstance(t, torch.Tensor) else 'a 0-d tensor'}")
        if t.device != device:
            raise ValueError(f"{name}[{i}] lives on {t.device}, params on {device}")
        sizes.append(t.shape[0])
    if len(set(sizes)) > 1:
        raise ValueError(f"{name}'s tensors have different batch sizes {sizes}: every tensor of "
                         f"{name} must have one row per sample")
    return tuple(batch)


def _check_lambdas(lambdas: Any, device: torch.device) -> torch.Tensor:
    lams = torch.as_tensor(lambdas, dtype=torch.float64)
    if lams.ndim != 1 or len(lams) == 0:
        raise ValueError(f"lambdas must be a non-empty 1-d tensor, got shape {tuple(lams.shape)}")
    if not bool(torch.isfinite(lams).all()) or not bool((lams > 0).all()):
        raise ValueError(f"lambdas must be positive and finite, got {lams.tolist()}")
    if len(lams) > 1 and not bool((lams[1:] < lams[:-1]).all()):
        raise ValueError("lambdas must be strictly descending (largest λ first, as the path "
                         f"is traced), got {lams.tolist()}")
    return lams.to(device)


def _check_calls(problem: Problem, metric: Callable[..., Any], params: dict[str, torch.Tensor],
                 data: tuple, val: tuple | None, split: _cv.Folds | None) -> None:
    """Call loss, the penalty and metric once each, on the inputs training will give them."""
    value = problem.loss(params, *data)
    if not isinstance(value, torch.Tensor) or value.ndim != 0 or not value.is_floating_point():
        what = (f"a tensor of shape {tuple(value.shape)}" if isinstance(value, torch.Tensor)
                else type(value).__name__)
        raise ValueError(f"loss(params, *data) must return a 0-d floating tensor, got {what}")
    problem.penalty(params, 1.0, where=problem.where, **problem.options)
    checks = []
    if val is not None:
        checks.append(("val", val))
    if split is not None:
        checks.append(("fold 0's held-out part", tuple(t[split.val[0].to(t.device)] for t in data)))
    for name, batch in checks:
        try:
            out = metric(params, *batch)
        except Exception as error:
            raise ValueError(f"metric failed on {name}: {type(error).__name__}: {error}") from error
        if not isinstance(out, torch.Tensor) or out.ndim != 0:
            what = (f"a tensor of shape {tuple(out.shape)}" if isinstance(out, torch.Tensor)
                    else type(out).__name__)
            raise ValueError(f"metric(params, *batch) must return a 0-d tensor, got {what} on {name}")


def _table(res: Path) -> str:
    marks = {}
    if res.val_loss is not None:
        marks[res.best("min")] = "min"
        if res.val_se is not None:
            k = res.best("1se")
            marks[k] = "min, 1se" if k in marks else "1se"
    grid = res.grid.note
    lines = [
        f"fr.path: {res.penalty}, {len(res)} λ ({grid}); {res.groups} groups ({res.unit})",
        f"solver {res.solver}, rtol {res.rtol:g}, at most {res.max_steps} "
        f"{'steps' if res.solver == 'fista' else 'epochs'}; device {res.device}; "
        f"{res.blocks} block(s) on {res.ranks} process(es)",
    ]
    folds = res.fold_loss.shape[0] if res.fold_loss is not None else 0
    head = f"{'lambda':>10} {'train':>9} {'val':>9}" + (f" {'val se':>9}" if folds else "")
    width = max(6, len(str(res.groups)) * 2 + 1)
    dead = res.dead.sum(-1).tolist()
    head += f" {'kept':>{width}}" + (f" {'dead':>4}" if any(dead) else "") + "  converged"
    lines.append(head)
    for k in range(len(res)):
        val = f"{float(res.val_loss[k]):9.4g}" if res.val_loss is not None else f"{'-':>9}"
        row = f"{float(res.lambdas[k]):10.3e} {float(res.train_loss[k]):9.4g} {val}"
        if res.val_se is not None:  # set exactly when there are folds
            row += f" {float(res.val_se[k]):9.2g}"
        kept = f"{int(res.kept[k])}/{res.groups}"
        step = int(res.steps[k])
        row += f" {kept:>{width}}" + (f" {dead[k]:>4}" if any(dead) else "")
        row += f"  {f'at step {step}' if step else 'no':<14}"
        if k in marks:
            row += f"<- {marks[k]}"
        lines.append(row.rstrip())
    done = int((res.steps > 0).sum())
    tail = f"{done}/{len(res)} members converged"
    if done:
        tail += f", the slowest at step {int(res.steps.max())}"
    if res.fold_steps is not None:  # set exactly when there are folds
        fdone = int((res.fold_steps > 0).sum())
        tail += f"; {fdone}/{res.fold_steps.numel()} fold members ({folds} folds)"
    lines.append(tail)
    if any(dead):
        lines.append("dead: groups at zero whose gradient is exactly zero too (a blank input, a unit off on "
                     "every sample); any λ > 0 holds them there")
    return "\n".join(lines)
