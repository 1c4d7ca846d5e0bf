"""fr.distributed.all_reduce on 2 gloo ranks: the tree all-reduce and a data-parallel step.

Two tables, timed on rank 0 of 2 CPU ranks (gloo, one intra-op thread each, started by
this script with a TCPStore on 127.0.0.1), as interleaved medians (``_timing.py``; both
ranks run the cases in the same shuffled order, since every case is a collective):

1. Averaging a 50-leaf gradient tree (``_workloads.make_tree``: 2.5M float32 in
   weights and biases) across the 2 ranks: ``fr.distributed.all_reduce`` (pure, with
   ``check=False``, with ``donate=True``) against one ``dist.all_reduce`` per leaf
   (blocking, and ``async_op=True``), and a hand-written single ``torch.cat`` buffer.
2. One data-parallel training step, ``torch.func.grad`` of an MSE on a 256-1024-1024-10
   MLP, ``fr.distributed.all_reduce`` and ``fr.adamw.step``, for a global batch of 512:
   2 ranks of 256 examples each against 1 rank doing all 512 (with 1 and with 2 threads)
   while the other waits. Each case ends with a barrier, so that no rank runs ahead into
   the next case. On 2 CPU cores this is indicative only: the 2 ranks share the cores
   the single rank's 2 threads would use, and other load on them shows most in the
   2-thread row.

Before timing, each variant's result is checked against ``fr.distributed.all_reduce``'s
(table 1) and the 2-rank step against the 1-rank step (table 2).

    python benchmarks/bench_distributed.py           # both tables (well under a minute)
    python benchmarks/bench_distributed.py --quick   # a few repetitions: a smoke test
    python benchmarks/bench_distributed.py --only all_reduce

Flags as in benchmarks/README.md; no ``--threads`` (each rank runs one thread, by design).
``main(argv)`` takes them as a list and returns the tables as ``{title: markdown}``.
"""

from __future__ import annotations

import datetime
import json
import os
import tempfile
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.func import functional_call, grad

import funcreg as fr
from _cli import parse
from _timing import Case, environment, markdown_table, measure
from _workloads import make_tree, mlp

WORLD = 2
GLOBAL_BATCH = 512
LR = 1e-3
TIMEOUT = datetime.timedelta(seconds=120)


def _all_reduce_table(rank: int, world: int, reps: int) -> str:
    grads = {k: v * (rank + 1) for k, v in make_tree().items()}
    leaves = list(grads.values())
    donated = {k: v.clone() for k, v in grads.items()}
    in_place = [v.clone() for v in leaves]

    def per_leaf() -> None:
        for g in in_place:
            dist.all_reduce(g)
            g.div_(world)

    def per_leaf_async() -> None:
        for work in [dist.all_reduce(g, async_op=True) for g in in_place]:
            work.wait()
        torch._foreach_div_(in_place, world)

    def one_buffer() -> list[torch.Tensor]:
        flat = torch.cat([g.reshape(-1) for g in leaves])
        dist.all_reduce(flat)
        flat.div_(world)
        return [v.view(g.shape) for v, g in zip(flat.split([g.numel() for g in leaves]), leaves)]

    want = fr.distributed.all_reduce(grads)
    per_leaf()
    assert all(torch.equal(w, g) for w, g in zip(want.values(), in_place))
    assert all(torch.equal(w, g) for w, g in zip(want.values(), one_buffer()))
    assert all(torch.equal(want[k], v)
               for k, v in fr.distributed.all_reduce(donated, donate=True).items())

    cases = [
        Case("fr.distributed.all_reduce", lambda: fr.distributed.all_reduce(grads),
             "fresh result; 1 check + 1 data collective"),
        Case("fr.distributed.all_reduce, check=False",
             lambda: fr.distributed.all_reduce(grads, check=False), "1 collective"),
        Case("fr.distributed.all_reduce, donate=True",
             lambda: fr.distributed.all_reduce(donated, donate=True), "in place"),
        Case("dist.all_reduce per leaf + div_", per_leaf, "50 blocking collectives, in place"),
        Case("dist.all_reduce per leaf, async_op=True", per_leaf_async,
             "50 collectives in flight, in place"),
        Case("one torch.cat buffer, one dist.all_reduce", one_buffer,
             "hand-written, no checks"),
    ]
    rows = measure(cases, reps=reps, warmup=3)
    return markdown_table(rows, title="all-reduce of a 50-leaf tree, 2,527,040 float32, 2 gloo "
                          "ranks (mean over ranks)")


def _step_table(rank: int, world: int, reps: int) -> str:
    torch.manual_seed(0)
    model = mlp(256, 1024, 1024, 10)
    params = {k: v.detach() for k, v in model.named_parameters()}
    state = fr.adamw.init(params)
    torch.manual_seed(1)
    x, y = torch.randn(GLOBAL_BATCH, 256), torch.randn(GLOBAL_BATCH, 10)
    n = GLOBAL_BATCH // world
    xs, ys = x[rank * n:(rank + 1) * n], y[rank * n:(rank + 1) * n]

    def mse(p: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return ((functional_call(model, p, (x,)) - y) ** 2).mean()

    def data_parallel() -> Any:
        grads = fr.distributed.all_reduce(grad(mse)(params, xs, ys))
        out = fr.adamw.step(params, grads, state, lr=LR)
        dist.barrier()
        return out

    def rank_local() -> Any:
        out = fr.adamw.step(params, grad(mse)(params, xs, ys), state, lr=LR)
        dist.barrier()
        return out

    def alone(threads: int) -> Callable[[], Any]:
        def step() -> Any:
            out = None
            if rank == 0:  # the other rank only waits at the barrier
                torch.set_num_threads(threads)
                out = fr.adamw.step(params, grad(mse)(params, x, y), state, lr=LR)
                torch.set_num_threads(1)
            dist.barrier()
            return out
        return step

    together, _ = data_parallel()
    single = alone(1)()
    if rank == 0:
        single = single[0]
        gap = max((together[k] - single[k]).abs().max().item() for k in params)
        assert gap < 1e-5, f"the 2-rank step differs from the 1-rank step by {gap}"

    cases = [
        Case(f"2 ranks x 1 thread, batch {n} each", data_parallel,
             "grad + fr.distributed.all_reduce + fr.adamw.step"),
        Case(f"1 rank x 1 thread, batch {GLOBAL_BATCH}", alone(1), "grad + fr.adamw.step"),
        Case(f"1 rank x 2 threads, batch {GLOBAL_BATCH}", alone(2), "grad + fr.adamw.step"),
        Case("2 ranks x 1 thread, no all_reduce", rank_local,
             "rank-local grads (wrong): what the all-reduce costs"),
    ]
    rows = measure(cases, reps=reps, warmup=2)
    size = sum(p.numel() for p in params.values())
    return markdown_table(rows, title=f"data-parallel training step, 256-1024-1024-10 MLP "
                          f"({size:,} float32 parameters), global batch {GLOBAL_BATCH}")


def _rank(rank: int, world: int, port: int, reps: int, only: list[str], result_path: str) -> None:
    torch.set_num_threads(1)
    store = dist.TCPStore("127.0.0.1", port, world_size=world + 1, is_master=False,
                          timeout=TIMEOUT)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world, timeout=TIMEOUT)
    try:
        tables = {}
        if "all_reduce" in only:
            tables["all-reduce of a 50-leaf tree"] = _all_reduce_table(rank, world, reps)
        if "step" in only:
            tables["data-parallel training step"] = _step_table(rank, world, max(5, reps // 2))
        if rank == 0:
            with open(result_path, "w") as f:
                json.dump(tables, f)
    finally:
        dist.destroy_process_group()


def main(argv: list[str] | None = None) -> dict[str, str]:
    """Run both tables on 2 gloo ranks (``argv`` as on the command line; ``None`` reads
    ``sys.argv``), print them, and return them as ``{title: markdown}``."""
    args = parse(argv, __doc__, only=("all_reduce", "step"), threads=False, devices=("cpu",),
                 reps="repetitions of the all-reduce table (the step table takes half)")
    reps = args.reps or (5 if args.quick else 40)

    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    print(f"# fr.distributed on {WORLD} gloo ranks\n\n{environment()}\n(the parent's threads; each "
          f"rank runs 1 intra-op thread); load average before the run: {load}\n", flush=True)
    store = dist.TCPStore("127.0.0.1", 0, world_size=WORLD + 1, is_master=True,
                          wait_for_workers=False, timeout=TIMEOUT)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "tables.json")
        mp.start_processes(_rank, args=(WORLD, store.port, reps, args.only, path), nprocs=WORLD,
                           start_method="spawn")
        with open(path) as f:
            tables: dict[str, str] = json.load(f)
    for text in tables.values():
        print(text + "\n", flush=True)
    return tables


if __name__ == "__main__":
    main()
