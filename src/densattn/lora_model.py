"""LoRA / LoRA+ baselines: an encoder fine-tuned end to end through HF ``peft``, pooled, and a linear classifier.

LoRA (Hu et al. 2021, arXiv `2106.09685 <https://arxiv.org/abs/2106.09685>`_) adds to a frozen weight ``W0`` a
low-rank update scaled by ``alpha / r``:

    h = W0 x + (alpha / r) * B A x,    A: (r, in), B: (out, r), B initialised to 0,

so at initialisation the model equals the frozen encoder. For a ``Conv2d`` target (EfficientNet), ``A`` is a
convolution with the base layer's kernel into ``r`` channels and ``B`` a 1x1 convolution back to the output channels.
LoRA+ (Hayou et al. 2024, arXiv `2402.12354 <https://arxiv.org/abs/2402.12354>`_) trains ``B`` with a learning rate
``ratio`` times that of ``A`` (see :func:`densattn.lora.lora_param_groups`).

:class:`LoraClassifier` runs the encoder's own preprocessing, the LoRA-adapted encoder **in eval mode** (no dropout
inside it, BatchNorm statistics frozen: exactly the function whose features the heads see, plus the low-rank
update), mean-pools the **last** hidden state over valid tokens / frames / pixels (the sentence-transformers pooling
of MiniLM; Whisper's final-layer-norm output; EfficientNet's last block), standardises it with training-split
statistics (buffers, like every head) and applies ``Dropout -> Linear``. The classifier is a plain submodule whose
weights are saved with the LoRA matrices by construction (no ``modules_to_save`` needed).

Parameter count of LoRA on a ``Linear(in, out)``: ``r (in + out)``; on a ``Conv2d(in, out, k)``:
``r in k^2 + r out`` (:func:`lora_parameter_count`).

Example:
    >>> import torch
    >>> from densattn.lora_model import LoraClassifier
    >>> from densattn.encoders import get_encoder
    >>> model = LoraClassifier(get_encoder("minilm", max_length=16), ["a", "b"], rank=4, alpha=8)
    >>> model(model.prepare(["a short text", "another"])).shape
    torch.Size([2, 2])
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from peft import LoraConfig, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
from torch import Tensor, nn

from densattn.encoders.base import EncoderAdapter, masked_mean

__all__ = [
    "LoraClassifier",
    "default_target_modules",
    "encoder_kind",
    "head_parameter_accounting",
    "lora_parameter_count",
    "parameter_accounting",
]

# Default LoRA targets per bundled encoder. MiniLM / BERT: W_q and W_v as in the LoRA paper (and peft's own default
# for BERT); Whisper: q_proj / v_proj; EfficientNet: the 1x1 expansion and projection Conv2d of every MBConv block
# (the depthwise and stem convolutions use TF "SAME" padding done outside Conv2d, which a LoRA Conv2d would not
# reproduce).
_DEFAULT_TARGETS = {
    "text": ["query", "value"],
    "whisper": ["q_proj", "v_proj"],
    "efficientnet": ["_expand_conv", "_project_conv"],
}


def encoder_kind(encoder: EncoderAdapter) -> str:
    """How the encoder is run end to end: ``"text"`` / ``"image"`` (HF checkpoints), ``"whisper"``, ``"efficientnet"``.

    Raises:
        ValueError: for encoders with no differentiable path here (HF audio checkpoints other than whisper-tiny).
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
        f"LoRA supports the bundled encoders and Hugging Face text/image checkpoints, not {encoder.name!r} "
        f"({encoder.modality}); use --method head for it"
    )


def default_target_modules(encoder: EncoderAdapter) -> list[str]:
    """Module names LoRA adapts when ``--target-modules`` is not given (see the module docstring)."""
    kind = encoder_kind(encoder)
    if kind in _DEFAULT_TARGETS:
        return list(_DEFAULT_TARGETS[kind])
    from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as mapping

    model_type = getattr(getattr(encoder.raw_model(), "config", None), "model_type", None)
    if model_type in mapping:
        return list(mapping[model_type])
    raise ValueError(
        f"no default LoRA target modules for model type {model_type!r}; pass --target-modules NAME,NAME "
        "(names of its Linear or Conv2d submodules, e.g. query,value)"
    )


def lora_parameter_count(model: nn.Module, target_modules: Sequence[str], rank: int) -> int:
    """Analytic LoRA parameter count of ``model`` (before wrapping): ``r (in + out)`` per targeted ``Linear`` and
    ``r in k_h k_w / groups + r out`` per targeted ``Conv2d``; a module is targeted when its name equals a target or
    ends with ``"." + target`` (peft's rule)."""
    total = 0
    for name, module in model.named_modules():
        if not any(name == t or name.endswith("." + t) for t in target_modules):
            continue
        if isinstance(module, nn.Linear):
            total += rank * (module.in_features + module.out_features)
        elif isinstance(module, nn.Conv2d):
            kh, kw = module.kernel_size
            total += rank * module.in_channels * kh * kw // module.groups + rank * module.out_channels
    return total


def head_parameter_accounting(encoder: EncoderAdapter, head: nn.Module) -> dict[str, int]:
    """Parameter accounting of a head run: trainable = the head's parameters (with and without its ``classifier``
    submodule), frozen = every parameter of the encoder."""
    from densattn.heads import count_parameters

    frozen = sum(p.numel() for p in encoder.raw_model().parameters())
    return {**count_parameters(head), "frozen_params": frozen}


def parameter_accounting(model: LoraClassifier) -> dict[str, int]:
    """``trainable_params`` (LoRA + classifier), ``trainable_params_without_classifier`` (LoRA),
    ``frozen_params`` (the encoder's own weights)."""
    lora = sum(p.numel() for p in model.backbone.parameters() if p.requires_grad)
    head = sum(p.numel() for p in model.classifier.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    return {"trainable_params": lora + head, "trainable_params_without_classifier": lora, "frozen_params": frozen}


class LoraClassifier(nn.Module):
    """A LoRA-adapted copy of ``encoder``'s model, last-layer masked mean pooling, standardisation and a linear
    classifier.

    Args:
        encoder: a frozen encoder adapter (its model is deep-copied; the adapter itself is left untouched).
        classes: class names (the classifier has ``len(classes)`` outputs).
        rank: LoRA rank ``r``.
        alpha: LoRA ``alpha``; the update is scaled by ``alpha / r``.
        target_modules: module names to adapt (default :func:`default_target_modules`).
        lora_dropout: dropout on the LoRA input (inactive: the encoder always runs in eval mode; kept for configs).
        dropout: dropout before the classifier (active in training).
        encoder_info: ``{"name", "options", ...}`` recorded so :meth:`from_pretrained` can rebuild the encoder.

    Shapes:
        ``forward(inputs)``: a dict of batch-first tensors from :meth:`prepare` -> logits ``(B, len(classes))``.
    """

    def __init__(
        self,
        encoder: EncoderAdapter,
        classes: Sequence[str],
        *,
        rank: int = 8,
        alpha: float = 16.0,
        target_modules: Sequence[str] | None = None,
        lora_dropout: float = 0.0,
        dropout: float = 0.1,
        encoder_info: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(rank, int) or rank < 1:
            raise ValueError(f"rank must be a positive int, got {rank!r}")
        if not alpha > 0:
            raise ValueError(f"alpha must be > 0, got {alpha!r}")
        if len(classes) < 2:
            raise ValueError(f"classes must name at least 2 classes, got {list(classes)!r}")
        self.kind = encoder_kind(encoder)
        self.classes = list(classes)
        self.rank, self.alpha, self.lora_dropout = rank, float(alpha), float(lora_dropout)
        self.target_modules = list(target_modules or default_target_modules(encoder))
        self.encoder_info = dict(encoder_info or {"name": encoder.name, "options": {}})
        self._encoder = [encoder]  # a list: the adapter's preprocessing, not a registered submodule
        base = copy.deepcopy(encoder.raw_model())
        expected = lora_parameter_count(base, self.target_modules, rank)
        if expected == 0:
            raise ValueError(
                f"target_modules {self.target_modules} match no Linear or Conv2d module of encoder {encoder.name!r}; "
                "pass names of its submodules (e.g. query,value for BERT, q_proj,v_proj for Whisper)"
            )
        self.lora_config = LoraConfig(
            r=rank,
            lora_alpha=self.alpha,
            target_modules=self.target_modules,
            lora_dropout=self.lora_dropout,
            bias="none",
        )
        self.backbone = get_peft_model(base, self.lora_config)
        self.backbone.eval()
        dim = self._pooled_dim(encoder)
        self.register_buffer("input_mean", torch.zeros(dim))
        self.register_buffer("input_std", torch.ones(dim))
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(dim, len(self.classes))

    def _pooled_dim(self, encoder: EncoderAdapter) -> int:
        if self.kind == "efficientnet":
            return encoder.raw_model().block_channels[-1]
        config = getattr(encoder.raw_model(), "config", None)
        for name in ("hidden_size", "d_model"):
            if config is not None and getattr(config, name, None):
                return int(getattr(config, name))
        return int(encoder.dim)

    @property
    def encoder(self) -> EncoderAdapter:
        """The encoder adapter whose preprocessing this model uses (its own model is not the one adapted)."""
        return self._encoder[0]

    def train(self, mode: bool = True) -> LoraClassifier:
        """Training mode for the classifier's dropout only; the adapted encoder stays in eval mode."""
        super().train(mode)
        self.backbone.eval()
        return self

    @torch.no_grad()
    def prepare(self, items: Sequence[Any], *, batch_size: int = 64) -> dict[str, Tensor]:
        """Preprocess raw examples once into batch-first tensors (tokens, log-mel frames or pixels) plus the
        pooling ``mask`` (bool, True = valid) where there is one."""
        if isinstance(items, (str, bytes)) or not len(items):
            raise ValueError("items must be a non-empty list of examples; wrap a single example as [example]")
        enc = self.encoder
        items = list(items)
        if self.kind == "text":
            tokens = enc.processor(items, padding=True, truncation=True, max_length=enc.max_length, return_tensors="pt")
            names = ("input_ids", "attention_mask", "token_type_ids")
            return {k: v for k, v in tokens.items() if k in names}
        chunks = [items[i : i + batch_size] for i in range(0, len(items), batch_size)]
        if self.kind == "whisper":
            pairs = [enc.preprocess(chunk) for chunk in chunks]
            return {"input_features": torch.cat([p[0] for p in pairs]), "mask": torch.cat([p[1] for p in pairs])}
        if self.kind == "efficientnet":
            return {"pixel_values": torch.cat([enc.preprocess(chunk) for chunk in chunks])}
        from densattn.encoders.inputs import to_rgb_uint8

        pixels = [
            enc.processor(images=[to_rgb_uint8(x) for x in c], return_tensors="pt")["pixel_values"] for c in chunks
        ]
        return {"pixel_values": torch.cat(pixels)}

    def pooled(self, inputs: dict[str, Tensor]) -> Tensor:
        """Last-layer pooled features ``(B, dim)`` (differentiable through the LoRA matrices)."""
        device = self.classifier.weight.device
        inputs = {k: v.to(device) for k, v in inputs.items()}
        if self.kind == "text":
            mask = inputs["attention_mask"].bool()  # (B, T)
            width = int(mask.sum(1).max())  # trim columns that are padding for the whole batch
            inputs = {k: v[:, :width] for k, v in inputs.items()}
            hidden = self.backbone(**inputs).last_hidden_state  # (B, T, D)
            return masked_mean(hidden[:, None], mask[:, :width])[:, 0]  # (B, D)
        if self.kind == "whisper":
            hidden = self.backbone(inputs["input_features"]).last_hidden_state  # (B, T, D), final layer norm
            return masked_mean(hidden[:, None], inputs["mask"])[:, 0]  # (B, D)
        if self.kind == "efficientnet":
            return self.backbone(inputs["pixel_values"])[-1].mean(dim=(2, 3))  # (B, C): last block, all pixels
        from densattn.encoders.hf import _pool

        return _pool(self.backbone(pixel_values=inputs["pixel_values"]).last_hidden_state, None)

    def set_input_stats(self, pooled: Tensor) -> None:
        """Standardise the classifier's input with the mean / std of pooled training features ``(N, dim)``."""
        self.input_mean.copy_(pooled.mean(0))
        self.input_std.copy_(pooled.std(0).clamp_min(1e-6))

    def forward(self, inputs: dict[str, Tensor]) -> Tensor:
        """Logits ``(B, num_classes)`` for a batch of prepared inputs."""
        z = (self.pooled(inputs) - self.input_mean) / self.input_std
        return self.classifier(self.dropout(z))

    @torch.no_grad()
    def predict(self, items: Sequence[Any], *, batch_size: int = 16) -> list[str]:
        """Class names for raw examples."""
        self.eval()
        inputs = self.prepare(items)
        logits = torch.cat([self(slice_inputs(inputs, i, i + batch_size)) for i in range(0, len(items), batch_size)])
        return [self.classes[i] for i in logits.argmax(-1).tolist()]

    def trainable_state_dict(self) -> dict[str, Tensor]:
        """What a run saves: the LoRA matrices (peft's adapter keys, prefixed ``lora.``), the classifier and the
        standardisation buffers."""
        state = {f"lora.{k}": v for k, v in get_peft_model_state_dict(self.backbone).items()}
        state.update({f"classifier.{k}": v for k, v in self.classifier.state_dict().items()})
        state.update(input_mean=self.input_mean, input_std=self.input_std)
        return {k: v.detach().cpu().clone().contiguous() for k, v in state.items()}

    def load_trainable_state_dict(self, state: dict[str, Tensor]) -> None:
        """Inverse of :meth:`trainable_state_dict` (strict: every LoRA matrix and the classifier must be present)."""
        lora = {k[len("lora.") :]: v for k, v in state.items() if k.startswith("lora.")}
        expected = set(get_peft_model_state_dict(self.backbone))
        if set(lora) != expected:
            raise ValueError(
                f"LoRA weights do not match this model: missing {sorted(expected - set(lora))[:3]}, "
                f"unexpected {sorted(set(lora) - expected)[:3]}; was it saved with the same encoder and targets?"
            )
        set_peft_model_state_dict(self.backbone, lora)
        self.classifier.load_state_dict(
            {k[len("classifier.") :]: v for k, v in state.items() if k.startswith("classifier.")}
        )
        self.input_mean.copy_(state["input_mean"])
        self.input_std.copy_(state["input_std"])

    @property
    def config(self) -> dict[str, Any]:
        return {
            "method": "lora",
            "encoder": self.encoder_info,
            "classes": self.classes,
            "lora_rank": self.rank,
            "lora_alpha": self.alpha,
            "lora_dropout": self.lora_dropout,
            "target_modules": self.target_modules,
            "dropout": self.dropout.p,
            "pooling": "last-layer-mean-masked",
        }

    def save_pretrained(self, directory, *, extra: dict[str, Any] | None = None) -> None:
        """Write ``lora_model.safetensors`` (LoRA matrices + classifier) and ``lora_config.json`` atomically."""
        from densattn.lora_io import save_lora_classifier

        save_lora_classifier(self, directory, extra=extra)

    @classmethod
    def from_pretrained(cls, directory, *, device: str | torch.device = "cpu") -> LoraClassifier:
        """Rebuild the encoder named in ``lora_config.json`` and load the saved LoRA matrices and classifier
        (eval mode, nothing trainable)."""
        from densattn.lora_io import load_lora_classifier

        return load_lora_classifier(cls, directory, device=device)


def slice_inputs(inputs: dict[str, Tensor], start: int | Tensor, stop: int | None = None) -> dict[str, Tensor]:
    """Rows ``start:stop`` (or the index tensor ``start``) of every prepared input tensor."""
    if stop is None:
        return {k: v[start] for k, v in inputs.items()}
    return {k: v[start:stop] for k, v in inputs.items()}
