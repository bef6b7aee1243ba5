"""DAAM-PEFT on a whole model: :func:`get_density_model` and :class:`DensityModel` (a peft ``BaseTuner``).

``get_density_model(model, config)`` replaces every target module of ``model`` (in place, as peft does) by a
:class:`~densattn.peft.layer.DensityLayer` that gates its output, freezes every other parameter, and returns a
:class:`DensityModel` whose ``forward`` takes the base model's own arguments, plus ``density_mask=`` for models
whose call has no ``attention_mask`` (see :meth:`DensityModel.forward`).

Built on peft's tuner classes: target matching (names / regex / ``exclude_modules``), ``modules_to_save`` (peft's
``ModulesToSaveWrapper``), freezing and adapter switching come from ``peft.tuners.tuners_utils.BaseTuner``.
Replaced here, because peft's versions do not fit a method outside its ``PeftType`` enum or a stack of tuners:
the constructor (peft's writes the config into ``model.peft_config``, which on a LoRA ``PeftModel`` is LoRA's own
config dict), ``unload`` (peft's strips every tuner layer underneath too, and fails on a ``PeftModel``), and the
state dict functions (peft's dispatch on ``PeftType``); see ``docs/peft.md``.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import torch
from peft.tuners.tuners_utils import BaseTuner
from peft.utils import ModulesToSaveWrapper
from torch import Tensor, nn

from densattn.peft.config import CONFIG_NAME, WEIGHTS_NAME, DensityConfig
from densattn.peft.layer import DensityLayer, check_gate_fits
from densattn.peft.targets import (
    all_linear_modules,
    default_target_modules,
    gateable_modules,
    matched_modules,
    output_spec,
)

__all__ = ["MERGE_ERROR", "DensityModel", "get_density_model"]

MERGE_ERROR = (
    "a DAAM gate cannot be merged into the model's weights: it multiplies a module's output h by "
    "1 + g * (a(h) - 1), where a(h) depends on the mean and variance of each input's own outputs (over its "
    "features or its tokens), so no fixed weight matrix W' gives W' x = gate(W x) * W x for every input x. Keep the "
    "DensityModel for inference, or call unload() to get the base model back without the gates"
)
_CLASSIFIER_NAMES = ("classifier", "score")
# the token mask of the DensityModel calls running in this thread / task, by model (see _MaskSource)
_CALL_MASKS: ContextVar[dict[_MaskSource, Tensor | None] | None] = ContextVar("densattn_peft_call_masks", default=None)


class _MaskSource:
    """What a model's gates call to read the mask of the model call in progress. A context variable rather than
    an attribute set on the model, so that concurrent calls from several threads each see their own mask."""

    def __call__(self) -> Tensor | None:
        return (_CALL_MASKS.get() or {}).get(self)


class DensityModel(BaseTuner):
    """A model whose target modules' outputs are gated by DAAM (see :mod:`densattn.peft.layer` for the equation).

    Build it with :func:`get_density_model` or :meth:`from_pretrained`. Only the gates (offsets, spreads, mixing
    weights) and ``modules_to_save`` are trainable.

    Args:
        model: the base model; its target modules are replaced in place.
        config: the adapter's :class:`~densattn.peft.DensityConfig` (``target_modules=None``: the defaults of
            :func:`~densattn.peft.default_target_modules`; ``modules_to_save=None``: a top-level ``classifier`` /
            ``score`` when present). The resolved config is ``self.peft_config[adapter_name]``.
        adapter_name: name of the adapter (peft's convention: ``"default"``).

    Raises:
        ValueError: targets that match nothing or modules that cannot be gated (naming them and the fix).

    Example:
        >>> from transformers import BertConfig, BertModel
        >>> bert = BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        ...                             intermediate_size=64, vocab_size=50)).eval()
        >>> ids = torch.randint(0, 50, (2, 6))
        >>> before = bert(input_ids=ids).last_hidden_state
        >>> model = get_density_model(bert, DensityConfig(norm_axis="tokens"))
        >>> torch.equal(model(input_ids=ids).last_hidden_state, before)  # identical at initialisation
        True
        >>> model.targeted_module_names
        ['encoder.layer.0.attention.output.dense', 'encoder.layer.0.output.dense']
    """

    prefix = "daam_"
    tuner_layer_cls = DensityLayer
    target_module_mapping: dict[str, list[str]] = {}

    def __init__(self, model: nn.Module, config: DensityConfig, adapter_name: str = "default") -> None:
        nn.Module.__init__(self)  # not BaseTuner.__init__: it would write our config into model.peft_config
        if not isinstance(config, DensityConfig):
            raise ValueError(f"config must be a densattn.peft.DensityConfig, got {type(config).__name__}")
        from densattn.encoders.base import EncoderAdapter

        if isinstance(model, EncoderAdapter):
            raise ValueError(
                "pass the encoder's torch model, e.g. copy.deepcopy(encoder.raw_model()), not the encoder adapter "
                "(the gates replace modules in place)"
            )
        self.model = model
        self.training = model.training  # not .train(): that would reset every submodule's own mode
        self.targeted_module_names: list[str] = []
        self.targeted_parameter_names: list[str] = []
        self._mask_source = _MaskSource()
        self._requires_grad_before = {id(p): p.requires_grad for p in model.parameters()}
        config = self._resolve(model, copy.deepcopy(config))
        self.peft_config = {adapter_name: config}
        self.active_adapter = adapter_name
        before = {name for name, m in model.named_modules() if isinstance(m, ModulesToSaveWrapper)}
        self.inject_adapter(model, adapter_name)
        self._saved_wrappers = [
            name for name, m in model.named_modules() if isinstance(m, ModulesToSaveWrapper) and name not in before
        ]
        if config.inference_mode:
            for p in self.adapter_parameters():
                p.requires_grad_(False)

    # ---- construction -----------------------------------------------------------------------------------------
    def _resolve(self, model: nn.Module, config: DensityConfig) -> DensityConfig:
        """Fill in default targets / modules_to_save and check every target before anything is replaced."""
        if config.target_modules is None:
            config.target_modules = default_target_modules(model)
        if config.modules_to_save is None:
            config.modules_to_save = [n for n in _CLASSIFIER_NAMES if isinstance(getattr(model, n, None), nn.Module)]
        if config.base_model_name_or_path is None and isinstance(getattr(model, "name_or_path", None), str):
            config.base_model_name_or_path = model.name_or_path or None
        if isinstance(config.target_modules, str) and config.target_modules.lower() == "all-linear":
            config.target_modules = all_linear_modules(model, exclude=config.modules_to_save)
        names = matched_modules(model, config)
        if not names:
            examples = sorted({".".join(n.split(".")[-2:]) for n in gateable_modules(model)})[:10]
            raise ValueError(
                f"target_modules={config.target_modules!r} matches no module of {type(model).__name__}; a list entry "
                "matches a module whose name equals it or ends with '.' + entry, a string is a regex matched "
                f"against the whole name. Gateable modules end with e.g. {examples}; "
                "densattn.peft.default_target_modules(model) gives the defaults"
            )
        for name in names:
            module = model.get_submodule(name)
            if isinstance(module, DensityLayer):
                continue
            if output_spec(module) is None:
                children = [f"{name}.{c}" for c in gateable_modules(module)][:6]
                raise ValueError(
                    f"target module {name!r} ({type(module).__name__}) has no known output size; DAAM-PEFT gates "
                    f"the output of Linear, Conv, Embedding and norm layers: target e.g. {children or 'a submodule'}"
                )
            check_gate_fits(output_spec(module)[0], config, name)
        return config

    def _prepare_adapter_config(self, peft_config: DensityConfig, model_config: dict) -> DensityConfig:
        return peft_config  # targets were resolved in _resolve

    def _create_and_replace(
        self, peft_config, adapter_name, target, target_name, parent, current_key, parameter_name=None
    ) -> None:
        if isinstance(target, DensityLayer):
            target.update_layer(adapter_name, peft_config)
            return
        layer = DensityLayer(target, adapter_name, peft_config, module_name=current_key, mask_source=self._mask_source)
        layer.train(target.training)
        self._replace_module(parent, target_name, layer, target)

    # ---- calling ----------------------------------------------------------------------------------------------
    def forward(self, *args: Any, density_mask: Tensor | None = None, **kwargs: Any) -> Any:
        """Run the base model with its own arguments.

        The gates with ``norm_axis="tokens"`` take their mask (bool or 0/1, True = keep, shape ``(B, positions)``)
        from ``density_mask`` when given, else from the call's ``attention_mask`` (HF text models; positional or
        keyword). Models without such an argument (the Whisper encoder: pass the valid-frame mask of
        ``WhisperTinyEncoder.preprocess``; images, which have no padding) take ``density_mask=``.
        """
        mask = density_mask
        if mask is None and self._uses_token_axis():
            mask = _find_attention_mask(self.model, args, kwargs)
        if mask is not None and (not isinstance(mask, Tensor) or mask.dim() < 2):
            raise ValueError(
                f"density_mask / attention_mask must be a (batch, positions) tensor, got {getattr(mask, 'shape', mask)}"
            )
        token = _CALL_MASKS.set({**(_CALL_MASKS.get() or {}), self._mask_source: mask})
        try:
            return self.model(*args, **kwargs)
        finally:
            _CALL_MASKS.reset(token)

    def _uses_token_axis(self) -> bool:
        return any(c.norm_axis == "tokens" for c in self.peft_config.values())

    # ---- peft-style API ---------------------------------------------------------------------------------------
    @property
    def active_peft_config(self) -> DensityConfig:
        """The active adapter's config (``model.config`` stays the base model's own, e.g. an HF config)."""
        return self.peft_config[self.active_adapters[0]]

    def get_base_model(self) -> nn.Module:
        """The wrapped model (with the gates in it; see :meth:`unload` for the untouched base model)."""
        return self.model

    def density_layers(self) -> Iterator[tuple[str, DensityLayer]]:
        """``(name, layer)`` of every gated module, names relative to the base model."""
        for name, module in self.model.named_modules():
            if isinstance(module, DensityLayer):
                yield name, module

    def adapter_parameters(self) -> Iterator[nn.Parameter]:
        """The gate parameters and the ``modules_to_save`` copies of every adapter."""
        for _, layer in self.density_layers():
            yield from layer.daam_gate.parameters()
            yield from layer.daam_scale.parameters()
        for name in self._saved_wrappers:
            yield from self.model.get_submodule(name).modules_to_save.parameters()

    def get_nb_trainable_parameters(self) -> tuple[int, int]:
        """``(trainable, total)`` parameter counts (each shared tensor counted once)."""
        unique = {id(p): p for p in self.parameters()}.values()
        return sum(p.numel() for p in unique if p.requires_grad), sum(p.numel() for p in unique)

    def print_trainable_parameters(self) -> None:
        """Print ``trainable params: N || all params: M || trainable%: P`` (peft's format)."""
        trainable, total = self.get_nb_trainable_parameters()
        print(
            f"trainable params: {trainable:,d} || all params: {total:,d} || trainable%: {100 * trainable / total:.4f}"
        )

    @contextmanager
    def disable_adapter(self):
        """Context manager: inside it the model computes the base model's outputs (gates and ``modules_to_save``
        copies bypassed); trainability is restored on exit."""
        flags = [(p, p.requires_grad) for p in self.parameters()]
        self._enable_adapter_layers(False)
        try:
            yield
        finally:
            self._enable_adapter_layers(True)
            for p, flag in flags:
                p.requires_grad_(flag)

    def merge_adapter(self, *args: Any, **kwargs: Any) -> None:
        """Always raises: see :meth:`merge_and_unload`."""
        raise ValueError(MERGE_ERROR)

    def merge_and_unload(self, *args: Any, **kwargs: Any) -> nn.Module:
        """Always raises ``ValueError``: an input-dependent gate has no equivalent weight matrix."""
        raise ValueError(MERGE_ERROR)

    def unload(self) -> nn.Module:
        """The base model back: every gate and ``modules_to_save`` wrapper replaced by the module it wrapped (the
        original, untrained classifier included), and every base parameter's ``requires_grad`` as it was before."""
        layers = [name for name, _ in self.density_layers()]
        for name in layers:
            parent_name, _, child = name.rpartition(".")
            parent = self.model.get_submodule(parent_name)
            setattr(parent, child, getattr(parent, child).base_layer)  # one level: tuners underneath stay
        for name in self._saved_wrappers:
            parent_name, _, child = name.rpartition(".")
            parent = self.model.get_submodule(parent_name)
            setattr(parent, child, getattr(parent, child).original_module)
        self._saved_wrappers = []
        for p in self.model.parameters():
            if id(p) in self._requires_grad_before:
                p.requires_grad_(self._requires_grad_before[id(p)])
        return self.model

    # ---- saving -----------------------------------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path, *, adapter_name: str | None = None) -> Path:
        """Write ``adapter_model.safetensors`` (gate weights and ``modules_to_save`` only) and
        ``adapter_config.json`` into ``directory`` (atomically); returns the folder."""
        from densattn.io import atomic_save_file
        from densattn.peft.state import get_density_model_state_dict

        name = adapter_name or self.active_adapters[0]
        directory = Path(directory)
        state = {k: v.cpu() for k, v in get_density_model_state_dict(self, adapter_name=name).items()}
        atomic_save_file(state, directory / WEIGHTS_NAME, metadata={"format": "pt", "type": "daam_peft"})
        self.peft_config[name].save_pretrained(directory)
        return directory

    @classmethod
    def from_pretrained(
        cls,
        model: nn.Module,
        directory: str | Path,
        *,
        adapter_name: str = "default",
        is_trainable: bool = False,
    ) -> DensityModel:
        """Gate ``model`` (a fresh base model) with the adapter saved in ``directory``.

        Frozen and in eval mode unless ``is_trainable``.

        Raises:
            FileNotFoundError: when the folder lacks ``adapter_config.json`` or ``adapter_model.safetensors``.
            ValueError: another method's adapter, or weights that do not fit ``model``.
        """
        from safetensors.torch import load_file

        from densattn.peft.state import set_density_model_state_dict

        directory = Path(directory)
        config = DensityConfig.from_pretrained(directory)
        weights = directory / WEIGHTS_NAME
        if not weights.is_file():
            raise FileNotFoundError(f"{directory} has {CONFIG_NAME} but no {WEIGHTS_NAME}")
        config.inference_mode = not is_trainable
        wrapped = cls(model, config, adapter_name)
        device = next(iter(wrapped.adapter_parameters()), torch.empty(0)).device
        set_density_model_state_dict(wrapped, load_file(str(weights), device=str(device)), adapter_name=adapter_name)
        if not is_trainable:
            wrapped.eval()
        return wrapped


def get_density_model(
    model: nn.Module, config: DensityConfig | None = None, *, adapter_name: str = "default"
) -> DensityModel:
    """Gate the target modules of ``model`` with DAAM (in place) and freeze the rest; see :class:`DensityModel`.

    Example:
        >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8))
        >>> model = get_density_model(net, DensityConfig(target_modules=["2"], num_heads=2))
        >>> model.print_trainable_parameters()
        trainable params: 12 || all params: 124 || trainable%: 9.6774
    """
    return DensityModel(model, config if config is not None else DensityConfig(), adapter_name)


def _find_attention_mask(model: nn.Module, args: tuple, kwargs: dict) -> Tensor | None:
    if "attention_mask" in kwargs:
        return kwargs["attention_mask"]
    if not args:
        return None
    try:
        bound = inspect.signature(model.forward).bind_partial(*args)
    except (TypeError, ValueError):
        return None
    return bound.arguments.get("attention_mask")
