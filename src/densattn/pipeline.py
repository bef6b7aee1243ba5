"""The front of the main job: a data spec and an encoder spec -> the dataset, the frozen encoder, and features.

A *task* is an (encoder, data, options) triple. :func:`load_task` builds the dataset (references only, nothing
decoded) and the encoder and checks that they fit each other; :func:`task_features` adds the cached per-layer
features; :func:`encoder_record` is the encoder identity every run records (what rebuilds the encoder later).

Example:
    >>> dataset, encoder, info = load_task("debates-party", "minilm", max_samples=20)
    >>> len(dataset), info["name"], info["frozen_params"]
    (20, 'minilm', 22713216)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["encoder_record", "load_task", "run_dataset", "task_features"]


def encoder_record(encoder, name: str | None = None, options: dict[str, Any] | None = None) -> dict[str, Any]:
    """``{"name", "options", ...identity, "frozen_params"}``: what a run records about its frozen encoder.

    Example:
        >>> import torch
        >>> from densattn.encoders.base import EncoderAdapter
        >>> class Toy(EncoderAdapter):
        ...     name, modality, num_layers, dim = "toy", "text", 2, 3
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.net = torch.nn.Linear(3, 3)
        ...     def raw_model(self):
        ...         return self.net
        >>> record = encoder_record(Toy(), options={"max_length": 16})
        >>> record["name"], record["options"], record["frozen_params"], (record["num_layers"], record["dim"])
        ('toy', {'max_length': 16}, 12, (2, 3))
        >>> sorted(record)
        ['dim', 'encoder', 'frozen_params', 'name', 'num_layers', 'options', 'pooling', 'weights_sha256']
    """
    return {
        "name": str(name or encoder.name),
        "options": dict(options or {}),
        **encoder.identity(),
        "frozen_params": sum(p.numel() for p in encoder.raw_model().parameters()),
    }


def load_task(
    data: str,
    encoder: str,
    *,
    data_options: dict[str, Any] | None = None,
    encoder_options: dict[str, Any] | None = None,
    max_samples: int | None = None,
    seed: int = 0,
    device: str = "cpu",
):
    """``(dataset, encoder, encoder_record)`` for a data spec and an encoder spec.

    Raises:
        ValueError: a bad spec or option (the message names it), ``max_samples < 2``, fewer than 2 classes, or an
            encoder of another modality than the data.

    Example:
        >>> options = {"max_length": 32}
        >>> dataset, encoder, info = load_task("debates-party", "minilm", max_samples=8, encoder_options=options)
        >>> dataset.modality, len(dataset), encoder.max_length, info["options"]
        ('text', 8, 32, {'max_length': 32})
        >>> load_task("debates-party", "minilm", max_samples=1)
        Traceback (most recent call last):
        ...
        ValueError: --max-samples must be at least 2, got 1
    """
    from densattn.data import load_dataset
    from densattn.encoders import get_encoder

    if max_samples is not None and (not isinstance(max_samples, int) or max_samples < 2):
        raise ValueError(f"--max-samples must be at least 2, got {max_samples}")
    dataset = load_dataset(data, max_samples=max_samples, seed=seed, **dict(data_options or {}))
    present = sum(1 for n in dataset.class_counts().values() if n > 0)
    if present < 2:
        raise ValueError(
            f"--data {data} has {present} class(es) {list(dataset.classes)}; classification needs at least 2 "
            "(check the label column or the folder layout)"
        )
    model = get_encoder(encoder, device=device, **dict(encoder_options or {}))
    if model.modality != dataset.modality:
        raise ValueError(
            f"--encoder {encoder} reads {model.modality} but --data {data} is {dataset.modality}; "
            "pick an encoder of the data's modality"
        )
    return dataset, model, encoder_record(model, encoder, encoder_options)


def task_features(
    data: str,
    encoder: str,
    *,
    cache_dir: str | Path | None = None,
    batch_size: int = 16,
    progress: bool | None = None,
    **task_options: Any,
):
    """``(features, encoder_record, dataset)``: :func:`load_task` (``task_options`` are its keyword options), then the
    features through the cache.

    Shapes:
        ``features.features``: ``(N, L, d)``, e.g. ``(N, 7, 384)`` for MiniLM.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as cache:
        ...     features, info, dataset = task_features("debates-party", "minilm", cache_dir=cache, max_samples=6,
        ...                                             encoder_options={"max_length": 32})
        >>> features.features.shape, features.classes == dataset.classes, features.manifest["dataset"]
        (torch.Size([6, 7, 384]), True, 'debates-party')
        >>> features.manifest["dataset_fingerprint"] == dataset.fingerprint(), info["name"]
        (True, 'minilm')
    """
    from densattn.data.cache import cached_features

    dataset, model, info = load_task(data, encoder, **task_options)
    features = cached_features(model, dataset, cache_dir=cache_dir, batch_size=batch_size, progress=progress)
    return features, info, dataset


def run_dataset(config: dict[str, Any]):
    """The dataset a run was trained on, rebuilt from its ``config.json`` (data spec, options, max_samples, seed) and
    checked against the fingerprint the run recorded.

    Raises:
        ValueError: the config records no data spec, or the rebuilt dataset differs (files changed, or options the
            config does not record).

    Example:
        >>> from densattn.data import load_dataset
        >>> config = {"data": "debates-party", "max_samples": 8, "train": {"seed": 3}}
        >>> original = load_dataset("debates-party", max_samples=8, seed=3)
        >>> config["feature_cache"] = {"dataset_fingerprint": original.fingerprint()}
        >>> run_dataset(config).ids == original.ids
        True
        >>> run_dataset({**config, "max_samples": 9})  # not the data the run saw
        Traceback (most recent call last):
        ...
        ValueError: the data 'debates-party' rebuilt now differs from the data the run was trained on (fingerprint ...
    """
    from densattn.data import load_dataset

    if not config.get("data"):
        raise ValueError("the run's config.json records no data spec; pass the data (or features) directly")
    dataset = load_dataset(
        config["data"],
        max_samples=config.get("max_samples"),
        seed=(config.get("train") or {}).get("seed", 0),
        **(config.get("data_options") or {}),
    )
    recorded = (config.get("feature_cache") or {}).get("dataset_fingerprint")
    if recorded and recorded != dataset.fingerprint():
        raise ValueError(
            f"the data {config['data']!r} rebuilt now differs from the data the run was trained on (fingerprint "
            "mismatch: files changed, or data options that the config does not record)"
        )
    return dataset
