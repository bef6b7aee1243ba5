"""Training on several ranks (gloo, forked processes as torchrun would start them).

Heads: each rank trains whole folds and rank 0 writes the run; metrics and adapters equal a one-process run's, and a
run resumes with another number of ranks. Data-parallel training (the loop under DDP): the same updates as one
process on the whole batch, an exact resume on the same number of ranks and a clear refusal on another. End to end:
a 2-rank LoRA run on a tiny BERT finishes and its adapter reloads. The run directory: rank 0 locks and validates,
every rank gets the same verdict, and a directory the ranks do not share is refused."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from torch import nn

from densattn.adapters import load_adapter
from densattn.data.cache import FeatureSet
from densattn.distributed import current
from densattn.encoders import get_encoder
from densattn.pipeline import encoder_record
from densattn.train import Inputs, RunDirectory, TrainConfig, run_experiment, run_fusion_experiment, train_model
from densattn.train.end_to_end import run_end_to_end_experiment
from densattn.train.loop import load_checkpoint

TIMING = {"seconds_per_epoch", "train_seconds"}


def _without_timing(obj):
    if isinstance(obj, dict):
        return {k: _without_timing(v) for k, v in obj.items() if k not in TIMING}
    if isinstance(obj, list):
        return [_without_timing(v) for v in obj]
    return obj


@pytest.fixture(scope="module")
def features() -> FeatureSet:
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(72) % 3
    x = torch.randn(72, 4, 6, generator=g) + 0.8 * labels[:, None, None].float()  # learnable, not trivial
    return FeatureSet(x, labels, ["a", "b", "c"], [str(i) for i in range(72)])


def _heads(rank, features, out, resume=False):
    config = TrainConfig(epochs=4, batch_size=16, seed=3)
    return run_experiment(features, head="daam", out=out, folds=3, train_config=config, resume=resume, plots=False)


@pytest.fixture(scope="module")
def one_rank_run(run_ranks, features, tmp_path_factory):
    out = tmp_path_factory.mktemp("heads") / "one"
    [metrics] = run_ranks(_heads, 1, features, out)
    return out, metrics


def test_two_ranks_train_folds_with_the_metrics_of_one(run_ranks, features, one_rank_run, tmp_path):
    one_dir, one = one_rank_run
    m0, m1 = run_ranks(_heads, 2, features, tmp_path / "two")
    assert m0 == m1  # every rank returns rank 0's metrics
    assert _without_timing(m0) == _without_timing(one)  # exactly: folds are seeded independently
    written = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert _without_timing(written) == _without_timing(json.loads((one_dir / "metrics.json").read_text()))
    for name in ("adapter_model.safetensors", "folds/1/adapter/adapter_model.safetensors", "config.json"):
        assert (tmp_path / "two" / name).read_bytes() == (one_dir / name).read_bytes()
    assert not list((tmp_path / "two").glob("folds/*/state.pt")) and not list((tmp_path / "two").glob(".densattn-*"))


def test_a_one_rank_run_resumes_on_two_ranks(run_ranks, features, one_rank_run, tmp_path):
    one_dir, one = one_rank_run
    run = tmp_path / "run"
    shutil.copytree(one_dir, run)
    for name in ("metrics.json", "folds/1/result.json", "folds/2/result.json"):  # interrupted after fold 0
        (run / name).unlink()
    m0, _ = run_ranks(_heads, 2, features, run, True)
    assert _without_timing(m0) == _without_timing(one)
    assert (run / "folds/2/adapter/adapter_model.safetensors").read_bytes() == (
        one_dir / "folds/2/adapter/adapter_model.safetensors"
    ).read_bytes()


def _fusion(rank, features, out):
    g = torch.Generator().manual_seed(5)
    other = FeatureSet(torch.randn(72, 3, 5, generator=g), features.labels, features.classes, list(features.ids))
    config = TrainConfig(epochs=3, batch_size=16, seed=1)
    return run_fusion_experiment([features, other], method="concat", out=out, folds=2, train_config=config, plots=False)


def test_two_ranks_train_fusion_folds_with_the_metrics_of_one(run_ranks, features, tmp_path):
    [one] = run_ranks(_fusion, 1, features, tmp_path / "one")
    two, _ = run_ranks(_fusion, 2, features, tmp_path / "two")
    assert _without_timing(two) == _without_timing(one) and two["method"] == "fusion-concat"


def _open_run(rank, base, layout):
    out = base / (f"node{rank}" if layout == "private" else "run")
    try:
        with RunDirectory(out) as run:
            return ("ok", run.dist.rank, run._lock_fd is not None)
    except ValueError as err:
        return ("error", type(err).__name__, str(err))


def test_run_directory_is_locked_by_rank_zero_only(run_ranks, tmp_path):
    r0, r1 = run_ranks(_open_run, 2, tmp_path, "shared")
    assert r0 == ("ok", 0, True) and r1 == ("ok", 1, False)  # no second lock to fight over


def test_non_empty_out_is_refused_on_every_rank_in_rank_zeros_words(run_ranks, tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "other.txt").write_text("x")
    r0, r1 = run_ranks(_open_run, 2, tmp_path, "shared")
    assert r0[0] == r1[0] == "error" and r0[2] == r1[2] and "is not empty" in r0[2]


def test_out_not_shared_between_ranks_is_refused(run_ranks, tmp_path):
    r0, r1 = run_ranks(_open_run, 2, tmp_path, "private")
    for r in (r0, r1):
        assert r[0] == "error" and "--out" in r[2] and "not shared between the ranks" in r[2]


class Mlp(nn.Module):
    def __init__(self, dropout: float = 0.0) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(dropout), nn.Linear(16, 3))

    def forward(self, x):
        return self.net(x)


def _data():
    g = torch.Generator().manual_seed(1)
    y = torch.arange(53) % 3
    x = torch.randn(53, 6, generator=g) + y[:, None].float()
    return Inputs(x[:41]), y[:41], Inputs(x[41:]), y[41:]


def _fit(rank, epochs, dropout, checkpoint=None, resume=False):
    torch.manual_seed(0)
    model = Mlp(dropout)
    train, train_y, val, val_y = _data()
    config = TrainConfig(epochs=epochs, batch_size=9, lr=3e-2, early_stopping=50, seed=4)  # batches of 9 and 5
    result = train_model(
        model, train, train_y, val, val_y, config, checkpoint=checkpoint, resume=resume, dist=current()
    )
    return result.last_state, [h["train_loss"] for h in result.history]


def test_data_parallel_updates_equal_one_process_on_the_whole_batch(run_ranks):
    [(one, one_loss)] = run_ranks(_fit, 1, 3, 0.0)
    (s0, loss0), (s1, loss1) = run_ranks(_fit, 2, 3, 0.0)
    for k in one:
        assert torch.equal(s0[k], s1[k])  # the ranks hold the same model
        torch.testing.assert_close(s0[k], one[k], rtol=1e-5, atol=1e-6)  # only summation order differs
    torch.testing.assert_close(torch.tensor(loss0), torch.tensor(one_loss), rtol=1e-5, atol=1e-6)


def test_data_parallel_resume_is_exact_on_the_same_ranks_and_refused_on_others(run_ranks, tmp_path):
    straight = run_ranks(_fit, 2, 4, 0.3)
    state = tmp_path / "state.pt"
    run_ranks(_fit, 2, 2, 0.3, state)  # "interrupted" after epoch 2: rank 0's checkpoint remains
    saved = load_checkpoint(state)
    assert saved["world_size"] == 2 and len(saved["rank_rng"]) == 2 and saved["epoch"] == 2
    resumed = run_ranks(_fit, 2, 4, 0.3, state, True)
    for (a, loss_a), (b, loss_b) in zip(straight, resumed):
        assert loss_a == loss_b and all(torch.equal(a[k], b[k]) for k in a)  # dropout streams restored per rank
    with pytest.raises(Exception, match=r"written by a run on 2 rank\(s\), this one has 1"):
        run_ranks(_fit, 1, 4, 0.3, state, True)


def _end_to_end(rank, encoder_dir, texts, out, method, options):
    encoder = get_encoder(encoder_dir, max_length=16)
    config = TrainConfig(epochs=2, batch_size=8, lr=5e-3, seed=0)
    return run_end_to_end_experiment(
        encoder,
        list(texts.items),
        texts.labels,
        texts.classes,
        method=method,
        tuner_options=options,
        out=out,
        folds=2,
        train_config=config,
        plots=False,
        encoder_info=encoder_record(encoder, encoder_dir, {"max_length": 16}),
    )


@pytest.mark.parametrize("method,options", [("lora", {"rank": 2, "alpha": 4.0}), ("daam_peft", {})])
def test_two_rank_end_to_end_run_finishes_and_its_adapter_reloads(
    run_ranks, tiny_bert_dir, tiny_texts, tmp_path, method, options
):
    out = tmp_path / method
    m0, m1 = run_ranks(_end_to_end, 2, tiny_bert_dir, tiny_texts, out, method, options)
    assert m0 == m1 and m0["num_folds"] == 2
    assert sorted(p.parent.name for p in out.glob("folds/*/result.json")) == ["0", "1"]
    assert not list(out.glob("folds/*/state.pt"))
    model = load_adapter(out)
    assert model.predict(["the cat sat", "vote law"]) and set(model.predict(["code bug"])) <= set(tiny_texts.classes)
    reference = load_adapter(out / "folds" / "0" / "adapter")
    for k, v in model.adapter_state_dict().items():
        assert torch.equal(v, reference.adapter_state_dict()[k])
