"""densattn: density-adaptive attention (DAAM) and its peers.

The main job: a frozen encoder -> cached per-layer features -> a head trained over k folds -> metrics and an adapter.

Example:
    >>> import torch, densattn
    >>> attn = densattn.DensityAdaptiveAttention(384, norm_dim=1)
    >>> attn(torch.randn(2, 7, 384)).shape
    torch.Size([2, 7, 384])
    >>> {"run_experiment", "load_adapter", "get_encoder"} <= set(dir(densattn))
    True
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
from densattn.heads import DensityHead, FusionHead, LinearProbe, PoolHead, build_head

__version__ = "0.2.0"

# heavier pieces (transformers, librosa, peft, matplotlib) load on first use
_LAZY = {
    # the main job
    "run_experiment": "densattn.train",
    "run_fusion_experiment": "densattn.train",
    "run_folds": "densattn.train",
    "TrainConfig": "densattn.train",
    "run_end_to_end_experiment": "densattn.train.end_to_end",
    "cached_features": "densattn.data.cache",
    "FeatureSet": "densattn.data.cache",
    "load_dataset": "densattn.data",
    "list_sources": "densattn.data",
    "LabeledDataset": "densattn.data",
    "get_encoder": "densattn.encoders",
    "list_encoders": "densattn.encoders",
    "EncoderAdapter": "densattn.encoders",
    "HFEncoder": "densattn.encoders",
    "load_task": "densattn.pipeline",
    # adapters
    "load_adapter": "densattn.adapters",
    "DensityAdapterModel": "densattn.adapters",
    "FusionAdapter": "densattn.adapters",
    "PeftClassifier": "densattn.adapters",
    "LoraTuner": "densattn.adapters",
    "IA3Tuner": "densattn.adapters",
    # analysis
    "ImportanceFactor": "densattn.analysis.importance",
    "explain_run": "densattn.analysis.importance",
    "ablate_run": "densattn.analysis.ablation",
    "compare_runs": "densattn.analysis.stats",
    "paired_difference": "densattn.analysis.stats",
    "evaluate_adapter": "densattn.analysis.evaluate",
    "evaluate_robustness": "densattn.analysis.robustness",
    # concentration
    "concentration_strength": "densattn.concentration.metrics",
    "concentration_fluctuation": "densattn.concentration.metrics",
    "QueryAttentionRecorder": "densattn.concentration.metrics",
    "SoftPromptClassifier": "densattn.concentration.prompting",
    # attention registry
    "create_attention": "densattn.attention.registry",
    "list_attention": "densattn.attention.registry",
    # one transformer layer for every token mixer (CogView Sandwich-LN / PB-relax)
    "TransformerEncoderLayer": "densattn.layers",
    "TransformerEncoder": "densattn.layers",
    "PBRelaxLayerNorm": "densattn.layers",
    "pb_relax_attention": "densattn.attention.pb_relax",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'densattn' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = sorted(_LAZY) + [
    "PRESETS",
    "DensityAdaptiveAttention",
    "DensityBlock",
    "DensityHead",
    "FusionHead",
    "GroupedQueryDensityAttention",
    "LinearProbe",
    "PoolHead",
    "build_head",
    "density_attention",
    "suggest_num_heads",
    "__version__",
]
