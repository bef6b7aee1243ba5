"""Deletion curves and their areas: literal recomputation, a constructed case with a known perfect ranking."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from densattn.analysis.faithfulness import (
    combine_reports,
    curve_area,
    deletion_curve,
    faithfulness_report,
    faithfulness_table,
    plot_deletion_curves,
    random_orders,
)


class OneLayerModel(nn.Module):
    """Logits read layer 0 only (class = sign of its first feature); every other layer is ignored."""

    def forward(self, x):
        s = x[:, 0, 0]
        return torch.stack([-s, s], dim=-1)


def constructed_case(n=200, layers=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, layers, 3, generator=g)
    y = (x[:, 0, 0] > 0).long()
    base = torch.zeros(layers, 3)
    base[0, 0] = -1.0  # the "mean" of layer 0 predicts class 0 everywhere: accuracy falls to the class-0 share
    return OneLayerModel(), x, y, base


def test_curve_area_is_the_normalised_trapezoid():
    assert curve_area([1.0, 0.0]) == 0.5
    assert curve_area([1.0, 1.0, 1.0, 1.0]) == 1.0
    values = [0.9, 0.7, 0.4, 0.4, 0.1]
    assert curve_area(values) == pytest.approx(sum((values[k] + values[k + 1]) / 2 for k in range(4)) / 4)
    with pytest.raises(ValueError, match="at least 2 points"):
        curve_area([0.5])


def test_deletion_curve_equals_literal_recomputation():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3)).eval()
    x, y = torch.randn(30, 4, 3), torch.randint(0, 3, (30,))
    base = torch.randn(4, 3)
    order = [2, 0, 3, 1]
    curve = deletion_curve(model, x, y, base, order, batch_size=7)
    for k in range(5):
        xk = x.clone()
        for layer in order[:k]:
            xk[:, layer] = base[layer]
        with torch.no_grad():
            logits = model(xk)
        assert curve["accuracy"][k] == pytest.approx(float((logits.argmax(-1) == y).float().mean()))
        ll = torch.log_softmax(logits.double(), -1)[torch.arange(30), y].mean()
        assert curve["log_likelihood"][k] == pytest.approx(float(ll), abs=1e-6)
    with pytest.raises(ValueError, match="permutation"):
        deletion_curve(model, x, y, base, [0, 0, 1, 2])


def test_perfect_ranking_has_a_smaller_area_than_random_orders_and_its_reverse_a_larger_one():
    model, x, y, base = constructed_case()
    perfect, reverse = [0, 1, 2, 3, 4, 5], [5, 4, 3, 2, 1, 0]
    rankings = {"perfect": perfect, "worst": [1, 2, 3, 4, 5, 0], "also_perfect": [0, 5, 4, 3, 2, 1]}
    report = faithfulness_report(model, x, y, base, rankings, num_random=20)
    chance = float((y == 0).float().mean())
    p = report["methods"]["perfect"]
    assert p["curve"] == pytest.approx([1.0] + [chance] * 6)
    assert p["area"] == pytest.approx((1 + chance) / 2 / 6 + chance * 5 / 6)
    rand = report["random"]
    assert p["area"] < rand["area_mean"] - rand["area_std"]
    assert p["area"] <= min(rand["areas"]) and p["random_better"] == 0
    tie = report["methods"]["also_perfect"]  # removes layer 0 first too: the same curve, and still no order beats it
    assert tie["area"] == pytest.approx(p["area"]) and tie["random_better"] == 0
    assert report["methods"]["worst"]["random_better"] == pytest.approx(
        (20 - sum(abs(a - report["methods"]["worst"]["area"]) < 1e-12 for a in rand["areas"])) / 20
    )
    assert p["reverse_area"] > rand["area_mean"]
    assert report["methods"]["worst"]["area"] == pytest.approx(p["reverse_area"])  # layer 0 removed last either way
    assert p["gap_to_random"] == pytest.approx(rand["area_mean"] - p["area"])
    assert report["accuracy_all_layers"] == 1.0 and report["accuracy_no_layers"] == pytest.approx(chance)
    assert reverse == p["ranking"][::-1]


def test_random_orders_are_seeded_permutations():
    orders = random_orders(5, 4, seed=3)
    assert orders == random_orders(5, 4, seed=3) and orders != random_orders(5, 4, seed=4)
    assert all(sorted(o) == list(range(5)) for o in orders)
    with pytest.raises(ValueError, match="positive int"):
        random_orders(5, 0)


def test_combine_reports_pools_folds(tmp_path):
    model, x, y, base = constructed_case(n=120)
    reports = [
        faithfulness_report(model, x[:60], y[:60], base, {"a": [0, 1, 2, 3, 4, 5]}, num_random=5, seed=0),
        faithfulness_report(model, x[60:], y[60:], base, {"a": [1, 0, 2, 3, 4, 5]}, num_random=5, seed=1),
    ]
    pooled = combine_reports(reports)
    areas = [r["methods"]["a"]["area"] for r in reports]
    assert pooled["methods"]["a"]["area"] == pytest.approx(sum(areas) / 2)
    assert pooled["methods"]["a"]["area_fold_std"] == pytest.approx(float(torch.tensor(areas).std()))
    assert pooled["methods"]["a"]["rankings"] == [[0, 1, 2, 3, 4, 5], [1, 0, 2, 3, 4, 5]]
    assert pooled["num_examples"] == 120 and pooled["num_folds"] == 2
    expected_curve = [(u + v) / 2 for u, v in zip(*(r["methods"]["a"]["curve"] for r in reports))]
    assert pooled["methods"]["a"]["curve"] == pytest.approx(expected_curve)
    table = faithfulness_table(pooled, retrain={"a": {"top": "0.9", "bottom": "0.5"}}, top_k=2)
    assert "| a | L0 L1 L2 L3 L4 L5 |" in table and "retrained on top-2" in table and "random (5 orders)" in table
    plot_deletion_curves(pooled, tmp_path / "curves.png", title="t")
    assert (tmp_path / "curves.png").stat().st_size > 0
    with pytest.raises(ValueError, match="same methods"):
        combine_reports([reports[0], {**reports[1], "methods": {}}])
