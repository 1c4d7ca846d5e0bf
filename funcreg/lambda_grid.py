"""The grid of a regularization path, as scikit-learn builds it for ``lasso_path``."""

from __future__ import annotations

from typing import Any

import torch

from funcreg import _hyper


def lambda_grid(lam_max: Any, n: int = 100, eps: float = 1e-3) -> torch.Tensor:
    r"""``n`` values from ``lam_max`` down to ``eps * lam_max``, geometrically spaced and
    descending: :math:`\lambda_k = \lambda_{\max}\,\epsilon^{k/(n-1)}`, ``k = 0 … n-1``,
    scikit-learn's ``np.geomspace(alpha_max, eps * alpha_max, n)``.

    ``lam_max`` is a number or a 0-d tensor (typically a family's ``lambda_max``); the grid
    is a 1-d float64 tensor on its device. Train from the first value down (warm starts
    along the path, or one ``vmap`` over the whole grid):

    Args:
        lam_max: the largest λ, a number >= 0 or a 0-d tensor.
        n: how many values, a positive int.
        eps: the ratio of the smallest to the largest, in (0, 1].

    Returns:
        A 1-d float64 tensor of ``n`` descending values, on ``lam_max``'s device.

    Raises:
        ValueError: ``n`` not a positive int, ``eps`` outside (0, 1], ``lam_max``
            negative or not finite.
        TypeError: ``lam_max`` or ``eps`` neither a number nor a tensor.

    >>> import torch, funcreg as fr
    >>> fr.lambda_grid(torch.tensor(2.0), n=4, eps=1e-3)
    tensor([2.0000, 0.2000, 0.0200, 0.0020], dtype=torch.float64)
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    eps = _hyper.number("eps", eps, low=0.0, high=1.0)
    if isinstance(eps, float) and eps == 0.0:
        raise ValueError("eps must be in (0, 1]: a geometric grid cannot reach 0")
    top = _hyper.number("lam_max", lam_max)
    device = top.device if isinstance(top, torch.Tensor) else None
    if n == 1:
        return torch.as_tensor(top, dtype=torch.float64, device=device).reshape(1)
    exponents = torch.arange(n, dtype=torch.float64, device=device) / (n - 1)
    return top * torch.as_tensor(eps, dtype=torch.float64, device=device) ** exponents
