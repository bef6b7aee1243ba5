"""Is an explanation faithful? Deletion curves of layer rankings, against random and reversed orders.

A layer ranking ``pi`` (most important first) is faithful to a model when removing the layers in that order destroys
the model's accuracy fastest (the deletion metric of RISE, Petsiuk et al. 2018, https://arxiv.org/abs/1806.07421,
applied to encoder layers; "remove" = replace by the training-split mean, the baseline of
:mod:`densattn.analysis.attribution`). With ``acc_k`` the accuracy after removing ``pi[0..k-1]`` (``k = 0..L``)::

    area = (1 / L) * sum_{k=0}^{L-1} (acc_k + acc_{k+1}) / 2        (trapezoid over the fraction of layers removed)

``acc_0`` (all layers) and ``acc_L`` (every layer at its mean) are the same for every order, so areas of different
orders on one model compare directly: **lower is more faithful**. A ranking is judged against random orders
(mean ± std of their areas; ``random_better`` = share of random orders with a strictly smaller area: 0 for a
ranking no random order beats, ties with equally good orders not counted against it) and
against its own reverse (least important first), whose area should be *higher* than random's.
No retraining: the model is fixed; :mod:`densattn.analysis.ablation` is the retraining counterpart.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from densattn.analysis.attribution import _check, _device, occlude
from densattn.io import save_figure

__all__ = [
    "combine_reports",
    "curve_area",
    "deletion_curve",
    "faithfulness_report",
    "faithfulness_table",
    "plot_deletion_curves",
    "random_orders",
]


def curve_area(values: Sequence[float]) -> float:
    """Trapezoid area under ``values[k]`` at ``x = k / (len - 1)``, ``k = 0..L`` (x spans [0, 1]).

    Example:
        >>> curve_area([1.0, 0.5, 0.5])
        0.625
    """
    v = np.asarray(values, dtype=float)
    if v.ndim != 1 or len(v) < 2:
        raise ValueError(f"values must be a curve of at least 2 points (k = 0..L), got shape {v.shape}")
    return float((v[:-1] + v[1:]).sum() / (2 * (len(v) - 1)))


def random_orders(num_layers: int, count: int, *, seed: int = 0) -> list[list[int]]:
    """``count`` random permutations of ``range(num_layers)`` from a local generator seeded with ``seed``.

    Example:
        >>> random_orders(4, 2, seed=0) == random_orders(4, 2, seed=0)
        True
    """
    if not isinstance(count, int) or count < 1:
        raise ValueError(f"count (random orders) must be a positive int, got {count!r}")
    g = torch.Generator().manual_seed(seed)
    return [torch.randperm(num_layers, generator=g).tolist() for _ in range(count)]


class _Evaluator:
    """Accuracy and mean log-likelihood of ``model`` with a set of layers removed, memoised by the set."""

    def __init__(self, model: nn.Module, x: Tensor, y: Tensor, baseline: Tensor, batch_size: int) -> None:
        self.model, self.x, self.y, self.baseline, self.batch_size = model, x, y, baseline, batch_size
        self.device = _device(model)
        self.cache: dict[frozenset[int], tuple[float, float]] = {}

    def __call__(self, removed: Sequence[int]) -> tuple[float, float]:
        key = frozenset(int(i) for i in removed)
        if key not in self.cache:
            x = occlude(self.x, self.baseline, sorted(key))
            correct, ll = 0, 0.0
            with torch.no_grad():
                for i in range(0, len(x), self.batch_size):
                    logits = self.model(x[i : i + self.batch_size].to(self.device)).double()
                    target = self.y[i : i + self.batch_size].to(self.device)
                    correct += int((logits.argmax(-1) == target).sum())
                    ll += float(torch.log_softmax(logits, -1).gather(1, target[:, None]).sum())
            self.cache[key] = (correct / len(x), ll / len(x))
        return self.cache[key]


def _validate_order(order: Sequence[int], num_layers: int) -> list[int]:
    order = [int(i) for i in order]
    if sorted(order) != list(range(num_layers)):
        raise ValueError(f"order must be a permutation of the {num_layers} layer indices, got {order}")
    return order


def deletion_curve(
    model: nn.Module, x: Tensor, y: Tensor, baseline: Tensor, order: Sequence[int], *, batch_size: int = 512
) -> dict[str, list[float]]:
    """Accuracy and mean log-likelihood after removing ``order[0..k-1]`` (set to ``baseline``), ``k = 0..L``.

    Returns:
        ``{"accuracy": [L + 1 values], "log_likelihood": [L + 1 values]}``.

    Example:
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
        >>> len(deletion_curve(model, torch.randn(6, 2, 2), torch.arange(6) % 2, torch.zeros(2, 2), [1, 0])["accuracy"])
        3
    """
    _check(x, y, baseline)
    order = _validate_order(order, x.shape[1])
    evaluate = _Evaluator(model, x, y, baseline, batch_size)
    points = [evaluate(order[:k]) for k in range(len(order) + 1)]
    return {"accuracy": [p[0] for p in points], "log_likelihood": [p[1] for p in points]}


def faithfulness_report(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    baseline: Tensor,
    rankings: dict[str, Sequence[int]],
    *,
    num_random: int = 20,
    seed: int = 0,
    batch_size: int = 512,
) -> dict[str, Any]:
    """Deletion curves and areas of every method's ranking, its reverse, and ``num_random`` random orders.

    Args:
        model: ``(B, L, d) -> logits``, eval mode.
        x, y, baseline: validation features ``(N, L, d)``, labels ``(N,)``, training mean ``(L, d)``.
        rankings: method name -> layer indices, most important first.
        num_random: how many random orders; seed: their generator's seed.

    Returns:
        ``{"num_examples", "num_layers", "accuracy_all_layers", "accuracy_no_layers", "methods": {name: {"ranking",
        "curve", "log_likelihood_curve", "area", "reverse_curve", "reverse_area", "random_better",
        "gap_to_random"}}, "random": {"num_orders", "seed", "areas", "area_mean", "area_std", "curve_mean",
        "curve_std"}}`` (curves are accuracies, ``L + 1`` points; ``gap_to_random = random area_mean - area``).

    Example:
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(6, 2))
        >>> x, y = torch.randn(20, 3, 2), torch.arange(20) % 2
        >>> report = faithfulness_report(model, x, y, torch.zeros(3, 2), {"mine": [2, 0, 1]}, num_random=4)
        >>> len(report["methods"]["mine"]["curve"]), len(report["random"]["areas"])
        (4, 4)
    """
    _check(x, y, baseline)
    num_layers = x.shape[1]
    evaluate = _Evaluator(model, x, y, baseline, batch_size)

    def curve(order: list[int]) -> tuple[list[float], list[float]]:
        points = [evaluate(order[:k]) for k in range(num_layers + 1)]
        return [p[0] for p in points], [p[1] for p in points]

    orders = random_orders(num_layers, num_random, seed=seed)
    random_curves = np.array([curve(o)[0] for o in orders])  # (R, L + 1)
    random_areas = np.array([curve_area(c) for c in random_curves])
    methods: dict[str, Any] = {}
    for name, ranking in rankings.items():
        ranking = _validate_order(ranking, num_layers)
        acc, ll = curve(ranking)
        reverse, _ = curve(ranking[::-1])
        area = curve_area(acc)
        methods[name] = {
            "ranking": ranking,
            "curve": acc,
            "log_likelihood_curve": ll,
            "area": area,
            "reverse_curve": reverse,
            "reverse_area": curve_area(reverse),
            "random_better": float((random_areas < area - 1e-12).mean()),
            "gap_to_random": float(random_areas.mean() - area),
        }
    return {
        "num_examples": int(len(x)),
        "num_layers": int(num_layers),
        "accuracy_all_layers": evaluate([])[0],
        "accuracy_no_layers": evaluate(range(num_layers))[0],
        "methods": methods,
        "random": {
            "num_orders": num_random,
            "seed": seed,
            "areas": random_areas.tolist(),
            "area_mean": float(random_areas.mean()),
            "area_std": float(random_areas.std(ddof=1)) if num_random > 1 else 0.0,
            "curve_mean": random_curves.mean(0).tolist(),
            "curve_std": random_curves.std(0, ddof=1).tolist() if num_random > 1 else [0.0] * (num_layers + 1),
        },
    }


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    v = np.asarray(values, dtype=float)
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def combine_reports(reports: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Pool per-fold reports of :func:`faithfulness_report` (each fold's model on its own split).

    Curves and areas become means over folds; ``area_fold_std`` / ``gap_to_random_std`` are their spreads over
    folds (the gap is paired: each fold's method against the same fold's random orders); ``random.area_std`` is
    the mean over folds of the spread over random orders. Rankings are per fold (``rankings``); ``ranking`` is
    fold 0's. A single report is returned with the same keys.

    Example:
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
        >>> x, y, b = torch.randn(10, 2, 2), torch.arange(10) % 2, torch.zeros(2, 2)
        >>> parts = [faithfulness_report(model, x[i::2], y[i::2], b, {"m": [0, 1]}, num_random=3) for i in (0, 1)]
        >>> combine_reports(parts)["num_folds"], combine_reports(parts)["num_examples"]
        (2, 10)
    """
    if not reports:
        raise ValueError("reports: give at least one per-fold faithfulness report")
    names = list(reports[0]["methods"])
    if any(list(r["methods"]) != names or r["num_layers"] != reports[0]["num_layers"] for r in reports):
        raise ValueError("reports must cover the same methods and layers (one report per fold of one run)")
    mean_curve = lambda key, name: np.mean([r["methods"][name][key] for r in reports], 0).tolist()  # noqa: E731
    methods = {}
    for name in names:
        per = [r["methods"][name] for r in reports]
        area, area_std = _mean_std([p["area"] for p in per])
        gap, gap_std = _mean_std([p["gap_to_random"] for p in per])
        methods[name] = {
            "ranking": per[0]["ranking"],
            "rankings": [p["ranking"] for p in per],
            "curve": mean_curve("curve", name),
            "log_likelihood_curve": mean_curve("log_likelihood_curve", name),
            "area": area,
            "area_fold_std": area_std,
            "reverse_curve": mean_curve("reverse_curve", name),
            "reverse_area": float(np.mean([p["reverse_area"] for p in per])),
            "random_better": float(np.mean([p["random_better"] for p in per])),
            "gap_to_random": gap,
            "gap_to_random_std": gap_std,
        }
    rand = [r["random"] for r in reports]
    return {
        "num_folds": len(reports),
        "num_examples": int(sum(r["num_examples"] for r in reports)),
        "num_layers": reports[0]["num_layers"],
        "accuracy_all_layers": float(np.mean([r["accuracy_all_layers"] for r in reports])),
        "accuracy_no_layers": float(np.mean([r["accuracy_no_layers"] for r in reports])),
        "methods": methods,
        "random": {
            "num_orders": rand[0]["num_orders"],
            "seed": rand[0]["seed"],
            "area_mean": float(np.mean([r["area_mean"] for r in rand])),
            "area_std": float(np.mean([r["area_std"] for r in rand])),
            "curve_mean": np.mean([r["curve_mean"] for r in rand], 0).tolist(),
            "curve_std": np.mean([r["curve_std"] for r in rand], 0).tolist(),
        },
    }


def faithfulness_table(
    report: dict[str, Any],
    *,
    layer_names: Sequence[str] | None = None,
    rankings: dict[str, Sequence[int]] | None = None,
    retrain: dict[str, dict[str, str]] | None = None,
    top_k: int | None = None,
) -> str:
    """Markdown table: per method its ranking, deletion area (lower = more faithful), reverse area and the
    comparison with random orders; a last row for the random orders themselves. ``rankings`` (method -> layers)
    replaces the shown ranking (default: the report's, fold 0's when pooled), e.g. by the ranking of the scores'
    mean over folds; the areas always measure each fold's own ranking. ``retrain`` (method ->
    ``{"top": cell, "bottom": cell}``) adds the retraining ablation's columns for ``top_k`` layers.

    Example:
        A model that reads only layer 1: the ranking that removes it first has the lowest deletion area,
        ``(1 + 0.475) / 2 / 3 + 0.475 * 2 / 3 = 0.5625``, and no random order beats it:

        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(6, 2, bias=False)).eval()
        >>> with torch.no_grad():
        ...     _ = model[1].weight.zero_()
        ...     model[1].weight[1, 3] = 2.0  # logit of class 1 = 2 x[:, 1, 1]
        >>> x = torch.randn(40, 3, 2, generator=torch.Generator().manual_seed(0))
        >>> y = (x[:, 1, 1] > 0).long()
        >>> orders = {"right": [1, 0, 2], "wrong": [0, 2, 1]}
        >>> report = faithfulness_report(model, x, y, torch.zeros(3, 2), orders, num_random=6)
        >>> report["methods"]["right"]["curve"]
        [1.0, 0.475, 0.475, 0.475]
        >>> for line in faithfulness_table(report).splitlines()[2:]:
        ...     print(line)
        | method | ranking, most important first | deletion area | reverse area | random − area | random orders better |
        |---|---|---|---|---|---|
        | right | L1 L0 L2 | 0.562 | 0.912 | +0.117 | 0% |
        | wrong | L0 L2 L1 | 0.912 | 0.562 | -0.233 | 83% |
        | random (6 orders) | — | 0.679 ± 0.143 (order std) | — | — | — |
    """
    names = list(layer_names) if layer_names else [f"L{i}" for i in range(report["num_layers"])]
    rand = report["random"]
    folds = report.get("num_folds", 1)
    spread = " ± fold std" if folds > 1 else ""
    which = " (mean over folds)" if folds > 1 and rankings else " (fold 0)" if folds > 1 else ""
    k = top_k if top_k is not None else "K"
    extra_head = f" retrained on top-{k} | retrained on bottom-{k} |" if retrain else ""
    lines = [
        f"Deletion curves on {report['num_examples']} examples ({folds} fold{'s' * (folds > 1)}): accuracy "
        f"{report['accuracy_all_layers']:.3f} with every layer, {report['accuracy_no_layers']:.3f} with every layer "
        f"replaced by its training mean. Area under accuracy vs fraction of layers removed; lower = more faithful.",
        "",
        f"| method | ranking{which}, most important first | deletion area{spread} | reverse area | random − area | "
        "random orders better |" + extra_head,
        "|---|---|---|---|---|---|" + "---|---|" * bool(retrain),
    ]
    for name, m in report["methods"].items():
        area = f"{m['area']:.3f}" + (f" ± {m['area_fold_std']:.3f}" if folds > 1 else "")
        gap = f"{m['gap_to_random']:+.3f}" + (f" ± {m['gap_to_random_std']:.3f}" if folds > 1 else "")
        shown = " ".join(names[i] for i in (rankings or {}).get(name, m["ranking"]))
        lines.append(
            f"| {name} | {shown} | {area} | {m['reverse_area']:.3f} | {gap} | "
            f"{100 * m['random_better']:.0f}% |"
            + (f" {retrain[name]['top']} | {retrain[name]['bottom']} |" if retrain else "")
        )
    lines.append(
        f"| random ({rand['num_orders']} orders) | — | {rand['area_mean']:.3f} ± {rand['area_std']:.3f} (order std) "
        "| — | — | — |" + " — | — |" * bool(retrain)
    )
    if retrain:
        lines += ["", "Retrained: accuracy mean ± std over folds (paired change vs the all-layer run)."]
    return "\n".join(lines) + "\n"


def plot_deletion_curves(report: dict[str, Any], path: str | Path, *, title: str = "", ax=None) -> None:
    """Every method's deletion curve (solid) and its reverse (dashed) on one figure, with the random orders'
    mean ± std as a grey band. With ``ax`` given, draws into it and writes nothing.

    Example:
        >>> import tempfile
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(6, 2)).eval()
        >>> x, y = torch.randn(20, 3, 2), torch.arange(20) % 2
        >>> report = faithfulness_report(model, x, y, torch.zeros(3, 2), {"occlusion": [2, 0, 1]}, num_random=4)
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     plot_deletion_curves(report, Path(folder) / "deletion.png", title="toy")
        ...     (Path(folder) / "deletion.png").read_bytes()[:4]
        b'\\x89PNG'
    """
    from densattn.train.plots import plt

    own = ax is None
    if own:
        fig, ax = plt.subplots(figsize=(5.2, 3.6))
    num_layers = report["num_layers"]
    frac = np.arange(num_layers + 1) / num_layers
    rand = report["random"]
    mean, std = np.array(rand["curve_mean"]), np.array(rand["curve_std"])
    ax.fill_between(frac, mean - std, mean + std, color="0.85", label=f"random ±1 std (area {rand['area_mean']:.3f})")
    ax.plot(frac, mean, color="0.5", linewidth=1)
    for i, (name, m) in enumerate(report["methods"].items()):
        colour = f"C{i}"
        ax.plot(frac, m["curve"], color=colour, marker="o", markersize=3, label=f"{name} (area {m['area']:.3f})")
        ax.plot(frac, m["reverse_curve"], color=colour, linestyle="--", linewidth=1, alpha=0.7)
    ax.set(xlabel="fraction of layers removed (dashed: reverse order)", ylabel="accuracy", title=title)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    if own:
        save_figure(fig, Path(path))
