"""The demo end to end on a small real slice (text), and its input checks."""

import json

import pytest

from densattn.cli import main
from densattn.experiments.demo import END_TO_END, run_demo


def test_demo_small_text_run(tmp_path):
    doc = run_demo(
        tmp_path / "demo",
        modalities=["text"],
        methods=["daam", "conv", "linear"],
        folds=2,
        epochs=2,
        sample_scale=0.08,
        cache_dir=tmp_path / "cache",
        end_to_end_modalities=[],
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
        end_to_end_modalities=[],
        explain=False,
        workers=1,
        log=lambda *_: None,
    )


@pytest.mark.slow
def test_demo_text_with_every_end_to_end_method(tmp_path):
    run_demo(
        tmp_path / "demo",
        modalities=["text"],
        methods=["daam", "linear"],
        folds=2,
        epochs=2,
        sample_scale=0.08,
        cache_dir=tmp_path / "cache",
        end_to_end_modalities=["text"],
        log=lambda *_: None,
    )
    results = json.loads((tmp_path / "demo" / "results.json").read_text())
    assert list(results["text"]) == ["daam", "linear", "lora_r8", "ia3", "daam_peft"]
    rows = results["text"]
    # trainable parameters without the classifier are the tuners' own: LoRA r=8 on query/value of MiniLM's 6 layers
    # (8 (384 + 384) x 2 x 6); IA3 on the outputs of key/value (384 each) and the inputs of both `output.dense`
    # layers (384 in attention, 1536 in the FFN); DAAM gates on the 12 attention/FFN outputs (docs/peft.md's count)
    assert rows["lora_r8"]["trainable_params_without_classifier"] == 8 * (384 + 384) * 2 * 6
    assert rows["ia3"]["trainable_params_without_classifier"] == (384 + 384 + 384 + 1536) * 6
    assert rows["daam_peft"]["trainable_params_without_classifier"] == 4632
    for name in ("lora_r8", "ia3", "daam_peft"):
        config = json.loads((tmp_path / "demo" / "text" / name / "config.json").read_text())
        assert config["method"] == END_TO_END[name].tuner
        assert config["train"]["lr"] == END_TO_END[name].lr and config["train"]["epochs"] == 3
    assert {r["method"] for r in results["_paired_vs_daam"]["text"]} == {"linear", "lora_r8", "ia3", "daam_peft"}
    assert "| daam_peft |" in (tmp_path / "demo" / "results.md").read_text()


def test_demo_refuses_foreign_folder_and_bad_names(tmp_path, capsys):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    assert main(["demo", "--out", str(tmp_path / "mine")]) == 2
    assert "not written by the demo" in capsys.readouterr().err
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"
    assert main(["demo", "--out", str(tmp_path / "x"), "--modalities", "smell"]) == 2
    assert "unknown modality" in capsys.readouterr().err
    assert main(["demo", "--out", str(tmp_path / "z"), "--end-to-end-methods", "lora_r4"]) == 2
    assert "unknown method 'lora_r4'" in capsys.readouterr().err
    assert main(["demo", "--out", str(tmp_path / "y"), "--folds", "1"]) == 2
