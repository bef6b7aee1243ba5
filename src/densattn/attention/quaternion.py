"""Quaternion self-attention: shared scores (one softmax) and the component-wise Hamilton baseline.

Features use the component-block layout ``[r | i | j | k]`` (see :mod:`densattn.attention.quaternion_linear`).
Head ``h`` of ``H`` holds whole quaternions: quaternion indices ``[h·d, (h+1)·d)`` of every component
block, with ``d = embed_dim / (4·H)``. Inside a head, ``q_t`` is a vector of ``d`` quaternions for token
``t``.

- ``"shared"`` (Yamauchi, Nitta, Tamori 2026, "Quaternion Self-Attention with Shared Scores",
  https://arxiv.org/abs/2605.24920): one real score per pair,
  ``S[t, s] = Re(sum_a q_t[a] ⊗ conj(k_s[a])) / sqrt(4d)``
  ``= (Q_r K_rᵀ + Q_i K_iᵀ + Q_j K_jᵀ + Q_k K_kᵀ)[t, s] / sqrt(4d)``,
  i.e. the dot product of the flattened heads; one softmax; the same map ``A`` weights all four value
  components.
  It runs on ``F.scaled_dot_product_attention``.
- ``"hamilton"`` (Tay et al. 2019, https://arxiv.org/abs/1906.04393): four score maps from the Hamilton
  product without conjugate, ``S_c[t, s] = (sum_a q_t[a] ⊗ k_s[a])_c / sqrt(4d)`` for ``c ∈ {r, i, j, k}``::

      S_r = Q_r K_rᵀ - Q_i K_iᵀ - Q_j K_jᵀ - Q_k K_kᵀ
      S_i = Q_r K_iᵀ + Q_i K_rᵀ + Q_j K_kᵀ - Q_k K_jᵀ
      S_j = Q_r K_jᵀ - Q_i K_kᵀ + Q_j K_rᵀ + Q_k K_iᵀ
      S_k = Q_r K_kᵀ + Q_i K_jᵀ - Q_j K_iᵀ + Q_k K_rᵀ

  four softmaxes ``A_c = softmax(S_c)``, and output component ``c`` is ``A_c V_c``.

Shared scores cost 4d multiplications per pair and one softmax; Hamilton scores 16d and four softmaxes.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from .quaternion_linear import QuaternionLinear, QuaternionRMSNorm

__all__ = [
    "QuaternionSelfAttention",
    "QuaternionFeedForward",
    "QuaternionTransformerEncoderLayer",
    "shared_score_attention",
    "hamilton_attention",
]

AttentionMode = Literal["shared", "hamilton"]

# Hamilton score S_c = sum_m SIGN[c, m] · Q_{PERM[c, m]} K_mᵀ
# (rows c = r, i, j, k; columns m = key component).
_PERM = torch.tensor([[0, 1, 2, 3], [1, 0, 3, 2], [2, 3, 0, 1], [3, 2, 1, 0]])
_SIGN = torch.tensor([[1.0, -1, -1, -1], [1, 1, -1, 1], [1, 1, 1, -1], [1, -1, 1, 1]])


def _prepare_mask(
    mask: torch.Tensor | None, batch: int, length: int
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Key-padding mask ``(B, L)`` → SDPA mask ``(B, 1, 1, L)`` and a ``(B, 1, 1, 1)`` keep-any factor.

    A batch element whose keys are all masked gets an all-True mask here and a zero output afterwards
    (instead of NaN from a softmax over nothing).
    """
    if mask is None:
        return None, None
    if mask.dtype != torch.bool or mask.shape != (batch, length):
        raise ValueError(
            f"mask must be a bool key-padding mask of shape (B, L) = ({batch}, {length}) with True = keep, "
            f"got dtype {mask.dtype} and shape {tuple(mask.shape)}."
        )
    keep_any = mask.any(dim=-1)[:, None, None, None]  # (B, 1, 1, 1)
    attn_mask = (mask | ~keep_any[:, :, 0, 0])[:, None, None, :]  # (B, 1, 1, L)
    return attn_mask, keep_any


def shared_score_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    need_weights: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Shared-score quaternion attention on head-split tensors.

    ``A = softmax(Re(q ⊗ conj(k)) / sqrt(4d))`` (one map per head), output ``O_c = A V_c`` for every
    component c.

    Args:
        q, k, v: ``(B, H, L, 4, d)`` (component axis before the quaternion index).
        mask: bool ``(B, L)`` key padding, True = keep.
        dropout_p: dropout on the attention map.
        need_weights: also return the map (before dropout).

    Returns:
        ``(out, weights)``: out ``(B, H, L, 4, d)``; weights ``(B, H, L, L)`` or ``None``.

    Example:
        >>> q = torch.randn(2, 3, 5, 4, 2)
        >>> out, w = shared_score_attention(q, q, q, need_weights=True)
        >>> out.shape, w.shape
        (torch.Size([2, 3, 5, 4, 2]), torch.Size([2, 3, 5, 5]))
    """
    B, H, L, _, d = q.shape
    attn_mask, keep_any = _prepare_mask(mask, B, k.shape[2])
    qf, kf, vf = (t.reshape(B, H, t.shape[2], 4 * d) for t in (q, k, v))  # (B, H, L, 4d)
    weights = None
    if need_weights:
        scores = qf @ kf.transpose(-2, -1) / math.sqrt(4 * d)  # (B, H, L, L)
        if attn_mask is not None:
            scores = scores.masked_fill(~attn_mask, float("-inf"))
        weights = scores.softmax(dim=-1)
        out = F.dropout(weights, dropout_p) @ vf if dropout_p > 0 else weights @ vf
    else:
        out = F.scaled_dot_product_attention(qf, kf, vf, attn_mask=attn_mask, dropout_p=dropout_p)
    if keep_any is not None:
        out = out * keep_any
        weights = weights * keep_any if weights is not None else None
    return out.view(B, H, L, 4, d), weights


def hamilton_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    need_weights: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Component-wise quaternion attention (Tay et al. 2019) on head-split tensors.

    ``S_c[t, s] = (sum_a q_t[a] ⊗ k_s[a])_c / sqrt(4d)`` (Hamilton product, no conjugate),
    ``A_c = softmax(S_c)``, output ``O_c = A_c V_c``. ``S_c = Q'_c K_flatᵀ`` with ``Q'_c`` a signed
    permutation of q's components (see the module docstring for the four formulas); the four ``Q'_c`` are
    stacked along the query axis so that one ``F.scaled_dot_product_attention`` call computes all four maps
    (each query row still has its own softmax), and row block c keeps only its value component c.

    Args:
        q, k, v: ``(B, H, L, 4, d)``.
        mask: bool ``(B, L)`` key padding, True = keep.
        dropout_p: dropout on the attention maps.
        need_weights: also return the maps (before dropout).

    Returns:
        ``(out, weights)``: out ``(B, H, L, 4, d)``; weights ``(B, 4, H, L, L)`` (component r, i, j, k
        first) or ``None``.

    Example:
        >>> q = torch.randn(2, 3, 5, 4, 2)
        >>> out, w = hamilton_attention(q, q, q, need_weights=True)
        >>> out.shape, w.shape
        (torch.Size([2, 3, 5, 4, 2]), torch.Size([2, 4, 3, 5, 5]))
    """
    B, H, L, _, d = q.shape
    S = k.shape[2]
    attn_mask, keep_any = _prepare_mask(mask, B, S)
    sign = _SIGN.to(device=q.device, dtype=q.dtype)[:, :, None]  # (4, 4, 1)
    q_mixed = q[:, :, :, _PERM.to(q.device)] * sign  # (B, H, L, 4c, 4m, d)
    q_mixed = q_mixed.permute(0, 1, 3, 2, 4, 5).reshape(B, H, 4 * L, 4 * d)  # (B, H, 4L, 4d), rows c·L + t
    kf = k.reshape(B, H, S, 4 * d)  # (B, H, S, 4d)
    if need_weights:
        scores = q_mixed @ kf.transpose(-2, -1) / math.sqrt(4 * d)  # (B, H, 4L, S)
        if attn_mask is not None:
            scores = scores.masked_fill(~attn_mask, float("-inf"))
        weights = scores.softmax(dim=-1)
        if keep_any is not None:
            weights = weights * keep_any
        maps = weights.view(B, H, 4, L, S)  # (B, H, 4, L, S)
        dropped = F.dropout(maps, dropout_p) if dropout_p > 0 else maps
        out = dropped @ v.permute(0, 1, 3, 2, 4)  # (B, H, 4, L, S) @ (B, H, 4, S, d) → (B, H, 4, L, d): A_c V_c
        return out.permute(0, 1, 3, 2, 4), maps.transpose(1, 2)  # (B, H, L, 4, d), (B, 4, H, L, S)
    # One SDPA call: the four maps share k and v, so their queries are stacked along the query axis. It weights
    # all 4d value columns and row block c keeps component c (O_c = A_c V_c): 3/4 of the value products are
    # discarded, which still beats materialising the four maps on CPU (benchmarks/quaternion_attention.py).
    vf = v.reshape(B, H, S, 4 * d)  # (B, H, S, 4d)
    out = F.scaled_dot_product_attention(q_mixed, kf, vf, attn_mask=attn_mask, dropout_p=dropout_p)
    if keep_any is not None:
        out = out * keep_any
    out = out.view(B, H, 4, L, 4, d).diagonal(dim1=2, dim2=4)  # (B, H, L, d, 4)
    return out.permute(0, 1, 2, 4, 3), None  # (B, H, L, 4, d)


class QuaternionSelfAttention(nn.Module):
    """Multi-head quaternion self-attention with quaternion q/k/v/out projections.

    ``Q, K, V = QuaternionLinear(x)``, split into heads of whole quaternions, attention by ``mode``
    (``"shared"``: :func:`shared_score_attention`, https://arxiv.org/abs/2605.24920; ``"hamilton"``:
    :func:`hamilton_attention`, https://arxiv.org/abs/1906.04393), heads merged back to component-block
    layout, then ``out_proj``.

    With ``rms_norm=True``, q and k are RMS-normalised per head over their ``4d`` values with one learnable
    gain per quaternion index (:class:`QuaternionRMSNorm`, shared by heads) before the scores; this is a real
    rescaling of each quaternion, so the shared scores stay invariant under a common unit-quaternion rotation.

    Args:
        embed_dim: model width, a multiple of ``4·num_heads``.
        num_heads: number of heads ``H``; each holds ``d = embed_dim / (4H)`` quaternions.
        mode: ``"shared"`` or ``"hamilton"``.
        dropout: dropout on the attention map(s), active in training mode.
        bias: biases in the four projections.
        rms_norm: QK RMS normalisation (see above).
        generator: seeds the projection initialisation.
        device, dtype: factory kwargs.

    Shapes:
        x ``(B, L, embed_dim)``; mask bool ``(B, L)``, True = keep (key padding; a batch element with no kept
        key gives a zero attention output); output ``(B, L, embed_dim)``; weights ``(B, H, L, L)`` (shared) or
        ``(B, 4, H, L, L)`` (hamilton, components r, i, j, k), returned only with ``need_weights=True``.

    Raises:
        ValueError: unknown mode, embed_dim not divisible by ``4·num_heads``, wrong input or mask shape.

    Example:
        >>> attn = QuaternionSelfAttention(32, 2, mode="shared", generator=torch.Generator().manual_seed(0))
        >>> y, w = attn(torch.randn(3, 7, 32), need_weights=True)
        >>> y.shape, w.shape
        (torch.Size([3, 7, 32]), torch.Size([3, 2, 7, 7]))
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        *,
        mode: AttentionMode = "shared",
        dropout: float = 0.0,
        bias: bool = True,
        rms_norm: bool = False,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if mode not in ("shared", "hamilton"):
            raise ValueError(f"mode must be 'shared' or 'hamilton', got {mode!r}.")
        if num_heads <= 0 or embed_dim <= 0 or embed_dim % (4 * num_heads) != 0:
            raise ValueError(
                f"embed_dim ({embed_dim}) must be a positive multiple of 4 * num_heads ({4 * num_heads}) "
                "so that every head holds whole quaternions; change embed_dim or num_heads."
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}.")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_quaternions = embed_dim // (4 * num_heads)
        self.mode = mode
        self.dropout = dropout
        kw = {"bias": bias, "generator": generator, "device": device, "dtype": dtype}
        self.q_proj = QuaternionLinear(embed_dim, embed_dim, **kw)
        self.k_proj = QuaternionLinear(embed_dim, embed_dim, **kw)
        self.v_proj = QuaternionLinear(embed_dim, embed_dim, **kw)
        self.out_proj = QuaternionLinear(embed_dim, embed_dim, **kw)
        if rms_norm:
            self.q_norm = QuaternionRMSNorm(4 * self.head_quaternions, device=device, dtype=dtype)
            self.k_norm = QuaternionRMSNorm(4 * self.head_quaternions, device=device, dtype=dtype)
        else:
            self.q_norm = self.k_norm = None

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        B, L, _ = x.shape
        x = x.view(B, L, 4, self.num_heads, self.head_quaternions)  # (B, L, 4, H, d)
        return x.permute(0, 3, 1, 2, 4)  # (B, H, L, 4, d)

    def _normalise(self, x: torch.Tensor, norm: QuaternionRMSNorm) -> torch.Tensor:
        shape = x.shape
        return norm(x.reshape(*shape[:3], -1)).view(shape)  # (B, H, L, 4d) → (B, H, L, 4, d)

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None = None, need_weights: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if x.dim() != 3 or x.shape[-1] != self.embed_dim:
            raise ValueError(f"x must have shape (B, L, {self.embed_dim}), got {tuple(x.shape)}.")
        B, L, E = x.shape
        q, k, v = (self._split(p(x)) for p in (self.q_proj, self.k_proj, self.v_proj))
        if self.q_norm is not None:
            q, k = self._normalise(q, self.q_norm), self._normalise(k, self.k_norm)
        attend = shared_score_attention if self.mode == "shared" else hamilton_attention
        p = self.dropout if self.training else 0.0
        out, weights = attend(q, k, v, mask=mask, dropout_p=p, need_weights=need_weights)
        out = out.permute(0, 2, 3, 1, 4).reshape(B, L, E)  # (B, H, L, 4, d) → (B, L, 4, H, d) → (B, L, E)
        out = self.out_proj(out)
        return (out, weights) if need_weights else out

    def extra_repr(self) -> str:
        return f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, mode={self.mode!r}, dropout={self.dropout}"


class QuaternionFeedForward(nn.Module):
    """Quaternion feed-forward network.

    ``QuaternionLinear(E → F) → GELU (per real value) → dropout → QuaternionLinear(F → E)``.

    Example:
        >>> QuaternionFeedForward(16, 32)(torch.randn(2, 3, 16)).shape
        torch.Size([2, 3, 16])
    """

    def __init__(
        self,
        embed_dim: int,
        feedforward_dim: int,
        *,
        dropout: float = 0.0,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        kw = {"generator": generator, "device": device, "dtype": dtype}
        self.fc1 = QuaternionLinear(embed_dim, feedforward_dim, **kw)
        self.fc2 = QuaternionLinear(feedforward_dim, embed_dim, **kw)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.dropout(F.gelu(self.fc1(x))))


class QuaternionTransformerEncoderLayer(nn.Module):
    """Pre-norm quaternion transformer encoder layer.

    ``x = x + drop(attn(norm1(x), mask))``; ``x = x + drop(ffn(norm2(x)))`` with :class:`QuaternionRMSNorm`,
    :class:`QuaternionSelfAttention` (``mode`` = ``"shared"``, https://arxiv.org/abs/2605.24920, or
    ``"hamilton"``, https://arxiv.org/abs/1906.04393) and :class:`QuaternionFeedForward`.

    Args:
        embed_dim: model width, a multiple of ``4·num_heads``.
        num_heads: attention heads.
        mode: ``"shared"`` or ``"hamilton"``.
        feedforward_dim: hidden width of the feed-forward (default ``4·embed_dim``; a multiple of 4).
        dropout: dropout on the attention maps and on both residual branches.
        rms_norm: QK RMS normalisation inside attention.
        generator: seeds every initialisation in the layer.
        device, dtype: factory kwargs.

    Shapes:
        x ``(B, L, embed_dim)``, mask bool ``(B, L)`` (True = keep) → ``(B, L, embed_dim)``.

    Example:
        >>> layer = QuaternionTransformerEncoderLayer(32, 2, mode="hamilton")
        >>> layer(torch.randn(2, 6, 32), mask=torch.ones(2, 6, dtype=torch.bool)).shape
        torch.Size([2, 6, 32])
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        *,
        mode: AttentionMode = "shared",
        feedforward_dim: int | None = None,
        dropout: float = 0.0,
        rms_norm: bool = False,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.norm1 = QuaternionRMSNorm(embed_dim, **factory)
        self.attn = QuaternionSelfAttention(
            embed_dim,
            num_heads,
            mode=mode,
            dropout=dropout,
            rms_norm=rms_norm,
            generator=generator,
            **factory,
        )
        self.norm2 = QuaternionRMSNorm(embed_dim, **factory)
        self.ffn = QuaternionFeedForward(
            embed_dim, feedforward_dim or 4 * embed_dim, dropout=dropout, generator=generator, **factory
        )
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.dropout(self.attn(self.norm1(x), mask=mask))
        return x + self.dropout(self.ffn(self.norm2(x)))
