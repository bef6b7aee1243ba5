"""Real-data run: a byte-level quaternion transformer classifies Debian fortunes by topic, in both modes.

Data: ``densattn.data.sources.load_dataset("fortunes")`` (Debian package ``fortunes``: computers / politics /
sports / work, 2,531 entries). Each entry → its first ``max_length`` UTF-8 bytes (whitespace collapsed).
Split 70 / 15 / 15 (stratified, seeded); the epoch with the best validation accuracy is evaluated on the test split.

Model (identical for both modes except the attention): byte embedding + learned positions (embed_dim 64) →
2 × QuaternionTransformerEncoderLayer (4 heads, pre-norm, quaternion feed-forward 4×) → QuaternionRMSNorm →
mask-aware mean over bytes → Linear → 4 classes. Same seed, same initial weights, same batches for both modes.

For context the results also hold the majority-class accuracy and a TF-IDF char n-gram logistic regression
on the same truncated text and split.

Usage: python benchmarks/quaternion_train.py [--epochs 8] [--modes shared hamilton] [--seeds 0 1] [--output NAME]
Writes benchmarks/results/NAME (default quaternion_train.json). The committed results ran one process per mode
(``--modes shared --output quaternion_train_shared.json``, likewise hamilton, and ``--seeds 1`` runs).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import f1_score
from sklearn.model_selection import train_test_split
from torch import nn

from densattn.attention.quaternion import QuaternionTransformerEncoderLayer
from densattn.attention.quaternion_linear import QuaternionRMSNorm
from densattn.data.sources import load_dataset

RESULTS = Path(__file__).parent / "results"
PAD = 256


class ByteQuaternionClassifier(nn.Module):
    """Bytes ``(B, L)`` (PAD = 256) → class logits ``(B, C)`` through quaternion encoder layers."""

    def __init__(
        self, num_classes: int, *, mode: str, embed_dim: int, num_heads: int, num_layers: int,
        max_length: int, dropout: float, generator: torch.Generator,
    ) -> None:  # fmt: skip
        super().__init__()
        self.embed = nn.Embedding(PAD + 1, embed_dim, padding_idx=PAD)
        self.position = nn.Parameter(torch.zeros(max_length, embed_dim))
        with torch.no_grad():
            self.embed.weight.normal_(std=0.5, generator=generator)
            self.embed.weight[PAD].zero_()
            self.position.normal_(std=0.1, generator=generator)
        self.layers = nn.ModuleList(
            QuaternionTransformerEncoderLayer(embed_dim, num_heads, mode=mode, dropout=dropout, generator=generator)
            for _ in range(num_layers)
        )
        self.norm = QuaternionRMSNorm(embed_dim)
        self.head = nn.Linear(embed_dim, num_classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        mask = tokens != PAD  # (B, L) True = keep
        x = self.embed(tokens) + self.position[: tokens.shape[1]]  # (B, L, E)
        for layer in self.layers:
            x = layer(x, mask=mask)
        x = self.norm(x)
        keep = mask.unsqueeze(-1).to(x.dtype)
        pooled = (x * keep).sum(1) / keep.sum(1).clamp_min(1.0)  # (B, E)
        return self.head(pooled)


def encode(texts: list[str], max_length: int) -> torch.Tensor:
    out = torch.full((len(texts), max_length), PAD, dtype=torch.long)
    for n, text in enumerate(texts):
        data = list(" ".join(text.split()).encode("utf-8"))[:max_length]
        out[n, : len(data)] = torch.tensor(data, dtype=torch.long)
    return out


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    model.eval()
    logits = torch.cat([model(x[i : i + 128]) for i in range(0, len(x), 128)])
    pred = logits.argmax(-1)
    return {
        "loss": F.cross_entropy(logits, y).item(),
        "accuracy": (pred == y).float().mean().item(),
        "macro_f1": float(f1_score(y.numpy(), pred.numpy(), average="macro")),
    }


def train_mode(mode: str, seed: int, splits: dict, args: argparse.Namespace, num_classes: int) -> dict:
    torch.manual_seed(seed)  # dropout masks
    g = torch.Generator().manual_seed(seed)
    model = ByteQuaternionClassifier(
        num_classes, mode=mode, embed_dim=args.embed_dim, num_heads=args.num_heads,
        num_layers=args.num_layers, max_length=args.max_length, dropout=args.dropout, generator=g,
    )  # fmt: skip
    optimiser = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    x_train, y_train = splits["train"]
    order_gen = torch.Generator().manual_seed(seed + 1000)
    history, best = [], None
    start = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        model.train()
        order = torch.randperm(len(x_train), generator=order_gen)
        total = 0.0
        for i in range(0, len(order), args.batch_size):
            idx = order[i : i + args.batch_size]
            loss = F.cross_entropy(model(x_train[idx]), y_train[idx])
            optimiser.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimiser.step()
            total += loss.item() * len(idx)
        val = evaluate(model, *splits["val"])
        history.append({"epoch": epoch, "train_loss": total / len(x_train), **{f"val_{k}": v for k, v in val.items()}})
        if best is None or val["accuracy"] > best[0]:
            best = (val["accuracy"], epoch, {k: v.clone() for k, v in model.state_dict().items()})
        print(
            f"[{mode} seed {seed}] epoch {epoch}: train loss {total / len(x_train):.3f}, val acc {val['accuracy']:.3f}",
            flush=True,
        )
    seconds = time.perf_counter() - start
    model.load_state_dict(best[2])
    return {
        "mode": mode,
        "seed": seed,
        "best_epoch": best[1],
        "test": evaluate(model, *splits["test"]),
        "train_seconds": seconds,
        "parameters": sum(p.numel() for p in model.parameters()),
        "history": history,
    }


def char_ngram_reference(data, train: np.ndarray, test: np.ndarray, max_length: int) -> float:
    """Context, not a competitor: TF-IDF char 2–4-grams of the same truncated text + logistic regression."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    texts = [" ".join(data.load(i).split())[:max_length] for i in range(len(data))]
    labels = np.array(data.labels)
    vectoriser = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 4), min_df=2)
    features = vectoriser.fit_transform([texts[i] for i in train])
    classifier = LogisticRegression(max_iter=2000, C=5.0).fit(features, labels[train])
    return float(classifier.score(vectoriser.transform([texts[i] for i in test]), labels[test]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--max-length", type=int, default=80)
    parser.add_argument("--embed-dim", type=int, default=64)
    parser.add_argument("--num-heads", type=int, default=4)
    parser.add_argument("--num-layers", type=int, default=2)
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--modes", nargs="+", default=["shared", "hamilton"], choices=["shared", "hamilton"])
    parser.add_argument("--output", default="quaternion_train.json", help="file name under benchmarks/results")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    data = load_dataset("fortunes")
    tokens = encode([data.load(i) for i in range(len(data))], args.max_length)
    labels = torch.tensor(data.labels)
    index = np.arange(len(data))
    train, rest = train_test_split(index, test_size=0.3, stratify=labels.numpy(), random_state=0)
    val, test = train_test_split(rest, test_size=0.5, stratify=labels.numpy()[rest], random_state=0)
    splits = {name: (tokens[ix], labels[ix]) for name, ix in (("train", train), ("val", val), ("test", test))}
    majority = int(np.bincount(labels.numpy()[train]).argmax())
    majority_accuracy = float((labels[test] == majority).float().mean())
    reference_accuracy = char_ngram_reference(data, train, test, args.max_length)

    runs = [train_mode(mode, seed, splits, args, len(data.classes)) for seed in args.seeds for mode in args.modes]
    summary = {}
    for mode in args.modes:
        accs = [r["test"]["accuracy"] for r in runs if r["mode"] == mode]
        f1s = [r["test"]["macro_f1"] for r in runs if r["mode"] == mode]
        secs = [r["train_seconds"] for r in runs if r["mode"] == mode]
        summary[mode] = {
            "test_accuracy_mean": float(np.mean(accs)),
            "test_accuracy_std": float(np.std(accs)),
            "test_macro_f1_mean": float(np.mean(f1s)),
            "train_seconds_mean": float(np.mean(secs)),
        }
    result = {
        "dataset": {"name": data.name, "classes": data.classes, "fingerprint": data.fingerprint(),
                    "sizes": {k: len(v[1]) for k, v in splits.items()}},
        "config": vars(args),
        "majority_test_accuracy": majority_accuracy,
        "char_ngram_logistic_regression_test_accuracy": reference_accuracy,
        "summary": summary,
        "runs": runs,
    }  # fmt: skip
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / args.output).write_text(json.dumps(result, indent=2) + "\n")
    keys = ("majority_test_accuracy", "char_ngram_logistic_regression_test_accuracy", "summary")
    print(json.dumps({k: result[k] for k in keys}, indent=2))


if __name__ == "__main__":
    main()
