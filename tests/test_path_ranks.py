"""fr.path under torch.distributed: the blocks spread over 2 gloo ranks give, bit for
bit, what one process gives, on every rank (folds and refit included)."""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call

from _dist import Checks, run_ranks


def _battery(rank: int, world: int) -> None:
    import funcreg as fr

    check = Checks(rank)
    model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 1))
    params = {k: v.detach() for k, v in model.named_parameters()}  # seeded alike on every rank
    g = torch.Generator().manual_seed(1)
    x = torch.randn(60, 6, generator=g)
    y = (torch.tanh(x[:, :1]) - x[:, 2:3] + 0.2 * torch.randn(60, 1, generator=g))

    def loss(p, x, y):
        return ((functional_call(model, p, (x,)) - y) ** 2).mean() + 0.05 * (p["2.weight"] ** 2).sum()

    first = fr.select.only(r"^0\.weight$")
    options = dict(where=first, dim=1, lambdas=[0.3, 0.05, 0.01], folds=3, block=1, max_steps=200, rtol=1e-2)
    spread = fr.path(loss, params, fr.group_lasso, (x, y), **options)
    alone = fr.path(loss, params, fr.group_lasso, (x, y), distribute=False, **options)
    check("spread over both ranks", spread.ranks == 2 and alone.ranks == 1, (spread.ranks, alone.ranks))
    check("same grid", torch.equal(spread.lambdas, alone.lambdas))
    for k in params:
        check(f"refit {k} bitwise", torch.equal(spread.params[k], alone.params[k]))
    check("fold losses bitwise", torch.equal(spread.fold_loss, alone.fold_loss))
    check("steps", torch.equal(spread.steps, alone.steps) and torch.equal(spread.fold_steps, alone.fold_steps))
    text = str(spread).replace("on 2 process(es)", "on 1 process(es)")
    check("same table", text == str(alone), f"\n{spread}\n{alone}")
    with check.raises("warm starts cannot spread", ValueError, "cannot be spread over processes"):
        fr.path(loss, params, fr.group_lasso, (x, y), lambdas=[0.1, 0.01], warm_start=True, where=first, dim=1)
    check.done()


def test_path_blocks_spread_over_ranks_equal_one_process() -> None:
    run_ranks(_battery, world=2, timeout=120)
