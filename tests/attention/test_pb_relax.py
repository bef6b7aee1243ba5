"""CogView PB-relax attention: standard attention in exact arithmetic, no float16 overflow."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from densattn.functional import pb_relax_attention


def ref_attention(q, k, v, mask=None):
    """The textbook order: scores Q Kᵀ / √d in the input dtype, then softmax."""
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~mask[:, None, None, :], float("-inf"))
    return scores.softmax(-1) @ v


@settings(max_examples=25, deadline=None)
@given(alpha=st.floats(0.5, 256.0), scale=st.floats(0.1, 50.0), seed=st.integers(0, 2**16))
def test_equals_sdpa_in_float64(alpha, scale, seed):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (scale * torch.randn(2, 3, 6, 8, generator=g, dtype=torch.float64) for _ in range(3))
    mask = torch.rand(2, 6, generator=g) > 0.3
    mask[:, 0] = True
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])
    torch.testing.assert_close(pb_relax_attention(q, k, v, alpha=alpha, mask=mask), expected)


def test_three_dimensional_inputs_and_weights():
    q, k, v = torch.randn(2, 5, 8), torch.randn(2, 7, 8), torch.randn(2, 7, 3)
    out, w = pb_relax_attention(q, k, v, need_weights=True)
    assert out.shape == (2, 5, 3) and w.shape == (2, 5, 7)
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 5))


def test_float16_scores_beyond_the_range_stay_finite():
    """Raw scores Q Kᵀ/√d of about 1e5 (> 65504): the textbook float16 path gives inf/NaN, PB-relax does not."""
    g = torch.Generator().manual_seed(0)
    q = (40 + torch.rand(1, 2, 4, 64, generator=g)).half()
    k = (40 + torch.rand(1, 2, 4, 64, generator=g)).half()
    v = torch.randn(1, 2, 4, 64, generator=g).half()
    assert (q.float() @ k.float().transpose(-1, -2)).min() > 65504  # the raw product overflows float16
    assert not torch.isfinite(ref_attention(q, k, v)).all()
    out, weights = pb_relax_attention(q, k, v, alpha=32.0, need_weights=True)
    assert torch.isfinite(out).all() and torch.isfinite(weights).all()
    # a proper attention map: rows sum to 1, every output is a convex combination of the values
    torch.testing.assert_close(weights.float().sum(-1), torch.ones(1, 2, 4), atol=1e-2, rtol=0)
    assert (out <= v.amax(-2, keepdim=True) + 1e-2).all() and (out >= v.amin(-2, keepdim=True) - 1e-2).all()


def test_gradcheck_float64_and_empty_rows():
    q, k, v = (torch.randn(2, 2, 4, 4, dtype=torch.float64, requires_grad=True) for _ in range(3))
    mask = torch.tensor([[True, True, False, True], [False] * 4])  # the second item keeps no key
    assert torch.autograd.gradcheck(lambda *t: pb_relax_attention(*t, alpha=8.0, mask=mask), (q, k, v))
    assert pb_relax_attention(q, k, v, mask=mask)[1].abs().max() == 0


def test_errors_name_the_argument():
    q = torch.randn(1, 2, 3, 4)
    with pytest.raises(ValueError, match="alpha"):
        pb_relax_attention(q, q, q, alpha=0)
    with pytest.raises(ValueError, match="mask must be a bool"):
        pb_relax_attention(q, q, q, mask=torch.ones(1, 3))
