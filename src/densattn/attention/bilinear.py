"""Bilinear attention networks (BAN): low-rank bilinear attention over all pairs of two inputs.

Kim, Jun, Zhang, "Bilinear Attention Networks", NeurIPS 2018, https://arxiv.org/abs/1805.07932

Notation: B batch, Nx / Ny positions of the two inputs, K rank of the low-rank bilinear form, G glimpses.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = [
    "BilinearAttention",
    "BilinearAttentionNetwork",
    "bilinear_pool",
    "joint_pair_softmax",
    "pair_mask",
]


def pair_mask(x_mask: Tensor | None, y_mask: Tensor | None, nx: int, ny: int) -> Tensor | None:
    """Mask of valid ``(i, j)`` pairs: ``x_mask[:, i] & y_mask[:, j]`` with shape ``(B, Nx, Ny)``, or None.

    Args:
        x_mask: ``(B, Nx)`` bool, True = keep, or None (all kept).
        y_mask: ``(B, Ny)`` bool, True = keep, or None (all kept).
        nx, ny: the sizes Nx and Ny, used to check the masks.

    Raises:
        ValueError: if a mask is not bool or its length does not match.
    """
    for name, mask, n in (("x_mask", x_mask, nx), ("y_mask", y_mask, ny)):
        if mask is None:
            continue
        if mask.dtype != torch.bool or mask.dim() != 2 or mask.shape[1] != n:
            raise ValueError(
                f"{name} must be a bool tensor of shape (B, {n}) with True = keep; "
                f"got dtype {mask.dtype} and shape {tuple(mask.shape)}"
            )
    if x_mask is None and y_mask is None:
        return None
    if x_mask is None:
        return y_mask[:, None, :].expand(-1, nx, -1)  # (B, Nx, Ny)
    if y_mask is None:
        return x_mask[:, :, None].expand(-1, -1, ny)  # (B, Nx, Ny)
    return x_mask[:, :, None] & y_mask[:, None, :]  # (B, Nx, Ny)


def joint_pair_softmax(logits: Tensor, mask: Tensor | None = None) -> Tensor:
    """Softmax over all ``Nx·Ny`` pairs jointly; masked pairs get exactly 0.

    ``A_ij = exp(l_ij) / Σ_{(k,l) valid} exp(l_kl)`` for valid pairs, 0 otherwise. A map with no valid pair is
    all zeros (never NaN). Computed in float32 at least, returned in the logits' dtype.

    Args:
        logits: ``(B, G, Nx, Ny)`` (any leading dims before the last two).
        mask: ``(B, Nx, Ny)`` bool (True = keep), broadcast over the glimpse axis, or None.

    Returns:
        probs with the shape of ``logits``; each map sums to 1 over its valid pairs.
    """
    work = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    if mask is not None:
        keep = mask[:, None] if mask.dim() == work.dim() - 1 else mask  # (B, 1, Nx, Ny)
        work = work.masked_fill(~keep, torch.finfo(work.dtype).min)
    flat = work.flatten(-2)  # (B, G, Nx*Ny)
    probs = torch.softmax(flat, dim=-1).view_as(work)  # (B, G, Nx, Ny)
    if mask is not None:
        probs = probs * keep  # exact zeros for masked pairs, zeros for an all-masked map
    return probs.to(logits.dtype)


def bilinear_pool(x_proj: Tensor, y_proj: Tensor, probs: Tensor) -> Tensor:
    """Bilinear pooling of two projected inputs under an attention map: ``f_k = Σ_ij A_ij x'_ik y'_jk``.

    This is ``Σ_ij A_ij (x'_i ∘ y'_j)`` evaluated as ``x'ᵀ A y'`` per rank channel k, without forming the
    ``(Nx, Ny, K)`` tensor of Hadamard products.

    Args:
        x_proj: ``(B, Nx, K)`` projected first input ``x'``.
        y_proj: ``(B, Ny, K)`` projected second input ``y'``.
        probs: ``(B, Nx, Ny)`` one attention map, or ``(B, G, Nx, Ny)`` one per glimpse.

    Returns:
        ``(B, K)``, or ``(B, G, K)`` for a map per glimpse.

    Example:
        >>> x, y = torch.randn(2, 3, 4), torch.randn(2, 5, 4)
        >>> uniform = torch.full((2, 3, 5), 1 / 15)
        >>> torch.allclose(bilinear_pool(x, y, uniform), x.mean(1) * y.mean(1), atol=1e-6)
        True
    """
    if x_proj.shape[-1] != y_proj.shape[-1]:
        raise ValueError(
            f"x_proj and y_proj must share their last (rank) dimension; got {x_proj.shape[-1]} and "
            f"{y_proj.shape[-1]}: project both to the same rank K first"
        )
    if probs.dim() == 3:
        return torch.einsum("bik,bij,bjk->bk", x_proj, probs, y_proj)
    if probs.dim() == 4:
        return torch.einsum("bik,bgij,bjk->bgk", x_proj, probs, y_proj)
    raise ValueError(f"probs must have shape (B, Nx, Ny) or (B, G, Nx, Ny); got {tuple(probs.shape)}")


class BilinearAttention(nn.Module):
    """Low-rank bilinear attention maps over all pairs ``(x_i, y_j)``, one per glimpse.

    ``x'_i = relu(U x_i)``, ``y'_j = relu(V y_j)`` (rank K), ``l_gij = p_gᵀ (x'_i ∘ y'_j) + b_g`` and
    ``A_g = softmax over all Nx·Ny pairs of l_g`` (masked pairs exactly 0). Kim et al. 2018, eq. (8)-(9),
    https://arxiv.org/abs/1805.07932

    Args:
        x_dim: feature size of ``x``.
        y_dim: feature size of ``y``.
        rank: K, the rank of the bilinear form (size of the projections).
        glimpses: G, the number of attention maps.
        dropout: dropout on the projections ``x'`` and ``y'`` (training only).

    Shapes:
        ``x (B, Nx, x_dim)``, ``y (B, Ny, y_dim)``, masks ``(B, Nx)`` / ``(B, Ny)`` bool (True = keep);
        returns ``probs (B, G, Nx, Ny)`` and ``logits (B, G, Nx, Ny)`` (the logits before masking).

    Example:
        >>> attention = BilinearAttention(6, 4, rank=8, glimpses=2)
        >>> probs, logits = attention(torch.randn(3, 5, 6), torch.randn(3, 7, 4))
        >>> probs.shape, bool(torch.allclose(probs.sum((-2, -1)), torch.ones(3, 2)))
        (torch.Size([3, 2, 5, 7]), True)
    """

    def __init__(
        self,
        x_dim: int,
        y_dim: int,
        rank: int,
        glimpses: int = 1,
        dropout: float = 0.0,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        for name, value in (("x_dim", x_dim), ("y_dim", y_dim), ("rank", rank), ("glimpses", glimpses)):
            if int(value) < 1:
                raise ValueError(f"{name} must be a positive integer; got {value}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1); got {dropout}")
        factory = {"device": device, "dtype": dtype}
        self.rank, self.glimpses = rank, glimpses
        self.x_proj = nn.Linear(x_dim, rank, **factory)
        self.y_proj = nn.Linear(y_dim, rank, **factory)
        self.pair_weight = nn.Parameter(torch.empty(glimpses, rank, **factory))  # p_g
        self.pair_bias = nn.Parameter(torch.zeros(glimpses, **factory))  # b_g
        self.dropout = nn.Dropout(dropout)
        nn.init.normal_(self.pair_weight, std=rank**-0.5)

    def project(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """The projections ``x' = relu(U x)`` ``(B, Nx, K)`` and ``y' = relu(V y)`` ``(B, Ny, K)``."""
        return self.dropout(torch.relu(self.x_proj(x))), self.dropout(torch.relu(self.y_proj(y)))

    def forward(
        self, x: Tensor, y: Tensor, x_mask: Tensor | None = None, y_mask: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Attention maps ``(probs, logits)``, each ``(B, G, Nx, Ny)``; see the class docstring."""
        if x.dim() != 3 or y.dim() != 3 or x.shape[0] != y.shape[0]:
            raise ValueError(
                f"x and y must be (B, Nx, x_dim) and (B, Ny, y_dim) with the same B; "
                f"got {tuple(x.shape)} and {tuple(y.shape)}"
            )
        x_p, y_p = self.project(x, y)  # (B, Nx, K), (B, Ny, K)
        logits = torch.einsum("bik,gk,bjk->bgij", x_p, self.pair_weight, y_p)  # (B, G, Nx, Ny)
        logits = logits + self.pair_bias[None, :, None, None]
        probs = joint_pair_softmax(logits, pair_mask(x_mask, y_mask, x.shape[1], y.shape[1]))
        return probs, logits


class BilinearAttentionNetwork(nn.Module):
    """Bilinear attention network: G glimpses with residual refinement of ``x``, pooled to one vector.

    ``h⁰_i = W_in x_i``; the maps ``A_g`` come from :class:`BilinearAttention` on ``(x, y)``; for g = 1..G:
    ``f_g = bilinear_pool(relu(U_g hᵍ⁻¹), relu(V_g y), A_g)`` and ``hᵍ_i = hᵍ⁻¹_i + P_g f_g`` (the same
    residual for every position i). Output: the mean of ``h^G_i`` over the valid positions of ``x``.
    Kim et al. 2018, Sec. 3.3 (residual learning of attention), https://arxiv.org/abs/1805.07932

    Differences from the paper's code: the output is the masked mean over positions rather than the sum (the
    sum divided by the number of valid positions, so its scale does not depend on Nx), and each glimpse's
    pooling uses one rank-``hidden`` projection pair (no extra k-times pooling window).

    Args:
        x_dim, y_dim: feature sizes of ``x`` and ``y``.
        hidden: size of the refined ``x`` states, of the bilinear rank and of the output.
        glimpses: G.
        rank: rank K of the attention maps' bilinear form (default ``hidden``).
        dropout: dropout on the projections.

    Shapes:
        ``x (B, Nx, x_dim)``, ``y (B, Ny, y_dim)``, masks ``(B, Nx)`` / ``(B, Ny)`` -> ``(B, hidden)``;
        with ``need_weights=True`` also the maps ``(B, G, Nx, Ny)``.

    Example:
        >>> network = BilinearAttentionNetwork(6, 4, hidden=16, glimpses=2)
        >>> network(torch.randn(3, 5, 6), torch.randn(3, 7, 4)).shape
        torch.Size([3, 16])
    """

    def __init__(
        self,
        x_dim: int,
        y_dim: int,
        hidden: int,
        glimpses: int = 1,
        *,
        rank: int | None = None,
        dropout: float = 0.0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        rank = hidden if rank is None else rank
        self.attention = BilinearAttention(x_dim, y_dim, rank, glimpses, dropout, **factory)
        self.x_in = nn.Linear(x_dim, hidden, **factory)
        self.x_glimpse = nn.ModuleList(nn.Linear(hidden, hidden, **factory) for _ in range(glimpses))
        self.y_glimpse = nn.ModuleList(nn.Linear(y_dim, hidden, **factory) for _ in range(glimpses))
        self.refine = nn.ModuleList(nn.Linear(hidden, hidden, **factory) for _ in range(glimpses))
        self.dropout = nn.Dropout(dropout)

    def forward(
        self,
        x: Tensor,
        y: Tensor,
        x_mask: Tensor | None = None,
        y_mask: Tensor | None = None,
        *,
        need_weights: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Fused vector ``(B, hidden)`` (and the maps ``(B, G, Nx, Ny)`` with ``need_weights=True``)."""
        probs, _ = self.attention(x, y, x_mask, y_mask)  # (B, G, Nx, Ny)
        state = self.x_in(x)  # (B, Nx, hidden)
        for g in range(len(self.refine)):
            x_p = self.dropout(torch.relu(self.x_glimpse[g](state)))  # (B, Nx, hidden)
            y_p = self.dropout(torch.relu(self.y_glimpse[g](y)))  # (B, Ny, hidden)
            pooled = bilinear_pool(x_p, y_p, probs[:, g])  # (B, hidden)
            state = state + self.refine[g](pooled)[:, None, :]  # (B, Nx, hidden)
        if x_mask is None:
            out = state.mean(dim=1)
        else:
            weight = x_mask.to(state.dtype)[:, :, None]  # (B, Nx, 1)
            out = (state * weight).sum(1) / weight.sum(1).clamp_min(1.0)
        return (out, probs) if need_weights else out
