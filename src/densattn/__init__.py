"""densattn: density-adaptive attention (DAAM) and its peers.

Example:
    >>> import torch, densattn
    >>> attn = densattn.DensityAdaptiveAttention(384, norm_dim=1)
    >>> attn(torch.randn(2, 7, 384)).shape
    torch.Size([2, 7, 384])
"""

from densattn.adapter import DensityAdapterModel
from densattn.attention import (
    PRESETS,
    DensityAdaptiveAttention,
    DensityBlock,
    GroupedQueryDensityAttention,
    suggest_num_heads,
)
from densattn.data import LabeledDataset, list_sources, load_dataset
from densattn.encoders import EncoderAdapter, HFEncoder, get_encoder, list_encoders
from densattn.functional import density_attention
from densattn.fusion import FusionHead
from densattn.heads import DensityHead, LinearProbe, PoolHead, build_head

__version__ = "0.1.0"

__all__ = [
    "DensityAdapterModel",
    "DensityHead",
    "EncoderAdapter",
    "FusionHead",
    "HFEncoder",
    "LabeledDataset",
    "LinearProbe",
    "PoolHead",
    "build_head",
    "get_encoder",
    "list_encoders",
    "list_sources",
    "load_dataset",
    "PRESETS",
    "DensityAdaptiveAttention",
    "DensityBlock",
    "GroupedQueryDensityAttention",
    "density_attention",
    "suggest_num_heads",
    "__version__",
]
