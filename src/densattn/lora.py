"""LoRA and LoRA+ baselines trained end to end on raw inputs, on the same folds and run layout as the heads.

``densattn train --method lora|loraplus`` calls :func:`train_lora_from_args`. Each fold builds a fresh
:class:`~densattn.lora_model.LoraClassifier` (seeded), trains the LoRA matrices and the classifier with AdamW,
ReduceLROnPlateau on validation accuracy, early stopping and gradient clipping (the heads' :class:`TrainConfig`),
keeps the best-validation state and scores it on the fold's test split. Splits are the heads' own:
``fold_splits(labels, seed=cfg.seed)`` and, per fold k, ``carve_validation(..., seed=cfg.seed + k)``, computed on the
same (cached, seeded-subsampled) dataset, so every method is scored on the same examples.

LoRA+ (Hayou et al. 2024, arXiv `2402.12354 <https://arxiv.org/abs/2402.12354>`_): the ``B`` matrices get learning
rate ``ratio * lr`` (default 16), the ``A`` matrices and the classifier ``lr`` (:func:`lora_param_groups`).

Run directory: ``config.json``, ``metrics.json`` (the heads' schema plus ``method``, ``lora_rank``, ``lora_alpha``,
``target_modules``, ``loraplus_ratio``, ``frozen_params``), ``metrics.csv``, fold 0's best model as
``lora_model.safetensors`` + ``lora_config.json`` (:meth:`LoraClassifier.from_pretrained`), ``folds/K/{model/,
best.safetensors, last.safetensors, result.json}``, ``curves.png``, ``confusion.png``. ``--resume`` keeps finished
folds and reruns the unfinished one from its start.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from densattn.data.cache import atomic_save_file, atomic_write_text
from densattn.lora_model import (
    LoraClassifier,
    default_target_modules,
    head_parameter_accounting,
    lora_parameter_count,
    parameter_accounting,
    slice_inputs,
)
from densattn.train.loop import TrainConfig
from densattn.train.metrics import classification_loss, classification_metrics
from densattn.train.run import _json_default, _metrics_csv, fold_result, pending_folds, summarize, write_run_config
from densattn.train.splits import fold_splits

__all__ = [
    "LoraClassifier",
    "default_target_modules",
    "head_parameter_accounting",
    "lora_param_groups",
    "lora_parameter_count",
    "parameter_accounting",
    "run_lora_experiment",
    "train_lora",
    "train_lora_from_args",
]


def lora_param_groups(
    model: LoraClassifier, *, lr: float, weight_decay: float, loraplus_ratio: float | None = None
) -> list[dict[str, Any]]:
    """AdamW parameter groups: ``lora_A`` matrices at ``lr``, ``lora_B`` at ``lr * loraplus_ratio`` (LoRA+) or ``lr``
    (LoRA), the classifier at ``lr``. Every trainable parameter is in exactly one group."""
    if loraplus_ratio is not None and not loraplus_ratio > 0:
        raise ValueError(f"loraplus_ratio must be > 0, got {loraplus_ratio}")
    groups: dict[str, list[Tensor]] = {"lora_A": [], "lora_B": [], "classifier": []}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        key = "lora_B" if "lora_B" in name else "lora_A" if "lora_A" in name else "classifier"
        if key == "classifier" and not name.startswith("classifier."):
            raise ValueError(f"unexpected trainable parameter {name!r} (neither LoRA nor classifier)")
        groups[key].append(p)
    ratio = loraplus_ratio or 1.0
    rates = {"lora_A": lr, "lora_B": lr * ratio, "classifier": lr}
    return [{"params": ps, "lr": rates[k], "weight_decay": weight_decay, "name": k} for k, ps in groups.items() if ps]


def _lengths(inputs: dict[str, Tensor]) -> Tensor | None:
    """Token counts of text inputs (None for audio and images, whose inputs have a fixed size)."""
    mask = inputs.get("attention_mask")
    return None if mask is None else mask.sum(1)


def _batches(order: Tensor, lengths: Tensor | None, batch_size: int, generator: torch.Generator) -> list[Tensor]:
    """Mini-batches of ``order``. For text, examples of similar length are batched together (within pools of 16
    batches, then the batches are shuffled), so little compute goes to padding; otherwise plain slices."""
    if lengths is None:
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    batches = []
    pool = batch_size * 16
    for start in range(0, len(order), pool):
        chunk = order[start : start + pool]
        chunk = chunk[torch.argsort(lengths[chunk], stable=True)]
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]


@torch.no_grad()
def predict_logits(model: LoraClassifier, inputs: dict[str, Tensor], *, batch_size: int = 64) -> Tensor:
    """Logits in input order; text is run sorted by length (less padding) and put back in order."""
    model.eval()
    n = len(next(iter(inputs.values())))
    lengths = _lengths(inputs)
    order = torch.arange(n) if lengths is None else torch.argsort(lengths, stable=True)
    logits = torch.cat([model(slice_inputs(inputs, order[i : i + batch_size])).cpu() for i in range(0, n, batch_size)])
    out = torch.empty_like(logits)
    out[order] = logits
    return out


def train_lora(
    model: LoraClassifier,
    train_inputs: dict[str, Tensor],
    train_y: Tensor,
    val_inputs: dict[str, Tensor],
    val_y: Tensor,
    config: TrainConfig,
    *,
    loraplus_ratio: float | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Train the LoRA matrices and the classifier; returns ``{"history", "best_epoch", "best_val_accuracy",
    "best_state", "last_state", "seconds"}`` and leaves ``model`` holding the best validation state."""
    from tqdm.auto import tqdm

    n = len(train_y)
    if n == 0 or len(val_y) == 0:
        raise ValueError("training and validation splits must be non-empty; raise --max-samples or lower --folds")
    generator = torch.Generator().manual_seed(config.seed)
    groups = lora_param_groups(model, lr=config.lr, weight_decay=config.weight_decay, loraplus_ratio=loraplus_ratio)
    params = [p for g in groups for p in g["params"]]
    optimizer = torch.optim.AdamW(groups)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="max", factor=config.plateau_factor, patience=config.plateau_patience
    )
    focal = {"alpha": config.focal_alpha, "gamma": config.focal_gamma} if config.loss == "focal" else {}
    history: list[dict[str, float]] = []
    best = {"score": -1.0, "epoch": -1, "state": model.trainable_state_dict()}
    bad_epochs = 0
    t0 = time.perf_counter()
    for epoch in tqdm(range(config.epochs), desc="lora", disable=not progress, leave=False):
        if bad_epochs >= config.early_stopping:
            break
        model.train()
        order = torch.randperm(n, generator=generator)
        total, seen = 0.0, 0
        for idx in _batches(order, _lengths(train_inputs), config.batch_size, generator):
            logits = model(slice_inputs(train_inputs, idx))
            loss = classification_loss(logits, train_y[idx].to(logits.device), config.loss, **focal)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip:
                torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
            optimizer.step()
            total += float(loss.detach()) * len(idx)
            seen += len(idx)
        score = float((predict_logits(model, val_inputs).argmax(-1) == val_y).float().mean())
        scheduler.step(score)
        history.append(
            {
                "epoch": epoch + 1,
                "train_loss": total / max(seen, 1),
                "val_accuracy": score,
                "lr": optimizer.param_groups[0]["lr"],
                "seconds": time.perf_counter() - t0,
            }
        )
        if score > best["score"]:
            best = {"score": score, "epoch": epoch + 1, "state": model.trainable_state_dict()}
            bad_epochs = 0
        else:
            bad_epochs += 1
    seconds = time.perf_counter() - t0
    last_state = model.trainable_state_dict()
    model.load_trainable_state_dict(best["state"])
    return {
        "history": history,
        "best_epoch": best["epoch"],
        "best_val_accuracy": best["score"],
        "best_state": best["state"],
        "last_state": last_state,
        "seconds": seconds,
    }


def run_lora_experiment(
    encoder,
    items: list[Any],
    labels: Tensor,
    classes: list[str],
    *,
    out: str | Path,
    method: str = "lora",
    rank: int = 8,
    alpha: float = 16.0,
    target_modules: list[str] | None = None,
    loraplus_ratio: float = 16.0,
    train_config: TrainConfig | None = None,
    folds: int | str = 5,
    groups: list[str] | None = None,
    pooled_features: Tensor | None = None,
    resume: bool = False,
    progress: bool = False,
    encoder_info: dict[str, Any] | None = None,
    extra_config: dict[str, Any] | None = None,
    plots: bool = True,
) -> dict[str, Any]:
    """LoRA (``method="lora"``) or LoRA+ (``"loraplus"``) on every fold of ``items``; writes the run directory.

    Args:
        encoder: the frozen encoder adapter to adapt (its model is copied per fold).
        items: raw examples (texts, images, waveforms), aligned with ``labels``.
        pooled_features: ``(N, dim)`` last-layer pooled features of the frozen encoder (e.g. the feature cache's last
            layer) for the classifier's input standardisation; computed with the frozen model when omitted.

    Returns:
        The metrics dict written to ``metrics.json``.
    """
    if method not in ("lora", "loraplus"):
        raise ValueError(f"method must be 'lora' or 'loraplus', got {method!r}")
    cfg = train_config or TrainConfig()
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not resume:
        raise ValueError(f"run directory {out} is not empty; pass --resume to continue it or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    y = torch.as_tensor(labels).long()
    logo = folds == "logo"
    splits = fold_splits(
        y.numpy(), folds=1 if logo else int(folds), seed=cfg.seed, groups=groups, leave_one_group_out=logo
    )
    targets = list(target_modules or default_target_modules(encoder))
    ratio = loraplus_ratio if method == "loraplus" else None
    lora_fields = {"method": method, "lora_rank": rank, "lora_alpha": alpha, "target_modules": targets}
    lora_fields["loraplus_ratio"] = ratio
    config = {
        "head": method,
        **lora_fields,
        "train": cfg.to_dict(),
        "folds": folds,
        "num_examples": len(items),
        "classes": classes,
        "encoder": encoder_info or {"name": encoder.name, "options": {}},
        **(extra_config or {}),
    }
    write_run_config(out, config, resume=resume)
    builder = dict(rank=rank, alpha=alpha, target_modules=targets, encoder_info=config["encoder"])
    probe = LoraClassifier(encoder, classes, **builder)
    inputs = probe.prepare(items)
    if pooled_features is None:
        pooled_features = torch.cat(
            [probe.pooled(slice_inputs(inputs, i, i + 64)).detach() for i in range(0, len(items), 64)]
        )
    del probe
    fold_results = []
    for k, fold_dir, tr, va, te in pending_folds(out, splits, y, cfg, resume=resume, finished=fold_results):
        tr, va, te = (torch.as_tensor(a, dtype=torch.long) for a in (tr, va, te))
        model = LoraClassifier(encoder, classes, **builder)
        model.set_input_stats(pooled_features[tr][:, : model.input_mean.numel()].float())
        fold_cfg = TrainConfig(**{**cfg.to_dict(), "seed": cfg.seed + k})
        outcome = train_lora(
            model,
            slice_inputs(inputs, tr),
            y[tr],
            slice_inputs(inputs, va),
            y[va],
            fold_cfg,
            loraplus_ratio=ratio,
            progress=progress,
        )
        logits = predict_logits(model, slice_inputs(inputs, te))
        metrics = classification_metrics(y[te].numpy(), logits.argmax(-1).numpy(), len(classes))
        parameters = parameter_accounting(model)
        result = fold_result(k, metrics, outcome, outcome["seconds"], len(tr), len(va), len(te), parameters)
        atomic_save_file(outcome["best_state"], fold_dir / "best.safetensors")
        atomic_save_file(outcome["last_state"], fold_dir / "last.safetensors")
        model.save_pretrained(fold_dir / "model", extra={"method": method, "loraplus_ratio": ratio})
        atomic_write_text(fold_dir / "result.json", json.dumps(result, default=_json_default))
        fold_results.append(result)
        del model
    best0 = LoraClassifier(encoder, classes, **builder)
    best0.load_trainable_state_dict(_load(out / "folds" / "0" / "best.safetensors"))
    best0.save_pretrained(out, extra={"method": method, "loraplus_ratio": ratio})
    metrics = summarize(fold_results, classes)
    metrics.update(head=method, **lora_fields, frozen_params=fold_results[0]["frozen_params"])
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2, default=_json_default))
    atomic_write_text(out / "metrics.csv", _metrics_csv(fold_results))
    if plots:
        from densattn.train.plots import plot_confusion, plot_curves

        name = f"{method} r={rank}"
        plot_curves([r["history"] for r in fold_results], out / "curves.png", title=f"{name}: training curves")
        plot_confusion(
            np.array(metrics["confusion_matrix"]), classes, out / "confusion.png", title=f"{name}: confusion"
        )
    return metrics


def _load(path: Path) -> dict[str, Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def train_lora_from_args(args) -> int:
    """``densattn train --method lora|loraplus ...``: load data and encoder as the heads do, run every fold."""
    from densattn.commands._common import load_data_and_encoder, show_progress
    from densattn.commands.train import parse_folds, train_config_from_args
    from densattn.data.cache import cached_features

    folds = parse_folds(args.folds)
    if args.rank < 1:
        raise ValueError(f"--rank must be a positive integer, got {args.rank}")
    targets = [t.strip() for t in args.target_modules.split(",") if t.strip()] if args.target_modules else None
    dataset, encoder, enc_opts = load_data_and_encoder(args)
    # The cached frozen features (shared with head runs) give the classifier's input statistics for free.
    features = cached_features(
        encoder, dataset, cache_dir=args.cache_dir, batch_size=args.batch_size_encode, progress=show_progress()
    )
    if features.labels.tolist() != list(dataset.labels):
        raise ValueError("feature cache and dataset disagree on the examples; delete the cache entry and rerun")
    config = train_config_from_args(args, default_lr=5e-4)
    metrics = run_lora_experiment(
        encoder,
        [dataset.load(i) for i in range(len(dataset))],
        features.labels,
        features.classes,
        out=args.out,
        method=args.method,
        rank=args.rank,
        alpha=args.alpha,
        target_modules=targets,
        loraplus_ratio=args.loraplus_ratio,
        train_config=config,
        folds=folds,
        groups=features.groups,
        pooled_features=features.features[:, -1],
        resume=args.resume,
        progress=show_progress(),
        encoder_info={"name": str(args.encoder), "options": enc_opts, **encoder.identity()},
        extra_config={
            "data": args.data,
            "max_samples": args.max_samples,
            "num_threads": torch.get_num_threads(),
            "feature_cache": {k: features.manifest.get(k) for k in ("dataset", "dataset_fingerprint", "dtype")},
        },
    )
    print(
        f"{args.method} r={args.rank}: accuracy {metrics['accuracy_mean']:.3f} ± {metrics['accuracy_std']:.3f}, "
        f"macro-F1 {metrics['macro_f1_mean']:.3f}, trainable params {metrics['trainable_params']:,} "
        f"({metrics['seconds_per_epoch']:.1f} s/epoch) -> {args.out}"
    )
    return 0
