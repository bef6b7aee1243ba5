"""Attention mechanisms, one file each; :mod:`densattn.attention.registry` maps names to classes."""

from densattn.attention.bilinear import BilinearAttention, BilinearAttentionNetwork, bilinear_pool, joint_pair_softmax
from densattn.attention.clustered import (
    ClusteredAttention,
    ImprovedClusteredAttention,
    cluster_queries,
    clustered_attention,
    improved_clustered_attention,
)
from densattn.attention.density import (
    PRESETS,
    DensityAdaptiveAttention,
    DensityBlock,
    DensityPreset,
    suggest_num_heads,
)
from densattn.attention.gqa import GroupedQueryDensityAttention
from densattn.attention.mixers import (
    ClusteredMixer,
    DensityTokenMixer,
    GroupedQueryDensityMixer,
    ImprovedClusteredMixer,
    PBRelaxAttention,
    QuaternionMixer,
    SoftmaxAttention,
)
from densattn.attention.multilinear import MultiLinearAttention
from densattn.attention.pb_relax import pb_relax_attention
from densattn.attention.quaternion import (
    QuaternionFeedForward,
    QuaternionSelfAttention,
    QuaternionTransformerEncoderLayer,
    hamilton_attention,
    shared_score_attention,
)
from densattn.attention.quaternion_linear import QuaternionLinear, QuaternionRMSNorm, hamilton_matrix

__all__ = [
    "ClusteredMixer",
    "DensityTokenMixer",
    "GroupedQueryDensityMixer",
    "ImprovedClusteredMixer",
    "PBRelaxAttention",
    "QuaternionMixer",
    "SoftmaxAttention",
    "pb_relax_attention",
    "PRESETS",
    "BilinearAttention",
    "BilinearAttentionNetwork",
    "ClusteredAttention",
    "DensityAdaptiveAttention",
    "DensityBlock",
    "DensityPreset",
    "GroupedQueryDensityAttention",
    "ImprovedClusteredAttention",
    "MultiLinearAttention",
    "QuaternionFeedForward",
    "QuaternionLinear",
    "QuaternionRMSNorm",
    "QuaternionSelfAttention",
    "QuaternionTransformerEncoderLayer",
    "hamilton_attention",
    "hamilton_matrix",
    "shared_score_attention",
    "bilinear_pool",
    "cluster_queries",
    "clustered_attention",
    "improved_clustered_attention",
    "joint_pair_softmax",
    "suggest_num_heads",
]
