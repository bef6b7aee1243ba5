"""Autograd functions around the compiled kernels; their double backward runs the PyTorch formulas.

Each keeps ``x`` and the parameters for the backward, nothing else (the per-chunk statistics are recomputed).
Under ``create_graph=True`` the backward switches to :func:`densattn.kernels.product.product_backward` on
statistics recomputed with autograd on, so second derivatives are exact.
"""

from __future__ import annotations

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
