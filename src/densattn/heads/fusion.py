"""Fusion heads: classify examples seen through two or more feature sets (modalities or views).

Each input is a per-modality tensor ``(B, N_m, d_m)``; in the PEFT pipeline ``N_m`` is the encoder's number of
pooled layers and ``d_m`` its feature size. Three fusion methods share one classifier:

- ``concat``: each modality is attention-pooled (a learned score per position, softmax over its valid
  positions), the pooled vectors are concatenated and projected to ``hidden`` (late fusion baseline);
- ``ban``: :class:`~densattn.attention.BilinearAttentionNetwork` over the two modalities' positions
  (Kim et al. 2018, https://arxiv.org/abs/1805.07932); exactly two modalities;
- ``man``: :class:`~densattn.attention.MultiLinearAttention` over all M modalities' position tuples
  (Jin, Zhao 2021, https://openreview.net/forum?id=dZ33IBX-uRm), random-feature estimate unless ``exact``.

Every modality is first layer-normalised (its features only; encoders differ wildly in scale), and optionally
gets a learned position embedding (``num_positions``), since attention alone does not know which layer a
position is.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from densattn.attention.bilinear import BilinearAttentionNetwork
from densattn.attention.multilinear import MultiLinearAttention

__all__ = ["FUSION_METHODS", "FusionHead"]

FUSION_METHODS = ("concat", "ban", "man")


class FusionHead(nn.Module):
    """Fuse per-modality features and classify: ``logits = MLP(fuse(LN(x_1), ..., LN(x_M)))``.

    The classifier is ``LayerNorm(hidden) → Linear(hidden, hidden) → GELU → Dropout → Linear(hidden, C)`` for
    every method, so methods differ only in how the fused ``(B, hidden)`` vector is made (see the module doc).

    Args:
        dims: feature size d_m of each modality (at least two).
        num_classes: C.
        method: ``"concat"``, ``"ban"`` (two modalities only) or ``"man"``.
        hidden: size of the fused vector (for ``man``, split into ``num_heads`` value heads).
        glimpses: BAN glimpses.
        rank: BAN attention rank (default ``hidden``); MAN query size ``attn_dim`` (default 16).
        num_heads: MAN heads (must divide ``hidden``).
        num_features: MAN random features per head (default: see MultiLinearAttention).
        exact: MAN with the materialised map (small inputs only).
        local_constraint: MAN local sequential constraint bandwidth σ, or None.
        dropout: dropout in the fusion module and the classifier.
        num_positions: maximum ``N_m`` per modality to add learned position embeddings, or None for none.
        generator: the only source of randomness for MAN's random features.

    Shapes:
        ``forward(*features, masks=None)`` with ``features[m] (B, N_m, d_m)`` and ``masks[m] (B, N_m)`` bool
        (True = keep) or None; returns logits ``(B, C)``.

    Example:
        >>> head = FusionHead([384, 384], 4, method="ban", hidden=32)
        >>> head(torch.randn(2, 5, 384), torch.randn(2, 7, 384)).shape
        torch.Size([2, 4])
    """

    def __init__(
        self,
        dims: Sequence[int],
        num_classes: int,
        *,
        method: Literal["concat", "ban", "man"] = "concat",
        hidden: int = 64,
        glimpses: int = 2,
        rank: int | None = None,
        num_heads: int = 1,
        num_features: int | None = None,
        exact: bool = False,
        local_constraint: float | None = None,
        dropout: float = 0.1,
        num_positions: Sequence[int] | None = None,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        dims = [int(d) for d in dims]
        if len(dims) < 2:
            raise ValueError(f"dims must list at least two modalities' feature sizes; got {dims}")
        if method not in FUSION_METHODS:
            raise ValueError(f"method must be one of {FUSION_METHODS}; got {method!r}")
        if method == "ban" and len(dims) != 2:
            raise ValueError(
                f"method='ban' fuses exactly two modalities; got {len(dims)}: use method='man' or 'concat'"
            )
        if num_classes < 1 or hidden < 1:
            raise ValueError(f"num_classes and hidden must be positive; got {num_classes} and {hidden}")
        if method == "man" and hidden % num_heads:
            raise ValueError(f"num_heads ({num_heads}) must divide hidden ({hidden}) for method='man'")
        if num_positions is not None and len(num_positions) != len(dims):
            raise ValueError(
                f"num_positions must give one maximum length per modality ({len(dims)}); got {num_positions}"
            )
        factory = {"device": device, "dtype": dtype}
        self.dims, self.method, self.num_classes = dims, method, num_classes
        self.input_norm = nn.ModuleList(nn.LayerNorm(d, **factory) for d in dims)
        self.position = None
        if num_positions is not None:
            self.position = nn.ParameterList(
                nn.Parameter(0.02 * torch.randn(int(n), d, **factory)) for n, d in zip(num_positions, dims)
            )
        if method == "concat":
            self.pool_score = nn.ModuleList(nn.Linear(d, 1, **factory) for d in dims)
            self.fuse = nn.Linear(sum(dims), hidden, **factory)
        elif method == "ban":
            self.fuse = BilinearAttentionNetwork(
                dims[0], dims[1], hidden, glimpses, rank=rank, dropout=dropout, **factory
            )
        else:
            self.fuse = MultiLinearAttention(
                dims,
                attn_dim=16 if rank is None else rank,
                value_dim=hidden // num_heads,
                num_heads=num_heads,
                num_features=num_features,
                exact=exact,
                local_constraint=local_constraint,
                generator=generator,
                **factory,
            )
        self.classifier = nn.Sequential(
            nn.LayerNorm(hidden, **factory),
            nn.Linear(hidden, hidden, **factory),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes, **factory),
        )

    def forward(self, *features: Tensor, masks: Sequence[Tensor | None] | None = None) -> Tensor:
        """Logits ``(B, num_classes)``; see the class docstring."""
        if len(features) != len(self.dims):
            raise ValueError(f"expected {len(self.dims)} feature tensors (dims={self.dims}); got {len(features)}")
        masks = [None] * len(features) if masks is None else list(masks)
        if len(masks) != len(features):
            raise ValueError(f"masks must hold one entry per modality ({len(features)}); got {len(masks)}")
        xs = []
        for m, x in enumerate(features):
            if x.dim() != 3 or x.shape[-1] != self.dims[m]:
                raise ValueError(f"features[{m}] must have shape (B, N, {self.dims[m]}); got {tuple(x.shape)}")
            x = self.input_norm[m](x)
            if self.position is not None:
                if x.shape[1] > self.position[m].shape[0]:
                    raise ValueError(
                        f"features[{m}] has {x.shape[1]} positions but num_positions[{m}] is "
                        f"{self.position[m].shape[0]}: raise num_positions"
                    )
                x = x + self.position[m][: x.shape[1]]
            xs.append(x)
        if self.method == "concat":
            fused = self.fuse(torch.cat([self._pool(m, x, masks[m]) for m, x in enumerate(xs)], dim=-1))
        elif self.method == "ban":
            fused = self.fuse(xs[0], xs[1], masks[0], masks[1])
        else:
            fused = self.fuse(*xs, masks=masks)
        return self.classifier(fused)  # (B, C)

    def _pool(self, m: int, x: Tensor, mask: Tensor | None) -> Tensor:
        score = self.pool_score[m](x).squeeze(-1)  # (B, N)
        if mask is not None:
            score = score.masked_fill(~mask, torch.finfo(score.dtype).min)
        weight = torch.softmax(score, dim=-1)
        if mask is not None:
            weight = weight * mask
        return torch.einsum("bn,bnd->bd", weight, x)  # (B, d)
