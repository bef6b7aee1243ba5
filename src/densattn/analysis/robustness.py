"""Robustness of trained runs under input shifts: re-extract the test splits shifted, score every fold's adapter.

For runs trained on the same data and folds (``densattn train ... --out RUN``), :func:`evaluate_robustness`

1. rebuilds the dataset from ``RUN/config.json`` (``data``, ``max_samples``, ``data_options``, seed) and checks its
   fingerprint against the one recorded at training time;
2. rebuilds the folds exactly as training did (:func:`densattn.train.splits.fold_splits`, same seed);
3. for each shift (:mod:`densattn.data.shifts`), extracts the features of the union of the evaluated folds' test splits
   with the shift applied before the frozen encoder, through the feature cache (the shifted dataset's fingerprint
   holds the shift's name, level and seed, so every shift has its own cache entry);
4. scores fold k's saved adapter (``RUN/folds/K/adapter``) on fold k's test split, clean and under every shift.

Every fold is evaluated by default (``folds=None``): each example is then a test example exactly once, the whole
dataset is re-extracted per shift, and accuracies come as mean ± std over folds, paired by fold across methods.
``folds=[0]`` evaluates fold 0 only (5× cheaper for 5 folds, no spread). The clean score is recomputed from the
cached clean features and checked against the run's ``metrics.json``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from densattn.data.shifts import Shift, parse_shifts, shifted_dataset
from densattn.io import save_figure

__all__ = ["evaluate_robustness", "robustness_markdown", "plot_robustness"]


def _run_folds(config: dict[str, Any], dataset):
    from densattn.train import TrainConfig, make_folds

    return make_folds(
        dataset.labels,
        folds=config.get("folds", 5),
        config=TrainConfig.from_dict(config["train"]),
        groups=dataset.groups,
    )


def _predict(model, features: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return torch.cat([model(features[i : i + 512]) for i in range(0, len(features), 512)]).argmax(-1).numpy()


def evaluate_robustness(
    runs: list[str],
    shifts: list[str] | list[Shift],
    *,
    names: list[str] | None = None,
    folds: list[int] | None = None,
    cache_dir: str | Path | None = None,
    shift_seed: int = 0,
    batch_size: int = 16,
    progress: bool = False,
) -> dict[str, Any]:
    """Accuracy of each run's fold adapters on clean and shifted test splits.

    Args:
        runs: run directories trained on the same data, max_samples, folds and seed (checked).
        shifts: shift specs (``"noise=20,10"``, ``"blur"``) or :class:`~densattn.data.shifts.Shift` objects.
        names: method name per run (default from each run's config, as ``densattn compare``).
        folds: fold indices to evaluate (default: all).
        cache_dir: feature cache root.
        shift_seed: seed of the shifts' random draws.

    Returns:
        ``{"conditions": ["clean", "noise=20", ...], "shifts": [{label, name, level, unit}], "methods": {name:
        {condition: {"accuracy": [per fold], "macro_f1": [...], "accuracy_mean", "accuracy_std",
        "macro_f1_mean", "drop_mean", "drop_std"}}}, "folds": [...], "paired": {condition: rows}, ...}``.

    Example:
        A ``pool`` head trained on 12 debate statements (MiniLM features), scored on fold 0's test split with every word
        upper-cased; the clean score is checked against the one recorded at training time:

        >>> import tempfile
        >>> from densattn.pipeline import task_features
        >>> from densattn.train import TrainConfig, run_experiment
        >>> tmp = tempfile.TemporaryDirectory()
        >>> cache, run = Path(tmp.name) / "cache", Path(tmp.name) / "run"
        >>> features, info, _ = task_features("debates-party", "minilm", cache_dir=cache, max_samples=12,
        ...                                   encoder_options={"max_length": 32})  # texts cut to 32 tokens
        >>> _ = run_experiment(features, head="pool", out=run, folds=2, plots=False, train_config=TrainConfig(epochs=1),
        ...                    encoder_info=info, extra_config={"data": "debates-party", "max_samples": 12})
        >>> result = evaluate_robustness([run], ["casing=1.0"], folds=[0], cache_dir=cache)
        >>> result["conditions"], result["num_test_examples"], result["max_clean_mismatch_vs_training"]
        (['clean', 'casing=1'], 6, 0.0)
        >>> sorted(result["methods"]["pool"]["casing=1"])
        ['accuracy', 'accuracy_mean', 'accuracy_std', 'drop_mean', 'drop_std', 'macro_f1', 'macro_f1_mean']
        >>> tmp.cleanup()
    """
    from densattn.adapters import load_adapter
    from densattn.analysis.compare import load_runs
    from densattn.analysis.stats import compare_runs
    from densattn.data.cache import cached_features
    from densattn.encoders import load_recorded_encoder
    from densattn.pipeline import run_dataset
    from densattn.train.metrics import classification_metrics

    loaded = load_runs(runs, names)
    for name, r in loaded.items():
        if r["config"].get("kind", "head") != "head":
            raise ValueError(
                f"{name!r} ({r['run']}) is a {r['config'].get('method')} run; robustness evaluates heads on cached "
                "features (densattn train --method head) only"
            )
    first = next(iter(loaded.values()))["config"]
    dataset = run_dataset(first)
    shift_list = [s for s in shifts if isinstance(s, Shift)] + parse_shifts(
        [s for s in shifts if not isinstance(s, Shift)], dataset.modality
    )
    if not shift_list:
        raise ValueError("give at least one --shift, e.g. --shift noise=20,10,0")
    for s in shift_list:
        if s.modality != dataset.modality:
            raise ValueError(f"shift {s.label} is for {s.modality} data but {first['data']!r} is {dataset.modality}")
    splits = _run_folds(first, dataset)
    fold_ids = list(range(len(splits))) if folds is None else [int(k) for k in folds]
    bad = [k for k in fold_ids if not 0 <= k < len(splits)]
    if bad:
        raise ValueError(f"folds {bad} do not exist; the runs have {len(splits)} folds (0..{len(splits) - 1})")
    union = np.unique(np.concatenate([splits[k].test for k in fold_ids]))
    position = {int(i): p for p, i in enumerate(union)}
    test_subset = dataset.subset(union.tolist())
    labels = np.asarray(dataset.labels)

    encoders: dict[str, Any] = {}
    features: dict[tuple[str, str], torch.Tensor] = {}  # (encoder key, condition) -> (len(union), L, d)
    conditions = ["clean"] + [s.label for s in shift_list]
    for r in loaded.values():
        enc_info = r["config"].get("encoder") or {}
        key = json.dumps({"name": enc_info.get("name"), "options": enc_info.get("options", {})}, sort_keys=True)
        if key in encoders:
            continue
        encoder = load_recorded_encoder(enc_info)
        encoders[key] = encoder
        clean = cached_features(encoder, dataset, cache_dir=cache_dir, batch_size=batch_size, progress=progress)
        features[(key, "clean")] = clean.features[torch.as_tensor(union)]
        for s in shift_list:
            shifted = shifted_dataset(test_subset, s, seed=shift_seed)
            fs = cached_features(encoder, shifted, cache_dir=cache_dir, batch_size=batch_size, progress=progress)
            features[(key, s.label)] = fs.features

    methods: dict[str, Any] = {}
    clean_check = {}
    for name, r in loaded.items():
        enc_info = r["config"].get("encoder") or {}
        key = json.dumps({"name": enc_info.get("name"), "options": enc_info.get("options", {})}, sort_keys=True)
        per_cond: dict[str, dict[str, Any]] = {c: {"accuracy": [], "macro_f1": []} for c in conditions}
        recorded = {int(f.get("fold", i)): f for i, f in enumerate(r["metrics"].get("folds", []))}
        for k in fold_ids:
            adapter_dir = Path(r["run"]) / "folds" / str(k) / "adapter"
            if not adapter_dir.exists():
                raise FileNotFoundError(f"{adapter_dir} is missing; was fold {k} of {r['run']} finished?")
            model = load_adapter(adapter_dir)
            test_idx = splits[k].test
            if k in recorded and recorded[k].get("num_test") not in (None, len(test_idx)):
                raise ValueError(
                    f"{name}: fold {k} had {recorded[k]['num_test']} test examples, rebuilt {len(test_idx)}"
                )
            rows = torch.as_tensor([position[int(i)] for i in test_idx])
            for c in conditions:
                pred = _predict(model, features[(key, c)][rows])
                m = classification_metrics(labels[test_idx], pred, len(model.classes))
                per_cond[c]["accuracy"].append(float(m["accuracy"]))
                per_cond[c]["macro_f1"].append(float(m["macro_f1"]))
            if k in recorded:
                clean_check[f"{name}/fold{k}"] = abs(per_cond["clean"]["accuracy"][-1] - recorded[k]["accuracy"])
        for c in conditions:
            acc = np.array(per_cond[c]["accuracy"])
            drop = np.array(per_cond["clean"]["accuracy"]) - acc
            ddof = 1 if len(acc) > 1 else 0
            per_cond[c].update(
                accuracy_mean=float(acc.mean()),
                accuracy_std=float(acc.std(ddof=ddof)),
                macro_f1_mean=float(np.mean(per_cond[c]["macro_f1"])),
                drop_mean=float(drop.mean()),
                drop_std=float(drop.std(ddof=ddof)),
            )
        methods[name] = per_cond

    paired: dict[str, list[dict[str, Any]]] = {}
    reference = "daam" if "daam" in methods else None
    if reference and len(methods) > 1 and len(fold_ids) > 1:
        for c in conditions:
            as_metrics = {
                m: {
                    "folds": [
                        {
                            "fold": k,
                            "accuracy": methods[m][c]["accuracy"][j],
                            "num_test": len(splits[k].test),
                            "num_train": len(splits[k].train) + len(splits[k].val),
                        }
                        for j, k in enumerate(fold_ids)
                    ]
                }
                for m in methods
            }
            paired[c] = compare_runs(as_metrics, reference, metrics=("accuracy",))
    return {
        "data": first.get("data"),
        "max_samples": first.get("max_samples"),
        "modality": dataset.modality,
        "folds": fold_ids,
        "num_test_examples": int(len(union)),
        "shift_seed": shift_seed,
        "conditions": conditions,
        "shifts": [{"label": s.label, "name": s.name, "level": s.level, "unit": s.spec.unit} for s in shift_list],
        "methods": methods,
        "paired": paired,
        "runs": {k: v["run"] for k, v in loaded.items()},
        "max_clean_mismatch_vs_training": max(clean_check.values()) if clean_check else None,
    }


def robustness_markdown(result: dict[str, Any]) -> str:
    """Accuracy per method and condition (mean ± std over folds) and its drop from clean, plus DAAM − method.

    Example:
        >>> stats = lambda acc, drop: {"accuracy_mean": acc, "accuracy_std": 0.01, "drop_mean": drop}
        >>> result = {"data": "toy", "max_samples": 40, "folds": [0, 1], "num_test_examples": 40, "shift_seed": 0,
        ...           "conditions": ["clean", "noise=10"], "paired": {},
        ...           "methods": {"daam": {"clean": stats(0.9, 0.0), "noise=10": stats(0.8, 0.1)},
        ...                       "mha": {"clean": stats(0.85, 0.0), "noise=10": stats(0.6, 0.25)}}}
        >>> for line in robustness_markdown(result).splitlines()[2:]:
        ...     print(line)
        | condition | daam | mha |
        |---|---|---|
        | clean | 0.900 ± 0.010 | 0.850 ± 0.010 |
        | noise=10 | 0.800 ± 0.010 (-10.0) | 0.600 ± 0.010 (-25.0) |
    """
    conds = result["conditions"]
    lines = [
        f"Data `{result['data']}` (max_samples {result['max_samples']}), test splits of folds {result['folds']} "
        f"({result['num_test_examples']} examples), shift seed {result['shift_seed']}. Accuracy mean ± std over "
        "folds; in brackets the change from clean (percentage points).",
        "",
        "| condition | " + " | ".join(result["methods"]) + " |",
        "|---|" + "---|" * len(result["methods"]),
    ]
    for c in conds:
        cells = []
        for per in result["methods"].values():
            cell = f"{per[c]['accuracy_mean']:.3f} ± {per[c]['accuracy_std']:.3f}"
            if c != "clean":
                cell += f" ({-100 * per[c]['drop_mean']:+.1f})"
            cells.append(cell)
        lines.append(f"| {c} | " + " | ".join(cells) + " |")
    if result["paired"]:
        others = [m for m in result["methods"] if m != "daam"]
        lines += [
            "",
            "DAAM − method accuracy per condition (mean paired difference over folds, Nadeau–Bengio corrected 95% CI;"
            " ✱ = interval excludes 0).",
            "",
            "| condition | " + " | ".join(others) + " |",
            "|---|" + "---|" * len(others),
        ]
        for c in conds:
            rows = {r["method"]: r for r in result["paired"][c]}
            cells = []
            for m in others:
                r = rows[m]
                star = " ✱" if r["significant"] else ""
                cells.append(f"{r['mean_difference']:+.3f} [{r['ci_low']:+.3f}, {r['ci_high']:+.3f}]{star}")
            lines.append(f"| {c} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_robustness(result: dict[str, Any], path: str | Path) -> None:
    """One panel per shift: accuracy (mean ± std over folds) vs level, clean included, one line per method.

    Example:
        >>> import tempfile
        >>> stats = lambda acc: {"accuracy_mean": acc, "accuracy_std": 0.02}
        >>> shifts = [{"label": f"noise={v}", "name": "noise", "level": float(v)} for v in (20, 0)]  # SNR dB
        >>> result = {"data": "toy", "modality": "audio", "shifts": shifts,
        ...     "methods": {"daam": {"clean": stats(0.9), "noise=20": stats(0.85), "noise=0": stats(0.6)}}}
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     plot_robustness(result, Path(folder) / "robustness.png")
        ...     (Path(folder) / "robustness.png").read_bytes()[:4]
        b'\\x89PNG'
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from densattn.data.shifts import SHIFTS

    names = list(dict.fromkeys(s["name"] for s in result["shifts"]))
    fig, axes = plt.subplots(1, len(names), figsize=(3.6 * len(names), 3.4), squeeze=False)
    modality = result["modality"]
    for ax, shift_name in zip(axes[0], names):
        spec = SHIFTS[(modality, shift_name)]
        entries = [(spec.clean_level, "clean")] + [
            (s["level"], s["label"]) for s in result["shifts"] if s["name"] == shift_name
        ]
        if shift_name == "noise" and modality == "audio":
            entries = [entries[0]] + sorted(entries[1:], key=lambda e: -e[0])  # clean (inf SNR) first, then worse
        else:
            entries.sort(key=lambda e: e[0])
        x = np.arange(len(entries))
        for method, per in result["methods"].items():
            mean = [per[c]["accuracy_mean"] for _, c in entries]
            std = [per[c]["accuracy_std"] for _, c in entries]
            ax.errorbar(x, mean, yerr=std, marker="o", capsize=2, label=method)
        ax.set_xticks(x)
        ax.set_xticklabels(["∞" if math.isinf(v) else f"{v:g}" for v, _ in entries])
        ax.set_xlabel(f"{shift_name} ({spec.unit})")
        ax.set_ylabel("accuracy")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=8)
    fig.suptitle(f"{result['data']}: accuracy under input shifts (mean ± std over folds)")
    fig.tight_layout()
    save_figure(fig, path)
