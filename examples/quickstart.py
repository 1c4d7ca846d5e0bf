"""Quickstart: a penalized loss and its gradient for a small MLP, with torch.func."""

import torch
from torch import nn
from torch.func import functional_call, grad

import funcreg as fr

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
params = {k: v.detach() for k, v in model.named_parameters()}
x, y = torch.randn(32, 4), torch.randn(32, 1)


def mse(params, x, y):
    return ((functional_call(model, params, (x,)) - y) ** 2).mean()


# L1 on the weight matrices only, L2 (λ·Σw², no ½) on everything.
loss = fr.penalized(
    mse,
    lambda p: fr.l1(p, 1e-2, where=fr.select.weights),
    lambda p: fr.l2(p, 1e-3),
)
print(fr.select.describe(params, fr.select.weights))
print(f"task loss {mse(params, x, y).item():.6f}, penalized loss {loss(params, x, y).item():.6f}")
grads = grad(loss)(params, x, y)
for path, g in grads.items():
    print(f"  d loss / d {path:10s} norm {g.norm().item():.6f}")

# The same gradient without putting the penalty through autograd:
fast = fr.l2.add_grad(
    fr.l1.add_grad(grad(mse)(params, x, y), params, 1e-2, where=fr.select.weights), params, 1e-3
)
gap = max((fast[k] - grads[k]).abs().max().item() for k in grads)
print(f"largest difference, autograd vs add_grad: {gap:.2e}")
