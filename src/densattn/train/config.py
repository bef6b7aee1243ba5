"""Optimisation settings shared by every training run: :class:`TrainConfig`."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch

__all__ = ["TrainConfig"]

NONFINITE_POLICIES = ("error", "skip-fold")
_DEVICE = re.compile(r"^(cpu|cuda(:\d+)?|auto)$")


@dataclass
class TrainConfig:
    """How a model is trained: AdamW with decoupled weight decay on weights only, ReduceLROnPlateau on the
    validation accuracy, early stopping, gradient clipping (after unscaling under AMP), validation carved from the
    training data.

    Attributes:
        epochs: maximum number of epochs.
        batch_size: examples per step (>= 1; a last batch of one example joins the previous batch).
        lr: learning rate.
        weight_decay: AdamW decay of weight matrices (never of biases, norms or DAAM offsets/spreads).
        loss: ``"ce"`` (cross-entropy) or ``"focal"`` (Lin et al. 2017, alpha ``focal_alpha``, gamma ``focal_gamma``).
        grad_clip: max gradient norm (0 disables clipping).
        early_stopping: epochs without a better validation score before stopping.
        plateau_patience, plateau_factor: ReduceLROnPlateau settings.
        val_fraction: share of each training fold carved out for validation (model selection).
        seed: base seed; fold k trains with ``seed + k``.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"`` (CUDA when available).
        amp: mixed precision on CUDA (float16 autocast with a gradient scaler); CPU runs are float32.
        on_nonfinite: what the fold runner does when a fold's loss or parameters turn NaN/inf: ``"error"`` stops the
            run (:class:`~densattn.train.loop.NonFiniteLossError`), ``"skip-fold"`` records the fold as failed and
            goes on. Non-finite parameters are never saved either way.

    Example:
        >>> TrainConfig(epochs=3, lr=1e-3).to_dict()["epochs"]
        3
        >>> TrainConfig(lr=0)
        Traceback (most recent call last):
        ...
        ValueError: lr must be a finite number > 0, got 0
    """

    epochs: int = 40
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-2
    loss: str = "ce"
    focal_alpha: float = 0.25
    focal_gamma: float = 2.5
    grad_clip: float = 1.0
    early_stopping: int = 8
    plateau_patience: int = 3
    plateau_factor: float = 0.5
    val_fraction: float = 0.15
    seed: int = 0
    device: str = "cpu"
    amp: bool = True
    on_nonfinite: str = "error"

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "early_stopping", "plateau_patience"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        for name in ("lr",):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0 < value < float("inf"):
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
        for name in ("weight_decay", "grad_clip"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if not 0 < self.plateau_factor < 1:
            raise ValueError(f"plateau_factor must be in (0, 1), got {self.plateau_factor}")
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        if self.loss not in ("ce", "focal"):
            raise ValueError(f"loss must be 'ce' or 'focal', got {self.loss!r}")
        if self.on_nonfinite not in NONFINITE_POLICIES:
            raise ValueError(f"on_nonfinite must be one of {NONFINITE_POLICIES}, got {self.on_nonfinite!r}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise ValueError(f"seed must be an int, got {self.seed!r}")
        if not isinstance(self.device, str) or not _DEVICE.match(self.device):
            raise ValueError(f"device must be 'cpu', 'cuda', 'cuda:N' or 'auto', got {self.device!r}")
        if self.device == "auto":
            self.device = "cuda" if torch.cuda.is_available() else "cpu"
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"device={self.device!r} but CUDA is not available here; use --device cpu (or auto)")

    def to_dict(self) -> dict[str, Any]:
        """All fields, JSON-ready."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError``."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"TrainConfig: unknown keys {unknown}; known: {sorted(names)}")
        return cls(**data)

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with ``changes`` applied (validated)."""
        return TrainConfig(**{**self.to_dict(), **changes})
