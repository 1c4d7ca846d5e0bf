"""Shared fixtures, hypothesis strategies and independent reference math for the tests.

Everything here that computes an expected value does it without funcreg and without
optree: trees are walked by hand, and the penalty math is written out per element in
float64 Python arithmetic (``math``), so that a test compares funcreg against an
independent truth.
"""

from __future__ import annotations

import collections
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

import funcreg as fr

# --------------------------------------------------------------------------- hypothesis
settings.register_profile(
    "funcreg",
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "funcreg-thorough",
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "funcreg"))


def pytest_configure(config: Any) -> None:
    # torch.compile imports torch.jit machinery that warns about its own deprecation
    config.addinivalue_line(
        "filterwarnings", "ignore:`torch.jit.script_method` is deprecated:DeprecationWarning"
    )


# --------------------------------------------------------------------------------- CUDA
def pytest_collection_modifyitems(config: Any, items: list[Any]) -> None:
    """Tests marked ``@pytest.mark.cuda`` are skipped when no CUDA device is available."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (torch.cuda.is_available() is False)")
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)


@pytest.fixture
def cuda() -> torch.device:
    """The CUDA device; skips the test cleanly when there is none."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    return torch.device("cuda")


# ------------------------------------------------------------------- hand-written trees
Pair = collections.namedtuple("Pair", ["first", "second"])


def walk(tree: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, Any]]:
    """``[(dotted path, leaf)]`` in order, written without optree: dict keys (insertion
    order), list/tuple/namedtuple indices, anything else is a leaf."""
    if isinstance(tree, dict):
        out = []
        for k, v in tree.items():
            out += walk(v, prefix + (str(k),))
        return out
    if isinstance(tree, (list, tuple)):
        out = []
        for i, v in enumerate(tree):
            out += walk(v, prefix + (str(i),))
        return out
    return [(".".join(prefix), tree)]


def tree_map(fn: Callable[..., Any], tree: Any, *rest: Any) -> Any:
    """Map over leaves, rebuilding the same container types (no optree)."""
    if isinstance(tree, dict):
        return type(tree)((k, tree_map(fn, v, *(r[k] for r in rest))) for k, v in tree.items())
    if isinstance(tree, tuple) and hasattr(tree, "_fields"):
        return type(tree)(*(tree_map(fn, v, *(r[i] for r in rest)) for i, v in enumerate(tree)))
    if isinstance(tree, (list, tuple)):
        return type(tree)(tree_map(fn, v, *(r[i] for r in rest)) for i, v in enumerate(tree))
    return fn(tree, *rest)


def leaf_dict(tree: Any) -> dict[str, Any]:
    return dict(walk(tree))


def is_float(x: Any) -> bool:
    return isinstance(x, torch.Tensor) and x.is_floating_point()


def float_paths(tree: Any) -> list[str]:
    return [p for p, x in walk(tree) if is_float(x)]


# ----------------------------------------------------------------------- strategies
SHAPES = [(), (0,), (1,), (3,), (2, 3), (1, 4), (2, 0), (3, 1), (2, 1, 3), (2, 2, 2)]
KEYS = ["w", "bias", "layer", "a", "b", "norm"]
FLOAT_DTYPES = (torch.float32, torch.float64)


def make_tensor(
    shape: tuple[int, ...], dtype: torch.dtype, seed: int, mode: str = "normal"
) -> torch.Tensor:
    """A deterministic test tensor; ``mode`` "away" keeps |x| >= 0.25, "zeros" mixes in
    exact zeros (and, for ndim >= 2, whole zero rows)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    if mode == "away":
        x = torch.where(x >= 0, 1.0, -1.0) * (0.25 + x.abs())
    elif mode == "zeros":
        x = x * (torch.rand(shape, generator=g, dtype=torch.float64) > 0.4)
        if len(shape) >= 2 and shape[0] > 0:
            x[0] = 0.0
    return x.to(dtype)


def _structure(max_leaves: int) -> st.SearchStrategy[Any]:
    leaf = st.just(None)

    def extend(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
        keyed = st.dictionaries(st.sampled_from(KEYS), children, min_size=1, max_size=3)
        seq = st.lists(children, min_size=1, max_size=3)
        return st.one_of(
            keyed,
            keyed.map(collections.OrderedDict),
            seq,
            seq.map(tuple),
            st.tuples(children, children).map(lambda t: Pair(*t)),
        )

    # The top level is always a container, as a params tree is.
    return extend(st.recursive(leaf, extend, max_leaves=max_leaves))


@st.composite
def trees(
    draw: Any,
    dtypes: tuple[torch.dtype, ...] = FLOAT_DTYPES,
    mode: str = "normal",
    shapes: list[tuple[int, ...]] = SHAPES,
    max_leaves: int = 5,
    int_leaves: bool = False,
) -> Any:
    """Nested params pytrees (dict, OrderedDict, list, tuple, namedtuple) of small
    tensors; with ``int_leaves`` some leaves may be integer buffers."""
    skeleton = draw(_structure(max_leaves))

    def fill(_: Any) -> torch.Tensor:
        shape = draw(st.sampled_from(shapes))
        seed = draw(st.integers(0, 2**31 - 1))
        if int_leaves and draw(st.integers(0, 5)) == 0:
            return torch.arange(math.prod(shape), dtype=torch.int64).reshape(shape)
        return make_tensor(shape, draw(st.sampled_from(dtypes)), seed, mode)

    tree = tree_map(fill, skeleton)
    if not float_paths(tree):  # at least one floating leaf to regularize
        tree = {"extra": make_tensor((2, 2), dtypes[0], 0, mode), "rest": tree}
    return tree


LAM_VALUES = (0.0, 0.125, 0.3, 1.0, 2.5)
STEP_VALUES = (0.0, 0.25, 0.5, 0.7, 1.0, 2.0)


@st.composite
def lams(
    draw: Any,
    params: Any,
    separable: bool = True,
    forms: tuple[str, ...] | None = None,
    values: tuple[float, ...] = LAM_VALUES,
) -> Any:
    """λ (or a step) in one of its forms: number, 0-d tensor, dict keyed by dotted path,
    nested pytree shaped like params, or (separable penalties) a per-element pytree."""
    all_forms = ("number", "tensor", "dict", "tree") + (("element",) if separable else ())
    form = draw(st.sampled_from(forms or all_forms))
    value = st.sampled_from(values)
    if form == "number":
        return draw(value)
    if form == "tensor":
        return torch.tensor(draw(value), dtype=draw(st.sampled_from(FLOAT_DTYPES)))
    if form == "dict":
        return {
            p: (draw(value) if draw(st.booleans()) else torch.tensor(draw(value)))
            for p in float_paths(params)
        }
    if form == "tree":
        return tree_map(lambda x: draw(value) if is_float(x) else 1.0, params)
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    top = max(values)
    return {
        p: top * torch.rand(x.shape, generator=g, dtype=torch.float64)
        for p, x in walk(params)
        if is_float(x)
    }


def steps(params: Any, separable: bool = True, forms: tuple[str, ...] | None = None) -> Any:
    """A prox step in one of the forms λ takes."""
    return lams(params, separable, forms, values=STEP_VALUES)


def resolve(h: Any, path: str, leaf: torch.Tensor) -> torch.Tensor:
    """The float64 value of hyperparameter ``h`` for leaf ``path`` (reference side)."""
    if isinstance(h, (int, float)):
        return torch.tensor(float(h), dtype=torch.float64)
    if isinstance(h, torch.Tensor):
        return h.detach().double()
    v = leaf_dict(h)[path]
    return v.detach().double() if isinstance(v, torch.Tensor) else torch.tensor(float(v), dtype=torch.float64)


# ------------------------------------------------------------------- reference math
def elementwise(fn: Callable[..., float], *tensors: torch.Tensor) -> torch.Tensor:
    """Apply a scalar Python function per element, in float64 (broadcasting the inputs)."""
    shape = torch.broadcast_shapes(*(t.shape for t in tensors))
    cols = [t.detach().double().expand(shape).reshape(-1).tolist() for t in tensors]
    return torch.tensor([fn(*v) for v in zip(*cols)], dtype=torch.float64).reshape(shape)


def ref_sum(fn: Callable[..., float], *tensors: torch.Tensor) -> float:
    return math.fsum(elementwise(fn, *tensors).reshape(-1).tolist())


def sign(x: float) -> float:
    return 0.0 if x == 0 else math.copysign(1.0, x)


def soft(x: float, t: float) -> float:
    return math.copysign(max(abs(x) - t, 0.0), x) if x != 0 else 0.0


def group_slices(w: torch.Tensor, dim: int | None) -> list[tuple[Callable[[torch.Tensor], torch.Tensor], int]]:
    """(view getter, group size) of each group of ``w``: slices along ``dim``."""
    if dim is None or w.ndim == 0:
        return [(lambda t: t, w.numel())]
    d = dim % w.ndim
    size = w.numel() // w.shape[d] if w.shape[d] else 0
    return [((lambda t, i=i: t.select(d, i)), size) for i in range(w.shape[d])]


def _norm(t: torch.Tensor) -> float:
    return math.sqrt(math.fsum(v * v for v in t.reshape(-1).tolist()))


@dataclass
class Family:
    """One penalty family and its reference math (float64, per leaf)."""

    name: str
    penalty: fr.Penalty
    separable: bool

    # options ---------------------------------------------------------------
    def options(self, params: Any, draw: Any = None) -> dict[str, Any]:
        if self.name == "elastic_net":
            rho = 0.3 if draw is None else draw(st.sampled_from([0.0, 0.25, 0.5, 0.8, 1.0]))
            return {"l1_ratio": rho}
        if self.name == "group_lasso":
            return {} if draw is None else {"dim": draw(st.sampled_from([0, None, -1]))}
        if self.name == "l2_sp":
            return {"anchor": tree_map(lambda x: (make_tensor(tuple(x.shape), x.dtype, 7) if is_float(x) else x.clone()), params)}
        return {}

    def _leaf_opts(self, opts: dict[str, Any], path: str) -> dict[str, Any]:
        if self.name == "l2_sp":
            return {"w0": leaf_dict(opts["anchor"])[path].double()}
        if self.name == "elastic_net":
            rho = opts.get("l1_ratio", 0.5)
            return {"rho": float(rho)}
        if self.name == "group_lasso":
            return {"dim": opts.get("dim", 0)}
        return {}

    # per leaf ------------------------------------------------------------------
    def leaf_value(self, w: torch.Tensor, lam: torch.Tensor, **o: Any) -> float:
        n = self.name
        if n == "l1":
            return ref_sum(lambda x, l: l * abs(x), w, lam)
        if n == "l2":
            return ref_sum(lambda x, l: l * x * x, w, lam)
        if n == "elastic_net":
            r = o["rho"]
            return ref_sum(lambda x, l: l * (r * abs(x) + (1 - r) / 2 * x * x), w, lam)
        if n == "l2_sp":
            return ref_sum(lambda x, x0, l: l * (x - x0) ** 2, w, o["w0"], lam)
        lam_f = float(lam)
        return math.fsum(lam_f * math.sqrt(n_g) * _norm(get(w.double())) for get, n_g in group_slices(w, o["dim"]))

    def leaf_grad(self, w: torch.Tensor, lam: torch.Tensor, **o: Any) -> torch.Tensor:
        n = self.name
        if n == "l1":
            return elementwise(lambda x, l: l * sign(x), w, lam)
        if n == "l2":
            return elementwise(lambda x, l: 2 * l * x, w, lam)
        if n == "elastic_net":
            r = o["rho"]
            return elementwise(lambda x, l: l * r * sign(x) + l * (1 - r) * x, w, lam)
        if n == "l2_sp":
            return elementwise(lambda x, x0, l: 2 * l * (x - x0), w, o["w0"], lam)
        out = torch.zeros(w.shape, dtype=torch.float64)
        w64 = w.double()
        for get, n_g in group_slices(w, o["dim"]):
            norm = _norm(get(w64))
            scale = float(lam) * math.sqrt(n_g) / norm if norm > 0 else 0.0
            get(out).copy_(elementwise(lambda x: scale * x, get(w64)))
        return out

    def leaf_prox(self, w: torch.Tensor, lam: torch.Tensor, step: torch.Tensor, **o: Any) -> torch.Tensor:
        n = self.name
        if n == "l1":
            return elementwise(lambda x, l, s: soft(x, l * s), w, lam, step)
        if n == "l2":
            return elementwise(lambda x, l, s: x / (1 + 2 * l * s), w, lam, step)
        if n == "elastic_net":
            r = o["rho"]
            return elementwise(lambda x, l, s: soft(x, s * l * r) / (1 + s * l * (1 - r)), w, lam, step)
        if n == "l2_sp":
            return elementwise(
                lambda x, x0, l, s: (x + 2 * l * s * x0) / (1 + 2 * l * s), w, o["w0"], lam, step
            )
        out = torch.zeros(w.shape, dtype=torch.float64)
        w64 = w.double()
        t_base = float(lam) * float(step)
        for get, n_g in group_slices(w, o["dim"]):
            norm = _norm(get(w64))
            t = t_base * math.sqrt(n_g)
            scale = max(norm - t, 0.0) / norm if norm > 0 else 0.0
            get(out).copy_(elementwise(lambda x: scale * x, get(w64)))
        return out

    # whole trees ---------------------------------------------------------------
    def selected(self, params: Any, where: Any = None) -> list[tuple[str, torch.Tensor]]:
        return [(p, x) for p, x in walk(params) if is_float(x) and (where is None or where(p, x))]

    def ref_value(self, params: Any, lam: Any, opts: dict[str, Any], where: Any = None) -> float:
        return math.fsum(
            self.leaf_value(x, resolve(lam, p, x), **self._leaf_opts(opts, p))
            for p, x in self.selected(params, where)
        )

    def ref_grad(self, params: Any, lam: Any, opts: dict[str, Any]) -> dict[str, torch.Tensor]:
        return {
            p: self.leaf_grad(x, resolve(lam, p, x), **self._leaf_opts(opts, p))
            for p, x in self.selected(params)
        }

    def ref_prox(self, params: Any, lam: Any, step: Any, opts: dict[str, Any]) -> dict[str, torch.Tensor]:
        return {
            p: self.leaf_prox(x, resolve(lam, p, x), resolve(step, p, x), **self._leaf_opts(opts, p))
            for p, x in self.selected(params)
        }


FAMILIES = [
    Family("l1", fr.l1, True),
    Family("l2", fr.l2, True),
    Family("elastic_net", fr.elastic_net, True),
    Family("group_lasso", fr.group_lasso, False),
    Family("l2_sp", fr.l2_sp, True),
]
FAMILY_IDS = [f.name for f in FAMILIES]


@pytest.fixture(params=FAMILIES, ids=FAMILY_IDS)
def family(request: Any) -> Family:
    return request.param


# ---------------------------------------------------------------------- comparisons
TOL = {
    torch.float64: (1e-10, 1e-12),
    torch.float32: (2e-5, 2e-6),
    torch.bfloat16: (3e-2, 3e-2),
}


def assert_close_ref(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, scale: float = 1.0, what: str = "") -> None:
    """``actual`` (a leaf of dtype ``dtype``) against a float64 reference."""
    assert actual.dtype == dtype, f"{what}: dtype {actual.dtype} != {dtype}"
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    rtol, atol = TOL[dtype]
    torch.testing.assert_close(
        actual.double(), expected, rtol=rtol, atol=atol * max(1.0, scale), msg=lambda m: f"{what}: {m}"
    )


def lowest_dtype(params: Any) -> torch.dtype:
    ds = [x.dtype for _, x in walk(params) if is_float(x)]
    for d in (torch.bfloat16, torch.float32, torch.float64):
        if d in ds:
            return d
    return torch.float64


def snapshot(*trees: Any) -> list[tuple[Any, torch.Tensor, int]]:
    """(tensor, copy of its value, its version counter) for every tensor in ``trees``."""
    out = []
    for tree in trees:
        for _, x in walk(tree):
            if isinstance(x, torch.Tensor):
                out.append((x, x.detach().clone(), x._version))
    return out


def assert_untouched(snap: list[tuple[Any, torch.Tensor, int]]) -> None:
    for x, value, version in snap:
        assert x._version == version, "an input tensor's version counter changed"
        assert torch.equal(x.detach(), value) or (value.is_floating_point() and torch.equal(x.isnan(), value.isnan())), "an input tensor's value changed"
