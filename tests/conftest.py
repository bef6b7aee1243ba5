"""Fixtures for pipeline tests: a small real text slice on the bundled MiniLM, and a tiny counting encoder."""

from __future__ import annotations

import hashlib

import pytest
import torch

from densattn.data.dataset import LabeledDataset


class CountingEncoder:
    """Deterministic stand-in encoder (hash features of each text), counting encode() calls; for cache logic."""

    modality = "text"
    num_layers = 3
    dim = 8

    def __init__(self, version: str = "v1") -> None:
        self.version = version
        self.calls = 0

    def identity(self) -> dict:
        return {"encoder": "counting", "weights_sha256": self.version, "pooling": "mean-masked"}

    def encode(self, batch):
        self.calls += 1
        rows = []
        for text in batch:
            digest = hashlib.sha256(f"{self.version}:{text}".encode()).digest()
            rows.append(torch.tensor(list(digest[:24]), dtype=torch.float32).view(3, 8) / 255)
        return torch.stack(rows)


@pytest.fixture
def encoder_cls():
    return CountingEncoder


@pytest.fixture
def toy_dataset() -> LabeledDataset:
    texts = [f"example number {i} about {'cats' if i % 2 else 'dogs'}" for i in range(40)]
    return LabeledDataset(
        name="toy",
        modality="text",
        classes=["cats", "dogs"],
        items=texts,
        labels=[1 - i % 2 for i in range(40)],
        ids=[str(i) for i in range(40)],
    )


@pytest.fixture(scope="session")
def text_features(tmp_path_factory):
    """Real MiniLM features of 120 Debian fortunes (cached for the session)."""
    from densattn.data import load_dataset
    from densattn.data.cache import cached_features
    from densattn.encoders import get_encoder

    try:
        dataset = load_dataset("fortunes", max_samples=120, seed=0)
    except ValueError as err:
        pytest.skip(str(err))
    cache = tmp_path_factory.mktemp("cache")
    return cached_features(get_encoder("minilm"), dataset, cache_dir=cache)
