"""``densattn compare RUN... --out DIR``: one table of methods, paired statistics against a reference, a plot.

Writes ``DIR/results.md`` (markdown), ``DIR/results.csv`` (method, accuracy mean/std, macro-F1 mean/std, trainable
parameters, seconds per epoch), ``DIR/paired.csv`` (reference − method per fold metric, with the 95% interval and
p-values of :func:`densattn.analysis.stats.compare_runs`) and ``DIR/accuracy_vs_params.png`` (log-scale parameters).
Paired statistics need runs on the same examples and folds, so the runs must agree on data, max_samples, folds and
seed; the command refuses otherwise.
"""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "compare",
        help="compare trained runs: table, paired fold statistics and accuracy vs parameters",
        description="Compare run directories written by `densattn train` on the same data and folds.",
    )
    p.add_argument("runs", nargs="+", help="run directories (each with config.json and metrics.json)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument(
        "--name",
        action="append",
        default=None,
        help="method name of each run, in order (repeat once per run); default from the run's config",
    )
    p.add_argument("--reference", default=None, help="method the others are compared with (default: daam if present)")
    p.add_argument(
        "--correction",
        default="nadeau-bengio",
        choices=("nadeau-bengio", "none"),
        help="t-test standard error: corrected resampled (default) or plain paired",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from densattn.analysis.compare import compare

    result = compare(args.runs, args.out, names=args.name, reference=args.reference, correction=args.correction)
    print(result["markdown"])
    print(f"-> {args.out}/results.md, results.csv, paired.csv, accuracy_vs_params.png")
    return 0
