"""The ``densattn`` command line.

Sub-commands live in :mod:`densattn.commands`; each module there defines ``register(subparsers)``.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import pkgutil
import sys
import warnings

from densattn import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="densattn",
        description="Density-adaptive attention heads on frozen encoders, and the attention systems they are "
        "compared with.",
    )
    parser.add_argument("--version", action="version", version=f"densattn {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    import densattn.commands as commands

    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"densattn.commands.{info.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(sub)
    return parser


#: what to do about an OS error, by errno
_OS_FIXES = {
    errno.EACCES: "choose a location you can write (--out / --cache-dir) or fix its permissions",
    errno.EPERM: "choose a location you can write (--out / --cache-dir) or fix its permissions",
    errno.EROFS: "the file system is read-only; choose a writable --out / --cache-dir",
    errno.ENOSPC: "the disk is full; free space or choose another --out / --cache-dir (train: rerun with --resume "
    "to continue where it stopped)",
    errno.EDQUOT: "the disk quota is exhausted; free space or choose another --out / --cache-dir",
    errno.EFBIG: "the file is larger than this system allows; choose another --out / --cache-dir",
    errno.ENOTDIR: "a part of the path is a file, not a folder; choose another path",
    errno.EISDIR: "the path is a folder; give a file path",
    errno.ENOENT: "check the spelling of the path",
    errno.ENAMETOOLONG: "choose a shorter path",
}

#: what continues an interrupted command
_RESUME_HINTS = {
    "train": "rerun the same command with --resume to continue from the last finished epoch",
    "extract": "rerun the same command to continue the extraction from its last finished shard",
}


def describe_os_error(err: OSError) -> str:
    """One line for an OS error: what failed, on which path, and what to do.

    Example:
        >>> import errno
        >>> describe_os_error(OSError(errno.EROFS, "Read-only file system", "/mnt/cd/run"))
        'Read-only file system: /mnt/cd/run; the file system is read-only; choose a writable --out / --cache-dir'
    """
    what = err.strerror or str(err)
    paths = [p for p in (err.filename, err.filename2) if p is not None]
    where = f": {' -> '.join(str(p) for p in paths)}" if paths else ""
    fix = _OS_FIXES.get(err.errno or -1)
    return f"{what}{where}" + (f"; {fix}" if fix else "")


def _one_line_warnings(show, command: str):
    """densattn's own warnings as one line ``densattn COMMAND: warning: ...``; other libraries' as usual."""

    def show_warning(message, category, filename, lineno, file=None, line=None):
        if "densattn" in str(filename) and issubclass(category, UserWarning):
            print(f"densattn {command}: warning: {message}", file=file or sys.stderr)
        else:
            show(message, category, filename, lineno, file, line)

    return show_warning


def main(argv: list[str] | None = None) -> int:
    """Run ``densattn ARGV``; returns the exit status.

    0 on success; 2 for an error the user can act on (a bad argument, a missing or unwritable path, a full disk, a
    corrupt file, a diverging run), printed as one line without a traceback; 130 when interrupted (Ctrl-C).
    Anything else is a bug and keeps its traceback. ``DENSATTN_DEBUG=1`` re-raises every error with its traceback.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    debug = os.environ.get("DENSATTN_DEBUG", "").strip() not in ("", "0")
    prefix = f"densattn {args.command}: error:"
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _one_line_warnings(warnings.showwarning, args.command)
            return int(args.func(args) or 0)
    except KeyboardInterrupt:
        if debug:
            raise
        hint = _RESUME_HINTS.get(args.command, "files written so far are complete (every write is atomic)")
        print(f"densattn {args.command}: interrupted; {hint}", file=sys.stderr)
        return 130
    except ValueError as err:  # densattn raises ValueError for every bad argument, bad data and bad file
        if debug:
            raise
        print(f"{prefix} {err}", file=sys.stderr)
        return 2
    except OSError as err:
        if debug:
            raise
        text = str(err) if isinstance(err, FileNotFoundError) and err.errno is None else describe_os_error(err)
        print(f"{prefix} {text}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
