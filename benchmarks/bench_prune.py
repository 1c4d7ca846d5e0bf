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

``--only coupled``: the coupled group lasso (``groups=``) against ``dim=`` on the same
leaves, ``.prox`` and ``.add_grad``, pure and donated: the digits-sized CNN's couplings
(per-call overhead) and the 50-leaf tree with each weight coupled to its bias (2.5M
floats), and an overlapping set (the CNN's second conv units with the Linear's column
blocks, beside the Linear's rows), whose prox iterates. ``--only trained``: the dense,
masked and shrunk rows for the models examples/digits_cnn_pruning.py and
examples/transformer_pruning.py train and choose (their default settings, about a minute).
"""

from __future__ import annotations

import copy
import re
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

sys.path.insert(0, str(Path(__file__).resolve().parent))
import funcreg as fr
from _cli import parse
from _timing import Case, environment, markdown_table, measure
from _workloads import make_tree

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

        def run(m: nn.Module, p: dict):
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
        return ("Torch-Pruning is not installed: structure comparison skipped "
                "(pip install -c constraints.txt torch-pruning).")
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
    same = not differ and ours.keys() == theirs.keys()
    verdict = "agree on every parameter's shape" if same else f"differ at {differ}"
    from importlib.metadata import version

    return (f"Torch-Pruning {version('torch-pruning')} (DependencyGraph, the same groups removed): "
            f"{len(ours)} parameters, shapes {verdict}.")


def _groups_of(model: nn.Module, shape: tuple[int, ...], first: str) -> int:
    params = dict(model.named_parameters())
    c = next(c for c in fr.prune.couplings(model, torch.randn(2, *shape)) if first in c.dims)
    return c.validate(params)


def _only(paths: list[str]) -> fr.select.Selector:
    return fr.select.only(*(f"^{re.escape(p)}$" for p in paths))


def coupled(reps: int) -> str:
    """groups= against dim= on the same leaves: prox and add_grad, pure and donated."""
    torch.manual_seed(0)
    model = cnn().eval()
    cnn_params = {k: v.detach().clone() for k, v in model.named_parameters()}
    cnn_couplings = fr.prune.couplings(model, torch.randn(2, 1, 8, 8))
    tree = make_tree(0)
    pairs = list(tree)
    tree_couplings = [{pairs[i]: 0, pairs[i + 1]: 0} for i in range(0, len(pairs), 2)]
    overlapping = [cnn_couplings[0], {**cnn_couplings[1].dims, "7.weight": 1}, {"7.weight": 0, "7.bias": 0}]
    lines = ["## Coupled group lasso (groups=) against dim= on the same leaves", ""]
    for title, params, couplings in (
            (f"digits-sized CNN, {len(cnn_couplings)} couplings from fr.prune.couplings", cnn_params, cnn_couplings),
            (f"50-leaf tree, {len(tree_couplings)} couplings of a weight and its bias (2.5M floats)", tree,
             tree_couplings)):
        where = _only(sorted({p for c in couplings for p in (c.dims if isinstance(c, fr.Coupling) else c)}))
        grads = {k: torch.randn_like(v) for k, v in params.items()}
        donated = {k: v.clone() for k, v in params.items()}
        donated_g = {k: v.clone() for k, v in grads.items()}
        lam = 1e-6  # donated calls repeat on the same storage: keep the groups alive
        for op in ("prox", "add_grad"):
            if op == "prox":
                def call(opts: dict, donate: bool) -> Any:
                    tree_ = donated if donate else params
                    return lambda: fr.group_lasso.prox(tree_, lam, 0.5, donate=donate, **opts)
            else:
                def call(opts: dict, donate: bool) -> Any:
                    g = donated_g if donate else grads
                    return lambda: fr.group_lasso.add_grad(g, params, lam, donate=donate, **opts)
            cases = [Case("dim=0 (rows of each leaf)", call({"dim": 0, "where": where}, False)),
                     Case("groups=couplings", call({"groups": couplings}, False)),
                     Case("dim=0, donated", call({"dim": 0, "where": where}, True)),
                     Case("groups=couplings, donated", call({"groups": couplings}, True))]
            rows = measure(cases, reps=reps, warmup=5)
            lines += [markdown_table(rows, title=f"{title}: fr.group_lasso.{op}", ratio_header="× dim=0"), ""]
    cases = [Case("groups= (disjoint couplings)",
                  lambda: fr.group_lasso.prox(cnn_params, 0.05, 0.5, groups=cnn_couplings)),
             Case("groups= with the Linear's rows and column blocks (overlapping)",
                  lambda: fr.group_lasso.prox(cnn_params, 0.05, 0.5, groups=overlapping))]
    rows = measure(cases, reps=max(3, reps // 10), warmup=1)
    lines += [markdown_table(rows, title="digits-sized CNN: the prox of overlapping couplings (iterative)",
                             ratio_header="× disjoint"), ""]
    return "\n".join(lines)


def trained(reps: int) -> str:
    """The examples' own trained models: dense (the path's smallest λ), masked and shrunk."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
    import digits_cnn_pruning
    import transformer_pruning

    lines = ["## The examples' trained models: dense, masked and shrunk", ""]
    for name, example, make in (
            ("digits CNN (examples/digits_cnn_pruning.py)", digits_cnn_pruning,
             lambda b: torch.randn(b, 1, 8, 8)),
            ("transformer block (examples/transformer_pruning.py)", transformer_pruning,
             lambda b: transformer_pruning.pointer_task(b, 3)[0])):
        start = time.perf_counter()
        t = example.train(example.parse([]))
        res = t.res
        x_test, y_test = t.test
        lines += [f"### {name}", "",
                  f"Trained in {time.perf_counter() - start:.0f} s; chosen λ {float(res.lambdas[t.chosen]):.2e} "
                  f"of {len(res)} (validation accuracy {1 - float(res.val_loss[t.chosen]):.1%}, best "
                  f"{1 - t.best:.1%}).", "", "```", str(t.report), "```", ""]
        for batch, n in ((1, 4 * reps), (64, reps)):
            x = make(batch)
            cases = []
            for label, m, p in t.rows:
                count = sum(v.numel() for k, v in p.items() if k in dict(m.named_parameters()))
                acc = example.accuracy(m, p, x_test, y_test)

                def fn(m: nn.Module = m, p: dict = p) -> Any:
                    with torch.no_grad():
                        return functional_call(m, p, (x,))
                cases.append(Case(label, fn, f"{count:,} parameters; test accuracy {acc:.1%}"))
            rows = measure(cases, reps=n, warmup=10)
            lines += [markdown_table(rows, title=f"{name.split(' (')[0]}, batch {batch}", ratio_header="× dense"), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse(argv, __doc__, only=("shrink", "coupled", "trained"),
                 reps="repetitions of the coupled tables (default 200; --quick 10)", threads=False)
    # one thread: on a shared 2-core machine two threads make the batch-64 rows bimodal
    torch.set_num_threads(1)
    reps = args.reps or (10 if args.quick else 200)
    start = time.perf_counter()
    out = ["# fr.prune.shrink: shrunk vs dense vs masked", "", environment(), ""]
    if "shrink" in args.only:
        for name, model, shape, title in (
            ("digits CNN", cnn(), (1, 8, 8),
             "Digits-sized CNN (conv-BN-ReLU x 2, Flatten, Linear), half the channels zeroed"),
            ("transformer block", Block(), (16, 64),
             "Transformer block (8 heads, MLP 256), half the heads and MLP units zeroed"),
        ):
            text, model, masked, removed, small = latency(name, model, shape, title)
            out += [text, against_torch_pruning(model, shape, removed, small), ""]
    if "coupled" in args.only:
        out.append(coupled(reps))
    if "trained" in args.only:
        out.append(trained(max(5, reps // 4)))
    out.append(f"Total {time.perf_counter() - start:.0f} s.")
    print("\n".join(out))


if __name__ == "__main__":
    main()
