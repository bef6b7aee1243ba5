"""Fusion runs: train a :class:`~densattn.fusion.FusionHead` on two or more feature caches of the same examples.

The examples are seen through M encoders (or M settings of one encoder): feature set m holds ``(N, L_m, d_m)``.
Every fold, validation split, :class:`~densattn.train.TrainConfig` and early-stopping rule is the one
:func:`densattn.train.run_experiment` uses for a single head, so a fusion run and a head run on the same data are
directly comparable. The generic loop :func:`densattn.train.loop.train_model` indexes one batch tensor, so the M
feature sets travel packed in one ``(N, sum_m L_m * d_m)`` tensor that :class:`PackedFusionModel` splits back.

A fusion run directory holds ``config.json``, ``metrics.json`` (the keys of a head run), ``metrics.csv``,
``folds/K/{best,last}.safetensors``, ``folds/K/result.json``, ``folds/K/adapter/``, the fold-0 best model as
``fusion_model.safetensors`` + ``fusion_config.json`` (reload with :func:`load_fusion_adapter`), ``curves.png``
and ``confusion.png``.

Fusion methods: concat (late fusion), BAN (Kim et al. 2018, https://arxiv.org/abs/1805.07932) and MAN
(https://openreview.net/forum?id=dZ33IBX-uRm); see :mod:`densattn.fusion`.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file
from torch import Tensor, nn

from densattn.data.cache import FeatureSet, atomic_save_file, atomic_write_text
from densattn.fusion import FUSION_METHODS, FusionHead
from densattn.heads import count_parameters
from densattn.train.loop import TrainConfig, predict_logits, train_model
from densattn.train.metrics import classification_metrics
from densattn.train.run import (
    _clean,
    _json_default,
    _metrics_csv,
    fold_result,
    pending_folds,
    summarize,
    write_run_config,
)
from densattn.train.splits import fold_splits

__all__ = [
    "FUSION_CONFIG_NAME",
    "FUSION_WEIGHTS_NAME",
    "PackedFusionModel",
    "align_feature_sets",
    "load_fusion_adapter",
    "run_fusion_experiment",
    "train_fusion_from_args",
]

FUSION_CONFIG_NAME = "fusion_config.json"
FUSION_WEIGHTS_NAME = "fusion_model.safetensors"


class PackedFusionModel(nn.Module):
    """A :class:`FusionHead` that reads its M modalities from one packed tensor, with class names and encoders.

    ``forward(x)`` takes ``x (B, sum_m L_m * d_m)``: modality m's ``(B, L_m, d_m)`` features flattened and
    concatenated in order (see :meth:`pack`); it returns the head's logits ``(B, C)``.

    Args:
        shapes: ``[(L_1, d_1), ..., (L_M, d_M)]`` per-modality feature shapes (M >= 2).
        classes: class names (C of them).
        method: ``"concat"``, ``"ban"`` or ``"man"``.
        fusion_options: further :class:`FusionHead` keyword options (``hidden``, ``glimpses``, ``num_heads``, ...);
            ``num_positions`` defaults to ``[L_1, ..., L_M]`` (a learned embedding per encoder layer).
        encoders: one identity dict per modality (what produced its features), stored with the adapter.
        seed: seeds MAN's random features (``generator``), so a saved config rebuilds the same module.

    Example:
        >>> model = PackedFusionModel([(3, 8), (2, 4)], ["a", "b"], method="concat")
        >>> x = PackedFusionModel.pack([torch.randn(5, 3, 8), torch.randn(5, 2, 4)])  # (5, 32)
        >>> model(x).shape
        torch.Size([5, 2])
    """

    def __init__(
        self,
        shapes: Sequence[Sequence[int]],
        classes: Sequence[str],
        *,
        method: str = "concat",
        fusion_options: dict[str, Any] | None = None,
        encoders: Sequence[dict[str, Any]] | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.shapes = [(int(n), int(d)) for n, d in shapes]
        if len(self.shapes) < 2:
            raise ValueError(f"shapes must list at least two modalities' (L, d); got {self.shapes}")
        if method not in FUSION_METHODS:
            raise ValueError(f"method must be one of {FUSION_METHODS}; got {method!r}")
        self.method, self.classes, self.seed = method, list(classes), int(seed)
        self.fusion_options = dict(fusion_options or {})
        self.encoders = [dict(e) for e in (encoders or [{} for _ in self.shapes])]
        options = {"num_positions": [n for n, _ in self.shapes], **self.fusion_options}
        self.head = FusionHead(
            [d for _, d in self.shapes],
            len(self.classes),
            method=method,
            generator=torch.Generator().manual_seed(self.seed),
            **options,
        )

    @staticmethod
    def pack(features: Sequence[Tensor]) -> Tensor:
        """``[(B, L_m, d_m)]`` -> ``(B, sum_m L_m * d_m)``."""
        return torch.cat([f.reshape(f.shape[0], -1) for f in features], dim=-1)

    def unpack(self, x: Tensor) -> list[Tensor]:
        """Inverse of :meth:`pack` for this model's shapes."""
        sizes = [n * d for n, d in self.shapes]
        if x.dim() != 2 or x.shape[-1] != sum(sizes):
            raise ValueError(f"x must have shape (B, {sum(sizes)}) for shapes {self.shapes}; got {tuple(x.shape)}")
        return [
            part.reshape(x.shape[0], n, d)  # (B, L_m, d_m)
            for part, (n, d) in zip(x.split(sizes, dim=-1), self.shapes)
        ]

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(B, C)`` from packed features ``(B, sum_m L_m * d_m)``."""
        return self.head(*self.unpack(x))

    @property
    def config(self) -> dict[str, Any]:
        return {
            "type": "fusion",
            "method": self.method,
            "fusion_options": self.fusion_options,
            "shapes": [list(s) for s in self.shapes],
            "classes": self.classes,
            "encoders": self.encoders,
            "seed": self.seed,
        }

    def save_pretrained(self, directory: str | Path) -> None:
        """Write ``fusion_model.safetensors`` and ``fusion_config.json`` (atomically) into ``directory``."""
        directory = Path(directory)
        state = {k: v.detach().cpu() for k, v in self.head.state_dict().items()}
        atomic_save_file(state, directory / FUSION_WEIGHTS_NAME, metadata={"format": "pt"})
        atomic_write_text(directory / FUSION_CONFIG_NAME, json.dumps(self.config, indent=2, default=_json_default))


def load_fusion_adapter(directory: str | Path, *, is_trainable: bool = False) -> PackedFusionModel:
    """Reload a fusion model saved by a fusion run (its run directory or ``folds/K/adapter``).

    Frozen and in eval mode unless ``is_trainable``. Call it on :meth:`PackedFusionModel.pack` of the feature sets,
    in the order of ``model.encoders``.
    """
    directory = Path(directory)
    cfg_path, weights = directory / FUSION_CONFIG_NAME, directory / FUSION_WEIGHTS_NAME
    if not cfg_path.exists() or not weights.exists():
        raise FileNotFoundError(
            f"{directory} has no {FUSION_CONFIG_NAME} + {FUSION_WEIGHTS_NAME}; is it a `densattn train --fusion` run?"
        )
    cfg = json.loads(cfg_path.read_text())
    model = PackedFusionModel(
        cfg["shapes"],
        cfg["classes"],
        method=cfg["method"],
        fusion_options=cfg.get("fusion_options"),
        encoders=cfg.get("encoders"),
        seed=cfg.get("seed", 0),
    )
    model.head.load_state_dict(load_file(str(weights)), strict=True)
    model.train(is_trainable)
    for p in model.parameters():
        p.requires_grad_(is_trainable)
    return model


def align_feature_sets(feature_sets: Sequence[FeatureSet]) -> list[FeatureSet]:
    """Check that every feature set holds the same examples and return them in the first one's order.

    Raises:
        ValueError: fewer than two sets, different example ids, or different labels / classes for the same id.
    """
    if len(feature_sets) < 2:
        raise ValueError(f"feature_sets: fusion needs at least two feature sets; got {len(feature_sets)}")
    first = feature_sets[0]
    if len(set(first.ids)) != len(first.ids):
        raise ValueError("feature_sets[0]: example ids are not unique, so the sets cannot be matched by id")
    position = {example_id: i for i, example_id in enumerate(first.ids)}
    aligned = [first]
    for m, fs in enumerate(feature_sets[1:], start=1):
        if len(fs) != len(first) or set(fs.ids) != set(position):
            missing = sorted(set(first.ids) - set(fs.ids))[:3]
            extra = sorted(set(fs.ids) - set(first.ids))[:3]
            raise ValueError(
                f"feature_sets[{m}] holds different examples than feature_sets[0] ({len(fs)} vs {len(first)}; "
                f"e.g. missing {missing}, extra {extra}): extract both from the same data, --max-samples and --seed"
            )
        if list(fs.classes) != list(first.classes):
            raise ValueError(f"feature_sets[{m}] has classes {fs.classes}, feature_sets[0] has {first.classes}")
        where = {example_id: i for i, example_id in enumerate(fs.ids)}
        order = torch.tensor([where[i] for i in first.ids]) if fs.ids != first.ids else None
        if order is not None:
            fs = FeatureSet(
                features=fs.features[order],
                labels=fs.labels[order],
                classes=fs.classes,
                ids=list(first.ids),
                groups=None if fs.groups is None else [fs.groups[i] for i in order.tolist()],
                manifest=fs.manifest,
            )
        if not torch.equal(fs.labels, first.labels):
            bad = int((fs.labels != first.labels).nonzero()[0, 0])
            raise ValueError(
                f"feature_sets[{m}] gives example {first.ids[bad]!r} label {int(fs.labels[bad])} but "
                f"feature_sets[0] gives {int(first.labels[bad])}: the sets must label the same examples alike"
            )
        aligned.append(fs)
    return aligned


def run_fusion_experiment(
    feature_sets: Sequence[FeatureSet],
    *,
    method: str,
    out: str | Path,
    fusion_options: dict[str, Any] | None = None,
    train_config: TrainConfig | None = None,
    folds: int | str = 5,
    resume: bool = False,
    progress: bool = False,
    encoder_infos: Sequence[dict[str, Any]] | None = None,
    extra_config: dict[str, Any] | None = None,
    plots: bool = True,
) -> dict[str, Any]:
    """Train a fusion head on every fold of the (aligned) feature sets and write the run directory ``out``.

    Folds, validation carving (fold k uses seed ``seed + k``), initialisation seed and the training loop are those
    of :func:`densattn.train.run_experiment`. Groups (for ``folds="logo"``) come from the first feature set.

    Args:
        feature_sets: M >= 2 feature sets of the same examples (same ids and labels; order may differ).
        method: ``"concat"``, ``"ban"`` (M = 2) or ``"man"``.
        out: run directory; must be new or empty unless ``resume``.
        fusion_options: :class:`FusionHead` options (``hidden``, ``glimpses``, ``num_heads``, ``dropout``, ...).
        train_config: optimisation settings.
        folds: k for stratified k-fold, 1 for one 80/20 split, or ``"logo"``.
        resume: continue an interrupted run in ``out``.
        encoder_infos: one encoder identity per feature set (stored in the config and the adapter).

    Returns:
        The metrics dict written to ``metrics.json``.
    """
    cfg = train_config or TrainConfig()
    sets = align_feature_sets(feature_sets)
    fusion_options = dict(fusion_options or {})
    infos = [dict(i) for i in (encoder_infos or [{} for _ in sets])]
    if len(infos) != len(sets):
        raise ValueError(f"encoder_infos must give one entry per feature set ({len(sets)}); got {len(infos)}")
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not resume:
        raise ValueError(f"run directory {out} is not empty; pass --resume to continue it or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    first = sets[0]
    logo = folds == "logo"
    splits = fold_splits(
        first.labels.numpy(),
        folds=1 if logo else int(folds),
        seed=cfg.seed,
        groups=first.groups,
        leave_one_group_out=logo,
    )
    shapes = [(fs.num_layers, fs.dim) for fs in sets]
    config = {
        "head": f"fusion-{method}",
        "fusion": method,
        "fusion_options": fusion_options,
        "train": cfg.to_dict(),
        "folds": folds,
        "num_examples": len(first),
        "shapes": [list(s) for s in shapes],
        "classes": first.classes,
        "encoders": infos,
        "feature_caches": [{k: fs.manifest.get(k) for k in ("dataset", "dataset_fingerprint", "dtype")} for fs in sets],
        **(extra_config or {}),
    }
    write_run_config(out, config, resume=resume)
    x = PackedFusionModel.pack([fs.features for fs in sets])  # (N, sum_m L_m * d_m)
    y = first.labels
    fold_results, adapter = [], None
    for k, fold_dir, tr, va, test_idx in pending_folds(out, splits, y, cfg, resume=resume, finished=fold_results):
        model = PackedFusionModel(
            shapes, first.classes, method=method, fusion_options=fusion_options, encoders=infos, seed=cfg.seed + k
        )
        fold_cfg = TrainConfig(**{**cfg.to_dict(), "seed": cfg.seed + k})
        t0 = time.perf_counter()
        outcome = train_model(
            model, x[tr], y[tr], x[va], y[va], fold_cfg, state_path=fold_dir / "state.pt", resume=resume,
            progress=progress,
        )  # fmt: skip
        seconds = time.perf_counter() - t0
        logits = predict_logits(model, x[test_idx])
        metrics = classification_metrics(y[test_idx].numpy(), logits.argmax(-1).numpy(), len(first.classes))
        parameters = count_parameters(model.head)
        result = fold_result(k, metrics, outcome, seconds, len(tr), len(va), len(test_idx), parameters)
        atomic_save_file(_clean(outcome["best_state"]), fold_dir / "best.safetensors")
        atomic_save_file(_clean(outcome["last_state"]), fold_dir / "last.safetensors")
        model.save_pretrained(fold_dir / "adapter")
        atomic_write_text(fold_dir / "result.json", json.dumps(result, default=_json_default))
        fold_results.append(result)
        if k == 0:
            adapter = model
    if adapter is None:
        adapter = load_fusion_adapter(out / "folds" / "0" / "adapter")
    adapter.save_pretrained(out)
    metrics = summarize(fold_results, first.classes)
    metrics["head"] = f"fusion-{method}"
    metrics["method"] = (extra_config or {}).get("method", f"fusion-{method}")
    frozen = [info.get("frozen_params") for info in (encoder_infos or [])]
    metrics["frozen_params"] = sum(frozen) if frozen and None not in frozen else None  # all encoders, frozen
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2, default=_json_default))
    atomic_write_text(out / "metrics.csv", _metrics_csv(fold_results))
    if plots:
        from densattn.train.plots import plot_confusion, plot_curves

        title = f"fusion {method}"
        plot_curves([r["history"] for r in fold_results], out / "curves.png", title=f"{title}: training curves")
        plot_confusion(
            np.array(metrics["confusion_matrix"]), first.classes, out / "confusion.png", title=f"{title}: confusion"
        )
    return metrics


def _fusion_encoder_options(pairs: list[str], count: int) -> list[list[str]]:
    """``--fusion-encoder-option`` values -> per fusion encoder ``KEY=VALUE`` lists (``I:KEY=VALUE`` targets the
    I-th ``--fusion-encoder``, 1-based; a plain ``KEY=VALUE`` applies to all of them)."""
    per: list[list[str]] = [[] for _ in range(count)]
    for pair in pairs:
        head, sep, rest = pair.partition(":")
        if sep and head.isdigit() and "=" not in head:
            index = int(head)
            if not 1 <= index <= count:
                raise ValueError(
                    f"--fusion-encoder-option {pair!r}: index {index} is out of range; "
                    f"there are {count} --fusion-encoder (indices 1..{count})"
                )
            per[index - 1].append(rest)
        else:
            for options in per:
                options.append(pair)
    return per


def train_fusion_from_args(args: argparse.Namespace) -> int:
    """``densattn train --fusion METHOD --encoder A --fusion-encoder B [...]``: fuse the features of ``--encoder``
    and every ``--fusion-encoder`` on the same ``--data`` (same samples and seed) and train a fusion head."""
    from densattn.commands._common import load_features, show_progress
    from densattn.commands.train import parse_folds, train_config_from_args

    extra = list(getattr(args, "fusion_encoder", None) or [])
    if not extra:
        raise ValueError(
            f"--fusion {args.fusion} needs at least one --fusion-encoder ENC (the other view of the data); "
            "e.g. --encoder efficientnet-lite0 --fusion-encoder efficientnet-lite0 "
            "--fusion-encoder-option image_size=224"
        )
    if args.fusion not in FUSION_METHODS:
        raise ValueError(f"--fusion must be one of {FUSION_METHODS}; got {args.fusion!r}")
    if getattr(args, "method", "head") != "head":
        raise ValueError(
            f"--fusion trains a fusion head on cached features; it cannot be combined with --method {args.method}"
        )
    if args.fusion == "ban" and len(extra) != 1:
        raise ValueError(f"--fusion ban fuses exactly two encoders; got --encoder plus {len(extra)} --fusion-encoder")
    folds = parse_folds(args.folds)
    config = train_config_from_args(args)
    options = _fusion_encoder_options(list(getattr(args, "fusion_encoder_option", None) or []), len(extra))
    feature_sets, infos = [], []
    for encoder, encoder_options in [(args.encoder, args.encoder_option), *zip(extra, options)]:
        view_args = argparse.Namespace(**{**vars(args), "encoder": encoder, "encoder_option": encoder_options})
        features, info, _ = load_features(view_args)
        feature_sets.append(features)
        infos.append(info)
    metrics = run_fusion_experiment(
        feature_sets,
        method=args.fusion,
        out=args.out,
        train_config=config,
        folds=folds,
        resume=args.resume,
        progress=show_progress(),
        encoder_infos=infos,
        extra_config={"data": args.data, "max_samples": args.max_samples, "method": "fusion"},
    )
    print(
        f"fusion {args.fusion}: accuracy {metrics['accuracy_mean']:.3f} ± {metrics['accuracy_std']:.3f}, "
        f"macro-F1 {metrics['macro_f1_mean']:.3f}, trainable params {metrics['trainable_params']:,} -> {args.out}"
    )
    return 0
