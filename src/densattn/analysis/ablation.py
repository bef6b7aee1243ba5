"""Layer ablation by Importance Factor: retrain a run's head on its top-K and bottom-K IF layers.

The protocol of arXiv `2401.11143 <https://arxiv.org/abs/2401.11143>`_, Table 2: rank the encoder layers by the IF
of the trained DAAM head (fold 0's adapter on fold 0's validation split,
:func:`densattn.analysis.importance.explain_run`), then train the same head (same options, training settings, folds
and seeds) on features restricted to the K highest-IF layers and to the K lowest-IF layers, and compare both with
the all-layer run. Layers keep their encoder order inside the restricted features. DAAM heads need >= 2 layers per
head, so the head count is re-chosen with :func:`~densattn.attention.suggest_num_heads` when the run's does not fit
K layers.

Caveat (stated in the results): the ranking comes from fold 0's model, whose training data overlap the other
folds' test sets; this is the paper's protocol, and ``fold_rankings`` in ``ablation.json`` shows how stable the
ranking is across the folds' own models.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from densattn.analysis.importance import (
    _read_config,
    density_module,
    explain_run,
    features_for_run,
    importance_of,
    real_features,
    run_split_indices,
)
from densattn.data.cache import FeatureSet
from densattn.io import atomic_write_json, atomic_write_text, read_json

__all__ = ["ablate_run", "restrict_layers"]


def restrict_layers(features: FeatureSet, layers: list[int]) -> FeatureSet:
    """A :class:`FeatureSet` holding only ``layers`` (in the given order) of ``features``.

    Example:
        >>> import torch
        >>> fs = FeatureSet(torch.randn(4, 5, 3), torch.tensor([0, 1, 0, 1]), ["a", "b"], list("wxyz"))
        >>> restrict_layers(fs, [1, 3]).features.shape
        torch.Size([4, 2, 3])
    """
    if not layers or len(set(layers)) != len(layers) or not all(0 <= i < features.num_layers for i in layers):
        raise ValueError(f"layers must be distinct indices in [0, {features.num_layers}), got {layers}")
    manifest = {**features.manifest, "layers": list(layers)}
    return FeatureSet(
        features=features.features[:, list(layers)].contiguous(),  # (N, K, d)
        labels=features.labels,
        classes=features.classes,
        ids=features.ids,
        groups=features.groups,
        manifest=manifest,
    )


def _fold_rankings(run_dir: Path, config: dict[str, Any], features: FeatureSet) -> list[list[int]]:
    """Each fold's own adapter's layer ranking on its own validation split."""
    from densattn.adapters import load_adapter

    rankings = []
    real = real_features(features.features)
    for fold_dir in sorted((run_dir / "folds").glob("*/adapter"), key=lambda p: int(p.parent.name)):
        fold = int(fold_dir.parent.name)
        model = load_adapter(fold_dir)
        idx = run_split_indices(config, features.labels, split="val", fold=fold, groups=features.groups)
        rankings.append(importance_of(model, features.features[idx], feature_mask=real).layer_ranking())
    return rankings


def _summary(metrics: dict[str, Any], layers: list[int] | None) -> dict[str, Any]:
    return {
        "layers": layers,
        "accuracy_mean": metrics["accuracy_mean"],
        "accuracy_std": metrics["accuracy_std"],
        "macro_f1_mean": metrics["macro_f1_mean"],
        "macro_f1_std": metrics["macro_f1_std"],
        "fold_accuracy": [f["accuracy"] for f in metrics["folds"]],
        "trainable_params": metrics["trainable_params"],
    }


def ablate_run(
    run_dir: str | Path,
    *,
    top_k: int,
    features: FeatureSet | None = None,
    cache_dir: str | Path | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Retrain RUN's head on its ``top_k`` highest- and lowest-IF layers; write ``RUN/ablation/`` and return the
    results (also in ``RUN/ablation/ablation.json`` and ``ablation.md``).

    Re-running resumes: finished folds of ``RUN/ablation/top{K}`` and ``bottom{K}`` are kept.

    Raises:
        ValueError: the head has no density weights, or ``top_k`` is not in ``[2, L - 1]``.
    """
    from densattn.attention import suggest_num_heads
    from densattn.train import TrainConfig, run_experiment

    run_dir = Path(run_dir)
    config = _read_config(run_dir)
    metrics_path = run_dir / "metrics.json"
    if not metrics_path.exists():
        raise FileNotFoundError(f"{run_dir} has no metrics.json; finish the run (densattn train --resume) first")
    num_layers = int(config["num_layers"])
    if not isinstance(top_k, int) or not 2 <= top_k <= num_layers - 1:
        raise ValueError(
            f"--top-k must be an int in [2, {num_layers - 1}] for this {num_layers}-layer run (a DAAM head needs "
            f"at least 2 layers, and K = {num_layers} would be the all-layer run), got {top_k!r}"
        )
    from densattn.adapters import load_adapter

    density_module(load_adapter(run_dir))  # heads without density weights fail here
    if features is None:
        features = features_for_run(run_dir, cache_dir=cache_dir)
    out = run_dir / "ablation"
    explained = explain_run(run_dir, split="val", out=out / "explain", features=features)
    ranking = explained["layer_ranking"]
    chosen = {"top": sorted(ranking[:top_k]), "bottom": sorted(ranking[-top_k:])}
    head_options = dict(config.get("head_options", {}))
    heads = head_options.get("num_heads")
    if config["head"] in ("daam", "gqdaam") and heads is not None and (top_k % heads or top_k // heads < 2):
        head_options["num_heads"] = suggest_num_heads(top_k)
    train = {k: v for k, v in config["train"].items()}
    results: dict[str, Any] = {
        "run": str(run_dir),
        "head": config["head"],
        "top_k": top_k,
        "num_layers": num_layers,
        "ranking": ranking,
        "layer_share": explained["layer_share"],
        "ranking_source": "fold 0 adapter, fold 0 validation split",
        "all": _summary(read_json(metrics_path), list(range(num_layers))),
    }
    for name, layers in chosen.items():
        sub = out / f"{name}{top_k}"
        metrics = run_experiment(
            restrict_layers(features, layers),
            head=config["head"],
            out=sub,
            head_options=head_options,
            train_config=TrainConfig(**train),
            folds=config["folds"],
            resume=sub.exists(),
            progress=progress,
            encoder_info=config.get("encoder"),
            extra_config={
                "data": config.get("data"),
                "max_samples": config.get("max_samples"),
                "ablation": {"source_run": str(run_dir), "selection": name, "layers": layers},
            },
            plots=False,
        )
        results[name] = _summary(metrics, layers)
    fold_rankings = _fold_rankings(run_dir, config, features)
    results["fold_rankings"] = fold_rankings
    results["fold_top_k_overlap"] = [len(set(r[:top_k]) & set(ranking[:top_k])) / top_k for r in fold_rankings]
    for name in ("top", "bottom"):  # paired per-fold differences against the all-layer run (same folds)
        diff = np.array(results[name]["fold_accuracy"]) - np.array(results["all"]["fold_accuracy"])
        results[name]["delta_vs_all_mean"] = float(diff.mean())
        results[name]["delta_vs_all_std"] = float(diff.std(ddof=1)) if len(diff) > 1 else 0.0
    atomic_write_json(out / "ablation.json", results)
    atomic_write_text(out / "ablation.md", ablation_table(results))
    return results


def ablation_table(results: dict[str, Any]) -> str:
    """Markdown table of an ablation: layers, accuracy and macro-F1 (mean ± std over folds), paired delta."""
    k = results["top_k"]
    lines = [
        f"IF layer ablation, head `{results['head']}`, K = {k} of {results['num_layers']} layers "
        f"(ranking: {', '.join(f'L{i}' for i in results['ranking'])}; from {results['ranking_source']})",
        "",
        "| layers | which | accuracy | macro-F1 | Δ accuracy vs all (paired) | params |",
        "|---|---|---|---|---|---|",
    ]
    for name, label in (("all", "all"), ("top", f"top-{k} IF"), ("bottom", f"bottom-{k} IF")):
        r = results[name]
        which = ", ".join(f"L{i}" for i in r["layers"]) if name != "all" else f"L0–L{results['num_layers'] - 1}"
        delta = "—" if name == "all" else f"{r['delta_vs_all_mean']:+.3f} ± {r['delta_vs_all_std']:.3f}"
        lines.append(
            f"| {label} | {which} | {r['accuracy_mean']:.3f} ± {r['accuracy_std']:.3f} | "
            f"{r['macro_f1_mean']:.3f} ± {r['macro_f1_std']:.3f} | {delta} | {r['trainable_params']:,} |"
        )
    overlap = results.get("fold_top_k_overlap")
    if overlap:
        lines += [
            "",
            f"Top-{k} overlap of each fold's own ranking with fold 0's: {', '.join(f'{o:.2f}' for o in overlap)}",
        ]
    return "\n".join(lines) + "\n"
