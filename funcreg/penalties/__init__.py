"""The penalty families, one module each."""

from funcreg.penalties._base import Penalty
from funcreg.penalties.elastic_net import elastic_net
from funcreg.penalties.group_lasso import group_lasso
from funcreg.penalties.l0 import l0
from funcreg.penalties.l1 import l1
from funcreg.penalties.l2 import l2
from funcreg.penalties.l2_sp import l2_sp
from funcreg.penalties.mcp import mcp
from funcreg.penalties.nuclear_norm import nuclear_norm
from funcreg.penalties.orthogonal import orthogonal
from funcreg.penalties.scad import scad
from funcreg.penalties.sparse_group_lasso import sparse_group_lasso

__all__ = [
    "Penalty", "elastic_net", "group_lasso", "l0", "l1", "l2", "l2_sp", "mcp", "nuclear_norm",
    "orthogonal", "scad", "sparse_group_lasso",
]
