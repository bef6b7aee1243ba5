"""A check any user can run: does an explanation method find the one layer that carries the label?

The synthetic task (:func:`one_informative_layer`): ``L`` layers of ``d`` features; the label lives in layer
``layer`` only (class means ``2 * m_y`` plus unit noise), while every other layer is the same label-free latent plus
a little noise of its own (a consensus the informative layer departs from)::

    x[n, l] = z_n + 0.3 * e[n, l]   (l != layer),      x[n, layer] = 2 * m[y_n] + e'[n],     z, e, e', m ~ N(0, I)

:func:`sanity_check` trains every head kind on it (fixed seeds, one 80/20 split), explains each run with every
method (:func:`densattn.analysis.explain.explain`) and reports the rank each method gives the informative layer.
A method that cannot put it first on this task should not be trusted to rank real encoder layers. Measured with the
defaults (``benchmarks/results/explain_sanity.md``): occlusion and integrated gradients rank it first for every head
kind; gradient × input misses it for the ``daam`` head (rank 2, a first-order approximation of a multiplicative
gate); the Importance Factor does not rank it first for ``daam`` or ``gqdaam`` (it scores how typical a layer is, and
the informative layer is the atypical one).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from densattn.data.cache import FeatureSet
from densattn.io import atomic_write_json, atomic_write_text

__all__ = ["one_informative_layer", "sanity_check", "sanity_features", "sanity_table"]


def one_informative_layer(
    n: int, *, num_layers: int = 4, dim: int = 16, classes: int = 3, layer: int = 2, seed: int = 0
) -> tuple[Tensor, Tensor]:
    """``(x (n, num_layers, dim), y (n,))`` where only ``layer`` carries the label (module docstring).

    Raises:
        ValueError: ``layer`` outside ``[0, num_layers)`` or fewer than 2 layers.

    Example:
        >>> x, y = one_informative_layer(10, num_layers=3, dim=4, layer=1)
        >>> x.shape, y.shape
        (torch.Size([10, 3, 4]), torch.Size([10]))
    """
    if not 0 <= layer < num_layers or num_layers < 2:
        raise ValueError(f"layer must index one of num_layers >= 2 layers, got layer={layer}, num_layers={num_layers}")
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    x = torch.randn(n, 1, dim, generator=g) + 0.3 * torch.randn(n, num_layers, dim, generator=g)
    x[:, layer] = 2 * torch.randn(classes, dim, generator=g)[y] + torch.randn(n, dim, generator=g)
    return x, y


def sanity_features(n: int = 300, **options: Any) -> FeatureSet:
    """The task of :func:`one_informative_layer` as a :class:`FeatureSet` (classes ``c0``, ``c1``, ...).

    Example:
        >>> fs = sanity_features(12, num_layers=3, dim=4, classes=2, layer=0)
        >>> fs.features.shape, fs.classes
        (torch.Size([12, 3, 4]), ['c0', 'c1'])
    """
    x, y = one_informative_layer(n, **options)
    classes = [f"c{i}" for i in range(options.get("classes", 3))]
    return FeatureSet(x, y, classes, [f"s{i}" for i in range(n)], manifest={"dataset": "one_informative_layer"})


def sanity_check(
    *,
    heads: list[str] | None = None,
    method: str | list[str] = "all",
    out: str | Path | None = None,
    num_examples: int = 300,
    num_layers: int = 4,
    dim: int = 16,
    layer: int = 2,
    epochs: int = 30,
    lr: float = 1e-2,
    seed: int = 0,
    num_random: int = 10,
    log=None,
) -> dict[str, Any]:
    """Train every head in ``heads`` (default: all kinds) on the one-informative-layer task and report, for every
    method, the rank it gives the informative layer (1 = recovered) and its deletion-curve area.

    Runs go into ``out`` (default: a temporary folder, removed afterwards); with ``out``, ``sanity.json`` and
    ``sanity.md`` are written there too.

    Returns:
        ``{"informative_layer", "num_layers", "heads": {head: {"val_accuracy", "rank": {method: r}, "area":
        {method: a}, "random_area"}}, "recovered": {method: [heads where rank == 1]}}``.

    Example:
        >>> sanity_check(heads=["conv"], method="occlusion", num_examples=150, epochs=10)["recovered"]
        {'occlusion': ['conv']}
    """
    from densattn.analysis.explain import explain
    from densattn.heads import HEAD_TYPES
    from densattn.train import TrainConfig, run_experiment

    heads = list(heads or HEAD_TYPES)
    unknown = [h for h in heads if h not in HEAD_TYPES]
    if unknown:
        raise ValueError(f"heads: unknown head kind(s) {unknown}; choose from {list(HEAD_TYPES)}")
    features = sanity_features(num_examples, num_layers=num_layers, dim=dim, layer=layer, seed=seed)
    result: dict[str, Any] = {"informative_layer": layer, "num_layers": num_layers, "dim": dim, "heads": {}}
    names = [method] if isinstance(method, str) else list(method)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(out) if out is not None else Path(tmp)
        for head in heads:
            methods = names if names == ["all"] or head in ("daam", "gqdaam") else [m for m in names if m != "if"]
            if not methods:  # only the IF was asked for, and this head has none
                continue
            config = TrainConfig(epochs=epochs, lr=lr, seed=seed)
            run_dir = root / head
            run_experiment(
                features, head=head, out=run_dir, train_config=config, folds=1, plots=False, resume=run_dir.exists()
            )
            explained = explain(
                run_dir, method=methods, features=features, num_random=num_random, seed=seed, plots=False
            )
            faith = explained["faithfulness"]
            result["heads"][head] = {
                "val_accuracy": faith["accuracy_all_layers"],
                "rank": {m: a["ranking"].index(layer) + 1 for m, a in explained["attributions"].items()},
                "area": {m: f["area"] for m, f in faith["methods"].items()},
                "random_area": faith["random"]["area_mean"],
            }
            if log:
                log(f"[sanity] {head}: " + ", ".join(f"{m} rank {r}" for m, r in result["heads"][head]["rank"].items()))
    methods_seen = list(dict.fromkeys(m for h in result["heads"].values() for m in h["rank"]))
    result["recovered"] = {m: [h for h, r in result["heads"].items() if r["rank"].get(m) == 1] for m in methods_seen}
    if out is not None:
        atomic_write_json(Path(out) / "sanity.json", result)
        atomic_write_text(Path(out) / "sanity.md", sanity_table(result))
    return result


def sanity_table(result: dict[str, Any]) -> str:
    """Markdown: per head the validation accuracy and the rank each method gives the informative layer.

    Example:
        >>> head = {"val_accuracy": 0.95, "rank": {"occlusion": 1, "if": 3}, "area": {"occlusion": 0.41, "if": 0.7},
        ...         "random_area": 0.6}
        >>> result = {"informative_layer": 2, "num_layers": 4, "heads": {"daam": head},
        ...           "recovered": {"occlusion": ["daam"], "if": []}}
        >>> for line in sanity_table(result).splitlines()[2:]:
        ...     print(line)
        | head | val accuracy | occlusion | if | random area |
        |---|---|---|---|---|
        | daam | 0.950 | 1 ✓ (0.410) | 3 (0.700) | 0.600 |
    """
    methods = list(result["recovered"])
    lines = [
        f"Synthetic check: layer L{result['informative_layer']} of {result['num_layers']} carries the label. Rank "
        "each method gives it (1 = recovered; ✓ marks rank 1) and deletion area (random's in the last column).",
        "",
        "| head | val accuracy | " + " | ".join(methods) + " | random area |",
        "|---|---|" + "---|" * len(methods) + "---|",
    ]
    for head, r in result["heads"].items():
        cells = []
        for m in methods:
            if m not in r["rank"]:
                cells.append("n/a")
                continue
            mark = " ✓" if r["rank"][m] == 1 else ""
            cells.append(f"{r['rank'][m]}{mark} ({r['area'][m]:.3f})")
        lines.append(f"| {head} | {r['val_accuracy']:.3f} | " + " | ".join(cells) + f" | {r['random_area']:.3f} |")
    return "\n".join(lines) + "\n"
