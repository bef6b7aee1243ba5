"""Tuners that adapt a frozen encoder end to end: LoRA and IA3 through HF ``peft``.

A tuner is a small dataclass: its options, :meth:`resolve` (default targets for an encoder), :meth:`wrap` (the
adapted model), and the adapter-only state dict of the wrapped model. :class:`~densattn.adapters.PeftClassifier`
holds one; its config records ``tuner.to_dict()``.

* LoRA (Hu et al. 2021, arXiv `2106.09685 <https://arxiv.org/abs/2106.09685>`_) adds to a frozen weight ``W0`` a
  low-rank update scaled by ``alpha / r``: ``h = W0 x + (alpha / r) B A x`` with ``B`` initialised to 0, so at
  initialisation the model equals the frozen encoder. For a ``Conv2d`` target (EfficientNet), ``A`` is a convolution
  with the base layer's kernel into ``r`` channels and ``B`` a 1x1 convolution. Parameters: ``r (in + out)`` per
  ``Linear(in, out)``; ``r in k^2 / groups + r out`` per ``Conv2d`` (:func:`lora_parameter_count`).
* IA3 (Liu et al. 2022, arXiv `2205.05638 <https://arxiv.org/abs/2205.05638>`_) rescales activations with learned
  vectors initialised to 1: the output of a targeted attention projection, ``h = l ⊙ (W0 x)``, and the *input* of a
  targeted feed-forward layer, ``h = W0 (l ⊙ x)``. Parameters: ``out`` per targeted projection, ``in`` per targeted
  feed-forward layer.

* DAAM inside the model (:class:`DensityTuner`, :mod:`densattn.peft`) gates target outputs:
  ``y = h (1 + g (a(h) - 1))``, ``g`` initialised at 0. Parameters: per target, ``2 H F`` offsets and spreads
  (``paper`` preset) plus ``F`` gate weights.

Default targets per bundled encoder (:func:`default_target_modules`): MiniLM / BERT ``query, value`` (LoRA, as the
LoRA paper and peft's default) and ``key, value, output.dense`` with ``output.dense`` as feed-forward (IA3, peft's
default for BERT); Whisper ``q_proj, v_proj`` (LoRA) and ``k_proj, v_proj, fc2`` (IA3); EfficientNet the 1x1
expansion and projection convolutions of every block (their depthwise and stem convolutions use TF "SAME" padding
done outside ``Conv2d``, which a tuner layer would not reproduce).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

from torch import Tensor, nn

__all__ = [
    "DensityTuner",
    "IA3Tuner",
    "LoraTuner",
    "TUNERS",
    "default_target_modules",
    "encoder_kind",
    "lora_parameter_count",
    "make_tuner",
]

_DEFAULT_TARGETS: dict[str, dict[str, tuple[list[str], list[str]]]] = {
    # kind -> method -> (target modules, IA3 feed-forward modules)
    "text": {"lora": (["query", "value"], []), "ia3": (["key", "value", "output.dense"], ["output.dense"])},
    "whisper": {"lora": (["q_proj", "v_proj"], []), "ia3": (["k_proj", "v_proj", "fc2"], ["fc2"])},
    "efficientnet": {
        "lora": (["_expand_conv", "_project_conv"], []),
        "ia3": (["_expand_conv", "_project_conv"], ["_project_conv"]),
    },
}


def encoder_kind(encoder) -> str:
    """How an encoder is run end to end: ``"text"`` / ``"image"`` (HF checkpoints), ``"whisper"``, ``"efficientnet"``.

    Raises:
        ValueError: for encoders with no differentiable path here (HF audio checkpoints other than whisper-tiny).

    Example:
        >>> from densattn.encoders import get_encoder
        >>> from densattn.encoders.base import EncoderAdapter
        >>> encoder_kind(get_encoder("minilm"))
        'text'
        >>> class Spectra(EncoderAdapter):  # some other audio encoder
        ...     name, modality, num_layers, dim = "spectra", "audio", 1, 8
        >>> encoder_kind(Spectra())
        Traceback (most recent call last):
        ...
        ValueError: end-to-end tuning supports the bundled encoders and Hugging Face text/image checkpoints, not ...
    """
    from densattn.encoders.efficientnet import EfficientNetLite0Encoder
    from densattn.encoders.hf import HFEncoder
    from densattn.encoders.whisper import WhisperTinyEncoder

    if isinstance(encoder, WhisperTinyEncoder):
        return "whisper"
    if isinstance(encoder, EfficientNetLite0Encoder):
        return "efficientnet"
    if isinstance(encoder, HFEncoder) and encoder.modality in ("text", "image"):
        return encoder.modality
    raise ValueError(
        f"end-to-end tuning supports the bundled encoders and Hugging Face text/image checkpoints, not "
        f"{encoder.name!r} ({encoder.modality}); train a head on its cached features instead (--method head)"
    )


def default_target_modules(encoder, method: str = "lora") -> tuple[list[str], list[str]]:
    """``(target_modules, feedforward_modules)`` a tuner adapts when none are given (see the module docstring).

    Raises:
        ValueError: no default for this model type and ``method`` (the message says to pass ``--target-modules``).

    Example:
        >>> from densattn.encoders import get_encoder
        >>> minilm = get_encoder("minilm")
        >>> default_target_modules(minilm, "lora")
        (['query', 'value'], [])
        >>> default_target_modules(minilm, "ia3")
        (['key', 'value', 'output.dense'], ['output.dense'])
    """
    kind = encoder_kind(encoder)
    if kind in _DEFAULT_TARGETS:
        targets, ff = _DEFAULT_TARGETS[kind][method]
        return list(targets), list(ff)
    from peft.utils import constants

    model_type = getattr(getattr(encoder.raw_model(), "config", None), "model_type", None)
    if method == "lora" and model_type in constants.TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING:
        return list(constants.TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING[model_type]), []
    if method == "ia3" and model_type in constants.TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING:
        targets = list(constants.TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING[model_type])
        ff = list(constants.TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING.get(model_type, []))
        return targets, ff
    raise ValueError(
        f"no default {method} target modules for model type {model_type!r}; pass --target-modules NAME,NAME "
        "(names of its Linear or Conv2d submodules, e.g. query,value for BERT)"
    )


def _matches(name: str, targets: Sequence[str]) -> bool:
    return any(name == t or name.endswith("." + t) for t in targets)  # peft's suffix rule


def lora_parameter_count(model: nn.Module, target_modules: Sequence[str], rank: int) -> int:
    """Analytic LoRA parameter count of ``model`` (before wrapping), see the module docstring:
    ``r (in + out)`` per targeted ``Linear(in, out)``, ``r in k^2 / groups + r out`` per targeted ``Conv2d``.

    A target matches a module whose name equals it or ends with ``"." + target`` (peft's rule).

    Example:
        >>> block = nn.ModuleDict({"query": nn.Linear(8, 8), "value": nn.Linear(8, 4), "key": nn.Linear(8, 8),
        ...                        "conv": nn.Conv2d(4, 6, kernel_size=3)})
        >>> lora_parameter_count(block, ["query", "value"], rank=2)  # 2 (8 + 8) + 2 (8 + 4)
        56
        >>> lora_parameter_count(block, ["conv"], rank=2)  # 2 * 4 * 9 + 2 * 6
        84
        >>> from peft import LoraConfig, get_peft_model
        >>> tuned = get_peft_model(block, LoraConfig(r=2, target_modules=["query", "value", "conv"]))
        >>> sum(p.numel() for p in tuned.parameters() if p.requires_grad)  # peft's own count agrees
        140
    """
    total = 0
    for name, module in model.named_modules():
        if not _matches(name, target_modules):
            continue
        if isinstance(module, nn.Linear):
            total += rank * (module.in_features + module.out_features)
        elif isinstance(module, nn.Conv2d):
            kh, kw = module.kernel_size
            total += rank * module.in_channels * kh * kw // module.groups + rank * module.out_channels
    return total


def _check_targets(model: nn.Module, targets: Sequence[str], method: str) -> None:
    if not any(_matches(n, targets) and isinstance(m, (nn.Linear, nn.Conv2d)) for n, m in model.named_modules()):
        raise ValueError(
            f"target_modules {list(targets)} match no Linear or Conv2d module of the encoder, so {method} would "
            "adapt nothing; pass names of its submodules (e.g. query,value for BERT, q_proj,v_proj for Whisper)"
        )


@dataclass
class _PeftTuner:
    method: ClassVar[str]
    target_modules: list[str] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, **asdict(self)}

    def resolve(self, encoder) -> _PeftTuner:
        """A copy with the default targets of ``encoder`` filled in where none were given."""
        raise NotImplementedError

    def peft_config(self):
        raise NotImplementedError

    def wrap(self, model: nn.Module) -> nn.Module:
        """``model`` wrapped by peft (only the tuner's parameters trainable)."""
        from peft import get_peft_model

        _check_targets(model, self.target_modules or [], self.method)
        return get_peft_model(model, self.peft_config())

    @staticmethod
    def state_dict(wrapped: nn.Module) -> dict[str, Tensor]:
        """The tuner's weights only (peft's adapter key names)."""
        from peft import get_peft_model_state_dict

        return get_peft_model_state_dict(wrapped)

    @staticmethod
    def load_state_dict(wrapped: nn.Module, state: dict[str, Tensor]) -> None:
        """Load :meth:`state_dict`'s output; every tensor must be present, nothing extra."""
        from peft import get_peft_model_state_dict, set_peft_model_state_dict

        expected = set(get_peft_model_state_dict(wrapped))
        if set(state) != expected:
            raise ValueError(
                f"tuner weights do not fit this model: missing {sorted(expected - set(state))[:3]}, unexpected "
                f"{sorted(set(state) - expected)[:3]}; were they saved with the same encoder and target modules?"
            )
        set_peft_model_state_dict(wrapped, state)


@dataclass
class LoraTuner(_PeftTuner):
    """LoRA: ``h = W0 x + (alpha / r) B A x`` on every target module.

    Example:
        >>> LoraTuner(rank=4, alpha=8.0, target_modules=["query"]).to_dict()["method"]
        'lora'
    """

    method: ClassVar[str] = "lora"
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if not isinstance(self.rank, int) or self.rank < 1:
            raise ValueError(f"rank must be a positive int, got {self.rank!r}")
        if not self.alpha > 0:
            raise ValueError(f"alpha must be > 0, got {self.alpha!r}")

    def resolve(self, encoder) -> LoraTuner:
        targets = self.target_modules or default_target_modules(encoder, "lora")[0]
        return LoraTuner(target_modules=list(targets), rank=self.rank, alpha=float(self.alpha), dropout=self.dropout)

    def peft_config(self):
        from peft import LoraConfig

        return LoraConfig(
            r=self.rank,
            lora_alpha=self.alpha,
            target_modules=list(self.target_modules or []),
            lora_dropout=self.dropout,
            bias="none",
        )


@dataclass
class IA3Tuner(_PeftTuner):
    """IA3: learned rescaling vectors on target outputs (or feed-forward inputs), initialised to 1.

    Example:
        >>> IA3Tuner(target_modules=["key", "value"], feedforward_modules=[]).to_dict()["method"]
        'ia3'
    """

    method: ClassVar[str] = "ia3"
    feedforward_modules: list[str] | None = None

    def resolve(self, encoder) -> IA3Tuner:
        if self.target_modules:
            ff = self.feedforward_modules or []
            return IA3Tuner(target_modules=list(self.target_modules), feedforward_modules=list(ff))
        targets, ff = default_target_modules(encoder, "ia3")
        return IA3Tuner(target_modules=targets, feedforward_modules=ff)

    def peft_config(self):
        from peft import IA3Config

        ff = list(self.feedforward_modules or [])
        missing = [m for m in ff if m not in (self.target_modules or [])]
        if missing:
            raise ValueError(f"feedforward_modules {missing} must also be listed in target_modules")
        return IA3Config(target_modules=list(self.target_modules or []), feedforward_modules=ff)


@dataclass
class DensityTuner(_PeftTuner):
    """DAAM inside the model (:mod:`densattn.peft`): every target module's output ``h`` is gated as
    ``y = h (1 + g (a(h) - 1))`` with ``a`` the DAAM density weights and ``g`` a learned weight per output feature,
    initialised at 0 (the tuned model equals the frozen one at initialisation; ``g = 1`` is pure DAAM ``y = h a``).

    Args:
        target_modules: modules to gate (default: the encoder's attention and feed-forward output projections; the
            1x1 projection convolutions of EfficientNet), names or one regex.
        norm_axis: ``"features"`` (per token, over the hidden features) or ``"tokens"`` (per feature, over the
            sequence, honouring the padding mask).
        num_heads, num_gaussians, preset: the DAAM kernel's options.

    Example:
        >>> DensityTuner(norm_axis="tokens").to_dict()["method"]
        'daam_peft'
    """

    method: ClassVar[str] = "daam_peft"
    norm_axis: str = "features"
    num_heads: int = 1
    num_gaussians: int = 1
    preset: str = "paper"

    def __post_init__(self) -> None:
        self.density_config()  # validates the options

    def resolve(self, encoder) -> DensityTuner:
        from densattn.peft import default_target_modules as density_targets

        encoder_kind(encoder)  # refuses encoders with no end-to-end path
        targets = self.target_modules or density_targets(encoder.raw_model())
        return DensityTuner(
            target_modules=list(targets) if not isinstance(targets, str) else targets,
            norm_axis=self.norm_axis,
            num_heads=self.num_heads,
            num_gaussians=self.num_gaussians,
            preset=self.preset,
        )

    def density_config(self):
        from densattn.peft import DensityConfig

        return DensityConfig(
            target_modules=self.target_modules,
            norm_axis=self.norm_axis,
            num_heads=self.num_heads,
            num_gaussians=self.num_gaussians,
            preset=self.preset,
            modules_to_save=[],  # the classifier lives beside the encoder, saved by PeftClassifier
        )

    def wrap(self, model: nn.Module) -> nn.Module:
        from densattn.peft import get_density_model

        return get_density_model(model, self.density_config())

    @staticmethod
    def state_dict(wrapped: nn.Module) -> dict[str, Tensor]:
        from densattn.peft import get_density_model_state_dict

        return get_density_model_state_dict(wrapped)

    @staticmethod
    def load_state_dict(wrapped: nn.Module, state: dict[str, Tensor]) -> None:
        from densattn.peft import set_density_model_state_dict

        set_density_model_state_dict(wrapped, state)


TUNERS: dict[str, type[_PeftTuner]] = {"lora": LoraTuner, "ia3": IA3Tuner, "daam_peft": DensityTuner}


def make_tuner(method: str, /, **options: Any) -> _PeftTuner:
    """A tuner by method name with validated options (``make_tuner("lora", rank=8, alpha=16)``).

    Raises:
        ValueError: an unknown method, or an option the method does not take (the message lists the valid ones).

    Example:
        >>> make_tuner("lora", rank=4, alpha=8.0)
        LoraTuner(target_modules=None, rank=4, alpha=8.0, dropout=0.0)
        >>> make_tuner("ia3", **IA3Tuner(target_modules=["key"]).to_dict()).to_dict()  # a recorded config rebuilds
        {'method': 'ia3', 'target_modules': ['key'], 'feedforward_modules': None}
        >>> make_tuner("ia3", rank=4)
        Traceback (most recent call last):
        ...
        ValueError: option(s) ['rank'] do not apply to ia3; it accepts ['target_modules', 'feedforward_modules']
    """
    if method not in TUNERS:
        raise ValueError(f"unknown tuner {method!r}; choose one of {sorted(TUNERS)}")
    cls = TUNERS[method]
    allowed = [f for f in cls.__dataclass_fields__ if f != "method"]
    recorded = options.pop("method", method)
    if recorded != method:
        raise ValueError(f"tuner options name method {recorded!r} but {method!r} was asked for")
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"option(s) {unknown} do not apply to {method}; it accepts {allowed}")
    return cls(**options)
