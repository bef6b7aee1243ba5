"""Explain a trained run's use of the encoder layers, and say how far each explanation can be trusted.

:func:`explain` opens any head or fusion run (:class:`~densattn.analysis.runs.ExplainableRun`, through
:func:`densattn.load_adapter`), attributes importance to its layers with every requested method, and measures each
method's faithfulness on the validation split without retraining (:mod:`densattn.analysis.faithfulness`):

=============  ======================================================================  =====================
method         what it scores (layer score; per-(layer, feature) map)                  heads
=============  ======================================================================  =====================
``if``         the Importance Factor: share of the mean DAAM weight; IF map             ``daam``, ``gqdaam``
``occlusion``  drop in validation log-likelihood when the layer is set to its          any
               training mean (per feature with ``feature_occlusion=True``)
``gradient``   gradient × (input − training mean) of log p(y | x), summed per layer    any
``ig``         integrated gradients from the training mean (Captum), summed per layer  any
=============  ======================================================================  =====================

The baseline of every method but IF is the training-split mean of each (layer, feature) — the value every head's
input standardisation maps to zero. With ``top_k``, the retraining ablation
(:func:`densattn.analysis.ablation.ablate_run`) is added for every method's ranking.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from densattn.analysis.attribution import (
    Attribution,
    feature_occlusion,
    gradient_x_input,
    integrated_gradients,
    occlusion,
)
from densattn.analysis.faithfulness import (
    combine_reports,
    faithfulness_report,
    faithfulness_table,
    plot_deletion_curves,
)
from densattn.analysis.runs import ExplainableRun
from densattn.io import atomic_write_json, atomic_write_text, save_figure

__all__ = [
    "METHODS",
    "attribute",
    "explain",
    "fold_agreement",
    "fold_list",
    "plot_attribution_map",
    "resolve_methods",
    "retrain_columns",
]

#: explanation methods, in report order
METHODS = ("if", "occlusion", "gradient", "ig")


def resolve_methods(method: str | Sequence[str], run: ExplainableRun) -> list[str]:
    """``"all"`` -> every method that applies to the run (``if`` only for DAAM/GQDAAM heads); a name or list of
    names is checked.

    Raises:
        ValueError: an unknown method, or ``if`` for a run whose head has no density weights.

    Example:
        >>> import tempfile
        >>> from densattn.data.cache import FeatureSet
        >>> from densattn.train import TrainConfig, run_experiment
        >>> fs = FeatureSet(torch.randn(30, 3, 4), torch.arange(30) % 2, ["a", "b"], [str(i) for i in range(30)])
        >>> out = tempfile.TemporaryDirectory()
        >>> _ = run_experiment(fs, head="pool", out=out.name, folds=2, plots=False, train_config=TrainConfig(epochs=1))
        >>> run = ExplainableRun(out.name, features=fs)
        >>> resolve_methods("all", run), resolve_methods(["ig", "occlusion", "ig"], run)
        (['occlusion', 'gradient', 'ig'], ['ig', 'occlusion'])
        >>> resolve_methods("if", run)
        Traceback (most recent call last):
        ...
        ValueError: head 'pool' has no density (DAAM) weights, so it has no Importance Factor; train with ...
        >>> out.cleanup()
    """
    from densattn.analysis.importance import density_module

    names = [method] if isinstance(method, str) else list(method)
    if names == ["all"]:
        has_density = run.kind == "head" and run.name in ("daam", "gqdaam")
        return [m for m in METHODS if m != "if" or has_density]
    unknown = [m for m in names if m not in METHODS]
    if unknown or not names:
        raise ValueError(f"method must be 'all' or among {list(METHODS)}, got {names}")
    if "if" in names:
        density_module(run.adapter(0))  # raises: "... has no density (DAAM) weights ..."
    return list(dict.fromkeys(names))


def fold_list(folds: int | str | Sequence[int], num_folds: int) -> list[int]:
    """``0`` -> ``[0]``; ``"all"`` -> every fold; a list is checked against ``num_folds``.

    Example:
        >>> fold_list("all", 3), fold_list(1, 3)
        ([0, 1, 2], [1])
    """
    chosen = list(range(num_folds)) if folds == "all" else [folds] if isinstance(folds, int) else list(folds)
    bad = [k for k in chosen if not isinstance(k, int) or not 0 <= k < num_folds]
    if bad or not chosen:
        raise ValueError(f"folds must be 'all' or fold indices in [0, {num_folds}), got {folds!r}")
    return chosen


def attribute(
    run: ExplainableRun,
    method: str,
    *,
    fold: int = 0,
    split: str = "val",
    feature_level: bool = False,
    ig_steps: int = 32,
) -> Attribution:
    """``method``'s :class:`Attribution` of fold ``fold``'s adapter on that fold's ``split``.

    ``feature_level`` adds the per-(layer, feature) map to occlusion (``L * d`` passes); ``ig_steps`` is the number
    of integration steps of integrated gradients.

    Example:
        >>> import tempfile
        >>> from densattn.data.cache import FeatureSet
        >>> from densattn.train import TrainConfig, run_experiment
        >>> fs = FeatureSet(torch.randn(30, 3, 4), torch.arange(30) % 2, ["a", "b"], [str(i) for i in range(30)])
        >>> with tempfile.TemporaryDirectory() as out:
        ...     _ = run_experiment(fs, head="daam", out=out, folds=2, plots=False, train_config=TrainConfig(epochs=1))
        ...     run = ExplainableRun(out, features=fs)
        ...     found = {m: attribute(run, m, fold=1) for m in ("if", "occlusion", "gradient")}
        >>> {m: (a.layer_scores.shape[0], sorted(a.ranking())) for m, a in found.items()}
        {'if': (3, [0, 1, 2]), 'occlusion': (3, [0, 1, 2]), 'gradient': (3, [0, 1, 2])}
        >>> found["if"].unit, round(float(found["if"].layer_scores.sum()), 6), found["gradient"].feature_map.shape
        ('share of DAAM weight', 1.0, torch.Size([3, 4]))
    """
    x, y = run.data(split, fold)
    if method == "if":
        from densattn.analysis.importance import importance_of

        acc = importance_of(run.adapter(fold), x, feature_mask=run.feature_mask())
        return Attribution("if", acc.layer_share(), acc.importance(), "share of DAAM weight")
    model, baseline = run.model(fold), run.baseline(fold)
    if method == "occlusion":
        return (feature_occlusion if feature_level else occlusion)(model, x, y, baseline)
    if method == "gradient":
        return gradient_x_input(model, x, y, baseline)
    if method == "ig":
        return integrated_gradients(model, x, y, baseline, steps=ig_steps)
    raise ValueError(f"method must be one of {list(METHODS)}, got {method!r}")


def explain(
    run_dir: str | Path,
    *,
    method: str | Sequence[str] = "all",
    split: str = "val",
    folds: int | str | Sequence[int] = "all",
    out: str | Path | None = None,
    features=None,
    cache_dir: str | Path | None = None,
    num_random: int = 20,
    seed: int = 0,
    feature_occlusion: bool = False,
    ig_steps: int = 32,
    top_k: int | None = None,
    plots: bool = True,
    progress: bool = False,
) -> dict[str, Any]:
    """Layer importance of a run by every method, with a faithfulness report; files into ``out`` (``RUN/explain``).

    For each fold in ``folds``, each method scores the layers of that fold's adapter on that fold's ``split``; the
    deletion curves of every method's ranking, its reverse and ``num_random`` random orders are measured on the same
    split (:func:`~densattn.analysis.faithfulness.faithfulness_report`) and pooled over folds.

    Writes ``explanation.json`` (everything below), ``faithfulness.md`` (the table), ``deletion_curves.png`` (every
    method's curve on one figure), ``layer_scores.csv`` and, per method with a map, ``{method}_map.csv`` and
    ``{method}_heatmap.png`` (scores and maps averaged over the explained folds; for the IF also
    ``layer_share.png``, the paper's Fig. 3).

    Args:
        run_dir: a head or fusion run directory.
        method: ``"all"``, one of :data:`METHODS`, or a list of them.
        split: ``"val"`` (default; what the issue of faithfulness is judged on) or ``"test"``.
        folds: fold index, list of indices, or ``"all"`` (default: every fold's adapter on its own split, so
            the report has a spread over folds and the rankings' agreement between folds).
        features, cache_dir: see :class:`~densattn.analysis.runs.ExplainableRun`.
        num_random, seed: random orders of the faithfulness baseline.
        feature_occlusion: also occlude single features (``L * d`` passes; slow for wide encoders).
        ig_steps: quadrature points of integrated gradients.
        top_k: also retrain on each method's top-K and bottom-K layers
            (:func:`~densattn.analysis.ablation.ablate_run`).
        plots: draw the figures (the JSON, markdown and CSV files are always written).

    Returns:
        ``{"run", "head", "kind", "split", "folds", "methods", "layer_names", "attributions": {method: {"unit",
        "layer_scores", "ranking" (both of the scores' mean over folds), "fold_rankings", "fold_agreement"}},
        "faithfulness": pooled report, "per_fold": [reports], "ablation": ... or None, "files": {...}}``.

    Raises:
        ValueError: an end-to-end run, ``if`` for a head without density weights, a bad split or fold.

    Example:
        >>> import tempfile
        >>> from densattn.analysis.sanity import sanity_features
        >>> from densattn.train import TrainConfig, run_experiment
        >>> fs, out = sanity_features(80, dim=6), tempfile.mkdtemp()
        >>> _ = run_experiment(fs, head="conv", out=out, folds=2, plots=False, train_config=TrainConfig(epochs=3))
        >>> result = explain(out, method=["occlusion", "gradient"], features=fs, num_random=5, plots=False)
        >>> result["methods"], result["folds"], len(result["faithfulness"]["methods"]["occlusion"]["curve"])
        (['occlusion', 'gradient'], [0, 1], 5)
    """
    if split not in ("val", "test"):
        raise ValueError(f"split must be 'val' or 'test', got {split!r}")
    run = ExplainableRun(run_dir, features=features, cache_dir=cache_dir)
    methods = resolve_methods(method, run)
    fold_ids = fold_list(folds, run.num_folds)
    attributions: dict[str, list[Attribution]] = {m: [] for m in methods}
    reports = []
    for k in fold_ids:
        for m in methods:
            found = attribute(run, m, fold=k, split=split, feature_level=feature_occlusion, ig_steps=ig_steps)
            attributions[m].append(found)
        x, y = run.data(split, k)
        rankings = {m: attributions[m][-1].ranking() for m in methods}
        model, baseline = run.model(k), run.baseline(k)
        reports.append(faithfulness_report(model, x, y, baseline, rankings, num_random=num_random, seed=seed + k))
    pooled = combine_reports(reports)
    mean = {m: mean_attribution(a) for m, a in attributions.items()}
    summary = {
        m: {
            "unit": mean[m].unit,
            "layer_scores": mean[m].layer_scores.tolist(),
            "ranking": mean[m].ranking(),
            "fold_rankings": [t.ranking() for t in a],
            "fold_agreement": fold_agreement([t.layer_scores for t in a]),
        }
        for m, a in attributions.items()
    }
    ablation = None
    if top_k is not None:
        from densattn.analysis.ablation import ablate_run

        ablation = ablate_run(
            run_dir, top_k=top_k, method=methods, features=features, cache_dir=cache_dir, progress=progress
        )
    out = Path(out) if out is not None else Path(run_dir) / "explain"
    files = _write(out, run, pooled, mean, ablation, split, plots)
    result = {
        "run": str(run_dir),
        "head": run.name,
        "kind": run.kind,
        "split": split,
        "folds": fold_ids,
        "methods": methods,
        "baseline": "training-split mean of every (layer, feature) of each fold",
        "layer_names": run.layer_names,
        "attributions": summary,
        "faithfulness": pooled,
        "per_fold": reports,
        "ablation": ablation,
        "files": files,
    }
    atomic_write_json(out / "explanation.json", result)
    return result


def mean_attribution(per_fold: Sequence[Attribution]) -> Attribution:
    """The mean over folds of layer scores and maps (what ``explain`` reports and writes; one fold: itself).

    Example:
        >>> a = Attribution("occlusion", torch.tensor([1.0, 0.0]), None, "nats")
        >>> mean_attribution([a, Attribution("occlusion", torch.tensor([0.0, 3.0]), None, "nats")]).layer_scores
        tensor([0.5000, 1.5000])
    """
    maps = [a.feature_map for a in per_fold]
    mean_map = None if any(m is None for m in maps) else torch.stack(maps).mean(0)
    scores = torch.stack([a.layer_scores for a in per_fold]).mean(0)
    return Attribution(per_fold[0].method, scores, mean_map, per_fold[0].unit)


def fold_agreement(scores: Sequence[Tensor]) -> float | None:
    """Mean Spearman rank correlation of the layer scores over all pairs of folds (1 = every fold's model ranks
    the layers alike); None for one fold.

    Example:
        >>> scores = [torch.tensor([3.0, 2.0, 1.0]), torch.tensor([0.9, 0.5, 0.1]), torch.tensor([1.0, 2, 3])]
        >>> round(fold_agreement(scores), 3)  # pairs: +1, -1, -1
        -0.333
    """
    from scipy.stats import spearmanr

    pairs = [(i, j) for i in range(len(scores)) for j in range(i + 1, len(scores))]
    if not pairs:
        return None
    rhos = [spearmanr(scores[i].numpy(), scores[j].numpy())[0] for i, j in pairs]
    rhos = [0.0 if np.isnan(r) else float(r) for r in rhos]  # a constant score vector has no ranking
    return float(np.mean(rhos))


def retrain_columns(ablation: dict[str, Any] | None) -> dict[str, dict[str, str]] | None:
    """``{method: {"top": "acc ± std", "bottom": ...}}`` from an ablation result, for the faithfulness table.

    Example:
        >>> cell = {"accuracy_mean": 0.8, "accuracy_std": 0.05, "delta_vs_all_mean": -0.02}
        >>> retrain_columns({"methods": {"if": {"top": cell, "bottom": {**cell, "delta_vs_all_mean": -0.3}}}})
        {'if': {'top': '0.800 ± 0.050 (-0.020)', 'bottom': '0.800 ± 0.050 (-0.300)'}}
        >>> retrain_columns(None) is None
        True
    """
    if not ablation:
        return None
    cell = lambda r: f"{r['accuracy_mean']:.3f} ± {r['accuracy_std']:.3f} ({r['delta_vs_all_mean']:+.3f})"  # noqa: E731
    return {m: {"top": cell(r["top"]), "bottom": cell(r["bottom"])} for m, r in ablation["methods"].items()}


def _write(out: Path, run: ExplainableRun, pooled, attributions, ablation, split: str, plots: bool) -> dict[str, str]:
    from densattn.analysis.importance import plot_importance, plot_layer_share

    names = run.layer_names
    table = faithfulness_table(
        pooled,
        layer_names=names,
        rankings={m: a.ranking() for m, a in attributions.items()},
        retrain=retrain_columns(ablation),
        top_k=ablation["top_k"] if ablation else None,
    )
    head = f"{run.name} ({run.config.get('data', '?')}, {split} split)"
    atomic_write_text(out / "faithfulness.md", f"# Faithfulness of layer explanations: {head}\n\n{table}")
    files = {"faithfulness.md": str(out / "faithfulness.md")}
    if plots:
        plot_deletion_curves(pooled, out / "deletion_curves.png", title=f"deletion curves: {head}")
        files["deletion_curves.png"] = str(out / "deletion_curves.png")
    rows = ["layer,index," + ",".join(f"{m}_score,{m}_rank" for m in attributions)]
    ranks = {m: {layer: r + 1 for r, layer in enumerate(a.ranking())} for m, a in attributions.items()}
    for i, name in enumerate(names):
        cells = [f"{float(a.layer_scores[i]):.6g},{ranks[m][i]}" for m, a in attributions.items()]
        rows.append(f"{name},{i}," + ",".join(cells))
    atomic_write_text(out / "layer_scores.csv", "\n".join(rows) + "\n")
    files["layer_scores.csv"] = str(out / "layer_scores.csv")
    mask = run.feature_mask()
    for m, a in attributions.items():
        fmap = a.feature_map
        if fmap is None:
            continue
        body = "\n".join(f"{n}," + ",".join(f"{v:.6g}" for v in row) for n, row in zip(names, fmap.tolist()))
        header = "layer," + ",".join(f"f{j}" for j in range(fmap.shape[1]))
        atomic_write_text(out / f"{m}_map.csv", f"{header}\n{body}\n")
        files[f"{m}_map.csv"] = str(out / f"{m}_map.csv")
        if not plots:
            continue
        folds = pooled.get("num_folds", 1)
        title = f"{m}: {head}" + (f", mean over {folds} folds" if folds > 1 else "")
        if m == "if":
            plot_importance(fmap, out / "if_heatmap.png", layer_labels=names, title=title, feature_mask=mask)
            plot_layer_share(
                a.layer_scores, out / "layer_share.png", layer_labels=names, title=f"IF layer share: {head}"
            )
            files["layer_share.png"] = str(out / "layer_share.png")
        else:
            plot_attribution_map(fmap, out / f"{m}_heatmap.png", layer_labels=names, title=title, feature_mask=mask)
        files[f"{m}_heatmap.png"] = str(out / f"{m}_heatmap.png")
    return files


def plot_attribution_map(
    feature_map: Tensor,
    path: str | Path,
    *,
    layer_labels: list[str] | None = None,
    title: str = "",
    feature_mask: Tensor | None = None,
) -> None:
    """Heatmap of a signed ``(L, d)`` attribution map on a symmetric diverging scale (red helps the true class,
    blue hurts it); padded features light grey.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     plot_attribution_map(torch.randn(3, 5), Path(folder) / "map.png", title="gradient x input")
        ...     (Path(folder) / "map.png").read_bytes()[:4]
        b'\\x89PNG'
    """
    from densattn.train.plots import plt

    data = np.array(feature_map, dtype=float)
    if feature_mask is not None:
        data[~np.asarray(feature_mask, dtype=bool)] = np.nan
    limit = float(np.nanmax(np.abs(data))) if np.isfinite(data).any() else 1.0
    labels = layer_labels or [f"L{i}" for i in range(data.shape[0])]
    fig, ax = plt.subplots(figsize=(9, 0.32 * data.shape[0] + 1.6))
    cmap = plt.get_cmap("RdBu_r").with_extremes(bad="#dddddd")
    im = ax.imshow(data, aspect="auto", cmap=cmap, vmin=-limit, vmax=limit or 1.0, interpolation="nearest")
    ax.set_yticks(range(data.shape[0]), labels, fontsize=8)
    ax.set(xlabel="feature index", ylabel="encoder layer", title=title)
    fig.colorbar(im, ax=ax, fraction=0.03, pad=0.02, label="attribution (nats)")
    save_figure(fig, Path(path))
