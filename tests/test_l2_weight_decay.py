"""The factor of 2: λ·Σw² added to the loss is torch.optim.SGD(weight_decay=2λ)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.func import functional_call, grad

import funcreg as fr

STEPS, LR, LAM = 20, 0.1, 0.05


def _setup():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2)).double()
    x = torch.randn(16, 4, dtype=torch.float64)
    y = torch.randn(16, 2, dtype=torch.float64)
    return model, x, y


def _torch_sgd(model, x, y, **sgd_kwargs):
    model = copy.deepcopy(model)
    opt = torch.optim.SGD(model.parameters(), lr=LR, **sgd_kwargs)
    for _ in range(STEPS):
        opt.zero_grad()
        ((model(x) - y) ** 2).mean().backward()
        opt.step()
    return {k: v.detach() for k, v in model.named_parameters()}


def _mse(model):
    def loss(params, x, y):
        return ((functional_call(model, params, (x,)) - y) ** 2).mean()

    return loss


@pytest.mark.parametrize("how", ["penalized", "add_grad"])
def test_l2_penalty_is_sgd_weight_decay_2lam(how: str) -> None:
    model, x, y = _setup()
    mse = _mse(model)
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    loss = fr.penalized(mse, lambda p: fr.l2(p, LAM))
    for _ in range(STEPS):
        if how == "penalized":
            g = grad(loss)(params, x, y)
        else:
            g = fr.l2.add_grad(grad(mse)(params, x, y), params, LAM)
        params = {k: p - LR * g[k] for k, p in params.items()}
    want = _torch_sgd(model, x, y, weight_decay=2 * LAM)
    for k in want:
        torch.testing.assert_close(params[k], want[k], rtol=1e-12, atol=1e-14)
    # and it is not weight_decay=λ: the test can tell the factor of 2 apart
    wrong = _torch_sgd(model, x, y, weight_decay=LAM)
    assert max((params[k] - wrong[k]).abs().max().item() for k in want) > 1e-6


def test_l2_prox_is_implicit_weight_decay() -> None:
    """A proximal step with fr.l2.prox is the implicit (backward-Euler) weight decay:
    w_new = (w − lr·g) / (1 + 2·λ·lr), i.e. solves w_new = w − lr·(g + 2λ·w_new)."""
    model, x, y = _setup()
    mse = _mse(model)
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    g = grad(mse)(params, x, y)
    half = {k: p - LR * g[k] for k, p in params.items()}
    new = fr.l2.prox(half, LAM, LR)
    for k in params:
        torch.testing.assert_close(new[k], params[k] - LR * (g[k] + 2 * LAM * new[k]), rtol=1e-12, atol=1e-14)
