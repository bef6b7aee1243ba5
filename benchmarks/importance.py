"""Importance Factor on real data: train a DAAM head, explain it, and ablate top-K vs bottom-K IF layers.

Usage (one thread; runs are reused when their directory already holds a finished run)::

    OMP_NUM_THREADS=1 python benchmarks/importance.py --modality text --top-k 3
    OMP_NUM_THREADS=1 python benchmarks/importance.py --modality vision --top-k 4

Writes benchmarks/results/importance_<modality>.json / .md and importance_<modality>_heatmap.png /
importance_<modality>_share.png.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch

from densattn.analysis.ablation import ablate_run, ablation_table
from densattn.analysis.importance import explain_run, features_for_run
from densattn.cli import main as cli_main
from densattn.io import atomic_write_text

SETUPS = {
    "text": {"encoder": "minilm", "data": "fortunes", "max_samples": 600},
    "vision": {"encoder": "efficientnet-lite0", "data": "fashion-mnist", "max_samples": 1000},
}
RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modality", choices=sorted(SETUPS), required=True)
    parser.add_argument("--top-k", type=int, required=True)
    parser.add_argument("--run-root", default="/tmp/densattn-if")
    parser.add_argument("--cache-dir", default="/tmp/densattn-cache")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    setup = SETUPS[args.modality]
    run = Path(args.run_root) / args.modality
    if not (run / "metrics.json").exists():
        argv = ["train", "--encoder", setup["encoder"], "--data", setup["data"], "--head", "daam"]
        argv += ["--folds", str(args.folds), "--max-samples", str(setup["max_samples"]), "--seed", str(args.seed)]
        argv += ["--cache-dir", args.cache_dir, "--out", str(run)] + (["--resume"] if run.exists() else [])
        if cli_main(argv) != 0:
            raise SystemExit("training failed")
    features = features_for_run(run, cache_dir=args.cache_dir)
    explained = {
        split: explain_run(run, split=split, features=features, out=run / f"explain_{split}")
        for split in ("val", "test")
    }
    ablation = ablate_run(run, top_k=args.top_k, features=features)
    names = explained["val"]["layer_names"]
    result = {
        "modality": args.modality,
        **setup,
        "folds": args.folds,
        "seed": args.seed,
        "threads": torch.get_num_threads(),
        "importance": {
            split: {
                k: e[k]
                for k in (
                    "num_examples",
                    "layer_ranking",
                    "layer_share",
                    "layer_mean_if",
                    "mean_weight_min",
                    "mean_weight_max",
                    "masked_features",
                    "head_sizes",
                )
            }
            for split, e in explained.items()
        },
        "ablation": ablation,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = RESULTS / f"importance_{args.modality}"
    atomic_write_text(stem.with_suffix(".json"), json.dumps(result, indent=2))
    shutil.copyfile(run / "explain_val" / "if_heatmap.png", RESULTS / f"importance_{args.modality}_heatmap.png")
    shutil.copyfile(run / "explain_val" / "layer_share.png", RESULTS / f"importance_{args.modality}_share.png")
    lines = [
        f"# Importance Factor, {args.modality}: {setup['encoder']} on {setup['data']} "
        f"({setup['max_samples']} examples, {args.folds} folds, seed {args.seed}, DAAM head `paper` preset)",
        "",
        "Layer shares of the mean DAAM weight (fold 0's adapter; uniform share = "
        f"{1 / len(names):.4f}); rank 1 = highest IF:",
        "",
        "| layer | share (val) | mean IF (val) | rank (val) | share (test) | rank (test) |",
        "|---|---|---|---|---|---|",
    ]
    rank = {s: {layer: r + 1 for r, layer in enumerate(e["layer_ranking"])} for s, e in explained.items()}
    for i, name in enumerate(names):
        v, t = explained["val"], explained["test"]
        lines.append(
            f"| {name} | {v['layer_share'][i]:.4f} | {v['layer_mean_if'][i]:.3f} | {rank['val'][i]} | "
            f"{t['layer_share'][i]:.4f} | {rank['test'][i]} |"
        )
    lines += ["", ablation_table(ablation)]
    atomic_write_text(stem.with_suffix(".md"), "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
