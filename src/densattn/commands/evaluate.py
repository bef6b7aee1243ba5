"""``densattn evaluate``: score a trained run (head adapter or LoRA) on a dataset."""

from __future__ import annotations

import json
from pathlib import Path

from densattn.commands._common import add_data_arguments, load_data_and_encoder, load_features


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="evaluate a trained run on a dataset",
        description="Evaluate RUN (a head adapter on cached features, or a LoRA run end to end) on a dataset.",
    )
    p.add_argument("run", help="run directory written by `densattn train`")
    add_data_arguments(p)
    p.add_argument("--out", default=None, help="write the metrics JSON here (default: print only)")
    p.set_defaults(func=run)


def _check_classes(data_classes: list[str], run_classes: list[str]) -> None:
    if data_classes != run_classes:
        raise ValueError(f"the data's classes {data_classes} differ from the run's {run_classes}")


def run(args) -> int:
    import torch

    from densattn.train.metrics import classification_metrics

    run_dir = Path(args.run)
    if (run_dir / "fusion_config.json").exists():
        raise ValueError(
            f"{run_dir} is a fusion run; load it with densattn.fusion_train.load_fusion_adapter and feed it the "
            "features of each of its encoders"
        )
    if (run_dir / "lora_config.json").exists():
        from densattn.lora_model import LoraClassifier

        model = LoraClassifier.from_pretrained(run_dir)
        dataset, _, _ = load_data_and_encoder(args)
        _check_classes(list(dataset.classes), list(model.classes))
        names = model.predict([dataset.load(i) for i in range(len(dataset))])
        pred = torch.tensor([model.classes.index(n) for n in names])
        labels, classes = torch.tensor(dataset.labels), model.classes
    else:
        from densattn.adapter import DensityAdapterModel

        model = DensityAdapterModel.from_pretrained(run_dir)
        features, _, _ = load_features(args)
        _check_classes(features.classes, model.classes)
        if (features.num_layers, features.dim) != (model.num_layers, model.dim):
            raise ValueError(
                f"features are {features.num_layers}x{features.dim} but the adapter expects "
                f"{model.num_layers}x{model.dim}; use the encoder the run was trained with"
            )
        with torch.no_grad():
            pred = torch.cat([model(features.features[i : i + 512]) for i in range(0, len(features), 512)]).argmax(-1)
        labels, classes = features.labels, model.classes
    metrics = classification_metrics(labels.numpy(), pred.numpy(), len(classes))
    print(f"accuracy {metrics['accuracy']:.4f}, macro-F1 {metrics['macro_f1']:.4f} on {len(labels)} examples")
    if args.out:
        from densattn.data.cache import atomic_write_text

        atomic_write_text(Path(args.out), json.dumps(metrics, indent=2))
    return 0
