"""masked_mean and zero_pad_last against literal loops; padding content never matters."""

from __future__ import annotations

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import given, settings

from densattn.encoders.base import masked_mean, zero_pad_last


def reference_masked_mean(hidden: torch.Tensor, lengths: list[int]) -> torch.Tensor:
    batch, layers, _, dim = hidden.shape
    out = torch.zeros(batch, layers, dim)
    for b in range(batch):
        for layer in range(layers):
            total = torch.zeros(dim)
            for t in range(lengths[b]):
                total += hidden[b, layer, t]
            out[b, layer] = total / lengths[b]
    return out


@settings(max_examples=30, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 6), min_size=1, max_size=4),
    layers=st.integers(1, 3),
    fill=st.sampled_from([0.0, 1e6, float("inf"), float("nan")]),
)
def test_masked_mean_matches_loop_and_ignores_padding(lengths, layers, fill):
    steps = max(lengths)
    hidden = torch.randn(len(lengths), layers, steps, 5)
    mask = torch.arange(steps)[None, :] < torch.tensor(lengths)[:, None]
    expected = reference_masked_mean(hidden, lengths)
    padded = hidden.clone()
    padded[~mask[:, None, :, None].expand_as(hidden)] = fill
    torch.testing.assert_close(masked_mean(padded, mask), expected)


def test_masked_mean_without_mask_is_plain_mean():
    hidden = torch.randn(2, 3, 4, 5)
    torch.testing.assert_close(masked_mean(hidden, None), hidden.mean(dim=2))


def test_masked_mean_rejects_empty_example():
    with pytest.raises(ValueError, match="no valid"):
        masked_mean(torch.randn(2, 1, 3, 4), torch.tensor([[True, False, False], [False, False, False]]))


def test_zero_pad_last_keeps_values_and_pads_zeros():
    vectors = [torch.randn(2, 3), torch.randn(2, 5)]
    out = zero_pad_last(vectors, 5)
    assert out.shape == (2, 2, 5)
    torch.testing.assert_close(out[:, 0, :3], vectors[0])
    assert torch.all(out[:, 0, 3:] == 0)
    torch.testing.assert_close(out[:, 1], vectors[1])
