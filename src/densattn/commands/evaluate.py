"""``densattn evaluate``: score a trained run's adapter on a dataset."""

from __future__ import annotations

import json
from pathlib import Path

from densattn.commands._common import add_data_arguments, load_features


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="evaluate a trained adapter on a dataset",
        description="Evaluate RUN's adapter (head) on the features of a dataset.",
    )
    p.add_argument("run", help="run directory written by `densattn train`")
    add_data_arguments(p)
    p.add_argument("--out", default=None, help="write the metrics JSON here (default: print only)")
    p.set_defaults(func=run)


def run(args) -> int:
    import torch

    from densattn.adapter import DensityAdapterModel
    from densattn.train.metrics import classification_metrics

    model = DensityAdapterModel.from_pretrained(args.run)
    features, _, _ = load_features(args)
    if features.classes != model.classes:
        raise ValueError(f"the data's classes {features.classes} differ from the adapter's {model.classes}")
    if (features.num_layers, features.dim) != (model.num_layers, model.dim):
        raise ValueError(
            f"features are {features.num_layers}x{features.dim} but the adapter expects "
            f"{model.num_layers}x{model.dim}; use the encoder the run was trained with"
        )
    with torch.no_grad():
        pred = torch.cat([model(features.features[i : i + 512]) for i in range(0, len(features), 512)]).argmax(-1)
    metrics = classification_metrics(features.labels.numpy(), pred.numpy(), len(model.classes))
    print(f"accuracy {metrics['accuracy']:.4f}, macro-F1 {metrics['macro_f1']:.4f} on {len(features)} examples")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(metrics, indent=2))
    return 0
