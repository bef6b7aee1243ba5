"""Which layer explanation can be trusted? Deletion-curve faithfulness of IF, occlusion, gradient × input and
integrated gradients on the demo's runs (text, vision, speech; every head kind), plus the synthetic sanity check.

Trains nothing for the main table: run the demo first (reused when already there), then this script::

    densattn demo --out /tmp/demo_out --cache-dir /tmp/densattn-demo-cache           # ~6 min on an idle machine
    OMP_NUM_THREADS=1 python benchmarks/explain_faithfulness.py --demo-out /tmp/demo_out \\
        --cache-dir /tmp/densattn-demo-cache

For every run ``DEMO/<modality>/<head>`` it calls :func:`densattn.analysis.explain.explain` on every fold (each
fold's adapter on its own validation split), with 20 random orders per fold, and writes
``benchmarks/results/explain_faithfulness.{json,md}`` and ``explain_faithfulness.png`` (the DAAM head's deletion
curves, one panel per modality). ``--retrain-k text=3,vision=4,speech=2`` adds the retraining ablation of every
method's ranking for the DAAM head (slow: several 5-fold trainings per modality). The sanity check
(:func:`densattn.analysis.sanity.sanity_check`) goes to ``explain_sanity.{json,md}`` unless ``--no-sanity``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from densattn.analysis.ablation import ablation_table
from densattn.analysis.explain import explain
from densattn.analysis.faithfulness import plot_deletion_curves
from densattn.analysis.runs import features_for_run
from densattn.analysis.sanity import sanity_check, sanity_table
from densattn.io import atomic_write_json, atomic_write_text, save_figure

RESULTS = Path(__file__).parent / "results"
MODALITIES = ("text", "vision", "speech")
HEADS = ("daam", "gqdaam", "mha", "mha_bn", "conv", "pool", "linear")


def _parse_k(value: str) -> dict[str, int]:
    out = {}
    for pair in filter(None, value.split(",")):
        modality, _, k = pair.partition("=")
        if modality not in MODALITIES or not k.isdigit():
            raise SystemExit(f"--retrain-k: expected MODALITY=K pairs (e.g. text=3), got {pair!r}")
        out[modality] = int(k)
    return out


def _row(explained: dict) -> dict:
    faith = explained["faithfulness"]
    rand = faith["random"]
    methods = {}
    for name, m in faith["methods"].items():
        methods[name] = {
            "area": m["area"],
            "area_fold_std": m["area_fold_std"],
            "gap_to_random": m["gap_to_random"],
            "gap_to_random_std": m["gap_to_random_std"],
            "reverse_area": m["reverse_area"],
            "random_better": m["random_better"],
            "ranking_fold0": m["ranking"],
            "fold_agreement": explained["attributions"][name]["fold_agreement"],
        }
    return {
        "num_folds": faith["num_folds"],
        "num_examples": faith["num_examples"],
        "num_layers": faith["num_layers"],
        "accuracy_all_layers": faith["accuracy_all_layers"],
        "accuracy_no_layers": faith["accuracy_no_layers"],
        "random_area_mean": rand["area_mean"],
        "random_area_std": rand["area_std"],
        "methods": methods,
    }


def markdown(result: dict) -> str:
    meta = result["meta"]
    lines = [
        "# Faithfulness of layer explanations on the demo runs",
        "",
        f"Every fold's adapter on its own validation split ({meta['folds']}), a removed layer set to its training "
        f"mean; deletion area = area under accuracy vs fraction of layers removed, most important first (lower = "
        f"more faithful), mean ± std over folds; random = {meta['random_orders']} random orders per fold (mean ± "
        "std over orders); gap = random − method (paired per fold, mean ± std over folds); agreement = mean "
        "Spearman correlation of the layer scores between folds. Load average at start "
        f"{meta['loadavg_start']}, at end {meta['loadavg_end']}; torch {meta['torch']}, {meta['threads']} thread(s); "
        f"{meta['seconds']:.0f} s.",
        "",
        "| modality | head | acc (all → none) | method | deletion area | gap to random | random orders better "
        "| reverse area | agreement |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for modality, heads in result["runs"].items():
        for head, r in heads.items():
            acc = f"{r['accuracy_all_layers']:.3f} → {r['accuracy_no_layers']:.3f}"
            for name, m in r["methods"].items():
                agreement = "—" if m["fold_agreement"] is None else f"{m['fold_agreement']:+.2f}"
                lines.append(
                    f"| {modality} | {head} | {acc} | {name} | {m['area']:.3f} ± {m['area_fold_std']:.3f} | "
                    f"{m['gap_to_random']:+.3f} ± {m['gap_to_random_std']:.3f} | "
                    f"{100 * m['random_better']:.0f}% | {m['reverse_area']:.3f} | {agreement} |"
                )
                acc = ""
            lines.append(
                f"| {modality} | {head} | | random | {r['random_area_mean']:.3f} ± {r['random_area_std']:.3f} | — "
                "| — | — | — |"
            )
    methods = result["summary"]["methods"]
    lines += [
        "",
        "Summary: mean gap to random over the heads where the method applies (positive = better than random), and "
        "the number of runs where the method beats the random mean.",
        "",
        "| modality | " + " | ".join(methods) + " |",
        "|---|" + "---|" * len(methods),
    ]
    for modality, per in result["summary"]["by_modality"].items():
        cells = [f"{per[m]['mean_gap']:+.3f} ({per[m]['wins']}/{per[m]['runs']})" if m in per else "—" for m in methods]
        lines.append(f"| {modality} | " + " | ".join(cells) + " |")
    for modality, ablation in result.get("ablation", {}).items():
        lines += ["", f"## Retraining ablation, {modality} (daam head)", "", ablation_table(ablation)]
    return "\n".join(lines) + "\n"


def summarise(runs: dict) -> dict:
    methods = ["if", "occlusion", "gradient", "ig"]
    by_modality = {}
    for modality, heads in runs.items():
        per = {}
        for m in methods:
            gaps = [r["methods"][m]["gap_to_random"] for r in heads.values() if m in r["methods"]]
            if gaps:
                per[m] = {"mean_gap": sum(gaps) / len(gaps), "wins": sum(g > 0 for g in gaps), "runs": len(gaps)}
        by_modality[modality] = per
    return {"methods": methods, "by_modality": by_modality}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo-out", default="/tmp/demo_out", help="output folder of `densattn demo`")
    parser.add_argument("--cache-dir", default=None, help="feature cache root the demo used")
    parser.add_argument("--modalities", default=",".join(MODALITIES))
    parser.add_argument("--heads", default=",".join(HEADS))
    parser.add_argument("--random-orders", type=int, default=20)
    parser.add_argument("--folds", default="all", help="'all' or one fold index")
    parser.add_argument("--retrain-k", default="", help="MODALITY=K pairs: retrain the daam head's ablation")
    parser.add_argument("--no-sanity", action="store_true", help="skip the synthetic sanity check")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    out = Path(args.out)
    folds = "all" if args.folds == "all" else int(args.folds)
    retrain = _parse_k(args.retrain_k)
    start, load_start = time.perf_counter(), os.getloadavg()
    runs: dict = {}
    curves: dict = {}
    ablations: dict = {}
    timings: dict = {}
    for modality in filter(None, args.modalities.split(",")):
        root = Path(args.demo_out) / modality
        heads = [h for h in args.heads.split(",") if (root / h / "metrics.json").exists()]
        if not heads:
            print(f"[{modality}] no finished demo runs under {root}; skipped")
            continue
        features = features_for_run(root / heads[0], cache_dir=args.cache_dir)
        for head in heads:
            t0 = time.perf_counter()
            k = retrain.get(modality) if head == "daam" else None
            explained = explain(
                root / head,
                features=features,
                folds=folds,
                num_random=args.random_orders,
                top_k=k,
                out=root / head / "explain",
            )
            timings[f"{modality}/{head}"] = time.perf_counter() - t0
            runs.setdefault(modality, {})[head] = _row(explained)
            if head == "daam":
                curves[modality] = explained["faithfulness"]
                if explained["ablation"]:
                    ablations[modality] = explained["ablation"]
            areas = ", ".join(f"{m} {v['area']:.3f}" for m, v in runs[modality][head]["methods"].items())
            seconds = timings[f"{modality}/{head}"]
            print(
                f"[{modality}] {head}: {areas}; random {runs[modality][head]['random_area_mean']:.3f} ({seconds:.1f} s)"
            )
    sanity = None
    if not args.no_sanity:
        t0 = time.perf_counter()
        sanity = sanity_check(log=print)
        timings["sanity"] = time.perf_counter() - t0
        atomic_write_json(out / "explain_sanity.json", sanity)
        title = "# Synthetic sanity check (`densattn explain --sanity`)\n\n"
        atomic_write_text(out / "explain_sanity.md", title + sanity_table(sanity))
    result = {
        "meta": {
            "demo_out": args.demo_out,
            "folds": "all folds" if folds == "all" else f"fold {folds}",
            "random_orders": args.random_orders,
            "loadavg_start": [round(v, 2) for v in load_start],
            "loadavg_end": [round(v, 2) for v in os.getloadavg()],
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "seconds": time.perf_counter() - start,
            "seconds_per_run": timings,
        },
        "runs": runs,
        "summary": summarise(runs),
        "ablation": ablations,
        "sanity_recovered": sanity["recovered"] if sanity else None,
    }
    atomic_write_json(out / "explain_faithfulness.json", result)
    atomic_write_text(out / "explain_faithfulness.md", markdown(result))
    if curves:
        from densattn.train.plots import plt

        fig, axes = plt.subplots(1, len(curves), figsize=(5.0 * len(curves), 3.8), squeeze=False)
        for ax, (modality, report) in zip(axes[0], curves.items()):
            plot_deletion_curves(report, None, title=f"{modality}: daam head", ax=ax)
        save_figure(fig, out / "explain_faithfulness.png")
    print(json.dumps(result["summary"], indent=1))


if __name__ == "__main__":
    main()
