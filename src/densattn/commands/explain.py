"""``densattn explain``: which encoder layers a trained run relies on, by several methods, and how faithful each
method is (deletion curves against random orders); ``--sanity`` runs the synthetic check."""

from __future__ import annotations

from densattn.commands._common import show_progress

METHOD_CHOICES = ("all", "if", "occlusion", "gradient", "ig")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "explain",
        help="layer importance of a trained run (IF, occlusion, gradient x input, integrated gradients) and how "
        "faithful each explanation is",
        description="Score the encoder layers of each fold's adapter of RUN with each method on that fold's "
        "validation split (a removed layer is set to its training mean), then "
        "measure every method's faithfulness without retraining: the deletion curve (accuracy as layers are removed, "
        "most important first) and its area against random and reversed orders. Writes "
        "explanation.json, faithfulness.md, deletion_curves.png, layer_scores.csv and per-method maps into "
        "RUN/explain. Works for every head kind and fusion heads (the IF only for daam/gqdaam). "
        "`densattn explain --sanity` trains each head kind on a synthetic task with one informative layer and says "
        "which methods recover it.",
    )
    p.add_argument("run", nargs="?", help="run directory written by `densattn train` (omit with --sanity)")
    p.add_argument("--method", default="all", choices=METHOD_CHOICES, help="explanation method (default all)")
    p.add_argument("--split", default="val", choices=("val", "test"), help="split to explain and judge on")
    p.add_argument("--folds", default="all", help="'all' (default), a fold index, or comma-separated indices")
    p.add_argument("--out", default=None, help="output folder (default RUN/explain; with --sanity: kept runs)")
    p.add_argument("--cache-dir", default=None, help="feature cache root the run's features are read from")
    p.add_argument("--random-orders", type=int, default=20, help="random layer orders of the baseline (>= 2)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random orders")
    p.add_argument("--feature-occlusion", action="store_true", help="also occlude single features (L x d passes)")
    p.add_argument("--ig-steps", type=int, default=32, help="quadrature points of integrated gradients")
    p.add_argument("--retrain", action="store_true", help="also retrain on each method's top-K / bottom-K layers")
    p.add_argument("--top-k", type=int, default=None, help="K for --retrain")
    p.add_argument("--top", type=int, default=5, help="how many top layers to print per method")
    p.add_argument("--sanity", action="store_true", help="run the synthetic one-informative-layer check instead")
    p.add_argument("--heads", default=None, help="with --sanity: comma-separated head kinds (default all)")
    p.set_defaults(func=run)


def _folds(value: str):
    if value == "all":
        return "all"
    try:
        folds = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"--folds must be 'all', an index or comma-separated indices, got {value!r}") from None
    return folds[0] if len(folds) == 1 else folds


def _check(args) -> None:
    if args.sanity and args.run:
        raise ValueError("--sanity trains its own synthetic runs; give either RUN or --sanity, not both")
    if not args.sanity and not args.run:
        raise ValueError("give a run directory (densattn explain RUN) or --sanity")
    if args.heads and not args.sanity:
        raise ValueError("--heads only applies to --sanity")
    if args.random_orders < 2:
        raise ValueError(f"--random-orders must be >= 2 (a mean ± std over orders), got {args.random_orders}")
    if args.retrain != (args.top_k is not None):
        raise ValueError("--retrain needs --top-k K (and --top-k is only used by --retrain)")
    if args.retrain and args.sanity:
        raise ValueError("--retrain applies to a run, not to --sanity")


def run(args) -> int:
    _check(args)
    if args.sanity:
        return _sanity(args)
    from densattn.analysis.explain import explain, retrain_columns
    from densattn.analysis.faithfulness import faithfulness_table

    result = explain(
        args.run,
        method=args.method,
        split=args.split,
        folds=_folds(args.folds),
        out=args.out,
        cache_dir=args.cache_dir,
        num_random=args.random_orders,
        seed=args.seed,
        feature_occlusion=args.feature_occlusion,
        ig_steps=args.ig_steps,
        top_k=args.top_k,
        progress=show_progress(),
    )
    names = result["layer_names"]
    print(
        f"Layer importance of {result['head']} on the {args.split} split of fold(s) {result['folds']} "
        f"(removed layer = its training mean)"
    )
    for method, a in result["attributions"].items():
        top = ", ".join(f"{names[i]} {a['layer_scores'][i]:.4g}" for i in a["ranking"][: args.top])
        print(f"  {method} ({a['unit']}): {top}")
    print()
    ablation = result["ablation"]
    table = faithfulness_table(
        result["faithfulness"], layer_names=names, retrain=retrain_columns(ablation), top_k=args.top_k
    )
    print(table)
    print(f"files: {', '.join(result['files'].values())}")
    return 0


def _sanity(args) -> int:
    from densattn.analysis.sanity import sanity_check, sanity_table

    heads = [h.strip() for h in args.heads.split(",") if h.strip()] if args.heads else None
    result = sanity_check(heads=heads, method=args.method, out=args.out, seed=args.seed, log=print)
    print(sanity_table(result))
    for method, recovered in result["recovered"].items():
        tried = [h for h, r in result["heads"].items() if method in r["rank"]]
        missed = [h for h in tried if h not in recovered]
        verdict = "recovers the informative layer for every head" if not missed else f"misses it for {missed}"
        print(f"{method}: {verdict} ({len(recovered)}/{len(tried)})")
    return 0
