"""Autograd functions around the compiled kernels; their double backward runs the PyTorch formulas.

Each keeps ``x`` and the parameters for the backward, nothing else (the per-chunk statistics are recomputed).
Under ``create_graph=True`` the backward switches to :func:`densattn.kernels.product.product_backward` on
statistics recomputed with autograd on, so second derivatives are exact.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from densattn.kernels import cpu
from densattn.kernels.product import chunk_stats, product_backward


def cpu_layout_ok(x: Tensor, params: list[Tensor | None], dim: int) -> bool:
    """The CPU kernel takes parameters that vary along the heads and the axes after the chunk axis only."""
    return all(p is None or (all(n == 1 for n in p.shape[: dim - 1]) and p.shape[dim] == 1) for p in params)


def _flat(p: Tensor | None, x: Tensor, dim: int) -> Tensor | None:
    """A parameter broadcast to the kernel's contiguous ``(H, inner)`` layout."""
    if p is None:
        return None
    tail = (x.shape[dim - 1], 1, *x.shape[dim + 1 :])
    return p.reshape(p.shape[dim - 1 :]).expand(tail).reshape(x.shape[dim - 1], -1).contiguous()


def _unflat(g: Tensor, p: Tensor, x: Tensor, dim: int) -> Tensor:
    return g.reshape(x.shape[dim - 1], 1, *x.shape[dim + 1 :]).sum_to_size(p.shape[dim - 1 :]).reshape(p.shape)


def _differentiable_backward(ctx, grad_y, grad_a, x, params):
    dim, softmax, eps, divisor = ctx.options
    cdt = params[0].dtype
    xc = x.to(cdt)
    stats = chunk_stats(xc, dim, eps, divisor)
    grads = product_backward(
        None if grad_y is None else grad_y.to(cdt),
        grad_a,
        xc,
        stats,
        *params,
        dim=dim,
        softmax=softmax,
        divisor=divisor,
        needs=ctx.needs_input_grad[1:5],
    )
    return (grads[0].to(x.dtype), *grads[1:], None, None, None, None)


class CpuDensityProduct(torch.autograd.Function):
    """``(y, a)`` of the product preset by the compiled CPU kernel (``x`` float32, float64 or bfloat16)."""

    @staticmethod
    def forward(ctx, x, prec, center, resid, floor, dim: int, softmax: bool, eps: float, divisor: int):
        lib = cpu.load()
        flat = [_flat(p, x, dim) for p in (prec, center, resid, floor)]
        y, a = cpu.forward(lib, x.contiguous(), flat, dim, softmax, eps, divisor)
        ctx.save_for_backward(x, prec, center, resid, floor)
        ctx.options = (dim, softmax, eps, divisor)
        ctx.set_materialize_grads(False)  # an unused output gets None, not a tensor of zeros
        return y, a

    @staticmethod
    def backward(ctx, grad_y, grad_a):
        x, *params = ctx.saved_tensors
        if torch.is_grad_enabled():
            return _differentiable_backward(ctx, grad_y, grad_a, x, params)
        dim, softmax, eps, divisor = ctx.options
        flat = [_flat(p, x, dim) for p in params]
        gy = None if grad_y is None else grad_y.contiguous()
        ga = None if grad_a is None else grad_a.contiguous()
        g_x, *g_params = cpu.backward(cpu.load(), x.contiguous(), gy, ga, flat, dim, softmax, eps, divisor)
        out = [
            _unflat(g, p, x, dim) if (g is not None and need) else None
            for g, p, need in zip(g_params, params, ctx.needs_input_grad[1:5])
        ]
        return (g_x, *out, None, None, None, None)


def gaussian_params(delta: Tensor, s: Tensor, floor_eps: float | None) -> list[Tensor | None]:
    """PyTorch form of :func:`densattn.kernels.cpu.gaussian_params`: ``[P, C, R, F]`` (H, Fp) from (H, G, Fp).

    The general path's :func:`~densattn.functional._product_params` and ``_package_floor`` over the Gaussians' axis;
    ``F`` is None unless ``floor_eps`` (the package's eps) is given.
    """
    from densattn.functional import _package_floor, _product_params

    delta, s = delta.transpose(1, 2), s.transpose(1, 2)  # (H, Fp, G): the helpers sum over the last axis
    return [*_product_params(delta, s), None if floor_eps is None else _package_floor(s, floor_eps)]


def gaussian_params_backward(delta: Tensor, s: Tensor, params, grads) -> tuple[Tensor, Tensor]:
    """PyTorch form of the chain rule in ``daam_cpu.cpp``'s ``params_backward`` (differentiable; double backward).

    ``dP/ds_k = -1/s_k^2``; ``dC/ddelta_k = 1/(s_k P)``, ``dC/ds_k = (C - delta_k)/(s_k^2 P)``;
    ``dR/ddelta_k = 2 (delta_k - C)/s_k``, ``dR/ds_k = -(delta_k - C)^2/s_k^2`` (``dR/dC = 0``: C is the
    precision-weighted mean); ``dF/ds_k = 1/(2 s_k)``.
    """
    prec, center = params[0].unsqueeze(1), params[1].unsqueeze(1)
    g_p, g_c, g_r = (g.unsqueeze(1) for g in grads[:3])
    inv = 1.0 / s
    e = delta - center
    g_delta = g_c * inv / prec + 2.0 * g_r * e * inv
    g_s = -(g_p + g_c * e / prec + g_r * e * e) * inv * inv
    if grads[3] is not None:
        g_s = g_s + 0.5 * grads[3].unsqueeze(1) * inv
    return g_delta, g_s


class CpuDensityGaussians(torch.autograd.Function):
    """``y`` (and ``a`` when ``need_weights``) of the product preset straight from the Gaussians' parameters.

    One autograd node for the whole call: the kernel forms ``P, C, R, F`` from ``delta, s`` (``(H, G, Fp)``)
    and chains their gradients back, so no PyTorch op (and no autograd node) touches the parameters in between.
    ``x`` is ``(..., H, c, ...)`` with the chunk axis ``dim``; ``param_axis`` is the axis after ``dim`` that the
    parameters run along (None: one value per head). Saves ``x``, ``delta``, ``s`` and the small ``P, C, R, F``.
    """

    @staticmethod
    def forward(ctx, x, delta, s, dim, param_axis, softmax, eps, divisor, with_floor, need_weights):
        lib = cpu.load()
        pdiv = 1
        for n in x.shape[param_axis + 1 :] if param_axis is not None else ():
            pdiv *= n
        params = cpu.gaussian_params(lib, delta, s, math.log(eps) if with_floor else None)
        y, a = cpu.forward(lib, x, params, dim, softmax, eps, divisor, pdiv=pdiv, need_weights=need_weights)
        ctx.save_for_backward(x, delta, s, *(p for p in params if p is not None))
        ctx.options = (dim, param_axis, pdiv, softmax, eps, divisor, with_floor, need_weights)
        ctx.set_materialize_grads(False)
        return (y, a) if need_weights else y

    @staticmethod
    def backward(ctx, grad_y, grad_a=None):
        x, delta, s, *params = ctx.saved_tensors
        dim, param_axis, pdiv, softmax, eps, divisor, with_floor, _ = ctx.options
        if len(params) == 3:
            params.append(None)
        if torch.is_grad_enabled():  # create_graph: the same formulas in differentiable PyTorch ops
            params = gaussian_params(delta, s, eps if with_floor else None)
            shape = [1] * x.dim()
            shape[dim - 1] = delta.shape[0]
            if param_axis is not None:
                shape[param_axis] = delta.shape[-1]
            cdt = delta.dtype
            xc = x.to(cdt)
            g_x, *g_params = product_backward(
                None if grad_y is None else grad_y.to(cdt),
                grad_a,
                xc,
                chunk_stats(xc, dim, eps, divisor),
                *(None if p is None else p.reshape(shape) for p in params),
                dim=dim,
                softmax=softmax,
                divisor=divisor,
                needs=(True, True, True, params[3] is not None),
            )
            g_params = [None if g is None else g.reshape(delta.shape[0], -1) for g in g_params]
            g_delta, g_s = gaussian_params_backward(delta, s, params, g_params)
            return g_x.to(x.dtype), g_delta, g_s, *([None] * 7)
        lib = cpu.load()
        gy = None if grad_y is None else grad_y.contiguous()
        ga = None if grad_a is None else grad_a.contiguous()
        g_x, *g_params = cpu.backward(lib, x, gy, ga, params, dim, softmax, eps, divisor, pdiv=pdiv)
        g_delta, g_s = cpu.gaussian_params_backward(lib, delta, s, params, g_params)
        return g_x, g_delta, g_s, *([None] * 7)
