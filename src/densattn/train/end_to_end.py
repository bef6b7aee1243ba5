"""End-to-end methods for the fold runner: an encoder tuned with LoRA, LoRA+, IA3 or DAAM gates, on raw inputs
(:class:`EndToEndMethod`, :func:`run_end_to_end_experiment`).

Each fold builds a fresh :class:`~densattn.adapters.PeftClassifier` (seeded), trains the tuner and the classifier in
the same loop as the heads (AdamW groups, plateau LR, early stopping, AMP on CUDA, checkpoints and exact resume),
and scores its best-validation state on the fold's test split. Splits are the heads' own (same labels, seed and
validation carving), so every method is scored on the same examples.

LoRA+ (Hayou et al. 2024, arXiv `2402.12354 <https://arxiv.org/abs/2402.12354>`_) is LoRA whose ``B`` matrices learn
at ``ratio`` times the base learning rate (default 16); the ``A`` matrices and the classifier at the base rate.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from densattn.adapters.end_to_end import PeftClassifier, slice_inputs
from densattn.adapters.tuners import make_tuner
from densattn.train.config import TrainConfig
from densattn.train.inputs import Inputs
from densattn.train.optim import optimizer_groups
from densattn.train.runner import Fold, Method, run_folds

__all__ = ["END_TO_END_METHODS", "EndToEndMethod", "run_end_to_end_experiment"]

#: method name -> tuner method
END_TO_END_METHODS = {"lora": "lora", "loraplus": "lora", "ia3": "ia3", "daam_peft": "daam_peft"}


class EndToEndMethod(Method):
    """An encoder tuned end to end on raw examples (``"lora"``, ``"loraplus"``, ``"ia3"``, ``"daam_peft"``).

    Args:
        encoder: the frozen encoder adapter (its model is copied per fold).
        items: raw examples, aligned with ``labels``.
        labels, classes: integer labels and class names.
        method: ``"lora"``, ``"loraplus"``, ``"ia3"`` or ``"daam_peft"``.
        tuner_options: options of the tuner (LoRA: ``rank``, ``alpha``, ``target_modules``; IA3: ``target_modules``,
            ``feedforward_modules``; DAAM: ``target_modules``, ``norm_axis``, ``num_heads``, ``num_gaussians``,
            ``preset``); unknown ones raise.
        loraplus_ratio: LoRA+ learning-rate ratio of the ``B`` matrices.
        groups: group per example (for leave-one-group-out).
        pooled_features: ``(N, dim)`` last-layer pooled features of the frozen encoder (e.g. the feature cache's
            last layer) for the classifier's input standardisation; computed with the frozen model when omitted.
        encoder_info: the encoder's identity (name, options, weights hash), recorded to rebuild it.

    Example:
        The bundled MiniLM with IA3 (targets resolved from the encoder); the texts are tokenised once, here:

        >>> from densattn.encoders import get_encoder
        >>> texts = ["good film", "great fun", "dull plot", "awful"]
        >>> method = EndToEndMethod(get_encoder("minilm", max_length=8), texts, [1, 1, 0, 0], ["neg", "pos"],
        ...                         method="ia3")
        >>> method.tuner.to_dict()
        {'method': 'ia3', 'target_modules': ['key', 'value', 'output.dense'], 'feedforward_modules': ['output.dense']}
        >>> sorted(method.prepared), method.pooled.shape, method.inputs(np.array([0, 3])).lengths.tolist()
        (['attention_mask', 'input_ids', 'token_type_ids'], torch.Size([4, 384]), [4, 3])
    """

    kind = "end_to_end"

    def __init__(
        self,
        encoder,
        items: Sequence[Any],
        labels,
        classes: Sequence[str],
        *,
        method: str = "lora",
        tuner_options: dict[str, Any] | None = None,
        loraplus_ratio: float = 16.0,
        groups: Sequence[str] | None = None,
        pooled_features: Tensor | None = None,
        encoder_info: dict[str, Any] | None = None,
    ) -> None:
        if method not in END_TO_END_METHODS:
            raise ValueError(f"method must be one of {sorted(END_TO_END_METHODS)}, got {method!r}")
        if method == "loraplus" and not loraplus_ratio > 0:
            raise ValueError(f"loraplus_ratio must be > 0, got {loraplus_ratio}")
        self.encoder, self.name = encoder, method
        self.labels, self.classes = torch.as_tensor(labels, dtype=torch.long), list(classes)
        self.groups = list(groups) if groups is not None else None
        if len(items) != len(self.labels):
            raise ValueError(f"items ({len(items)}) and labels ({len(self.labels)}) must have the same length")
        self.ratio = float(loraplus_ratio) if method == "loraplus" else None
        self.encoder_info = dict(encoder_info or {"name": encoder.name, "options": {}, **encoder.identity()})
        self.tuner = make_tuner(END_TO_END_METHODS[method], **dict(tuner_options or {})).resolve(encoder)
        with torch.random.fork_rng():
            probe = self.build(0)  # validates the targets before any work
        self.prepared = probe.prepare(items)
        mask = self.prepared.get("attention_mask")
        self.lengths = None if mask is None else mask.sum(1)
        if pooled_features is None:
            with torch.no_grad():
                pooled_features = torch.cat(
                    [probe.pooled(slice_inputs(self.prepared, i, i + 64)) for i in range(0, len(items), 64)]
                )
        self.pooled = pooled_features.float()

    def describe(self) -> dict[str, Any]:
        return {
            "tuner": self.tuner.to_dict(),
            "loraplus_ratio": self.ratio,
            "encoder": self.encoder_info,
        }

    def build(self, seed: int) -> PeftClassifier:
        return PeftClassifier(self.encoder, self.classes, tuner=self.tuner, encoder_info=self.encoder_info)

    def prepare(self, model: nn.Module, fold: Fold) -> None:
        model.set_input_stats(self.pooled[torch.as_tensor(fold.train)][:, : model.input_mean.numel()])

    def inputs(self, index: np.ndarray) -> Inputs:
        index = torch.as_tensor(index, dtype=torch.long)
        return Inputs(slice_inputs(self.prepared, index), None if self.lengths is None else self.lengths[index])

    def optimizer_groups(self, model: nn.Module, config: TrainConfig) -> list[dict[str, Any]]:
        ratio = self.ratio
        scale = (lambda name: ratio if "lora_B" in name else 1.0) if ratio else None
        return optimizer_groups(model, lr=config.lr, weight_decay=config.weight_decay, lr_scale=scale)

    def frozen_params(self) -> int | None:
        return sum(p.numel() for p in self.encoder.raw_model().parameters())


def run_end_to_end_experiment(
    encoder, items: Sequence[Any], labels, classes: Sequence[str], *, method: str = "lora", **options: Any
) -> dict[str, Any]:
    """LoRA, LoRA+ or IA3 on every fold of ``items``; writes the run directory and returns its metrics.

    ``options`` are those of :class:`EndToEndMethod` (``tuner_options``, ``loraplus_ratio``, ``groups``,
    ``pooled_features``, ``encoder_info``) and of :func:`~densattn.train.run_folds` (``out`` required,
    ``train_config``, ``folds``, ``resume``, ``progress``, ``extra_config``, ``plots``, ``search``).

    Example:
        LoRA of rank 2 on MiniLM's ``query`` and ``value`` (6 layers x 2 x 2 (384 + 384) = 18432 parameters), one
        80/20 split, one epoch:

        >>> import tempfile
        >>> from densattn.encoders import get_encoder
        >>> texts = ["good film", "great fun", "loved it", "superb", "bad film", "dull plot", "hated it", "awful"]
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     m = run_end_to_end_experiment(get_encoder("minilm", max_length=8), texts, [1] * 4 + [0] * 4,
        ...                                   ["neg", "pos"], method="lora", tuner_options={"rank": 2, "alpha": 4.0},
        ...                                   out=folder, folds=1, plots=False,
        ...                                   train_config=TrainConfig(epochs=1, batch_size=4, val_fraction=0.25))
        >>> m["method"], m["num_folds"], m["trainable_params_without_classifier"], m["trainable_params"]
        ('lora', 1, 18432, 19202)
    """
    method_keys = ("tuner_options", "loraplus_ratio", "groups", "pooled_features", "encoder_info")
    method_options = {k: options.pop(k) for k in method_keys if k in options}
    end_to_end = EndToEndMethod(encoder, items, labels, classes, method=method, **method_options)
    return run_folds(end_to_end, **options)
