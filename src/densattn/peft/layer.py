"""The DAAM-PEFT gate on one module's output: :class:`DensityLayer` (a peft ``BaseTunerLayer``).

For the output ``h`` of the wrapped (frozen) module, per active adapter::

    a = DAAM(h)                            # densattn.functional.density_attention weights, same shape as h
    y = h * (1 + g * (a - 1))              # g: one learned mixing weight per output feature, init 0
      = h + g * (h * a - h) = lerp(h, h * a, g)

* ``g = 0`` (the initialisation): ``y = h`` exactly, so the adapted model is the base model bit for bit.
* ``g = 1``: pure DAAM, ``y = h * a`` (arXiv `2401.11143 <https://arxiv.org/abs/2401.11143>`_, Alg. 1).

Why this form: ``g`` interpolates per feature between the base output and the DAAM output, it needs only the
kernel's own ``h * a`` (one extra pass), and it never takes ``log a`` (``a`` may underflow to 0 for an outlier, and
an exponent form ``h * a**g = h * exp(g log a)`` would give ``0 * log 0 = NaN`` at ``g = 0``). Its price is the
gradient at initialisation: ``dy/dg = h * (a - 1)`` is nonzero wherever ``a != 1``, but
``dy/d(delta, xi) = h * g * da/d(.)`` is exactly 0 while ``g = 0``. The first optimiser step therefore moves ``g``
only; from the second step on (``g != 0``) the Gaussian offsets and spreads get gradients too. No form that is the
identity for every value of the Gaussian parameters can do better, and the exponent form has the same zero.

Statistics (``norm_axis``):

* ``"features"``: per token (per pixel for a convolution), over the module's output features (channels), split
  into ``num_heads`` contiguous chunks; the Gaussian offset / spread are one scalar per head and Gaussian. Each
  token's gate depends on that token alone, so padding cannot reach real tokens.
* ``"tokens"``: per feature, over the sequence (the spatial positions of a convolution, flattened); offsets and
  spreads per feature (``"paper"``, ``"mixture"``) or scalar (``"mixture_of_densities"``). Masked positions
  (bool mask, True = keep) are left out of the statistics and pass through unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import Tensor, nn

from densattn.attention.density import DensityAdaptiveAttention, suggest_num_heads
from densattn.peft.config import DensityConfig
from densattn.peft.targets import output_spec

__all__ = ["DensityLayer", "check_gate_fits"]

MaskSource = Callable[[], Tensor | None]


@dataclass(frozen=True)
class _GateSettings:
    norm_axis: str


class DensityLayer(nn.Module, BaseTunerLayer):
    """A frozen module whose output is gated by DAAM: ``y = h * (1 + g * (a(h) - 1))`` (module docstring).

    Args:
        base_layer: the wrapped module (``Linear``, convolution, ``Embedding``, a norm layer, transformers'
            ``Conv1D``, or a peft tuner layer around one of them).
        adapter_name: name of the first adapter.
        config: the adapter's :class:`~densattn.peft.DensityConfig`.
        module_name: the module's name in the model (used in error messages).
        mask_source: returns the current forward call's token mask ``(B, *positions)`` (bool, True = keep) or
            None; set by :class:`~densattn.peft.DensityModel`.

    Shapes:
        ``h``: ``(B, ..., F)`` for last-axis features, ``(B, C, ...)`` for channels-first modules; ``y`` like ``h``.
        With ``norm_axis="tokens"``: ``(B, T, F)`` or ``(B, C, H, W)`` (positions flattened); the mask is
        ``(B, T)`` / ``(B, H, W)`` or ``(B, H*W)``.

    Raises:
        ValueError: (naming the module) for a module whose output size is unknown, heads that do not divide its
            features, a norm axis its output does not have, or a mask that does not fit its output.

    Example:
        >>> layer = DensityLayer(nn.Linear(8, 6), "default", DensityConfig(num_heads=2), module_name="proj")
        >>> x = torch.randn(2, 5, 8)
        >>> torch.equal(layer(x), layer.base_layer(x))  # g = 0: the base output, bit for bit
        True
    """

    adapter_layer_names = ("daam_gate", "daam_scale")
    other_param_names = ("daam_settings",)

    def __init__(
        self,
        base_layer: nn.Module,
        adapter_name: str,
        config: DensityConfig,
        *,
        module_name: str = "",
        mask_source: MaskSource | None = None,
    ) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.module_name = module_name or type(base_layer).__name__
        spec = output_spec(base_layer)
        if spec is None:
            raise ValueError(
                f"module {self.module_name!r} ({type(base_layer).__name__}) has no known output size; DAAM-PEFT gates "
                "the output of Linear, Conv, Embedding and norm layers: target one of its submodules instead"
            )
        self.num_features, self.channels_first = spec
        self.daam_gate = nn.ModuleDict()
        self.daam_scale = nn.ParameterDict()
        self.daam_settings: dict[str, _GateSettings] = {}
        self._mask_source = mask_source
        self._disable_adapters = False
        self.merged_adapters = []
        self.update_layer(adapter_name, config)
        self.set_adapter(adapter_name)

    def update_layer(self, adapter_name: str, config: DensityConfig) -> None:
        """Add the gate of adapter ``adapter_name`` (validated against this module's output)."""
        check_gate_fits(self.num_features, config, self.module_name)
        features = self.num_features
        if config.norm_axis == "features":
            per_feature = None  # statistics run over the features: one scalar per head and Gaussian
            norm_dim, param_dim = (1 if self.channels_first else -1), -1
        else:
            per_feature = None if config.preset == "mixture_of_densities" else features
            # gated views: (B, C, P) for channels-first outputs, (B, P, F) otherwise
            norm_dim, param_dim = (2, 1) if self.channels_first else (1, 2)
        factory = _factory(self.base_layer)
        self.daam_gate[adapter_name] = DensityAdaptiveAttention(
            per_feature,
            num_heads=config.num_heads,
            num_gaussians=config.num_gaussians,
            norm_dim=norm_dim,
            param_dim=param_dim,
            preset=config.preset,
            eps=config.eps,
            **factory,
        )
        self.daam_scale[adapter_name] = nn.Parameter(torch.full((features,), config.init_gate, **factory))
        self.daam_settings[adapter_name] = _GateSettings(config.norm_axis)
        self.set_adapter(self.active_adapters)  # a new, inactive adapter is frozen (peft's convention)

    def forward(self, *args, **kwargs) -> Tensor:
        """The wrapped module's output, gated by every active adapter (ungated when adapters are disabled)."""
        h = self.base_layer(*args, **kwargs)
        if self.disable_adapters or self.merged:
            return h
        if not isinstance(h, Tensor):
            raise ValueError(f"module {self.module_name!r} returned {type(h).__name__}; a DAAM gate needs a tensor")
        for name in self.active_adapters:
            if name in self.daam_gate:
                h = self.gate(h, name)
        return h

    def gate(self, h: Tensor, adapter_name: str = "default", *, mask: Tensor | None = None) -> Tensor:
        """``h * (1 + g * (a(h) - 1))`` for one adapter. ``mask`` defaults to the model call's mask (tokens axis)."""
        if not h.is_floating_point():
            raise ValueError(f"module {self.module_name!r} returned {h.dtype} values; a DAAM gate needs floats")
        features = h.shape[1] if self.channels_first else h.shape[-1]
        if h.dim() < 2 or features != self.num_features:
            raise ValueError(
                f"module {self.module_name!r} returned shape {tuple(h.shape)}, expected {self.num_features} features "
                f"on axis {1 if self.channels_first else -1}"
            )
        attn, g = self.daam_gate[adapter_name], self.daam_scale[adapter_name]
        if self.daam_settings[adapter_name].norm_axis == "features":
            view, keep = h, None
            g_shape = [1] * h.dim()
            g_shape[1 if self.channels_first else -1] = self.num_features
        else:
            view, keep = self._token_view(h, self._mask_source() if mask is None and self._mask_source else mask)
            g_shape = [1, self.num_features, 1] if self.channels_first else [1, 1, self.num_features]
        out = attn(view, mask=keep)  # pure DAAM h * a; masked positions come back as h
        cdt = torch.promote_types(torch.promote_types(view.dtype, g.dtype), torch.float32)
        g = g.to(cdt).reshape(g_shape)
        if view.dtype == cdt:
            return torch.lerp(view, out, g).reshape(h.shape)  # h + g (h a - h) = h (1 + g (a - 1))
        return torch.lerp(view.to(cdt), out.to(cdt), g).to(h.dtype).reshape(h.shape)

    def _token_view(self, h: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """``(B, P, F)`` (or ``(B, C, P)``) view with the positions flattened, and the mask in its layout."""
        where = self.module_name
        if h.dim() < 3:
            raise ValueError(
                f"norm_axis='tokens' needs a token (or spatial) axis, but module {where!r} returned shape "
                f"{tuple(h.shape)} (batch, features); use norm_axis='features' or exclude the module "
                "(exclude_modules=[...])"
            )
        view = h.flatten(2) if self.channels_first else h.flatten(1, -2)
        positions = h.shape[2:] if self.channels_first else h.shape[1:-1]
        count = view.shape[2] if self.channels_first else view.shape[1]
        if count < 2:
            raise ValueError(
                f"module {where!r} returned {count} position (shape {tuple(h.shape)}); norm_axis='tokens' needs >= 2 "
                "(a variance over one item is 0): use longer inputs, norm_axis='features', or exclude the module"
            )
        if mask is None:
            return view, None
        if tuple(mask.shape) not in ((h.shape[0], *positions), (h.shape[0], count)):
            raise ValueError(
                f"the token mask of shape {tuple(mask.shape)} does not fit module {where!r}, whose output "
                f"{tuple(h.shape)} has positions {tuple(positions)}; pass a (batch, positions) bool mask that "
                "matches the gated outputs, or exclude modules at other resolutions (exclude_modules=[...])"
            )
        keep = mask.to(device=h.device, dtype=torch.bool).reshape(h.shape[0], count)
        keep = keep[:, None, :] if self.channels_first else keep[:, :, None]  # (B, 1, P) or (B, P, 1)
        return view, keep.expand(view.shape)

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        from densattn.peft.model import MERGE_ERROR

        raise ValueError(MERGE_ERROR)

    def unmerge(self) -> None:
        return None  # never merged

    def extra_repr(self) -> str:
        axes = {name: s.norm_axis for name, s in self.daam_settings.items()}
        return f"module={self.module_name!r}, num_features={self.num_features}, norm_axis={axes}"


def check_gate_fits(num_features: int, config: DensityConfig, module_name: str) -> None:
    """Raise a ``ValueError`` naming ``module_name`` when ``config`` cannot gate an output of ``num_features``
    features (fewer than 2 features for ``norm_axis="features"``, or heads that do not split them evenly into
    chunks of at least 2).

    Example:
        >>> check_gate_fits(384, DensityConfig(num_heads=8), "encoder.layer.0.output.dense")  # fine: 8 x 48
    """
    if config.norm_axis != "features":
        return  # the token axis is checked per call: its length is only known then
    if num_features < 2:
        raise ValueError(
            f"module {module_name!r} has {num_features} output feature; norm_axis='features' needs >= 2 (a variance "
            "over one item is 0): use norm_axis='tokens' or exclude the module (exclude_modules=[...])"
        )
    heads = config.num_heads
    if num_features % heads or num_features // heads < 2:
        valid = [h for h in range(1, num_features + 1) if num_features % h == 0 and num_features // h >= 2]
        raise ValueError(
            f"num_heads={heads} does not split the {num_features} output features of module {module_name!r} into "
            f"equal chunks of >= 2; use num_heads in {valid} (e.g. {suggest_num_heads(num_features)}), or exclude "
            "the module (exclude_modules=[...])"
        )


def _factory(module: nn.Module) -> dict:
    """Device of the wrapped module's weights; adapter weights stay float32 (or float64 beside float64 weights)."""
    tensor = next(iter(module.parameters()), None)
    if tensor is None:
        return {}
    dtype = torch.float64 if tensor.dtype == torch.float64 else torch.float32
    return {"device": tensor.device, "dtype": dtype}
