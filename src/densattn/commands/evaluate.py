"""``densattn evaluate RUN --data ...``: score any trained run (head, fusion head, tuned encoder) on a dataset."""

from __future__ import annotations

from pathlib import Path

from densattn.commands._common import add_data_arguments, check_data_arguments, parse_options, show_progress


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="evaluate a trained run on a dataset",
        description="Evaluate RUN's adapter (fold 0's best model; a head, a fusion head or a tuned encoder) on a "
        "dataset. The encoder(s) are rebuilt from the run; --encoder, when given, must be the run's.",
    )
    p.add_argument("run", help="run directory written by `densattn train` (or its folds/K/adapter)")
    add_data_arguments(p, encoder_required=False)
    p.add_argument("--out", default=None, help="write the metrics JSON to this file (default: print only)")
    p.set_defaults(func=run)


def run_root(path: Path) -> Path:
    """The run directory that ``path`` belongs to: ``RUN`` for ``RUN``, ``RUN/folds/K`` and ``RUN/folds/K/adapter``."""
    path = path.expanduser().resolve()
    if path.name == "adapter" and path.parent.name.isdigit() and path.parent.parent.name == "folds":
        return path.parent.parent.parent
    if path.name.isdigit() and path.parent.name == "folds":
        return path.parent.parent
    return path


def _check_out(out: str | None, run_dir: Path) -> Path | None:
    if out is None:
        return None
    path = Path(out).expanduser().resolve()
    if path.is_dir():
        raise ValueError(f"--out {out} is a directory; give a file path such as {Path(out) / 'evaluation.json'}")
    root = run_root(run_dir)
    if path == root or root in path.parents:
        raise ValueError(
            f"--out {out} lies inside the run directory {root}, whose files belong to the run; write the "
            "evaluation elsewhere (e.g. --out evaluation.json)"
        )
    return path


def run(args) -> int:
    from densattn.adapters import adapter_type, load_adapter
    from densattn.analysis.evaluate import evaluate_adapter
    from densattn.data import load_dataset
    from densattn.io import atomic_write_json

    run_dir = Path(args.run)
    out = _check_out(args.out, run_dir)
    check_data_arguments(args)
    kind = adapter_type(run_dir)
    model = load_adapter(run_dir)
    if args.encoder is not None:
        recorded = [e.get("name") for e in model.encoders] if kind == "fusion" else [model.encoder_info.get("name")]
        if str(args.encoder) not in recorded:
            raise ValueError(f"--encoder {args.encoder} is not the encoder RUN was trained on ({', '.join(recorded)})")
    dataset = load_dataset(
        args.data, max_samples=args.max_samples, seed=args.seed, **parse_options(args.data_option, "--data-option")
    )
    metrics = evaluate_adapter(
        model, dataset, cache_dir=args.cache_dir, batch_size=args.batch_size_encode, progress=show_progress()
    )
    print(
        f"accuracy {metrics['accuracy']:.4f}, macro-F1 {metrics['macro_f1']:.4f} on {metrics['num_examples']} "
        f"examples ({kind} adapter)"
    )
    if out is not None:
        atomic_write_json(out, {**metrics, "run": str(run_dir)})
    return 0
