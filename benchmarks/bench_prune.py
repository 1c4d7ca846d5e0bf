"""fr.prune.shrink: latency and size of the shrunk model against the dense and the masked one,
and the structure it removes against Torch-Pruning's removal of the same groups.

Two models, each with half of every coupling's groups zeroed by hand (all of a group's
leaves, as a group-lasso prox leaves them): a digits-sized CNN (conv-BN-ReLU x 2, Flatten,
Linear on 1x8x8 images) and a pre-norm transformer block (hidden 64, 8 heads of 8, MLP 256,
sequence 16), on one intra-op thread. Rows: the dense model (random weights), the masked model (the same zeros,
full size) and the shrunk one, CPU, eval mode, no autograd, at batch 1 and 64.

    python benchmarks/bench_prune.py

Torch-Pruning (``pip install -c constraints.txt torch-pruning``) is optional; without it
the structure comparison is skipped with a line saying so.
"""

from __future__ import annotations

import copy
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

sys.path.insert(0, str(Path(__file__).resolve().parent))
import funcreg as fr  # noqa: E402
from _timing import Case, environment, markdown_table, measure  # noqa: E402

FRACTION = 0.5


def cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Flatten(), nn.Linear(32 * 8 * 8, 10),
    )


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
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o_proj(a.transpose(1, 2).reshape(b, t, self.num_heads * self.head_dim))


class Block(nn.Module):
    def __init__(self, hidden: int = 64, num_heads: int = 8, mlp: int = 256) -> None:
        super().__init__()
        self.ln1, self.attn = nn.LayerNorm(hidden), Attention(hidden, num_heads)
        self.ln2, self.fc1, self.fc2 = nn.LayerNorm(hidden), nn.Linear(hidden, mlp), nn.Linear(mlp, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


def zeroed(model: nn.Module, couplings: list[fr.Coupling]) -> tuple[dict, dict[str, list[int]]]:
    """Params with the first FRACTION of every coupling's groups zero, and those groups."""
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    removed = {}
    for c in couplings:
        groups = c.validate(params)
        dead = list(range(0, groups, int(1 / FRACTION)))
        for path, dim in c.dims.items():
            w = params[path]
            width = w.shape[dim] // groups
            for k in dead:
                w.narrow(dim, k * width, width).zero_()
        removed[next(iter(c.dims))] = dead
    return params, removed


def latency(name: str, model: nn.Module, shape: tuple[int, ...], title: str) -> tuple:
    """The report and the latency tables; the models and the removed groups for the comparison."""
    torch.manual_seed(0)
    model.eval()
    couplings = fr.prune.couplings(model, torch.randn(2, *shape))
    dense = {k: v.detach().clone() for k, v in model.named_parameters()}
    masked, removed = zeroed(model, couplings)
    small, small_params = result = fr.prune.shrink(model, masked, couplings, torch.randn(2, *shape))
    small.eval()
    count = lambda p: sum(v.numel() for v in p.values())  # noqa: E731
    lines = [f"## {title}", "", "```", str(result.report), "```", ""]
    for batch, reps in ((1, 300), (64, 60)):
        x = torch.randn(batch, *shape)
        with torch.no_grad():
            err = (functional_call(small, small_params, (x,)) - functional_call(model, masked, (x,))).abs().max()

        def run(m: nn.Module, p: dict):  # noqa: ANN202
            def fn() -> torch.Tensor:
                with torch.no_grad():
                    return functional_call(m, p, (x,))
            return fn

        cases = [Case("dense", run(model, dense), f"{count(dense):,} parameters"),
                 Case("masked (same zeros, full size)", run(model, masked), f"{count(masked):,} parameters"),
                 Case("shrunk (fr.prune.shrink)", run(small, small_params),
                      f"{count(small_params):,} parameters; max \\|Δ\\| vs masked {float(err):.1e}")]
        rows = measure(cases, reps=reps, warmup=10)
        lines += [markdown_table(rows, title=f"{name}, batch {batch}", ratio_header="× dense"), ""]
    return "\n".join(lines), model, masked, removed, small


def against_torch_pruning(model: nn.Module, shape: tuple[int, ...], removed: dict[str, list[int]],
                          small: nn.Module) -> str:
    try:
        import torch_pruning as tp
    except ImportError:
        return "Torch-Pruning is not installed: structure comparison skipped (pip install -c constraints.txt torch-pruning)."
    other = copy.deepcopy(model).eval()
    graph = tp.DependencyGraph().build_dependency(other, example_inputs=torch.randn(2, *shape))
    modules = dict(other.named_modules())
    for first, groups in removed.items():
        name = first.rpartition(".")[0]
        layer = modules[name]
        if isinstance(layer, nn.Conv2d):
            fn, size = tp.prune_conv_out_channels, layer.out_channels
        else:
            fn, size = tp.prune_linear_out_channels, layer.out_features
        g = size // max(1, _groups_of(model, shape, first))
        idxs = [k * g + j for k in groups for j in range(g)]
        group = graph.get_pruning_group(layer, fn, idxs=idxs)
        group.prune()
    ours = {k: tuple(v.shape) for k, v in small.named_parameters()}
    theirs = {k: tuple(v.shape) for k, v in other.named_parameters()}
    differ = [k for k in ours if ours[k] != theirs.get(k)]
    verdict = "agree on every parameter's shape" if not differ and ours.keys() == theirs.keys() else f"differ at {differ}"
    from importlib.metadata import version

    return (f"Torch-Pruning {version('torch-pruning')} (DependencyGraph, the same groups removed): "
            f"{len(ours)} parameters, shapes {verdict}.")


def _groups_of(model: nn.Module, shape: tuple[int, ...], first: str) -> int:
    params = dict(model.named_parameters())
    c = next(c for c in fr.prune.couplings(model, torch.randn(2, *shape)) if first in c.dims)
    return c.validate(params)


def main() -> None:
    # one thread: on a shared 2-core machine two threads make the batch-64 rows bimodal
    torch.set_num_threads(1)
    start = time.perf_counter()
    out = ["# fr.prune.shrink: shrunk vs dense vs masked", "", environment(), ""]
    for name, model, shape, title in (
        ("digits CNN", cnn(), (1, 8, 8), "Digits-sized CNN (conv-BN-ReLU x 2, Flatten, Linear), half the channels zeroed"),
        ("transformer block", Block(), (16, 64), "Transformer block (8 heads, MLP 256), half the heads and MLP units zeroed"),
    ):
        text, model, masked, removed, small = latency(name, model, shape, title)
        out += [text, against_torch_pruning(model, shape, removed, small), ""]
    out.append(f"Total {time.perf_counter() - start:.0f} s.")
    print("\n".join(out))


if __name__ == "__main__":
    main()
