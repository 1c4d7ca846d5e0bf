"""From a λ path to a smaller transformer block: attention heads and MLP units pruned with
coupled group lasso, then cut out of the model with ``fr.prune.shrink``.

The task is synthetic and needs attention: a sequence of 8 tokens from a vocabulary of 8,
whose first token points at a position (token mod 7, plus 1), and the label is the token
found there (8 classes). 400 sequences train, 300 validate, 1000 test, all drawn with
fixed seeds. The model: token and position embeddings, one pre-norm transformer block
(hidden 16; 4 attention heads with separate q/k/v/o projections, as in Hugging Face
models; an MLP of 32 GELU units), a final LayerNorm and a linear head on position 0. ``fr.prune.couplings``
finds two couplings: the heads (each head's q, k and v rows with their bias entries, G = the
number of heads) and the MLP's hidden units (a row of ``fc1`` and its bias entry); the
residual stream is LayerNorm'd, so its channels are not prunable. The penalty is

    F_λ(w) = cross-entropy(w) + λ (Σ_heads √n_h ‖(q, k, v rows of h)‖₂ + Σ_units √n_u ‖(fc1 row, bias)‖₂)

``fr.group_lasso(..., groups=couplings)``. ``fr.path`` trains the grid (``--grid``; ``--grid
0 0`` lets it bracket the ends itself, over a minute more) in one vmap, full batch (FISTA;
attention through its plain math backend, since the fused CPU kernels have no vmap rule and
would run once per member). The task needs one head and no MLP: units it does not use are
zeroed at every λ of the grid, even the smallest.
The rule: the largest λ whose validation accuracy is within ``--within`` of the best.
``fr.prune.shrink(model, params, couplings)`` removes the zero heads (their q/k/v rows, o's
columns, the head count) and units (fc1's rows, fc2's columns); a removed head outputs the
mean of v's bias, here 0, so nothing is folded.

Printed: the path's table, then parameter count, CPU latency (one thread, eval mode, batch
1 and 64, median of repetitions taken in turns) and test accuracy of the dense model (the
path's smallest λ), of the chosen member at full size (masked) and of the shrunk one.

    python examples/transformer_pruning.py [--members 5] [--within 0.02]
"""

from __future__ import annotations

import argparse
import statistics
import time
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel

import funcreg as fr

LENGTH, VOCAB = 8, 8


def pointer_task(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequences whose first token points at the position holding the label (token mod 7,
    plus 1)."""
    x = torch.randint(0, VOCAB, (n, LENGTH), generator=torch.Generator().manual_seed(seed))
    return x, x.gather(1, x[:, :1] % (LENGTH - 1) + 1).squeeze(1)


class Attention(nn.Module):
    def __init__(self, hidden: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads, self.head_dim = num_heads, hidden // num_heads
        self.q_proj, self.k_proj = nn.Linear(hidden, hidden), nn.Linear(hidden, hidden)
        self.v_proj, self.o_proj = nn.Linear(hidden, hidden), nn.Linear(hidden, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.num_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.num_heads, self.head_dim).transpose(1, 2)
        a = F.scaled_dot_product_attention(q, k, v)
        return self.o_proj(a.transpose(1, 2).reshape(b, t, self.num_heads * self.head_dim))


class Model(nn.Module):
    def __init__(self, hidden: int, num_heads: int, mlp: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, hidden)
        self.pos = nn.Parameter(0.1 * torch.randn(LENGTH, hidden))
        self.ln1, self.attn = nn.LayerNorm(hidden), Attention(hidden, num_heads)
        self.ln2, self.fc1, self.fc2 = nn.LayerNorm(hidden), nn.Linear(hidden, mlp), nn.Linear(mlp, hidden)
        self.ln, self.head = nn.LayerNorm(hidden), nn.Linear(hidden, VOCAB)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens) + self.pos
        x = x + self.attn(self.ln1(x))
        x = x + self.fc2(F.gelu(self.fc1(self.ln2(x))))
        return self.head(self.ln(x)[:, 0])


def latency_ms(models: list[tuple[nn.Module, dict]], batch: int, reps: int) -> list[float]:
    """Median milliseconds of a forward call of each model, taken in turns (a machine that
    slows down for a while slows every model alike), after 10 warm-up rounds."""
    x = pointer_task(batch, seed=3)[0]
    times: list[list[float]] = [[] for _ in models]
    with torch.no_grad():
        for i in range(reps + 10):
            for (m, p), t in zip(models, times):
                start = time.perf_counter()
                functional_call(m, p, (x,))
                if i >= 10:
                    t.append(time.perf_counter() - start)
    return [1e3 * statistics.median(t) for t in times]


def accuracy(model: nn.Module, params: dict, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((functional_call(model.eval(), params, (x,)).argmax(-1) == y).float().mean())


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """The example's options (``parse([])``: its defaults, as benchmarks/bench_prune.py runs it)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--members", type=int, default=5, help="number of λ values")
    parser.add_argument("--n-train", type=int, default=400)
    parser.add_argument("--shape", type=int, nargs=3, default=(16, 4, 32), metavar=("HIDDEN", "HEADS", "MLP"))
    parser.add_argument("--grid", type=float, nargs=2, default=(0.01, 0.0001), metavar=("TOP", "BOTTOM"),
                        help="the λ grid's ends; 0 0: fr.path finds them (a bracket, over a minute more)")
    parser.add_argument("--rtol", type=float, default=1e-4, help="convergence tolerance of fr.path")
    parser.add_argument("--max-steps", type=int, default=500)
    parser.add_argument("--lr", type=float, default=0.1, help="FISTA's first trial step")
    parser.add_argument("--within", type=float, default=0.02, help="accuracy the rule may give up")
    parser.add_argument("--reps", type=int, default=100, help="latency repetitions at batch 64 (x4 at batch 1)")
    return parser.parse_args(argv)


def train(args: argparse.Namespace) -> SimpleNamespace:
    """Data, model, couplings, the path, the chosen member and its shrunk model."""
    torch.set_num_threads(1)  # small matmuls gain little from a second thread; one fixes the sum order
    torch.manual_seed(0)
    (x, y), val, test = pointer_task(args.n_train, 0), pointer_task(300, 1), pointer_task(1000, 2)
    model = Model(*args.shape).eval()
    couplings = fr.prune.couplings(model, x[:2])
    params = {k: v.detach() for k, v in model.named_parameters()}

    def cross_entropy(p, x, y):
        return F.cross_entropy(functional_call(model, p, (x,)), y)

    def error(p, x, y):
        return (functional_call(model, p, (x,)).argmax(-1) != y).float().mean()

    top, bottom = args.grid
    lambdas = fr.lambda_grid(torch.tensor(top), args.members, bottom / top) if top > 0 else None
    with sdpa_kernel(SDPBackend.MATH):  # the fused CPU kernels have no vmap rule: one call per member
        res = fr.path(cross_entropy, params, fr.group_lasso, (x, y), groups=couplings, lambdas=lambdas,
                      n=args.members, val=val, metric=error, rtol=args.rtol, max_steps=args.max_steps, lr=args.lr)
    best = float(res.val_loss.min())
    chosen = min(k for k in range(len(res)) if float(res.val_loss[k]) <= best + args.within)  # λ descends
    masked = res.member(chosen)
    small, small_params = result = fr.prune.shrink(model, masked, couplings)
    return SimpleNamespace(
        model=model, couplings=couplings, res=res, chosen=chosen, best=best, report=result.report, test=test,
        sizes=(len(x), len(val[0]), len(test[0])),
        rows=[("dense (smallest λ)", model, res.member(len(res) - 1)), ("chosen, masked", model, masked),
              ("chosen, shrunk", small.eval(), small_params)])


def main() -> None:
    args = parse()
    t = train(args)
    res, chosen, (x_test, y_test) = t.res, t.chosen, t.test
    hidden, heads, mlp = args.shape
    print(f"pointer task: {t.sizes[0]} train, {t.sizes[1]} validation, {t.sizes[2]} test sequences of "
          f"{LENGTH} tokens; block: hidden {hidden}, {heads} heads, MLP {mlp}; 1 thread")
    print("couplings: " + "; ".join(f"{', '.join(c.dims)} ({c.groups} groups)" for c in t.couplings))
    # groups kept per coupling: res.group_norms holds the couplings' groups in order
    kept = torch.stack([g.sum(1) for g in (res.group_norms != 0).split([c.groups for c in t.couplings], 1)], 1)
    print(f"grid: {res.grid.note}\n")
    print(f"{'lambda':>9} {'train':>6} {'val':>6} {'heads':>5} {'units':>5}  converged")
    for k in range(len(res)):
        conv = f"at step {int(res.steps[k])}" if res.steps[k] else "no"
        mark = "  <- chosen" if k == chosen else ""
        print(f"{res.lambdas[k]:9.2e} {1 - res.train_loss[k]:6.1%} {1 - res.val_loss[k]:6.1%} "
              f"{int(kept[k, 0]):5d} {int(kept[k, 1]):5d}  {conv}{mark}")
    print(f"\n{int((res.steps > 0).sum())}/{len(res)} members converged (rtol {res.rtol:g}, at most "
          f"{res.max_steps} steps) in {res.seconds:.1f} s; heads kept of {heads}, MLP units of {mlp}")
    print(f"chosen lambda {res.lambdas[chosen]:.2e}: the largest whose validation accuracy is within "
          f"{args.within:.0%} of the best ({1 - t.best:.1%})\n")
    print(t.report, "\n")
    one = latency_ms([(m, p) for _, m, p in t.rows], 1, 4 * args.reps)
    many = latency_ms([(m, p) for _, m, p in t.rows], 64, args.reps)
    print(f"{'model':<19} {'params':>7} {'batch 1':>9} {'batch 64':>9} {'test acc':>8}")
    for (name, m, p), a, b in zip(t.rows, one, many):
        count = sum(v.numel() for k, v in p.items() if k in dict(m.named_parameters()))
        print(f"{name:<19} {count:7d} {a:7.3f}ms {b:7.3f}ms {accuracy(m, p, x_test, y_test):8.1%}")
    (_, model, masked), (_, small, small_params) = t.rows[1:]
    with torch.no_grad():
        gap = (functional_call(small, small_params, (x_test,)) - functional_call(model, masked, (x_test,))).abs().max()
    print(f"shrunk vs masked on the test sequences: max |Δ logits| = {float(gap):.1e}")


if __name__ == "__main__":
    main()
