"""Heads, training runs, resume, adapters and the CLI on real MiniLM features of Debian fortunes."""

import json

import pytest
import torch

import densattn.train.loop as loop
from densattn.adapters import DensityAdapterModel, load_adapter
from densattn.cli import main
from densattn.heads import DensityHead, LinearProbe, build_head, count_parameters, near_square
from densattn.train import TrainConfig, run_experiment
from densattn.train.metrics import focal_loss

FAST = TrainConfig(epochs=4, batch_size=32, early_stopping=3)


CONV = (7 * 16 * 9 + 16) + (16 * 16 * 9 + 16)  # the two 3x3 convolutions over (L=7, 16, 24)
CLASSIFIER = 16 * 16 * 24 * 4 + 4
MHA = 4 * 384 * 384 + 4 * 384  # in_proj (q, k, v) + out_proj, with biases
GQA = 3 * (384 * 384 + 384) + 2 * (384 * 96 + 96)  # in, q, out projections; k, v to 2 kv heads of 48
#: head -> (parameters without the classifier, parameters of the classifier) on (7, 384) features, 4 classes
EXPECTED = {
    "daam": (CONV + 2 * 384, CLASSIFIER),
    "gqdaam": (CONV + 2 * 384 + GQA, CLASSIFIER),
    "mha": (CONV + MHA, CLASSIFIER),
    "mha_bn": (CONV + MHA + 2 * 384, CLASSIFIER),
    "conv": (CONV, CLASSIFIER),
    "pool": (7, 384 * 128 + 128 + 128 * 4 + 4),
    "linear": (7 * 384 * 4 + 7 * 4, 0),  # while selecting, one probe per layer and no classifier yet
}


@pytest.mark.parametrize("head", sorted(EXPECTED))
def test_every_head_runs_and_counts_parameters(head):
    model = build_head(head, 7, 384, 4)
    out = model(torch.randn(5, 7, 384))
    assert out.shape == ((5, 7, 4) if head == "linear" else (5, 4))
    without, classifier = EXPECTED[head]
    assert count_parameters(model) == {
        "trainable_params": without + classifier,
        "trainable_params_without_classifier": without,
    }


def test_near_square_and_daam_head_count():
    assert near_square(384) == (16, 24) and near_square(320) == (16, 20)
    assert DensityHead(16, 320, 3).attention.num_heads == 8
    assert DensityHead(7, 384, 3).attention.num_heads == 1
    daam = count_parameters(DensityHead(7, 384, 3))["trainable_params"]
    conv = count_parameters(DensityHead(7, 384, 3, attention="none"))["trainable_params"]
    assert daam - conv == 2 * 384  # the paper preset adds 2 parameters per feature and head


def test_focal_loss_matches_formula():
    logits, target = torch.randn(6, 3), torch.tensor([0, 1, 2, 0, 1, 2])
    p = torch.softmax(logits, -1)[torch.arange(6), target]
    assert torch.allclose(focal_loss(logits, target), (-0.25 * (1 - p) ** 2.5 * torch.log(p)).mean())


def test_run_writes_outputs_and_adapter_round_trip(text_features, tmp_path):
    metrics = run_experiment(text_features, head="daam", out=tmp_path / "run", folds=2, train_config=FAST)
    for name in (
        "config.json",
        "metrics.json",
        "metrics.csv",
        "adapter_model.safetensors",
        "adapter_config.json",
        "curves.png",
        "confusion.png",
    ):
        assert (tmp_path / "run" / name).exists(), name
    for key in (
        "accuracy_mean",
        "accuracy_std",
        "macro_f1_mean",
        "trainable_params",
        "trainable_params_without_classifier",
        "folds",
    ):
        assert key in metrics
    fold = metrics["folds"][0]
    assert {"accuracy", "macro_f1", "per_class_f1", "confusion_matrix"} <= set(fold)
    assert metrics["accuracy_mean"] > 0.3
    learned = metrics["daam_parameters"]
    assert len(learned["per_fold_summary"]) == 2 and learned["fold0"]["modules"][0]["preset"] == "paper"
    assert (tmp_path / "run" / "daam_parameters.png").exists()
    model = DensityAdapterModel.from_pretrained(tmp_path / "run")
    again = DensityAdapterModel.from_pretrained(tmp_path / "run")
    x = text_features.features[:16]
    assert torch.equal(model(x), again(x))
    assert not any(p.requires_grad for p in model.parameters())
    fold0 = DensityAdapterModel.from_pretrained(tmp_path / "run" / "folds" / "0" / "adapter")
    assert torch.equal(model(x), fold0(x))


def test_linear_probe_selects_a_layer_and_reloads(text_features, tmp_path):
    metrics = run_experiment(text_features, head="linear", out=tmp_path / "lin", folds=2, train_config=FAST)
    layer = metrics["folds"][0]["selected_layer"]
    assert metrics["trainable_params"] == 384 * 4 + 4  # one probe kept
    model = load_adapter(tmp_path / "lin")
    assert isinstance(model.head, LinearProbe) and int(model.head.selected) == layer
    assert model.get_config().head_options == {"layer": layer}  # derived from the module, not patched
    x = text_features.features[:16]
    z = (x[:, layer] - model.head.input_norm.mean[layer]) / model.head.input_norm.std[layer]
    torch.testing.assert_close(model(x), z @ model.head.classifier.weight.T + model.head.classifier.bias)


class Interrupted(Exception):
    """Stands in for a kill after a checkpoint was written."""


def test_resume_equals_uninterrupted(text_features, tmp_path, monkeypatch):
    cfg = TrainConfig(epochs=5, batch_size=32, early_stopping=10)
    full = run_experiment(text_features, head="daam", out=tmp_path / "full", folds=2, train_config=cfg, plots=False)
    save = loop.atomic_torch_save

    def save_then_stop(state, path):  # fold 1 stops right after its epoch-2 checkpoint
        save(state, path)
        if path.parent.name == "1" and state["epoch"] == 2:
            raise Interrupted

    monkeypatch.setattr(loop, "atomic_torch_save", save_then_stop)
    with pytest.raises(Interrupted):
        run_experiment(text_features, head="daam", out=tmp_path / "part", folds=2, train_config=cfg, plots=False)
    monkeypatch.undo()
    assert (tmp_path / "part" / "folds" / "0" / "result.json").exists()
    assert (tmp_path / "part" / "folds" / "1" / "state.pt").exists()
    with pytest.raises(ValueError, match="--resume"):
        run_experiment(text_features, head="daam", out=tmp_path / "part", folds=2, train_config=cfg)
    resumed = run_experiment(
        text_features, head="daam", out=tmp_path / "part", folds=2, train_config=cfg, plots=False, resume=True
    )
    for a, b in zip(full["folds"], resumed["folds"]):
        assert a["accuracy"] == b["accuracy"] and a["confusion_matrix"] == b["confusion_matrix"]
        assert a["best_epoch"] == b["best_epoch"] and a["best_val_accuracy"] == b["best_val_accuracy"]
    x = text_features.features[:8]
    assert torch.equal(
        DensityAdapterModel.from_pretrained(tmp_path / "full")(x),
        DensityAdapterModel.from_pretrained(tmp_path / "part")(x),
    )


def test_resume_with_other_settings_is_refused(text_features, tmp_path):
    run_experiment(text_features, head="pool", out=tmp_path / "r", folds=2, train_config=FAST, plots=False)
    with pytest.raises(ValueError, match="different configuration"):
        run_experiment(text_features, head="conv", out=tmp_path / "r", folds=2, train_config=FAST, resume=True)


def test_cli_train_and_evaluate(tmp_path, capsys, text_features):
    cache = text_features.manifest  # the session fixture already filled a cache; use a fresh one here
    del cache
    out = tmp_path / "cli"
    code = main(
        [
            "train",
            "--encoder",
            "minilm",
            "--data",
            "fortunes",
            "--max-samples",
            "60",
            "--head",
            "pool",
            "--folds",
            "2",
            "--epochs",
            "2",
            "--out",
            str(out),
            "--cache-dir",
            str(tmp_path / "c"),
        ]
    )
    written = json.loads((out / "metrics.json").read_text())
    assert code == 0 and written["num_folds"] == 2
    assert written["frozen_params"] == 22_713_216  # every MiniLM weight, none trained by a head
    code = main(
        [
            "evaluate",
            str(out),
            "--encoder",
            "minilm",
            "--data",
            "fortunes",
            "--max-samples",
            "30",
            "--seed",
            "1",
            "--cache-dir",
            str(tmp_path / "c"),
        ]
    )
    assert code == 0 and "accuracy" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--folds", "zero"], "--folds must be a positive integer"),
        (["--folds", "0"], "--folds must be >= 1"),
        (["--data", "nope"], "nope"),
        (["--encoder", "efficientnet-lite0"], "reads image but --data fortunes is text"),
        (["--max-samples", "1"], "--max-samples must be at least 2"),
    ],
)
def test_cli_errors_name_the_argument(tmp_path, capsys, argv, message):
    base = {
        "--encoder": "minilm",
        "--data": "fortunes",
        "--max-samples": "40",
        "--folds": "2",
        "--epochs": "1",
        "--out": str(tmp_path / "o"),
        "--cache-dir": str(tmp_path / "c"),
    }
    for flag, value in zip(argv[::2], argv[1::2]):
        base[flag] = value
    args = ["train"] + [t for kv in base.items() for t in kv]
    assert main(args) == 2
    assert message in capsys.readouterr().err


def test_cli_refuses_non_empty_out(tmp_path, capsys):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    code = main(
        [
            "train",
            "--encoder",
            "minilm",
            "--data",
            "fortunes",
            "--max-samples",
            "40",
            "--folds",
            "2",
            "--out",
            str(out),
            "--cache-dir",
            str(tmp_path / "c"),
        ]
    )
    assert code == 2 and "not empty" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "user data"


def test_device_option_is_checked():
    assert TrainConfig(device="auto").device in ("cpu", "cuda")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            TrainConfig(device="cuda")
