"""A trained fusion head over several encoders' features of the same examples: :class:`FusionAdapter`
(adapter type ``"fusion"``).

The examples are seen through M encoders (or M settings of one encoder): feature set m holds ``(N, L_m, d_m)``.
The training loop indexes one batch tensor, so the M feature sets travel packed in one ``(N, sum_m L_m * d_m)``
tensor (:meth:`FusionAdapter.pack`) that the adapter splits back before its :class:`~densattn.heads.FusionHead`.

Fusion methods: concat (late fusion), BAN (Kim et al. 2018, https://arxiv.org/abs/1805.07932) and MAN
(https://openreview.net/forum?id=dZ33IBX-uRm); see :mod:`densattn.heads.fusion`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from densattn.adapters.base import AdapterConfig, AdapterMixin
from densattn.heads.fusion import FUSION_METHODS, FusionHead

__all__ = ["FusionAdapter", "FusionConfig"]


@dataclass
class FusionConfig(AdapterConfig):
    """Config of a fusion head.

    Attributes:
        method: ``"concat"``, ``"ban"`` or ``"man"``.
        shapes: ``[(L_1, d_1), ..., (L_M, d_M)]`` per-modality feature shapes.
        classes: class names.
        fusion_options: further :class:`~densattn.heads.FusionHead` options.
        encoders: one identity dict per modality (what produced its features), in packing order.
        seed: seed of MAN's random features, so a saved config rebuilds the same module.

    Example:
        >>> config = FusionAdapter([(3, 8), (2, 4)], ["a", "b"], method="man", seed=5).get_config()
        >>> config.type, config.method, config.shapes, config.seed
        ('fusion', 'man', [[3, 8], [2, 4]], 5)
        >>> FusionConfig.from_dict(config.to_dict()) == config
        True
    """

    types: ClassVar[tuple[str, ...]] = ("fusion",)

    type: str = "fusion"
    method: str = "concat"
    shapes: list[list[int]] = field(default_factory=list)
    classes: list[str] = field(default_factory=list)
    fusion_options: dict[str, Any] = field(default_factory=dict)
    encoders: list[dict[str, Any]] = field(default_factory=list)
    seed: int = 0


class FusionAdapter(AdapterMixin, nn.Module):
    """A :class:`~densattn.heads.FusionHead` that reads its M modalities from one packed tensor.

    ``forward(x)`` takes ``x (B, sum_m L_m * d_m)``: modality m's ``(B, L_m, d_m)`` features flattened and
    concatenated in order (see :meth:`pack`); it returns the head's logits ``(B, C)``.

    Args:
        shapes: ``[(L_1, d_1), ..., (L_M, d_M)]`` per-modality feature shapes (M >= 2).
        classes: class names (C of them).
        method: ``"concat"``, ``"ban"`` or ``"man"``.
        fusion_options: further :class:`FusionHead` keyword options (``hidden``, ``glimpses``, ``num_heads``, ...);
            ``num_positions`` defaults to ``[L_1, ..., L_M]`` (a learned embedding per encoder layer).
        encoders: one identity dict per modality (what produced its features), stored with the adapter.
        seed: seeds MAN's random features (``generator``), so a saved config rebuilds the same module.

    Example:
        >>> model = FusionAdapter([(3, 8), (2, 4)], ["a", "b"], method="concat")
        >>> x = FusionAdapter.pack([torch.randn(5, 3, 8), torch.randn(5, 2, 4)])  # (5, 32)
        >>> model(x).shape
        torch.Size([5, 2])
    """

    config_class: ClassVar[type[FusionConfig]] = FusionConfig

    def __init__(
        self,
        shapes: Sequence[Sequence[int]],
        classes: Sequence[str],
        *,
        method: str = "concat",
        fusion_options: dict[str, Any] | None = None,
        encoders: Sequence[dict[str, Any]] | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.shapes = [(int(n), int(d)) for n, d in shapes]
        if len(self.shapes) < 2:
            raise ValueError(f"shapes must list at least two modalities' (L, d); got {self.shapes}")
        if method not in FUSION_METHODS:
            raise ValueError(f"method must be one of {FUSION_METHODS}; got {method!r}")
        if len(classes) < 2:
            raise ValueError(f"classes must name at least 2 classes, got {list(classes)!r}")
        self.method, self.classes, self.seed = method, list(classes), int(seed)
        self.fusion_options = dict(fusion_options or {})
        self.encoders = [dict(e) for e in (encoders or [{} for _ in self.shapes])]
        if len(self.encoders) != len(self.shapes):
            raise ValueError(
                f"encoders must give one entry per modality ({len(self.shapes)}); got {len(self.encoders)}"
            )
        options = {"num_positions": [n for n, _ in self.shapes], **self.fusion_options}
        self.head = FusionHead(
            [d for _, d in self.shapes],
            len(self.classes),
            method=method,
            generator=torch.Generator().manual_seed(self.seed),
            **options,
        )

    def get_config(self) -> FusionConfig:
        return FusionConfig(
            method=self.method,
            shapes=[list(s) for s in self.shapes],
            classes=list(self.classes),
            fusion_options=dict(self.fusion_options),
            encoders=[dict(e) for e in self.encoders],
            seed=self.seed,
        )

    @classmethod
    def from_config(cls, config: FusionConfig, *, device: str | torch.device = "cpu") -> FusionAdapter:
        model = cls(
            config.shapes,
            config.classes,
            method=config.method,
            fusion_options=config.fusion_options,
            encoders=config.encoders,
            seed=config.seed,
        )
        return model.to(device)

    @staticmethod
    def pack(features: Sequence[Tensor]) -> Tensor:
        """``[(B, L_m, d_m)]`` -> ``(B, sum_m L_m * d_m)``."""
        return torch.cat([f.reshape(f.shape[0], -1) for f in features], dim=-1)

    def unpack(self, x: Tensor) -> list[Tensor]:
        """Inverse of :meth:`pack` for this model's shapes."""
        sizes = [n * d for n, d in self.shapes]
        if x.dim() != 2 or x.shape[-1] != sum(sizes):
            raise ValueError(f"x must have shape (B, {sum(sizes)}) for shapes {self.shapes}; got {tuple(x.shape)}")
        return [
            part.reshape(x.shape[0], n, d)  # (B, L_m, d_m)
            for part, (n, d) in zip(x.split(sizes, dim=-1), self.shapes)
        ]

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(B, C)`` from packed features ``(B, sum_m L_m * d_m)``."""
        return self.head(*self.unpack(x))
