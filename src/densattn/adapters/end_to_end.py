"""An encoder fine-tuned end to end (LoRA, IA3), pooled, and a linear classifier: :class:`PeftClassifier`.

Adapter types ``"lora"``, ``"ia3"`` and ``"daam_peft"`` (the tuner's method; see :mod:`densattn.adapters.tuners`).

The classifier runs the encoder's own preprocessing, the tuned encoder **in eval mode** (no dropout inside it,
BatchNorm statistics frozen: exactly the function whose features the heads see, plus the tuner), mean-pools the
**last** hidden state over valid tokens / frames / pixels (the sentence-transformers pooling of MiniLM; Whisper's
final-layer-norm output; EfficientNet's last block), standardises it with training-split statistics (buffers, like
every head) and applies ``Dropout -> Linear``::

    logits = W (pool(f_tuned(x)) - mean) / std + b

The classifier is a plain submodule, saved with the tuner's weights by construction (no ``modules_to_save``); the
encoder's own weights are never saved: they are rebuilt from the bundled package and checked against the recorded
weights hash.

Example:
    >>> import torch
    >>> from densattn.adapters import PeftClassifier, LoraTuner
    >>> from densattn.encoders import get_encoder
    >>> model = PeftClassifier(get_encoder("minilm", max_length=16), ["a", "b"], tuner=LoraTuner(rank=4, alpha=8.0))
    >>> model(model.prepare(["a short text", "another"])).shape
    torch.Size([2, 2])
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from densattn.adapters.base import AdapterConfig, AdapterMixin
from densattn.adapters.tuners import LoraTuner, encoder_kind, make_tuner
from densattn.distributed import to_device
from densattn.encoders.base import EncoderAdapter, masked_mean

__all__ = ["PeftClassifier", "PeftClassifierConfig", "slice_inputs"]


@dataclass
class PeftClassifierConfig(AdapterConfig):
    """Config of an encoder tuned end to end with a linear classifier on its pooled last layer.

    Attributes:
        type: the tuner's method (``"lora"``, ``"ia3"`` or ``"daam_peft"``).
        encoder: the encoder to rebuild (``name``, ``options``) and its identity (weights hash, settings).
        classes: class names.
        tuner: the tuner's options (``densattn.adapters.tuners``), targets resolved.
        dropout: dropout before the classifier.
        pooling: how the last hidden state is pooled.

    Example:
        >>> config = PeftClassifierConfig(type="ia3", encoder={"name": "minilm"}, classes=["a", "b"])
        >>> PeftClassifierConfig.from_dict(config.to_dict()) == config, config.pooling
        (True, 'last-layer-mean-masked')
        >>> PeftClassifierConfig(type="head")
        Traceback (most recent call last):
        ...
        ValueError: PeftClassifierConfig: type must be one of ('lora', 'ia3', 'daam_peft'), got 'head'
    """

    types: ClassVar[tuple[str, ...]] = ("lora", "ia3", "daam_peft")

    type: str = "lora"
    encoder: dict[str, Any] = field(default_factory=dict)
    classes: list[str] = field(default_factory=list)
    tuner: dict[str, Any] = field(default_factory=dict)
    dropout: float = 0.1
    pooling: str = "last-layer-mean-masked"


class PeftClassifier(AdapterMixin, nn.Module):
    """A tuned copy of ``encoder``'s model, last-layer masked mean pooling, standardisation, a linear classifier.

    Args:
        encoder: a frozen encoder adapter (its model is deep-copied; the adapter itself is left untouched).
        classes: class names (the classifier has ``len(classes)`` outputs).
        tuner: a :class:`~densattn.adapters.tuners.LoraTuner` or ``IA3Tuner`` (default LoRA r=8, alpha 16);
            targets left empty take the encoder's defaults.
        dropout: dropout before the classifier (active in training).
        encoder_info: ``{"name", "options", ...}`` recorded so :meth:`from_pretrained` can rebuild the encoder.

    Shapes:
        ``forward(inputs)``: a dict of batch-first tensors from :meth:`prepare` -> logits ``(B, len(classes))``.

    Example:
        Only the tuner's weights and the classifier are saved; reloading rebuilds the encoder from its package:

        >>> import tempfile
        >>> from safetensors.torch import load_file
        >>> from densattn.adapters import IA3Tuner, load_adapter
        >>> from densattn.encoders import get_encoder
        >>> encoder = get_encoder("minilm", max_length=8)
        >>> model = PeftClassifier(encoder, ["neg", "pos"], tuner=IA3Tuner(), encoder_info={"name": "minilm",
        ...                        "options": {"max_length": 8}, **encoder.identity()}).eval()
        >>> inputs = model.prepare(["good film", "dull plot"])
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     model.save_pretrained(folder)
        ...     saved = load_file(folder + "/adapter_model.safetensors")
        ...     again = load_adapter(folder)
        >>> sum("ia3_l" in k for k in saved), sorted(k for k in saved if "ia3_l" not in k)  # 4 IA3 vectors per layer
        (24, ['classifier.bias', 'classifier.weight', 'input_mean', 'input_std'])
        >>> sum(v.numel() for v in saved.values()) == model.parameter_counts()["trainable_params"] + 2 * 384
        True
        >>> type(again).__name__, torch.allclose(again(inputs), model(inputs))
        ('PeftClassifier', True)
    """

    config_class: ClassVar[type[PeftClassifierConfig]] = PeftClassifierConfig

    def __init__(
        self,
        encoder: EncoderAdapter,
        classes: Sequence[str],
        *,
        tuner=None,
        dropout: float = 0.1,
        encoder_info: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if len(classes) < 2:
            raise ValueError(f"classes must name at least 2 classes, got {list(classes)!r}")
        self.kind = encoder_kind(encoder)
        self.classes = list(classes)
        self.tuner = (tuner or LoraTuner()).resolve(encoder)
        self.encoder_info = dict(encoder_info or {"name": encoder.name, "options": {}, **encoder.identity()})
        self._encoder = [encoder]  # a list: the adapter's preprocessing, not a registered submodule
        self.backbone = self.tuner.wrap(copy.deepcopy(encoder.raw_model()))
        self.backbone.eval()
        dim = self._pooled_dim(encoder)
        self.register_buffer("input_mean", torch.zeros(dim))
        self.register_buffer("input_std", torch.ones(dim))
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(dim, len(self.classes))
        self._trainable = {n for n, p in self.named_parameters() if p.requires_grad}  # the tuner's + classifier

    def get_config(self) -> PeftClassifierConfig:
        return PeftClassifierConfig(
            type=self.tuner.method,
            encoder=dict(self.encoder_info),
            classes=list(self.classes),
            tuner=self.tuner.to_dict(),
            dropout=self.dropout.p,
        )

    @classmethod
    def from_config(cls, config: PeftClassifierConfig, *, device: str | torch.device = "cpu") -> PeftClassifier:
        from densattn.encoders import load_recorded_encoder

        encoder = load_recorded_encoder(config.encoder, device=device)
        tuner = make_tuner(config.type, **config.tuner)
        return cls(encoder, config.classes, tuner=tuner, dropout=config.dropout, encoder_info=config.encoder).to(device)

    def _pooled_dim(self, encoder: EncoderAdapter) -> int:
        if self.kind == "efficientnet":
            return encoder.raw_model().block_channels[-1]
        config = getattr(encoder.raw_model(), "config", None)
        for name in ("hidden_size", "d_model"):
            if config is not None and getattr(config, name, None):
                return int(getattr(config, name))
        return int(encoder.dim)

    @property
    def encoder(self) -> EncoderAdapter:
        """The encoder adapter whose preprocessing this model uses (its own model is not the one adapted)."""
        return self._encoder[0]

    def train(self, mode: bool = True) -> PeftClassifier:
        """Training mode for the classifier's dropout only; the adapted encoder stays in eval mode."""
        super().train(mode)
        self.backbone.eval()
        return self

    @torch.no_grad()
    def prepare(self, items: Sequence[Any], *, batch_size: int = 64) -> dict[str, Tensor]:
        """Preprocess raw examples once into batch-first tensors (tokens, log-mel frames or pixels) plus the
        pooling ``mask`` (bool, True = valid) where there is one."""
        if isinstance(items, (str, bytes)) or not len(items):
            raise ValueError("items must be a non-empty list of examples; wrap a single example as [example]")
        enc = self.encoder
        items = list(items)
        if self.kind == "text":
            tokens = enc.processor(items, padding=True, truncation=True, max_length=enc.max_length, return_tensors="pt")
            names = ("input_ids", "attention_mask", "token_type_ids")
            return {k: v for k, v in tokens.items() if k in names}
        chunks = [items[i : i + batch_size] for i in range(0, len(items), batch_size)]
        if self.kind == "whisper":
            pairs = [enc.preprocess(chunk) for chunk in chunks]
            return {"input_features": torch.cat([p[0] for p in pairs]), "mask": torch.cat([p[1] for p in pairs])}
        if self.kind == "efficientnet":
            return {"pixel_values": torch.cat([enc.preprocess(chunk) for chunk in chunks])}
        from densattn.encoders.inputs import to_rgb_uint8

        pixels = [
            enc.processor(images=[to_rgb_uint8(x) for x in c], return_tensors="pt")["pixel_values"] for c in chunks
        ]
        return {"pixel_values": torch.cat(pixels)}

    def pooled(self, inputs: dict[str, Tensor]) -> Tensor:
        """Last-layer pooled features ``(B, dim)`` (differentiable through the tuner's parameters)."""
        device = self.classifier.weight.device
        if self.kind == "text" and inputs["attention_mask"].device.type == "cpu":
            width = int(inputs["attention_mask"].sum(1).max())  # trim columns that are padding for the whole batch
            inputs = {k: v[:, :width] for k, v in inputs.items()}  # (on the CPU: no device sync)
        inputs = {k: to_device(v, device) for k, v in inputs.items()}
        if self.kind == "text":
            mask = inputs["attention_mask"].bool()  # (B, T)
            hidden = self.backbone(**inputs).last_hidden_state  # (B, T, D)
            return masked_mean(hidden[:, None], mask)[:, 0]  # (B, D)
        if self.kind == "whisper":
            extra = {"density_mask": inputs["mask"]} if self.tuner.method == "daam_peft" else {}  # valid frames
            hidden = self.backbone(inputs["input_features"], **extra).last_hidden_state  # (B, T, D), final norm
            return masked_mean(hidden[:, None], inputs["mask"])[:, 0]  # (B, D)
        if self.kind == "efficientnet":
            return self.backbone(inputs["pixel_values"])[-1].mean(dim=(2, 3))  # (B, C): last block, all pixels
        from densattn.encoders.hf import _pool

        return _pool(self.backbone(pixel_values=inputs["pixel_values"]).last_hidden_state, None)

    def set_input_stats(self, pooled: Tensor) -> None:
        """Standardise the classifier's input with the mean / std of pooled training features ``(N, dim)``."""
        self.input_mean.copy_(pooled.mean(0))
        self.input_std.copy_(pooled.std(0).clamp_min(1e-6))

    def forward(self, inputs: dict[str, Tensor]) -> Tensor:
        """Logits ``(B, num_classes)`` for a batch of prepared inputs."""
        z = (self.pooled(inputs) - self.input_mean) / self.input_std
        return self.classifier(self.dropout(z))

    @torch.no_grad()
    def predict(self, items: Sequence[Any], *, batch_size: int = 16) -> list[str]:
        """Class names for raw examples."""
        self.eval()
        inputs = self.prepare(items)
        logits = torch.cat([self(slice_inputs(inputs, i, i + batch_size)) for i in range(0, len(items), batch_size)])
        return [self.classes[i] for i in logits.argmax(-1).tolist()]

    def adapter_state_dict(self) -> dict[str, Tensor]:
        """The tuner's weights (peft's key names, prefixed ``tuner.``), the classifier and the standardisation."""
        state = {f"tuner.{k}": v for k, v in self.tuner.state_dict(self.backbone).items()}
        state.update({f"classifier.{k}": v for k, v in self.classifier.state_dict().items()})
        state.update(input_mean=self.input_mean, input_std=self.input_std)
        return {k: v.detach().cpu().clone().contiguous() for k, v in state.items()}

    def load_adapter_state_dict(self, state: dict[str, Tensor]) -> None:
        tuner = {k[len("tuner.") :]: v for k, v in state.items() if k.startswith("tuner.")}
        self.tuner.load_state_dict(self.backbone, tuner)
        classifier = {k[len("classifier.") :]: v for k, v in state.items() if k.startswith("classifier.")}
        self.classifier.load_state_dict(classifier, strict=True)
        self.input_mean.copy_(state["input_mean"])
        self.input_std.copy_(state["input_std"])

    def mark_trainable(self) -> None:
        """The tuner's parameters and the classifier (never the encoder's own weights)."""
        for name, p in self.named_parameters():
            p.requires_grad_(name in self._trainable)


def slice_inputs(inputs: dict[str, Tensor], start: int | Tensor, stop: int | None = None) -> dict[str, Tensor]:
    """Rows ``start:stop`` (or the index tensor ``start``) of every prepared input tensor.

    Example:
        >>> inputs = {"input_ids": torch.arange(8).view(4, 2), "attention_mask": torch.ones(4, 2, dtype=torch.bool)}
        >>> slice_inputs(inputs, 1, 3)["input_ids"].tolist()
        [[2, 3], [4, 5]]
        >>> {k: tuple(v.shape) for k, v in slice_inputs(inputs, torch.tensor([3, 0, 3])).items()}
        {'input_ids': (3, 2), 'attention_mask': (3, 2)}
    """
    if stop is None:
        return {k: v[start] for k, v in inputs.items()}
    return {k: v[start:stop] for k, v in inputs.items()}
