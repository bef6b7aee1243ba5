"""DAAM inside the model (``daam_peft``) vs LoRA r=8, IA3 and the daam head on frozen features, on real data.

Every method runs on the same examples, folds and seed through the benchmark's cell runner
(:func:`densattn.experiments.benchmark.run_benchmark`), with the benchmark's own settings: each method searches two
learning rates, chosen per fold on the validation split carved from the training data (heads: 1e-3 / 3e-3, at most
15 epochs; LoRA r=8: 3e-3 / 1e-2; IA3 and DAAM gates: 1e-2 / 3e-2; end-to-end methods at most 3 epochs, batch 32).
Paired differences ``method - lora_r8`` over folds use the corrected resampled t-interval of ``densattn compare``
(:func:`densattn.analysis.stats.compare_runs`).

Tasks: text, the benchmark's ``fortunes`` task (``benchmarks/tasks.toml``: 400 Debian fortunes, 4 topics, MiniLM-L6
reading the first 64 tokens), 5 folds, so its cells are the seed-0 cells of ``densattn benchmark`` (800 examples did not
fit the shared 2-core CPU: the end-to-end methods run MiniLM forward and backward on every step); speech, Fish
Fillets NG Czech voices with the Whisper tiny.en encoder, reduced likewise (``--speech-samples``,
``--speech-seconds``, ``--speech-folds``; the values used are written into the results).

Resumable: finished cells (``OUT/runs/<task>/<method>/seed0``) are read back and unfinished ones resume fold by fold,
so rerunning the same command only trains what is missing. Writes ``benchmarks/results/peft_compare.{json,md}``.

Usage::

    nice -n 19 .venv/bin/python benchmarks/peft_compare.py --out peft_compare_out --workers 2
    .venv/bin/python benchmarks/peft_compare.py --out peft_compare_out --report-only   # tables from finished cells
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
TASK_FILE = Path(__file__).resolve().parent / "tasks.toml"
#: run order: the end-to-end cells first (the longest), daam_peft first of them
METHODS = ["daam_peft", "lora_r8", "ia3", "daam"]
REFERENCE = "lora_r8"


def make_tasks(args) -> list[tuple[Any, int]]:
    """``[(task, folds)]``: the text task and the reduced speech task (those in ``--modalities``)."""
    from densattn.experiments.tasks import Task, load_tasks

    tasks = []
    modalities = {m.strip() for m in args.modalities.split(",") if m.strip()}
    if modalities - {"text", "speech"}:
        raise ValueError(f"--modalities: choose from text,speech, got {args.modalities!r}")
    if "text" in modalities:  # the benchmark's own fortunes task: its cells are cells of `densattn benchmark`
        tasks.append((load_tasks(TASK_FILE)["fortunes"], args.text_folds))
    if "speech" in modalities:
        tasks.append(
            (
                Task(
                    f"fillets-cs-{args.speech_samples}",
                    "speech",
                    "whisper-tiny",
                    "fillets-cs",
                    max_samples=args.speech_samples,
                    encoder_options={"window_seconds": args.speech_seconds},
                    data_options={"min_clips": args.speech_min_clips},
                    note=f"Fish Fillets NG Czech voices, which character speaks (the {args.speech_min_clips}+ clip "
                    f"characters), {args.speech_samples} clips; "
                    f"Whisper tiny.en encoder (5 x 384), first {args.speech_seconds} s of each clip",
                ),
                args.speech_folds,
            )
        )
    return tasks


def enable_end_to_end_on_speech() -> None:
    """The benchmark registers its end-to-end methods for text tasks; here they run on speech too (Whisper)."""
    from densattn.experiments.benchmark import BENCHMARK_METHODS, register_method

    for name in METHODS:
        method = BENCHMARK_METHODS[name]
        if method.modalities is not None:
            register_method(dataclasses.replace(method, modalities=None), replace_existing=True)


def partial_metrics(cell: Path) -> dict[str, Any] | None:
    """The finished folds of an unfinished cell, summarised as ``metrics.json`` would be (``None``: no fold yet)."""
    from densattn.io import read_json
    from densattn.train.runner import summarize as summarize_folds

    rows = [read_json(f) for f in sorted(cell.glob("folds/*/result.json"))]
    rows = [r for r in rows if not r.get("failed")]
    if not rows:
        return None
    classes = [str(i) for i in range(len(rows[0]["per_class_f1"]))]
    return {**summarize_folds(rows, classes), "partial": True}


def common_folds(runs: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every run restricted to the folds all of them finished (paired statistics need the same folds)."""
    from densattn.train.runner import summarize as summarize_folds

    keep = set.intersection(*({f["fold"] for f in m["folds"] if not f.get("failed")} for m in runs.values()))
    out = {}
    for name, m in runs.items():
        rows = [f for f in m["folds"] if f["fold"] in keep and not f.get("failed")]
        if len(rows) == len(m["folds"]) and not m.get("partial"):
            out[name] = m
        else:
            out[name] = {
                **summarize_folds(rows, [str(i) for i in range(len(rows[0]["per_class_f1"]))]),
                "partial": True,
            }
    return out


def summarize(task, runs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per method: means, stds, parameters, s/epoch, the lr chosen per fold; paired rows vs :data:`REFERENCE`."""
    from densattn.analysis.stats import compare_runs

    rows = {}
    for name, m in runs.items():
        folds = [f for f in m["folds"] if not f.get("failed")]
        rows[name] = {
            "accuracy_mean": m["accuracy_mean"],
            "accuracy_std": m["accuracy_std"],
            "macro_f1_mean": m["macro_f1_mean"],
            "macro_f1_std": m["macro_f1_std"],
            "trainable_params": m["trainable_params"],
            "trainable_params_without_classifier": m["trainable_params_without_classifier"],
            "seconds_per_epoch": m["seconds_per_epoch"],
            "train_seconds": sum(f["train_seconds"] for f in folds),
            "chosen_lr": [f.get("chosen", {}).get("lr") for f in folds],
            "fold_accuracy": [f["accuracy"] for f in folds],
            "fold_macro_f1": [f["macro_f1"] for f in folds],
            "epochs_run": [f["epochs_run"] for f in folds],
            "best_epoch": [f["best_epoch"] for f in folds],
            "folds": [f["fold"] for f in folds],
            "partial": bool(m.get("partial")),
        }
    paired = []
    if REFERENCE in runs:
        for row in compare_runs(runs, reference=REFERENCE):
            # compare_runs gives reference - method; the table reads method - lora_r8
            paired.append(
                {
                    "method": row["method"],
                    "metric": row["metric"],
                    "difference": -row["mean_difference"],
                    "ci_low": -row["ci_high"],
                    "ci_high": -row["ci_low"],
                    "p_value": row["p_value"],
                    "folds": len(rows[row["method"]]["fold_accuracy"]),
                }
            )
    return {"task": task.to_dict(), "methods": rows, f"paired_vs_{REFERENCE}": paired}


def render(doc: dict[str, Any]) -> str:
    s = doc["settings"]
    lines = [
        "# DAAM inside the model vs LoRA and IA3 (`benchmarks/peft_compare.py`)",
        "",
        f"Seed {s['seed']}, stratified k-fold, validation carved from each training fold; every method searches two "
        "learning rates, chosen per fold on validation ("
        + "; ".join(f"{m}: {', '.join(f'{lr:g}' for lr in v['search']['lr'])}" for m, v in s["methods"].items())
        + f"). End-to-end methods: at most {s['methods']['lora_r8']['train']['epochs']} epochs, batch "
        f"{s['methods']['lora_r8']['train']['batch_size']}; the daam head at most "
        f"{s['methods']['daam']['train']['epochs']} epochs on cached features. Accuracy and macro-F1: mean ± std over "
        "folds. s / epoch: training seconds over every epoch of the search (both candidates), one torch thread per "
        f"run, on a {s['cpu_count']}-core CPU shared with other jobs ({s['load']}): compare rows, not absolute "
        "times; training minutes: the whole search, all folds.",
    ]
    for name, t in doc["tasks"].items():
        lines += [
            "",
            f"## {name}: {t['task']['note']} ({t['task']['max_samples']} examples, {t['folds']} folds)",
            "",
            "| method | accuracy | macro-F1 | trainable params | without classifier | s / epoch | training min "
            "| lr chosen per fold |",
            "|---|---:|---:|---:|---:|---:|---:|---|",
        ]
        for m, r in sorted(t["methods"].items(), key=lambda kv: -kv[1]["accuracy_mean"]):
            lrs = ", ".join(f"{lr:g}" for lr in r["chosen_lr"])
            shown = f"{m} (folds {', '.join(str(k) for k in r['folds'])} only)" if r["partial"] else m
            lines.append(
                f"| {shown} | {r['accuracy_mean']:.3f} ± {r['accuracy_std']:.3f} | "
                f"{r['macro_f1_mean']:.3f} ± {r['macro_f1_std']:.3f} | {r['trainable_params']:,} | "
                f"{r['trainable_params_without_classifier']:,} | {r['seconds_per_epoch']:.2f} | "
                f"{r['train_seconds'] / 60:.1f} | {lrs} |"
            )
        paired = t[f"paired_vs_{REFERENCE}"]
        if paired:
            lines += [
                "",
                f"Paired differences over folds, method − {REFERENCE} (95 % CI of the corrected resampled t-test, "
                "as `densattn compare`; **bold**: the interval excludes 0):",
                "",
                "| method | metric | method − lora_r8 | 95 % CI | p |",
                "|---|---|---:|---|---:|",
            ]
            for p in paired:
                mark = "**" if p["ci_low"] > 0 or p["ci_high"] < 0 else ""
                lines.append(
                    f"| {p['method']} | {p['metric']} | {mark}{p['difference']:+.3f}{mark} | "
                    f"[{p['ci_low']:+.3f}, {p['ci_high']:+.3f}] | {p['p_value']:.3f} |"
                )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="peft_compare_out", help="run folders (resumable)")
    p.add_argument("--results", default=str(RESULTS), help="where peft_compare.{json,md} go")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--text-folds", type=int, default=5)
    p.add_argument("--speech-samples", type=int, default=120)
    p.add_argument("--speech-seconds", type=int, default=2)
    p.add_argument("--speech-folds", type=int, default=3)
    p.add_argument(
        "--speech-min-clips", type=int, default=35, help="characters with at least this many clips (5 of them)"
    )
    p.add_argument("--modalities", default="text,speech", help="comma-separated subset of text,speech")
    p.add_argument(
        "--methods",
        default=",".join(METHODS),
        help="comma-separated methods to train in this process (several processes may share --out; then "
        "--report-only summarises every method)",
    )
    p.add_argument("--report-only", action="store_true", help="summarise finished cells, train nothing")
    p.add_argument(
        "--partial",
        action="store_true",
        help="with --report-only: include unfinished cells' finished folds, every method on the common folds",
    )
    p.add_argument("--cache-dir", default=None)
    p.add_argument(
        "--load-note", default=None, help="how loaded the machine was while the cells trained (with --report-only)"
    )
    args = p.parse_args(argv)

    import torch

    from densattn.experiments.benchmark import BENCHMARK_METHODS, collect_finished, run_benchmark
    from densattn.io import atomic_write_json, atomic_write_text

    enable_end_to_end_on_speech()
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    tasks = make_tasks(args)
    doc: dict[str, Any] = {"tasks": {}}
    for task, folds in tasks:
        if args.report_only:
            results = collect_finished([task], METHODS, [0], Path(args.out), folds)
        else:
            chosen = [m.strip() for m in args.methods.split(",") if m.strip()]
            if set(chosen) - set(METHODS):
                raise ValueError(f"--methods: choose from {','.join(METHODS)}, got {args.methods!r}")
            results = run_benchmark(
                [task], chosen, [0], args.out, folds=folds, workers=args.workers, cache_dir=args.cache_dir,
                progress=False,
            )  # fmt: skip
        runs = {m: results[task.name][m][0] for m in METHODS if m in results.get(task.name, {})}
        if args.report_only and args.partial:  # unfinished cells: their finished folds
            for m in METHODS:
                cell = Path(args.out) / "runs" / task.name / m / "seed0"
                if m not in runs and (partial := partial_metrics(cell)) is not None:
                    runs[m] = partial
            runs = common_folds(runs) if runs else runs
        if runs:
            doc["tasks"][task.name] = {"folds": folds, **summarize(task, runs)}
    doc["settings"] = {
        "seed": 0,
        "workers": args.workers,
        "methods": {m: BENCHMARK_METHODS[m].record() for m in METHODS},
        "speech": {
            "samples": args.speech_samples,
            "window_seconds": args.speech_seconds,
            "folds": args.speech_folds,
            "min_clips": args.speech_min_clips,
        },
        "load_before": list(load_before),
        "load_after": list(os.getloadavg()),
        "wall_seconds": time.perf_counter() - t0,
        "report_only": args.report_only,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
    }
    load = doc["settings"]
    load["load"] = args.load_note or (
        f"load average {load['load_before'][0]:.1f} before, {load['load_after'][0]:.1f} after; wall time "
        f"{load['wall_seconds'] / 60:.0f} min"
    )
    results_dir = Path(args.results)
    atomic_write_json(results_dir / "peft_compare.json", doc)
    atomic_write_text(results_dir / "peft_compare.md", render(doc))
    print(json.dumps({k: {m: round(r["accuracy_mean"], 3) for m, r in t["methods"].items()}
                      for k, t in doc["tasks"].items()}), file=sys.stderr)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
