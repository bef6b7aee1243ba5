"""One fold of a run: train, choose on validation, test once, save (:func:`train_fold`); and the per-fold search of
training settings (:func:`search_candidates`).

Without a search a fold trains one model with the run's settings. With a search (``run_folds(..., search={"lr":
[1e-3, 3e-3]})``) it trains one model per candidate on the fold's training split, with the fold's seed (the same
initialisation and batch order), scores each on the validation split, and tests only the best one (ties: the earlier
candidate). The test split never takes part in the choice. A candidate that diverges is recorded as failed and the
others still compete; a fold fails only when every candidate does. The chosen settings are recorded per fold
(``result.json``: ``chosen`` and every candidate's validation score).
"""

from __future__ import annotations

import itertools
import shutil
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from densattn.distributed import Distributed
from densattn.io import atomic_copy, atomic_save_file, atomic_write_json, read_json
from densattn.train.config import TrainConfig
from densattn.train.loop import NonFiniteLossError, predict_logits, train_model
from densattn.train.metrics import classification_metrics

__all__ = ["SEARCHABLE", "search_candidates", "search_grid", "train_fold"]

#: TrainConfig fields a search may tune (the seed, device and validation share define the folds, not the model)
SEARCHABLE = tuple(
    f.name for f in fields(TrainConfig) if f.name not in ("seed", "device", "val_fraction", "amp", "on_nonfinite")
)


def search_candidates(search: dict[str, Sequence[Any]] | None, config: TrainConfig) -> list[dict[str, Any]]:
    """The candidates of a per-fold search: the product of the value lists, in order (first key slowest).

    Example:
        >>> search_candidates({"lr": [1e-3, 3e-3], "epochs": [2]}, TrainConfig())
        [{'lr': 0.001, 'epochs': 2}, {'lr': 0.003, 'epochs': 2}]
        >>> search_candidates({"seed": [0, 1]}, TrainConfig())
        Traceback (most recent call last):
        ...
        ValueError: search: cannot tune 'seed'; searchable training settings are ...

    Raises:
        ValueError: an unknown or unsearchable key, an empty or repeated value list, or a value TrainConfig rejects.
    """
    if not search:
        return []
    if not isinstance(search, dict):
        raise ValueError(f"search must be a dict such as {{'lr': [3e-4, 1e-3]}}, got {search!r}")
    for key, values in search.items():
        if key not in SEARCHABLE:
            raise ValueError(f"search: cannot tune {key!r}; searchable training settings are {list(SEARCHABLE)}")
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or len(values) == 0:
            raise ValueError(f"search[{key!r}] must be a non-empty list of values, got {values!r}")
        if len(set(map(repr, values))) != len(values):
            raise ValueError(f"search[{key!r}] repeats a value: {list(values)}")
    keys = list(search)
    out = [dict(zip(keys, combo)) for combo in itertools.product(*(search[k] for k in keys))]
    for overrides in out:
        config.replace(**overrides)  # validated now, before any work
    return out


def search_grid(candidates: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """``{setting: [values]}`` of a candidate list (what ``config.json`` records); inverse of
    :func:`search_candidates` for a full grid.

    Example:
        >>> candidates = search_candidates({"lr": [1e-3, 3e-3], "batch_size": [16, 32]}, TrainConfig())
        >>> len(candidates), search_grid(candidates)
        (4, {'lr': [0.001, 0.003], 'batch_size': [16, 32]})
    """
    keys = list(candidates[0])
    return {k: list(dict.fromkeys(c[k] for c in candidates)) for k in keys}


def _build(method, seed: int) -> nn.Module:
    with torch.random.fork_rng():  # module initialisation draws from a forked RNG: no global side effect
        torch.manual_seed(seed)
        return method.build(seed)


def _fit(method, fold, y: Tensor, cfg: TrainConfig, folder: Path, resume, progress, dist: Distributed):
    """A freshly built model trained on ``fold.train`` with model selection on ``fold.val``:
    ``(model, outcome, initial adapter state)``."""
    model = _build(method, fold.seed)
    method.prepare(model, fold)
    initial = model.adapter_state_dict()
    folder.mkdir(parents=True, exist_ok=True)
    outcome = train_model(
        model,
        method.inputs(fold.train),
        y[fold.train],
        method.inputs(fold.val),
        y[fold.val],
        cfg,
        groups=method.optimizer_groups(model, cfg),
        checkpoint=folder / "state.pt",
        resume=resume,
        progress=progress,
        dist=dist,
    )
    return model, outcome, initial


def _record(outcome) -> dict[str, Any]:
    return {
        "best_val_accuracy": outcome.best_score,
        "best_epoch": outcome.best_epoch,
        "epochs_run": len(outcome.history),
        "train_seconds": outcome.seconds,
        "history": outcome.history,
    }


def train_fold(method, run, fold, y: Tensor, cfg: TrainConfig, candidates, resume, progress, dist: Distributed):
    """Train one fold (every candidate of the search, or the run's own settings), test the model chosen on
    validation, and write ``folds/K/{adapter/, last.safetensors, result.json}`` (rank 0; ``result.json`` last).

    Args:
        method: a :class:`~densattn.train.runner.Method`; ``run``: the open
            :class:`~densattn.train.rundir.RunDirectory`; ``fold``: a :class:`~densattn.train.runner.Fold`;
            ``y``: all labels ``(N,)``; ``cfg``: the run's :class:`TrainConfig`; ``candidates``: from
            :func:`search_candidates` (empty: no search); ``resume``, ``progress``; ``dist``: the ranks.

    Raises:
        NonFiniteLossError: every candidate diverged and ``cfg.on_nonfinite`` is ``"error"``.

    Example:
        >>> import tempfile
        >>> from densattn.data.cache import FeatureSet
        >>> from densattn.distributed import current
        >>> from densattn.train import RunDirectory, make_folds
        >>> from densattn.train.methods import HeadMethod
        >>> fs = FeatureSet(torch.randn(30, 2, 4), torch.arange(30) % 2, ["a", "b"], [str(i) for i in range(30)])
        >>> cfg = TrainConfig(epochs=1)
        >>> fold = make_folds(fs.labels, folds=3, config=cfg)[0]
        >>> grid = search_candidates({"lr": [1e-3, 1e-2]}, cfg)
        >>> with tempfile.TemporaryDirectory() as folder, RunDirectory(folder) as run:
        ...     train_fold(HeadMethod(fs, "pool"), run, fold, fs.labels, cfg, grid, False, False, current())
        ...     print(sorted(p.name for p in run.fold_dir(0).iterdir()))
        ...     result = run.fold_result(0)
        ['adapter', 'last.safetensors', 'result.json']
        >>> result["num_test"], [c["lr"] for c in result["search"]], result["chosen"]["lr"] in (1e-3, 1e-2)
        (10, [0.001, 0.01], True)
    """
    fold_dir = run.fold_dir(fold.index)
    searching = bool(candidates)
    records: list[dict[str, Any]] = []
    best: tuple[int, nn.Module | None, dict[str, Tensor] | None] | None = None  # (candidate, model, last state)
    initial = None  # the adapter state before training (the same for every candidate: same seed)
    for i, overrides in enumerate(candidates or [{}]):
        folder = fold_dir / "search" / str(i) if searching else fold_dir
        model = last = None
        if searching and resume and (folder / "candidate.json").exists():
            record = read_json(folder / "candidate.json")  # finished earlier: its weights are on disk
        else:
            try:
                model, outcome, initial = _fit(
                    method, fold, y, cfg.replace(**overrides), folder, resume, progress, dist
                )
            except NonFiniteLossError as err:  # (data-parallel: every rank holds the same parameters, so all raise)
                if not searching:
                    return _failed(fold, fold_dir, err, cfg, dist)
                record = {"failed": True, "reason": str(err)}
            else:
                record, last = _record(outcome), outcome.last_state
                if searching and dist.is_main:
                    atomic_save_file(outcome.best_state, folder / "best.safetensors")
                    atomic_save_file(last, folder / "last.safetensors")
            if searching and dist.is_main:
                atomic_write_json(folder / "candidate.json", record, indent=None)  # last: the candidate is done
                (folder / "state.pt").unlink(missing_ok=True)
        records.append({"candidate": i, **overrides, **record})
        score = record.get("best_val_accuracy", float("-inf"))
        if not record.get("failed") and (best is None or score > records[best[0]]["best_val_accuracy"]):
            best = (i, model, last)
    if best is None:
        return _failed(fold, fold_dir, NonFiniteLossError(records[0]["reason"]), cfg, dist)
    chosen, model, last = best
    if model is None:  # the chosen candidate finished in an earlier process
        from safetensors.torch import load_file

        model = _build(method, fold.seed)
        method.prepare(model, fold)
        initial = model.adapter_state_dict()
        model.load_adapter_state_dict(load_file(str(fold_dir / "search" / str(chosen) / "best.safetensors")))
        model.to(torch.device(cfg.device))
    method.finalize(model, fold)
    logits = predict_logits(model, method.inputs(fold.test), dist=dist)
    if not dist.is_main:
        return None  # data-parallel: rank 0 writes the fold
    metrics = classification_metrics(y[fold.test].numpy(), logits.argmax(-1).numpy(), len(method.classes))
    record = records[chosen]
    seconds = float(sum(r.get("train_seconds", 0.0) for r in records))  # the whole search: what the method cost
    epochs = int(sum(r.get("epochs_run", 0) for r in records))
    row = {
        "fold": fold.index,
        **metrics,
        "best_epoch": record["best_epoch"],
        "best_val_accuracy": record["best_val_accuracy"],
        "epochs_run": record["epochs_run"],
        "train_seconds": seconds,
        "seconds_per_epoch": seconds / max(epochs, 1),
        "history": record["history"],
        "num_train": len(fold.train),
        "num_val": len(fold.val),
        "num_test": len(fold.test),
        **model.parameter_counts(),
        **method.fold_extras(model, initial),
    }
    if searching:
        row["chosen"] = dict(candidates[chosen])
        row["search"] = [{k: v for k, v in r.items() if k != "history"} for r in records]
    model.save_pretrained(fold_dir / "adapter")
    if last is not None:
        atomic_save_file(last, fold_dir / "last.safetensors")
    else:
        atomic_copy(fold_dir / "search" / str(chosen) / "last.safetensors", fold_dir / "last.safetensors")
    atomic_write_json(fold_dir / "result.json", row, indent=None)  # last: the fold is finished
    (fold_dir / "state.pt").unlink(missing_ok=True)
    shutil.rmtree(fold_dir / "search", ignore_errors=True)  # result.json records every candidate
    return None


def _failed(fold, fold_dir: Path, err: NonFiniteLossError, cfg: TrainConfig, dist: Distributed) -> None:
    if cfg.on_nonfinite != "skip-fold":
        raise NonFiniteLossError(
            f"fold {fold.index}: {err}; or pass --on-nonfinite skip-fold to record the fold as failed and go on"
        ) from None
    if dist.is_main:  # the fold is finished as failed: nothing of its model is saved, only why it failed
        atomic_write_json(
            fold_dir / "result.json", {"fold": fold.index, "failed": True, "reason": str(err)}, indent=None
        )
        (fold_dir / "state.pt").unlink(missing_ok=True)
        shutil.rmtree(fold_dir / "search", ignore_errors=True)
    return None
