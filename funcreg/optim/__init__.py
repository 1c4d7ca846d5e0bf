"""Stateless optimizer steps: state in, state out, nothing mutated."""

from funcreg.optim.adagrad import Adagrad, adagrad
from funcreg.optim.adam import Adam, adam, adamw
from funcreg.optim.lion import Lion, lion
from funcreg.optim.muon import Muon, muon
from funcreg.optim.rmsprop import RMSprop, rmsprop
from funcreg.optim.sgd import SGD, sgd

__all__ = ["Adagrad", "Adam", "Lion", "Muon", "RMSprop", "SGD", "adagrad", "adam", "adamw", "lion", "muon",
           "rmsprop", "sgd"]
