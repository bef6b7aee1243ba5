"""Bad data: paths that leave the dataset root (issue item 2) and data that cannot be classified (item 8)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from faultkit import run_main, train_argv
from PIL import Image

from densattn.data import load_dataset
from densattn.data.cache import FeatureSet
from densattn.train import TrainConfig, run_experiment
from densattn.train.splits import fold_splits


def tone(path: Path, freq: float = 300.0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(3200) / 16000
    sf.write(path, (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), 16000)
    return path


def png(path: Path, colour=(200, 0, 0)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), colour).save(path)
    return path


def iemocap(root: Path, utterances: list[tuple[str, str]]) -> Path:
    """A one-session IEMOCAP layout whose single label file lists ``utterances`` (id, label); a wav is written for
    every plain id."""
    eval_dir = root / "Session1" / "dialog" / "EmoEvaluation"
    eval_dir.mkdir(parents=True)
    lines = [f"[{k}.0 - {k}.5]\t{u}\t{label}\t[2.5, 2.5, 2.5]\n" for k, (u, label) in enumerate(utterances)]
    (eval_dir / "Ses01F_impro01.txt").write_text("% header\n\n" + "".join(lines))
    for u, _ in utterances:
        if "/" not in u:
            tone(root / "Session1" / "sentences" / "wav" / "Ses01F_impro01" / f"{u}.wav")
    return root


# ------------------------------------------------------------------------------------------ item 2: paths
@pytest.mark.parametrize("escape", ["../../../../../outside/secret", "ABSOLUTE"])
def test_iemocap_utterance_ids_cannot_leave_the_root(tmp_path, escape):
    secret = tone(tmp_path / "outside" / "secret.wav")  # a real audio file the crafted id points at
    wav_dir = tmp_path / "release" / "Session1" / "sentences" / "wav" / "Ses01F_impro01"
    utterance = str(secret.with_suffix("")) if escape == "ABSOLUTE" else escape
    assert (wav_dir / f"{utterance}.wav").resolve() == secret.resolve()  # the old join would have read it
    root = iemocap(tmp_path / "release", [("Ses01F_impro01_F000", "neu"), ("Ses01F_impro01_M000", "ang")])
    label_file = root / "Session1" / "dialog" / "EmoEvaluation" / "Ses01F_impro01.txt"
    label_file.write_text(label_file.read_text() + f"[9.0 - 9.5]\t{utterance}\tsad\t[2.5, 2.5, 2.5]\n")
    with pytest.raises(ValueError, match=r"not a plain utterance id .* refusing to read"):
        load_dataset(f"iemocap:{root}")


def test_iemocap_wav_link_leaving_the_root_is_refused(tmp_path):
    root = iemocap(tmp_path / "release", [("Ses01F_impro01_F000", "neu"), ("Ses01F_impro01_M000", "ang")])
    wav = root / "Session1" / "sentences" / "wav" / "Ses01F_impro01" / "Ses01F_impro01_M000.wav"
    wav.unlink()
    wav.symlink_to(tone(tmp_path / "elsewhere" / "x.wav"))
    with pytest.raises(ValueError, match=r"is a link to .*elsewhere.* outside the dataset folder"):
        load_dataset(f"iemocap:{root}")
    assert len(load_dataset(f"iemocap:{iemocap(tmp_path / 'clean', [('A_F0', 'neu'), ('A_M0', 'ang')])}")) == 2


def test_folder_skips_links_leaving_the_root_with_a_warning(tmp_path):
    root = tmp_path / "pictures"
    for k in range(3):
        png(root / "red" / f"{k}.png", (200, 0, 0))
        png(root / "blue" / f"{k}.png", (0, 0, 200))
    outside = png(tmp_path / "private" / "photo.png", (0, 200, 0))
    (root / "red" / "leak.png").symlink_to(outside)  # a file link leading out: skipped
    (root / "blue" / "inside.png").symlink_to(root / "red" / "0.png")  # a link within the root: kept
    with pytest.warns(UserWarning, match=r"skipped 1 file\(s\) that are links leading outside .*leak.png"):
        ds = load_dataset(f"folder:{root}")
    assert sorted(ds.ids) == sorted(["red/0.png", "red/1.png", "red/2.png", "blue/0.png", "blue/1.png"] + [
        "blue/2.png", "blue/inside.png"])  # fmt: skip
    assert all(Path(p).resolve().is_relative_to(root.resolve()) for p in ds.items)


def test_folder_class_folder_linked_out_of_the_root_is_not_followed(tmp_path):
    root = tmp_path / "pictures"
    for k in range(2):
        png(root / "red" / f"{k}.png")
        png(tmp_path / "home" / "photos" / f"{k}.png", (0, 200, 0))
    png(root / "blue" / "0.png", (0, 0, 200))
    (root / "green").symlink_to(tmp_path / "home" / "photos", target_is_directory=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match=r"class folder .*green.* is empty .*2 file\(s\) are links leading out"):
            load_dataset(f"folder:{root}")


# ----------------------------------------------------------------------------- item 8: nothing to classify
def test_single_class_csv_and_folder_are_refused_with_the_source_named(tmp_path):
    csv = tmp_path / "one.csv"
    csv.write_text("text,label\ngood,pos\nfine,pos\ngreat,pos\n")
    with pytest.raises(ValueError, match=rf"dataset 'csv:{csv}' has 1 class \('pos', 3 examples\).*at least 2"):
        load_dataset(f"csv:{csv}")
    for k in range(3):
        png(tmp_path / "pics" / "cats" / f"{k}.png")
    with pytest.raises(ValueError, match=r"dataset 'folder:.*pics' has 1 class \('cats'"):
        load_dataset(f"folder:{tmp_path / 'pics'}")
    two = tmp_path / "two.csv"
    two.write_text("text,label\n" + "".join(f"t{k},{'ab'[k % 2]}\n" for k in range(6)))
    with pytest.raises(ValueError, match=r"max_samples=1 keeps examples of 1 of its 2 classes"):
        load_dataset(f"csv:{two}", max_samples=1)


@pytest.mark.parametrize("missing", ["NaN", "nan", "N/A", "null", "<NA>", "#N/A"])
def test_csv_missing_value_label_is_refused_with_its_row(tmp_path, missing):
    csv = tmp_path / "labels.csv"
    csv.write_text(f"text,label\ngood,pos\nbad,neg\nmeh,{missing}\nok,pos\n")
    with pytest.raises(ValueError, match=rf"data row 3 of .* has label='{missing}', which reads as a missing value"):
        load_dataset(f"csv:{csv}")
    csv.write_text("text,label\ngood,pos\nbad,neg\nmeh,none\n")  # "none" is a real class name, kept
    assert load_dataset(f"csv:{csv}").classes == ["neg", "none", "pos"]


def test_cli_single_class_csv_exits_2(tmp_path, capsys):
    csv = tmp_path / "one.csv"
    csv.write_text("text,label\n" + "".join(f"fortune {k},work\n" for k in range(8)))
    argv = ["train", "--data", f"csv:{csv}", "--encoder", "minilm", "--out", str(tmp_path / "o")]
    code, err = run_main(argv, capsys)
    assert code == 2 and "has 1 class ('work', 8 examples)" in err and not (tmp_path / "o").exists()


def test_rare_class_warns_which_folds_miss_it(tmp_path):
    # leave-one-group-out where class 'c' lives in one group only: that group's fold cannot learn 'c', the others
    # cannot score it
    y = torch.tensor([0, 1] * 12 + [2] * 3)
    groups = [f"g{k % 3}" for k in range(24)] + ["g2"] * 3
    features = FeatureSet(
        features=torch.randn(len(y), 2, 4) + y[:, None, None].float(),
        labels=y,
        classes=["a", "b", "c"],
        ids=[str(i) for i in range(len(y))],
        groups=groups,
    )
    cfg = TrainConfig(epochs=1, batch_size=8)
    expected = r"class 'c' \(3 examples\) is missing from the training split of fold 2 and the test split of folds 0, 1"
    with pytest.warns(UserWarning, match=expected):
        run_experiment(features, head="pool", out=tmp_path / "r", folds="logo", train_config=cfg, plots=False)
    balanced = FeatureSet(features.features[:24], y[:24], ["a", "b"], features.ids[:24], groups=groups[:24])
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # every fold trains and tests on both classes: no warning
        run_experiment(balanced, head="pool", out=tmp_path / "ok", folds="logo", train_config=cfg, plots=False)


def test_max_samples_leaving_one_training_example_is_refused(tmp_path, capsys, fortunes_cache):
    code, err = run_main(train_argv(tmp_path / "o", fortunes_cache, folds=1) + ["--max-samples", "3"], capsys)
    assert code == 2 and "1 training example(s)" in err and "raise --max-samples or lower --folds" in err
    code, err = run_main(train_argv(tmp_path / "o", fortunes_cache, folds=2) + ["--max-samples", "4"], capsys)
    assert code == 2 and "fewer than folds=2; lower --folds or raise --max-samples" in err
    assert not (tmp_path / "o").exists()


def test_one_split_of_four_examples_is_not_a_sklearn_error():
    (train, test),  = fold_splits(np.array([0, 1, 0, 1]), folds=1, seed=0)  # fmt: skip
    assert len(test) == 1 and sorted(np.concatenate([train, test]).tolist()) == [0, 1, 2, 3]
