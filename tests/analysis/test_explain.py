"""Explanations of runs: every head kind on the synthetic task, runs of every adapter kind, ablation and the CLI."""

from __future__ import annotations

import json

import pytest
import torch

from densattn.analysis.ablation import ablate_run
from densattn.analysis.attribution import occlusion
from densattn.analysis.explain import explain
from densattn.analysis.runs import ExplainableRun, FusionLayers
from densattn.analysis.sanity import one_informative_layer, sanity_check, sanity_features
from densattn.data.cache import FeatureSet
from densattn.heads import HEAD_TYPES, build_head
from densattn.train import TrainConfig, run_experiment, run_fusion_experiment, train_model


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("head", HEAD_TYPES)
def test_occlusion_ranks_the_informative_layer_first_for_every_head_kind(head):
    x, y = one_informative_layer(240, dim=8, layer=2, seed=0)
    torch.manual_seed(0)
    model = build_head(head, 4, 8, 3)
    model.set_input_stats(x[:160])
    outcome = train_model(model, x[:160], y[:160], x[160:200], y[160:200], TrainConfig(epochs=10, lr=1e-2, seed=0))
    if getattr(model, "selecting", False):  # the linear probe keeps its best layer, as the runner does
        with torch.no_grad():
            accuracy = (model(x[160:200]).argmax(-1) == y[160:200, None]).float().mean(0)
        model.select_layer(int(accuracy.argmax()))
    assert outcome.best_score > 0.5  # chance is 1/3
    scores = occlusion(model.eval(), x[200:], y[200:], x[:160].mean(0))
    assert scores.ranking()[0] == 2, scores.layer_scores


def _features(n=60, num_layers=4, dim=6) -> FeatureSet:
    return sanity_features(n, num_layers=num_layers, dim=dim, classes=2, layer=1)


def test_explain_every_method_on_a_daam_run(tmp_path):
    fs = _features()
    run_experiment(fs, head="daam", out=tmp_path / "run", train_config=TrainConfig(epochs=2), folds=2, plots=False)
    result = explain(tmp_path / "run", features=fs, folds="all", num_random=4)
    assert result["methods"] == ["if", "occlusion", "gradient", "ig"] and result["folds"] == [0, 1]
    written = ["explanation.json", "faithfulness.md", "deletion_curves.png", "layer_scores.csv", "if_heatmap.png"]
    written += ["layer_share.png", "gradient_map.csv", "gradient_heatmap.png", "ig_heatmap.png"]
    for name in written:
        assert (tmp_path / "run" / "explain" / name).stat().st_size > 0, name
    faith = result["faithfulness"]
    assert set(faith["methods"]) == {"if", "occlusion", "gradient", "ig"} and faith["num_folds"] == 2
    run = ExplainableRun(tmp_path / "run", features=fs)
    assert faith["num_examples"] == len(run.indices("val", 0)) + len(run.indices("val", 1))
    for fold in (0, 1):  # the baseline is what the head's input standardisation subtracts
        torch.testing.assert_close(run.baseline(fold), run.adapter(fold).head.input_norm.mean)
    occ = result["attributions"]["occlusion"]
    assert sorted(occ["ranking"]) == [0, 1, 2, 3] and len(occ["fold_rankings"]) == 2
    saved = json.loads((tmp_path / "run" / "explain" / "explanation.json").read_text())
    assert saved["faithfulness"]["random"]["num_orders"] == 4
    assert "| occlusion |" in (tmp_path / "run" / "explain" / "faithfulness.md").read_text()


def test_explain_heads_without_density_weights(tmp_path):
    fs = _features()
    run_experiment(fs, head="mha_bn", out=tmp_path / "run", train_config=TrainConfig(epochs=1), folds=2, plots=False)
    result = explain(tmp_path / "run", features=fs, num_random=3, plots=False)
    assert result["methods"] == ["occlusion", "gradient", "ig"]  # "all" leaves the IF out
    with pytest.raises(ValueError, match="no density"):
        explain(tmp_path / "run", method="if", features=fs)
    with pytest.raises(ValueError, match="method must be"):
        explain(tmp_path / "run", method="saliency", features=fs)
    with pytest.raises(ValueError, match="folds must be"):
        explain(tmp_path / "run", method="occlusion", features=fs, folds=5)


def test_explain_a_fusion_run(tmp_path):
    a = _features(n=60, num_layers=3, dim=6)
    b = FeatureSet(torch.randn(60, 2, 4), a.labels, a.classes, a.ids)
    cfg = TrainConfig(epochs=1)
    run_fusion_experiment([a, b], method="concat", out=tmp_path / "fusion", train_config=cfg, folds=2, plots=False)
    run = ExplainableRun(tmp_path / "fusion", features=[a, b])
    assert run.kind == "fusion" and run.num_layers == 5 and run.layer_names[3] == "m1:L0"
    x, _ = run.data("val", 0)
    assert x.shape[1:] == (5, 6) and torch.all(x[:, 3:, 4:] == 0)  # the narrower encoder is zero-padded
    packed = torch.cat([x[:, :3].reshape(len(x), -1), x[:, 3:, :4].reshape(len(x), -1)], dim=1)
    torch.testing.assert_close(run.model(0)(x), run.adapter(0)(packed))
    result = explain(tmp_path / "fusion", features=[a, b], num_random=3, plots=False)
    assert result["kind"] == "fusion" and result["methods"] == ["occlusion", "gradient", "ig"]
    assert isinstance(run.model(0), FusionLayers)
    with pytest.raises(ValueError, match="head runs only"):
        ablate_run(tmp_path / "fusion", top_k=2, method="occlusion", features=a)


def test_end_to_end_runs_are_refused_clearly(tmp_path):
    """A LoRA run's adapter is the tuned encoder: nothing per layer to attribute; refused before loading it."""
    from densattn.cli import main

    run = tmp_path / "lora"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"kind": "end_to_end", "method": "lora", "folds": 2}))
    (run / "adapter_config.json").write_text(json.dumps({"type": "lora"}))
    with pytest.raises(ValueError, match="end-to-end 'lora' run"):
        explain(run)
    assert main(["explain", str(run)]) == 2
    assert main(["ablate", str(run), "--top-k", "2"]) == 2


def test_ablation_of_every_method_trains_each_layer_set_once(tmp_path):
    fs = _features()
    run_experiment(fs, head="daam", out=tmp_path / "run", train_config=TrainConfig(epochs=2), folds=2, plots=False)
    results = ablate_run(tmp_path / "run", top_k=2, method=["if", "occlusion"], features=fs)
    trained = sorted(p.name for p in (tmp_path / "run" / "ablation").glob("layers-*"))
    chosen = {tuple(results["methods"][m][w]["layers"]) for m in ("if", "occlusion") for w in ("top", "bottom")}
    assert trained == sorted("layers-" + "-".join(map(str, c)) for c in chosen)
    for m in ("if", "occlusion"):
        entry = results["methods"][m]
        assert entry["top"]["layers"] == sorted(entry["ranking"][:2])
        assert set(entry["top"]["layers"]).isdisjoint(entry["bottom"]["layers"])
        assert len(entry["fold_rankings"]) == 2 and entry["fold_top_k_overlap"][0] == 1.0
    sub = json.loads((tmp_path / "run" / "ablation" / trained[0] / "config.json").read_text())
    assert sub["folds"] == 2 and sub["num_layers"] == 2
    md = (tmp_path / "run" / "ablation" / "ablation.md").read_text()
    assert "top-2 occlusion" in md and "bottom-2 if" in md
    with pytest.raises(ValueError, match="top-k"):
        ablate_run(tmp_path / "run", top_k=4, features=fs)


def test_cli_explain_and_its_argument_checks(tmp_path, capsys, monkeypatch):
    from densattn.cli import main

    fs = _features()
    run_experiment(fs, head="pool", out=tmp_path / "run", train_config=TrainConfig(epochs=1), folds=2, plots=False)
    monkeypatch.setattr("densattn.analysis.runs.features_for_run", lambda run, cache_dir=None: fs)
    assert main(["explain", str(tmp_path / "run"), "--random-orders", "3", "--folds", "0,1"]) == 0
    out = capsys.readouterr().out
    assert "occlusion (nats):" in out and "| random (3 orders) |" in out and "deletion_curves.png" in out
    assert main(["explain", str(tmp_path / "run"), "--method", "if"]) == 2
    assert "no density" in capsys.readouterr().err
    for argv, message in [
        (["explain"], "give a run directory"),
        (["explain", str(tmp_path / "run"), "--sanity"], "either RUN or --sanity"),
        (["explain", str(tmp_path / "run"), "--retrain"], "--retrain needs --top-k"),
        (["explain", str(tmp_path / "run"), "--random-orders", "1"], "--random-orders"),
        (["explain", str(tmp_path / "run"), "--folds", "x"], "--folds"),
    ]:
        assert main(argv) == 2
        assert message in capsys.readouterr().err


def test_cli_sanity_on_two_heads(tmp_path, capsys):
    from densattn.cli import main

    assert main(["explain", "--sanity", "--heads", "conv,linear", "--method", "occlusion", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "occlusion: recovers the informative layer for every head (2/2)" in out
    saved = json.loads((tmp_path / "sanity.json").read_text())
    assert saved["recovered"]["occlusion"] == ["conv", "linear"] and (tmp_path / "sanity.md").exists()


@pytest.mark.slow
def test_sanity_check_every_head_and_method():
    """The documented check: occlusion and IG recover the informative layer for every head; the IF does not."""
    result = sanity_check()
    for method in ("occlusion", "ig"):
        assert result["recovered"][method] == list(HEAD_TYPES), result
    assert result["recovered"]["if"] == [], result
    assert all(result["heads"][h]["val_accuracy"] > 0.9 for h in HEAD_TYPES), result
