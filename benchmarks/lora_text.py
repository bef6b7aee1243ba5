"""Text comparison on MiniLM + Debian fortunes: DAAM / linear / MHA heads (frozen encoder, cached features) vs
LoRA r=8 and LoRA+ r=8 (end-to-end through HF peft), same examples, folds and seed for every row.

Each row is one ``densattn train`` run (skipped when its run directory already holds metrics.json); the table
collects accuracy, macro-F1, trainable parameters (with and without the classifier), frozen parameters and wall
time per epoch (head epochs run on cached features; LoRA epochs run the encoder forward and backward on
every batch). Runs use one thread (``OMP_NUM_THREADS=1``) on a shared CPU: timings are noisy; their ratios are
what matters.

Usage:
    OMP_NUM_THREADS=1 python benchmarks/lora_text.py [--runs /tmp/lora_text_runs] [--max-samples 600] [--folds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results"


def rows(args) -> list[tuple[str, list[str]]]:
    common = ["--encoder", "minilm", "--data", "fortunes", "--max-samples", str(args.max_samples)]
    common += ["--folds", str(args.folds), "--seed", str(args.seed), "--cache-dir", args.cache_dir]
    lora = ["--epochs", str(args.lora_epochs), "--patience", "3", "--batch-size", "16", "--lr", str(args.lora_lr)]
    lora += ["--rank", "8", "--alpha", "16"]
    lora_low = [a if a != str(args.lora_lr) else "1e-4" for a in lora]
    return [
        ("daam", common + ["--head", "daam"]),
        ("linear", common + ["--head", "linear"]),
        ("mha", common + ["--head", "mha"]),
        ("lora_r8", common + ["--method", "lora"] + lora),
        ("loraplus_r8", common + ["--method", "loraplus", "--loraplus-ratio", "16"] + lora),
        # LoRA+ with a 5x lower base rate (B at 1.6e-3), since at 5e-4 its best epoch came early (B at 8e-3)
        ("loraplus_r8_lr1e-4", common + ["--method", "loraplus", "--loraplus-ratio", "16"] + lora_low),
    ]


def encode_time(args) -> float:
    """Seconds to encode every example once with the frozen encoder (what a head run pays before its epochs)."""
    import time

    import torch

    from densattn.data import load_dataset
    from densattn.encoders import get_encoder

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    dataset = load_dataset("fortunes", max_samples=args.max_samples, seed=args.seed)
    encoder = get_encoder("minilm")
    items = [dataset.load(i) for i in range(len(dataset))]
    start = time.perf_counter()
    encoder.encode_all(items, batch_size=16)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default="/tmp/lora_text_runs")
    parser.add_argument("--cache-dir", default="/tmp/densattn-cache")
    parser.add_argument("--max-samples", type=int, default=600)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lora-epochs", type=int, default=5)
    parser.add_argument("--lora-lr", type=float, default=5e-4)
    parser.add_argument("--only", default=None, help="comma-separated row keys to run")
    args = parser.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    table = []
    for key, argv in rows(args):
        run = Path(args.runs) / key
        if (args.only is None or key in args.only.split(",")) and not (run / "metrics.json").exists():
            cmd = [sys.executable, "-m", "densattn.cli", "train", *argv, "--out", str(run)]
            print(" ".join(cmd), flush=True)
            subprocess.run(cmd, check=True, env=env)
        if not (run / "metrics.json").exists():
            continue
        m = json.loads((run / "metrics.json").read_text())
        if "frozen_params" not in m:  # head runs written before the accounting fields existed
            from densattn.encoders import get_encoder

            m["frozen_params"] = sum(p.numel() for p in get_encoder("minilm").raw_model().parameters())
        table.append(
            {
                "method": key,
                "accuracy_mean": m["accuracy_mean"],
                "accuracy_std": m["accuracy_std"],
                "macro_f1_mean": m["macro_f1_mean"],
                "macro_f1_std": m["macro_f1_std"],
                "trainable_params": m["trainable_params"],
                "trainable_params_without_classifier": m["trainable_params_without_classifier"],
                "frozen_params": m["frozen_params"],
                "seconds_per_epoch": m["seconds_per_epoch"],
                "seconds_per_epoch_min": min(f["seconds_per_epoch"] for f in m["folds"]),
                "train_seconds_median": float(np.median([f["train_seconds"] for f in m["folds"]])),
                "epochs_run_mean": sum(f["epochs_run"] for f in m["folds"]) / len(m["folds"]),
                "num_folds": m["num_folds"],
                "command": "densattn train " + " ".join(argv),
            }
        )
    encode_seconds = encode_time(args)
    meta = {
        "encoder": "minilm (all-MiniLM-L6-v2, max_length 128)",
        "data": f"fortunes, {args.max_samples} examples (stratified, seed {args.seed}), {args.folds}-fold",
        "threads": env["OMP_NUM_THREADS"],
        "encode_seconds_all_examples": encode_seconds,
        "rows": table,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "lora_text.json").write_text(json.dumps(meta, indent=2) + "\n")
    lines = [
        f"Text: {meta['encoder']}, {meta['data']}, {meta['threads']} thread(s), CPU.",
        "",
        "| method | accuracy | macro-F1 | trainable params | without classifier | frozen params "
        "| s / epoch (mean, min over folds) | epochs run | train s / fold (median) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in table:
        lines.append(
            f"| {r['method']} | {r['accuracy_mean']:.3f} ± {r['accuracy_std']:.3f} | "
            f"{r['macro_f1_mean']:.3f} ± {r['macro_f1_std']:.3f} | {r['trainable_params']:,} | "
            f"{r['trainable_params_without_classifier']:,} | {r['frozen_params']:,} | "
            f"{r['seconds_per_epoch']:.2f}, {r['seconds_per_epoch_min']:.2f} | {r['epochs_run_mean']:.1f} | "
            f"{r['train_seconds_median']:.1f} |"
        )
    lines += [
        "",
        f"Head epochs run on cached features; the one-off frozen encoding of all {args.max_samples} texts took "
        f"{encode_seconds:.1f} s here (forward only). A LoRA epoch runs the encoder forward and backward on every "
        "training batch and forward on the validation split. s / epoch depends on the machine's load (shared CPU): "
        "the min over folds is the least-loaded measurement. LoRA: r=8, alpha=16 (scaling alpha/r = 2) on query and "
        f"value of all 6 layers, lr {args.lora_lr:g} (loraplus_r8_lr1e-4: 1e-4; LoRA+: B at 16x), batch 16, at most "
        f"{args.lora_epochs} epochs, "
        "patience 3; heads: the CLI defaults (lr 1e-3, batch 64, up to 40 epochs, patience 8).",
    ]
    (RESULTS / "lora_text.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
