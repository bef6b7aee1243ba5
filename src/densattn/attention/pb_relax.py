"""PB-relax attention (CogView's "precision bottleneck relaxation" of the attention scores).

Paper: Ding et al., "CogView: Mastering Text-to-Image Generation via Transformers", NeurIPS 2021,
https://arxiv.org/abs/2105.13290, §3.2 (eq. 5)::

    softmax(Q Kᵀ / √d) = softmax((Q / (α√d)) Kᵀ − max(Q / (α√d) Kᵀ)) · α)

The right-hand side is the same number in exact arithmetic (softmax ignores a per-row shift), but the score
product is formed at ``1/α`` scale, so in float16 a raw score ``Q Kᵀ/√d`` up to ``α · 65504`` never overflows.
The row maximum is detached: the shift does not change the value, so it needs no gradient.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["pb_relax_attention"]


def pb_relax_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    alpha: float = 32.0,
    mask: Tensor | None = None,
    need_weights: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Softmax attention with the scores formed at ``1/alpha`` scale (CogView PB-relax).

    ``S' = (Q / (α√d)) Kᵀ``; ``A = softmax((S' − max_row S') · α)``; ``out = A V``. Masked keys get weight 0; a
    row with no kept key gives a zero output (not NaN).

    Args:
        q: ``(B, H, L, d)`` or ``(B, L, d)`` queries; k: ``(B, H, S, d)`` / ``(B, S, d)``; v like k with any last size.
        alpha: the relaxation factor ``α > 0`` (CogView uses 32).
        mask: bool ``(B, S)`` key padding, True = keep.
        need_weights: also return the attention map ``(B, H, L, S)`` (or ``(B, L, S)``).

    Returns:
        ``out`` like ``q`` with ``v``'s last size, or ``(out, weights)``.

    Raises:
        ValueError: ``alpha <= 0``, inputs not 3-D/4-D or not matching, a mask that is not bool ``(B, S)``.

    Example:
        >>> q = k = v = torch.randn(2, 4, 5, 8)
        >>> out = pb_relax_attention(q, k, v, alpha=32.0)
        >>> torch.allclose(out, torch.nn.functional.scaled_dot_product_attention(q, k, v), atol=1e-6)
        True
    """
    if not alpha > 0:
        raise ValueError(f"alpha must be > 0 (the scores are formed at 1/alpha scale), got {alpha}")
    if q.dim() not in (3, 4) or k.dim() != q.dim() or v.dim() != q.dim():
        raise ValueError(
            f"q, k, v must all be (B, H, L, d) or all (B, L, d); got {tuple(q.shape)}, {tuple(k.shape)}, "
            f"{tuple(v.shape)}"
        )
    if k.shape[-1] != q.shape[-1] or v.shape[-2] != k.shape[-2]:
        raise ValueError(f"k must share q's last size and v k's length; got {tuple(k.shape)}, {tuple(v.shape)}")
    batch, keys = k.shape[0], k.shape[-2]
    keep_any = None
    if mask is not None:
        if mask.dtype != torch.bool or tuple(mask.shape) != (batch, keys):
            raise ValueError(
                f"mask must be a bool (B, S) = ({batch}, {keys}) key-padding mask, True = keep; "
                f"got {mask.dtype} {tuple(mask.shape)}"
            )
        view = (batch, 1, 1, keys) if q.dim() == 4 else (batch, 1, keys)
        keep_any = mask.any(-1).view((batch,) + (1,) * (q.dim() - 1))
        mask = (mask | ~mask.any(-1, keepdim=True)).view(view)  # an empty row attends everywhere, zeroed below
    scale = 1.0 / (alpha * math.sqrt(q.shape[-1]))
    scores = torch.matmul(q * scale, k.transpose(-1, -2))  # (B, H, L, S) at 1/alpha scale
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    shift = scores.detach().amax(-1, keepdim=True)  # (B, H, L, 1), finite: every row keeps a key
    weights = torch.softmax((scores - shift) * alpha, dim=-1)
    out = torch.matmul(weights, v)
    if keep_any is not None:
        out = out * keep_any
        weights = weights * keep_any
    return (out, weights) if need_weights else out
