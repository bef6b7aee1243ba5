"""FusionHead: shapes, masks, errors, and learning a synthetic two-modality interaction (XOR) task."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from densattn.heads import FUSION_METHODS, FusionHead


def synthetic_xor(num: int, seed: int):
    """Synthetic data: every token is a fixed per-modality background plus noise; modality A carries a sign a
    at one random position, modality B a sign b, and the label is [a == b], so neither modality alone says
    anything about it (chance = 0.5)."""
    generator = torch.Generator().manual_seed(seed)
    a = torch.randint(0, 2, (num,), generator=generator) * 2 - 1
    b = torch.randint(0, 2, (num,), generator=generator) * 2 - 1
    x = torch.randn(6, generator=generator) + 0.3 * torch.randn(num, 4, 6, generator=generator)
    y = torch.randn(3, generator=generator) + 0.3 * torch.randn(num, 5, 3, generator=generator)
    x[torch.arange(num), torch.randint(0, 4, (num,), generator=generator), 0] += 2.0 * a
    y[torch.arange(num), torch.randint(0, 5, (num,), generator=generator), 1] += 2.0 * b
    return x, y, (a == b).long()


@pytest.fixture
def one_thread():
    """Training loops on a busy 2-core machine run faster without intra-op threads."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("method", FUSION_METHODS)
def test_learns_synthetic_interaction_of_two_modalities(method, one_thread):
    torch.manual_seed(0)
    x, y, labels = synthetic_xor(768, seed=1)
    head = FusionHead([6, 3], 2, method=method, hidden=32, dropout=0.0, generator=torch.Generator().manual_seed(0))
    optimizer = torch.optim.AdamW(head.parameters(), lr=3e-3)
    for step in range(300):
        index = torch.randint(0, 512, (64,), generator=torch.Generator().manual_seed(step))
        loss = torch.nn.functional.cross_entropy(head(x[index], y[index]), labels[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    head.eval()
    with torch.no_grad():
        accuracy = (head(x[512:], y[512:]).argmax(-1) == labels[512:]).float().mean().item()
    assert accuracy > 0.9, f"{method}: held-out accuracy {accuracy:.3f}"
    with torch.no_grad():  # one modality alone carries no information about the label
        assert abs(labels[a_positive(x)].float().mean().item() - 0.5) < 0.1


def a_positive(x):
    return x[:, :, 0].amax(dim=1) > x[:, :, 0].amin(dim=1).abs()


@pytest.mark.parametrize("method", FUSION_METHODS)
def test_shapes_and_masked_padding_is_ignored(method):
    torch.manual_seed(2)
    head = FusionHead([5, 4], 3, method=method, hidden=8, num_positions=[6, 6]).eval()
    x, y = torch.randn(2, 3, 5), torch.randn(2, 4, 4)
    logits = head(x, y)
    assert logits.shape == (2, 3)
    x_pad = torch.cat([x, 30 * torch.randn(2, 2, 5)], 1)
    masks = [torch.arange(5)[None].expand(2, -1) < 3, None]
    assert_close(head(x_pad, y, masks=masks), logits)


def test_three_modalities_with_man_and_concat():
    for method in ("man", "concat"):
        head = FusionHead([5, 4, 3], 2, method=method, hidden=8, num_heads=2 if method == "man" else 1)
        out = head(torch.randn(2, 3, 5), torch.randn(2, 2, 4), torch.randn(2, 6, 3))
        assert out.shape == (2, 2) and torch.isfinite(out).all()


def test_bad_arguments_raise_value_error():
    with pytest.raises(ValueError, match="exactly two"):
        FusionHead([4, 4, 4], 2, method="ban")
    with pytest.raises(ValueError, match="method"):
        FusionHead([4, 4], 2, method="sum")
    with pytest.raises(ValueError, match="num_heads"):
        FusionHead([4, 4], 2, method="man", hidden=10, num_heads=3)
    head = FusionHead([4, 4], 2, num_positions=[2, 2])
    with pytest.raises(ValueError, match="num_positions"):
        head(torch.randn(1, 3, 4), torch.randn(1, 2, 4))
    with pytest.raises(ValueError, match="features"):
        head(torch.randn(1, 2, 5), torch.randn(1, 2, 4))
