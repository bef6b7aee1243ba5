"""The general DAAM path with a hand-written backward: masks, the ``mixture`` preset, and the package's padding rules.

``density_attention`` sends here every call the fused kernels do not take (a mask, ``combine="mixture"``), except
ragged heads. One autograd function does the whole computation in the general layout ``xh (..., [F,] H, c)``
(the norm axis split into heads, last) and keeps only ``xh``, the bool mask and the small parameters for the
backward, which recomputes the statistics and weights and then runs the chain rule written out below; with
autograd on intermediates the mixture preset kept ``(..., c, N)`` tensors per call.

Forward, per chunk of ``c`` items with keep-mask ``k`` (docs/design.md, "The kernel")::

    x~ = x (or x k: the package zero-fills padding),  v = k (counted items; all under package_compat)
    mu = sum(v x~) / n,  var = sum(v (x~ - mu)^2) / denom,  r = (var + eps)^(-1/2),  d = x - mu
    product:  u = (d - C) r,             L = -(P u^2 + R r^2) / 2
    mixture:  z_k = (d - delta_k) r,     L = logsumexp_k(-z_k^2 / (2 s_k) + log w_k)
    a = exp(L)  |  softmax(L) over kept items  |  exp(L - max(lse L, F))  (the package's floor)
    out = x a on kept items, x elsewhere

Backward (``g_a = g_out x k + g_weights``; ``S = sum(a g_a)``; ``q = r dLoss/dr``)::

    g_L = a g_a - a S [act]                                   (softmax; g_F = -S [not act])
    product:  g_u = -P u g_L,  g_d = r g_u,  q = sum(g_u u) - R r^2 sum(g_L)
    mixture:  rho = softmax_k(.),  g_z = -g_L rho z / s,  g_d = r sum_k g_z,  q = sum(g_z z)
    g_x~ = v (g_mu / n - q r (r (x~ - mu)) / denom),  g_mu = -sum(g_d)     (dvar/dmu = 0)
    g_x = g_d + g_x~ (k where zero-filled) + g_out (a k + 1 - k)

Under ``create_graph=True`` the backward's own ops are recorded (it recomputes from ``xh`` with autograd on), so
second derivatives are exact.
"""

from __future__ import annotations

import torch
from torch import Tensor

#: floor on sigma^2 (in units of the chunk's scale): keeps 1/sigma finite when eps = 0 and a chunk is constant
VAR_FLOOR = 1e-30


def chunk_moments(x_stats: Tensor, stats_keep: Tensor | None, count, denom, eps: float) -> tuple[Tensor, Tensor]:
    """Mean ``mu`` and ``r = 1/sigma`` over the last axis (counted items only), without overflow.

    ``count``/``denom`` are the number of counted items and the variance's divisor (tensors or numbers, >= 1).
    Sums are taken in units of the chunk's largest magnitude, and ``sigma^2 = scale^2 var_s + eps`` is evaluated
    as ``scale^2 (var_s + eps/scale^2)`` for large deviations, so inputs from 1e-30 to 1e38 stay finite.
    """
    ref = x_stats.detach().abs()
    if stats_keep is not None:
        ref = ref.masked_fill(~stats_keep, 0.0)
    scale0 = ref.amax(-1, keepdim=True)
    scale0 = torch.where(scale0 > 0, scale0, torch.ones_like(scale0))
    xs = x_stats / scale0
    if stats_keep is not None:
        xs = xs.masked_fill(~stats_keep, 0.0)
    mu = xs.sum(-1, keepdim=True) / count * scale0
    d_stats = x_stats - mu
    if stats_keep is not None:
        d_stats = d_stats.masked_fill(~stats_keep, 0.0)
    scale = d_stats.detach().abs().amax(-1, keepdim=True)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    ds = d_stats / scale
    var_s = (ds * ds).sum(-1, keepdim=True) / denom  # var / scale^2
    big, small = scale.clamp_min(1.0), scale.clamp_max(1.0)
    inv_big = torch.rsqrt((var_s + eps / (big * big)).clamp_min(VAR_FLOOR)) / big
    inv_small = torch.rsqrt((small * small * var_s + eps).clamp_min(VAR_FLOOR))
    return mu, torch.where(scale >= 1.0, inv_big, inv_small)


def _stats_inputs(xh: Tensor, keep: Tensor | None, package_compat: bool):
    """``(x_stats, stats_keep, count, denom)`` of the general path (non-ragged heads)."""
    c = xh.shape[-1]
    if keep is None or package_compat:
        x_stats = xh if keep is None else xh.masked_fill(~keep, 0.0)  # the package zero-fills but still counts
        return x_stats, None, float(c), float(max(c - 1, 1) if package_compat else c)
    count = keep.sum(-1, keepdim=True).to(xh.dtype)
    return xh, keep, count.clamp_min(1.0), count.clamp_min(1.0)


def _forward_parts(xh, keep, params, combine: str, normalize: str, eps: float, package_compat: bool) -> dict:
    """Every intermediate the backward needs, recomputed from ``xh``."""
    x_stats, stats_keep, count, denom = _stats_inputs(xh, keep, package_compat)
    mu, r = chunk_moments(x_stats, stats_keep, count, denom, eps)
    d = xh - mu
    parts = dict(x_stats=x_stats, stats_keep=stats_keep, count=count, denom=denom, mu=mu, r=r, act=None)
    if combine == "product":
        prec, center, resid, _ = params
        u = (d - center) * r
        logits = -0.5 * (prec * u * u + resid * r * r)
        parts["u"] = u
    else:
        delta, s, log_w, _ = params
        z = (d.unsqueeze(-1) - delta) * r.unsqueeze(-1)
        ell = -0.5 * z * z / s + log_w
        logits = torch.logsumexp(ell, dim=-1)
        parts.update(z=z, ell=ell)
    logits = logits.clamp_min(torch.finfo(xh.dtype).min / 2)  # "no weight", never -inf (a row never turns NaN)
    floor = params[3] if combine == "product" else None
    if normalize == "softmax":
        if keep is not None and not package_compat:
            logits = logits.masked_fill(~keep, float("-inf"))
        if floor is None:
            a = torch.softmax(logits, dim=-1)
        else:  # the package's density / max(sum, eps), in log space
            top = logits.detach().amax(-1, keepdim=True)
            p = torch.exp(logits - top)
            log_total, limit = p.sum(-1, keepdim=True).log(), floor - top
            a = p * torch.exp(-torch.maximum(log_total, limit))
            parts["act"] = log_total >= limit
        if keep is not None:
            a = torch.nan_to_num(a, nan=0.0)  # a fully masked chunk has no weights
    else:
        a = torch.exp(logits)
    if keep is not None and not package_compat:
        a = a.masked_fill(~keep, 0.0)
    parts["a"] = a
    return parts


def _backward(g_out, g_w, xh, keep, params, parts, combine, normalize, package_compat, needs):
    a, r, mu = parts["a"], parts["r"], parts["mu"]
    g_a = torch.zeros_like(a) if g_w is None else g_w
    if g_out is not None:
        gx_a = g_out * xh
        g_a = g_a + (gx_a if keep is None else gx_a.masked_fill(~keep, 0.0))
    g_l = a * g_a
    g_floor = None
    if normalize == "softmax":
        total = g_l.sum(-1, keepdim=True)
        act = parts["act"]
        if act is None:
            g_l = g_l - a * total
        else:
            g_l = g_l - a * torch.where(act, total, torch.zeros_like(total))
            g_floor = torch.where(act, torch.zeros_like(total), -total)
    grads: list[Tensor | None] = [None] * 4
    if combine == "product":
        prec, center, resid, floor = params
        u = parts["u"]
        g_u = -prec * u * g_l
        g_d = r * g_u
        q = (g_u * u).sum(-1, keepdim=True) - resid * r * r * g_l.sum(-1, keepdim=True)
        if needs[0]:
            grads[0] = (-0.5 * u * u * g_l).sum_to_size(prec.shape)
        if needs[1]:
            grads[1] = (-r * g_u).sum_to_size(center.shape)
        if needs[2]:
            grads[2] = (-0.5 * r * r * g_l).sum_to_size(resid.shape)
        if needs[3] and g_floor is not None:
            grads[3] = g_floor.sum_to_size(floor.shape)
    else:
        delta, s, log_w, _ = params
        z, ell = parts["z"], parts["ell"]
        g_ell = g_l.unsqueeze(-1) * torch.softmax(ell, dim=-1)
        g_z = -g_ell * z / s
        g_d = r * g_z.sum(-1)
        q = (g_z * z).sum((-2, -1)).unsqueeze(-1)
        if needs[0]:
            grads[0] = (-r.unsqueeze(-1) * g_z).sum_to_size(delta.shape)
        if needs[1]:
            grads[1] = (0.5 * g_ell * z * z / (s * s)).sum_to_size(s.shape)
        if needs[2]:
            grads[2] = g_ell.sum_to_size(log_w.shape)
    # the statistics: d = x - mu, mu = sum(v x~)/n, r = (var + eps)^(-1/2) with dr/dvar = -r^3/2
    x_stats, stats_keep, count, denom = parts["x_stats"], parts["stats_keep"], parts["count"], parts["denom"]
    g_mu = -g_d.sum(-1, keepdim=True)
    g_xs = g_mu / count - q * r * ((x_stats - mu) * r) / denom
    if stats_keep is not None:
        g_xs = g_xs.masked_fill(~stats_keep, 0.0)
    if package_compat and keep is not None:
        g_xs = g_xs.masked_fill(~keep, 0.0)  # zero-filled items do not reach the statistics
    g_x = g_d + g_xs
    if g_out is not None:
        g_x = g_x + g_out * (a if keep is None else torch.where(keep, a, torch.ones_like(a)))
    return g_x, grads


#: items x Gaussians per slice: the general path works through the batch in slices of about this many, so that
#: its (..., c, N) temporaries stay in cache and its peak memory does not grow with the batch
SLICE_ELEMENTS = 1 << 20


def _slices(xh: Tensor, params, combine: str) -> list[slice]:
    """Slices of ``xh``'s first axis (when the parameters do not span it) of about :data:`SLICE_ELEMENTS` work."""
    spanned = max(p.dim() - (1 if combine == "mixture" else 0) for p in params if p is not None)
    if xh.dim() <= spanned or xh.shape[0] == 1:
        return [slice(None)]
    work = xh.numel() * (params[0].shape[-1] if combine == "mixture" else 1)
    per_row = max(1, work // xh.shape[0])
    step = max(1, SLICE_ELEMENTS // per_row)
    return [slice(i, i + step) for i in range(0, xh.shape[0], step)]


class DensityGeneral(torch.autograd.Function):
    """``(out, weights)`` in the general layout ``(..., H, c)``; keeps ``xh``, the mask and the parameters only.

    ``params``: product ``(P, C, R, F or None)`` broadcast as ``(..., H, 1)``; mixture ``(delta, s, log w, None)``
    broadcast as ``(..., H, 1, N)``. Both passes go through the batch in slices (:data:`SLICE_ELEMENTS`).
    """

    @staticmethod
    def forward(ctx, xh, keep, p0, p1, p2, p3, combine, normalize, eps, package_compat):
        params = (p0, p1, p2, p3)
        out, a = torch.empty_like(xh), torch.empty_like(xh)
        for sl in _slices(xh, params, combine):
            x_s, k_s = xh[sl], None if keep is None else keep[sl]
            a[sl] = _forward_parts(x_s, k_s, params, combine, normalize, eps, package_compat)["a"]
            out[sl] = x_s * a[sl] if k_s is None else torch.where(k_s, x_s * a[sl], x_s)
        ctx.save_for_backward(xh, keep, *params)
        ctx.options = (combine, normalize, eps, package_compat)
        ctx.set_materialize_grads(False)
        return out, a

    @staticmethod
    def backward(ctx, g_out, g_w):
        xh, keep, *params = ctx.saved_tensors
        combine, normalize, eps, package_compat = ctx.options
        needs = ctx.needs_input_grad[2:6]
        g_x, grads = [], [None] * 4
        for sl in _slices(xh, params, combine):
            x_s, k_s = xh[sl], None if keep is None else keep[sl]
            parts = _forward_parts(x_s, k_s, params, combine, normalize, eps, package_compat)
            g_o, g_ws = None if g_out is None else g_out[sl], None if g_w is None else g_w[sl]
            gx_s, gp_s = _backward(g_o, g_ws, x_s, k_s, params, parts, combine, normalize, package_compat, needs)
            g_x.append(gx_s)
            grads = [g if gs is None else (gs if g is None else g + gs) for g, gs in zip(grads, gp_s)]
        g_x = g_x[0] if len(g_x) == 1 else torch.cat(g_x)
        return (g_x if ctx.needs_input_grad[0] else None), None, *grads, None, None, None, None
