"""Feature cache: pooled per-layer encoder features on disk, safetensors shards plus a JSON manifest.

Layout of one cache entry (``<cache_dir>/<key>/``, ``key`` = hash of the encoder identity, the dataset fingerprint,
the dtype and the pooling)::

    manifest.json                         encoder identity + weights hash, pooling, dataset name/fingerprint, dtype,
                                          shapes, classes, and every shard with its first example and sha256;
                                          written last, atomically
    shard-000000000-000000048.safetensors {"features": (48, L, d)}: examples 0..47
    shard-000000000-000000048.json        that shard's sha256, range and encoder batch size (written after it)

Shards are named by the examples they hold, on a grid that depends only on the number of examples and the encoder
batch size (:func:`shard_ranges`: about 256 shards, each a whole number of encoder batches, at most 1024 examples),
so an interrupted extraction loses at most one shard's work per process and resumes from the shards whose hashes
verify, with any number of processes. Every batch holds the same examples whoever encodes it, so the features are
the same whether one process or many wrote the cache.

A cache is used only when the manifest matches what is asked for and every shard exists with its recorded hash and
shape; otherwise (stale, partial or corrupt) it is rebuilt with a warning, never silently reused.

Under ``torchrun`` (:mod:`densattn.distributed`) every rank calls :func:`cached_features`: the ranks first check
that they share the cache directory and agree on what they extract, each rank encodes its share of the missing
shards, and rank 0 verifies every shard and only then writes the manifest, so a rank killed mid-extraction leaves
no manifest that points at a missing or partial shard.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from densattn.data.dataset import LabeledDataset
from densattn.data.shards import MAX_SHARD_SIZE, TARGET_SHARDS, extract_shards, sha256_file, shard_ranges
from densattn.distributed import Distributed, current

FORMAT_VERSION = 1

__all__ = [
    "MAX_SHARD_SIZE",
    "TARGET_SHARDS",
    "FeatureSet",
    "align_feature_sets",
    "cached_features",
    "default_cache_dir",
    "shard_ranges",
]


def default_cache_dir() -> Path:
    """``$DENSATTN_CACHE/features`` or ``~/.cache/densattn/features``.

    Example:
        >>> from unittest import mock
        >>> with mock.patch.dict(os.environ, {"DENSATTN_CACHE": "/data/densattn"}):
        ...     default_cache_dir().as_posix()
        '/data/densattn/features'
        >>> with mock.patch.dict(os.environ, {"DENSATTN_CACHE": ""}):
        ...     default_cache_dir() == Path.home() / ".cache" / "densattn" / "features"
        True
    """
    root = os.environ.get("DENSATTN_CACHE") or Path.home() / ".cache" / "densattn"
    return Path(root) / "features"


@dataclass
class FeatureSet:
    """Pooled features of a whole dataset: ``features (N, L, d)`` float32 with labels and metadata.

    Attributes:
        features: ``(N, L, d)`` pooled per-layer features.
        labels: ``(N,)`` int64 class indices into ``classes``.
        classes: class names.
        ids: one id per example (what aligns feature sets of several encoders).
        groups: optional group per example (for leave-one-group-out folds).
        manifest: the cache manifest (encoder identity, dataset fingerprint, ...); empty when built in memory.

    Example:
        >>> fs = FeatureSet(torch.randn(5, 7, 384), torch.tensor([0, 1, 0, 1, 1]), ["neg", "pos"], list("abcde"))
        >>> len(fs), fs.num_layers, fs.dim, fs.groups
        (5, 7, 384, None)
    """

    features: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    ids: list[str]
    groups: list[str] | None = None
    manifest: dict[str, Any] = field(default_factory=dict)

    @property
    def num_layers(self) -> int:
        return self.features.shape[1]

    @property
    def dim(self) -> int:
        return self.features.shape[2]

    def __len__(self) -> int:
        return self.features.shape[0]


def _key(identity: dict[str, Any], fingerprint: str, dtype: str) -> tuple[str, dict[str, Any]]:
    spec = {"format": FORMAT_VERSION, "encoder": identity, "dataset_fingerprint": fingerprint, "dtype": dtype}
    key = hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:24]
    return key, spec


def _verify(entry: Path, spec: dict[str, Any], n: int) -> tuple[dict[str, Any] | None, str]:
    """The manifest when the entry is complete and intact, else ``(None, reason)``."""
    manifest_path = entry / "manifest.json"
    if not manifest_path.exists():
        return None, "no manifest (partial extraction)"
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        return None, f"unreadable manifest ({err})"
    for k, v in spec.items():
        if json.dumps(manifest.get(k), sort_keys=True, default=str) != json.dumps(v, sort_keys=True, default=str):
            return None, f"stale manifest: {k} differs"
    if manifest.get("num_examples") != n:
        return None, "stale manifest: number of examples differs"
    for shard in manifest.get("shards", []):
        path = entry / shard["file"]
        if not path.exists():
            return None, f"missing shard {shard['file']}"
        if sha256_file(path) != shard["sha256"]:
            return None, f"corrupt shard {shard['file']} (hash mismatch)"
    return manifest, ""


def cached_features(
    encoder,
    dataset: LabeledDataset,
    *,
    cache_dir: str | Path | None = None,
    batch_size: int = 16,
    progress: bool | None = None,
    dtype: torch.dtype = torch.float32,
    dist: Distributed | None = None,
    load_workers: int | None = None,
) -> FeatureSet:
    """Features of ``dataset`` under ``encoder``, from the cache when it is valid, else extracted and cached.

    Args:
        encoder: an :class:`~densattn.encoders.EncoderAdapter` (``identity()``, ``encode()``).
        dataset: the examples.
        cache_dir: cache root (default :func:`default_cache_dir`).
        batch_size: encoder batch size (also sets the shard grid, :func:`shard_ranges`).
        progress: show a progress bar (default: only when stderr is a terminal; only rank 0 shows one).
        dtype: storage dtype of the features (float32 or float16).
        dist: the ranks that extract together (default :func:`densattn.distributed.current`: every rank of a
            ``torchrun`` job calls this function; one process otherwise).
        load_workers: threads that read and decode examples ahead of the encoder (default: 2 for audio and
            images, 0 for text, whose examples need no decoding).

    Returns:
        A :class:`FeatureSet` with ``features (N, num_layers, dim)`` in float32 (the whole dataset on every rank).

    Raises:
        ValueError: a bad argument, an encoder that returns a wrong shape or non-finite features, ranks that ask for
            different data, or a cache directory that the ranks do not share.

    Example:
        >>> import tempfile
        >>> from densattn.data.dataset import LabeledDataset
        >>> class Lengths:  # a stand-in encoder: (B, 1, 1) text lengths
        ...     def identity(self): return {"encoder": "lengths"}
        ...     def encode(self, batch): return torch.tensor([[[float(len(t))]] for t in batch])
        >>> data = LabeledDataset("demo", "text", ["a", "b"], ["x", "yy", "zzz"], [0, 1, 0], ["0", "1", "2"])
        >>> cached_features(Lengths(), data, cache_dir=tempfile.mkdtemp()).features.flatten().tolist()
        [1.0, 2.0, 3.0]
    """
    if dtype not in (torch.float32, torch.float16):
        raise ValueError(f"dtype must be torch.float32 or torch.float16, got {dtype}")
    if len(dataset) == 0:
        raise ValueError(f"dataset {dataset.name!r} has no examples; check the data spec or max_samples")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    ctx = dist if dist is not None else current()
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    identity = encoder.identity()
    key, spec = _key(identity, dataset.fingerprint(), str(dtype).replace("torch.", ""))
    entry = root / key
    n = len(dataset)
    ctx.check_same((key, n, batch_size), "feature cache entry (encoder, data, --max-samples or --batch-size-encode)")
    ctx.check_shared_directory(root, "--cache-dir")
    manifest = ctx.run_on_main(lambda: _usable_manifest(entry, spec, n))
    if manifest is None:
        show = (progress if progress is not None else _stderr_is_tty()) and ctx.is_main
        manifest = extract_shards(
            encoder,
            dataset,
            entry,
            spec,
            batch_size=batch_size,
            dtype=dtype,
            show=show,
            dist=ctx,
            load_workers=load_workers,
        )
    shards = [load_file(str(entry / s["file"]))["features"] for s in manifest["shards"]]
    features = torch.cat(shards).float()
    expected = (n, manifest["num_layers"], manifest["dim"])
    if tuple(features.shape) != expected:  # hashes matched but the content is not what the manifest says
        raise ValueError(f"feature cache {entry} holds {tuple(features.shape)}, expected {expected}; delete it")
    return FeatureSet(
        features=features,
        labels=torch.tensor(dataset.labels, dtype=torch.long),
        classes=list(dataset.classes),
        ids=list(dataset.ids),
        groups=list(dataset.groups) if dataset.groups is not None else None,
        manifest=manifest,
    )


def _usable_manifest(entry: Path, spec: dict[str, Any], n: int) -> dict[str, Any] | None:
    """The verified manifest, or ``None`` after removing a stale or corrupt one (with a warning)."""
    manifest, reason = _verify(entry, spec, n)
    if manifest is None and entry.exists() and reason != "no manifest (partial extraction)":
        warnings.warn(f"feature cache {entry} is not usable ({reason}); rebuilding it", stacklevel=3)
        (entry / "manifest.json").unlink(missing_ok=True)
    return manifest


def align_feature_sets(feature_sets: Sequence[FeatureSet]) -> list[FeatureSet]:
    """Check that every feature set holds the same examples and return them in the first one's order.

    Raises:
        ValueError: fewer than two sets, different example ids, or different labels / classes for the same id.

    Example:
        >>> y = torch.tensor([0, 1, 1])
        >>> text = FeatureSet(torch.arange(3.0).view(3, 1, 1), y, ["a", "b"], ["x", "y", "z"])
        >>> audio = FeatureSet(torch.tensor([[[20.0]], [[10.0]], [[0.0]]]), y.flip(0), ["a", "b"], ["z", "y", "x"])
        >>> _, aligned = align_feature_sets([text, audio])
        >>> aligned.ids, aligned.features.flatten().tolist()  # audio reordered to text's order
        (['x', 'y', 'z'], [0.0, 10.0, 20.0])
        >>> align_feature_sets([text, FeatureSet(text.features, y, ["a", "b"], ["x", "y", "w"])])
        Traceback (most recent call last):
        ...
        ValueError: feature_sets[1] holds different examples than feature_sets[0] (3 vs 3; e.g. missing ['z'], ...
    """
    if len(feature_sets) < 2:
        raise ValueError(f"feature_sets: fusion needs at least two feature sets; got {len(feature_sets)}")
    first = feature_sets[0]
    if len(set(first.ids)) != len(first.ids):
        raise ValueError("feature_sets[0]: example ids are not unique, so the sets cannot be matched by id")
    position = {example_id: i for i, example_id in enumerate(first.ids)}
    aligned = [first]
    for m, fs in enumerate(feature_sets[1:], start=1):
        if len(fs) != len(first) or set(fs.ids) != set(position):
            missing = sorted(set(first.ids) - set(fs.ids))[:3]
            extra = sorted(set(fs.ids) - set(first.ids))[:3]
            raise ValueError(
                f"feature_sets[{m}] holds different examples than feature_sets[0] ({len(fs)} vs {len(first)}; "
                f"e.g. missing {missing}, extra {extra}): extract both from the same data, --max-samples and --seed"
            )
        if list(fs.classes) != list(first.classes):
            raise ValueError(f"feature_sets[{m}] has classes {fs.classes}, feature_sets[0] has {first.classes}")
        where = {example_id: i for i, example_id in enumerate(fs.ids)}
        order = torch.tensor([where[i] for i in first.ids]) if fs.ids != first.ids else None
        if order is not None:
            fs = FeatureSet(
                features=fs.features[order],
                labels=fs.labels[order],
                classes=fs.classes,
                ids=list(first.ids),
                groups=None if fs.groups is None else [fs.groups[i] for i in order.tolist()],
                manifest=fs.manifest,
            )
        if not torch.equal(fs.labels, first.labels):
            bad = int((fs.labels != first.labels).nonzero()[0, 0])
            raise ValueError(
                f"feature_sets[{m}] gives example {first.ids[bad]!r} label {int(fs.labels[bad])} but "
                f"feature_sets[0] gives {int(first.labels[bad])}: the sets must label the same examples alike"
            )
        aligned.append(fs)
    return aligned


def _stderr_is_tty() -> bool:
    return hasattr(sys.stderr, "isatty") and sys.stderr.isatty()
