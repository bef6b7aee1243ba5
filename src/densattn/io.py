"""Every file densattn writes goes through here: atomic writes, JSON, and clean-up after killed writers.

A write goes to a temporary file beside the target (``.NAME.tmpPID-XXXX[.SUFFIX]``) and is renamed over it, so a
reader never sees a half-written file. A failed write (an exception, a full disk) removes its temporary file; a
writer killed with ``kill -9`` leaves one behind, which :func:`remove_stale_temp_files` deletes on the next start
(it only removes files whose process id is no longer alive).

Example:
    >>> import tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> atomic_write_json(folder / "a.json", {"x": 1})
    >>> read_json(folder / "a.json")
    {'x': 1}
"""

from __future__ import annotations

import errno
import json
import os
import re
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "atomic_copy",
    "atomic_save_file",
    "atomic_torch_save",
    "atomic_write",
    "atomic_write_json",
    "atomic_write_text",
    "json_default",
    "read_json",
    "remove_stale_temp_files",
    "save_figure",
]

_TEMP = re.compile(r"^\..+\.tmp(?P<pid>\d+)-[0-9a-f]{8}(\.[A-Za-z0-9]+)?$")


def _temp_path(path: Path) -> Path:
    suffix = path.suffix if path.suffix in (".png", ".pdf", ".svg") else ""  # matplotlib infers the format from it
    return path.with_name(f".{path.name}.tmp{os.getpid()}-{uuid.uuid4().hex[:8]}{suffix}")


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on a temporary path beside ``path``, then rename it over ``path``.

    The temporary file is removed when ``write`` or the rename fails, and the error is re-raised; an OS error names
    ``path`` (not the temporary file). A full disk is reported as ``OSError(ENOSPC)`` naming ``path`` whatever the
    writer raised (``torch.save`` and safetensors raise their own errors for it).

    Example:
        >>> import tempfile, pathlib
        >>> target = pathlib.Path(tempfile.mkdtemp()) / "a.txt"
        >>> def fails(tmp):
        ...     tmp.write_text("half")
        ...     raise OSError(28, "No space left on device")
        >>> atomic_write(target, fails)
        Traceback (most recent call last):
        ...
        OSError: [Errno 28] No space left on device: '...a.txt'
        >>> sorted(target.parent.iterdir())  # no temporary file left
        []
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_path(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    except Exception as err:
        full = _disk_full(err, path.parent)
        tmp.unlink(missing_ok=True)
        if full and not (isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT)):
            raise OSError(errno.ENOSPC, "No space left on device", str(path)) from err
        if isinstance(err, OSError) and (err.filename is None or str(err.filename) == str(tmp)):
            err.filename = str(path)
        raise
    except BaseException:  # KeyboardInterrupt, SystemExit
        tmp.unlink(missing_ok=True)
        raise


def _disk_full(err: Exception, folder: Path) -> bool:
    """Whether a failed write failed because the disk (or the quota) is full."""
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    if "No space left on device" in str(err) or "os error 28" in str(err):
        return True
    if isinstance(err, (TypeError, ValueError, AttributeError, KeyError)):  # a bug in what is written, not the disk
        return False
    try:
        stat = os.statvfs(folder)
    except (OSError, AttributeError):  # no statvfs on this platform
        return False
    return stat.f_bavail * stat.f_frsize < 1 << 20


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_copy(source: str | Path, target: str | Path) -> None:
    """Copy the bytes of ``source`` to ``target`` atomically."""
    import shutil

    atomic_write(target, lambda tmp: shutil.copyfile(source, tmp))


def json_default(obj: Any) -> Any:
    """JSON encoding of numpy scalars and arrays, paths, sets and tuples (anything else is an error)."""
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def atomic_write_json(path: str | Path, obj: Any, *, indent: int | None = 2) -> None:
    """Write ``obj`` as JSON to ``path`` atomically (numpy values and paths are converted)."""
    atomic_write_text(path, json.dumps(obj, indent=indent, default=json_default))


def read_json(path: str | Path) -> Any:
    """Parse a JSON file; a missing or malformed file raises an error that names it.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not valid JSON (the message names the file, line and column).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} does not exist") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(
            f"{path} is not valid JSON (line {err.lineno}, column {err.colno}: {err.msg}); "
            "it may be truncated or edited by hand"
        ) from None


def atomic_save_file(tensors: dict[str, Any], path: str | Path, metadata: dict[str, str] | None = None) -> None:
    """``safetensors.torch.save_file`` atomically (tensors are made contiguous and moved to the CPU)."""
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    atomic_write(path, lambda tmp: save_file(state, str(tmp), metadata=metadata))


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` atomically. Only save tensors and plain values: densattn reads these files back with
    ``torch.load(weights_only=True)``, which refuses arbitrary Python objects."""
    import torch

    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def save_figure(fig: Any, path: str | Path, *, dpi: int = 120) -> None:
    """Save a matplotlib figure atomically (tight bounding box) and close it."""
    import matplotlib.pyplot as plt

    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=dpi, bbox_inches="tight"))
    finally:
        plt.close(fig)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_stale_temp_files(directory: str | Path, *, recursive: bool = True) -> list[Path]:
    """Delete temporary files left in ``directory`` by writers that no longer run; returns what was removed."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    removed = []
    for path in directory.rglob(".*") if recursive else directory.glob(".*"):
        match = _TEMP.match(path.name)
        if match and path.is_file() and not _alive(int(match["pid"])):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed
