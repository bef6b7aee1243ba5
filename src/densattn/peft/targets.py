"""Which modules DAAM-PEFT gates: output shapes of gateable modules, target matching and the default targets.

A gate needs to know the size of its module's output features and where they sit: the last axis for
``Linear``-like modules (``(B, T, D)``), axis 1 for convolutions and batch norms (``(B, C, H, W)``). Modules whose
output size cannot be read off the module (a whole transformer block, an activation) are rejected with the names
of their gateable submodules instead.

Default targets (:func:`default_target_modules`) gate the two outputs of every transformer layer that feed its
residual stream: the attention output projection and the feed-forward output projection (for BERT / MiniLM
``attention.output.dense`` and ``output.dense``; for Whisper ``self_attn.out_proj`` and ``fc2``), and for
EfficientNet-Lite0 the 1x1 projection convolution that closes every MBConv block (``_project_conv``).
"""

from __future__ import annotations

import re
from typing import Any

from torch import nn

__all__ = ["all_linear_modules", "default_target_modules", "gateable_modules", "matched_modules", "output_spec"]

# (attention output, feed-forward output) suffixes of common HF architectures; the first family with a match wins
_HF_OUTPUT_PROJECTIONS: tuple[tuple[str, ...], ...] = (
    ("attention.output.dense", "output.dense"),  # BERT, RoBERTa, ELECTRA, DeBERTa, LayoutLM
    ("attention.o_proj", "mlp.fc2"),  # ViT (transformers 5)
    ("attention.out_lin", "ffn.lin2"),  # DistilBERT
    ("self_attn.out_proj", "fc2"),  # Whisper, BART, Marian, OPT, CLIP
    ("attention.out_proj", "feed_forward.output_dense"),  # wav2vec 2.0, HuBERT, WavLM
    ("o_proj", "down_proj"),  # Llama, Mistral, Qwen2, Gemma
    ("attn.c_proj", "mlp.c_proj"),  # GPT-2 (transformers Conv1D)
    ("SelfAttention.o", "DenseReluDense.wo"),  # T5 encoder
    ("attention.dense", "mlp.dense_4h_to_h"),  # GPT-NeoX
)
_LAYER_INDEX = re.compile(r"(^|\.)\d+\.")


def output_spec(module: nn.Module) -> tuple[int, bool] | None:
    """``(num_features, channels_first)`` of a module's output, or None when it cannot be read off the module.

    ``channels_first`` is True for convolutions and batch/group norms (features on axis 1), False for modules whose
    features are the last axis (``Linear``, transformers' ``Conv1D``, ``Embedding``, ``LayerNorm``). A peft tuner
    layer (e.g. a LoRA ``Linear``) is described by its base layer.

    Example:
        >>> output_spec(nn.Linear(8, 6)), output_spec(nn.Conv2d(3, 16, 3)), output_spec(nn.ReLU())
        ((6, False), (16, True), None)
    """
    get_base = getattr(module, "get_base_layer", None)
    base = get_base() if callable(get_base) else module
    if isinstance(base, nn.Linear):
        return base.out_features, False
    if isinstance(base, nn.modules.conv._ConvNd):
        return base.out_channels, True
    if isinstance(base, (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)):
        return base.num_features, True
    if isinstance(base, nn.GroupNorm):
        return base.num_channels, True
    if isinstance(base, nn.Embedding):
        return base.embedding_dim, False
    if isinstance(base, (nn.LayerNorm, nn.RMSNorm)) and len(base.normalized_shape) == 1:
        return int(base.normalized_shape[0]), False
    if type(base).__name__ == "Conv1D" and isinstance(getattr(base, "nf", None), int):  # transformers' GPT-2 Conv1D
        return base.nf, False
    return None


def _tuner_internals(model: nn.Module) -> list[str]:
    """Name prefixes of the insides of peft tuner layers (their base layers, LoRA matrices...), never targets."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [f"{name}." for name, m in model.named_modules() if name and isinstance(m, BaseTunerLayer)]


def gateable_modules(model: nn.Module) -> list[str]:
    """Names of the modules of ``model`` whose output a gate can take (see :func:`output_spec`), in model order.

    Example:
        >>> gateable_modules(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)))
        ['0', '2']
    """
    internals = tuple(_tuner_internals(model))
    return [
        name
        for name, module in model.named_modules()
        if name and not name.startswith(internals) and output_spec(module) is not None
    ]


def all_linear_modules(model: nn.Module, *, exclude: list[str] | None = None) -> list[str]:
    """Names of every ``Linear`` (and transformers ``Conv1D``) module, minus those under ``exclude`` and the output
    embedding of a language model: peft's ``"all-linear"`` shorthand for ``target_modules``.

    Example:
        >>> all_linear_modules(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)), exclude=["2"])
        ['0']
    """
    skip = tuple(exclude or ())
    get_output = getattr(model, "get_output_embeddings", None)
    head = get_output() if callable(get_output) else None
    names = []
    for name in gateable_modules(model):
        module = model.get_submodule(name)
        base = module.get_base_layer() if hasattr(module, "get_base_layer") else module
        if not (isinstance(base, nn.Linear) or type(base).__name__ == "Conv1D") or module is head:
            continue
        if any(name == s or name.startswith(s + ".") or name.endswith("." + s) or f".{s}." in name for s in skip):
            continue
        names.append(name)
    return names


def matched_modules(model: nn.Module, config: Any) -> list[str]:
    """Names of the modules ``config.target_modules`` (minus ``exclude_modules`` and ``modules_to_save``) selects,
    with peft's matching rule (``peft.tuners.tuners_utils.check_target_module_exists``)."""
    from peft.tuners.tuners_utils import check_target_module_exists

    internals = tuple(_tuner_internals(model))
    return [
        name
        for name, _ in model.named_modules()
        if name and not name.startswith(internals) and bool(check_target_module_exists(config, name))
    ]


def _unwrap(model_or_encoder: Any) -> nn.Module:
    from densattn.encoders.base import EncoderAdapter

    if isinstance(model_or_encoder, EncoderAdapter):
        return model_or_encoder.raw_model()
    if not isinstance(model_or_encoder, nn.Module):
        raise ValueError(
            f"default_target_modules needs a torch module or a densattn encoder, got {type(model_or_encoder).__name__}"
        )
    return model_or_encoder


def default_target_modules(model_or_encoder: Any) -> list[str]:
    """Default DAAM-PEFT targets of a bundled encoder or any HF model (module docstring); pass your own
    ``target_modules`` to override.

    * EfficientNet-Lite0 (:class:`densattn.encoders.efficientnet.EfficientNetLite0` or its encoder adapter):
      ``["_project_conv"]``, the last convolution of each of the 16 MBConv blocks (channels are the features).
    * HF transformers (MiniLM / BERT, the Whisper encoder, ViT, wav2vec 2.0, DistilBERT, BART, GPT-2, T5, Llama...):
      the attention output and feed-forward output projections of every layer, found by name.

    Raises:
        ValueError: when the model has none of the known output projections; the message lists its gateable
            modules to choose from.

    Example:
        >>> from transformers import BertConfig, BertModel
        >>> bert = BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        ...                             intermediate_size=64, vocab_size=50))
        >>> default_target_modules(bert)
        ['attention.output.dense', 'output.dense']
    """
    from densattn.encoders.efficientnet import EfficientNetLite0

    model = _unwrap(model_or_encoder)
    if any(isinstance(m, EfficientNetLite0) for m in model.modules()):
        return ["_project_conv"]
    names = gateable_modules(model)
    in_layers = [n for n in names if _LAYER_INDEX.search(n)]
    for family in _HF_OUTPUT_PROJECTIONS:
        if all(any(n == s or n.endswith("." + s) for n in in_layers) for s in family):
            return list(family)
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    examples = sorted({".".join(n.split(".")[-2:]) for n in in_layers or names})[:12]
    raise ValueError(
        f"no default DAAM-PEFT targets for {type(model).__name__} (model type {model_type!r}); pass "
        f"target_modules=[...] naming the modules whose output to gate, e.g. the attention output and "
        f"feed-forward output projections. Gateable modules of this model end with: {examples}"
    )
