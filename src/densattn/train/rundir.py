"""A run directory, opened for writing by one process at a time: :class:`RunDirectory`.

Opening one checks ``--out`` / ``--resume`` before any work is done, takes an exclusive OS lock (``fcntl.flock`` on
``RUN/.lock``; the kernel releases it when the process exits or crashes), and removes temporary files that killed
writers left behind. A second process opening the same directory fails at once.

Under ``torchrun`` (:mod:`densattn.distributed`) every rank opens the run directory: rank 0 validates and locks it
as above and every other rank receives rank 0's verdict (the same error, or a view of the directory without a lock
of its own), then the ranks prove that they see the same directory. Rank 0's lock covers the whole job: when any
rank dies, ``torchrun`` stops the others and the OS releases the lock with rank 0, so ``--resume`` can continue.
The layout::

    RUN/config.json                 the resolved configuration (``--resume`` refuses a different one)
    RUN/metrics.json, metrics.csv   k-fold summary and per-fold rows
    RUN/adapter_config.json, adapter_model.safetensors   fold 0's best model (``densattn.load_adapter(RUN)``)
    RUN/folds/K/adapter/            fold K's best model
    RUN/folds/K/last.safetensors    fold K's model after its last epoch
    RUN/folds/K/result.json         fold K's test metrics, history, timing (written last: the fold is finished)
    RUN/folds/K/state.pt            fold K's training checkpoint while it runs (deleted when it finishes)
    RUN/curves.png, confusion.png   plots

Example:
    >>> import tempfile
    >>> with RunDirectory(tempfile.mkdtemp() + "/run") as run:
    ...     run.write_config({"method": "demo"})
    ...     run.finished_folds()
    []
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
from pathlib import Path
from typing import Any

from densattn.distributed import Distributed, current
from densattn.io import atomic_write_json, json_default, read_json, remove_stale_temp_files

__all__ = ["RunDirectory", "RunLockedError"]

LOCK_NAME = ".lock"
_IGNORED = {LOCK_NAME}
_SHARED_TOKEN = ".densattn-shared-"  # a token file of Distributed.check_shared_directory


class RunLockedError(ValueError):
    """Another process holds the run directory's lock.

    Example:
        >>> import tempfile
        >>> folder = tempfile.TemporaryDirectory()
        >>> first = RunDirectory(folder.name + "/run")
        >>> RunDirectory(folder.name + "/run")  # the lock is per open file: a second opener is refused
        Traceback (most recent call last):
        ...
        densattn.train.rundir.RunLockedError: another densattn process is writing .../run (it holds .../run/.lock); ...
        >>> first.close(); folder.cleanup()
    """


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, default=json_default)


def _with_train_defaults(config: dict[str, Any]) -> dict[str, Any]:
    """A recorded config with the training settings a newer densattn added filled in with their defaults, so a run
    started before they existed can still be resumed."""
    from densattn.train.config import TrainConfig

    train = config.get("train")
    if not isinstance(train, dict):
        return config
    try:
        return {**config, "train": {**TrainConfig(device=train.get("device", "cpu")).to_dict(), **train}}
    except ValueError:  # e.g. a CUDA run resumed where CUDA is missing: compared as recorded
        return config


class RunDirectory:
    """Validate, lock and lay out one run directory.

    Args:
        path: the run directory (created if missing).
        resume: continue an existing run; without it the directory must be new, empty, or hold only a
            configuration from an attempt that never finished a fold (it is then reused from scratch).
        dist: the ranks sharing this run (default :func:`densattn.distributed.current`); only rank 0 locks and
            writes the configuration.

    Raises:
        ValueError: ``path`` is a file, is not writable, holds other files (without ``resume``), or is locked by
            another process (:class:`RunLockedError`), or (several ranks) not the same directory on every rank.
            Every message names the path and what to do.

    Example:
        >>> import tempfile
        >>> folder = tempfile.TemporaryDirectory()
        >>> with RunDirectory(folder.name + "/run") as run:
        ...     run.write_config({"method": "conv", "folds": 5})
        ...     atomic_write_json(run.fold_dir(0) / "result.json", {"accuracy": 0.9})
        ...     run.finished_folds(), run.fold_result(0)
        ([0], {'accuracy': 0.9})
        >>> RunDirectory(folder.name + "/run")  # a finished fold is there: new runs are refused
        Traceback (most recent call last):
        ...
        ValueError: run directory .../run is not empty; pass --resume to continue it or choose another --out
        >>> with RunDirectory(folder.name + "/run", resume=True) as run:
        ...     run.write_config({"method": "daam", "folds": 5})
        Traceback (most recent call last):
        ...
        ValueError: --resume: .../run was started with a different configuration (differs in ['method']); ...
        >>> folder.cleanup()
    """

    def __init__(self, path: str | Path, *, resume: bool = False, dist: Distributed | None = None) -> None:
        self.path = Path(path)
        self.resume = resume
        self.dist = dist if dist is not None else current()
        self._lock_fd: int | None = None
        self._created = False
        self.dist.run_on_main(self._open)  # rank 0 validates and locks; every rank gets its verdict
        try:
            self.dist.check_shared_directory(self.path, "--out")
        except BaseException:
            self.close()
            raise

    def _open(self) -> None:
        self._created = not self.path.exists()
        if self.path.exists() and not self.path.is_dir():
            raise ValueError(f"--out {self.path} is a file, not a directory; choose a directory path for the run")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise ValueError(
                f"cannot write the run directory {self.path}: {err.strerror}; choose a writable --out"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            if err.errno in (errno.EAGAIN, errno.EACCES):
                raise RunLockedError(
                    f"another densattn process is writing {self.path} (it holds {self.path / LOCK_NAME}); wait "
                    "for it to finish or choose another --out"
                ) from None
            raise
        self._lock_fd = fd
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            remove_stale_temp_files(self.path)
            self._check_contents()
        except BaseException:
            self.close()
            raise

    def _check_contents(self) -> None:
        entries = [p for p in self.path.iterdir() if p.name not in _IGNORED and not p.name.startswith(_SHARED_TOKEN)]
        if not entries or self.resume:
            return
        started = (
            (self.path / "metrics.json").exists()
            or any(self.path.glob("folds/*/result.json"))
            or any(self.path.glob("folds/*/state.pt"))
        )
        only_config = all(p.name in ("config.json", "folds") for p in entries)
        if only_config and not started:
            for stale in (self.path / "config.json",):
                stale.unlink(missing_ok=True)  # an attempt that stopped before training: start it afresh
            return
        raise ValueError(
            f"run directory {self.path} is not empty; pass --resume to continue it or choose another --out"
        )

    # -- lifetime ------------------------------------------------------------------------------------------------
    def close(self) -> None:
        """Release the lock (also done by the OS when the process ends). A directory this object created and
        nothing was written into is removed again, so a run refused before any work leaves nothing behind."""
        if self._lock_fd is None:
            return
        fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
        os.close(self._lock_fd)
        self._lock_fd = None
        if self._created and [p.name for p in self.path.iterdir()] == [LOCK_NAME]:
            (self.path / LOCK_NAME).unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                self.path.rmdir()

    def __enter__(self) -> RunDirectory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()

    # -- contents ------------------------------------------------------------------------------------------------
    def write_config(self, config: dict[str, Any]) -> None:
        """Write ``config.json`` (rank 0); when resuming, refuse a configuration that differs from the recorded one
        (on every rank)."""
        self.dist.run_on_main(lambda: self._write_config(config))

    def _write_config(self, config: dict[str, Any]) -> None:
        path = self.path / "config.json"
        if self.resume and path.exists():
            previous = _with_train_defaults(read_json(path))
            if _canonical(previous) != _canonical(config):
                changed = sorted(
                    k for k in set(previous) | set(config) if _canonical(previous.get(k)) != _canonical(config.get(k))
                )
                raise ValueError(
                    f"--resume: {self.path} was started with a different configuration (differs in {changed}); "
                    "rerun with the original settings or use a new --out"
                )
        atomic_write_json(path, config)

    def fold_dir(self, k: int) -> Path:
        """``RUN/folds/K`` (created)."""
        path = self.path / "folds" / str(k)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def finished_folds(self) -> list[int]:
        """Folds whose ``result.json`` exists."""
        return sorted(int(p.parent.name) for p in self.path.glob("folds/*/result.json") if p.parent.name.isdigit())

    def fold_result(self, k: int) -> dict[str, Any]:
        """Fold ``k``'s ``result.json``."""
        return read_json(self.path / "folds" / str(k) / "result.json")
