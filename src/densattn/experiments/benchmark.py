"""Where does DAAM help? Every method on every task, with the same folds and seeds, ranked across tasks.

A *task* is an (encoder, data, options) triple (:class:`Task`, read from a TOML task list by :func:`load_tasks`).
A *method* is a name in :data:`BENCHMARK_METHODS` (:class:`BenchmarkMethod`: a head on cached features, an encoder
tuned end to end, or any callable), each with its own small learning-rate grid of the same size, searched per fold
on the validation split (:func:`densattn.train.run_folds` ``search=``). A *cell* (task, method, seed) is an ordinary
run directory, ``OUT/runs/<task>/<method>/seed<s>``, so every cell can be opened, explained, evaluated and compared
like any ``densattn train`` run; finished cells are reused and unfinished ones resume (:func:`run_benchmark`).
Seed ``s`` draws the task's subsample, its folds and every initialisation, so two seeds are a repeated k-fold.

The summary (:func:`summarize_benchmark`): per task and method the mean accuracy and macro-F1 over seeds x folds;
average ranks, the Friedman and Iman–Davenport tests and the Nemenyi critical difference across tasks
(:mod:`densattn.analysis.ranking`); and per task the paired differences daam − method over all (seed, fold) pairs
with the corrected resampled t-interval (:func:`densattn.analysis.stats.compare_runs`).

Adding a method: register it, then rerun the same command with the new name in ``--methods``; only its cells run::

    register_method(BenchmarkMethod("daam_peft_tokens", kind="end_to_end", tuner="daam_peft",
                                    options={"norm_axis": "tokens"}, modalities=("text",),
                                    search={"lr": [1e-2, 3e-2]}, train=E2E_TRAIN))
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from densattn.experiments.tasks import MODALITY_GROUPS, Task, load_tasks, select_tasks
from densattn.io import read_json

__all__ = [
    "BENCHMARK_METHODS",
    "BenchmarkMethod",
    "Cell",
    "Task",
    "benchmark",
    "load_tasks",
    "register_method",
    "run_benchmark",
    "select_tasks",
]


@dataclass(frozen=True)
class Cell:
    """One (task, method, seed) of the grid and where its run directory lives."""

    task: Task
    method: str
    seed: int
    out: Path
    folds: int


@dataclass(frozen=True)
class BenchmarkMethod:
    """How a benchmark runs one method.

    Attributes:
        name: the method's name in the tables.
        kind: ``"head"`` (a head on cached features: ``head`` + ``options``), ``"end_to_end"`` (the encoder tuned
            by ``tuner`` with ``options``: :func:`densattn.train.end_to_end.run_end_to_end_experiment`) or
            ``"custom"`` (``run(cell, method, features, encoder_info, resume) -> metrics``).
        search: the per-fold grid tuned on validation (every method gets the same number of candidates).
        train: :class:`~densattn.train.TrainConfig` settings of this method (epochs, batch size, early stopping).
        modalities: the task modalities it runs on (``None``: all).
    """

    name: str
    kind: str = "head"
    head: str | None = None
    tuner: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    search: dict[str, list[Any]] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    modalities: tuple[str, ...] | None = None
    run: Callable[..., dict[str, Any]] | None = None

    def applies_to(self, task: Task) -> bool:
        return self.modalities is None or task.modality in self.modalities

    def record(self) -> dict[str, Any]:
        """What identifies the method's settings (recorded in every cell's ``config.json``)."""
        return {k: getattr(self, k) for k in ("name", "kind", "head", "tuner", "options", "search", "train")}


#: every method searches two learning rates (the same budget for all); heads: their default (1e-3) and 3x it,
#: at most 15 epochs with early stopping on validation
HEAD_TRAIN = {"epochs": 15, "early_stopping": 4, "batch_size": 64}
HEAD_SEARCH = {"lr": [1e-3, 3e-3]}
#: end-to-end methods: the encoder runs forward and backward every step, so a few epochs; the epoch count is
#: chosen per fold on validation too (the loop keeps the best-validation epoch, and with a plateau schedule the
#: model after epoch e of a 3-epoch run is the model of an e-epoch run)
E2E_TRAIN = {"epochs": 3, "early_stopping": 2, "batch_size": 32}

BENCHMARK_METHODS: dict[str, BenchmarkMethod] = {}


def register_method(method: BenchmarkMethod, *, replace_existing: bool = False) -> None:
    """Add a method to :data:`BENCHMARK_METHODS` (``--methods`` then accepts its name)."""
    if method.kind not in ("head", "end_to_end", "custom"):
        raise ValueError(f"method {method.name!r}: kind must be head, end_to_end or custom, got {method.kind!r}")
    if method.kind == "custom" and method.run is None:
        raise ValueError(f"method {method.name!r}: a custom method needs run=")
    if method.name in BENCHMARK_METHODS and not replace_existing:
        raise ValueError(f"a benchmark method named {method.name!r} exists; pass replace_existing=True")
    BENCHMARK_METHODS[method.name] = method


for _head, _options in [
    ("daam", {"preset": "paper"}),
    ("gqdaam", {"preset": "paper"}),
    ("mha", {}),
    ("mha_bn", {}),
    ("conv", {}),
    ("pool", {}),
    ("linear", {"layer": "best"}),
]:
    register_method(BenchmarkMethod(_head, head=_head, options=_options, search=HEAD_SEARCH, train=HEAD_TRAIN))
register_method(
    BenchmarkMethod(
        "lora_r8",
        kind="end_to_end",
        tuner="lora",
        options={"rank": 8, "alpha": 16.0},
        search={"lr": [3e-3, 1e-2]},
        train=E2E_TRAIN,
        modalities=("text",),
    )
)
register_method(
    BenchmarkMethod(
        "ia3",
        kind="end_to_end",
        tuner="ia3",
        search={"lr": [1e-2, 3e-2]},
        train=E2E_TRAIN,
        modalities=("text",),
    )
)
register_method(
    BenchmarkMethod(
        "daam_peft",
        kind="end_to_end",
        tuner="daam_peft",
        search={"lr": [1e-2, 3e-2]},
        train=E2E_TRAIN,
        modalities=("text",),
    )
)


# --------------------------------------------------------------------------------------------------- one cell
def _cell_record(cell: Cell, method: BenchmarkMethod) -> dict[str, Any]:
    return {"task": cell.task.to_dict(), "method": method.record(), "seed": cell.seed, "folds": cell.folds}


def _finished(cell: Cell, method: BenchmarkMethod) -> dict[str, Any] | None:
    """The cell's metrics when it is finished with the same settings; ValueError when it was run with others."""
    if not (cell.out / "metrics.json").exists():
        return None
    config = read_json(cell.out / "config.json")
    if _canonical(config.get("benchmark")) != _canonical(_cell_record(cell, method)):
        raise ValueError(
            f"{cell.out} holds a run of {cell.task.name}/{cell.method}/seed{cell.seed} with other settings; use "
            "another --out, or delete that folder to rerun it"
        )
    return read_json(cell.out / "metrics.json")


def _canonical(obj: Any) -> str:
    import json

    return json.dumps(obj, sort_keys=True, default=str)


def run_cell(cell: Cell, features=None, encoder_info=None, *, cache_dir=None) -> dict[str, Any]:
    """Train one cell (resuming what an earlier attempt left) and return its ``metrics.json`` dict."""
    import torch

    from densattn.train import TrainConfig

    method = BENCHMARK_METHODS[cell.method]
    resume = cell.out.exists()
    extra = {
        "data": cell.task.data,
        "data_options": dict(cell.task.data_options),
        "max_samples": cell.task.max_samples,
        "name": method.name,
        "benchmark": _cell_record(cell, method),
    }
    config = TrainConfig(**{**method.train, "seed": cell.seed})
    if features is None:
        features, encoder_info, _ = _features(cell.task, cell.seed, cache_dir)
    if method.kind == "head":
        from densattn.train import run_experiment

        return run_experiment(
            features, head=method.head, head_options=method.options, out=cell.out, train_config=config,
            folds=cell.folds, resume=resume, encoder_info=encoder_info, extra_config=extra, plots=False,
            search=method.search,
        )  # fmt: skip
    if method.kind == "end_to_end":
        from densattn.pipeline import load_task
        from densattn.train.end_to_end import run_end_to_end_experiment

        t = cell.task
        dataset, encoder, info = load_task(
            t.data, t.encoder, data_options=t.data_options, encoder_options=t.encoder_options,
            max_samples=t.max_samples, seed=cell.seed,
        )  # fmt: skip
        items = [dataset.load(i) for i in range(len(dataset))]
        cache = {k: features.manifest.get(k) for k in ("dataset", "dataset_fingerprint", "dtype")}
        with torch.random.fork_rng():
            return run_end_to_end_experiment(
                encoder, items, features.labels, features.classes, out=cell.out, method=method.tuner,
                tuner_options=method.options, train_config=config, folds=cell.folds,
                pooled_features=features.features[:, -1], encoder_info=info,
                extra_config={**extra, "feature_cache": cache}, resume=resume, plots=False, search=method.search,
            )  # fmt: skip
    return method.run(cell, method, features, encoder_info, resume)


def _features(task: Task, seed: int, cache_dir):
    from densattn.pipeline import task_features

    features, info, dataset = task_features(
        task.data, task.encoder, data_options=task.data_options, encoder_options=task.encoder_options,
        max_samples=task.max_samples, seed=seed, cache_dir=cache_dir, progress=False,
    )  # fmt: skip
    if MODALITY_GROUPS[dataset.modality] != task.modality:
        raise ValueError(f"task {task.name!r} says modality {task.modality!r} but its data is {dataset.modality}")
    return features, info, dataset


def _worker(cell: Cell, features, encoder_info, cache_dir, threads: int):
    import torch

    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    metrics = run_cell(cell, features, encoder_info, cache_dir=cache_dir)
    return cell, metrics, time.perf_counter() - t0


# ------------------------------------------------------------------------------------------------------ grid
def plan_cells(tasks: Sequence[Task], methods: Sequence[str], seeds: Sequence[int], out: Path, folds: int):
    """Every applicable (task, method, seed) cell: end-to-end cells first (the longest), then seed by seed, and
    within a seed the modalities interleaved (first text, vision and speech task, then the second of each...), so
    an interrupted grid holds complete rows of every modality."""
    for name in methods:
        if name not in BENCHMARK_METHODS:
            raise ValueError(f"--methods: unknown method {name!r}; choose from {sorted(BENCHMARK_METHODS)}")
    cells = [
        Cell(task, m, int(s), out / "runs" / task.name / m / f"seed{s}", folds)
        for task in tasks
        for m in methods
        if BENCHMARK_METHODS[m].applies_to(task)
        for s in seeds
    ]
    position = {}
    for task in tasks:
        position[task.name] = sum(t.modality == task.modality for t in tasks[: list(tasks).index(task)])

    def order(cell: Cell):
        return (BENCHMARK_METHODS[cell.method].kind == "head", list(seeds).index(cell.seed), position[cell.task.name])

    return sorted(cells, key=order)


def run_benchmark(
    tasks: Sequence[Task],
    methods: Sequence[str],
    seeds: Sequence[int],
    out: str | Path,
    *,
    folds: int = 5,
    workers: int = 1,
    threads: int = 1,
    cache_dir: str | Path | None = None,
    progress: bool | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, dict[str, dict[int, dict[str, Any]]]]:
    """Run (or finish) the grid into ``out``; returns ``{task: {method: {seed: metrics}}}``.

    Finished cells are read back, unfinished ones resume fold by fold (and candidate by candidate inside a fold).
    ``workers`` processes train cells in parallel with ``threads`` torch threads each; features are extracted
    once per (task, seed) through the feature cache, before any training.
    """
    from tqdm.auto import tqdm

    if not tasks or not methods or not seeds:
        raise ValueError("give at least one task, one method and one seed")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds repeats a seed: {list(seeds)}")
    if workers < 1 or threads < 1:
        raise ValueError(f"workers and threads must be >= 1, got {workers} and {threads}")
    log = log or (lambda message: print(message, file=sys.stderr, flush=True))
    out = Path(out)
    cells = plan_cells(tasks, methods, seeds, out, folds)
    if not cells:
        raise ValueError("no method applies to the tasks given (end-to-end methods run on text tasks only)")
    results: dict[str, dict[str, dict[int, dict[str, Any]]]] = {}
    todo = []
    for cell in cells:
        metrics = _finished(cell, BENCHMARK_METHODS[cell.method])
        if metrics is None:
            todo.append(cell)
        else:
            results.setdefault(cell.task.name, {}).setdefault(cell.method, {})[cell.seed] = metrics
    log(f"benchmark: {len(cells)} cells, {len(cells) - len(todo)} finished, {len(todo)} to run -> {out}")
    show = sys.stderr.isatty() if progress is None else progress
    bar = tqdm(total=len(cells), initial=len(cells) - len(todo), desc="benchmark", unit="cell", disable=not show)

    def done(cell, metrics, seconds):
        results.setdefault(cell.task.name, {}).setdefault(cell.method, {})[cell.seed] = metrics
        bar.update(1)
        bar.set_postfix_str(f"{cell.task.name}/{cell.method}/seed{cell.seed}")
        log(
            f"[{cell.task.name}] {cell.method} seed {cell.seed}: accuracy {metrics['accuracy_mean']:.3f} "
            f"({seconds:.0f} s)"
        )

    def extracted():  # features once per (task, seed), in the order the cells need them
        pairs = {(c.task.name, c.seed): c.task for c in todo}
        for (_, seed), task in pairs.items():
            t0 = time.perf_counter()
            fs, info, _ = _features(task, seed, cache_dir)
            log(f"[{task.name} seed {seed}] {len(fs)} x {fs.num_layers} x {fs.dim} in {time.perf_counter() - t0:.0f} s")
            yield [c for c in todo if (c.task.name, c.seed) == (task.name, seed)], fs, info

    failed: list[str] = []

    def failure(cell: Cell, err: BaseException) -> None:  # one broken cell must not stop a grid of hours
        failed.append(f"{cell.task.name}/{cell.method}/seed{cell.seed}: {err}")
        bar.update(1)
        log(f"[{cell.task.name}] {cell.method} seed {cell.seed} FAILED: {err}")

    try:
        if workers == 1:
            for group, fs, info in extracted():
                for cell in group:
                    try:
                        done(*_worker(cell, fs, info, cache_dir, threads))
                    except Exception as err:
                        failure(cell, err)
        else:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                # the main process extracts the next task while the workers train the cells already submitted
                futures = {
                    pool.submit(_worker, cell, fs, info, cache_dir, threads): cell
                    for group, fs, info in extracted()
                    for cell in group
                }
                for future in as_completed(futures):
                    try:
                        done(*future.result())
                    except Exception as err:
                        failure(futures[future], err)
    finally:
        bar.close()
    if failed:
        raise ValueError(f"{len(failed)} cell(s) failed (the others are finished and kept): " + "; ".join(failed))
    return results


def describe_methods() -> dict[str, str]:
    """``{name: one line}`` of the registered methods (for ``--help``)."""
    out = {}
    for name, m in BENCHMARK_METHODS.items():
        what = f"head {m.head}" if m.kind == "head" else f"{m.kind} {m.tuner or ''}".strip()
        where = "all tasks" if m.modalities is None else "/".join(m.modalities) + " tasks"
        out[name] = f"{what}, {where}, search {m.search}"
    return out


def collect_finished(tasks: Sequence[Task], methods: Sequence[str], seeds: Sequence[int], out: Path, folds: int):
    """``{task: {method: {seed: metrics}}}`` of the finished cells only (nothing is trained)."""
    results: dict[str, dict[str, dict[int, dict[str, Any]]]] = {}
    for cell in plan_cells(tasks, methods, seeds, Path(out), folds):
        metrics = _finished(cell, BENCHMARK_METHODS[cell.method])
        if metrics is not None:
            results.setdefault(cell.task.name, {}).setdefault(cell.method, {})[cell.seed] = metrics
    return results


def benchmark(
    task_file: str | Path,
    out: str | Path,
    *,
    tasks: Sequence[str] | None = None,
    methods: Sequence[str] | None = None,
    seeds: Sequence[int] = (0, 1),
    folds: int = 5,
    report: str | Path | None = None,
    report_only: bool = False,
    workers: int = 1,
    cache_dir: str | Path | None = None,
    progress: bool | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run the grid (:func:`run_benchmark`) and write its report (:func:`~densattn.experiments.benchmark_report.
    write_report`) into ``report`` (default ``out``); returns the summary. ``report_only`` trains nothing and
    summarises the cells already finished (tables then cover the methods finished on every task of a ranking)."""
    from densattn.experiments.benchmark_report import summarize_benchmark, write_report

    all_tasks = load_tasks(task_file)
    chosen = select_tasks(all_tasks, tasks)
    methods = list(methods or BENCHMARK_METHODS)
    t0 = time.perf_counter()
    if report_only:
        results = collect_finished(chosen, methods, seeds, Path(out), folds)
        if not results:
            raise ValueError(f"no finished cells under {out}; run the benchmark first")
    else:
        results = run_benchmark(
            chosen, methods, seeds, out, folds=folds, workers=workers, cache_dir=cache_dir, progress=progress, log=log
        )
    order = {m: i for i, m in enumerate(methods)}
    results = {
        t.name: dict(sorted(results[t.name].items(), key=lambda kv: order[kv[0]])) for t in chosen if t.name in results
    }
    summary = summarize_benchmark(results, all_tasks)
    settings = {
        "folds": folds,
        "seeds": list(seeds),
        "workers": workers,
        "methods": {m: BENCHMARK_METHODS[m].record() for m in methods},
        "run_seconds": time.perf_counter() - t0,
    }
    summary["files"] = {k: str(v) for k, v in write_report(summary, settings, report or out).items()}
    return summary
