"""Quaternion linear layer and quaternion RMS norm.

Layout: a feature axis of size ``4n`` holds ``n`` quaternions in component blocks ``[r | i | j | k]``,
i.e. feature ``c * n + a`` is component ``c`` (0 = r, 1 = i, 2 = j, 3 = k) of quaternion ``a``.

Hamilton product of ``p = (a1, b1, c1, d1)`` and ``q = (a2, b2, c2, d2)``::

    r = a1 a2 - b1 b2 - c1 c2 - d1 d2
    i = a1 b2 + b1 a2 + c1 d2 - d1 c2
    j = a1 c2 - b1 d2 + c1 a2 + d1 b2
    k = a1 d2 + b1 c2 - c1 b2 + d1 a2

References: Parcollet et al. 2019, "Quaternion Recurrent Neural Networks",
https://arxiv.org/abs/1806.04418 (layer and initialisation); Tay et al. 2019, "Lightweight and Efficient
Neural Natural Language Processing with Quaternion Networks", https://arxiv.org/abs/1906.04393.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["QuaternionLinear", "QuaternionRMSNorm", "hamilton_matrix"]

WeightInit = Literal["quaternion", "uniform"]
InitCriterion = Literal["glorot", "he"]


def hamilton_matrix(
    weight_r: torch.Tensor, weight_i: torch.Tensor, weight_j: torch.Tensor, weight_k: torch.Tensor
) -> torch.Tensor:
    """Real ``(4·out, 4·in)`` matrix of the map ``x ↦ W ⊗ x`` (weight on the left) in component-block layout.

    Rows are output blocks ``[r; i; j; k]``, columns input blocks ``[r, i, j, k]``::

        [[Wr, -Wi, -Wj, -Wk],
         [Wi,  Wr, -Wk,  Wj],
         [Wj,  Wk,  Wr, -Wi],
         [Wk, -Wj,  Wi,  Wr]]

    Args:
        weight_r, weight_i, weight_j, weight_k: the four components, each ``(out_q, in_q)``.

    Returns:
        Tensor of shape ``(4·out_q, 4·in_q)``.

    Example:
        >>> w = [torch.randn(2, 3) for _ in range(4)]
        >>> hamilton_matrix(*w).shape
        torch.Size([8, 12])
    """
    r, i, j, k = weight_r, weight_i, weight_j, weight_k
    rows = (
        torch.cat([r, -i, -j, -k], dim=1),
        torch.cat([i, r, -k, j], dim=1),
        torch.cat([j, k, r, -i], dim=1),
        torch.cat([k, -j, i, r], dim=1),
    )
    return torch.cat(rows, dim=0)


def _check_divisible(name: str, value: int) -> None:
    if value <= 0 or value % 4 != 0:
        raise ValueError(
            f"{name} must be a positive multiple of 4 (it holds [r | i | j | k] component blocks), "
            f"got {value}; "
            f"choose {name} = 4 * (number of quaternions)."
        )


class QuaternionLinear(nn.Module):
    """Quaternion fully connected layer: ``y[b] = sum_a W[b, a] ⊗ x[a] + bias``.

    ``⊗`` is the Hamilton product with the weight on the left. Input and output use the component-block layout
    ``[r | i | j | k]`` along the last axis. The layer holds ``in_features · out_features / 4`` weights
    (a quarter of a real ``nn.Linear``) plus ``out_features`` real biases; it runs as one ``F.linear`` with
    the real matrix :func:`hamilton_matrix`.

    Initialisation (Parcollet et al. 2019, https://arxiv.org/abs/1806.04418): with ``n_in = in/4``,
    ``n_out = out/4`` and ``s = 1/sqrt(2 (n_in + n_out))`` (``"glorot"``) or ``s = 1/sqrt(2 n_in)``
    (``"he"``); the expected squared modulus of a weight is ``4 s²``:

    - ``"quaternion"``: ``W = |W| (cos θ + u sin θ)`` with modulus ``|W| ~ s · chi(4)``, phase
      ``θ ~ U(-π, π)`` and ``u`` a uniformly random pure unit quaternion (axis);
    - ``"uniform"``: each component ``~ U(-s√3, s√3)`` (the same variance per component).

    Randomness comes only from ``generator`` (the global RNG when it is ``None``). Biases start at 0.

    Args:
        in_features: input size, a multiple of 4.
        out_features: output size, a multiple of 4.
        bias: add a learnable real bias of size ``out_features``.
        weight_init: ``"quaternion"`` or ``"uniform"``.
        init_criterion: ``"glorot"`` or ``"he"``.
        generator: ``torch.Generator`` used for initialisation.
        device, dtype: factory kwargs.

    Shapes:
        input ``(..., in_features)`` → output ``(..., out_features)``.

    Raises:
        ValueError: if a feature size is not a positive multiple of 4 or an init option is unknown.

    Example:
        >>> layer = QuaternionLinear(8, 12, generator=torch.Generator().manual_seed(0))
        >>> layer(torch.randn(2, 5, 8)).shape
        torch.Size([2, 5, 12])
        >>> sum(p.numel() for p in layer.parameters())  # 8 * 12 / 4 weights + 12 biases
        36
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        weight_init: WeightInit = "quaternion",
        init_criterion: InitCriterion = "glorot",
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        _check_divisible("in_features", in_features)
        _check_divisible("out_features", out_features)
        if weight_init not in ("quaternion", "uniform"):
            raise ValueError(f"weight_init must be 'quaternion' or 'uniform', got {weight_init!r}.")
        if init_criterion not in ("glorot", "he"):
            raise ValueError(f"init_criterion must be 'glorot' or 'he', got {init_criterion!r}.")
        self.in_features = in_features
        self.out_features = out_features
        self.weight_init = weight_init
        self.init_criterion = init_criterion
        factory = {"device": device, "dtype": dtype}
        shape = (out_features // 4, in_features // 4)
        self.weight_r = nn.Parameter(torch.empty(shape, **factory))
        self.weight_i = nn.Parameter(torch.empty(shape, **factory))
        self.weight_j = nn.Parameter(torch.empty(shape, **factory))
        self.weight_k = nn.Parameter(torch.empty(shape, **factory))
        self.bias = nn.Parameter(torch.empty(out_features, **factory)) if bias else None
        self.reset_parameters(generator=generator)

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Re-draw the weights (see the class docstring); randomness only from ``generator``."""
        n_out, n_in = self.weight_r.shape
        if self.init_criterion == "glorot":
            s = 1.0 / math.sqrt(2.0 * (n_in + n_out))
        else:
            s = 1.0 / math.sqrt(2.0 * n_in)
        shape = (n_out, n_in)
        # Draw in float32 on CPU so a given generator gives the same weights on every device and dtype.
        if self.weight_init == "quaternion":
            modulus = s * torch.randn((4, *shape), generator=generator).norm(dim=0)  # chi(4) · s
            phase = (torch.rand(shape, generator=generator) * 2.0 - 1.0) * math.pi
            axis = torch.randn((3, *shape), generator=generator)
            axis = axis / axis.norm(dim=0).clamp_min(1e-12)  # uniform on the unit sphere
            sin = modulus * torch.sin(phase)
            parts = (modulus * torch.cos(phase), sin * axis[0], sin * axis[1], sin * axis[2])
        else:
            bound = s * math.sqrt(3.0)
            parts = tuple((torch.rand(shape, generator=generator) * 2.0 - 1.0) * bound for _ in range(4))
        for weight, value in zip((self.weight_r, self.weight_i, self.weight_j, self.weight_k), parts):
            weight.copy_(value)
        if self.bias is not None:
            self.bias.zero_()

    def real_weight(self) -> torch.Tensor:
        """The equivalent real ``(out_features, in_features)`` weight matrix (see :func:`hamilton_matrix`)."""
        return hamilton_matrix(self.weight_r, self.weight_i, self.weight_j, self.weight_k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"x must have {self.in_features} features on its last axis, got shape {tuple(x.shape)}.")
        return F.linear(x, self.real_weight(), self.bias)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, "
            f"weight_init={self.weight_init!r}, init_criterion={self.init_criterion!r}"
        )


class QuaternionRMSNorm(nn.Module):
    """RMS norm over quaternion moduli with one real gain per quaternion.

    Precisely, for ``n`` quaternions ``x[a]`` in component-block layout,
    ``rms = sqrt(sum_a |x[a]|² / (4n) + eps)`` and ``y[a] = g[a] · x[a] / rms`` with one real gain ``g[a]``
    per quaternion (init 1), shared by its four components. Scaling a quaternion by a real number keeps its
    axis and phase, so the norm commutes with left or right multiplication of every quaternion by one unit
    quaternion.

    Args:
        features: size of the normalised last axis (``4n``).
        eps: added to the mean square.
        device, dtype: factory kwargs.

    Shapes:
        ``(..., features)`` → same shape.

    Example:
        >>> norm = QuaternionRMSNorm(8)
        >>> norm(torch.randn(3, 8)).shape
        torch.Size([3, 8])
    """

    def __init__(
        self,
        features: int,
        *,
        eps: float = 1e-6,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        _check_divisible("features", features)
        self.features = features
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(features // 4, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.features:
            raise ValueError(f"x must have {self.features} features on its last axis, got shape {tuple(x.shape)}.")
        gain = self.weight.repeat(4)  # (features,) the same gain for r, i, j, k of a quaternion
        return F.rms_norm(x, (self.features,), gain, self.eps)

    def extra_repr(self) -> str:
        return f"features={self.features}, eps={self.eps}"
