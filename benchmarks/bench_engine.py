"""The engine's per-call cost against torch's own, same run, one thread.

Tables (medians of interleaved repetitions after warm-up, see ``_timing.py``; CPU time of
this process, which a shared machine disturbs less than wall time):

1. **Donated ``fr.adamw.step``** against ``torch.optim.AdamW(fused=True).step()`` on trees of
   100 leaves of 4 floats, 400 leaves of 64×64, 50 leaves / 10 MB, and the parameter trees
   of ResNet-18, BERT-base and GPT-2 small (built from their known shapes: no download).
   Both update the same parameters in place with the same gradients; each has its own
   state. A third row times the kernels alone (``_foreach_add_`` of the step counts and
   ``_fused_adamw_``, on lists built once), so that the Python per leaf of each is
   (its time - the kernels') / leaves. Targets: ≤ 1.10× torch fused on the three
   synthetic trees, ≤ 1.0× on the model trees.
2. **Pure ``fr.adamw.step``** against ``torch.optim.AdamW(foreach=True)`` on the two small
   trees. Target ≤ 1.0×.
3. **Donated ``fr.l1.prox``** against a hand-written in-place foreach soft threshold
   (``c = _foreach_clamp_min(w, -t); _foreach_clamp_max_(c, t); _foreach_sub_(w, c)``) on
   400 leaves of 64×64. Target ≤ 1.10×.
4. **Donated ``fr.l2.add_grad``** against ``torch._foreach_add_(grads, params, alpha=2λ)`` on
   GPT-2's tree. Target ≤ 1.05×.

The K = 16 ensemble step is ``benchmarks/bench_ensemble.py``.

    python benchmarks/bench_engine.py            # every table (a few minutes: GPT-2 and BERT)
    python benchmarks/bench_engine.py --quick    # the synthetic trees only, few repetitions

Flags as in benchmarks/README.md (one thread always: ``--threads`` is not taken).
``main(argv)`` takes them as a list and returns the tables as ``{title: markdown}``.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

import funcreg as fr
from _cli import parse
from _timing import Case, environment, measure

LR, WD, LAM = 1e-3, 1e-2, 1e-4


# ---------------------------------------------------------------------------- trees
def resnet18() -> list[tuple[str, tuple[int, ...]]]:
    """torchvision's resnet18: 62 leaves, 11.7M values."""
    out = [("conv1.weight", (64, 3, 7, 7)), ("bn1.weight", (64,)), ("bn1.bias", (64,))]
    cin = 64
    for layer, width in enumerate((64, 128, 256, 512), start=1):
        for block in range(2):
            p, c_in = f"layer{layer}.{block}", (cin if block == 0 else width)
            out += [(f"{p}.conv1.weight", (width, c_in, 3, 3)), (f"{p}.bn1.weight", (width,)),
                    (f"{p}.bn1.bias", (width,)), (f"{p}.conv2.weight", (width, width, 3, 3)),
                    (f"{p}.bn2.weight", (width,)), (f"{p}.bn2.bias", (width,))]
            if block == 0 and c_in != width:
                out += [(f"{p}.downsample.0.weight", (width, c_in, 1, 1)),
                        (f"{p}.downsample.1.weight", (width,)), (f"{p}.downsample.1.bias", (width,))]
        cin = width
    return out + [("fc.weight", (1000, 512)), ("fc.bias", (1000,))]


def bert_base() -> list[tuple[str, tuple[int, ...]]]:
    """Hugging Face's BertModel (bert-base-uncased): 199 leaves, 109M values."""
    d, ff = 768, 3072
    out = [("embeddings.word_embeddings.weight", (30522, d)), ("embeddings.position_embeddings.weight", (512, d)),
           ("embeddings.token_type_embeddings.weight", (2, d)), ("embeddings.LayerNorm.weight", (d,)),
           ("embeddings.LayerNorm.bias", (d,))]
    for i in range(12):
        p = f"encoder.layer.{i}"
        for name in ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense"):
            out += [(f"{p}.{name}.weight", (d, d)), (f"{p}.{name}.bias", (d,))]
        out += [(f"{p}.attention.output.LayerNorm.weight", (d,)), (f"{p}.attention.output.LayerNorm.bias", (d,)),
                (f"{p}.intermediate.dense.weight", (ff, d)), (f"{p}.intermediate.dense.bias", (ff,)),
                (f"{p}.output.dense.weight", (d, ff)), (f"{p}.output.dense.bias", (d,)),
                (f"{p}.output.LayerNorm.weight", (d,)), (f"{p}.output.LayerNorm.bias", (d,))]
    return out + [("pooler.dense.weight", (d, d)), ("pooler.dense.bias", (d,))]


def gpt2_small() -> list[tuple[str, tuple[int, ...]]]:
    """Hugging Face's GPT2Model (gpt2): 148 leaves, 124M values."""
    d = 768
    out = [("wte.weight", (50257, d)), ("wpe.weight", (1024, d))]
    for i in range(12):
        p = f"h.{i}"
        out += [(f"{p}.ln_1.weight", (d,)), (f"{p}.ln_1.bias", (d,)), (f"{p}.attn.c_attn.weight", (d, 3 * d)),
                (f"{p}.attn.c_attn.bias", (3 * d,)), (f"{p}.attn.c_proj.weight", (d, d)),
                (f"{p}.attn.c_proj.bias", (d,)), (f"{p}.ln_2.weight", (d,)), (f"{p}.ln_2.bias", (d,)),
                (f"{p}.mlp.c_fc.weight", (d, 4 * d)), (f"{p}.mlp.c_fc.bias", (4 * d,)),
                (f"{p}.mlp.c_proj.weight", (4 * d, d)), (f"{p}.mlp.c_proj.bias", (d,))]
    return out + [("ln_f.weight", (d,)), ("ln_f.bias", (d,))]


def ten_mb() -> list[tuple[str, tuple[int, ...]]]:
    """50 leaves, 2.5M float32 values (bench_optim.py's small workload)."""
    kinds = [(256, 384), (384, 256), (320, 320), (128, 64, 3, 3), (512, 256)]
    out = []
    for i in range(25):
        shape = kinds[i % len(kinds)]
        out += [(f"layer{i}.weight", shape), (f"layer{i}.bias", (shape[0],))]
    return out


TREES: dict[str, Callable[[], list[tuple[str, tuple[int, ...]]]]] = {
    "100 leaves of 4 floats": lambda: [(f"l{i}", (4,)) for i in range(100)],
    "400 leaves of 64×64": lambda: [(f"l{i}", (64, 64)) for i in range(400)],
    "50 leaves, 10 MB": ten_mb,
    "ResNet-18 (62 leaves)": resnet18,
    "BERT-base (199 leaves)": bert_base,
    "GPT-2 small (148 leaves)": gpt2_small,
}
SMALL = list(TREES)[:3]
REPS = {"100 leaves of 4 floats": 400, "400 leaves of 64×64": 60, "50 leaves, 10 MB": 40,
        "ResNet-18 (62 leaves)": 20, "BERT-base (199 leaves)": 10, "GPT-2 small (148 leaves)": 10}


def tensors(shapes: list[tuple[str, tuple[int, ...]]], seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {k: torch.empty(s).uniform_(-0.05, 0.05, generator=gen) for k, s in shapes}


# ---------------------------------------------------------------------------- tables
def _row(name: str, ms: float, base: float, leaves: int, kernels: float | None, note: str = "") -> str:
    per = f"{(ms - kernels) * 1e3 / leaves:.2f}" if kernels is not None else ""
    return f"| {name} | {ms:.3f} | {ms / base:.2f} | {per} | {note} |"


def adamw_table(tree: str, reps: int) -> str:
    shapes = TREES[tree]()
    params = {k: torch.nn.Parameter(v) for k, v in tensors(shapes, 0).items()}
    for k, p in params.items():
        p.grad = tensors([(k, tuple(p.shape))], 1)[k]
    plist = list(params.values())
    fused = torch.optim.AdamW(plist, lr=LR, weight_decay=WD, fused=True)
    foreach = torch.optim.AdamW(plist, lr=LR, weight_decay=WD, foreach=True)
    # funcreg's own parameters (a loop has one optimizer writing them); the same gradients
    flat_p = {k: p.detach().clone() for k, p in params.items()}
    flat_g = {k: p.grad for k, p in params.items()}
    donated = fr.adamw.init(flat_p)
    pure = fr.adamw.init(flat_p)
    # the kernels alone: torch's two calls on lists made once
    ps, gs = [p.detach().clone() for p in plist], list(flat_g.values())
    ms, vs = [torch.zeros_like(p) for p in ps], [torch.zeros_like(p) for p in ps]
    steps = [torch.zeros(()) for _ in ps]

    def kernels() -> None:
        torch._foreach_add_(steps, 1.0)
        torch._fused_adamw_(ps, gs, ms, vs, [], steps, lr=LR, beta1=0.9, beta2=0.999, weight_decay=WD,
                            eps=1e-8, amsgrad=False, maximize=False)

    def fr_donated() -> None:
        fr.adamw.step(flat_p, flat_g, donated, lr=LR, weight_decay=WD, donate=True)

    cases = [Case("torch.optim.AdamW(fused=True).step()", fused.step), Case("fr.adamw.step(donate=True)", fr_donated),
             Case("kernels alone (_foreach_add_ of the counts, _fused_adamw_)", kernels)]
    small = tree in SMALL[:2]
    if small:
        cases += [Case("torch.optim.AdamW(foreach=True).step()", foreach.step),
                  Case("fr.adamw.step (pure)", lambda: fr.adamw.step(flat_p, flat_g, pure, lr=LR, weight_decay=WD))]
    rows = measure(cases, reps=reps, warmup=3, clock=time.process_time_ns)
    t = {r.name: r.median_ms for r in rows}
    base, kern, n = rows[0].median_ms, t[cases[2].name], len(shapes)
    target = 1.10 if tree in SMALL else 1.0
    ratio = t[cases[1].name] / base
    lines = [f"### Donated AdamW step: {tree}", "",
             "| variant | median ms | × torch fused | Python µs per leaf (time - kernels) / leaves | note |",
             "|---|---:|---:|---:|---|",
             _row(cases[0].name, base, base, n, kern),
             _row(cases[1].name, t[cases[1].name], base, n, kern,
                  f"target ≤ {target:.2f}×: {'met' if ratio <= target else 'MISSED'}"),
             _row(cases[2].name, kern, base, n, None)]
    if small:
        fe, pu = t[cases[3].name], t[cases[4].name]
        lines += [_row(cases[3].name, fe, base, n, kern),
                  _row(cases[4].name, pu, base, n, kern,
                       f"{pu / fe:.2f}× torch foreach, target ≤ 1.0×: {'met' if pu <= fe else 'MISSED'}")]
    lines += ["", f"{n} leaves; medians of {reps} interleaved repetitions (CPU time); "
              f"donated funcreg - torch fused = {(t[cases[1].name] - base) * 1e3 / n:+.2f} µs per leaf."]
    return "\n".join(lines)


def prox_table(reps: int) -> str:
    shapes = TREES["400 leaves of 64×64"]()
    mine, theirs = tensors(shapes, 2), list(tensors(shapes, 2).values())
    t = 0.01 * 0.1

    def by_hand() -> None:
        c = torch._foreach_clamp_min(theirs, -t)
        torch._foreach_clamp_max_(c, t)
        torch._foreach_sub_(theirs, c)

    cases = [Case("hand-written in-place foreach soft threshold", by_hand),
             Case("fr.l1.prox(donate=True)", lambda: fr.l1.prox(mine, 0.01, 0.1, donate=True))]
    rows = measure(cases, reps=reps, warmup=3, clock=time.process_time_ns)
    ratio = rows[1].median_ms / rows[0].median_ms
    return "\n".join([
        "### Donated L1 prox: 400 leaves of 64×64", "", "| variant | median ms | × hand-written |", "|---|---:|---:|",
        f"| {rows[0].name} | {rows[0].median_ms:.3f} | 1.00 |",
        f"| {rows[1].name} | {rows[1].median_ms:.3f} | {ratio:.2f} |", "",
        f"Target ≤ 1.10×: {'met' if ratio <= 1.10 else 'MISSED'}; "
        f"medians of {reps} interleaved repetitions (CPU time)."])


def add_grad_table(reps: int) -> str:
    shapes = gpt2_small()
    params, grads = tensors(shapes, 3), tensors(shapes, 4)
    plist, glist = list(params.values()), list(tensors(shapes, 4).values())
    cases = [Case("torch._foreach_add_(grads, params, alpha=2λ)",
                  lambda: torch._foreach_add_(glist, plist, alpha=2 * LAM)),
             Case("fr.l2.add_grad(donate=True)", lambda: fr.l2.add_grad(grads, params, LAM, donate=True))]
    rows = measure(cases, reps=reps, warmup=2, clock=time.process_time_ns)
    ratio = rows[1].median_ms / rows[0].median_ms
    return "\n".join([
        "### Donated L2 add_grad: GPT-2 small (148 leaves, 124M values)", "",
        "| variant | median ms | × hand-written |", "|---|---:|---:|",
        f"| {rows[0].name} | {rows[0].median_ms:.2f} | 1.00 |",
        f"| {rows[1].name} | {rows[1].median_ms:.2f} | {ratio:.3f} |", "",
        f"Target ≤ 1.05×: {'met' if ratio <= 1.05 else 'MISSED'}; "
        f"medians of {reps} interleaved repetitions (CPU time)."])


def main(argv: list[str] | None = None) -> dict[str, str]:
    """Run the tables (``argv`` as on the command line; ``None`` reads ``sys.argv``), print
    them, and return them as ``{title: markdown}``."""
    quick = parse(argv, __doc__, threads=False).quick
    torch.set_num_threads(1)
    print(f"{environment()}\n", flush=True)
    tables: dict[str, str] = {}
    with torch.no_grad():  # as torch.optim's step runs; funcreg's checks are the same either way
        for tree in (SMALL if quick else TREES):
            text = adamw_table(tree, max(5, REPS[tree] // (4 if quick else 1)))
            tables[f"adamw: {tree}"] = text
            print(text + "\n", flush=True)
        text = prox_table(15 if quick else 60)
        tables["l1.prox"] = text
        print(text + "\n", flush=True)
        if not quick:
            text = add_grad_table(8)
            tables["l2.add_grad"] = text
            print(text + "\n", flush=True)
    return tables


if __name__ == "__main__":
    main()
