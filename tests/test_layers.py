"""TransformerEncoderLayer with every token mixer and norm mode; CogView's PBRelaxLayerNorm and Sandwich-LN."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from densattn.attention.registry import list_attention
from densattn.layers import NORMS, PBRelaxLayerNorm, TransformerEncoder, TransformerEncoderLayer

D, H = 16, 2
SMALL_OPTIONS = {"clustered": {"clusters": 3, "seed": 0}, "improved_clustered": {"clusters": 3, "topk": 3, "seed": 0}}


def make_layer(attention="softmax", **kwargs):
    torch.manual_seed(0)
    options = SMALL_OPTIONS.get(attention)
    return TransformerEncoderLayer(D, H, attention=attention, attention_options=options, **kwargs).eval()


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("attention", list_attention(kind="token_mixer"))
def test_every_mixer_in_every_norm_mode(attention, norm):
    layer = make_layer(attention, norm=norm)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 8, D, generator=g)
    mask = torch.ones(2, 8, dtype=torch.bool)
    mask[1, 5:] = False
    y = layer(x, mask=mask)
    assert y.shape == (2, 8, D) and torch.isfinite(y).all()
    x_other = torch.where(mask[..., None], x, 50 * torch.randn(2, 8, D, generator=g))
    torch.testing.assert_close(layer(x_other, mask=mask)[mask], y[mask], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("norm", NORMS)
def test_layer_matches_its_equations(norm):
    layer = make_layer("softmax", norm=norm, dim_feedforward=24, activation="relu")
    x = torch.randn(3, 5, D)
    attn = layer.attn

    def ffn(t):
        return layer.linear2(F.relu(layer.linear1(t)))

    if norm == "pre":
        h = x + attn(layer.norm1(x))
        expected = h + ffn(layer.norm2(h))
    elif norm == "post":
        h = layer.norm1(x + attn(x))
        expected = layer.norm2(h + ffn(h))
    else:
        h = x + layer.norm1_out(attn(layer.norm1(x)))
        expected = h + layer.norm2_out(ffn(layer.norm2(h)))
    torch.testing.assert_close(layer(x), expected)


def test_sandwich_branches_have_zero_token_mean_before_the_residual_add():
    layer = make_layer("softmax", norm="sandwich")
    captured = {}
    layer.norm2.register_forward_pre_hook(lambda module, args: captured.setdefault("h", args[0]))
    x = 5 * torch.randn(4, 7, D) + 3
    y = layer(x)
    branches = {"attention": captured["h"] - x, "ffn": y - captured["h"]}
    for name, branch in branches.items():
        assert branch.abs().mean() > 0.1, name  # a real branch, not zero
        torch.testing.assert_close(branch.mean(-1), torch.zeros(4, 7), atol=1e-5, rtol=0, msg=name)
    pre = make_layer("softmax", norm="pre")
    assert (pre(x) - x).mean(-1).abs().max() > 1e-3  # pre-LN branches are not centred: the test can fail


@settings(max_examples=30, deadline=None)
@given(c=st.floats(1e-3, 1e4), seed=st.integers(0, 2**16))
def test_pb_relax_layer_norm_is_scale_invariant(c, seed):
    x = torch.randn(2, 5, D, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    relaxed, plain = PBRelaxLayerNorm(D, dtype=torch.float64), torch.nn.LayerNorm(D, dtype=torch.float64)
    torch.testing.assert_close(relaxed(c * x), plain(x), atol=1e-4, rtol=1e-4)  # eps differs only


def test_pb_relax_layer_norm_formula_and_no_gradient_through_the_scale():
    ln = PBRelaxLayerNorm(D, dtype=torch.float64)
    x = torch.randn(3, D, dtype=torch.float64, requires_grad=True)
    scale = x.detach().abs().max() / 8
    torch.testing.assert_close(ln(x), F.layer_norm(x / scale, (D,), ln.weight, ln.bias, ln.eps))
    weight = torch.randn(3, D, dtype=torch.float64)
    (grad,) = torch.autograd.grad((ln(x) * weight).sum(), x)
    x_const = x.detach().requires_grad_()
    (expected,) = torch.autograd.grad((F.layer_norm(x_const / scale, (D,), eps=ln.eps) * weight).sum(), x_const)
    torch.testing.assert_close(grad, expected)  # the scale is a constant to autograd
    big = torch.full((2, D), 3e4, dtype=torch.float16) + torch.arange(D, dtype=torch.float16)
    assert torch.isfinite(ln.half()(big)).all()


def test_pb_relax_flag_switches_softmax_scores_and_norms():
    factory = {"dtype": torch.float64, "layer_norm_eps": 1e-12}  # the LayerNorm eps is the only difference
    layer = make_layer("softmax", norm="sandwich", pb_relax=True, **factory)
    assert layer.attention_name == "pb_relax" and isinstance(layer.norm1_out, PBRelaxLayerNorm)
    plain = make_layer("softmax", norm="sandwich", **factory)
    x = torch.randn(2, 6, D, dtype=torch.float64)
    torch.testing.assert_close(layer(x), plain(x))  # same math, same init
    assert make_layer("daam", pb_relax=True).attention_name == "daam"


def test_encoder_stacks_copies():
    encoder = TransformerEncoder(make_layer("daam", norm="sandwich"), num_layers=3, norm=torch.nn.LayerNorm(D))
    assert len(encoder.layers) == 3 and encoder.layers[0].attn is not encoder.layers[1].attn
    x = torch.randn(2, 6, D)
    expected = x
    for layer in encoder.layers:
        expected = layer(expected)
    torch.testing.assert_close(encoder(x), encoder.norm(expected))


def test_errors_name_the_choices():
    with pytest.raises(ValueError, match="token mixer"):
        TransformerEncoderLayer(D, H, attention="bilinear")
    with pytest.raises(ValueError, match="norm must be one of"):
        TransformerEncoderLayer(D, H, norm="middle")
    with pytest.raises(ValueError, match="accepted"):
        TransformerEncoderLayer(D, H, attention="clustered", attention_options={"k": 3})
    with pytest.raises(ValueError, match="mask must be a bool"):
        make_layer()(torch.randn(2, 3, D), mask=torch.ones(2, 3))
