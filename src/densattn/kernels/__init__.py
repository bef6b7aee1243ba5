"""Fused kernels for the DAAM product path (no mask, even heads): how a call is routed.

* :mod:`densattn.kernels.product` — plain PyTorch ops in a custom autograd function with a hand-written backward;
  the reference every faster kernel is tested against, and the path under ``torch.compile``.
"""

from __future__ import annotations

from torch import Tensor

from densattn.kernels.product import DensityProduct

__all__ = ["density_product"]


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
    """
    return DensityProduct.apply(x, prec, center, resid, floor, dim, softmax, eps, divisor)
