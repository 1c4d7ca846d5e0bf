"""The multi-process harness of tests/_dist.py: failures and hangs come back to pytest."""

from __future__ import annotations

import time

import pytest
import torch

from _dist import Checks, RankFailure, run_ranks


def _seeded_and_failing(rank: int, world: int) -> None:
    import torch.distributed as dist

    check = Checks(rank)
    check("one thread per rank", torch.get_num_threads() == 1)
    draws: list[float] = [0.0] * world
    dist.all_gather_object(draws, torch.rand(()).item())  # seeded alike on every rank
    check("same seed on every rank", len(set(draws)) == 1, draws)
    check.done()
    assert rank == 0, f"rank {rank}: deliberate failure"


def _sleeping(rank: int, world: int) -> None:
    time.sleep(60)


def _waiting_alone(rank: int, world: int) -> None:
    import torch.distributed as dist

    if rank == 0:
        time.sleep(60)
    dist.barrier()  # rank 1 waits for a peer that never comes


def test_a_rank_failure_comes_back_with_its_traceback() -> None:
    with pytest.raises(RankFailure, match="(?s)rank 1.*deliberate failure") as info:
        run_ranks(_seeded_and_failing, timeout=30)
    assert "Traceback" in str(info.value) and "failed checks" not in str(info.value)


def test_ranks_past_the_deadline_are_killed() -> None:
    start = time.monotonic()
    with pytest.raises(TimeoutError, match="still running after 3"):
        run_ranks(_sleeping, timeout=3)
    assert time.monotonic() - start < 10


def test_a_collective_without_its_peer_times_out_inside_the_rank() -> None:
    start = time.monotonic()
    with pytest.raises(RankFailure, match="rank 1"):
        run_ranks(_waiting_alone, timeout=4)
    assert time.monotonic() - start < 4
