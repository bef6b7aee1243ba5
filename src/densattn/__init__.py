"""densattn: density-adaptive attention (DAAM) and its peers.

Example:
    >>> import torch, densattn
    >>> attn = densattn.DensityAdaptiveAttention(384, norm_dim=1)
    >>> attn(torch.randn(2, 7, 384)).shape
    torch.Size([2, 7, 384])
"""

from densattn.attention import (
    PRESETS,
    DensityAdaptiveAttention,
    DensityBlock,
    GroupedQueryDensityAttention,
    suggest_num_heads,
)
from densattn.functional import density_attention

__version__ = "0.1.0"

__all__ = [
    "PRESETS",
    "DensityAdaptiveAttention",
    "DensityBlock",
    "GroupedQueryDensityAttention",
    "density_attention",
    "suggest_num_heads",
    "__version__",
]
