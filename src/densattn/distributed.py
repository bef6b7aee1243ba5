"""Running on several processes or machines with ``torch.distributed`` (launched with ``torchrun``).

Every rank runs the same command (SPMD). densattn joins the process group that ``torchrun`` describes in the
environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``) the first time it needs it
(:func:`current`): gloo for CPU tensors and, when CUDA is present, NCCL for CUDA tensors (``"cpu:gloo,cuda:nccl"``),
with each rank on GPU ``LOCAL_RANK``. A script that initialises the group itself is used as it is.

What each stage does with N ranks:

* feature extraction (:func:`densattn.data.cache.cached_features`): each rank encodes its share of the cache's
  shards; rank 0 verifies them and writes the manifest;
* heads and fusion heads (:func:`densattn.train.run_folds`): each rank trains whole folds; rank 0 writes metrics,
  plots and the adapter;
* end-to-end methods: every fold trains data-parallel (``DistributedDataParallel``), each rank on its part of every
  batch, rank 0 writing checkpoints.

The directories that ranks share (the cache, the run directory) must be the same directory on every rank
(:meth:`Distributed.check_shared_directory` proves it with a token file and fails clearly otherwise).

Example:
    >>> ctx = current()          # no torchrun here: one process
    >>> ctx.rank, ctx.world_size, ctx.is_main
    (0, 1, True)
    >>> ctx.share(list(range(5)))
    [0, 1, 2, 3, 4]
    >>> ctx.run_on_main(lambda: 42)
    42
"""

from __future__ import annotations

import atexit
import hashlib
import os
import re
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import torch

__all__ = ["Distributed", "RankFailedError", "current", "local_device", "rank_seed", "to_device"]

T = TypeVar("T")

#: how long a rank waits for the others at a collective before giving up (a rank that finished its shards or folds
#: waits there for the slowest one; a rank that dies is caught sooner, by torchrun)
TIMEOUT = timedelta(hours=2)


class RankFailedError(ValueError):
    """Another rank failed; every rank raises this (with that rank's message) instead of waiting forever.

    Example:
        Rank 0 of two, with rank 1's failure report standing in for a real process group:

        >>> class TwoRanks(Distributed):
        ...     def all_gather(self, obj):
        ...         return [obj, (False, "disk full", "OSError: disk full")]  # what rank 1 sends
        >>> TwoRanks(rank=0, world_size=2).run_all(lambda: "my shards are done")
        Traceback (most recent call last):
        ...
        densattn.distributed.RankFailedError: rank 1 failed: OSError: disk full
    """


@dataclass(frozen=True)
class Distributed:
    """This process's place among the ranks, and the few collectives densattn needs.

    Attributes:
        rank: this process's rank (0 .. world_size - 1); rank 0 writes shared files.
        world_size: number of processes.
        local_rank: rank on this machine (selects the GPU).

    With ``world_size == 1`` every method is a local no-op, so code written against this class runs unchanged in
    one process.

    Example:
        Work sharing needs no process group: rank ``r`` of ``n`` takes every ``n``-th item from ``r``.

        >>> [Distributed(rank=r, world_size=3).share(list("abcdefg")) for r in range(3)]
        [['a', 'd', 'g'], ['b', 'e'], ['c', 'f']]
        >>> single = Distributed()
        >>> single.enabled, single.broadcast("x"), single.all_gather(7), single.batch_share(torch.arange(3))
        (False, 'x', [7], (tensor([0, 1, 2]), 1.0))
        >>> Distributed(rank=2, world_size=2)
        Traceback (most recent call last):
        ...
        ValueError: rank must be in 0..world_size-1, got rank=2, world_size=2
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank must be in 0..world_size-1, got rank={self.rank}, world_size={self.world_size}")

    @property
    def enabled(self) -> bool:
        """More than one rank."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 (writes manifests, metrics, checkpoints)."""
        return self.rank == 0

    # -- collectives ---------------------------------------------------------------------------------------------
    def barrier(self) -> None:
        """Wait for every rank."""
        if self.enabled:
            torch.distributed.barrier()

    def broadcast(self, obj: T, src: int = 0) -> T:
        """Rank ``src``'s ``obj`` on every rank (any picklable object)."""
        if not self.enabled:
            return obj
        box = [obj if self.rank == src else None]
        torch.distributed.broadcast_object_list(box, src=src)
        return box[0]

    def all_gather(self, obj: T) -> list[T]:
        """Every rank's ``obj``, in rank order, on every rank."""
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world_size
        torch.distributed.all_gather_object(out, obj)
        return out

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The sum of ``tensor`` over ranks (in place, also returned)."""
        if self.enabled:
            torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.SUM)
        return tensor

    def run_all(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on every rank, then agree on the outcome: when any rank failed, every rank raises (the failing
        rank its own exception, the others :class:`RankFailedError` naming it), so no rank waits forever for one
        that gave up."""
        try:
            value, error = fn(), None
        except Exception as err:  # re-raised below, on every rank
            value, error = None, err
        if not self.enabled:
            if error is not None:
                raise error
            return value
        described = self.all_gather(_describe(error) if error is not None else None)
        failures = [(r, d[2]) for r, d in enumerate(described) if d is not None]
        if error is not None:
            raise error
        if failures:
            rank, msg = failures[0]
            raise RankFailedError(f"rank {rank} failed: {msg}")
        return value

    def run_on_main(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on rank 0 only and give its result (or its error, as :class:`RankFailedError`) to every
        rank."""
        if not self.enabled:
            return fn()
        value, error = None, None
        if self.is_main:
            try:
                value = fn()
            except Exception as err:  # re-raised below, on every rank
                error = err
        value, failure = self.broadcast((value, _describe(error) if error is not None else None))
        if error is not None:
            raise error
        if failure is not None:  # rank 0's own words for a bad input every rank shares (e.g. a non-empty --out)
            is_value_error, message, described = failure
            raise RankFailedError(message if is_value_error else f"rank 0 failed: {described}")
        return value

    # -- work sharing ------------------------------------------------------------------------------------------
    def share(self, items: Sequence[T]) -> list[T]:
        """This rank's items: every ``world_size``-th one, starting at ``rank`` (round robin)."""
        return list(items[self.rank :: self.world_size])

    def batch_share(self, index: torch.Tensor) -> tuple[torch.Tensor, float]:
        """This rank's contiguous part of one global batch ``index`` and the loss weight that makes the ranks'
        averaged gradients equal the gradient of the whole batch's mean loss: ``n_rank * world_size / n``.

        A rank left without examples (a batch smaller than the number of ranks) gets the batch's first example with
        weight 0, so it still takes part in the gradient all-reduce but contributes nothing.

        Example:
            >>> Distributed(rank=1, world_size=2).batch_share(torch.arange(5))
            (tensor([3, 4]), 0.8)
        """
        if not self.enabled:
            return index, 1.0
        part = index.tensor_split(self.world_size)[self.rank]
        if len(part) == 0:
            return index[:1], 0.0
        return part, len(part) * self.world_size / len(index)

    def data_parallel(self, model: torch.nn.Module) -> torch.nn.Module:
        """``model`` wrapped in ``DistributedDataParallel`` (its trainable parameters' gradients are averaged over
        the ranks during ``backward``); the model itself unchanged with one rank. Buffers are not re-broadcast
        every step: every rank sets them from the same data."""
        if not self.enabled:
            return model
        from torch.nn.parallel import DistributedDataParallel

        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        device_ids = [device] if device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=device_ids, broadcast_buffers=False)

    # -- shared directories --------------------------------------------------------------------------------------
    def check_shared_directory(self, path: str | Path, what: str) -> None:
        """Prove that every rank sees the same directory ``path`` (rank 0 writes a token file, the others read it
        back); raise on every rank when one does not.

        Raises:
            ValueError: ``path`` is not shared (e.g. a node-local disk on a multi-node run); the message names the
                ranks and hosts that could not see rank 0's file and the flag ``what`` to change.
        """
        if not self.enabled:
            return
        path = Path(path)
        token = uuid.uuid4().hex if self.is_main else None

        def write() -> str:
            path.mkdir(parents=True, exist_ok=True)
            (path / f".densattn-shared-{token}").write_text(token)
            return token

        token = self.run_on_main(write)
        marker = path / f".densattn-shared-{token}"
        try:
            seen = marker.read_text() == token
        except OSError:
            seen = False
        views = self.all_gather((seen, os.uname().nodename))
        if self.is_main:
            marker.unlink(missing_ok=True)
        blind = [f"rank {r} on {host}" for r, (ok, host) in enumerate(views) if not ok]
        if blind:
            raise ValueError(
                f"{what} {path} is not shared between the ranks: {', '.join(blind)} cannot see the file rank 0 "
                f"wrote there. Every rank must use the same directory: put {what} on a filesystem all nodes mount"
            )

    def check_same(self, value: Any, what: str) -> None:
        """Raise on every rank when ranks disagree on ``value`` (e.g. they were started with different flags).

        Raises:
            ValueError: the ranks that differ from rank 0, and ``what`` they disagree on.
        """
        if not self.enabled:
            return
        digest = hashlib.sha256(repr(value).encode()).hexdigest()
        digests = self.all_gather(digest)
        differ = [r for r, d in enumerate(digests) if d != digests[0]]
        if differ:
            raise ValueError(
                f"ranks {differ} have a different {what} than rank 0: start every rank with the same command and "
                "arguments"
            )


def _describe(error: BaseException) -> tuple[bool, str, str]:
    """``(is a ValueError, its message, "Type: message")``: what other ranks need to re-raise it."""
    return isinstance(error, ValueError), str(error), f"{type(error).__name__}: {error}"


def current() -> Distributed:
    """This process's :class:`Distributed`: from the initialised ``torch.distributed`` process group, or from the
    environment ``torchrun`` sets (the group is then initialised here, once), or one process.

    Example:
        >>> from unittest import mock
        >>> with mock.patch.dict(os.environ, {"WORLD_SIZE": "4"}):  # no MASTER_ADDR: not started by torchrun
        ...     current()
        Distributed(rank=0, world_size=1, local_rank=0)
    """
    import torch.distributed as dist

    if not dist.is_available():
        return Distributed()
    if not dist.is_initialized():
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1 or "MASTER_ADDR" not in os.environ:
            return Distributed()
        _init_from_env()
    rank, world = dist.get_rank(), dist.get_world_size()
    local = int(os.environ.get("LOCAL_RANK", rank))
    return Distributed(rank=rank, world_size=world, local_rank=local)


def _init_from_env() -> None:
    import torch.distributed as dist

    local = int(os.environ.get("LOCAL_RANK", "0"))
    backend = "gloo"
    if torch.cuda.is_available():
        if local >= torch.cuda.device_count():
            raise ValueError(
                f"LOCAL_RANK {local} but this machine has {torch.cuda.device_count()} GPU(s): start at most that many "
                "processes per node (torchrun --nproc-per-node)"
            )
        torch.cuda.set_device(local)
        backend = "cpu:gloo,cuda:nccl"  # objects and CPU tensors over gloo, CUDA tensors over NCCL
    dist.init_process_group(backend=backend, timeout=TIMEOUT)
    atexit.register(_destroy)


def _destroy() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def local_device(device: str = "auto") -> str:
    """The device string this rank should use: ``"auto"`` means CUDA when available; under ``torchrun`` a bare
    ``"cuda"`` becomes this rank's GPU ``"cuda:LOCAL_RANK"`` (an explicit ``"cuda:N"`` is refused when several
    processes share the node: they would all use GPU N).

    Raises:
        ValueError: not one of ``cpu``, ``cuda``, ``cuda:N``, ``auto``; CUDA asked for where there is none; or
            ``cuda:N`` for several processes of one node.

    Example:
        >>> local_device("cpu")
        'cpu'
    """
    if not isinstance(device, str) or not re.fullmatch(r"cpu|cuda(:\d+)?|auto", device):
        raise ValueError(f"--device must be cpu, cuda, cuda:N or auto, got {device!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {device} but CUDA is not available here; use --device cpu (or auto)")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and current().enabled:
        if device == "cuda":
            return f"cuda:{current().local_rank}"
        if int(os.environ.get("LOCAL_WORLD_SIZE", "1")) > 1:
            raise ValueError(
                f"--device {device} would put every process of this node on the same GPU; pass --device cuda "
                "(each process then uses GPU LOCAL_RANK) or start one process per node"
            )
    return device


def to_device(tensor: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """``tensor`` on ``device``; a CPU tensor bound for a GPU goes through pinned memory with a non-blocking copy,
    so the host does not wait for the transfer.

    Example:
        >>> to_device(torch.ones(2), "cpu").tolist()
        [1.0, 1.0]
    """
    device = torch.device(device)
    if device.type == "cuda" and tensor.device.type == "cpu":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def rank_seed(seed: int, rank: int) -> int:
    """``seed`` on rank 0 (so one process reproduces a single-process run) and a seed derived from ``(seed,
    rank)`` elsewhere, for randomness that should differ between ranks (dropout on different examples).

    Example:
        >>> rank_seed(7, 0), rank_seed(7, 1) == rank_seed(7, 1), rank_seed(7, 1) != rank_seed(7, 2)
        (7, True, True)
    """
    if rank == 0:
        return seed
    return int.from_bytes(hashlib.sha256(f"{seed}:{rank}".encode()).digest()[:7], "little")
