"""Clustered and improved clustered attention, in pure PyTorch.

Reference: Vyas, Katharopoulos, Fleuret, "Fast Transformers with Clustered Attention", NeurIPS 2020,
https://arxiv.org/abs/2007.04825.

Notation: ``B`` batch, ``H`` heads, ``N`` queries, ``S`` keys, ``E`` query/key size, ``Ev`` value size,
``C`` clusters, ``k`` top keys per cluster.

Queries are grouped into ``C`` clusters (SimHash with bias + Hamming k-means, see ``_hamming_kmeans``);
attention is computed once per cluster centroid instead of once per query, so time and memory are ``O(C * S)``
instead of ``O(N * S)``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from densattn.attention._hamming_kmeans import CHUNK, MAX_BITS, cluster_head

__all__ = [
    "ClusteredAttention",
    "ImprovedClusteredAttention",
    "cluster_queries",
    "clustered_attention",
    "improved_clustered_attention",
]

_CENTROID_GROUP = 8
"""Plain clustered attention: centroid rows formed together per K/V pass (``(S, 8)`` scores)."""

_CLUSTER_CHUNK = 1
"""Improved variant: centroids whose attention rows are formed together. Each group reads K and V once, but its
``(S, P)`` score maps cost ``P * S`` floats: at S = 16k, P = 4 was up to 20% faster and 0.5 MiB larger than P = 1."""


def cluster_queries(
    q: torch.Tensor,
    *,
    clusters: int = 100,
    bits: int = 32,
    iterations: int = 10,
    query_mask: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    chunk_size: int = CHUNK,
) -> torch.Tensor:
    """Cluster queries ``(B, H, N, E)`` into ``min(clusters, N)`` groups; returns int64 ids ``(B, H, N)``.

    SimHash with a bias term (``bits`` random planes with random offsets inside the data range), then
    ``iterations`` Lloyd iterations of k-means in Hamming space, one (batch item, head) at a time and
    ``chunk_size`` queries at a time (working memory ``O(N + chunk_size * (bits + C))``; the ids do not depend
    on ``chunk_size``). Non-differentiable.

    Example:
        >>> ids = cluster_queries(torch.randn(1, 2, 50, 8), clusters=4)
        >>> ids.shape, int(ids.max()) < 4
        (torch.Size([1, 2, 50]), True)
    """
    _check_clustering(clusters, bits, chunk_size)
    batch, heads, n, _ = q.shape
    assignment = torch.empty(batch, heads, n, dtype=torch.int64, device=q.device)
    with torch.no_grad():
        for b in range(batch):
            valid = None if query_mask is None else query_mask[b]
            for h in range(heads):
                assignment[b, h] = cluster_head(
                    q[b, h].detach(), clusters=min(clusters, n), bits=bits, iterations=iterations, valid=valid,
                    generator=generator, chunk_size=chunk_size,
                )  # fmt: skip
    return assignment


def _check_clustering(clusters: int, bits: int, chunk_size: int) -> None:
    if clusters < 1:
        raise ValueError(f"clusters must be >= 1, got {clusters}")
    if not 1 <= bits <= MAX_BITS:
        raise ValueError(f"bits must be in [1, {MAX_BITS}], got {bits}")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int (queries per block), got {chunk_size!r}")


def _prepare(q, k, v, clusters, assignment, bits, iterations, key_mask, query_mask, softmax_scale, generator,
             cluster=True, chunk_size=CHUNK):  # fmt: skip
    """Validate inputs; return (assignment, C, scale, additive key bias or None).

    Without ``assignment`` the queries are clustered here, unless ``cluster=False`` (the caller clusters each head
    itself; the returned assignment is then None)."""
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"q, k, v must be 4-D (B, H, L, E); got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    batch, heads, n, dim = q.shape
    if k.shape[:2] != (batch, heads) or k.shape[-1] != dim or v.shape[:3] != k.shape[:3]:
        raise ValueError(
            f"k must be (B, H, S, E) and v (B, H, S, Ev) matching q (B, H, N, E) = {tuple(q.shape)}; "
            f"got k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    s = k.shape[2]
    if key_mask is not None:
        if key_mask.shape != (batch, s) or key_mask.dtype != torch.bool:
            raise ValueError(
                f"key_mask must be bool (B, S) = ({batch}, {s}); got {key_mask.dtype} {tuple(key_mask.shape)}"
            )
        if not bool(key_mask.any(-1).all()):
            raise ValueError(
                "key_mask must keep at least one key for every batch item (a row with no keys is undefined)"
            )
    if query_mask is not None and (query_mask.shape != (batch, n) or query_mask.dtype != torch.bool):
        raise ValueError(
            f"query_mask must be bool (B, N) = ({batch}, {n}); got {query_mask.dtype} {tuple(query_mask.shape)}"
        )
    if assignment is None:
        num_clusters = min(100 if clusters is None else clusters, n)
        _check_clustering(num_clusters, bits, chunk_size)
        if cluster:
            assignment = cluster_queries(
                q, clusters=num_clusters, bits=bits, iterations=iterations, query_mask=query_mask,
                generator=generator, chunk_size=chunk_size,
            )  # fmt: skip
    else:
        if (
            assignment.shape != (batch, heads, n)
            or assignment.dtype.is_floating_point
            or assignment.dtype == torch.bool
        ):
            raise ValueError(
                f"assignment must be integer cluster ids of shape (B, H, N) = ({batch}, {heads}, {n}); "
                f"got {assignment.dtype} {tuple(assignment.shape)}"
            )
        assignment = assignment.to(torch.int64)
        num_clusters = int(assignment.max()) + 1 if clusters is None else clusters
        if int(assignment.min()) < 0 or int(assignment.max()) >= num_clusters:
            raise ValueError(f"assignment ids must lie in [0, clusters={num_clusters}); pass clusters=None to infer")
    scale = 1.0 / math.sqrt(dim) if softmax_scale is None else softmax_scale
    key_bias = None
    if key_mask is not None:
        key_bias = torch.zeros(batch, 1, 1, s, dtype=q.dtype, device=q.device)
        key_bias = key_bias.masked_fill(~key_mask[:, None, None, :], float("-inf"))  # (B, 1, 1, S)
    return assignment, num_clusters, scale, key_bias


def _centroid_attention(q, k, assignment, num_clusters, scale, key_bias, query_mask):
    """Centroids ``(B, H, C, E)`` = mean of member queries; returns their attention ``(B, H, C, S)``."""
    batch, heads, n, dim = q.shape
    weight = torch.ones(batch, 1, n, 1, dtype=q.dtype, device=q.device)
    if query_mask is not None:
        weight = query_mask[:, None, :, None].to(q.dtype)
    weight = weight.expand(batch, heads, n, 1)  # (B, H, N, 1)
    index = assignment[..., None]  # (B, H, N, 1)
    zeros = q.new_zeros(batch, heads, num_clusters, dim)
    sums = zeros.scatter_add(2, index.expand(-1, -1, -1, dim), q * weight)  # (B, H, C, E)
    counts = q.new_zeros(batch, heads, num_clusters, 1).scatter_add(2, index, weight)  # (B, H, C, 1)
    centroids = sums / counts.clamp_min(1)
    scores = torch.matmul(centroids, k.transpose(-1, -2)) * scale  # (B, H, C, S)
    if key_bias is not None:
        scores = scores + key_bias
    return torch.softmax(scores, dim=-1)


def _per_query(values: torch.Tensor, assignment: torch.Tensor) -> torch.Tensor:
    """Gather per-cluster rows ``(B, H, C, *rest)`` to per-query rows ``(B, H, N, *rest)``."""
    rest = values.shape[3:]
    index = assignment.reshape(*assignment.shape, *([1] * len(rest))).expand(*assignment.shape, *rest)
    return values.gather(2, index)


def clustered_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    clusters: int | None = None,
    assignment: torch.Tensor | None = None,
    bits: int = 32,
    iterations: int = 10,
    key_mask: torch.Tensor | None = None,
    query_mask: torch.Tensor | None = None,
    softmax_scale: float | None = None,
    generator: torch.Generator | None = None,
    need_weights: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Clustered attention: every query receives the attention output of its cluster's centroid.

    ``q_c = mean_{i in c} q_i``, ``A_c = softmax(scale * q_c K^T)`` (masked keys get weight 0),
    ``out_i = A_{c(i)} V``. Cost ``O(C * S * (E + Ev) + N * (E + Ev))`` time; one head and eight centroid rows
    at a time, so the working memory beyond the output is ``O(N + 8 S)`` (``O(B H C S)`` with ``need_weights``).
    Gradients reach ``k``, ``v`` and (through the centroid means) ``q``; the clustering itself is
    non-differentiable.

    Args:
        q: ``(B, H, N, E)`` queries; k: ``(B, H, S, E)`` keys; v: ``(B, H, S, Ev)`` values.
        clusters: number of clusters ``C`` (default 100, capped at ``N``). With ``assignment`` and
            ``clusters=None``, ``C = max(assignment) + 1``.
        assignment: int ``(B, H, N)`` cluster ids; replaces hashing and k-means when given.
        bits: SimHash bits (1..63). iterations: Lloyd iterations.
        key_mask: bool ``(B, S)``, True = keep. query_mask: bool ``(B, N)``, True = real query (padding is
            still given an output but neither moves the centroids nor the clustering).
        softmax_scale: defaults to ``1 / sqrt(E)``. generator: random source for the hashing and k-means.
        need_weights: also return the ``(B, H, N, S)`` attention weights (materialises ``N * S``).

    Returns:
        ``(B, H, N, Ev)``, or ``(out, weights)`` with ``need_weights``.

    Example:
        >>> q, k, v = torch.randn(2, 4, 64, 16), torch.randn(2, 4, 80, 16), torch.randn(2, 4, 80, 16)
        >>> clustered_attention(q, k, v, clusters=8).shape
        torch.Size([2, 4, 64, 16])
    """
    if need_weights:  # the (B, H, N, S) weights are materialised anyway: one batched computation
        assignment, num_clusters, scale, key_bias = _prepare(
            q, k, v, clusters, assignment, bits, iterations, key_mask, query_mask, softmax_scale, generator
        )
        attention = _centroid_attention(q, k, assignment, num_clusters, scale, key_bias, query_mask)  # (B, H, C, S)
        return _per_query(torch.matmul(attention, v), assignment), _per_query(attention, assignment)
    assignment, num_clusters, scale, key_bias = _prepare(
        q, k, v, clusters, assignment, bits, iterations, key_mask, query_mask, softmax_scale, generator,
        cluster=False,
    )  # fmt: skip
    batch, heads, n, _ = q.shape
    out = q.new_empty(batch, heads, n, v.shape[-1])
    tracked = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    for b in range(batch):  # one head at a time, a few centroid rows at a time: never the (B, H, C, S) map
        bias = None if key_bias is None else key_bias[b, 0, 0]  # (S,)
        valid = None if query_mask is None else query_mask[b]
        for h in range(heads):
            if assignment is None:
                with torch.no_grad():
                    ids = cluster_head(
                        q[b, h].detach(), clusters=num_clusters, bits=bits, iterations=iterations, valid=valid,
                        generator=generator,
                    )  # fmt: skip
            else:
                ids = assignment[b, h]
            centroids = _head_centroids(q[b, h], ids, num_clusters, valid)  # (C, E)
            rows = []
            for c0 in range(0, num_clusters, _CENTROID_GROUP):
                scores = torch.matmul(k[b, h], centroids[c0 : c0 + _CENTROID_GROUP].transpose(0, 1)) * scale
                if bias is not None:
                    scores = scores + bias[:, None]
                rows.append(torch.softmax(scores, dim=0).transpose(0, 1) @ v[b, h])  # (G, Ev) = A_c V
            if tracked:
                out[b, h] = torch.cat(rows)[ids]
            else:  # gather straight into the output, without an (N, Ev) temporary
                torch.index_select(torch.cat(rows), 0, ids, out=out[b, h])
    return out


def improved_clustered_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    clusters: int | None = None,
    assignment: torch.Tensor | None = None,
    topk: int = 32,
    bits: int = 32,
    iterations: int = 10,
    key_mask: torch.Tensor | None = None,
    query_mask: torch.Tensor | None = None,
    softmax_scale: float | None = None,
    generator: torch.Generator | None = None,
    need_weights: bool = False,
    chunk_size: int = CHUNK,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Improved clustered attention: exact attention on each cluster's top-k keys, centroid weights elsewhere.

    With ``A_c`` the centroid attention (see :func:`clustered_attention`), ``T_c`` its ``k`` largest keys and
    ``m_c = sum_{j in T_c} A_c[j]``, query ``i`` in cluster ``c`` gets
    ``A_i[j] = m_c * exp(s_ij) / sum_{l in T_c} exp(s_il)`` for ``j in T_c`` (``s_ij = scale * q_i . k_j``)
    and ``A_i[j] = A_c[j]`` elsewhere; each row sums to 1 and its L1 error is never above clustered
    attention's (paper, Proposition 2). Computed as ``out_i = m_c * softmax(s_i[T_c]) V[T_c] + (A_c V -
    A_c[T_c] V[T_c])``. Without ``assignment`` each head is clustered right before it is attended, and
    hashing, k-means and the exact step all go ``chunk_size`` queries at a time, one centroid row at a time,
    so the working memory beyond the output is ``O(N + S + chunk_size * (bits + C + E + k))`` (never ``C * S``,
    ``N * C`` or ``N * S`` unless ``need_weights``); the result does not depend on ``chunk_size``.

    Args:
        topk: keys recomputed exactly per cluster (capped at ``S``; ``topk >= S`` gives exact attention).
        chunk_size: queries per block (default 512): smaller blocks use less memory and more time.
        Other arguments as :func:`clustered_attention`.

    Returns:
        ``(B, H, N, Ev)``, or ``(out, weights)`` with ``need_weights``.

    Example:
        >>> q, k, v = torch.randn(1, 2, 100, 16), torch.randn(1, 2, 100, 16), torch.randn(1, 2, 100, 16)
        >>> improved_clustered_attention(q, k, v, clusters=10, topk=8).shape
        torch.Size([1, 2, 100, 16])
    """
    if topk < 1:
        raise ValueError(f"topk must be >= 1, got {topk}")
    assignment, num_clusters, scale, key_bias = _prepare(
        q, k, v, clusters, assignment, bits, iterations, key_mask, query_mask, softmax_scale, generator,
        cluster=False, chunk_size=chunk_size,
    )  # fmt: skip
    _check_clustering(num_clusters, bits, chunk_size)
    batch, heads, n, dim = q.shape
    s, value_dim = k.shape[2], v.shape[-1]
    top = min(topk, s)
    out = q.new_empty(batch, heads, n, value_dim)
    weights = q.new_zeros(batch, heads, n, s) if need_weights else None
    for b in range(batch):
        bias = None if key_bias is None else key_bias[b, 0, 0]  # (S,)
        valid = None if query_mask is None else query_mask[b]
        for h in range(heads):
            if assignment is None:  # cluster this head only now: one (N,) id vector alive at a time
                with torch.no_grad():
                    ids = cluster_head(
                        q[b, h].detach(), clusters=num_clusters, bits=bits, iterations=iterations, valid=valid,
                        generator=generator, chunk_size=chunk_size,
                    )  # fmt: skip
            else:
                ids = assignment[b, h]
            _improved_head(  # writes straight into out[b, h] (and weights[b, h]): no per-head copy
                q[b, h], k[b, h], v[b, h], ids, num_clusters, top, scale, bias, valid, chunk_size,
                out[b, h], None if weights is None else weights[b, h],
            )  # fmt: skip
    return (out, weights) if need_weights else out


def _head_centroids(q, assignment, num_clusters, valid):
    """Centroids ``(C, E)`` of one head: the mean of each cluster's valid queries (an empty cluster gets 0)."""
    target = assignment if valid is None else torch.where(valid, assignment, num_clusters)  # invalid: extra row
    sums = q.new_zeros(num_clusters + 1, q.shape[-1]).index_add(0, target, q)[:num_clusters]  # (C, E)
    counts = torch.bincount(target, minlength=num_clusters + 1)[:num_clusters].clamp_min(1)
    return sums / counts.unsqueeze(-1).to(q.dtype)


def _improved_head(q, k, v, assignment, num_clusters, top, scale, bias, valid, chunk, out, weights) -> None:
    """Improved clustered attention of one head: ``_CLUSTER_CHUNK`` centroids at a time, then each of their
    clusters' members ``chunk`` queries at a time.

    q ``(N, E)``, k ``(S, E)``, v ``(S, Ev)``, assignment ``(N,)``; fills ``out (N, Ev)`` and, when given,
    ``weights (N, S)``. Working memory: ``P * S`` centroid scores for ``P`` clusters and
    ``chunk * (E + k + Ev)`` for a block of members; the ``(C, S)`` centroid map and any ``(N, k, E)`` gather are
    never formed.
    """
    centroids = _head_centroids(q, assignment, num_clusters, valid)  # (C, E)
    order = assignment.argsort(stable=True)  # queries grouped by cluster
    in_place = not (torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad))
    bounds = [0, *torch.bincount(assignment, minlength=num_clusters).cumsum(0).tolist()]
    for c0 in range(0, num_clusters, _CLUSTER_CHUNK):
        c1 = min(c0 + _CLUSTER_CHUNK, num_clusters)
        if bounds[c1] == bounds[c0]:
            continue  # no queries in these clusters
        # Keys-major (S, P) layout: K @ centroids^T streams the keys once and needs no packing buffer, whereas
        # centroids @ K^T makes the BLAS pack and keep an E x S panel of K (3 MiB at S = 16k, E = 64).
        scores = torch.matmul(k, centroids[c0:c1].transpose(0, 1)).mul_(scale)  # (S, P)
        if bias is not None:
            scores.add_(bias[:, None])
        if in_place:  # softmax over the keys without a second (S, P) map
            attention = scores.sub_(scores.amax(0)).exp_()
            attention = attention.div_(attention.sum(0)).transpose(0, 1)  # (P, S) rows A_c (a view)
        else:
            attention = torch.softmax(scores, dim=0).transpose(0, 1)
        del scores
        top_index = attention.detach().transpose(0, 1).topk(top, dim=0).indices.transpose(0, 1)  # (P, k)
        top_weight = attention.gather(-1, top_index)  # (P, k)
        mass = top_weight.sum(-1, keepdim=True)  # (P, 1)
        top_keys, top_values = k[top_index], v[top_index]  # (P, k, E), (P, k, Ev)
        # What every member keeps from A_c: the centroid output minus the part carried by its top-k keys.
        residual = attention @ v - (top_weight.unsqueeze(1) @ top_values).squeeze(1)  # (P, Ev)
        top_bias = None if bias is None else bias[top_index]  # (P, k)
        for c in range(c0, c1):
            for start in range(bounds[c], bounds[c + 1], chunk):
                members = order[start : min(start + chunk, bounds[c + 1])]  # (m,) a block of cluster c
                p = c - c0
                exact = torch.matmul(q[members], top_keys[p].transpose(0, 1)) * scale  # (m, k)
                if top_bias is not None:
                    exact = exact + top_bias[p]
                probabilities = torch.softmax(exact, dim=-1) * mass[p]  # (m, k)
                out[members] = probabilities @ top_values[p] + residual[p]
                if weights is not None:
                    rows = attention[p].expand(len(members), -1)  # (m, S) this cluster's centroid row
                    weights[members] = rows.scatter(-1, top_index[p].expand(len(members), -1), probabilities)


class _ClusteredSelfAttentionBase(nn.Module):
    """Multi-head self-attention whose core is a clustered attention function."""

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        *,
        clusters: int = 100,
        bits: int = 32,
        iterations: int = 10,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if embed_dim % num_heads != 0:
            raise ValueError(f"embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads})")
        if clusters < 1:
            raise ValueError(f"clusters must be >= 1, got {clusters}")
        if not 1 <= bits <= MAX_BITS:
            raise ValueError(f"bits must be in [1, {MAX_BITS}], got {bits}")
        self.embed_dim, self.num_heads = embed_dim, num_heads
        self.head_dim = embed_dim // num_heads
        self.clusters, self.bits, self.iterations = clusters, bits, iterations
        factory = {"device": device, "dtype": dtype}
        self.qkv_proj = nn.Linear(embed_dim, 3 * embed_dim, bias=bias, **factory)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias, **factory)

    def _attend(self, q, k, v, mask, generator, need_weights):  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        need_weights: bool = False,
        *,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """``x (B, L, D)``, ``mask (B, L)`` bool True = real token -> ``(B, L, D)`` [, ``(B, H, L, L)``]."""
        if x.dim() != 3 or x.shape[-1] != self.embed_dim:
            raise ValueError(f"x must be (B, L, {self.embed_dim}); got {tuple(x.shape)}")
        batch, length, _ = x.shape
        qkv = self.qkv_proj(x).view(batch, length, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, L, Dh)
        result = self._attend(q, k, v, mask, generator, need_weights)
        out = result[0] if need_weights else result
        out = self.out_proj(out.transpose(1, 2).reshape(batch, length, self.embed_dim))  # (B, L, D)
        return (out, result[1]) if need_weights else out

    def extra_repr(self) -> str:
        return (
            f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, clusters={self.clusters}, "
            f"bits={self.bits}, iterations={self.iterations}"
        )


class ClusteredAttention(_ClusteredSelfAttentionBase):
    """Multi-head self-attention with clustered attention (Vyas et al. 2020, arXiv 2007.04825).

    Paper: https://arxiv.org/abs/2007.04825.

    ``y = W_o concat_h(clustered_attention(x W_q^h, x W_k^h, x W_v^h))``; the mask (True = real token) hides
    padded keys and keeps padded queries out of the clustering.

    Example:
        >>> layer = ClusteredAttention(32, 4, clusters=8)
        >>> layer(torch.randn(2, 50, 32)).shape
        torch.Size([2, 50, 32])
    """

    def _attend(self, q, k, v, mask, generator, need_weights):
        return clustered_attention(
            q, k, v, clusters=self.clusters, bits=self.bits, iterations=self.iterations, key_mask=mask,
            query_mask=mask, generator=generator, need_weights=need_weights,
        )  # fmt: skip


class ImprovedClusteredAttention(_ClusteredSelfAttentionBase):
    """Multi-head self-attention with improved clustered attention (top-k keys per cluster made exact).

    Vyas et al. 2020, https://arxiv.org/abs/2007.04825; see :func:`improved_clustered_attention`.

    Example:
        >>> layer = ImprovedClusteredAttention(32, 4, clusters=8, topk=16)
        >>> layer(torch.randn(2, 50, 32), mask=torch.ones(2, 50, dtype=torch.bool)).shape
        torch.Size([2, 50, 32])
    """

    def __init__(self, embed_dim: int, num_heads: int, *, topk: int = 32, **kwargs) -> None:
        super().__init__(embed_dim, num_heads, **kwargs)
        if topk < 1:
            raise ValueError(f"topk must be >= 1, got {topk}")
        self.topk = topk

    def _attend(self, q, k, v, mask, generator, need_weights):
        return improved_clustered_attention(
            q, k, v, clusters=self.clusters, topk=self.topk, bits=self.bits, iterations=self.iterations,
            key_mask=mask, query_mask=mask, generator=generator, need_weights=need_weights,
        )  # fmt: skip

    def extra_repr(self) -> str:
        return super().extra_repr() + f", topk={self.topk}"
