"""Feature cache: pooled per-layer encoder features on disk, safetensors shards plus a JSON manifest.

Layout of one cache entry (``<cache_dir>/<key>/``, ``key`` = hash of the encoder identity, the dataset fingerprint,
the dtype and the pooling)::

    manifest.json              encoder identity + weights hash, pooling, dataset name/fingerprint, dtype, shapes,
                               classes, ids, labels, groups, and the sha256 of every shard; written last, atomically
    progress.json              shards finished so far (an interrupted extraction resumes from here)
    shard-00000.safetensors    {"features": (n, L, d)}

A cache is used only when the manifest matches what is asked for and every shard exists with its recorded hash and
shape; otherwise (stale, partial or corrupt) it is rebuilt with a warning, never silently reused.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from densattn.data.dataset import LabeledDataset
from densattn.io import atomic_save_file, atomic_write_text, remove_stale_temp_files

SHARD_SIZE = 1024
FORMAT_VERSION = 1

__all__ = ["FeatureSet", "align_feature_sets", "cached_features", "default_cache_dir"]


def default_cache_dir() -> Path:
    """``$DENSATTN_CACHE/features`` or ``~/.cache/densattn/features``."""
    root = os.environ.get("DENSATTN_CACHE") or Path.home() / ".cache" / "densattn"
    return Path(root) / "features"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass
class FeatureSet:
    """Pooled features of a whole dataset: ``features (N, L, d)`` float32 with labels and metadata."""

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
        if _sha256(path) != shard["sha256"]:
            return None, f"corrupt shard {shard['file']} (hash mismatch)"
    return manifest, ""


def _iter_batches(n: int, start: int, stop: int, batch_size: int) -> Iterator[range]:
    for i in range(start, min(stop, n), batch_size):
        yield range(i, min(i + batch_size, stop, n))


def cached_features(
    encoder,
    dataset: LabeledDataset,
    *,
    cache_dir: str | Path | None = None,
    batch_size: int = 16,
    progress: bool | None = None,
    dtype: torch.dtype = torch.float32,
) -> FeatureSet:
    """Features of ``dataset`` under ``encoder``, from the cache when it is valid, else extracted and cached.

    Args:
        encoder: an :class:`~densattn.encoders.EncoderAdapter` (``identity()``, ``encode()``).
        dataset: the examples.
        cache_dir: cache root (default :func:`default_cache_dir`).
        batch_size: encoder batch size.
        progress: show a progress bar (default: only when stderr is a terminal).
        dtype: storage dtype of the features (float32 or float16).

    Returns:
        A :class:`FeatureSet` with ``features (N, num_layers, dim)`` in float32.
    """
    if dtype not in (torch.float32, torch.float16):
        raise ValueError(f"dtype must be torch.float32 or torch.float16, got {dtype}")
    if len(dataset) == 0:
        raise ValueError(f"dataset {dataset.name!r} has no examples; check the data spec or max_samples")
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    identity = encoder.identity()
    key, spec = _key(identity, dataset.fingerprint(), str(dtype).replace("torch.", ""))
    entry = root / key
    n = len(dataset)
    manifest, reason = _verify(entry, spec, n)
    if manifest is None:
        if entry.exists() and reason != "no manifest (partial extraction)":
            warnings.warn(f"feature cache {entry} is not usable ({reason}); rebuilding it", stacklevel=2)
            (entry / "manifest.json").unlink(missing_ok=True)
        manifest = _extract(encoder, dataset, entry, spec, batch_size, progress, dtype)
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


def _extract(encoder, dataset, entry: Path, spec, batch_size, progress, dtype) -> dict[str, Any]:
    from tqdm.auto import tqdm

    entry.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files(entry, recursive=False)  # shards half-written by a killed extraction
    n = len(dataset)
    progress_path = entry / "progress.json"
    done: list[dict[str, Any]] = []
    if progress_path.exists():  # resume an interrupted extraction: keep the shards that verify
        try:
            state = json.loads(progress_path.read_text())
            if state.get("spec") == json.loads(json.dumps(spec, default=str)):
                for shard in state.get("shards", []):
                    path = entry / shard["file"]
                    if path.exists() and _sha256(path) == shard["sha256"]:
                        done.append(shard)
                    else:
                        break
        except (OSError, json.JSONDecodeError):
            done = []
    show = progress if progress is not None else _stderr_is_tty()
    bar = tqdm(
        total=n,
        desc=f"extract {dataset.name} with {spec['encoder'].get('encoder')}",
        disable=not show,
        unit="ex",
        initial=sum(s["count"] for s in done),
    )
    num_layers = dim = None
    for index in range(len(done), (n + SHARD_SIZE - 1) // SHARD_SIZE):
        start, stop = index * SHARD_SIZE, min((index + 1) * SHARD_SIZE, n)
        parts = []
        for batch in _iter_batches(n, start, stop, batch_size):
            items = [dataset.load(i) for i in batch]
            feats = encoder.encode(items)
            if feats.dim() != 3 or feats.shape[0] != len(items):
                raise ValueError(f"encoder returned shape {tuple(feats.shape)}; expected (batch, layers, dim)")
            if not torch.isfinite(feats).all():
                raise ValueError(f"encoder produced non-finite features for examples {batch.start}..{batch.stop - 1}")
            parts.append(feats.to(dtype))
            bar.update(len(items))
        shard = torch.cat(parts)
        name = f"shard-{index:05d}.safetensors"
        atomic_save_file({"features": shard}, entry / name)
        done.append({"file": name, "count": int(shard.shape[0]), "sha256": _sha256(entry / name)})
        atomic_write_text(progress_path, json.dumps({"spec": spec, "shards": done}, default=str))
    bar.close()
    first = load_file(str(entry / done[0]["file"]))["features"]
    num_layers, dim = int(first.shape[1]), int(first.shape[2])
    manifest = {
        **spec,
        "dataset": dataset.name,
        "modality": dataset.modality,
        "num_examples": n,
        "num_layers": num_layers,
        "dim": dim,
        "pooling": spec["encoder"].get("pooling", "mean-masked"),
        "classes": list(dataset.classes),
        "shards": done,
    }
    atomic_write_text(entry / "manifest.json", json.dumps(manifest, indent=1, default=str))
    progress_path.unlink(missing_ok=True)
    return json.loads(json.dumps(manifest, default=str))


def _stderr_is_tty() -> bool:
    import sys

    return hasattr(sys.stderr, "isatty") and sys.stderr.isatty()


def align_feature_sets(feature_sets: Sequence[FeatureSet]) -> list[FeatureSet]:
    """Check that every feature set holds the same examples and return them in the first one's order.

    Raises:
        ValueError: fewer than two sets, different example ids, or different labels / classes for the same id.
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
