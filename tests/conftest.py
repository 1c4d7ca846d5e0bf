"""Shared fixtures and hypothesis strategies for the tests, and the ``family`` fixture.

The families and steps under test are in tests/registry.py (with how to add one); the
independent references they point to, and the hand-walked trees, in tests/reference.py.
Names tests import from here (``walk``, ``tree_map``, ``Family``, ``REFERENCED`` ...) are
re-exported from those two modules.
"""

from __future__ import annotations

import collections
import math
import os
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from reference import (  # noqa: F401  (re-exported for the tests)
    elementwise,
    float_paths,
    group_slices,
    is_float,
    leaf_dict,
    make_tensor,
    ref_sum,
    resolve,
    sign,
    tree_map,
    walk,
)
from registry import REFERENCED, Family

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

# ----------------------------------------------------------------------- strategies
SHAPES = [(), (0,), (1,), (3,), (2, 3), (1, 4), (2, 0), (3, 1), (2, 1, 3), (2, 2, 2)]
KEYS = ["w", "bias", "layer", "a", "b", "norm"]
FLOAT_DTYPES = (torch.float32, torch.float64)


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


REFERENCED_IDS = [f.name for f in REFERENCED]


@pytest.fixture(params=REFERENCED, ids=REFERENCED_IDS)
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


# ------------------------------------------------------- fixed trees of the contract tests
def fixed_params(seed: int = 0, batch: int | None = None, dtype: torch.dtype = torch.float64) -> dict[str, torch.Tensor]:
    """The small tree of the contract tests: matrices, a vector, a 3-d leaf and a scalar,
    with a near-zero row; with ``batch``, ``batch`` members stacked along a new dim 0."""
    g = torch.Generator().manual_seed(seed)
    pre = (batch,) if batch else ()
    shapes = {"l1.weight": (4, 3), "l1.bias": (4,), "l2.weight": (2, 3, 2), "l3.weight": (4, 3), "s": ()}
    p = {k: torch.randn((*pre, *s), generator=g, dtype=torch.float64).to(dtype) for k, s in shapes.items()}
    p["l1.weight"][..., 0, :] *= 0.01  # a row the group families and SVT zero
    return p


def stack_outputs(outs: list[Any]) -> Any:
    """A list of tensors, or of flat dicts of tensors, stacked (what vmap over them gives)."""
    if isinstance(outs[0], torch.Tensor):
        return torch.stack(outs)
    return {k: torch.stack([o[k] for o in outs]) for k in outs[0]}


def close_trees(a: Any, b: Any, **kw: Any) -> None:
    """``torch.testing.assert_close`` on a tensor or, key by key, on flat dicts."""
    if isinstance(a, torch.Tensor):
        torch.testing.assert_close(a, b, **kw)
        return
    assert list(a) == list(b)
    for k in a:
        torch.testing.assert_close(a[k], b[k], msg=k, **kw)


MATRIX_SHAPES = [(4, 3), (3, 5), (2, 3, 2), (1, 1), (5, 5), (2, 1, 3, 1)]


def matrix_tree(dtype: torch.dtype, seed: int = 0, scale: float = 1.0) -> dict[str, torch.Tensor]:
    """A leaf of each of MATRIX_SHAPES (matrices, batches of them, and degenerate ones)."""
    g = torch.Generator().manual_seed(seed)
    return {f"m{i}": (scale * torch.randn(s, generator=g, dtype=torch.float64)).to(dtype)
            for i, s in enumerate(MATRIX_SHAPES)}
