"""DAAM kernel speed and memory: gaussian-adaptive-attention 0.1.5, densattn, and a memory-traffic floor, one run.

Shapes (8 heads, 8 Gaussians each):
  paper:    x (32, 24, 1024), norm over the 24 layers
  sequence: x (8, 1024, 256), norm over the 1024 tokens
Columns:
  package         the package's MultiHeadGaussianAdaptiveAttention (spreads in [0.6, 1.2]: it does not underflow)
  densattn        that module converted by densattn.compat (same parameters, same outputs; preset mixture_of_densities)
  densattn paper  densattn's `paper` preset (1 Gaussian, scalar parameters, exp gate; no package counterpart)
  floor           the memory traffic the kernel cannot avoid, measured here at the same size and dtype:
                  forward  = read x twice, write y once (torch.add(x, x, out=y) and x.sum());
                  backward = the same again for (x, grad_y) -> grad_x; fwd+bwd = both.
  exp floor       the arithmetic the kernel cannot avoid: one exponential per item (torch.exp(x, out=y), torch's
                  own vectorised exp); fwd+bwd = two, since the backward recomputes the weights instead of keeping
                  them. Where x fits in cache (3 MiB at the paper shape) this, not memory traffic, bounds the kernel.
Times: torch.utils.benchmark timings in alternating rounds (package, densattn, paper, floor, package, ...), median
per column, so machine noise hits all of them alike; fwd+bwd is `y = m(x); y.backward(g)` with a ready upstream
gradient g. Peak extra memory: growth of the peak resident set (VmHWM, reset through /proc/self/clear_refs) over one
fwd+bwd beyond y and the gradients, in a fresh subprocess with glibc's mmap threshold at 64 KiB so that freed
tensors leave the resident set at once (Linux).

With --device cuda: the same on the GPU (peak extra memory from torch.cuda.max_memory_allocated), written to
daam_kernel_cuda.{json,md}.

Usage: python benchmarks/daam_kernel.py [--quick] [--device cpu|cuda]
Writes benchmarks/results/daam_kernel.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.utils.benchmark as tb

RESULTS = Path(__file__).parent / "results"
SHAPES = {"paper": (32, 24, 1024), "sequence": (8, 1024, 256)}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
IMPLS = ("package", "densattn", "densattn-paper", "floor", "exp-floor")


class MaskedMixture(torch.nn.Module):
    """The general path: the `mixture` preset (8 heads x 8 Gaussians) over the tokens of a padded batch."""

    def __init__(self, hand_written: bool, device: str):
        super().__init__()
        from densattn import DensityAdaptiveAttention

        self.hand_written = hand_written
        self.attn = DensityAdaptiveAttention(256, num_heads=8, num_gaussians=8, norm_dim=1, preset="mixture")
        self.attn.to(device)
        lengths = torch.tensor([1024 - 96 * i for i in range(8)], device=device)  # rows padded 0 to 672 tokens
        self.mask = torch.arange(1024, device=device) < lengths[:, None]

    def forward(self, x):
        import densattn.functional as functional

        functional.HAND_WRITTEN_BACKWARD = self.hand_written
        return self.attn(x, mask=self.mask)


GENERAL = ("general-hand", "general-reference")


def build(impl: str, device: str = "cpu"):
    torch.manual_seed(0)
    if impl in GENERAL:
        return MaskedMixture(impl == "general-hand", device)
    if impl == "densattn-paper":
        from densattn import DensityAdaptiveAttention

        return DensityAdaptiveAttention(None, num_heads=8, norm_dim=1, device=device)  # scalar parameters, exp gate
    from gaussian_adaptive_attention import MultiHeadGaussianAdaptiveAttention

    from densattn.compat import from_gaussian_adaptive_attention

    old = MultiHeadGaussianAdaptiveAttention(norm_axis=1, num_heads=8, num_gaussians=8)
    with torch.no_grad():  # spreads away from 0 so that the package does not underflow (same work either way)
        for head in old.attention_heads:
            head.c.uniform_(0.6, 1.2)
    old = old.to(device)
    return old if impl == "package" else from_gaussian_adaptive_attention(old)


class Floor:
    """The unavoidable traffic: read x twice and write y once (forward), the same for the backward."""

    def __init__(self, x: torch.Tensor):
        self.y, self.gx = torch.empty_like(x), torch.empty_like(x)

    def step(self, x, g, backward: bool):
        x = x.detach()
        torch.add(x, x, out=self.y)
        x.sum()
        if backward:
            torch.add(x, g, out=self.gx)
            g.sum()


class ExpFloor(Floor):
    """The unavoidable arithmetic: one exponential per item forward, one more in the backward."""

    def step(self, x, g, backward: bool):
        torch.exp(x.detach(), out=self.y)
        if backward:
            torch.exp(g, out=self.gx)


def step(module, x, g, backward: bool):
    if isinstance(module, Floor):  # (and ExpFloor)
        return module.step(x, g, backward)
    if not backward:
        with torch.no_grad():
            return module(x)
    y = module(x)
    y.backward(g)
    return y


def inputs(shape_name: str, dtype: torch.dtype, backward: bool, device: str = "cpu"):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(SHAPES[shape_name], generator=g).to(device, dtype).requires_grad_(backward)
    return x, torch.randn(SHAPES[shape_name], generator=g).to(device, dtype)


def time_interleaved(shape_name, dtype, backward: bool, rounds: int, device: str, impls=IMPLS) -> dict[str, float]:
    """Median seconds per call of each column, measured in alternating rounds."""
    timers = {}
    for impl in impls:
        x, g = inputs(shape_name, dtype, backward, device)
        module = {"floor": Floor, "exp-floor": ExpFloor}[impl](x) if "floor" in impl else build(impl, device)
        timers[impl] = tb.Timer(  # num_threads: the Timer's default of 1 would also make torch.compile recompile
            "step(m, x, g, b)",
            globals={"step": step, "m": module, "x": x, "g": g, "b": backward},
            num_threads=torch.get_num_threads(),
        )
    number = {impl: max(1, int(0.1 / max(t.timeit(2).median, 1e-5))) for impl, t in timers.items()}
    samples: dict[str, list[float]] = {impl: [] for impl in impls}
    for _ in range(rounds):
        for impl, timer in timers.items():
            samples[impl].append(timer.timeit(number[impl]).median)
    return {impl: statistics.median(v) for impl, v in samples.items()}


def _status_bytes(key: str) -> int:
    return int(re.search(rf"{key}:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1)) * 1024


def peak_memory_child(impl: str, shape_name: str, dtype_name: str) -> None:
    """Peak resident-set growth of one fwd+bwd beyond y and the gradients (bytes, printed as JSON)."""
    x, g = inputs(shape_name, DTYPES[dtype_name], True)
    module = build(impl)
    step(module, x, g, True)  # warm up lazy allocations (and the compiled kernel)
    x.grad = None
    for p in module.parameters():
        p.grad = None
    Path("/proc/self/clear_refs").write_text("5")
    before = _status_bytes("VmRSS")
    y = step(module, x, g, True)
    peak = _status_bytes("VmHWM") - before
    kept = y.numel() * y.element_size() + x.grad.numel() * x.grad.element_size()
    kept += sum(p.grad.numel() * p.grad.element_size() for p in module.parameters() if p.grad is not None)
    print(json.dumps({"extra_bytes": peak - kept}))


def peak_memory_cuda(impl: str, shape_name: str, dtype_name: str) -> float:
    x, g = inputs(shape_name, DTYPES[dtype_name], True, "cuda")
    module = build(impl, "cuda")
    step(module, x, g, True)
    x.grad = None
    for p in module.parameters():
        p.grad = None
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    y = step(module, x, g, True)
    torch.cuda.synchronize()
    kept = y.numel() * y.element_size() + x.grad.numel() * x.grad.element_size()
    kept += sum(p.grad.numel() * p.grad.element_size() for p in module.parameters() if p.grad is not None)
    return torch.cuda.max_memory_allocated() - before - kept


def peak_memory(impl: str, shape_name: str, dtype_name: str, device: str = "cpu") -> float:
    if device == "cuda":
        return peak_memory_cuda(impl, shape_name, dtype_name)
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    out = subprocess.run(
        [sys.executable, __file__, "--memory-child", impl, shape_name, dtype_name],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])["extra_bytes"]


def parity(shape_name: str, device: str) -> float:
    """Largest |y_package - y_densattn| in float32 (the two columns compute the same function)."""
    x, _ = inputs(shape_name, torch.float32, False, device)
    old = build("package", device)
    new = build("densattn", device)
    with torch.no_grad():
        return float((old(x) - new(x)).abs().max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer timing rounds")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where to run (default cpu)")
    parser.add_argument("--memory-child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        peak_memory_child(*args.memory_child)
        return
    from densattn.kernels import cpu, cuda

    device = args.device
    start, load_before = time.time(), os.getloadavg()
    rounds = 3 if args.quick else 7
    rows = []
    for shape_name in SHAPES:
        input_mib = torch.Size(SHAPES[shape_name]).numel() * 4 / 2**20
        max_diff = parity(shape_name, device)
        for dtype_name, dtype in DTYPES.items():
            for backward in (False, True):
                times = time_interleaved(shape_name, dtype, backward, rounds, device)
                row = {"shape": shape_name, "x": list(SHAPES[shape_name]), "dtype": dtype_name}
                row["pass"] = "fwd+bwd" if backward else "fwd"
                row.update({f"{impl}_ms": 1e3 * t for impl, t in times.items()})
                row["speedup_vs_package"] = times["package"] / times["densattn"]
                row["densattn_over_floor"] = times["densattn"] / times["floor"]
                row["densattn_over_exp_floor"] = times["densattn"] / times["exp-floor"]
                row["max_abs_diff_vs_package_float32"] = max_diff
                if backward:
                    size = input_mib * (0.5 if dtype == torch.bfloat16 else 1.0)
                    row["input_mib"] = size
                    for impl in ("package", "densattn", "densattn-paper"):
                        row[f"{impl}_extra_mib"] = peak_memory(impl, shape_name, dtype_name, device) / 2**20
                rows.append(row)
                print(json.dumps(row), flush=True)
    general = []  # masks and the mixture preset: the hand-written backward against autograd through every op
    for backward in (False, True):
        times = time_interleaved("sequence", torch.float32, backward, rounds, device, GENERAL)
        row = {"pass": "fwd+bwd" if backward else "fwd", **{f"{k}_ms": 1e3 * v for k, v in times.items()}}
        if backward:
            for impl in GENERAL:
                row[f"{impl}_extra_mib"] = peak_memory(impl, "sequence", "float32", device) / 2**20
        general.append(row)
        print(json.dumps(row), flush=True)
    meta = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "rounds": rounds,
        "device": torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "cpu",
        "kernel": cpu.status() if device == "cpu" else cuda.status(),
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
        "seconds": time.time() - start,
    }
    RESULTS.mkdir(exist_ok=True)
    name = "daam_kernel" if device == "cpu" else "daam_kernel_cuda"
    (RESULTS / f"{name}.json").write_text(json.dumps({"meta": meta, "rows": rows, "general": general}, indent=2) + "\n")
    lines = [
        f"Load average {meta['loadavg_before'][0]:.1f} before / {meta['loadavg_after'][0]:.1f} after on "
        f"{meta['cpu_count']} cores, {meta['threads']} torch threads, torch {meta['torch']}, device {meta['device']}. "
        "Times in ms (median).",
        "",
        "| shape | dtype | pass | package 0.1.5 | densattn (converted) | speed-up | floor | densattn / floor "
        "| exp floor | densattn / exp floor | densattn `paper` | extra MiB: package / densattn / paper (input MiB) |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        mem = ""
        if "input_mib" in r:
            mem = (
                f"{r['package_extra_mib']:.1f} / {r['densattn_extra_mib']:.1f} / {r['densattn-paper_extra_mib']:.1f}"
                f" ({r['input_mib']:.0f})"
            )
        lines.append(
            f"| {r['shape']} {tuple(r['x'])} | {r['dtype']} | {r['pass']} | {r['package_ms']:.1f} "
            f"| {r['densattn_ms']:.2f} | {r['speedup_vs_package']:.1f}× | {r['floor_ms']:.2f} "
            f"| {r['densattn_over_floor']:.1f}× | {r['exp-floor_ms']:.2f} | {r['densattn_over_exp_floor']:.1f}× "
            f"| {r['densattn-paper_ms']:.2f} | {mem} |"
        )
    lines += [
        "",
        "General path (a mask or the `mixture` preset): `mixture`, 8 heads x 8 Gaussians, x (8, 1024, 256) float32 "
        "with 0-672 padded tokens per row; the hand-written backward against autograd through every op "
        "(`densattn.functional.HAND_WRITTEN_BACKWARD = False`).",
        "",
        "| pass | hand-written ms | autograd ms | extra MiB: hand-written / autograd (input 8 MiB) |",
        "|---|---:|---:|---|",
    ]
    for r in general:
        mem = (
            f"{r['general-hand_extra_mib']:.0f} / {r['general-reference_extra_mib']:.0f}"
            if "general-hand_extra_mib" in r
            else ""
        )
        lines.append(f"| {r['pass']} | {r['general-hand_ms']:.1f} | {r['general-reference_ms']:.1f} | {mem} |")
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
