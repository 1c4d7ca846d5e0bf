"""Run a function on several gloo ranks from a test, with a hard deadline.

    from _dist import Checks, run_ranks

    def _battery(rank, world, scale):          # module level: ranks import it by name
        check = Checks(rank)                   # torch.distributed is initialized here
        check("doubles", torch.equal(2 * x, x + x))
        with check.raises("bad op", ValueError, "op must be"):
            fr.distributed.all_reduce(tree, op="max")
        check.done()                           # AssertionError naming every failed check

    def test_something():
        run_ranks(_battery, 2.0, world=2, timeout=60)

Starting processes is what costs (importing torch takes seconds), so a test should run a
whole battery of checks in one call, and collect the names of the checks that fail
rather than stop at the first. How it works, and why:

* **forkserver** with torch, torch.distributed, torch.distributed.tensor and funcreg
  preloaded: the first call starts a server that imports them once, and every rank
  after that is a fork of it (about 0.1 s). Plain ``fork`` would be as fast but forks
  pytest's process, whose OpenMP pool (any earlier test ran a parallel op) deadlocks the
  child's first parallel op; ``spawn`` re-imports torch in every rank.
* **rendezvous**: the parent owns a TCPStore on 127.0.0.1, port 0 (the OS picks a free
  one, so no two runs collide and nothing stale lies on disk); ranks join it as clients
  and call ``init_process_group("gloo", store=...)``.
* **one thread per rank** (``torch.set_num_threads(1)``): the ranks share the machine's
  cores, and results must not depend on how many there are.
* **seeds**: forked ranks inherit the server's RNG state, so every rank starts from
  ``torch.manual_seed(seed)`` (the same on every rank: data made before any
  rank-dependent code is identical); use ``torch.manual_seed(seed + rank)`` for data that
  must differ per rank.
* **deadline**: after ``timeout`` seconds the ranks are killed and the test fails with a
  ``TimeoutError``; the process group's own timeout is half of it, so a collective that
  waits for a peer that never comes raises inside the rank first, with a traceback.
* **failures**: an exception in a rank ends the run (the other ranks are terminated) and
  is raised in the test as :class:`RankFailure` carrying that rank's traceback.

Where torch.distributed or gloo is unavailable, ``run_ranks`` skips the test.
"""

from __future__ import annotations

import contextlib
import datetime
import multiprocessing
import re
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch

_PRELOAD = ["torch", "torch.distributed", "torch.distributed.tensor", "optree", "funcreg"]
_STORE_TIMEOUT = datetime.timedelta(seconds=30)


class RankFailure(AssertionError):
    """A rank raised; the message holds its traceback."""


class Checks:
    """Collects the failed checks of a battery, so that one run reports all of them."""

    def __init__(self, rank: int) -> None:
        self.rank = rank
        self.failed: list[str] = []

    def __call__(self, name: str, ok: Any, detail: Any = "") -> bool:
        """Record check ``name`` as failed unless ``ok`` is true; returns ``bool(ok)``."""
        if not ok:
            self.failed.append(f"{name}: {detail}" if detail != "" else name)
        return bool(ok)

    @contextlib.contextmanager
    def raises(self, name: str, kind: type[BaseException], match: str = "") -> Iterator[None]:
        """The block must raise ``kind`` with a message that ``re.search``-es ``match``."""
        try:
            yield
        except kind as error:
            self(name, re.search(match, str(error)), f"message {str(error)!r}")
        except Exception as error:
            self(name, False, f"raised {type(error).__name__}: {error}")
        else:
            self(name, False, f"did not raise {kind.__name__}")

    def attempt(self, name: str, fn: Callable[[], Any]) -> None:
        """Run ``fn``, a check made of assertions; record it as failed if it raises."""
        try:
            fn()
        except Exception as error:
            first = str(error).strip().splitlines()[0][:300] if str(error).strip() else ""
            self(name, False, f"{type(error).__name__}: {first}")

    def done(self) -> None:
        """Fail the rank if any check failed."""
        assert not self.failed, f"rank {self.rank}: failed checks: {self.failed}"


def _rank_main(
    rank: int, fn: Callable[..., Any], world: int, port: int, seed: int,
    pg_timeout: float, args: tuple[Any, ...],
) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    torch.manual_seed(seed)
    store = dist.TCPStore("127.0.0.1", port, world_size=world + 1, is_master=False,
                          timeout=_STORE_TIMEOUT)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=pg_timeout))
    try:
        fn(rank, world, *args)
    finally:
        dist.destroy_process_group()


def run_ranks(
    fn: Callable[..., Any], *args: Any, world: int = 2, timeout: float = 60.0, seed: int = 0,
) -> None:
    """Run ``fn(rank, world, *args)`` on ``world`` gloo ranks; return when all finished.

    ``fn`` must be a module-level function (ranks import it by name) and ``args``
    picklable. Raises :class:`RankFailure` with the traceback of the first rank that
    raised, and ``TimeoutError`` if the ranks are still running after ``timeout``
    seconds (they are killed).
    """
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("needs torch.distributed with the gloo backend")
    if "forkserver" not in multiprocessing.get_all_start_methods():
        pytest.skip("needs the forkserver start method")
    import torch.multiprocessing as mp
    from torch.multiprocessing.spawn import ProcessExitedException, ProcessRaisedException

    # Only takes effect before the server starts, that is on the first call.
    multiprocessing.get_context("forkserver").set_forkserver_preload(_PRELOAD)
    store = dist.TCPStore("127.0.0.1", 0, world_size=world + 1, is_master=True,
                          wait_for_workers=False, timeout=_STORE_TIMEOUT)
    context = mp.start_processes(
        _rank_main, args=(fn, world, store.port, seed, timeout / 2, args), nprocs=world,
        join=False, start_method="forkserver",
    )
    deadline = time.monotonic() + timeout
    try:
        while not context.join(timeout=0.1):
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{fn.__name__} on {world} ranks: still running after {timeout} s, killed "
                    "(a collective that not every rank made?)"
                )
    except (ProcessRaisedException, ProcessExitedException) as error:  # the rank's traceback
        raise RankFailure(f"{fn.__name__}: rank {error.error_index}: {error.msg}") from None
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()
        for process in context.processes:
            process.join(5)
