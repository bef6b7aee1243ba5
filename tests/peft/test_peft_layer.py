"""The gate of one module against a literal reference, its gradients (gradcheck, float64) and its masks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from densattn.functional import density_attention
from densattn.peft import DensityConfig, DensityLayer


def reference_gate(h, delta, xi, g, *, dim, heads=1, mask=None, eps=1e-5):
    """Literal "paper" preset gate: per head chunk of ``dim``, z = (h - mean - delta) / sqrt(var + eps),
    a = exp(-z^2 / (2 xi)), y = h * (1 + g (a - 1)); masked items are left out of mean / var and kept as they are.
    ``delta`` / ``xi``: one value per head (broadcast over the chunk) or tensors broadcastable to h."""
    h64 = h.double()
    chunks = h64.chunk(heads, dim=dim)
    keeps = (torch.ones_like(h64, dtype=torch.bool) if mask is None else mask).chunk(heads, dim=dim)
    a_parts = []
    for k, (x, keep) in enumerate(zip(chunks, keeps)):
        w = keep.double()
        n = w.sum(dim, keepdim=True)
        mu = (x * w).sum(dim, keepdim=True) / n
        var = ((x - mu) ** 2 * w).sum(dim, keepdim=True) / n
        d = delta[k] if delta.dim() == 1 and delta.numel() == heads else delta
        s = xi[k] if xi.dim() == 1 and xi.numel() == heads else xi
        z = (x - mu - d) / torch.sqrt(var + eps)
        a_parts.append(torch.exp(-(z**2) / (2 * s)))
    a = torch.cat(a_parts, dim=dim)
    scale = 1 + g * (a - 1)
    if mask is not None:
        scale = torch.where(mask, scale, torch.ones_like(scale))
    return h64 * scale


def randomise(layer: DensityLayer, seed: int = 0) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in layer.daam_gate.parameters():
            p.copy_(torch.rand(p.shape, generator=generator, dtype=p.dtype) + 0.5)  # offsets 0.5..1.5, spreads > 0
        for p in layer.daam_scale.parameters():
            p.copy_(torch.rand(p.shape, generator=generator, dtype=p.dtype) * 2 - 0.5)


def test_features_axis_matches_literal_reference_with_heads():
    torch.manual_seed(0)
    layer = DensityLayer(nn.Linear(6, 8), "default", DensityConfig(num_heads=2), module_name="proj")
    randomise(layer)
    x = torch.randn(3, 5, 6)
    h = layer.base_layer(x)
    gate = layer.daam_gate["default"]
    delta, xi = gate.mean_offset[:, 0].detach().double(), gate.spread[:, 0].detach().double()  # (H,) scalars
    g = layer.daam_scale["default"].detach().double()  # (8,) per output feature
    want = reference_gate(h.detach(), delta, xi, g, dim=-1, heads=2)
    torch.testing.assert_close(layer(x).double(), want, rtol=1e-5, atol=1e-6)


def test_tokens_axis_matches_literal_reference_with_mask():
    torch.manual_seed(1)
    layer = DensityLayer(nn.Linear(4, 6), "default", DensityConfig(norm_axis="tokens"), module_name="proj")
    randomise(layer, seed=1)
    x = torch.randn(2, 7, 4)
    mask = torch.tensor([[True] * 7, [True] * 4 + [False] * 3])  # (B, T)
    h = layer.base_layer(x).detach()
    gate = layer.daam_gate["default"]
    delta = gate.mean_offset[0, 0].detach().double()  # (F,) per feature
    xi = gate.spread[0, 0].detach().double()
    g = layer.daam_scale["default"].detach().double()
    full_mask = mask[:, :, None].expand(h.shape)
    want = reference_gate(h, delta, xi, g, dim=1, mask=full_mask)
    got = layer.gate(h, "default", mask=mask)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got[1, 4:], h[1, 4:], rtol=0, atol=0)  # padding passes through unchanged


@pytest.mark.parametrize("norm_axis", ["features", "tokens"])
def test_convolution_gates_channels_or_spatial_positions(norm_axis):
    torch.manual_seed(2)
    layer = DensityLayer(nn.Conv2d(3, 4, 1), "default", DensityConfig(norm_axis=norm_axis), module_name="conv")
    randomise(layer, seed=2)
    h = torch.randn(2, 4, 3, 5)  # (B, C, H, W)
    gate = layer.daam_gate["default"]
    g = layer.daam_scale["default"].detach().double().view(1, 4, 1, 1)
    if norm_axis == "features":  # per pixel, over the 4 channels
        delta, xi = gate.mean_offset[:, 0].detach().double(), gate.spread[:, 0].detach().double()
        want = reference_gate(h, delta, xi, g, dim=1)
        mask = None
    else:  # per channel, over the 15 positions; the last column of example 1 is padding
        delta = gate.mean_offset[0, 0].detach().double().view(1, 4, 1)
        xi = gate.spread[0, 0].detach().double().view(1, 4, 1)
        mask = torch.ones(2, 3, 5, dtype=torch.bool)
        mask[1, :, 4] = False
        flat_mask = mask.flatten(1)[:, None, :].expand(2, 4, 15)
        want = reference_gate(h.flatten(2), delta, xi, g.view(1, 4, 1), dim=2, mask=flat_mask).view_as(h)
    torch.testing.assert_close(layer.gate(h, mask=mask).double(), want, rtol=1e-5, atol=1e-6)


def test_gate_one_is_pure_daam():
    """g = 1 reaches the paper's y = h * a (densattn.functional.density_attention) exactly."""
    torch.manual_seed(3)
    layer = DensityLayer(nn.Linear(5, 8), "default", DensityConfig(num_heads=2), module_name="proj")
    randomise(layer)
    with torch.no_grad():
        layer.daam_scale["default"].fill_(1.0)
    h = torch.randn(4, 3, 8)
    gate = layer.daam_gate["default"]
    want, _ = density_attention(h, gate.mean_offset, gate.spread, norm_dim=-1, param_dim=None, num_heads=2)
    torch.testing.assert_close(layer.gate(h), want, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_identity_at_init_is_bit_exact_in_every_dtype(dtype):
    layer = DensityLayer(nn.Linear(8, 16), "default", DensityConfig(num_heads=4), module_name="proj")
    h = (torch.randn(2, 5, 16) * 100).to(dtype)
    h[0, 0] = 0.0  # a constant row (variance 0)
    y = layer.gate(h)
    assert y.dtype == dtype
    assert torch.equal(y, h)


@pytest.mark.parametrize(
    ("norm_axis", "preset"),
    [("features", "paper"), ("tokens", "paper"), ("features", "mixture"), ("tokens", "mixture_of_densities")],
)
def test_gradcheck_float64(norm_axis, preset):
    """Gradients of the gated module's output w.r.t. its input and every adapter parameter, in float64 (the mask
    reaches the layer the way DensityModel hands it over: through ``mask_source``)."""
    torch.manual_seed(4)
    config = DensityConfig(norm_axis=norm_axis, preset=preset, num_gaussians=2)
    mask = torch.tensor([[True] * 5, [True] * 3 + [False] * 2]) if norm_axis == "tokens" else None
    layer = DensityLayer(nn.Linear(3, 4), "default", config, module_name="proj", mask_source=lambda: mask).double()
    randomise(layer, seed=4)
    params = dict(layer.named_parameters())
    names = [n for n in params if n.startswith("daam_")]
    assert len(names) >= 3  # offsets, spreads, mixing weights (and mixture logits)

    def call(inp, *values):
        return torch.func.functional_call(layer, {**params, **dict(zip(names, values))}, (inp,))

    x = torch.randn(2, 5, 3, dtype=torch.float64, requires_grad=True)
    values = tuple(params[n].detach().clone().requires_grad_(True) for n in names)
    assert torch.autograd.gradcheck(call, (x, *values))


def test_first_step_gradients_reach_the_mixing_weight_only():
    """At g = 0, dy/dg = h (a - 1) != 0 while the Gaussian parameters get exactly zero gradient (documented)."""
    layer = DensityLayer(nn.Linear(4, 6), "default", DensityConfig(num_heads=2), module_name="proj")
    layer(torch.randn(3, 5, 4)).square().sum().backward()
    assert layer.daam_scale["default"].grad.abs().min() > 0
    for p in layer.daam_gate.parameters():
        assert torch.equal(p.grad, torch.zeros_like(p))
