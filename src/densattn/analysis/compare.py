"""Compare trained runs: one table of methods, paired fold statistics against a reference, accuracy vs parameters.

:func:`compare` writes ``DIR/results.md`` (markdown), ``DIR/results.csv`` (method, accuracy mean/std, macro-F1
mean/std, trainable parameters, seconds per epoch), ``DIR/paired.csv`` (reference − method per fold metric, with the
95% interval and p-values of :func:`densattn.analysis.stats.compare_runs`) and ``DIR/accuracy_vs_params.png``.
Paired statistics need runs on the same examples and folds, so the runs must agree on data, max_samples, folds and
seed; :func:`load_runs` refuses otherwise.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

from densattn.io import atomic_write_json, atomic_write_text, read_json, save_figure

__all__ = ["compare", "load_runs", "method_name", "summary_rows", "to_markdown"]

MATCH_KEYS = ("data", "max_samples", "folds", "seed", "dataset_fingerprint")


def method_name(config: dict[str, Any]) -> str:
    """The run's display ``name`` if it has one, else its method (``daam``, ``lora``, ``fusion-ban``...), with the
    DAAM preset appended when it is not ``paper``.

    Example:
        >>> method_name({"method": "daam", "head_options": {"preset": "mixture"}})
        'daam-mixture'
    """
    if config.get("name"):
        return str(config["name"])
    name = str(config.get("method") or config.get("head") or "run")
    preset = (config.get("head_options") or {}).get("preset")
    if preset and preset != "paper":
        name = f"{name}-{preset}"
    return name


def _identity(config: dict[str, Any]) -> dict[str, Any]:
    return {
        "data": config.get("data"),
        "max_samples": config.get("max_samples"),
        "folds": config.get("folds"),
        "seed": (config.get("train") or {}).get("seed", config.get("seed")),
        "dataset_fingerprint": (config.get("feature_cache") or {}).get("dataset_fingerprint"),
    }


def load_runs(runs: list[str], names: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """``{method: {"run", "config", "metrics"}}``; ValueError when runs are missing, clash or differ in data.

    Example:
        >>> import json, tempfile
        >>> tmp = tempfile.TemporaryDirectory()
        >>> folder = Path(tmp.name)
        >>> for name, seed in (("daam", 0), ("mha", 0), ("late", 1)):
        ...     (folder / name).mkdir()
        ...     config = {"method": name, "data": "fortunes", "folds": 5, "train": {"seed": seed}}
        ...     _ = (folder / name / "config.json").write_text(json.dumps(config))
        ...     _ = (folder / name / "metrics.json").write_text("{}")
        >>> list(load_runs([folder / "daam", folder / "mha"]))
        ['daam', 'mha']
        >>> load_runs([folder / "daam", folder / "late"])
        Traceback (most recent call last):
        ...
        ValueError: ...seed: daam=0 but late=1...
        >>> tmp.cleanup()
    """
    if names is not None and len(names) != len(runs):
        raise ValueError(f"--name was given {len(names)} times for {len(runs)} runs; give one name per run, in order")
    out: dict[str, dict[str, Any]] = {}
    identities = []
    for i, run_dir in enumerate(runs):
        path = Path(run_dir)
        for f in ("config.json", "metrics.json"):
            if not (path / f).exists():
                raise FileNotFoundError(f"{path / f} is missing; is {run_dir} a finished `densattn train` run?")
        config = read_json(path / "config.json")
        metrics = read_json(path / "metrics.json")
        name = names[i] if names is not None else method_name(config)
        if name in out:
            raise ValueError(
                f"two runs are both named {name!r} ({out[name]['run']} and {run_dir}); name them with --name"
            )
        out[name] = {"run": str(path), "config": config, "metrics": metrics}
        identities.append((name, _identity(config)))
    first_name, first = identities[0]
    problems = []
    for name, ident in identities[1:]:
        for key in MATCH_KEYS:
            a, b = first[key], ident[key]
            if key == "dataset_fingerprint" and (a is None or b is None):
                continue  # runs that do not use the feature cache (LoRA) record no fingerprint
            if a != b:
                problems.append(f"{key}: {first_name}={a!r} but {name}={b!r}")
    if problems:
        raise ValueError(
            "the runs were not trained on the same examples and folds, so their fold scores cannot be paired: "
            + "; ".join(problems)
            + ". Retrain them with the same --data, --max-samples, --folds and --seed."
        )
    return out


def _fmt_p(p: float) -> str:
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return "–"
    return f"{p:.3f}" if p >= 0.001 else "<0.001"


def summary_rows(runs: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per run of :func:`load_runs`' result: accuracy and macro-F1 (mean, std), parameters, speed, folds.

    Example:
        >>> metrics = {"accuracy_mean": 0.8, "accuracy_std": 0.02, "macro_f1_mean": 0.7, "macro_f1_std": 0.03,
        ...            "trainable_params": 1234, "folds": [{}, {}, {}]}
        >>> row = summary_rows({"daam": {"metrics": metrics}})[0]
        >>> row["method"], row["accuracy_mean"], row["trainable_params"], row["seconds_per_epoch"], row["num_folds"]
        ('daam', 0.8, 1234, None, 3)
    """
    rows = []
    for name, r in runs.items():
        m = r["metrics"]
        rows.append(
            {
                "method": name,
                "accuracy_mean": m["accuracy_mean"],
                "accuracy_std": m["accuracy_std"],
                "macro_f1_mean": m["macro_f1_mean"],
                "macro_f1_std": m["macro_f1_std"],
                "trainable_params": m.get("trainable_params"),
                "seconds_per_epoch": m.get("seconds_per_epoch"),
                "num_folds": m.get("num_folds", len(m.get("folds", []))),
            }
        )
    return rows


def to_markdown(summary: list[dict[str, Any]], paired: list[dict[str, Any]], header: str = "") -> str:
    """The results table and the paired table (significant differences in bold with a star).

    Example:
        >>> row = {"method": "daam", "accuracy_mean": 0.8, "accuracy_std": 0.02, "macro_f1_mean": 0.7,
        ...        "macro_f1_std": 0.03, "trainable_params": 12345, "seconds_per_epoch": None}
        >>> print(to_markdown([row], []), end="")
        | method | accuracy | macro-F1 | trainable params | s / epoch |
        |---|---|---|---|---|
        | daam | 0.8000 ± 0.0200 | 0.7000 ± 0.0300 | 12,345 | – |
    """
    lines = [header] if header else []
    lines += [
        "| method | accuracy | macro-F1 | trainable params | s / epoch |",
        "|---|---|---|---|---|",
    ]
    for r in summary:
        params = f"{r['trainable_params']:,}" if r["trainable_params"] is not None else "–"
        spe = f"{r['seconds_per_epoch']:.3f}" if r["seconds_per_epoch"] is not None else "–"
        lines.append(
            f"| {r['method']} | {r['accuracy_mean']:.4f} ± {r['accuracy_std']:.4f} | "
            f"{r['macro_f1_mean']:.4f} ± {r['macro_f1_std']:.4f} | {params} | {spe} |"
        )
    if paired:
        ref = paired[0]["reference"]
        corr = paired[0]["correction"]
        lines += [
            "",
            f"Paired differences over folds, {ref} − method (positive: {ref} better). 95% CI and p from the "
            + ("Nadeau–Bengio corrected resampled t-test" if corr == "nadeau-bengio" else "paired t-test")
            + "; plain paired-t p and exact Wilcoxon p alongside. **Bold ✱** = the interval excludes 0.",
            "",
            "| method | metric | mean diff | 95% CI | p | plain t p | Wilcoxon p |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in paired:
            diff = f"{r['mean_difference']:+.4f}"
            ci = f"[{r['ci_low']:+.4f}, {r['ci_high']:+.4f}]"
            if r["significant"]:
                diff, ci = f"**{diff}** ✱", f"**{ci}**"
            lines.append(
                f"| {r['method']} | {r['metric']} | {diff} | {ci} | {_fmt_p(r['p_value'])} | "
                f"{_fmt_p(r['t_p_value'])} | {_fmt_p(r['wilcoxon_p_value'])} |"
            )
    return "\n".join(lines) + "\n"


def _csv(rows: list[dict[str, Any]], columns: list[str]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(columns)
    for r in rows:
        writer.writerow([";".join(f"{x:.6f}" for x in r[c]) if isinstance(r[c], list) else r[c] for c in columns])
    return buf.getvalue()


PAIRED_COLUMNS = [
    "reference",
    "method",
    "metric",
    "n",
    "reference_mean",
    "method_mean",
    "mean_difference",
    "std_difference",
    "ci_low",
    "ci_high",
    "p_value",
    "t_ci_low",
    "t_ci_high",
    "t_p_value",
    "wilcoxon_p_value",
    "significant",
    "correction",
    "test_fraction",
    "differences",
]


def plot_accuracy_vs_params(summary: list[dict[str, Any]], path: Path, title: str = "") -> None:
    """Accuracy (mean ± std over folds) against trainable parameters on a log axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for r in summary:
        if not r["trainable_params"]:
            continue
        ax.errorbar(r["trainable_params"], r["accuracy_mean"], yerr=r["accuracy_std"], fmt="o", capsize=3)
        ax.annotate(r["method"], (r["trainable_params"], r["accuracy_mean"]), textcoords="offset points", xytext=(5, 4))
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters (log scale)")
    ax.set_ylabel("accuracy (mean ± std over folds)")
    ax.set_title(title or "accuracy vs trainable parameters")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)


def compare(
    runs: list[str], out: str | Path, *, names: list[str] | None = None, reference: str | None = None, **kw
) -> dict[str, Any]:
    """Library entry of the command: returns ``{"summary", "paired", "markdown"}`` and writes the files.

    ``kw`` goes to :func:`~densattn.analysis.stats.compare_runs` (``metrics``, ``correction``, ``confidence``).

    Example:
        Two heads on the same synthetic features and folds, compared fold by fold (``pool`` as the reference):

        >>> import tempfile, torch
        >>> from densattn.data.cache import FeatureSet
        >>> from densattn.train import TrainConfig, run_experiment
        >>> fs = FeatureSet(torch.randn(30, 3, 4), torch.arange(30) % 2, ["a", "b"], [str(i) for i in range(30)])
        >>> tmp = tempfile.TemporaryDirectory()
        >>> folder = Path(tmp.name)
        >>> for head in ("pool", "conv"):
        ...     _ = run_experiment(fs, head=head, out=folder / head, folds=3, plots=False,
        ...                        train_config=TrainConfig(epochs=1))
        >>> result = compare([folder / "pool", folder / "conv"], folder / "compare", reference="pool")
        >>> [r["method"] for r in result["summary"]], sorted({(r["method"], r["n"]) for r in result["paired"]})
        (['pool', 'conv'], [('conv', 3)])
        >>> sorted(p.name for p in (folder / "compare").iterdir())
        ['accuracy_vs_params.png', 'paired.csv', 'results.csv', 'results.json', 'results.md']
        >>> tmp.cleanup()
    """
    from densattn.analysis.stats import compare_runs

    loaded = load_runs(runs, names)
    if reference is None:
        reference = "daam" if "daam" in loaded else next(iter(loaded))
    summary = summary_rows(loaded)
    paired = compare_runs({k: v["metrics"] for k, v in loaded.items()}, reference, **kw) if len(loaded) > 1 else []
    first = next(iter(loaded.values()))["config"]
    ident = _identity(first)
    header = (
        f"Data `{ident['data']}` (max_samples {ident['max_samples']}), encoder "
        f"`{(first.get('encoder') or {}).get('name')}`, {ident['folds']} folds, seed {ident['seed']}.\n"
    )
    markdown = to_markdown(summary, paired, header)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "results.md", markdown)
    atomic_write_text(out / "results.csv", _csv(summary, list(summary[0])))
    atomic_write_text(out / "paired.csv", _csv(paired, PAIRED_COLUMNS))
    atomic_write_json(
        out / "results.json", {"runs": {k: v["run"] for k, v in loaded.items()}, "summary": summary, "paired": paired}
    )
    plot_accuracy_vs_params(summary, out / "accuracy_vs_params.png", title=f"{ident['data']}: accuracy vs params")
    return {"summary": summary, "paired": paired, "markdown": markdown}
