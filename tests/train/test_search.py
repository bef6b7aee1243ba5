"""The per-fold search of the fold runner: chosen on validation (never on test), recorded, resumable."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import densattn.train.fold as fold_runner
from densattn.data.cache import FeatureSet
from densattn.io import read_json
from densattn.train import HeadMethod, TrainConfig, make_folds, run_folds
from densattn.train.fold import search_candidates

LEARNS, FROZEN = 0.5, 1e-9  # a learning rate that learns the training rule, one that leaves the model as built


class BiasedProbe(HeadMethod):
    """A linear probe built to predict class 0 for every input (zero weights, bias +4 on class 0), recording every
    index array its inputs are requested for."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.requests: list[np.ndarray] = []

    def build(self, seed: int):
        model = super().build(seed)
        with torch.no_grad():
            model.head.classifier.weight.zero_()
            model.head.classifier.bias.copy_(torch.tensor([4.0, 0.0]))
        return model

    def inputs(self, index):
        self.requests.append(np.asarray(index).copy())
        return super().inputs(index)


def disagreeing_features(config: TrainConfig) -> tuple[FeatureSet, np.ndarray, np.ndarray]:
    """Features whose class rule holds on the training and validation examples and is inverted on the test
    examples of the single 80/20 split: a model that learns the rule scores 1 on validation and 0 on test, one that
    predicts class 0 throughout scores 0.5 on both."""
    labels = torch.arange(80) % 2
    fold = make_folds(labels, folds=1, config=config)[0]
    sign = (2 * labels - 1).float()  # +1 for class 1, -1 for class 0
    sign[torch.as_tensor(fold.test)] *= -1
    x = torch.stack([sign, 0.1 * torch.randn(80, generator=torch.Generator().manual_seed(0))], dim=1)
    fs = FeatureSet(x[:, None, :], labels, ["a", "b"], [str(i) for i in range(80)])  # (80, 1 layer, 2)
    return fs, fold.val, fold.test


def test_selection_uses_validation_not_test(tmp_path):
    config = TrainConfig(epochs=20, early_stopping=20, batch_size=16)
    fs, val, test = disagreeing_features(config)
    method = BiasedProbe(fs, "linear", {"layer": 0})
    search = {"lr": [FROZEN, LEARNS]}
    metrics = run_folds(method, out=tmp_path / "run", train_config=config, folds=1, search=search, plots=False)
    row = read_json(tmp_path / "run" / "folds" / "0" / "result.json")
    scores = {c["lr"]: c["best_val_accuracy"] for c in row["search"]}
    assert scores[FROZEN] == pytest.approx(0.5) and scores[LEARNS] == pytest.approx(1.0)
    # validation prefers the model that learned; on test that model is the worse one (0 against 0.5)
    assert row["chosen"] == {"lr": LEARNS} and metrics["search"]["chosen"] == [{"lr": LEARNS}]
    assert row["accuracy"] == pytest.approx(0.0)
    assert row["best_val_accuracy"] == pytest.approx(1.0)
    # the test examples were requested exactly once, after both candidates were trained and scored
    test_requests = [i for i, r in enumerate(method.requests) if np.array_equal(r, test)]
    assert len(test_requests) == 1 and test_requests[0] == len(method.requests) - 1
    assert sum(np.array_equal(r, val) for r in method.requests) >= 2
    config_json = read_json(tmp_path / "run" / "config.json")
    assert config_json["search"] == {"lr": [FROZEN, LEARNS]}
    assert not (tmp_path / "run" / "folds" / "0" / "search").exists()  # candidate weights are cleaned up


def test_search_costs_are_the_sum_of_the_candidates(tmp_path):
    fs = FeatureSet(torch.randn(40, 3, 4), torch.arange(40) % 2, ["a", "b"], [str(i) for i in range(40)])
    config = TrainConfig(epochs=3, early_stopping=3)
    run_folds(
        HeadMethod(fs, "conv"),
        out=tmp_path / "r",
        train_config=config,
        folds=2,
        search={"lr": [1e-3, 3e-3]},
        plots=False,
    )
    row = read_json(tmp_path / "r" / "folds" / "1" / "result.json")
    assert [c["candidate"] for c in row["search"]] == [0, 1]
    assert row["train_seconds"] == pytest.approx(sum(c["train_seconds"] for c in row["search"]))
    assert row["epochs_run"] == row["search"][[c["lr"] for c in row["search"]].index(row["chosen"]["lr"])]["epochs_run"]


class Crash(RuntimeError):
    pass


def test_interrupted_search_resumes_to_the_same_result(tmp_path, monkeypatch):
    fs = FeatureSet(torch.randn(40, 3, 4), torch.arange(40) % 2, ["a", "b"], [str(i) for i in range(40)])
    config = TrainConfig(epochs=3, early_stopping=3)
    kwargs = dict(train_config=config, folds=2, search={"lr": [1e-3, 1e-2]}, plots=False)
    reference = run_folds(HeadMethod(fs, "conv"), out=tmp_path / "ref", **kwargs)

    class CrashOnSecondCandidate(HeadMethod):
        builds = 0

        def build(self, seed):
            type(self).builds += 1
            if type(self).builds == 3:  # the probe, fold 0 candidate 0, then fold 0 candidate 1
                raise Crash
            return super().build(seed)

    with pytest.raises(Crash):
        run_folds(CrashOnSecondCandidate(fs, "conv"), out=tmp_path / "run", **kwargs)
    assert (tmp_path / "run" / "folds" / "0" / "search" / "0" / "candidate.json").exists()

    trained, real_train = [], fold_runner.train_model

    def counting_train(*args, **kwargs):
        trained.append(kwargs["checkpoint"].parent)
        return real_train(*args, **kwargs)

    monkeypatch.setattr(fold_runner, "train_model", counting_train)
    resumed = run_folds(HeadMethod(fs, "conv"), out=tmp_path / "run", resume=True, **kwargs)
    # fold 0's finished candidate 0 is not trained again: fold 0 candidate 1, then fold 1's two candidates
    assert [(p.parent.parent.name, p.name) for p in trained] == [("0", "1"), ("1", "0"), ("1", "1")]
    for a, b in zip(reference["folds"], resumed["folds"]):
        assert a["accuracy"] == b["accuracy"] and a["chosen"] == b["chosen"]
        assert [c["best_val_accuracy"] for c in a["search"]] == [c["best_val_accuracy"] for c in b["search"]]


@pytest.mark.parametrize(
    "search, message",
    [
        ({"seed": [0, 1]}, "cannot tune 'seed'"),
        ({"lr": []}, "non-empty list"),
        ({"lr": "1e-3"}, "non-empty list"),
        ({"lr": [1e-3, 1e-3]}, "repeats a value"),
        ({"lr": [1e-3, -1.0]}, "lr must be a finite number > 0"),
        ({"nonsense": [1]}, "cannot tune 'nonsense'"),
    ],
)
def test_bad_search_is_refused_before_any_work(tmp_path, search, message):
    fs = FeatureSet(torch.randn(20, 2, 4), torch.arange(20) % 2, ["a", "b"], [str(i) for i in range(20)])
    with pytest.raises(ValueError, match=message):
        run_folds(HeadMethod(fs, "conv"), out=tmp_path / "run", folds=2, search=search)
    assert not (tmp_path / "run").exists()


def test_candidates_are_the_product_grid_in_order():
    grid = search_candidates({"lr": [1e-3, 3e-3], "epochs": [2, 4]}, TrainConfig())
    assert grid == [
        {"lr": 1e-3, "epochs": 2},
        {"lr": 1e-3, "epochs": 4},
        {"lr": 3e-3, "epochs": 2},
        {"lr": 3e-3, "epochs": 4},
    ]
    assert search_candidates(None, TrainConfig()) == [] and search_candidates({}, TrainConfig()) == []
