"""Retraining ablation of layer rankings: retrain a run's head on each method's top-K and bottom-K layers.

The protocol of arXiv `2401.11143 <https://arxiv.org/abs/2401.11143>`_, Table 2, for any explanation method
(:mod:`densattn.analysis.explain`: ``if``, ``occlusion``, ``gradient``, ``ig``): rank the encoder layers with the
method on fold 0's adapter and fold 0's validation split, then train the same head (same options, training
settings, folds and seeds) on features restricted to the K highest-ranked layers and to the K lowest-ranked layers,
and compare both with the all-layer run. A faithful ranking's top-K should beat its bottom-K. Layers keep their
encoder order inside the restricted features; each distinct layer set is trained once (``RUN/ablation/layers-...``)
and shared by the methods that chose it. DAAM heads need >= 2 layers per head, so the head count is re-chosen with
:func:`~densattn.attention.suggest_num_heads` when the run's does not fit K layers.

Caveat (stated in the results): the ranking comes from fold 0's model, whose training data overlap the other
folds' test sets; this is the paper's protocol, and ``fold_rankings`` shows how stable each method's ranking is
across the folds' own models (``fold_top_k_overlap``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from densattn.analysis.runs import ExplainableRun
from densattn.data.cache import FeatureSet
from densattn.io import atomic_write_json, atomic_write_text, read_json

__all__ = ["ablate_run", "ablation_table", "restrict_layers"]


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
    method: str | Sequence[str] = "if",
    features: FeatureSet | None = None,
    cache_dir: str | Path | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Retrain RUN's head on the ``top_k`` highest- and lowest-ranked layers of every ``method``; write
    ``RUN/ablation/ablation.json`` and ``ablation.md`` and return the results.

    Re-running resumes: finished folds of every ``RUN/ablation/layers-...`` run are kept.

    Returns:
        ``{"run", "head", "top_k", "num_layers", "ranking_source", "all": summary, "methods": {method:
        {"ranking", "top": summary, "bottom": summary, "fold_rankings", "fold_top_k_overlap"}}}``; a summary holds
        ``layers``, ``accuracy_mean/std``, ``macro_f1_mean/std``, ``fold_accuracy``, ``trainable_params`` and (top,
        bottom) ``delta_vs_all_mean/std``, the paired per-fold accuracy change against the all-layer run.

    Raises:
        ValueError: a fusion or end-to-end run, a method that does not apply (``if`` without density weights), or
            ``top_k`` not in ``[2, L - 1]``.

    Example:
        A ``pool`` head on 4 synthetic layers, ranked by occlusion; each K=2 layer set is retrained on both folds:

        >>> import tempfile, torch
        >>> from densattn.train import TrainConfig, run_experiment
        >>> x, y = torch.randn(40, 4, 6, generator=torch.Generator().manual_seed(0)), torch.arange(40) % 2
        >>> fs = FeatureSet(x, y, ["a", "b"], [str(i) for i in range(40)])
        >>> with tempfile.TemporaryDirectory() as run:
        ...     _ = run_experiment(fs, head="pool", out=run, folds=2, plots=False, train_config=TrainConfig(epochs=1))
        ...     result = ablate_run(run, top_k=2, method="occlusion", features=fs)
        ...     print(sorted(p.name for p in (Path(run) / "ablation").iterdir() if p.is_file()))
        ['ablation.json', 'ablation.md']
        >>> entry = result["methods"]["occlusion"]
        >>> top, bottom = entry["ranking"][:2], entry["ranking"][2:]
        >>> entry["top"]["layers"] == sorted(top), entry["bottom"]["layers"] == sorted(bottom)
        (True, True)
        >>> result["all"]["layers"], len(entry["top"]["fold_accuracy"]), len(entry["fold_rankings"])
        ([0, 1, 2, 3], 2, 2)
    """
    from densattn.analysis.explain import attribute, resolve_methods
    from densattn.attention import suggest_num_heads
    from densattn.train import TrainConfig, run_experiment

    run_dir = Path(run_dir)
    run = ExplainableRun(run_dir, features=features, cache_dir=cache_dir)
    if run.kind != "head":
        raise ValueError(f"{run_dir} is a {run.name} run; the retraining ablation supports head runs only")
    methods = resolve_methods(method, run)
    config = run.config
    metrics_path = run_dir / "metrics.json"
    if not metrics_path.exists():
        raise FileNotFoundError(f"{run_dir} has no metrics.json; finish the run (densattn train --resume) first")
    num_layers = run.num_layers
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 2 <= top_k <= num_layers - 1:
        raise ValueError(
            f"--top-k must be an int in [2, {num_layers - 1}] for this {num_layers}-layer run (a DAAM head needs "
            f"at least 2 layers, and K = {num_layers} would be the all-layer run), got {top_k!r}"
        )
    features = run.feature_set()
    out = run_dir / "ablation"
    head_options = dict(config.get("head_options", {}))
    heads = head_options.get("num_heads")
    if config["head"] in ("daam", "gqdaam") and heads is not None and (top_k % heads or top_k // heads < 2):
        head_options["num_heads"] = suggest_num_heads(top_k)
    trained: dict[tuple[int, ...], dict[str, Any]] = {}

    def train(layers: list[int]) -> dict[str, Any]:
        key = tuple(layers)
        if key not in trained:
            sub = out / ("layers-" + "-".join(map(str, layers)))
            metrics = run_experiment(
                restrict_layers(features, layers),
                head=config["head"],
                out=sub,
                head_options=head_options,
                train_config=TrainConfig(**config["train"]),
                folds=config["folds"],
                resume=sub.exists(),
                progress=progress,
                encoder_info=config.get("encoder"),
                extra_config={
                    "data": config.get("data"),
                    "max_samples": config.get("max_samples"),
                    "ablation": {"source_run": str(run_dir), "layers": layers},
                },
                plots=False,
            )
            trained[key] = _summary(metrics, layers)
        return dict(trained[key])

    full = _summary(read_json(metrics_path), list(range(num_layers)))
    results: dict[str, Any] = {
        "run": str(run_dir),
        "head": config["head"],
        "top_k": top_k,
        "num_layers": num_layers,
        "ranking_source": "fold 0 adapter, fold 0 validation split",
        "all": full,
        "methods": {},
    }
    for name in methods:
        fold_rankings = [attribute(run, name, fold=k).ranking() for k in range(run.num_folds)]
        ranking = fold_rankings[0]
        entry: dict[str, Any] = {"ranking": ranking}
        for which, layers in (("top", sorted(ranking[:top_k])), ("bottom", sorted(ranking[-top_k:]))):
            summary = train(layers)
            diff = np.array(summary["fold_accuracy"]) - np.array(full["fold_accuracy"])  # paired by fold
            summary["delta_vs_all_mean"] = float(diff.mean())
            summary["delta_vs_all_std"] = float(diff.std(ddof=1)) if len(diff) > 1 else 0.0
            entry[which] = summary
        entry["fold_rankings"] = fold_rankings
        entry["fold_top_k_overlap"] = [len(set(r[:top_k]) & set(ranking[:top_k])) / top_k for r in fold_rankings]
        results["methods"][name] = entry
    atomic_write_json(out / "ablation.json", results)
    atomic_write_text(out / "ablation.md", ablation_table(results))
    return results


def ablation_table(results: dict[str, Any]) -> str:
    """Markdown table of an ablation: per method its top-K and bottom-K layers, accuracy and macro-F1 (mean ± std
    over folds) and the paired change against the all-layer run.

    Example:
        >>> row = lambda layers, acc, **delta: {"layers": layers, "accuracy_mean": acc, "accuracy_std": 0.01,
        ...     "macro_f1_mean": acc, "macro_f1_std": 0.02, "trainable_params": 1200, **delta}
        >>> results = {"head": "daam", "top_k": 2, "num_layers": 4, "ranking_source": "fold 0",
        ...     "all": row([0, 1, 2, 3], 0.8),
        ...     "methods": {"if": {"ranking": [2, 0, 3, 1], "fold_top_k_overlap": [1.0, 0.5],
        ...         "top": row([0, 2], 0.78, delta_vs_all_mean=-0.02, delta_vs_all_std=0.01),
        ...         "bottom": row([1, 3], 0.6, delta_vs_all_mean=-0.2, delta_vs_all_std=0.03)}}}
        >>> print(ablation_table(results))
        Layer ablation, head `daam`, K = 2 of 4 layers (rankings from fold 0)
        <BLANKLINE>
        | layers | which | accuracy | macro-F1 | Δ accuracy vs all (paired) | params |
        |---|---|---|---|---|---|
        | all | L0–L3 | 0.800 ± 0.010 | 0.800 ± 0.020 | — | 1,200 |
        | top-2 if | L0, L2 | 0.780 ± 0.010 | 0.780 ± 0.020 | -0.020 ± 0.010 | 1,200 |
        | bottom-2 if | L1, L3 | 0.600 ± 0.010 | 0.600 ± 0.020 | -0.200 ± 0.030 | 1,200 |
        <BLANKLINE>
        - if: ranking L2 L0 L3 L1; top-2 overlap of each fold's own ranking with fold 0's: 1.00, 0.50
        <BLANKLINE>
    """
    k, n = results["top_k"], results["num_layers"]
    lines = [
        f"Layer ablation, head `{results['head']}`, K = {k} of {n} layers (rankings from {results['ranking_source']})",
        "",
        "| layers | which | accuracy | macro-F1 | Δ accuracy vs all (paired) | params |",
        "|---|---|---|---|---|---|",
    ]
    rows = [("all", f"L0–L{n - 1}", results["all"])]
    for name, entry in results["methods"].items():
        rows += [(f"top-{k} {name}", None, entry["top"]), (f"bottom-{k} {name}", None, entry["bottom"])]
    for label, which, r in rows:
        which = which or ", ".join(f"L{i}" for i in r["layers"])
        delta = f"{r['delta_vs_all_mean']:+.3f} ± {r['delta_vs_all_std']:.3f}" if "delta_vs_all_mean" in r else "—"
        lines.append(
            f"| {label} | {which} | {r['accuracy_mean']:.3f} ± {r['accuracy_std']:.3f} | "
            f"{r['macro_f1_mean']:.3f} ± {r['macro_f1_std']:.3f} | {delta} | {r['trainable_params']:,} |"
        )
    lines.append("")
    for name, entry in results["methods"].items():
        ranking = " ".join(f"L{i}" for i in entry["ranking"])
        overlap = ", ".join(f"{o:.2f}" for o in entry["fold_top_k_overlap"])
        lines.append(
            f"- {name}: ranking {ranking}; top-{k} overlap of each fold's own ranking with fold 0's: {overlap}"
        )
    return "\n".join(lines) + "\n"
