"""Paired fold statistics (densattn.stats) and the `densattn compare` command."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from densattn.analysis.compare import method_name
from densattn.analysis.stats import compare_runs, paired_difference
from densattn.cli import main

T_975_DF4 = 2.7764451  # Student t, 4 degrees of freedom, 97.5% quantile (printed t tables)


def test_constructed_ci_plain_and_corrected():
    a = [0.81, 0.82, 0.83, 0.84, 0.85]
    b = [0.80, 0.80, 0.80, 0.80, 0.80]  # differences 0.01 .. 0.05
    d = [x - y for x, y in zip(a, b)]
    mean = sum(d) / 5
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / 4)
    row = paired_difference(a, b, correction="none")
    assert row["mean_difference"] == pytest.approx(0.03)
    assert row["std_difference"] == pytest.approx(sd)
    half = T_975_DF4 * sd / math.sqrt(5)
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((mean - half, mean + half), abs=1e-6)
    assert row["significant"]
    corrected = paired_difference(a, b, test_fraction=0.25)
    half_nb = T_975_DF4 * sd * math.sqrt(1 / 5 + 0.25)
    assert (corrected["ci_low"], corrected["ci_high"]) == pytest.approx((mean - half_nb, mean + half_nb), abs=1e-6)
    assert corrected["t_ci_low"] == pytest.approx(row["ci_low"])  # plain interval reported alongside
    assert corrected["p_value"] > row["p_value"]  # the correction is conservative
    assert corrected["wilcoxon_p_value"] == pytest.approx(2 / 2**5)  # all 5 positive: exact two-sided minimum


def test_p_value_is_005_when_the_interval_touches_zero():
    d = np.array([-0.5, 0.0, 0.5, 1.0, 1.5])
    sd = d.std(ddof=1)
    shift = T_975_DF4 * sd / math.sqrt(5) - d.mean()  # move the mean so that ci_low = 0
    row = paired_difference(list(d + shift), [0.0] * 5, correction="none")
    assert row["ci_low"] == pytest.approx(0.0, abs=1e-6)
    assert row["p_value"] == pytest.approx(0.05, abs=1e-5)


def test_plain_interval_covers_the_true_mean_95_percent():
    rng = np.random.default_rng(0)
    hits = 0
    for _ in range(2000):
        d = rng.normal(0.3, 1.0, size=5)
        row = paired_difference(list(d), [0.0] * 5, correction="none")
        hits += row["ci_low"] <= 0.3 <= row["ci_high"]
    assert 0.93 < hits / 2000 < 0.97


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(-1, 1, allow_nan=False), min_size=2, max_size=8))
def test_antisymmetry_and_interval_contains_mean(d):
    a, b = d, [0.0] * len(d)
    fwd, back = paired_difference(a, b), paired_difference(b, a)
    assert fwd["mean_difference"] == pytest.approx(-back["mean_difference"], abs=1e-12)
    assert fwd["ci_low"] <= fwd["mean_difference"] + 1e-12 <= fwd["ci_high"] + 2e-12
    assert fwd["significant"] == back["significant"]


def test_degenerate_and_bad_input():
    row = paired_difference([0.5, 0.5, 0.5], [0.5, 0.5, 0.5])
    assert row["mean_difference"] == 0 and row["p_value"] == 1.0 and not row["significant"]
    with pytest.raises(ValueError, match="same folds"):
        paired_difference([0.1, 0.2], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="at least 2"):
        paired_difference([0.1], [0.2])
    with pytest.raises(ValueError, match="correction"):
        paired_difference([0.1, 0.2], [0.1, 0.3], correction="bonferroni")


def _metrics(accs, n_train=384, n_val=68, n_test=113):
    folds = [
        {"fold": k, "accuracy": a, "macro_f1": a - 0.1, "num_train": n_train, "num_val": n_val, "num_test": n_test}
        for k, a in enumerate(accs)
    ]
    return {
        "accuracy_mean": float(np.mean(accs)),
        "accuracy_std": float(np.std(accs, ddof=1)),
        "macro_f1_mean": float(np.mean(accs)) - 0.1,
        "macro_f1_std": float(np.std(accs, ddof=1)),
        "trainable_params": 1000,
        "seconds_per_epoch": 0.1,
        "num_folds": len(accs),
        "folds": folds,
    }


def test_compare_runs_uses_fold_sizes_for_the_correction():
    rows = compare_runs({"daam": _metrics([0.8, 0.7, 0.9]), "conv": _metrics([0.7, 0.7, 0.8])}, metrics=("accuracy",))
    assert len(rows) == 1 and rows[0]["method"] == "conv" and rows[0]["reference"] == "daam"
    assert rows[0]["test_fraction"] == pytest.approx(113 / (384 + 68))
    assert rows[0]["differences"] == pytest.approx([0.1, 0.0, 0.1])
    with pytest.raises(ValueError, match="reference"):
        compare_runs({"conv": _metrics([0.7, 0.8])})


def _write_run(path, head, accs, *, seed=0, data="fortunes", preset=None):
    path.mkdir(parents=True)
    config = {
        "head": head,
        "head_options": {"preset": preset} if preset else {},
        "train": {"seed": seed},
        "folds": len(accs),
        "data": data,
        "max_samples": 100,
        "kind": "head",
        "method": head,
        "encoder": {"name": "minilm"},
        "feature_cache": {"dataset_fingerprint": "abc"},
    }
    (path / "config.json").write_text(json.dumps(config))
    (path / "metrics.json").write_text(json.dumps(_metrics(accs)))


def test_compare_command_writes_tables_and_plot(tmp_path, capsys):
    _write_run(tmp_path / "a", "daam", [0.80, 0.82, 0.84, 0.86, 0.88])
    _write_run(tmp_path / "b", "conv", [0.70, 0.71, 0.72, 0.73, 0.74])
    _write_run(tmp_path / "c", "daam", [0.80, 0.80, 0.80, 0.80, 0.81], preset="mixture")
    out = tmp_path / "cmp"
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b"), str(tmp_path / "c"), "--out", str(out)]) == 0
    for f in ("results.md", "results.csv", "paired.csv", "accuracy_vs_params.png"):
        assert (out / f).stat().st_size > 0
    rows = list(csv.DictReader((out / "paired.csv").open()))
    assert {r["method"] for r in rows} == {"conv", "daam-mixture"}
    conv_acc = next(r for r in rows if r["method"] == "conv" and r["metric"] == "accuracy")
    assert float(conv_acc["mean_difference"]) == pytest.approx(0.12)
    assert "✱" in (out / "results.md").read_text()  # a difference of 0.10–0.14 on every fold is significant
    assert "daam-mixture" in capsys.readouterr().out


def test_compare_refuses_runs_on_different_data(tmp_path):
    _write_run(tmp_path / "a", "daam", [0.8, 0.9])
    _write_run(tmp_path / "b", "conv", [0.7, 0.8], seed=1)
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "o")]) == 2
    _write_run(tmp_path / "c", "daam", [0.7, 0.8])
    with pytest.raises(ValueError, match="--name"):
        from densattn.analysis.compare import load_runs

        load_runs([str(tmp_path / "a"), str(tmp_path / "c")])
    assert set(load_runs([str(tmp_path / "a"), str(tmp_path / "c")], ["x", "y"])) == {"x", "y"}


def test_method_name():
    assert method_name({"kind": "head", "method": "daam", "head_options": {"preset": "paper"}}) == "daam"
    assert method_name({"kind": "end_to_end", "method": "lora", "tuner": {"rank": 8}}) == "lora"
    assert method_name({"method": "daam", "head_options": {"preset": "mixture"}}) == "daam-mixture"
    assert method_name({"method": "lora", "name": "lora_r8"}) == "lora_r8"
