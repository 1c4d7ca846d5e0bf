"""The penalty families, one module each."""

from funcreg.penalties._base import Penalty
from funcreg.penalties.elastic_net import elastic_net
from funcreg.penalties.group_lasso import group_lasso
from funcreg.penalties.l1 import l1
from funcreg.penalties.l2 import l2
from funcreg.penalties.l2_sp import l2_sp

__all__ = ["Penalty", "l1", "l2", "elastic_net", "group_lasso", "l2_sp"]
