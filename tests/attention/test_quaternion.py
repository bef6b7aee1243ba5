"""Quaternion linear layer and quaternion self-attention (shared scores and the Hamilton baseline)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from densattn.attention.quaternion import (
    QuaternionSelfAttention,
    QuaternionTransformerEncoderLayer,
    hamilton_attention,
    shared_score_attention,
)
from densattn.attention.quaternion_linear import QuaternionLinear, QuaternionRMSNorm


def qmul(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Hamilton product p ⊗ q of (..., 4) tensors, written out term by term."""
    a1, b1, c1, d1 = p.unbind(-1)
    a2, b2, c2, d2 = q.unbind(-1)
    return torch.stack(
        [
            a1 * a2 - b1 * b2 - c1 * c2 - d1 * d2,
            a1 * b2 + b1 * a2 + c1 * d2 - d1 * c2,
            a1 * c2 - b1 * d2 + c1 * a2 + d1 * b2,
            a1 * d2 + b1 * c2 - c1 * b2 + d1 * a2,
        ],
        dim=-1,
    )


def conj(q: torch.Tensor) -> torch.Tensor:
    return q * torch.tensor([1.0, -1.0, -1.0, -1.0], dtype=q.dtype)


def quaternion(x: torch.Tensor, index: int) -> torch.Tensor:
    """Quaternion ``index`` of a component-block feature vector [r | i | j | k] → (4,)."""
    n = x.shape[-1] // 4
    return torch.stack([x[..., c * n + index] for c in range(4)], dim=-1)


def heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """(B, L, 4n) → (B, H, L, 4, d) by the documented head layout, with explicit indexing."""
    B, L, E = x.shape
    d = E // (4 * num_heads)
    out = torch.empty(B, num_heads, L, 4, d, dtype=x.dtype)
    for h in range(num_heads):
        for a in range(d):
            out[:, h, :, :, a] = quaternion(x, h * d + a)
    return out


def random_unit_quaternion(generator: torch.Generator) -> torch.Tensor:
    u = torch.randn(4, generator=generator, dtype=torch.float64)
    return u / u.norm()


# ---------------------------------------------------------------- QuaternionLinear


def test_linear_equals_hamilton_product_loop() -> None:
    g = torch.Generator().manual_seed(0)
    layer = QuaternionLinear(8, 12, generator=g, dtype=torch.float64)
    with torch.no_grad():
        layer.bias.normal_(generator=g)
    x = torch.randn(3, 8, generator=g, dtype=torch.float64)
    y = layer(x)
    expected = torch.zeros(3, 12, dtype=torch.float64)
    for n in range(3):
        for b in range(3):
            acc = torch.zeros(4, dtype=torch.float64)
            for a in range(2):
                w = torch.stack(
                    [layer.weight_r[b, a], layer.weight_i[b, a], layer.weight_j[b, a], layer.weight_k[b, a]]
                )
                acc = acc + qmul(w, quaternion(x[n], a))
            for c in range(4):
                expected[n, c * 3 + b] = acc[c] + layer.bias[c * 3 + b]
    torch.testing.assert_close(y, expected)


@pytest.mark.parametrize("bias", [True, False])
def test_linear_parameter_count(bias: bool) -> None:
    layer = QuaternionLinear(16, 32, bias=bias)
    assert sum(p.numel() for p in layer.parameters()) == 16 * 32 // 4 + (32 if bias else 0)
    assert layer.weight_r.shape == layer.weight_k.shape == (8, 4)


@pytest.mark.parametrize("criterion", ["glorot", "he"])
@pytest.mark.parametrize("weight_init", ["quaternion", "uniform"])
def test_linear_init_seeded_and_scaled(weight_init: str, criterion: str) -> None:
    def make(seed: int) -> QuaternionLinear:
        g = torch.Generator().manual_seed(seed)
        return QuaternionLinear(256, 512, weight_init=weight_init, init_criterion=criterion, generator=g)

    a, b, c = make(1), make(1), make(2)
    torch.testing.assert_close(a.real_weight(), b.real_weight())
    assert not torch.allclose(a.weight_r, c.weight_r)
    n_in, n_out = 64, 128
    s2 = 1.0 / (2 * (n_in + n_out)) if criterion == "glorot" else 1.0 / (2 * n_in)
    if weight_init == "uniform":
        for w in (a.weight_r, a.weight_i, a.weight_j, a.weight_k):  # per-component variance s²
            assert abs(w.var().item() / s2 - 1.0) < 0.1
    modulus2 = sum(w**2 for w in (a.weight_r, a.weight_i, a.weight_j, a.weight_k))
    assert abs(modulus2.mean().item() / (4 * s2) - 1.0) < 0.05  # E|W|² = 4 s² (chi(4) modulus)


def test_attention_parameter_count_is_a_quarter_of_real_attention() -> None:
    attn = QuaternionSelfAttention(64, 4, mode="hamilton")
    real = torch.nn.MultiheadAttention(64, 4)
    count = sum(p.numel() for p in attn.parameters())
    assert count == 4 * (64 * 64 // 4 + 64)
    assert count - 4 * 64 == (sum(p.numel() for p in real.parameters()) - 4 * 64) // 4


def test_linear_rejects_bad_sizes() -> None:
    with pytest.raises(ValueError, match="in_features"):
        QuaternionLinear(6, 8)
    with pytest.raises(ValueError, match="weight_init"):
        QuaternionLinear(8, 8, weight_init="xavier")


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_rms_norm_commutes_with_unit_rotation(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    norm = QuaternionRMSNorm(12, dtype=torch.float64)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 2.0, generator=g)
    x = torch.randn(5, 12, generator=g, dtype=torch.float64)
    u = random_unit_quaternion(g)
    to_q = lambda t: t.view(5, 4, 3).transpose(1, 2)  # noqa: E731  (5, 3 quaternions, 4)
    from_q = lambda t: t.transpose(1, 2).reshape(5, 12)  # noqa: E731
    rotated = from_q(qmul(u.expand(5, 3, 4), to_q(x)))
    torch.testing.assert_close(norm(rotated), from_q(qmul(u.expand(5, 3, 4), to_q(norm(x)))))


# ---------------------------------------------------------------- attention scores


def make_attention(mode: str, **kw) -> QuaternionSelfAttention:
    g = torch.Generator().manual_seed(3)
    attn = QuaternionSelfAttention(16, 2, mode=mode, generator=g, dtype=torch.float64, **kw)
    with torch.no_grad():
        for proj in (attn.q_proj, attn.k_proj, attn.v_proj, attn.out_proj):
            if proj.bias is not None:
                proj.bias.normal_(std=0.1, generator=g)
    return attn


def test_shared_scores_equal_real_part_of_q_conj_k() -> None:
    attn = make_attention("shared")
    x = torch.randn(2, 4, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    _, weights = attn(x, need_weights=True)
    q, k, v = attn.q_proj(x), attn.k_proj(x), attn.v_proj(x)
    B, L, H, d = 2, 4, 2, 2
    scores = torch.zeros(B, H, L, L, dtype=torch.float64)
    for b in range(B):
        for h in range(H):
            for t in range(L):
                for s in range(L):
                    for a in range(h * d, (h + 1) * d):
                        scores[b, h, t, s] += qmul(quaternion(q[b, t], a), conj(quaternion(k[b, s], a)))[0]
    expected = (scores / math.sqrt(4 * d)).softmax(-1)
    torch.testing.assert_close(weights, expected)
    # One map for all four value components.
    out, _ = shared_score_attention(heads(q, H), heads(k, H), heads(v, H))
    torch.testing.assert_close(out, torch.einsum("bhts,bhscd->bhtcd", expected, heads(v, H)))


def test_hamilton_scores_equal_tay_formulas_and_loop() -> None:
    attn = make_attention("hamilton")
    x = torch.randn(2, 4, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    _, weights = attn(x, need_weights=True)
    q, k, v = attn.q_proj(x), attn.k_proj(x), attn.v_proj(x)
    Q, K, V = heads(q, 2), heads(k, 2), heads(v, 2)  # (B, H, L, 4, d)
    r, i, j, kk = 0, 1, 2, 3

    def mm(a: int, c: int) -> torch.Tensor:  # Q_a K_cᵀ per head
        return Q[:, :, :, a] @ K[:, :, :, c].transpose(-1, -2)

    tay = torch.stack(
        [
            mm(r, r) - mm(i, i) - mm(j, j) - mm(kk, kk),
            mm(r, i) + mm(i, r) + mm(j, kk) - mm(kk, j),
            mm(r, j) - mm(i, kk) + mm(j, r) + mm(kk, i),
            mm(r, kk) + mm(i, j) - mm(j, i) + mm(kk, r),
        ],
        dim=1,
    )  # (B, 4, H, L, L)
    loop = torch.zeros_like(tay)
    for b in range(2):
        for h in range(2):
            for t in range(4):
                for s in range(4):
                    loop[b, :, h, t, s] = qmul(Q[b, h, t].T, K[b, h, s].T).sum(0)  # sum over the head's quaternions
    torch.testing.assert_close(tay, loop)
    expected = (tay / math.sqrt(4 * 2)).softmax(-1)
    torch.testing.assert_close(weights, expected)
    out, _ = hamilton_attention(Q, K, V)
    ref = torch.stack([expected[:, c] @ V[:, :, :, c] for c in range(4)], dim=3)  # map c on value component c
    torch.testing.assert_close(out, ref)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), side=st.sampled_from(["left", "right"]))
def test_shared_scores_invariant_under_common_unit_quaternion(seed: int, side: str) -> None:
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(2, 2, 5, 4, 3, generator=g, dtype=torch.float64) for _ in range(3))
    u = random_unit_quaternion(g)

    def rotate(t: torch.Tensor) -> torch.Tensor:  # multiply every quaternion by u
        tq = t.transpose(-1, -2)  # (..., d, 4)
        uq = u.expand_as(tq)
        return (qmul(uq, tq) if side == "left" else qmul(tq, uq)).transpose(-1, -2)

    _, w = shared_score_attention(q, k, v, need_weights=True)
    _, w_rot = shared_score_attention(rotate(q), rotate(k), v, need_weights=True)
    torch.testing.assert_close(w_rot, w)


def test_hamilton_scores_are_not_rotation_invariant() -> None:
    """Contrast with the shared scores: the Hamilton maps move when q and k are rotated."""
    g = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(1, 1, 5, 4, 3, generator=g, dtype=torch.float64) for _ in range(3))
    u = torch.tensor([0.5, 0.5, 0.5, 0.5], dtype=torch.float64)
    rot = lambda t: qmul(u.expand(1, 1, 5, 3, 4), t.transpose(-1, -2)).transpose(-1, -2)  # noqa: E731
    _, w = hamilton_attention(q, k, v, need_weights=True)
    _, w_rot = hamilton_attention(rot(q), rot(k), v, need_weights=True)
    assert (w - w_rot).abs().max() > 1e-3


# ---------------------------------------------------------------- module behaviour


@pytest.mark.parametrize("mode", ["shared", "hamilton"])
def test_weights_path_matches_fast_path(mode: str) -> None:
    attn = make_attention(mode)
    x = torch.randn(3, 6, 16, dtype=torch.float64)
    mask = torch.ones(3, 6, dtype=torch.bool)
    mask[1, 4:] = False
    y_fast = attn(x, mask=mask)
    y_slow, w = attn(x, mask=mask, need_weights=True)
    torch.testing.assert_close(y_fast, y_slow)
    assert w.shape == ((3, 2, 6, 6) if mode == "shared" else (3, 4, 2, 6, 6))
    torch.testing.assert_close(w.sum(-1), torch.ones_like(w.sum(-1)))


@pytest.mark.parametrize("mode", ["shared", "hamilton"])
def test_mask_equals_truncation(mode: str) -> None:
    attn = make_attention(mode)
    x = torch.randn(2, 7, 16, dtype=torch.float64)
    mask = torch.ones(2, 7, dtype=torch.bool)
    mask[0, 4:] = False
    y, w = attn(x, mask=mask, need_weights=True)
    torch.testing.assert_close(y[0, :4], attn(x[:1, :4])[0])
    torch.testing.assert_close(y[1], attn(x[1:])[0])
    assert (w[0, ..., 4:] == 0).all()


@pytest.mark.parametrize("mode", ["shared", "hamilton"])
def test_fully_masked_element_gives_zero_attention(mode: str) -> None:
    attn = make_attention(mode, bias=False)
    x = torch.randn(2, 5, 16, dtype=torch.float64)
    mask = torch.ones(2, 5, dtype=torch.bool)
    mask[0] = False
    for need in (False, True):
        out = attn(x, mask=mask, need_weights=need)
        y = out[0] if need else out
        assert torch.isfinite(y).all() and (y[0] == 0).all()


def test_bad_arguments_raise() -> None:
    with pytest.raises(ValueError, match="num_heads"):
        QuaternionSelfAttention(24, 4)
    with pytest.raises(ValueError, match="mode"):
        QuaternionSelfAttention(16, 2, mode="complex")
    attn = QuaternionSelfAttention(16, 2)
    with pytest.raises(ValueError, match="mask"):
        attn(torch.randn(2, 5, 16), mask=torch.ones(2, 5))
    with pytest.raises(ValueError, match="x must have shape"):
        attn(torch.randn(2, 5, 12))


@pytest.mark.parametrize("mode", ["shared", "hamilton"])
def test_gradcheck_float64(mode: str) -> None:
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 1, 3, 4, 1, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(3))
    mask = torch.tensor([[True, False, True]])
    attend = shared_score_attention if mode == "shared" else hamilton_attention
    for need in (False, True):  # SDPA path and explicit-map path
        assert torch.autograd.gradcheck(lambda *t, n=need: attend(*t, mask=mask, need_weights=n)[0], (q, k, v))
    attn = QuaternionSelfAttention(8, 1, mode=mode, rms_norm=True, dtype=torch.float64)
    x = torch.randn(1, 3, 8, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: attn(t, mask=mask), (x,), fast_mode=True)


@pytest.mark.parametrize("mode", ["shared", "hamilton"])
def test_encoder_layer_drop_in(mode: str) -> None:
    make = lambda: QuaternionTransformerEncoderLayer(  # noqa: E731
        16, 2, mode=mode, dropout=0.1, generator=torch.Generator().manual_seed(0)
    )
    layer, twin = make(), make()
    for p, p2 in zip(layer.parameters(), twin.parameters()):
        torch.testing.assert_close(p, p2)
    model = torch.nn.Sequential(layer, torch.nn.Linear(16, 3))
    x = torch.randn(2, 5, 16)
    y = model(x)
    y.sum().backward()
    assert y.shape == (2, 5, 3) and all(p.grad is not None for p in layer.parameters())
    layer.eval()
    mask = torch.tensor([[True] * 5, [True, True, False, False, False]])
    torch.testing.assert_close(layer(x, mask=mask)[1, :2], layer(x[1:, :2])[0])
