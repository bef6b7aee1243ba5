"""Migration from the PyPI package ``gaussian-adaptive-attention`` 0.1.5.

Facts about that package (kept here because they explain ``package_compat=True``):

* variance is the unbiased estimate (``Tensor.var``), not the population variance of the paper;
* ``MultiHeadGaussianAdaptiveAttention`` passes its ``eps`` into the ``mean_offset_init`` slot of each head, so
  the user's ``eps`` is dropped and every head uses ``1e-8``;
* padding is detected by value equality (``x != padding_value``); padded items are zero-filled for the mean and
  variance but still counted, and stay in the normalising sum;
* it divides the densities (with their ``(2 pi c^2)^(-1/2)`` normalisers) by ``max(sum, eps)``, so a head whose
  density sum falls below ``eps`` gets weights summing to less than 1; ``package_compat=True`` applies the same rule
  in log space;
* the product of N densities is formed in linear space, so it underflows to an all-zero row (output all zeros) or
  overflows to NaN when a spread is small; densattn works in log space and does neither (with
  ``package_compat=False`` every head's weights sum to 1).
"""

from __future__ import annotations

import torch
from torch import nn

from densattn.attention.density import DensityAdaptiveAttention, DensityBlock

__all__ = ["from_gaussian_adaptive_attention"]


def _convert_heads(heads: list[nn.Module], norm_axis: int, padding_value) -> DensityAdaptiveAttention:
    first = heads[0]
    n = first.num_gaussians
    module = DensityAdaptiveAttention(
        None,
        num_heads=len(heads),
        num_gaussians=n,
        norm_dim=norm_axis,
        preset="mixture_of_densities",
        eps=float(first.eps),
        package_compat=True,
        allow_ragged_heads=True,
        padding_value=padding_value,
        dtype=first.mean_offsets.dtype,
        device=first.mean_offsets.device,
    )
    with torch.no_grad():
        module.mean_offset.copy_(torch.stack([h.mean_offsets.detach() for h in heads]))
        module.spread.copy_(torch.stack([h.c.detach() for h in heads]))
    return module


def from_gaussian_adaptive_attention(module: nn.Module) -> nn.Module:
    """Convert a ``gaussian-adaptive-attention`` 0.1.5 module into an equivalent densattn module.

    ``GaussianAdaptiveAttention`` and ``MultiHeadGaussianAdaptiveAttention`` become a
    :class:`~densattn.DensityAdaptiveAttention` (preset ``"mixture_of_densities"``, scalar parameters,
    ``package_compat=True``, ragged heads allowed as in the package); ``GaussianBlock`` becomes a
    :class:`~densattn.DensityBlock` of those. Parameters are copied (``mean_offsets`` -> ``mean_offset``,
    ``c`` -> ``spread``), so outputs match the package wherever it is finite.

    Raises:
        ValueError: if ``module`` is not one of the three package classes.

    Example:
        >>> from gaussian_adaptive_attention import MultiHeadGaussianAdaptiveAttention  # doctest: +SKIP
        >>> old = MultiHeadGaussianAdaptiveAttention(norm_axis=1, num_heads=4, num_gaussians=3)  # doctest: +SKIP
        >>> new = from_gaussian_adaptive_attention(old)  # doctest: +SKIP
    """
    kind = type(module).__name__
    if kind == "GaussianAdaptiveAttention":
        return _convert_heads([module], module.norm_axis, module.padding_value)
    if kind == "MultiHeadGaussianAdaptiveAttention":
        heads = list(module.attention_heads)
        return _convert_heads(heads, module.norm_axis, heads[0].padding_value)
    if kind == "GaussianBlock":
        return DensityBlock(layers=[from_gaussian_adaptive_attention(layer) for layer in module.layers])
    raise ValueError(
        f"from_gaussian_adaptive_attention expects a GaussianAdaptiveAttention, MultiHeadGaussianAdaptiveAttention "
        f"or GaussianBlock from gaussian-adaptive-attention 0.1.5, got {kind}"
    )
