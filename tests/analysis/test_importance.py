"""Importance Factor: the accumulator against literal references, every DAAM preset, runs, ablation and the CLI."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from densattn.analysis.ablation import ablate_run, restrict_layers
from densattn.analysis.importance import (
    ImportanceFactor,
    density_weights,
    explain_run,
    importance_of,
    real_features,
    run_split_indices,
)
from densattn.analysis.sanity import one_informative_layer
from densattn.data.cache import FeatureSet
from densattn.heads import build_head
from densattn.train import TrainConfig, run_experiment, train_model


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors on a busy 2-core machine: one thread is much faster
    yield
    torch.set_num_threads(threads)


def reference_if(maps: torch.Tensor) -> torch.Tensor:
    """Literal IF: mean over all examples at once, then (DA - min) / (max - min)."""
    da = maps.double().mean(0)
    lo, hi = da.min(), da.max()
    return (da - lo) / (hi - lo)


@settings(max_examples=30, deadline=None)
@given(
    st.integers(1, 5),
    st.integers(1, 6),
    st.lists(st.integers(1, 7), min_size=1, max_size=5),
    st.integers(0, 2**16),
)
def test_streaming_mean_equals_mean_over_all_batches(layers, dim, batch_sizes, seed):
    maps = torch.rand(sum(batch_sizes), layers, dim, generator=torch.Generator().manual_seed(seed))
    acc = ImportanceFactor(layers, dim)
    for chunk in torch.split(maps, batch_sizes):
        acc.update(chunk)
    assert acc.count == len(maps)
    torch.testing.assert_close(acc.mean_weights(), maps.double().mean(0), rtol=1e-12, atol=1e-12)
    da = maps.double().mean(0)
    if da.max() > da.min():
        torch.testing.assert_close(acc.importance(), reference_if(maps))
    else:  # a constant map (e.g. one layer, one feature): the IF is all zeros, with a warning
        with pytest.warns(UserWarning, match="constant"):
            assert torch.count_nonzero(acc.importance()) == 0


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 5), st.integers(2, 6), st.integers(0, 2**16))
def test_importance_in_unit_interval_with_min_0_and_max_1(layers, dim, seed):
    maps = torch.rand(4, layers, dim, generator=torch.Generator().manual_seed(seed))
    acc = ImportanceFactor(layers, dim)
    acc.update(maps)
    imp = acc.importance()
    assert imp.min() == 0 and imp.max() == 1
    assert ((imp >= 0) & (imp <= 1)).all()


def test_constant_map_gives_zeros_and_warns():
    acc = ImportanceFactor(3, 2)
    acc.update(torch.full((5, 3, 2), 0.7))
    with pytest.warns(UserWarning, match="constant"):
        imp = acc.importance()
    assert torch.equal(imp, torch.zeros(3, 2, dtype=torch.float64))


def test_layer_share_and_ranking_follow_the_literal_definition():
    maps = torch.rand(9, 5, 4, generator=torch.Generator().manual_seed(3))
    acc = ImportanceFactor(5, 4)
    acc.update(maps[:4])
    acc.update(maps[4:])
    da = maps.double().mean(0)
    share = [float(da[i].sum() / da.sum()) for i in range(5)]
    torch.testing.assert_close(acc.layer_share(), torch.tensor(share, dtype=torch.float64))
    assert acc.layer_ranking() == sorted(range(5), key=lambda i: -share[i])
    imp = reference_if(maps)
    assert acc.layer_ranking() == sorted(range(5), key=lambda i: -float(imp[i].mean()))


def test_per_head_and_feature_mask():
    maps = torch.rand(6, 4, 3, generator=torch.Generator().manual_seed(1))
    acc = ImportanceFactor(4, 3, head_sizes=[2, 2])
    acc.update(maps)
    per_head = acc.importance(per_head=True)
    for chunk in (per_head[:2], per_head[2:]):
        assert chunk.min() == 0 and chunk.max() == 1
    torch.testing.assert_close(per_head[:2], reference_if(maps[:, :2]))
    mask = torch.ones(4, 3, dtype=torch.bool)
    mask[0, 2] = False
    masked = ImportanceFactor(4, 3, feature_mask=mask)
    maps[:, 0, 2] = 5.0  # a padded feature with a huge weight must not set the scale
    masked.update(maps)
    imp = masked.importance()
    assert imp[0, 2] == 0 and imp[mask].max() == 1 and imp[mask].min() == 0
    da = maps.double().mean(0)
    torch.testing.assert_close(masked.layer_share()[0] / masked.layer_share()[1], da[0, :2].mean() / da[1].mean())


def test_bad_input_raises():
    acc = ImportanceFactor(3, 2)
    with pytest.raises(ValueError, match="no weights"):
        acc.importance()
    with pytest.raises(ValueError, match="weights must be"):
        acc.update(torch.rand(2, 2, 3))
    with pytest.raises(ValueError, match="head_sizes"):
        ImportanceFactor(3, 2, head_sizes=[2, 2])


@pytest.mark.parametrize(
    ("head", "options"),
    [
        ("daam", {"preset": "paper"}),
        ("daam", {"preset": "paper", "num_heads": 2}),
        ("daam", {"preset": "mixture_of_densities", "num_gaussians": 3}),
        ("daam", {"preset": "mixture", "num_gaussians": 2}),
        ("gqdaam", {}),
    ],
)
def test_every_preset_accumulates_the_heads_own_weights(head, options):
    torch.manual_seed(0)
    model = build_head(head, 4, 8, 3, **options).eval()
    x = torch.randn(10, 4, 8)
    model.set_input_stats(x)
    weights = density_weights(model, x)
    density = model.attention if head == "daam" else model.attention.density
    _, expected = density(model.input_norm(x), need_weights=True)
    torch.testing.assert_close(weights, expected)
    if head == "daam":
        torch.testing.assert_close(weights, model.attention_weights(x))
    acc = importance_of(model, x, batch_size=3)
    torch.testing.assert_close(acc.mean_weights(), expected.double().mean(0))
    assert acc.head_sizes == [4 // density.num_heads] * density.num_heads
    assert torch.isfinite(acc.importance()).all()


@pytest.mark.parametrize("head", ["mha", "conv", "pool", "linear"])
def test_heads_without_density_weights_are_rejected(head):
    with pytest.raises(ValueError, match="no density"):
        importance_of(build_head(head, 4, 8, 3), torch.randn(2, 4, 8))


def test_trained_head_on_one_informative_layer():
    """The DAAM gate of a layer is a density of its deviation from the other layers of the head, with parameters
    shared by those layers. Where the label-free layers agree with each other and the label-carrying layer does not,
    that layer is the outlier: measured here, a trained head gives it the *lowest* weight (it ranks last, not first),
    for every preset, the same as before training (the IF ranks typicality, not label information)."""
    x, y = one_informative_layer(300, layer=2)
    for preset in ("paper", "mixture_of_densities"):
        torch.manual_seed(0)
        head = build_head("daam", 4, 16, 3, preset=preset, num_heads=1)
        head.set_input_stats(x[:200])
        before = importance_of(head, x[200:]).layer_ranking()
        outcome = train_model(head, x[:200], y[:200], x[200:250], y[200:250], TrainConfig(epochs=30, seed=0))
        assert outcome.best_score > 0.8  # the head did learn the label (from layer 2)
        after = importance_of(head, x[250:])
        assert after.layer_ranking()[-1] == 2 and before[-1] == 2
        assert after.layer_share()[2] < 0.9 * after.layer_share()[[0, 1, 3]].min()


def _synthetic_features(n=60, num_layers=4, dim=6, seed=0) -> FeatureSet:
    x, y = one_informative_layer(n, num_layers=num_layers, dim=dim, classes=2, layer=1, seed=seed)
    x[:, 0, -1] = 0.0  # a padded (constant) feature
    return FeatureSet(x, y, ["a", "b"], [str(i) for i in range(n)])


def test_explain_run_and_ablation_on_a_tiny_run(tmp_path):
    features = _synthetic_features()
    cfg = TrainConfig(epochs=2, seed=0)
    run_experiment(features, head="daam", out=tmp_path / "run", train_config=cfg, folds=2, plots=False)
    summary = explain_run(tmp_path / "run", split="test", features=features)
    for name in ("if_map.csv", "layer_share.csv", "if_heatmap.png", "layer_share.png", "importance.json"):
        assert (tmp_path / "run" / "explain" / name).stat().st_size > 0
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    idx = run_split_indices(config, features.labels, split="test")
    assert summary["num_examples"] == len(idx) and sorted(summary["layer_ranking"]) == list(range(4))
    assert summary["masked_features"] == 1 and abs(sum(summary["layer_share"]) - 1) < 1e-9
    rows = (tmp_path / "run" / "explain" / "if_map.csv").read_text().splitlines()
    assert len(rows) == 5 and rows[0].startswith("layer,f0")
    results = ablate_run(tmp_path / "run", top_k=2, features=features)
    top = results["methods"]["if"]["top"]["layers"]
    assert top == sorted(summary_val_top(tmp_path, features, 2))
    assert set(top).isdisjoint(results["methods"]["if"]["bottom"]["layers"])
    for which in ("top", "bottom"):
        layers = results["methods"]["if"][which]["layers"]
        sub = json.loads(
            (tmp_path / "run" / "ablation" / f"layers-{layers[0]}-{layers[1]}" / "config.json").read_text()
        )
        assert sub["folds"] == 2 and sub["train"]["seed"] == 0 and sub["num_layers"] == 2
    assert (tmp_path / "run" / "ablation" / "ablation.md").read_text().count("|") > 10
    with pytest.raises(ValueError, match="top-k"):
        ablate_run(tmp_path / "run", top_k=4, features=features)


def summary_val_top(tmp_path, features, k):
    return explain_run(tmp_path / "run", split="val", out=tmp_path / "val", features=features)["layer_ranking"][:k]


def test_restrict_layers_and_real_features():
    fs = _synthetic_features(n=8)
    sub = restrict_layers(fs, [3, 1])
    torch.testing.assert_close(sub.features, fs.features[:, [3, 1]])
    assert sub.manifest["layers"] == [3, 1]
    with pytest.raises(ValueError, match="distinct"):
        restrict_layers(fs, [1, 1])
    real = real_features(fs.features)
    assert not real[0, -1] and real.sum() == real.numel() - 1


def test_cli_rejects_a_head_without_density_weights(tmp_path, capsys):
    from densattn.cli import main

    features = _synthetic_features()
    run_experiment(
        features, head="pool", out=tmp_path / "run", train_config=TrainConfig(epochs=1), folds=2, plots=False
    )
    assert main(["explain", str(tmp_path / "run"), "--method", "if"]) == 2
    assert "no density" in capsys.readouterr().err
    assert main(["ablate", str(tmp_path / "run"), "--top-k", "2"]) == 2


def test_cli_end_to_end_on_real_text(tmp_path, capsys):
    """`densattn train` on a tiny CSV with MiniLM, then `explain` (features rebuilt from config.json) and `ablate`."""
    from densattn.cli import main

    words = {"pos": ["great", "lovely", "superb", "fine"], "neg": ["awful", "bad", "dreadful", "poor"]}
    lines = ["text,label"] + [f"a {w} film number {i},{c}" for c, ws in words.items() for i, w in enumerate(ws * 3)]
    (tmp_path / "reviews.csv").write_text("\n".join(lines) + "\n")
    run = tmp_path / "run"
    common = ["--cache-dir", str(tmp_path / "cache")]
    argv = ["train", "--encoder", "minilm", "--data", f"csv:{tmp_path / 'reviews.csv'}", "--head", "daam"]
    assert main([*argv, "--folds", "2", "--epochs", "2", "--out", str(run), *common]) == 0
    warnings.simplefilter("ignore")
    assert main(["explain", str(run), "--split", "test", "--random-orders", "3", *common]) == 0
    out = capsys.readouterr().out
    assert "if (share of DAAM weight): L" in out and "| occlusion |" in out
    assert (run / "explain" / "if_heatmap.png").exists() and (run / "explain" / "deletion_curves.png").exists()
    assert main(["ablate", str(run), "--top-k", "3", *common]) == 0
    assert json.loads((run / "ablation" / "ablation.json").read_text())["top_k"] == 3
