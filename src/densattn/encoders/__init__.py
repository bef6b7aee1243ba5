"""Frozen encoders returning per-layer, mask-aware mean-pooled features ``(B, num_layers, dim)``.

Bundled offline encoders: ``"minilm"`` (text, 7 x 384), ``"whisper-tiny"`` (audio, 5 x 384) and
``"efficientnet-lite0"`` (image, 16 x 320); any other name is loaded as a Hugging Face checkpoint (a folder, or
a hub id already in the local cache: nothing is downloaded) with ``AutoModel``.

Example:
    >>> from densattn.encoders import get_encoder, list_encoders
    >>> list_encoders()
    ['efficientnet-lite0', 'minilm', 'whisper-tiny']
    >>> get_encoder("minilm").encode(["hello world"]).shape
    torch.Size([1, 7, 384])
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .base import EncoderAdapter, Modality, masked_mean
from .efficientnet import EfficientNetLite0, EfficientNetLite0Encoder
from .hf import HFEncoder, detect_modality, hub_snapshot
from .minilm import minilm_encoder
from .whisper import WhisperTinyEncoder

__all__ = [
    "EfficientNetLite0",
    "EfficientNetLite0Encoder",
    "EncoderAdapter",
    "HFEncoder",
    "Modality",
    "WhisperTinyEncoder",
    "detect_modality",
    "get_encoder",
    "list_encoders",
    "load_recorded_encoder",
    "masked_mean",
]

_BUNDLED: dict[str, Callable[..., EncoderAdapter]] = {
    "efficientnet-lite0": EfficientNetLite0Encoder,
    "minilm": minilm_encoder,
    "whisper-tiny": WhisperTinyEncoder,
}
_OPTIONS = {
    "efficientnet-lite0": {"image_size", "crop_fraction", "weights_path"},
    "minilm": {"max_length"},
    "whisper-tiny": {"window_seconds", "model_file"},
}


def list_encoders() -> list[str]:
    """Names of the bundled offline encoders (any HF folder or cached hub id works too).

    Example:
        >>> list_encoders()
        ['efficientnet-lite0', 'minilm', 'whisper-tiny']
    """
    return sorted(_BUNDLED)


def get_encoder(name: str | Path, *, device: str | torch.device = "cpu", **options: Any) -> EncoderAdapter:
    """A frozen encoder by name.

    Nothing is downloaded: a name is a bundled encoder, a local Hugging Face folder (with ``config.json``), or a
    hub id already in the local Hugging Face cache. Anything else fails at once, with the closest bundled names
    when it looks like a typo of one.

    Args:
        name: ``"minilm"``, ``"whisper-tiny"``, ``"efficientnet-lite0"``, a HF folder path, or a cached hub id.
        device: where the model runs.
        **options: ``minilm``: ``max_length`` (128); ``whisper-tiny``: ``window_seconds`` (8), ``model_file``;
            ``efficientnet-lite0``: ``image_size`` (112), ``crop_fraction`` (0.875), ``weights_path``;
            HF: ``modality``, ``max_length``, ``dtype``, ``name``.

    Raises:
        ValueError: unknown option for a bundled encoder, a folder without ``config.json``, or a name that is
            neither bundled, nor a folder, nor a cached hub id.

    Example:
        >>> get_encoder("minlm")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: encoder 'minlm' is not a bundled encoder (...); did you mean 'minilm'?
    """
    key = str(name)
    if key in _BUNDLED:
        unknown = set(options) - _OPTIONS[key]
        if unknown:
            raise ValueError(
                f"options {sorted(unknown)} are not valid for encoder {key!r}; valid: {sorted(_OPTIONS[key])}"
            )
        return _BUNDLED[key](device=device, **options)
    folder = Path(key).expanduser()
    if folder.is_dir():
        if not (folder / "config.json").is_file():
            raise ValueError(
                f"encoder folder {key!r} has no config.json, so it is not a Hugging Face model folder; point "
                "--encoder at a folder written by save_pretrained (config.json, weights, tokenizer or processor)"
            )
    elif folder.exists():
        raise ValueError(f"encoder {key!r} is a file; give the folder that holds its config.json and weights")
    elif hub_snapshot(key) is None:
        raise ValueError(_unknown_encoder(key))
    try:
        return HFEncoder(str(folder) if folder.is_dir() else key, device=device, **options)
    except (OSError, ValueError, KeyError) as error:
        raise ValueError(
            f"encoder {key!r} is not a bundled encoder ({', '.join(list_encoders())}) and could not be "
            f"loaded as a Hugging Face checkpoint: {str(error).splitlines()[0] if str(error) else error!r}"
        ) from error


def _unknown_encoder(key: str) -> str:
    import difflib

    close = difflib.get_close_matches(key.lower(), list_encoders(), n=3, cutoff=0.6)
    if close:
        return (
            f"encoder {key!r} is not a bundled encoder ({', '.join(list_encoders())}); did you mean "
            f"{' or '.join(repr(c) for c in close)}?"
        )
    looks_like_path = key.startswith((".", "/", "~")) or "\\" in key or key.count("/") > 1
    if looks_like_path:
        return f"encoder {key!r} is not a bundled encoder ({', '.join(list_encoders())}) and no such folder exists"
    return (
        f"encoder {key!r} is not a bundled encoder ({', '.join(list_encoders())}), an existing folder, or a hub id in "
        "the local Hugging Face cache; densattn never downloads, so fetch a hub model first (e.g. `hf download "
        f"{key}`) or give its folder"
    )


def load_recorded_encoder(info: dict[str, Any], *, device: str | torch.device = "cpu") -> EncoderAdapter:
    """Rebuild the encoder a run recorded (``{"name", "options", ...identity}``) and check it is the same one.

    Raises:
        ValueError: no encoder name is recorded, or the encoder rebuilt here differs from the recorded identity
            (other weights, e.g. another package version, or other settings).

    Example:
        >>> encoder = load_recorded_encoder({"name": "minilm", "options": {"max_length": 16}})  # nothing to check
        >>> encoder.name, encoder.max_length
        ('minilm', 16)
        >>> load_recorded_encoder({"name": "minilm", "weights_sha256": "0" * 64})  # not the weights installed here
        Traceback (most recent call last):
        ...
        ValueError: encoder 'minilm' as rebuilt here differs from ... trained on in ['weights_sha256'] (e.g. ...
    """
    name = info.get("name") or info.get("encoder")
    if not name:
        raise ValueError("the run records no encoder name, so it cannot be rebuilt; call the model on features instead")
    encoder = get_encoder(name, device=device, **(info.get("options") or {}))
    identity = encoder.identity()
    differs = sorted(k for k, v in identity.items() if k in info and info[k] != v)
    if differs:
        raise ValueError(
            f"encoder {name!r} as rebuilt here differs from the one the run was trained on in {differs} (e.g. "
            "another version of the package that ships its weights); install the same version, or pass the run's "
            "encoder options"
        )
    return encoder
