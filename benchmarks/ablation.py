"""Does DAAM help? daam vs conv (same head, no attention) vs pool vs linear vs mha, paired over folds.

Trains nothing itself: run the five heads first on the same data, folds and seed (OMP_NUM_THREADS=1), e.g.::

    for h in daam conv pool linear mha; do
      densattn train --encoder minilm --data fortunes --max-samples 600 --folds 5 --seed 0 --head $h \
        --cache-dir /tmp/densattn-cache --out runs/text/$h
    done
    # vision: efficientnet-lite0 + fashion-mnist 1000; speech: whisper-tiny + fillets-cs 400
    densattn robustness runs/speech/{daam,conv,pool,linear,mha} --shift gain=-20,10 --shift noise=20,10,0 \
        --shift speed=0.9,1.1 --cache-dir /tmp/densattn-cache --out rob/speech
    densattn robustness runs/vision/{daam,conv,pool,linear,mha} --shift brightness=0.4,0.7,1.5 \
        --shift contrast=0.3,0.6,1.5 --shift blur=0.5,1,2 --shift noise=10,25,50 --cache-dir /tmp/densattn-cache \
        --out rob/vision

then ``python benchmarks/ablation.py --runs runs --robustness rob`` writes
``benchmarks/results/ablation_{text,vision,speech}.{md,json}`` (the compare table, paired differences, and what the
DAAM head learned: |offset − init| and spread − init over the five folds' adapters) and copies
``robustness_{speech,vision}.{md,json,png}``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np

from densattn.adapters import DensityAdapterModel
from densattn.analysis.compare import compare
from densattn.analysis.daam_report import daam_parameter_report

METHODS = ("daam", "conv", "pool", "linear", "mha")
RESULTS = Path(__file__).parent / "results"


def learned_parameters(run: Path) -> dict:
    folds = sorted((run / "folds").iterdir(), key=lambda p: int(p.name))
    reports = [daam_parameter_report(DensityAdapterModel.from_pretrained(f / "adapter").head) for f in folds]
    keys = ("mean_abs_offset_shift", "max_abs_offset_shift", "mean_abs_spread_shift", "max_abs_spread_shift")
    spreads = [h["spread"] for r in reports for m in r["modules"] for h in m["heads"]]
    return {
        **{k: float(np.mean([r["summary"][k] for r in reports])) for k in keys},
        "max_over_folds_abs_offset_shift": float(max(r["summary"]["max_abs_offset_shift"] for r in reports)),
        "max_over_folds_abs_spread_shift": float(max(r["summary"]["max_abs_spread_shift"] for r in reports)),
        "spread_min": float(min(s["min"] for s in spreads)),
        "spread_max": float(max(s["max"] for s in spreads)),
        "per_fold": reports,
    }


def replicate(root: Path) -> None:
    """daam vs conv on a second seed: does the first seed's verdict hold?"""
    lines = [
        "daam − conv on a second seed (its own stratified subsample and folds), Nadeau–Bengio corrected 95% CI.",
        "",
        "| modality | seed | metric | daam | conv | daam − conv | 95% CI | p |",
        "|---|---|---|---|---|---|---|---|",
    ]
    rows = []
    for modality in ("text", "vision", "speech"):
        runs = [root / modality / m for m in ("daam", "conv")]
        if not all((r / "metrics.json").exists() for r in runs):
            continue
        with tempfile.TemporaryDirectory() as tmp:
            result = compare([str(r) for r in runs], tmp)
        seed = json.loads((runs[0] / "config.json").read_text())["train"]["seed"]
        for r in result["paired"]:
            star = " ✱" if r["significant"] else ""
            lines.append(
                f"| {modality} | {seed} | {r['metric']} | {r['reference_mean']:.4f} | {r['method_mean']:.4f} | "
                f"{r['mean_difference']:+.4f}{star} | [{r['ci_low']:+.4f}, {r['ci_high']:+.4f}] | {r['p_value']:.3f} |"
            )
            rows.append({"modality": modality, "seed": seed, **r})
    (RESULTS / "ablation_replicate.md").write_text("\n".join(lines) + "\n")
    (RESULTS / "ablation_replicate.json").write_text(json.dumps(rows, indent=1))
    print("\n".join(lines))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=Path, required=True, help="folder with <modality>/<method> run directories")
    p.add_argument("--robustness", type=Path, default=None, help="folder with <modality>/robustness.* outputs")
    p.add_argument(
        "--replicate",
        type=Path,
        default=None,
        help="folder with <modality>/{daam,conv} runs of another seed (other subsample and folds): writes "
        "ablation_replicate.{md,json}",
    )
    args = p.parse_args()
    RESULTS.mkdir(exist_ok=True)
    for modality in ("text", "vision", "speech"):
        root = args.runs / modality
        runs = [root / m for m in METHODS if (root / m / "metrics.json").exists()]
        if not runs:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            result = compare([str(r) for r in runs], tmp)
        learned = learned_parameters(root / "daam")
        lo, hi = learned["max_over_folds_abs_offset_shift"], learned["max_over_folds_abs_spread_shift"]
        md = result["markdown"] + (
            "\nWhat DAAM learned (paper preset, init offset 0 and spread 2; mean over the 5 folds' adapters): "
            f"mean |offset − init| {learned['mean_abs_offset_shift']:.4f} (max {lo:.4f}), "
            f"mean |spread − init| {learned['mean_abs_spread_shift']:.4f} (max {hi:.4f}); "
            f"learned spreads lie in [{learned['spread_min']:.3f}, {learned['spread_max']:.3f}].\n"
        )
        payload = {"summary": result["summary"], "paired": result["paired"], "daam_learned_parameters": learned}
        (RESULTS / f"ablation_{modality}.md").write_text(md)
        (RESULTS / f"ablation_{modality}.json").write_text(json.dumps(payload, indent=1))
        print(md)
    if args.replicate:
        replicate(args.replicate)
    if args.robustness:
        for modality in ("speech", "vision", "text"):
            src = args.robustness / modality
            for ext in ("md", "json", "png"):
                if (src / f"robustness.{ext}").exists():
                    shutil.copyfile(src / f"robustness.{ext}", RESULTS / f"robustness_{modality}.{ext}")


if __name__ == "__main__":
    main()
