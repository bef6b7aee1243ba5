"""A trained head with everything needed to reuse it: :class:`DensityAdapterModel` (adapter type ``"head"``).

Saved through :class:`~densattn.adapters.base.AdapterMixin`: ``adapter_model.safetensors`` (the head's weights and
input statistics, classifier included) and ``adapter_config.json`` (:class:`HeadConfig`: head type, the options that
rebuild it exactly, feature shape, class names, the encoder it was trained on).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from densattn.adapters.base import AdapterConfig, AdapterMixin
from densattn.heads import build_head

__all__ = ["DensityAdapterModel", "HeadConfig"]


@dataclass
class HeadConfig(AdapterConfig):
    """Config of a head on pooled per-layer features.

    Attributes:
        head: ``daam``, ``gqdaam``, ``mha``, ``mha_bn``, ``conv``, ``pool`` or ``linear``.
        num_layers, dim: the feature shape ``(L, d)`` the head reads.
        classes: class names, in label order.
        head_options: the options that rebuild the head (defaults resolved, e.g. the selected probe layer).
        encoder: identity of the frozen encoder that produced the features (``name``, ``options``, weights hash).

    Example:
        >>> config = DensityAdapterModel("linear", num_layers=7, dim=16, classes=["a", "b"]).get_config()
        >>> config.head, (config.num_layers, config.dim), sorted(config.head_options)
        ('linear', (7, 16), ['layer'])
        >>> DensityAdapterModel.from_config(config).get_config() == config
        True
    """

    types: ClassVar[tuple[str, ...]] = ("head",)

    type: str = "head"
    head: str = "daam"
    num_layers: int = 0
    dim: int = 0
    classes: list[str] = field(default_factory=list)
    head_options: dict[str, Any] = field(default_factory=dict)
    encoder: dict[str, Any] = field(default_factory=dict)


class DensityAdapterModel(AdapterMixin, nn.Module):
    """A head on pooled features of a frozen encoder, with its class names and encoder identity.

    Args:
        head: head type (see :func:`densattn.heads.build_head`).
        num_layers, dim: feature shape ``(L, d)``.
        classes: class names (at least 2).
        head_options: options of the head.
        encoder: identity of the encoder the features come from (used by :meth:`predict`).

    Shapes:
        ``forward(features (B, L, d)) -> logits (B, len(classes))``

    Example:
        >>> model = DensityAdapterModel("daam", num_layers=7, dim=384, classes=["a", "b"])
        >>> model(torch.randn(3, 7, 384)).shape
        torch.Size([3, 2])
        >>> model.get_config().head_options["num_heads"]
        1
    """

    config_class: ClassVar[type[HeadConfig]] = HeadConfig

    def __init__(
        self,
        head: str,
        *,
        num_layers: int,
        dim: int,
        classes: list[str],
        head_options: dict[str, Any] | None = None,
        encoder: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if len(classes) < 2:
            raise ValueError(f"classes must name at least 2 classes, got {list(classes)!r}")
        self.head_type = head
        self.num_layers, self.dim, self.classes = num_layers, dim, list(classes)
        self.encoder_info = dict(encoder or {})
        self.head = build_head(head, num_layers, dim, len(classes), **dict(head_options or {}))
        self._encoder = None

    def get_config(self) -> HeadConfig:
        return HeadConfig(
            head=self.head_type,
            num_layers=self.num_layers,
            dim=self.dim,
            classes=list(self.classes),
            head_options=self.head.get_options(),
            encoder=dict(self.encoder_info),
        )

    @classmethod
    def from_config(cls, config: HeadConfig, *, device: str | torch.device = "cpu") -> DensityAdapterModel:
        model = cls(
            config.head,
            num_layers=config.num_layers,
            dim=config.dim,
            classes=config.classes,
            head_options=config.head_options,
            encoder=config.encoder,
        )
        return model.to(device)

    def forward(self, features: Tensor) -> Tensor:
        """Logits ``(B, num_classes)`` from features ``(B, num_layers, dim)``."""
        return self.head(features)

    def encoder(self):
        """The frozen encoder the head was trained on, rebuilt from its recorded identity (loaded once).

        Raises:
            ValueError: no encoder is recorded, or the one rebuilt here has other weights or settings.
        """
        if self._encoder is None:
            from densattn.encoders import load_recorded_encoder

            self._encoder = load_recorded_encoder(self.encoder_info)
        return self._encoder

    @torch.no_grad()
    def predict(self, items: list[Any], *, batch_size: int = 16) -> list[str]:
        """Class names for raw items (texts, images, waveforms), encoded by the encoder the head was trained on."""
        encoder = self.encoder()
        feats = torch.cat([encoder.encode(items[i : i + batch_size]) for i in range(0, len(items), batch_size)])
        self.eval()
        device = next(self.parameters()).device
        return [self.classes[i] for i in self(feats.to(device)).argmax(-1).tolist()]
