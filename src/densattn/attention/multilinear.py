"""Multi-linear attention (MAN): one attention distribution over all tuples of positions of M modalities.

Jin, Zhao, "Generalizable Multi-linear Attention Network", NeurIPS 2021,
https://openreview.net/forum?id=dZ33IBX-uRm
Positive (orthogonal) random features: Choromanski et al., "Rethinking Attention with Performers", ICLR 2021,
https://arxiv.org/abs/2009.14794

Notation: B batch, H heads, M modalities, N_m positions of modality m, D attn_dim, V value_dim,
R random features.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["MultiLinearAttention", "orthogonal_gaussian_features"]

_POSITION_LETTERS = "ijklmnopqrstuwxyz"  # einsum indices for up to 17 modalities (b, h, v are taken)


def orthogonal_gaussian_features(
    num_heads: int,
    num_features: int,
    dim: int,
    *,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Orthogonal random features ``(H, R, dim)``: each row is marginally ``N(0, I)``, rows within a block
    of ``dim`` are orthogonal (Q of a Gaussian QR, rows rescaled by independent chi(dim) norms), as in
    Performer Sec. 2.4.

    Randomness comes only from ``generator`` (drawn on the CPU, so a seeded generator gives the same features
    on every device).
    """
    blocks = math.ceil(num_features / dim)
    gauss = torch.randn(num_heads, blocks, dim, dim, generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(gauss)  # (H, blocks, dim, dim)
    q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))[..., None, :]  # Haar-uniform rotation
    rows = q.transpose(-2, -1).reshape(num_heads, blocks * dim, dim)[:, :num_features]  # (H, R, dim)
    norms = torch.randn(num_heads, blocks * dim, dim, generator=generator, dtype=torch.float64).norm(dim=-1)
    return (rows * norms[:, :num_features, None]).to(dtype)


class MultiLinearAttention(nn.Module):
    """Attention over all position tuples ``(i_1, ..., i_M)`` of M ≥ 2 modalities, pooled multi-linearly.

    Per head, with ``z_m = sqrt(D) · normalize(W_m x_m)`` (L2-normalised query projections, no bias) and
    ``v_m = V_m x_m`` (linear value projections, no bias):

        A(i_1..i_M) ∝ exp( Σ_{m<n} ⟨z_{m,i_m}, z_{n,i_n}⟩ / sqrt(D) ) · P(i_1..i_M)
        out = Σ_{i_1..i_M} A(i_1..i_M) · (v_{1,i_1} ∘ ... ∘ v_{M,i_M})          (V per head)

    the M-modal generalisation of bilinear attention and pooling (for M = 2 the weights are exactly the joint
    pair softmax of :class:`~densattn.attention.BilinearAttention` with logits ``⟨z_1,i, z_2,j⟩ / sqrt(D)``).
    ``P`` is 1, or with ``local_constraint=σ`` the local sequential constraint
    ``P = exp(-Σ_{m<n} (t_{m,i_m} - t_{n,i_n})² / (2σ²))`` with ``t`` the relative position in [0, 1] among
    the modality's valid positions, which favours aligned positions.

    ``exact=True`` materialises the ``N_1·...·N_M`` map. Otherwise the kernel is estimated without it: with
    ``u_m = z_m / D^{1/4}``, ``Σ_{m<n} ⟨u_m, u_n⟩ = ½‖Σ_m u_m‖² - ½Σ_m‖u_m‖²``, so positive random features
    ``φ_w(u) = exp(wᵀu - ‖u‖²/2)``, ``w ~ N(0, I)``, give ``E_w[Π_m φ_w(u_m)] = exp(Σ_{m<n} ⟨u_m, u_n⟩)`` and

        out ≈ Σ_r Π_m (Σ_i φ_r(u_{m,i}) v_{m,i}) / Σ_r Π_m (Σ_i φ_r(u_{m,i}))

    in O(R·Σ_m N_m) time and memory. The local constraint factorises too, with positive positional
    features: with ``τ = σ/sqrt(M)``, ``∫ Π_m exp(-(t_m - c)²/(2τ²)) dc ∝ P``, so each random feature r also
    gets an anchor ``c_r`` drawn uniformly from ``[-6τ, 1 + 6τ]`` (the integrand, a Gaussian in c of std
    τ/sqrt(M) centred in [0, 1], has less than 1e-8 of its mass outside) and ``φ_r`` is multiplied by
    ``exp(-(t - c_r)²/(2τ²))``.

    Overflow is prevented by one constant per batch, head and modality (the maximum of ``log φ`` over all its
    positions and features); their product is one global factor per batch and head, which cancels between
    numerator and denominator. A per-position or per-feature stabiliser would not cancel and would bias the
    estimate, so none is used.

    Scale: because the queries are L2-normalised and the values are bias-free, scaling all features of one
    modality by a constant c > 0 leaves the attention (exact and estimated) unchanged and multiplies the
    output by c: the random-feature estimate's relative error ``‖out_rf - out_exact‖ / ‖out_exact‖`` is
    unchanged.
    The random features are a fixed buffer drawn at construction from ``generator`` (see
    :meth:`redraw_features`), so the forward pass is deterministic.

    Args:
        dims: feature size d_m of each modality (M ≥ 2 entries).
        attn_dim: D, the size of each head's query projection.
        value_dim: V, the size of each head's value projection.
        num_heads: H.
        num_features: R, random features per head; default ``max(D, round(D · ln D))`` (with the local
            constraint, computed for D + 1).
        exact: materialise the full attention map instead of estimating it.
        local_constraint: σ > 0 of the local sequential constraint, or None for none.
        generator: the only source of randomness for the random features.
        query_scale: the pairwise logit ``⟨z_m, z_n⟩/sqrt(D)`` equals ``query_scale · cos(z_m, z_n)`` (the
            queries have norm ``sqrt(query_scale)·D^{1/4}``). Larger values sharpen the attention but raise
            the random-feature variance, which grows like ``exp(‖Σ_m u_m‖²)`` (see benchmarks/fusion.py).
        feature_shift: A in the generalised positive features ``exp(A‖w‖² + sqrt(1 - 2MA) wᵀu - ‖u‖²/2)``
            (FAVOR++-style, Likhosherstov et al. 2022, https://arxiv.org/abs/2205.15317); unbiased for any
            A < 1/(4M). 0 (default) is the FAVOR+ map; a negative A damps features with large ‖w‖, which
            can lower the error for small attn_dim (compared in benchmarks/fusion.py).

    Shapes:
        ``forward(*xs, masks=None)`` with ``xs[m] (B, N_m, d_m)`` and ``masks[m] (B, N_m)`` bool
        (True = keep) or None, returns ``(B, H·V)``; with ``need_weights=True`` (exact only) also the map
        ``(B, H, N_1, ..., N_M)``.

    Example:
        >>> man = MultiLinearAttention([6, 4, 5], attn_dim=8, value_dim=3, num_heads=2,
        ...                            generator=torch.Generator().manual_seed(0))
        >>> man(torch.randn(2, 7, 6), torch.randn(2, 3, 4), torch.randn(2, 5, 5)).shape
        torch.Size([2, 6])
    """

    def __init__(
        self,
        dims: Sequence[int],
        *,
        attn_dim: int,
        value_dim: int,
        num_heads: int = 1,
        num_features: int | None = None,
        exact: bool = False,
        local_constraint: float | None = None,
        generator: torch.Generator | None = None,
        query_scale: float = 1.0,
        feature_shift: float = 0.0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        dims = [int(d) for d in dims]
        if len(dims) < 2 or min(dims) < 1:
            raise ValueError(f"dims must list the positive feature size of each of M >= 2 modalities; got {dims}")
        for name, value in (("attn_dim", attn_dim), ("value_dim", value_dim), ("num_heads", num_heads)):
            if int(value) < 1:
                raise ValueError(f"{name} must be a positive integer; got {value}")
        if local_constraint is not None and not local_constraint > 0:
            raise ValueError(f"local_constraint must be a positive bandwidth σ or None; got {local_constraint}")
        if num_features is None:
            num_features = max(attn_dim, round(attn_dim * math.log(attn_dim)))
        if int(num_features) < 1:
            raise ValueError(f"num_features must be a positive integer or None; got {num_features}")
        factory = {"device": device, "dtype": dtype}
        self.dims, self.attn_dim, self.value_dim, self.num_heads = dims, attn_dim, value_dim, num_heads
        self.num_features, self.exact, self.local_constraint = int(num_features), exact, local_constraint
        self.query_scale = float(query_scale)
        heads = num_heads
        self.query_proj = nn.ModuleList(nn.Linear(d, heads * attn_dim, bias=False, **factory) for d in dims)
        self.value_proj = nn.ModuleList(nn.Linear(d, heads * value_dim, bias=False, **factory) for d in dims)
        if not feature_shift < 1.0 / (4 * len(dims)):
            raise ValueError(f"feature_shift must be below 1/(4M) = {1 / (4 * len(dims)):.3f}; got {feature_shift}")
        self.feature_shift = float(feature_shift)
        buffer = {"device": device, "dtype": dtype or torch.get_default_dtype()}
        self.register_buffer("features", torch.empty(heads, self.num_features, attn_dim, **buffer))
        self.register_buffer(
            "anchors", None if local_constraint is None else torch.empty(heads, self.num_features, **buffer)
        )
        self.redraw_features(generator)

    def redraw_features(self, generator: torch.Generator | None = None) -> None:
        """Draw new random features ``(H, R, D)`` (and positional anchors ``(H, R)``) in place, from
        ``generator`` only."""
        fresh = orthogonal_gaussian_features(self.num_heads, self.num_features, self.attn_dim, generator=generator)
        self.features.copy_(fresh)
        if self.anchors is not None:
            width = 6.0 * self._anchor_width()
            uniform = torch.rand(self.num_heads, self.num_features, generator=generator, dtype=torch.float64)
            self.anchors.copy_(-width + (1.0 + 2.0 * width) * uniform)

    def _anchor_width(self) -> float:
        return self.local_constraint / math.sqrt(len(self.dims))  # τ = σ / sqrt(M)

    def queries(self, *xs: Tensor) -> list[Tensor]:
        """``z_m = sqrt(query_scale)·D^{1/4}·normalize(W_m x_m)`` per modality, each ``(B, H, N_m, D)``."""
        out = []
        for proj, x in zip(self.query_proj, xs):
            z = proj(x).unflatten(-1, (self.num_heads, self.attn_dim)).transpose(1, 2)  # (B, H, N, D)
            out.append(F.normalize(z, dim=-1) * (self.query_scale**0.5 * self.attn_dim**0.25))
        return out

    def values(self, *xs: Tensor) -> list[Tensor]:
        """``v_m = V_m x_m`` per modality, each ``(B, H, N_m, V)``."""
        return [
            proj(x).unflatten(-1, (self.num_heads, self.value_dim)).transpose(1, 2)  # (B, H, N, V)
            for proj, x in zip(self.value_proj, xs)
        ]

    def relative_positions(self, x: Tensor, mask: Tensor | None) -> Tensor:
        """Relative position ``t`` in [0, 1] of each valid position among the valid ones, ``(B, N)``."""
        batch, length = x.shape[:2]
        keep = torch.ones(batch, length, dtype=torch.bool, device=x.device) if mask is None else mask
        rank = keep.cumsum(dim=1) - 1  # index among the valid positions
        count = keep.sum(dim=1, keepdim=True)
        return rank.to(x.dtype) / (count - 1).clamp_min(1).to(x.dtype)

    def forward(
        self, *xs: Tensor, masks: Sequence[Tensor | None] | None = None, need_weights: bool = False
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Pooled output ``(B, H·V)`` (and the exact map with ``need_weights=True``); see the class doc."""
        masks = self._check(xs, masks)
        if need_weights and not self.exact:
            raise ValueError("need_weights=True needs the materialised map: construct with exact=True")
        input_dtype = xs[0].dtype
        compute = torch.float32 if input_dtype in (torch.float16, torch.bfloat16) else input_dtype
        xs = tuple(x.to(compute) for x in xs)
        zs, vs = self.queries(*xs), self.values(*xs)
        with torch.autocast(device_type=xs[0].device.type, enabled=False):  # exp and sums in >= float32
            zs, vs = [z.to(compute) for z in zs], [v.to(compute) for v in vs]
            positions = None
            if self.local_constraint is not None:
                positions = [self.relative_positions(x, m) for x, m in zip(xs, masks)]
            if self.exact:
                out, weights = self._exact(zs, vs, masks, positions)
            else:
                out, weights = self._random_features(zs, vs, masks, positions), None
        out = out.flatten(1).to(input_dtype)  # (B, H*V)
        return (out, weights) if need_weights else out

    def tuple_logits(self, zs: Sequence[Tensor], positions: Sequence[Tensor] | None = None) -> Tensor:
        """Exact log-kernel ``Σ_{m<n} ⟨z_m, z_n⟩/sqrt(D)`` (+ log P) over all tuples, ``(B, H, N_1..N_M)``;
        ``positions`` are the relative positions t, each ``(B, N_m)``."""
        count = len(zs)
        batch, heads = zs[0].shape[:2]
        logits = zs[0].new_zeros(batch, heads, *(z.shape[2] for z in zs))
        for m in range(count):
            for n in range(m + 1, count):
                pair = zs[m] @ zs[n].transpose(-2, -1) / math.sqrt(self.attn_dim)  # (B, H, N_m, N_n)
                if positions is not None:
                    gap = positions[m][:, :, None] - positions[n][:, None, :]  # (B, N_m, N_n)
                    pair = pair - 0.5 * gap.square()[:, None] / self.local_constraint**2
                shape = [batch, heads] + [1] * count
                shape[2 + m], shape[2 + n] = pair.shape[2], pair.shape[3]
                logits = logits + pair.reshape(shape)  # broadcast over the other modalities
        return logits

    def _exact(self, zs, vs, masks, positions) -> tuple[Tensor, Tensor]:
        count = len(zs)
        logits = self.tuple_logits(zs, positions)  # (B, H, N_1, ..., N_M)
        keep = None
        for m, mask in enumerate(masks):
            if mask is None:
                continue
            shape = [mask.shape[0], 1] + [1] * count
            shape[2 + m] = mask.shape[1]
            keep = mask.reshape(shape) if keep is None else keep & mask.reshape(shape)
        if keep is not None:
            logits = logits.masked_fill(~keep, torch.finfo(logits.dtype).min)
        weights = torch.softmax(logits.flatten(2), dim=-1).view_as(logits)  # joint over all tuples
        if keep is not None:
            weights = weights * keep  # masked tuples exactly 0; an empty modality gives an all-zero map
        letters = _POSITION_LETTERS[:count]  # one einsum index per modality's positions; v = value axis
        terms = ",".join(f"bh{letter}v" for letter in letters)
        out = torch.einsum(f"bh{letters},{terms}->bhv", weights, *vs)  # (B, H, V)
        return out, weights

    def _random_features(self, zs, vs, masks, positions) -> Tensor:
        count = len(zs)
        features = self.features.to(zs[0].dtype)  # (H, R, D)
        shift = self.feature_shift  # A; B = sqrt(1 - 2MA) keeps the estimate unbiased
        feature_bias = shift * features.square().sum(-1)[None, :, None, :]  # A·‖w_r‖², (1, H, 1, R)
        features = features * math.sqrt(1.0 - 2.0 * count * shift)
        numerator, denominator = None, None
        for m in range(count):
            u = zs[m] / self.attn_dim**0.25  # (B, H, N, D)
            log_phi = torch.einsum("bhnd,hrd->bhnr", u, features) - 0.5 * u.square().sum(-1, keepdim=True)
            log_phi = log_phi + feature_bias  # (B, H, N, R)
            if positions is not None:  # positive positional features exp(-(t - c_r)²/(2τ²))
                gap = positions[m][:, None, :, None] - self.anchors.to(u.dtype)[None, :, None, :]  # (B, H, N, R)
                log_phi = log_phi - 0.5 * gap.square() / self._anchor_width() ** 2
            if masks[m] is not None:
                log_phi = log_phi.masked_fill(~masks[m][:, None, :, None], float("-inf"))
            stabiliser = log_phi.amax(dim=(2, 3), keepdim=True)  # one per (batch, head, modality)
            stabiliser = torch.nan_to_num(stabiliser, neginf=0.0).detach()
            phi = torch.exp(log_phi - stabiliser)  # (B, H, N, R), entries in [0, 1]
            total = phi.sum(dim=2)  # (B, H, R)
            weighted = torch.einsum("bhnr,bhnv->bhrv", phi, vs[m])  # (B, H, R, V)
            numerator = weighted if numerator is None else numerator * weighted
            denominator = total if denominator is None else denominator * total
        denominator = denominator.sum(dim=-1)[..., None]  # (B, H, 1)
        out = numerator.sum(dim=2) / denominator.clamp_min(torch.finfo(denominator.dtype).tiny)
        return out * (denominator > 0)  # (B, H, V); 0 where a modality has no valid position

    def _check(self, xs: Sequence[Tensor], masks) -> list[Tensor | None]:
        if len(xs) != len(self.dims):
            raise ValueError(f"expected {len(self.dims)} modalities (dims={self.dims}); got {len(xs)} tensors")
        for m, x in enumerate(xs):
            if x.dim() != 3 or x.shape[-1] != self.dims[m] or x.shape[0] != xs[0].shape[0]:
                raise ValueError(
                    f"xs[{m}] must have shape (B, N, {self.dims[m]}) with the batch size of xs[0]; got {tuple(x.shape)}"
                )
        if masks is None:
            return [None] * len(xs)
        if len(masks) != len(xs):
            raise ValueError(f"masks must hold one entry (tensor or None) per modality; got {len(masks)}")
        for m, (x, mask) in enumerate(zip(xs, masks)):
            if mask is not None and (mask.dtype != torch.bool or tuple(mask.shape) != tuple(x.shape[:2])):
                raise ValueError(
                    f"masks[{m}] must be a bool tensor of shape {tuple(x.shape[:2])} with True = keep; "
                    f"got dtype {mask.dtype} and shape {tuple(mask.shape)}"
                )
        return list(masks)
