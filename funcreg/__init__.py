"""funcreg: weight regularization as pure functions for functional PyTorch.

Penalties (``l1``, ``l2``, ``elastic_net``, ``group_lasso``, ``l2_sp``) are values,
exact gradients (``.grad``, ``.add_grad``) and proximal operators (``.prox``) over parameter
pytrees; ``penalized`` adds them to a loss; ``select`` chooses leaves; ``sgd``, ``adam``
and ``adamw`` are stateless optimizer steps; ``distributed.all_reduce`` averages a gradient
tree across processes, for data-parallel ``torch.func`` training. See DESIGN.md.
"""

from funcreg import distributed, select
from funcreg.ensemble import converged, replicate, update_where
from funcreg.optim import adam, adamw, sgd
from funcreg.penalized import penalized
from funcreg.penalties import Penalty, elastic_net, group_lasso, l1, l2, l2_sp

__all__ = [
    "Penalty",
    "adam",
    "adamw",
    "converged",
    "distributed",
    "elastic_net",
    "group_lasso",
    "l1",
    "l2",
    "l2_sp",
    "penalized",
    "replicate",
    "select",
    "sgd",
    "update_where",
]
__version__ = "0.1.0"
