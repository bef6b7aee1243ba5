"""The main job in miniature: DAAM heads vs baselines on frozen encoders for text, vision and speech.

For each modality the demo encodes a real dataset with a bundled pretrained encoder (cached), trains every method
on the same cached features, folds and seeds, and writes ``results.json`` / ``results.md`` (the paper's table in
miniature, with the ablations and paired differences). Trainings run in parallel worker processes (one thread each).
"""

from __future__ import annotations

import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from densattn.io import atomic_write_json, atomic_write_text, read_json

MARKER = ".densattn-demo"


@dataclass(frozen=True)
class ModalitySpec:
    encoder: str
    data: str
    max_samples: int
    note: str
    encoder_options: dict[str, Any] = field(default_factory=dict)
    data_options: dict[str, Any] = field(default_factory=dict)


MODALITIES: dict[str, ModalitySpec] = {
    # 64 tokens (as the benchmark's text tasks): the end-to-end rows run MiniLM forward and backward on every step
    "text": ModalitySpec(
        "minilm",
        "fortunes",
        800,
        "Debian fortunes, 4 topics; MiniLM-L6 (7 layers x 384, first 64 tokens)",
        encoder_options={"max_length": 64},
    ),
    "vision": ModalitySpec(
        "efficientnet-lite0",
        "fashion-mnist",
        1000,
        "Fashion-MNIST, 10 classes; EfficientNet-Lite0 (16 blocks x 320, 112 px)",
    ),
    "speech": ModalitySpec(
        "whisper-tiny",
        "fillets-cs",
        400,
        "Fish Fillets NG Czech voices, which character speaks; Whisper tiny.en encoder (5 x 384)",
    ),
}

#: method key -> (head, head options)
METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    "daam": ("daam", {"preset": "paper"}),
    "gqdaam": ("gqdaam", {"preset": "paper"}),
    "mha": ("mha", {}),
    "mha_bn": ("mha_bn", {}),
    "linear": ("linear", {"layer": "best"}),
    "conv": ("conv", {}),
    "pool": ("pool", {}),
}


def _train_job(features, method: str, out: str, train_cfg: dict, folds: int, encoder_info: dict, extra: dict):
    import torch

    from densattn.train import TrainConfig, run_experiment

    torch.set_num_threads(1)
    head, options = METHODS[method]
    t0 = time.perf_counter()
    kwargs = dict(
        head=head,
        out=out,
        head_options=options,
        train_config=TrainConfig(**train_cfg),
        folds=folds,
        encoder_info=encoder_info,
        extra_config=extra,
    )
    metrics = _resume_or_restart(lambda resume: run_experiment(features, resume=resume, **kwargs), out)
    return method, metrics, time.perf_counter() - t0


def _resume_or_restart(run, out: str):
    """Reuse (or finish) a previous demo run with the same configuration; otherwise start it again."""
    try:
        return run(True)
    except ValueError as err:
        if "different configuration" not in str(err):
            raise
    shutil.rmtree(out)
    return run(False)


@dataclass(frozen=True)
class EndToEndSpec:
    """An encoder tuned end to end in the demo: the tuner (:mod:`densattn.adapters.tuners`), its options, and the
    training settings that differ from the heads' (the encoder runs forward and backward every step)."""

    tuner: str
    options: dict[str, Any]
    lr: float
    note: str


#: end-to-end rows (text by default): every one trains with :data:`END_TO_END_TRAIN` and its own learning rate
END_TO_END: dict[str, EndToEndSpec] = {
    "lora_r8": EndToEndSpec("lora", {"rank": 8, "alpha": 16.0}, 5e-4, "LoRA r=8, alpha 16 on query/value"),
    "ia3": EndToEndSpec("ia3", {}, 1e-2, "IA3 on key/value/FFN output"),
    "daam_peft": EndToEndSpec("daam_peft", {}, 1e-2, "DAAM gates on attention and FFN outputs (densattn.peft)"),
}
#: the same budget for every end-to-end row: 3 epochs (early stopping after 2 without improvement), batch 32
END_TO_END_TRAIN = {"epochs": 3, "batch_size": 32, "early_stopping": 2}


def _end_to_end_job(
    name: str, modality: str, out: str, train_cfg: dict, folds: int, seed: int, max_samples: int, cache_dir, extra
):
    """Fine-tune the modality's encoder end to end with tuner ``name`` on the same examples and folds as the heads."""
    import torch

    from densattn.data.cache import cached_features
    from densattn.pipeline import load_task
    from densattn.train import TrainConfig
    from densattn.train.end_to_end import run_end_to_end_experiment

    torch.set_num_threads(1)
    spec, e2e = MODALITIES[modality], END_TO_END[name]
    dataset, encoder, info = load_task(
        spec.data, spec.encoder, data_options=spec.data_options, encoder_options=spec.encoder_options,
        max_samples=max_samples, seed=seed,
    )  # fmt: skip
    features = cached_features(encoder, dataset, cache_dir=cache_dir, progress=False)
    items = [dataset.load(i) for i in range(len(dataset))]
    cache = {k: features.manifest.get(k) for k in ("dataset", "dataset_fingerprint", "dtype")}
    t0 = time.perf_counter()
    metrics = _resume_or_restart(
        lambda resume: run_end_to_end_experiment(
            encoder,
            items,
            features.labels,
            features.classes,
            out=out,
            method=e2e.tuner,
            tuner_options=e2e.options,
            train_config=TrainConfig(**{**train_cfg, **END_TO_END_TRAIN, "lr": e2e.lr}),
            folds=folds,
            pooled_features=features.features[:, -1],
            encoder_info=info,
            extra_config={**extra, "name": name, "feature_cache": cache},
            resume=resume,
        ),
        out,
    )
    return name, metrics, time.perf_counter() - t0


def run_demo(
    out: str | Path,
    *,
    modalities: list[str] | None = None,
    methods: list[str] | None = None,
    folds: int = 5,
    epochs: int = 25,
    seed: int = 0,
    cache_dir: str | Path | None = None,
    workers: int | None = None,
    sample_scale: float = 1.0,
    end_to_end_modalities: list[str] | None = None,
    end_to_end_methods: list[str] | None = None,
    explain: bool = True,
    fresh: bool = False,
    log=print,
) -> dict[str, Any]:
    """Run the demo into ``out`` and return the results dict (also written as ``results.json``).

    ``end_to_end_modalities`` (default ``["text"]``) get a row per ``end_to_end_methods`` (default every key of
    :data:`END_TO_END`: LoRA r=8, IA3 and DAAM gates inside the encoder, through peft), the encoder tuned end to end.
    A run folder left by an earlier demo with the same configuration and data is reused (unfinished folds are
    completed); ``fresh=True`` retrains everything.
    """
    from densattn.data.cache import cached_features
    from densattn.pipeline import load_task

    modalities = modalities or list(MODALITIES)
    methods = methods or list(METHODS)
    e2e_modalities = ["text"] if end_to_end_modalities is None else end_to_end_modalities
    e2e_methods = list(END_TO_END) if end_to_end_methods is None else end_to_end_methods
    for m in [*modalities, *e2e_modalities]:
        if m not in MODALITIES:
            raise ValueError(f"--modalities/--end-to-end: unknown modality {m!r}; choose from {list(MODALITIES)}")
    for m in methods:
        if m not in METHODS:
            raise ValueError(f"--methods: unknown method {m!r}; choose from {list(METHODS)}")
    for m in e2e_methods:
        if m not in END_TO_END:
            raise ValueError(f"--end-to-end-methods: unknown method {m!r}; choose from {list(END_TO_END)}")
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not (out / MARKER).exists():
        raise ValueError(f"{out} is not empty and was not written by the demo; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / MARKER, "written by `densattn demo`; runs with the same configuration are reused\n")
    train_cfg = {"epochs": epochs, "early_stopping": 6, "seed": seed}
    workers = workers or max(1, min(2, os.cpu_count() or 1))
    results: dict[str, Any] = {}
    timing: dict[str, Any] = {"extract_seconds": {}, "train_seconds": {}}
    start = time.perf_counter()
    jobs = []
    feature_sets = {}
    for modality in modalities:
        spec = MODALITIES[modality]
        t0 = time.perf_counter()
        n = max(20, int(spec.max_samples * sample_scale))
        dataset, encoder, info = load_task(
            spec.data, spec.encoder, data_options=spec.data_options, encoder_options=spec.encoder_options,
            max_samples=n, seed=seed,
        )  # fmt: skip
        features = cached_features(encoder, dataset, cache_dir=cache_dir, progress=_tty())
        del encoder
        timing["extract_seconds"][modality] = time.perf_counter() - t0
        log(
            f"[{modality}] {len(features)} examples x {features.num_layers} layers x {features.dim} "
            f"({spec.encoder} on {spec.data}) in {timing['extract_seconds'][modality]:.1f} s"
        )
        feature_sets[modality] = (features, info)
        extra = {"data": spec.data, "max_samples": n, "modality": modality}
        names = list(methods) + (list(e2e_methods) if modality in e2e_modalities else [])
        for method in names:
            run_dir = out / modality / method
            if fresh and run_dir.exists():
                shutil.rmtree(run_dir)
            jobs.append((modality, method, str(run_dir), extra))
    t_train = time.perf_counter()
    with ProcessPoolExecutor(max_workers=workers) as pool:
        futures = {}
        for mod, method, run_dir, extra in sorted(jobs, key=lambda job: job[1] not in END_TO_END):  # longest first
            if method in END_TO_END:
                future = pool.submit(
                    _end_to_end_job, method, mod, run_dir, train_cfg, folds, seed, extra["max_samples"], cache_dir,
                    extra,
                )  # fmt: skip
            else:
                future = pool.submit(
                    _train_job, feature_sets[mod][0], method, run_dir, train_cfg, folds, feature_sets[mod][1], extra
                )
            futures[future] = mod
        for future in as_completed(futures):
            modality = futures[future]
            method, metrics, seconds = future.result()
            results.setdefault(modality, {})[method] = _summary(metrics, seconds)
            timing["train_seconds"][f"{modality}/{method}"] = seconds
            log(
                f"[{modality}] {method:7s} accuracy {metrics['accuracy_mean']:.3f} ± {metrics['accuracy_std']:.3f} "
                f"macro-F1 {metrics['macro_f1_mean']:.3f} params {metrics['trainable_params']:,} ({seconds:.0f} s)"
            )
    order = [*METHODS, *END_TO_END]
    results = {m: dict(sorted(r.items(), key=lambda kv: order.index(kv[0]))) for m, r in results.items()}
    results = {m: results[m] for m in modalities if m in results}
    timing["train_seconds_total"] = time.perf_counter() - t_train
    paired = {modality: _paired_rows(out / modality, runs) for modality, runs in results.items()}
    importance: dict[str, Any] = {}
    if explain:
        from densattn.analysis.importance import explain_run

        for modality, runs in results.items():
            if "daam" in runs:
                summary = explain_run(out / modality / "daam", features=feature_sets[modality][0])
                importance[modality] = {
                    "layer_ranking": summary["layer_ranking"],
                    "layer_share": summary["layer_share"],
                }
                log(f"[{modality}] Importance Factor, layers highest first: {summary['layer_ranking']}")
    timing["total_seconds"] = time.perf_counter() - start
    settings = {
        "folds": folds,
        "epochs": epochs,
        "seed": seed,
        "workers": workers,
        "end_to_end": {
            "modalities": e2e_modalities,
            **END_TO_END_TRAIN,
            "methods": {
                m: {
                    "tuner": END_TO_END[m].tuner,
                    **END_TO_END[m].options,
                    "lr": END_TO_END[m].lr,
                    "note": END_TO_END[m].note,
                }
                for m in e2e_methods
            },
        },
        "modalities": {
            m: MODALITIES[m].__dict__ | {"max_samples": max(20, int(MODALITIES[m].max_samples * sample_scale))}
            for m in modalities
        },
    }
    doc = {"results": results, "paired": paired, "importance": importance, "timing": timing, "settings": settings}
    payload = {**results, "_paired_vs_daam": paired, "_importance": importance, "_meta": timing | settings}
    atomic_write_json(out / "results.json", payload)
    atomic_write_text(out / "results.md", render_markdown(results, doc))
    log(f"demo finished in {timing['total_seconds']:.0f} s -> {out / 'results.md'}")
    return doc


def _summary(metrics: dict[str, Any], seconds: float) -> dict[str, Any]:
    keys = (
        "accuracy_mean",
        "accuracy_std",
        "macro_f1_mean",
        "macro_f1_std",
        "trainable_params",
        "trainable_params_without_classifier",
        "seconds_per_epoch",
    )
    out = {k: metrics[k] for k in keys}
    out["frozen_params"] = metrics.get("frozen_params")
    out["fold_accuracy"] = [f["accuracy"] for f in metrics["folds"]]
    out["fold_macro_f1"] = [f["macro_f1"] for f in metrics["folds"]]
    out["train_seconds"] = seconds
    return out


def render_markdown(results: dict[str, Any], doc: dict[str, Any]) -> str:
    """The demo's tables: per modality, methods by accuracy, paired differences vs daam, the IF layer ranking."""
    s = doc["settings"]
    lines = [
        "# densattn demo results",
        "",
        f"{s['folds']}-fold stratified CV (validation carved from each training fold), seed {s['seed']}, at most "
        f"{s['epochs']} epochs with early stopping (encoders tuned end to end: {s['end_to_end']['epochs']}; "
        + ", ".join(f"{m} lr {r['lr']:g}" for m, r in s["end_to_end"]["methods"].items())
        + "). "
        f"Total {doc['timing']['total_seconds']:.0f} s.",
    ]
    for modality, methods in results.items():
        spec = s["modalities"][modality]
        lines += [
            "",
            f"## {modality}: {spec['note']} ({spec['max_samples']} examples)",
            "",
            "| method | accuracy | macro-F1 | trainable params | without classifier | s / epoch |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for name, r in sorted(methods.items(), key=lambda kv: -kv[1]["accuracy_mean"]):
            lines.append(
                f"| {name} | {r['accuracy_mean']:.3f} ± {r['accuracy_std']:.3f} | "
                f"{r['macro_f1_mean']:.3f} ± {r['macro_f1_std']:.3f} | {r['trainable_params']:,} | "
                f"{r['trainable_params_without_classifier']:,} | {r['seconds_per_epoch']:.3f} |"
            )
        pairs = [p for p in doc["paired"].get(modality, []) if p["metric"] == "accuracy"]
        if pairs:
            lines += [
                "",
                "Paired accuracy differences over folds, daam − method (95 % CI of the corrected resampled t-test; "
                "**bold**: the interval excludes 0):",
                "",
                "| method | daam − method | 95 % CI | p |",
                "|---|---:|---|---:|",
            ]
            for p in pairs:
                lo, hi = p["ci_low"], p["ci_high"]
                mark = "**" if lo > 0 or hi < 0 else ""
                lines.append(
                    f"| {p['method']} | {mark}{p['mean_difference']:+.3f}{mark} | [{lo:+.3f}, {hi:+.3f}] "
                    f"| {p['p_value']:.3f} |"
                )
        if modality in doc["importance"]:
            ranking = " ".join(f"L{i}" for i in doc["importance"][modality]["layer_ranking"])
            lines += [
                "",
                f"Importance Factor of the daam head (fold 0, validation split), layers highest first: {ranking} "
                f"(`{modality}/daam/explain/if_heatmap.png`).",
            ]
    return "\n".join(lines) + "\n"


def _paired_rows(folder: Path, methods: dict[str, Any]) -> list[dict[str, Any]]:
    """daam vs every other method of one modality, paired over folds (:func:`densattn.analysis.stats.compare_runs`)."""
    from densattn.analysis.stats import compare_runs

    if "daam" not in methods:
        return []
    runs = {m: read_json(folder / m / "metrics.json") for m in methods}
    return compare_runs(runs, reference="daam")


def _tty() -> bool:
    import sys

    return sys.stderr.isatty()
