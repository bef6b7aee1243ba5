"""A trained head with everything needed to reuse it: :class:`DensityAdapterModel`.

Saved as ``adapter_model.safetensors`` (head weights only, classifier included by construction) and
``adapter_config.json`` (head type and options, feature shape, class names, the encoder it was trained on), in the
spirit of HF PEFT's ``save_pretrained`` / ``from_pretrained``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import Tensor, nn

from densattn.data.cache import atomic_save_file, atomic_write_text
from densattn.heads import build_head, count_parameters

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"


class DensityAdapterModel(nn.Module):
    """A head on pooled features of a frozen encoder, with its class names and encoder identity.

    Example:
        >>> model = DensityAdapterModel("daam", num_layers=7, dim=384, classes=["a", "b"])
        >>> model(torch.randn(3, 7, 384)).shape
        torch.Size([3, 2])
    """

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
        self.head_type = head
        self.head_options = dict(head_options or {})
        self.num_layers, self.dim, self.classes = num_layers, dim, list(classes)
        self.encoder_info = dict(encoder or {})
        self.head = build_head(head, num_layers, dim, len(classes), **self.head_options)
        self._encoder = None

    @property
    def config(self) -> dict[str, Any]:
        return {
            "head": self.head_type,
            "head_options": self.head_options,
            "num_layers": self.num_layers,
            "dim": self.dim,
            "classes": self.classes,
            "encoder": self.encoder_info,
        }

    def forward(self, features: Tensor) -> Tensor:
        """Logits ``(B, num_classes)`` from features ``(B, num_layers, dim)``."""
        return self.head(features)

    @torch.no_grad()
    def predict(self, items: list[Any], batch_size: int = 16) -> list[str]:
        """Class names for raw items (texts, images, waveforms), encoded by the encoder the head was trained on."""
        if self._encoder is None:
            from densattn.encoders import get_encoder

            name = self.encoder_info.get("name") or self.encoder_info.get("encoder")
            if not name:
                raise ValueError("this adapter records no encoder name; call it on features instead")
            encoder = get_encoder(name, **self.encoder_info.get("options", {}))
            identity = encoder.identity()
            differs = [k for k, v in identity.items() if k in self.encoder_info and self.encoder_info[k] != v]
            if differs:
                raise ValueError(
                    f"encoder {name!r} as loaded here differs from the one this head was trained on in {differs}; "
                    "pass the training run's encoder options (adapter_config.json, 'encoder')"
                )
            self._encoder = encoder
        feats = torch.cat([self._encoder.encode(items[i : i + batch_size]) for i in range(0, len(items), batch_size)])
        self.eval()
        return [self.classes[i] for i in self(feats).argmax(-1).tolist()]

    def parameter_counts(self) -> dict[str, int]:
        return count_parameters(self.head)

    def save_pretrained(self, directory: str | Path) -> None:
        """Write ``adapter_model.safetensors`` and ``adapter_config.json`` (atomically) into ``directory``."""
        directory = Path(directory)
        state = {k: v.detach().cpu() for k, v in self.head.state_dict().items()}
        atomic_save_file(state, directory / WEIGHTS_NAME, metadata={"format": "pt"})
        atomic_write_text(directory / CONFIG_NAME, json.dumps(self.config, indent=2))

    @classmethod
    def from_pretrained(cls, directory: str | Path, *, is_trainable: bool = False) -> DensityAdapterModel:
        """Load a saved adapter; frozen and in eval mode unless ``is_trainable``."""
        directory = Path(directory)
        cfg_path, weights = directory / CONFIG_NAME, directory / WEIGHTS_NAME
        if not cfg_path.exists() or not weights.exists():
            raise FileNotFoundError(f"{directory} has no {CONFIG_NAME} + {WEIGHTS_NAME}; is it a densattn run?")
        cfg = json.loads(cfg_path.read_text())
        model = cls(
            cfg["head"],
            num_layers=cfg["num_layers"],
            dim=cfg["dim"],
            classes=cfg["classes"],
            head_options=cfg.get("head_options"),
            encoder=cfg.get("encoder"),
        )
        model.head.load_state_dict(load_file(str(weights)), strict=True)
        model.train(is_trainable)
        for p in model.parameters():
            p.requires_grad_(is_trainable)
        return model
