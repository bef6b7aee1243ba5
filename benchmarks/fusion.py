"""Benchmark the fusion attention systems: exact vs random-feature multi-linear attention (MAN) for three
modalities, bilinear attention networks (BAN) vs N, and the random-feature estimate's error vs R.

Run: ``.venv/bin/python benchmarks/fusion.py`` (about 3 minutes on 2 busy cores). Writes
``benchmarks/results/fusion.{json,md}`` and ``benchmarks/results/fusion_error.png``.

Times are ``torch.utils.benchmark.Timer(...).blocked_autorange()`` medians of a forward pass (no grad) in
float32 on the CPU. Memory is the peak of live tensor bytes during one forward pass, from the PyTorch
profiler's allocation and free events (CPU tensors only: the tensors' footprint, not the process RSS).
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils.benchmark import Timer

from densattn.attention.bilinear import BilinearAttentionNetwork
from densattn.attention.multilinear import MultiLinearAttention

RESULTS = Path(__file__).resolve().parent / "results"


def peak_tensor_bytes(fn) -> int:
    """Peak live tensor bytes while ``fn()`` runs (allocations minus frees, in event order)."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted(
        (event.time_range.start, event.self_cpu_memory_usage) for event in prof.events() if event.self_cpu_memory_usage
    )
    live = peak = 0
    for _, change in events:
        live += change
        peak = max(peak, live)
    return peak


def median_ms(fn) -> float:
    return Timer(stmt="fn()", globals={"fn": fn}).blocked_autorange(min_run_time=0.5).median * 1e3


def time_and_memory(args) -> list[dict]:
    rows = []
    dims = [args.dim] * 3
    for n in args.lengths:
        xs = [torch.randn(args.batch, n, d) for d in dims]
        y_ban = torch.randn(args.batch, n, args.dim)
        torch.manual_seed(0)
        rf = MultiLinearAttention(
            dims,
            attn_dim=args.attn_dim,
            value_dim=args.value_dim,
            num_heads=args.heads,
            num_features=args.features,
            generator=torch.Generator().manual_seed(0),
        ).eval()
        exact = copy.deepcopy(rf)
        exact.exact = True
        ban = BilinearAttentionNetwork(args.dim, args.dim, args.value_dim * args.heads, glimpses=2).eval()
        cases = {
            "man_exact": lambda exact=exact, xs=xs: exact(*xs),
            "man_random_features": lambda rf=rf, xs=xs: rf(*xs),
            "ban": lambda ban=ban, x=xs[0], y=y_ban: ban(x, y),
        }
        with torch.no_grad():
            error = ((rf(*xs) - exact(*xs)).norm() / exact(*xs).norm()).item()
            for name, fn in cases.items():
                fn()  # warm-up
                row = {"method": name, "N": n, "ms": median_ms(fn), "peak_MiB": peak_tensor_bytes(fn) / 2**20}
                if name == "man_random_features":
                    row["relative_error_vs_exact"] = error
                rows.append(row)
                print(row, flush=True)
    return rows


def relative_error(module, xs) -> float:
    exact = copy.deepcopy(module)
    exact.exact = True
    estimate, target = module(*xs), exact(*xs)
    return ((estimate - target).norm() / target.norm()).item()


def error_curve(args) -> list[dict]:
    rows = []
    dims = [args.dim] * 3
    generator = torch.Generator().manual_seed(1)
    xs = [torch.randn(args.batch, args.error_length, d, generator=generator, dtype=torch.float64) for d in dims]
    variants = [(scale, 0.0, None) for scale in (0.5, 1.0, 2.0)] + [(1.0, -1.0 / 12, None), (1.0, 0.0, 0.2)]
    with torch.no_grad():
        for query_scale, feature_shift, local_constraint in variants:
            for num_features in args.error_features:
                errors, scaled_errors = [], []
                for seed in range(args.seeds):
                    torch.manual_seed(100)  # the same projections for every R and seed: only the features vary
                    module = MultiLinearAttention(
                        dims,
                        attn_dim=args.attn_dim,
                        value_dim=args.value_dim,
                        num_heads=args.heads,
                        num_features=num_features,
                        query_scale=query_scale,
                        feature_shift=feature_shift,
                        local_constraint=local_constraint,
                        generator=torch.Generator().manual_seed(seed),
                        dtype=torch.float64,
                    )
                    errors.append(relative_error(module, xs))
                    scaled_errors.append(relative_error(module, [xs[0] * 100.0, xs[1], xs[2]]))
                row = {
                    "query_scale": query_scale,
                    "feature_shift": feature_shift,
                    "local_constraint": local_constraint,
                    "R": num_features,
                    "mean_relative_error": statistics.mean(errors),
                    "std_relative_error": statistics.stdev(errors),
                    "max_abs_change_when_x1_scaled_by_100": max(abs(a - b) for a, b in zip(errors, scaled_errors)),
                }
                rows.append(row)
                print(row, flush=True)
    return rows


def write_markdown(result: dict, path: Path) -> None:
    cfg = result["config"]
    lines = [
        "# Fusion attention benchmark",
        "",
        f"CPU ({result['machine']}), torch {result['torch']}, float32 forward without grad, "
        f"batch {cfg['batch']}, feature size {cfg['dim']} per modality, MAN: 3 modalities of N positions "
        f"each, {cfg['heads']} heads, "
        f"attn_dim {cfg['attn_dim']}, value_dim {cfg['value_dim']}, R = {cfg['features']} random features; "
        f"BAN: Nx = Ny = N, hidden {cfg['value_dim'] * cfg['heads']}, 2 glimpses. Times are medians of "
        "blocked_autorange; memory is the peak of live tensor bytes (profiler events).",
        "",
        "| N | tuples N³ | MAN exact ms | MAN exact MiB | MAN random-feature ms | MAN random-feature MiB "
        "| RF rel. error | BAN ms | BAN MiB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    by = {(row["method"], row["N"]): row for row in result["timing"]}
    for n in cfg["lengths"]:
        e, r, b = by[("man_exact", n)], by[("man_random_features", n)], by[("ban", n)]
        lines.append(
            f"| {n} | {n**3:,} | {e['ms']:.2f} | {e['peak_MiB']:.2f} | {r['ms']:.2f} | {r['peak_MiB']:.2f} "
            f"| {r['relative_error_vs_exact']:.3f} | {b['ms']:.2f} | {b['peak_MiB']:.2f} |"
        )
    lines += [
        "",
        f"## Random-feature error vs R (3 modalities × {cfg['error_length']} positions, "
        f"{cfg['seeds']} feature seeds, float64)",
        "",
        "Relative error ‖out_rf − out_exact‖ / ‖out_exact‖ (mean ± std over seeds). `query_scale` s sets the "
        "pairwise logit to s·cos(z_m, z_n); A is the FAVOR++-style feature shift (0 = FAVOR+); σ the local "
        "sequential constraint's bandwidth (positional anchor features). The last column is the largest "
        "change of the error when all "
        "features of modality 1 are multiplied by 100 (the error is scale-invariant by construction).",
        "",
        "| query_scale s | shift A | local σ | R | relative error | change under ×100 |",
        "|---|---|---|---|---|---|",
    ]
    for row in result["error_curve"]:
        lines.append(
            f"| {row['query_scale']} | {row['feature_shift']:.3g} | {row['local_constraint'] or '–'} "
            f"| {row['R']} | "
            f"{row['mean_relative_error']:.3f} ± {row['std_relative_error']:.3f} | "
            f"{row['max_abs_change_when_x1_scaled_by_100']:.1e} |"
        )
    path.write_text("\n".join(lines) + "\n")


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    groups: dict[tuple, list] = {}
    for row in result["error_curve"]:
        key = (row["query_scale"], row["feature_shift"], row["local_constraint"])
        groups.setdefault(key, []).append(row)
    for (scale, shift, sigma), rows in groups.items():
        r = [row["R"] for row in rows]
        mean = [row["mean_relative_error"] for row in rows]
        std = [row["std_relative_error"] for row in rows]
        left.errorbar(
            r,
            mean,
            yerr=std,
            marker="o",
            capsize=3,
            label=f"s={scale}, A={shift:.3g}" + (f", σ={sigma}" if sigma else ""),
        )
    r0 = [row["R"] for row in next(iter(groups.values()))]
    first = next(iter(groups.values()))[0]["mean_relative_error"]
    left.plot(r0, [first * (r0[0] / r) ** 0.5 for r in r0], "k--", label="∝ 1/√R")
    left.set(xscale="log", yscale="log", xlabel="random features R", ylabel="relative error vs exact")
    left.set_title("MAN random-feature estimate, 3 modalities")
    left.legend(fontsize=7)
    for method, label in (
        ("man_exact", "MAN exact"),
        ("man_random_features", "MAN random features"),
        ("ban", "BAN"),
    ):
        rows = [row for row in result["timing"] if row["method"] == method]
        right.plot([row["N"] for row in rows], [row["ms"] for row in rows], marker="o", label=label)
    right.set(xscale="log", yscale="log", xlabel="positions per modality N", ylabel="forward time (ms)")
    right.set_title("Time vs N (CPU)")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[8, 16, 32, 64, 128])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--attn-dim", type=int, default=16)
    parser.add_argument("--value-dim", type=int, default=32)
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--features", type=int, default=128)
    parser.add_argument("--error-length", type=int, default=16)
    parser.add_argument("--error-features", type=int, nargs="+", default=[8, 32, 128, 512, 2048, 8192])
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    result = {
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "config": {key: value for key, value in vars(args).items() if key != "out"},
        "timing": time_and_memory(args),
        "error_curve": error_curve(args),
    }
    (args.out / "fusion.json").write_text(json.dumps(result, indent=2) + "\n")
    write_markdown(result, args.out / "fusion.md")
    plot(result, args.out / "fusion_error.png")
    print((args.out / "fusion.md").read_text())


if __name__ == "__main__":
    main()
