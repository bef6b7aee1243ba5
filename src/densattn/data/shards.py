"""The shards of a feature cache entry: the grid they follow, how ranks encode them, and the manifest that rank 0
writes once every shard verifies (see :mod:`densattn.data.cache` for the layout).

Every shard ``shard-START-STOP.safetensors`` holds the features of examples ``START..STOP-1`` and is followed by its
record ``shard-START-STOP.json`` (sha256, range, encoder batch size, dtype, shape): a record means a complete shard,
so a resumed extraction, with any number of ranks, redoes exactly the shards whose record is missing or whose hash
does not match.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from densattn.distributed import Distributed
from densattn.io import atomic_save_file, atomic_write_json, atomic_write_text, remove_stale_temp_files

#: most examples in one shard
MAX_SHARD_SIZE = 1024
#: about this many shards per cache entry (fewer when the data is smaller than that many encoder batches): the grain
#: of resuming, and of sharing the work between ranks (round robin, so up to this many ranks stay busy)
TARGET_SHARDS = 256
_SHARD_FILE = re.compile(r"^shard-\d+(-\d+)?\.(safetensors|json)$")

__all__ = ["MAX_SHARD_SIZE", "TARGET_SHARDS", "extract_shards", "sha256_file", "shard_ranges"]


def sha256_file(path: Path) -> str:
    """sha256 hex digest of a file's bytes (read in 1 MiB blocks).

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     _ = (Path(folder) / "a.txt").write_bytes(b"abc")
        ...     sha256_file(Path(folder) / "a.txt") == hashlib.sha256(b"abc").hexdigest()
        True
    """
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def shard_ranges(n: int, batch_size: int) -> list[tuple[int, int]]:
    """The cache's shards as ``(start, stop)`` example ranges: about ``n / 256`` examples each, rounded up to whole
    encoder batches, at least one batch and at most 1024 examples (or one batch when a batch is larger).

    The grid depends only on ``n`` and ``batch_size``, never on the number of processes, so every process count
    writes (and resumes) the same shards.

    Example:
        >>> shard_ranges(100, 16)
        [(0, 16), (16, 32), (32, 48), (48, 64), (64, 80), (80, 96), (96, 100)]
        >>> len(shard_ranges(50_000, 16)), shard_ranges(50_000, 16)[0]
        (241, (0, 208))
    """
    if n < 0 or batch_size < 1:
        raise ValueError(f"need n >= 0 and batch_size >= 1, got n={n}, batch_size={batch_size}")
    target = min(MAX_SHARD_SIZE, -(-n // TARGET_SHARDS))
    size = -(-max(target, 1) // batch_size) * batch_size  # whole batches
    return [(start, min(start + size, n)) for start in range(0, n, size)]


def _shard_name(start: int, stop: int) -> str:
    return f"shard-{start:09d}-{stop:09d}"


def _finished_shard(entry: Path, start: int, stop: int, batch_size: int, dtype: str) -> dict[str, Any] | None:
    """The manifest record of shard ``start:stop`` when it was written with this batch size and dtype and its
    hash verifies, else ``None``."""
    name = _shard_name(start, stop)
    try:
        record = json.loads((entry / f"{name}.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    expected = {"file": f"{name}.safetensors", "start": start, "count": stop - start}
    if any(record.get(k) != v for k, v in expected.items()) or record.get("batch_size") != batch_size:
        return None
    if record.get("dtype") != dtype:
        return None
    path = entry / record["file"]
    if not path.exists() or sha256_file(path) != record.get("sha256"):
        return None
    return record


def extract_shards(
    encoder,
    dataset,
    entry: Path,
    spec: dict[str, Any],
    *,
    batch_size: int,
    dtype: torch.dtype,
    show: bool,
    dist: Distributed,
    load_workers: int | None,
) -> dict[str, Any]:
    """Encode the shards of ``entry`` that are missing or do not verify, shared among the ranks of ``dist``, then
    (rank 0) verify every shard and write the manifest; returns the manifest on every rank.

    Every rank of ``dist`` calls this. Rank 0 plans (removes temporaries of killed writers, verifies the shards that
    exist); each rank encodes every ``world_size``-th missing shard; if any rank fails, every rank raises before a
    manifest is written.

    Example:
        A toy encoder over 10 texts in batches of 4 (three shards of one batch here); a second call finds them done:

        >>> import tempfile
        >>> from densattn.data.dataset import LabeledDataset
        >>> from densattn.distributed import current
        >>> from densattn.encoders.base import EncoderAdapter
        >>> class Lengths(EncoderAdapter):
        ...     name, modality, num_layers, dim = "lengths", "text", 1, 2
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.calls = 0
        ...         self.weight = torch.nn.Linear(1, 1)
        ...     def raw_model(self):
        ...         return self.weight
        ...     def _encode(self, batch):
        ...         self.calls += 1
        ...         return torch.tensor([[[len(t), t.count("a")]] for t in batch], dtype=torch.float32)
        >>> data = LabeledDataset("toy", "text", ["x", "y"], ["a" * i for i in range(10)], [i % 2 for i in range(10)])
        >>> encoder, spec = Lengths(), {"dtype": "float32", "encoder": {"pooling": "mean-masked"}}
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     args = dict(batch_size=4, dtype=torch.float32, show=False, dist=current(), load_workers=0)
        ...     manifest = extract_shards(encoder, data, Path(folder), spec, **args)
        ...     again = extract_shards(encoder, data, Path(folder), spec, **args)
        >>> manifest["num_examples"], (manifest["num_layers"], manifest["dim"])
        (10, (1, 2))
        >>> [(s["start"], s["count"]) for s in manifest["shards"]], manifest["shards"][2]["file"]
        ([(0, 4), (4, 4), (8, 2)], 'shard-000000008-000000010.safetensors')
        >>> encoder.calls, again == manifest  # 3 batches, encoded once
        (3, True)
    """
    ranges = shard_ranges(len(dataset), batch_size)

    def plan() -> list[tuple[int, int]]:
        entry.mkdir(parents=True, exist_ok=True)
        remove_stale_temp_files(entry, recursive=False)  # temporaries of killed writers
        return [r for r in ranges if _finished_shard(entry, *r, batch_size, spec["dtype"]) is None]

    pending = dist.run_on_main(plan)  # every rank gets the same plan
    mine = dist.share(pending)
    workers = load_workers if load_workers is not None else (0 if dataset.modality == "text" else 2)
    label = f" (rank {dist.rank}/{dist.world_size}: {len(mine)} of {len(pending)} shards)" if dist.enabled else ""
    dist.run_all(lambda: _encode_shards(encoder, dataset, entry, mine, batch_size, dtype, show, label, workers))
    return dist.run_on_main(lambda: _write_manifest(dataset, entry, spec, ranges, batch_size))


def _loaded_batches(dataset, batches: list[range], workers: int) -> Iterator[list[Any]]:
    """The decoded examples of each batch, in order. With ``workers > 0``, background threads decode up to two
    batches ahead, so reading and decoding files (which release the GIL) overlaps with encoding."""
    if workers <= 0:
        for batch in batches:
            yield [dataset.load(j) for j in batch]
        return
    pool = ThreadPoolExecutor(workers, thread_name_prefix="densattn-load")
    try:
        ahead: deque[list[Future]] = deque()
        for batch in batches:
            ahead.append([pool.submit(dataset.load, j) for j in batch])
            if len(ahead) > 2:
                yield [f.result() for f in ahead.popleft()]
        while ahead:
            yield [f.result() for f in ahead.popleft()]
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _encode_shards(encoder, dataset, entry, ranges, batch_size, dtype, show, label, workers) -> None:
    from tqdm.auto import tqdm

    from densattn.encoders.base import EncoderAdapter

    on_device = isinstance(encoder, EncoderAdapter)  # keep a shard's batches on the encoder's device until it ends
    bar = tqdm(
        total=sum(stop - start for start, stop in ranges),
        desc=f"extract {dataset.name} with {encoder.identity().get('encoder')}{label}",
        disable=not show,
        unit="ex",
    )
    batches = [[range(i, min(i + batch_size, stop)) for i in range(start, stop, batch_size)] for start, stop in ranges]
    loaded = _loaded_batches(dataset, [b for shard in batches for b in shard], workers)
    for (start, stop), shard_batches in zip(ranges, batches):
        parts = []
        for _ in shard_batches:
            items = next(loaded)
            feats = encoder.encode(items, to_cpu=False) if on_device else encoder.encode(items)
            if feats.dim() != 3 or feats.shape[0] != len(items):
                raise ValueError(f"encoder returned shape {tuple(feats.shape)}; expected (batch, layers, dim)")
            parts.append(feats)
            bar.update(len(items))
        shard = torch.cat(parts)
        finite = torch.isfinite(shard).flatten(1).all(1)  # one device sync per shard, not per batch
        if not bool(finite.all()):
            bad = start + int((~finite).nonzero()[0, 0])
            raise ValueError(f"encoder produced non-finite features for example {bad} ({dataset.ids[bad]!r})")
        shard = shard.to(device="cpu", dtype=dtype)
        name = _shard_name(start, stop)
        atomic_save_file({"features": shard}, entry / f"{name}.safetensors")
        record = {
            "file": f"{name}.safetensors",
            "start": start,
            "count": stop - start,
            "sha256": sha256_file(entry / f"{name}.safetensors"),
            "batch_size": batch_size,
            "dtype": str(dtype).replace("torch.", ""),
            "num_layers": int(shard.shape[1]),
            "dim": int(shard.shape[2]),
        }
        atomic_write_json(entry / f"{name}.json", record)  # after the shard: a record means a complete shard
    bar.close()


def _write_manifest(dataset, entry: Path, spec, ranges, batch_size) -> dict[str, Any]:
    """Verify every shard (whichever rank wrote it), then write the manifest (atomically) and remove files of other
    shard grids."""
    records = []
    for start, stop in ranges:
        record = _finished_shard(entry, start, stop, batch_size, spec["dtype"])
        if record is None:
            raise ValueError(
                f"feature cache {entry}: shard {_shard_name(start, stop)} is missing or does not verify after "
                "extraction (was the cache directory changed by another process?); run the extraction again"
            )
        records.append(record)
    shapes = {(r["num_layers"], r["dim"]) for r in records}
    if len(shapes) != 1:
        raise ValueError(f"feature cache {entry}: shards hold different (layers, dim) {sorted(shapes)}; delete it")
    num_layers, dim = shapes.pop()
    manifest = {
        **spec,
        "dataset": dataset.name,
        "modality": dataset.modality,
        "num_examples": len(dataset),
        "num_layers": num_layers,
        "dim": dim,
        "pooling": spec["encoder"].get("pooling", "mean-masked"),
        "classes": list(dataset.classes),
        "batch_size": batch_size,
        "shards": [{k: r[k] for k in ("file", "start", "count", "sha256")} for r in records],
    }
    atomic_write_text(entry / "manifest.json", json.dumps(manifest, indent=1, default=str))
    keep = {r["file"] for r in records} | {r["file"].replace(".safetensors", ".json") for r in records}
    for path in entry.iterdir():  # shards of an earlier grid (another batch size, an older layout)
        if (_SHARD_FILE.match(path.name) and path.name not in keep) or path.name == "progress.json":
            path.unlink(missing_ok=True)
    return json.loads(json.dumps(manifest, default=str))
