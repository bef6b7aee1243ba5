"""densattn: density-adaptive attention (DAAM) and its peers.

Example:
    >>> import torch, densattn
    >>> attn = densattn.DensityAdaptiveAttention(384, norm_dim=1)
    >>> attn(torch.randn(2, 7, 384)).shape
    torch.Size([2, 7, 384])
"""

import importlib

from densattn.attention import (
    PRESETS,
    DensityAdaptiveAttention,
    DensityBlock,
    GroupedQueryDensityAttention,
    suggest_num_heads,
)
from densattn.functional import density_attention
from densattn.heads import DensityHead, LinearProbe, PoolHead, build_head

__version__ = "0.1.0"

# heavier pieces (transformers, librosa, peft, matplotlib) load on first use
_LAZY = {
    "DensityAdapterModel": "densattn.adapter",
    "LabeledDataset": "densattn.data",
    "list_sources": "densattn.data",
    "load_dataset": "densattn.data",
    "EncoderAdapter": "densattn.encoders",
    "HFEncoder": "densattn.encoders",
    "get_encoder": "densattn.encoders",
    "list_encoders": "densattn.encoders",
    "FusionHead": "densattn.fusion",
    "ImportanceFactor": "densattn.explain",
    "explain_run": "densattn.explain",
    "ablate_run": "densattn.ablation",
    "compare_runs": "densattn.stats",
    "paired_difference": "densattn.stats",
    "evaluate_robustness": "densattn.robustness",
    "run_fusion_experiment": "densattn.fusion_train",
    "LoraClassifier": "densattn.lora_model",
    "run_lora_experiment": "densattn.lora",
    "concentration_strength": "densattn.concentration",
    "concentration_fluctuation": "densattn.concentration",
    "QueryAttentionRecorder": "densattn.concentration",
    "SoftPromptClassifier": "densattn.prompting",
    "create_attention": "densattn.attention.registry",
    "list_attention": "densattn.attention.registry",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'densattn' has no attribute {name!r}")


__all__ = sorted(_LAZY) + [
    "PRESETS",
    "DensityAdaptiveAttention",
    "DensityBlock",
    "DensityHead",
    "GroupedQueryDensityAttention",
    "LinearProbe",
    "PoolHead",
    "build_head",
    "density_attention",
    "suggest_num_heads",
    "__version__",
]
