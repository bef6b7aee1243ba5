"""Name -> attention class, with validated keyword arguments (like timm's ``create_model``).

Example:
    >>> from densattn.attention.registry import create_attention, list_attention
    >>> attn = create_attention("daam", num_features=16, num_heads=2)
    >>> "quaternion_shared" in list_attention()
    True
"""

from __future__ import annotations

import inspect
from functools import partial
from typing import Any

from torch import nn

from densattn.attention.bilinear import BilinearAttention, BilinearAttentionNetwork
from densattn.attention.clustered import ClusteredAttention, ImprovedClusteredAttention
from densattn.attention.density import DensityAdaptiveAttention, DensityBlock
from densattn.attention.gqa import GroupedQueryDensityAttention
from densattn.attention.multilinear import MultiLinearAttention
from densattn.attention.quaternion import QuaternionSelfAttention, QuaternionTransformerEncoderLayer

_REGISTRY: dict[str, Any] = {
    "daam": DensityAdaptiveAttention,
    "daam_mixture_of_densities": partial(DensityAdaptiveAttention, preset="mixture_of_densities"),
    "daam_mixture": partial(DensityAdaptiveAttention, preset="mixture"),
    "density_block": DensityBlock,
    "gqdaam": GroupedQueryDensityAttention,
    "quaternion_shared": partial(QuaternionSelfAttention, mode="shared"),
    "quaternion_hamilton": partial(QuaternionSelfAttention, mode="hamilton"),
    "quaternion_encoder_layer": QuaternionTransformerEncoderLayer,
    "clustered": ClusteredAttention,
    "improved_clustered": ImprovedClusteredAttention,
    "bilinear": BilinearAttention,
    "ban": BilinearAttentionNetwork,
    "multilinear": MultiLinearAttention,
}


def list_attention() -> list[str]:
    """Registered attention names."""
    return sorted(_REGISTRY)


def _target(name: str):
    factory = _REGISTRY[name]
    return factory.func if isinstance(factory, partial) else factory


def create_attention(name: str, **kwargs: Any) -> nn.Module:
    """Build the attention module registered as ``name``.

    Raises:
        ValueError: for an unknown name (listing the known ones) or a keyword the class does not accept.
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown attention {name!r}; choose one of {list_attention()}")
    params = inspect.signature(_target(name).__init__).parameters
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    unknown = [k for k in kwargs if k not in params and not accepts_any]
    if unknown:
        allowed = [p for p in params if p not in ("self",) and params[p].kind is not inspect.Parameter.VAR_KEYWORD]
        raise ValueError(f"{name}: unknown argument(s) {unknown}; accepted: {allowed}")
    return _REGISTRY[name](**kwargs)
