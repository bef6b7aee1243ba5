"""Classification heads: on pooled per-layer encoder features (:mod:`densattn.heads.pooled`) and on several
encoders' features at once (:mod:`densattn.heads.fusion`)."""

from densattn.heads.fusion import FUSION_METHODS, FusionHead
from densattn.heads.pooled import (
    ATTENTIONS,
    HEAD_OPTIONS,
    HEAD_TYPES,
    DensityHead,
    LinearProbe,
    PoolHead,
    build_head,
    count_parameters,
    near_square,
)

__all__ = [
    "ATTENTIONS",
    "FUSION_METHODS",
    "HEAD_OPTIONS",
    "HEAD_TYPES",
    "DensityHead",
    "FusionHead",
    "LinearProbe",
    "PoolHead",
    "build_head",
    "count_parameters",
    "near_square",
]
