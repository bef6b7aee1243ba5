"""``densattn demo``: the main job on its embedded default (text, vision, speech; DAAM vs baselines)."""

from __future__ import annotations


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "demo",
        help="DAAM heads vs baselines on bundled encoders and real data, all three modalities",
        description="Encode real data with bundled pretrained encoders (cached), train DAAM and every baseline on "
        "the same folds, and write results.json / results.md.",
    )
    p.add_argument("--out", default="demo_out", help="output folder (default demo_out)")
    p.add_argument("--modalities", default="text,vision,speech", help="comma-separated subset of text,vision,speech")
    p.add_argument("--methods", default=None, help="comma-separated subset of methods (default: all)")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--epochs", type=int, default=25)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=None, help="parallel training processes (default: up to 2)")
    p.add_argument("--sample-scale", type=float, default=1.0, help="scale the per-modality sample counts")
    p.add_argument(
        "--end-to-end",
        "--lora",
        dest="end_to_end",
        default="text",
        help="modalities that get the rows of encoders tuned end to end (comma-separated; '' for none; default text)",
    )
    p.add_argument(
        "--end-to-end-methods",
        default=None,
        help="comma-separated subset of lora_r8,ia3,daam_peft (default: all three)",
    )
    p.add_argument("--fresh", action="store_true", help="retrain every run (default: reuse finished identical runs)")
    p.add_argument("--no-explain", action="store_true", help="skip the Importance Factor of the daam heads")
    p.add_argument("--cache-dir", default=None, help="feature cache root (default ~/.cache/densattn/features)")
    p.set_defaults(func=run)


def run(args) -> int:
    from densattn.experiments.demo import run_demo

    if args.folds < 2:
        raise ValueError("--folds must be at least 2 (the demo reports mean ± std over folds)")
    run_demo(
        args.out,
        modalities=[m.strip() for m in args.modalities.split(",") if m.strip()],
        methods=[m.strip() for m in args.methods.split(",")] if args.methods else None,
        folds=args.folds,
        epochs=args.epochs,
        seed=args.seed,
        cache_dir=args.cache_dir,
        workers=args.workers,
        sample_scale=args.sample_scale,
        end_to_end_modalities=[m.strip() for m in args.end_to_end.split(",") if m.strip()],
        end_to_end_methods=[m.strip() for m in args.end_to_end_methods.split(",")] if args.end_to_end_methods else None,
        explain=not args.no_explain,
        fresh=args.fresh,
    )
    return 0
