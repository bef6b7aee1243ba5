"""The one fold runner: every method (a head, a fusion head, an encoder tuned end to end) runs through
:func:`run_folds`.

The runner owns what every method shares: the run directory (validated and locked before any work, see
:class:`~densattn.train.rundir.RunDirectory`), the splits (stratified k-fold, one 80/20 split, or
leave-one-group-out), the validation split carved from each training fold, per-fold seeds (fold k uses
``seed + k`` for its initialisation, batch order and dropout, through forked RNGs), resume (finished folds are kept,
the interrupted one continues from its checkpoint), the training loop (:func:`~densattn.train.loop.train_model`),
saving (adapter-only files), the k-fold summary and the plots. A method supplies only what differs, through
:class:`Method`: ``build`` a fresh model, ``prepare`` it on a fold's training split, the ``inputs`` of examples, and
optionally its optimiser groups and a ``finalize`` step.

Under ``torchrun`` (:mod:`densattn.distributed`) every rank calls :func:`run_folds` with the same arguments. Rank 0
opens (and locks) the run directory and writes the configuration; then a method whose :attr:`Method.parallel` is
``"folds"`` (heads, fusion heads) has each rank train whole folds, round robin, while ``"data"`` (end-to-end
methods) trains every fold on all ranks together, data-parallel. Rank 0 then reads every fold's ``result.json`` and
writes the metrics, plots and adapter. Folds are seeded independently, so the metrics equal a one-process run's.

A run may tune training settings per fold on the validation split (``search={"lr": [1e-3, 3e-3]}``; see
:mod:`densattn.train.fold`): the test split never takes part in the choice.
"""

from __future__ import annotations

import csv
import io
import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from densattn.distributed import Distributed, current
from densattn.io import atomic_copy, atomic_write_json, atomic_write_text, json_default
from densattn.train.config import TrainConfig
from densattn.train.fold import _build, search_candidates, search_grid, train_fold
from densattn.train.inputs import Inputs
from densattn.train.loop import NonFiniteLossError
from densattn.train.optim import describe_groups, optimizer_groups
from densattn.train.rundir import RunDirectory
from densattn.train.splits import carve_validation, fold_splits

__all__ = ["Fold", "Method", "fold_coverage", "make_folds", "run_folds", "summarize"]


@dataclass
class Fold:
    """One fold: indices of its training, validation (carved from training) and test examples, and its seed.

    Example:
        >>> fold = Fold(0, train=np.array([0, 1, 2]), val=np.array([3]), test=np.array([4, 5]), seed=7)
        >>> fold.index, len(fold.train), fold.test.tolist(), fold.seed
        (0, 3, [4, 5], 7)
    """

    index: int
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    seed: int


class Method:
    """What a method supplies to :func:`run_folds`. Subclasses set :attr:`kind`, :attr:`name`, :attr:`labels`,
    :attr:`classes` (and :attr:`groups` for leave-one-group-out) and implement :meth:`describe`, :meth:`build`,
    :meth:`inputs`.

    Example:
        A logistic regression on a toy tensor problem, through the full fold runner:

        >>> import tempfile
        >>> from densattn.adapters import DensityAdapterModel
        >>> x = torch.randn(40, 1, 3, generator=torch.Generator().manual_seed(0))  # (N, L, d)
        >>> class Logistic(Method):
        ...     kind, name, labels, classes = "head", "logistic", (x[:, 0, 0] > 0).long(), ["neg", "pos"]
        ...     def describe(self):
        ...         return {"head": "linear"}
        ...     def build(self, seed):
        ...         return DensityAdapterModel("linear", num_layers=1, dim=3, classes=self.classes)
        ...     def inputs(self, index):
        ...         return Inputs(x[torch.as_tensor(index)])
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     metrics = run_folds(Logistic(), out=folder + "/run", folds=2, plots=False,
        ...                         train_config=TrainConfig(epochs=2, lr=0.1))
        >>> metrics["method"], metrics["num_folds"], sum(map(sum, metrics["confusion_matrix"]))
        ('logistic', 2, 40)
    """

    kind: str  # "head" | "fusion" | "end_to_end"
    name: str  # method name recorded in config.json and metrics.json (e.g. "daam", "lora", "fusion-ban")
    labels: Tensor
    classes: list[str]
    groups: list[str] | None = None

    def describe(self) -> dict[str, Any]:
        """The method's part of ``config.json`` (options, feature shapes, encoder identity)."""
        raise NotImplementedError

    def build(self, seed: int) -> nn.Module:
        """A freshly initialised adapter module (called under a forked RNG seeded with ``seed``)."""
        raise NotImplementedError

    def prepare(self, model: nn.Module, fold: Fold) -> None:
        """Fit what depends on training data only (input statistics) on ``fold.train``."""

    def inputs(self, index: np.ndarray) -> Inputs:
        """Model inputs of the examples at ``index``."""
        raise NotImplementedError

    def optimizer_groups(self, model: nn.Module, config: TrainConfig) -> list[dict[str, Any]]:
        """AdamW parameter groups (default: :func:`~densattn.train.optim.optimizer_groups`)."""
        return optimizer_groups(model, lr=config.lr, weight_decay=config.weight_decay)

    def finalize(self, model: nn.Module, fold: Fold) -> None:
        """After training, before testing (e.g. a probe keeps its best layer on the validation split)."""

    def fold_extras(self, model: nn.Module, initial_state: dict[str, Tensor]) -> dict[str, Any]:
        """Extra entries of a fold's ``result.json`` (e.g. what DAAM's parameters learned)."""
        return {}

    def frozen_params(self) -> int | None:
        """Parameters of the frozen encoder(s) the method builds on, for parameter accounting."""
        return None

    @property
    def parallel(self) -> str:
        """How several ranks share the work: ``"folds"`` (each rank trains whole folds; small models) or
        ``"data"`` (all ranks train each fold together, data-parallel; the default for ``kind == "end_to_end"``)."""
        return "data" if self.kind == "end_to_end" else "folds"


def make_folds(labels: Tensor | np.ndarray, *, folds: int | str, config: TrainConfig, groups=None) -> list[Fold]:
    """The folds of a run: splits by ``folds`` (k, 1 for one 80/20 split, or ``"logo"``), validation carved from
    each training split with seed ``config.seed + k``. Every method on the same labels gets the same folds.

    Example:
        >>> labels = np.array([0, 1] * 10)
        >>> folds = make_folds(labels, folds=4, config=TrainConfig(val_fraction=0.25, seed=3))
        >>> [(len(f.train), len(f.val), len(f.test), f.seed) for f in folds]
        [(11, 4, 5, 3), (11, 4, 5, 4), (11, 4, 5, 5), (11, 4, 5, 6)]
        >>> sorted(np.concatenate([f.test for f in folds]).tolist()) == list(range(20))  # each example tested once
        True
        >>> all(set(f.train).isdisjoint(f.val) and set(f.train).isdisjoint(f.test) for f in folds)
        True
    """
    y = np.asarray(labels)
    logo = folds == "logo"
    splits = fold_splits(y, folds=1 if logo else int(folds), seed=config.seed, groups=groups, leave_one_group_out=logo)
    out = []
    for k, (train_idx, test_idx) in enumerate(splits):
        tr, va = carve_validation(train_idx, y, fraction=config.val_fraction, seed=config.seed + k)
        if len(tr) < 2:
            raise ValueError(
                f"fold {k} keeps {len(tr)} training example(s) after carving validation from {len(y)} examples "
                f"with folds={folds}; raise --max-samples or lower --folds"
            )
        out.append(Fold(index=k, train=tr, val=va, test=np.asarray(test_idx), seed=config.seed + k))
    return out


def fold_coverage(fold_list: list[Fold], labels, classes: list[str]) -> list[str]:
    """One line per class that some fold lacks in its training split (the fold cannot learn it) or its test split
    (the fold cannot score it): too few examples of that class for this many folds. Empty when every fold trains
    and tests on every class. (A class missing from a small validation split only weakens model selection.)

    Example:
        >>> import numpy as np
        >>> folds = [Fold(0, train=np.array([0, 1]), val=np.array([4]), test=np.array([2, 3, 5]), seed=0)]
        >>> for line in fold_coverage(folds, [0, 0, 1, 1, 0, 1], ["a", "b"]):
        ...     print(line)
        class 'a' (3 examples) is missing from the test split of fold 0
        class 'b' (3 examples) is missing from the training split of fold 0
    """
    y = np.asarray(labels)
    lines = []
    for c, name in enumerate(classes):
        total = int((y == c).sum())
        if total == 0:
            continue
        parts = []
        for split in ("training", "test"):
            ks = [f.index for f in fold_list if not (y[f.train if split == "training" else f.test] == c).any()]
            if ks:
                parts.append(f"the {split} split of fold{'s' if len(ks) > 1 else ''} {', '.join(map(str, ks))}")
        if parts:
            lines.append(f"class {name!r} ({total} examples) is missing from {' and '.join(parts)}")
    return lines


def run_folds(
    method: Method,
    *,
    out: str | Path | RunDirectory,
    train_config: TrainConfig | None = None,
    folds: int | str = 5,
    resume: bool = False,
    progress: bool = False,
    extra_config: dict[str, Any] | None = None,
    plots: bool = True,
    dist: Distributed | None = None,
    search: dict[str, Sequence[Any]] | None = None,
) -> dict[str, Any]:
    """Train ``method`` on every fold and write the run directory ``out``; returns the ``metrics.json`` dict.

    Args:
        method: what to train (:class:`Method`).
        out: run directory path, or a :class:`RunDirectory` already opened (and locked) by the caller.
        train_config: optimisation settings.
        folds: k for stratified k-fold, 1 for one 80/20 split, or ``"logo"`` for leave-one-group-out.
        resume: continue an interrupted run (finished folds are kept, the current one continues exactly).
        extra_config: more entries of ``config.json`` (data spec, sample count, a display ``name``...).
        dist: the ranks that share the work (default: those of ``out`` when it is a :class:`RunDirectory`, else
            :func:`densattn.distributed.current`); every rank returns the same metrics.
        search: a small grid of training settings tuned per fold on the validation split, e.g.
            ``{"lr": [3e-4, 1e-3, 3e-3]}`` (:func:`~densattn.train.fold.search_candidates`): every fold trains one
            model per candidate and tests only the best on validation. The chosen values are recorded per fold
            (``result.json`` ``chosen``, ``metrics.json`` ``search``).

    Example:
        See :class:`Method` for a runnable one; :func:`~densattn.train.run_experiment` runs a head this way:

        >>> import tempfile
        >>> from densattn.data.cache import FeatureSet
        >>> from densattn.train.methods import HeadMethod
        >>> fs = FeatureSet(torch.randn(30, 2, 4), torch.arange(30) % 2, ["a", "b"], [str(i) for i in range(30)])
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     metrics = run_folds(HeadMethod(fs, "pool"), out=folder, folds=3, plots=False,
        ...                         train_config=TrainConfig(epochs=1), search={"lr": [1e-3, 1e-2]})
        ...     sorted(p.name for p in Path(folder).iterdir() if not p.name.startswith("."))
        ['adapter_config.json', 'adapter_model.safetensors', 'config.json', 'folds', 'metrics.csv', 'metrics.json']
        >>> metrics["num_folds"], metrics["search"]["grid"], len(metrics["folds"][0]["search"])
        (3, {'lr': [0.001, 0.01]}, 2)
    """
    cfg = train_config or TrainConfig()
    candidates = search_candidates(search, cfg)
    if dist is None:
        dist = out.dist if isinstance(out, RunDirectory) else current()
    run = out if isinstance(out, RunDirectory) else RunDirectory(out, resume=resume, dist=dist)
    try:
        return _run(method, run, cfg, folds, run.resume, progress, dict(extra_config or {}), plots, dist, candidates)
    finally:
        if not isinstance(out, RunDirectory):
            run.close()


def _run(method, run: RunDirectory, cfg, folds, resume, progress, extra, plots, dist: Distributed, candidates):
    fold_list = make_folds(method.labels, folds=folds, config=cfg, groups=method.groups)
    gaps = fold_coverage(fold_list, method.labels, list(method.classes))
    if gaps and dist.is_main:
        warnings.warn(
            f"too few examples of some classes for folds={folds}: {'; '.join(gaps)}. Those folds cannot learn or "
            "score that class; raise --max-samples, lower --folds, or merge rare classes",
            stacklevel=3,
        )
    probe = _build(method, cfg.seed)
    config = {
        "kind": method.kind,
        "method": method.name,
        **method.describe(),
        "train": cfg.to_dict(),
        "optimizer_groups": describe_groups(method.optimizer_groups(probe, cfg)),
        "folds": folds,
        "num_examples": len(method.labels),
        "classes": list(method.classes),
    }
    if candidates:
        config["search"] = search_grid(candidates)
    clash = sorted(set(extra) & (set(config) - {"feature_cache", "encoder"}))
    if clash:
        raise ValueError(f"extra_config may not override {clash}: the runner records them from the method itself")
    config.update(extra)
    del probe
    dist.check_same(json.dumps(config, sort_keys=True, default=json_default), "run configuration")
    run.write_config(config)
    y = torch.as_tensor(method.labels, dtype=torch.long)
    done = dist.run_on_main(lambda: set(run.finished_folds()) if resume else set())
    pending = [fold for fold in fold_list if fold.index not in done]

    def train(fold: Fold, ranks: Distributed) -> None:
        fold_cfg = cfg.replace(seed=fold.seed)
        train_fold(method, run, fold, y, fold_cfg, candidates, resume, progress and dist.is_main, ranks)

    if method.parallel == "data" or not dist.enabled:
        for fold in pending:  # every rank on every fold, each on its part of every batch
            train(fold, dist)
    elif method.parallel == "folds":
        dist.run_all(lambda: [train(fold, Distributed()) for fold in dist.share(pending)])  # whole folds per rank
    else:
        raise ValueError(f"{type(method).__name__}.parallel must be 'folds' or 'data', got {method.parallel!r}")
    return dist.run_on_main(lambda: _finish(method, run, fold_list, plots, candidates))


def _finish(method: Method, run: RunDirectory, fold_list: list[Fold], plots: bool, candidates) -> dict[str, Any]:
    """Rank 0, once every fold is finished: the adapter, metrics and plots, from the folds' ``result.json``."""
    rows, failed = [], []
    for fold in fold_list:
        row = run.fold_result(fold.index)
        (failed if row.get("failed") else rows).append(row)
    if not rows:
        raise NonFiniteLossError(
            f"every fold diverged (fold {failed[0]['fold']}: {failed[0]['reason']}); nothing but the failed folds' "
            f"result.json was saved in {run.path}: lower --lr and train into a new --out"
        )
    source = run.path / "folds" / str(rows[0]["fold"]) / "adapter"  # fold 0, unless it failed
    for name in ("adapter_model.safetensors", "adapter_config.json"):  # weights first, config last
        atomic_copy(source / name, run.path / name)
    metrics = {**summarize(rows, list(method.classes)), "kind": method.kind, "method": method.name}
    metrics["adapter_fold"] = rows[0]["fold"]
    metrics["num_failed_folds"] = len(failed)
    metrics["failed_folds"] = [{"fold": r["fold"], "reason": r["reason"]} for r in failed]
    metrics["frozen_params"] = method.frozen_params()
    if candidates:
        metrics["search"] = {"grid": search_grid(candidates), "chosen": [r["chosen"] for r in rows]}
    reports = [r["daam_parameters"] for r in rows if "daam_parameters" in r]
    if reports:
        metrics["daam_parameters"] = {"per_fold_summary": [r["summary"] for r in reports], "fold0": reports[0]}
    atomic_write_json(run.path / "metrics.json", metrics)
    atomic_write_text(run.path / "metrics.csv", metrics_csv(rows))
    if plots:
        _plot(run.path, method, rows, metrics, reports)
    return metrics


def summarize(rows: list[dict[str, Any]], classes: list[str]) -> dict[str, Any]:
    """Mean ± std over folds, per-class F1, the summed confusion matrix and parameter counts.

    The std is the sample std (``ddof=1``) over folds; a single fold has std 0.

    Example:
        >>> row = {"accuracy": 0.5, "macro_f1": 0.4, "per_class_f1": [0.6, 0.2], "confusion_matrix": [[2, 0], [2, 0]],
        ...        "trainable_params": 10, "trainable_params_without_classifier": 4, "seconds_per_epoch": 0.1}
        >>> s = summarize([row, {**row, "accuracy": 1.0, "confusion_matrix": [[2, 0], [0, 2]]}], ["a", "b"])
        >>> s["accuracy_mean"], round(s["accuracy_std"], 4), s["confusion_matrix"], s["per_class_f1_mean"]
        (0.75, 0.3536, [[4, 0], [2, 2]], {'a': 0.6, 'b': 0.2})
    """
    acc = np.array([r["accuracy"] for r in rows])
    f1 = np.array([r["macro_f1"] for r in rows])
    per_class = np.array([r["per_class_f1"] for r in rows])
    ddof = 1 if len(acc) > 1 else 0
    return {
        "accuracy_mean": float(acc.mean()),
        "accuracy_std": float(acc.std(ddof=ddof)),
        "macro_f1_mean": float(f1.mean()),
        "macro_f1_std": float(f1.std(ddof=ddof)),
        "per_class_f1_mean": dict(zip(classes, per_class.mean(0).tolist())),
        "confusion_matrix": np.sum([r["confusion_matrix"] for r in rows], axis=0).tolist(),
        "trainable_params": rows[0]["trainable_params"],
        "trainable_params_without_classifier": rows[0]["trainable_params_without_classifier"],
        "seconds_per_epoch": float(np.mean([r["seconds_per_epoch"] for r in rows])),
        "num_folds": len(rows),
        "classes": classes,
        "folds": [{k: v for k, v in r.items() if k not in ("history", "daam_parameters")} for r in rows],
    }


def metrics_csv(rows: list[dict[str, Any]]) -> str:
    """One CSV row per fold: accuracy, macro-F1, best epoch, epochs run, seconds per epoch."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["fold", "accuracy", "macro_f1", "best_epoch", "epochs_run", "seconds_per_epoch"])
    for r in rows:
        writer.writerow(
            [
                r["fold"],
                f"{r['accuracy']:.6f}",
                f"{r['macro_f1']:.6f}",
                r["best_epoch"],
                r["epochs_run"],
                f"{r['seconds_per_epoch']:.4f}",
            ]
        )
    return buf.getvalue()


def _plot(path: Path, method: Method, rows, metrics, reports) -> None:
    from densattn.train.plots import plot_confusion, plot_curves

    plot_curves([r["history"] for r in rows], path / "curves.png", title=f"{method.name}: training curves")
    plot_confusion(
        np.array(metrics["confusion_matrix"]),
        list(method.classes),
        path / "confusion.png",
        title=f"{method.name}: confusion (all folds)",
    )
    if reports:
        from densattn.analysis.daam_report import plot_daam_parameters

        plot_daam_parameters(reports[0], path / "daam_parameters.png", title=f"{method.name}: learned DAAM (fold 0)")
