"""funcreg: weight regularization as pure functions for functional PyTorch.

Penalties (``l1``, ``l2``, ``elastic_net``, ``group_lasso``, ``l2_sp``,
``sparse_group_lasso``, ``nuclear_norm``, ``mcp``, ``scad``, ``l0``, ``orthogonal``) are
values, exact gradients (``.grad``, ``.add_grad``), proximal operators (``.prox``) and λ
thresholds (``.lambda_max``) over parameter pytrees; ``project`` holds projections onto
constraint sets; ``penalized`` adds penalties to a loss; ``select`` chooses leaves;
``sgd``, ``adam`` and ``adamw`` are stateless optimizer steps; ``lambda_grid`` and
``sparsity`` build and read a regularization path; ``distributed.all_reduce`` averages a
gradient tree across processes, for data-parallel ``torch.func`` training. See docs/design.md.

``rmsprop``, ``adagrad``, ``muon`` and ``lion`` are more steps in the same shape.

``Coupling`` names units that span several leaves; ``prune`` finds them in a module and
removes the zero ones from a copy of it.
"""

from funcreg import distributed, project, prune, select
from funcreg.coupling import Coupling
from funcreg.ensemble import converged, replicate, update_where
from funcreg.lambda_grid import lambda_grid
from funcreg.optim import adagrad, adam, adamw, lion, muon, rmsprop, sgd
from funcreg.optim.fista import fista
from funcreg.optim.prox_adam import prox_adam
from funcreg.path import Path, path
from funcreg.penalized import penalized
from funcreg.penalties import (
    Penalty,
    elastic_net,
    group_lasso,
    l0,
    l1,
    l2,
    l2_sp,
    mcp,
    nuclear_norm,
    orthogonal,
    scad,
    sparse_group_lasso,
)
from funcreg.sparsity import sparsity

__all__ = [
    "Coupling",
    "Path",
    "Penalty",
    "adagrad",
    "adam",
    "adamw",
    "converged",
    "distributed",
    "elastic_net",
    "fista",
    "group_lasso",
    "l0",
    "l1",
    "l2",
    "l2_sp",
    "lambda_grid",
    "lion",
    "mcp",
    "muon",
    "nuclear_norm",
    "orthogonal",
    "path",
    "penalized",
    "project",
    "prox_adam",
    "prune",
    "replicate",
    "rmsprop",
    "scad",
    "select",
    "sgd",
    "sparse_group_lasso",
    "sparsity",
    "update_where",
]
__version__ = "0.1.0"
