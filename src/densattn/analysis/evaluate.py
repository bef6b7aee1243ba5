"""Score any saved adapter on a dataset: a head, a fusion head or a tuned encoder (:func:`evaluate_adapter`).

Heads and fusion heads read features of the encoder(s) they were trained on, rebuilt from the adapter's config
and extracted through the feature cache; a tuned encoder runs end to end on the raw examples.

Example:
    >>> import tempfile, torch
    >>> from densattn.adapters import DensityAdapterModel
    >>> model = DensityAdapterModel("linear", num_layers=7, dim=384, classes=["democratic", "moderator", "republican"],
    ...                             head_options={"layer": "last"}, encoder={"name": "minilm", "options": {}})
    >>> from densattn.data import load_dataset
    >>> with tempfile.TemporaryDirectory() as cache:
    ...     metrics = evaluate_adapter(model, load_dataset("debates-party", max_samples=8), cache_dir=cache)
    >>> metrics["num_examples"]
    8
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["adapter_logits", "evaluate_adapter"]


def adapter_logits(
    model: nn.Module,
    dataset,
    *,
    cache_dir: str | Path | None = None,
    batch_size: int = 16,
    progress: bool | None = None,
) -> Tensor:
    """Logits ``(N, C)`` of ``model`` for every example of ``dataset``, in order.

    Raises:
        ValueError: the dataset's classes or modality do not fit the adapter, or its encoder cannot be rebuilt.

    Example:
        A head's logits are those of its encoder's features (extracted once, then read from the cache):

        >>> import tempfile
        >>> from densattn.adapters import DensityAdapterModel
        >>> from densattn.data import load_dataset
        >>> data = load_dataset("debates-party", max_samples=6)
        >>> model = DensityAdapterModel("pool", num_layers=7, dim=384, classes=list(data.classes),
        ...                             encoder={"name": "minilm", "options": {"max_length": 32}}).eval()
        >>> with tempfile.TemporaryDirectory() as cache:
        ...     logits = adapter_logits(model, data, cache_dir=cache)
        ...     again = adapter_logits(model, data, cache_dir=cache)  # from the cache
        >>> features = model.encoder().encode_all([data.load(i) for i in range(len(data))])  # (6, 7, 384)
        >>> logits.shape, torch.allclose(logits, model(features), atol=1e-5), torch.equal(logits, again)
        (torch.Size([6, 3]), True, True)
    """
    from densattn.adapters import DensityAdapterModel, FusionAdapter
    from densattn.data.cache import cached_features
    from densattn.encoders import load_recorded_encoder
    from densattn.train.loop import predict_logits

    classes = list(getattr(model, "classes", []))
    if list(dataset.classes) != classes:
        raise ValueError(f"the data's classes {list(dataset.classes)} differ from the adapter's {classes}")
    if isinstance(model, DensityAdapterModel):
        encoder = model.encoder()
        if encoder.modality != dataset.modality:
            raise ValueError(f"the adapter's encoder reads {encoder.modality}, the data is {dataset.modality}")
        features = cached_features(encoder, dataset, cache_dir=cache_dir, batch_size=batch_size, progress=progress)
        return predict_logits(model, features.features)
    if isinstance(model, FusionAdapter):
        parts = []
        for info in model.encoders:
            encoder = load_recorded_encoder(info)
            feats = cached_features(encoder, dataset, cache_dir=cache_dir, batch_size=batch_size, progress=progress)
            parts.append(feats.features)
        return predict_logits(model, FusionAdapter.pack(parts))
    from densattn.adapters.end_to_end import PeftClassifier
    from densattn.train.inputs import Inputs

    if isinstance(model, PeftClassifier):
        if model.encoder.modality != dataset.modality:
            raise ValueError(f"the adapter's encoder reads {model.encoder.modality}, the data is {dataset.modality}")
        prepared = model.prepare([dataset.load(i) for i in range(len(dataset))])
        mask = prepared.get("attention_mask")
        return predict_logits(model, Inputs(prepared, None if mask is None else mask.sum(1)), batch_size=batch_size)
    raise ValueError(f"cannot evaluate a {type(model).__name__}; pass an adapter from densattn.load_adapter")


def evaluate_adapter(
    model: nn.Module,
    dataset,
    *,
    cache_dir: str | Path | None = None,
    batch_size: int = 16,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Accuracy, macro-F1, per-class F1 and the confusion matrix of ``model`` on ``dataset``.

    Returns:
        :func:`~densattn.train.metrics.classification_metrics` plus ``num_examples``, ``data`` and ``classes``.

    Raises:
        ValueError: as :func:`adapter_logits` (classes, modality, encoder).

    Example:
        >>> import tempfile
        >>> from densattn.adapters import DensityAdapterModel
        >>> from densattn.data import load_dataset
        >>> data = load_dataset("debates-party", max_samples=6)
        >>> model = DensityAdapterModel("pool", num_layers=7, dim=384, classes=list(data.classes),
        ...                             encoder={"name": "minilm", "options": {"max_length": 32}})
        >>> with tempfile.TemporaryDirectory() as cache:
        ...     m = evaluate_adapter(model, data, cache_dir=cache)
        >>> m["num_examples"], m["classes"] == list(data.classes), sum(map(sum, m["confusion_matrix"]))
        (6, True, 6)
        >>> m["accuracy"] == sum(m["confusion_matrix"][i][i] for i in range(3)) / 6
        True
        >>> other = DensityAdapterModel("pool", num_layers=7, dim=384, classes=["spam", "ham"])
        >>> evaluate_adapter(other, data)
        Traceback (most recent call last):
        ...
        ValueError: the data's classes ['democratic', 'moderator', 'republican'] differ from the adapter's [...]
    """
    from densattn.train.metrics import classification_metrics

    logits = adapter_logits(model, dataset, cache_dir=cache_dir, batch_size=batch_size, progress=progress)
    labels = torch.as_tensor(dataset.labels)
    metrics = classification_metrics(labels.numpy(), logits.argmax(-1).numpy(), len(dataset.classes))
    return {**metrics, "num_examples": len(dataset), "data": dataset.name, "classes": list(dataset.classes)}
