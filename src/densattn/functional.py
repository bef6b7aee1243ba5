"""The density-adaptive attention (DAAM) kernel.

One function, :func:`density_attention`, computes every DAAM preset (see ``docs/design.md``, "The DAAM kernel", and
arXiv `2401.11143 <https://arxiv.org/abs/2401.11143>`_, "Density Adaptive Attention is All You Need").

For each head ``h`` (a contiguous chunk of the norm axis) and each position ``i`` in the chunk::

    mu, var = mean(x), mean((x - mu)^2)               # over the chunk; float32 or wider
    z_k     = (x_i - mu - delta_k) / sqrt(var + eps)  # k = 1..N Gaussians
    l_k     = -z_k^2 / (2 s_k)                        # s_k = xi_k ("linear") or xi_k^2 ("square")
    L       = sum_k l_k                               # "product"
            | logsumexp_k(l_k + log softmax(w)_k)     # "mixture"
    a       = exp(L) | softmax_i(L)                   # "none" (a gate in (0, 1]) | "softmax" over the chunk
    y       = x * a

Implementation notes:

* The product of Gaussians is itself a Gaussian, so ``"product"`` never materialises the N Gaussians:
  ``sum_k (d - delta_k)^2 / s_k = P (d - m)^2 + R`` with precision ``P = sum_k 1/s_k``, precision-weighted offset
  ``m = sum_k (delta_k / s_k) / P`` and residual ``R = sum_k (delta_k - m)^2 / s_k >= 0``. Cost is O(m·F) per head
  whatever N is, and the combination is exact and in log space (a row never underflows to all zeros).
* Deviations are rescaled by their largest magnitude before squaring, so inputs up to ~1e38 do not overflow in
  float32 and tiny inputs (1e-30) do not underflow.
* Masked positions (``mask`` False) are excluded from the statistics and from the softmax, pass through unchanged
  and get weight 0.
* ``"product"`` without a mask and with even heads runs on the fused kernels of :mod:`densattn.kernels` (C++ on
  CPU, compiled on CUDA; same numbers, a backward that keeps only ``x``, exact double backward); everything else
  runs on the code below, which is the reference.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

SpreadParam = Literal["linear", "square"]
Combine = Literal["product", "mixture"]
Normalize = Literal["none", "softmax"]

#: Smallest spread ``s_k`` the kernel uses; a learned spread that reaches 0 (or turns negative under
#: ``"linear"``) is clamped here instead of dividing by zero or flipping the Gaussian into an exploding bump.
MIN_SPREAD = 1e-6
#: route masked and mixture calls through the hand-written backward (densattn.kernels.general); False runs the
#: reference path, autograd through every op (tests compare the two)
HAND_WRITTEN_BACKWARD = True

__all__ = ["density_attention", "head_chunk_sizes", "MIN_SPREAD"]


def _normalize_axis(axis: int, ndim: int, name: str) -> int:
    if not isinstance(axis, int) or isinstance(axis, bool):
        raise ValueError(f"{name} must be an int axis index, got {axis!r}")
    if not -ndim <= axis < ndim:
        raise ValueError(
            f"{name}={axis} is out of range for an input with {ndim} dimensions; use a value in [{-ndim}, {ndim - 1}]"
        )
    return axis % ndim


def head_chunk_sizes(size: int, num_heads: int, *, allow_ragged_heads: bool = False) -> list[int]:
    """Sizes of the contiguous head chunks along an axis of ``size`` items.

    Heads split the axis evenly; with ``allow_ragged_heads=True`` and an uneven split the last head takes the
    remainder (``gaussian-adaptive-attention``'s rule).

    Raises:
        ValueError: if ``num_heads`` does not divide ``size`` (and ragged heads are not allowed), or leaves a head
            with no item.

    Example:
        >>> head_chunk_sizes(24, 8)
        [3, 3, 3, 3, 3, 3, 3, 3]
        >>> head_chunk_sizes(7, 2, allow_ragged_heads=True)
        [3, 4]
    """
    if not isinstance(num_heads, int) or num_heads < 1:
        raise ValueError(f"num_heads must be a positive int, got {num_heads!r}")
    chunk = size // num_heads
    if chunk == 0:
        raise ValueError(f"num_heads={num_heads} is larger than the norm axis ({size} items); use at most {size} heads")
    if size % num_heads and not allow_ragged_heads:
        divisors = [h for h in range(1, size + 1) if size % h == 0]
        raise ValueError(
            f"num_heads={num_heads} does not divide the norm axis of {size} items; choose one of {divisors} "
            "or pass allow_ragged_heads=True (the last head then takes the remainder)"
        )
    return [chunk] * (num_heads - 1) + [size - chunk * (num_heads - 1)]


def _check_params(
    mean_offset: Tensor, spread: Tensor, num_heads: int, num_features: int | None, param_dim: int | None
) -> int:
    if not isinstance(mean_offset, Tensor) or not isinstance(spread, Tensor):
        raise ValueError("mean_offset and spread must be tensors")
    if mean_offset.shape != spread.shape:
        raise ValueError(
            f"mean_offset {tuple(mean_offset.shape)} and spread {tuple(spread.shape)} must have the same shape"
        )
    expected_rank = 2 if param_dim is None else 3
    if mean_offset.dim() != expected_rank or mean_offset.shape[0] != num_heads:
        want = "(num_heads, num_gaussians)" if param_dim is None else "(num_heads, num_gaussians, num_features)"
        raise ValueError(
            f"mean_offset/spread have shape {tuple(mean_offset.shape)} but param_dim={param_dim} and "
            f"num_heads={num_heads} need {want}"
        )
    if param_dim is not None and mean_offset.shape[2] not in (1, num_features):
        raise ValueError(
            f"mean_offset/spread last dimension is {mean_offset.shape[2]} but the input has {num_features} "
            f"items along param_dim={param_dim}; make them match (or 1 to share across features)"
        )
    return mean_offset.shape[1]


def _prepare_mask(mask: Tensor | None, x: Tensor) -> Tensor | None:
    if mask is None:
        return None
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
        got = mask.dtype if isinstance(mask, Tensor) else type(mask).__name__
        raise ValueError(f"mask must be a bool tensor (True = keep), got {got}; pass mask.bool() or mask != 0")
    if mask.dim() < x.dim() and tuple(mask.shape) == tuple(x.shape[: mask.dim()]):
        mask = mask.reshape(tuple(mask.shape) + (1,) * (x.dim() - mask.dim()))  # (B, T) -> (B, T, 1, ...)
    try:
        return torch.broadcast_to(mask, x.shape)
    except RuntimeError:
        raise ValueError(
            f"mask of shape {tuple(mask.shape)} does not broadcast to the input {tuple(x.shape)}; give it the "
            "input's shape, a broadcastable shape, or a prefix of it such as (batch, length)"
        ) from None


def density_attention(
    x: Tensor,
    mean_offset: Tensor,
    spread: Tensor,
    *,
    norm_dim: int,
    param_dim: int | None = -1,
    num_heads: int = 1,
    spread_param: SpreadParam = "linear",
    combine: Combine = "product",
    mixture_logits: Tensor | None = None,
    normalize: Normalize = "none",
    mask: Tensor | None = None,
    eps: float = 1e-5,
    package_compat: bool = False,
    allow_ragged_heads: bool = False,
    need_weights: bool = True,
) -> tuple[Tensor, Tensor | None]:
    """Density-adaptive attention: weight every item by learned Gaussian densities of its standardised value.

    See the module docstring for the equations (docs/design.md; arXiv 2401.11143, Algorithms 1–2).

    Args:
        x: input of any rank >= 2.
        mean_offset: ``delta``, shape ``(num_heads, num_gaussians, F)`` (``F`` = ``x.shape[param_dim]`` or 1), or
            ``(num_heads, num_gaussians)`` when ``param_dim`` is None (scalar parameters).
        spread: ``xi``, same shape as ``mean_offset``.
        norm_dim: axis the statistics are taken over; heads split it into contiguous chunks.
        param_dim: axis the per-feature parameters run along, or None for scalar parameters.
        num_heads: number of heads along ``norm_dim``.
        spread_param: ``"linear"`` (``l = -z^2 / (2 xi)``, paper Alg. 1) or ``"square"`` (``-z^2 / (2 xi^2)``).
        combine: ``"product"`` (sum of log-densities) or ``"mixture"`` (log-sum-exp with ``mixture_logits``).
        mixture_logits: logits of the mixture weights, shape ``(num_heads, num_gaussians)``; required for
            ``combine="mixture"``.
        normalize: ``"none"`` (gate ``exp(L)``) or ``"softmax"`` over each head's chunk of ``norm_dim``.
        mask: bool, True = keep; the input's shape, broadcastable to it, or a prefix of it (e.g. ``(B, T)``).
        eps: added to the variance; must be >= 0.
        package_compat: reproduce ``gaussian-adaptive-attention`` 0.1.5: unbiased variance, with a mask the
            package's padding rule (padded items count as zeros in mean and variance and stay in the softmax),
            and for ``"product"`` + ``"softmax"`` its normaliser ``density / max(sum, eps)`` (in log space:
            ``a = exp(L - max(lse(L), log eps + sum_k log(2 pi s_k) / 2))``), so a head whose density sum falls
            below ``eps`` gets weights summing to less than 1, as in the package.
        allow_ragged_heads: let the last head take the remainder when ``num_heads`` does not divide the axis.
        need_weights: return the weights; with False they are None, and the fused CPU kernel never writes them
            (one tensor of ``x``'s size less traffic and memory).

    Returns:
        ``(out, weights)``, both shaped like ``x``; ``out`` has ``x``'s dtype, ``weights`` float32 (or float64),
        or None when ``need_weights`` is False.

    Raises:
        ValueError: on an out-of-range axis, heads that do not divide the axis, mismatched parameter shapes,
            a non-bool mask, an unknown option, or a negative ``eps``.

    Example:
        >>> x = torch.randn(4, 6, 16)  # (batch, layers, features)
        >>> delta, xi = torch.zeros(2, 1, 16), torch.full((2, 1, 16), 2.0)
        >>> out, w = density_attention(x, delta, xi, norm_dim=1, num_heads=2)
        >>> out.shape, bool((w > 0).all() and (w <= 1).all())
        (torch.Size([4, 6, 16]), True)
    """
    if not isinstance(x, Tensor):
        raise ValueError(f"x must be a tensor, got {type(x).__name__}")
    if x.dim() < 2:
        raise ValueError(f"x must have at least 2 dimensions, got shape {tuple(x.shape)}")
    if not (x.is_floating_point()):
        raise ValueError(f"x must be a floating-point tensor, got {x.dtype}; convert it with x.float()")
    if spread_param not in ("linear", "square"):
        raise ValueError(f"spread_param must be 'linear' or 'square', got {spread_param!r}")
    if combine not in ("product", "mixture"):
        raise ValueError(f"combine must be 'product' or 'mixture', got {combine!r}")
    if normalize not in ("none", "softmax"):
        raise ValueError(f"normalize must be 'none' or 'softmax', got {normalize!r}")
    if not eps >= 0:
        raise ValueError(f"eps must be >= 0 (it is added to the variance), got {eps}")
    ndim = x.dim()
    nd = _normalize_axis(norm_dim, ndim, "norm_dim")
    pd = None if param_dim is None else _normalize_axis(param_dim, ndim, "param_dim")
    if pd is not None and pd == nd:
        raise ValueError(f"param_dim and norm_dim both point at axis {nd}; the parameters need another axis")
    num_features = None if pd is None else x.shape[pd]
    m = x.shape[nd]
    sizes = head_chunk_sizes(m, num_heads, allow_ragged_heads=allow_ragged_heads)
    num_gaussians = _check_params(mean_offset, spread, num_heads, num_features, pd)
    if combine == "mixture":
        if mixture_logits is None:
            raise ValueError("combine='mixture' needs mixture_logits of shape (num_heads, num_gaussians)")
        if tuple(mixture_logits.shape) != (num_heads, num_gaussians):
            raise ValueError(
                f"mixture_logits has shape {tuple(mixture_logits.shape)}, expected ({num_heads}, {num_gaussians})"
            )
    mask = _prepare_mask(mask, x)
    cdt = torch.promote_types(x.dtype, torch.float32)
    delta, s = _gaussian_params(mean_offset, spread, spread_param, cdt)

    if combine == "product" and mask is None and len(set(sizes)) == 1:
        from densattn.kernels import fused_product  # (imported here: the kernels import this module)

        return fused_product(x, delta, s, nd, pd, num_heads, sizes[0], normalize, eps, package_compat, need_weights)

    # ---- general path. Layout: (..., F, m) with the parameter axis second to last, the norm axis last ----------
    xt = x.movedim(nd, -1)
    mt = None if mask is None else mask.movedim(nd, -1)
    if pd is not None:
        p_after = pd if pd < nd else pd - 1  # position of param axis once norm axis moved to the end
        xt = xt.movedim(p_after, -2)
        mt = None if mt is None else mt.movedim(p_after, -2)
    xt = xt.to(cdt)

    # ---- split the norm axis into heads: (..., [F,] H, c) ------------------------------------------------------
    c = max(sizes)
    ragged = len(set(sizes)) > 1
    if ragged:
        starts = [sum(sizes[:h]) for h in range(num_heads)]
        gather = torch.tensor(
            [[min(starts[h] + j, starts[h] + sizes[h] - 1) for j in range(c)] for h in range(num_heads)],
            device=x.device,
        )  # (H, c) positions, padded by repeating a head's last item
        valid = torch.tensor([[j < sizes[h] for j in range(c)] for h in range(num_heads)], device=x.device)
        xh = xt[..., gather]  # (..., H, c)
        keep = valid if mt is None else mt[..., gather] & valid
    else:
        xh = xt.unflatten(-1, (num_heads, c))  # (..., H, c)
        keep = None if mt is None else mt.unflatten(-1, (num_heads, c))
    if keep is not None:
        keep = keep.expand(xh.shape)

    # ---- parameters in the layout of xh: (F, H, N) or (H, N) -> broadcast with (..., F, H, c) ------------------
    if pd is not None:
        delta = delta.permute(2, 0, 1)  # (F|1, H, N)
        s = s.permute(2, 0, 1)
    if not ragged and HAND_WRITTEN_BACKWARD:  # one autograd node that keeps xh, the mask and the parameters only
        from densattn.kernels.general import DensityGeneral

        if combine == "product":
            floor = _package_floor(s, eps) if package_compat and normalize == "softmax" else None
            params = [*(t.unsqueeze(-1) for t in _product_params(delta, s)), floor]
            params[3] = None if floor is None else floor.unsqueeze(-1)
        else:
            log_w = torch.log_softmax(mixture_logits.to(cdt), dim=-1).unsqueeze(-2)  # (H, 1, N)
            params = [delta.unsqueeze(-2), s.unsqueeze(-2), log_w, None]
        out_h, weights = DensityGeneral.apply(xh, keep, *params, combine, normalize, eps, package_compat)
        return _general_layout_back(x, out_h, weights, nd, pd, need_weights)

    # ---- the reference path (autograd through every op): ragged heads; tests compare the hand-written one to it
    # ---- statistics over each head's chunk (float32 or wider) ---------------------------------------------------
    if keep is None or (package_compat and not ragged):
        stats_keep = None
        count = torch.tensor(float(c), dtype=cdt, device=x.device)
        if package_compat and keep is not None:
            x_stats = xh.masked_fill(~keep, 0.0)  # the package zero-fills padding but still counts it
        else:
            x_stats = xh
    else:
        stats_keep = keep
        if package_compat:  # ragged + compat: padding of the gather is excluded, user padding counts as zero
            stats_keep = valid.expand(xh.shape)
            x_stats = xh.masked_fill(~keep, 0.0)
        else:
            x_stats = xh
        count = stats_keep.sum(-1, keepdim=True).to(cdt)
    from densattn.kernels.general import chunk_moments

    mu, inv_sigma = chunk_moments(
        x_stats,
        stats_keep,
        count.clamp_min(1.0),
        (count - 1.0).clamp_min(1.0) if package_compat else count.clamp_min(1.0),
        eps,
    )  # (..., H, 1)
    d = xh - mu  # deviations of every item, including masked ones

    if combine == "product":
        prec, center, resid = _product_params(delta, s)  # (F, H) or (H,)
        u = (d - center.unsqueeze(-1)) * inv_sigma  # (..., H, c)
        logits = -0.5 * (prec.unsqueeze(-1) * u * u + resid.unsqueeze(-1) * inv_sigma * inv_sigma)
    else:
        # mixture: materialise the N Gaussians on a trailing axis: (..., H, c, N)
        z = (d.unsqueeze(-1) - delta.unsqueeze(-2)) * inv_sigma.unsqueeze(-1)
        log_w = torch.log_softmax(mixture_logits.to(cdt), dim=-1).unsqueeze(-2)  # (H, 1, N)
        logits = torch.logsumexp(-0.5 * z * z / s.unsqueeze(-2) + log_w, dim=-1)

    # a log-density below the dtype's range means "no weight"; keep it finite so a row never becomes NaN
    logits = logits.clamp_min(torch.finfo(cdt).min / 2)
    if normalize == "softmax":
        if keep is not None and not package_compat:
            logits = logits.masked_fill(~keep, float("-inf"))
        elif ragged:
            logits = logits.masked_fill(~valid, float("-inf"))
        floor = _package_floor(s, eps) if package_compat and combine == "product" else None
        if floor is None:
            weights = torch.softmax(logits, dim=-1)
        else:  # the package's density / max(sum, eps)
            top = logits.detach().amax(-1, keepdim=True)  # exp(L - max(lse, F)), evaluated relative to the top
            p = torch.exp(logits - top)
            shift = torch.maximum(p.sum(-1, keepdim=True).log(), floor.unsqueeze(-1) - top)  # log space: no overflow
            weights = p * torch.exp(-shift)
        if keep is not None:
            weights = torch.nan_to_num(weights, nan=0.0)  # a fully masked chunk has no weights
    else:
        weights = torch.exp(logits)
    if keep is not None and not package_compat:
        weights = weights.masked_fill(~keep, 0.0)

    # ---- back to x's layout ---------------------------------------------------------------------------------------
    if ragged:
        flat_index = torch.tensor([h * c + j for h in range(num_heads) for j in range(sizes[h])], device=x.device)
        weights = weights.flatten(-2)[..., flat_index]  # (..., m)
    else:
        weights = weights.flatten(-2)
    if pd is not None:
        weights = weights.movedim(-2, p_after)
    weights = weights.movedim(-1, nd)
    out = (x.to(cdt) * weights).to(x.dtype)
    if mask is not None:
        out = torch.where(mask, out, x)
    return out, weights if need_weights else None


def _general_layout_back(x: Tensor, out_h: Tensor, weights: Tensor, nd: int, pd: int | None, need_weights: bool):
    """``(out, weights)`` from the general layout ``(..., [F,] H, c)`` back to ``x``'s (non-ragged heads)."""
    out_h, weights = out_h.flatten(-2), weights.flatten(-2)
    if pd is not None:
        p_after = pd if pd < nd else pd - 1
        out_h, weights = out_h.movedim(-2, p_after), weights.movedim(-2, p_after)
    return out_h.movedim(-1, nd).to(x.dtype), weights.movedim(-1, nd) if need_weights else None


def _gaussian_params(mean_offset: Tensor, spread: Tensor, spread_param: str, cdt: torch.dtype) -> tuple[Tensor, Tensor]:
    """Offsets and variances ``s_k`` (``xi`` or ``xi^2``, clamped to :data:`MIN_SPREAD`) in the compute dtype."""
    s = spread.to(cdt)
    s = s if spread_param == "linear" else s * s
    return mean_offset.to(cdt), s.clamp_min(MIN_SPREAD)


def _product_params(delta: Tensor, s: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Product of Gaussians over the last axis: ``sum_k (d - delta_k)^2 / s_k = P (d - C)^2 + R``."""
    prec = (1.0 / s).sum(-1)
    center = (delta / s).sum(-1) / prec
    resid = ((delta - center.unsqueeze(-1)) ** 2 / s).sum(-1)
    return prec, center, resid


def _package_floor(s: Tensor, eps: float) -> Tensor | None:
    """Log-space form of the package's ``density / max(sum, eps)``: the floor under ``logsumexp`` of the logits.

    The package's densities carry the normaliser ``prod_k (2 pi s_k)^(-1/2)`` that the logits drop, so its rule
    ``max(sum, eps)`` reads ``max(lse(L), log(eps) + sum_k log(2 pi s_k) / 2)`` here. None when ``eps`` is 0.
    """
    if eps <= 0:
        return None
    return math.log(eps) + 0.5 * torch.log(2 * math.pi * s).sum(-1)


from densattn.attention.pb_relax import pb_relax_attention  # noqa: E402, F401  (CogView PB-relax, re-exported)
