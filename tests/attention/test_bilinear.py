"""Bilinear attention (Kim et al. 2018) against literal loop references."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.testing import assert_close

from densattn.attention.bilinear import (
    BilinearAttention,
    BilinearAttentionNetwork,
    bilinear_pool,
    joint_pair_softmax,
)


def reference_attention(module: BilinearAttention, x, y, x_mask=None, y_mask=None):
    """Plain loops over batch, glimpse and pairs following l_gij = p_gᵀ(relu(U x_i) ∘ relu(V y_j)) + b_g."""
    batch, nx, ny, glimpses = x.shape[0], x.shape[1], y.shape[1], module.glimpses
    logits = torch.zeros(batch, glimpses, nx, ny, dtype=x.dtype)
    for b in range(batch):
        for g in range(glimpses):
            for i in range(nx):
                for j in range(ny):
                    xi = torch.relu(module.x_proj.weight @ x[b, i] + module.x_proj.bias)
                    yj = torch.relu(module.y_proj.weight @ y[b, j] + module.y_proj.bias)
                    logits[b, g, i, j] = (module.pair_weight[g] * xi * yj).sum() + module.pair_bias[g]
    probs = torch.zeros_like(logits)
    for b in range(batch):
        valid = [
            (i, j)
            for i in range(nx)
            for j in range(ny)
            if (x_mask is None or x_mask[b, i]) and (y_mask is None or y_mask[b, j])
        ]
        for g in range(glimpses):
            total = sum(torch.exp(logits[b, g, i, j]) for i, j in valid)
            for i, j in valid:
                probs[b, g, i, j] = torch.exp(logits[b, g, i, j]) / total
    return probs, logits


def reference_pool(x_proj, y_proj, probs):
    out = torch.zeros(x_proj.shape[0], x_proj.shape[-1], dtype=x_proj.dtype)
    for b in range(x_proj.shape[0]):
        for i in range(x_proj.shape[1]):
            for j in range(y_proj.shape[1]):
                out[b] += probs[b, i, j] * x_proj[b, i] * y_proj[b, j]
    return out


def test_attention_matches_loop_reference_with_masks():
    torch.manual_seed(0)
    module = BilinearAttention(5, 4, rank=6, glimpses=3, dtype=torch.float64)
    x, y = torch.randn(2, 4, 5, dtype=torch.float64), torch.randn(2, 3, 4, dtype=torch.float64)
    x_mask = torch.tensor([[True, True, False, True], [True, False, False, False]])
    y_mask = torch.tensor([[True, False, True], [True, True, True]])
    probs, logits = module(x, y, x_mask, y_mask)
    ref_probs, ref_logits = reference_attention(module, x, y, x_mask, y_mask)
    assert_close(logits, ref_logits)
    assert_close(probs, ref_probs)


@settings(max_examples=25, deadline=None)
@given(
    nx=st.integers(1, 5),
    ny=st.integers(1, 5),
    glimpses=st.integers(1, 3),
    seed=st.integers(0, 2**16),
)
def test_each_glimpse_sums_to_one_and_masked_pairs_are_zero(nx, ny, glimpses, seed):
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    module = BilinearAttention(3, 2, rank=4, glimpses=glimpses)
    x, y = torch.randn(3, nx, 3, generator=generator), torch.randn(3, ny, 2, generator=generator)
    x_mask = torch.rand(3, nx, generator=generator) > 0.3
    y_mask = torch.rand(3, ny, generator=generator) > 0.3
    x_mask[:, 0] = True
    y_mask[:, 0] = True
    probs, _ = module(x, y, x_mask, y_mask)
    assert_close(probs.sum((-2, -1)), torch.ones(3, glimpses))
    masked = ~(x_mask[:, :, None] & y_mask[:, None, :])  # (B, Nx, Ny)
    assert torch.all(probs.masked_select(masked[:, None].expand_as(probs)) == 0)


def test_fully_masked_map_is_zero_not_nan():
    probs = joint_pair_softmax(torch.randn(2, 1, 3, 2), torch.zeros(2, 3, 2, dtype=torch.bool))
    assert torch.equal(probs, torch.zeros_like(probs))


def test_uniform_attention_gives_hadamard_product_of_means():
    torch.manual_seed(1)
    x_proj, y_proj = torch.randn(4, 3, 7), torch.randn(4, 5, 7)
    uniform = torch.full((4, 3, 5), 1 / 15)
    assert_close(bilinear_pool(x_proj, y_proj, uniform), x_proj.mean(1) * y_proj.mean(1))


def test_one_hot_attention_picks_that_pair():
    torch.manual_seed(2)
    x_proj, y_proj = torch.randn(2, 3, 7), torch.randn(2, 5, 7)
    one_hot = torch.zeros(2, 3, 5)
    one_hot[0, 2, 4] = 1
    one_hot[1, 0, 1] = 1
    pooled = bilinear_pool(x_proj, y_proj, one_hot)
    assert_close(pooled[0], x_proj[0, 2] * y_proj[0, 4])
    assert_close(pooled[1], x_proj[1, 0] * y_proj[1, 1])


def test_pool_matches_loop_reference_and_glimpse_axis():
    torch.manual_seed(3)
    x_proj, y_proj = torch.randn(2, 3, 4), torch.randn(2, 5, 4)
    probs = torch.softmax(torch.randn(2, 2, 15), -1).view(2, 2, 3, 5)
    pooled = bilinear_pool(x_proj, y_proj, probs)  # (B, G, K)
    for g in range(2):
        assert_close(pooled[:, g], reference_pool(x_proj, y_proj, probs[:, g]))


def test_single_positions_reduce_to_low_rank_bilinear_pooling():
    """Nx = Ny = 1: the map is 1 and the pooled vector is relu(Ux) ∘ relu(Vy) (Kim et al. 2017); where the
    projections are positive the glimpse logit is the rank-K bilinear form [x;1]ᵀ Uᵀ diag(p) V [y;1] + b."""
    torch.manual_seed(4)
    module = BilinearAttention(5, 4, rank=3, glimpses=2, dtype=torch.float64)
    with torch.no_grad():  # large biases keep the pre-activations positive, so relu is the identity
        module.x_proj.bias.fill_(50.0)
        module.y_proj.bias.fill_(50.0)
    x, y = torch.randn(6, 1, 5, dtype=torch.float64), torch.randn(6, 1, 4, dtype=torch.float64)
    probs, logits = module(x, y)
    assert torch.equal(probs, torch.ones_like(probs))
    x_p, y_p = module.project(x, y)
    assert_close(bilinear_pool(x_p, y_p, probs[:, 0]), x_p[:, 0] * y_p[:, 0])
    u = torch.cat([module.x_proj.weight, module.x_proj.bias[:, None]], 1)  # (K, x_dim + 1)
    v = torch.cat([module.y_proj.weight, module.y_proj.bias[:, None]], 1)  # (K, y_dim + 1)
    x1 = torch.cat([x[:, 0], torch.ones(6, 1, dtype=x.dtype)], 1)
    y1 = torch.cat([y[:, 0], torch.ones(6, 1, dtype=y.dtype)], 1)
    for g in range(2):
        form = u.T @ torch.diag(module.pair_weight[g]) @ v  # (x_dim + 1, y_dim + 1), rank <= K
        assert torch.linalg.matrix_rank(form) <= 3
        expected = torch.einsum("bi,ij,bj->b", x1, form, y1) + module.pair_bias[g]
        assert_close(logits[:, g, 0, 0], expected.detach())


def test_network_shapes_masks_and_padding_invariance():
    torch.manual_seed(5)
    network = BilinearAttentionNetwork(6, 4, hidden=8, glimpses=3).eval()
    x, y = torch.randn(2, 5, 6), torch.randn(2, 3, 4)
    out, probs = network(x, y, need_weights=True)
    assert out.shape == (2, 8) and probs.shape == (2, 3, 5, 3)
    # padding x and y with garbage that the masks exclude leaves the output unchanged
    x_pad = torch.cat([x, 100 * torch.randn(2, 2, 6)], 1)
    y_pad = torch.cat([y, 100 * torch.randn(2, 4, 4)], 1)
    x_mask = torch.arange(7)[None].expand(2, -1) < 5
    y_mask = torch.arange(7)[None].expand(2, -1) < 3
    assert_close(network(x_pad, y_pad, x_mask, y_mask), out)


def test_network_residual_refinement_matches_reference():
    torch.manual_seed(6)
    network = BilinearAttentionNetwork(3, 2, hidden=4, glimpses=2, dtype=torch.float64)
    x, y = torch.randn(2, 3, 3, dtype=torch.float64), torch.randn(2, 4, 2, dtype=torch.float64)
    probs, _ = reference_attention(network.attention, x, y)
    state = x @ network.x_in.weight.T + network.x_in.bias
    for g in range(2):
        x_p = torch.relu(state @ network.x_glimpse[g].weight.T + network.x_glimpse[g].bias)
        y_p = torch.relu(y @ network.y_glimpse[g].weight.T + network.y_glimpse[g].bias)
        pooled = reference_pool(x_p, y_p, probs[:, g])
        state = state + (pooled @ network.refine[g].weight.T + network.refine[g].bias)[:, None]
    assert_close(network(x, y), state.mean(1))


def test_gradcheck_float64():
    torch.manual_seed(7)
    network = BilinearAttentionNetwork(3, 2, hidden=3, glimpses=2, dtype=torch.float64)
    x = torch.randn(2, 3, 3, dtype=torch.float64, requires_grad=True)
    y = torch.randn(2, 2, 2, dtype=torch.float64, requires_grad=True)
    x_mask = torch.tensor([[True, True, False], [True, True, True]])
    assert torch.autograd.gradcheck(lambda a, b: network(a, b, x_mask), (x, y))


def test_bad_arguments_raise_value_error():
    with pytest.raises(ValueError, match="rank"):
        BilinearAttention(3, 2, rank=0)
    module = BilinearAttention(3, 2, rank=4)
    with pytest.raises(ValueError, match="x_mask"):
        module(torch.randn(1, 2, 3), torch.randn(1, 2, 2), x_mask=torch.ones(1, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="rank"):
        bilinear_pool(torch.randn(1, 2, 3), torch.randn(1, 2, 4), torch.rand(1, 2, 2))
