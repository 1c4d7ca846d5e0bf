"""One entry per stateless step of issue 19 (RMSprop, Adagrad, Muon, Lion): how to build
its reference optimizer, the configurations its tests run, which of its hyperparameters
may be tensors, and which leaves it updates. The tests of tests/test_steps_*.py are
parametrized over :data:`STEPS`; a registry of every step can take these entries as
they are.

The references are independent of funcreg: torch.optim's own classes for RMSprop, Adagrad
and Muon (on ``.grad`` set by hand, see :func:`optim_helpers.torch_trajectory`), and for
Lion, which torch.optim lacks, :class:`PaperLion`, the paper's update written out.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch

import funcreg as fr


class PaperLion(torch.optim.Optimizer):
    """Lion as Chen et al. (2023) write it (Algorithm 2, decoupled weight decay), one
    tensor at a time in plain torch arithmetic:

        c = b1·m + (1 − b1)·g;  w ← w − lr·(sign(c) + wd·w);  m ← b2·m + (1 − b2)·g
    """

    def __init__(self, params: Any, lr: float, betas: tuple[float, float] = (0.9, 0.99),
                 weight_decay: float = 0.0) -> None:
        super().__init__(params, dict(lr=lr, betas=betas, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self) -> None:  # type: ignore[override]
        for group in self.param_groups:
            lr, (b1, b2), wd = group["lr"], group["betas"], group["weight_decay"]
            for w in group["params"]:
                if w.grad is None:
                    continue
                g = w.grad
                m = self.state[w].setdefault("exp_avg", torch.zeros_like(w))
                c = b1 * m + (1 - b1) * g
                w.copy_(w - lr * (torch.sign(c) + wd * w))
                m.copy_(b2 * m + (1 - b2) * g)


def matrices(path: str, leaf: torch.Tensor) -> bool:
    """Muon's leaves: the 2-D ones."""
    return leaf.ndim == 2


@dataclass(frozen=True)
class Step:
    """A step under test.

    ``reference(params, **kw)`` builds the reference optimizer over a list of tensors (or
    param groups); ``configs`` are step keyword arguments by id, in funcreg's (= torch's)
    names; ``hypers`` are the hyperparameters that may be tensors, with their defaults
    (``betas`` as a pair); ``init(kw)`` gives ``init``'s keyword arguments for the step's
    (tensors included);
    ``where`` the leaves the step updates (``None``: all); ``fused`` the name of torch's
    fused kernel its fast path runs on Python-number hyperparameters, if any; ``compose``
    the id of the config used where one is enough (vmap, compile, donation, errors).
    """

    name: str
    opt: Any
    reference: Callable[..., torch.optim.Optimizer]
    configs: dict[str, dict[str, Any]]
    hypers: dict[str, Any]
    compose: str
    init: Callable[[dict[str, Any]], dict[str, Any]] = lambda kw: {}
    where: Any = None
    fused: str | None = None
    decays: bool = True  # where= chooses the decayed leaves (False: the updated leaves)
    tensor_lr: tuple[str, ...] = ()  # configs also run with a 0-d tensor lr

    def tensors(self, kw: dict[str, Any], dtype: torch.dtype = torch.float64, device: str = "cpu") -> dict[str, Any]:
        """``kw`` with every hyperparameter (defaults spelled out) a 0-d tensor of ``dtype``."""
        out = {**self.hypers, **kw}
        for name in self.hypers:
            v = out[name]
            out[name] = (tuple(torch.tensor(b, dtype=dtype, device=device) for b in v) if name == "betas"
                         else torch.tensor(v, dtype=dtype, device=device))
        return out


RMSPROP = Step(
    "rmsprop", fr.rmsprop, torch.optim.RMSprop,
    configs={
        # torch's own test configurations (common_optimizers.optim_inputs_func_rmsprop),
        # with lr spelled out (funcreg has no default lr), and a few more
        "default": dict(lr=1e-2),
        "lr": dict(lr=1e-3),
        "wd": dict(lr=1e-2, weight_decay=0.1),
        "maximize": dict(lr=1e-2, maximize=True),
        "centered": dict(lr=1e-2, weight_decay=0.1, centered=True),
        "maximize-wd": dict(lr=1e-2, maximize=True, weight_decay=0.1),
        "centered-momentum": dict(lr=1e-2, weight_decay=0.1, centered=True, momentum=0.1),
        "all": dict(lr=1e-2, weight_decay=0.1, centered=True, momentum=0.1, maximize=True),
        "momentum-alpha-eps": dict(lr=5e-3, momentum=0.9, alpha=0.9, eps=1e-6),
    },
    hypers=dict(alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0, lr=1e-2),
    # a tensor momentum (the foreach route) always takes the buffer
    init=lambda kw: dict(momentum=isinstance(kw.get("momentum"), torch.Tensor) or kw.get("momentum", 0) != 0,
                         centered=kw.get("centered", False)),
    compose="all",
    tensor_lr=("all", "momentum-alpha-eps"),
)

ADAGRAD = Step(
    "adagrad", fr.adagrad, torch.optim.Adagrad,
    configs={
        # torch's (common_optimizers.optim_inputs_func_adagrad), lr spelled out
        "default": dict(lr=1e-2),
        "wd": dict(lr=1e-2, weight_decay=0.1),
        "maximize-wd": dict(lr=1e-2, weight_decay=0.1, maximize=True),
        "lr": dict(lr=0.1),
        "initial-accumulator": dict(lr=1e-2, initial_accumulator_value=0.1, weight_decay=0.1),
        "lr-decay": dict(lr=0.1, lr_decay=0.5, weight_decay=0.1),
        "all": dict(lr=0.05, lr_decay=0.1, weight_decay=0.1, eps=1e-6, maximize=True,
                    initial_accumulator_value=0.2),
    },
    hypers=dict(lr_decay=0.0, weight_decay=0.0, eps=1e-10, lr=1e-2),
    init=lambda kw: ({"initial_accumulator_value": kw["initial_accumulator_value"]}
                     if "initial_accumulator_value" in kw else {}),
    fused="_fused_adagrad_",
    compose="all",
    tensor_lr=("all", "lr-decay"),
)

MUON = Step(
    "muon", fr.muon, torch.optim.Muon,
    configs={
        # torch's (common_optimizers.optim_inputs_func_muon), and nesterov, adjust_lr_fn
        "default": dict(lr=1e-3),
        "lr": dict(lr=0.01),
        "wd": dict(lr=1e-3, weight_decay=0.2),
        "momentum": dict(lr=1e-3, momentum=0.8),
        "ns-steps": dict(lr=1e-3, ns_steps=6),
        "ns-coefficients": dict(lr=1e-3, ns_coefficients=(3.4, -4.7, 2.0)),
        "no-nesterov": dict(lr=0.01, nesterov=False),
        "original": dict(lr=0.01, adjust_lr_fn="original", weight_decay=0.0),
        "match-rms-adamw": dict(lr=0.01, adjust_lr_fn="match_rms_adamw", weight_decay=0.05, momentum=0.9),
    },
    hypers=dict(weight_decay=0.1, momentum=0.95, eps=1e-7, lr=1e-3),
    where=matrices,
    decays=False,
    compose="match-rms-adamw",
    tensor_lr=("match-rms-adamw", "no-nesterov"),
)

LION = Step(
    "lion", fr.lion, PaperLion,
    configs={
        "default": dict(lr=1e-3),
        "wd": dict(lr=1e-3, weight_decay=0.5),
        "betas": dict(lr=3e-3, betas=(0.95, 0.98)),
        "beta1-zero": dict(lr=1e-3, betas=(0.0, 0.9), weight_decay=0.1),
        "all": dict(lr=2e-3, betas=(0.8, 0.999), weight_decay=1.0),
    },
    hypers=dict(betas=(0.9, 0.99), weight_decay=0.0, lr=1e-3),
    compose="all",
    tensor_lr=("all",),
)

STEPS = [RMSPROP, ADAGRAD, MUON, LION]
BY_NAME = {s.name: s for s in STEPS}


def step_kwargs(step: Step, kw: dict[str, Any]) -> dict[str, Any]:
    """A config's keyword arguments for ``step`` (``init``'s taken out)."""
    return {k: v for k, v in kw.items() if k != "initial_accumulator_value"}


def configs(*, only: Callable[[Step, str], bool] = lambda s, c: True) -> list[Any]:
    """``pytest.param(step, config_id, kwargs)`` for every config of every step."""
    return [pytest.param(s, c, kw, id=f"{s.name}-{c}") for s in STEPS for c, kw in s.configs.items() if only(s, c)]


def compose_cases() -> list[Any]:
    """``pytest.param(step, kwargs)``: each step's one config for composition tests."""
    return [pytest.param(s, s.configs[s.compose], id=s.name) for s in STEPS]
