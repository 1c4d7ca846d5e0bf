"""CUDA: both paths agree on GPU tensors, and GPU results match CPU ones.
Every test here is marked ``cuda`` and is skipped without a CUDA device."""

from __future__ import annotations

import pytest
import torch

import funcreg as fr
from conftest import REFERENCED, REFERENCED_IDS, Family, tree_map, walk

pytestmark = pytest.mark.cuda
forced = fr._dispatch.forced


def _cpu_inputs():
    g = torch.Generator().manual_seed(0)
    params = {
        "a": {"weight": torch.randn(8, 5, generator=g), "bias": torch.randn(8, generator=g)},
        "b": [torch.randn(4, 4, generator=g, dtype=torch.float64), torch.randn((), generator=g, dtype=torch.float64)],
        "h": torch.randn(3, 2, generator=g).to(torch.bfloat16),
    }
    params["a"]["weight"][0] = 0.0
    grads = tree_map(lambda x: torch.randn(x.shape, generator=g).to(x.dtype), params)
    lam_el = {p: torch.rand(x.shape, generator=g) for p, x in walk(params)}
    return params, grads, lam_el


def _to(tree, device):
    return tree_map(lambda x: x.to(device) if isinstance(x, torch.Tensor) else x, tree)


def _ops(fam: Family, params, grads, lam, step, opts):
    return (
        fam.penalty(params, lam, **opts),
        fam.penalty.grad(params, lam, **opts),
        fam.penalty.add_grad(grads, params, lam, **opts),
        fam.penalty.prox(params, lam, step, **opts),
    )


def _close(a, b, device_of_a=None) -> None:
    for (path, x), (_, y) in zip(walk(a), walk(b)):
        if device_of_a is not None:
            assert x.device.type == device_of_a, path
        tol = {torch.float64: 1e-10, torch.float32: 1e-5, torch.bfloat16: 2e-2}[x.dtype]
        torch.testing.assert_close(x.cpu(), y.cpu(), rtol=tol, atol=tol, msg=path)


@pytest.mark.parametrize("fam", REFERENCED, ids=REFERENCED_IDS)
@pytest.mark.parametrize("lam_form", ["float", "tensor", "element"])
def test_fast_and_composable_agree_on_cuda(fam: Family, lam_form: str, cuda: torch.device) -> None:
    params, grads, lam_el = _to(_cpu_inputs(), cuda)
    if lam_form == "element" and not fam.separable:
        lam_form = "tensor"
    lam = {"float": 0.3, "tensor": torch.tensor(0.3, device=cuda), "element": lam_el}[lam_form]
    opts = _to(fam.options(params), cuda)
    with forced("fast"):
        fast = _ops(fam, params, grads, lam, 0.5, opts)
    with forced("composable"):
        comp = _ops(fam, params, grads, lam, 0.5, opts)
    for a, b in zip(fast, comp):
        _close(a, b, device_of_a="cuda")


@pytest.mark.parametrize("fam", REFERENCED, ids=REFERENCED_IDS)
def test_cpu_and_cuda_agree(fam: Family, cuda: torch.device) -> None:
    params, grads, lam_el = _cpu_inputs()
    opts = fam.options(params)
    lam = lam_el if fam.separable else 0.3
    cpu = _ops(fam, params, grads, lam, torch.tensor(0.5), opts)
    # the hyperparameters may stay on the CPU: they are moved to each leaf's device
    gpu = _ops(fam, _to(params, cuda), _to(grads, cuda), lam, torch.tensor(0.5), _to(opts, cuda))
    for a, b in zip(gpu, cpu):
        _close(a, b, device_of_a="cuda")


def test_vmap_over_lam_on_cuda(cuda: torch.device) -> None:
    params, _, _ = _to(_cpu_inputs(), cuda)
    lams = torch.linspace(0, 1, 8, device=cuda)
    out = torch.func.vmap(lambda lam: fr.l1.prox(params, lam, 0.5))(lams)
    for i, lam in enumerate(lams):
        ref = fr.l1.prox(params, lam, 0.5)
        _close({"w": out["a"]["weight"][i]}, {"w": ref["a"]["weight"]})
