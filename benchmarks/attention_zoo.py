"""Every token mixer side by side: time and peak memory vs sequence length.

Each ``list_attention(kind="token_mixer")`` entry, built with ``create_attention(name, embed_dim=256, num_heads=4)``
and its default options (clustered: 100 clusters; improved: top-32 keys), runs on ``x (1, L, 256)`` for
L in {256, 1024, 4096, 16384}: forward (under ``torch.no_grad``) and forward + backward (``y.sum().backward()``
through the input and the parameters).

Time: median of a few ``time.perf_counter`` calls after one profiled warm-up call (3 repeats when a call takes
under a second, else 1). Peak memory: the peak of live tensor memory allocated during the warm-up call (inputs
and parameters excluded), from torch.profiler's memory timeline (``profile_memory=True``).

Budget: a case is skipped, and the table says so, when its forward + backward time extrapolated from the previous
length (at the slope of the last two lengths, or quadratically) exceeds ``--budget`` seconds, or when the mixer
materialises ``(B, H, L, L)`` float32 maps larger than ``--max-map-gib``.

Usage: flock /tmp/bench.lock python benchmarks/attention_zoo.py [--quick]
Writes benchmarks/results/attention_zoo.{json,md,png} (--quick: a smoke test into the temp folder).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from densattn.attention.registry import create_attention, list_attention

RESULTS = Path(__file__).parent / "results"
DIM, HEADS = 256, 4
SEEDED = {"clustered", "improved_clustered"}
#: mixers that hold (B, H, L, L) score maps on their default path (the others use SDPA or O(L) memory)
MATERIALISES_MAPS = {"pb_relax": 2}


def build(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    options = {"seed": 0} if name in SEEDED else {}
    return create_attention(name, embed_dim=DIM, num_heads=HEADS, **options)


def call(mixer: torch.nn.Module, x: torch.Tensor, backward: bool) -> None:
    if backward:
        mixer(x).sum().backward()
        x.grad = None
        mixer.zero_grad(set_to_none=True)
    else:
        with torch.no_grad():
            mixer(x)


def peak_and_time(mixer: torch.nn.Module, x: torch.Tensor, backward: bool) -> tuple[int, float]:
    """One call under the profiler: peak live tensor bytes allocated during it, and its wall time."""
    from torch.profiler._memory_profiler import MemoryProfileTimeline

    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as prof:
        call(mixer, x, backward)
    elapsed = time.perf_counter() - start
    _, sizes = MemoryProfileTimeline(prof._memory_profile())._coalesce_timeline(torch.device("cpu"))
    return (int(max(sum(row) for row in sizes)) if sizes else 0), elapsed


def measure(name: str, length: int, backward: bool) -> dict:
    mixer = build(name)
    x = torch.randn(1, length, DIM, generator=torch.Generator().manual_seed(length), requires_grad=backward)
    peak, first = peak_and_time(mixer, x, backward)
    repeats = 3 if first < 1.0 else 1
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call(mixer, x, backward)
        times.append(time.perf_counter() - start)
    return {"time_s": statistics.median(times), "repeats": repeats, "peak_bytes": peak}


def predicted(history: list[tuple[int, float]], length: int) -> float:
    """Extrapolate the time to ``length`` at the slope (log-log) of the last two points, at least linear."""
    (l1, t1), (l0, t0) = history[-1], (history[-2] if len(history) > 1 else (history[-1][0] / 2, None))
    slope = 2.0 if t0 is None else max(1.0, math.log(t1 / t0) / math.log(l1 / l0))
    return t1 * (length / l1) ** slope


def run(lengths: list[int], budget: float, max_map_gib: float) -> dict:
    rows = {}
    for name in list_attention(kind="token_mixer"):
        history: list[tuple[int, float]] = []
        for length in lengths:
            maps = MATERIALISES_MAPS.get(name, 0) * HEADS * length * length * 4 / 2**30
            skip = None
            if maps > max_map_gib:
                skip = f"its {maps:.1f} GiB of score maps exceed --max-map-gib {max_map_gib:g}"
            elif history and predicted(history, length) > budget:
                skip = f"fwd+bwd predicted {predicted(history, length):.0f} s > budget {budget:g} s"
            if skip:
                rows[f"{name}@{length}"] = {"mixer": name, "length": length, "skipped": skip}
                print(name, length, "skipped:", skip, flush=True)
                continue
            row = {"mixer": name, "length": length}
            for backward, key in ((False, "fwd"), (True, "fwd_bwd")):
                result = measure(name, length, backward)
                row.update({f"{key}_{k}": v for k, v in result.items()})
            history.append((length, row["fwd_bwd_time_s"]))
            rows[f"{name}@{length}"] = row
            print(
                name, length, f"fwd {row['fwd_time_s']:.3f}s fwd+bwd {row['fwd_bwd_time_s']:.3f}s",
                f"peak {row['fwd_peak_bytes'] / 2**20:.0f}/{row['fwd_bwd_peak_bytes'] / 2**20:.0f} MiB", flush=True,
            )  # fmt: skip
    return rows


def write_markdown(result: dict) -> str:
    mib = 2**20
    lines = [
        "## Attention zoo: every token mixer, time and peak memory vs L",
        "",
        f"x (1, L, {DIM}), {HEADS} heads, float32, default options, CPU, {result['threads']} thread(s); load average "
        f"before / after {result['load_before']} / {result['load_after']} (a shared 2-core machine: times are "
        "indicative). Time: median seconds of 1–3 calls; memory: peak live tensor MiB of one call (torch.profiler).",
        "",
        "| mixer | L | fwd s | fwd+bwd s | fwd MiB | fwd+bwd MiB |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in result["rows"].values():
        if "skipped" in row:
            lines.append(f"| {row['mixer']} | {row['length']} | skipped: {row['skipped']} | | | |")
            continue
        lines.append(
            f"| {row['mixer']} | {row['length']} | {row['fwd_time_s']:.3f} | {row['fwd_bwd_time_s']:.3f} | "
            f"{row['fwd_peak_bytes'] / mib:.1f} | {row['fwd_bwd_peak_bytes'] / mib:.1f} |"
        )
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(12, 4.5))
    for i, name in enumerate(sorted({r["mixer"] for r in result["rows"].values()})):
        rows = [r for r in result["rows"].values() if r["mixer"] == name and "skipped" not in r]
        if not rows:
            continue
        lengths = [r["length"] for r in rows]
        color = f"C{i}"
        ax_t.plot(lengths, [r["fwd_time_s"] for r in rows], "-o", color=color, label=f"{name}")
        ax_t.plot(lengths, [r["fwd_bwd_time_s"] for r in rows], "--", color=color)
        ax_m.plot(lengths, [r["fwd_peak_bytes"] / 2**20 for r in rows], "-o", color=color, label=name)
        ax_m.plot(lengths, [r["fwd_bwd_peak_bytes"] / 2**20 for r in rows], "--", color=color)
    for ax, label in ((ax_t, "seconds (solid fwd, dashed fwd+bwd)"), (ax_m, "peak MiB (solid fwd, dashed fwd+bwd)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length L")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
    ax_t.legend(fontsize=7)
    fig.suptitle(f"token mixers, D={DIM}, {HEADS} heads, CPU {result['threads']} thread(s)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="L in {64, 128}: a smoke test into the temp folder")
    parser.add_argument("--lengths", type=int, nargs="+", default=[256, 1024, 4096, 16384])
    parser.add_argument("--budget", type=float, default=12.0, help="skip a case predicted slower (s, fwd+bwd)")
    parser.add_argument("--max-map-gib", type=float, default=1.0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    lengths = [64, 128] if args.quick else args.lengths
    load_before = [round(x, 2) for x in os.getloadavg()]
    start = time.perf_counter()
    rows = run(lengths, args.budget, args.max_map_gib)
    result = {
        "args": vars(args),
        "dim": DIM,
        "heads": HEADS,
        "threads": args.threads,
        "load_before": load_before,
        "load_after": [round(x, 2) for x in os.getloadavg()],
        "total_seconds": round(time.perf_counter() - start, 1),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "rows": rows,
    }
    out = Path(tempfile.gettempdir()) if args.quick else RESULTS
    out.mkdir(parents=True, exist_ok=True)
    (out / "attention_zoo.json").write_text(json.dumps(result, indent=1))
    markdown = write_markdown(result)
    (out / "attention_zoo.md").write_text(markdown)
    plot(result, out / "attention_zoo.png")
    print(markdown)


if __name__ == "__main__":
    main()
