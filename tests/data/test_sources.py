"""Bundled sources load real Debian data with the right types; registry and error messages."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from densattn.data import LabeledDataset, bundled, describe_sources, list_sources, load_dataset
from densattn.data.bundled import fillets_speaker, split_fortunes

DEBIAN = {
    "fortunes": ("fortunes", bundled.FORTUNES_DIRS[0]),
    "fashion-mnist": ("dataset-fashion-mnist", bundled.FASHION_MNIST_DIR),
    "fillets-cs": ("fillets-ng-data-cs", bundled.FILLETS_SOUND_DIR + "/city/cs"),
    "asterisk-prompts": ("asterisk-core-sounds-en-wav", bundled.ASTERISK_DIRS[0] + "/digits"),
}
EXPECTED_MODALITY = {
    "fortunes": "text",
    "fashion-mnist": "image",
    "fillets-cs": "audio",
    "asterisk-prompts": "audio",
    "espeak-synthetic": "audio",
}


def _skip_without(source: str) -> None:
    if source == "espeak-synthetic":
        if shutil.which("espeak-ng") is None:
            pytest.skip("Debian package espeak-ng is not installed (sudo apt-get install -y espeak-ng)")
        return
    package, path = DEBIAN[source]
    if not Path(path).exists():
        pytest.skip(f"Debian package {package} is not installed (sudo apt-get install -y {package})")


def _options(source: str, tmp_path: Path) -> dict:
    return {"cache_dir": tmp_path / "cache"} if source == "espeak-synthetic" else {}


@pytest.mark.parametrize("source", sorted(EXPECTED_MODALITY))
def test_bundled_source_loads(source: str, tmp_path: Path) -> None:
    _skip_without(source)
    ds = load_dataset(source, max_samples=12, seed=3, **_options(source, tmp_path))
    assert isinstance(ds, LabeledDataset)
    assert ds.modality == EXPECTED_MODALITY[source]
    assert 0 < len(ds) <= 12
    assert ds.classes == sorted(ds.classes) and len(ds.classes) >= 2
    assert len(ds.labels) == len(ds.items) == len(ds.ids) == len(ds)
    assert len(set(ds.ids)) == len(ds.ids)
    # at least one example per class whenever max_samples allows it
    if len(ds.classes) <= 12:
        assert set(ds.labels) == set(range(len(ds.classes)))
    for i in range(min(len(ds), 3)):
        x = ds.load(i)
        if ds.modality == "text":
            assert isinstance(x, str) and x.strip()
        elif ds.modality == "image":
            assert isinstance(x, np.ndarray) and x.dtype == np.uint8 and x.ndim == 3 and x.shape[2] == 3
        else:
            assert ds.sample_rate == 16000
            assert isinstance(x, np.ndarray) and x.dtype == np.float32 and x.ndim == 1
            assert x.size > 1600 and np.isfinite(x).all() and np.abs(x).max() < 4.0  # Vorbis may overshoot 1 a little
            assert np.abs(x).max() > 0.01  # not silence
    if source == "espeak-synthetic":
        assert "synthetic" in ds.name and set(ds.groups or []) <= set(bundled.ESPEAK_VOICES)
    if source == "fillets-cs":
        assert ds.groups is not None and all(g for g in ds.groups)


@pytest.mark.parametrize("source", sorted(EXPECTED_MODALITY))
def test_bundled_fingerprint_stable_and_seed_sensitive(source: str, tmp_path: Path) -> None:
    _skip_without(source)
    opts = _options(source, tmp_path)
    a = load_dataset(source, max_samples=10, seed=0, **opts)
    b = load_dataset(source, max_samples=10, seed=0, **opts)
    assert a.ids == b.ids and a.fingerprint() == b.fingerprint()
    assert load_dataset(source, max_samples=10, seed=1, **opts).fingerprint() != a.fingerprint()
    assert load_dataset(source, max_samples=11, seed=0, **opts).fingerprint() != a.fingerprint()


def test_fortunes_full_counts_match_the_files() -> None:
    _skip_without("fortunes")
    ds = load_dataset("fortunes")
    root = Path(bundled.FORTUNES_DIRS[0])
    for topic, count in ds.class_counts().items():
        text = (root / topic).read_text(encoding="utf-8", errors="replace")
        separators = sum(1 for line in text.splitlines() if line.strip() == "%")
        assert count in (separators, separators + 1)  # the last entry may lack a closing '%'
    assert not any("\x08" in t for t in ds.items)


def test_fillets_classes_respect_min_clips() -> None:
    _skip_without("fillets-cs")
    ds = load_dataset("fillets-cs", min_clips=20)
    assert min(ds.class_counts().values()) >= 20
    assert {"m", "v"} <= set(ds.classes)
    fewer = load_dataset("fillets-cs", min_clips=200)
    assert fewer.classes == ["m", "v"]


def test_fashion_mnist_ids_name_the_split_and_index() -> None:
    _skip_without("fashion-mnist")
    ds = load_dataset("fashion-mnist", max_samples=30, seed=0)
    assert all(i.split(":")[0] in ("train", "t10k") and i.split(":")[1].isdigit() for i in ds.ids)
    assert len(ds.classes) == 10 and ds.load(0).shape == (28, 28, 3)


def test_split_fortunes_removes_overstrike_and_blank_entries() -> None:
    text = "first line\nsecond\n%\n\n%\n_\x08u_\x08n_\x08d_\x08e_\x08r lined, ___\x08\x08\x08not\n%\nlast"
    assert split_fortunes(text) == ["first line\nsecond", "under lined, not", "last"]


@pytest.mark.parametrize(
    ("stem", "level", "speaker"),
    [
        ("vit-m-hlava", "city", "m"),  # <level>-<speaker>-<line>
        ("vit-hs-klid1", "city", "city/hs"),  # level-local character
        ("m-obdivovat", "rush", "m"),  # level abbreviation dropped
        ("agenti-m", "fdto", "m"),  # speaker last
        ("b2-6", "gods", "gods/b2"),
        ("rand-0-5-1", "keys", "keys/0"),
        ("help1", "briefcase", None),  # no speaker field
        ("sp-shout_big_00", "share/border", None),  # sound effect
    ],
)
def test_fillets_speaker_field(stem: str, level: str, speaker: str | None) -> None:
    assert fillets_speaker(stem, level) == speaker


def test_list_and_describe_sources() -> None:
    names = list_sources()
    for name in ["fortunes", "fashion-mnist", "fillets-cs", "asterisk-prompts", "espeak-synthetic"]:
        assert name in names
    assert names[-3:] == ["folder:PATH", "csv:PATH", "iemocap:PATH"]
    descriptions = describe_sources()
    assert set(descriptions) == set(names)
    assert "SYNTHETIC" in descriptions["espeak-synthetic"]


def test_asterisk_digits_alias() -> None:
    _skip_without("asterisk-prompts")
    assert load_dataset("asterisk-digits", max_samples=6).ids == load_dataset("asterisk-prompts", max_samples=6).ids


# ------------------------------------------------------------------------------------------------ errors
def test_unknown_source_lists_the_choices() -> None:
    with pytest.raises(ValueError, match=r"spec='imagenet' is not a known source.*fortunes"):
        load_dataset("imagenet")
    with pytest.raises(ValueError, match=r"prefix, e.g. 'folder:PATH'"):
        load_dataset("/some/where")


def test_unknown_option_names_the_accepted_ones() -> None:
    with pytest.raises(ValueError, match=r"does not take option\(s\) \['min_clip'\].*min_clips"):
        load_dataset("fillets-cs", min_clip=5)


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_bad_max_samples(bad) -> None:
    with pytest.raises(ValueError, match=r"max_samples=.* must be a positive integer"):
        load_dataset("fortunes", max_samples=bad)


@pytest.mark.parametrize(
    ("source", "attribute", "package"),
    [
        ("fortunes", "FORTUNES_DIRS", "fortunes"),
        ("fashion-mnist", "FASHION_MNIST_DIR", "dataset-fashion-mnist"),
        ("fillets-cs", "FILLETS_SOUND_DIR", "fillets-ng-data-cs"),
        ("asterisk-prompts", "ASTERISK_DIRS", "asterisk-core-sounds-en-wav"),
    ],
)
def test_missing_debian_package_gives_the_apt_line(source, attribute, package, monkeypatch, tmp_path) -> None:
    missing = str(tmp_path / "not-installed")
    value = (missing,) if isinstance(getattr(bundled, attribute), tuple) else missing
    monkeypatch.setattr(bundled, attribute, value)
    with pytest.raises(ValueError, match=rf"sudo apt-get install -y {package}"):
        load_dataset(source)


def test_missing_espeak_gives_the_apt_line(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no espeak-ng on PATH
    with pytest.raises(ValueError, match=r"sudo apt-get install -y espeak-ng"):
        load_dataset("espeak-synthetic", cache_dir=tmp_path)


def test_bad_fortune_topic_lists_available(tmp_path) -> None:
    _skip_without("fortunes")
    with pytest.raises(ValueError, match=r"topics: no fortune file 'nonsense'.*choose from"):
        load_dataset("fortunes", topics=["nonsense"])
