"""The adapter contract: one config dataclass per adapter kind, one save/load mixin, one loader.

Everything a run trains — a head on pooled features, a fusion head, an encoder fine-tuned with LoRA/IA3/DAAM — is an
``nn.Module`` with :class:`AdapterMixin` and a config dataclass derived from :class:`AdapterConfig`. On disk, in the
spirit of HF PEFT's ``save_pretrained``::

    adapter_config.json         the config, with its "type" (which class rebuilds it)
    adapter_model.safetensors   adapter weights only (never the frozen encoder); the classifier is always included

The config is *derived from the module* (:meth:`AdapterMixin.get_config`), never patched by the code that trained
it, so whatever a module is, it reloads as exactly that. :func:`load_adapter` opens any saved adapter (a run
directory or ``RUN/folds/K/adapter``). Files are safetensors and JSON only: loading never unpickles anything.

Example:
    >>> import tempfile
    >>> from densattn.adapters import DensityAdapterModel, load_adapter
    >>> model = DensityAdapterModel("conv", num_layers=4, dim=6, classes=["a", "b"])
    >>> folder = tempfile.mkdtemp()
    >>> model.save_pretrained(folder)
    >>> again = load_adapter(folder)
    >>> type(again).__name__, again.get_config().head
    ('DensityAdapterModel', 'conv')
"""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch
from torch import Tensor, nn

from densattn.io import atomic_save_file, atomic_write_json, read_json

__all__ = [
    "ADAPTER_TYPES",
    "CONFIG_NAME",
    "WEIGHTS_NAME",
    "AdapterConfig",
    "AdapterMixin",
    "adapter_type",
    "load_adapter",
]

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"

#: adapter ``type`` -> ``"module:Class"`` that rebuilds it (imported on first use, so loading a head never imports peft)
ADAPTER_TYPES: dict[str, str] = {
    "head": "densattn.adapters.head:DensityAdapterModel",
    "fusion": "densattn.adapters.fusion:FusionAdapter",
    "lora": "densattn.adapters.end_to_end:PeftClassifier",
    "ia3": "densattn.adapters.end_to_end:PeftClassifier",
    "daam_peft": "densattn.adapters.end_to_end:PeftClassifier",
}

C = TypeVar("C", bound="AdapterConfig")
M = TypeVar("M", bound="AdapterMixin")


@dataclass
class AdapterConfig:
    """Base of every adapter config: a dataclass with a ``type`` that names the adapter kind.

    Subclasses add their fields (with defaults where a sensible one exists). :meth:`to_dict` / :meth:`from_dict` are
    an exact JSON round trip; unknown keys are refused, so a config written by a newer version fails loudly.

    Example:
        >>> from densattn.adapters.head import HeadConfig
        >>> config = HeadConfig(head="conv", num_layers=4, dim=6, classes=["a", "b"])
        >>> data = config.to_dict()
        >>> data["type"], HeadConfig.from_dict(data) == config
        ('head', True)
        >>> HeadConfig.from_dict({**data, "colour": "red"})  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: HeadConfig: unknown keys ['colour']; known: [...]
        >>> HeadConfig(type="lora")
        Traceback (most recent call last):
        ...
        ValueError: HeadConfig: type must be one of ('head',), got 'lora'
    """

    type: str

    #: the ``type`` values this config class accepts (its subclasses set it)
    types: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        if self.types and self.type not in self.types:
            raise ValueError(f"{type(self).__name__}: type must be one of {self.types}, got {self.type!r}")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict with every field (``type`` first)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any]) -> C:
        """Inverse of :meth:`to_dict`.

        Raises:
            ValueError: unknown keys, or a missing field without a default.
        """
        if not isinstance(data, dict):
            raise ValueError(f"{cls.__name__}: expected a JSON object, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"{cls.__name__}: unknown keys {unknown}; known: {sorted(names)}")
        required = [
            f.name
            for f in dataclasses.fields(cls)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING and f.name not in data
        ]
        if required:
            raise ValueError(f"{cls.__name__}: missing keys {required}")
        return cls(**data)


def adapter_type(directory: str | Path) -> str:
    """The ``type`` recorded in ``directory/adapter_config.json``.

    Raises:
        FileNotFoundError: no adapter there (names what is missing).
        ValueError: the config is unreadable or records an unknown type.

    Example:
        >>> import tempfile
        >>> from densattn.adapters import FusionAdapter
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     FusionAdapter([(2, 4), (3, 5)], ["a", "b"]).save_pretrained(folder)
        ...     adapter_type(folder)
        'fusion'
    """
    directory = Path(directory)
    path = directory / CONFIG_NAME
    if not path.exists():
        raise FileNotFoundError(
            f"{directory} has no {CONFIG_NAME}; pass a run directory written by `densattn train` (or its "
            "folds/K/adapter folder)"
        )
    config = read_json(path)
    kind = config.get("type") if isinstance(config, dict) else None
    if kind not in ADAPTER_TYPES:
        raise ValueError(f"{path}: unknown adapter type {kind!r}; densattn knows {sorted(ADAPTER_TYPES)}")
    return kind


def _adapter_class(kind: str) -> type[AdapterMixin]:
    module, _, name = ADAPTER_TYPES[kind].partition(":")
    return getattr(importlib.import_module(module), name)


def load_adapter(directory: str | Path, *, is_trainable: bool = False, device: str | torch.device = "cpu"):
    """Open any saved adapter: a head, a fusion head or a fine-tuned encoder (LoRA, IA3, DAAM inside the model).

    Args:
        directory: a run directory or ``RUN/folds/K/adapter``.
        is_trainable: leave the adapter's parameters trainable (and the module in train mode).
        device: where to put it.

    Returns:
        The adapter module (its class is the one the config's ``type`` names), frozen and in eval mode unless
        ``is_trainable``.

    Example:
        A save/load round trip gives back the same class with the same weights:

        >>> import tempfile, torch
        >>> from densattn.adapters import DensityAdapterModel
        >>> model = DensityAdapterModel("pool", num_layers=3, dim=5, classes=["neg", "pos"])
        >>> x = torch.randn(2, 3, 5)
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     model.save_pretrained(folder)
        ...     again = load_adapter(folder)
        >>> type(again).__name__, again.training, any(p.requires_grad for p in again.parameters())
        ('DensityAdapterModel', False, False)
        >>> torch.equal(model.eval()(x), again(x)), again.get_config().classes
        (True, ['neg', 'pos'])
    """
    return _adapter_class(adapter_type(directory)).from_pretrained(directory, is_trainable=is_trainable, device=device)


class AdapterMixin:
    """Save and load for adapter modules. A subclass sets :attr:`config_class` and implements :meth:`get_config`
    (the config derived from the module) and :meth:`from_config` (a fresh module from a config).

    Example:
        A minimal adapter: a linear classifier whose config records its two sizes.

        >>> import tempfile, torch
        >>> from dataclasses import dataclass
        >>> from typing import ClassVar
        >>> @dataclass
        ... class TinyConfig(AdapterConfig):
        ...     types: ClassVar[tuple[str, ...]] = ("head",)
        ...     type: str = "head"
        ...     inputs: int = 0
        ...     outputs: int = 0
        >>> class Tiny(AdapterMixin, torch.nn.Module):
        ...     config_class = TinyConfig
        ...     def __init__(self, inputs, outputs):
        ...         super().__init__()
        ...         self.classifier = torch.nn.Linear(inputs, outputs)
        ...     def get_config(self):
        ...         return TinyConfig(inputs=self.classifier.in_features, outputs=self.classifier.out_features)
        ...     @classmethod
        ...     def from_config(cls, config, *, device="cpu"):
        ...         return cls(config.inputs, config.outputs).to(device)
        >>> tiny = Tiny(4, 3)
        >>> tiny.parameter_counts()
        {'trainable_params': 15, 'trainable_params_without_classifier': 0}
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     tiny.save_pretrained(folder)
        ...     again = Tiny.from_pretrained(folder, is_trainable=True)
        >>> torch.equal(again.classifier.weight, tiny.classifier.weight), again.classifier.weight.requires_grad
        (True, True)
    """

    config_class: ClassVar[type[AdapterConfig]]

    def get_config(self) -> AdapterConfig:
        """The config that rebuilds this module, derived from its current state."""
        raise NotImplementedError

    @classmethod
    def from_config(cls: type[M], config: AdapterConfig, *, device: str | torch.device = "cpu") -> M:
        """A freshly initialised module for ``config``."""
        raise NotImplementedError

    def adapter_state_dict(self) -> dict[str, Tensor]:
        """What is saved: every parameter and buffer of the adapter (detached CPU copies). Subclasses that wrap a
        frozen encoder override this to leave the encoder's own weights out."""
        assert isinstance(self, nn.Module)
        return {k: v.detach().cpu().clone() for k, v in self.state_dict().items()}

    def load_adapter_state_dict(self, state: dict[str, Tensor]) -> None:
        """Inverse of :meth:`adapter_state_dict` (strict: every tensor must be present, nothing extra)."""
        assert isinstance(self, nn.Module)
        self.load_state_dict(state, strict=True)

    def save_pretrained(self, directory: str | Path) -> None:
        """Write ``adapter_model.safetensors`` then ``adapter_config.json`` (each atomically) into ``directory``."""
        directory = Path(directory)
        config = self.get_config()
        atomic_save_file(self.adapter_state_dict(), directory / WEIGHTS_NAME, metadata={"format": "pt"})
        atomic_write_json(directory / CONFIG_NAME, config.to_dict())

    @classmethod
    def from_pretrained(
        cls: type[M], directory: str | Path, *, is_trainable: bool = False, device: str | torch.device = "cpu"
    ) -> M:
        """Load a saved adapter; frozen and in eval mode unless ``is_trainable``.

        Raises:
            FileNotFoundError: the folder holds no adapter.
            ValueError: the adapter is of another kind, or its weights do not fit its config.
        """
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        directory = Path(directory)
        kind = adapter_type(directory)
        if kind not in cls.config_class.types:
            raise ValueError(
                f"{directory} holds a {kind!r} adapter, not one of {cls.config_class.types}; open it with "
                "densattn.load_adapter"
            )
        config = cls.config_class.from_dict(read_json(directory / CONFIG_NAME))
        weights = directory / WEIGHTS_NAME
        if not weights.exists():
            raise FileNotFoundError(f"{directory} has {CONFIG_NAME} but no {WEIGHTS_NAME}; the save was interrupted")
        model = cls.from_config(config, device=device)
        try:
            state = load_file(str(weights), device=str(device))
        except (SafetensorError, OSError) as err:
            raise ValueError(f"{weights} is not a readable safetensors file ({err}); it may be truncated") from None
        try:
            model.load_adapter_state_dict(state)
        except RuntimeError as err:
            raise ValueError(f"{weights} does not fit {CONFIG_NAME}: {str(err).splitlines()[0]}") from None
        assert isinstance(model, nn.Module)
        model.train(is_trainable)
        for p in model.parameters():
            p.requires_grad_(False)
        if is_trainable:
            model.mark_trainable()
        return model

    def mark_trainable(self) -> None:
        """Set ``requires_grad`` on exactly the adapter's trainable parameters (default: all of them)."""
        assert isinstance(self, nn.Module)
        for p in self.parameters():
            p.requires_grad_(True)

    def parameter_counts(self) -> dict[str, int]:
        """``trainable_params`` and ``trainable_params_without_classifier`` (the submodule named ``classifier``)."""
        from densattn.heads import count_parameters

        assert isinstance(self, nn.Module)
        return count_parameters(self)
