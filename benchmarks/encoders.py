"""Milliseconds per example of the bundled encoders (batch of 16, CPU, median of blocked_autorange).

Run: .venv/bin/python benchmarks/encoders.py
Writes benchmarks/results/encoders.json and benchmarks/results/encoders.md.
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

import numpy as np
import torch
from torch.utils.benchmark import Timer

from densattn.encoders import get_encoder

RESULTS = Path(__file__).parent / "results"
BATCH = 16


def inputs(modality: str) -> list:
    rng = np.random.default_rng(0)
    if modality == "text":
        words = "the a cat market rose fell team won lost code compiled server crashed vote election".split()
        return [" ".join(rng.choice(words, size=20)) for _ in range(BATCH)]  # ~20-word sentences
    if modality == "image":
        return [rng.integers(0, 256, size=(240, 320, 3), dtype=np.uint8) for _ in range(BATCH)]
    return [(0.1 * rng.standard_normal(16000 * 2)).astype(np.float32) for _ in range(BATCH)]  # 2 s clips


def main() -> None:
    torch.set_num_threads(2)
    configs = [
        ("minilm", {}),
        ("whisper-tiny", {"window_seconds": 8}),
        ("whisper-tiny", {"window_seconds": 30}),
        ("efficientnet-lite0", {"image_size": 112}),
        ("efficientnet-lite0", {"image_size": 224}),
    ]
    rows = []
    for name, options in configs:
        encoder = get_encoder(name, **options)
        batch = inputs(encoder.modality)
        encoder.encode(batch)  # warm-up
        measurement = Timer("encoder.encode(batch)", globals={"encoder": encoder, "batch": batch}).blocked_autorange(
            min_run_time=3.0
        )
        rows.append(
            {
                "encoder": name,
                "options": options,
                "shape": [encoder.num_layers, encoder.dim],
                "batch": BATCH,
                "median_ms_per_batch": 1e3 * measurement.median,
                "median_ms_per_example": 1e3 * measurement.median / BATCH,
                "runs": len(measurement.times),
            }
        )
        print(rows[-1])
        del encoder
    meta = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "load_average_1min_at_end": os.getloadavg()[0],
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "encoders.json").write_text(json.dumps({"meta": meta, "results": rows}, indent=2))
    lines = [
        f"Bundled encoders, CPU ({meta['threads']} threads, torch {meta['torch']}), batch {BATCH}, "
        "median of `blocked_autorange`; inputs: 20-word texts, 2 s clips, 320x240 images. Shared machine: "
        f"1-min load average {meta['load_average_1min_at_end']:.1f} on {os.cpu_count()} cores at the end "
        "of the run, "
        "so absolute times are inflated; compare rows (same run) rather than absolute values.",
        "",
        "| encoder | options | features (L, d) | ms / example | ms / batch |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        options = ", ".join(f"{k}={v}" for k, v in row["options"].items()) or "defaults"
        lines.append(
            f"| {row['encoder']} | {options} | ({row['shape'][0]}, {row['shape'][1]}) | "
            f"{row['median_ms_per_example']:.1f} | {row['median_ms_per_batch']:.0f} |"
        )
    (RESULTS / "encoders.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
