"""Nuclear norm: the sum of singular values, and singular value thresholding."""

from __future__ import annotations

from typing import Any

import torch

from funcreg import _ops, _sharding
from funcreg._engine import LeafError
from funcreg._ops import Column, Ops, PerLeaf, Tensors, each
from funcreg._tree import Flat
from funcreg.penalties._base import Penalty
from funcreg.penalties._matrix import as_matrix, by_shape, check_matrices


class NuclearNorm(Penalty):
    r"""Nuclear norm :math:`\lambda \sum_i \sigma_i(W)` of each matrix leaf :math:`W` (a
    leaf of ndim > 2 is seen as ``W.reshape(W.shape[0], -1)``; 0-d and 1-d leaves are an
    error): the convex surrogate of rank, for low-rank weights.

    With the thin SVD :math:`W = U \operatorname{diag}(\sigma) V^\top`:

    * subgradient :math:`\lambda\, U_r V_r^\top` over the singular values above
      ``torch.linalg.matrix_rank``'s tolerance (the minimal-norm one where W is
      rank-deficient, 0 at W = 0);
    * prox, singular value thresholding at :math:`t = \lambda\,\mathrm{step}`:
      :math:`U \operatorname{diag}(\max(\sigma - t, 0)) V^\top`, of rank at most the count
      of :math:`\sigma_i > t` (Cai, Candès, Shen, "A singular value thresholding algorithm
      for matrix completion", SIAM J. Optim. 20, 2010). On the fast path, leaves of one
      shape share one batched SVD;
    * ``lambda_max``: :math:`\sigma_{\max}(G)`, the spectral norm of the task loss's
      gradient at W = 0.

    ``lam`` and ``step`` are one value per leaf. Half-precision leaves are decomposed in
    float32.

    >>> import torch, funcreg as fr
    >>> w = {"w": torch.tensor([[3.0, 0.0], [0.0, 1.0]])}
    >>> fr.nuclear_norm(w, 1.0)
    tensor(4.)
    >>> fr.nuclear_norm.prox(w, 1.0, 2.0)["w"]
    tensor([[1., 0.],
            [0., 0.]])
    """

    name = "nuclear_norm"
    elementwise = False

    def _check(self, flat: Flat, selected: list[int]) -> None:
        check_matrices(self.name, flat, selected)

    def _value(self, w: torch.Tensor, *, lam: Any) -> torch.Tensor:
        return (lam * torch.linalg.svdvals(_for_svd(w)).sum()).to(w.dtype)

    def _prepass(self, ops: Ops, *, params: Tensors, **_: Any) -> dict[str, list[Any]]:
        return {"svd": _svds(ops, params)}

    def _grad(self, ops: Ops, *, params: Tensors, lam: Column, svd: list[Any]) -> Tensors:
        out = _ops.Owned()
        for w, (u, s, vh), a in zip(params, svd, each(lam, len(params))):
            # singular vectors of (numerically) zero singular values are arbitrary: leave
            # them out, at torch.linalg.matrix_rank's default tolerance. The SVD sorts them
            # in descending order, so the largest is the first (and an empty matrix has none:
            # amax would raise there)
            tol = s[..., :1] * max(u.shape[-2], vh.shape[-1]) * torch.finfo(s.dtype).eps
            kept = (s > tol).to(s.dtype)
            g = (a * ((u * kept.unsqueeze(-2)) @ vh).reshape(w.shape)).to(w.dtype)
            out.append(_sharding.place_like(g, w))
        return out

    def _prox(self, ops: Ops, *, params: Tensors, lam: Column, step: Column, svd: list[Any]) -> Tensors:
        out = []
        n = len(params)
        for w, (u, s, vh), a, st in zip(params, svd, each(lam, n), each(step, n)):
            shrunk = (s - ops.scalar(a * st, s)).clamp_min(0.0)
            new = ((u * shrunk.unsqueeze(-2)) @ vh).reshape(w.shape).to(w.dtype)
            out.append(_sharding.place_like(new, w))
        return out

    def _lambda_max(self, g: torch.Tensor) -> torch.Tensor:
        return torch.linalg.matrix_norm(_for_svd(g), ord=2)


def _svds(ops: Ops, ws: Tensors) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """The thin SVD of every leaf as a matrix: per leaf on the composable path (vmap
    batches each call), one batched call per shape of leaf on the fast path. A leaf whose
    SVD fails (NaN or inf in it) is named in the error."""
    if isinstance(ops, PerLeaf):
        return [_svd(k, _for_svd(w)) for k, w in enumerate(ws)]
    out: list[Any] = [None] * len(ws)
    for idx in by_shape(ws).values():
        try:
            u, s, vh = torch.linalg.svd(torch.stack([_for_svd(ws[k], ops.batch) for k in idx]),
                                        full_matrices=False)
        except torch.linalg.LinAlgError:
            for k in idx:  # which leaf: its own SVD fails too
                _svd(k, _for_svd(ws[k], ops.batch))
            raise
        for j, k in enumerate(idx):
            out[k] = (u[j], s[j], vh[j])
    return out


def _svd(k: int, m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    try:
        return torch.linalg.svd(m, full_matrices=False)
    except torch.linalg.LinAlgError:
        raise LeafError(k, "its singular value decomposition failed to converge; does it "
                           "hold NaN or inf?") from None


def _for_svd(w: torch.Tensor, batch: int = 0) -> torch.Tensor:
    """The leaf as a matrix, in float32 for a half-precision leaf: torch has no bfloat16
    or float16 SVD on CPU, and their precision would not resolve the singular values."""
    m = as_matrix(w, batch)
    return m.float() if m.dtype in (torch.bfloat16, torch.float16) else m


nuclear_norm = NuclearNorm()
