"""Adapters: everything a run trains, behind one contract (:mod:`densattn.adapters.base`).

* ``"head"`` — :class:`DensityAdapterModel`, a head on pooled per-layer features;
* ``"fusion"`` — :class:`FusionAdapter`, a fusion head over several encoders' features;
* ``"lora"`` / ``"ia3"`` / ``"daam_peft"`` — :class:`PeftClassifier`, an encoder tuned end to end (LoRA, IA3, or DAAM
  gates inside the model) with a linear classifier.

:func:`load_adapter` opens any of them from a run directory.
"""

import importlib

from densattn.adapters.base import (
    ADAPTER_TYPES,
    CONFIG_NAME,
    WEIGHTS_NAME,
    AdapterConfig,
    AdapterMixin,
    adapter_type,
    load_adapter,
)
from densattn.adapters.fusion import FusionAdapter, FusionConfig
from densattn.adapters.head import DensityAdapterModel, HeadConfig

_LAZY = {  # these import peft
    "PeftClassifier": "densattn.adapters.end_to_end",
    "PeftClassifierConfig": "densattn.adapters.end_to_end",
    "DensityTuner": "densattn.adapters.tuners",
    "IA3Tuner": "densattn.adapters.tuners",
    "LoraTuner": "densattn.adapters.tuners",
    "make_tuner": "densattn.adapters.tuners",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'densattn.adapters' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [
    "ADAPTER_TYPES",
    "CONFIG_NAME",
    "WEIGHTS_NAME",
    "AdapterConfig",
    "AdapterMixin",
    "DensityAdapterModel",
    "FusionAdapter",
    "FusionConfig",
    "HeadConfig",
    "adapter_type",
    "load_adapter",
    *_LAZY,
]
