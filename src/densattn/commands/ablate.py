"""``densattn ablate``: retrain a DAAM run's head on its top-K and bottom-K Importance-Factor layers."""

from __future__ import annotations

from densattn.commands._common import show_progress


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "ablate",
        help="retrain a DAAM head on the top-K vs bottom-K Importance-Factor layers",
        description="Rank RUN's layers by Importance Factor, retrain the same head (same folds and seeds) on the "
        "K highest- and the K lowest-IF layers, and compare both with the all-layer run (arXiv 2401.11143, "
        "Table 2). Writes RUN/ablation/{top,bottom}K/ and RUN/ablation/ablation.{json,md}.",
    )
    p.add_argument("run", help="run directory written by `densattn train --head daam|gqdaam`")
    p.add_argument("--top-k", type=int, required=True, help="number of layers K (2 <= K < number of layers)")
    p.add_argument("--cache-dir", default=None, help="feature cache root the run's features are read from")
    p.set_defaults(func=run)


def run(args) -> int:
    from densattn.analysis.ablation import ablate_run, ablation_table

    results = ablate_run(args.run, top_k=args.top_k, cache_dir=args.cache_dir, progress=show_progress())
    print(ablation_table(results))
    return 0
