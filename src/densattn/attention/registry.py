"""Name -> attention class, with validated keyword arguments (like timm's ``create_model``).

Every entry has a kind:

- ``"token_mixer"``: self-attention over the tokens of ``x (B, L, D)`` behind one contract,
  ``forward(x, *, mask=None, need_weights=False)`` -> ``y`` or ``(y, weights)``, built as
  ``create_attention(name, embed_dim=D, num_heads=H, **options)`` (see :mod:`densattn.attention.mixers`);
- ``"feature_gate"``: DAAM-style gates over an axis of features (e.g. the layer axis of pooled features);
- ``"fusion"``: modules that combine two or more inputs (bilinear, BAN, multilinear);
- ``"layer"``: whole encoder layers.

``daam`` and ``gqdaam`` exist as a token mixer and as a feature gate. ``kind=`` picks one; without it the
feature gate is built when ``num_features=`` is given (its first argument) and the token mixer otherwise.

Example:
    >>> from densattn.attention.registry import create_attention, list_attention
    >>> mixer = create_attention("daam", embed_dim=32, num_heads=4)
    >>> gate = create_attention("daam", num_features=16, num_heads=2)
    >>> list_attention(kind="token_mixer")[:3]
    ['clustered', 'daam', 'gqdaam']
"""

from __future__ import annotations

import inspect
from functools import partial
from typing import Any

from torch import nn

from densattn.attention.bilinear import BilinearAttention, BilinearAttentionNetwork
from densattn.attention.density import DensityAdaptiveAttention, DensityBlock
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
from densattn.attention.quaternion import QuaternionTransformerEncoderLayer

KINDS = ("token_mixer", "feature_gate", "fusion", "layer")

_REGISTRY: dict[str, dict[str, Any]] = {
    "token_mixer": {
        "softmax": SoftmaxAttention,
        "pb_relax": PBRelaxAttention,
        "daam": DensityTokenMixer,
        "gqdaam": GroupedQueryDensityMixer,
        "quaternion_shared": partial(QuaternionMixer, mode="shared"),
        "quaternion_hamilton": partial(QuaternionMixer, mode="hamilton"),
        "clustered": ClusteredMixer,
        "improved_clustered": ImprovedClusteredMixer,
    },
    "feature_gate": {
        "daam": DensityAdaptiveAttention,
        "daam_mixture_of_densities": partial(DensityAdaptiveAttention, preset="mixture_of_densities"),
        "daam_mixture": partial(DensityAdaptiveAttention, preset="mixture"),
        "density_block": DensityBlock,
        "gqdaam": GroupedQueryDensityAttention,
    },
    "fusion": {"bilinear": BilinearAttention, "ban": BilinearAttentionNetwork, "multilinear": MultiLinearAttention},
    "layer": {"quaternion_encoder_layer": QuaternionTransformerEncoderLayer},
}


def list_attention(kind: str | None = None) -> list[str]:
    """Registered attention names, all or of one ``kind`` (``"token_mixer"``, ``"feature_gate"``, ...).

    Raises:
        ValueError: an unknown kind (the valid ones are listed).
    """
    if kind is None:
        return sorted({name for entries in _REGISTRY.values() for name in entries})
    if kind not in _REGISTRY:
        raise ValueError(f"kind must be one of {list(KINDS)} or None, got {kind!r}")
    return sorted(_REGISTRY[kind])


def attention_kinds(name: str) -> list[str]:
    """The kinds ``name`` is registered under (``[]`` for an unknown name)."""
    return [kind for kind in KINDS if name in _REGISTRY[kind]]


def allowed_options(name: str, kind: str | None = None) -> list[str]:
    """Keyword arguments ``create_attention(name, kind=kind, ...)`` accepts."""
    factory = _REGISTRY[_resolve(name, kind, {})][name]
    fixed = set(factory.keywords) if isinstance(factory, partial) else set()
    target = factory.func if isinstance(factory, partial) else factory
    names: list[str] = []
    for cls in target.__mro__:
        if "__init__" not in vars(cls):
            continue
        params = inspect.signature(vars(cls)["__init__"]).parameters
        names += [
            p
            for p, spec in params.items()
            if p != "self" and spec.kind not in (spec.VAR_KEYWORD, spec.VAR_POSITIONAL) and p not in names
        ]
        if not any(spec.kind is spec.VAR_KEYWORD for spec in params.values()):
            break
    return [n for n in names if n not in fixed]


def _resolve(name: str, kind: str | None, kwargs: dict[str, Any]) -> str:
    kinds = attention_kinds(name)
    if not kinds:
        raise ValueError(f"unknown attention {name!r}; choose one of {list_attention()}")
    if kind is not None:
        if kind not in kinds:
            raise ValueError(f"{name!r} is registered as {kinds}, not as kind={kind!r}")
        return kind
    if len(kinds) == 1:
        return kinds[0]
    return "feature_gate" if "num_features" in kwargs else "token_mixer"


def create_attention(name: str, *, kind: str | None = None, **kwargs: Any) -> nn.Module:
    """Build the attention module registered as ``name``.

    Token mixers take ``embed_dim`` and ``num_heads`` plus their own options; see :func:`allowed_options`.

    Raises:
        ValueError: an unknown name (the known ones are listed), a kind the name is not registered as, a keyword
            the class does not accept or one the entry fixes (the accepted ones are listed), or a token mixer
            built without ``embed_dim``/``num_heads``.
    """
    kind = _resolve(name, kind, kwargs)
    factory = _REGISTRY[kind][name]
    allowed = allowed_options(name, kind)
    unknown = [k for k in kwargs if k not in allowed]
    if unknown:
        raise ValueError(f"{name} ({kind}): unknown argument(s) {unknown}; accepted: {allowed}")
    if kind == "token_mixer":
        missing = [k for k in ("embed_dim", "num_heads") if k not in kwargs]
        if missing:
            raise ValueError(
                f"token mixer {name!r} needs {missing}: create_attention({name!r}, embed_dim=..., "
                f"num_heads=..., **options); options: {allowed}"
            )
    return factory(**kwargs)
