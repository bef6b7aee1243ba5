"""`densattn robustness` end to end on a tiny CSV text task with a fake case-sensitive encoder."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import densattn.encoders as encoders_module
from densattn.analysis.robustness import evaluate_robustness
from densattn.cli import main
from densattn.data import load_dataset
from densattn.data.cache import cached_features
from densattn.train import TrainConfig, run_experiment

LETTERS = "abcdefghijkl"


class LetterCountEncoder(torch.nn.Module):
    """Counts of the lower-case letters a..l as 3 "layers" of 4 features: upper-casing a text erases them."""

    name, modality, num_layers, dim = "letters", "text", 3, 4

    def identity(self):
        return {"encoder": "letters", "weights_sha256": "none", "pooling": "counts"}

    @torch.no_grad()
    def encode(self, batch):
        counts = [[t.count(c) / max(len(t), 1) for c in LETTERS] for t in batch]
        return torch.tensor(counts, dtype=torch.float32).reshape(len(batch), 3, 4)  # (B, L, d)


@pytest.fixture
def runs(tmp_path, monkeypatch):
    monkeypatch.setattr(encoders_module, "get_encoder", lambda name, **kw: LetterCountEncoder())
    rng = np.random.default_rng(0)
    rows = ["text,label"]
    for i in range(60):
        label = i % 2
        pool = LETTERS[:6] if label == 0 else LETTERS[6:]
        words = ["".join(rng.choice(list(pool), size=5)) for _ in range(4)]
        rows.append(f"{' '.join(words)},{'ab'[label]}")
    csv_path = tmp_path / "toy.csv"
    csv_path.write_text("\n".join(rows) + "\n")
    spec = f"csv:{csv_path}"
    dataset = load_dataset(spec, seed=0)
    cache = tmp_path / "cache"
    features = cached_features(LetterCountEncoder(), dataset, cache_dir=cache)
    out = {}
    for head in ("daam", "linear"):
        out[head] = tmp_path / head
        run_experiment(
            features,
            head=head,
            out=out[head],
            train_config=TrainConfig(epochs=15, batch_size=16, lr=1e-2, seed=0),
            folds=3,
            encoder_info={"name": "letters", "options": {}, **LetterCountEncoder().identity()},
            extra_config={"data": spec, "max_samples": None},
            plots=False,
        )
    return out, cache


def test_robustness_scores_every_fold_clean_and_shifted(runs):
    out, cache = runs
    result = evaluate_robustness([str(out["daam"]), str(out["linear"])], ["casing=1", "typos=0.01"], cache_dir=cache)
    assert result["conditions"] == ["clean", "casing=1", "typos=0.01"]
    assert result["folds"] == [0, 1, 2] and result["num_test_examples"] == 60
    assert result["max_clean_mismatch_vs_training"] == 0.0  # clean re-scoring reproduces the training metrics
    for name in ("daam", "linear"):
        per = result["methods"][name]
        training = json.loads((out[name] / "metrics.json").read_text())
        assert per["clean"]["accuracy"] == pytest.approx([f["accuracy"] for f in training["folds"]])
        assert per["clean"]["accuracy_mean"] > 0.8
        # all upper case: every feature is 0, so one class is predicted for everything -> chance on balanced folds
        assert per["casing=1"]["accuracy_mean"] < 0.7 and per["casing=1"]["drop_mean"] > 0.2
    assert {r["method"] for r in result["paired"]["clean"]} == {"linear"}


def test_each_shift_gets_its_own_cache_entry(runs):
    out, cache = runs
    before = {p.name for p in cache.iterdir()}
    evaluate_robustness([str(out["linear"])], ["dropout=0.3"], cache_dir=cache, folds=[0])
    after = {p.name for p in cache.iterdir()}
    assert len(after - before) == 1
    evaluate_robustness([str(out["linear"])], ["dropout=0.3"], cache_dir=cache, folds=[0])  # reused, not rebuilt
    assert {p.name for p in cache.iterdir()} == after
    evaluate_robustness([str(out["linear"])], ["dropout=0.3"], cache_dir=cache, folds=[0], shift_seed=1)
    assert len({p.name for p in cache.iterdir()} - after) == 1


def test_robustness_command_writes_table_and_plot(runs, tmp_path):
    out, cache = runs
    dest = tmp_path / "rob"
    argv = ["robustness", str(out["daam"]), str(out["linear"]), "--shift", "casing=0.5,1", "--shift", "typos=0.05"]
    assert main([*argv, "--cache-dir", str(cache), "--out", str(dest)]) == 0
    for f in ("robustness.md", "robustness.json", "robustness.png"):
        assert (dest / f).stat().st_size > 0
    assert "casing=0.5" in (dest / "robustness.md").read_text()
    assert main(["robustness", str(out["daam"]), "--shift", "blur", "--out", str(dest)]) == 2  # image shift on text
    assert main(["robustness", str(out["daam"]), "--shift", "casing", "--folds", "7", "--out", str(dest)]) == 2


def test_robustness_refuses_lora_runs(runs, tmp_path):
    import shutil

    out, cache = runs
    lora = tmp_path / "lora"
    shutil.copytree(out["linear"], lora)
    config = json.loads((lora / "config.json").read_text())
    (lora / "config.json").write_text(json.dumps({**config, "kind": "end_to_end", "method": "lora"}))
    with pytest.raises(ValueError, match="lora run"):
        evaluate_robustness([str(lora)], ["casing=1"], cache_dir=cache)
