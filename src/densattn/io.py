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
    """Write ``text`` (UTF-8) to ``path`` atomically (missing parent folders are created).

    Example:
        >>> import tempfile, pathlib
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     target = pathlib.Path(folder) / "notes" / "a.txt"
        ...     atomic_write_text(target, "héllo")
        ...     target.read_text(encoding="utf-8"), [p.name for p in target.parent.iterdir()]
        ('héllo', ['a.txt'])
    """
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_copy(source: str | Path, target: str | Path) -> None:
    """Copy the bytes of ``source`` to ``target`` atomically.

    Example:
        >>> import tempfile, pathlib
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     source = pathlib.Path(folder) / "a.bin"
        ...     _ = source.write_bytes(bytes(range(5)))
        ...     atomic_copy(source, pathlib.Path(folder) / "copy" / "b.bin")
        ...     list((pathlib.Path(folder) / "copy" / "b.bin").read_bytes())
        [0, 1, 2, 3, 4]
    """
    import shutil

    atomic_write(target, lambda tmp: shutil.copyfile(source, tmp))


def json_default(obj: Any) -> Any:
    """JSON encoding of numpy scalars and arrays, paths, sets and tuples (anything else is an error).

    Example:
        >>> import json, pathlib
        >>> json.dumps({"n": np.int64(3), "x": np.float32(0.5), "a": np.arange(3), "p": pathlib.Path("r/x"),
        ...             "s": {"b", "a"}}, default=json_default)
        '{"n": 3, "x": 0.5, "a": [0, 1, 2], "p": "r/x", "s": ["a", "b"]}'
        >>> json_default(object())
        Traceback (most recent call last):
        ...
        TypeError: not JSON serialisable: object
    """
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
    """Write ``obj`` as JSON to ``path`` atomically (numpy values and paths are converted, see
    :func:`json_default`).

    Example:
        >>> import tempfile, pathlib
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     atomic_write_json(pathlib.Path(folder) / "m.json", {"acc": np.float64(0.75)}, indent=None)
        ...     (pathlib.Path(folder) / "m.json").read_text()
        '{"acc": 0.75}'
    """
    atomic_write_text(path, json.dumps(obj, indent=indent, default=json_default))


def read_json(path: str | Path) -> Any:
    """Parse a JSON file; a missing or malformed file raises an error that names it.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not valid JSON (the message names the file, line and column).

    Example:
        >>> import tempfile, pathlib
        >>> folder = tempfile.TemporaryDirectory()
        >>> good, bad = pathlib.Path(folder.name) / "good.json", pathlib.Path(folder.name) / "bad.json"
        >>> _ = good.write_text('{"a": [1, 2]}'), bad.write_text('{"a": [1, 2')
        >>> read_json(good)
        {'a': [1, 2]}
        >>> read_json(bad)
        Traceback (most recent call last):
        ...
        ValueError: .../bad.json is not valid JSON (line 1, column 12: ...); it may be truncated or edited by hand
        >>> folder.cleanup()
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
    """``safetensors.torch.save_file`` atomically (tensors are made contiguous and moved to the CPU).

    Example:
        >>> import tempfile, pathlib, torch
        >>> from safetensors.torch import load_file
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     path = pathlib.Path(folder) / "w.safetensors"
        ...     atomic_save_file({"w": torch.arange(6.0).reshape(2, 3).t()}, path)  # a non-contiguous view
        ...     load_file(str(path))["w"].tolist()
        [[0.0, 3.0], [1.0, 4.0], [2.0, 5.0]]
    """
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    atomic_write(path, lambda tmp: save_file(state, str(tmp), metadata=metadata))


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` atomically. Only save tensors and plain values: densattn reads these files back with
    ``torch.load(weights_only=True)``, which refuses arbitrary Python objects.

    Example:
        >>> import tempfile, pathlib, torch
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     path = pathlib.Path(folder) / "state.pt"
        ...     atomic_torch_save({"step": 3, "w": torch.ones(2)}, path)
        ...     torch.load(path, weights_only=True)
        {'step': 3, 'w': tensor([1., 1.])}
    """
    import torch

    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def save_figure(fig: Any, path: str | Path, *, dpi: int = 120) -> None:
    """Save a matplotlib figure atomically (tight bounding box) and close it.

    Example:
        >>> import tempfile, pathlib
        >>> import matplotlib
        >>> matplotlib.use("Agg")
        >>> import matplotlib.pyplot as plt
        >>> fig, ax = plt.subplots(figsize=(1, 1))
        >>> _ = ax.plot([0, 1], [1, 0])
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     save_figure(fig, pathlib.Path(folder) / "curve.png", dpi=20)
        ...     (pathlib.Path(folder) / "curve.png").read_bytes()[:4], plt.fignum_exists(fig.number)
        (b'\\x89PNG', False)
    """
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
    """Delete temporary files left in ``directory`` by writers that no longer run; returns what was removed.

    A temporary file is named ``.NAME.tmpPID-XXXXXXXX[.SUFFIX]``; it is stale when process ``PID`` no longer exists.

    Example:
        >>> import tempfile, pathlib
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     folder = pathlib.Path(folder)
        ...     dead = folder / ".a.json.tmp999999999-0123abcd"  # no process has this id
        ...     mine = folder / f".b.json.tmp{os.getpid()}-0123abcd"  # a live writer's file is kept
        ...     _ = dead.write_text("{"), mine.write_text("{")
        ...     [p.name for p in remove_stale_temp_files(folder)], sorted(p.name for p in folder.iterdir())
        (['.a.json.tmp999999999-0123abcd'], ['.b.json.tmp...-0123abcd'])
    """
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
