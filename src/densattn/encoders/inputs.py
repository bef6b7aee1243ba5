"""Turn raw examples into the arrays encoders expect: RGB uint8 images and float32 mono waveforms.

Example:
    >>> import numpy as np
    >>> from densattn.encoders.inputs import to_rgb_uint8
    >>> to_rgb_uint8(np.zeros((4, 5), dtype=np.uint8)).shape
    (4, 5, 3)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

__all__ = ["center_crop_resize", "to_rgb_uint8", "to_waveform"]


def to_rgb_uint8(item: Any) -> np.ndarray:
    """An image as a uint8 RGB array ``(H, W, 3)``.

    Accepts a path (alpha composited onto white), a PIL image, or a uint8 array ``(H, W)``, ``(H, W, 1)``,
    ``(H, W, 3)`` or ``(H, W, 4)`` (grey is repeated to RGB).

    Example:
        >>> rgba = np.zeros((1, 2, 4), dtype=np.uint8)
        >>> rgba[0, 0] = [255, 0, 0, 255]  # opaque red; pixel 1 is fully transparent
        >>> to_rgb_uint8(rgba).tolist()  # transparent -> white
        [[[255, 0, 0], [255, 255, 255]]]
        >>> to_rgb_uint8(Image.new("L", (3, 2), 7)).shape
        (2, 3, 3)
        >>> to_rgb_uint8(np.zeros((2, 2), dtype=np.float32))
        Traceback (most recent call last):
        ...
        ValueError: image array has dtype float32; pass uint8 0..255 (e.g. (x * 255).astype(np.uint8))
    """
    if isinstance(item, (str, Path)):
        with Image.open(item) as image:
            item = image.copy()
    if isinstance(item, Image.Image):
        if item.mode in ("RGBA", "LA", "P"):
            item = item.convert("RGBA")
            background = Image.new("RGBA", item.size, (255, 255, 255, 255))
            item = Image.alpha_composite(background, item)
        return np.asarray(item.convert("RGB"), dtype=np.uint8)
    if not isinstance(item, np.ndarray):
        raise ValueError(f"image of type {type(item).__name__}: pass a path, a PIL image or a uint8 numpy array")
    if item.dtype != np.uint8:
        raise ValueError(f"image array has dtype {item.dtype}; pass uint8 0..255 (e.g. (x * 255).astype(np.uint8))")
    if item.ndim == 2:
        item = item[:, :, None]
    if item.ndim != 3 or item.shape[2] not in (1, 3, 4):
        raise ValueError(f"image array has shape {item.shape}; expected (H, W), (H, W, 1), (H, W, 3) or (H, W, 4)")
    if item.shape[2] == 1:
        item = np.repeat(item, 3, axis=2)
    elif item.shape[2] == 4:
        alpha = item[:, :, 3:4].astype(np.float32) / 255.0
        item = np.round(item[:, :, :3] * alpha + 255.0 * (1.0 - alpha)).astype(np.uint8)
    return np.ascontiguousarray(item)


def center_crop_resize(image: np.ndarray, size: int, *, crop_fraction: float = 1.0) -> np.ndarray:
    """Resize the shorter side to ``round(size / crop_fraction)`` (bicubic) and take the central ``size x
    size`` square (``crop_fraction=0.875``: the usual ImageNet evaluation crop, 256 -> 224).

    Shapes:
        ``(H, W, 3)`` uint8 -> ``(size, size, 3)`` uint8.

    Example:
        >>> image = np.zeros((40, 80, 3), dtype=np.uint8)
        >>> image[:, 36:44] = 255  # a white band of 8 columns in the middle
        >>> out = center_crop_resize(image, 16, crop_fraction=0.5)  # (40, 80) -> (32, 64), then the central 16x16
        >>> out.shape, out[8, :, 0].tolist()  # the band, now 8 * 64 / 80 = 6.4 columns wide
        ((16, 16, 3), [0, 0, 0, 0, 47, 255, 255, 255, 255, 255, 255, 47, 0, 0, 0, 0])
    """
    if not 0.0 < crop_fraction <= 1.0:
        raise ValueError(f"crop_fraction must be in (0, 1], got {crop_fraction}")
    height, width = image.shape[:2]
    scale = round(size / crop_fraction) / min(height, width)
    new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
    resized = Image.fromarray(image).resize((new_w, new_h), Image.BICUBIC)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return np.asarray(resized.crop((left, top, left + size, top + size)), dtype=np.uint8)


def to_waveform(item: Any, sample_rate: int) -> np.ndarray:
    """A waveform as float32 mono ``(T,)``; a path is read with soundfile and resampled to ``sample_rate``.

    Example:
        >>> to_waveform(np.zeros((1, 5), dtype=np.float64), 16000).dtype, to_waveform([0.5, -0.5], 16000).shape
        (dtype('float32'), (2,))
        >>> to_waveform(np.zeros((2, 5)), 16000)
        Traceback (most recent call last):
        ...
        ValueError: waveform has shape (2, 5); pass a mono (T,) array at 16000 Hz
    """
    if isinstance(item, (str, Path)):
        import librosa
        import soundfile

        data, rate = soundfile.read(str(item), dtype="float32", always_2d=True)
        item = data.mean(axis=1)
        if rate != sample_rate:
            item = librosa.resample(item, orig_sr=rate, target_sr=sample_rate)
    item = np.asarray(item)
    if item.ndim == 2 and 1 in item.shape:
        item = item.reshape(-1)
    if item.ndim != 1:
        raise ValueError(f"waveform has shape {item.shape}; pass a mono (T,) array at {sample_rate} Hz")
    if item.size == 0:
        raise ValueError("waveform is empty; pass at least one sample")
    if not np.issubdtype(item.dtype, np.floating):
        raise ValueError(f"waveform has dtype {item.dtype}; pass float samples in [-1, 1]")
    return item.astype(np.float32, copy=False)
