"""Concat vs BAN vs MAN fusion through ``densattn train --fusion`` on real images, with single-view references.

Data: 1,000 real Fashion-MNIST images (Debian ``dataset-fashion-mnist``, stratified seeded subsample, 10 classes).
Views: the bundled ImageNet EfficientNet-Lite0 run on the same images at ``image_size=112`` and at
``image_size=224`` (16 pooled block outputs x 320 features each). These are two views (resolutions) of one
encoder on one modality, not two modalities: the check is whether a fusion head gains anything from a second
view of the same examples over a single-view head, with the same folds, validation carving, optimiser, epochs and
early stopping for every row (``densattn train`` defaults: AdamW lr 1e-3, 40 epochs, patience 8, 15% of each
training fold for model selection; stratified 5-fold, seed 0).

Controls: the 112 px view fused with itself (no new information, same head) tells how much of a fusion gain is
the head rather than the second view.

Run: ``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/fusion_real.py`` (encodes once into ``--cache-dir``).
Writes ``benchmarks/results/fusion_real.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from densattn.cli import main

RESULTS = Path(__file__).resolve().parent / "results"

SINGLE = [
    ("linear 112 px", ["--head", "linear"], 112),
    ("linear 224 px", ["--head", "linear"], 224),
    ("daam 112 px", ["--head", "daam"], 112),
    ("daam 224 px", ["--head", "daam"], 224),
]
FUSED = [
    ("concat 112+224", "concat", 224),
    ("ban 112+224", "ban", 224),
    ("man 112+224", "man", 224),
    ("concat 112+112 (control)", "concat", 112),
    ("ban 112+112 (control)", "ban", 112),
    ("man 112+112 (control)", "man", 112),
]

PAIRS = [
    ("concat 112+224", "concat 112+112 (control)"),
    ("ban 112+224", "ban 112+112 (control)"),
    ("man 112+224", "man 112+112 (control)"),
    ("concat 112+224", "linear 112 px"),
    ("ban 112+224", "daam 112 px"),
    ("man 112+224", "daam 112 px"),
    ("daam 112 px", "linear 112 px"),
]


def run(name: str, argv: list[str], out: Path) -> dict:
    t0 = time.perf_counter()
    code = main(argv + ["--out", str(out)])
    if code != 0:
        raise SystemExit(f"{name}: densattn train exited with {code}")
    metrics = json.loads((out / "metrics.json").read_text())
    row = {
        "name": name,
        "accuracy_mean": metrics["accuracy_mean"],
        "accuracy_std": metrics["accuracy_std"],
        "macro_f1_mean": metrics["macro_f1_mean"],
        "fold_accuracy": [f["accuracy"] for f in metrics["folds"]],
        "trainable_params": metrics["trainable_params"],
        "seconds_per_epoch": metrics["seconds_per_epoch"],
        "mean_epochs_run": sum(f["epochs_run"] for f in metrics["folds"]) / len(metrics["folds"]),
        "wall_seconds": time.perf_counter() - t0,
        "argv": argv,
    }
    print(f"{name}: {row['accuracy_mean']:.4f} ± {row['accuracy_std']:.4f} ({row['wall_seconds']:.0f} s)", flush=True)
    return row


def markdown(result: dict) -> str:
    lines = [
        "# Fusion of two views of real images (Fashion-MNIST, EfficientNet-Lite0 at 112 px and 224 px)",
        "",
        f"{result['setup']}",
        "",
        f"| run | test accuracy (mean ± std, {result['folds']} folds) | macro-F1 | trainable params | s / epoch |",
        "|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['name']} | {r['accuracy_mean']:.4f} ± {r['accuracy_std']:.4f} | {r['macro_f1_mean']:.4f} | "
            f"{r['trainable_params']:,} | {r['seconds_per_epoch']:.2f} |"
        )
    lines += [
        "",
        "Paired per-fold differences in test accuracy (same folds; mean ± std over folds of row minus reference):",
        "",
        "| row | reference | difference |",
        "|---|---|---|",
    ]
    by_name = {r["name"]: r for r in result["rows"]}
    for row, reference in PAIRS:
        if row in by_name and reference in by_name:
            d = [a - b for a, b in zip(by_name[row]["fold_accuracy"], by_name[reference]["fold_accuracy"])]
            mean = sum(d) / len(d)
            std = (sum((x - mean) ** 2 for x in d) / max(len(d) - 1, 1)) ** 0.5
            lines.append(f"| {row} | {reference} | {mean:+.4f} ± {std:.4f} |")
    return "\n".join(lines) + "\n"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--max-samples", type=int, default=1000)
    p.add_argument("--folds", default="5")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache-dir", default="/tmp/densattn-cache")
    p.add_argument("--work-dir", default="/tmp/densattn-fusion-real", help="run directories go here")
    p.add_argument("--only", default=None, help="comma-separated run names to do (default: all)")
    p.add_argument("--render-only", action="store_true", help="rewrite the markdown from the saved JSON")
    return p.parse_args()


def main_benchmark() -> None:
    args = parse_args()
    if args.render_only:
        (RESULTS / "fusion_real.md").write_text(markdown(json.loads((RESULTS / "fusion_real.json").read_text())))
        return
    torch.set_num_threads(1)
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    common = ["--data", "fashion-mnist", "--max-samples", str(args.max_samples), "--seed", str(args.seed)]
    common += ["--folds", args.folds, "--cache-dir", args.cache_dir, "--encoder", "efficientnet-lite0"]
    rows = []
    jobs = [(n, a + ["--encoder-option", f"image_size={s}"]) for n, a, s in SINGLE]
    jobs += [
        (n, ["--encoder-option", "image_size=112", "--fusion", m, "--fusion-encoder", "efficientnet-lite0"]
         + ["--fusion-encoder-option", f"image_size={s}"])
        for n, m, s in FUSED
    ]  # fmt: skip
    wanted = None if args.only is None else set(args.only.split(","))
    for name, extra in jobs:
        if wanted is not None and name not in wanted:
            continue
        slug = name.replace(" ", "_").replace("+", "-").replace("(", "").replace(")", "")
        out = work / slug
        if (out / "metrics.json").exists():
            out = work / f"{slug}-{int(time.time())}"
        rows.append(run(name, ["train", *common, *extra], out))
    setup = (
        f"{args.max_samples} real Fashion-MNIST images (stratified subsample, seed {args.seed}); the same images "
        "encoded by the bundled EfficientNet-Lite0 at 112 px and at 224 px: two views (resolutions) of one encoder "
        "on one modality, not two modalities. Every row: `densattn train` defaults (AdamW lr 1e-3, batch 64, up to "
        "40 epochs, early stopping 8, best epoch chosen on 15% of each training fold), stratified "
        f"{args.folds}-fold, seed {args.seed}, same folds for every row. Fusion heads: hidden 64, learned layer "
        "position embeddings, BAN 2 glimpses, MAN 1 head with random features. Controls fuse the 112 px view "
        f"with itself. torch {torch.__version__}, {torch.get_num_threads()} thread(s), {platform.machine()}."
    )
    result = {
        "setup": setup,
        "folds": args.folds,
        "threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "rows": rows,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "fusion_real.json").write_text(json.dumps(result, indent=2))
    (RESULTS / "fusion_real.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main_benchmark()
