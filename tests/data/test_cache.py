"""Feature cache: reuse, invalidation, corruption and partial extraction."""

import json

import pytest
import torch

from densattn.data import cache as cache_mod
from densattn.data.cache import cached_features


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


def test_corrupt_shard_is_detected_and_rebuilt(tmp_path, toy_dataset, encoder_cls):
    enc = encoder_cls()
    a = cached_features(enc, toy_dataset, cache_dir=tmp_path)
    shard = next(tmp_path.glob("*/shard-00000.safetensors"))
    data = bytearray(shard.read_bytes())
    data[-5] ^= 0xFF
    shard.write_bytes(bytes(data))
    calls = enc.calls
    with pytest.warns(UserWarning, match="corrupt shard"):
        b = cached_features(enc, toy_dataset, cache_dir=tmp_path)
    assert enc.calls > calls and torch.equal(a.features, b.features)


def test_stale_manifest_is_rebuilt(tmp_path, toy_dataset, encoder_cls):
    enc = encoder_cls()
    cached_features(enc, toy_dataset, cache_dir=tmp_path)
    manifest_path = next(tmp_path.glob("*/manifest.json"))
    manifest = json.loads(manifest_path.read_text())
    manifest["num_examples"] = 39
    manifest_path.write_text(json.dumps(manifest))
    calls = enc.calls
    with pytest.warns(UserWarning, match="stale"):
        cached_features(enc, toy_dataset, cache_dir=tmp_path)
    assert enc.calls > calls


def test_interrupted_extraction_resumes_from_verified_shards(tmp_path, toy_dataset, monkeypatch, encoder_cls):
    monkeypatch.setattr(cache_mod, "SHARD_SIZE", 10)
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
        cached_features(enc, toy_dataset, cache_dir=tmp_path, batch_size=10)
    entry = next(tmp_path.iterdir())
    assert not (entry / "manifest.json").exists() and (entry / "progress.json").exists()
    fresh = encoder_cls()
    full = cached_features(fresh, toy_dataset, cache_dir=tmp_path, batch_size=10)
    assert fresh.calls == 1  # only the missing shard was encoded
    reference = cached_features(encoder_cls(), toy_dataset, cache_dir=tmp_path / "other", batch_size=10)
    assert torch.equal(full.features, reference.features)


def test_empty_dataset_is_an_error(tmp_path, toy_dataset, encoder_cls):
    with pytest.raises(ValueError, match="no examples"):
        cached_features(encoder_cls(), toy_dataset.subset([]), cache_dir=tmp_path)
