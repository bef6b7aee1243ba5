"""DAAM kernel speed and memory: densattn vs gaussian-adaptive-attention 0.1.5.

Shapes:
  paper:    x (32, 24, 1024), norm over the 24 layers, 8 heads, 8 Gaussians (mixture_of_densities)
  sequence: x (8, 1024, 256), norm over the 1024 tokens, 8 heads, 8 Gaussians
"densattn" is the package's module converted with densattn.compat (same parameters, same outputs);
"densattn paper" is densattn's `paper` preset (1 Gaussian, per-feature parameters), which has no package
counterpart. Times: torch.utils.benchmark timings taken in alternating rounds (package, densattn, densattn paper,
package, ...), median per implementation, so machine noise hits all of them alike. Peak memory: growth of the peak
resident set (VmHWM, reset through /proc/self/clear_refs) over one call, in a fresh subprocess per case (Linux).

Usage: python benchmarks/daam_kernel.py [--quick]
Writes benchmarks/results/daam_kernel.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import statistics
import subprocess
import sys
from pathlib import Path

import torch
import torch.utils.benchmark as tb

RESULTS = Path(__file__).parent / "results"
SHAPES = {"paper": ((32, 24, 1024), 1), "sequence": ((8, 1024, 256), 1)}
IMPLS = ("package", "densattn", "densattn-paper")


def build(impl: str, shape_name: str):
    shape, axis = SHAPES[shape_name]
    torch.manual_seed(0)
    if impl == "densattn-paper":
        from densattn import DensityAdaptiveAttention

        return DensityAdaptiveAttention(shape[-1], num_heads=8, norm_dim=axis), shape
    from gaussian_adaptive_attention import MultiHeadGaussianAdaptiveAttention

    from densattn.compat import from_gaussian_adaptive_attention

    old = MultiHeadGaussianAdaptiveAttention(norm_axis=axis, num_heads=8, num_gaussians=8)
    with torch.no_grad():  # spreads away from 0 so that the package does not underflow (same work either way)
        for head in old.attention_heads:
            head.c.uniform_(0.6, 1.2)
    if impl == "package":
        return old, shape
    return from_gaussian_adaptive_attention(old), shape


def step(module, x, backward: bool):
    y = module(x)
    if backward:
        y.sum().backward()
    return y


def time_interleaved(shape_name: str, backward: bool, rounds: int) -> dict[str, float]:
    """Median seconds per call of each implementation, measured in alternating rounds."""
    timers = {}
    for impl in IMPLS:
        module, shape = build(impl, shape_name)
        x = torch.randn(shape, requires_grad=backward)
        timers[impl] = tb.Timer(
            "step(module, x, backward)",
            globals={"step": step, "module": module, "x": x, "backward": backward},
        )
    number = {impl: max(1, int(0.2 / max(t.timeit(2).median, 1e-4))) for impl, t in timers.items()}
    samples: dict[str, list[float]] = {impl: [] for impl in IMPLS}
    for _ in range(rounds):
        for impl, timer in timers.items():
            samples[impl].append(timer.timeit(number[impl]).median)
    return {impl: statistics.median(v) for impl, v in samples.items()}


def _status_mib(key: str) -> float:
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"{key}:\s+(\d+) kB", text).group(1)) / 1024


def peak_memory_child(impl: str, shape_name: str, backward: bool) -> None:
    """Peak resident-set growth of one call: reset the high-water mark, run, read VmHWM."""
    module, shape = build(impl, shape_name)
    x = torch.randn(shape, requires_grad=backward)
    step(module, x, backward)  # warm up lazy allocations
    x.grad = None
    for p in module.parameters():
        p.grad = None
    Path("/proc/self/clear_refs").write_text("5")
    before = _status_mib("VmRSS")
    step(module, x, backward)
    print(json.dumps({"peak_mib": _status_mib("VmHWM") - before}))


def peak_memory(impl: str, shape_name: str, backward: bool) -> float:
    out = subprocess.run(
        [sys.executable, __file__, "--memory-child", impl, shape_name, str(int(backward))],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_mib"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer timing rounds")
    parser.add_argument("--memory-child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        impl, shape_name, backward = args.memory_child
        peak_memory_child(impl, shape_name, bool(int(backward)))
        return
    rounds = 5 if args.quick else 15
    rows = []
    for shape_name in SHAPES:
        for backward in (False, True):
            row = {
                "shape": shape_name,
                "x": list(SHAPES[shape_name][0]),
                "pass": "fwd+bwd" if backward else "fwd",
            }
            times = time_interleaved(shape_name, backward, rounds)
            for impl in IMPLS:
                row[f"{impl}_ms"] = 1e3 * times[impl]
                row[f"{impl}_peak_mib"] = peak_memory(impl, shape_name, backward)
            row["speedup"] = row["package_ms"] / row["densattn_ms"]
            rows.append(row)
            print(json.dumps(row), flush=True)
    meta = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "rounds": rounds,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "daam_kernel.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    lines = [
        "| shape | pass | package 0.1.5 (ms) | densattn, converted module (ms) | speed-up | package peak (MiB) "
        "| densattn peak (MiB) | densattn `paper` preset (ms / MiB) |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['shape']} {tuple(r['x'])} | {r['pass']} | {r['package_ms']:.1f} | {r['densattn_ms']:.1f} "
            f"| {r['speedup']:.1f}× | {r['package_peak_mib']:.0f} | {r['densattn_peak_mib']:.0f} "
            f"| {r['densattn-paper_ms']:.1f} / {r['densattn-paper_peak_mib']:.0f} |"
        )
    (RESULTS / "daam_kernel.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
