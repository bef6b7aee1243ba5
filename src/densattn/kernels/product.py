"""Fused product-of-Gaussians DAAM kernel in plain PyTorch ops (the reference for the compiled kernels).

A custom autograd function whose forward saves only ``x``, the parameters and four per-chunk statistics, and
whose backward is written for the whole computation (no autograd graph over intermediates). It works in the
input's own layout: the norm axis is split in place into ``(heads, chunk)`` and ``dim`` is the chunk axis.

Forward, per chunk of ``c`` items, with ``P, C, R`` the precision, centre and residual of the product of the
Gaussians (:func:`densattn.functional.density_attention`) and ``div = c - correction``::

    s  = max|x|;  m = mean(x / s);  e = x / s - m                   # scaled deviations, |e| <= 2
    r  = (s^2 sum(e^2) / div + eps)^(-1/2)                          # 1 / sigma, evaluated without overflow
    u  = e (s r) - C r;  L = -(P u^2 + R r^2) / 2
    a  = exp(L)                                                     # normalize="none"
       | exp(L - max(lse(L), F)),  lse = logsumexp over the chunk   # "softmax" (F = -inf) or the package's floor
    y  = x a

Backward (``g_a = g_y x + g_weights``; ``S = sum(a g_a)``; ``act = [lse >= F]``)::

    g_L = a g_a - act a S;   g_F = -(1 - act) S
    g_u = -P u g_L;          g_P = -u^2 g_L / 2;   g_R = -r^2 g_L / 2;   g_C = -r g_u
    q   = sum(g_u u) - R r^2 sum(g_L)                                   # = r dLoss/dr
    t   = r (g_u - q (r d) / div),  r d = e (s r)
    g_x = t - mean(t) + g_y a

Under ``create_graph=True`` the same backward runs on statistics recomputed from ``x`` with autograd on, so the
backward is itself differentiable (double backward, ``gradgradcheck``).
"""

from __future__ import annotations

import torch
from torch import Tensor

#: floor on sigma^2 (in units of the chunk's scale): keeps 1/sigma finite when eps = 0 and a chunk is constant
VAR_FLOOR = 1e-30
#: log-density floor: exp never sees -inf, so a row never turns into NaN
LOGIT_FLOOR = -1e30


def chunk_stats(x: Tensor, dim: int, eps: float, divisor: int) -> tuple[Tensor, Tensor, Tensor]:
    """Scale ``s``, scaled mean ``m`` and ``r = 1/sigma`` per chunk (size 1 along ``dim``); overflow-safe."""
    s = x.detach().abs().amax(dim, keepdim=True)
    s = torch.where(s > 0, s, torch.ones_like(s))
    xs = x / s
    m = xs.mean(dim, keepdim=True)
    e = xs - m
    var_s = (e * e).sum(dim, keepdim=True) / divisor  # var / s^2
    # sigma^2 = s^2 var_s + eps: for s >= 1 as s^2 (var_s + eps / s^2), else directly; both branches stay finite
    big, small = s.clamp_min(1.0), s.clamp_max(1.0)
    r_big = torch.rsqrt((var_s + eps / (big * big)).clamp_min(VAR_FLOOR)) / big
    r_small = torch.rsqrt((small * small * var_s + eps).clamp_min(VAR_FLOOR))
    return s, m, torch.where(s >= 1.0, r_big, r_small)


def _logits(x: Tensor, s: Tensor, m: Tensor, r: Tensor, prec: Tensor, center: Tensor, resid: Tensor):
    e = x / s - m
    rd = e * (s * r)  # (x - mean) / sigma
    u = rd - center * r
    logits = (-0.5 * (prec * u * u + resid * r * r)).clamp_min(LOGIT_FLOOR)
    return rd, u, logits


def _normalise(logits: Tensor, dim: int, softmax: bool, floor: Tensor | None):
    """``(a, act)``: the weights and, with a floor, where ``lse(L) >= F`` (None otherwise)."""
    if not softmax:
        return logits.exp(), None
    top = logits.detach().amax(dim, keepdim=True)  # a shift that cancels; exact whatever the logits' magnitude
    p = (logits - top).exp()
    total = p.sum(dim, keepdim=True)
    if floor is None:
        return p / total, None
    log_total, limit = total.log(), floor - top  # compared in log space: exp(F - top) may overflow
    return p * torch.exp(-torch.maximum(log_total, limit)), log_total >= limit


def product_forward(x, prec, center, resid, floor, *, dim: int, softmax: bool, eps: float, divisor: int):
    """Differentiable forward ``(y, a)`` in plain ops (used by the autograd function and by torch.compile)."""
    s, m, r = chunk_stats(x, dim, eps, divisor)
    _, _, logits = _logits(x, s, m, r, prec, center, resid)
    a, _ = _normalise(logits, dim, softmax, floor)
    return x * a, a


def product_backward(grad_y, grad_a, x, stats, prec, center, resid, floor, *, dim, softmax, divisor, needs):
    """Gradients ``(x, prec, center, resid, floor)`` from the saved input and per-chunk statistics.

    ``stats`` is ``(s, m, r)``; ``needs`` says which parameter gradients to form (None for the others).
    """
    s, m, r = stats
    rd, u, logits = _logits(x, s, m, r, prec, center, resid)
    a, act = _normalise(logits, dim, softmax, floor)
    g_a = grad_y * x if grad_y is not None else torch.zeros_like(a)
    if grad_a is not None:
        g_a = g_a + grad_a
    g_l = a * g_a
    g_floor = None
    if softmax:
        total = g_l.sum(dim, keepdim=True)
        if act is None:
            g_l = g_l - a * total
        else:
            g_l = g_l - a * torch.where(act, total, torch.zeros_like(total))
            if needs[3]:
                g_floor = torch.where(act, torch.zeros_like(total), -total).sum_to_size(floor.shape)
    g_u = -prec * u * g_l
    q = (g_u * u).sum(dim, keepdim=True) - resid * r * r * g_l.sum(dim, keepdim=True)
    t = r * (g_u - q * rd / divisor)
    g_x = t - t.mean(dim, keepdim=True)
    if grad_y is not None:
        g_x = g_x + grad_y * a
    g_prec = (-0.5 * u * u * g_l).sum_to_size(prec.shape) if needs[0] else None
    g_center = (-r * g_u).sum_to_size(center.shape) if needs[1] else None
    g_resid = (-0.5 * r * r * g_l).sum_to_size(resid.shape) if needs[2] else None
    return g_x, g_prec, g_center, g_resid, g_floor


class DensityProduct(torch.autograd.Function):
    """``(y, a)`` of the product preset; saves ``x``, the parameters and ``(s, m, r)`` per chunk."""

    @staticmethod
    def forward(ctx, x, prec, center, resid, floor, dim: int, softmax: bool, eps: float, divisor: int):
        s, m, r = chunk_stats(x, dim, eps, divisor)
        _, _, logits = _logits(x, s, m, r, prec, center, resid)
        a, _ = _normalise(logits, dim, softmax, floor)
        ctx.save_for_backward(x, prec, center, resid, floor, s, m, r)
        ctx.options = (dim, softmax, eps, divisor)
        ctx.set_materialize_grads(False)  # an unused output gets None, not a tensor of zeros
        return x * a, a

    @staticmethod
    def backward(ctx, grad_y, grad_a):
        x, prec, center, resid, floor, *stats = ctx.saved_tensors
        dim, softmax, eps, divisor = ctx.options
        if torch.is_grad_enabled():  # create_graph: recompute the statistics so that they depend on x
            stats = chunk_stats(x, dim, eps, divisor)
        needs = ctx.needs_input_grad[1:5]
        grads = product_backward(
            grad_y, grad_a, x, stats, prec, center, resid, floor, dim=dim, softmax=softmax, divisor=divisor, needs=needs
        )
        return (*grads, None, None, None, None)
