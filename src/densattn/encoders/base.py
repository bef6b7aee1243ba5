"""The frozen-encoder contract and the pooling every encoder shares.

An encoder adapter turns a batch of raw examples (texts, images, waveforms) into per-example, per-layer pooled
features ``(B, num_layers, dim)``: the input of a DAAM head (arXiv 2401.11143, Sec. 3: "encoder → hidden
states of every layer → pooled per layer"). Pooling is a mask-aware mean,

    pooled[b, l] = sum_t mask[b, t] * h[b, l, t] / sum_t mask[b, t],

so padding tokens / frames never enter the mean.

Example:
    >>> import torch
    >>> from densattn.encoders.base import masked_mean
    >>> hidden = torch.tensor([[[[1.0], [3.0], [100.0]]]])  # (B=1, L=1, T=3, D=1)
    >>> masked_mean(hidden, torch.tensor([[True, True, False]])).tolist()
    [[[2.0]]]
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch

from densattn.distributed import to_device

__all__ = [
    "EncoderAdapter",
    "Modality",
    "freeze",
    "masked_mean",
    "state_dict_sha256",
    "zero_pad_last",
]

Modality = Literal["text", "image", "audio"]


def masked_mean(hidden: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean over the time/token axis of stacked hidden states, counting only ``mask == True`` positions.

    Args:
        hidden: ``(B, L, T, D)`` hidden states of L layers.
        mask: ``(B, T)`` bool, True = keep; ``None`` averages over all T.

    Returns:
        ``(B, L, D)`` float32.

    Raises:
        ValueError: if an example has no valid position (checked when ``mask`` is on the CPU: on a GPU the check
            would stall the device every batch, so such a row pools to zeros there), or the shapes disagree.

    Example:
        >>> hidden = torch.arange(12.0).view(1, 2, 3, 2)  # (B=1, L=2, T=3, D=2)
        >>> masked_mean(hidden, torch.tensor([[True, False, True]])).tolist()  # mean of frames 0 and 2
        [[[2.0, 3.0], [8.0, 9.0]]]
        >>> masked_mean(hidden, None).tolist()  # every frame
        [[[2.0, 3.0], [8.0, 9.0]]]
        >>> masked_mean(hidden, torch.zeros(1, 3, dtype=torch.bool))
        Traceback (most recent call last):
        ...
        ValueError: an example has no valid token/frame to pool; pass non-empty inputs
    """
    hidden = hidden.float()
    if mask is None:
        return hidden.mean(dim=2)
    if mask.shape != (hidden.shape[0], hidden.shape[2]):
        raise ValueError(f"mask has shape {tuple(mask.shape)}, expected (B, T) = {(hidden.shape[0], hidden.shape[2])}")
    if mask.device.type == "cpu" and bool((mask.sum(dim=1) == 0).any()):
        raise ValueError("an example has no valid token/frame to pool; pass non-empty inputs")
    mask = to_device(mask, hidden.device).bool()
    counts = mask.sum(dim=1).clamp_min(1)  # (B,)
    weights = mask.to(hidden.dtype)[:, None, :, None]  # (B, 1, T, 1)
    # where() rather than multiply: padding holding inf/NaN must not leak into the sum.
    zero = torch.zeros((), dtype=hidden.dtype, device=hidden.device)
    summed = torch.where(weights > 0, hidden, zero).sum(dim=2)  # (B, L, D)
    return summed / counts.to(hidden.dtype)[:, None, None]  # (B, L, D)


def zero_pad_last(vectors: Sequence[torch.Tensor], dim: int) -> torch.Tensor:
    """Stack per-layer ``(B, d_l)`` vectors into ``(B, L, dim)``, zero-padding each to ``dim`` (a fixed,
    parameter-free map that keeps every value: layer l's features are the first ``d_l`` entries).

    Example:
        >>> stacked = zero_pad_last([torch.ones(2, 3), torch.full((2, 5), 2.0)], 5)  # CNN stages of width 3 and 5
        >>> stacked.shape, stacked[0].tolist()
        (torch.Size([2, 2, 5]), [[1.0, 1.0, 1.0, 0.0, 0.0], [2.0, 2.0, 2.0, 2.0, 2.0]])
    """
    padded = [torch.nn.functional.pad(v.float(), (0, dim - v.shape[-1])) for v in vectors]
    return torch.stack(padded, dim=1)  # (B, L, dim)


def freeze(module: torch.nn.Module) -> torch.nn.Module:
    """Put ``module`` in eval mode with ``requires_grad=False`` on every parameter; returns it.

    Example:
        >>> net = freeze(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.5)))
        >>> net.training, [p.requires_grad for p in net.parameters()]
        (False, [False, False])
    """
    module.eval()
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    return module


def state_dict_sha256(module: torch.nn.Module) -> str:
    """sha256 over the sorted state dict (names, dtypes, shapes and raw bytes): changes whenever any weight or
    buffer changes, whatever file it came from.

    Example:
        >>> a, b = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
        >>> _ = b.load_state_dict(a.state_dict())
        >>> state_dict_sha256(a) == state_dict_sha256(b), len(state_dict_sha256(a))
        (True, 64)
        >>> with torch.no_grad():
        ...     _ = b.bias[0].add_(1e-6)  # any change, however small
        >>> state_dict_sha256(a) == state_dict_sha256(b)
        False
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        if tensor.numel():
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class EncoderAdapter(torch.nn.Module):
    """A frozen encoder that returns per-layer, mask-aware mean-pooled features.

    Subclasses set ``name``, ``modality``, ``num_layers``, ``dim`` and implement :meth:`_encode` and
    :meth:`raw_model`. The module is always in eval mode with no trainable parameters; :meth:`train` is a
    no-op (keeps eval) so a surrounding ``model.train()`` cannot switch on dropout or BatchNorm updates.

    Attributes:
        name: registry name or HF id/path.
        modality: ``"text"``, ``"image"`` or ``"audio"``.
        num_layers: number of pooled layers L returned.
        dim: feature size d.

    Example:
        A toy text encoder: two "layers" of character statistics, pooled per text.

        >>> class CharStats(EncoderAdapter):
        ...     name, modality, num_layers, dim = "char-stats", "text", 2, 3
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.scale = torch.nn.Linear(1, 1)  # a (frozen) weight, so raw_model() has parameters
        ...     def raw_model(self):
        ...         return self.scale
        ...     def _encode(self, batch):
        ...         counts = torch.tensor([[len(t), t.count(" "), sum(c.isupper() for c in t)] for t in batch])
        ...         return torch.stack([counts, counts / max(len(t) for t in batch)], dim=1)  # (B, 2, 3)
        >>> encoder = freeze(CharStats())
        >>> encoder.encode(["Hi there", "ok"])[:, 0].tolist()
        [[8.0, 1.0, 1.0], [2.0, 0.0, 0.0]]
        >>> encoder.encode_all(["a", "b", "c"], batch_size=2).shape, encoder.train().training
        (torch.Size([3, 2, 3]), False)
        >>> sorted(encoder.identity())
        ['dim', 'encoder', 'num_layers', 'pooling', 'weights_sha256']
        >>> encoder.encode("Hi there")
        Traceback (most recent call last):
        ...
        ValueError: batch must be a non-empty list of examples; wrap a single example as [example]
    """

    name: str
    modality: Modality
    num_layers: int
    dim: int

    def __init__(self) -> None:
        super().__init__()
        self.training = False

    def train(self, mode: bool = True) -> EncoderAdapter:  # noqa: D102 - frozen by contract
        return super().train(False)

    def raw_model(self) -> torch.nn.Module:
        """The underlying frozen torch model (for LoRA and similar end-to-end baselines)."""
        raise NotImplementedError

    def settings(self) -> dict[str, Any]:
        """Options that change the features (window length, image size, max length...)."""
        return {}

    def identity(self) -> dict[str, Any]:
        """What determines the features: encoder name, weights hash, pooling and feature-changing settings.

        The hash covers the state dict actually loaded (so it changes when any weight changes)."""
        return {
            "encoder": self.name,
            "weights_sha256": state_dict_sha256(self.raw_model()),
            "pooling": "mean-masked",
            "num_layers": self.num_layers,
            "dim": self.dim,
            **self.settings(),
        }

    @property
    def device(self) -> torch.device:
        """Device of the encoder weights."""
        return next(self.raw_model().parameters()).device

    @torch.no_grad()
    def encode(self, batch: Sequence[Any], *, to_cpu: bool = True) -> torch.Tensor:
        """Encode one batch of raw examples.

        Args:
            batch: texts (str), images (uint8 ``(H, W, 3)`` / ``(H, W)`` arrays, PIL images or paths) or
                waveforms (float ``(T,)`` arrays at the encoder's sample rate), as the modality requires.
            to_cpu: return the features on the CPU (default); ``False`` leaves them on the encoder's device, so a
                caller gathering many batches (the feature cache) copies them back once, without stalling the
                device after every batch.

        Returns:
            ``(B, num_layers, dim)`` float32 (on the CPU unless ``to_cpu=False``).
        """
        if isinstance(batch, (str, np.ndarray)) or not len(batch):
            raise ValueError("batch must be a non-empty list of examples; wrap a single example as [example]")
        features = self._encode(list(batch)).float()
        return features.cpu() if to_cpu else features

    def forward(self, batch: Sequence[Any]) -> torch.Tensor:
        """Same as :meth:`encode`."""
        return self.encode(batch)

    @torch.no_grad()
    def encode_all(self, items: Sequence[Any], *, batch_size: int = 16) -> torch.Tensor:
        """Encode ``items`` in batches of ``batch_size``; returns ``(N, num_layers, dim)`` float32."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        chunks = [self.encode(items[i : i + batch_size]) for i in range(0, len(items), batch_size)]
        if not chunks:
            return torch.zeros(0, self.num_layers, self.dim)
        return torch.cat(chunks, dim=0)

    def _encode(self, batch: list[Any]) -> torch.Tensor:
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"name={self.name!r}, modality={self.modality!r}, num_layers={self.num_layers}, dim={self.dim}"
