"""The benchmark grid on a tiny real grid (two synthetic text tasks on MiniLM, three heads): ranks and Friedman
statistic equal a hand computation from the runs' own fold scores; cells are ordinary resumable run directories."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import pytest

from densattn.cli import main
from densattn.experiments import benchmark as bench
from densattn.experiments.benchmark import BENCHMARK_METHODS, BenchmarkMethod, Task, load_tasks, select_tasks
from densattn.io import read_json

METHODS = ("t_linear", "t_pool", "t_conv")
WORDS = "the a of and to in is it that was for on are with as be at this have from".split()


def write_task_csv(path: Path, classes: dict[str, list[str]], n: int, seed: int) -> None:
    """``n`` short texts per class: a few filler words plus, with probability 0.6, one of the class's cue words
    (so the task is learnable but not perfectly)."""
    rng = random.Random(seed)
    rows = []
    for label, cues in classes.items():
        for _ in range(n):
            words = rng.sample(WORDS, 5)
            if rng.random() < 0.6:
                words.insert(rng.randrange(6), rng.choice(cues))
            rows.append({"text": " ".join(words), "label": label})
    rng.shuffle(rows)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["text", "label"])
        writer.writeheader()
        writer.writerows(rows)


@pytest.fixture
def tiny_grid(tmp_path, monkeypatch):
    write_task_csv(tmp_path / "pets.csv", {"cat": ["cat", "kitten", "meow"], "dog": ["dog", "puppy", "bark"]}, 20, 0)
    write_task_csv(tmp_path / "sky.csv", {"sun": ["sunny", "bright", "warm"], "rain": ["rain", "wet", "storm"]}, 20, 1)
    (tmp_path / "tasks.toml").write_text(
        "".join(
            f'[tasks.{name}]\nmodality = "text"\nencoder = "minilm"\ndata = "csv:{tmp_path / name}.csv"\n'
            f"encoder_options = {{ max_length = 16 }}\n"
            for name in ("pets", "sky")
        )
    )
    for name, head in zip(METHODS, ("linear", "pool", "conv")):
        options = {"layer": "best"} if head == "linear" else {}
        method = BenchmarkMethod(name, head=head, options=options, search={"lr": [1e-3, 1e-2]}, train={"epochs": 3})
        monkeypatch.setitem(BENCHMARK_METHODS, name, method)
    return tmp_path


def hand_ranks(table: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """Rank 1 = highest score; tied scores share the mean of the positions they span."""
    out = {}
    for task, scores in table.items():
        ordered = sorted(scores, key=lambda m: -scores[m])
        ranks, i = {}, 0
        while i < len(ordered):
            j = i
            while j + 1 < len(ordered) and scores[ordered[j + 1]] == scores[ordered[i]]:
                j += 1
            for m in ordered[i : j + 1]:
                ranks[m] = (i + j) / 2 + 1
            i = j + 1
        out[task] = ranks
    return out


def hand_friedman(ranks: dict[str, dict[str, float]], scores: dict[str, dict[str, float]]) -> float:
    n, methods = len(ranks), list(next(iter(ranks.values())))
    k = len(methods)
    sums = {m: sum(r[m] for r in ranks.values()) for m in methods}
    statistic = 12 / (n * k * (k + 1)) * sum(s * s for s in sums.values()) - 3 * n * (k + 1)
    ties = 0
    for row in scores.values():
        values = list(row.values())
        ties += sum(values.count(v) ** 3 - values.count(v) for v in set(values))
    return statistic / (1 - ties / (n * k * (k * k - 1)))


@pytest.mark.slow
def test_tiny_grid_ranks_and_friedman_equal_a_hand_computation(tiny_grid, monkeypatch):
    out = tiny_grid / "out"
    summary = bench.benchmark(
        tiny_grid / "tasks.toml", out, methods=list(METHODS), seeds=[0], folds=2,
        cache_dir=tiny_grid / "cache", log=lambda *_: None,
    )  # fmt: skip
    # the hand computation reads each run's own per-fold accuracies
    table = {}
    for task in ("pets", "sky"):
        table[task] = {}
        for m in METHODS:
            folds = read_json(out / "runs" / task / m / "seed0" / "metrics.json")["folds"]
            assert len(folds) == 2
            table[task][m] = sum(f["accuracy"] for f in folds) / len(folds)
    assert len({v for row in table.values() for v in row.values()}) > 1, "degenerate grid: every score tied"
    ranks = hand_ranks(table)
    average = {m: (ranks["pets"][m] + ranks["sky"][m]) / 2 for m in METHODS}
    result = read_json(out / "benchmark.json")["rankings"]["all_tasks"]
    for task in table:
        assert result["scores"][task] == pytest.approx(table[task])
    assert result["ranks"] == ranks
    assert result["average_ranks"] == pytest.approx(average)
    assert result["friedman"]["statistic"] == pytest.approx(hand_friedman(ranks, table))
    assert summary["rankings"]["all_tasks"]["num_tasks"] == 2
    assert (out / "benchmark_cd.png").exists() and "Friedman" in (out / "benchmark.md").read_text()

    # every cell is an ordinary run directory on the same folds as the others of its task
    for task in ("pets", "sky"):
        configs = [read_json(out / "runs" / task / m / "seed0" / "config.json") for m in METHODS]
        assert {c["feature_cache"]["dataset_fingerprint"] for c in configs} == {
            configs[0]["feature_cache"]["dataset_fingerprint"]
        }
        assert all(c["search"] == {"lr": [1e-3, 1e-2]} and c["benchmark"]["seed"] == 0 for c in configs)
        sizes = [[f["num_test"] for f in read_json(out / "runs" / task / m / "seed0" / "metrics.json")["folds"]]
                 for m in METHODS]  # fmt: skip
        assert sizes.count(sizes[0]) == len(sizes)

    # a finished grid trains nothing again; an unfinished cell resumes from its finished folds
    trained = []
    original = bench.run_cell
    monkeypatch.setattr(bench, "run_cell", lambda cell, *a, **k: trained.append(cell) or original(cell, *a, **k))
    cell_dir = out / "runs" / "sky" / "t_pool" / "seed0"
    (cell_dir / "metrics.json").unlink()
    (cell_dir / "folds" / "1" / "result.json").unlink()
    again = bench.benchmark(
        tiny_grid / "tasks.toml", out, methods=list(METHODS), seeds=[0], folds=2,
        cache_dir=tiny_grid / "cache", log=lambda *_: None,
    )  # fmt: skip
    assert [(c.task.name, c.method) for c in trained] == [("sky", "t_pool")]
    assert again["rankings"]["all_tasks"]["ranks"] == ranks  # fold 1 retrained to the same result

    # a finished cell whose method settings changed is refused, not silently reused
    changed = BenchmarkMethod("t_pool", head="pool", search={"lr": [1e-2]}, train={"epochs": 3})
    monkeypatch.setitem(BENCHMARK_METHODS, "t_pool", changed)
    with pytest.raises(ValueError, match="other settings"):
        bench.benchmark(tiny_grid / "tasks.toml", out, methods=list(METHODS), seeds=[0], folds=2, report_only=True)


def test_shipped_task_list_covers_every_modality():
    tasks = load_tasks(Path(__file__).parents[2] / "benchmarks" / "tasks.toml")
    by_modality = {m: [t for t in tasks.values() if t.modality == m] for m in ("text", "vision", "speech")}
    assert all(len(v) >= 3 for v in by_modality.values()), {m: len(v) for m, v in by_modality.items()}
    assert "synthetic" in tasks and "SYNTHETIC" in tasks["synthetic"].note
    assert [t.name for t in select_tasks(tasks, ["speech"])] == [t.name for t in by_modality["speech"]]


def test_task_list_errors_name_the_problem(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[tasks.x]\nmodality = "text"\nencoder = "minilm"\ndata = "fortunes"\ncolour = "red"\n')
    with pytest.raises(ValueError, match="unknown key"):
        load_tasks(bad)
    bad.write_text('[tasks.x]\nmodality = "smell"\nencoder = "minilm"\ndata = "fortunes"\n')
    with pytest.raises(ValueError, match="modality must be one of"):
        load_tasks(bad)
    with pytest.raises(ValueError, match="does not exist"):
        load_tasks(tmp_path / "missing.toml")
    tasks = {"a": Task("a", "text", "minilm", "fortunes")}
    with pytest.raises(ValueError, match="unknown task 'b'"):
        select_tasks(tasks, ["b"])
    with pytest.raises(ValueError, match="unknown method"):
        bench.plan_cells(list(tasks.values()), ["nope"], [0], tmp_path, 5)


def test_end_to_end_methods_apply_to_text_tasks_only(tmp_path):
    text, image = Task("t", "text", "minilm", "fortunes"), Task("v", "vision", "efficientnet-lite0", "digits")
    cells = bench.plan_cells([text, image], ["lora_r8", "daam"], [0, 1], tmp_path, 5)
    assert {(c.task.name, c.method) for c in cells} == {("t", "lora_r8"), ("t", "daam"), ("v", "daam")}
    assert cells[0].method == "lora_r8" and cells[1].method == "lora_r8"  # the longest cells first
    cells = bench.plan_cells([text, image], ["daam_peft", "ia3"], [0], tmp_path, 5)
    assert {(c.task.name, c.method) for c in cells} == {("t", "daam_peft"), ("t", "ia3")}
    daam_peft = BENCHMARK_METHODS["daam_peft"]
    assert (daam_peft.kind, daam_peft.tuner) == ("end_to_end", "daam_peft")
    assert len(daam_peft.search["lr"]) == len(BENCHMARK_METHODS["lora_r8"].search["lr"]) == 2  # the same budget


def test_cli_lists_and_validates(tmp_path, capsys, tiny_grid):
    assert main(["benchmark", "--out", str(tmp_path), "--task-file", str(tiny_grid / "tasks.toml"), "--list"]) == 0
    listing = capsys.readouterr().out
    assert "task   pets" in listing and "method daam" in listing and "method lora_r8" in listing
    assert main(["benchmark", "--out", str(tmp_path), "--seeds", "0,x"]) == 2
    assert "--seeds" in capsys.readouterr().err
    assert (
        main(["benchmark", "--out", str(tmp_path), "--folds", "1", "--task-file", str(tiny_grid / "tasks.toml")]) == 2
    )
    assert json.dumps(bench.describe_methods())  # JSON-ready for docs


def test_a_failing_cell_does_not_stop_the_grid(tmp_path, monkeypatch):
    import torch

    from densattn.data.cache import FeatureSet

    def fake_features(task, seed, cache_dir):
        g = torch.Generator().manual_seed(seed + len(task.name))
        y = torch.arange(30) % 2
        x = torch.randn(30, 3, 4, generator=g) + y[:, None, None].float()
        return FeatureSet(x, y, ["a", "b"], [str(i) for i in range(30)]), {"name": "fake"}, None

    monkeypatch.setattr(bench, "_features", fake_features)
    for name, head in zip(METHODS, ("linear", "pool", "conv")):
        method = BenchmarkMethod(name, head=head, search={"lr": [1e-3, 1e-2]}, train={"epochs": 2})
        monkeypatch.setitem(BENCHMARK_METHODS, name, method)
    original = bench.run_cell

    def flaky(cell, *args, **kwargs):
        if (cell.task.name, cell.method) == ("b", "t_pool"):
            raise RuntimeError("disk on fire")
        return original(cell, *args, **kwargs)

    monkeypatch.setattr(bench, "run_cell", flaky)
    tasks = [Task("a", "text", "fake", "fake"), Task("b", "text", "fake", "fake")]
    with pytest.raises(ValueError, match=r"1 cell\(s\) failed .*b/t_pool/seed0: disk on fire"):
        bench.run_benchmark(tasks, list(METHODS), [0], tmp_path, folds=2, log=lambda *_: None)
    finished = sorted(
        str(p.parent.parent.relative_to(tmp_path / "runs")) for p in tmp_path.glob("runs/*/*/seed0/metrics.json")
    )
    assert finished == ["a/t_conv", "a/t_linear", "a/t_pool", "b/t_conv", "b/t_linear"]
