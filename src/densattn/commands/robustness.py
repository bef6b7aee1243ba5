"""``densattn robustness RUN... --shift NAME[=LEVEL,...]``: accuracy of trained runs under input shifts.

See :mod:`densattn.analysis.robustness` (what is re-extracted and evaluated) and :mod:`densattn.data.shifts` (the
shifts). Writes ``OUT/robustness.json``, ``robustness.md`` (table: accuracy and drop from clean per method and
shift, plus DAAM − method paired differences) and ``robustness.png`` (accuracy vs shift level, one line per method).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from densattn.commands._common import show_progress


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "robustness",
        help="accuracy of trained runs under input shifts (noise, gain, speed, blur, typos, ...)",
        description="Re-extract the runs' test splits with input shifts applied before the frozen encoder and "
        "score every fold's adapter. Shifts — audio: gain (dB), noise (SNR dB), speed (factor), pitch (semitones); "
        "image: brightness, contrast (factors), blur (sigma px), noise (std 0-255); text: casing (fraction of "
        "words upper-cased), typos (per-letter rate), dropout (per-word rate). A bare name uses default levels.",
    )
    p.add_argument("runs", nargs="+", help="run directories trained on the same data, folds and seed")
    p.add_argument(
        "--shift",
        action="append",
        required=True,
        metavar="NAME[=LEVEL,...]",
        help="shift and levels, e.g. noise=20,10,0 (repeatable)",
    )
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--name", action="append", default=None, help="method name per run, in order (repeatable)")
    p.add_argument("--folds", default="all", help="'all' (default) or comma-separated fold indices, e.g. 0")
    p.add_argument("--cache-dir", default=None, help="feature cache root (default ~/.cache/densattn/features)")
    p.add_argument("--shift-seed", type=int, default=0, help="seed of the shifts' random draws")
    p.add_argument("--batch-size-encode", type=int, default=16)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from densattn.analysis.robustness import evaluate_robustness, plot_robustness, robustness_markdown
    from densattn.io import atomic_write_text

    if args.folds == "all":
        folds = None
    else:
        try:
            folds = [int(k) for k in args.folds.split(",")]
        except ValueError:
            raise ValueError(f"--folds must be 'all' or comma-separated integers, got {args.folds!r}") from None
    result = evaluate_robustness(
        args.runs,
        args.shift,
        names=args.name,
        folds=folds,
        cache_dir=args.cache_dir,
        shift_seed=args.shift_seed,
        batch_size=args.batch_size_encode,
        progress=show_progress(),
    )
    out = Path(args.out)
    markdown = robustness_markdown(result)
    atomic_write_text(out / "robustness.json", json.dumps(result, indent=1))
    atomic_write_text(out / "robustness.md", markdown)
    plot_robustness(result, out / "robustness.png")
    print(markdown)
    print(f"-> {out}/robustness.md, robustness.json, robustness.png")
    return 0
