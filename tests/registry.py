"""The one registry of the tests: every penalty family and every stateless step, with what
each concept's tests need to know about it. Tests read these lists; none keeps its own.

How to add a family
-------------------
1. Write its reference formulas in tests/reference.py, independent of funcreg and optree:
   per leaf, in float64 Python or numpy arithmetic (see ``l1_value``/``l1_grad``/``l1_prox``),
   or, where a per-leaf formula on any leaf shape does not fit, the closed forms the
   family's own tests compare with (``mcp_prox``, ``svt``, ...).
2. Add a :class:`Family` to :data:`FAMILIES` below: the penalty, its per-leaf references
   (``value``/``grad``/``prox``, or ``None``), how a test draws its options
   (``draw_options``) and turns them into the references' arguments (``leaf_options``),
   and ``variants``: the options of the calls the contract tests make (vmap against a loop,
   the stacked path, fast against composable, purity); ``matrix=True`` if it takes matrices
   only; for a family with a γ, its per-element value and gradient (``element_value``,
   ``element_grad``, ``gammas``) and, for a nonconvex prox, its closed form and the
   (λ, γ, step) ``regimes`` the brute-force optimality tests cover. The operations it lacks
   come from ``penalty.without``.
3. Run the suite. A family with per-leaf references gets the property tests over generated
   trees (the ``family`` fixture and ``REFERENCED`` of tests/conftest.py: test_values.py,
   test_gradients.py, test_proxes.py, test_paths.py, test_purity.py, test_donation.py,
   test_errors.py); every family gets the contract tests over its ``variants``
   (test_compose.py: vmap against a loop; test_stacked_vmap.py), and a family without
   per-leaf references gets them in test_paths.py and test_purity.py too (the property
   tests cover the others there). Checks particular to the family (global optimality, a
   peer library's values, its own errors) go in the concept's file by hand.

A projection is one entry of :data:`PROJECTIONS`: vmap, paths, purity, compile and
donation tests read it.

How to add a step
-----------------
Add a :class:`Step` to :data:`STEPS`: its reference optimizer (torch.optim's class, or a
hand-written one like :class:`PaperLion` where torch.optim lacks it), the configurations
its tests run (torch's own test configurations where they exist), the hyperparameters that
may be tensors, ``init``'s options, the leaves it updates and its fused kernel (and
``fuses_if``, when the kernel runs on some configs only). The rest have defaults that fit
a plain step: ``compose`` names the config used where one is enough; ``state``,
``stacked`` and ``donation`` add configs to the state, stacked-vmap and donation tests;
``initial`` the state entries ``init`` does not zero; ``vmap_exact=False`` where vmap's
per-leaf path rounds differently from the stacked one; ``unrolled`` the steps a
hypergradient test may take; ``hypergradient`` the hyperparameter other than lr that the
``differentiable=True`` test differentiates.

Run the suite: every concept's tests read :data:`STEPS` and pick the new step up without
edits: parity with the reference on every route and vmap over every hyperparameter
(tests/test_steps_parity.py, tests/test_steps_compose.py), state (None gradients,
checkpoints, purity, init, dtypes: test_steps_state.py), donation (test_donation.py),
the stacked path (test_stacked_vmap.py), hypergradients (test_steps_compose.py,
test_differentiable.py), errors (test_steps_errors.py). ``own_tests=True`` marks fr.sgd,
fr.adam and fr.adamw, whose parity and torch.compile tests were written per optimizer
before this registry and check more than the generic ones (more routes and configs, 200
steps; their parity test reads the configurations from here): :func:`configs` and
:func:`compose_cases` leave them out by default, the other case lists take every step.
Checks particular to a step (its own options' errors, a closed form) go in the concept's
file by hand.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from hypothesis import strategies as st

import funcreg as fr
import reference as ref
from reference import is_float, leaf_dict, make_tensor, resolve, tree_map, walk

W = fr.select.weights


# ------------------------------------------------------------------------------ families
def _no_options(params: Any, draw: Any = None) -> dict[str, Any]:
    return {}


def _no_leaf_options(opts: dict[str, Any], path: str) -> dict[str, Any]:
    return {}


def _anchor(params: Any) -> Any:
    """An anchor for l2_sp shaped like ``params`` (integer leaves copied)."""
    return tree_map(lambda x: (make_tensor(tuple(x.shape), x.dtype, 7) if is_float(x) else x.clone()), params)


Options = dict[str, Any] | Callable[[Any], dict[str, Any]]


@dataclass(frozen=True)
class Family:
    """A penalty family under test.

    ``value(w, lam, **o)``, ``grad(w, lam, **o)``, ``prox(w, lam, step, **o)``: the float64
    reference of one leaf (``None``: no per-leaf reference; the property tests over
    generated trees then leave the family out), with ``o = leaf_options(opts, path)``;
    ``draw_options(params, draw)`` the penalty's keyword arguments for a test (``draw``:
    hypothesis's, or ``None`` for a fixed choice); ``variants`` the keyword arguments of the
    contract tests' calls by id suffix ("" the plain one), a dict or a function of the
    params; ``matrix`` whether it takes matrix leaves only; ``element_value``,
    ``element_grad`` and ``gammas`` the per-element references of the families with a γ;
    ``prox_closed``, ``value_closed`` and ``regimes`` the closed-form prox of a nonconvex
    family, its value, and (λ, γ, step) cases covering every regime of the prox;
    ``coupled`` the options of a call with ``groups=`` couplings, for the families that
    take them.
    """

    name: str
    penalty: fr.Penalty
    value: Callable[..., float] | None = None
    grad: Callable[..., torch.Tensor] | None = None
    prox: Callable[..., torch.Tensor] | None = None
    draw_options: Callable[[Any, Any], dict[str, Any]] = _no_options
    leaf_options: Callable[[dict[str, Any], str], dict[str, Any]] = _no_leaf_options
    variants: dict[str, Options] = field(default_factory=lambda: {"": {}})
    matrix: bool = False
    # per element, for the families with a γ (or none): value(x, λ[, γ]) and gradient in
    # Python arithmetic, and the γ values tests draw
    element_value: Callable[..., float] | None = None
    element_grad: Callable[..., float] | None = None
    gammas: tuple[float | None, ...] = (None,)
    # the nonconvex proxes: torch closed forms prox(w, λ, γ, step) and value(u, λ, γ), and
    # (λ, γ, step) cases in every regime of the prox
    prox_closed: Callable[..., torch.Tensor] | None = None
    value_closed: Callable[..., torch.Tensor] | None = None
    regimes: tuple[tuple[float, float, float], ...] = ()
    # the families that take ``groups=`` (fr.Coupling): the other options of their calls in
    # tests/test_coupled_groups.py (``None``: the family takes no couplings)
    coupled: dict[str, Any] | None = None

    @property
    def separable(self) -> bool:
        """Whether λ and the step may be given per element (not one value per group)."""
        return self.penalty.elementwise

    def has(self, op: str) -> bool:
        """Whether the family has operation ``op`` ("grad", "prox", "lambda_max")."""
        return op not in self.penalty.without

    # options -------------------------------------------------------------------
    def options(self, params: Any, draw: Any = None) -> dict[str, Any]:
        return self.draw_options(params, draw)

    # per leaf ------------------------------------------------------------------
    def leaf_value(self, w: torch.Tensor, lam: torch.Tensor, **o: Any) -> float:
        assert self.value is not None, f"{self.name} has no per-leaf reference value"
        return self.value(w, lam, **o)

    def leaf_grad(self, w: torch.Tensor, lam: torch.Tensor, **o: Any) -> torch.Tensor:
        assert self.grad is not None, f"{self.name} has no per-leaf reference gradient"
        return self.grad(w, lam, **o)

    def leaf_prox(self, w: torch.Tensor, lam: torch.Tensor, step: torch.Tensor, **o: Any) -> torch.Tensor:
        assert self.prox is not None, f"{self.name} has no per-leaf reference prox"
        return self.prox(w, lam, step, **o)

    # whole trees ---------------------------------------------------------------
    def selected(self, params: Any, where: Any = None) -> list[tuple[str, torch.Tensor]]:
        return [(p, x) for p, x in walk(params) if is_float(x) and (where is None or where(p, x))]

    def ref_value(self, params: Any, lam: Any, opts: dict[str, Any], where: Any = None) -> float:
        return math.fsum(
            self.leaf_value(x, resolve(lam, p, x), **self.leaf_options(opts, p))
            for p, x in self.selected(params, where)
        )

    def ref_grad(self, params: Any, lam: Any, opts: dict[str, Any]) -> dict[str, torch.Tensor]:
        return {
            p: self.leaf_grad(x, resolve(lam, p, x), **self.leaf_options(opts, p))
            for p, x in self.selected(params)
        }

    def ref_prox(self, params: Any, lam: Any, step: Any, opts: dict[str, Any]) -> dict[str, torch.Tensor]:
        return {
            p: self.leaf_prox(x, resolve(lam, p, x), resolve(step, p, x), **self.leaf_options(opts, p))
            for p, x in self.selected(params)
        }


def _elastic_net_options(params: Any, draw: Any = None) -> dict[str, Any]:
    return {"l1_ratio": 0.3 if draw is None else draw(st.sampled_from([0.0, 0.25, 0.5, 0.8, 1.0]))}


def _group_lasso_options(params: Any, draw: Any = None) -> dict[str, Any]:
    return {} if draw is None else {"dim": draw(st.sampled_from([0, None, -1]))}


def _l2_sp_options(params: Any, draw: Any = None) -> dict[str, Any]:
    return {"anchor": _anchor(params)}


# (λ, γ, step) in every regime: MCP is firm thresholding for step < γ and hard
# thresholding from step = γ on; SCAD's three-piece rule holds for step < γ − 1, then a
# single jump to w (a hard threshold once step ≥ γ + 1).
MCP_REGIMES = ((0.3, 3.0, 0.0), (0.3, 3.0, 0.5), (1.0, 3.0, 1.0), (1.0, 1.5, 1.2), (0.7, 2.0, 2.0),
               (0.5, 3.0, 3.0), (1.0, 0.5, 1.0), (0.3, 2.0, 8.0), (2.0, 0.2, 0.1))
SCAD_REGIMES = ((0.3, 3.7, 0.0), (0.3, 3.7, 0.5), (1.0, 3.7, 1.0), (1.0, 1.5, 0.25), (0.7, 3.0, 2.0),
                (0.5, 3.0, 3.0), (1.0, 2.5, 3.5), (0.4, 3.0, 4.0), (0.3, 1.2, 6.0), (2.0, 4.0, 0.1))

FAMILIES = [
    Family("l1", fr.l1, ref.l1_value, ref.l1_grad, ref.l1_prox),
    Family("l2", fr.l2, ref.l2_value, ref.l2_grad, ref.l2_prox),
    Family("elastic_net", fr.elastic_net, ref.elastic_net_value, ref.elastic_net_grad, ref.elastic_net_prox,
           draw_options=_elastic_net_options,
           leaf_options=lambda opts, path: {"rho": float(opts.get("l1_ratio", 0.5))},
           variants={"": {"l1_ratio": 0.3}}),
    Family("group_lasso", fr.group_lasso, ref.group_lasso_value, ref.group_lasso_grad, ref.group_lasso_prox,
           draw_options=_group_lasso_options,
           leaf_options=lambda opts, path: {"dim": opts.get("dim", 0)},
           variants={"": {}, "dim1": {"dim": -1}}, coupled={}),
    Family("l2_sp", fr.l2_sp, ref.l2_sp_value, ref.l2_sp_grad, ref.l2_sp_prox,
           draw_options=_l2_sp_options,
           leaf_options=lambda opts, path: {"w0": leaf_dict(opts["anchor"])[path].double()},
           variants={"": lambda params: {"anchor": _anchor(params)}}),
    # the sparse families: their references are closed forms over whole leaves and brute
    # force (tests/reference.py), used by their own tests, not per-leaf formulas
    Family("sparse_group_lasso", fr.sparse_group_lasso,
           variants={"": {"l1_ratio": 0.4}, "dim1": {"l1_ratio": 0.7, "dim": 1, "where": W},
                     "whole": {"l1_ratio": 0.4, "dim": None}},
           coupled={"l1_ratio": 0.3}),
    Family("nuclear_norm", fr.nuclear_norm, variants={"": {"where": W}}, matrix=True),
    Family("mcp", fr.mcp, variants={"": {}, "gamma": {"gamma": 1.5}},
           element_value=ref.mcp_1, element_grad=ref.mcp_grad_1, gammas=(0.5, 1.5, 3.0),
           prox_closed=ref.mcp_prox, value_closed=ref.mcp_t, regimes=MCP_REGIMES),
    Family("scad", fr.scad, variants={"": {}, "gamma": {"gamma": 2.2}},
           element_value=ref.scad_1, element_grad=ref.scad_grad_1, gammas=(1.5, 2.5, 3.7),
           prox_closed=ref.scad_prox, value_closed=ref.scad_t, regimes=SCAD_REGIMES),
    Family("l0", fr.l0, element_value=ref.l0_1),
    Family("orthogonal", fr.orthogonal, variants={"": {"where": W}}, matrix=True),
]
FAMILY_BY_NAME = {f.name: f for f in FAMILIES}
REFERENCED = [f for f in FAMILIES if f.value is not None]
"""The families with per-leaf references: the property tests over generated trees."""


@dataclass(frozen=True)
class Variant:
    """One call of a family in the contract tests: ``family.penalty(..., **options(params))``."""

    id: str
    family: Family
    _options: Options

    @property
    def penalty(self) -> fr.Penalty:
        return self.family.penalty

    def options(self, params: Any) -> dict[str, Any]:
        return self._options(params) if callable(self._options) else dict(self._options)


VARIANTS = {
    (f.name + ("-" + suffix if suffix else "")): Variant(f.name + ("-" + suffix if suffix else ""), f, o)
    for f in FAMILIES
    for suffix, o in f.variants.items()
}
"""Every family's contract-test calls by id ("mcp", "mcp-gamma", ...)."""
UNREFERENCED_VARIANTS = {k: v for k, v in VARIANTS.items() if v.family.value is None}
"""The calls of the families without per-leaf references: where a concept's property test
over generated trees already runs every REFERENCED family (fast against composable,
purity), its contract test runs these."""


# --------------------------------------------------------------------------- projections
PROJECTIONS: dict[str, Callable[..., Any]] = {
    "max_norm": lambda p, r, **kw: fr.project.max_norm(p, r, where=W, **kw),
    "max_norm-every-leaf": lambda p, r, **kw: fr.project.max_norm(p, r, **kw),
    "max_norm-dim1": lambda p, r, **kw: fr.project.max_norm(p, r, dim=1, where=W, **kw),
    "l2_ball": lambda p, r, **kw: fr.project.l2_ball(p, r, **kw),
    "l1_ball": lambda p, r, **kw: fr.project.l1_ball(p, r, **kw),
    "box": lambda p, r, **kw: fr.project.box(p, -r, r, **kw),
    "box-upper": lambda p, r, **kw: fr.project.box(p, None, r, **kw),
    "non_negative": lambda p, r, **kw: fr.project.non_negative(p, **kw),
}
"""Each projection as fn(params, radius-like tensor or number, **kw), by id."""


# --------------------------------------------------------------------------------- steps
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
    fused kernel its fast path runs on Python-number hyperparameters, if any, and
    ``fuses_if`` on which configs; ``compose`` the id of the config used where one is
    enough (vmap, compile, donation, errors); the other fields say what the state,
    stacked-vmap, donation and hypergradient tests run (see the comments below).
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
    own_tests: bool = False  # parity and compile tested per optimizer: configs()/compose_cases() leave it out
    # more donation cases by id, beyond the compose config: step keyword arguments, ``where``
    # included (it replaces the step's own)
    donation: dict[str, dict[str, Any]] = field(default_factory=dict)
    # the config ids the state tests run (None gradients, checkpoints, purity, init, dtypes);
    # empty: the compose config
    state: tuple[str, ...] = ()
    # the config ids the stacked-vmap tests run (empty: the compose config), each also with
    # where=fr.select.weights for a step whose where= chooses the decayed leaves
    stacked: tuple[str, ...] = ()
    # whether vmap's per-leaf path gives the stacked path's values to float64 precision
    # (False for Muon: vmap's batching rule rounds its bfloat16 products differently)
    vmap_exact: bool = True
    # how many steps a hypergradient test unrolls (1 where, later, the bfloat16 rounding
    # (Muon) or the sign (Lion) make the loss piecewise constant at a finite difference's scale)
    unrolled: int = 3
    # (config id, hyperparameter) of the hypergradient through ``differentiable=True`` steps
    # in tests/test_differentiable.py: a hyperparameter other than lr ("beta1": betas[0]),
    # whose lr hypergradient tests/test_steps_compose.py checks; "" the compose config
    hypergradient: tuple[str, str] = ("", "weight_decay")
    # the state entries ``init`` does not fill with zeros: their value for a config
    initial: Callable[[dict[str, Any]], dict[str, float]] = lambda kw: {}
    # whether the fused kernel runs on a config with Python-number hyperparameters
    fuses_if: Callable[[dict[str, Any]], bool] = lambda kw: True

    def fuses(self, kw: dict[str, Any]) -> bool:
        """Whether the fast path runs torch's fused kernel on ``kw`` (Python numbers)."""
        return self.fused is not None and self.fuses_if(kw)

    def fused_config(self) -> dict[str, Any]:
        """The config with the most options among those the fused kernel runs."""
        return max((kw for kw in self.configs.values() if self.fuses(kw)), key=len)

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
    hypergradient=("", "alpha"),
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
    initial=lambda kw: {"sum": kw.get("initial_accumulator_value", 0.0)},
    fused="_fused_adagrad_",
    compose="all",
    tensor_lr=("all", "lr-decay"),
    hypergradient=("", "lr_decay"),
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
    vmap_exact=False,
    unrolled=1,
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
    unrolled=1,
)

SGD = Step(
    "sgd", fr.sgd, torch.optim.SGD,
    configs={
        "plain": dict(lr=0.05),
        "momentum": dict(lr=0.02, momentum=0.9),
        "dampening": dict(lr=0.02, momentum=0.9, dampening=0.3),
        "nesterov": dict(lr=0.02, momentum=0.8, nesterov=True),
        "wd": dict(lr=0.05, weight_decay=0.1),
        "maximize": dict(lr=0.02, maximize=True),
        "all": dict(lr=0.01, momentum=0.7, dampening=0.2, weight_decay=0.05, maximize=True),
        "nesterov-wd-max": dict(lr=0.01, momentum=0.95, nesterov=True, weight_decay=0.3, maximize=True),
        # torch.optim ignores dampening without momentum
        "dampening-no-momentum": dict(lr=0.03, dampening=0.5),
    },
    hypers=dict(momentum=0.0, dampening=0.0, weight_decay=0.0, lr=1e-2),
    # no momentum buffer for a step without momentum (a tensor momentum always takes one)
    init=lambda kw: ({} if isinstance(kw.get("momentum"), torch.Tensor) or kw.get("momentum", 0) != 0
                     else {"momentum": False}),
    fused="_fused_sgd_",
    fuses_if=lambda kw: kw.get("dampening", 0.0) == 0.0,  # undamped only
    compose="all",
    tensor_lr=("nesterov-wd-max", "all"),
    state=("plain", "nesterov-wd-max", "all"),
    stacked=("all", "nesterov-wd-max"),
    hypergradient=("nesterov-wd-max", "momentum"),
    donation={"plain": dict(lr=0.05), "momentum": dict(lr=0.05, momentum=0.9),
              "nesterov": dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.1, maximize=True),
              "dampening": dict(lr=0.05, momentum=0.9, dampening=0.5, weight_decay=0.1),
              "where": dict(lr=0.05, weight_decay=0.1, where=W)},
    own_tests=True,
)

ADAM = Step(
    "adam", fr.adam, torch.optim.Adam,
    configs={
        "default": dict(lr=0.01),
        "betas-eps": dict(lr=0.02, betas=(0.8, 0.99), eps=1e-6),
        "wd": dict(lr=0.01, weight_decay=0.1),
        "amsgrad": dict(lr=0.01, amsgrad=True),
        "maximize": dict(lr=0.01, maximize=True),
        "all": dict(lr=0.005, betas=(0.85, 0.995), eps=1e-7, weight_decay=0.2, amsgrad=True, maximize=True),
    },
    hypers=dict(betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, lr=1e-3),
    init=lambda kw: {"amsgrad": True} if kw.get("amsgrad") else {},
    fused="_fused_adam_",
    compose="all",
    tensor_lr=("all",),
    state=("wd", "all"),
    donation={"default": dict(lr=0.01), "coupled": dict(lr=0.01, weight_decay=0.1, maximize=True),
              "amsgrad": dict(lr=0.01, amsgrad=True)},
    own_tests=True,
)

ADAMW = Step(
    "adamw", fr.adamw, torch.optim.AdamW,
    configs={
        "default": dict(lr=0.01),
        "wd": dict(lr=0.01, weight_decay=0.3),
        "amsgrad-max": dict(lr=0.01, weight_decay=0.05, amsgrad=True, maximize=True, betas=(0.8, 0.99)),
    },
    hypers=dict(betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, lr=1e-3),
    init=lambda kw: {"amsgrad": True} if kw.get("amsgrad") else {},
    fused="_fused_adamw_",
    compose="amsgrad-max",
    tensor_lr=("amsgrad-max",),
    hypergradient=("", "beta1"),
    donation={"default": dict(lr=0.01),
              "amsgrad-where": dict(lr=0.01, weight_decay=0.1, amsgrad=True, maximize=True, where=W)},
    own_tests=True,
)

STEPS = [SGD, ADAM, ADAMW, RMSPROP, ADAGRAD, MUON, LION]
GENERIC = [s for s in STEPS if not s.own_tests]
"""The steps the generic parity and compile tests run over (the others take :data:`STEPS`)."""
STEP_BY_NAME = {s.name: s for s in STEPS}


def step_kwargs(step: Step, kw: dict[str, Any]) -> dict[str, Any]:
    """A config's keyword arguments for ``step`` (``init``'s taken out)."""
    return {k: v for k, v in kw.items() if k != "initial_accumulator_value"}


def configs(*, only: Callable[[Step, str], bool] = lambda s, c: True, steps: list[Step] = GENERIC) -> list[Any]:
    """``pytest.param(step, config_id, kwargs)`` for every config of every step of ``steps``."""
    return [pytest.param(s, c, kw, id=f"{s.name}-{c}") for s in steps for c, kw in s.configs.items() if only(s, c)]


def compose_cases(steps: list[Step] = GENERIC) -> list[Any]:
    """``pytest.param(step, kwargs)``: each step's one config for composition tests."""
    return [pytest.param(s, s.configs[s.compose], id=s.name) for s in steps]


def donation_cases(steps: list[Step] = STEPS) -> list[Any]:
    """``pytest.param(step, kwargs)``: each step's compose config and its ``donation`` cases."""
    return [pytest.param(s, kw, id=f"{s.name}-{c}") for s in steps
            for c, kw in {s.compose: s.configs[s.compose], **s.donation}.items()]


def fused_cases(steps: list[Step] = STEPS) -> list[Any]:
    """``pytest.param(step, kwargs)``: each step with a fused kernel, on a config it fuses."""
    return [pytest.param(s, s.fused_config(), id=s.name) for s in steps if s.fused is not None]


def state_cases(steps: list[Step] = STEPS) -> list[Any]:
    """``pytest.param(step, kwargs)``: each step's ``state`` configs (or its compose config)."""
    return [pytest.param(s, s.configs[c], id=f"{s.name}-{c}") for s in steps for c in s.state or (s.compose,)]


def step_route_kwargs(step: Step, kw: dict[str, Any], route: str, dtype: torch.dtype = torch.float64,
                 device: str = "cpu") -> dict[str, Any]:
    """``kw`` as ``route`` passes it (tests/optim_helpers.py's ROUTES): "foreach" every
    hyperparameter a 0-d tensor of ``dtype``, "fused-tensor-lr" a tensor lr, else as it is."""
    if route == "foreach":
        return step.tensors(kw, dtype, device)
    if route == "fused-tensor-lr":
        return {**kw, "lr": torch.tensor(kw["lr"], dtype=dtype, device=device)}
    return dict(kw)


def stacked_cases(steps: list[Step] = STEPS) -> list[Any]:
    """``pytest.param(step, kwargs)`` for the stacked-vmap tests: each step whose per-leaf
    path under vmap is exact on its ``stacked`` configs (or its compose config), with its
    own ``where``, and with ``where=fr.select.weights`` where that chooses the decayed leaves."""
    out = []
    for s in steps:
        if not s.vmap_exact:
            continue
        for c in s.stacked or (s.compose,):
            out.append(pytest.param(s, {**s.configs[c], "where": s.where}, id=f"{s.name}-{c}"))
            if s.decays and c == (s.stacked or (s.compose,))[0]:
                out.append(pytest.param(s, {**s.configs[c], "where": W}, id=f"{s.name}-{c}-where"))
    return out


# the families with per-element references: (penalty, γ values to draw, value per element, gradient per element)
ELEMENTWISE = {f.name: (f.penalty, list(f.gammas), f.element_value, f.element_grad) for f in FAMILIES if f.element_value}
