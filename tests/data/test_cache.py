"""Feature cache: reuse, invalidation, corruption, partial extraction, and the shard grid."""

import hashlib
import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from densattn.data import cache as cache_mod
from densattn.data.cache import cached_features, shard_ranges
from densattn.data.shards import _loaded_batches


def test_second_call_reuses_cache(tmp_path, toy_dataset, encoder_cls):
    enc = encoder_cls()
    a = cached_features(enc, toy_dataset, cache_dir=tmp_path, batch_size=8)
    calls = enc.calls
    b = cached_features(enc, toy_dataset, cache_dir=tmp_path, batch_size=8)
    assert enc.calls == calls and torch.equal(a.features, b.features)
    assert a.features.shape == (40, 3, 8) and a.manifest["num_examples"] == 40
    manifest = json.loads(next(tmp_path.glob("*/manifest.json")).read_text())
    for key in ("encoder", "dataset_fingerprint", "dtype", "num_layers", "dim", "pooling", "shards"):
        assert key in manifest


def test_changed_encoder_or_data_gives_new_entry(tmp_path, toy_dataset, encoder_cls):
    a = cached_features(encoder_cls("v1"), toy_dataset, cache_dir=tmp_path)
    b = cached_features(encoder_cls("v2"), toy_dataset, cache_dir=tmp_path)
    assert not torch.equal(a.features, b.features)
    sub = toy_dataset.subset(range(30))
    enc = encoder_cls("v1")
    c = cached_features(enc, sub, cache_dir=tmp_path)
    assert enc.calls > 0 and len(c) == 30
    assert len(list(tmp_path.glob("*/manifest.json"))) == 3


def _shards(tmp_path):
    return sorted(tmp_path.glob("*/shard-*.safetensors"))


def test_corrupt_shard_is_detected_and_only_it_is_rebuilt(tmp_path, toy_dataset, encoder_cls):
    enc = encoder_cls()
    a = cached_features(enc, toy_dataset, cache_dir=tmp_path, batch_size=8)
    shards = _shards(tmp_path)
    assert len(shards) == 5  # 40 examples, one 8-example batch per shard
    data = bytearray(shards[2].read_bytes())
    data[-5] ^= 0xFF
    shards[2].write_bytes(bytes(data))
    calls = enc.calls
    with pytest.warns(UserWarning, match="corrupt shard"):
        b = cached_features(enc, toy_dataset, cache_dir=tmp_path, batch_size=8)
    assert enc.calls == calls + 1 and torch.equal(a.features, b.features)  # one batch: the corrupt shard


def test_stale_manifest_is_rewritten_from_verified_shards(tmp_path, toy_dataset, encoder_cls):
    enc = encoder_cls()
    a = cached_features(enc, toy_dataset, cache_dir=tmp_path)
    manifest_path = next(tmp_path.glob("*/manifest.json"))
    manifest = json.loads(manifest_path.read_text())
    manifest["num_examples"] = 39
    manifest_path.write_text(json.dumps(manifest))
    calls = enc.calls
    with pytest.warns(UserWarning, match="stale"):
        b = cached_features(enc, toy_dataset, cache_dir=tmp_path)
    assert enc.calls == calls  # every shard still verifies against its own record
    assert json.loads(manifest_path.read_text())["num_examples"] == 40 and torch.equal(a.features, b.features)


def test_interrupted_extraction_resumes_from_verified_shards(tmp_path, toy_dataset, encoder_cls):
    enc = encoder_cls()

    class Boom(Exception):
        pass

    original = enc.encode

    def failing(batch):
        if enc.calls >= 3:  # fail during the fourth batch (the fourth shard)
            raise Boom
        return original(batch)

    enc.encode = failing
    with pytest.raises(Boom):
        cached_features(enc, toy_dataset, cache_dir=tmp_path, batch_size=4)
    entry = next(tmp_path.iterdir())
    assert not (entry / "manifest.json").exists()
    assert sorted(p.name for p in entry.glob("shard-*.json")) == [
        "shard-000000000-000000004.json",
        "shard-000000004-000000008.json",
        "shard-000000008-000000012.json",
    ]
    fresh = encoder_cls()
    full = cached_features(fresh, toy_dataset, cache_dir=tmp_path, batch_size=4)
    assert fresh.calls == 7  # only the seven missing shards were encoded
    reference = cached_features(encoder_cls(), toy_dataset, cache_dir=tmp_path / "other", batch_size=4)
    assert torch.equal(full.features, reference.features)
    manifest = json.loads((entry / "manifest.json").read_text())
    assert [s["start"] for s in manifest["shards"]] == list(range(0, 40, 4))


def test_shard_without_its_record_is_encoded_again(tmp_path, toy_dataset, encoder_cls):
    """A writer killed between a shard and its record leaves a shard nobody vouches for: it is redone."""
    cached_features(encoder_cls(), toy_dataset, cache_dir=tmp_path, batch_size=8)
    entry = next(tmp_path.iterdir())
    (entry / "manifest.json").unlink()
    (entry / "shard-000000016-000000024.json").unlink()
    enc = encoder_cls()
    cached_features(enc, toy_dataset, cache_dir=tmp_path, batch_size=8)
    assert enc.calls == 1


def test_another_batch_size_reuses_nothing_and_removes_the_old_grid(tmp_path, toy_dataset, encoder_cls):
    a = cached_features(encoder_cls(), toy_dataset, cache_dir=tmp_path, batch_size=8)
    enc = encoder_cls()
    entry = next(tmp_path.iterdir())
    (entry / "manifest.json").unlink()
    b = cached_features(enc, toy_dataset, cache_dir=tmp_path, batch_size=5)
    assert enc.calls == 8 and torch.equal(a.features, b.features)
    assert len(_shards(tmp_path)) == 8 and len(list(entry.glob("shard-*.json"))) == 8


def test_cache_written_by_the_previous_layout_still_loads(tmp_path, toy_dataset, encoder_cls):
    """One ``shard-00000.safetensors`` and a manifest without ``start`` (the 1024-example layout) is still valid."""
    a = cached_features(encoder_cls(), toy_dataset, cache_dir=tmp_path)
    entry = next(tmp_path.iterdir())
    for path in entry.glob("shard-*"):
        path.unlink()
    save_file({"features": a.features}, str(entry / "shard-00000.safetensors"))
    manifest = json.loads((entry / "manifest.json").read_text())
    digest = hashlib.sha256((entry / "shard-00000.safetensors").read_bytes()).hexdigest()
    manifest["shards"] = [{"file": "shard-00000.safetensors", "count": 40, "sha256": digest}]
    (entry / "manifest.json").write_text(json.dumps(manifest))
    enc = encoder_cls()
    b = cached_features(enc, toy_dataset, cache_dir=tmp_path)
    assert enc.calls == 0 and torch.equal(a.features, b.features)


def test_partial_extraction_of_the_previous_layout_is_replaced(tmp_path, toy_dataset, encoder_cls):
    a = cached_features(encoder_cls(), toy_dataset, cache_dir=tmp_path / "ref")
    entry = tmp_path / "new" / next((tmp_path / "ref").iterdir()).name
    entry.mkdir(parents=True)
    save_file({"features": a.features[:10]}, str(entry / "shard-00000.safetensors"))
    (entry / "progress.json").write_text("{}")
    b = cached_features(encoder_cls(), toy_dataset, cache_dir=tmp_path / "new")
    assert torch.equal(a.features, b.features)
    assert not (entry / "progress.json").exists() and not (entry / "shard-00000.safetensors").exists()


def test_non_finite_features_name_the_example(tmp_path, toy_dataset, encoder_cls):
    enc = encoder_cls()
    original = enc.encode

    def poisoned(batch):
        out = original(batch)
        if "example number 13 about cats" in batch:
            out[batch.index("example number 13 about cats"), 1, 2] = float("nan")
        return out

    enc.encode = poisoned
    with pytest.raises(ValueError, match=r"non-finite features for example 13 \('13'\)"):
        cached_features(enc, toy_dataset, cache_dir=tmp_path, batch_size=8)
    assert not list(tmp_path.glob("*/manifest.json"))


@pytest.mark.parametrize("workers", [0, 1, 3])
def test_examples_are_decoded_ahead_in_order_and_errors_surface(toy_dataset, workers):
    batches = [range(i, min(i + 6, 40)) for i in range(0, 40, 6)]
    loaded = list(_loaded_batches(toy_dataset, batches, workers))
    assert loaded == [[toy_dataset.load(j) for j in b] for b in batches]

    class Broken:
        def load(self, i):
            if i == 9:
                raise ValueError("cannot decode example 9")
            return i

    with pytest.raises(ValueError, match="cannot decode example 9"):
        list(_loaded_batches(Broken(), batches, workers))


def test_extraction_can_decode_in_background_threads(tmp_path, toy_dataset, encoder_cls, monkeypatch):
    """``load_workers`` threads decode ahead of the encoder (the default for audio and images); the features equal
    those of decoding inline."""
    import threading

    seen = set()
    original = type(toy_dataset).load

    def recording(self, i):
        seen.add(threading.current_thread().name)
        return original(self, i)

    monkeypatch.setattr(type(toy_dataset), "load", recording)
    a = cached_features(encoder_cls(), toy_dataset, cache_dir=tmp_path / "inline", batch_size=4, load_workers=0)
    assert seen == {threading.current_thread().name}
    seen.clear()
    b = cached_features(encoder_cls(), toy_dataset, cache_dir=tmp_path / "ahead", batch_size=4, load_workers=2)
    assert seen and all(name.startswith("densattn-load") for name in seen) and torch.equal(a.features, b.features)


@settings(max_examples=200, deadline=None)
@given(n=st.integers(1, 200_000), batch_size=st.integers(1, 2048))
def test_shard_grid_tiles_the_examples_in_whole_batches(n, batch_size):
    ranges = shard_ranges(n, batch_size)
    assert ranges[0][0] == 0 and ranges[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    sizes = [stop - start for start, stop in ranges]
    assert all(size % batch_size == 0 for size in sizes[:-1])  # every shard but the last is whole batches
    assert max(sizes) <= max(cache_mod.MAX_SHARD_SIZE + batch_size - 1, batch_size)
    whole_batches = -(-n // batch_size)
    assert len(ranges) <= cache_mod.TARGET_SHARDS or sizes[0] >= cache_mod.MAX_SHARD_SIZE
    assert len(ranges) >= min(whole_batches, cache_mod.TARGET_SHARDS) // 2


def test_empty_dataset_is_an_error(tmp_path, toy_dataset, encoder_cls):
    with pytest.raises(ValueError, match="no examples"):
        cached_features(encoder_cls(), toy_dataset.subset([]), cache_dir=tmp_path)
