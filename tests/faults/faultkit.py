"""Helpers of the fault tests: the `densattn` command run in this process or as a subprocess, and small file systems
(tmpfs) where the machine lets a test mount them."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from densattn.cli import main

#: the tiny task every fault test trains on: 60 Debian fortunes (4 classes) on the bundled MiniLM
DATA = ["--data", "fortunes", "--max-samples", "60", "--encoder", "minilm"]


def train_argv(out: Path, cache: Path, *extra: str, head: str = "pool", folds: int = 2, epochs: int = 2) -> list[str]:
    """``densattn train`` arguments for the tiny task (``extra`` flags override nothing; they are appended)."""
    return [
        "train",
        *DATA,
        "--head",
        head,
        "--folds",
        str(folds),
        "--epochs",
        str(epochs),
        "--out",
        str(out),
        "--cache-dir",
        str(cache),
        *extra,
    ]


def run_main(argv: list[str], capsys) -> tuple[int, str]:
    """``densattn ARGV`` in this process: ``(exit status, stderr)``."""
    capsys.readouterr()
    code = main(argv)
    return code, capsys.readouterr().err


def cli_command(argv: list[str]) -> list[str]:
    return [sys.executable, "-m", "densattn.cli", *argv]


def cli_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def run_cli(argv: list[str], *, timeout: float = 300) -> subprocess.CompletedProcess:
    """``densattn ARGV`` as a separate process (the way a user runs it)."""
    return subprocess.run(cli_command(argv), capture_output=True, text=True, timeout=timeout, env=cli_env())


def start_cli(argv: list[str]) -> subprocess.Popen:
    return subprocess.Popen(cli_command(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env())


def mount_tmpfs(path: Path, size: str, *, read_only: bool = False) -> str | None:
    """Mount a tmpfs of ``size`` at ``path`` (needs root); ``None`` when mounted, else why it could not be."""
    path.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if read_only else "")
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
    except OSError as err:
        return str(err)
    return None if done.returncode == 0 else done.stderr.decode().strip() or f"mount exited {done.returncode}"


@contextlib.contextmanager
def tmpfs(path: Path, size: str, *, read_only: bool = False):
    """A tmpfs of ``size`` mounted at ``path`` for the block; skips the test where mounting is not allowed."""
    why = mount_tmpfs(path, size, read_only=read_only)
    if why is not None:
        pytest.skip(f"cannot mount a tmpfs here: {why}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


@contextlib.contextmanager
def read_only_folder(path: Path):
    """A folder nothing can be written into: a read-only tmpfs (root), else a folder without write permission
    (other users); skips where neither works (root without mount rights ignores permissions)."""
    if mount_tmpfs(path, "1m", read_only=True) is None:
        try:
            yield path
        finally:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)
        return
    if os.geteuid() == 0:
        pytest.skip("cannot mount a read-only tmpfs, and root ignores folder permissions")
    path.chmod(0o555)
    try:
        yield path
    finally:
        path.chmod(0o755)


def remount(path: Path, size: str) -> None:
    """Grow (or shrink) a tmpfs mounted by :func:`tmpfs`."""
    subprocess.run(["mount", "-o", f"remount,size={size}", str(path)], check=True, capture_output=True)


def temp_files(folder: Path) -> list[Path]:
    """Temporary files of densattn's atomic writes (``.NAME.tmpPID-XXXXXXXX``) under ``folder``."""
    return sorted(p for p in folder.rglob(".*") if ".tmp" in p.name)


def dead_pid() -> int:
    """The process id of a process that has exited (as a killed writer's would be)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid
