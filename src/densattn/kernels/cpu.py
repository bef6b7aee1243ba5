"""The CPU kernel: ``daam_cpu.cpp`` compiled on first use with the system C++ compiler, called through ctypes.

The source needs no PyTorch headers, so it builds in a few seconds (``torch.utils.cpp_extension`` would take a
minute or more to compile against them). The shared library goes to a cache directory
(``$DENSATTN_KERNEL_CACHE``, else ``~/.cache/densattn/kernels``), named by a hash of the source, the flags, the
compiler and the CPU model, and is written atomically (several test workers may build at once). When no compiler
is found or the build fails, :func:`load` returns None and callers use the PyTorch kernel
(:mod:`densattn.kernels.product`); :func:`status` says why.

Both passes recompute the per-chunk statistics from ``x`` inside a cached block, so the autograd function keeps
nothing but ``x`` and the (small) parameters between forward and backward.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch
from torch import Tensor

SOURCE = Path(__file__).with_name("daam_cpu.cpp")
FLAGS = ["-O3", "-std=c++17", "-fPIC", "-shared", "-fopenmp", "-fno-math-errno", "-fno-trapping-math"]
SUFFIX = {torch.float32: "f32", torch.float64: "f64", torch.bfloat16: "bf16"}

_state: dict = {}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "flags")):
                return line
    except OSError:
        pass
    return ""


def _cache_dir() -> Path:
    root = os.environ.get("DENSATTN_KERNEL_CACHE") or Path.home() / ".cache" / "densattn" / "kernels"
    return Path(root)


def _build() -> Path:
    compiler = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")
    if not compiler:
        raise RuntimeError("no C++ compiler found (set CXX or install g++)")
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True).stdout.splitlines()[:1]
    text = SOURCE.read_bytes()
    errors = []
    for extra in (["-march=native"], []):
        flags = FLAGS + extra
        key = hashlib.sha256(text + repr((flags, version, _cpu_model())).encode()).hexdigest()[:16]
        path = _cache_dir() / f"daam_cpu_{key}.so"
        if path.exists():
            return path
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=path.parent)
        os.close(fd)
        done = subprocess.run([compiler, *flags, str(SOURCE), "-o", tmp], capture_output=True, text=True)
        if done.returncode == 0:
            os.replace(tmp, path)  # atomic: a concurrent builder finds either nothing or a complete library
            return path
        os.unlink(tmp)
        errors.append(done.stderr.strip()[-500:])
    raise RuntimeError("compiling daam_cpu.cpp failed: " + " | ".join(errors))


def load() -> ctypes.CDLL | None:
    """The compiled library, building it on first use; None when that is impossible or disabled.

    ``DENSATTN_KERNEL=torch`` disables it (the PyTorch kernel is then used everywhere).
    """
    if "lib" not in _state:
        _state["lib"], _state["status"] = None, "disabled by DENSATTN_KERNEL=torch"
        if os.environ.get("DENSATTN_KERNEL", "").lower() != "torch":
            try:
                path = _build()
                lib = ctypes.CDLL(str(path))
                p, n, i, d = ctypes.c_void_p, ctypes.c_long, ctypes.c_int, ctypes.c_double
                for name in SUFFIX.values():
                    fwd, bwd = getattr(lib, f"daam_forward_{name}"), getattr(lib, f"daam_backward_{name}")
                    fwd.restype = bwd.restype = None
                    fwd.argtypes = [p] * 7 + [n] * 6 + [i, d, d, i]
                    bwd.argtypes = [p] * 12 + [n] * 6 + [i, d, d, i]
                for name in ("f32", "f64"):
                    prm, prm_bwd = getattr(lib, f"daam_params_{name}"), getattr(lib, f"daam_params_backward_{name}")
                    prm.restype = prm_bwd.restype = None
                    prm.argtypes = [p, p, n, n, n, d, i, p, p, p, p]
                    prm_bwd.argtypes = [p] * 8 + [n] * 3 + [p, p]
                _state["lib"], _state["status"] = lib, f"compiled: {path}"
            except (OSError, RuntimeError, subprocess.SubprocessError) as err:
                _state["status"] = f"unavailable ({err})"
    return _state["lib"]


def status() -> str:
    """How the CPU kernel stands: where it was compiled to, or why it is not used."""
    load()
    return _state["status"]


def _ptr(t: Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _dims(shape: tuple[int, ...], dim: int) -> tuple[int, int, int, int]:
    outer = 1
    for n in shape[: dim - 1]:
        outer *= n
    inner = 1
    for n in shape[dim + 1 :]:
        inner *= n
    return outer, shape[dim - 1], shape[dim], inner


def _threads() -> int:
    return max(1, torch.get_num_threads())


def forward(
    lib,
    x: Tensor,
    params: list[Tensor | None],
    dim: int,
    softmax: bool,
    eps: float,
    divisor: int,
    *,
    pdiv: int = 1,
    need_weights: bool = True,
) -> tuple[Tensor, Tensor | None]:
    """``(y, a)``; ``x`` contiguous, ``params`` = ``[P, C, R, F or None]`` contiguous ``(H, Fp)`` arrays.

    Column ``i`` of the flattened axes after ``dim`` uses parameter ``(i // pdiv) % Fp``. ``a`` is None unless
    ``need_weights`` (the kernel then keeps the weights in a per-block scratch and never writes them out).
    """
    cdt = torch.float64 if x.dtype == torch.float64 else torch.float32
    y = torch.empty_like(x)
    a = torch.empty(x.shape, dtype=cdt) if need_weights else None
    outer, heads, c, inner = _dims(tuple(x.shape), dim)
    getattr(lib, f"daam_forward_{SUFFIX[x.dtype]}")(
        _ptr(x), _ptr(y), _ptr(a), *map(_ptr, params), outer, heads, c, inner, params[0].shape[-1], pdiv,
        int(softmax), eps, divisor, _threads(),
    )  # fmt: skip
    return y, a


def backward(lib, x, grad_y, grad_a, params, dim: int, softmax: bool, eps: float, divisor: int, *, pdiv: int = 1):
    """``(g_x, g_P, g_C, g_R, g_F)``, the parameter gradients as ``(H, Fp)`` arrays (``g_F`` None without F)."""
    outer, heads, c, inner = _dims(tuple(x.shape), dim)
    cdt = params[0].dtype
    fp = params[0].shape[-1]
    grads = [torch.zeros(heads, fp, dtype=cdt) for _ in range(3)]
    grads.append(torch.zeros(heads, fp, dtype=cdt) if params[3] is not None else None)
    g_x = torch.empty_like(x)
    getattr(lib, f"daam_backward_{SUFFIX[x.dtype]}")(
        _ptr(x), _ptr(grad_y), _ptr(grad_a), *map(_ptr, params), _ptr(g_x), *map(_ptr, grads),
        outer, heads, c, inner, fp, pdiv, int(softmax), eps, divisor, _threads(),
    )  # fmt: skip
    return (g_x, *grads)


def gaussian_params(lib, delta: Tensor, s: Tensor, log_eps: float | None) -> list[Tensor | None]:
    """``[P, C, R, F]`` as ``(H, Fp)`` arrays from offsets and variances ``(H, G, Fp)`` (float32 or float64).

    ``sum_k (z - delta_k)^2 / s_k = P (z - C)^2 + R``; ``F = log_eps + sum_k log(2 pi s_k) / 2``, None when
    ``log_eps`` is None. The same formulas as :func:`densattn.functional._product_params` and ``_package_floor``.
    """
    heads, gaussians, fp = delta.shape
    out = torch.empty(4, heads, fp, dtype=delta.dtype)
    name = "f64" if delta.dtype == torch.float64 else "f32"
    floor = log_eps is not None
    getattr(lib, f"daam_params_{name}")(
        _ptr(delta), _ptr(s), heads, gaussians, fp, log_eps if floor else 0.0, int(floor), *(_ptr(t) for t in out)
    )
    return [out[0], out[1], out[2], out[3] if floor else None]


def gaussian_params_backward(lib, delta, s, params, grads) -> tuple[Tensor, Tensor]:
    """Gradients of the offsets and variances ``(H, G, Fp)`` from those of ``[P, C, R, F]`` (``g_F`` may be None)."""
    heads, gaussians, fp = delta.shape
    g_delta, g_s = torch.empty_like(delta), torch.empty_like(s)
    name = "f64" if delta.dtype == torch.float64 else "f32"
    prec, center = params[0], params[1]
    getattr(lib, f"daam_params_backward_{name}")(
        _ptr(delta), _ptr(s), _ptr(center), _ptr(prec), *map(_ptr, grads), heads, gaussians, fp, _ptr(g_delta),
        _ptr(g_s),
    )  # fmt: skip
    return g_delta, g_s
