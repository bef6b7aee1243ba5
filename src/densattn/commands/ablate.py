"""``densattn ablate``: retrain a run's head on the top-K and bottom-K layers of an explanation's ranking."""

from __future__ import annotations

from densattn.commands._common import show_progress


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "ablate",
        help="retrain a head on the top-K vs bottom-K layers of an explanation (IF by default)",
        description="Rank RUN's layers with an explanation method (fold 0's adapter, fold 0's validation split), "
        "retrain the same head (same folds and seeds) on the K highest- and the K lowest-ranked layers, and compare "
        "both with the all-layer run (arXiv 2401.11143, Table 2). Each distinct layer set is trained once, in "
        "RUN/ablation/layers-.../; results in RUN/ablation/ablation.{json,md}.",
    )
    p.add_argument("run", help="run directory written by `densattn train --head ...`")
    p.add_argument("--top-k", type=int, required=True, help="number of layers K (2 <= K < number of layers)")
    p.add_argument(
        "--method",
        default="if",
        choices=("if", "occlusion", "gradient", "ig", "all"),
        help="whose ranking to ablate (default if, the paper's; 'all': every method that applies)",
    )
    p.add_argument("--cache-dir", default=None, help="feature cache root the run's features are read from")
    p.set_defaults(func=run)


def run(args) -> int:
    from densattn.analysis.ablation import ablate_run, ablation_table

    results = ablate_run(
        args.run, top_k=args.top_k, method=args.method, cache_dir=args.cache_dir, progress=show_progress()
    )
    print(ablation_table(results))
    return 0
