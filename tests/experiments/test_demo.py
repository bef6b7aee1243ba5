"""The demo end to end on a small real slice (text), and its input checks."""

import json

import pytest

from densattn.cli import main
from densattn.experiments.demo import run_demo


def test_demo_small_text_run(tmp_path):
    doc = run_demo(
        tmp_path / "demo",
        modalities=["text"],
        methods=["daam", "conv", "linear"],
        folds=2,
        epochs=2,
        sample_scale=0.08,
        cache_dir=tmp_path / "cache",
        lora_modalities=[],
        workers=1,
        log=lambda *_: None,
    )
    results = json.loads((tmp_path / "demo" / "results.json").read_text())
    assert set(results["text"]) == {"daam", "conv", "linear"}
    for method in ("daam", "conv", "linear"):
        row = results["text"][method]
        for key in ("accuracy_mean", "accuracy_std", "macro_f1_mean", "trainable_params"):
            assert key in row
        assert len(row["fold_accuracy"]) == 2
    assert {r["method"] for r in results["_paired_vs_daam"]["text"]} == {"conv", "linear"}
    assert results["_importance"]["text"]["layer_ranking"]
    assert (tmp_path / "demo" / "text" / "daam" / "explain" / "if_heatmap.png").exists()
    md = (tmp_path / "demo" / "results.md").read_text()
    assert "| daam |" in md and "Paired accuracy differences" in md
    assert doc["timing"]["total_seconds"] > 0
    # a second demo into the same folder replaces its own runs
    run_demo(
        tmp_path / "demo",
        modalities=["text"],
        methods=["pool"],
        folds=2,
        epochs=1,
        sample_scale=0.08,
        cache_dir=tmp_path / "cache",
        lora_modalities=[],
        explain=False,
        workers=1,
        log=lambda *_: None,
    )


@pytest.mark.slow
def test_demo_text_with_lora(tmp_path):
    run_demo(
        tmp_path / "demo",
        modalities=["text"],
        methods=["daam", "linear"],
        folds=2,
        epochs=2,
        sample_scale=0.08,
        cache_dir=tmp_path / "cache",
        lora_modalities=["text"],
        log=lambda *_: None,
    )
    results = json.loads((tmp_path / "demo" / "results.json").read_text())
    assert "lora_r8" in results["text"]


def test_demo_refuses_foreign_folder_and_bad_names(tmp_path, capsys):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    assert main(["demo", "--out", str(tmp_path / "mine")]) == 2
    assert "not written by the demo" in capsys.readouterr().err
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"
    assert main(["demo", "--out", str(tmp_path / "x"), "--modalities", "smell"]) == 2
    assert "unknown modality" in capsys.readouterr().err
    assert main(["demo", "--out", str(tmp_path / "y"), "--folds", "1"]) == 2
