"""LabeledDataset container and the stratified seeded subsample."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from densattn.data import LabeledDataset, stratified_indices


def reference_quotas(counts: list[int], max_samples: int) -> list[int]:
    """Largest-remainder apportionment, written out: floor of each exact share, then one more place to each of
    the largest remainders (ties to the lower class) until max_samples places are given."""
    total = sum(counts)
    exact = [max_samples * c / total for c in counts]
    quotas = [math.floor(e) for e in exact]
    order = sorted(range(len(counts)), key=lambda k: (-(exact[k] - math.floor(exact[k])), k))
    for k in order[: max_samples - sum(quotas)]:
        quotas[k] += 1
    return quotas


@settings(max_examples=60, deadline=None)
@given(
    counts=st.lists(st.integers(min_value=1, max_value=40), min_size=1, max_size=6),
    fraction=st.floats(min_value=0.01, max_value=0.99),
    seed=st.integers(min_value=0, max_value=2**31 - 1),
)
def test_stratified_indices_properties(counts: list[int], fraction: float, seed: int) -> None:
    labels = [c for c, n in enumerate(counts) for _ in range(n)]
    rng = np.random.default_rng(seed)
    labels = [int(v) for v in rng.permutation(labels)]  # classes interleaved, not in blocks
    n = len(labels)
    max_samples = max(1, int(fraction * n))
    chosen = stratified_indices(labels, max_samples, seed=seed)
    assert chosen == stratified_indices(labels, max_samples, seed=seed)  # deterministic
    assert chosen == sorted(set(chosen)) and all(0 <= i < n for i in chosen)
    assert len(chosen) == min(max_samples, n)
    got = [sum(1 for i in chosen if labels[i] == c) for c in range(len(counts))]
    assert all(g <= c for g, c in zip(got, counts))
    if max_samples >= len(counts):
        assert all(g >= 1 for g in got)  # every class kept when there is room
    if all(max_samples * c / n >= 1 for c in counts):  # no class needs the one-place floor: exact apportionment
        assert got == reference_quotas(counts, max_samples)


def test_stratified_indices_seed_changes_members_not_counts() -> None:
    labels = [0] * 50 + [1] * 30 + [2] * 20
    a = stratified_indices(labels, 10, seed=0)
    b = stratified_indices(labels, 10, seed=1)
    assert a != b
    count = lambda idx: [sum(1 for i in idx if labels[i] == c) for c in range(3)]  # noqa: E731
    assert count(a) == count(b) == [5, 3, 2]


def test_stratified_indices_all_and_errors() -> None:
    assert stratified_indices([0, 1, 1], None) == [0, 1, 2]
    assert stratified_indices([0, 1, 1], 10) == [0, 1, 2]
    with pytest.raises(ValueError, match=r"max_samples=0 must be a positive integer"):
        stratified_indices([0, 1], 0)
    # fewer places than classes: the largest classes get them
    chosen = stratified_indices([0] * 8 + [1] + [2], 1)
    assert len(chosen) == 1 and chosen[0] < 8


def _toy(**kw) -> LabeledDataset:
    base = dict(name="toy", modality="text", classes=["a", "b"], items=["x", "y", "z"], labels=[0, 1, 1])
    base.update(kw)
    return LabeledDataset(**base)


def test_container_defaults_subset_and_counts() -> None:
    ds = _toy(groups=["g1", "g2", "g1"])
    assert len(ds) == 3 and ds.ids == ["0", "1", "2"] and ds.sample_rate is None
    sub = ds.subset([2, 0])
    assert sub.items == ["z", "x"] and sub.labels == [1, 0] and sub.groups == ["g1", "g1"] and sub.ids == ["2", "0"]
    assert sub.classes == ds.classes and sub.classes is not ds.classes
    assert ds.class_counts() == {"a": 1, "b": 2}
    assert sub.fingerprint() != ds.fingerprint()
    audio = LabeledDataset(name="w", modality="audio", classes=["c"], items=[np.zeros(5)], labels=[0])
    assert audio.sample_rate == 16000 and audio.load(0).dtype == np.float32


def test_container_validation() -> None:
    with pytest.raises(ValueError, match=r"labels has 2 entries but items has 3"):
        _toy(labels=[0, 1])
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\)"):
        _toy(labels=[0, 1, 2])
    with pytest.raises(ValueError, match=r"groups has 1 entries"):
        _toy(groups=["g"])
    with pytest.raises(ValueError, match=r"modality='video' is not one of"):
        _toy(modality="video")


def test_fingerprint_hashes_in_memory_content() -> None:
    img = np.zeros((4, 4), dtype=np.uint8)
    a = LabeledDataset(name="m", modality="image", classes=["c"], items=[img.copy()], labels=[0])
    b = LabeledDataset(name="m", modality="image", classes=["c"], items=[img.copy()], labels=[0])
    assert a.fingerprint() == b.fingerprint() and len(a.fingerprint()) == 64
    b.items[0][0, 0] = 1
    assert a.fingerprint() != b.fingerprint()
    assert a.load(0).shape == (4, 4, 3) and a.load(0).dtype == np.uint8
    assert _toy().fingerprint() != _toy(items=["x", "y", "z!"]).fingerprint()
    assert _toy().fingerprint() != _toy(name="other").fingerprint()
