"""Independent references for the tests: trees walked by hand, and every family's math.

Nothing here calls funcreg or optree. Three kinds of truth:

* trees walked by hand (:func:`walk`, :func:`tree_map`): dict keys in insertion order,
  list/tuple/namedtuple indices, anything else a leaf;
* per-element formulas in Python arithmetic (``math``, float64), written straight from the
  definitions of funcreg/penalties (their docstrings), and numpy's SVD for the matrix
  families; the first five families' per-leaf value, gradient and prox (``l1_value`` ...
  ``l2_sp_prox``) are what tests/registry.py's entries point to;
* branch-free torch closed forms for the proxes of the sparse families (a tensor λ, γ or
  step broadcasts, so one call covers a whole grid of cases), derived and checked against
  dense-grid brute force in the project's research notes (notes/regs.md), and
  :func:`grid_argmin`, the brute force itself, which tests use to show that a prox is the
  *global* minimizer.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

Scalar = float | torch.Tensor


def _t(x: Scalar, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(x, dtype=like.dtype, device=like.device)


# ------------------------------------------------------------------- hand-walked trees
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


def resolve(h: Any, path: str, leaf: torch.Tensor) -> torch.Tensor:
    """The float64 value of hyperparameter ``h`` (a number, a 0-d tensor, a dict keyed by
    dotted path or a params-like tree) for leaf ``path``."""
    if isinstance(h, (int, float)):
        return torch.tensor(float(h), dtype=torch.float64)
    if isinstance(h, torch.Tensor):
        return h.detach().double()
    v = leaf_dict(h)[path]
    return v.detach().double() if isinstance(v, torch.Tensor) else torch.tensor(float(v), dtype=torch.float64)


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


# ------------------------------------------- the first five families, per leaf (float64)
def elementwise(fn: Callable[..., float], *tensors: torch.Tensor) -> torch.Tensor:
    """Apply a scalar Python function per element, in float64 (broadcasting the inputs)."""
    shape = torch.broadcast_shapes(*(t.shape for t in tensors))
    cols = [t.detach().double().expand(shape).reshape(-1).tolist() for t in tensors]
    return torch.tensor([fn(*v) for v in zip(*cols)], dtype=torch.float64).reshape(shape)


def ref_sum(fn: Callable[..., float], *tensors: torch.Tensor) -> float:
    return math.fsum(elementwise(fn, *tensors).reshape(-1).tolist())


def sign(x: float) -> float:
    return 0.0 if x == 0 else math.copysign(1.0, x)


def soft_1(x: float, t: float) -> float:
    """Soft threshold of one number."""
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


def l1_value(w: torch.Tensor, lam: torch.Tensor) -> float:
    return ref_sum(lambda x, l: l * abs(x), w, lam)


def l1_grad(w: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    return elementwise(lambda x, l: l * sign(x), w, lam)


def l1_prox(w: torch.Tensor, lam: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
    return elementwise(lambda x, l, s: soft_1(x, l * s), w, lam, step)


def l2_value(w: torch.Tensor, lam: torch.Tensor) -> float:
    return ref_sum(lambda x, l: l * x * x, w, lam)


def l2_grad(w: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    return elementwise(lambda x, l: 2 * l * x, w, lam)


def l2_prox(w: torch.Tensor, lam: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
    return elementwise(lambda x, l, s: x / (1 + 2 * l * s), w, lam, step)


def elastic_net_value(w: torch.Tensor, lam: torch.Tensor, rho: float) -> float:
    return ref_sum(lambda x, l: l * (rho * abs(x) + (1 - rho) / 2 * x * x), w, lam)


def elastic_net_grad(w: torch.Tensor, lam: torch.Tensor, rho: float) -> torch.Tensor:
    return elementwise(lambda x, l: l * rho * sign(x) + l * (1 - rho) * x, w, lam)


def elastic_net_prox(w: torch.Tensor, lam: torch.Tensor, step: torch.Tensor, rho: float) -> torch.Tensor:
    return elementwise(lambda x, l, s: soft_1(x, s * l * rho) / (1 + s * l * (1 - rho)), w, lam, step)


def group_lasso_value(w: torch.Tensor, lam: torch.Tensor, dim: int | None) -> float:
    lam_f = float(lam)
    return math.fsum(lam_f * math.sqrt(n_g) * _norm(get(w.double())) for get, n_g in group_slices(w, dim))


def group_lasso_grad(w: torch.Tensor, lam: torch.Tensor, dim: int | None) -> torch.Tensor:
    out = torch.zeros(w.shape, dtype=torch.float64)
    w64 = w.double()
    for get, n_g in group_slices(w, dim):
        norm = _norm(get(w64))
        scale = float(lam) * math.sqrt(n_g) / norm if norm > 0 else 0.0
        get(out).copy_(elementwise(lambda x: scale * x, get(w64)))
    return out


def group_lasso_prox(w: torch.Tensor, lam: torch.Tensor, step: torch.Tensor, dim: int | None) -> torch.Tensor:
    out = torch.zeros(w.shape, dtype=torch.float64)
    w64 = w.double()
    t_base = float(lam) * float(step)
    for get, n_g in group_slices(w, dim):
        norm = _norm(get(w64))
        t = t_base * math.sqrt(n_g)
        scale = max(norm - t, 0.0) / norm if norm > 0 else 0.0
        get(out).copy_(elementwise(lambda x: scale * x, get(w64)))
    return out


def l2_sp_value(w: torch.Tensor, lam: torch.Tensor, w0: torch.Tensor) -> float:
    return ref_sum(lambda x, x0, l: l * (x - x0) ** 2, w, w0, lam)


def l2_sp_grad(w: torch.Tensor, lam: torch.Tensor, w0: torch.Tensor) -> torch.Tensor:
    return elementwise(lambda x, x0, l: 2 * l * (x - x0), w, w0, lam)


def l2_sp_prox(w: torch.Tensor, lam: torch.Tensor, step: torch.Tensor, w0: torch.Tensor) -> torch.Tensor:
    return elementwise(lambda x, x0, l, s: (x + 2 * l * s * x0) / (1 + 2 * l * s), w, w0, lam, step)


# ------------------------------------------------------------- per element, Python math
def mcp_1(x: float, lam: float, gamma: float) -> float:
    a = abs(x)
    return lam * a - a * a / (2 * gamma) if a < gamma * lam else gamma * lam * lam / 2


def mcp_grad_1(x: float, lam: float, gamma: float) -> float:
    a = abs(x)
    if x == 0 or a >= gamma * lam:
        return 0.0
    return math.copysign(lam - a / gamma, x)


def l0_1(x: float, lam: float) -> float:
    return lam * (x != 0)


def scad_1(x: float, lam: float, gamma: float) -> float:
    a = abs(x)
    if a <= lam:
        return lam * a
    if a <= gamma * lam:
        return (2 * gamma * lam * a - a * a - lam * lam) / (2 * (gamma - 1))
    return lam * lam * (gamma + 1) / 2


def scad_grad_1(x: float, lam: float, gamma: float) -> float:
    a = abs(x)
    if x == 0 or a >= gamma * lam:
        return 0.0
    if a <= lam:
        return math.copysign(lam, x)
    return math.copysign((gamma * lam - a) / (gamma - 1), x)


# ------------------------------------------------------- the same values, vectorized
def mcp_t(u: torch.Tensor, lam: Scalar, gamma: Scalar) -> torch.Tensor:
    lam, gamma = _t(lam, u), _t(gamma, u)
    a = u.abs()
    return torch.where(a < gamma * lam, lam * a - a * a / (2 * gamma), gamma * lam * lam / 2)


def scad_t(u: torch.Tensor, lam: Scalar, gamma: Scalar) -> torch.Tensor:
    lam, gamma = _t(lam, u), _t(gamma, u)
    a = u.abs()
    middle = (2 * gamma * lam * a - a * a - lam * lam) / (2 * (gamma - 1))
    return torch.where(a <= lam, lam * a, torch.where(a <= gamma * lam, middle, lam * lam * (gamma + 1) / 2))


# ------------------------------------------------------------ closed-form proxes (torch)
def soft(w: torch.Tensor, t: Scalar) -> torch.Tensor:
    t = _t(t, w)
    return w - torch.clamp(w, -t, t)


def mcp_prox(w: torch.Tensor, lam: Scalar, gamma: Scalar, step: Scalar) -> torch.Tensor:
    """Global argmin of ½(u − w)² + step·MCP(u): firm thresholding while step < γ, hard
    thresholding at λ√(γ·step) beyond (the objective is concave inside γλ there)."""
    lam, gamma, s = _t(lam, w), _t(gamma, w), _t(step, w)
    a = w.abs()
    convex = s < gamma
    keep = torch.where(convex, gamma * lam, lam * torch.sqrt(gamma * torch.maximum(s, gamma)))
    firm = (a - lam * s).clamp_min(0) * (gamma / torch.where(convex, gamma - s, torch.ones_like(s)))
    inner = torch.where(convex, firm, torch.zeros_like(firm))
    return torch.sign(w) * torch.where(a > keep, a, inner)


def scad_prox(w: torch.Tensor, lam: Scalar, gamma: Scalar, step: Scalar) -> torch.Tensor:
    """Global argmin of ½(u − w)² + step·SCAD(u), found another way than funcreg's closed
    form: the objective, evaluated at each piece's own minimizer over its interval (a
    clipped soft threshold on [0, λ]; on [λ, γλ] the clipped stationary point where the
    piece is convex and both endpoints where it is not; max(|w|, γλ) beyond), and the best
    taken, ties to the smaller |u|."""
    lam, gamma, s = _t(lam, w), _t(gamma, w), _t(step, w)
    a = w.abs()
    inner = (a - s * lam).clamp(min=0).minimum(lam)
    curvature = 1 - s / (gamma - 1)  # of the middle piece's objective
    stationary = ((gamma - 1) * a - s * gamma * lam) / torch.where(curvature > 0, gamma - 1 - s, torch.ones_like(s))
    middle = torch.where(curvature > 0, stationary.clamp(min=lam).minimum(gamma * lam), lam.expand_as(a))
    candidates = [inner, middle, gamma * lam * torch.ones_like(a), a.maximum(gamma * lam)]

    def objective(u: torch.Tensor) -> torch.Tensor:
        return (u - a) ** 2 / 2 + s * scad_t(u, lam, gamma)

    best, best_f = candidates[0], objective(candidates[0])
    for u in candidates[1:]:  # in increasing |u| order where it matters: strict < keeps ties low
        f = objective(u)
        better = f < best_f
        best, best_f = torch.where(better, u, best), torch.where(better, f, best_f)
    return torch.sign(w) * best


def hard(w: torch.Tensor, t: Scalar) -> torch.Tensor:
    return torch.where(w.abs() > _t(t, w), w, torch.zeros_like(w))


def group_rows(w: torch.Tensor, dim: int | None) -> torch.Tensor:
    """The groups of ``w`` (slices along ``dim``; ``None``: the whole leaf) as rows."""
    if dim is None or w.ndim == 0:
        return w.reshape(1, w.numel())
    d = dim % w.ndim
    size = math.prod(n for i, n in enumerate(w.shape) if i != d)
    return w.movedim(d, 0).reshape(w.shape[d], size)


def from_rows(rows: torch.Tensor, like: torch.Tensor, dim: int | None) -> torch.Tensor:
    if dim is None or like.ndim == 0:
        return rows.reshape(like.shape)
    moved = like.movedim(dim, 0).shape
    return rows.reshape(moved).movedim(0, dim)


def sgl_prox(w: torch.Tensor, lam: float, rho: float, step: float, dim: int | None) -> torch.Tensor:
    """Soft threshold at s·λ·ρ, then block soft threshold at s·λ·(1 − ρ)·sqrt(n_g)."""
    rows = soft(group_rows(w.double(), dim), step * lam * rho)
    t = step * lam * (1 - rho) * math.sqrt(rows.shape[1])
    norms = torch.linalg.vector_norm(rows, dim=1, keepdim=True)
    scale = torch.where(norms > t, 1 - t / torch.where(norms > 0, norms, 1.0), 0.0)
    return from_rows(rows * scale, w, dim)


def sgl_value(w: torch.Tensor, lam: float, rho: float, dim: int | None) -> float:
    rows = group_rows(w.double(), dim).tolist()
    n = len(rows[0]) if rows else 0
    l1 = math.fsum(abs(v) for r in rows for v in r)
    l2 = math.fsum(math.sqrt(math.fsum(v * v for v in r)) for r in rows)
    return lam * (rho * l1 + (1 - rho) * math.sqrt(n) * l2)


# --------------------------------------------------------------------- matrices (numpy)
def as_matrix(w: torch.Tensor) -> np.ndarray:
    return w.double().numpy().reshape(w.shape[0], math.prod(w.shape[1:]))


def nuclear_value(w: torch.Tensor, lam: float) -> float:
    return lam * float(np.linalg.svd(as_matrix(w), compute_uv=False).sum())


def svt(w: torch.Tensor, t: float) -> torch.Tensor:
    """Singular value thresholding by numpy's SVD."""
    u, s, vh = np.linalg.svd(as_matrix(w), full_matrices=False)
    return torch.from_numpy((u * np.maximum(s - t, 0.0)) @ vh).reshape(w.shape)


def nuclear_subgradient(w: torch.Tensor, lam: float) -> torch.Tensor:
    """λ·U_r V_rᵀ over the numerically nonzero singular values (the minimal-norm one)."""
    m = as_matrix(w)
    u, s, vh = np.linalg.svd(m, full_matrices=False)
    r = int((s > s.max(initial=0.0) * max(m.shape) * np.finfo(np.float64).eps).sum())
    return torch.from_numpy(lam * u[:, :r] @ vh[:r]).reshape(w.shape)


def orthogonal_value(w: torch.Tensor, lam: float) -> float:
    m = as_matrix(w)
    gram = m @ m.T if m.shape[0] <= m.shape[1] else m.T @ m
    return lam * float(((gram - np.eye(gram.shape[0])) ** 2).sum())


def orthogonal_grad(w: torch.Tensor, lam: float) -> torch.Tensor:
    m = as_matrix(w)
    if m.shape[0] <= m.shape[1]:
        g = 4 * (m @ m.T - np.eye(m.shape[0])) @ m
    else:
        g = 4 * m @ (m.T @ m - np.eye(m.shape[1]))
    return torch.from_numpy(lam * g).reshape(w.shape)


# -------------------------------------------------------------------------- projections
def l1_ball_sorted(w: torch.Tensor, r: float) -> torch.Tensor:
    """Duchi et al.'s sort-based projection onto {‖x‖₁ ≤ r}, written as the paper's loop."""
    x = w.double().reshape(-1)
    if float(x.abs().sum()) <= r:
        return w.double().clone()
    if r == 0:  # no j passes the paper's strict test: θ = max|w|
        return torch.zeros_like(w, dtype=torch.float64)
    mu = sorted((abs(v) for v in x.tolist()), reverse=True)
    total, theta = 0.0, 0.0
    for j, m in enumerate(mu, start=1):
        total += m
        if m - (total - r) / j > 0:
            theta = (total - r) / j
    return (torch.sign(x) * (x.abs() - theta).clamp_min(0)).reshape(w.shape)


def l1_ball_bisect(w: torch.Tensor, r: float, iters: int = 200) -> torch.Tensor:
    """The same projection by bisection on θ: ‖soft(w, θ)‖₁ falls as θ grows."""
    a = w.double().abs()
    if float(a.sum()) <= r:
        return w.double().clone()
    lo, hi = 0.0, float(a.max())
    for _ in range(iters):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if float((a - mid).clamp_min(0).sum()) > r else (lo, mid)
    return soft(w.double(), hi)


def sgl_lambda_max(g: torch.Tensor, rho: float, dim: int | None) -> float:
    """Per group, the root of ‖soft(g_g, λρ)‖ = λ(1 − ρ)sqrt(n_g), solved exactly segment
    by segment (on each one the square of both sides is a quadratic in λ)."""
    best = 0.0
    for row in group_rows(g.double(), dim).tolist():
        a = sorted((abs(v) for v in row), reverse=True) + [0.0]
        n = len(row)
        c = (1 - rho) ** 2 * n
        s1 = s2 = 0.0
        for k in range(1, n + 1):
            s1 += a[k - 1]
            s2 += a[k - 1] ** 2
            # S2 − 2λρS1 + λ²(kρ² − c) = 0 with a[k] ≤ λρ ≤ a[k-1]
            qa, qb, qc = k * rho * rho - c, -2 * rho * s1, s2
            den = -qb + math.sqrt(max(qb * qb - 4 * qa * qc, 0.0))
            root = 2 * qc / den if den > 0 else 0.0
            if a[k] * (1 - 1e-12) <= root * rho <= a[k - 1] * (1 + 1e-12):
                best = max(best, root)
    return best


# ------------------------------------------------------------------------- brute force
def grid_argmin(
    objective: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    w: torch.Tensor,
    points: int = 20001,
) -> tuple[torch.Tensor, torch.Tensor]:
    """For each entry of ``w`` (1-d), the minimum of ``objective(u, w)`` over a dense grid
    of u in [−|w|, |w|] (a scalar prox's minimizer lies between 0 and w) and the grid point
    where it is attained. ``objective`` broadcasts a (n, points) u against (n, 1) w."""
    frac = torch.linspace(-1.0, 1.0, points, dtype=torch.float64)
    u = w.abs().unsqueeze(1) * frac
    values = objective(u, w.unsqueeze(1))
    best, at = values.min(dim=1)
    return best, u.gather(1, at.unsqueeze(1)).squeeze(1)
