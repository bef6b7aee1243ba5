"""Parity with the PyPI package gaussian-adaptive-attention 0.1.5 and the cases where it fails."""

import pytest
import torch
from torch.testing import assert_close

from densattn import DensityAdaptiveAttention, DensityBlock
from densattn.compat import from_gaussian_adaptive_attention

gaa = pytest.importorskip("gaussian_adaptive_attention")


def _tame(module, low=0.6, high=1.2, seed=0):
    """Spreads away from 0 so that the package's linear-space product does not underflow."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for head in [m for m in module.modules() if type(m).__name__ == "GaussianAdaptiveAttention"]:
            head.c.copy_(low + (high - low) * torch.rand(head.c.shape, generator=g))
            head.mean_offsets.copy_(0.3 * torch.randn(head.mean_offsets.shape, generator=g))
    return module


@pytest.mark.parametrize(
    "heads,gaussians,shape,axis",
    [(8, 8, (4, 24, 32), 1), (2, 3, (3, 5, 10), -1), (3, 2, (2, 10, 4), 1), (1, 1, (2, 6, 3), 1)],
)
def test_multihead_parity(heads, gaussians, shape, axis):
    old = _tame(gaa.MultiHeadGaussianAdaptiveAttention(norm_axis=axis, num_heads=heads, num_gaussians=gaussians))
    new = from_gaussian_adaptive_attention(old)
    assert isinstance(new, DensityAdaptiveAttention) and new.preset == "mixture_of_densities" and new.package_compat
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    y_old, w_old = old(x, return_attention_details=True)
    y_new, w_new = new(x, need_weights=True)
    # compare wherever the package's own normaliser did not underflow (its chunk weights still sum to 1)
    ok = _package_rows_ok(w_old, axis % x.dim(), heads)
    assert ok.float().mean() > 0.9
    assert_close(y_new[ok], y_old[ok])
    assert_close(w_new[ok], w_old[ok])


def _package_rows_ok(w, axis, heads):
    """Bool mask like w: True where the package's head chunk along `axis` sums to 1 (no underflow)."""
    m = w.shape[axis]
    c = m // heads
    sizes = [c] * (heads - 1) + [m - c * (heads - 1)]
    sums = torch.cat([part.sum(axis, keepdim=True).expand_as(part) for part in w.split(sizes, dim=axis)], axis)
    return (sums - 1).abs() < 1e-4


def test_padding_value_parity():
    old = _tame(gaa.MultiHeadGaussianAdaptiveAttention(norm_axis=1, num_heads=2, num_gaussians=2, padding_value=0.0))
    x = torch.randn(3, 8, 5)
    x[:, 6:] = 0.0
    assert_close(from_gaussian_adaptive_attention(old)(x), old(x))


def test_block_parity():
    old = _tame(gaa.GaussianBlock([1, 2], [2, 2], [2, 2], 2))
    new = from_gaussian_adaptive_attention(old)
    assert isinstance(new, DensityBlock)
    x = torch.randn(3, 8, 12, generator=torch.Generator().manual_seed(0))
    _, details = old(x, return_attention_details=True)
    for axis, w in zip([1, 2], details.values()):  # the package did not underflow on this input
        assert _package_rows_ok(w, axis, 2).all()
    assert_close(new(x), old(x))


def test_package_eps_slip_is_reproduced():
    old = gaa.MultiHeadGaussianAdaptiveAttention(norm_axis=1, num_heads=1, num_gaussians=1, eps=0.5)
    assert old.attention_heads[0].eps == 1e-8  # the user's eps landed in mean_offset_init
    assert from_gaussian_adaptive_attention(old).eps == 1e-8


def test_package_collapse_is_reproduced_and_avoidable():
    """The package's density / max(sum, eps) zeroes whole chunks; package_compat=True reproduces that, False not."""
    old = gaa.MultiHeadGaussianAdaptiveAttention(norm_axis=1, num_heads=8, num_gaussians=8)
    with torch.no_grad():
        for head in old.attention_heads:
            head.c.fill_(0.05)  # sharp densities: their linear-space product underflows
            head.mean_offsets.fill_(0.5)
    new = from_gaussian_adaptive_attention(old)
    x = torch.randn(4, 24, 16, generator=torch.Generator().manual_seed(0))
    y_old, w_old = old(x, return_attention_details=True)
    y_new, w_new = new(x, need_weights=True)
    collapsed = w_old.unflatten(1, (8, 3)).sum(2) == 0  # whole head chunks with zero weight
    assert collapsed.any(), "the package should collapse here"
    # logits of size ~1e3 (spread 0.05): float32 rounding gives ~1e-4 relative differences either way
    assert_close(w_new, w_old, rtol=1e-3, atol=2e-4)
    assert_close(y_new, y_old, rtol=1e-3, atol=2e-4)
    new.package_compat = False  # log-space softmax: every chunk's weights sum to 1
    y_new, w_new = new(x, need_weights=True)
    sums = w_new.unflatten(1, (8, 3)).sum(2)
    assert_close(sums, torch.ones_like(sums))
    assert torch.isfinite(y_new).all()


def _chunk_sums(w, heads):
    return w.unflatten(1, (heads, w.shape[1] // heads)).sum(2)


def test_package_readme_example():
    """The package README's GaussianBlock example (3 layers, 4 heads, 5 Gaussians, eps 1e-8, input rand(10, 128))."""
    torch.manual_seed(0)
    old = gaa.GaussianBlock([1, 1, 1], [4, 4, 4], [5, 5, 5], 3, None, 1e-8)
    x = torch.rand(10, 128)
    y_old, details = old(x, return_attention_details=True)
    # the example's normaliser does hit the eps floor: some chunks' weights sum to less than 1
    assert any((_chunk_sums(w, 4) < 0.999).any() for w in details.values())
    assert torch.isfinite(y_old).all()
    assert_close(from_gaussian_adaptive_attention(old)(x), y_old)


@pytest.mark.parametrize("seed", [1, 3])
def test_package_parity_paper_shape_with_eps_floor(seed):
    """A (32, 24, 1024) batch, 4 heads x 4 Gaussians on the layer axis, the package's own random init."""
    torch.manual_seed(seed)
    old = gaa.MultiHeadGaussianAdaptiveAttention(norm_axis=1, num_heads=4, num_gaussians=4)
    x = torch.randn(32, 24, 1024)
    y_old, w_old = old(x, return_attention_details=True)
    assert (_chunk_sums(w_old, 4) < 0.999).float().mean() > 0.01  # the floor matters for this init
    y_new, w_new = from_gaussian_adaptive_attention(old)(x, need_weights=True)
    ok = torch.isfinite(y_old) & torch.isfinite(w_old)
    assert ok.float().mean() > 0.99
    # sharp densities (|c| ~ 0.05): the package's float32 linear-space product carries ~1e-5 relative error
    assert_close(w_new[ok], w_old[ok], rtol=1e-4, atol=5e-5)
    assert_close(y_new[ok], y_old[ok], rtol=1e-4, atol=5e-5)


def test_package_nan_with_tiny_spread_where_densattn_is_finite():
    old = gaa.MultiHeadGaussianAdaptiveAttention(norm_axis=1, num_heads=1, num_gaussians=2)
    with torch.no_grad():
        old.attention_heads[0].c.copy_(torch.tensor([1e-30, 1.0]))
    x = torch.randn(2, 6, 3)
    y_old = old(x)
    assert not torch.isfinite(y_old).all()
    assert torch.isfinite(from_gaussian_adaptive_attention(old)(x)).all()


def test_rejects_other_modules():
    with pytest.raises(ValueError, match="expects a GaussianAdaptiveAttention"):
        from_gaussian_adaptive_attention(torch.nn.Linear(2, 2))
