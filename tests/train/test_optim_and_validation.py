"""Weight decay only on weight matrices (never on DAAM offsets/spreads, norms, biases), recorded in the run config;
and the CLI checks every argument before it loads an encoder or extracts anything."""

from __future__ import annotations

import json

import pytest
import torch

import densattn.data.cache as cache
import densattn.encoders as encoders
from densattn.cli import main
from densattn.heads import build_head
from densattn.train import TrainConfig, run_experiment
from densattn.train.optim import optimizer_groups


def test_daam_parameters_norms_and_biases_are_not_decayed():
    head = build_head("mha_bn", 4, 16, 3)
    groups = {g["name"]: g for g in optimizer_groups(head, lr=1e-3, weight_decay=0.1)}
    assert groups["decay"]["weight_decay"] == 0.1 and groups["no_decay"]["weight_decay"] == 0.0
    decayed = set(groups["decay"]["param_names"])
    assert all(name.endswith("weight") for name in decayed)
    assert "norm.weight" not in decayed and "norm.bias" not in decayed  # BatchNorm
    daam = build_head("daam", 4, 16, 3, preset="mixture", num_gaussians=2)
    names = {g["name"]: set(g["param_names"]) for g in optimizer_groups(daam, lr=1e-3, weight_decay=0.1)}
    assert {"attention.mean_offset", "attention.spread", "attention.mixture_logits"} <= names["no_decay"]
    assert "classifier.2.weight" in names["decay"] and "conv.0.weight" in names["decay"]


def test_decay_leaves_the_spread_where_the_loss_leaves_it():
    """With no gradient on the gate, AdamW with decay must not pull DAAM's spread toward 0 (it used to)."""
    head = build_head("daam", 4, 16, 3)
    optimizer = torch.optim.AdamW(optimizer_groups(head, lr=0.1, weight_decay=0.5))
    conv = head.conv[0].weight.detach().clone()
    for _ in range(5):
        optimizer.zero_grad()
        (0.0 * head(torch.randn(8, 4, 16)).sum()).backward()
        optimizer.step()
    assert torch.equal(head.attention.spread, torch.full_like(head.attention.spread, 2.0))
    assert torch.equal(head.attention.mean_offset, torch.zeros_like(head.attention.mean_offset))
    torch.testing.assert_close(head.conv[0].weight, conv * (1 - 0.1 * 0.5) ** 5)  # decoupled decay on weights


def test_run_config_records_the_groups(tmp_path):
    from densattn.data.cache import FeatureSet

    fs = FeatureSet(torch.randn(40, 4, 6), torch.arange(40) % 2, ["a", "b"], [str(i) for i in range(40)])
    run_experiment(fs, head="daam", out=tmp_path / "r", folds=2, plots=False, train_config=TrainConfig(epochs=1))
    groups = json.loads((tmp_path / "r" / "config.json").read_text())["optimizer_groups"]
    by_name = {g["name"]: g for g in groups}
    assert "head.attention.spread" in by_name["no_decay"]["param_names"]
    assert by_name["decay"]["weight_decay"] == 0.01 and by_name["no_decay"]["weight_decay"] == 0.0


@pytest.fixture
def no_work(monkeypatch):
    """Fail the test if an encoder is loaded or features are extracted."""

    def refuse(*args, **kwargs):
        raise AssertionError("work was done before the arguments were checked")

    monkeypatch.setattr(encoders, "get_encoder", refuse)
    monkeypatch.setattr(cache, "cached_features", refuse)


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--head", "conv", "--preset", "paper"], "--preset do(es) not apply to --head conv"),
        (["--head", "mha", "--num-gaussians", "2"], "--num-gaussians do(es) not apply to --head mha"),
        (["--method", "lora", "--preset", "paper"], "--preset apply to heads, not to --method lora"),
        (["--method", "ia3", "--rank", "4"], "--rank apply to --method lora|loraplus, not ia3"),
        (["--rank", "4"], "--rank apply to --method lora|loraplus|ia3, not to heads"),
        (["--lr", "0"], "--lr must be a finite number > 0"),
        (["--batch-size", "0"], "--batch-size must be a positive int"),
        (["--device", "tpu"], "--device must be 'cpu', 'cuda', 'cuda:N' or 'auto'"),
        (["--folds", "0"], "--folds must be >= 1"),
    ],
)
def test_cli_refuses_bad_flags_before_any_work(tmp_path, capsys, no_work, extra, message):
    argv = ["train", "--encoder", "minilm", "--data", "fortunes", "--out", str(tmp_path / "run"), *extra]
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # nothing written


def test_cli_refuses_busy_out_before_loading_the_encoder(tmp_path, capsys, no_work):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("mine")
    argv = ["train", "--encoder", "minilm", "--data", "fortunes", "--out", str(tmp_path / "run")]
    assert main(argv) == 2
    assert "not empty" in capsys.readouterr().err
    assert (tmp_path / "run" / "notes.txt").read_text() == "mine"


def test_cli_checks_head_count_against_the_encoder_before_extracting(tmp_path, capsys, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("features were extracted before the head options were checked")

    monkeypatch.setattr(cache, "cached_features", refuse)
    argv = ["train", "--encoder", "minilm", "--data", "fortunes", "--max-samples", "20", "--out", str(tmp_path / "r")]
    assert main(argv + ["--head", "gqdaam", "--num-heads", "2"]) == 2  # 7 MiniLM layers: 2 heads do not divide
    assert "num_heads=2 does not split the 7 layers" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
