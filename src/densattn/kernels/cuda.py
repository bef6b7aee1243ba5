"""The CUDA kernel: the PyTorch kernel's forward and backward compiled by ``torch.compile`` (Triton code).

Inductor fuses each pass into a few Triton kernels. The autograd function keeps ``x`` and the parameters only,
and the backward recomputes the statistics inside its compiled graph. When compiling is impossible (no Triton,
no compiler) the first call notes why (:func:`status`) and the eager PyTorch kernel is used from then on.
"""

from __future__ import annotations

import torch
from torch import Tensor

from densattn.kernels.product import DensityProduct, chunk_stats, product_backward, product_forward

_state: dict = {"status": "not used yet"}


def available() -> bool:
    """Whether compiled CUDA kernels are (still) believed usable."""
    return torch.cuda.is_available() and _state.get("failed") is None


def status() -> str:
    return _state["status"]


def _backward(grad_y, grad_a, x, prec, center, resid, floor, dim, softmax, eps, divisor, needs):
    stats = chunk_stats(x, dim, eps, divisor)
    return product_backward(
        grad_y, grad_a, x, stats, prec, center, resid, floor, dim=dim, softmax=softmax, divisor=divisor, needs=needs
    )


def _compiled(name: str, fn):
    if name not in _state:
        _state[name] = torch.compile(fn, dynamic=None)  # a new shape recompiles once as dynamic, not per shape
    return _state[name]


class CudaDensityProduct(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, prec, center, resid, floor, dim: int, softmax: bool, eps: float, divisor: int):
        fwd = _compiled("forward", product_forward)
        y, a = fwd(x, prec, center, resid, floor, dim=dim, softmax=softmax, eps=eps, divisor=divisor)
        ctx.save_for_backward(x, prec, center, resid, floor)
        ctx.options = (dim, softmax, eps, divisor)
        ctx.set_materialize_grads(False)  # an unused output gets None, not a tensor of zeros
        return y, a

    @staticmethod
    def backward(ctx, grad_y, grad_a):
        x, prec, center, resid, floor = ctx.saved_tensors
        dim, softmax, eps, divisor = ctx.options
        needs = tuple(ctx.needs_input_grad[1:5])
        fn = _backward if torch.is_grad_enabled() else _compiled("backward", _backward)  # eager under create_graph
        grads = fn(grad_y, grad_a, x, prec, center, resid, floor, dim, softmax, eps, divisor, needs)
        return (*grads, None, None, None, None)


def density_product(x: Tensor, prec, center, resid, floor, dim, softmax, eps, divisor) -> tuple[Tensor, Tensor]:
    """``(y, a)`` on CUDA; ``y`` in ``x``'s dtype, ``a`` in float32 (float64)."""
    cdt = torch.promote_types(x.dtype, torch.float32)
    xc = x.to(cdt)
    args = (prec, center, resid, floor, dim, softmax, eps, divisor)
    try:
        y, a = CudaDensityProduct.apply(xc, *args)
        _state["status"] = "compiled (torch.compile, Triton)"
    except Exception as err:  # noqa: BLE001 - any compiler failure: note it and stay eager from now on
        _state["failed"], _state["status"] = True, f"eager fallback ({type(err).__name__}: {err})"[:500]
        y, a = DensityProduct.apply(xc, *args)
    return y.to(x.dtype), a
