"""``densattn benchmark --tasks ... --methods ... --seeds ... --out DIR``: every method on every task, same folds and
seeds, learning rates tuned per fold on validation; ranks, Friedman/Iman–Davenport, Nemenyi CD diagram and paired
intervals per task. The logic lives in :mod:`densattn.experiments.benchmark`."""

from __future__ import annotations

import argparse

from densattn.commands._common import show_progress


def _names(text: str | None) -> list[str] | None:
    if text is None:
        return None
    return [n for part in text.split(",") for n in [part.strip()] if n]


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "benchmark",
        help="run every method on every task (same folds and seeds) and rank them across tasks",
        description="Run a grid of (task, method, seed) cells, each an ordinary run directory under OUT/runs, "
        "reusing finished cells and the feature cache, then write benchmark.json, benchmark.md and "
        "critical-difference diagrams.",
    )
    p.add_argument("--out", required=True, help="folder of the runs (OUT/runs/TASK/METHOD/seedS) and the report")
    p.add_argument("--task-file", default="benchmarks/tasks.toml", help="TOML task list (default %(default)s)")
    p.add_argument("--tasks", default=None, help="comma-separated task names or modalities (text, vision, speech)")
    p.add_argument("--methods", default=None, help="comma-separated method names (default: every registered one)")
    p.add_argument("--seeds", default="0,1", help="comma-separated seeds (default %(default)s)")
    p.add_argument("--folds", type=int, default=5, help="k of the stratified k-fold (default %(default)s)")
    p.add_argument("--workers", type=int, default=1, help="training processes, one torch thread each")
    p.add_argument("--cache-dir", default=None, help="feature cache root (default ~/.cache/densattn/features)")
    p.add_argument("--report", default=None, help="folder of benchmark.json/.md/_cd.png (default --out)")
    p.add_argument("--report-only", action="store_true", help="train nothing; summarise the finished cells")
    p.add_argument("--list", action="store_true", help="print the tasks and methods and exit")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from densattn.experiments.benchmark import benchmark, describe_methods, load_tasks

    if args.list:
        for name, task in load_tasks(args.task_file).items():
            print(
                f"task   {name:18s} {task.modality:6s} {task.encoder} on {task.data} ({task.max_samples}) {task.note}"
            )
        for name, line in describe_methods().items():
            print(f"method {name:18s} {line}")
        return 0
    try:
        seeds = [int(s) for s in _names(args.seeds) or []]
    except ValueError:
        raise ValueError(f"--seeds must be comma-separated integers, got {args.seeds!r}") from None
    if args.folds < 2:
        raise ValueError(f"--folds must be >= 2 (ranks need per-fold scores), got {args.folds}")
    summary = benchmark(
        args.task_file,
        args.out,
        tasks=_names(args.tasks),
        methods=_names(args.methods),
        seeds=seeds,
        folds=args.folds,
        report=args.report,
        report_only=args.report_only,
        workers=args.workers,
        cache_dir=args.cache_dir,
        progress=show_progress(),
    )
    print(open(summary["files"]["markdown"], encoding="utf-8").read())
    print("-> " + ", ".join(summary["files"].values()))
    return 0
