"""Occlusion, gradient × input and integrated gradients against literal hand computations on linear heads."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from densattn.adapters import DensityAdapterModel
from densattn.analysis.attribution import (
    feature_occlusion,
    gradient_x_input,
    integrated_gradients,
    log_likelihood,
    occlude,
    occlusion,
)


class LinearOnLayers(nn.Module):
    """logits[c] = sum_{l, f} W[c, l, f] * x[l, f] + bias[c]: the tiniest head on per-layer features."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        super().__init__()
        self.weight, self.bias = nn.Parameter(weight), nn.Parameter(bias)

    def forward(self, x):
        return torch.einsum("bld,cld->bc", x, self.weight) + self.bias


def tiny_case(seed=0, n=5, layers=3, dim=2, classes=3):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(classes, layers, dim, generator=g, dtype=torch.float64)
    b = torch.randn(classes, generator=g, dtype=torch.float64)
    x = torch.randn(n, layers, dim, generator=g, dtype=torch.float64)
    y = torch.randint(0, classes, (n,), generator=g)
    base = torch.randn(layers, dim, generator=g, dtype=torch.float64)
    return LinearOnLayers(w, b).eval(), w, b, x, y, base


def hand_log_p(w, b, x_n, y_n):
    """log p(y | x) = s_y - log sum_c exp(s_c), s_c = sum_{l,f} w[c,l,f] x[l,f] + b[c], with Python loops."""
    scores = []
    for c in range(w.shape[0]):
        s = float(b[c])
        for l in range(w.shape[1]):
            for f in range(w.shape[2]):
                s += float(w[c, l, f]) * float(x_n[l, f])
        scores.append(s)
    top = max(scores)
    return scores[y_n] - (top + math.log(sum(math.exp(s - top) for s in scores)))


def hand_mean_ll(w, b, x, y):
    return sum(hand_log_p(w, b, x[n], int(y[n])) for n in range(len(x))) / len(x)


def test_log_likelihood_and_occlude_follow_their_definitions():
    model, w, b, x, y, base = tiny_case()
    expected = torch.tensor([hand_log_p(w, b, x[n], int(y[n])) for n in range(len(x))], dtype=torch.float64)
    torch.testing.assert_close(log_likelihood(model, x, y, batch_size=2), expected)
    out = occlude(x, base, [0, 2])
    assert torch.equal(out[:, 1], x[:, 1]) and torch.equal(out[:, 0], base[0].expand_as(out[:, 0]))
    assert torch.equal(out[:, 2], base[2].expand_as(out[:, 2])) and not torch.equal(out, x)


def test_occlusion_equals_hand_computation_on_a_tiny_linear_head():
    model, w, b, x, y, base = tiny_case()
    full = hand_mean_ll(w, b, x, y)
    expected = []
    for l in range(x.shape[1]):
        occluded = x.clone()
        for n in range(len(x)):
            for f in range(x.shape[2]):
                occluded[n, l, f] = base[l, f]
        expected.append(full - hand_mean_ll(w, b, occluded, y))
    got = occlusion(model, x, y, base, batch_size=2)
    torch.testing.assert_close(got.layer_scores, torch.tensor(expected, dtype=torch.float64))
    assert got.unit == "nats" and got.ranking() == sorted(range(3), key=lambda l: -expected[l])


def test_feature_occlusion_equals_hand_computation():
    model, w, b, x, y, base = tiny_case(seed=1)
    full = hand_mean_ll(w, b, x, y)
    got = feature_occlusion(model, x, y, base, max_elements=x.numel() * 2)  # two occluded copies per pass
    for l in range(x.shape[1]):
        for f in range(x.shape[2]):
            occluded = x.clone()
            occluded[:, l, f] = base[l, f]
            assert got.feature_map[l, f].item() == pytest.approx(full - hand_mean_ll(w, b, occluded, y), abs=1e-12)
    torch.testing.assert_close(got.layer_scores, occlusion(model, x, y, base).layer_scores)


def test_gradient_x_input_equals_hand_computation_on_a_tiny_linear_head():
    """d log p(y|x) / dx[l,f] = w[y,l,f] - sum_c p_c w[c,l,f] for linear logits; G = (x - base) * that."""
    model, w, b, x, y, base = tiny_case(seed=2)
    expected = torch.zeros(x.shape[1:], dtype=torch.float64)
    for n in range(len(x)):
        scores = [
            sum(float(w[c, l, f] * x[n, l, f]) for l in range(3) for f in range(2)) + float(b[c]) for c in range(3)
        ]
        z = sum(math.exp(s) for s in scores)
        p = [math.exp(s) / z for s in scores]
        for l in range(3):
            for f in range(2):
                grad = float(w[int(y[n]), l, f]) - sum(p[c] * float(w[c, l, f]) for c in range(3))
                expected[l, f] += (float(x[n, l, f]) - float(base[l, f])) * grad / len(x)
    got = gradient_x_input(model, x, y, base, batch_size=2)
    torch.testing.assert_close(got.feature_map, expected)
    torch.testing.assert_close(got.layer_scores, expected.sum(1))


def test_attributions_of_a_real_linear_probe_adapter():
    """A saved-style `linear` head reads one layer through its training standardisation: every attribution of the
    other layers is exactly 0, and the selected layer's occlusion equals the hand formula on standardised inputs."""
    torch.manual_seed(0)
    model = DensityAdapterModel("linear", num_layers=3, dim=4, classes=["a", "b"], head_options={"layer": 1}).eval()
    train = torch.randn(30, 3, 4) * 2 + 1
    model.head.set_input_stats(train)
    x, y = torch.randn(6, 3, 4) * 2 + 1, torch.tensor([0, 1, 1, 0, 1, 0])
    base = train.mean(0)
    occ = occlusion(model, x, y, base)
    grad = gradient_x_input(model, x, y, base)
    assert occ.layer_scores[0] == 0 and occ.layer_scores[2] == 0 and occ.layer_scores[1] != 0
    assert torch.all(grad.feature_map[[0, 2]] == 0)
    lin = model.head.classifier
    w_std = lin.weight.detach().double() / model.head.input_norm.std[1].double()  # logits in raw units of layer 1
    weight = torch.zeros(2, 3, 4, dtype=torch.float64)
    weight[:, 1] = w_std
    bias = lin.bias.detach().double() - (w_std * model.head.input_norm.mean[1].double()).sum(1)
    ref = LinearOnLayers(weight, bias)
    expected = occlusion(ref, x.double(), y, base.double()).layer_scores
    torch.testing.assert_close(occ.layer_scores, expected, rtol=1e-4, atol=1e-6)


def test_integrated_gradients_match_a_literal_path_integral_and_completeness():
    model, w, b, x, y, base = tiny_case(seed=3, n=4)
    got = integrated_gradients(model, x, y, base, steps=64, batch_size=3)
    alphas = (torch.arange(2000, dtype=torch.float64) + 0.5) / 2000  # midpoint rule, literal reference
    expected = torch.zeros(x.shape[1:], dtype=torch.float64)
    for n in range(len(x)):
        path = (base + alphas[:, None, None] * (x[n] - base)).requires_grad_(True)  # (A, L, d)
        log_p = torch.log_softmax(model(path), -1)[:, int(y[n])].sum()
        (grad,) = torch.autograd.grad(log_p, path)
        expected += (x[n] - base) * grad.mean(0) / len(x)
    torch.testing.assert_close(got.feature_map, expected, rtol=1e-5, atol=1e-6)
    gap = (log_likelihood(model, x, y) - log_likelihood(model, base.expand_as(x).clone(), y)).mean()
    assert got.layer_scores.sum().item() == pytest.approx(gap.item(), abs=1e-6)  # completeness


def test_bad_inputs_raise():
    model, w, b, x, y, base = tiny_case()
    with pytest.raises(ValueError, match="baseline must be"):
        occlusion(model, x, y, base[:2])
    with pytest.raises(ValueError, match="one label per example"):
        gradient_x_input(model, x, y[:2], base)
    with pytest.raises(ValueError, match=r"\(N, L, d\)"):
        occlusion(model, x[0], y, base)
    with pytest.raises(ValueError, match="steps"):
        integrated_gradients(model, x, y, base, steps=1)
