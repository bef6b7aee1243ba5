"""``densattn explain``: the Importance Factor of a trained DAAM run (IF map, layer shares, plots, ranking)."""

from __future__ import annotations


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "explain",
        help="Importance Factor of a trained DAAM head: heatmap, layer shares and ranking",
        description="Accumulate the DAAM weights of RUN's adapter (fold 0's best model) over fold 0's validation "
        "or test split and write if_map.csv, layer_share.csv, if_heatmap.png and layer_share.png.",
    )
    p.add_argument("run", help="run directory written by `densattn train --head daam|gqdaam`")
    p.add_argument("--split", default="val", choices=("val", "test"), help="fold 0's split to accumulate on")
    p.add_argument("--out", default=None, help="output folder (default RUN/explain)")
    p.add_argument("--cache-dir", default=None, help="feature cache root the run's features are read from")
    p.add_argument("--top", type=int, default=5, help="how many top layers to print")
    p.set_defaults(func=run)


def run(args) -> int:
    from densattn.analysis.importance import explain_run

    summary = explain_run(args.run, split=args.split, out=args.out, cache_dir=args.cache_dir)
    names, share = summary["layer_names"], summary["layer_share"]
    print(f"Importance Factor of {summary['head']} on {summary['num_examples']} {args.split} examples (fold 0)")
    for rank, layer in enumerate(summary["layer_ranking"][: args.top], 1):
        print(
            f"  {rank}. {names[layer]}: share {share[layer]:.4f} (uniform {1 / len(share):.4f}), "
            f"mean IF {summary['layer_mean_if'][layer]:.3f}"
        )
    print(f"files: {', '.join(summary['files'].values())}")
    return 0
