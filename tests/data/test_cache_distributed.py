"""Feature extraction on several ranks (gloo, forked processes as torchrun would start them): the same cache as one
process, byte for byte; a rank killed mid-extraction leaves no manifest that points at a missing or partial shard,
and any number of ranks resumes; ranks that do not share the cache directory, or ask for different data, fail on
every rank with a message that says so."""

from __future__ import annotations

import os
import signal

import pytest
import torch
from safetensors.torch import save

from densattn.data import shards as shards_mod
from densattn.data.cache import cached_features
from densattn.encoders import get_encoder
from densattn.io import _temp_path

BATCH = 4  # 60 examples -> 15 shards of one batch each


@pytest.fixture(scope="module")
def tiny_encoder(tiny_bert_dir):
    return get_encoder(tiny_bert_dir, max_length=16)


def _count_calls(encoder) -> list[int]:
    calls = [0]
    original = encoder.encode

    def counting(batch, **kwargs):
        calls[0] += 1
        return original(batch, **kwargs)

    encoder.encode = counting  # a forked copy: the parent's encoder is untouched
    return calls


def _extract(rank, root, dataset, encoder):
    calls = _count_calls(encoder)
    features = cached_features(encoder, dataset, cache_dir=root, batch_size=BATCH).features
    return features, calls[0]


def _entry_files(root):
    (entry,) = [p for p in root.iterdir() if p.is_dir()]
    return {p.name: p.read_bytes() for p in entry.iterdir()}


@pytest.fixture(scope="module")
def reference(run_ranks, tiny_encoder, tiny_texts, tmp_path_factory):
    root = tmp_path_factory.mktemp("one-rank")
    [(features, calls)] = run_ranks(_extract, 1, root, tiny_texts, tiny_encoder)
    assert calls == 15
    return root, features


def test_two_ranks_write_the_same_cache_as_one_byte_for_byte(run_ranks, reference, tiny_encoder, tiny_texts, tmp_path):
    root, one = reference
    (f0, calls0), (f1, calls1) = run_ranks(_extract, 2, tmp_path, tiny_texts, tiny_encoder)
    assert (calls0, calls1) == (8, 7)  # the shards were shared, round robin
    assert torch.equal(f0, one) and torch.equal(f1, one)  # exactly, on both ranks
    assert _entry_files(tmp_path) == _entry_files(root)  # manifest, shards and shard records
    assert not list(tmp_path.glob(".densattn-shared-*"))  # the shared-directory token is cleaned up


def _extract_and_die(rank, root, dataset, encoder, after):
    """Rank 1 is killed (SIGKILL) half-way through writing its shard number ``after``."""
    if rank == 1:
        original, written = shards_mod.atomic_save_file, []

        def save_then_die(tensors, path, metadata=None):
            if len(written) == after:
                data = save({k: v.contiguous() for k, v in tensors.items()})
                _temp_path(path).write_bytes(data[: len(data) // 2])  # a partial shard, never renamed
                os.kill(os.getpid(), signal.SIGKILL)
            original(tensors, path, metadata)
            written.append(path)

        shards_mod.atomic_save_file = save_then_die
    return _extract(rank, root, dataset, encoder)


def test_rank_killed_mid_extraction_leaves_no_manifest_and_one_rank_resumes(
    run_ranks, reference, tiny_encoder, tiny_texts, tmp_path
):
    _, one = reference
    with pytest.raises(Exception, match="signal|SIGKILL|exited|failed"):
        run_ranks(_extract_and_die, 2, tmp_path, tiny_texts, tiny_encoder, 3)
    (entry,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert not (entry / "manifest.json").exists()
    assert list(entry.glob(".shard-*.tmp*")), "the killed rank's partial shard should still be there"
    records = sorted(entry.glob("shard-*.json"))
    assert 3 <= len(records) < 15  # rank 1 finished three shards, rank 0 some; neither finished the job
    ((features, calls),) = run_ranks(_extract, 1, tmp_path, tiny_texts, tiny_encoder)  # resume on one rank
    assert calls == 15 - len(records) and torch.equal(features, one)
    assert not list(entry.glob(".shard-*.tmp*"))  # the dead writer's temporary file was removed
    assert len(list(entry.glob("shard-*.safetensors"))) == 15


def test_interrupted_one_rank_extraction_resumes_on_two_ranks(run_ranks, reference, tiny_encoder, tiny_texts, tmp_path):
    _, one = reference

    def fail_after_five(rank, root, dataset, encoder):
        calls = _count_calls(encoder)
        original = encoder.encode

        def failing(batch, **kwargs):
            if calls[0] >= 5:  # five shards done
                raise RuntimeError("interrupted")
            return original(batch, **kwargs)

        encoder.encode = failing
        return cached_features(encoder, dataset, cache_dir=root, batch_size=BATCH)

    with pytest.raises(Exception, match="interrupted"):
        run_ranks(fail_after_five, 1, tmp_path, tiny_texts, tiny_encoder)
    (f0, calls0), (f1, calls1) = run_ranks(_extract, 2, tmp_path, tiny_texts, tiny_encoder)
    assert calls0 + calls1 == 10 and torch.equal(f0, one) and torch.equal(f1, one)


def _private_caches(rank, base, dataset, encoder):
    try:
        cached_features(encoder, dataset, cache_dir=base / f"node{rank}", batch_size=BATCH)
    except ValueError as err:
        return str(err)
    return None


def test_cache_directory_not_shared_between_ranks_is_refused_on_every_rank(
    run_ranks, tiny_encoder, tiny_texts, tmp_path
):
    messages = run_ranks(_private_caches, 2, tmp_path, tiny_texts, tiny_encoder)
    for message in messages:
        assert message is not None and "not shared between the ranks" in message and "rank 1 on" in message
    assert not list(tmp_path.glob("node*/*/manifest.json"))


def _different_data(rank, root, dataset, encoder):
    try:
        cached_features(encoder, dataset.subset(range(50 + rank)), cache_dir=root, batch_size=BATCH)
    except ValueError as err:
        return str(err)
    return None


def test_ranks_asking_for_different_data_are_refused(run_ranks, tiny_encoder, tiny_texts, tmp_path):
    messages = run_ranks(_different_data, 2, tmp_path, tiny_texts, tiny_encoder)
    assert all(m is not None and "ranks [1] have a different feature cache entry" in m for m in messages)
    assert not list(tmp_path.iterdir())
