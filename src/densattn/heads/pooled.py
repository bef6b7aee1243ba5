"""Classification heads on pooled per-layer encoder features ``(B, L, d)``.

* :class:`DensityHead` — the paper's DAT decoder (arXiv `2401.11143 <https://arxiv.org/abs/2401.11143>`_):
  an attention module over the ``L`` layer tokens (``daam``, ``gqdaam``, ``mha``, ``mha_bn`` or ``none``), then
  two 3×3 ``Conv2d`` over ``(L, h, w)`` with ``h·w = d`` (a near-square factorisation), ReLU, and a linear
  classifier. With ``attention="none"`` it is the ``conv`` ablation: the same layers without attention.
* :class:`PoolHead` — a learned softmax-weighted sum of the layers, then an MLP classifier (the ``pool`` ablation).
* :class:`LinearProbe` — a linear classifier on one layer; with ``layer="best"`` one probe per layer is trained
  jointly (disjoint parameters, so exactly as if trained apart) and the best on validation is kept.

Every head standardises its input with per-(layer, feature) statistics of the training split (buffers set by
:meth:`set_input_stats`), so all heads see the same inputs. Trainable parameters exclude those buffers; the
classifier is the submodule named ``classifier``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from densattn.attention import DensityAdaptiveAttention, GroupedQueryDensityAttention, suggest_num_heads

HEAD_TYPES = ("daam", "gqdaam", "mha", "mha_bn", "conv", "pool", "linear")
ATTENTIONS = ("daam", "gqdaam", "mha", "mha_bn", "none")

#: options each head type accepts (anything else raises): what ``build_head(head, ..., **options)`` may pass
HEAD_OPTIONS: dict[str, tuple[str, ...]] = {
    "daam": ("preset", "num_heads", "num_gaussians", "conv_channels", "dropout"),
    "gqdaam": (
        "preset",
        "num_heads",
        "num_gaussians",
        "num_query_heads",
        "num_kv_heads",
        "conv_channels",
        "dropout",
    ),
    "mha": ("num_heads", "conv_channels", "dropout"),
    "mha_bn": ("num_heads", "conv_channels", "dropout"),
    "conv": ("conv_channels", "dropout"),
    "pool": ("hidden", "dropout"),
    "linear": ("layer",),
}


def near_square(d: int) -> tuple[int, int]:
    """``(h, w)`` with ``h * w = d`` and ``h <= w`` as close as possible (e.g. 384 -> (16, 24), 320 -> (16, 20))."""
    h = int(math.isqrt(d))
    while d % h:
        h -= 1
    return h, d // h


class _Standardize(nn.Module):
    def __init__(self, num_layers: int, dim: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(num_layers, dim))
        self.register_buffer("std", torch.ones(num_layers, dim))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std


class _HeadBase(nn.Module):
    num_layers: int
    dim: int

    def set_input_stats(self, features: Tensor) -> None:
        """Standardise inputs with the mean and std of ``features (N, L, d)`` (the training split)."""
        self.input_norm.mean.copy_(features.mean(0))
        self.input_norm.std.copy_(features.std(0).clamp_min(1e-6))

    def attention_weights(self, x: Tensor) -> Tensor | None:  # noqa: ARG002 - overridden where weights exist
        """Attention weights of the head for ``x`` (shape like ``x``), or None when the head has none."""
        return None

    def _check(self, x: Tensor) -> None:
        if x.dim() != 3 or x.shape[1:] != (self.num_layers, self.dim):
            raise ValueError(
                f"features must be (batch, {self.num_layers}, {self.dim}) for this head, got {tuple(x.shape)}"
            )


class DensityHead(_HeadBase):
    """Attention over the layer tokens, two 3×3 convolutions over ``(L, h, w)``, ReLU, linear classifier.

    Args:
        num_layers: ``L`` pooled layers of the encoder.
        dim: feature size ``d``.
        num_classes: number of classes.
        attention: ``"daam"``, ``"gqdaam"``, ``"mha"``, ``"mha_bn"`` or ``"none"``.
        preset: DAAM preset (``daam``/``gqdaam``; default ``"paper"``).
        num_heads: DAAM heads along the layer axis for ``daam``/``gqdaam`` (default: the largest divisor of ``L``
            <= 8 leaving >= 2 layers per head), or MHA heads for ``mha``/``mha_bn`` (default 8 when it divides d).
        num_gaussians: Gaussians per DAAM head (default 1).
        num_query_heads, num_kv_heads: GQA head counts of ``gqdaam`` (default 8 and 2 when 8 divides d).
        conv_channels: channels of the two convolutions.
        dropout: dropout before the classifier.

    Raises:
        ValueError: an option that does not apply to the attention kind (e.g. ``preset`` for ``mha``), or head
            counts that do not split the layers / features.

    Shapes:
        ``(B, L, d) -> (B, num_classes)``

    Example:
        >>> head = DensityHead(7, 384, 4)
        >>> head(torch.randn(2, 7, 384)).shape
        torch.Size([2, 4])
    """

    def __init__(
        self,
        num_layers: int,
        dim: int,
        num_classes: int,
        *,
        attention: str = "daam",
        preset: str | None = None,
        num_heads: int | None = None,
        num_gaussians: int | None = None,
        num_query_heads: int | None = None,
        num_kv_heads: int | None = None,
        conv_channels: int = 16,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if attention not in ATTENTIONS:
            raise ValueError(f"attention must be one of {ATTENTIONS}, got {attention!r}")
        given = {
            "preset": preset,
            "num_heads": num_heads,
            "num_gaussians": num_gaussians,
            "num_query_heads": num_query_heads,
            "num_kv_heads": num_kv_heads,
        }
        kind = {"none": "conv"}.get(attention, attention)
        inapplicable = [k for k, v in given.items() if v is not None and k not in HEAD_OPTIONS[kind]]
        if inapplicable:
            raise ValueError(
                f"option(s) {inapplicable} do not apply to the {kind!r} head; it accepts {list(HEAD_OPTIONS[kind])}"
            )
        self.num_layers, self.dim, self.num_classes, self.attention_type = num_layers, dim, num_classes, attention
        self.conv_channels, self.dropout = conv_channels, dropout
        self.input_norm = _Standardize(num_layers, dim)
        self.attention: nn.Module | None
        self.norm = None
        if attention in ("daam", "gqdaam"):
            density_heads = num_heads or suggest_num_heads(num_layers)
            if num_layers % density_heads or num_layers // density_heads < 2:
                raise ValueError(
                    f"num_heads={density_heads} does not split the {num_layers} layers into heads of >= 2 layers; "
                    f"use num_heads={suggest_num_heads(num_layers)} (densattn.attention.suggest_num_heads)"
                )
        if attention == "daam":
            self.attention = DensityAdaptiveAttention(
                dim, num_heads=density_heads, num_gaussians=num_gaussians or 1, norm_dim=1, preset=preset or "paper"
            )
        elif attention == "gqdaam":
            query = num_query_heads or (8 if dim % 8 == 0 else 1)
            kv = num_kv_heads or (2 if query % 2 == 0 else 1)
            self.attention = GroupedQueryDensityAttention(
                dim,
                dim,
                num_query_heads=query,
                num_kv_heads=kv,
                num_density_heads=density_heads,
                num_gaussians=num_gaussians or 1,
                preset=preset or "paper",
            )
        elif attention in ("mha", "mha_bn"):
            heads = num_heads or (8 if dim % 8 == 0 else 1)
            if dim % heads:
                raise ValueError(f"num_heads={heads} must divide the feature size {dim} for the {kind!r} head")
            self.attention = nn.MultiheadAttention(dim, heads, batch_first=True)
            self.norm = nn.BatchNorm1d(dim) if attention == "mha_bn" else None
        else:
            self.attention = None
        h, w = near_square(dim)
        self.grid = (h, w)
        self.conv = nn.Sequential(
            nn.Conv2d(num_layers, conv_channels, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(conv_channels, conv_channels, 3, padding=1),
            nn.ReLU(),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Dropout(dropout), nn.Linear(conv_channels * h * w, num_classes)
        )

    def get_options(self) -> dict[str, Any]:
        """The options that rebuild this head exactly (defaults resolved), for ``build_head``."""
        options: dict[str, Any] = {"conv_channels": self.conv_channels, "dropout": self.dropout}
        if self.attention_type == "daam":
            a = self.attention
            options.update(preset=a.preset, num_heads=a.num_heads, num_gaussians=a.num_gaussians)
        elif self.attention_type == "gqdaam":
            a = self.attention
            options.update(
                preset=a.density.preset,
                num_heads=a.density.num_heads,
                num_gaussians=a.density.num_gaussians,
                num_query_heads=a.num_query_heads,
                num_kv_heads=a.num_kv_heads,
            )
        elif self.attention_type in ("mha", "mha_bn"):
            options["num_heads"] = self.attention.num_heads
        return options

    def _attend(self, x: Tensor) -> Tensor:
        if self.attention_type in ("daam", "gqdaam"):
            return self.attention(x)
        if self.attention_type in ("mha", "mha_bn"):
            out, _ = self.attention(x, x, x, need_weights=False)  # attention across the L layer tokens
            if self.norm is not None:
                out = self.norm(out.transpose(1, 2)).transpose(1, 2)  # BatchNorm over features: (B, d, L)
            return out
        return x

    def forward(self, x: Tensor) -> Tensor:
        self._check(x)
        z = self._attend(self.input_norm(x))  # (B, L, d)
        z = z.reshape(z.shape[0], self.num_layers, *self.grid)  # (B, L, h, w)
        return self.classifier(self.conv(z))

    def attention_weights(self, x: Tensor) -> Tensor | None:
        if self.attention_type != "daam":
            return None
        _, weights = self.attention(self.input_norm(x), need_weights=True)
        return weights


class PoolHead(_HeadBase):
    """Softmax-weighted sum of the layers (learned weights), then ``Linear -> ReLU -> Linear``.

    Example:
        >>> PoolHead(7, 384, 4)(torch.randn(2, 7, 384)).shape
        torch.Size([2, 4])
    """

    def __init__(self, num_layers: int, dim: int, num_classes: int, *, hidden: int = 128, dropout: float = 0.1):
        super().__init__()
        self.num_layers, self.dim, self.num_classes = num_layers, dim, num_classes
        self.hidden, self.dropout = hidden, dropout
        self.input_norm = _Standardize(num_layers, dim)
        self.layer_logits = nn.Parameter(torch.zeros(num_layers))
        self.classifier = nn.Sequential(
            nn.Linear(dim, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, num_classes)
        )

    def get_options(self) -> dict[str, Any]:
        """The options that rebuild this head exactly."""
        return {"hidden": self.hidden, "dropout": self.dropout}

    def no_weight_decay(self) -> set[str]:
        """The layer logits are a softmax's input, not a weight: decaying them pulls the mix toward uniform."""
        return {"layer_logits"}

    def forward(self, x: Tensor) -> Tensor:
        self._check(x)
        weights = torch.softmax(self.layer_logits, 0)  # (L,)
        return self.classifier(torch.einsum("bld,l->bd", self.input_norm(x), weights))


class LinearProbe(_HeadBase):
    """Linear classifier on one layer (``layer`` an index, ``"last"``, or ``"best"`` chosen on validation).

    With ``"best"``, all ``L`` probes are trained at once (their parameters are disjoint, so the summed loss trains
    each exactly as alone) until :meth:`select_layer` keeps one; the trainable-parameter count is then one probe's.

    Example:
        >>> probe = LinearProbe(7, 384, 4, layer="last")
        >>> probe(torch.randn(2, 7, 384)).shape
        torch.Size([2, 4])
    """

    def __init__(self, num_layers: int, dim: int, num_classes: int, *, layer: int | str = "best") -> None:
        super().__init__()
        self.num_layers, self.dim, self.num_classes = num_layers, dim, num_classes
        self.input_norm = _Standardize(num_layers, dim)
        if layer == "last":
            layer = num_layers - 1
        if layer != "best" and not (isinstance(layer, int) and -num_layers <= layer < num_layers):
            raise ValueError(f"layer must be 'best', 'last' or an index in [0, {num_layers}), got {layer!r}")
        self.register_buffer("selected", torch.tensor(-1 if layer == "best" else layer % num_layers))
        self.classifier = nn.Linear(dim, num_classes) if layer != "best" else None
        self.probes = nn.Parameter(torch.zeros(num_layers, dim, num_classes)) if layer == "best" else None
        self.probe_bias = nn.Parameter(torch.zeros(num_layers, num_classes)) if layer == "best" else None
        if self.probes is not None:
            nn.init.normal_(self.probes, std=dim**-0.5)

    @property
    def selecting(self) -> bool:
        """True while the probes of every layer are trained together (before :meth:`select_layer`)."""
        return self.classifier is None

    def get_options(self) -> dict[str, Any]:
        """The options that rebuild this probe: the selected layer once chosen, else ``"best"``."""
        return {"layer": "best" if self.selecting else int(self.selected)}

    def no_weight_decay(self) -> set[str]:
        return {"probe_bias"}

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(B, C)``; while selecting, ``(B, L, C)`` with one set of logits per layer."""
        self._check(x)
        x = self.input_norm(x)
        if self.selecting:
            return torch.einsum("bld,ldc->blc", x, self.probes) + self.probe_bias
        return self.classifier(x[:, int(self.selected)])

    def select_layer(self, layer: int) -> None:
        """Keep the probe of ``layer`` as the classifier and drop the others."""
        if not self.selecting:
            raise ValueError("select_layer is only for probes built with layer='best'")
        linear = nn.Linear(self.dim, self.num_classes)
        with torch.no_grad():
            linear.weight.copy_(self.probes[layer].t())
            linear.bias.copy_(self.probe_bias[layer])
        self.classifier = linear
        self.probes = self.probe_bias = None
        self.selected.fill_(layer)


def build_head(
    head: str, num_layers: int, dim: int, num_classes: int, **options: Any
) -> DensityHead | PoolHead | LinearProbe:
    """Head by name: ``daam``, ``gqdaam``, ``mha``, ``mha_bn``, ``conv`` (DensityHead without attention),
    ``pool``, ``linear``; ``options`` are those of :data:`HEAD_OPTIONS` for that head.

    Raises:
        ValueError: an unknown head, or an option that does not apply to it (the message lists the valid ones).

    Example:
        >>> build_head("conv", 4, 6, 2, preset="paper")
        Traceback (most recent call last):
        ...
        ValueError: option(s) ['preset'] do not apply to the 'conv' head; it accepts ['conv_channels', 'dropout']
    """
    if head not in HEAD_TYPES:
        raise ValueError(f"head must be one of {HEAD_TYPES}, got {head!r}")
    unknown = [k for k in options if k not in HEAD_OPTIONS[head]]
    if unknown:
        raise ValueError(
            f"option(s) {unknown} do not apply to the {head!r} head; it accepts {list(HEAD_OPTIONS[head])}"
        )
    if head == "pool":
        return PoolHead(num_layers, dim, num_classes, **options)
    if head == "linear":
        return LinearProbe(num_layers, dim, num_classes, **options)
    attention = "none" if head == "conv" else head
    return DensityHead(num_layers, dim, num_classes, attention=attention, **options)


def count_parameters(module: nn.Module) -> dict[str, int]:
    """Trainable parameters in total and without the classifier (the outermost submodule named ``classifier``).

    Example:
        >>> count_parameters(build_head("linear", 7, 384, 4, layer="last"))
        {'trainable_params': 1540, 'trainable_params_without_classifier': 0}
    """
    total = sum(p.numel() for p in module.parameters() if p.requires_grad)
    named = [(n.count("."), m) for n, m in module.named_modules() if n.split(".")[-1] == "classifier"]
    classifier = min(named, key=lambda t: t[0])[1] if named else None
    in_classifier = sum(p.numel() for p in classifier.parameters() if p.requires_grad) if classifier else 0
    return {"trainable_params": total, "trainable_params_without_classifier": total - in_classifier}
