"""The public contract of DAAM-PEFT: :class:`DensityConfig`, written as ``adapter_config.json``.

The config names what is gated (``target_modules``), how the density statistics are taken (``norm_axis``) and which
DAAM kernel preset computes the gate (arXiv `2401.11143 <https://arxiv.org/abs/2401.11143>`_; presets in
:data:`densattn.attention.PRESETS`). It round-trips through JSON exactly (:meth:`DensityConfig.to_dict` /
:meth:`DensityConfig.from_dict`), and is duck-compatible with the attributes HF ``peft``'s tuner machinery reads
(``target_modules``, ``exclude_modules``, ``modules_to_save``, ``inference_mode``, ``peft_type``), so peft's
``BaseTuner`` can inject it. It is not a ``peft.PeftConfig``: peft dispatches configs through its closed
``PeftType`` enum, which has no entry for this method.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from densattn.attention.density import PRESETS

__all__ = ["CONFIG_NAME", "DensityConfig", "METHOD_TYPE", "NORM_AXES", "PEFT_TYPE", "WEIGHTS_NAME"]

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
METHOD_TYPE = "daam_peft"
PEFT_TYPE = "DAAM_PEFT"  # peft-style metadata only: peft 0.21's PeftType enum has no such member
NORM_AXES = ("features", "tokens")
NormAxis = Literal["features", "tokens"]


@dataclass
class DensityConfig:
    """Configuration of a DAAM gate on the output ``h`` of every target module (the DAAM-PEFT method).

    Each target's output is multiplied by ``1 + g * (a(h) - 1)``, where ``a`` is the DAAM density weight of
    :func:`densattn.functional.density_attention` and ``g`` a learned mixing weight per output feature, initialised
    to ``init_gate`` (0: the adapted model equals the base model; ``g = 1``: pure DAAM ``y = h * a``).

    Args:
        target_modules: which modules to gate: a list of names (a module matches when its name equals an entry or
            ends with ``"." + entry``, as in peft), one regex string matched against the whole name, or peft's
            ``"all-linear"``. ``None``: :func:`densattn.peft.default_target_modules` of the model.
        exclude_modules: names or a regex of modules never to gate (peft's rule).
        norm_axis: ``"features"`` -- per token (per pixel for convolutions), statistics over the output features
            (channels); heads are contiguous chunks of them. ``"tokens"`` -- per feature, statistics over the
            sequence (spatial positions for convolutions), honouring the attention mask.
        num_heads: heads along the norm axis (``"features"`` only; must divide every target's output size).
        num_gaussians: Gaussians per head.
        preset: kernel preset, one of ``densattn.attention.PRESETS`` (``"paper"``, ``"mixture_of_densities"``,
            ``"mixture"``).
        eps: variance epsilon of the kernel.
        init_gate: initial mixing weight ``g`` (0 keeps the model unchanged at initialisation).
        modules_to_save: modules trained in full and saved with the adapter (e.g. a classifier). ``None``: a
            top-level ``classifier`` or ``score`` module of the model, when there is one (saved by construction);
            ``[]``: none.
        inference_mode: freeze the adapter (set by ``DensityModel.from_pretrained(..., is_trainable=False)``).
        base_model_name_or_path: where the base model came from (metadata).
        type: the method's name in densattn's adapter contract (always ``"daam_peft"``).
        peft_type: peft-style method tag (always ``"DAAM_PEFT"``; metadata).

    Raises:
        ValueError: for an unknown ``norm_axis`` or ``preset``, non-positive counts, ``num_heads != 1`` with
            ``norm_axis="tokens"``, an invalid regex, or a ``type`` other than ``"daam_peft"``.

    Example:
        >>> cfg = DensityConfig(target_modules=["output.dense"], norm_axis="tokens")
        >>> DensityConfig.from_dict(cfg.to_dict()) == cfg
        True
        >>> cfg.to_dict()["type"], cfg.to_dict()["peft_type"]
        ('daam_peft', 'DAAM_PEFT')
    """

    target_modules: list[str] | str | None = field(
        default=None, metadata={"help": "module names (suffix match) or one regex (full match); None: defaults"}
    )
    exclude_modules: list[str] | str | None = field(default=None, metadata={"help": "modules never gated"})
    norm_axis: NormAxis = field(default="features", metadata={"help": "'features' or 'tokens'"})
    num_heads: int = field(default=1, metadata={"help": "heads along the norm axis ('features' only)"})
    num_gaussians: int = field(default=1, metadata={"help": "Gaussians per head"})
    preset: str = field(default="paper", metadata={"help": f"kernel preset: {sorted(PRESETS)}"})
    eps: float = field(default=1e-5, metadata={"help": "variance epsilon"})
    init_gate: float = field(default=0.0, metadata={"help": "initial mixing weight g (0 = identity at init)"})
    modules_to_save: list[str] | None = field(
        default=None, metadata={"help": "trained and saved in full; None: 'classifier'/'score' when present"}
    )
    inference_mode: bool = field(default=False, metadata={"help": "adapter frozen"})
    base_model_name_or_path: str | None = field(default=None, metadata={"help": "metadata"})
    type: str = field(default=METHOD_TYPE, metadata={"help": "densattn adapter type"})
    peft_type: str = field(default=PEFT_TYPE, metadata={"help": "peft-style method tag"})

    # attributes peft's target matching reads with getattr; not fields, never saved
    target_parameters = None
    layers_to_transform = None
    layers_pattern = None
    bias = "none"
    is_prompt_learning = False

    def __post_init__(self) -> None:
        if self.type != METHOD_TYPE:
            raise ValueError(f"type must be {METHOD_TYPE!r} for a DensityConfig, got {self.type!r}")
        if self.peft_type != PEFT_TYPE:
            raise ValueError(f"peft_type must be {PEFT_TYPE!r} for a DensityConfig, got {self.peft_type!r}")
        self.target_modules = _names_or_regex(self.target_modules, "target_modules")
        self.exclude_modules = _names_or_regex(self.exclude_modules, "exclude_modules")
        if self.modules_to_save is not None:
            if isinstance(self.modules_to_save, str) or not all(isinstance(m, str) and m for m in self.modules_to_save):
                raise ValueError(
                    f"modules_to_save must be a list of module names or None, got {self.modules_to_save!r}; "
                    "wrap a single name as ['classifier']"
                )
            self.modules_to_save = list(self.modules_to_save)
        if self.norm_axis not in NORM_AXES:
            raise ValueError(f"norm_axis must be one of {NORM_AXES}, got {self.norm_axis!r}")
        for name in ("num_heads", "num_gaussians"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.norm_axis == "tokens" and self.num_heads != 1:
            raise ValueError(
                f"num_heads={self.num_heads} with norm_axis='tokens': heads split the norm axis into contiguous "
                "chunks, and over tokens that would cut every sequence into fixed position blocks that padding "
                "shifts; use num_heads=1 with norm_axis='tokens' (heads apply to norm_axis='features')"
            )
        if self.preset not in PRESETS:
            raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {self.preset!r}")
        if not (isinstance(self.eps, (int, float)) and self.eps >= 0):
            raise ValueError(f"eps must be a number >= 0 (it is added to the variance), got {self.eps!r}")
        if not (isinstance(self.init_gate, (int, float)) and math.isfinite(self.init_gate)):
            raise ValueError(f"init_gate must be a finite number (0 keeps the model unchanged), got {self.init_gate!r}")
        self.eps, self.init_gate = float(self.eps), float(self.init_gate)

    def to_dict(self) -> dict[str, Any]:
        """Every field as plain JSON types (lists, not sets)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DensityConfig:
        """Inverse of :meth:`to_dict`.

        Raises:
            ValueError: when ``data`` is not a DAAM-PEFT config (e.g. a peft LoRA ``adapter_config.json``) or has
                unknown keys.
        """
        if not isinstance(data, dict):
            raise ValueError(f"a DensityConfig is built from a dict, got {type(data).__name__}")
        kind = data.get("type")
        if kind != METHOD_TYPE:
            peft_type = data.get("peft_type")
            hint = (
                f" It looks like a peft {peft_type} adapter: load it with peft.PeftModel.from_pretrained."
                if peft_type and peft_type != PEFT_TYPE
                else ""
            )
            raise ValueError(f"not a DAAM-PEFT config: 'type' is {kind!r}, expected {METHOD_TYPE!r}.{hint}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown DensityConfig keys {unknown}; valid keys: {sorted(known)}")
        return cls(**data)

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``adapter_config.json`` into ``directory`` (atomically); returns its path."""
        from densattn.io import atomic_write_text

        path = Path(directory) / CONFIG_NAME
        atomic_write_text(path, self.to_json_string())
        return path

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> DensityConfig:
        """Read ``adapter_config.json`` from ``directory``.

        Raises:
            FileNotFoundError: when the folder has no ``adapter_config.json``.
            ValueError: when it holds another method's config.
        """
        path = Path(directory) / CONFIG_NAME
        if not path.is_file():
            raise FileNotFoundError(f"{directory} has no {CONFIG_NAME}; is it a folder written by save_pretrained?")
        return cls.from_dict(json.loads(path.read_text()))


def _names_or_regex(value: Any, name: str) -> list[str] | str | None:
    if value is None:
        return None
    if isinstance(value, str):
        if not value:
            raise ValueError(f"{name} must not be an empty string; pass module names or a regex")
        try:
            re.compile(value)
        except re.error as error:
            raise ValueError(f"{name}={value!r} is not a valid regex ({error}); pass a list for plain names") from None
        return value
    if isinstance(value, (list, tuple, set, frozenset)) and all(isinstance(v, str) and v for v in value):
        if not value:
            if name == "exclude_modules":
                return None
            raise ValueError(f"{name} is empty; pass module names, a regex, or None for the defaults")
        return sorted(value) if isinstance(value, (set, frozenset)) else list(value)
    raise ValueError(f"{name} must be a list of module names or one regex string, got {value!r}")
