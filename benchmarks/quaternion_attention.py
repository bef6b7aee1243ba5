"""Quaternion attention op: shared scores (arXiv 2605.24920) vs the Hamilton baseline (Tay et al. 2019).

The timed op is the attention itself: from projected q, k, v ``(B, L, E)`` in component-block layout to the
merged output ``(B, L, E)`` (head split, scores, softmax(es), weighted values, head merge); the four
QuaternionLinear projections are identical in both modes and left out. Shapes: batch 8, 4 heads,
L in {128, 256, 512, 1024}, embed_dim in {64, 256}; forward, and forward + backward.

Variants:
  shared              one score map, one softmax, ``F.scaled_dot_product_attention`` (the module's path)
  hamilton            four maps in one SDPA call (queries of the four maps stacked; the module's path)
  shared-explicit     the ``need_weights=True`` path: scores, softmax and map materialised
  hamilton-explicit   the same for the four Hamilton maps (how the baseline is usually written)

Times: medians of ``torch.utils.benchmark.Timer.blocked_autorange`` on one thread (the machine is shared).
Peak memory: the peak of live tensor memory allocated by the op (inputs excluded), from torch.profiler's
memory timeline (``profile_memory=True``; CPU allocator events), one call per case.

Layer level (``--layer``): a whole :class:`QuaternionTransformerEncoderLayer` (RMS norms, the four quaternion
projections, attention, the quaternion FFN with hidden 4E), shared vs Hamilton scores, forward under
``torch.no_grad``, batch 8, L in {128, 256, 512, 1024}, E in {64, 256}. The two layers share every weight
(one ``generator`` seed) and are timed side by side: each round times both, and the reported ratio is the median
over rounds of the within-round ratios (the machine is shared). Writes ``quaternion_layer.{json,md}``.

Usage: python benchmarks/quaternion_attention.py [--quick] [--threads N] [--layer]
Writes benchmarks/results/quaternion_attention.{json,md} (or quaternion_layer.{json,md} with --layer).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
from collections.abc import Callable
from pathlib import Path

import torch
import torch.utils.benchmark as tb
from torch.profiler import ProfilerActivity, profile

from densattn.attention.quaternion import (
    QuaternionTransformerEncoderLayer,
    hamilton_attention,
    shared_score_attention,
)

RESULTS = Path(__file__).parent / "results"
BATCH, HEADS = 8, 4
VARIANTS: dict[str, tuple[Callable, bool]] = {
    "shared": (shared_score_attention, False),
    "hamilton": (hamilton_attention, False),
    "shared-explicit": (shared_score_attention, True),
    "hamilton-explicit": (hamilton_attention, True),
}


def attention_op(variant: str) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    attend, explicit = VARIANTS[variant]

    def op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        B, L, E = q.shape
        d = E // (4 * HEADS)
        split = [t.view(B, L, 4, HEADS, d).permute(0, 3, 1, 2, 4) for t in (q, k, v)]  # (B, H, L, 4, d)
        out, _ = attend(*split, need_weights=explicit)
        return out.permute(0, 2, 3, 1, 4).reshape(B, L, E)  # (B, L, E)

    return op


def make_inputs(length: int, embed_dim: int, backward: bool) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randn(BATCH, length, embed_dim, generator=g, requires_grad=backward) for _ in range(3)]


def run_once(op: Callable, inputs: list[torch.Tensor], grad: torch.Tensor | None) -> None:
    out = op(*inputs)
    if grad is not None:
        out.backward(grad)
        for t in inputs:
            t.grad = None


def time_case(variant: str, length: int, embed_dim: int, backward: bool, min_run_time: float) -> float:
    op = attention_op(variant)
    inputs = make_inputs(length, embed_dim, backward)
    grad = torch.ones(BATCH, length, embed_dim) if backward else None
    run_once(op, inputs, grad)  # warm-up
    timer = tb.Timer(
        "run_once(op, inputs, grad)",
        globals={"run_once": run_once, "op": op, "inputs": inputs, "grad": grad},
        num_threads=torch.get_num_threads(),
    )
    return timer.blocked_autorange(min_run_time=min_run_time).median


def peak_memory(variant: str, length: int, embed_dim: int, backward: bool) -> int:
    """Peak bytes of tensors allocated during one call (profiler memory timeline, CPU)."""
    from torch.profiler._memory_profiler import MemoryProfileTimeline

    op = attention_op(variant)
    inputs = make_inputs(length, embed_dim, backward)
    grad = torch.ones(BATCH, length, embed_dim) if backward else None
    run_once(op, inputs, grad)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as prof:
        run_once(op, inputs, grad)
    timeline = MemoryProfileTimeline(prof._memory_profile())
    _, sizes = timeline._coalesce_timeline(torch.device("cpu"))
    return int(max(sum(row) for row in sizes)) if sizes else 0


def to_markdown(rows: list[dict], threads: int) -> str:
    def table(shared: str, hamilton: str) -> list[str]:
        out = [
            "| E | L | pass | shared (ms) | hamilton (ms) | time reduction | shared peak (MiB) "
            "| hamilton peak (MiB) | memory reduction |",
            "|---:|---:|---|---:|---:|---:|---:|---:|---:|",
        ]
        for r in rows:
            t, m = r["time_s"], r["peak_bytes"]
            out.append(
                f"| {r['embed_dim']} | {r['length']} | {r['pass']} | {t[shared] * 1e3:.1f} | "
                f"{t[hamilton] * 1e3:.1f} | {1 - t[shared] / t[hamilton]:.1%} | {m[shared] / 2**20:.1f} | "
                f"{m[hamilton] / 2**20:.1f} | {1 - m[shared] / max(m[hamilton], 1):.1%} |"
            )
        return out

    lines = [
        f"Attention op only (projections excluded), batch {BATCH}, {HEADS} heads, float32, CPU, {threads} "
        "thread(s); median ms (torch.utils.benchmark blocked_autorange); peak = live tensor memory allocated "
        "by one call (torch.profiler memory timeline, `profile_memory=True`). "
        "Reduction = 1 − shared / hamilton.",
        "",
        "Module paths (`need_weights=False`: both modes on `F.scaled_dot_product_attention`):",
        "",
        *table("shared", "hamilton"),
        "",
        "Explicit-map paths (`need_weights=True`: score maps and softmax materialised):",
        "",
        *table("shared-explicit", "hamilton-explicit"),
    ]
    return "\n".join(lines) + "\n"


def layer_rows(lengths, dims, rounds: int, min_run_time: float) -> list[dict]:
    rows = []
    for embed_dim in dims:
        layers = {
            mode: QuaternionTransformerEncoderLayer(
                embed_dim, HEADS, mode=mode, generator=torch.Generator().manual_seed(0)
            ).eval()
            for mode in ("shared", "hamilton")
        }
        for length in lengths:
            x = torch.randn(BATCH, length, embed_dim, generator=torch.Generator().manual_seed(length))
            times = {mode: [] for mode in layers}
            with torch.no_grad():
                for layer in layers.values():
                    layer(x)  # warm-up
                for _ in range(rounds):
                    for mode, layer in layers.items():
                        timer = tb.Timer(
                            "layer(x)", globals={"layer": layer, "x": x}, num_threads=torch.get_num_threads()
                        )
                        times[mode].append(timer.blocked_autorange(min_run_time=min_run_time).median)
            ratios = [h / s for s, h in zip(times["shared"], times["hamilton"])]
            row = {
                "embed_dim": embed_dim,
                "length": length,
                "shared_s": statistics.median(times["shared"]),
                "hamilton_s": statistics.median(times["hamilton"]),
                "speedup": statistics.median(ratios),  # hamilton time / shared time, within rounds
                "reduction": statistics.median(1 - 1 / r for r in ratios),  # 1 - shared / hamilton
                "rounds": rounds,
            }
            rows.append(row)
            print(
                f"layer E={embed_dim} L={length}: shared {row['shared_s'] * 1e3:.1f} ms, hamilton "
                f"{row['hamilton_s'] * 1e3:.1f} ms, speed-up {row['speedup']:.2f}x ({row['reduction']:.1%} less time)",
                flush=True,
            )
    return rows


def layer_markdown(rows: list[dict], meta: dict) -> str:
    lines = [
        "## Quaternion encoder layer: shared vs Hamilton scores (whole layer, forward)",
        "",
        f"QuaternionTransformerEncoderLayer (norms, quaternion q/k/v/out projections, attention, quaternion FFN 4E), "
        f"batch {BATCH}, {HEADS} heads, float32, forward under no_grad, CPU, {meta['threads']} thread(s); medians "
        f"of {meta['rounds']} side-by-side rounds (blocked_autorange); ratios are within-round. Load average "
        f"before / after: {meta['load_before']} / {meta['load_after']}. Speed-up = hamilton / shared time; "
        "reduction = 1 − shared / hamilton (the paper's CPU figure, 58.1%, is a reduction).",
        "",
        "| E | L | shared (ms) | hamilton (ms) | speed-up | time reduction |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['embed_dim']} | {r['length']} | {r['shared_s'] * 1e3:.1f} | {r['hamilton_s'] * 1e3:.1f} | "
            f"{r['speedup']:.2f}× | {r['reduction']:.1%} |"
        )
    return "\n".join(lines) + "\n"


def run_layer(args) -> None:
    lengths = (128, 512) if args.quick else (128, 256, 512, 1024)
    dims = (64,) if args.quick else (64, 256)
    load_before = [round(x, 2) for x in os.getloadavg()]
    rows = layer_rows(lengths, dims, rounds=3 if args.quick else 5, min_run_time=0.1 if args.quick else 0.4)
    meta = {
        "batch": BATCH,
        "num_heads": HEADS,
        "threads": args.threads,
        "rounds": rows[0]["rounds"],
        "load_before": load_before,
        "load_after": [round(x, 2) for x in os.getloadavg()],
        "torch": torch.__version__,
        "machine": platform.machine(),
    }
    RESULTS.mkdir(exist_ok=True)
    name = "quaternion_layer_quick" if args.quick else "quaternion_layer"
    (RESULTS / f"{name}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text(layer_markdown(rows, meta))
    print(layer_markdown(rows, meta))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="L in {128, 512}, E 64 only, short timing")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--layer", action="store_true", help="time whole encoder layers instead of the attention op")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.layer:
        run_layer(args)
        return
    lengths = (128, 512) if args.quick else (128, 256, 512, 1024)
    dims = (64,) if args.quick else (64, 256)
    min_run_time = 0.2 if args.quick else 0.6
    rows = []
    for embed_dim in dims:
        for length in lengths:
            for backward in (False, True):
                row = {"embed_dim": embed_dim, "length": length, "pass": "fwd+bwd" if backward else "fwd"}
                row["time_s"] = {v: time_case(v, length, embed_dim, backward, min_run_time) for v in VARIANTS}
                row["peak_bytes"] = {v: peak_memory(v, length, embed_dim, backward) for v in VARIANTS}
                rows.append(row)
                t = row["time_s"]
                print(
                    f"E={embed_dim} L={length} {row['pass']}: shared {t['shared'] * 1e3:.1f} ms, "
                    f"hamilton {t['hamilton'] * 1e3:.1f} ms ({1 - t['shared'] / t['hamilton']:.1%} less)",
                    flush=True,
                )
    meta = {
        "batch": BATCH,
        "num_heads": HEADS,
        "dtype": "float32",
        "threads": args.threads,
        "torch": torch.__version__,
        "machine": platform.machine(),
        "timer": "torch.utils.benchmark blocked_autorange median",
        "memory": "torch.profiler memory timeline (profile_memory=True), peak live tensor bytes of one call",
    }
    RESULTS.mkdir(exist_ok=True)
    name = "quaternion_attention_quick" if args.quick else "quaternion_attention"
    (RESULTS / f"{name}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text(to_markdown(rows, args.threads))
    print(to_markdown(rows, args.threads))


if __name__ == "__main__":
    main()
