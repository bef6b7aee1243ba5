"""Blocked (chunked) clustering and improved clustered attention give the results of the unblocked computation."""

from __future__ import annotations

import pytest
import torch

import densattn.attention._hamming_kmeans as hk
import densattn.attention.clustered as clustered
from densattn.attention._hamming_kmeans import hamming_kmeans, pack_bits, simhash
from densattn.attention.clustered import cluster_queries, improved_clustered_attention


def make(seed, batch=2, heads=3, n=45, s=50, dim=8, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, heads, n, dim, generator=g, dtype=dtype)
    k = torch.randn(batch, heads, s, dim, generator=g, dtype=dtype)
    v = torch.randn(batch, heads, s, 5, generator=g, dtype=dtype)
    query_mask = torch.rand(batch, n, generator=g) > 0.3
    key_mask = torch.rand(batch, s, generator=g) > 0.3
    query_mask[:, 0] = key_mask[:, 0] = True
    return q, k, v, query_mask, key_mask


def reference_simhash(x, bits, valid, generator):
    """SimHash with a bias term on whole (B, H, N, L) tables: the unblocked computation, written out."""
    batch, heads, n, dim = x.shape
    planes = torch.randn(heads, dim, bits, generator=generator, dtype=x.dtype)
    projections = torch.matmul(x, planes)  # (B, H, N, L)
    priority = torch.rand(batch, heads, n, bits, generator=generator)
    if valid is not None:
        priority = priority + (~valid)[:, None, :, None] * 2.0
    anchor = priority.argmin(dim=2, keepdim=True)
    return pack_bits(projections > projections.gather(2, anchor))


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("chunk", [1, 2, 7, 64, 4096])
def test_simhash_blocks_match_the_whole_table(masked, chunk):
    q, _, _, query_mask, _ = make(0, n=130, dim=16)
    valid = query_mask if masked else None
    expected = reference_simhash(q, 24, valid, torch.Generator().manual_seed(1))
    got = simhash(q, bits=24, valid=valid, generator=torch.Generator().manual_seed(1), chunk_size=chunk)
    assert torch.equal(got, expected)


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("method", ["matmul", "popcount"])
def test_kmeans_does_not_depend_on_block_size(masked, method):
    g = torch.Generator().manual_seed(2)
    codes = torch.randint(0, 2**12, (2, 2, 90), generator=g)  # 12 bits, 90 codes: many ties
    valid = torch.rand(2, 90, generator=g) > 0.3 if masked else None
    runs = [
        hamming_kmeans(
            codes,
            bits=12,
            clusters=9,
            iterations=5,
            valid=valid,
            method=method,
            return_distortion=True,
            generator=torch.Generator().manual_seed(3),
            chunk_size=chunk,
        )  # fmt: skip
        for chunk in (1, 4, 33, 1000)
    ]
    for assignment, distortion in runs[1:]:
        assert torch.equal(assignment, runs[0][0])
        assert torch.equal(distortion, runs[0][1])


def test_keyed_nearest_search_matches_max_with_indices(monkeypatch):
    g = torch.Generator().manual_seed(4)
    codes = torch.randint(0, 2**6, (1, 3, 200), generator=g)  # 6 bits, 200 codes: ties everywhere
    kwargs = dict(bits=6, clusters=20, iterations=4, return_distortion=True, chunk_size=16)
    keyed = hamming_kmeans(codes, generator=torch.Generator().manual_seed(5), **kwargs)
    monkeypatch.setattr(hk, "_KEYED_MAX_CLUSTERS", 0)  # force torch.max with indices
    plain = hamming_kmeans(codes, generator=torch.Generator().manual_seed(5), **kwargs)
    assert torch.equal(keyed[0], plain[0]) and torch.equal(keyed[1], plain[1])


@pytest.mark.parametrize("masked", [False, True])
def test_cluster_queries_does_not_depend_on_block_size(masked):
    q, _, _, query_mask, _ = make(6, n=77)
    mask = query_mask if masked else None
    runs = [
        cluster_queries(q, clusters=6, query_mask=mask, generator=torch.Generator().manual_seed(7), chunk_size=c)
        for c in (1, 5, 512)
    ]
    assert all(torch.equal(run, runs[0]) for run in runs[1:])


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_improved_blocks_match_unblocked_and_pre_clustered(masked, dtype):
    q, k, v, query_mask, key_mask = make(8, dtype=dtype)
    masks = dict(query_mask=query_mask, key_mask=key_mask) if masked else {}

    def run(**kwargs):
        return improved_clustered_attention(
            q, k, v, clusters=5, topk=6, generator=torch.Generator().manual_seed(9), **masks, **kwargs
        )

    whole = run(chunk_size=10_000)
    for chunk in (1, 3, 16):
        torch.testing.assert_close(run(chunk_size=chunk), whole)
    # Clustering each head just before attending it draws the same random numbers as clustering all heads first.
    ids = cluster_queries(q, clusters=5, query_mask=masks.get("query_mask"), generator=torch.Generator().manual_seed(9))
    given = improved_clustered_attention(q, k, v, assignment=ids, clusters=5, topk=6, **masks)
    torch.testing.assert_close(given, whole)


@pytest.mark.parametrize("group", [2, 3, 8])
def test_centroid_groups_match_one_centroid_at_a_time(monkeypatch, group):
    q, k, v, query_mask, key_mask = make(10, n=60)
    ids = torch.randint(0, 7, (2, 3, 60), generator=torch.Generator().manual_seed(11))
    kwargs = dict(assignment=ids, clusters=7, topk=5, key_mask=key_mask, query_mask=query_mask, need_weights=True)
    out, weights = improved_clustered_attention(q, k, v, **kwargs)
    monkeypatch.setattr(clustered, "_CLUSTER_CHUNK", group)
    out_g, weights_g = improved_clustered_attention(q, k, v, **kwargs)
    torch.testing.assert_close(out_g, out)
    torch.testing.assert_close(weights_g, weights)


def test_in_place_softmax_path_matches_the_autograd_path():
    q, k, v, _, key_mask = make(12, n=40)
    ids = torch.randint(0, 4, (2, 3, 40), generator=torch.Generator().manual_seed(13))
    with torch.no_grad():
        plain = improved_clustered_attention(q, k, v, assignment=ids, topk=5, key_mask=key_mask)
    tracked = improved_clustered_attention(q.requires_grad_(), k, v, assignment=ids, topk=5, key_mask=key_mask)
    torch.testing.assert_close(tracked.detach(), plain)


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_chunk_size_errors_name_the_argument(bad):
    q, k, v, _, _ = make(14, n=10, s=10)
    with pytest.raises(ValueError, match="chunk_size"):
        improved_clustered_attention(q, k, v, chunk_size=bad)
    with pytest.raises(ValueError, match="chunk_size"):
        cluster_queries(q, chunk_size=bad)
    with pytest.raises(ValueError, match="chunk_size"):
        simhash(q, chunk_size=bad)


@pytest.mark.parametrize("masked", [False, True])
def test_plain_clustered_per_head_path_matches_the_batched_one(masked):
    q, k, v, query_mask, key_mask = make(15, n=50)
    masks = dict(query_mask=query_mask, key_mask=key_mask) if masked else {}
    kwargs = dict(clusters=9, generator=torch.Generator().manual_seed(16), **masks)
    blocked = clustered.clustered_attention(q, k, v, **kwargs)
    kwargs["generator"] = torch.Generator().manual_seed(16)
    batched, _ = clustered.clustered_attention(q, k, v, need_weights=True, **kwargs)  # (B, H, C, S) in one go
    torch.testing.assert_close(blocked, batched)
