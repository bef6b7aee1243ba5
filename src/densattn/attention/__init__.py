"""Attention mechanisms, one file each; :mod:`densattn.attention.registry` maps names to classes."""

from densattn.attention.density import (
    PRESETS,
    DensityAdaptiveAttention,
    DensityBlock,
    DensityPreset,
    suggest_num_heads,
)
from densattn.attention.gqa import GroupedQueryDensityAttention

__all__ = [
    "PRESETS",
    "DensityAdaptiveAttention",
    "DensityBlock",
    "DensityPreset",
    "GroupedQueryDensityAttention",
    "suggest_num_heads",
]
