"""Sub-commands of the ``densattn`` CLI.

Every module in this package that defines ``register(subparsers)`` is discovered by
:mod:`densattn.cli` and adds its own sub-command; the handler it sets with
``parser.set_defaults(func=...)`` receives the parsed ``argparse.Namespace`` and returns an exit code.
"""
