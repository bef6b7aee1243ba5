"""Tests for clustered / improved clustered attention against literal loop references."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from densattn.attention._hamming_kmeans import (
    hamming_distance,
    hamming_kmeans,
    pack_bits,
    popcount,
    simhash,
    unpack_bits,
)
from densattn.attention.clustered import (
    ClusteredAttention,
    ImprovedClusteredAttention,
    cluster_queries,
    clustered_attention,
    improved_clustered_attention,
)

# ---------------------------------------------------------------- literal references (plain loops)


def softmax_row(scores: list[float]) -> list[float]:
    finite = [s for s in scores if s != -math.inf]
    top = max(finite)
    exps = [math.exp(s - top) if s != -math.inf else 0.0 for s in scores]
    total = sum(exps)
    return [e / total for e in exps]


def ref_weights_full(q, k, key_mask=None):
    """(B, H, N, S) softmax(q k^T / sqrt(E)) with masked keys at 0, one row at a time."""
    batch, heads, n, dim = q.shape
    s = k.shape[2]
    out = torch.zeros(batch, heads, n, s, dtype=q.dtype)
    for b in range(batch):
        for h in range(heads):
            for i in range(n):
                scores = []
                for j in range(s):
                    keep = key_mask is None or bool(key_mask[b, j])
                    scores.append(float(q[b, h, i] @ k[b, h, j]) / math.sqrt(dim) if keep else -math.inf)
                out[b, h, i] = torch.tensor(softmax_row(scores), dtype=q.dtype)
    return out


def ref_weights_clustered(q, k, assignment, key_mask=None):
    """Every query gets the attention row of its cluster's mean query."""
    batch, heads, n, _ = q.shape
    centroids = torch.zeros_like(q)
    for b in range(batch):
        for h in range(heads):
            for i in range(n):
                members = [j for j in range(n) if assignment[b, h, j] == assignment[b, h, i]]
                centroids[b, h, i] = sum(q[b, h, j] for j in members) / len(members)
    return ref_weights_full(centroids, k, key_mask)


def ref_weights_improved(q, k, assignment, topk, key_mask=None):
    """Centroid row, with the centroid's top-k keys replaced by mass * exact softmax over those keys."""
    centroid_rows = ref_weights_clustered(q, k, assignment, key_mask)
    exact_rows = ref_weights_full(q, k, key_mask)
    out = centroid_rows.clone()
    batch, heads, n, s = out.shape
    for b in range(batch):
        for h in range(heads):
            for i in range(n):
                row = centroid_rows[b, h, i].tolist()
                top = sorted(range(s), key=lambda j: -row[j])[: min(topk, s)]
                mass = sum(row[j] for j in top)
                exact_total = sum(float(exact_rows[b, h, i, j]) for j in top)
                for j in top:
                    out[b, h, i, j] = mass * float(exact_rows[b, h, i, j]) / exact_total
    return out


def make_inputs(seed, batch=2, heads=2, n=7, s=9, dim=4, value_dim=3, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, heads, n, dim, generator=g, dtype=dtype)
    k = torch.randn(batch, heads, s, dim, generator=g, dtype=dtype)
    v = torch.randn(batch, heads, s, value_dim, generator=g, dtype=dtype)
    return q, k, v, g


def random_mask(batch, s, g):
    mask = torch.rand(batch, s, generator=g) > 0.4
    mask[:, 0] = True
    return mask


# ---------------------------------------------------------------- exactness against the references


@pytest.mark.parametrize("masked", [False, True])
def test_matches_loop_references(masked):
    q, k, v, g = make_inputs(0)
    mask = random_mask(2, 9, g) if masked else None
    assignment = torch.randint(0, 3, (2, 2, 7), generator=g)
    out_c, w_c = clustered_attention(q, k, v, assignment=assignment, key_mask=mask, need_weights=True)
    torch.testing.assert_close(w_c, ref_weights_clustered(q, k, assignment, mask))
    torch.testing.assert_close(out_c, w_c @ v)
    out_i, w_i = improved_clustered_attention(q, k, v, assignment=assignment, topk=3, key_mask=mask, need_weights=True)
    torch.testing.assert_close(w_i, ref_weights_improved(q, k, assignment, 3, mask))
    torch.testing.assert_close(out_i, w_i @ v)
    # The memory-lean path (no weights) gives the same output.
    torch.testing.assert_close(
        improved_clustered_attention(q, k, v, assignment=assignment, topk=3, key_mask=mask), out_i
    )


@pytest.mark.parametrize("masked", [False, True])
def test_singleton_clusters_equal_full_attention(masked):
    q, k, v, g = make_inputs(1)
    mask = random_mask(2, 9, g) if masked else None
    full = ref_weights_full(q, k, mask) @ v
    singletons = torch.arange(7).expand(2, 2, 7)
    torch.testing.assert_close(clustered_attention(q, k, v, assignment=singletons, key_mask=mask), full)
    torch.testing.assert_close(
        improved_clustered_attention(q, k, v, assignment=singletons, topk=2, key_mask=mask), full
    )


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), clusters=st.integers(1, 7), extra=st.integers(0, 3), masked=st.booleans())
def test_improved_with_topk_at_least_keys_is_exact(seed, clusters, extra, masked):
    q, k, v, g = make_inputs(seed)
    mask = random_mask(2, 9, g) if masked else None
    assignment = torch.randint(0, clusters, (2, 2, 7), generator=g)
    sdpa_mask = None if mask is None else mask[:, None, None, :]
    full = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=sdpa_mask)
    out = improved_clustered_attention(q, k, v, assignment=assignment, clusters=clusters, topk=9 + extra, key_mask=mask)
    torch.testing.assert_close(out, full)


@pytest.mark.parametrize("clusters", [1, 2, 5, 16, 40])
def test_identical_queries_are_exact_for_any_cluster_count(clusters):
    g = torch.Generator().manual_seed(3)
    q = torch.randn(2, 3, 1, 8, generator=g).expand(2, 3, 40, 8).contiguous()  # all queries of a head equal
    k, v = torch.randn(2, 3, 30, 8, generator=g), torch.randn(2, 3, 30, 5, generator=g)
    full = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    for fn in (clustered_attention, improved_clustered_attention):
        torch.testing.assert_close(fn(q, k, v, clusters=clusters, generator=g), full)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), distinct=st.integers(1, 5))
def test_duplicate_queries_grouped_by_value_are_exact(seed, distinct):
    q, k, v, g = make_inputs(seed, n=12)
    which = torch.randint(0, distinct, (2, 2, 12), generator=g)
    q = q[:, :, :distinct].gather(2, which[..., None].expand(-1, -1, -1, 4))  # queries take `distinct` values
    full = ref_weights_full(q, k) @ v
    torch.testing.assert_close(clustered_attention(q, k, v, assignment=which), full)
    torch.testing.assert_close(improved_clustered_attention(q, k, v, assignment=which, topk=2), full)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), clusters=st.integers(1, 7), topk=st.integers(1, 9), masked=st.booleans())
def test_improved_row_error_never_above_clustered(seed, clusters, topk, masked):
    q, k, v, g = make_inputs(seed)
    q = q * 3  # sharper rows make the comparison meaningful
    mask = random_mask(2, 9, g) if masked else None
    assignment = torch.randint(0, clusters, (2, 2, 7), generator=g)
    exact = ref_weights_full(q, k, mask)
    _, w_c = clustered_attention(q, k, v, assignment=assignment, key_mask=mask, need_weights=True)
    _, w_i = improved_clustered_attention(q, k, v, assignment=assignment, topk=topk, key_mask=mask, need_weights=True)
    error_c = (w_c - exact).abs().sum(-1)
    error_i = (w_i - exact).abs().sum(-1)
    assert bool((error_i <= error_c + 1e-12).all())
    torch.testing.assert_close(w_i.sum(-1), torch.ones_like(error_i))


@pytest.mark.parametrize("fn", [clustered_attention, improved_clustered_attention])
def test_masked_keys_get_zero_weight_and_do_not_matter(fn):
    q, k, v, g = make_inputs(4, s=12)
    mask = random_mask(2, 12, g)
    out, weights = fn(q, k, v, clusters=3, key_mask=mask, need_weights=True, generator=torch.Generator().manual_seed(0))
    assert bool((weights.masked_select(~mask[:, None, None, :].expand_as(weights)) == 0).all())
    noisy_k = torch.where(mask[:, None, :, None], k, torch.randn_like(k) * 100)
    noisy_v = torch.where(mask[:, None, :, None], v, torch.randn_like(v) * 100)
    again = fn(q, noisy_k, noisy_v, clusters=3, key_mask=mask, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(again, out)


# ---------------------------------------------------------------- clustering


def test_popcount_and_packing_match_python():
    g = torch.Generator().manual_seed(5)
    codes = torch.randint(0, 2**62, (200,), generator=g)
    assert popcount(codes).tolist() == [bin(int(c)).count("1") for c in codes]
    other = torch.randint(0, 2**62, (200,), generator=g)
    expected = [bin(int(a) ^ int(b)).count("1") for a, b in zip(codes, other)]
    assert hamming_distance(codes, other).tolist() == expected
    bits = torch.rand(30, 37, generator=g) > 0.5
    torch.testing.assert_close(unpack_bits(pack_bits(bits), 37), bits)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), bits=st.integers(1, 63), clusters=st.integers(1, 12), masked=st.booleans())
def test_kmeans_never_increases_distortion(seed, bits, clusters, masked):
    g = torch.Generator().manual_seed(seed)
    # Codes drawn around a few prototypes so that the clustering has structure to find.
    prototypes = torch.rand(2, 3, 4, bits, generator=g) > 0.5
    pick = torch.randint(0, 4, (2, 3, 30), generator=g)
    flips = torch.rand(2, 3, 30, bits, generator=g) < 0.15
    codes = pack_bits(prototypes.gather(2, pick[..., None].expand(-1, -1, -1, bits)) ^ flips)
    valid = torch.rand(2, 30, generator=g) > 0.3 if masked else None
    runs = {}
    for method in ("matmul", "popcount"):
        assignment, distortion = hamming_kmeans(
            codes, bits=bits, clusters=clusters, iterations=6, valid=valid, method=method,
            generator=torch.Generator().manual_seed(seed), return_distortion=True,
        )  # fmt: skip
        assert bool((distortion[1:] <= distortion[:-1]).all()), distortion
        assert int(assignment.min()) >= 0 and int(assignment.max()) < clusters
        runs[method] = (assignment, distortion)
    assert torch.equal(runs["matmul"][0], runs["popcount"][0])
    assert torch.equal(runs["matmul"][1], runs["popcount"][1])


def test_kmeans_distortion_is_the_popcount_distance_to_majority_centroids():
    g = torch.Generator().manual_seed(6)
    codes = torch.randint(0, 2**20, (1, 1, 50), generator=g)
    assignment, distortion = hamming_kmeans(
        codes, bits=20, clusters=4, iterations=3, generator=g, return_distortion=True
    )
    # Recompute the final distortion literally: the majority vote of each cluster, then popcount distances.
    total = 0
    for c in range(4):
        members = [int(x) for x, a in zip(codes[0, 0], assignment[0, 0]) if int(a) == c]
        if not members:
            continue
        majority = sum(1 << b for b in range(20) if 2 * sum((m >> b) & 1 for m in members) > len(members))
        total += sum(bin(m ^ majority).count("1") for m in members)
    assert total <= int(distortion[-1, 0, 0])  # the majority of the final clusters is at least as good


def test_simhash_with_bias_tracks_euclidean_distance():
    g = torch.Generator().manual_seed(7)
    direction = torch.randn(16, generator=g)
    # Points on one ray from the origin: an unbiased SimHash gives them all the same code.
    points = torch.linspace(0.1, 10, 64)[:, None] * direction  # (64, 16)
    codes = simhash(points.view(1, 1, 64, 16), bits=63, generator=g)[0, 0]
    hamming = hamming_distance(codes[0], codes).float()
    euclid = (points - points[0]).norm(dim=-1)
    correlation = torch.corrcoef(torch.stack([hamming, euclid]))[0, 1]
    assert correlation > 0.9
    assert len(set(codes.tolist())) > 10


def test_cluster_queries_groups_separated_blobs():
    g = torch.Generator().manual_seed(8)
    centers = torch.randn(4, 8, generator=g) * 10
    labels = torch.arange(4).repeat_interleave(25)
    q = (centers[labels] + 0.1 * torch.randn(100, 8, generator=g)).view(1, 1, 100, 8)
    ids = cluster_queries(q, clusters=8, generator=g)[0, 0]
    for cluster in set(ids.tolist()):  # no cluster mixes two far-apart blobs
        assert len(set(labels[ids == cluster].tolist())) == 1


# ---------------------------------------------------------------- gradients


@pytest.mark.parametrize("improved", [False, True])
@pytest.mark.parametrize("masked", [False, True])
def test_gradcheck_float64(improved, masked):
    q, k, v, g = make_inputs(9, batch=1, heads=2, n=6, s=7, dim=3, value_dim=2)
    mask = random_mask(1, 7, g) if masked else None
    assignment = torch.tensor([[0, 1, 0, 2, 1, 0], [1, 1, 0, 0, 2, 2]]).view(1, 2, 6)
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    if improved:

        def fn(q, k, v):
            return improved_clustered_attention(q, k, v, assignment=assignment, topk=3, key_mask=mask)
    else:

        def fn(q, k, v):
            return clustered_attention(q, k, v, assignment=assignment, key_mask=mask)

    assert torch.autograd.gradcheck(fn, (q, k, v))


def test_query_gradient_flows_through_the_centroid_mean():
    q, k, v, _ = make_inputs(10)
    q.requires_grad_()
    assignment = torch.zeros(2, 2, 7, dtype=torch.long)  # one cluster: every query sees the mean query
    clustered_attention(q, k, v, assignment=assignment).sum().backward()
    # d out / d q_i is the same for all members of a cluster (1/n of the centroid's gradient each).
    torch.testing.assert_close(q.grad, q.grad[:, :, :1].expand_as(q.grad))
    assert float(q.grad.abs().sum()) > 0


# ---------------------------------------------------------------- modules and errors


@pytest.mark.parametrize("cls", [ClusteredAttention, ImprovedClusteredAttention])
def test_module_matches_functional(cls):
    torch.manual_seed(0)
    layer = cls(16, 4, clusters=5).double()
    x = torch.randn(2, 20, 16, dtype=torch.float64)
    mask = torch.ones(2, 20, dtype=torch.bool)
    mask[1, 15:] = False
    y, weights = layer(x, mask, need_weights=True, generator=torch.Generator().manual_seed(1))
    assert y.shape == (2, 20, 16) and weights.shape == (2, 4, 20, 20)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 4, 20, dtype=torch.float64))
    assert bool((weights[1, :, :, 15:] == 0).all())
    q, k, v = layer.qkv_proj(x).view(2, 20, 3, 4, 4).permute(2, 0, 3, 1, 4)
    fn = improved_clustered_attention if cls is ImprovedClusteredAttention else clustered_attention
    core = fn(q, k, v, clusters=5, key_mask=mask, query_mask=mask, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(y, layer.out_proj(core.transpose(1, 2).reshape(2, 20, 16)))
    assert not hasattr(layer, "attn_weights")
    y.sum().backward()
    assert layer.qkv_proj.weight.grad is not None


def test_errors_name_the_argument():
    q, k, v, _ = make_inputs(11)
    with pytest.raises(ValueError, match="key_mask"):
        clustered_attention(q, k, v, key_mask=torch.zeros(2, 9, dtype=torch.bool))
    with pytest.raises(ValueError, match="key_mask"):
        clustered_attention(q, k, v, key_mask=torch.ones(2, 8, dtype=torch.bool))
    with pytest.raises(ValueError, match="assignment"):
        clustered_attention(q, k, v, assignment=torch.zeros(2, 2, 6, dtype=torch.long))
    with pytest.raises(ValueError, match="assignment"):
        clustered_attention(q, k, v, assignment=torch.full((2, 2, 7), 4), clusters=3)
    with pytest.raises(ValueError, match="topk"):
        improved_clustered_attention(q, k, v, topk=0)
    with pytest.raises(ValueError, match="bits"):
        clustered_attention(q, k, v, bits=64)
    with pytest.raises(ValueError, match="num_heads"):
        ClusteredAttention(10, 3)
