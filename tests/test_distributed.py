"""The rank helpers of densattn.distributed: collectives, error agreement (no rank waits forever for one that
failed), work sharing, and the loss weights that make data-parallel gradients equal the whole batch's."""

from __future__ import annotations

import pytest
import torch

from densattn.distributed import Distributed, RankFailedError, current, local_device, rank_seed


def test_one_process_is_rank_zero_of_one():
    ctx = current()
    assert (ctx.rank, ctx.world_size, ctx.enabled, ctx.is_main) == (0, 1, False, True)
    assert ctx.all_gather("x") == ["x"] and ctx.broadcast(3) == 3
    with pytest.raises(KeyError):
        ctx.run_all(lambda: {}["missing"])  # one process: its own error, unchanged


def test_rank_out_of_range_is_refused():
    with pytest.raises(ValueError, match="rank must be in 0..world_size-1"):
        Distributed(rank=2, world_size=2)


@pytest.mark.parametrize("world", [2, 3, 5])
@pytest.mark.parametrize("n", [1, 2, 7, 64])
def test_batch_shares_partition_the_batch_and_weights_give_the_mean(world, n):
    index = torch.randperm(100)[:n]
    losses = torch.rand(100)  # per-example losses
    shares = [Distributed(rank=r, world_size=world).batch_share(index) for r in range(world)]
    real = torch.cat([part for part, weight in shares if weight > 0])
    assert torch.equal(real, index)  # contiguous parts, in order, covering the batch once
    # DDP averages the ranks' gradients: mean over ranks of weight_r * mean(loss of part_r) = mean(loss of batch)
    averaged = sum(weight * losses[part].mean() for part, weight in shares) / world
    torch.testing.assert_close(averaged, losses[index].mean())
    for part, weight in shares:
        assert len(part) >= 1  # every rank joins the all-reduce, an empty one with one example at weight 0
        assert weight == 0 or weight == pytest.approx(len(part) * world / n)


def test_local_device_validates():
    assert local_device("cpu") == "cpu"
    with pytest.raises(ValueError, match="--device must be cpu, cuda, cuda:N or auto"):
        local_device("gpu")
    if not torch.cuda.is_available():
        assert local_device("auto") == "cpu"
        with pytest.raises(ValueError, match="CUDA is not available"):
            local_device("cuda")


def test_rank_seed_keeps_rank_zero_and_separates_the_others():
    seeds = [rank_seed(5, r) for r in range(8)]
    assert seeds[0] == 5 and len(set(seeds)) == 8 and all(0 <= s < 2**63 for s in seeds)


def _collectives(rank):
    ctx = current()
    out = {"ctx": (ctx.rank, ctx.world_size), "gather": ctx.all_gather(rank * 10), "bcast": ctx.broadcast(f"r{rank}")}
    out["share"] = ctx.share(list(range(7)))
    out["sum"] = ctx.all_reduce_sum(torch.tensor([rank + 1.0])).item()

    def fail_on_one():
        if rank == 1:
            raise ValueError("bad input on rank 1")
        return "fine"

    try:
        ctx.run_all(fail_on_one)
    except ValueError as err:  # RankFailedError is a ValueError: the CLI prints it as one line
        out["run_all"] = (type(err).__name__, str(err))

    def fail_on_main():
        raise ValueError("--out is not empty")

    try:
        ctx.run_on_main(fail_on_main)
    except ValueError as err:
        out["run_on_main"] = (type(err).__name__, str(err))

    def crash_on_main():
        raise KeyError("oops")

    try:
        ctx.run_on_main(crash_on_main)
    except (KeyError, RankFailedError) as err:
        out["crash"] = type(err).__name__, str(err)
    out["value"] = ctx.run_on_main(lambda: {"written_by": rank})
    return out


def test_collectives_and_error_agreement_on_two_ranks(run_ranks):
    r0, r1 = run_ranks(_collectives, 2)
    assert r0["ctx"] == (0, 2) and r1["ctx"] == (1, 2)
    assert r0["gather"] == r1["gather"] == [0, 10] and r0["bcast"] == r1["bcast"] == "r0"
    assert r0["share"] == [0, 2, 4, 6] and r1["share"] == [1, 3, 5]
    assert r0["sum"] == r1["sum"] == 3.0
    assert r0["run_all"] == ("RankFailedError", "rank 1 failed: ValueError: bad input on rank 1")
    assert r1["run_all"] == ("ValueError", "bad input on rank 1")
    assert r0["run_on_main"] == ("ValueError", "--out is not empty")
    assert r1["run_on_main"] == ("RankFailedError", "--out is not empty")  # rank 0's own words
    assert r0["crash"] == ("KeyError", "'oops'")
    assert r1["crash"] == ("RankFailedError", "rank 0 failed: KeyError: 'oops'")
    assert r0["value"] == r1["value"] == {"written_by": 0}
