"""Layer attributions for any model on per-layer features ``(B, L, d)``: occlusion, gradient × input, integrated
gradients.

Notation: ``f(x)`` the logits, ``log p(y | x) = log_softmax(f(x))[y]``, ``LL(x) = mean_n log p(y_n | x_n)`` the
log-likelihood of a labelled set, and ``b (L, d)`` the **baseline**: the training-split mean of every
(layer, feature). Every head standardises its input with exactly those training statistics, so ``b`` is the input
the head sees as all zeros, and "removing" a layer means replacing it by ``b``.

* occlusion (Zeiler & Fergus 2014, https://arxiv.org/abs/1311.2901), per layer or per (layer, feature)::

      O[l]    = LL(x) - LL(x with layer l set to b[l])          (nats; > 0: the layer helps)
      O[l, f] = LL(x) - LL(x with feature (l, f) set to b[l, f])

* gradient × input (Shrikumar et al. 2016, https://arxiv.org/abs/1605.01713), relative to the baseline::

      G[n, l, f] = (x - b)[n, l, f] * d log p(y_n | x_n) / d x[n, l, f];   map = mean_n G;   score[l] = sum_f map[l, f]

  ``score[l]`` is the first-order Taylor estimate of ``O[l]`` (same unit). Since ``x - b = std * z`` with ``z`` the
  head's standardised input, ``G`` is gradient × input in the head's own standardised coordinates.

* integrated gradients (Sundararajan et al. 2017, https://arxiv.org/abs/1703.01365), through Captum::

      IG[n, l, f] = (x - b)[n, l, f] * int_0^1 d log p(y_n | b + a (x_n - b)) / d x[n, l, f] da

  with ``sum_{l, f} IG[n] = log p(y_n | x_n) - log p(y_n | b)`` (completeness); map and score as for ``G``.

Every function takes ``model`` as any module ``(B, L, d) -> logits (B, C)`` in eval mode (a head adapter, or
:class:`~densattn.analysis.runs.FusionLayers`), works in batches, and returns float64 CPU tensors.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

__all__ = [
    "Attribution",
    "feature_occlusion",
    "gradient_x_input",
    "integrated_gradients",
    "log_likelihood",
    "occlude",
    "occlusion",
]


@dataclass(frozen=True)
class Attribution:
    """What one explanation method says about the layers.

    Attributes:
        method: ``"if"``, ``"occlusion"``, ``"gradient"`` or ``"ig"``.
        layer_scores: ``(L,)`` float64, higher = more important.
        feature_map: ``(L, d)`` float64 per-(layer, feature) importance, or None when not computed.
        unit: what the scores measure (e.g. ``"nats"``).

    Example:
        >>> Attribution("occlusion", torch.tensor([0.1, 0.5, 0.5, -0.2]), None, "nats").ranking()
        [1, 2, 0, 3]
    """

    method: str
    layer_scores: Tensor
    feature_map: Tensor | None
    unit: str

    def ranking(self) -> list[int]:
        """Layer indices, most important first (ties keep the lower index first)."""
        return [int(i) for i in np.argsort(-self.layer_scores.numpy(), kind="stable")]


def _check(x: Tensor, y: Tensor, baseline: Tensor | None = None) -> None:
    if x.dim() != 3:
        raise ValueError(f"x must be per-layer features (N, L, d), got shape {tuple(x.shape)}")
    if y.shape != (x.shape[0],):
        raise ValueError(f"y must hold one label per example, shape ({x.shape[0]},), got {tuple(y.shape)}")
    if baseline is not None and tuple(baseline.shape) != tuple(x.shape[1:]):
        raise ValueError(f"baseline must be (L, d) = {tuple(x.shape[1:])}, got {tuple(baseline.shape)}")


def _device(model: nn.Module) -> torch.device:
    first = next(iter(model.parameters()), None)
    return first.device if first is not None else torch.device("cpu")


def log_likelihood(model: nn.Module, x: Tensor, y: Tensor, *, batch_size: int = 512) -> Tensor:
    """``log p(y_n | x_n)`` for every example, ``(N,)`` float64.

    Example:
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(6, 3))
        >>> log_likelihood(model, torch.randn(5, 2, 3), torch.tensor([0, 1, 2, 0, 1])).shape
        torch.Size([5])
    """
    _check(x, y)
    device = _device(model)
    out = []
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            logits = model(x[i : i + batch_size].to(device)).double()
            target = y[i : i + batch_size].to(device)
            out.append(torch.log_softmax(logits, -1).gather(1, target[:, None]).squeeze(1).cpu())
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)


def occlude(x: Tensor, baseline: Tensor, layers) -> Tensor:
    """A copy of ``x (N, L, d)`` with ``layers`` replaced by their baseline rows ``baseline[layers]``.

    Example:
        >>> occlude(torch.ones(2, 3, 1), torch.zeros(3, 1), [0, 2])[0].flatten().tolist()
        [0.0, 1.0, 0.0]
    """
    out = x.clone()
    layers = list(layers)
    if layers:
        out[:, layers] = baseline[layers].to(x.dtype)
    return out


def occlusion(model: nn.Module, x: Tensor, y: Tensor, baseline: Tensor, *, batch_size: int = 512) -> Attribution:
    """Layer occlusion: ``O[l] = LL(x) - LL(x with layer l set to baseline[l])`` (module docstring), in nats.

    Args:
        model: ``(B, L, d) -> logits``, eval mode.
        x: features ``(N, L, d)``; y: labels ``(N,)``; baseline: ``(L, d)`` (the training-split mean).

    Example:
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(6, 2))
        >>> occlusion(model, torch.randn(8, 3, 2), torch.arange(8) % 2, torch.zeros(3, 2)).layer_scores.shape
        torch.Size([3])
    """
    _check(x, y, baseline)
    full = log_likelihood(model, x, y, batch_size=batch_size).mean()
    scores = []
    for l in range(x.shape[1]):
        occluded = occlude(x, baseline, [l])
        scores.append(full - log_likelihood(model, occluded, y, batch_size=batch_size).mean())
    return Attribution("occlusion", torch.stack(scores), None, "nats")


def feature_occlusion(
    model: nn.Module, x: Tensor, y: Tensor, baseline: Tensor, *, max_elements: int = 2**23
) -> Attribution:
    """Single-feature occlusion ``O[l, f]`` ``(L, d)`` (module docstring); layer scores are the layer occlusion
    ``O[l]`` (removing a whole layer), not the sum of single-feature drops.

    Costs ``L * d`` passes over ``x``; occluded copies are evaluated together, ``max_elements`` floats at a time.

    Shapes:
        ``x (N, L, d)``, ``y (N,)``, ``baseline (L, d)`` -> ``feature_map (L, d)``, ``layer_scores (L,)``.

    Example:
        A linear model that reads only feature 0 of layer 1: only that entry has an occlusion effect, and it is the
        literal ``LL(x) - LL(x with that feature set to the baseline)``:

        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(6, 2, bias=False)).eval()
        >>> with torch.no_grad():
        ...     _ = model[1].weight.zero_()
        ...     model[1].weight[1, 3] = 2.0  # logit of class 1 = 2 x[:, 1, 0]
        >>> x = torch.randn(8, 2, 3, generator=torch.Generator().manual_seed(0))
        >>> y, baseline = (x[:, 1, 0] > 0).long(), torch.zeros(2, 3)
        >>> result = feature_occlusion(model, x, y, baseline)
        >>> (result.feature_map != 0).nonzero().tolist(), result.unit
        ([[1, 0]], 'nats')
        >>> occluded = x.clone()
        >>> occluded[:, 1, 0] = 0.0
        >>> drop = log_likelihood(model, x, y).mean() - log_likelihood(model, occluded, y).mean()
        >>> torch.allclose(result.feature_map[1, 0], drop), result.ranking()
        (True, [1, 0])
    """
    _check(x, y, baseline)
    n, num_layers, dim = x.shape
    device = _device(model)
    full = log_likelihood(model, x, y).mean()
    chunk = max(1, max_elements // max(1, x.numel()))
    drops = torch.zeros(num_layers * dim, dtype=torch.float64)
    flat_base = baseline.reshape(-1).to(x.dtype)
    with torch.no_grad():
        for start in range(0, num_layers * dim, chunk):
            cells = torch.arange(start, min(start + chunk, num_layers * dim))
            copies = x.reshape(1, n, -1).repeat(len(cells), 1, 1)  # (k, N, L*d)
            copies[torch.arange(len(cells)), :, cells] = flat_base[cells][:, None]
            logits = model(copies.reshape(-1, num_layers, dim).to(device)).double()
            target = y.repeat(len(cells)).to(device)
            ll = torch.log_softmax(logits, -1).gather(1, target[:, None]).reshape(len(cells), n).mean(1)
            drops[cells] = full - ll.cpu()
    layer = occlusion(model, x, y, baseline).layer_scores
    return Attribution("occlusion", layer, drops.reshape(num_layers, dim), "nats")


def gradient_x_input(model: nn.Module, x: Tensor, y: Tensor, baseline: Tensor, *, batch_size: int = 512) -> Attribution:
    """Gradient × (input − baseline) of ``log p(y | x)``, averaged over examples (module docstring).

    Returns an :class:`Attribution` with ``feature_map = mean_n G[n]`` ``(L, d)`` and ``layer_scores`` its sums over
    features (nats, the first-order estimate of the occlusion drop).

    Example:
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(6, 2))
        >>> gradient_x_input(model, torch.randn(8, 3, 2), torch.arange(8) % 2, torch.zeros(3, 2)).feature_map.shape
        torch.Size([3, 2])
    """
    _check(x, y, baseline)
    device = _device(model)
    total = torch.zeros(x.shape[1:], dtype=torch.float64)
    b = baseline.to(device, x.dtype)
    with torch.enable_grad():
        for i in range(0, len(x), batch_size):
            xb = x[i : i + batch_size].to(device).clone().requires_grad_(True)
            target = y[i : i + batch_size].to(device)
            log_p = torch.log_softmax(model(xb), -1).gather(1, target[:, None]).sum()
            (grad,) = torch.autograd.grad(log_p, xb)
            total += ((xb.detach() - b) * grad).double().sum(0).cpu()  # (L, d)
    feature_map = total / max(1, len(x))
    return Attribution("gradient", feature_map.sum(1), feature_map, "nats")


class _LogProb(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return torch.log_softmax(self.model(x), -1)


def integrated_gradients(
    model: nn.Module, x: Tensor, y: Tensor, baseline: Tensor, *, steps: int = 32, batch_size: int = 64
) -> Attribution:
    """Integrated gradients of ``log p(y | x)`` from the baseline, through Captum (``captum.attr``), averaged over
    examples (module docstring); Gauss-Legendre quadrature with ``steps`` points.

    Raises:
        ValueError: ``steps`` < 2.
        ImportError: Captum is not installed (``pip install captum``).

    Example:
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(6, 2))
        >>> integrated_gradients(model, torch.randn(8, 3, 2), torch.arange(8) % 2, torch.zeros(3, 2)).unit
        'nats'
    """
    _check(x, y, baseline)
    if not isinstance(steps, int) or steps < 2:
        raise ValueError(f"steps must be an int >= 2 (quadrature points of the path integral), got {steps!r}")
    try:
        from captum.attr import IntegratedGradients
    except ImportError as err:  # pragma: no cover - captum is a dependency
        raise ImportError("integrated gradients need Captum: pip install captum") from err
    device = _device(model)
    explainer = IntegratedGradients(_LogProb(model))
    total = torch.zeros(x.shape[1:], dtype=torch.float64)
    b = baseline.to(device, x.dtype)[None]  # (1, L, d)
    for i in range(0, len(x), batch_size):
        xb = x[i : i + batch_size].to(device)
        target = y[i : i + batch_size].to(device)
        attr = explainer.attribute(xb, baselines=b, target=target, n_steps=steps)  # (B, L, d)
        total += attr.detach().double().sum(0).cpu()
    feature_map = total / max(1, len(x))
    return Attribution("ig", feature_map.sum(1), feature_map, "nats")
