"""One transformer encoder layer for every token mixer, with CogView's stabilisers.

- :class:`TransformerEncoderLayer`: any registered token mixer (``list_attention(kind="token_mixer")``) and
  ``norm="pre" | "post" | "sandwich"``::

      pre:       h = x + Attn(LN(x));          y = h + FFN(LN(h))
      post:      h = LN(x + Attn(x));          y = LN(h + FFN(h))
      sandwich:  h = x + LN(Attn(LN(x)));      y = h + LN(FFN(LN(h)))        (CogView Sandwich-LN)

- ``pb_relax=True`` (CogView PB-relax): every LayerNorm becomes :class:`PBRelaxLayerNorm` and ``"softmax"``
  attention becomes ``"pb_relax"`` (scores formed at ``1/α`` scale). Other mixers keep their own scores.
- :class:`TransformerEncoder`: ``num_layers`` copies of a layer.

Paper: Ding et al., "CogView: Mastering Text-to-Image Generation via Transformers", NeurIPS 2021,
https://arxiv.org/abs/2105.13290, §3.2. The Density Adaptive Transformer of Ioannides et al.
(https://arxiv.org/abs/2401.11143) is ``TransformerEncoderLayer(..., attention="daam")``.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from densattn.attention.mixers import check_tokens
from densattn.attention.registry import create_attention, list_attention

__all__ = ["PBRelaxLayerNorm", "TransformerEncoderLayer", "TransformerEncoder"]

NORMS = ("pre", "post", "sandwich")
_ACTIVATIONS = {"gelu": F.gelu, "relu": F.relu}


class PBRelaxLayerNorm(nn.LayerNorm):
    """LayerNorm of ``x`` divided by a detached whole-tensor scale (CogView PB-relax, eq. 4).

    ``PBRelaxLayerNorm(x) = LayerNorm(x / (max|x| / 8))`` with ``max|x|`` over the whole tensor and no gradient
    through it, so ``x`` may exceed the float16 range of its squares without the variance overflowing. LayerNorm
    is scale-invariant, so this equals ``LayerNorm(x)`` up to the ``eps`` term, and ``PBRelaxLayerNorm(c·x)``
    equals ``PBRelaxLayerNorm(x)`` for every ``c > 0``. Paper: https://arxiv.org/abs/2105.13290.

    Args: as :class:`torch.nn.LayerNorm`; ``relax`` is the target magnitude of the largest entry (8).

    Example:
        >>> ln = PBRelaxLayerNorm(16)
        >>> x = torch.randn(2, 5, 16)
        >>> torch.allclose(ln(1e4 * x), ln(x), atol=1e-5)
        True
    """

    def __init__(self, normalized_shape, eps: float = 1e-5, *, relax: float = 8.0, **kwargs) -> None:
        super().__init__(normalized_shape, eps=eps, **kwargs)
        if not relax > 0:
            raise ValueError(f"relax must be > 0 (the magnitude the largest entry is scaled to), got {relax}")
        self.relax = float(relax)

    def forward(self, x: Tensor) -> Tensor:
        scale = x.detach().abs().amax() / self.relax  # whole tensor, no gradient
        scale = scale.clamp_min(torch.finfo(x.dtype).tiny)
        return super().forward(x / scale)


class TransformerEncoderLayer(nn.Module):
    """Transformer encoder layer with a pluggable token mixer, pre/post/Sandwich LayerNorm and PB-relax.

    With ``attention="daam"`` this is the Density Adaptive Transformer layer of Ioannides et al.
    (https://arxiv.org/abs/2401.11143): DAAM over the tokens in place of dot-product attention.
    Sandwich-LN and PB-relax follow CogView (https://arxiv.org/abs/2105.13290)::

        pre:       h = x + Attn(LN(x));        y = h + FFN(LN(h))
        post:      h = LN(x + Attn(x));        y = LN(h + FFN(h))
        sandwich:  h = x + LN(Attn(LN(x)));    y = h + LN(FFN(LN(h)))
        FFN(x) = W_2 act(W_1 x)

    Args:
        d_model: model width ``D``.
        num_heads: heads of the token mixer.
        attention: a token-mixer name (``list_attention(kind="token_mixer")``).
        attention_options: extra keyword arguments of that mixer (e.g. ``{"clusters": 16}``).
        dim_feedforward: FFN hidden width (default ``4 * d_model``).
        norm: ``"pre"``, ``"post"`` or ``"sandwich"``.
        pb_relax: PB-relax LayerNorms, and ``"softmax"`` attention computed as ``"pb_relax"``.
        dropout: dropout on both residual branches and inside the FFN.
        activation: ``"gelu"`` or ``"relu"``.
        layer_norm_eps: LayerNorm epsilon.
        device, dtype: factory kwargs.

    Shapes:
        x ``(B, L, D)``, mask bool ``(B, L)`` True = keep -> ``(B, L, D)``.

    Raises:
        ValueError: an unknown attention, norm or activation (the valid ones are listed), options the mixer does
            not accept.

    Example:
        >>> layer = TransformerEncoderLayer(32, 4, attention="daam", norm="sandwich", pb_relax=True)
        >>> mask = torch.tensor([[True] * 6, [True] * 4 + [False] * 2])
        >>> layer(torch.randn(2, 6, 32), mask=mask).shape
        torch.Size([2, 6, 32])
    """

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        *,
        attention: str = "softmax",
        attention_options: dict[str, Any] | None = None,
        dim_feedforward: int | None = None,
        norm: str = "pre",
        pb_relax: bool = False,
        dropout: float = 0.0,
        activation: str = "gelu",
        layer_norm_eps: float = 1e-5,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        mixers = list_attention(kind="token_mixer")
        if attention not in mixers:
            raise ValueError(f"attention must be a token mixer, one of {mixers}; got {attention!r}")
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {list(NORMS)}, got {norm!r}")
        if activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}, got {activation!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        factory = {"device": device, "dtype": dtype}
        self.d_model, self.norm, self.pb_relax, self.activation = d_model, norm, pb_relax, activation
        self.attention_name = "pb_relax" if pb_relax and attention == "softmax" else attention
        options = dict(attention_options or {})
        self.attn = create_attention(
            self.attention_name, kind="token_mixer", embed_dim=d_model, num_heads=num_heads, **options, **factory
        )
        hidden = dim_feedforward or 4 * d_model
        self.linear1 = nn.Linear(d_model, hidden, **factory)
        self.linear2 = nn.Linear(hidden, d_model, **factory)
        self.dropout = nn.Dropout(dropout)
        layer_norm = PBRelaxLayerNorm if pb_relax else nn.LayerNorm
        self.norm1 = layer_norm(d_model, eps=layer_norm_eps, **factory)
        self.norm2 = layer_norm(d_model, eps=layer_norm_eps, **factory)
        if norm == "sandwich":  # the extra LN on each branch output, before its residual add
            self.norm1_out = layer_norm(d_model, eps=layer_norm_eps, **factory)
            self.norm2_out = layer_norm(d_model, eps=layer_norm_eps, **factory)
        else:
            self.norm1_out = self.norm2_out = None

    def _ffn(self, x: Tensor) -> Tensor:
        return self.linear2(self.dropout(_ACTIVATIONS[self.activation](self.linear1(x))))

    def forward(self, x: Tensor, *, mask: Tensor | None = None) -> Tensor:
        check_tokens(x, mask, self.d_model)
        if self.norm == "post":
            h = self.norm1(x + self.dropout(self.attn(x, mask=mask)))
            return self.norm2(h + self.dropout(self._ffn(h)))
        branch = self.attn(self.norm1(x), mask=mask)  # (B, L, D)
        if self.norm1_out is not None:
            branch = self.norm1_out(branch)
        h = x + self.dropout(branch)
        branch = self._ffn(self.norm2(h))
        if self.norm2_out is not None:
            branch = self.norm2_out(branch)
        return h + self.dropout(branch)

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, attention={self.attention_name!r}, norm={self.norm!r}, "
            f"pb_relax={self.pb_relax}, activation={self.activation!r}"
        )


class TransformerEncoder(nn.Module):
    """``num_layers`` deep copies of ``layer`` applied in turn, then an optional final ``norm``.

    The copies start from identical parameters (as :class:`torch.nn.TransformerEncoder`).

    Example:
        >>> encoder = TransformerEncoder(TransformerEncoderLayer(16, 2, attention="softmax"), num_layers=3)
        >>> encoder(torch.randn(2, 5, 16), mask=torch.ones(2, 5, dtype=torch.bool)).shape
        torch.Size([2, 5, 16])
    """

    def __init__(self, layer: nn.Module, num_layers: int, *, norm: nn.Module | None = None) -> None:
        super().__init__()
        if not isinstance(num_layers, int) or num_layers < 1:
            raise ValueError(f"num_layers must be a positive int, got {num_layers!r}")
        self.layers = nn.ModuleList(copy.deepcopy(layer) for _ in range(num_layers))
        self.norm = norm

    def forward(self, x: Tensor, *, mask: Tensor | None = None) -> Tensor:
        for layer in self.layers:
            x = layer(x, mask=mask)
        return x if self.norm is None else self.norm(x)
