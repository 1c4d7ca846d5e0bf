"""Stateless optimizer steps: state in, state out, nothing mutated."""

from funcreg.optim.adam import Adam, adam, adamw
from funcreg.optim.sgd import SGD, sgd

__all__ = ["Adam", "SGD", "adam", "adamw", "sgd"]
