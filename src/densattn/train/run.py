"""One experiment on cached features: folds, training, metrics and the files of a run directory.

A run directory holds ``config.json`` (resolved), ``metrics.json`` / ``metrics.csv``, the adapter of the first
fold's best-validation model (``adapter_model.safetensors`` + ``adapter_config.json``), per-fold checkpoints
(``folds/K/best.safetensors``, ``last.safetensors``, ``state.pt`` for ``--resume``), ``curves.png`` and
``confusion.png``.
"""

from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from densattn.adapter import DensityAdapterModel
from densattn.daam_report import daam_parameter_report, plot_daam_parameters
from densattn.data.cache import FeatureSet, atomic_save_file, atomic_write_text
from densattn.heads import count_parameters
from densattn.train.loop import TrainConfig, predict_logits, train_model
from densattn.train.metrics import classification_metrics
from densattn.train.splits import carve_validation, fold_splits


def _json_default(obj):
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def run_experiment(
    features: FeatureSet,
    *,
    head: str,
    out: str | Path,
    head_options: dict[str, Any] | None = None,
    train_config: TrainConfig | None = None,
    folds: int | str = 5,
    resume: bool = False,
    progress: bool = False,
    encoder_info: dict[str, Any] | None = None,
    extra_config: dict[str, Any] | None = None,
    plots: bool = True,
    stop_after: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """Train ``head`` on every fold of ``features`` and write the run directory ``out``.

    Args:
        features: cached features (``FeatureSet``).
        head: ``daam``, ``gqdaam``, ``mha``, ``mha_bn``, ``conv``, ``pool`` or ``linear``.
        out: run directory; must be new or empty unless ``resume``.
        head_options: options of the head (e.g. ``preset``, ``num_heads``).
        train_config: optimisation settings.
        folds: k for stratified k-fold, 1 for one 80/20 split, or ``"logo"`` for leave-one-group-out.
        resume: continue an interrupted run in ``out`` (finished folds are kept, the current one continues).
        stop_after: ``(fold, epochs)`` to stop early, for tests of resume.

    Returns:
        The metrics dict written to ``metrics.json``.
    """
    cfg = train_config or TrainConfig()
    head_options = dict(head_options or {})
    if encoder_info is None and isinstance(features.manifest.get("encoder"), dict):
        encoder_info = dict(features.manifest["encoder"])  # the cache's encoder identity (name, hash, settings)
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not resume:
        raise ValueError(f"run directory {out} is not empty; pass --resume to continue it or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    logo = folds == "logo"
    splits = fold_splits(
        features.labels.numpy(),
        folds=1 if logo else int(folds),
        seed=cfg.seed,
        groups=features.groups,
        leave_one_group_out=logo,
    )
    config = {
        "head": head,
        "head_options": head_options,
        "train": cfg.to_dict(),
        "folds": folds,
        "num_examples": len(features),
        "num_layers": features.num_layers,
        "dim": features.dim,
        "classes": features.classes,
        "encoder": encoder_info or {},
        "feature_cache": {k: features.manifest.get(k) for k in ("dataset", "dataset_fingerprint", "dtype")},
        **(extra_config or {}),
    }
    write_run_config(out, config, resume=resume)
    x, y = features.features, features.labels
    num_classes = len(features.classes)
    fold_results = []
    adapter = None
    for k, fold_dir, tr, va, test_idx in pending_folds(out, splits, y, cfg, resume=resume, finished=fold_results):
        model = DensityAdapterModel(
            head,
            num_layers=features.num_layers,
            dim=features.dim,
            classes=features.classes,
            head_options=head_options,
            encoder=encoder_info,
        )
        model.head.set_input_stats(x[tr])
        initial_state = {name: t.detach().clone() for name, t in model.head.state_dict().items()}
        fold_cfg = TrainConfig(**{**cfg.to_dict(), "seed": cfg.seed + k})
        t0 = time.perf_counter()
        stop = stop_after[1] if stop_after is not None and stop_after[0] == k else None
        outcome = train_model(
            model.head,
            x[tr],
            y[tr],
            x[va],
            y[va],
            fold_cfg,
            state_path=fold_dir / "state.pt",
            resume=resume,
            progress=progress,
            stop_after_epochs=stop,
        )
        if outcome.get("interrupted"):
            return {"interrupted": True, "fold": k}
        seconds = time.perf_counter() - t0
        logits = predict_logits(model.head, x[test_idx])
        metrics = classification_metrics(y[test_idx].numpy(), logits.argmax(-1).numpy(), num_classes)
        result = fold_result(
            k, metrics, outcome, seconds, len(tr), len(va), len(test_idx), count_parameters(model.head)
        )
        report = daam_parameter_report(model.head, initial_state)
        if report["modules"]:  # what DAAM learned: offsets/spreads and how far they moved from init
            result["daam_parameters"] = report
        if outcome["selected_layer"] is not None:
            model.head_options["layer"] = outcome["selected_layer"]
        atomic_save_file(_clean(outcome["best_state"]), fold_dir / "best.safetensors")
        atomic_save_file(_clean(outcome["last_state"]), fold_dir / "last.safetensors")
        model.save_pretrained(fold_dir / "adapter")
        atomic_write_text(fold_dir / "result.json", json.dumps(result, default=_json_default))
        (fold_dir / "state.pt").unlink(missing_ok=True)
        fold_results.append(result)
        if k == 0:
            adapter = model
    if adapter is None:
        adapter = DensityAdapterModel.from_pretrained(out / "folds" / "0" / "adapter", is_trainable=False)
    adapter.save_pretrained(out)
    metrics = summarize(fold_results, features.classes)
    metrics["head"] = head
    metrics["method"] = (extra_config or {}).get("method", "head")
    metrics["frozen_params"] = (encoder_info or {}).get("frozen_params")  # the encoder's weights, all frozen
    daam_reports = [r["daam_parameters"] for r in fold_results if "daam_parameters" in r]
    if daam_reports:
        metrics["daam_parameters"] = {
            "per_fold_summary": [r["summary"] for r in daam_reports],
            "fold0": daam_reports[0],
        }
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2, default=_json_default))
    atomic_write_text(out / "metrics.csv", _metrics_csv(fold_results))
    if plots:
        from densattn.train.plots import plot_confusion, plot_curves

        plot_curves([r["history"] for r in fold_results], out / "curves.png", title=f"{head}: training curves")
        if daam_reports:
            plot_daam_parameters(daam_reports[0], out / "daam_parameters.png", title=f"{head}: learned DAAM (fold 0)")
        plot_confusion(
            np.array(metrics["confusion_matrix"]),
            features.classes,
            out / "confusion.png",
            title=f"{head}: confusion (all folds)",
        )
    return metrics


def pending_folds(out: Path, splits, labels, cfg: TrainConfig, *, resume: bool, finished: list[dict[str, Any]]):
    """Yield ``(k, fold_dir, train_idx, val_idx, test_idx)`` for every fold still to train.

    With ``resume``, a fold whose ``result.json`` exists is appended to ``finished`` instead. Each yielded fold has
    its folder created, its validation split carved from training data (seed ``cfg.seed + k``) and the global RNG
    seeded with ``cfg.seed + k``, so a model built next initialises the same way in every kind of run.
    """
    for k, (train_idx, test_idx) in enumerate(splits):
        fold_dir = Path(out) / "folds" / str(k)
        if resume and (fold_dir / "result.json").exists():
            finished.append(json.loads((fold_dir / "result.json").read_text()))
            continue
        fold_dir.mkdir(parents=True, exist_ok=True)
        tr, va = carve_validation(train_idx, np.asarray(labels), fraction=cfg.val_fraction, seed=cfg.seed + k)
        torch.manual_seed(cfg.seed + k)
        yield k, fold_dir, tr, va, test_idx


def write_run_config(out: Path, config: dict[str, Any], *, resume: bool) -> None:
    """Write ``out/config.json``; with ``resume``, refuse a run that was started with another configuration."""
    path = Path(out) / "config.json"
    if resume and path.exists():
        previous = json.loads(path.read_text())
        if json.dumps(previous, sort_keys=True, default=_json_default) != json.dumps(
            config, sort_keys=True, default=_json_default
        ):
            raise ValueError(f"--resume: {out} was started with a different configuration; use a new --out")
    atomic_write_text(path, json.dumps(config, indent=2, default=_json_default))


def fold_result(
    fold: int,
    metrics: dict[str, Any],
    outcome: dict[str, Any],
    seconds: float,
    num_train: int,
    num_val: int,
    num_test: int,
    parameters: dict[str, int],
) -> dict[str, Any]:
    """One fold's ``result.json``: test metrics, training outcome, timing, split sizes and parameter counts."""
    epochs_run = len(outcome["history"])
    return {
        "fold": fold,
        **metrics,
        "best_epoch": outcome["best_epoch"],
        "best_val_accuracy": outcome["best_val_accuracy"],
        "epochs_run": epochs_run,
        "train_seconds": seconds,
        "seconds_per_epoch": seconds / max(epochs_run, 1),
        "selected_layer": outcome.get("selected_layer"),
        "history": outcome["history"],
        "num_train": num_train,
        "num_val": num_val,
        "num_test": num_test,
        **parameters,
    }


def _clean(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in state.items()}


def summarize(fold_results: list[dict[str, Any]], classes: list[str]) -> dict[str, Any]:
    """Mean ± std over folds, per-class F1 and the summed confusion matrix."""
    acc = np.array([r["accuracy"] for r in fold_results])
    f1 = np.array([r["macro_f1"] for r in fold_results])
    per_class = np.array([r["per_class_f1"] for r in fold_results])
    ddof = 1 if len(acc) > 1 else 0
    return {
        "accuracy_mean": float(acc.mean()),
        "accuracy_std": float(acc.std(ddof=ddof)),
        "macro_f1_mean": float(f1.mean()),
        "macro_f1_std": float(f1.std(ddof=ddof)),
        "per_class_f1_mean": dict(zip(classes, per_class.mean(0).tolist())),
        "confusion_matrix": np.sum([r["confusion_matrix"] for r in fold_results], axis=0).tolist(),
        "trainable_params": fold_results[0]["trainable_params"],
        "trainable_params_without_classifier": fold_results[0]["trainable_params_without_classifier"],
        "seconds_per_epoch": float(np.mean([r["seconds_per_epoch"] for r in fold_results])),
        "num_folds": len(fold_results),
        "classes": classes,
        "folds": [{k: v for k, v in r.items() if k not in ("history", "daam_parameters")} for r in fold_results],
    }


def _metrics_csv(fold_results: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["fold", "accuracy", "macro_f1", "best_epoch", "epochs_run", "seconds_per_epoch"])
    for r in fold_results:
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
