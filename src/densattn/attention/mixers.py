"""Token mixers: every self-attention of the family behind one contract.

Contract (DESIGN: token mixers share one forward)::

    mixer = create_attention(name, embed_dim=D, num_heads=H, **options)
    y = mixer(x, mask=mask)                          # x (B, L, D), mask (B, L) bool, True = keep -> y (B, L, D)
    y, weights = mixer(x, mask=mask, need_weights=True)

A padded token (mask False) is never read by a kept token: changing it does not change any kept token's output.
Its own output row is defined but meaningless. Weights are returned on request, never stored.

=======================  =========================================================  ==============================
name                     what mixes the tokens                                       weights
=======================  =========================================================  ==============================
``softmax``              ``softmax(QKᵀ/√d) V`` (SDPA)                                ``(B, H, L, L)``
``pb_relax``             the same, scores formed at ``1/α`` scale (CogView)          ``(B, H, L, L)``
``daam``                 DAAM gate over the token axis (Density Adaptive Transformer) ``(B, L, D)`` gate
``gqdaam``               DAAM over tokens, then grouped-query attention              ``(B, H, L, L)``
``quaternion_shared``    quaternion attention, one shared score map                  ``(B, H, L, L)``
``quaternion_hamilton``  quaternion attention, four Hamilton score maps              ``(B, 4, H, L, L)``
``clustered``            clustered attention (centroid queries)                      ``(B, H, L, L)``
``improved_clustered``   clustered + exact top-k keys per cluster                    ``(B, H, L, L)``
=======================  =========================================================  ==============================
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from densattn.attention.clustered import ClusteredAttention, ImprovedClusteredAttention
from densattn.attention.density import DensityAdaptiveAttention
from densattn.attention.gqa import GroupedQueryDensityAttention
from densattn.attention.pb_relax import pb_relax_attention
from densattn.attention.quaternion import QuaternionSelfAttention, _prepare_mask

__all__ = [
    "SoftmaxAttention",
    "PBRelaxAttention",
    "DensityTokenMixer",
    "GroupedQueryDensityMixer",
    "QuaternionMixer",
    "ClusteredMixer",
    "ImprovedClusteredMixer",
    "check_tokens",
]


def check_heads(embed_dim: int, num_heads: int) -> None:
    """Raise a ValueError unless ``num_heads`` is a positive int dividing ``embed_dim``."""
    if not isinstance(num_heads, int) or num_heads < 1 or embed_dim % num_heads:
        raise ValueError(f"num_heads={num_heads!r} must be a positive int dividing embed_dim={embed_dim}")


def check_tokens(x: Tensor, mask: Tensor | None, embed_dim: int) -> None:
    """Raise a ValueError unless ``x`` is ``(B, L, embed_dim)`` and ``mask`` None or bool ``(B, L)``."""
    if not isinstance(x, Tensor) or x.dim() != 3 or x.shape[-1] != embed_dim:
        raise ValueError(f"x must be (batch, tokens, {embed_dim}); got {tuple(getattr(x, 'shape', ()))}")
    if mask is not None and (mask.dtype != torch.bool or tuple(mask.shape) != tuple(x.shape[:2])):
        raise ValueError(
            f"mask must be a bool (batch, tokens) = {tuple(x.shape[:2])} key-padding mask with True = keep; "
            f"got {mask.dtype} {tuple(mask.shape)}"
        )


class SoftmaxAttention(nn.Module):
    """Multi-head scaled dot-product self-attention (Vaswani et al. 2017, https://arxiv.org/abs/1706.03762).

    ``y = W_o concat_h softmax(Q_h K_hᵀ / √d_h) V_h`` with ``Q, K, V = x W_{q,k,v}``; runs on
    ``F.scaled_dot_product_attention`` unless the weights are asked for. A batch element with no kept token
    gets a zero attention output.

    Args:
        embed_dim: model width ``D``, divisible by ``num_heads``.
        num_heads: heads ``H``.
        dropout: dropout on the attention map (training only).
        bias: biases in the projections.
        device, dtype: factory kwargs.

    Shapes:
        x ``(B, L, D)``, mask bool ``(B, L)`` True = keep -> ``(B, L, D)``; weights ``(B, H, L, L)``.

    Example:
        >>> attn = SoftmaxAttention(32, 4)
        >>> y, w = attn(torch.randn(2, 5, 32), mask=torch.ones(2, 5, dtype=torch.bool), need_weights=True)
        >>> y.shape, w.shape
        (torch.Size([2, 5, 32]), torch.Size([2, 4, 5, 5]))
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        *,
        dropout: float = 0.0,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        check_heads(embed_dim, num_heads)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        factory = {"device": device, "dtype": dtype}
        self.embed_dim, self.num_heads, self.head_dim = embed_dim, num_heads, embed_dim // num_heads
        self.dropout = dropout
        self.qkv_proj = nn.Linear(embed_dim, 3 * embed_dim, bias=bias, **factory)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias, **factory)

    def _core(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, need_weights: bool):
        attn_mask, keep_any = _prepare_mask(mask, q.shape[0], k.shape[2])
        p = self.dropout if self.training else 0.0
        weights = None
        if need_weights:
            scores = q @ k.transpose(-1, -2) / math.sqrt(self.head_dim)  # (B, H, L, L)
            if attn_mask is not None:
                scores = scores.masked_fill(~attn_mask, float("-inf"))
            weights = scores.softmax(-1)
            out = F.dropout(weights, p, self.training) @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=p)
        if keep_any is not None:
            out = out * keep_any
            weights = None if weights is None else weights * keep_any
        return out, weights

    def forward(
        self, x: Tensor, *, mask: Tensor | None = None, need_weights: bool = False
    ) -> Tensor | tuple[Tensor, Tensor]:
        check_tokens(x, mask, self.embed_dim)
        b, t, _ = x.shape
        qkv = self.qkv_proj(x).view(b, t, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, L, d_h)
        out, weights = self._core(q, k, v, mask, need_weights)
        y = self.out_proj(out.transpose(1, 2).reshape(b, t, self.embed_dim))  # (B, L, D)
        return (y, weights) if need_weights else y

    def extra_repr(self) -> str:
        return f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, dropout={self.dropout}"


class PBRelaxAttention(SoftmaxAttention):
    """Multi-head self-attention with CogView's PB-relax scores (https://arxiv.org/abs/2105.13290, eq. 5).

    Mathematically :class:`SoftmaxAttention`; the scores are formed as ``(Q/(α√d)) Kᵀ`` minus their row
    maximum, times ``α`` inside the softmax (:func:`densattn.attention.pb_relax.pb_relax_attention`), so float16
    scores up to ``α · 65504`` do not overflow.

    Args:
        alpha: relaxation factor (CogView: 32). Other arguments as :class:`SoftmaxAttention`.

    Example:
        >>> attn = PBRelaxAttention(32, 4, alpha=32.0)
        >>> attn(torch.randn(2, 5, 32)).shape
        torch.Size([2, 5, 32])
    """

    def __init__(self, embed_dim: int, num_heads: int, *, alpha: float = 32.0, **kwargs) -> None:
        super().__init__(embed_dim, num_heads, **kwargs)
        if not alpha > 0:
            raise ValueError(f"alpha must be > 0, got {alpha}")
        self.alpha = float(alpha)

    def _core(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, need_weights: bool):
        out, weights = pb_relax_attention(q, k, v, alpha=self.alpha, mask=mask, need_weights=True)
        if self.training and self.dropout > 0:
            out = F.dropout(weights, self.dropout) @ v
        return out, (weights if need_weights else None)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", alpha={self.alpha:g}"


class DensityTokenMixer(nn.Module):
    """DAAM over the token axis: the token mixer of the paper's Density Adaptive Transformer.

    ``v = x W_v``; per feature ``f``, ``μ_f, σ²_f`` = mean and variance of ``v[:, f]`` over the kept tokens;
    ``a = exp(-((v - μ - δ)/√(σ² + ε))² / (2 s))`` (preset ``"paper"``, learned ``δ, s`` per feature);
    ``y = (v ⊙ a) W_o``. Tokens interact only through the statistics, so the cost is ``O(L · D)``.
    Ioannides et al., https://arxiv.org/abs/2401.11143.

    Args:
        embed_dim: model width ``D``.
        num_heads: kept for the common contract and must divide ``embed_dim``. The statistics are per feature,
            so every feature already is its own head; the value does not change the math.
        num_gaussians, preset: DAAM options (:class:`~densattn.attention.DensityAdaptiveAttention`).
        bias: biases in the projections. device, dtype: factory kwargs.

    Shapes:
        x ``(B, L, D)`` (L >= 2), mask bool ``(B, L)`` -> ``(B, L, D)``; weights: the gate ``a`` ``(B, L, D)``.

    Example:
        >>> mixer = DensityTokenMixer(32, 4)
        >>> y, gate = mixer(torch.randn(2, 6, 32), need_weights=True)
        >>> y.shape, gate.shape
        (torch.Size([2, 6, 32]), torch.Size([2, 6, 32]))
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int = 1,
        *,
        num_gaussians: int = 1,
        preset: str = "paper",
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        check_heads(embed_dim, num_heads)
        factory = {"device": device, "dtype": dtype}
        self.embed_dim, self.num_heads = embed_dim, num_heads
        self.value_proj = nn.Linear(embed_dim, embed_dim, bias=bias, **factory)
        self.density = DensityAdaptiveAttention(
            embed_dim, num_heads=1, num_gaussians=num_gaussians, norm_dim=1, param_dim=-1, preset=preset, **factory
        )
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias, **factory)

    def forward(
        self, x: Tensor, *, mask: Tensor | None = None, need_weights: bool = False
    ) -> Tensor | tuple[Tensor, Tensor]:
        check_tokens(x, mask, self.embed_dim)
        gated, gate = self.density(self.value_proj(x), mask=mask, need_weights=True)  # (B, L, D) each
        y = self.out_proj(gated)
        return (y, gate) if need_weights else y


class GroupedQueryDensityMixer(GroupedQueryDensityAttention):
    """GQDAAM as a token mixer: ``embed_dim`` in and out, ``num_heads`` query heads.

    See :class:`~densattn.attention.GroupedQueryDensityAttention` (https://arxiv.org/abs/2401.11143). The weights
    returned are the attention maps ``(B, num_heads, L, L)``.

    Args:
        num_kv_heads: key/value heads; default ``num_heads // 2`` when ``num_heads`` is even, else 1.

    Example:
        >>> GroupedQueryDensityMixer(32, 4)(torch.randn(2, 6, 32)).shape
        torch.Size([2, 6, 32])
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        *,
        num_kv_heads: int | None = None,
        num_density_heads: int = 1,
        num_gaussians: int = 1,
        preset: str = "paper",
        dropout: float = 0.0,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        if num_kv_heads is None:
            num_kv_heads = num_heads // 2 if num_heads % 2 == 0 else 1
        super().__init__(
            embed_dim, embed_dim, num_query_heads=num_heads, num_kv_heads=num_kv_heads,
            num_density_heads=num_density_heads, num_gaussians=num_gaussians, preset=preset, dropout=dropout,
            bias=bias, device=device, dtype=dtype,
        )  # fmt: skip

    def forward(self, x: Tensor, *, mask: Tensor | None = None, need_weights: bool = False):
        check_tokens(x, mask, self.embed_dim)
        out = super().forward(x, mask=mask, need_weights=need_weights)
        return (out[0], out[2]) if need_weights else out


class QuaternionMixer(QuaternionSelfAttention):
    """:class:`~densattn.attention.QuaternionSelfAttention` with the keyword-only token-mixer forward.

    Example:
        >>> QuaternionMixer(32, 2, mode="hamilton")(torch.randn(2, 6, 32)).shape
        torch.Size([2, 6, 32])
    """

    def forward(self, x: Tensor, *, mask: Tensor | None = None, need_weights: bool = False):
        check_tokens(x, mask, self.embed_dim)
        return super().forward(x, mask=mask, need_weights=need_weights)


class _Seeded:
    """Clustering draws random hash planes; ``seed`` makes every forward draw the same ones."""

    def __init__(self, embed_dim: int, num_heads: int, *, seed: int | None = None, **kwargs) -> None:
        super().__init__(embed_dim, num_heads, **kwargs)
        self.seed = seed

    def forward(self, x, *, mask=None, need_weights=False, generator=None):
        check_tokens(x, mask, self.embed_dim)
        return super().forward(x, mask, need_weights, generator=self._generator(x, generator))

    def _generator(self, x: Tensor, generator: torch.Generator | None) -> torch.Generator | None:
        if generator is None and self.seed is not None:
            generator = torch.Generator(device=x.device).manual_seed(self.seed)
        return generator


class ClusteredMixer(_Seeded, ClusteredAttention):
    """:class:`~densattn.attention.ClusteredAttention` as a token mixer (https://arxiv.org/abs/2007.04825).

    Uses ``min(clusters, L)`` clusters. ``seed``: fix the hashing/k-means randomness of every call.

    Example:
        >>> ClusteredMixer(32, 4, clusters=100, seed=0)(torch.randn(2, 6, 32)).shape
        torch.Size([2, 6, 32])
    """


class ImprovedClusteredMixer(_Seeded, ImprovedClusteredAttention):
    """:class:`~densattn.attention.ImprovedClusteredAttention` as a token mixer (https://arxiv.org/abs/2007.04825).

    Uses ``min(clusters, L)`` clusters and ``min(topk, L)`` exact keys. ``seed`` as :class:`ClusteredMixer`.

    Example:
        >>> ImprovedClusteredMixer(32, 4, seed=0)(torch.randn(2, 6, 32)).shape
        torch.Size([2, 6, 32])
    """
