"""The benchmark's summary: scores per (task, method), ranks and tests across tasks, paired intervals per task, the
chosen learning rates and the cost; written as ``benchmark.json``, ``benchmark.md`` and CD diagrams
(:func:`summarize_benchmark`, :func:`write_report`)."""

from __future__ import annotations

import math
import os
import platform
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from densattn.io import atomic_write_json, atomic_write_text

__all__ = ["pooled_folds", "summarize_benchmark", "write_report"]


def pooled_folds(by_seed: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """One metrics-like dict whose ``folds`` are every (seed, fold) of a cell group, numbered ``seed_rank * k +
    fold``, so :func:`densattn.analysis.stats.compare_runs` pairs the same (seed, fold) across methods (a repeated
    k-fold: the Nadeau–Bengio correction applies with n = seeds x folds)."""
    rows = []
    for rank, seed in enumerate(sorted(by_seed)):
        folds = by_seed[seed]["folds"]
        for row in folds:
            rows.append({**row, "fold": rank * len(folds) + int(row["fold"]), "seed": seed})
    return {"folds": rows}


def _cell_summary(by_seed: dict[int, dict[str, Any]]) -> dict[str, Any]:
    folds = pooled_folds(by_seed)["folds"]
    acc = np.array([r["accuracy"] for r in folds])
    f1 = np.array([r["macro_f1"] for r in folds])
    chosen = Counter(
        ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in r["chosen"].items())
        for r in folds
        if r.get("chosen")
    )
    first = by_seed[min(by_seed)]
    return {
        "accuracy_mean": float(acc.mean()),
        "accuracy_std": float(acc.std(ddof=1)) if len(acc) > 1 else 0.0,
        "macro_f1_mean": float(f1.mean()),
        "macro_f1_std": float(f1.std(ddof=1)) if len(f1) > 1 else 0.0,
        "accuracy_per_seed": {str(s): float(m["accuracy_mean"]) for s, m in sorted(by_seed.items())},
        "num_scores": len(folds),
        "trainable_params": first.get("trainable_params"),
        "trainable_params_without_classifier": first.get("trainable_params_without_classifier"),
        "seconds_per_epoch": float(np.mean([m["seconds_per_epoch"] for m in by_seed.values()])),
        "train_seconds": float(sum(r.get("train_seconds", 0.0) for r in folds)),
        "best_epoch_mean": float(np.mean([r["best_epoch"] for r in folds])),
        "chosen": dict(chosen.most_common()),
    }


def summarize_benchmark(
    results: dict[str, dict[str, dict[int, dict[str, Any]]]],
    tasks: dict[str, Any],
    *,
    reference: str = "daam",
    metric: str = "accuracy",
    alpha: float = 0.05,
) -> dict[str, Any]:
    """The summary dict of a finished grid (``results`` from :func:`~densattn.experiments.benchmark.run_benchmark`).

    Rankings: ``all_tasks`` and one per modality, each over the methods run on at least half of its tasks (so the
    end-to-end methods join the text ranking only) and the tasks where all of those finished; each with the tests of
    :func:`densattn.analysis.ranking.rank_methods` when it has at least 2 tasks and 3 methods. A ranking (and a
    paired comparison) uses only the seeds finished by all of its cells, so a partly run grid compares like with
    like; the seeds used are recorded (``seeds``).
    """
    from densattn.analysis.ranking import rank_methods
    from densattn.analysis.stats import compare_runs

    cells = {t: {m: _cell_summary(s) for m, s in ms.items()} for t, ms in results.items()}
    rankings: dict[str, Any] = {}
    groups = {"all_tasks": list(cells)}
    for modality in ("text", "vision", "speech"):
        names = [t for t in cells if tasks[t].modality == modality]
        if names != groups["all_tasks"]:
            groups[modality] = names
    for group, names in groups.items():
        # the methods run on at least half of the group's tasks (end-to-end methods drop out of the all-task
        # ranking), ranked on the tasks where all of them finished
        count = Counter(m for t in names for m in cells[t])
        common = [m for m in count if 2 * count[m] >= len(names)]
        members = [t for t in names if all(m in cells[t] for m in common)]
        seeds = sorted(set.intersection(*(set(results[t][m]) for t in members for m in common))) if members else []
        if len(members) < 2 or len(common) < 3 or not seeds:
            continue
        table = {
            t: {m: _cell_summary({s: results[t][m][s] for s in seeds})[f"{metric}_mean"] for m in common}
            for t in members
        }
        ranking = rank_methods(table, methods=common, alpha=alpha)
        rankings[group] = {**ranking, "seeds": seeds, "excluded_tasks": [t for t in names if t not in members]}
    paired = {}
    for task, by_method in results.items():
        if reference not in by_method:
            continue
        rows = []
        for m, by_seed in by_method.items():
            seeds = sorted(set(by_seed) & set(by_method[reference]))
            if m == reference or not seeds:
                continue
            pooled = {k: pooled_folds({s: by_method[k][s] for s in seeds}) for k in (reference, m)}
            rows += [{**r, "seeds": seeds} for r in compare_runs(pooled, reference, metrics=(metric,))]
        if rows:
            paired[task] = rows
    return {
        "metric": metric,
        "reference": reference,
        "cells": cells,
        "rankings": rankings,
        "paired": paired,
        "tasks": {t: tasks[t].to_dict() for t in cells},
    }


def environment() -> dict[str, Any]:
    import torch

    return {
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads_per_worker": 1,
        "python": platform.python_version(),
    }


def _fmt_ci(row: dict[str, Any]) -> str:
    diff = f"{row['mean_difference']:+.3f}"
    ci = f"[{row['ci_low']:+.3f}, {row['ci_high']:+.3f}]"
    return f"**{diff} {ci}**" if row["significant"] else f"{diff} {ci}"


def _ranking_lines(name: str, r: dict[str, Any]) -> list[str]:
    f = r["friedman"]
    lines = [
        f"### Ranks: {name} ({r['num_tasks']} tasks, {r['num_methods']} methods, seeds {r['seeds']})",
        "",
        "| method | average rank | " + " | ".join(r["tasks"]) + " |",
        "|---|---:|" + "---:|" * len(r["tasks"]),
    ]
    for m, avg in r["average_ranks"].items():
        lines.append(f"| {m} | {avg:.2f} | " + " | ".join(f"{r['ranks'][t][m]:g}" for t in r["tasks"]) + " |")
    if r.get("excluded_tasks"):
        lines += ["", f"Not ranked (cells unfinished): {', '.join(r['excluded_tasks'])}."]
    cd = r["nemenyi"]["critical_difference"]
    best = next(iter(r["average_ranks"]))
    separated = [m for m, avg in r["average_ranks"].items() if avg - r["average_ranks"][best] > cd]
    lines += [
        "",
        f"Friedman χ² = {f['statistic']:.2f} (df {f['df']}, p = {f['p_value']:.3g}); Iman–Davenport F = "
        f"{f['iman_davenport']:.2f} (df {f['iman_davenport_df'][0]}, {f['iman_davenport_df'][1]}, "
        f"p = {f['iman_davenport_p']:.3g}). Nemenyi critical difference at α = {r['alpha']}: {cd:.2f} ranks; "
        + (
            f"significantly behind the best ({best}): {', '.join(separated)}."
            if separated
            else f"no method is significantly behind the best ({best})."
        ),
        "",
    ]
    return lines


def render_markdown(summary: dict[str, Any], settings: dict[str, Any]) -> str:
    cells, metric = summary["cells"], summary["metric"]
    methods = list(dict.fromkeys(m for ms in cells.values() for m in ms))
    env = settings["environment"]
    lines = [
        "# Benchmark: where does DAAM help?",
        "",
        f"{settings['folds']}-fold stratified CV x seeds {settings['seeds']} (a seed draws the subsample, the folds "
        "and the initialisations), validation carved from each training fold. Every method tunes its learning rate "
        "per fold on that validation split (grids below), tested once. Scores: mean "
        f"{metric} over seeds x folds. torch {env['torch']}, one thread per training process; "
        f"load average at the end {env['load_average']} on {env['cpu_count']} cores (timings were measured on a "
        "shared, busy machine).",
        "",
        "## Tasks",
        "",
        "| task | modality | encoder | data | examples | note |",
        "|---|---|---|---|---:|---|",
    ]
    for name, t in summary["tasks"].items():
        lines.append(
            f"| {name} | {t['modality']} | {t['encoder']} | `{t['data']}` | {t['max_samples'] or 'all'} | {t['note']} |"
        )
    lines += ["", f"## {metric.capitalize()} (mean ± std over seeds x folds)", ""]
    lines += ["| task | " + " | ".join(methods) + " |", "|---|" + "---:|" * len(methods)]
    full = max(c["num_scores"] for ms in cells.values() for c in ms.values())
    partial = False
    for task, by_method in cells.items():
        best = max(c[f"{metric}_mean"] for c in by_method.values())
        row = []
        for m in methods:
            c = by_method.get(m)
            if c is None:
                row.append("–")
                continue
            text = f"{c[f'{metric}_mean']:.3f} ± {c[f'{metric}_std']:.3f}"
            text = f"**{text}**" if math.isclose(c[f"{metric}_mean"], best) else text
            if c["num_scores"] < full:
                text, partial = f"{text} †", True
            row.append(text)
        lines.append(f"| {task} | " + " | ".join(row) + " |")
    if partial:
        lines += ["", f"† fewer finished (seed, fold) scores than the {full} of a complete cell (seeds still running)."]
    lines += [""]
    for name, r in summary["rankings"].items():
        lines += _ranking_lines(name.replace("_", " "), r)
    ref = summary["reference"]
    if summary["paired"]:
        others = [m for m in methods if m != ref]
        lines += [
            f"## Paired differences {ref} − method per task",
            "",
            f"Mean {metric} difference over the (seed, fold) pairs with the 95% interval of the Nadeau–Bengio "
            "corrected resampled t-test; **bold**: the interval excludes 0 (positive: daam better).",
            "",
            "| task | " + " | ".join(others) + " |",
            "|---|" + "---|" * len(others),
        ]
        for task, rows in summary["paired"].items():
            by = {r["method"]: r for r in rows}
            lines.append(f"| {task} | " + " | ".join(_fmt_ci(by[m]) if m in by else "–" for m in others) + " |")
        wins = Counter()
        for rows in summary["paired"].values():
            for r in rows:
                wins[(r["method"], "better" if r["ci_low"] > 0 else "worse" if r["ci_high"] < 0 else "tie")] += 1
        lines += ["", f"Significant outcomes of {ref} against each method (tasks where {ref} is better / worse / "
                  "no significant difference):", ""]  # fmt: skip
        lines += [
            f"- {m}: {wins[(m, 'better')]} / {wins[(m, 'worse')]} / {wins[(m, 'tie')]}"
            for m in others
            if any(m == r["method"] for rows in summary["paired"].values() for r in rows)
        ]
        lines.append("")
    lines += [
        "## Learning rates chosen on validation, and cost",
        "",
        "Seconds per epoch are means over tasks, measured under load; train seconds are the whole search (every "
        "candidate of every fold and seed) summed over tasks.",
        "",
        "| method | grid | chosen (folds) | trainable params | s / epoch | train s | mean best epoch |",
        "|---|---|---|---|---:|---:|---:|",
    ]
    for m in methods:
        group = [ms[m] for ms in cells.values() if m in ms]
        chosen = Counter()
        for c in group:
            chosen.update(c["chosen"])
        params = [c["trainable_params"] for c in group if c["trainable_params"]]
        grid = settings["methods"].get(m, {}).get("search", {})
        lines.append(
            f"| {m} | {grid} | {', '.join(f'{k}: {v}' for k, v in chosen.most_common())} | "
            f"{min(params):,}–{max(params):,} | {np.mean([c['seconds_per_epoch'] for c in group]):.3f} | "
            f"{sum(c['train_seconds'] for c in group):.0f} | {np.mean([c['best_epoch_mean'] for c in group]):.1f} |"
        )
    return "\n".join(lines) + "\n"


def write_report(
    summary: dict[str, Any], settings: dict[str, Any], folder: str | Path, *, prefix: str = "benchmark"
) -> dict[str, Path]:
    """Write ``PREFIX.json``, ``PREFIX.md``, ``PREFIX_cd.png`` (the all-task ranking) and ``PREFIX_cd_<group>.png``
    (each other ranking) into ``folder``; returns the paths."""
    from densattn.analysis.ranking import plot_critical_difference

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    settings = {**settings, "environment": environment()}
    paths = {"json": folder / f"{prefix}.json", "markdown": folder / f"{prefix}.md"}
    atomic_write_json(paths["json"], {"settings": settings, **summary})
    atomic_write_text(paths["markdown"], render_markdown(summary, settings))
    for group, ranking in summary["rankings"].items():
        name = f"{prefix}_cd.png" if group == "all_tasks" else f"{prefix}_cd_{group}.png"
        paths[f"cd_{group}"] = folder / name
        title = "all tasks" if group == "all_tasks" else f"{group} tasks"
        plot_critical_difference(
            ranking, folder / name, title=f"{settings.get('title', 'densattn benchmark')}: {title}"
        )
    return paths
