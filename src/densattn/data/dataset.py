"""The labelled-dataset container every source returns, and the seeded stratified subsample.

A :class:`LabeledDataset` holds *references* to examples (text strings, file paths or small in-memory arrays)
and decodes one example at a time with :meth:`LabeledDataset.load`, so building a dataset never decodes audio
or images.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np

from densattn.data.audio import TARGET_SAMPLE_RATE, read_audio
from densattn.data.images import read_image, to_rgb_uint8

Modality = Literal["text", "image", "audio"]
MODALITIES: tuple[str, ...] = ("text", "image", "audio")


@dataclass
class LabeledDataset:
    """A classification dataset: example references, integer labels and optional groups.

    Args:
        name: the spec the dataset came from, e.g. ``"fortunes"`` or ``"folder:/data/birds"``.
        modality: ``"text"``, ``"image"`` or ``"audio"``.
        classes: sorted class names; label ``i`` means ``classes[i]``.
        items: one reference per example: ``str`` text (text), a file path (image/audio) or an ``np.ndarray``
            (image: ``(H, W)`` or ``(H, W, C)``; audio: ``(T,)`` at ``sample_rate``).
        labels: integer labels in ``[0, len(classes))``.
        groups: optional group name per example (IEMOCAP session, game level, voice) for leave-one-group-out.
        ids: stable identifier per example (a path or ``"split:index"``); defaults to the position.
        sample_rate: audio only: the rate :meth:`load` returns (16000).

    Example:
        >>> ds = LabeledDataset(name="toy", modality="text", classes=["neg", "pos"],
        ...                     items=["bad", "good", "fine"], labels=[0, 1, 1])
        >>> len(ds), ds.load(1), ds.subset([2]).ids
        (3, 'good', ['2'])
    """

    name: str
    modality: Modality
    classes: list[str]
    items: list[Any]
    labels: list[int]
    groups: list[str] | None = None
    ids: list[str] = field(default_factory=list)
    sample_rate: int | None = None

    def __post_init__(self) -> None:
        if self.modality not in MODALITIES:
            raise ValueError(f"modality={self.modality!r} is not one of {MODALITIES}; pick one of them.")
        n = len(self.items)
        if len(self.labels) != n:
            raise ValueError(f"labels has {len(self.labels)} entries but items has {n}; give one label per item.")
        if self.groups is not None and len(self.groups) != n:
            raise ValueError(f"groups has {len(self.groups)} entries but items has {n}; give one group per item.")
        if not self.ids:
            self.ids = [str(i) for i in range(n)]
        if len(self.ids) != n:
            raise ValueError(f"ids has {len(self.ids)} entries but items has {n}; give one id per item.")
        bad = [y for y in self.labels if not 0 <= int(y) < len(self.classes)]
        if bad:
            raise ValueError(f"labels must lie in [0, {len(self.classes)}) for classes={self.classes}; got {bad[:5]}.")
        self.labels = [int(y) for y in self.labels]
        if self.modality == "audio" and self.sample_rate is None:
            self.sample_rate = TARGET_SAMPLE_RATE

    def __len__(self) -> int:
        return len(self.items)

    def load(self, i: int) -> str | np.ndarray:
        """Decode example ``i``.

        Returns:
            text: the ``str``; image: ``uint8`` RGB array ``(H, W, 3)``; audio: ``float32`` mono waveform
            ``(T,)`` at :attr:`sample_rate` (16 kHz).

        Raises:
            ValueError: the file is missing or cannot be decoded (the message names the file).
        """
        item = self.items[i]
        if self.modality == "text":
            return str(item)
        if self.modality == "image":
            if isinstance(item, np.ndarray):
                return to_rgb_uint8(item)
            return read_image(item)
        if isinstance(item, np.ndarray):
            wave = np.asarray(item, dtype=np.float32)
            return wave.mean(axis=-1) if wave.ndim == 2 else wave
        return read_audio(item, target_sample_rate=self.sample_rate or TARGET_SAMPLE_RATE)

    def fingerprint(self) -> str:
        """sha256 hex digest of what determines the features: name, modality, classes, ids, labels, rate,
        and per item its size + mtime_ns (files) or a content hash (text, arrays)."""
        digest = hashlib.sha256()
        header = {
            "name": self.name,
            "modality": self.modality,
            "classes": list(self.classes),
            "ids": list(self.ids),
            "labels": list(self.labels),
            "sample_rate": self.sample_rate,
        }
        digest.update(json.dumps(header, sort_keys=True).encode())
        for item in self.items:
            digest.update(_item_signature(item, self.modality))
        return digest.hexdigest()

    def subset(self, indices: Sequence[int]) -> LabeledDataset:
        """The examples at ``indices`` (same classes, so label numbers keep their meaning)."""
        idx = [int(i) for i in indices]
        return replace(
            self,
            classes=list(self.classes),
            items=[self.items[i] for i in idx],
            labels=[self.labels[i] for i in idx],
            groups=None if self.groups is None else [self.groups[i] for i in idx],
            ids=[self.ids[i] for i in idx],
        )

    def class_counts(self) -> dict[str, int]:
        """Number of examples per class name."""
        counts = np.bincount(np.asarray(self.labels, dtype=np.int64), minlength=len(self.classes))
        return {c: int(k) for c, k in zip(self.classes, counts)}


def _item_signature(item: Any, modality: str) -> bytes:
    if isinstance(item, np.ndarray):
        arr = np.ascontiguousarray(item)
        head = f"array:{arr.dtype.str}:{arr.shape}:".encode()
        return head + hashlib.sha256(arr.tobytes()).digest()
    if modality == "text":
        return b"text:" + hashlib.sha256(str(item).encode("utf-8", "surrogatepass")).digest()
    path = os.fspath(item)
    try:
        st = os.stat(path)
    except OSError:
        return f"missing:{path}".encode()
    return f"file:{path}:{st.st_size}:{st.st_mtime_ns}".encode()


def stratified_indices(labels: Sequence[int], max_samples: int | None, *, seed: int = 0) -> list[int]:
    """A deterministic, seeded, class-stratified subsample of at most ``max_samples`` positions (sorted).

    Each class ``c`` with ``n_c`` of ``N`` examples gets ``floor(max_samples * n_c / N)`` places, raised to 1
    when there are at least as many places as classes; the places left go to the largest fractional remainders
    (ties to the lower label). Members are drawn with ``np.random.default_rng(seed)``, one permutation per
    class. The same labels, ``max_samples`` and ``seed`` always give the same positions.

    Example:
        >>> labels = [0, 0, 0, 0, 1, 1]
        >>> stratified_indices(labels, 3, seed=0) == stratified_indices(labels, 3, seed=0)
        True
    """
    n = len(labels)
    if max_samples is None or max_samples >= n:
        return list(range(n))
    if max_samples < 1:
        raise ValueError(f"max_samples={max_samples} must be a positive integer (or None for all examples).")
    y = np.asarray(labels, dtype=np.int64)
    present = np.unique(y)
    counts = np.array([(y == c).sum() for c in present], dtype=np.int64)
    exact = max_samples * counts / n
    quota = np.floor(exact).astype(np.int64)
    if max_samples >= len(present):
        quota = np.maximum(quota, 1)
    # Trim any excess created by the one-per-class floor, from the largest quotas first.
    while quota.sum() > max_samples:
        quota[int(np.argmax(quota))] -= 1
    remainder = exact - np.floor(exact)
    order = sorted(range(len(present)), key=lambda k: (-remainder[k], k))
    k = 0
    while quota.sum() < max_samples:
        j = order[k % len(order)]
        if quota[j] < counts[j]:
            quota[j] += 1
        k += 1
    rng = np.random.default_rng(seed)
    chosen: list[int] = []
    for c, q in zip(present, quota):
        members = np.flatnonzero(y == c)
        chosen.extend(int(i) for i in members[rng.permutation(len(members))[: int(q)]])
    return sorted(chosen)


def build_dataset(
    name: str,
    modality: Modality,
    items: Sequence[Any],
    label_names: Sequence[str],
    *,
    ids: Sequence[str],
    groups: Sequence[str] | None = None,
    max_samples: int | None = None,
    seed: int = 0,
    sample_rate: int | None = None,
) -> LabeledDataset:
    """Sort the class names, number the labels, apply the stratified ``max_samples`` subsample, wrap it.

    Raises:
        ValueError: no examples, fewer than 2 classes, or a ``max_samples`` that keeps fewer than 2 classes (the
            message names the source).
    """
    if len(items) == 0:
        raise ValueError(f"dataset {name!r} has no examples; check the path and its contents.")
    classes = sorted(set(label_names))
    if len(classes) < 2:
        raise ValueError(
            f"dataset {name!r} has {len(classes)} class ({classes[0]!r}, {len(items)} examples); classification needs "
            "at least 2: check the label column or the folder layout (one subfolder per class)."
        )
    index = {c: i for i, c in enumerate(classes)}
    labels = [index[c] for c in label_names]
    keep = stratified_indices(labels, max_samples, seed=seed)
    present = sorted({labels[i] for i in keep})
    if len(present) < 2:
        raise ValueError(
            f"dataset {name!r}: max_samples={max_samples} keeps examples of {len(present)} of its {len(classes)} "
            f"classes; classification needs at least 2: raise --max-samples to at least {len(classes)}."
        )
    return LabeledDataset(
        name=name,
        modality=modality,
        classes=classes,
        items=[items[i] for i in keep],
        labels=[labels[i] for i in keep],
        groups=None if groups is None else [groups[i] for i in keep],
        ids=[ids[i] for i in keep],
        sample_rate=sample_rate if modality == "audio" else None,
    )
