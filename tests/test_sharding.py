"""How a distributed run splits batches and evaluation sets (no processes needed: the rules are
pure functions of rank and world size; tests/test_distributed.py runs the real thing)."""

from __future__ import annotations

import pytest
import torch

from mnistkit.data.batches import memory_batches
from mnistkit.data.types import Split
from mnistkit.errors import RunError
from mnistkit.training.distributed import SINGLE, Context


@pytest.mark.parametrize("world", [1, 2, 3, 4])
@pytest.mark.parametrize("n", [0, 1, 5, 63, 64, 359])
def test_evaluation_shards_cover_every_sample_once(world: int, n: int) -> None:
    bounds = [Context(rank=r, world_size=world).shard_bounds(n) for r in range(world)]
    assert bounds[0][0] == 0 and bounds[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:], strict=False))  # contiguous, no gap
    sizes = [hi - lo for lo, hi in bounds]
    assert max(sizes) - min(sizes) <= 1  # no padding: sizes differ by at most one
    assert sizes == [len(p) for p in torch.arange(n).tensor_split(world)]  # the same rule as training


@pytest.mark.parametrize(("batch", "drop_last"), [(63, False), (64, True), (10, False)])
def test_training_shards_rebuild_each_global_batch(batch: int, drop_last: bool) -> None:
    n, world = 203, 3
    split = Split(torch.arange(n).view(n, 1), torch.arange(n))
    order = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    whole = [yb for _, yb in memory_batches(split, batch, order, drop_last)]
    parts = [list(memory_batches(split, batch, order, drop_last, (r, world))) for r in range(world)]
    assert all(len(p) == len(whole) for p in parts)  # every rank takes every step
    for step, global_batch in enumerate(whole):
        rebuilt = torch.cat([parts[r][step][1] for r in range(world)])
        assert torch.equal(rebuilt, global_batch)  # in order, each sample once


def test_a_batch_smaller_than_the_process_count_is_refused() -> None:
    ctx = Context(rank=0, world_size=4)
    ctx.check_shards(1438, 64, drop_last=False)  # last batch 1438 % 64 = 30 >= 4: fine
    with pytest.raises(RunError, match="fewer than the 4 processes.*data.drop_last: true"):
        ctx.check_shards(66, 64, drop_last=False)  # last batch of 2 samples
    ctx.check_shards(66, 64, drop_last=True)  # dropped: fine
    with pytest.raises(RunError, match="batch of 2 sample"):
        ctx.check_shards(100, 2, drop_last=False)
    SINGLE.check_shards(1, 64, drop_last=False)  # one process: anything goes


def test_single_context_makes_no_collectives() -> None:
    t = torch.tensor([1.0, 2.0])
    assert SINGLE.all_reduce_sum(t) is t and SINGLE.broadcast_object("x") == "x"
    assert SINGLE.gather_objects(3) == [3] and SINGLE.any(True) and not SINGLE.any(False)
    assert not torch.distributed.is_initialized()
