"""Query clustering for clustered attention: SimHash with a bias term, then Lloyd k-means in Hamming space.

Reference: Vyas, Katharopoulos, Fleuret, "Fast Transformers with Clustered Attention", NeurIPS 2020,
https://arxiv.org/abs/2007.04825 (section 3.2.1).

Notation: ``B`` batch, ``H`` heads, ``N`` queries, ``E`` query size, ``L`` hash bits, ``C`` clusters.

Everything here is non-differentiable (integer outputs); the caller detaches its inputs.
"""

from __future__ import annotations

from typing import Literal

import torch

MAX_BITS = 63
"""Largest number of hash bits that still packs into one (signed) int64 code."""

CHUNK = 512
"""Default vectors per block: hashing and k-means never hold an ``(N, L)`` or ``(N, C)`` table, only
``(CHUNK, L)`` and ``(CHUNK, C)`` ones, so their working memory is ``O(N + CHUNK * (L + C))`` per head. At
N = 16k, C = 100 on a CPU, 512 keeps improved clustered attention's peak memory at about SDPA's; 256 trims it by
about 0.2 MiB but costs about a third more time, 1024 the reverse."""

_POPCOUNT16: dict[torch.device, torch.Tensor] = {}


def _popcount_table(device: torch.device) -> torch.Tensor:
    """Lookup table ``table[i] = popcount(i)`` for every 16-bit ``i`` (uint8, cached per device)."""
    if device not in _POPCOUNT16:
        values = torch.arange(1 << 16, dtype=torch.int64)
        counts = torch.zeros_like(values)
        for shift in range(16):
            counts += (values >> shift) & 1
        _POPCOUNT16[device] = counts.to(device=device, dtype=torch.uint8)
    return _POPCOUNT16[device]


def pack_bits(bits: torch.Tensor) -> torch.Tensor:
    """Pack bool ``(..., L)`` (``L <= 63``) into int64 codes ``(...)``; bit ``l`` has value ``2**l``."""
    num_bits = bits.shape[-1]
    if not 1 <= num_bits <= MAX_BITS:
        raise ValueError(f"bits must be in [1, {MAX_BITS}] to pack into int64, got {num_bits}")
    values = bits.to(torch.int64)
    values <<= torch.arange(num_bits, device=bits.device)  # in place: one (..., L) int64 temporary
    return values.sum(-1)


def unpack_bits(codes: torch.Tensor, num_bits: int) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: int64 codes ``(...)`` -> bool ``(..., num_bits)``."""
    shifts = torch.arange(num_bits, device=codes.device)
    return ((codes.unsqueeze(-1) >> shifts) & 1).bool()


def popcount(codes: torch.Tensor, num_bits: int = MAX_BITS) -> torch.Tensor:
    """Number of set bits of non-negative int64 codes, by 16-bit table lookup (int64 result)."""
    table = _popcount_table(codes.device)
    total = torch.zeros(codes.shape, dtype=torch.int64, device=codes.device)
    for shift in range(0, num_bits, 16):
        total += table[(codes >> shift) & 0xFFFF]
    return total


def hamming_distance(a: torch.Tensor, b: torch.Tensor, num_bits: int = MAX_BITS) -> torch.Tensor:
    """Hamming distance ``popcount(a XOR b)`` between broadcastable int64 codes."""
    return popcount(torch.bitwise_xor(a, b), num_bits)


def _signs(codes: torch.Tensor, num_bits: int) -> torch.Tensor:
    """int64 codes ``(m,)`` -> float32 +-1 bit vectors ``(m, L)`` (one int64 temporary, updated in place)."""
    values = codes.unsqueeze(-1) >> torch.arange(num_bits, device=codes.device)
    values &= 1
    return values.to(torch.float32).mul_(2).sub_(1)


_BYTE_SIGNS: dict[torch.device, torch.Tensor] = {}


def _byte_signs(device: torch.device) -> torch.Tensor:
    """Lookup table ``(256, 8)`` float32: row ``v`` holds the +-1 signs of the 8 bits of ``v`` (cached)."""
    if device not in _BYTE_SIGNS:
        _BYTE_SIGNS[device] = unpack_bits(torch.arange(256, device=device), 8).float() * 2 - 1
    return _BYTE_SIGNS[device]


class _Blocks:
    """Buffers for blocks of ``m <= chunk`` vectors of one head, allocated once and reused by every block (the
    blocks then neither allocate nor fragment the heap). For hashing (``projections`` dtype given): float32
    priorities, projections and int64 bits, all ``(chunk, L)``; for k-means (``columns = C``): the ``(chunk, L)``
    +-1 signs, their ``(chunk, ceil(L / 8))`` bytes and the ``(chunk, C)`` dot products."""

    def __init__(self, chunk: int, bits: int, device, *, projections: torch.dtype | None = None, columns: int = 0):
        self.bits = bits
        if projections is not None:
            self.shifts = torch.arange(bits, device=device)
            self.ints = torch.empty(chunk, bits, dtype=torch.int64, device=device)
            self.floats = torch.empty(chunk, bits, device=device)
            self.projections = torch.empty(chunk, bits, dtype=projections, device=device)
        else:
            count = (bits + 7) // 8
            self.table = _byte_signs(device)
            self.byte_shifts = torch.arange(count, device=device) * 8
            self.bytes = torch.empty(chunk, count, dtype=torch.int64, device=device)
            self.floats = torch.empty(chunk, count * 8, device=device)
            self.dots = torch.empty(chunk, columns, device=device)

    def signs(self, codes: torch.Tensor) -> torch.Tensor:
        """int64 codes ``(m,)`` -> float32 +-1 bit vectors ``(m, L)`` (a view of the float buffer), one byte at a
        time through a 256-row table: three operations per block whatever ``L``."""
        m = codes.shape[0]
        values = torch.bitwise_right_shift(codes.unsqueeze(-1), self.byte_shifts, out=self.bytes[:m])
        torch.index_select(self.table, 0, values.bitwise_and_(255).view(-1), out=self.floats[:m].view(-1, 8))
        return self.floats[:m, : self.bits]

    def pack(self, bits: torch.Tensor, out: torch.Tensor) -> None:
        """Bool ``(m, L)`` -> int64 codes written into ``out (m,)`` (as :func:`pack_bits`)."""
        ints = self.ints[: bits.shape[0]].copy_(bits).bitwise_left_shift_(self.shifts)
        torch.sum(ints, -1, out=out)

    def project(self, x: torch.Tensor, planes: torch.Tensor) -> torch.Tensor:
        """``x (m, E) @ planes (E, L)`` into the projection buffer. A single row goes through the matrix-matrix
        product too, so every row is rounded the same way whatever block it falls in."""
        out = self.projections[: x.shape[0]]
        if x.shape[0] == 1:
            out.copy_(torch.matmul(x.expand(2, -1), planes)[:1])
            return out
        return torch.matmul(x, planes, out=out)


def _check_chunk(chunk: int) -> None:
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk_size must be a positive int (vectors per block), got {chunk!r}")


def simhash(
    x: torch.Tensor,
    *,
    bits: int = 32,
    valid: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    chunk_size: int = CHUNK,
) -> torch.Tensor:
    """SimHash with a bias term: ``h_l(x) = [w_l . x > t_l]``, packed into int64 codes.

    ``w_l ~ N(0, I)`` (one set of ``bits`` planes per head) and the offset ``t_l = w_l . x_r`` is the
    projection of a random (valid) vector ``x_r`` of the same batch item and head, so every plane cuts through
    the data. Without an offset every plane passes through the origin and the Hamming distance only tracks the
    *angle* (points on one ray share a code); with it, ``P(h_l(x) != h_l(y))`` is the share of the data whose
    projection lies between ``w_l . x`` and ``w_l . y``, so the Hamming distance grows with ``||x - y||`` in
    the data's own scale, which is what clustered attention needs (its error bound is in ``||q_i - q_c||``).
    On MiniLM activations this gave lower attention error than offsets drawn uniformly over the projections'
    range. Each head is hashed in blocks of ``chunk_size`` vectors (the result does not depend on it).

    Args:
        x: ``(B, H, N, E)`` vectors to hash.
        bits: number of hash bits ``L`` (1..63).
        valid: optional bool ``(B, N)``, True = this vector may anchor an offset.
        generator: random source for planes and offsets.
        chunk_size: vectors per block (bounds the ``(chunk_size, L)`` projection table).

    Returns:
        int64 codes ``(B, H, N)``.

    Example:
        >>> simhash(torch.randn(1, 2, 10, 4), bits=8).shape
        torch.Size([1, 2, 10])
    """
    if not 1 <= bits <= MAX_BITS:
        raise ValueError(f"bits must be in [1, {MAX_BITS}] (codes are packed in int64), got {bits}")
    _check_chunk(chunk_size)
    batch, heads, n, dim = x.shape
    planes = torch.randn(heads, dim, bits, generator=generator, device=x.device, dtype=x.dtype)
    codes = torch.empty(batch, heads, n, dtype=torch.int64, device=x.device)
    for b in range(batch):
        for h in range(heads):
            keep = None if valid is None else valid[b]
            codes[b, h] = _simhash_head(x[b, h], planes[h], keep, generator, chunk_size)
    return codes


def _simhash_head(x, planes, valid, generator, chunk) -> torch.Tensor:
    """Codes ``(N,)`` of one head's ``x (N, E)`` under ``planes (E, L)``, two passes over blocks of ``chunk``.

    Pass 1 draws the anchor priorities block by block (the same random stream as one ``(N, L)`` draw) and keeps,
    per plane, the lowest priority so far and its vector's projection (the first one on ties, like ``argmin``);
    pass 2 recomputes each block's projections and compares them with those offsets.
    """
    n, bits = x.shape[0], planes.shape[1]
    blocks = _Blocks(min(chunk, n), bits, x.device, projections=x.dtype)
    best = torch.full((bits,), float("inf"), device=x.device)
    offsets = x.new_zeros(bits)
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        priority = torch.rand(stop - start, bits, generator=generator, out=blocks.floats[: stop - start])
        if valid is not None:  # an invalid vector never anchors a plane
            priority.add_((~valid[start:stop])[:, None].to(priority.dtype), alpha=2.0)
        lowest, row = priority.min(0)  # (L,) first minimum of the block
        better = lowest < best
        best = torch.where(better, lowest, best)
        offsets = torch.where(better, blocks.project(x[start:stop], planes).gather(0, row[None])[0], offsets)
    codes = torch.empty(n, dtype=torch.int64, device=x.device)
    for start in range(0, n, chunk):
        blocks.pack(blocks.project(x[start : start + chunk], planes) > offsets, codes[start : start + chunk])
    return codes


_KEYED_MAX_CLUSTERS = 1 << 16
"""Up to this many clusters the matmul search finds the nearest centroid and its index with one exact maximum."""


def _nearest_block(codes, centroid_codes, centroid_signs, bits, method, blocks, best, index):
    """Nearest centroid for a block of codes ``(m,)``: writes its index into ``index`` (int64) and the +-1 dot
    product ``s_x . s_c = L - 2 d(x, c)`` with it into ``best``; returns the block's signs (None for popcount).
    Ties go to the lowest index. (The general path; :func:`_kmeans_head` inlines a faster keyed one.)"""
    if method == "popcount":
        distance, closest = hamming_distance(codes.unsqueeze(-1), centroid_codes, bits).min(-1)  # over (m, C)
        best.copy_(bits - 2 * distance)
        index.copy_(closest)
        return None
    signs = blocks.signs(codes)  # (m, L)
    dots = torch.matmul(signs, centroid_signs.transpose(0, 1), out=blocks.dots[: codes.shape[0]])  # (m, C)
    torch.max(dots, -1, out=(best, index))
    return signs


def hamming_kmeans(
    codes: torch.Tensor,
    *,
    bits: int,
    clusters: int,
    iterations: int = 10,
    valid: torch.Tensor | None = None,
    method: Literal["matmul", "popcount"] = "matmul",
    generator: torch.Generator | None = None,
    return_distortion: bool = False,
    chunk_size: int = CHUNK,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means on ``bits``-bit codes under the Hamming distance.

    Initial centroids are ``clusters`` distinct random (valid) codes. Each iteration (1) assigns every code to
    its nearest centroid, ``a_i = argmin_c d(x_i, c)``, then (2) sets each centroid to the bitwise majority of
    its valid members, which minimises their summed Hamming distance (a tie keeps the old bit), and re-seeds
    every empty cluster at a distinct code farthest from its centroid. Neither step can raise the total
    distortion ``sum_i d(x_i, c_{a_i})``, so it never increases from one assignment step to the next.

    Two ways to compute the distances give identical results: ``"popcount"`` XORs the packed int64 codes and
    counts bits with a 16-bit lookup table; ``"matmul"`` (default) uses the identity
    ``d(x, c) = (L - s_x . s_c) / 2`` on +-1 bit vectors, one matrix product, about 15x faster on a CPU at
    N = 16k, C = 100. One head at a time, ``chunk_size`` codes at a time: the ``(N, L)`` sign table and the
    ``(N, C)`` distance table are never held whole (the votes and counts are integer sums, so the result does not
    depend on ``chunk_size``).

    Args:
        codes: int64 ``(B, H, N)`` packed codes (see :func:`simhash`).
        bits: number of meaningful bits per code.
        clusters: number of clusters ``C`` (``1 <= C <= N``).
        iterations: Lloyd iterations (0 keeps the random initial centroids).
        valid: optional bool ``(B, N)``; invalid codes are assigned but neither move centroids nor count.
        method: ``"matmul"`` or ``"popcount"``.
        generator: random source for the initial centroids.
        return_distortion: also return the total distortion after each assignment step.
        chunk_size: codes per block.

    Returns:
        ``assignment`` int64 ``(B, H, N)`` with values in ``[0, C)``; with ``return_distortion``, also
        ``distortion`` int64 ``(iterations + 1, B, H)``.

    Example:
        >>> codes = torch.randint(0, 2**16, (1, 2, 40))
        >>> hamming_kmeans(codes, bits=16, clusters=5).shape
        torch.Size([1, 2, 40])
    """
    if method not in ("matmul", "popcount"):
        raise ValueError(f"method must be 'matmul' or 'popcount', got {method!r}")
    batch, heads, n = codes.shape
    if not 1 <= clusters <= n:
        raise ValueError(f"clusters must be in [1, N={n}], got {clusters}")
    if iterations < 0:
        raise ValueError(f"iterations must be >= 0, got {iterations}")
    _check_chunk(chunk_size)
    priority = torch.rand(batch, heads, n, generator=generator, device=codes.device)
    assignment = torch.empty(batch, heads, n, dtype=torch.int64, device=codes.device)
    distortion = torch.empty(iterations + 1, batch, heads, dtype=torch.int64, device=codes.device)
    for b in range(batch):
        weight = None if valid is None else valid[b].float()
        for h in range(heads):
            first = _first_centroids(codes[b, h], priority[b, h], weight, clusters)
            assignment[b, h], history = _kmeans_head(codes[b, h], bits, first, iterations, weight, method, chunk_size)
            distortion[:, b, h] = history
    return (assignment, distortion) if return_distortion else assignment


def _first_centroids(codes, priority, weight, clusters):
    """Initial centroids: the codes of the ``clusters`` lowest priorities, valid codes first."""
    order = priority.argsort() if weight is None else (priority + (1 - weight) * 2).argsort()
    return codes[order[:clusters]]


def _kmeans_head(codes, bits, centroid_codes, iterations, weight, method, chunk):
    """Hamming k-means of one head: codes ``(N,)``, initial centroid codes ``(C,)``, weight ``(N,)`` float
    (1 = valid; None = all) -> (assignment ``(N,)`` int32 or int64, distortion per step ``(iterations + 1,)``)."""
    n, device, clusters = codes.shape[0], codes.device, centroid_codes.shape[0]
    blocks = _Blocks(min(chunk, n), bits, device, columns=clusters)
    nearest = torch.empty(n, device=device)  # dot products, then distances
    centroid_signs = _signs(centroid_codes, bits)  # (C, L)
    history = torch.empty(iterations + 1, dtype=torch.int64, device=device)
    votes = torch.empty(clusters, bits, device=device)
    # Keyed search (matmul, C <= 2**16): with the centroid signs scaled by C and an offset row -c, one addmm gives
    # key = C (s_x . s_c) - c, integers below 64 C <= 2**22 and so exact in float32; their maximum is the nearest
    # centroid with ties to the lowest index, and c = (-key) mod C (torch.max with indices is several times slower
    # than amax on a CPU). Every view below is made once; each block then costs six operations.
    keyed = method == "matmul" and clusters <= _KEYED_MAX_CLUSTERS
    assignment = torch.empty(n, dtype=torch.int32 if keyed else torch.int64, device=device)  # int32: half the memory
    offsets = -torch.arange(clusters, device=device, dtype=torch.float32)
    views, buffers = [], {}
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        m = stop - start
        if m not in buffers:  # views of the block buffers, shared by every block of m rows
            buffers[m] = (
                blocks.bytes[:m], blocks.bytes[:m].view(-1), blocks.floats[:m].view(-1, 8), blocks.floats[:m, :bits],
                blocks.dots[:m],
            )  # fmt: skip
        rows = (codes[start:stop], nearest[start:stop], assignment[start:stop])
        views.append((*rows, None if weight is None else weight[start:stop, None], *buffers[m]))
    for step in range(iterations + 1):
        update = step < iterations
        votes.zero_()
        if keyed:
            scaled = (centroid_signs * clusters).transpose(0, 1)  # (L, C)
            for block, key, ids, block_weight, byte, byte_flat, sign_rows, signs, dots in views:
                torch.bitwise_right_shift(block.unsqueeze(-1), blocks.byte_shifts, out=byte).bitwise_and_(255)
                torch.index_select(blocks.table, 0, byte_flat, out=sign_rows)  # (m, L) +-1 signs, a byte at a time
                torch.amax(torch.addmm(offsets, signs, scaled, out=dots), -1, out=key)
                ids.copy_(key.neg().remainder_(clusters))
                if update:  # majority vote per bit: sum of member signs, weighted by validity (exact sums)
                    votes.index_add_(0, ids, signs if block_weight is None else signs.mul_(block_weight))
            nearest.add_(assignment).div_(clusters)  # key -> dot product (key + c) / C, exact
        else:
            for block, dot, ids, block_weight, *_ in views:
                signs = _nearest_block(block, centroid_codes, centroid_signs, bits, method, blocks, dot, ids)
                if update:
                    signs = blocks.signs(block) if signs is None else signs
                    votes.index_add_(0, ids, signs if block_weight is None else signs.mul_(block_weight))
        nearest.neg_().add_(bits).mul_(0.5)  # d = (L - s_x . s_c) / 2, exact
        history[step] = (nearest.sum() if weight is None else (nearest * weight).sum()).round().to(torch.int64)
        if not update:
            break
        centroid_signs = torch.where(votes == 0, centroid_signs, votes.sign())
        # Re-seed empty clusters at the valid codes farthest from their centroid, one distinct code each.
        if weight is None:
            empty = torch.bincount(assignment, minlength=clusters) == 0  # (C,)
        else:
            empty = torch.zeros(clusters, device=device).index_add_(0, assignment, weight) == 0
        if bool(empty.any()):
            far = nearest + 1 if weight is None else (nearest + 1) * weight  # invalid codes rank last
            far_order = far.argsort(descending=True)
            rank = (empty.cumsum(0) - 1).clamp_min(0)  # k-th empty cluster takes the k-th farthest code
            seed_signs = _signs(codes[far_order[rank]], bits)  # (C, L)
            del far, far_order
            centroid_signs = torch.where(empty[:, None], seed_signs, centroid_signs)
        centroid_codes = pack_bits(centroid_signs > 0)
    return assignment, history


def cluster_head(
    q: torch.Tensor,
    *,
    clusters: int,
    bits: int,
    iterations: int,
    valid: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    chunk_size: int = CHUNK,
) -> torch.Tensor:
    """Cluster ids ``(N,)`` (int32 up to 2**16 clusters) of one head's queries ``q (N, E)``: SimHash, k-means.

    Draws the same random numbers, in the same order, as :func:`simhash` then :func:`hamming_kmeans` on
    ``q[None, None]``; working memory ``O(N + chunk_size * (bits + clusters))``.
    """
    _check_chunk(chunk_size)
    n, dim = q.shape
    planes = torch.randn(dim, bits, generator=generator, device=q.device, dtype=q.dtype)
    codes = _simhash_head(q, planes, valid, generator, chunk_size)
    weight = None if valid is None else valid.float()
    first = _first_centroids(codes, torch.rand(n, generator=generator, device=q.device), weight, clusters)
    return _kmeans_head(codes, bits, first, iterations, weight, "matmul", chunk_size)[0]
