"""Quickstart (the README's, line for line): a penalized loss and its gradient for a small
MLP with torch.func, the same gradient without autograd, and stateless Adam steps with an
L1 prox that leaves exact zeros."""

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


# where= picks leaves; fr.select.describe returns a table of what it picks
print(fr.select.describe(params, fr.select.weights))

# 1. A penalized loss that torch.func can transform (grad, vmap, jacrev, compile)
loss = fr.penalized(mse, lambda p: fr.l2(p, 1e-3, where=fr.select.weights))
grads = grad(loss)(params, x, y)
print(f"task loss {mse(params, x, y):.4f}, penalized loss {loss(params, x, y):.4f}")

# 2. The same gradient, the penalty's part added in closed form outside autograd
fast = fr.l2.add_grad(grad(mse)(params, x, y), params, 1e-3, where=fr.select.weights)
gap = max((fast[k] - grads[k]).abs().max().item() for k in grads)
print(f"largest difference, autograd vs add_grad: {gap:.1e}")

# 3. Stateless Adam steps, each followed by the L1 prox in Adam's metric: exact zeros
state = fr.adam.init(params)
for _ in range(300):
    params, state = fr.adam.step(params, grad(mse)(params, x, y), state, lr=1e-2)
    params = fr.l1.prox(params, 0.01, fr.adam.step_size(state, lr=1e-2), where=fr.select.weights)
print(f"after 300 steps: task loss {mse(params, x, y):.4f}")
print(fr.sparsity(params, where=fr.select.weights, dim=0))
