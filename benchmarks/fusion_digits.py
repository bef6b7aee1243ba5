"""Concat vs BAN vs MAN fusion on real images: two views of one scikit-learn digit.

The data are scikit-learn's ``load_digits`` (1,797 real 8×8 handwritten digits, 10 classes). Each image is cut
into two views that are fused by :class:`densattn.fusion.FusionHead`: the left half (columns 0-3) and the right
half (columns 4-7), each as a sequence of 8 row tokens of 4 pixels. These are two views of one image, not two
modalities: the check is whether a fusion head combines complementary partial views, with the same classifier,
optimiser and budget for every method.

Protocol: stratified 5-fold cross-validation (seed 0); inside each training fold 10% is held out for model
selection (the epoch with the best validation accuracy), and the test fold is used once. Reference points on the
same folds: logistic regression on the left half's pixels, the right half's, and the whole image.

Run: ``.venv/bin/python benchmarks/fusion_digits.py`` (a few minutes on 2 cores). Writes
``benchmarks/results/fusion_digits.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, train_test_split

from densattn.heads import FusionHead

RESULTS = Path(__file__).resolve().parent / "results"


def views(images: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Left and right halves as row-token sequences, each ``(B, 8, 4)``, pixels scaled to [0, 1]."""
    pixels = torch.tensor(images, dtype=torch.float32) / 16.0  # (B, 8, 8)
    return pixels[:, :, :4].contiguous(), pixels[:, :, 4:].contiguous()


def train_head(method: str, left, right, labels, train_idx, val_idx, test_idx, args, seed: int) -> dict:
    torch.manual_seed(seed)
    extra = {"exact": True} if method == "man_exact" else {}
    head = FusionHead(
        [4, 4],
        10,
        method="man" if method.startswith("man") else method,
        hidden=args.hidden,
        glimpses=args.glimpses,
        num_heads=args.heads if method.startswith("man") else 1,
        num_features=args.features,
        dropout=args.dropout,
        num_positions=[8, 8],
        generator=torch.Generator().manual_seed(seed),
        **extra,
    )
    optimizer = torch.optim.AdamW(head.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    order = torch.Generator().manual_seed(seed)
    best = (-1.0, None, -1)
    train_idx = torch.as_tensor(train_idx)

    def accuracy(index) -> float:
        head.eval()
        with torch.no_grad():
            predicted = head(left[index], right[index]).argmax(-1)
        return (predicted == labels[index]).float().mean().item()

    for epoch in range(args.epochs):
        head.train()
        for batch in train_idx[torch.randperm(len(train_idx), generator=order)].split(args.batch):
            loss = torch.nn.functional.cross_entropy(head(left[batch], right[batch]), labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        val = accuracy(val_idx)
        if val > best[0]:
            best = (val, {k: v.clone() for k, v in head.state_dict().items()}, epoch)
    head.load_state_dict(best[1])
    return {"val_accuracy": best[0], "best_epoch": best[2], "test_accuracy": accuracy(test_idx)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=["concat", "ban", "man", "man_exact"])
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=80)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--glimpses", type=int, default=2)
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--features", type=int, default=128)
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(1)  # small batches: threads only contend on a shared machine

    digits = load_digits()
    left, right = views(digits.images)
    labels = torch.tensor(digits.target)
    flat = digits.images.reshape(len(labels), 8, 8) / 16.0
    folds = StratifiedKFold(n_splits=args.folds, shuffle=True, random_state=0)
    per_fold: dict[str, list[dict]] = {name: [] for name in args.methods}
    reference: dict[str, list[float]] = {"logreg_left_half": [], "logreg_right_half": [], "logreg_whole": []}
    for fold, (train_val, test) in enumerate(folds.split(flat, digits.target)):
        train, val = train_test_split(train_val, test_size=0.1, stratify=digits.target[train_val], random_state=fold)
        for name, columns in (("left_half", slice(0, 4)), ("right_half", slice(4, 8)), ("whole", slice(0, 8))):
            x = flat[:, :, columns].reshape(len(labels), -1)
            model = LogisticRegression(max_iter=2000).fit(x[train_val], digits.target[train_val])
            reference[f"logreg_{name}"].append(float(model.score(x[test], digits.target[test])))
        for method in args.methods:
            start = time.perf_counter()
            result = train_head(method, left, right, labels, train, val, test, args, seed=fold)
            result["seconds"] = time.perf_counter() - start
            per_fold[method].append(result)
            print(fold, method, result, flush=True)

    def summary(values: list[float]) -> dict:
        return {"mean": statistics.mean(values), "std": statistics.stdev(values), "folds": values}

    output = {
        "data": "scikit-learn load_digits: 1,797 real 8x8 digit images, 10 classes",
        "views": "two views of one image (left half / right half, 8 row tokens of 4 pixels each), not two modalities",
        "protocol": f"stratified {args.folds}-fold CV (seed 0); 10% of each training fold for model "
        "selection (best epoch by validation accuracy); test fold used once",
        "config": {key: value for key, value in vars(args).items() if key != "out"},
        "torch": torch.__version__,
        "fusion_test_accuracy": {
            method: summary([r["test_accuracy"] for r in results]) for method, results in per_fold.items()
        },
        "per_fold": per_fold,
        "reference_logistic_regression": {name: summary(values) for name, values in reference.items()},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "fusion_digits.json").write_text(json.dumps(output, indent=2) + "\n")
    lines = [
        "# Fusion of two views of one digit image (scikit-learn load_digits)",
        "",
        f"{output['views']}; {output['protocol']}. Same head size (hidden {args.hidden}), optimiser "
        f"(AdamW lr {args.lr}), {args.epochs} epochs for every method.",
        "",
        "| method | test accuracy (mean ± std over folds) | seconds per fold |",
        "|---|---|---|",
    ]
    for method, results in per_fold.items():
        acc = output["fusion_test_accuracy"][method]
        seconds = statistics.mean(r["seconds"] for r in results)
        lines.append(f"| {method} | {acc['mean']:.4f} ± {acc['std']:.4f} | {seconds:.1f} |")
    for name, stats in output["reference_logistic_regression"].items():
        lines.append(f"| {name.replace('_', ' ')} (pixels) | {stats['mean']:.4f} ± {stats['std']:.4f} | – |")
    (args.out / "fusion_digits.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
