"""Density-adaptive attention modules: :class:`DensityAdaptiveAttention` and :class:`DensityBlock`.

Paper: Ioannides, Chadha, Elkins, "Density Adaptive Attention is All You Need" (arXiv
`2401.11143 <https://arxiv.org/abs/2401.11143>`_), Algorithms 1, 2 and 4. The math lives in
:func:`densattn.functional.density_attention`; these modules own the parameters and the presets.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from densattn.functional import density_attention, head_chunk_sizes


@dataclass(frozen=True)
class DensityPreset:
    """One named DAAM formulation (docs/design.md, "The DAAM kernel", table of presets)."""

    spread_param: str
    combine: str
    normalize: str
    init: str
    source: str


PRESETS: dict[str, DensityPreset] = {
    "paper": DensityPreset("linear", "product", "none", "paper", "arXiv 2401.11143 Alg. 1; DAAMv1/v2 scripts"),
    "mixture_of_densities": DensityPreset(
        "square",
        "product",
        "softmax",
        "mixture_of_densities",
        "arXiv 2401.11143 Alg. 2 and appendix; gaussian-adaptive-attention 0.1.5",
    ),
    "mixture": DensityPreset("square", "mixture", "none", "mixture", "a true mixture of Gaussians"),
}


def suggest_num_heads(size: int, max_heads: int = 8) -> int:
    """Largest head count <= ``max_heads`` that divides ``size`` and leaves at least two items per head.

    A head over a single item has zero variance and a constant gate (docs/design.md, "The DAAM kernel"),
    so such splits are avoided.

    Example:
        >>> suggest_num_heads(7), suggest_num_heads(16), suggest_num_heads(24)
        (1, 8, 8)
    """
    if size < 2:
        raise ValueError(f"the norm axis needs at least 2 items for a density head, got {size}")
    return max(h for h in range(1, max_heads + 1) if size % h == 0 and size // h >= 2)


class DensityAdaptiveAttention(nn.Module):
    """Multi-head density-adaptive attention (DAAM).

    ``y = x * a`` (or ``x + x * a`` with ``residual=True``) where ``a`` is a learned Gaussian density of each
    item's standardised deviation along ``norm_dim``, per head (a contiguous chunk of ``norm_dim``)::

        z_k = (x - mean - mean_offset_k) / sqrt(var + eps);   log a = sum_k -z_k^2 / (2 s_k)   ("product")

    Presets (docs/design.md): ``"paper"`` (Alg. 1: one Gaussian, per-feature parameters, ``s = spread``, gate
    ``exp``), ``"mixture_of_densities"`` (Alg. 2 / ``gaussian-adaptive-attention``: N Gaussians, ``s = spread^2``,
    softmax over the chunk) and ``"mixture"`` (a true mixture with learnable weights ``mixture_logits``).

    Args:
        num_features: size of ``x`` along ``param_dim`` (parameters per feature), or None for scalar parameters.
        num_heads: heads along ``norm_dim``; each must cover at least two items.
        num_gaussians: Gaussians per head.
        norm_dim: axis the statistics and the softmax run over (e.g. the layer axis of ``(B, L, d)`` features).
        param_dim: axis the per-feature parameters run along (ignored when ``num_features`` is None).
        preset: ``"paper"``, ``"mixture_of_densities"`` or ``"mixture"``.
        residual: return ``x + x * a``.
        eps: variance epsilon.
        package_compat: reproduce ``gaussian-adaptive-attention`` 0.1.5 numerics (unbiased variance, its padding).
        spread_param, combine, normalize: override the preset's choice.
        allow_ragged_heads: let the last head take the remainder of an uneven split.
        padding_value: when given and ``mask`` is None, items equal to it are masked (the package's convention).

    Shapes:
        x: any rank >= 2; returns ``y`` like ``x`` and, with ``need_weights=True``, ``(y, weights)``.

    Example:
        >>> attn = DensityAdaptiveAttention(384, num_heads=1, norm_dim=1)
        >>> feats = torch.randn(8, 7, 384)  # (batch, layers, dim)
        >>> y, w = attn(feats, need_weights=True)
        >>> y.shape, w.shape
        (torch.Size([8, 7, 384]), torch.Size([8, 7, 384]))
    """

    def __init__(
        self,
        num_features: int | None,
        *,
        num_heads: int = 1,
        num_gaussians: int = 1,
        norm_dim: int = 1,
        param_dim: int = -1,
        preset: str = "paper",
        residual: bool = False,
        eps: float = 1e-5,
        package_compat: bool = False,
        spread_param: str | None = None,
        combine: str | None = None,
        normalize: str | None = None,
        allow_ragged_heads: bool = False,
        padding_value: float | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if preset not in PRESETS:
            raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {preset!r}")
        if num_features is not None and (not isinstance(num_features, int) or num_features < 1):
            raise ValueError(f"num_features must be a positive int or None (scalar parameters), got {num_features!r}")
        if not isinstance(num_heads, int) or num_heads < 1:
            raise ValueError(f"num_heads must be a positive int, got {num_heads!r}")
        if not isinstance(num_gaussians, int) or num_gaussians < 1:
            raise ValueError(f"num_gaussians must be a positive int, got {num_gaussians!r}")
        if not eps >= 0:
            raise ValueError(f"eps must be >= 0 (it is added to the variance), got {eps}")
        spec = PRESETS[preset]
        self.num_features = num_features
        self.num_heads = num_heads
        self.num_gaussians = num_gaussians
        self.norm_dim = norm_dim
        self.param_dim = param_dim if num_features is not None else None
        self.preset = preset
        self.residual = residual
        self.eps = float(eps)
        self.package_compat = package_compat
        self.spread_param = spread_param or spec.spread_param
        self.combine = combine or spec.combine
        self.normalize = normalize or spec.normalize
        self.allow_ragged_heads = allow_ragged_heads
        self.padding_value = padding_value
        for name, value, allowed in (
            ("spread_param", self.spread_param, ("linear", "square")),
            ("combine", self.combine, ("product", "mixture")),
            ("normalize", self.normalize, ("none", "softmax")),
        ):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
        factory = {"device": device, "dtype": dtype}
        shape = (num_heads, num_gaussians) if num_features is None else (num_heads, num_gaussians, num_features)
        self.mean_offset = nn.Parameter(torch.empty(shape, **factory))
        self.spread = nn.Parameter(torch.empty(shape, **factory))
        if self.combine == "mixture":
            self.mixture_logits = nn.Parameter(torch.empty(num_heads, num_gaussians, **factory))
        else:
            self.register_parameter("mixture_logits", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialise as the preset's source does (docs/design.md, presets table, column "init")."""
        init = PRESETS[self.preset].init
        with torch.no_grad():
            if init == "paper":
                self.mean_offset.zero_()
                self.spread.fill_(2.0)
            elif init == "mixture_of_densities":
                self.mean_offset.zero_()
                self.spread.copy_(torch.randn_like(self.spread).exp())
            else:  # mixture: offsets spread evenly over [-1, 1], unit spreads, uniform weights
                n = self.num_gaussians
                grid = torch.linspace(-1.0, 1.0, n) if n > 1 else torch.zeros(1)
                view = (1, n) if self.num_features is None else (1, n, 1)
                self.mean_offset.copy_(grid.view(view).expand_as(self.mean_offset))
                self.spread.fill_(1.0)
            if self.mixture_logits is not None:
                self.mixture_logits.zero_()

    def forward(
        self, x: Tensor, mask: Tensor | None = None, need_weights: bool = False
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Apply the density gate. ``mask`` is bool, True = keep; masked items pass through unchanged."""
        if not isinstance(x, Tensor) or x.dim() < 2:
            raise ValueError(f"x must be a tensor with at least 2 dimensions, got {getattr(x, 'shape', x)!r}")
        if -x.dim() <= self.norm_dim < x.dim() and not self.package_compat:
            m = x.shape[self.norm_dim]
            sizes = head_chunk_sizes(m, self.num_heads, allow_ragged_heads=self.allow_ragged_heads)
            if min(sizes) < 2:
                hint = f"num_heads={suggest_num_heads(m)}" if m >= 2 else "a norm axis with at least 2 items"
                raise ValueError(
                    f"num_heads={self.num_heads} leaves {min(sizes)} item per head along norm_dim={self.norm_dim} "
                    f"(size {m}); a head needs >= 2 items (its variance is 0 otherwise). Use {hint} "
                    "(densattn.attention.suggest_num_heads)"
                )
        if mask is None and self.padding_value is not None:
            mask = x != self.padding_value
        out, weights = density_attention(
            x,
            self.mean_offset,
            self.spread,
            norm_dim=self.norm_dim,
            param_dim=self.param_dim,
            num_heads=self.num_heads,
            spread_param=self.spread_param,
            combine=self.combine,
            mixture_logits=self.mixture_logits,
            normalize=self.normalize,
            mask=mask,
            eps=self.eps,
            package_compat=self.package_compat,
            allow_ragged_heads=self.allow_ragged_heads,
            need_weights=need_weights,
        )
        if self.residual:
            out = out + x if mask is None else torch.where(_expand_mask(mask, x), out + x, x)
        return (out, weights) if need_weights else out

    def extra_repr(self) -> str:
        feats = "scalar" if self.num_features is None else self.num_features
        parts = [
            f"num_features={feats}",
            f"num_heads={self.num_heads}",
            f"num_gaussians={self.num_gaussians}",
            f"norm_dim={self.norm_dim}",
            f"preset={self.preset!r}",
            f"spread_param={self.spread_param!r}",
            f"combine={self.combine!r}",
            f"normalize={self.normalize!r}",
            f"eps={self.eps:g}",
        ]
        if self.residual:
            parts.append("residual=True")
        if self.package_compat:
            parts.append("package_compat=True")
        return ", ".join(parts)


def _expand_mask(mask: Tensor, x: Tensor) -> Tensor:
    if mask.dim() < x.dim() and tuple(mask.shape) == tuple(x.shape[: mask.dim()]):
        mask = mask.reshape(tuple(mask.shape) + (1,) * (x.dim() - mask.dim()))
    return mask


class DensityBlock(nn.Module):
    """A stack of DAAM layers, each with a residual: ``x <- x + DAAM_l(x)`` (paper Alg. 4).

    Build it from ``num_layers`` identical layers (keyword arguments go to :class:`DensityAdaptiveAttention`) or
    from a list of ready layers (``layers=[...]``), e.g. with different norm axes.

    Example:
        >>> block = DensityBlock(64, num_layers=2, num_heads=2, norm_dim=1)
        >>> y, weights = block(torch.randn(4, 6, 64), need_weights=True)
        >>> y.shape, len(weights)
        (torch.Size([4, 6, 64]), 2)
    """

    def __init__(
        self,
        num_features: int | None = None,
        *,
        num_layers: int = 1,
        layers: list[DensityAdaptiveAttention] | None = None,
        **layer_kwargs,
    ) -> None:
        super().__init__()
        if layers is None:
            if not isinstance(num_layers, int) or num_layers < 1:
                raise ValueError(f"num_layers must be a positive int, got {num_layers!r}")
            if layer_kwargs.get("residual"):
                raise ValueError("DensityBlock adds the residual itself; do not pass residual=True to its layers")
            layers = [DensityAdaptiveAttention(num_features, **layer_kwargs) for _ in range(num_layers)]
        elif layer_kwargs or num_features is not None:
            raise ValueError("pass either layers=[...] or num_features/layer options, not both")
        self.layers = nn.ModuleList(layers)

    def forward(
        self, x: Tensor, mask: Tensor | None = None, need_weights: bool = False
    ) -> Tensor | tuple[Tensor, list[Tensor]]:
        weights = []
        for layer in self.layers:
            out, w = layer(x, mask=mask, need_weights=True)
            x = out + x
            weights.append(w)
        return (x, weights) if need_weights else x


def num_parameters(module: nn.Module) -> int:
    """Number of trainable parameters of ``module``."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
