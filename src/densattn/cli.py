"""The ``densattn`` command line.

Sub-commands live in :mod:`densattn.commands`; each module there defines ``register(subparsers)``.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

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


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as err:
        print(f"densattn {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
