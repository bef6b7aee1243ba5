"""DensityAdaptiveAttention presets, DensityBlock, GroupedQueryDensityAttention."""

import math

import pytest
import torch
from torch.testing import assert_close

import densattn
from densattn import DensityAdaptiveAttention, DensityBlock, GroupedQueryDensityAttention, suggest_num_heads


def paper_algorithm_1(x, mean_offset, c, eps):
    """Paper Alg. 1 as written in its scripts: population variance, gate exp(-(y^2) / (2c)), one head."""
    mean = x.mean(dim=1, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=1, keepdim=True)
    y = (x - (mean + mean_offset)) / torch.sqrt(var + eps)
    return x * torch.exp(-(y**2) / (2 * c))


def test_paper_preset_matches_algorithm_1_and_init():
    attn = DensityAdaptiveAttention(16, norm_dim=1)
    assert attn.mean_offset.shape == (1, 1, 16) and attn.spread.shape == (1, 1, 16)
    assert torch.all(attn.mean_offset == 0) and torch.all(attn.spread == 2)
    with torch.no_grad():
        attn.mean_offset.normal_()
        attn.spread.uniform_(1, 3)
    x = torch.randn(4, 7, 16)
    ref = paper_algorithm_1(x, attn.mean_offset[0, 0], attn.spread[0, 0], 1e-5)
    assert_close(attn(x), ref)


def test_paper_preset_per_head():
    attn = DensityAdaptiveAttention(8, num_heads=2, norm_dim=1)
    with torch.no_grad():
        attn.mean_offset.normal_()
    x = torch.randn(3, 6, 8)
    parts = [
        paper_algorithm_1(x[:, 3 * h : 3 * h + 3], attn.mean_offset[h, 0], attn.spread[h, 0], 1e-5) for h in range(2)
    ]
    assert_close(attn(x), torch.cat(parts, dim=1))


def test_mixture_of_densities_matches_appendix_formula():
    torch.manual_seed(0)
    attn = DensityAdaptiveAttention(None, num_heads=2, num_gaussians=3, norm_dim=1, preset="mixture_of_densities")
    assert attn.mean_offset.shape == (2, 3) and (attn.spread > 0).all()
    x = torch.randn(4, 10, 5, dtype=torch.float64)
    attn = attn.double()
    y, w = attn(x, need_weights=True)
    for h in range(2):
        chunk = x[:, 5 * h : 5 * h + 5]
        mu, var = chunk.mean(1, keepdim=True), chunk.var(1, unbiased=False, keepdim=True)
        dens = 1.0
        for k in range(3):
            cc = attn.spread[h, k]
            z = (chunk - mu - attn.mean_offset[h, k]) / torch.sqrt(var + 1e-5)
            dens = dens * torch.exp(-(z**2) / (2 * cc**2)) / torch.sqrt(2 * math.pi * cc**2)
        ref_w = dens / dens.sum(1, keepdim=True)
        assert_close(w[:, 5 * h : 5 * h + 5], ref_w.detach())


def test_mixture_preset_init_and_weights():
    attn = DensityAdaptiveAttention(6, num_heads=1, num_gaussians=3, norm_dim=1, preset="mixture")
    assert_close(attn.mean_offset[0, :, 0], torch.tensor([-1.0, 0.0, 1.0]))
    assert torch.all(attn.spread == 1) and attn.mixture_logits.shape == (1, 3)
    x = torch.randn(2, 5, 6)
    _, w = attn(x, need_weights=True)
    assert (w > 0).all() and (w <= 1).all()


def test_residual_and_mask_pass_through():
    attn = DensityAdaptiveAttention(4, norm_dim=1, residual=True)
    x = torch.randn(2, 5, 4)
    mask = torch.tensor([[True, True, True, False, True], [True] * 5])
    y, w = attn(x, mask=mask, need_weights=True)
    assert torch.equal(y[0, 3], x[0, 3])
    assert_close(y[1], x[1] + x[1] * w[1])


def test_weights_not_stored_and_reset_parameters():
    attn = DensityAdaptiveAttention(4, num_heads=1, norm_dim=1)
    attn(torch.randn(2, 3, 4), need_weights=True)
    assert not any(isinstance(v, torch.Tensor) for k, v in vars(attn).items() if not k.startswith("_"))
    with torch.no_grad():
        attn.spread.fill_(7.0)
    attn.reset_parameters()
    assert torch.all(attn.spread == 2)
    assert "preset='paper'" in repr(attn)


def test_parameter_counts():
    assert densattn.attention.density.num_parameters(DensityAdaptiveAttention(384, num_heads=1)) == 2 * 384
    mod = DensityAdaptiveAttention(None, num_heads=8, num_gaussians=8, preset="mixture_of_densities")
    assert sum(p.numel() for p in mod.parameters()) == 2 * 8 * 8


def test_single_item_heads_rejected_with_suggestion():
    attn = DensityAdaptiveAttention(4, num_heads=7, norm_dim=1)
    with pytest.raises(ValueError, match="num_heads=1"):
        attn(torch.randn(2, 7, 4))
    assert suggest_num_heads(7) == 1 and suggest_num_heads(24) == 8 and suggest_num_heads(16) == 8


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"preset": "nope"}, "preset must be one of"),
        ({"num_heads": 0}, "num_heads must be a positive int"),
        ({"num_gaussians": 0}, "num_gaussians must be"),
        ({"eps": -1e-3}, "eps must be >= 0"),
        ({"normalize": "sigmoid"}, "normalize must be one of"),
    ],
)
def test_constructor_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DensityAdaptiveAttention(4, **kwargs)


def test_dtype_and_device_kwargs_and_half_input():
    attn = DensityAdaptiveAttention(8, num_heads=2, norm_dim=1, dtype=torch.float64)
    assert attn.spread.dtype == torch.float64
    y = DensityAdaptiveAttention(8, num_heads=2, norm_dim=1)(torch.randn(2, 4, 8).half())
    assert y.dtype == torch.float16 and torch.isfinite(y).all()


def test_density_block_is_residual_stack():
    torch.manual_seed(0)
    block = DensityBlock(6, num_layers=3, num_heads=2, norm_dim=1)
    x = torch.randn(2, 4, 6)
    y, weights = block(x, need_weights=True)
    ref = x
    for layer in block.layers:
        ref = layer(ref) + ref
    assert_close(y, ref)
    assert len(weights) == 3
    with pytest.raises(ValueError, match="residual"):
        DensityBlock(6, num_layers=2, residual=True)


def reference_gqa(module, x, mask=None):
    """One softmax per query head, scaled once by 1/sqrt(head_dim); query head h reads kv head h // group."""
    h = module.in_proj(module.density(x, mask=mask))
    b, t, _ = h.shape
    q, k, v = module.q_proj(h), module.k_proj(h), module.v_proj(h)
    hd, group = module.head_dim, module.num_query_heads // module.num_kv_heads
    outs = []
    for head in range(module.num_query_heads):
        g = head // group
        qh, kh, vh = (
            q[..., head * hd : (head + 1) * hd],
            k[..., g * hd : (g + 1) * hd],
            v[..., g * hd : (g + 1) * hd],
        )
        s = qh @ kh.transpose(1, 2) / math.sqrt(hd)
        if mask is not None:
            s = s.masked_fill(~mask[:, None, :], float("-inf"))
        outs.append(torch.softmax(s, -1) @ vh)
    return module.out_proj(torch.cat(outs, -1))


def test_gqdaam_matches_reference_and_need_weights():
    torch.manual_seed(0)
    mod = GroupedQueryDensityAttention(12, 16, num_query_heads=4, num_kv_heads=2).eval()
    x = torch.randn(3, 5, 12)
    mask = torch.tensor([[True] * 5, [True, True, True, False, False], [True] * 5])
    assert_close(mod(x, mask=mask), reference_gqa(mod, x, mask))
    out, dw, maps = mod(x, mask=mask, need_weights=True)
    assert maps.shape == (3, 4, 5, 5) and dw.shape == x.shape
    assert_close(maps.sum(-1), torch.ones(3, 4, 5))
    assert torch.all(maps[1, :, :, 3:] == 0)
    assert_close(out, reference_gqa(mod, x, mask))


def test_gqdaam_validates_heads():
    with pytest.raises(ValueError, match="must divide num_query_heads"):
        GroupedQueryDensityAttention(8, 16, num_query_heads=4, num_kv_heads=3)
    with pytest.raises(ValueError, match="divisible by num_query_heads"):
        GroupedQueryDensityAttention(8, 10, num_query_heads=4, num_kv_heads=2)
