"""The main job in miniature: DAAM heads vs baselines on frozen encoders for text, vision and speech.

For each modality the demo encodes a real dataset with a bundled pretrained encoder (cached), trains every method
on the same cached features, folds and seeds, and writes ``results.json`` / ``results.md`` (the paper's table in
miniature, with the ablations and paired differences). Trainings run in parallel worker processes (one thread each).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from densattn.data.cache import atomic_write_text

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
    "text": ModalitySpec("minilm", "fortunes", 800, "Debian fortunes, 4 topics; MiniLM-L6 (7 layers x 384)"),
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
    metrics = run_experiment(
        features,
        head=head,
        out=out,
        head_options=options,
        train_config=TrainConfig(**train_cfg),
        folds=folds,
        encoder_info=encoder_info,
        extra_config={**extra, "method": method},
    )
    return method, metrics, time.perf_counter() - t0


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
    log=print,
) -> dict[str, Any]:
    """Run the demo into ``out`` and return the results dict (also written as ``results.json``)."""
    from densattn.data import load_dataset
    from densattn.data.cache import cached_features
    from densattn.encoders import get_encoder

    modalities = modalities or list(MODALITIES)
    methods = methods or list(METHODS)
    for m in modalities:
        if m not in MODALITIES:
            raise ValueError(f"--modalities: unknown modality {m!r}; choose from {list(MODALITIES)}")
    for m in methods:
        if m not in METHODS:
            raise ValueError(f"--methods: unknown method {m!r}; choose from {list(METHODS)}")
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not (out / MARKER).exists():
        raise ValueError(f"{out} is not empty and was not written by the demo; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("written by `densattn demo`; its run folders are replaced on the next demo\n")
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
        dataset = load_dataset(spec.data, max_samples=n, seed=seed, **spec.data_options)
        encoder = get_encoder(spec.encoder, **spec.encoder_options)
        features = cached_features(encoder, dataset, cache_dir=cache_dir, progress=_tty())
        info = {"name": spec.encoder, "options": spec.encoder_options, **encoder.identity()}
        del encoder
        timing["extract_seconds"][modality] = time.perf_counter() - t0
        log(
            f"[{modality}] {len(features)} examples x {features.num_layers} layers x {features.dim} "
            f"({spec.encoder} on {spec.data}) in {timing['extract_seconds'][modality]:.1f} s"
        )
        feature_sets[modality] = (features, info)
        extra = {"data": spec.data, "max_samples": n, "modality": modality}
        for method in methods:
            run_dir = out / modality / method
            if run_dir.exists():
                shutil.rmtree(run_dir)
            jobs.append((modality, method, str(run_dir), extra))
    t_train = time.perf_counter()
    with ProcessPoolExecutor(max_workers=workers) as pool:
        futures = {
            pool.submit(
                _train_job, feature_sets[mod][0], method, run_dir, train_cfg, folds, feature_sets[mod][1], extra
            ): mod
            for mod, method, run_dir, extra in jobs
        }
        for future, modality in futures.items():
            method, metrics, seconds = future.result()
            results.setdefault(modality, {})[method] = _summary(metrics, seconds)
            log(
                f"[{modality}] {method:7s} accuracy {metrics['accuracy_mean']:.3f} ± {metrics['accuracy_std']:.3f} "
                f"macro-F1 {metrics['macro_f1_mean']:.3f} params {metrics['trainable_params']:,} ({seconds:.0f} s)"
            )
    timing["train_seconds_total"] = time.perf_counter() - t_train
    timing["total_seconds"] = time.perf_counter() - start
    doc = {
        "results": results,
        "timing": timing,
        "settings": {
            "folds": folds,
            "epochs": epochs,
            "seed": seed,
            "workers": workers,
            "modalities": {
                m: MODALITIES[m].__dict__ | {"max_samples": int(MODALITIES[m].max_samples * sample_scale)}
                for m in modalities
            },
        },
    }
    atomic_write_text(
        out / "results.json", json.dumps({**results, "_meta": doc["timing"] | doc["settings"]}, indent=2, default=str)
    )
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
    out["fold_accuracy"] = [f["accuracy"] for f in metrics["folds"]]
    out["fold_macro_f1"] = [f["macro_f1"] for f in metrics["folds"]]
    out["train_seconds"] = seconds
    return out


def render_markdown(results: dict[str, Any], doc: dict[str, Any]) -> str:
    """The demo's table: one section per modality, methods sorted by accuracy."""
    lines = ["# densattn demo results", ""]
    s = doc["settings"]
    lines.append(
        f"{s['folds']}-fold stratified CV (validation carved from each training fold), seed {s['seed']}, "
        f"at most {s['epochs']} epochs with early stopping. Total {doc['timing']['total_seconds']:.0f} s."
    )
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
    return "\n".join(lines) + "\n"


def _tty() -> bool:
    import sys

    return sys.stderr.isatty()
