"""Stability in miniature: a deep byte-level masked LM on fortunes, pre-LN vs Sandwich-LN + PB-relax (CogView).

CogView (Ding et al. 2021, https://arxiv.org/abs/2105.13290, §3.2) trains a deep transformer in float16 with two
stabilisers: Sandwich-LN (an extra LayerNorm on each branch output before its residual add) and PB-relax
(attention scores formed at 1/α scale; LayerNorm inputs divided by max|x|/8). This script trains the same small
deep model both ways under low-precision autocast with a learning rate high enough to stress it, over several
seeds, and counts divergences.

Task: byte-level masked language modelling on Debian ``fortunes`` text (several category files, entries split on
``%`` lines): 15% of the bytes of each 64-byte window are replaced by a [MASK] id and predicted (cross-entropy on
the masked positions). The encoder is bidirectional (the token-mixer contract has key padding, not causality).

Model: byte embedding + learned positions, ``TransformerEncoder(TransformerEncoderLayer(d, 4, norm=..., pb_relax=...),
depth)``, a final LayerNorm and a linear read-out; AdamW, no warm-up (a stress test), no gradient clipping.
A run *diverges* when a loss is NaN/inf or the final loss (mean of the last 10 steps) is above the first step's.

Usage: python benchmarks/cogview_stability.py [--quick]
Writes benchmarks/results/cogview_stability.{json,md} (--quick: a smoke test into the temp folder).
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
import torch.nn.functional as F
from torch import nn

from densattn.data.bundled import FORTUNES_DIRS, split_fortunes
from densattn.layers import TransformerEncoder, TransformerEncoderLayer

RESULTS = Path(__file__).parent / "results"
CATEGORIES = ("computers", "politics", "work", "sports", "science", "literature", "wisdom", "people")
MASK_ID, VOCAB = 256, 257
CONFIGS = {
    "pre-LN": {"norm": "pre", "pb_relax": False},
    "sandwich-LN + PB-relax": {"norm": "sandwich", "pb_relax": True},
}


def fortunes_bytes() -> torch.Tensor:
    root = next((Path(p) for p in FORTUNES_DIRS if Path(p).is_dir()), None)
    if root is None:
        raise SystemExit("needs the Debian package `fortunes` (sudo apt-get install -y fortunes)")
    text = []
    for name in CATEGORIES:
        if (root / name).is_file():
            text += split_fortunes((root / name).read_text(encoding="utf-8", errors="replace"))
    data = "\n\n".join(text).encode("utf-8", errors="replace")
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).long()


class ByteMLM(nn.Module):
    def __init__(self, d_model: int, depth: int, seq_len: int, norm: str, pb_relax: bool) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, d_model)
        self.position = nn.Parameter(torch.randn(seq_len, d_model) * 0.02)
        layer = TransformerEncoderLayer(d_model, 4, norm=norm, pb_relax=pb_relax)
        self.encoder = TransformerEncoder(layer, depth)
        for block in self.encoder.layers:  # independent initialisation per layer
            for module in block.modules():
                if isinstance(module, nn.Linear):
                    module.reset_parameters()
        self.final_norm = nn.LayerNorm(d_model)
        self.readout = nn.Linear(d_model, 256)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.embed(ids) + self.position  # (B, T, d)
        return self.readout(self.final_norm(self.encoder(h)))  # (B, T, 256)


def batch(data: torch.Tensor, size: int, seq_len: int, g: torch.Generator):
    starts = torch.randint(0, data.numel() - seq_len, (size,), generator=g)
    target = torch.stack([data[s : s + seq_len] for s in starts.tolist()])  # (B, T)
    masked = torch.rand(size, seq_len, generator=g) < 0.15
    masked[:, 0] |= ~masked.any(-1)  # at least one prediction per row
    return target.masked_fill(masked, MASK_ID), target, masked


def train(config: str, dtype: torch.dtype, lr: float, seed: int, args, data: torch.Tensor) -> dict:
    torch.manual_seed(seed)  # parameter initialisation (script-level, one process per grid cell order)
    model = ByteMLM(args.d_model, args.depth, args.seq_len, **CONFIGS[config])
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    scaler = torch.amp.GradScaler("cpu", enabled=dtype == torch.float16)
    g = torch.Generator().manual_seed(1000 + seed)
    losses, start = [], time.perf_counter()
    for _ in range(args.steps):
        ids, target, masked = batch(data, args.batch, args.seq_len, g)
        with torch.autocast("cpu", dtype=dtype):
            logits = model(ids)
        loss = F.cross_entropy(logits.float()[masked], target[masked])
        losses.append(float(loss))
        if not math.isfinite(losses[-1]):
            break
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    final = statistics.fmean(losses[-10:])
    diverged = not all(math.isfinite(x) for x in losses) or final > losses[0]
    return {
        "config": config,
        "dtype": str(dtype).removeprefix("torch."),
        "lr": lr,
        "seed": seed,
        "steps_run": len(losses),
        "first_loss": losses[0],
        "final_loss": final if math.isfinite(final) else None,
        "min_loss": min(x for x in losses if math.isfinite(x)),
        "diverged": diverged,
        "seconds": time.perf_counter() - start,
        "losses": [round(x, 4) if math.isfinite(x) else None for x in losses],
    }


def write_markdown(result: dict) -> str:
    a = result["args"]
    lines = [
        "## CogView stabilisers in miniature: deep byte-level masked LM on fortunes",
        "",
        f"d_model {a['d_model']}, {a['depth']} layers, 4 heads, sequence {a['seq_len']}, batch {a['batch']}, "
        f"{a['steps']} AdamW steps (no warm-up, no clipping), seeds {a['seeds']}; CPU autocast; "
        f"{result['threads']} threads; load average before/after {result['load_before']} / {result['load_after']}. "
        "Diverged = a NaN/inf loss or a final loss (mean of the last 10 steps) above the first step's "
        f"(first loss ≈ ln 256 = {math.log(256):.2f}).",
        "",
        "| precision | lr | layers | diverged | final loss per seed | mean final loss | s / run |",
        "|---|---|---|---|---|---|---|",
    ]
    groups: dict[tuple[str, float, str], list[dict]] = {}
    for run in result["runs"]:
        groups.setdefault((run["dtype"], run["lr"], run["config"]), []).append(run)
    for (dtype, lr, config), runs in groups.items():
        finals = [r["final_loss"] for r in runs]
        shown = ", ".join("NaN" if f is None else f"{f:.3f}" for f in finals)
        ok = [f for f in finals if f is not None]
        mean = f"{statistics.fmean(ok):.3f}" if ok else "—"
        seconds = statistics.fmean(r["seconds"] for r in runs)
        diverged = sum(r["diverged"] for r in runs)
        lines.append(f"| {dtype} | {lr:g} | {config} | {diverged} / {len(runs)} | {shown} | {mean} | {seconds:.0f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke test (2 layers, 5 steps) into the temp folder")
    parser.add_argument("--d-model", type=int, default=64)
    parser.add_argument("--depth", type=int, default=24)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--lrs", type=float, nargs="+", default=[3e-2, 1e-1])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--dtypes", nargs="+", default=["bfloat16"], help="float16 too where the CPU has AVX512-FP16 (else ~10x slower)"
    )
    parser.add_argument("--name", default="cogview_stability", help="results file stem")
    parser.add_argument("--threads", type=int, default=1, help="1 is fastest for these tiny matmuls on a busy CPU")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.quick:
        args.depth, args.steps, args.seeds = 2, 12, [0]
    data = fortunes_bytes()
    load_before = [round(x, 2) for x in os.getloadavg()]
    runs = []
    for dtype_name in args.dtypes:
        for lr in args.lrs:
            for config in CONFIGS:
                for seed in args.seeds:
                    run = train(config, getattr(torch, dtype_name), lr, seed, args, data)
                    runs.append(run)
                    summary = (
                        config,
                        dtype_name,
                        lr,
                        seed,
                        run["final_loss"],
                        run["diverged"],
                        f"{run['seconds']:.0f}s",
                    )
                    print(*summary, flush=True)
    result = {
        "args": vars(args),
        "bytes_of_text": data.numel(),
        "threads": torch.get_num_threads(),
        "load_before": load_before,
        "load_after": [round(x, 2) for x in os.getloadavg()],
        "torch": torch.__version__,
        "platform": platform.platform(),
        "runs": runs,
    }
    out = Path(tempfile.gettempdir()) if args.quick else RESULTS
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.json").write_text(json.dumps(result, indent=1))
    markdown = write_markdown(result)
    (out / f"{args.name}.md").write_text(markdown)
    print(markdown)


if __name__ == "__main__":
    main()
