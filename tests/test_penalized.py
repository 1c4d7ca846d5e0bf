"""fr.penalized: the loss plus penalties, its torch.func.grad, and (loss, aux) returns."""

from __future__ import annotations

import inspect

import pytest
import torch
from torch import nn
from torch.func import functional_call, grad

import funcreg as fr


def _data(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    p = {
        "w": torch.randn(3, 4, generator=g, dtype=torch.float64) + 0.5,
        "b": torch.randn(3, generator=g, dtype=torch.float64) - 0.5,
    }
    x, y = torch.randn(7, 4, generator=g, dtype=torch.float64), torch.randn(7, 3, generator=g, dtype=torch.float64)
    return p, x, y


def mse(p, x, y, *, scale=1.0):
    return scale * ((x @ p["w"].T + p["b"] - y) ** 2).mean()


def test_value_is_loss_plus_penalties() -> None:
    p, x, y = _data()
    w0 = {k: torch.zeros_like(v) for k, v in p.items()}
    loss = fr.penalized(mse, lambda q: fr.l1(q, 0.1), lambda q: fr.l2_sp(q, 0.2, anchor=w0))
    want = mse(p, x, y) + 0.1 * sum(v.abs().sum() for v in p.values()) + 0.2 * sum((v**2).sum() for v in p.values())
    torch.testing.assert_close(loss(p, x, y), want)
    # keyword arguments reach loss_fn; the wrapper keeps its name and signature
    torch.testing.assert_close(loss(p, x, y, scale=3.0), want + 2 * mse(p, x, y))
    assert loss.__name__ == "mse"
    assert inspect.signature(loss) == inspect.signature(mse)
    # no penalty at all: the loss itself
    torch.testing.assert_close(fr.penalized(mse)(p, x, y), mse(p, x, y))


def test_grad_is_task_grad_plus_closed_form_penalty_grad() -> None:
    p, x, y = _data()
    g = torch.Generator().manual_seed(1)
    w0 = {k: torch.randn(v.shape, generator=g, dtype=torch.float64) for k, v in p.items()}
    task = grad(mse)(p, x, y)
    lam = 0.3
    cases = [
        (lambda q: fr.l2(q, lam), lambda w, k: 2 * lam * w),
        (lambda q: fr.l1(q, lam), lambda w, k: lam * torch.sign(w)),
        (lambda q: fr.elastic_net(q, lam, l1_ratio=0.7), lambda w, k: lam * 0.7 * torch.sign(w) + lam * 0.3 * w),
        (lambda q: fr.l2_sp(q, lam, anchor=w0), lambda w, k: 2 * lam * (w - w0[k])),
        (
            lambda q: fr.group_lasso(q, lam),
            lambda w, k: lam * (w[0].numel() ** 0.5) * w / w.norm(dim=1, keepdim=True) if w.ndim == 2 else lam * torch.sign(w),
        ),
        (
            lambda q: fr.group_lasso(q, lam, dim=None),
            lambda w, k: lam * w.numel() ** 0.5 * w / w.norm(),
        ),
        (lambda q: fr.l2(q, lam, where=fr.select.weights), lambda w, k: 2 * lam * w if k == "w" else 0 * w),
    ]
    for pen, closed in cases:
        got = grad(fr.penalized(mse, pen))(p, x, y)
        for k in p:
            torch.testing.assert_close(got[k], task[k] + closed(p[k], k), msg=k)
    # several penalties at once add up
    got = grad(fr.penalized(mse, cases[0][0], cases[1][0]))(p, x, y)
    for k in p:
        torch.testing.assert_close(got[k], task[k] + 2 * lam * p[k] + lam * torch.sign(p[k]))


def test_aux_passes_through() -> None:
    p, x, y = _data()

    def loss_with_aux(q, x, y):
        pred = x @ q["w"].T + q["b"]
        return ((pred - y) ** 2).mean(), {"pred": pred, "n": torch.tensor(x.shape[0])}

    loss = fr.penalized(loss_with_aux, lambda q: fr.l2(q, 0.5))
    value, aux = loss(p, x, y)
    torch.testing.assert_close(value, mse(p, x, y) + fr.l2(p, 0.5))
    assert aux["n"].item() == 7
    torch.testing.assert_close(aux["pred"], x @ p["w"].T + p["b"])
    g, aux2 = grad(loss, has_aux=True)(p, x, y)
    task = grad(mse)(p, x, y)
    for k in p:
        torch.testing.assert_close(g[k], task[k] + p[k])
    torch.testing.assert_close(aux2["pred"], aux["pred"])
    # also through torch.func.grad_and_value
    g3, (v3, aux3) = torch.func.grad_and_value(loss, has_aux=True)(p, x, y)
    torch.testing.assert_close(v3, value)
    torch.testing.assert_close(g3["w"], g["w"])
    torch.testing.assert_close(aux3["pred"], aux["pred"])


def test_penalized_with_a_module() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1)).double()
    params = {k: v.detach() for k, v in model.named_parameters()}
    x, y = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 1, dtype=torch.float64)

    def task(p, x, y):
        return ((functional_call(model, p, (x,)) - y) ** 2).mean()

    loss = fr.penalized(task, lambda p: fr.l2(p, 0.1, where=fr.select.exclude("bias")))
    g = grad(loss)(params, x, y)
    t = grad(task)(params, x, y)
    for k in params:
        extra = 0.2 * params[k] if "bias" not in k else 0
        torch.testing.assert_close(g[k], t[k] + extra, msg=k)


def test_penalized_errors() -> None:
    with pytest.raises(TypeError, match="loss_fn"):
        fr.penalized(3.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"penalty_fns\[1\]"):
        fr.penalized(mse, lambda q: fr.l2(q, 0.1), "l1")  # type: ignore[arg-type]
    p, x, y = _data()
    bad = fr.penalized(lambda q, x, y: (mse(q, x, y), 1, 2), lambda q: fr.l2(q, 0.1))
    with pytest.raises(TypeError, match="tuple of 3"):
        bad(p, x, y)
