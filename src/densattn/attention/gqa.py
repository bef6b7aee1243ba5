"""Grouped-query density-adaptive attention (GQDAAM).

DAAM over the items of the norm axis, a linear map ``d -> embed_dim``, then grouped-query self-attention (GQA,
Ainslie et al. 2023, arXiv `2305.13245 <https://arxiv.org/abs/2305.13245>`_) with those items as tokens.
Paper: arXiv `2401.11143 <https://arxiv.org/abs/2401.11143>`_ (GQDAAM). Unlike the paper's script, attention is
scaled once by ``1/sqrt(head_dim)`` and every query head keeps its own map (heads are concatenated, not summed).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from densattn.attention.density import DensityAdaptiveAttention


class GroupedQueryDensityAttention(nn.Module):
    """DAAM, then ``Linear(num_features -> embed_dim)``, then grouped-query self-attention over the tokens.

    ``num_query_heads`` query heads share ``num_kv_heads`` key/value heads (query head ``h`` reads kv head
    ``h // (num_query_heads // num_kv_heads)``)::

        A_h = softmax(Q_h K_g^T / sqrt(head_dim)),  out = concat_h(A_h V_g) W_o

    Args:
        num_features: feature size ``d`` of the input ``(B, T, d)``.
        embed_dim: attention width ``e``; divisible by ``num_query_heads``.
        num_query_heads, num_kv_heads: GQA head counts; ``num_kv_heads`` divides ``num_query_heads``.
        num_density_heads, num_gaussians, preset: options of the DAAM stage (norm axis = tokens).
        dropout: attention dropout (training only).

    Shapes:
        x ``(B, T, num_features)``, mask ``(B, T)`` bool True = keep -> ``(B, T, embed_dim)``; with
        ``need_weights`` also the DAAM weights ``(B, T, num_features)`` and the maps ``(B, num_query_heads, T, T)``.

    Example:
        >>> attn = GroupedQueryDensityAttention(384, 128, num_query_heads=8, num_kv_heads=2)
        >>> attn(torch.randn(2, 7, 384)).shape
        torch.Size([2, 7, 128])
    """

    def __init__(
        self,
        num_features: int,
        embed_dim: int,
        *,
        num_query_heads: int = 8,
        num_kv_heads: int = 2,
        num_density_heads: int = 1,
        num_gaussians: int = 1,
        preset: str = "paper",
        dropout: float = 0.0,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        for name, value in (("num_query_heads", num_query_heads), ("num_kv_heads", num_kv_heads)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if num_query_heads % num_kv_heads:
            raise ValueError(
                f"num_kv_heads={num_kv_heads} must divide num_query_heads={num_query_heads} (each group of query "
                "heads shares one key/value head); pick e.g. num_kv_heads=1 or num_kv_heads=num_query_heads"
            )
        if embed_dim % num_query_heads:
            raise ValueError(f"embed_dim={embed_dim} must be divisible by num_query_heads={num_query_heads}")
        factory = {"device": device, "dtype": dtype}
        self.num_query_heads = num_query_heads
        self.num_kv_heads = num_kv_heads
        self.head_dim = embed_dim // num_query_heads
        self.embed_dim = embed_dim
        self.dropout = dropout
        self.density = DensityAdaptiveAttention(
            num_features,
            num_heads=num_density_heads,
            num_gaussians=num_gaussians,
            norm_dim=1,
            preset=preset,
            **factory,
        )
        self.in_proj = nn.Linear(num_features, embed_dim, bias=bias, **factory)
        self.q_proj = nn.Linear(embed_dim, embed_dim, bias=bias, **factory)
        self.k_proj = nn.Linear(embed_dim, num_kv_heads * self.head_dim, bias=bias, **factory)
        self.v_proj = nn.Linear(embed_dim, num_kv_heads * self.head_dim, bias=bias, **factory)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias, **factory)

    def forward(
        self, x: Tensor, mask: Tensor | None = None, need_weights: bool = False
    ) -> Tensor | tuple[Tensor, Tensor, Tensor]:
        if x.dim() != 3:
            raise ValueError(f"x must be (batch, tokens, features), got shape {tuple(x.shape)}")
        if mask is not None and (mask.dtype != torch.bool or tuple(mask.shape) != tuple(x.shape[:2])):
            raise ValueError(f"mask must be a bool (batch, tokens) tensor {tuple(x.shape[:2])}, True = keep")
        b, t, _ = x.shape
        gated, density_weights = self.density(x, mask=mask, need_weights=True)
        h = self.in_proj(gated)  # (B, T, e)
        q = self.q_proj(h).view(b, t, self.num_query_heads, self.head_dim).transpose(1, 2)  # (B, Hq, T, hd)
        k = self.k_proj(h).view(b, t, self.num_kv_heads, self.head_dim).transpose(1, 2)  # (B, Hkv, T, hd)
        v = self.v_proj(h).view(b, t, self.num_kv_heads, self.head_dim).transpose(1, 2)
        group = self.num_query_heads // self.num_kv_heads
        k = k.repeat_interleave(group, dim=1)  # (B, Hq, T, hd): query head h reads kv head h // group
        v = v.repeat_interleave(group, dim=1)
        attn_mask = None if mask is None else mask[:, None, None, :]  # (B, 1, 1, T)
        p = self.dropout if self.training else 0.0
        if need_weights:
            scores = q @ k.transpose(-1, -2) / math.sqrt(self.head_dim)  # (B, Hq, T, T)
            if attn_mask is not None:
                scores = scores.masked_fill(~attn_mask, float("-inf"))
            maps = torch.softmax(scores, dim=-1)
            ctx = F.dropout(maps, p=p, training=self.training) @ v
        else:
            ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=p)
        out = self.out_proj(ctx.transpose(1, 2).reshape(b, t, self.embed_dim))  # (B, T, e)
        return (out, density_weights, maps) if need_weights else out
