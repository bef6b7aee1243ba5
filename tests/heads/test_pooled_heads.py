"""The `conv` ablation is the `daam` head minus its attention, and the DAAM parameter report."""

from __future__ import annotations

import json

import pytest
import torch

import densattn.attention.density as density_module
from densattn.analysis.daam_report import daam_parameter_report, plot_daam_parameters
from densattn.heads import build_head, count_parameters


def _pair(num_layers=7, dim=24, classes=3, seed=0):
    torch.manual_seed(seed)
    daam = build_head("daam", num_layers, dim, classes)
    torch.manual_seed(seed)
    conv = build_head("conv", num_layers, dim, classes)
    return daam, conv


def test_conv_and_daam_share_every_parameter_but_the_attention():
    daam, conv = _pair()
    daam_params = dict(daam.named_parameters())
    conv_params = dict(conv.named_parameters())
    attention = {k for k in daam_params if k.startswith("attention.")}
    assert attention == {"attention.mean_offset", "attention.spread"}
    assert set(daam_params) - attention == set(conv_params)
    for name, p in conv_params.items():
        assert daam_params[name].shape == p.shape
        torch.testing.assert_close(daam_params[name], p)  # same seed, same initial shared weights
    extra = count_parameters(daam)["trainable_params"] - count_parameters(conv)["trainable_params"]
    assert extra == 2 * 24  # paper preset, one head: one offset and one spread per feature


def _reference_conv_logits(head, x):
    """The conv head written out: standardise, reshape to (B, L, h, w), conv-relu-conv-relu, flatten, linear."""
    z = (x - head.input_norm.mean) / head.input_norm.std
    z = z.reshape(x.shape[0], head.num_layers, *head.grid)  # (B, L, h, w)
    c1, c2 = head.conv[0], head.conv[2]
    z = torch.relu(torch.nn.functional.conv2d(z, c1.weight, c1.bias, padding=1))
    z = torch.relu(torch.nn.functional.conv2d(z, c2.weight, c2.bias, padding=1))
    linear = head.classifier[2]
    return z.flatten(1) @ linear.weight.t() + linear.bias


def test_gate_fixed_to_one_gives_identical_logits(monkeypatch):
    daam, conv = _pair()
    x = torch.randn(5, 7, 24) * 3 + 1
    stats = torch.randn(40, 7, 24) * 2
    daam.set_input_stats(stats)
    conv.set_input_stats(stats)
    daam.eval(), conv.eval()
    real = daam(x)

    def unit_gate(x, *args, **kwargs):
        return x, torch.ones_like(x)  # y = x * a with a = 1

    monkeypatch.setattr(density_module, "density_attention", unit_gate)
    gated = daam(x)
    torch.testing.assert_close(gated, conv(x), rtol=0, atol=0)
    torch.testing.assert_close(conv(x), _reference_conv_logits(conv, x))
    assert not torch.allclose(real, gated)  # the real gate does change the logits


def test_huge_spread_makes_the_daam_gate_one():
    daam, conv = _pair()
    x = torch.randn(4, 7, 24)
    daam.eval(), conv.eval()
    with torch.no_grad():
        daam.attention.spread.fill_(1e9)  # exp(-z^2 / (2 * 1e9)) = 1 to float precision
    torch.testing.assert_close(daam(x), conv(x))
    assert torch.allclose(daam.attention_weights(x), torch.ones(4, 7, 24))


def test_pool_head_is_a_softmax_weighted_layer_sum():
    torch.manual_seed(0)
    pool = build_head("pool", 5, 8, 3)
    with torch.no_grad():
        pool.layer_logits.copy_(torch.tensor([0.0, 1.0, -1.0, 2.0, 0.5]))
    x = torch.randn(3, 5, 8)
    w = torch.softmax(pool.layer_logits, 0)
    mixed = sum(w[i] * x[:, i] for i in range(5))
    pool.eval()
    torch.testing.assert_close(pool(x), pool.classifier(mixed))


def test_parameter_report_measures_movement(tmp_path):
    torch.manual_seed(0)
    head = build_head("daam", 8, 6, 2, num_heads=2)
    initial = {k: v.clone() for k, v in head.state_dict().items()}
    report = daam_parameter_report(head)
    assert report["summary"]["max_abs_offset_shift"] == 0.0 and report["summary"]["max_abs_spread_shift"] == 0.0
    with torch.no_grad():
        head.attention.mean_offset[1].add_(torch.linspace(-0.3, 0.3, 6))
        head.attention.spread[0].add_(0.25)
    report = daam_parameter_report(head, initial=initial)
    h0, h1 = report["modules"][0]["heads"]
    assert h0["offset_shift_abs"]["max"] == 0.0
    assert h1["offset_shift_abs"]["max"] == pytest.approx(0.3)
    assert h1["offset_shift_abs"]["mean"] == pytest.approx(torch.linspace(-0.3, 0.3, 6).abs().mean().item())
    assert h0["spread_shift"]["mean"] == pytest.approx(0.25) and h1["spread_shift"]["max"] == 0.0
    assert h0["spread"]["mean"] == pytest.approx(2.25)
    assert report == daam_parameter_report(head)  # paper preset: initial values known without a copy
    json.dumps(report)
    plot_daam_parameters(report, tmp_path / "p.png")
    assert (tmp_path / "p.png").stat().st_size > 0
    assert daam_parameter_report(build_head("conv", 8, 6, 2))["modules"] == []


def test_report_of_random_init_preset_needs_the_initial_state():
    torch.manual_seed(0)
    head = build_head("daam", 4, 6, 2, preset="mixture_of_densities", num_gaussians=2)
    report = daam_parameter_report(head)
    assert report["modules"][0]["heads"][0]["spread_shift"] is None
    exact = daam_parameter_report(head, initial=head)
    assert exact["summary"]["max_abs_spread_shift"] == 0.0
