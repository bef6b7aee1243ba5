"""The user's own data: folder:, csv: and iemocap: on small fixtures, and their error messages."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from densattn.data import load_dataset
from densattn.data.iemocap import parse_emo_evaluation


# ------------------------------------------------------------------------------------------------ folder:
def test_folder_audio_decodes_to_16k_mono(audio_folder: Path) -> None:
    ds = load_dataset(f"folder:{audio_folder}")
    assert ds.modality == "audio" and ds.sample_rate == 16000
    assert ds.classes == ["high", "low", "mid"]
    assert ds.class_counts() == {"high": 6, "low": 6, "mid": 6}  # notes.txt ignored
    assert ds.name == f"folder:{audio_folder}"
    for i, ident in enumerate(ds.ids):
        x = ds.load(i)
        assert x.dtype == np.float32 and x.ndim == 1
        # every fixture clip lasts 0.25 s, whatever its rate (8 kHz, 16 kHz) or channels (stereo flac)
        assert abs(x.size - 4000) <= 2, ident
    # the resampled 8 kHz tone keeps its pitch: the spectral peak sits at the written frequency
    k = ds.ids.index("low/clip0.wav")
    spectrum = np.abs(np.fft.rfft(ds.load(k)))
    assert abs(np.argmax(spectrum) * 16000 / ds.load(k).size - 150.0) < 8.0


def test_folder_images_decode_to_uint8_rgb(image_folder: Path) -> None:
    ds = load_dataset(f"folder:{image_folder}")
    assert ds.modality == "image" and ds.sample_rate is None and ds.classes == ["blue", "red"]
    assert ds.class_counts() == {"blue": 6, "red": 6}
    for i in range(len(ds)):
        x = ds.load(i)
        assert x.dtype == np.uint8 and x.ndim == 3 and x.shape[2] == 3
        if ds.ids[i].endswith("grey.png"):
            assert (x[..., 0] == x[..., 1]).all() and (x[..., 1] == x[..., 2]).all()  # grey -> 3 equal channels
        else:
            channel = 2 if ds.classes[ds.labels[i]] == "blue" else 0
            assert x[..., channel].mean() > 150 > x[..., 1].mean()  # colour survives alpha/jpeg decoding


def test_folder_fingerprint_tracks_file_changes(image_folder: Path, make_png) -> None:
    ds = load_dataset(f"folder:{image_folder}")
    before = ds.fingerprint()
    assert load_dataset(f"folder:{image_folder}").fingerprint() == before
    target = image_folder / "red" / "img1.png"
    make_png(target, colour=(200, 10, 10), size=(30, 30))  # new content, new size
    assert load_dataset(f"folder:{image_folder}").fingerprint() != before
    after = load_dataset(f"folder:{image_folder}").fingerprint()
    st = target.stat()
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # same bytes, touched
    assert load_dataset(f"folder:{image_folder}").fingerprint() != after


def test_folder_empty_class_is_an_error(audio_folder: Path) -> None:
    (audio_folder / "silent").mkdir()
    (audio_folder / "silent" / "readme.md").write_text("nothing here")
    with pytest.raises(ValueError, match=r"class folder .*silent.* is empty .*add examples or remove the folder"):
        load_dataset(f"folder:{audio_folder}")


@pytest.mark.parametrize("name", ["broken.wav", "broken.png"])
def test_folder_unreadable_file_is_an_error(tmp_path: Path, name: str, make_tone, make_png) -> None:
    root = tmp_path / "data"
    for cls in ("a", "b"):
        if name.endswith(".wav"):
            make_tone(root / cls / "ok.wav", freq=300.0)
        else:
            make_png(root / cls / "ok.png", colour=(1, 2, 3))
    (root / "b" / name).write_bytes(b"this is not a media file" * 10)
    with pytest.raises(ValueError, match=rf"unreadable (audio|image) file .*{name}.*replace or delete the file"):
        load_dataset(f"folder:{root}")
    # with verify=False the error comes when the example is decoded, and names the file as well
    ds = load_dataset(f"folder:{root}", verify=False)
    with pytest.raises(ValueError, match=rf"cannot decode (audio|image) file .*{name}"):
        ds.load(ds.ids.index(f"b/{name}"))


def test_folder_mixed_modalities_and_bad_paths(tmp_path: Path, image_folder: Path, make_tone) -> None:
    make_tone(image_folder / "red" / "sound.wav", freq=440.0)
    with pytest.raises(ValueError, match=r"mixes image and audio files"):
        load_dataset(f"folder:{image_folder}")
    with pytest.raises(ValueError, match=r"path .*nowhere.* does not exist"):
        load_dataset(f"folder:{tmp_path / 'nowhere'}")
    with pytest.raises(ValueError, match=r"has no path; write it as 'folder:/path/to/data'"):
        load_dataset("folder:")
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "x.png").write_bytes(b"")
    with pytest.raises(ValueError, match=r"has no subfolders; put each class's files in its own subfolder"):
        load_dataset(f"folder:{tmp_path / 'flat'}")


# --------------------------------------------------------------------------------------------------- csv:
def test_csv_default_and_custom_columns(write_csv) -> None:
    rows = [["text", "label"], ["a fine day", "pos"], ["awful, really", "neg"], ["great", "pos"]]
    ds = load_dataset(f"csv:{write_csv(rows)}")
    assert ds.modality == "text" and ds.classes == ["neg", "pos"] and ds.labels == [1, 0, 1]
    assert ds.load(1) == "awful, really" and ds.ids == ["row:1", "row:2", "row:3"] and ds.groups is None
    rows = [["speaker", "utterance", "topic"], ["s1", "hello", "greet"], ["s2", "bye", "leave"]]
    path = write_csv(rows, name="custom.tsv", delimiter="\t")
    ds = load_dataset(f"csv:{path}", text_column="utterance", label_column="topic", group_column="speaker")
    assert ds.items == ["hello", "bye"] and ds.classes == ["greet", "leave"] and ds.groups == ["s1", "s2"]
    semicolons = write_csv([["text", "label"], ["x", "1"], ["y", "2"]], name="semi.csv", delimiter=";")
    assert load_dataset(f"csv:{semicolons}").items == ["x", "y"]


def test_csv_fingerprint_changes_with_content(write_csv) -> None:
    path = write_csv([["text", "label"], ["one", "a"], ["two", "b"]])
    before = load_dataset(f"csv:{path}").fingerprint()
    assert load_dataset(f"csv:{path}").fingerprint() == before
    write_csv([["text", "label"], ["one!", "a"], ["two", "b"]])
    assert load_dataset(f"csv:{path}").fingerprint() != before


def test_csv_errors(write_csv, tmp_path: Path) -> None:
    path = write_csv([["sentence", "y"], ["a", "1"]])
    with pytest.raises(
        ValueError, match=r"text_column='text' is not a column .*\['sentence', 'y'\].*pass text_column="
    ):
        load_dataset(f"csv:{path}")
    with pytest.raises(ValueError, match=r"label_column='label' is not a column .*pass label_column="):
        load_dataset(f"csv:{path}", text_column="sentence")
    with pytest.raises(ValueError, match=r"group_column='who' is not a column"):
        load_dataset(f"csv:{path}", text_column="sentence", label_column="y", group_column="who")
    blank = write_csv([["text", "label"], ["a", "x"], ["b", ""]], name="blank.csv")
    with pytest.raises(ValueError, match=r"data row 2 .* has an empty 'label'; fill it in or delete the row"):
        load_dataset(f"csv:{blank}")
    header_only = write_csv([["text", "label"]], name="empty.csv")
    with pytest.raises(ValueError, match=r"has a header but no data rows"):
        load_dataset(f"csv:{header_only}")
    with pytest.raises(ValueError, match=r"path .*missing.csv.* does not exist"):
        load_dataset(f"csv:{tmp_path / 'missing.csv'}")


# ----------------------------------------------------------------------------------------------- iemocap:
def test_iemocap_four_classes_sessions_as_groups(iemocap_root: Path) -> None:
    ds = load_dataset(f"iemocap:{iemocap_root}")
    assert ds.modality == "audio" and ds.sample_rate == 16000
    assert ds.classes == ["ang", "hap", "neu", "sad"]
    by_id = {i: (ds.classes[y], g) for i, y, g in zip(ds.ids, ds.labels, ds.groups or [])}
    assert by_id == {
        "Ses01F_impro01_F000": ("neu", "Session1"),
        "Ses01F_impro01_M000": ("ang", "Session1"),
        "Ses01F_script01_1_F000": ("hap", "Session1"),  # exc merged into hap
        "Ses01F_script01_1_M000": ("sad", "Session1"),
        "Ses02M_impro03_F000": ("hap", "Session2"),
        "Ses02M_impro03_M000": ("sad", "Session2"),
        "Ses02M_impro03_F001": ("neu", "Session2"),
    }  # fru, xxx, sur, oth dropped; evaluator lines ignored
    x = ds.load(0)
    assert x.dtype == np.float32 and x.shape == (3200,)


def test_iemocap_subsample_and_fingerprint(iemocap_root: Path) -> None:
    a = load_dataset(f"iemocap:{iemocap_root}", max_samples=4, seed=0)
    assert len(a) == 4 and set(a.labels) == {0, 1, 2, 3}
    assert load_dataset(f"iemocap:{iemocap_root}", max_samples=4, seed=0).fingerprint() == a.fingerprint()


def test_parse_emo_evaluation_ignores_header_and_evaluator_lines(iemocap_text_parts) -> None:
    header, evaluators = iemocap_text_parts
    text = header + "[1.0 - 2.5]\tSes03M_impro02_F003\tfru\t[2.0, 3.5, 3.0]\n" + evaluators
    assert parse_emo_evaluation(text) == [("Ses03M_impro02_F003", "fru")]


def test_iemocap_errors(tmp_path: Path, iemocap_root: Path, make_iemocap) -> None:
    with pytest.raises(ValueError, match=r"does not exist; point it at the IEMOCAP release"):
        load_dataset(f"iemocap:{tmp_path / 'nope'}")
    (tmp_path / "other").mkdir()
    with pytest.raises(ValueError, match=r"has no Session1..Session5 folders"):
        load_dataset(f"iemocap:{tmp_path / 'other'}")
    (iemocap_root / "Session2" / "sentences" / "wav" / "Ses02M_impro03" / "Ses02M_impro03_M000.wav").unlink()
    with pytest.raises(ValueError, match=r"Ses02M_impro03_M000 is labelled in .* is missing; restore"):
        load_dataset(f"iemocap:{iemocap_root}")
    only_dropped = make_iemocap(tmp_path / "dropped", {1: [("Ses01F_impro01_F000", "fru")]})
    with pytest.raises(ValueError, match=r"no utterance labelled ang, hap, exc, neu or sad"):
        load_dataset(f"iemocap:{only_dropped}")
