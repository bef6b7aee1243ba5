"""Fused kernels for the DAAM product path (no mask, even heads): how a call is routed.

* :mod:`densattn.kernels.product` — plain PyTorch ops in a custom autograd function with a hand-written backward;
  the reference every faster kernel is tested against, and the path under ``torch.compile``.
* :mod:`densattn.kernels.cpu` — a C++ kernel (``daam_cpu.cpp``) compiled on first use, for CPU tensors in
  float32, float64 or bfloat16; the PyTorch kernel when no compiler is present or ``DENSATTN_KERNEL=torch``.
* :mod:`densattn.kernels.cuda` — the PyTorch kernel's forward and backward compiled by ``torch.compile``
  (Triton) for CUDA tensors; the eager PyTorch kernel when compiling is impossible.

All three keep only ``x`` (and the parameters) for the backward and give exact double backward.
"""

from __future__ import annotations

import torch
from torch import Tensor

from densattn.kernels import cpu, cuda
from densattn.kernels.functions import CpuDensityGaussians, CpuDensityProduct, cpu_layout_ok
from densattn.kernels.product import DensityProduct

__all__ = ["density_product", "fused_product"]


def density_product(
    x: Tensor,
    prec: Tensor,
    center: Tensor,
    resid: Tensor,
    floor: Tensor | None,
    *,
    dim: int,
    softmax: bool,
    eps: float,
    divisor: int,
) -> tuple[Tensor, Tensor]:
    """``(y, a)`` of the product preset; ``x`` has the norm axis split into ``(heads, chunk)``, ``dim`` = chunk axis.

    ``prec``, ``center``, ``resid`` (and ``floor``, the log-normaliser floor of ``package_compat``, or None)
    broadcast against ``x`` with size 1 along ``dim``; ``divisor`` is ``c`` (population variance) or ``c - 1``.
    Returns ``y`` in ``x``'s dtype and ``a`` in float32 (float64 for float64 input).

    Example:
        >>> x = torch.randn(4, 2, 3, 16)  # (batch, heads, chunk, features): 6 layers in 2 heads of 3
        >>> ones, zeros = torch.ones(1, 2, 1, 16), torch.zeros(1, 2, 1, 16)
        >>> y, a = density_product(x, ones, zeros, zeros, None, dim=2, softmax=True, eps=1e-5, divisor=3)
        >>> bool(torch.allclose(a.sum(2), torch.ones(4, 2, 16)))
        True
    """
    args = (prec, center, resid, floor, dim, softmax, eps, divisor)
    if not torch.compiler.is_compiling():
        if x.device.type == "cpu" and x.dtype in cpu.SUFFIX and cpu_layout_ok(x, [prec, center, resid, floor], dim):
            if cpu.load() is not None:
                return CpuDensityProduct.apply(x, *args)
        if x.is_cuda and cuda.available():
            return cuda.density_product(x, *args)
    cdt = torch.promote_types(x.dtype, torch.float32)
    y, a = DensityProduct.apply(x.to(cdt), *args)
    return y.to(x.dtype), a


def fused_product(
    x: Tensor,
    delta: Tensor,
    s: Tensor,
    nd: int,
    pd: int | None,
    num_heads: int,
    c: int,
    normalize: str,
    eps: float,
    package_compat: bool,
    need_weights: bool = True,
) -> tuple[Tensor, Tensor | None]:
    """``density_attention``'s product path without a mask, in x's own layout (no transposes).

    ``delta`` and ``s`` are the offsets and variances ``s_k`` in the compute dtype, shaped ``(H, N, F|1)`` or
    ``(H, N)``; ``nd``/``pd`` the norm and parameter axes; ``c`` the head chunk size. The weights are None unless
    ``need_weights`` (the CPU kernel then never writes them out).
    """
    from densattn.functional import _package_floor, _product_params

    softmax = normalize == "softmax"
    divisor = c - 1 if package_compat and c > 1 else c
    with_floor = package_compat and softmax and eps > 0
    xu = x.unflatten(nd, (num_heads, c))  # (..., H, c, ...); the kernels take x in its own dtype
    if (
        not torch.compiler.is_compiling()
        and x.device.type == "cpu"
        and x.dtype in cpu.SUFFIX
        and (pd is None or pd > nd)
        and cpu.load() is not None
    ):  # one autograd node from the Gaussians' parameters to y
        d3, s3 = (delta, s) if pd is not None else (delta.unsqueeze(-1), s.unsqueeze(-1))
        param_axis = pd + 1 if pd is not None and d3.shape[-1] > 1 else None
        out = CpuDensityGaussians.apply(
            xu.contiguous(),
            d3.contiguous(),
            s3.contiguous(),
            nd + 1,
            param_axis,
            softmax,
            eps,
            divisor,
            with_floor,
            need_weights,
        )
        y, a = out if need_weights else (out, None)
        return y.flatten(nd, nd + 1), None if a is None else a.flatten(nd, nd + 1)
    if pd is not None:
        delta, s = delta.movedim(1, -1), s.movedim(1, -1)  # (H, F|1, N)
    params = list(_product_params(delta, s))  # (H, F|1) or (H,)
    floor = _package_floor(s, eps) if with_floor else None
    if floor is not None:
        params.append(floor)
    shape = [1] * (x.dim() + 1)
    shape[nd] = num_heads
    if pd is not None:
        pdu = pd if pd < nd else pd + 1  # param axis once the norm axis is split in two
        shape[pdu] = params[0].shape[1]
        if pdu < nd:
            params = [t.t() for t in params]
    params = [t.reshape(shape) for t in params]
    prec, center, resid = params[:3]
    y, a = density_product(
        xu,
        prec,
        center,
        resid,
        params[3] if floor is not None else None,
        dim=nd + 1,
        softmax=softmax,
        eps=eps,
        divisor=divisor,
    )
    return y.flatten(nd, nd + 1).to(x.dtype), a.flatten(nd, nd + 1) if need_weights else None
